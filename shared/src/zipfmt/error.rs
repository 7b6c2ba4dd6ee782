//! Why an archive is not in the ZIP subset bundles use, each reason with its stable code (the
//! bundle layer carries them unchanged).

use std::io;

/// Why the reader refused an archive or an entry. Messages name the entry and the rule.
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    /// Not a ZIP archive, or one too damaged to read.
    #[error("not a ZIP archive: {0}")]
    NotAZip(String),
    /// Bytes before the first entry.
    #[error("{0} bytes of data precede the first entry")]
    PrependedData(u64),
    /// Bytes after the end of central directory record.
    #[error("{0} bytes of data follow the end of central directory record")]
    TrailingData(u64),
    /// An archive or entry comment.
    #[error("{0}; comments are not accepted")]
    ArchiveComment(String),
    /// More than one end of central directory record.
    #[error("the archive has more than one end of central directory record")]
    MultipleEndRecords,
    /// Inconsistent ZIP64 records.
    #[error("invalid ZIP64 records: {0}")]
    Zip64Invalid(String),
    /// A local header that disagrees with its central record.
    #[error("entry {0}: local and central headers disagree ({1})")]
    HeaderMismatch(String, &'static str),
    /// Entries overlap, leave gaps, or are out of place.
    #[error("entry layout: {0}")]
    EntryLayout(String),
    /// A compression method other than Stored or Deflate.
    #[error("entry {0}: compression method {1} is not accepted (only Stored and Deflate)")]
    UnsupportedCompression(String, u16),
    /// An encrypted entry.
    #[error("entry {0} is encrypted; encrypted entries are not accepted")]
    EncryptedEntry(String),
    /// A ZIP feature bundles do not use, or a field off its canonical value.
    #[error("entry {0}: {1}")]
    UnsupportedFeature(String, String),
    /// A symlink, directory or special file.
    #[error("entry {0} is not a regular file (symlink, directory or special file)")]
    NotRegularFile(String),
    /// A name that [`check_entry_name`](super::check_entry_name) refuses.
    #[error("entry name {name:?} {1}", name = .0)]
    BadEntryName(String, &'static str),
    /// Two entries with the same name, also after case folding.
    #[error("duplicate entry {0} (names are compared ignoring case)")]
    DuplicateEntry(String),
    /// Fewer entries than the two a bundle starts with.
    #[error("entry order: a bundle starts with manifest.json and manifest.sig")]
    TooFewEntries,
    /// A CRC-32 that does not match the data.
    #[error("entry {0}: CRC-32 does not match its data")]
    CrcMismatch(String),
    /// More entries than the limit: (declared, limit).
    #[error("the archive declares {0} entries; the limit is {1}")]
    TooManyEntries(u64, u64),
    /// An entry over the compression ratio limit: (name, size, compressed size).
    #[error("entry {0}: {1} bytes from {2} compressed exceeds the compression ratio limit")]
    CompressionRatio(String, u64, u64),
    /// Sizes over the configured limits, or entries too large for 32-bit sizes.
    #[error("size limit: {0}")]
    SizeLimit(String),
    /// An entry whose data does not inflate to the size its headers declare, or whose deflate
    /// stream is corrupt or ends early.
    #[error("entry {0}: {1}")]
    SizeMismatch(String, String),
    /// I/O failed while reading.
    #[error("reading the bundle failed: {0}")]
    Io(#[from] io::Error),
}

impl ZipError {
    /// The stable code of this refusal (fixtures/malicious/*.expect use it).
    pub fn code(&self) -> &'static str {
        use ZipError::*;
        match self {
            NotAZip(_) => "not-a-zip",
            PrependedData(_) => "prepended-data",
            TrailingData(_) => "trailing-data",
            ArchiveComment(_) => "archive-comment",
            MultipleEndRecords => "multiple-end-records",
            Zip64Invalid(_) => "zip64-invalid",
            HeaderMismatch(..) => "header-mismatch",
            EntryLayout(_) => "entry-layout",
            UnsupportedCompression(..) => "unsupported-compression",
            EncryptedEntry(_) => "encrypted-entry",
            UnsupportedFeature(..) => "unsupported-feature",
            NotRegularFile(_) => "not-regular-file",
            BadEntryName(..) => "bad-entry-name",
            DuplicateEntry(_) => "duplicate-entry",
            TooFewEntries => "entry-order",
            CrcMismatch(_) => "crc-mismatch",
            TooManyEntries(..) => "too-many-entries",
            CompressionRatio(..) => "compression-ratio",
            SizeLimit(_) => "size-limit",
            SizeMismatch(..) => "size-mismatch",
            Io(_) => "io",
        }
    }

    /// Carries this error through an `io::Read` boundary.
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// Recovers a [`ZipError`] carried through `io::Error` by [`ZipError::into_io`]; a
    /// truncated file is a damaged archive, any other I/O error stays one.
    pub fn from_io(e: io::Error) -> ZipError {
        if e.get_ref().is_some_and(|inner| inner.is::<ZipError>()) {
            // `is` just held, so both steps succeed; the fallbacks only satisfy the types.
            return match e.into_inner().map(|inner| inner.downcast::<ZipError>()) {
                Some(Ok(z)) => *z,
                _ => ZipError::Io(io::Error::other("unreachable downcast")),
            };
        }
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return ZipError::NotAZip("the archive is truncated".into());
        }
        ZipError::Io(e)
    }
}
