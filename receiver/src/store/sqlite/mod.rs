//! The SQLite engine of the storage interface: the connection pool (this file), the queries
//! (`read.rs`, `write.rs`), the group committer (`group.rs`), WAL checkpoints
//! (`checkpoint.rs`), and the schema with its migrations (`schema.rs`).
//!
//! One file in WAL mode with `synchronous=FULL`; one connection per request at a time
//! (long-lived ones, kept configured between requests, with their prepared statements) and
//! `BEGIN IMMEDIATE` for writers. Deploys are written by one thread that owns a connection and
//! commits queued jobs in batches, each job in a savepoint; a second thread checkpoints the WAL
//! in the background. Single flight per credential is an in-process lock: one process owns a
//! data directory (`serve` takes its lock).

mod checkpoint;
mod group;
mod read;
pub(super) mod schema;
mod watch;
mod write;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak, mpsc};
use std::time::Duration;

use rusqlite::{Connection as Sqlite, params};

use self::group::SqliteWriter;
use self::schema::SCHEMA;
use self::watch::Watch;
use super::SCHEMA_VERSION;
use super::engine::{Connection, CredentialLock, Engine, Locking};
use super::group::{Background, Flights, KeyChecks, TokenUses, group_commit, spawn_writer};
use super::handle::Job;
use super::schema::{STEPS, step_from};
use super::{Clock, CredentialId, Error, Generation, KeyCheck, Result, Store};
use flowpack_shared::timefmt::Timestamp;

/// Row ids are stored as the integers they wrap.
macro_rules! sql_ids {
    ($($name:ident),*) => {$(
        impl rusqlite::types::ToSql for super::$name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.0))
            }
        }

        impl rusqlite::types::FromSql for super::$name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(v).map(super::$name)
            }
        }
    )*};
}

sql_ids!(ContainerId, CredentialId, DeploymentId);

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Engine(Box::new(e))
    }
}

/// The database file, its idle connections ([`Engine::connect`] takes one from there and its
/// [`Conn`] gives it back), and the two threads started on first use: the group committer
/// and the checkpointer. The threads end when the engine is dropped.
struct Sqlite3 {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    idle: Mutex<Vec<Sqlite>>,
    /// The group committer's queue.
    writer: OnceLock<Background<mpsc::Sender<Job>>>,
    /// Wakes the checkpointer; a full queue means a checkpoint is already due.
    checkpoints: OnceLock<Background<mpsc::SyncSender<()>>>,
    /// Transactions the group committer has committed.
    batches: AtomicU64,
    /// What rows are stamped with.
    clock: Clock,
    /// Tokens whose use is queued to be recorded ([`Reads::note_token_used`](super::Reads::note_token_used)).
    touching: TokenUses,
    /// Called at the start of every write transaction with the id of the at-rest key the
    /// store's secrets are under ([`Engine::check_keys_on_write`]).
    key_check: KeyChecks,
    /// One lock per credential.
    flights: Flights,
    /// The WAL index, opened on first use; `None` if it could not be.
    watch: OnceLock<Option<Watch>>,
}

impl std::fmt::Debug for Sqlite3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// At most this many idle connections are kept; one returned beyond that is closed. About the
/// number of blocking threads that run requests at once (see `main.rs`).
const MAX_IDLE: usize = 32;

/// Prepared statements kept per connection ([`Sqlite::prepare_cached`]): more than the store
/// has, so that none is parsed twice by one connection.
const STATEMENT_CACHE: usize = 256;

/// Statements run through the connection's statement cache. The store's statements are a
/// fixed set: each is parsed once per connection instead of at every call (parsing was a
/// third of the group committer's time when many small deploys came at once).
trait Cached {
    /// [`Sqlite::execute`], prepared once.
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;

    /// [`Sqlite::query_row`], prepared once.
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;

    /// Runs one statement without parameters, prepared once (transaction control).
    fn run_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.execute_cached(sql, []).map(drop)
    }
}

impl Cached for Sqlite {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// The checkpointer's pause after a checkpoint: commits in the meantime wait for the next one.
/// Bounds the checkpoints (each syncs the database file) to a few per second under load.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(250);

/// Creates a new database with the schema.
pub(super) fn create(path: &Path, clock: Clock) -> anyhow::Result<Store> {
    let engine = Sqlite3::at(path, clock);
    let conn = engine.conn()?;
    conn.conn.execute_batch("BEGIN IMMEDIATE")?;
    conn.conn.execute_batch(SCHEMA)?;
    for step in STEPS {
        conn.conn.execute_batch(step.sqlite)?;
    }
    conn.conn
        .pragma_update(None, "user_version", SCHEMA_VERSION)?;
    // The root always exists, even before the first deploy.
    conn.ensure_root()?;
    conn.conn.execute_batch("COMMIT")?;
    drop(conn);
    Ok(Store::new(Arc::new(engine)))
}

/// Opens an existing database, upgrading an older schema in one transaction, and checks its
/// schema version.
pub(super) fn open(path: &Path, clock: Clock) -> anyhow::Result<Store> {
    let engine = Sqlite3::at(path, clock);
    let conn = engine.conn()?;
    let version = |c: &Conn| -> Result<i64> {
        Ok(c.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    };
    if (1..SCHEMA_VERSION).contains(&version(&conn)?) {
        conn.conn.execute_batch("BEGIN IMMEDIATE")?;
        // Read again under the writer lock: another process may have upgraded meanwhile. An
        // error rolls back when the connection is given back.
        let mut v = version(&conn)?;
        while let Some(step) = step_from(v) {
            conn.conn.execute_batch(step.sqlite)?;
            v += 1;
            conn.conn.pragma_update(None, "user_version", v)?;
        }
        conn.conn.execute_batch("COMMIT")?;
    }
    let v = version(&conn)?;
    if v > SCHEMA_VERSION {
        // Nothing was changed: a newer schema is never touched.
        anyhow::bail!(
            "{}: written by a newer flowpack-receiver (schema version {v}; this one knows versions up to {SCHEMA_VERSION}); downgrading is not supported: run the newer version again, or restore a backup taken before the upgrade",
            path.display()
        );
    }
    if v != SCHEMA_VERSION {
        anyhow::bail!(
            "{}: schema version {v}, this receiver needs {SCHEMA_VERSION}",
            path.display()
        );
    }
    drop(conn);
    Ok(Store::new(Arc::new(engine)))
}

impl Sqlite3 {
    fn at(path: &Path, clock: Clock) -> Sqlite3 {
        Sqlite3 {
            shared: Arc::new(Shared {
                clock,
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
                writer: OnceLock::new(),
                checkpoints: OnceLock::new(),
                batches: AtomicU64::new(0),
                touching: TokenUses::default(),
                key_check: KeyChecks::default(),
                flights: Flights::default(),
                watch: OnceLock::new(),
            }),
        }
    }

    /// A connection for one request, taken from the idle ones or opened when there is none
    /// (see `connect`). Opening and configuring costs about a millisecond (SQLite parses the
    /// schema), so connections are kept: the handle gives its connection back when dropped.
    fn conn(&self) -> Result<Conn> {
        let reused = self
            .shared
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match reused {
            Some(conn) => conn,
            None => connect(&self.shared.path)?,
        };
        Ok(Conn {
            conn: Pooled {
                conn: Some(conn),
                home: Arc::downgrade(&self.shared),
            },
        })
    }
}

impl Engine for Sqlite3 {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        Ok(Box::new(self.conn()?))
    }

    fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        self.shared.submit(job)
    }

    fn batches_committed(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    fn check_keys_on_write(&self, check: KeyCheck) {
        self.shared.key_check.install(check);
    }

    fn lock_credential(&self, id: CredentialId) -> Locking<'_> {
        let lock = self.shared.flights.of(id);
        Box::pin(async move { Ok(CredentialLock(Box::new(lock.lock_owned().await))) })
    }

    fn time(&self) -> Timestamp {
        (self.shared.clock)()
    }

    fn generation(&self) -> Option<Generation> {
        let watch = self.shared.watch.get_or_init(|| {
            Watch::open(&self.shared.path)
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "the WAL index cannot be watched; answers are not cached")
                })
                .ok()
        });
        watch.as_ref()?.generation()
    }
}

impl Shared {
    /// Queues `job` for the group committer, starting its thread on first use.
    fn submit(self: &Arc<Self>, job: Job) -> std::result::Result<(), Job> {
        self.writer
            .get_or_init(|| {
                let writer = SqliteWriter {
                    path: self.path.clone(),
                    home: Arc::downgrade(self),
                };
                spawn_writer(move |jobs| group_commit(&writer, jobs))
            })
            .sender()
            .send(job)
            .map_err(|e| e.0)
    }
}

/// Opens a connection: WAL mode with `synchronous=FULL` and foreign keys on, waiting up to
/// 30 s for a busy writer, and no automatic checkpoints (the checkpointer runs them, off
/// the committing request's path).
fn connect(path: &Path) -> Result<Sqlite> {
    let conn = Sqlite::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Once a checkpoint resets the log, a log grown past this by a large deploy is truncated.
    conn.pragma_update(None, "journal_size_limit", 256 * 1024 * 1024)?;
    // Freed pages are overwritten, so a cleared secret's ciphertext does not linger.
    conn.pragma_update(None, "secure_delete", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// A connection on loan from the engine's idle list, given back on drop: only outside a
/// transaction (one left open is rolled back first, and the connection closed if that fails),
/// so the next request never inherits another's transaction or snapshot.
struct Pooled {
    /// `Some` until dropped.
    conn: Option<Sqlite>,
    /// The engine it goes back to; also told of commits. Empty for the group committer's own.
    home: Weak<Shared>,
}

impl Deref for Pooled {
    type Target = Sqlite;
    fn deref(&self) -> &Sqlite {
        // Invariant: `conn` is `None` only inside `drop`.
        self.conn
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !conn.is_autocommit()
            && let Err(e) = conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rolling back a returned connection failed; closing it");
            return;
        }
        let Some(home) = self.home.upgrade() else {
            return;
        };
        let mut idle = home.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// One connection of the engine: implements the queries ([`Reads`](super::Reads) in `read.rs`,
/// [`super::Writes`] in `write.rs`) and the transaction control ([`Connection`]).
struct Conn {
    conn: Pooled,
}

impl Conn {
    /// The store's time, as rows are stamped with it.
    fn now(&self) -> String {
        self.clock_time().to_string()
    }

    /// The store's clock; costs one upgrade of a weak reference (two atomic operations).
    fn clock_time(&self) -> Timestamp {
        match self.conn.home.upgrade() {
            Some(home) => (home.clock)(),
            // The store is gone (only a handle outliving it); its clock with it.
            None => Timestamp::now(),
        }
    }

    /// Queues the record of a token's use (see [`Reads::note_token_used`](super::Reads::note_token_used)).
    fn queue_token_use(&self, id: &str, at_ms: i64) {
        if let Some(home) = self.conn.home.upgrade() {
            home.touching
                .queue(&|job| home.submit(job).is_ok(), id, at_ms);
        }
    }
}

impl Connection for Conn {
    fn begin(&self) -> Result<()> {
        self.conn.run_cached("BEGIN IMMEDIATE")?;
        if let Some(home) = self.conn.home.upgrade()
            && let Err(e) = home.key_check.run(self)
        {
            self.rollback();
            return Err(e);
        }
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        self.conn.run_cached("COMMIT")?;
        if let Some(home) = self.conn.home.upgrade() {
            home.committed();
        }
        Ok(())
    }

    fn rollback(&self) {
        // After a successful COMMIT the connection is back in autocommit mode.
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.run_cached("ROLLBACK")
        {
            tracing::error!(error = %e, "rolling back a transaction failed");
        }
    }

    fn savepoint(&self) -> Result<()> {
        self.conn.run_cached("SAVEPOINT part")?;
        Ok(())
    }

    fn release(&self, keep: bool) -> Result<()> {
        if keep {
            self.conn.run_cached("RELEASE part")?;
        } else {
            self.conn.run_cached("ROLLBACK TO part")?;
            self.conn.run_cached("RELEASE part")?;
        }
        Ok(())
    }

    fn snapshot_into(&self, to: &Path) -> Result<()> {
        let to = to
            .to_str()
            .ok_or_else(|| Error::Engine("the snapshot's path is not UTF-8".into()))?;
        self.conn.execute("VACUUM INTO ?1", params![to])?;
        Ok(())
    }
    fn truncate_wal(&self) -> Result<bool> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many principals the database at `path` holds, read on a connection of its own.
    fn principals(path: &Path) -> i64 {
        connect(path)
            .unwrap_or_else(|e| panic!("{e}"))
            .query_row("SELECT count(*) FROM principals", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_generation_changes_with_every_commit_of_any_connection_and_only_then() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        let store =
            Store::create(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        let now = || {
            store
                .generation()
                .unwrap_or_else(|| panic!("no generation"))
        };
        let first = now();
        // Reads, on the store's connections and on another one, change nothing.
        assert_eq!(principals(&path), 0);
        store
            .db()
            .unwrap_or_else(|e| panic!("{e}"))
            .tokens()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(now(), first);
        // A commit on a connection the store does not know of (another process's, say).
        let other = connect(&path).unwrap_or_else(|e| panic!("{e}"));
        other
            .execute(
                "INSERT INTO principals (name, created_at) VALUES ('p1', 'now')",
                [],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let second = now();
        assert_ne!(second, first);
        // A transaction rolled back is no commit.
        other
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO principals (name, created_at) VALUES ('p2', 'now'); ROLLBACK")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(now(), second);
        // A checkpoint that empties the log is a new generation too (harmless: a miss).
        other
            .execute_batch("INSERT INTO principals (name, created_at) VALUES ('p3', 'now')")
            .unwrap_or_else(|e| panic!("{e}"));
        let third = now();
        assert_ne!(third, second);
        let _: i64 = other
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        other
            .execute_batch("INSERT INTO principals (name, created_at) VALUES ('p4', 'now')")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(now(), third);
        assert_eq!(principals(&path), 3);
    }

    /// A database reached through a symbolic link has its WAL index beside the link's
    /// target: a stale index file left beside the link must not be the one watched.
    #[test]
    fn the_generation_is_read_from_the_index_sqlite_uses_behind_a_symbolic_link() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let real = tmp.path().join("volume");
        let dir = tmp.path().join("data");
        std::fs::create_dir_all(&real).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let target = real.join("store.db");
        drop(Store::create(&target, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}")));
        // A valid-looking index beside the link, as a crash before the move would leave.
        let keep = connect(&target).unwrap_or_else(|e| panic!("{e}"));
        let _: i64 = keep
            .query_row("SELECT count(*) FROM principals", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(real.join("store.db-shm"), dir.join("store.db-shm"))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(keep);
        let link = dir.join("store.db");
        std::os::unix::fs::symlink(&target, &link).unwrap_or_else(|e| panic!("{e}"));

        let store =
            Store::open(&link, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        let first = store
            .generation()
            .unwrap_or_else(|| panic!("no generation"));
        connect(&link)
            .unwrap_or_else(|e| panic!("{e}"))
            .execute_batch("INSERT INTO principals (name, created_at) VALUES ('p', 'now')")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(store.generation(), Some(first));
    }

    #[test]
    fn connection_returned_mid_transaction_is_rolled_back_before_reuse() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        drop(Store::create(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}")));
        let engine = Sqlite3::at(&path, crate::store::wall_clock());
        {
            let conn = engine.conn().unwrap_or_else(|e| panic!("{e}"));
            conn.conn
                .execute_batch(
                    "BEGIN IMMEDIATE; INSERT INTO principals (name, created_at) VALUES ('x', 'now')",
                )
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let conn = engine.conn().unwrap_or_else(|e| panic!("{e}"));
        assert!(conn.conn.is_autocommit());
        assert_eq!(principals(&path), 0);
        // The writer lock was released with it.
        conn.begin().unwrap_or_else(|e| panic!("{e}"));
        conn.rollback();
    }

    #[test]
    fn reused_connection_sees_a_commit_from_another_process() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        let store =
            Store::create(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        drop(store.db().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(principals(&path), 0);
        // `token create` opens its own store, as another process does.
        let other =
            Store::open(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        let mut db = other.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        tx.ensure_principal("ci").unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(principals(&path), 1);
    }

    #[test]
    fn a_version_3_database_opens_and_upgrades_keeping_its_tokens() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        {
            // A database as version 3 of this receiver made it: the base schema and the first
            // two steps, with a principal, its grant and a token.
            let conn = connect(&path).unwrap_or_else(|e| panic!("{e}"));
            conn.execute_batch(SCHEMA).unwrap_or_else(|e| panic!("{e}"));
            for step in &STEPS[..2] {
                conn.execute_batch(step.sqlite)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            conn.execute_batch(
                "PRAGMA user_version = 3;
                 INSERT INTO principals (id, name, created_at) VALUES (7, 'ci', '2026-01-01T00:00:00.000Z');
                 INSERT INTO grants VALUES (7, '/public', 'read');
                 INSERT INTO tokens (id, principal_id, secret_sha256, created_at)
                 VALUES ('00000000000000aa', 7, x'01', '2026-01-01T00:00:00.000Z');",
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let has_expiry = conn.prepare("SELECT expires_at_ms FROM tokens").is_ok();
            assert!(!has_expiry, "the fixture must be the old schema");
        }
        let store =
            Store::open(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let version: i64 = connect(&path)
            .unwrap_or_else(|e| panic!("{e}"))
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version, SCHEMA_VERSION);
        let old = db
            .principal_by_token("00000000000000aa")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the old token is gone"));
        assert_eq!(
            (
                old.principal.as_str(),
                old.expires_at_ms,
                old.last_used_at_ms
            ),
            ("ci", None, None)
        );
        assert_eq!(old.grants, [("/public".to_owned(), "read".to_owned())]);
        // New tokens carry an expiry.
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        tx.insert_token("00000000000000bb", 7, b"x", Some(1_000))
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        let listed = db.tokens().unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<(&str, Option<i64>)> = listed
            .iter()
            .map(|t| (t.id.as_str(), t.expires_at_ms))
            .collect();
        assert_eq!(
            ids,
            [
                ("00000000000000aa", None),
                ("00000000000000bb", Some(1_000))
            ]
        );
        // Opening again changes nothing.
        drop(db);
        drop(store);
        Store::open(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_database_of_a_newer_receiver_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        drop(Store::create(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}")));
        let newer = SCHEMA_VERSION + 1;
        connect(&path)
            .and_then(|c| Ok(c.pragma_update(None, "user_version", newer)?))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = Store::open(&path, crate::store::wall_clock())
            .err()
            .unwrap_or_else(|| panic!("a newer schema was opened"));
        let shown = e.to_string();
        assert!(
            shown.contains(&format!("schema version {newer}"))
                && shown.contains("newer flowpack-receiver")
                && shown.contains("downgrading is not supported"),
            "{shown}"
        );
        let v: i64 = connect(&path)
            .and_then(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v, newer);
    }
}
