//! Routing and answers: the HTTP API of SPEC §5, errors as `application/problem+json`.
//!
//! Everything that touches the database runs on a blocking thread with its own [`Db`] handle,
//! tracked so that shutdown waits for it: through `App::spawn_blocking`, or for a credential
//! read, through the queue that at most one blocking thread per core drains (`Reads`). Mapping
//! files are streamed from a blocking thread through a bounded channel. URL paths are parsed
//! into [`ContainerPath`]/[`Name`]/[`RelPath`] before anything else looks at them and are never
//! used to build a filesystem path. Client faults get a precise, safe `detail`; internal faults
//! get a generic 500 and a log line.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Read;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use flowpack_shared::model::mapping::{Mapping, ParamType};
use flowpack_shared::names::{ContainerPath, Name, RelPath};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::App;
use crate::auth::{self, Perm, Principal};
use crate::creds::{self, split_object_path};
use crate::problem::{Problem, ProblemCode};
use crate::store::{self, AuditRow, Db, MappingFile};

/// The response body type: whole (JSON answers) or streamed (mapping files). An error while
/// streaming aborts the connection, so a client never takes a short body for a whole one.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A whole response body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Size of the pieces a mapping file is streamed in.
const CHUNK: usize = 64 * 1024;
/// Pieces buffered between the reading thread and the connection.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Largest JSON request body (PATCH, resolve).
const MAX_JSON_BODY: usize = 1 << 20;

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

/// A JSON answer whose text is already made.
fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// Answers one request (never fails: errors become problem documents).
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let (resp, who) = match route(app, req, &method, &path).await {
        Ok((r, who)) => (r, who),
        Err((e, who)) => (problem_response(e), who),
    };
    tracing::info!(
        %method,
        path = %path,
        status = resp.status().as_u16(),
        principal = who.as_deref().unwrap_or("-"),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(resp)
}

type Routed = Result<(Response<Body>, Option<String>), (Problem, Option<String>)>;

/// Runs `f` on a blocking thread with a fresh connection.
pub async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App, &mut Db) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    let worker = app.clone();
    app.spawn_blocking(move || {
        let app = worker;
        let mut db = app.store.db()?;
        f(&app, &mut db)
    })
    .await
    .map_err(Problem::internal)?
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Authenticates the request's bearer token.
async fn authenticate(app: &Arc<App>, req: &Request<Incoming>) -> Result<Principal, Problem> {
    let token = zeroize::Zeroizing::new(bearer(req).ok_or_else(Problem::unauthorized)?);
    blocking(app, move |_, db| {
        auth::authenticate(db, &token)?.ok_or_else(Problem::unauthorized)
    })
    .await
}

async fn read_json(app: &App, req: Request<Incoming>) -> Result<Value, Problem> {
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
    // serde_json's message gives only a line and column, never the content.
    serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            ProblemCode::BadJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Parses `public/orders/erp` into the container `/public/orders` and the name `erp`.
fn object_path(rest: &str) -> Result<(ContainerPath, Name), Problem> {
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

fn container_path(rest: &str) -> Result<ContainerPath, Problem> {
    ContainerPath::from_url_form(rest).map_err(|e| Problem::bad_request(ProblemCode::BadPath, e.0))
}

fn percent_decode(s: &str) -> Option<String> {
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
fn no_query(req: &Request<Incoming>) -> Result<(), Problem> {
    query_params(req, &[]).map(drop)
}

/// Largest page of a listing, and the page size when none is asked for.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// Which page of a listing (deployments, audit) a request asks for.
#[derive(Debug)]
struct Page {
    container: Option<ContainerPath>,
    before: Option<i64>,
    limit: usize,
}

impl Page {
    /// Parses `?container=P&limit=N&before=ID`.
    fn parse(req: &Request<Incoming>) -> Result<Page, Problem> {
        let q = query_params(req, &["container", "limit", "before"])?;
        let container = q
            .get("container")
            .map(|c| {
                ContainerPath::parse(c).map_err(|e| Problem::bad_request(ProblemCode::BadPath, e.0))
            })
            .transpose()?;
        let limit = match q.get("limit") {
            None => DEFAULT_PAGE,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(Problem::bad_request(
                        ProblemCode::BadQuery,
                        format!("`limit` is a whole number from 1 to {MAX_PAGE}"),
                    ));
                }
            },
        };
        let before = q
            .get("before")
            .map(|b| {
                b.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
                    Problem::bad_request(
                        ProblemCode::BadQuery,
                        "`before` is an id from a previous page's `next`",
                    )
                })
            })
            .transpose()?;
        Ok(Page {
            container,
            before,
            limit,
        })
    }
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

fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ProblemCode::MethodNotAllowed,
        "this method is not allowed on this path",
    )
}

/// Answers `req`, whose method and path `handle` has already taken (for its log line).
async fn route(app: Arc<App>, req: Request<Incoming>, method: &Method, path: &str) -> Routed {
    // Unauthenticated endpoints.
    if matches!(path, "/healthz" | "/v1/keys")
        && let Err(e) = query_params(&req, &[])
    {
        return Err((e, None));
    }
    match (method, path) {
        (&Method::GET, "/healthz") => {
            return Ok((
                json_response(StatusCode::OK, &json!({"status": "ok"})),
                None,
            ));
        }
        (&Method::GET, "/v1/keys") => {
            let v = json!({"sealing_recipient": app.identity.recipient().to_string()});
            return Ok((json_response(StatusCode::OK, &v), None));
        }
        (_, "/healthz" | "/v1/keys") => return Err((method_not_allowed(), None)),
        _ => {}
    }
    if !path.starts_with("/v1/") {
        return Err((Problem::not_found("no such endpoint"), None));
    }
    if path == "/v1/oauth/callback" {
        if *method != Method::GET {
            return Err((method_not_allowed(), None));
        }
        // No bearer token: the browser comes back from the authorization server with the
        // state, which authenticates the callback.
        return match crate::oauth::callback(app, req).await {
            Ok(r) => Ok((r, None)),
            Err(e) => Err((e, None)),
        };
    }
    if let Some(read) = ReadRequest::route(&req, method, path) {
        return read_in_one_hop(&app, &req, read).await;
    }
    let who = match authenticate(&app, &req).await {
        Ok(p) => p,
        Err(e) => return Err((e, None)),
    };
    let name = Some(who.name.clone());
    match route_authenticated(app, who, req, method, path).await {
        Ok(r) => Ok((r, name)),
        Err(e) => Err((e, name)),
    }
}

/// A read that runs in one blocking task on one connection, authentication included: a GET
/// of deployments, the audit log, a container, a mapping or a credential. Its arguments are
/// parsed before the task; a parse error is answered only after authentication, so an
/// unauthenticated caller gets 401 whatever the path.
enum ReadRequest {
    Deployments(Result<Page, Problem>),
    Audit(Result<Page, Problem>),
    Container(Result<ContainerPath, Problem>),
    Mapping(Result<(ContainerPath, Name), Problem>),
    Credential(Result<(ContainerPath, Name), Problem>),
}

impl ReadRequest {
    /// The read `path` asks for, or `None` when it is not one (other methods and paths, and
    /// mapping files, which are streamed: see [`stream_mapping_file`]).
    fn route(req: &Request<Incoming>, method: &Method, path: &str) -> Option<ReadRequest> {
        if method != Method::GET {
            return None;
        }
        let rest = path.strip_prefix("/v1/")?;
        let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
        Some(match head {
            "deployments" if tail.is_empty() => ReadRequest::Deployments(Page::parse(req)),
            "audit" if tail.is_empty() => ReadRequest::Audit(Page::parse(req)),
            "containers" => ReadRequest::Container(
                no_query(req).and_then(|()| container_path(tail.trim_end_matches('/'))),
            ),
            "mappings" if !tail.contains("/files/") => {
                ReadRequest::Mapping(no_query(req).and_then(|()| object_path(tail)))
            }
            "credentials" => {
                ReadRequest::Credential(no_query(req).and_then(|()| object_path(tail)))
            }
            _ => return None,
        })
    }

    fn answer(self, db: &Db, who: &Principal) -> Result<Response<Body>, Problem> {
        match self {
            ReadRequest::Deployments(page) => list_deployments(db, who, &page?),
            ReadRequest::Audit(page) => list_audit(db, who, &page?),
            ReadRequest::Container(c) => show_container(db, who, &c?),
            ReadRequest::Mapping(p) => {
                let (c, n) = p?;
                show_mapping(db, who, &c, &n)
            }
            ReadRequest::Credential(p) => {
                let (c, n) = p?;
                show_credential(db, who, &c, &n)
            }
        }
    }
}

/// Authenticates and answers `read` in one blocking task on one connection. The token and its
/// grants are read from the database each time, so `token create` by another process takes
/// effect at once. A credential read goes through [`READS`]; the others, whose answers grow
/// with what the receiver holds, get a blocking thread each.
async fn read_in_one_hop(app: &Arc<App>, req: &Request<Incoming>, read: ReadRequest) -> Routed {
    let Some(token) = bearer(req).map(zeroize::Zeroizing::new) else {
        return Err((Problem::unauthorized(), None));
    };
    let queued = matches!(read, ReadRequest::Credential(_));
    let worker = app.clone();
    let work = move || {
        let db = worker.store.db().map_err(|e| (e.into(), None))?;
        let who = match auth::authenticate(&db, &token) {
            Ok(Some(who)) => who,
            Ok(None) => return Err((Problem::unauthorized(), None)),
            Err(e) => return Err((e.into(), None)),
        };
        let name = Some(who.name.clone());
        match read.answer(&db, &who) {
            Ok(r) => Ok((r, name)),
            Err(e) => Err((e, name)),
        }
    };
    if queued {
        let (answer, answered) = tokio::sync::oneshot::channel();
        READS.submit(app, move || {
            // The caller may have gone away meanwhile: nobody is left to answer.
            let _ = answer.send(work());
        });
        // The sender is dropped unanswered only if the read panicked.
        answered
            .await
            .unwrap_or_else(|_| Err((Problem::internal("a queued read stopped"), None)))
    } else {
        let done = app.spawn_blocking(work).await;
        done.unwrap_or_else(|e| Err((Problem::internal(e), None)))
    }
}

/// Credential reads waiting for a blocking thread, and the threads draining them.
///
/// A credential read is short (tens of microseconds) and the most frequent request. Given a
/// `spawn_blocking` each, every read woke an idle thread of tokio's blocking pool, and under
/// load dozens of pool threads took turns on the cores: on two cores with 64 connections, 8.4
/// futex calls and about 80 µs of CPU per GET, against about 3 and 60 µs when two threads did
/// all the reads. So reads queue here and at most one thread per core drains the queue: a
/// drainer takes the next read without going to sleep, and gives its thread back to the pool
/// once the queue is empty. Work that can hold a thread for long (deploys, listings, mapping
/// files streamed to slow clients) keeps a pool thread of its own, so it never delays a read.
///
/// One queue per process (one per core is the point); each read holds a token of its own
/// [`App`]'s work tracker, so shutdown waits for it like for any other store work.
struct Reads {
    state: Mutex<ReadsState>,
}

struct ReadsState {
    waiting: VecDeque<Box<dyn FnOnce() + Send>>,
    /// Drainers started and not stopped; at most [`drainers_max`].
    drainers: usize,
}

static READS: Reads = Reads {
    state: Mutex::new(ReadsState {
        waiting: VecDeque::new(),
        drainers: 0,
    }),
};

/// One drainer per core.
fn drainers_max() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

impl Reads {
    fn lock(&self) -> MutexGuard<'_, ReadsState> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `read` for a blocking thread, starting a drainer when fewer than
    /// [`drainers_max`] run.
    fn submit(&'static self, app: &App, read: impl FnOnce() + Send + 'static) {
        let tracked = app.work_token();
        let start = {
            let mut state = self.lock();
            state.waiting.push_back(Box::new(move || {
                read();
                drop(tracked);
            }));
            let start = state.drainers < drainers_max();
            if start {
                state.drainers += 1;
            }
            start
        };
        if start {
            let drainer = Drainer {
                reads: self,
                stopped: false,
            };
            tokio::task::spawn_blocking(move || drainer.run());
        }
    }
}

/// A started drainer, counted in [`ReadsState::drainers`] until it stops.
struct Drainer {
    reads: &'static Reads,
    stopped: bool,
}

impl Drainer {
    /// Runs the waiting reads until none is left. Stopping is decided under the lock that
    /// [`Reads::submit`] queues under, so a read queued meanwhile is either taken here or
    /// starts a drainer of its own.
    fn run(mut self) {
        loop {
            let read = {
                let mut state = self.reads.lock();
                match state.waiting.pop_front() {
                    Some(read) => read,
                    None => {
                        state.drainers -= 1;
                        self.stopped = true;
                        return;
                    }
                }
            };
            // A read that panics drops its answer's sender (its caller answers 500) and its
            // tracker token; the drainer goes on with the next.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(read));
        }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        // Dropped without stopping: the runtime shut down before running it. Reads still
        // waiting are taken by the next drainer started.
        if !self.stopped {
            self.reads.lock().drainers -= 1;
        }
    }
}

async fn route_authenticated(
    app: Arc<App>,
    who: Principal,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
) -> Result<Response<Body>, Problem> {
    let rest = path.strip_prefix("/v1/").unwrap_or_default();
    let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
    // A deploy reads its own parameters; no other endpoint here takes any.
    if !(head == "deployments" && tail.is_empty() && method == Method::POST) {
        no_query(&req)?;
    }
    match (head, method) {
        ("deployments", &Method::POST) if tail.is_empty() => {
            crate::deploy::handle(app, who, req).await
        }
        ("deployments", _) if tail.is_empty() => Err(method_not_allowed()),
        ("mappings", &Method::GET) if tail.contains("/files/") => {
            stream_mapping_file(&app, who, tail.to_owned()).await
        }
        ("mappings", &Method::POST) => {
            let Some(m) = tail.strip_suffix("/resolve") else {
                return Err(method_not_allowed());
            };
            let (c, n) = object_path(m)?;
            if !who.can(Perm::Use, &c) {
                return Err(Problem::lacks(Perm::Use.as_str(), &c));
            }
            let body = read_json(&app, req).await?;
            blocking(&app, move |_, db| resolve(db, &who, &c, &n, &body)).await
        }
        ("mappings", &Method::DELETE) => {
            let (c, n) = object_path(tail)?;
            blocking(&app, move |_, db| delete_mapping(db, &who, &c, &n)).await
        }
        ("credentials", &Method::POST) => {
            if let Some(p) = tail.strip_suffix("/token") {
                let (c, n) = object_path(p)?;
                crate::oauth::token(app, who, c, n).await
            } else if let Some(p) = tail.strip_suffix("/authorize") {
                let (c, n) = object_path(p)?;
                crate::oauth::authorize(app, who, c, n).await
            } else if let Some(p) = tail.strip_suffix("/verify") {
                let (c, n) = object_path(p)?;
                crate::verify::handle(app, who, c, n).await
            } else {
                Err(method_not_allowed())
            }
        }
        ("credentials", &Method::PATCH) => {
            let (c, n) = object_path(tail)?;
            if !who.can(Perm::Write, &c) {
                return Err(Problem::lacks(Perm::Write.as_str(), &c));
            }
            let body = read_json(&app, req).await?;
            blocking(&app, move |app, db| {
                patch_credential(app, db, &who, &c, &n, &body)
            })
            .await
        }
        ("credentials", &Method::DELETE) => {
            let (c, n) = object_path(tail)?;
            blocking(&app, move |_, db| delete_credential(db, &who, &c, &n)).await
        }
        ("containers" | "mappings" | "credentials" | "audit", _) => Err(method_not_allowed()),
        _ => Err(Problem::not_found("no such endpoint")),
    }
}

fn require(who: &Principal, perm: Perm, c: &ContainerPath) -> Result<(), Problem> {
    if who.can(perm, c) {
        Ok(())
    } else {
        Err(Problem::lacks(perm.as_str(), c))
    }
}

fn existing_container(db: &Db, c: &ContainerPath) -> Result<i64, Problem> {
    db.container_id(c)?
        .ok_or_else(|| Problem::not_found(format!("container {c} does not exist")))
}

/// What a listing filtered to `page.container` may show: nothing is read unless the caller
/// may read that container; unfiltered, the store keeps to the containers the caller can read.
fn visible_for(who: &Principal, page: &Page) -> Result<store::Visible, Problem> {
    match &page.container {
        Some(c) => {
            require(who, Perm::Read, c)?;
            Ok(store::Visible::All)
        }
        None => Ok(who.visible()),
    }
}

/// The page's rows and the `next` cursor: one row more than the page is read, so `next` is
/// `null` exactly when nothing older is left.
fn paged<T>(mut rows: Vec<T>, page: &Page, id: impl Fn(&T) -> i64) -> (Vec<T>, Value) {
    let more = rows.len() > page.limit;
    rows.truncate(page.limit);
    let next = match rows.last() {
        Some(last) if more => Value::from(id(last)),
        _ => Value::Null,
    };
    (rows, next)
}

fn list_deployments(db: &Db, who: &Principal, page: &Page) -> Result<Response<Body>, Problem> {
    let visible = visible_for(who, page)?;
    let container = page.container.as_ref().map(ContainerPath::as_str);
    let rows = db.deployments_page(&visible, container, page.before, page.limit + 1)?;
    let (rows, next) = paged(rows, page, |(id, _)| *id);
    let records = rows
        .iter()
        .map(|(_, record)| serde_json::from_str::<Value>(record))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Problem::internal)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"deployments": records, "next": next}),
    ))
}

/// The audit trail, newest first. A refusal whose manifest could not be read names no
/// container: only callers who can read everything see it.
fn list_audit(db: &Db, who: &Principal, page: &Page) -> Result<Response<Body>, Problem> {
    let visible = visible_for(who, page)?;
    let container = page.container.as_ref().map(ContainerPath::as_str);
    let rows = db.audit_page(&visible, container, page.before, page.limit + 1)?;
    let (rows, next): (Vec<AuditRow>, Value) = paged(rows, page, |a| a.id);
    Ok(json_response(
        StatusCode::OK,
        &json!({"audit": rows, "next": next}),
    ))
}

fn show_container(db: &Db, who: &Principal, c: &ContainerPath) -> Result<Response<Body>, Problem> {
    require(who, Perm::Read, c)?;
    let id = existing_container(db, c)?;
    let (containers, mappings, credentials) = db.children(id)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"path": c.as_str(), "containers": containers, "mappings": mappings, "credentials": credentials}),
    ))
}

/// A live mapping and its parsed definition.
fn load_mapping(
    db: &Db,
    c: &ContainerPath,
    n: &Name,
) -> Result<(i64, store::MappingRow, Mapping), Problem> {
    let missing = || Problem::not_found(format!("mapping {} does not exist", c.object_path(n)));
    let cid = db.container_id(c)?.ok_or_else(missing)?;
    let row = db.mapping(cid, n.as_str())?.ok_or_else(missing)?;
    let m =
        Mapping::parse(&c.object_path(n), row.definition.as_bytes()).map_err(Problem::internal)?;
    Ok((cid, row, m))
}

fn show_mapping(
    db: &Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
) -> Result<Response<Body>, Problem> {
    require(who, Perm::Read, c)?;
    let (cid, row, m) = load_mapping(db, c, n)?;
    let mut params = Vec::new();
    for p in m
        .parameters
        .iter()
        .filter(|p| p.kind == ParamType::Credential)
    {
        match &p.credential {
            Some(cred) => {
                let stored = db.credential(cid, cred.as_str())?;
                let has_secrets = match &stored {
                    Some(r) => !creds::needs_secrets(db, r.id)?,
                    None => false,
                };
                params.push(json!({
                    "name": p.name, "credential": c.object_path(cred),
                    "stored": stored.is_some(), "has_secrets": has_secrets,
                }));
            }
            None => params.push(json!({
                "name": p.name, "credential": null, "external": true,
                "stored": false, "has_secrets": false,
            })),
        }
    }
    let mut v = serde_json::to_value(&m).map_err(Problem::internal)?;
    if let Value::Object(o) = &mut v {
        o.insert("path".into(), Value::String(c.object_path(n)));
        o.entry("description").or_insert(Value::Null);
        o.insert("version".into(), Value::from(row.version));
        o.insert("credential_parameters".into(), Value::Array(params));
    }
    Ok(json_response(StatusCode::OK, &v))
}

/// What `GET /v1/mappings/{path}/files/{file}` names.
enum FileAnswer<'db> {
    /// A mapping file, to stream.
    File(MappingFile<'db>),
    /// A whole answer: the path named a mapping in a container called `files`.
    Whole(Response<Body>),
}

/// `GET /v1/mappings/{path}/files/{file}`: the file is read from the store in pieces of
/// [`CHUNK`] bytes on a blocking thread and sent through a bounded channel, so neither a large
/// file nor a slow client makes the receiver hold the file in memory.
async fn stream_mapping_file(
    app: &Arc<App>,
    who: Principal,
    tail: String,
) -> Result<Response<Body>, Problem> {
    let (answer, answered) = tokio::sync::oneshot::channel::<Result<Response<Body>, Problem>>();
    let worker = app.clone();
    app.spawn_blocking(move || {
        let app = worker;
        let db = match app.store.db() {
            Ok(db) => db,
            Err(e) => {
                let _ = answer.send(Err(e.into()));
                return;
            }
        };
        let mut file = match mapping_file(&db, &who, &tail) {
            Ok(FileAnswer::File(f)) => f,
            Ok(FileAnswer::Whole(r)) => {
                let _ = answer.send(Ok(r));
                return;
            }
            Err(e) => {
                let _ = answer.send(Err(e));
                return;
            }
        };
        let (pieces, body) = ChannelBody::new(file.len());
        let mut r = Response::new(body.boxed());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(file.len()));
        if answer.send(Ok(r)).is_ok() {
            pump(&mut file, &pieces);
        }
    });
    // The sender is dropped unanswered only if the thread panicked.
    answered
        .await
        .map_err(|_| Problem::internal("the mapping file reader stopped"))?
}

/// Sends `file` down `pieces`; stops at the end, at a read error (sent on, so the connection is
/// aborted) or when the client has gone away (the body, and with it the receiver, dropped).
fn pump(file: &mut MappingFile<'_>, pieces: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    loop {
        let mut buf = vec![0u8; CHUNK];
        let piece = match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                Ok(Bytes::from(buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "reading a mapping file from the store failed");
                Err(e)
            }
        };
        let failed = piece.is_err();
        if pieces.blocking_send(piece).is_err() || failed {
            return;
        }
    }
}

/// A response body fed by a blocking thread through a bounded channel.
#[derive(Debug)]
struct ChannelBody {
    pieces: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    remaining: u64,
}

impl ChannelBody {
    /// A body of exactly `len` bytes and the sender that feeds it.
    fn new(
        len: u64,
    ) -> (
        tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
        ChannelBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        (
            tx,
            ChannelBody {
                pieces: rx,
                remaining: len,
            },
        )
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let next = std::task::ready!(self.pieces.poll_recv(cx));
        if let Some(Ok(piece)) = &next {
            self.remaining = self.remaining.saturating_sub(piece.len() as u64);
        }
        Poll::Ready(next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Finds what a `…/files/…` path names. The path is split at the first `/files/` whose left
/// side names a live mapping, so containers may themselves be named `files`.
fn mapping_file<'db>(db: &'db Db, who: &Principal, tail: &str) -> Result<FileAnswer<'db>, Problem> {
    let mut first_error = None;
    for (i, _) in tail.match_indices("/files/") {
        let (left, file) = (&tail[..i], &tail[i + "/files/".len()..]);
        let Ok((c, n)) = object_path(left) else {
            continue;
        };
        if !who.can(Perm::Read, &c) {
            first_error.get_or_insert(Problem::lacks(Perm::Read.as_str(), &c));
            continue;
        }
        let (_, row, m) = match load_mapping(db, &c, &n) {
            Ok(x) => x,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let decoded = file
            .split('/')
            .map(|seg| percent_decode(seg).filter(|s| !s.contains('/')))
            .collect::<Option<Vec<_>>>()
            .map(|segs| segs.join("/"))
            .ok_or_else(|| {
                Problem::bad_request(ProblemCode::BadPath, "invalid percent-encoding")
            })?;
        let rel = RelPath::parse(&decoded)
            .map_err(|e| Problem::bad_request(ProblemCode::BadPath, e.0))?;
        if !m.files.contains(&rel) {
            return Err(Problem::not_found(format!(
                "mapping {} has no file {rel}",
                c.object_path(&n)
            )));
        }
        let file = db
            .mapping_file(row.version_id, rel.as_str())?
            .ok_or_else(|| Problem::internal("a listed mapping file has no blob"))?;
        return Ok(FileAnswer::File(file));
    }
    // No split names a mapping: the whole path may be a mapping in a container named `files`.
    if let Ok((c, n)) = object_path(tail)
        && who.can(Perm::Read, &c)
        && let Ok(Some(cid)) = db.container_id(&c)
        && db.mapping(cid, n.as_str())?.is_some()
    {
        return show_mapping(db, who, &c, &n).map(FileAnswer::Whole);
    }
    Err(first_error.unwrap_or_else(|| Problem::not_found("no such mapping file")))
}

fn resolve(
    db: &Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
    body: &Value,
) -> Result<Response<Body>, Problem> {
    let (cid, _, m) = load_mapping(db, c, n)?;
    let v = creds::resolve(db, who, c, cid, &m, body)?;
    Ok(json_response(StatusCode::OK, &v))
}

fn audit_row(who: &Principal, action: &str, c: &ContainerPath, target: String) -> AuditRow {
    AuditRow {
        principal: Some(who.name.clone()),
        action: action.into(),
        container: Some(c.to_string()),
        target: Some(target),
        ..AuditRow::default()
    }
}

fn delete_mapping(
    db: &mut Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
) -> Result<Response<Body>, Problem> {
    require(who, Perm::Write, c)?;
    let tx = db.write()?;
    let missing = || Problem::not_found(format!("mapping {} does not exist", c.object_path(n)));
    let cid = tx.container_id(c)?.ok_or_else(missing)?;
    if !tx.delete_mapping(cid, n.as_str())? {
        return Err(missing());
    }
    let mut row = audit_row(who, "delete-mapping", c, c.object_path(n));
    row.outcome = "deleted".into();
    row.status = 204;
    tx.insert_audit(&row)?;
    tx.commit()?;
    Ok(empty(StatusCode::NO_CONTENT))
}

fn delete_credential(
    db: &mut Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
) -> Result<Response<Body>, Problem> {
    require(who, Perm::Write, c)?;
    let path = c.object_path(n);
    let tx = db.write()?;
    let (cid, cred) = creds::find(&tx, c, n)?;
    // A mapping references credentials of its own container (SPEC §2: of the same project).
    let mut refs = Vec::new();
    for (mname, def) in tx.mappings_in(cid)? {
        let m = Mapping::parse(&mname, def.as_bytes()).map_err(Problem::internal)?;
        if m.credential_refs().any(|(_, cred)| cred == n) {
            refs.push(Name::parse(&mname).map_or(mname.clone(), |mn| c.object_path(&mn)));
        }
    }
    if !refs.is_empty() {
        drop(tx);
        let e = Problem::conflict(
            ProblemCode::CredentialInUse,
            format!(
                "credential {path} is referenced by mapping(s) {}; delete or redeploy them first",
                refs.join(", ")
            ),
        )
        .with("mappings", json!(refs));
        let mut row = audit_row(who, "delete-credential", c, path.clone());
        row.outcome = "refused".into();
        row.status = 409;
        row.code = Some(e.code.as_str().to_owned());
        row.detail = Some(e.detail.clone());
        audit_alone(db, row);
        return Err(e);
    }
    tx.delete_credential(cred.id)?;
    let mut row = audit_row(who, "delete-credential", c, path);
    row.outcome = "deleted".into();
    row.status = 204;
    tx.insert_audit(&row)?;
    tx.commit()?;
    Ok(empty(StatusCode::NO_CONTENT))
}

fn show_credential(
    db: &Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
) -> Result<Response<Body>, Problem> {
    require(who, Perm::Read, c)?;
    Ok(json_bytes_response(StatusCode::OK, creds::show(db, c, n)?))
}

fn patch_credential(
    app: &App,
    db: &mut Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
    body: &Value,
) -> Result<Response<Body>, Problem> {
    require(who, Perm::Write, c)?;
    let path = c.object_path(n);
    let tx = db.write()?;
    let (_, row) = creds::find(&tx, c, n)?;
    creds::patch(&tx, &app.keys, &path, &row, body)?;
    let (_, row) = creds::find(&tx, c, n)?;
    let answer = creds::redacted(&tx, &path, &row)?;
    let mut a = audit_row(who, "patch-credential", c, path.clone());
    a.outcome = "updated".into();
    a.status = 200;
    tx.insert_audit(&a)?;
    tx.commit()?;
    Ok(json_bytes_response(StatusCode::OK, answer))
}

/// Writes an audit row in its own transaction, logging (not failing) when it cannot.
pub fn audit_alone(db: &mut Db, row: AuditRow) {
    let written = db.write().and_then(|tx| {
        tx.insert_audit(&row)?;
        tx.commit()
    });
    if let Err(e) = written {
        tracing::error!(error = %e, "writing an audit row failed");
    }
}
