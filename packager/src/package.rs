//! `package` and `package-credentials`: find and parse the project's records, write the signed
//! bundle atomically (a temporary file in the output's directory, fsync, rename), and report.
//!
//! The bundle itself is made by `flowpack_shared::bundle::write::write_bundle`; this module only
//! gathers inputs and owns the file handling around it.

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use flowpack_shared::bundle::write::{BundleOptions, MappingInput, Written, write_bundle};
use flowpack_shared::bundle::{BundleKind, SecretsState};
use flowpack_shared::model::credential::{Credential, CredentialFile};
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::timefmt::Timestamp;

use crate::cli::{BundleArgs, PackageArgs, PackageCredentialsArgs};
use crate::keyfile::load_signing_key;

const MAPPING_SUFFIX: &str = ".mapping.json";
const CREDENTIAL_SUFFIX: &str = ".credential.json";

/// `flowpack package DIR …`.
pub fn package(a: &PackageArgs) -> anyhow::Result<()> {
    let meta = fs::metadata(&a.dir).with_context(|| format!("project {}", a.dir.display()))?;
    if !meta.is_dir() {
        bail!("project {}: not a directory", a.dir.display());
    }
    let mut files = Vec::new();
    walk(&a.dir, &mut files)?;
    files.sort();
    let mut mappings = Vec::new();
    let mut credential_files = Vec::new();
    for path in &files {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(MAPPING_SUFFIX) {
            let bytes = read(path)?;
            let mapping = Mapping::parse(&path.display().to_string(), &bytes)?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            mappings.push(MappingInput { mapping, dir });
        } else if name.ends_with(CREDENTIAL_SUFFIX) {
            credential_files.push(parse_credential_file(path)?);
        }
    }
    if mappings.is_empty() && credential_files.is_empty() {
        bail!(
            "project {}: no *{MAPPING_SUFFIX} or *{CREDENTIAL_SUFFIX} files found",
            a.dir.display()
        );
    }
    let credentials = resolve_all(&credential_files, a.bundle.env.as_deref())?;
    build(&a.bundle, BundleKind::Deployment, &mappings, &credentials)
}

/// `flowpack package-credentials FILE… …`.
pub fn package_credentials(a: &PackageCredentialsArgs) -> anyhow::Result<()> {
    let files = a
        .files
        .iter()
        .map(|p| parse_credential_file(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let credentials = resolve_all(&files, a.bundle.env.as_deref())?;
    build(&a.bundle, BundleKind::Credentials, &[], &credentials)
}

/// Collects regular files under `dir`; symlinks are skipped, never followed.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        // `DirEntry::file_type` does not follow symlinks.
        let ft = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if ft.is_symlink() {
            eprintln!(
                "flowpack: warning: skipping symlink {} (symlinks are not followed)",
                path.display()
            );
        } else if ft.is_dir() {
            walk(&path, out)?;
        } else if ft.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn parse_credential_file(path: &Path) -> anyhow::Result<CredentialFile> {
    let bytes = zeroize::Zeroizing::new(read(path)?);
    Ok(CredentialFile::parse(&path.display().to_string(), &bytes)?)
}

/// Applies the environment to every record; warns when `--env` names an environment that no
/// record defines (a likely typo that would otherwise pass silently).
fn resolve_all(files: &[CredentialFile], env: Option<&str>) -> anyhow::Result<Vec<Credential>> {
    let credentials = files
        .iter()
        .map(|f| f.resolve(env))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(env) = env
        && files.iter().all(|f| f.environments().is_empty())
    {
        eprintln!(
            "flowpack: warning: no credential defines environments; --env {env} only labels the bundle"
        );
    }
    Ok(credentials)
}

/// Writes the bundle to `a.output` atomically and prints a summary.
fn build(
    a: &BundleArgs,
    kind: BundleKind,
    mappings: &[MappingInput],
    credentials: &[Credential],
) -> anyhow::Result<()> {
    let key = load_signing_key(&a.key)?;
    let created_at = Timestamp::now();
    let opts = BundleOptions {
        kind,
        target_container: a.container.clone(),
        environment: a.env.clone(),
        created_at,
        expires_at: created_at.plus(a.expires),
        seal_to: a.seal_to.clone(),
        allow_plaintext: a.plaintext_secrets,
        level: 6,
    };
    let out = &a.output;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".flowpack-")
        .suffix(".fpk.tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let bar = crate::progress::bytes(0, "packaging");
    let written = write_bundle(
        BufWriter::new(tmp.as_file_mut()),
        &key,
        &opts,
        mappings,
        credentials,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    );
    bar.finish_and_clear();
    let written = written.with_context(|| format!("packaging {}", out.display()))?;
    let plaintext: Vec<&str> = written
        .manifest
        .credentials
        .iter()
        .filter(|c| c.secrets == SecretsState::Plaintext)
        .map(|c| c.name.as_str())
        .collect();
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", out.display()))?;
    // A bundle with secrets in clear stays readable by its owner alone (the temp file's 0600).
    #[cfg(unix)]
    if plaintext.is_empty() {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", out.display()))?;
    // Make the rename durable; a directory that cannot be opened for fsync is not an error.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    if !plaintext.is_empty() {
        eprintln!(
            "flowpack: warning: --plaintext-secrets: the secrets of {} are written IN CLEAR in {}; anyone who can read the file can read them (seal them with --seal-to instead)",
            plaintext.join(", "),
            out.display()
        );
    }
    print_summary(out, &written)
}

fn print_summary(out: &Path, w: &Written) -> anyhow::Result<()> {
    let m = &w.manifest;
    let kind = match m.kind {
        BundleKind::Deployment => "deployment",
        BundleKind::Credentials => "credentials",
    };
    outln!("wrote {} ({} bytes)", out.display(), w.bytes);
    outln!("  bundle id:   {}", m.bundle_id);
    outln!("  kind:        {kind}");
    outln!("  container:   {}", m.target_container);
    if let Some(env) = &m.environment {
        outln!("  environment: {env}");
    }
    outln!("  signer:      {}", m.signer_key_id);
    outln!("  expires:     {}", m.expires_at);
    if let Some(s) = &m.sealing {
        outln!("  sealed to:   {}", s.recipient);
    }
    let mapping_count = m
        .entries
        .iter()
        .filter(|e| e.kind == flowpack_shared::bundle::EntryKind::Mapping)
        .count();
    outln!("  mappings:    {mapping_count}");
    for c in &m.credentials {
        outln!(
            "  credential:  {} ({}), secrets {}",
            c.name,
            c.kind.as_str(),
            c.secrets.as_str()
        );
    }
    Ok(())
}
