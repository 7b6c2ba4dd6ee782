//! flowpack's receiver: verifies signed bundles and applies them atomically to an embedded
//! store, then answers questions about what it holds.
//!
//! Which API to use when:
//! - Create a data directory: [`datadir::init`]; load one: [`App::load`].
//! - Serve: bind a listener and call [`run`] with a shutdown future (tests bind `127.0.0.1:0`).
//! - TLS from PEM files: [`tls_acceptor`]; with a certificate to replace while serving:
//!   [`tls::ServerCert`] and [`tls::acceptor`].
//! - What `serve` runs with (`config.json` and the flags over it) and its reload on `SIGHUP`:
//!   [`reload`]; the log's format: [`logs`]; readiness: [`App::check_store`]; the counters of
//!   `GET /metrics`: [`metrics`].
//! - Administration while serving: [`auth::create_token`] (and `create_token_until`, with an
//!   expiry), [`trust_signer`], and the listing, revoking and removing functions of [`auth`]
//!   that the `token` and `trust` subcommands call; all write to the database, which `serve`
//!   reads on every request.
//! - Key rotation and backups, which work while `serve` runs: [`rotate`], [`backup`]; the key
//!   files themselves: [`keyring`].
//! - The HTTP API: [`api`]; [`api::routes`] lists every route. Refusals: [`problem`]. The
//!   admin web page at `/ui/`: [`ui`].
//! - Domain rules: [`service`]. Storage: only through [`store`], whose `sqlite` folder is the
//!   one place that knows the database engine. ARCHITECTURE.md draws the layers.

#![forbid(unsafe_code)]

pub mod api;
pub mod backup;
pub mod config;
pub mod conns;
pub mod datadir;
pub mod keyring;
pub mod logs;
pub mod metrics;
pub mod outbound;
pub mod problem;
pub mod reload;
pub mod rotate;
pub mod service;
pub mod store;
pub mod tls;
pub mod ui;

pub use service::auth;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowpack_shared::keys::VerifyingKey;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::timefmt::Timestamp;
use hyper_util::rt::TokioIo;
pub use tls::TlsAcceptor;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::datadir::{Config, DataDir};
use crate::service::creds::SecretKeys;
use crate::store::Store;

/// Time source, injectable for tests (the store's type: one clock can serve both).
pub use store::Clock;

/// The server's state: the data directory's keys, configuration and store.
pub struct App {
    /// The data directory.
    pub dir: DataDir,
    /// The database.
    pub store: Store,
    /// The sealing identities: the one bundles are sealed to, and previous ones still
    /// accepted after a rotation (read again when `rotate sealing` replaces their file).
    pub sealing: keyring::Sealing,
    /// At-rest and fingerprint keys.
    pub keys: SecretKeys,
    /// `config.json` as in force: read with [`App::config`]; replaced whole by a reload.
    config: arc_swap::ArcSwap<Config>,
    /// Current time.
    pub clock: Clock,
    /// Outbound HTTP (OAuth token endpoints, verification) and the single-flight locks.
    pub outbound: outbound::Outbound,
    /// How long shutdown waits for in-flight requests before closing their connections.
    pub shutdown_grace: Duration,
    /// How long a request body may go without a byte arriving before it is answered 408.
    pub body_idle: Duration,
    /// How long connections may wait for a request head or stay idle between requests.
    pub timeouts: conns::Timeouts,
    /// How long `GET /readyz` waits for the store before answering `503`.
    pub ready_timeout: Duration,
    /// The counters `GET /metrics` shows.
    pub metrics: metrics::Metrics,
    /// A readiness check is waiting for the store (see `api/ready.rs`).
    pub(crate) probing: std::sync::atomic::AtomicBool,
    /// The database file's identity (device, inode) when it was opened.
    store_file: Option<(u64, u64)>,
    /// Work on blocking threads (everything that touches the store): shutdown waits for it.
    work: TaskTracker,
    /// The admin page's sign-in sessions (in memory).
    pub(crate) ui_sessions: ui::Sessions,
    /// Credential records answered, kept while the store is unchanged.
    pub answers: service::answers::Answers,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("dir", &self.dir).finish()
    }
}

impl App {
    /// Loads an initialized data directory.
    pub fn load(dir: &Path) -> anyhow::Result<App> {
        let dir = DataDir::new(dir);
        let loaded = datadir::load(&dir)?;
        let store_file = file_identity(&dir.store());
        let outbound = outbound::Outbound::new(&loaded.config)?;
        // Opens what the store's generation is read from now, at start, rather than at the
        // first credential read on an async worker.
        let _ = loaded.store.generation();
        Ok(App {
            outbound,
            dir,
            store: loaded.store,
            sealing: loaded.sealing,
            keys: loaded.keys,
            config: arc_swap::ArcSwap::from_pointee(loaded.config),
            clock: store::wall_clock(),
            shutdown_grace: SHUTDOWN_GRACE,
            body_idle: api::BODY_IDLE,
            timeouts: conns::Timeouts::default(),
            ready_timeout: READY_TIMEOUT,
            metrics: metrics::Metrics::new(api::route_labels()),
            probing: std::sync::atomic::AtomicBool::new(false),
            store_file,
            work: TaskTracker::new(),
            ui_sessions: ui::Sessions::default(),
            answers: service::answers::Answers::default(),
        })
    }

    /// The configuration in force (`config.json`, as last loaded or reloaded). Cheap: no lock,
    /// no reference count touched.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts `config` in force, for what is read from it from now on (limits, the connection
    /// cap). The outbound policy is [`App::outbound`]'s: see [`outbound::Outbound::reload`].
    pub fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// Changes the configuration in force with `f` (tests, before serving).
    pub fn edit_config(&self, f: impl FnOnce(&mut Config)) {
        let mut c = Config::clone(&self.config.load());
        f(&mut c);
        self.set_config(c);
    }

    /// Whether the store can serve: a round trip to it on a pooled connection, and its file
    /// still the one opened (a database file removed or replaced under a running receiver
    /// would take its writes nowhere anyone reads). Blocks: run it on a blocking thread.
    pub fn check_store(&self) -> anyhow::Result<()> {
        self.store.db()?.ping()?;
        let path = self.dir.store();
        if file_identity(&path) != self.store_file {
            anyhow::bail!(
                "{} was removed or replaced since the receiver opened it; restart the receiver",
                path.display()
            );
        }
        Ok(())
    }

    /// The current time, from [`App::clock`].
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Runs `f` on a blocking thread, tracked so that [`run`] returns only after it is done.
    pub(crate) fn spawn_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.work.spawn_blocking(f)
    }

    /// Counts as tracked work until dropped: [`run`] returns only after it is (given to the
    /// group committer with each job, see [`store::Store::write_grouped`]).
    pub(crate) fn work_token(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.work.token()
    }
}

/// A file's device and inode, `None` if it cannot be read.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Runs `f` on a blocking thread with a fresh connection to the store, tracked like all store
/// work (see [`App::spawn_blocking`]).
pub(crate) async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App, &mut store::Db) -> Result<T, problem::Problem> + Send + 'static,
) -> Result<T, problem::Problem> {
    let worker = app.clone();
    app.spawn_blocking(move || {
        let app = worker;
        let mut db = app.store.db()?;
        f(&app, &mut db)
    })
    .await
    .map_err(problem::Problem::internal)?
}

/// Trusts a signer's public key (PEM) for container prefixes (`/` when none are given).
/// Returns the key id.
pub fn trust_signer(
    store: &Store,
    pem: &str,
    prefixes: &[ContainerPath],
) -> anyhow::Result<String> {
    let key = VerifyingKey::from_pem(pem).map_err(|e| anyhow::anyhow!("{e}"))?;
    let prefixes = if prefixes.is_empty() {
        vec![ContainerPath::root()]
    } else {
        prefixes.to_vec()
    };
    let id = key.key_id().to_string();
    let mut db = store.db()?;
    let tx = db.write()?;
    tx.upsert_signer(&id, key.as_bytes(), &prefixes)?;
    tx.commit()?;
    Ok(id)
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key, with ring's provider.
/// To replace the certificate while serving, build it with [`tls::acceptor`] from a
/// [`tls::ServerCert`] and call [`tls::ServerCert::reload`].
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    tls::acceptor(Arc::new(tls::ServerCert::load(cert, key)?))
}

/// How long shutdown waits for in-flight requests, by default.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// How long `GET /readyz` waits for the store, by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves HTTP (or HTTPS with `tls`) on `listener` until `shutdown` completes, then stops
/// accepting and waits up to [`App::shutdown_grace`] for in-flight requests to be answered.
/// Connections still open after that are closed mid-request (an upload is dropped with its spool
/// file); a deploy already being applied on a blocking thread cannot be interrupted and commits or
/// rolls back. `run` returns when no connection is served and nothing touches the store.
///
/// Connections are capped (`max_connections`, and what the limit on open files leaves room
/// for, which `run` first raises as far as it may) and timed out as [`conns`] describes: a new
/// connection over the cap closes the longest-idle one, so that a client holding many idle or
/// slow connections cannot keep others from being answered.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let registry = Arc::new(conns::Registry::new(conns::connection_room()));
    let timeouts = app.timeouts;
    // Every connection's task, so that those left after the grace period can be closed.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Some(conn) = registry.admit(app.config().max_connections) else {
            // Every connection is in the middle of a request: this one is closed unserved.
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let transport = api::Transport {
            peer,
            tls: tls.is_some(),
        };
        let watcher = graceful.watcher();
        let registry = registry.clone();
        connections.spawn(async move {
            let tracked = conn.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                // Only a create (PUT) and a deploy (POST) ask how the request came: the
                // extension map is an allocation the hot GET path need not pay.
                if matches!(*req.method(), hyper::Method::PUT | hyper::Method::POST) {
                    req.extensions_mut().insert(transport);
                }
                let guard = tracked.begin_request();
                let app = app.clone();
                async move {
                    let resp = api::handle(app, req, transport.peer).await?;
                    Ok::<_, std::convert::Infallible>(
                        resp.map(|body| conns::Tracked::new(body, guard)),
                    )
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            // The watchdog below times request heads and idle connections (hyper's own timer
            // would restart with every head and bound idle keep-alive connections by it too).
            builder.header_read_timeout(None);
            let stream = conns::Watched::new(stream, conn.clone());
            let serve = async {
                match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn).await
                    }
                    Some(acceptor) => {
                        let tls_stream = match acceptor.accept(stream).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return Ok(());
                            }
                        };
                        let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                        watcher.watch(conn).await
                    }
                }
            };
            // The connection comes first: a request head that arrived with the deadline is
            // served, not cut off.
            tokio::select! {
                biased;
                result = serve => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                why = conn.watchdog(timeouts) => {
                    tracing::debug!(%peer, ?why, "connection closed");
                }
            }
            registry.remove(&conn);
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(app.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
    // Connections are left only when the grace period ran out: closed mid-request.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    // Blocking work cannot be cancelled: a deploy being applied commits or rolls back.
    app.work.close();
    app.work.wait().await;
    Ok(())
}
