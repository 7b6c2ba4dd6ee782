//! Key rotation: `rotate sealing` and `rotate at-rest`. Both work while `serve` runs on the
//! same data directory, and both hold the exclusive lock on its key files while they run.
//!
//! **Sealing.** A new age identity becomes the current one; the old one stays in
//! `sealing.agekey`, accepted until its retirement time. The file is replaced atomically, and
//! a running server reads it again at its next deploy or `GET /v1/keys` (see
//! [`crate::keyring::Sealing`]).
//!
//! **At rest.** The file protocol, in order, so that a crash anywhere leaves a directory that
//! opens with one key or the other ([`crate::datadir::settle_at_rest`] finishes or undoes it):
//! 1. the new master key is written to `secrets.key.next` (0600, synced);
//! 2. one write transaction decrypts every value stored under the old key (credential
//!    secrets, the secrets each deployment's credential versions keep for rollback, pending
//!    flows' PKCE verifiers), encrypts it under the new one (fingerprints are recomputed under
//!    the new key too), records the new key's id, and commits;
//! 3. `secrets.key.next` is renamed over `secrets.key` (the old key's only copy), and the
//!    directory synced;
//! 4. the write-ahead log is checkpointed and truncated, so that no page written before the
//!    rotation (old ciphertext) stays in it.
//!
//! A running server switches at its next write transaction, which reads the id the store
//! records before it writes anything (see [`crate::service::creds::SecretKeys`]); its reads
//! find the new key on disk meanwhile.

use std::time::Duration;

use anyhow::{Context, bail};
use flowpack_shared::seal::{SealingIdentity, random};
use flowpack_shared::secret::SecretBytes;
use flowpack_shared::timefmt::Timestamp;

use crate::datadir::{self, DataDir, LockKind};
use crate::keyring::{self, SealingRing};
use crate::service::creds::SecretKeys;
use crate::store::{EncryptedAt, Store};

/// What `rotate sealing` did.
#[derive(Debug)]
pub struct SealingRotated {
    /// The new current recipient.
    pub recipient: String,
    /// Previous recipients still accepted, with when each retires.
    pub previous: Vec<(String, Timestamp)>,
    /// Recipients retired by this rotation (their secret keys removed).
    pub retired: Vec<String>,
}

/// Makes a new sealing identity the current one; the current one is accepted until `now +
/// retire_after` (a zero duration retires it at once).
pub fn rotate_sealing(
    dir: &DataDir,
    now: Timestamp,
    retire_after: time::Duration,
) -> anyhow::Result<SealingRotated> {
    require_initialized(dir)?;
    let _lock = datadir::lock_keys(dir, LockKind::Exclusive)?;
    let ring = keyring::read_ring(&dir.sealing_key())?;
    let before: Vec<String> = ring.retired.iter().map(|r| r.recipient.clone()).collect();
    let ring: SealingRing = ring.rotated(SealingIdentity::generate(), now, retire_after);
    keyring::write_atomic(&dir.sealing_key(), ring.to_file_text().as_bytes())?;
    Ok(SealingRotated {
        recipient: ring.current.recipient().to_string(),
        previous: ring
            .previous
            .iter()
            .map(|p| (p.identity.recipient().to_string(), p.retires_at))
            .collect(),
        retired: ring
            .retired
            .iter()
            .map(|r| r.recipient.clone())
            .filter(|r| !before.contains(r))
            .collect(),
    })
}

/// What `rotate at-rest` did.
#[derive(Debug)]
pub struct AtRestRotated {
    /// The id of the key the secrets were under.
    pub old_id: String,
    /// The id of the key they are under now.
    pub new_id: String,
    /// How many values were re-encrypted.
    pub values: usize,
    /// Whether the write-ahead log was emptied (false: a reader kept it; the old ciphertext
    /// in it is overwritten as the log is reused).
    pub wal_truncated: bool,
}

/// Re-encrypts every stored secret under a new at-rest key in one transaction, then replaces
/// the key file (see the module's documentation for the order).
pub fn rotate_at_rest(dir: &DataDir) -> anyhow::Result<AtRestRotated> {
    require_initialized(dir)?;
    let _lock = datadir::lock_keys(dir, LockKind::Exclusive)?;
    let store = dir.open_store()?;
    let old = datadir::settle_at_rest(dir, &store)?;
    let old_keys = SecretKeys::derive(&old);
    let new = SecretBytes::new(random::<32>().map_err(|e| anyhow::anyhow!("{e}"))?);
    let new_keys = SecretKeys::derive(&new);
    keyring::write_atomic(&dir.secrets_key_next(), new.expose())?;
    let values = match reencrypt(&store, &old_keys, &new_keys) {
        Ok(n) => n,
        Err(e) => {
            // Not committed: the old key stays the one in use.
            if let Err(rm) = std::fs::remove_file(dir.secrets_key_next()) {
                tracing::warn!(error = %rm, "removing secrets.key.next");
            }
            return Err(e);
        }
    };
    std::fs::rename(dir.secrets_key_next(), dir.secrets_key()).with_context(|| {
        format!(
            "renaming {} to {} (the rotation is committed: the next start finishes it)",
            dir.secrets_key_next().display(),
            dir.secrets_key().display()
        )
    })?;
    keyring::sync_dir(dir.root())?;
    let wal_truncated = truncate_wal(&store)?;
    Ok(AtRestRotated {
        old_id: old_keys.id(),
        new_id: new_keys.id(),
        values,
        wal_truncated,
    })
}

/// Step 2 of the protocol: one transaction.
fn reencrypt(store: &Store, old: &SecretKeys, new: &SecretKeys) -> anyhow::Result<usize> {
    let mut db = store.db()?;
    let tx = db.write()?;
    let recorded = tx.at_rest_key_id()?;
    if recorded.as_deref() != Some(old.id().as_str()) {
        bail!(
            "the store names at-rest key {}, not {}; nothing was changed",
            recorded.as_deref().unwrap_or("(none)"),
            old.id()
        );
    }
    let values = tx.encrypted_values()?;
    for v in &values {
        let Some(plain) = old.decrypt_exact(&v.path, &v.field, &v.ciphertext) else {
            bail!(
                "{}: field {} does not open under the current at-rest key {}; nothing was changed",
                v.path,
                v.field,
                old.id()
            );
        };
        let ct = new
            .encrypt(&v.path, &v.field, &plain)
            .map_err(|p| anyhow::anyhow!("{}", p.detail))?;
        let fingerprint = match v.at {
            EncryptedAt::Secret { .. } | EncryptedAt::VersionSecret { .. } => {
                Some(new.fingerprint(&plain))
            }
            EncryptedAt::PkceVerifier { .. } => None,
        };
        tx.reencrypt(v, &ct, fingerprint.as_deref())?;
    }
    tx.set_at_rest_key_id(&new.id())?;
    tx.commit()?;
    Ok(values.len())
}

/// Step 4: empties the write-ahead log, trying a few times while readers of older snapshots
/// (a running server's) hold it.
fn truncate_wal(store: &Store) -> anyhow::Result<bool> {
    let db = store.db()?;
    for _ in 0..10 {
        if db.truncate_wal()? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(false)
}

fn require_initialized(dir: &DataDir) -> anyhow::Result<()> {
    dir.check_initialized()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OAuthState;
    use flowpack_shared::names::ContainerPath;
    use flowpack_shared::secret::Secret;

    /// A data directory with one credential secret and one pending flow's verifier.
    fn populated() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = DataDir::new(tmp.path().join("d"));
        datadir::init(&dir).unwrap_or_else(|e| panic!("{e}"));
        let loaded = datadir::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        let keys = &loaded.keys;
        let mut db = loaded.store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let c = ContainerPath::parse("/a").unwrap_or_else(|e| panic!("{e}"));
        let cid = tx.ensure_container(&c).unwrap_or_else(|e| panic!("{e}"));
        let (id, _) = tx
            .upsert_credential(cid, "c", "password", r#"{"name":"c","type":"password"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let secret = Secret::new("hunter2".into());
        let ct = keys
            .encrypt("/a/c", "password", &secret)
            .unwrap_or_else(|e| panic!("{e:?}"));
        tx.set_secret(id, "password", &ct, &keys.fingerprint(&secret))
            .unwrap_or_else(|e| panic!("{e}"));
        let verifier = keys
            .encrypt(
                "/a/c",
                "pkce_code_verifier",
                &Secret::new("v3rifier".into()),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        let state = OAuthState {
            credential_id: id,
            path: "/a/c".into(),
            verifier,
            principal: "admin".into(),
            expires_at_ms: i64::MAX,
        };
        tx.insert_oauth_state(b"state", &state, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        (tmp, dir)
    }

    /// Both stored values, opened with exactly the keys `load` gives (no other key tried).
    fn stored_values_open(dir: &DataDir) -> (String, Vec<String>) {
        let loaded = datadir::load(dir).unwrap_or_else(|e| panic!("{e}"));
        let mut db = loaded.store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        let opened = tx
            .encrypted_values()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|v| {
                loaded
                    .keys
                    .decrypt_exact(&v.path, &v.field, &v.ciphertext)
                    .unwrap_or_else(|| panic!("{} {} does not open", v.path, v.field))
                    .expose()
                    .to_owned()
            })
            .collect();
        (loaded.keys.id(), opened)
    }

    fn master(dir: &DataDir) -> SecretBytes<32> {
        keyring::read_master(&dir.secrets_key())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no secrets.key"))
    }

    #[test]
    fn a_rotation_cut_off_before_its_commit_leaves_the_old_key_in_use() {
        let (_tmp, dir) = populated();
        let (before, values) = stored_values_open(&dir);
        assert_eq!(values, ["hunter2", "v3rifier"]);
        // Step 1 done, then a crash.
        keyring::write_atomic(&dir.secrets_key_next(), &[7u8; 32])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored_values_open(&dir), (before, values));
        assert!(
            !dir.secrets_key_next().exists(),
            "the uncommitted key is removed"
        );
    }

    #[test]
    fn a_rotation_cut_off_after_its_commit_is_finished_at_the_next_load() {
        let (_tmp, dir) = populated();
        let (before, values) = stored_values_open(&dir);
        let old = SecretKeys::derive(&master(&dir));
        let new_master = SecretBytes::new([9u8; 32]);
        let new = SecretKeys::derive(&new_master);
        // Steps 1 and 2 done, then a crash before the rename.
        keyring::write_atomic(&dir.secrets_key_next(), new_master.expose())
            .unwrap_or_else(|e| panic!("{e}"));
        let store =
            Store::open(&dir.store(), crate::store::wall_clock()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            reencrypt(&store, &old, &new).unwrap_or_else(|e| panic!("{e}")),
            2
        );
        drop(store);
        let (after, again) = stored_values_open(&dir);
        assert_eq!(again, values);
        assert_eq!(after, new.id());
        assert_ne!(after, before);
        assert_eq!(master(&dir).expose(), new_master.expose());
        assert!(!dir.secrets_key_next().exists());
    }

    #[test]
    fn a_running_server_switches_keys_at_its_next_write() {
        let (_tmp, dir) = populated();
        let serving = datadir::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        let before = serving.keys.id();
        let done = rotate_at_rest(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((done.old_id.as_str(), done.values), (before.as_str(), 2));
        assert!(done.wal_truncated);
        // The server's next write transaction switches the key that encrypts (its reads
        // before that find the new key on disk: tests/keys_backup.rs).
        assert_eq!(serving.keys.id(), before);
        let mut db = serving.store.db().unwrap_or_else(|e| panic!("{e}"));
        let tx = db.write().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serving.keys.id(), done.new_id);
        let values = tx.encrypted_values().unwrap_or_else(|e| panic!("{e}"));
        for v in &values {
            assert!(
                serving
                    .keys
                    .decrypt(&v.path, &v.field, &v.ciphertext)
                    .is_some()
            );
        }
        drop(tx);
        assert_eq!(stored_values_open(&dir).0, done.new_id);
    }

    #[test]
    fn a_store_that_names_another_key_is_refused_naming_it() {
        let (_tmp, dir) = populated();
        let (id, _) = stored_values_open(&dir);
        keyring::write_atomic(&dir.secrets_key(), &[1u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        let e = datadir::load(&dir)
            .err()
            .unwrap_or_else(|| panic!("loaded"));
        assert!(e.to_string().contains(&format!("at-rest key {id}")), "{e}");
        // And the running rotation refuses too, changing nothing.
        let e = rotate_at_rest(&dir)
            .err()
            .unwrap_or_else(|| panic!("rotated"));
        assert!(e.to_string().contains(&id), "{e}");
        assert!(!dir.secrets_key_next().exists());
    }
}
