//! A hostile network: one client holding many idle or slow connections, silent or slow
//! request heads, idle keep-alive connections, a silent TLS client. The receiver keeps
//! answering, caps its connections, and closes idle ones on time.
//!
//! Timeouts are checked at their real values (10 s for a request head, 60 s for an idle
//! keep-alive connection) on tokio's paused clock, which jumps ahead whenever every task waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use flowpack_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

const HEAD: Duration = Duration::from_secs(10);
const KEEP_ALIVE: Duration = Duration::from_secs(60);

fn addr(s: &Server) -> SocketAddr {
    s.base.trim_start_matches("http://").parse().unwrap()
}

/// `GET /healthz` on a new connection; panics unless it is answered 200 within a second.
async fn probe(addr: SocketAddr) {
    let answer = timeout(Duration::from_secs(1), async {
        let mut c = TcpStream::connect(addr).await?;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await
    .expect("GET /healthz answered within 1 s")
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let parsed = Response::parse(&answer).expect("an HTTP answer");
    flowpack_testkit::openapi::check(&reqwest::Method::GET, "/healthz", &parsed);
}

/// Reads until the peer closes the connection (a reset counts as closed too).
async fn closed(c: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Reads one response to `GET /healthz` (its body is the last thing in it) and checks it
/// against the document.
async fn read_health(c: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(r#"{"status":"ok"}"#) {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    let answer = Response::parse(&got).expect("an HTTP answer");
    flowpack_testkit::openapi::check(&reqwest::Method::GET, "/healthz", &answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_answered_within_a_second_while_one_client_holds_1000_idle_or_slow_connections()
{
    let s = Server::start().await;
    let cap = s.app.config().max_connections;
    assert!(cap < 1000, "the default cap is {cap}");
    let addr = addr(&s);
    let started = std::time::Instant::now();
    let mut held = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        match i % 3 {
            // Silent.
            0 => {}
            // A request head that never ends.
            1 => c
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
                .await
                .unwrap(),
            // A request, answered; then idle, keeping the connection alive (the answer unread).
            _ => c
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
                .await
                .unwrap(),
        }
        held.push(c);
        if i % 100 == 99 {
            probe(addr).await;
        }
    }
    for _ in 0..5 {
        probe(addr).await;
    }
    // The cap holds: all but at most `cap` of the client's connections were closed to make
    // room (those still open wait out the short bound below).
    let still_open = futures_util::future::join_all(
        held.iter_mut()
            .map(|c| async { timeout(Duration::from_secs(2), closed(c)).await.is_err() }),
    )
    .await
    .into_iter()
    .filter(|open| *open)
    .count();
    assert!(still_open <= cap, "{still_open} connections left open");
    assert!(still_open > 0);
    drop(held);
    assert!(started.elapsed() < Duration::from_secs(30));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_the_middle_of_a_request_is_never_closed_to_make_room() {
    let s = Server::start_with(|app| app.edit_config(|c| c.max_connections = 4)).await;
    let addr = addr(&s);
    // An upload under way: its head is complete, its body half sent. `Expect: 100-continue`
    // tells when the handler has started reading the body.
    let mut upload = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/deployments HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/zip\r\nContent-Length: 20\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        s.admin
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let mut continued = Vec::new();
    let mut buf = [0u8; 256];
    while !continued.ends_with(b"\r\n\r\n") {
        let n = timeout(Duration::from_secs(5), upload.read(&mut buf))
            .await
            .expect("100 Continue")
            .unwrap();
        assert!(n > 0);
        continued.extend_from_slice(&buf[..n]);
    }
    assert!(continued.starts_with(b"HTTP/1.1 100"));
    upload.write_all(b"0123456789").await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr).await.unwrap());
        probe(addr).await;
    }
    // The upload's connection is still there: the rest of the body gets its answer.
    upload.write_all(b"0123456789").await.unwrap();
    let mut answer = Vec::new();
    timeout(Duration::from_secs(5), upload.read_to_end(&mut answer))
        .await
        .expect("the upload is answered")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("not-a-zip"), "{text}");
    let parsed = Response::parse(&answer).expect("an HTTP answer");
    flowpack_testkit::openapi::check(&reqwest::Method::POST, "/v1/deployments", &parsed);
    drop(idle);
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_a_complete_request_head_is_closed_after_10_s() {
    let s = Server::start().await;
    let addr = addr(&s);
    // Silent.
    let t0 = Instant::now();
    let mut c = TcpStream::connect(addr).await.unwrap();
    closed(&mut c).await;
    let waited = t0.elapsed();
    assert!(
        waited >= HEAD && waited < HEAD + Duration::from_secs(1),
        "{waited:?}"
    );

    // A head that trickles in, a byte every 2 s, never finished.
    let t0 = Instant::now();
    let mut c = TcpStream::connect(addr).await.unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaa";
    for b in head {
        if c.write_all(&[*b]).await.is_err() {
            break;
        }
        if timeout(Duration::from_secs(2), closed(&mut c))
            .await
            .is_ok()
        {
            break;
        }
    }
    let waited = t0.elapsed();
    assert!(
        waited >= HEAD && waited <= HEAD + Duration::from_secs(2),
        "{waited:?}"
    );
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_after_60_s() {
    let s = Server::start().await;
    let addr = addr(&s);
    let mut c = TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_health(&mut c).await;
    closed(&mut c).await;
    let waited = sent.elapsed();
    // The clock may jump to the 10 s head deadline while the request is in flight (every
    // task waits on the socket), so the bound above allows for it.
    assert!(
        waited >= KEEP_ALIVE && waited < KEEP_ALIVE + HEAD + Duration::from_secs(1),
        "{waited:?}"
    );

    // Still alive after 59 s idle: a second request on it is answered.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_health(&mut c).await;
    tokio::time::sleep(KEEP_ALIVE - Duration::from_secs(1)).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_health(&mut c).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_after_keep_alive_is_timed_from_its_first_byte() {
    // Shorter than the defaults, and the head's longer than keep-alive's, so that which rule
    // closed the connection shows in when it closed.
    let t = flowpack_receiver::conns::Timeouts {
        head: Duration::from_secs(3),
        keep_alive: Duration::from_secs(2),
    };
    let s = Server::start_with(|app| app.timeouts = t).await;
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_health(&mut c).await;
    // Idle for most of the keep-alive time, then the start of a head: the head's own timer
    // runs from here.
    let idle = Duration::from_millis(1500);
    tokio::time::sleep(idle).await;
    let t0 = Instant::now();
    c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    timeout(t.head + Duration::from_secs(5), closed(&mut c))
        .await
        .expect("closed");
    let waited = t0.elapsed();
    assert!(waited >= t.head - Duration::from_millis(100), "{waited:?}");
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_tls_handshake_counts_as_no_request_head_yet() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    flowpack_testkit::init(&data);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = flowpack_receiver::tls_acceptor(&cert_path, &key_path).unwrap();
    let app = std::sync::Arc::new(flowpack_receiver::App::load(&data).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flowpack_receiver::run(
        listener,
        app,
        Some(acceptor),
        async {
            let _ = stopped.await;
        },
    ));

    // A client that never starts its handshake.
    let t0 = Instant::now();
    let mut c = TcpStream::connect(addr).await.unwrap();
    closed(&mut c).await;
    let waited = t0.elapsed();
    assert!(
        waited >= HEAD && waited < HEAD + Duration::from_secs(1),
        "{waited:?}"
    );

    // One that starts it and stalls: the 10 s run from accept, not from the handshake's end.
    let t0 = Instant::now();
    let mut c = TcpStream::connect(addr).await.unwrap();
    // A TLS record header announcing a ClientHello whose body never comes.
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    closed(&mut c).await;
    let waited = t0.elapsed();
    assert!(
        waited >= HEAD && waited < HEAD + Duration::from_secs(1),
        "{waited:?}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

mod hostile_bundles {
    //! Bundles a hostile client sends: their manifests or entries inflate far beyond their size.
    use std::io::{Cursor, Read};

    use flowpack_shared::bundle::BundleKind;
    use flowpack_shared::bundle::write::{BundleOptions, MappingInput, write_bundle};
    use flowpack_shared::keys::SigningKey;
    use flowpack_shared::model::mapping::Mapping;
    use flowpack_shared::names::ContainerPath;
    use flowpack_shared::timefmt::Timestamp;
    use flowpack_shared::zipfmt::{Limits, Method, ZipReader, ZipWriter};

    /// Pseudo-random numbers (xorshift64), so the bundles are the same on every run.
    pub struct Rng(u64);

    impl Rng {
        pub fn new() -> Rng {
            Rng(0x9E37_79B9_7F4A_7C15)
        }
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A signed mapping bundle for /hostile whose one file is `file`.
    pub fn mapping_bundle(key: &SigningKey, file: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.bin"), file).unwrap();
        let mapping = Mapping::parse(
            "m",
            br#"{"name":"flood","parameters":[],"files":["data.bin"]}"#,
        )
        .unwrap();
        let now = Timestamp::now();
        let opts = BundleOptions {
            kind: BundleKind::Deployment,
            target_container: ContainerPath::parse("/hostile").unwrap(),
            environment: None,
            created_at: now,
            expires_at: now.plus(time::Duration::days(7)),
            seal_to: Vec::new(),
            allow_plaintext: false,
            level: 6,
        };
        let input = MappingInput {
            mapping,
            dir: dir.path().to_owned(),
        };
        let mut out = Cursor::new(Vec::new());
        write_bundle(&mut out, key, &opts, &[input], &[], &mut |_, _| {}).unwrap();
        out.into_inner()
    }

    /// `bundle` with its manifest replaced by `edit(manifest)`, signed by `key`, every entry
    /// deflated again.
    pub fn with_manifest(
        bundle: &[u8],
        key: &SigningKey,
        edit: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) -> Vec<u8> {
        let mut zip = ZipReader::open(Cursor::new(bundle), &Limits::default()).unwrap();
        let names: Vec<String> = zip.entries().iter().map(|e| e.name.clone()).collect();
        let mut entries: Vec<(String, Vec<u8>)> = names
            .into_iter()
            .map(|name| {
                let mut data = Vec::new();
                zip.next_entry()
                    .unwrap()
                    .unwrap()
                    .read_to_end(&mut data)
                    .unwrap();
                (name, data)
            })
            .collect();
        let manifest = edit(std::mem::take(&mut entries[0].1));
        entries[1].1 = key.sign(&manifest).to_vec();
        entries[0].1 = manifest;
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in &entries {
            let method = if name == "manifest.sig" {
                Method::Stored
            } else {
                Method::Deflate
            };
            w.add(name, method, 6, &mut &data[..], &mut |_| {}).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// `n` bytes of JSON whitespace in runs, which deflate shrinks about 60:1 (within the
    /// 200:1 ratio limit).
    pub fn whitespace(n: usize, rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let r = rng.next();
            let run = (r % 256) as usize + 1;
            let c = [b' ', b'\t', b'\n', b'\r'][(r >> 62) as usize];
            out.extend(std::iter::repeat_n(c, run.min(n - out.len())));
        }
        out
    }

    /// `n` bytes, mostly zeros, that deflate shrinks about 130:1: over 1 MiB, within the
    /// 200:1 ratio limit.
    pub fn sparse(n: usize, rng: &mut Rng) -> Vec<u8> {
        let mut out = vec![0u8; n];
        for i in (0..n).step_by(512) {
            out[i] = rng.next() as u8;
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_hostile_uploads_keep_the_receivers_peak_memory_under_256_mib() {
    use hostile_bundles::*;
    use std::process::Command;

    const BIN: &str = env!("CARGO_BIN_EXE_flowpack-receiver");
    const MIB: usize = 1 << 20;
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = flowpack_testkit::init(&data).admin_token;
    let key = flowpack_shared::keys::SigningKey::generate().unwrap();
    let pub_file = dir.path().join("signer.pub");
    std::fs::write(&pub_file, key.verifying_key().to_pem()).unwrap();
    let trusted = Command::new(BIN)
        .args(["trust", "add", pub_file.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(trusted.success());

    let mut rng = Rng::new();
    let small = mapping_bundle(&key, b"<mapping/>\n");
    // About 1 MiB, its manifest just under 64 MiB once inflated.
    let manifest_64 = with_manifest(&small, &key, |mut m| {
        m.extend(whitespace(64 * MIB - 4096, &mut rng));
        m
    });
    // Within the manifest limit, and signed by another key than the trusted one it names: read
    // in full before the signature can be checked.
    let stranger = flowpack_shared::keys::SigningKey::generate().unwrap();
    let manifest_31 = with_manifest(&small, &stranger, |mut m| {
        m.extend(whitespace(31 * MIB, &mut rng));
        m
    });
    // Correctly signed, its one file 48 MiB inflated from about 0.4 MiB, with a digest that
    // does not match: streamed in full, then refused.
    let bomb = with_manifest(
        &mapping_bundle(&key, &sparse(48 * MIB, &mut rng)),
        &key,
        |m| {
            let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
            v["entries"][1]["sha256"] = serde_json::Value::String("0".repeat(64));
            serde_json::to_vec(&v).unwrap()
        },
    );
    assert!(
        manifest_64.len() < 2 * MIB && bomb.len() < MIB,
        "the bundles are small"
    );

    let server = serve(&data);

    let uploads: Vec<(&[u8], u16, &str)> = (0..16)
        // Two large manifests at once: as many as two cores verify together (each is slow
        // to parse in a debug build).
        .map(|i| match i {
            0 | 8 => (&manifest_31[..], 422, "bad-signature"),
            _ if i % 4 == 3 => (&bomb[..], 422, "digest-mismatch"),
            _ => (&manifest_64[..], 413, "too-large"),
        })
        .collect();
    let client = Client::new();
    let answers = timeout(
        Duration::from_secs(300),
        futures_util::future::join_all(uploads.iter().map(|(bundle, _, _)| {
            client
                .post(format!("{}/v1/deployments", server.base))
                .bearer_auth(&admin)
                .header("content-type", "application/zip")
                .body(bundle.to_vec())
                .send()
        })),
    )
    .await
    .expect("every upload is answered");
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let peak_kib: u64 = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("receiver peak RSS: {} MiB", peak_kib / 1024);
    assert!(peak_kib < 256 * 1024, "peak RSS {} MiB", peak_kib / 1024);
    for ((_, status, code), answer) in uploads.iter().zip(answers) {
        let (st, v) = flowpack_testkit::answer(answer.unwrap()).await;
        assert_eq!((st, v["code"].as_str()), (*status, Some(*code)), "{v}");
    }

    drop(server);
}
