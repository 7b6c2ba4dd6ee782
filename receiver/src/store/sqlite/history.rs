//! The queries of deployment history: what each deployment left (mapping versions, credential
//! records with their secrets), one record by id, drift marks, and what a rollback puts back.

use rusqlite::{OptionalExtension, params};

use super::{Db, Tx};
use crate::store::{
    ContainerId, CredentialId, CredentialVersion, DeploymentId, DeploymentRow, Result, SecretRow,
};

impl Db {
    /// Deployment `id`: its container, record (JSON) and the `created_at` of its bundle.
    pub fn deployment(&self, id: DeploymentId) -> Result<Option<DeploymentRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT container, record, created_at_ms FROM deployments WHERE id = ?1",
                params![id],
                |r| {
                    Ok(DeploymentRow {
                        id,
                        container: r.get(0)?,
                        record: r.get(1)?,
                        created_at_ms: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// The mapping versions a deployment left live: (name, version row id), by name. For a
    /// deployment made before these were recorded, the versions it created.
    pub fn deployment_mappings(&self, id: DeploymentId) -> Result<Vec<(String, i64)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT name, version_id FROM deployment_mappings WHERE deployment_id = ?1
             UNION ALL
             SELECT name, id FROM mapping_versions WHERE deployment_id = ?1
               AND NOT EXISTS (SELECT 1 FROM deployment_mappings WHERE deployment_id = ?1)
             ORDER BY 1",
        )?;
        let rows = st.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The credential records a deployment left, with their secrets, by name.
    pub fn credential_versions(&self, id: DeploymentId) -> Result<Vec<CredentialVersion>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, name, type, public, needs_authorization FROM credential_versions
             WHERE deployment_id = ?1 ORDER BY name",
        )?;
        let rows = st.query_map(params![id], |r| {
            Ok(CredentialVersion {
                id: r.get(0)?,
                name: r.get(1)?,
                kind: r.get(2)?,
                public: r.get(3)?,
                needs_authorization: r.get(4)?,
                secrets: Vec::new(),
            })
        })?;
        let mut versions: Vec<CredentialVersion> = rows.collect::<rusqlite::Result<_>>()?;
        let mut st = self.conn.prepare_cached(
            "SELECT field, ciphertext, fingerprint FROM credential_version_secrets
             WHERE version_id = ?1 ORDER BY field",
        )?;
        for v in &mut versions {
            let rows = st.query_map(params![v.id], |r| {
                Ok(SecretRow {
                    field: r.get(0)?,
                    ciphertext: r.get(1)?,
                    fingerprint: r.get(2)?,
                })
            })?;
            v.secrets = rows.collect::<rusqlite::Result<_>>()?;
        }
        Ok(versions)
    }

    /// The files of a mapping version: (path, SHA-256 when it was recorded), by path.
    pub fn mapping_file_digests(&self, version_id: i64) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT path, sha256 FROM mapping_files WHERE version_id = ?1 ORDER BY path",
        )?;
        let rows = st.query_map(params![version_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether the credential was changed outside deployments (PATCH, create) since a
    /// deployment or rollback last wrote it.
    pub fn changed_outside(&self, credential: CredentialId) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT changed_outside FROM credentials WHERE id = ?1",
                params![credential],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }
}

impl Tx<'_> {
    /// Records that deployment `id` left `version_id` live for mapping `name`.
    pub fn record_deployment_mapping(
        &self,
        id: DeploymentId,
        name: &str,
        version_id: i64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO deployment_mappings (deployment_id, name, version_id) VALUES (?1, ?2, ?3)",
            params![id, name, version_id],
        )?;
        Ok(())
    }

    /// Makes `version_id` the live version of mapping `name` (a rollback); the version keeps
    /// its definition and files.
    pub fn set_live_mapping(
        &self,
        container: ContainerId,
        name: &str,
        version_id: i64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO mappings (container_id, name, version_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (container_id, name) DO UPDATE SET version_id = excluded.version_id",
            params![container, name, version_id],
        )?;
        Ok(())
    }

    /// Copies the files of mapping version `from` into version `to` (a new definition whose
    /// files are unchanged).
    pub fn copy_mapping_files(&self, from: i64, to: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO mapping_files (version_id, path, data, sha256)
             SELECT ?2, path, data, sha256 FROM mapping_files WHERE version_id = ?1",
            params![from, to],
        )?;
        Ok(())
    }

    /// Records credential `name` of `container` as deployment `id` leaves it: its record and
    /// its secrets' ciphertext (encrypted for the same path, so valid there again).
    pub fn record_credential_version(
        &self,
        id: DeploymentId,
        container: ContainerId,
        name: &str,
    ) -> Result<()> {
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT INTO credential_versions (deployment_id, container_id, name, type, public, needs_authorization)
             SELECT ?1, container_id, name, type, public, needs_authorization FROM credentials
             WHERE container_id = ?2 AND name = ?3",
            params![id, container, name],
        )?;
        if inserted == 0 {
            return Ok(());
        }
        let version = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO credential_version_secrets (version_id, field, ciphertext, fingerprint)
             SELECT ?1, s.field, s.ciphertext, s.fingerprint FROM credential_secrets s
             JOIN credentials c ON c.id = s.credential_id WHERE c.container_id = ?2 AND c.name = ?3",
            params![version, container, name],
        )?;
        Ok(())
    }

    /// Replaces every secret of a credential with `secrets` (ciphertext as recorded).
    pub fn replace_secrets(&self, credential: CredentialId, secrets: &[SecretRow]) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM credential_secrets WHERE credential_id = ?1",
            params![credential],
        )?;
        for s in secrets {
            conn.execute(
                "INSERT INTO credential_secrets (credential_id, field, ciphertext, fingerprint) VALUES (?1, ?2, ?3, ?4)",
                params![credential, s.field, s.ciphertext, s.fingerprint],
            )?;
        }
        conn.execute(
            "UPDATE credentials SET token_version = token_version + 1 WHERE id = ?1",
            params![credential],
        )?;
        Ok(())
    }

    /// Marks a credential as changed outside deployments (`true`), or as just written by one.
    pub fn set_changed_outside(&self, credential: CredentialId, on: bool) -> Result<()> {
        self.conn().execute(
            "UPDATE credentials SET changed_outside = ?1 WHERE id = ?2",
            params![on, credential],
        )?;
        Ok(())
    }
}
