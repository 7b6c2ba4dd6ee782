//! An uploaded bundle, kept until it is applied or refused: a small one received in memory
//! within a budget shared by all uploads, a larger one spooled to a file in the data directory,
//! sealed with a key only this process holds.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use tokio::io::AsyncWriteExt;

use crate::App;
use crate::problem::Problem;

/// An uploaded bundle, kept until it is applied or refused: a small one in memory (see
/// [`UploadBuffer`]), a larger one in a spool file in the data directory (removed when
/// dropped).
#[derive(Debug)]
pub enum Upload {
    /// The bundle's bytes.
    Memory(Arc<Buffered>),
    /// The spool file the bundle was written to.
    File(Spooled),
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
            Upload::File(spooled) => UploadReader::File(Box::new(spooled.reader()?)),
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
    File(Box<Deciphered>),
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

/// An upload spooled to a file in the data directory (removed when dropped), sealed with a
/// random key of its own that only this process holds. A bundle may carry secrets in clear
/// (`--plaintext-secrets`, over TLS or loopback); what reaches the disk is their ciphertext,
/// and a spool file left behind by a crash cannot be read without the key that died with the
/// process.
///
/// The file is a run of records, each a chunk of 64 KiB of plaintext (`CHUNK`; the last one
/// shorter, possibly empty) sealed with ChaCha20-Poly1305 and followed by its tag; a record's
/// nonce is its index, and the last record is marked in its associated data, so a file cut
/// short or with records moved does not open. Records are opened one at a time, at any
/// position the bundle reader seeks to.
pub struct Spooled {
    file: tempfile::NamedTempFile,
    key: zeroize::Zeroizing<[u8; 32]>,
}

/// Plaintext bytes per record of a spool file.
const CHUNK: usize = 64 * 1024;
/// Bytes a record adds to its chunk (the tag).
const TAG: usize = 16;

impl std::fmt::Debug for Spooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spooled")
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

/// Writes an upload into its [`Spooled`] file, a record at a time.
pub struct SpoolWriter {
    file: tokio::fs::File,
    key: LessSafeKey,
    /// Index of the next record.
    index: u64,
    /// The plaintext of the next record, with room for its tag (it never grows, so no copy is
    /// left unwiped by a reallocation).
    pending: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A record's nonce: its index.
fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// A record's associated data: whether it is the file's last.
fn last(is_last: bool) -> Aad<[u8; 1]> {
    Aad::from([u8::from(is_last)])
}

impl Spooled {
    /// A new, empty spool file in the data directory, and the writer that fills it.
    pub async fn create(app: &App) -> Result<(Spooled, SpoolWriter), Problem> {
        let spool = app.dir.spool();
        let spooled = app
            .spawn_blocking(move || Spooled::new_in(&spool))
            .await
            .map_err(Problem::internal)??;
        let writer = spooled.writer()?;
        Ok((spooled, writer))
    }

    /// A new, empty spool file in `dir`, with a new key.
    fn new_in(dir: &std::path::Path) -> Result<Spooled, Problem> {
        let file = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| Problem::internal(format!("creating a spool file: {e}")))?;
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), key.as_mut())
            .map_err(|_| Problem::internal("no randomness for a spool file's key"))?;
        Ok(Spooled { file, key })
    }

    fn key(&self) -> LessSafeKey {
        // A 32-byte key is the algorithm's key length: this cannot fail.
        let key = UnboundKey::new(&CHACHA20_POLY1305, self.key.as_ref())
            .unwrap_or_else(|_| unreachable!("a ChaCha20-Poly1305 key is 32 bytes"));
        LessSafeKey::new(key)
    }

    /// A writer from the file's start.
    fn writer(&self) -> Result<SpoolWriter, Problem> {
        let file = self
            .file
            .reopen()
            .map_err(|e| Problem::internal(format!("opening a spool file: {e}")))?;
        Ok(SpoolWriter {
            file: tokio::fs::File::from_std(file),
            key: self.key(),
            index: 0,
            pending: zeroize::Zeroizing::new(Vec::with_capacity(CHUNK + TAG)),
        })
    }

    /// A reader of the file's plaintext from its start.
    fn reader(&self) -> std::io::Result<Deciphered> {
        let file = self.file.reopen()?;
        let stored = file.metadata()?.len();
        let record = (CHUNK + TAG) as u64;
        let records = stored.div_ceil(record).max(1);
        let len = stored
            .checked_sub(records * TAG as u64)
            .ok_or_else(|| spool_damaged("it is shorter than its tags"))?;
        Ok(Deciphered {
            file,
            key: self.key(),
            len,
            records,
            pos: 0,
            chunk: None,
            buf: zeroize::Zeroizing::new(Vec::with_capacity(CHUNK + TAG)),
        })
    }
}

impl SpoolWriter {
    /// Appends `data` to the file, sealing each chunk as it fills.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), Problem> {
        while !data.is_empty() {
            if self.pending.len() == CHUNK {
                // More follows, so this chunk is not the last.
                self.seal(false).await?;
            }
            let take = data.len().min(CHUNK - self.pending.len());
            let (now, rest) = data.split_at(take);
            self.pending.extend_from_slice(now);
            data = rest;
        }
        Ok(())
    }

    /// Seals what is pending as the last record; the file is complete.
    pub async fn finish(mut self) -> Result<(), Problem> {
        self.seal(true).await?;
        self.file
            .flush()
            .await
            .map_err(|e| Problem::internal(format!("writing a spool file: {e}")))
    }

    /// Seals the pending chunk as the next record and writes it.
    async fn seal(&mut self, is_last: bool) -> Result<(), Problem> {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.index), last(is_last), &mut self.pending)
            .map_err(|_| Problem::internal("sealing a spool file's record"))?;
        self.pending.extend_from_slice(tag.as_ref());
        self.index += 1;
        let written = self.file.write_all(&self.pending).await;
        self.pending.clear();
        written.map_err(|e| Problem::internal(format!("writing a spool file: {e}")))
    }
}

fn spool_damaged(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("a spool file does not open: {why}"),
    )
}

/// Reads a [`Spooled`] file's plaintext, opening the record that holds the position.
pub(super) struct Deciphered {
    file: std::fs::File,
    key: LessSafeKey,
    /// Plaintext length.
    len: u64,
    /// How many records the file holds.
    records: u64,
    /// Plaintext position.
    pos: u64,
    /// The index of the record opened in `buf`; its plaintext is `buf[..CHUNK]` at most.
    chunk: Option<u64>,
    buf: zeroize::Zeroizing<Vec<u8>>,
}

impl Deciphered {
    /// Opens record `index` into `buf`.
    fn open(&mut self, index: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.chunk = None;
        let record = (CHUNK + TAG) as u64;
        let start = index * record;
        let is_last = index + 1 == self.records;
        let size = if is_last {
            self.len + self.records * TAG as u64 - start
        } else {
            record
        };
        // At most `CHUNK + TAG`, so it fits a `usize`.
        let size = usize::try_from(size).map_err(|_| spool_damaged("a record is too large"))?;
        self.buf.resize(size, 0);
        self.file.read_exact_at(&mut self.buf, start)?;
        let plain = self
            .key
            .open_in_place(nonce(index), last(is_last), &mut self.buf)
            .map_err(|_| spool_damaged("a record fails its tag"))?
            .len();
        self.buf.truncate(plain);
        self.chunk = Some(index);
        Ok(())
    }
}

impl Read for Deciphered {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let index = self.pos / CHUNK as u64;
        if self.chunk != Some(index) {
            self.open(index)?;
        }
        // Less than `CHUNK`, so it fits a `usize`.
        let at = (self.pos % CHUNK as u64) as usize;
        let from = self.buf.get(at..).unwrap_or_default();
        let n = from.len().min(out.len());
        out[..n].copy_from_slice(&from[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Deciphered {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = to.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a seek before the start of a spool file",
            )
        })?;
        Ok(self.pos)
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

    #[tokio::test]
    async fn a_spool_file_holds_only_ciphertext_and_reads_back_from_any_position() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let canary: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("canary-{i:06}|").into_bytes())
            .collect();
        let spooled = Spooled::new_in(dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
        let mut writer = spooled.writer().unwrap_or_else(|e| panic!("{e:?}"));
        for part in canary.chunks(7_777) {
            writer.write(part).await.unwrap_or_else(|e| panic!("{e:?}"));
        }
        writer.finish().await.unwrap_or_else(|e| panic!("{e:?}"));

        let on_disk = std::fs::read(spooled.file.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            on_disk.len(),
            canary.len() + TAG * canary.len().div_ceil(CHUNK)
        );
        assert!(
            !on_disk.windows(7).any(|w| w == b"canary-"),
            "the upload reached the disk in clear"
        );
        let other = Spooled::new_in(dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_ne!(
            *other.key, *spooled.key,
            "each spool file has a key of its own"
        );

        let upload = Upload::File(spooled);
        let mut reader = upload.reader().unwrap_or_else(|e| panic!("{e}"));
        let mut all = Vec::new();
        reader
            .read_to_end(&mut all)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(all == canary, "the plaintext reads back whole");
        for pos in [
            SeekFrom::Start(1_000_003),
            SeekFrom::End(-22),
            SeekFrom::Current(-500_000),
            SeekFrom::Start(0),
        ] {
            let at = reader.seek(pos).unwrap_or_else(|e| panic!("{e}"));
            let mut part = vec![0u8; 20];
            reader
                .read_exact(&mut part)
                .unwrap_or_else(|e| panic!("{e}"));
            let at = usize::try_from(at).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(part, canary[at..at + 20], "read at {pos:?}");
        }
        assert!(
            reader.seek(SeekFrom::Current(-21)).is_err(),
            "before the start"
        );
        assert_eq!(
            reader.seek(SeekFrom::End(5)).ok(),
            Some(canary.len() as u64 + 5)
        );
        assert_eq!(reader.read(&mut [0u8; 8]).ok(), Some(0), "past the end");
    }

    #[tokio::test]
    async fn a_spool_file_changed_or_cut_short_does_not_open() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = vec![7u8; 3 * CHUNK];
        let spooled = Spooled::new_in(dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
        let mut writer = spooled.writer().unwrap_or_else(|e| panic!("{e:?}"));
        writer
            .write(&data)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        writer.finish().await.unwrap_or_else(|e| panic!("{e:?}"));
        let path = spooled.file.path().to_owned();
        let sealed = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let upload = Upload::File(spooled);
        let read_all = || -> std::io::Result<Vec<u8>> {
            let mut v = Vec::new();
            upload.reader()?.read_to_end(&mut v)?;
            Ok(v)
        };
        assert!(
            read_all().ok() == Some(data.clone()),
            "the file as written opens"
        );

        let mut flipped = sealed.clone();
        flipped[CHUNK + TAG + 5] ^= 1;
        std::fs::write(&path, &flipped).unwrap_or_else(|e| panic!("{e}"));
        assert!(read_all().is_err(), "a changed byte");

        // Cut after the second record: what is left looks whole, but its last record is not
        // marked the last.
        std::fs::write(&path, &sealed[..2 * (CHUNK + TAG)]).unwrap_or_else(|e| panic!("{e}"));
        assert!(read_all().is_err(), "a file cut at a record's end");

        let mut swapped = sealed[CHUNK + TAG..2 * (CHUNK + TAG)].to_vec();
        swapped.extend_from_slice(&sealed[..CHUNK + TAG]);
        swapped.extend_from_slice(&sealed[2 * (CHUNK + TAG)..]);
        std::fs::write(&path, &swapped).unwrap_or_else(|e| panic!("{e}"));
        assert!(read_all().is_err(), "records moved");
    }
}
