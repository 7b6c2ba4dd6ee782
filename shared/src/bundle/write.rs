//! Writing a signed bundle, streaming: memory stays flat however large the mapping files are.
//!
//! Files are read twice, each time on all cores: once to hash them for the manifest (which comes
//! first in the archive and is signed), once to compress them into the archive while hashing
//! again; a file that changed between the two reads is an error, never a bundle that fails
//! verification later. Workers may finish out of order; entries always go in manifest order, so
//! the bundle's bytes do not depend on the number of cores or on scheduling.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::bundle::manifest::{
    BundleId, BundleKind, CredentialSummary, EntryKind, EntryPath, FORMAT, Manifest, ManifestEntry,
    Sealing, SecretsState, Sha256,
};
use crate::keys::SigningKey;
use crate::model::RecordError;
use crate::model::credential::{Credential, SecretValue};
use crate::model::mapping::Mapping;
use crate::names::ContainerPath;
use crate::seal::{DataKey, SealContext, SealError, SealingRecipient};
use crate::timefmt::Timestamp;
use crate::zipfmt::{Compressed, Compressor, Method, Spool, ZipWriter};

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A record or the project breaks a model rule.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Credentials carry secrets in clear but neither sealing nor plaintext was chosen.
    #[error("credential(s) {} have include_in_deployment set and carry secrets; seal them to the receiver with --seal-to age1… (see `GET /v1/keys`), or pass --plaintext-secrets to write them in clear", .0.join(", "))]
    PlaintextRefused(Vec<String>),
    /// Reading a mapping file failed.
    #[error("{path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A mapping file changed while it was being packaged.
    #[error("{0}: the file changed while it was being packaged; run the command again")]
    FileChanged(PathBuf),
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Writing the archive failed.
    #[error("writing the bundle failed: {0}")]
    Io(#[from] io::Error),
}

/// A mapping and the directory its `files` are relative to.
#[derive(Debug, Clone)]
pub struct MappingInput {
    /// The parsed definition.
    pub mapping: Mapping,
    /// The directory holding the mapping file.
    pub dir: PathBuf,
}

/// How to write the bundle.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// Deployment or credentials.
    pub kind: BundleKind,
    /// Where it will be applied.
    pub target_container: ContainerPath,
    /// The environment chosen.
    pub environment: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Expiry time.
    pub expires_at: Timestamp,
    /// Seal secrets to these receivers (any of them can open them); empty: not sealed.
    pub seal_to: Vec<SealingRecipient>,
    /// Allow secrets in clear when not sealing.
    pub allow_plaintext: bool,
    /// Deflate level, 0–9.
    pub level: u32,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Archive size in bytes.
    pub bytes: u64,
}

/// Decides what goes into the bundle for one credential, sealing when asked.
fn bundle_credential(
    c: &Credential,
    opts: &BundleOptions,
    bundle_id: &BundleId,
    key: Option<&DataKey>,
) -> Result<(Credential, SecretsState), WriteError> {
    let mut out = c.clone();
    out.include_in_deployment = false;
    if !c.include_in_deployment {
        out.secrets.clear();
        return Ok((out, SecretsState::Omitted));
    }
    if c.secrets.is_empty() {
        return Ok((out, SecretsState::None));
    }
    let Some(key) = key else {
        return Ok((out, SecretsState::Plaintext));
    };
    for (field, value) in out.secrets.iter_mut() {
        if let SecretValue::Plain(plain) = value {
            let ctx = SealContext {
                bundle_id: bundle_id.as_str(),
                container: opts.target_container.as_str(),
                credential: c.name.as_str(),
                field,
            };
            *value = SecretValue::Sealed(key.seal(&ctx, plain)?);
        }
    }
    Ok((out, SecretsState::Sealed))
}

enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Opens a mapping file for reading, refusing anything but a regular file. Called from several
/// threads, twice per file (pass 1 and pass 2).
pub type OpenFile = dyn Fn(&Path) -> io::Result<File> + Sync;

/// The default [`OpenFile`]: refuses a path whose last component is a symlink, a directory or a
/// special file. Directories on the way to it are followed; a caller that must not follow them
/// either (the packager) passes its own opener to [`write_bundle_with`].
pub fn open_regular_file(path: &Path) -> io::Result<File> {
    if !std::fs::symlink_metadata(path)?.is_file() {
        return Err(io::Error::other(
            "not a regular file (symlinks and directories are not packaged)",
        ));
    }
    File::open(path)
}

/// Writes a bundle of `mappings` and `credentials` to `out`, signed with `key`, reading mapping
/// files with [`open_regular_file`].
///
/// `progress(done, total)` is called with uncompressed bytes as they are written.
pub fn write_bundle<W: Write + Seek>(
    out: W,
    key: &SigningKey,
    opts: &BundleOptions,
    mappings: &[MappingInput],
    credentials: &[Credential],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written, WriteError> {
    write_bundle_with(
        out,
        key,
        opts,
        mappings,
        credentials,
        &open_regular_file,
        progress,
    )
}

/// [`write_bundle`], reading every mapping file through `open`.
pub fn write_bundle_with<W: Write + Seek>(
    out: W,
    key: &SigningKey,
    opts: &BundleOptions,
    mappings: &[MappingInput],
    credentials: &[Credential],
    open: &OpenFile,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written, WriteError> {
    let origin = "project";
    crate::model::check_project(
        origin,
        opts.kind == BundleKind::Credentials,
        &mappings.iter().map(|m| &m.mapping).collect::<Vec<_>>(),
        &credentials.iter().collect::<Vec<_>>(),
    )?;
    let refused: Vec<String> = credentials
        .iter()
        .filter(|c| c.include_in_deployment && !c.secrets.is_empty())
        .filter(|_| opts.seal_to.is_empty() && !opts.allow_plaintext)
        .map(|c| c.name.to_string())
        .collect();
    if !refused.is_empty() {
        return Err(WriteError::PlaintextRefused(refused));
    }

    let bundle_id = BundleId::generate()?;
    let data_key = if !opts.seal_to.is_empty()
        && credentials
            .iter()
            .any(|c| c.include_in_deployment && !c.secrets.is_empty())
    {
        Some(DataKey::generate()?)
    } else {
        None
    };
    let sealing = match (opts.seal_to.split_first(), &data_key) {
        (Some((first, others)), Some(k)) => Some(Sealing {
            recipient: first.to_string(),
            other_recipients: others.iter().map(ToString::to_string).collect(),
            wrapped_key: k.wrap_for(&opts.seal_to)?,
        }),
        _ => None,
    };

    // Pass 1: every payload entry, its source, size and digest, in manifest order. Mapping files
    // are hashed on all cores once all are listed.
    let mut entries: Vec<ManifestEntry> = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    for m in mappings {
        let json = serde_json::to_vec_pretty(&m.mapping).map_err(io::Error::other)?;
        let path = EntryPath::Mapping(m.mapping.name.clone()).to_path();
        entries.push(entry(path, EntryKind::Mapping, &json));
        sources.push(Source::Bytes(json));
        for f in &m.mapping.files {
            let path = EntryPath::MappingFile(m.mapping.name.clone(), f.clone()).to_path();
            entries.push(ManifestEntry {
                path,
                // Filled in by `hash_files`.
                size: 0,
                sha256: Sha256([0; 32]),
                kind: EntryKind::MappingFile,
            });
            sources.push(Source::File(m.dir.join(f.as_str())));
        }
    }
    hash_files(&mut entries, &sources, open)?;
    let mut summaries = Vec::new();
    for c in credentials {
        let (record, secrets) = bundle_credential(c, opts, &bundle_id, data_key.as_ref())?;
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(&record.bundle_json()).map_err(io::Error::other)?,
        );
        let path = EntryPath::Credential(c.name.clone()).to_path();
        entries.push(entry(path, EntryKind::Credential, &json));
        sources.push(Source::Bytes(json.to_vec()));
        summaries.push(CredentialSummary {
            name: c.name.clone(),
            kind: c.kind,
            secrets,
        });
    }

    let manifest = Manifest {
        format: FORMAT.to_owned(),
        bundle_id,
        kind: opts.kind,
        target_container: opts.target_container.clone(),
        environment: opts.environment.clone(),
        created_at: opts.created_at,
        expires_at: opts.expires_at,
        signer_key_id: key.verifying_key().key_id(),
        sealing,
        entries,
        credentials: summaries,
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    let signature = key.sign(&manifest_bytes);

    // Pass 2: the archive.
    let total: u64 = manifest.entries.iter().map(|e| e.size).sum();
    let mut done = 0u64;
    let mut zip = ZipWriter::new(out);
    let mut none = |_: u64| {};
    zip.add(
        "manifest.json",
        Method::Deflate,
        opts.level,
        &mut &manifest_bytes[..],
        &mut none,
    )?;
    zip.add(
        "manifest.sig",
        Method::Stored,
        0,
        &mut &signature[..],
        &mut none,
    )?;
    let result = write_payload(
        &mut zip,
        &manifest.entries,
        &sources,
        open,
        opts.level,
        &mut |n| {
            done += n;
            progress(done, total);
        },
    );
    for source in &mut sources {
        if let Source::Bytes(b) = source {
            zeroize::Zeroize::zeroize(b);
        }
    }
    result?;
    let mut out = zip.finish()?;
    let bytes = out.stream_position()?;
    Ok(Written { manifest, bytes })
}

/// Compressed data above this size is spooled to a temporary file instead of memory.
const SPOOL_THRESHOLD: usize = 4 << 20;

/// Most entries in one run of pass 2.
const RUN_ENTRIES: usize = 16;
/// A run of pass 2 takes another entry only while its uncompressed size stays within this.
const RUN_BYTES: u64 = 1 << 20;

/// Splits the payload into runs of consecutive entries for pass 2: at most [`RUN_ENTRIES`]
/// entries and [`RUN_BYTES`] (by pass 1's sizes) each, or a single entry larger than that.
fn runs(entries: &[ManifestEntry]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::with_capacity(entries.len().div_ceil(RUN_ENTRIES));
    let (mut start, mut bytes) = (0, 0u64);
    for (i, e) in entries.iter().enumerate() {
        if i > start && (i - start == RUN_ENTRIES || bytes.saturating_add(e.size) > RUN_BYTES) {
            runs.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(e.size);
    }
    if start < entries.len() {
        runs.push(start..entries.len());
    }
    runs
}

/// Compresses the payload on all cores and appends it in manifest order.
///
/// Workers take [`runs`] in order and compress each entry of a run into a [`Compressed`]
/// (memory or a temporary file), hashing as they read, then hand the run over at once: threads
/// wake each other once per run, not once per small file. The calling thread appends entries in
/// order and checks each digest against pass 1. At most `window` runs are compressed ahead of
/// the writer, so memory and temporary disk stay bounded: a run holds one entry, or small
/// entries of at most [`RUN_BYTES`] together.
fn write_payload<W: Write + Seek>(
    zip: &mut ZipWriter<W>,
    entries: &[ManifestEntry],
    sources: &[Source],
    open: &OpenFile,
    level: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<(), WriteError> {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex, mpsc};

    let runs = runs(entries);
    let threads = workers(runs.len());
    let window = threads * 4;
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    // How many runs the writer has appended; workers wait while they are `window` ahead.
    let written = (Mutex::new(0usize), Condvar::new());
    // A run's results in order, up to and including its first failure.
    let (tx, rx) = mpsc::channel::<(usize, Vec<Result<Compressed, WriteError>>)>();

    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (runs, next, abort, written) = (&runs, &next, &abort, &written);
            scope.spawn(move || {
                let mut compressor = Compressor::new(level);
                loop {
                    let r = next.fetch_add(1, Ordering::SeqCst);
                    let Some(run) = runs.get(r) else {
                        return;
                    };
                    {
                        let (lock, cvar) = written;
                        let mut w = lock
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        while r >= *w + window && !abort.load(Ordering::SeqCst) {
                            w = cvar
                                .wait(w)
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                    }
                    let mut results = Vec::with_capacity(run.len());
                    for source in &sources[run.clone()] {
                        if abort.load(Ordering::SeqCst) {
                            return;
                        }
                        let result = compress_source(&mut compressor, source, open);
                        let failed = result.is_err();
                        results.push(result);
                        if failed {
                            break;
                        }
                    }
                    if tx.send((r, results)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let outcome = (|| {
            let stopped = || io::Error::other("a compression worker stopped");
            let mut pending = BTreeMap::new();
            for (r, run) in runs.iter().enumerate() {
                let results = loop {
                    if let Some(results) = pending.remove(&r) {
                        break results;
                    }
                    let (j, results) = rx.recv().map_err(|_| stopped())?;
                    pending.insert(j, results);
                };
                let mut results = results.into_iter();
                for i in run.clone() {
                    let (e, source) = (&entries[i], &sources[i]);
                    let mut c = results.next().ok_or_else(stopped)??;
                    if c.size != e.size || c.sha256 != e.sha256.0 {
                        return Err(WriteError::FileChanged(match source {
                            Source::File(p) => p.clone(),
                            Source::Bytes(_) => PathBuf::from(&e.path),
                        }));
                    }
                    zip.add_compressed(&e.path, &mut c)?;
                    if let (Source::Bytes(_), Spool::Memory(v)) = (source, &mut c.data) {
                        // A credential record's compressed bytes may hold plaintext secrets.
                        zeroize::Zeroize::zeroize(v);
                    }
                    progress(e.size);
                }
                let (lock, cvar) = &written;
                *lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = r + 1;
                cvar.notify_all();
            }
            Ok(())
        })();
        if outcome.is_err() {
            abort.store(true, Ordering::SeqCst);
            written.1.notify_all();
        }
        drop(rx);
        outcome
    })
}

fn compress_source(
    c: &mut Compressor,
    source: &Source,
    open: &OpenFile,
) -> Result<Compressed, WriteError> {
    let mut none = |_: u64| {};
    match source {
        Source::Bytes(b) => Ok(c.compress(&mut &b[..], SPOOL_THRESHOLD, &mut none)?),
        Source::File(p) => {
            let read_err = |source| WriteError::ReadFile {
                path: p.clone(),
                source,
            };
            let mut f = open(p).map_err(read_err)?;
            c.compress(&mut f, SPOOL_THRESHOLD, &mut none)
                .map_err(read_err)
        }
    }
}

fn entry(path: String, kind: EntryKind, bytes: &[u8]) -> ManifestEntry {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut sha = [0u8; 32];
    sha.copy_from_slice(digest.as_ref());
    ManifestEntry {
        path,
        size: bytes.len() as u64,
        sha256: Sha256(sha),
        kind,
    }
}

/// Worker threads for `jobs` jobs: one per core, at least one, no more than there are jobs.
fn workers(jobs: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, jobs.max(1))
}

/// Sets the size and digest of every entry whose source is a file, hashing on all cores.
///
/// Workers take runs of [`HASH_RUN`] entries in order and send back each file's size and digest,
/// which the calling thread writes into its entry; runs keep the threads from waking each other
/// for every small file. When a file cannot be read, workers take no entry after it, and the
/// error returned is that of the first such file in order, as a serial pass would report.
fn hash_files(
    entries: &mut [ManifestEntry],
    sources: &[Source],
    open: &OpenFile,
) -> Result<(), WriteError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    type Hashed = (usize, Result<(u64, [u8; 32]), WriteError>);
    let files = sources
        .iter()
        .filter(|s| matches!(s, Source::File(_)))
        .count();
    if files == 0 {
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    // Index of the first file in order that could not be read, or `usize::MAX`.
    let failed = AtomicUsize::new(usize::MAX);
    let (tx, rx) = mpsc::channel::<Vec<Hashed>>();
    std::thread::scope(|scope| {
        for _ in 0..workers(files.div_ceil(HASH_RUN)) {
            let tx = tx.clone();
            let (next, failed) = (&next, &failed);
            scope.spawn(move || {
                let mut buf = vec![0u8; HASH_BUF];
                loop {
                    let start = next.fetch_add(HASH_RUN, Ordering::SeqCst);
                    let end = sources.len().min(start.saturating_add(HASH_RUN));
                    let Some(taken) = sources.get(start..end).filter(|t| !t.is_empty()) else {
                        return;
                    };
                    let mut run = Vec::with_capacity(HASH_RUN);
                    let mut past_failure = false;
                    for (i, source) in (start..).zip(taken) {
                        if i > failed.load(Ordering::SeqCst) {
                            past_failure = true;
                            break;
                        }
                        let Source::File(path) = source else {
                            continue;
                        };
                        let result = hash_file(path, &mut buf, open);
                        if result.is_err() {
                            failed.fetch_min(i, Ordering::SeqCst);
                        }
                        run.push((i, result));
                    }
                    if (!run.is_empty() && tx.send(run).is_err()) || past_failure {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Every file up to the first failure in order is hashed, whichever worker took it and
        // whatever failed elsewhere (workers stop only past a failure), so that one is seen.
        let mut first_error: Option<(usize, WriteError)> = None;
        let mut hashed = 0usize;
        for (i, result) in rx.into_iter().flatten() {
            match result {
                Ok((size, sha)) => {
                    entries[i].size = size;
                    entries[i].sha256 = Sha256(sha);
                    hashed += 1;
                }
                Err(e) => {
                    if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_error = Some((i, e));
                    }
                }
            }
        }
        match first_error {
            Some((_, e)) => Err(e),
            None if hashed != files => {
                Err(io::Error::other("a hashing worker stopped early").into())
            }
            None => Ok(()),
        }
    })
}

/// Entries a pass-1 worker takes at a time.
const HASH_RUN: usize = 16;

/// Read buffer of a pass-1 worker.
const HASH_BUF: usize = 64 * 1024;

/// Size and SHA-256 of a regular file, read through `buf`.
fn hash_file(path: &Path, buf: &mut [u8], open: &OpenFile) -> Result<(u64, [u8; 32]), WriteError> {
    let read_err = |source| WriteError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let mut f = open(path).map_err(read_err)?;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    loop {
        let n = match f.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        sha.update(&buf[..n]);
        size += n as u64;
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(sha.finish().as_ref());
    Ok((size, digest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A project of `n` files `f0000.xml`… of different sizes and contents, in one mapping.
    fn project(dir: &Path, n: usize) -> MappingInput {
        let names: Vec<String> = (0..n).map(|i| format!("f{i:04}.xml")).collect();
        for (i, name) in names.iter().enumerate() {
            let body = format!("<row id=\"{i}\">{}</row>\n", "x".repeat(i % 97)).repeat(i % 13);
            std::fs::write(dir.join(name), body).unwrap();
        }
        let json = serde_json::json!({ "name": "m", "files": names });
        MappingInput {
            mapping: Mapping::parse("m", json.to_string().as_bytes()).unwrap(),
            dir: dir.to_owned(),
        }
    }

    fn opts() -> BundleOptions {
        let now = Timestamp::now();
        BundleOptions {
            kind: BundleKind::Deployment,
            target_container: ContainerPath::parse("/p").unwrap(),
            environment: None,
            created_at: now,
            expires_at: now.plus(time::Duration::days(1)),
            seal_to: Vec::new(),
            allow_plaintext: false,
            level: 6,
        }
    }

    fn write(m: &MappingInput) -> Result<Written, WriteError> {
        let key = SigningKey::generate().unwrap();
        let out = io::Cursor::new(Vec::new());
        write_bundle(
            out,
            &key,
            &opts(),
            std::slice::from_ref(m),
            &[],
            &mut |_, _| {},
        )
    }

    #[test]
    fn manifest_lists_every_file_in_order_with_its_size_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let m = project(dir.path(), 300);
        let w = write(&m).unwrap();
        let files: Vec<&ManifestEntry> = w.manifest.entries[1..].iter().collect();
        assert_eq!(files.len(), 300);
        for (i, e) in files.iter().enumerate() {
            let bytes = std::fs::read(dir.path().join(format!("f{i:04}.xml"))).unwrap();
            let expected = entry(
                format!("mappings/m/files/f{i:04}.xml"),
                EntryKind::MappingFile,
                &bytes,
            );
            assert_eq!(**e, expected, "entry {i}");
        }
    }

    #[test]
    fn reports_the_first_unreadable_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let m = project(dir.path(), 400);
        std::fs::remove_file(dir.path().join("f0377.xml")).unwrap();
        std::fs::remove_file(dir.path().join("f0213.xml")).unwrap();
        std::fs::remove_file(dir.path().join("f0121.xml")).unwrap();
        std::fs::create_dir(dir.path().join("f0121.xml")).unwrap();
        // Workers race; the answer must not depend on which one gets where first.
        for _ in 0..20 {
            match write(&m) {
                Err(WriteError::ReadFile { path, source }) => {
                    assert_eq!(path, dir.path().join("f0121.xml"));
                    assert!(
                        source.to_string().contains("not a regular file"),
                        "{source}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn runs_hold_up_to_16_small_entries_or_one_large_one() {
        let sized = |sizes: &[u64]| -> Vec<ManifestEntry> {
            sizes
                .iter()
                .map(|&size| ManifestEntry {
                    path: String::new(),
                    size,
                    sha256: Sha256([0; 32]),
                    kind: EntryKind::MappingFile,
                })
                .collect()
        };
        assert_eq!(runs(&[]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(runs(&sized(&[4096; 40])), vec![0..16, 16..32, 32..40]);
        let mib = 1 << 20;
        assert_eq!(
            runs(&sized(&[10, 3 * mib, 10, mib - 10, 10, mib, 0])),
            vec![0..1, 1..2, 2..4, 4..5, 5..7]
        );
    }

    /// Pass 2 over `n` in-memory entries whose pass-1 digests are those of `data`, except the
    /// entries in `changed`.
    fn pass_two(n: usize, changed: &[usize]) -> Result<Vec<u8>, WriteError> {
        let data: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("entry {i}\n").repeat(i).into_bytes())
            .collect();
        let entries: Vec<ManifestEntry> = data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut e = entry(format!("credentials/c{i}.json"), EntryKind::Credential, d);
                if changed.contains(&i) {
                    e.sha256.0[0] ^= 1;
                }
                e
            })
            .collect();
        let sources: Vec<Source> = data.into_iter().map(Source::Bytes).collect();
        let mut zip = ZipWriter::new(io::Cursor::new(Vec::new()));
        write_payload(
            &mut zip,
            &entries,
            &sources,
            &open_regular_file,
            6,
            &mut |_| {},
        )?;
        Ok(zip.finish()?.into_inner())
    }

    #[test]
    fn pass_two_reports_the_first_changed_entry_in_order() {
        assert!(pass_two(100, &[]).is_ok());
        for _ in 0..20 {
            match pass_two(100, &[70, 37, 38]) {
                Err(WriteError::FileChanged(p)) => {
                    assert_eq!(p, PathBuf::from("credentials/c37.json"));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
