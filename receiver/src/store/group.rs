//! What every engine's group committer shares: the batch loop (a savepoint per job, one
//! commit per batch), the background thread that runs it, the queue of token uses
//! ([`Reads::note_token_used`](super::Reads::note_token_used)) and the in-process lock per
//! credential. An engine gives the loop its own connection and transaction start ([`Writer`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};

use super::engine::Connection;
use super::handle::{Finish, Job, grouped};
use super::{CredentialId, Error, KeyCheck, Result, Tx};

/// The most jobs a group committer puts in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// What an engine gives its group committer.
pub(super) trait Writer {
    /// Opens the writer's own connection (again after one failed).
    fn connect(&self) -> Result<Box<dyn Connection>>;

    /// Starts the batch's write transaction on `conn`, with the store's key check; on an
    /// error nothing is left open.
    fn begin(&self, conn: &dyn Connection) -> Result<()>;

    /// Told after every batch whether it committed.
    fn finished(&self, committed: bool);
}

/// The group committer's loop, until the queue closes (every [`Store`](super::Store) is
/// gone): takes the queued jobs (up to [`MAX_BATCH`]), runs each in its own savepoint inside
/// one transaction, commits once, then answers them all. A connection whose transaction could
/// not start or commit is closed, and the next batch opens another (a database that went away
/// and came back).
pub(super) fn group_commit(writer: &dyn Writer, jobs: &mpsc::Receiver<Job>) {
    let mut db: Option<Box<dyn Connection>> = None;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let conn = match db.take() {
            Some(conn) => conn,
            None => match writer.connect() {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::error!(error = %e, "the writer cannot connect");
                    refuse_all(batch, &e);
                    continue;
                }
            },
        };
        if let Err(e) = writer.begin(&*conn) {
            refuse_all(batch, &e);
            continue;
        }
        let tx = Tx::begun(&*conn);
        let mut finishes = Vec::with_capacity(batch.len());
        for job in batch {
            finishes.push(run_job(&tx, &*conn, job));
        }
        // A failed commit rolls back, before anyone is answered.
        let committed = tx.commit();
        writer.finished(committed.is_ok());
        if committed.is_ok() {
            db = Some(conn);
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
fn run_job(tx: &Tx<'_>, conn: &dyn Connection, job: Job) -> (Finish, Result<()>) {
    if let Err(e) = conn.savepoint() {
        return (job(Err(&e)), Err(e));
    }
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(tx))));
    match ran {
        Ok(finish) => (finish, conn.release(true)),
        Err(_) => {
            tracing::error!("a write job panicked; rolled back");
            // The panicking job's reply went with it; nothing left to answer.
            (Box::new(|_| {}), conn.release(false))
        }
    }
}

/// Starts the group committer's thread: the queue to give it jobs, and its handle.
pub(super) fn spawn_writer(
    run: impl FnOnce(&mpsc::Receiver<Job>) + Send + 'static,
) -> Background<mpsc::Sender<Job>> {
    let (send, jobs) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(&jobs))
        // The queue's receiver is dropped with the closure: every send fails, and callers get
        // `WriterGone`.
        .inspect_err(|e| tracing::error!(error = %e, "starting the writer thread failed"))
        .ok();
    Background {
        send: Some(send),
        thread: spawned,
    }
}

/// A background thread of the store and the channel that feeds it.
pub(super) struct Background<S> {
    /// `Some` until dropped.
    pub(super) send: Option<S>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl<S> Background<S> {
    pub(super) fn sender(&self) -> &S {
        // Invariant: `send` is `None` only inside `drop`.
        self.send
            .as_ref()
            .expect("a background sender is present until dropped")
    }
}

impl<S> Drop for Background<S> {
    /// Closes the channel and waits for the thread to finish what it holds (queued jobs, a
    /// checkpoint under way) and close its connection, so that once the last
    /// [`Store`](super::Store) is gone nothing touches the database. Not when the thread
    /// itself drops the last [`Store`](super::Store).
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

/// Tokens whose use is queued to be recorded ([`Reads::note_token_used`](super::Reads::note_token_used))
/// and not yet committed: at most one update per token is queued at a time.
#[derive(Default)]
pub(super) struct TokenUses(Arc<Mutex<HashSet<String>>>);

impl TokenUses {
    /// Queues, through `submit`, the record that token `id` was used at `at_ms`, unless one
    /// is queued already.
    pub(super) fn queue(&self, submit: &dyn Fn(Job) -> bool, id: &str, at_ms: i64) {
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
        if !self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned())
        {
            return;
        }
        let queued = Queued {
            set: self.0.clone(),
            id: id.to_owned(),
        };
        let id = id.to_owned();
        // The job is queued by this call; the future only carries its answer, which nobody
        // needs.
        let answer = grouped(submit, queued, move |tx| -> Result<()> {
            tx.set_token_last_used(&id, at_ms)
        });
        drop(answer);
    }
}

/// One in-process lock per credential; entries are kept (one small mutex per credential
/// used), so two callers never hold different locks for the same credential.
#[derive(Default)]
pub(super) struct Flights(Mutex<HashMap<CredentialId, Arc<tokio::sync::Mutex<()>>>>);

impl Flights {
    /// Credential `id`'s lock.
    pub(super) fn of(&self, id: CredentialId) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .clone()
    }
}

/// The check every write transaction makes first ([`KeyCheck`]), once installed.
#[derive(Default)]
pub(super) struct KeyChecks(OnceLock<KeyCheck>);

impl KeyChecks {
    /// Installs the check; once.
    pub(super) fn install(&self, check: KeyCheck) {
        if self.0.set(check).is_err() {
            tracing::error!("a second key check was not installed");
        }
    }

    /// Runs the check, if one is installed, inside the write transaction of `conn`.
    pub(super) fn run(&self, conn: &dyn Connection) -> Result<()> {
        let Some(check) = self.0.get() else {
            return Ok(());
        };
        let id = conn.at_rest_key_id()?;
        check(id.as_deref()).map_err(Error::Keys)
    }
}
