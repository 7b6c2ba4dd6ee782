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
mod schema;
mod write;

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak, mpsc};
use std::time::Duration;

use rusqlite::{Connection as Sqlite, params};

use self::group::group_commit;
use self::schema::{MIGRATIONS, SCHEMA, SCHEMA_VERSION};
use super::engine::{Connection, CredentialLock, Engine, Locking, Reads};
use super::handle::{Job, grouped};
use super::{Clock, CredentialId, Error, KeyCheck, Result, Store};
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
    /// Tokens whose use is queued to be recorded ([`Reads::note_token_used`]) and not yet
    /// committed.
    touching: Arc<Mutex<HashSet<String>>>,
    /// Called at the start of every write transaction with the id of the at-rest key the
    /// store's secrets are under ([`Engine::check_keys_on_write`]).
    key_check: OnceLock<KeyCheck>,
    /// One lock per credential; entries are kept (one small mutex per credential used), so two
    /// callers never hold different locks for the same credential.
    flights: Mutex<HashMap<CredentialId, Arc<tokio::sync::Mutex<()>>>>,
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

/// Prepared statements kept per connection ([`Sqlite::prepare_cached`]).
const STATEMENT_CACHE: usize = 64;

/// The most jobs the group committer puts in one transaction.
const MAX_BATCH: usize = 256;

/// The checkpointer's pause after a checkpoint: commits in the meantime wait for the next one.
/// Bounds the checkpoints (each syncs the database file) to a few per second under load.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(250);

/// Creates a new database with the schema.
pub(super) fn create(path: &Path, clock: Clock) -> anyhow::Result<Store> {
    let engine = Sqlite3::at(path, clock);
    let conn = engine.conn()?;
    conn.conn.execute_batch("BEGIN IMMEDIATE")?;
    conn.conn.execute_batch(SCHEMA)?;
    for step in MIGRATIONS {
        conn.conn.execute_batch(step)?;
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
        while let Some(step) = usize::try_from(v - 1).ok().and_then(|i| MIGRATIONS.get(i)) {
            conn.conn.execute_batch(step)?;
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
                touching: Arc::default(),
                key_check: OnceLock::new(),
                flights: Mutex::default(),
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
        if self.shared.key_check.set(check).is_err() {
            tracing::error!("a second key check was not installed");
        }
    }

    fn lock_credential(&self, id: CredentialId) -> Locking<'_> {
        let lock = self
            .shared
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .clone();
        Box::pin(async move { Ok(CredentialLock(Box::new(lock.lock_owned().await))) })
    }
}

impl Shared {
    /// Queues `job` for the group committer, starting its thread on first use.
    fn submit(self: &Arc<Self>, job: Job) -> std::result::Result<(), Job> {
        self.writer
            .get_or_init(|| {
                let (send, jobs) = mpsc::channel();
                let home = Arc::downgrade(self);
                let path = self.path.clone();
                let spawned = std::thread::Builder::new()
                    .name("store-writer".into())
                    .spawn(move || group_commit(&path, &home, &jobs))
                    // The queue's receiver is dropped with the closure: every send fails, and
                    // callers get `WriterGone`.
                    .inspect_err(
                        |e| tracing::error!(error = %e, "starting the writer thread failed"),
                    )
                    .ok();
                Background {
                    send: Some(send),
                    thread: spawned,
                }
            })
            .sender()
            .send(job)
            .map_err(|e| e.0)
    }

    /// Runs the key check, if one is installed, inside the write transaction of `conn`.
    fn check_keys(&self, conn: &Conn) -> Result<()> {
        let Some(check) = self.key_check.get() else {
            return Ok(());
        };
        let id = conn.at_rest_key_id()?;
        check(id.as_deref()).map_err(Error::Keys)
    }
}

/// A background thread of the store and the channel that feeds it.
struct Background<S> {
    /// `Some` until dropped.
    send: Option<S>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<S> Background<S> {
    fn sender(&self) -> &S {
        // Invariant: `send` is `None` only inside `drop`.
        self.send
            .as_ref()
            .expect("a background sender is present until dropped")
    }
}

impl<S> Drop for Background<S> {
    /// Closes the channel and waits for the thread to finish what it holds (queued jobs, a
    /// checkpoint under way) and close its connection, so that once the last [`Store`] is
    /// gone nothing touches the database files (the last connection to close removes the
    /// WAL). Not when the thread itself drops the last [`Store`].
    fn drop(&mut self) {
        drop(self.send.take());
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
            && t.join().is_err()
        {
            tracing::error!("a store thread panicked");
        }
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

/// One connection of the engine: implements the queries ([`Reads`] in `read.rs`,
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

    /// Queues the record of a token's use (see [`Reads::note_token_used`]).
    fn queue_token_use(&self, id: &str, at_ms: i64) {
        /// Takes the token off the queued set once its update has committed or failed: only
        /// then do new readers see the new value, or need to queue again.
        struct Queued {
            set: Arc<Mutex<HashSet<String>>>,
            id: String,
        }
        impl Drop for Queued {
            fn drop(&mut self) {
                self.set
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&self.id);
            }
        }
        let Some(home) = self.conn.home.upgrade() else {
            return;
        };
        let set = home.touching.clone();
        if !set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned())
        {
            return;
        }
        let queued = Queued {
            set,
            id: id.to_owned(),
        };
        let id = id.to_owned();
        // The job is queued by this call; the future only carries its answer, which nobody
        // needs.
        let answer = grouped(
            &|job| home.submit(job).is_ok(),
            queued,
            move |tx| -> Result<()> { tx.set_token_last_used(&id, at_ms) },
        );
        drop(answer);
    }
}

impl Connection for Conn {
    fn begin(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        if let Some(home) = self.conn.home.upgrade()
            && let Err(e) = home.check_keys(self)
        {
            self.rollback();
            return Err(e);
        }
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        if let Some(home) = self.conn.home.upgrade() {
            home.committed();
        }
        Ok(())
    }

    fn rollback(&self) {
        // After a successful COMMIT the connection is back in autocommit mode.
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rolling back a transaction failed");
        }
    }

    fn savepoint(&self) -> Result<()> {
        self.conn.execute_batch("SAVEPOINT part")?;
        Ok(())
    }

    fn release(&self, keep: bool) -> Result<()> {
        if keep {
            self.conn.execute_batch("RELEASE part")?;
        } else {
            self.conn.execute_batch("ROLLBACK TO part; RELEASE part")?;
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
    use flowpack_shared::names::ContainerPath;

    /// How many principals the database at `path` holds, read on a connection of its own.
    fn principals(path: &Path) -> i64 {
        connect(path)
            .unwrap_or_else(|e| panic!("{e}"))
            .query_row("SELECT count(*) FROM principals", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"))
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

    /// The principals of the database at `path`, read on a connection of its own.
    fn names(path: &Path) -> Vec<String> {
        let conn = connect(path).unwrap_or_else(|e| panic!("{e}"));
        let mut st = conn
            .prepare("SELECT name FROM principals ORDER BY name")
            .unwrap_or_else(|e| panic!("{e}"));
        st.query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn queued_jobs_commit_together_and_a_panicking_job_is_rolled_back_alone() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        let store =
            Store::create(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        let (started, running) = mpsc::channel();
        let (release, gate) = mpsc::channel::<()>();
        // The first job holds the writer until released, so the next two queue behind it and
        // are taken as one batch.
        let first = store.write_grouped((), move |tx| {
            let _ = started.send(());
            let _ = gate.recv();
            tx.ensure_principal("first")
        });
        running.recv().unwrap_or_else(|e| panic!("{e}"));
        let doomed = store.write_grouped((), |tx| -> Result<i64> {
            tx.ensure_principal("doomed")?;
            panic!("a job panics after writing");
        });
        let keep = Arc::new(());
        let third = store.write_grouped(keep.clone(), |tx| tx.ensure_principal("third"));
        release.send(()).unwrap_or_else(|e| panic!("{e}"));

        first.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(doomed.await, Err(Error::WriterGone)));
        third.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Arc::strong_count(&keep),
            1,
            "`keep` is dropped before the answer"
        );
        assert_eq!(store.batches_committed(), 2);
        assert_eq!(names(&path), ["first", "third"]);
    }

    #[tokio::test]
    async fn a_job_keeps_what_it_wrote_outside_a_failed_savepoint() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        let store =
            Store::create(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        let refused: Result<()> = store
            .write_grouped((), |tx| {
                let inner = tx.savepoint(|tx| {
                    tx.ensure_principal("undone")?;
                    Err(Error::Batch("refused".into()))
                })?;
                tx.ensure_principal("audit")?;
                inner
            })
            .await;
        assert!(matches!(refused, Err(Error::Batch(_))));
        assert_eq!(names(&path), ["audit"]);
        // The failed job did not stop the writer.
        store
            .write_grouped((), |tx| tx.ensure_principal("later"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&path), ["audit", "later"]);
    }

    fn path(s: &str) -> ContainerPath {
        ContainerPath::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stored (name, value) pairs as a test writes them: grants or secrets' fingerprints.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn rows(r: Pairs<'_>) -> Vec<(String, String)> {
        r.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn principal_by_token_gives_hash_name_and_every_grant() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::create(&tmp.path().join("store.db"), crate::store::wall_clock())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let principals: [(&str, &str, Pairs<'_>); 3] = [
            ("0000000000000000", "none", &[]),
            ("0000000000000001", "one", &[("/a", "read")]),
            (
                "0000000000000002",
                "two",
                &[("/a", "read,use"), ("/b/c", "write")],
            ),
        ];
        for (id, name, grants) in principals {
            let pid = tx.ensure_principal(name).unwrap_or_else(|e| panic!("{e}"));
            for (prefix, perms) in grants {
                tx.add_grant(pid, prefix, perms)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            tx.insert_token(id, pid, name.as_bytes(), None)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        for (id, name, grants) in principals {
            let mut got = db
                .principal_by_token(id)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("token {id} not found"));
            got.grants.sort();
            assert_eq!(got.secret_sha256, name.as_bytes());
            assert_eq!(got.principal, name);
            assert_eq!(got.grants, rows(grants), "grants of {name}");
            assert_eq!((got.expires_at_ms, got.last_used_at_ms), (None, None));
        }
        assert!(
            db.principal_by_token("00000000000000ff")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
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
            for step in &MIGRATIONS[..2] {
                conn.execute_batch(step).unwrap_or_else(|e| panic!("{e}"));
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
        assert_eq!(old.grants, rows(&[("/public", "read")]));
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

    #[tokio::test]
    async fn a_token_use_is_recorded_by_the_writer_once_while_queued() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        drop(Store::create(&path, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}")));
        let engine = Arc::new(Sqlite3::at(&path, crate::store::wall_clock()));
        let store = Store::new(engine.clone());
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let pid = tx.ensure_principal("ci").unwrap_or_else(|e| panic!("{e}"));
        tx.insert_token("00000000000000aa", pid, b"x", None)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        // Hold the writer, so that the uses queue behind this job.
        let (started, running) = mpsc::channel();
        let (release, gate) = mpsc::channel::<()>();
        let held = store.write_grouped((), move |_| -> Result<()> {
            let _ = started.send(());
            let _ = gate.recv();
            Ok(())
        });
        running.recv().unwrap_or_else(|e| panic!("{e}"));
        db.note_token_used("00000000000000aa", 5_000);
        // Queued already: not queued again (this later time is not recorded).
        db.note_token_used("00000000000000aa", 6_000);
        let last_used = |db: &dyn Reads| {
            db.principal_by_token("00000000000000aa")
                .unwrap_or_else(|e| panic!("{e}"))
                .and_then(|t| t.last_used_at_ms)
        };
        assert_eq!(
            last_used(db.reads()),
            None,
            "recorded off the caller's path"
        );
        release.send(()).unwrap_or_else(|e| panic!("{e}"));
        held.await.unwrap_or_else(|e| panic!("{e}"));
        // The writer takes jobs in order: once a later job is answered, the use is committed.
        store
            .write_grouped((), |_| -> Result<()> { Ok(()) })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(last_used(db.reads()), Some(5_000));
        // Committed: the next use is queued again; an earlier time never overwrites a later.
        db.note_token_used("00000000000000aa", 4_000);
        db.note_token_used("00000000000000ff", 4_000);
        store
            .write_grouped((), |_| -> Result<()> { Ok(()) })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(last_used(db.reads()), Some(5_000));
        db.note_token_used("00000000000000aa", 7_000);
        store
            .write_grouped((), |_| -> Result<()> { Ok(()) })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(last_used(db.reads()), Some(7_000));
        assert!(
            engine
                .shared
                .touching
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }

    #[test]
    fn credential_at_gives_row_and_fingerprints_by_field() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::create(&tmp.path().join("store.db"), crate::store::wall_clock())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let cid = tx
            .ensure_container(&path("/a/b"))
            .unwrap_or_else(|e| panic!("{e}"));
        let (bare, _) = tx
            .upsert_credential(cid, "bare", "basic", r#"{"name":"bare"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let (sealed, _) = tx
            .upsert_credential(cid, "sealed", "oauth2", r#"{"name":"sealed"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        // Written out of order: they come back sorted by field.
        tx.set_secret(sealed, "refresh_token", b"ct1", "00000000000000aa")
            .unwrap_or_else(|e| panic!("{e}"));
        tx.set_secret(sealed, "client_secret", b"ct2", "00000000000000bb")
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        let at = |c: &str, n: &str| {
            db.credential_at(&path(c), n)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (row, secrets) = at("/a/b", "bare").unwrap_or_else(|| panic!("bare not found"));
        assert_eq!(
            (row.id, row.kind.as_str(), row.public.as_str()),
            (bare, "basic", r#"{"name":"bare"}"#)
        );
        assert!(!row.needs_authorization);
        assert!(secrets.is_empty());
        let (row, secrets) = at("/a/b", "sealed").unwrap_or_else(|| panic!("sealed not found"));
        let stored = db
            .credential(cid, "sealed")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("sealed not found"));
        assert_eq!((row.id, row.token_version), (sealed, stored.token_version));
        assert_eq!(row.kind, "oauth2");
        assert_eq!(
            secrets,
            rows(&[
                ("client_secret", "00000000000000bb"),
                ("refresh_token", "00000000000000aa")
            ])
        );
        assert!(at("/a/b", "nope").is_none());
        assert!(at("/a", "bare").is_none());
        assert!(at("/x/b", "bare").is_none());
    }
}
