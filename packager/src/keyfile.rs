//! Key files: `keygen`, loading the signing key (with a warning when others may read it), and
//! loading trusted public keys for `inspect --trust` and `verify --trust`.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use flowpack_shared::bundle::read::TrustedSigner;
use flowpack_shared::keys::{KeyId, SigningKey, VerifyingKey};
use flowpack_shared::names::ContainerPath;

use crate::cli::KeygenArgs;

/// `KEY` plus `.pub`.
fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Creates `path` with `mode` and writes `data`; refuses an existing file unless `force`.
fn write_new(path: &Path, data: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if force {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists already; pass --force to overwrite it",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating {}", path.display()))
        }
    })?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// `flowpack keygen -o KEY [--force]`.
pub fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    let pub_path = pub_path(&a.output);
    if !a.force {
        for p in [&a.output, &pub_path] {
            if fs::symlink_metadata(p).is_ok() {
                bail!(
                    "{} exists already; pass --force to overwrite it",
                    p.display()
                );
            }
        }
    }
    let key = SigningKey::generate().context("generating the key")?;
    let public = key.verifying_key();
    write_new(&a.output, key.to_pem().as_bytes(), 0o600, a.force)?;
    if let Err(e) = write_new(&pub_path, public.to_pem().as_bytes(), 0o644, a.force) {
        // Leave no private key without its public half behind.
        let _ = fs::remove_file(&a.output);
        return Err(e);
    }
    outln!(
        "wrote {} (private, mode 0600) and {}",
        a.output.display(),
        pub_path.display()
    );
    outln!("key id: {}", public.key_id());
    Ok(())
}

/// The most a key file may hold: a PEM key is a few hundred bytes. Without a bound, `-k /dev/zero`
/// or `--trust /dev/urandom` would read until memory runs out.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads a key file of at most [`MAX_KEY_FILE`] bytes as text, with the metadata of the file
/// that was read (not of whatever the path names a moment later).
fn read_key_file(path: &Path) -> anyhow::Result<(zeroize::Zeroizing<String>, fs::Metadata)> {
    let f = fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        bail!("more than {MAX_KEY_FILE} bytes: not a PEM key");
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok((zeroize::Zeroizing::new(text.to_owned()), meta)),
        Err(_) => bail!("not text: not a PEM key"),
    }
}

/// Reads the signing key; warns on stderr when the file is readable by group or others.
pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let ctx = || format!("signing key {}", path.display());
    let (text, meta) = read_key_file(path).with_context(ctx)?;
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        // The commonest slip: `-k KEY.pub` where `flowpack keygen -o KEY` wrote both.
        let private = path
            .to_str()
            .and_then(|p| p.strip_suffix(".pub"))
            .filter(|p| !p.is_empty());
        match private {
            Some(private) => bail!(
                "{} is a public key; -k takes the private key {}",
                crate::text::path(path),
                crate::text::path(Path::new(private))
            ),
            None => bail!(
                "{} is a public key; -k takes the private key (PEM \"BEGIN PRIVATE KEY\", the \
                 file `flowpack keygen -o KEY` wrote as KEY)",
                crate::text::path(path)
            ),
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            errln!(
                "flowpack: warning: signing key {} has mode {mode:04o}; it should be readable by you alone (chmod 600)",
                crate::text::path(path)
            );
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    SigningKey::from_pem(&text).with_context(ctx)
}

/// Trusted signers from public key files, each allowed for every container.
pub fn load_trust(paths: &[PathBuf]) -> anyhow::Result<HashMap<KeyId, TrustedSigner>> {
    let mut out = HashMap::new();
    for p in paths {
        let (text, _) = read_key_file(p).with_context(|| format!("trusted key {}", p.display()))?;
        let key = VerifyingKey::from_pem(&text)
            .with_context(|| format!("trusted key {}", p.display()))?;
        out.insert(
            key.key_id(),
            TrustedSigner {
                key,
                containers: vec![ContainerPath::root()],
            },
        );
    }
    Ok(out)
}
