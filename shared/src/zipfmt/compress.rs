//! Compressing entries ahead of writing, on as many threads as the caller runs: each entry is
//! deflated (or kept Stored when deflate does not shrink it) into a [`Spool`] for
//! [`ZipWriter::add_compressed`](super::ZipWriter::add_compressed).

use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use super::Method;
use super::hashing::HashingReader;

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

/// Compresses entries one after another for [`ZipWriter::add_compressed`](super::ZipWriter::add_compressed), reusing one deflate
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
