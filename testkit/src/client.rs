//! The one HTTP client of the tests, over reqwest, whose every answer from a receiver is read
//! whole and checked against the OpenAPI document before the test sees it
//! ([`crate::openapi::check`]), and a blocking front-end over it for the end-to-end tests.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::openapi::{self, Target};

/// An answer of the receiver, read whole and validated against the document.
#[derive(Debug, Clone)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Response {
    /// An answer from its parts (an answer read off a raw socket, to validate it).
    pub fn from_parts(status: u16, headers: &[(String, String)], body: Bytes) -> Response {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            ) {
                map.append(k, v);
            }
        }
        Response {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: map,
            body,
        }
    }

    /// An HTTP/1.1 answer as bytes (head and body, whole or chunked), if it is one.
    pub fn parse(raw: &[u8]) -> Option<Response> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let body = &raw[end + 4..];
        let chunked = headers.iter().any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked"
        });
        let body = match chunked {
            true => dechunk(body)?,
            false => body.to_vec(),
        };
        Some(Response::from_parts(status, &headers, body.into()))
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body (async as reqwest's, so tests read alike; it is already read).
    pub async fn bytes(self) -> Result<Bytes, Infallible> {
        Ok(self.body)
    }

    /// The body as text (lossy UTF-8).
    pub async fn text(self) -> Result<String, Infallible> {
        Ok(String::from_utf8_lossy(&self.body).into_owned())
    }

    /// The body parsed as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }

    /// The body.
    pub fn bytes_ref(&self) -> &Bytes {
        &self.body
    }

    /// The body as JSON, or `Null` when it is not JSON.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The problem code of an error answer.
    pub fn code(&self) -> Option<String> {
        self.value()["code"].as_str().map(str::to_owned)
    }

    /// The first 400 characters of the body, for messages.
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(400)
            .collect()
    }

    /// The media type, without parameters (empty when there is none).
    pub fn media_type(&self) -> String {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default()
    }
}

/// The body of a chunked answer; `None` when it is cut short.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(eol + 2..eol + 2 + n)?);
        b = b.get(eol + 4 + n..)?;
    }
}

/// Status and JSON body (`Null` when empty, a string when not JSON); asserts problem+json with
/// its members on errors.
pub async fn answer(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = r.body;
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "{status} {v}");
        for k in ["type", "title", "status", "detail", "code"] {
            assert!(v.get(k).is_some(), "problem lacks {k}: {v}");
        }
        assert_eq!(v["status"], status);
    }
    (status, v)
}

/// (method, template or path, status) of an answer checked.
pub type Seen = (Method, Target, u16);

/// The HTTP client of the tests (cheap to clone: clones share their connections and their
/// record of answers).
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A client with reqwest's defaults.
    pub fn new() -> Client {
        crate::install_provider();
        Client::from_reqwest(reqwest::Client::new())
    }

    /// A client over a reqwest client configured by the test (TLS roots, pool size); it still
    /// checks every answer.
    pub fn from_reqwest(inner: reqwest::Client) -> Client {
        Client {
            inner,
            seen: Arc::default(),
        }
    }

    /// A request of `method` to `url` (a receiver's).
    pub fn request(&self, method: Method, url: impl AsRef<str>) -> RequestBuilder {
        RequestBuilder {
            inner: self.inner.request(method, url.as_ref()),
            seen: self.seen.clone(),
        }
    }

    /// `GET url`.
    pub fn get(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// `POST url`.
    pub fn post(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// `PUT url`.
    pub fn put(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::PUT, url)
    }

    /// `PATCH url`.
    pub fn patch(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::PATCH, url)
    }

    /// `DELETE url`.
    pub fn delete(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }

    /// `HEAD url`.
    pub fn head(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::HEAD, url)
    }

    /// Every answer this client (and its clones) checked, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A request being built; [`RequestBuilder::send`] checks the answer.
#[derive(Debug)]
pub struct RequestBuilder {
    inner: reqwest::RequestBuilder,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RequestBuilder {
    /// `Authorization: Bearer token`.
    pub fn bearer_auth(self, token: impl std::fmt::Display) -> RequestBuilder {
        self.map(|r| r.bearer_auth(token))
    }

    /// A header.
    pub fn header(self, name: &str, value: impl AsRef<str>) -> RequestBuilder {
        self.map(|r| r.header(name, value.as_ref()))
    }

    /// The body, as given.
    pub fn body(self, body: impl Into<reqwest::Body>) -> RequestBuilder {
        self.map(|r| r.body(body))
    }

    /// A JSON body.
    pub fn json(self, v: &Value) -> RequestBuilder {
        self.map(|r| r.json(v))
    }

    /// A time limit for the whole exchange.
    pub fn timeout(self, t: std::time::Duration) -> RequestBuilder {
        self.map(|r| r.timeout(t))
    }

    fn map(self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        RequestBuilder {
            inner: f(self.inner),
            seen: self.seen,
        }
    }

    /// Sends the request and reads the whole answer, then checks it against the document
    /// (panicking on a mismatch). Errors are the transport's: refused, reset, cut short.
    pub async fn send(self) -> reqwest::Result<Response> {
        let (client, req) = self.inner.build_split();
        let req = req?;
        let method = req.method().clone();
        let path = req.url().path().to_owned();
        let resp = client.execute(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        let r = Response {
            status,
            headers,
            body,
        };
        let target = openapi::check(&method, &path, &r);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((method, target, status.as_u16()));
        Ok(r)
    }
}

/// The runtime of the blocking front-end.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    #[allow(clippy::expect_used)] // No test can run without it.
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// The client of the blocking front-end, one per process.
fn blocking_client() -> &'static Client {
    static C: OnceLock<Client> = OnceLock::new();
    C.get_or_init(|| {
        let _guard = runtime().enter();
        Client::new()
    })
}

/// A request to `url` + `path` with a bearer token and a body of `content_type`, from
/// synchronous code; returns (status, body). Panics when it fails in transport.
pub fn http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_http(url, method, path, token, content_type, body)
        .unwrap_or_else(|e| panic!("{method} {url}{path}: {e}"))
}

/// Like [`http`], but a failed connection, a reset, or an answer cut short (a server killed
/// mid-request) is an error instead of a panic.
pub fn try_http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let method = Method::from_bytes(method.as_bytes()).map_err(std::io::Error::other)?;
    let mut req = blocking_client()
        .request(method, format!("{url}{path}"))
        .header("content-type", content_type)
        .body(body.to_vec());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = runtime()
        .block_on(req.send())
        .map_err(std::io::Error::other)?;
    Ok((r.status().as_u16(), r.body.to_vec()))
}
