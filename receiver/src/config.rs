//! `config.json`: the receiver's limits, connection cap, outbound policy, and how `serve`
//! listens and logs, as the data directory holds them ([`crate::datadir`] writes the file;
//! [`read`] reads it). Apart from the data directory so that the infrastructure it configures
//! (`outbound`) need not import it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use flowpack_shared::zipfmt::Limits;
use serde::{Deserialize, Serialize};

use crate::outbound::AllowEntry;

/// Limits on bundles, as `config.json` holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The address `serve` listens on (`--listen` overrides it); without it, [`DEFAULT_LISTEN`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The TLS certificate chain (PEM), relative to the data directory unless absolute
    /// (`--tls-cert` overrides it). Given with `tls_key` or not at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM), relative to the data directory unless absolute
    /// (`--tls-key` overrides it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// How the log is written (`--log-format` overrides it).
    pub log_format: LogFormat,
    /// Where the receiver keeps its data.
    pub store: StoreKind,
    /// Bundle limits.
    pub limits: LimitsConfig,
    /// CA certificates (PEM files) trusted for outbound OAuth calls, besides the system's roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Hosts the receiver may send requests to although they are not public addresses, and
    /// over plain `http://` (docs/OUTBOUND.md): `"127.0.0.1"`, `"idp.internal:8443"`.
    pub outbound_allow: Vec<AllowEntry>,
    /// Memory the credential answer cache may take, in MiB; 0 turns it off.
    pub answer_cache_mib: usize,
}

/// The address `serve` listens on when neither `--listen` nor `config.json` names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: None,
            tls_cert: None,
            tls_key: None,
            log_format: LogFormat::Text,
            store: StoreKind::Sqlite,
            limits: LimitsConfig::default(),
            extra_ca_files: Vec::new(),
            max_connections: 256,
            outbound_allow: Vec::new(),
            answer_cache_mib: 64,
        }
    }
}

impl Config {
    /// The TLS certificate and key files, relative paths taken from `data_dir`; `None` when
    /// neither is set. Fails when only one of them is.
    pub fn tls_files(&self, data_dir: &Path) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some((data_dir.join(cert), data_dir.join(key)))),
            (Some(_), None) => anyhow::bail!("`tls_cert` is set without `tls_key`: give both"),
            (None, Some(_)) => anyhow::bail!("`tls_key` is set without `tls_cert`: give both"),
        }
    }
}

/// How the log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event (`key=value` fields).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the receiver keeps its data: `"sqlite"` (the data directory's `store.db`), or a
/// PostgreSQL URL (`postgres://user@host:port/database`) that several receivers may share.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// SQLite in the data directory.
    #[default]
    Sqlite,
    /// A PostgreSQL database.
    Postgres(StoreUrl),
}

/// A database URL: it may carry a password, so it is never shown (`Debug` hides it) and is
/// wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(zeroize::Zeroizing<String>);

impl StoreUrl {
    /// A PostgreSQL URL (`postgres://` or `postgresql://`); `None` for anything else.
    pub fn postgres(url: &str) -> Option<StoreUrl> {
        let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
        (lower.starts_with("postgres://") || lower.starts_with("postgresql://"))
            .then(|| StoreUrl(zeroize::Zeroizing::new(url.to_owned())))
    }

    /// The URL itself, to connect with: never to be logged or shown.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreUrl(..)")
    }
}

impl Serialize for StoreKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StoreKind::Sqlite => s.serialize_str("sqlite"),
            StoreKind::Postgres(url) => s.serialize_str(url.expose()),
        }
    }
}

impl<'de> Deserialize<'de> for StoreKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StoreKind, D::Error> {
        // The value is never quoted back: a database URL may carry a password.
        let text = zeroize::Zeroizing::new(String::deserialize(d)?);
        if *text == "sqlite" {
            return Ok(StoreKind::Sqlite);
        }
        if let Some(url) = StoreUrl::postgres(&text) {
            return Ok(StoreKind::Postgres(url));
        }
        Err(serde::de::Error::custom(
            "`store` is \"sqlite\" or a PostgreSQL URL, postgres://user@host:port/database (its value is not shown: it may be a database URL)",
        ))
    }
}

/// Reads `config.json` at `path` (a missing file is the default configuration). An error
/// names the file, and the field where it is (`limits.max_entries: …`).
pub fn read(path: &Path) -> anyhow::Result<Config> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    parse(&bytes).with_context(|| format!("reading {}", path.display()))
}

/// Parses the text of `config.json`.
pub fn parse(bytes: &[u8]) -> anyhow::Result<Config> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if at.is_empty() || at == "." {
            anyhow::anyhow!("{inner}")
        } else {
            anyhow::anyhow!("`{at}`: {inner}")
        }
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        match parse(text.as_bytes()) {
            Ok(c) => panic!("{text} parsed: {c:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn new_keys_parse_and_default() {
        let c = parse(br#"{"listen": "0.0.0.0:8443", "tls_cert": "tls/cert.pem", "tls_key": "/etc/k.pem", "log_format": "json", "store": "sqlite"}"#)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            c.listen,
            Some("0.0.0.0:8443".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.tls_files(Path::new("/data"))
                .unwrap_or_else(|e| panic!("{e:#}")),
            Some((
                PathBuf::from("/data/tls/cert.pem"),
                PathBuf::from("/etc/k.pem")
            ))
        );
        let d = parse(b"{}").unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(d, Config::default());
        // What `init` writes parses back to the same.
        let written = serde_json::to_string_pretty(&Config::default()).unwrap_or_default();
        assert_eq!(parse(written.as_bytes()).ok(), Some(Config::default()));
        assert!(!written.contains("null"), "{written}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = error(r#"{"log_fromat": "json"}"#);
        assert!(e.contains("log_fromat"), "{e}");
        let e = error(r#"{"limits": {"max_entires": 1}}"#);
        assert!(e.contains("limits.max_entires"), "{e}");
        let e = error(r#"{"log_format": "xml"}"#);
        assert!(e.contains("`log_format`") && e.contains("xml"), "{e}");
    }

    #[test]
    fn a_postgres_store_parses_and_is_never_shown() {
        let c = parse(br#"{"store": "postgres://flow:hunter2-canary@db.internal/flowpack"}"#)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let StoreKind::Postgres(url) = &c.store else {
            panic!("not a PostgreSQL store: {:?}", c.store);
        };
        assert_eq!(
            url.expose(),
            "postgres://flow:hunter2-canary@db.internal/flowpack"
        );
        assert!(!format!("{c:?}").contains("hunter2-canary"));
        // What `init --store` writes parses back to the same.
        let written = serde_json::to_string(&c).unwrap_or_default();
        assert_eq!(parse(written.as_bytes()).ok(), Some(c));
        let e = error(r#"{"store": "mysql://u:hunter2-canary@db/x"}"#);
        assert!(
            e.contains("`store`") && !e.contains("hunter2-canary"),
            "{e}"
        );
    }

    #[test]
    fn one_tls_file_without_the_other_is_refused() {
        let c = parse(br#"{"tls_cert": "c.pem"}"#).unwrap_or_else(|e| panic!("{e:#}"));
        let e = c
            .tls_files(Path::new("/d"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("tls_key"), "{e}");
    }
}
