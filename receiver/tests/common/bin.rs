//! The real `flowpack-receiver` binary: one command run to its end, and `serve` on
//! 127.0.0.1:0 (killed when dropped, or stopped by SIGTERM with its log returned).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_flowpack-receiver");

pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A data directory made by `init`: its sealing recipient and admin token.
pub fn init(dir: &Path) -> (String, String) {
    let (code, out, err) = run(&["init", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    let recipient = lines
        .next()
        .unwrap()
        .strip_prefix("sealing_recipient: ")
        .unwrap()
        .to_owned();
    let token = lines
        .next()
        .unwrap()
        .strip_prefix("admin_token: ")
        .unwrap()
        .to_owned();
    (recipient, token)
}

/// `serve` on 127.0.0.1:0.
pub struct Serving {
    pub child: Child,
    pub base: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Serving {
    /// A failed test must not leave the server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn serve(dir: &Path) -> Serving {
    let s = serve_with(dir, &["--listen", "127.0.0.1:0"]);
    assert!(s.base.starts_with("http://127.0.0.1:"), "{}", s.base);
    s
}

/// `serve` with `args` after `--data-dir` (which need not name an address: config.json may).
pub fn serve_with(dir: &Path, args: &[&str]) -> Serving {
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir", dir.to_str().unwrap()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let base = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_owned();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Serving {
        child,
        base,
        stderr: Some(stderr),
    }
}

impl Serving {
    /// Sends `signal` (`HUP`, `TERM`) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// SIGTERM, wait for a clean exit, return the log.
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
        self.stderr.take().unwrap().join().unwrap()
    }
}
