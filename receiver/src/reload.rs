//! What `serve` runs with — `config.json` with the command line's flags over it — and the
//! reload that `SIGHUP` asks for.
//!
//! A reload reads `config.json` and the TLS certificate and key again, each as a whole: a file
//! that cannot be read or is invalid leaves what it configures as it was, and the error is
//! logged naming the file. Applied at once (to the next request, connection or handshake):
//! `limits`, `max_connections`, `outbound_allow`, `extra_ca_files`, `answer_cache_mib`,
//! `log_format`, and the
//! certificate (read from the files `tls_cert` and `tls_key` name now). Needing a restart, with
//! a warning when they changed: `listen`, `store`, and turning TLS on or off. Connections
//! open during a reload are not touched: a request in flight completes as it began.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::App;
use crate::config::{self, Config, DEFAULT_LISTEN, LogFormat, StoreKind};
use crate::metrics::ReloadOutcome;
use crate::tls::ServerCert;

/// What `serve`'s command line says; each flag given overrides `config.json`'s key.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--tls-cert` and `--tls-key` (relative to the working directory, as usual for a
    /// command line).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// What the flags and `config.json` decide together.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The certificate chain and key files; `None`: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How the log is written.
    pub log_format: LogFormat,
    /// Where the data is kept.
    pub store: StoreKind,
}

impl Settings {
    /// The flags over `config` (whose relative TLS paths are taken from `data_dir`).
    pub fn of(config: &Config, flags: &Flags, data_dir: &Path) -> anyhow::Result<Settings> {
        let default: SocketAddr = DEFAULT_LISTEN
            .parse()
            .map_err(|e| anyhow::anyhow!("{DEFAULT_LISTEN}: {e}"))?;
        let tls = match &flags.tls {
            Some(files) => Some(files.clone()),
            None => config.tls_files(data_dir)?,
        };
        Ok(Settings {
            listen: flags.listen.or(config.listen).unwrap_or(default),
            tls,
            log_format: flags.log_format.unwrap_or(config.log_format),
            store: config.store.clone(),
        })
    }
}

/// Reloads a serving receiver's configuration and certificate.
#[derive(Debug)]
pub struct Reloader {
    app: Arc<App>,
    cert: Option<Arc<ServerCert>>,
    flags: Flags,
    /// What the server runs with: the parts that need a restart as it started, the TLS files
    /// as last reloaded.
    running: Settings,
}

impl Reloader {
    /// A reloader for `app`, serving with `running` (and `cert` when it serves TLS).
    pub fn new(
        app: Arc<App>,
        cert: Option<Arc<ServerCert>>,
        flags: Flags,
        running: Settings,
    ) -> Reloader {
        Reloader {
            app,
            cert,
            flags,
            running,
        }
    }

    /// Reads `config.json` and the certificate again and applies what may be applied while
    /// serving; logs what was done, and every error naming its file.
    pub fn reload(&mut self) -> ReloadOutcome {
        let path = self.app.dir.config();
        let mut failed = false;
        let mut tls_files = self.running.tls.clone();
        match self.read_config(&path) {
            Ok((config, settings)) => {
                self.warn_restart_needed(&settings);
                if self.running.tls.is_some() && settings.tls.is_some() {
                    tls_files = settings.tls.clone();
                    self.running.tls = settings.tls.clone();
                }
                crate::logs::set_format(settings.log_format);
                self.app.set_config(config);
                tracing::info!(file = %path.display(), "reload: configuration applied");
            }
            Err(e) => {
                failed = true;
                tracing::error!(
                    file = %path.display(),
                    error = format!("{e:#}"),
                    "reload: configuration not applied; the one in force is kept"
                );
            }
        }
        if let (Some(cert), Some((c, k))) = (&self.cert, &tls_files) {
            match cert.reload(c, k) {
                Ok(()) => tracing::info!(
                    cert = %c.display(),
                    key = %k.display(),
                    "reload: TLS certificate applied to new connections"
                ),
                Err(e) => {
                    failed = true;
                    tracing::error!(
                        cert = %c.display(),
                        key = %k.display(),
                        error = format!("{e:#}"),
                        "reload: TLS certificate not applied; the one in force is kept"
                    );
                }
            }
        }
        let outcome = if failed {
            ReloadOutcome::Failed
        } else {
            ReloadOutcome::Ok
        };
        self.app.metrics.reload(outcome);
        outcome
    }

    /// `config.json` read and checked, the outbound policy it sets already in force (the
    /// one step that can fail once the file is read); nothing applied on an error.
    fn read_config(&self, path: &Path) -> anyhow::Result<(Config, Settings)> {
        let config = config::read(path)?;
        let settings = Settings::of(&config, &self.flags, self.app.dir.root())
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        self.app.outbound.reload(&config)?;
        Ok((config, settings))
    }

    fn warn_restart_needed(&self, new: &Settings) {
        let was = &self.running;
        if new.listen != was.listen {
            tracing::warn!(
                listening = %was.listen,
                configured = %new.listen,
                "reload: `listen` changed; it takes effect when the receiver is restarted"
            );
        }
        if new.store != was.store {
            tracing::warn!(
                "reload: `store` changed; it takes effect when the receiver is restarted"
            );
        }
        if new.tls.is_some() != was.tls.is_some() {
            tracing::warn!(
                "reload: TLS was turned on or off; that takes effect when the receiver is restarted"
            );
        }
    }
}
