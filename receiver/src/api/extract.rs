//! Extractors: what a request carries, parsed once (the bearer token, query parameters,
//! object and container paths from the URL, JSON bodies) into typed values or a `400`.
//! An unknown, repeated or badly encoded query parameter is refused on every endpoint: a
//! misspelt parameter must never be ignored.

use std::sync::Arc;

use bytes::Bytes;
use flowpack_shared::names::{ContainerPath, Name};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header;
use hyper::{Request, StatusCode};
use serde_json::Value;

use crate::App;
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{self, Principal};
use crate::service::catalog::Page;
use crate::service::creds::split_object_path;

use super::blocking;

/// Largest JSON request body (PATCH, resolve).
const MAX_JSON_BODY: usize = 1 << 20;

/// The next frame of a request body, or `408 body-timeout` when none arrives within
/// [`App::body_idle`]: a body that stalls stops holding its connection and spool file.
pub(crate) async fn next_frame(
    app: &App,
    body: &mut Incoming,
) -> Option<Result<Frame<Bytes>, Problem>> {
    match tokio::time::timeout(app.body_idle, body.frame()).await {
        Ok(frame) => frame.map(|f| {
            f.map_err(|e| {
                Problem::bad_request(
                    ProblemCode::BodyRead,
                    format!("reading the request body failed: {e}"),
                )
            })
        }),
        Err(_) => Some(Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            ProblemCode::BodyTimeout,
            format!(
                "no part of the request body arrived for {} ms",
                app.body_idle.as_millis()
            ),
        ))),
    }
}

/// The request's `Content-Length`, when it declares a valid one.
pub(crate) fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

pub(crate) fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Authenticates the request's bearer token.
pub(crate) async fn authenticate(
    app: &Arc<App>,
    req: &Request<Incoming>,
) -> Result<Principal, Problem> {
    let token = zeroize::Zeroizing::new(bearer(req).ok_or_else(Problem::unauthorized)?);
    blocking(app, move |_, db| {
        auth::authenticate(db.reads(), &token)?.ok_or_else(Problem::unauthorized)
    })
    .await
}

pub(crate) async fn read_json(app: &App, req: Request<Incoming>) -> Result<Value, Problem> {
    read_optional_json(app, req).await?.ok_or_else(|| {
        Problem::bad_request(
            ProblemCode::BadJson,
            "the body is empty; a JSON document is expected",
        )
    })
}

/// A JSON body that may be absent: `None` for an empty body (or only whitespace).
pub(crate) async fn read_optional_json(
    app: &App,
    req: Request<Incoming>,
) -> Result<Option<Value>, Problem> {
    let mut incoming = req.into_body();
    let mut body = Vec::new();
    while let Some(frame) = next_frame(app, &mut incoming).await {
        if let Ok(data) = frame?.into_data() {
            if body.len() + data.len() > MAX_JSON_BODY {
                return Err(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ProblemCode::TooLarge,
                    format!("the request body is larger than {MAX_JSON_BODY} bytes"),
                ));
            }
            body.extend_from_slice(&data);
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // serde_json's message gives only a line and column, never the content.
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        Problem::bad_request(
            ProblemCode::BadJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Parses `public/orders/erp` into the container `/public/orders` and the name `erp`.
pub(crate) fn object_path(rest: &str) -> Result<(ContainerPath, Name), Problem> {
    let bad = || {
        Problem::bad_request(
            ProblemCode::BadPath,
            format!(
                "{} is not an object path: expected CONTAINER/NAME without a leading slash, e.g. public/orders/erp",
                flowpack_shared::names::quoted(rest)
            ),
        )
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let full = ContainerPath::from_url_form(rest).map_err(|_| bad())?;
    split_object_path(&full).ok_or_else(bad)
}

pub(crate) fn container_path(rest: &str) -> Result<ContainerPath, Problem> {
    ContainerPath::from_url_form(rest).map_err(|e| Problem::bad_request(ProblemCode::BadPath, e.0))
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query's parameters, refused (`400 bad-query`) when one is not in `allowed`, appears
/// twice or is not valid percent-encoding: a misspelt parameter must never be ignored.
pub(crate) fn query_params(
    req: &Request<Incoming>,
    allowed: &[&str],
) -> Result<std::collections::BTreeMap<String, String>, Problem> {
    let mut out = std::collections::BTreeMap::new();
    let Some(q) = req.uri().query() else {
        return Ok(out);
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode(&s.replace('+', " ")).ok_or_else(|| {
                Problem::bad_request(ProblemCode::BadQuery, "invalid percent-encoding")
            })
        };
        let (k, v) = (decode(k)?, decode(v)?);
        if !allowed.contains(&k.as_str()) {
            let known = if allowed.is_empty() {
                "this endpoint takes none".to_owned()
            } else {
                format!("this endpoint takes {}", allowed.join(", "))
            };
            return Err(Problem::bad_request(
                ProblemCode::BadQuery,
                format!(
                    "unknown query parameter {}: {known}",
                    flowpack_shared::names::quoted(&k)
                ),
            ));
        }
        if out.contains_key(&k) {
            return Err(Problem::bad_request(
                ProblemCode::BadQuery,
                format!("query parameter `{k}` is given twice"),
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Refuses any query parameter (`400 bad-query`): for endpoints that take none.
pub(crate) fn no_query(req: &Request<Incoming>) -> Result<(), Problem> {
    query_params(req, &[]).map(drop)
}

/// Largest page of a listing, and the page size when none is asked for.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// Parses `?container=P&limit=N&before=ID`: which page of a listing (deployments, audit) a
/// request asks for.
pub(crate) fn page(req: &Request<Incoming>) -> Result<Page, Problem> {
    let q = query_params(req, &["container", "limit", "before"])?;
    let container = q
        .get("container")
        .map(|c| {
            ContainerPath::parse(c).map_err(|e| Problem::bad_request(ProblemCode::BadPath, e.0))
        })
        .transpose()?;
    let limit = limit_param(q.get("limit").map(String::as_str), DEFAULT_PAGE)?;
    let before = before_param(q.get("before").map(String::as_str))?;
    Ok(Page {
        container,
        before,
        limit,
    })
}

/// A listing's `?limit=N` (1 to 1000), `default` when absent.
pub(crate) fn limit_param(value: Option<&str>, default: usize) -> Result<usize, Problem> {
    match value {
        None => Ok(default),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(Problem::bad_request(
                ProblemCode::BadQuery,
                format!("`limit` is a whole number from 1 to {MAX_PAGE}"),
            )),
        },
    }
}

/// A listing's `?before=ID`: a positive id, from a previous page's `next`.
pub(crate) fn before_param(value: Option<&str>) -> Result<Option<i64>, Problem> {
    value
        .map(|b| {
            b.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
                Problem::bad_request(
                    ProblemCode::BadQuery,
                    "`before` is an id from a previous page's `next`",
                )
            })
        })
        .transpose()
}

pub(crate) fn query_param(req: &Request<Incoming>, key: &str) -> Result<Option<String>, Problem> {
    let Some(q) = req.uri().query() else {
        return Ok(None);
    };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return percent_decode(&v.replace('+', " "))
                .map(Some)
                .ok_or_else(|| {
                    Problem::bad_request(ProblemCode::BadQuery, "invalid percent-encoding")
                });
        }
    }
    Ok(None)
}
