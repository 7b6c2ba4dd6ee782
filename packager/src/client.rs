//! Talking to a receiver: the HTTP client every networked command shares (`deploy`, `ls`,
//! `get`, `audit`, `history`), its retries, and what a failure means for a script.
//!
//! A release script needs to tell "the receiver was not there" (try later) from "this token may
//! not do that" (fix the pipeline) from "the bundle conflicts with what is deployed" (package
//! again). So a failure is a [`Failure`] of a [`FailureKind`], which `main` maps to an exit
//! status (3, 4, 5; 1 for the rest) and, with `--json`, prints as a problem document on
//! standard output. The receiver's text is shown escaped and bounded: it is not ours to trust.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::cli::ServerArgs;

/// Largest answer read from the receiver. A deployment record lists every path a bundle created
/// or updated: a bundle at the entry limit (100,000) yields a few MiB, so this leaves room while
/// still bounding what a hostile server can make us hold.
pub const MAX_ANSWER: usize = 64 << 20;
/// Longest `detail` shown from a problem answer.
const MAX_DETAIL: usize = 2000;
/// The first pause between tries; it doubles with every retry, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(16);

/// What kind of failure a script is told about, by exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer: the receiver could not be reached, or did not answer in time (exit 3).
    Unreachable,
    /// 401 or 403: the token is missing, wrong, expired or lacks the grant (exit 4).
    Unauthorized,
    /// 409: stale bundle, bundle id conflict, credential in use (exit 5).
    Conflict,
    /// Any other refusal or failure (exit 1).
    Failed,
}

impl FailureKind {
    /// The process exit status for this kind.
    pub fn exit_status(self) -> u8 {
        match self {
            FailureKind::Unreachable => 3,
            FailureKind::Unauthorized => 4,
            FailureKind::Conflict => 5,
            FailureKind::Failed => 1,
        }
    }

    fn of(status: reqwest::StatusCode) -> FailureKind {
        match status.as_u16() {
            401 | 403 => FailureKind::Unauthorized,
            409 => FailureKind::Conflict,
            _ => FailureKind::Failed,
        }
    }
}

/// A failed request: its kind, a one-line reason, and the problem document (the receiver's,
/// or one made here when there was no answer) that `--json` prints on standard output.
#[derive(Debug)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// One line for standard error.
    pub line: String,
    /// The HTTP status answered, if there was an answer.
    pub status: Option<u16>,
    /// The problem document.
    pub problem: Value,
    /// Print the problem document on standard output.
    pub json: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
    }
}

impl std::error::Error for Failure {}

/// An answer with a 2xx status.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: reqwest::StatusCode,
    /// Its body, parsed (`Null` when empty or not JSON).
    pub json: Value,
}

/// A receiver to talk to.
pub struct Receiver {
    base: String,
    /// The CA file given with `--ca-cert`, named when the server's certificate is refused.
    ca: Option<PathBuf>,
    http: reqwest::Client,
    token: Zeroizing<String>,
    retries: u32,
    timeout: Duration,
    json: bool,
    /// What the failures of this command are called (`deploy`, `ls`, …).
    what: &'static str,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("base", &self.base)
            .finish()
    }
}

impl Receiver {
    /// A client for the receiver that `a` names, with its token read now.
    pub fn new(a: &ServerArgs, what: &'static str) -> anyhow::Result<Receiver> {
        let base = base_url("--server", &a.server)?;
        let token = read_token(a.token_file.as_deref())?;
        Ok(Receiver {
            base,
            ca: a.ca_cert.clone(),
            http: http_client(a.ca_cert.as_deref(), a.timeout)?,
            token,
            retries: a.retries,
            timeout: a.timeout,
            json: a.json,
            what,
        })
    }

    /// The URL of `path` (which starts with `/`, and may carry a query).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A `POST` to `url` with the token.
    pub fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.post(url).bearer_auth(&*self.token)
    }

    /// `GET path`, answered 2xx with a JSON body, or a [`Failure`].
    pub async fn get(&self, path: String) -> Result<Value, Failure> {
        let url = self.url(&path);
        self.send(|| self.http.get(&url).bearer_auth(&*self.token))
            .await
            .map(|a| a.json)
    }

    /// Sends the request `make` builds, again (a new one each time) when the receiver cannot
    /// be reached or answers 502, 503 or 504, up to `--retries` times with a growing pause.
    pub async fn send(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Answer, Failure> {
        let mut pause = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let outcome = self.once(make()).await;
            let again = match &outcome {
                Err(f) => f.kind == FailureKind::Unreachable || matches!(f.status, Some(502..=504)),
                Ok(_) => false,
            };
            if !again || attempt >= self.retries {
                return outcome;
            }
            attempt += 1;
            if let Err(f) = &outcome {
                errln!(
                    "flowpack: {} (try {attempt} of {}; again in {} s)",
                    f.line,
                    self.retries + 1,
                    pause.as_secs()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    async fn once(&self, request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        let mut resp = request.send().await.map_err(|e| self.no_answer(&e))?;
        let status = resp.status();
        // The whole answer within the timeout: a server trickling a byte at a time must not
        // hold a release script forever.
        let read = tokio::time::timeout(self.timeout, read_capped(&mut resp, MAX_ANSWER)).await;
        let body = match read {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => {
                return Err(self.failure(
                    FailureKind::of(status),
                    format!(
                        "{}: the answer is larger than {MAX_ANSWER} bytes (HTTP {status})",
                        self.what
                    ),
                    Some(status),
                    None,
                ));
            }
            Ok(Err(e)) => return Err(self.no_answer(&e)),
            Err(_) => {
                return Err(self.failure(
                    FailureKind::Unreachable,
                    format!(
                        "{}: the answer from {} did not arrive within {} s",
                        self.what,
                        self.base,
                        self.timeout.as_secs()
                    ),
                    None,
                    None,
                ));
            }
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Answer { status, json });
        }
        let problem = json.is_object().then_some(json);
        let line = problem_line(self.what, status, problem.as_ref());
        Err(self.failure(FailureKind::of(status), line, Some(status), problem))
    }

    /// A failure without an answer: the innermost cause, which says what happened ("Connection
    /// refused", a certificate problem), rather than reqwest's layers.
    fn no_answer(&self, e: &reqwest::Error) -> Failure {
        let mut root: &dyn std::error::Error = e;
        while let Some(next) = root.source() {
            root = next;
        }
        let what = if let Some(hint) = tls_hint(e, self.ca.as_deref()) {
            format!("cannot connect to {}: {hint}", self.base)
        } else if e.is_timeout() {
            format!(
                "no answer from {} within {} s",
                self.base,
                self.timeout.as_secs()
            )
        } else if e.is_connect() {
            format!("cannot connect to {}: {root}", self.base)
        } else {
            format!("request to {} failed: {root}", self.base)
        };
        // A certificate refused is not the receiver being away: trying again cannot help.
        let kind = if tls_refused(e) {
            FailureKind::Failed
        } else {
            FailureKind::Unreachable
        };
        self.failure(kind, format!("{}: {what}", self.what), None, None)
    }

    /// A failure, with the receiver's problem document or one that says the same.
    fn failure(
        &self,
        kind: FailureKind,
        line: String,
        status: Option<reqwest::StatusCode>,
        problem: Option<Value>,
    ) -> Failure {
        let problem = problem.unwrap_or_else(|| {
            let code = match kind {
                FailureKind::Unreachable => "unreachable",
                _ => "failed",
            };
            json!({
                "type": format!("urn:flowpack:problem:{code}"),
                "title": if kind == FailureKind::Unreachable { "Receiver unreachable" } else { "Request failed" },
                "status": status.map(|s| s.as_u16()),
                "detail": line,
                "code": code,
            })
        });
        Failure {
            kind,
            line,
            status: status.map(|s| s.as_u16()),
            problem,
            json: self.json,
        }
    }
}

/// True when the TLS handshake failed (a certificate not trusted, not valid for the host, a
/// plain HTTP server…), as opposed to no connection at all.
fn tls_refused(e: &reqwest::Error) -> bool {
    rustls_error(e).is_some()
}

/// The rustls error inside `e`, if the TLS handshake failed. The rustls error sits inside
/// `io::Error`s, whose `source` skips the error they wrap, so those are opened with `get_ref`.
fn rustls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    fn within<'a>(c: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            return within(inner);
        }
        c.source().and_then(within)
    }
    within(e)
}

/// What to do about a TLS handshake that failed in a way a person can fix: an `https://` URL
/// that reaches a plain HTTP server (its answer is not a TLS record), or a certificate from an
/// issuer that is not trusted. `None` for anything else, which is shown as it is.
fn tls_hint(e: &reqwest::Error, ca: Option<&Path>) -> Option<String> {
    use rustls::{CertificateError, Error};
    match rustls_error(e)? {
        // The first bytes back were not a TLS record: `HTTP/1.1 400 …` from a plain server.
        Error::InvalidMessage(_) => Some(
            "the server speaks plain HTTP, not TLS; use http:// (loopback only) or enable TLS on it"
                .to_owned(),
        ),
        // A bad signature: an issuer of the same name that did not sign it (another CA).
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => Some(match ca {
            Some(ca) => format!(
                "the server's certificate is not signed by the CA in --ca-cert {}; pass the CA \
                 that signed it",
                crate::text::path(ca)
            ),
            None => "the server's certificate is not signed by a trusted CA; pass --ca-cert PEM \
                 or set FLOWPACK_CA_CERT"
                .to_owned(),
        }),
        _ => None,
    }
}

/// The body of `resp`, or `None` when it is longer than `max` bytes.
async fn read_capped(
    resp: &mut reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The HTTP client: no redirects (a redirect would re-send neither the stream nor, rightly, the
/// token), `timeout` without progress (no connection, or no byte of an answer), and the CA
/// file's certificates as the only roots when one is given.
fn http_client(ca: Option<&Path>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .user_agent(concat!("flowpack/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        builder = builder.use_preconfigured_tls(tls_config(ca)?);
    }
    builder.build().context("setting up the HTTP client")
}

/// The sealing recipient a receiver publishes at `GET /v1/keys` (no token needed). Only over
/// TLS, or plain HTTP to a loopback address: the answer decides who can open the secrets, so
/// it must come from the receiver itself.
pub fn fetch_recipient(
    server: &str,
    ca: Option<&Path>,
) -> anyhow::Result<flowpack_shared::seal::SealingRecipient> {
    let base = base_url("--seal-to-server", server)?;
    let url = reqwest::Url::parse(&base)?;
    let loopback = match url.host_str() {
        Some(h) => {
            h.eq_ignore_ascii_case("localhost")
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    };
    if url.scheme() != "https" && !loopback {
        bail!(
            "--seal-to-server {server:?}: expected an https:// URL (plain http only to a loopback address)"
        );
    }
    const WAIT: Duration = Duration::from_secs(60);
    let http = http_client(ca, WAIT)?;
    let keys_url = format!("{base}/v1/keys");
    let v: Value = block_on(async {
        let mut resp = match http.get(&keys_url).send().await {
            Ok(resp) => resp,
            Err(e) => match tls_hint(&e, ca) {
                Some(hint) => bail!("fetching {keys_url}: {hint}"),
                None => return Err(anyhow::Error::new(e).context(format!("fetching {keys_url}"))),
            },
        };
        let status = resp.status();
        if !status.is_success() {
            bail!("{keys_url} answered HTTP {status}");
        }
        // A recipient is some 60 bytes: a few KiB is plenty, read within the wait.
        let body = tokio::time::timeout(WAIT, read_capped(&mut resp, 16 << 10))
            .await
            .map_err(|_| anyhow::anyhow!("{keys_url}: no whole answer within 60 s"))?
            .with_context(|| format!("reading {keys_url}"))?
            .ok_or_else(|| anyhow::anyhow!("{keys_url}: the answer is larger than 16 KiB"))?;
        serde_json::from_slice(&body).with_context(|| format!("{keys_url}: not JSON"))
    })??;
    let text = v
        .get("sealing_recipient")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("{keys_url}: no sealing_recipient in the answer"))?;
    flowpack_shared::seal::SealingRecipient::parse(text)
        .map_err(|e| anyhow::anyhow!("{keys_url}: sealing_recipient: {e}"))
}

/// The base URL (no trailing slash) for an http(s) URL without query, fragment or user info
/// (a password in a URL would be sent, and shown in every message that names the URL).
fn base_url(option: &str, server: &str) -> anyhow::Result<String> {
    let bad = |why: &str| anyhow::anyhow!("{option}: {why}");
    // `receiver.local:8443` parses as a URL of scheme `receiver.local`: say what is missing.
    if !server.contains("://") {
        // Echoed only when it cannot hold a password (user:password@host).
        return Err(
            if server.contains('@') || server.chars().any(char::is_control) {
                bad("the URL has no scheme; add https:// in front of the host")
            } else {
                bad(&format!(
                    "{server:?} has no scheme; add https:// (https://{server}), or http:// for a \
                 receiver on this machine's loopback address"
                ))
            },
        );
    }
    let base = reqwest::Url::parse(server).map_err(|e| bad(&e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("expected an http:// or https:// URL"));
    }
    if base.query().is_some()
        || base.fragment().is_some()
        || !base.username().is_empty()
        || base.password().is_some()
    {
        return Err(bad(
            "expected a base URL without credentials, query or fragment",
        ));
    }
    Ok(base.as_str().trim_end_matches('/').to_owned())
}

/// The bearer token: --token-file, else FLOWPACK_TOKEN, else standard input when it is not a
/// terminal. Surrounding whitespace is trimmed.
fn read_token(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    const HOW: &str =
        "pass --token-file FILE, set FLOWPACK_TOKEN, or pipe the token on standard input";
    let (raw, source) = if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("token file {}", f.display()))?;
        (Zeroizing::new(text), format!("token file {}", f.display()))
    } else if let Some(t) = std::env::var_os("FLOWPACK_TOKEN") {
        let t = t
            .into_string()
            .map_err(|_| anyhow::anyhow!("FLOWPACK_TOKEN is not valid UTF-8"))?;
        (Zeroizing::new(t), "FLOWPACK_TOKEN".to_owned())
    } else if !std::io::stdin().is_terminal() {
        let mut t = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .take(64 * 1024)
            .read_to_string(&mut t)
            .context("reading the token from standard input")?;
        if t.trim().is_empty() {
            bail!("no token: standard input is empty; {HOW}");
        }
        (t, "standard input".to_owned())
    } else {
        bail!("no token: {HOW}");
    };
    let token = raw.trim();
    if token.is_empty() {
        bail!("the token from {source} is empty");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the token from {source} is not a single word");
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// A rustls client configuration trusting the CA certificates in `ca` (PEM), with ring.
fn tls_config(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let ctx = || format!("CA certificate {}", ca.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(ctx)? {
        roots.add(cert.with_context(ctx)?).with_context(ctx)?;
    }
    if roots.is_empty() {
        bail!("CA certificate {}: no certificate found", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Text from the receiver for a terminal: control characters escaped, bounded in length.
pub fn clean(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_DETAIL).collect();
    if s.chars().count() > MAX_DETAIL {
        out.push('…');
    }
    crate::text::Escaped(&out).to_string()
}

/// One line for a non-2xx answer, from the problem's `detail` (or `title`) and `code`.
fn problem_line(what: &str, status: reqwest::StatusCode, problem: Option<&Value>) -> String {
    let verb = if status.is_client_error() {
        "refused"
    } else {
        "failed"
    };
    let field = |k: &str| problem.and_then(|p| p.get(k)).and_then(Value::as_str);
    let mut head = format!("HTTP {status}");
    if let Some(code) = field("code") {
        head.push_str(&format!(", {}", clean(code)));
    }
    match field("detail").or_else(|| field("title")) {
        Some(detail) => format!("{what} {verb} ({head}): {}", clean(detail)),
        None => format!("{what} {verb} ({head})"),
    }
}

/// Runs `f` on a runtime of its own (the commands are otherwise synchronous).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(f))
}
