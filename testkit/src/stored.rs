//! What a test receiver's store holds, read directly rather than through the receiver, for
//! tests of what is stored (or must not be): on either engine, the store that the data
//! directory's `config.json` names.

use std::path::{Path, PathBuf};

use crate::store::admin;

/// A receiver's store, opened read-only by the test.
#[derive(Debug, Clone)]
pub enum Stored {
    /// The embedded store: `store.db` and its write-ahead log.
    Embedded(PathBuf),
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

impl Stored {
    /// The store of the data directory `data`.
    pub fn of(data: &Path) -> Stored {
        use flowpack_receiver::config::{self, StoreKind};
        let file = data.join("config.json");
        let config = config::read(&file).unwrap_or_else(|e| panic!("{e:#}"));
        match config.store {
            StoreKind::Postgres(url) => Stored::Postgres(url.expose().to_owned()),
            StoreKind::Sqlite => Stored::Embedded(data.join("store.db")),
        }
    }

    /// The one integer `sql` (standard SQL both engines read alike, e.g. `count(*)`) answers.
    pub fn count(&self, sql: &str) -> i64 {
        match self {
            Stored::Embedded(db) => sqlite(db)
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Stored::Postgres(url) => {
                let sql = sql.to_owned();
                admin(url, move |c| async move {
                    c.query_one(&sql, &[]).await.map(|r| r.get::<_, i64>(0))
                })
            }
        }
    }

    /// The first column of every row `sql` answers, as bytes (a blob, or text).
    pub fn column(&self, sql: &str) -> Vec<Vec<u8>> {
        match self {
            Stored::Embedded(db) => {
                let db = sqlite(db);
                let mut st = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                st.query_map([], |r| {
                    use rusqlite::types::ValueRef;
                    Ok(match r.get_ref(0)? {
                        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
                        ValueRef::Integer(i) => i.to_string().into_bytes(),
                        ValueRef::Real(f) => f.to_string().into_bytes(),
                        ValueRef::Null => Vec::new(),
                    })
                })
                .and_then(|rows| rows.collect())
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Stored::Postgres(url) => {
                let sql = sql.to_owned();
                admin(url, move |c| async move {
                    let rows = c.query(&sql, &[]).await?;
                    Ok(rows.iter().map(|r| r.get::<_, Raw>(0).0).collect())
                })
            }
        }
    }

    /// Every table but those in `skip`, each with its rows as text, in a stable order; columns
    /// `(table, column)` in `leave_out` are left out. For comparing a store with itself.
    pub fn tables(&self, skip: &[&str], leave_out: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .table_names()
            .into_iter()
            .filter(|t| !skip.contains(&t.as_str()))
            .map(|t| {
                let columns: Vec<String> = self
                    .column_names(&t)
                    .into_iter()
                    .filter(|c| !leave_out.contains(&(t.as_str(), c.as_str())))
                    .collect();
                let rows = self.rows_as_text(&t, &columns);
                (t, rows)
            })
            .collect();
        out.sort();
        out
    }

    /// Everything the store holds, as bytes in which a stored value appears as it was
    /// written: the embedded store's files (the database and its write-ahead log), or every
    /// value of every row of every table of the database, in PostgreSQL's binary form (text
    /// as its UTF-8 bytes, `bytea` as itself).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Stored::Embedded(db) => {
                let mut all = Vec::new();
                for file in [db.clone(), db.with_extension("db-wal")] {
                    if let Ok(bytes) = std::fs::read(&file) {
                        all.extend(bytes);
                    }
                }
                all
            }
            Stored::Postgres(url) => {
                let mut all = Vec::new();
                for t in self.table_names() {
                    let sql = format!("SELECT * FROM {t}");
                    let values = admin(url, move |c| async move {
                        let rows = c.query(&sql, &[]).await?;
                        Ok(rows
                            .iter()
                            .flat_map(|r| {
                                (0..r.len()).map(move |i| {
                                    r.get::<_, Option<Raw>>(i).map(|v| v.0).unwrap_or_default()
                                })
                            })
                            .collect::<Vec<_>>())
                    });
                    for v in values {
                        all.extend(v);
                        all.push(0);
                    }
                }
                all
            }
        }
    }

    fn table_names(&self) -> Vec<String> {
        let sql = match self {
            Stored::Embedded(_) => "SELECT name FROM sqlite_master WHERE type = 'table'",
            Stored::Postgres(_) => {
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'"
            }
        };
        self.texts(sql)
    }

    fn column_names(&self, table: &str) -> Vec<String> {
        match self {
            Stored::Embedded(_) => self.texts(&format!("SELECT name FROM pragma_table_info('{table}')")),
            Stored::Postgres(_) => self.texts(&format!(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position"
            )),
        }
    }

    fn rows_as_text(&self, table: &str, columns: &[String]) -> Vec<String> {
        let mut rows = match self {
            Stored::Embedded(db) => {
                let db = sqlite(db);
                let sql = format!("SELECT {} FROM {table}", columns.join(", "));
                let mut st = db.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let n = st.column_count();
                st.query_map([], |r| {
                    let cells: Vec<String> = (0..n)
                        .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                        .collect::<Result<_, _>>()?;
                    Ok(cells.join("|"))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Stored::Postgres(_) => {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| format!("coalesce({c}::text, 'NULL')"))
                    .collect();
                let sql = format!("SELECT concat_ws('|', {}) FROM {table}", cells.join(", "));
                self.texts(&sql)
            }
        };
        rows.sort();
        rows
    }

    fn texts(&self, sql: &str) -> Vec<String> {
        self.column(sql)
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap_or_else(|e| panic!("{sql}: {e}")))
            .collect()
    }
}

fn sqlite(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
}

/// A value of any type, as the bytes of its binary form.
struct Raw(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}
