//! The real binary: `init`, `trust add` and `token create` while `serve` runs, the loopback
//! rule, SIGTERM, and a canary secret that must appear in no answer, log line or file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flowpack_shared::keys::SigningKey;
use flowpack_shared::seal::SealingRecipient;
use flowpack_testkit::process::*;
use flowpack_testkit::*;
use reqwest::Method;
use serde_json::json;

/// `init` of the binary, run to its end: the sealing recipient and admin token it printed.
fn init_cli(dir: &std::path::Path) -> (String, String) {
    let (code, out, err) = run(&["init", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let mut field = |prefix: &str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("init printed no {prefix}: {out}"))
            .to_owned()
    };
    (field("sealing_recipient: "), field("admin_token: "))
}

#[test]
fn init_prints_recipient_and_token_once_and_refuses_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let (recipient, token) = init_cli(&dir);
    assert!(SealingRecipient::parse(&recipient).is_ok());
    assert!(token.starts_with("fpt_"));
    let (code, out, err) = run(&["init", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("already initialized"), "{err}");
    #[cfg(unix)]
    for f in ["sealing.agekey", "secrets.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert_eq!(std::fs::read(dir.join("secrets.key")).unwrap().len(), 32);
}

#[test]
fn serve_refuses_non_loopback_without_tls_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    init(&dir);
    let (code, _, err) = run(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("without TLS"), "{err}");
    let (code, _, _) = run(&[
        "token",
        "create",
        "x",
        "--data-dir",
        dir.to_str().unwrap(),
        "--grant",
        "/p=admin",
    ]);
    assert_eq!(code, 2);
    let (code, _, err) = run(&[
        "trust",
        "add",
        "/nonexistent.pub",
        "--data-dir",
        tmp.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_changes_take_effect_while_serving_and_no_secret_leaks() {
    install_provider();
    const CANARY: &str = "CANARY-7f3e9a1c";
    const CANARY2: &str = "CANARY-PATCHED-51b2";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let Init {
        recipient,
        admin_token: admin,
    } = init(&dir);
    let recipient = SealingRecipient::parse(&recipient).unwrap();
    let srv = serve(&dir);
    let client = Client::new();
    let mut bodies = String::new();

    let key = SigningKey::generate().unwrap();
    let pub_file = tmp.path().join("signer.pub");
    std::fs::write(&pub_file, key.verifying_key().to_pem()).unwrap();
    let p = project(Some(CANARY), true, b"mfd");
    let b = bundle(
        &key,
        &Opts::new("/public/orders").sealed(recipient.clone()),
        &p.mappings,
        &p.credentials,
    );

    let deploy = |token: String, body: Vec<u8>| {
        let client = client.clone();
        let url = format!("{}/v1/deployments", srv.base);
        async move {
            answer(
                client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/zip")
                    .body(body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    // Not trusted yet.
    let (st, v) = deploy(admin.clone(), b.clone()).await;
    assert_eq!((st, v["code"].as_str()), (422, Some("unknown-signer")));
    bodies.push_str(&v.to_string());
    // Trusted while serving, for /public only.
    let (code, out, err) = run(&[
        "trust",
        "add",
        pub_file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--containers",
        "/public",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&key.verifying_key().key_id().to_string()));
    let (st, v) = deploy(admin.clone(), b.clone()).await;
    assert_eq!(st, 201, "{v}");
    bodies.push_str(&v.to_string());

    // A token created while serving works at once.
    let (code, token, err) = run(&[
        "token",
        "create",
        "ci",
        "--data-dir",
        dir.to_str().unwrap(),
        "--grant",
        "/public=read,use",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("fpt_") && !token.contains('\n'));
    let get = |t: &str, path: &str| {
        let r = client
            .get(format!("{}{path}", srv.base))
            .bearer_auth(t.to_owned())
            .send();
        async move { answer(r.await.unwrap()).await }
    };
    let (st, v) = get(&token, "/v1/credentials/public/orders/erp").await;
    assert_eq!(st, 200, "{v}");
    bodies.push_str(&v.to_string());
    let (st, _) = deploy(token.clone(), b.clone()).await;
    assert_eq!(st, 403);

    // Everything that could echo a secret.
    let send = |m: Method, path: &str, body: serde_json::Value| {
        let r = client
            .request(m, format!("{}{path}", srv.base))
            .bearer_auth(admin.clone())
            .json(&body)
            .send();
        async move { answer(r.await.unwrap()).await }
    };
    for (m, path, body) in [
        (
            Method::POST,
            "/v1/mappings/public/orders/orders-to-erp/resolve",
            json!({"usage": "http"}),
        ),
        (
            Method::POST,
            "/v1/mappings/public/orders/orders-to-erp/resolve",
            json!({"usage": "http", "parameters": {"erp.credentials": {"inline": {"type": "password", "password": CANARY}}}}),
        ),
        (
            Method::POST,
            "/v1/mappings/public/orders/orders-to-erp/resolve",
            json!({"usage": "http", "parameters": {"erp.credentials": {"inline": {"type": "password", "password": CANARY, "bogus": CANARY}}}}),
        ),
        (
            Method::POST,
            "/v1/mappings/public/orders/orders-to-erp/resolve",
            json!({"usage": "ftp", "parameters": {"erp.credentials": {"inline": {"type": "password", "password": {"x": CANARY}}}}}),
        ),
        (
            Method::PATCH,
            "/v1/credentials/public/orders/erp",
            json!({"password": CANARY2}),
        ),
        (
            Method::PATCH,
            "/v1/credentials/public/orders/erp",
            json!({"password": [CANARY2]}),
        ),
        (
            Method::PATCH,
            "/v1/credentials/public/orders/erp",
            json!({"passwd": CANARY2}),
        ),
    ] {
        let (_, v) = send(m, path, body).await;
        bodies.push_str(&v.to_string());
    }
    for path in [
        "/v1/credentials/public/orders/erp",
        "/v1/mappings/public/orders/orders-to-erp",
        "/v1/deployments",
        "/v1/audit",
        "/v1/containers/public/orders",
    ] {
        let (st, v) = get(&admin, path).await;
        assert_eq!(st, 200, "{path}");
        bodies.push_str(&v.to_string());
    }
    // Replay and redeploy without secrets.
    let (st, v) = deploy(admin.clone(), b.clone()).await;
    assert_eq!(st, 200);
    bodies.push_str(&v.to_string());

    let log = srv.stop();
    assert!(log.contains("request"), "the log has request lines: {log}");
    // Deploys that succeeded log no error (one was once built, and logged, on every deploy).
    assert!(!log.contains("writer thread is gone"), "{log}");
    assert!(!log.contains("internal error"), "{log}");
    for secret in [CANARY, CANARY2] {
        assert!(!bodies.contains(secret), "{secret} in a response");
        assert!(!log.contains(secret), "{secret} in the log");
        for entry in walk(&dir) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {}",
                entry.display()
            );
        }
    }
    for t in [&admin, &token] {
        // `fpt_<16 hex>_<secret>`: the secret is base64url and may itself contain `_`, so
        // splitting at the last `_` could leave a character or two that any log contains.
        let secret_part = t.splitn(3, '_').nth(2).unwrap();
        assert!(!log.contains(secret_part), "a token in the log");
        for entry in walk(&dir) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes
                    .windows(secret_part.len())
                    .any(|w| w == secret_part.as_bytes())
            );
        }
    }
    assert_eq!(
        std::fs::read_dir(dir.join("spool")).unwrap().count(),
        0,
        "spool files left"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn one_server_per_data_dir_and_spool_leftovers_are_cleared_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    init(&dir);
    let spool = dir.join("spool");
    // What a server killed mid-upload leaves behind.
    std::fs::write(spool.join(".tmpLeft1"), b"half a bundle").unwrap();
    std::fs::create_dir(spool.join("not-ours")).unwrap();
    let mut first = serve(&dir);
    assert!(!spool.join(".tmpLeft1").exists());
    assert!(
        spool.join("not-ours").is_dir(),
        "only regular files are removed"
    );

    // A second server on the same directory exits 1 with a clear reason, touching nothing.
    std::fs::write(spool.join(".tmpInFlight"), b"the first server's upload").unwrap();
    let (code, out, err) = run(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("in use by another flowpack-receiver serve") && err.contains("serve.lock"),
        "{err}"
    );
    assert!(spool.join(".tmpInFlight").exists());

    // SIGKILL: the kernel releases the lock; the next server starts and clears the spool.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = serve(&dir);
    assert!(!spool.join(".tmpInFlight").exists());
    let log = second.stop();
    assert!(
        log.contains("removed spool files left by an earlier server"),
        "{log}"
    );
}

#[test]
fn sigterm_right_after_the_listening_line_shuts_down_gracefully() {
    // The handlers are installed before the line is printed: a supervisor may signal as soon
    // as it reads it. Repeated, since the window it guards against is short.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    init(&dir);
    for _ in 0..20 {
        let log = serve(&dir).stop();
        assert!(log.contains("shutdown signal received"), "{log}");
    }
}
