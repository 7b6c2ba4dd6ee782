//! The handles the services use, the same whatever the engine: [`Store`] (shared by the whole
//! server), [`Db`] (one request's connection: reads only), [`Tx`] (a write transaction that
//! rolls back unless committed) and [`MappingFile`] (a stored file being streamed).

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use super::engine::{Connection, CredentialLock, Engine, Reads, Writes};
use super::{Clock, CredentialId, Error, Generation, KeyCheck, Result};

/// A queued write job ([`Store::write_grouped`]): given the batch's transaction (or why none
/// could be started), runs and returns what to do once the batch has committed or failed.
pub type Job = Box<dyn FnOnce(std::result::Result<&Tx<'_>, &Error>) -> Finish + Send>;

/// What a [`Job`] does once its batch has committed (`Ok`) or failed.
pub type Finish = Box<dyn FnOnce(std::result::Result<(), &Error>) + Send>;

/// The store: an engine behind the handles. Clones share it.
#[derive(Clone, Debug)]
pub struct Store {
    engine: Arc<dyn Engine>,
}

impl Store {
    /// The store `engine` implements.
    pub fn new(engine: Arc<dyn Engine>) -> Store {
        Store { engine }
    }

    /// Creates a new embedded (SQLite) store at `path` with the schema.
    pub fn create(path: &Path, clock: Clock) -> anyhow::Result<Store> {
        super::sqlite::create(path, clock)
    }

    /// Opens an existing embedded (SQLite) store at `path`, upgrading an older schema.
    pub fn open(path: &Path, clock: Clock) -> anyhow::Result<Store> {
        super::sqlite::open(path, clock)
    }

    /// Creates the store's schema in an empty PostgreSQL database (`postgres://…`), for
    /// several receivers to share.
    pub fn create_postgres(url: &str, clock: Clock) -> anyhow::Result<Store> {
        super::postgres::create(url, clock)
    }

    /// Opens the store of a PostgreSQL database, upgrading an older schema.
    pub fn open_postgres(url: &str, clock: Clock) -> anyhow::Result<Store> {
        super::postgres::open(url, clock)
    }

    /// A handle for one request.
    pub fn db(&self) -> Result<Db> {
        Ok(Db {
            conn: self.engine.connect()?,
        })
    }

    /// Installs the check every write transaction makes first (see [`KeyCheck`]); once.
    pub fn check_keys_on_write(&self, check: KeyCheck) {
        self.engine.check_keys_on_write(check);
    }

    /// The time by the store's clock, without a connection.
    pub fn time(&self) -> flowpack_shared::timefmt::Timestamp {
        self.engine.time()
    }

    /// The store's generation now (see [`Generation`]), read without a query and without
    /// waiting; `None` when the engine cannot tell (PostgreSQL: another node's commit is
    /// known only by asking the database), or while a commit is being published.
    pub fn generation(&self) -> Option<Generation> {
        self.engine.generation()
    }

    /// How many transactions the group committer has committed.
    pub fn batches_committed(&self) -> u64 {
        self.engine.batches_committed()
    }

    /// Waits for, then holds while the result lives, credential `id`'s lock: one OAuth
    /// refresh or verification of a credential at a time, across every process that shares
    /// the store.
    pub async fn lock_credential(&self, id: CredentialId) -> Result<CredentialLock> {
        self.engine.lock_credential(id).await
    }

    /// Runs `job` inside the group committer's next transaction and resolves, with what `job`
    /// returned, once that transaction is durable (or with [`Error::Batch`] if its commit
    /// failed, which undoes every job in it).
    ///
    /// Group commit: the engine takes the queued jobs in batches, each job in its own
    /// savepoint, then commits once: one sync for the whole batch instead of one per request.
    /// What `job` writes is kept even when it returns `Err`: a job that must be all-or-nothing
    /// uses [`Tx::savepoint`] (a deploy keeps its refusal's audit row but not its partial
    /// apply). A job that panics is rolled back alone. Every job holds the writer for its whole
    /// run, so do the work that needs no lock (verification, parsing) before calling this.
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
        grouped(&|job| self.engine.submit(job).is_ok(), keep, job)
    }
}

/// [`Store::write_grouped`] over any queue: `submit` queues the job and says whether it could.
pub(super) fn grouped<T, E, K, F>(
    submit: &dyn Fn(Job) -> bool,
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
            Err(e) => Err(E::from(e.again())),
        };
        Box::new(move |committed: std::result::Result<(), &Error>| {
            let outcome = match (outcome, committed) {
                (Ok(_), Err(e)) => Err(E::from(e.again())),
                (outcome, _) => outcome,
            };
            drop(keep);
            // The caller may have gone (its connection closed): the job is done anyway.
            let _ = reply.send(outcome);
        })
    });
    let sent = submit(job);
    async move {
        if !sent {
            return Err(E::from(Error::WriterGone));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(Error::WriterGone)))
    }
}

/// A handle on the store for one request: reads see committed data only. Writes go through
/// [`Db::write`] or [`Store::write_grouped`].
pub struct Db {
    conn: Box<dyn Connection>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Starts a write transaction: it is serialized with every other writer from its first
    /// read, so what it reads stays true until it commits.
    pub fn write(&mut self) -> Result<Tx<'_>> {
        self.conn.begin()?;
        Ok(Tx::begun(&*self.conn))
    }

    /// The handle's reads, for a function that only reads (also [`Tx::reads`]).
    pub fn reads(&self) -> &dyn Reads {
        &*self.conn
    }

    /// Writes a consistent snapshot of the whole store to a new file at `to` (a backup).
    pub fn snapshot_into(&self, to: &Path) -> Result<()> {
        self.conn.snapshot_into(to)
    }

    /// Makes what was deleted unrecoverable from the engine's own logs where it can (see
    /// [`Connection::truncate_wal`]); false when a reader kept it from finishing.
    pub fn truncate_wal(&self) -> Result<bool> {
        self.conn.truncate_wal()
    }
}

impl Deref for Db {
    type Target = dyn Reads;
    fn deref(&self) -> &(dyn Reads + 'static) {
        &*self.conn
    }
}

/// A write transaction: [`Tx::commit`] makes it durable; dropped without it, it rolls back.
/// Reads inside it see its own writes.
pub struct Tx<'c> {
    conn: &'c dyn Connection,
    /// Committed (or the commit was tried): nothing to roll back on drop.
    done: bool,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl<'c> Tx<'c> {
    /// The transaction `conn` has just begun.
    pub(super) fn begun(conn: &'c dyn Connection) -> Tx<'c> {
        Tx { conn, done: false }
    }

    /// Commits. On failure the transaction rolls back.
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        let committed = self.conn.commit();
        if committed.is_err() {
            self.conn.rollback();
        }
        committed
    }

    /// Runs `f` in a savepoint: kept if it returns `Ok`, undone (and only it) if it returns
    /// `Err`. The outer error is the savepoint's own statements failing.
    pub fn savepoint<T, E>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> std::result::Result<T, E>,
    ) -> Result<std::result::Result<T, E>> {
        self.conn.savepoint()?;
        let out = f(self);
        self.conn.release(out.is_ok())?;
        Ok(out)
    }

    /// The transaction's reads, for a function that only reads.
    pub fn reads(&self) -> &'c dyn Reads {
        self.conn
    }
}

impl<'c> Deref for Tx<'c> {
    type Target = dyn Writes + 'c;
    fn deref(&self) -> &(dyn Writes + 'c) {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.rollback();
        }
    }
}

/// A stored mapping file being read: an [`std::io::Read`] of known length, from the snapshot
/// taken when it was opened.
pub struct MappingFile<'a> {
    reader: Box<dyn std::io::Read + 'a>,
    len: u64,
}

impl std::fmt::Debug for MappingFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingFile")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<'a> MappingFile<'a> {
    /// A file of `len` bytes, read from `reader`.
    pub fn new(reader: Box<dyn std::io::Read + 'a>, len: u64) -> MappingFile<'a> {
        MappingFile { reader, len }
    }

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
        self.reader.read(buf)
    }
}
