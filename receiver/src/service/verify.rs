//! Dry verification of a credential (`POST /v1/credentials/{path}/verify`, `deploy --verify`):
//! one request that shows whether the credential works, answered as `{"ok", "tried", "error"}`
//! without a secret in it.
//!
//! - `oauth2`: a token request by the credential's grant. What it obtained is kept like any
//!   token the receiver obtains (compare and swap on the token version): a `client_credentials`
//!   or `password` token is a valid token the next `…/token` call can serve ("authorize and
//!   save"), and an `authorization_code` credential is checked by a refresh, whose result must
//!   be kept since providers may rotate refresh tokens. `implicit` has nothing to request: not
//!   ok.
//! - `password`: `GET verify_url` with HTTP Basic authentication; ok on 2xx.
//! - `api_key`: `GET verify_url` with the key in the header or query parameter the record names
//!   (`placement`, `parameter_name`; defaults `header` and `X-API-Key`, or `api_key` in the
//!   query); ok on 2xx.
//! - `database`: a TCP connection to `host`:`port` (the driver's usual port when none is
//!   given) within 5 seconds.
//!
//! Every request goes through the outbound policy ([`crate::outbound`]): a destination it
//! refuses is not contacted, and the verification is answered `422 outbound-not-allowed`. A
//! verification makes at most one request (one token request, one `GET` without redirects or
//! retries, or one TCP connection trying at most [`crate::outbound::MAX_ADDRESSES`] addresses
//! one after the other), and one credential is verified once at a time, so nothing a caller
//! sends can make the receiver fan out. Failures are fixed phrases (a status code, a standard
//! OAuth error code, "could not connect"), never text from the network or the other side.

use std::sync::Arc;
use std::time::Duration;

use flowpack_shared::model::credential::{CredentialType, PublicValue};
use flowpack_shared::names::{ContainerPath, Name};
use flowpack_shared::timefmt::Timestamp;
use serde_json::json;

use crate::App;
use crate::blocking;
use crate::outbound::{Refused, SendFailure, UrlError, dblogin};
use crate::problem::Problem;
use crate::service::auth::{Perm, Principal};
use crate::service::oauth::{self, Grant, Material, Outbound, TokenError, Tokens};
use crate::store::AuditRow;

/// How long a database login (connection, TLS, authentication and `SELECT 1`) may take.
const DB_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one dry verification.
#[derive(Debug)]
pub struct Verification {
    /// The credential worked.
    pub ok: bool,
    /// What was tried, in words (no secret).
    pub tried: String,
    /// What failed (no secret).
    pub error: Option<String>,
    /// Tokens the verification obtained, to keep: a refresh's (the old refresh token may be
    /// spent) or a new token of the credential's own grant.
    pub obtained: Option<Tokens>,
    /// How `obtained` was obtained: `refreshed` (a refresh token) or `obtained` (the
    /// credential's own grant), as the audit trail names it.
    pub obtained_by: &'static str,
    /// Set when the outbound policy refused the destination: nothing was sent. Answer it with
    /// [`Material::refusal`] (`422 outbound-not-allowed`).
    pub refused: Option<Refused>,
}

impl Verification {
    fn failed(tried: impl Into<String>, error: impl Into<String>) -> Verification {
        Verification {
            ok: false,
            tried: tried.into(),
            error: Some(error.into()),
            obtained: None,
            obtained_by: "obtained",
            refused: None,
        }
    }

    fn passed(tried: impl Into<String>) -> Verification {
        Verification {
            ok: true,
            tried: tried.into(),
            error: None,
            obtained: None,
            obtained_by: "obtained",
            refused: None,
        }
    }

    fn refused(tried: impl Into<String>, r: Refused) -> Verification {
        let mut v = Verification::failed(tried, r.detail());
        v.refused = Some(r);
        v
    }

    /// The answer's JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"ok": self.ok, "tried": self.tried, "error": self.error})
    }
}

/// Verifies credential `m`: at most one outbound request, under the outbound policy. The
/// texts of the result are scrubbed of `m`'s secrets. When the policy refuses the
/// destination, `refused` says so and nothing was sent.
pub async fn check(out: &Outbound, m: &Material, now: Timestamp) -> Verification {
    let mut v = check_unscrubbed(out, m, now).await;
    v.tried = m.scrub(&v.tried);
    v.error = v.error.map(|e| m.scrub(&e));
    v
}

async fn check_unscrubbed(out: &Outbound, m: &Material, now: Timestamp) -> Verification {
    if m.secrets.is_empty() {
        return Verification::failed(
            "nothing",
            format!("credential {} has no secrets to verify", m.path),
        );
    }
    match m.cred.kind {
        CredentialType::Oauth2 => check_oauth2(out, m, now).await,
        CredentialType::Password => {
            let Some(pw) = m.secret("password") else {
                return Verification::failed("nothing", "the credential has no `password`");
            };
            let user = m.text("username").unwrap_or("");
            let how = format!("with HTTP Basic authentication as {user:?}");
            http_check(out, m, how, |r| r.basic_auth(user, Some(pw.expose()))).await
        }
        CredentialType::ApiKey => {
            let Some(key) = m.secret("key") else {
                return Verification::failed("nothing", "the credential has no `key`");
            };
            if m.text("placement") == Some("query") {
                let name = m.text("parameter_name").unwrap_or("api_key").to_owned();
                let how = format!("with the key in query parameter {name:?}");
                http_check(out, m, how, |r| r.query(&[(name.as_str(), key.expose())])).await
            } else {
                let name = m.text("parameter_name").unwrap_or("X-API-Key").to_owned();
                let value = match reqwest::header::HeaderValue::from_str(key.expose()) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        v
                    }
                    Err(_) => {
                        return Verification::failed(
                            "nothing",
                            "the key cannot be sent in a header (it has control characters)",
                        );
                    }
                };
                let Ok(header) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) else {
                    return Verification::failed(
                        "nothing",
                        format!("parameter_name {name:?} is not a valid header name"),
                    );
                };
                let how = format!("with the key in header {name}");
                http_check(out, m, how, |r| r.header(header, value)).await
            }
        }
        CredentialType::Database => check_database(out, m).await,
    }
}

async fn check_oauth2(out: &Outbound, m: &Material, now: Timestamp) -> Verification {
    let grant_type = m.text("grant_type");
    let grant = match (grant_type, m.secret("refresh_token")) {
        (Some("implicit"), _) => {
            return Verification::failed(
                "nothing",
                format!("no token request is possible: {}", oauth::IMPLICIT_REFUSED),
            );
        }
        (Some("client_credentials"), _) => Grant::ClientCredentials,
        (Some("password"), _) => Grant::Password,
        (_, Some(rt)) => Grant::Refresh(rt),
        (Some("authorization_code"), None) => {
            return Verification::failed(
                "nothing",
                "the credential has no refresh token: authorize it first (POST …/authorize)",
            );
        }
        _ => {
            return Verification::failed(
                "nothing",
                "the credential has no `grant_type` and no refresh token",
            );
        }
    };
    let tried = oauth::describe(m, grant);
    match oauth::request_token(out, m, grant, now).await {
        Ok(tokens) => {
            let mut v = Verification::passed(tried);
            v.obtained = Some(tokens);
            if matches!(grant, Grant::Refresh(_)) {
                v.obtained_by = "refreshed";
            }
            v
        }
        Err(TokenError::Refused(r)) => Verification::refused(tried, r),
        Err(e) => Verification::failed(tried, e.message()),
    }
}

async fn http_check(
    out: &Outbound,
    m: &Material,
    how: String,
    add_secret: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Verification {
    let Some(text) = m.text("verify_url") else {
        return Verification::failed(
            "nothing",
            format!(
                "the credential has no `verify_url`: set one to verify {} credentials",
                m.cred.kind.as_str()
            ),
        );
    };
    let target = match out.check_url("verify_url", text) {
        Ok(t) => t,
        Err(UrlError::Invalid(e)) => return Verification::failed("nothing", e),
        Err(UrlError::Refused(r)) => return Verification::refused("nothing", r),
    };
    let tried = format!("GET {} {how}", target.shown());
    let req = add_secret(out.request(reqwest::Method::GET, target));
    // The answer's body is never read: only its status is shown.
    match req.send().await {
        Ok(r) if r.status().is_success() => Verification::passed(tried),
        Ok(r) => {
            let status = r.status();
            Verification::failed(tried, format!("the server answered HTTP {status}"))
        }
        Err(e) => match SendFailure::from_reqwest(&e) {
            SendFailure::Refused(r) => Verification::refused(tried, r),
            SendFailure::Failed(f) => Verification::failed(tried, f),
        },
    }
}

/// The usual port of a database driver.
fn default_port(driver: &str) -> Option<u16> {
    let d = driver.to_ascii_lowercase();
    Some(match d.as_str() {
        "postgres" | "postgresql" | "pg" => 5432,
        "mysql" | "mariadb" => 3306,
        "sqlserver" | "mssql" => 1433,
        "oracle" => 1521,
        "db2" => 50000,
        "mongodb" => 27017,
        _ => return None,
    })
}

async fn check_database(out: &Outbound, m: &Material) -> Verification {
    let Some(host) = m.text("host") else {
        return Verification::failed("nothing", "the credential has no `host`");
    };
    let port = match m.cred.public.get("port") {
        Some(PublicValue::Port(p)) => Some(*p),
        _ => m.text("driver").and_then(default_port),
    };
    let Some(port) = port else {
        return Verification::failed(
            "nothing",
            "the credential has no `port`, and its driver has no usual port",
        );
    };
    let driver = m.text("driver").unwrap_or_default();
    let what = if driver.is_empty() {
        "database"
    } else {
        driver
    };
    let tried = format!("{what} login to {host}:{port} with SELECT 1");
    // A TCP connection alone verifies nothing: log in and run a query. The answer is one of a
    // few fixed phrases (never the server's text): which of closed, filtered, timed out or
    // unknown a failed connection was is not told, or the receiver would be a port scanner.
    let login = dblogin::Login {
        driver,
        host,
        port,
        database: m.text("database"),
        username: m.text("username"),
        password: m.secret("password"),
    };
    match dblogin::login(out, &login, DB_LOGIN_TIMEOUT).await {
        Ok(()) => Verification::passed(tried),
        Err(dblogin::LoginError::Refused(r)) => Verification::refused(tried, r),
        Err(e) => Verification::failed(tried, e.detail()),
    }
}

/// `POST /v1/credentials/{path}/verify`.
pub async fn handle(
    app: Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
) -> Result<serde_json::Value, Problem> {
    if !who.can(Perm::Use, &c) {
        return Err(Problem::lacks(Perm::Use.as_str(), &c));
    }
    let m = blocking(&app, move |app, db| {
        oauth::load(db.reads(), &app.keys, &c, &n)
    })
    .await?;
    // One verification of a credential at a time (an oauth2 refresh during verification is a
    // refresh, which is single-flight anyway): however many callers ask at once, the
    // credential's destination gets one request at a time from this receiver.
    let (m, _in_flight) = match m.id {
        Some(id) => {
            let guard = app.store.lock_credential(id).await?;
            let m = blocking(&app, move |app, db| {
                oauth::load_by_id(db.reads(), &app.keys, id)
            })
            .await?;
            (m, Some(guard))
        }
        None => (m, None),
    };
    let mut v = check(&app.outbound, &m, app.now()).await;
    let obtained = v.obtained.take();
    let refusal = v.refused.take().map(|r| m.refusal(&r));
    let mut rows = vec![AuditRow {
        principal: Some(who.name.clone()),
        action: "verify-credential".into(),
        container: Some(m.container.to_string()),
        target: Some(m.path.clone()),
        outcome: match (&refusal, v.ok) {
            (Some(_), _) => "refused",
            (None, true) => "ok",
            (None, false) => "failed",
        }
        .into(),
        status: refusal.as_ref().map_or(200, |e| e.status.as_u16()),
        code: refusal.as_ref().map(|e| e.code.as_str().to_owned()),
        detail: Some(match &v.error {
            Some(e) => format!("tried {}: {e}", v.tried),
            None => format!("tried {}", v.tried),
        }),
        ..AuditRow::default()
    }];
    if let (Some(tokens), Some(id)) = (obtained, m.id) {
        rows.push(AuditRow {
            action: "oauth-token".into(),
            outcome: v.obtained_by.into(),
            status: 200,
            code: None,
            detail: Some(format!("access token {} by a verification", v.obtained_by)),
            ..rows[0].clone()
        });
        let (version, path, public) = (m.version, m.path.clone(), m.public.clone());
        blocking(&app, move |app, db| {
            let tx = db.write()?;
            let kept = oauth::store_tokens(&tx, &app.keys, id, version, &path, &public, &tokens)?;
            if !kept {
                rows.pop();
            }
            for r in &rows {
                tx.insert_audit(r)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    } else {
        blocking(&app, move |_, db| {
            let tx = db.write()?;
            for r in &rows {
                tx.insert_audit(r)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    }
    if let Some(e) = refusal {
        return Err(e);
    }
    Ok(v.to_json())
}
