//! The receiver's keys as files: the sealing identities (the current one and the previous
//! ones still accepted after a rotation), the id of an at-rest master key, and the atomic,
//! private file writes every key file is made with.
//!
//! The sealing identities live in one file, `sealing.agekey`, in `age-keygen`'s layout so that
//! the `age` tool reads it (`age -d -i sealing.agekey` tries every identity in it). The first
//! identity is the current one; each other one follows a `# retires at: TIME` line and is
//! accepted until then; a `# retired at TIME: age1…` line remembers a retired recipient whose
//! secret key is gone, so that a bundle still sealed to it is refused naming it. A receiver
//! that knows only one identity reads the first, the current one.
//!
//! `serve` does not hold the ring fixed: [`Sealing::ring`] looks at the file (one `stat`) and
//! reads it again when it was replaced, so `rotate sealing` takes effect at the next deploy or
//! `GET /v1/keys` without a restart. Rotations replace the file atomically (a new file renamed
//! over the old), so a reader sees the old ring or the new one, never half of either.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use flowpack_shared::bundle::manifest::Sealing as SealingBlock;
use flowpack_shared::seal::SealingIdentity;
use flowpack_shared::secret::SecretBytes;
use flowpack_shared::timefmt::Timestamp;

use crate::problem::{Problem, ProblemCode};

/// How many retired recipients the identity file remembers (the newest ones).
const RETIRED_KEPT: usize = 16;

/// A previous sealing identity, accepted until it retires.
#[derive(Debug)]
pub struct Previous {
    /// The identity.
    pub identity: SealingIdentity,
    /// When it stops being accepted.
    pub retires_at: Timestamp,
}

/// A retired recipient: its secret key is no longer kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The `age1…` recipient.
    pub recipient: String,
    /// When it retired.
    pub retired_at: Timestamp,
}

/// The sealing identities at one moment.
#[derive(Debug)]
pub struct SealingRing {
    /// The identity bundles are sealed to from now on.
    pub current: SealingIdentity,
    /// Identities of earlier rotations, each accepted until its `retires_at`, newest first.
    pub previous: Vec<Previous>,
    /// Recipients whose identities retired, newest first.
    pub retired: Vec<Retired>,
}

/// Why an identity file cannot be read. Never carries a secret key.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// No identity in the file.
    #[error("no age identity (AGE-SECRET-KEY-1…) in the file")]
    Empty,
    /// A line that should be an identity is not one.
    #[error("line {0}: not an age X25519 identity (AGE-SECRET-KEY-1…)")]
    BadIdentity(usize),
    /// A bad time or recipient on a `# retires at:` or `# retired at` line.
    #[error("line {0}: {1}")]
    BadLine(usize, String),
    /// A previous identity without a `# retires at:` line, or the current one with one.
    #[error("line {0}: {1}")]
    Layout(usize, &'static str),
}

impl SealingRing {
    /// A ring of one identity (a new data directory, or a test's).
    pub fn single(identity: SealingIdentity) -> SealingRing {
        SealingRing {
            current: identity,
            previous: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// Reads the identity file's text (see the module's documentation).
    pub fn parse(text: &str) -> Result<SealingRing, RingError> {
        let mut current = None;
        let mut previous = Vec::new();
        let mut retired = Vec::new();
        let mut retires_at: Option<(usize, Timestamp)> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# retires at:") {
                let at = Timestamp::parse(rest.trim()).ok_or_else(|| {
                    RingError::BadLine(n, format!("not an RFC 3339 UTC time: {:?}", rest.trim()))
                })?;
                retires_at = Some((n, at));
                continue;
            }
            if let Some(rest) = line.strip_prefix("# retired at ") {
                let (at, recipient) = rest
                    .split_once(": ")
                    .ok_or(RingError::Layout(n, "expected `# retired at TIME: age1…`"))?;
                let retired_at = Timestamp::parse(at.trim()).ok_or_else(|| {
                    RingError::BadLine(n, format!("not an RFC 3339 UTC time: {:?}", at.trim()))
                })?;
                let recipient = flowpack_shared::seal::SealingRecipient::parse(recipient)
                    .map_err(|e| RingError::BadLine(n, e.to_string()))?
                    .to_string();
                retired.push(Retired {
                    recipient,
                    retired_at,
                });
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let identity = SealingIdentity::parse(line).map_err(|_| RingError::BadIdentity(n))?;
            match (current.is_none(), retires_at.take()) {
                (true, None) => current = Some(identity),
                (true, Some((n, _))) => {
                    return Err(RingError::Layout(
                        n,
                        "the first identity is the current one and has no `# retires at:` line",
                    ));
                }
                (false, Some((_, at))) => previous.push(Previous {
                    identity,
                    retires_at: at,
                }),
                (false, None) => {
                    return Err(RingError::Layout(
                        n,
                        "a previous identity follows a `# retires at: TIME` line",
                    ));
                }
            }
        }
        if let Some((n, _)) = retires_at {
            return Err(RingError::Layout(
                n,
                "a `# retires at:` line with no identity after it",
            ));
        }
        Ok(SealingRing {
            current: current.ok_or(RingError::Empty)?,
            previous,
            retired,
        })
    }

    /// The identity file's text; wiped when dropped (it holds secret keys).
    pub fn to_file_text(&self) -> zeroize::Zeroizing<String> {
        let mut text = zeroize::Zeroizing::new(String::from(
            "# flowpack-receiver sealing identities, in age-keygen's layout. The first is the\n\
             # current one; each other one is accepted until its `retires at` time.\n",
        ));
        text.push_str(&self.current.to_file_text());
        for p in &self.previous {
            text.push_str(&format!("# retires at: {}\n", p.retires_at));
            text.push_str(&p.identity.to_file_text());
        }
        for r in &self.retired {
            text.push_str(&format!("# retired at {}: {}\n", r.retired_at, r.recipient));
        }
        text
    }

    /// The ring after a rotation at `now`: `new` is current, the current one is accepted
    /// until `now + retire_after` (retired at once when that is not later than `now`), and
    /// previous identities whose time has come are retired: their secret keys are dropped,
    /// their recipients remembered.
    pub fn rotated(
        self,
        new: SealingIdentity,
        now: Timestamp,
        retire_after: time::Duration,
    ) -> SealingRing {
        let mut previous = Vec::new();
        let mut retired = Vec::new();
        let old = std::iter::once(Previous {
            identity: self.current,
            retires_at: now.plus(retire_after),
        });
        for p in old.chain(self.previous) {
            if p.retires_at > now {
                previous.push(p);
            } else {
                retired.push(Retired {
                    recipient: p.identity.recipient().to_string(),
                    retired_at: p.retires_at,
                });
            }
        }
        retired.extend(self.retired);
        retired.sort_by_key(|r| std::cmp::Reverse(r.retired_at));
        retired.truncate(RETIRED_KEPT);
        SealingRing {
            current: new,
            previous,
            retired,
        }
    }

    /// The identity that opens a bundle with this sealing block at `now`: the current one
    /// for a bundle sealed to it (or not sealed, or sealed to another receiver: reading the
    /// payload then refuses it naming both), a previous one not yet retired for a bundle
    /// sealed to it; a bundle sealed only to a retired identity is refused (`422
    /// seal-recipient-retired`) naming it.
    pub fn identity_for(
        &self,
        sealing: Option<&SealingBlock>,
        now: Timestamp,
    ) -> Result<&SealingIdentity, Problem> {
        let Some(sealing) = sealing else {
            return Ok(&self.current);
        };
        let current = self.current.recipient().to_string();
        if sealing.recipients().any(|r| r == current) {
            return Ok(&self.current);
        }
        let mut retired_here = None;
        for p in &self.previous {
            let recipient = p.identity.recipient().to_string();
            if sealing.recipients().any(|r| r == recipient) {
                if now < p.retires_at {
                    return Ok(&p.identity);
                }
                retired_here.get_or_insert((recipient, p.retires_at));
            }
        }
        let retired_here = retired_here.or_else(|| {
            self.retired
                .iter()
                .find(|r| sealing.recipients().any(|s| s == r.recipient))
                .map(|r| (r.recipient.clone(), r.retired_at))
        });
        match retired_here {
            Some((recipient, at)) => Err(Problem::unprocessable(
                ProblemCode::SealRecipientRetired,
                format!(
                    "the bundle is sealed to {recipient}, a previous sealing key of this receiver that retired at {at}; package it again sealed to {current} (GET /v1/keys)"
                ),
            )
            .with("retired_recipient", serde_json::Value::String(recipient))),
            None => Ok(&self.current),
        }
    }

    /// `GET /v1/keys`: the current recipient, and the previous ones still accepted at `now`
    /// with when each retires.
    pub fn keys_json(&self, now: Timestamp) -> serde_json::Value {
        let previous: Vec<_> = self
            .previous
            .iter()
            .filter(|p| now < p.retires_at)
            .map(|p| {
                serde_json::json!({
                    "recipient": p.identity.recipient().to_string(),
                    "retires_at": p.retires_at.to_string(),
                })
            })
            .collect();
        serde_json::json!({
            "sealing_recipient": self.current.recipient().to_string(),
            "previous": previous,
        })
    }
}

/// What tells a replaced file from the one read: device, inode, size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// The sealing ring of a running server, read again from its file when the file is replaced.
pub struct Sealing {
    /// The identity file; `None`: a fixed ring (tests).
    path: Option<PathBuf>,
    state: RwLock<(Option<FileStamp>, Arc<SealingRing>)>,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Sealing {
    /// Reads the identity file at `path`, and follows it from then on.
    pub fn load(path: &Path) -> anyhow::Result<Sealing> {
        let stamp = FileStamp::of(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let ring = read_ring(path)?;
        Ok(Sealing {
            path: Some(path.to_owned()),
            state: RwLock::new((Some(stamp), Arc::new(ring))),
        })
    }

    /// A fixed ring of one identity, never read from a file.
    pub fn fixed(identity: SealingIdentity) -> Sealing {
        Sealing {
            path: None,
            state: RwLock::new((None, Arc::new(SealingRing::single(identity)))),
        }
    }

    /// The ring as the file holds it now: read again when the file was replaced since it was
    /// last read. A file that cannot be read (it never is, written atomically) keeps the ring
    /// last read, with an error in the log.
    pub fn ring(&self) -> Arc<SealingRing> {
        let (stamp, ring) = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            (state.0, state.1.clone())
        };
        let Some(path) = &self.path else {
            return ring;
        };
        let now = match FileStamp::of(path) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot look at the sealing identity file; keeping the identities read before");
                return ring;
            }
        };
        if Some(now) == stamp {
            return ring;
        }
        match read_ring(path) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                *state = (Some(now), fresh.clone());
                tracing::info!(sealing_recipient = %fresh.current.recipient(), previous = fresh.previous.len(), "sealing identities read again");
                fresh
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the sealing identity file; keeping the identities read before");
                ring
            }
        }
    }

    /// The current recipient.
    pub fn recipient(&self) -> flowpack_shared::seal::SealingRecipient {
        self.ring().current.recipient()
    }
}

/// Reads and parses an identity file.
pub fn read_ring(path: &Path) -> anyhow::Result<SealingRing> {
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
    );
    SealingRing::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The id of an at-rest master key: 16 hex digits, derived from it by HKDF-SHA256 (it reveals
/// nothing of the key). The store records the id of the key its secrets are encrypted under.
pub fn at_rest_key_id(master: &SecretBytes<32>) -> String {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"flowpack-receiver/1");
    let prk = salt.extract(master.expose());
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    // HKDF-SHA256 expands to up to 255 * 32 bytes; 32 is within that, so neither step fails.
    let ok = prk
        .expand(&[b"at-rest key id"], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(out.as_mut()));
    debug_assert!(ok.is_ok());
    hex::encode(&out[..8])
}

/// Reads an at-rest master key file: exactly 32 bytes; `None` when there is no such file.
pub fn read_master(path: &Path) -> anyhow::Result<Option<SecretBytes<32>>> {
    let bytes = match fs::read(path) {
        Ok(b) => zeroize::Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: expected exactly 32 bytes", path.display()))?;
    Ok(Some(SecretBytes::new(key)))
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a temporary
/// file of mode 0600 in the same directory, synced, renamed over `path`, then the directory
/// synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{}: no parent directory", path.display()))?;
    // tempfile creates its files with mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| anyhow::anyhow!("creating a file in {}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("replacing {}: {}", path.display(), e.error))?;
    sync_dir(dir)
}

/// Syncs a directory, so that renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| anyhow::anyhow!("syncing {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpack_shared::bundle::manifest::Sealing as Block;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    fn sealed_to(r: &[String]) -> Block {
        Block {
            recipient: r[0].clone(),
            other_recipients: r[1..].to_vec(),
            wrapped_key: String::new(),
        }
    }

    #[test]
    fn an_init_identity_file_reads_as_a_ring_of_one() -> anyhow::Result<()> {
        let id = SealingIdentity::generate();
        let ring = SealingRing::parse(&id.to_file_text())?;
        assert_eq!(ring.current.recipient(), id.recipient());
        assert!(ring.previous.is_empty() && ring.retired.is_empty());
        Ok(())
    }

    #[test]
    fn a_rotated_ring_round_trips_and_its_first_identity_is_the_current_one() -> anyhow::Result<()>
    {
        let now = t("2026-11-30T12:00:00.000Z");
        let a = SealingIdentity::generate();
        let a_r = a.recipient().to_string();
        let b = SealingIdentity::generate();
        let b_r = b.recipient().to_string();
        let c = SealingIdentity::generate();
        let ring = SealingRing::single(a).rotated(b, now, time::Duration::days(7));
        // Rotated again eight days later: `a` has retired and loses its secret key.
        let later = now.plus(time::Duration::days(8));
        let ring = ring.rotated(c, later, time::Duration::days(7));
        let text = ring.to_file_text();
        let again = SealingRing::parse(&text)?;
        assert_eq!(again.current.recipient(), ring.current.recipient());
        assert_eq!(again.previous.len(), 1);
        assert_eq!(again.previous[0].identity.recipient().to_string(), b_r);
        assert_eq!(
            again.previous[0].retires_at,
            later.plus(time::Duration::days(7))
        );
        assert_eq!(
            again.retired,
            [Retired {
                recipient: a_r,
                retired_at: now.plus(time::Duration::days(7))
            }]
        );
        // What a receiver that knows one identity reads: the current one.
        assert_eq!(
            SealingIdentity::parse(&text)?.recipient(),
            ring.current.recipient()
        );
        Ok(())
    }

    #[test]
    fn a_previous_identity_opens_until_it_retires_then_is_refused_by_name() {
        let now = t("2026-11-30T12:00:00.000Z");
        let old = SealingIdentity::generate();
        let old_r = old.recipient().to_string();
        let new = SealingIdentity::generate();
        let new_r = new.recipient().to_string();
        let ring = SealingRing::single(old).rotated(new, now, time::Duration::days(7));
        let block = sealed_to(std::slice::from_ref(&old_r));
        let before = now.plus(time::Duration::days(7) - time::Duration::milliseconds(1));
        let chosen = ring
            .identity_for(Some(&block), before)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(chosen.recipient().to_string(), old_r);
        let keys = ring.keys_json(before);
        assert_eq!(keys["sealing_recipient"], new_r.as_str());
        assert_eq!(keys["previous"][0]["recipient"], old_r.as_str());
        assert_eq!(
            keys["previous"][0]["retires_at"],
            "2026-12-07T12:00:00.000Z"
        );

        let at = now.plus(time::Duration::days(7));
        let Err(e) = ring.identity_for(Some(&block), at) else {
            panic!("a retired recipient is accepted");
        };
        assert_eq!(e.code, ProblemCode::SealRecipientRetired);
        assert!(
            e.detail.contains(&old_r) && e.detail.contains(&new_r),
            "{}",
            e.detail
        );
        assert_eq!(ring.keys_json(at)["previous"], serde_json::json!([]));
        // Sealed to both: the current one opens it.
        let both = sealed_to(&[old_r.clone(), new_r.clone()]);
        let chosen = ring
            .identity_for(Some(&both), at)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(chosen.recipient().to_string(), new_r);
        // Another receiver's: left to the payload reader, which names both.
        let other = sealed_to(&[SealingIdentity::generate().recipient().to_string()]);
        let chosen = ring
            .identity_for(Some(&other), at)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(chosen.recipient().to_string(), new_r);
    }

    #[test]
    fn a_ring_retired_at_once_keeps_only_the_recipient() -> anyhow::Result<()> {
        let now = t("2026-11-30T12:00:00.000Z");
        let old = SealingIdentity::generate();
        let old_r = old.recipient().to_string();
        let old_secret = old.to_file_text();
        let ring = SealingRing::single(old).rotated(
            SealingIdentity::generate(),
            now,
            time::Duration::ZERO,
        );
        assert!(ring.previous.is_empty());
        let text = ring.to_file_text();
        let secret_line = old_secret
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap_or_default();
        assert!(
            !text.contains(secret_line),
            "the retired secret key is kept"
        );
        let Err(e) = SealingRing::parse(&text)?
            .identity_for(Some(&sealed_to(std::slice::from_ref(&old_r))), now)
        else {
            panic!("a retired recipient is accepted");
        };
        assert!(e.detail.contains(&old_r), "{}", e.detail);
        Ok(())
    }

    #[test]
    fn malformed_identity_files_are_refused_by_line() {
        let id = SealingIdentity::generate();
        let key = id.to_file_text();
        for (text, line) in [
            (String::new(), None),
            ("# only a comment\n".to_owned(), None),
            (
                format!("# retires at: 2026-11-30T12:00:00.000Z\n{}", &*key),
                Some(1),
            ),
            (
                format!("{}{}", &*key, &*SealingIdentity::generate().to_file_text()),
                Some(4),
            ),
            (format!("{}# retires at: tomorrow\n", &*key), Some(3)),
            (
                format!("{}# retires at: 2026-11-30T12:00:00.000Z\n", &*key),
                Some(3),
            ),
            (
                format!("{}# retired at 2026-11-30T12:00:00.000Z: age1nope\n", &*key),
                Some(3),
            ),
            ("AGE-SECRET-KEY-1NOPE\n".to_owned(), Some(1)),
        ] {
            let e = SealingRing::parse(&text)
                .err()
                .unwrap_or_else(|| panic!("{text}"));
            let shown = e.to_string();
            if let Some(n) = line {
                assert!(shown.starts_with(&format!("line {n}:")), "{shown}");
            }
            let secret = key.lines().find(|l| l.starts_with("AGE-SECRET-KEY-1"));
            assert!(!shown.contains(secret.unwrap_or("?")), "{shown}");
        }
    }
}
