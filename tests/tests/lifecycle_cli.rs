//! `flowpack diff` / `deploy --dry-run`, `history` and `rollback` against a real receiver: the
//! plan a release engineer reads before deploying, its exit status, and the way back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use flowpack_e2e::*;
use flowpack_testkit::{Receiver, process::bin};
use serde_json::{Value, json};

struct Setup {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    r: Receiver,
    key: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut r = Receiver::init(&dir, "data");
        let key = dir.join("signer.key");
        ok(Command::new(bin("flowpack"))
            .args(["keygen", "-o"])
            .arg(&key));
        r.trust(&dir.join("signer.key.pub"), &["/public"]);
        r.serve();
        std::fs::write(dir.join("token"), &r.admin_token).unwrap();
        copy_dir(&root().join("fixtures/sample"), &dir.join("project"));
        Setup {
            _tmp: tmp,
            dir,
            r,
            key,
        }
    }

    /// Packages the project as it is now.
    fn package(&self, name: &str) -> std::path::PathBuf {
        let out = self.dir.join(name);
        ok(Command::new(bin("flowpack"))
            .arg("package")
            .arg(self.dir.join("project"))
            .arg("-k")
            .arg(&self.key)
            .args(["-c", "/public/orders", "--seal-to", &self.r.recipient, "-o"])
            .arg(&out));
        out
    }

    /// Runs `flowpack ARGS… --server … --token-file …`.
    fn flowpack(&self, args: &[&str], extra: Option<&Path>) -> std::process::Output {
        let mut cmd = Command::new(bin("flowpack"));
        cmd.args(args);
        if let Some(p) = extra {
            cmd.arg(p);
        }
        cmd.args(["--server", &self.r.url, "--token-file"])
            .arg(self.dir.join("token"));
        run(&mut cmd)
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_release_engineer_plans_deploys_reads_history_and_rolls_back() {
    let s = Setup::new();
    let first = s.package("first.fpk");

    // A first plan: everything is created; exit status 6 says there are changes.
    let out = s.flowpack(&["diff"], Some(&first));
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("+ mapping    /public/orders/orders-to-erp"),
        "{shown}"
    );
    assert!(shown.contains("+ credential /public/orders/erp"), "{shown}");
    assert!(shown.contains("secrets: set"), "{shown}");
    assert!(!shown.contains('\u{1b}'), "colour on a pipe: {shown:?}");
    assert!(!shown.contains("canary-"), "a secret in the plan: {shown}");
    // Nothing was deployed by it.
    let (_, deps) = s.r.get_json("/v1/deployments");
    assert_eq!(deps["deployments"], json!([]));

    let out = s.flowpack(&["deploy", "--json"], Some(&first));
    assert!(out.status.success(), "{}", text(&out));
    let d1: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The same content packaged again: no changes, exit 0, with `deploy --dry-run` too.
    let again = s.package("again.fpk");
    let out = s.flowpack(&["deploy", "--dry-run"], Some(&again));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("0 to create, 0 to update"),
        "{}",
        text(&out)
    );

    // A changed file and a changed description: an update naming both, never the values.
    let project = s.dir.join("project");
    std::fs::write(project.join("orders.mfd"), b"<mapping version='2'/>").unwrap();
    let erp = project.join("erp.credential.json");
    let mut cred: Value = serde_json::from_slice(&std::fs::read(&erp).unwrap()).unwrap();
    cred["description"] = json!("a new description");
    std::fs::write(&erp, serde_json::to_vec(&cred).unwrap()).unwrap();
    let second = s.package("second.fpk");
    let out = s.flowpack(&["diff", "--json"], Some(&second));
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let change = |path: &str| {
        plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["path"] == path)
            .unwrap()
            .clone()
    };
    assert_eq!(
        change("/public/orders/orders-to-erp")["fields"],
        json!(["files"])
    );
    assert_eq!(
        change("/public/orders/erp")["fields"],
        json!(["description"])
    );
    assert!(!text(&out).contains("a new description"));
    let out = s.flowpack(&["deploy", "--json"], Some(&second));
    assert!(out.status.success(), "{}", text(&out));
    let d2: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The history lists both, newest first.
    let out = s.flowpack(&["history", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&Value> = history["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(ids, [&d2["id"], &d1["id"]]);

    // Back to the first: the file and the record are the first ones again.
    let id = d1["id"].to_string();
    let out = s.flowpack(&["rollback", &id], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "rolled back /public/orders to what deployment {id} left"
        )),
        "{}",
        text(&out)
    );
    let (st, file) = s.r.request(
        "GET",
        "/v1/mappings/public/orders/orders-to-erp/files/orders.mfd",
        Some(&s.r.admin_token),
        "",
        b"",
    );
    assert_eq!(st, 200);
    assert_eq!(
        file,
        std::fs::read(root().join("fixtures/sample/orders.mfd")).unwrap()
    );
    let (_, c) = s.r.get_json("/v1/credentials/public/orders/erp");
    assert_eq!(c["description"], "ERP REST API service account");
    // The project as it is now (the second content), planned after the rollback, has changes.
    let out = s.flowpack(&["diff"], Some(&s.package("third.fpk")));
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));

    // A deployment that does not exist: 404 is a failure (exit 1) with the receiver's reason.
    let out = s.flowpack(&["rollback", "999"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no deployment 999"), "{}", text(&out));
}
