//! The HTTP API over real HTTP on 127.0.0.1:0: every endpoint and status, permissions,
//! replay, staleness, secrets kept on redeploy, PATCH, deletes, resolution and atomicity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowpack_shared::bundle::BundleKind;
use flowpack_shared::keys::SigningKey;
use flowpack_shared::seal::SealingIdentity;
use flowpack_shared::timefmt::Timestamp;
use flowpack_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

fn key() -> SigningKey {
    SigningKey::generate().unwrap()
}

#[tokio::test]
async fn health_and_keys_need_no_token() {
    let s = Server::start().await;
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (st, v) = answer(s.client.get(s.url("/v1/keys")).send().await.unwrap()).await;
    assert_eq!(st, 200);
    assert_eq!(v["sealing_recipient"], s.recipient().to_string());
    assert!(v["sealing_recipient"].as_str().unwrap().starts_with("age1"));
    s.stop().await;
}

#[tokio::test]
async fn deploy_creates_containers_and_answers_the_record() {
    let (s, _k, rec) = deployed("pw-1").await;
    assert_eq!(rec["container"], "/public/orders");
    assert_eq!(rec["replayed"], false);
    assert_eq!(
        rec["created"],
        json!(["/public/orders/orders-to-erp", "/public/orders/erp"])
    );
    assert_eq!(rec["updated"], json!([]));
    assert_eq!(rec["needs_secrets"], json!([]));
    assert_eq!(rec["bundle_id"].as_str().unwrap().len(), 32);

    let (st, root) = s.get(&s.admin, "/v1/containers/").await;
    assert_eq!(st, 200);
    assert_eq!(root["containers"], json!(["public"]));
    let (_, c) = s.get(&s.admin, "/v1/containers/public/orders").await;
    assert_eq!(
        c,
        json!({"path": "/public/orders", "containers": [], "mappings": ["orders-to-erp"], "credentials": ["erp"]})
    );
    let (st, _) = s.get(&s.admin, "/v1/containers/public/nothing").await;
    assert_eq!(st, 404);

    let (st, m) = s
        .get(&s.admin, "/v1/mappings/public/orders/orders-to-erp")
        .await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["path"], "/public/orders/orders-to-erp");
    assert_eq!(m["version"], 1);
    assert_eq!(m["files"], json!(["orders.mfd", "schemas/order.xsd"]));
    assert_eq!(
        m["credential_parameters"],
        json!([{"name": "erp.credentials", "credential": "/public/orders/erp", "stored": true, "has_secrets": true}])
    );

    let r = s
        .client
        .get(s.url("/v1/mappings/public/orders/orders-to-erp/files/schemas/order.xsd"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"<xsd/>");
    let (st, _) = s
        .get(
            &s.admin,
            "/v1/mappings/public/orders/orders-to-erp/files/nope.txt",
        )
        .await;
    assert_eq!(st, 404);

    let (st, c) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    assert_eq!(st, 200);
    assert_eq!(c["path"], "/public/orders/erp");
    assert_eq!(c["type"], "password");
    assert_eq!(c["username"], "svc");
    assert_eq!(c["needs_secrets"], false);
    assert_eq!(c["password"]["set"], true);
    assert_eq!(c["password"]["fingerprint"].as_str().unwrap().len(), 16);
    assert!(!c.to_string().contains("pw-1"));

    let (st, d) = s
        .get(&s.admin, "/v1/deployments?container=/public/orders")
        .await;
    assert_eq!(st, 200);
    assert_eq!(d["deployments"].as_array().unwrap().len(), 1);
    assert_eq!(d["deployments"][0]["bundle_id"], rec["bundle_id"]);
    s.stop().await;
}

#[tokio::test]
async fn permission_matrix() {
    let s = Server::start().await;
    let k = key();
    s.trust(&k, &[]);
    let p = project(None, false, b"m");
    let b = bundle(
        &k,
        &Opts::new("/public/orders"),
        &p.mappings,
        &p.credentials,
    );

    // No token, a malformed token, a well-formed but unknown token: 401.
    let r = s
        .client
        .post(s.url("/v1/deployments"))
        .header("content-type", "application/zip")
        .body(b.clone())
        .send()
        .await
        .unwrap();
    let (st, v) = answer(r).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(s.deploy("nonsense", &b).await.0, 401);
    let forged = format!("{}x", &s.admin[..s.admin.len() - 1]);
    assert_eq!(s.deploy(&forged, &b).await.0, 401);
    assert_eq!(s.get("nonsense", "/v1/containers/").await.0, 401);

    // Read-only cannot deploy.
    let reader = s.token("reader", &[("/", "read")]);
    assert_eq!(s.deploy(&reader, &b).await.0, 403);
    // Write on a sibling container.
    let sibling = s.token("sibling", &[("/public/billing", "read,write")]);
    let (st, v) = s.deploy(&sibling, &b).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("/public/orders"));
    // Segment-wise: /public/order does not cover /public/orders.
    let prefix = s.token("prefix", &[("/public/order", "write")]);
    assert_eq!(s.deploy(&prefix, &b).await.0, 403);

    // Signer trusted only for another prefix: 422.
    let k2 = key();
    s.trust(&k2, &["/public/billing"]);
    let b2 = bundle(
        &k2,
        &Opts::new("/public/orders"),
        &p.mappings,
        &p.credentials,
    );
    let (st, v) = s.deploy(&s.admin, &b2).await;
    assert_eq!((st, v["code"].as_str()), (422, Some("signer-not-allowed")));
    // Unknown signer: 422.
    let b3 = bundle(
        &key(),
        &Opts::new("/public/orders"),
        &p.mappings,
        &p.credentials,
    );
    let (st, v) = s.deploy(&s.admin, &b3).await;
    assert_eq!((st, v["code"].as_str()), (422, Some("unknown-signer")));

    // Inherited grant deploys.
    let writer = s.token("writer", &[("/public", "write")]);
    assert_eq!(s.deploy(&writer, &b).await.0, 201);
    // ... but cannot read without `read`.
    assert_eq!(s.get(&writer, "/v1/containers/public/orders").await.0, 403);
    assert_eq!(s.get(&reader, "/v1/containers/public/orders").await.0, 200);
    assert_eq!(s.get(&sibling, "/v1/containers/public/orders").await.0, 403);
    assert_eq!(
        s.get(&sibling, "/v1/credentials/public/orders/erp").await.0,
        403
    );
    assert_eq!(
        s.get(&sibling, "/v1/mappings/public/orders/orders-to-erp")
            .await
            .0,
        403
    );
    // Reader cannot delete, patch or resolve.
    for (m, path, body) in [
        (Method::DELETE, "/v1/credentials/public/orders/erp", None),
        (
            Method::DELETE,
            "/v1/mappings/public/orders/orders-to-erp",
            None,
        ),
        (
            Method::PATCH,
            "/v1/credentials/public/orders/erp",
            Some(json!({"username": "x"})),
        ),
        (
            Method::POST,
            "/v1/mappings/public/orders/orders-to-erp/resolve",
            Some(json!({"usage": "http"})),
        ),
    ] {
        assert_eq!(s.send(m, &reader, path, body).await.0, 403, "{path}");
    }

    // Listings show only readable containers.
    let (_, d) = s.get(&sibling, "/v1/deployments").await;
    assert_eq!(d["deployments"], json!([]));
    let (_, d) = s.get(&reader, "/v1/deployments").await;
    assert_eq!(d["deployments"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.get(&sibling, "/v1/deployments?container=/public/orders")
            .await
            .0,
        403
    );
    let (_, a) = s.get(&sibling, "/v1/audit").await;
    assert!(
        a["audit"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["container"] == "/public/billing"),
        "{a}"
    );
    let (_, a) = s.get(&s.admin, "/v1/audit").await;
    let rows = a["audit"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["outcome"] == "applied"));
    assert!(
        rows.iter()
            .any(|r| r["code"] == "signer-not-allowed" && r["bundle_id"].is_string())
    );
    s.stop().await;
}

#[tokio::test]
async fn content_type_size_and_malformed_bodies_are_refused() {
    let s =
        Server::start_with(|app| app.edit_config(|c| c.limits.max_bundle_size = 64 * 1024)).await;
    let r = s
        .client
        .post(s.url("/v1/deployments"))
        .bearer_auth(&s.admin)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await.0, 415);
    let (st, v) = s.deploy(&s.admin, &vec![0u8; 100 * 1024]).await;
    assert_eq!((st, v["code"].as_str()), (413, Some("too-large")));
    // A streamed body without Content-Length is bounded too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![0u8; 10 * 1024])).collect();
    let r = s
        .client
        .post(s.url("/v1/deployments"))
        .bearer_auth(&s.admin)
        .header("content-type", "application/zip")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    let (st, v) = s.deploy(&s.admin, b"not a zip at all").await;
    assert_eq!(st, 400, "{v}");
    // Refusals without a readable manifest are audited with null bundle and signer.
    let (_, a) = s.get(&s.admin, "/v1/audit").await;
    // The streamed 413 above may be audited after this request (its connection is cut before
    // the server records it), so look for the 400 row rather than the last one.
    let rows = a["audit"].as_array().unwrap();
    let malformed = rows
        .iter()
        .find(|r| r["status"] == 400)
        .unwrap_or_else(|| panic!("no 400 row in {a}"));
    assert_eq!(malformed["outcome"], "refused");
    assert!(malformed["bundle_id"].is_null() && malformed["signer_key_id"].is_null());
    s.stop().await;
}

#[tokio::test]
async fn replay_answers_the_original_record_even_after_newer_bundles() {
    let (s, k, rec) = deployed("pw").await;
    let p = project(Some("pw"), true, b"mfd-v1");
    let first = bundle(
        &k,
        &Opts::new("/public/orders")
            .sealed(s.recipient())
            .created(ts_minus(1)),
        &p.mappings,
        &p.credentials,
    );
    let (st, r1) = s.deploy(&s.admin, &first).await;
    assert_eq!(st, 409, "older than the one applied: {r1}");

    // Apply a bundle, a newer one, then replay the first.
    let p2 = project(None, false, b"v2");
    let b1 = bundle(
        &k,
        &Opts::new("/public/orders"),
        &p2.mappings,
        &p2.credentials,
    );
    let (st, rec1) = s.deploy(&s.admin, &b1).await;
    assert_eq!(st, 201, "{rec1}");
    let b2 = bundle(
        &k,
        &Opts::new("/public/orders"),
        &p2.mappings,
        &p2.credentials,
    );
    assert_eq!(s.deploy(&s.admin, &b2).await.0, 201);
    let (st, again) = s.deploy(&s.admin, &b1).await;
    assert_eq!(st, 200);
    assert_eq!(again["replayed"], true);
    let mut expected = rec1.clone();
    expected["replayed"] = Value::Bool(true);
    assert_eq!(again, expected);
    // Nothing changed: still version 2 (the first deploy, then b1; b2 carried b1's very
    // content, so it made no version).
    let (_, m) = s
        .get(&s.admin, "/v1/mappings/public/orders/orders-to-erp")
        .await;
    assert_eq!(m["version"], 2);
    let _ = rec;
    s.stop().await;
}

#[tokio::test]
async fn stale_bundle_is_refused_with_409() {
    let s = Server::start().await;
    let k = key();
    s.trust(&k, &[]);
    let p = project(None, false, b"m");
    let older = bundle(
        &k,
        &Opts::new("/public/orders").created(ts_minus(10)),
        &p.mappings,
        &p.credentials,
    );
    let newer = bundle(
        &k,
        &Opts::new("/public/orders").created(ts_minus(5)),
        &p.mappings,
        &p.credentials,
    );
    assert_eq!(s.deploy(&s.admin, &newer).await.0, 201);
    let (st, v) = s.deploy(&s.admin, &older).await;
    assert_eq!((st, v["code"].as_str()), (409, Some("stale")), "{v}");
    // Another container is independent.
    let other = bundle(
        &k,
        &Opts::new("/public/other").created(ts_minus(20)),
        &p.mappings,
        &p.credentials,
    );
    assert_eq!(s.deploy(&s.admin, &other).await.0, 201);
    s.stop().await;
}

#[tokio::test]
async fn expired_and_future_bundles_are_refused() {
    // The receiver's clock is injected: it is eight days from now.
    let s = Server::start_with(|app| {
        app.clock = std::sync::Arc::new(|| Timestamp::now().plus(time::Duration::days(8)))
    })
    .await;
    let k = key();
    s.trust(&k, &[]);
    let p = project(None, false, b"m");
    let b = bundle(&k, &Opts::new("/a"), &p.mappings, &p.credentials);
    let (st, v) = s.deploy(&s.admin, &b).await;
    assert_eq!((st, v["code"].as_str()), (422, Some("expired")));
    let future = bundle(
        &k,
        &Opts::new("/a")
            .created(Timestamp::now().plus(time::Duration::days(8) + time::Duration::minutes(10))),
        &p.mappings,
        &p.credentials,
    );
    let (st, v) = s.deploy(&s.admin, &future).await;
    assert_eq!((st, v["code"].as_str()), (422, Some("not-yet-valid")));
    s.stop().await;
}

#[tokio::test]
async fn bundle_sealed_to_another_receiver_is_refused() {
    let s = Server::start().await;
    let k = key();
    s.trust(&k, &[]);
    let other = SealingIdentity::generate().recipient();
    let p = project(Some("pw"), true, b"m");
    let b = bundle(
        &k,
        &Opts::new("/a").sealed(other.clone()),
        &p.mappings,
        &p.credentials,
    );
    let (st, v) = s.deploy(&s.admin, &b).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("seal-recipient-mismatch"))
    );
    let d = v["detail"].as_str().unwrap();
    assert!(d.contains(&other.to_string()) && d.contains(&s.recipient().to_string()));
    assert_eq!(s.get(&s.admin, "/v1/containers/a").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn redeploy_without_secrets_keeps_them() {
    let (s, k, _) = deployed("keep-me").await;
    let (_, before) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    let p = project(Some("keep-me"), false, b"mfd-v2");
    let b = bundle(
        &k,
        &Opts::new("/public/orders"),
        &p.mappings,
        &p.credentials,
    );
    let (st, rec) = s.deploy(&s.admin, &b).await;
    assert_eq!(st, 201, "{rec}");
    // The credential's record and secrets are what is stored: it is not written again.
    assert_eq!(rec["updated"], json!(["/public/orders/orders-to-erp"]));
    assert_eq!(rec["unchanged"], json!(["/public/orders/erp"]));
    assert_eq!(rec["needs_secrets"], json!([]));
    let (_, after) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    assert_eq!(after["password"], before["password"]);
    assert_eq!(after["needs_secrets"], false);
    let (_, m) = s
        .get(&s.admin, "/v1/mappings/public/orders/orders-to-erp")
        .await;
    assert_eq!(m["version"], 2);
    let r = s
        .client
        .get(s.url("/v1/mappings/public/orders/orders-to-erp/files/orders.mfd"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(&r.bytes().await.unwrap()[..], b"mfd-v2");
    // A new value changes the fingerprint.
    let p = project(Some("new-value"), true, b"mfd-v3");
    let b = bundle(
        &k,
        &Opts::new("/public/orders").sealed(s.recipient()),
        &p.mappings,
        &p.credentials,
    );
    assert_eq!(s.deploy(&s.admin, &b).await.0, 201);
    let (_, third) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    assert_ne!(
        third["password"]["fingerprint"],
        before["password"]["fingerprint"]
    );
    s.stop().await;
}

#[tokio::test]
async fn patch_fills_secrets_of_a_credential_that_needs_them() {
    let s = Server::start().await;
    let k = key();
    s.trust(&k, &[]);
    let p = project(None, false, b"m");
    let b = bundle(
        &k,
        &Opts::new("/public/orders"),
        &p.mappings,
        &p.credentials,
    );
    let (st, rec) = s.deploy(&s.admin, &b).await;
    assert_eq!(st, 201);
    assert_eq!(rec["needs_secrets"], json!(["/public/orders/erp"]));
    let (_, m) = s
        .get(&s.admin, "/v1/mappings/public/orders/orders-to-erp")
        .await;
    assert_eq!(m["credential_parameters"][0]["has_secrets"], false);

    let path = "/v1/credentials/public/orders/erp";
    let (st, c) = s
        .send(
            Method::PATCH,
            &s.admin,
            path,
            Some(json!({"password": "filled-in", "username": "svc2", "description": null})),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["needs_secrets"], false);
    assert_eq!(c["username"], "svc2");
    assert!(c.get("description").is_none());
    assert_eq!(c["password"]["set"], true);
    assert!(!c.to_string().contains("filled-in"));
    // Model rules apply: bad field, bad type, name change.
    for body in [
        json!({"pasword": "x"}),
        json!({"allow_usage_for": ["smtp"]}),
        json!({"name": "other"}),
        json!({"password": 5}),
    ] {
        let (st, v) = s.send(Method::PATCH, &s.admin, path, Some(body)).await;
        assert_eq!(st, 422, "{v}");
    }
    // null clears.
    let (_, c) = s
        .send(
            Method::PATCH,
            &s.admin,
            path,
            Some(json!({"password": null})),
        )
        .await;
    assert_eq!(c["needs_secrets"], true);
    assert!(c.get("password").is_none());
    assert_eq!(
        s.send(
            Method::PATCH,
            &s.admin,
            "/v1/credentials/public/orders/nope",
            Some(json!({}))
        )
        .await
        .0,
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn deleting_a_referenced_credential_is_refused_with_the_mappings() {
    let (s, _k, _) = deployed("pw").await;
    let (st, v) = s
        .send(
            Method::DELETE,
            &s.admin,
            "/v1/credentials/public/orders/erp",
            None,
        )
        .await;
    assert_eq!((st, v["code"].as_str()), (409, Some("credential-in-use")));
    assert_eq!(v["mappings"], json!(["/public/orders/orders-to-erp"]));
    let (st, _) = s
        .send(
            Method::DELETE,
            &s.admin,
            "/v1/mappings/public/orders/orders-to-erp",
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(
        s.get(&s.admin, "/v1/mappings/public/orders/orders-to-erp")
            .await
            .0,
        404
    );
    let (st, _) = s
        .send(
            Method::DELETE,
            &s.admin,
            "/v1/credentials/public/orders/erp",
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(
        s.get(&s.admin, "/v1/credentials/public/orders/erp").await.0,
        404
    );
    assert_eq!(
        s.send(
            Method::DELETE,
            &s.admin,
            "/v1/credentials/public/orders/erp",
            None
        )
        .await
        .0,
        404
    );
    let (_, a) = s.get(&s.admin, "/v1/audit").await;
    let actions: Vec<_> = a["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert!(actions.contains(&"delete-credential:refused".to_owned()));
    assert!(actions.contains(&"delete-mapping:deleted".to_owned()));
    assert!(actions.contains(&"delete-credential:deleted".to_owned()));
    s.stop().await;
}

#[tokio::test]
async fn resolution_follows_precedence_and_rules() {
    let (s, k, _) = deployed("pw").await;
    // A shared password credential and an api_key credential on the server.
    let shared = credential(
        json!({"name": "erp", "type": "password", "password": "shared-pw",
        "include_in_deployment": true, "allow_usage_for": ["http", "ftp"]}),
    );
    let apikey = credential(json!({"name": "key", "type": "api_key", "key": "k",
        "include_in_deployment": true}));
    let mut o = Opts::new("/public/shared").sealed(s.recipient());
    o.kind = BundleKind::Credentials;
    let b = bundle(&k, &o, &[], &[shared, apikey]);
    assert_eq!(s.deploy(&s.admin, &b).await.0, 201);
    let user = s.token(
        "job",
        &[("/public/orders", "use"), ("/public/shared", "use")],
    );
    let url = "/v1/mappings/public/orders/orders-to-erp/resolve";
    let resolve = |body: Value| s.send(Method::POST, &user, url, Some(body));

    // Deployed.
    let (st, v) = resolve(json!({"usage": "http"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"parameters": {"erp.credentials": {"source": "deployed", "credential": "/public/orders/erp", "type": "password"}}})
    );
    // Server reference wins over deployed.
    let (st, v) = resolve(json!({"usage": "http", "parameters": {"erp.credentials": {"credential": "/public/shared/erp"}}})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["parameters"]["erp.credentials"]["source"], "server");
    assert_eq!(
        v["parameters"]["erp.credentials"]["credential"],
        "/public/shared/erp"
    );
    // Inline wins too, and never echoes the secret.
    let (st, v) = resolve(json!({"usage": "http", "parameters": {"erp.credentials": {"inline": {"type": "password", "username": "u", "password": "inline-secret"}}}})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["parameters"]["erp.credentials"],
        json!({"source": "inline", "type": "password"})
    );
    assert!(!v.to_string().contains("inline-secret"));
    // Usage not allowed by the deployed credential (http only).
    let (st, v) = resolve(json!({"usage": "ftp"})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("usage-not-allowed")),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("erp.credentials"));
    // ... but allowed by the shared one.
    let (st, _) = resolve(json!({"usage": "ftp", "parameters": {"erp.credentials": {"credential": "/public/shared/erp"}}})).await;
    assert_eq!(st, 200);
    // Type mismatch.
    let (st, v) = resolve(json!({"usage": "http", "parameters": {"erp.credentials": {"credential": "/public/shared/key"}}})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("type-mismatch")),
        "{v}"
    );
    let (st, v) = resolve(json!({"usage": "http", "parameters": {"erp.credentials": {"inline": {"type": "api_key", "key": "x"}}}})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("type-mismatch")),
        "{v}"
    );
    // A server reference needs `use` on it.
    let limited = s.token("limited", &[("/public/orders", "use")]);
    let (st, _) = s
        .send(Method::POST, &limited, url, Some(json!({"usage": "http", "parameters": {"erp.credentials": {"credential": "/public/shared/erp"}}})))
        .await;
    assert_eq!(st, 403);
    // Unknown parameter and bad bodies.
    let (st, v) = resolve(
        json!({"usage": "http", "parameters": {"nope": {"credential": "/public/shared/erp"}}}),
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (422, Some("unknown-parameter")));
    assert_eq!(resolve(json!({"parameters": {}})).await.0, 422);
    let (st, _) = s
        .client
        .post(s.url(url))
        .bearer_auth(&user)
        .body("{not json")
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(st, 400);

    // Missing secrets: clear the deployed password.
    let (st, _) = s
        .send(
            Method::PATCH,
            &s.admin,
            "/v1/credentials/public/orders/erp",
            Some(json!({"password": null})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = resolve(json!({"usage": "http"})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("missing-secrets")),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("erp.credentials"));
    assert_eq!(v["parameters"], json!(["erp.credentials"]));
    // A step parameter still works.
    let (st, _) = resolve(json!({"usage": "http", "parameters": {"erp.credentials": {"credential": "/public/shared/erp"}}})).await;
    assert_eq!(st, 200);
    s.stop().await;
}

async fn snapshot(s: &Server) -> Vec<(u16, Value)> {
    let mut out = Vec::new();
    for p in [
        "/v1/containers/",
        "/v1/containers/public",
        "/v1/containers/public/orders",
        "/v1/mappings/public/orders/orders-to-erp",
        "/v1/credentials/public/orders/erp",
        "/v1/deployments",
    ] {
        out.push(s.get(&s.admin, p).await);
    }
    let r = s
        .client
        .get(s.url("/v1/mappings/public/orders/orders-to-erp/files/orders.mfd"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    out.push((200, Value::String(String::from_utf8_lossy(&bytes).into())));
    out
}

#[tokio::test]
async fn refused_bundle_leaves_the_container_exactly_as_before() {
    let (s, k, _) = deployed("pw-before").await;
    let before = snapshot(&s).await;

    // A bigger project into the same container and a new child: new mapping files, a new
    // credential, new secrets; its last entry is altered after signing.
    let mut p = project(Some("pw-after"), true, b"mfd-after");
    p.mappings.push(mapping_input(
        p.dir.path(),
        json!({"name": "second", "files": ["big.bin"]}),
        &[("big.bin", &vec![7u8; 300_000])],
    ));
    p.credentials.push(credential(
        json!({"name": "zz-last", "type": "api_key", "key": "k",
        "include_in_deployment": true, "description": "zzzz"}),
    ));
    let good = bundle(
        &k,
        &Opts::new("/public/orders").sealed(s.recipient()),
        &p.mappings,
        &p.credentials,
    );
    let bad = tamper_last_entry(&good, |data| {
        let s = String::from_utf8(data.clone()).unwrap();
        *data = s.replace("zzzz", "yyyy").into_bytes();
    });
    let (st, v) = s.deploy(&s.admin, &bad).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("digest-mismatch")),
        "{v}"
    );
    let after = snapshot(&s).await;
    assert_eq!(before, after);
    let (_, a) = s.get(&s.admin, "/v1/audit").await;
    // Newest first.
    let last = a["audit"][0].clone();
    assert_eq!(last["code"], "digest-mismatch");
    assert_eq!(last["container"], "/public/orders");
    assert!(last["bundle_id"].is_string() && last["signer_key_id"].is_string());
    // The untampered bundle applies.
    let (st, rec) = s.deploy(&s.admin, &good).await;
    assert_eq!(st, 201, "{rec}");
    s.stop().await;
}

#[tokio::test]
async fn oauth_endpoints_on_a_password_credential_and_unknown_paths() {
    let (s, _k, _) = deployed("pw").await;
    for p in ["token", "authorize"] {
        let (st, v) = s
            .send(
                Method::POST,
                &s.admin,
                &format!("/v1/credentials/public/orders/erp/{p}"),
                None,
            )
            .await;
        assert_eq!((st, v["code"].as_str()), (422, Some("not-oauth2")), "{v}");
    }
    // No verify_url on the record: a 200 that says what is missing.
    let (st, v) = s
        .send(
            Method::POST,
            &s.admin,
            "/v1/credentials/public/orders/erp/verify",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("verify_url"), "{v}");
    assert!(!v.to_string().contains("\"pw\""));
    let (st, v) = answer(
        s.client
            .get(s.url("/v1/oauth/callback?code=a&state=b"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid-state")));
    assert_eq!(s.get(&s.admin, "/v1/nothing").await.0, 404);
    assert_eq!(s.get(&s.admin, "/v1/credentials/public/a%20b").await.0, 400);
    s.stop().await;
}
