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
mod router;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::App;

pub use answer::{Body, full, json_response, problem_response};
pub use router::routes;

pub(crate) use crate::blocking;

/// How long a request body may go without a byte arriving, by default ([`App::body_idle`]).
pub const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers one request (never fails: errors become problem documents).
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let (resp, who) = match router::route(app, req, &method, &path).await {
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
