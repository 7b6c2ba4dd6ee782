//! The reading queries ([`Reads`]), grouped by what they concern: principals and trust,
//! containers, mappings, credentials, deployments and their history, audit, keys.

use flowpack_shared::names::ContainerPath;
use flowpack_shared::timefmt::Timestamp;
use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, params};

use super::{Cached, Conn};
use crate::store::{
    AuditRow, ContainerId, CredentialId, CredentialRow, CredentialVersion, DeploymentId,
    DeploymentRow, GrantRows, MappingFile, MappingRow, Reads, Replay, Result, SecretFingerprints,
    SecretRow, SignerListing, TokenAuth, TokenListing, Visible,
};

impl Reads for Conn {
    fn time(&self) -> Timestamp {
        self.clock_time()
    }

    fn ping(&self) -> Result<()> {
        let _: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(())
    }

    fn note_token_used(&self, id: &str, at_ms: i64) {
        self.queue_token_use(id, at_ms);
    }

    // Principals, tokens, trust

    fn principal_by_token(&self, id: &str) -> Result<Option<TokenAuth>> {
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

    fn tokens(&self) -> Result<Vec<TokenListing>> {
        let mut grants: std::collections::HashMap<String, GrantRows> =
            std::collections::HashMap::new();
        let mut st = self.conn.prepare_cached(
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
        let mut st = self.conn.prepare_cached(
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

    fn signers(&self) -> Result<Vec<SignerListing>> {
        let mut st = self.conn.prepare_cached(
            "SELECT key_id, containers, added_at FROM trusted_signers ORDER BY key_id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(SignerListing {
                key_id: r.get(0)?,
                containers: r.get(1)?,
                added_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn signer(&self, key_id: &str) -> Result<Option<(Vec<u8>, String)>> {
        Ok(self
            .conn
            .query_row_cached(
                "SELECT public_key, containers FROM trusted_signers WHERE key_id = ?1",
                params![key_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    // Containers

    fn container_id(&self, path: &ContainerPath) -> Result<Option<ContainerId>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM containers WHERE path = ?1")?
            .query_row(params![path.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn children(&self, id: ContainerId) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
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

    // Mappings

    fn mapping(&self, container: ContainerId, name: &str) -> Result<Option<MappingRow>> {
        Ok(self
            .conn
            .query_row_cached(
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

    fn mappings_in(&self, container: ContainerId) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT m.name, v.definition FROM mappings m JOIN mapping_versions v ON v.id = m.version_id
             WHERE m.container_id = ?1 ORDER BY m.name",
        )?;
        let rows = st.query_map(params![container], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn mapping_file(&self, version_id: i64, path: &str) -> Result<Option<MappingFile<'_>>> {
        let row: Option<i64> = self
            .conn
            .query_row_cached(
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
        Ok(Some(MappingFile::new(Box::new(blob), len)))
    }

    fn mapping_file_digests(&self, version_id: i64) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT path, sha256 FROM mapping_files WHERE version_id = ?1 ORDER BY path",
        )?;
        let rows = st.query_map(params![version_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // Credentials

    fn credential(&self, container: ContainerId, name: &str) -> Result<Option<CredentialRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE container_id = ?1 AND name = ?2"
            ))?
            .query_row(params![container, name], credential_row)
            .optional()?)
    }

    fn credential_at(
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

    fn credential_by_id(
        &self,
        id: CredentialId,
    ) -> Result<Option<(String, String, CredentialRow)>> {
        Ok(self
            .conn
            .query_row_cached(
                "SELECT c.path, x.name, x.id, x.type, x.public, x.token_version, x.needs_authorization
                 FROM credentials x JOIN containers c ON c.id = x.container_id WHERE x.id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, credential_row_at(r, 2)?)),
            )
            .optional()?)
    }

    fn secrets(&self, credential: CredentialId) -> Result<Vec<SecretRow>> {
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

    fn changed_outside(&self, credential: CredentialId) -> Result<bool> {
        Ok(self
            .conn
            .query_row_cached(
                "SELECT changed_outside FROM credentials WHERE id = ?1",
                params![credential],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    // Deployments and their history

    fn deployment_by_bundle(&self, bundle_id: &str) -> Result<Option<Replay>> {
        Ok(self
            .conn
            .query_row_cached(
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

    fn deployments_page(
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

    fn newest_created(&self, container: &str) -> Result<Option<i64>> {
        Ok(self.conn.query_row_cached(
            "SELECT MAX(created_at_ms) FROM deployments WHERE container = ?1",
            params![container],
            |r| r.get(0),
        )?)
    }

    fn deployment(&self, id: DeploymentId) -> Result<Option<DeploymentRow>> {
        Ok(self
            .conn
            .query_row_cached(
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

    fn deployment_mappings(&self, id: DeploymentId) -> Result<Vec<(String, i64)>> {
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

    fn credential_versions(&self, id: DeploymentId) -> Result<Vec<CredentialVersion>> {
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

    // Audit

    fn audit_page(
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

    // Keys

    fn at_rest_key_id(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT key_id FROM at_rest_key WHERE id = 1")?
            .query_row([], |r| r.get(0))
            .optional()?)
    }
}

impl Conn {
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
        // Not cached: the text depends on the caller's grants, so it is not one of the store's
        // fixed statements.
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(&args), row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Which page of a listing: see [`Reads::deployments_page`].
struct Page<'a> {
    visible: &'a Visible,
    container: Option<&'a str>,
    before: Option<i64>,
    limit: usize,
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
