//! A redeploy whose mappings hold the files already stored: those files are not stored again
//! but are still checked, on other threads, before anything is committed. A bad one refuses
//! the bundle as a bad stored file would, names it, changes nothing, and logs no error.
#![allow(clippy::unwrap_used)]

use flowpack_shared::keys::SigningKey;
use flowpack_testkit::*;
use serde_json::json;

/// Files of the mapping: more than one run of files handed to the checking threads.
const FILES: usize = 200;

fn project(dir: &std::path::Path) -> Vec<flowpack_shared::bundle::write::MappingInput> {
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i:03}.xml")).collect();
    let bodies: Vec<Vec<u8>> = (0..FILES)
        .map(|i| {
            format!("<row n=\"{i}\"/>\n")
                .repeat(100 + i * 7)
                .into_bytes()
        })
        .collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&bodies)
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    vec![mapping_input(
        dir,
        json!({"name": "many", "files": names}),
        &files,
    )]
}

#[tokio::test]
async fn a_bad_unchanged_file_refuses_the_redeploy_and_changes_nothing() {
    let logs = Logs::capture();
    let s = Server::start().await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mappings = project(dir.path());
    let first = bundle(&k, &Opts::new("/public/many"), &mappings, &[]);
    let (st, v) = s.deploy(&s.admin, &first).await;
    assert_eq!(st, 201, "{v}");

    // The same files in a new bundle; one in the middle and one near the end altered after
    // signing (same length, so only the digest tells).
    let again = bundle(&k, &Opts::new("/public/many"), &mappings, &[]);
    let mut entries = entries_of(&again);
    for bad in [
        "mappings/many/files/f150.xml",
        "mappings/many/files/f190.xml",
    ] {
        let e = entries.iter_mut().find(|(n, _)| n == bad).unwrap();
        e.1[3] = b'N';
    }
    let tampered = zip_of(&entries);
    let (_, before) = s.get(&s.admin, "/v1/deployments").await;
    let (st, v) = s.deploy(&s.admin, &tampered).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("digest-mismatch")),
        "{v}"
    );
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("f150.xml"),
        "the first bad file is named: {detail}"
    );
    let (_, after) = s.get(&s.admin, "/v1/deployments").await;
    assert_eq!(before, after);

    // The untouched bundle deploys, storing no file again.
    let (st, v) = s.deploy(&s.admin, &again).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["unchanged"], json!(["/public/many/many"]), "{v}");

    let log = logs.text();
    assert!(
        !log.contains("ERROR"),
        "a refused bundle is no internal error: {log}"
    );
}
