//! `POST /v1/deployments/{id}/rollback`: puts back every mapping and credential a deployment
//! left, as it left them: the mapping versions it made live (definitions and files, kept with
//! every version) and the credential records with their secrets (the ciphertext recorded with
//! the deployment, encrypted for the same path). All in one transaction of the group
//! committer, serialized with deploys; the rollback is itself a deployment, whose record says
//! `rollback_of`, and can be rolled back in turn.
//!
//! Objects the deployment did not write are left alone, as are objects written by later
//! deployments that it did not write. A credential restored with OAuth tokens gets those tokens
//! back as they were: a provider that rotated its refresh token since refuses the old one, and
//! the credential is then marked `needs_authorization` by the next refresh. A credential
//! deleted since its deployment is restored without secrets (a deletion erases the secrets its
//! deployments recorded). A change of type of a credential that a mapping outside the rollback
//! uses is refused (`409 credential-in-use`), as for a deploy.

use std::collections::HashSet;
use std::sync::Arc;

use flowpack_shared::names::{ContainerPath, Name};
use serde_json::{Value, json};

use crate::App;
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{Perm, Principal};
use crate::service::{creds, plan};
use crate::store::{AuditRow, DeploymentId, Tx};

/// Rolls back to what deployment `id` left; answers the new deployment's record.
pub async fn rollback(app: Arc<App>, who: Principal, id: DeploymentId) -> Result<Value, Problem> {
    let worker = app.clone();
    app.store
        .write_grouped(app.work_token(), move |tx| {
            let done = tx.savepoint(|tx| restore(&worker, tx, &who, id))?;
            done.map_err(|(e, container)| {
                // A deployment the caller may not see is audited without its container.
                {
                    let row = AuditRow {
                        principal: Some(who.name.clone()),
                        action: "rollback".into(),
                        container,
                        outcome: "refused".into(),
                        status: e.status.as_u16(),
                        code: Some(e.code.as_str().to_owned()),
                        detail: Some(e.detail.clone()),
                        ..AuditRow::default()
                    };
                    if let Err(ae) = tx.insert_audit(&row) {
                        tracing::error!(error = %ae, "writing an audit row failed");
                    }
                }
                e
            })
        })
        .await
}

type Failed = (Problem, Option<String>);

fn not_found(id: DeploymentId) -> Problem {
    Problem::not_found(format!("no deployment {id}"))
}

fn restore(app: &App, tx: &Tx<'_>, who: &Principal, id: DeploymentId) -> Result<Value, Failed> {
    let internal = |e: Problem| (e, None);
    let d = tx
        .deployment(id)
        .map_err(|e| internal(e.into()))?
        .ok_or_else(|| (not_found(id), None))?;
    let target = ContainerPath::parse(&d.container).map_err(|_| {
        internal(Problem::internal(
            "a stored deployment's container does not parse",
        ))
    })?;
    if !who.can(Perm::Read, &target) && !who.can(Perm::Write, &target) {
        return Err((not_found(id), None));
    }
    let fail = |e: Problem| (e, Some(d.container.clone()));
    let db_err = |e: crate::store::Error| fail(e.into());
    if !who.can(Perm::Write, &target) {
        return Err(fail(Problem::lacks(Perm::Write.as_str(), &target)));
    }
    let old: Value = serde_json::from_str(&d.record).map_err(|e| fail(Problem::internal(e)))?;
    // The content comes back only while its signer is still trusted for the container: a
    // rollback must not undo the removal or narrowing of a key (a stolen one, say).
    let signer = old
        .get("signer_key_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let trusted = crate::service::deploy::trusted_signer(tx.reads(), signer)
        .map_err(db_err)?
        .is_some_and(|s| s.containers.iter().any(|c| c.covers(&target)));
    if !trusted {
        return Err(fail(Problem::conflict(
            ProblemCode::NotRestorable,
            format!(
                "deployment {id} was signed by key {}, which is no longer trusted for {target}; it cannot be rolled back: deploy a bundle signed by a trusted key instead",
                flowpack_shared::names::quoted(signer)
            ),
        )));
    }
    let mappings = tx.deployment_mappings(id).map_err(db_err)?;
    let versions = tx.credential_versions(id).map_err(db_err)?;
    let wrote_credentials = ["created", "updated", "unchanged"]
        .iter()
        .filter_map(|k| old.get(*k)?.as_array())
        .flatten()
        .count();
    if wrote_credentials > mappings.len() + versions.len() {
        return Err(fail(Problem::conflict(
            ProblemCode::NotRestorable,
            format!(
                "deployment {id} was made by an older version of the receiver, which did not record the credentials it wrote; it cannot be rolled back: deploy its bundle again instead"
            ),
        )));
    }
    let cid = tx.ensure_container(&target).map_err(db_err)?;

    // Refused before anything is written: a change of type that a mapping outside uses.
    let mut retyped = Vec::new();
    for v in &versions {
        if let Some(row) = tx.credential(cid, &v.name).map_err(db_err)?
            && row.kind != v.kind
        {
            let name = Name::parse(&v.name)
                .map_err(|_| fail(Problem::internal("a stored name does not parse")))?;
            retyped.push((name, row.kind, v.kind.clone()));
        }
    }
    let retyped_refs: Vec<(&Name, &str, &str)> = retyped
        .iter()
        .map(|(n, old, new)| (n, old.as_str(), new.as_str()))
        .collect();
    let replaced: HashSet<&str> = mappings.iter().map(|(n, _)| n.as_str()).collect();
    plan::check_types_in_use(tx.reads(), Some(cid), &target, &retyped_refs, &replaced)
        .map_err(fail)?;

    let created_ms = d.created_at_ms;
    let bundle_marker =
        hex::encode(flowpack_shared::seal::random::<16>().map_err(|e| fail(Problem::internal(e)))?);
    let new_id = tx
        .insert_deployment(
            &format!("rollback-{bundle_marker}"),
            &d.container,
            created_ms,
            None,
        )
        .map_err(db_err)?;
    let (mut created, mut updated, mut unchanged, mut needs, mut drift) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (name, vid) in &mappings {
        let path = object_path(&target, name);
        match tx.mapping(cid, name).map_err(db_err)? {
            Some(live) if live.version_id == *vid => unchanged.push(path),
            live => {
                tx.set_live_mapping(cid, name, *vid).map_err(db_err)?;
                if live.is_some() {
                    updated.push(path);
                } else {
                    created.push(path);
                }
            }
        }
        tx.record_deployment_mapping(new_id, name, *vid)
            .map_err(db_err)?;
    }
    for v in &versions {
        let path = object_path(&target, &v.name);
        let current = tx.credential(cid, &v.name).map_err(db_err)?;
        let same = match &current {
            Some(row) => {
                let stored: Vec<(String, String)> = tx
                    .secrets(row.id)
                    .map_err(db_err)?
                    .into_iter()
                    .map(|s| (s.field, s.fingerprint))
                    .collect();
                let wanted: Vec<(String, String)> = v
                    .secrets
                    .iter()
                    .map(|s| (s.field.clone(), s.fingerprint.clone()))
                    .collect();
                row.kind == v.kind
                    && row.public == v.public
                    && row.needs_authorization == v.needs_authorization
                    && stored == wanted
            }
            None => false,
        };
        if same {
            unchanged.push(path.clone());
        } else {
            if let Some(row) = &current
                && tx.changed_outside(row.id).map_err(db_err)?
            {
                drift.push(path.clone());
            }
            let (cred, _) = tx
                .upsert_credential(cid, &v.name, &v.kind, &v.public)
                .map_err(db_err)?;
            tx.replace_secrets(cred, &v.secrets).map_err(db_err)?;
            tx.set_needs_authorization(cred, v.needs_authorization)
                .map_err(db_err)?;
            // A flow started for the record being replaced must not complete on this one.
            tx.delete_oauth_states(cred).map_err(db_err)?;
            tx.set_changed_outside(cred, false).map_err(db_err)?;
            if current.is_some() {
                updated.push(path.clone());
            } else {
                created.push(path.clone());
            }
        }
        let row = tx
            .credential(cid, &v.name)
            .map_err(db_err)?
            .ok_or_else(|| fail(Problem::internal("a restored credential vanished")))?;
        if creds::needs_secrets(tx.reads(), row.id).map_err(fail)? {
            needs.push(path);
        }
        tx.record_credential_version(new_id, cid, &v.name)
            .map_err(db_err)?;
    }
    let record = json!({
        "id": new_id,
        "bundle_id": old.get("bundle_id").cloned().unwrap_or(Value::Null),
        "container": d.container,
        "at": app.now().to_string(),
        "principal": who.name,
        "signer_key_id": old.get("signer_key_id").cloned().unwrap_or(Value::Null),
        "environment": old.get("environment").cloned().unwrap_or(Value::Null),
        "rollback_of": id,
        "created": created,
        "updated": updated,
        "unchanged": unchanged,
        "needs_secrets": needs,
        "secrets_cleared": [],
        "drift": drift,
        "replayed": false,
    });
    tx.set_deployment_record(new_id, &record.to_string())
        .map_err(db_err)?;
    let row = AuditRow {
        principal: Some(who.name.clone()),
        action: "rollback".into(),
        container: Some(d.container.clone()),
        outcome: "applied".into(),
        status: 201,
        detail: Some(format!(
            "deployment {new_id} puts back what deployment {id} left"
        )),
        ..AuditRow::default()
    };
    tx.insert_audit(&row).map_err(db_err)?;
    tracing::info!(deployment = new_id.0, rollback_of = id.0, container = %d.container, "rolled back");
    Ok(record)
}

fn object_path(target: &ContainerPath, name: &str) -> String {
    match Name::parse(name) {
        Ok(n) => target.object_path(&n),
        Err(_) => format!("{target}/{name}"),
    }
}
