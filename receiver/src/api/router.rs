//! The route table: [`ROUTES`] lists every route (method, OpenAPI path template, handler) once,
//! and [`route`] answers a request from it.
//!
//! Paths are looked up in a [`matchit`] router. An object path (`{path}`, e.g.
//! `public/orders/erp`) has any number of segments and may be followed by an action
//! (`/token`, `/resolve`, `/files/{file}`), which `matchit` cannot express in one pattern: each
//! family of routes sharing a prefix (`/v1/credentials/`) is one catch-all pattern, and the
//! family's routes are then tried in table order against the rest of the path. A route whose
//! template ends in an action matches when the rest ends in it; a bare `{path}` matches any
//! rest. So `GET /v1/credentials/a/token` reads the credential `/a/token`, while
//! `POST /v1/credentials/a/token` asks for a token of `/a`.
//!
//! `HEAD` is answered wherever `GET` is (hyper sends the same head and no body). A path that
//! exists with another method is `405` with an `Allow` header listing the path's methods.
//!
//! The order of checks is part of the contract: on the token-protected routes, the token is
//! checked first (an unauthenticated caller learns nothing, not even whether a path exists),
//! then the query (refused when it has any parameter the route does not take), then the
//! method and the path's arguments.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::App;
use crate::metrics::RouteLabel;
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{self, Perm, Principal};
use crate::service::catalog::{self, Page};
use crate::service::{creds, oauth, verify};
use crate::store::Reads;

use super::answer::{empty, full, json_bytes_response, json_response, problem_response};
use super::extract::{
    authenticate, bearer, container_path, no_query, object_path, page, query_param, query_params,
    read_json, read_optional_json,
};
use super::reads::READS;
use super::{Body, blocking, files};

/// The OpenAPI document of this API, served at `GET /v1/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// A route's method. `HEAD` is not listed: it is answered wherever `GET` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    /// In the order an `Allow` header lists them.
    const ALL: [Verb; 5] = [Verb::Get, Verb::Post, Verb::Put, Verb::Patch, Verb::Delete];

    fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Put => Method::PUT,
            Verb::Patch => Method::PATCH,
            Verb::Delete => Method::DELETE,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
        }
    }

    /// The verb a request's method is answered as (`HEAD` as `GET`), or `None` for a method
    /// no route has.
    fn of(method: &Method) -> Option<Verb> {
        Some(match *method {
            Method::GET | Method::HEAD => Verb::Get,
            Method::POST => Verb::Post,
            Method::PUT => Verb::Put,
            Method::PATCH => Verb::Patch,
            Method::DELETE => Verb::Delete,
            _ => return None,
        })
    }
}

/// What answers a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handler {
    Health,
    Ready,
    Metrics,
    Keys,
    OpenApi,
    OAuthCallback,
    Deploy,
    ListDeployments,
    ShowDeployment,
    Rollback,
    ListAudit,
    ShowContainer,
    MappingFile,
    ShowMapping,
    Resolve,
    DeleteMapping,
    ShowCredential,
    CreateCredential,
    PatchCredential,
    DeleteCredential,
    Token,
    Authorize,
    Verify,
    /// The admin web page (`/ui/…`): not part of the API, answered by `crate::ui`, which
    /// checks its own session.
    Ui,
}

impl Handler {
    /// Whether the route is open to callers without a token.
    fn open(self) -> bool {
        matches!(
            self,
            Handler::Health
                | Handler::Ready
                | Handler::Metrics
                | Handler::Keys
                | Handler::OpenApi
                | Handler::OAuthCallback
                | Handler::Ui
        )
    }

    /// Whether the handler reads the query itself; every other route refuses any parameter.
    fn reads_query(self) -> bool {
        matches!(
            self,
            Handler::OAuthCallback
                | Handler::Deploy
                | Handler::ListDeployments
                | Handler::ListAudit
                | Handler::Ui
        )
    }
}

/// One route: a method, an OpenAPI path template and what answers it.
struct Route {
    verb: Verb,
    template: &'static str,
    handler: Handler,
}

const fn r(verb: Verb, template: &'static str, handler: Handler) -> Route {
    Route {
        verb,
        template,
        handler,
    }
}

/// Every route of the API. Within a family (same prefix before `{path}`), routes are tried in
/// this order: a `GET` of `…/files/{file}` comes before the bare `GET` of `{path}`, so a path
/// with `/files/` in it names a mapping file (which the handler resolves further, see
/// `files::mapping_file`).
const ROUTES: &[Route] = &[
    r(Verb::Get, "/healthz", Handler::Health),
    r(Verb::Get, "/readyz", Handler::Ready),
    r(Verb::Get, "/metrics", Handler::Metrics),
    r(Verb::Get, "/v1/keys", Handler::Keys),
    r(Verb::Get, "/v1/openapi.json", Handler::OpenApi),
    r(Verb::Get, "/v1/oauth/callback", Handler::OAuthCallback),
    r(Verb::Post, "/v1/deployments", Handler::Deploy),
    r(Verb::Get, "/v1/deployments", Handler::ListDeployments),
    r(
        Verb::Post,
        "/v1/deployments/{id}/rollback",
        Handler::Rollback,
    ),
    r(Verb::Get, "/v1/deployments/{id}", Handler::ShowDeployment),
    r(Verb::Get, "/v1/audit", Handler::ListAudit),
    r(Verb::Get, "/v1/containers/{path}", Handler::ShowContainer),
    r(
        Verb::Get,
        "/v1/mappings/{path}/files/{file}",
        Handler::MappingFile,
    ),
    r(Verb::Get, "/v1/mappings/{path}", Handler::ShowMapping),
    r(Verb::Post, "/v1/mappings/{path}/resolve", Handler::Resolve),
    r(Verb::Delete, "/v1/mappings/{path}", Handler::DeleteMapping),
    r(Verb::Get, "/v1/credentials/{path}", Handler::ShowCredential),
    r(
        Verb::Put,
        "/v1/credentials/{path}",
        Handler::CreateCredential,
    ),
    r(
        Verb::Patch,
        "/v1/credentials/{path}",
        Handler::PatchCredential,
    ),
    r(
        Verb::Delete,
        "/v1/credentials/{path}",
        Handler::DeleteCredential,
    ),
    r(Verb::Post, "/v1/credentials/{path}/token", Handler::Token),
    r(
        Verb::Post,
        "/v1/credentials/{path}/authorize",
        Handler::Authorize,
    ),
    r(Verb::Post, "/v1/credentials/{path}/verify", Handler::Verify),
    // Not API routes: `routes()` leaves them out (they are not in openapi.json).
    r(Verb::Get, "/ui/{path}", Handler::Ui),
    r(Verb::Post, "/ui/{path}", Handler::Ui),
];

/// Every route of the API as (method, OpenAPI path template), `HEAD` included wherever `GET`
/// is, except the OAuth callback, whose `GET` spends its single-use state. The admin page's
/// routes (`/ui/…`) are not the API's and are left out.
pub fn routes() -> Vec<(Method, &'static str)> {
    let mut out = Vec::new();
    for route in ROUTES.iter().filter(|r| r.handler != Handler::Ui) {
        out.push((route.verb.method(), route.template));
        if route.verb == Verb::Get && head_allowed(route.handler) {
            out.push((Method::HEAD, route.template));
        }
    }
    out
}

/// Whether `HEAD` is answered like `GET`: everywhere but the OAuth callback, whose `GET`
/// spends the single-use `state` (a `HEAD` must change nothing).
fn head_allowed(handler: Handler) -> bool {
    !matches!(handler, Handler::OAuthCallback)
}

impl Route {
    /// The family prefix (up to its first placeholder: `{path}`, an object path of any depth,
    /// or `{id}`) and what follows the placeholder; a template without one is its own family,
    /// with nothing following.
    fn split(&self) -> (&'static str, Option<&'static str>) {
        let t = self.template;
        match t
            .find('{')
            .and_then(|i| Some((i, i + t[i..].find('}')? + 1)))
        {
            Some((start, end)) => (&t[..start], Some(&t[end..])),
            None => (t, None),
        }
    }

    /// Whether this route takes `rest` (what follows the family prefix), and if so the part
    /// of it its handler reads: the object path, or for a `…/files/{file}` route, all of it.
    fn takes<'p>(&self, rest: &'p str) -> Option<&'p str> {
        match self.split().1 {
            None | Some("") => Some(rest),
            Some(action) => match action.split_once('{') {
                // `/files/{file}`: the handler splits at a `/files/` itself.
                Some((literal, _)) => rest.contains(literal).then_some(rest),
                None => rest.strip_suffix(action),
            },
        }
    }
}

/// The routes sharing a prefix.
struct Family {
    /// Indexes into [`ROUTES`], in table order.
    routes: Vec<usize>,
    /// Open to callers without a token.
    open: bool,
    /// An open family whose handler reads the query itself (the OAuth callback, which
    /// answers `405` before looking at it); the other open ones refuse any parameter first.
    own_query: bool,
}

struct Table {
    router: matchit::Router<usize>,
    families: Vec<Family>,
}

/// The catch-all parameter of a family's pattern.
const REST: &str = "rest";

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut prefixes: Vec<&'static str> = Vec::new();
        let mut families: Vec<Family> = Vec::new();
        for (i, route) in ROUTES.iter().enumerate() {
            let (prefix, _) = route.split();
            match prefixes.iter().position(|p| *p == prefix) {
                Some(f) => families[f].routes.push(i),
                None => {
                    prefixes.push(prefix);
                    families.push(Family {
                        routes: vec![i],
                        open: route.handler.open(),
                        own_query: route.handler.reads_query(),
                    });
                }
            }
        }
        let mut router = matchit::Router::new();
        // A family's bare or trailing-slash pattern that another family already has (a
        // listing `/v1/deployments` beside its items `/v1/deployments/{id}`) stays the
        // first one's.
        let mut taken: Vec<String> = Vec::new();
        for (f, prefix) in prefixes.iter().enumerate() {
            let patterns = if let Some(bare) = prefix.strip_suffix('/') {
                // `/v1/containers`, `/v1/containers/` and `/v1/containers/{*rest}`.
                vec![
                    bare.to_owned(),
                    (*prefix).to_owned(),
                    format!("{prefix}{{*{REST}}}"),
                ]
            } else if families[f].open {
                vec![(*prefix).to_owned()]
            } else {
                // Token-protected paths take a trailing slash, as they always have.
                vec![(*prefix).to_owned(), format!("{prefix}/")]
            };
            for p in patterns {
                if taken.contains(&p) {
                    continue;
                }
                taken.push(p.clone());
                // The table is a constant: a pattern that does not insert is a bug that every
                // test of the API would show at once.
                #[allow(clippy::expect_used)]
                router
                    .insert(p, f)
                    .expect("the route table's patterns do not conflict");
            }
        }
        Table { router, families }
    })
}

/// An answer and the principal it was given to (for the log line).
pub(super) type Routed = Result<(Response<Body>, Option<String>), (Problem, Option<String>)>;

/// What a request's path and method name in the table.
enum Found<'p> {
    /// A route, and the part of the path its handler reads.
    Route(Handler, &'p str),
    /// The path exists, not with this method: the methods it has.
    OtherMethods(Vec<Verb>),
    /// No such path.
    Nothing,
}

/// Looks `path` up: what it names with `method`, the family it belongs to, and the index in
/// [`ROUTES`] of the route it names.
fn find<'p>(method: &Method, path: &'p str) -> (Found<'p>, Option<&'static Family>, Option<usize>) {
    let table = table();
    let Ok(m) = table.router.at(path) else {
        return (Found::Nothing, None, None);
    };
    let family = &table.families[*m.value];
    let rest = m.params.get(REST).unwrap_or("");
    let verb = Verb::of(method);
    let mut allowed = Vec::new();
    for &i in &family.routes {
        let route = &ROUTES[i];
        let Some(arg) = route.takes(rest) else {
            continue;
        };
        if Some(route.verb) == verb {
            return (Found::Route(route.handler, arg), Some(family), Some(i));
        }
        if !allowed.contains(&route.verb) {
            allowed.push(route.verb);
        }
    }
    (Found::OtherMethods(allowed), Some(family), None)
}

/// Every route as the metrics label it, in table order (a route's index in it is what the
/// router reports for a request's metrics).
pub fn route_labels() -> Vec<RouteLabel> {
    ROUTES
        .iter()
        .map(|r| RouteLabel {
            method: r.verb.as_str(),
            template: r.template,
        })
        .collect()
}

/// The template of route `index` (as [`route`] reports it), or `unmatched`.
pub(super) fn template(index: Option<usize>) -> &'static str {
    index
        .and_then(|i| ROUTES.get(i))
        .map_or(crate::metrics::UNMATCHED, |r| r.template)
}

/// `405` with an `Allow` header listing `verbs` (and `HEAD` with `GET`).
fn method_not_allowed(verbs: &[Verb]) -> Response<Body> {
    let mut allow = Vec::new();
    for v in Verb::ALL.iter().filter(|v| verbs.contains(v)) {
        allow.push(v.as_str());
        if *v == Verb::Get {
            allow.push("HEAD");
        }
    }
    let mut resp = problem_response(Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ProblemCode::MethodNotAllowed,
        "this method is not allowed on this path",
    ));
    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// `200` with a JSON document.
fn ok(v: serde_json::Value) -> Response<Body> {
    json_response(StatusCode::OK, &v)
}

/// `200` with a JSON document already serialized.
fn ok_bytes(v: Vec<u8>) -> Response<Body> {
    json_bytes_response(StatusCode::OK, v)
}

/// `204`.
fn no_content((): ()) -> Response<Body> {
    empty(StatusCode::NO_CONTENT)
}

fn no_such_endpoint() -> Problem {
    Problem::not_found("no such endpoint")
}

/// A deployment id from a path: digits only, as the listing shows them.
pub(crate) fn deployment_id(arg: &str) -> Result<crate::store::DeploymentId, Problem> {
    let arg = arg.trim_end_matches('/');
    match arg.parse::<i64>() {
        Ok(n) if n > 0 && arg.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(crate::store::DeploymentId(n))
        }
        _ => Err(Problem::not_found(format!(
            "no deployment {}: a deployment id is a positive number",
            flowpack_shared::names::quoted(arg)
        ))),
    }
}

/// Answers `req`, whose method and path `handle` has already taken (for its log line).
/// `matched` is set to the index of the route the request named, if any (for its metrics).
pub(super) async fn route(
    app: Arc<App>,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
    matched: &mut Option<usize>,
) -> Routed {
    let (found, family, index) = find(method, path);
    *matched = index;
    if let Some(family) = family
        && family.open
    {
        // Boxed, as below: every request's future is as large as the largest one it may
        // await, and hyper moves it twice per request; the credential read stays inline.
        return Box::pin(answer_open(app, req, family, found))
            .await
            .map_err(|e| (e, None));
    }
    if matches!(found, Found::Nothing) && !path.starts_with("/v1/") {
        return Err((no_such_endpoint(), None));
    }
    if let Found::Route(handler, arg) = found
        && let Some(read) = ReadRequest::of(handler, &req, arg)
    {
        return read_in_one_hop(&app, &req, read).await;
    }
    let who = match authenticate(&app, &req).await {
        Ok(p) => p,
        Err(e) => return Err((e, None)),
    };
    let name = Some(who.name.clone());
    match Box::pin(answer_authenticated(app, who, req, found)).await {
        Ok(r) => Ok((r, name)),
        Err(e) => Err((e, name)),
    }
}

/// The routes open to callers without a token.
async fn answer_open(
    app: Arc<App>,
    req: Request<Incoming>,
    family: &Family,
    found: Found<'_>,
) -> Result<(Response<Body>, Option<String>), Problem> {
    if !family.own_query {
        query_params(&req, &[])?;
    }
    let resp = match found {
        Found::Nothing => return Err(no_such_endpoint()),
        Found::OtherMethods(verbs) => method_not_allowed(&verbs),
        Found::Route(Handler::Health, _) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Found::Route(Handler::Ready, _) => super::ready::answer(&app).await?,
        Found::Route(Handler::Metrics, _) => {
            let text = app.metrics.render(env!("CARGO_PKG_VERSION"));
            let mut r = Response::new(full(Bytes::from(text)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Found::Route(Handler::Keys, _) => {
            let v = app.sealing.ring().keys_json(app.now());
            json_response(StatusCode::OK, &v)
        }
        Found::Route(Handler::OpenApi, _) => {
            let mut r = Response::new(full(Bytes::from_static(OPENAPI.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        // No bearer token: the browser comes back from the authorization server with the
        // state, which authenticates the callback.
        // A HEAD must change nothing; the callback's GET spends its single-use state.
        Found::Route(Handler::OAuthCallback, _) if req.method() == Method::HEAD => {
            let mut resp = method_not_allowed(&[Verb::Get]);
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            resp
        }
        Found::Route(Handler::OAuthCallback, _) => {
            let params = oauth::CallbackParams {
                state: query_param(&req, "state"),
                code: query_param(&req, "code"),
                error: query_param(&req, "error"),
            };
            // A browser (it asks for HTML) gets a page; an API client the JSON answer.
            if crate::ui::wants_html(&req) {
                crate::ui::callback(app, params).await
            } else {
                ok(oauth::callback(app, params).await?)
            }
        }
        Found::Route(Handler::Ui, rest) => {
            let (resp, who) = crate::ui::handle(app, req, rest).await;
            return Ok((resp, who));
        }
        Found::Route(other, _) => {
            return Err(Problem::internal(format!("{other:?} is not an open route")));
        }
    };
    Ok((resp, None))
}

/// The token-protected routes, after authentication.
async fn answer_authenticated(
    app: Arc<App>,
    who: Principal,
    req: Request<Incoming>,
    found: Found<'_>,
) -> Result<Response<Body>, Problem> {
    let handler = match &found {
        Found::Route(handler, _) => Some(*handler),
        _ => None,
    };
    if !handler.is_some_and(Handler::reads_query) {
        no_query(&req)?;
    }
    let (handler, arg) = match found {
        Found::Nothing => return Err(no_such_endpoint()),
        Found::OtherMethods(verbs) => return Ok(method_not_allowed(&verbs)),
        Found::Route(handler, arg) => (handler, arg),
    };
    match handler {
        Handler::Deploy => super::deploy::handle(app, who, req).await,
        Handler::Rollback => {
            let id = deployment_id(arg)?;
            let record = crate::service::rollback::rollback(app, who, id).await?;
            Ok(json_response(StatusCode::CREATED, &record))
        }
        Handler::MappingFile => files::stream_mapping_file(&app, who, arg.to_owned()).await,
        Handler::Resolve => {
            let (c, n) = object_path(arg)?;
            if !who.can(Perm::Use, &c) {
                return Err(Problem::lacks(Perm::Use.as_str(), &c));
            }
            let body = read_json(&app, req).await?;
            blocking(&app, move |_, db| {
                catalog::resolve(db.reads(), &who, &c, &n, &body).map(ok)
            })
            .await
        }
        Handler::DeleteMapping => {
            let (c, n) = object_path(arg)?;
            blocking(&app, move |_, db| {
                catalog::delete_mapping(db, &who, &c, &n).map(no_content)
            })
            .await
        }
        Handler::Token => {
            let (c, n) = object_path(arg)?;
            if !who.can(Perm::Use, &c) {
                return Err(Problem::lacks(Perm::Use.as_str(), &c));
            }
            let body = read_optional_json(&app, req).await?;
            let rejected = oauth::rejected_token(body.as_ref())?;
            oauth::token(app, who, c, n, rejected).await.map(ok)
        }
        Handler::Authorize => {
            let (c, n) = object_path(arg)?;
            oauth::authorize(app, who, c, n).await.map(ok)
        }
        Handler::Verify => {
            let (c, n) = object_path(arg)?;
            verify::handle(app, who, c, n).await.map(ok)
        }
        Handler::CreateCredential => {
            let (c, n) = object_path(arg)?;
            if !who.can(Perm::Write, &c) {
                return Err(Problem::lacks(Perm::Write.as_str(), &c));
            }
            let secrets_allowed = req
                .extensions()
                .get::<super::Transport>()
                .is_some_and(super::Transport::may_carry_secrets);
            let body = read_json(&app, req).await?;
            blocking(&app, move |app, db| {
                creds::create(&app.keys, db, &who, &c, &n, &body, secrets_allowed)
                    .map(|v| json_bytes_response(StatusCode::CREATED, v))
            })
            .await
        }
        Handler::PatchCredential => {
            let (c, n) = object_path(arg)?;
            if !who.can(Perm::Write, &c) {
                return Err(Problem::lacks(Perm::Write.as_str(), &c));
            }
            let body = read_json(&app, req).await?;
            blocking(&app, move |app, db| {
                catalog::patch_credential(app, db, &who, &c, &n, &body).map(ok_bytes)
            })
            .await
        }
        Handler::DeleteCredential => {
            let (c, n) = object_path(arg)?;
            blocking(&app, move |_, db| {
                catalog::delete_credential(db, &who, &c, &n).map(no_content)
            })
            .await
        }
        // Open routes and reads are answered before authentication or in one hop.
        other => Err(Problem::internal(format!(
            "{other:?} reached the authenticated dispatch"
        ))),
    }
}

/// A read that runs in one blocking task on one connection, authentication included: a GET
/// of deployments, the audit log, a container, a mapping or a credential. Its arguments are
/// parsed before the task; a parse error is answered only after authentication, so an
/// unauthenticated caller gets 401 whatever the path.
enum ReadRequest {
    Deployments(Result<Page, Problem>),
    Deployment(Result<crate::store::DeploymentId, Problem>),
    Audit(Result<Page, Problem>),
    Container(Result<flowpack_shared::names::ContainerPath, Problem>),
    Mapping(
        Result<
            (
                flowpack_shared::names::ContainerPath,
                flowpack_shared::names::Name,
            ),
            Problem,
        >,
    ),
    Credential(
        Result<
            (
                flowpack_shared::names::ContainerPath,
                flowpack_shared::names::Name,
            ),
            Problem,
        >,
    ),
}

impl ReadRequest {
    /// The read `handler` is, with its arguments parsed from `arg` and the query, or `None`
    /// when it is not one (mapping files are streamed: see [`files::stream_mapping_file`]).
    fn of(handler: Handler, req: &Request<Incoming>, arg: &str) -> Option<ReadRequest> {
        Some(match handler {
            Handler::ListDeployments => ReadRequest::Deployments(page(req)),
            Handler::ShowDeployment => {
                ReadRequest::Deployment(no_query(req).and_then(|()| deployment_id(arg)))
            }
            Handler::ListAudit => ReadRequest::Audit(page(req)),
            Handler::ShowContainer => ReadRequest::Container(
                no_query(req).and_then(|()| container_path(arg.trim_end_matches('/'))),
            ),
            Handler::ShowMapping => {
                ReadRequest::Mapping(no_query(req).and_then(|()| object_path(arg)))
            }
            Handler::ShowCredential => {
                ReadRequest::Credential(no_query(req).and_then(|()| object_path(arg)))
            }
            _ => return None,
        })
    }

    fn answer(self, db: &dyn Reads, who: &Principal) -> Result<Response<Body>, Problem> {
        match self {
            ReadRequest::Deployments(page) => catalog::list_deployments(db, who, &page?).map(ok),
            ReadRequest::Deployment(id) => catalog::show_deployment(db, who, id?).map(ok),
            ReadRequest::Audit(page) => catalog::list_audit(db, who, &page?).map(ok),
            ReadRequest::Container(c) => catalog::show_container(db, who, &c?).map(ok),
            ReadRequest::Mapping(p) => {
                let (c, n) = p?;
                catalog::show_mapping(db, who, &c, &n).map(ok)
            }
            ReadRequest::Credential(p) => {
                let (c, n) = p?;
                catalog::show_credential(db, who, &c, &n).map(ok_bytes)
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
    if let ReadRequest::Credential(Ok((c, n))) = &read
        && app.config().answer_cache_mib > 0
        && let Some((name, record)) = app.answers.credential(&app.store, &token, c, n)
    {
        app.metrics.cached_answer();
        return Ok((json_bytes_response(StatusCode::OK, record), Some(name)));
    }
    let worker = app.clone();
    let work = move || {
        // Read before the store is: what is read below is at least this new.
        let at = worker.store.generation();
        let db = worker.store.db().map_err(|e| (e.into(), None))?;
        let (who, facts) = match auth::authenticate_with_facts(db.reads(), &token) {
            Ok(Some(found)) => found,
            Ok(None) => return Err((Problem::unauthorized(), None)),
            Err(e) => return Err((e.into(), None)),
        };
        let name = Some(who.name.clone());
        let answered = match read {
            ReadRequest::Credential(Ok((c, n))) => {
                catalog::show_credential(db.reads(), &who, &c, &n).map(|record| {
                    let record = bytes::Bytes::from(record);
                    let max_bytes = worker.config().answer_cache_mib.saturating_mul(1 << 20);
                    if let Some(at) = at {
                        worker
                            .answers
                            .keep(max_bytes, at, &token, &who, &facts, &c, &n, &record);
                    }
                    json_bytes_response(StatusCode::OK, record)
                })
            }
            read => read.answer(db.reads(), &who),
        };
        match answered {
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
