//! The group committer: one thread, a savepoint per job, one durable commit per batch.

use std::path::Path;
use std::sync::{Weak, mpsc};

use std::sync::atomic::Ordering;

use super::{Conn, MAX_BATCH, Pooled, Shared, connect};
use crate::store::engine::Connection;
use crate::store::handle::{Finish, Job};
use crate::store::{Error, Result, Tx};

/// The group committer's thread: until every [`Store`](crate::store::Store) is gone, takes the queued jobs (up to
/// [`MAX_BATCH`]), runs each in its own savepoint inside one transaction, commits once, then
/// answers them all.
pub(super) fn group_commit(path: &Path, home: &Weak<Shared>, jobs: &mpsc::Receiver<Job>) {
    let mut db: Option<Conn> = None;
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
                    db = Some(Conn {
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
        let Some(db) = db.as_ref() else { continue };
        // The writer's connection belongs to no engine, so `begin` does not check the keys:
        // it is done here, with the writer lock held.
        let begun = db.begin().and_then(|()| match home.upgrade() {
            Some(home) => home.check_keys(db).inspect_err(|_| db.rollback()),
            None => Ok(()),
        });
        if let Err(e) = begun {
            refuse_all(batch, &e);
            continue;
        }
        let tx = Tx::begun(db);
        let mut finishes = Vec::with_capacity(batch.len());
        for job in batch {
            finishes.push(run_job(&tx, db, job));
        }
        // A failed commit rolls back, before anyone is answered.
        let committed = tx.commit();
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
fn run_job(tx: &Tx<'_>, conn: &Conn, job: Job) -> (Finish, Result<()>) {
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
