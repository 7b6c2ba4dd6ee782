//! `backup` and `restore`: a data directory as one archive file, taken while `serve` runs.
//!
//! **The archive** is a POSIX tar file (GNU headers) of regular files only, in this order:
//!
//! | entry | what |
//! |---|---|
//! | `flowpack-backup.json` | `{"format": "flowpack-receiver-backup/1", "created_at", "receiver_version", "at_rest_key_id", "sealing_recipient", "files": [{"name", "size", "sha256"}]}` |
//! | `store.db` | a consistent snapshot of the database (SQLite `VACUUM INTO`: committed data only, compacted) |
//! | `secrets.key` | the at-rest master key the snapshot's secrets are encrypted under |
//! | `sealing.agekey` | the sealing identities (current and previous) |
//! | `config.json` | the configuration, when the directory has one |
//!
//! With `--encrypt-to age1…` the whole tar is an age file (binary, X25519 recipients): `age -d
//! -i KEY FILE | tar t` lists it. The archive holds the database and the key that opens its
//! secrets together, so an unencrypted backup is as sensitive as the data directory; it is
//! written with mode 0600, atomically (a temporary file renamed into place).
//!
//! **Consistency.** The backup holds the shared lock on the key files (a rotation waits for it,
//! and it for a rotation), and the snapshot is one read transaction: a deploy acknowledged
//! before the backup started is in it, one that commits meanwhile is in it or not, whole.
//!
//! **Restore** reads the archive entry by entry and writes each known entry to its own fixed
//! path in a new directory beside the target; names are compared, never used as paths. Every
//! entry must be a regular file listed in the manifest with its size and digest, none twice,
//! none missing; the key must be the one the snapshot names. Only then is the new directory
//! renamed to the target (which must not exist, or be empty).

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flowpack_shared::timefmt::Timestamp;
use serde::{Deserialize, Serialize};

use crate::datadir::{self, DataDir, LockKind};
use crate::keyring;
use crate::store::Store;

/// The archive format's name, in its manifest.
pub const FORMAT: &str = "flowpack-receiver-backup/1";

const MANIFEST: &str = "flowpack-backup.json";
const STORE: &str = "store.db";
const SECRETS: &str = "secrets.key";
const SEALING: &str = "sealing.agekey";
const CONFIG: &str = "config.json";

/// The manifest is small; a larger one is refused before it is parsed.
const MANIFEST_MAX: u64 = 64 * 1024;

/// What an age file starts with.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// The archive's first entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    created_at: String,
    receiver_version: String,
    at_rest_key_id: String,
    sealing_recipient: String,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    size: u64,
    sha256: String,
}

/// What `backup` wrote.
#[derive(Debug)]
pub struct BackedUp {
    /// The archive.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is an age file.
    pub encrypted: bool,
    /// The data directory's current sealing recipient.
    pub sealing_recipient: String,
}

/// Writes a backup of `dir` to `out` (which must not exist), sealed to `encrypt_to` when any
/// recipient is given.
pub fn backup(
    dir: &DataDir,
    out: &Path,
    encrypt_to: &[age::x25519::Recipient],
    now: Timestamp,
) -> anyhow::Result<BackedUp> {
    dir.check_initialized()?;
    if out.symlink_metadata().is_ok() {
        bail!(
            "{} exists; refusing to overwrite it (remove it, or choose another name)",
            out.display()
        );
    }
    let out_dir = parent_of(out);
    let _lock = datadir::lock_keys(dir, LockKind::Shared)?;
    let work = tempfile::Builder::new()
        .prefix(".flowpack-backup-")
        .tempdir_in(&out_dir)
        .with_context(|| format!("creating a directory in {}", out_dir.display()))?;

    // The snapshot, and the key it names.
    let snapshot = work.path().join(STORE);
    let recorded = {
        let store = dir.open_store()?;
        let db = store.db()?;
        db.snapshot_into(&snapshot)
            .with_context(|| format!("taking a snapshot of {}", dir.store().display()))?;
        db.at_rest_key_id()?
    };
    let mut key = None;
    for path in [dir.secrets_key(), dir.secrets_key_next()] {
        if let Some(k) = keyring::read_master(&path)? {
            let id = keyring::at_rest_key_id(&k);
            if recorded.as_deref().is_none_or(|r| r == id) {
                key = Some((k, id));
                break;
            }
        }
    }
    let Some((key, key_id)) = key else {
        bail!(
            "{}: no key file is the at-rest key {} that the store names",
            dir.root().display(),
            recorded.as_deref().unwrap_or("?")
        );
    };
    let sealing_text = zeroize::Zeroizing::new(
        fs::read(dir.sealing_key())
            .with_context(|| format!("reading {}", dir.sealing_key().display()))?,
    );
    let ring = keyring::read_ring(&dir.sealing_key())?;
    let config = match fs::read(dir.config()) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.config().display())),
    };

    let mut files = vec![FileEntry {
        name: STORE.into(),
        size: fs::metadata(&snapshot)?.len(),
        sha256: sha256_file(&snapshot)?,
    }];
    let small: Vec<(&str, &[u8])> = [
        (SECRETS, Some(key.expose().as_slice())),
        (SEALING, Some(sealing_text.as_slice())),
        (CONFIG, config.as_deref()),
    ]
    .into_iter()
    .filter_map(|(n, b)| b.map(|b| (n, b)))
    .collect();
    for (name, bytes) in &small {
        files.push(FileEntry {
            name: (*name).into(),
            size: bytes.len() as u64,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes)),
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        created_at: now.to_string(),
        receiver_version: env!("CARGO_PKG_VERSION").into(),
        at_rest_key_id: key_id,
        sealing_recipient: ring.current.recipient().to_string(),
        files,
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;

    // The archive, to a temporary file (mode 0600) renamed into place.
    let tmp = tempfile::Builder::new()
        .prefix(".flowpack-backup-")
        .tempfile_in(&out_dir)
        .with_context(|| format!("creating a file in {}", out_dir.display()))?;
    let file = tmp.reopen()?;
    let writer = BufWriter::new(file);
    let mtime = u64::try_from(now.unix_millis() / 1000).unwrap_or(0);
    let write_tar = |w: &mut dyn Write| -> anyhow::Result<()> {
        let mut tar = tar::Builder::new(w);
        append(
            &mut tar,
            MANIFEST,
            &mut &manifest_bytes[..],
            manifest_bytes.len() as u64,
            mtime,
        )?;
        let mut db = fs::File::open(&snapshot)?;
        append(&mut tar, STORE, &mut db, manifest.files[0].size, mtime)?;
        for (name, bytes) in &small {
            append(&mut tar, name, &mut &bytes[..], bytes.len() as u64, mtime)?;
        }
        tar.finish()?;
        Ok(())
    };
    let file = if encrypt_to.is_empty() {
        let mut w = writer;
        write_tar(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?
    } else {
        let recipients = encrypt_to.iter().map(|r| r as &dyn age::Recipient);
        let enc = age::Encryptor::with_recipients(recipients)
            .map_err(|e| anyhow::anyhow!("--encrypt-to: {e}"))?;
        let mut w = enc.wrap_output(writer)?;
        write_tar(&mut w)?;
        w.finish()?.into_inner().map_err(|e| e.into_error())?
    };
    file.sync_all()?;
    let size = file.metadata()?.len();
    drop(file);
    tmp.persist_noclobber(out)
        .map_err(|e| anyhow::anyhow!("moving the backup to {}: {}", out.display(), e.error))?;
    keyring::sync_dir(&out_dir)?;
    Ok(BackedUp {
        path: out.to_owned(),
        size,
        encrypted: !encrypt_to.is_empty(),
        sealing_recipient: manifest.sealing_recipient,
    })
}

/// One regular file entry, mode 0600.
fn append(
    tar: &mut tar::Builder<&mut dyn Write>,
    name: &str,
    data: &mut dyn Read,
    size: u64,
    mtime: u64,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    tar.append_data(&mut header, name, data)
        .with_context(|| format!("writing {name} to the backup"))?;
    Ok(())
}

/// What `restore` made.
#[derive(Debug)]
pub struct Restored {
    /// When the backup was taken.
    pub created_at: String,
    /// The restored directory's sealing recipient.
    pub sealing_recipient: String,
}

/// Makes a new data directory at `target` from the backup `file` (an age file needs
/// `identity`, a file of age identities).
pub fn restore(file: &Path, target: &DataDir, identity: Option<&Path>) -> anyhow::Result<Restored> {
    let root = target.root();
    match fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() => {
            if fs::read_dir(root)?.next().is_some() {
                bail!(
                    "{} is not empty; restore makes a new data directory",
                    root.display()
                );
            }
        }
        Ok(_) => bail!("{} exists and is not a directory", root.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    }
    let parent = parent_of(root);
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".flowpack-restore-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let staged = DataDir::new(work.path());

    let input = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut input = BufReader::new(input);
    let encrypted = input.fill_buf()?.starts_with(AGE_MAGIC);
    let manifest = if encrypted {
        let Some(identity) = identity else {
            bail!(
                "{} is encrypted with age; give the identity to decrypt it with --identity FILE",
                file.display()
            );
        };
        let identities = read_identities(identity)?;
        let dec = age::Decryptor::new_buffered(input)
            .map_err(|e| anyhow::anyhow!("{}: not a readable age file: {e}", file.display()))?;
        let reader = dec
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot be decrypted with the identities in {}: {e}",
                    file.display(),
                    identity.display()
                )
            })?;
        unpack(reader, &staged).with_context(|| file.display().to_string())?
    } else {
        unpack(input, &staged).with_context(|| file.display().to_string())?
    };

    // Everything is checked before the directory appears.
    let key = keyring::read_master(&staged.secrets_key())?
        .ok_or_else(|| anyhow::anyhow!("{}: no {SECRETS}", file.display()))?;
    let key_id = keyring::at_rest_key_id(&key);
    if key_id != manifest.at_rest_key_id {
        bail!(
            "{}: {SECRETS} is key {key_id}, but the manifest names {}",
            file.display(),
            manifest.at_rest_key_id
        );
    }
    let ring = keyring::read_ring(&staged.sealing_key())
        .with_context(|| format!("{}: {SEALING}", file.display()))?;
    if staged.config().exists() {
        // Checked as `serve` reads it.
        crate::config::read(&staged.config())
            .with_context(|| format!("{}: {CONFIG}", file.display()))?;
    }
    {
        let store = Store::open(&staged.store(), crate::store::wall_clock())
            .with_context(|| format!("{}: {STORE}", file.display()))?;
        let _lock = datadir::lock_keys(&staged, LockKind::Exclusive)?;
        let settled = datadir::settle_at_rest(&staged, &store)?;
        if keyring::at_rest_key_id(&settled) != key_id {
            bail!("{}: the database does not name {SECRETS}", file.display());
        }
    }
    fs::create_dir_all(staged.spool())?;
    keyring::sync_dir(work.path())?;
    let made = work.keep();
    fs::rename(&made, root).with_context(|| {
        format!(
            "moving the restored directory {} to {}",
            made.display(),
            root.display()
        )
    })?;
    keyring::sync_dir(&parent)?;
    Ok(Restored {
        created_at: manifest.created_at,
        sealing_recipient: ring.current.recipient().to_string(),
    })
}

/// Reads the archive into `staged`: the manifest first, then each file it lists, each to its
/// own fixed path.
fn unpack(reader: impl Read, staged: &DataDir) -> anyhow::Result<Manifest> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().context("not a tar archive")?;
    let mut first = entries
        .next()
        .ok_or_else(|| anyhow::anyhow!("an empty archive"))?
        .context("reading the archive")?;
    if first.path_bytes().as_ref() != MANIFEST.as_bytes()
        || first.header().entry_type() != tar::EntryType::Regular
    {
        bail!("not a flowpack-receiver backup: the first entry is not {MANIFEST}");
    }
    if first.size() > MANIFEST_MAX {
        bail!("{MANIFEST} is larger than {MANIFEST_MAX} bytes");
    }
    let mut text = Vec::new();
    first.by_ref().take(MANIFEST_MAX).read_to_end(&mut text)?;
    drop(first);
    let manifest: Manifest =
        serde_json::from_slice(&text).with_context(|| format!("reading {MANIFEST}"))?;
    if manifest.format != FORMAT {
        bail!(
            "{MANIFEST}: format {:?}; this receiver reads {FORMAT:?}",
            manifest.format
        );
    }
    let destination = |name: &str| -> Option<PathBuf> {
        match name {
            STORE => Some(staged.store()),
            SECRETS => Some(staged.secrets_key()),
            SEALING => Some(staged.sealing_key()),
            CONFIG => Some(staged.config()),
            _ => None,
        }
    };
    for (i, f) in manifest.files.iter().enumerate() {
        if destination(&f.name).is_none() {
            bail!("{MANIFEST}: files[{i}]: unknown file {:?}", f.name);
        }
        if manifest.files[..i].iter().any(|g| g.name == f.name) {
            bail!("{MANIFEST}: files[{i}]: {:?} is listed twice", f.name);
        }
    }
    for required in [STORE, SECRETS, SEALING] {
        if !manifest.files.iter().any(|f| f.name == required) {
            bail!("{MANIFEST}: {required} is not listed");
        }
    }
    let mut seen: Vec<String> = Vec::new();
    for entry in entries {
        let mut entry = entry.context("reading the archive")?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(listed) = manifest.files.iter().find(|f| f.name == name) else {
            bail!("entry {name:?} is not listed in {MANIFEST}");
        };
        if seen.contains(&name) {
            bail!("entry {name:?} appears twice");
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            bail!("entry {name:?} is not a regular file");
        }
        if entry.size() != listed.size {
            bail!(
                "entry {name:?} is {} bytes; {MANIFEST} says {}",
                entry.size(),
                listed.size
            );
        }
        let Some(path) = destination(&name) else {
            bail!("entry {name:?} is not a file of a data directory");
        };
        let digest = copy_private(&mut entry, &path, listed.size)
            .with_context(|| format!("entry {name:?}"))?;
        if digest != listed.sha256 {
            bail!("entry {name:?} does not match its SHA-256 in {MANIFEST}");
        }
        seen.push(name);
    }
    if let Some(missing) = manifest.files.iter().find(|f| !seen.contains(&f.name)) {
        bail!("entry {:?} listed in {MANIFEST} is missing", missing.name);
    }
    Ok(manifest)
}

/// Copies `size` bytes from `from` to a new file (mode 0600) at `to`, synced; returns their
/// SHA-256 (hex).
fn copy_private(from: &mut dyn Read, to: &Path, size: u64) -> anyhow::Result<String> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut out = opts.open(to)?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 64 * 1024]);
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            bail!("cut short");
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.sync_all()?;
    Ok(hex::encode(hash.finish()))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(hash.finish()))
}

/// The age identities of a file (`age-keygen`'s layout; every `AGE-SECRET-KEY-1…` line).
fn read_identities(path: &Path) -> anyhow::Result<Vec<age::x25519::Identity>> {
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id = line.parse::<age::x25519::Identity>().map_err(|_| {
            anyhow::anyhow!(
                "{}: line {}: not an age X25519 identity (AGE-SECRET-KEY-1…)",
                path.display(),
                i + 1
            )
        })?;
        out.push(id);
    }
    if out.is_empty() {
        bail!("{}: no age identity in it", path.display());
    }
    Ok(out)
}

/// The directory a path is in (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
