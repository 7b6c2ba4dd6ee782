//! Several `flowpack-receiver serve` processes (the real binary) sharing one PostgreSQL
//! database, each with its own data directory (`init --store`, then `init --join`). Run when
//! `FLOWPACK_TEST_POSTGRES` names a server (`postgres://user@host:port/db`); each test makes a
//! database of its own there and drops it at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use flowpack_shared::bundle::BundleKind;
use flowpack_shared::bundle::write::{BundleOptions, MappingInput, write_bundle};
use flowpack_shared::keys::SigningKey;
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::timefmt::Timestamp;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_flowpack-receiver");

// ---------------------------------------------------------------------------------------------
// A database of the test's own

struct TestDb {
    url: String,
    admin: String,
    name: String,
}

impl TestDb {
    /// A new empty database, or `None` (the test is skipped) when no server is named.
    fn new() -> Option<TestDb> {
        let Some(admin) = std::env::var("FLOWPACK_TEST_POSTGRES")
            .ok()
            .filter(|s| !s.is_empty())
        else {
            eprintln!("FLOWPACK_TEST_POSTGRES is not set: the PostgreSQL node tests do not run");
            return None;
        };
        let mut random = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).unwrap();
        let name = format!("flowpack_{}", hex::encode(random));
        let base = admin.split('?').next().unwrap();
        let (server, _) = base.rsplit_once('/').unwrap();
        let url = format!("{server}/{name}");
        admin_sql(&admin, &format!("CREATE DATABASE {name}"));
        Some(TestDb { url, admin, name })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn admin_sql(admin: &str, sql: &str) {
    let (admin, sql) = (admin.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(&sql).await.unwrap();
        });
    })
    .join()
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The binary

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// `serve` on 127.0.0.1:0, killed when dropped.
struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(dir: &Path) -> Node {
        let mut child = Command::new(BIN)
            .args(["serve", "--data-dir", dir.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let base = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {first:?}"))
            .to_owned();
        Node { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A cluster: the first node's data directory made with `init --store`, the others joined to
/// it, a trusted signer, and the admin token.
struct Cluster {
    _db: TestDb,
    tmp: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    nodes: Vec<Node>,
    admin: String,
    key: SigningKey,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(n: usize) -> Option<Cluster> {
        Cluster::start_with(n, json!({}), None).await
    }

    /// A cluster whose nodes' `config.json` gets `config`'s keys, reaching the database
    /// through `proxy` when one is given.
    async fn start_with(n: usize, config: Value, proxy: Option<&Proxy>) -> Option<Cluster> {
        let db = TestDb::new()?;
        let url = match proxy {
            Some(p) => p.url_for(&db.url),
            None => db.url.clone(),
        };
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("n{i}"))).collect();
        let first = dirs[0].to_str().unwrap();
        let out = ok(&["init", "--data-dir", first, "--store", &url]);
        let admin = out
            .lines()
            .find_map(|l| l.strip_prefix("admin_token: "))
            .unwrap()
            .to_owned();
        for d in &dirs[1..] {
            let joined = ok(&["init", "--data-dir", d.to_str().unwrap(), "--join", first]);
            assert!(joined.starts_with("sealing_recipient: "), "{joined}");
            assert!(
                !d.join("store.db").exists(),
                "a node of a shared store has no file of its own"
            );
        }
        let key = SigningKey::generate().unwrap();
        let pem = tmp.path().join("signer.pub");
        std::fs::write(&pem, key.verifying_key().to_pem()).unwrap();
        ok(&["trust", "add", pem.to_str().unwrap(), "--data-dir", first]);
        for d in &dirs {
            configure(d, config.clone());
        }
        let nodes = dirs.iter().map(|d| Node::start(d)).collect();
        Some(Cluster {
            _db: db,
            tmp,
            dirs,
            nodes,
            admin,
            key,
            http: {
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new()
            },
        })
    }

    fn dir(&self, i: usize) -> &str {
        self.dirs[i].to_str().unwrap()
    }

    async fn deploy(&self, node: usize, token: &str, bundle: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(self.nodes[node].url("/v1/deployments"))
            .bearer_auth(token)
            .header("content-type", "application/zip")
            .body(bundle)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    async fn get(&self, node: usize, token: &str, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .get(self.nodes[node].url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    }

    async fn get_json(&self, node: usize, token: &str, path: &str) -> (u16, Value) {
        let (status, body) = self.get(node, token, path).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// A bundle for container `/c` with mapping `m`, whose file `data.bin` is `data`.
    fn bundle(&self, created_at: Timestamp, data: &[u8]) -> Vec<u8> {
        let dir = self.tmp.path().join(format!("p-{}", hex::encode(rand8())));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data.bin"), data).unwrap();
        let def =
            json!({"name": "m", "description": "shared", "parameters": [], "files": ["data.bin"]});
        let mapping = MappingInput {
            mapping: Mapping::parse("test", def.to_string().as_bytes()).unwrap(),
            dir,
        };
        let o = BundleOptions {
            kind: BundleKind::Deployment,
            target_container: ContainerPath::parse("/c").unwrap(),
            environment: None,
            created_at,
            expires_at: created_at.plus(time::Duration::days(7)),
            allow_plaintext: true,
            seal_to: Vec::new(),
            level: 1,
        };
        let mut out = Cursor::new(Vec::new());
        write_bundle(&mut out, &self.key, &o, &[mapping], &[], &mut |_, _| {}).unwrap();
        out.into_inner()
    }
}

fn rand8() -> [u8; 8] {
    let mut r = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r).unwrap();
    r
}

async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Bytes that span several of the store's 1 MiB chunks, different for each `seed`.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 253) as u8 ^ seed ^ (i >> 20) as u8)
        .collect()
}

fn secs_after(t: Timestamp, s: i64) -> Timestamp {
    t.plus(time::Duration::seconds(s))
}

/// The real OAuth 2.0 server of `tests/oauth-server` (its `npm ci` done by `tests/oauth.rs`
/// or by hand), on loopback; killed when dropped.
struct OAuthServer {
    child: Child,
    issuer: String,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OAuthServer {
    fn start() -> OAuthServer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oauth-server");
        assert!(
            dir.join("node_modules/oauth2-mock-server").exists(),
            "run `npm ci` in {}",
            dir.display()
        );
        let mut child = Command::new("node")
            .args(["server.mjs", "0"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (Node.js) is needed for the OAuth test");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let issuer = first.trim().strip_prefix("issuer: ").unwrap().to_owned();
        OAuthServer { child, issuer }
    }

    async fn control(&self, http: &reqwest::Client, method: reqwest::Method, path: &str) -> Value {
        let r = http
            .request(method, format!("{}/_test/{path}", self.issuer))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }
}

/// A TCP proxy to the database server on a fixed loopback port, which the test takes down (every
/// connection cut, new ones refused) and brings back: a database that goes away and returns.
struct Proxy {
    port: u16,
    target: String,
    serving: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    async fn start() -> Option<Proxy> {
        let server = std::env::var("FLOWPACK_TEST_POSTGRES").ok()?;
        let host_port = server.split('@').nth(1)?.split('/').next()?.to_owned();
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = Proxy {
            port,
            target: host_port,
            serving: std::sync::Mutex::new(None),
        };
        p.up().await;
        Some(p)
    }

    /// `url` with the proxy's address instead of the server's.
    fn url_for(&self, url: &str) -> String {
        url.replacen(&self.target, &format!("127.0.0.1:{}", self.port), 1)
    }

    async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let target = self.target.clone();
        let serving = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.serving.lock().unwrap() = Some(serving);
    }

    /// Cuts every connection and stops listening (the links die with the accepting task).
    async fn down(&self) {
        let serving = self.serving.lock().unwrap().take();
        if let Some(s) = serving {
            s.abort();
            let _ = s.await;
        }
    }
}

/// Sets keys of a data directory's `config.json`.
fn configure(dir: &Path, keys: Value) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for (k, v) in keys.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(&path, config.to_string()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_through_one_node_is_read_through_every_other_at_once() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    let data = payload(1, 3 * 1024 * 1024 + 17);
    let (status, record) = c
        .deploy(0, &c.admin, c.bundle(Timestamp::now(), &data))
        .await;
    assert_eq!(status, 201, "{record}");
    for node in 1..3 {
        let (status, m) = c.get_json(node, &c.admin, "/v1/mappings/c/m").await;
        assert_eq!(
            (status, &m["version"]),
            (200, &json!(1)),
            "node {node}: {m}"
        );
        let (status, bytes) = c
            .get(node, &c.admin, "/v1/mappings/c/m/files/data.bin")
            .await;
        assert_eq!(status, 200, "node {node}");
        assert!(bytes == data, "node {node}: the file differs");
        let (status, list) = c.get_json(node, &c.admin, "/v1/deployments").await;
        assert_eq!(status, 200);
        assert_eq!(list["deployments"][0]["bundle_id"], record["bundle_id"]);
    }
    // A node joined later reads it too.
    let later = c.tmp.path().join("later");
    ok(&[
        "init",
        "--data-dir",
        later.to_str().unwrap(),
        "--join",
        c.dir(2),
    ]);
    let node = Node::start(&later);
    let r = c
        .http
        .get(node.url("/v1/mappings/c/m/files/data.bin"))
        .bearer_auth(&c.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.bytes().await.unwrap() == data,
        "the later node's file differs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_and_a_removed_signer_are_refused_on_every_node_at_once() {
    let Some(c) = Cluster::start(2).await else {
        return;
    };
    let token = ok(&[
        "token",
        "create",
        "ci",
        "--data-dir",
        c.dir(0),
        "--grant",
        "/=read,write",
    ])
    .trim()
    .to_owned();
    for node in 0..2 {
        let (status, _) = c.get(node, &token, "/v1/deployments").await;
        assert_eq!(status, 200, "node {node}");
    }
    // Revoked through the other node's data directory: refused on both at once.
    ok(&["token", "revoke", "ci", "--data-dir", c.dir(1)]);
    for node in 0..2 {
        let (status, _) = c.get(node, &token, "/v1/deployments").await;
        assert_eq!(status, 401, "node {node}: a revoked token was accepted");
    }
    // Trust removed through node 1's directory: node 0 refuses the signer's next bundle.
    let (status, _) = c
        .deploy(0, &c.admin, c.bundle(Timestamp::now(), b"one"))
        .await;
    assert_eq!(status, 201);
    let id = c.key.verifying_key().key_id();
    ok(&["trust", "remove", &id.to_string(), "--data-dir", c.dir(1)]);
    let later = secs_after(Timestamp::now(), 1);
    for node in 0..2 {
        let (status, problem) = c.deploy(node, &c.admin, c.bundle(later, b"two")).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("unknown-signer")),
            "node {node}: {problem}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_raced_through_two_nodes_are_decided_once() {
    let Some(c) = Cluster::start(2).await else {
        return;
    };
    let c = std::sync::Arc::new(c);
    let t0 = Timestamp::now();
    // The same bundle through both nodes at once: applied once, a replay on the other.
    let same = c.bundle(t0, b"same");
    let (a, b) = tokio::join!(
        c.deploy(0, &c.admin, same.clone()),
        c.deploy(1, &c.admin, same)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201], "{} {}", a.1, b.1);
    assert!(a.1["replayed"] != b.1["replayed"], "{} {}", a.1, b.1);

    // Twenty bundles, newest first and oldest last, through alternate nodes at once: each is
    // applied, or refused as stale because a newer one was applied before it; never one
    // applied after a newer one.
    let bundles: Vec<(usize, Vec<u8>)> = (1..=20)
        .rev()
        .map(|i| {
            (
                i,
                c.bundle(secs_after(t0, i as i64), &payload(i as u8, 1000)),
            )
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, (i, b)) in bundles.into_iter().enumerate() {
        let c = c.clone();
        tasks.spawn(async move { (i, c.deploy(n % 2, &c.admin, b).await) });
    }
    let mut applied = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, (status, body)) = done.unwrap();
        match status {
            201 => applied.push((body["id"].as_i64().unwrap(), i)),
            409 => assert_eq!(body["code"], "stale", "{body}"),
            _ => panic!("bundle {i}: {status} {body}"),
        }
    }
    applied.sort_unstable();
    let order: Vec<usize> = applied.iter().map(|(_, i)| *i).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "applied out of order: {order:?}"
    );
    assert_eq!(order.last(), Some(&20), "the newest is always applied");
    for node in 0..2 {
        let (_, bytes) = c
            .get(node, &c.admin, "/v1/mappings/c/m/files/data.bin")
            .await;
        assert!(
            bytes == payload(20, 1000),
            "node {node}: not the newest bundle's file"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_during_deploys_loses_no_acknowledged_deploy() {
    let Some(c) = Cluster::start(2).await else {
        return;
    };
    let mut c = c;
    let t0 = Timestamp::now();
    let bundles: Vec<Vec<u8>> = (0..40)
        .map(|i| c.bundle(secs_after(t0, i), &payload(i as u8, 2 * 1024 * 1024 + 5)))
        .collect();
    let url = c.nodes[0].url("/v1/deployments");
    let admin = c.admin.clone();
    let http = c.http.clone();
    // Deploys one after another through node 0, each remembered once acknowledged.
    let deploys = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for (i, b) in bundles.into_iter().enumerate() {
            let sent = http
                .post(&url)
                .bearer_auth(&admin)
                .header("content-type", "application/zip")
                .body(b)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 201 => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    acknowledged.push((i, v["bundle_id"].as_str().unwrap_or("").to_owned()));
                }
                _ => break,
            }
        }
        acknowledged
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    c.nodes[0].child.kill().unwrap();
    c.nodes[0].child.wait().unwrap();
    let acknowledged = deploys.await.unwrap();
    assert!(
        !acknowledged.is_empty(),
        "no deploy was acknowledged before the kill"
    );
    assert!(
        acknowledged.len() < 40,
        "the node was killed after every deploy"
    );
    // Node 1 has every acknowledged one, and whatever it has is whole.
    let (status, list) = c.get_json(1, &c.admin, "/v1/deployments?limit=1000").await;
    assert_eq!(status, 200);
    let stored: Vec<&str> = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bundle_id"].as_str().unwrap())
        .collect();
    for (i, id) in &acknowledged {
        assert!(
            stored.contains(&id.as_str()),
            "acknowledged deploy {i} is lost"
        );
    }
    let (status, m) = c.get_json(1, &c.admin, "/v1/mappings/c/m").await;
    assert_eq!(status, 200);
    let version = m["version"].as_u64().unwrap() as usize;
    assert_eq!(version, stored.len(), "a version without its deployment");
    let (status, bytes) = c.get(1, &c.admin, "/v1/mappings/c/m/files/data.bin").await;
    assert_eq!(status, 200);
    assert!(
        bytes == payload((version - 1) as u8, 2 * 1024 * 1024 + 5),
        "the live file is not the last applied bundle's, whole"
    );
    // The node comes back on the same database.
    c.nodes[0] = Node::start(&c.dirs[0]);
    let (status, _) = c.get(0, &c.admin, "/v1/mappings/c/m").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_token_requests_on_every_node_make_one_refresh() {
    let Some(c) = Cluster::start_with(
        3,
        json!({"outbound_allow": ["127.0.0.1"], "max_connections": 2000}),
        None,
    )
    .await
    else {
        return;
    };
    let o = OAuthServer::start();
    // The first token expires within the receiver's refresh margin: stale at once.
    o.control(&c.http, reqwest::Method::POST, "config?expires_in=30")
        .await;
    let record = json!({
        "name": "shared", "type": "oauth2", "grant_type": "password",
        "token_endpoint": format!("{}/token", o.issuer),
        "client_id": "flowpack-client", "client_secret": "s3cret:+&/é%",
        "username": "alice", "password": "wonderland", "include_in_deployment": true,
    });
    let Value::Object(m) = record else {
        unreachable!()
    };
    let credential = flowpack_shared::model::credential::Credential::from_map(
        "test",
        &m,
        flowpack_shared::model::credential::RecordForm::SourceFile,
    )
    .unwrap();
    let now = Timestamp::now();
    let o_ = BundleOptions {
        kind: BundleKind::Credentials,
        target_container: ContainerPath::parse("/apps").unwrap(),
        environment: None,
        created_at: now,
        expires_at: now.plus(time::Duration::days(1)),
        allow_plaintext: true,
        seal_to: Vec::new(),
        level: 1,
    };
    let mut out = Cursor::new(Vec::new());
    write_bundle(&mut out, &c.key, &o_, &[], &[credential], &mut |_, _| {}).unwrap();
    let (status, body) = c.deploy(0, &c.admin, out.into_inner()).await;
    assert_eq!(status, 201, "{body}");
    let token = |node: usize| {
        let (http, url, admin) = (
            c.http.clone(),
            c.nodes[node].url("/v1/credentials/apps/shared/token"),
            c.admin.clone(),
        );
        async move { answer(http.post(url).bearer_auth(admin).send().await.unwrap()).await }
    };
    let (status, first) = token(1).await;
    assert_eq!(status, 200, "{first}");
    let stats = o.control(&c.http, reqwest::Method::GET, "stats").await;
    assert_eq!(stats["token_requests"], 1, "{stats}");

    // The refreshed token lives long; the provider takes 300 ms to answer, so every caller
    // arrives while the refresh is in flight.
    o.control(
        &c.http,
        reqwest::Method::POST,
        "config?expires_in=3600&delay_ms=300",
    )
    .await;
    const CALLERS: usize = 1000;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLERS {
        tasks.spawn(token(i % 3));
    }
    let mut tokens = std::collections::BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        let (status, v) = done.unwrap();
        assert_eq!(status, 200, "{v}");
        tokens.insert(v["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        tokens.len(),
        1,
        "every caller on every node gets the same new token"
    );
    assert!(!tokens.contains(first["access_token"].as_str().unwrap()));
    let stats = o.control(&c.http, reqwest::Method::GET, "stats").await;
    assert_eq!(
        stats["by_grant"]["refresh_token"], 1,
        "{}",
        stats["by_grant"]
    );
    assert_eq!(stats["token_requests"], 2, "{}", stats["by_grant"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_loses_the_database_answers_503_and_recovers_by_itself() {
    let Some(proxy) = Proxy::start().await else {
        return;
    };
    let Some(c) = Cluster::start_with(2, json!({}), Some(&proxy)).await else {
        return;
    };
    let t0 = Timestamp::now();
    let (status, _) = c.deploy(0, &c.admin, c.bundle(t0, b"before")).await;
    assert_eq!(status, 201);

    proxy.down().await;
    for node in 0..2 {
        let (status, v) = c.get_json(node, &c.admin, "/v1/mappings/c/m").await;
        assert_eq!(
            (status, v["code"].as_str()),
            (503, Some("store-unavailable")),
            "node {node}: {v}"
        );
        assert!(!v.to_string().contains("postgres://"), "{v}");
        let (status, v) = c.get_json(node, "", "/readyz").await;
        assert_eq!(status, 503, "node {node}: {v}");
    }
    let (status, v) = c
        .deploy(1, &c.admin, c.bundle(secs_after(t0, 1), b"while down"))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("store-unavailable")),
        "{v}"
    );

    proxy.up().await;
    for node in 0..2 {
        let mut last = (0, Value::Null);
        for _ in 0..50 {
            last = c.get_json(node, "", "/readyz").await;
            if last.0 == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert_eq!(last.0, 200, "node {node} did not recover: {}", last.1);
    }
    let (status, v) = c
        .deploy(1, &c.admin, c.bundle(secs_after(t0, 2), b"after"))
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, bytes) = c.get(0, &c.admin, "/v1/mappings/c/m/files/data.bin").await;
    assert_eq!((status, bytes.as_slice()), (200, &b"after"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_audit_and_credentials_are_the_same_through_every_node() {
    let Some(c) = Cluster::start(2).await else {
        return;
    };
    let t0 = Timestamp::now();
    let (status, first) = c.deploy(0, &c.admin, c.bundle(t0, b"first")).await;
    assert_eq!(status, 201, "{first}");
    let (status, _) = c
        .deploy(1, &c.admin, c.bundle(secs_after(t0, 1), b"second"))
        .await;
    assert_eq!(status, 201);
    // Rolled back through the other node than the one that applied it.
    let r = c
        .http
        .post(c.nodes[1].url(&format!("/v1/deployments/{}/rollback", first["id"])))
        .bearer_auth(&c.admin)
        .send()
        .await
        .unwrap();
    let (status, rolled) = answer(r).await;
    assert_eq!(status, 201, "{rolled}");
    assert_eq!(rolled["rollback_of"], first["id"]);
    let (_, bytes) = c.get(0, &c.admin, "/v1/mappings/c/m/files/data.bin").await;
    assert_eq!(bytes, b"first");
    let (status, audit) = c.get_json(0, &c.admin, "/v1/audit").await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rollback", "deploy", "deploy"], "{audit}");

    // A credential created through one node is read, and deleted, through the other.
    let r = c
        .http
        .put(c.nodes[0].url("/v1/credentials/apps/db"))
        .bearer_auth(&c.admin)
        .json(&json!({"type": "password", "username": "svc", "password": "pg-node-canary"}))
        .send()
        .await
        .unwrap();
    let (status, created) = answer(r).await;
    assert_eq!(status, 201, "{created}");
    let (status, read) = c.get_json(1, &c.admin, "/v1/credentials/apps/db").await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["username"], "svc");
    assert!(!read.to_string().contains("pg-node-canary"), "{read}");
    let r = c
        .http
        .delete(c.nodes[1].url("/v1/credentials/apps/db"))
        .bearer_auth(&c.admin)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, _) = c.get_json(0, &c.admin, "/v1/credentials/apps/db").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn init_makes_one_store_per_database_and_joins_only_a_shared_one() {
    let Some(c) = Cluster::start(1).await else {
        return;
    };
    let url = c._db.url.clone();
    // A second `init --store` on the same database: refused, nothing left behind.
    let second = c.tmp.path().join("second");
    let (code, _, err) = run(&[
        "init",
        "--data-dir",
        second.to_str().unwrap(),
        "--store",
        &url,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already holds a flowpack store") && err.contains("--join"),
        "{err}"
    );
    assert!(!second.exists(), "a refused init left {}", second.display());
    // A password in the URL is never shown.
    let with_password = url.replacen("://", "://postgres:pg-url-canary@", 1);
    let (code, _, err) = run(&[
        "init",
        "--data-dir",
        second.to_str().unwrap(),
        "--store",
        &with_password,
    ]);
    assert_eq!(code, 1);
    assert!(!err.contains("pg-url-canary"), "{err}");
    // Joining an embedded store: refused.
    let embedded = c.tmp.path().join("embedded");
    ok(&["init", "--data-dir", embedded.to_str().unwrap()]);
    let (code, _, err) = run(&[
        "init",
        "--data-dir",
        second.to_str().unwrap(),
        "--join",
        embedded.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("only a data directory of a PostgreSQL store"),
        "{err}"
    );
    assert!(!second.exists());
    // A joined node has the same keys, not new ones.
    let joined = c.tmp.path().join("joined");
    ok(&[
        "init",
        "--data-dir",
        joined.to_str().unwrap(),
        "--join",
        c.dir(0),
    ]);
    for key in ["secrets.key", "sealing.agekey"] {
        assert_eq!(
            std::fs::read(joined.join(key)).unwrap(),
            std::fs::read(c.dirs[0].join(key)).unwrap(),
            "{key}"
        );
    }
}
