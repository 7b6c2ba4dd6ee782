//! The SQLite schema (its current shape), and its text of each step from an older version
//! (`PRAGMA user_version`; the list of steps is `store/schema.rs`).

/// From version 1 to 2 (OAuth, issue 7): the token version a refresh compares and swaps, the
/// `needs_authorization` mark, and the pending authorization-code flows.
pub(in crate::store) const MIGRATE_1_TO_2: &str = r#"
ALTER TABLE credentials ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN needs_authorization INTEGER NOT NULL DEFAULT 0;
CREATE TABLE oauth_states (
  state_sha256 BLOB PRIMARY KEY,
  credential_id INTEGER NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
  path TEXT NOT NULL,
  verifier BLOB NOT NULL,
  principal TEXT NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
"#;

/// From version 2 to 3: a replay is recognised by the digest of the exact manifest applied
/// (`NULL` for deployments made before: see [`Replay`](crate::store::Replay)); an audit row says whether the
/// signature of the bundle it names was verified.
pub(in crate::store) const MIGRATE_2_TO_3: &str = r#"
ALTER TABLE deployments ADD COLUMN manifest_sha256 BLOB;
ALTER TABLE audit ADD COLUMN verified INTEGER;
CREATE INDEX audit_container ON audit(container, id);
"#;

/// From version 3 to 4: a token may expire, and remembers when it was last used (Unix
/// milliseconds, like the other times compared on a request's path; `NULL`: never expires,
/// never used). Tokens issued before keep no expiry.
pub(in crate::store) const MIGRATE_3_TO_4: &str = r#"
ALTER TABLE tokens ADD COLUMN expires_at_ms INTEGER;
ALTER TABLE tokens ADD COLUMN last_used_at_ms INTEGER;
CREATE INDEX tokens_principal ON tokens(principal_id);
"#;

/// From version 4 to 5 (history and rollback): a mapping file keeps the SHA-256 its bundle's
/// manifest gave it (`NULL` for files stored before: hashed when compared); a credential
/// remembers whether it was changed outside deployments since it was last deployed (drift);
/// every deployment records which mapping version and which credential record (with its
/// secrets, encrypted as the live ones are) it left, so that it can be restored.
pub(in crate::store) const MIGRATE_4_TO_5: &str = r#"
ALTER TABLE mapping_files ADD COLUMN sha256 BLOB;
ALTER TABLE credentials ADD COLUMN changed_outside INTEGER NOT NULL DEFAULT 0;
CREATE TABLE deployment_mappings (
  deployment_id INTEGER NOT NULL REFERENCES deployments(id),
  name TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES mapping_versions(id),
  PRIMARY KEY (deployment_id, name)
);
CREATE TABLE credential_versions (
  id INTEGER PRIMARY KEY,
  deployment_id INTEGER NOT NULL REFERENCES deployments(id),
  container_id INTEGER NOT NULL REFERENCES containers(id),
  name TEXT NOT NULL,
  type TEXT NOT NULL,
  public TEXT NOT NULL,
  needs_authorization INTEGER NOT NULL,
  UNIQUE (deployment_id, name)
);
CREATE INDEX credential_versions_object ON credential_versions(container_id, name);
CREATE TABLE credential_version_secrets (
  version_id INTEGER NOT NULL REFERENCES credential_versions(id) ON DELETE CASCADE,
  field TEXT NOT NULL,
  ciphertext BLOB NOT NULL,
  fingerprint TEXT NOT NULL,
  PRIMARY KEY (version_id, field)
);
"#;

/// From version 5 to 6: the id of the at-rest key the stored secrets are encrypted under (one
/// row, written when the data directory is loaded and by `rotate at-rest`), so that a key file
/// can be matched to the database after a crash during a rotation.
pub(in crate::store) const MIGRATE_5_TO_6: &str = r#"
CREATE TABLE at_rest_key (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  key_id TEXT NOT NULL
);
"#;

/// The current schema (made by `create`, with every step's changes).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE principals (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL
);
CREATE TABLE grants (
  principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  prefix TEXT NOT NULL,
  perms TEXT NOT NULL,
  PRIMARY KEY (principal_id, prefix)
);
CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  principal_id INTEGER NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  secret_sha256 BLOB NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE trusted_signers (
  key_id TEXT PRIMARY KEY,
  public_key BLOB NOT NULL,
  containers TEXT NOT NULL,
  added_at TEXT NOT NULL
);
CREATE TABLE containers (
  id INTEGER PRIMARY KEY,
  path TEXT NOT NULL UNIQUE,
  parent_id INTEGER REFERENCES containers(id),
  name TEXT,
  created_at TEXT NOT NULL
);
CREATE TABLE deployments (
  id INTEGER PRIMARY KEY,
  bundle_id TEXT NOT NULL UNIQUE,
  container TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  applied_at TEXT NOT NULL,
  record TEXT NOT NULL
);
CREATE INDEX deployments_container ON deployments(container, created_at_ms);
CREATE TABLE mapping_versions (
  id INTEGER PRIMARY KEY,
  container_id INTEGER NOT NULL REFERENCES containers(id),
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  definition TEXT NOT NULL,
  deployment_id INTEGER REFERENCES deployments(id),
  created_at TEXT NOT NULL,
  UNIQUE (container_id, name, version)
);
CREATE TABLE mapping_files (
  version_id INTEGER NOT NULL REFERENCES mapping_versions(id),
  path TEXT NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (version_id, path)
);
CREATE TABLE mappings (
  container_id INTEGER NOT NULL REFERENCES containers(id),
  name TEXT NOT NULL,
  version_id INTEGER NOT NULL REFERENCES mapping_versions(id),
  PRIMARY KEY (container_id, name)
);
CREATE TABLE credentials (
  id INTEGER PRIMARY KEY,
  container_id INTEGER NOT NULL REFERENCES containers(id),
  name TEXT NOT NULL,
  type TEXT NOT NULL,
  public TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  UNIQUE (container_id, name)
);
CREATE TABLE credential_secrets (
  credential_id INTEGER NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
  field TEXT NOT NULL,
  ciphertext BLOB NOT NULL,
  fingerprint TEXT NOT NULL,
  PRIMARY KEY (credential_id, field)
);
CREATE TABLE audit (
  id INTEGER PRIMARY KEY,
  at TEXT NOT NULL,
  principal TEXT,
  action TEXT NOT NULL,
  container TEXT,
  target TEXT,
  bundle_id TEXT,
  signer_key_id TEXT,
  outcome TEXT NOT NULL,
  status INTEGER NOT NULL,
  code TEXT,
  detail TEXT
);
"#;
