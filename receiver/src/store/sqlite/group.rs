//! The SQLite side of the group committer (the loop is `store/group.rs`): its own connection,
//! `BEGIN IMMEDIATE` with the key check, and a checkpoint after each batch.

use std::path::PathBuf;
use std::sync::Weak;
use std::sync::atomic::Ordering;

use super::{Conn, Pooled, Shared, connect};
use crate::store::Result;
use crate::store::engine::Connection;
use crate::store::group::Writer;

/// The group committer of the database at `path`, for the engine `home`.
pub(super) struct SqliteWriter {
    pub(super) path: PathBuf,
    pub(super) home: Weak<Shared>,
}

impl Writer for SqliteWriter {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        Ok(Box::new(Conn {
            conn: Pooled {
                conn: Some(connect(&self.path)?),
                // Not given back to the pool: it dies with this thread.
                home: Weak::new(),
            },
        }))
    }

    fn begin(&self, conn: &dyn Connection) -> Result<()> {
        // The writer's connection belongs to no engine, so `begin` does not check the keys:
        // it is done here, with the writer lock held.
        conn.begin()?;
        match self.home.upgrade() {
            Some(home) => home.key_check.run(conn).inspect_err(|_| conn.rollback()),
            None => Ok(()),
        }
    }

    fn finished(&self, committed: bool) {
        if let Some(home) = self.home.upgrade() {
            if committed {
                home.batches.fetch_add(1, Ordering::Relaxed);
            }
            home.committed();
        }
    }
}
