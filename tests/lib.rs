#![forbid(unsafe_code)]
#![allow(missing_debug_implementations, clippy::unwrap_used)]
//! Helpers of the end-to-end tests, which run the real `flowpack` and `flowpack-receiver`
//! binaries in a temporary directory: commands, fixture keys, waiting, copying trees.
//!
//! The receiver they start (`Receiver`), the path of a binary (`bin`) and the HTTP client
//! (`http`, `try_http`, which check every answer against the OpenAPI document) are the
//! testkit's (`flowpack_testkit`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a command, returning its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies fixtures/keys/NAME into `dir` with mode 0600 (git does not keep modes).
pub fn fixture_key(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(name);
    std::fs::copy(root().join("fixtures/keys").join(name), &to).expect("copy key");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    to
}

/// Waits until `f` returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub use flowpack_testkit::copy_dir;
