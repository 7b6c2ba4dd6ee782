//! `flowpack verify` over the whole hostile corpus (fixtures/malicious/): every valid bundle
//! verifies (exit 0), every hostile one is refused (exit 1) with its expected code in the
//! one-line reason on stderr, `refused (<code>): …`.
//!
//! `verify` checks a bundle without the receiver's context, so a few refusals are out of its
//! reach by design. Those cases are listed below with the reason, asserted to *pass* `verify`
//! (so the list cannot silently go stale), and documented in docs/TESTING.md:
//!
//! - it has no sealing identity: it cannot know which receiver a bundle is meant for, nor open
//!   a sealed value or the wrapped data key;
//! - `--trust` trusts a key for every container: it has no per-key container prefixes.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use flowpack_e2e::*;
use flowpack_testkit::process::bin;

/// Hostile cases `flowpack verify` cannot refuse without the receiver's sealing identity.
/// The receiver refuses each of them (receiver/tests/corpus.rs).
const NEEDS_IDENTITY: &[(&str, &str)] = &[
    (
        "seal-other-receiver",
        "sealed to another receiver's recipient: which receiver a bundle is for is only known to that receiver",
    ),
    (
        "seal-field-swapped",
        "a sealed value under the wrong associated data only fails when opened with the data key",
    ),
    (
        "seal-moved-credential",
        "a sealed value under the wrong associated data only fails when opened with the data key",
    ),
    (
        "seal-from-other-bundle",
        "a sealed value under the wrong associated data only fails when opened with the data key",
    ),
    (
        "seal-from-other-container",
        "a sealed value under the wrong associated data only fails when opened with the data key",
    ),
    (
        "sealed-tampered",
        "the Poly1305 tag of a sealed value can only be checked with the data key",
    ),
];

/// Hostile cases refused only by a per-container prefix check. `verify --trust` trusts keys for
/// every container, so with other.pub trusted these pass; with signer.pub alone they are
/// refused as `unknown-signer`.
const PREFIX_ONLY: &[&str] = &["signer-not-allowed", "signer-prefix-boundary"];

/// Bundles signed by other.key, which need `--trust fixtures/keys/other.pub` to verify.
const SIGNED_BY_OTHER: &[&str] = &["valid-other-prefix"];

fn corpus() -> Vec<(String, PathBuf, String)> {
    let dir = root().join("fixtures/malicious");
    let mut cases: Vec<(String, PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fpk"))
        .map(|p| {
            let expect: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p.with_extension("expect")).unwrap())
                    .unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, p, expect["code"].as_str().unwrap().to_owned())
        })
        .collect();
    cases.sort();
    cases
}

fn verify(bundle: &Path, trust: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin("flowpack"));
    cmd.arg("verify").arg(bundle).arg("--trust");
    for k in trust {
        cmd.arg(root().join("fixtures/keys").join(k));
    }
    let out = run(&mut cmd);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn listed(name: &str) -> bool {
    NEEDS_IDENTITY.iter().any(|(n, _)| *n == name) || PREFIX_ONLY.contains(&name)
}

#[test]
fn verify_refuses_every_hostile_bundle_with_its_code() {
    let cases = corpus();
    assert!(cases.len() >= 40, "the corpus has {} bundles", cases.len());
    let mut wrong = Vec::new();
    let mut refused = 0;
    for (name, path, code) in &cases {
        if code == "ok" || listed(name) {
            continue;
        }
        let (status, stderr) = verify(path, &["signer.pub"]);
        let want = format!("refused ({code}): ");
        if status != Some(1) || !stderr.contains(&want) {
            wrong.push(format!(
                "{name}: exit {status:?}, stderr {stderr:?}; expected exit 1 with {want:?}"
            ));
        } else if stderr.lines().count() != 1 {
            wrong.push(format!("{name}: the reason is not one line: {stderr:?}"));
        } else {
            refused += 1;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    eprintln!("flowpack verify refused {refused} hostile bundles with their codes");
}

#[test]
fn verify_accepts_every_valid_bundle() {
    let cases = corpus();
    let mut valid = 0;
    for (name, path, code) in &cases {
        if code != "ok" {
            continue;
        }
        let trust: &[&str] = if SIGNED_BY_OTHER.contains(&name.as_str()) {
            &["signer.pub", "other.pub"]
        } else {
            &["signer.pub"]
        };
        let (status, stderr) = verify(path, trust);
        assert_eq!(status, Some(0), "{name}: {stderr}");
        valid += 1;
    }
    assert!(valid >= 7, "only {valid} valid bundles");
    // Without other.pub, a bundle signed by other.key is refused: its signer is unknown.
    for name in SIGNED_BY_OTHER {
        let (status, stderr) = verify(
            &root().join(format!("fixtures/malicious/{name}.fpk")),
            &["signer.pub"],
        );
        assert_eq!(status, Some(1), "{name}: {stderr}");
        assert!(stderr.contains("refused (unknown-signer): "), "{stderr}");
    }
}

#[test]
fn cases_verify_cannot_refuse_are_listed_and_pass_it() {
    let cases = corpus();
    for (name, why) in NEEDS_IDENTITY {
        let (_, path, code) = cases
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is no longer in the corpus"));
        assert!(code.starts_with("seal-"), "{name}: expected {code}");
        let (status, stderr) = verify(path, &["signer.pub"]);
        assert_eq!(
            status,
            Some(0),
            "{name} ({why}) is now refused by verify: {stderr}\n\
             move it out of the list in tests/tests/corpus_cli.rs and docs/TESTING.md"
        );
    }
    // Every seal-* case verify does detect without the identity is not in the lists.
    for (name, path, code) in &cases {
        if code.starts_with("seal-") && !listed(name) {
            let (status, stderr) = verify(path, &["signer.pub"]);
            assert_eq!(status, Some(1), "{name}: {stderr}");
            assert!(stderr.contains(&format!("refused ({code}): ")), "{stderr}");
        }
    }
}

#[test]
fn prefix_cases_are_unknown_signers_to_verify_and_pass_with_both_keys() {
    let cases = corpus();
    for name in PREFIX_ONLY {
        let (_, path, code) = cases
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is no longer in the corpus"));
        assert_eq!(code, "signer-not-allowed");
        let (status, stderr) = verify(path, &["signer.pub"]);
        assert_eq!(status, Some(1), "{name}: {stderr}");
        assert!(stderr.contains("refused (unknown-signer): "), "{stderr}");
        // verify trusts each --trust key for every container: no prefix to be outside of.
        let (status, stderr) = verify(path, &["signer.pub", "other.pub"]);
        assert_eq!(status, Some(0), "{name}: {stderr}");
    }
}

#[test]
fn verify_json_gives_the_same_codes_with_both_keys_trusted() {
    // Trusting other.pub as well changes nothing for the cases that do not depend on it, and
    // `--json` reports the code the one-line reason gives.
    let mut wrong = Vec::new();
    for (name, path, code) in corpus() {
        if listed(&name) {
            continue;
        }
        let mut cmd = Command::new(bin("flowpack"));
        cmd.arg("verify").arg(&path).arg("--json").arg("--trust");
        for k in ["signer.pub", "other.pub"] {
            cmd.arg(root().join("fixtures/keys").join(k));
        }
        let out = run(&mut cmd);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let good = if code == "ok" {
            out.status.code() == Some(0) && doc["valid"] == true && doc["code"].is_null()
        } else {
            out.status.code() == Some(1)
                && doc["valid"] == false
                && doc["code"] == code.as_str()
                && stderr.contains(&format!("refused ({code}): "))
        };
        if !good {
            wrong.push(format!(
                "{name}: exit {:?}, stdout {doc}, stderr {stderr:?}, expected {code}",
                out.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
