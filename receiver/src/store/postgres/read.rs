//! The reading queries ([`Reads`]), in the order of the SQLite engine's `read.rs`.

use std::collections::HashMap;

use flowpack_shared::names::ContainerPath;
use flowpack_shared::timefmt::Timestamp;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{CHUNK, Conn, get};
use crate::store::{
    AuditRow, ContainerId, CredentialId, CredentialRow, CredentialVersion, DeploymentId,
    DeploymentRow, Error, GrantRows, MappingFile, MappingRow, Reads, Replay, Result,
    SecretFingerprints, SecretRow, SignerListing, TokenAuth, TokenListing, Visible,
};

impl Reads for Conn {
    fn time(&self) -> Timestamp {
        self.clock_time()
    }

    fn ping(&self) -> Result<()> {
        self.one("SELECT 1", &[])?;
        Ok(())
    }

    fn note_token_used(&self, id: &str, at_ms: i64) {
        self.queue_token_use(id, at_ms);
    }

    // Principals, tokens, trust

    fn principal_by_token(&self, id: &str) -> Result<Option<TokenAuth>> {
        let rows = self.rows(
            "SELECT t.secret_sha256, p.name, t.expires_at_ms, t.last_used_at_ms, g.prefix, g.perms
             FROM tokens t JOIN principals p ON p.id = t.principal_id
             LEFT JOIN grants g ON g.principal_id = p.id WHERE t.id = $1",
            &[&id],
        )?;
        let mut found: Option<TokenAuth> = None;
        for r in &rows {
            let token = match &mut found {
                Some(f) => f,
                None => found.insert(TokenAuth {
                    secret_sha256: get(r, 0)?,
                    principal: get(r, 1)?,
                    expires_at_ms: get(r, 2)?,
                    last_used_at_ms: get(r, 3)?,
                    grants: Vec::new(),
                }),
            };
            if let (Some(prefix), Some(perms)) = (get(r, 4)?, get(r, 5)?) {
                token.grants.push((prefix, perms));
            }
        }
        Ok(found)
    }

    fn tokens(&self) -> Result<Vec<TokenListing>> {
        let mut grants: HashMap<String, GrantRows> = HashMap::new();
        for r in &self.rows(
            "SELECT p.name, g.prefix, g.perms FROM grants g JOIN principals p ON p.id = g.principal_id
             ORDER BY p.name, g.prefix",
            &[],
        )? {
            grants
                .entry(get(r, 0)?)
                .or_default()
                .push((get(r, 1)?, get(r, 2)?));
        }
        self.rows(
            "SELECT t.id, p.name, t.created_at, t.expires_at_ms, t.last_used_at_ms
             FROM tokens t JOIN principals p ON p.id = t.principal_id
             ORDER BY p.name, t.created_at, t.id",
            &[],
        )?
        .iter()
        .map(|r| {
            let principal: String = get(r, 1)?;
            Ok(TokenListing {
                id: get(r, 0)?,
                grants: grants.get(&principal).cloned().unwrap_or_default(),
                principal,
                created_at: get(r, 2)?,
                expires_at_ms: get(r, 3)?,
                last_used_at_ms: get(r, 4)?,
            })
        })
        .collect()
    }

    fn signers(&self) -> Result<Vec<SignerListing>> {
        self.rows(
            "SELECT key_id, containers, added_at FROM trusted_signers ORDER BY key_id",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(SignerListing {
                key_id: get(r, 0)?,
                containers: get(r, 1)?,
                added_at: get(r, 2)?,
            })
        })
        .collect()
    }

    fn signer(&self, key_id: &str) -> Result<Option<(Vec<u8>, String)>> {
        self.row(
            "SELECT public_key, containers FROM trusted_signers WHERE key_id = $1",
            &[&key_id],
        )?
        .map(|r| Ok((get(&r, 0)?, get(&r, 1)?)))
        .transpose()
    }

    // Containers

    fn container_id(&self, path: &ContainerPath) -> Result<Option<ContainerId>> {
        self.row(
            "SELECT id FROM containers WHERE path = $1",
            &[&path.as_str()],
        )?
        .map(|r| Ok(ContainerId(get(&r, 0)?)))
        .transpose()
    }

    fn children(&self, id: ContainerId) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let list = |sql: &str| -> Result<Vec<String>> {
            self.rows(sql, &[&id.0])?
                .iter()
                .map(|r| get(r, 0))
                .collect()
        };
        Ok((
            list("SELECT name FROM containers WHERE parent_id = $1 ORDER BY name")?,
            list("SELECT name FROM mappings WHERE container_id = $1 ORDER BY name")?,
            list("SELECT name FROM credentials WHERE container_id = $1 ORDER BY name")?,
        ))
    }

    // Mappings

    fn mapping(&self, container: ContainerId, name: &str) -> Result<Option<MappingRow>> {
        self.row(
            "SELECT v.id, v.version, v.definition FROM mappings m JOIN mapping_versions v ON v.id = m.version_id
             WHERE m.container_id = $1 AND m.name = $2",
            &[&container.0, &name],
        )?
        .map(|r| {
            Ok(MappingRow {
                version_id: get(&r, 0)?,
                version: get(&r, 1)?,
                definition: get(&r, 2)?,
            })
        })
        .transpose()
    }

    fn mappings_in(&self, container: ContainerId) -> Result<Vec<(String, String)>> {
        self.rows(
            "SELECT m.name, v.definition FROM mappings m JOIN mapping_versions v ON v.id = m.version_id
             WHERE m.container_id = $1 ORDER BY m.name",
            &[&container.0],
        )?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect()
    }

    fn mapping_file(&self, version_id: i64, path: &str) -> Result<Option<MappingFile<'_>>> {
        let Some(row) = self.row(
            "SELECT size FROM mapping_files WHERE version_id = $1 AND path = $2",
            &[&version_id, &path],
        )?
        else {
            return Ok(None);
        };
        let size: i64 = get(&row, 0)?;
        let len = u64::try_from(size)
            .map_err(|_| Error::Engine(format!("mapping file {path}: size {size}").into()))?;
        let chunks = Chunks {
            conn: self,
            version_id,
            path: path.to_owned(),
            next: 0,
            chunk: Vec::new(),
            at: 0,
        };
        Ok(Some(MappingFile::new(Box::new(chunks), len)))
    }

    fn mapping_file_digests(&self, version_id: i64) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        self.rows(
            "SELECT path, sha256 FROM mapping_files WHERE version_id = $1 ORDER BY path",
            &[&version_id],
        )?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect()
    }

    // Credentials

    fn credential(&self, container: ContainerId, name: &str) -> Result<Option<CredentialRow>> {
        self.row(
            &format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE container_id = $1 AND name = $2"
            ),
            &[&container.0, &name],
        )?
        .map(|r| credential_row_at(&r, 0))
        .transpose()
    }

    fn credential_at(
        &self,
        container: &ContainerPath,
        name: &str,
    ) -> Result<Option<(CredentialRow, SecretFingerprints)>> {
        let rows = self.rows(
            "SELECT x.id, x.type, x.public, x.token_version, x.needs_authorization, s.field, s.fingerprint
             FROM containers c JOIN credentials x ON x.container_id = c.id
             LEFT JOIN credential_secrets s ON s.credential_id = x.id
             WHERE c.path = $1 AND x.name = $2 ORDER BY s.field",
            &[&container.as_str(), &name],
        )?;
        let mut found: Option<(CredentialRow, SecretFingerprints)> = None;
        for r in &rows {
            let (_, secrets) = match &mut found {
                Some(f) => f,
                None => found.insert((credential_row_at(r, 0)?, Vec::new())),
            };
            if let (Some(field), Some(fingerprint)) = (get(r, 5)?, get(r, 6)?) {
                secrets.push((field, fingerprint));
            }
        }
        Ok(found)
    }

    fn credential_by_id(
        &self,
        id: CredentialId,
    ) -> Result<Option<(String, String, CredentialRow)>> {
        self.row(
            "SELECT c.path, x.name, x.id, x.type, x.public, x.token_version, x.needs_authorization
             FROM credentials x JOIN containers c ON c.id = x.container_id WHERE x.id = $1",
            &[&id.0],
        )?
        .map(|r| Ok((get(&r, 0)?, get(&r, 1)?, credential_row_at(&r, 2)?)))
        .transpose()
    }

    fn secrets(&self, credential: CredentialId) -> Result<Vec<SecretRow>> {
        self.rows(
            "SELECT field, ciphertext, fingerprint FROM credential_secrets WHERE credential_id = $1 ORDER BY field",
            &[&credential.0],
        )?
        .iter()
        .map(secret_row)
        .collect()
    }

    fn changed_outside(&self, credential: CredentialId) -> Result<bool> {
        Ok(self
            .row(
                "SELECT changed_outside FROM credentials WHERE id = $1",
                &[&credential.0],
            )?
            .map(|r| get(&r, 0))
            .transpose()?
            .unwrap_or(false))
    }

    // Deployments and their history

    fn deployment_by_bundle(&self, bundle_id: &str) -> Result<Option<Replay>> {
        self.row(
            "SELECT record, container, manifest_sha256 FROM deployments WHERE bundle_id = $1",
            &[&bundle_id],
        )?
        .map(|r| {
            Ok(Replay {
                record: get(&r, 0)?,
                container: get(&r, 1)?,
                manifest_sha256: get(&r, 2)?,
            })
        })
        .transpose()
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
        self.page("SELECT id, record FROM deployments", &page)?
            .iter()
            .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
            .collect()
    }

    fn newest_created(&self, container: &str) -> Result<Option<i64>> {
        let row = self.one(
            "SELECT MAX(created_at_ms) FROM deployments WHERE container = $1",
            &[&container],
        )?;
        get(&row, 0)
    }

    fn deployment(&self, id: DeploymentId) -> Result<Option<DeploymentRow>> {
        self.row(
            "SELECT container, record, created_at_ms FROM deployments WHERE id = $1",
            &[&id.0],
        )?
        .map(|r| {
            Ok(DeploymentRow {
                id,
                container: get(&r, 0)?,
                record: get(&r, 1)?,
                created_at_ms: get(&r, 2)?,
            })
        })
        .transpose()
    }

    fn deployment_mappings(&self, id: DeploymentId) -> Result<Vec<(String, i64)>> {
        self.rows(
            "SELECT name, version_id FROM deployment_mappings WHERE deployment_id = $1
             UNION ALL
             SELECT name, id FROM mapping_versions WHERE deployment_id = $1
               AND NOT EXISTS (SELECT 1 FROM deployment_mappings WHERE deployment_id = $1)
             ORDER BY 1",
            &[&id.0],
        )?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect()
    }

    fn credential_versions(&self, id: DeploymentId) -> Result<Vec<CredentialVersion>> {
        let mut versions = self
            .rows(
                "SELECT id, name, type, public, needs_authorization FROM credential_versions
                 WHERE deployment_id = $1 ORDER BY name",
                &[&id.0],
            )?
            .iter()
            .map(|r| {
                Ok(CredentialVersion {
                    id: get(r, 0)?,
                    name: get(r, 1)?,
                    kind: get(r, 2)?,
                    public: get(r, 3)?,
                    needs_authorization: get(r, 4)?,
                    secrets: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for v in &mut versions {
            v.secrets = self
                .rows(
                    "SELECT field, ciphertext, fingerprint FROM credential_version_secrets
                     WHERE version_id = $1 ORDER BY field",
                    &[&v.id],
                )?
                .iter()
                .map(secret_row)
                .collect::<Result<_>>()?;
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
        )?
        .iter()
        .map(|r| {
            let status: i32 = get(r, 9)?;
            Ok(AuditRow {
                id: get(r, 0)?,
                at: get(r, 1)?,
                principal: get(r, 2)?,
                action: get(r, 3)?,
                container: get(r, 4)?,
                target: get(r, 5)?,
                bundle_id: get(r, 6)?,
                signer_key_id: get(r, 7)?,
                outcome: get(r, 8)?,
                status: u16::try_from(status)
                    .map_err(|_| Error::Engine(format!("audit status {status}").into()))?,
                code: get(r, 10)?,
                detail: get(r, 11)?,
                verified: get(r, 12)?,
            })
        })
        .collect()
    }

    // Keys

    fn at_rest_key_id(&self) -> Result<Option<String>> {
        self.row("SELECT key_id FROM at_rest_key WHERE id = 1", &[])?
            .map(|r| get(&r, 0))
            .transpose()
    }
}

/// A stored mapping file, read one chunk at a time. Files are never changed once committed, so
/// reading the chunks in separate statements sees the same bytes.
struct Chunks<'a> {
    conn: &'a Conn,
    version_id: i64,
    path: String,
    /// The next chunk's number.
    next: i64,
    /// The chunk being read, and how far.
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.chunk.len() {
            let row = self
                .conn
                .row(
                    "SELECT data FROM mapping_file_chunks WHERE version_id = $1 AND path = $2 AND seq = $3",
                    &[&self.version_id, &self.path, &self.next],
                )
                .map_err(std::io::Error::other)?;
            let Some(row) = row else {
                return Ok(0);
            };
            self.chunk = get(&row, 0).map_err(std::io::Error::other)?;
            debug_assert!(self.chunk.len() <= CHUNK);
            self.at = 0;
            self.next += 1;
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Conn {
    /// The rows `select` (a `SELECT … FROM table` whose table has `id` and `container`)
    /// yields for `page`, newest first.
    fn page(&self, select: &str, page: &Page<'_>) -> Result<Vec<Row>> {
        let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let cond = page.visible.pg_condition("container", &mut args);
        args.push(Box::new(page.before.unwrap_or(i64::MAX)));
        let mut sql = format!("{select} WHERE {cond} AND id < ${}", args.len());
        if let Some(c) = page.container {
            args.push(Box::new(c.to_owned()));
            sql.push_str(&format!(" AND container = ${}", args.len()));
        }
        args.push(Box::new(i64::try_from(page.limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a).collect();
        self.rows(&sql, &params)
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
    /// The SQL condition on `column`; its parameters are appended to `args`, numbered after
    /// those already there.
    fn pg_condition(&self, column: &str, args: &mut Vec<Box<dyn ToSql + Sync>>) -> String {
        match self {
            Visible::All => "TRUE".into(),
            Visible::Under(prefixes) if prefixes.is_empty() => "FALSE".into(),
            Visible::Under(prefixes) => {
                // `substr` rather than LIKE: `_` is a wildcard there and legal in names.
                let mut terms = Vec::with_capacity(prefixes.len());
                for p in prefixes {
                    args.push(Box::new(p.clone()));
                    args.push(Box::new(format!("{p}/")));
                    terms.push(format!(
                        "({column} = ${} OR substr({column}, 1, {}) = ${})",
                        args.len() - 1,
                        p.len() + 1,
                        args.len()
                    ));
                }
                format!("({})", terms.join(" OR "))
            }
        }
    }
}

const CREDENTIAL_COLUMNS: &str = "id, type, public, token_version, needs_authorization";

fn credential_row_at(r: &Row, at: usize) -> Result<CredentialRow> {
    Ok(CredentialRow {
        id: CredentialId(get(r, at)?),
        kind: get(r, at + 1)?,
        public: get(r, at + 2)?,
        token_version: get(r, at + 3)?,
        needs_authorization: get(r, at + 4)?,
    })
}

fn secret_row(r: &Row) -> Result<SecretRow> {
    Ok(SecretRow {
        field: get(r, 0)?,
        ciphertext: get(r, 1)?,
        fingerprint: get(r, 2)?,
    })
}
