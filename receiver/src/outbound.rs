//! The outbound policy: where the receiver may send a request of its own (an OAuth token
//! request, a verification request to a `verify_url`, a database check), the HTTP clients and
//! the TCP connector that enforce it, and what of a failure may be shown (docs/OUTBOUND.md).
//!
//! A credential names its destinations, and whoever may deploy or PATCH a credential could
//! otherwise point the receiver at the loopback interface, the cloud metadata service or the
//! private network behind it, and read the answers back through error messages. So:
//!
//! - Every destination must resolve to a *public* address ([`address_refusal`] lists what is
//!   not), unless its host is listed in `config.json`'s `outbound_allow` ([`AllowEntry`]).
//!   The check is made on the address actually connected to: for a host name, inside the
//!   connector, by the resolver the HTTP client uses ([`Outbound`] builds its client with
//!   it) and by [`Outbound::connect_tcp`], which connect only to the addresses they checked,
//!   so a name that resolves to a public address when checked and to a private one when
//!   connected (DNS rebinding) cannot get through. An address written in the URL is checked
//!   as the URL parser reads it, so every spelling of it (`2130706433`, `0x7f.1`,
//!   `[::ffff:127.0.0.1]`, …) is the same address.
//! - Plain `http://` only to listed hosts; URLs with user info never.
//! - No proxy, no redirect, no retry: one request goes to the one address that was checked.
//! - A failure is shown as a fixed phrase ([`SendFailure`]), never as the text of an error
//!   from the network or the provider, which may quote the URL (an API key in its query) or
//!   echo the request.

pub mod dblogin;
pub mod scrub;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Host;

use crate::config::Config;
use crate::problem::{Problem, ProblemCode};

/// Most addresses of one name that a connection tries (a name may resolve to hundreds).
pub const MAX_ADDRESSES: usize = 4;
/// How long a TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The allow-list

/// An entry of `outbound_allow`: a host name or IP address, optionally with a port
/// (`"127.0.0.1"`, `"idp.internal:8443"`, `"[::1]:9000"`). Host names match without regard
/// to case; a port, when given, must match exactly (the scheme's default port counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    host: Host<String>,
    port: Option<u16>,
}

impl AllowEntry {
    /// Whether the entry covers `host` on `port`.
    pub fn matches(&self, host: &Host<String>, port: u16) -> bool {
        self.host == *host && self.port.is_none_or(|p| p == port)
    }
}

impl FromStr for AllowEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowEntry, String> {
        let bad = |why: &str| {
            format!(
                "outbound_allow entry {s:?} is not a host, optionally with a port (like \"idp.internal:8443\" or \"[::1]:9000\"): {why}"
            )
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| bad("`[` without `]`"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?),
            };
            (format!("[{inside}]"), port)
        } else if s.parse::<Ipv6Addr>().is_ok() {
            (format!("[{s}]"), None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (s.to_owned(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            ),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let host = Host::parse(&host).map_err(|e| bad(&e.to_string()))?;
        Ok(AllowEntry { host, port })
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

impl Serialize for AllowEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AllowEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AllowEntry, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses

/// Why the policy refuses to connect to `ip` (as a phrase: "a loopback address"), or `None`
/// when `ip` is a public address. IPv4 inside IPv6 (mapped `::ffff:0:0/96`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) is judged by the IPv4 address; other IPv6 must be global
/// unicast (`2000::/3`) outside the special ranges below.
pub fn address_refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_refusal(v4),
        IpAddr::V6(v6) => v6_refusal(v6),
    }
}

/// Refused IPv4 ranges (IANA IPv4 Special-Purpose Address Registry, RFC 6890 and later).
const V4_REFUSED: &[([u8; 4], u32, &str)] = &[
    ([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
    ([10, 0, 0, 0], 8, "a private address"),
    ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address"),
    ([127, 0, 0, 0], 8, "a loopback address"),
    ([169, 254, 0, 0], 16, "a link-local address"),
    ([172, 16, 0, 0], 12, "a private address"),
    ([192, 0, 0, 0], 24, "an IETF protocol assignment address"),
    ([192, 0, 2, 0], 24, "a documentation address"),
    ([192, 88, 99, 0], 24, "a 6to4 relay anycast address"),
    ([192, 168, 0, 0], 16, "a private address"),
    ([198, 18, 0, 0], 15, "a benchmarking address"),
    ([198, 51, 100, 0], 24, "a documentation address"),
    ([203, 0, 113, 0], 24, "a documentation address"),
    ([224, 0, 0, 0], 4, "a multicast address"),
    ([255, 255, 255, 255], 32, "the broadcast address"),
    ([240, 0, 0, 0], 4, "a reserved address"),
];

fn v4_refusal(ip: Ipv4Addr) -> Option<&'static str> {
    let n = u32::from(ip);
    V4_REFUSED
        .iter()
        .find(|(net, bits, _)| {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            n & mask == u32::from_be_bytes(*net) & mask
        })
        .map(|(_, _, why)| *why)
}

/// Refused IPv6 ranges inside `2000::/3` (everything outside it is refused too).
const V6_REFUSED: &[(u128, u32, &str)] = &[
    (
        0x2001_0000 << 96,
        23,
        "an IETF protocol assignment address (Teredo, benchmarking, ORCHID, …)",
    ),
    (0x2001_0db8 << 96, 32, "a documentation address"),
    (0x3fff << 112, 20, "a documentation address"),
];

fn v6_refusal(ip: Ipv6Addr) -> Option<&'static str> {
    let n = u128::from(ip);
    let within = |net: u128, bits: u32| {
        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
        n & mask == net & mask
    };
    // The last 32 bits as IPv4, and that address's refusal.
    let embedded = |v4: u32| v4_refusal(Ipv4Addr::from(v4));
    if n == 0 {
        return Some("an unspecified address");
    }
    if n == 1 {
        return Some("a loopback address");
    }
    if within(0xffff << 32, 96) {
        return embedded(n as u32)
            .map(|_| "an IPv4-mapped IPv6 address of an address that is not public");
    }
    if within(0, 96) {
        return Some("an IPv4-compatible IPv6 address (deprecated)");
    }
    if within(0x64_ff9b << 96, 96) {
        return embedded(n as u32).map(|_| "a NAT64 address of an address that is not public");
    }
    if within(0x2002 << 112, 16) {
        return embedded((n >> 80) as u32)
            .map(|_| "a 6to4 address of an IPv4 address that is not public");
    }
    if within(0xfc00 << 112, 7) {
        return Some("a unique local (private) address");
    }
    if within(0xfe80 << 112, 10) {
        return Some("a link-local address");
    }
    if within(0xff00 << 112, 8) {
        return Some("a multicast address");
    }
    if !within(0x2000 << 112, 3) {
        return Some("not a global unicast address");
    }
    V6_REFUSED
        .iter()
        .find(|(net, bits, _)| within(*net, *bits))
        .map(|(_, _, why)| *why)
}

// ---------------------------------------------------------------------------------------------
// Refusals and failures

/// A destination the policy refuses. Its texts name the host, never a whole URL (whose query
/// may carry an API key).
#[derive(Debug, Clone)]
pub struct Refused {
    /// The host as the URL parser reads it (`127.0.0.1` for `2130706433`), or the `host`
    /// field of a database credential.
    pub host: String,
    /// Why, as a phrase.
    pub why: String,
}

impl Refused {
    fn new(host: impl fmt::Display, why: impl Into<String>) -> Refused {
        Refused {
            host: host.to_string(),
            why: why.into(),
        }
    }

    /// One line: what is refused and how an operator may allow it.
    pub fn detail(&self) -> String {
        format!(
            "outbound requests to {} are not allowed: {}; an operator who trusts this host can list it in the receiver's config.json under \"outbound_allow\"",
            self.host, self.why
        )
    }

    /// The `422 outbound-not-allowed` problem, `context` first (e.g. "credential /a/b").
    pub fn to_api(&self, context: &str) -> Problem {
        Problem::unprocessable(
            ProblemCode::OutboundNotAllowed,
            format!("{context}: {}", self.detail()),
        )
        .with("host", Value::String(self.host.clone()))
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail())
    }
}

impl std::error::Error for Refused {}

/// A host name that did not resolve (its text says no more: see [`SendFailure`]).
#[derive(Debug)]
struct Unresolved;

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host name did not resolve")
    }
}

impl std::error::Error for Unresolved {}

/// Why an outbound URL cannot be used.
#[derive(Debug, Clone)]
pub enum UrlError {
    /// Not an `http://` or `https://` URL with a host: the record is wrong.
    Invalid(String),
    /// The policy refuses it.
    Refused(Refused),
}

impl UrlError {
    /// One line.
    pub fn detail(&self) -> String {
        match self {
            UrlError::Invalid(d) => d.clone(),
            UrlError::Refused(r) => r.detail(),
        }
    }
}

/// Why a request was not answered, as a fixed phrase: the receiver shows no text from the
/// network, whose errors may quote the URL, or from the other side.
#[derive(Debug, Clone)]
pub enum SendFailure {
    /// The policy refused every address the host resolved to.
    Refused(Refused),
    /// Anything else.
    Failed(&'static str),
}

impl SendFailure {
    /// From a reqwest error: the policy's refusal if the resolver made one, otherwise a
    /// phrase chosen by the kind of error (connection, TLS, timeout).
    pub fn from_reqwest(e: &reqwest::Error) -> SendFailure {
        let mut tls = None;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Refused>() {
                return SendFailure::Refused(r.clone());
            }
            // An io::Error hides what it wraps from `source()` (tokio-rustls wraps rustls').
            let inner = s
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as &(dyn std::error::Error + 'static));
            for x in [Some(s), inner].into_iter().flatten() {
                if let Some(t) = x.downcast_ref::<rustls::Error>() {
                    tls.get_or_insert(tls_phrase(t));
                }
            }
            source = inner.or_else(|| s.source());
        }
        SendFailure::Failed(if let Some(t) = tls {
            t
        } else if e.is_connect() {
            "could not connect"
        } else if e.is_timeout() {
            "timed out waiting for the answer"
        } else if e.is_body() || e.is_decode() {
            "the connection failed while reading the answer"
        } else {
            "the request failed"
        })
    }

    /// One line.
    pub fn detail(&self) -> String {
        match self {
            SendFailure::Refused(r) => r.detail(),
            SendFailure::Failed(f) => (*f).to_owned(),
        }
    }
}

fn tls_phrase(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature | C::UnknownRevocationStatus => {
                "TLS: the server's certificate is not trusted (add its CA to extra_ca_files if it is a private CA)"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "TLS: the server's certificate is not valid for this host"
            }
            C::Expired | C::ExpiredContext { .. } => "TLS: the server's certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "TLS: the server's certificate is not valid yet"
            }
            C::Revoked => "TLS: the server's certificate is revoked",
            _ => "TLS: the server's certificate is refused",
        },
        _ => "TLS handshake failed",
    }
}

/// Why a TCP connection ([`Outbound::connect_tcp`]) was not made.
#[derive(Debug, Clone)]
pub enum TcpError {
    /// The host is not a host name or an IP address.
    Invalid(String),
    /// The policy refuses it.
    Refused(Refused),
    /// No connection: whether the name did not resolve, the port is closed or filtered, or
    /// it timed out is deliberately not told (it would make the receiver a port scanner).
    CouldNotConnect,
}

// ---------------------------------------------------------------------------------------------
// Resolving

/// Resolves `host` (a name, not an address) and keeps the addresses the policy allows
/// (every address when `filter` is false), at most [`MAX_ADDRESSES`].
async fn resolve(host: &str, port: u16, filter: bool) -> Result<Vec<SocketAddr>, BoxError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| -> BoxError { Box::new(Unresolved) })?
        .collect();
    let (kept, refused) = filter_addresses(&found, filter);
    if kept.is_empty() {
        let e: BoxError = match refused {
            Some(why) => Box::new(Refused::new(
                host,
                format!("it resolves only to addresses that are not public (such as {why})"),
            )),
            None => Box::new(Unresolved),
        };
        return Err(e);
    }
    Ok(kept)
}

/// The error type of a resolver, as reqwest takes it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The addresses kept (at most [`MAX_ADDRESSES`]) and, if any was dropped, why one was.
fn filter_addresses(found: &[SocketAddr], filter: bool) -> (Vec<SocketAddr>, Option<&'static str>) {
    let mut kept = Vec::new();
    let mut refused = None;
    for a in found {
        match address_refusal(a.ip()).filter(|_| filter) {
            Some(why) => refused = Some(why),
            None if kept.len() < MAX_ADDRESSES => kept.push(*a),
            None => {}
        }
    }
    (kept, refused)
}

/// The HTTP client's resolver: the policy's check happens here, on the addresses the
/// connector then connects to.
#[derive(Debug, Clone, Copy)]
struct CheckingResolver {
    filter: bool,
}

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let filter = self.filter;
        Box::pin(async move {
            let addrs = resolve(&host, 0, filter).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The clients

/// A checked destination: the URL and which client may send to it.
#[derive(Debug, Clone)]
pub struct Target {
    url: reqwest::Url,
    listed: bool,
}

impl Target {
    /// The URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The URL as shown in answers: without its query (where an API key may be), fragment
    /// or user info.
    pub fn shown(&self) -> String {
        shown(&self.url)
    }
}

/// A URL as shown in answers: without its query (where an API key may be), fragment or user
/// info.
pub fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// The outbound HTTP clients and the policy they enforce.
pub struct Outbound {
    /// The clients and the hosts they allow, replaced whole by [`Outbound::reload`].
    policy: arc_swap::ArcSwap<Policy>,
}

/// What `config.json` decides of outbound requests: the clients (with the extra CA
/// certificates) and the hosts listed in `outbound_allow`.
struct Policy {
    /// For unlisted hosts: https only, and its resolver refuses what is not public.
    public: reqwest::Client,
    /// For hosts listed in `outbound_allow`: any address, http allowed.
    listed: reqwest::Client,
    allow: Vec<AllowEntry>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("allow", &self.policy.load().allow)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Clients trusting the platform's roots plus `config.extra_ca_files` (each file may hold
    /// several certificates), allowing `config.outbound_allow`. Installs ring as the process's
    /// rustls provider if none is installed.
    pub fn new(config: &Config) -> anyhow::Result<Outbound> {
        Ok(Outbound {
            policy: arc_swap::ArcSwap::from_pointee(Policy::new(config)?),
        })
    }

    /// Puts `config`'s policy in force for the requests checked from now on (a reload): its
    /// `outbound_allow` and `extra_ca_files`. On an error (a CA file that cannot be read),
    /// the policy in force is kept.
    pub fn reload(&self, config: &Config) -> anyhow::Result<()> {
        self.policy.store(Arc::new(Policy::new(config)?));
        Ok(())
    }

    /// The hosts listed in `outbound_allow`.
    pub fn allowed(&self) -> Vec<AllowEntry> {
        self.policy.load().allow.clone()
    }

    fn is_listed(&self, host: &Host<String>, port: u16) -> bool {
        self.policy
            .load()
            .allow
            .iter()
            .any(|a| a.matches(host, port))
    }
}

impl Policy {
    fn new(config: &Config) -> anyhow::Result<Policy> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Fails only if another thread installed one meanwhile, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut certs = Vec::new();
        for f in &config.extra_ca_files {
            let pem = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            let found = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not PEM certificates", f.display()))?;
            if found.is_empty() {
                anyhow::bail!("{}: no certificate found", f.display());
            }
            certs.extend(found);
        }
        let build = |filter: bool| {
            reqwest::Client::builder()
                .tls_certs_merge(certs.clone())
                .dns_resolver(CheckingResolver { filter })
                // A proxy would resolve and connect in our place, past the resolver's check.
                .no_proxy()
                // A redirect would carry credentials somewhere the record does not name.
                .redirect(reqwest::redirect::Policy::none())
                // One request per attempt: a token request is not idempotent.
                .retry(reqwest::retry::never())
                .https_only(filter)
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .user_agent(concat!("flowpack-receiver/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("building the outbound HTTP client")
        };
        Ok(Policy {
            public: build(true)?,
            listed: build(false)?,
            allow: config.outbound_allow.clone(),
        })
    }
}

impl Outbound {
    /// Checks the URL in field `field` against the policy before anything is sent: an
    /// `http://` or `https://` URL without user info; `http://` only to a listed host; an IP
    /// address in it must be public unless listed. (A host name is checked when it is
    /// resolved, by the client [`Outbound::request`] picks.)
    pub fn check_url(&self, field: &str, text: &str) -> Result<Target, UrlError> {
        let url = reqwest::Url::parse(text)
            .map_err(|e| UrlError::Invalid(format!("field `{field}` is not a URL ({e})")))?;
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(UrlError::Invalid(format!(
                "field `{field}` is a {scheme}: URL; only http:// and https:// are supported"
            )));
        }
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(UrlError::Invalid(format!("field `{field}` has no host")));
        };
        let host = host.to_owned();
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Refused(Refused::new(
                &host,
                format!(
                    "the URL in field `{field}` carries user info (user:password@); put credentials in the credential's fields, not in its URLs"
                ),
            )));
        }
        let listed = self.is_listed(&host, port);
        if !listed && scheme == "http" {
            return Err(UrlError::Refused(Refused::new(
                &host,
                format!(
                    "field `{field}` is a plain http:// URL, which is allowed only to hosts listed in outbound_allow; use https://"
                ),
            )));
        }
        let ip = match &host {
            Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
            Host::Domain(_) => None,
        };
        if let Some(why) = ip.and_then(address_refusal).filter(|_| !listed) {
            return Err(UrlError::Refused(Refused::new(
                &host,
                format!("it is {why}"),
            )));
        }
        Ok(Target { url, listed })
    }

    /// A request to a checked target, on the client for it.
    pub fn request(&self, method: reqwest::Method, target: Target) -> reqwest::RequestBuilder {
        let policy = self.policy.load();
        let client = if target.listed {
            &policy.listed
        } else {
            &policy.public
        };
        client.request(method, target.url)
    }

    /// Opens a TCP connection to `host`:`port` (a database check) under the policy: the
    /// name resolved, the addresses checked (unless the host is listed with this port or
    /// none) and then connected to, at most [`MAX_ADDRESSES`] of them one after the other,
    /// all within `timeout`.
    pub async fn connect_tcp(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, TcpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (kept, _) = self.resolve_checked(host, port, timeout).await?;
        let attempt = async {
            for a in kept {
                if let Ok(s) = tokio::net::TcpStream::connect(a).await {
                    return Ok(s);
                }
            }
            Err(TcpError::CouldNotConnect)
        };
        tokio::time::timeout_at(deadline, attempt)
            .await
            .unwrap_or(Err(TcpError::CouldNotConnect))
    }

    /// The addresses of `host`:`port` that the policy lets the receiver connect to (every
    /// address of a listed host, at most [`MAX_ADDRESSES`]), and whether the host is listed:
    /// for a client that connects by itself to the addresses it is given (never resolving the
    /// name again).
    pub async fn resolve_checked(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(Vec<SocketAddr>, bool), TcpError> {
        // A bare IPv6 address is a fine `host` for a database, though not in a URL.
        let parsed = match host.parse::<Ipv6Addr>() {
            Ok(ip) => Host::Ipv6(ip),
            Err(_) => Host::parse(host).map_err(|_| {
                TcpError::Invalid(format!(
                    "field `host` ({host:?}) is not a host name or an IP address"
                ))
            })?,
        };
        let listed = self.is_listed(&parsed, port);
        let addrs = match &parsed {
            Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
            Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
            Host::Domain(d) => {
                match tokio::time::timeout(timeout, resolve(d, port, !listed)).await {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => {
                        return Err(match e.downcast::<Refused>() {
                            Ok(r) => TcpError::Refused(*r),
                            Err(_) => TcpError::CouldNotConnect,
                        });
                    }
                    Err(_) => return Err(TcpError::CouldNotConnect),
                }
            }
        };
        let (kept, refused) = filter_addresses(&addrs, !listed);
        if kept.is_empty() {
            return Err(match refused {
                Some(why) => TcpError::Refused(Refused::new(&parsed, format!("it is {why}"))),
                None => TcpError::CouldNotConnect,
            });
        }
        Ok((kept, listed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn outbound(allow: &[&str]) -> Outbound {
        let config = Config {
            outbound_allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
            ..Config::default()
        };
        Outbound::new(&config).unwrap()
    }

    fn refused(o: &Outbound, url: &str) -> Refused {
        match o.check_url("token_endpoint", url) {
            Err(UrlError::Refused(r)) => r,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn a_reload_changes_the_allowed_hosts() {
        let o = outbound(&[]);
        refused(&o, "http://127.0.0.1:9000/token");
        let listed = Config {
            outbound_allow: vec!["127.0.0.1:9000".parse().unwrap()],
            ..Config::default()
        };
        o.reload(&listed).unwrap();
        assert!(
            o.check_url("f", "http://127.0.0.1:9000/token")
                .unwrap()
                .listed
        );
        assert_eq!(o.allowed(), listed.outbound_allow);
        // A CA file that cannot be read keeps the policy in force.
        let broken = Config {
            extra_ca_files: vec!["/nonexistent/ca.pem".into()],
            ..Config::default()
        };
        let e = o.reload(&broken).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"), "{e:#}");
        assert!(
            o.check_url("f", "http://127.0.0.1:9000/token")
                .unwrap()
                .listed
        );
    }

    #[test]
    fn every_spelling_of_a_loopback_or_private_address_is_refused() {
        let o = outbound(&[]);
        // (URL, the host as the refusal names it)
        let cases = [
            ("https://127.0.0.1/", "127.0.0.1"),
            ("https://2130706433/", "127.0.0.1"),
            ("https://0x7f.1/", "127.0.0.1"),
            ("https://0x7F000001/", "127.0.0.1"),
            ("https://017700000001/", "127.0.0.1"),
            ("https://0177.0.0.1/", "127.0.0.1"),
            ("https://127.1/", "127.0.0.1"),
            ("https://127.0.0.1./", "127.0.0.1"),
            ("https://127.0.0.\t1/", "127.0.0.1"),
            ("https://%31%32%37.0.0.1/", "127.0.0.1"),
            ("https://127.0.0.1\\@idp.example.com/", "127.0.0.1"),
            ("https://[::1]/", "[::1]"),
            ("https://[0:0:0:0:0:0:0:1]:8443/", "[::1]"),
            ("https://[::ffff:127.0.0.1]/", "[::ffff:7f00:1]"),
            ("https://[::ffff:7f00:1]/", "[::ffff:7f00:1]"),
            ("https://[::ffff:10.1.2.3]/", "[::ffff:a01:203]"),
            ("https://[::127.0.0.1]/", "[::7f00:1]"),
            ("https://[64:ff9b::127.0.0.1]/", "[64:ff9b::7f00:1]"),
            ("https://[64:ff9b::a9fe:a9fe]/", "[64:ff9b::a9fe:a9fe]"),
            ("https://[2002:7f00:1::]/", "[2002:7f00:1::]"),
            ("https://[2002:c0a8:101::1]/", "[2002:c0a8:101::1]"),
            ("https://0.0.0.0/", "0.0.0.0"),
            ("https://0/", "0.0.0.0"),
            ("https://[::]/", "[::]"),
            ("https://10.0.0.1/", "10.0.0.1"),
            ("https://172.16.0.1/", "172.16.0.1"),
            ("https://172.31.255.255/", "172.31.255.255"),
            ("https://192.168.1.1/", "192.168.1.1"),
            (
                "https://169.254.169.254/latest/meta-data/",
                "169.254.169.254",
            ),
            ("https://100.64.0.1/", "100.64.0.1"),
            ("https://224.0.0.1/", "224.0.0.1"),
            ("https://255.255.255.255/", "255.255.255.255"),
            ("https://240.0.0.1/", "240.0.0.1"),
            ("https://192.0.2.1/", "192.0.2.1"),
            ("https://198.18.0.1/", "198.18.0.1"),
            ("https://[fc00::1]/", "[fc00::1]"),
            ("https://[fd12:3456::1]/", "[fd12:3456::1]"),
            ("https://[fe80::1]/", "[fe80::1]"),
            ("https://[ff02::1]/", "[ff02::1]"),
            ("https://[2001:db8::1]/", "[2001:db8::1]"),
            ("https://[2001::1]/", "[2001::1]"),
            ("https://[100::1]/", "[100::1]"),
        ];
        for (url, host) in cases {
            let r = refused(&o, url);
            assert_eq!(r.host, host, "{url}");
            assert!(
                r.detail().contains("outbound_allow"),
                "{url}: {}",
                r.detail()
            );
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_url_check() {
        let o = outbound(&[]);
        for url in [
            "https://idp.example.com/token",
            "https://8.8.8.8/",
            "https://[2606:4700::1111]/",
            "https://[::ffff:8.8.8.8]/",
            "https://[64:ff9b::8.8.8.8]/",
            "https://[2002:808:808::1]/",
            "https://172.32.0.1/",
            "https://100.128.0.1/",
            // Names are checked when they are resolved (`resolved_names_are_checked`).
            "https://localhost/",
        ] {
            assert!(o.check_url("f", url).is_ok(), "{url}");
        }
    }

    #[test]
    fn plain_http_user_info_and_other_schemes_are_refused() {
        let o = outbound(&["idp.internal:8443", "127.0.0.1"]);
        let r = refused(&o, "http://idp.example.com/token");
        assert!(r.why.contains("http://"), "{r:?}");
        let r = refused(&o, "http://idp.internal:8444/token");
        assert_eq!(r.host, "idp.internal");
        let r = refused(&o, "https://user:hunter22@idp.example.com/token?key=k");
        assert!(r.why.contains("user info"), "{r:?}");
        assert!(!r.detail().contains("hunter22") && !r.detail().contains("key=k"));
        assert!(matches!(
            o.check_url("f", "ftp://idp.example.com/"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            o.check_url("f", "not a url"),
            Err(UrlError::Invalid(_))
        ));
    }

    #[test]
    fn listed_hosts_match_by_host_case_insensitively_and_by_port_when_given() {
        let o = outbound(&["IDP.internal:8443", "127.0.0.1", "[::1]:9000"]);
        for ok in [
            "http://idp.internal:8443/token",
            "https://Idp.Internal:8443/token",
            "http://127.0.0.1:1234/token",
            "http://2130706433:1234/token",
            "http://[::1]:9000/",
        ] {
            assert!(o.check_url("f", ok).unwrap().listed, "{ok}");
        }
        for no in [
            "https://idp.internal/token",
            "https://idp.internal:9443/token",
            "http://[::1]:9001/",
            "http://localhost:1234/",
            "http://127.0.0.2/",
        ] {
            assert!(
                !o.check_url("f", no).map(|t| t.listed).unwrap_or(false),
                "{no}"
            );
        }
        // The scheme's default port counts.
        let o = outbound(&["idp.internal:443"]);
        assert!(o.check_url("f", "https://idp.internal/").unwrap().listed);
    }

    #[test]
    fn allow_entries_parse_or_name_the_entry() {
        for (text, shown) in [
            ("127.0.0.1", "127.0.0.1"),
            ("idp.internal:8443", "idp.internal:8443"),
            ("IDP.Internal", "idp.internal"),
            ("::1", "[::1]"),
            ("[::1]:9000", "[::1]:9000"),
            ("0x7f.1", "127.0.0.1"),
        ] {
            let e: AllowEntry = text.parse().unwrap();
            assert_eq!(e.to_string(), shown);
        }
        for bad in [
            "",
            "idp:",
            "idp:0",
            "idp:70000",
            "https://idp.internal",
            "idp.internal/token",
            "[::1",
            "a b",
        ] {
            let e = bad.parse::<AllowEntry>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[tokio::test]
    async fn resolved_names_are_checked_where_they_are_connected() {
        use reqwest::dns::Resolve;
        // `localhost` resolves to loopback: the resolver the client connects through
        // refuses it, and says so in a way the error chain can be read back.
        let r = CheckingResolver { filter: true };
        let e = r.resolve("localhost".parse().unwrap()).await.err().unwrap();
        let refused = e.downcast_ref::<Refused>().unwrap();
        assert_eq!(refused.host, "localhost");
        // Unfiltered (a listed host), the same name resolves.
        let r = CheckingResolver { filter: false };
        assert!(r.resolve("localhost".parse().unwrap()).await.is_ok());

        // A mix keeps only the public addresses, at most MAX_ADDRESSES.
        let mut mix: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        mix.extend((1..=9).map(|i| SocketAddr::from(([8, 8, 8, i], 1))));
        let (kept, why) = filter_addresses(&mix, true);
        assert_eq!(kept.len(), MAX_ADDRESSES);
        assert!(
            kept.iter()
                .all(|a| a.ip().to_string().starts_with("8.8.8."))
        );
        assert_eq!(why, Some("a loopback address"));
    }

    #[tokio::test]
    async fn the_client_refuses_a_name_that_resolves_to_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let o = outbound(&["127.0.0.1"]);
        // Listed by address, but reached by a name: the resolved address is checked.
        let t = o
            .check_url("f", &format!("https://localhost:{port}/token?api_key=k"))
            .unwrap();
        let e = o
            .request(reqwest::Method::POST, t)
            .send()
            .await
            .unwrap_err();
        match SendFailure::from_reqwest(&e) {
            SendFailure::Refused(r) => assert_eq!(r.host, "localhost"),
            other => panic!("{other:?}"),
        }
        // Nothing connected.
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err());
    }

    #[tokio::test]
    async fn tcp_connections_follow_the_policy_and_tell_nothing_more() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = open.local_addr().unwrap().port();
        let t = Duration::from_secs(5);
        let strict = outbound(&[]);
        for host in [
            "127.0.0.1",
            "2130706433",
            "0x7f.1",
            "localhost",
            "[::1]",
            "::1",
        ] {
            assert!(
                matches!(
                    strict.connect_tcp(host, port, t).await,
                    Err(TcpError::Refused(_))
                ),
                "{host}"
            );
        }
        assert!(matches!(
            strict.connect_tcp("db/../x", port, t).await,
            Err(TcpError::Invalid(_))
        ));
        let lenient = outbound(&[&format!("127.0.0.1:{port}"), "localhost"]);
        assert!(lenient.connect_tcp("127.0.0.1", port, t).await.is_ok());
        assert!(lenient.connect_tcp("localhost", port, t).await.is_ok());
        // Listed with another port: refused, not "could not connect".
        assert!(matches!(
            lenient
                .connect_tcp("127.0.0.1", port.wrapping_add(1).max(1), t)
                .await,
            Err(TcpError::Refused(_))
        ));
        drop(open);
        let lenient = outbound(&["127.0.0.1"]);
        assert!(matches!(
            lenient.connect_tcp("127.0.0.1", port, t).await,
            Err(TcpError::CouldNotConnect)
        ));
    }

    #[test]
    fn public_and_refused_address_tables() {
        for ok in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450::1"] {
            assert_eq!(address_refusal(ok.parse().unwrap()), None, "{ok}");
        }
        for no in [
            "192.0.0.170",
            "192.88.99.1",
            "198.51.100.7",
            "203.0.113.9",
            "239.255.255.250",
            "3fff::1",
            "fec0::1",
            "64:ff9b:1::1",
            "::ffff:0:7f00:1",
        ] {
            assert!(address_refusal(no.parse().unwrap()).is_some(), "{no}");
        }
    }
}
