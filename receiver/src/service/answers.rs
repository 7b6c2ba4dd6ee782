//! The credential answer cache: the redacted record `GET /v1/credentials/{path}` answers, and
//! the tokens that read it, kept for as long as the store has not changed.
//!
//! **Invalidation.** Everything kept was read at one [`Generation`] of the store, and is
//! served only while the store is still at that generation: every lookup reads the store's
//! generation first (no query: see [`Store::generation`]), and a different one empties the
//! cache. The generation changes with every commit of any process that shares the store, so a
//! token revoked or a credential changed — by this server, by `flowpack-receiver token revoke`
//! in another process, by anything that writes the database — is never answered from here
//! once its write has committed. What is kept was read after its generation was (see
//! [`Answers::keep`]), so it is never older than the generation it is filed under. When the
//! engine cannot tell its generation (PostgreSQL, where another node's commit is seen only by
//! asking the database), nothing is kept and every read goes to the store.
//!
//! **What a hit still checks.** The token's secret against its stored hash, its expiry
//! against the clock, the principal's read grant on the container; a token whose last use is
//! due to be recorded goes to the store, which records it (a write, so a new generation). A
//! miss, a refusal or an error is always answered by the store, as without the cache.
//!
//! **What is kept.** Redacted records (never a secret: only what the answer shows), and per
//! token its principal, the SHA-256 of its secret (as the store holds it), its expiry and last
//! use. At most [`MAX_TOKENS`] tokens, and records and tokens that count for at most the
//! configured memory (`answer_cache_mib`; counted with their keys and a fixed cost per entry);
//! past either, everything is dropped and the cache fills again. A limit of 0 keeps nothing.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use flowpack_shared::names::{ContainerPath, Name};

use super::auth::{Perm, Principal, TokenCheck, TokenFacts, secret_digest, split_token};
use crate::store::{Generation, Store};

/// At most this many tokens are kept.
pub const MAX_TOKENS: usize = 1024;
/// A record or token that counts for more than this is not kept.
const MAX_ENTRY: usize = 64 << 10;

/// What an entry of a map costs beyond its contents (the slot, the allocations' headers).
const ENTRY: usize = 128;

/// The memory a kept record counts for.
fn record_cost(path: &str, record: &[u8]) -> usize {
    ENTRY + path.len() + record.len()
}

/// The memory a kept token counts for: its principal's grants are copied with it.
fn token_cost(id: &str, who: &Principal) -> usize {
    let grants: usize = who
        .grants
        .iter()
        .map(|(prefix, _)| ENTRY + prefix.as_str().len())
        .sum();
    ENTRY + id.len() + who.name.len() + grants
}

/// The cache; one per server.
#[derive(Debug, Default)]
pub struct Answers {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// The generation everything below was read at; `None`: nothing is kept.
    at: Option<Generation>,
    /// By token id.
    tokens: HashMap<String, (Principal, TokenFacts)>,
    /// By credential path.
    records: HashMap<String, Bytes>,
    /// What the records and tokens kept count for ([`record_cost`], [`token_cost`]).
    bytes: usize,
}

impl Kept {
    fn clear(&mut self, at: Option<Generation>) {
        self.at = at;
        self.tokens.clear();
        self.records.clear();
        self.bytes = 0;
    }
}

impl Answers {
    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer to `token` reading credential `n` of `c`, when it is kept and the store is
    /// still at the generation it was read at: the principal's name and the record. `None`
    /// sends the read to the store.
    pub fn credential(
        &self,
        store: &Store,
        token: &str,
        c: &ContainerPath,
        n: &Name,
    ) -> Option<(String, Bytes)> {
        // First, so that an engine with no generation costs nothing more.
        let now = store.generation()?;
        let (id, secret) = split_token(token)?;
        let presented = secret_digest(secret);
        let path = c.object_path(n);
        let mut kept = self.lock();
        // Nothing kept yet.
        kept.at?;
        if kept.at != Some(now) {
            kept.clear(None);
            return None;
        }
        let (who, facts) = kept.tokens.get(id)?;
        if facts.check(presented.as_ref(), store.time().unix_millis())
            != (TokenCheck::Valid { use_due: false })
            || !who.can(Perm::Read, c)
        {
            return None;
        }
        let record = kept.records.get(&path)?.clone();
        Some((who.name.clone(), record))
    }

    /// Keeps what the store answered when `token` (a valid one, whose facts are `facts`) read
    /// credential `n` of `c`: `record`. `at` is the store's generation read **before** the
    /// reads that produced the answer, so the answer is at least as new as `at`; if the store
    /// changed in between, the cache is emptied at the next lookup.
    /// Keeps nothing when `max_bytes` (what everything kept may count for) is 0.
    #[allow(clippy::too_many_arguments)]
    pub fn keep(
        &self,
        max_bytes: usize,
        at: Generation,
        token: &str,
        who: &Principal,
        facts: &TokenFacts,
        c: &ContainerPath,
        n: &Name,
        record: &Bytes,
    ) {
        let Some((id, _)) = split_token(token) else {
            return;
        };
        let path = c.object_path(n);
        let (token_cost, record_cost) = (token_cost(id, who), record_cost(&path, record));
        if token_cost.max(record_cost) > MAX_ENTRY.min(max_bytes) {
            return;
        }
        let mut kept = self.lock();
        let new_token = !kept.tokens.contains_key(id);
        let adds = record_cost + if new_token { token_cost } else { 0 };
        if kept.at != Some(at)
            || (new_token && kept.tokens.len() >= MAX_TOKENS)
            || kept.bytes + adds > max_bytes
        {
            kept.clear(Some(at));
        }
        if !kept.tokens.contains_key(id) {
            kept.bytes += token_cost;
            kept.tokens
                .insert(id.to_owned(), (who.clone(), facts.clone()));
        }
        let path_len = path.len();
        // A copy of exactly the record's size: the answer's own buffer may be larger.
        if let Some(old) = kept.records.insert(path, Bytes::copy_from_slice(record)) {
            kept.bytes -= ENTRY + path_len + old.len();
        }
        kept.bytes += record_cost;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::service::auth::{PermSet, create_token};
    use crate::store;

    const LIMIT: usize = 1 << 20;

    /// Everything a hit checks, on a store whose clock the test moves.
    #[test]
    fn a_hit_checks_generation_secret_expiry_last_use_and_grant() {
        let (ms, clock) = store::settable_clock();
        let start = ms.load(Ordering::SeqCst);
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store =
            Store::create(&tmp.path().join("store.db"), clock).unwrap_or_else(|e| panic!("{e}"));
        let c = ContainerPath::parse("/public/orders").unwrap_or_else(|e| panic!("{e}"));
        let n = Name::parse("erp").unwrap_or_else(|e| panic!("{e}"));
        let secret = "s3cr3t-of-the-test";
        let token = format!("fpt_0123456789abcdef_{secret}");
        let who = Principal {
            name: "reader".into(),
            grants: vec![(
                ContainerPath::parse("/public").unwrap_or_else(|e| panic!("{e}")),
                PermSet::parse("read").unwrap_or_else(|e| panic!("{e}")),
            )],
        };
        let facts = TokenFacts {
            secret_sha256: secret_digest(secret).as_ref().to_vec(),
            expires_at_ms: Some(start + 120_000),
            last_used_at_ms: Some(start),
        };
        let record = Bytes::from_static(b"{\"name\":\"erp\"}");
        let answers = Answers::default();
        let lookup = |token: &str, c: &ContainerPath| answers.credential(&store, token, c, &n);

        // Nothing is kept before a first read.
        assert_eq!(lookup(&token, &c), None);
        let at = store
            .generation()
            .unwrap_or_else(|| panic!("no generation"));
        answers.keep(LIMIT, at, &token, &who, &facts, &c, &n, &record);
        let hit = Some(("reader".to_owned(), record.clone()));
        assert_eq!(lookup(&token, &c), hit);

        // A wrong secret, another container, an unknown token: to the store.
        assert_eq!(lookup("fpt_0123456789abcdef_wrong", &c), None);
        let other = ContainerPath::parse("/private").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lookup(&token, &other), None);
        assert_eq!(lookup(&format!("fpt_fedcba9876543210_{secret}"), &c), None);
        assert_eq!(lookup(&token, &c), hit);

        // A last use due to be recorded, and then an expired token: to the store.
        ms.store(start + 60_000, Ordering::SeqCst);
        assert_eq!(lookup(&token, &c), None);
        ms.store(start + 30_000, Ordering::SeqCst);
        assert_eq!(lookup(&token, &c), hit);
        ms.store(start + 120_000, Ordering::SeqCst);
        assert_eq!(lookup(&token, &c), None);
        ms.store(start, Ordering::SeqCst);
        assert_eq!(lookup(&token, &c), hit);

        // Any commit empties the cache, even one that touches nothing read.
        create_token(&store, "someone", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(store.generation(), Some(at));
        assert_eq!(lookup(&token, &c), None);
        // What was read before the commit is never filed under the new generation.
        answers.keep(LIMIT, at, &token, &who, &facts, &c, &n, &record);
        assert_eq!(lookup(&token, &c), None);
        let now = store
            .generation()
            .unwrap_or_else(|| panic!("no generation"));
        answers.keep(LIMIT, now, &token, &who, &facts, &c, &n, &record);
        assert_eq!(lookup(&token, &c), hit);
    }
}
