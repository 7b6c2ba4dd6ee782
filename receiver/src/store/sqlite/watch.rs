//! The store's generation, read from SQLite's WAL index without a query.
//!
//! In WAL mode every connection to the database maps the shared-memory file `<db>-shm` (the
//! WAL index). Its first 96 bytes are two copies of a 48-byte header that a writer rewrites
//! at every commit: a change counter, the last valid frame of the log, the log's salts and
//! checksums. Readers find their snapshot through it, so a commit becomes visible exactly
//! when the header changes, whichever process made it. The writer writes the second copy,
//! then the first; a reader that finds the two equal (and the header marked initialized) has
//! read one whole header. The layout is SQLite's documented WAL-index format for its unix
//! VFS (<https://sqlite.org/walformat.html>), which processes built against different SQLite
//! versions share, so it does not change under us.
//!
//! The header is read with one `pread` of the file, never through a mapping of our own: a
//! file truncated under a mapping would kill the process, while a short read only means
//! "unknown". The file must stay the one SQLite uses: SQLite deletes or truncates it only as
//! the first or the last connection to the database, so [`Watch`] keeps a connection of its
//! own open for as long as it reads the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection as Sqlite;

use super::connect;
use crate::store::{Error, Generation, Result};

/// The size of one copy of the WAL-index header.
const HEADER: usize = 48;
/// The header's `isInit` byte: 1 once the header is valid.
const IS_INIT: usize = 12;

/// Reads the database's generation from its WAL index.
pub(super) struct Watch {
    /// A connection held open so that `shm` stays the file SQLite uses (see the module doc);
    /// never used, so never locked (the mutex only makes it shareable).
    _open: Mutex<Sqlite>,
    shm: File,
}

impl Watch {
    /// Opens a connection to the database at `path` and its WAL index.
    pub(super) fn open(path: &Path) -> Result<Watch> {
        let open = connect(path)?;
        // A first read makes SQLite open (and, as the first connection, create) the index.
        open.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        // The file SQLite maps is named after the database as SQLite resolved it (symbolic
        // links followed), which may not be `path`: a stale file beside `path` would never
        // change.
        let resolved = open
            .path()
            .filter(|p| !p.is_empty())
            .map_or_else(|| path.to_owned(), PathBuf::from);
        let mut name = resolved.into_os_string();
        name.push("-shm");
        let name = PathBuf::from(name);
        let shm = File::open(&name)
            .map_err(|e| Error::Engine(format!("{}: {e}", name.display()).into()))?;
        Ok(Watch {
            _open: Mutex::new(open),
            shm,
        })
    }

    /// The header of the WAL index now; `None` while a commit is rewriting it (the two copies
    /// differ), before it is initialized, or when it cannot be read.
    pub(super) fn generation(&self) -> Option<Generation> {
        let mut both = [0u8; 2 * HEADER];
        self.shm.read_exact_at(&mut both, 0).ok()?;
        let (first, second) = both.split_at(HEADER);
        if first != second || first[IS_INIT] != 1 {
            return None;
        }
        first.try_into().ok().map(Generation)
    }
}
