//! End to end over the real binaries: a designer packages and deploys the sample project, a
//! release script pushes a standalone credential bundle, a job step's credentials are resolved,
//! a redeploy without secrets keeps them, an admin deletes what is no longer referenced — and no
//! canary secret appears anywhere it must not.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use flowpack_e2e::*;
use flowpack_testkit::{Receiver, process::bin};
use serde_json::{Value, json};

const CANARIES: [&str; 4] = [
    "canary-erp-password-7f3a",
    "canary-crm-client-secret-2b9c",
    "canary-shipping-api-key-5d1e",
    "canary-warehouse",
];

struct Transcript(Vec<u8>);

impl Transcript {
    fn add(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        self.0.push(b'\n');
    }
    fn cmd(&mut self, cmd: &mut Command) -> std::process::Output {
        let out = run(cmd);
        self.add(&out.stdout);
        self.add(&out.stderr);
        out
    }
}

#[test]
fn designer_and_release_script_flows_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut t = Transcript(Vec::new());
    let mut r = Receiver::init(dir, "data");
    let key = dir.join("signer.key");
    t.cmd(
        Command::new(bin("flowpack"))
            .args(["keygen", "-o"])
            .arg(&key),
    );
    r.trust(&dir.join("signer.key.pub"), &["/public"]);
    r.serve();
    std::fs::write(dir.join("token"), &r.admin_token).unwrap();
    let sample = root().join("fixtures/sample");

    // The designer packages the sample, sealed to this receiver, and deploys it.
    let bundle = dir.join("sample.fpk");
    let out = t.cmd(
        Command::new(bin("flowpack"))
            .arg("package")
            .arg(&sample)
            .arg("-k")
            .arg(&key)
            .args(["-c", "/public/orders", "--seal-to", &r.recipient, "-o"])
            .arg(&bundle),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t.cmd(
        Command::new(bin("flowpack"))
            .arg("deploy")
            .arg(&bundle)
            .args(["--server", &r.url, "--json", "--token-file"])
            .arg(dir.join("token")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["replayed"], json!(false));
    assert_eq!(record["container"], json!("/public/orders"));

    // The mapping's page shows its credential parameters.
    let (s, m) = r.get_json("/v1/mappings/public/orders/orders-to-erp");
    t.add(m.to_string().as_bytes());
    assert_eq!(s, 200);
    let params = m["credential_parameters"].as_array().unwrap();
    let param = |n: &str| {
        params
            .iter()
            .find(|p| p["name"] == json!(n))
            .unwrap_or_else(|| panic!("no {n} in {m}"))
            .clone()
    };
    assert_eq!(
        param("erp.credentials")["credential"],
        json!("/public/orders/erp")
    );
    assert_eq!(param("erp.credentials")["has_secrets"], json!(true));
    assert_eq!(param("crm.token")["stored"], json!(true));
    assert_eq!(param("crm.token")["has_secrets"], json!(false));
    let (s, file) = r.request(
        "GET",
        "/v1/mappings/public/orders/orders-to-erp/files/schemas/order.xsd",
        Some(&r.admin_token),
        "",
        b"",
    );
    assert_eq!(
        (s, file),
        (
            200,
            std::fs::read(sample.join("schemas/order.xsd")).unwrap()
        )
    );

    // The credential is redacted, with a fingerprint.
    let (_, erp) = r.get_json("/v1/credentials/public/orders/erp");
    t.add(erp.to_string().as_bytes());
    assert_eq!(erp["password"]["set"], json!(true));
    assert_eq!(erp["needs_secrets"], json!(false));
    let fingerprint = erp["password"]["fingerprint"].clone();
    assert!(fingerprint.is_string());

    // A redeploy without secrets keeps them.
    let copy = dir.join("sample-no-secrets");
    copy_dir(&sample, &copy);
    let erp_file = copy.join("erp.credential.json");
    let edited = std::fs::read_to_string(&erp_file).unwrap().replace(
        "\"include_in_deployment\": true",
        "\"include_in_deployment\": false",
    );
    std::fs::write(&erp_file, edited).unwrap();
    let bundle2 = dir.join("sample2.fpk");
    assert!(
        t.cmd(
            Command::new(bin("flowpack"))
                .arg("package")
                .arg(&copy)
                .arg("-k")
                .arg(&key)
                .args(["-c", "/public/orders", "-o"])
                .arg(&bundle2)
        )
        .status
        .success()
    );
    let out = t.cmd(
        Command::new(bin("flowpack"))
            .arg("deploy")
            .arg(&bundle2)
            .args(["--server", &r.url, "--json", "--token-file"])
            .arg(dir.join("token")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, erp) = r.get_json("/v1/credentials/public/orders/erp");
    assert_eq!(
        erp["password"]["fingerprint"], fingerprint,
        "a redeploy without secrets must keep them"
    );
    assert_eq!(erp["needs_secrets"], json!(false));
    // Deploying the first bundle again is a replay.
    let out = t.cmd(
        Command::new(bin("flowpack"))
            .arg("deploy")
            .arg(&bundle)
            .args(["--server", &r.url, "--json", "--token-file"])
            .arg(dir.join("token")),
    );
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["replayed"],
        json!(true)
    );

    // A release script pushes a standalone credential bundle to another container.
    let creds = dir.join("creds.fpk");
    let out = t.cmd(
        Command::new(bin("flowpack"))
            .arg("package-credentials")
            .arg(sample.join("shipping-api.credential.json"))
            .arg(sample.join("erp.credential.json"))
            .arg("-k")
            .arg(&key)
            .args(["-c", "/public/shared", "--seal-to", &r.recipient, "-o"])
            .arg(&creds),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t.cmd(
        Command::new(bin("flowpack"))
            .arg("deploy")
            .arg(&creds)
            .args(["--server", &r.url, "--token-file"])
            .arg(dir.join("token")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, shipping) = r.get_json("/v1/credentials/public/shared/shipping-api");
    assert_eq!((s, &shipping["needs_secrets"]), (200, &json!(true)));
    let (_, shared_erp) = r.get_json("/v1/credentials/public/shared/erp");
    assert_eq!(
        shared_erp["password"]["fingerprint"], fingerprint,
        "same value, same fingerprint"
    );

    // A job step: deployed credentials without secrets need a step parameter…
    let resolve = |body: Value| {
        let (s, b) = r.request(
            "POST",
            "/v1/mappings/public/orders/orders-to-erp/resolve",
            Some(&r.admin_token),
            "application/json",
            body.to_string().as_bytes(),
        );
        (
            s,
            serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
        )
    };
    let (s, problem) = resolve(json!({"usage": "http", "parameters": {}}));
    assert_eq!(s, 422, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        ["crm.token", "shipping.key", "warehouse.db", "notify.smtp"]
            .iter()
            .any(|p| detail.contains(p)),
        "{detail}"
    );
    // …and a step parameter wins over the deployed credential.
    let (s, res) = resolve(json!({"usage": "http", "parameters": {
        "erp.credentials": {"credential": "/public/shared/erp"},
        "crm.token": {"inline": {"type": "oauth2", "client_id": "c", "client_secret": "inline-secret"}},
        "shipping.key": {"inline": {"type": "api_key", "key": "k"}},
        "warehouse.db": {"inline": {"type": "database", "password": "p"}},
        "notify.smtp": {"inline": {"type": "password", "username": "u", "password": "p"}}
    }}));
    assert_eq!(s, 200, "{res}");
    t.add(res.to_string().as_bytes());
    assert_eq!(
        res["parameters"]["erp.credentials"]["source"],
        json!("server")
    );
    assert_eq!(
        res["parameters"]["erp.credentials"]["credential"],
        json!("/public/shared/erp")
    );
    assert_eq!(res["parameters"]["crm.token"]["source"], json!("inline"));
    assert!(!res.to_string().contains("inline-secret"));

    // An admin deletes what is no longer referenced.
    let (s, b) = r.request(
        "DELETE",
        "/v1/credentials/public/orders/erp",
        Some(&r.admin_token),
        "",
        b"",
    );
    assert_eq!(s, 409);
    assert!(String::from_utf8_lossy(&b).contains("orders-to-erp"));
    let (s, _) = r.request(
        "DELETE",
        "/v1/mappings/public/orders/orders-to-erp",
        Some(&r.admin_token),
        "",
        b"",
    );
    assert_eq!(s, 204);
    let (s, _) = r.request(
        "DELETE",
        "/v1/credentials/public/orders/erp",
        Some(&r.admin_token),
        "",
        b"",
    );
    assert_eq!(s, 204);
    let (_, audit) = r.get_json("/v1/audit");
    t.add(audit.to_string().as_bytes());
    assert!(audit.to_string().contains("/public/orders"));

    // No canary, anywhere: command output, responses, logs, and the data directory in clear.
    r.stop();
    t.add(&std::fs::read(&r.log).unwrap());
    for canary in CANARIES {
        assert!(
            !contains(&t.0, canary.as_bytes()),
            "{canary} leaked into output, a response or a log"
        );
    }
    for entry in walk(&r.data) {
        let bytes = std::fs::read(&entry).unwrap();
        for canary in CANARIES {
            assert!(
                !contains(&bytes, canary.as_bytes()),
                "{canary} in clear in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn hostile_corpus_is_refused_by_the_receiver_with_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut r = Receiver::init(dir, "data");
    // The corpus is sealed to fixtures/keys/receiver.agekey: use it as this receiver's identity.
    std::fs::copy(
        root().join("fixtures/keys/receiver.agekey"),
        r.data.join("sealing.agekey"),
    )
    .unwrap();
    r.trust(&root().join("fixtures/keys/signer.pub"), &[]);
    r.trust(&root().join("fixtures/keys/other.pub"), &["/other"]);
    r.serve();
    let corpus = root().join("fixtures/malicious");
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fpk"))
        .collect();
    cases.sort();
    let snapshot = |r: &Receiver| {
        [
            "/v1/containers/public/orders",
            "/v1/containers/other/orders",
            "/v1/deployments?container=/",
        ]
        .map(|p| r.get_json(p).1.to_string())
    };
    let mut wrong = Vec::new();
    let mut before = snapshot(&r);
    for case in &cases {
        let expect: Value =
            serde_json::from_slice(&std::fs::read(case.with_extension("expect")).unwrap()).unwrap();
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (status, body) = r.request(
            "POST",
            "/v1/deployments",
            Some(&r.admin_token),
            "application/zip",
            &std::fs::read(case).unwrap(),
        );
        let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let want = expect["status"].as_u64().unwrap() as u16;
        if expect["code"] == json!("ok") {
            if !(status == 201 || status == 200) {
                wrong.push(format!(
                    "{name}: {status} {problem}, expected to be applied"
                ));
            }
            before = snapshot(&r);
            continue;
        }
        if status != want
            || problem["code"] != expect["code"]
            || problem["detail"].as_str().is_none_or(|d| d.len() < 10)
        {
            wrong.push(format!(
                "{name}: {status} {problem}, expected {want} {}",
                expect["code"]
            ));
        }
        let (s, _) = r.request("GET", "/healthz", None, "", b"");
        assert_eq!(s, 200, "the receiver stopped serving after {name}");
        if snapshot(&r) != before {
            wrong.push(format!("{name}: the store changed"));
            before = snapshot(&r);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// A release script seals one bundle to two receivers (say, two sites), reading each one's
/// recipient from the receiver itself, and deploys the same file to both; a third receiver
/// cannot open it.
#[test]
fn one_bundle_sealed_to_two_receivers_deploys_to_both_and_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = dir.join("signer.key");
    ok(Command::new(bin("flowpack"))
        .args(["keygen", "-o"])
        .arg(&key));
    let mut receivers: Vec<Receiver> = ["a", "b", "c"]
        .into_iter()
        .map(|n| Receiver::init(dir, n))
        .collect();
    for r in &mut receivers {
        r.trust(&dir.join("signer.key.pub"), &[]);
        r.serve();
    }
    let bundle = dir.join("both.fpk");
    ok(Command::new(bin("flowpack"))
        .arg("package")
        .arg(root().join("fixtures/sample"))
        .arg("-k")
        .arg(&key)
        .args(["-c", "/public/orders", "--seal-to", &receivers[0].recipient])
        .args(["--seal-to", &receivers[1].recipient, "-o"])
        .arg(&bundle));
    for (i, r) in receivers.iter().enumerate() {
        let out = run(Command::new(bin("flowpack"))
            .arg("deploy")
            .arg(&bundle)
            .args(["--server", &r.url, "--json"])
            .env("FLOWPACK_TOKEN", &r.admin_token));
        if i < 2 {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let (_, c) = r.get_json("/v1/credentials/public/orders/erp");
            assert_eq!(c["password"]["set"], true, "{c}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let problem: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(problem["code"], "seal-recipient-mismatch", "{problem}");
        }
    }
}
