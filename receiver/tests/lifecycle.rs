//! Deployment lifecycle: the plan of a dry run, `unchanged` objects, drift, history records,
//! one deployment by id, rollback, and a credential in use keeping its type.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowpack_shared::keys::SigningKey;
use flowpack_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

const CONTAINER: &str = "/public/orders";

async fn plan(s: &Server, token: &str, bundle: &[u8]) -> (u16, Value) {
    s.deploy_to(token, "/v1/deployments?dry_run=true", bundle)
        .await
}

/// Every table but the audit trail, row by row: what a dry run must leave as it was.
fn snapshot(s: &Server) -> Vec<(String, Vec<String>)> {
    // A token's last use is bookkeeping any request may write.
    Stored::of(&s.data_dir()).tables(&["audit"], &[("tokens", "last_used_at_ms")])
}

fn change<'a>(plan: &'a Value, path: &str) -> &'a Value {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == path)
        .unwrap_or_else(|| panic!("no change for {path} in {plan}"))
}

fn standard(s: &Server, k: &SigningKey, secret: &str, mfd: &[u8], description: &str) -> Vec<u8> {
    let mut p = project(Some(secret), true, mfd);
    p.credentials = vec![credential(json!({
        "name": "erp", "type": "password", "username": "svc", "password": secret,
        "allow_usage_for": ["http"], "include_in_deployment": true, "description": description
    }))];
    bundle(
        k,
        &Opts::new(CONTAINER).sealed(s.recipient()),
        &p.mappings,
        &p.credentials,
    )
}

async fn setup() -> (Server, SigningKey) {
    let s = Server::start().await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    (s, k)
}

#[tokio::test]
async fn a_first_plan_creates_everything_and_writes_nothing_but_an_audit_row() {
    let (s, k) = setup().await;
    let b = standard(&s, &k, "pw-canary-1", b"mfd-v1", "d1");
    let before = snapshot(&s);
    let (st, p) = plan(&s, &s.admin, &b).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["dry_run"], true);
    assert_eq!(p["replay"], false);
    assert_eq!(p["container"], CONTAINER);
    let m = change(&p, "/public/orders/orders-to-erp");
    assert_eq!(m["kind"], "mapping");
    assert_eq!(m["action"], "create");
    assert_eq!(m["secrets"], "none");
    let c = change(&p, "/public/orders/erp");
    assert_eq!(c["kind"], "credential");
    assert_eq!(c["action"], "create");
    assert_eq!(c["secrets"], "set");
    assert_eq!(c["drift"], false);
    assert!(!p.to_string().contains("pw-canary-1"), "{p}");
    assert_eq!(snapshot(&s), before, "a dry run changed the store");
    let (_, audit) = s.get(&s.admin, "/v1/audit").await;
    assert_eq!(audit["audit"][0]["action"], "plan");
    assert_eq!(audit["audit"][0]["outcome"], "planned");
    // The bundle is still new: deploying it applies it.
    let (st, rec) = s.deploy(&s.admin, &b).await;
    assert_eq!(st, 201, "{rec}");
}

#[tokio::test]
async fn identical_content_is_unchanged_in_the_plan_and_in_the_record() {
    let (s, k) = setup().await;
    let (st, first) = s
        .deploy(&s.admin, &standard(&s, &k, "pw-1", b"mfd-v1", "d1"))
        .await;
    assert_eq!(st, 201, "{first}");
    let (_, m1) = s
        .get(&s.admin, "/v1/mappings/public/orders/orders-to-erp")
        .await;
    // The same content in a new bundle.
    let again = standard(&s, &k, "pw-1", b"mfd-v1", "d1");
    let before = snapshot(&s);
    let (st, p) = plan(&s, &s.admin, &again).await;
    assert_eq!(st, 200, "{p}");
    for c in p["changes"].as_array().unwrap() {
        assert_eq!(c["action"], "unchanged", "{c}");
        assert_eq!(c["fields"], json!([]), "{c}");
    }
    assert_eq!(change(&p, "/public/orders/erp")["secrets"], "kept");
    assert_eq!(snapshot(&s), before);
    let (st, rec) = s.deploy(&s.admin, &again).await;
    assert_eq!(st, 201, "{rec}");
    assert_eq!(rec["created"], json!([]));
    assert_eq!(rec["updated"], json!([]));
    assert_eq!(
        rec["unchanged"],
        json!(["/public/orders/orders-to-erp", "/public/orders/erp"])
    );
    // No new mapping version was made.
    let (_, m2) = s
        .get(&s.admin, "/v1/mappings/public/orders/orders-to-erp")
        .await;
    assert_eq!(m1, m2);
}

#[tokio::test]
async fn a_changed_field_and_a_changed_file_are_named_never_their_values() {
    let (s, k) = setup().await;
    s.deploy(&s.admin, &standard(&s, &k, "pw-1", b"mfd-v1", "d1"))
        .await;
    let (st, p) = plan(
        &s,
        &s.admin,
        &standard(&s, &k, "pw-1", b"mfd-v2", "new description"),
    )
    .await;
    assert_eq!(st, 200, "{p}");
    let c = change(&p, "/public/orders/erp");
    assert_eq!(c["action"], "update");
    assert_eq!(c["fields"], json!(["description"]));
    assert_eq!(c["secrets"], "kept");
    let m = change(&p, "/public/orders/orders-to-erp");
    assert_eq!(m["action"], "update");
    assert_eq!(m["fields"], json!(["files"]));
    assert!(!p.to_string().contains("new description"), "{p}");
    // A new password is `set`.
    let (_, p) = plan(&s, &s.admin, &standard(&s, &k, "pw-2", b"mfd-v1", "d1")).await;
    let c = change(&p, "/public/orders/erp");
    assert_eq!(c["action"], "update");
    assert_eq!(c["fields"], json!([]));
    assert_eq!(c["secrets"], "set");
    assert!(!p.to_string().contains("pw-2"));
}

#[tokio::test]
async fn a_destination_change_without_the_secrets_plans_them_cleared() {
    let (s, k) = setup().await;
    let key = |url: &str, with_secret: bool| {
        let mut c = json!({"name": "api", "type": "api_key", "placement": "header",
            "parameter_name": "X-Key", "verify_url": url, "include_in_deployment": true});
        if with_secret {
            c["key"] = json!("k-canary");
        }
        credential(c)
    };
    let creds_bundle = |c| {
        let mut o = Opts::new(CONTAINER).sealed(s.recipient());
        o.kind = flowpack_shared::bundle::BundleKind::Credentials;
        bundle(&k, &o, &[], &[c])
    };
    let (st, rec) = s
        .deploy(
            &s.admin,
            &creds_bundle(key("https://api.example/ping", true)),
        )
        .await;
    assert_eq!(st, 201, "{rec}");
    let moved = creds_bundle(key("https://elsewhere.example/ping", false));
    let (st, p) = plan(&s, &s.admin, &moved).await;
    assert_eq!(st, 200, "{p}");
    let c = change(&p, "/public/orders/api");
    assert_eq!(c["action"], "update");
    assert_eq!(c["fields"], json!(["verify_url"]));
    assert_eq!(c["secrets"], "cleared");
    let (st, rec) = s.deploy(&s.admin, &moved).await;
    assert_eq!(st, 201, "{rec}");
    assert_eq!(rec["secrets_cleared"], json!(["/public/orders/api"]));
}

#[tokio::test]
async fn a_patch_since_the_last_deploy_is_drift_and_the_deploy_says_so() {
    let (s, k) = setup().await;
    s.deploy(&s.admin, &standard(&s, &k, "pw-1", b"mfd-v1", "d1"))
        .await;
    let (st, v) = s
        .send(
            Method::PATCH,
            &s.admin,
            "/v1/credentials/public/orders/erp",
            Some(json!({"description": "edited on the server"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let b = standard(&s, &k, "pw-1", b"mfd-v1", "d1");
    let (_, p) = plan(&s, &s.admin, &b).await;
    let c = change(&p, "/public/orders/erp");
    assert_eq!(c["action"], "update");
    assert_eq!(c["fields"], json!(["description"]));
    assert_eq!(c["drift"], true);
    assert_eq!(change(&p, "/public/orders/orders-to-erp")["drift"], false);
    let (st, rec) = s.deploy(&s.admin, &b).await;
    assert_eq!(st, 201, "{rec}");
    assert_eq!(rec["drift"], json!(["/public/orders/erp"]));
    // Written by a deployment again: no drift any more.
    let (_, p) = plan(&s, &s.admin, &standard(&s, &k, "pw-1", b"mfd-v1", "d2")).await;
    assert_eq!(change(&p, "/public/orders/erp")["drift"], false);
}

#[tokio::test]
async fn a_stale_or_tampered_bundle_is_refused_by_the_plan_as_by_the_deploy() {
    let (s, k) = setup().await;
    let old = {
        let p = project(Some("pw"), true, b"mfd-v0");
        bundle(
            &k,
            &Opts::new(CONTAINER)
                .sealed(s.recipient())
                .created(ts_minus(30)),
            &p.mappings,
            &p.credentials,
        )
    };
    s.deploy(&s.admin, &standard(&s, &k, "pw-1", b"mfd-v1", "d1"))
        .await;
    let fresh = standard(&s, &k, "pw-1", b"mfd-v9", "d1");
    let tampered = tamper_last_entry(&fresh, |d| d[0] ^= 1);
    let stranger = SigningKey::generate().unwrap();
    let unknown = standard(&s, &stranger, "pw-1", b"mfd-v1", "d1");
    for (what, b) in [
        ("stale", old),
        ("tampered", tampered),
        ("unknown signer", unknown),
    ] {
        let before = snapshot(&s);
        let (ps, pv) = plan(&s, &s.admin, &b).await;
        assert_eq!(snapshot(&s), before, "{what}");
        let (ds, dv) = s.deploy(&s.admin, &b).await;
        assert!(ps >= 400, "{what}: the plan answered {ps} {pv}");
        assert_eq!((ps, &pv["code"]), (ds, &dv["code"]), "{what}");
    }
    // A dry run cannot be combined with a verification, and its flag is strict.
    let b = standard(&s, &k, "pw-1", b"mfd-v1", "d1");
    for q in ["dry_run=true&verify=true", "dry_run=yes", "dryrun=true"] {
        let (st, v) = s
            .deploy_to(&s.admin, &format!("/v1/deployments?{q}"), &b)
            .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (400, Some("bad-query")),
            "{q}: {v}"
        );
    }
}

#[tokio::test]
async fn a_replayed_bundle_plans_no_change() {
    let (s, k) = setup().await;
    let b = standard(&s, &k, "pw-1", b"mfd-v1", "d1");
    let (_, rec) = s.deploy(&s.admin, &b).await;
    let (st, p) = plan(&s, &s.admin, &b).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["replay"], true);
    assert_eq!(p["deployment"], rec["id"]);
    assert_eq!(p["changes"], json!([]));
}

/// What a reader sees of the standard project: the mapping, its two files and the credential.
async fn state(s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/v1/mappings/public/orders/orders-to-erp",
        "/v1/credentials/public/orders/erp",
    ] {
        let (st, v) = s.get(&s.admin, path).await;
        assert_eq!(st, 200, "{path}: {v}");
        out.push(v);
    }
    for file in ["orders.mfd", "schemas/order.xsd"] {
        let r = Client::new()
            .get(s.url(&format!(
                "/v1/mappings/public/orders/orders-to-erp/files/{file}"
            )))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        out.push(Value::String(
            String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap(),
        ));
    }
    out
}

async fn rollback(s: &Server, token: &str, id: &Value) -> (u16, Value) {
    s.send(
        Method::POST,
        token,
        &format!("/v1/deployments/{id}/rollback"),
        None,
    )
    .await
}

#[tokio::test]
async fn a_rollback_restores_the_first_state_exactly_and_can_itself_be_rolled_back() {
    let (s, k) = setup().await;
    let (st, d1) = s
        .deploy(&s.admin, &standard(&s, &k, "pw-one", b"mfd-v1", "d1"))
        .await;
    assert_eq!(st, 201, "{d1}");
    let first = state(&s).await;
    let b2 = standard(&s, &k, "pw-two", b"mfd-v2", "d2");
    let (st, d2) = s.deploy(&s.admin, &b2).await;
    assert_eq!(st, 201, "{d2}");
    let second = state(&s).await;
    assert_ne!(first, second);

    let (st, r1) = rollback(&s, &s.admin, &d1["id"]).await;
    assert_eq!(st, 201, "{r1}");
    assert_eq!(r1["rollback_of"], d1["id"]);
    assert_eq!(r1["bundle_id"], d1["bundle_id"]);
    assert_eq!(
        r1["updated"],
        json!(["/public/orders/orders-to-erp", "/public/orders/erp"])
    );
    assert_eq!(
        state(&s).await,
        first,
        "the rollback did not restore the first state"
    );

    // Back to the second, then back to the first by rolling back the rollback.
    let (st, r2) = rollback(&s, &s.admin, &d2["id"]).await;
    assert_eq!(st, 201, "{r2}");
    assert_eq!(state(&s).await, second);
    let (st, r3) = rollback(&s, &s.admin, &r1["id"]).await;
    assert_eq!(st, 201, "{r3}");
    assert_eq!(r3["rollback_of"], r1["id"]);
    assert_eq!(state(&s).await, first);
    // A rollback to the state already there changes nothing.
    let (_, r4) = rollback(&s, &s.admin, &d1["id"]).await;
    assert_eq!(r4["updated"], json!([]));
    assert_eq!(
        r4["unchanged"],
        json!(["/public/orders/orders-to-erp", "/public/orders/erp"])
    );

    // Audited, and shown by id and in the history.
    let (_, audit) = s.get(&s.admin, "/v1/audit?limit=10").await;
    let rollbacks: Vec<&Value> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "rollback")
        .collect();
    assert_eq!(rollbacks.len(), 4, "{audit}");
    assert!(
        rollbacks
            .iter()
            .all(|a| a["outcome"] == "applied" && a["status"] == 201)
    );
    let (st, shown) = s
        .get(&s.admin, &format!("/v1/deployments/{}", r3["id"]))
        .await;
    assert_eq!(st, 200);
    assert_eq!(shown, r3);
    // The bundle of the second deploy, sent again, is still a replay: a retry never undoes a
    // rollback.
    let (st, again) = s.deploy(&s.admin, &b2).await;
    assert_eq!((st, &again["replayed"]), (200, &json!(true)), "{again}");
    assert_eq!(state(&s).await, first);
}

#[tokio::test]
async fn records_carry_who_what_and_when_and_one_is_shown_by_id() {
    let (s, k) = setup().await;
    let (_, d1) = s
        .deploy(&s.admin, &standard(&s, &k, "pw-1", b"mfd-v1", "d1"))
        .await;
    for field in [
        "at",
        "principal",
        "signer_key_id",
        "environment",
        "rollback_of",
    ] {
        assert!(d1.get(field).is_some(), "{field} missing from {d1}");
    }
    assert_eq!(d1["principal"], "admin");
    assert_eq!(d1["signer_key_id"], k.verifying_key().key_id().to_string());
    assert_eq!(d1["rollback_of"], Value::Null);
    let (st, shown) = s
        .get(&s.admin, &format!("/v1/deployments/{}", d1["id"]))
        .await;
    assert_eq!((st, &shown), (200, &d1));
    for bad in [
        "/v1/deployments/999",
        "/v1/deployments/0",
        "/v1/deployments/x1",
    ] {
        let (st, v) = s.get(&s.admin, bad).await;
        assert_eq!(st, 404, "{bad}: {v}");
    }
    // Someone who cannot read the container cannot tell the deployment exists.
    let other = s.token("other", &[("/elsewhere", "read,write")]);
    let (st, _) = s
        .get(&other, &format!("/v1/deployments/{}", d1["id"]))
        .await;
    assert_eq!(st, 404);
    let (st, _) = rollback(&s, &other, &d1["id"]).await;
    assert_eq!(st, 404);
    // A reader may see it but not roll it back.
    let reader = s.token("reader", &[(CONTAINER, "read")]);
    let (st, _) = s
        .get(&reader, &format!("/v1/deployments/{}", d1["id"]))
        .await;
    assert_eq!(st, 200);
    let (st, v) = rollback(&s, &reader, &d1["id"]).await;
    assert_eq!(st, 403, "{v}");
}

#[tokio::test]
async fn paging_walks_the_whole_history_with_no_gap_or_repeat() {
    let (s, k) = setup().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (st, d) = s
            .deploy(
                &s.admin,
                &standard(&s, &k, "pw", format!("mfd-{i}").as_bytes(), "d"),
            )
            .await;
        assert_eq!(st, 201, "{d}");
        ids.push(d["id"].as_i64().unwrap());
    }
    let (_, r) = rollback(&s, &s.admin, &json!(ids[1])).await;
    ids.push(r["id"].as_i64().unwrap());
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let q = match before {
            Some(b) => format!("/v1/deployments?limit=2&before={b}"),
            None => "/v1/deployments?limit=2".to_owned(),
        };
        let (st, page) = s.get(&s.admin, &q).await;
        assert_eq!(st, 200, "{page}");
        for d in page["deployments"].as_array().unwrap() {
            seen.push(d["id"].as_i64().unwrap());
        }
        match page["next"].as_i64() {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn a_credential_a_mapping_outside_the_bundle_uses_keeps_its_type() {
    let (s, k) = setup().await;
    s.deploy(&s.admin, &standard(&s, &k, "pw-1", b"mfd-v1", "d1"))
        .await;
    // A standalone credential bundle that makes `erp` an API key.
    let mut o = Opts::new(CONTAINER).sealed(s.recipient());
    o.kind = flowpack_shared::bundle::BundleKind::Credentials;
    let retyped = bundle(
        &k,
        &o,
        &[],
        &[credential(
            json!({"name": "erp", "type": "api_key", "placement": "header",
            "parameter_name": "X-Key", "key": "k", "include_in_deployment": true}),
        )],
    );
    let before = snapshot(&s);
    let (st, p) = plan(&s, &s.admin, &retyped).await;
    assert_eq!(
        (st, p["code"].as_str()),
        (409, Some("credential-in-use")),
        "{p}"
    );
    assert_eq!(p["mappings"], json!(["/public/orders/orders-to-erp"]));
    let (st, v) = s.deploy(&s.admin, &retyped).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("credential-in-use")),
        "{v}"
    );
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("/public/orders/orders-to-erp")
    );
    assert_eq!(snapshot(&s), before);
    let (_, c) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    assert_eq!(c["type"], "password");
}

#[tokio::test]
async fn a_plan_refused_before_its_bundle_is_read_is_audited_as_a_plan() {
    let (s, _) = setup().await;
    let r = s
        .client
        .post(s.url("/v1/deployments?dry_run=true"))
        .bearer_auth(&s.admin)
        .header("content-type", "text/plain")
        .body("not a bundle")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // A query refused as a whole still asked for a dry run.
    let (st, _) = s
        .deploy_to(&s.admin, "/v1/deployments?dry_run=true&bogus=1", b"x")
        .await;
    assert_eq!(st, 400);
    let reader = s.token("reader", &[("/", "read")]);
    let (st, _) = plan(&s, &reader, b"not a bundle").await;
    assert_eq!(st, 403);
    // And a deploy refused the same way is still a deploy.
    let (st, _) = s.deploy(&reader, b"not a bundle").await;
    assert_eq!(st, 403);

    // A refusal before the bundle is read is answered without waiting for its audit row.
    let mut audit = Value::Null;
    for _ in 0..100 {
        audit = s.get(&s.admin, "/v1/audit").await.1;
        if audit["audit"].as_array().unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let rows: Vec<(&str, &str, u64)> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "refused")
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["principal"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("deploy", "reader", 403),
            ("plan", "reader", 403),
            ("plan", "admin", 400),
            ("plan", "admin", 415)
        ],
        "{audit}"
    );
}
