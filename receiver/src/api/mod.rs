//! Everything HTTP: the API's routes (see [`routes`] and `router.rs`, the one place that lists
//! them), the extractors that parse what a request carries, problem+json and JSON answers, the
//! credential read queue and mapping-file streaming.
//!
//! Everything that touches the database runs on a blocking thread with its own
//! [`Db`](crate::store::Db) handle, tracked so that shutdown waits for it: through
//! `crate::blocking`, or for a credential read, through the queue that at most one blocking
//! thread per core drains (`reads.rs`). Mapping files are streamed from a blocking thread
//! through a bounded channel. URL paths are parsed into `ContainerPath`/`Name`/`RelPath` before
//! anything else looks at them and are never used to build a filesystem path. Client faults get
//! a precise, safe `detail`; internal faults get a generic 500 and a log line.

mod answer;
mod deploy;
mod extract;
mod files;
mod reads;
mod ready;
mod request_id;
mod router;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::App;

pub use answer::{Body, full, json_response, problem_response};
pub use request_id::X_REQUEST_ID;
pub use router::{route_labels, routes};

pub(crate) use crate::blocking;
// The request helpers the admin page (`crate::ui`) shares with the API.
pub(crate) use extract::{
    before_param, container_path, declared_length, limit_param, next_frame, object_path,
    query_params,
};
pub(crate) use router::deployment_id;

/// How a request reached the receiver, put into each request's extensions by `run`: the
/// client's address and whether the connection is TLS. Handlers that may take secrets in clear
/// (`PUT /v1/credentials/{path}`, and `POST /v1/deployments` for a bundle packaged with
/// `--plaintext-secrets`) read it; a request without it is treated as neither TLS nor
/// loopback.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// The client's address, as the socket reports it.
    pub peer: std::net::SocketAddr,
    /// The connection is TLS.
    pub tls: bool,
}

impl Transport {
    /// Whether a request may carry secrets in clear: over TLS, or from a loopback client
    /// (which never crossed a network; an IPv4-mapped IPv6 loopback address counts).
    pub fn may_carry_secrets(&self) -> bool {
        self.tls || self.peer.ip().to_canonical().is_loopback()
    }
}

/// How long a request body may go without a byte arriving, by default ([`App::body_idle`]).
pub const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers one request from `peer` (never fails: errors become problem documents), counts it
/// in the metrics and logs it: one line per request, with its request id (also sent back as
/// `X-Request-Id`), the client's address, the route's template, the path (never the query,
/// where a secret may be), the status, the principal and the duration.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let id = request_id::RequestId::of(&req);
    let mut matched = None;
    let (mut resp, who) = match router::route(app.clone(), req, &method, &path, &mut matched).await
    {
        Ok((r, who)) => (r, who),
        Err((e, who)) => (problem_response(e), who),
    };
    let took = started.elapsed();
    let status = resp.status().as_u16();
    app.metrics.request(matched, status, took);
    resp.headers_mut()
        .insert(X_REQUEST_ID, id.header_value().clone());
    tracing::info!(
        %method,
        path = %path,
        status,
        principal = who.as_deref().unwrap_or("-"),
        ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        request_id = %id.as_str(),
        client = %peer,
        route = %router::template(matched),
        "request"
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::Transport;

    #[test]
    fn secrets_in_clear_only_over_tls_or_from_loopback() {
        let at = |a: &str, tls: bool| Transport {
            peer: a.parse().unwrap_or_else(|_| panic!("{a}")),
            tls,
        };
        for (peer, tls, ok) in [
            ("127.0.0.1:5000", false, true),
            ("127.9.9.9:5000", false, true),
            ("[::1]:5000", false, true),
            ("[::ffff:127.0.0.1]:5000", false, true),
            ("192.0.2.7:5000", false, false),
            ("[2001:db8::1]:5000", false, false),
            ("[::ffff:192.0.2.7]:5000", false, false),
            ("192.0.2.7:5000", true, true),
        ] {
            assert_eq!(at(peer, tls).may_carry_secrets(), ok, "{peer} tls={tls}");
        }
    }
}
