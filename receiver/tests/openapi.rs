//! The receiver's OpenAPI document (`receiver/src/api/openapi.json`) against the receiver.
//!
//! The document is the contract users read, so it is checked three ways: its shape is that of
//! an OpenAPI 3.1 document whose every `$ref` resolves; a scenario drives a live receiver through
//! every endpoint, successes and refusals alike, and validates each answer's body against the
//! schema the document gives for that path, method and status (JSON Schema 2020-12, with
//! `$ref`s resolved inside the document); and every operation of the document is answered with
//! a success at least once, so an endpoint cannot be documented without being served.
//!
//! The validator itself lives in the testkit (`flowpack_testkit::openapi`), where the one
//! client of the tests runs every answer of every test through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use flowpack_shared::bundle::BundleKind;
use flowpack_shared::keys::SigningKey;
use flowpack_testkit::openapi::{
    METHODS, Target, Validator, document, instance_of, operations, resolve, token,
};
use flowpack_testkit::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every `$ref` in `v`, with where it is.
fn refs(v: &Value, at: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref"
                    && let Value::String(r) = v
                {
                    out.push((at.clone(), r.clone()));
                }
                refs(v, format!("{at}/{}", token(k)), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_1_and_every_ref_resolves() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths is an object");
    assert!(!paths.is_empty());

    let mut all = Vec::new();
    refs(&doc, "#".into(), &mut all);
    assert!(!all.is_empty());
    for (at, r) in &all {
        assert!(r.starts_with("#/"), "{at}: $ref {r} is not local");
        assert!(
            resolve(&doc, r).is_some(),
            "{at}: $ref {r} does not resolve"
        );
    }

    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths {
        assert!(
            path.starts_with('/'),
            "path {path} does not start with a slash"
        );
        let templated: BTreeSet<&str> = path
            .split('{')
            .skip(1)
            .map(|s| s.split_once('}').unwrap().0)
            .collect();
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let at = format!("{} {path}", m.to_uppercase());
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: no operationId"));
            assert!(
                operation_ids.insert(id.to_owned()),
                "{at}: operationId {id} twice"
            );
            assert!(
                op["x-flowpack-grant"].is_string(),
                "{at}: no x-flowpack-grant"
            );
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{at}: no responses"));
            assert!(!responses.is_empty(), "{at}: no responses");
            for (status, r) in responses {
                assert!(
                    status.len() == 3 && status.parse::<u16>().is_ok(),
                    "{at}: status {status}"
                );
                let r = match r.get("$ref") {
                    Some(Value::String(x)) => resolve(&doc, x).unwrap(),
                    _ => r,
                };
                assert!(
                    r["description"].is_string(),
                    "{at} {status}: no description"
                );
                if m != "head" && (status.starts_with('4') || status.starts_with('5')) {
                    assert!(
                        r["content"]["application/problem+json"].is_object(),
                        "{at} {status}: an error answer that is not a problem document"
                    );
                }
            }
            // Every template parameter is declared, required, in the path.
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .inspect(|p| assert_eq!(p["required"], true, "{at}: {p}"))
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(declared, templated, "{at}: path parameters");
        }
    }
    // Every schema compiles as JSON Schema 2020-12.
    let v = Validator::new(&doc);
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        v.compile(&format!("#/components/schemas/{}", token(name)));
    }
}

#[test]
fn the_examples_of_the_document_conform_to_their_schemas() {
    let doc = document();
    let v = Validator::new(&doc);
    let mut checked = 0;
    let mut examples = Vec::new();
    find_examples(&doc, "#".into(), &mut examples);
    for (at, example) in examples {
        if let Err(e) = v.validate(&format!("{at}/schema"), &example) {
            panic!("the example at {at} does not conform to its schema:\n{e}");
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} examples");
}

/// Every media type object with both a schema and an example: (its location, the example).
fn find_examples(v: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            if let (Some(_), Some(e)) = (m.get("schema"), m.get("example")) {
                out.push((at.clone(), e.clone()));
            }
            for (k, v) in m {
                find_examples(v, format!("{at}/{}", token(k)), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                find_examples(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario

/// An answer: status and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Bytes,
}

impl Answer {
    fn of(r: &Response) -> Answer {
        Answer {
            status: r.status().as_u16(),
            body: r.bytes_ref().clone(),
        }
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        t.chars().take(400).collect()
    }
    fn code(&self) -> Option<String> {
        self.json()["code"].as_str().map(str::to_owned)
    }
}

/// A request body.
enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

struct Client<'a> {
    s: &'a Server,
    /// A path that a `GET` of each path template answered with a success.
    instances: Mutex<BTreeMap<String, String>>,
    /// Secret values that no answer may contain.
    canaries: Vec<&'static str>,
}

impl Client<'_> {
    /// Sends `method path` through the testkit's client, which checks the answer against the
    /// document; `template` is the path the request must name in it.
    async fn call(
        &self,
        method: Method,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> Answer {
        let mut r = self.s.client.request(method.clone(), self.s.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r = match body {
            Body::None => r,
            Body::Json(v) => r.json(&v),
            Body::Raw(ct, bytes) => r.header("content-type", ct).body(bytes),
        };
        let a = Answer::of(&r.send().await.unwrap());
        let named = self.s.client.seen().last().unwrap().1.clone();
        let bare = path.split('?').next().unwrap();
        assert_eq!(
            named.label(bare),
            template,
            "{method} {path}: the template it names"
        );
        if a.status < 300 && matches!(method, Method::GET) {
            self.instances
                .lock()
                .unwrap()
                .entry(template.to_owned())
                .or_insert_with(|| path.to_owned());
        }
        for c in &self.canaries {
            assert!(
                !a.text().contains(c),
                "{method} {path}: the answer shows a secret"
            );
        }
        a
    }

    async fn expect(
        &self,
        method: Method,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
        (status, code): (u16, Option<&str>),
    ) -> Answer {
        let a = self.call(method.clone(), template, path, token, body).await;
        assert_eq!(a.status, status, "{method} {path}: {}", a.text());
        if code.is_some() {
            assert_eq!(a.code().as_deref(), code, "{method} {path}: {}", a.text());
        }
        a
    }
}

/// A plain HTTP token endpoint on loopback that answers every request with `status` and
/// `body`.
async fn token_endpoint(status: u16, body: Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap(),
                        )
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

/// Sends a deploy whose body stalls after a few bytes, as raw HTTP, and returns the answer.
async fn stalled_deploy(s: &Server, token: &str) -> Answer {
    let addr = s.base.strip_prefix("http://").unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/deployments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/zip\r\nContent-Length: 1000\r\n\r\nPK\x03\x04"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = c.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if raw.len() >= end + 4 + len {
                    break;
                }
            }
        }
    })
    .await
    .expect("an answer to the stalled body within 20 s");
    let answer = Response::parse(&raw).expect("a response head");
    flowpack_testkit::openapi::check(&Method::POST, "/v1/deployments", &answer);
    Answer::of(&answer)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn query_value<'a>(url: &'a str, key: &str) -> &'a str {
    url.split(['?', '&'])
        .find_map(|p| p.strip_prefix(&format!("{key}=")))
        .unwrap()
}

#[tokio::test]
async fn every_answer_of_every_endpoint_conforms_to_the_document() {
    let doc = document();
    let s = Server::start_with(|app| {
        app.edit_config(|c| c.limits.max_bundle_size = 256 * 1024);
        // Long enough for any body the scenario sends whole, short enough to wait for the stall.
        app.body_idle = Duration::from_secs(1);
        allow_outbound(app, &["127.0.0.1"]);
    })
    .await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    let admin = s.admin.clone();
    let reader = s.token("reader", &[("/public", "read")]);
    let outsider = s.token("outsider", &[("/elsewhere", "read,write,use")]);
    let c = Client {
        s: &s,
        instances: Mutex::default(),
        canaries: vec!["pw-canary-1", "pw-canary-2", "client-canary"],
    };
    let (a, r, o) = (
        Some(admin.as_str()),
        Some(reader.as_str()),
        Some(outsider.as_str()),
    );
    use Method as M;

    // Service endpoints.
    c.expect(
        M::GET,
        "/healthz",
        "/healthz",
        None,
        Body::None,
        (200, None),
    )
    .await;
    c.expect(
        M::GET,
        "/healthz",
        "/healthz?x=1",
        None,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    c.expect(
        M::POST,
        "/healthz",
        "/healthz",
        None,
        Body::None,
        (405, Some("method-not-allowed")),
    )
    .await;
    for open in ["/readyz", "/metrics"] {
        c.expect(M::GET, open, open, None, Body::None, (200, None))
            .await;
        let with_query = format!("{open}?x=1");
        c.expect(
            M::GET,
            open,
            &with_query,
            None,
            Body::None,
            (400, Some("bad-query")),
        )
        .await;
    }
    c.expect(
        M::GET,
        "/v1/keys",
        "/v1/keys",
        None,
        Body::None,
        (200, None),
    )
    .await;
    c.expect(
        M::GET,
        "/v1/keys",
        "/v1/keys?verbose",
        None,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    let served = c
        .expect(
            M::GET,
            "/v1/openapi.json",
            "/v1/openapi.json",
            None,
            Body::None,
            (200, None),
        )
        .await
        .json();
    assert_eq!(served, doc, "GET /v1/openapi.json serves another document");
    c.expect(
        M::GET,
        "/v1/openapi.json",
        "/v1/openapi.json?format=yaml",
        None,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    c.expect(
        M::GET,
        "/v1/nothing",
        "/v1/nothing",
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;

    // Deployments.
    let p = project(Some("pw-canary-1"), true, b"mfd-v1");
    let sealed = Opts::new("/public/orders").sealed(s.recipient());
    let good = bundle(&k, &sealed, &p.mappings, &p.credentials);
    let zip = |b: &[u8]| Body::Raw("application/zip", b.to_vec());
    let d = "/v1/deployments";
    c.expect(M::POST, d, d, None, zip(&good), (401, Some("unauthorized")))
        .await;
    c.expect(
        M::POST,
        d,
        "/v1/deployments?dryrun=true",
        a,
        zip(&good),
        (400, Some("bad-query")),
    )
    .await;
    c.expect(
        M::POST,
        d,
        "/v1/deployments?dry_run=true&verify=true",
        a,
        zip(&good),
        (400, Some("bad-query")),
    )
    .await;
    let planned = c
        .expect(
            M::POST,
            d,
            "/v1/deployments?dry_run=true",
            a,
            zip(&good),
            (200, None),
        )
        .await
        .json();
    assert_eq!(
        planned["changes"].as_array().map(Vec::len),
        Some(2),
        "{planned}"
    );
    c.expect(
        M::POST,
        d,
        d,
        a,
        Body::Raw("application/json", good.clone()),
        (415, Some("unsupported-media-type")),
    )
    .await;
    c.expect(M::POST, d, d, r, zip(&good), (403, Some("forbidden")))
        .await;
    c.expect(
        M::POST,
        d,
        d,
        a,
        zip(b"not a zip at all"),
        (400, Some("not-a-zip")),
    )
    .await;
    c.expect(
        M::POST,
        d,
        d,
        a,
        zip(&vec![7u8; 300 * 1024]),
        (413, Some("too-large")),
    )
    .await;
    let untrusted = bundle(
        &SigningKey::generate().unwrap(),
        &sealed,
        &p.mappings,
        &p.credentials,
    );
    c.expect(
        M::POST,
        d,
        d,
        a,
        zip(&untrusted),
        (422, Some("unknown-signer")),
    )
    .await;
    let stalled = stalled_deploy(&s, &admin).await;
    assert_eq!(
        (stalled.status, stalled.code().as_deref()),
        (408, Some("body-timeout"))
    );
    let rec = c
        .expect(
            M::POST,
            d,
            "/v1/deployments?verify=false",
            a,
            zip(&good),
            (201, None),
        )
        .await
        .json();
    assert_eq!(rec["replayed"], false);
    let replay = c
        .expect(M::POST, d, d, a, zip(&good), (200, None))
        .await
        .json();
    assert_eq!(replay["replayed"], true);
    let replan = c
        .expect(
            M::POST,
            d,
            "/v1/deployments?dry_run=true",
            a,
            zip(&good),
            (200, None),
        )
        .await
        .json();
    assert_eq!(replan["replay"], true);
    // One deployment, and a rollback to it.
    let one = "/v1/deployments/{id}";
    let id = rec["id"].as_i64().unwrap();
    let shown = c
        .expect(
            M::GET,
            one,
            &format!("/v1/deployments/{id}"),
            r,
            Body::None,
            (200, None),
        )
        .await
        .json();
    assert_eq!(shown, rec);
    c.expect(
        M::GET,
        one,
        "/v1/deployments/99999",
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    c.expect(
        M::GET,
        one,
        &format!("/v1/deployments/{id}"),
        o,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    c.expect(
        M::GET,
        one,
        &format!("/v1/deployments/{id}"),
        None,
        Body::None,
        (401, Some("unauthorized")),
    )
    .await;
    c.expect(
        M::GET,
        one,
        &format!("/v1/deployments/{id}?x=1"),
        a,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    let back = "/v1/deployments/{id}/rollback";
    let rb = format!("/v1/deployments/{id}/rollback");
    c.expect(M::POST, back, &rb, r, Body::None, (403, Some("forbidden")))
        .await;
    c.expect(
        M::POST,
        back,
        &rb,
        None,
        Body::None,
        (401, Some("unauthorized")),
    )
    .await;
    c.expect(
        M::POST,
        back,
        "/v1/deployments/99999/rollback",
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    c.expect(
        M::POST,
        back,
        &format!("{rb}?x=1"),
        a,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    let rolled = c
        .expect(M::POST, back, &rb, a, Body::None, (201, None))
        .await
        .json();
    assert_eq!(rolled["rollback_of"], id);
    let old = bundle(
        &k,
        &Opts::new("/public/orders")
            .sealed(s.recipient())
            .created(ts_minus(60)),
        &p.mappings,
        &p.credentials,
    );
    c.expect(M::POST, d, d, a, zip(&old), (409, Some("stale")))
        .await;
    // A standalone credential bundle: an oauth2 credential whose token endpoint is a loopback
    // mock (listed in outbound_allow), and a password credential whose check would go to a
    // loopback address that is not listed.
    let idp = token_endpoint(
        200,
        json!({"access_token": "issued-token", "token_type": "Bearer",
            "expires_in": 3600, "refresh_token": "issued-refresh"}),
    )
    .await;
    let refusing = token_endpoint(401, json!({"error": "invalid_client"})).await;
    let mut opts = Opts::new("/public/orders").sealed(s.recipient());
    opts.kind = BundleKind::Credentials;
    let creds = [
        credential(json!({
            "name": "crm", "type": "oauth2", "grant_type": "authorization_code",
            "authorization_endpoint": "https://127.0.0.1:9/authorize",
            "token_endpoint": format!("{idp}/token"), "client_id": "flowpack",
            "client_secret": "client-canary", "redirect_uri": "https://receiver.example/v1/oauth/callback",
            "allow_usage_for": ["http"], "include_in_deployment": true,
        })),
        credential(json!({
            "name": "batch", "type": "oauth2", "grant_type": "client_credentials",
            "token_endpoint": format!("{refusing}/token"), "client_id": "batch",
            "client_secret": "client-canary", "include_in_deployment": true,
        })),
        credential(json!({
            "name": "intranet", "type": "password", "username": "svc", "password": "pw-canary-2",
            "verify_url": "https://127.0.0.2:9/ping", "include_in_deployment": true,
        })),
    ];
    let creds_bundle = bundle(&k, &opts, &[], &creds);
    // Verified first: no credential can pass (no refresh token yet; a token endpoint that
    // refuses the client; a destination the outbound policy refuses), so the bundle is refused
    // whole.
    let refused = c
        .expect(
            M::POST,
            d,
            "/v1/deployments?verify=true",
            a,
            zip(&creds_bundle),
            (422, Some("credential-verification-failed")),
        )
        .await
        .json();
    assert_eq!(
        refused["verifications"].as_array().map(Vec::len),
        Some(3),
        "{refused}"
    );
    c.expect(M::POST, d, d, a, zip(&creds_bundle), (201, None))
        .await;
    // Listings.
    let page = c
        .expect(
            M::GET,
            d,
            "/v1/deployments?limit=1",
            a,
            Body::None,
            (200, None),
        )
        .await
        .json();
    assert!(page["next"].is_i64(), "{page}");
    let next = page["next"].as_i64().unwrap();
    c.expect(
        M::GET,
        d,
        &format!("/v1/deployments?limit=1&before={next}&container=/public/orders"),
        r,
        Body::None,
        (200, None),
    )
    .await;
    c.expect(
        M::GET,
        d,
        "/v1/deployments?limit=0",
        a,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    c.expect(
        M::GET,
        d,
        "/v1/deployments?container=public",
        a,
        Body::None,
        (400, Some("bad-path")),
    )
    .await;
    c.expect(
        M::GET,
        d,
        "/v1/deployments?container=/public/orders",
        o,
        Body::None,
        (403, Some("forbidden")),
    )
    .await;
    c.expect(M::GET, d, d, None, Body::None, (401, Some("unauthorized")))
        .await;
    c.expect(
        M::DELETE,
        d,
        d,
        a,
        Body::None,
        (405, Some("method-not-allowed")),
    )
    .await;
    let au = "/v1/audit";
    let rows = c
        .expect(M::GET, au, au, a, Body::None, (200, None))
        .await
        .json();
    assert!(
        rows["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["verified"] == false || r["verified"] == true)
    );
    c.expect(
        M::GET,
        au,
        "/v1/audit?limit=2&container=/public/orders",
        r,
        Body::None,
        (200, None),
    )
    .await;
    c.expect(
        M::GET,
        au,
        "/v1/audit?before=soon",
        a,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    c.expect(
        M::GET,
        au,
        "/v1/audit?container=/public",
        o,
        Body::None,
        (403, Some("forbidden")),
    )
    .await;
    c.expect(
        M::GET,
        au,
        au,
        Some("fpt_1_wrong"),
        Body::None,
        (401, Some("unauthorized")),
    )
    .await;
    c.expect(
        M::POST,
        au,
        au,
        a,
        Body::None,
        (405, Some("method-not-allowed")),
    )
    .await;

    // Containers.
    let ct = "/v1/containers/{path}";
    c.expect(
        M::GET,
        "/v1/containers/",
        "/v1/containers/",
        a,
        Body::None,
        (200, None),
    )
    .await;
    c.expect(
        M::GET,
        ct,
        "/v1/containers/public/orders",
        r,
        Body::None,
        (200, None),
    )
    .await;
    c.expect(
        M::GET,
        ct,
        "/v1/containers/public/nothing",
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    c.expect(
        M::GET,
        ct,
        "/v1/containers/public/orders",
        o,
        Body::None,
        (403, Some("forbidden")),
    )
    .await;
    c.expect(
        M::GET,
        ct,
        "/v1/containers/public/orders?all",
        a,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    c.expect(
        M::GET,
        ct,
        "/v1/containers/public/a%20b",
        a,
        Body::None,
        (400, Some("bad-path")),
    )
    .await;
    c.expect(
        M::GET,
        ct,
        "/v1/containers/public",
        None,
        Body::None,
        (401, Some("unauthorized")),
    )
    .await;
    c.expect(
        M::POST,
        ct,
        "/v1/containers/public",
        a,
        Body::None,
        (405, Some("method-not-allowed")),
    )
    .await;

    // Mappings. One more, elsewhere, with an external parameter that names the type it needs.
    let dir = tempfile::tempdir().unwrap();
    let billing = mapping_input(
        dir.path(),
        json!({"name": "billing", "parameters": [
            {"name": "ledger", "type": "credential", "external": true, "credential_type": "database"}
        ], "files": []}),
        &[],
    );
    c.expect(
        M::POST,
        d,
        d,
        a,
        zip(&bundle(&k, &Opts::new("/public/billing"), &[billing], &[])),
        (201, None),
    )
    .await;
    let external = c
        .expect(
            M::GET,
            "/v1/mappings/{path}",
            "/v1/mappings/public/billing/billing",
            r,
            Body::None,
            (200, None),
        )
        .await
        .json();
    assert_eq!(external["credential_parameters"][0]["external"], true);
    let mp = "/v1/mappings/{path}";
    let m = "/v1/mappings/public/orders/orders-to-erp";
    let shown = c
        .expect(M::GET, mp, m, r, Body::None, (200, None))
        .await
        .json();
    assert_eq!(shown["credential_parameters"][0]["has_secrets"], true);
    c.expect(
        M::GET,
        mp,
        "/v1/mappings/public/orders/nothing",
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    c.expect(M::GET, mp, m, o, Body::None, (403, Some("forbidden")))
        .await;
    c.expect(M::GET, mp, m, None, Body::None, (401, Some("unauthorized")))
        .await;
    c.expect(
        M::PUT,
        mp,
        m,
        a,
        Body::None,
        (405, Some("method-not-allowed")),
    )
    .await;
    let mf = "/v1/mappings/{path}/files/{file}";
    let file = c
        .expect(
            M::GET,
            mf,
            &format!("{m}/files/schemas/order.xsd"),
            r,
            Body::None,
            (200, None),
        )
        .await;
    assert_eq!(&file.body[..], b"<xsd/>");
    c.expect(
        M::GET,
        mf,
        &format!("{m}/files/nope.txt"),
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    c.expect(
        M::GET,
        mf,
        &format!("{m}/files/orders.mfd"),
        o,
        Body::None,
        (403, Some("forbidden")),
    )
    .await;
    c.expect(
        M::GET,
        mf,
        &format!("{m}/files/orders.mfd?raw"),
        a,
        Body::None,
        (400, Some("bad-query")),
    )
    .await;
    let rs = "/v1/mappings/{path}/resolve";
    let resolve = format!("{m}/resolve");
    let resolved = c
        .expect(
            M::POST,
            rs,
            &resolve,
            a,
            Body::Json(json!({"usage": "http"})),
            (200, None),
        )
        .await
        .json();
    assert_eq!(
        resolved["parameters"]["erp.credentials"]["source"],
        "deployed"
    );
    c.expect(M::POST, rs, &resolve, a, Body::Json(json!({"usage": "http", "parameters": {"erp.credentials": {"inline": {"type": "password", "password": "pw-canary-2"}}}})), (200, None),)
        .await;
    c.expect(
        M::POST,
        rs,
        &resolve,
        a,
        Body::Json(json!({"usage": "ftp"})),
        (422, Some("usage-not-allowed")),
    )
    .await;
    c.expect(
        M::POST,
        rs,
        &resolve,
        a,
        Body::Json(
            json!({"usage": "http", "parameters": {"nope": {"credential": "/public/orders/erp"}}}),
        ),
        (422, Some("unknown-parameter")),
    )
    .await;
    c.expect(
        M::POST,
        rs,
        &resolve,
        a,
        Body::Raw("application/json", b"{".to_vec()),
        (400, Some("bad-json")),
    )
    .await;
    c.expect(
        M::POST,
        rs,
        &resolve,
        a,
        Body::Raw("application/json", vec![b' '; (1 << 20) + 1]),
        (413, Some("too-large")),
    )
    .await;
    c.expect(
        M::POST,
        rs,
        &resolve,
        r,
        Body::Json(json!({"usage": "http"})),
        (403, Some("forbidden")),
    )
    .await;
    c.expect(
        M::POST,
        rs,
        "/v1/mappings/public/orders/nothing/resolve",
        a,
        Body::Json(json!({"usage": "http"})),
        (404, Some("not-found")),
    )
    .await;

    // Credentials.
    let cp_ = "/v1/credentials/{path}";
    let erp = "/v1/credentials/public/orders/erp";
    let shown = c
        .expect(M::GET, cp_, erp, r, Body::None, (200, None))
        .await
        .json();
    assert_eq!(shown["password"]["set"], true);
    c.expect(
        M::GET,
        cp_,
        "/v1/credentials/public/orders/crm",
        a,
        Body::None,
        (200, None),
    )
    .await;
    c.expect(
        M::GET,
        cp_,
        "/v1/credentials/public/orders/nothing",
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    c.expect(M::GET, cp_, erp, o, Body::None, (403, Some("forbidden")))
        .await;
    c.expect(
        M::GET,
        cp_,
        "/v1/credentials/public/a%20b",
        a,
        Body::None,
        (400, Some("bad-path")),
    )
    .await;
    c.expect(
        M::PATCH,
        cp_,
        erp,
        r,
        Body::Json(json!({"username": "x"})),
        (403, Some("forbidden")),
    )
    .await;
    c.expect(
        M::PATCH,
        cp_,
        erp,
        a,
        Body::Json(json!({"type": "oauth2"})),
        (422, Some("read-only-field")),
    )
    .await;
    c.expect(
        M::PATCH,
        cp_,
        erp,
        a,
        Body::Json(json!({"port": 5432})),
        (422, Some("bad-record")),
    )
    .await;
    c.expect(
        M::PATCH,
        cp_,
        erp,
        a,
        Body::Raw("application/json", b"[1,".to_vec()),
        (400, Some("bad-json")),
    )
    .await;
    let patched = c
        .expect(
            M::PATCH,
            cp_,
            erp,
            a,
            Body::Json(json!({"username": "svc2", "description": null})),
            (200, None),
        )
        .await
        .json();
    assert_eq!(patched["password"]["set"], true);
    // A new destination without the secret again forgets it.
    let moved = c
        .expect(
            M::PATCH,
            cp_,
            erp,
            a,
            Body::Json(json!({"verify_url": "https://127.0.0.1:9/ping"})),
            (200, None),
        )
        .await
        .json();
    assert_eq!(
        (moved["needs_secrets"].clone(), moved.get("password")),
        (json!(true), None)
    );
    c.expect(
        M::PATCH,
        cp_,
        erp,
        a,
        Body::Json(json!({"password": "pw-canary-2"})),
        (200, None),
    )
    .await;
    // Create on the server: in a container that does not exist yet, secrets in clear from
    // loopback; never over an existing one.
    let created_path = "/v1/credentials/public/created/api";
    let created = c
        .expect(
            M::PUT,
            cp_,
            created_path,
            a,
            Body::Json(
                json!({"type": "api_key", "key": "put-canary-1", "placement": "header",
                "parameter_name": "X-API-Key", "allow_usage_for": ["http"]}),
            ),
            (201, None),
        )
        .await
        .json();
    assert_eq!(created["key"]["set"], true);
    assert_eq!(created["path"], "/public/created/api");
    c.expect(
        M::PUT,
        cp_,
        created_path,
        a,
        Body::Json(json!({"type": "api_key"})),
        (409, Some("exists")),
    )
    .await;
    c.expect(
        M::PUT,
        cp_,
        "/v1/credentials/public/created/other",
        a,
        Body::Json(json!({"type": "api_key", "kee": "x"})),
        (422, Some("bad-record")),
    )
    .await;
    c.expect(
        M::PUT,
        cp_,
        "/v1/credentials/public/created/other",
        a,
        Body::Raw("application/json", b"[1,".to_vec()),
        (400, Some("bad-json")),
    )
    .await;
    c.expect(
        M::PUT,
        cp_,
        "/v1/credentials/public/created/other",
        r,
        Body::Json(json!({"type": "api_key"})),
        (403, Some("forbidden")),
    )
    .await;
    c.expect(
        M::DELETE,
        cp_,
        erp,
        a,
        Body::None,
        (409, Some("credential-in-use")),
    )
    .await;
    c.expect(M::DELETE, cp_, erp, r, Body::None, (403, Some("forbidden")))
        .await;
    c.expect(
        M::POST,
        cp_,
        erp,
        a,
        Body::None,
        (405, Some("method-not-allowed")),
    )
    .await;

    // OAuth and verification.
    let tk = "/v1/credentials/{path}/token";
    c.expect(
        M::POST,
        tk,
        &format!("{erp}/token"),
        a,
        Body::Json(json!({"rejected": 5})),
        (422, Some("bad-request-body")),
    )
    .await;
    let crm = "/v1/credentials/public/orders/crm";
    let refused = c
        .expect(
            M::POST,
            tk,
            "/v1/credentials/public/orders/batch/token",
            a,
            Body::None,
            (502, Some("token-endpoint-error")),
        )
        .await
        .json();
    assert_eq!(refused["oauth_error"], "invalid_client", "{refused}");
    c.expect(
        M::POST,
        tk,
        &format!("{erp}/token"),
        a,
        Body::None,
        (422, Some("not-oauth2")),
    )
    .await;
    c.expect(
        M::POST,
        tk,
        &format!("{crm}/token"),
        a,
        Body::None,
        (409, Some("needs-authorization")),
    )
    .await;
    c.expect(
        M::POST,
        tk,
        &format!("{crm}/token"),
        r,
        Body::None,
        (403, Some("forbidden")),
    )
    .await;
    c.expect(
        M::POST,
        tk,
        "/v1/credentials/public/orders/none/token",
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    let az = "/v1/credentials/{path}/authorize";
    c.expect(
        M::POST,
        az,
        &format!("{erp}/authorize"),
        a,
        Body::None,
        (422, Some("not-oauth2")),
    )
    .await;
    let cb = "/v1/oauth/callback";
    c.expect(
        M::GET,
        cb,
        "/v1/oauth/callback?state=never&code=x",
        None,
        Body::None,
        (400, Some("invalid-state")),
    )
    .await;
    c.expect(
        M::POST,
        cb,
        cb,
        None,
        Body::None,
        (405, Some("method-not-allowed")),
    )
    .await;
    let started = c
        .expect(
            M::POST,
            az,
            &format!("{crm}/authorize"),
            a,
            Body::None,
            (200, None),
        )
        .await
        .json();
    let state = query_value(started["authorize_url"].as_str().unwrap(), "state").to_owned();
    c.expect(
        M::GET,
        cb,
        &format!("/v1/oauth/callback?state={state}&error=access_denied"),
        None,
        Body::None,
        (400, Some("authorization-denied")),
    )
    .await;
    let started = c
        .expect(
            M::POST,
            az,
            &format!("{crm}/authorize"),
            a,
            Body::None,
            (200, None),
        )
        .await
        .json();
    let state = query_value(started["authorize_url"].as_str().unwrap(), "state").to_owned();
    // The authorization server may add parameters of its own: they are not refused here.
    c.expect(
        M::GET,
        cb,
        &format!("/v1/oauth/callback?state={state}&code=abc&session_state=x"),
        None,
        Body::None,
        (200, None),
    )
    .await;
    let token = c
        .expect(
            M::POST,
            tk,
            &format!("{crm}/token"),
            a,
            Body::None,
            (200, None),
        )
        .await
        .json();
    assert_eq!(token["access_token"], "issued-token");
    let vf = "/v1/credentials/{path}/verify";
    let verified = c
        .expect(
            M::POST,
            vf,
            &format!("{crm}/verify"),
            a,
            Body::None,
            (200, None),
        )
        .await
        .json();
    assert_eq!(verified["ok"], true, "{verified}");
    c.expect(
        M::POST,
        vf,
        "/v1/credentials/public/orders/intranet/verify",
        a,
        Body::None,
        (422, Some("outbound-not-allowed")),
    )
    .await;
    c.expect(
        M::POST,
        vf,
        &format!("{crm}/verify"),
        r,
        Body::None,
        (403, Some("forbidden")),
    )
    .await;
    c.expect(
        M::POST,
        vf,
        &format!("{crm}/verify"),
        None,
        Body::None,
        (401, Some("unauthorized")),
    )
    .await;

    // HEAD, wherever the document has it: on a path its GET answered with a success (the
    // callback's state works once: a new flow gives one).
    for (method, template) in operations(&doc) {
        if method != "HEAD" {
            continue;
        }
        let path = if template == cb {
            let started = c
                .expect(
                    M::POST,
                    az,
                    &format!("{crm}/authorize"),
                    a,
                    Body::None,
                    (200, None),
                )
                .await
                .json();
            let state = query_value(started["authorize_url"].as_str().unwrap(), "state");
            format!("/v1/oauth/callback?state={state}&code=abc")
        } else {
            let instances = c.instances.lock().unwrap();
            instances
                .get(&template)
                .unwrap_or_else(|| panic!("no GET {template} answered a success"))
                .clone()
        };
        let head = c.call(M::HEAD, &template, &path, a, Body::None).await;
        assert!(head.status < 300, "HEAD {path}: {}", head.status);
        if template == mp {
            c.expect(M::HEAD, mp, m, None, Body::None, (401, None))
                .await;
        }
    }

    // Deletes, last.
    c.expect(
        M::DELETE,
        mp,
        "/v1/mappings/public/orders/nothing",
        a,
        Body::None,
        (404, Some("not-found")),
    )
    .await;
    c.expect(M::DELETE, mp, m, r, Body::None, (403, Some("forbidden")))
        .await;
    c.expect(M::DELETE, mp, m, a, Body::None, (204, None)).await;
    c.expect(M::DELETE, cp_, erp, a, Body::None, (204, None))
        .await;

    // Every operation of the document was answered with a success, and every kind of
    // refusal the document describes for clients was met.
    let seen: Vec<(String, String, u16)> = s
        .client
        .seen()
        .into_iter()
        .map(|(m, t, st)| (m.to_string(), t.label("").to_owned(), st))
        .collect();
    for (method, path) in operations(&doc) {
        assert!(
            seen.iter()
                .any(|(m, p, st)| *m == method && *p == path && (200..300).contains(st)),
            "{method} {path} was never answered with a success"
        );
    }
    // The stalled upload was sent on a raw socket and checked by itself.
    let statuses: BTreeSet<u16> = seen
        .iter()
        .map(|(_, _, st)| *st)
        .chain([stalled.status])
        .collect();
    for st in [400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 502] {
        assert!(statuses.contains(&st), "no {st} answer was checked");
    }
    s.stop().await;
}

#[test]
fn every_problem_code_is_documented() {
    let api_md = include_str!("../../docs/API.md");
    let doc = document();
    // Descriptions of the responses, where the document names the codes each status can carry.
    let mut described = String::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for m in METHODS {
            for r in item[m]["responses"]
                .as_object()
                .into_iter()
                .flat_map(|rs| rs.values())
            {
                let r = match r.get("$ref") {
                    Some(Value::String(x)) => resolve(&doc, x).unwrap(),
                    _ => r,
                };
                described.push_str(r["description"].as_str().unwrap_or(""));
            }
        }
    }
    // And the answers common to every path (405, unknown paths).
    for r in doc["components"]["responses"].as_object().unwrap().values() {
        described.push_str(r["description"].as_str().unwrap_or(""));
    }
    for code in flowpack_receiver::problem::ProblemCode::ALL {
        let code = code.as_str();
        // A bundle that cannot be read for a fault of the receiver's own is answered
        // `internal`: `io` names that cause in the log only.
        if code == "io" {
            continue;
        }
        let quoted = format!("`{code}`");
        // As `code`, or after its status as in `405 method-not-allowed`.
        let after_status = format!(" {code}`");
        assert!(
            api_md.contains(&quoted) || api_md.contains(&after_status),
            "docs/API.md does not name {quoted}"
        );
        assert!(
            described.contains(&quoted),
            "no response of the OpenAPI document names {quoted}"
        );
    }
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let doc = document();
    let routes: BTreeSet<(String, String)> = flowpack_receiver::api::routes()
        .into_iter()
        .map(|(m, t)| (m.to_string(), t.to_owned()))
        .collect();
    assert!(routes.len() > 20, "{routes:?}");
    let documented = operations(&doc);
    for (method, template) in &routes {
        assert!(
            documented.contains(&(method.clone(), template.clone())),
            "the route {method} {template} is not in the OpenAPI document"
        );
    }
    for (method, path) in &documented {
        assert!(
            routes
                .iter()
                .any(|(m, t)| m == method && instance_of(t, path)),
            "the document has {method} {path}, which no route serves"
        );
    }
    assert!(instance_of("/v1/containers/{path}", "/v1/containers/"));
    assert!(!instance_of("/v1/mappings/{path}", "/v1/mapping/x"));
}

#[test]
fn the_validator_refuses_answers_the_document_does_not_allow() {
    let doc = document();
    let v = Validator::new(&doc);
    let schema = |name: &str| format!("#/components/schemas/{name}");
    // A secret in clear where the document allows only its fingerprint.
    let mut leaked = json!({"path": "/a/erp", "name": "erp", "type": "password",
        "needs_secrets": false, "password": {"set": true, "fingerprint": "0123456789abcdef"}});
    assert!(v.validate(&schema("Credential"), &leaked).is_ok());
    leaked["password"] = json!("hunter2");
    assert!(v.validate(&schema("Credential"), &leaked).is_err());
    // A member the document does not know, and a wrong type inside a `$ref`.
    assert!(
        v.validate(&schema("Health"), &json!({"status": "ok", "uptime": 1}))
            .is_err()
    );
    let page = json!({"deployments": [{"id": "1", "bundle_id": "0".repeat(32), "container": "/a",
        "created": [], "updated": [], "needs_secrets": [], "replayed": false}], "next": null});
    assert!(v.validate(&schema("DeploymentPage"), &page).is_err());
    // A problem document without its code.
    let problem = json!({"type": "urn:flowpack:problem:x", "title": "Conflict", "status": 409,
        "detail": "d"});
    assert!(v.validate(&schema("Problem"), &problem).is_err());
    // The check itself: an undocumented status is refused, and so is an answer to a path
    // the document lacks that is not its documented 404.
    let teapot = Response::from_parts(
        418,
        &[("content-type".into(), "application/problem+json".into())],
        Default::default(),
    );
    assert!(v.check(&Method::GET, "/healthz", &teapot).is_err());
    let ok = Response::from_parts(200, &[], Default::default());
    assert!(v.check(&Method::GET, "/v1/nothing", &ok).is_err());
    // The operation is found from the path: the most specific template with the method.
    let named = |m: Method, p: &str| v.target(&m, p);
    assert_eq!(
        named(Method::GET, "/v1/mappings/a/b/files/x/y"),
        Target::Operation("/v1/mappings/{path}/files/{file}".into())
    );
    assert_eq!(
        named(Method::GET, "/v1/containers/"),
        Target::Operation("/v1/containers/".into())
    );
    assert_eq!(
        named(Method::POST, "/healthz"),
        Target::OtherMethod("/healthz".into())
    );
    assert_eq!(named(Method::GET, "/v2/x"), Target::Nothing);
}

/// The testkit's client checks every answer: one the document does not allow makes the
/// request panic, naming the method, the path and the status.
#[tokio::test]
async fn the_client_panics_on_an_answer_the_document_does_not_allow() {
    install_provider();
    let client = flowpack_testkit::Client::new();
    let extra_member = token_endpoint(200, json!({"status": "ok", "uptime": 1})).await;
    let conforming = token_endpoint(200, json!({"status": "ok"})).await;
    for (base, path) in [(&extra_member, "/healthz"), (&conforming, "/v2/nothing")] {
        let (c, url) = (client.clone(), format!("{base}{path}"));
        let sent = tokio::spawn(async move { c.get(url).send().await }).await;
        let panic = sent.expect_err("the answer is refused").into_panic();
        let message = panic.downcast_ref::<String>().expect("a message");
        assert!(
            message.contains(&format!("GET {path}")) && message.contains("→ 200"),
            "{message}"
        );
    }
    let r = client
        .get(format!("{conforming}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        client.seen().len(),
        1,
        "only the conforming answer is recorded"
    );
}
