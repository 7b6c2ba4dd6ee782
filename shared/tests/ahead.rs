//! Mapping files checked on other threads while the payload is read
//! (`OpenBundle::stream_payload_ahead`): the sink sees exactly the files it keeps, and every
//! outcome, a refusal included, is the one a single reading thread gives.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Cursor;
use std::path::Path;

use common::*;
use flowpack_shared::bundle::read::{Ahead, OpenBundle};
use flowpack_shared::bundle::write::MappingInput;
use flowpack_shared::keys::SigningKey;
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::names::Name;
use flowpack_shared::zipfmt::Limits;

/// Files per mapping: more than one run of files handed over at once.
const FILES: usize = 150;

/// Text that deflate shrinks, different for every `seed`.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = ["<row id=", "\"/>\n", "order", "line", "42", " "];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(words[(x % 6) as usize].as_bytes());
        v.extend_from_slice(&(x >> 40).to_le_bytes()[..2]);
    }
    v.truncate(len);
    v
}

/// Mappings `a`, `b` and `c`, each with [`FILES`] files of 1 to 9 KiB.
fn project(dir: &Path) -> Vec<MappingInput> {
    ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            let files: Vec<String> = (0..FILES).map(|i| format!("f{i:03}.xml")).collect();
            for (i, f) in files.iter().enumerate() {
                let seed = (m * FILES + i) as u64;
                std::fs::write(d.join(f), text(seed, 1024 + (seed as usize * 977) % 8192)).unwrap();
            }
            let def = serde_json::json!({ "name": name, "files": files });
            MappingInput {
                mapping: Mapping::parse("m", def.to_string().as_bytes()).unwrap(),
                dir: d,
            }
        })
        .collect()
}

fn bundle() -> (SigningKey, Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let m = project(dir.path());
    let key = SigningKey::generate().unwrap();
    let bytes = write(&key, &opts("/p", None), &m, &[]);
    (key, bytes, dir)
}

/// Flips a byte inside the data of the entry named `name`.
fn corrupt(bytes: &mut [u8], name: &str) {
    let at = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    bytes[at + name.len() + 40] ^= 0x5A;
}

/// The files handed to the sink, in order, and the outcome (the error's code and message).
type Outcome = (Vec<(String, Vec<u8>)>, Result<usize, (String, String)>);

/// Reads the payload with one thread; the sink keeps the files of mappings `keep` takes and
/// drains the others.
fn sequential(bytes: &[u8], key: &SigningKey, keep: &dyn Fn(&Name) -> bool) -> Outcome {
    let trust = trust_all(key);
    let mut b = OpenBundle::open(Cursor::new(bytes), &Limits::default(), &trust).unwrap();
    let mut seen = Vec::new();
    let read = b.read_payload(None, &mut |m, p, _, r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        if keep(m) {
            seen.push((format!("{m}/{p}"), v));
        }
        Ok(())
    });
    let read = read.map(|p| p.mappings.len());
    (seen, read.map_err(|e| (e.code().to_owned(), e.to_string())))
}

/// Reads the payload with the files of mappings `keep` does not take checked ahead, each
/// checking thread with a reader opened by `reopen`.
fn ahead<'b>(
    bytes: &'b [u8],
    key: &SigningKey,
    keep: &dyn Fn(&Name) -> bool,
    reopen: &(dyn Fn() -> std::io::Result<Cursor<&'b [u8]>> + Sync),
) -> Outcome {
    let trust = trust_all(key);
    let mut b = OpenBundle::open(Cursor::new(bytes), &Limits::default(), &trust).unwrap();
    let mut seen = Vec::new();
    let mut skipped = 0usize;
    let mut skip = |m: &Name, _: &_, _| {
        skipped += usize::from(!keep(m));
        Ok(!keep(m))
    };
    let read = b.stream_payload_ahead(
        None,
        Ahead {
            skip: &mut skip,
            reopen,
        },
        &mut |m, p, _, r| {
            assert!(keep(m), "{m}/{p} was to be checked ahead, not handed over");
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            seen.push((format!("{m}/{p}"), v));
            Ok(())
        },
        &mut |_| Ok::<(), flowpack_shared::bundle::BundleError>(()),
    );
    let read = read.map(|m| m.len());
    (seen, read.map_err(|e| (e.code().to_owned(), e.to_string())))
}

fn keep_a_and_c(m: &Name) -> bool {
    m.as_str() != "b"
}

#[test]
fn files_checked_ahead_are_not_handed_over_and_the_rest_are_in_order() {
    let (key, bytes, _dir) = bundle();
    let reopen = || Ok(Cursor::new(&bytes[..]));
    let one = sequential(&bytes, &key, &keep_a_and_c);
    let two = ahead(&bytes, &key, &keep_a_and_c, &reopen);
    assert_eq!(one.1, Ok(3));
    assert_eq!(one.0.len(), 2 * FILES);
    assert_eq!(one, two);
    // Everything checked ahead, nothing handed over.
    let none = ahead(&bytes, &key, &|_| false, &reopen);
    assert_eq!(none, (Vec::new(), Ok(3)));
}

#[test]
fn a_bad_file_checked_ahead_is_refused_as_one_thread_refuses_it() {
    let (key, mut bytes, _dir) = bundle();
    corrupt(&mut bytes, "mappings/b/files/f077.xml");
    let reopen = || Ok(Cursor::new(&bytes[..]));
    let one = sequential(&bytes, &key, &keep_a_and_c);
    let two = ahead(&bytes, &key, &keep_a_and_c, &reopen);
    let (code, message) = one.1.clone().unwrap_err();
    assert!(
        ["size-mismatch", "crc-mismatch", "digest-mismatch"].contains(&code.as_str()),
        "{code}: {message}"
    );
    assert!(message.contains("mappings/b/files/f077.xml"), "{message}");
    assert_eq!(one.1, two.1);
}

#[test]
fn of_two_bad_files_the_first_in_bundle_order_is_reported() {
    let (key, clean, _dir) = bundle();
    // A file checked ahead before one read by this thread, and the other way round.
    for (first, second) in [
        ("mappings/b/files/f010.xml", "mappings/c/files/f140.xml"),
        ("mappings/a/files/f140.xml", "mappings/b/files/f003.xml"),
        ("mappings/b/files/f020.xml", "mappings/b/files/f120.xml"),
    ] {
        let mut bytes = clean.clone();
        corrupt(&mut bytes, first);
        corrupt(&mut bytes, second);
        let reopen = || Ok(Cursor::new(&bytes[..]));
        let (_, read) = ahead(&bytes, &key, &keep_a_and_c, &reopen);
        let (_, message) = read.unwrap_err();
        assert!(message.contains(first), "{first} then {second}: {message}");
        assert_eq!(read_err(sequential(&bytes, &key, &keep_a_and_c)), message);
    }
}

fn read_err(o: Outcome) -> String {
    o.1.unwrap_err().1
}

#[test]
fn a_checking_thread_that_cannot_open_its_reader_refuses_the_bundle() {
    let (key, bytes, _dir) = bundle();
    let reopen = || Err(std::io::Error::other("no second reader"));
    let (_, read) = ahead(&bytes, &key, &keep_a_and_c, &reopen);
    let (_, message) = read.unwrap_err();
    assert!(message.contains("no second reader"), "{message}");
}
