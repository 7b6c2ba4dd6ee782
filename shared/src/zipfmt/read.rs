//! The strict reader: end records, then the central directory (every rule of the canonical
//! form), then the entries in order, each local header compared with its central record and
//! its data streamed through an [`EntryReader`].

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

use super::codec::{
    CENTRAL_SIG, CentralHeader, EOCD_SIG, EndRecord, LocalHeader, S_IFMT, S_IFREG, Zip64EndRecord,
    Zip64Locator, array_at, canonical, rfind_sig, zip64_offset,
};
use super::error::ZipError;
use super::hashing::HashingReader;
use super::layout::check_entry_name;
use super::{Limits, Method};

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

const LOCAL_LEN: u64 = LocalHeader::LEN as u64;
const EOCD_LEN: u64 = EndRecord::LEN as u64;
const ZIP64_EOCD_LEN: u64 = Zip64EndRecord::LEN as u64;
const ZIP64_LOCATOR_LEN: u64 = Zip64Locator::LEN as u64;
/// The read buffer in front of the archive, at most.
const READ_BUFFER: usize = 256 * 1024;

impl<R: Read + Seek> ZipReader<R> {
    /// Reads and checks the end records and the central directory.
    pub fn open(mut r: R, limits: &Limits) -> Result<ZipReader<R>, ZipError> {
        let len = r.seek(SeekFrom::End(0))?;
        if len > limits.max_bundle_size {
            return Err(ZipError::SizeLimit(format!(
                "the bundle is {len} bytes; the limit is {}",
                limits.max_bundle_size
            )));
        }
        if len < EOCD_LEN {
            return Err(ZipError::NotAZip("too short to be a ZIP archive".into()));
        }
        let tail_len = len.min(EOCD_LEN + 0xFFFF + ZIP64_LOCATOR_LEN + ZIP64_EOCD_LEN);
        let tail_start = len - tail_len;
        r.seek(SeekFrom::Start(tail_start))?;
        let mut tail = vec![0u8; tail_len as usize];
        r.read_exact(&mut tail)?;
        // The last end record signature, which must have a whole record after it.
        let Some((at, eocd)) = rfind_sig(&tail, EOCD_SIG)
            .and_then(|at| Some((at, EndRecord::decode(array_at(&tail, at)?))))
        else {
            return Err(ZipError::NotAZip(
                "no end of central directory record".into(),
            ));
        };
        let eocd_pos = tail_start + at as u64;
        if eocd.comment_len > 0 {
            return Err(ZipError::ArchiveComment("the archive has a comment".into()));
        }
        if eocd_pos + EOCD_LEN != len {
            return Err(ZipError::TrailingData(len - eocd_pos - EOCD_LEN));
        }
        if eocd.disk != canonical::DISK
            || eocd.cd_disk != canonical::DISK
            || eocd.entries_on_disk != eocd.entries
        {
            return Err(ZipError::NotAZip(
                "multi-disk archives are not supported".into(),
            ));
        }
        let mut count = u64::from(eocd.entries);
        let mut cd_size = u64::from(eocd.cd_size);
        let mut cd_offset = u64::from(eocd.cd_offset);
        // Where the central directory must end: the end record, or the ZIP64 end record.
        let mut cd_end = eocd_pos;
        let locator = at
            .checked_sub(Zip64Locator::LEN)
            .and_then(|l| array_at(&tail, l))
            .and_then(Zip64Locator::decode);
        if let Some(loc) = locator {
            let z64_pos = loc.record_offset;
            let expected = eocd_pos.checked_sub(ZIP64_LOCATOR_LEN + ZIP64_EOCD_LEN);
            if Some(z64_pos) != expected
                || loc.disk != u32::from(canonical::DISK)
                || loc.total_disks != canonical::TOTAL_DISKS
            {
                return Err(ZipError::Zip64Invalid(
                    "the ZIP64 locator does not point at a ZIP64 end record just before it".into(),
                ));
            }
            // Not below `tail_start`: the end record ends the file, so either the tail is the
            // whole file or the end record sits a maximal comment plus both ZIP64 records into it.
            let rel = (z64_pos - tail_start) as usize;
            let z = array_at(&tail, rel)
                .ok_or_else(|| ZipError::Zip64Invalid("ZIP64 end record out of range".into()))?;
            let Some(z) = Zip64EndRecord::decode(z).filter(|z| {
                z.record_size == canonical::ZIP64_RECORD_SIZE
                    && z.disk == u32::from(canonical::DISK)
                    && z.cd_disk == u32::from(canonical::DISK)
                    && z.entries_on_disk == z.entries
            }) else {
                return Err(ZipError::Zip64Invalid("malformed ZIP64 end record".into()));
            };
            let (c, s, o) = (z.entries, z.cd_size, z.cd_offset);
            let agrees = |small: u64, big: u64, max: u64| small == max || small == big;
            if !agrees(count, c, 0xFFFF)
                || !agrees(cd_size, s, 0xFFFF_FFFF)
                || !agrees(cd_offset, o, 0xFFFF_FFFF)
            {
                return Err(ZipError::Zip64Invalid(
                    "the ZIP64 end record disagrees with the end record".into(),
                ));
            }
            (count, cd_size, cd_offset) = (c, s, o);
            cd_end = z64_pos;
        } else if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            return Err(ZipError::Zip64Invalid(
                "the end record asks for ZIP64 values but there is no ZIP64 locator".into(),
            ));
        }
        if count > limits.max_entries {
            return Err(ZipError::TooManyEntries(count, limits.max_entries));
        }
        if count < 2 {
            return Err(ZipError::TooFewEntries);
        }
        let cd_stop = cd_offset.checked_add(cd_size).filter(|&e| e <= cd_end);
        match cd_stop {
            Some(stop) if stop == cd_end => {}
            Some(stop) => {
                // Something sits between the central directory and the end record(s).
                r.seek(SeekFrom::Start(stop))?;
                let mut gap = vec![0u8; (cd_end - stop).min(1 << 16) as usize];
                r.read_exact(&mut gap)?;
                if rfind_sig(&gap, EOCD_SIG).is_some() {
                    return Err(ZipError::MultipleEndRecords);
                }
                let shift = cd_end - stop;
                r.seek(SeekFrom::Start(cd_offset + shift))?;
                let mut sig = [0u8; 4];
                if r.read_exact(&mut sig).is_ok() && u32::from_le_bytes(sig) == CENTRAL_SIG {
                    return Err(ZipError::PrependedData(shift));
                }
                return Err(ZipError::EntryLayout(format!(
                    "{shift} unexplained bytes before the end of central directory record"
                )));
            }
            None => {
                return Err(ZipError::NotAZip(
                    "the central directory lies outside the archive".into(),
                ));
            }
        }
        if cd_size < count * CentralHeader::LEN as u64 {
            return Err(ZipError::NotAZip(
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
                return Err(ZipError::DuplicateEntry(e.name));
            }
            total = total.saturating_add(e.size);
            if total > limits.max_total_uncompressed {
                return Err(ZipError::SizeLimit(format!(
                    "the entries' uncompressed sizes add up to more than the limit of {} bytes",
                    limits.max_total_uncompressed
                )));
            }
            entries.push(e);
        }
        let mut rest = [0u8; 1];
        if br.read(&mut rest)? != 0 {
            return Err(ZipError::EntryLayout(
                "the central directory holds more than its entry count".into(),
            ));
        }
        drop(br);
        if let Some(first) = entries.first().filter(|e| e.offset != 0) {
            return Err(ZipError::PrependedData(first.offset));
        }
        // Local headers have no extra field and repeat the central name, so each entry's
        // extent is known here: entries must tile the archive from 0 to the central directory.
        let mut expected = 0u64;
        for e in &entries {
            if e.offset != expected {
                return Err(ZipError::EntryLayout(format!(
                    "entry {} starts at {} but the previous entry ends at {} (overlapping or gapped entries)",
                    e.name, e.offset, expected
                )));
            }
            expected = e.offset + LOCAL_LEN + e.name.len() as u64 + e.compressed_size;
        }
        if expected != cd_offset {
            return Err(ZipError::EntryLayout(format!(
                "the last entry ends at {expected} but the central directory starts at {cd_offset}"
            )));
        }
        r.seek(SeekFrom::Start(0))?;
        // The entries end at the central directory: no read goes past it, so a small archive
        // gets a buffer of its own size (the buffer is zeroed when first filled).
        let buffer = usize::try_from(cd_offset).map_or(READ_BUFFER, |n| n.clamp(1, READ_BUFFER));
        Ok(ZipReader {
            r: BufReader::with_capacity(buffer, r),
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
    pub fn next_entry(&mut self) -> Result<Option<EntryReader<'_, R>>, ZipError> {
        Ok(self.next_checked()?.map(Next::read))
    }

    /// Checks the next entry's local header as [`ZipReader::next_entry`] does, and leaves the
    /// choice to read its data here or to skip it (to have it checked elsewhere).
    pub fn next_checked(&mut self) -> Result<Option<Next<'_, R>>, ZipError> {
        let Some(entry) = self.next_header()? else {
            return Ok(None);
        };
        Ok(Some(Next { zip: self, entry }))
    }

    /// Reads and checks the next entry's local header; on success the reader stands at the
    /// entry's data and `pos` past it.
    fn next_header(&mut self) -> Result<Option<Entry>, ZipError> {
        let Some(e) = self.entries.get(self.next).cloned() else {
            return Ok(None);
        };
        if e.offset != self.pos {
            return Err(ZipError::EntryLayout(format!(
                "entry {} starts at {} but the previous entry ends at {} (overlapping or gapped entries)",
                e.name, e.offset, self.pos
            )));
        }
        let mut h = [0u8; LocalHeader::LEN];
        self.r
            .read_exact(&mut h)
            .map_err(|_| ZipError::HeaderMismatch(e.name.clone(), "local header truncated"))?;
        let Some(l) = LocalHeader::decode(&h) else {
            return Err(ZipError::HeaderMismatch(
                e.name.clone(),
                "no local header at the central directory's offset",
            ));
        };
        let checks: [(bool, &'static str); 7] = [
            (l.version_needed == e.version_needed, "version needed"),
            (l.flags == e.flags, "flags"),
            (l.method == e.method.code(), "compression method"),
            (l.time_date == e.time_date, "modification time"),
            (l.crc == e.crc, "CRC-32"),
            (
                u64::from(l.compressed_size) == e.compressed_size,
                "compressed size",
            ),
            (u64::from(l.size) == e.size, "uncompressed size"),
        ];
        if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(ZipError::HeaderMismatch(e.name.clone(), what));
        }
        let name_len = u64::from(l.name_len);
        let extra_len = u64::from(l.extra_len);
        if extra_len != 0 {
            // Canonical form: a local extra field's bytes would be covered by nothing.
            return Err(ZipError::HeaderMismatch(
                e.name.clone(),
                "local extra field (bundles have none)",
            ));
        }
        let mut name = vec![0u8; name_len as usize];
        self.r
            .read_exact(&mut name)
            .map_err(|_| ZipError::HeaderMismatch(e.name.clone(), "local header truncated"))?;
        if name != e.name.as_bytes() {
            return Err(ZipError::HeaderMismatch(e.name.clone(), "name"));
        }
        io::copy(&mut self.r.by_ref().take(extra_len), &mut io::sink())?;
        let data_start = self.pos + LOCAL_LEN + name_len + extra_len;
        let data_end = data_start + e.compressed_size;
        let following = self
            .entries
            .get(self.next + 1)
            .map_or(self.cd_offset, |n| n.offset);
        if data_end != following {
            return Err(ZipError::EntryLayout(format!(
                "entry {} ends at {} but the next record starts at {} (overlapping or gapped entries)",
                e.name, data_end, following
            )));
        }
        self.next += 1;
        self.pos = data_end;
        Ok(Some(e))
    }
}

/// The next entry of a [`ZipReader`], its local header checked.
pub struct Next<'a, R: Read + Seek> {
    zip: &'a mut ZipReader<R>,
    entry: Entry,
}

impl<R: Read + Seek> std::fmt::Debug for Next<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Next({})", self.entry.name)
    }
}

impl<'a, R: Read + Seek> Next<'a, R> {
    /// Reads its data here.
    pub fn read(self) -> EntryReader<'a, R> {
        let raw = (&mut self.zip.r).take(self.entry.compressed_size);
        EntryReader::new(raw, self.entry)
    }

    /// Moves past its data without reading it, for a caller that has it checked elsewhere
    /// with [`verify_entry`] on a reader of its own. Returns the entry and where its data
    /// starts.
    pub fn skip(self) -> Result<(Entry, u64), ZipError> {
        let e = self.entry;
        let start = self.zip.pos - e.compressed_size;
        // Below 4 GiB: larger entries are refused with the central directory.
        let len = i64::try_from(e.compressed_size)
            .map_err(|_| ZipError::SizeLimit(format!("entry {} is too large", e.name)))?;
        self.zip.r.seek_relative(len)?;
        Ok((e, start))
    }
}

/// Reads entry `e`, whose data starts at `data_start`, from `r` (a reader of its own over the
/// same archive, as [`Next::skip`] returned them) and checks everything an
/// [`EntryReader`] checks. Returns its size and SHA-256.
pub fn verify_entry<R: Read + Seek>(
    r: &mut BufReader<R>,
    e: Entry,
    data_start: u64,
) -> Result<(u64, [u8; 32]), ZipError> {
    r.seek(SeekFrom::Start(data_start))?;
    let raw = r.take(e.compressed_size);
    EntryReader::new(raw, e).finish()
}

fn read_central(br: &mut impl BufRead, i: u64, limits: &Limits) -> Result<Entry, ZipError> {
    let truncated = || ZipError::NotAZip(format!("central directory record {i} is truncated"));
    let mut h = [0u8; CentralHeader::LEN];
    br.read_exact(&mut h).map_err(|_| truncated())?;
    let Some(c) = CentralHeader::decode(&h) else {
        return Err(ZipError::NotAZip(format!(
            "central directory record {i} has a bad signature"
        )));
    };
    let mut raw_name = vec![0u8; usize::from(c.name_len)];
    let mut extra = vec![0u8; usize::from(c.extra_len)];
    br.read_exact(&mut raw_name).map_err(|_| truncated())?;
    br.read_exact(&mut extra).map_err(|_| truncated())?;
    let name = String::from_utf8(raw_name).map_err(|e| {
        ZipError::BadEntryName(
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
            "is not UTF-8",
        )
    })?;
    check_entry_name(&name).map_err(|why| ZipError::BadEntryName(name.clone(), why))?;
    if c.comment_len != 0 {
        return Err(ZipError::ArchiveComment(format!(
            "entry {name} has a comment"
        )));
    }
    let flags = c.flags;
    if flags & canonical::ENCRYPTION_FLAGS != 0 {
        return Err(ZipError::EncryptedEntry(name));
    }
    if flags & !canonical::ALLOWED_FLAGS != 0 {
        return Err(ZipError::UnsupportedFeature(
            name,
            format!(
                "general purpose flags {flags:#06x} (data descriptors, patched data and the like are not accepted)"
            ),
        ));
    }
    let Some(method) = Method::from_code(c.method) else {
        return Err(ZipError::UnsupportedCompression(name, c.method));
    };
    let made_by_os = c.made_by >> 8;
    let attrs = c.external_attrs;
    let regular = match made_by_os {
        // Unix: the high 16 bits are st_mode; no type bits, or a regular file's.
        3 => matches!((attrs >> 16) & S_IFMT, 0 | S_IFREG),
        // Others (MS-DOS, NTFS…): the low byte holds DOS attributes; 0x10 is a directory.
        _ => attrs & 0x10 == 0 && (attrs >> 16) & S_IFMT == 0,
    };
    if !regular {
        return Err(ZipError::NotRegularFile(name));
    }
    if c.disk != canonical::DISK {
        return Err(ZipError::NotAZip(format!(
            "entry {name} claims another disk"
        )));
    }
    // Canonical form (docs/FORMAT.md): fields that nothing else covers have one permitted
    // value, so that no byte of an archive can change unnoticed.
    if c.made_by != canonical::MADE_BY {
        return Err(ZipError::UnsupportedFeature(
            name,
            format!(
                "version made by must be {:#06x} (Unix, 2.0)",
                canonical::MADE_BY
            ),
        ));
    }
    if c.internal_attrs != canonical::INTERNAL_ATTRS {
        return Err(ZipError::UnsupportedFeature(
            name,
            "internal attributes must be 0".into(),
        ));
    }
    if attrs != 0 && attrs != canonical::EXTERNAL_ATTRS {
        return Err(ZipError::UnsupportedFeature(
            name,
            format!(
                "external attributes must be 0 or {:#010x} (a regular file, mode 0644)",
                canonical::EXTERNAL_ATTRS
            ),
        ));
    }
    let crc = c.crc;
    let csize = u64::from(c.compressed_size);
    let size = u64::from(c.size);
    let mut offset = u64::from(c.offset);
    if size == 0xFFFF_FFFF || csize == 0xFFFF_FFFF {
        return Err(ZipError::SizeLimit(format!(
            "entry {name} uses ZIP64 sizes; entries of 4 GiB or more are not accepted"
        )));
    }
    if offset == 0xFFFF_FFFF {
        offset = zip64_offset(&extra).ok_or_else(|| {
            ZipError::Zip64Invalid(format!("entry {name} lacks its ZIP64 offset"))
        })?;
    } else if !extra.is_empty() {
        return Err(ZipError::UnsupportedFeature(
            name,
            "extra fields are only allowed for a ZIP64 offset".into(),
        ));
    }
    if method == Method::Stored && csize != size {
        return Err(ZipError::HeaderMismatch(
            name,
            "stored entry with different compressed and uncompressed sizes",
        ));
    }
    if size > limits.ratio_threshold && (csize == 0 || size / csize.max(1) > limits.max_ratio) {
        return Err(ZipError::CompressionRatio(name, size, csize));
    }
    Ok(Entry {
        name,
        method,
        flags,
        version_needed: c.version_needed,
        crc,
        compressed_size: csize,
        size,
        offset,
        time_date: c.time_date,
    })
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
/// mismatch all surface as an `io::Error` wrapping a [`ZipError`] *before* the final `Ok(0)`,
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
    /// A reader of entry `e`'s data, which `raw` (its compressed bytes) holds.
    fn new(raw: io::Take<&'a mut BufReader<R>>, e: Entry) -> Self {
        let inner = match e.method {
            Method::Stored => Inner::Stored(raw),
            Method::Deflate => Inner::Deflate(flate2::bufread::DeflateDecoder::new(raw)),
        };
        EntryReader {
            hashing: HashingReader::new(inner),
            entry: e,
            done: false,
        }
    }

    /// The entry being read.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Reads to the end and returns (size, SHA-256), checking everything [`EntryReader`] checks.
    pub fn finish(mut self) -> Result<(u64, [u8; 32]), ZipError> {
        io::copy(&mut self, &mut io::sink()).map_err(ZipError::from_io)?;
        Ok(self.digest())
    }

    /// Size and SHA-256 of what was read; meaningful once the reader returned `Ok(0)`.
    pub fn digest(self) -> (u64, [u8; 32]) {
        let (n, _, sha) = self.hashing.finish();
        (n, sha)
    }

    fn check_end(&mut self) -> Result<(), ZipError> {
        let name = &self.entry.name;
        if self.hashing.n != self.entry.size {
            return Err(ZipError::SizeMismatch(
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
            return Err(ZipError::SizeMismatch(
                name.clone(),
                format!("{left} compressed bytes follow the end of its deflate stream"),
            ));
        }
        let crc = self.hashing.crc.clone().finalize();
        if crc != self.entry.crc {
            return Err(ZipError::CrcMismatch(name.clone()));
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
                ZipError::SizeMismatch(
                    self.entry.name.clone(),
                    format!("its deflate data is corrupt ({e})"),
                )
                .into_io()
            } else {
                e
            }
        })?;
        if self.hashing.n > self.entry.size {
            return Err(ZipError::SizeMismatch(
                self.entry.name.clone(),
                format!(
                    "inflates to more than the {} bytes its headers say",
                    self.entry.size
                ),
            )
            .into_io());
        }
        if n == 0 {
            self.check_end().map_err(ZipError::into_io)?;
            self.done = true;
        }
        Ok(n)
    }
}
