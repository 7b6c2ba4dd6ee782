//! The credential read queue: credential reads wait here for one of at most one blocking
//! thread per core (see [`Reads`]).

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use crate::App;

/// Credential reads waiting for a blocking thread, and the threads draining them.
///
/// A credential read is short (tens of microseconds) and the most frequent request. Given a
/// `spawn_blocking` each, every read woke an idle thread of tokio's blocking pool, and under
/// load dozens of pool threads took turns on the cores: on two cores with 64 connections, 8.4
/// futex calls and about 80 µs of CPU per GET, against about 3 and 60 µs when two threads did
/// all the reads. So reads queue here and at most one thread per core drains the queue: a
/// drainer takes the next read without going to sleep, and gives its thread back to the pool
/// once the queue is empty. Work that can hold a thread for long (deploys, listings, mapping
/// files streamed to slow clients) keeps a pool thread of its own, so it never delays a read.
///
/// One queue per process (one per core is the point); each read holds a token of its own
/// [`App`]'s work tracker, so shutdown waits for it like for any other store work.
pub(super) struct Reads {
    state: Mutex<ReadsState>,
}

pub(super) struct ReadsState {
    waiting: VecDeque<Box<dyn FnOnce() + Send>>,
    /// Drainers started and not stopped; at most [`drainers_max`].
    drainers: usize,
}

pub(super) static READS: Reads = Reads {
    state: Mutex::new(ReadsState {
        waiting: VecDeque::new(),
        drainers: 0,
    }),
};

/// One drainer per core.
fn drainers_max() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

impl Reads {
    fn lock(&self) -> MutexGuard<'_, ReadsState> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `read` for a blocking thread, starting a drainer when fewer than
    /// [`drainers_max`] run.
    pub(super) fn submit(&'static self, app: &App, read: impl FnOnce() + Send + 'static) {
        let tracked = app.work_token();
        let start = {
            let mut state = self.lock();
            state.waiting.push_back(Box::new(move || {
                read();
                drop(tracked);
            }));
            let start = state.drainers < drainers_max();
            if start {
                state.drainers += 1;
            }
            start
        };
        if start {
            let drainer = Drainer {
                reads: self,
                stopped: false,
            };
            tokio::task::spawn_blocking(move || drainer.run());
        }
    }
}

/// A started drainer, counted in [`ReadsState::drainers`] until it stops.
struct Drainer {
    reads: &'static Reads,
    stopped: bool,
}

impl Drainer {
    /// Runs the waiting reads until none is left. Stopping is decided under the lock that
    /// [`Reads::submit`] queues under, so a read queued meanwhile is either taken here or
    /// starts a drainer of its own.
    fn run(mut self) {
        loop {
            let read = {
                let mut state = self.reads.lock();
                match state.waiting.pop_front() {
                    Some(read) => read,
                    None => {
                        state.drainers -= 1;
                        self.stopped = true;
                        return;
                    }
                }
            };
            // A read that panics drops its answer's sender (its caller answers 500) and its
            // tracker token; the drainer goes on with the next.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(read));
        }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        // Dropped without stopping: the runtime shut down before running it. Reads still
        // waiting are taken by the next drainer started.
        if !self.stopped {
            self.reads.lock().drainers -= 1;
        }
    }
}
