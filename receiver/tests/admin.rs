//! Token and trust administration: `token create --expires`, `token list`, `token revoke`,
//! `trust list` and `trust remove` over the real binary while `serve` runs on the same data
//! directory (each takes effect at the next request), and expired tokens refused in process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use std::time::{Duration, Instant};

use flowpack_receiver::auth;
use flowpack_shared::keys::SigningKey;
use flowpack_shared::timefmt::Timestamp;
use flowpack_testkit::process::{run, serve};
use flowpack_testkit::*;
use serde_json::Value;

fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    assert!(err.is_empty(), "{args:?}: {err}");
    out
}

/// Runs a command that must fail with exit 1 and one line on stderr; that line.
fn fails(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 1, "{args:?}: {out} {err}");
    assert!(out.is_empty(), "{args:?}: {out}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    err
}

/// A data directory made by `init`; its admin token.
fn init(dir: &Path) -> String {
    flowpack_testkit::init(dir).admin_token
}

/// The secret part of a token (after `fpt_<id>_`).
fn secret_of(token: &str) -> &str {
    &token[4 + 16 + 1..]
}

fn id_of(token: &str) -> &str {
    &token[4..4 + 16]
}

async fn get(base: &str, token: &str, path: &str) -> (u16, Value) {
    let r = Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(r).await
}

fn token_list(dir: &Path) -> Vec<Value> {
    let out = ok(&[
        "token",
        "list",
        "--data-dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["tokens"].as_array().unwrap().clone()
}

fn listed<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|t| t["id"] == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_listed_without_secrets_and_revoked_at_once_while_serving() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let d = dir.to_str().unwrap();
    let admin = init(&dir);
    let srv = serve(&dir);

    let create = |name: &str, extra: &[&str]| {
        let mut args = vec!["token", "create", name, "--data-dir", d];
        args.extend_from_slice(extra);
        let out = ok(&args);
        assert_eq!(out.lines().count(), 1, "{out}");
        out.trim().to_owned()
    };
    let before = Timestamp::now();
    let ci = create("ci", &["--grant", "/public=read,use", "--expires", "90d"]);
    let after = Timestamp::now();
    let deploy1 = create("deployer", &["--grant", "/=write"]);
    let deploy2 = create("deployer", &["--grant", "/=read"]);
    for t in [&ci, &deploy1, &deploy2] {
        let (st, v) = get(&srv.base, t, "/v1/containers/public").await;
        assert_ne!(st, 401, "{v}");
    }

    // The listing: every token, its principal and grants, its expiry; never a secret.
    let list = token_list(&dir);
    assert_eq!(list.len(), 4, "{list:?}");
    let row = listed(&list, id_of(&ci)).unwrap();
    assert_eq!(row["principal"], "ci");
    assert_eq!(
        row["grants"],
        serde_json::json!([{"prefix": "/public", "perms": ["read", "use"]}])
    );
    let expires = Timestamp::parse(row["expires_at"].as_str().unwrap()).unwrap();
    let ninety = time::Duration::days(90);
    assert!(
        before.plus(ninety) <= expires && expires <= after.plus(ninety),
        "{expires:?}"
    );
    assert_eq!(row["expired"], false);
    assert!(Timestamp::parse(row["created_at"].as_str().unwrap()).is_some());
    let row = listed(&list, id_of(&deploy1)).unwrap();
    assert_eq!(row["expires_at"], Value::Null);
    // Grants belong to the principal: both of its tokens show both.
    assert_eq!(
        row["grants"],
        listed(&list, id_of(&deploy2)).unwrap()["grants"]
    );
    assert_eq!(listed(&list, id_of(&admin)).unwrap()["principal"], "admin");

    // Last use is recorded off the request's path: it shows up shortly after.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = token_list(&dir);
        if listed(&list, id_of(&ci)).unwrap()["last_used_at"].is_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last use never recorded: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let text = ok(&["token", "list", "--data-dir", d]);
    assert!(text.starts_with("PRINCIPAL"), "{text}");
    assert!(
        text.contains(id_of(&ci)) && text.contains("/public=read,use"),
        "{text}"
    );
    let json = serde_json::to_string(&token_list(&dir)).unwrap();
    for t in [&admin, &ci, &deploy1, &deploy2] {
        for out in [&text, &json] {
            assert!(
                !out.contains(secret_of(t)),
                "a token's secret is listed: {out}"
            );
        }
    }

    // Revoked by id: refused at the next request, while the server keeps running.
    let out = ok(&["token", "revoke", id_of(&ci), "--data-dir", d]);
    assert!(out.contains(id_of(&ci)), "{out}");
    let (st, v) = get(&srv.base, &ci, "/v1/containers/public").await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let err = fails(&["token", "revoke", id_of(&ci), "--data-dir", d]);
    assert!(err.contains(id_of(&ci)), "{err}");

    // Revoked by principal name: every token of it.
    let out = ok(&["token", "revoke", "deployer", "--data-dir", d]);
    assert!(out.contains("2 tokens"), "{out}");
    for t in [&deploy1, &deploy2] {
        assert_eq!(get(&srv.base, t, "/v1/containers/public").await.0, 401);
    }
    // The admin's token is untouched.
    assert_eq!(get(&srv.base, &admin, "/v1/containers/").await.0, 200);
    let left: Vec<String> = token_list(&dir)
        .iter()
        .map(|t| t["principal"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["admin"]);

    let err = fails(&["token", "revoke", "nobody", "--data-dir", d]);
    assert!(err.contains("\"nobody\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_key_is_refused_at_once_while_serving() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let d = dir.to_str().unwrap();
    let admin = init(&dir);
    let srv = serve(&dir);

    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let key_id = key.verifying_key().key_id().to_string();
    let other_id = other.verifying_key().key_id().to_string();
    for (k, prefix) in [(&key, "/public"), (&other, "/")] {
        let pub_file = tmp
            .path()
            .join(format!("{}.pub", k.verifying_key().key_id()));
        std::fs::write(&pub_file, k.verifying_key().to_pem()).unwrap();
        let mut args = vec!["trust", "add", pub_file.to_str().unwrap(), "--data-dir", d];
        if prefix != "/" {
            args.extend(["--containers", prefix]);
        }
        ok(&args);
    }

    let out = ok(&["trust", "list", "--data-dir", d, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let signers = v["signers"].as_array().unwrap();
    assert_eq!(signers.len(), 2, "{v}");
    let row = signers
        .iter()
        .find(|s| s["key_id"] == key_id.as_str())
        .unwrap();
    assert_eq!(row["containers"], serde_json::json!(["/public"]));
    assert!(Timestamp::parse(row["added_at"].as_str().unwrap()).is_some());
    let text = ok(&["trust", "list", "--data-dir", d]);
    assert!(text.contains(&key_id) && text.contains(&other_id), "{text}");
    assert!(!text.contains(secret_of(&admin)) && !out.contains(secret_of(&admin)));

    let client = Client::new();
    let deploy = |b: Vec<u8>| {
        let r = client
            .post(format!("{}/v1/deployments", srv.base))
            .bearer_auth(&admin)
            .header("content-type", "application/zip")
            .body(b)
            .send();
        async move { answer(r.await.unwrap()).await }
    };
    let p = project(None, false, b"mfd");
    let bundle_of =
        |k: &SigningKey| bundle(k, &Opts::new("/public/orders"), &p.mappings, &p.credentials);
    let (st, v) = deploy(bundle_of(&key)).await;
    assert_eq!(st, 201, "{v}");

    let out = ok(&["trust", "remove", &key_id, "--data-dir", d]);
    assert!(out.contains(&key_id), "{out}");
    let (st, v) = deploy(bundle_of(&key)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("unknown-signer")),
        "{v}"
    );
    // The other key is still trusted.
    let (st, v) = deploy(bundle_of(&other)).await;
    assert_eq!(st, 201, "{v}");

    let err = fails(&["trust", "remove", &key_id, "--data-dir", d]);
    assert!(err.contains(&key_id), "{err}");
    let out = ok(&["trust", "list", "--data-dir", d, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [other_id.as_str()]);
}

#[test]
fn administration_usage_errors_exit_2_and_failures_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let d = dir.to_str().unwrap();
    init(&dir);
    for bad in [
        &["token", "create", "x", "--data-dir", d, "--expires", "7x"][..],
        &["token", "create", "x", "--data-dir", d, "--expires", "0d"],
        &["token", "revoke", "--data-dir", d],
        &["trust", "remove", "--data-dir", d],
        &["token", "list", "--data-dir", d, "--jsn"],
    ] {
        let (code, out, err) = run(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(out.is_empty(), "{bad:?}: {out}");
    }
    let missing = tmp.path().join("nothing");
    let m = missing.to_str().unwrap();
    for args in [
        &["token", "list", "--data-dir", m][..],
        &["trust", "list", "--data-dir", m, "--json"],
        &["token", "revoke", "ci", "--data-dir", m],
    ] {
        let err = fails(args);
        assert!(err.contains("not an initialized data directory"), "{err}");
    }
    let err = fails(&["trust", "remove", "00000000000000ff", "--data-dir", d]);
    assert!(err.contains("00000000000000ff"), "{err}");
}

#[tokio::test]
async fn an_expired_token_is_refused_saying_so_and_only_to_its_holder() {
    let s = Server::start().await;
    let grants = [(cp("/"), auth::PermSet::parse("read,write").unwrap())];
    let past = Timestamp::now().plus(time::Duration::minutes(-1));
    let expired = auth::create_token_until(&s.app.store, "old", &grants, Some(past))
        .unwrap()
        .to_string();
    let future = Timestamp::now().plus(time::Duration::hours(1));
    let valid = auth::create_token_until(&s.app.store, "new", &grants, Some(future))
        .unwrap()
        .to_string();

    // A read (answered with its authentication in one blocking task) and a deploy
    // (authenticated first): both refuse it, saying it expired.
    let (st, v) = s.get(&expired, "/v1/containers/").await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let expired_detail = v["detail"].as_str().unwrap().to_owned();
    assert!(expired_detail.contains("expired"), "{v}");
    let (st, v) = s.deploy(&expired, b"PK").await;
    assert_eq!(
        (st, v["detail"].as_str()),
        (401, Some(expired_detail.as_str()))
    );

    // Its id with another secret, an unknown token and a malformed one learn nothing of it.
    let wrong_secret = format!("fpt_{}_{}", id_of(&expired), "A".repeat(43));
    let unknown = format!("fpt_{}_{}", "0".repeat(16), secret_of(&expired));
    for other in [&wrong_secret, &unknown, &"fpt_nonsense".to_owned()] {
        let (st, v) = s.get(other, "/v1/containers/").await;
        assert_eq!(st, 401);
        let detail = v["detail"].as_str().unwrap();
        assert!(!detail.contains("expired"), "{detail}");
        assert_ne!(detail, expired_detail);
    }

    // A token not yet expired works.
    let (st, v) = s.get(&valid, "/v1/containers/").await;
    assert_eq!(st, 200, "{v}");

    let listed = auth::list_tokens(&s.app.store).unwrap();
    let row = listed.iter().find(|t| t.id == id_of(&expired)).unwrap();
    assert!(row.expired);
    assert_eq!(
        row.last_used_at, None,
        "an expired token is not recorded as used"
    );
    assert!(
        !listed
            .iter()
            .find(|t| t.id == id_of(&valid))
            .unwrap()
            .expired
    );
    s.stop().await;
}
