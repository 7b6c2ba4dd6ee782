//! The PostgreSQL engine of the storage interface, for several receivers sharing one
//! database: the connections and transaction control (this file), the queries (`read.rs`,
//! `write.rs`) and the schema (`schema.rs`).
//!
//! - The engine owns a small tokio runtime that drives its connections (`tokio-postgres`). A
//!   caller waits for its statements on its own thread ([`wait`]): a statement is a message to
//!   the connection's task on that runtime, so the caller needs no runtime of its own. Like the
//!   SQLite engine's calls, a call blocks its thread; the receiver makes them on blocking
//!   threads, and one made on an async thread (a test's, say) works too.
//! - At most [`POOL_SIZE`] connections are lent to requests at once, and kept open between
//!   them; one that the database closed is dropped when met, and a new one opened: a database
//!   that went away and came back is used again without a restart.
//! - Every write transaction is `BEGIN` then `pg_advisory_xact_lock` on one constant key
//!   ([`WRITER_LOCK`]): writers are serialized across every node, as SQLite's single writer
//!   serializes them in one process, so what a transaction reads first (replay, staleness,
//!   `MAX() + 1`) stays true until it commits. Reads outside a transaction are autocommit
//!   statements: committed data only, never waiting for a writer.
//! - Durability is PostgreSQL's: `COMMIT` returns once the commit is flushed
//!   (`synchronous_commit` at its default, `on`).
//! - Group commit: a writer thread per process with its own connection, as for SQLite
//!   (`store/group.rs`).
//! - One lock per credential across nodes: an in-process lock, then a session-level
//!   `pg_advisory_lock` on the credential's id, held on a connection of its own until the
//!   guard is dropped.
//! - Backups are PostgreSQL's (`pg_dump`), and its write-ahead log is not this program's to
//!   truncate.

mod read;
pub(super) mod schema;
mod write;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak, mpsc};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use self::schema::{FIRST_VERSION, SCHEMA};
use super::engine::{Connection, CredentialLock, Engine, Locking};
use super::group::{Background, Flights, KeyChecks, TokenUses, Writer, group_commit, spawn_writer};
use super::handle::Job;
use super::schema::step_from;
use super::{Clock, CredentialId, Error, Generation, KeyCheck, Result, SCHEMA_VERSION, Store};
use flowpack_shared::timefmt::Timestamp;

/// The advisory lock every write transaction takes, in PostgreSQL's two-key form ("flow", 1):
/// a key space apart from the one-key form the credentials' locks use.
const WRITER_LOCK: &str = "SELECT pg_advisory_xact_lock(1718382455, 1)";

/// The largest chunk a mapping file is stored in.
pub(super) const CHUNK: usize = 1 << 20;

/// At most this many of a node's requests hold a connection at once; others wait for one to
/// be given back (up to [`POOL_WAIT`]). Besides these a node opens one for its group committer
/// and one per credential whose OAuth refresh is in flight: a database serves about
/// `max_connections / (POOL_SIZE + 2)` nodes.
pub(super) const POOL_SIZE: usize = 16;

/// How long a request waits for a connection when all [`POOL_SIZE`] are in use.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How long opening a connection may take before the database counts as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl From<tokio_postgres::Error> for Error {
    /// A connection that failed, closed or timed out, or a server that is shutting down,
    /// starting or full, is [`Error::Unavailable`]; anything else the engine's own fault.
    fn from(e: tokio_postgres::Error) -> Error {
        let unavailable = match e.code() {
            Some(code) => {
                let c = code.code();
                // Connection exceptions, operator intervention, too many connections.
                c.starts_with("08") || c.starts_with("57P") || c == "53300"
            }
            None => e.is_closed() || e.as_db_error().is_none() && is_io(&e),
        };
        if unavailable {
            Error::Unavailable(e.to_string())
        } else {
            Error::Engine(Box::new(e))
        }
    }
}

/// Whether `e` comes from the connection itself (I/O, a timeout), not from a statement.
fn is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    // A connect timeout carries no source.
    e.to_string().contains("timeout")
}

/// Creates the schema in an empty PostgreSQL database. Refused when the database already
/// holds a store: another node's data directory joins it (`init --join`).
pub(super) fn create(url: &str, clock: Clock) -> anyhow::Result<Store> {
    let engine = Postgres::at(url, clock)?;
    let conn = engine.first_conn()?;
    conn.begin()?;
    if conn.has_schema()? {
        anyhow::bail!(
            "{}: already holds a flowpack store; make another node's data directory for it with `init --join` from a node of that store",
            engine.shared.name
        );
    }
    conn.batch(SCHEMA)?;
    conn.exec(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&SCHEMA_VERSION],
    )?;
    // The root always exists, even before the first deploy.
    conn.ensure_root()?;
    conn.commit()?;
    drop(conn);
    Ok(Store::new(Arc::new(engine)))
}

/// Opens the store of a PostgreSQL database, upgrading an older schema in one transaction
/// (under the writer lock, so that nodes starting together upgrade once), and checks its
/// version.
pub(super) fn open(url: &str, clock: Clock) -> anyhow::Result<Store> {
    let engine = Postgres::at(url, clock)?;
    let name = &engine.shared.name;
    let conn = engine.first_conn()?;
    conn.begin()?;
    if !conn.has_schema()? {
        anyhow::bail!("{name}: holds no flowpack store; make one with `init --store`");
    }
    let version = |c: &Conn| -> Result<i64> {
        let row = c.one("SELECT version FROM schema_version", &[])?;
        get(&row, 0)
    };
    let mut v = version(&conn)?;
    if v < FIRST_VERSION {
        anyhow::bail!(
            "{name}: schema version {v}, older than any PostgreSQL store ({FIRST_VERSION}): the table schema_version was changed by hand"
        );
    }
    while let Some(step) = step_from(v).and_then(|s| s.postgres) {
        conn.batch(step)?;
        v += 1;
        conn.exec("UPDATE schema_version SET version = $1", &[&v])?;
    }
    conn.commit()?;
    if v > SCHEMA_VERSION {
        // Nothing was changed: a newer schema is never touched.
        anyhow::bail!(
            "{name}: written by a newer flowpack-receiver (schema version {v}; this one knows versions up to {SCHEMA_VERSION}); downgrading is not supported: run the newer version again, or restore a backup taken before the upgrade"
        );
    }
    if v != SCHEMA_VERSION {
        anyhow::bail!("{name}: schema version {v}, this receiver needs {SCHEMA_VERSION}");
    }
    drop(conn);
    Ok(Store::new(Arc::new(engine)))
}

/// The engine: the database's address, its idle connections, the runtime that drives them
/// and the group committer's thread.
struct Postgres {
    shared: Arc<Shared>,
}

struct Shared {
    /// The group committer's queue; joined on drop, before the runtime below stops.
    writer: OnceLock<Background<mpsc::Sender<Job>>>,
    /// Where the database is (its password, if any, inside: never shown).
    config: Config,
    /// The database as messages name it: its name and host, never the URL.
    name: String,
    /// Connections open and not lent, each with the statements it has prepared.
    idle: Mutex<Vec<(Client, Statements)>>,
    /// Connections lent to requests, at most [`POOL_SIZE`].
    lent: Mutex<usize>,
    /// Signalled when one is given back.
    returned: Condvar,
    /// Transactions the group committer has committed.
    batches: AtomicU64,
    /// What rows are stamped with.
    clock: Clock,
    /// Tokens whose use is queued to be recorded.
    touching: TokenUses,
    /// Called at the start of every write transaction with the id of the at-rest key the
    /// store's secrets are under ([`Engine::check_keys_on_write`]).
    key_check: KeyChecks,
    /// The in-process half of the per-credential locks.
    flights: Flights,
    rt: Handle,
    /// Last: stops after everything that uses it.
    _runtime: Runtime,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("database", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// The engine's runtime, stopped without waiting when dropped (which may happen on an async
/// thread, where waiting is not allowed).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Postgres {
    fn at(url: &str, clock: Clock) -> anyhow::Result<Postgres> {
        let mut config: Config = url.parse().map_err(|_| {
            anyhow::anyhow!(
                "the store is not a valid PostgreSQL URL (postgres://user@host:port/database; its value is not shown: it may hold a password)"
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        config.application_name("flowpack-receiver");
        let name = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store-postgres")
            .enable_all()
            .build()?;
        Ok(Postgres {
            shared: Arc::new(Shared {
                writer: OnceLock::new(),
                config,
                name,
                idle: Mutex::new(Vec::new()),
                lent: Mutex::new(0),
                returned: Condvar::new(),
                batches: AtomicU64::new(0),
                clock,
                touching: TokenUses::default(),
                key_check: KeyChecks::default(),
                flights: Flights::default(),
                rt: runtime.handle().clone(),
                _runtime: Runtime(Some(runtime)),
            }),
        })
    }

    /// The first connection, whose failure names the database (never its URL).
    fn first_conn(&self) -> anyhow::Result<Conn> {
        use anyhow::Context;
        self.conn()
            .with_context(|| format!("opening the store: {}", self.shared.name))
    }

    /// A connection for one request: an idle one the database has not closed, or a new one;
    /// waits while [`POOL_SIZE`] are lent.
    fn conn(&self) -> Result<Conn> {
        let shared = &self.shared;
        shared.lend()?;
        let reused = loop {
            let next = shared
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match next {
                Some((c, _)) if c.is_closed() => continue,
                other => break other,
            }
        };
        let (client, statements) = match reused {
            Some(pooled) => pooled,
            None => match connect(&shared.rt, &shared.config) {
                Ok(client) => (client, Statements::default()),
                Err(e) => {
                    shared.given_back();
                    return Err(e);
                }
            },
        };
        let conn = Conn::new(client, Arc::downgrade(shared));
        *conn.statements.borrow_mut() = statements;
        Ok(conn)
    }
}

/// The database as messages name it: "PostgreSQL database D on H".
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("PostgreSQL database {db} on {host}")
}

/// Waits on the calling thread for `work`, which must need no tokio runtime of the caller's:
/// a client's statements qualify (they are messages to the connection's task, driven by the
/// engine's runtime). Unlike `Handle::block_on`, this may be called on an async thread.
fn wait<F: Future>(work: F) -> F::Output {
    futures_executor::block_on(work)
}

/// Opens a connection on the engine's runtime `rt` (sockets and timers need it) and waits
/// for it, on any thread.
fn connect(rt: &Handle, config: &Config) -> Result<Client> {
    let config = config.clone();
    wait(rt.spawn(async move { open_client(&config).await }))
        .map_err(|e| Error::Engine(Box::new(e)))?
}

/// Opens a connection; the engine's runtime drives it until the client is dropped or the
/// database closes it.
async fn open_client(config: &Config) -> Result<Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "a database connection ended");
        }
    });
    Ok(client)
}

impl Engine for Postgres {
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

    fn time(&self) -> Timestamp {
        (self.shared.clock)()
    }

    /// Never known here: another node's commit is seen only by asking the database, and the
    /// answer cache this serves exists to not ask.
    fn generation(&self) -> Option<Generation> {
        None
    }

    fn lock_credential(&self, id: CredentialId) -> Locking<'_> {
        let local = self.shared.flights.of(id);
        let rt = self.shared.rt.clone();
        let config = self.shared.config.clone();
        Box::pin(async move {
            // One waiter per process on the database's lock: the others wait here.
            let local = local.lock_owned().await;
            let held = rt
                .spawn(async move {
                    let client = open_client(&config).await?;
                    client
                        .execute("SELECT pg_advisory_lock($1)", &[&id.0])
                        .await?;
                    Ok::<_, Error>(client)
                })
                .await
                .map_err(|e| Error::Engine(Box::new(e)))??;
            Ok(CredentialLock(Box::new(CredentialHeld {
                held: Some((held, local)),
                rt,
                id,
            })))
        })
    }
}

/// A credential's lock across nodes: the connection that holds its advisory lock, and the
/// in-process lock.
struct CredentialHeld {
    held: Option<(Client, tokio::sync::OwnedMutexGuard<()>)>,
    rt: Handle,
    id: CredentialId,
}

impl Drop for CredentialHeld {
    /// Unlocks on the engine's runtime, without waiting (this may run on an async thread),
    /// and lets the next caller of this process in only then. Should the unlock fail, closing
    /// the connection releases the lock too.
    fn drop(&mut self) {
        let Some((client, local)) = self.held.take() else {
            return;
        };
        let id = self.id;
        drop(self.rt.spawn(async move {
            if let Err(e) = client
                .execute("SELECT pg_advisory_unlock($1)", &[&id.0])
                .await
            {
                tracing::warn!(error = %e, "unlocking a credential failed; its connection is closed");
            }
            drop(client);
            drop(local);
        }));
    }
}

impl Shared {
    /// Counts a connection lent, waiting while [`POOL_SIZE`] are.
    fn lend(&self) -> Result<()> {
        let lent = self.lent.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut lent, waited) = self
            .returned
            .wait_timeout_while(lent, POOL_WAIT, |n| *n >= POOL_SIZE)
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() && *lent >= POOL_SIZE {
            return Err(Error::Unavailable(format!(
                "all {POOL_SIZE} connections to the database stayed in use for {} s",
                POOL_WAIT.as_secs()
            )));
        }
        *lent += 1;
        Ok(())
    }

    /// Counts a lent connection given back (or closed).
    fn given_back(&self) {
        let mut lent = self.lent.lock().unwrap_or_else(PoisonError::into_inner);
        *lent = lent.saturating_sub(1);
        self.returned.notify_one();
    }

    /// Queues `job` for the group committer, starting its thread on first use.
    fn submit(self: &Arc<Self>, job: Job) -> std::result::Result<(), Job> {
        self.writer
            .get_or_init(|| {
                let writer = PgWriter {
                    home: Arc::downgrade(self),
                    rt: self.rt.clone(),
                    config: self.config.clone(),
                };
                spawn_writer(move |jobs| group_commit(&writer, jobs))
            })
            .sender()
            .send(job)
            .map_err(|e| e.0)
    }
}

/// The group committer's side of this engine: a connection of its own, which is a [`Conn`]
/// like any other (so `begin` takes the writer lock and checks the keys).
struct PgWriter {
    home: Weak<Shared>,
    rt: Handle,
    config: Config,
}

impl Writer for PgWriter {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        let client = connect(&self.rt, &self.config)?;
        // Not given back to the pool: it dies with this thread.
        Ok(Box::new(
            Conn::new(client, Weak::new()).of(self.home.clone()),
        ))
    }

    fn begin(&self, conn: &dyn Connection) -> Result<()> {
        conn.begin()
    }

    fn finished(&self, committed: bool) {
        if committed && let Some(home) = self.home.upgrade() {
            home.batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The parameters of a statement.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The statements a connection has prepared, by their text: a statement's text is sent and
/// planned once per connection, then only executed (one round trip instead of two).
type Statements = HashMap<String, Statement>;

/// At most this many statements are kept prepared per connection; past it, the cache is
/// emptied (the store's statements are a fixed set well below it).
const STATEMENTS: usize = 256;

/// One connection of the engine: implements the queries ([`Reads`](super::Reads) in
/// `read.rs`, [`Writes`](super::Writes) in `write.rs`) and the transaction control
/// ([`Connection`]). Given back to the idle list when dropped, outside a transaction.
struct Conn {
    /// `Some` until dropped.
    client: Option<Client>,
    /// The engine it goes back to. Empty for the group committer's own.
    pool: Weak<Shared>,
    /// The engine, for its clock, key check and group committer.
    home: Weak<Shared>,
    /// The statements this connection has prepared.
    statements: RefCell<Statements>,
    /// Open transaction and savepoints: 0 outside a transaction, then one more per savepoint.
    depth: Cell<u32>,
    /// A statement failed inside the transaction: PostgreSQL refuses every other statement
    /// until a rollback (to a savepoint), and would turn a `COMMIT` into a rollback.
    aborted: Cell<bool>,
}

impl Conn {
    fn new(client: Client, pool: Weak<Shared>) -> Conn {
        Conn {
            client: Some(client),
            home: pool.clone(),
            pool,
            statements: RefCell::default(),
            depth: Cell::new(0),
            aborted: Cell::new(false),
        }
    }

    /// The same connection, working for engine `home` without belonging to its pool.
    fn of(mut self, home: Weak<Shared>) -> Conn {
        self.home = home;
        self
    }

    fn client(&self) -> &Client {
        // Invariant: `client` is `None` only inside `drop`.
        self.client
            .as_ref()
            .expect("a connection is present until dropped")
    }

    /// Waits for a statement.
    fn block<T>(
        &self,
        run: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let out = wait(run);
        if out.is_err() && self.depth.get() > 0 {
            self.aborted.set(true);
        }
        Ok(out?)
    }

    /// `sql` prepared on this connection: once, then from the cache.
    fn prepared(&self, sql: &str) -> Result<Statement> {
        if let Some(st) = self.statements.borrow().get(sql) {
            return Ok(st.clone());
        }
        let st = self.block(self.client().prepare(sql))?;
        let mut cache = self.statements.borrow_mut();
        if cache.len() >= STATEMENTS {
            cache.clear();
        }
        cache.insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    fn rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        let st = self.prepared(sql)?;
        self.block(self.client().query(&st, params))
    }

    fn row(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        let st = self.prepared(sql)?;
        self.block(self.client().query_opt(&st, params))
    }

    fn one(&self, sql: &str, params: Params<'_>) -> Result<Row> {
        let st = self.prepared(sql)?;
        self.block(self.client().query_one(&st, params))
    }

    fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64> {
        let st = self.prepared(sql)?;
        self.block(self.client().execute(&st, params))
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.block(self.client().batch_execute(sql))
    }

    /// Whether the database holds the store's schema.
    fn has_schema(&self) -> Result<bool> {
        let row = self.one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?;
        get(&row, 0)
    }

    /// The store's time, as rows are stamped with it.
    fn now(&self) -> String {
        self.clock_time().to_string()
    }

    fn clock_time(&self) -> Timestamp {
        match self.home.upgrade() {
            Some(home) => (home.clock)(),
            // The store is gone (only a handle outliving it); its clock with it.
            None => Timestamp::now(),
        }
    }

    /// Queues the record of a token's use (see [`Reads::note_token_used`](super::Reads::note_token_used)).
    fn queue_token_use(&self, id: &str, at_ms: i64) {
        if let Some(home) = self.home.upgrade() {
            home.touching
                .queue(&|job| home.submit(job).is_ok(), id, at_ms);
        }
    }
}

/// Column `i` of a row.
fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    Ok(row.try_get(i)?)
}

impl Drop for Conn {
    /// Gives the connection back to the pool, outside a transaction; one the database closed,
    /// or whose transaction cannot be rolled back, is closed instead.
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let rolled_back = self.depth.get() == 0
            || wait(client.batch_execute("ROLLBACK"))
                .inspect_err(|e| {
                    tracing::error!(error = %e, "rolling back a returned connection failed; closing it");
                })
                .is_ok();
        if rolled_back && !client.is_closed() {
            let statements = self.statements.take();
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((client, statements));
        }
        pool.given_back();
    }
}

impl Connection for Conn {
    fn begin(&self) -> Result<()> {
        self.depth.set(1);
        self.aborted.set(false);
        let begun =
            self.batch(&format!("BEGIN; {WRITER_LOCK}"))
                .and_then(|()| match self.home.upgrade() {
                    Some(home) => home.key_check.run(self),
                    None => Ok(()),
                });
        if begun.is_err() {
            self.rollback();
        }
        begun
    }

    fn commit(&self) -> Result<()> {
        if self.aborted.get() {
            // PostgreSQL would roll back and call it a commit.
            return Err(Error::Engine(
                "a statement of the transaction failed; it was not committed".into(),
            ));
        }
        self.batch("COMMIT")?;
        self.depth.set(0);
        Ok(())
    }

    fn rollback(&self) {
        if self.depth.get() == 0 {
            return;
        }
        self.depth.set(0);
        self.aborted.set(false);
        if let Err(e) = wait(self.client().batch_execute("ROLLBACK")) {
            tracing::error!(error = %e, "rolling back a transaction failed");
        }
    }

    fn savepoint(&self) -> Result<()> {
        self.batch("SAVEPOINT part")?;
        self.depth.set(self.depth.get() + 1);
        Ok(())
    }

    fn release(&self, keep: bool) -> Result<()> {
        let kept = if keep && !self.aborted.get() {
            self.batch("RELEASE SAVEPOINT part")
        } else {
            Err(Error::Engine(
                "a statement of the savepoint failed; it was undone".into(),
            ))
        };
        if kept.is_err() || !keep {
            // Undone, and the transaction usable again.
            self.batch("ROLLBACK TO SAVEPOINT part; RELEASE SAVEPOINT part")?;
            self.aborted.set(false);
        }
        self.depth.set(self.depth.get().saturating_sub(1));
        if keep { kept } else { Ok(()) }
    }

    fn snapshot_into(&self, _to: &std::path::Path) -> Result<()> {
        Err(Error::Engine(
            "a PostgreSQL store is backed up with PostgreSQL's own tools (pg_dump), not by `backup`"
                .into(),
        ))
    }

    fn truncate_wal(&self) -> Result<bool> {
        // PostgreSQL's write-ahead log is the database server's, recycled by it.
        Ok(true)
    }
}

#[cfg(test)]
pub(crate) mod testdb;

#[cfg(test)]
mod tests {
    use super::testdb::TestDb;
    use super::*;

    fn version(url: &str) -> i64 {
        let engine =
            Postgres::at(url, crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        let conn = engine.conn().unwrap_or_else(|e| panic!("{e}"));
        let row = conn
            .one("SELECT version FROM schema_version", &[])
            .unwrap_or_else(|e| panic!("{e}"));
        get(&row, 0).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_store_is_created_once_opened_after_and_a_newer_one_left_alone() {
        let Some(db) = TestDb::new() else {
            return;
        };
        let clock = crate::store::wall_clock;
        let e = open(&db.url, clock()).err().map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("holds no flowpack store")),
            "{e:?}"
        );
        drop(create(&db.url, clock()).unwrap_or_else(|e| panic!("{e:#}")));
        assert_eq!(version(&db.url), SCHEMA_VERSION);
        let e = create(&db.url, clock()).err().map(|e| format!("{e:#}"));
        assert!(
            e.as_deref().is_some_and(
                |e| e.contains("already holds a flowpack store") && e.contains("--join")
            ),
            "{e:?}"
        );
        drop(open(&db.url, clock()).unwrap_or_else(|e| panic!("{e:#}")));

        let newer = SCHEMA_VERSION + 1;
        {
            let engine = Postgres::at(&db.url, clock()).unwrap_or_else(|e| panic!("{e}"));
            let conn = engine.conn().unwrap_or_else(|e| panic!("{e}"));
            conn.exec("UPDATE schema_version SET version = $1", &[&newer])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let e = open(&db.url, clock()).err().map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains(&format!("schema version {newer}"))
                    && e.contains("downgrading is not supported")),
            "{e:?}"
        );
        assert_eq!(version(&db.url), newer, "a newer schema is never touched");
    }

    #[test]
    fn an_unreachable_database_is_unavailable_and_named_without_its_password() {
        // Port 1: nothing listens there.
        let url = "postgres://flow:pg-canary@127.0.0.1:1/nowhere";
        let e = open(url, crate::store::wall_clock())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            e.contains("PostgreSQL database nowhere on 127.0.0.1") && e.contains("unavailable"),
            "{e}"
        );
        assert!(!e.contains("pg-canary"), "{e}");
        let e = open("postgres://flow:pg-canary@[bad", crate::store::wall_clock())
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            e.contains("not a valid PostgreSQL URL") && !e.contains("pg-canary"),
            "{e}"
        );
    }
}
