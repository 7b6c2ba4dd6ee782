//! Every refusal the receiver answers, as data: [`ProblemCode`] lists each stable problem code
//! once (the string clients match on, stored in the audit trail), and [`Problem`] is a refusal
//! with its HTTP status, code, safe detail and extension members.
//!
//! This module is a leaf: it imports nothing of the crate, so every layer (the API, the
//! services, the store) can return a `Problem` without importing a layer above it. Rendering a
//! `Problem` as `application/problem+json` is the API's business (`api::problem_response`).
//! Domain errors convert to `Problem` in one place each: bundle refusals here
//! ([`From<BundleError>`]), store failures in `store`.

use std::fmt::{self, Display};

use flowpack_shared::bundle::{BundleError, Class};
use flowpack_shared::names::ContainerPath;
use flowpack_shared::zipfmt::ZipError;
use hyper::StatusCode;
use serde_json::Value;

/// Declares [`ProblemCode`] with each variant's string, so that each string is written once.
macro_rules! problem_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, )*) => {
        /// A stable, machine-readable problem code: the `code` member of a problem document
        /// (and the last part of its `type`). Clients and the audit trail rely on these
        /// strings: never change one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ProblemCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ProblemCode] = &[$(ProblemCode::$variant,)*];

            /// The code's stable string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( ProblemCode::$variant => $code, )*
                }
            }
        }
    };
}

problem_codes! {
    // Requests: authentication, routing, parameters and bodies.
    /// No valid bearer token.
    Unauthorized = "unauthorized",
    /// The token lacks a grant.
    Forbidden = "forbidden",
    /// No such endpoint or object.
    NotFound = "not-found",
    /// The path exists, the method does not (the answer lists the allowed ones).
    MethodNotAllowed = "method-not-allowed",
    /// A path that is not a container or object path.
    BadPath = "bad-path",
    /// An unknown, repeated or malformed query parameter.
    BadQuery = "bad-query",
    /// A JSON body that does not parse.
    BadJson = "bad-json",
    /// A JSON body of the wrong shape.
    BadRequestBody = "bad-request-body",
    /// Reading the request body failed.
    BodyRead = "body-read",
    /// The request body stalled.
    BodyTimeout = "body-timeout",
    /// A body over the limit (also a bundle's manifest over its limit).
    TooLarge = "too-large",
    /// A deploy whose body is not a bundle.
    UnsupportedMediaType = "unsupported-media-type",
    /// A fault of the receiver's own; the detail is generic, the log has the cause.
    Internal = "internal",
    /// The receiver cannot serve now: its store did not answer a readiness check.
    NotReady = "not-ready",
    /// The store's database cannot be reached (a shared PostgreSQL database that is down or
    /// unreachable); the request may be retried.
    StoreUnavailable = "store-unavailable",

    // Deployments.
    /// A bundle older than what is deployed.
    Stale = "stale",
    /// A bundle id seen before with other content.
    BundleIdConflict = "bundle-id-conflict",
    /// A credential of a bundle deployed with verification failed it.
    CredentialVerificationFailed = "credential-verification-failed",
    /// A rollback of a deployment whose objects were not recorded (made by an older version).
    NotRestorable = "not-restorable",

    // Credentials.
    /// A credential that a mapping still references.
    CredentialInUse = "credential-in-use",
    /// A create of a credential that already exists (change it with PATCH).
    Exists = "exists",
    /// Secrets in clear sent over a channel that may not carry them (neither TLS nor loopback).
    SecretsInClear = "secrets-in-clear",
    /// A PATCH of a field that cannot be changed.
    ReadOnlyField = "read-only-field",
    /// A record that breaks a model rule (also a bundle's payload record).
    BadRecord = "bad-record",
    /// A resolve names a parameter the mapping does not have.
    UnknownParameter = "unknown-parameter",
    /// A credential of another type than the mapping was deployed with.
    TypeMismatch = "type-mismatch",
    /// A credential without its secrets.
    MissingSecrets = "missing-secrets",
    /// A credential that does not allow the usage asked for.
    UsageNotAllowed = "usage-not-allowed",
    /// A malformed step parameter of a resolve.
    BadStepParameter = "bad-step-parameter",
    /// A mapping's credential that is not stored.
    MissingCredential = "missing-credential",
    /// A step's reference to a credential that does not exist.
    CredentialNotFound = "credential-not-found",

    // Outbound requests and OAuth.
    /// The outbound policy refuses the destination.
    OutboundNotAllowed = "outbound-not-allowed",
    /// The token endpoint refused the request.
    TokenEndpointError = "token-endpoint-error",
    /// No usable answer from the token endpoint.
    TokenEndpointUnreachable = "token-endpoint-unreachable",
    /// An OAuth operation on a credential that is not an OAuth 2.0 one.
    NotOauth2 = "not-oauth2",
    /// The OAuth credential lacks what the request needs.
    OauthMisconfigured = "oauth-misconfigured",
    /// An authorization-code credential that needs a user's authorization first.
    NeedsAuthorization = "needs-authorization",
    /// An implicit-grant credential asked for a token.
    ImplicitGrant = "implicit-grant",
    /// An implicit-grant credential asked to authorize.
    ImplicitGrantRefused = "implicit-grant-refused",
    /// A callback whose state is unknown or used.
    InvalidState = "invalid-state",
    /// A callback whose state expired.
    StateExpired = "state-expired",
    /// The user or the authorization server denied the authorization.
    AuthorizationDenied = "authorization-denied",
    /// A callback without a code.
    BadCallback = "bad-callback",
    /// The credential changed while it was being authorized.
    CredentialChanged = "credential-changed",

    // Bundle refusals (one per `BundleError` variant; see `From<BundleError>`).
    /// Not a ZIP archive.
    NotAZip = "not-a-zip",
    /// Bytes before the first entry.
    PrependedData = "prepended-data",
    /// Bytes after the end record.
    TrailingData = "trailing-data",
    /// An archive or entry comment.
    ArchiveComment = "archive-comment",
    /// More than one end record.
    MultipleEndRecords = "multiple-end-records",
    /// Inconsistent ZIP64 records.
    Zip64Invalid = "zip64-invalid",
    /// Local and central headers disagree.
    HeaderMismatch = "header-mismatch",
    /// Entries that overlap or leave gaps.
    EntryLayout = "entry-layout",
    /// A compression method other than stored or deflate.
    UnsupportedCompression = "unsupported-compression",
    /// An encrypted entry.
    EncryptedEntry = "encrypted-entry",
    /// A ZIP feature outside the canonical subset.
    UnsupportedFeature = "unsupported-feature",
    /// A directory, link or other non-regular entry.
    NotRegularFile = "not-regular-file",
    /// An entry name outside the rules.
    BadEntryName = "bad-entry-name",
    /// An entry name given twice.
    DuplicateEntry = "duplicate-entry",
    /// Entries out of the canonical order.
    EntryOrder = "entry-order",
    /// A CRC that does not match.
    CrcMismatch = "crc-mismatch",
    /// A signature entry of the wrong form.
    BadSignatureFormat = "bad-signature-format",
    /// More entries than allowed.
    TooManyEntries = "too-many-entries",
    /// An entry that inflates too much.
    CompressionRatio = "compression-ratio",
    /// Over a size limit.
    SizeLimit = "size-limit",
    /// A signature that does not verify.
    BadSignature = "bad-signature",
    /// A signer that is not trusted.
    UnknownSigner = "unknown-signer",
    /// A signer not trusted for the target container.
    SignerNotAllowed = "signer-not-allowed",
    /// A manifest that does not parse or breaks a rule.
    BadManifest = "bad-manifest",
    /// A target container that is no container path.
    BadContainer = "bad-container",
    /// An entry the manifest lists is missing.
    MissingEntry = "missing-entry",
    /// An entry the manifest does not list.
    ExtraEntry = "extra-entry",
    /// An entry of another size than the manifest says.
    SizeMismatch = "size-mismatch",
    /// An entry of another digest than the manifest says.
    DigestMismatch = "digest-mismatch",
    /// A bundle past its expiry.
    Expired = "expired",
    /// A bundle not valid yet.
    NotYetValid = "not-yet-valid",
    /// A mapping's files and entries differ.
    MappingFilesMismatch = "mapping-files-mismatch",
    /// Sealed to another receiver.
    SealRecipientMismatch = "seal-recipient-mismatch",
    /// Sealed only to a previous sealing key of this receiver that has retired.
    SealRecipientRetired = "seal-recipient-retired",
    /// A sealed value that does not open.
    SealOpenFailed = "seal-open-failed",
    /// Reading the bundle failed (answered as `internal`; kept for the audit trail).
    Io = "io",
}

impl Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&BundleError> for ProblemCode {
    /// The code of a bundle refusal. The match is exhaustive, so a new refusal in `shared`
    /// does not compile here until it has a code.
    fn from(e: &BundleError) -> ProblemCode {
        use BundleError as B;
        use ProblemCode as P;
        match e {
            B::Zip(z) => z.into(),
            B::EntryOrder(_) => P::EntryOrder,
            B::BadSignatureFormat(_) => P::BadSignatureFormat,
            B::ManifestTooLarge(..) => P::TooLarge,
            B::BadSignature(_) => P::BadSignature,
            B::UnknownSigner(_) => P::UnknownSigner,
            B::SignerNotAllowed(..) => P::SignerNotAllowed,
            B::BadManifest(_) => P::BadManifest,
            B::BadContainer(_) => P::BadContainer,
            B::MissingEntry(_) => P::MissingEntry,
            B::ExtraEntry(_) => P::ExtraEntry,
            B::DigestMismatch(_) => P::DigestMismatch,
            B::Expired(_) => P::Expired,
            B::NotYetValid(_) => P::NotYetValid,
            B::BadRecord(_) => P::BadRecord,
            B::MappingFilesMismatch(..) => P::MappingFilesMismatch,
            B::SealRecipientMismatch(..) => P::SealRecipientMismatch,
            B::SealOpenFailed(_) => P::SealOpenFailed,
            B::Io(_) => P::Io,
        }
    }
}

impl From<&ZipError> for ProblemCode {
    /// The code of a ZIP refusal; exhaustive, as for bundle refusals.
    fn from(e: &ZipError) -> ProblemCode {
        use ProblemCode as P;
        use ZipError as Z;
        match e {
            Z::NotAZip(_) => P::NotAZip,
            Z::PrependedData(_) => P::PrependedData,
            Z::TrailingData(_) => P::TrailingData,
            Z::ArchiveComment(_) => P::ArchiveComment,
            Z::MultipleEndRecords => P::MultipleEndRecords,
            Z::Zip64Invalid(_) => P::Zip64Invalid,
            Z::HeaderMismatch(..) => P::HeaderMismatch,
            Z::EntryLayout(_) => P::EntryLayout,
            Z::UnsupportedCompression(..) => P::UnsupportedCompression,
            Z::EncryptedEntry(_) => P::EncryptedEntry,
            Z::UnsupportedFeature(..) => P::UnsupportedFeature,
            Z::NotRegularFile(_) => P::NotRegularFile,
            Z::BadEntryName(..) => P::BadEntryName,
            Z::DuplicateEntry(_) => P::DuplicateEntry,
            Z::CrcMismatch(_) => P::CrcMismatch,
            Z::TooManyEntries(..) => P::TooManyEntries,
            Z::CompressionRatio(..) => P::CompressionRatio,
            Z::SizeLimit(_) => P::SizeLimit,
            Z::SizeMismatch(..) => P::SizeMismatch,
            Z::TooFewEntries => P::EntryOrder,
            Z::Io(_) => P::Io,
        }
    }
}

/// A refusal: status, stable code, safe detail, optional extension members.
#[derive(Debug)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: ProblemCode,
    /// Human-readable detail; never contains a secret.
    pub detail: String,
    /// Extension members of the problem document.
    pub extra: serde_json::Map<String, Value>,
}

impl Problem {
    /// A problem with a status, code and detail.
    pub fn new(status: StatusCode, code: ProblemCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
            extra: serde_json::Map::new(),
        }
    }
    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
    /// 400.
    pub fn bad_request(code: ProblemCode, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, code, detail)
    }
    /// 401.
    pub fn unauthorized() -> Self {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            ProblemCode::Unauthorized,
            "a valid bearer token is required (Authorization: Bearer fpt_…)",
        )
    }
    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, ProblemCode::Forbidden, detail)
    }
    /// 403 for a missing grant (`perm`, e.g. `read`) on a container.
    pub fn lacks(perm: &str, path: &ContainerPath) -> Self {
        Problem::forbidden(format!("you lack `{perm}` on {path}"))
    }
    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, ProblemCode::NotFound, detail)
    }
    /// 409.
    pub fn conflict(code: ProblemCode, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, code, detail)
    }
    /// 422.
    pub fn unprocessable(code: ProblemCode, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }
    /// 413.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, ProblemCode::TooLarge, detail)
    }
    /// 502: an upstream server (a token endpoint) failed us.
    pub fn bad_gateway(code: ProblemCode, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_GATEWAY, code, detail)
    }
    /// 503: the store's database cannot be reached; the cause goes to the log only.
    pub fn store_unavailable(cause: impl Display) -> Self {
        tracing::error!(error = %cause, "the store's database cannot be reached");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ProblemCode::StoreUnavailable,
            "the receiver cannot reach its database; retry later",
        )
    }
    /// 500: the cause goes to the log only.
    pub fn internal(cause: impl Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::Internal,
            "an internal error occurred; the receiver's log has the details",
        )
    }
}

impl From<BundleError> for Problem {
    /// A bundle refusal: its class decides the status (a malformed archive is the client's
    /// 400, a limit 413, a verification refusal 422); a failure of our own is a generic 500.
    fn from(e: BundleError) -> Self {
        let status = match e.class() {
            Class::Internal => return Problem::internal(format!("reading a bundle: {e}")),
            Class::Malformed => StatusCode::BAD_REQUEST,
            Class::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Class::Refused => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem::new(status, ProblemCode::from(&e), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ProblemCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} is declared twice");
        }
    }

    #[test]
    fn bundle_codes_are_the_bundle_errors_own() {
        let samples = [
            BundleError::Zip(ZipError::NotAZip("x".into())),
            BundleError::ManifestTooLarge(2, 1),
            BundleError::BadRecord("x".into()),
            BundleError::SignerNotAllowed("a".into(), "b".into(), "c".into()),
            BundleError::Io(std::io::Error::other("x")),
        ];
        for e in &samples {
            assert_eq!(ProblemCode::from(e).as_str(), e.code());
        }
    }

    #[test]
    fn bundle_classes_map_to_statuses() {
        let p = Problem::from(BundleError::Zip(ZipError::NotAZip("x".into())));
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        let p = Problem::from(BundleError::ManifestTooLarge(2, 1));
        assert_eq!(
            (p.status, p.code),
            (StatusCode::PAYLOAD_TOO_LARGE, ProblemCode::TooLarge)
        );
        let p = Problem::from(BundleError::Expired("x".into()));
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        let p = Problem::from(BundleError::Io(std::io::Error::other("x")));
        assert_eq!(
            (p.status, p.code),
            (StatusCode::INTERNAL_SERVER_ERROR, ProblemCode::Internal)
        );
    }
}
