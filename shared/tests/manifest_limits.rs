//! What a hostile `manifest.json` can make a reader do: one over 32 MiB inflated is refused on
//! its declared size, unread; one within it is read in one pass, kept once and verified over
//! its exact bytes; a string or a list far beyond what a bundle needs stops the parse early.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Cursor, Read};
use std::time::{Duration, Instant};

use common::*;
use flowpack_shared::bundle::Class;
use flowpack_shared::bundle::read::{OpenBundle, TrustedSigner};
use flowpack_shared::keys::SigningKey;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::zipfmt::{Limits, Method, ZipReader, ZipWriter};

const MIB: usize = 1 << 20;

/// A signed deployment bundle of the common project (no secrets carried).
fn bundle(key: &SigningKey) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (m, mut c) = project(dir.path());
    c[0].include_in_deployment = false;
    write(key, &opts("/public/orders", None), &m, &c)
}

/// Every entry of `bundle`, in order: (name, bytes).
fn entries(bundle: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = ZipReader::open(Cursor::new(bundle), &Limits::default()).unwrap();
    let names: Vec<String> = zip.entries().iter().map(|e| e.name.clone()).collect();
    names
        .into_iter()
        .map(|name| {
            let mut r = zip.next_entry().unwrap().unwrap();
            let mut data = Vec::new();
            r.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// `bundle` again with its manifest replaced by `edit(manifest)` and signed by `key` (the
/// payload unchanged, so the manifest's sizes and digests still hold).
fn with_manifest(
    bundle: &[u8],
    key: &SigningKey,
    edit: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> Vec<u8> {
    let mut all = entries(bundle);
    let manifest = edit(std::mem::take(&mut all[0].1));
    let sig = key.sign(&manifest).to_vec();
    all[0].1 = manifest;
    all[1].1 = sig;
    rezip(&all)
}

fn rezip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        let method = if name == "manifest.sig" {
            Method::Stored
        } else {
            Method::Deflate
        };
        w.add(name, method, 1, &mut &data[..], &mut |_| {}).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `n` bytes of JSON whitespace in a pseudo-random mix: deflate shrinks it about 4:1, well
/// within the 200:1 ratio limit, so only the manifest's own limit applies.
fn whitespace(n: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            [b' ', b'\t', b'\n', b'\r'][(x >> 62) as usize]
        })
        .collect()
}

fn open(bytes: &[u8], key: &SigningKey, limits: &Limits) -> Result<(), (String, Class, String)> {
    let trust = trust_all(key);
    OpenBundle::open(Cursor::new(bytes), limits, &trust)
        .map(drop)
        .map_err(|e| (e.code().to_owned(), e.class(), e.to_string()))
}

#[test]
fn a_manifest_over_32_mib_inflated_is_refused_as_too_large_unread() {
    let key = SigningKey::generate().unwrap();
    let good = bundle(&key);
    // Valid JSON, correctly signed, 33 MiB once inflated, about 9 MiB in the archive.
    let big = with_manifest(&good, &key, |mut m| {
        m.extend(whitespace(33 * MIB));
        m
    });
    let started = Instant::now();
    let (code, class, detail) = open(&big, &key, &Limits::default()).unwrap_err();
    assert_eq!(
        (code.as_str(), class),
        ("too-large", Class::TooLarge),
        "{detail}"
    );
    assert!(detail.contains("manifest.json"), "{detail}");
    assert!(detail.contains(&(32 * MIB).to_string()), "{detail}");
    // Refused on its declared size: nothing was inflated.
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_manifest_just_under_32_mib_is_read_once_and_verified_over_its_exact_bytes() {
    let key = SigningKey::generate().unwrap();
    let good = bundle(&key);
    let mut expected = Vec::new();
    let big = with_manifest(&good, &key, |mut m| {
        m.extend(whitespace(32 * MIB - m.len()));
        expected = m.clone();
        m
    });
    assert_eq!(expected.len(), 32 * MIB);
    let trust = trust_all(&key);
    let b = OpenBundle::open(Cursor::new(&big[..]), &Limits::default(), &trust).unwrap();
    assert!(b.manifest_bytes() == expected);
    let sha = ring::digest::digest(&ring::digest::SHA256, &expected);
    assert_eq!(&b.manifest_sha256()[..], sha.as_ref());

    // One whitespace byte changed after signing: the signature covers it.
    let mut all = entries(&big);
    let at = all[0].1.len() - 1;
    all[0].1[at] = if all[0].1[at] == b' ' { b'\n' } else { b' ' };
    let (code, _, _) = open(&rezip(&all), &key, &Limits::default()).unwrap_err();
    assert_eq!(code, "bad-signature");
}

#[test]
fn a_manifest_string_over_64_kib_is_refused_before_it_is_buffered_whole() {
    let key = SigningKey::generate().unwrap();
    let good = bundle(&key);
    let long = with_manifest(&good, &key, |m| {
        let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        v["environment"] = serde_json::Value::String("e".repeat(8 * MIB));
        serde_json::to_vec(&v).unwrap()
    });
    let (code, class, detail) = open(&long, &key, &Limits::default()).unwrap_err();
    assert_eq!(
        (code.as_str(), class),
        ("bad-manifest", Class::Refused),
        "{detail}"
    );
    assert!(detail.contains("65536 bytes"), "{detail}");

    // A string within the bound is read as before.
    let fine = with_manifest(&good, &key, |m| {
        let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        v["environment"] = serde_json::Value::String("e".repeat(60_000));
        serde_json::to_vec(&v).unwrap()
    });
    open(&fine, &key, &Limits::default()).unwrap();
}

#[test]
fn a_manifest_listing_more_items_than_the_entry_limit_is_refused_while_it_is_read() {
    let key = SigningKey::generate().unwrap();
    let good = bundle(&key);
    // The archive has 7 entries; the manifest lists its 5 payload entries 20 times over.
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    open(&good, &key, &limits).unwrap();
    let long = with_manifest(&good, &key, |m| {
        let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        let one = v["entries"].as_array().unwrap().clone();
        let list: Vec<_> = (0..20).flat_map(|_| one.iter().cloned()).collect();
        v["entries"] = serde_json::Value::Array(list);
        serde_json::to_vec(&v).unwrap()
    });
    let (code, class, detail) = open(&long, &key, &limits).unwrap_err();
    assert_eq!(
        (code.as_str(), class),
        ("size-limit", Class::TooLarge),
        "{detail}"
    );
    assert!(detail.contains("field `entries"), "{detail}");
    assert!(detail.contains("more than 10 items"), "{detail}");
}

#[test]
fn a_refusal_after_the_manifest_was_read_carries_what_it_claims() {
    let key = SigningKey::generate().unwrap();
    let good = bundle(&key);
    let claimed = OpenBundle::open_unverified(Cursor::new(&good[..]), &Limits::default())
        .unwrap()
        .manifest()
        .clone();

    // Unknown signer: the manifest is a claim only.
    let stranger = SigningKey::generate().unwrap();
    let r = OpenBundle::open_detailed(
        Cursor::new(&good[..]),
        &Limits::default(),
        &trust_all(&stranger),
    )
    .unwrap_err();
    assert_eq!(r.error.code(), "unknown-signer");
    assert!(!r.verified);
    assert_eq!(r.manifest.as_deref(), Some(&claimed));

    // Signed by a trusted key that may not deploy there: verified.
    let vk = key.verifying_key();
    let elsewhere = move |_: &_| {
        Some(TrustedSigner {
            key: vk.clone(),
            containers: vec![ContainerPath::parse("/other").unwrap()],
        })
    };
    let r = OpenBundle::open_detailed(Cursor::new(&good[..]), &Limits::default(), &elsewhere)
        .unwrap_err();
    assert_eq!(r.error.code(), "signer-not-allowed");
    assert!(r.verified);
    assert_eq!(r.manifest.as_deref(), Some(&claimed));

    // Refused before the manifest is read: nothing claimed.
    let big = with_manifest(&good, &key, |mut m| {
        m.extend(whitespace(33 * MIB));
        m
    });
    let r = OpenBundle::open_detailed(Cursor::new(&big[..]), &Limits::default(), &trust_all(&key))
        .unwrap_err();
    assert_eq!(r.error.code(), "too-large");
    assert!(r.manifest.is_none());
}
