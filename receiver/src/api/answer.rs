//! Answers: JSON documents, problem documents (`application/problem+json`) and empty ones.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::problem::Problem;

/// The response body type: whole (JSON answers) or streamed (mapping files). An error while
/// streaming aborts the connection, so a client never takes a short body for a whole one.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A whole response body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The problem+json answer for `p`.
pub fn problem_response(p: Problem) -> Response<Body> {
    let title = p.status.canonical_reason().unwrap_or("Error");
    let code = p.code.as_str();
    let mut doc = serde_json::Map::new();
    doc.insert(
        "type".into(),
        Value::String(format!("urn:flowpack:problem:{code}")),
    );
    doc.insert("title".into(), Value::String(title.into()));
    doc.insert("status".into(), Value::from(p.status.as_u16()));
    doc.insert("detail".into(), Value::String(p.detail));
    doc.insert("code".into(), Value::String(code.into()));
    doc.extend(p.extra);
    let mut r = json_response(p.status, &Value::Object(doc));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// A JSON answer; a value that cannot be serialized is a 500, never an empty 2xx.
pub fn json_response(status: StatusCode, v: &(impl serde::Serialize + ?Sized)) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(body) => json_bytes_response(status, body),
        Err(e) => problem_response(Problem::internal(format!("serializing an answer: {e}"))),
    }
}

/// A JSON answer whose text is already made.
pub(crate) fn json_bytes_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}
