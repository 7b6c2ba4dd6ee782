//! OAuth 2.0 on the receiver against a real OAuth 2.0 server written by others
//! (`oauth2-mock-server` from npm, launched by `tests/oauth-server/server.mjs` on loopback, which
//! checks client authentication, counts token requests and can revoke refresh tokens), and dry
//! verification against an in-test HTTP server and real TCP ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use flowpack_shared::bundle::BundleKind;
use flowpack_shared::keys::SigningKey;
use flowpack_shared::timefmt::Timestamp;
use flowpack_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

const CLIENT_SECRET: &str = "s3cret:+&/é%";

// ---------------------------------------------------------------------------------------------
// The OAuth server

fn server_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oauth-server")
}

/// Runs `npm ci` once if `node_modules` is missing (a file lock keeps concurrent test
/// processes from installing at the same time).
fn ensure_installed() {
    let dir = server_dir();
    let lock =
        std::fs::File::create(std::env::temp_dir().join("flowpack-oauth-npm-ci.lock")).unwrap();
    lock.lock().unwrap();
    if !dir.join("node_modules/oauth2-mock-server").exists() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm (Node.js) is needed for the OAuth tests");
        assert!(st.success(), "npm ci failed in {}", dir.display());
    }
}

struct OAuthServer {
    child: Child,
    issuer: String,
    http: reqwest::Client,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OAuthServer {
    fn start() -> OAuthServer {
        install_provider();
        ensure_installed();
        let mut child = Command::new("node")
            .args(["server.mjs", "0"])
            .current_dir(server_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js) is needed for the OAuth tests");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let issuer = first
            .trim()
            .strip_prefix("issuer: ")
            .unwrap_or_else(|| panic!("launcher said {first:?}"))
            .to_owned();
        OAuthServer {
            child,
            issuer,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    async fn control(&self, method: Method, path: &str) -> Value {
        let r = self
            .http
            .request(method, format!("{}/_test/{path}", self.issuer))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    async fn stats(&self) -> Value {
        self.control(Method::GET, "stats").await
    }

    async fn count(&self, grant: &str) -> u64 {
        self.stats().await["by_grant"][grant].as_u64().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// The receiver

/// A receiver whose clock can be moved forward, and a signer it trusts.
struct Env {
    s: Server,
    key: SigningKey,
    offset: Arc<AtomicI64>,
}

impl Env {
    async fn start() -> Env {
        let offset = Arc::new(AtomicI64::new(0));
        let o = offset.clone();
        let s = Server::start_with(move |app| {
            app.clock = Arc::new(move || {
                Timestamp::now().plus(time::Duration::seconds(o.load(Ordering::SeqCst)))
            });
            // The OAuth server and the verification targets listen on loopback.
            allow_outbound(app, &["127.0.0.1"]);
        })
        .await;
        let key = SigningKey::generate().unwrap();
        s.trust(&key, &[]);
        Env { s, key, offset }
    }

    fn advance(&self, seconds: i64) {
        self.offset.fetch_add(seconds, Ordering::SeqCst);
    }

    /// Deploys credential records (sealed) to `/apps` in a standalone credential bundle.
    async fn deploy_raw(&self, records: &[Value], verify: bool) -> (u16, Value) {
        let creds: Vec<_> = records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["include_in_deployment"] = Value::Bool(true);
                credential(r)
            })
            .collect();
        let mut opts = Opts::new("/apps").sealed(self.s.recipient());
        opts.kind = BundleKind::Credentials;
        let b = bundle(&self.key, &opts, &[], &creds);
        let url = if verify {
            "/v1/deployments?verify=true"
        } else {
            "/v1/deployments"
        };
        let r = self
            .s
            .client
            .post(self.s.url(url))
            .bearer_auth(&self.s.admin)
            .header("content-type", "application/zip")
            .body(b)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    async fn deploy(&self, records: &[Value]) {
        let (st, v) = self.deploy_raw(records, false).await;
        assert_eq!(st, 201, "{v}");
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        self.s.send(Method::POST, &self.s.admin, path, None).await
    }

    async fn token(&self, name: &str) -> (u16, Value) {
        self.post(&format!("/v1/credentials/apps/{name}/token"))
            .await
    }

    async fn verify(&self, name: &str) -> (u16, Value) {
        self.post(&format!("/v1/credentials/apps/{name}/verify"))
            .await
    }

    async fn record(&self, name: &str) -> Value {
        let (st, v) = self
            .s
            .get(&self.s.admin, &format!("/v1/credentials/apps/{name}"))
            .await;
        assert_eq!(st, 200, "{v}");
        v
    }

    /// The audit trail, oldest first.
    async fn audit(&self) -> Vec<Value> {
        let (_, v) = self.s.get(&self.s.admin, "/v1/audit").await;
        let mut rows = v["audit"].as_array().unwrap().clone();
        rows.sort_by_key(|r| r["id"].as_i64());
        rows
    }
}

fn client_credentials(o: &OAuthServer, name: &str, auth: &str) -> Value {
    json!({
        "name": name, "type": "oauth2", "grant_type": "client_credentials",
        "token_endpoint": o.token_endpoint(), "token_endpoint_auth": auth,
        "client_id": "flowpack-client", "client_secret": CLIENT_SECRET,
        "scope": "orders:read", "allow_usage_for": ["http"],
    })
}

fn password_grant(o: &OAuthServer, name: &str, password: &str) -> Value {
    json!({
        "name": name, "type": "oauth2", "grant_type": "password",
        "token_endpoint": o.token_endpoint(),
        "client_id": "flowpack-client", "client_secret": CLIENT_SECRET,
        "username": "alice", "password": password,
    })
}

fn authorization_code(o: &OAuthServer, e: &Env, name: &str) -> Value {
    json!({
        "name": name, "type": "oauth2", "grant_type": "authorization_code",
        "authorization_endpoint": format!("{}/authorize", o.issuer),
        "token_endpoint": o.token_endpoint(), "token_endpoint_auth": "body",
        "client_id": "flowpack-client", "client_secret": CLIENT_SECRET,
        "redirect_uri": e.s.url("/v1/oauth/callback"), "scope": "openid offline_access",
    })
}

fn token_of(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_owned()
}

fn secs_until(v: &Value, now: Timestamp) -> i64 {
    let t = Timestamp::parse(v["expires_at"].as_str().unwrap()).unwrap();
    (t.unix_millis() - now.unix_millis()) / 1000
}

/// Runs an authorization-code flow the way a browser would: `…/authorize`, the authorization
/// server's redirect (followed by the test itself), the receiver's callback. Returns the
/// callback's answer and the authorize URL's query.
async fn authorize(e: &Env, o: &OAuthServer, name: &str) -> ((u16, Value), Vec<(String, String)>) {
    let (st, v) = e
        .post(&format!("/v1/credentials/apps/{name}/authorize"))
        .await;
    assert_eq!(st, 200, "{v}");
    let url = reqwest::Url::parse(v["authorize_url"].as_str().unwrap()).unwrap();
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let r = o.http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let back = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(back.starts_with(&e.s.url("/v1/oauth/callback?")), "{back}");
    // No bearer token: the state authenticates the callback.
    let answered = answer(e.s.client.get(&back).send().await.unwrap()).await;
    (answered, query)
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// Grants

#[tokio::test]
async fn client_credentials_with_header_auth_obtains_once_and_keeps_the_token_secret() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[client_credentials(&o, "cc", "header")]).await;

    let (st, v) = e.token("cc").await;
    assert_eq!(st, 200, "{v}");
    let token = token_of(&v);
    assert!(token.len() > 20);
    let left = secs_until(&v, e.s.app.now());
    assert!((3590..=3600).contains(&left), "{left}");
    let stats = o.stats().await;
    assert_eq!(stats["token_requests"], 1);
    assert_eq!(stats["requests"][0]["grant_type"], "client_credentials");
    // The id and secret were form-urlencoded inside the Basic header (RFC 6749 §2.3.1):
    // the server decodes them and would refuse anything else.
    assert_eq!(stats["requests"][0]["client_auth"], "header");
    assert_eq!(stats["requests"][0]["scope"], "orders:read");

    // Valid and not near expiry: served from the store, no new request.
    let (_, again) = e.token("cc").await;
    assert_eq!(token_of(&again), token);
    assert_eq!(o.stats().await["token_requests"], 1);

    // Stored encrypted; visible only as a fingerprint; never in the audit trail.
    let rec = e.record("cc").await;
    assert_eq!(rec["access_token"]["set"], true);
    assert_eq!(rec["expires_at"], v["expires_at"]);
    assert_eq!(rec["needs_authorization"], false);
    let audit = e.audit().await;
    let obtained: Vec<_> = audit
        .iter()
        .filter(|a| a["action"] == "oauth-token")
        .collect();
    assert_eq!(obtained.len(), 1);
    assert_eq!(obtained[0]["outcome"], "obtained");
    assert_eq!(obtained[0]["target"], "/apps/cc");
    let everything = format!("{rec}{audit:?}");
    assert!(!everything.contains(&token) && !everything.contains(CLIENT_SECRET));
    let stored = Stored::of(&e.s.data_dir()).bytes();
    assert!(!stored.is_empty());
    assert!(!stored.windows(token.len()).any(|w| w == token.as_bytes()));
}

#[tokio::test]
async fn body_client_auth_sends_id_and_secret_in_the_form() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[client_credentials(&o, "cc-body", "body")]).await;
    let (st, v) = e.token("cc-body").await;
    assert_eq!(st, 200, "{v}");
    let stats = o.stats().await;
    assert_eq!(stats["requests"][0]["client_auth"], "body");
    assert_eq!(stats["requests"][0]["client_id"], "flowpack-client");
}

#[tokio::test]
async fn token_endpoint_errors_are_named_without_secrets() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    let mut bad_client = client_credentials(&o, "bad-client", "header");
    bad_client["client_secret"] = json!("wrong-secret-value");
    e.deploy(&[
        bad_client,
        password_grant(&o, "bad-user", "not-the-password"),
    ])
    .await;

    let (st, v) = e.token("bad-client").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (502, Some("token-endpoint-error"))
    );
    assert_eq!(v["oauth_error"], "invalid_client");
    let d = v["detail"].as_str().unwrap();
    assert!(
        d.contains("invalid_client") && d.contains("/apps/bad-client"),
        "{d}"
    );
    assert!(d.contains("grant_type=client_credentials"), "{d}");
    assert!(!v.to_string().contains("wrong-secret-value"));

    let (st, v) = e.token("bad-user").await;
    assert_eq!(st, 502);
    assert_eq!(v["oauth_error"], "invalid_grant");
    assert!(!v.to_string().contains("not-the-password"));
    // The failures are audited, without secrets.
    let audit = e.audit().await;
    let failed: Vec<_> = audit
        .iter()
        .filter(|a| a["action"] == "oauth-token" && a["outcome"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(!format!("{audit:?}").contains("wrong-secret-value"));
}

#[tokio::test]
async fn password_grant_then_refresh_ahead_of_expiry() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[password_grant(&o, "pw", "wonderland")]).await;

    let (st, first) = e.token("pw").await;
    assert_eq!(st, 200, "{first}");
    assert_eq!(o.count("password").await, 1);
    let rec = e.record("pw").await;
    assert_eq!(rec["refresh_token"]["set"], true);
    let refresh_fp = rec["refresh_token"]["fingerprint"].clone();

    // 30 s before expiry is within the 60 s margin: refreshed, not served.
    e.advance(3600 - 30);
    let (st, second) = e.token("pw").await;
    assert_eq!(st, 200, "{second}");
    assert_ne!(token_of(&second), token_of(&first));
    assert_eq!(o.count("refresh_token").await, 1);
    assert_eq!(o.count("password").await, 1);
    assert!(secs_until(&second, e.s.app.now()) > 3500);
    // The server issued a new refresh token: it replaced the old one.
    assert_ne!(
        e.record("pw").await["refresh_token"]["fingerprint"],
        refresh_fp
    );
    let outcomes: Vec<_> = e
        .audit()
        .await
        .iter()
        .filter(|a| a["action"] == "oauth-token")
        .map(|a| a["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["obtained", "refreshed"]);
}

#[tokio::test]
async fn authorization_code_with_pkce_and_single_use_expiring_state() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[authorization_code(&o, &e, "ac")]).await;

    // Before any authorization there is nothing to refresh.
    let (st, v) = e.token("ac").await;
    assert_eq!((st, v["code"].as_str()), (409, Some("needs-authorization")));

    let ((st, v), q) = authorize(&e, &o, "ac").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["authorized"], "/apps/ac");
    assert_eq!(param(&q, "response_type"), Some("code"));
    assert_eq!(param(&q, "code_challenge_method"), Some("S256"));
    assert_eq!(param(&q, "code_challenge").unwrap().len(), 43);
    assert_eq!(param(&q, "state").unwrap().len(), 43);
    assert_eq!(param(&q, "client_id"), Some("flowpack-client"));
    // The server checked the verifier against the challenge (it refuses a mismatch).
    let stats = o.stats().await;
    let req = &stats["requests"][0];
    assert_eq!(req["grant_type"], "authorization_code");
    assert_eq!(req["has_code_verifier"], true);
    assert_eq!(req["redirect_uri"], e.s.url("/v1/oauth/callback").as_str());

    // The tokens are stored: `…/token` serves them without a request.
    let (st, t) = e.token("ac").await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(o.stats().await["token_requests"], 1);
    let rec = e.record("ac").await;
    assert_eq!(rec["refresh_token"]["set"], true);
    assert!(!rec.to_string().contains(&token_of(&t)));

    // A state is used once.
    let state = param(&q, "state").unwrap();
    let replay =
        e.s.url(&format!("/v1/oauth/callback?code=again&state={state}"));
    let (st, v) = answer(e.s.client.get(replay).send().await.unwrap()).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid-state")));
    // A forged one is refused.
    let (st, _) = answer(
        e.s.client
            .get(e.s.url("/v1/oauth/callback?code=x&state=forged"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 400);

    // A state expires after 10 minutes.
    let (st, v) = e.post("/v1/credentials/apps/ac/authorize").await;
    assert_eq!(st, 200);
    let url = reqwest::Url::parse(v["authorize_url"].as_str().unwrap()).unwrap();
    let r = o.http.get(url).send().await.unwrap();
    let back = r.headers()["location"].to_str().unwrap().to_owned();
    e.advance(11 * 60);
    let (st, v) = answer(e.s.client.get(&back).send().await.unwrap()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("state-expired")),
        "{v}"
    );
    assert_eq!(o.count("authorization_code").await, 1);

    let actions: Vec<_> = e
        .audit()
        .await
        .iter()
        .filter(|a| a["target"] == "/apps/ac")
        .map(|a| {
            format!(
                "{}/{}",
                a["action"].as_str().unwrap(),
                a["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        actions.contains(&"oauth-authorize/started".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"oauth-callback/authorized".to_owned()),
        "{actions:?}"
    );
}

#[tokio::test]
async fn revoked_refresh_token_marks_needs_authorization_and_keeps_everything() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[authorization_code(&o, &e, "ac")]).await;
    let ((st, _), _) = authorize(&e, &o, "ac").await;
    assert_eq!(st, 200);
    let before = e.record("ac").await;

    o.control(Method::POST, "revoke-all").await;
    e.advance(2 * 3600);
    let (st, v) = e.token("ac").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("needs-authorization")),
        "{v}"
    );
    assert!(
        v["detail"].as_str().unwrap().contains("invalid_grant"),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("/authorize"), "{v}");
    assert_eq!(o.count("refresh_token").await, 1);

    let after = e.record("ac").await;
    assert_eq!(after["needs_authorization"], true);
    // Nothing was deleted.
    for f in ["access_token", "refresh_token", "client_secret"] {
        assert_eq!(after[f], before[f], "{f}");
    }
    // Marked: the provider is not asked again with the refused token.
    let (st, _) = e.token("ac").await;
    assert_eq!(st, 409);
    assert_eq!(o.count("refresh_token").await, 1);

    // Authorizing again clears the mark.
    let ((st, _), _) = authorize(&e, &o, "ac").await;
    assert_eq!(st, 200);
    assert_eq!(e.record("ac").await["needs_authorization"], false);
    let (st, _) = e.token("ac").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn concurrent_callers_on_an_expired_token_share_one_refresh() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[password_grant(&o, "shared", "wonderland")])
        .await;
    let (st, old) = e.token("shared").await;
    assert_eq!(st, 200);
    assert_eq!(o.stats().await["token_requests"], 1);

    // The token has expired; the refresh takes 300 ms at the provider, so all callers are
    // waiting while it is in flight.
    o.control(Method::POST, "config?delay_ms=300").await;
    e.advance(2 * 3600);
    const CALLERS: usize = 250;
    let client = Client::from_reqwest(
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    );
    let url = e.s.url("/v1/credentials/apps/shared/token");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (client, url, admin) = (client.clone(), url.clone(), e.s.admin.clone());
        tasks.spawn(async move {
            let r = client.post(url).bearer_auth(admin).send().await.unwrap();
            answer(r).await
        });
    }
    let mut tokens = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        let (st, v) = r.unwrap();
        assert_eq!(st, 200, "{v}");
        tokens.insert(token_of(&v));
    }
    assert_eq!(tokens.len(), 1, "every caller gets the same new token");
    assert!(!tokens.contains(&token_of(&old)));
    let stats = o.stats().await;
    assert_eq!(stats["by_grant"]["refresh_token"], 1, "{stats}");
    assert_eq!(stats["token_requests"], 2, "{stats}");
}

#[tokio::test]
async fn a_refresh_that_loses_the_race_does_not_overwrite_a_newer_token() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[password_grant(&o, "raced", "wonderland")]).await;
    let (st, _) = e.token("raced").await;
    assert_eq!(st, 200);
    e.advance(2 * 3600);
    // While the refresh is in flight, an admin stores a new access token.
    o.control(Method::POST, "config?delay_ms=500").await;
    let refresh = {
        let (client, url, admin) = (
            e.s.client.clone(),
            e.s.url("/v1/credentials/apps/raced/token"),
            e.s.admin.clone(),
        );
        tokio::spawn(async move {
            answer(client.post(url).bearer_auth(admin).send().await.unwrap()).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let far = Timestamp::now().plus(time::Duration::days(30)).to_string();
    let (st, v) =
        e.s.send(
            Method::PATCH,
            &e.s.admin,
            "/v1/credentials/apps/raced",
            Some(json!({"access_token": "newer-admin-token", "expires_at": far})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = refresh.await.unwrap();
    // The caller still gets the valid token it obtained...
    assert_eq!(st, 200, "{v}");
    assert_ne!(token_of(&v), "newer-admin-token");
    assert_eq!(o.count("refresh_token").await, 1);
    // ...but the store keeps the newer one.
    let (_, now) = e.token("raced").await;
    assert_eq!(token_of(&now), "newer-admin-token");
    assert_eq!(o.count("refresh_token").await, 1);
}

#[tokio::test]
async fn endpoints_outside_the_outbound_policy_are_refused_before_anything_is_sent() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    let mut remote = client_credentials(&o, "remote", "header");
    remote["token_endpoint"] = json!("http://auth.example.com/token");
    let mut ac = authorization_code(&o, &e, "remote-ac");
    ac["authorization_endpoint"] = json!("http://10.1.2.3/authorize");
    // 127.0.0.1 is listed in outbound_allow; `localhost` is not, though it is the same address.
    let mut localhost = client_credentials(&o, "localhost", "header");
    localhost["token_endpoint"] = json!(o.token_endpoint().replace("127.0.0.1", "localhost"));
    let mut decimal = client_credentials(&o, "decimal", "header");
    decimal["token_endpoint"] = json!(o.token_endpoint().replace("127.0.0.1", "2130706433"));
    e.deploy(&[remote, ac, localhost, decimal]).await;

    let (st, v) = e.token("remote").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("outbound-not-allowed")),
        "{v}"
    );
    assert_eq!(v["host"], "auth.example.com");
    let d = v["detail"].as_str().unwrap();
    assert!(
        d.contains("http://") && d.contains("outbound_allow") && d.contains("token_endpoint"),
        "{d}"
    );
    let (st, v) = e.post("/v1/credentials/apps/remote-ac/authorize").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("outbound-not-allowed")),
        "{v}"
    );
    assert_eq!(v["host"], "10.1.2.3");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("authorization_endpoint")
    );
    let (st, v) = e.token("localhost").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("outbound-not-allowed")),
        "{v}"
    );
    assert_eq!(v["host"], "localhost");
    // Another spelling of a listed address is that address.
    let (st, v) = e.token("decimal").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(o.stats().await["token_requests"], 1);
}

#[tokio::test]
async fn implicit_grant_is_stored_but_refused_for_new_authorizations() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    let far = Timestamp::now().plus(time::Duration::days(1)).to_string();
    e.deploy(&[
        json!({
            "name": "old-spa", "type": "oauth2", "grant_type": "implicit",
            "authorization_endpoint": format!("{}/authorize", o.issuer),
            "client_id": "public-client", "redirect_uri": e.s.url("/v1/oauth/callback"),
            "access_token": "legacy-token", "expires_at": far,
        }),
        json!({
            "name": "old-spa-expired", "type": "oauth2", "grant_type": "implicit",
            "client_id": "public-client", "access_token": "gone",
            "expires_at": "2020-01-01T00:00:00.000Z",
        }),
    ])
    .await;
    let (st, v) = e.post("/v1/credentials/apps/old-spa/authorize").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("implicit-grant-refused"))
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("OAuth 2.0 Security Best Current Practice"),
        "{v}"
    );
    // A stored token that is still valid is served.
    let (st, v) = e.token("old-spa").await;
    assert_eq!(st, 200);
    assert_eq!(token_of(&v), "legacy-token");
    let (st, v) = e.token("old-spa-expired").await;
    assert_eq!((st, v["code"].as_str()), (409, Some("implicit-grant")));
    assert_eq!(o.stats().await["token_requests"], 0);
}

#[tokio::test]
async fn token_needs_use_and_http_usage() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    let mut db_only = client_credentials(&o, "db-only", "header");
    db_only["allow_usage_for"] = json!(["database"]);
    e.deploy(&[db_only, client_credentials(&o, "cc", "header")])
        .await;
    let (st, v) = e.token("db-only").await;
    assert_eq!((st, v["code"].as_str()), (422, Some("usage-not-allowed")));
    assert!(
        v["detail"].as_str().unwrap().contains("allow_usage_for"),
        "{v}"
    );
    let reader = e.s.token("reader", &[("/apps", "read")]);
    let (st, _) =
        e.s.send(Method::POST, &reader, "/v1/credentials/apps/cc/token", None)
            .await;
    assert_eq!(st, 403);
    let (st, _) =
        e.s.send(
            Method::POST,
            &reader,
            "/v1/credentials/apps/cc/authorize",
            None,
        )
        .await;
    assert_eq!(st, 403);
    let user = e.s.token("job", &[("/apps", "use")]);
    let (st, _) =
        e.s.send(Method::POST, &user, "/v1/credentials/apps/cc/token", None)
            .await;
    assert_eq!(st, 200);
    assert_eq!(o.stats().await["token_requests"], 1);
}

// ---------------------------------------------------------------------------------------------
// Dry verification

/// A tiny HTTP server for `verify_url`: 200 for Basic `svc:right-pw`, header `X-API-Key:
/// right-key` or query `api_key=right-key`; 401 otherwise.
async fn verify_target() -> String {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use base64::Engine;
                        let basic = format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode("svc:right-pw")
                        );
                        let h = req.headers();
                        let ok = h.get("authorization").is_some_and(|v| v == basic.as_str())
                            || h.get("x-api-key").is_some_and(|v| v == "right-key")
                            || req.uri().query() == Some("api_key=right-key");
                        let status = if ok { 200 } else { 401 };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"")))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/check")
}

async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn no_secret(v: &Value) {
    let s = v.to_string();
    for secret in [
        "right-pw",
        "wrong-pw",
        "right-key",
        "wrong-key",
        CLIENT_SECRET,
        "db-pw",
    ] {
        assert!(!s.contains(secret), "{secret} in {s}");
    }
}

#[tokio::test]
async fn dry_verification_passes_and_fails_for_each_type() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    let url = verify_target().await;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed = closed_port().await;
    let mut bad_client = client_credentials(&o, "oauth-bad", "body");
    bad_client["client_secret"] = json!("wrong-key");
    e.deploy(&[
        json!({"name": "pw-good", "type": "password", "username": "svc", "password": "right-pw", "verify_url": url}),
        json!({"name": "pw-bad", "type": "password", "username": "svc", "password": "wrong-pw", "verify_url": url}),
        json!({"name": "pw-no-url", "type": "password", "username": "svc", "password": "right-pw"}),
        json!({"name": "key-header", "type": "api_key", "placement": "header", "parameter_name": "X-API-Key", "key": "right-key", "verify_url": url}),
        json!({"name": "key-header-bad", "type": "api_key", "placement": "header", "parameter_name": "X-API-Key", "key": "wrong-key", "verify_url": url}),
        json!({"name": "key-query", "type": "api_key", "placement": "query", "parameter_name": "api_key", "key": "right-key", "verify_url": url}),
        json!({"name": "key-query-bad", "type": "api_key", "placement": "query", "parameter_name": "api_key", "key": "wrong-key", "verify_url": url}),
        json!({"name": "key-remote-http", "type": "api_key", "key": "right-key", "verify_url": "http://api.example.com/check"}),
        json!({"name": "db-no-driver", "type": "database", "host": "127.0.0.1", "port": open_port, "password": "db-pw"}),
        json!({"name": "db-closed", "type": "database", "driver": "postgresql", "host": "127.0.0.1", "port": closed, "password": "db-pw"}),
        client_credentials(&o, "oauth-good", "header"),
        bad_client,
    ])
    .await;

    let cases = [
        ("pw-good", true, "GET http://127.0.0.1", "HTTP Basic"),
        ("pw-bad", false, "GET http://127.0.0.1", "401"),
        ("pw-no-url", false, "nothing", "verify_url"),
        ("key-header", true, "header X-API-Key", ""),
        ("key-header-bad", false, "header X-API-Key", "401"),
        ("key-query", true, "query parameter", ""),
        ("key-query-bad", false, "query parameter", "401"),
        // A TCP connection alone verifies nothing: without a driver to log in with, it fails.
        ("db-no-driver", false, "login to 127.0.0.1", "`driver`"),
        (
            "db-closed",
            false,
            "postgresql login to 127.0.0.1",
            "could not connect",
        ),
        ("oauth-good", true, "grant_type=client_credentials", ""),
        (
            "oauth-bad",
            false,
            "grant_type=client_credentials",
            "invalid_client",
        ),
    ];
    for (name, ok, tried, error) in cases {
        let (st, v) = e.verify(name).await;
        assert_eq!(st, 200, "{name}: {v}");
        assert_eq!(v["ok"], ok, "{name}: {v}");
        assert!(v["tried"].as_str().unwrap().contains(tried), "{name}: {v}");
        if ok {
            assert!(v["error"].is_null(), "{name}: {v}");
        } else {
            assert!(v["error"].as_str().unwrap().contains(error), "{name}: {v}");
        }
        no_secret(&v);
    }
    // A client_credentials verification keeps the token it obtained ("authorize and save").
    assert_eq!(e.record("oauth-good").await["access_token"]["set"], true);
    // Plain http:// to a host not listed in outbound_allow: refused, nothing sent.
    let (st, v) = e.verify("key-remote-http").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("outbound-not-allowed")),
        "{v}"
    );
    assert_eq!(v["host"], "api.example.com");
    no_secret(&v);
    let audit = e.audit().await;
    let verified = audit
        .iter()
        .filter(|a| a["action"] == "verify-credential")
        .count();
    assert_eq!(verified, cases.len() + 1);
    let refused = audit
        .iter()
        .find(|a| a["target"] == "/apps/key-remote-http")
        .unwrap();
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["code"], "outbound-not-allowed");
    no_secret(&Value::Array(audit));
    drop(open);
}

#[tokio::test]
async fn deploy_verify_refuses_a_bundle_with_a_failing_credential_and_applies_a_good_one() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    let url = verify_target().await;
    let good_pw = json!({"name": "erp", "type": "password", "username": "svc", "password": "right-pw", "verify_url": url});
    let bad_pw = json!({"name": "erp", "type": "password", "username": "svc", "password": "wrong-pw", "verify_url": url});
    let oauth = client_credentials(&o, "idp", "header");
    let no_secrets = json!({"name": "later", "type": "database", "host": "db.invalid"});

    let (st, v) = e
        .deploy_raw(&[bad_pw, oauth.clone(), no_secrets.clone()], true)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("credential-verification-failed")),
        "{v}"
    );
    let d = v["detail"].as_str().unwrap();
    assert!(
        d.contains("/apps/erp") && d.contains("GET http://127.0.0.1") && d.contains("401"),
        "{d}"
    );
    assert!(
        !d.contains("/apps/idp"),
        "only failures are in the detail: {d}"
    );
    assert_eq!(v["verifications"].as_array().unwrap().len(), 2, "{v}");
    no_secret(&v);
    // Nothing was applied.
    let (st, _) = e.s.get(&e.s.admin, "/v1/containers/apps").await;
    assert_eq!(st, 404);
    let refused = e.audit().await;
    assert_eq!(
        refused.last().unwrap()["code"],
        "credential-verification-failed"
    );

    let (st, v) = e.deploy_raw(&[good_pw, oauth, no_secrets], true).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(e.record("erp").await["password"]["set"], true);
    // The verification's client_credentials token is kept with the apply, and served.
    assert_eq!(e.record("idp").await["access_token"]["set"], true);
    let requests = o.stats().await["token_requests"].clone();
    assert_eq!(e.token("idp").await.0, 200);
    assert_eq!(o.stats().await["token_requests"], requests);
}

#[tokio::test]
async fn deploy_verify_keeps_what_a_refresh_obtained() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    // Obtain a real refresh token, then redeploy the credential with it and --verify.
    e.deploy(&[authorization_code(&o, &e, "ac")]).await;
    let ((st, _), _) = authorize(&e, &o, "ac").await;
    assert_eq!(st, 200);
    let before = e.record("ac").await;
    let (st, v) = e
        .deploy_raw(&[authorization_code(&o, &e, "ac")], true)
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(o.count("refresh_token").await, 1);
    // The refresh rotated the refresh token; the new one is stored with the apply.
    let after = e.record("ac").await;
    assert_ne!(
        after["refresh_token"]["fingerprint"],
        before["refresh_token"]["fingerprint"]
    );
    let (st, _) = e.token("ac").await;
    assert_eq!(st, 200);
    assert_eq!(o.count("refresh_token").await, 1);
}

// ---------------------------------------------------------------------------------------------
// A token the caller reports rejected; verification that keeps what it obtained

/// `POST …/token` with a JSON body.
async fn token_with(e: &Env, name: &str, body: Value) -> (u16, Value) {
    e.s.send(
        Method::POST,
        &e.s.admin,
        &format!("/v1/credentials/apps/{name}/token"),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn concurrent_callers_reporting_the_same_rejected_token_share_one_request() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    // The stored token is one the provider issued earlier (the mock server issues the same
    // token twice within a second, so the first one is not obtained in this test).
    let mut rec = client_credentials(&o, "revoked", "header");
    rec["access_token"] = json!("revoked-canary-token");
    rec["expires_at"] = json!(Timestamp::now().plus(time::Duration::days(1)).to_string());
    e.deploy(&[rec]).await;
    let (st, old) = e.token("revoked").await;
    assert_eq!(st, 200, "{old}");
    let old_token = token_of(&old);
    assert_eq!(old_token, "revoked-canary-token");
    assert_eq!(o.stats().await["token_requests"], 0);

    // The token has not expired, but a resource server refused it: every caller reports it.
    // The provider takes 300 ms, so all callers wait while the one request is in flight.
    o.control(Method::POST, "config?delay_ms=300").await;
    const CALLERS: usize = 50;
    let client = Client::from_reqwest(
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    );
    let url = e.s.url("/v1/credentials/apps/revoked/token");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (client, url, admin) = (client.clone(), url.clone(), e.s.admin.clone());
        let body = json!({"rejected": old_token});
        tasks.spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            answer(r).await
        });
    }
    let mut tokens = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        let (st, v) = r.unwrap();
        assert_eq!(st, 200, "{v}");
        tokens.insert(token_of(&v));
    }
    let stats = o.stats().await;
    assert_eq!(
        tokens.len(),
        1,
        "every caller gets the same new token; old among them: {}; {stats}",
        tokens.contains(&old_token)
    );
    assert!(!tokens.contains(&old_token));
    assert_eq!(stats["token_requests"], 1, "{stats}");

    // Reporting the old token again: it was replaced, so the current one is answered and
    // nothing is asked of the provider.
    let (st, v) = token_with(&e, "revoked", json!({"rejected": old_token})).await;
    assert_eq!(st, 200, "{v}");
    assert!(tokens.contains(&token_of(&v)));
    assert_eq!(o.stats().await["token_requests"], 1);
    // The rejected token is in no audit row.
    let audit = format!("{:?}", e.audit().await);
    assert!(!audit.contains(&old_token) && !tokens.iter().any(|t| audit.contains(t)));
}

#[tokio::test]
async fn a_token_without_expiry_is_served_until_reported_rejected() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    let mut rec = client_credentials(&o, "forever", "header");
    rec["access_token"] = json!("no-expiry-canary-token");
    e.deploy(&[rec]).await;
    e.advance(10 * 365 * 86_400);
    let (st, v) = e.token("forever").await;
    assert_eq!((st, token_of(&v).as_str()), (200, "no-expiry-canary-token"));
    assert!(v["expires_at"].is_null(), "{v}");
    // An empty body and a body without `rejected` keep that behaviour.
    let (st, v) = token_with(&e, "forever", json!({})).await;
    assert_eq!((st, token_of(&v).as_str()), (200, "no-expiry-canary-token"));
    // A token that was never the stored one: the current one is answered.
    let (st, v) = token_with(&e, "forever", json!({"rejected": "some-other-token"})).await;
    assert_eq!((st, token_of(&v).as_str()), (200, "no-expiry-canary-token"));
    assert_eq!(o.stats().await["token_requests"], 0);

    let (st, v) = token_with(&e, "forever", json!({"rejected": "no-expiry-canary-token"})).await;
    assert_eq!(st, 200, "{v}");
    assert_ne!(token_of(&v), "no-expiry-canary-token");
    assert_eq!(o.stats().await["token_requests"], 1);
    let (_, again) = e.token("forever").await;
    assert_eq!(token_of(&again), token_of(&v));
    assert_eq!(o.stats().await["token_requests"], 1);
}

#[tokio::test]
async fn a_token_request_body_of_the_wrong_shape_is_refused_naming_the_field() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[client_credentials(&o, "shape", "header")]).await;
    for (body, field) in [
        (json!({"rejected": 5}), "`rejected`"),
        (json!({"rejected": "t", "retry": true}), "retry"),
        (json!(["rejected"]), "object"),
    ] {
        let (st, v) = token_with(&e, "shape", body.clone()).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (422, Some("bad-request-body")),
            "{v}"
        );
        assert!(v["detail"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let r =
        e.s.client
            .post(e.s.url("/v1/credentials/apps/shape/token"))
            .bearer_auth(&e.s.admin)
            .body("{not json")
            .send()
            .await
            .unwrap();
    let (st, v) = answer(r).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("bad-json")), "{v}");
    assert_eq!(o.stats().await["token_requests"], 0);
}

#[tokio::test]
async fn verification_by_client_credentials_or_password_keeps_the_token_it_obtained() {
    let o = OAuthServer::start();
    let e = Env::start().await;
    e.deploy(&[
        client_credentials(&o, "cc-kept", "header"),
        password_grant(&o, "pw-kept", "wonderland"),
    ])
    .await;
    for name in ["cc-kept", "pw-kept"] {
        let before = o.stats().await["token_requests"].as_u64().unwrap();
        let (st, v) = e.verify(name).await;
        assert_eq!((st, &v["ok"]), (200, &json!(true)), "{name}: {v}");
        assert_eq!(
            o.stats().await["token_requests"].as_u64().unwrap(),
            before + 1
        );
        let rec = e.record(name).await;
        assert_eq!(rec["access_token"]["set"], true, "{name}: {rec}");
        assert!(rec["expires_at"].is_string(), "{name}: {rec}");
        // The kept token is served: no second request.
        let (st, t) = e.token(name).await;
        assert_eq!(st, 200, "{name}: {t}");
        assert_eq!(
            o.stats().await["token_requests"].as_u64().unwrap(),
            before + 1,
            "{name}"
        );
        assert!(!rec.to_string().contains(&token_of(&t)));
    }
    let audit = e.audit().await;
    let kept: Vec<_> = audit
        .iter()
        .filter(|a| a["action"] == "oauth-token")
        .map(|a| {
            (
                a["target"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [("/apps/cc-kept", "obtained"), ("/apps/pw-kept", "obtained")]
    );
}
