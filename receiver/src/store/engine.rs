//! What a storage engine provides: the queries ([`Reads`], [`Writes`]), the transaction control
//! of one of its connections ([`Connection`]), and the store-wide services ([`Engine`]: handing
//! out connections, the group committer, the per-credential locks). The handles the services
//! use ([`Store`](super::Store), [`Db`](super::Db), [`Tx`](super::Tx)) are built on these in
//! `handle.rs` and are the same whatever the engine; an engine is a folder that implements
//! these four traits (`sqlite/`).
//!
//! The queries speak the domain: typed ids and rows, never SQL values or row ids of tables the
//! caller does not know. They take `&self`: a connection is used by one thread at a time, and
//! whether a write is inside a transaction is decided by the handles, not by the queries.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use flowpack_shared::names::{ContainerPath, Name};
use flowpack_shared::timefmt::Timestamp;

use super::handle::{Job, MappingFile};
use super::{
    AuditRow, ContainerId, CredentialId, CredentialRow, CredentialVersion, DeploymentId,
    DeploymentRow, EncryptedValue, Generation, KeyCheck, MappingRow, OAuthState, Replay, Result,
    SecretFingerprints, SecretRow, SignerListing, TokenAuth, TokenListing, Visible,
};

/// The queries that read. Outside a transaction they see committed data only, and never wait
/// for a writer; inside one ([`Tx`](super::Tx)) they also see its own writes.
pub trait Reads: Send {
    /// The store's time: what rows are stamped with, and what a token's expiry and last use
    /// are compared with (the clock given when the store was opened).
    fn time(&self) -> Timestamp;

    /// A round trip to the database (readiness).
    fn ping(&self) -> Result<()>;

    /// Records, off the caller's path, that token `id` was used at `at_ms` (Unix
    /// milliseconds): queued to the group committer, the caller waits neither for a lock nor
    /// for the disk. At most one update per token is queued at a time. Best effort: an update
    /// lost to a failed batch or a shutdown is made at the next use.
    fn note_token_used(&self, id: &str, at_ms: i64);

    // Principals, tokens, trust

    /// What authenticating token `id` needs: its stored hash, expiry and last use, its
    /// principal's name and the principal's grants (prefix, comma-separated permissions), in
    /// one statement: the grants come as a left join, one row per grant, or one row with no
    /// grant.
    fn principal_by_token(&self, id: &str) -> Result<Option<TokenAuth>>;

    /// Every token, by principal name, then issue time and id, with its principal's grants
    /// (sorted by prefix); never a secret's hash.
    fn tokens(&self) -> Result<Vec<TokenListing>>;

    /// Every trusted signer, by key id.
    fn signers(&self) -> Result<Vec<SignerListing>>;

    /// A trusted signer: the raw public key and its allowed prefixes (JSON array of paths).
    fn signer(&self, key_id: &str) -> Result<Option<(Vec<u8>, String)>>;

    // Containers

    /// The id of a container, if it exists.
    fn container_id(&self, path: &ContainerPath) -> Result<Option<ContainerId>>;

    /// What a container holds: child container names, mapping names, credential names (sorted).
    fn children(&self, id: ContainerId) -> Result<(Vec<String>, Vec<String>, Vec<String>)>;

    // Mappings

    /// The live version of mapping `name` in a container.
    fn mapping(&self, container: ContainerId, name: &str) -> Result<Option<MappingRow>>;

    /// Every live mapping of a container: (name, definition).
    fn mappings_in(&self, container: ContainerId) -> Result<Vec<(String, String)>>;

    /// A file of a mapping version, opened for streaming. Files are never changed or deleted
    /// once committed (versions are kept), so the lookup and the open see the same bytes.
    fn mapping_file(&self, version_id: i64, path: &str) -> Result<Option<MappingFile<'_>>>;

    /// The files of a mapping version: (path, SHA-256 when it was recorded), by path.
    fn mapping_file_digests(&self, version_id: i64) -> Result<Vec<(String, Option<Vec<u8>>)>>;

    // Credentials

    /// Credential `name` in a container.
    fn credential(&self, container: ContainerId, name: &str) -> Result<Option<CredentialRow>>;

    /// Credential `name` in container `container`, with the (field, fingerprint) of each
    /// stored secret (sorted by field, no ciphertext), in one statement: the secrets come as a
    /// left join, one row per secret, or one row with none.
    fn credential_at(
        &self,
        container: &ContainerPath,
        name: &str,
    ) -> Result<Option<(CredentialRow, SecretFingerprints)>>;

    /// A credential by row id, with its path (container path and name).
    fn credential_by_id(&self, id: CredentialId)
    -> Result<Option<(String, String, CredentialRow)>>;

    /// The stored sensitive fields of a credential.
    fn secrets(&self, credential: CredentialId) -> Result<Vec<SecretRow>>;

    /// Whether the credential was changed outside deployments (PATCH, create) since a
    /// deployment or rollback last wrote it.
    fn changed_outside(&self, credential: CredentialId) -> Result<bool>;

    // Deployments and their history

    /// What is known of bundle `bundle_id`, if it was applied.
    fn deployment_by_bundle(&self, bundle_id: &str) -> Result<Option<Replay>>;

    /// One page of deployment records (JSON), newest first: those with an id below `before`
    /// (all when `None`), in containers `visible` lets the caller see, optionally one
    /// container only; at most `limit`.
    fn deployments_page(
        &self,
        visible: &Visible,
        container: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>>;

    /// The `created_at` (Unix milliseconds) of the newest bundle applied to a container.
    fn newest_created(&self, container: &str) -> Result<Option<i64>>;

    /// Deployment `id`: its container, record (JSON) and the `created_at` of its bundle.
    fn deployment(&self, id: DeploymentId) -> Result<Option<DeploymentRow>>;

    /// The mapping versions a deployment left live: (name, version row id), by name. For a
    /// deployment made before these were recorded, the versions it created.
    fn deployment_mappings(&self, id: DeploymentId) -> Result<Vec<(String, i64)>>;

    /// The credential records a deployment left, with their secrets, by name.
    fn credential_versions(&self, id: DeploymentId) -> Result<Vec<CredentialVersion>>;

    // Audit

    /// One page of the audit trail, newest first: rows with an id below `before` (all when
    /// `None`) that `visible` lets the caller see (a row that names no container only with
    /// [`Visible::All`]), optionally of one container only; at most `limit`.
    fn audit_page(
        &self,
        visible: &Visible,
        container: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>>;

    // Keys

    /// The id of the at-rest key the stored secrets are encrypted under; `None` until one is
    /// recorded.
    fn at_rest_key_id(&self) -> Result<Option<String>>;
}

/// The queries that write, inside a write transaction ([`Tx`](super::Tx)).
pub trait Writes: Reads {
    // Principals, tokens, trust

    /// The id of principal `name`, created if missing.
    fn ensure_principal(&self, name: &str) -> Result<i64>;

    /// Adds permissions on `prefix` to a principal (union with what it has).
    fn add_grant(&self, principal: i64, prefix: &str, perms: &str) -> Result<()>;

    /// Stores a token's id, the SHA-256 of its secret and when it expires (Unix milliseconds;
    /// `None`: never).
    fn insert_token(
        &self,
        id: &str,
        principal: i64,
        sha256: &[u8],
        expires_at_ms: Option<i64>,
    ) -> Result<()>;

    /// Deletes token `id`; returns its principal's name, or `None` when there is no such token.
    fn delete_token(&self, id: &str) -> Result<Option<String>>;

    /// Deletes every token of principal `name` (the principal and its grants stay); returns
    /// the ids deleted, sorted, or `None` when there is no such principal.
    fn delete_tokens_of(&self, name: &str) -> Result<Option<Vec<String>>>;

    /// Records that token `id` was used at `at_ms` (Unix milliseconds), unless a later use is
    /// already recorded.
    fn set_token_last_used(&self, id: &str, at_ms: i64) -> Result<()>;

    /// Stops trusting signer `key_id`. False when it was not trusted.
    fn delete_signer(&self, key_id: &str) -> Result<bool>;

    /// Trusts a signer key for the given prefixes (replacing earlier prefixes).
    fn upsert_signer(
        &self,
        key_id: &str,
        public_key: &[u8],
        containers: &[ContainerPath],
    ) -> Result<()>;

    // Containers

    /// The id of a container, creating it and its missing ancestors.
    fn ensure_container(&self, path: &ContainerPath) -> Result<ContainerId>;

    // Mappings

    /// Starts a new version of a mapping (the next number after every earlier one) and returns
    /// its row id. Its definition is filled in by [`Writes::finish_mapping_version`].
    fn new_mapping_version(
        &self,
        container: ContainerId,
        name: &Name,
        deployment: DeploymentId,
    ) -> Result<i64>;

    /// Sets a version's definition and makes it the live one. Returns true when it replaced one.
    fn finish_mapping_version(
        &self,
        container: ContainerId,
        name: &Name,
        version_id: i64,
        definition: &str,
    ) -> Result<bool>;

    /// Streams one file of a mapping version into the database as a blob of `size` bytes.
    /// `sha256` is the digest the bundle's manifest gives (the reader checks the bytes against
    /// it, and the transaction rolls back when they differ).
    fn write_mapping_file(
        &self,
        version_id: i64,
        path: &str,
        size: u64,
        sha256: &[u8; 32],
        data: &mut dyn std::io::Read,
    ) -> std::io::Result<()>;

    /// Removes a live mapping (its versions stay in the history). True when it existed.
    fn delete_mapping(&self, container: ContainerId, name: &str) -> Result<bool>;

    /// Makes `version_id` the live version of mapping `name` (a rollback); the version keeps
    /// its definition and files.
    fn set_live_mapping(&self, container: ContainerId, name: &str, version_id: i64) -> Result<()>;

    /// Copies the files of mapping version `from` into version `to` (a new definition whose
    /// files are unchanged).
    fn copy_mapping_files(&self, from: i64, to: i64) -> Result<()>;

    // Credentials

    /// Inserts or replaces a credential's non-sensitive part; returns its row id and, when it
    /// existed, the row as it was before.
    fn upsert_credential(
        &self,
        container: ContainerId,
        name: &str,
        kind: &str,
        public: &str,
    ) -> Result<(CredentialId, Option<CredentialRow>)>;

    /// Sets one sensitive field.
    fn set_secret(
        &self,
        credential: CredentialId,
        field: &str,
        ciphertext: &[u8],
        fingerprint: &str,
    ) -> Result<()>;

    /// Clears one sensitive field.
    fn clear_secret(&self, credential: CredentialId, field: &str) -> Result<()>;

    /// Compare and swap: advances the credential's token version if it still is `expected`.
    /// False when something changed the credential since `expected` was read (a deploy, a
    /// PATCH, another refresh): the caller must then not store what it obtained.
    fn claim_token_version(&self, credential: CredentialId, expected: i64) -> Result<bool>;

    /// Replaces a credential's non-sensitive record (its name and type unchanged).
    fn set_credential_public(&self, credential: CredentialId, public: &str) -> Result<()>;

    /// Sets or clears the `needs_authorization` mark.
    fn set_needs_authorization(&self, credential: CredentialId, on: bool) -> Result<()>;

    /// Deletes a credential and its secrets, the secrets its deployments recorded included (a
    /// deleted secret must be gone; its records stay, so a rollback restores it without them).
    fn delete_credential(&self, credential: CredentialId) -> Result<()>;

    /// Replaces every secret of a credential with `secrets` (ciphertext as recorded).
    fn replace_secrets(&self, credential: CredentialId, secrets: &[SecretRow]) -> Result<()>;

    /// Marks a credential as changed outside deployments (`true`), or as just written by one.
    fn set_changed_outside(&self, credential: CredentialId, on: bool) -> Result<()>;

    // Pending authorization-code flows

    /// Forgets every pending flow of a credential (its destination changed: a code obtained
    /// for the old one must not be exchanged with the new one).
    fn delete_oauth_states(&self, credential: CredentialId) -> Result<()>;

    /// Records a pending flow, and forgets those that expired before `now_ms`.
    fn insert_oauth_state(&self, state_sha256: &[u8], s: &OAuthState, now_ms: i64) -> Result<()>;

    /// Takes a pending flow: returns it and deletes it, so a state is used at most once.
    fn take_oauth_state(&self, state_sha256: &[u8]) -> Result<Option<OAuthState>>;

    // Deployments and their history

    /// Inserts a deployment with a placeholder record; returns its id. `manifest_sha256` is
    /// `None` for a rollback, which applies no bundle.
    fn insert_deployment(
        &self,
        bundle_id: &str,
        container: &str,
        created_at_ms: i64,
        manifest_sha256: Option<&[u8]>,
    ) -> Result<DeploymentId>;

    /// Sets a deployment's record.
    fn set_deployment_record(&self, id: DeploymentId, record: &str) -> Result<()>;

    /// Records that deployment `id` left `version_id` live for mapping `name`.
    fn record_deployment_mapping(
        &self,
        id: DeploymentId,
        name: &str,
        version_id: i64,
    ) -> Result<()>;

    /// Records credential `name` of `container` as deployment `id` leaves it: its record and
    /// its secrets' ciphertext (encrypted for the same path, so valid there again).
    fn record_credential_version(
        &self,
        id: DeploymentId,
        container: ContainerId,
        name: &str,
    ) -> Result<()>;

    // Audit

    /// Appends an audit row.
    fn insert_audit(&self, a: &AuditRow) -> Result<()>;

    // Keys

    /// Records the id of the at-rest key the stored secrets are encrypted under.
    fn set_at_rest_key_id(&self, key_id: &str) -> Result<()>;

    /// Every value stored encrypted under the at-rest key: credential secrets, the secrets of
    /// credential versions (kept for rollback) and pending flows' PKCE verifiers.
    fn encrypted_values(&self) -> Result<Vec<EncryptedValue>>;

    /// Replaces an encrypted value with the same value under another key (and, for a secret,
    /// its fingerprint under that key). Nothing else changes: not the credential's token
    /// version, not its time of change.
    fn reencrypt(
        &self,
        value: &EncryptedValue,
        ciphertext: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<()>;
}

/// One connection of an engine: the queries and the transaction control the handles use.
pub trait Connection: Reads + Writes {
    /// Starts a write transaction, serialized with every other writer from its first read (a
    /// deploy relies on the replay and staleness facts it reads), and runs the store's key
    /// check ([`Engine::check_keys_on_write`]) in it; on an error nothing is left open.
    fn begin(&self) -> Result<()>;

    /// Commits the transaction: durable when this returns.
    fn commit(&self) -> Result<()>;

    /// Rolls back the transaction, if one is open; a failure is logged.
    fn rollback(&self);

    /// Opens a savepoint inside the transaction (savepoints nest).
    fn savepoint(&self) -> Result<()>;

    /// Closes the innermost savepoint: keeps its writes, or undoes them (and only them).
    fn release(&self, keep: bool) -> Result<()>;

    /// Writes a consistent snapshot of the whole store to a new file at `to` (a backup):
    /// committed data only, and nothing deleted before. Writers go on meanwhile.
    fn snapshot_into(&self, to: &Path) -> Result<()>;

    /// Makes what was deleted unrecoverable from the engine's own logs where the engine
    /// controls them (SQLite: empties the write-ahead log); false when a reader kept it from
    /// finishing.
    fn truncate_wal(&self) -> Result<bool>;
}

/// A per-credential lock, held while it lives ([`Engine::lock_credential`]).
pub struct CredentialLock(pub Box<dyn Send>);

impl std::fmt::Debug for CredentialLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialLock")
    }
}

/// What [`Engine::lock_credential`] returns.
pub type Locking<'a> = Pin<Box<dyn Future<Output = Result<CredentialLock>> + Send + 'a>>;

/// The store-wide part of an engine.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// A connection for one request (from a pool); given back when dropped.
    fn connect(&self) -> Result<Box<dyn Connection>>;

    /// Queues `job` for the group committer ([`Store::write_grouped`](super::Store::write_grouped)):
    /// it runs in the next batch's transaction, in a savepoint of its own. `Err` gives the job
    /// back when the committer is gone.
    fn submit(&self, job: Job) -> std::result::Result<(), Job>;

    /// How many batches the group committer has committed.
    fn batches_committed(&self) -> u64;

    /// Installs the check every write transaction makes first (see [`KeyCheck`]); once.
    fn check_keys_on_write(&self, check: KeyCheck);

    /// Waits for, then holds, credential `id`'s lock: one OAuth refresh or verification of a
    /// credential at a time, across every process that shares the store.
    fn lock_credential(&self, id: CredentialId) -> Locking<'_>;

    /// The time by the store's clock (what [`Reads::time`] says, without a connection).
    fn time(&self) -> Timestamp;

    /// The store's [`Generation`] now, without a query; `None` when the engine cannot tell
    /// (then nothing read may be kept for later).
    fn generation(&self) -> Option<Generation>;
}
