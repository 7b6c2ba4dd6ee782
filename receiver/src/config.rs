//! `config.json`: the receiver's limits, connection cap and outbound policy, as the data
//! directory holds them ([`crate::datadir`] reads and writes the file). Apart from the data
//! directory so that the infrastructure it configures (`outbound`) need not import it.

use std::path::PathBuf;

use flowpack_shared::zipfmt::Limits;
use serde::{Deserialize, Serialize};

use crate::outbound::AllowEntry;

/// Limits on bundles, as `config.json` holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest bundle, in bytes.
    pub max_bundle_size: u64,
    /// Most entries in a bundle.
    pub max_entries: u64,
    /// Largest total uncompressed size.
    pub max_total_uncompressed: u64,
    /// Largest compression ratio of an entry over 1 MiB.
    pub max_ratio: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_bundle_size: l.max_bundle_size,
            max_entries: l.max_entries,
            max_total_uncompressed: l.max_total_uncompressed,
            max_ratio: l.max_ratio,
        }
    }
}

impl LimitsConfig {
    /// The limits as the bundle reader takes them.
    pub fn to_limits(&self) -> Limits {
        Limits {
            max_bundle_size: self.max_bundle_size,
            max_entries: self.max_entries,
            max_total_uncompressed: self.max_total_uncompressed,
            max_ratio: self.max_ratio,
            ..Limits::default()
        }
    }
}

/// `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bundle limits.
    pub limits: LimitsConfig,
    /// CA certificates (PEM files) trusted for outbound OAuth calls, besides the system's roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Hosts the receiver may send requests to although they are not public addresses, and
    /// over plain `http://` (docs/OUTBOUND.md): `"127.0.0.1"`, `"idp.internal:8443"`.
    pub outbound_allow: Vec<AllowEntry>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: LimitsConfig::default(),
            extra_ca_files: Vec::new(),
            max_connections: 256,
            outbound_allow: Vec::new(),
        }
    }
}
