//! `package` and `package-credentials`: find and parse the project's records, write the signed
//! bundle atomically (a temporary file in the output's directory, fsync, rename), and report.
//!
//! The bundle itself is made by `flowpack_shared::bundle::write::write_bundle_with`; this module
//! only gathers inputs and owns the file handling around it. Everything below the project
//! directory, the mappings' files included, is read through [`crate::project::Project`], which
//! never follows a symbolic link.

use std::fs;
use std::io::{BufWriter, IsTerminal as _, Read as _, Seek as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use flowpack_shared::bundle::write::{
    BundleOptions, MappingInput, OpenFile, Written, open_regular_file, write_bundle_with,
};
use flowpack_shared::bundle::{BundleKind, SecretsState};
use flowpack_shared::model::credential::{Credential, CredentialFile};
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::timefmt::Timestamp;

use crate::cli::{BundleArgs, PackageArgs, PackageCredentialsArgs, UsageError};
use crate::keyfile::load_signing_key;
use crate::project::{Project, open_named_file};
use crate::text::{Escaped, path as shown};

const MAPPING_SUFFIX: &str = ".mapping.json";
const CREDENTIAL_SUFFIX: &str = ".credential.json";

/// `flowpack package DIR …`.
///
/// A symbolic link anywhere below DIR (to a file or a directory, dangling or looping) refuses
/// the whole project, naming the link: see [`crate::project`] for what that guarantees.
pub fn package(a: &PackageArgs) -> anyhow::Result<()> {
    let project = Project::open(&a.dir)?;
    let files = project
        .files()
        .with_context(|| format!("project {}", shown(&a.dir)))?;
    let mut mappings = Vec::new();
    let mut credential_files = Vec::new();
    for rel in &files {
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let path = project.root().join(rel);
        if name.ends_with(MAPPING_SUFFIX) {
            let bytes = project.read(rel)?;
            let mapping = Mapping::parse(&shown(&path), &bytes)?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            mappings.push(MappingInput { mapping, dir });
        } else if name.ends_with(CREDENTIAL_SUFFIX) {
            let bytes = zeroize::Zeroizing::new(project.read(rel)?);
            credential_files.push(CredentialFile::parse(&shown(&path), &bytes)?);
        }
    }
    if mappings.is_empty() && credential_files.is_empty() {
        bail!(
            "project {}: no *{MAPPING_SUFFIX} or *{CREDENTIAL_SUFFIX} files found",
            shown(&a.dir)
        );
    }
    let credentials = resolve_all(&credential_files, a.bundle.env.as_deref())?;
    let open = project.into_opener();
    build(
        &a.bundle,
        BundleKind::Deployment,
        &mappings,
        &credentials,
        &open,
    )
}

/// `flowpack package-credentials FILE… …`.
pub fn package_credentials(a: &PackageCredentialsArgs) -> anyhow::Result<()> {
    let files = a
        .files
        .iter()
        .map(|p| parse_credential_file(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let credentials = resolve_all(&files, a.bundle.env.as_deref())?;
    // No mappings, so no mapping file is ever opened.
    build(
        &a.bundle,
        BundleKind::Credentials,
        &[],
        &credentials,
        &open_regular_file,
    )
}

/// Reads a credential file named on the command line: not through a symbolic link as its last
/// component (see [`open_named_file`]).
fn parse_credential_file(path: &Path) -> anyhow::Result<CredentialFile> {
    let ctx = || format!("reading {}", shown(path));
    let mut f = open_named_file(path).with_context(ctx)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes).with_context(ctx)?;
    Ok(CredentialFile::parse(&shown(path), &bytes)?)
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
        errln!(
            "flowpack: warning: no credential defines environments; --env {} only labels the bundle",
            Escaped(env)
        );
    }
    Ok(credentials)
}

/// Most receivers one bundle may be sealed to: each adds an age stanza to the wrapped key,
/// which a receiver reads up to 4 KiB.
const MAX_RECIPIENTS: usize = 20;

/// True when `-o -`: the bundle goes to standard output.
fn to_stdout(a: &BundleArgs) -> bool {
    a.output.as_os_str() == "-"
}

/// Refuses `-o -` when standard output is a terminal (a bundle is binary), before any work.
fn check_output(a: &BundleArgs) -> anyhow::Result<()> {
    if to_stdout(a) && std::io::stdout().is_terminal() {
        bail!(
            "-o -: standard output is a terminal, and a bundle is binary; redirect it \
             (-o - > OUT.fpk, or pipe it to the next command) or write a file with -o OUT.fpk"
        );
    }
    Ok(())
}

/// Writes the bundle to `a.output` atomically (or, with `-o -`, whole to standard output) and
/// prints a summary (on standard error when the bundle went to standard output).
fn build(
    a: &BundleArgs,
    kind: BundleKind,
    mappings: &[MappingInput],
    credentials: &[Credential],
    open: &OpenFile,
) -> anyhow::Result<()> {
    check_output(a)?;
    let key = load_signing_key(&a.key)?;
    let seal_to = match &a.seal_to_server {
        Some(server) => {
            let r = crate::client::fetch_recipient(server, a.ca_cert.as_deref())?;
            errln!("flowpack: sealing to {r} (from {})", Escaped(server));
            vec![r]
        }
        None => a.seal_to.clone(),
    };
    if seal_to.len() > MAX_RECIPIENTS {
        return Err(UsageError(format!(
            "invalid value for '--seal-to <RECIPIENT>': at most {MAX_RECIPIENTS} recipients (given {}): \
             a receiver opens a wrapped key of up to 4 KiB, about 25 stanzas",
            seal_to.len()
        ))
        .into());
    }
    let created_at = Timestamp::now();
    // `--expires` is at most ten years, so this fails only on a clock near the year 9999.
    let expires_at = created_at.checked_plus(a.expires).ok_or_else(|| {
        UsageError(format!(
            "invalid value for '--expires <DURATION>': the bundle would expire after \
             9999-12-31 (now is {created_at})"
        ))
    })?;
    let opts = BundleOptions {
        kind,
        target_container: a.container.clone(),
        environment: a.env.clone(),
        created_at,
        expires_at,
        seal_to,
        allow_plaintext: a.plaintext_secrets,
        level: 6,
    };
    if to_stdout(a) {
        return build_to_stdout(&key, &opts, mappings, credentials, open);
    }
    let out = &a.output;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".flowpack-")
        .suffix(".fpk.tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", shown(dir)))?;
    let written = write_with_progress(tmp.as_file_mut(), &key, &opts, mappings, credentials, open)
        .with_context(|| format!("packaging {}", shown(out)))?;
    let plaintext = plaintext_names(&written);
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", shown(out)))?;
    // A bundle with secrets in clear stays readable by its owner alone (the temp file's 0600).
    #[cfg(unix)]
    if plaintext.is_empty() {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .with_context(|| format!("writing {}", shown(out)))?;
    }
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", shown(out)))?;
    // Make the rename durable; a directory that cannot be opened for fsync is not an error.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    warn_plaintext(&plaintext, &shown(out));
    for line in summary(&shown(out), &written) {
        outln!("{line}");
    }
    Ok(())
}

/// `-o -`: the bundle is made whole in an unnamed temporary file (the writer seeks, and a
/// failure must put nothing on standard output), then copied to standard output; the summary
/// goes to standard error.
fn build_to_stdout(
    key: &flowpack_shared::keys::SigningKey,
    opts: &BundleOptions,
    mappings: &[MappingInput],
    credentials: &[Credential],
    open: &OpenFile,
) -> anyhow::Result<()> {
    // Unnamed (O_TMPFILE or unlinked at once) and 0600: secrets in clear are never in a file
    // anyone else could open, and nothing is left behind.
    let mut tmp = tempfile::tempfile().context("creating a temporary file")?;
    let written = write_with_progress(&mut tmp, key, opts, mappings, credentials, open)
        .context("packaging to standard output")?;
    tmp.rewind().context("reading the bundle back")?;
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut tmp, &mut out)
        .and_then(|_| out.flush())
        .context("writing the bundle to standard output")?;
    warn_plaintext(&plaintext_names(&written), "standard output");
    for line in summary("standard output", &written) {
        errln!("{line}");
    }
    Ok(())
}

/// Writes the bundle into `file` with a progress bar.
fn write_with_progress(
    file: &mut fs::File,
    key: &flowpack_shared::keys::SigningKey,
    opts: &BundleOptions,
    mappings: &[MappingInput],
    credentials: &[Credential],
    open: &OpenFile,
) -> anyhow::Result<Written> {
    let bar = crate::progress::bytes(0, "packaging");
    let written = write_bundle_with(
        BufWriter::new(file),
        key,
        opts,
        mappings,
        credentials,
        open,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    );
    bar.finish_and_clear();
    Ok(written?)
}

/// The credentials whose secrets the bundle holds in clear.
fn plaintext_names(written: &Written) -> Vec<&str> {
    written
        .manifest
        .credentials
        .iter()
        .filter(|c| c.secrets == SecretsState::Plaintext)
        .map(|c| c.name.as_str())
        .collect()
}

fn warn_plaintext(plaintext: &[&str], out: &str) {
    if !plaintext.is_empty() {
        errln!(
            "flowpack: warning: --plaintext-secrets: the secrets of {} are written IN CLEAR in {}; anyone who can read the file can read them (seal them with --seal-to instead)",
            plaintext.join(", "),
            out
        );
    }
}

/// The lines that say what was written to `out`.
fn summary(out: &str, w: &Written) -> Vec<String> {
    let m = &w.manifest;
    let kind = match m.kind {
        BundleKind::Deployment => "deployment",
        BundleKind::Credentials => "credentials",
    };
    let mut lines = vec![
        format!("wrote {out} ({} bytes)", w.bytes),
        format!("  bundle id:   {}", m.bundle_id),
        format!("  kind:        {kind}"),
        format!("  container:   {}", m.target_container),
    ];
    if let Some(env) = &m.environment {
        lines.push(format!("  environment: {}", Escaped(env)));
    }
    lines.push(format!("  signer:      {}", m.signer_key_id));
    lines.push(format!("  expires:     {}", m.expires_at));
    if let Some(s) = &m.sealing {
        lines.push(format!(
            "  sealed to:   {}",
            s.recipients().collect::<Vec<_>>().join(", ")
        ));
    }
    let mapping_count = m
        .entries
        .iter()
        .filter(|e| e.kind == flowpack_shared::bundle::EntryKind::Mapping)
        .count();
    lines.push(format!("  mappings:    {mapping_count}"));
    for c in &m.credentials {
        lines.push(format!(
            "  credential:  {} ({}), secrets {}",
            c.name,
            c.kind.as_str(),
            c.secrets.as_str()
        ));
    }
    lines
}
