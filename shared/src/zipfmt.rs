//! The ZIP subset bundles use, written and read by hand so that every byte is accounted for.
//!
//! Writing: entries are Stored or Deflate, local headers carry the final CRC and sizes (patched
//! after streaming, never data descriptors), Unix regular-file attributes, and ZIP64 end records
//! only when the entry count or offsets need them.
//!
//! Reading is strict: one end record at the very end with no comment, a central directory that
//! ends where the end record starts, entries contiguous from offset 0, local headers equal to
//! central ones, only Stored and Deflate, no encryption, regular files only, names that match
//! [`check_entry_name`], no duplicates even after case folding, and declared sizes within
//! [`Limits`]. Data is streamed through [`EntryReader`], which inflates within the declared
//! size, CRCs and hashes while reading, and fails at the end if anything disagrees. Nothing is
//! ever extracted to a path.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};

use crate::bundle::error::BundleError;
use crate::bundle::manifest::EntryPath;

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const LOCAL_LEN: u64 = 30;
const CENTRAL_LEN: usize = 46;
const EOCD_LEN: u64 = 22;
const ZIP64_EOCD_LEN: u64 = 56;
const ZIP64_LOCATOR_LEN: u64 = 20;
/// Flag bits a reader accepts: deflate options (1, 2) and UTF-8 names (11).
const ALLOWED_FLAGS: u16 = 0x0806;
/// Unix file-type bits of a regular file.
const S_IFREG: u32 = 0o100000;
const S_IFMT: u32 = 0o170000;
/// Version made by: Unix, spec 2.0.
const MADE_BY: u16 = (3 << 8) | 20;
/// External attributes the writer puts: a regular file, mode 0644.
const FILE_ATTRS: u32 = (S_IFREG | 0o644) << 16;

/// Compression method of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No compression (0).
    Stored,
    /// Deflate (8).
    Deflate,
}

impl Method {
    fn code(self) -> u16 {
        match self {
            Method::Stored => 0,
            Method::Deflate => 8,
        }
    }
}

/// Limits on what a reader accepts (SPEC §4 defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest archive, in bytes.
    pub max_bundle_size: u64,
    /// Most entries, manifest and signature included.
    pub max_entries: u64,
    /// Largest sum of uncompressed sizes.
    pub max_total_uncompressed: u64,
    /// Largest uncompressed/compressed ratio of an entry over `ratio_threshold` bytes.
    pub max_ratio: u64,
    /// Entries at most this large are exempt from the ratio rule.
    pub ratio_threshold: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bundle_size: 1 << 30,
            max_entries: 100_000,
            max_total_uncompressed: 4 << 30,
            max_ratio: 200,
            ratio_threshold: 1 << 20,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

struct CentralRecord {
    name: String,
    method: Method,
    crc: u32,
    csize: u64,
    usize: u64,
    offset: u64,
}

/// What was written for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenEntry {
    /// Uncompressed size.
    pub size: u64,
    /// Compressed size.
    pub compressed: u64,
    /// SHA-256 of the uncompressed bytes.
    pub sha256: [u8; 32],
}

/// Writes an archive in the subset [`ZipReader`] accepts.
pub struct ZipWriter<W: Write + Seek> {
    w: W,
    pos: u64,
    records: Vec<CentralRecord>,
}

impl<W: Write + Seek> std::fmt::Debug for ZipWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ZipWriter({} entries, at {})",
            self.records.len(),
            self.pos
        )
    }
}

impl<W: Write + Seek> ZipWriter<W> {
    /// Starts an archive at the writer's current position, which must be its start.
    pub fn new(w: W) -> ZipWriter<W> {
        ZipWriter {
            w,
            pos: 0,
            records: Vec::new(),
        }
    }

    /// Streams `data` into a new entry named `name`, compressing with `method` at `level`
    /// (0–9), and returns its size and SHA-256. `progress` is called with uncompressed bytes read.
    pub fn add(
        &mut self,
        name: &str,
        method: Method,
        level: u32,
        data: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<WrittenEntry> {
        let offset = self.pos;
        let header_at = self.pos;
        self.write_local(name, method, 0, 0, 0)?;
        let data_start = self.pos;
        let mut hashing = HashingReader::new(data);
        let mut counter = CountingWriter {
            w: &mut self.w,
            n: 0,
        };
        let mut buf = vec![0u8; 64 * 1024];
        match method {
            Method::Stored => loop {
                let n = hashing.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                counter.write_all(&buf[..n])?;
                progress(n as u64);
            },
            Method::Deflate => {
                let mut enc = flate2::write::DeflateEncoder::new(
                    &mut counter,
                    flate2::Compression::new(level),
                );
                loop {
                    let n = hashing.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    enc.write_all(&buf[..n])?;
                    progress(n as u64);
                }
                enc.finish()?;
            }
        }
        let csize = counter.n;
        let (usize, crc, sha256) = hashing.finish();
        if usize >= u64::from(u32::MAX) || csize >= u64::from(u32::MAX) {
            return Err(io::Error::other(format!(
                "entry {name} is 4 GiB or larger, which bundles do not support"
            )));
        }
        self.pos = data_start + csize;
        self.w.seek(SeekFrom::Start(header_at + 14))?;
        self.w.write_all(&crc.to_le_bytes())?;
        self.w.write_all(&(csize as u32).to_le_bytes())?;
        self.w.write_all(&(usize as u32).to_le_bytes())?;
        self.w.seek(SeekFrom::Start(self.pos))?;
        self.records.push(CentralRecord {
            name: name.to_owned(),
            method,
            crc,
            csize,
            usize,
            offset,
        });
        Ok(WrittenEntry {
            size: usize,
            compressed: csize,
            sha256,
        })
    }

    /// Appends an entry compressed ahead by [`Compressor::compress`].
    pub fn add_compressed(&mut self, name: &str, c: &mut Compressed) -> io::Result<()> {
        if c.size >= u64::from(u32::MAX) || c.compressed >= u64::from(u32::MAX) {
            return Err(io::Error::other(format!(
                "entry {name} is 4 GiB or larger, which bundles do not support"
            )));
        }
        let offset = self.pos;
        self.write_local(name, c.method, c.crc, c.compressed as u32, c.size as u32)?;
        let size = c.size;
        let (method, crc, compressed) = (c.method, c.crc, c.compressed);
        let n = io::copy(&mut c.data.reader()?.take(compressed), &mut self.w)?;
        if n != compressed {
            return Err(io::Error::other(format!(
                "entry {name}: compressed data ended early"
            )));
        }
        self.pos += n;
        self.records.push(CentralRecord {
            name: name.to_owned(),
            method,
            crc,
            csize: compressed,
            usize: size,
            offset,
        });
        Ok(())
    }

    fn write_local(
        &mut self,
        name: &str,
        method: Method,
        crc: u32,
        csize: u32,
        usize: u32,
    ) -> io::Result<()> {
        let mut h = Vec::with_capacity(30 + name.len());
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
        h.extend_from_slice(&0x0800u16.to_le_bytes()); // UTF-8 names
        h.extend_from_slice(&method.code().to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // time 00:00
        h.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01: archives are reproducible
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&csize.to_le_bytes());
        h.extend_from_slice(&usize.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        self.w.write_all(&h)?;
        self.pos += h.len() as u64;
        Ok(())
    }

    /// Writes the central directory and end records, and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let cd_start = self.pos;
        let mut cd = Vec::new();
        for r in &self.records {
            let big_offset = r.offset >= u64::from(u32::MAX);
            cd.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            cd.extend_from_slice(&MADE_BY.to_le_bytes());
            cd.extend_from_slice(&20u16.to_le_bytes());
            cd.extend_from_slice(&0x0800u16.to_le_bytes());
            cd.extend_from_slice(&r.method.code().to_le_bytes());
            cd.extend_from_slice(&0u16.to_le_bytes());
            cd.extend_from_slice(&0x21u16.to_le_bytes());
            cd.extend_from_slice(&r.crc.to_le_bytes());
            cd.extend_from_slice(&(r.csize as u32).to_le_bytes());
            cd.extend_from_slice(&(r.usize as u32).to_le_bytes());
            cd.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
            cd.extend_from_slice(&(if big_offset { 12u16 } else { 0 }).to_le_bytes());
            cd.extend_from_slice(&0u16.to_le_bytes()); // comment
            cd.extend_from_slice(&0u16.to_le_bytes()); // disk
            cd.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            cd.extend_from_slice(&FILE_ATTRS.to_le_bytes());
            cd.extend_from_slice(
                &(if big_offset {
                    u32::MAX
                } else {
                    r.offset as u32
                })
                .to_le_bytes(),
            );
            cd.extend_from_slice(r.name.as_bytes());
            if big_offset {
                cd.extend_from_slice(&1u16.to_le_bytes());
                cd.extend_from_slice(&8u16.to_le_bytes());
                cd.extend_from_slice(&r.offset.to_le_bytes());
            }
            if cd.len() >= 1 << 20 {
                self.w.write_all(&cd)?;
                self.pos += cd.len() as u64;
                cd.clear();
            }
        }
        self.w.write_all(&cd)?;
        self.pos += cd.len() as u64;
        let cd_size = self.pos - cd_start;
        let count = self.records.len() as u64;
        let zip64 =
            count >= 0xFFFF || cd_start >= u64::from(u32::MAX) || cd_size >= u64::from(u32::MAX);
        let mut end = Vec::new();
        if zip64 {
            let z64_at = self.pos;
            end.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
            end.extend_from_slice(&44u64.to_le_bytes());
            end.extend_from_slice(&((3u16 << 8) | 45).to_le_bytes());
            end.extend_from_slice(&45u16.to_le_bytes());
            end.extend_from_slice(&0u32.to_le_bytes());
            end.extend_from_slice(&0u32.to_le_bytes());
            end.extend_from_slice(&count.to_le_bytes());
            end.extend_from_slice(&count.to_le_bytes());
            end.extend_from_slice(&cd_size.to_le_bytes());
            end.extend_from_slice(&cd_start.to_le_bytes());
            end.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
            end.extend_from_slice(&0u32.to_le_bytes());
            end.extend_from_slice(&z64_at.to_le_bytes());
            end.extend_from_slice(&1u32.to_le_bytes());
        }
        let c16 = if zip64 { 0xFFFF } else { count as u16 };
        end.extend_from_slice(&EOCD_SIG.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&c16.to_le_bytes());
        end.extend_from_slice(&c16.to_le_bytes());
        end.extend_from_slice(&(if zip64 { u32::MAX } else { cd_size as u32 }).to_le_bytes());
        end.extend_from_slice(&(if zip64 { u32::MAX } else { cd_start as u32 }).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.w.write_all(&end)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// An entry compressed ahead of writing, so that entries can be compressed on all cores.
#[derive(Debug)]
pub struct Compressed {
    /// Stored when deflating did not make it smaller.
    pub method: Method,
    /// CRC-32 of the uncompressed data.
    pub crc: u32,
    /// Uncompressed size.
    pub size: u64,
    /// Compressed size.
    pub compressed: u64,
    /// SHA-256 of the uncompressed data.
    pub sha256: [u8; 32],
    /// The compressed bytes.
    pub data: Spool,
}

/// Bytes kept in memory up to a threshold, then in an anonymous temporary file, so that memory
/// stays flat however large an entry is.
#[derive(Debug)]
pub enum Spool {
    /// Small data.
    Memory(Vec<u8>),
    /// Large data, rewound to its start.
    File(std::fs::File),
}

impl Spool {
    /// A reader over the spooled bytes, from the start.
    pub fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        match self {
            Spool::Memory(v) => Ok(Box::new(&v[..])),
            Spool::File(f) => {
                f.seek(SeekFrom::Start(0))?;
                Ok(Box::new(BufReader::with_capacity(256 * 1024, f)))
            }
        }
    }
}

/// Spools up to `threshold` bytes in memory, the rest in a temporary file.
struct SpoolWriter {
    mem: Vec<u8>,
    file: Option<io::BufWriter<std::fs::File>>,
    threshold: usize,
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.mem.len() + buf.len() > self.threshold {
            let mut f = io::BufWriter::with_capacity(256 * 1024, tempfile::tempfile()?);
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write_all(buf)?,
            None => self.mem.extend_from_slice(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SpoolWriter {
    fn finish(self) -> io::Result<Spool> {
        match self.file {
            Some(f) => Ok(Spool::File(
                f.into_inner().map_err(io::IntoInnerError::into_error)?,
            )),
            None => Ok(Spool::Memory(self.mem)),
        }
    }
}

/// Size of the read buffer a [`Compressor`] fills from its input.
const READ_BUF: usize = 64 * 1024;
/// Size of the buffer deflate output passes through on its way to the spool.
const DEFLATE_OUT_BUF: usize = 32 * 1024;

/// Compresses entries one after another for [`ZipWriter::add_compressed`], reusing one deflate
/// state and its buffers: setting up deflate state costs more than deflating a small file, so a
/// worker thread makes one `Compressor` and passes every entry it takes through it.
pub struct Compressor {
    deflate: flate2::Compress,
    /// What is read from the input, in chunks.
    buf: Box<[u8]>,
    /// Deflate output, before it goes to the spool.
    out: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compressor({} bytes in)", self.deflate.total_in())
    }
}

impl Drop for Compressor {
    /// Wipes the buffers: a credential record written with plaintext secrets passed through
    /// them. (Deflate's own window is out of reach.)
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf[..]);
        zeroize::Zeroize::zeroize(&mut self.out);
    }
}

impl Compressor {
    /// A compressor that deflates at `level` (0–9).
    pub fn new(level: u32) -> Compressor {
        Compressor {
            deflate: flate2::Compress::new(flate2::Compression::new(level), false),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            out: Vec::with_capacity(DEFLATE_OUT_BUF),
        }
    }

    /// Deflates `data`, hashing while reading; keeps it Stored when deflate does not shrink it.
    /// Compressed data over `spool_threshold` bytes goes to a temporary file. `progress` is
    /// called with uncompressed bytes read.
    pub fn compress(
        &mut self,
        data: &mut dyn Read,
        spool_threshold: usize,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<Compressed> {
        // The same as a fresh deflate state, without allocating one (flate2 documents `reset` so).
        self.deflate.reset();
        let mut hashing = HashingReader::new(data);
        let mut deflated = SpoolWriter {
            mem: Vec::new(),
            file: None,
            threshold: spool_threshold,
        };
        let mut stored = SpoolWriter {
            mem: Vec::new(),
            file: None,
            threshold: spool_threshold,
        };
        // Keep a stored copy only while it is small: a large incompressible entry is rare, and is
        // then written deflated (never larger than stored by more than a few bytes per 16 KiB).
        let mut keep_stored = true;
        loop {
            let n = hashing.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            let chunk = &self.buf[..n];
            deflate_into(
                &mut self.deflate,
                &mut self.out,
                chunk,
                flate2::FlushCompress::None,
                &mut deflated,
            )?;
            if keep_stored {
                if stored.mem.len() + n > spool_threshold {
                    keep_stored = false;
                    stored.mem = Vec::new();
                } else {
                    stored.mem.extend_from_slice(chunk);
                }
            }
            progress(n as u64);
        }
        deflate_into(
            &mut self.deflate,
            &mut self.out,
            &[],
            flate2::FlushCompress::Finish,
            &mut deflated,
        )?;
        let (size, crc, sha256) = hashing.finish();
        let compressed_len = deflated
            .file
            .as_ref()
            .map_or(deflated.mem.len() as u64, |_| u64::MAX);
        let (method, data, compressed) = if keep_stored && compressed_len >= size {
            (Method::Stored, stored.finish()?, size)
        } else {
            let data = deflated.finish()?;
            let len = match &data {
                Spool::Memory(v) => v.len() as u64,
                Spool::File(f) => f.metadata()?.len(),
            };
            (Method::Deflate, data, len)
        };
        Ok(Compressed {
            method,
            crc,
            size,
            compressed,
            sha256,
            data,
        })
    }
}

/// Feeds `input` to `deflate` and writes what comes out to `sink` through `out`; with
/// [`flate2::FlushCompress::Finish`], until the stream has ended.
fn deflate_into(
    deflate: &mut flate2::Compress,
    out: &mut Vec<u8>,
    mut input: &[u8],
    flush: flate2::FlushCompress,
    sink: &mut SpoolWriter,
) -> io::Result<()> {
    let finish = flush == flate2::FlushCompress::Finish;
    while finish || !input.is_empty() {
        out.clear();
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(input, out, flush)
            .map_err(io::Error::other)?;
        // At most `input.len()`, which is a `usize`.
        let consumed = (deflate.total_in() - before) as usize;
        input = &input[consumed..];
        sink.write_all(out)?;
        if status == flate2::Status::StreamEnd {
            break;
        }
        if consumed == 0 && out.is_empty() {
            // With an empty output buffer of DEFLATE_OUT_BUF bytes deflate always moves on;
            // guard against a loop anyway.
            return Err(io::Error::other("deflate made no progress"));
        }
    }
    Ok(())
}

struct CountingWriter<'a, W: Write> {
    w: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Counts, CRCs and SHA-256-hashes what passes through.
pub struct HashingReader<R> {
    inner: R,
    n: u64,
    crc: crc32fast::Hasher,
    sha: ring::digest::Context,
}

impl<R> std::fmt::Debug for HashingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HashingReader({} bytes)", self.n)
    }
}

impl<R: Read> HashingReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            n: 0,
            crc: crc32fast::Hasher::new(),
            sha: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// Bytes read, CRC-32 and SHA-256 of them.
    pub fn finish(self) -> (u64, u32, [u8; 32]) {
        let mut sha = [0u8; 32];
        sha.copy_from_slice(self.sha.finish().as_ref());
        (self.n, self.crc.finalize(), sha)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        self.crc.update(&buf[..n]);
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// One entry of the central directory, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name, checked by [`check_entry_name`].
    pub name: String,
    /// Stored or Deflate.
    pub method: Method,
    /// Flags, to compare with the local header.
    flags: u16,
    /// Version needed, to compare with the local header.
    version_needed: u16,
    /// CRC-32 of the uncompressed data.
    pub crc: u32,
    /// Compressed size.
    pub compressed_size: u64,
    /// Declared uncompressed size.
    pub size: u64,
    /// Offset of its local header.
    offset: u64,
    /// DOS time and date, to compare with the local header.
    time_date: u32,
}

/// A strictly checked archive, read entry by entry in order.
pub struct ZipReader<R: Read + Seek> {
    r: BufReader<R>,
    entries: Vec<Entry>,
    cd_offset: u64,
    /// Index of the next entry to read.
    next: usize,
    /// Where the next local header must start.
    pos: u64,
}

impl<R: Read + Seek> std::fmt::Debug for ZipReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ZipReader({} entries, next {})",
            self.entries.len(),
            self.next
        )
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn find_sig(hay: &[u8], sig: u32) -> Option<usize> {
    hay.windows(4).rposition(|w| w == sig.to_le_bytes())
}

/// Checks an entry name: 1–1024 bytes; no control characters, backslash, colon; not absolute;
/// no empty, `.` or `..` segment (so no trailing `/`); and within the bundle layout:
/// `manifest.json`, `manifest.sig`, or a path [`EntryPath::parse`] accepts.
pub fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 1024 {
        return Err("is empty or longer than 1024 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if name.contains('\\') {
        return Err("contains a backslash");
    }
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    if name.contains(':') {
        return Err("contains a colon (drive letter or stream)");
    }
    if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("has an empty, `.` or `..` segment");
    }
    if name != "manifest.json" && name != "manifest.sig" && EntryPath::parse(name).is_none() {
        return Err(
            "is outside the bundle layout (manifest.json, manifest.sig, mappings/<name>/mapping.json, mappings/<name>/files/<path>, credentials/<name>.json)",
        );
    }
    Ok(())
}

impl<R: Read + Seek> ZipReader<R> {
    /// Reads and checks the end records and the central directory.
    pub fn open(mut r: R, limits: &Limits) -> Result<ZipReader<R>, BundleError> {
        let len = r.seek(SeekFrom::End(0))?;
        if len > limits.max_bundle_size {
            return Err(BundleError::SizeLimit(format!(
                "the bundle is {len} bytes; the limit is {}",
                limits.max_bundle_size
            )));
        }
        if len < EOCD_LEN {
            return Err(BundleError::NotAZip("too short to be a ZIP archive".into()));
        }
        let tail_len = len.min(EOCD_LEN + 0xFFFF + ZIP64_LOCATOR_LEN + ZIP64_EOCD_LEN);
        let tail_start = len - tail_len;
        r.seek(SeekFrom::Start(tail_start))?;
        let mut tail = vec![0u8; tail_len as usize];
        r.read_exact(&mut tail)?;
        let Some(at) = find_sig(&tail, EOCD_SIG).filter(|&at| at + EOCD_LEN as usize <= tail.len())
        else {
            return Err(BundleError::NotAZip(
                "no end of central directory record".into(),
            ));
        };
        let eocd = &tail[at..at + EOCD_LEN as usize];
        let eocd_pos = tail_start + at as u64;
        let comment_len = u64::from(u16_at(eocd, 20));
        if comment_len > 0 {
            return Err(BundleError::ArchiveComment(
                "the archive has a comment".into(),
            ));
        }
        if eocd_pos + EOCD_LEN != len {
            return Err(BundleError::TrailingData(len - eocd_pos - EOCD_LEN));
        }
        if u16_at(eocd, 4) != 0 || u16_at(eocd, 6) != 0 || u16_at(eocd, 8) != u16_at(eocd, 10) {
            return Err(BundleError::NotAZip(
                "multi-disk archives are not supported".into(),
            ));
        }
        let mut count = u64::from(u16_at(eocd, 10));
        let mut cd_size = u64::from(u32_at(eocd, 12));
        let mut cd_offset = u64::from(u32_at(eocd, 16));
        // Where the central directory must end: the end record, or the ZIP64 end record.
        let mut cd_end = eocd_pos;
        let has_locator = at >= ZIP64_LOCATOR_LEN as usize
            && u32_at(&tail, at - ZIP64_LOCATOR_LEN as usize) == ZIP64_LOCATOR_SIG;
        if has_locator {
            let loc = &tail[at - ZIP64_LOCATOR_LEN as usize..at];
            let z64_pos = u64_at(loc, 8);
            let expected = eocd_pos.checked_sub(ZIP64_LOCATOR_LEN + ZIP64_EOCD_LEN);
            if Some(z64_pos) != expected || u32_at(loc, 4) != 0 || u32_at(loc, 16) != 1 {
                return Err(BundleError::Zip64Invalid(
                    "the ZIP64 locator does not point at a ZIP64 end record just before it".into(),
                ));
            }
            let rel = (z64_pos - tail_start) as usize;
            let z = tail
                .get(rel..rel + ZIP64_EOCD_LEN as usize)
                .ok_or_else(|| BundleError::Zip64Invalid("ZIP64 end record out of range".into()))?;
            if u32_at(z, 0) != ZIP64_EOCD_SIG
                || u64_at(z, 4) != 44
                || u32_at(z, 16) != 0
                || u32_at(z, 20) != 0
                || u64_at(z, 24) != u64_at(z, 32)
            {
                return Err(BundleError::Zip64Invalid(
                    "malformed ZIP64 end record".into(),
                ));
            }
            let (c, s, o) = (u64_at(z, 32), u64_at(z, 40), u64_at(z, 48));
            let agrees = |small: u64, big: u64, max: u64| small == max || small == big;
            if !agrees(count, c, 0xFFFF)
                || !agrees(cd_size, s, 0xFFFF_FFFF)
                || !agrees(cd_offset, o, 0xFFFF_FFFF)
            {
                return Err(BundleError::Zip64Invalid(
                    "the ZIP64 end record disagrees with the end record".into(),
                ));
            }
            (count, cd_size, cd_offset) = (c, s, o);
            cd_end = z64_pos;
        } else if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            return Err(BundleError::Zip64Invalid(
                "the end record asks for ZIP64 values but there is no ZIP64 locator".into(),
            ));
        }
        if count > limits.max_entries {
            return Err(BundleError::TooManyEntries(count, limits.max_entries));
        }
        if count < 2 {
            return Err(BundleError::EntryOrder(
                "a bundle starts with manifest.json and manifest.sig".into(),
            ));
        }
        let cd_stop = cd_offset.checked_add(cd_size).filter(|&e| e <= cd_end);
        match cd_stop {
            Some(stop) if stop == cd_end => {}
            Some(stop) => {
                // Something sits between the central directory and the end record(s).
                r.seek(SeekFrom::Start(stop))?;
                let mut gap = vec![0u8; (cd_end - stop).min(1 << 16) as usize];
                r.read_exact(&mut gap)?;
                if find_sig(&gap, EOCD_SIG).is_some() {
                    return Err(BundleError::MultipleEndRecords);
                }
                let shift = cd_end - stop;
                r.seek(SeekFrom::Start(cd_offset + shift))?;
                let mut sig = [0u8; 4];
                if r.read_exact(&mut sig).is_ok() && u32::from_le_bytes(sig) == CENTRAL_SIG {
                    return Err(BundleError::PrependedData(shift));
                }
                return Err(BundleError::EntryLayout(format!(
                    "{shift} unexplained bytes before the end of central directory record"
                )));
            }
            None => {
                return Err(BundleError::NotAZip(
                    "the central directory lies outside the archive".into(),
                ));
            }
        }
        if cd_size < count * CENTRAL_LEN as u64 {
            return Err(BundleError::NotAZip(
                "the central directory is too small for its entry count".into(),
            ));
        }
        r.seek(SeekFrom::Start(cd_offset))?;
        let mut br = BufReader::new(r.by_ref().take(cd_size));
        let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
        let mut folded = HashSet::new();
        let mut total: u64 = 0;
        for i in 0..count {
            let e = read_central(&mut br, i, limits)?;
            if !folded.insert(e.name.to_lowercase()) {
                return Err(BundleError::DuplicateEntry(e.name));
            }
            total = total.saturating_add(e.size);
            if total > limits.max_total_uncompressed {
                return Err(BundleError::SizeLimit(format!(
                    "the entries' uncompressed sizes add up to more than the limit of {} bytes",
                    limits.max_total_uncompressed
                )));
            }
            entries.push(e);
        }
        let mut rest = [0u8; 1];
        if br.read(&mut rest)? != 0 {
            return Err(BundleError::EntryLayout(
                "the central directory holds more than its entry count".into(),
            ));
        }
        drop(br);
        if let Some(first) = entries.first().filter(|e| e.offset != 0) {
            return Err(BundleError::PrependedData(first.offset));
        }
        // Local headers have no extra field and repeat the central name, so each entry's
        // extent is known here: entries must tile the archive from 0 to the central directory.
        let mut expected = 0u64;
        for e in &entries {
            if e.offset != expected {
                return Err(BundleError::EntryLayout(format!(
                    "entry {} starts at {} but the previous entry ends at {} (overlapping or gapped entries)",
                    e.name, e.offset, expected
                )));
            }
            expected = e.offset + LOCAL_LEN + e.name.len() as u64 + e.compressed_size;
        }
        if expected != cd_offset {
            return Err(BundleError::EntryLayout(format!(
                "the last entry ends at {expected} but the central directory starts at {cd_offset}"
            )));
        }
        r.seek(SeekFrom::Start(0))?;
        Ok(ZipReader {
            r: BufReader::with_capacity(256 * 1024, r),
            entries,
            cd_offset,
            next: 0,
            pos: 0,
        })
    }

    /// The entries, in central-directory order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Opens the next entry (they are read strictly in order), after checking its local header.
    pub fn next_entry(&mut self) -> Result<Option<EntryReader<'_, R>>, BundleError> {
        let Some(e) = self.entries.get(self.next).cloned() else {
            return Ok(None);
        };
        if e.offset != self.pos {
            return Err(BundleError::EntryLayout(format!(
                "entry {} starts at {} but the previous entry ends at {} (overlapping or gapped entries)",
                e.name, e.offset, self.pos
            )));
        }
        let mut h = [0u8; LOCAL_LEN as usize];
        self.r
            .read_exact(&mut h)
            .map_err(|_| BundleError::HeaderMismatch(e.name.clone(), "local header truncated"))?;
        if u32_at(&h, 0) != LOCAL_SIG {
            return Err(BundleError::HeaderMismatch(
                e.name.clone(),
                "no local header at the central directory's offset",
            ));
        }
        let checks: [(bool, &'static str); 7] = [
            (u16_at(&h, 4) == e.version_needed, "version needed"),
            (u16_at(&h, 6) == e.flags, "flags"),
            (u16_at(&h, 8) == e.method.code(), "compression method"),
            (u32_at(&h, 10) == e.time_date, "modification time"),
            (u32_at(&h, 14) == e.crc, "CRC-32"),
            (
                u64::from(u32_at(&h, 18)) == e.compressed_size,
                "compressed size",
            ),
            (u64::from(u32_at(&h, 22)) == e.size, "uncompressed size"),
        ];
        if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(BundleError::HeaderMismatch(e.name.clone(), what));
        }
        let name_len = u64::from(u16_at(&h, 26));
        let extra_len = u64::from(u16_at(&h, 28));
        if extra_len != 0 {
            // Canonical form: a local extra field's bytes would be covered by nothing.
            return Err(BundleError::HeaderMismatch(
                e.name.clone(),
                "local extra field (bundles have none)",
            ));
        }
        let mut name = vec![0u8; name_len as usize];
        self.r
            .read_exact(&mut name)
            .map_err(|_| BundleError::HeaderMismatch(e.name.clone(), "local header truncated"))?;
        if name != e.name.as_bytes() {
            return Err(BundleError::HeaderMismatch(e.name.clone(), "name"));
        }
        io::copy(&mut self.r.by_ref().take(extra_len), &mut io::sink())?;
        let data_start = self.pos + LOCAL_LEN + name_len + extra_len;
        let data_end = data_start + e.compressed_size;
        let following = self
            .entries
            .get(self.next + 1)
            .map_or(self.cd_offset, |n| n.offset);
        if data_end != following {
            return Err(BundleError::EntryLayout(format!(
                "entry {} ends at {} but the next record starts at {} (overlapping or gapped entries)",
                e.name, data_end, following
            )));
        }
        self.next += 1;
        self.pos = data_end;
        let raw = (&mut self.r).take(e.compressed_size);
        let inner = match e.method {
            Method::Stored => Inner::Stored(raw),
            Method::Deflate => Inner::Deflate(flate2::bufread::DeflateDecoder::new(raw)),
        };
        Ok(Some(EntryReader {
            hashing: HashingReader::new(inner),
            entry: e,
            done: false,
        }))
    }
}

fn read_central(br: &mut impl BufRead, i: u64, limits: &Limits) -> Result<Entry, BundleError> {
    let mut h = [0u8; CENTRAL_LEN];
    br.read_exact(&mut h)
        .map_err(|_| BundleError::NotAZip(format!("central directory record {i} is truncated")))?;
    if u32_at(&h, 0) != CENTRAL_SIG {
        return Err(BundleError::NotAZip(format!(
            "central directory record {i} has a bad signature"
        )));
    }
    let (name_len, extra_len, comment_len) = (u16_at(&h, 28), u16_at(&h, 30), u16_at(&h, 32));
    let mut raw_name = vec![0u8; usize::from(name_len)];
    let mut extra = vec![0u8; usize::from(extra_len)];
    br.read_exact(&mut raw_name)
        .map_err(|_| BundleError::NotAZip(format!("central directory record {i} is truncated")))?;
    br.read_exact(&mut extra)
        .map_err(|_| BundleError::NotAZip(format!("central directory record {i} is truncated")))?;
    let name = String::from_utf8(raw_name).map_err(|e| {
        BundleError::BadEntryName(
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
            "is not UTF-8",
        )
    })?;
    check_entry_name(&name).map_err(|why| BundleError::BadEntryName(name.clone(), why))?;
    if comment_len != 0 {
        return Err(BundleError::ArchiveComment(format!(
            "entry {name} has a comment"
        )));
    }
    let flags = u16_at(&h, 8);
    if flags & 0x2041 != 0 {
        return Err(BundleError::EncryptedEntry(name));
    }
    if flags & !ALLOWED_FLAGS != 0 {
        return Err(BundleError::UnsupportedFeature(
            name,
            format!(
                "general purpose flags {flags:#06x} (data descriptors, patched data and the like are not accepted)"
            ),
        ));
    }
    let method = match u16_at(&h, 10) {
        0 => Method::Stored,
        8 => Method::Deflate,
        m => return Err(BundleError::UnsupportedCompression(name, m)),
    };
    let made_by_os = u16_at(&h, 4) >> 8;
    let attrs = u32_at(&h, 38);
    let regular = match made_by_os {
        // Unix: the high 16 bits are st_mode; no type bits, or a regular file's.
        3 => matches!((attrs >> 16) & S_IFMT, 0 | S_IFREG),
        // Others (MS-DOS, NTFS…): the low byte holds DOS attributes; 0x10 is a directory.
        _ => attrs & 0x10 == 0 && (attrs >> 16) & S_IFMT == 0,
    };
    if !regular {
        return Err(BundleError::NotRegularFile(name));
    }
    if u16_at(&h, 34) != 0 {
        return Err(BundleError::NotAZip(format!(
            "entry {name} claims another disk"
        )));
    }
    // Canonical form (docs/FORMAT.md): fields that nothing else covers have one permitted
    // value, so that no byte of an archive can change unnoticed.
    if u16_at(&h, 4) != MADE_BY {
        return Err(BundleError::UnsupportedFeature(
            name,
            format!("version made by must be {MADE_BY:#06x} (Unix, 2.0)"),
        ));
    }
    if u16_at(&h, 36) != 0 {
        return Err(BundleError::UnsupportedFeature(
            name,
            "internal attributes must be 0".into(),
        ));
    }
    if attrs != 0 && attrs != FILE_ATTRS {
        return Err(BundleError::UnsupportedFeature(
            name,
            format!(
                "external attributes must be 0 or {FILE_ATTRS:#010x} (a regular file, mode 0644)"
            ),
        ));
    }
    let crc = u32_at(&h, 16);
    let csize = u64::from(u32_at(&h, 20));
    let size = u64::from(u32_at(&h, 24));
    let mut offset = u64::from(u32_at(&h, 42));
    if size == 0xFFFF_FFFF || csize == 0xFFFF_FFFF {
        return Err(BundleError::SizeLimit(format!(
            "entry {name} uses ZIP64 sizes; entries of 4 GiB or more are not accepted"
        )));
    }
    if offset == 0xFFFF_FFFF {
        offset = zip64_offset(&extra).ok_or_else(|| {
            BundleError::Zip64Invalid(format!("entry {name} lacks its ZIP64 offset"))
        })?;
    } else if !extra.is_empty() {
        return Err(BundleError::UnsupportedFeature(
            name,
            "extra fields are only allowed for a ZIP64 offset".into(),
        ));
    }
    if method == Method::Stored && csize != size {
        return Err(BundleError::HeaderMismatch(
            name,
            "stored entry with different compressed and uncompressed sizes",
        ));
    }
    if size > limits.ratio_threshold && (csize == 0 || size / csize.max(1) > limits.max_ratio) {
        return Err(BundleError::CompressionRatio(name, size, csize));
    }
    Ok(Entry {
        name,
        method,
        flags,
        version_needed: u16_at(&h, 6),
        crc,
        compressed_size: csize,
        size,
        offset,
        time_date: u32_at(&h, 12),
    })
}

fn zip64_offset(extra: &[u8]) -> Option<u64> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at), usize::from(u16_at(extra, at + 2)));
        let body = extra.get(at + 4..at + 4 + len)?;
        if id == 1 {
            // Only the offset is 0xFFFFFFFF (sizes were refused above), so it comes first.
            return (len == 8).then(|| u64_at(body, 0));
        }
        at += 4 + len;
    }
    None
}

enum Inner<'a, R: Read> {
    Stored(io::Take<&'a mut BufReader<R>>),
    Deflate(flate2::bufread::DeflateDecoder<io::Take<&'a mut BufReader<R>>>),
}

impl<R: Read> Read for Inner<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Inner::Stored(r) => r.read(buf),
            Inner::Deflate(r) => r.read(buf),
        }
    }
}

/// The data of one entry, inflated, bounded by its declared size, and checked at its end.
///
/// Reading past the declared size, a short stream, compressed bytes left over, or a CRC
/// mismatch all surface as an `io::Error` wrapping a [`BundleError`] *before* the final `Ok(0)`,
/// so a consumer never sees a clean end of an entry that is not what its headers say.
pub struct EntryReader<'a, R: Read> {
    hashing: HashingReader<Inner<'a, R>>,
    entry: Entry,
    done: bool,
}

impl<R: Read> std::fmt::Debug for EntryReader<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntryReader({})", self.entry.name)
    }
}

impl<'a, R: Read> EntryReader<'a, R> {
    /// The entry being read.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Reads to the end and returns (size, SHA-256), checking everything [`EntryReader`] checks.
    pub fn finish(mut self) -> Result<(u64, [u8; 32]), BundleError> {
        io::copy(&mut self, &mut io::sink()).map_err(BundleError::from_io)?;
        Ok(self.digest())
    }

    /// Size and SHA-256 of what was read; meaningful once the reader returned `Ok(0)`.
    pub fn digest(self) -> (u64, [u8; 32]) {
        let (n, _, sha) = self.hashing.finish();
        (n, sha)
    }

    fn check_end(&mut self) -> Result<(), BundleError> {
        let name = &self.entry.name;
        if self.hashing.n != self.entry.size {
            return Err(BundleError::SizeMismatch(
                name.clone(),
                format!(
                    "inflates to {} bytes but its headers say {}",
                    self.hashing.n, self.entry.size
                ),
            ));
        }
        let left = match &mut self.hashing.inner {
            Inner::Stored(t) => t.limit(),
            Inner::Deflate(d) => d.get_ref().limit(),
        };
        if left != 0 {
            return Err(BundleError::SizeMismatch(
                name.clone(),
                format!("{left} compressed bytes follow the end of its deflate stream"),
            ));
        }
        let crc = self.hashing.crc.clone().finalize();
        if crc != self.entry.crc {
            return Err(BundleError::CrcMismatch(name.clone()));
        }
        Ok(())
    }
}

impl<R: Read> Read for EntryReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        // Never produce more than the declared size (+1 to notice a lie).
        let room = (self.entry.size + 1 - self.hashing.n).min(buf.len() as u64) as usize;
        let n = self.hashing.read(&mut buf[..room]).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput || e.kind() == io::ErrorKind::InvalidData {
                BundleError::SizeMismatch(
                    self.entry.name.clone(),
                    format!("its deflate data is corrupt ({e})"),
                )
                .into_io()
            } else {
                e
            }
        })?;
        if self.hashing.n > self.entry.size {
            return Err(BundleError::SizeMismatch(
                self.entry.name.clone(),
                format!(
                    "inflates to more than the {} bytes its headers say",
                    self.entry.size
                ),
            )
            .into_io());
        }
        if n == 0 {
            self.check_end().map_err(BundleError::into_io)?;
            self.done = true;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What a fresh `flate2::write::DeflateEncoder` writes for `data` fed in 64 KiB chunks, as
    /// `compress` did before compressors were reused.
    fn deflate_fresh(data: &[u8], level: u32) -> Vec<u8> {
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
        for chunk in data.chunks(64 * 1024) {
            enc.write_all(chunk).unwrap();
        }
        enc.finish().unwrap()
    }

    fn bytes(c: &mut Compressed) -> Vec<u8> {
        let mut v = Vec::new();
        c.data.reader().unwrap().read_to_end(&mut v).unwrap();
        v
    }

    /// Deterministic bytes that deflate shrinks, with a seed-dependent mix of repeats.
    fn text(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let words: [&[u8]; 5] = [b"<row id=", b"</row>\n", b"orders", b"42", b" "];
        let mut v = Vec::with_capacity(len + 16);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.extend_from_slice(words[(x % 5) as usize]);
            if x.is_multiple_of(7) {
                v.push((x >> 8) as u8);
            }
        }
        v.truncate(len);
        v
    }

    #[test]
    fn a_reused_compressor_writes_what_a_fresh_encoder_writes() {
        let mut c = Compressor::new(6);
        // Sizes around the read buffer, the output buffer and the spool threshold, in an order
        // that leaves a large stream's state behind before small ones.
        let sizes = [
            300_000, 0, 1, 4096, 65_535, 65_536, 65_537, 32_768, 200_000, 4096,
        ];
        for (seed, &len) in sizes.iter().enumerate() {
            let data = text(len, seed as u32);
            let mut out = c.compress(&mut &data[..], 20_000, &mut |_| {}).unwrap();
            let expected = deflate_fresh(&data, 6);
            assert_eq!(out.size, len as u64);
            if expected.len() as u64 >= out.size {
                assert_eq!(out.method, Method::Stored, "{len} bytes");
                assert_eq!(bytes(&mut out), data, "{len} bytes");
            } else {
                assert_eq!(out.method, Method::Deflate, "{len} bytes");
                assert_eq!(out.compressed, expected.len() as u64, "{len} bytes");
                assert_eq!(bytes(&mut out), expected, "{len} bytes");
            }
            assert_eq!(out.crc, crc32fast::hash(&data));
            let sha = ring::digest::digest(&ring::digest::SHA256, &data);
            assert_eq!(&out.sha256[..], sha.as_ref());
        }
    }

    #[test]
    fn a_compressor_keeps_incompressible_data_stored() {
        let mut c = Compressor::new(6);
        // Pseudo-random bytes (xorshift64), which deflate cannot shrink.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let expected = deflate_fresh(&data, 6);
        assert!(expected.len() >= data.len(), "the sample compresses");
        let mut out = c.compress(&mut &data[..], 1 << 20, &mut |_| {}).unwrap();
        assert_eq!(out.method, Method::Stored);
        assert_eq!(bytes(&mut out), data);
        // And the next entry is deflated as if the compressor were new.
        let small = text(5000, 9);
        let mut out = c.compress(&mut &small[..], 1 << 20, &mut |_| {}).unwrap();
        assert_eq!(out.method, Method::Deflate);
        assert_eq!(bytes(&mut out), deflate_fresh(&small, 6));
    }
}
