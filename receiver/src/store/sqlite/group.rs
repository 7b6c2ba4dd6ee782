//! The group committer: one thread, a savepoint per job, one durable commit per batch.

use std::path::Path;
use std::sync::{Weak, mpsc};

use std::sync::atomic::Ordering;

use super::{Db, MAX_BATCH, Pooled, Shared, Tx, connect};
use crate::store::{Error, Result};

/// A queued job: given the batch's transaction (or why none could be started), runs and
/// returns what to do once the batch has committed or failed.
pub(super) type Job = Box<dyn FnOnce(std::result::Result<&Tx<'_>, &Error>) -> Finish + Send>;

pub(super) type Finish = Box<dyn FnOnce(std::result::Result<(), &Error>) + Send>;

/// The group committer's thread: until every [`Store`] is gone, takes the queued jobs (up to
/// [`MAX_BATCH`]), runs each in its own savepoint inside one transaction, commits once, then
/// answers them all.
pub(super) fn group_commit(path: &Path, home: &Weak<Shared>, jobs: &mpsc::Receiver<Job>) {
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
        // The writer's handle belongs to no pool, so `write` does not check the keys: it is
        // done here, with the writer lock held.
        let tx = match db.write().and_then(|tx| match home.upgrade() {
            Some(home) => home.check_keys(&tx).map(|()| tx),
            None => Ok(tx),
        }) {
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
