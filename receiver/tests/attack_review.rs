//! An attacker's review of the deployment lifecycle (plan, rollback, history): each test was
//! written against a weakness the receiver had, asserts the safe behaviour, and is named after
//! it; the others pin down a safe behaviour that had no test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowpack_shared::keys::SigningKey;
use flowpack_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONTAINER: &str = "/public/orders";

async fn plan(s: &Server, token: &str, bundle: &[u8]) -> (u16, Value) {
    s.deploy_to(token, "/v1/deployments?dry_run=true", bundle)
        .await
}

fn change<'a>(plan: &'a Value, path: &str) -> &'a Value {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == path)
        .unwrap_or_else(|| panic!("no change for {path} in {plan}"))
}

/// The standard project to `container` with password `secret` and mapping file `mfd`.
fn standard(
    s: &Server,
    k: &SigningKey,
    container: &'static str,
    secret: &str,
    mfd: &[u8],
) -> Vec<u8> {
    let p = project(Some(secret), true, mfd);
    bundle(
        k,
        &Opts::new(container).sealed(s.recipient()),
        &p.mappings,
        &p.credentials,
    )
}

async fn setup() -> (Server, SigningKey) {
    let s = Server::start().await;
    let k = SigningKey::generate().unwrap();
    s.trust(&k, &[]);
    (s, k)
}

async fn rollback(s: &Server, token: &str, id: &Value) -> (u16, Value) {
    s.send(
        Method::POST,
        token,
        &format!("/v1/deployments/{id}/rollback"),
        None,
    )
    .await
}

fn count(s: &Server, sql: &str) -> i64 {
    Stored::of(&s.data_dir()).count(sql)
}

async fn mapping_file(s: &Server, container: &str) -> String {
    let r = s
        .client
        .get(s.url(&format!(
            "/v1/mappings{container}/orders-to-erp/files/orders.mfd"
        )))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap()
}

/// A request sent byte for byte (no client normalizes its path): the status.
async fn raw_post(s: &Server, token: &str, path: &str) -> u16 {
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    let answer = Response::parse(&out)
        .unwrap_or_else(|| panic!("no answer in {}", String::from_utf8_lossy(&out)));
    flowpack_testkit::openapi::check(&reqwest::Method::POST, path, &answer);
    answer.status().as_u16()
}

/// A principal with only `write` cannot read a credential's secret (nor deploy a bundle that
/// sends it elsewhere: moving the destination clears it). The plan compares the bundle's
/// secrets with the stored ones by fingerprint and answers `kept` for an equal value and
/// `set` for another: an unlimited, non-destructive equality oracle on the stored secret for
/// anyone holding `write` and a trusted signing key (a dictionary attack on a password,
/// leaving only `plan` audit rows). Safe: a plan does not depend on whether a guessed
/// secret is the stored one.
#[tokio::test]
async fn a_dry_run_does_not_tell_a_write_only_principal_whether_a_guessed_secret_is_the_stored_one()
{
    let (s, k) = setup().await;
    let (st, d) = s
        .deploy(
            &s.admin,
            &standard(&s, &k, CONTAINER, "Summer2026!", b"mfd-v1"),
        )
        .await;
    assert_eq!(st, 201, "{d}");
    let writer = s.token("ci", &[(CONTAINER, "write")]);
    // The writer cannot read the credential.
    let (st, _) = s.get(&writer, "/v1/credentials/public/orders/erp").await;
    assert_eq!(st, 403);

    let mut answers = Vec::new();
    for guess in ["Winter2025!", "Summer2026!"] {
        let (st, p) = plan(&s, &writer, &standard(&s, &k, CONTAINER, guess, b"mfd-v1")).await;
        assert_eq!(st, 200, "{p}");
        let c = change(&p, "/public/orders/erp");
        answers.push((c["action"].clone(), c["secrets"].clone()));
    }
    assert_eq!(
        answers[0], answers[1],
        "the plan answers differently for a wrong and a right guess of the stored password: {answers:?}"
    );
}

/// Deploying needs a bundle signed by a signer trusted for the container; a rollback needs
/// only a `write` token. When a signer is no longer trusted for a container (its key was
/// stolen and the admin narrowed or removed it), a holder of a `write` token, with no
/// trusted key at all, can still put back what that signer deployed by rolling back to it.
/// Safe: a rollback to a deployment whose signer is not trusted for its container now is
/// refused, and the container keeps what it has.
#[tokio::test]
async fn a_rollback_does_not_reapply_content_whose_signer_is_no_longer_trusted() {
    let (s, stolen) = setup().await;
    let (st, evil) = s
        .deploy(
            &s.admin,
            &standard(&s, &stolen, CONTAINER, "pw-evil", b"mfd-evil"),
        )
        .await;
    assert_eq!(st, 201, "{evil}");
    // The admin stops trusting the stolen key for the container, and deploys a fix signed by
    // a new key.
    s.trust(&stolen, &["/quarantine"]);
    let fresh = SigningKey::generate().unwrap();
    s.trust(&fresh, &[]);
    let (st, fixed) = s
        .deploy(
            &s.admin,
            &standard(&s, &fresh, CONTAINER, "pw-good", b"mfd-good"),
        )
        .await;
    assert_eq!(st, 201, "{fixed}");
    // The stolen key can no longer deploy there.
    let (st, refused) = s
        .deploy(
            &s.admin,
            &standard(&s, &stolen, CONTAINER, "pw-evil", b"mfd-evil2"),
        )
        .await;
    assert_eq!(st, 422, "{refused}");

    let writer = s.token("ci", &[(CONTAINER, "write")]);
    let (st, rec) = rollback(&s, &writer, &evil["id"]).await;
    assert_eq!(
        mapping_file(&s, CONTAINER).await,
        "mfd-good",
        "a rollback ({st} {rec}) put back a file signed by a key no longer trusted for {CONTAINER}"
    );
    assert!(st >= 400, "{st} {rec}");
}

/// A rollback refused because the caller may not see the deployment (or there is none)
/// writes no audit row at all: probing ids with rollbacks leaves no trace, while every other
/// refusal is audited. Safe: the refusal is audited (without naming the container).
#[tokio::test]
async fn a_refused_rollback_of_a_deployment_the_caller_cannot_see_is_audited() {
    let (s, k) = setup().await;
    let (st, d) = s
        .deploy(
            &s.admin,
            &standard(&s, &k, "/secret/vault", "pw-vault", b"mfd-v1"),
        )
        .await;
    assert_eq!(st, 201, "{d}");
    let outsider = s.token("outsider", &[(CONTAINER, "read,write")]);
    let before = count(&s, "SELECT count(*) FROM audit WHERE action = 'rollback'");
    let (st, p) = rollback(&s, &outsider, &d["id"]).await;
    assert_eq!(st, 404, "{p}");
    let (st, p) = rollback(&s, &outsider, &json!(424242)).await;
    assert_eq!(st, 404, "{p}");
    let after = count(
        &s,
        "SELECT count(*) FROM audit WHERE action = 'rollback' AND outcome = 'refused'",
    );
    assert_eq!(
        after - before,
        2,
        "refused rollbacks by `outsider` are missing from the audit trail"
    );
}

/// Path tricks never reach a deployment of another container nor roll anything back: a
/// deployment id is parsed once, from digits only, and checked against the caller's grants.
#[tokio::test]
async fn rollback_path_tricks_reach_no_deployment_of_another_container() {
    let (s, k) = setup().await;
    let (st, mine) = s
        .deploy(
            &s.admin,
            &standard(&s, &k, CONTAINER, "pw-mine", b"mfd-mine"),
        )
        .await;
    assert_eq!(st, 201, "{mine}");
    let (st, d1) = s
        .deploy(
            &s.admin,
            &standard(&s, &k, "/secret/vault", "pw-v1", b"vault-v1"),
        )
        .await;
    assert_eq!(st, 201, "{d1}");
    let (st, d2) = s
        .deploy(
            &s.admin,
            &standard(&s, &k, "/secret/vault", "pw-v2", b"vault-v2"),
        )
        .await;
    assert_eq!(st, 201, "{d2}");
    let (m, v) = (mine["id"].as_i64().unwrap(), d1["id"].as_i64().unwrap());
    let attacker = s.token("attacker", &[(CONTAINER, "read,write")]);
    let deployments = count(&s, "SELECT count(*) FROM deployments");
    for path in [
        format!("/v1/deployments/{m}/../{v}/rollback"),
        format!("/v1/deployments/{m}%2F..%2F{v}/rollback"),
        format!("/v1/deployments/{v}%2F/rollback"),
        format!("/v1/deployments/+{v}/rollback"),
        format!("/v1/deployments/0{v}/rollback"),
        format!("/v1/deployments/{v}/rollback/"),
        format!("//v1/deployments/{v}/rollback"),
        format!("/v1/deployments/{v}/./rollback"),
        format!("/v1/deployments/-{v}/rollback"),
        format!("/v1/deployments/{v}.0/rollback"),
        format!("/v1/deployments/{}/rollback", u64::MAX),
        format!("/v1/deployments/{}/rollback", i64::MAX),
        "/v1/deployments/99999999999999999999999999999999/rollback".to_owned(),
        format!("/v1/deployments/{m}/rollback?id={v}"),
        format!("/v1/deployments/%{v:02x}/rollback"),
        format!("/v1/deployments/{v}%00/rollback"),
    ] {
        let st = raw_post(&s, &attacker, &path).await;
        assert!((400..500).contains(&st), "{path}: {st}");
    }
    assert_eq!(count(&s, "SELECT count(*) FROM deployments"), deployments);
    assert_eq!(mapping_file(&s, "/secret/vault").await, "vault-v2");
}

/// Deleting a credential erases the secrets its deployments recorded: a rollback restores
/// the record without them (`needs_secrets`), and the old ciphertext is nowhere in the store.
#[tokio::test]
async fn a_rollback_after_the_credential_was_deleted_brings_no_secret_back() {
    let (s, k) = setup().await;
    let (st, d) = s
        .deploy(
            &s.admin,
            &standard(&s, &k, CONTAINER, "pw-deleted-canary", b"mfd-v1"),
        )
        .await;
    assert_eq!(st, 201, "{d}");
    let ciphertexts: Vec<Vec<u8>> =
        Stored::of(&s.data_dir()).column("SELECT ciphertext FROM credential_secrets");
    assert!(!ciphertexts.is_empty());
    // The mapping that uses it goes first, then the credential.
    let (st, p) = s
        .send(
            Method::DELETE,
            &s.admin,
            "/v1/mappings/public/orders/orders-to-erp",
            None,
        )
        .await;
    assert!(st < 300, "{st} {p}");
    let (st, p) = s
        .send(
            Method::DELETE,
            &s.admin,
            "/v1/credentials/public/orders/erp",
            None,
        )
        .await;
    assert!(st < 300, "{st} {p}");

    let (st, rec) = rollback(&s, &s.admin, &d["id"]).await;
    assert_eq!(st, 201, "{rec}");
    assert_eq!(rec["needs_secrets"], json!(["/public/orders/erp"]), "{rec}");
    assert_eq!(count(&s, "SELECT count(*) FROM credential_secrets"), 0);
    assert_eq!(
        count(&s, "SELECT count(*) FROM credential_version_secrets"),
        0
    );
    let (st, shown) = s.get(&s.admin, "/v1/credentials/public/orders/erp").await;
    assert_eq!(st, 200);
    assert_eq!(shown["needs_secrets"], true, "{shown}");
}

/// The metrics count a deploy as a dry run only when the raw query holds `dry_run=true`, but
/// the deploy decodes the query: `dry_run=tru%65` is a dry run that the metrics count as a
/// `replayed` deployment (a dry run's 200). Safe: a plan is counted as `planned`.
#[tokio::test]
async fn a_percent_encoded_dry_run_is_counted_as_planned() {
    let (s, k) = setup().await;
    let b = standard(&s, &k, CONTAINER, "pw-metrics", b"mfd-v1");
    let (st, p) = s
        .deploy_to(&s.admin, "/v1/deployments?dry_run=tru%65", &b)
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["dry_run"], true, "{p}");
    let r = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("flowpack_deployments_total{outcome=\"planned\"} 1"),
        "{}",
        text.lines()
            .filter(|l| l.starts_with("flowpack_deployments_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Deleting a credential is meant to leave no trace of its secrets ("a deleted secret must be
/// gone": `secure_delete` zeroes the rows in the database file, and the history's copies are
/// erased). But the store runs in WAL mode with `PASSIVE` checkpoints only, which never empty
/// the log: the frames written when the secret was stored keep its ciphertext in
/// `store.db-wal` after the deletion, and after the checkpoint, until the log happens to be
/// reused; the key that opens it is in the same directory. Safe: once a deletion is
/// committed (and checkpointed), no copy of the deleted ciphertext is left in the data
/// directory's database files.
#[tokio::test]
async fn a_deleted_secrets_ciphertext_does_not_stay_in_the_write_ahead_log() {
    flowpack_testkit::store::embedded_only("SQLite's write-ahead log");
    let (s, k) = setup().await;
    let (st, d) = s
        .deploy(
            &s.admin,
            &standard(&s, &k, CONTAINER, "pw-wal-canary", b"mfd-v1"),
        )
        .await;
    assert_eq!(st, 201, "{d}");
    let ciphertexts: Vec<Vec<u8>> =
        Stored::of(&s.data_dir()).column("SELECT ciphertext FROM credential_secrets");
    assert!(!ciphertexts.is_empty());
    let (st, p) = s
        .send(
            Method::DELETE,
            &s.admin,
            "/v1/mappings/public/orders/orders-to-erp",
            None,
        )
        .await;
    assert!(st < 300, "{st} {p}");
    let (st, p) = s
        .send(
            Method::DELETE,
            &s.admin,
            "/v1/credentials/public/orders/erp",
            None,
        )
        .await;
    assert!(st < 300, "{st} {p}");
    assert_eq!(count(&s, "SELECT count(*) FROM credential_secrets"), 0);
    // Well past the checkpointer's pause.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for file in ["store.db", "store.db-wal"] {
        let Ok(bytes) = std::fs::read(s.data_dir().join(file)) else {
            continue;
        };
        for ct in &ciphertexts {
            assert!(
                !bytes.windows(ct.len()).any(|w| w == ct.as_slice()),
                "a deleted secret's ciphertext is still in {file}"
            );
        }
    }
}

/// The same oracle without a dry run: a write-only principal deploys its guess and reads the
/// record (`unchanged` for the stored value, `updated` for another), and a wrong guess is
/// undone at once by rolling back to the deployment that left the real value, so the guesses
/// can go on with the credential broken only for a moment. Fixing the plan alone is not
/// enough. Safe: a deploy's record does not tell a principal who cannot read the secret
/// whether the value it carried was the stored one (a carried secret is written and listed
/// as `updated` alike).
#[tokio::test]
async fn a_deploy_and_a_rollback_do_not_let_a_write_only_principal_test_guesses_of_a_stored_secret()
{
    let (s, k) = setup().await;
    let (st, real) = s
        .deploy(
            &s.admin,
            &standard(&s, &k, CONTAINER, "Summer2026!", b"mfd-v1"),
        )
        .await;
    assert_eq!(st, 201, "{real}");
    let writer = s.token("ci", &[(CONTAINER, "write")]);
    let listed = |rec: &Value| {
        ["created", "updated", "unchanged"]
            .into_iter()
            .find(|k| {
                rec[*k]
                    .as_array()
                    .is_some_and(|a| a.contains(&json!("/public/orders/erp")))
            })
            .unwrap()
    };
    let (st, wrong) = s
        .deploy(
            &writer,
            &standard(&s, &k, CONTAINER, "Winter2025!", b"mfd-v1"),
        )
        .await;
    assert_eq!(st, 201, "{wrong}");
    // The wrong guess is undone: the real value is back.
    let (st, back) = rollback(&s, &writer, &real["id"]).await;
    assert_eq!(st, 201, "{back}");
    let (st, right) = s
        .deploy(
            &writer,
            &standard(&s, &k, CONTAINER, "Summer2026!", b"mfd-v1"),
        )
        .await;
    assert_eq!(st, 201, "{right}");
    assert_eq!(
        listed(&wrong),
        listed(&right),
        "the record tells a wrong guess ({}) from the stored password ({})",
        listed(&wrong),
        listed(&right)
    );
}
