//! Every call the admin page makes into the services, in one place: the same functions the
//! API's handlers call, with the same principal, so the page's rules are the API's. Each
//! returns the service's answer (the JSON the API would send) or its `Problem`.

use std::sync::Arc;

use flowpack_shared::names::{ContainerPath, Name};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::App;
use crate::blocking;
use crate::problem::Problem;
use crate::service::auth::{self, Perm, Principal};
use crate::service::catalog::{self, Page};
use crate::service::{creds, deploy, oauth, rollback, verify};
use crate::store::DeploymentId;

fn parse(bytes: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(bytes).map_err(Problem::internal)
}

/// The principal `token` belongs to, checked as every API request checks it.
pub async fn authenticate(
    app: &Arc<App>,
    token: Zeroizing<String>,
) -> Result<Option<Principal>, Problem> {
    blocking(app, move |_, db| {
        Ok(auth::authenticate(db.reads(), &token)?)
    })
    .await
}

pub async fn container(app: &Arc<App>, who: Principal, c: ContainerPath) -> Result<Value, Problem> {
    blocking(app, move |_, db| {
        catalog::show_container(db.reads(), &who, &c)
    })
    .await
}

pub async fn mapping(
    app: &Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
) -> Result<Value, Problem> {
    blocking(app, move |_, db| {
        catalog::show_mapping(db.reads(), &who, &c, &n)
    })
    .await
}

pub async fn credential(
    app: &Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
) -> Result<Value, Problem> {
    let bytes = blocking(app, move |_, db| {
        catalog::show_credential(db.reads(), &who, &c, &n)
    })
    .await?;
    parse(&bytes)
}

/// `PATCH`: fills in or changes fields.
pub async fn patch_credential(
    app: &Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
    body: Value,
) -> Result<Value, Problem> {
    let bytes = blocking(app, move |app, db| {
        catalog::patch_credential(app, db, &who, &c, &n, &body)
    })
    .await?;
    parse(&bytes)
}

/// `PUT`: creates a credential.
pub async fn create_credential(
    app: &Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
    body: Value,
    secrets_allowed: bool,
) -> Result<Value, Problem> {
    let bytes = blocking(app, move |app, db| {
        creds::create(&app.keys, db, &who, &c, &n, &body, secrets_allowed)
    })
    .await?;
    parse(&bytes)
}

pub async fn verify(
    app: &Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
) -> Result<Value, Problem> {
    verify::handle(app.clone(), who, c, n).await
}

pub async fn authorize(
    app: &Arc<App>,
    who: Principal,
    c: ContainerPath,
    n: Name,
) -> Result<Value, Problem> {
    oauth::authorize(app.clone(), who, c, n).await
}

pub async fn callback(app: &Arc<App>, q: oauth::CallbackParams) -> Result<Value, Problem> {
    oauth::callback(app.clone(), q).await
}

pub async fn deployments(app: &Arc<App>, who: Principal, page: Page) -> Result<Value, Problem> {
    blocking(app, move |_, db| {
        catalog::list_deployments(db.reads(), &who, &page)
    })
    .await
}

pub async fn deployment(
    app: &Arc<App>,
    who: Principal,
    id: DeploymentId,
) -> Result<Value, Problem> {
    blocking(app, move |_, db| {
        catalog::show_deployment(db.reads(), &who, id)
    })
    .await
}

pub async fn audit(app: &Arc<App>, who: Principal, page: Page) -> Result<Value, Problem> {
    blocking(app, move |_, db| {
        catalog::list_audit(db.reads(), &who, &page)
    })
    .await
}

/// Refuses a plan (audited and counted, as `POST /v1/deployments` does) unless the principal
/// may write somewhere: checked before anything of the upload is read.
pub fn may_plan(app: &Arc<App>, who: &Principal) -> Result<(), Problem> {
    if who.has_any(Perm::Write) {
        return Ok(());
    }
    let refused = deploy::refuse(
        app,
        who,
        true,
        Problem::forbidden("you lack `write` on every container"),
    );
    count_plan(app, Err(&refused));
    Err(refused)
}

/// Counts a plan's outcome in the metrics, as the API counts a dry run.
fn count_plan(app: &App, answer: Result<(), &Problem>) {
    let status = answer.map_or_else(|p| p.status.as_u16(), |()| 200);
    app.metrics
        .deployment(crate::metrics::DeployOutcome::of_answer(status, true));
}

/// The plan of the bundle spooled in `spooled` (a dry run: nothing but an audit row is
/// written); [`may_plan`] was asked first.
pub async fn plan(
    app: &Arc<App>,
    who: Principal,
    spooled: crate::service::upload::Spooled,
    secrets_allowed: bool,
) -> Result<Value, Problem> {
    let planned = deploy::deploy(
        app.clone(),
        who,
        crate::service::upload::Upload::File(spooled),
        false,
        true,
        secrets_allowed,
    )
    .await;
    count_plan(app, planned.as_ref().map(drop));
    planned.map(|(_, plan)| plan)
}

pub async fn rollback(app: &Arc<App>, who: Principal, id: DeploymentId) -> Result<Value, Problem> {
    rollback::rollback(app.clone(), who, id).await
}
