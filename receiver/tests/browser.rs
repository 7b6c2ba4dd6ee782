//! The admin page (`/ui/`) in a real headless Chromium, driven through chromedriver's
//! WebDriver HTTP API (no WebDriver crate: a few JSON requests). Runs when
//! `FLOWPACK_TEST_CHROMEDRIVER` names the chromedriver binary (CI sets it); without it each
//! test says so and passes, so a fresh clone without Chromium still passes.
//!
//! With `FLOWPACK_UI_SCREENSHOTS=DIR`, the scenario saves screenshots of the main pages there
//! (`docs/screenshots/` is made this way).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flowpack_shared::bundle::BundleKind;
use flowpack_shared::keys::SigningKey;
use flowpack_testkit::*;
use serde_json::{Value, json};

/// A secret typed into the page: it must never come back in any page or answer.
const CANARY: &str = "Canary-pw-7f3a9c41";

/// The client secret the test OAuth server expects (`tests/oauth-server/server.mjs`).
const CLIENT_SECRET: &str = "s3cret:+&/é%";

// ---------------------------------------------------------------------------------------------
// WebDriver

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
    _profile: tempfile::TempDir,
    /// Every page source seen, to search for secrets at the end.
    seen: Vec<String>,
    shots: Option<PathBuf>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium with the session, then the driver this test started.
        let url = format!("{}/session/{}", self.base, self.session);
        let http = self.http.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { http.delete(url).send().await })
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The chromedriver to use, or `None` (the test then passes without a browser).
fn chromedriver() -> Option<PathBuf> {
    match std::env::var_os("FLOWPACK_TEST_CHROMEDRIVER") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("FLOWPACK_TEST_CHROMEDRIVER is not set: the browser tests are not run");
            None
        }
    }
}

impl Browser {
    async fn start(driver: PathBuf) -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not become ready");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("FLOWPACK_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_owned();
        Browser {
            driver: child,
            http,
            session,
            base,
            _profile: profile,
            seen: Vec::new(),
            shots: std::env::var_os("FLOWPACK_UI_SCREENSHOTS").map(PathBuf::from),
        }
    }

    /// A WebDriver command's value, or its error.
    async fn try_cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut r = self.http.request(method, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        match v["value"].get("error") {
            Some(_) => Err(v["value"].clone()),
            None => Ok(v["value"].clone()),
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    async fn goto(&mut self, url: &str) -> String {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
        self.page().await
    }

    /// The current page's source (kept for the final search).
    async fn page(&mut self) -> String {
        let v = self.cmd(reqwest::Method::GET, "/source", None).await;
        let s = v.as_str().unwrap().to_owned();
        self.seen.push(s.clone());
        s
    }

    async fn url(&self) -> String {
        let v = self.cmd(reqwest::Method::GET, "/url", None).await;
        v.as_str().unwrap().to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_owned()
    }

    async fn count(&self, css: &str) -> usize {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array().unwrap().len()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn property(&self, css: &str, name: &str) -> Value {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{e}/property/{name}"),
            None,
        )
        .await
    }

    /// Clicks and returns the page it leads to: waits until the page clicked on is gone (its
    /// root element goes stale), as a form's post and redirect may still be under way when
    /// the click returns.
    async fn click(&mut self, css: &str) -> String {
        let root = self.find("html").await;
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
        self.next_page(&root, css).await
    }

    /// Types `text` into the focused element and presses Enter: a form sent from the
    /// keyboard. Returns the page it leads to.
    async fn type_and_enter(&mut self, text: &str) -> String {
        let root = self.find("html").await;
        let active = self
            .cmd(reqwest::Method::GET, "/element/active", None)
            .await;
        let e = active[ELEMENT].as_str().unwrap().to_owned();
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": format!("{text}\u{E007}")})),
        )
        .await;
        self.next_page(&root, "Enter").await
    }

    /// Waits until the page whose root element is `root` is gone, then reads the new one.
    async fn next_page(&mut self, root: &str, what: &str) -> String {
        let mut gone = false;
        for _ in 0..200 {
            let probe = self
                .try_cmd(reqwest::Method::GET, &format!("/element/{root}/name"), None)
                .await;
            if probe.is_err_and(|e| e["error"] == "stale element reference") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "{what} led to no other page");
        self.page().await
    }

    async fn cookies(&self) -> Vec<Value> {
        let v = self.cmd(reqwest::Method::GET, "/cookie", None).await;
        v.as_array().unwrap().clone()
    }

    async fn screenshot(&self, name: &str) {
        let Some(dir) = &self.shots else { return };
        use base64::Engine;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn sign_in(&mut self, server: &Server, token: &str) -> String {
        let p = self.goto(&server.url("/ui/")).await;
        assert!(p.contains("Sign in"), "{p}");
        self.type_into("#token", token).await;
        self.click("form[action='/ui/sign-in'] button").await
    }
}

/// Asserts `r` is a `403` whose page says `why`.
async fn refused_with(r: reqwest::Response, why: &str) {
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(text.contains(why), "{why}: {text}");
}

/// The CSRF token of the first form on `page`.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// What the pages act on

/// An HTTP server that answers 200 to HTTP Basic `svc:CANARY` and 401 to anything else.
async fn verify_target() -> String {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use base64::Engine;
                        let basic = format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD
                                .encode(format!("svc:{CANARY}"))
                        );
                        let ok = req
                            .headers()
                            .get("authorization")
                            .is_some_and(|v| v == basic.as_str());
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(if ok { 200 } else { 401 })
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

/// The OAuth 2.0 server of the OAuth tests (`tests/oauth-server`, oauth2-mock-server), whose
/// authorization endpoint sends the browser straight back with a code.
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
            "run `npm ci` in {} first (CI does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .args(["server.mjs", "0"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js) is needed");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let issuer = first.trim().strip_prefix("issuer: ").unwrap().to_owned();
        OAuthServer { child, issuer }
    }
}

/// A receiver that may reach loopback, with mapping `/apps/orders-to-erp` whose password
/// credential `erp` was deployed without its secret, and an authorization-code credential
/// `/apps/ac`. Returns the server, the signer and the mapping's project directory.
async fn receiver(o: Option<&OAuthServer>) -> (Server, SigningKey, tempfile::TempDir) {
    let s = Server::start_with(|app| allow_outbound(app, &["127.0.0.1"])).await;
    let key = SigningKey::generate().unwrap();
    s.trust(&key, &[]);
    let (dir, b) = orders_bundle(&s, &key, &verify_target().await, b"mfd-v1");
    let (st, v) = s.deploy(&s.admin, &b).await;
    assert_eq!(st, 201, "{v}");
    if let Some(o) = o {
        let ac = credential(json!({
            "name": "ac", "type": "oauth2", "grant_type": "authorization_code",
            "authorization_endpoint": format!("{}/authorize", o.issuer),
            "token_endpoint": format!("{}/token", o.issuer), "token_endpoint_auth": "body",
            "client_id": "flowpack-client", "client_secret": CLIENT_SECRET,
            "redirect_uri": s.url("/v1/oauth/callback"), "scope": "openid offline_access",
            "include_in_deployment": true,
        }));
        let mut opts = Opts::new("/apps").sealed(s.recipient());
        opts.kind = BundleKind::Credentials;
        let (st, v) = s.deploy(&s.admin, &bundle(&key, &opts, &[], &[ac])).await;
        assert_eq!(st, 201, "{v}");
    }
    (s, key, dir)
}

/// The bundle of mapping `orders-to-erp` (file `orders.mfd` = `mfd`) and credential `erp`
/// without its password.
fn orders_bundle(
    s: &Server,
    key: &SigningKey,
    verify_url: &str,
    mfd: &[u8],
) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let m = mapping_input(
        dir.path(),
        json!({
            "name": "orders-to-erp", "description": "Orders into the ERP",
            "parameters": [
                {"name": "input", "type": "file", "required": true},
                {"name": "erp.credentials", "type": "credential", "credential": "erp"}
            ],
            "files": ["orders.mfd"]
        }),
        &[("orders.mfd", mfd)],
    );
    let erp = credential(json!({
        "name": "erp", "type": "password", "username": "svc", "verify_url": verify_url,
        "allow_usage_for": ["http"], "include_in_deployment": false,
    }));
    let b = bundle(key, &Opts::new("/apps").sealed(s.recipient()), &[m], &[erp]);
    (dir, b)
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_fills_secrets_verifies_authorizes_plans_and_rolls_back_in_a_browser() {
    let Some(driver) = chromedriver() else { return };
    install_provider();
    let o = OAuthServer::start();
    let (s, key, _dir) = receiver(Some(&o)).await;
    let mut b = Browser::start(driver).await;

    // Signed out, every page leads to the sign-in form.
    let p = b.goto(&s.url("/ui/containers/apps")).await;
    assert!(b.url().await.ends_with("/ui/sign-in"), "{p}");
    b.screenshot("sign-in").await;
    let p = b.sign_in(&s, &s.admin).await;
    assert!(p.contains("Signed in as"), "{p}");

    // The container tree.
    let p = b.click("a[href='/ui/containers/apps']").await;
    assert!(
        p.contains("orders-to-erp") && p.contains(">erp<") && p.contains(">ac<"),
        "{p}"
    );
    b.screenshot("container").await;

    // The mapping: its credential parameter is stored, without secrets.
    let p = b.click("a[href='/ui/mappings/apps/orders-to-erp']").await;
    assert!(
        p.contains("erp.credentials") && p.contains("needs credentials"),
        "{p}"
    );
    b.screenshot("mapping").await;

    // The credential needs its secrets; fill them in.
    let p = b.click("a[href='/ui/credentials/apps/erp']").await;
    assert_eq!(b.count("#needs-secrets").await, 1, "{p}");
    b.type_into("#secret-password", CANARY).await;
    let p = b.click("#save-secrets").await;
    assert!(p.contains("Saved: password."), "{p}");
    assert_eq!(b.count("#needs-secrets").await, 0, "{p}");
    assert_eq!(b.count("#has-secrets").await, 1, "{p}");
    assert!(p.contains("fingerprint "), "{p}");
    // A password field comes back empty.
    assert_eq!(b.property("#secret-password", "value").await, "");
    b.screenshot("credential").await;

    // Verify it (the target accepts only the password typed above).
    let p = b.click("#verify").await;
    assert!(p.contains("Verified:"), "{p}");

    // Change a field that is not secret: the secrets stay.
    b.goto(&s.url("/ui/credentials/apps/erp")).await;
    b.type_into("#field-description", "ERP service login").await;
    let p = b.click("#save-fields").await;
    assert!(p.contains("Saved: description."), "{p}");
    assert!(
        p.contains("ERP service login") && p.contains("id=\"has-secrets\""),
        "{p}"
    );

    // Create a credential with its secret.
    b.goto(&s.url("/ui/containers/apps")).await;
    let p = b
        .click("a[href='/ui/new-credential?container=/apps']")
        .await;
    assert!(p.contains("Create a credential"), "{p}");
    b.goto(&s.url("/ui/new-credential?container=/apps&type=api_key"))
        .await;
    b.screenshot("new-credential").await;
    b.type_into("#name", "billing").await;
    b.type_into("#field-placement", "header").await;
    b.type_into("#field-parameter_name", "X-Api-Key").await;
    b.type_into("#field-allow_usage_for", "http").await;
    b.type_into("#secret-key", CANARY).await;
    let p = b.click("#create").await;
    assert!(p.contains("Created /apps/billing."), "{p}");
    assert!(b.url().await.ends_with("/ui/credentials/apps/billing"));
    let (_, rec) = s.get(&s.admin, "/v1/credentials/apps/billing").await;
    assert_eq!(
        (rec["key"]["set"].as_bool(), rec["placement"].as_str()),
        (Some(true), Some("header")),
        "{rec}"
    );

    // Authorize the authorization-code credential at the OAuth server and come back.
    let p = b.goto(&s.url("/ui/credentials/apps/ac")).await;
    assert!(p.contains("client_id"), "{p}");
    let p = b.click("#authorize").await;
    assert!(p.contains("Continue to the authorization server"), "{p}");
    let p = b.click("a.button").await;
    assert!(p.contains("Authorization has been granted"), "{p}");
    assert!(b.url().await.starts_with(&s.url("/v1/oauth/callback?")));
    b.screenshot("oauth-granted").await;
    let p = b.click("a.button").await;
    assert!(b.url().await.ends_with("/ui/credentials/apps/ac"), "{p}");
    let rec = s.get(&s.admin, "/v1/credentials/apps/ac").await.1;
    assert_eq!(rec["refresh_token"]["set"], true, "{rec}");

    // Plan a new version of the mapping, uploaded with the file input.
    let (_d2, v2) = orders_bundle(&s, &key, "http://127.0.0.1:9/unused", b"mfd-v2");
    let upload = tempfile::Builder::new().suffix(".fpk").tempfile().unwrap();
    std::fs::write(upload.path(), &v2).unwrap();
    b.goto(&s.url("/ui/deployments")).await;
    b.screenshot("deployments").await;
    b.type_into("#bundle", upload.path().to_str().unwrap())
        .await;
    let p = b.click("#plan").await;
    assert!(p.contains("Plan of bundle"), "{p}");
    assert!(
        p.contains("/apps/orders-to-erp") && p.contains("update"),
        "{p}"
    );
    assert!(p.contains("verify_url"), "the changed field is named: {p}");
    b.screenshot("plan").await;
    // Nothing was deployed.
    let (_, list) = s.get(&s.admin, "/v1/deployments").await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 2, "{list}");

    // Roll back the first deployment, through its confirmation.
    b.goto(&s.url("/ui/deployments/1")).await;
    let p = b.click("#rollback").await;
    assert!(p.contains("Roll back deployment #1?"), "{p}");
    b.screenshot("rollback").await;
    let p = b.click("#confirm-rollback").await;
    assert!(p.contains("Rolled back deployment #1"), "{p}");
    assert!(b.url().await.ends_with("/ui/deployments/3"), "{p}");
    let (_, d) = s.get(&s.admin, "/v1/deployments/3").await;
    assert_eq!(d["rollback_of"], 1, "{d}");

    // The audit trail names what was done, and filters by container.
    let p = b.goto(&s.url("/ui/audit?container=/apps")).await;
    for action in [
        "patch-credential",
        "verify-credential",
        "oauth-callback",
        "plan",
        "rollback",
    ] {
        assert!(p.contains(action), "{action}: {p}");
    }
    b.screenshot("audit").await;

    // The listings page: older entries are a link away, filter kept.
    let p = b.goto(&s.url("/ui/audit?container=/apps&limit=2")).await;
    assert_eq!(b.count("#audit-table tbody tr").await, 2, "{p}");
    let first = b.count("#audit-table td").await;
    let p = b.click("#older").await;
    assert!(
        b.url().await.contains("container=%2Fapps&limit=2&before="),
        "{p}"
    );
    assert_eq!(b.count("#audit-table tbody tr").await, 2, "{p}");
    assert_eq!(b.count("#audit-table td").await, first);
    b.goto(&s.url("/ui/deployments?limit=2")).await;
    let p = b.click("#older").await;
    assert!(p.contains("#1<") && !p.contains("#3<"), "{p}");

    // Sign out: the session is over.
    let p = b.click("form.signout button").await;
    assert!(p.contains("Sign in"), "{p}");
    b.goto(&s.url("/ui/containers/")).await;
    assert!(b.url().await.ends_with("/ui/sign-in"));

    // The password typed in never came back: not in any page, nor in any answer of the API.
    let mut answers = Vec::new();
    for path in [
        "/v1/credentials/apps/erp",
        "/v1/audit",
        "/v1/deployments",
        "/v1/deployments/3",
    ] {
        answers.push(s.get(&s.admin, path).await.1.to_string());
    }
    for text in b.seen.iter().chain(&answers) {
        assert!(!text.contains(CANARY), "the secret came back: {text}");
        assert!(!text.contains(CLIENT_SECRET));
    }
    assert!(b.seen.len() > 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sees_no_write_control_and_forged_posts_are_refused() {
    let Some(driver) = chromedriver() else { return };
    install_provider();
    let (s, _key, _dir) = receiver(None).await;
    let reader = s.token("reader", &[("/", "read")]);
    let mut b = Browser::start(driver).await;

    // Signing in works from the keyboard alone: the token field has the focus, Enter sends.
    b.goto(&s.url("/ui/sign-in")).await;
    let p = b.type_and_enter(&reader).await;
    assert!(p.contains("Signed in as <strong>reader</strong>"), "{p}");

    // A read-only principal sees the pages without any control that changes something.
    let p = b.goto(&s.url("/ui/containers/apps")).await;
    assert!(
        p.contains("erp") && !p.contains("Create a credential"),
        "{p}"
    );
    let p = b.goto(&s.url("/ui/credentials/apps/erp")).await;
    assert!(p.contains("needs secrets"), "{p}");
    for control in ["#secrets-form", "#fields-form", "#verify", "#authorize"] {
        assert_eq!(b.count(control).await, 0, "{control} shown to a reader");
    }
    let p = b.goto(&s.url("/ui/deployments")).await;
    assert_eq!(b.count("#plan-form").await, 0, "{p}");
    b.goto(&s.url("/ui/deployments/1")).await;
    assert_eq!(b.count("#rollback").await, 0);

    // The session cookie is HttpOnly and SameSite=Strict.
    let cookies = b.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "flowpack_session")
        .unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    let reader_cookie = format!("flowpack_session={}", session["value"].as_str().unwrap());

    // Even with its own valid CSRF token, a reader's post is refused by the same rule as the
    // API's.
    let p = b.goto(&s.url("/ui/credentials/apps/erp")).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |cookie: Option<String>, form: Vec<(&'static str, String)>, origin: Option<&str>| {
        let mut r = http.post(s.url("/ui/credentials/apps/erp")).form(&form);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let secrets = |csrf: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            ("do", "secrets".to_owned()),
            ("password", CANARY.to_owned()),
        ]
    };
    let reader_csrf = csrf_of(&p);
    let r = post(Some(reader_cookie.clone()), secrets(&reader_csrf), None)
        .await
        .unwrap();
    refused_with(r, "you lack `write` on /apps").await;

    // Nor may it plan a bundle: refused before the upload is read.
    let r = http
        .post(s.url("/ui/deployments/plan"))
        .header("cookie", reader_cookie.clone())
        .header("content-type", "multipart/form-data; boundary=B")
        .body(format!(
            "--B\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{reader_csrf}\r\n--B--\r\n"
        ))
        .send()
        .await
        .unwrap();
    refused_with(r, "you lack `write` on every container").await;

    // An admin's session: forged posts without the right token, or from another site, fail.
    b.click("form.signout button").await;
    b.sign_in(&s, &s.admin).await;
    let p = b.goto(&s.url("/ui/credentials/apps/erp")).await;
    let csrf = csrf_of(&p);
    let admin_cookie = b
        .cookies()
        .await
        .iter()
        .find(|c| c["name"] == "flowpack_session")
        .map(|c| format!("flowpack_session={}", c["value"].as_str().unwrap()))
        .unwrap();
    let mut refused = Vec::new();
    let mut missing = secrets("");
    missing.remove(0);
    for (why, cookie, form, origin) in [
        ("no CSRF token", Some(admin_cookie.clone()), missing, None),
        (
            "a wrong CSRF token",
            Some(admin_cookie.clone()),
            secrets("forged"),
            None,
        ),
        (
            "another session's token",
            Some(admin_cookie.clone()),
            secrets(&reader_csrf),
            None,
        ),
        (
            "another site",
            Some(admin_cookie.clone()),
            secrets(&csrf),
            Some("http://evil.example"),
        ),
        ("no session", None, secrets(&csrf), None),
    ] {
        let r = post(cookie, form, origin).await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 403, "{why}: {text}");
        assert!(text.contains("refused"), "{why}: {text}");
        assert!(!text.contains(CANARY));
        refused.push(why);
    }
    assert_eq!(refused.len(), 5);

    // An upload with a wrong CSRF token is refused before its file is spooled.
    let spooled = || {
        std::fs::read_dir(s.data_dir().join("spool"))
            .unwrap()
            .count()
    };
    let before = spooled();
    let body = "--B\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nforged\r\n--B\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"b.fpk\"\r\n\r\nPK...\r\n--B--\r\n";
    let r = http
        .post(s.url("/ui/deployments/plan"))
        .header("cookie", admin_cookie.clone())
        .header("content-type", "multipart/form-data; boundary=B")
        .body(body)
        .send()
        .await
        .unwrap();
    refused_with(r, "CSRF").await;
    assert_eq!(spooled(), before);

    // The OAuth callback tells a browser what went wrong, in a page.
    let p = b
        .goto(&s.url("/v1/oauth/callback?code=x&state=forged"))
        .await;
    assert!(
        p.contains("The authorization failed") && p.contains("unknown state"),
        "{p}"
    );

    // A form on another site, submitted in the browser: the cookie stays home (SameSite)
    // and the post is refused.
    let forged = format!(
        "data:text/html,<form method=post action='{}'><input name=do value=secrets><input name=password value={CANARY}><button id=go>go</button></form>",
        s.url("/ui/credentials/apps/erp")
    );
    b.goto(&forged).await;
    let p = b.click("#go").await;
    assert!(p.contains("refused"), "{p}");

    // Nothing was changed by any of them.
    let (_, rec) = s.get(&s.admin, "/v1/credentials/apps/erp").await;
    assert_eq!(rec["needs_secrets"], true, "{rec}");

    // A revoked token's session ends at its next page.
    b.goto(&s.url("/ui/containers/")).await;
    b.click("form.signout button").await;
    b.sign_in(&s, &reader).await;
    flowpack_receiver::auth::revoke(&s.app.store, "reader")
        .unwrap()
        .unwrap();
    b.goto(&s.url("/ui/containers/apps")).await;
    assert!(b.url().await.ends_with("/ui/sign-in"));

    // Every page carries the policy headers; the API's answers do not change.
    let r = http
        .get(s.url("/ui/credentials/apps/erp"))
        .header("cookie", admin_cookie)
        .send()
        .await
        .unwrap();
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"));
    assert_eq!(h["x-frame-options"], "DENY");
    let body = r.text().await.unwrap();
    assert!(!body.contains("<script"), "{body}");
}
