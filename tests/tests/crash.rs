//! Crash safety: a series of distinct bundles is deployed to two containers while the receiver
//! is killed with SIGKILL at random moments (seeded delays, 0–300 ms after each start, so the
//! kills land in uploads, verifications and applies), restarted on the same data directory,
//! and the series continued. After every restart and at the end:
//!
//! - every acknowledged (2xx) deploy is in `GET /v1/deployments`, and nothing else is;
//! - every container equals exactly a fully applied state: the state after its last
//!   acknowledged bundle, or after the bundle that was in flight when the receiver died —
//!   listings, each mapping's `version`, description and file bytes, each credential's fields,
//!   and the secret's fingerprint, which must belong to the same step as the other fields;
//! - the spool holds no upload left by the kill.
//!
//! A second test kills the receiver during rollbacks: the container is then exactly before or
//! after the rollback.
//!
//! The seed is fixed (override with FLOWPACK_CRASH_SEED); where the kills land also depends
//! on timing, so each run explores different moments, and every run checks the same
//! invariants. The kill count is printed.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowpack_e2e::*;
use flowpack_testkit::{Receiver, process::bin, try_http};
use serde_json::{Value, json};

/// Steps in the series.
const STEPS: usize = 60;
/// Containers: most steps go to the first, every third to the second.
const MAIN: &str = "/crash/main";
const SIDE: &str = "/crash/side";
/// Longest random delay before a kill.
const MAX_DELAY_MS: u64 = 300;

/// SplitMix64: small, seeded, good enough to pick sizes and delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// What a container holds, as the API shows it (secrets only as set/unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    mappings: BTreeMap<String, MappingState>,
    credentials: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MappingState {
    version: u64,
    description: String,
    files: BTreeMap<String, Vec<u8>>,
}

/// One step of the series: its bundle and what it does to its container.
struct Step {
    container: &'static str,
    bundle: Vec<u8>,
    /// Mappings it deploys: name, description, files.
    mappings: Vec<(String, String, BTreeMap<String, Vec<u8>>)>,
    /// Credentials it deploys, as the API shows them.
    credentials: Vec<(String, Value)>,
}

fn target(k: usize) -> &'static str {
    if k % 3 == 2 { SIDE } else { MAIN }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes step `k`'s project and packages it with the `flowpack` CLI: a deployment of two
/// mappings (one with 1–3 MiB of incompressible data) and two credentials, or, every fifth
/// step, a standalone credential bundle.
fn build_step(k: usize, dir: &Path, key: &Path, recipient: &str, rng: &mut Rng) -> Step {
    let proj = dir.join(format!("step-{k:02}"));
    let container = target(k);
    let credentials_only = k % 5 == 4;
    let desc = format!("step {k}");
    let aux = format!("aux-{}", k % 4);
    let api = format!("api-{}", k % 3);
    write(
        &proj.join("svc.credential.json"),
        json!({"name": "svc", "type": "password", "description": desc,
               "include_in_deployment": true, "username": format!("user-{k}"),
               "password": format!("password-of-step-{k}"), "allow_usage_for": ["http"]})
        .to_string()
        .as_bytes(),
    );
    write(
        &proj.join(format!("{api}.credential.json")),
        json!({"name": api, "type": "api_key", "description": desc,
               "include_in_deployment": false, "placement": "header",
               "parameter_name": format!("X-Key-{k}"), "key": format!("key-of-step-{k}")})
        .to_string()
        .as_bytes(),
    );
    let credentials = vec![
        (
            "svc".to_owned(),
            json!({"type": "password", "description": desc, "username": format!("user-{k}"),
                   "secret_set": true, "needs_secrets": false}),
        ),
        (
            api.clone(),
            json!({"type": "api_key", "description": desc, "parameter_name": format!("X-Key-{k}"),
                   "secret_set": false, "needs_secrets": true}),
        ),
    ];
    let out = dir.join(format!("step-{k:02}.fpk"));
    let mut cmd = Command::new(bin("flowpack"));
    let mut mappings = Vec::new();
    if credentials_only {
        cmd.arg("package-credentials")
            .arg(proj.join("svc.credential.json"))
            .arg(proj.join(format!("{api}.credential.json")));
    } else {
        let size = 1024 * 1024 + rng.below(2 * 1024 * 1024) as usize;
        let mut big = format!("step {k}\n").into_bytes();
        big.extend(rng.bytes(size));
        let schema = format!("<schema step=\"{k}\"/>\n").into_bytes();
        let note = format!("aux of step {k}\n").into_bytes();
        write(&proj.join("flow.mfd"), &big);
        write(&proj.join("schemas/s.xsd"), &schema);
        write(&proj.join("aux.txt"), &note);
        write(
            &proj.join("flow.mapping.json"),
            json!({"name": "flow", "description": desc,
                   "parameters": [{"name": "svc.credentials", "type": "credential",
                                   "credential": "svc"}],
                   "files": ["flow.mfd", "schemas/s.xsd"]})
            .to_string()
            .as_bytes(),
        );
        write(
            &proj.join("aux.mapping.json"),
            json!({"name": aux, "description": desc, "parameters": [], "files": ["aux.txt"]})
                .to_string()
                .as_bytes(),
        );
        mappings.push((
            "flow".to_owned(),
            desc.clone(),
            BTreeMap::from([
                ("flow.mfd".to_owned(), big),
                ("schemas/s.xsd".to_owned(), schema),
            ]),
        ));
        mappings.push((
            aux.clone(),
            desc.clone(),
            BTreeMap::from([("aux.txt".to_owned(), note)]),
        ));
        cmd.arg("package").arg(&proj);
    }
    ok(cmd
        .arg("-k")
        .arg(key)
        .args(["-c", container, "--seal-to", recipient, "-o"])
        .arg(&out));
    Step {
        container,
        bundle: std::fs::read(&out).unwrap(),
        mappings,
        credentials,
    }
}

/// The state of each container after each step: `expected[k][container]`.
fn expected_states(steps: &[Step]) -> Vec<HashMap<&'static str, State>> {
    let mut now: HashMap<&'static str, State> = HashMap::new();
    let mut out = Vec::new();
    for s in steps {
        let st = now.entry(s.container).or_default();
        for (name, desc, files) in &s.mappings {
            let version = st.mappings.get(name).map_or(0, |m| m.version) + 1;
            st.mappings.insert(
                name.clone(),
                MappingState {
                    version,
                    description: desc.clone(),
                    files: files.clone(),
                },
            );
        }
        for (name, c) in &s.credentials {
            // Upsert: the non-sensitive fields are replaced; a secret omitted is kept.
            let mut c = c.clone();
            if let Some(old) = st.credentials.get(name)
                && old["secret_set"] == true
                && c["secret_set"] == false
            {
                c["secret_set"] = json!(true);
                c["needs_secrets"] = json!(false);
            }
            st.credentials.insert(name.clone(), c);
        }
        out.push(now.clone());
    }
    out
}

fn get(r: &Receiver, path: &str) -> (u16, Vec<u8>) {
    r.request("GET", path, Some(&r.admin_token), "", b"")
}

fn get_json(r: &Receiver, path: &str) -> (u16, Value) {
    let (s, b) = get(r, path);
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// Reads what the receiver holds in `container`; the second value maps each credential's
/// username to its secret's fingerprint.
fn actual_state(r: &Receiver, container: &str) -> (State, Vec<(String, String)>) {
    let rel = container.trim_start_matches('/');
    let (s, c) = get_json(r, &format!("/v1/containers/{rel}"));
    if s == 404 {
        return (State::default(), Vec::new());
    }
    assert_eq!(s, 200, "container {container}: {c}");
    let mut st = State::default();
    let mut fingerprints = Vec::new();
    for m in names(&c["mappings"]) {
        let (s, v) = get_json(r, &format!("/v1/mappings/{rel}/{m}"));
        assert_eq!(s, 200, "{m}: {v}");
        let mut files = BTreeMap::new();
        for f in names(&v["files"]) {
            let (s, bytes) = get(r, &format!("/v1/mappings/{rel}/{m}/files/{f}"));
            assert_eq!(s, 200, "{m}/{f}");
            files.insert(f, bytes);
        }
        st.mappings.insert(
            m,
            MappingState {
                version: v["version"].as_u64().unwrap(),
                description: v["description"].as_str().unwrap_or_default().to_owned(),
                files,
            },
        );
    }
    for n in names(&c["credentials"]) {
        let (s, v) = get_json(r, &format!("/v1/credentials/{rel}/{n}"));
        assert_eq!(s, 200, "{n}: {v}");
        let secret = if v["type"] == "password" {
            &v["password"]
        } else {
            &v["key"]
        };
        let mut shown = json!({"type": v["type"], "description": v["description"],
                               "secret_set": secret["set"] == true,
                               "needs_secrets": v["needs_secrets"]});
        for field in ["username", "parameter_name"] {
            if !v[field].is_null() {
                shown[field] = v[field].clone();
            }
        }
        if let (Some(u), Some(f)) = (v["username"].as_str(), secret["fingerprint"].as_str()) {
            fingerprints.push((u.to_owned(), f.to_owned()));
        }
        st.credentials.insert(n, shown);
    }
    (st, fingerprints)
}

/// What the test knows about the series so far.
#[derive(Default)]
struct Progress {
    /// Bundle ids of acknowledged steps, by step.
    acked: BTreeMap<usize, String>,
    /// The step being deployed when the receiver died, not acknowledged.
    in_flight: Option<usize>,
    /// Fingerprint seen for each step's secret (`user-<k>`).
    fingerprints: HashMap<String, String>,
}

fn describe(s: &State) -> String {
    let maps: Vec<String> = s
        .mappings
        .iter()
        .map(|(n, m)| format!("{n} v{} ({})", m.version, m.description))
        .collect();
    format!(
        "mappings [{}], credentials {:?}",
        maps.join(", "),
        s.credentials
    )
}

/// Checks both invariants against a running receiver.
fn check(
    r: &Receiver,
    steps: &[Step],
    expected: &[HashMap<&'static str, State>],
    p: &mut Progress,
    when: &str,
) {
    // Every acknowledged deploy is present; nothing that is not ours is.
    let (s, d) = get_json(r, "/v1/deployments");
    assert_eq!(s, 200, "{d}");
    let listed: Vec<String> = d["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["bundle_id"].as_str().unwrap().to_owned())
        .collect();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "{when}: a deployment twice: {d}"
    );
    for (k, id) in &p.acked {
        assert!(
            unique.contains(id),
            "{when}: acknowledged step {k} (bundle {id}) is missing from {d}"
        );
    }
    assert!(
        listed.len() == p.acked.len()
            || (listed.len() == p.acked.len() + 1 && p.in_flight.is_some()),
        "{when}: {} deployments listed, {} acknowledged, in flight {:?}",
        listed.len(),
        p.acked.len(),
        p.in_flight
    );

    // Each container is exactly the state after its last acknowledged step, or after the one
    // in flight.
    for container in [MAIN, SIDE] {
        let last_acked = p
            .acked
            .keys()
            .rev()
            .find(|k| steps[**k].container == container);
        let mut allowed: Vec<(String, State)> = vec![(
            format!("after step {last_acked:?}"),
            last_acked
                .and_then(|k| expected[*k].get(container).cloned())
                .unwrap_or_default(),
        )];
        if let Some(k) = p.in_flight
            && steps[k].container == container
        {
            allowed.push((
                format!("after step {k} (in flight)"),
                expected[k][container].clone(),
            ));
        }
        let (actual, fingerprints) = actual_state(r, container);
        assert!(
            allowed.iter().any(|(_, s)| *s == actual),
            "{when}: {container} is not a fully applied state:\n  actual: {}\n{}",
            describe(&actual),
            allowed
                .iter()
                .map(|(w, s)| format!("  {w}: {}", describe(s)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The secret belongs to the same step as the username beside it.
        for (user, fp) in fingerprints {
            let seen = p.fingerprints.entry(user.clone()).or_insert(fp.clone());
            assert_eq!(*seen, fp, "{when}: {user}'s secret changed fingerprint");
        }
    }
    let fps: BTreeSet<&String> = p.fingerprints.values().collect();
    assert_eq!(
        fps.len(),
        p.fingerprints.len(),
        "{when}: two steps' different secrets share a fingerprint: {:?}",
        p.fingerprints
    );
}

/// Sends SIGKILL to `pid` after `delay`, unless told not to first. Returns whether it did.
fn arm_killer(pid: u32, delay: Duration) -> (mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let (tx, rx) = mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        if rx.recv_timeout(delay) == Err(mpsc::RecvTimeoutError::Timeout) {
            let st = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
            assert!(st.success(), "kill -KILL {pid} failed");
            true
        } else {
            false
        }
    });
    (tx, h)
}

fn leftover_spool_files(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("spool"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn sigkill_during_deploys_leaves_every_container_fully_applied() {
    let started = Instant::now();
    let seed: u64 = std::env::var("FLOWPACK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f10c);
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut r = Receiver::init(dir, "data");
    r.trust(&root().join("fixtures/keys/signer.pub"), &["/crash"]);
    let key = fixture_key(dir, "signer.key");
    let steps: Vec<Step> = (0..STEPS)
        .map(|k| build_step(k, dir, &key, &r.recipient, &mut rng))
        .collect();
    let expected = expected_states(&steps);
    let built = started.elapsed();

    let mut p = Progress::default();
    let mut kills = 0;
    let mut replayed_after_kill = 0;
    let mut attempts = 0;
    let mut next = 0;
    r.serve();
    while next < STEPS {
        let delay = Duration::from_millis(rng.below(MAX_DELAY_MS + 1));
        let (cancel, killer) = arm_killer(r.pid().unwrap(), delay);
        let mut failure = None;
        while next < STEPS {
            attempts += 1;
            match try_http(
                &r.url,
                "POST",
                "/v1/deployments",
                Some(&r.admin_token),
                "application/zip",
                &steps[next].bundle,
            ) {
                Ok((status @ (200 | 201), body)) => {
                    let record: Value = serde_json::from_slice(&body).unwrap();
                    let replayed = record["replayed"] == true;
                    assert_eq!((status == 200), replayed, "step {next}: {status} {record}");
                    if replayed {
                        // Only a bundle applied before a kill, unacknowledged, is a replay.
                        assert_eq!(p.in_flight, Some(next), "step {next} replayed: {record}");
                        replayed_after_kill += 1;
                    }
                    p.acked
                        .insert(next, record["bundle_id"].as_str().unwrap().to_owned());
                    p.in_flight = None;
                    next += 1;
                }
                Ok((status, body)) => panic!(
                    "step {next}: unexpected {status}: {}\nlog: {}",
                    String::from_utf8_lossy(&body),
                    std::fs::read_to_string(&r.log).unwrap_or_default()
                ),
                Err(e) => {
                    p.in_flight = Some(next);
                    failure = Some(e);
                    break;
                }
            }
        }
        // A closed channel also stops the killer: the series may end before the delay.
        let _ = cancel.send(());
        let killed = killer.join().unwrap();
        if let Some(e) = &failure {
            assert!(
                killed,
                "step {next} failed without a kill: {e}\nlog: {}",
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
        }
        if killed {
            kills += 1;
        }
        r.stop();
        r.serve();
        let when = format!("after kill {kills}");
        // SIGKILL skips the cleanup of a spooled upload; the restart removes what it left.
        let spool = leftover_spool_files(&r.data);
        assert!(
            spool.is_empty(),
            "{when}: uploads left in the spool: {spool:?}"
        );
        check(&r, &steps, &expected, &mut p, &when);
    }

    // Everything acknowledged, and each container is its state after the last step.
    assert_eq!(p.acked.len(), STEPS);
    for container in [MAIN, SIDE] {
        let (actual, _) = actual_state(&r, container);
        assert_eq!(
            actual,
            expected[STEPS - 1][container],
            "{container} at the end"
        );
    }
    eprintln!(
        "crash test: seed {seed:#x}, {STEPS} steps, {attempts} deploy attempts, {kills} SIGKILLs, \
         {replayed_after_kill} bundles applied but unacknowledged before a kill (replayed on retry); \
         built in {:.1?}, total {:.1?}",
        built,
        started.elapsed()
    );
    assert!(
        kills >= 3,
        "only {kills} kills: the test exercised too little"
    );
}

/// A deployment of the rollback test: its id, the container's state right after it (with the
/// fingerprints), and the names of the mappings and credentials it wrote.
type Deployed = (
    Value,
    (State, Vec<(String, String)>),
    Vec<String>,
    Vec<String>,
);

/// Rollbacks killed at random moments: a few deployments are applied undisturbed, then
/// rollbacks to random ones of them are sent while the receiver is killed with SIGKILL at a
/// random moment within 1½ times the duration of an undisturbed rollback. After every restart the container is exactly its state before
/// the rollback or exactly the state the rolled-back deployment left (listings, versions,
/// file bytes, fields and secret fingerprints); an acknowledged rollback is the latter, and is
/// listed with its `rollback_of`.
#[test]
fn sigkill_during_rollbacks_leaves_the_container_before_or_after_them() {
    const DEPLOYS: usize = 8;
    const ROLLBACKS: usize = 24;
    let seed: u64 = std::env::var("FLOWPACK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0b5e_55ed);
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut r = Receiver::init(dir, "data");
    r.trust(&root().join("fixtures/keys/signer.pub"), &["/crash"]);
    let key = fixture_key(dir, "signer.key");
    r.serve();
    // Only the steps that go to MAIN: one container, so "before" is always the last state.
    let mut deployed: Vec<Deployed> = Vec::new();
    for k in (0..).filter(|k| target(*k) == MAIN).take(DEPLOYS) {
        let step = build_step(k, dir, &key, &r.recipient, &mut rng);
        let (status, body) = try_http(
            &r.url,
            "POST",
            "/v1/deployments",
            Some(&r.admin_token),
            "application/zip",
            &step.bundle,
        )
        .unwrap();
        assert_eq!(status, 201, "step {k}: {}", String::from_utf8_lossy(&body));
        let record: Value = serde_json::from_slice(&body).unwrap();
        let maps = step.mappings.iter().map(|m| m.0.clone()).collect();
        let creds = step.credentials.iter().map(|c| c.0.clone()).collect();
        deployed.push((record["id"].clone(), actual_state(&r, MAIN), maps, creds));
    }
    // How long a rollback takes depends on the machine and the storage engine: one is timed
    // undisturbed, and the kills land at random moments within 1½ times that.
    let started = std::time::Instant::now();
    let (status, body) = try_http(
        &r.url,
        "POST",
        &format!("/v1/deployments/{}/rollback", deployed[0].0),
        Some(&r.admin_token),
        "",
        b"",
    )
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let window = u64::try_from(started.elapsed().as_millis() * 3 / 2)
        .unwrap_or(u64::MAX)
        .max(6);
    let mut acked: Vec<(Value, Value)> = Vec::new();
    let mut kills = 0;
    // When the first ROLLBACKS make too few kills, more follow with shorter delays; when they
    // leave none acknowledged, more follow with longer ones, until the test has exercised
    // enough.
    let mut n = 0;
    while n < ROLLBACKS || ((kills < 3 || acked.is_empty()) && n < 4 * ROLLBACKS) {
        let (id, then, maps, creds) = deployed[rng.below(DEPLOYS as u64) as usize].clone();
        let before = actual_state(&r, MAIN);
        // A rollback puts back what the deployment wrote and leaves the rest alone. Every
        // deployment writes `svc`, the one credential with a fingerprint listed, so those are
        // the deployment's.
        let mut after = (before.0.clone(), then.1.clone());
        for m in &maps {
            after
                .0
                .mappings
                .insert(m.clone(), then.0.mappings[m].clone());
        }
        for c in &creds {
            after
                .0
                .credentials
                .insert(c.clone(), then.0.credentials[c].clone());
        }
        let most = if n < ROLLBACKS {
            window
        } else if kills < 3 {
            window / 6 + 1
        } else {
            window * 3
        };
        let delay = Duration::from_millis(rng.below(most));
        let (cancel, killer) = arm_killer(r.pid().unwrap(), delay);
        let answer = try_http(
            &r.url,
            "POST",
            &format!("/v1/deployments/{id}/rollback"),
            Some(&r.admin_token),
            "",
            b"",
        );
        let _ = cancel.send(());
        let killed = killer.join().unwrap();
        if killed {
            kills += 1;
            r.stop();
            r.serve();
        }
        let now = actual_state(&r, MAIN);
        let when = format!("rollback {n} to deployment {id} (killed: {killed})");
        match answer {
            Ok((201, body)) => {
                let record: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(record["rollback_of"], id, "{when}");
                assert!(
                    now == after,
                    "{when}: acknowledged, but not the state it restores"
                );
                acked.push((record["id"].clone(), id.clone()));
            }
            Ok((status, body)) => panic!(
                "{when}: unexpected {status}: {}",
                String::from_utf8_lossy(&body)
            ),
            Err(e) => {
                assert!(killed, "{when}: failed without a kill: {e}");
                assert!(
                    now == before || now == after,
                    "{when}: neither the state before nor the one after:\n  actual: {}\n  before: {}\n  after: {}",
                    describe(&now.0),
                    describe(&before.0),
                    describe(&after.0)
                );
            }
        }
        // Every acknowledged rollback is listed, as a rollback of what it restored.
        let (_, listed) = get_json(&r, "/v1/deployments?limit=1000");
        for (rid, of) in &acked {
            let found = listed["deployments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == *rid)
                .unwrap_or_else(|| panic!("{when}: acknowledged rollback {rid} is not listed"));
            assert_eq!(found["rollback_of"], *of, "{when}");
        }
        n += 1;
    }
    eprintln!(
        "rollback crash test: seed {seed:#x}, {n} rollbacks, {kills} SIGKILLs, {} acknowledged",
        acked.len()
    );
    assert!(
        kills >= 3,
        "only {kills} kills: the test exercised too little"
    );
    assert!(!acked.is_empty(), "no rollback was acknowledged");
}
