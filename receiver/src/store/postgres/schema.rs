//! The PostgreSQL schema: the same tables as the SQLite one at the same version (see
//! `store/mod.rs`, `SCHEMA_VERSION`), in PostgreSQL's types: `bigint`/`bigserial` ids and
//! times, `text`, `bytea`, `boolean`. Mapping files are stored as chunks of at most
//! [`CHUNK`](super::CHUNK) bytes, so that neither side ever holds a file whole.
//!
//! The version is the one row of `schema_version`. The steps from older versions are listed
//! in `store/schema.rs`, each with its PostgreSQL text from [`FIRST_VERSION`] on.

/// The first version of the PostgreSQL schema: it has no steps from before.
pub(in crate::store) const FIRST_VERSION: i64 = 6;

/// The current schema (made by `create`).
pub(super) const SCHEMA: &str = r#"
CREATE TABLE schema_version (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  version bigint NOT NULL
);
CREATE TABLE principals (
  id bigserial PRIMARY KEY,
  name text NOT NULL UNIQUE,
  created_at text NOT NULL
);
CREATE TABLE grants (
  principal_id bigint NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  prefix text NOT NULL,
  perms text NOT NULL,
  PRIMARY KEY (principal_id, prefix)
);
CREATE TABLE tokens (
  id text PRIMARY KEY,
  principal_id bigint NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
  secret_sha256 bytea NOT NULL,
  created_at text NOT NULL,
  expires_at_ms bigint,
  last_used_at_ms bigint
);
CREATE INDEX tokens_principal ON tokens(principal_id);
CREATE TABLE trusted_signers (
  key_id text PRIMARY KEY,
  public_key bytea NOT NULL,
  containers text NOT NULL,
  added_at text NOT NULL
);
CREATE TABLE containers (
  id bigserial PRIMARY KEY,
  path text NOT NULL UNIQUE,
  parent_id bigint REFERENCES containers(id),
  name text,
  created_at text NOT NULL
);
CREATE TABLE deployments (
  id bigserial PRIMARY KEY,
  bundle_id text NOT NULL UNIQUE,
  container text NOT NULL,
  created_at_ms bigint NOT NULL,
  applied_at text NOT NULL,
  record text NOT NULL,
  manifest_sha256 bytea
);
CREATE INDEX deployments_container ON deployments(container, created_at_ms);
CREATE TABLE mapping_versions (
  id bigserial PRIMARY KEY,
  container_id bigint NOT NULL REFERENCES containers(id),
  name text NOT NULL,
  version bigint NOT NULL,
  definition text NOT NULL,
  deployment_id bigint REFERENCES deployments(id),
  created_at text NOT NULL,
  UNIQUE (container_id, name, version)
);
CREATE TABLE mapping_files (
  version_id bigint NOT NULL REFERENCES mapping_versions(id),
  path text NOT NULL,
  size bigint NOT NULL,
  sha256 bytea,
  PRIMARY KEY (version_id, path)
);
CREATE TABLE mapping_file_chunks (
  version_id bigint NOT NULL,
  path text NOT NULL,
  seq bigint NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY (version_id, path, seq),
  FOREIGN KEY (version_id, path) REFERENCES mapping_files(version_id, path)
);
CREATE TABLE mappings (
  container_id bigint NOT NULL REFERENCES containers(id),
  name text NOT NULL,
  version_id bigint NOT NULL REFERENCES mapping_versions(id),
  PRIMARY KEY (container_id, name)
);
CREATE TABLE credentials (
  id bigserial PRIMARY KEY,
  container_id bigint NOT NULL REFERENCES containers(id),
  name text NOT NULL,
  type text NOT NULL,
  public text NOT NULL,
  updated_at text NOT NULL,
  token_version bigint NOT NULL DEFAULT 0,
  needs_authorization boolean NOT NULL DEFAULT false,
  changed_outside boolean NOT NULL DEFAULT false,
  UNIQUE (container_id, name)
);
CREATE TABLE credential_secrets (
  credential_id bigint NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
  field text NOT NULL,
  ciphertext bytea NOT NULL,
  fingerprint text NOT NULL,
  PRIMARY KEY (credential_id, field)
);
CREATE TABLE oauth_states (
  state_sha256 bytea PRIMARY KEY,
  credential_id bigint NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
  path text NOT NULL,
  verifier bytea NOT NULL,
  principal text NOT NULL,
  expires_at_ms bigint NOT NULL
);
CREATE TABLE audit (
  id bigserial PRIMARY KEY,
  at text NOT NULL,
  principal text,
  action text NOT NULL,
  container text,
  target text,
  bundle_id text,
  signer_key_id text,
  outcome text NOT NULL,
  status integer NOT NULL,
  code text,
  detail text,
  verified boolean
);
CREATE INDEX audit_container ON audit(container, id);
CREATE TABLE deployment_mappings (
  deployment_id bigint NOT NULL REFERENCES deployments(id),
  name text NOT NULL,
  version_id bigint NOT NULL REFERENCES mapping_versions(id),
  PRIMARY KEY (deployment_id, name)
);
CREATE TABLE credential_versions (
  id bigserial PRIMARY KEY,
  deployment_id bigint NOT NULL REFERENCES deployments(id),
  container_id bigint NOT NULL REFERENCES containers(id),
  name text NOT NULL,
  type text NOT NULL,
  public text NOT NULL,
  needs_authorization boolean NOT NULL,
  UNIQUE (deployment_id, name)
);
CREATE INDEX credential_versions_object ON credential_versions(container_id, name);
CREATE TABLE credential_version_secrets (
  version_id bigint NOT NULL REFERENCES credential_versions(id) ON DELETE CASCADE,
  field text NOT NULL,
  ciphertext bytea NOT NULL,
  fingerprint text NOT NULL,
  PRIMARY KEY (version_id, field)
);
CREATE TABLE at_rest_key (
  id bigint PRIMARY KEY CHECK (id = 1),
  key_id text NOT NULL
);
"#;
