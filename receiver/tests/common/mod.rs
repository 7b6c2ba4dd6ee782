//! Test harness: a receiver on 127.0.0.1:0 in a fresh data directory, bundles built with the
//! shared writer, and a reqwest client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod bin;

use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use flowpack_receiver::{App, auth, datadir};
use flowpack_shared::bundle::BundleKind;
use flowpack_shared::bundle::write::{BundleOptions, MappingInput, write_bundle};
use flowpack_shared::keys::SigningKey;
use flowpack_shared::model::credential::{Credential, RecordForm};
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::SealingRecipient;
use flowpack_shared::timefmt::Timestamp;
use serde_json::Value;

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Lets the receiver send requests to `hosts` (loopback mock servers), as `outbound_allow` in
/// config.json does; use it in `Server::start_with`'s tweak.
pub fn allow_outbound(app: &mut App, hosts: &[&str]) {
    app.edit_config(|c| c.outbound_allow = hosts.iter().map(|h| h.parse().unwrap()).collect());
    app.outbound = flowpack_receiver::outbound::Outbound::new(&app.config()).unwrap();
}

pub fn cp(s: &str) -> ContainerPath {
    ContainerPath::parse(s).unwrap()
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub app: Arc<App>,
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// Starts a server; `tweak` may change the app (clock, limits) before it serves.
    pub async fn start_with(tweak: impl FnOnce(&mut App)) -> Server {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let init = datadir::init(&datadir::DataDir::new(&data)).unwrap();
        Server::serve_in(dir, init.admin_token.to_string(), tweak).await
    }

    /// Serves the data directory `dir/data` (already initialized; `admin` is its admin token).
    pub async fn serve_in(
        dir: tempfile::TempDir,
        admin: String,
        tweak: impl FnOnce(&mut App),
    ) -> Server {
        install_provider();
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
            client: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

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

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

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

/// Status and JSON body (Null when empty); asserts problem+json on errors.
pub async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = r.bytes().await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "{status} {v}");
        for k in ["type", "title", "status", "detail", "code"] {
            assert!(v.get(k).is_some(), "problem lacks {k}: {v}");
        }
        assert_eq!(v["status"], status);
    }
    (status, v)
}

pub fn credential(json: Value) -> Credential {
    let Value::Object(m) = json else { panic!() };
    Credential::from_map("test", &m, RecordForm::SourceFile).unwrap()
}

/// A small project: mapping `orders-to-erp` with two files and credential `erp`.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub mappings: Vec<MappingInput>,
    pub credentials: Vec<Credential>,
}

pub fn mapping_input(dir: &Path, def: Value, files: &[(&str, &[u8])]) -> MappingInput {
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    MappingInput {
        mapping: Mapping::parse("test", def.to_string().as_bytes()).unwrap(),
        dir: dir.to_owned(),
    }
}

/// The standard project: mapping `orders-to-erp` (files `orders.mfd`, `schemas/order.xsd`)
/// referencing credential `erp` (password). `secret` is the password, `include` its flag.
pub fn project(secret: Option<&str>, include: bool, mfd: &[u8]) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let m = mapping_input(
        dir.path(),
        serde_json::json!({
            "name": "orders-to-erp", "description": "orders",
            "parameters": [
                {"name": "input", "type": "file", "required": true},
                {"name": "erp.credentials", "type": "credential", "credential": "erp"}
            ],
            "files": ["orders.mfd", "schemas/order.xsd"]
        }),
        &[("orders.mfd", mfd), ("schemas/order.xsd", b"<xsd/>")],
    );
    let mut c = serde_json::json!({
        "name": "erp", "type": "password", "username": "svc",
        "allow_usage_for": ["http"], "include_in_deployment": include,
        "description": "zzzz"
    });
    if let Some(s) = secret {
        c["password"] = Value::String(s.into());
    }
    Project {
        dir,
        mappings: vec![m],
        credentials: vec![credential(c)],
    }
}

pub struct Opts {
    pub kind: BundleKind,
    pub container: &'static str,
    pub created_at: Timestamp,
    pub expires_in: time::Duration,
    pub seal_to: Option<SealingRecipient>,
}

impl Opts {
    pub fn new(container: &'static str) -> Opts {
        Opts {
            kind: BundleKind::Deployment,
            container,
            created_at: Timestamp::now(),
            expires_in: time::Duration::days(7),
            seal_to: None,
        }
    }
    pub fn sealed(mut self, r: SealingRecipient) -> Opts {
        self.seal_to = Some(r);
        self
    }
    pub fn created(mut self, t: Timestamp) -> Opts {
        self.created_at = t;
        self
    }
}

pub fn bundle(
    key: &SigningKey,
    opts: &Opts,
    mappings: &[MappingInput],
    creds: &[Credential],
) -> Vec<u8> {
    let o = BundleOptions {
        kind: opts.kind,
        target_container: cp(opts.container),
        environment: None,
        created_at: opts.created_at,
        expires_at: opts.created_at.plus(opts.expires_in),
        allow_plaintext: opts.seal_to.is_none(),
        seal_to: opts.seal_to.clone().into_iter().collect(),
        level: 6,
    };
    let mut out = Cursor::new(Vec::new());
    write_bundle(&mut out, key, &o, mappings, creds, &mut |_, _| {}).unwrap();
    out.into_inner()
}

/// A bundle's entries, in order: (name, inflated bytes).
pub fn entries_of(b: &[u8]) -> Vec<(String, Vec<u8>)> {
    use flowpack_shared::zipfmt::{Limits, ZipReader};
    let mut zr = ZipReader::open(Cursor::new(b.to_vec()), &Limits::default()).unwrap();
    let mut entries = Vec::new();
    while let Some(mut e) = zr.next_entry().unwrap() {
        let name = e.entry().name.clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        entries.push((name, data));
    }
    entries
}

/// An archive of `entries`, in order, deflated.
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    use flowpack_shared::zipfmt::{Method, ZipWriter};
    let mut zw = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        zw.add(name, Method::Deflate, 6, &mut &data[..], &mut |_| {})
            .unwrap();
    }
    zw.finish().unwrap().into_inner()
}

/// Rewrites a bundle with `edit` applied to its last entry's data (same length, so only the
/// digest can tell); the signed manifest is unchanged.
pub fn tamper_last_entry(b: &[u8], edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut entries = entries_of(b);
    let last = entries.len() - 1;
    edit(&mut entries[last].1);
    zip_of(&entries)
}

pub fn ts_minus(minutes: i64) -> Timestamp {
    Timestamp::now().plus(time::Duration::minutes(-minutes))
}

/// A server with a signer trusted for `/`, and the standard project deployed to `/public/orders`
/// with its password sealed.
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
