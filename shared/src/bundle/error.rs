//! Every reason a bundle is refused, each with a stable code and a [`Class`]: what kind of
//! refusal it is. Which answer a class gets (an HTTP status, an exit code) is the caller's
//! business.

use std::io;

use crate::zipfmt::ZipError;

/// What kind of refusal an error is, for callers that answer each kind differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The archive is not a well-formed bundle.
    Malformed,
    /// Over a configured limit.
    TooLarge,
    /// Well-formed but refused by verification.
    Refused,
    /// Reading failed for a reason of our own, not the bundle's.
    Internal,
}

/// Why a bundle was refused. Messages name the entry and the rule; none contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The archive is not in the ZIP subset bundles use; the reason keeps its own code.
    #[error(transparent)]
    Zip(ZipError),
    /// Entries not in the required order.
    #[error("entry order: {0}")]
    EntryOrder(String),
    /// `manifest.sig` is not 64 bytes.
    #[error("manifest.sig must be exactly 64 bytes, found {0}")]
    BadSignatureFormat(u64),
    /// `manifest.json` inflates to more than a receiver reads (its declared size, refused
    /// before any of it is read).
    #[error(
        "manifest.json is {0} bytes uncompressed; the limit is {1} bytes, so it is refused unread"
    )]
    ManifestTooLarge(u64, u64),
    /// The signature does not verify with the signer's key.
    #[error("the signature over manifest.json does not verify with signer key {0}")]
    BadSignature(String),
    /// The signer key is not trusted.
    #[error("signer key {0} is not trusted")]
    UnknownSigner(String),
    /// The signer key is trusted, but not for this container.
    #[error("signer key {0} is not allowed to deploy to {1} (allowed: {2})")]
    SignerNotAllowed(String, String, String),
    /// manifest.json breaks the schema.
    #[error("manifest.json: {0}")]
    BadManifest(String),
    /// The target container is not a valid path.
    #[error("manifest.json: field `target_container`: {0}")]
    BadContainer(String),
    /// A manifest entry that the archive lacks.
    #[error("entry {0} is listed in the manifest but missing from the archive")]
    MissingEntry(String),
    /// An archive entry that the manifest does not list.
    #[error("entry {0} is in the archive but not listed in the manifest")]
    ExtraEntry(String),
    /// An entry whose SHA-256 differs from the manifest's.
    #[error("entry {0}: SHA-256 does not match the manifest")]
    DigestMismatch(String),
    /// Past `expires_at`.
    #[error("the bundle expired at {0}")]
    Expired(String),
    /// `created_at` too far in the future.
    #[error("the bundle was created at {0}, more than 5 minutes in the future")]
    NotYetValid(String),
    /// A payload record that breaks a model rule.
    #[error("{0}")]
    BadRecord(String),
    /// A mapping's files and its mapping-file entries differ.
    #[error("mapping {0}: {1}")]
    MappingFilesMismatch(String, String),
    /// Sealed to another receiver.
    #[error("the bundle is sealed to {0}, but this receiver's recipient is {1}")]
    SealRecipientMismatch(String, String),
    /// A sealed value or the wrapped key does not open.
    #[error("{0}")]
    SealOpenFailed(String),
    /// I/O failed while reading.
    #[error("reading the bundle failed: {0}")]
    Io(#[from] io::Error),
}

impl BundleError {
    /// The stable code of this refusal (fixtures/malicious/*.expect use it).
    pub fn code(&self) -> &'static str {
        use BundleError::*;
        match self {
            Zip(z) => z.code(),
            EntryOrder(_) => "entry-order",
            BadSignatureFormat(_) => "bad-signature-format",
            ManifestTooLarge(..) => "too-large",
            BadSignature(_) => "bad-signature",
            UnknownSigner(_) => "unknown-signer",
            SignerNotAllowed(..) => "signer-not-allowed",
            BadManifest(_) => "bad-manifest",
            BadContainer(_) => "bad-container",
            MissingEntry(_) => "missing-entry",
            ExtraEntry(_) => "extra-entry",
            DigestMismatch(_) => "digest-mismatch",
            Expired(_) => "expired",
            NotYetValid(_) => "not-yet-valid",
            BadRecord(_) => "bad-record",
            MappingFilesMismatch(..) => "mapping-files-mismatch",
            SealRecipientMismatch(..) => "seal-recipient-mismatch",
            SealOpenFailed(_) => "seal-open-failed",
            Io(_) => "io",
        }
    }

    /// The class of this refusal.
    pub fn class(&self) -> Class {
        use BundleError::*;
        match self {
            Zip(
                ZipError::TooManyEntries(..)
                | ZipError::CompressionRatio(..)
                | ZipError::SizeLimit(_),
            )
            | ManifestTooLarge(..) => Class::TooLarge,
            Zip(ZipError::Io(_)) | Io(_) => Class::Internal,
            // Well-formed, but the data is not what its headers (or the manifest) declare.
            Zip(ZipError::SizeMismatch(..)) => Class::Refused,
            Zip(_) | EntryOrder(_) | BadSignatureFormat(_) => Class::Malformed,
            _ => Class::Refused,
        }
    }

    /// Carries this error through an `io::Read` boundary.
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// Recovers a [`BundleError`] (or a [`ZipError`]) carried through `io::Error` by
    /// [`BundleError::into_io`] (or [`ZipError::into_io`]).
    pub fn from_io(e: io::Error) -> BundleError {
        if e.get_ref().is_some_and(|inner| inner.is::<BundleError>()) {
            // `is` just held, so both steps succeed; the fallback only satisfies the types.
            return match e.into_inner().map(|inner| inner.downcast::<BundleError>()) {
                Some(Ok(b)) => *b,
                _ => BundleError::Io(io::Error::other("unreachable downcast")),
            };
        }
        // Anything else, a truncated file included, is what the ZIP layer says it is.
        ZipError::from_io(e).into()
    }
}

impl From<ZipError> for BundleError {
    /// A ZIP refusal is a bundle refusal with the ZIP layer's code and message.
    fn from(e: ZipError) -> BundleError {
        BundleError::Zip(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each ZIP refusal, with the code the hostile corpus expects for it.
    fn zip_errors() -> Vec<(ZipError, &'static str)> {
        let n = || "mappings/m/files/a.xml".to_owned();
        vec![
            (ZipError::NotAZip("x".into()), "not-a-zip"),
            (ZipError::PrependedData(3), "prepended-data"),
            (ZipError::TrailingData(3), "trailing-data"),
            (ZipError::ArchiveComment("x".into()), "archive-comment"),
            (ZipError::MultipleEndRecords, "multiple-end-records"),
            (ZipError::Zip64Invalid("x".into()), "zip64-invalid"),
            (ZipError::HeaderMismatch(n(), "flags"), "header-mismatch"),
            (ZipError::EntryLayout("x".into()), "entry-layout"),
            (
                ZipError::UnsupportedCompression(n(), 12),
                "unsupported-compression",
            ),
            (ZipError::EncryptedEntry(n()), "encrypted-entry"),
            (
                ZipError::UnsupportedFeature(n(), "x".into()),
                "unsupported-feature",
            ),
            (ZipError::NotRegularFile(n()), "not-regular-file"),
            (ZipError::BadEntryName(n(), "is odd"), "bad-entry-name"),
            (ZipError::DuplicateEntry(n()), "duplicate-entry"),
            (ZipError::TooFewEntries, "entry-order"),
            (ZipError::CrcMismatch(n()), "crc-mismatch"),
            (ZipError::TooManyEntries(9, 8), "too-many-entries"),
            (ZipError::CompressionRatio(n(), 9, 1), "compression-ratio"),
            (ZipError::SizeLimit("x".into()), "size-limit"),
            (ZipError::SizeMismatch(n(), "x".into()), "size-mismatch"),
            (ZipError::Io(io::Error::other("x")), "io"),
        ]
    }

    #[test]
    fn a_zip_refusal_keeps_its_message_and_code_as_a_bundle_refusal() {
        for (z, code) in zip_errors() {
            let message = z.to_string();
            let b = BundleError::from(z);
            assert_eq!(b.code(), code, "{message}");
            assert_eq!(b.to_string(), message);
            let class = match code {
                "too-many-entries" | "compression-ratio" | "size-limit" => Class::TooLarge,
                "io" => Class::Internal,
                "size-mismatch" => Class::Refused,
                _ => Class::Malformed,
            };
            assert_eq!(b.class(), class, "{message}");
        }
    }

    #[test]
    fn a_zip_refusal_carried_through_io_comes_back_as_itself() {
        for (z, code) in zip_errors() {
            let message = z.to_string();
            let b = BundleError::from_io(z.into_io());
            assert_eq!((b.code(), b.to_string()), (code, message));
        }
        let truncated = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(BundleError::from_io(truncated).code(), "not-a-zip");
        let b = BundleError::from_io(BundleError::Expired("x".into()).into_io());
        assert_eq!(b.code(), "expired");
    }
}
