//! `GET /readyz`: whether the receiver can serve, by a round trip to its store.
//!
//! The check reads the database on a pooled connection, on a blocking thread like every store
//! access, and checks that the database file is still the one opened
//! ([`App::check_store`](crate::App::check_store)). It is answered `503` when the store fails
//! or does not answer within
//! [`App::ready_timeout`](crate::App::ready_timeout). Only one check runs at a time: while a
//! check is still waiting for the store (SQLite waits up to its busy timeout for a lock held
//! by another process), further probes are answered `503` at once instead of each taking a
//! blocking thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::{Response, StatusCode};
use serde_json::json;

use crate::App;
use crate::problem::{Problem, ProblemCode};

use super::{Body, json_response};

/// Clears the in-flight flag when the check's blocking work ends (or is dropped unrun).
struct Probing(Arc<App>);

impl Drop for Probing {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

fn not_ready(detail: String) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ProblemCode::NotReady,
        detail,
    )
}

/// Answers `GET /readyz`.
pub(super) async fn answer(app: &Arc<App>) -> Result<Response<Body>, Problem> {
    if app.probing.swap(true, Ordering::AcqRel) {
        return Err(not_ready(
            "the store has not answered the previous readiness check yet".into(),
        ));
    }
    let probing = Probing(app.clone());
    let check = app.spawn_blocking(move || probing.0.check_store());
    let timeout = app.ready_timeout;
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(Ok(()))) => Ok(json_response(
            StatusCode::OK,
            &json!({
                "status": "ready",
                "version": env!("CARGO_PKG_VERSION"),
                "store": "sqlite",
            }),
        )),
        Ok(Ok(Err(e))) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "readiness check: the store failed"
            );
            Err(not_ready(
                "the store failed; the receiver's log has the cause".into(),
            ))
        }
        Ok(Err(e)) => Err(Problem::internal(e)),
        Err(_) => {
            tracing::warn!(
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "readiness check: the store did not answer in time"
            );
            Err(not_ready(format!(
                "the store did not answer within {} ms",
                timeout.as_millis()
            )))
        }
    }
}
