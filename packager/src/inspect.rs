//! `inspect` and `verify`: read a bundle with the shared verifier and describe it.
//!
//! Neither ever prints a secret value: credentials are described by field *names* and the state
//! of their secrets, even in a plaintext bundle. Refusals carry the verifier's stable code.
//!
//! Everything a bundle says is untrusted, signed or not: each string taken from it is printed
//! through `text::Escaped` (human output) or `text::json_safe` (`--json`), so no description,
//! environment, file name or error detail can move the cursor or forge a line such as
//! "signature verified".

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek as _};
use std::path::Path;

use anyhow::Context as _;
use flowpack_shared::bundle::read::{OpenBundle, Payload};
use flowpack_shared::bundle::{BundleError, BundleKind, Manifest, SecretsState};
use flowpack_shared::model::mapping::{Mapping, ParamType};
use flowpack_shared::names::{Name, RelPath};
use flowpack_shared::timefmt::Timestamp;
use flowpack_shared::zipfmt::Limits;
use serde_json::{Value, json};

use crate::cli::{InspectArgs, VerifyArgs};
use crate::keyfile::load_trust;
use crate::text::{Escaped, json_safe, path as shown};

/// How far in the future `created_at` may be (as the receiver allows: docs/FORMAT.md).
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// A bundle the verifier refused, shown as `refused (<code>): <detail>`.
#[derive(Debug)]
pub struct Refused {
    /// The verifier's stable code, e.g. `digest-mismatch`.
    pub code: &'static str,
    /// What is wrong; never contains a secret.
    pub detail: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused ({}): {}", self.code, self.detail)
    }
}

impl std::error::Error for Refused {}

impl From<BundleError> for Refused {
    fn from(e: BundleError) -> Self {
        Refused {
            code: e.code(),
            detail: e.to_string(),
        }
    }
}

type Reader = BufReader<File>;

/// True for `-`: the bundle comes on standard input.
fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// How messages name the bundle.
fn label(path: &Path) -> String {
    if is_stdin(path) {
        "(standard input)".to_owned()
    } else {
        shown(path)
    }
}

/// The bundle file, or for `-` standard input copied into an unnamed temporary file (the
/// reader seeks), at most the largest bundle a receiver takes.
fn open_input(path: &Path) -> anyhow::Result<File> {
    if !is_stdin(path) {
        return File::open(path).with_context(|| format!("bundle {}", shown(path)));
    }
    if io::IsTerminal::is_terminal(&io::stdin()) {
        anyhow::bail!("-: standard input is a terminal; pipe a bundle into it (… - < B.fpk)");
    }
    let max = Limits::default().max_bundle_size;
    let mut tmp = tempfile::tempfile().context("creating a temporary file for standard input")?;
    let copied = io::copy(&mut io::stdin().lock().take(max + 1), &mut tmp)
        .context("reading the bundle from standard input")?;
    if copied > max {
        anyhow::bail!(
            "the bundle on standard input is larger than {max} bytes, the largest bundle there is"
        );
    }
    if copied == 0 {
        anyhow::bail!("-: standard input is empty; pipe a bundle into it (… - < B.fpk)");
    }
    tmp.rewind()
        .context("reading the bundle from standard input")?;
    Ok(tmp)
}

/// A reader over `f` from its start (a clone shares its offset, so it is rewound).
fn reader(f: &File) -> anyhow::Result<Reader> {
    let mut f = f.try_clone().context("reading the bundle")?;
    f.rewind().context("reading the bundle")?;
    Ok(BufReader::new(f))
}

fn kind_name(kind: BundleKind) -> &'static str {
    match kind {
        BundleKind::Deployment => "deployment",
        BundleKind::Credentials => "credentials",
    }
}

fn param_type(t: ParamType) -> String {
    match serde_json::to_value(t) {
        Ok(Value::String(s)) => s,
        _ => format!("{t:?}").to_lowercase(),
    }
}

/// A mapping file seen in the payload: mapping, path, size.
type FileSeen = (Name, RelPath, u64);

/// Reads the whole payload, discarding mapping files' content but noting their sizes.
fn read_payload(b: &mut OpenBundle<Reader>) -> Result<(Payload, Vec<FileSeen>), BundleError> {
    let mut files = Vec::new();
    let payload = b.read_payload(
        None,
        &mut |m: &Name, p: &RelPath, size, r: &mut dyn Read| {
            io::copy(r, &mut io::sink())?;
            files.push((m.clone(), p.clone(), size));
            Ok(())
        },
    )?;
    Ok((payload, files))
}

/// `flowpack inspect BUNDLE [--trust PUB…] [--json]`.
pub fn inspect(a: &InspectArgs) -> anyhow::Result<()> {
    let ctx = || format!("bundle {}", label(&a.bundle));
    let r = BufReader::new(open_input(&a.bundle)?);
    let limits = Limits::default();
    let mut b = if a.trust.is_empty() {
        OpenBundle::open_unverified(r, &limits)
            .map_err(Refused::from)
            .with_context(ctx)?
    } else {
        let trust = load_trust(&a.trust)?;
        OpenBundle::open(r, &limits, &|id| trust.get(id).cloned())
            .map_err(Refused::from)
            .with_context(ctx)?
    };
    let verified = b.signer().is_some();
    let (payload, files) = read_payload(&mut b)
        .map_err(Refused::from)
        .with_context(ctx)?;
    let time_note = b
        .check_times(Timestamp::now(), CLOCK_SKEW)
        .err()
        .map(|e| e.to_string());
    let m = b.manifest();
    if a.json {
        let doc = inspect_json(m, verified, time_note.as_deref(), &payload, &files);
        outln!("{}", json_safe(&serde_json::to_string_pretty(&doc)?));
    } else {
        print_inspect(
            &a.bundle,
            m,
            verified,
            time_note.as_deref(),
            &payload,
            &files,
        )?;
    }
    Ok(())
}

fn credential_fields(payload: &Payload, name: &Name) -> (Vec<String>, Vec<String>) {
    payload
        .credentials
        .iter()
        .find(|c| c.name == *name)
        .map(|c| {
            let mut public: Vec<String> = Vec::new();
            if c.description.is_some() {
                public.push("description".into());
            }
            public.extend(c.public.keys().map(|k| (*k).to_owned()));
            // Names only: the values are never looked at here.
            let secret = c.secrets.keys().map(|k| (*k).to_owned()).collect();
            (public, secret)
        })
        .unwrap_or_default()
}

fn mapping_files<'a>(files: &'a [FileSeen], m: &'a Mapping) -> impl Iterator<Item = &'a FileSeen> {
    files.iter().filter(move |(n, _, _)| *n == m.name)
}

fn inspect_json(
    m: &Manifest,
    verified: bool,
    time_note: Option<&str>,
    payload: &Payload,
    files: &[FileSeen],
) -> Value {
    let mappings: Vec<Value> = payload
        .mappings
        .iter()
        .map(|mp| {
            let params: Vec<Value> = mp
                .parameters
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name.as_str(),
                        "type": param_type(p.kind),
                        "required": p.required,
                        "credential": p.credential.as_ref().map(Name::as_str),
                        "external": p.external,
                    })
                })
                .collect();
            let fs: Vec<Value> = mapping_files(files, mp)
                .map(|(_, p, size)| json!({"path": p.as_str(), "size": size}))
                .collect();
            json!({
                "name": mp.name.as_str(),
                "description": mp.description,
                "parameters": params,
                "files": fs,
            })
        })
        .collect();
    let credentials: Vec<Value> = m
        .credentials
        .iter()
        .map(|c| {
            let (public, secret) = credential_fields(payload, &c.name);
            json!({
                "name": c.name.as_str(),
                "type": c.kind.as_str(),
                "fields": public,
                "sensitive_fields": secret,
                "secrets": c.secrets.as_str(),
            })
        })
        .collect();
    json!({
        "format": m.format,
        "bundle_id": m.bundle_id.as_str(),
        "kind": kind_name(m.kind),
        "target_container": m.target_container.as_str(),
        "environment": m.environment,
        "created_at": m.created_at.to_string(),
        "expires_at": m.expires_at.to_string(),
        "time_problem": time_note,
        "signer_key_id": m.signer_key_id.to_string(),
        "signature_verified": verified,
        "sealed_to": m.sealing.as_ref().map(|s| s.recipient.as_str()),
        "also_sealed_to": m.sealing.as_ref().map_or(&[][..], |s| &s.other_recipients[..]),
        "mappings": mappings,
        "credentials": credentials,
    })
}

fn print_inspect(
    path: &Path,
    m: &Manifest,
    verified: bool,
    time_note: Option<&str>,
    payload: &Payload,
    files: &[FileSeen],
) -> anyhow::Result<()> {
    // Typed values (ids, key ids, timestamps, checked names and containers) cannot hold a
    // control character; they are escaped all the same where they are text, at no cost.
    let e = |s: &str| Escaped(s).to_string();
    outln!("bundle {}", label(path));
    outln!("  format:      {}", e(&m.format));
    outln!("  bundle id:   {}", e(m.bundle_id.as_str()));
    outln!("  kind:        {}", kind_name(m.kind));
    outln!("  container:   {}", e(m.target_container.as_str()));
    outln!(
        "  environment: {}",
        m.environment
            .as_deref()
            .map_or_else(|| "(none)".to_owned(), e)
    );
    outln!("  created:     {}", m.created_at);
    outln!("  expires:     {}", m.expires_at);
    if let Some(note) = time_note {
        outln!("  WARNING:     {}", e(note));
    }
    if verified {
        outln!(
            "  signer:      {} (signature verified with a trusted key)",
            m.signer_key_id
        );
    } else {
        outln!(
            "  signer:      {} (signature NOT verified: give --trust PUB to verify)",
            m.signer_key_id
        );
    }
    match &m.sealing {
        Some(s) => {
            let all: Vec<String> = s.recipients().map(e).collect();
            outln!("  sealed to:   {}", all.join(", "));
        }
        None => outln!("  sealed to:   (not sealed)"),
    }
    for mp in &payload.mappings {
        match &mp.description {
            Some(d) => outln!("mapping {}: {}", e(mp.name.as_str()), e(d)),
            None => outln!("mapping {}", e(mp.name.as_str())),
        }
        outln!("  parameters:");
        for p in &mp.parameters {
            let mut line = format!("    {} ({}", e(p.name.as_str()), e(&param_type(p.kind)));
            if p.required {
                line.push_str(", required");
            }
            line.push(')');
            if let Some(c) = &p.credential {
                line.push_str(&format!(" -> credential {}", e(c.as_str())));
            } else if p.external {
                line.push_str(" -> external (supplied on the server)");
            }
            outln!("{line}");
        }
        outln!("  files:");
        for (_, p, size) in mapping_files(files, mp) {
            outln!("    {} ({size} bytes)", e(p.as_str()));
        }
    }
    for c in &m.credentials {
        let (public, secret) = credential_fields(payload, &c.name);
        outln!("credential {} ({})", e(c.name.as_str()), c.kind.as_str());
        let list = |v: &[String]| {
            if v.is_empty() {
                "(none)".to_owned()
            } else {
                e(&v.join(", "))
            }
        };
        outln!("  fields:      {}", list(&public));
        let state = match c.secrets {
            SecretsState::Sealed => "sealed to the receiver",
            SecretsState::Plaintext => "PLAINTEXT (in clear in this bundle)",
            SecretsState::Omitted => "omitted (include_in_deployment is false)",
            SecretsState::None => {
                "none (include_in_deployment is set, no sensitive field filled in)"
            }
        };
        outln!("  secrets:     {state}");
        if !secret.is_empty() {
            outln!("  sensitive:   {}", e(&secret.join(", ")));
        }
    }
    Ok(())
}

/// `flowpack verify BUNDLE --trust PUB… [--json]`.
pub fn verify(a: &VerifyArgs) -> anyhow::Result<()> {
    let trust = load_trust(&a.trust)?;
    let file = open_input(&a.bundle)?;
    let r = reader(&file)?;
    let result = (|| -> Result<Manifest, BundleError> {
        let mut b = OpenBundle::open(r, &Limits::default(), &|id| trust.get(id).cloned())?;
        b.check_times(Timestamp::now(), CLOCK_SKEW)?;
        read_payload(&mut b)?;
        Ok(b.manifest().clone())
    })();
    match result {
        Ok(m) => {
            if a.json {
                let doc = json!({"valid": true, "code": null, "detail": null,
                                 "bundle_id": m.bundle_id.as_str()});
                outln!("{}", json_safe(&doc.to_string()));
            } else {
                outln!(
                    "valid: bundle {} ({} for {}), signed by {}, expires {}",
                    Escaped(m.bundle_id.as_str()),
                    kind_name(m.kind),
                    Escaped(m.target_container.as_str()),
                    m.signer_key_id,
                    m.expires_at
                );
            }
            Ok(())
        }
        Err(e) => {
            let refused = Refused::from(e);
            if a.json {
                // The id, when the manifest can be read at all; it is not trusted.
                let id = reader(&file)
                    .ok()
                    .and_then(|r| OpenBundle::open_unverified(r, &Limits::default()).ok())
                    .map(|b| b.manifest().bundle_id.to_string());
                let doc = json!({"valid": false, "code": refused.code,
                                 "detail": refused.detail, "bundle_id": id});
                outln!("{}", json_safe(&doc.to_string()));
            }
            Err(anyhow::Error::new(refused).context(format!("bundle {}", label(&a.bundle))))
        }
    }
}
