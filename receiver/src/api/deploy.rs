//! `POST /v1/deployments` as HTTP: the request's query, content type and declared length are
//! checked, then the body is received, bounded by the configured bundle size (a small one in
//! memory, a larger one spooled, sealed, to a temporary file in the data directory, see
//! [`UploadBuffer`]), and handed to [`deploy::deploy`]. Every refusal is audited
//! ([`deploy::refuse`]).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};

use crate::App;
use crate::metrics::DeployOutcome;
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{Perm, Principal};
use crate::service::deploy::{self, Outcome};
use crate::service::upload::{Spooled, Upload, UploadBuffer};

use super::extract::{declared_length, next_frame, query_params};
use super::{Body, json_response};

/// The next data of `body`, counted into `total`; a body over `max` bytes is an error; `None`
/// at its end.
async fn next_data(
    app: &Arc<App>,
    body: &mut Incoming,
    total: &mut u64,
    max: u64,
) -> Result<Option<bytes::Bytes>, Problem> {
    while let Some(frame) = next_frame(app, body).await {
        if let Ok(data) = frame?.into_data() {
            *total += data.len() as u64;
            if *total > max {
                return Err(deploy::too_large(max));
            }
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// Receives the body: in memory when it declared a length small enough, otherwise into a
/// spool file.
async fn receive(
    app: &Arc<App>,
    mut body: Incoming,
    declared: Option<u64>,
    max: u64,
) -> Result<Upload, Problem> {
    let mut total: u64 = 0;
    if let Some(mut buffer) = declared.and_then(UploadBuffer::for_length) {
        while let Some(data) = next_data(app, &mut body, &mut total, max).await? {
            buffer.extend(&data)?;
        }
        return Ok(buffer.into_upload());
    }
    let (spooled, mut file) = Spooled::create(app).await?;
    while let Some(data) = next_data(app, &mut body, &mut total, max).await? {
        file.write(&data).await?;
    }
    file.finish().await?;
    Ok(Upload::File(spooled))
}

/// `POST /v1/deployments`: checks the request, spools the body, then deploys it; counts the
/// outcome in the metrics (a dry run that answers its plan as `planned`).
pub(super) async fn handle(
    app: Arc<App>,
    who: Principal,
    req: Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    let mut dry_run = false;
    let answered = answer(app.clone(), who, req, &mut dry_run).await;
    let status = match &answered {
        Ok(r) => r.status(),
        Err(p) => p.status,
    };
    app.metrics
        .deployment(DeployOutcome::of_answer(status.as_u16(), dry_run));
    answered
}

/// The deploy itself; sets `dry_run` once the query says so.
async fn answer(
    app: Arc<App>,
    who: Principal,
    req: Request<Incoming>,
    dry_run_asked: &mut bool,
) -> Result<Response<Body>, Problem> {
    let transport = req.extensions().get::<super::Transport>().copied();
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let query = match query_params(&req, &["verify", "dry_run"]) {
        Ok(q) => q,
        Err(e) => {
            // A query refused as a whole is still audited as a refused plan when it asked for one.
            let asked = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|pair| pair == "dry_run=true"));
            return Err(deploy::refuse(&app, &who, asked, e));
        }
    };
    let flag = |name: &str| match query.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(Problem::bad_request(
            ProblemCode::BadQuery,
            format!("`{name}` is `true` or `false`"),
        )),
    };
    // Refusals of a request that asked for a dry run are audited as refused plans.
    let planned = flag("dry_run").unwrap_or(false);
    let refuse = |e: Problem| deploy::refuse(&app, &who, planned, e);
    let (verify, dry_run) = match (flag("verify"), flag("dry_run")) {
        (Ok(true), Ok(true)) => {
            return Err(refuse(Problem::bad_request(
                ProblemCode::BadQuery,
                "`dry_run` and `verify` cannot be combined: a verification may have to store the token it obtained, and a dry run writes nothing; plan first, then deploy with `verify=true`",
            )));
        }
        (Ok(verify), Ok(dry_run)) => {
            *dry_run_asked = dry_run;
            (verify, dry_run)
        }
        (Err(e), _) | (_, Err(e)) => return Err(refuse(e)),
    };
    if ct.as_deref() != Some("application/zip") {
        return Err(refuse(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemCode::UnsupportedMediaType,
            "a bundle is sent as Content-Type: application/zip",
        )));
    }
    if !who.has_any(Perm::Write) {
        return Err(refuse(Problem::forbidden(
            "you lack `write` on every container",
        )));
    }
    let max = app.config().limits.max_bundle_size;
    let declared = declared_length(&req);
    if declared.is_some_and(|n| n > max) {
        return Err(refuse(deploy::too_large(max)));
    }

    let upload = receive(&app, req.into_body(), declared, max)
        .await
        .map_err(refuse)?;
    let secrets_allowed = transport.is_some_and(|t| t.may_carry_secrets());
    let (outcome, record) =
        deploy::deploy(app, who, upload, verify, dry_run, secrets_allowed).await?;
    let status = match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::Replayed | Outcome::Planned => StatusCode::OK,
    };
    Ok(json_response(status, &record))
}
