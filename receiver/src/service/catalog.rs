//! What the receiver holds, read and changed on request: listings of deployments and of the
//! audit trail, containers, mappings (and the resolution of their credential parameters),
//! credential reads, PATCH and DELETE. Each function checks the caller's grant first.

use flowpack_shared::model::mapping::{Mapping, ParamType};
use flowpack_shared::names::{ContainerPath, Name, RelPath};
use serde_json::{Value, json};

use crate::App;
use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{Perm, Principal};
use crate::service::creds;
use crate::store::{self, AuditRow, ContainerId, Db, MappingFile, Reads};

/// Which page of a listing (deployments, audit) to answer.
#[derive(Debug)]
pub struct Page {
    /// Only what concerns this container (and below).
    pub container: Option<ContainerPath>,
    /// Only rows older than this id (a previous page's `next`).
    pub before: Option<i64>,
    /// At most this many rows.
    pub limit: usize,
}

pub(crate) fn require(who: &Principal, perm: Perm, c: &ContainerPath) -> Result<(), Problem> {
    if who.can(perm, c) {
        Ok(())
    } else {
        Err(Problem::lacks(perm.as_str(), c))
    }
}

pub(crate) fn existing_container(
    db: &dyn Reads,
    c: &ContainerPath,
) -> Result<ContainerId, Problem> {
    db.container_id(c)?
        .ok_or_else(|| Problem::not_found(format!("container {c} does not exist")))
}

/// What a listing filtered to `page.container` may show: nothing is read unless the caller
/// may read that container; unfiltered, the store keeps to the containers the caller can read.
pub(crate) fn visible_for(who: &Principal, page: &Page) -> Result<store::Visible, Problem> {
    match &page.container {
        Some(c) => {
            require(who, Perm::Read, c)?;
            Ok(store::Visible::All)
        }
        None => Ok(who.visible()),
    }
}

/// The page's rows and the `next` cursor: one row more than the page is read, so `next` is
/// `null` exactly when nothing older is left.
pub(crate) fn paged<T>(mut rows: Vec<T>, page: &Page, id: impl Fn(&T) -> i64) -> (Vec<T>, Value) {
    let more = rows.len() > page.limit;
    rows.truncate(page.limit);
    let next = match rows.last() {
        Some(last) if more => Value::from(id(last)),
        _ => Value::Null,
    };
    (rows, next)
}

pub(crate) fn list_deployments(
    db: &dyn Reads,
    who: &Principal,
    page: &Page,
) -> Result<Value, Problem> {
    let visible = visible_for(who, page)?;
    let container = page.container.as_ref().map(ContainerPath::as_str);
    let rows = db.deployments_page(&visible, container, page.before, page.limit + 1)?;
    let (rows, next) = paged(rows, page, |(id, _)| *id);
    let records = rows
        .iter()
        .map(|(_, record)| serde_json::from_str::<Value>(record))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Problem::internal)?;
    Ok(json!({"deployments": records, "next": next}))
}

/// One deployment's record. A deployment in a container the caller cannot read is answered
/// as one that does not exist: ids are sequential, and would tell what happens elsewhere.
pub(crate) fn show_deployment(
    db: &dyn Reads,
    who: &Principal,
    id: crate::store::DeploymentId,
) -> Result<Value, Problem> {
    let missing = || Problem::not_found(format!("no deployment {id}"));
    let d = db.deployment(id)?.ok_or_else(missing)?;
    let visible = ContainerPath::parse(&d.container).is_ok_and(|c| who.can(Perm::Read, &c));
    if !visible {
        return Err(missing());
    }
    serde_json::from_str(&d.record).map_err(Problem::internal)
}

/// The audit trail, newest first. A refusal whose manifest could not be read names no
/// container: only callers who can read everything see it.
pub(crate) fn list_audit(db: &dyn Reads, who: &Principal, page: &Page) -> Result<Value, Problem> {
    let visible = visible_for(who, page)?;
    let container = page.container.as_ref().map(ContainerPath::as_str);
    let rows = db.audit_page(&visible, container, page.before, page.limit + 1)?;
    let (rows, next): (Vec<AuditRow>, Value) = paged(rows, page, |a| a.id);
    Ok(json!({"audit": rows, "next": next}))
}

pub(crate) fn show_container(
    db: &dyn Reads,
    who: &Principal,
    c: &ContainerPath,
) -> Result<Value, Problem> {
    require(who, Perm::Read, c)?;
    let id = existing_container(db, c)?;
    let (containers, mappings, credentials) = db.children(id)?;
    Ok(
        json!({"path": c.as_str(), "containers": containers, "mappings": mappings, "credentials": credentials}),
    )
}

/// A live mapping and its parsed definition.
pub(crate) fn load_mapping(
    db: &dyn Reads,
    c: &ContainerPath,
    n: &Name,
) -> Result<(ContainerId, store::MappingRow, Mapping), Problem> {
    let missing = || Problem::not_found(format!("mapping {} does not exist", c.object_path(n)));
    let cid = db.container_id(c)?.ok_or_else(missing)?;
    let row = db.mapping(cid, n.as_str())?.ok_or_else(missing)?;
    let m =
        Mapping::parse(&c.object_path(n), row.definition.as_bytes()).map_err(Problem::internal)?;
    Ok((cid, row, m))
}

pub(crate) fn show_mapping(
    db: &dyn Reads,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
) -> Result<Value, Problem> {
    require(who, Perm::Read, c)?;
    let (cid, row, m) = load_mapping(db, c, n)?;
    let mut params = Vec::new();
    for p in m
        .parameters
        .iter()
        .filter(|p| p.kind == ParamType::Credential)
    {
        match &p.credential {
            Some(cred) => {
                let stored = db.credential(cid, cred.as_str())?;
                let has_secrets = match &stored {
                    Some(r) => !creds::needs_secrets(db, r.id)?,
                    None => false,
                };
                params.push(json!({
                    "name": p.name, "credential": c.object_path(cred),
                    "stored": stored.is_some(), "has_secrets": has_secrets,
                }));
            }
            None => params.push(json!({
                "name": p.name, "credential": null, "external": true,
                "stored": false, "has_secrets": false,
            })),
        }
    }
    let mut v = serde_json::to_value(&m).map_err(Problem::internal)?;
    if let Value::Object(o) = &mut v {
        o.insert("path".into(), Value::String(c.object_path(n)));
        o.entry("description").or_insert(Value::Null);
        o.insert("version".into(), Value::from(row.version));
        o.insert("credential_parameters".into(), Value::Array(params));
    }
    Ok(v)
}

pub(crate) fn resolve(
    db: &dyn Reads,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
    body: &Value,
) -> Result<Value, Problem> {
    let (cid, _, m) = load_mapping(db, c, n)?;
    let v = creds::resolve(db, who, c, cid, &m, body)?;
    Ok(v)
}

pub(crate) fn audit_row(
    who: &Principal,
    action: &str,
    c: &ContainerPath,
    target: String,
) -> AuditRow {
    AuditRow {
        principal: Some(who.name.clone()),
        action: action.into(),
        container: Some(c.to_string()),
        target: Some(target),
        ..AuditRow::default()
    }
}

pub(crate) fn delete_mapping(
    db: &mut Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
) -> Result<(), Problem> {
    require(who, Perm::Write, c)?;
    let tx = db.write()?;
    let missing = || Problem::not_found(format!("mapping {} does not exist", c.object_path(n)));
    let cid = tx.container_id(c)?.ok_or_else(missing)?;
    if !tx.delete_mapping(cid, n.as_str())? {
        return Err(missing());
    }
    let mut row = audit_row(who, "delete-mapping", c, c.object_path(n));
    row.outcome = "deleted".into();
    row.status = 204;
    tx.insert_audit(&row)?;
    tx.commit()?;
    Ok(())
}

pub(crate) fn delete_credential(
    db: &mut Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
) -> Result<(), Problem> {
    require(who, Perm::Write, c)?;
    let path = c.object_path(n);
    let tx = db.write()?;
    let (cid, cred) = creds::find(tx.reads(), c, n)?;
    // A mapping references credentials of its own container (of the same project).
    let mut refs = Vec::new();
    for (mname, def) in tx.mappings_in(cid)? {
        let m = Mapping::parse(&mname, def.as_bytes()).map_err(Problem::internal)?;
        if m.credential_refs().any(|(_, cred)| cred == n) {
            refs.push(Name::parse(&mname).map_or(mname.clone(), |mn| c.object_path(&mn)));
        }
    }
    if !refs.is_empty() {
        drop(tx);
        let e = Problem::conflict(
            ProblemCode::CredentialInUse,
            format!(
                "credential {path} is referenced by mapping(s) {}; delete or redeploy them first",
                refs.join(", ")
            ),
        )
        .with("mappings", json!(refs));
        let mut row = audit_row(who, "delete-credential", c, path.clone());
        row.outcome = "refused".into();
        row.status = 409;
        row.code = Some(e.code.as_str().to_owned());
        row.detail = Some(e.detail.clone());
        super::audit::audit_alone(db, row);
        return Err(e);
    }
    tx.delete_credential(cred.id)?;
    let mut row = audit_row(who, "delete-credential", c, path);
    row.outcome = "deleted".into();
    row.status = 204;
    tx.insert_audit(&row)?;
    tx.commit()?;
    // The database file overwrites what it deletes (`secure_delete`), but the write-ahead log
    // still holds the pages with the ciphertext until it is emptied: a deleted secret must be
    // gone from the data directory, not only from the tables.
    match db.truncate_wal() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(credential = %c.object_path(n), "a reader kept the write-ahead log from being emptied after a delete; it is emptied by a later checkpoint")
        }
        Err(e) => tracing::warn!(error = %e, "emptying the write-ahead log after a delete failed"),
    }
    Ok(())
}

pub(crate) fn show_credential(
    db: &dyn Reads,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
) -> Result<Vec<u8>, Problem> {
    require(who, Perm::Read, c)?;
    creds::show(db, c, n)
}

pub(crate) fn patch_credential(
    app: &App,
    db: &mut Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
    body: &Value,
) -> Result<Vec<u8>, Problem> {
    require(who, Perm::Write, c)?;
    let path = c.object_path(n);
    let tx = db.write()?;
    let (_, row) = creds::find(tx.reads(), c, n)?;
    creds::patch(&tx, &app.keys, &path, &row, body)?;
    let (_, row) = creds::find(tx.reads(), c, n)?;
    let answer = creds::redacted(tx.reads(), &path, &row)?;
    let mut a = audit_row(who, "patch-credential", c, path.clone());
    a.outcome = "updated".into();
    a.status = 200;
    tx.insert_audit(&a)?;
    tx.commit()?;
    Ok(answer)
}

/// One way a `…/files/…` path may split: a mapping's path and its file's (or why the file's
/// part of the URL is no path).
#[derive(Debug)]
pub struct FileCandidate {
    /// The mapping's container.
    pub container: ContainerPath,
    /// The mapping's name.
    pub name: Name,
    /// The file's path inside the mapping.
    pub file: Result<RelPath, Problem>,
}

/// What `GET /v1/mappings/{path}/files/{file}` names.
#[derive(Debug)]
pub enum FileAnswer<'db> {
    /// A mapping file, to stream.
    File(MappingFile<'db>),
    /// A mapping (the path named a mapping in a container called `files`), as `show_mapping`.
    Mapping(Value),
}

/// Finds what a `…/files/…` path names: the first candidate whose mapping is live and
/// readable (so containers may themselves be named `files`), else `whole` when it names a
/// live mapping, else the first refusal met (or 404).
pub fn mapping_file<'db>(
    db: &'db Db,
    who: &Principal,
    candidates: Vec<FileCandidate>,
    whole: Option<(ContainerPath, Name)>,
) -> Result<FileAnswer<'db>, Problem> {
    let mut first_error = None;
    for FileCandidate {
        container: c,
        name: n,
        file,
    } in candidates
    {
        if !who.can(Perm::Read, &c) {
            first_error.get_or_insert(Problem::lacks(Perm::Read.as_str(), &c));
            continue;
        }
        let (_, row, m) = match load_mapping(db.reads(), &c, &n) {
            Ok(x) => x,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let rel = file?;
        if !m.files.contains(&rel) {
            return Err(Problem::not_found(format!(
                "mapping {} has no file {rel}",
                c.object_path(&n)
            )));
        }
        let file = db
            .mapping_file(row.version_id, rel.as_str())?
            .ok_or_else(|| Problem::internal("a listed mapping file has no blob"))?;
        return Ok(FileAnswer::File(file));
    }
    if let Some((c, n)) = whole
        && who.can(Perm::Read, &c)
        && let Ok(Some(cid)) = db.container_id(&c)
        && db.mapping(cid, n.as_str())?.is_some()
    {
        return show_mapping(db.reads(), who, &c, &n).map(FileAnswer::Mapping);
    }
    Err(first_error.unwrap_or_else(|| Problem::not_found("no such mapping file")))
}
