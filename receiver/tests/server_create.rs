//! Creating a credential on the server (`PUT /v1/credentials/{path}`): the record's rules, the
//! containers it creates, `409 exists`, the audit trail, and no secret in any answer, log line,
//! audit row or the database file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowpack_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn put(s: &Server, token: &str, path: &str, body: Value) -> (u16, Value) {
    s.send(Method::PUT, token, path, Some(body)).await
}

async fn audit(s: &Server) -> Vec<Value> {
    let (_, v) = s.get(&s.admin, "/v1/audit").await;
    let mut rows = v["audit"].as_array().unwrap().clone();
    rows.sort_by_key(|r| r["id"].as_i64());
    rows.into_iter()
        .filter(|r| r["action"] == "create-credential")
        .collect()
}

const CANARY: &str = "put-canary-7f3a";

#[tokio::test]
async fn creates_a_credential_with_its_containers_and_answers_the_redacted_record() {
    let logs = Logs::capture();
    let s = Server::start().await;
    let path = "/v1/credentials/teams/billing/erp";
    let (st, created) = put(
        &s,
        &s.admin,
        path,
        json!({"type": "password", "username": "svc", "password": CANARY,
               "verify_url": "https://erp.example.com/ping", "allow_usage_for": ["http"]}),
    )
    .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["path"], "/teams/billing/erp");
    assert_eq!(created["name"], "erp");
    assert_eq!(created["username"], "svc");
    assert_eq!(created["password"]["set"], true);
    assert_eq!(created["needs_secrets"], false);
    // As GET answers it.
    let (st, shown) = s.get(&s.admin, path).await;
    assert_eq!((st, &shown), (200, &created));
    // The containers were created, as a deploy creates them.
    let (st, v) = s.get(&s.admin, "/v1/containers/teams").await;
    assert_eq!((st, &v["containers"]), (200, &json!(["billing"])), "{v}");
    let (st, v) = s.get(&s.admin, "/v1/containers/teams/billing").await;
    assert_eq!((st, &v["credentials"]), (200, &json!(["erp"])), "{v}");

    // A record without secrets is created needing them; `name` may be repeated.
    let (st, empty) = put(
        &s,
        &s.admin,
        "/v1/credentials/teams/billing/later",
        json!({"name": "later", "type": "database", "host": "db.example.com"}),
    )
    .await;
    assert_eq!(st, 201, "{empty}");
    assert_eq!(empty["needs_secrets"], true);

    // Never over an existing one.
    let (st, v) = put(
        &s,
        &s.admin,
        path,
        json!({"type": "api_key", "key": CANARY}),
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (409, Some("exists")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("PATCH"), "{v}");
    let (_, still) = s.get(&s.admin, path).await;
    assert_eq!(still, created);

    let rows = audit(&s).await;
    let outcomes: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("/teams/billing/erp", "created", 201),
            ("/teams/billing/later", "created", 201),
            ("/teams/billing/erp", "refused", 409),
        ]
    );
    assert_eq!(rows[2]["code"], "exists");

    let everything = format!("{created}{shown}{v}{rows:?}{}", logs.text());
    assert!(!everything.contains(CANARY), "{everything}");
    assert!(logs.text().contains("PUT"), "the requests were logged");
    let (dir, _) = s.stop_keeping_data().await;
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
                "{} holds the secret",
                f.display()
            );
        }
    }
}

#[tokio::test]
async fn refuses_a_bad_record_naming_the_field_and_audits_the_refusal() {
    let logs = Logs::capture();
    let s = Server::start().await;
    let path = "/v1/credentials/apps/erp";
    for (body, code, field) in [
        (
            json!({"type": "password", "password": CANARY, "passwrd": CANARY}),
            "bad-record",
            "passwrd",
        ),
        (
            json!({"type": "password", "password": CANARY, "allow_usage_for": "http"}),
            "bad-record",
            "allow_usage_for",
        ),
        (
            json!({"type": "database", "password": CANARY, "port": "many"}),
            "bad-record",
            "port",
        ),
        (
            json!({"name": "crm", "type": "password", "password": CANARY}),
            "bad-record",
            "name",
        ),
        (json!({"password": CANARY}), "bad-record", "type"),
        (json!({"type": "kerberos"}), "bad-record", "type"),
        (json!([CANARY]), "bad-request-body", "object"),
    ] {
        let (st, v) = put(&s, &s.admin, path, body.clone()).await;
        assert_eq!((st, v["code"].as_str()), (422, Some(code)), "{body}: {v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{body}: {detail}");
        assert!(!v.to_string().contains(CANARY), "{v}");
    }
    // Nothing was written.
    let (st, _) = s.get(&s.admin, path).await;
    assert_eq!(st, 404);
    let (st, _) = s.get(&s.admin, "/v1/containers/apps").await;
    assert_eq!(st, 404);
    // Only with `write`.
    let reader = s.token("reader", &[("/", "read")]);
    let (st, v) = put(&s, &reader, path, json!({"type": "password"})).await;
    assert_eq!((st, v["code"].as_str()), (403, Some("forbidden")), "{v}");

    let rows = audit(&s).await;
    assert_eq!(rows.len(), 7, "{rows:?}");
    assert!(rows.iter().all(|r| r["outcome"] == "refused"));
    assert!(rows.iter().all(|r| r["status"] == 422));
    let everything = format!("{rows:?}{}", logs.text());
    assert!(!everything.contains(CANARY), "{everything}");
    s.stop().await;
}
