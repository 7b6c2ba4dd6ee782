//! Outbound OAuth 2.0 (docs/OAUTH.md): the receiver is the one place
//! that obtains and refreshes the access tokens of `oauth2` credentials.
//!
//! - [`Outbound`] (in [`crate::outbound`]) holds the HTTP clients, which send only where the
//!   outbound policy allows, and the per-credential single-flight locks.
//! - [`request_token`] speaks RFC 6749 §4–§6 to a token endpoint: `client_credentials`,
//!   `password`, `refresh_token`, `authorization_code` with PKCE; client authentication by HTTP
//!   Basic (form-encoded id and secret, §2.3.1) or in the body.
//! - [`token`] (`POST …/token`): a valid access token, refreshed ahead of expiry. Callers of
//!   one credential queue on its lock, so however many arrive on an expired token, the first
//!   refreshes and the others read what it stored. What a refresh obtained is stored only if
//!   the credential's token version is still the one it read (compare and swap), so a refresh
//!   never overwrites a newer deploy, PATCH or refresh.
//! - [`authorize`] and [`callback`]: the authorization-code flow with PKCE (S256) and a random,
//!   single-use, expiring `state` that the database holds only as a SHA-256.
//!
//! No token value leaves through a log line, an audit row or any answer but `…/token`'s. Of
//! what a provider answers, only the HTTP status and an `error` code from the vocabulary of
//! RFC 6749 ([`OAUTH_ERRORS`]) are shown; `error_description`, other codes and bodies are
//! dropped, since a hostile or careless provider may echo the request (and its secrets, in any
//! encoding) in them. What is shown is then scrubbed of the credential's secrets as well
//! ([`Material::scrub`]), in case a secret was put into a non-sensitive field.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use flowpack_shared::model::credential::{
    Credential, CredentialType, PublicValue, RecordForm, Usage,
};
use flowpack_shared::names::{ContainerPath, Name};
use flowpack_shared::secret::Secret;
use flowpack_shared::timefmt::Timestamp;
use serde_json::{Map, Value, json};

use crate::App;
use crate::blocking;
pub use crate::outbound::{Outbound, shown};
use crate::outbound::{Refused, SendFailure, UrlError};
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{Perm, Principal};
use crate::service::creds::SecretKeys;
use crate::store::{AuditRow, CredentialId, CredentialRow, OAuthState, Reads, Tx};

/// A token is refreshed when it expires within this margin.
pub const REFRESH_SKEW: time::Duration = time::Duration::seconds(60);
/// How long an authorization-code flow may take from `…/authorize` to the callback.
pub const STATE_LIFETIME: time::Duration = time::Duration::minutes(10);
/// Largest answer read from a token endpoint.
const MAX_ANSWER: usize = 256 * 1024;

/// The OAuth `error` codes shown when a provider answers one: RFC 6749 §5.2 (token endpoint)
/// and §4.1.2.1 (authorization endpoint), RFC 8707 §2 (`invalid_target`), OpenID Connect Core
/// §3.1.2.6 (what an authorization server that also speaks OpenID Connect sends back to the
/// callback) and RFC 9449 §5, §8 (a provider that demands DPoP proofs, which this receiver
/// does not send). Any other code is not shown: it is the provider's text.
pub const OAUTH_ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "unsupported_response_type",
    "server_error",
    "temporarily_unavailable",
    "invalid_target",
    "interaction_required",
    "login_required",
    "consent_required",
    "account_selection_required",
    "invalid_dpop_proof",
    "use_dpop_nonce",
];

/// `code` as one of [`OAUTH_ERRORS`] (our copy of it), or `None`.
pub fn known_oauth_error(code: &str) -> Option<&'static str> {
    OAUTH_ERRORS.iter().copied().find(|c| *c == code)
}

/// A credential with its secrets opened: what an outbound request is made from.
pub struct Material {
    /// The stored row, or `None` for a credential of a bundle not applied yet.
    pub id: Option<CredentialId>,
    /// The token version read with it.
    pub version: i64,
    /// Its container.
    pub container: ContainerPath,
    /// Its path.
    pub path: String,
    /// Its non-sensitive fields (no secrets).
    pub cred: Credential,
    /// Its non-sensitive record as stored.
    pub public: Map<String, Value>,
    /// Its sensitive fields, opened.
    pub secrets: BTreeMap<String, Secret>,
    /// Marked after a refused refresh token.
    pub needs_authorization: bool,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// A non-sensitive text field.
    pub fn text(&self, field: &str) -> Option<&str> {
        match self.cred.public.get(field) {
            Some(PublicValue::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// A sensitive field.
    pub fn secret(&self, field: &str) -> Option<&Secret> {
        self.secrets.get(field)
    }

    /// `text` with every secret of the credential, in any encoding (raw, percent- or
    /// form-encoded, base64 or base64url, JSON-escaped; see [`crate::outbound::scrub`]),
    /// replaced by `[redacted]`, and control characters dropped. Every text about an outbound
    /// request passes through it before it is answered, logged or stored.
    pub fn scrub(&self, text: &str) -> String {
        let secrets: Vec<&[u8]> = self
            .secrets
            .values()
            .map(|s| s.expose().as_bytes())
            .collect();
        crate::outbound::scrub::scrub(text, &secrets)
    }

    /// Builds material from a stored row (secrets decrypted with `keys`).
    pub fn from_row(
        db: &dyn Reads,
        keys: &SecretKeys,
        container: ContainerPath,
        path: String,
        row: &CredentialRow,
    ) -> Result<Material, Problem> {
        let public: Map<String, Value> =
            serde_json::from_str(&row.public).map_err(Problem::internal)?;
        let cred =
            Credential::from_map(&path, &public, RecordForm::Admin).map_err(Problem::internal)?;
        let mut secrets = BTreeMap::new();
        for s in db.secrets(row.id)? {
            let v = keys
                .decrypt(&path, &s.field, &s.ciphertext)
                .ok_or_else(|| Problem::internal(format!("{path}: {} does not open", s.field)))?;
            secrets.insert(s.field, v);
        }
        Ok(Material {
            id: Some(row.id),
            version: row.token_version,
            container,
            path,
            cred,
            public,
            secrets,
            needs_authorization: row.needs_authorization,
        })
    }

    /// The `422 outbound-not-allowed` answer for a refused destination of this credential,
    /// scrubbed like every text about an outbound request.
    pub fn refusal(&self, r: &Refused) -> Problem {
        let mut e = r.to_api(&format!("credential {}", self.path));
        e.detail = self.scrub(&e.detail);
        if let Some(Value::String(host)) = e.extra.get_mut("host") {
            *host = self.scrub(host);
        }
        e
    }

    fn row_id(&self) -> Result<CredentialId, Problem> {
        self.id
            .ok_or_else(|| Problem::internal("a bundle credential used as a stored one"))
    }
}

/// Loads a stored credential with its secrets; 404 when it does not exist.
pub fn load(
    db: &dyn Reads,
    keys: &SecretKeys,
    c: &ContainerPath,
    n: &Name,
) -> Result<Material, Problem> {
    let (_, row) = crate::service::creds::find(db, c, n)?;
    Material::from_row(db, keys, c.clone(), c.object_path(n), &row)
}

/// Loads a stored credential by row id; 404 when it was deleted.
pub fn load_by_id(
    db: &dyn Reads,
    keys: &SecretKeys,
    id: CredentialId,
) -> Result<Material, Problem> {
    let (container, name, row) = db
        .credential_by_id(id)?
        .ok_or_else(|| Problem::not_found("the credential was deleted"))?;
    let c = ContainerPath::parse(&container).map_err(|e| Problem::internal(e.0))?;
    let n = Name::parse(&name).map_err(|e| Problem::internal(e.0))?;
    let path = c.object_path(&n);
    Material::from_row(db, keys, c, path, &row)
}

/// A grant to request at the token endpoint.
#[derive(Debug, Clone, Copy)]
pub enum Grant<'a> {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 6749 §4.3, with the record's `username` and `password`.
    Password,
    /// RFC 6749 §6.
    Refresh(&'a Secret),
    /// RFC 6749 §4.1.3 with the PKCE verifier (RFC 7636 §4.5).
    Code {
        /// The authorization code.
        code: &'a str,
        /// The PKCE code verifier.
        verifier: &'a Secret,
        /// The `redirect_uri` sent with the authorization request.
        redirect_uri: &'a str,
    },
}

impl Grant<'_> {
    /// The `grant_type` value.
    pub fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::Password => "password",
            Grant::Refresh(_) => "refresh_token",
            Grant::Code { .. } => "authorization_code",
        }
    }
}

/// What a token endpoint issued.
#[derive(Clone)]
pub struct Tokens {
    /// The access token.
    pub access_token: Secret,
    /// A new refresh token, if it issued one.
    pub refresh_token: Option<Secret>,
    /// When the access token expires, if it said.
    pub expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a token request failed. Every text is safe to show: none comes from the provider.
#[derive(Debug)]
pub enum TokenError {
    /// The credential lacks what the request needs, or names an endpoint that is no URL.
    Credential {
        /// Problem code.
        code: ProblemCode,
        /// What is wrong.
        detail: String,
    },
    /// The outbound policy refuses the endpoint.
    Refused(Refused),
    /// The endpoint answered an OAuth error (RFC 6749 §5.2).
    Provider {
        /// `error`, when it is one of [`OAUTH_ERRORS`].
        error: Option<&'static str>,
        /// The HTTP status.
        status: u16,
    },
    /// No usable answer: connection, TLS, timeout, or an answer that is not a token.
    Transport(String),
}

impl TokenError {
    /// One line: what went wrong.
    pub fn message(&self) -> String {
        match self {
            TokenError::Credential { detail, .. } => detail.clone(),
            TokenError::Refused(r) => r.detail(),
            TokenError::Provider {
                error: Some(error),
                status,
            } => format!("HTTP {status}, error {error}"),
            TokenError::Provider {
                error: None,
                status,
            } => format!(
                "HTTP {status}, with an OAuth error code outside the standard vocabulary (not shown)"
            ),
            TokenError::Transport(t) => t.clone(),
        }
    }

    /// The problem answered for a failed request of credential `m`; `tried` says what was
    /// tried. The detail is scrubbed of `m`'s secrets.
    pub fn into_api(self, m: &Material, tried: &str) -> Problem {
        let path = &m.path;
        match &self {
            TokenError::Credential { code, detail } => {
                Problem::unprocessable(*code, m.scrub(&format!("credential {path}: {detail}")))
            }
            TokenError::Refused(r) => m.refusal(r),
            TokenError::Provider { error, .. } => {
                let e = Problem::bad_gateway(
                    ProblemCode::TokenEndpointError,
                    m.scrub(&format!(
                        "credential {path}: the token endpoint refused the request ({tried}): {}",
                        self.message()
                    )),
                );
                match error {
                    Some(code) => e.with("oauth_error", Value::String((*code).to_owned())),
                    None => e,
                }
            }
            TokenError::Transport(_) => Problem::bad_gateway(
                ProblemCode::TokenEndpointUnreachable,
                m.scrub(&format!(
                    "credential {path}: no token from the token endpoint ({tried}): {}",
                    self.message()
                )),
            ),
        }
    }

    fn is(&self, code: &str) -> bool {
        matches!(self, TokenError::Provider { error: Some(e), .. } if *e == code)
    }
}

impl From<UrlError> for TokenError {
    fn from(e: UrlError) -> TokenError {
        match e {
            UrlError::Invalid(detail) => misconfigured(detail),
            UrlError::Refused(r) => TokenError::Refused(r),
        }
    }
}

impl From<SendFailure> for TokenError {
    fn from(e: SendFailure) -> TokenError {
        match e {
            SendFailure::Refused(r) => TokenError::Refused(r),
            SendFailure::Failed(f) => TokenError::Transport(f.to_owned()),
        }
    }
}

fn misconfigured(detail: impl Into<String>) -> TokenError {
    TokenError::Credential {
        code: ProblemCode::OauthMisconfigured,
        detail: detail.into(),
    }
}

/// What a request to the token endpoint will be, in words (no secret).
pub fn describe(m: &Material, grant: Grant<'_>) -> String {
    let endpoint = m.text("token_endpoint").map_or_else(
        || "(no token_endpoint)".to_owned(),
        |t| reqwest::Url::parse(t).map_or_else(|_| t.to_owned(), |u| shown(&u)),
    );
    let auth = match (m.text("client_id"), m.secret("client_secret")) {
        (Some(_), Some(_)) => m.text("token_endpoint_auth").unwrap_or("header"),
        (Some(_), None) => "client_id only",
        (None, _) => "none",
    };
    format!(
        "POST {endpoint} (grant_type={}, client authentication: {auth})",
        grant.name()
    )
}

/// Reads at most `MAX_ANSWER` bytes of an answer.
pub async fn bounded_body(mut r: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await? {
        let room = MAX_ANSWER.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room < chunk.len() {
            break;
        }
    }
    Ok(out)
}

/// The `Authorization: Basic` value of RFC 6749 §2.3.1: id and secret form-urlencoded, then
/// joined by `:` and base64-encoded.
fn basic_auth(id: &str, secret: &Secret) -> zeroize::Zeroizing<String> {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = zeroize::Zeroizing::new(format!("{}:{}", enc(id), enc(secret.expose())));
    zeroize::Zeroizing::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())))
}

/// The form body of a token request and its `Authorization` header, if the client
/// authenticates by header. (Not `async`: the form serializer is not `Send`.)
fn token_form(
    m: &Material,
    grant: Grant<'_>,
) -> Result<
    (
        zeroize::Zeroizing<String>,
        Option<reqwest::header::HeaderValue>,
    ),
    TokenError,
> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", grant.name());
    match grant {
        Grant::ClientCredentials => {
            if let Some(s) = m.text("scope") {
                form.append_pair("scope", s);
            }
        }
        Grant::Password => {
            let user = m
                .text("username")
                .ok_or_else(|| misconfigured("the password grant needs `username`"))?;
            let pw = m
                .secret("password")
                .ok_or_else(|| misconfigured("the password grant needs `password`"))?;
            form.append_pair("username", user);
            form.append_pair("password", pw.expose());
            if let Some(s) = m.text("scope") {
                form.append_pair("scope", s);
            }
        }
        Grant::Refresh(rt) => {
            form.append_pair("refresh_token", rt.expose());
        }
        Grant::Code {
            code,
            verifier,
            redirect_uri,
        } => {
            form.append_pair("code", code);
            form.append_pair("redirect_uri", redirect_uri);
            form.append_pair("code_verifier", verifier.expose());
        }
    }
    let mut authorization = None;
    let method = m.text("token_endpoint_auth").unwrap_or("header");
    match (m.text("client_id"), m.secret("client_secret")) {
        (Some(id), Some(secret)) if method == "header" => {
            let value = basic_auth(id, secret);
            let mut v = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| misconfigured("`client_id` cannot be sent in a header"))?;
            v.set_sensitive(true);
            authorization = Some(v);
        }
        (Some(id), secret) => {
            form.append_pair("client_id", id);
            if let Some(s) = secret {
                form.append_pair("client_secret", s.expose());
            }
        }
        (None, Some(_)) => {
            return Err(misconfigured("it has a `client_secret` but no `client_id`"));
        }
        (None, None) => {}
    }
    Ok((zeroize::Zeroizing::new(form.finish()), authorization))
}

/// Sends one token request for credential `m` and parses the answer.
pub async fn request_token(
    out: &Outbound,
    m: &Material,
    grant: Grant<'_>,
    now: Timestamp,
) -> Result<Tokens, TokenError> {
    let text = m
        .text("token_endpoint")
        .ok_or_else(|| misconfigured("it has no `token_endpoint`"))?;
    let target = out.check_url("token_endpoint", text)?;
    let (body, authorization) = token_form(m, grant)?;
    let mut req = out
        .request(reqwest::Method::POST, target)
        .header(reqwest::header::ACCEPT, "application/json");
    if let Some(v) = authorization {
        req = req.header(reqwest::header::AUTHORIZATION, v);
    }
    let resp = req
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body.as_bytes().to_vec())
        .send()
        .await
        .map_err(|e| SendFailure::from_reqwest(&e))?;
    let status = resp.status();
    let bytes = bounded_body(resp)
        .await
        .map_err(|e| SendFailure::from_reqwest(&e))?;
    let bytes = zeroize::Zeroizing::new(bytes);
    let json: Option<Map<String, Value>> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        if let Some(err) = json.as_ref().and_then(|j| j.get("error")) {
            // Only a code of the standard vocabulary is kept; `error_description` and the
            // rest of the answer are the provider's text and are dropped unread.
            return Err(TokenError::Provider {
                error: err.as_str().and_then(known_oauth_error),
                status: status.as_u16(),
            });
        }
        return Err(TokenError::Transport(format!(
            "HTTP {status} without an OAuth error"
        )));
    }
    let Some(json) = json else {
        return Err(TokenError::Transport(format!(
            "HTTP {status}, but the answer is not a JSON object"
        )));
    };
    let access = json
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            TokenError::Transport(format!("HTTP {status}, but the answer has no access_token"))
        })?;
    let expires_in = match json.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    };
    let expires_at = expires_in
        .and_then(|s| i64::try_from(s).ok())
        .map(|s| now.plus(time::Duration::seconds(s.min(10 * 365 * 86_400))));
    Ok(Tokens {
        access_token: Secret::new(access.to_owned()),
        refresh_token: json
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| Secret::new(s.to_owned())),
        expires_at,
    })
}

/// Writes tokens onto a stored credential: the access token, a new refresh token if one was
/// issued (else the old one stays), `expires_at` (removed when unknown), and clears
/// `needs_authorization`. No version check: see [`store_tokens`].
pub fn write_tokens(
    tx: &Tx<'_>,
    keys: &SecretKeys,
    id: CredentialId,
    path: &str,
    public: &Map<String, Value>,
    tokens: &Tokens,
) -> Result<(), Problem> {
    let mut public = public.clone();
    match tokens.expires_at {
        Some(t) => public.insert("expires_at".into(), Value::String(t.to_string())),
        None => public.remove("expires_at"),
    };
    let text = serde_json::to_string(&public).map_err(Problem::internal)?;
    tx.set_credential_public(id, &text)?;
    let ct = keys.encrypt(path, "access_token", &tokens.access_token)?;
    tx.set_secret(
        id,
        "access_token",
        &ct,
        &keys.fingerprint(&tokens.access_token),
    )?;
    if let Some(rt) = &tokens.refresh_token {
        let ct = keys.encrypt(path, "refresh_token", rt)?;
        tx.set_secret(id, "refresh_token", &ct, &keys.fingerprint(rt))?;
    }
    tx.set_needs_authorization(id, false)?;
    Ok(())
}

/// Stores tokens on credential `id` if it is unchanged since it was read (its
/// token version `version`). Returns false, writing nothing, when something newer is stored.
pub fn store_tokens(
    tx: &Tx<'_>,
    keys: &SecretKeys,
    id: CredentialId,
    version: i64,
    path: &str,
    public: &Map<String, Value>,
    tokens: &Tokens,
) -> Result<bool, Problem> {
    if !tx.claim_token_version(id, version)? {
        return Ok(false);
    }
    write_tokens(tx, keys, id, path, public, tokens)?;
    Ok(true)
}

fn oauth_audit(
    principal: &str,
    action: &str,
    m: &Material,
    outcome: &str,
    status: u16,
    detail: String,
) -> AuditRow {
    AuditRow {
        principal: Some(principal.to_owned()),
        action: action.into(),
        container: Some(m.container.to_string()),
        target: Some(m.path.clone()),
        outcome: outcome.into(),
        status,
        detail: Some(detail),
        ..AuditRow::default()
    }
}

fn audit_error(principal: &str, action: &str, m: &Material, e: &Problem) -> AuditRow {
    let mut row = oauth_audit(
        principal,
        action,
        m,
        "failed",
        e.status.as_u16(),
        e.detail.clone(),
    );
    row.code = Some(e.code.as_str().to_owned());
    row
}

async fn audit(app: &Arc<App>, row: AuditRow) {
    let _ = blocking(app, move |_, db| {
        crate::service::audit::audit_alone(db, row);
        Ok(())
    })
    .await;
}

/// The `…/token` answer when `m`'s stored access token is still valid.
fn fresh(m: &Material, now: Timestamp) -> Option<Value> {
    let token = m.secret("access_token")?;
    let expires = match m.text("expires_at") {
        Some(t) => Some(Timestamp::parse(t)?),
        None => None,
    };
    if expires.is_some_and(|e| e.unix_millis() <= now.plus(REFRESH_SKEW).unix_millis()) {
        return None;
    }
    Some(json!({
        "access_token": token.expose(),
        "token_type": "Bearer",
        "expires_at": expires.map(|e| e.to_string()),
    }))
}

fn tokens_answer(t: &Tokens) -> Value {
    json!({
        "access_token": t.access_token.expose(),
        "token_type": "Bearer",
        "expires_at": t.expires_at.map(|e| e.to_string()),
    })
}

/// Refuses a credential that is not `oauth2` or does not allow `http`.
fn usable(m: &Material) -> Result<(), Problem> {
    if m.cred.kind != CredentialType::Oauth2 {
        return Err(Problem::unprocessable(
            ProblemCode::NotOauth2,
            format!(
                "credential {} is of type {}; tokens are obtained for oauth2 credentials only",
                m.path,
                m.cred.kind.as_str()
            ),
        ));
    }
    if !m.cred.allows(Usage::Http) {
        let list = match m.cred.public.get("allow_usage_for") {
            Some(v) => v.to_json().to_string(),
            None => "[]".into(),
        };
        return Err(Problem::unprocessable(
            ProblemCode::UsageNotAllowed,
            format!(
                "credential {} does not allow usage http (allow_usage_for: {list}); an access token is for HTTP requests",
                m.path
            ),
        ));
    }
    Ok(())
}

/// The message that refuses the implicit grant.
pub const IMPLICIT_REFUSED: &str = "the implicit grant is deprecated by the OAuth 2.0 Security Best Current Practice (RFC 9700 §2.1.2: access tokens in redirect URLs leak, and cannot be sender-constrained or refreshed); change the credential's grant_type to authorization_code, which this receiver runs with PKCE";

fn needs_authorization(m: &Material, why: &str) -> Problem {
    Problem::conflict(
        ProblemCode::NeedsAuthorization,
        format!(
            "credential {}: {why}; authorize it again: POST /v1/credentials{}/authorize",
            m.path, m.path
        ),
    )
}

/// The body of `POST /v1/credentials/{path}/token`, parsed: `None` for an empty body or one
/// without `rejected`, else the access token the caller says a resource server refused.
pub fn rejected_token(body: Option<&Value>) -> Result<Option<Secret>, Problem> {
    let bad = |d: &str| Problem::unprocessable(ProblemCode::BadRequestBody, d);
    let Some(body) = body else { return Ok(None) };
    let Value::Object(o) = body else {
        return Err(bad(
            "the body must be empty or an object: {\"rejected\": \"<the access token that was refused>\"}",
        ));
    };
    if let Some(k) = o.keys().find(|k| *k != "rejected") {
        return Err(bad(&format!(
            "unknown field {}; the only field is `rejected`",
            flowpack_shared::names::quoted(k)
        )));
    }
    match o.get("rejected") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Secret::new(s.clone()))),
        Some(_) => Err(bad(
            "field `rejected`: expected a string, the access token that was refused",
        )),
    }
}

/// True when `rejected` is `m`'s stored access token, compared in constant time (the
/// comparison tells nothing of the stored token but its length).
fn is_stored_token(m: &Material, rejected: Option<&Secret>) -> bool {
    use subtle::ConstantTimeEq;
    match (m.secret("access_token"), rejected) {
        (Some(stored), Some(r)) => {
            bool::from(stored.expose().as_bytes().ct_eq(r.expose().as_bytes()))
        }
        _ => false,
    }
}

/// `POST /v1/credentials/{path}/token`. With `rejected` equal to the stored access token, a
/// new one is obtained even if the stored one has not expired: the provider revoked it. Any
/// other `rejected` (an older token, already replaced) is answered with the current token.
pub async fn token(
    app: Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
    rejected: Option<Secret>,
) -> Result<Value, Problem> {
    if !who.can(Perm::Use, &c) {
        return Err(Problem::lacks(Perm::Use.as_str(), &c));
    }
    let m = blocking(&app, move |app, db| load(db.reads(), &app.keys, &c, &n)).await?;
    usable(&m)?;
    if !is_stored_token(&m, rejected.as_ref())
        && let Some(v) = fresh(&m, app.now())
    {
        return Ok(v);
    }
    let id = m.row_id()?;
    let _in_flight = app.store.lock_credential(id).await?;
    // Whoever held the lock before may have refreshed: read again. A token reported rejected
    // that is no longer the stored one was replaced meanwhile: the current one is answered.
    let m = blocking(&app, move |app, db| load_by_id(db.reads(), &app.keys, id)).await?;
    usable(&m)?;
    if !is_stored_token(&m, rejected.as_ref())
        && let Some(v) = fresh(&m, app.now())
    {
        return Ok(v);
    }
    let tokens = obtain(&app, &who.name, &m).await;
    app.metrics.refresh(crate::metrics::RefreshOutcome::of(
        tokens.as_ref().err().map(|p| p.code),
    ));
    Ok(tokens_answer(&tokens?))
}

/// Obtains a new access token for stored credential `m` (its flight lock held): refresh when
/// there is a refresh token, else the credential's own grant. Stores and audits the result.
async fn obtain(app: &Arc<App>, principal: &str, m: &Material) -> Result<Tokens, Problem> {
    let grant_type = m.text("grant_type");
    if grant_type == Some("implicit") {
        return Err(Problem::conflict(
            ProblemCode::ImplicitGrant,
            format!(
                "credential {}: its access token is missing or expired, and the receiver does not obtain tokens by the implicit grant: {IMPLICIT_REFUSED}",
                m.path
            ),
        ));
    }
    let user_flow = matches!(grant_type, Some("authorization_code") | None);
    if let Some(rt) = m.secret("refresh_token") {
        if m.needs_authorization && user_flow {
            return Err(needs_authorization(
                m,
                "its refresh token was refused by the token endpoint",
            ));
        }
        let grant = Grant::Refresh(rt);
        let tried = describe(m, grant);
        match request_token(&app.outbound, m, grant, app.now()).await {
            Ok(t) => return keep(app, principal, m, t, "refreshed").await,
            Err(e) if e.is("invalid_grant") && user_flow => {
                let why = m.scrub(&format!(
                    "the token endpoint refused its refresh token ({})",
                    e.message()
                ));
                let err = needs_authorization(m, &why);
                let row = audit_error(principal, "oauth-token", m, &err);
                let id = m.row_id()?;
                blocking(app, move |_, db| {
                    let tx = db.write()?;
                    tx.set_needs_authorization(id, true)?;
                    tx.insert_audit(&row)?;
                    tx.commit()?;
                    Ok(())
                })
                .await?;
                tracing::warn!(credential = %m.path, "refresh token refused; marked needs_authorization");
                return Err(err);
            }
            // client_credentials and password can start over without a user.
            Err(e) if e.is("invalid_grant") => {}
            Err(e) => {
                let err = e.into_api(m, &tried);
                audit(app, audit_error(principal, "oauth-token", m, &err)).await;
                return Err(err);
            }
        }
    }
    let grant = match grant_type {
        Some("client_credentials") => Grant::ClientCredentials,
        Some("password") => Grant::Password,
        Some("authorization_code") => {
            return Err(needs_authorization(
                m,
                "it has no refresh token and no valid access token",
            ));
        }
        _ => {
            return Err(Problem::unprocessable(
                ProblemCode::OauthMisconfigured,
                format!(
                    "credential {}: it has no `grant_type` and no refresh token",
                    m.path
                ),
            ));
        }
    };
    let tried = describe(m, grant);
    match request_token(&app.outbound, m, grant, app.now()).await {
        Ok(t) => keep(app, principal, m, t, "obtained").await,
        Err(e) => {
            let err = e.into_api(m, &tried);
            audit(app, audit_error(principal, "oauth-token", m, &err)).await;
            Err(err)
        }
    }
}

/// Stores obtained tokens (compare and swap) with their audit row; returns them either way:
/// a token that lost the race is still valid, it is only not kept.
async fn keep(
    app: &Arc<App>,
    principal: &str,
    m: &Material,
    tokens: Tokens,
    outcome: &'static str,
) -> Result<Tokens, Problem> {
    let detail = match tokens.expires_at {
        Some(t) => format!("access token {outcome}; expires at {t}"),
        None => format!("access token {outcome}; no expiry given"),
    };
    let row = oauth_audit(principal, "oauth-token", m, outcome, 200, detail);
    let (id, version, path, public) = (m.row_id()?, m.version, m.path.clone(), m.public.clone());
    let (kept, tokens) = blocking(app, move |app, db| {
        let tx = db.write()?;
        let kept = store_tokens(&tx, &app.keys, id, version, &path, &public, &tokens)?;
        if kept {
            tx.insert_audit(&row)?;
        }
        tx.commit()?;
        Ok((kept, tokens))
    })
    .await?;
    if !kept {
        tracing::info!(credential = %m.path, "a newer token was stored meanwhile; this one is not kept");
    }
    Ok(tokens)
}

/// `POST /v1/credentials/{path}/authorize`.
pub async fn authorize(
    app: Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
) -> Result<Value, Problem> {
    if !who.can(Perm::Write, &c) {
        return Err(Problem::lacks(Perm::Write.as_str(), &c));
    }
    let m = blocking(&app, move |app, db| load(db.reads(), &app.keys, &c, &n)).await?;
    if m.cred.kind != CredentialType::Oauth2 {
        return Err(Problem::unprocessable(
            ProblemCode::NotOauth2,
            format!(
                "credential {} is of type {}; only oauth2 credentials are authorized",
                m.path,
                m.cred.kind.as_str()
            ),
        ));
    }
    let bad = |d: String| Problem::unprocessable(ProblemCode::OauthMisconfigured, d);
    match m.text("grant_type") {
        Some("authorization_code") => {}
        Some("implicit") => {
            return Err(Problem::unprocessable(
                ProblemCode::ImplicitGrantRefused,
                format!(
                    "credential {}: no new authorization by the implicit grant: {IMPLICIT_REFUSED}",
                    m.path
                ),
            ));
        }
        other => {
            return Err(bad(format!(
                "credential {}: grant_type is {}; the authorization-code flow is for grant_type authorization_code",
                m.path,
                other.unwrap_or("not set")
            )));
        }
    }
    let field = |f: &str| {
        m.text(f)
            .ok_or_else(|| bad(format!("credential {}: field `{f}` is required", m.path)))
    };
    // The receiver sends nothing to the authorization endpoint (the browser goes there), but a
    // URL it hands out is held to the same policy as the token endpoint it will call.
    let refused = |e: UrlError| match e {
        UrlError::Invalid(d) => bad(format!("credential {}: {d}", m.path)),
        UrlError::Refused(r) => m.refusal(&r),
    };
    let mut url = app
        .outbound
        .check_url("authorization_endpoint", field("authorization_endpoint")?)
        .map_err(refused)?
        .url()
        .clone();
    app.outbound
        .check_url("token_endpoint", field("token_endpoint")?)
        .map_err(refused)?;
    let client_id = field("client_id")?.to_owned();
    let redirect_uri = field("redirect_uri")?.to_owned();

    let random = || {
        flowpack_shared::seal::random::<32>()
            .map(|b| URL_SAFE_NO_PAD.encode(b))
            .map_err(Problem::internal)
    };
    let state = zeroize::Zeroizing::new(random()?);
    let verifier = Secret::new(random()?);
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.expose().as_bytes(),
    ));
    let now = app.now();
    let expires = now.plus(STATE_LIFETIME);
    let state_hash = ring::digest::digest(&ring::digest::SHA256, state.as_bytes())
        .as_ref()
        .to_vec();
    let id = m.row_id()?;
    let mut pending = OAuthState {
        credential_id: id,
        path: m.path.clone(),
        verifier: Vec::new(),
        principal: who.name.clone(),
        expires_at_ms: expires.unix_millis(),
    };
    let row = oauth_audit(
        &who.name,
        "oauth-authorize",
        &m,
        "started",
        200,
        format!("authorization-code flow started; state expires at {expires}"),
    );
    blocking(&app, move |app, db| {
        let tx = db.write()?;
        // Encrypted inside the transaction: under the key the store names (a rotation may
        // have committed since the request began).
        pending.verifier = app
            .keys
            .encrypt(&pending.path, "pkce_code_verifier", &verifier)?;
        tx.insert_oauth_state(&state_hash, &pending, now.unix_millis())?;
        tx.insert_audit(&row)?;
        tx.commit()?;
        Ok(())
    })
    .await?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", &redirect_uri);
        if let Some(scope) = m.text("scope") {
            q.append_pair("scope", scope);
        }
        q.append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
    }
    Ok(json!({"authorize_url": url.as_str(), "expires_at": expires.to_string()}))
}

fn bad_state(detail: &str) -> Problem {
    Problem::bad_request(ProblemCode::InvalidState, detail)
}

/// The query parameters of an OAuth callback, each as read (a badly encoded one is a
/// `400 bad-query`, answered in this order: `state`, `code`, `error`).
#[derive(Debug)]
pub struct CallbackParams {
    /// `state`: authenticates the callback.
    pub state: Result<Option<String>, Problem>,
    /// `code`: the authorization code.
    pub code: Result<Option<String>, Problem>,
    /// `error`: the authorization server's refusal.
    pub error: Result<Option<String>, Problem>,
}

/// `GET /v1/oauth/callback?code=…&state=…`: no bearer token; the state authenticates it.
pub async fn callback(app: Arc<App>, q: CallbackParams) -> Result<Value, Problem> {
    let state = zeroize::Zeroizing::new(q.state?.ok_or_else(|| {
        bad_state("the callback has no `state`: it must come from a flow started with POST /v1/credentials/{path}/authorize")
    })?);
    let code = zeroize::Zeroizing::new(q.code?);
    let error = q.error?;
    let state_hash = ring::digest::digest(&ring::digest::SHA256, state.as_bytes())
        .as_ref()
        .to_vec();
    let pending = blocking(&app, move |_, db| {
        let tx = db.write()?;
        let found = tx.take_oauth_state(&state_hash)?;
        tx.commit()?;
        Ok(found)
    })
    .await?
    .ok_or_else(|| {
        bad_state("unknown state: it was never issued, was already used, or has expired; start again with POST /v1/credentials/{path}/authorize")
    })?;
    let now = app.now();
    if pending.expires_at_ms < now.unix_millis() {
        return Err(Problem::bad_request(
            ProblemCode::StateExpired,
            format!(
                "the authorization of {} took longer than {} minutes; start again with POST /v1/credentials{}/authorize",
                pending.path,
                STATE_LIFETIME.whole_minutes(),
                pending.path
            ),
        ));
    }
    let id = pending.credential_id;
    let _in_flight = app.store.lock_credential(id).await?;
    let m = blocking(&app, move |app, db| load_by_id(db.reads(), &app.keys, id)).await?;
    let principal = pending.principal.clone();
    if let Some(err) = error {
        // The callback's query comes through the browser from the authorization server (or
        // from whoever made the link): only a code of the standard vocabulary is shown, and
        // `error_description` never.
        let shown = match known_oauth_error(&err) {
            Some(code) => format!("error {code}"),
            None => "an error code outside the standard vocabulary (not shown)".to_owned(),
        };
        let e = Problem::bad_request(
            ProblemCode::AuthorizationDenied,
            m.scrub(&format!(
                "the authorization server answered {shown} for credential {}",
                m.path
            )),
        );
        audit(&app, audit_error(&principal, "oauth-callback", &m, &e)).await;
        return Err(e);
    }
    let code = code.as_ref().ok_or_else(|| {
        Problem::bad_request(ProblemCode::BadCallback, "the callback has no `code`")
    })?;
    if m.path != pending.path || m.cred.kind != CredentialType::Oauth2 {
        return Err(Problem::conflict(
            ProblemCode::CredentialChanged,
            format!(
                "credential {} changed during its authorization; start again",
                pending.path
            ),
        ));
    }
    let verifier = app
        .keys
        .decrypt(&m.path, "pkce_code_verifier", &pending.verifier)
        .ok_or_else(|| Problem::internal("a stored PKCE verifier does not open"))?;
    let redirect_uri = m.text("redirect_uri").unwrap_or_default().to_owned();
    let grant = Grant::Code {
        code,
        verifier: &verifier,
        redirect_uri: &redirect_uri,
    };
    let tried = describe(&m, grant);
    let tokens = match request_token(&app.outbound, &m, grant, now).await {
        Ok(t) => t,
        Err(e) => {
            let err = e.into_api(&m, &tried);
            audit(&app, audit_error(&principal, "oauth-callback", &m, &err)).await;
            return Err(err);
        }
    };
    let expires = tokens.expires_at;
    let row = oauth_audit(
        &principal,
        "oauth-callback",
        &m,
        "authorized",
        200,
        format!(
            "authorization code exchanged; access token {}",
            expires.map_or_else(|| "without expiry".into(), |t| format!("expires at {t}"))
        ),
    );
    let path = m.path.clone();
    let kept = blocking(&app, move |app, db| {
        let tx = db.write()?;
        let id = m.row_id()?;
        let kept = store_tokens(&tx, &app.keys, id, m.version, &m.path, &m.public, &tokens)?;
        if kept {
            tx.insert_audit(&row)?;
        }
        tx.commit()?;
        Ok(kept)
    })
    .await?;
    if !kept {
        return Err(Problem::conflict(
            ProblemCode::CredentialChanged,
            format!("credential {path} changed during its authorization; start again"),
        ));
    }
    Ok(json!({
        "authorized": path,
        "expires_at": expires.map(|t| t.to_string()),
        "message": "authorized: the receiver holds the tokens; you may close this page",
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_oauth_error_codes_are_kept() {
        assert_eq!(known_oauth_error("invalid_client"), Some("invalid_client"));
        for not in ["INVALID_CLIENT", "invalid_client ", "secret=x", ""] {
            assert_eq!(known_oauth_error(not), None, "{not:?}");
        }
        let e = TokenError::Provider {
            error: None,
            status: 400,
        };
        assert!(e.message().contains("not shown"), "{}", e.message());
    }

    #[test]
    fn basic_auth_form_encodes_id_and_secret() {
        let v = basic_auth("a b", &Secret::new("s:+&".into()));
        let b64 = v.strip_prefix("Basic ").unwrap_or_default();
        let raw = STANDARD.decode(b64).unwrap_or_default();
        assert_eq!(raw, b"a+b:s%3A%2B%26");
    }

    #[test]
    fn shown_urls_drop_query_and_user_info() {
        let u =
            reqwest::Url::parse("https://u:p@h.example/x?api_key=k#f").unwrap_or_else(|_| panic!());
        assert_eq!(shown(&u), "https://h.example/x");
    }
}
