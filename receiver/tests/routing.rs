//! The route table as clients see it: `405` names the path's methods in `Allow`, `HEAD` is
//! answered wherever `GET` is, the OpenAPI document is served without a token, and
//! `api::routes()` lists every route once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowpack_testkit::{Server, answer};
use reqwest::Method;

async fn allow(s: &Server, method: Method, token: Option<&str>, path: &str) -> (u16, String) {
    let mut r = s.client.request(method, s.url(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let allow = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), allow)
}

#[tokio::test]
async fn method_not_allowed_lists_the_paths_methods_in_allow() {
    let s = Server::start().await;
    let admin = Some(s.admin.as_str());
    let cases = [
        (Method::PUT, None, "/healthz", "GET, HEAD"),
        (Method::DELETE, None, "/v1/keys", "GET, HEAD"),
        (Method::POST, None, "/v1/openapi.json", "GET, HEAD"),
        (Method::POST, None, "/v1/oauth/callback", "GET, HEAD"),
        (Method::PUT, admin, "/v1/deployments", "GET, HEAD, POST"),
        (Method::DELETE, admin, "/v1/audit", "GET, HEAD"),
        (Method::POST, admin, "/v1/containers/public", "GET, HEAD"),
        (
            Method::PATCH,
            admin,
            "/v1/mappings/a/m",
            "GET, HEAD, DELETE",
        ),
        (
            Method::POST,
            admin,
            "/v1/credentials/a/c",
            "GET, HEAD, PUT, PATCH, DELETE",
        ),
        // `/token` after an object path is an action only for POST (for the other methods it
        // is the credential `/a/c/token`).
        (
            Method::OPTIONS,
            admin,
            "/v1/credentials/a/c/token",
            "GET, HEAD, POST, PUT, PATCH, DELETE",
        ),
    ];
    for (method, token, path, expected) in cases {
        let got = allow(&s, method.clone(), token, path).await;
        assert_eq!(got, (405, expected.to_owned()), "{method} {path}");
    }
    // Without a token, a protected path says nothing about its methods.
    assert_eq!(
        allow(&s, Method::PUT, None, "/v1/deployments").await,
        (401, String::new())
    );
    s.stop().await;
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let s = Server::start().await;
    for (token, path) in [
        (None, "/healthz"),
        (None, "/v1/keys"),
        (None, "/v1/openapi.json"),
        (Some(s.admin.as_str()), "/v1/deployments"),
        (Some(s.admin.as_str()), "/v1/audit?limit=5"),
        (Some(s.admin.as_str()), "/v1/containers/"),
        (Some(s.admin.as_str()), "/v1/credentials/nowhere/nothing"),
        (
            Some(s.admin.as_str()),
            "/v1/credentials/nowhere/nothing?x=1",
        ),
        (None, "/v1/credentials/nowhere/nothing"),
    ] {
        let send = |method: Method| {
            let mut r = s.client.request(method, s.url(path));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        let get = send(Method::GET).await.unwrap();
        let head = send(Method::HEAD).await.unwrap();
        assert_eq!(head.status(), get.status(), "{path}");
        for h in ["content-type", "content-length"] {
            assert_eq!(head.headers().get(h), get.headers().get(h), "{path}: {h}");
        }
        assert!(get.headers().get("content-length").is_some(), "{path}");
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
        assert!(!get.bytes().await.unwrap().is_empty(), "{path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served_without_a_token() {
    let s = Server::start().await;
    let r = s
        .client
        .get(s.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: serde_json::Value = r.json().await.unwrap();
    assert!(doc.is_object());
    // Like every endpoint, it takes no parameter it does not know.
    let (status, body) = answer(
        s.client
            .get(s.url("/v1/openapi.json?format=yaml"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad-query")));
    s.stop().await;
}

#[test]
fn routes_lists_every_route_once_with_head_beside_get() {
    let routes = flowpack_receiver::api::routes();
    let mut seen = std::collections::HashSet::new();
    for (method, template) in &routes {
        assert!(
            seen.insert((method.clone(), *template)),
            "{method} {template} twice"
        );
        assert!(template.starts_with('/'), "{template}");
    }
    for (method, template) in &routes {
        // The OAuth callback's GET spends its single-use state: no HEAD there.
        let head = *template != "/v1/oauth/callback";
        if method == Method::GET {
            assert_eq!(
                seen.contains(&(Method::HEAD, *template)),
                head,
                "HEAD {template}"
            );
        }
    }
    for expected in [
        (Method::GET, "/healthz"),
        (Method::GET, "/v1/openapi.json"),
        (Method::POST, "/v1/deployments"),
        (Method::GET, "/v1/containers/{path}"),
        (Method::GET, "/v1/mappings/{path}/files/{file}"),
        (Method::POST, "/v1/mappings/{path}/resolve"),
        (Method::GET, "/v1/credentials/{path}"),
        (Method::PATCH, "/v1/credentials/{path}"),
        (Method::POST, "/v1/credentials/{path}/verify"),
    ] {
        assert!(seen.contains(&expected), "{expected:?}");
    }
}

#[tokio::test]
async fn head_of_the_oauth_callback_is_405_and_spends_no_state() {
    let s = Server::start().await;
    let (st, allow) = allow(&s, Method::HEAD, None, "/v1/oauth/callback?state=x&code=y").await;
    assert_eq!((st, allow.as_str()), (405, "GET"));
    s.stop().await;
}
