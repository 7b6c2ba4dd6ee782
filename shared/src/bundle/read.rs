//! Verifying a bundle: every rule of SPEC §4 "What the receiver accepts", checked before
//! anything is trusted, each failure a distinct [`BundleError`].
//!
//! Three steps, so that the receiver can decide between them (replays, staleness):
//! 1. [`OpenBundle::open`]: the archive's structure, the signature, the signer's trust for the
//!    target container, the manifest's schema, and the archive's entries against the manifest's.
//! 2. [`OpenBundle::check_times`]: expiry and clock skew.
//! 3. [`OpenBundle::read_payload`]: every payload entry streamed in order, sizes and digests
//!    checked as they are read, records parsed by the model rules, mappings' files matched one
//!    to one, sealed values opened. Mapping files go to a caller's sink as a stream; the sink
//!    sees an error before the end of any entry that is not what the manifest says.

use std::collections::HashMap;
use std::io::{self, Read, Seek};

use crate::bundle::error::BundleError;
use crate::bundle::manifest::{BundleKind, EntryPath, FORMAT, Manifest, SecretsState};
use crate::keys::{KeyId, VerifyingKey};
use crate::model::credential::{Credential, SecretValue};
use crate::model::mapping::Mapping;
use crate::names::{ContainerPath, Name, RelPath};
use crate::seal::{DataKey, SealContext, SealingIdentity};
use crate::timefmt::Timestamp;
use crate::zipfmt::{Limits, ZipReader};

/// Largest `manifest.json` read into memory (100,000 entries fit well within it).
const MAX_MANIFEST: u64 = 64 << 20;
/// Largest mapping or credential record read into memory.
const MAX_RECORD: u64 = 1 << 20;

/// A signer key and the container prefixes it may deploy to.
#[derive(Debug, Clone)]
pub struct TrustedSigner {
    /// The public key.
    pub key: VerifyingKey,
    /// Allowed prefixes; `/` allows every container.
    pub containers: Vec<ContainerPath>,
}

/// Finds the trusted signer for a key id.
pub type TrustLookup<'a> = dyn Fn(&KeyId) -> Option<TrustedSigner> + 'a;

/// Receives each mapping file as it is read: (mapping, path, declared size, data).
pub type FileSink<'a> = dyn FnMut(&Name, &RelPath, u64, &mut dyn Read) -> io::Result<()> + 'a;

/// Records read from a bundle's payload.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Mappings, in bundle order.
    pub mappings: Vec<Mapping>,
    /// Credentials, in bundle order; sealed values opened when an identity was given.
    pub credentials: Vec<Credential>,
}

/// A bundle whose structure, signature and manifest have been checked.
pub struct OpenBundle<R: Read + Seek> {
    zip: ZipReader<R>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    /// `None` only for [`OpenBundle::open_unverified`].
    signer: Option<TrustedSigner>,
}

impl<R: Read + Seek> std::fmt::Debug for OpenBundle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenBundle({})", self.manifest.bundle_id)
    }
}

/// Reads the signer key id from a not yet verified manifest, to know which key to verify with.
fn claimed_signer(bytes: &[u8]) -> Result<KeyId, BundleError> {
    #[derive(serde::Deserialize)]
    struct Claim {
        signer_key_id: String,
    }
    let claim: Claim = serde_json::from_slice(bytes)
        .map_err(|e| BundleError::BadManifest(format!("cannot find `signer_key_id`: {e}")))?;
    KeyId::parse(&claim.signer_key_id).ok_or_else(|| {
        BundleError::BadManifest("field `signer_key_id`: expected 16 lowercase hex digits".into())
    })
}

impl<R: Read + Seek> OpenBundle<R> {
    /// Checks the archive's structure, the signature and trust, the manifest, and the entry list.
    pub fn open(
        r: R,
        limits: &Limits,
        trust: &TrustLookup<'_>,
    ) -> Result<OpenBundle<R>, BundleError> {
        OpenBundle::open_inner(r, limits, Some(trust))
    }

    /// Like [`OpenBundle::open`] but **without checking the signature or the signer's trust**:
    /// for `flowpack inspect` without `--trust`, which says so. Nothing read this way may be
    /// applied.
    pub fn open_unverified(r: R, limits: &Limits) -> Result<OpenBundle<R>, BundleError> {
        OpenBundle::open_inner(r, limits, None)
    }

    fn open_inner(
        r: R,
        limits: &Limits,
        trust: Option<&TrustLookup<'_>>,
    ) -> Result<OpenBundle<R>, BundleError> {
        let mut zip = ZipReader::open(r, limits)?;
        let names: Vec<String> = zip.entries().iter().map(|e| e.name.clone()).collect();
        if names.first().map(String::as_str) != Some("manifest.json") {
            return Err(BundleError::EntryOrder(
                "the first entry must be manifest.json".into(),
            ));
        }
        if names.get(1).map(String::as_str) != Some("manifest.sig") {
            return Err(BundleError::EntryOrder(
                "the second entry must be manifest.sig".into(),
            ));
        }
        if zip.entries()[0].size > MAX_MANIFEST {
            return Err(BundleError::SizeLimit(format!(
                "manifest.json is larger than {MAX_MANIFEST} bytes"
            )));
        }
        let sig_size = zip.entries()[1].size;
        if sig_size != 64 {
            return Err(BundleError::BadSignatureFormat(sig_size));
        }
        let manifest_bytes = read_small(&mut zip)?;
        let signature = read_small(&mut zip)?;

        let key_id = claimed_signer(&manifest_bytes)?;
        let signer = match trust {
            Some(trust) => {
                let signer =
                    trust(&key_id).ok_or_else(|| BundleError::UnknownSigner(key_id.to_string()))?;
                if signer.key.key_id() != key_id || !signer.key.verify(&manifest_bytes, &signature)
                {
                    return Err(BundleError::BadSignature(key_id.to_string()));
                }
                Some(signer)
            }
            None => None,
        };
        let manifest = parse_manifest(&manifest_bytes)?;
        if let Some(signer) = &signer
            && !signer
                .containers
                .iter()
                .any(|p| p.covers(&manifest.target_container))
        {
            {
                let allowed: Vec<&str> = signer
                    .containers
                    .iter()
                    .map(ContainerPath::as_str)
                    .collect();
                return Err(BundleError::SignerNotAllowed(
                    key_id.to_string(),
                    manifest.target_container.to_string(),
                    allowed.join(", "),
                ));
            }
        }
        // The archive's payload entries are exactly the manifest's, in order.
        let archive = &names[2..];
        for (i, e) in manifest.entries.iter().enumerate() {
            match archive.get(i) {
                Some(name) if *name == e.path => {}
                _ if !archive.contains(&e.path) => {
                    return Err(BundleError::MissingEntry(e.path.clone()));
                }
                _ => {
                    return Err(BundleError::EntryOrder(format!(
                        "entry {} is at position {} in the manifest but elsewhere in the archive",
                        e.path, i
                    )));
                }
            }
        }
        if let Some(extra) = archive.get(manifest.entries.len()) {
            return Err(BundleError::ExtraEntry(extra.clone()));
        }
        for (e, z) in manifest.entries.iter().zip(&zip.entries()[2..]) {
            if e.size != z.size {
                return Err(BundleError::SizeMismatch(
                    e.path.clone(),
                    format!(
                        "the manifest says {} bytes, its ZIP headers {}",
                        e.size, z.size
                    ),
                ));
            }
        }
        Ok(OpenBundle {
            zip,
            manifest,
            manifest_bytes,
            signer,
        })
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact signed bytes of `manifest.json`.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The signer that verified it; `None` when opened with [`OpenBundle::open_unverified`].
    pub fn signer(&self) -> Option<&TrustedSigner> {
        self.signer.as_ref()
    }

    /// Refuses an expired bundle, or one created more than `skew` after `now`.
    pub fn check_times(&self, now: Timestamp, skew: time::Duration) -> Result<(), BundleError> {
        if now >= self.manifest.expires_at {
            return Err(BundleError::Expired(self.manifest.expires_at.to_string()));
        }
        if self.manifest.created_at > now.plus(skew) {
            return Err(BundleError::NotYetValid(
                self.manifest.created_at.to_string(),
            ));
        }
        Ok(())
    }

    /// Reads and checks the whole payload. Mapping files are streamed to `on_file(mapping, path,
    /// size, data)`; sealed values are opened when `identity` is given.
    pub fn read_payload(
        &mut self,
        identity: Option<&SealingIdentity>,
        on_file: &mut FileSink<'_>,
    ) -> Result<Payload, BundleError> {
        let data_key = self.data_key(identity)?;
        let m = &self.manifest;
        let mut mappings: Vec<Mapping> = Vec::new();
        let mut credentials: Vec<Credential> = Vec::new();
        // Files the current mapping still expects, in order.
        let mut expected: std::collections::VecDeque<RelPath> = Default::default();
        let mut current: Option<Name> = None;
        let summaries: HashMap<&str, _> =
            m.credentials.iter().map(|c| (c.name.as_str(), c)).collect();
        for me in &m.entries {
            let path = EntryPath::parse(&me.path).ok_or_else(|| {
                BundleError::BadManifest(format!(
                    "entry {} does not match the bundle layout",
                    me.path
                ))
            })?;
            if let (Some(name), false, Some(missing)) = (
                &current,
                matches!(path, EntryPath::MappingFile(..)),
                expected.front(),
            ) {
                return Err(BundleError::MappingFilesMismatch(
                    name.to_string(),
                    format!("file {missing} is listed but has no entry"),
                ));
            }
            let mut reader = self
                .zip
                .next_entry()?
                .ok_or_else(|| BundleError::MissingEntry(me.path.clone()))?;
            match &path {
                EntryPath::Mapping(name) => {
                    if !credentials.is_empty() {
                        return Err(BundleError::EntryOrder(format!(
                            "mapping {name} comes after credentials; mappings come first"
                        )));
                    }
                    let bytes = read_record(&mut reader, &me.path)?;
                    let mapping = Mapping::parse(&me.path, &bytes)
                        .map_err(|e| BundleError::BadRecord(e.to_string()))?;
                    if mapping.name != *name {
                        return Err(BundleError::BadRecord(format!(
                            "{}: field `name`: `{}` does not match the entry's directory",
                            me.path, mapping.name
                        )));
                    }
                    expected = mapping.files.iter().cloned().collect();
                    current = Some(name.clone());
                    check_digest(reader, me)?;
                    mappings.push(mapping);
                }
                EntryPath::MappingFile(name, file) => {
                    if current.as_ref() != Some(name) || expected.front() != Some(file) {
                        return Err(BundleError::MappingFilesMismatch(
                            name.to_string(),
                            format!("entry {} is not the next file its mapping lists", me.path),
                        ));
                    }
                    expected.pop_front();
                    on_file(name, file, me.size, &mut reader).map_err(BundleError::from_io)?;
                    check_digest(reader, me)?;
                }
                EntryPath::Credential(name) => {
                    current = None;
                    let bytes = zeroize::Zeroizing::new(read_record(&mut reader, &me.path)?);
                    check_digest(reader, me)?;
                    let mut c = Credential::from_bundle_entry(&me.path, &bytes)
                        .map_err(|e| BundleError::BadRecord(e.to_string()))?;
                    if c.name != *name {
                        return Err(BundleError::BadRecord(format!(
                            "{}: field `name`: `{}` does not match the entry's name",
                            me.path, c.name
                        )));
                    }
                    let summary = summaries.get(name.as_str()).ok_or_else(|| {
                        BundleError::BadRecord(format!(
                            "credential {name} is not listed in the manifest's credentials"
                        ))
                    })?;
                    if summary.kind != c.kind {
                        return Err(BundleError::BadRecord(format!(
                            "{}: field `type`: the manifest says {}",
                            me.path,
                            summary.kind.as_str()
                        )));
                    }
                    check_secrets_state(&c, summary.secrets, &me.path)?;
                    self.open_sealed(&mut c, data_key.as_ref())?;
                    credentials.push(c);
                }
            }
        }
        if let (Some(name), Some(missing)) = (&current, expected.front()) {
            return Err(BundleError::MappingFilesMismatch(
                name.to_string(),
                format!("file {missing} is listed but has no entry"),
            ));
        }
        if credentials.len() != m.credentials.len() {
            return Err(BundleError::BadRecord(
                "the manifest lists credentials the bundle does not carry".into(),
            ));
        }
        crate::model::check_project(
            "bundle",
            m.kind == BundleKind::Credentials,
            &mappings.iter().collect::<Vec<_>>(),
            &credentials.iter().collect::<Vec<_>>(),
        )
        .map_err(|e| BundleError::BadRecord(e.to_string()))?;
        Ok(Payload {
            mappings,
            credentials,
        })
    }

    fn data_key(&self, identity: Option<&SealingIdentity>) -> Result<Option<DataKey>, BundleError> {
        let (Some(sealing), Some(identity)) = (&self.manifest.sealing, identity) else {
            return Ok(None);
        };
        let ours = identity.recipient().to_string();
        if sealing.recipient != ours {
            return Err(BundleError::SealRecipientMismatch(
                sealing.recipient.clone(),
                ours,
            ));
        }
        DataKey::unwrap(&sealing.wrapped_key, identity)
            .map(Some)
            .map_err(|e| BundleError::SealOpenFailed(format!("sealing.wrapped_key: {e}")))
    }

    fn open_sealed(&self, c: &mut Credential, key: Option<&DataKey>) -> Result<(), BundleError> {
        for (field, value) in c.secrets.iter_mut() {
            let SecretValue::Sealed(b64) = value else {
                continue;
            };
            if self.manifest.sealing.is_none() {
                return Err(BundleError::SealOpenFailed(format!(
                    "credential {}: field `{field}` is sealed but the bundle has no sealing block",
                    c.name
                )));
            }
            let Some(key) = key else { continue };
            let ctx = SealContext {
                bundle_id: self.manifest.bundle_id.as_str(),
                container: self.manifest.target_container.as_str(),
                credential: c.name.as_str(),
                field,
            };
            let plain = key.open(&ctx, b64).map_err(|e| {
                BundleError::SealOpenFailed(format!("credential {}: field `{field}`: {e}", c.name))
            })?;
            *value = SecretValue::Plain(plain);
        }
        Ok(())
    }
}

fn check_secrets_state(
    c: &Credential,
    state: SecretsState,
    origin: &str,
) -> Result<(), BundleError> {
    let sealed = c
        .secrets
        .values()
        .filter(|v| matches!(v, SecretValue::Sealed(_)))
        .count();
    let plain = c.secrets.len() - sealed;
    let ok = match state {
        SecretsState::Omitted | SecretsState::None => c.secrets.is_empty(),
        SecretsState::Sealed => sealed > 0 && plain == 0,
        SecretsState::Plaintext => plain > 0 && sealed == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(BundleError::BadRecord(format!(
            "{origin}: its sensitive fields do not match the manifest's `secrets: {}`",
            state.as_str()
        )))
    }
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "target_container" {
            BundleError::BadContainer(e.inner().to_string())
        } else {
            BundleError::BadManifest(format!("field `{path}`: {}", e.inner()))
        }
    })?;
    if manifest.format != FORMAT {
        return Err(BundleError::BadManifest(format!(
            "field `format`: expected {FORMAT:?}"
        )));
    }
    if manifest.kind == BundleKind::Credentials
        && manifest
            .entries
            .iter()
            .any(|e| e.kind != crate::bundle::EntryKind::Credential)
    {
        return Err(BundleError::BadRecord(
            "a standalone credential bundle (kind: credentials) can only carry credentials".into(),
        ));
    }
    for e in &manifest.entries {
        match EntryPath::parse(&e.path) {
            Some(p) if p.kind() == e.kind => {}
            _ => {
                return Err(BundleError::BadManifest(format!(
                    "entry {} does not match the bundle layout for kind {:?}",
                    e.path, e.kind
                )));
            }
        }
    }
    if let Some(s) = &manifest.sealing {
        crate::seal::SealingRecipient::parse(&s.recipient)
            .map_err(|e| BundleError::BadManifest(format!("field `sealing.recipient`: {e}")))?;
        // What can be checked without the receiver's identity is checked here, so that
        // `flowpack verify` refuses a malformed wrapped key too.
        DataKey::check_wrapped(&s.wrapped_key)
            .map_err(|e| BundleError::SealOpenFailed(format!("sealing.wrapped_key: {e}")))?;
    }
    Ok(manifest)
}

fn read_small<R: Read + Seek>(zip: &mut ZipReader<R>) -> Result<Vec<u8>, BundleError> {
    let mut r = zip
        .next_entry()?
        .ok_or_else(|| BundleError::NotAZip("entry missing".into()))?;
    let mut out = Vec::with_capacity(r.entry().size as usize);
    r.read_to_end(&mut out).map_err(BundleError::from_io)?;
    Ok(out)
}

fn read_record<R: Read>(
    r: &mut crate::zipfmt::EntryReader<'_, R>,
    path: &str,
) -> Result<Vec<u8>, BundleError> {
    if r.entry().size > MAX_RECORD {
        return Err(BundleError::SizeLimit(format!(
            "entry {path} is larger than {MAX_RECORD} bytes, the limit for a record"
        )));
    }
    let mut out = Vec::with_capacity(r.entry().size as usize);
    r.read_to_end(&mut out).map_err(BundleError::from_io)?;
    Ok(out)
}

fn check_digest<R: Read>(
    mut r: crate::zipfmt::EntryReader<'_, R>,
    me: &crate::bundle::manifest::ManifestEntry,
) -> Result<(), BundleError> {
    // Drain whatever a sink left unread, so the digest covers the whole entry.
    io::copy(&mut r, &mut io::sink()).map_err(BundleError::from_io)?;
    let (size, sha) = r.digest();
    if size != me.size {
        return Err(BundleError::SizeMismatch(
            me.path.clone(),
            format!("{size} bytes, the manifest says {}", me.size),
        ));
    }
    if sha != me.sha256.0 {
        return Err(BundleError::DigestMismatch(me.path.clone()));
    }
    Ok(())
}
