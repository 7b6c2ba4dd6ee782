//! Every query, grouped by what it concerns: principals and trust, containers, mappings,
//! credentials, OAuth states, deployments, audit.

use flowpack_shared::names::{ContainerPath, Name};
use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, params};

use super::{Db, MappingFile, Tx};
use crate::store::{
    AuditRow, ContainerId, CredentialId, CredentialRow, DeploymentId, GrantRows, MappingRow,
    OAuthState, Replay, Result, SecretFingerprints, SecretRow, SignerListing, TokenAuth,
    TokenListing, Visible,
};

// ---------------------------------------------------------------------------------------------
// Principals, tokens, trust

impl Tx<'_> {
    /// The id of principal `name`, created if missing.
    pub fn ensure_principal(&self, name: &str) -> Result<i64> {
        let conn = self.conn();
        if let Some(id) = conn
            .query_row(
                "SELECT id FROM principals WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?
        {
            return Ok(id);
        }
        conn.execute(
            "INSERT INTO principals (name, created_at) VALUES (?1, ?2)",
            params![name, self.now()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Adds permissions on `prefix` to a principal (union with what it has).
    pub fn add_grant(&self, principal: i64, prefix: &str, perms: &str) -> Result<()> {
        let conn = self.conn();
        let old: Option<String> = conn
            .query_row(
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
        conn.execute(
            "INSERT INTO grants (principal_id, prefix, perms) VALUES (?1, ?2, ?3)
             ON CONFLICT (principal_id, prefix) DO UPDATE SET perms = excluded.perms",
            params![principal, prefix, all.join(",")],
        )?;
        Ok(())
    }

    /// Stores a token's id, the SHA-256 of its secret and when it expires (Unix milliseconds;
    /// `None`: never).
    pub fn insert_token(
        &self,
        id: &str,
        principal: i64,
        sha256: &[u8],
        expires_at_ms: Option<i64>,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO tokens (id, principal_id, secret_sha256, created_at, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, principal, sha256, self.now(), expires_at_ms],
        )?;
        Ok(())
    }

    /// Deletes token `id`; returns its principal's name, or `None` when there is no such token.
    pub fn delete_token(&self, id: &str) -> Result<Option<String>> {
        let conn = self.conn();
        let principal: Option<String> = conn
            .query_row(
                "SELECT p.name FROM tokens t JOIN principals p ON p.id = t.principal_id
                 WHERE t.id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        if principal.is_some() {
            conn.execute("DELETE FROM tokens WHERE id = ?1", params![id])?;
        }
        Ok(principal)
    }

    /// Deletes every token of principal `name` (the principal and its grants stay); returns
    /// the ids deleted, sorted, or `None` when there is no such principal.
    pub fn delete_tokens_of(&self, name: &str) -> Result<Option<Vec<String>>> {
        let conn = self.conn();
        let principal: Option<i64> = conn
            .query_row(
                "SELECT id FROM principals WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(principal) = principal else {
            return Ok(None);
        };
        let mut st = conn.prepare("SELECT id FROM tokens WHERE principal_id = ?1 ORDER BY id")?;
        let ids = st
            .query_map(params![principal], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        conn.execute(
            "DELETE FROM tokens WHERE principal_id = ?1",
            params![principal],
        )?;
        Ok(Some(ids))
    }

    /// Records that token `id` was used at `at_ms` (Unix milliseconds), unless a later use is
    /// already recorded.
    pub fn set_token_last_used(&self, id: &str, at_ms: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE tokens SET last_used_at_ms = ?2
             WHERE id = ?1 AND (last_used_at_ms IS NULL OR last_used_at_ms < ?2)",
            params![id, at_ms],
        )?;
        Ok(())
    }

    /// Stops trusting signer `key_id`. False when it was not trusted.
    pub fn delete_signer(&self, key_id: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM trusted_signers WHERE key_id = ?1",
            params![key_id],
        )? > 0)
    }

    /// Trusts a signer key for the given prefixes (replacing earlier prefixes).
    pub fn upsert_signer(
        &self,
        key_id: &str,
        public_key: &[u8],
        containers: &[ContainerPath],
    ) -> Result<()> {
        let list: Vec<&str> = containers.iter().map(ContainerPath::as_str).collect();
        let json = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
        self.conn().execute(
            "INSERT INTO trusted_signers (key_id, public_key, containers, added_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key_id) DO UPDATE SET public_key = excluded.public_key, containers = excluded.containers",
            params![key_id, public_key, json, self.now()],
        )?;
        Ok(())
    }
}

impl Db {
    /// What authenticating token `id` needs: its stored hash, expiry and last use, its
    /// principal's name and the principal's grants (prefix, comma-separated permissions), in
    /// one statement: the grants come as a left join, one row per grant, or one row with no
    /// grant.
    pub fn principal_by_token(&self, id: &str) -> Result<Option<TokenAuth>> {
        let mut st = self.conn.prepare_cached(
            "SELECT t.secret_sha256, p.name, t.expires_at_ms, t.last_used_at_ms, g.prefix, g.perms
             FROM tokens t JOIN principals p ON p.id = t.principal_id
             LEFT JOIN grants g ON g.principal_id = p.id WHERE t.id = ?1",
        )?;
        let mut rows = st.query(params![id])?;
        let mut found: Option<TokenAuth> = None;
        while let Some(r) = rows.next()? {
            let token = match &mut found {
                Some(f) => f,
                None => found.insert(TokenAuth {
                    secret_sha256: r.get(0)?,
                    principal: r.get(1)?,
                    expires_at_ms: r.get(2)?,
                    last_used_at_ms: r.get(3)?,
                    grants: Vec::new(),
                }),
            };
            if let (Some(prefix), Some(perms)) = (r.get(4)?, r.get(5)?) {
                token.grants.push((prefix, perms));
            }
        }
        Ok(found)
    }

    /// Every token, by principal name, then issue time and id, with its principal's grants
    /// (sorted by prefix); never a secret's hash.
    pub fn tokens(&self) -> Result<Vec<TokenListing>> {
        let mut grants: std::collections::HashMap<String, GrantRows> =
            std::collections::HashMap::new();
        let mut st = self.conn.prepare(
            "SELECT p.name, g.prefix, g.perms FROM grants g JOIN principals p ON p.id = g.principal_id
             ORDER BY p.name, g.prefix",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            grants
                .entry(r.get(0)?)
                .or_default()
                .push((r.get(1)?, r.get(2)?));
        }
        let mut st = self.conn.prepare(
            "SELECT t.id, p.name, t.created_at, t.expires_at_ms, t.last_used_at_ms
             FROM tokens t JOIN principals p ON p.id = t.principal_id
             ORDER BY p.name, t.created_at, t.id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(TokenListing {
                id: r.get(0)?,
                principal: r.get(1)?,
                created_at: r.get(2)?,
                expires_at_ms: r.get(3)?,
                last_used_at_ms: r.get(4)?,
                grants: Vec::new(),
            })
        })?;
        let mut list = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        for t in &mut list {
            t.grants = grants.get(&t.principal).cloned().unwrap_or_default();
        }
        Ok(list)
    }

    /// Every trusted signer, by key id.
    pub fn signers(&self) -> Result<Vec<SignerListing>> {
        let mut st = self
            .conn
            .prepare("SELECT key_id, containers, added_at FROM trusted_signers ORDER BY key_id")?;
        let rows = st.query_map([], |r| {
            Ok(SignerListing {
                key_id: r.get(0)?,
                containers: r.get(1)?,
                added_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A trusted signer: the raw public key and its allowed prefixes (JSON array of paths).
    pub fn signer(&self, key_id: &str) -> Result<Option<(Vec<u8>, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT public_key, containers FROM trusted_signers WHERE key_id = ?1",
                params![key_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }
}

// ---------------------------------------------------------------------------------------------
// Containers

impl Db {
    /// The id of a container, if it exists.
    pub fn container_id(&self, path: &ContainerPath) -> Result<Option<ContainerId>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM containers WHERE path = ?1")?
            .query_row(params![path.as_str()], |r| r.get(0))
            .optional()?)
    }

    /// What a container holds: child container names, mapping names, credential names (sorted).
    pub fn children(&self, id: ContainerId) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let list = |sql: &str| -> Result<Vec<String>> {
            let mut st = self.conn.prepare_cached(sql)?;
            let rows = st.query_map(params![id], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        Ok((
            list("SELECT name FROM containers WHERE parent_id = ?1 ORDER BY name")?,
            list("SELECT name FROM mappings WHERE container_id = ?1 ORDER BY name")?,
            list("SELECT name FROM credentials WHERE container_id = ?1 ORDER BY name")?,
        ))
    }
}

impl Tx<'_> {
    pub(super) fn ensure_root(&self) -> Result<ContainerId> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO containers (path, parent_id, name, created_at) VALUES ('/', NULL, NULL, ?1)",
            params![self.now()],
        )?;
        Ok(
            conn.query_row("SELECT id FROM containers WHERE path = '/'", [], |r| {
                r.get(0)
            })?,
        )
    }

    /// The id of a container, creating it and its missing ancestors.
    pub fn ensure_container(&self, path: &ContainerPath) -> Result<ContainerId> {
        let conn = self.conn();
        let mut parent = self.ensure_root()?;
        for p in path.lineage().into_iter().skip(1) {
            parent = match self.container_id(&p)? {
                Some(id) => id,
                None => {
                    conn.execute(
                        "INSERT INTO containers (path, parent_id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![p.as_str(), parent, p.last_segment(), self.now()],
                    )?;
                    ContainerId(conn.last_insert_rowid())
                }
            };
        }
        Ok(parent)
    }
}

impl Db {
    /// The live version of mapping `name` in a container.
    pub fn mapping(&self, container: ContainerId, name: &str) -> Result<Option<MappingRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT v.id, v.version, v.definition FROM mappings m JOIN mapping_versions v ON v.id = m.version_id
                 WHERE m.container_id = ?1 AND m.name = ?2",
                params![container, name],
                |r| {
                    Ok(MappingRow {
                        version_id: r.get(0)?,
                        version: r.get(1)?,
                        definition: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every live mapping of a container: (name, definition).
    pub fn mappings_in(&self, container: ContainerId) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT m.name, v.definition FROM mappings m JOIN mapping_versions v ON v.id = m.version_id
             WHERE m.container_id = ?1 ORDER BY m.name",
        )?;
        let rows = st.query_map(params![container], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A file of a mapping version, opened for streaming. Files are never changed or deleted
    /// once committed (versions are kept), so the lookup and the open see the same bytes.
    pub fn mapping_file(&self, version_id: i64, path: &str) -> Result<Option<MappingFile<'_>>> {
        let row: Option<i64> = self
            .conn
            .query_row(
                "SELECT rowid FROM mapping_files WHERE version_id = ?1 AND path = ?2",
                params![version_id, path],
                |r| r.get(0),
            )
            .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let blob = self
            .conn
            .blob_open(rusqlite::MAIN_DB, "mapping_files", "data", row, true)?;
        let len = blob.len() as u64;
        Ok(Some(MappingFile { blob, len }))
    }
}

impl Tx<'_> {
    /// Starts a new version of a mapping (the next number after every earlier one) and returns
    /// its row id. Its definition is filled in by [`Tx::finish_mapping_version`].
    pub fn new_mapping_version(
        &self,
        container: ContainerId,
        name: &Name,
        deployment: DeploymentId,
    ) -> Result<i64> {
        let conn = self.conn();
        let version: i64 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM mapping_versions WHERE container_id = ?1 AND name = ?2",
            params![container, name.as_str()],
            |r| r.get(0),
        )?;
        conn.execute(
            "INSERT INTO mapping_versions (container_id, name, version, definition, deployment_id, created_at)
             VALUES (?1, ?2, ?3, '', ?4, ?5)",
            params![container, name.as_str(), version, deployment, self.now()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Sets a version's definition and makes it the live one. Returns true when it replaced one.
    pub fn finish_mapping_version(
        &self,
        container: ContainerId,
        name: &Name,
        version_id: i64,
        definition: &str,
    ) -> Result<bool> {
        let conn = self.conn();
        conn.execute(
            "UPDATE mapping_versions SET definition = ?1 WHERE id = ?2",
            params![definition, version_id],
        )?;
        let replaced = conn.execute(
            "UPDATE mappings SET version_id = ?1 WHERE container_id = ?2 AND name = ?3",
            params![version_id, container, name.as_str()],
        )? > 0;
        if !replaced {
            conn.execute(
                "INSERT INTO mappings (container_id, name, version_id) VALUES (?1, ?2, ?3)",
                params![container, name.as_str(), version_id],
            )?;
        }
        Ok(replaced)
    }

    /// Streams one file of a mapping version into the database as a blob of `size` bytes.
    /// `sha256` is the digest the bundle's manifest gives (the reader checks the bytes against
    /// it, and the transaction rolls back when they differ).
    pub fn write_mapping_file(
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
        let conn = self.conn();
        let len = i64::try_from(size).map_err(io)?;
        conn.execute(
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

    /// Removes a live mapping (its versions stay in the history). True when it existed.
    pub fn delete_mapping(&self, container: ContainerId, name: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM mappings WHERE container_id = ?1 AND name = ?2",
            params![container, name],
        )? > 0)
    }
}

const CREDENTIAL_COLUMNS: &str = "id, type, public, token_version, needs_authorization";

fn credential_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CredentialRow> {
    credential_row_at(r, 0)
}

fn credential_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<CredentialRow> {
    Ok(CredentialRow {
        id: r.get(at)?,
        kind: r.get(at + 1)?,
        public: r.get(at + 2)?,
        token_version: r.get(at + 3)?,
        needs_authorization: r.get(at + 4)?,
    })
}

impl Db {
    /// Credential `name` in a container.
    pub fn credential(&self, container: ContainerId, name: &str) -> Result<Option<CredentialRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE container_id = ?1 AND name = ?2"
            ))?
            .query_row(params![container, name], credential_row)
            .optional()?)
    }

    /// Credential `name` in container `container`, with the (field, fingerprint) of each
    /// stored secret (sorted by field, no ciphertext), in one statement: the secrets come as a
    /// left join, one row per secret, or one row with none.
    pub fn credential_at(
        &self,
        container: &ContainerPath,
        name: &str,
    ) -> Result<Option<(CredentialRow, SecretFingerprints)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT x.id, x.type, x.public, x.token_version, x.needs_authorization, s.field, s.fingerprint
             FROM containers c JOIN credentials x ON x.container_id = c.id
             LEFT JOIN credential_secrets s ON s.credential_id = x.id
             WHERE c.path = ?1 AND x.name = ?2 ORDER BY s.field",
        )?;
        let mut rows = st.query(params![container.as_str(), name])?;
        let mut found: Option<(CredentialRow, SecretFingerprints)> = None;
        while let Some(r) = rows.next()? {
            let (_, secrets) = match &mut found {
                Some(f) => f,
                None => found.insert((credential_row(r)?, Vec::new())),
            };
            if let (Some(field), Some(fingerprint)) = (r.get(5)?, r.get(6)?) {
                secrets.push((field, fingerprint));
            }
        }
        Ok(found)
    }

    /// A credential by row id, with its path (container path and name).
    pub fn credential_by_id(
        &self,
        id: CredentialId,
    ) -> Result<Option<(String, String, CredentialRow)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT c.path, x.name, x.id, x.type, x.public, x.token_version, x.needs_authorization
                 FROM credentials x JOIN containers c ON c.id = x.container_id WHERE x.id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, credential_row_at(r, 2)?)),
            )
            .optional()?)
    }

    /// The stored sensitive fields of a credential.
    pub fn secrets(&self, credential: CredentialId) -> Result<Vec<SecretRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT field, ciphertext, fingerprint FROM credential_secrets WHERE credential_id = ?1 ORDER BY field",
        )?;
        let rows = st.query_map(params![credential], |r| {
            Ok(SecretRow {
                field: r.get(0)?,
                ciphertext: r.get(1)?,
                fingerprint: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Tx<'_> {
    /// Inserts or replaces a credential's non-sensitive part; returns its row id and, when it
    /// existed, the row as it was before.
    pub fn upsert_credential(
        &self,
        container: ContainerId,
        name: &str,
        kind: &str,
        public: &str,
    ) -> Result<(CredentialId, Option<CredentialRow>)> {
        let conn = self.conn();
        if let Some(row) = self.credential(container, name)? {
            conn.execute(
                "UPDATE credentials SET type = ?1, public = ?2, updated_at = ?3,
                 token_version = token_version + 1 WHERE id = ?4",
                params![kind, public, self.now(), row.id],
            )?;
            if row.kind != kind {
                // A changed type makes the old secrets meaningless.
                conn.execute(
                    "DELETE FROM credential_secrets WHERE credential_id = ?1",
                    params![row.id],
                )?;
            }
            return Ok((row.id, Some(row)));
        }
        conn.execute(
            "INSERT INTO credentials (container_id, name, type, public, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![container, name, kind, public, self.now()],
        )?;
        Ok((CredentialId(conn.last_insert_rowid()), None))
    }

    /// Sets one sensitive field.
    pub fn set_secret(
        &self,
        credential: CredentialId,
        field: &str,
        ciphertext: &[u8],
        fingerprint: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO credential_secrets (credential_id, field, ciphertext, fingerprint) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (credential_id, field) DO UPDATE SET ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint",
            params![credential, field, ciphertext, fingerprint],
        )?;
        self.bump_token_version(credential)
    }

    /// Clears one sensitive field.
    pub fn clear_secret(&self, credential: CredentialId, field: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM credential_secrets WHERE credential_id = ?1 AND field = ?2",
            params![credential, field],
        )?;
        self.bump_token_version(credential)
    }

    fn bump_token_version(&self, credential: CredentialId) -> Result<()> {
        self.conn().execute(
            "UPDATE credentials SET token_version = token_version + 1 WHERE id = ?1",
            params![credential],
        )?;
        Ok(())
    }

    /// Compare and swap: advances the credential's token version if it still is `expected`.
    /// False when something changed the credential since `expected` was read (a deploy, a
    /// PATCH, another refresh): the caller must then not store what it obtained.
    pub fn claim_token_version(&self, credential: CredentialId, expected: i64) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE credentials SET token_version = token_version + 1
             WHERE id = ?1 AND token_version = ?2",
            params![credential, expected],
        )? == 1)
    }

    /// Replaces a credential's non-sensitive record (its name and type unchanged).
    pub fn set_credential_public(&self, credential: CredentialId, public: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE credentials SET public = ?1, updated_at = ?2 WHERE id = ?3",
            params![public, self.now(), credential],
        )?;
        Ok(())
    }

    /// Sets or clears the `needs_authorization` mark.
    pub fn set_needs_authorization(&self, credential: CredentialId, on: bool) -> Result<()> {
        self.conn().execute(
            "UPDATE credentials SET needs_authorization = ?1 WHERE id = ?2",
            params![on, credential],
        )?;
        Ok(())
    }

    /// Deletes a credential and its secrets, the secrets its deployments recorded included (a
    /// deleted secret must be gone; its records stay, so a rollback restores it without them).
    pub fn delete_credential(&self, credential: CredentialId) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM credential_version_secrets WHERE version_id IN (
               SELECT v.id FROM credential_versions v JOIN credentials c
               ON c.container_id = v.container_id AND c.name = v.name WHERE c.id = ?1)",
            params![credential],
        )?;
        conn.execute(
            "DELETE FROM credential_secrets WHERE credential_id = ?1",
            params![credential],
        )?;
        conn.execute("DELETE FROM credentials WHERE id = ?1", params![credential])?;
        Ok(())
    }
}

impl Tx<'_> {
    /// Forgets every pending flow of a credential (its destination changed: a code obtained
    /// for the old one must not be exchanged with the new one).
    pub fn delete_oauth_states(&self, credential: CredentialId) -> Result<()> {
        self.conn().execute(
            "DELETE FROM oauth_states WHERE credential_id = ?1",
            params![credential],
        )?;
        Ok(())
    }

    /// Records a pending flow, and forgets those that expired before `now_ms`.
    pub fn insert_oauth_state(
        &self,
        state_sha256: &[u8],
        s: &OAuthState,
        now_ms: i64,
    ) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM oauth_states WHERE expires_at_ms < ?1",
            params![now_ms],
        )?;
        conn.execute(
            "INSERT INTO oauth_states (state_sha256, credential_id, path, verifier, principal, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![state_sha256, s.credential_id, s.path, s.verifier, s.principal, s.expires_at_ms],
        )?;
        Ok(())
    }

    /// Takes a pending flow: returns it and deletes it, so a state is used at most once.
    pub fn take_oauth_state(&self, state_sha256: &[u8]) -> Result<Option<OAuthState>> {
        let conn = self.conn();
        let found = conn
            .query_row(
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
            conn.execute(
                "DELETE FROM oauth_states WHERE state_sha256 = ?1",
                params![state_sha256],
            )?;
        }
        Ok(found)
    }
}

impl Visible {
    /// The SQL condition on `column`, and its parameters.
    fn condition(&self, column: &str) -> (String, Vec<SqlValue>) {
        match self {
            Visible::All => ("1".into(), Vec::new()),
            Visible::Under(prefixes) if prefixes.is_empty() => ("0".into(), Vec::new()),
            Visible::Under(prefixes) => {
                // `substr` rather than LIKE: `_` is a wildcard there and legal in names.
                let terms: Vec<String> = prefixes
                    .iter()
                    .map(|p| format!("({column} = ? OR substr({column}, 1, {}) = ?)", p.len() + 1))
                    .collect();
                let params = prefixes
                    .iter()
                    .flat_map(|p| [SqlValue::Text(p.clone()), SqlValue::Text(format!("{p}/"))])
                    .collect();
                (format!("({})", terms.join(" OR ")), params)
            }
        }
    }
}

impl Db {
    /// What is known of bundle `bundle_id`, if it was applied.
    pub fn deployment_by_bundle(&self, bundle_id: &str) -> Result<Option<Replay>> {
        Ok(self
            .conn
            .query_row(
                "SELECT record, container, manifest_sha256 FROM deployments WHERE bundle_id = ?1",
                params![bundle_id],
                |r| {
                    Ok(Replay {
                        record: r.get(0)?,
                        container: r.get(1)?,
                        manifest_sha256: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// One page of deployment records (JSON), newest first: those with an id below `before`
    /// (all when `None`), in containers `visible` lets the caller see, optionally one
    /// container only; at most `limit`.
    pub fn deployments_page(
        &self,
        visible: &Visible,
        container: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>> {
        let page = Page {
            visible,
            container,
            before,
            limit,
        };
        self.page("SELECT id, record FROM deployments", &page, |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    /// The rows `select` (a `SELECT … FROM table` whose table has `id` and `container`)
    /// yields for `page`, newest first.
    fn page<T>(
        &self,
        select: &str,
        page: &Page<'_>,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let (cond, mut args) = page.visible.condition("container");
        let mut sql = format!("{select} WHERE {cond} AND id < ?");
        args.push(SqlValue::Integer(page.before.unwrap_or(i64::MAX)));
        if let Some(c) = page.container {
            sql.push_str(" AND container = ?");
            args.push(SqlValue::Text(c.to_owned()));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(SqlValue::Integer(
            i64::try_from(page.limit).unwrap_or(i64::MAX),
        ));
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(&args), row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The `created_at` (Unix milliseconds) of the newest bundle applied to a container.
    pub fn newest_created(&self, container: &str) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT MAX(created_at_ms) FROM deployments WHERE container = ?1",
            params![container],
            |r| r.get(0),
        )?)
    }
}

impl Tx<'_> {
    /// Inserts a deployment with a placeholder record; returns its id. `manifest_sha256` is
    /// `None` for a rollback, which applies no bundle.
    pub fn insert_deployment(
        &self,
        bundle_id: &str,
        container: &str,
        created_at_ms: i64,
        manifest_sha256: Option<&[u8]>,
    ) -> Result<DeploymentId> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deployments (bundle_id, container, created_at_ms, applied_at, record, manifest_sha256)
             VALUES (?1, ?2, ?3, ?4, '{}', ?5)",
            params![bundle_id, container, created_at_ms, self.now(), manifest_sha256],
        )?;
        Ok(DeploymentId(conn.last_insert_rowid()))
    }

    /// Sets a deployment's record.
    pub fn set_deployment_record(&self, id: DeploymentId, record: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET record = ?1 WHERE id = ?2",
            params![record, id],
        )?;
        Ok(())
    }
}

impl Tx<'_> {
    /// Appends an audit row.
    pub fn insert_audit(&self, a: &AuditRow) -> Result<()> {
        self.conn().execute(
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
}

impl Db {
    /// One page of the audit trail, newest first: rows with an id below `before` (all when
    /// `None`) that `visible` lets the caller see (a row that names no container only with
    /// [`Visible::All`]), optionally of one container only; at most `limit`.
    pub fn audit_page(
        &self,
        visible: &Visible,
        container: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>> {
        let page = Page {
            visible,
            container,
            before,
            limit,
        };
        self.page(
            "SELECT id, at, principal, action, container, target, bundle_id, signer_key_id, outcome, status, code, detail, verified
             FROM audit",
            &page,
            |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                at: r.get(1)?,
                principal: r.get(2)?,
                action: r.get(3)?,
                container: r.get(4)?,
                target: r.get(5)?,
                bundle_id: r.get(6)?,
                signer_key_id: r.get(7)?,
                outcome: r.get(8)?,
                status: r.get(9)?,
                code: r.get(10)?,
                detail: r.get(11)?,
                verified: r.get(12)?,
                })
            },
        )
    }
}

/// Which page of a listing: see [`Db::deployments_page`].
struct Page<'a> {
    visible: &'a Visible,
    container: Option<&'a str>,
    before: Option<i64>,
    limit: usize,
}
