//! Counting, CRC-32 and SHA-256 in one pass over a stream, shared by writing and reading.

use std::io::{self, Read};

/// Counts, CRCs and SHA-256-hashes what passes through.
pub struct HashingReader<R> {
    pub(super) inner: R,
    pub(super) n: u64,
    pub(super) crc: crc32fast::Hasher,
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
