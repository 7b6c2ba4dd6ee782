//! Secrets are bound to where they are sent, replays are bound to the exact bundle, and the
//! audit trail names what a refused bundle claimed. Each test here was written against a way
//! around these rules that the receiver once allowed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use base64::Engine;
use flowpack_shared::bundle::BundleKind;
use flowpack_shared::keys::SigningKey;
use flowpack_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_SECRET: &str = "cl13nt-s3cret/+=é";
const REFRESH: &str = "r3fresh-canary-token";

// ---------------------------------------------------------------------------------------------
// A token endpoint that records every request it gets

/// An HTTP server on loopback that records each request (head and body, as text) and answers
/// every one with the same status and JSON body.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start(status: u16, body: Value) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let answer = body.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    // The head, then as many body bytes as Content-Length says.
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            break;
                        }
                        req.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&req).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if req.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&req).into_owned());
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        Recorder { url, seen, task }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Every form in which a request could carry `secret`: raw, percent- and form-encoded, and
/// inside a Basic header as `client_id:secret`.
fn encodings(client_id: &str, secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let form_id: String = url::form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    vec![
        secret.to_owned(),
        form.clone(),
        form.replace('+', "%20"),
        b64.encode(format!("{client_id}:{secret}")),
        b64.encode(format!("{form_id}:{form}")),
    ]
}

fn assert_never_sent(r: &Recorder, client_id: &str, secret: &str) {
    for req in r.requests() {
        for enc in encodings(client_id, secret) {
            assert!(
                !req.contains(&enc),
                "a stored secret was sent to {}: {req}",
                r.url
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up

/// A server that may send requests to loopback (the recorders live there), a signer trusted
/// for `/`, and a token with only `write` on `/apps`.
async fn server() -> (Server, SigningKey, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let init = flowpack_testkit::init(&data);
    let config = data.join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["outbound_allow"] = json!(["127.0.0.1"]);
    std::fs::write(&config, c.to_string()).unwrap();
    let s = Server::serve_in(dir, init.admin_token.to_string(), |_| {}).await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    let writer = s.token("writer", &[("/apps", "write")]);
    (s, k, writer)
}

fn oauth(token_endpoint: &str, secrets: &[(&str, &str)], include: bool) -> Value {
    let mut c = json!({
        "name": "erp", "type": "oauth2", "grant_type": "client_credentials",
        "token_endpoint": token_endpoint, "client_id": "erp-client",
        "allow_usage_for": ["http"], "include_in_deployment": include,
    });
    for (k, v) in secrets {
        c[*k] = json!(v);
    }
    c
}

async fn deploy_creds(
    s: &Server,
    k: &SigningKey,
    token: &str,
    records: &[Value],
    query: &str,
) -> (u16, Value) {
    let creds: Vec<_> = records.iter().map(|r| credential(r.clone())).collect();
    let mut o = Opts::new("/apps").sealed(s.recipient());
    o.kind = BundleKind::Credentials;
    let b = bundle(k, &o, &[], &creds);
    let r = s
        .client
        .post(s.url(&format!("/v1/deployments{query}")))
        .bearer_auth(token)
        .header("content-type", "application/zip")
        .body(b)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// The stored credential `/apps/erp`, redacted.
async fn erp(s: &Server) -> Value {
    let (st, v) = s.get(&s.admin, "/v1/credentials/apps/erp").await;
    assert_eq!(st, 200, "{v}");
    v
}

const TOKEN_OK: fn() -> Value =
    || json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 3600});

// ---------------------------------------------------------------------------------------------
// Secrets bound to their destination

#[tokio::test]
async fn redeploy_moving_the_token_endpoint_without_secrets_forgets_them() {
    let (s, k, _) = server().await;
    let a = Recorder::start(200, TOKEN_OK()).await;
    let b = Recorder::start(200, TOKEN_OK()).await;
    let first = oauth(
        &a.url,
        &[("client_secret", CLIENT_SECRET), ("refresh_token", REFRESH)],
        true,
    );
    assert_eq!(deploy_creds(&s, &k, &s.admin, &[first], "").await.0, 201);
    assert!(erp(&s).await["client_secret"]["set"] == true);

    let moved = oauth(&b.url, &[], false);
    let (st, rec) = deploy_creds(&s, &k, &s.admin, &[moved], "").await;
    assert_eq!(st, 201, "{rec}");
    assert_eq!(rec["needs_secrets"], json!(["/apps/erp"]), "{rec}");
    assert_eq!(rec["secrets_cleared"], json!(["/apps/erp"]), "{rec}");
    let v = erp(&s).await;
    assert!(
        v.get("client_secret").is_none() && v.get("refresh_token").is_none(),
        "{v}"
    );
    assert_eq!(v["needs_secrets"], true);

    // The next token request has no secret to send (at most the client id, as a public
    // client would).
    s.send(
        Method::POST,
        &s.admin,
        "/v1/credentials/apps/erp/token",
        None,
    )
    .await;
    assert_never_sent(&b, "erp-client", CLIENT_SECRET);
    assert_never_sent(&b, "erp-client", REFRESH);
    s.stop().await;
}

#[tokio::test]
async fn redeploy_moving_the_destination_with_the_secrets_keeps_them() {
    let (s, k, _) = server().await;
    let first = oauth(
        "https://idp.example/token",
        &[("client_secret", CLIENT_SECRET)],
        true,
    );
    assert_eq!(deploy_creds(&s, &k, &s.admin, &[first], "").await.0, 201);
    let moved = oauth(
        "https://idp2.example/token",
        &[("client_secret", "another")],
        true,
    );
    let (st, rec) = deploy_creds(&s, &k, &s.admin, &[moved], "").await;
    assert_eq!(st, 201, "{rec}");
    assert_eq!(rec["needs_secrets"], json!([]), "{rec}");
    assert_eq!(rec["secrets_cleared"], json!([]), "{rec}");
    assert_eq!(erp(&s).await["client_secret"]["set"], true);
    // A redeploy that leaves the destination as it is never blanks a secret.
    let same = oauth("https://idp2.example/token", &[], false);
    let (_, rec) = deploy_creds(&s, &k, &s.admin, &[same], "").await;
    assert_eq!(rec["needs_secrets"], json!([]), "{rec}");
    assert_eq!(erp(&s).await["client_secret"]["set"], true);
    s.stop().await;
}

#[tokio::test]
async fn patch_moving_the_token_endpoint_forgets_secrets_so_token_sends_nothing() {
    let (s, k, writer) = server().await;
    let a = Recorder::start(200, TOKEN_OK()).await;
    let b = Recorder::start(200, TOKEN_OK()).await;
    let first = oauth(
        &a.url,
        &[("client_secret", CLIENT_SECRET), ("refresh_token", REFRESH)],
        true,
    );
    assert_eq!(deploy_creds(&s, &k, &s.admin, &[first], "").await.0, 201);

    // A token with only `write` moves the endpoint.
    let (st, v) = s
        .send(
            Method::PATCH,
            &writer,
            "/v1/credentials/apps/erp",
            Some(json!({"token_endpoint": b.url})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["needs_secrets"], true, "{v}");
    assert!(
        v.get("client_secret").is_none() && v.get("refresh_token").is_none(),
        "{v}"
    );

    // Whoever asks for a token next, no stored secret goes to the new endpoint.
    s.send(
        Method::POST,
        &s.admin,
        "/v1/credentials/apps/erp/token",
        None,
    )
    .await;
    s.send(
        Method::POST,
        &s.admin,
        "/v1/credentials/apps/erp/verify",
        None,
    )
    .await;
    assert_never_sent(&b, "erp-client", CLIENT_SECRET);
    assert_never_sent(&b, "erp-client", REFRESH);
    s.stop().await;
}

#[tokio::test]
async fn patch_of_a_destination_with_new_secrets_keeps_only_those() {
    let (s, k, _) = server().await;
    let first = oauth(
        "https://idp.example/token",
        &[("client_secret", CLIENT_SECRET), ("refresh_token", REFRESH)],
        true,
    );
    assert_eq!(deploy_creds(&s, &k, &s.admin, &[first], "").await.0, 201);
    let before = erp(&s).await;
    let (st, v) = s
        .send(
            Method::PATCH,
            &s.admin,
            "/v1/credentials/apps/erp",
            Some(
                json!({"token_endpoint": "https://idp2.example/token", "client_secret": "new-one"}),
            ),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["client_secret"]["set"], true, "{v}");
    assert_ne!(
        v["client_secret"]["fingerprint"],
        before["client_secret"]["fingerprint"]
    );
    assert!(
        v.get("refresh_token").is_none(),
        "the old refresh token was bound to the old endpoint: {v}"
    );
    // A change elsewhere (the description) keeps everything.
    let (_, v) = s
        .send(
            Method::PATCH,
            &s.admin,
            "/v1/credentials/apps/erp",
            Some(json!({"description": "moved"})),
        )
        .await;
    assert_eq!(v["client_secret"]["set"], true, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn every_destination_field_of_every_type_binds_its_secrets() {
    let (s, k, _) = server().await;
    let cases: Vec<(Value, &str, Value)> = vec![
        (
            json!({"name": "db", "type": "database", "host": "db.example", "port": 5432,
                   "driver": "postgresql", "username": "u", "password": "pw-canary",
                   "include_in_deployment": true}),
            "password",
            json!({"host": "db2.example"}),
        ),
        (
            json!({"name": "db2", "type": "database", "host": "db.example", "port": 5432,
                   "driver": "postgresql", "username": "u", "password": "pw-canary",
                   "include_in_deployment": true}),
            "password",
            json!({"port": 6543}),
        ),
        (
            json!({"name": "db3", "type": "database", "host": "db.example", "port": 3306,
                   "driver": "postgresql", "username": "u", "password": "pw-canary",
                   "include_in_deployment": true}),
            "password",
            json!({"driver": "mysql"}),
        ),
        (
            json!({"name": "key", "type": "api_key", "placement": "header",
                   "parameter_name": "X-API-Key", "key": "key-canary",
                   "verify_url": "https://api.example/ping", "include_in_deployment": true}),
            "key",
            json!({"verify_url": "https://evil.example/collect"}),
        ),
        (
            json!({"name": "pw", "type": "password", "username": "u", "password": "pw-canary",
                   "verify_url": "https://api.example/ping", "include_in_deployment": true}),
            "password",
            json!({"verify_url": null}),
        ),
        (
            json!({"name": "auth", "type": "oauth2", "grant_type": "authorization_code",
                   "authorization_endpoint": "https://idp.example/authorize",
                   "token_endpoint": "https://idp.example/token", "client_id": "c",
                   "client_secret": "cs-canary", "include_in_deployment": true}),
            "client_secret",
            json!({"authorization_endpoint": "https://evil.example/authorize"}),
        ),
    ];
    let records: Vec<Value> = cases.iter().map(|(r, _, _)| r.clone()).collect();
    let (st, rec) = deploy_creds(&s, &k, &s.admin, &records, "").await;
    assert_eq!(st, 201, "{rec}");
    for (record, field, change) in &cases {
        let path = format!("/v1/credentials/apps/{}", record["name"].as_str().unwrap());
        let (_, v) = s.get(&s.admin, &path).await;
        assert_eq!(v[field]["set"], true, "{v}");
        let (st, v) = s
            .send(Method::PATCH, &s.admin, &path, Some(change.clone()))
            .await;
        assert_eq!(st, 200, "{change}: {v}");
        assert!(v.get(*field).is_none(), "{change} kept {field}: {v}");
        assert_eq!(v["needs_secrets"], true, "{change}: {v}");
    }
    s.stop().await;
}

#[tokio::test]
async fn deploy_verify_sends_no_stored_secret_to_a_moved_endpoint() {
    let (s, k, writer) = server().await;
    let a = Recorder::start(200, TOKEN_OK()).await;
    let b = Recorder::start(401, json!({"error": "invalid_client"})).await;
    let first = oauth(&a.url, &[("client_secret", CLIENT_SECRET)], true);
    assert_eq!(deploy_creds(&s, &k, &s.admin, &[first], "").await.0, 201);

    // Moves the endpoint and carries one secret of its own, not the client secret: the
    // verification may try the new endpoint with what the bundle carries, never with what
    // the receiver stored for the old one.
    let mut moved = oauth(&b.url, &[("refresh_token", "bundle-refresh")], true);
    moved["grant_type"] = json!("authorization_code");
    moved["authorization_endpoint"] = json!(b.url);
    let (st, v) = deploy_creds(&s, &k, &writer, &[moved], "?verify=true").await;
    assert_eq!(st, 422, "{v}");
    assert!(
        !b.requests().is_empty(),
        "the verification did go to the new endpoint"
    );
    assert_never_sent(&b, "erp-client", CLIENT_SECRET);
    // Nothing was applied: the stored secret is still there, bound to the old endpoint.
    let v = erp(&s).await;
    assert_eq!(v["token_endpoint"], a.url.as_str());
    assert_eq!(v["client_secret"]["set"], true);
    s.stop().await;
}

#[tokio::test]
async fn deploy_verify_runs_only_after_expiry_staleness_and_replay_checks() {
    let (s, k, _) = server().await;
    let t = Recorder::start(200, TOKEN_OK()).await;
    let rec = oauth(&t.url, &[("client_secret", CLIENT_SECRET)], true);
    let creds = vec![credential(rec.clone())];
    let opts = |created| {
        let mut o = Opts::new("/apps").sealed(s.recipient()).created(created);
        o.kind = BundleKind::Credentials;
        o
    };
    let o = opts(flowpack_shared::timefmt::Timestamp::now());

    // Applied once (without verification), then the same bundle again: a replay.
    let applied = bundle(&k, &o, &[], &creds);
    let post = |b: Vec<u8>| {
        let s = &s;
        async move {
            let r = s
                .client
                .post(s.url("/v1/deployments?verify=true"))
                .bearer_auth(&s.admin)
                .header("content-type", "application/zip")
                .body(b)
                .send()
                .await
                .unwrap();
            answer(r).await
        }
    };
    assert_eq!(s.deploy(&s.admin, &applied).await.0, 201);
    let (st, v) = post(applied.clone()).await;
    assert_eq!((st, v["replayed"].clone()), (200, json!(true)), "{v}");

    // Older than what was applied: stale.
    let stale = bundle(&k, &opts(ts_minus(60)), &[], &creds);
    let (st, v) = post(stale).await;
    assert_eq!((st, v["code"].clone()), (409, json!("stale")), "{v}");

    // Expired.
    let mut old = opts(ts_minus(120));
    old.expires_in = time::Duration::minutes(1);
    let (st, v) = post(bundle(&k, &old, &[], &creds)).await;
    assert_eq!((st, v["code"].clone()), (422, json!("expired")), "{v}");

    assert!(
        t.requests().is_empty(),
        "a bundle that was refused or replayed caused outbound requests: {:?}",
        t.requests()
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Replay bound to the exact bundle

/// `b` with its manifest's `bundle_id` replaced by `id` and signed again by `key`.
fn with_bundle_id(b: &[u8], id: &str, key: &SigningKey) -> Vec<u8> {
    let mut entries = entries_of(b);
    let mut m: Value = serde_json::from_slice(&entries[0].1).unwrap();
    m["bundle_id"] = json!(id);
    entries[0].1 = serde_json::to_vec_pretty(&m).unwrap();
    entries[1].1 = key.sign(&entries[0].1).to_vec();
    zip_of(&entries)
}

/// Two signers: `a` trusted for `/a` only, `b` for `/b` only; a bundle of each, unsealed.
async fn two_signers() -> (Server, Vec<u8>, Vec<u8>, SigningKey) {
    let s = Server::start().await;
    let ka = SigningKey::generate().unwrap();
    let kb = SigningKey::generate().unwrap();
    s.trust(&ka, &["/a"]);
    s.trust(&kb, &["/b"]);
    let c = vec![credential(
        json!({"name": "x", "type": "password", "username": "u"}),
    )];
    let mut oa = Opts::new("/a");
    oa.kind = BundleKind::Credentials;
    let mut ob = Opts::new("/b");
    ob.kind = BundleKind::Credentials;
    (s, bundle(&ka, &oa, &[], &c), bundle(&kb, &ob, &[], &c), ka)
}

fn bundle_id(b: &[u8]) -> String {
    let m: Value = serde_json::from_slice(&entries_of(b)[0].1).unwrap();
    m["bundle_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_bundle_reusing_another_containers_bundle_id_is_a_conflict_not_its_record() {
    let (s, a, b, ka) = two_signers().await;
    let (st, rec_b) = s.deploy(&s.admin, &b).await;
    assert_eq!(st, 201, "{rec_b}");
    let forged = with_bundle_id(&a, &bundle_id(&b), &ka);
    let (st, v) = s.deploy(&s.admin, &forged).await;
    assert_eq!(
        (st, v["code"].clone()),
        (409, json!("bundle-id-conflict")),
        "{v}"
    );
    assert!(
        v.get("created").is_none() && !v.to_string().contains("/b/x"),
        "{v}"
    );
    assert_eq!(s.get(&s.admin, "/v1/containers/a").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn a_bundle_id_taken_first_by_another_signer_does_not_pass_for_a_replay() {
    let (s, a, b, ka) = two_signers().await;
    // The /a signer sends the id of /b's bundle before /b's bundle arrives.
    let forged = with_bundle_id(&a, &bundle_id(&b), &ka);
    assert_eq!(s.deploy(&s.admin, &forged).await.0, 201);
    let (st, v) = s.deploy(&s.admin, &b).await;
    assert_eq!(
        (st, v["code"].clone()),
        (409, json!("bundle-id-conflict")),
        "{v}"
    );
    assert_ne!(v["replayed"], true, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn a_corrupted_copy_of_an_applied_bundle_is_refused_not_replayed() {
    let (s, _, rec) = deployed("pw-canary").await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    let p = project(None, false, b"mfd-bytes-to-flip");
    let b = bundle(
        &k,
        &Opts::new("/public/billing"),
        &p.mappings,
        &p.credentials,
    );
    assert_eq!(s.deploy(&s.admin, &b).await.0, 201);
    let flipped = tamper_last_entry(&b, |d| d[0] ^= 1);
    let (st, v) = s.deploy(&s.admin, &flipped).await;
    assert_eq!(
        (st, v["code"].clone()),
        (422, json!("digest-mismatch")),
        "{v}"
    );
    // The exact bundle is still a replay, with its original record.
    let (st, v) = s.deploy(&s.admin, &b).await;
    assert_eq!((st, v["replayed"].clone()), (200, json!(true)), "{v}");
    assert_ne!(v["id"], rec["id"]);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The audit trail

#[tokio::test]
async fn a_bad_signature_refusal_records_what_the_manifest_claims_unverified() {
    let (s, a, _, _) = two_signers().await;
    let impostor = SigningKey::generate().unwrap();
    // The manifest still names the trusted /a signer; the signature is the impostor's.
    let id = bundle_id(&a);
    let forged = with_bundle_id(&a, &id, &impostor);
    let (st, v) = s.deploy(&s.admin, &forged).await;
    assert_eq!(st, 422, "{v}");
    let (_, audit) = s.get(&s.admin, "/v1/audit").await;
    let row = &audit["audit"][0];
    assert_eq!(row["code"], v["code"], "{audit}");
    assert_eq!(row["bundle_id"], id.as_str(), "{row}");
    assert_eq!(row["container"], "/a", "{row}");
    assert!(row["signer_key_id"].is_string(), "{row}");
    assert_eq!(row["verified"], false, "{row}");
    // An applied bundle's row says it was verified.
    assert_eq!(s.deploy(&s.admin, &a).await.0, 201);
    let (_, audit) = s.get(&s.admin, "/v1/audit").await;
    assert_eq!(audit["audit"][0]["outcome"], "applied");
    assert_eq!(audit["audit"][0]["verified"], true);
    s.stop().await;
}

#[tokio::test]
async fn a_bundle_refused_for_its_structure_is_audited_with_what_its_manifest_claims() {
    let (s, a, _, _) = two_signers().await;
    // The last payload entry is left out of the archive: refused after the manifest was read.
    let mut entries = entries_of(&a);
    entries.pop();
    let short = zip_of(&entries);
    let (st, v) = s.deploy(&s.admin, &short).await;
    assert_eq!(st, 422, "{v}");
    let (_, audit) = s.get(&s.admin, "/v1/audit").await;
    let row = &audit["audit"][0];
    assert_eq!(row["code"], v["code"], "{audit}");
    assert_eq!(row["bundle_id"], bundle_id(&a).as_str(), "{row}");
    assert_eq!(row["container"], "/a", "{row}");
    s.stop().await;
}

#[tokio::test]
async fn audit_and_deployments_page_newest_first() {
    let s = Server::start().await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    let c = vec![credential(
        json!({"name": "x", "type": "password", "username": "u"}),
    )];
    for i in 0..5 {
        let mut o = Opts::new(["/p/one", "/p/two"][i % 2]);
        o.kind = BundleKind::Credentials;
        o.created_at = ts_minus(10 - i as i64);
        assert_eq!(s.deploy(&s.admin, &bundle(&k, &o, &[], &c)).await.0, 201);
    }
    for _ in 0..3 {
        assert_eq!(s.deploy(&s.admin, b"not a bundle").await.0, 400);
    }
    // Every row once, newest first, in pages of two.
    let mut ids = Vec::new();
    let mut next = String::new();
    loop {
        let (st, v) = s.get(&s.admin, &format!("/v1/audit?limit=2{next}")).await;
        assert_eq!(st, 200, "{v}");
        let rows = v["audit"].as_array().unwrap();
        assert!(rows.len() <= 2);
        ids.extend(rows.iter().map(|r| r["id"].as_i64().unwrap()));
        match v["next"].as_i64() {
            Some(n) => next = format!("&before={n}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 8, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    let (_, v) = s.get(&s.admin, "/v1/deployments?limit=2").await;
    assert_eq!(v["deployments"].as_array().unwrap().len(), 2);
    assert!(v["next"].is_i64(), "{v}");
    let (_, v) = s
        .get(&s.admin, "/v1/deployments?container=/p/two&limit=10")
        .await;
    let shown: Vec<_> = v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["container"].clone())
        .collect();
    assert_eq!(shown, vec![json!("/p/two"); 2], "{v}");
    assert_eq!(v["next"], Value::Null);
    // A reader of /p/one sees its rows only, and no row without a container.
    let reader = s.token("reader", &[("/p/one", "read")]);
    let (_, v) = s.get(&reader, "/v1/audit?limit=1000").await;
    let rows = v["audit"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    assert!(rows.iter().all(|r| r["container"] == "/p/one"), "{v}");
    let (_, v) = s.get(&reader, "/v1/deployments").await;
    assert_eq!(v["deployments"].as_array().unwrap().len(), 3, "{v}");

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "before=-1",
        "dry_runn=true",
        "limit=2&limit=3",
    ] {
        let (st, v) = s.get(&s.admin, &format!("/v1/audit?{bad}")).await;
        assert_eq!(
            (st, v["code"].clone()),
            (400, json!("bad-query")),
            "{bad}: {v}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn an_unknown_query_parameter_on_a_deploy_is_refused_before_anything_is_applied() {
    let (s, k, _) = server().await;
    let rec = oauth("https://idp.example/token", &[], false);
    let (st, v) = deploy_creds(&s, &k, &s.admin, &[rec], "?dry_runn=true").await;
    assert_eq!((st, v["code"].clone()), (400, json!("bad-query")), "{v}");
    assert_eq!(s.get(&s.admin, "/v1/credentials/apps/erp").await.0, 404);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Found by an attacker's review

#[tokio::test]
async fn a_refused_verified_deploy_keeps_the_refresh_token_its_verification_rotated() {
    let (s, k, _) = server().await;
    // The provider rotates refresh tokens: whatever it was sent, it answers a new one.
    let idp = Recorder::start(
        200,
        json!({"access_token": "at-2", "refresh_token": "rt-rotated", "token_type": "bearer", "expires_in": 3600}),
    )
    .await;
    let api = Recorder::start(401, json!({})).await;
    let mut x = oauth(
        &idp.url,
        &[("client_secret", CLIENT_SECRET), ("refresh_token", REFRESH)],
        true,
    );
    x["grant_type"] = json!("authorization_code");
    x["authorization_endpoint"] = json!(idp.url);
    assert_eq!(
        deploy_creds(&s, &k, &s.admin, &[x.clone()], "").await.0,
        201
    );
    let before = erp(&s).await["refresh_token"]["fingerprint"].clone();
    assert!(before.is_string());

    // The bundle carries the client secret again (not the refresh token) and a key whose
    // verification fails: the bundle is refused after the stored refresh token was used.
    x["client_secret"] = json!(CLIENT_SECRET);
    x.as_object_mut().unwrap().remove("refresh_token");
    let y = json!({"name": "api", "type": "api_key", "placement": "header",
                   "parameter_name": "X-Key", "key": "k-canary", "verify_url": api.url,
                   "include_in_deployment": true});
    let (st, v) = deploy_creds(&s, &k, &s.admin, &[x, y], "?verify=true").await;
    assert_eq!(
        (st, v["code"].clone()),
        (422, json!("credential-verification-failed")),
        "{v}"
    );
    assert!(
        idp.requests().iter().any(|r| r.contains(REFRESH)),
        "the stored refresh token was used"
    );
    let after = erp(&s).await["refresh_token"]["fingerprint"].clone();
    assert_ne!(
        before, after,
        "the rotated refresh token was dropped with the refused bundle"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_verified_deploy_refused_while_reading_its_payload_is_audited() {
    let (s, k, _) = server().await;
    let rec = oauth(
        "https://idp.example/token",
        &[("client_secret", CLIENT_SECRET)],
        true,
    );
    let mut o = Opts::new("/apps").sealed(s.recipient());
    o.kind = BundleKind::Credentials;
    let b = bundle(&k, &o, &[], &[credential(rec)]);
    let flipped = tamper_last_entry(&b, |d| d[0] ^= 1);
    let r = s
        .client
        .post(s.url("/v1/deployments?verify=true"))
        .bearer_auth(&s.admin)
        .header("content-type", "application/zip")
        .body(flipped)
        .send()
        .await
        .unwrap();
    let (st, v) = answer(r).await;
    assert_eq!(
        (st, v["code"].clone()),
        (422, json!("digest-mismatch")),
        "{v}"
    );
    let (_, audit) = s.get(&s.admin, "/v1/audit").await;
    let row = &audit["audit"][0];
    assert_eq!(row["code"], "digest-mismatch", "{audit}");
    assert_eq!(row["bundle_id"], bundle_id(&b).as_str(), "{row}");
    s.stop().await;
}

#[tokio::test]
async fn no_endpoint_ignores_an_unknown_query_parameter() {
    let (s, _, _) = deployed("pw-canary").await;
    let before = s.get(&s.admin, "/v1/credentials/public/orders/erp").await.1;
    let cases = [
        (
            Method::PATCH,
            "/v1/credentials/public/orders/erp?dry_run=true",
            Some(json!({"username": "changed"})),
        ),
        (
            Method::DELETE,
            "/v1/mappings/public/orders/orders-to-erp?dry_run=true",
            None,
        ),
        (
            Method::GET,
            "/v1/credentials/public/orders/erp?bogus=1",
            None,
        ),
        (Method::GET, "/v1/containers/public?bogus=1", None),
        (
            Method::GET,
            "/v1/mappings/public/orders/orders-to-erp?bogus=1",
            None,
        ),
        (
            Method::GET,
            "/v1/mappings/public/orders/orders-to-erp/files/orders.mfd?bogus=1",
            None,
        ),
        (
            Method::POST,
            "/v1/credentials/public/orders/erp/verify?dry_run=true",
            None,
        ),
        (
            Method::POST,
            "/v1/mappings/public/orders/orders-to-erp/resolve?x=1",
            Some(json!({"usage": "http"})),
        ),
        (Method::GET, "/healthz?bogus=1", None),
        (Method::GET, "/v1/keys?bogus=1", None),
    ];
    for (method, path, body) in cases {
        let (st, v) = s.send(method.clone(), &s.admin, path, body).await;
        assert_eq!(
            (st, v["code"].clone()),
            (400, json!("bad-query")),
            "{method} {path}: {v}"
        );
    }
    assert_eq!(
        s.get(&s.admin, "/v1/credentials/public/orders/erp").await.1,
        before
    );
    assert_eq!(
        s.get(&s.admin, "/v1/mappings/public/orders/orders-to-erp")
            .await
            .0,
        200
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A request body that stalls

/// Sends a request head announcing `len` body bytes and `sent` of them, then waits for the
/// answer without sending more. Returns the status line, or `None` if nothing came in 10 s.
async fn stalled_body(
    s: &Server,
    method: &str,
    path: &str,
    ct: &str,
    len: usize,
    sent: &[u8],
) -> Option<String> {
    let addr = s.base.strip_prefix("http://").unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: {ct}\r\ncontent-length: {len}\r\n\r\n",
        s.admin
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(sent).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()?;
    let text = String::from_utf8_lossy(&got).into_owned();
    Some(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_stalled_request_body_is_answered_408_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let init = flowpack_testkit::init(&data);
    let s = Server::serve_in(dir, init.admin_token.to_string(), |app| {
        app.body_idle = std::time::Duration::from_millis(300);
    })
    .await;
    let line = stalled_body(
        &s,
        "POST",
        "/v1/deployments",
        "application/zip",
        100_000,
        b"PK\x03\x04",
    )
    .await;
    assert!(
        line.as_deref().is_some_and(|l| l.contains(" 408 ")),
        "{line:?}"
    );
    let line = stalled_body(
        &s,
        "PATCH",
        "/v1/credentials/public/orders/erp",
        "application/json",
        1000,
        b"{\"username\": ",
    )
    .await;
    assert!(
        line.as_deref().is_some_and(|l| l.contains(" 408 ")),
        "{line:?}"
    );
    let spool = s.data_dir().join("spool");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "a spool file is left"
    );
    let (_, audit) = s.get(&s.admin, "/v1/audit").await;
    assert!(
        audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["code"] == "body-timeout"),
        "{audit}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bounded fan-out

#[tokio::test]
async fn a_verified_deploy_of_many_credentials_keeps_at_most_16_requests_in_flight() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (s, k, _) = server().await;
    // A verify_url that answers 200 after a pause, counting requests in flight.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ping", listener.local_addr().unwrap());
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (n, m) = (now.clone(), most.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (n, m) = (n.clone(), m.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let inflight = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(inflight, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let records: Vec<Value> = (0..48)
        .map(|i| {
            json!({"name": format!("key{i}"), "type": "api_key", "placement": "header",
                   "parameter_name": "X-Key", "key": format!("k-{i}"), "verify_url": url,
                   "include_in_deployment": true})
        })
        .collect();
    let (st, v) = deploy_creds(&s, &k, &s.admin, &records, "?verify=true").await;
    task.abort();
    assert_eq!(st, 201, "{v}");
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 16, "{most} verification requests in flight at once");
    assert!(most > 1, "verifications ran one at a time ({most})");
    s.stop().await;
}
