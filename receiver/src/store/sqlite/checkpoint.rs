//! WAL checkpoints, on a thread of their own, off the requests' path.

use std::path::Path;
use std::sync::{Arc, mpsc};

use super::{Background, CHECKPOINT_PAUSE, Shared, connect};

impl Shared {
    /// Called after every commit: wakes the checkpointer (starting it on first use).
    pub(super) fn committed(self: &Arc<Self>) {
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
