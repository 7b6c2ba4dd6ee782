//! The data directory: what `init` creates and what `serve` loads.
//!
//! ```text
//! D/store.db         SQLite (WAL): containers, mappings, credentials, tokens, trust, audit;
//!                    absent when `config.json` names a PostgreSQL store (`init --store`),
//!                    which several nodes share, each with its own data directory holding
//!                    copies of the same key files (`init --join`)
//! D/sealing.agekey   the receiver's age identities (0600): the current one bundles are sealed
//!                    to, then previous ones still accepted after `rotate sealing` (keyring.rs)
//! D/secrets.key      32 random bytes (0600), kept apart from the database: the at-rest and
//!                    fingerprint keys are derived from it with HKDF
//! D/secrets.key.next only during `rotate at-rest`: the new master key
//! D/config.json      limits, extra CA files, hosts allowed for outbound requests
//! D/keys.lock        locked (flock) by whatever reads or replaces the key files
//! D/spool/           uploaded bundles while they are verified (temporary files only)
//! D/serve.lock       locked (flock) by the one `serve` using the directory
//! ```
//!
//! A copy of `store.db` alone reveals no secret: every sensitive value in it is encrypted under a
//! key derived from `secrets.key`. The store records the id of that key
//! ([`crate::keyring::at_rest_key_id`]), which is how [`settle_at_rest`] tells, after a crash
//! during a rotation, which of `secrets.key` and `secrets.key.next` is the one in use.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flowpack_shared::seal::{SealingIdentity, random};
use flowpack_shared::secret::SecretBytes;

use crate::config::StoreKind;
use crate::keyring::{self, Sealing};
use crate::service::auth::{self, PermSet};
use crate::service::creds::SecretKeys;
use crate::store::Store;

pub use crate::config::{Config, LimitsConfig};

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (not checked).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Whether `init` made this directory (its at-rest key is there).
    pub fn is_initialized(&self) -> bool {
        self.store().exists() || self.secrets_key().exists()
    }
    /// Fails, saying how to make one, unless `init` made this directory.
    pub fn check_initialized(&self) -> anyhow::Result<()> {
        if !self.is_initialized() {
            bail!(
                "{} is not an initialized data directory (run `flowpack-receiver init --data-dir {}`)",
                self.root.display(),
                self.root.display()
            );
        }
        Ok(())
    }
    /// Opens the store `config.json` names (this directory's SQLite database by default),
    /// upgrading an older schema.
    pub fn open_store(&self) -> anyhow::Result<Store> {
        self.check_initialized()?;
        let config = crate::config::read(&self.config())?;
        open_kind(self, &config.store)
    }
    /// The SQLite database.
    pub fn store(&self) -> PathBuf {
        self.root.join("store.db")
    }
    /// The age identity.
    pub fn sealing_key(&self) -> PathBuf {
        self.root.join("sealing.agekey")
    }
    /// The at-rest master key.
    pub fn secrets_key(&self) -> PathBuf {
        self.root.join("secrets.key")
    }
    /// The new at-rest master key while `rotate at-rest` runs.
    pub fn secrets_key_next(&self) -> PathBuf {
        self.root.join("secrets.key.next")
    }
    /// The file locked by whatever reads or replaces the key files.
    pub fn keys_lock(&self) -> PathBuf {
        self.root.join("keys.lock")
    }
    /// The configuration.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// Where uploads are spooled while they are verified.
    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }
    /// The file `serve` holds an exclusive lock on.
    pub fn serve_lock(&self) -> PathBuf {
        self.root.join("serve.lock")
    }
}

/// An exclusive lock on a data directory, held while `serve` runs; released when dropped (or
/// by the kernel when the process dies, even by SIGKILL).
#[derive(Debug)]
pub struct ServeLock {
    _file: fs::File,
}

/// Takes the data directory's serve lock, then removes what a previous server left in
/// `spool/` (a crash, SIGKILL or power loss skips the temporary files' own cleanup).
///
/// Only files under `spool/` are removed, and only once the lock is held: no other server can
/// be spooling there, and nothing else writes to it. Fails, naming the directory, when another
/// process holds the lock.
pub fn lock_for_serving(dir: &DataDir) -> anyhow::Result<ServeLock> {
    dir.check_initialized()?;
    let path = dir.serve_lock();
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another flowpack-receiver serve (it holds {}); stop that one first",
            dir.root().display(),
            path.display()
        ),
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    let removed = clear_spool(dir)?;
    if removed > 0 {
        tracing::info!(
            files = removed,
            "removed spool files left by an earlier server"
        );
    }
    Ok(ServeLock { _file: file })
}

/// Removes the regular files directly in `spool/`; returns how many. Anything else there
/// (a directory, a symlink) is left alone: the receiver never creates one.
fn clear_spool(dir: &DataDir) -> anyhow::Result<usize> {
    let spool = dir.spool();
    let entries = match fs::read_dir(&spool) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", spool.display())),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", spool.display()))?;
        // `file_type` does not follow symlinks.
        if entry.file_type()?.is_file() {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// What `init` prints, once.
#[derive(Debug)]
pub struct Initialized {
    /// The receiver's sealing recipient (`age1…`).
    pub sealing_recipient: String,
    /// A token with every grant on `/`.
    pub admin_token: zeroize::Zeroizing<String>,
}

/// Writes `bytes` to a new file with mode 0600; fails if it exists.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Opens the store of kind `kind` for data directory `dir`.
fn open_kind(dir: &DataDir, kind: &StoreKind) -> anyhow::Result<Store> {
    match kind {
        StoreKind::Sqlite => Store::open(&dir.store(), crate::store::wall_clock()),
        StoreKind::Postgres(url) => Store::open_postgres(url.expose(), crate::store::wall_clock()),
    }
}

/// Refuses a directory that is already initialized.
fn refuse_initialized(dir: &DataDir) -> anyhow::Result<()> {
    for p in [
        dir.store(),
        dir.sealing_key(),
        dir.secrets_key(),
        dir.config(),
    ] {
        if p.exists() {
            bail!(
                "{} is already initialized ({} exists); refusing to overwrite it",
                dir.root().display(),
                p.display()
            );
        }
    }
    Ok(())
}

/// Creates the directory (mode 0700) and its `spool/`.
fn make_dirs(dir: &DataDir) -> anyhow::Result<()> {
    fs::create_dir_all(dir.root()).with_context(|| format!("creating {}", dir.root().display()))?;
    fs::create_dir_all(dir.spool())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.root(), fs::Permissions::from_mode(0o700))?;
        fs::set_permissions(dir.spool(), fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes the directories of a new data directory, then runs `make`, which writes its key files
/// and `config.json`; on an error removes those it wrote (none existed before) and the
/// directories if they are empty and were made here, so that nothing half-made is left.
fn all_or_nothing<T>(dir: &DataDir, make: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let existed = dir.root().exists();
    let made = make_dirs(dir).and_then(|()| make());
    if made.is_err() {
        for p in [dir.sealing_key(), dir.secrets_key(), dir.config()] {
            let _ = fs::remove_file(p);
        }
        if !existed {
            // Only empty directories are removed: nothing else is touched.
            let _ = fs::remove_dir(dir.spool());
            let _ = fs::remove_dir(dir.root());
        }
    }
    made
}

/// Creates a data directory: keys, database, configuration and an admin token.
/// Refuses a directory that is already initialized.
pub fn init(dir: &DataDir) -> anyhow::Result<Initialized> {
    init_with(dir, &StoreKind::Sqlite)
}

/// [`init`] with the store `store`: the embedded one, or the schema in an empty PostgreSQL
/// database, which is refused when it already holds a store (another node joins it with
/// [`join`]).
pub fn init_with(dir: &DataDir, store: &StoreKind) -> anyhow::Result<Initialized> {
    refuse_initialized(dir)?;
    all_or_nothing(dir, || {
        let identity = SealingIdentity::generate();
        write_private(&dir.sealing_key(), identity.to_file_text().as_bytes())?;
        let master = zeroize::Zeroizing::new(random::<32>().map_err(|e| anyhow::anyhow!("{e}"))?);
        write_private(&dir.secrets_key(), master.as_ref())?;
        let config = Config {
            store: store.clone(),
            ..Config::default()
        };
        let config = zeroize::Zeroizing::new(serde_json::to_string_pretty(&config)?);
        write_private(&dir.config(), format!("{}\n", config.as_str()).as_bytes())?;

        let store = match store {
            StoreKind::Sqlite => {
                let store = Store::create(&dir.store(), crate::store::wall_clock())?;
                #[cfg(unix)]
                {
                    // SQLite creates the database with the umask's mode, and its log files after
                    // it with the database's: none of them readable by others.
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(dir.store(), fs::Permissions::from_mode(0o600))?;
                }
                store
            }
            StoreKind::Postgres(url) => {
                Store::create_postgres(url.expose(), crate::store::wall_clock())?
            }
        };
        {
            let mut db = store.db()?;
            let tx = db.write()?;
            tx.set_at_rest_key_id(&crate::keyring::at_rest_key_id(&SecretBytes::new(*master)))?;
            tx.commit()?;
        }
        let admin_token = auth::create_token(&store, "admin", &[(auth::root(), PermSet::all())])?;
        Ok(Initialized {
            sealing_recipient: identity.recipient().to_string(),
            admin_token,
        })
    })
}

/// Makes `dir` another node's data directory for the PostgreSQL store of data directory
/// `from`: copies its key files and `config.json` (never a second key set), and checks that the
/// store's secrets are under the copied at-rest key. Returns the sealing recipient, the same
/// as `from`'s.
pub fn join(dir: &DataDir, from: &DataDir) -> anyhow::Result<String> {
    from.check_initialized()?;
    let config = crate::config::read(&from.config())?;
    let StoreKind::Postgres(url) = &config.store else {
        bail!(
            "{} keeps its store in its own SQLite file, which one receiver uses; only a data directory of a PostgreSQL store (`init --store postgres://…`) can be joined",
            from.root().display()
        );
    };
    refuse_initialized(dir)?;
    // The key files do not change while they are copied (a rotation waits).
    let _lock = lock_keys(from, LockKind::Shared)?;
    if from.secrets_key_next().exists() {
        bail!(
            "{}: an at-rest key rotation is under way ({} exists); join once it has finished",
            from.root().display(),
            from.secrets_key_next().display()
        );
    }
    all_or_nothing(dir, || {
        for (src, dst) in [
            (from.sealing_key(), dir.sealing_key()),
            (from.secrets_key(), dir.secrets_key()),
            (from.config(), dir.config()),
        ] {
            let bytes = zeroize::Zeroizing::new(
                fs::read(&src).with_context(|| format!("reading {}", src.display()))?,
            );
            write_private(&dst, &bytes)?;
        }
        let master = keyring::read_master(&dir.secrets_key())?
            .ok_or_else(|| anyhow::anyhow!("{} is missing", dir.secrets_key().display()))?;
        let store = Store::open_postgres(url.expose(), crate::store::wall_clock())?;
        let recorded = store.db()?.at_rest_key_id()?;
        let ours = keyring::at_rest_key_id(&master);
        if recorded.as_deref().is_some_and(|id| id != ours) {
            bail!(
                "{}: the store's secrets are encrypted under at-rest key {}, not this directory's {ours}",
                from.root().display(),
                recorded.unwrap_or_default()
            );
        }
        Ok(Sealing::load(&dir.sealing_key())?.recipient().to_string())
    })
}

/// Everything `serve` needs from the data directory.
#[derive(Debug)]
pub struct Loaded {
    /// The sealing identities, followed as `rotate sealing` replaces their file.
    pub sealing: Sealing,
    /// Keys derived from `secrets.key`, switched when `rotate at-rest` replaces it.
    pub keys: SecretKeys,
    /// `config.json`.
    pub config: Config,
    /// The database.
    pub store: Store,
}

/// Loads an initialized data directory: settles the key files (see [`settle_at_rest`]) and
/// installs the check that keeps the server's at-rest key the one the store names.
pub fn load(dir: &DataDir) -> anyhow::Result<Loaded> {
    dir.check_initialized()?;
    let lock = lock_keys(dir, LockKind::Exclusive)?;
    let sealing = Sealing::load(&dir.sealing_key())?;
    let config = crate::config::read(&dir.config())?;
    fs::create_dir_all(dir.spool())?;
    let store = open_kind(dir, &config.store)?;
    let master = settle_at_rest(dir, &store)?;
    drop(lock);
    let candidates = [dir.secrets_key(), dir.secrets_key_next()];
    let keys = SecretKeys::with_loader(
        &master,
        Box::new(move || {
            candidates
                .iter()
                .filter_map(|p| match keyring::read_master(p) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::error!(error = %e, "reading an at-rest key file");
                        None
                    }
                })
                .collect()
        }),
    );
    let check = keys.clone();
    store.check_keys_on_write(Box::new(move |id| match id {
        Some(id) => check.use_key(id),
        None => Ok(()),
    }));
    Ok(Loaded {
        sealing,
        keys,
        config,
        store,
    })
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Several holders at once (a backup reading the key files).
    Shared,
    /// One holder (a rotation replacing them, a load settling them).
    Exclusive,
}

/// A lock on a data directory's key files (`keys.lock`), released when dropped.
#[derive(Debug)]
pub struct KeysLock {
    _file: fs::File,
}

/// Takes the lock on the key files, waiting for the holder (a rotation, a backup) to finish.
pub fn lock_keys(dir: &DataDir, kind: LockKind) -> anyhow::Result<KeysLock> {
    let path = dir.keys_lock();
    let mut opts = fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match kind {
        LockKind::Shared => file.lock_shared(),
        LockKind::Exclusive => file.lock(),
    }
    .with_context(|| format!("locking {}", path.display()))?;
    Ok(KeysLock { _file: file })
}

/// Makes the at-rest key files agree with the store, after any crash during `rotate at-rest`,
/// and returns the master key the store's secrets are encrypted under. The caller holds the
/// exclusive [`lock_keys`].
///
/// - The store names `secrets.key` (or names none yet: it is recorded): a `secrets.key.next`
///   is what a rotation left before it committed, and is removed.
/// - The store names `secrets.key.next`: the rotation committed and was cut off before it
///   renamed the file; the rename is finished.
/// - The store names neither: refused, naming the key id it needs.
pub fn settle_at_rest(dir: &DataDir, store: &Store) -> anyhow::Result<SecretBytes<32>> {
    let current = keyring::read_master(&dir.secrets_key())?
        .ok_or_else(|| anyhow::anyhow!("{} is missing", dir.secrets_key().display()))?;
    let next = keyring::read_master(&dir.secrets_key_next()).unwrap_or_else(|e| {
        // Unreadable or of the wrong size: cut off while it was written, never committed.
        tracing::warn!(error = %e, "ignoring an unreadable secrets.key.next");
        None
    });
    let current_id = keyring::at_rest_key_id(&current);
    let next_id = next.as_ref().map(keyring::at_rest_key_id);
    let mut db = store.db()?;
    let recorded = db.at_rest_key_id()?;
    match (recorded.as_deref(), next) {
        (None, _) => {
            let tx = db.write()?;
            tx.set_at_rest_key_id(&current_id)?;
            tx.commit()?;
        }
        (Some(id), _) if id == current_id => {}
        (Some(id), Some(next)) if next_id.as_deref() == Some(id) => {
            fs::rename(dir.secrets_key_next(), dir.secrets_key()).with_context(|| {
                format!(
                    "finishing an interrupted rotation: renaming {} to {}",
                    dir.secrets_key_next().display(),
                    dir.secrets_key().display()
                )
            })?;
            keyring::sync_dir(dir.root())?;
            tracing::info!(key_id = id, "finished an interrupted at-rest key rotation");
            return Ok(next);
        }
        (Some(id), _) => bail!(
            "{}: the stored secrets are encrypted under at-rest key {id}, but {} is key {current_id}; put back the secrets.key of this database (a backup holds both)",
            dir.root().display(),
            dir.secrets_key().display()
        ),
    }
    if dir.secrets_key_next().exists() {
        fs::remove_file(dir.secrets_key_next())
            .with_context(|| format!("removing {}", dir.secrets_key_next().display()))?;
        keyring::sync_dir(dir.root())?;
        tracing::info!("removed the new key of a rotation that did not commit");
    }
    Ok(current)
}
