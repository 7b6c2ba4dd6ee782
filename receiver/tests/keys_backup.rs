//! Key rotation, backup and restore over the real binary, each while `serve` runs on the same
//! data directory: `rotate sealing` (the previous recipient accepted until it retires, then
//! refused by name), `rotate at-rest` (every secret still resolves, no byte of the old key or
//! of the old ciphertext left in any file), `backup` during a stream of deploys (restores an
//! acknowledged prefix, secrets included, mode 0600, no secret in clear), `restore`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use flowpack_shared::keys::SigningKey;
use flowpack_shared::seal::{SealingIdentity, SealingRecipient};
use flowpack_shared::timefmt::Timestamp;
use flowpack_testkit::process::{run, serve};
use flowpack_testkit::*;
use serde_json::{Value, json};

fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?}: {out} {err}");
    assert!(err.is_empty(), "{args:?}: {err}");
    out
}

/// Runs a command that must fail with exit 1 and one line on stderr; that line.
fn fails(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 1, "{args:?}: {out} {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An initialized data directory with `signer` trusted for every container; its admin token.
fn setup(dir: &Path, signer: &SigningKey) -> String {
    let admin = flowpack_testkit::init(dir).admin_token;
    let pub_file = dir.parent().unwrap().join("signer.pub");
    std::fs::write(&pub_file, signer.verifying_key().to_pem()).unwrap();
    ok(&["trust", "add", s(&pub_file), "--data-dir", s(dir)]);
    admin
}

/// An oauth2 credential whose stored access token (`token`) is valid for a day: the token
/// endpoint answers it from the store, decrypting it, without calling anything.
fn oauth_cred(
    name: &str,
    token: &str,
    client_secret: &str,
) -> flowpack_shared::model::credential::Credential {
    let far = Timestamp::now().plus(time::Duration::days(1)).to_string();
    credential(json!({
        "name": name, "type": "oauth2", "grant_type": "client_credentials",
        "token_endpoint": "https://idp.example.com/token", "client_id": "flowpack",
        "client_secret": client_secret, "access_token": token, "expires_at": far,
        "allow_usage_for": ["http"], "include_in_deployment": true,
    }))
}

fn cred_bundle(
    key: &SigningKey,
    container: &'static str,
    to: Option<SealingRecipient>,
    creds: &[flowpack_shared::model::credential::Credential],
) -> Vec<u8> {
    let mut o = Opts::new(container);
    o.kind = flowpack_shared::bundle::BundleKind::Credentials;
    o.seal_to = to;
    bundle(key, &o, &[], creds)
}

async fn post_bundle(base: &str, token: &str, b: Vec<u8>) -> (u16, Value) {
    let r = Client::new()
        .post(format!("{base}/v1/deployments"))
        .bearer_auth(token)
        .header("content-type", "application/zip")
        .body(b)
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn get(base: &str, token: &str, path: &str) -> (u16, Value) {
    let r = Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// The access token the receiver hands out for credential `path` (decrypted from the store).
async fn access_token(base: &str, token: &str, path: &str) -> String {
    let r = Client::new()
        .post(format!("{base}/v1/credentials{path}/token"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (st, v) = answer(r).await;
    assert_eq!(st, 200, "{path}: {v}");
    v["access_token"].as_str().unwrap().to_owned()
}

fn recipient(v: &Value) -> SealingRecipient {
    SealingRecipient::parse(v.as_str().unwrap()).unwrap()
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files_under(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The files under the data directory `dir` that contain `needle`, and its store when that
/// is a database elsewhere (named `postgres:`).
fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|f| contains(&std::fs::read(f).unwrap_or_default(), needle))
        .collect();
    let stored = Stored::of(dir);
    if matches!(stored, Stored::Postgres(_)) && contains(&stored.bytes(), needle) {
        found.push(PathBuf::from("postgres:"));
    }
    found
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_sealing_key_is_accepted_until_it_retires_then_refused_by_name() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let key = SigningKey::generate().unwrap();
    let admin = setup(&dir, &key);
    let srv = serve(&dir);

    let (st, keys) = get(&srv.base, "", "/v1/keys").await;
    assert_eq!(st, 200);
    assert_eq!(keys["previous"], json!([]), "{keys}");
    let first = recipient(&keys["sealing_recipient"]);
    // Packaged before the rotation, deployed after it.
    let to_first = cred_bundle(
        &key,
        "/a",
        Some(first.clone()),
        &[oauth_cred("one", "tok-one", "cs-one")],
    );

    let out = ok(&["rotate", "sealing", "--data-dir", s(&dir)]);
    let second = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("sealing_recipient: "))
        .unwrap()
        .to_owned();
    assert!(out.contains(&format!("previous: {first}")), "{out}");
    let (_, keys) = get(&srv.base, "", "/v1/keys").await;
    assert_eq!(keys["sealing_recipient"], second.as_str(), "{keys}");
    assert_eq!(keys["previous"][0]["recipient"], first.to_string().as_str());
    let retires = Timestamp::parse(keys["previous"][0]["retires_at"].as_str().unwrap()).unwrap();
    let in_7d = Timestamp::now().plus(time::Duration::days(7));
    assert!(
        (in_7d.unix_millis() - retires.unix_millis()).abs() < 120_000,
        "{keys}"
    );
    assert_eq!(mode(&dir.join("sealing.agekey")), 0o600);
    if let Stored::Embedded(db) = Stored::of(&dir) {
        assert_eq!(mode(&db), 0o600);
    }

    let (st, v) = post_bundle(&srv.base, &admin, to_first).await;
    assert_eq!(st, 201, "sealed to the previous key: {v}");
    assert_eq!(access_token(&srv.base, &admin, "/a/one").await, "tok-one");
    let second_r = SealingRecipient::parse(&second).unwrap();
    let to_second = |name: &str| {
        cred_bundle(
            &key,
            "/b",
            Some(second_r.clone()),
            &[oauth_cred(name, &format!("tok-{name}"), "cs")],
        )
    };
    let (st, v) = post_bundle(&srv.base, &admin, to_second("two")).await;
    assert_eq!(st, 201, "sealed to the new key: {v}");
    assert_eq!(access_token(&srv.base, &admin, "/b/two").await, "tok-two");

    // The second key retired at once (a leaked key): refused, naming it.
    let later = to_second("three");
    let out = ok(&[
        "rotate",
        "sealing",
        "--data-dir",
        s(&dir),
        "--retire-after",
        "now",
    ]);
    assert!(out.contains(&format!("retired: {second}")), "{out}");
    let (st, v) = post_bundle(&srv.base, &admin, later).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("seal-recipient-retired")),
        "{v}"
    );
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains(&second), "{detail}");
    assert_eq!(v["retired_recipient"], second.as_str());
    let (_, keys) = get(&srv.base, "", "/v1/keys").await;
    let previous: Vec<&str> = keys["previous"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(previous, [first.to_string().as_str()], "{keys}");
    // The first key is still accepted until its own time.
    let again = cred_bundle(
        &key,
        "/c",
        Some(first.clone()),
        &[oauth_cred("four", "tok-four", "cs")],
    );
    let (st, v) = post_bundle(&srv.base, &admin, again).await;
    assert_eq!(st, 201, "{v}");
    // The refusal is audited with its code.
    let (_, audit) = get(&srv.base, &admin, "/v1/audit").await;
    assert!(
        audit.to_string().contains("seal-recipient-retired"),
        "{audit}"
    );

    let log = srv.stop();
    assert!(!log.contains("AGE-SECRET-KEY"), "{log}");
    // The age tool reads the identity file: every identity in it opens what was sealed to it.
    let text = std::fs::read_to_string(dir.join("sealing.agekey")).unwrap();
    assert_eq!(
        text.matches("AGE-SECRET-KEY-1").count(),
        2,
        "current and first"
    );
    // No temporary file left.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");

    // Bad durations are usage errors.
    let (code, _, err) = run(&[
        "rotate",
        "sealing",
        "--data-dir",
        s(&dir),
        "--retire-after",
        "0m",
    ]);
    assert_eq!(code, 2, "{err}");
    let err = fails(&[
        "rotate",
        "sealing",
        "--data-dir",
        s(&tmp.path().join("none")),
    ]);
    assert!(err.contains("not an initialized data directory"), "{err}");
}

/// Every ciphertext stored in the data directory's store (credential secrets and PKCE
/// verifiers).
fn stored_ciphertexts(data: &Path) -> Vec<Vec<u8>> {
    let stored = Stored::of(data);
    [
        "SELECT ciphertext FROM credential_secrets",
        "SELECT ciphertext FROM credential_version_secrets",
        "SELECT verifier FROM oauth_states",
    ]
    .iter()
    .flat_map(|q| stored.column(q))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn at_rest_rotation_while_serving_keeps_every_secret_and_leaves_no_old_key_byte() {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let key = SigningKey::generate().unwrap();
    let admin = setup(&dir, &key);
    let srv = serve(&dir);
    let (_, keys) = get(&srv.base, "", "/v1/keys").await;
    let to = recipient(&keys["sealing_recipient"]);
    let creds: Vec<_> = (0..5)
        .map(|i| {
            oauth_cred(
                &format!("c{i}"),
                &format!("canary-token-{i}"),
                &format!("canary-cs-{i}"),
            )
        })
        .collect();
    let (st, v) = post_bundle(
        &srv.base,
        &admin,
        cred_bundle(&key, "/r", Some(to.clone()), &creds),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let first_deployment = v["id"].clone();
    let (_, before) = get(&srv.base, &admin, "/v1/credentials/r/c0").await;

    let old_key = std::fs::read(dir.join("secrets.key")).unwrap();
    assert_eq!(old_key.len(), 32);
    // The live secrets and those the deployment keeps for rollback.
    let old_ciphertexts = stored_ciphertexts(&dir);
    assert_eq!(old_ciphertexts.len(), 20);

    let out = ok(&["rotate", "at-rest", "--data-dir", s(&dir)]);
    assert!(
        out.starts_with("re-encrypted 20 stored values under at-rest key "),
        "{out}"
    );
    assert_eq!(mode(&dir.join("secrets.key")), 0o600);
    assert!(!dir.join("secrets.key.next").exists());
    assert_ne!(std::fs::read(dir.join("secrets.key")).unwrap(), old_key);
    // No byte of the old key, and no ciphertext made under it, in any file.
    assert_eq!(holding(&dir, &old_key), Vec::<PathBuf>::new());
    for ct in &old_ciphertexts {
        assert_eq!(
            holding(&dir, ct),
            Vec::<PathBuf>::new(),
            "old ciphertext lingers"
        );
    }

    // The running server reads the secrets under the new key (before any write of its own)…
    for i in 0..5 {
        assert_eq!(
            access_token(&srv.base, &admin, &format!("/r/c{i}")).await,
            format!("canary-token-{i}")
        );
    }
    // …writes new ones under it, and fingerprints follow the new key.
    let more = cred_bundle(
        &key,
        "/s",
        Some(to.clone()),
        &[oauth_cred("d", "canary-token-d", "canary-cs-d")],
    );
    let (st, v) = post_bundle(&srv.base, &admin, more).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        access_token(&srv.base, &admin, "/s/d").await,
        "canary-token-d"
    );
    let (_, after) = get(&srv.base, &admin, "/v1/credentials/r/c0").await;
    assert_eq!(after["client_secret"]["set"], true);
    assert_ne!(
        before["client_secret"]["fingerprint"], after["client_secret"]["fingerprint"],
        "fingerprints are keyed by the at-rest key"
    );
    // A redeploy of the same value gives the same fingerprint as the rotation computed.
    let same = cred_bundle(
        &key,
        "/r",
        Some(to.clone()),
        &[oauth_cred("c0", "canary-token-0", "canary-cs-0")],
    );
    let (st, v) = post_bundle(&srv.base, &admin, same).await;
    assert_eq!(st, 201, "{v}");
    let (_, redeployed) = get(&srv.base, &admin, "/v1/credentials/r/c0").await;
    assert_eq!(
        redeployed["client_secret"]["fingerprint"],
        after["client_secret"]["fingerprint"]
    );

    // What a deployment keeps for rollback was re-encrypted too: a rollback of the first
    // deployment after a change puts its secret back, and it opens.
    let changed = cred_bundle(
        &key,
        "/r",
        Some(to.clone()),
        &[oauth_cred("c1", "canary-token-1b", "canary-cs-1b")],
    );
    let (st, v) = post_bundle(&srv.base, &admin, changed).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        access_token(&srv.base, &admin, "/r/c1").await,
        "canary-token-1b"
    );
    let r = Client::new()
        .post(format!(
            "{}/v1/deployments/{first_deployment}/rollback",
            srv.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let (st, v) = answer(r).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        access_token(&srv.base, &admin, "/r/c1").await,
        "canary-token-1"
    );

    // A second rotation while serving, then a restart: everything still opens.
    ok(&["rotate", "at-rest", "--data-dir", s(&dir)]);
    assert_eq!(
        access_token(&srv.base, &admin, "/s/d").await,
        "canary-token-d"
    );
    let log = srv.stop();
    assert!(!log.contains("canary"), "{log}");
    let srv = serve(&dir);
    for path in ["/r/c1", "/r/c4", "/s/d"] {
        assert!(
            access_token(&srv.base, &admin, path)
                .await
                .starts_with("canary-token-")
        );
    }
    let log = srv.stop();
    assert!(!log.contains("canary"), "{log}");
    assert_eq!(holding(&dir, &old_key), Vec::<PathBuf>::new());
    assert_eq!(holding(&dir, b"canary"), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_during_deploys_restores_an_acknowledged_prefix_with_its_secrets() {
    flowpack_testkit::store::embedded_only("`backup` copies the embedded store");
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let key = SigningKey::generate().unwrap();
    let admin = setup(&dir, &key);
    let srv = serve(&dir);
    let (_, keys) = get(&srv.base, "", "/v1/keys").await;
    let to = recipient(&keys["sealing_recipient"]);
    let (st, v) = post_bundle(
        &srv.base,
        &admin,
        cred_bundle(
            &key,
            "/base",
            Some(to.clone()),
            &[oauth_cred("api", "canary-access-base", "canary-cs-base")],
        ),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    // A mapping with its files, to find restored byte for byte.
    let p = project(Some("canary-password"), true, b"mfd-bytes-v1");
    let (st, v) = post_bundle(
        &srv.base,
        &admin,
        bundle(
            &key,
            &Opts::new("/m").sealed(to.clone()),
            &p.mappings,
            &p.credentials,
        ),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    // A principal and its token, to find restored.
    let ci = ok(&[
        "token",
        "create",
        "ci",
        "--data-dir",
        s(&dir),
        "--grant",
        "/=read,use",
    ]);
    let ci = ci.trim().to_owned();

    // Two clients deploy at once, each one bundle after another to a container of its own; the
    // backup starts once each has five acknowledged.
    let key = std::sync::Arc::new(key);
    let mut started = Vec::new();
    let mut deployers = Vec::new();
    for stream in ["/stream-a", "/stream-b"] {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        started.push(started_rx);
        let base = srv.base.clone();
        let admin = admin.clone();
        let key = key.clone();
        let to = to.clone();
        deployers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut started = Some(started_tx);
            for i in 0..30 {
                let c = oauth_cred(&format!("s{i}"), &format!("canary-access-{i}"), "canary-cs");
                let b = cred_bundle(&key, stream, Some(to.clone()), &[c]);
                let (st, v) = post_bundle(&base, &admin, b).await;
                assert_eq!(st, 201, "{v}");
                acked.push(v["bundle_id"].as_str().unwrap().to_owned());
                if acked.len() == 5 {
                    let _ = started.take().unwrap().send(());
                }
            }
            acked
        }));
    }
    for s in started {
        s.await.unwrap();
    }
    let file = tmp.path().join("backup.tar");
    let (f, d) = (file.clone(), dir.clone());
    let out =
        tokio::task::spawn_blocking(move || ok(&["backup", "--data-dir", s(&d), "-o", s(&f)]))
            .await
            .unwrap();
    assert!(
        out.starts_with(&format!("wrote {}", file.display())),
        "{out}"
    );
    let mut acked = Vec::new();
    for d in deployers {
        acked.push(d.await.unwrap());
    }
    assert_eq!(mode(&file), 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !contains(&bytes, b"canary"),
        "a secret in clear in the backup"
    );
    // A second backup to the same file is refused; the first is untouched.
    let err = fails(&["backup", "--data-dir", s(&dir), "-o", s(&file)]);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    let log = srv.stop();
    assert!(!log.contains("canary"), "{log}");

    let new = tmp.path().join("restored");
    let out = ok(&["restore", s(&file), "--data-dir", s(&new)]);
    assert!(out.contains(&format!("sealing_recipient: {to}")), "{out}");
    for f in files_under(&new) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    let srv = serve(&new);
    // Each stream's restored history is its acknowledged deploys up to some point, in order.
    for (stream, acked) in ["/stream-a", "/stream-b"].into_iter().zip(&acked) {
        let (st, v) = get(
            &srv.base,
            &ci,
            &format!("/v1/deployments?container={stream}&limit=1000"),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let mut restored: Vec<String> = v["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["bundle_id"].as_str().unwrap().to_owned())
            .collect();
        restored.reverse();
        assert!(
            restored.len() >= 5,
            "{stream}: acknowledged before the backup started: {restored:?}"
        );
        assert_eq!(
            restored,
            acked[..restored.len()],
            "{stream}: not a prefix of what was acknowledged"
        );
        // The newest restored credential's secret came along.
        let last = restored.len() - 1;
        assert_eq!(
            access_token(&srv.base, &ci, &format!("{stream}/s{last}")).await,
            format!("canary-access-{last}")
        );
    }
    // Mappings and their files, secrets, tokens and trust came along.
    let r = Client::new()
        .get(format!(
            "{}/v1/mappings/m/orders-to-erp/files/orders.mfd",
            srv.base
        ))
        .bearer_auth(&ci)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"mfd-bytes-v1");
    let (st, v) = get(&srv.base, &ci, "/v1/mappings/m/orders-to-erp").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["credential_parameters"][0]["has_secrets"], true, "{v}");
    assert_eq!(
        access_token(&srv.base, &ci, "/base/api").await,
        "canary-access-base"
    );
    let (st, v) = post_bundle(
        &srv.base,
        &admin,
        cred_bundle(
            &key,
            "/after",
            Some(to.clone()),
            &[oauth_cred("api", "canary-x", "canary-y")],
        ),
    )
    .await;
    assert_eq!(st, 201, "the signer is still trusted: {v}");
    let log = srv.stop();
    assert!(!log.contains("canary"), "{log}");

    // A non-empty directory is never restored over.
    let err = fails(&["restore", s(&file), "--data-dir", s(&new)]);
    assert!(err.contains("not empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_backup_is_an_age_file_and_restores_with_its_identity() {
    flowpack_testkit::store::embedded_only("`backup` copies the embedded store");
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let key = SigningKey::generate().unwrap();
    let admin = setup(&dir, &key);
    let srv = serve(&dir);
    let (_, keys) = get(&srv.base, "", "/v1/keys").await;
    let to = recipient(&keys["sealing_recipient"]);
    let (st, v) = post_bundle(
        &srv.base,
        &admin,
        cred_bundle(
            &key,
            "/e",
            Some(to),
            &[oauth_cred("api", "canary-enc", "canary-enc-cs")],
        ),
    )
    .await;
    assert_eq!(st, 201, "{v}");

    let offline = SealingIdentity::generate();
    let id_file = tmp.path().join("offline.agekey");
    std::fs::write(&id_file, offline.to_file_text().as_bytes()).unwrap();
    let file = tmp.path().join("backup.tar.age");
    let r = offline.recipient().to_string();
    ok(&[
        "backup",
        "--data-dir",
        s(&dir),
        "-o",
        s(&file),
        "--encrypt-to",
        &r,
    ]);
    srv.stop();
    assert_eq!(mode(&file), 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    assert!(!contains(&bytes, b"canary"));

    // The standard age tool decrypts it to a tar that lists the data directory's files.
    let plain = tmp.path().join("plain.tar");
    let st = std::process::Command::new("age")
        .args(["-d", "-i", s(&id_file), "-o", s(&plain), s(&file)])
        .status()
        .unwrap();
    assert!(st.success());
    let list = std::process::Command::new("tar")
        .args(["tf", s(&plain)])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .collect::<Vec<_>>(),
        [
            "flowpack-backup.json",
            "store.db",
            "secrets.key",
            "sealing.agekey",
            "config.json"
        ]
    );

    let new = tmp.path().join("restored");
    let err = fails(&["restore", s(&file), "--data-dir", s(&new)]);
    assert!(err.contains("--identity"), "{err}");
    let wrong = tmp.path().join("wrong.agekey");
    std::fs::write(
        &wrong,
        SealingIdentity::generate().to_file_text().as_bytes(),
    )
    .unwrap();
    let err = fails(&[
        "restore",
        s(&file),
        "--data-dir",
        s(&new),
        "--identity",
        s(&wrong),
    ]);
    assert!(err.contains("cannot be decrypted"), "{err}");
    assert!(!new.exists(), "nothing is left by a failed restore");
    ok(&[
        "restore",
        s(&file),
        "--data-dir",
        s(&new),
        "--identity",
        s(&id_file),
    ]);
    let srv = serve(&new);
    assert_eq!(
        access_token(&srv.base, &admin, "/e/api").await,
        "canary-enc"
    );
    srv.stop();
    // The decrypted tar restores too.
    let again = tmp.path().join("again");
    ok(&["restore", s(&plain), "--data-dir", s(&again)]);
}

#[test]
fn a_tampered_backup_is_refused_and_leaves_nothing() {
    flowpack_testkit::store::embedded_only("`backup` copies the embedded store");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    flowpack_testkit::init(&dir);
    let file = tmp.path().join("b.tar");
    ok(&["backup", "--data-dir", s(&dir), "-o", s(&file)]);
    let bytes = std::fs::read(&file).unwrap();
    // Flip a byte inside secrets.key's data: its digest no longer matches.
    let key = std::fs::read(dir.join("secrets.key")).unwrap();
    let at = bytes.windows(32).position(|w| w == key.as_slice()).unwrap();
    let mut bad = bytes.clone();
    bad[at] ^= 1;
    let bad_file = tmp.path().join("bad.tar");
    std::fs::write(&bad_file, &bad).unwrap();
    let new = tmp.path().join("new");
    let err = fails(&["restore", s(&bad_file), "--data-dir", s(&new)]);
    assert!(
        err.contains("secrets.key") && err.contains("SHA-256"),
        "{err}"
    );
    assert!(!new.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".flowpack-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Not a backup at all.
    let err = fails(&[
        "restore",
        s(&dir.join("config.json")),
        "--data-dir",
        s(&new),
    ]);
    assert!(!err.is_empty());
    assert!(!new.exists());
}
