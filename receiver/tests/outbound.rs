//! The outbound policy and the secrecy of what goes out, through the receiver's API: no
//! spelling of a loopback address gets a request out, a database check is no port scanner,
//! one credential is verified once at a time, `outbound_allow` is read from config.json, and a
//! hostile provider that echoes every request back (headers, form body, URL) in its error
//! texts gets no secret, in any encoding, into the receiver's answers, log, audit trail or
//! database file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use flowpack_receiver::App;
use flowpack_shared::bundle::BundleKind;
use flowpack_shared::keys::SigningKey;
use flowpack_testkit::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Deploys credential records (sealed) to `/apps` in a standalone credential bundle.
async fn deploy(s: &Server, key: &SigningKey, records: &[Value], verify: bool) -> (u16, Value) {
    let creds: Vec<_> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["include_in_deployment"] = Value::Bool(true);
            credential(r)
        })
        .collect();
    let mut opts = Opts::new("/apps").sealed(s.recipient());
    opts.kind = BundleKind::Credentials;
    let b = bundle(key, &opts, &[], &creds);
    let url = if verify {
        "/v1/deployments?verify=true"
    } else {
        "/v1/deployments"
    };
    let r = s
        .client
        .post(s.url(url))
        .bearer_auth(&s.admin)
        .header("content-type", "application/zip")
        .body(b)
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn started(allow: &'static [&'static str]) -> (Server, SigningKey) {
    let s = Server::start_with(move |app| allow_outbound(app, allow)).await;
    let key = SigningKey::generate().unwrap();
    s.trust(&key, &[]);
    (s, key)
}

async fn post(s: &Server, path: &str) -> (u16, Value) {
    s.send(Method::POST, &s.admin, path, None).await
}

/// A plain HTTP server on loopback answering every request with `reply`.
async fn serve<F>(
    reply: impl Fn(hyper::http::request::Parts, Bytes) -> F + Send + Sync + 'static,
) -> String
where
    F: Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let reply = Arc::new(reply);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let reply = reply.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let reply = reply.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(reply(parts, body).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    base
}

fn response(status: u16, content_type: &str, body: String) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The policy

#[tokio::test]
async fn no_spelling_of_a_loopback_or_private_address_gets_a_request_out() {
    // Anything that reached this port would be a request the policy let out.
    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = trap.local_addr().unwrap().port();
    let (s, key) = started(&[]).await;
    // (URL, the host the refusal names)
    let urls = [
        (format!("https://127.0.0.1:{p}/t"), "127.0.0.1"),
        (format!("https://2130706433:{p}/t"), "127.0.0.1"),
        (format!("https://0x7f.1:{p}/t"), "127.0.0.1"),
        (format!("https://017700000001:{p}/t"), "127.0.0.1"),
        (format!("https://0177.0.0.1:{p}/t"), "127.0.0.1"),
        (format!("https://127.1:{p}/t"), "127.0.0.1"),
        (
            format!("https://[::ffff:127.0.0.1]:{p}/t"),
            "[::ffff:7f00:1]",
        ),
        (format!("https://[::ffff:7f00:1]:{p}/t"), "[::ffff:7f00:1]"),
        (format!("https://[::1]:{p}/t"), "[::1]"),
        (format!("https://[::127.0.0.1]:{p}/t"), "[::7f00:1]"),
        (
            format!("https://[64:ff9b::7f00:1]:{p}/t"),
            "[64:ff9b::7f00:1]",
        ),
        (
            format!("https://[2002:7f00:1::1]:{p}/t"),
            "[2002:7f00:1::1]",
        ),
        // Names: refused on the address they resolve to.
        (format!("https://localhost:{p}/t"), "localhost"),
        (format!("https://LocalHost:{p}/t"), "localhost"),
        // Plain http to a host that is not listed. (A URL with user info is refused before
        // it is stored: see the check after the deploy.)
        (format!("http://127.0.0.1:{p}/t"), "127.0.0.1"),
        (
            "https://169.254.169.254/latest/meta-data".into(),
            "169.254.169.254",
        ),
        ("https://10.0.0.1/t".into(), "10.0.0.1"),
        ("https://100.64.1.1/t".into(), "100.64.1.1"),
        ("https://0.0.0.0/t".into(), "0.0.0.0"),
        ("https://[fd00::1]/t".into(), "[fd00::1]"),
        ("https://[fe80::1]/t".into(), "[fe80::1]"),
    ];
    let dbs = [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("localhost", "localhost"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("::ffff:127.0.0.1", "[::ffff:7f00:1]"),
        ("169.254.169.254", "169.254.169.254"),
        ("192.168.0.10", "192.168.0.10"),
    ];
    let mut records = Vec::new();
    for (i, (url, _)) in urls.iter().enumerate() {
        records.push(json!({"name": format!("t{i}"), "type": "oauth2",
            "grant_type": "client_credentials", "token_endpoint": url,
            "client_id": "c", "client_secret": "canary-secret-1", "allow_usage_for": ["http"]}));
        records.push(json!({"name": format!("v{i}"), "type": "password",
            "username": "u", "password": "canary-secret-2", "verify_url": url}));
    }
    for (i, (host, _)) in dbs.iter().enumerate() {
        records.push(json!({"name": format!("d{i}"), "type": "database",
            "host": host, "port": p, "password": "canary-secret-3"}));
    }
    let (st, v) = deploy(&s, &key, &records, false).await;
    assert_eq!(st, 201, "{v}");

    // User info never reaches the store, let alone a request: the record is refused, and the
    // password is not quoted.
    for url in [
        format!("https://user:hunter22@127.0.0.1:{p}/t"),
        format!("https://user:hunter22@idp.example.com:{p}/t"),
    ] {
        let (st, v) = s
            .send(
                reqwest::Method::PUT,
                &s.admin,
                "/v1/credentials/apps/with-user-info",
                Some(json!({"type": "password", "verify_url": url})),
            )
            .await;
        assert_eq!((st, v["code"].as_str()), (422, Some("bad-record")), "{v}");
        assert!(!v.to_string().contains("hunter22"), "{v}");
    }
    let refused = |what: &str, st: u16, v: &Value, host: &str| {
        assert_eq!(
            (st, v["code"].as_str()),
            (422, Some("outbound-not-allowed")),
            "{what}: {v}"
        );
        assert_eq!(v["host"], host, "{what}: {v}");
        let d = v["detail"].as_str().unwrap();
        assert!(d.contains("outbound_allow"), "{what}: {d}");
        for never in ["hunter22", "canary-secret"] {
            assert!(!v.to_string().contains(never), "{what}: {v}");
        }
    };
    for (i, (url, host)) in urls.iter().enumerate() {
        let (st, v) = post(&s, &format!("/v1/credentials/apps/t{i}/token")).await;
        refused(&format!("token {url}"), st, &v, host);
        let (st, v) = post(&s, &format!("/v1/credentials/apps/v{i}/verify")).await;
        refused(&format!("verify {url}"), st, &v, host);
    }
    for (i, (db, host)) in dbs.iter().enumerate() {
        let (st, v) = post(&s, &format!("/v1/credentials/apps/d{i}/verify")).await;
        refused(&format!("database {db}"), st, &v, host);
    }
    // Nothing connected (a connection would be waiting in the backlog by now).
    let connected = tokio::time::timeout(Duration::from_millis(100), trap.accept()).await;
    assert!(connected.is_err(), "a request reached the trap");
    // The refusals are audited.
    let (_, audit) = s.get(&s.admin, "/v1/audit").await;
    let refusals = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["code"] == "outbound-not-allowed")
        .count();
    assert_eq!(refusals, 2 * urls.len() + dbs.len());
    s.stop().await;
}

#[tokio::test]
async fn a_database_check_tells_only_connected_could_not_connect_or_refused() {
    let (s, key) = started(&["127.0.0.1", "localhost:1"]).await;
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let db = |name: &str, host: &str, port: u16| json!({"name": name, "type": "database", "driver": "postgresql", "host": host, "port": port, "password": "db-pw"});
    let (st, v) = deploy(
        &s,
        &key,
        &[
            db("open", "127.0.0.1", open_port),
            db("closed", "127.0.0.1", closed_port),
            db("unknown", "no-such-host.invalid", 5432),
            // Listed only with port 1: any other port is refused, not probed.
            db("other-port", "localhost", open_port),
            db("private", "10.20.30.40", 5432),
        ],
        false,
    )
    .await;
    assert_eq!(st, 201, "{v}");

    // Something listens, but it is no database that lets this login in: a TCP connection is
    // no verification. (The real logins are in tests/dblogin.rs.)
    let (st, v) = post(&s, "/v1/credentials/apps/open/verify").await;
    assert_eq!((st, &v["ok"]), (200, &json!(false)), "{v}");
    for name in ["closed", "unknown"] {
        let (st, v) = post(&s, &format!("/v1/credentials/apps/{name}/verify")).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["ok"], false, "{v}");
        // Not "connection refused", "timed out" or "no such host": all are one answer.
        assert_eq!(v["error"], "could not connect", "{name}: {v}");
    }
    for (name, host) in [("other-port", "localhost"), ("private", "10.20.30.40")] {
        let (st, v) = post(&s, &format!("/v1/credentials/apps/{name}/verify")).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (422, Some("outbound-not-allowed")),
            "{v}"
        );
        assert_eq!(v["host"], host);
    }
    drop(open);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifications_of_one_credential_send_one_request_at_a_time() {
    let active = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let (a, m, t) = (active.clone(), most.clone(), total.clone());
    let base = serve(move |_, _| {
        let (a, m, t) = (a.clone(), m.clone(), t.clone());
        async move {
            let now = a.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            t.fetch_add(1, Ordering::SeqCst);
            // Holds the request long enough for others to overlap, if any were sent.
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.fetch_sub(1, Ordering::SeqCst);
            response(401, "text/plain", String::new())
        }
    })
    .await;
    let (s, key) = started(&["127.0.0.1"]).await;
    let (st, v) = deploy(
        &s,
        &key,
        &[
            json!({"name": "pw", "type": "password", "username": "u", "password": "pw-canary",
            "verify_url": format!("{base}/check")}),
        ],
        false,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    const CALLERS: usize = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (client, url, admin) = (
            s.client.clone(),
            s.url("/v1/credentials/apps/pw/verify"),
            s.admin.clone(),
        );
        tasks.spawn(async move {
            answer(client.post(url).bearer_auth(admin).send().await.unwrap()).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (st, v) = r.unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["error"], "the server answered HTTP 401 Unauthorized",
            "{v}"
        );
    }
    assert_eq!(
        total.load(Ordering::SeqCst),
        CALLERS,
        "one request per verification"
    );
    assert_eq!(most.load(Ordering::SeqCst), 1, "one at a time");
    s.stop().await;
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_not_retried() {
    let requests = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            // Reads the request, then hangs up without answering.
            if stream.read(&mut buf).await.unwrap_or(0) > 0 {
                r.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let (s, key) = started(&["127.0.0.1"]).await;
    let (st, v) = deploy(
        &s,
        &key,
        &[
            json!({"name": "cc", "type": "oauth2", "grant_type": "client_credentials",
                "token_endpoint": format!("http://{addr}/token"), "client_id": "c",
                "client_secret": "cc-canary", "allow_usage_for": ["http"]}),
        ],
        false,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = post(&s, "/v1/credentials/apps/cc/token").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (502, Some("token-endpoint-unreachable")),
        "{v}"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "a token request is sent once"
    );
    s.stop().await;
}

#[test]
fn config_json_takes_outbound_allow_and_names_unknown_keys_and_bad_entries() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    flowpack_testkit::init(&data);
    let write = |v: Value| write_config(&data, &v);
    let error = || format!("{:#}", App::load(&data).unwrap_err());

    write(json!({"outbound_allow": ["127.0.0.1", "IDP.internal:8443", "[::1]:9000"]}));
    let app = App::load(&data).unwrap();
    let allowed: Vec<String> = app
        .outbound
        .allowed()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(allowed, ["127.0.0.1", "idp.internal:8443", "[::1]:9000"]);
    drop(app);

    write(json!({"outbound_alow": ["127.0.0.1"]}));
    let e = error();
    assert!(
        e.contains("config.json") && e.contains("outbound_alow"),
        "{e}"
    );
    write(json!({"limits": {"max_entires": 1}}));
    let e = error();
    assert!(
        e.contains("config.json") && e.contains("max_entires"),
        "{e}"
    );
    write(json!({"outbound_allow": ["https://idp.internal/"]}));
    let e = error();
    assert!(
        e.contains("config.json") && e.contains("\"https://idp.internal/\""),
        "{e}"
    );
    write(json!({"outbound_allow": "127.0.0.1"}));
    let e = error();
    assert!(e.contains("config.json"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// A hostile provider

const CLIENT_ID: &str = "canary-client";
/// Characters that every encoding treats differently: `+`, `/`, space, `=`, `%`, `&`, quotes,
/// backslashes and non-ASCII.
const CC_SECRET: &str = "Cs3cr3t+/ é&=%x9Q\"\\~";
const BODY_SECRET: &str = "B0dy;s3cr3t+ü/=?&#";
const PASSWORD: &str = "pw:\" \\+%2F✓ok";
const REFRESH: &str = "r3fr3sh+/=é tok";
const SHORT_SECRET: &str = "q~Z";
const API_KEY_QUERY: &str = "Kq+ /=&k3y;é";
const API_KEY_HEADER: &str = "Hk+/=\"\\ x!y";
const BASIC_PASSWORD: &str = "B@sic:pw+ /é";
const SHORT_KEY: &str = "k&3";
const SECRETS: [&str; 9] = [
    CC_SECRET,
    BODY_SECRET,
    PASSWORD,
    REFRESH,
    SHORT_SECRET,
    API_KEY_QUERY,
    API_KEY_HEADER,
    BASIC_PASSWORD,
    SHORT_KEY,
];
/// Not a secret, but provider text that must not be shown either.
const CALLBACK_TEXT: &str = "EVIL-callback-text-<b>";

fn form(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn percent(s: &str, lower: bool) -> String {
    s.bytes()
        .map(|b| match (b.is_ascii_alphanumeric(), lower) {
            (true, _) => (b as char).to_string(),
            (false, true) => format!("%{b:02x}"),
            (false, false) => format!("%{b:02X}"),
        })
        .collect()
}

/// Every encoding of `secret` the receiver must never show: raw, percent-encoded (upper and
/// lower hex), form-encoded (`+` and `%20` for a space), JSON-escaped (as serde writes it and
/// all-ASCII), base64 and base64url, padded and not, of the secret and of the HTTP Basic pairs
/// it is sent in.
fn encodings(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap();
    let ascii_json: String = secret
        .encode_utf16()
        .map(|u| match u8::try_from(u) {
            Ok(b) if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' => {
                (b as char).to_string()
            }
            _ => format!("\\u{u:04x}"),
        })
        .collect();
    let mut out = vec![
        secret.to_owned(),
        percent(secret, false),
        percent(secret, true),
        form(secret),
        form(secret).replace('+', "%20"),
        json.trim_matches('"').to_owned(),
        ascii_json,
    ];
    for data in [
        secret.to_owned(),
        format!("{}:{}", form(CLIENT_ID), form(secret)),
        format!("{CLIENT_ID}:{secret}"),
        format!("svc:{secret}"),
    ] {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            out.push(engine.encode(&data));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Panics when `haystack` holds an encoding of a secret (of at least `min_len` bytes).
fn assert_clean(place: &str, haystack: &[u8], min_len: usize) {
    for secret in SECRETS {
        for e in encodings(secret) {
            if e.len() >= min_len && haystack.windows(e.len()).any(|w| w == e.as_bytes()) {
                panic!("{place} holds {e:?}, an encoding of the secret {secret:?}");
            }
        }
    }
    let text = String::from_utf8_lossy(haystack);
    assert!(
        !text.contains(CALLBACK_TEXT),
        "{place} holds the provider's text"
    );
}

/// What a provider that echoes requests sees: the request line, headers, the raw body, and
/// the decoded form fields, query and Basic credentials.
fn echo_of(parts: &hyper::http::request::Parts, body: &[u8]) -> String {
    let mut e = format!("{} {}\n", parts.method, parts.uri);
    for (k, v) in &parts.headers {
        e.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        if let Some(b64) = v.to_str().ok().and_then(|v| v.strip_prefix("Basic ")) {
            let pair = STANDARD.decode(b64).unwrap_or_default();
            e.push_str(&format!("basic: {}\n", String::from_utf8_lossy(&pair)));
            for part in pair.splitn(2, |b| *b == b':') {
                let decoded: String = url::form_urlencoded::parse(part)
                    .map(|(k, v)| format!("{k}{v}"))
                    .collect();
                e.push_str(&format!("basic part: {decoded}\n"));
            }
        }
    }
    e.push_str(&String::from_utf8_lossy(body));
    for (k, v) in url::form_urlencoded::parse(body) {
        e.push_str(&format!("\n{k}={v}"));
    }
    if let Some(q) = parts.uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            e.push_str(&format!("\nquery {k}={v}"));
        }
    }
    e
}

/// A provider on loopback that answers every request with the request echoed back, by path:
/// in `error` and `error_description`, beside a standard `error` code, as an HTML page, or in
/// a success that holds no token. Returns its base URL and what it echoed.
async fn hostile_provider() -> (String, Arc<Mutex<Vec<String>>>) {
    let echoes = Arc::new(Mutex::new(Vec::new()));
    let seen = echoes.clone();
    let base = serve(move |parts, body| {
        let echo = echo_of(&parts, &body);
        seen.lock().unwrap().push(echo.clone());
        let j = "application/json";
        std::future::ready(match parts.uri.path() {
            "/echo-error" => response(
                400,
                j,
                json!({"error": echo, "error_description": echo, "echo": echo}).to_string(),
            ),
            "/known-error" => response(
                401,
                j,
                json!({"error": "invalid_client", "error_description": echo,
                    "error_uri": format!("https://idp.example/e?{echo}")})
                .to_string(),
            ),
            "/invalid-grant" => response(
                400,
                j,
                json!({"error": "invalid_grant", "error_description": echo}).to_string(),
            ),
            "/html" => response(500, "text/html", format!("<html><pre>{echo}</pre></html>")),
            "/garbage" => response(200, j, json!({"token_type": echo}).to_string()),
            _ => response(401, "text/plain", echo),
        })
    })
    .await;
    (base, echoes)
}

/// Collects everything the process logs (every level, `log` records included).
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Capture {
    static LOG: OnceLock<Capture> = OnceLock::new();
    LOG.get_or_init(|| {
        let c = Capture(Arc::new(Mutex::new(Vec::new())));
        let w = c.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .try_init()
            .unwrap();
        c
    })
    .clone()
}

#[tokio::test]
async fn a_hostile_provider_echoing_requests_gets_no_secret_into_answers_logs_audit_or_database() {
    let logs = capture_logs();
    let (p, echoes) = hostile_provider().await;
    let (s, key) = started(&["127.0.0.1"]).await;
    let ep = |path: &str| format!("{p}{path}");
    let cc = |name: &str, path: &str, auth: &str, secret: &str| {
        json!({"name": name, "type": "oauth2", "grant_type": "client_credentials",
            "token_endpoint": ep(path), "token_endpoint_auth": auth,
            "client_id": CLIENT_ID, "client_secret": secret, "allow_usage_for": ["http"]})
    };
    let records = [
        cc("cc-echo", "/echo-error", "header", CC_SECRET),
        cc("cc-known", "/known-error", "header", CC_SECRET),
        cc("cc-garbage", "/garbage", "body", CC_SECRET),
        cc("short", "/echo-error", "body", SHORT_SECRET),
        json!({"name": "pw-grant", "type": "oauth2", "grant_type": "password",
            "token_endpoint": ep("/html"), "token_endpoint_auth": "body",
            "client_id": CLIENT_ID, "client_secret": BODY_SECRET,
            "username": "alice", "password": PASSWORD, "allow_usage_for": ["http"]}),
        json!({"name": "refresh", "type": "oauth2", "grant_type": "authorization_code",
            "authorization_endpoint": ep("/authorize"), "token_endpoint": ep("/invalid-grant"),
            "token_endpoint_auth": "body", "client_id": CLIENT_ID, "client_secret": BODY_SECRET,
            "redirect_uri": s.url("/v1/oauth/callback"), "refresh_token": REFRESH,
            "access_token": "expired-token", "expires_at": "2020-01-01T00:00:00.000Z",
            "allow_usage_for": ["http"]}),
        json!({"name": "basic", "type": "password", "username": "svc",
            "password": BASIC_PASSWORD, "verify_url": ep("/verify")}),
        json!({"name": "key-query", "type": "api_key", "placement": "query",
            "parameter_name": "api_key", "key": API_KEY_QUERY, "verify_url": ep("/verify?x=1")}),
        json!({"name": "key-header", "type": "api_key", "placement": "header",
            "parameter_name": "X-API-Key", "key": API_KEY_HEADER, "verify_url": ep("/verify")}),
        json!({"name": "short-key", "type": "api_key", "placement": "query",
            "parameter_name": "k", "key": SHORT_KEY, "verify_url": ep("/verify")}),
    ];
    let (st, v) = deploy(&s, &key, &records, false).await;
    assert_eq!(st, 201, "{v}");
    let mut answers = String::new();

    // Token requests: only the status and a standard `error` code come back.
    for name in ["cc-echo", "cc-known", "cc-garbage", "short", "pw-grant"] {
        let (st, v) = post(&s, &format!("/v1/credentials/apps/{name}/token")).await;
        assert_eq!(st, 502, "{name}: {v}");
        answers.push_str(&v.to_string());
        let d = v["detail"].as_str().unwrap();
        match name {
            "cc-known" => {
                assert_eq!(v["oauth_error"], "invalid_client");
                assert!(d.ends_with("HTTP 401, error invalid_client"), "{d}");
            }
            "cc-echo" | "short" => {
                assert!(v.get("oauth_error").is_none(), "{v}");
                assert!(d.ends_with("(not shown)"), "{d}");
            }
            "cc-garbage" => assert!(d.ends_with("the answer has no access_token"), "{d}"),
            _ => assert!(
                d.ends_with("HTTP 500 Internal Server Error without an OAuth error"),
                "{d}"
            ),
        }
    }
    let (st, v) = post(&s, "/v1/credentials/apps/refresh/token").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("needs-authorization")),
        "{v}"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("error invalid_grant"),
        "{v}"
    );
    answers.push_str(&v.to_string());

    // Verifications of every credential, one by one.
    for r in &records {
        let name = r["name"].as_str().unwrap();
        let (st, v) = post(&s, &format!("/v1/credentials/apps/{name}/verify")).await;
        assert_eq!(st, 200, "{name}: {v}");
        assert_eq!(v["ok"], false, "{name}: {v}");
        answers.push_str(&v.to_string());
    }

    // The callback: the authorization server's `error` and `error_description` are not shown.
    let (st, v) = post(&s, "/v1/credentials/apps/refresh/authorize").await;
    assert_eq!(st, 200, "{v}");
    let url = reqwest::Url::parse(v["authorize_url"].as_str().unwrap()).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let mut back = reqwest::Url::parse(&s.url("/v1/oauth/callback")).unwrap();
    back.query_pairs_mut()
        .append_pair("state", &state)
        .append_pair("error", CALLBACK_TEXT)
        .append_pair("error_description", CALLBACK_TEXT);
    let (st, v) = answer(s.client.get(back).send().await.unwrap()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("authorization-denied")),
        "{v}"
    );
    answers.push_str(&v.to_string());

    // A deploy with verification, refused.
    let mut dv_cc = records[0].clone();
    dv_cc["name"] = json!("dv-cc");
    let mut dv_key = records[7].clone();
    dv_key["name"] = json!("dv-key");
    let (st, v) = deploy(&s, &key, &[dv_cc, dv_key], true).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("credential-verification-failed")),
        "{v}"
    );
    answers.push_str(&v.to_string());

    // The provider did receive (and echo) every secret: the test is not vacuous.
    let echoed = echoes.lock().unwrap().join("\n");
    for secret in SECRETS {
        assert!(echoed.contains(secret), "the provider never saw {secret:?}");
    }

    assert_clean("the API's answers", answers.as_bytes(), 0);
    let (st, audit) = s.get(&s.admin, "/v1/audit").await;
    assert_eq!(st, 200);
    assert!(audit["audit"].as_array().unwrap().len() > 15, "{audit}");
    assert_clean("the audit trail", audit.to_string().as_bytes(), 0);
    let data = s.data_dir();
    let (_kept, _) = s.stop_keeping_data().await;

    let log = logs.0.lock().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&log).contains("/v1/credentials/apps/cc-echo/token"),
        "the log was captured"
    );
    assert_clean("the log", &log, 0);
    // The store holds random ciphertext, in which any 3- or 4-byte string turns up by
    // chance: there, encodings of 5 bytes or more are looked for (the raw 3-character secrets
    // are checked above, in the audit trail the store holds).
    let stored = Stored::of(&data).bytes();
    assert!(stored.len() > 1000, "the store was read");
    assert_clean("the store", &stored, 5);
}
