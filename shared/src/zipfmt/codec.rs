//! The byte layouts of the ZIP records bundles use, and the one set of canonical values.
//!
//! Each record is a plain struct with `encode` (used by the writer) and `decode` (used by the
//! reader), so that both sides agree on every offset by construction. The values a bundle's
//! fields must hold live once, in [`canonical`]: the writer puts them and the reader requires
//! them, so the two cannot drift apart.

/// Signature of a local file header (`PK\3\4`).
pub(super) const LOCAL_SIG: u32 = 0x0403_4b50;
/// Signature of a central directory record (`PK\1\2`).
pub(super) const CENTRAL_SIG: u32 = 0x0201_4b50;
/// Signature of the end of central directory record (`PK\5\6`).
pub(super) const EOCD_SIG: u32 = 0x0605_4b50;
/// Signature of the ZIP64 end of central directory record (`PK\6\6`).
pub(super) const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
/// Signature of the ZIP64 end of central directory locator (`PK\6\7`).
pub(super) const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;

/// Unix file-type bits of a regular file.
pub(super) const S_IFREG: u32 = 0o100000;
/// Mask of the Unix file-type bits.
pub(super) const S_IFMT: u32 = 0o170000;

/// The value of every field that nothing else covers (no hash, no comparison with another
/// header), so that no byte of an archive can change unnoticed. The writer puts exactly these;
/// the reader requires the ones its checks name and, where the format allows a choice (version
/// needed, flags, time and date), requires local and central headers to agree.
pub(super) mod canonical {
    use super::S_IFREG;

    /// Version made by: Unix (3), format 2.0. The reader requires it.
    pub const MADE_BY: u16 = (3 << 8) | 20;
    /// Version needed to extract: 2.0.
    pub const VERSION_NEEDED: u16 = 20;
    /// General purpose flags the writer puts: bit 11, UTF-8 names.
    pub const FLAGS: u16 = 0x0800;
    /// Flag bits a reader accepts: deflate options (1, 2) and UTF-8 names (11).
    pub const ALLOWED_FLAGS: u16 = 0x0806;
    /// Flag bits that mean encryption (0, 6 and 13).
    pub const ENCRYPTION_FLAGS: u16 = 0x2041;
    /// DOS time 00:00 (low half) and date 1980-01-01 (high half): archives are reproducible.
    pub const TIME_DATE: u32 = 0x21 << 16;
    /// Disk numbers: bundles are single-disk archives.
    pub const DISK: u16 = 0;
    /// Internal attributes. The reader requires them.
    pub const INTERNAL_ATTRS: u16 = 0;
    /// External attributes: a regular file, mode 0644. The reader accepts these or 0.
    pub const EXTERNAL_ATTRS: u32 = (S_IFREG | 0o644) << 16;
    /// Size of the ZIP64 end record after its first 12 bytes. The reader requires it.
    pub const ZIP64_RECORD_SIZE: u64 = 44;
    /// Version made by in the ZIP64 end record: Unix, format 4.5.
    pub const ZIP64_MADE_BY: u16 = (3 << 8) | 45;
    /// Version needed in the ZIP64 end record: 4.5.
    pub const ZIP64_VERSION_NEEDED: u16 = 45;
    /// Total disks in the ZIP64 locator. The reader requires it.
    pub const TOTAL_DISKS: u32 = 1;
    /// Header id of the ZIP64 extended information extra field.
    pub const ZIP64_EXTRA_ID: u16 = 1;
}

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Position of the last occurrence of `sig` in `hay`.
pub(super) fn rfind_sig(hay: &[u8], sig: u32) -> Option<usize> {
    hay.windows(4).rposition(|w| w == sig.to_le_bytes())
}

/// A local file header (30 bytes, then the name and the extra field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LocalHeader {
    pub version_needed: u16,
    pub flags: u16,
    pub method: u16,
    /// DOS time in the low half, date in the high half.
    pub time_date: u32,
    pub crc: u32,
    pub compressed_size: u32,
    pub size: u32,
    pub name_len: u16,
    pub extra_len: u16,
}

impl LocalHeader {
    pub const LEN: usize = 30;
    /// Where the CRC-32 and the two sizes start, which the writer patches after streaming.
    pub const CRC_AT: u64 = 14;

    /// A canonical header for an entry whose name is `name_len` bytes.
    pub fn canonical(
        method: u16,
        crc: u32,
        compressed_size: u32,
        size: u32,
        name_len: u16,
    ) -> Self {
        LocalHeader {
            version_needed: canonical::VERSION_NEEDED,
            flags: canonical::FLAGS,
            method,
            time_date: canonical::TIME_DATE,
            crc,
            compressed_size,
            size,
            name_len,
            extra_len: 0,
        }
    }

    /// Appends the header and `name` (no extra field) to `out`.
    pub fn encode(&self, name: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        out.extend_from_slice(&self.version_needed.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.method.to_le_bytes());
        out.extend_from_slice(&self.time_date.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.compressed_size.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.name_len.to_le_bytes());
        out.extend_from_slice(&self.extra_len.to_le_bytes());
        out.extend_from_slice(name);
    }

    /// The fixed part of a header; `None` when the signature is not a local header's.
    pub fn decode(h: &[u8; Self::LEN]) -> Option<Self> {
        (u32_at(h, 0) == LOCAL_SIG).then(|| LocalHeader {
            version_needed: u16_at(h, 4),
            flags: u16_at(h, 6),
            method: u16_at(h, 8),
            time_date: u32_at(h, 10),
            crc: u32_at(h, 14),
            compressed_size: u32_at(h, 18),
            size: u32_at(h, 22),
            name_len: u16_at(h, 26),
            extra_len: u16_at(h, 28),
        })
    }
}

/// A central directory record (46 bytes, then the name, the extra field and the comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CentralHeader {
    pub made_by: u16,
    pub version_needed: u16,
    pub flags: u16,
    pub method: u16,
    /// DOS time in the low half, date in the high half.
    pub time_date: u32,
    pub crc: u32,
    pub compressed_size: u32,
    pub size: u32,
    pub name_len: u16,
    pub extra_len: u16,
    pub comment_len: u16,
    pub disk: u16,
    pub internal_attrs: u16,
    pub external_attrs: u32,
    /// Offset of the local header, or `0xFFFFFFFF` when the ZIP64 extra field holds it.
    pub offset: u32,
}

impl CentralHeader {
    pub const LEN: usize = 46;

    /// A canonical record; an `offset` that does not fit 32 bits goes to a ZIP64 extra field
    /// (see [`zip64_offset_extra`]), which the caller appends.
    pub fn canonical(
        method: u16,
        crc: u32,
        compressed_size: u32,
        size: u32,
        name_len: u16,
        offset: u64,
    ) -> Self {
        let big_offset = offset >= u64::from(u32::MAX);
        CentralHeader {
            made_by: canonical::MADE_BY,
            version_needed: canonical::VERSION_NEEDED,
            flags: canonical::FLAGS,
            method,
            time_date: canonical::TIME_DATE,
            crc,
            compressed_size,
            size,
            name_len,
            extra_len: if big_offset {
                ZIP64_OFFSET_EXTRA_LEN as u16
            } else {
                0
            },
            comment_len: 0,
            disk: canonical::DISK,
            internal_attrs: canonical::INTERNAL_ATTRS,
            external_attrs: canonical::EXTERNAL_ATTRS,
            offset: if big_offset { u32::MAX } else { offset as u32 },
        }
    }

    /// Appends the record, `name` and `extra` (no comment) to `out`.
    pub fn encode(&self, name: &[u8], extra: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        out.extend_from_slice(&self.made_by.to_le_bytes());
        out.extend_from_slice(&self.version_needed.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.method.to_le_bytes());
        out.extend_from_slice(&self.time_date.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.compressed_size.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.name_len.to_le_bytes());
        out.extend_from_slice(&self.extra_len.to_le_bytes());
        out.extend_from_slice(&self.comment_len.to_le_bytes());
        out.extend_from_slice(&self.disk.to_le_bytes());
        out.extend_from_slice(&self.internal_attrs.to_le_bytes());
        out.extend_from_slice(&self.external_attrs.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(extra);
    }

    /// The fixed part of a record; `None` when the signature is not a central record's.
    pub fn decode(h: &[u8; Self::LEN]) -> Option<Self> {
        (u32_at(h, 0) == CENTRAL_SIG).then(|| CentralHeader {
            made_by: u16_at(h, 4),
            version_needed: u16_at(h, 6),
            flags: u16_at(h, 8),
            method: u16_at(h, 10),
            time_date: u32_at(h, 12),
            crc: u32_at(h, 16),
            compressed_size: u32_at(h, 20),
            size: u32_at(h, 24),
            name_len: u16_at(h, 28),
            extra_len: u16_at(h, 30),
            comment_len: u16_at(h, 32),
            disk: u16_at(h, 34),
            internal_attrs: u16_at(h, 36),
            external_attrs: u32_at(h, 38),
            offset: u32_at(h, 42),
        })
    }
}

/// Length of the ZIP64 extra field that holds only a local header offset.
pub(super) const ZIP64_OFFSET_EXTRA_LEN: usize = 12;

/// The ZIP64 extended information extra field holding only a local header offset.
pub(super) fn zip64_offset_extra(offset: u64) -> [u8; ZIP64_OFFSET_EXTRA_LEN] {
    let mut x = [0u8; ZIP64_OFFSET_EXTRA_LEN];
    x[0..2].copy_from_slice(&canonical::ZIP64_EXTRA_ID.to_le_bytes());
    x[2..4].copy_from_slice(&8u16.to_le_bytes());
    x[4..12].copy_from_slice(&offset.to_le_bytes());
    x
}

/// The local header offset in a central record's extra field, if it holds a well-formed ZIP64
/// field carrying exactly that.
pub(super) fn zip64_offset(extra: &[u8]) -> Option<u64> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at), usize::from(u16_at(extra, at + 2)));
        let body = extra.get(at + 4..at + 4 + len)?;
        if id == canonical::ZIP64_EXTRA_ID {
            // Only the offset is 0xFFFFFFFF (sizes are refused), so it comes first.
            return (len == 8).then(|| u64_at(body, 0));
        }
        at += 4 + len;
    }
    None
}

/// The end of central directory record (22 bytes, then the archive comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EndRecord {
    pub disk: u16,
    pub cd_disk: u16,
    pub entries_on_disk: u16,
    pub entries: u16,
    pub cd_size: u32,
    pub cd_offset: u32,
    pub comment_len: u16,
}

impl EndRecord {
    pub const LEN: usize = 22;

    /// Appends the record (no comment) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&EOCD_SIG.to_le_bytes());
        out.extend_from_slice(&self.disk.to_le_bytes());
        out.extend_from_slice(&self.cd_disk.to_le_bytes());
        out.extend_from_slice(&self.entries_on_disk.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.extend_from_slice(&self.cd_size.to_le_bytes());
        out.extend_from_slice(&self.cd_offset.to_le_bytes());
        out.extend_from_slice(&self.comment_len.to_le_bytes());
    }

    /// The record at a position where its signature was found.
    pub fn decode(h: &[u8; Self::LEN]) -> Self {
        EndRecord {
            disk: u16_at(h, 4),
            cd_disk: u16_at(h, 6),
            entries_on_disk: u16_at(h, 8),
            entries: u16_at(h, 10),
            cd_size: u32_at(h, 12),
            cd_offset: u32_at(h, 16),
            comment_len: u16_at(h, 20),
        }
    }
}

/// The ZIP64 end of central directory record (56 bytes: bundles use no extensible data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Zip64EndRecord {
    pub record_size: u64,
    pub made_by: u16,
    pub version_needed: u16,
    pub disk: u32,
    pub cd_disk: u32,
    pub entries_on_disk: u64,
    pub entries: u64,
    pub cd_size: u64,
    pub cd_offset: u64,
}

impl Zip64EndRecord {
    pub const LEN: usize = 56;

    /// A canonical record.
    pub fn canonical(entries: u64, cd_size: u64, cd_offset: u64) -> Self {
        Zip64EndRecord {
            record_size: canonical::ZIP64_RECORD_SIZE,
            made_by: canonical::ZIP64_MADE_BY,
            version_needed: canonical::ZIP64_VERSION_NEEDED,
            disk: u32::from(canonical::DISK),
            cd_disk: u32::from(canonical::DISK),
            entries_on_disk: entries,
            entries,
            cd_size,
            cd_offset,
        }
    }

    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
        out.extend_from_slice(&self.record_size.to_le_bytes());
        out.extend_from_slice(&self.made_by.to_le_bytes());
        out.extend_from_slice(&self.version_needed.to_le_bytes());
        out.extend_from_slice(&self.disk.to_le_bytes());
        out.extend_from_slice(&self.cd_disk.to_le_bytes());
        out.extend_from_slice(&self.entries_on_disk.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.extend_from_slice(&self.cd_size.to_le_bytes());
        out.extend_from_slice(&self.cd_offset.to_le_bytes());
    }

    /// The record; `None` when the signature is not a ZIP64 end record's.
    pub fn decode(h: &[u8; Self::LEN]) -> Option<Self> {
        (u32_at(h, 0) == ZIP64_EOCD_SIG).then(|| Zip64EndRecord {
            record_size: u64_at(h, 4),
            made_by: u16_at(h, 12),
            version_needed: u16_at(h, 14),
            disk: u32_at(h, 16),
            cd_disk: u32_at(h, 20),
            entries_on_disk: u64_at(h, 24),
            entries: u64_at(h, 32),
            cd_size: u64_at(h, 40),
            cd_offset: u64_at(h, 48),
        })
    }
}

/// The ZIP64 end of central directory locator (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Zip64Locator {
    /// Disk holding the ZIP64 end record.
    pub disk: u32,
    /// Offset of the ZIP64 end record.
    pub record_offset: u64,
    pub total_disks: u32,
}

impl Zip64Locator {
    pub const LEN: usize = 20;

    /// A canonical locator for a ZIP64 end record at `record_offset`.
    pub fn canonical(record_offset: u64) -> Self {
        Zip64Locator {
            disk: u32::from(canonical::DISK),
            record_offset,
            total_disks: canonical::TOTAL_DISKS,
        }
    }

    /// Appends the locator to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
        out.extend_from_slice(&self.disk.to_le_bytes());
        out.extend_from_slice(&self.record_offset.to_le_bytes());
        out.extend_from_slice(&self.total_disks.to_le_bytes());
    }

    /// The locator; `None` when the signature is not a locator's.
    pub fn decode(h: &[u8; Self::LEN]) -> Option<Self> {
        (u32_at(h, 0) == ZIP64_LOCATOR_SIG).then(|| Zip64Locator {
            disk: u32_at(h, 4),
            record_offset: u64_at(h, 8),
            total_disks: u32_at(h, 16),
        })
    }
}

/// The `N` bytes of `b` at `at`, if there are that many.
pub(super) fn array_at<const N: usize>(b: &[u8], at: usize) -> Option<&[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}
