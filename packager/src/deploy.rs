//! `deploy`: stream a bundle to a receiver's `POST /v1/deployments` and report the outcome.
//!
//! The token comes from a file, `FLOWPACK_TOKEN` or standard input, never from an argument
//! (SPEC §6). Failures become one line built from the receiver's `problem+json` (`detail`,
//! `code`); a raw HTTP body is never printed, since it is not ours to trust or show.

use std::io::{IsTerminal as _, Read as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::TryStreamExt as _;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::cli::DeployArgs;

/// Largest answer read from the receiver. A deployment record lists every path a bundle created
/// or updated: a bundle at the entry limit (100,000) yields a few MiB, so this leaves room while
/// still bounding what a hostile server can make us hold.
const MAX_ANSWER: usize = 64 << 20;
/// Longest `detail` shown from a problem answer.
const MAX_DETAIL: usize = 2000;

/// `flowpack deploy BUNDLE --server URL [--token-file F] [--ca-cert PEM] [--verify] [--json]`.
pub fn deploy(a: &DeployArgs) -> anyhow::Result<()> {
    let size = std::fs::metadata(&a.bundle)
        .with_context(|| format!("bundle {}", a.bundle.display()))?
        .len();
    let mut url = endpoint(&a.server)?;
    if a.verify {
        // The receiver verifies the bundle's credentials before applying it (receiver docs/OAUTH.md).
        url.set_query(Some("verify=true"));
    }
    let token = read_token(a.token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(upload(a, url, size, &token))
}

/// `URL/v1/deployments`, for an http(s) base URL without query or fragment.
fn endpoint(server: &str) -> anyhow::Result<reqwest::Url> {
    let bad = |why: &str| anyhow::anyhow!("--server {server:?}: {why}");
    let base = reqwest::Url::parse(server).map_err(|e| bad(&e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("expected an http:// or https:// URL"));
    }
    if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() {
        return Err(bad(
            "expected a base URL without credentials, query or fragment",
        ));
    }
    let joined = format!("{}/v1/deployments", base.as_str().trim_end_matches('/'));
    reqwest::Url::parse(&joined).map_err(|e| bad(&e.to_string()))
}

/// The bearer token: --token-file, else FLOWPACK_TOKEN, else standard input when it is not a
/// terminal. Surrounding whitespace is trimmed.
fn read_token(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
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
        (t, "standard input".to_owned())
    } else {
        bail!(
            "no token: pass --token-file FILE, set FLOWPACK_TOKEN, or pipe the token on standard input"
        );
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

async fn upload(a: &DeployArgs, url: reqwest::Url, size: u64, token: &str) -> anyhow::Result<()> {
    let mut builder = reqwest::Client::builder()
        // A redirect would re-send neither the stream nor (rightly) the token: refuse it.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("flowpack/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &a.ca_cert {
        builder = builder.use_preconfigured_tls(tls_config(ca)?);
    }
    let client = builder.build().context("setting up the HTTP client")?;

    let file = tokio::fs::File::open(&a.bundle)
        .await
        .with_context(|| format!("bundle {}", a.bundle.display()))?;
    let bar = crate::progress::bytes(size, "uploading");
    let tick = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file)
        .inspect_ok(move |chunk| tick.inc(chunk.len() as u64));
    let sent = client
        .post(url.clone())
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/zip")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    bar.finish_and_clear();
    let mut resp = sent.map_err(|e| send_error(&url, &e))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("reading the answer from {url}"))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            bail!("the answer from {url} is larger than {MAX_ANSWER} bytes (HTTP {status})");
        }
        body.extend_from_slice(&chunk);
    }
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    if !status.is_success() {
        bail!(problem_line(status, json.as_ref()));
    }
    let Some(record) = json.filter(Value::is_object) else {
        bail!("the receiver at {url} answered HTTP {status} without a deployment record");
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print_record(&record)?;
    }
    Ok(())
}

/// A one-line reason for a request that got no answer: the innermost cause, which says what
/// happened ("Connection refused", a certificate problem), rather than reqwest's layers.
fn send_error(url: &reqwest::Url, e: &reqwest::Error) -> anyhow::Error {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let what = if e.is_connect() {
        "cannot connect to"
    } else if e.is_timeout() {
        "timed out talking to"
    } else {
        "request failed:"
    };
    anyhow::anyhow!("deploy: {what} {url}: {root}")
}

/// Removes control characters and bounds the length of text from the receiver.
fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL)
        .collect();
    if s.chars().count() > MAX_DETAIL {
        out.push('…');
    }
    out
}

/// One line for a non-2xx answer, from the problem's `detail` (or `title`) and `code`.
fn problem_line(status: reqwest::StatusCode, problem: Option<&Value>) -> String {
    let verb = if status.is_client_error() {
        "deploy refused"
    } else {
        "deploy failed"
    };
    let field = |k: &str| problem.and_then(|p| p.get(k)).and_then(Value::as_str);
    let mut head = format!("HTTP {status}");
    if let Some(code) = field("code") {
        head.push_str(&format!(", {}", clean(code)));
    }
    match field("detail").or_else(|| field("title")) {
        Some(detail) => format!("{verb} ({head}): {}", clean(detail)),
        None => format!("{verb} ({head})"),
    }
}

fn print_record(r: &Value) -> anyhow::Result<()> {
    let text = |k: &str| r.get(k).and_then(Value::as_str).map(clean);
    let replayed = r.get("replayed").and_then(Value::as_bool).unwrap_or(false);
    let bundle = text("bundle_id").unwrap_or_else(|| "?".into());
    let container = text("container").unwrap_or_else(|| "?".into());
    if replayed {
        outln!(
            "replayed: bundle {bundle} was already applied to {container}; nothing changed (original deployment below)"
        );
    } else {
        outln!("deployed bundle {bundle} to {container}");
    }
    if let Some(id) = r.get("id") {
        let id = match id {
            Value::String(s) => clean(s),
            other => other.to_string(),
        };
        outln!("  deployment:    {id}");
    }
    for (key, label) in [
        ("created", "created"),
        ("updated", "updated"),
        ("needs_secrets", "needs secrets"),
    ] {
        let items: Vec<String> = r
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
            .unwrap_or_default();
        if items.is_empty() {
            outln!("  {label:<14} (none)");
        } else {
            for (i, item) in items.iter().enumerate() {
                let l = if i == 0 { label } else { "" };
                outln!("  {l:<14} {item}");
            }
        }
    }
    if r.get("needs_secrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        outln!(
            "  (credentials that need secrets: an admin fills them in with PATCH /v1/credentials/…)"
        );
    }
    Ok(())
}
