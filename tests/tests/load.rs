//! Load, bounded in time: 8 deployer threads push distinct standalone credential bundles (each
//! to its own container, sealed secrets) while 16 reader threads list containers, show
//! credentials and deployment histories, for about 8 seconds against one receiver. No request
//! may fail or answer an unexpected status, no acknowledged deploy may be lost, and the
//! receiver's resident memory (VmRSS) must stay flat: both figures are printed.
//!
//! Deterministic in what it sends (no randomness); the interleaving is up to the scheduler.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flowpack_e2e::*;
use flowpack_testkit::{Receiver, http, process::bin};
use serde_json::{Value, json};

const DEPLOYERS: usize = 8;
const READERS: usize = 16;
/// Distinct bundles per deployer, built before the load starts.
const BUNDLES_EACH: usize = 12;
/// How long the load runs.
const LOAD: Duration = Duration::from_secs(8);

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// Deployer `d`'s bundles, in the order they must be deployed (created_at increasing).
fn build(d: usize, dir: &Path, key: &Path, recipient: &str) -> Vec<Vec<u8>> {
    let proj = dir.join(format!("deployer-{d}"));
    std::fs::create_dir_all(&proj).unwrap();
    (0..BUNDLES_EACH)
        .map(|i| {
            let file = proj.join("svc.credential.json");
            std::fs::write(
                &file,
                json!({"name": "svc", "type": "password", "description": format!("bundle {i}"),
                       "include_in_deployment": true, "username": format!("user-{d}-{i}"),
                       "password": format!("secret-{d}-{i}"), "allow_usage_for": ["http"]})
                .to_string(),
            )
            .unwrap();
            let token = proj.join("token.credential.json");
            std::fs::write(
                &token,
                json!({"name": "token", "type": "api_key", "include_in_deployment": i % 2 == 0,
                       "placement": "query", "parameter_name": "k", "key": format!("key-{d}-{i}")})
                .to_string(),
            )
            .unwrap();
            let out = proj.join(format!("{i}.fpk"));
            ok(Command::new(bin("flowpack"))
                .arg("package-credentials")
                .arg(&file)
                .arg(&token)
                .arg("-k")
                .arg(key)
                .args(["-c", &format!("/load/d{d}"), "--seal-to", recipient, "-o"])
                .arg(&out));
            std::fs::read(&out).unwrap()
        })
        .collect()
}

#[test]
fn concurrent_deployers_and_readers_lose_nothing_and_memory_stays_flat() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut r = Receiver::init(dir, "data");
    r.trust(&root().join("fixtures/keys/signer.pub"), &["/load"]);
    let reader_token = r.token("reader", &["/load=read"]);
    let key = fixture_key(dir, "signer.key");
    let bundles: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..DEPLOYERS)
            .map(|d| {
                let (key, recipient) = (&key, &r.recipient);
                s.spawn(move || build(d, dir, key, recipient))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    r.serve();
    let pid = r.pid().unwrap();
    // Warm up: one request of each kind, so the baseline includes the runtime's first
    // allocations rather than counting them as growth.
    assert_eq!(r.get_json("/v1/deployments").0, 200);
    assert_eq!(r.get_json("/v1/containers/").0, 200);
    let rss_start = rss_kib(pid);

    let start = Instant::now();
    let url = r.url.clone();
    let admin = r.admin_token.clone();
    let acked: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let first_acked: Vec<AtomicBool> = (0..DEPLOYERS).map(|_| AtomicBool::new(false)).collect();
    let deploys = AtomicU64::new(0);
    let replays = AtomicU64::new(0);
    let reads = AtomicU64::new(0);
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut rss_samples = Vec::new();
    std::thread::scope(|s| {
        for (d, mine) in bundles.iter().enumerate() {
            let (url, admin) = (&url, &admin);
            let (acked, first_acked, errors) = (&acked, &first_acked, &errors);
            let (deploys, replays) = (&deploys, &replays);
            s.spawn(move || {
                // Each distinct bundle once, in order (even past the time, on a slow
                // machine); then replays of them (200, nothing changes) until the time is up.
                let mut i = 0;
                while i < mine.len() || start.elapsed() < LOAD {
                    let b = &mine[i % mine.len()];
                    let (status, body) = http(
                        url,
                        "POST",
                        "/v1/deployments",
                        Some(admin),
                        "application/zip",
                        b,
                    );
                    let rec: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let fresh = i < mine.len();
                    match (status, fresh) {
                        (201, true) if rec["replayed"] == false => {
                            acked
                                .lock()
                                .unwrap()
                                .push((d, rec["bundle_id"].as_str().unwrap().to_owned()));
                            first_acked[d].store(true, Ordering::SeqCst);
                            deploys.fetch_add(1, Ordering::Relaxed);
                        }
                        (200, false) if rec["replayed"] == true => {
                            replays.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => errors.lock().unwrap().push(format!(
                            "deployer {d}, bundle {}: {status} {rec}",
                            i % mine.len()
                        )),
                    }
                    i += 1;
                }
            });
        }
        for t in 0..READERS {
            let (url, token) = (&url, &reader_token);
            let (first_acked, errors, reads) = (&first_acked, &errors, &reads);
            s.spawn(move || {
                let mut i = t;
                while start.elapsed() < LOAD {
                    let d = i % DEPLOYERS;
                    let path = match i % 4 {
                        0 => format!("/v1/containers/load/d{d}"),
                        1 => format!("/v1/credentials/load/d{d}/svc"),
                        2 => format!("/v1/deployments?container=/load/d{d}"),
                        _ => "/v1/containers/load".to_owned(),
                    };
                    // Known before the request: whether the thing must exist by now.
                    let must_exist = first_acked[d].load(Ordering::SeqCst);
                    let (status, body) = http(url, "GET", &path, Some(token), "", b"");
                    let fine = match status {
                        200 => {
                            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                            // Never a secret in a read.
                            !contains(&body, b"secret-")
                                && !contains(&body, b"key-")
                                && (i % 4 != 1 || v["password"]["set"] == true)
                        }
                        // Before the first deploy to a container, it does not exist yet.
                        404 => !must_exist,
                        _ => false,
                    };
                    if !fine {
                        errors.lock().unwrap().push(format!(
                            "reader {t}: GET {path}: {status} {}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    i += READERS;
                    // Pace a little so a slow machine is not flooded with TIME_WAIT sockets.
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
        // Sample memory once a second while the load runs.
        while start.elapsed() < LOAD {
            std::thread::sleep(Duration::from_secs(1));
            rss_samples.push(rss_kib(pid) / 1024);
        }
    });
    let elapsed = start.elapsed();
    let rss_end = rss_kib(pid);
    let errors = errors.into_inner().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors, first ones:\n{}\nlog: {}",
        errors.len(),
        errors[..errors.len().min(20)].join("\n"),
        std::fs::read_to_string(&r.log).unwrap_or_default()
    );

    // No lost deploy: every acknowledged one is listed, and each container holds its last
    // bundle's values.
    let acked = acked.into_inner().unwrap();
    let (s, d) = r.get_json("/v1/deployments");
    assert_eq!(s, 200);
    let listed: BTreeSet<&str> = d["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["bundle_id"].as_str().unwrap())
        .collect();
    for (dep, id) in &acked {
        assert!(
            listed.contains(id.as_str()),
            "deployer {dep}'s bundle {id} is lost"
        );
    }
    assert_eq!(listed.len(), acked.len(), "deployments nobody acknowledged");
    for dep in 0..DEPLOYERS {
        let n = acked.iter().filter(|(x, _)| *x == dep).count();
        assert_eq!(n, BUNDLES_EACH, "deployer {dep} deployed only {n} bundles");
        let (s, c) = r.get_json(&format!("/v1/credentials/load/d{dep}/svc"));
        assert_eq!(s, 200, "{c}");
        assert_eq!(c["username"], json!(format!("user-{dep}-{}", n - 1)), "{c}");
    }

    eprintln!(
        "load test: {:.1?}, {} deploys + {} replays by {DEPLOYERS} deployers, {} reads by \
         {READERS} readers; receiver VmRSS {rss_start} KiB at start, {rss_end} KiB at end \
         (MiB each second: {rss_samples:?})",
        elapsed,
        deploys.load(Ordering::Relaxed),
        replays.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
    );
    assert!(
        rss_end < 3 * rss_start + 64 * 1024,
        "receiver memory grew from {rss_start} KiB to {rss_end} KiB"
    );
}
