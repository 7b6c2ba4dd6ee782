//! An uploaded bundle, kept until it is applied or refused: a small one received in memory
//! within a budget shared by all uploads, a larger one spooled to a file in the data directory.

use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::sync::Arc;

use crate::problem::Problem;

/// An uploaded bundle, kept until it is applied or refused: a small one in memory (see
/// [`UploadBuffer`]), a larger one in a spool file in the data directory (removed when
/// dropped).
#[derive(Debug)]
pub enum Upload {
    /// The bundle's bytes.
    Memory(Arc<Buffered>),
    /// The spool file the bundle was written to.
    File(tempfile::NamedTempFile),
}

/// The largest upload received in memory. A standalone credential bundle is a few KiB:
/// keeping it off the disk saves creating, writing, opening again and removing a file, and
/// four trips to the blocking pool, per deploy.
pub const IN_MEMORY: u64 = 64 * 1024;

/// The most bytes all uploads held in memory may take at once; an upload that would go past
/// it is spooled to a file like a large one. So clients that open many small uploads and
/// send them slowly cannot make the receiver hold more than this.
const IN_MEMORY_TOTAL: u64 = 4 * 1024 * 1024;

/// Bytes of [`IN_MEMORY_TOTAL`] taken now.
static IN_MEMORY_TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A share of [`IN_MEMORY_TOTAL`], given back when dropped.
#[derive(Debug)]
struct Share(u64);

impl Share {
    fn take(n: u64) -> Option<Share> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        IN_MEMORY_TAKEN
            .fetch_update(AcqRel, Acquire, |taken| {
                taken.checked_add(n).filter(|t| *t <= IN_MEMORY_TOTAL)
            })
            .ok()
            .map(|_| Share(n))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        IN_MEMORY_TAKEN.fetch_sub(self.0, std::sync::atomic::Ordering::AcqRel);
    }
}

/// An upload's bytes held in memory, wiped when dropped (it may carry secrets in clear), with
/// its share of the memory uploads may take.
#[derive(Debug)]
pub struct Buffered {
    bytes: zeroize::Zeroizing<Vec<u8>>,
    _share: Share,
}

/// An upload being received in memory: room for exactly the length the request declared.
#[derive(Debug)]
pub struct UploadBuffer(Buffered);

impl UploadBuffer {
    /// Room for an upload of `len` bytes, if it is at most [`IN_MEMORY`] and the memory that
    /// uploads may take has room for it; otherwise the upload is to be spooled.
    pub fn for_length(len: u64) -> Option<UploadBuffer> {
        if len > IN_MEMORY {
            return None;
        }
        let share = Share::take(len)?;
        // At most `IN_MEMORY`, so it fits a `usize`.
        let capacity = usize::try_from(len).ok()?;
        Some(UploadBuffer(Buffered {
            bytes: zeroize::Zeroizing::new(Vec::with_capacity(capacity)),
            _share: share,
        }))
    }

    /// Appends received bytes. More than the declared length is an error: the buffer never
    /// grows, so no copy of the bytes is left behind unwiped by a reallocation. (HTTP/1 framing
    /// already ends a body at its declared length.)
    pub fn extend(&mut self, data: &[u8]) -> Result<(), Problem> {
        let bytes = &mut self.0.bytes;
        if data.len() > bytes.capacity() - bytes.len() {
            return Err(Problem::internal(
                "an upload went past the length it declared",
            ));
        }
        bytes.extend_from_slice(data);
        Ok(())
    }

    /// The upload received.
    pub fn into_upload(self) -> Upload {
        Upload::Memory(Arc::new(self.0))
    }
}

impl Upload {
    /// A reader of the whole bundle from its start, with a position of its own.
    pub(super) fn reader(&self) -> std::io::Result<UploadReader> {
        Ok(match self {
            Upload::Memory(bytes) => UploadReader::Memory(Cursor::new(Held(bytes.clone()))),
            Upload::File(spooled) => {
                let mut file = spooled.reopen()?;
                file.seek(SeekFrom::Start(0))?;
                UploadReader::File(BufReader::new(file))
            }
        })
    }
}

/// Shared bytes of an [`Upload`] held in memory, as a slice.
pub(super) struct Held(Arc<Buffered>);

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

/// Reads an [`Upload`].
pub(super) enum UploadReader {
    Memory(Cursor<Held>),
    File(BufReader<std::fs::File>),
}

impl Read for UploadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            UploadReader::Memory(r) => r.read(buf),
            UploadReader::File(r) => r.read(buf),
        }
    }
}

impl Seek for UploadReader {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            UploadReader::Memory(r) => r.seek(pos),
            UploadReader::File(r) => r.seek(pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_held_in_memory_stay_within_their_budget() {
        assert!(UploadBuffer::for_length(IN_MEMORY + 1).is_none());
        let full: Vec<UploadBuffer> = (0..IN_MEMORY_TOTAL / IN_MEMORY)
            .map(|_| UploadBuffer::for_length(IN_MEMORY).unwrap_or_else(|| panic!("room")))
            .collect();
        assert!(
            UploadBuffer::for_length(1).is_none(),
            "the budget is taken: the next upload is spooled"
        );
        drop(full);

        let mut buffer = UploadBuffer::for_length(3).unwrap_or_else(|| panic!("room again"));
        buffer.extend(b"ab").unwrap_or_else(|e| panic!("{e:?}"));
        buffer.extend(b"c").unwrap_or_else(|e| panic!("{e:?}"));
        assert!(buffer.extend(b"d").is_err(), "past the declared length");
        let upload = buffer.into_upload();
        for _ in 0..2 {
            // Each reader starts at the beginning.
            let mut read = Vec::new();
            upload
                .reader()
                .and_then(|mut r| r.read_to_end(&mut read))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(read, b"abc");
        }
        drop(upload);
        assert_eq!(
            IN_MEMORY_TAKEN.load(std::sync::atomic::Ordering::Acquire),
            0,
            "every share is given back"
        );
    }
}
