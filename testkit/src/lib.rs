#![forbid(unsafe_code)]
#![allow(missing_debug_implementations)]
//! Test support for flowpack, shared by the receiver's tests and the end-to-end tests.
//!
//! - [`init`]: the one place a test receiver's data directory is made; [`TempData`] is one in
//!   a temporary directory.
//! - [`Server`]: a receiver in process (`flowpack_receiver::run` on 127.0.0.1:0), for tests
//!   that change its [`flowpack_receiver::App`] (clock, limits) or call its store.
//! - [`process`]: the real binary, `serve` as a child process ([`Serving`], [`Receiver`]).
//! - [`Client`]: the one HTTP client (reqwest). Every answer it receives is read whole and
//!   checked against `receiver/src/api/openapi.json` ([`openapi`]); a mismatch panics naming
//!   the method, path, status and schema error. [`http`]/[`try_http`] are its blocking front
//!   end for synchronous tests.
//! - [`project`](mod@project): the standard project and the bundles built from it.
//! - [`store`]: the storage engine the suite runs on (`FLOWPACK_TEST_STORE`); [`stored`]:
//!   what a receiver's store holds, read directly, on either engine.

use std::path::{Path, PathBuf};

pub mod client;
pub mod logs;
pub mod openapi;
pub mod process;
pub mod project;
pub mod server;
pub mod store;
pub mod stored;

pub use client::{Client, RequestBuilder, Response, answer, http, try_http};
pub use logs::Logs;
pub use process::{Receiver, Serving, serve, serve_with};
pub use project::*;
pub use server::{Server, allow_outbound, deployed};
pub use stored::Stored;

use flowpack_shared::names::ContainerPath;

/// Installs ring as rustls's process-wide provider (reqwest is built without one).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A container path; panics on a bad one.
#[allow(clippy::unwrap_used)]
pub fn cp(s: &str) -> ContainerPath {
    ContainerPath::parse(s).unwrap()
}

/// Writes `config` as the `config.json` of the data directory `data`, keeping the store the
/// file names now unless `config` names one: a test sets what it tests, on the suite's engine.
pub fn write_config(data: &Path, config: &serde_json::Value) {
    let file = data.join("config.json");
    let mut config = config.clone();
    let now: serde_json::Value = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let (Some(store), Some(obj)) = (now.get("store"), config.as_object_mut()) {
        obj.entry("store").or_insert_with(|| store.clone());
    }
    let bytes =
        serde_json::to_vec_pretty(&config).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    std::fs::write(&file, bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    fn fail<T>(p: &Path, e: std::io::Error) -> T {
        panic!("copying {}: {e}", p.display())
    }
    std::fs::create_dir_all(to).unwrap_or_else(|e| fail(to, e));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| fail(from, e)) {
        let e = e.unwrap_or_else(|e| fail(from, e));
        let target = to.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap_or_else(|err| fail(&e.path(), err));
        }
    }
}

/// Copies the data directory `from` of a receiver that is not running to `to`, its store
/// included: on PostgreSQL, a new database made from the old one, which the copy's
/// `config.json` names.
pub fn copy_data(from: &Path, to: &Path) {
    copy_dir(from, to);
    if let Stored::Postgres(url) = Stored::of(from) {
        let copy = store::copy_database(&url);
        let file = to.join("config.json");
        let mut config: serde_json::Value = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| panic!("{}: not JSON", file.display()));
        config["store"] = serde_json::Value::String(copy);
        write_config(to, &config);
    }
}

/// What [`init`] made.
#[derive(Debug, Clone)]
pub struct Init {
    /// A token with every grant on `/`.
    pub admin_token: String,
    /// The receiver's sealing recipient (`age1…`).
    pub recipient: String,
}

/// Makes the data directory `data` of a test receiver, as `flowpack-receiver init` does, with
/// the store of the suite's engine ([`store::engine`]).
///
/// Every receiver the tests start (in process or as a child process) gets its data directory
/// here, so this is the one place that chooses the engine the suite runs on.
pub fn init(data: &Path) -> Init {
    use flowpack_receiver::{config::StoreKind, config::StoreUrl, datadir};
    let kind = match store::engine() {
        store::Engine::Embedded => StoreKind::Sqlite,
        store::Engine::Postgres(server) => {
            let url = store::new_database(&server);
            StoreKind::Postgres(
                StoreUrl::postgres(&url)
                    .unwrap_or_else(|| panic!("FLOWPACK_TEST_POSTGRES is not a PostgreSQL URL")),
            )
        }
    };
    let made = datadir::init_with(&datadir::DataDir::new(data), &kind)
        .unwrap_or_else(|e| panic!("init {}: {e:#}", data.display()));
    Init {
        admin_token: made.admin_token.to_string(),
        recipient: made.sealing_recipient,
    }
}

/// A data directory made by [`init`] at `dir/data`, in a temporary directory removed on drop.
#[derive(Debug)]
pub struct TempData {
    /// The temporary directory.
    pub dir: tempfile::TempDir,
    /// `dir/data`.
    pub path: PathBuf,
    /// Its admin token.
    pub admin: String,
    /// Its sealing recipient.
    pub recipient: String,
}

impl TempData {
    /// A fresh one.
    #[allow(clippy::expect_used)]
    pub fn new() -> TempData {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("data");
        let made = init(&path);
        TempData {
            dir,
            path,
            admin: made.admin_token,
            recipient: made.recipient,
        }
    }
}

impl Default for TempData {
    fn default() -> Self {
        TempData::new()
    }
}
