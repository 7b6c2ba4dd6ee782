//! Credentials on the receiver: secrets at rest, redaction, fingerprints, PATCH, resolution.
//!
//! Every sensitive value is stored as ChaCha20-Poly1305 ciphertext under the at-rest key, with
//! the credential's path and the field name as associated data, so a ciphertext copied to
//! another row does not open. Reads show a sensitive field only as `{"set": true,
//! "fingerprint": …}`: HMAC-SHA256 under a second key, so equal values can be recognized
//! without revealing them. Both keys come from `secrets.key` by HKDF and never touch the
//! database.

use std::collections::BTreeMap;

use flowpack_shared::model::credential::{
    Credential, CredentialType, RecordForm, SecretValue, Usage,
};
use flowpack_shared::model::mapping::{Mapping, ParamType};
use flowpack_shared::names::{ContainerPath, Name};
use flowpack_shared::secret::{Secret, SecretBytes};
use serde_json::{Map, Value, json};

use crate::problem::{Problem, ProblemCode};
use crate::service::auth::{Perm, Principal};
use crate::store::{AuditRow, ContainerId, CredentialId, CredentialRow, Db, Reads, Tx};

/// The at-rest and fingerprint keys, derived from a master key (`secrets.key`), and able to
/// change to another master key while the server runs (`rotate at-rest`).
///
/// Which key encrypts is decided by the store, not by the files: every write transaction
/// first reads the id of the key the store's secrets are under and calls
/// [`SecretKeys::use_key`] with it (the data directory installs that check), so a secret is
/// never written under a key the store no longer names — a rotation takes the writer lock to
/// re-encrypt, and the next write after it switches. Decryption tries the current key, then
/// those used before it in this process (a read on a snapshot from before a rotation), then
/// the key files on disk (a rotation committed since the last write).
///
/// Clones share their keys.
#[derive(Clone)]
pub struct SecretKeys {
    shared: std::sync::Arc<KeysShared>,
}

struct KeysShared {
    ring: std::sync::RwLock<KeyRing>,
    /// Reads the candidate master keys from the data directory, if there is one.
    loader: Option<KeyLoader>,
}

/// Reads the master keys a data directory holds (the current one, and a next one while a
/// rotation is under way).
pub type KeyLoader = Box<dyn Fn() -> Vec<SecretBytes<32>> + Send + Sync>;

struct KeyRing {
    current: std::sync::Arc<Derived>,
    /// Keys used before the current one in this process, newest first (a few at most).
    older: Vec<std::sync::Arc<Derived>>,
}

/// The keys derived from one master key.
struct Derived {
    id: String,
    at_rest: SecretBytes<32>,
    fingerprint: ring::hmac::Key,
}

/// How many earlier keys a running server keeps to read snapshots from before a rotation.
const OLDER_KEPT: usize = 2;

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKeys([redacted])")
    }
}

fn hkdf(master: &SecretBytes<32>, info: &[u8]) -> SecretBytes<32> {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"flowpack-receiver/1");
    let prk = salt.extract(master.expose());
    let mut out = [0u8; 32];
    // HKDF-SHA256 can expand to 255 * 32 bytes; 32 is always within that, so neither step fails.
    let ok = prk
        .expand(&[info], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out));
    debug_assert!(ok.is_ok());
    SecretBytes::new(out)
}

impl Derived {
    fn of(master: &SecretBytes<32>) -> Derived {
        let fp = hkdf(master, b"fingerprint hmac-sha256");
        Derived {
            id: crate::keyring::at_rest_key_id(master),
            at_rest: hkdf(master, b"at-rest chacha20-poly1305"),
            fingerprint: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, fp.expose()),
        }
    }

    fn encrypt(&self, path: &str, field: &str, value: &Secret) -> Result<Vec<u8>, Problem> {
        let nonce = flowpack_shared::seal::random::<12>().map_err(Problem::internal)?;
        Ok(flowpack_shared::seal::seal_bytes(
            self.at_rest.expose(),
            nonce,
            &SecretKeys::ad(path, field),
            value.expose().as_bytes(),
        ))
    }

    fn decrypt(&self, path: &str, field: &str, ciphertext: &[u8]) -> Option<Secret> {
        let plain = zeroize::Zeroizing::new(flowpack_shared::seal::open_bytes(
            self.at_rest.expose(),
            &SecretKeys::ad(path, field),
            ciphertext,
        )?);
        String::from_utf8(plain.to_vec()).ok().map(Secret::new)
    }

    fn fingerprint(&self, value: &Secret) -> String {
        let tag = ring::hmac::sign(&self.fingerprint, value.expose().as_bytes());
        hex::encode(&tag.as_ref()[..8])
    }
}

impl SecretKeys {
    /// Derives the at-rest and fingerprint keys from the master key; they never change.
    pub fn derive(master: &SecretBytes<32>) -> SecretKeys {
        SecretKeys::build(master, None)
    }

    /// Derives the keys from the master key, and may change to another master key that
    /// `loader` reads (see [`SecretKeys::use_key`]).
    pub fn with_loader(master: &SecretBytes<32>, loader: KeyLoader) -> SecretKeys {
        SecretKeys::build(master, Some(loader))
    }

    fn build(master: &SecretBytes<32>, loader: Option<KeyLoader>) -> SecretKeys {
        SecretKeys {
            shared: std::sync::Arc::new(KeysShared {
                ring: std::sync::RwLock::new(KeyRing {
                    current: std::sync::Arc::new(Derived::of(master)),
                    older: Vec::new(),
                }),
                loader,
            }),
        }
    }

    fn current(&self) -> std::sync::Arc<Derived> {
        self.shared
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .current
            .clone()
    }

    /// The id of the master key that encrypts now (see [`crate::keyring::at_rest_key_id`]).
    pub fn id(&self) -> String {
        self.current().id.clone()
    }

    /// Makes the master key with id `id` the one that encrypts, reading it from the data
    /// directory if it is not the current one. Called inside every write transaction with
    /// the id the store records; fails (and so does the transaction) when no key of that id
    /// can be found, rather than write a secret under a key the store does not name.
    pub fn use_key(&self, id: &str) -> Result<(), String> {
        if self.current().id == id {
            return Ok(());
        }
        let found = self
            .find(|d| d.id == id)
            .or_else(|| self.load_new().into_iter().find(|d| d.id == id));
        let Some(found) = found else {
            return Err(format!(
                "the store's secrets are encrypted under key {id}, which is not in the data directory"
            ));
        };
        let mut ring = self
            .shared
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = std::mem::replace(&mut ring.current, found);
        ring.older.retain(|d| d.id != id && d.id != before.id);
        ring.older.insert(0, before);
        ring.older.truncate(OLDER_KEPT);
        tracing::info!(key_id = id, "the at-rest key changed");
        Ok(())
    }

    /// The current or an earlier key of this process that satisfies `f`.
    fn find(&self, f: impl Fn(&Derived) -> bool) -> Option<std::sync::Arc<Derived>> {
        let ring = self
            .shared
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::iter::once(&ring.current)
            .chain(&ring.older)
            .find(|d| f(d))
            .cloned()
    }

    /// The keys in the data directory that this process does not hold yet.
    fn load_new(&self) -> Vec<std::sync::Arc<Derived>> {
        let Some(loader) = &self.shared.loader else {
            return Vec::new();
        };
        let known: Vec<String> = {
            let ring = self
                .shared
                .ring
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::iter::once(&ring.current)
                .chain(&ring.older)
                .map(|d| d.id.clone())
                .collect()
        };
        loader()
            .iter()
            .map(Derived::of)
            .filter(|d| !known.contains(&d.id))
            .map(std::sync::Arc::new)
            .collect()
    }

    fn ad(path: &str, field: &str) -> Vec<u8> {
        let mut ad = path.as_bytes().to_vec();
        ad.push(0);
        ad.extend_from_slice(field.as_bytes());
        ad
    }

    /// Encrypts one sensitive value of credential `path` under the current key.
    pub fn encrypt(&self, path: &str, field: &str, value: &Secret) -> Result<Vec<u8>, Problem> {
        self.current().encrypt(path, field, value)
    }

    /// Decrypts what [`SecretKeys::encrypt`] stored; `None` when it does not authenticate
    /// under any key this process holds or the data directory has.
    pub fn decrypt(&self, path: &str, field: &str, ciphertext: &[u8]) -> Option<Secret> {
        let held: Vec<std::sync::Arc<Derived>> = {
            let ring = self
                .shared
                .ring
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::iter::once(&ring.current)
                .chain(&ring.older)
                .cloned()
                .collect()
        };
        if let Some(v) = held.iter().find_map(|d| d.decrypt(path, field, ciphertext)) {
            return Some(v);
        }
        // A rotation committed since this process last wrote: the next write switches to the
        // new key; until then reads find it on disk.
        for d in self.load_new() {
            if let Some(v) = d.decrypt(path, field, ciphertext) {
                let mut ring = self
                    .shared
                    .ring
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if ring.current.id != d.id && ring.older.iter().all(|o| o.id != d.id) {
                    ring.older.insert(0, d);
                    ring.older.truncate(OLDER_KEPT + 1);
                }
                return Some(v);
            }
        }
        None
    }

    /// Decrypts with this very key only (no other key is tried): what a rotation re-encrypts
    /// must open under the key the store names.
    pub fn decrypt_exact(&self, path: &str, field: &str, ciphertext: &[u8]) -> Option<Secret> {
        self.current().decrypt(path, field, ciphertext)
    }

    /// The value's fingerprint: HMAC-SHA256 under the current key, first 16 hex digits.
    pub fn fingerprint(&self, value: &Secret) -> String {
        self.current().fingerprint(value)
    }
}

/// Splits an object path (`/public/orders/erp`) into its container and name.
pub fn split_object_path(path: &ContainerPath) -> Option<(ContainerPath, Name)> {
    let parent = path.parent()?;
    let name = Name::parse(path.last_segment()?).ok()?;
    Some((parent, name))
}

/// The stored record as a [`Credential`] without secrets (the row was written by this program).
fn public_credential(path: &str, row: &CredentialRow) -> Result<Credential, Problem> {
    let map: Map<String, Value> = serde_json::from_str(&row.public).map_err(Problem::internal)?;
    Credential::from_map(path, &map, RecordForm::Admin).map_err(Problem::internal)
}

/// The redacted record: public fields, each set sensitive field as `{"set", "fingerprint"}`,
/// `needs_secrets`, and for oauth2 `needs_authorization` (its refresh token was refused).
/// Returns the JSON text: members in key order, as a JSON object of them prints.
pub fn redacted(db: &dyn Reads, path: &str, row: &CredentialRow) -> Result<Vec<u8>, Problem> {
    let secrets = db.secrets(row.id)?;
    redact(
        path,
        row,
        secrets
            .iter()
            .map(|s| (s.field.as_str(), s.fingerprint.as_str())),
    )
}

/// The redacted record of credential `n` in container `c` ([`redacted`]), read with its
/// secrets' fingerprints in one statement; 404 as [`find`] when either is missing.
pub fn show(db: &dyn Reads, c: &ContainerPath, n: &Name) -> Result<Vec<u8>, Problem> {
    let path = c.object_path(n);
    let Some((row, secrets)) = db.credential_at(c, n.as_str())? else {
        return Err(not_found(&path));
    };
    redact(
        &path,
        &row,
        secrets.iter().map(|(f, fp)| (f.as_str(), fp.as_str())),
    )
}

/// [`redacted`] from the stored secrets' (field, fingerprint).
fn redact<'a>(
    path: &'a str,
    row: &'a CredentialRow,
    secrets: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<u8>, Problem> {
    // The stored fields go straight into the answer's members, their names borrowed from the
    // stored text; the receiver's members follow. A later insert replaces an earlier one of
    // the same name, and a stored `path` would have replaced the receiver's (so `path` only
    // fills a gap): the precedence the answer always had.
    let mut m: BTreeMap<Key<'_>, Member<'_>> =
        serde_json::from_str(&row.public).map_err(Problem::internal)?;
    m.entry(Key::from("path")).or_insert(Member::Text(path));
    let mut none = true;
    for (field, fingerprint) in secrets {
        m.insert(Key::from(field), Member::Set(fingerprint));
        none = false;
    }
    m.insert(Key::from("needs_secrets"), Member::Flag(none));
    if row.kind == CredentialType::Oauth2.as_str() {
        m.insert(
            Key::from("needs_authorization"),
            Member::Flag(row.needs_authorization),
        );
    }
    serde_json::to_vec(&m).map_err(Problem::internal)
}

/// A member name of the redacted record: borrowed from the stored text unless it had to be
/// unescaped. Ordered as its text, like the keys of a JSON object.
#[derive(PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, serde::Serialize)]
struct Key<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Self {
        Key(std::borrow::Cow::Borrowed(s))
    }
}

/// A member of the redacted record.
enum Member<'a> {
    /// A stored non-sensitive field.
    Public(Value),
    /// Text computed by the receiver (the path).
    Text(&'a str),
    /// A set sensitive field, by its fingerprint: `{"fingerprint": …, "set": true}`.
    Set(&'a str),
    /// A flag computed by the receiver.
    Flag(bool),
}

/// A stored field's value.
impl<'de> serde::Deserialize<'de> for Member<'_> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Member::Public)
    }
}

impl serde::Serialize for Member<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Member::Public(v) => v.serialize(s),
            Member::Text(t) => s.serialize_str(t),
            Member::Flag(b) => s.serialize_bool(*b),
            Member::Set(fingerprint) => {
                // Key order, as a JSON object of the two prints.
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("fingerprint", fingerprint)?;
                m.serialize_entry("set", &true)?;
                m.end()
            }
        }
    }
}

/// A field whose new value gives a credential that needed authorization a fresh start.
fn is_token_field(field: &str) -> bool {
    field == "refresh_token" || field == "access_token"
}

/// True when the stored credential has no secret.
pub fn needs_secrets(db: &dyn Reads, credential: CredentialId) -> Result<bool, Problem> {
    Ok(db.secrets(credential)?.is_empty())
}

/// What an upsert did.
#[derive(Debug)]
pub struct Upserted {
    /// The credential's path.
    pub path: String,
    /// Newly created (else updated).
    pub created: bool,
    /// No secret after the upsert.
    pub needs_secrets: bool,
    /// Stored secrets were forgotten because a destination field changed without them.
    pub secrets_cleared: bool,
}

/// True when two records of the same type send their secrets to the same place: every
/// destination field ([`CredentialType::destination_fields`]) is equal, absent in both
/// included. Records of different types never share a destination.
pub fn same_destination(
    old_kind: &str,
    old: &Map<String, Value>,
    new_kind: CredentialType,
    new: &Map<String, Value>,
) -> bool {
    old_kind == new_kind.as_str()
        && new_kind
            .destination_fields()
            .iter()
            .all(|f| old.get(*f) == new.get(*f))
}

/// Binds a credential's secrets to its destination after its public record changed from
/// `before` to `after_public`: when the destination moved, every stored secret that this same
/// write did not set (`carried`) is forgotten, its OAuth tokens included, and pending
/// authorizations are dropped. Returns whether secrets were forgotten.
fn unbind_moved_secrets(
    tx: &Tx<'_>,
    id: CredentialId,
    before: &CredentialRow,
    kind: CredentialType,
    after_public: &Map<String, Value>,
    carried: &[&str],
) -> Result<bool, Problem> {
    // A stored record that does not parse is treated as another destination: forgetting is
    // the safe side.
    let old: Map<String, Value> = serde_json::from_str(&before.public).unwrap_or_default();
    if same_destination(&before.kind, &old, kind, after_public) {
        return Ok(false);
    }
    let stored: Vec<String> = tx.secrets(id)?.into_iter().map(|s| s.field).collect();
    let mut cleared = false;
    for field in stored.iter().filter(|f| !carried.contains(&f.as_str())) {
        tx.clear_secret(id, field)?;
        cleared = true;
    }
    tx.delete_oauth_states(id)?;
    Ok(cleared)
}

/// Upserts a credential from a bundle: public fields replaced, carried secrets set, omitted
/// secrets kept — unless a destination field changed, which forgets the omitted ones.
pub fn upsert_from_bundle(
    tx: &Tx<'_>,
    keys: &SecretKeys,
    container_id: ContainerId,
    container: &ContainerPath,
    c: &Credential,
) -> Result<Upserted, Problem> {
    let path = container.object_path(&c.name);
    let public_map = c.public_json();
    let public = serde_json::to_string(&public_map).map_err(Problem::internal)?;
    let (id, before) =
        tx.upsert_credential(container_id, c.name.as_str(), c.kind.as_str(), &public)?;
    let carried: Vec<&str> = c.secrets.keys().copied().collect();
    let secrets_cleared = match &before {
        Some(before) => unbind_moved_secrets(tx, id, before, c.kind, &public_map, &carried)?,
        None => false,
    };
    for (field, value) in &c.secrets {
        match value {
            SecretValue::Plain(secret) => {
                let ct = keys.encrypt(&path, field, secret)?;
                tx.set_secret(id, field, &ct, &keys.fingerprint(secret))?;
                if is_token_field(field) {
                    tx.set_needs_authorization(id, false)?;
                }
            }
            // read_payload opens every sealed value when given the identity, or fails.
            SecretValue::Sealed(_) => {
                return Err(Problem::internal(format!(
                    "credential {path}: field {field} still sealed after verification"
                )));
            }
        }
    }
    Ok(Upserted {
        needs_secrets: needs_secrets(tx.reads(), id)?,
        path,
        created: before.is_none(),
        secrets_cleared,
    })
}

/// Applies a PATCH body to a stored credential: a field absent is unchanged, `null` clears it,
/// a value sets it. The result is checked by the model rules before anything is written.
pub fn patch(
    tx: &Tx<'_>,
    keys: &SecretKeys,
    path: &str,
    row: &CredentialRow,
    body: &Value,
) -> Result<(), Problem> {
    let Value::Object(body) = body else {
        return Err(Problem::unprocessable(
            ProblemCode::BadRequestBody,
            "the body must be a JSON object of fields to change",
        ));
    };
    let current = public_credential(path, row)?;
    let kind = current.kind;
    let mut map: Map<String, Value> =
        serde_json::from_str(&row.public).map_err(Problem::internal)?;
    let mut cleared: Vec<&str> = Vec::new();
    let mut set_secrets = Map::new();
    for (k, v) in body {
        match k.as_str() {
            "name" | "type" => {
                if map.get(k) != Some(v) {
                    return Err(Problem::unprocessable(
                        ProblemCode::ReadOnlyField,
                        format!("field `{k}` cannot be changed by PATCH"),
                    ));
                }
            }
            "path" | "needs_secrets" | "needs_authorization" => {
                return Err(Problem::unprocessable(
                    ProblemCode::ReadOnlyField,
                    format!("field `{k}` is computed by the receiver and cannot be set"),
                ));
            }
            f if kind.is_sensitive(f) => match v {
                Value::Null => cleared.push(f),
                Value::String(_) => {
                    set_secrets.insert(k.clone(), v.clone());
                }
                _ => {
                    return Err(Problem::unprocessable(
                        ProblemCode::BadRecord,
                        format!("{path}: field `{k}`: expected a string or null"),
                    ));
                }
            },
            _ => {
                if v.is_null() {
                    map.remove(k);
                } else {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let mut check = map.clone();
    check.extend(set_secrets);
    let parsed = Credential::from_map(path, &check, RecordForm::Admin)
        .map_err(|e| Problem::unprocessable(ProblemCode::BadRecord, e.to_string()))?;
    let public = serde_json::to_string(&parsed.public_json()).map_err(Problem::internal)?;
    let (container, name) = ContainerPath::parse(path)
        .ok()
        .as_ref()
        .and_then(split_object_path)
        .ok_or_else(|| Problem::internal("stored credential path does not parse"))?;
    let cid = tx
        .container_id(&container)?
        .ok_or_else(|| Problem::internal("credential's container vanished"))?;
    let (_, before) = tx.upsert_credential(cid, name.as_str(), kind.as_str(), &public)?;
    for f in cleared {
        tx.clear_secret(row.id, f)?;
    }
    tx.set_changed_outside(row.id, true)?;
    if let Some(before) = before {
        let carried: Vec<&str> = parsed.secrets.keys().copied().collect();
        unbind_moved_secrets(tx, row.id, &before, kind, &parsed.public_json(), &carried)?;
    }
    for (field, value) in &parsed.secrets {
        if let SecretValue::Plain(secret) = value {
            let ct = keys.encrypt(path, field, secret)?;
            tx.set_secret(row.id, field, &ct, &keys.fingerprint(secret))?;
            if is_token_field(field) {
                tx.set_needs_authorization(row.id, false)?;
            }
        }
    }
    Ok(())
}

/// Creates credential `n` in container `c` from an admin's record (`PUT
/// /v1/credentials/{path}`): the fields of its type, sensitive ones in clear; `name` equal to
/// the path's last segment or absent. Missing containers are created, as a deploy does. A
/// credential of that name already there is `409 exists`: it is changed with PATCH, never
/// replaced. `secrets_allowed` says whether the request came over a channel that may carry
/// secrets in clear (TLS or a loopback client); a record with secrets over another is
/// refused. Every outcome but an internal fault is audited (`create-credential`, `created` or
/// `refused`). Returns the redacted record.
pub fn create(
    keys: &SecretKeys,
    db: &mut Db,
    who: &Principal,
    c: &ContainerPath,
    n: &Name,
    body: &Value,
    secrets_allowed: bool,
) -> Result<Vec<u8>, Problem> {
    let path = c.object_path(n);
    let audit = |outcome: &str, status: u16| AuditRow {
        principal: Some(who.name.clone()),
        action: "create-credential".into(),
        container: Some(c.to_string()),
        target: Some(path.clone()),
        outcome: outcome.into(),
        status,
        ..AuditRow::default()
    };
    let created = (|| {
        if !who.can(Perm::Write, c) {
            return Err(Problem::lacks(Perm::Write.as_str(), c));
        }
        let record = new_record(&path, n, body)?;
        if !record.secrets.is_empty() && !secrets_allowed {
            let mut e = Problem::forbidden(format!(
                "credential {path}: the record carries secrets in clear, which this receiver takes only over TLS or from a loopback client; send it over HTTPS, or create it without secrets and fill them in later"
            ));
            e.code = ProblemCode::SecretsInClear;
            return Err(e);
        }
        let tx = db.write()?;
        if let Some(cid) = tx.container_id(c)?
            && tx.credential(cid, n.as_str())?.is_some()
        {
            return Err(Problem::conflict(
                ProblemCode::Exists,
                format!(
                    "credential {path} already exists; change it with PATCH /v1/credentials{path}"
                ),
            ));
        }
        let cid = tx.ensure_container(c)?;
        // Written as a deploy writes a credential: one way to store records and secrets.
        upsert_from_bundle(&tx, keys, cid, c, &record)?;
        let row = tx
            .credential(cid, n.as_str())?
            .ok_or_else(|| Problem::internal("a created credential vanished"))?;
        // Not written by a deployment: a bundle that replaces it is told so (drift).
        tx.set_changed_outside(row.id, true)?;
        let answer = redacted(tx.reads(), &path, &row)?;
        tx.insert_audit(&audit("created", 201))?;
        tx.commit()?;
        Ok(answer)
    })();
    if let Err(e) = &created
        && e.code != ProblemCode::Internal
    {
        let mut row = audit("refused", e.status.as_u16());
        row.code = Some(e.code.as_str().to_owned());
        row.detail = Some(e.detail.clone());
        super::audit::audit_alone(db, row);
    }
    created
}

/// The record of a create, checked by the model's rules for an admin's record.
fn new_record(path: &str, n: &Name, body: &Value) -> Result<Credential, Problem> {
    let Value::Object(map) = body else {
        return Err(Problem::unprocessable(
            ProblemCode::BadRequestBody,
            "the body must be a JSON object: a credential record such as {\"type\": \"password\", \"username\": \"svc\", \"password\": \"…\"}",
        ));
    };
    let mut map = map.clone();
    match map.get("name") {
        None => {
            map.insert("name".into(), Value::String(n.as_str().to_owned()));
        }
        Some(Value::String(s)) if s == n.as_str() => {}
        Some(other) => {
            let given = match other {
                Value::String(s) => flowpack_shared::names::quoted(s).to_string(),
                _ => "not a string".to_owned(),
            };
            return Err(Problem::unprocessable(
                ProblemCode::BadRecord,
                format!(
                    "{path}: field `name`: {given} differs from the path's last segment `{n}`; leave it out or make it equal"
                ),
            ));
        }
    }
    Credential::from_map(path, &map, RecordForm::Admin)
        .map_err(|e| Problem::unprocessable(ProblemCode::BadRecord, e.to_string()))
}

/// One problem found while resolving.
struct ParamProblem {
    code: ProblemCode,
    detail: String,
    parameter: String,
}

/// Resolves the credential parameters of `mapping` (deployed in `container`) for a job step.
///
/// Precedence: a step parameter (inline values, or a reference to a credential on the server)
/// wins over the credential deployed with the mapping. Every problem is collected; the answer
/// is 422 naming each parameter at fault.
pub fn resolve(
    db: &dyn Reads,
    who: &Principal,
    container: &ContainerPath,
    container_id: ContainerId,
    mapping: &Mapping,
    body: &Value,
) -> Result<Value, Problem> {
    let bad = |d: String| Problem::unprocessable(ProblemCode::BadRequestBody, d);
    let Value::Object(body) = body else {
        return Err(bad(
            "the body must be an object: {\"usage\": \"http\", \"parameters\": {…}}".into(),
        ));
    };
    if let Some(k) = body.keys().find(|k| *k != "usage" && *k != "parameters") {
        return Err(bad(format!(
            "unknown field `{k}`; expected `usage` and `parameters`"
        )));
    }
    let usage = match body.get("usage") {
        Some(Value::String(s)) => Usage::parse(s).ok_or_else(|| {
            bad(format!(
                "field `usage`: unknown usage {}; expected one of {}",
                flowpack_shared::names::quoted(s),
                flowpack_shared::model::credential::USAGES.join(", ")
            ))
        })?,
        _ => {
            return Err(bad(format!(
                "field `usage` is required: one of {}",
                flowpack_shared::model::credential::USAGES.join(", ")
            )));
        }
    };
    let empty = Map::new();
    let steps = match body.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("field `parameters` must be an object".into())),
    };
    let mut problems: Vec<ParamProblem> = Vec::new();
    let cred_params: Vec<_> = mapping
        .parameters
        .iter()
        .filter(|p| p.kind == ParamType::Credential)
        .collect();
    for name in steps.keys() {
        if !cred_params.iter().any(|p| p.name.as_str() == name) {
            problems.push(ParamProblem {
                code: ProblemCode::UnknownParameter,
                detail: format!(
                    "parameter {}: mapping {} has no credential parameter of that name",
                    flowpack_shared::names::quoted(name),
                    mapping.name
                ),
                parameter: name.clone(),
            });
        }
    }
    let mut out = Map::new();
    for p in cred_params {
        let pname = p.name.as_str();
        let problem = |code: ProblemCode, detail: String| ParamProblem {
            code,
            detail: format!("parameter {pname}: {detail}"),
            parameter: pname.to_owned(),
        };
        // The credential deployed with the mapping, when it names one and it is stored.
        let deployed_path = p.credential.as_ref().map(|c| container.object_path(c));
        let deployed = match &p.credential {
            Some(c) => db.credential(container_id, c.as_str())?,
            None => None,
        };
        let deployed_type = deployed
            .as_ref()
            .and_then(|r| CredentialType::parse(&r.kind));
        // A step-given credential must be of the type the parameter names
        // (`credential_type`), and of the deployed credential's type: a credential is specific
        // to what it authenticates. `what` names the credential in the detail.
        let mismatch = |t: CredentialType, what: &str| -> Option<String> {
            match (p.credential_type, deployed_type) {
                (Some(needed), _) if needed != t => Some(format!(
                    "{what} is of type {}, the parameter needs a {} credential (credential_type)",
                    t.as_str(),
                    needed.as_str()
                )),
                (_, Some(d)) if d != t => Some(format!(
                    "{what} is of type {}, the mapping was deployed with a {} credential",
                    t.as_str(),
                    d.as_str()
                )),
                _ => None,
            }
        };
        let result: Result<Value, ParamProblem> = match steps.get(pname) {
            Some(step) => match step_source(step) {
                Some(StepSource::Inline(obj)) => {
                    let mut obj = obj.clone();
                    if !obj.contains_key("name") {
                        let n = p.credential.as_ref().map_or(pname, Name::as_str);
                        obj.insert("name".into(), Value::String(n.to_owned()));
                    }
                    let origin = format!("parameters.{pname}.inline");
                    let parsed = Credential::from_map(&origin, &obj, RecordForm::Admin);
                    let wrong_type = parsed
                        .as_ref()
                        .ok()
                        .and_then(|c| mismatch(c.kind, "the inline credential"));
                    match (parsed, wrong_type) {
                        (Err(e), _) => Err(problem(ProblemCode::BadRecord, e.to_string())),
                        (Ok(_), Some(detail)) => Err(problem(ProblemCode::TypeMismatch, detail)),
                        (Ok(c), None) if c.needs_secrets() => Err(problem(
                            ProblemCode::MissingSecrets,
                            "the inline credential carries no secret".into(),
                        )),
                        (Ok(c), None) if !c.allows(usage) => Err(problem(
                            ProblemCode::UsageNotAllowed,
                            format!(
                                "the inline credential does not allow usage {}",
                                usage.as_str()
                            ),
                        )),
                        (Ok(c), None) => Ok(json!({"source": "inline", "type": c.kind.as_str()})),
                    }
                }
                Some(StepSource::Server(text)) => {
                    match ContainerPath::parse(text)
                        .ok()
                        .as_ref()
                        .and_then(split_object_path)
                    {
                        None => Err(problem(
                            ProblemCode::BadStepParameter,
                            format!(
                                "{} is not a credential path such as /public/shared/erp",
                                flowpack_shared::names::quoted(text)
                            ),
                        )),
                        Some((c, n)) => {
                            if !who.can(Perm::Use, &c) {
                                return Err(Problem::forbidden(format!(
                                    "parameter {pname}: you lack `use` on {}",
                                    c.object_path(&n)
                                )));
                            }
                            let path = c.object_path(&n);
                            server_credential(db, &c, &n, &path, usage, &mismatch)?
                                .map_err(|(code, d)| problem(code, d))
                        }
                    }
                }
                None => Err(problem(
                    ProblemCode::BadStepParameter,
                    "a step parameter is {\"credential\": \"/path\"} or {\"inline\": {…}}".into(),
                )),
            },
            None => match (&deployed, &deployed_path) {
                (_, None) => Err(problem(
                    ProblemCode::MissingCredential,
                    "the parameter is external: give the credential as a step parameter".into(),
                )),
                (None, Some(path)) => Err(problem(
                    ProblemCode::MissingCredential,
                    format!(
                        "credential {path} is not stored on the receiver; deploy it or give the credential as a step parameter"
                    ),
                )),
                (Some(row), Some(path)) => {
                    let c = public_credential(path, row)?;
                    if needs_secrets(db, row.id)? {
                        Err(problem(
                            ProblemCode::MissingSecrets,
                            format!(
                                "credential {path} was deployed without its secrets; fill them in (PATCH /v1/credentials/…) or give the credential as a step parameter"
                            ),
                        ))
                    } else if !c.allows(usage) {
                        Err(problem(
                            ProblemCode::UsageNotAllowed,
                            format!("credential {path} does not allow usage {}", usage.as_str()),
                        ))
                    } else {
                        Ok(
                            json!({"source": "deployed", "credential": path, "type": c.kind.as_str()}),
                        )
                    }
                }
            },
        };
        match result {
            Ok(v) => {
                out.insert(pname.to_owned(), v);
            }
            Err(p) => problems.push(p),
        }
    }
    if let Some(first) = problems.first() {
        let detail = problems
            .iter()
            .map(|p| p.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let params: BTreeMap<&str, &str> = problems
            .iter()
            .map(|p| (p.parameter.as_str(), p.code.as_str()))
            .collect();
        return Err(Problem::unprocessable(first.code, detail)
            .with("parameters", json!(params.keys().collect::<Vec<_>>())));
    }
    Ok(json!({ "parameters": out }))
}

enum StepSource<'a> {
    Inline(&'a Map<String, Value>),
    Server(&'a str),
}

fn step_source(v: &Value) -> Option<StepSource<'_>> {
    let Value::Object(o) = v else { return None };
    if o.len() != 1 {
        return None;
    }
    match (o.get("inline"), o.get("credential")) {
        (Some(Value::Object(i)), None) => Some(StepSource::Inline(i)),
        (None, Some(Value::String(s))) => Some(StepSource::Server(s)),
        _ => None,
    }
}

type Checked = Result<Value, (ProblemCode, String)>;

fn server_credential(
    db: &dyn Reads,
    container: &ContainerPath,
    name: &Name,
    path: &str,
    usage: Usage,
    mismatch: &dyn Fn(CredentialType, &str) -> Option<String>,
) -> Result<Checked, Problem> {
    let Some(cid) = db.container_id(container)? else {
        return Ok(Err((
            ProblemCode::CredentialNotFound,
            format!("credential {path} does not exist"),
        )));
    };
    let Some(row) = db.credential(cid, name.as_str())? else {
        return Ok(Err((
            ProblemCode::CredentialNotFound,
            format!("credential {path} does not exist"),
        )));
    };
    let c = public_credential(path, &row)?;
    Ok(
        if let Some(detail) = mismatch(c.kind, &format!("credential {path}")) {
            Err((ProblemCode::TypeMismatch, detail))
        } else if needs_secrets(db, row.id)? {
            Err((
                ProblemCode::MissingSecrets,
                format!("credential {path} has no secrets"),
            ))
        } else if !c.allows(usage) {
            Err((
                ProblemCode::UsageNotAllowed,
                format!("credential {path} does not allow usage {}", usage.as_str()),
            ))
        } else {
            Ok(json!({"source": "server", "credential": path, "type": c.kind.as_str()}))
        },
    )
}

/// The 404 for a credential (or its container) that does not exist.
fn not_found(path: &str) -> Problem {
    Problem::not_found(format!("credential {path} does not exist"))
}

/// The stored credential `n` of container `c` and its container's id; 404 when either is missing.
pub fn find(
    db: &dyn Reads,
    c: &ContainerPath,
    n: &Name,
) -> Result<(ContainerId, CredentialRow), Problem> {
    let missing = || not_found(&c.object_path(n));
    let cid = db.container_id(c)?.ok_or_else(missing)?;
    let row = db.credential(cid, n.as_str())?.ok_or_else(missing)?;
    Ok((cid, row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_rest_ciphertext_is_bound_to_path_and_field() {
        let keys = SecretKeys::derive(&SecretBytes::new([7; 32]));
        let v = Secret::new("canary".into());
        let ct = keys
            .encrypt("/a/erp", "password", &v)
            .unwrap_or_else(|_| panic!("encrypt"));
        assert!(!ct.windows(6).any(|w| w == b"canary"));
        assert_eq!(
            keys.decrypt("/a/erp", "password", &ct)
                .map(|s| s.expose().to_owned()),
            Some("canary".into())
        );
        assert!(keys.decrypt("/a/crm", "password", &ct).is_none());
        assert!(keys.decrypt("/a/erp", "key", &ct).is_none());
        assert_eq!(keys.fingerprint(&v).len(), 16);
        assert_eq!(keys.fingerprint(&v), keys.fingerprint(&v.clone()));
    }
}
