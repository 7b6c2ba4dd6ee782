//! Verifying a bundle: every rule of what a receiver accepts (docs/FORMAT.md), checked before
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
use crate::model::credential::{Credential, CredentialType, SecretValue};
use crate::model::mapping::Mapping;
use crate::names::{ContainerPath, Name, RelPath};
use crate::seal::{DataKey, SealContext, SealingIdentity};
use crate::timefmt::Timestamp;
use crate::zipfmt::{Entry, Limits, ZipError, ZipReader};

/// Largest `manifest.json`, inflated, that is read: a larger one is refused on its declared
/// size, before a byte of it is inflated. Its bytes are kept once, for the signature (Ed25519
/// verifies a whole message), so this bounds the memory one bundle's manifest takes with the
/// records parsed from it. 100,000 entries take about 15 MiB.
pub const MAX_MANIFEST: u64 = 32 << 20;
/// Longest string (or object key) in `manifest.json`, in bytes: far above any a bundle
/// carries (entry names are at most 1,024 bytes), and low enough that the parser's buffer for
/// one string stays small.
pub const MAX_MANIFEST_STRING: usize = 64 << 10;
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

/// Decides, for each mapping file in bundle order and before it is read, given its mapping,
/// path and declared size: `Ok(true)` to have it only checked, `Ok(false)` to hand it to the
/// sink, an error to refuse the bundle.
pub type Skip<'a> = dyn FnMut(&Name, &RelPath, u64) -> io::Result<bool> + 'a;

/// What [`OpenBundle::stream_payload_ahead`] needs to check mapping files on other threads.
pub struct Ahead<'a, R> {
    /// Which mapping files are only checked.
    pub skip: &'a mut Skip<'a>,
    /// Opens another reader over the same bundle bytes, from its start; called once on each
    /// checking thread.
    pub reopen: &'a (dyn Fn() -> io::Result<R> + Sync),
}

impl<R> std::fmt::Debug for Ahead<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ahead")
    }
}

/// A mapping file handed to a checking thread: what the manifest lists for it, and where its
/// data is.
struct Check {
    index: usize,
    entry: Entry,
    start: u64,
    listed: crate::bundle::manifest::ManifestEntry,
}

/// Compressed bytes of mapping files handed over at once: threads wake each other once per
/// run, not once per small file, and a run's files lie together in the archive.
const CHECK_RUN_BYTES: u64 = 512 << 10;
/// Files handed over at once, at most.
const CHECK_RUN_FILES: usize = 64;
/// The read buffer of a checking thread.
const CHECK_READ_BUFFER: usize = 64 << 10;

/// The first bad entry the checking threads found, by its index in the manifest.
type FirstBad = std::sync::Mutex<Option<(usize, BundleError)>>;

/// Checking threads, started when the first file is handed over, fed runs of files through a
/// bounded queue (so a slow check holds back the reading thread, not memory).
struct Checks<'scope, 'env, R> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    reopen: &'env (dyn Fn() -> io::Result<R> + Sync),
    send: Option<std::sync::mpsc::SyncSender<Vec<Check>>>,
    threads: Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
    run: Vec<Check>,
    run_bytes: u64,
    bad: std::sync::Arc<FirstBad>,
    /// Set once handing over failed or a checking thread panicked.
    stopped: bool,
}

impl<'scope, 'env, R: Read + Seek + 'env> Checks<'scope, 'env, R> {
    fn new(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        reopen: &'env (dyn Fn() -> io::Result<R> + Sync),
    ) -> Self {
        Checks {
            scope,
            reopen,
            send: None,
            threads: Vec::new(),
            run: Vec::new(),
            run_bytes: 0,
            bad: std::sync::Arc::default(),
            stopped: false,
        }
    }

    /// Hands entry `index` over to be checked. False once the reading thread is to stop: a
    /// checking thread has found a bad entry (or every one stopped), which [`Checks::finish`]
    /// reports.
    #[must_use]
    fn push(
        &mut self,
        index: usize,
        entry: Entry,
        start: u64,
        listed: &crate::bundle::manifest::ManifestEntry,
    ) -> bool {
        self.run_bytes += entry.compressed_size;
        self.run.push(Check {
            index,
            entry,
            start,
            listed: listed.clone(),
        });
        if self.run_bytes >= CHECK_RUN_BYTES || self.run.len() >= CHECK_RUN_FILES {
            return self.flush();
        }
        !self.stopped
    }

    /// Hands over the run gathered so far; false as [`Checks::push`].
    fn flush(&mut self) -> bool {
        if self.run.is_empty() {
            return !self.stopped;
        }
        let run = std::mem::take(&mut self.run);
        self.run_bytes = 0;
        let send = match self.send.take() {
            Some(send) => send,
            None => self.start(),
        };
        if send.send(run).is_err() || lock(&self.bad).is_some() {
            self.stopped = true;
        }
        self.send = Some(send);
        !self.stopped
    }

    /// Starts the checking threads; returns the queue that feeds them.
    fn start(&mut self) -> std::sync::mpsc::SyncSender<Vec<Check>> {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let (send, runs) = std::sync::mpsc::sync_channel::<Vec<Check>>(threads * 2);
        let runs = std::sync::Arc::new(std::sync::Mutex::new(runs));
        for _ in 0..threads {
            let (runs, bad, reopen) = (runs.clone(), self.bad.clone(), self.reopen);
            let thread = self.scope.spawn(move || {
                let mut reader = None;
                loop {
                    let Ok(run) = lock(&runs).recv() else {
                        return;
                    };
                    for check in run {
                        if lock(&bad).as_ref().is_some_and(|(i, _)| *i < check.index) {
                            // An earlier entry is bad already; this one cannot be the first.
                            continue;
                        }
                        let index = check.index;
                        if let Err(e) = check_entry(&mut reader, reopen, check) {
                            let mut first = lock(&bad);
                            if first.as_ref().is_none_or(|(i, _)| index < *i) {
                                *first = Some((index, e));
                            }
                        }
                    }
                }
            });
            self.threads.push(thread);
        }
        send
    }

    /// Hands over what is left, waits for every check, and returns the first bad entry's
    /// error, if any.
    fn finish(mut self) -> Option<BundleError> {
        // When this fails, a thread found a bad entry (taken below) or stopped.
        let _ = self.flush();
        drop(self.send.take());
        // The threads end once the queue is empty and closed.
        for thread in self.threads.drain(..) {
            self.stopped |= thread.join().is_err();
        }
        let bad = lock(&self.bad).take().map(|(_, e)| e);
        if bad.is_none() && self.stopped {
            return Some(BundleError::Io(io::Error::other(
                "a thread checking the bundle's entries stopped",
            )));
        }
        bad
    }
}

/// Locks `m`, whether or not a thread panicked holding it.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks one mapping file on a checking thread, opening its reader on first use.
fn check_entry<R: Read + Seek>(
    reader: &mut Option<io::BufReader<R>>,
    reopen: &(dyn Fn() -> io::Result<R> + Sync),
    check: Check,
) -> Result<(), BundleError> {
    let r = match reader {
        Some(r) => r,
        None => reader.insert(io::BufReader::with_capacity(
            CHECK_READ_BUFFER,
            reopen().map_err(BundleError::Io)?,
        )),
    };
    let (size, sha) = crate::zipfmt::verify_entry(r, check.entry, check.start)?;
    same_as_listed(size, &sha, &check.listed)
}

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
    /// The exact bytes of `manifest.json`, the one copy kept (at most [`MAX_MANIFEST`]).
    manifest_bytes: Vec<u8>,
    /// Their SHA-256, computed as they were read.
    manifest_sha256: [u8; 32],
    /// `None` only for [`OpenBundle::open_unverified`].
    signer: Option<TrustedSigner>,
}

/// A bundle refused by [`OpenBundle::open_detailed`], with what its manifest claims when the
/// refusal came after the manifest was read: for an audit trail that names the bundle, the
/// signer and the container even of a bundle that is refused.
#[derive(Debug)]
pub struct Refusal {
    /// Why the bundle is refused.
    pub error: BundleError,
    /// The manifest, when it was read before the refusal.
    pub manifest: Option<Box<Manifest>>,
    /// Whether the manifest's signature verified with a trusted signer key; when false, the
    /// manifest's fields are only what the bundle claims.
    pub verified: bool,
}

impl From<BundleError> for Refusal {
    fn from(error: BundleError) -> Refusal {
        Refusal {
            error,
            manifest: None,
            verified: false,
        }
    }
}

impl From<ZipError> for Refusal {
    fn from(error: ZipError) -> Refusal {
        BundleError::from(error).into()
    }
}

impl<R: Read + Seek> std::fmt::Debug for OpenBundle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenBundle({})", self.manifest.bundle_id)
    }
}

impl<R: Read + Seek> OpenBundle<R> {
    /// Checks the archive's structure, the signature and trust, the manifest, and the entry list.
    pub fn open(
        r: R,
        limits: &Limits,
        trust: &TrustLookup<'_>,
    ) -> Result<OpenBundle<R>, BundleError> {
        OpenBundle::open_inner(r, limits, Some(trust)).map_err(|r| r.error)
    }

    /// Like [`OpenBundle::open`], but a refusal also carries the manifest when it had been
    /// read (whether or not its signature verified), so that the caller can record what the
    /// refused bundle claimed without reading it again.
    pub fn open_detailed(
        r: R,
        limits: &Limits,
        trust: &TrustLookup<'_>,
    ) -> Result<OpenBundle<R>, Refusal> {
        OpenBundle::open_inner(r, limits, Some(trust))
    }

    /// Like [`OpenBundle::open`] but **without checking the signature or the signer's trust**:
    /// for `flowpack inspect` without `--trust`, which says so. Nothing read this way may be
    /// applied.
    pub fn open_unverified(r: R, limits: &Limits) -> Result<OpenBundle<R>, BundleError> {
        OpenBundle::open_inner(r, limits, None).map_err(|r| r.error)
    }

    fn open_inner(
        r: R,
        limits: &Limits,
        trust: Option<&TrustLookup<'_>>,
    ) -> Result<OpenBundle<R>, Refusal> {
        let mut zip = ZipReader::open(r, limits)?;
        let entries = zip.entries();
        if entries.first().map(|e| e.name.as_str()) != Some("manifest.json") {
            return Err(
                BundleError::EntryOrder("the first entry must be manifest.json".into()).into(),
            );
        }
        if entries.get(1).map(|e| e.name.as_str()) != Some("manifest.sig") {
            return Err(
                BundleError::EntryOrder("the second entry must be manifest.sig".into()).into(),
            );
        }
        if entries[0].size > MAX_MANIFEST {
            return Err(BundleError::ManifestTooLarge(entries[0].size, MAX_MANIFEST).into());
        }
        let sig_size = entries[1].size;
        if sig_size != 64 {
            return Err(BundleError::BadSignatureFormat(sig_size).into());
        }
        let read = read_manifest(&mut zip, limits)?;
        let mut signature = [0u8; 64];
        {
            let mut r = zip
                .next_entry()?
                .ok_or_else(|| BundleError::Zip(ZipError::NotAZip("entry missing".into())))?;
            r.read_exact(&mut signature).map_err(BundleError::from_io)?;
            r.finish()?;
        }
        let (manifest, manifest_bytes, manifest_sha256) = read;
        let refuse = |error: BundleError, manifest: Manifest, verified: bool| Refusal {
            error,
            manifest: Some(Box::new(manifest)),
            verified,
        };

        let key_id = manifest.signer_key_id;
        let signer = match trust {
            Some(trust) => {
                let Some(signer) = trust(&key_id) else {
                    let e = BundleError::UnknownSigner(key_id.to_string());
                    return Err(refuse(e, manifest, false));
                };
                if signer.key.key_id() != key_id || !signer.key.verify(&manifest_bytes, &signature)
                {
                    let e = BundleError::BadSignature(key_id.to_string());
                    return Err(refuse(e, manifest, false));
                }
                Some(signer)
            }
            None => None,
        };
        let verified = signer.is_some();
        if let Err(e) = check_manifest(&manifest) {
            return Err(refuse(e, manifest, verified));
        }
        if let Some(signer) = &signer
            && !signer
                .containers
                .iter()
                .any(|p| p.covers(&manifest.target_container))
        {
            let allowed: Vec<&str> = signer
                .containers
                .iter()
                .map(ContainerPath::as_str)
                .collect();
            let e = BundleError::SignerNotAllowed(
                key_id.to_string(),
                manifest.target_container.to_string(),
                allowed.join(", "),
            );
            return Err(refuse(e, manifest, verified));
        }
        if let Err(e) = check_entry_list(&manifest, &zip.entries()[2..]) {
            return Err(refuse(e, manifest, verified));
        }
        Ok(OpenBundle {
            zip,
            manifest,
            manifest_bytes,
            manifest_sha256,
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

    /// Frees the kept bytes of `manifest.json` (up to [`MAX_MANIFEST`]): for a caller that keeps
    /// the bundle open to read its payload and needs no more than [`OpenBundle::manifest_sha256`].
    /// [`OpenBundle::manifest_bytes`] is empty afterwards.
    pub fn forget_manifest_bytes(&mut self) {
        self.manifest_bytes = Vec::new();
    }

    /// The SHA-256 of `manifest.json`'s exact bytes.
    pub fn manifest_sha256(&self) -> &[u8; 32] {
        &self.manifest_sha256
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
        let mut credentials = Vec::new();
        let mappings = self.stream_payload(identity, on_file, &mut |c| {
            credentials.push(c);
            Ok::<(), BundleError>(())
        })?;
        Ok(Payload {
            mappings,
            credentials,
        })
    }

    /// Like [`OpenBundle::read_payload`], but each credential is handed to `on_credential` as
    /// soon as it is read and checked (its sealed values opened), and is not kept: for a
    /// reader of a bundle of many credentials that applies them one at a time. Returns the
    /// mappings. The rules across records (unique names, references resolved) are checked
    /// after the last credential was handed on: a caller must not take anything it was handed
    /// as final before this returns `Ok`.
    pub fn stream_payload<E: From<BundleError>>(
        &mut self,
        identity: Option<&SealingIdentity>,
        on_file: &mut FileSink<'_>,
        on_credential: &mut dyn FnMut(Credential) -> Result<(), E>,
    ) -> Result<Vec<Mapping>, E> {
        self.stream(identity, None, on_file, on_credential)
    }

    /// Like [`OpenBundle::stream_payload`], but the mapping files `ahead` picks are not handed
    /// to `on_file`: they are checked (inflated, sized, hashed against the manifest) on other
    /// threads, one per core, each with a reader of its own, while this thread goes on with
    /// the rest. The outcome is that of [`OpenBundle::stream_payload`] with a sink that drains
    /// those files: when several entries are bad, the error is the first one's in bundle order.
    pub fn stream_payload_ahead<E: From<BundleError>>(
        &mut self,
        identity: Option<&SealingIdentity>,
        ahead: Ahead<'_, R>,
        on_file: &mut FileSink<'_>,
        on_credential: &mut dyn FnMut(Credential) -> Result<(), E>,
    ) -> Result<Vec<Mapping>, E> {
        let Ahead { skip, reopen } = ahead;
        std::thread::scope(|scope| {
            let mut checks = Checks::new(scope, reopen);
            let read = self.stream(identity, Some((skip, &mut checks)), on_file, on_credential);
            // A bad entry a worker found comes before wherever this thread stopped.
            match (checks.finish(), read) {
                (Some(e), _) => Err(e.into()),
                (None, read) => read,
            }
        })
    }

    fn stream<E: From<BundleError>>(
        &mut self,
        identity: Option<&SealingIdentity>,
        mut ahead: Option<(&mut Skip<'_>, &mut Checks<'_, '_, R>)>,
        on_file: &mut FileSink<'_>,
        on_credential: &mut dyn FnMut(Credential) -> Result<(), E>,
    ) -> Result<Vec<Mapping>, E> {
        let data_key = self.data_key(identity)?;
        let m = &self.manifest;
        let mut mappings: Vec<Mapping> = Vec::new();
        // Each credential's name and type, for the rules across records.
        let mut credentials: Vec<(Name, CredentialType)> = Vec::new();
        // The mapping whose files come next (the last one read), and the index in its `files`
        // of the next one expected.
        let mut current: Option<Name> = None;
        let mut next_file = 0usize;
        let summaries: HashMap<&str, _> =
            m.credentials.iter().map(|c| (c.name.as_str(), c)).collect();
        for (index, me) in m.entries.iter().enumerate() {
            let path = EntryPath::parse(&me.path).ok_or_else(|| {
                BundleError::BadManifest(format!(
                    "entry {} does not match the bundle layout",
                    me.path
                ))
            })?;
            let expected = current
                .as_ref()
                .and_then(|_| mappings.last())
                .and_then(|m| m.files.get(next_file));
            if let (Some(name), false, Some(missing)) = (
                &current,
                matches!(path, EntryPath::MappingFile(..)),
                expected,
            ) {
                return Err(BundleError::MappingFilesMismatch(
                    name.to_string(),
                    format!("file {missing} is listed but has no entry"),
                )
                .into());
            }
            let next = self
                .zip
                .next_checked()
                .map_err(BundleError::from)?
                .ok_or_else(|| BundleError::MissingEntry(me.path.clone()))?;
            if let (EntryPath::MappingFile(name, file), Some((skip, checks))) = (&path, &mut ahead)
                && current.as_ref() == Some(name)
                && expected == Some(file)
                && skip(name, file, me.size).map_err(BundleError::from_io)?
            {
                next_file += 1;
                let (entry, start) = next.skip().map_err(BundleError::from)?;
                if !checks.push(index, entry, start, me) {
                    // A checking thread found a bad entry, which is what is reported.
                    return Ok(Vec::new());
                }
                continue;
            }
            let mut reader = next.read();
            match &path {
                EntryPath::Mapping(name) => {
                    if !credentials.is_empty() {
                        return Err(BundleError::EntryOrder(format!(
                            "mapping {name} comes after credentials; mappings come first"
                        ))
                        .into());
                    }
                    let bytes = read_record(&mut reader, &me.path)?;
                    let mapping = Mapping::parse(&me.path, &bytes)
                        .map_err(|e| BundleError::BadRecord(e.to_string()))?;
                    if mapping.name != *name {
                        return Err(BundleError::BadRecord(format!(
                            "{}: field `name`: `{}` does not match the entry's directory",
                            me.path, mapping.name
                        ))
                        .into());
                    }
                    current = Some(name.clone());
                    next_file = 0;
                    check_digest(reader, me)?;
                    mappings.push(mapping);
                }
                EntryPath::MappingFile(name, file) => {
                    if current.as_ref() != Some(name) || expected != Some(file) {
                        return Err(BundleError::MappingFilesMismatch(
                            name.to_string(),
                            format!("entry {} is not the next file its mapping lists", me.path),
                        )
                        .into());
                    }
                    next_file += 1;
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
                        ))
                        .into());
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
                        ))
                        .into());
                    }
                    check_secrets_state(&c, summary.secrets, &me.path)?;
                    open_sealed(m, &mut c, data_key.as_ref())?;
                    credentials.push((c.name.clone(), c.kind));
                    on_credential(c)?;
                }
            }
        }
        let expected = current
            .as_ref()
            .and_then(|_| mappings.last())
            .and_then(|m| m.files.get(next_file));
        if let (Some(name), Some(missing)) = (&current, expected) {
            return Err(BundleError::MappingFilesMismatch(
                name.to_string(),
                format!("file {missing} is listed but has no entry"),
            )
            .into());
        }
        if credentials.len() != m.credentials.len() {
            return Err(BundleError::BadRecord(
                "the manifest lists credentials the bundle does not carry".into(),
            )
            .into());
        }
        let kinds: Vec<(&str, CredentialType)> =
            credentials.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        crate::model::check_records(
            "bundle",
            m.kind == BundleKind::Credentials,
            &mappings.iter().collect::<Vec<_>>(),
            &kinds,
        )
        .map_err(|e| BundleError::BadRecord(e.to_string()))?;
        Ok(mappings)
    }

    fn data_key(&self, identity: Option<&SealingIdentity>) -> Result<Option<DataKey>, BundleError> {
        let (Some(sealing), Some(identity)) = (&self.manifest.sealing, identity) else {
            return Ok(None);
        };
        let ours = identity.recipient().to_string();
        if !sealing.recipients().any(|r| r == ours) {
            return Err(BundleError::SealRecipientMismatch(
                sealing.recipients().collect::<Vec<_>>().join(", "),
                ours,
            ));
        }
        DataKey::unwrap(&sealing.wrapped_key, identity)
            .map(Some)
            .map_err(|e| BundleError::SealOpenFailed(format!("sealing.wrapped_key: {e}")))
    }
}

/// Opens the sealed values of credential `c` of the bundle whose manifest is `manifest`.
fn open_sealed(
    manifest: &Manifest,
    c: &mut Credential,
    key: Option<&DataKey>,
) -> Result<(), BundleError> {
    for (field, value) in c.secrets.iter_mut() {
        let SecretValue::Sealed(b64) = value else {
            continue;
        };
        if manifest.sealing.is_none() {
            return Err(BundleError::SealOpenFailed(format!(
                "credential {}: field `{field}` is sealed but the bundle has no sealing block",
                c.name
            )));
        }
        let Some(key) = key else { continue };
        let ctx = SealContext {
            bundle_id: manifest.bundle_id.as_str(),
            container: manifest.target_container.as_str(),
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

/// Reads `manifest.json` (the next entry) in one pass: the JSON parser reads the inflated
/// bytes as they come, and they are kept once, for the signature. Returns the manifest, its
/// bytes and their SHA-256. Fails on the first string longer than [`MAX_MANIFEST_STRING`], a
/// list longer than the entry limit, or any break of the schema's syntax; the rules that need
/// the whole manifest are [`check_manifest`]'s.
fn read_manifest<R: Read + Seek>(
    zip: &mut ZipReader<R>,
    limits: &Limits,
) -> Result<(Manifest, Vec<u8>, [u8; 32]), BundleError> {
    let entry = zip
        .next_entry()?
        .ok_or_else(|| BundleError::Zip(ZipError::NotAZip("entry missing".into())))?;
    // At most MAX_MANIFEST, checked by the caller on the same declared size.
    let declared = entry.entry().size as usize;
    let mut keeping = Keeping {
        inner: entry,
        kept: Vec::with_capacity(declared),
        strings: StringGuard::default(),
    };
    let max_items = usize::try_from(limits.max_entries).unwrap_or(usize::MAX);
    let (parsed, over) = crate::bundle::manifest::with_list_limit(max_items, || {
        // serde_json reads byte by byte: a buffer in front keeps that off the inflater. No
        // larger than the entry (it is zeroed when first filled).
        let mut buffered = io::BufReader::with_capacity(declared.clamp(1, 64 << 10), &mut keeping);
        let de = &mut serde_json::Deserializer::from_reader(&mut buffered);
        let manifest: Manifest = serde_path_to_error::deserialize(&mut *de)
            .map_err(|e| (e.path().to_string(), e.into_inner()))?;
        // Only whitespace may follow; this reads the entry to its end, which checks its size
        // and CRC-32.
        de.end().map_err(|e| (String::new(), e))?;
        Ok::<_, (String, serde_json::Error)>(manifest)
    });
    let manifest = match parsed {
        Ok(m) => m,
        Err((_, e)) if e.is_io() => return Err(BundleError::from_io(e.into())),
        Err((path, e)) if over => {
            return Err(BundleError::Zip(ZipError::SizeLimit(format!(
                "manifest.json: field `{path}`: {e}"
            ))));
        }
        Err((path, e)) if path == "target_container" => {
            return Err(BundleError::BadContainer(e.to_string()));
        }
        Err((path, e)) if path.is_empty() || path == "." => {
            return Err(BundleError::BadManifest(e.to_string()));
        }
        Err((path, e)) => return Err(BundleError::BadManifest(format!("field `{path}`: {e}"))),
    };
    // The parser stopped at the end of the entry; make sure the reader has seen it too.
    io::copy(&mut keeping, &mut io::sink()).map_err(BundleError::from_io)?;
    let Keeping { inner, kept, .. } = keeping;
    let (_, sha256) = inner.digest();
    Ok((manifest, kept, sha256))
}

/// Passes an entry's bytes on as they are read, keeping a copy and watching string lengths.
struct Keeping<'a, R: Read> {
    inner: crate::zipfmt::EntryReader<'a, R>,
    kept: Vec<u8>,
    strings: StringGuard,
}

impl<R: Read> Read for Keeping<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.strings.scan(&buf[..n]).map_err(BundleError::into_io)?;
        self.kept.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Follows JSON's strings through a byte stream and refuses one longer than
/// [`MAX_MANIFEST_STRING`] bytes, before the parser has buffered it whole. Outside strings,
/// JSON has no `"`, so tracking quotes and escapes is enough to know where strings are; a
/// document this misreads is not JSON, and the parser refuses it.
#[derive(Default)]
struct StringGuard {
    in_string: bool,
    escaped: bool,
    len: usize,
}

impl StringGuard {
    fn scan(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        for &b in bytes {
            if !self.in_string {
                if b == b'"' {
                    self.in_string = true;
                    self.len = 0;
                }
                continue;
            }
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                continue;
            }
            self.len += 1;
            if self.len > MAX_MANIFEST_STRING {
                return Err(BundleError::BadManifest(format!(
                    "a string is longer than {MAX_MANIFEST_STRING} bytes; no field of a manifest is that long"
                )));
            }
        }
        Ok(())
    }
}

/// The manifest's rules beyond its schema: the format, the entries' layout and kinds, the
/// sealing block's form.
fn check_manifest(manifest: &Manifest) -> Result<(), BundleError> {
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
        for (i, r) in s.other_recipients.iter().enumerate() {
            crate::seal::SealingRecipient::parse(r).map_err(|e| {
                BundleError::BadManifest(format!("field `sealing.other_recipients[{i}]`: {e}"))
            })?;
        }
        // What can be checked without the receiver's identity is checked here, so that
        // `flowpack verify` refuses a malformed wrapped key too.
        DataKey::check_wrapped(&s.wrapped_key)
            .map_err(|e| BundleError::SealOpenFailed(format!("sealing.wrapped_key: {e}")))?;
    }
    Ok(())
}

/// The archive's payload entries are exactly the manifest's, in order, with the same sizes.
fn check_entry_list(manifest: &Manifest, archive: &[Entry]) -> Result<(), BundleError> {
    for (i, e) in manifest.entries.iter().enumerate() {
        match archive.get(i) {
            Some(z) if z.name == e.path => {}
            _ if !archive.iter().any(|z| z.name == e.path) => {
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
        return Err(BundleError::ExtraEntry(extra.name.clone()));
    }
    for (e, z) in manifest.entries.iter().zip(archive) {
        if e.size != z.size {
            return Err(BundleError::Zip(ZipError::SizeMismatch(
                e.path.clone(),
                format!(
                    "the manifest says {} bytes, its ZIP headers {}",
                    e.size, z.size
                ),
            )));
        }
    }
    Ok(())
}

fn read_record<R: Read>(
    r: &mut crate::zipfmt::EntryReader<'_, R>,
    path: &str,
) -> Result<Vec<u8>, BundleError> {
    if r.entry().size > MAX_RECORD {
        return Err(BundleError::Zip(ZipError::SizeLimit(format!(
            "entry {path} is larger than {MAX_RECORD} bytes, the limit for a record"
        ))));
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
    same_as_listed(size, &sha, me)
}

/// Whether an entry read whole (`size` bytes, SHA-256 `sha`) is what the manifest lists.
fn same_as_listed(
    size: u64,
    sha: &[u8; 32],
    me: &crate::bundle::manifest::ManifestEntry,
) -> Result<(), BundleError> {
    if size != me.size {
        return Err(BundleError::Zip(ZipError::SizeMismatch(
            me.path.clone(),
            format!("{size} bytes, the manifest says {}", me.size),
        )));
    }
    if *sha != me.sha256.0 {
        return Err(BundleError::DigestMismatch(me.path.clone()));
    }
    Ok(())
}
