//! Request ids: each request's log line carries one, and its answer sends it back as
//! `X-Request-Id`.
//!
//! A request that comes with an `X-Request-Id` of 1 to 64 characters from `A-Z a-z 0-9 . _ -`
//! (a proxy's or a client's id, a UUID) keeps it, so that one id follows the request through
//! the proxy's log and ours; any other value is ignored (not refused: a log aid must not fail a
//! request) and the receiver makes one. Made ids are 16 hex digits, unique within a process:
//! a counter from a random start, mixed by a bijection so that they do not look sequential.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::Request;
use hyper::header::{HeaderName, HeaderValue};

/// The header's name.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a request.
const MAX_LEN: usize = 64;

/// A request's id, as its header value (always visible ASCII).
#[derive(Debug)]
pub(super) struct RequestId(HeaderValue);

impl RequestId {
    /// The id `req` brings, if acceptable; else a new one.
    pub(super) fn of<B>(req: &Request<B>) -> RequestId {
        match req.headers().get(X_REQUEST_ID) {
            // A clone of a parsed header shares its bytes: no allocation.
            Some(v) if acceptable(v.as_bytes()) => RequestId(v.clone()),
            _ => RequestId::new(),
        }
    }

    fn new() -> RequestId {
        static NEXT: OnceLock<AtomicU64> = OnceLock::new();
        let next = NEXT.get_or_init(|| {
            let mut seed = [0u8; 8];
            // Without randomness ids are still unique within the process, only predictable.
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
            AtomicU64::new(u64::from_le_bytes(seed))
        });
        let n = mix(next.fetch_add(1, Ordering::Relaxed));
        let mut hex = [0u8; 16];
        for (i, d) in hex.iter_mut().enumerate() {
            // A nibble is below 16.
            *d = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        // Hex digits are a valid header value.
        RequestId(HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("-")))
    }

    /// The id as text.
    pub(super) fn as_str(&self) -> &str {
        // Only visible ASCII gets here (`acceptable`, or hex digits).
        self.0.to_str().unwrap_or("-")
    }

    /// The id as a header value.
    pub(super) fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// Whether `v` is an id the receiver takes from a request.
fn acceptable(v: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// SplitMix64's finalizer: a bijection on `u64`, so distinct counters give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &[u8]) -> Request<()> {
        let mut r = Request::new(());
        r.headers_mut().insert(
            X_REQUEST_ID,
            HeaderValue::from_bytes(value).unwrap_or_else(|e| panic!("{e}")),
        );
        r
    }

    #[test]
    fn a_sane_incoming_id_is_kept_and_anything_else_replaced() {
        for kept in [
            "abc",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "a.b_c",
            &"x".repeat(64),
        ] {
            assert_eq!(RequestId::of(&with(kept.as_bytes())).as_str(), kept);
        }
        for replaced in [
            &b""[..],
            b"a b",
            b"a\"b",
            b"{}",
            b"\xff",
            "x".repeat(65).as_bytes(),
        ] {
            let id = RequestId::of(&with(replaced));
            assert_eq!(id.as_str().len(), 16, "{replaced:?}");
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn made_ids_are_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| RequestId::of(&Request::new(())).as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
    }
}
