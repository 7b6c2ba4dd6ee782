//! `POST /v1/deployments`: verify → decide → apply, in one transaction.
//!
//! The body is received (by `api::deploy`) as an [`Upload`]: a small one in memory, a larger
//! one spooled to a temporary file in the data directory, bounded by the configured bundle
//! size. Then, on the blocking pool
//! (`prepare`): the bundle's structure, signature and signer trust are checked with trust read
//! from the database, and the caller's `write` grant on the target; a small standalone
//! credential bundle's payload is read and its sealed values opened. Then, as a job of the
//! store's group committer
//! ([`crate::store::Store::write_grouped`], which serializes it with every other deploy, so
//! none can race the replay and staleness checks): replay, expiry and staleness, then the
//! payload is written (a mapping bundle's files streamed straight from the upload, the
//! credentials of a larger bundle each written as it is read), all in one savepoint. A
//! refusal, also one found after some records were written, undoes that savepoint and records
//! its audit row in the same transaction; the answer waits for the transaction to be durable.
//! What a deploy holds in memory does not grow with its credentials' records, only with the
//! manifest and the record's lists of paths.
//!
//! Replay: a bundle whose id is already applied is a replay only when its manifest is byte for
//! byte the one applied (its SHA-256 is kept with the deployment) and its every entry hashes
//! as the manifest says; it then answers the original record. Any other bundle carrying a known
//! id is `409 bundle-id-conflict`: an id names one bundle, and a signer of one container can
//! neither read another container's record nor pre-empt its bundle by reusing its id.
//!
//! With `?verify=true` (`flowpack deploy --verify`), every credential that carries secrets is
//! verified ([`crate::service::verify`]) as it will be after the apply, but only after every check that
//! could refuse the bundle (trust, grant, replay, expiry, staleness) has passed, so a bundle
//! that will be refused never causes an outbound request. The stored secrets join the bundle's
//! fields only when the bundle leaves the credential's destination as it is: a secret is never
//! sent anywhere but where it was stored to go. At most [`VERIFY_FANOUT`] requests of one
//! deploy are in flight at once. One failure refuses the whole bundle (422
//! `credential-verification-failed`) before anything is written. Verification runs outside the
//! write transaction, so slow endpoints never hold the database's writer lock.
//!
//! At most one bundle per core is opened and checked at once (others wait for a permit):
//! checking is CPU-bound, and the bound keeps a burst of hostile uploads from taking memory
//! in proportion to their number.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use flowpack_shared::bundle::manifest::{EntryKind, Manifest};
use flowpack_shared::bundle::read::{Ahead, OpenBundle, Payload, TrustedSigner};
use flowpack_shared::bundle::{BundleError, BundleKind};
use flowpack_shared::keys::{KeyId, VerifyingKey};
use flowpack_shared::model::credential::Credential;
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::names::{ContainerPath, Name};
use flowpack_shared::zipfmt::ZipError;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::App;
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{Perm, Principal};
use crate::service::oauth::{Material, Tokens};
use crate::service::upload::{Upload, UploadReader};
use crate::service::{creds, plan};
use crate::store::{AuditRow, CredentialId, Reads, Replay, Tx};

/// Clock skew allowed for `created_at` (see docs/DECISIONS.md).
const SKEW: time::Duration = time::Duration::minutes(5);

/// SQLite's default largest blob; a bigger mapping file cannot be stored.
const MAX_FILE: u64 = 1_000_000_000;

/// Outbound verification requests of one deploy in flight at once.
pub const VERIFY_FANOUT: usize = 16;

/// Permits to open and check a bundle: one per core, for the whole process.
fn checking() -> Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            Arc::new(Semaphore::new(cores))
        })
        .clone()
}

/// A standalone credential bundle of at most this many credentials is read, its sealed values
/// opened, before it joins the writer's queue, so that the writer's time per deploy stays
/// short. A larger one is read in the writer's transaction one credential at a time, as it is
/// applied, so that its records are never all in memory at once.
const PREPARED_CREDENTIALS: usize = 64;

/// A copy of a manifest without its lists of entries and credentials, which are most of a
/// large bundle's manifest: what a deploy keeps of it beside the open bundle.
fn head(m: &Manifest) -> Manifest {
    Manifest {
        format: m.format.clone(),
        bundle_id: m.bundle_id.clone(),
        kind: m.kind,
        target_container: m.target_container.clone(),
        environment: m.environment.clone(),
        created_at: m.created_at,
        expires_at: m.expires_at,
        signer_key_id: m.signer_key_id,
        sealing: m.sealing.clone(),
        entries: Vec::new(),
        credentials: Vec::new(),
    }
}

/// `413 too-large`: a bundle over the configured size.
pub fn too_large(max: u64) -> Problem {
    Problem::too_large(format!(
        "the bundle is larger than this receiver's limit of {max} bytes"
    ))
}

/// Records the refusal of a deploy (of a plan, when `dry_run`) before its bundle was read,
/// and gives the problem back.
pub fn refuse(app: &Arc<App>, who: &Principal, dry_run: bool, e: Problem) -> Problem {
    let mut row = refusal_row(who, None, &e);
    if dry_run {
        row = plan_row(row);
    }
    // The answer does not wait for the row: the job is queued once `audit` returns.
    drop(audit(app, row));
    e
}

/// Whether a deploy is new or the replay of one applied before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now.
    Created,
    /// Applied before; the record is the original one.
    Replayed,
    /// A dry run: the answer is the plan, nothing was applied.
    Planned,
}

/// Deploys the uploaded bundle (the caller checked the request and may deploy
/// somewhere): checks it, verifies its credentials when `verify`, and applies it; answers the
/// deployment record. With `dry_run`, every check is made as for the deploy, and the answer
/// is the plan of what the deploy would change; nothing is written but the audit row.
pub async fn deploy(
    app: Arc<App>,
    who: Principal,
    tmp: Upload,
    verify: bool,
    dry_run: bool,
    secrets_allowed: bool,
) -> Result<(Outcome, Value), Problem> {
    // Checks, and a credential bundle's payload, on the blocking pool, one bundle per core;
    // then verification of its credentials if asked for and nothing refused it; then the
    // decisions again and the writes in the group committer's next transaction.
    let permit = checking()
        .acquire_owned()
        .await
        .map_err(Problem::internal)?;
    let worker = app.clone();
    let caller = who.clone();
    let (handover, handed) = tokio::sync::oneshot::channel();
    app.spawn_blocking(move || {
        let prepared = prepare(&worker, &caller, tmp, secrets_allowed);
        drop(permit);
        // When the request is gone (its connection closed by shutdown), the upload (a spool
        // file, or bytes in memory) is dropped here, before this tracked work ends, so no
        // upload outlives `run`.
        drop(handover.send(prepared));
    });
    let prepared = handed
        .await
        .map_err(|_| Problem::internal("checking a bundle stopped"))?;
    let obtained = match &prepared {
        // A payload already found bad is refused by the writer, after the replay checks.
        Ok(p) if verify && !dry_run && !p.replay && !matches!(p.payload, Some(Err(_))) => {
            verify_bundle(&app, &who, p).await?
        }
        _ => HashMap::new(),
    };
    let worker = app.clone();
    app.store
        .write_grouped(app.work_token(), move |tx| {
            let result = match prepared {
                Ok(p) => tx.savepoint(|tx| apply(&worker, tx, &who, p, &obtained, dry_run))?,
                Err(failed) => Err(failed),
            };
            result.map_err(|(e, info)| {
                // Kept: only `apply`'s savepoint was undone.
                let mut row = refusal_row(&who, info.as_deref(), &e);
                if dry_run {
                    row = plan_row(row);
                }
                if let Err(ae) = tx.insert_audit(&row) {
                    tracing::error!(error = %ae, "writing an audit row failed");
                }
                e
            })
        })
        .await
}

/// What was read of the manifest, for the audit trail.
#[derive(Debug, Clone)]
struct BundleInfo {
    bundle_id: String,
    signer: String,
    container: ContainerPath,
    /// False when the manifest's signature did not verify: the fields above are only claims.
    verified: bool,
}

impl BundleInfo {
    fn of(m: &flowpack_shared::bundle::manifest::Manifest, verified: bool) -> BundleInfo {
        BundleInfo {
            bundle_id: m.bundle_id.to_string(),
            signer: m.signer_key_id.to_string(),
            container: m.target_container.clone(),
            verified,
        }
    }
}

fn refusal_row(who: &Principal, info: Option<&BundleInfo>, e: &Problem) -> AuditRow {
    AuditRow {
        principal: Some(who.name.clone()),
        action: "deploy".into(),
        container: info.map(|i| i.container.to_string()),
        bundle_id: info.map(|i| i.bundle_id.clone()),
        signer_key_id: info.map(|i| i.signer.clone()),
        verified: info.map(|i| i.verified),
        outcome: "refused".into(),
        status: e.status.as_u16(),
        code: Some(e.code.as_str().to_owned()),
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

type Failed = (Problem, Option<Box<BundleInfo>>);

/// The trusted signer `id`, if any. A database error is remembered in `failed`, so that the
/// caller answers 500 instead of taking it for an unknown signer.
fn trusted(db: &dyn Reads, id: &KeyId, failed: &std::cell::Cell<bool>) -> Option<TrustedSigner> {
    trusted_signer(db, &id.to_string()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading trusted signers failed");
        failed.set(true);
        None
    })
}

/// The signer with key id `id` as trust holds it now (its key and container prefixes), if it
/// is trusted; a stored row this version cannot read counts as not trusted.
pub(crate) fn trusted_signer(
    db: &dyn Reads,
    id: &str,
) -> crate::store::Result<Option<TrustedSigner>> {
    let Some((key, containers)) = db.signer(id)? else {
        return Ok(None);
    };
    let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
        return Ok(None);
    };
    let Ok(list) = serde_json::from_str::<Vec<String>>(&containers) else {
        return Ok(None);
    };
    let containers = list
        .iter()
        .filter_map(|c| ContainerPath::parse(c).ok())
        .collect();
    Ok(Some(TrustedSigner {
        key: VerifyingKey::from_bytes(key),
        containers,
    }))
}

/// Verifies the credentials of a prepared bundle (`?verify=true`), which every check that
/// could refuse it has passed. Returns the tokens that refreshes obtained, by credential name,
/// to store with the apply; refuses the bundle when a verification fails. Every refusal here
/// is audited with what the bundle is.
async fn verify_bundle(
    app: &Arc<App>,
    who: &Principal,
    prepared: &Prepared,
) -> Result<HashMap<String, Tokens>, Problem> {
    let info = prepared.info.clone();
    let checked = check_credentials(app, prepared).await;
    let (checked, e) = match checked {
        Ok(checked) => {
            let failures: Vec<String> = checked
                .iter()
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
            if failures.is_empty() {
                return Ok(checked
                    .into_iter()
                    .filter_map(|(m, v)| Some((m.cred.name.to_string(), v.obtained?)))
                    .collect());
            }
            let report: Vec<Value> = checked
                .iter()
                .map(|(m, v)| {
                    let mut j = v.to_json();
                    if let Value::Object(o) = &mut j {
                        o.insert("credential".into(), Value::String(m.path.clone()));
                    }
                    j
                })
                .collect();
            let e = Problem::unprocessable(
                ProblemCode::CredentialVerificationFailed,
                format!(
                    "the bundle is refused, nothing was applied: {}",
                    failures.join("; ")
                ),
            )
            .with("verifications", Value::Array(report));
            (checked, e)
        }
        Err(e) => (Vec::new(), e),
    };
    drop(checked);
    // Awaited: the audit trail shows the refusal by the time it is answered.
    audit(app, refusal_row(who, Some(&info), &e)).await;
    Err(e)
}

/// Reads the prepared bundle's credentials again and verifies each that carries secrets, at
/// most [`VERIFY_FANOUT`] at once.
async fn check_credentials(
    app: &Arc<App>,
    prepared: &Prepared,
) -> Result<Vec<(Material, crate::service::verify::Verification)>, Problem> {
    let file = prepared.upload.reader().map_err(Problem::internal)?;
    let permit = checking()
        .acquire_owned()
        .await
        .map_err(Problem::internal)?;
    let worker = app.clone();
    let (target, creds) = app
        .spawn_blocking(move || -> Result<_, Problem> {
            let db = worker.store.db()?;
            let found = bundle_credentials(&worker, db.reads(), file);
            drop(permit);
            found
        })
        .await
        .map_err(Problem::internal)??;
    let now = app.now();
    use futures_util::StreamExt;
    // Made first: a stream over a borrowing closure is not `Send` for every lifetime.
    let checks: Vec<_> = creds
        .into_iter()
        .map(|c| check_one(app, target.clone(), c, now))
        .collect();
    futures_util::stream::iter(checks)
        .buffered(VERIFY_FANOUT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Verifies one credential of a bundle as it will be after the apply. A credential already
/// stored is verified under its single-flight lock, as `…/token` and `…/verify` use it, with
/// its stored secrets read under that lock; when the verification refreshed with the stored
/// refresh token, what it obtained is stored at once (compare and swap), whatever becomes of
/// the bundle: a provider that rotates refresh tokens has already retired the stored one.
async fn check_one(
    app: &Arc<App>,
    target: ContainerPath,
    c: Credential,
    now: flowpack_shared::timefmt::Timestamp,
) -> Result<(Material, crate::service::verify::Verification), Problem> {
    let (c, target, id) = {
        let worker = app.clone();
        app.spawn_blocking(move || -> Result<_, Problem> {
            let db = worker.store.db()?;
            let id = match db.container_id(&target)? {
                Some(cid) => db.credential(cid, c.name.as_str())?.map(|r| r.id),
                None => None,
            };
            Ok((c, target, id))
        })
        .await
        .map_err(Problem::internal)??
    };
    let _in_flight = match id {
        Some(id) => Some(app.store.lock_credential(id).await?),
        None => None,
    };
    let worker = app.clone();
    let (m, stored) = app
        .spawn_blocking(move || -> Result<_, Problem> {
            let db = worker.store.db()?;
            material(&worker, db.reads(), &target, &c)
        })
        .await
        .map_err(Problem::internal)??;
    let v = crate::service::verify::check(&app.outbound, &m, now).await;
    let keep = match (&v.obtained, stored) {
        (Some(tokens), Some(stored))
            if m.secrets.contains_key("refresh_token") && !stored.carried_refresh =>
        {
            Some((tokens.clone(), stored))
        }
        _ => None,
    };
    if let Some((tokens, stored)) = keep {
        let path = m.path.clone();
        let worker = app.clone();
        app.spawn_blocking(move || -> Result<(), Problem> {
            let mut db = worker.store.db()?;
            let tx = db.write()?;
            let kept = crate::service::oauth::store_tokens(
                &tx,
                &worker.keys,
                stored.id,
                stored.version,
                &path,
                &stored.public,
                &tokens,
            )?;
            tx.commit()?;
            if !kept {
                tracing::info!(credential = %path, "a newer token was stored meanwhile; the verification's is not kept");
            }
            Ok(())
        })
        .await
        .map_err(Problem::internal)??;
    }
    Ok((m, v))
}

/// The stored side of a credential verified with a bundle's fields.
struct Stored {
    id: CredentialId,
    version: i64,
    /// The stored non-sensitive record (not the bundle's: the bundle may yet be refused).
    public: Map<String, Value>,
    /// The bundle carries a refresh token of its own.
    carried_refresh: bool,
}

/// The credentials of a bundle that carry secrets, with their bundle's target. A bundle that
/// cannot be read now is refused (it was read once already: the spool file changed, or the
/// store did).
fn bundle_credentials(
    app: &App,
    db: &dyn Reads,
    file: UploadReader,
) -> Result<(ContainerPath, Vec<Credential>), Problem> {
    let limits = app.config().limits.to_limits();
    let failed = std::cell::Cell::new(false);
    let lookup = |id: &KeyId| trusted(db, id, &failed);
    let mut bundle = OpenBundle::open(file, &limits, &lookup).map_err(|e| {
        if failed.get() {
            Problem::internal("reading trusted signers failed")
        } else {
            Problem::from(e)
        }
    })?;
    let target = bundle.manifest().target_container.clone();
    let ring = app.sealing.ring();
    let identity = ring.identity_for(bundle.manifest().sealing.as_ref(), app.now())?;
    let payload = bundle.read_payload(Some(identity), &mut drain)?;
    let creds = payload
        .credentials
        .into_iter()
        .filter(|c| !c.needs_secrets())
        .collect();
    Ok((target, creds))
}

/// Credential `c` of a bundle as it will be after the apply: the bundle's fields and secrets,
/// over the secrets stored for a credential of the same name, type and destination (a secret
/// is never sent anywhere but where it was stored to go).
fn material(
    app: &App,
    db: &dyn Reads,
    target: &ContainerPath,
    c: &Credential,
) -> Result<(Material, Option<Stored>), Problem> {
    let path = target.object_path(&c.name);
    let public = c.public_json();
    let stored = match db.container_id(target)? {
        Some(cid) => db.credential(cid, c.name.as_str())?.and_then(|r| {
            let old: Map<String, Value> = serde_json::from_str(&r.public).ok()?;
            creds::same_destination(&r.kind, &old, c.kind, &public).then_some((r, old))
        }),
        None => None,
    };
    let mut secrets = BTreeMap::new();
    if let Some((row, _)) = &stored {
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
    let m = Material {
        id: stored.as_ref().map(|(r, _)| r.id),
        version: stored.as_ref().map_or(0, |(r, _)| r.token_version),
        container: target.clone(),
        path,
        public,
        cred: public_only,
        secrets,
        needs_authorization: false,
    };
    let stored = stored.map(|(r, old)| Stored {
        id: r.id,
        version: r.token_version,
        public: old,
        carried_refresh: c.secrets.contains_key("refresh_token"),
    });
    Ok((m, stored))
}

/// Reads a payload file to its end (hashing it, as every read does) and keeps nothing.
fn drain(
    _: &Name,
    _: &flowpack_shared::names::RelPath,
    _: u64,
    data: &mut dyn std::io::Read,
) -> std::io::Result<()> {
    std::io::copy(data, &mut std::io::sink()).map(|_| ())
}

/// Whether a bundle whose id is `known` to the store is that same bundle again: its exact
/// manifest. A deployment stored before manifests were digested is matched on its container.
fn same_bundle(known: &Replay, manifest_sha256: &[u8], container: &ContainerPath) -> bool {
    match &known.manifest_sha256 {
        Some(digest) => bool::from(subtle::ConstantTimeEq::ct_eq(
            digest.as_slice(),
            manifest_sha256,
        )),
        None => known.container == container.as_str(),
    }
}

fn id_conflict(bundle_id: &str) -> Problem {
    Problem::conflict(
        ProblemCode::BundleIdConflict,
        format!(
            "bundle id {bundle_id} was already applied with another manifest; a bundle id names one bundle: package again for a new id"
        ),
    )
}

/// A bundle verified outside the writer's transaction, waiting to be applied.
struct Prepared {
    bundle: OpenBundle<UploadReader>,
    info: BundleInfo,
    /// SHA-256 of the exact `manifest.json`.
    manifest_sha256: Vec<u8>,
    /// The store already held this very bundle when it was checked: a replay, whose payload
    /// has been read in full (`payload`). The writer decides again.
    replay: bool,
    /// The payload, read (sealed values opened) before joining the writer's queue: a
    /// standalone credential bundle's, and a replay's (read only to check every entry). Its
    /// error is reported only after the replay and staleness checks, as when it is read in the
    /// transaction. `None` for a mapping bundle to apply: its files are streamed into the
    /// transaction.
    payload: Option<Result<Payload, BundleError>>,
    /// The upload, kept until the bundle is applied or refused.
    upload: Upload,
}

/// Checks a spooled bundle's structure, signature and signer trust, the caller's `write`
/// grant on its target, and that secrets in clear came over a channel that may carry them
/// (`secrets_allowed`: TLS or a loopback client); reads a standalone credential bundle's
/// payload.
fn prepare(
    app: &App,
    who: &Principal,
    upload: Upload,
    secrets_allowed: bool,
) -> Result<Prepared, Failed> {
    let db = app.store.db().map_err(|e| (e.into(), None))?;
    let file = upload.reader().map_err(|e| (Problem::internal(e), None))?;
    let limits = app.config().limits.to_limits();
    let failed = std::cell::Cell::new(false);
    let opened = {
        let lookup = |id: &KeyId| trusted(db.reads(), id, &failed);
        OpenBundle::open_detailed(file, &limits, &lookup)
    };
    let mut bundle = match opened {
        Ok(b) => b,
        Err(_) if failed.get() => {
            return Err((Problem::internal("reading trusted signers failed"), None));
        }
        Err(refusal) => {
            // What the manifest claims, when it was read before the refusal.
            let info = refusal
                .manifest
                .map(|m| Box::new(BundleInfo::of(&m, refusal.verified)));
            return Err((Problem::from(refusal.error), info));
        }
    };
    let m = head(bundle.manifest());
    let info = BundleInfo::of(&m, true);
    let fail = |e: Problem| (e, Some(Box::new(info.clone())));
    if !who.can(Perm::Write, &m.target_container) {
        return Err(fail(Problem::lacks(
            Perm::Write.as_str(),
            &m.target_container,
        )));
    }
    if !secrets_allowed {
        let in_clear: Vec<String> = bundle
            .manifest()
            .credentials
            .iter()
            .filter(|c| c.secrets == flowpack_shared::bundle::manifest::SecretsState::Plaintext)
            .map(|c| m.target_container.object_path(&c.name))
            .collect();
        if !in_clear.is_empty() {
            let mut e = Problem::forbidden(format!(
                "the bundle carries the secrets of {} in clear (packaged with --plaintext-secrets), which this receiver takes only over TLS or from a loopback client: package it sealed to this receiver (--seal-to or --seal-to-server), or deploy over HTTPS",
                in_clear.join(", ")
            ));
            e.code = ProblemCode::SecretsInClear;
            return Err(fail(e));
        }
    }
    let manifest_sha256 = bundle.manifest_sha256().to_vec();
    // Only their digest is needed from here on; a manifest can be tens of megabytes.
    bundle.forget_manifest_bytes();
    // The decisions the writer takes again, read now: a bundle that would be refused, or is a
    // replay, is never verified against outside endpoints.
    let known = db
        .deployment_by_bundle(m.bundle_id.as_str())
        .map_err(|e| fail(e.into()))?;
    let replay = match &known {
        Some(known) if same_bundle(known, &manifest_sha256, &m.target_container) => true,
        Some(_) => return Err(fail(id_conflict(m.bundle_id.as_str()))),
        None => {
            bundle
                .check_times(app.now(), SKEW)
                .map_err(|e| fail(e.into()))?;
            stale(db.reads(), &m).map_err(fail)?;
            false
        }
    };
    drop(db);
    // Sealed to a retired key of this receiver: refused before anything else is read.
    let ring = app.sealing.ring();
    let identity = ring
        .identity_for(m.sealing.as_ref(), app.now())
        .map_err(fail)?;
    // A credential bundle with mapping files is refused once read (`bad-record`). A replay's
    // payload is read only to check it: its records are not kept.
    let payload = if replay {
        // Every mapping file is only checked, on other threads.
        let reopen = || upload.reader();
        let ahead = Ahead {
            skip: &mut |_, _, _| Ok(true),
            reopen: &reopen,
        };
        let read = bundle.stream_payload_ahead(Some(identity), ahead, &mut drain, &mut |c| {
            drop(c);
            Ok::<(), BundleError>(())
        });
        Some(read.map(|mappings| Payload {
            mappings,
            credentials: Vec::new(),
        }))
    } else if m.kind == BundleKind::Credentials
        && bundle.manifest().credentials.len() <= PREPARED_CREDENTIALS
    {
        Some(bundle.read_payload(Some(identity), &mut drain))
    } else {
        None
    };
    Ok(Prepared {
        bundle,
        info,
        manifest_sha256,
        replay,
        payload,
        upload,
    })
}

/// Refuses a bundle created before the newest one applied to its container (`409 stale`).
fn stale(db: &dyn Reads, m: &flowpack_shared::bundle::manifest::Manifest) -> Result<(), Problem> {
    let target = &m.target_container;
    let Some(newest) = db.newest_created(target.as_str())? else {
        return Ok(());
    };
    if m.created_at.unix_millis() >= newest {
        return Ok(());
    }
    let newest_text = flowpack_shared::timefmt::Timestamp::from_unix_millis(newest)
        .map_or_else(|| newest.to_string(), |t| t.to_string());
    Err(Problem::conflict(
        ProblemCode::Stale,
        format!(
            "the bundle was created at {}, before the newest bundle already applied to {target} (created at {newest_text}); package it again",
            m.created_at
        ),
    ))
}

/// Applies a prepared bundle in the writer's transaction: replay, expiry and staleness, then
/// the payload. Returns the outcome and the deployment record; with `dry_run`, the plan, and
/// nothing is written but the audit row.
/// `obtained`: tokens a verification's refresh obtained, stored over the bundle's.
fn apply(
    app: &App,
    tx: &Tx<'_>,
    who: &Principal,
    prepared: Prepared,
    obtained: &HashMap<String, Tokens>,
    dry_run: bool,
) -> Result<(Outcome, Value), Failed> {
    let Prepared {
        mut bundle,
        info,
        manifest_sha256,
        replay: _,
        payload,
        upload,
    } = prepared;
    let m = head(bundle.manifest());
    let fail = |e: Problem| (e, Some(Box::new(info.clone())));
    let target = &m.target_container;
    let ring = app.sealing.ring();
    let identity = ring
        .identity_for(m.sealing.as_ref(), app.now())
        .map_err(fail)?;
    if let Some(known) = tx
        .deployment_by_bundle(m.bundle_id.as_str())
        .map_err(|e| fail(e.into()))?
    {
        if !same_bundle(&known, &manifest_sha256, target) {
            return Err(fail(id_conflict(m.bundle_id.as_str())));
        }
        // Every entry is hashed before a replay is answered: a corrupted copy of an applied
        // bundle is refused like any corrupted bundle.
        match payload {
            Some(read) => read.map(drop),
            None => bundle
                .stream_payload(Some(identity), &mut drain, &mut |c| {
                    drop(c);
                    Ok::<(), BundleError>(())
                })
                .map(drop),
        }
        .map_err(|e| fail(e.into()))?;
        let mut record: Value =
            serde_json::from_str(&known.record).map_err(|e| fail(Problem::internal(e)))?;
        if dry_run {
            let plan = json!({
                "dry_run": true,
                "replay": true,
                "bundle_id": m.bundle_id.as_str(),
                "container": target.as_str(),
                "deployment": record.get("id").cloned().unwrap_or(Value::Null),
                "changes": [],
            });
            let row = deploy_audit(who, target, &info, "planned", 200);
            tx.insert_audit(&plan_row(row))
                .map_err(|e| fail(e.into()))?;
            return Ok((Outcome::Planned, plan));
        }
        if let Value::Object(o) = &mut record {
            o.insert("replayed".into(), Value::Bool(true));
        }
        let row = deploy_audit(who, target, &info, "replayed", 200);
        tx.insert_audit(&row).map_err(|e| fail(e.into()))?;
        return Ok((Outcome::Replayed, record));
    }
    bundle
        .check_times(app.now(), SKEW)
        .map_err(|e| fail(e.into()))?;
    stale(tx.reads(), &m).map_err(fail)?;

    // What is stored now, before anything is written: the plan compares against it.
    let known_container = tx.container_id(target).map_err(|e| fail(e.into()))?;
    let files_same =
        plan::files_unchanged(tx.reads(), known_container, bundle.manifest()).map_err(fail)?;
    if dry_run {
        let payload = match payload {
            Some(read) => read,
            None => bundle.read_payload(Some(identity), &mut |n, p, size, data| {
                file_size_ok(n, p, size)?;
                drain(n, p, size, data)
            }),
        }
        .map_err(|e| fail(e.into()))?;
        check_kind(&m, &payload.mappings).map_err(fail)?;
        let changes = changes_of(
            app,
            who,
            tx.reads(),
            known_container,
            target,
            &payload,
            &files_same,
        )
        .map_err(fail)?;
        let plan = json!({
            "dry_run": true,
            "replay": false,
            "bundle_id": m.bundle_id.as_str(),
            "container": target.as_str(),
            "changes": changes,
        });
        let row = deploy_audit(who, target, &info, "planned", 200);
        tx.insert_audit(&plan_row(row))
            .map_err(|e| fail(e.into()))?;
        return Ok((Outcome::Planned, plan));
    }

    let created_ms = m.created_at.unix_millis();
    let cid = tx.ensure_container(target).map_err(|e| fail(e.into()))?;
    let did = tx
        .insert_deployment(
            m.bundle_id.as_str(),
            target.as_str(),
            created_ms,
            Some(&manifest_sha256),
        )
        .map_err(|e| fail(e.into()))?;
    // The manifest's digest of each mapping file, in bundle order: the reader hands the files
    // over in that order.
    let digests: Vec<[u8; 32]> = bundle
        .manifest()
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::MappingFile)
        .map(|e| e.sha256.0)
        .collect();
    let mut versions: HashMap<Name, i64> = HashMap::new();
    // Each credential is decided and written as it is read, against what was stored before the
    // write (names are unique in a bundle, so no credential's write touches another's row);
    // only the record's lists of paths are kept. Its mappings come first in the bundle but are
    // finished after the last credential, once their files are written: their entries still
    // come first in the record's lists.
    let compare_secrets = who.can(Perm::Use, target);
    let mut creds_listed = Listed::default();
    let mut retyped: Vec<(Name, String, &'static str)> = Vec::new();
    let mut on_credential = |c: Credential| -> Result<(), Problem> {
        let (change, stored) = plan::credential_change(
            tx.reads(),
            &app.keys,
            known_container,
            target,
            &c,
            compare_secrets,
        )?;
        if let Some(row) = stored
            && row.kind != c.kind.as_str()
        {
            retyped.push((c.name.clone(), row.kind, c.kind.as_str()));
        }
        apply_credential(
            app,
            tx,
            cid,
            did,
            target,
            &c,
            &change,
            obtained,
            &mut creds_listed,
        )
    };
    let mappings = if let Some(read) = payload {
        let payload = read.map_err(|e| fail(e.into()))?;
        check_kind(&m, &payload.mappings).map_err(fail)?;
        for c in payload.credentials {
            on_credential(c).map_err(fail)?;
        }
        payload.mappings
    } else {
        let versions = &mut versions;
        // Index of the next mapping file in bundle order, whether stored or only checked.
        let next_file = std::cell::Cell::new(0usize);
        // The live version of a mapping has these very files: they are not stored twice, only
        // checked, on other threads.
        let mut skip = |name: &Name,
                        path: &flowpack_shared::names::RelPath,
                        size: u64|
         -> std::io::Result<bool> {
            if !files_same.contains_key(name) {
                return Ok(false);
            }
            file_size_ok(name, path, size)?;
            next_file.set(next_file.get() + 1);
            Ok(true)
        };
        let reopen = || upload.reader();
        let mut on_file = |name: &Name,
                           path: &flowpack_shared::names::RelPath,
                           size: u64,
                           data: &mut dyn std::io::Read|
         -> std::io::Result<()> {
            file_size_ok(name, path, size)?;
            let digest = digests.get(next_file.get()).ok_or_else(|| {
                std::io::Error::other("a mapping file the manifest does not list")
            })?;
            next_file.set(next_file.get() + 1);
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
            tx.write_mapping_file(vid, path.as_str(), size, digest, data)
        };
        let ahead = Ahead {
            skip: &mut skip,
            reopen: &reopen,
        };
        let mappings = bundle
            .stream_payload_ahead(Some(identity), ahead, &mut on_file, &mut on_credential)
            .map_err(fail)?;
        check_kind(&m, &mappings).map_err(fail)?;
        mappings
    };
    drop(digests);
    let retyped: Vec<(&Name, &str, &str)> = retyped
        .iter()
        .map(|(n, old, new)| (n, old.as_str(), *new))
        .collect();
    let replaced: std::collections::HashSet<&str> =
        mappings.iter().map(|m| m.name.as_str()).collect();
    plan::check_types_in_use(tx.reads(), known_container, target, &retyped, &replaced)
        .map_err(fail)?;

    let mut listed = Listed::default();
    for mapping in &mappings {
        let same = files_same.contains_key(&mapping.name);
        let change = plan::mapping_change(tx.reads(), known_container, target, mapping, same)
            .map_err(fail)?;
        listed.add(&change);
        let live = if change.action == plan::Action::Unchanged {
            tx.mapping(cid, mapping.name.as_str())
                .map_err(|e| fail(e.into()))?
                .ok_or_else(|| fail(Problem::internal("an unchanged mapping vanished")))?
                .version_id
        } else {
            let vid = match versions.get(&mapping.name) {
                Some(v) => *v,
                None => tx
                    .new_mapping_version(cid, &mapping.name, did)
                    .map_err(|e| fail(e.into()))?,
            };
            if let Some(old) = files_same.get(&mapping.name) {
                tx.copy_mapping_files(*old, vid)
                    .map_err(|e| fail(e.into()))?;
            }
            let def = serde_json::to_string(mapping).map_err(|e| fail(Problem::internal(e)))?;
            tx.finish_mapping_version(cid, &mapping.name, vid, &def)
                .map_err(|e| fail(e.into()))?;
            vid
        };
        tx.record_deployment_mapping(did, mapping.name.as_str(), live)
            .map_err(|e| fail(e.into()))?;
    }
    drop(mappings);
    listed.append(creds_listed);
    let Listed {
        created,
        updated,
        unchanged,
        needs,
        cleared,
        drift,
    } = listed;
    // Built by moving the lists in, not copying them.
    let mut record = Map::new();
    record.insert("id".into(), json!(did));
    record.insert("bundle_id".into(), m.bundle_id.as_str().into());
    record.insert("container".into(), target.as_str().into());
    record.insert("at".into(), app.now().to_string().into());
    record.insert("principal".into(), json!(who.name));
    record.insert("signer_key_id".into(), m.signer_key_id.to_string().into());
    record.insert("environment".into(), json!(m.environment));
    record.insert("rollback_of".into(), Value::Null);
    record.insert("created".into(), created.into());
    record.insert("updated".into(), updated.into());
    record.insert("unchanged".into(), unchanged.into());
    record.insert("needs_secrets".into(), needs.into());
    record.insert("secrets_cleared".into(), cleared.into());
    record.insert("drift".into(), drift.into());
    record.insert("replayed".into(), false.into());
    let record = Value::Object(record);
    tx.set_deployment_record(did, &record.to_string())
        .map_err(|e| fail(e.into()))?;
    let row = deploy_audit(who, target, &info, "applied", 201);
    tx.insert_audit(&row).map_err(|e| fail(e.into()))?;
    tracing::info!(bundle_id = %m.bundle_id, container = %target, deployment = did.0, "bundle applied");
    Ok((Outcome::Created, record))
}

/// The paths a deployment record lists, by what happened to them.
#[derive(Default)]
struct Listed {
    created: Vec<String>,
    updated: Vec<String>,
    unchanged: Vec<String>,
    needs: Vec<String>,
    cleared: Vec<String>,
    drift: Vec<String>,
}

impl Listed {
    /// Lists an object under its action, and under `drift` when it drifted.
    fn add(&mut self, change: &plan::Change) {
        let list = match change.action {
            plan::Action::Create => &mut self.created,
            plan::Action::Update => &mut self.updated,
            plan::Action::Unchanged => &mut self.unchanged,
        };
        list.push(change.path.clone());
        if change.drift {
            self.drift.push(change.path.clone());
        }
    }

    /// Appends `other`'s lists to these.
    fn append(&mut self, mut other: Listed) {
        self.created.append(&mut other.created);
        self.updated.append(&mut other.updated);
        self.unchanged.append(&mut other.unchanged);
        self.needs.append(&mut other.needs);
        self.cleared.append(&mut other.cleared);
        self.drift.append(&mut other.drift);
    }
}

/// Writes one credential of a bundle, whose change against what is stored is `change`, and
/// lists it in the deployment's record.
#[allow(clippy::too_many_arguments)]
fn apply_credential(
    app: &App,
    tx: &Tx<'_>,
    cid: crate::store::ContainerId,
    did: crate::store::DeploymentId,
    target: &ContainerPath,
    c: &Credential,
    change: &plan::Change,
    obtained: &HashMap<String, Tokens>,
    listed: &mut Listed,
) -> Result<(), Problem> {
    listed.add(change);
    let path = &change.path;
    if change.action != plan::Action::Unchanged {
        let up = creds::upsert_from_bundle(tx, &app.keys, cid, target, c)?;
        if up.secrets_cleared {
            listed.cleared.push(up.path);
        }
    }
    let row = tx
        .credential(cid, c.name.as_str())?
        .ok_or_else(|| Problem::internal("an upserted credential vanished"))?;
    tx.set_changed_outside(row.id, false)?;
    if let Some(tokens) = obtained.get(c.name.as_str()) {
        let public = serde_json::from_str(&row.public).map_err(Problem::internal)?;
        crate::service::oauth::write_tokens(tx, &app.keys, row.id, path, &public, tokens)?;
    }
    if creds::needs_secrets(tx.reads(), row.id)? {
        listed.needs.push(path.clone());
    }
    tx.record_credential_version(did, cid, c.name.as_str())?;
    Ok(())
}

/// Refuses a mapping file larger than the store keeps.
fn file_size_ok(
    name: &Name,
    path: &flowpack_shared::names::RelPath,
    size: u64,
) -> std::io::Result<()> {
    if size > MAX_FILE {
        return Err(BundleError::Zip(ZipError::SizeLimit(format!(
            "mapping {name}: file {path} is {size} bytes; this receiver stores files up to {MAX_FILE} bytes"
        )))
        .into_io());
    }
    Ok(())
}

/// Refuses a standalone credential bundle that carries mappings.
fn check_kind(m: &Manifest, mappings: &[Mapping]) -> Result<(), Problem> {
    if m.kind == BundleKind::Credentials && !mappings.is_empty() {
        return Err(Problem::unprocessable(
            ProblemCode::BadRecord,
            "a standalone credential bundle carries mappings",
        ));
    }
    Ok(())
}

/// The change of every object of a payload (its mappings first, then its credentials, each in
/// bundle order), against what the store holds before the write; refuses a change of type of
/// a credential that a mapping outside the bundle uses.
fn changes_of(
    app: &App,
    who: &Principal,
    db: &dyn Reads,
    container: Option<crate::store::ContainerId>,
    target: &ContainerPath,
    payload: &Payload,
    files_same: &HashMap<Name, i64>,
) -> Result<Vec<plan::Change>, Problem> {
    let mut changes = Vec::new();
    for mapping in &payload.mappings {
        let same = files_same.contains_key(&mapping.name);
        changes.push(plan::mapping_change(db, container, target, mapping, same)?);
    }
    let mut retyped = Vec::new();
    // Whether a carried secret may be compared with the stored one (see `credential_change`).
    let compare_secrets = who.can(Perm::Use, target);
    for c in &payload.credentials {
        let (change, row) =
            plan::credential_change(db, &app.keys, container, target, c, compare_secrets)?;
        if let Some(row) = row
            && row.kind != c.kind.as_str()
        {
            retyped.push((&c.name, row.kind, c.kind.as_str()));
        }
        changes.push(change);
    }
    let retyped: Vec<(&Name, &str, &str)> = retyped
        .iter()
        .map(|(n, old, new)| (*n, old.as_str(), *new))
        .collect();
    let replaced: std::collections::HashSet<&str> =
        payload.mappings.iter().map(|m| m.name.as_str()).collect();
    plan::check_types_in_use(db, container, target, &retyped, &replaced)?;
    Ok(changes)
}

/// The audit row of a dry run: the deploy's, under the action `plan`.
fn plan_row(mut row: AuditRow) -> AuditRow {
    row.action = "plan".into();
    row
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
        verified: Some(info.verified),
        outcome: outcome.into(),
        status,
        ..AuditRow::default()
    }
}
