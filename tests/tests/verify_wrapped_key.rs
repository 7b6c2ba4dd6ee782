//! PENDING (fails today; see tests/pending/README.md): `flowpack verify` could refuse a bad
//! `sealing.wrapped_key` without the receiver's identity, as docs/FORMAT.md wants every
//! hostile bundle refused by `verify` too. An age file's header is public (it parses or it
//! does not), and so is its payload's length: a wrapped 32-byte data key is a 64-byte payload
//! (16-byte nonce, 32 bytes, 16-byte tag). Today `verify` never looks at `wrapped_key` unless it
//! has an identity to unwrap it with (shared/src/bundle/read.rs, `OpenBundle::data_key`).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use flowpack_e2e::*;
use flowpack_testkit::process::bin;

#[test]
fn verify_refuses_a_wrapped_key_that_cannot_hold_a_data_key() {
    for case in ["bad-wrapped-key", "wrapped-key-wrong-length"] {
        let out = run(Command::new(bin("flowpack"))
            .arg("verify")
            .arg(root().join(format!("fixtures/malicious/{case}.fpk")))
            .arg("--trust")
            .arg(root().join("fixtures/keys/signer.pub")));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert!(
            stderr.contains("refused (seal-open-failed): "),
            "{case}: {stderr}"
        );
    }
}
