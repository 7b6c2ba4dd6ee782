//! A mapping's credential parameter that names the type it needs (`credential_type`):
//! resolution refuses a credential given in the step, by reference or inline, of another type.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowpack_shared::bundle::BundleKind;
use flowpack_shared::keys::SigningKey;
use flowpack_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Deploys mapping `typed` (an external parameter `db.login` that needs a `password`
/// credential) to `/jobs`, and a password and an api_key credential to `/shared`.
async fn setup() -> (Server, String) {
    let s = Server::start().await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    let dir = tempfile::tempdir().unwrap();
    let m = mapping_input(
        dir.path(),
        json!({
            "name": "typed",
            "parameters": [{"name": "db.login", "type": "credential", "external": true,
                            "credential_type": "password"}],
            "files": ["m.mfd"]
        }),
        &[("m.mfd", b"<m/>")],
    );
    let b = bundle(&k, &Opts::new("/jobs"), &[m], &[]);
    let (st, v) = s.deploy(&s.admin, &b).await;
    assert_eq!(st, 201, "{v}");
    let pw = credential(
        json!({"name": "pw", "type": "password", "password": "pw-canary-1",
        "include_in_deployment": true, "allow_usage_for": ["http"]}),
    );
    let key = credential(
        json!({"name": "key", "type": "api_key", "key": "key-canary-2",
        "include_in_deployment": true, "allow_usage_for": ["http"]}),
    );
    let mut o = Opts::new("/shared").sealed(s.recipient());
    o.kind = BundleKind::Credentials;
    let (st, v) = s.deploy(&s.admin, &bundle(&k, &o, &[], &[pw, key])).await;
    assert_eq!(st, 201, "{v}");
    let user = s.token("job", &[("/jobs", "use"), ("/shared", "use")]);
    (s, user)
}

async fn resolve(s: &Server, user: &str, step: Value) -> (u16, Value) {
    s.send(
        Method::POST,
        user,
        "/v1/mappings/jobs/typed/resolve",
        Some(json!({"usage": "http", "parameters": {"db.login": step}})),
    )
    .await
}

fn assert_type_mismatch(st: u16, v: &Value) {
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("type-mismatch")),
        "{v}"
    );
    let detail = v["detail"].as_str().unwrap();
    for word in ["db.login", "api_key", "password"] {
        assert!(detail.contains(word), "{word} not in {detail}");
    }
    assert_eq!(v["parameters"], json!(["db.login"]));
    assert!(!v.to_string().contains("canary"), "{v}");
}

#[tokio::test]
async fn resolution_refuses_a_server_credential_of_another_type_than_the_parameter_needs() {
    let (s, user) = setup().await;
    let (st, v) = resolve(&s, &user, json!({"credential": "/shared/key"})).await;
    assert_type_mismatch(st, &v);
    let (st, v) = resolve(&s, &user, json!({"credential": "/shared/pw"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["parameters"]["db.login"],
        json!({"source": "server", "credential": "/shared/pw", "type": "password"})
    );
    s.stop().await;
}

#[tokio::test]
async fn resolution_refuses_an_inline_credential_of_another_type_than_the_parameter_needs() {
    let (s, user) = setup().await;
    let (st, v) = resolve(
        &s,
        &user,
        json!({"inline": {"type": "api_key", "key": "inline-canary-3"}}),
    )
    .await;
    assert_type_mismatch(st, &v);
    assert!(!v.to_string().contains("inline-canary-3"));
    let (st, v) = resolve(
        &s,
        &user,
        json!({"inline": {"type": "password", "password": "inline-canary-4", "allow_usage_for": ["http"]}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["parameters"]["db.login"],
        json!({"source": "inline", "type": "password"})
    );
    s.stop().await;
}
