//! The streaming writer: local headers, data, then the central directory and end records, all
//! in the canonical form of [`canonical`].

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::Method;
use super::codec::{
    CentralHeader, EndRecord, LocalHeader, Zip64EndRecord, Zip64Locator, canonical,
    zip64_offset_extra,
};
use super::compress::Compressed;
use super::hashing::HashingReader;

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

/// Writes an archive in the subset [`ZipReader`](super::ZipReader) accepts.
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

fn too_large(name: &str) -> io::Error {
    io::Error::other(format!(
        "entry {name} is 4 GiB or larger, which bundles do not support"
    ))
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
            return Err(too_large(name));
        }
        self.pos = data_start + csize;
        // The local header was written before the data; its CRC and sizes are known now.
        self.w
            .seek(SeekFrom::Start(header_at + LocalHeader::CRC_AT))?;
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

    /// Appends an entry compressed ahead by [`Compressor::compress`](super::Compressor::compress).
    pub fn add_compressed(&mut self, name: &str, c: &mut Compressed) -> io::Result<()> {
        if c.size >= u64::from(u32::MAX) || c.compressed >= u64::from(u32::MAX) {
            return Err(too_large(name));
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
        let mut h = Vec::with_capacity(LocalHeader::LEN + name.len());
        LocalHeader::canonical(method.code(), crc, csize, usize, name.len() as u16)
            .encode(name.as_bytes(), &mut h);
        self.w.write_all(&h)?;
        self.pos += h.len() as u64;
        Ok(())
    }

    /// Writes the central directory and end records, and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let cd_start = self.pos;
        let mut cd = Vec::new();
        for r in &self.records {
            let header = CentralHeader::canonical(
                r.method.code(),
                r.crc,
                r.csize as u32,
                r.usize as u32,
                r.name.len() as u16,
                r.offset,
            );
            let extra = zip64_offset_extra(r.offset);
            let extra = &extra[..usize::from(header.extra_len)];
            header.encode(r.name.as_bytes(), extra, &mut cd);
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
            Zip64EndRecord::canonical(count, cd_size, cd_start).encode(&mut end);
            Zip64Locator::canonical(z64_at).encode(&mut end);
        }
        let c16 = if zip64 { 0xFFFF } else { count as u16 };
        EndRecord {
            disk: canonical::DISK,
            cd_disk: canonical::DISK,
            entries_on_disk: c16,
            entries: c16,
            cd_size: if zip64 { u32::MAX } else { cd_size as u32 },
            cd_offset: if zip64 { u32::MAX } else { cd_start as u32 },
            comment_len: 0,
        }
        .encode(&mut end);
        self.w.write_all(&end)?;
        self.w.flush()?;
        Ok(self.w)
    }
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
