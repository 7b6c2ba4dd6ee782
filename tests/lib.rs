#![forbid(unsafe_code)]
#![allow(missing_debug_implementations, clippy::unwrap_used)]
//! Harness for end-to-end tests: runs the real `flowpack` and `flowpack-receiver` binaries in a
//! temporary directory, starts receivers on `127.0.0.1:0`, and speaks plain HTTP/1.1 to them.
//!
//! The binaries are found next to the test executable's `deps/` directory (`target/<profile>/`);
//! `cargo test --workspace` / `cargo nextest run --workspace` build them first, because the
//! packager and receiver crates have integration tests of their own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary.
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

/// A receiver with its data directory, admin token and sealing recipient.
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
    /// `init` in `dir/name`.
    pub fn init(dir: &Path, name: &str) -> Receiver {
        let data = dir.join(name);
        let out = ok(Command::new(bin("flowpack-receiver"))
            .arg("init")
            .arg("--data-dir")
            .arg(&data));
        let field = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_else(|| panic!("init printed no {k}: {out}"))
                .to_owned()
        };
        Receiver {
            recipient: field("sealing_recipient:"),
            admin_token: field("admin_token:"),
            data,
            url: String::new(),
            child: None,
            log: dir.join(format!("{name}.log")),
        }
    }

    /// `trust add PUB [--containers P]…`.
    pub fn trust(&self, public_key: &Path, containers: &[&str]) {
        let mut cmd = Command::new(bin("flowpack-receiver"));
        cmd.args(["trust", "add"])
            .arg(public_key)
            .arg("--data-dir")
            .arg(&self.data);
        for c in containers {
            cmd.args(["--containers", c]);
        }
        ok(&mut cmd);
    }

    /// `token create NAME --grant …`; returns the token.
    pub fn token(&self, name: &str, grants: &[&str]) -> String {
        let mut cmd = Command::new(bin("flowpack-receiver"));
        cmd.args(["token", "create", name])
            .arg("--data-dir")
            .arg(&self.data);
        for g in grants {
            cmd.args(["--grant", g]);
        }
        ok(&mut cmd).trim().to_owned()
    }

    /// Starts `serve` on a free loopback port and waits for its `listening on` line. The log
    /// is appended to, so a restarted receiver keeps the logs of its earlier runs.
    pub fn serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut child = Command::new(bin("flowpack-receiver"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        self.url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
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

    /// An HTTP request with a bearer token; returns (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        http(&self.url, method, path, token, content_type, body)
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

/// A minimal HTTP/1.1 client (one request per connection) so the tests need no HTTP library.
pub fn http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_http(url, method, path, token, content_type, body)
        .unwrap_or_else(|e| panic!("{method} {url}{path}: {e}"))
}

/// Like [`http`], but a failed connection, a reset, or a response cut short (a server killed
/// mid-request) is an error instead of a panic.
pub fn try_http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_owned());
    let host = url.strip_prefix("http://").expect("plain http url");
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: {content_type}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // A server may answer (413, 401…) and close before reading the whole body: keep what it
    // says rather than failing on the write.
    let wrote = s.write_all(body);
    let mut resp = Vec::new();
    let read = s.read_to_end(&mut resp);
    let Some(split) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        wrote?;
        read?;
        return Err(bad("the response ended before its header"));
    };
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status in the response"))?;
    let body = &resp[split + 4..];
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let complete = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else if let Some(n) = length {
        (body.len() >= n).then(|| body[..n].to_vec())
    } else {
        // Delimited by the end of the connection: complete only if it ended cleanly.
        read.is_ok().then(|| body.to_vec())
    };
    complete
        .map(|b| (status, b))
        .ok_or_else(|| bad("the response body was cut short"))
}

/// The body of a chunked response; `None` when it is cut short.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(eol + 2..eol + 2 + n)?);
        b = b.get(eol + 4 + n..)?;
    }
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

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
