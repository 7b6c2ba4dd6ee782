//! A receiver killed while a bundle is being uploaded leaves the partial upload in `D/spool/`
//! (SIGKILL skips the temporary file's own cleanup); the next start removes it. Without that,
//! every crash would leak up to `max_bundle_size` of disk. What it leaves is ciphertext: a
//! `--plaintext-secrets` bundle's secrets never reach the disk in clear, even before the restart.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use flowpack_e2e::*;
use flowpack_testkit::Receiver;

#[test]
fn restart_removes_uploads_spooled_before_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = Receiver::init(tmp.path(), "data");
    r.serve();
    let spool = r.data.join("spool");
    let count = || std::fs::read_dir(&spool).unwrap().count();
    assert_eq!(count(), 0);

    // Half of a 1 MiB upload, then SIGKILL once it is being spooled.
    let host = r.url.strip_prefix("http://").unwrap().to_owned();
    let mut s = TcpStream::connect(&host).unwrap();
    write!(
        s,
        "POST /v1/deployments HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/zip\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        r.admin_token,
        1 << 20
    )
    .unwrap();
    s.write_all(&b"canary-secret-".repeat((1 << 19) / 14))
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || count() > 0));
    let pid = r.pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    r.stop();
    assert_eq!(count(), 1, "the crash left the partial upload behind");
    let left = std::fs::read_dir(&spool).unwrap().next().unwrap().unwrap();
    let left = std::fs::read(left.path()).unwrap();
    assert!(left.len() > 1000, "the spooled part: {} bytes", left.len());
    assert!(
        !left.windows(14).any(|w| w == b"canary-secret-"),
        "the upload was spooled in clear"
    );

    // After a restart (and a deploy, in case cleaning is lazy) the spool is empty again.
    r.serve();
    let (s, _) = r.request(
        "POST",
        "/v1/deployments",
        Some(&r.admin_token),
        "application/zip",
        b"not a zip",
    );
    assert_eq!(s, 400);
    assert_eq!(
        count(),
        0,
        "uploads spooled before the crash are still in {}",
        spool.display()
    );
}
