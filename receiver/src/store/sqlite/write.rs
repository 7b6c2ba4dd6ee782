//! The writing queries ([`Writes`]), grouped as the reading ones are.

use flowpack_shared::names::{ContainerPath, Name};
use rusqlite::{OptionalExtension, params};

use super::{Cached, Conn};
use crate::store::{
    AuditRow, ContainerId, CredentialId, CredentialRow, DeploymentId, EncryptedAt, EncryptedValue,
    Error, OAuthState, Reads, Result, SecretRow, Writes, object_path,
};

impl Writes for Conn {
    // Principals, tokens, trust

    fn ensure_principal(&self, name: &str) -> Result<i64> {
        let conn = &*self.conn;
        if let Some(id) = conn
            .query_row_cached(
                "SELECT id FROM principals WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?
        {
            return Ok(id);
        }
        conn.execute_cached(
            "INSERT INTO principals (name, created_at) VALUES (?1, ?2)",
            params![name, self.now()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn add_grant(&self, principal: i64, prefix: &str, perms: &str) -> Result<()> {
        let conn = &*self.conn;
        let old: Option<String> = conn
            .query_row_cached(
                "SELECT perms FROM grants WHERE principal_id = ?1 AND prefix = ?2",
                params![principal, prefix],
                |r| r.get(0),
            )
            .optional()?;
        let mut all: Vec<&str> = old
            .as_deref()
            .unwrap_or("")
            .split(',')
            .chain(perms.split(','))
            .filter(|p| !p.is_empty())
            .collect();
        all.sort_unstable();
        all.dedup();
        conn.execute_cached(
            "INSERT INTO grants (principal_id, prefix, perms) VALUES (?1, ?2, ?3)
             ON CONFLICT (principal_id, prefix) DO UPDATE SET perms = excluded.perms",
            params![principal, prefix, all.join(",")],
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
        self.conn.execute_cached(
            "INSERT INTO tokens (id, principal_id, secret_sha256, created_at, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, principal, sha256, self.now(), expires_at_ms],
        )?;
        Ok(())
    }

    fn delete_token(&self, id: &str) -> Result<Option<String>> {
        let conn = &*self.conn;
        let principal: Option<String> = conn
            .query_row_cached(
                "SELECT p.name FROM tokens t JOIN principals p ON p.id = t.principal_id
                 WHERE t.id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        if principal.is_some() {
            conn.execute_cached("DELETE FROM tokens WHERE id = ?1", params![id])?;
        }
        Ok(principal)
    }

    fn delete_tokens_of(&self, name: &str) -> Result<Option<Vec<String>>> {
        let conn = &*self.conn;
        let principal: Option<i64> = conn
            .query_row_cached(
                "SELECT id FROM principals WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(principal) = principal else {
            return Ok(None);
        };
        let mut st =
            conn.prepare_cached("SELECT id FROM tokens WHERE principal_id = ?1 ORDER BY id")?;
        let ids = st
            .query_map(params![principal], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        conn.execute_cached(
            "DELETE FROM tokens WHERE principal_id = ?1",
            params![principal],
        )?;
        Ok(Some(ids))
    }

    fn set_token_last_used(&self, id: &str, at_ms: i64) -> Result<()> {
        self.conn.execute_cached(
            "UPDATE tokens SET last_used_at_ms = ?2
             WHERE id = ?1 AND (last_used_at_ms IS NULL OR last_used_at_ms < ?2)",
            params![id, at_ms],
        )?;
        Ok(())
    }

    fn delete_signer(&self, key_id: &str) -> Result<bool> {
        Ok(self.conn.execute_cached(
            "DELETE FROM trusted_signers WHERE key_id = ?1",
            params![key_id],
        )? > 0)
    }

    fn upsert_signer(
        &self,
        key_id: &str,
        public_key: &[u8],
        containers: &[ContainerPath],
    ) -> Result<()> {
        let list: Vec<&str> = containers.iter().map(ContainerPath::as_str).collect();
        let json = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
        self.conn.execute_cached(
            "INSERT INTO trusted_signers (key_id, public_key, containers, added_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key_id) DO UPDATE SET public_key = excluded.public_key, containers = excluded.containers",
            params![key_id, public_key, json, self.now()],
        )?;
        Ok(())
    }

    // Containers

    fn ensure_container(&self, path: &ContainerPath) -> Result<ContainerId> {
        let conn = &*self.conn;
        let mut parent = self.ensure_root()?;
        for p in path.lineage().into_iter().skip(1) {
            parent = match self.container_id(&p)? {
                Some(id) => id,
                None => {
                    conn.execute_cached(
                        "INSERT INTO containers (path, parent_id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![p.as_str(), parent, p.last_segment(), self.now()],
                    )?;
                    ContainerId(conn.last_insert_rowid())
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
        let conn = &*self.conn;
        let version: i64 = conn.query_row_cached(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM mapping_versions WHERE container_id = ?1 AND name = ?2",
            params![container, name.as_str()],
            |r| r.get(0),
        )?;
        conn.execute_cached(
            "INSERT INTO mapping_versions (container_id, name, version, definition, deployment_id, created_at)
             VALUES (?1, ?2, ?3, '', ?4, ?5)",
            params![container, name.as_str(), version, deployment, self.now()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn finish_mapping_version(
        &self,
        container: ContainerId,
        name: &Name,
        version_id: i64,
        definition: &str,
    ) -> Result<bool> {
        let conn = &*self.conn;
        conn.execute_cached(
            "UPDATE mapping_versions SET definition = ?1 WHERE id = ?2",
            params![definition, version_id],
        )?;
        let replaced = conn.execute_cached(
            "UPDATE mappings SET version_id = ?1 WHERE container_id = ?2 AND name = ?3",
            params![version_id, container, name.as_str()],
        )? > 0;
        if !replaced {
            conn.execute_cached(
                "INSERT INTO mappings (container_id, name, version_id) VALUES (?1, ?2, ?3)",
                params![container, name.as_str(), version_id],
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
        fn io(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
            std::io::Error::other(e)
        }
        let conn = &*self.conn;
        let len = i64::try_from(size).map_err(io)?;
        conn.execute_cached(
            "INSERT INTO mapping_files (version_id, path, data, sha256) VALUES (?1, ?2, zeroblob(?3), ?4)",
            params![version_id, path, len, sha256.as_slice()],
        )
        .map_err(io)?;
        let row = conn.last_insert_rowid();
        let mut blob = conn
            .blob_open(rusqlite::MAIN_DB, "mapping_files", "data", row, false)
            .map_err(io)?;
        // The entry reader stops at the declared size and checks it; a shorter entry is caught
        // by the reader's size check and the transaction rolls back.
        std::io::copy(data, &mut blob)?;
        blob.close().map_err(io)?;
        Ok(())
    }

    fn delete_mapping(&self, container: ContainerId, name: &str) -> Result<bool> {
        Ok(self.conn.execute_cached(
            "DELETE FROM mappings WHERE container_id = ?1 AND name = ?2",
            params![container, name],
        )? > 0)
    }

    fn set_live_mapping(&self, container: ContainerId, name: &str, version_id: i64) -> Result<()> {
        self.conn.execute_cached(
            "INSERT INTO mappings (container_id, name, version_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (container_id, name) DO UPDATE SET version_id = excluded.version_id",
            params![container, name, version_id],
        )?;
        Ok(())
    }

    fn copy_mapping_files(&self, from: i64, to: i64) -> Result<()> {
        self.conn.execute_cached(
            "INSERT INTO mapping_files (version_id, path, data, sha256)
             SELECT ?2, path, data, sha256 FROM mapping_files WHERE version_id = ?1",
            params![from, to],
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
        let conn = &*self.conn;
        if let Some(row) = self.credential(container, name)? {
            conn.execute_cached(
                "UPDATE credentials SET type = ?1, public = ?2, updated_at = ?3,
                 token_version = token_version + 1 WHERE id = ?4",
                params![kind, public, self.now(), row.id],
            )?;
            if row.kind != kind {
                // A changed type makes the old secrets meaningless.
                conn.execute_cached(
                    "DELETE FROM credential_secrets WHERE credential_id = ?1",
                    params![row.id],
                )?;
            }
            return Ok((row.id, Some(row)));
        }
        conn.execute_cached(
            "INSERT INTO credentials (container_id, name, type, public, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![container, name, kind, public, self.now()],
        )?;
        Ok((CredentialId(conn.last_insert_rowid()), None))
    }

    fn set_secret(
        &self,
        credential: CredentialId,
        field: &str,
        ciphertext: &[u8],
        fingerprint: &str,
    ) -> Result<()> {
        self.conn.execute_cached(
            "INSERT INTO credential_secrets (credential_id, field, ciphertext, fingerprint) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (credential_id, field) DO UPDATE SET ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint",
            params![credential, field, ciphertext, fingerprint],
        )?;
        self.bump_token_version(credential)
    }

    fn clear_secret(&self, credential: CredentialId, field: &str) -> Result<()> {
        self.conn.execute_cached(
            "DELETE FROM credential_secrets WHERE credential_id = ?1 AND field = ?2",
            params![credential, field],
        )?;
        self.bump_token_version(credential)
    }

    fn claim_token_version(&self, credential: CredentialId, expected: i64) -> Result<bool> {
        Ok(self.conn.execute_cached(
            "UPDATE credentials SET token_version = token_version + 1
             WHERE id = ?1 AND token_version = ?2",
            params![credential, expected],
        )? == 1)
    }

    fn set_credential_public(&self, credential: CredentialId, public: &str) -> Result<()> {
        self.conn.execute_cached(
            "UPDATE credentials SET public = ?1, updated_at = ?2 WHERE id = ?3",
            params![public, self.now(), credential],
        )?;
        Ok(())
    }

    fn set_needs_authorization(&self, credential: CredentialId, on: bool) -> Result<()> {
        self.conn.execute_cached(
            "UPDATE credentials SET needs_authorization = ?1 WHERE id = ?2",
            params![on, credential],
        )?;
        Ok(())
    }

    fn delete_credential(&self, credential: CredentialId) -> Result<()> {
        let conn = &*self.conn;
        conn.execute_cached(
            "DELETE FROM credential_version_secrets WHERE version_id IN (
               SELECT v.id FROM credential_versions v JOIN credentials c
               ON c.container_id = v.container_id AND c.name = v.name WHERE c.id = ?1)",
            params![credential],
        )?;
        conn.execute_cached(
            "DELETE FROM credential_secrets WHERE credential_id = ?1",
            params![credential],
        )?;
        conn.execute_cached("DELETE FROM credentials WHERE id = ?1", params![credential])?;
        Ok(())
    }

    fn replace_secrets(&self, credential: CredentialId, secrets: &[SecretRow]) -> Result<()> {
        let conn = &*self.conn;
        conn.execute_cached(
            "DELETE FROM credential_secrets WHERE credential_id = ?1",
            params![credential],
        )?;
        for s in secrets {
            conn.execute_cached(
                "INSERT INTO credential_secrets (credential_id, field, ciphertext, fingerprint) VALUES (?1, ?2, ?3, ?4)",
                params![credential, s.field, s.ciphertext, s.fingerprint],
            )?;
        }
        conn.execute_cached(
            "UPDATE credentials SET token_version = token_version + 1 WHERE id = ?1",
            params![credential],
        )?;
        Ok(())
    }

    fn set_changed_outside(&self, credential: CredentialId, on: bool) -> Result<()> {
        self.conn.execute_cached(
            "UPDATE credentials SET changed_outside = ?1 WHERE id = ?2",
            params![on, credential],
        )?;
        Ok(())
    }

    // Pending authorization-code flows

    fn delete_oauth_states(&self, credential: CredentialId) -> Result<()> {
        self.conn.execute_cached(
            "DELETE FROM oauth_states WHERE credential_id = ?1",
            params![credential],
        )?;
        Ok(())
    }

    fn insert_oauth_state(&self, state_sha256: &[u8], s: &OAuthState, now_ms: i64) -> Result<()> {
        let conn = &*self.conn;
        conn.execute_cached(
            "DELETE FROM oauth_states WHERE expires_at_ms < ?1",
            params![now_ms],
        )?;
        conn.execute_cached(
            "INSERT INTO oauth_states (state_sha256, credential_id, path, verifier, principal, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![state_sha256, s.credential_id, s.path, s.verifier, s.principal, s.expires_at_ms],
        )?;
        Ok(())
    }

    fn take_oauth_state(&self, state_sha256: &[u8]) -> Result<Option<OAuthState>> {
        let conn = &*self.conn;
        let found = conn
            .query_row_cached(
                "SELECT credential_id, path, verifier, principal, expires_at_ms FROM oauth_states WHERE state_sha256 = ?1",
                params![state_sha256],
                |r| {
                    Ok(OAuthState {
                        credential_id: r.get(0)?,
                        path: r.get(1)?,
                        verifier: r.get(2)?,
                        principal: r.get(3)?,
                        expires_at_ms: r.get(4)?,
                    })
                },
            )
            .optional()?;
        if found.is_some() {
            conn.execute_cached(
                "DELETE FROM oauth_states WHERE state_sha256 = ?1",
                params![state_sha256],
            )?;
        }
        Ok(found)
    }

    // Deployments and their history

    fn insert_deployment(
        &self,
        bundle_id: &str,
        container: &str,
        created_at_ms: i64,
        manifest_sha256: Option<&[u8]>,
    ) -> Result<DeploymentId> {
        let conn = &*self.conn;
        conn.execute_cached(
            "INSERT INTO deployments (bundle_id, container, created_at_ms, applied_at, record, manifest_sha256)
             VALUES (?1, ?2, ?3, ?4, '{}', ?5)",
            params![bundle_id, container, created_at_ms, self.now(), manifest_sha256],
        )?;
        Ok(DeploymentId(conn.last_insert_rowid()))
    }

    fn set_deployment_record(&self, id: DeploymentId, record: &str) -> Result<()> {
        self.conn.execute_cached(
            "UPDATE deployments SET record = ?1 WHERE id = ?2",
            params![record, id],
        )?;
        Ok(())
    }

    fn record_deployment_mapping(
        &self,
        id: DeploymentId,
        name: &str,
        version_id: i64,
    ) -> Result<()> {
        self.conn.execute_cached(
            "INSERT INTO deployment_mappings (deployment_id, name, version_id) VALUES (?1, ?2, ?3)",
            params![id, name, version_id],
        )?;
        Ok(())
    }

    fn record_credential_version(
        &self,
        id: DeploymentId,
        container: ContainerId,
        name: &str,
    ) -> Result<()> {
        let conn = &*self.conn;
        let inserted = conn.execute_cached(
            "INSERT INTO credential_versions (deployment_id, container_id, name, type, public, needs_authorization)
             SELECT ?1, container_id, name, type, public, needs_authorization FROM credentials
             WHERE container_id = ?2 AND name = ?3",
            params![id, container, name],
        )?;
        if inserted == 0 {
            return Ok(());
        }
        let version = conn.last_insert_rowid();
        conn.execute_cached(
            "INSERT INTO credential_version_secrets (version_id, field, ciphertext, fingerprint)
             SELECT ?1, s.field, s.ciphertext, s.fingerprint FROM credential_secrets s
             JOIN credentials c ON c.id = s.credential_id WHERE c.container_id = ?2 AND c.name = ?3",
            params![version, container, name],
        )?;
        Ok(())
    }

    // Audit

    fn insert_audit(&self, a: &AuditRow) -> Result<()> {
        self.conn.execute_cached(
            "INSERT INTO audit (at, principal, action, container, target, bundle_id, signer_key_id, outcome, status, code, detail, verified)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                self.now(),
                a.principal,
                a.action,
                a.container,
                a.target,
                a.bundle_id,
                a.signer_key_id,
                a.outcome,
                a.status,
                a.code,
                a.detail,
                a.verified
            ],
        )?;
        Ok(())
    }

    // Keys

    fn set_at_rest_key_id(&self, key_id: &str) -> Result<()> {
        self.conn.execute_cached(
            "INSERT INTO at_rest_key (id, key_id) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id",
            params![key_id],
        )?;
        Ok(())
    }

    fn encrypted_values(&self) -> Result<Vec<EncryptedValue>> {
        let conn = &*self.conn;
        let mut out = Vec::new();
        let mut st = conn.prepare_cached(
            "SELECT s.credential_id, k.path, c.name, s.field, s.ciphertext
             FROM credential_secrets s
             JOIN credentials c ON c.id = s.credential_id
             JOIN containers k ON k.id = c.container_id
             ORDER BY s.credential_id, s.field",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, crate::store::CredentialId>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        for row in rows {
            let (credential, container, name, field, ciphertext) = row?;
            let path = object_path(&container, &name).ok_or_else(|| {
                Error::Engine(
                    format!("credential {credential}: a stored path or name does not parse").into(),
                )
            })?;
            out.push(EncryptedValue {
                at: EncryptedAt::Secret { credential },
                path,
                field,
                ciphertext,
            });
        }
        // The secrets of credential versions are the live ciphertexts as they were copied,
        // bound to the same path and field.
        let mut st = conn.prepare_cached(
            "SELECT s.version_id, k.path, v.name, s.field, s.ciphertext
             FROM credential_version_secrets s
             JOIN credential_versions v ON v.id = s.version_id
             JOIN containers k ON k.id = v.container_id
             ORDER BY s.version_id, s.field",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        for row in rows {
            let (version, container, name, field, ciphertext) = row?;
            out.push(EncryptedValue {
                at: EncryptedAt::VersionSecret { version },
                path: object_path(&container, &name).ok_or_else(|| {
                    Error::Engine(
                        format!(
                            "credential version {version}: a stored path or name does not parse"
                        )
                        .into(),
                    )
                })?,
                field,
                ciphertext,
            });
        }
        let mut st = conn
            .prepare_cached("SELECT state_sha256, path, verifier FROM oauth_states ORDER BY 1")?;
        let rows = st.query_map([], |r| {
            Ok(EncryptedValue {
                at: EncryptedAt::PkceVerifier {
                    state_sha256: r.get(0)?,
                },
                path: r.get(1)?,
                field: "pkce_code_verifier".to_owned(),
                ciphertext: r.get(2)?,
            })
        })?;
        for row in rows {
            out.push(row?);
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
            (EncryptedAt::Secret { credential }, Some(fp)) => self.conn.execute_cached(
                "UPDATE credential_secrets SET ciphertext = ?3, fingerprint = ?4
                 WHERE credential_id = ?1 AND field = ?2",
                params![credential, value.field, ciphertext, fp],
            )?,
            (EncryptedAt::VersionSecret { version }, Some(fp)) => self.conn.execute_cached(
                "UPDATE credential_version_secrets SET ciphertext = ?3, fingerprint = ?4
                 WHERE version_id = ?1 AND field = ?2",
                params![version, value.field, ciphertext, fp],
            )?,
            (EncryptedAt::PkceVerifier { state_sha256 }, None) => self.conn.execute_cached(
                "UPDATE oauth_states SET verifier = ?2 WHERE state_sha256 = ?1",
                params![state_sha256, ciphertext],
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
        let conn = &*self.conn;
        conn.execute_cached(
            "INSERT OR IGNORE INTO containers (path, parent_id, name, created_at) VALUES ('/', NULL, NULL, ?1)",
            params![self.now()],
        )?;
        Ok(
            conn.query_row_cached("SELECT id FROM containers WHERE path = '/'", [], |r| {
                r.get(0)
            })?,
        )
    }

    fn bump_token_version(&self, credential: CredentialId) -> Result<()> {
        self.conn.execute_cached(
            "UPDATE credentials SET token_version = token_version + 1 WHERE id = ?1",
            params![credential],
        )?;
        Ok(())
    }
}
