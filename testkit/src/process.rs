//! The receiver as a child process: the real `flowpack-receiver` binary, run to its end for one
//! command, or `serve` on 127.0.0.1:0 in a data directory made by [`crate::init`]. Two thin
//! front-ends share the spawning: [`Serving`] (a data directory the test made; its log is
//! returned on a clean stop) and [`Receiver`] (the end-to-end tests' receiver: its data
//! directory, tokens and trust through the CLI, its log in a file across restarts).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Path of a workspace binary: next to the test executable's `deps/` directory
/// (`target/<profile>/`). A package's own binaries are built for its integration tests;
/// `cargo test --workspace` / `cargo nextest run --workspace` build every one.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (or the README's test command)",
        path.display()
    );
    path
}

/// The receiver binary.
pub fn receiver_bin() -> PathBuf {
    bin("flowpack-receiver")
}

/// Runs `flowpack-receiver args…` to its end: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(receiver_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run flowpack-receiver");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Spawns `serve --data-dir data args…` with its stderr to `stderr`, and reads the
/// `listening on URL` line it prints first.
fn spawn_serve(data: &Path, args: &[&str], stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(receiver_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn flowpack-receiver serve");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    let base = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_owned();
    (child, base)
}

/// Sends `signal` (`HUP`, `TERM`) to process `pid`.
fn kill(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// `serve` on 127.0.0.1:0 (killed when dropped, or stopped by SIGTERM with its log returned).
#[derive(Debug)]
pub struct Serving {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT` (or `https://`).
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

/// `serve` of the data directory `dir` on 127.0.0.1:0.
pub fn serve(dir: &Path) -> Serving {
    let s = serve_with(dir, &["--listen", "127.0.0.1:0"]);
    assert!(s.base.starts_with("http://127.0.0.1:"), "{}", s.base);
    s
}

/// `serve` with `args` after `--data-dir` (which need not name an address: config.json may).
pub fn serve_with(dir: &Path, args: &[&str]) -> Serving {
    let (mut child, base) = spawn_serve(dir, args, Stdio::piped());
    let mut stderr = child.stderr.take().expect("stderr");
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
        kill(signal, self.child.id());
    }

    /// SIGTERM, wait for a clean exit, return the log.
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status}");
        self.stderr
            .take()
            .map(|t| t.join().expect("stderr reader"))
            .unwrap_or_default()
    }
}

/// A receiver with its data directory, admin token and sealing recipient, served as a child
/// process (killed when dropped).
#[derive(Debug)]
pub struct Receiver {
    /// Its data directory.
    pub data: PathBuf,
    /// The admin token from `init`.
    pub admin_token: String,
    /// Its `age1…` recipient.
    pub recipient: String,
    /// `http://127.0.0.1:PORT` once serving.
    pub url: String,
    child: Option<Child>,
    /// Where its stderr (logs) goes.
    pub log: PathBuf,
}

impl Receiver {
    /// A data directory `dir/name` made by [`crate::init`]; its log is `dir/name.log`.
    pub fn init(dir: &Path, name: &str) -> Receiver {
        let data = dir.join(name);
        let init = crate::init(&data);
        Receiver {
            recipient: init.recipient,
            admin_token: init.admin_token,
            data,
            url: String::new(),
            child: None,
            log: dir.join(format!("{name}.log")),
        }
    }

    fn cli(&self, args: &[&str], more: &[(&str, &str)]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        let data = self.data.to_str().expect("a UTF-8 path");
        all.extend(["--data-dir", data]);
        for (flag, value) in more {
            all.extend([*flag, *value]);
        }
        let (code, out, err) = run(&all);
        assert_eq!(code, 0, "flowpack-receiver {all:?} failed:\n{out}\n{err}");
        out
    }

    /// `trust add PUB [--containers P]…`.
    pub fn trust(&self, public_key: &Path, containers: &[&str]) {
        let key = public_key.to_str().expect("a UTF-8 path");
        let more: Vec<_> = containers.iter().map(|c| ("--containers", *c)).collect();
        self.cli(&["trust", "add", key], &more);
    }

    /// `token create NAME --grant …`; returns the token.
    pub fn token(&self, name: &str, grants: &[&str]) -> String {
        let more: Vec<_> = grants.iter().map(|g| ("--grant", *g)).collect();
        self.cli(&["token", "create", name], &more)
            .trim()
            .to_owned()
    }

    /// Starts `serve` on a free loopback port and waits for its `listening on` line. The log
    /// is appended to, so a restarted receiver keeps the logs of its earlier runs.
    pub fn serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let (child, url) = spawn_serve(&self.data, &["--listen", "127.0.0.1:0"], log.into());
        self.url = url;
        self.child = Some(child);
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A request with a bearer token, checked against the document; returns (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        crate::http(&self.url, method, path, token, content_type, body)
    }

    /// GET as JSON with the admin token.
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, b) = self.request(
            "GET",
            path,
            Some(&self.admin_token.clone()),
            "application/json",
            b"",
        );
        (
            s,
            serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
