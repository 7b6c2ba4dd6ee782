//! The packager's errors name the fix, against a real receiver: an `https://` URL for a
//! receiver serving plain HTTP, and a `--server` without a scheme.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use flowpack_e2e::*;
use flowpack_testkit::{Receiver, process::bin};

#[test]
fn https_to_a_receiver_serving_plain_http_says_to_use_http_or_enable_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = Receiver::init(tmp.path(), "data");
    r.serve();
    let plain = r.url.strip_prefix("http://").unwrap().to_owned();
    let ls = |server: &str| {
        run(Command::new(bin("flowpack"))
            .args(["ls", "/", "--server", server])
            .env("FLOWPACK_TOKEN", &r.admin_token))
    };
    let out = ls(&format!("https://{plain}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the server speaks plain HTTP, not TLS; use http:// (loopback only) or enable TLS on it"
        ),
        "{stderr}"
    );
    // No scheme at all: told to add one, with the URL it would be.
    let out = ls(&plain);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("add https:// (https://{plain})")),
        "{stderr}"
    );
    // And the URL the receiver printed works.
    let out = ls(&r.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
