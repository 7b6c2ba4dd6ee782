//! `POST /v1/deployments`: verify → decide → apply, in one transaction.
//!
//! The body is spooled to a temporary file in the data directory (never held in memory),
//! bounded by the configured bundle size. Then, on the blocking pool ([`prepare`]): the
//! bundle's structure, signature and signer trust are checked with trust read from the
//! database, and the caller's `write` grant on the target; a standalone credential bundle's
//! payload is read and its sealed values opened. Then, as a job of the store's group committer
//! ([`crate::store::Store::write_grouped`], which serializes it with every other deploy, so
//! none can race the replay and staleness checks): replay, expiry and staleness, then the
//! payload is written (a mapping bundle's files streamed straight from the spool file), all in
//! one savepoint. A refusal undoes that savepoint and records its audit row in the same
//! transaction; the answer waits for the transaction to be durable.
//!
//! With `?verify=true` (`flowpack deploy --verify`), every credential that carries secrets is
//! verified first ([`crate::verify`]) as it will be after the apply (the bundle's fields over
//! the stored secrets); one failure refuses the whole bundle (422
//! `credential-verification-failed`) before anything is written. Verification runs outside the
//! write transaction, so slow endpoints never hold the database's writer lock.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Seek, SeekFrom};
use std::sync::Arc;

use flowpack_shared::bundle::read::{OpenBundle, Payload, TrustedSigner};
use flowpack_shared::bundle::{BundleError, BundleKind};
use flowpack_shared::keys::{KeyId, VerifyingKey};
use flowpack_shared::names::{ContainerPath, Name};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::App;
use crate::auth::{Perm, Principal};
use crate::creds;
use crate::http::{ApiError, Body, json_response};
use crate::oauth::{Material, Tokens};
use crate::store::{AuditRow, Db, Tx};

/// Clock skew allowed for `created_at` (SPEC §4).
const SKEW: time::Duration = time::Duration::minutes(5);

/// SQLite's default largest blob; a bigger mapping file cannot be stored.
const MAX_FILE: u64 = 1_000_000_000;

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        format!("the bundle is larger than this receiver's limit of {max} bytes"),
    )
}

/// Handles the request: checks, spools, then applies on a blocking thread.
pub async fn handle(
    app: Arc<App>,
    who: Principal,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let refuse = |app: &Arc<App>, who: &Principal, e: ApiError| {
        // The answer does not wait for the row: the job is queued once `audit` returns.
        drop(audit(app, refusal_row(who, None, &e)));
        e
    };
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
    let verify = match crate::http::query_param(&req, "verify")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(refuse(
                &app,
                &who,
                ApiError::bad_request("bad-query", "`verify` is `true` or `false`"),
            ));
        }
    };
    if ct.as_deref() != Some("application/zip") {
        return Err(refuse(
            &app,
            &who,
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "a bundle is sent as Content-Type: application/zip",
            ),
        ));
    }
    if !who.has_any(Perm::Write) {
        return Err(refuse(
            &app,
            &who,
            ApiError::forbidden("you lack `write` on every container"),
        ));
    }
    let max = app.config.limits.max_bundle_size;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(refuse(&app, &who, too_large(max)));
    }

    let spool = app.dir.spool();
    let tmp = app
        .spawn_blocking(move || tempfile::NamedTempFile::new_in(spool))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("creating a spool file: {e}")))?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(ApiError::internal)?);
    let mut body = req.into_body();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request("body-read", format!("reading the request body failed: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > max {
                return Err(refuse(&app, &who, too_large(max)));
            }
            file.write_all(&data).await.map_err(ApiError::internal)?;
        }
    }
    file.flush().await.map_err(ApiError::internal)?;
    drop(file);

    let obtained = if verify {
        let file = tmp.reopen().map_err(ApiError::internal)?;
        verify_bundle(&app, &who, file).await?
    } else {
        HashMap::new()
    };

    // Verification, and a credential bundle's payload, on the blocking pool (in parallel);
    // then the decisions and the writes in the group committer's next transaction.
    let worker = app.clone();
    let caller = who.clone();
    let prepared = app
        .spawn_blocking(move || prepare(&worker, &caller, tmp))
        .await
        .map_err(ApiError::internal)?;
    let worker = app.clone();
    let (status, record) = app
        .store
        .write_grouped(app.work_token(), move |tx| {
            let result = match prepared {
                Ok(p) => tx.savepoint(|tx| apply(&worker, tx, &who, p, &obtained))?,
                Err(failed) => Err(failed),
            };
            result.map_err(|(e, info)| {
                // Kept: only `apply`'s savepoint was undone.
                if let Err(ae) = tx.insert_audit(&refusal_row(&who, info.as_deref(), &e)) {
                    tracing::error!(error = %ae, "writing an audit row failed");
                }
                e
            })
        })
        .await?;
    Ok(json_response(status, &record))
}

/// What was read of the manifest, for the audit trail.
#[derive(Debug, Clone)]
struct BundleInfo {
    bundle_id: String,
    signer: String,
    container: ContainerPath,
}

fn refusal_row(who: &Principal, info: Option<&BundleInfo>, e: &ApiError) -> AuditRow {
    AuditRow {
        principal: Some(who.name.clone()),
        action: "deploy".into(),
        container: info.map(|i| i.container.to_string()),
        bundle_id: info.map(|i| i.bundle_id.clone()),
        signer_key_id: info.map(|i| i.signer.clone()),
        outcome: "refused".into(),
        status: e.status.as_u16(),
        code: Some(e.code.clone()),
        detail: Some(e.detail.clone()),
        ..AuditRow::default()
    }
}

/// Queues an audit row for the group committer's next transaction (a failure is logged). The
/// row is queued when this returns; the future resolves once it is durable.
fn audit(app: &App, row: AuditRow) -> impl Future<Output = ()> + use<> {
    let written = app.store.write_grouped(app.work_token(), move |tx| {
        tx.insert_audit(&row)
            .inspect_err(|e| tracing::error!(error = %e, "writing an audit row failed"))
    });
    async move {
        let _ = written.await;
    }
}

type Failed = (ApiError, Option<Box<BundleInfo>>);

fn trusted(db: &Db, id: &KeyId) -> Option<TrustedSigner> {
    let (key, containers) = match db.signer(&id.to_string()) {
        Ok(Some(x)) => x,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, "reading trusted signers failed");
            return None;
        }
    };
    let key: [u8; 32] = key.as_slice().try_into().ok()?;
    let list: Vec<String> = serde_json::from_str(&containers).ok()?;
    let containers = list
        .iter()
        .filter_map(|c| ContainerPath::parse(c).ok())
        .collect();
    Some(TrustedSigner {
        key: VerifyingKey::from_bytes(key),
        containers,
    })
}

/// For a refusal of the signer's trust, what the manifest says (for the audit trail: which
/// key, which container). Other refusals record no bundle: its manifest was not read.
fn trust_info(
    e: &BundleError,
    spooled: &tempfile::NamedTempFile,
    limits: &flowpack_shared::zipfmt::Limits,
) -> Option<Box<BundleInfo>> {
    if !matches!(
        e,
        BundleError::UnknownSigner(_) | BundleError::SignerNotAllowed(..)
    ) {
        return None;
    }
    let file = spooled.reopen().ok()?;
    let b = OpenBundle::open_unverified(BufReader::new(file), limits).ok()?;
    let m = b.manifest();
    Some(Box::new(BundleInfo {
        bundle_id: m.bundle_id.to_string(),
        signer: m.signer_key_id.to_string(),
        container: m.target_container.clone(),
    }))
}

/// Verifies the credentials of a spooled bundle (`?verify=true`). Returns the tokens that
/// refreshes obtained, by credential name, to store with the apply; refuses the bundle when a
/// verification fails. A bundle that will be refused anyway (unreadable, untrusted, not
/// allowed, or a replay) is left to [`apply`] to answer.
async fn verify_bundle(
    app: &Arc<App>,
    who: &Principal,
    file: std::fs::File,
) -> Result<HashMap<String, Tokens>, ApiError> {
    let worker = app.clone();
    let caller = who.clone();
    let found = app
        .spawn_blocking(move || -> Result<_, ApiError> {
            let db = worker.store.db()?;
            candidates(&worker, &db, &caller, file)
        })
        .await
        .map_err(ApiError::internal)??;
    let Some((info, materials)) = found else {
        return Ok(HashMap::new());
    };
    let now = app.now();
    let results = futures_util::future::join_all(
        materials
            .iter()
            .map(|m| crate::verify::check(&app.outbound, m, now)),
    )
    .await;
    let report: Vec<Value> = materials
        .iter()
        .zip(&results)
        .map(|(m, v)| {
            let mut j = v.to_json();
            if let Value::Object(o) = &mut j {
                o.insert("credential".into(), Value::String(m.path.clone()));
            }
            j
        })
        .collect();
    let failures: Vec<String> = materials
        .iter()
        .zip(&results)
        .filter(|(_, v)| !v.ok)
        .map(|(m, v)| {
            format!(
                "credential {}: tried {}: {}",
                m.path,
                v.tried,
                v.error.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    if !failures.is_empty() {
        let e = ApiError::unprocessable(
            "credential-verification-failed",
            format!(
                "the bundle is refused, nothing was applied: {}",
                failures.join("; ")
            ),
        )
        .with("verifications", Value::Array(report));
        // Awaited: the audit trail shows the refusal by the time it is answered.
        audit(app, refusal_row(who, Some(&info), &e)).await;
        return Err(e);
    }
    Ok(materials
        .iter()
        .zip(results)
        .filter_map(|(m, v)| Some((m.cred.name.to_string(), v.obtained?)))
        .collect())
}

/// The credentials of a bundle that carry secrets, as they will be after the apply: the
/// bundle's fields and secrets over the secrets stored for a credential of the same name and
/// type. `None` when the bundle will be refused anyway.
fn candidates(
    app: &App,
    db: &Db,
    who: &Principal,
    file: std::fs::File,
) -> Result<Option<(BundleInfo, Vec<Material>)>, ApiError> {
    let limits = app.config.limits.to_limits();
    let lookup = |id: &KeyId| trusted(db, id);
    let Ok(mut bundle) = OpenBundle::open(BufReader::new(file), &limits, &lookup) else {
        return Ok(None);
    };
    let m = bundle.manifest().clone();
    let target = &m.target_container;
    if !who.can(Perm::Write, target) || db.deployment_by_bundle(m.bundle_id.as_str())?.is_some() {
        return Ok(None);
    }
    let mut drain =
        |_: &Name,
         _: &flowpack_shared::names::RelPath,
         _: u64,
         data: &mut dyn std::io::Read|
         -> std::io::Result<()> { std::io::copy(data, &mut std::io::sink()).map(|_| ()) };
    let Ok(payload) = bundle.read_payload(Some(&app.identity), &mut drain) else {
        return Ok(None);
    };
    let cid = db.container_id(target)?;
    let mut out = Vec::new();
    for c in payload.credentials.iter().filter(|c| !c.needs_secrets()) {
        let path = target.object_path(&c.name);
        let stored = match cid {
            Some(cid) => db
                .credential(cid, c.name.as_str())?
                .filter(|r| r.kind == c.kind.as_str()),
            None => None,
        };
        let mut secrets = BTreeMap::new();
        if let Some(row) = &stored {
            for s in db.secrets(row.id)? {
                if let Some(v) = app.keys.decrypt(&path, &s.field, &s.ciphertext) {
                    secrets.insert(s.field, v);
                }
            }
        }
        for (field, value) in &c.secrets {
            if let flowpack_shared::model::credential::SecretValue::Plain(v) = value {
                secrets.insert((*field).to_owned(), v.clone());
            }
        }
        let mut public_only = c.clone();
        public_only.secrets.clear();
        out.push(Material {
            id: stored.as_ref().map(|r| r.id),
            version: stored.as_ref().map_or(0, |r| r.token_version),
            container: target.clone(),
            path,
            public: c.public_json(),
            cred: public_only,
            secrets,
            needs_authorization: false,
        });
    }
    let info = BundleInfo {
        bundle_id: m.bundle_id.to_string(),
        signer: m.signer_key_id.to_string(),
        container: target.clone(),
    };
    Ok(Some((info, out)))
}

/// A bundle verified outside the writer's transaction, waiting to be applied.
struct Prepared {
    bundle: OpenBundle<BufReader<std::fs::File>>,
    info: BundleInfo,
    /// A standalone credential bundle's payload, read (sealed values opened) before joining the
    /// writer's queue; its error is reported only after the replay and staleness checks, as
    /// when it is read in the transaction. `None` for a mapping bundle: its files are streamed
    /// into the transaction.
    payload: Option<Result<Payload, BundleError>>,
    /// The spool file, removed once the bundle is applied or refused.
    _spooled: tempfile::NamedTempFile,
}

/// Checks a spooled bundle's structure, signature and signer trust, and the caller's `write`
/// grant on its target; reads a standalone credential bundle's payload.
fn prepare(
    app: &App,
    who: &Principal,
    spooled: tempfile::NamedTempFile,
) -> Result<Prepared, Failed> {
    let db = app.store.db().map_err(|e| (e.into(), None))?;
    let mut file = spooled
        .reopen()
        .map_err(|e| (ApiError::internal(e), None))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| (ApiError::internal(e), None))?;
    let limits = app.config.limits.to_limits();
    let mut bundle = {
        let lookup = |id: &KeyId| trusted(&db, id);
        OpenBundle::open(BufReader::new(file), &limits, &lookup)
            .map_err(|e| (trust_info(&e, &spooled, &limits), e))
            .map_err(|(info, e)| (ApiError::from(e), info))?
    };
    drop(db);
    let m = bundle.manifest();
    let info = BundleInfo {
        bundle_id: m.bundle_id.to_string(),
        signer: m.signer_key_id.to_string(),
        container: m.target_container.clone(),
    };
    if !who.can(Perm::Write, &m.target_container) {
        let e = ApiError::lacks(Perm::Write, &m.target_container);
        return Err((e, Some(Box::new(info))));
    }
    let payload = (m.kind == BundleKind::Credentials).then(|| {
        // A credential bundle with mapping files is refused once read (`bad-record`).
        let mut drain = |_: &Name,
                         _: &flowpack_shared::names::RelPath,
                         _: u64,
                         data: &mut dyn std::io::Read|
         -> std::io::Result<()> {
            std::io::copy(data, &mut std::io::sink()).map(|_| ())
        };
        bundle.read_payload(Some(&app.identity), &mut drain)
    });
    Ok(Prepared {
        bundle,
        info,
        payload,
        _spooled: spooled,
    })
}

/// Applies a prepared bundle in the writer's transaction: replay, expiry and staleness, then
/// the payload. Returns the status and the deployment record.
/// `obtained`: tokens a verification's refresh obtained, stored over the bundle's.
fn apply(
    app: &App,
    tx: &Tx<'_>,
    who: &Principal,
    prepared: Prepared,
    obtained: &HashMap<String, Tokens>,
) -> Result<(StatusCode, Value), Failed> {
    let Prepared {
        mut bundle,
        info,
        payload,
        _spooled,
    } = prepared;
    let m = bundle.manifest().clone();
    let fail = |e: ApiError| (e, Some(Box::new(info.clone())));
    let target = &m.target_container;
    if let Some(record) = tx
        .deployment_by_bundle(m.bundle_id.as_str())
        .map_err(|e| fail(e.into()))?
    {
        let mut record: Value =
            serde_json::from_str(&record).map_err(|e| fail(ApiError::internal(e)))?;
        if let Value::Object(o) = &mut record {
            o.insert("replayed".into(), Value::Bool(true));
        }
        let row = deploy_audit(who, target, &info, "replayed", 200);
        tx.insert_audit(&row).map_err(|e| fail(e.into()))?;
        return Ok((StatusCode::OK, record));
    }
    bundle
        .check_times(app.now(), SKEW)
        .map_err(|e| fail(e.into()))?;
    let created_ms = m.created_at.unix_millis();
    if let Some(newest) = tx
        .newest_created(target.as_str())
        .map_err(|e| fail(e.into()))?
        && created_ms < newest
    {
        let newest_text = flowpack_shared::timefmt::Timestamp::from_unix_millis(newest)
            .map_or_else(|| newest.to_string(), |t| t.to_string());
        return Err(fail(ApiError::conflict(
            "stale",
            format!(
                "the bundle was created at {}, before the newest bundle already applied to {target} (created at {newest_text}); package it again",
                m.created_at
            ),
        )));
    }

    let cid = tx.ensure_container(target).map_err(|e| fail(e.into()))?;
    let did = tx
        .insert_deployment(m.bundle_id.as_str(), target.as_str(), created_ms)
        .map_err(|e| fail(e.into()))?;
    let mut versions: HashMap<Name, i64> = HashMap::new();
    let payload = if let Some(read) = payload {
        read.map_err(|e| fail(e.into()))?
    } else {
        let versions = &mut versions;
        let mut on_file = |name: &Name,
                           path: &flowpack_shared::names::RelPath,
                           size: u64,
                           data: &mut dyn std::io::Read|
         -> std::io::Result<()> {
            if size > MAX_FILE {
                return Err(BundleError::SizeLimit(format!(
                    "mapping {name}: file {path} is {size} bytes; this receiver stores files up to {MAX_FILE} bytes"
                ))
                .into_io());
            }
            let vid = match versions.get(name) {
                Some(v) => *v,
                None => {
                    let v = tx
                        .new_mapping_version(cid, name, did)
                        .map_err(std::io::Error::other)?;
                    versions.insert(name.clone(), v);
                    v
                }
            };
            tx.write_mapping_file(vid, path.as_str(), size, data)
        };
        bundle
            .read_payload(Some(&app.identity), &mut on_file)
            .map_err(|e| fail(e.into()))?
    };
    if m.kind == BundleKind::Credentials && !payload.mappings.is_empty() {
        return Err(fail(ApiError::unprocessable(
            "bad-record",
            "a standalone credential bundle carries mappings",
        )));
    }

    let mut created = Vec::new();
    let mut updated = Vec::new();
    let mut needs = Vec::new();
    for mapping in &payload.mappings {
        let vid = match versions.get(&mapping.name) {
            Some(v) => *v,
            None => tx
                .new_mapping_version(cid, &mapping.name, did)
                .map_err(|e| fail(e.into()))?,
        };
        let def = serde_json::to_string(mapping).map_err(|e| fail(ApiError::internal(e)))?;
        let replaced = tx
            .finish_mapping_version(cid, &mapping.name, vid, &def)
            .map_err(|e| fail(e.into()))?;
        let path = target.object_path(&mapping.name);
        if replaced {
            updated.push(path);
        } else {
            created.push(path);
        }
    }
    for c in &payload.credentials {
        let up = creds::upsert_from_bundle(tx, &app.keys, cid, target, c).map_err(fail)?;
        if let Some(tokens) = obtained.get(c.name.as_str()) {
            let row = tx
                .credential(cid, c.name.as_str())
                .map_err(|e| fail(e.into()))?
                .ok_or_else(|| fail(ApiError::internal("an upserted credential vanished")))?;
            let public =
                serde_json::from_str(&row.public).map_err(|e| fail(ApiError::internal(e)))?;
            crate::oauth::write_tokens(tx, &app.keys, row.id, &up.path, &public, tokens)
                .map_err(fail)?;
        }
        if up.needs_secrets {
            needs.push(up.path.clone());
        }
        if up.created {
            created.push(up.path);
        } else {
            updated.push(up.path);
        }
    }
    let record = json!({
        "id": did,
        "bundle_id": m.bundle_id.as_str(),
        "container": target.as_str(),
        "created": created,
        "updated": updated,
        "needs_secrets": needs,
        "replayed": false,
    });
    tx.set_deployment_record(did, &record.to_string())
        .map_err(|e| fail(e.into()))?;
    let row = deploy_audit(who, target, &info, "applied", 201);
    tx.insert_audit(&row).map_err(|e| fail(e.into()))?;
    tracing::info!(bundle_id = %m.bundle_id, container = %target, deployment = did, "bundle applied");
    Ok((StatusCode::CREATED, record))
}

/// The audit row of a deploy that got past verification.
fn deploy_audit(
    who: &Principal,
    target: &ContainerPath,
    info: &BundleInfo,
    outcome: &str,
    status: u16,
) -> AuditRow {
    AuditRow {
        principal: Some(who.name.clone()),
        action: "deploy".into(),
        container: Some(target.to_string()),
        bundle_id: Some(info.bundle_id.clone()),
        signer_key_id: Some(info.signer.clone()),
        outcome: outcome.into(),
        status,
        ..AuditRow::default()
    }
}
