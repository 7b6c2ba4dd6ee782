//! The writing queries ([`Writes`]), in the order of the SQLite engine's `write.rs`.

use std::io::Read;

use flowpack_shared::names::{ContainerPath, Name};

use super::{CHUNK, Conn, get};
use crate::store::{
    AuditRow, ContainerId, CredentialId, CredentialRow, DeploymentId, EncryptedAt, EncryptedValue,
    Error, OAuthState, Reads, Result, SecretRow, Writes, object_path,
};

impl Writes for Conn {
    // Principals, tokens, trust

    fn ensure_principal(&self, name: &str) -> Result<i64> {
        if let Some(r) = self.row("SELECT id FROM principals WHERE name = $1", &[&name])? {
            return get(&r, 0);
        }
        let r = self.one(
            "INSERT INTO principals (name, created_at) VALUES ($1, $2) RETURNING id",
            &[&name, &self.now()],
        )?;
        get(&r, 0)
    }

    fn add_grant(&self, principal: i64, prefix: &str, perms: &str) -> Result<()> {
        let old: Option<String> = self
            .row(
                "SELECT perms FROM grants WHERE principal_id = $1 AND prefix = $2",
                &[&principal, &prefix],
            )?
            .map(|r| get(&r, 0))
            .transpose()?;
        let mut all: Vec<&str> = old
            .as_deref()
            .unwrap_or("")
            .split(',')
            .chain(perms.split(','))
            .filter(|p| !p.is_empty())
            .collect();
        all.sort_unstable();
        all.dedup();
        self.exec(
            "INSERT INTO grants (principal_id, prefix, perms) VALUES ($1, $2, $3)
             ON CONFLICT (principal_id, prefix) DO UPDATE SET perms = excluded.perms",
            &[&principal, &prefix, &all.join(",")],
        )?;
        Ok(())
    }

    fn insert_token(
        &self,
        id: &str,
        principal: i64,
        sha256: &[u8],
        expires_at_ms: Option<i64>,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO tokens (id, principal_id, secret_sha256, created_at, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[&id, &principal, &sha256, &self.now(), &expires_at_ms],
        )?;
        Ok(())
    }

    fn delete_token(&self, id: &str) -> Result<Option<String>> {
        self.row(
            "WITH gone AS (DELETE FROM tokens WHERE id = $1 RETURNING principal_id)
             SELECT p.name FROM gone JOIN principals p ON p.id = gone.principal_id",
            &[&id],
        )?
        .map(|r| get(&r, 0))
        .transpose()
    }

    fn delete_tokens_of(&self, name: &str) -> Result<Option<Vec<String>>> {
        let Some(r) = self.row("SELECT id FROM principals WHERE name = $1", &[&name])? else {
            return Ok(None);
        };
        let principal: i64 = get(&r, 0)?;
        let mut ids = self
            .rows(
                "DELETE FROM tokens WHERE principal_id = $1 RETURNING id",
                &[&principal],
            )?
            .iter()
            .map(|r| get(r, 0))
            .collect::<Result<Vec<String>>>()?;
        ids.sort();
        Ok(Some(ids))
    }

    fn set_token_last_used(&self, id: &str, at_ms: i64) -> Result<()> {
        self.exec(
            "UPDATE tokens SET last_used_at_ms = $2
             WHERE id = $1 AND (last_used_at_ms IS NULL OR last_used_at_ms < $2)",
            &[&id, &at_ms],
        )?;
        Ok(())
    }

    fn delete_signer(&self, key_id: &str) -> Result<bool> {
        Ok(self.exec("DELETE FROM trusted_signers WHERE key_id = $1", &[&key_id])? > 0)
    }

    fn upsert_signer(
        &self,
        key_id: &str,
        public_key: &[u8],
        containers: &[ContainerPath],
    ) -> Result<()> {
        let list: Vec<&str> = containers.iter().map(ContainerPath::as_str).collect();
        let json = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
        self.exec(
            "INSERT INTO trusted_signers (key_id, public_key, containers, added_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key_id) DO UPDATE SET public_key = excluded.public_key, containers = excluded.containers",
            &[&key_id, &public_key, &json, &self.now()],
        )?;
        Ok(())
    }

    // Containers

    fn ensure_container(&self, path: &ContainerPath) -> Result<ContainerId> {
        let mut parent = self.ensure_root()?;
        for p in path.lineage().into_iter().skip(1) {
            parent = match self.container_id(&p)? {
                Some(id) => id,
                None => {
                    let r = self.one(
                        "INSERT INTO containers (path, parent_id, name, created_at) VALUES ($1, $2, $3, $4)
                         RETURNING id",
                        &[&p.as_str(), &parent.0, &p.last_segment(), &self.now()],
                    )?;
                    ContainerId(get(&r, 0)?)
                }
            };
        }
        Ok(parent)
    }

    // Mappings

    fn new_mapping_version(
        &self,
        container: ContainerId,
        name: &Name,
        deployment: DeploymentId,
    ) -> Result<i64> {
        // The writer lock makes `MAX() + 1` safe: no other transaction writes meanwhile.
        let r = self.one(
            "INSERT INTO mapping_versions (container_id, name, version, definition, deployment_id, created_at)
             SELECT $1, $2, COALESCE(MAX(version), 0) + 1, '', $3, $4
             FROM mapping_versions WHERE container_id = $1 AND name = $2
             RETURNING id",
            &[&container.0, &name.as_str(), &deployment.0, &self.now()],
        )?;
        get(&r, 0)
    }

    fn finish_mapping_version(
        &self,
        container: ContainerId,
        name: &Name,
        version_id: i64,
        definition: &str,
    ) -> Result<bool> {
        self.exec(
            "UPDATE mapping_versions SET definition = $1 WHERE id = $2",
            &[&definition, &version_id],
        )?;
        let replaced = self.exec(
            "UPDATE mappings SET version_id = $1 WHERE container_id = $2 AND name = $3",
            &[&version_id, &container.0, &name.as_str()],
        )? > 0;
        if !replaced {
            self.exec(
                "INSERT INTO mappings (container_id, name, version_id) VALUES ($1, $2, $3)",
                &[&container.0, &name.as_str(), &version_id],
            )?;
        }
        Ok(replaced)
    }

    fn write_mapping_file(
        &self,
        version_id: i64,
        path: &str,
        size: u64,
        sha256: &[u8; 32],
        data: &mut dyn std::io::Read,
    ) -> std::io::Result<()> {
        let len = i64::try_from(size).map_err(std::io::Error::other)?;
        self.exec(
            "INSERT INTO mapping_files (version_id, path, size, sha256) VALUES ($1, $2, $3, $4)",
            &[&version_id, &path, &len, &sha256.as_slice()],
        )
        .map_err(std::io::Error::other)?;
        // The entry reader stops at the declared size and checks it; a shorter entry is caught
        // by the reader's size check and the transaction rolls back.
        let mut chunk = Vec::with_capacity(CHUNK.min(usize::try_from(size).unwrap_or(CHUNK)));
        let mut seq: i64 = 0;
        loop {
            chunk.clear();
            let read = (&mut *data).take(CHUNK as u64).read_to_end(&mut chunk)?;
            if read == 0 {
                return Ok(());
            }
            self.exec(
                "INSERT INTO mapping_file_chunks (version_id, path, seq, data) VALUES ($1, $2, $3, $4)",
                &[&version_id, &path, &seq, &chunk],
            )
            .map_err(std::io::Error::other)?;
            seq += 1;
        }
    }

    fn delete_mapping(&self, container: ContainerId, name: &str) -> Result<bool> {
        Ok(self.exec(
            "DELETE FROM mappings WHERE container_id = $1 AND name = $2",
            &[&container.0, &name],
        )? > 0)
    }

    fn set_live_mapping(&self, container: ContainerId, name: &str, version_id: i64) -> Result<()> {
        self.exec(
            "INSERT INTO mappings (container_id, name, version_id) VALUES ($1, $2, $3)
             ON CONFLICT (container_id, name) DO UPDATE SET version_id = excluded.version_id",
            &[&container.0, &name, &version_id],
        )?;
        Ok(())
    }

    fn copy_mapping_files(&self, from: i64, to: i64) -> Result<()> {
        self.exec(
            "INSERT INTO mapping_files (version_id, path, size, sha256)
             SELECT $2, path, size, sha256 FROM mapping_files WHERE version_id = $1",
            &[&from, &to],
        )?;
        self.exec(
            "INSERT INTO mapping_file_chunks (version_id, path, seq, data)
             SELECT $2, path, seq, data FROM mapping_file_chunks WHERE version_id = $1",
            &[&from, &to],
        )?;
        Ok(())
    }

    // Credentials

    fn upsert_credential(
        &self,
        container: ContainerId,
        name: &str,
        kind: &str,
        public: &str,
    ) -> Result<(CredentialId, Option<CredentialRow>)> {
        if let Some(row) = self.credential(container, name)? {
            self.exec(
                "UPDATE credentials SET type = $1, public = $2, updated_at = $3,
                 token_version = token_version + 1 WHERE id = $4",
                &[&kind, &public, &self.now(), &row.id.0],
            )?;
            if row.kind != kind {
                // A changed type makes the old secrets meaningless.
                self.exec(
                    "DELETE FROM credential_secrets WHERE credential_id = $1",
                    &[&row.id.0],
                )?;
            }
            return Ok((row.id, Some(row)));
        }
        let r = self.one(
            "INSERT INTO credentials (container_id, name, type, public, updated_at) VALUES ($1, $2, $3, $4, $5)
             RETURNING id",
            &[&container.0, &name, &kind, &public, &self.now()],
        )?;
        Ok((CredentialId(get(&r, 0)?), None))
    }

    fn set_secret(
        &self,
        credential: CredentialId,
        field: &str,
        ciphertext: &[u8],
        fingerprint: &str,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO credential_secrets (credential_id, field, ciphertext, fingerprint) VALUES ($1, $2, $3, $4)
             ON CONFLICT (credential_id, field) DO UPDATE SET ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint",
            &[&credential.0, &field, &ciphertext, &fingerprint],
        )?;
        self.bump_token_version(credential)
    }

    fn clear_secret(&self, credential: CredentialId, field: &str) -> Result<()> {
        self.exec(
            "DELETE FROM credential_secrets WHERE credential_id = $1 AND field = $2",
            &[&credential.0, &field],
        )?;
        self.bump_token_version(credential)
    }

    fn claim_token_version(&self, credential: CredentialId, expected: i64) -> Result<bool> {
        Ok(self.exec(
            "UPDATE credentials SET token_version = token_version + 1
             WHERE id = $1 AND token_version = $2",
            &[&credential.0, &expected],
        )? == 1)
    }

    fn set_credential_public(&self, credential: CredentialId, public: &str) -> Result<()> {
        self.exec(
            "UPDATE credentials SET public = $1, updated_at = $2 WHERE id = $3",
            &[&public, &self.now(), &credential.0],
        )?;
        Ok(())
    }

    fn set_needs_authorization(&self, credential: CredentialId, on: bool) -> Result<()> {
        self.exec(
            "UPDATE credentials SET needs_authorization = $1 WHERE id = $2",
            &[&on, &credential.0],
        )?;
        Ok(())
    }

    fn delete_credential(&self, credential: CredentialId) -> Result<()> {
        self.exec(
            "DELETE FROM credential_version_secrets WHERE version_id IN (
               SELECT v.id FROM credential_versions v JOIN credentials c
               ON c.container_id = v.container_id AND c.name = v.name WHERE c.id = $1)",
            &[&credential.0],
        )?;
        self.exec(
            "DELETE FROM credential_secrets WHERE credential_id = $1",
            &[&credential.0],
        )?;
        self.exec("DELETE FROM credentials WHERE id = $1", &[&credential.0])?;
        Ok(())
    }

    fn replace_secrets(&self, credential: CredentialId, secrets: &[SecretRow]) -> Result<()> {
        self.exec(
            "DELETE FROM credential_secrets WHERE credential_id = $1",
            &[&credential.0],
        )?;
        for s in secrets {
            self.exec(
                "INSERT INTO credential_secrets (credential_id, field, ciphertext, fingerprint) VALUES ($1, $2, $3, $4)",
                &[&credential.0, &s.field, &s.ciphertext, &s.fingerprint],
            )?;
        }
        self.bump_token_version(credential)
    }

    fn set_changed_outside(&self, credential: CredentialId, on: bool) -> Result<()> {
        self.exec(
            "UPDATE credentials SET changed_outside = $1 WHERE id = $2",
            &[&on, &credential.0],
        )?;
        Ok(())
    }

    // Pending authorization-code flows

    fn delete_oauth_states(&self, credential: CredentialId) -> Result<()> {
        self.exec(
            "DELETE FROM oauth_states WHERE credential_id = $1",
            &[&credential.0],
        )?;
        Ok(())
    }

    fn insert_oauth_state(&self, state_sha256: &[u8], s: &OAuthState, now_ms: i64) -> Result<()> {
        self.exec(
            "DELETE FROM oauth_states WHERE expires_at_ms < $1",
            &[&now_ms],
        )?;
        self.exec(
            "INSERT INTO oauth_states (state_sha256, credential_id, path, verifier, principal, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &state_sha256,
                &s.credential_id.0,
                &s.path,
                &s.verifier,
                &s.principal,
                &s.expires_at_ms,
            ],
        )?;
        Ok(())
    }

    fn take_oauth_state(&self, state_sha256: &[u8]) -> Result<Option<OAuthState>> {
        self.row(
            "DELETE FROM oauth_states WHERE state_sha256 = $1
             RETURNING credential_id, path, verifier, principal, expires_at_ms",
            &[&state_sha256],
        )?
        .map(|r| {
            Ok(OAuthState {
                credential_id: CredentialId(get(&r, 0)?),
                path: get(&r, 1)?,
                verifier: get(&r, 2)?,
                principal: get(&r, 3)?,
                expires_at_ms: get(&r, 4)?,
            })
        })
        .transpose()
    }

    // Deployments and their history

    fn insert_deployment(
        &self,
        bundle_id: &str,
        container: &str,
        created_at_ms: i64,
        manifest_sha256: Option<&[u8]>,
    ) -> Result<DeploymentId> {
        let r = self.one(
            "INSERT INTO deployments (bundle_id, container, created_at_ms, applied_at, record, manifest_sha256)
             VALUES ($1, $2, $3, $4, '{}', $5) RETURNING id",
            &[
                &bundle_id,
                &container,
                &created_at_ms,
                &self.now(),
                &manifest_sha256,
            ],
        )?;
        Ok(DeploymentId(get(&r, 0)?))
    }

    fn set_deployment_record(&self, id: DeploymentId, record: &str) -> Result<()> {
        self.exec(
            "UPDATE deployments SET record = $1 WHERE id = $2",
            &[&record, &id.0],
        )?;
        Ok(())
    }

    fn record_deployment_mapping(
        &self,
        id: DeploymentId,
        name: &str,
        version_id: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO deployment_mappings (deployment_id, name, version_id) VALUES ($1, $2, $3)",
            &[&id.0, &name, &version_id],
        )?;
        Ok(())
    }

    fn record_credential_version(
        &self,
        id: DeploymentId,
        container: ContainerId,
        name: &str,
    ) -> Result<()> {
        let Some(r) = self.row(
            "INSERT INTO credential_versions (deployment_id, container_id, name, type, public, needs_authorization)
             SELECT $1, container_id, name, type, public, needs_authorization FROM credentials
             WHERE container_id = $2 AND name = $3 RETURNING id",
            &[&id.0, &container.0, &name],
        )?
        else {
            return Ok(());
        };
        let version: i64 = get(&r, 0)?;
        self.exec(
            "INSERT INTO credential_version_secrets (version_id, field, ciphertext, fingerprint)
             SELECT $1, s.field, s.ciphertext, s.fingerprint FROM credential_secrets s
             JOIN credentials c ON c.id = s.credential_id WHERE c.container_id = $2 AND c.name = $3",
            &[&version, &container.0, &name],
        )?;
        Ok(())
    }

    // Audit

    fn insert_audit(&self, a: &AuditRow) -> Result<()> {
        self.exec(
            "INSERT INTO audit (at, principal, action, container, target, bundle_id, signer_key_id, outcome, status, code, detail, verified)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &self.now(),
                &a.principal,
                &a.action,
                &a.container,
                &a.target,
                &a.bundle_id,
                &a.signer_key_id,
                &a.outcome,
                &i32::from(a.status),
                &a.code,
                &a.detail,
                &a.verified,
            ],
        )?;
        Ok(())
    }

    // Keys

    fn set_at_rest_key_id(&self, key_id: &str) -> Result<()> {
        self.exec(
            "INSERT INTO at_rest_key (id, key_id) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id",
            &[&key_id],
        )?;
        Ok(())
    }

    fn encrypted_values(&self) -> Result<Vec<EncryptedValue>> {
        let mut out = Vec::new();
        for r in &self.rows(
            "SELECT s.credential_id, k.path, c.name, s.field, s.ciphertext
             FROM credential_secrets s
             JOIN credentials c ON c.id = s.credential_id
             JOIN containers k ON k.id = c.container_id
             ORDER BY s.credential_id, s.field",
            &[],
        )? {
            let credential = CredentialId(get(r, 0)?);
            let path =
                object_path(&get::<String>(r, 1)?, &get::<String>(r, 2)?).ok_or_else(|| {
                    Error::Engine(
                        format!("credential {credential}: a stored path or name does not parse")
                            .into(),
                    )
                })?;
            out.push(EncryptedValue {
                at: EncryptedAt::Secret { credential },
                path,
                field: get(r, 3)?,
                ciphertext: get(r, 4)?,
            });
        }
        // The secrets of credential versions are the live ciphertexts as they were copied,
        // bound to the same path and field.
        for r in &self.rows(
            "SELECT s.version_id, k.path, v.name, s.field, s.ciphertext
             FROM credential_version_secrets s
             JOIN credential_versions v ON v.id = s.version_id
             JOIN containers k ON k.id = v.container_id
             ORDER BY s.version_id, s.field",
            &[],
        )? {
            let version: i64 = get(r, 0)?;
            let path =
                object_path(&get::<String>(r, 1)?, &get::<String>(r, 2)?).ok_or_else(|| {
                    Error::Engine(
                        format!(
                            "credential version {version}: a stored path or name does not parse"
                        )
                        .into(),
                    )
                })?;
            out.push(EncryptedValue {
                at: EncryptedAt::VersionSecret { version },
                path,
                field: get(r, 3)?,
                ciphertext: get(r, 4)?,
            });
        }
        for r in &self.rows(
            "SELECT state_sha256, path, verifier FROM oauth_states ORDER BY 1",
            &[],
        )? {
            out.push(EncryptedValue {
                at: EncryptedAt::PkceVerifier {
                    state_sha256: get(r, 0)?,
                },
                path: get(r, 1)?,
                field: "pkce_code_verifier".to_owned(),
                ciphertext: get(r, 2)?,
            });
        }
        Ok(out)
    }

    fn reencrypt(
        &self,
        value: &EncryptedValue,
        ciphertext: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<()> {
        let changed = match (&value.at, fingerprint) {
            (EncryptedAt::Secret { credential }, Some(fp)) => self.exec(
                "UPDATE credential_secrets SET ciphertext = $3, fingerprint = $4
                 WHERE credential_id = $1 AND field = $2",
                &[&credential.0, &value.field, &ciphertext, &fp],
            )?,
            (EncryptedAt::VersionSecret { version }, Some(fp)) => self.exec(
                "UPDATE credential_version_secrets SET ciphertext = $3, fingerprint = $4
                 WHERE version_id = $1 AND field = $2",
                &[version, &value.field, &ciphertext, &fp],
            )?,
            (EncryptedAt::PkceVerifier { state_sha256 }, None) => self.exec(
                "UPDATE oauth_states SET verifier = $2 WHERE state_sha256 = $1",
                &[state_sha256, &ciphertext],
            )?,
            _ => {
                return Err(Error::Engine(
                    "a secret is re-encrypted with its fingerprint, a verifier without".into(),
                ));
            }
        };
        if changed != 1 {
            return Err(Error::Engine(
                format!("{} {}: row not found", value.path, value.field).into(),
            ));
        }
        Ok(())
    }
}

impl Conn {
    pub(super) fn ensure_root(&self) -> Result<ContainerId> {
        self.exec(
            "INSERT INTO containers (path, parent_id, name, created_at) VALUES ('/', NULL, NULL, $1)
             ON CONFLICT (path) DO NOTHING",
            &[&self.now()],
        )?;
        let r = self.one("SELECT id FROM containers WHERE path = '/'", &[])?;
        Ok(ContainerId(get(&r, 0)?))
    }

    fn bump_token_version(&self, credential: CredentialId) -> Result<()> {
        self.exec(
            "UPDATE credentials SET token_version = token_version + 1 WHERE id = $1",
            &[&credential.0],
        )?;
        Ok(())
    }
}
