//! The ZIP subset bundles use, written and read by hand so that every byte is accounted for.
//!
//! Writing ([`ZipWriter`]): entries are Stored or Deflate, local headers carry the final CRC
//! and sizes (patched after streaming, never data descriptors), Unix regular-file attributes,
//! and ZIP64 end records only when the entry count or offsets need them. [`Compressor`]
//! compresses entries ahead of writing, so that a writer can use every core.
//!
//! Reading ([`ZipReader`]) is strict: one end record at the very end with no comment, a central
//! directory that ends where the end record starts, entries contiguous from offset 0, local
//! headers equal to central ones, only Stored and Deflate, no encryption, regular files only,
//! names that match [`check_entry_name`], no duplicates even after case folding, and declared
//! sizes within [`Limits`]. Data is streamed through [`EntryReader`], which inflates within the
//! declared size, CRCs and hashes while reading, and fails at the end if anything disagrees.
//! Nothing is ever extracted to a path.
//!
//! Inside: `codec` holds the record layouts and the one set of canonical field values that
//! both sides use; `read`, `write` and `compress` the three jobs; `layout` the entry-name rules.

mod codec;
mod compress;
mod error;
mod hashing;
mod layout;
mod read;
mod write;

pub use compress::{Compressed, Compressor, Spool};
pub use error::ZipError;
pub use hashing::HashingReader;
pub use layout::check_entry_name;
pub use read::{Entry, EntryReader, Next, ZipReader, verify_entry};
pub use write::{WrittenEntry, ZipWriter};

/// Compression method of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No compression (0).
    Stored,
    /// Deflate (8).
    Deflate,
}

impl Method {
    /// The method's number in ZIP headers.
    fn code(self) -> u16 {
        match self {
            Method::Stored => 0,
            Method::Deflate => 8,
        }
    }

    /// The method a header's number names, if bundles accept it.
    fn from_code(code: u16) -> Option<Method> {
        match code {
            0 => Some(Method::Stored),
            8 => Some(Method::Deflate),
            _ => None,
        }
    }
}

/// Limits on what a reader accepts (the defaults are the format's).
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
