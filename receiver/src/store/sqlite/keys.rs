//! Key maintenance: the id of the at-rest key the store's secrets are under (checked at the
//! start of every write transaction), every value encrypted under it (for a rotation), WAL
//! truncation, and consistent snapshots (backups).

use std::path::Path;

use flowpack_shared::names::{ContainerPath, Name};
use rusqlite::{OptionalExtension, params};

use super::{Db, Shared, Store, Tx};
use crate::store::{EncryptedAt, EncryptedValue, Error, KeyCheck, Result};

impl Store {
    /// Installs the check every write transaction makes first (see [`KeyCheck`]); once.
    pub fn check_keys_on_write(&self, check: KeyCheck) {
        if self.shared.key_check.set(check).is_err() {
            tracing::error!("a second key check was not installed");
        }
    }
}

impl Shared {
    /// Runs the key check, if one is installed, inside the write transaction `tx`.
    pub(super) fn check_keys(&self, tx: &Tx<'_>) -> Result<()> {
        let Some(check) = self.key_check.get() else {
            return Ok(());
        };
        let id = tx.at_rest_key_id()?;
        check(id.as_deref()).map_err(Error::Keys)
    }
}

impl Db {
    /// The id of the at-rest key the stored secrets are encrypted under; `None` until one is
    /// recorded.
    pub fn at_rest_key_id(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT key_id FROM at_rest_key WHERE id = 1")?
            .query_row([], |r| r.get(0))
            .optional()?)
    }

    /// Writes a consistent snapshot of the whole database to a new file at `to` (`VACUUM
    /// INTO`: one read transaction, committed data only, compacted: no free page, so nothing
    /// deleted before is carried along). Writers go on meanwhile.
    pub fn snapshot_into(&self, to: &Path) -> Result<()> {
        let to = to
            .to_str()
            .ok_or_else(|| Error::Engine("the snapshot's path is not UTF-8".into()))?;
        self.conn.execute("VACUUM INTO ?1", params![to])?;
        Ok(())
    }

    /// Copies every committed page into the database file and empties the write-ahead log
    /// (`wal_checkpoint(TRUNCATE)`), waiting for readers of older snapshots up to the busy
    /// timeout; returns false when some reader kept it from finishing.
    pub fn truncate_wal(&self) -> Result<bool> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }
}

impl Tx<'_> {
    /// Records the id of the at-rest key the stored secrets are encrypted under.
    pub fn set_at_rest_key_id(&self, key_id: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO at_rest_key (id, key_id) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id",
            params![key_id],
        )?;
        Ok(())
    }

    /// Every value stored encrypted under the at-rest key: credential secrets, the secrets of
    /// credential versions (kept for rollback) and pending flows' PKCE verifiers.
    pub fn encrypted_values(&self) -> Result<Vec<EncryptedValue>> {
        let conn = self.conn();
        let mut out = Vec::new();
        let mut st = conn.prepare(
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
        let mut st = conn.prepare(
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
        let mut st =
            conn.prepare("SELECT state_sha256, path, verifier FROM oauth_states ORDER BY 1")?;
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

    /// Replaces an encrypted value with the same value under another key (and, for a secret,
    /// its fingerprint under that key). Nothing else changes: not the credential's token
    /// version, not its time of change.
    pub fn reencrypt(
        &self,
        value: &EncryptedValue,
        ciphertext: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<()> {
        let changed = match (&value.at, fingerprint) {
            (EncryptedAt::Secret { credential }, Some(fp)) => self.conn().execute(
                "UPDATE credential_secrets SET ciphertext = ?3, fingerprint = ?4
                 WHERE credential_id = ?1 AND field = ?2",
                params![credential, value.field, ciphertext, fp],
            )?,
            (EncryptedAt::VersionSecret { version }, Some(fp)) => self.conn().execute(
                "UPDATE credential_version_secrets SET ciphertext = ?3, fingerprint = ?4
                 WHERE version_id = ?1 AND field = ?2",
                params![version, value.field, ciphertext, fp],
            )?,
            (EncryptedAt::PkceVerifier { state_sha256 }, None) => self.conn().execute(
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

/// A credential's path from its container's path and its name, both written by this program
/// from parsed values.
fn object_path(container: &str, name: &str) -> Option<String> {
    match (ContainerPath::parse(container), Name::parse(name)) {
        (Ok(c), Ok(n)) => Some(c.object_path(&n)),
        _ => None,
    }
}
