//! The storage interface the services use, and its engines.
//!
//! - `handle.rs`: the handles, the same for every engine: [`Store`] (shared by the server),
//!   [`Db`] (one request's connection; it dereferences to [`Reads`], so it can only read),
//!   [`Tx`] (a write transaction; it dereferences to [`Writes`], rolls back unless committed,
//!   and nests savepoints), [`Store::write_grouped`] (group commit) and
//!   [`Store::lock_credential`] (single flight per credential).
//! - `engine.rs`: what an engine implements: [`Reads`] and [`Writes`] (the queries, in the
//!   domain's types declared here), [`Connection`] (transaction control) and [`Engine`]
//!   (connections, the group committer, the per-credential locks).
//! - `sqlite/`: the embedded engine; `postgres/`: the shared one, for several receivers on one
//!   database; `group.rs`: what their group committers share.
//!
//! What an engine must guarantee:
//! - **Connections per request** ([`Store::db`]), used from a blocking thread; readers must
//!   not wait for a deploy in progress and must see only committed data.
//! - **Write transactions** ([`Db::write`]) that are serialized from their first read (a deploy
//!   reads the replay and staleness facts it then relies on), atomic (a [`Tx`] dropped without
//!   [`Tx::commit`], or cut short by a crash, leaves nothing behind) and durable when `commit`
//!   returns: the HTTP layer answers 2xx only after that, so whatever a 2xx reported must survive
//!   a crash or power loss the moment after.
//! - **Streaming of mapping files**: a file is written from a reader of declared size inside
//!   the deploy's transaction ([`Writes::write_mapping_file`]) and read back as a reader of known
//!   length ([`Reads::mapping_file`]), never whole in memory, from a snapshot that a concurrent
//!   commit does not change.
//! - **Group commit** ([`Store::write_grouped`]): many requests' writes, each atomic on its own,
//!   made durable by one commit, so that concurrent deploys do not each wait for a disk sync.
//!   Bookkeeping a reader notices (a token's last use, [`Reads::note_token_used`]) is queued
//!   there too, so that the read waits for no writer.
//! - **One lock per credential** ([`Engine::lock_credential`]) held around an OAuth provider
//!   call, effective across every process that shares the store; the compare-and-swap on a
//!   credential's token version ([`Writes::claim_token_version`]) stays the guard of the write.
//! - **An injected clock** ([`Clock`]): rows are stamped with it, never with the wall clock read
//!   inside the engine.
//! - **A generation, or none** ([`Engine::generation`]): a value that changes with every commit
//!   of any process sharing the store, read without a query; an engine that cannot know of
//!   every commit that way says `None`, and then nothing read is kept for later.
//!
//! Mappings are versioned: every version is kept with its files, and one is live. Secrets are
//! stored only as ciphertext; see `service/creds.rs`.

#[cfg(test)]
mod conformance;
mod engine;
mod group;
mod handle;
mod postgres;
mod schema;
mod sqlite;

use std::sync::Arc;

use flowpack_shared::timefmt::Timestamp;

pub use engine::{Connection, CredentialLock, Engine, Locking, Reads, Writes};
pub use handle::{Db, Finish, Job, MappingFile, Store, Tx};

use schema::SCHEMA_VERSION;

/// Declares row ids: a distinct type per table, so that a credential's id is never passed
/// where a container's is expected.
macro_rules! row_ids {
    ($( $(#[$doc:meta])* $name:ident, )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

row_ids! {
    /// A container's row id.
    ContainerId,
    /// A credential's row id.
    CredentialId,
    /// A deployment's row id.
    DeploymentId,
}

/// The time source the store stamps rows with (`created_at`, `updated_at`): given when the
/// store is opened, never read from the wall clock inside it, so tests can set the time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What a store holds at one moment, as a value that changes with every committed write of
/// any process that shares the store ([`Store::generation`]). Two reads made while the store
/// was at one generation saw the same data, so an answer computed at a generation may be
/// served again for as long as the generation has not changed. Opaque: only compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation([u8; 48]);

/// The wall clock, for a store or an [`App`](crate::App) that runs for real.
pub fn wall_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// A clock that reads Unix milliseconds from the returned cell, set to now; tests move it.
#[cfg(test)]
pub(crate) fn settable_clock() -> (Arc<std::sync::atomic::AtomicI64>, Clock) {
    use std::sync::atomic::{AtomicI64, Ordering};
    let ms = Arc::new(AtomicI64::new(Timestamp::now().unix_millis()));
    let read = ms.clone();
    let clock: Clock = Arc::new(move || {
        Timestamp::from_unix_millis(read.load(Ordering::SeqCst)).unwrap_or_else(Timestamp::now)
    });
    (ms, clock)
}

/// A storage fault. Callers answer 503 when the database cannot be reached
/// ([`Error::Unavailable`]), else 500, and log it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database cannot be reached (down, unreachable, every connection busy): it may come
    /// back, and the engine reconnects by itself.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// From the database engine (the engine's own error type stays inside its folder).
    #[error("database: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The group commit a job was part of failed (the job's own writes were fine).
    #[error("database: the group commit failed: {0}")]
    Batch(String),
    /// The group committer's thread is gone (it panicked); nothing more can be written.
    #[error("database: the writer thread is gone")]
    WriterGone,
    /// The at-rest key the store names cannot be used ([`KeyCheck`]); nothing was written.
    #[error("at-rest key: {0}")]
    Keys(String),
}

/// Told, at the start of every write transaction and with the writer lock held, the id of the
/// at-rest key the store's secrets are encrypted under (`None` before one is recorded); an
/// `Err` aborts the transaction. The data directory installs one that switches the server's
/// keys to that key, so that no secret is written under a key the store no longer names.
pub type KeyCheck = Box<dyn Fn(Option<&str>) -> std::result::Result<(), String> + Send + Sync>;

/// The result of a storage operation.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The same fault again, for each job of a failed group commit: unavailable stays
    /// unavailable, anything else is the batch's failure.
    pub(crate) fn again(&self) -> Error {
        match self {
            Error::Unavailable(why) => Error::Unavailable(why.clone()),
            e => Error::Batch(e.to_string()),
        }
    }
}

impl From<Error> for crate::problem::Problem {
    /// A database that cannot be reached is a 503 (retry later); every other storage fault is
    /// the receiver's own: a generic 500. The cause goes to the log.
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(_) => crate::problem::Problem::store_unavailable(e),
            e => crate::problem::Problem::internal(e),
        }
    }
}

/// A credential's path from its container's path and its name, both written by this program
/// from parsed values (`None` if a stored one no longer parses).
fn object_path(container: &str, name: &str) -> Option<String> {
    use flowpack_shared::names::{ContainerPath, Name};
    match (ContainerPath::parse(container), Name::parse(name)) {
        (Ok(c), Ok(n)) => Some(c.object_path(&n)),
        _ => None,
    }
}

/// A principal's grants as stored: (prefix, comma-separated permissions).
pub type GrantRows = Vec<(String, String)>;

/// What authenticating a token needs to know of it, read in one statement.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// SHA-256 of the token's secret.
    pub secret_sha256: Vec<u8>,
    /// Its principal's name.
    pub principal: String,
    /// Its principal's grants.
    pub grants: GrantRows,
    /// When it expires (Unix milliseconds); `None`: never.
    pub expires_at_ms: Option<i64>,
    /// When it was last recorded as used (Unix milliseconds); `None`: never.
    pub last_used_at_ms: Option<i64>,
}

/// A token as an administrator lists it: never its secret nor the secret's hash.
#[derive(Debug, Clone)]
pub struct TokenListing {
    /// The token id (the part of the token before its secret).
    pub id: String,
    /// Its principal's name.
    pub principal: String,
    /// Its principal's grants.
    pub grants: GrantRows,
    /// When it was issued (RFC 3339).
    pub created_at: String,
    /// When it expires (Unix milliseconds); `None`: never.
    pub expires_at_ms: Option<i64>,
    /// When it was last recorded as used (Unix milliseconds); `None`: never.
    pub last_used_at_ms: Option<i64>,
}

/// A trusted signer as an administrator lists it.
#[derive(Debug, Clone)]
pub struct SignerListing {
    /// The key id (16 hex digits).
    pub key_id: String,
    /// The container prefixes it may deploy to, as stored (a JSON array of paths).
    pub containers: String,
    /// When it was trusted (RFC 3339).
    pub added_at: String,
}

// ---------------------------------------------------------------------------------------------
// Mappings

/// The live version of a mapping.
#[derive(Debug, Clone)]
pub struct MappingRow {
    /// Row id of the version.
    pub version_id: i64,
    /// Version number, from 1.
    pub version: i64,
    /// The definition's JSON.
    pub definition: String,
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// A stored credential without its secrets.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    /// Row id.
    pub id: CredentialId,
    /// Type name.
    pub kind: String,
    /// The non-sensitive record as JSON (name, type, description, public fields).
    pub public: String,
    /// Changes whenever the record or its secrets change; a token refresh stores its result
    /// only if this is still the value it started from ([`Writes::claim_token_version`]).
    pub token_version: i64,
    /// Its refresh token was refused: it must be authorized again (oauth2).
    pub needs_authorization: bool,
}

/// A stored sensitive field: ciphertext and fingerprint.
#[derive(Debug, Clone)]
pub struct SecretRow {
    /// Field name.
    pub field: String,
    /// nonce ‖ ciphertext ‖ tag.
    pub ciphertext: Vec<u8>,
    /// Keyed hash of the value (16 hex digits).
    pub fingerprint: String,
}

/// A credential's stored secrets without their ciphertext: (field, fingerprint), by field.
pub type SecretFingerprints = Vec<(String, String)>;

// ---------------------------------------------------------------------------------------------
// Pending authorization-code flows

/// A pending authorization-code flow, found by the SHA-256 of its `state`.
#[derive(Debug, Clone)]
pub struct OAuthState {
    /// The credential it authorizes.
    pub credential_id: CredentialId,
    /// The credential's path when the flow started.
    pub path: String,
    /// The PKCE code verifier, encrypted at rest.
    pub verifier: Vec<u8>,
    /// Who started it.
    pub principal: String,
    /// When it expires (Unix milliseconds).
    pub expires_at_ms: i64,
}

// ---------------------------------------------------------------------------------------------
// Deployments

/// What the store knows of an applied bundle id: enough to decide whether a bundle carrying
/// that id is the same bundle again.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The deployment record (JSON).
    pub record: String,
    /// The container it was applied to.
    pub container: String,
    /// SHA-256 of the exact `manifest.json` applied; `None` for a deployment stored before the
    /// digest was kept.
    pub manifest_sha256: Option<Vec<u8>>,
}

/// A deployment as stored.
#[derive(Debug, Clone)]
pub struct DeploymentRow {
    /// Its id.
    pub id: DeploymentId,
    /// The container it was applied to.
    pub container: String,
    /// Its record (JSON).
    pub record: String,
    /// The `created_at` of its bundle (Unix milliseconds), which staleness compares.
    pub created_at_ms: i64,
}

/// A credential as a deployment left it: the record and its secrets' ciphertext.
#[derive(Debug, Clone)]
pub struct CredentialVersion {
    /// Row id of the version.
    pub id: i64,
    /// The credential's name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// The non-sensitive record as JSON.
    pub public: String,
    /// Whether it needed authorization then.
    pub needs_authorization: bool,
    /// Its secrets then (erased when the credential was deleted since).
    pub secrets: Vec<SecretRow>,
}

/// Which containers a caller may see in a listing: all, or those under the given prefixes.
#[derive(Debug, Clone)]
pub enum Visible {
    /// Every container, and rows that name none.
    All,
    /// Containers equal to or below one of these paths (none of them the root).
    Under(Vec<String>),
}

// ---------------------------------------------------------------------------------------------
// Audit

/// One audit row.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditRow {
    /// Row id.
    pub id: i64,
    /// When (RFC 3339).
    pub at: String,
    /// Who (principal name), when known.
    pub principal: Option<String>,
    /// `deploy`, `plan`, `rollback`, `create-credential`, `delete-mapping`, `delete-credential`,
    /// `patch-credential`, `oauth-token`, `oauth-authorize`, `oauth-callback`,
    /// `verify-credential`.
    pub action: String,
    /// The container concerned, when known.
    pub container: Option<String>,
    /// The object concerned (a mapping or credential path), if any.
    pub target: Option<String>,
    /// The bundle, when its manifest could be read.
    pub bundle_id: Option<String>,
    /// The signer key id, when the manifest could be read.
    pub signer_key_id: Option<String>,
    /// Whether the signature of the bundle named was verified: `false` when the bundle, its
    /// signer and container are only what an unverified manifest claims; `None` when no
    /// bundle is named.
    pub verified: Option<bool>,
    /// `applied`, `replayed`, `deleted`, `updated`, `refused`; for OAuth `obtained`,
    /// `refreshed`, `started`, `authorized`, `failed`; for verification `ok` or `failed`.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The refusal's code.
    pub code: Option<String>,
    /// The refusal's detail (never a secret).
    pub detail: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Keys

/// Where a value encrypted under the at-rest key is stored.
#[derive(Debug, Clone)]
pub enum EncryptedAt {
    /// A credential's sensitive field (with its fingerprint).
    Secret {
        /// The credential.
        credential: CredentialId,
    },
    /// A sensitive field of a credential as a deployment left it (with its fingerprint), kept
    /// for rollback.
    VersionSecret {
        /// The credential version's row id.
        version: i64,
    },
    /// The PKCE code verifier of a pending authorization-code flow.
    PkceVerifier {
        /// The SHA-256 of the flow's `state`.
        state_sha256: Vec<u8>,
    },
}

/// A value encrypted under the at-rest key, with what its associated data is made of.
#[derive(Debug, Clone)]
pub struct EncryptedValue {
    /// Where it is stored.
    pub at: EncryptedAt,
    /// The credential's path (`/container/name`).
    pub path: String,
    /// The field name it is bound to (`pkce_code_verifier` for a verifier).
    pub field: String,
    /// nonce ‖ ciphertext ‖ tag.
    pub ciphertext: Vec<u8>,
}
