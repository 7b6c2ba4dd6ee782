//! The admin web page at `/ui/`: server-rendered HTML (askama templates, in
//! `receiver/templates/`), one style sheet, no script. It sits beside `api/` in the layers:
//! it uses the services through `calls.rs` (the same functions, with the same principal, as
//! the API's handlers) and the API's request helpers (paths, queries, body frames), and the
//! router hands it every path under `/ui`.
//!
//! Security, in one place (`handle`): a sign-in makes a server-side session
//! (`session.rs`) behind an `HttpOnly`, `SameSite=Strict` cookie (`Secure` under TLS); every
//! request authenticates the session's token again, as the API does. Changes are `POST` only;
//! each carries the session's CSRF token (the sign-in form a token of its own, in a
//! short-lived cookie) and a cross-site one is refused on its `Origin` or `Sec-Fetch-Site`
//! before anything else. Every answer carries a `Content-Security-Policy` without script, and
//! `X-Frame-Options: DENY`. No page ever holds a secret value: credentials are shown from
//! their redacted record, and secret inputs are always rendered empty.

mod calls;
mod forms;
mod pages;
pub mod session;

use std::sync::Arc;
use std::time::Instant;

use askama::Template;
use bytes::Bytes;
use flowpack_shared::model::credential::{CredentialType, FieldKind, fields_of};
use flowpack_shared::names::{ContainerPath, Name};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::App;
use crate::api::{
    Body, Transport, before_param, container_path, deployment_id, full, limit_param, object_path,
    query_params,
};
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{Perm, Principal};
use crate::service::catalog::Page;
use crate::service::oauth::CallbackParams;

use forms::{Form, cookie};
use pages::{Chrome, Link};
use session::{COOKIE, Current, Notice, SIGN_IN_COOKIE, same};

pub use session::Sessions;

/// The style sheet, served at `/ui/style.css`.
const CSS: &str = include_str!("style.css");

/// No script at all, styles and images from the receiver only, forms posted only to it, and
/// never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Rows per page of the deployment and audit listings.
const PAGE_ROWS: usize = 50;

/// Answers a request for `/ui` or `/ui/{rest}`; returns the answer and the principal it was
/// given to (for the log line).
pub(crate) async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    rest: &str,
) -> (Response<Body>, Option<String>) {
    let tls = transport(&req).is_some_and(|t| t.tls);
    let (resp, who) = answer(app, req, rest.trim_start_matches('/'), tls).await;
    (secured(resp), who)
}

/// Whether the OAuth callback's request came from a browser, which gets an HTML page instead
/// of the JSON answer: it asks for `text/html`. API clients ask for JSON or anything.
pub(crate) fn wants_html(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().starts_with("text/html")))
}

/// The OAuth callback as a page: says the authorization was granted, or what went wrong, and
/// links back to the credential.
pub(crate) async fn callback(app: Arc<App>, params: CallbackParams) -> Response<Body> {
    let resp = match calls::callback(&app, params).await {
        Ok(v) => {
            let path = v["authorized"].as_str().unwrap_or("").to_owned();
            page(
                StatusCode::OK,
                &pages::Message {
                    c: Chrome::default(),
                    title: "Authorization has been granted".into(),
                    text: format!(
                        "The receiver now holds the tokens of {path}. You may close this page."
                    ),
                    ok: true,
                    link: Some(Link {
                        label: "Back to the credential".into(),
                        href: format!("/ui/credentials{path}"),
                    }),
                },
            )
        }
        Err(p) => problem_page(
            Chrome::default(),
            &Problem {
                detail: format!("The authorization failed: {}", p.detail),
                ..p
            },
            Some(Link {
                label: "Back to the admin page".into(),
                href: "/ui/".into(),
            }),
        ),
    };
    secured(resp)
}

fn transport(req: &Request<Incoming>) -> Option<Transport> {
    req.extensions().get::<Transport>().copied()
}

/// Adds the headers every page carries.
fn secured(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null` on
    // this page's own forms. Other sites (the authorization server) get no referrer.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn page(status: StatusCode, t: &impl Template) -> Response<Body> {
    match t.render() {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page failed");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!DOCTYPE html><title>Error</title><p>The page could not be shown.</p>".into(),
            )
        }
    }
}

fn problem_page(c: Chrome, p: &Problem, link: Option<Link>) -> Response<Body> {
    let title = match p.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        s if s.is_server_error() => "Something went wrong",
        _ => "That did not work",
    };
    page(
        p.status,
        &pages::Message {
            c,
            title: title.into(),
            text: p.detail.clone(),
            ok: false,
            link,
        },
    )
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn set_cookie(resp: &mut Response<Body>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn cookie_attrs(path: &str, tls: bool) -> String {
    format!(
        "Path={path}; HttpOnly; SameSite=Strict{}",
        if tls { "; Secure" } else { "" }
    )
}

fn sign_in_link() -> Link {
    Link {
        label: "Sign in".into(),
        href: "/ui/sign-in".into(),
    }
}

fn forbidden(detail: &str) -> Problem {
    Problem::forbidden(detail.to_owned())
}

/// Whether a `POST` comes from a page of this receiver: a browser says where a request comes
/// from in `Sec-Fetch-Site` and `Origin`; either naming another site refuses it. (The CSRF
/// token is checked as well; this refuses a cross-site post before its body is read.)
fn same_origin(req: &Request<Incoming>, tls: bool) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match header("origin") {
        None => true,
        Some(origin) => {
            let scheme = if tls { "https" } else { "http" };
            header("host").is_some_and(|host| origin == format!("{scheme}://{host}"))
        }
    }
}

async fn answer(
    app: Arc<App>,
    req: Request<Incoming>,
    rest: &str,
    tls: bool,
) -> (Response<Body>, Option<String>) {
    let post = match *req.method() {
        Method::GET | Method::HEAD => false,
        Method::POST => true,
        _ => {
            let p = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ProblemCode::MethodNotAllowed,
                "the admin page takes GET and POST only",
            );
            return (problem_page(Chrome::default(), &p, None), None);
        }
    };
    if rest == "style.css" && !post {
        let mut r = Response::new(full(Bytes::from_static(CSS.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        );
        return (r, None);
    }
    if post && !same_origin(&req, tls) {
        let p = forbidden("refused: this form was sent from another site");
        return (problem_page(Chrome::default(), &p, None), None);
    }
    if rest == "sign-in" {
        return (sign_in(&app, req, post, tls).await, None);
    }
    let now = Instant::now();
    let Some(sess) = cookie(&req, COOKIE).and_then(|id| app.ui_sessions.get(&id, now)) else {
        if post {
            let p = forbidden(
                "refused: you are not signed in (or your session has ended); sign in again",
            );
            return (
                problem_page(Chrome::default(), &p, Some(sign_in_link())),
                None,
            );
        }
        return (redirect("/ui/sign-in"), None);
    };
    let who = match calls::authenticate(&app, sess.token.clone()).await {
        Ok(Some(who)) => who,
        Ok(None) => {
            // Revoked or expired since the sign-in: the session ends with it.
            app.ui_sessions.end(&sess.id);
            return (redirect("/ui/sign-in"), None);
        }
        Err(p) => return (problem_page(Chrome::default(), &p, None), None),
    };
    let name = Some(who.name.clone());
    let ctx = Ctx {
        chrome: Chrome {
            who: name.clone(),
            csrf: sess.csrf.clone(),
            notice: sess.notice.clone(),
        },
        app,
        sess,
        who,
        tls,
    };
    let answered = if post {
        ctx.post(req, rest).await
    } else {
        ctx.get(&req, rest).await
    };
    let resp = answered.unwrap_or_else(|p| problem_page(ctx.chrome(), &p, None));
    (resp, name)
}

/// `GET` and `POST /ui/sign-in`.
async fn sign_in(app: &Arc<App>, req: Request<Incoming>, post: bool, tls: bool) -> Response<Body> {
    let attrs = cookie_attrs("/ui/sign-in", tls);
    let form_page = |status, csrf: String, why: Option<&str>| {
        let c = Chrome {
            notice: why.map(|text| Notice {
                ok: false,
                text: text.into(),
            }),
            ..Chrome::default()
        };
        let mut r = page(
            status,
            &pages::SignIn {
                c,
                csrf: csrf.clone(),
            },
        );
        set_cookie(
            &mut r,
            &format!("{SIGN_IN_COOKIE}={csrf}; Max-Age=1800; {attrs}"),
        );
        r
    };
    if !post {
        return form_page(
            StatusCode::OK,
            session::random_token().unwrap_or_default(),
            None,
        );
    }
    let expected = cookie(&req, SIGN_IN_COOKIE);
    let form = match forms::urlencoded(app, req).await {
        Ok(f) => f,
        Err(p) => return problem_page(Chrome::default(), &p, None),
    };
    let Some(expected) = expected.filter(|e| form.get("csrf").is_some_and(|g| same(g, e))) else {
        let p = forbidden(
            "refused: the sign-in form's CSRF token is missing or wrong; load the sign-in page again",
        );
        return problem_page(Chrome::default(), &p, Some(sign_in_link()));
    };
    let token = Zeroizing::new(form.get("token").unwrap_or("").trim().to_owned());
    if token.is_empty() {
        return form_page(StatusCode::BAD_REQUEST, expected, Some("Enter a token."));
    }
    match calls::authenticate(app, token.clone()).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return form_page(
                StatusCode::UNAUTHORIZED,
                expected,
                Some("That token is not valid: unknown, revoked or expired."),
            );
        }
        Err(p) => return problem_page(Chrome::default(), &p, None),
    }
    let Some(id) = app.ui_sessions.start(token, Instant::now()) else {
        let p = Problem::internal("no session could be started");
        return problem_page(Chrome::default(), &p, None);
    };
    let mut r = redirect("/ui/containers/");
    set_cookie(
        &mut r,
        &format!("{COOKIE}={id}; {}", cookie_attrs("/ui", tls)),
    );
    set_cookie(&mut r, &format!("{SIGN_IN_COOKIE}=; Max-Age=0; {attrs}"));
    r
}

/// A signed-in request.
struct Ctx {
    app: Arc<App>,
    sess: Current,
    who: Principal,
    chrome: Chrome,
    tls: bool,
}

/// Parses `?container=` (empty: none), `?limit=` and `?before=`: a listing's page.
fn listing_page(req: &Request<Incoming>) -> Result<Page, Problem> {
    let q = query_params(req, &["container", "limit", "before"])?;
    let arg = |k: &str| q.get(k).map(String::as_str);
    let container = match arg("container").map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(
            ContainerPath::parse(c).map_err(|e| Problem::bad_request(ProblemCode::BadPath, e.0))?,
        ),
    };
    Ok(Page {
        container,
        before: before_param(arg("before"))?,
        limit: limit_param(arg("limit"), PAGE_ROWS)?,
    })
}

/// A form value typed for field `kind` of a credential: lists split at commas, ports as
/// numbers; an empty value is `None`.
fn typed(kind: FieldKind, name: &str, value: &str) -> Result<Option<Value>, Problem> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    Ok(Some(match kind {
        FieldKind::Usages => Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        FieldKind::Port => Value::from(value.parse::<u16>().map_err(|_| {
            Problem::unprocessable(
                ProblemCode::BadRequestBody,
                format!("`{name}` is a port number from 1 to 65535"),
            )
        })?),
        _ => Value::String(value.to_owned()),
    }))
}

impl Ctx {
    fn chrome(&self) -> Chrome {
        self.chrome.clone()
    }

    fn notify(&self, ok: bool, text: impl Into<String>) {
        self.app.ui_sessions.notify(
            &self.sess.id,
            Notice {
                ok,
                text: text.into(),
            },
        );
    }

    fn secrets_allowed(&self, req: &Request<Incoming>) -> bool {
        transport(req).is_some_and(|t| t.may_carry_secrets())
    }

    async fn get(&self, req: &Request<Incoming>, rest: &str) -> Result<Response<Body>, Problem> {
        let app = &self.app;
        let who = self.who.clone();
        let ok = |t: &dyn DynPage| t.response();
        if rest.is_empty() {
            return Ok(redirect("/ui/containers/"));
        }
        if let Some(path) = rest
            .strip_prefix("containers")
            .filter(|p| p.is_empty() || p.starts_with('/'))
        {
            query_params(req, &[])?;
            let c = container_path(path.trim_matches('/'))?;
            let can_write = who.can(Perm::Write, &c);
            let v = calls::container(app, who, c).await?;
            return Ok(ok(&pages::Container::of(self.chrome(), &v, can_write)));
        }
        if let Some(path) = rest.strip_prefix("mappings/") {
            query_params(req, &[])?;
            let (c, n) = object_path(path)?;
            let v = calls::mapping(app, who, c, n).await?;
            return Ok(ok(&pages::Mapping::of(self.chrome(), &v)));
        }
        if let Some(path) = rest.strip_prefix("credentials/") {
            query_params(req, &[])?;
            let (c, n) = object_path(path)?;
            let (can_write, can_use) = (who.can(Perm::Write, &c), who.can(Perm::Use, &c));
            let v = calls::credential(app, who, c, n).await?;
            return Ok(ok(&pages::Credential::of(
                self.chrome(),
                &v,
                can_write,
                can_use,
            )));
        }
        if rest == "new-credential" {
            let q = query_params(req, &["container", "type"])?;
            let kind = match q.get("type").map(String::as_str) {
                None | Some("") => None,
                Some(t) => Some(CredentialType::parse(t).ok_or_else(|| {
                    Problem::bad_request(
                        ProblemCode::BadQuery,
                        "`type` is password, oauth2, api_key or database",
                    )
                })?),
            };
            let container = q.get("container").cloned().unwrap_or_else(|| "/".into());
            return Ok(ok(&pages::NewCredential::of(
                self.chrome(),
                container,
                kind,
            )));
        }
        if rest == "deployments" {
            let page = listing_page(req)?;
            let (container, next) = pages::listing_links(&page);
            let can_write = who.has_any(Perm::Write);
            let v = calls::deployments(app, who, page).await?;
            let empty = Vec::new();
            let rows = v["deployments"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(pages::Deployment::of)
                .collect();
            return Ok(ok(&pages::Deployments {
                c: self.chrome(),
                next: next("/ui/deployments", &v["next"]),
                container,
                rows,
                can_write,
            }));
        }
        if let Some(arg) = rest.strip_prefix("deployments/") {
            query_params(req, &[])?;
            let (arg, confirm) = match arg.strip_suffix("/rollback") {
                Some(id) => (id, true),
                None => (arg, false),
            };
            let id = deployment_id(arg)?;
            let v = calls::deployment(app, who.clone(), id).await?;
            let d = pages::Deployment::of(&v);
            let can_write =
                ContainerPath::parse(&d.container).is_ok_and(|c| who.can(Perm::Write, &c));
            if confirm {
                if !can_write {
                    return Err(forbidden(&format!("you lack `write` on {}", d.container)));
                }
                return Ok(ok(&pages::Rollback {
                    c: self.chrome(),
                    d,
                }));
            }
            return Ok(ok(&pages::DeploymentPage {
                c: self.chrome(),
                d,
                can_write,
            }));
        }
        if rest == "audit" {
            let page = listing_page(req)?;
            let (container, next) = pages::listing_links(&page);
            let v = calls::audit(app, who, page).await?;
            return Ok(ok(&pages::Audit {
                c: self.chrome(),
                next: next("/ui/audit", &v["next"]),
                rows: pages::Audit::rows(&v),
                container,
            }));
        }
        Err(Problem::not_found("no such page"))
    }

    async fn post(&self, req: Request<Incoming>, rest: &str) -> Result<Response<Body>, Problem> {
        query_params(&req, &[])?;
        if rest == "deployments/plan" {
            let max = self.app.config().limits.max_bundle_size;
            let secrets_allowed = self.secrets_allowed(&req);
            calls::may_plan(&self.app, &self.who)?;
            let upload =
                forms::multipart(&self.app, req, "bundle", max, |f| self.check_csrf(f)).await?;
            if upload.size == 0 {
                return Err(Problem::bad_request(
                    ProblemCode::BadRequestBody,
                    "choose a bundle file to plan",
                ));
            }
            let v = calls::plan(&self.app, self.who.clone(), upload.file, secrets_allowed).await?;
            return Ok(pages::Plan::of(self.chrome(), &v).response());
        }
        let secrets_allowed = self.secrets_allowed(&req);
        let form = forms::urlencoded(&self.app, req).await?;
        self.check_csrf(&form)?;
        if rest == "sign-out" {
            self.app.ui_sessions.end(&self.sess.id);
            let mut r = redirect("/ui/sign-in");
            set_cookie(
                &mut r,
                &format!("{COOKIE}=; Max-Age=0; {}", cookie_attrs("/ui", self.tls)),
            );
            return Ok(r);
        }
        if let Some(path) = rest.strip_prefix("credentials/") {
            let (c, n) = object_path(path)?;
            return self.credential_action(c, n, &form).await;
        }
        if rest == "new-credential" {
            return self.create(&form, secrets_allowed).await;
        }
        if let Some(id) = rest
            .strip_prefix("deployments/")
            .and_then(|r| r.strip_suffix("/rollback"))
        {
            let id = deployment_id(id)?;
            let v = calls::rollback(&self.app, self.who.clone(), id).await?;
            let new = pages::Deployment::of(&v);
            self.notify(
                true,
                format!("Rolled back deployment #{id}: this is the rollback's record."),
            );
            return Ok(redirect(&format!("/ui/deployments/{}", new.id)));
        }
        Err(Problem::not_found("no such form"))
    }

    fn check_csrf(&self, form: &Form) -> Result<(), Problem> {
        match form.get("csrf") {
            Some(t) if same(t, &self.sess.csrf) => Ok(()),
            _ => Err(forbidden(
                "refused: the form's CSRF token is missing or wrong; load the page again",
            )),
        }
    }

    async fn credential_action(
        &self,
        c: ContainerPath,
        n: Name,
        form: &Form,
    ) -> Result<Response<Body>, Problem> {
        let back = format!("/ui/credentials{}", c.object_path(&n));
        let app = &self.app;
        let who = self.who.clone();
        match form.get("do") {
            Some(what @ ("secrets" | "fields")) => {
                let current = calls::credential(app, who.clone(), c.clone(), n.clone()).await?;
                let body = patch_body(what == "secrets", form, &current)?;
                if body.is_empty() {
                    self.notify(true, "Nothing changed: the form was left as it was.");
                    return Ok(redirect(&back));
                }
                let names: Vec<String> = body.keys().cloned().collect();
                let v = calls::patch_credential(app, who, c, n, Value::Object(body)).await?;
                let mut text = format!("Saved: {}.", names.join(", "));
                if v["needs_secrets"] == Value::Bool(true) {
                    text.push_str(" The credential needs its secrets (again).");
                }
                self.notify(true, text);
            }
            Some("verify") => {
                let v = calls::verify(app, who, c, n).await?;
                let tried = v["tried"].as_str().unwrap_or("");
                if v["ok"] == Value::Bool(true) {
                    self.notify(true, format!("Verified: {tried} succeeded."));
                } else {
                    let error = v["error"].as_str().unwrap_or("no reason given");
                    self.notify(false, format!("Verification failed ({tried}): {error}"));
                }
            }
            Some("authorize") => {
                let v = calls::authorize(app, who, c, n).await?;
                let url = v["authorize_url"].as_str().unwrap_or("").to_owned();
                return Ok(pages::Message {
                    c: self.chrome(),
                    title: "Authorize at the provider".into(),
                    text: "Continue to the authorization server and grant access; it sends you back here when it is done.".into(),
                    ok: true,
                    link: Some(Link { label: "Continue to the authorization server".into(), href: url }),
                }
                .response());
            }
            _ => {
                return Err(Problem::bad_request(
                    ProblemCode::BadRequestBody,
                    "unknown action",
                ));
            }
        }
        Ok(redirect(&back))
    }

    async fn create(&self, form: &Form, secrets_allowed: bool) -> Result<Response<Body>, Problem> {
        let bad = |d: String| Problem::unprocessable(ProblemCode::BadRequestBody, d);
        let c = ContainerPath::parse(form.get("container").unwrap_or("").trim())
            .map_err(|e| bad(format!("container: {}", e.0)))?;
        let n = Name::parse(form.get("name").unwrap_or("").trim())
            .map_err(|e| bad(format!("name: {}", e.0)))?;
        let kind = CredentialType::parse(form.get("type").unwrap_or(""))
            .ok_or_else(|| bad("type: password, oauth2, api_key or database".into()))?;
        let mut body = Map::new();
        body.insert("type".into(), Value::String(kind.as_str().into()));
        if let Some(d) = typed(
            FieldKind::Text,
            "description",
            form.get("description").unwrap_or(""),
        )? {
            body.insert("description".into(), d);
        }
        for f in fields_of(kind) {
            let given = form.get(f.name).unwrap_or("");
            let value = if f.kind == FieldKind::Sensitive {
                (!given.is_empty()).then(|| Value::String(given.to_owned()))
            } else {
                typed(f.kind, f.name, given)?
            };
            if let Some(v) = value {
                body.insert(f.name.to_owned(), v);
            }
        }
        let path = c.object_path(&n);
        calls::create_credential(
            &self.app,
            self.who.clone(),
            c,
            n,
            Value::Object(body),
            secrets_allowed,
        )
        .await?;
        self.notify(true, format!("Created {path}."));
        Ok(redirect(&format!("/ui/credentials{path}")))
    }
}

/// The PATCH body of a credential form: the sensitive fields typed in (`secrets`), or the
/// non-sensitive fields whose value differs from `current` (an emptied one is cleared).
fn patch_body(secrets: bool, form: &Form, current: &Value) -> Result<Map<String, Value>, Problem> {
    let kind = credential_type(current)?;
    let mut body = Map::new();
    let specs = fields_of(kind).iter().map(|f| (f.name, f.kind));
    for (name, fk) in std::iter::once(("description", FieldKind::Text)).chain(specs) {
        let Some(given) = form.get(name) else {
            continue;
        };
        if secrets {
            if fk == FieldKind::Sensitive && !given.is_empty() {
                body.insert(name.to_owned(), Value::String(given.to_owned()));
            }
        } else if fk != FieldKind::Sensitive
            && given.trim() != pages::form_value(&current[name]).trim()
        {
            body.insert(
                name.to_owned(),
                typed(fk, name, given)?.unwrap_or(Value::Null),
            );
        }
    }
    Ok(body)
}

fn credential_type(record: &Value) -> Result<CredentialType, Problem> {
    record["type"]
        .as_str()
        .and_then(CredentialType::parse)
        .ok_or_else(|| Problem::internal("a stored credential has no known type"))
}

/// A page that renders itself into a `200`.
trait DynPage {
    fn response(&self) -> Response<Body>;
}

impl<T: Template> DynPage for T {
    fn response(&self) -> Response<Body> {
        page(StatusCode::OK, self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        assert_eq!(
            cookie_attrs("/ui", false),
            "Path=/ui; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            cookie_attrs("/ui", true),
            "Path=/ui; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!CSP.contains("script-src") && CSP.contains("default-src 'none'"));
    }

    #[test]
    fn a_fields_form_patches_only_what_changed_and_a_secrets_form_only_what_was_typed() {
        let current = serde_json::json!({
            "type": "database", "host": "db.example.com", "port": 5432, "database": "erp",
            "username": "svc", "allow_usage_for": ["database"],
            "password": {"set": true, "fingerprint": "abc"},
        });
        let form = Form::parse(
            b"host=db.example.com&port=6432&database=&username=svc&allow_usage_for=database%2C+http&password=typed",
        );
        let body = patch_body(false, &form, &current).unwrap();
        assert_eq!(
            Value::Object(body),
            serde_json::json!({"port": 6432, "database": null, "allow_usage_for": ["database", "http"]})
        );
        let body = patch_body(true, &form, &current).unwrap();
        assert_eq!(
            Value::Object(body),
            serde_json::json!({"password": "typed"})
        );

        let bad = Form::parse(b"port=70000");
        let e = patch_body(false, &bad, &current).unwrap_err();
        assert!(e.detail.contains("`port`"), "{}", e.detail);
    }
}
