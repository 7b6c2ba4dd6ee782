//! The hostile bundle corpus (`fixtures/malicious`) posted over HTTP: every case answers the
//! status and code its `.expect` names, refusals write nothing, valid cases apply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use flowpack_shared::seal::SealingIdentity;
use flowpack_testkit::*;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A receiver set up as the corpus README says: its sealing identity, `signer.pub` trusted
/// everywhere, `other.pub` for `/other`.
async fn corpus_server() -> Server {
    let keys = fixtures().join("keys");
    let identity =
        SealingIdentity::parse(&std::fs::read_to_string(keys.join("receiver.agekey")).unwrap())
            .unwrap();
    let s = Server::start_with(move |app| {
        app.sealing = flowpack_receiver::keyring::Sealing::fixed(identity)
    })
    .await;
    for (file, prefixes) in [("signer.pub", vec![]), ("other.pub", vec![cp("/other")])] {
        let pem = std::fs::read_to_string(keys.join(file)).unwrap();
        flowpack_receiver::trust_signer(&s.app.store, &pem, &prefixes).unwrap();
    }
    s
}

fn cases() -> Vec<(String, Vec<u8>, Value)> {
    let dir = fixtures().join("malicious");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "fpk") {
            let expect: Value =
                serde_json::from_slice(&std::fs::read(p.with_extension("expect")).unwrap())
                    .unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read(&p).unwrap(), expect));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn every_hostile_bundle_is_refused_with_its_code_and_nothing_written() {
    let s = corpus_server().await;
    let (_, root_before) = s.get(&s.admin, "/v1/containers/").await;
    let mut failures = Vec::new();
    let mut n = 0;
    for (name, bytes, expect) in cases() {
        if expect["code"] == "ok" {
            continue;
        }
        n += 1;
        let (st, v) = s.deploy(&s.admin, &bytes).await;
        if st != expect["status"].as_u64().unwrap() as u16 || v["code"] != expect["code"] {
            failures.push(format!(
                "{name}: expected {} {}, got {st} {} ({})",
                expect["status"], expect["code"], v["code"], v["detail"]
            ));
        }
    }
    assert!(n > 50, "the corpus is there");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (_, root_after) = s.get(&s.admin, "/v1/containers/").await;
    assert_eq!(root_before, root_after);
    let (_, d) = s.get(&s.admin, "/v1/deployments").await;
    assert_eq!(d["deployments"], serde_json::json!([]));
    let (_, a) = s.get(&s.admin, "/v1/audit?limit=1000").await;
    assert_eq!(a["audit"].as_array().unwrap().len(), n);
    s.stop().await;
}

#[tokio::test]
async fn every_valid_corpus_bundle_applies() {
    for (name, bytes, expect) in cases() {
        if expect["code"] != "ok" {
            continue;
        }
        let s = corpus_server().await;
        let (st, v) = s.deploy(&s.admin, &bytes).await;
        assert_eq!(st, 201, "{name}: {v}");
        let (st, again) = s.deploy(&s.admin, &bytes).await;
        assert_eq!(
            (st, &again["replayed"]),
            (200, &Value::Bool(true)),
            "{name}"
        );
        s.stop().await;
    }
}
