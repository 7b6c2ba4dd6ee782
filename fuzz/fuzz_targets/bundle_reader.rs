//! Fuzz target: arbitrary bytes as a bundle, through the whole verifier the receiver runs.
//!
//! `OpenBundle::open` with fixtures/keys/signer.pub trusted for every container (and
//! other.pub for `/other`, as the hostile corpus assumes), then `check_times` at a fixed
//! clock and `read_payload` with fixtures/keys/receiver.agekey, so sealed values are opened.
//! A mutated manifest cannot carry a valid signature, so the same bytes also go through
//! `open_unverified` (what `flowpack inspect` without `--trust` runs): that path reaches the
//! manifest schema, the entry list, the age unwrap of `sealing.wrapped_key` and the payload.
//!
//! Any outcome but a panic, an abort or a sanitizer report is fine: refusals are expected.
#![no_main]

use std::io::{Cursor, Read};
use std::sync::LazyLock;

use flowpack_shared::bundle::read::{OpenBundle, TrustedSigner};
use flowpack_shared::keys::{KeyId, VerifyingKey};
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::SealingIdentity;
use flowpack_shared::timefmt::Timestamp;
use flowpack_shared::zipfmt::Limits;
use libfuzzer_sys::fuzz_target;

struct Fixed {
    signers: Vec<(VerifyingKey, ContainerPath)>,
    identity: SealingIdentity,
    now: Timestamp,
    limits: Limits,
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let key = |pem: &str| VerifyingKey::from_pem(pem).expect("fixture public key");
    let path = |p: &str| ContainerPath::parse(p).expect("fixture container");
    Fixed {
        signers: vec![
            (
                key(include_str!("../../fixtures/keys/signer.pub")),
                path("/"),
            ),
            (
                key(include_str!("../../fixtures/keys/other.pub")),
                path("/other"),
            ),
        ],
        identity: SealingIdentity::parse(include_str!("../../fixtures/keys/receiver.agekey"))
            .expect("fixture identity"),
        // Inside every valid corpus bundle's validity (created 2025-01-01, expiring 2099).
        now: Timestamp::parse("2026-01-01T00:00:00.000Z").expect("fixed clock"),
        // The defaults, but a small total so that a lying header cannot make the target
        // inflate gigabytes per input (the limit itself is one of the things under test).
        limits: Limits {
            max_total_uncompressed: 64 << 20,
            ..Limits::default()
        },
    }
});

fn trust(id: &KeyId) -> Option<TrustedSigner> {
    FIXED
        .signers
        .iter()
        .find(|(k, _)| k.key_id() == *id)
        .map(|(key, c)| TrustedSigner {
            key: key.clone(),
            containers: vec![c.clone()],
        })
}

fn drain(
    _: &flowpack_shared::names::Name,
    _: &flowpack_shared::names::RelPath,
    _: u64,
    r: &mut dyn Read,
) -> std::io::Result<()> {
    std::io::copy(r, &mut std::io::sink()).map(|_| ())
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXED;
    if let Ok(mut b) = OpenBundle::open(Cursor::new(data), &f.limits, &trust) {
        let _ = b.manifest().bundle_id.as_str();
        if b.check_times(f.now, time::Duration::minutes(5)).is_ok() {
            let _ = b.read_payload(Some(&f.identity), &mut drain);
        }
    }
    if let Ok(mut b) = OpenBundle::open_unverified(Cursor::new(data), &f.limits) {
        let _ = b.check_times(f.now, time::Duration::minutes(5));
        let _ = b.read_payload(Some(&f.identity), &mut drain);
    }
});
