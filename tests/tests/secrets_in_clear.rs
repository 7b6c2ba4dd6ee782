//! A receiver takes secrets in clear only over TLS or from a loopback client: a
//! `PUT /v1/credentials/{path}` carrying a secret, or a bundle packaged with
//! `--plaintext-secrets`, sent over plain HTTP from any other address is
//! `403 secrets-in-clear`, writes nothing, and is audited without the secret.
//!
//! How a non-loopback plain connection is made honestly: `flowpack-receiver serve` refuses to
//! listen on a non-loopback address without TLS, so the receiver stays on 127.0.0.1 and the
//! *client* comes from a non-loopback address. The test re-runs itself inside a private network
//! namespace (`unshare --user --map-root-user --net`: no privilege beyond a user namespace),
//! whose loopback interface also carries 192.0.2.1 (TEST-NET-1); the client binds its socket
//! to that address before connecting to 127.0.0.1, so the receiver sees a peer of 192.0.2.1.
//! No packet leaves the namespace. It needs `unshare` (util-linux) and `ip` (iproute2).
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use flowpack_e2e::*;
use flowpack_testkit::{Receiver, Response, process::bin};
use serde_json::{Value, json};

/// Set in the re-run inside the namespace.
const INSIDE: &str = "FLOWPACK_E2E_IN_NETNS";
/// The client's non-loopback address inside the namespace.
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CANARY: &str = "canary-in-clear-secret-4e1d";

/// Runs the test `name` of this binary again inside a new network namespace whose loopback
/// interface is up and also has [`CLIENT`]; fails unless exactly that test ran and passed.
fn rerun_in_namespace(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = run(Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--", "sh", "-c"])
        .arg(format!(
            "ip link set lo up && ip addr add {CLIENT}/32 dev lo && exec \"$0\" \"$@\""
        ))
        .arg(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the run inside the namespace failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
}

/// One HTTP/1.1 request from a socket bound to `from`; returns (status, body).
fn http_from(
    from: Ipv4Addr,
    url: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
) -> (u16, Value) {
    http_from_as(from, url, method, path, token, "application/json", body)
}

/// [`http_from`] with a content type.
fn http_from_as(
    from: Ipv4Addr,
    url: &str,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let to: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .unwrap_or_else(|e| panic!("binding {from}: {e}"));
    socket.connect(&to.into()).unwrap();
    let mut s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    // Read off a raw socket, checked against the document like every other answer.
    let answer = Response::parse(&resp).expect("an HTTP answer");
    let method = flowpack_testkit::openapi::Method::from_bytes(method.as_bytes()).unwrap();
    flowpack_testkit::openapi::check(&method, path, &answer);
    (answer.status().as_u16(), answer.value())
}

#[test]
fn a_receiver_refuses_secrets_in_clear_from_a_non_loopback_client() {
    flowpack_testkit::store::embedded_only(
        "the receiver runs in a network namespace with no route to a database server",
    );
    if std::env::var_os(INSIDE).is_none() {
        return rerun_in_namespace(
            "a_receiver_refuses_secrets_in_clear_from_a_non_loopback_client",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut r = Receiver::init(tmp.path(), "data");
    r.serve();
    let token = r.admin_token.clone();
    let record = |password: Option<&str>| {
        let mut v = json!({"type": "password", "username": "svc", "allow_usage_for": ["http"]});
        if let Some(p) = password {
            v["password"] = json!(p);
        }
        v.to_string().into_bytes()
    };

    // A secret in clear from 192.0.2.1 over plain HTTP: refused, and nothing is written.
    let (s, problem) = http_from(
        CLIENT,
        &r.url,
        "PUT",
        "/v1/credentials/public/orders/erp",
        &token,
        &record(Some(CANARY)),
    );
    assert_eq!(s, 403, "{problem}");
    assert_eq!(problem["code"], "secrets-in-clear", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("TLS"),
        "the refusal says what to do: {problem}"
    );
    let (s, _) = r.get_json("/v1/credentials/public/orders/erp");
    assert_eq!(s, 404, "nothing was written");

    // The same client may create the credential without its secret (filled in later).
    let (s, created) = http_from(
        CLIENT,
        &r.url,
        "PUT",
        "/v1/credentials/public/orders/erp",
        &token,
        &record(None),
    );
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["needs_secrets"], true, "{created}");

    // From a loopback address, the same record with its secret is taken.
    let (s, created) = http_from(
        Ipv4Addr::LOCALHOST,
        &r.url,
        "PUT",
        "/v1/credentials/public/orders/crm",
        &token,
        &record(Some(CANARY)),
    );
    assert_eq!(s, 201, "{created}");

    // The refusal is audited, with its code and without the secret.
    let (s, audit) = r.get_json("/v1/audit?limit=10");
    assert_eq!(s, 200);
    let refused: Vec<&Value> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["code"] == "secrets-in-clear")
        .collect();
    assert_eq!(refused.len(), 1, "{audit}");
    assert_eq!(refused[0]["action"], "create-credential", "{audit}");
    r.stop();
    let log = std::fs::read(&r.log).unwrap();
    for (what, bytes) in [("audit", audit.to_string().into_bytes()), ("log", log)] {
        assert!(
            !contains(&bytes, CANARY.as_bytes()),
            "the secret is in the {what}"
        );
    }
}

#[test]
fn a_bundle_with_secrets_in_clear_from_a_non_loopback_client_is_refused() {
    flowpack_testkit::store::embedded_only(
        "the receiver runs in a network namespace with no route to a database server",
    );
    if std::env::var_os(INSIDE).is_none() {
        return rerun_in_namespace(
            "a_bundle_with_secrets_in_clear_from_a_non_loopback_client_is_refused",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut r = Receiver::init(dir, "data");
    let key = dir.join("signer.key");
    ok(Command::new(bin("flowpack"))
        .args(["keygen", "-o"])
        .arg(&key));
    r.trust(&dir.join("signer.key.pub"), &["/public"]);
    r.serve();
    let token = r.admin_token.clone();
    let package = |name: &str, sealing: &[&str]| {
        let out = dir.join(name);
        ok(Command::new(bin("flowpack"))
            .arg("package")
            .arg(root().join("fixtures/sample"))
            .arg("-k")
            .arg(&key)
            .args(["-c", "/public/orders", "-o"])
            .arg(&out)
            .args(sealing));
        std::fs::read(out).unwrap()
    };
    let clear = package("clear.fpk", &["--plaintext-secrets"]);
    let sealed = package("sealed.fpk", &["--seal-to", &r.recipient]);
    let deploy = |from: Ipv4Addr, path: &str, bundle: &[u8]| {
        http_from_as(
            from,
            &r.url,
            "POST",
            path,
            &token,
            "application/zip",
            bundle,
        )
    };

    // In clear from 192.0.2.1: refused, for a plan too, naming the credential and the fix.
    for path in ["/v1/deployments", "/v1/deployments?dry_run=true"] {
        let (s, problem) = deploy(CLIENT, path, &clear);
        assert_eq!(s, 403, "{path}: {problem}");
        assert_eq!(problem["code"], "secrets-in-clear", "{problem}");
        let detail = problem["detail"].as_str().unwrap_or("");
        assert!(detail.contains("/public/orders/erp"), "{problem}");
        assert!(detail.contains("--seal-to"), "{problem}");
    }
    let (_, deployments) = r.get_json("/v1/deployments");
    assert_eq!(deployments["deployments"], json!([]), "nothing was written");
    // In clear from a loopback client: taken (it never crossed a network).
    let (s, record) = deploy(Ipv4Addr::LOCALHOST, "/v1/deployments", &clear);
    assert_eq!(s, 201, "{record}");
    // Sealed to the receiver (packaged after), from the non-loopback client: applied.
    let (s, record) = deploy(CLIENT, "/v1/deployments", &sealed);
    assert_eq!(s, 201, "{record}");

    let (_, audit) = r.get_json("/v1/audit?limit=20");
    let refused = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["code"] == "secrets-in-clear")
        .count();
    assert_eq!(refused, 2, "{audit}");
    r.stop();
    let log = std::fs::read(&r.log).unwrap();
    for (what, bytes) in [("audit", audit.to_string().into_bytes()), ("log", log)] {
        assert!(
            !contains(&bytes, b"canary-erp-password-7f3a"),
            "the secret is in the {what}"
        );
    }
}
