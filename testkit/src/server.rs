//! The receiver in process: `flowpack_receiver::run` on 127.0.0.1:0 in a fresh data directory
//! made by [`crate::init`], with the test's [`Client`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use flowpack_receiver::{App, auth};
use flowpack_shared::keys::SigningKey;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::SealingRecipient;
use serde_json::Value;

use crate::client::{Client, answer};
use crate::project::{Opts, bundle, project};
use crate::{TempData, cp};

/// Lets the receiver send requests to `hosts` (loopback mock servers), as `outbound_allow` in
/// config.json does; use it in `Server::start_with`'s tweak.
pub fn allow_outbound(app: &mut App, hosts: &[&str]) {
    app.edit_config(|c| c.outbound_allow = hosts.iter().map(|h| h.parse().unwrap()).collect());
    app.outbound = flowpack_receiver::outbound::Outbound::new(&app.config()).unwrap();
}

/// A receiver running in this process.
pub struct Server {
    /// The temporary directory; the data directory is its `data`.
    pub dir: tempfile::TempDir,
    /// The application it serves.
    pub app: Arc<App>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The admin token [`crate::init`] made.
    pub admin: String,
    /// The client, which checks every answer against the document.
    pub client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Starts a server in a fresh data directory.
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// Starts a server; `tweak` may change the app (clock, limits) before it serves.
    pub async fn start_with(tweak: impl FnOnce(&mut App)) -> Server {
        let d = TempData::new();
        Server::serve_in(d.dir, d.admin, tweak).await
    }

    /// Serves the data directory `dir/data` (already initialized; `admin` is its admin token).
    pub async fn serve_in(
        dir: tempfile::TempDir,
        admin: String,
        tweak: impl FnOnce(&mut App),
    ) -> Server {
        crate::install_provider();
        let data = dir.path().join("data");
        let mut app = App::load(&data).unwrap();
        tweak(&mut app);
        let app = Arc::new(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(flowpack_receiver::run(listener, app.clone(), None, async {
            let _ = rx.await;
        }));
        Server {
            dir,
            app,
            base,
            admin,
            client: Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.stop_keeping_data().await;
    }

    /// Stops the server; returns its directory and admin token, to serve them again.
    pub async fn stop_keeping_data(mut self) -> (tempfile::TempDir, String) {
        self.signal_stop();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        (self.dir, self.admin)
    }

    /// Sends the shutdown signal without waiting for the server to stop.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// A sender of the shutdown signal, for a hook to fire from elsewhere.
    pub fn take_stop(&mut self) -> tokio::sync::oneshot::Sender<()> {
        self.stop.take().unwrap()
    }

    /// Waits for the server to return from `run` (after its shutdown signal).
    pub async fn stopped(mut self) -> (tempfile::TempDir, String) {
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        (self.dir, self.admin)
    }

    /// Its sealing recipient.
    pub fn recipient(&self) -> SealingRecipient {
        self.app.sealing.recipient()
    }

    /// Trusts `key` for `prefixes` (none: every container).
    pub fn trust(&self, key: &SigningKey, prefixes: &[&str]) {
        let p: Vec<ContainerPath> = prefixes.iter().map(|s| cp(s)).collect();
        flowpack_receiver::trust_signer(&self.app.store, &key.verifying_key().to_pem(), &p)
            .unwrap();
    }

    /// Issues a token with grants like `("/public", "read,write")`.
    pub fn token(&self, name: &str, grants: &[(&str, &str)]) -> String {
        let g: Vec<_> = grants
            .iter()
            .map(|(p, perms)| (cp(p), auth::PermSet::parse(perms).unwrap()))
            .collect();
        auth::create_token(&self.app.store, name, &g)
            .unwrap()
            .to_string()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /v1/deployments` of `bundle`.
    pub async fn deploy(&self, token: &str, bundle: &[u8]) -> (u16, Value) {
        self.deploy_to(token, "/v1/deployments", bundle).await
    }

    /// `POST` of a bundle to `path` (`/v1/deployments` with a query).
    pub async fn deploy_to(&self, token: &str, path: &str, bundle: &[u8]) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/zip")
            .body(bundle.to_vec())
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// `GET path`.
    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    /// `method path` with a JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        answer(r.send().await.unwrap()).await
    }
}

/// A server with a signer trusted for `/`, and the standard project deployed to `/public/orders`
/// with its password sealed.
#[allow(clippy::missing_panics_doc)]
pub async fn deployed(secret: &str) -> (Server, SigningKey, Value) {
    let s = Server::start().await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    let p = project(Some(secret), true, b"mfd-v1");
    let b = bundle(
        &k,
        &Opts::new("/public/orders").sealed(s.recipient()),
        &p.mappings,
        &p.credentials,
    );
    let (st, rec) = s.deploy(&s.admin, &b).await;
    assert_eq!(st, 201, "{rec}");
    (s, k, rec)
}
