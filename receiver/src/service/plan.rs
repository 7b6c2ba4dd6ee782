//! What a bundle changes, object by object: the plan a dry run answers, and what a deploy
//! decides before it writes (an object whose content is what is stored is `unchanged` and not
//! written again). One computation serves both, so a plan says what the deploy will do.
//!
//! A mapping compares by its definition and by the SHA-256 of each of its files (the digests
//! the bundle's manifest gives, against those recorded when the stored files were written).
//! A credential compares by type, by each non-sensitive field, and by its secrets' keyed
//! fingerprints; a secret value is never compared in clear nor named in a plan. `drift` marks
//! a stored credential changed outside deployments (PATCH, create) since a deployment last
//! wrote it, which this bundle would overwrite.

use std::collections::{BTreeSet, HashMap, HashSet};

use flowpack_shared::bundle::manifest::{EntryPath, Manifest};
use flowpack_shared::model::credential::{Credential, SecretValue};
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::names::{ContainerPath, Name};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::problem::{Problem, ProblemCode};
use crate::service::creds::{self, SecretKeys};
use crate::store::{ContainerId, CredentialRow, Reads};

/// What a deploy does to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It is not stored yet.
    Create,
    /// It is stored with other content.
    Update,
    /// It is stored with this very content: nothing is written.
    Unchanged,
}

/// What happens to a credential's secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Secrets {
    /// The stored ones stay (the bundle carries none, or the same values).
    Kept,
    /// The bundle sets values that differ from the stored ones.
    Set,
    /// Stored secrets are forgotten: the destination changes and the bundle does not carry
    /// them again.
    Cleared,
    /// There are none, before or after.
    None,
}

/// Which kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A mapping definition with its files.
    Mapping,
    /// A credential record.
    Credential,
}

/// One object's change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Its path (`/container/name`).
    pub path: String,
    /// Mapping or credential.
    pub kind: Kind,
    /// Create, update or unchanged.
    pub action: Action,
    /// The names of the fields that change (never values); for a create, the fields it has.
    pub fields: Vec<String>,
    /// What happens to its secrets (`none` for a mapping).
    pub secrets: Secrets,
    /// The stored object was changed outside deployments and this bundle overwrites that.
    pub drift: bool,
}

/// The mappings of a bundle whose files are exactly those of their live version: name → that
/// version's row id. A deploy does not write those files again.
pub fn files_unchanged(
    db: &dyn Reads,
    container: Option<ContainerId>,
    manifest: &Manifest,
) -> Result<HashMap<Name, i64>, Problem> {
    let Some(cid) = container else {
        return Ok(HashMap::new());
    };
    let mut bundled: HashMap<Name, Vec<(String, [u8; 32])>> = HashMap::new();
    for e in &manifest.entries {
        match EntryPath::parse(&e.path) {
            Some(EntryPath::Mapping(name)) => {
                bundled.entry(name).or_default();
            }
            Some(EntryPath::MappingFile(name, file)) => {
                bundled
                    .entry(name)
                    .or_default()
                    .push((file.as_str().to_owned(), e.sha256.0));
            }
            _ => {}
        }
    }
    let mut same = HashMap::new();
    for (name, mut files) in bundled {
        let Some(live) = db.mapping(cid, name.as_str())? else {
            continue;
        };
        files.sort();
        let mut stored = Vec::new();
        for (path, digest) in db.mapping_file_digests(live.version_id)? {
            let digest = match digest.as_deref().map(<[u8; 32]>::try_from) {
                Some(Ok(d)) => d,
                // Stored before digests were recorded: hashed now.
                _ => hash_stored(db, live.version_id, &path)?,
            };
            stored.push((path, digest));
        }
        if stored == files {
            same.insert(name, live.version_id);
        }
    }
    Ok(same)
}

fn hash_stored(db: &dyn Reads, version_id: i64, path: &str) -> Result<[u8; 32], Problem> {
    let mut file = db
        .mapping_file(version_id, path)?
        .ok_or_else(|| Problem::internal("a listed mapping file vanished"))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(Problem::internal)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// The change a bundle's mapping makes. `files_same`: its files are those of the live
/// version ([`files_unchanged`]).
pub fn mapping_change(
    db: &dyn Reads,
    container: Option<ContainerId>,
    target: &ContainerPath,
    mapping: &Mapping,
    files_same: bool,
) -> Result<Change, Problem> {
    let live = match container {
        Some(cid) => db.mapping(cid, mapping.name.as_str())?,
        None => None,
    };
    let mut fields = Vec::new();
    let action = match live {
        None => {
            if mapping.description.is_some() {
                fields.push("description");
            }
            if !mapping.parameters.is_empty() {
                fields.push("parameters");
            }
            if !mapping.files.is_empty() {
                fields.push("files");
            }
            Action::Create
        }
        Some(live) => {
            let old: Option<Mapping> = serde_json::from_str(&live.definition).ok();
            match old {
                Some(old) => {
                    if old.description != mapping.description {
                        fields.push("description");
                    }
                    if old.parameters != mapping.parameters {
                        fields.push("parameters");
                    }
                    if old.files != mapping.files || !files_same {
                        fields.push("files");
                    }
                }
                // A stored definition this version cannot read is replaced.
                None => fields.extend(["description", "parameters", "files"]),
            }
            if fields.is_empty() {
                Action::Unchanged
            } else {
                Action::Update
            }
        }
    };
    Ok(Change {
        path: target.object_path(&mapping.name),
        kind: Kind::Mapping,
        action,
        fields: fields.into_iter().map(str::to_owned).collect(),
        secrets: Secrets::None,
        drift: false,
    })
}

/// The change a bundle's credential (its sealed values opened) makes, with the stored row.
///
/// `compare_secrets`: whether the caller may learn if a carried secret equals the stored one
/// (it holds `use` on the container, which resolves secrets anyway). Otherwise every carried
/// secret counts as `set`, equal or not: a principal that may only write must not be able to
/// test guesses of a stored secret by planning or deploying bundles.
pub fn credential_change(
    db: &dyn Reads,
    keys: &SecretKeys,
    container: Option<ContainerId>,
    target: &ContainerPath,
    c: &Credential,
    compare_secrets: bool,
) -> Result<(Change, Option<CredentialRow>), Problem> {
    let path = target.object_path(&c.name);
    let new_public = c.public_json();
    let carried: HashMap<&str, String> = c
        .secrets
        .iter()
        .filter_map(|(f, v)| match v {
            SecretValue::Plain(s) => Some((*f, keys.fingerprint(s))),
            SecretValue::Sealed(_) => None,
        })
        .collect();
    let stored = match container {
        Some(cid) => db.credential(cid, c.name.as_str())?,
        None => None,
    };
    let Some(row) = stored else {
        let fields = new_public
            .keys()
            .filter(|k| k.as_str() != "name")
            .cloned()
            .collect();
        let secrets = if carried.is_empty() {
            Secrets::None
        } else {
            Secrets::Set
        };
        let change = Change {
            path,
            kind: Kind::Credential,
            action: Action::Create,
            fields,
            secrets,
            drift: false,
        };
        return Ok((change, None));
    };
    let old_public: Map<String, Value> = serde_json::from_str(&row.public).unwrap_or_default();
    let keys_of = old_public.keys().chain(new_public.keys());
    let mut fields: BTreeSet<String> = keys_of
        .filter(|k| k.as_str() != "name" && old_public.get(*k) != new_public.get(*k))
        .cloned()
        .collect();
    if row.kind != c.kind.as_str() {
        fields.insert("type".to_owned());
    }
    let stored_fps: HashMap<String, String> = db
        .secrets(row.id)?
        .into_iter()
        .map(|s| (s.field, s.fingerprint))
        .collect();
    let same_destination = creds::same_destination(&row.kind, &old_public, c.kind, &new_public);
    // A changed type forgets every stored secret; a moved destination those not carried.
    let clears = stored_fps.keys().any(|f| !carried.contains_key(f.as_str()))
        && (!same_destination || row.kind != c.kind.as_str());
    let sets = carried
        .iter()
        .any(|(f, fp)| !compare_secrets || stored_fps.get(*f) != Some(fp));
    let secrets = if clears {
        Secrets::Cleared
    } else if sets {
        Secrets::Set
    } else if stored_fps.is_empty() && carried.is_empty() {
        Secrets::None
    } else {
        Secrets::Kept
    };
    let action = if fields.is_empty() && matches!(secrets, Secrets::Kept | Secrets::None) {
        Action::Unchanged
    } else {
        Action::Update
    };
    let drift = action == Action::Update && db.changed_outside(row.id)?;
    let change = Change {
        path,
        kind: Kind::Credential,
        action,
        fields: fields.into_iter().collect(),
        secrets,
        drift,
    };
    Ok((change, Some(row)))
}

/// Refuses to change the type of a stored credential that a live mapping of its container
/// outside `replaced` (the mappings the same write puts in place) references
/// (`409 credential-in-use`, naming the mappings): a mapping keeps working only with the
/// type of credential it was deployed with.
pub fn check_types_in_use(
    db: &dyn Reads,
    container: Option<ContainerId>,
    target: &ContainerPath,
    retyped: &[(&Name, &str, &str)],
    replaced: &HashSet<&str>,
) -> Result<(), Problem> {
    let (Some(cid), false) = (container, retyped.is_empty()) else {
        return Ok(());
    };
    let mappings = db.mappings_in(cid)?;
    for (name, old, new) in retyped {
        let users: Vec<String> = mappings
            .iter()
            .filter(|(m, _)| !replaced.contains(m.as_str()))
            .filter(|(_, def)| {
                serde_json::from_str::<Mapping>(def)
                    .map(|m| m.credential_refs().any(|(_, c)| c == *name))
                    .unwrap_or(false)
            })
            .map(|(m, _)| match Name::parse(m) {
                Ok(n) => target.object_path(&n),
                Err(_) => m.clone(),
            })
            .collect();
        if !users.is_empty() {
            return Err(Problem::conflict(
                ProblemCode::CredentialInUse,
                format!(
                    "credential {} is a {old} credential used by {}; a bundle cannot make it a {new} credential while they use it: deploy them with it, or give the new credential another name",
                    target.object_path(name),
                    users.join(", ")
                ),
            )
            .with("mappings", Value::from(users)));
        }
    }
    Ok(())
}
