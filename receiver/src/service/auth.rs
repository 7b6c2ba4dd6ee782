//! Bearer tokens, principals and their grants, and their administration (issue with an
//! optional expiry, list, revoke).
//!
//! A token is `fpt_<id>_<secret>`: `id` is 16 hex digits (the lookup key, which listings
//! show), `secret` 32 random bytes in base64url. The database holds the id and SHA-256 of the
//! secret only; the secret is compared in constant time. Tokens and grants are read from the
//! database on every request, with no cache, so `token create` and `token revoke` take effect
//! while `serve` runs.

use base64::Engine;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::random;
use subtle::ConstantTimeEq;

use flowpack_shared::timefmt::Timestamp;

use crate::problem::Problem;
use crate::store::{self, Reads, Store};

/// How stale a token's recorded last use may be. Authentication reads the recorded time in
/// the statement it already runs and queues an update only when it is older than this, off
/// the request's path ([`Reads::note_token_used`]): a token in steady use costs one small write
/// a minute, batched with the deploys' commits, and no request waits for the writer lock or
/// the disk. "Last used" is therefore exact to the minute.
pub const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// A permission on a container prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// List and show.
    Read,
    /// Deploy, delete, change.
    Write,
    /// Resolve credentials, obtain tokens.
    Use,
}

impl Perm {
    /// The permission's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::Use => "use",
        }
    }

    fn parse(s: &str) -> Option<Perm> {
        Some(match s {
            "read" => Perm::Read,
            "write" => Perm::Write,
            "use" => Perm::Use,
            _ => return None,
        })
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet {
    read: bool,
    write: bool,
    usage: bool,
}

impl PermSet {
    /// read, write and use.
    pub fn all() -> PermSet {
        PermSet {
            read: true,
            write: true,
            usage: true,
        }
    }

    /// True when `p` is in the set.
    pub fn has(self, p: Perm) -> bool {
        match p {
            Perm::Read => self.read,
            Perm::Write => self.write,
            Perm::Use => self.usage,
        }
    }

    fn insert(&mut self, p: Perm) {
        match p {
            Perm::Read => self.read = true,
            Perm::Write => self.write = true,
            Perm::Use => self.usage = true,
        }
    }

    /// Parses `read,write,use` (any non-empty subset).
    pub fn parse(s: &str) -> Result<PermSet, String> {
        let mut set = PermSet::default();
        for part in s.split(',').map(str::trim) {
            let p = Perm::parse(part).ok_or_else(|| {
                format!("unknown permission {part:?}; expected read, write or use")
            })?;
            set.insert(p);
        }
        Ok(set)
    }

    /// The set as stored: `read,use`.
    pub fn to_text(self) -> String {
        [Perm::Read, Perm::Write, Perm::Use]
            .into_iter()
            .filter(|p| self.has(*p))
            .map(Perm::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses a `--grant PREFIX=read,write,use` argument.
pub fn parse_grant(s: &str) -> Result<(ContainerPath, PermSet), String> {
    let (prefix, perms) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid grant {s:?}: expected PREFIX=read,write,use"))?;
    let prefix = ContainerPath::parse(prefix).map_err(|e| e.0)?;
    Ok((prefix, PermSet::parse(perms)?))
}

/// The root container path.
pub fn root() -> ContainerPath {
    ContainerPath::root()
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its name.
    pub name: String,
    /// Its grants.
    pub grants: Vec<(ContainerPath, PermSet)>,
}

impl Principal {
    /// True when a grant on `path` or one of its ancestors includes `perm`.
    pub fn can(&self, perm: Perm, path: &ContainerPath) -> bool {
        self.grants
            .iter()
            .any(|(prefix, set)| set.has(perm) && prefix.covers(path))
    }

    /// The containers whose listings (deployments, audit) the caller may read.
    pub fn visible(&self) -> store::Visible {
        let prefixes: Vec<&ContainerPath> = self
            .grants
            .iter()
            .filter(|(_, set)| set.has(Perm::Read))
            .map(|(prefix, _)| prefix)
            .collect();
        if prefixes.iter().any(|p| p.is_root()) {
            return store::Visible::All;
        }
        store::Visible::Under(prefixes.iter().map(|p| p.as_str().to_owned()).collect())
    }

    /// True when the caller holds `perm` anywhere.
    pub fn has_any(&self, perm: Perm) -> bool {
        self.grants.iter().any(|(_, set)| set.has(perm))
    }
}

/// A new token's text: never stored, shown once.
pub type TokenText = zeroize::Zeroizing<String>;

fn sha256(b: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, b)
}

/// Creates principal `name` if needed, adds the grants, and issues a new token for it that
/// never expires.
pub fn create_token(
    store: &Store,
    name: &str,
    grants: &[(ContainerPath, PermSet)],
) -> anyhow::Result<TokenText> {
    create_token_until(store, name, grants, None)
}

/// Like [`create_token`], for a token that is refused from `expires_at` on (`None`: never).
pub fn create_token_until(
    store: &Store,
    name: &str,
    grants: &[(ContainerPath, PermSet)],
    expires_at: Option<Timestamp>,
) -> anyhow::Result<TokenText> {
    let id = hex::encode(random::<8>().map_err(|e| anyhow::anyhow!("{e}"))?);
    let secret = zeroize::Zeroizing::new(random::<32>().map_err(|e| anyhow::anyhow!("{e}"))?);
    let secret_text = zeroize::Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret[..]),
    );
    let mut db = store.db()?;
    let tx = db.write()?;
    let pid = tx.ensure_principal(name)?;
    for (prefix, perms) in grants {
        tx.add_grant(pid, prefix.as_str(), &perms.to_text())?;
    }
    tx.insert_token(
        &id,
        pid,
        sha256(secret_text.as_bytes()).as_ref(),
        expires_at.map(Timestamp::unix_millis),
    )?;
    tx.commit()?;
    Ok(zeroize::Zeroizing::new(format!(
        "fpt_{id}_{}",
        secret_text.as_str()
    )))
}

/// Why [`authenticate`] could not answer with a principal or `None`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The store failed (500).
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The token is valid (its secret matched) but past its expiry (401).
    #[error("the token has expired")]
    Expired,
}

impl From<AuthError> for Problem {
    /// An expired token is a 401 that says so, and only that: the caller already holds the
    /// token, and nothing is said of any other. An unknown token's 401 stays the generic one.
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(e) => e.into(),
            AuthError::Expired => Problem {
                detail: "this token has expired; ask an administrator for a new one".into(),
                ..Problem::unauthorized()
            },
        }
    }
}

/// Finds the principal a token belongs to; `None` for any token that is not valid (malformed,
/// unknown, revoked, or a wrong secret), [`AuthError::Expired`] for a valid one past its
/// expiry. Records the token's use (see [`LAST_USED_RESOLUTION_MS`]).
pub fn authenticate(db: &dyn Reads, token: &str) -> Result<Option<Principal>, AuthError> {
    Ok(authenticate_with_facts(db, token)?.map(|(who, _)| who))
}

/// [`authenticate`], also returning what the check rested on, so that it can be made again
/// without the store (see [`TokenFacts::check`]).
pub fn authenticate_with_facts(
    db: &dyn Reads,
    token: &str,
) -> Result<Option<(Principal, TokenFacts)>, AuthError> {
    let Some((id, secret)) = split_token(token) else {
        return Ok(None);
    };
    let presented = sha256(secret.as_bytes());
    let Some(found) = db.principal_by_token(id)? else {
        return Ok(None);
    };
    let facts = TokenFacts {
        secret_sha256: found.secret_sha256,
        expires_at_ms: found.expires_at_ms,
        last_used_at_ms: found.last_used_at_ms,
    };
    let now = db.time().unix_millis();
    match facts.check(presented.as_ref(), now) {
        TokenCheck::Invalid => return Ok(None),
        TokenCheck::Expired => return Err(AuthError::Expired),
        TokenCheck::Valid { use_due: true } => db.note_token_used(id, now),
        TokenCheck::Valid { use_due: false } => {}
    }
    let mut grants = Vec::new();
    for (prefix, perms) in found.grants {
        // Rows are written by this program; a row that does not parse grants nothing.
        if let (Ok(p), Ok(s)) = (ContainerPath::parse(&prefix), PermSet::parse(&perms)) {
            grants.push((p, s));
        }
    }
    let who = Principal {
        name: found.principal,
        grants,
    };
    Ok(Some((who, facts)))
}

/// A well-formed token's id (16 hex digits) and secret; `None` for anything else.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix("fpt_")?.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((id, secret))
}

/// SHA-256 of a token's secret, as it is stored and compared.
pub fn secret_digest(secret: &str) -> ring::digest::Digest {
    sha256(secret.as_bytes())
}

/// What a token's check rests on, as its row held it: the stored hash of its secret, its
/// expiry and its last recorded use.
#[derive(Debug, Clone)]
pub struct TokenFacts {
    /// SHA-256 of the token's secret.
    pub secret_sha256: Vec<u8>,
    /// When it expires (Unix milliseconds); `None`: never.
    pub expires_at_ms: Option<i64>,
    /// When its use was last recorded (Unix milliseconds); `None`: never.
    pub last_used_at_ms: Option<i64>,
}

/// What [`TokenFacts::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// The secret does not match.
    Invalid,
    /// The secret matches, and the token has expired.
    Expired,
    /// The secret matches and the token is in force; `use_due`: its use should be recorded.
    Valid {
        /// The last recorded use is older than [`LAST_USED_RESOLUTION_MS`].
        use_due: bool,
    },
}

impl TokenFacts {
    /// Checks a presented secret's SHA-256 against the stored one (in constant time), then
    /// the expiry at `now_ms`. Expiry is told only to a caller that holds the secret: the id
    /// alone (which listings show) learns nothing.
    pub fn check(&self, presented_sha256: &[u8], now_ms: i64) -> TokenCheck {
        // Both are SHA-256 digests; a stored hash of another length compares unequal.
        if !bool::from(self.secret_sha256.as_slice().ct_eq(presented_sha256)) {
            return TokenCheck::Invalid;
        }
        if self.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return TokenCheck::Expired;
        }
        let use_due = self
            .last_used_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= LAST_USED_RESOLUTION_MS);
        TokenCheck::Valid { use_due }
    }
}

/// A token as `token list` shows it: never its secret, nor the secret's hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    /// The token id: the 16 hex digits after `fpt_`.
    pub id: String,
    /// Its principal.
    pub principal: String,
    /// The principal's grants.
    pub grants: Vec<GrantInfo>,
    /// When it was issued.
    pub created_at: String,
    /// When it expires; `None`: never.
    pub expires_at: Option<Timestamp>,
    /// True when it has expired.
    pub expired: bool,
    /// When it was last used (to the minute, see [`LAST_USED_RESOLUTION_MS`]); `None`: never.
    pub last_used_at: Option<Timestamp>,
}

/// A grant as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrantInfo {
    /// The container prefix.
    pub prefix: String,
    /// `read`, `write`, `use`.
    pub perms: Vec<String>,
}

/// Every token, by principal name, then issue time.
pub fn list_tokens(store: &Store) -> anyhow::Result<Vec<TokenInfo>> {
    let db = store.db()?;
    let now = db.time();
    let time = |ms: Option<i64>| ms.and_then(Timestamp::from_unix_millis);
    Ok(db
        .tokens()?
        .into_iter()
        .map(|t| TokenInfo {
            expired: time(t.expires_at_ms).is_some_and(|at| now >= at),
            expires_at: time(t.expires_at_ms),
            last_used_at: time(t.last_used_at_ms),
            grants: t
                .grants
                .into_iter()
                .map(|(prefix, perms)| GrantInfo {
                    prefix,
                    perms: perms
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect(),
                })
                .collect(),
            id: t.id,
            principal: t.principal,
            created_at: t.created_at,
        })
        .collect())
}

/// What [`revoke`] revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// One token, by its id.
    Token {
        /// The token id.
        id: String,
        /// Its principal.
        principal: String,
    },
    /// Every token of a principal, by its name (the principal and its grants stay, for the
    /// next token issued to it).
    Principal {
        /// The principal.
        name: String,
        /// The ids of the tokens revoked (none when it had none left).
        ids: Vec<String>,
    },
}

/// Revokes token `what` (a token id), or else every token of principal `what`; `None` when
/// `what` is neither. Takes effect at the next request, as every request reads its token.
pub fn revoke(store: &Store, what: &str) -> anyhow::Result<Option<Revoked>> {
    let mut db = store.db()?;
    let tx = db.write()?;
    let is_id = what.len() == 16 && what.bytes().all(|b| b.is_ascii_hexdigit());
    let revoked = match is_id.then(|| tx.delete_token(what)).transpose()?.flatten() {
        Some(principal) => Some(Revoked::Token {
            id: what.to_owned(),
            principal,
        }),
        None => tx.delete_tokens_of(what)?.map(|ids| Revoked::Principal {
            name: what.to_owned(),
            ids,
        }),
    };
    tx.commit()?;
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_inherit_down_the_tree_segment_wise() {
        let p = |s| ContainerPath::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let who = Principal {
            name: "ci".into(),
            grants: vec![(p("/public"), PermSet::parse("read,use").unwrap_or_default())],
        };
        assert!(who.can(Perm::Read, &p("/public/orders")));
        assert!(!who.can(Perm::Write, &p("/public/orders")));
        assert!(!who.can(Perm::Read, &p("/publicity")));
        assert!(!who.can(Perm::Read, &p("/")));
    }

    #[tokio::test]
    async fn last_use_is_recorded_at_most_once_a_minute_and_expiry_is_checked_on_the_clock() {
        use std::sync::atomic::Ordering;
        let (ms, clock) = store::settable_clock();
        let start = ms.load(Ordering::SeqCst);
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store =
            Store::create(&tmp.path().join("store.db"), clock).unwrap_or_else(|e| panic!("{e}"));
        let expires = Timestamp::from_unix_millis(start + 3 * 60_000);
        let token =
            create_token_until(&store, "ci", &[], expires).unwrap_or_else(|e| panic!("{e}"));
        let id = &token[4..20];
        // Authenticates at `at` (milliseconds after the start), waits until the writer has
        // committed what that queued, and returns the recorded last use.
        let use_at = |at: i64| {
            ms.store(start + at, Ordering::SeqCst);
            let db = store.db().unwrap_or_else(|e| panic!("{e}"));
            let who = authenticate(db.reads(), &token);
            let written = store.write_grouped((), |_| -> store::Result<()> { Ok(()) });
            async move {
                written.await.unwrap_or_else(|e| panic!("{e}"));
                let used = db
                    .principal_by_token(id)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .and_then(|t| t.last_used_at_ms)
                    .map(|t| t - start);
                (who.map(|w| w.map(|p| p.name)), used)
            }
        };
        let ci = || Some("ci".to_owned());
        let (who, used) = use_at(0).await;
        assert_eq!((who.ok(), used), (Some(ci()), Some(0)));
        let (_, used) = use_at(59_999).await;
        assert_eq!(used, Some(0), "within the minute: not written again");
        let (_, used) = use_at(60_000).await;
        assert_eq!(used, Some(60_000));
        let (_, used) = use_at(179_999).await;
        assert_eq!(used, Some(179_999));
        let (who, used) = use_at(180_000).await;
        assert!(matches!(who, Err(AuthError::Expired)), "{who:?}");
        assert_eq!(
            used,
            Some(179_999),
            "an expired token's use is not recorded"
        );
    }

    #[test]
    fn grant_argument_is_parsed_strictly() {
        assert!(parse_grant("/public=read,write").is_ok());
        assert!(parse_grant("/public=admin").is_err());
        assert!(parse_grant("public=read").is_err());
        assert!(parse_grant("/public").is_err());
    }
}
