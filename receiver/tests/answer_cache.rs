//! The credential answer cache: a repeated `GET /v1/credentials/{path}` is answered from memory
//! while the store is unchanged, and never once a change is committed — by the server itself,
//! by the CLI in another process, or by anything else that writes the database file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowpack_receiver::auth;
use flowpack_testkit::process::run;
use flowpack_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "canary-answer-cache-7c3a";
const ERP: &str = "/v1/credentials/public/orders/erp";

/// `flowpack_credential_reads_cached_total`.
async fn cached(s: &Server) -> u64 {
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("flowpack_credential_reads_cached_total "))
        .unwrap_or_else(|| panic!("no cached-reads counter in {text}"))
        .parse()
        .unwrap()
}

/// A GET's status, `Content-Type` and body bytes, read without the checking client.
async fn raw_get(s: &Server, token: &str, path: &str) -> (u16, String, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ty = r.headers()["content-type"].to_str().unwrap().to_owned();
    (status, ty, r.bytes().await.unwrap().to_vec())
}

/// Waits until `token`'s first use is recorded. A token's use is recorded off the request's
/// path, by a write of its own (a new generation of the store): waiting for it keeps that write
/// from landing between the two reads of [`read_twice`].
async fn used(s: &Server, token: &str) {
    let (id, _) = auth::split_token(token).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tokens = auth::list_tokens(&s.app.store).unwrap();
        if tokens
            .iter()
            .any(|t| t.id == id && t.last_used_at.is_some())
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the use of {id} was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a credential of its own with the admin's token: its path and record.
async fn create_spare(s: &Server) -> (&'static str, Value) {
    let spare = "/v1/credentials/public/spare/login";
    let (st, created) = s
        .send(
            Method::PUT,
            &s.admin,
            spare,
            Some(json!({"type": "password", "username": "svc"})),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    (spare, created)
}

/// Reads `ERP` as `token` twice; both answers must be `want`, and the second must have been
/// answered from memory on the embedded store (never on PostgreSQL).
async fn read_twice(s: &Server, token: &str, want: &Value) {
    let before = cached(s).await;
    for _ in 0..2 {
        let (st, v) = s.get(token, ERP).await;
        assert_eq!((st, &v), (200, want));
    }
    let from_memory = cached(s).await - before;
    if store::embedded() {
        assert_eq!(
            from_memory, 1,
            "the second read was not answered from memory"
        );
    } else {
        assert_eq!(from_memory, 0, "nothing is kept on PostgreSQL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_answer_is_the_stores_answer_and_goes_with_the_first_change() {
    let (s, _, _) = deployed(SECRET).await;
    used(&s, &s.admin).await;
    let reader = s.token("reader", &[("/public", "read")]);
    assert_eq!(s.get(&reader, ERP).await.0, 200);
    used(&s, &reader).await;

    // The answer from memory is the store's, byte for byte, with the same headers.
    let first = raw_get(&s, &reader, ERP).await;
    let before = cached(&s).await;
    let second = raw_get(&s, &reader, ERP).await;
    assert_eq!(first, second);
    assert_eq!(first.0, 200);
    assert_eq!(first.1, "application/json");
    assert_eq!(cached(&s).await - before, u64::from(store::embedded()));
    assert!(!String::from_utf8_lossy(&first.2).contains(SECRET));
    let mut want: Value = serde_json::from_slice(&first.2).unwrap();

    // A change through the server: the next read shows it, and is then kept again.
    let (st, v) = s
        .send(
            Method::PATCH,
            &s.admin,
            ERP,
            Some(json!({"description": "changed through the API"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    want["description"] = json!("changed through the API");
    read_twice(&s, &reader, &want).await;

    // Every check a read makes is still made from memory: another principal without the
    // grant, a wrong secret, a token of the right id with a wrong secret.
    let outsider = s.token("outsider", &[("/other", "read")]);
    assert_eq!(s.get(&outsider, ERP).await.0, 403);
    used(&s, &outsider).await;
    let (id, _) = auth::split_token(&reader).unwrap();
    let forged = format!("fpt_{id}_not-the-secret");
    assert_eq!(s.get(&forged, ERP).await.0, 401);
    read_twice(&s, &reader, &want).await;

    // A token revoked while its answer is kept: refused at the next read.
    auth::revoke(&s.app.store, "reader").unwrap().unwrap();
    let (st, v) = s.get(&reader, ERP).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthorized")), "{v}");

    // A credential deleted while kept: gone at the next read.
    let (spare, created) = create_spare(&s).await;
    let admin = s.admin.clone();
    let before = cached(&s).await;
    for _ in 0..2 {
        assert_eq!(s.get(&admin, spare).await, (200, created.clone()));
    }
    assert_eq!(cached(&s).await - before, u64::from(store::embedded()));
    let (st, v) = s.send(Method::DELETE, &admin, spare, None).await;
    assert_eq!(st, 204, "{v}");
    let (st, v) = s.get(&admin, spare).await;
    assert_eq!((st, v["code"].as_str()), (404, Some("not-found")), "{v}");
    s.stop().await;
}

/// Another process's commit: the CLI revoking a token, and a tool writing the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_another_process_is_seen_at_the_next_read() {
    store::embedded_only("another process writes the store's file");
    let (s, _, _) = deployed(SECRET).await;
    let data = s.data_dir();
    let d = data.to_str().unwrap();
    let reader = s.token("reader", &[("/public", "read")]);
    let (st, mut want) = s.get(&reader, ERP).await;
    assert_eq!(st, 200, "{want}");
    used(&s, &reader).await;
    read_twice(&s, &reader, &want).await;

    // Written by a connection of another program: the next read shows it.
    let db = rusqlite::Connection::open(data.join("store.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let changed = db
        .execute(
            "UPDATE credentials SET public = json_set(public, '$.description', 'changed outside') WHERE name = 'erp'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    want["description"] = json!("changed outside");
    read_twice(&s, &reader, &want).await;
    drop(db);

    // `token revoke` in another process: refused at the next read.
    let (code, out, err) = run(&["token", "revoke", "reader", "--data-dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    let (st, v) = s.get(&reader, ERP).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthorized")), "{v}");
    s.stop().await;
}

/// `answer_cache_mib: 0` keeps nothing: every read is the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_of_zero_mib_keeps_nothing() {
    let s = Server::start_with(|app| app.edit_config(|c| c.answer_cache_mib = 0)).await;
    let (spare, created) = create_spare(&s).await;
    used(&s, &s.admin).await;
    for _ in 0..3 {
        assert_eq!(s.get(&s.admin, spare).await, (200, created.clone()));
    }
    assert_eq!(cached(&s).await, 0);
    s.stop().await;
}
