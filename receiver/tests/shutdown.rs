//! Graceful shutdown with a deploy in flight (one transaction; a 2xx is durable).
//!
//! A large valid bundle is uploaded slowly; the shutdown signal arrives while it is still being
//! uploaded, or while it is being applied. After a restart on the same data directory the state
//! must be exactly the one before the deploy or exactly the one after it (taken from a copy of
//! the data directory that applied the same bundle undisturbed), and a 2xx answer means the
//! deploy is there. Each trigger waits until the listener is closed, so the shutdown is known
//! to be under way before the upload or the apply goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowpack_shared::keys::SigningKey;
use flowpack_shared::timefmt::Timestamp;
use flowpack_testkit::*;
use serde_json::Value;

/// The size of the large mapping file (incompressible, so the bundle is as large).
const BIG: usize = 4 << 20;
/// The upload's pieces.
const PIECE: usize = 64 << 10;
/// The pause between pieces.
const PAUSE: Duration = Duration::from_millis(3);

const BIG_FILE: &str = "/v1/mappings/public/orders/orders-to-erp/files/orders.mfd";

/// Incompressible bytes (xorshift64).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

/// Everything a client can read about the deployed project, the mapping files by digest.
async fn state(s: &Server) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    for p in [
        "/v1/containers/",
        "/v1/containers/public",
        "/v1/containers/public/orders",
        "/v1/mappings/public/orders/orders-to-erp",
        "/v1/credentials/public/orders/erp",
        "/v1/deployments",
    ] {
        let (st, mut v) = s.get(&s.admin, p).await;
        if let Some(records) = v.get_mut("deployments").and_then(Value::as_array_mut) {
            records.iter_mut().for_each(without_time);
        }
        out.push((p.to_owned(), st, v));
    }
    for p in [
        BIG_FILE,
        "/v1/mappings/public/orders/orders-to-erp/files/schemas/order.xsd",
    ] {
        let r = s
            .client
            .get(s.url(p))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        out.push((p.to_owned(), st, Value::String(sha256(&bytes))));
    }
    out
}

/// The audit rows of `outcome` for a bundle.
async fn audited(s: &Server, bundle_id: &str, outcome: &str) -> usize {
    let (_, a) = s.get(&s.admin, "/v1/audit").await;
    a["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["bundle_id"] == bundle_id && r["outcome"] == outcome)
        .count()
}

/// A deployment record without the time it was applied at, which differs between a run and
/// its reference.
fn without_time(record: &mut Value) {
    if let Value::Object(o) = record {
        o.remove("at");
    }
}

/// A large bundle for the standard project and the states before and after it.
struct Expect {
    bundle: Vec<u8>,
    bundle_id: String,
    before: Vec<(String, u16, Value)>,
    after: Vec<(String, u16, Value)>,
    record: Value,
}

/// A data directory with the standard project deployed (and its admin token), and what to
/// expect of the large bundle.
async fn fixture() -> (tempfile::TempDir, String, Expect) {
    let s = Server::start().await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    let small = project(Some("pw-1"), true, b"mfd-v1");
    let b = bundle(
        &k,
        &Opts::new("/public/orders").sealed(s.recipient()),
        &small.mappings,
        &small.credentials,
    );
    assert_eq!(s.deploy(&s.admin, &b).await.0, 201);
    // Created later than the first, so it is not stale.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let big = project(Some("pw-2"), true, &noise(BIG));
    let bundle = bundle(
        &k,
        &Opts::new("/public/orders")
            .sealed(s.recipient())
            .created(Timestamp::now()),
        &big.mappings,
        &big.credentials,
    );
    assert!(bundle.len() > BIG, "{}", bundle.len());
    let before = state(&s).await;
    let (dir, admin) = s.stop_keeping_data().await;

    // The reference: a copy of the data directory applies the bundle undisturbed.
    let copy = tempfile::tempdir().unwrap();
    copy_data(&dir.path().join("data"), &copy.path().join("data"));
    let r = Server::serve_in(copy, admin.clone(), |_| {}).await;
    let (st, record) = r.deploy(&r.admin, &bundle).await;
    assert_eq!(st, 201, "{record}");
    let after = state(&r).await;
    r.stop().await;
    assert_ne!(before, after);
    assert_eq!(after[6].2, Value::String(sha256(&noise(BIG))));
    let expect = Expect {
        bundle,
        bundle_id: record["bundle_id"].as_str().unwrap().to_owned(),
        before,
        after,
        record,
    };
    (dir, admin, expect)
}

type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The bundle as a request body sent in pieces with pauses; `trigger` runs before the first
/// piece that reaches byte `at` (so before the last piece for `at == bundle.len()`: with a
/// Content-Length the client does not poll the body past its end).
fn slow_body(bundle: Vec<u8>, at: usize, trigger: Trigger) -> reqwest::Body {
    let stream = futures_util::stream::unfold(
        (bundle, 0usize, Some(trigger)),
        move |(bundle, off, mut trigger)| async move {
            if off >= bundle.len() {
                return None;
            }
            let end = (off + PIECE).min(bundle.len());
            if end >= at
                && let Some(t) = trigger.take()
            {
                t.await;
            }
            tokio::time::sleep(PAUSE).await;
            let piece = bytes::Bytes::copy_from_slice(&bundle[off..end]);
            Some((Ok::<_, std::io::Error>(piece), (bundle, end, trigger)))
        },
    );
    reqwest::Body::wrap_stream(stream)
}

/// Posts the bundle slowly; the status (`None` when no answer came) and the answer.
async fn upload(
    client: &Client,
    base: &str,
    token: &str,
    bundle: Vec<u8>,
    at: usize,
    trigger: Trigger,
) -> (Option<u16>, Value) {
    let len = bundle.len();
    let sent = client
        .post(format!("{base}/v1/deployments"))
        .bearer_auth(token)
        .header("content-type", "application/zip")
        .header("content-length", len.to_string())
        .body(slow_body(bundle, at, trigger))
        .send()
        .await;
    match sent {
        Ok(r) => {
            let (st, v) = answer(r).await;
            (Some(st), v)
        }
        Err(e) => (None, Value::String(e.to_string())),
    }
}

/// Waits until nothing accepts connections on `addr` any more (the server stopped listening).
async fn wait_closed(addr: SocketAddr) {
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections 10 s after the shutdown signal");
}

fn addr_of(base: &str) -> SocketAddr {
    base.strip_prefix("http://").unwrap().parse().unwrap()
}

/// Serves the data directory again and checks the outcome: exactly before or exactly after,
/// after when the client got a 2xx (then with the reference's record), the spool empty; and
/// that the client can retry: a replay if it was applied, else applied now. True when the
/// deploy had been applied.
async fn check_after_restart(
    dir: tempfile::TempDir,
    admin: String,
    e: &Expect,
    status: Option<u16>,
    answer: &Value,
) -> bool {
    let spool = dir.path().join("data").join("spool");
    let left: Vec<_> = std::fs::read_dir(&spool).unwrap().collect();
    assert!(left.is_empty(), "spool not empty: {left:?}");
    let s = Server::serve_in(dir, admin, |_| {}).await;
    let now = state(&s).await;
    let applied = audited(&s, &e.bundle_id, "applied").await;
    if status.is_some_and(|st| (200..300).contains(&st)) {
        assert!(
            now == e.after,
            "answered {status:?} {answer} but the deploy is not all there"
        );
        let (mut answer, mut expected) = (answer.clone(), e.record.clone());
        without_time(&mut answer);
        without_time(&mut expected);
        assert_eq!(answer, expected);
    } else if now != e.after {
        assert!(
            now == e.before,
            "neither the state before nor the state after: {now:?}"
        );
    }
    let was_applied = now == e.after;
    assert_eq!(applied, usize::from(was_applied));
    let (st, retry) = s.deploy(&s.admin, &e.bundle).await;
    if was_applied {
        assert_eq!(
            (st, &retry["replayed"]),
            (200, &Value::Bool(true)),
            "{retry}"
        );
        assert_eq!(retry["id"], e.record["id"]);
    } else {
        assert_eq!(st, 201, "{retry}");
    }
    assert!(state(&s).await == e.after);
    s.stop().await;
    was_applied
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_mid_upload_lets_the_deploy_finish_and_it_survives_a_restart() {
    let (dir, admin, e) = fixture().await;
    let mut s = Server::serve_in(dir, admin, |_| {}).await;
    let stop = s.take_stop();
    let addr = addr_of(&s.base);
    let trigger: Trigger = Box::pin(async move {
        stop.send(()).unwrap();
        wait_closed(addr).await;
    });
    let at = e.bundle.len() / 2;
    let (status, v) = upload(&s.client, &s.base, &s.admin, e.bundle.clone(), at, trigger).await;
    assert_eq!(status, Some(201), "{v}");
    let (dir, admin) = s.stopped().await;
    assert!(check_after_restart(dir, admin, &e, status, &v).await);
}

/// The server's shutdown signal and address.
type Armed = (tokio::sync::oneshot::Sender<()>, SocketAddr);

/// A hook in the middle of the apply. The deploy reads the clock once, inside its transaction,
/// after verification and before the payload is written: the hooked clock then sends the
/// shutdown signal, waits until the listener is closed, and stalls for a while before the
/// apply goes on.
#[derive(Clone, Default)]
struct ApplyHook {
    armed: Arc<Mutex<Option<Armed>>>,
    done: Arc<Mutex<Option<std::time::Instant>>>,
}

impl ApplyHook {
    /// The hooked clock, stalling for `stall` once the listener is closed. It fires on the
    /// store's writer thread only: the apply's own reading of the clock, not the checks that
    /// read it before the bundle is queued.
    fn clock(&self, stall: Duration) -> flowpack_receiver::Clock {
        self.clock_where(stall, true)
    }

    /// As [`ApplyHook::clock`], firing on the writer thread (`applying`) or anywhere else (the
    /// checks before the bundle is queued).
    fn clock_where(&self, stall: Duration, applying: bool) -> flowpack_receiver::Clock {
        let hook = self.clone();
        Arc::new(move || {
            let on_writer = std::thread::current().name() == Some("store-writer");
            let armed = if on_writer == applying {
                hook.armed.lock().unwrap().take()
            } else {
                None
            };
            if let Some((stop, addr)) = armed {
                stop.send(()).unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::net::TcpStream::connect(addr).is_ok() {
                    assert!(std::time::Instant::now() < deadline, "still listening");
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::thread::sleep(stall);
                *hook.done.lock().unwrap() = Some(std::time::Instant::now());
            }
            Timestamp::now()
        })
    }

    /// Arms the hook with the server's shutdown signal.
    fn arm(&self, s: &mut Server) {
        *self.armed.lock().unwrap() = Some((s.take_stop(), addr_of(&s.base)));
    }

    /// When the hook let the apply go on, if it ran.
    fn done(&self) -> Option<std::time::Instant> {
        *self.done.lock().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_mid_apply_lets_the_deploy_commit_and_it_survives_a_restart() {
    let (dir, admin, e) = fixture().await;
    let hook = ApplyHook::default();
    let clock = hook.clock(Duration::from_millis(100));
    let mut s = Server::serve_in(dir, admin, |app| app.clock = clock).await;
    hook.arm(&mut s);
    let at = e.bundle.len();
    let (status, v) = upload(
        &s.client,
        &s.base,
        &s.admin,
        e.bundle.clone(),
        at,
        Box::pin(async {}),
    )
    .await;
    assert!(hook.done().is_some(), "the hook did not run");
    assert_eq!(status, Some(201), "{v}");
    let (dir, admin) = s.stopped().await;
    assert!(check_after_restart(dir, admin, &e, status, &v).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_outlasting_the_grace_period_is_cut_off_and_leaves_nothing() {
    let (dir, admin, e) = fixture().await;
    let mut s = Server::serve_in(dir, admin, |app| {
        app.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let stop = s.take_stop();
    let addr = addr_of(&s.base);
    let (stalled, resume) = tokio::sync::oneshot::channel::<()>();
    // Half the bundle, then the shutdown signal, then a stall longer than the grace period.
    let trigger: Trigger = Box::pin(async move {
        stop.send(()).unwrap();
        wait_closed(addr).await;
        let _ = resume.await;
    });
    let at = e.bundle.len() / 2;
    let client = s.client.clone();
    let (base, token) = (s.base.clone(), s.admin.clone());
    let bundle = e.bundle.clone();
    let up = tokio::spawn(async move { upload(&client, &base, &token, bundle, at, trigger).await });
    // `run` returns once the grace period is over, with the upload still stalled ...
    let (dir, admin) = tokio::time::timeout(Duration::from_secs(10), s.stopped())
        .await
        .expect("run did not return after the grace period");
    // ... and the upload, resumed now, reaches no server.
    let _ = stalled.send(());
    let (status, v) = up.await.unwrap();
    assert_eq!(status, None, "{v}");
    assert!(!check_after_restart(dir, admin, &e, status, &v).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_outlasting_the_grace_period_leave_nothing_behind() {
    let (dir, admin, e) = fixture().await;
    // The bundle's checks (before it is queued for the writer) stall past the grace period:
    // the connection is closed unanswered, nothing is applied and no spool file is left.
    let hook = ApplyHook::default();
    let clock = hook.clock_where(Duration::from_millis(800), false);
    let mut s = Server::serve_in(dir, admin, |app| {
        app.clock = clock;
        app.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    hook.arm(&mut s);
    let client = s.client.clone();
    let (base, token) = (s.base.clone(), s.admin.clone());
    let bundle = e.bundle.clone();
    let at = bundle.len();
    let up = tokio::spawn(async move {
        upload(&client, &base, &token, bundle, at, Box::pin(async {})).await
    });
    let (dir, admin) = s.stopped().await;
    assert!(hook.done().is_some(), "the hook did not run");
    let (status, v) = up.await.unwrap();
    assert_eq!(status, None, "{v}");
    assert!(!check_after_restart(dir, admin, &e, status, &v).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_outlasting_the_grace_period_commits_before_run_returns() {
    let (dir, admin, e) = fixture().await;
    // As mid-apply, but the apply stalls past the grace period: the connection is closed
    // unanswered, and `run` still waits for the apply to commit before it returns.
    let hook = ApplyHook::default();
    let clock = hook.clock(Duration::from_millis(800));
    let mut s = Server::serve_in(dir, admin, |app| {
        app.clock = clock;
        app.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    hook.arm(&mut s);
    let client = s.client.clone();
    let (base, token) = (s.base.clone(), s.admin.clone());
    let bundle = e.bundle.clone();
    let at = bundle.len();
    let up = tokio::spawn(async move {
        upload(&client, &base, &token, bundle, at, Box::pin(async {})).await
    });
    let (dir, admin) = s.stopped().await;
    let returned = std::time::Instant::now();
    let went_on = hook.done().expect("run returned during the apply");
    assert!(returned > went_on, "run returned during the apply");
    let (status, v) = up.await.unwrap();
    assert_eq!(status, None, "{v}");
    // Committed although nobody was told: a retry is answered as a replay.
    assert!(check_after_restart(dir, admin, &e, status, &v).await);
}

const BIN: &str = env!("CARGO_BIN_EXE_flowpack-receiver");

/// The real binary serving a data directory.
struct Serving {
    child: std::process::Child,
    base: String,
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

fn serve_bin(data: &Path) -> Serving {
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir", data.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_owned();
    Serving { child, base }
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// When the binary gets SIGTERM.
#[derive(Debug, Clone, Copy)]
enum Signal {
    /// Before the piece that reaches the middle of the bundle; the rest is sent once the
    /// listener is closed.
    MidUpload,
    /// This long after the last piece is handed over, while the bundle is verified or applied.
    AfterUpload(Duration),
}

/// Runs the binary on the fixture's directory, uploads the bundle and sends SIGTERM as `when`
/// says; the binary must exit 0. Returns the answer.
async fn sigterm_during_upload(
    dir: &tempfile::TempDir,
    admin: &str,
    e: &Expect,
    when: Signal,
) -> (Option<u16>, Value) {
    let mut bin = serve_bin(&dir.path().join("data"));
    let pid = bin.child.id();
    let addr = addr_of(&bin.base);
    let (last_piece, last_piece_out) = tokio::sync::oneshot::channel::<()>();
    let (at, trigger): (usize, Trigger) = match when {
        Signal::MidUpload => (
            e.bundle.len() / 2,
            Box::pin(async move {
                sigterm(pid);
                wait_closed(addr).await;
            }),
        ),
        Signal::AfterUpload(_) => (
            e.bundle.len(),
            Box::pin(async move {
                let _ = last_piece.send(());
            }),
        ),
    };
    let delayed = tokio::spawn(async move {
        if let Signal::AfterUpload(d) = when {
            last_piece_out.await.expect("the last piece was not sent");
            tokio::time::sleep(PAUSE + d).await;
            sigterm(pid);
        }
    });
    let client = Client::new();
    let answer = upload(&client, &bin.base, admin, e.bundle.clone(), at, trigger).await;
    delayed.await.unwrap();
    for _ in 0..3000 {
        if let Some(status) = bin.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the receiver did not exit within 30 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_upload_lets_the_deploy_finish_and_it_survives_a_restart() {
    let (dir, admin, e) = fixture().await;
    let (status, v) = sigterm_during_upload(&dir, &admin, &e, Signal::MidUpload).await;
    assert_eq!(status, Some(201), "{v}");
    assert!(check_after_restart(dir, admin, &e, status, &v).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_the_bundle_is_verified_or_applied_leaves_before_or_after() {
    // The signal races verification, the apply and the answer; whichever wins, the outcome is
    // whole, a 2xx is durable, and the binary exits 0.
    for ms in [0, 20, 40] {
        let (dir, admin, e) = fixture().await;
        let when = Signal::AfterUpload(Duration::from_millis(ms));
        let (status, v) = sigterm_during_upload(&dir, &admin, &e, when).await;
        check_after_restart(dir, admin, &e, status, &v).await;
    }
}
