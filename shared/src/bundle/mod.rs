//! The `flowpack-bundle/1` format: writing ([`write`](mod@write)) and verifying ([`read`](mod@read)) signed bundles.

pub mod error;
pub mod manifest;
pub mod read;
pub mod write;

pub use error::{BundleError, Class};
pub use manifest::{BundleId, BundleKind, EntryKind, EntryPath, Manifest, SecretsState};
