//! The storage interface, and its one engine: SQLite. This is the only module that names the
//! database library; the rest of the receiver sees [`Store`], [`Db`], [`Tx`], [`MappingFile`],
//! [`Error`] and typed rows, and every SQL statement lives here.
//!
//! What another engine would have to provide to replace this module:
//! - **Handles per request** ([`Store::db`]), used from a blocking thread; readers must not wait
//!   for a deploy in progress and must see only committed data.
//! - **Write transactions** ([`Db::write`]) that are serialized from their first read (a deploy
//!   reads the replay and staleness facts it then relies on), atomic (a [`Tx`] dropped without
//!   [`Tx::commit`], or cut short by a crash, leaves nothing behind) and durable when `commit`
//!   returns: the HTTP layer answers 2xx only after that, so whatever a 2xx reported must survive
//!   a crash or power loss the moment after (SPEC §5).
//! - **Blob streaming for mapping files**: a file is written from a reader of declared size
//!   inside the deploy's transaction ([`Tx::write_mapping_file`]) and read back as a reader of
//!   known length ([`Db::mapping_file`]), never whole in memory, from a snapshot that a
//!   concurrent commit does not change.
//!
//! - **Group commit** ([`Store::write_grouped`]): many requests' writes, each atomic on its own,
//!   made durable by one commit, so that concurrent deploys do not each wait for a disk sync.
//!
//! SQLite gives all of that with one file in WAL mode and `synchronous=FULL`, one connection per
//! request at a time (long-lived ones, kept configured between requests, with their prepared
//! statements) and `BEGIN IMMEDIATE` for writers. Deploys are written by one thread that owns
//! a connection and commits queued jobs in batches, each job in a savepoint; a second thread
//! checkpoints the WAL in the background. Mappings are versioned: `mapping_versions` keeps
//! every version with its files, `mappings` points at the live one. Secrets are stored only as
//! ciphertext (`credential_secrets`); see `creds.rs`.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak, mpsc};
use std::time::Duration;

use flowpack_shared::names::{ContainerPath, Name};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

/// From version 1 to 2 (OAuth, issue 7): the token version a refresh compares and swaps, the
/// `needs_authorization` mark, and the pending authorization-code flows.
const MIGRATE_1_TO_2: &str = r#"
ALTER TABLE credentials ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN needs_authorization INTEGER NOT NULL DEFAULT 0;
CREATE TABLE oauth_states (
  state_sha256 BLOB PRIMARY KEY,
  credential_id INTEGER NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
  path TEXT NOT NULL,
  verifier BLOB NOT NULL,
  principal TEXT NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
"#;

/// From version 2 to 3: a replay is recognised by the digest of the exact manifest applied
/// (`NULL` for deployments made before: see [`Replay`]); an audit row says whether the
/// signature of the bundle it names was verified.
const MIGRATE_2_TO_3: &str = r#"
ALTER TABLE deployments ADD COLUMN manifest_sha256 BLOB;
ALTER TABLE audit ADD COLUMN verified INTEGER;
CREATE INDEX audit_container ON audit(container, id);
"#;

/// The steps from each version to the next: `MIGRATIONS[i]` upgrades version `i + 1`.
const MIGRATIONS: &[&str] = &[MIGRATE_1_TO_2, MIGRATE_2_TO_3];

const SCHEMA: &str = r#"
CREATE TABLE principals (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL
);
CREATE TABLE grants (
  principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  prefix TEXT NOT NULL,
  perms TEXT NOT NULL,
  PRIMARY KEY (principal_id, prefix)
);
CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  secret_sha256 BLOB NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE trusted_signers (
  key_id TEXT PRIMARY KEY,
  public_key BLOB NOT NULL,
  containers TEXT NOT NULL,
  added_at TEXT NOT NULL
);
CREATE TABLE containers (
  id INTEGER PRIMARY KEY,
  path TEXT NOT NULL UNIQUE,
  parent_id INTEGER REFERENCES containers(id),
  name TEXT,
  created_at TEXT NOT NULL
);
CREATE TABLE deployments (
  id INTEGER PRIMARY KEY,
  bundle_id TEXT NOT NULL UNIQUE,
  container TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  applied_at TEXT NOT NULL,
  record TEXT NOT NULL
);
CREATE INDEX deployments_container ON deployments(container, created_at_ms);
CREATE TABLE mapping_versions (
  id INTEGER PRIMARY KEY,
  container_id INTEGER NOT NULL REFERENCES containers(id),
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  definition TEXT NOT NULL,
  deployment_id INTEGER REFERENCES deployments(id),
  created_at TEXT NOT NULL,
  UNIQUE (container_id, name, version)
);
CREATE TABLE mapping_files (
  version_id INTEGER NOT NULL REFERENCES mapping_versions(id),
  path TEXT NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (version_id, path)
);
CREATE TABLE mappings (
  container_id INTEGER NOT NULL REFERENCES containers(id),
  name TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES mapping_versions(id),
  PRIMARY KEY (container_id, name)
);
CREATE TABLE credentials (
  id INTEGER PRIMARY KEY,
  container_id INTEGER NOT NULL REFERENCES containers(id),
  name TEXT NOT NULL,
  type TEXT NOT NULL,
  public TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  UNIQUE (container_id, name)
);
CREATE TABLE credential_secrets (
  credential_id INTEGER NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
  field TEXT NOT NULL,
  ciphertext BLOB NOT NULL,
  fingerprint TEXT NOT NULL,
  PRIMARY KEY (credential_id, field)
);
CREATE TABLE audit (
  id INTEGER PRIMARY KEY,
  at TEXT NOT NULL,
  principal TEXT,
  action TEXT NOT NULL,
  container TEXT,
  target TEXT,
  bundle_id TEXT,
  signer_key_id TEXT,
  outcome TEXT NOT NULL,
  status INTEGER NOT NULL,
  code TEXT,
  detail TEXT
);
"#;

/// The database file, its idle connections ([`Store::db`] takes one from there and its [`Db`]
/// gives it back), and the two threads started on first use: the group committer
/// ([`Store::write_grouped`]) and the checkpointer. Clones share all of it; the threads end
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// The group committer's queue.
    writer: OnceLock<Background<mpsc::Sender<Job>>>,
    /// Wakes the checkpointer; a full queue means a checkpoint is already due.
    checkpoints: OnceLock<Background<mpsc::SyncSender<()>>>,
    /// Transactions the group committer has committed.
    batches: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// At most this many idle connections are kept; one returned beyond that is closed. About the
/// number of blocking threads that run requests at once (see `main.rs`).
const MAX_IDLE: usize = 32;

/// Prepared statements kept per connection ([`Connection::prepare_cached`]).
const STATEMENT_CACHE: usize = 64;

/// The most jobs the group committer puts in one transaction.
const MAX_BATCH: usize = 256;

/// The checkpointer's pause after a checkpoint: commits in the meantime wait for the next one.
/// Bounds the checkpoints (each syncs the database file) to a few per second under load.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(250);

/// A storage fault. Every one is internal: callers answer 500 and log it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the database engine.
    #[error("database: {0}")]
    Engine(#[from] rusqlite::Error),
    /// The group commit a job was part of failed (the job's own writes were fine).
    #[error("database: the group commit failed: {0}")]
    Batch(String),
    /// The group committer's thread is gone (it panicked); nothing more can be written.
    #[error("database: the writer thread is gone")]
    WriterGone,
}

/// The result of a storage operation.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for crate::problem::Problem {
    /// Every storage fault is the receiver's own: a generic 500, the cause in the log.
    fn from(e: Error) -> Self {
        crate::problem::Problem::internal(e)
    }
}

fn now() -> String {
    flowpack_shared::timefmt::Timestamp::now().to_string()
}

impl Store {
    /// Creates a new database with the schema.
    pub fn create(path: &Path) -> anyhow::Result<Store> {
        let store = Store::at(path);
        let mut db = store.db()?;
        let tx = db.write()?;
        tx.conn().execute_batch(SCHEMA)?;
        for step in MIGRATIONS {
            tx.conn().execute_batch(step)?;
        }
        tx.conn()
            .pragma_update(None, "user_version", SCHEMA_VERSION)?;
        // The root always exists, even before the first deploy.
        tx.ensure_root()?;
        tx.commit()?;
        Ok(store)
    }

    /// Opens an existing database, upgrading an older schema in one transaction, and checks
    /// its schema version.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let store = Store::at(path);
        let mut db = store.db()?;
        let version = |db: &Db| -> Result<i64> {
            Ok(db
                .conn
                .pragma_query_value(None, "user_version", |r| r.get(0))?)
        };
        if (1..SCHEMA_VERSION).contains(&version(&db)?) {
            let tx = db.write()?;
            // Read again under the writer lock: another process may have upgraded meanwhile.
            let mut v = version(&tx)?;
            while let Some(step) = usize::try_from(v - 1).ok().and_then(|i| MIGRATIONS.get(i)) {
                tx.conn().execute_batch(step)?;
                v += 1;
                tx.conn().pragma_update(None, "user_version", v)?;
            }
            tx.commit()?;
        }
        let v = version(&db)?;
        if v != SCHEMA_VERSION {
            anyhow::bail!(
                "{}: schema version {v}, this receiver needs {SCHEMA_VERSION}",
                path.display()
            );
        }
        Ok(store)
    }

    fn at(path: &Path) -> Store {
        Store {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
                writer: OnceLock::new(),
                checkpoints: OnceLock::new(),
                batches: AtomicU64::new(0),
            }),
        }
    }

    /// A handle for one request. Its connection is taken from the idle ones, or opened when
    /// there is none (see [`connect`]). Opening and configuring costs about a millisecond
    /// (SQLite parses the schema), so connections are kept: the handle gives its connection
    /// back when dropped.
    pub fn db(&self) -> Result<Db> {
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
        Ok(Db {
            conn: Pooled {
                conn: Some(conn),
                home: Arc::downgrade(&self.shared),
            },
        })
    }

    /// Runs `job` inside the group committer's next transaction and resolves, with what `job`
    /// returned, once that transaction is durable (or with [`Error::Batch`] if its commit
    /// failed, which undoes every job in it).
    ///
    /// Group commit: one thread owns a connection and takes the queued jobs in batches, each
    /// job in its own savepoint, then commits once: one WAL sync for the whole batch instead
    /// of one per request, and no request waits in SQLite's busy handler. What `job` writes is
    /// kept even when it returns `Err`: a job that must be all-or-nothing uses
    /// [`Tx::savepoint`] (a deploy keeps its refusal's audit row but not its partial apply). A
    /// job that panics is rolled back alone. Every job holds the writer for its whole run, so
    /// do the work that needs no lock (verification, parsing) before calling this.
    ///
    /// `keep` is dropped once the job's transaction has committed or rolled back (the server
    /// passes its shutdown tracker's token, so that it waits for queued jobs).
    pub fn write_grouped<T, E, K, F>(
        &self,
        keep: K,
        job: F,
    ) -> impl std::future::Future<Output = std::result::Result<T, E>> + Send + 'static + use<T, E, K, F>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        K: Send + 'static,
        F: FnOnce(&Tx<'_>) -> std::result::Result<T, E> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |tx: std::result::Result<&Tx<'_>, &Error>| -> Finish {
            let outcome = match tx {
                Ok(tx) => job(tx),
                Err(e) => Err(E::from(Error::Batch(e.to_string()))),
            };
            Box::new(move |committed: std::result::Result<(), &Error>| {
                let outcome = match (outcome, committed) {
                    (Ok(_), Err(e)) => Err(E::from(Error::Batch(e.to_string()))),
                    (outcome, _) => outcome,
                };
                drop(keep);
                // The caller may have gone (its connection closed): the job is done anyway.
                let _ = reply.send(outcome);
            })
        });
        let sent = self.writer().send(job).is_ok();
        async move {
            if !sent {
                return Err(E::from(Error::WriterGone));
            }
            // Built only when needed: making the error logs it.
            answer
                .await
                .unwrap_or_else(|_| Err(E::from(Error::WriterGone)))
        }
    }

    /// How many transactions the group committer has committed.
    pub fn batches_committed(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// The group committer's queue, starting its thread on first use.
    fn writer(&self) -> &mpsc::Sender<Job> {
        self.shared
            .writer
            .get_or_init(|| {
                let (send, jobs) = mpsc::channel();
                let home = Arc::downgrade(&self.shared);
                let path = self.shared.path.clone();
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
fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
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

impl Shared {
    /// Called after every commit: wakes the checkpointer (starting it on first use).
    fn committed(self: &Arc<Self>) {
        let wake = self.checkpoints.get_or_init(|| {
            let (wake, woken) = mpsc::sync_channel(1);
            let path = self.path.clone();
            let spawned = std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpointer(&path, &woken))
                .inspect_err(
                    |e| tracing::error!(error = %e, "starting the checkpoint thread failed"),
                )
                .ok();
            Background {
                send: Some(wake),
                thread: spawned,
            }
        });
        // Full: a checkpoint is already due. Disconnected: logged when it happened.
        let _ = wake.sender().try_send(());
    }
}

/// The checkpointer: copies committed pages from the WAL into the database file, in the
/// background (`PASSIVE`: it never blocks readers or the writer), at most once per
/// [`CHECKPOINT_PAUSE`]. Without it the committing request would do it (SQLite's automatic
/// checkpoint), which doubled a large deploy's time.
fn checkpointer(path: &Path, woken: &mpsc::Receiver<()>) {
    let mut conn = None;
    // A commit came during the pause: checkpoint again without waiting for another.
    let mut due = false;
    while due || woken.recv().is_ok() {
        if conn.is_none() {
            conn = connect(path)
                .inspect_err(|e| tracing::error!(error = %e, "the checkpointer cannot connect"))
                .ok();
        }
        if let Some(c) = &conn
            && let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "a background checkpoint failed");
            conn = None;
        }
        // The pause ends early when the store is dropped (the channel is closed).
        due = false;
        let until = std::time::Instant::now() + CHECKPOINT_PAUSE;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match woken.recv_timeout(left) {
                Ok(()) => due = true,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// A queued job: given the batch's transaction (or why none could be started), runs and
/// returns what to do once the batch has committed or failed.
type Job = Box<dyn FnOnce(std::result::Result<&Tx<'_>, &Error>) -> Finish + Send>;
type Finish = Box<dyn FnOnce(std::result::Result<(), &Error>) + Send>;

/// The group committer's thread: until every [`Store`] is gone, takes the queued jobs (up to
/// [`MAX_BATCH`]), runs each in its own savepoint inside one transaction, commits once, then
/// answers them all.
fn group_commit(path: &Path, home: &Weak<Shared>, jobs: &mpsc::Receiver<Job>) {
    let mut db: Option<Db> = None;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if db.is_none() {
            match connect(path) {
                Ok(conn) => {
                    db = Some(Db {
                        conn: Pooled {
                            conn: Some(conn),
                            // Not given back to the pool: it dies with this thread.
                            home: Weak::new(),
                        },
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "the writer cannot connect");
                    refuse_all(batch, &e);
                    continue;
                }
            }
        }
        let Some(db) = db.as_mut() else { continue };
        let tx = match db.write() {
            Ok(tx) => tx,
            Err(e) => {
                refuse_all(batch, &e);
                continue;
            }
        };
        let mut finishes = Vec::with_capacity(batch.len());
        for job in batch {
            finishes.push(run_job(&tx, job));
        }
        let committed = tx.commit_quietly();
        // A failed commit rolls back here, before anyone is answered.
        drop(tx);
        if let Some(home) = home.upgrade() {
            if committed.is_ok() {
                home.batches.fetch_add(1, Ordering::Relaxed);
            }
            home.committed();
        }
        for (finish, own) in finishes {
            match (&own, &committed) {
                (Err(e), _) | (Ok(()), Err(e)) => finish(Err(e)),
                (Ok(()), Ok(())) => finish(Ok(())),
            }
        }
    }
}

/// Answers every job of a batch that could not start with `e`, without running it.
fn refuse_all(batch: Vec<Job>, e: &Error) {
    for job in batch {
        job(Err(e))(Err(e));
    }
}

/// Runs one job of a batch inside its own savepoint. A job that panics is rolled back to the
/// savepoint (its caller sees [`Error::WriterGone`]); the error is that of the savepoint's
/// statements.
fn run_job(tx: &Tx<'_>, job: Job) -> (Finish, Result<()>) {
    if let Err(e) = tx.conn().execute_batch("SAVEPOINT grouped") {
        let e = Error::from(e);
        return (job(Err(&e)), Err(e));
    }
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(tx))));
    match ran {
        Ok(finish) => {
            let released = tx
                .conn()
                .execute_batch("RELEASE grouped")
                .map_err(Error::from);
            (finish, released)
        }
        Err(_) => {
            tracing::error!("a write job panicked; rolled back");
            let undone = tx
                .conn()
                .execute_batch("ROLLBACK TO grouped; RELEASE grouped")
                .map_err(Error::from);
            // The panicking job's reply went with it; nothing left to answer.
            (Box::new(|_| {}), undone)
        }
    }
}

/// A connection on loan from a [`Store`]'s idle list, given back on drop: only outside a
/// transaction (one left open is rolled back first, and the connection closed if that fails),
/// so the next request never inherits another's transaction or snapshot.
struct Pooled {
    /// `Some` until dropped.
    conn: Option<Connection>,
    /// The store it goes back to; also told of commits.
    home: Weak<Shared>,
}

impl Deref for Pooled {
    type Target = Connection;
    fn deref(&self) -> &Connection {
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

/// A handle on the database for one request: reads see committed data only. Writes go through
/// [`Db::write`] or [`Store::write_grouped`].
pub struct Db {
    conn: Pooled,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Starts a write transaction (`BEGIN IMMEDIATE`): it takes the single writer lock before
    /// its first read, so what it reads stays true until it commits, and concurrent writers
    /// serialize here.
    pub fn write(&mut self) -> Result<Tx<'_>> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Tx { db: self })
    }
}

/// A write transaction. [`Tx::commit`] makes it durable (`synchronous=FULL`: the WAL is synced
/// before `commit` returns); dropped without it, it rolls back. Reads inside it go through
/// [`Deref`] to [`Db`] and see its own writes.
#[derive(Debug)]
pub struct Tx<'db> {
    db: &'db mut Db,
}

impl Tx<'_> {
    /// Commits. On failure the transaction rolls back when `self` drops.
    pub fn commit(self) -> Result<()> {
        self.commit_quietly()?;
        if let Some(home) = self.db.conn.home.upgrade() {
            home.committed();
        }
        Ok(())
    }

    /// Commits without waking the checkpointer.
    fn commit_quietly(&self) -> Result<()> {
        self.db.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Runs `f` in a savepoint: kept if it returns `Ok`, undone (and only it) if it returns
    /// `Err`. The outer error is the savepoint's own statements failing.
    pub fn savepoint<T, E>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> std::result::Result<T, E>,
    ) -> Result<std::result::Result<T, E>> {
        self.conn().execute_batch("SAVEPOINT part")?;
        let out = f(self);
        match &out {
            Ok(_) => self.conn().execute_batch("RELEASE part")?,
            Err(_) => self
                .conn()
                .execute_batch("ROLLBACK TO part; RELEASE part")?,
        }
        Ok(out)
    }

    fn conn(&self) -> &Connection {
        &self.db.conn
    }
}

impl Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // After a successful COMMIT the connection is back in autocommit mode.
        if !self.db.conn.is_autocommit()
            && let Err(e) = self.db.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rolling back a transaction failed");
        }
    }
}

/// A stored mapping file being read: an [`std::io::Read`] of known length over the blob, from
/// the snapshot taken when it was opened.
pub struct MappingFile<'db> {
    blob: rusqlite::blob::Blob<'db>,
    len: u64,
}

impl std::fmt::Debug for MappingFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingFile")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl MappingFile<'_> {
    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::io::Read for MappingFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.blob.read(buf)
    }
}

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
            params![name, now()],
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

    /// Stores a token's id and the SHA-256 of its secret.
    pub fn insert_token(&self, id: &str, principal: i64, sha256: &[u8]) -> Result<()> {
        self.conn().execute(
            "INSERT INTO tokens (id, principal_id, secret_sha256, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, principal, sha256, now()],
        )?;
        Ok(())
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
            params![key_id, public_key, json, now()],
        )?;
        Ok(())
    }
}

/// A principal's grants as stored: (prefix, comma-separated permissions).
pub type GrantRows = Vec<(String, String)>;

impl Db {
    /// A token's stored hash, its principal's name and the principal's grants (prefix,
    /// comma-separated permissions), in one statement: the grants come as a left join, one row
    /// per grant, or one row with no grant.
    pub fn principal_by_token(&self, id: &str) -> Result<Option<(Vec<u8>, String, GrantRows)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT t.secret_sha256, p.name, g.prefix, g.perms FROM tokens t
             JOIN principals p ON p.id = t.principal_id
             LEFT JOIN grants g ON g.principal_id = p.id WHERE t.id = ?1",
        )?;
        let mut rows = st.query(params![id])?;
        let mut found: Option<(Vec<u8>, String, GrantRows)> = None;
        while let Some(r) = rows.next()? {
            let (_, _, grants) = match &mut found {
                Some(f) => f,
                None => found.insert((r.get(0)?, r.get(1)?, Vec::new())),
            };
            if let (Some(prefix), Some(perms)) = (r.get(2)?, r.get(3)?) {
                grants.push((prefix, perms));
            }
        }
        Ok(found)
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
    pub fn container_id(&self, path: &ContainerPath) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM containers WHERE path = ?1")?
            .query_row(params![path.as_str()], |r| r.get(0))
            .optional()?)
    }

    /// What a container holds: child container names, mapping names, credential names (sorted).
    pub fn children(&self, id: i64) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
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
    fn ensure_root(&self) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO containers (path, parent_id, name, created_at) VALUES ('/', NULL, NULL, ?1)",
            params![now()],
        )?;
        Ok(
            conn.query_row("SELECT id FROM containers WHERE path = '/'", [], |r| {
                r.get(0)
            })?,
        )
    }

    /// The id of a container, creating it and its missing ancestors.
    pub fn ensure_container(&self, path: &ContainerPath) -> Result<i64> {
        let conn = self.conn();
        let mut parent = self.ensure_root()?;
        for p in path.lineage().into_iter().skip(1) {
            parent = match self.container_id(&p)? {
                Some(id) => id,
                None => {
                    conn.execute(
                        "INSERT INTO containers (path, parent_id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![p.as_str(), parent, p.last_segment(), now()],
                    )?;
                    conn.last_insert_rowid()
                }
            };
        }
        Ok(parent)
    }
}

// ---------------------------------------------------------------------------------------------
// Mappings

/// The live version of a mapping.
#[derive(Debug, Clone)]
pub struct MappingRow {
    /// Row id of the version.
    pub version_id: i64,
    /// Version number, from 1.
    pub version: i64,
    /// The definition's JSON.
    pub definition: String,
}

impl Db {
    /// The live version of mapping `name` in a container.
    pub fn mapping(&self, container: i64, name: &str) -> Result<Option<MappingRow>> {
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
    pub fn mappings_in(&self, container: i64) -> Result<Vec<(String, String)>> {
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
    pub fn new_mapping_version(&self, container: i64, name: &Name, deployment: i64) -> Result<i64> {
        let conn = self.conn();
        let version: i64 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM mapping_versions WHERE container_id = ?1 AND name = ?2",
            params![container, name.as_str()],
            |r| r.get(0),
        )?;
        conn.execute(
            "INSERT INTO mapping_versions (container_id, name, version, definition, deployment_id, created_at)
             VALUES (?1, ?2, ?3, '', ?4, ?5)",
            params![container, name.as_str(), version, deployment, now()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Sets a version's definition and makes it the live one. Returns true when it replaced one.
    pub fn finish_mapping_version(
        &self,
        container: i64,
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
    pub fn write_mapping_file(
        &self,
        version_id: i64,
        path: &str,
        size: u64,
        data: &mut dyn std::io::Read,
    ) -> std::io::Result<()> {
        fn io(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
            std::io::Error::other(e)
        }
        let conn = self.conn();
        let len = i64::try_from(size).map_err(io)?;
        conn.execute(
            "INSERT INTO mapping_files (version_id, path, data) VALUES (?1, ?2, zeroblob(?3))",
            params![version_id, path, len],
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
    pub fn delete_mapping(&self, container: i64, name: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM mappings WHERE container_id = ?1 AND name = ?2",
            params![container, name],
        )? > 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// A stored credential without its secrets.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    /// Row id.
    pub id: i64,
    /// Type name.
    pub kind: String,
    /// The non-sensitive record as JSON (name, type, description, public fields).
    pub public: String,
    /// Changes whenever the record or its secrets change; a token refresh stores its result
    /// only if this is still the value it started from ([`Tx::claim_token_version`]).
    pub token_version: i64,
    /// Its refresh token was refused: it must be authorized again (oauth2).
    pub needs_authorization: bool,
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

/// A stored sensitive field: ciphertext and fingerprint.
#[derive(Debug, Clone)]
pub struct SecretRow {
    /// Field name.
    pub field: String,
    /// nonce ‖ ciphertext ‖ tag.
    pub ciphertext: Vec<u8>,
    /// Keyed hash of the value (16 hex digits).
    pub fingerprint: String,
}

/// A credential's stored secrets without their ciphertext: (field, fingerprint), by field.
pub type SecretFingerprints = Vec<(String, String)>;

impl Db {
    /// Credential `name` in a container.
    pub fn credential(&self, container: i64, name: &str) -> Result<Option<CredentialRow>> {
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
    pub fn credential_by_id(&self, id: i64) -> Result<Option<(String, String, CredentialRow)>> {
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
    pub fn secrets(&self, credential: i64) -> Result<Vec<SecretRow>> {
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
        container: i64,
        name: &str,
        kind: &str,
        public: &str,
    ) -> Result<(i64, Option<CredentialRow>)> {
        let conn = self.conn();
        if let Some(row) = self.credential(container, name)? {
            conn.execute(
                "UPDATE credentials SET type = ?1, public = ?2, updated_at = ?3,
                 token_version = token_version + 1 WHERE id = ?4",
                params![kind, public, now(), row.id],
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
            params![container, name, kind, public, now()],
        )?;
        Ok((conn.last_insert_rowid(), None))
    }

    /// Sets one sensitive field.
    pub fn set_secret(
        &self,
        credential: i64,
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
    pub fn clear_secret(&self, credential: i64, field: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM credential_secrets WHERE credential_id = ?1 AND field = ?2",
            params![credential, field],
        )?;
        self.bump_token_version(credential)
    }

    fn bump_token_version(&self, credential: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE credentials SET token_version = token_version + 1 WHERE id = ?1",
            params![credential],
        )?;
        Ok(())
    }

    /// Compare and swap: advances the credential's token version if it still is `expected`.
    /// False when something changed the credential since `expected` was read (a deploy, a
    /// PATCH, another refresh): the caller must then not store what it obtained.
    pub fn claim_token_version(&self, credential: i64, expected: i64) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE credentials SET token_version = token_version + 1
             WHERE id = ?1 AND token_version = ?2",
            params![credential, expected],
        )? == 1)
    }

    /// Replaces a credential's non-sensitive record (its name and type unchanged).
    pub fn set_credential_public(&self, credential: i64, public: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE credentials SET public = ?1, updated_at = ?2 WHERE id = ?3",
            params![public, now(), credential],
        )?;
        Ok(())
    }

    /// Sets or clears the `needs_authorization` mark.
    pub fn set_needs_authorization(&self, credential: i64, on: bool) -> Result<()> {
        self.conn().execute(
            "UPDATE credentials SET needs_authorization = ?1 WHERE id = ?2",
            params![on, credential],
        )?;
        Ok(())
    }

    /// Deletes a credential and its secrets.
    pub fn delete_credential(&self, credential: i64) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM credential_secrets WHERE credential_id = ?1",
            params![credential],
        )?;
        conn.execute("DELETE FROM credentials WHERE id = ?1", params![credential])?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Pending authorization-code flows

/// A pending authorization-code flow, found by the SHA-256 of its `state`.
#[derive(Debug, Clone)]
pub struct OAuthState {
    /// The credential it authorizes.
    pub credential_id: i64,
    /// The credential's path when the flow started.
    pub path: String,
    /// The PKCE code verifier, encrypted at rest.
    pub verifier: Vec<u8>,
    /// Who started it.
    pub principal: String,
    /// When it expires (Unix milliseconds).
    pub expires_at_ms: i64,
}

impl Tx<'_> {
    /// Forgets every pending flow of a credential (its destination changed: a code obtained
    /// for the old one must not be exchanged with the new one).
    pub fn delete_oauth_states(&self, credential: i64) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Deployments

/// What the store knows of an applied bundle id: enough to decide whether a bundle carrying
/// that id is the same bundle again.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The deployment record (JSON).
    pub record: String,
    /// The container it was applied to.
    pub container: String,
    /// SHA-256 of the exact `manifest.json` applied; `None` for a deployment stored before the
    /// digest was kept.
    pub manifest_sha256: Option<Vec<u8>>,
}

/// Which containers a caller may see in a listing: all, or those under the given prefixes.
#[derive(Debug, Clone)]
pub enum Visible {
    /// Every container, and rows that name none.
    All,
    /// Containers equal to or below one of these paths (none of them the root).
    Under(Vec<String>),
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
        let (cond, mut args) = visible.condition("container");
        let mut sql = format!("SELECT id, record FROM deployments WHERE {cond} AND id < ?");
        args.push(SqlValue::Integer(before.unwrap_or(i64::MAX)));
        if let Some(c) = container {
            sql.push_str(" AND container = ?");
            args.push(SqlValue::Text(c.to_owned()));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(&args), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
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
    /// Inserts a deployment with a placeholder record; returns its id.
    pub fn insert_deployment(
        &self,
        bundle_id: &str,
        container: &str,
        created_at_ms: i64,
        manifest_sha256: &[u8],
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deployments (bundle_id, container, created_at_ms, applied_at, record, manifest_sha256)
             VALUES (?1, ?2, ?3, ?4, '{}', ?5)",
            params![bundle_id, container, created_at_ms, now(), manifest_sha256],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Sets a deployment's record.
    pub fn set_deployment_record(&self, id: i64, record: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deployments SET record = ?1 WHERE id = ?2",
            params![record, id],
        )?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Audit

/// One audit row.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditRow {
    /// Row id.
    pub id: i64,
    /// When (RFC 3339).
    pub at: String,
    /// Who (principal name), when known.
    pub principal: Option<String>,
    /// `deploy`, `delete-mapping`, `delete-credential`, `patch-credential`, `oauth-token`,
    /// `oauth-authorize`, `oauth-callback`, `verify-credential`.
    pub action: String,
    /// The container concerned, when known.
    pub container: Option<String>,
    /// The object concerned (a mapping or credential path), if any.
    pub target: Option<String>,
    /// The bundle, when its manifest could be read.
    pub bundle_id: Option<String>,
    /// The signer key id, when the manifest could be read.
    pub signer_key_id: Option<String>,
    /// Whether the signature of the bundle named was verified: `false` when the bundle, its
    /// signer and container are only what an unverified manifest claims; `None` when no
    /// bundle is named.
    pub verified: Option<bool>,
    /// `applied`, `replayed`, `deleted`, `updated`, `refused`; for OAuth `obtained`,
    /// `refreshed`, `started`, `authorized`, `failed`; for verification `ok` or `failed`.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The refusal's code.
    pub code: Option<String>,
    /// The refusal's detail (never a secret).
    pub detail: Option<String>,
}

impl Tx<'_> {
    /// Appends an audit row.
    pub fn insert_audit(&self, a: &AuditRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (at, principal, action, container, target, bundle_id, signer_key_id, outcome, status, code, detail, verified)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                now(),
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
        let (cond, mut args) = visible.condition("container");
        let mut sql = format!(
            "SELECT id, at, principal, action, container, target, bundle_id, signer_key_id, outcome, status, code, detail, verified
             FROM audit WHERE {cond} AND id < ?"
        );
        args.push(SqlValue::Integer(before.unwrap_or(i64::MAX)));
        if let Some(c) = container {
            sql.push_str(" AND container = ?");
            args.push(SqlValue::Text(c.to_owned()));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(&args), |r| {
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
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principals(db: &Db) -> i64 {
        db.conn
            .query_row("SELECT count(*) FROM principals", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn connection_returned_mid_transaction_is_rolled_back_before_reuse() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::create(&tmp.path().join("store.db")).unwrap_or_else(|e| panic!("{e}"));
        {
            let db = store.db().unwrap_or_else(|e| panic!("{e}"));
            db.conn
                .execute_batch(
                    "BEGIN IMMEDIATE; INSERT INTO principals (name, created_at) VALUES ('x', 'now')",
                )
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut db = store.db().unwrap_or_else(|e| panic!("{e}"));
        assert!(db.conn.is_autocommit());
        assert_eq!(principals(&db), 0);
        // The writer lock was released with it.
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        drop(tx);
    }

    #[test]
    fn reused_connection_sees_a_commit_from_another_process() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("store.db");
        let store = Store::create(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(principals(&store.db().unwrap_or_else(|e| panic!("{e}"))), 0);
        // `token create` opens its own store, as another process does.
        let other = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut db = other.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        tx.ensure_principal("ci").unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(principals(&store.db().unwrap_or_else(|e| panic!("{e}"))), 1);
    }

    fn names(db: &Db) -> Vec<String> {
        let mut st = db
            .conn
            .prepare("SELECT name FROM principals ORDER BY name")
            .unwrap_or_else(|e| panic!("{e}"));
        st.query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn queued_jobs_commit_together_and_a_panicking_job_is_rolled_back_alone() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::create(&tmp.path().join("store.db")).unwrap_or_else(|e| panic!("{e}"));
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
        let db = store.db().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&db), ["first", "third"]);
    }

    #[tokio::test]
    async fn a_job_keeps_what_it_wrote_outside_a_failed_savepoint() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::create(&tmp.path().join("store.db")).unwrap_or_else(|e| panic!("{e}"));
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
        let db = store.db().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&db), ["audit"]);
        // The failed job did not stop the writer.
        store
            .write_grouped((), |tx| tx.ensure_principal("later"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names(&db), ["audit", "later"]);
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
        let store = Store::create(&tmp.path().join("store.db")).unwrap_or_else(|e| panic!("{e}"));
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
            tx.insert_token(id, pid, name.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        tx.commit().unwrap_or_else(|e| panic!("{e}"));

        for (id, name, grants) in principals {
            let (hash, got_name, mut got) = db
                .principal_by_token(id)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("token {id} not found"));
            got.sort();
            assert_eq!(hash, name.as_bytes());
            assert_eq!(got_name, name);
            assert_eq!(got, rows(grants), "grants of {name}");
        }
        assert!(
            db.principal_by_token("00000000000000ff")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
    }

    #[test]
    fn credential_at_gives_row_and_fingerprints_by_field() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::create(&tmp.path().join("store.db")).unwrap_or_else(|e| panic!("{e}"));
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
