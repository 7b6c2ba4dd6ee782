//! A bundle sealed to two receivers (`--seal-to A --seal-to B`): each receiver's identity opens
//! the data key, with the real `age` CLI and with the real receivers; a third receiver refuses
//! it. Over the vectors in `fixtures/vectors/two-recipients/` (written by an independent Python
//! writer) and over a bundle the real packager makes. These tests need age, age-keygen, unzip,
//! base64 and python3 with cryptography (.ci/run installs them); they fail, not skip, when a
//! tool is missing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use flowpack_e2e::*;
use flowpack_testkit::{Receiver, process::bin};
use serde_json::Value;

fn vectors() -> PathBuf {
    root().join("fixtures/vectors/two-recipients")
}

/// The recipient named in an identity file's `# public key:` line (as age-keygen writes it).
fn recipient_of(identity: &Path) -> String {
    std::fs::read_to_string(identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap_or_else(|| panic!("{}: no public key line", identity.display()))
        .trim()
        .to_owned()
}

/// `age -d -i IDENTITY FILE`: the opened bytes, or `None` when age refuses.
fn age_open(identity: &Path, file: &Path) -> Option<Vec<u8>> {
    let out = run(Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file));
    out.status.success().then_some(out.stdout)
}

/// Copies an identity into `dir` with mode 0600 (git keeps no modes; age wants none wider).
fn private_copy(from: &Path, dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    to
}

/// A receiver whose sealing identity is `identity`, trusting the fixture signer, serving.
fn receiver_with_identity(dir: &Path, name: &str, identity: &Path) -> Receiver {
    let mut r = Receiver::init(dir, name);
    private_copy(identity, &r.data, "sealing.agekey");
    r.recipient = recipient_of(identity);
    r.trust(&root().join("fixtures/keys/signer.pub"), &[]);
    r.serve();
    std::fs::write(dir.join(format!("{name}.token")), &r.admin_token).unwrap();
    r
}

fn deploy(dir: &Path, r: &Receiver, name: &str, bundle: &Path) -> std::process::Output {
    run(Command::new(bin("flowpack"))
        .arg("deploy")
        .arg(bundle)
        .args(["--server", &r.url, "--json", "--token-file"])
        .arg(dir.join(format!("{name}.token"))))
}

#[test]
fn the_two_recipient_vectors_open_for_each_receiver_and_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let v = vectors();
    let bundle = v.join("bundle.fpk");
    let a = private_copy(&v.join("receiver-a.agekey"), dir, "a.agekey");
    let b = private_copy(&v.join("receiver-b.agekey"), dir, "b.agekey");

    // The packager verifies them and shows both recipients.
    ok(Command::new(bin("flowpack"))
        .arg("verify")
        .arg(&bundle)
        .arg("--trust")
        .arg(v.join("vector-signing.pub")));
    let doc: Value = serde_json::from_str(&ok(Command::new(bin("flowpack"))
        .arg("inspect")
        .arg(&bundle)
        .arg("--json")))
    .unwrap();
    assert_eq!(doc["sealed_to"], Value::from(recipient_of(&a)));
    assert_eq!(doc["also_sealed_to"], serde_json::json!([recipient_of(&b)]));

    // The age CLI opens the same data key with either identity.
    let key_hex = std::fs::read_to_string(v.join("data-key.hex")).unwrap();
    for id in [&a, &b] {
        let key = age_open(id, &v.join("wrapped-key.age"))
            .unwrap_or_else(|| panic!("age refused {}", id.display()));
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, key_hex.trim(), "{}", id.display());
    }

    // Each receiver applies it (opening every sealed value); a third one refuses it, naming
    // the recipients.
    for (name, id) in [("a", &a), ("b", &b)] {
        let r = receiver_with_identity(dir, name, id);
        let out = deploy(dir, &r, name, &bundle);
        assert!(
            out.status.success(),
            "receiver {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let record: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(record["needs_secrets"], serde_json::json!([]), "{record}");
        let (s, c) = r.get_json("/v1/credentials/public/orders/erp");
        assert_eq!(s, 200, "{c}");
        assert!(
            !c.to_string().contains("correct horse battery staple"),
            "{c}"
        );
    }
    let third = dir.join("c.agekey");
    ok(Command::new("age-keygen").arg("-o").arg(&third));
    let r = receiver_with_identity(dir, "c", &third);
    let out = deploy(dir, &r, "c", &bundle);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seal-recipient-mismatch"), "{stderr}");
    assert!(age_open(&third, &v.join("wrapped-key.age")).is_none());
}

/// Opens a sealed field with an independent ChaCha20-Poly1305 (Python `cryptography`).
const PY_OPEN: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
key = open(sys.argv[1], 'rb').read()
rec = json.load(open(sys.argv[2]))
m = json.load(open(sys.argv[3]))
blob = base64.b64decode(rec[sys.argv[4]]['sealed'])
ad = b'\x00'.join([b'flowpack/1', m['bundle_id'].encode(), m['target_container'].encode(), rec['name'].encode(), sys.argv[4].encode()])
sys.stdout.write(ChaCha20Poly1305(key).decrypt(blob[:12], blob[12:], ad).decode())
"#;

#[test]
fn age_cli_opens_the_data_key_wrapped_for_each_recipient_of_a_packaged_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids: Vec<PathBuf> = ["a", "b", "outsider"]
        .iter()
        .map(|n| {
            let p = dir.join(format!("{n}.agekey"));
            ok(Command::new("age-keygen").arg("-o").arg(&p));
            p
        })
        .collect();
    let key = fixture_key(dir, "signer.key");
    let bundle = dir.join("b.fpk");
    ok(Command::new(bin("flowpack"))
        .arg("package-credentials")
        .arg(root().join("fixtures/sample/erp.credential.json"))
        .arg("-k")
        .arg(&key)
        .args(["-c", "/public/orders"])
        .args(["--seal-to", &recipient_of(&ids[0])])
        .args(["--seal-to", &recipient_of(&ids[1])])
        .arg("-o")
        .arg(&bundle));
    let unzip = |entry: &str, to: &str| {
        let out = run(Command::new("unzip").arg("-p").arg(&bundle).arg(entry));
        assert!(out.status.success(), "unzip {entry}");
        std::fs::write(dir.join(to), &out.stdout).unwrap();
        out.stdout
    };
    let manifest: Value = serde_json::from_slice(&unzip("manifest.json", "manifest.json")).unwrap();
    unzip("credentials/erp.json", "erp.json");
    let sealing = &manifest["sealing"];
    assert_eq!(sealing["recipient"], Value::from(recipient_of(&ids[0])));
    assert_eq!(
        sealing["other_recipients"],
        serde_json::json!([recipient_of(&ids[1])])
    );
    std::fs::write(
        dir.join("wrapped.b64"),
        sealing["wrapped_key"].as_str().unwrap(),
    )
    .unwrap();
    let wrapped = run(Command::new("base64")
        .arg("-d")
        .arg(dir.join("wrapped.b64")));
    assert!(wrapped.status.success());
    std::fs::write(dir.join("wrapped.age"), &wrapped.stdout).unwrap();
    // One X25519 stanza per recipient.
    let stanzas = String::from_utf8_lossy(&wrapped.stdout)
        .matches("\n-> X25519 ")
        .count();
    assert_eq!(stanzas, 2);

    let key_a = age_open(&ids[0], &dir.join("wrapped.age")).expect("age opens it with A");
    let key_b = age_open(&ids[1], &dir.join("wrapped.age")).expect("age opens it with B");
    assert_eq!(key_a.len(), 32);
    assert_eq!(key_a, key_b, "one data key, wrapped twice");
    assert!(
        age_open(&ids[2], &dir.join("wrapped.age")).is_none(),
        "a third identity opens nothing"
    );
    std::fs::write(dir.join("data.key"), &key_a).unwrap();
    let plain = ok(Command::new("python3")
        .arg("-c")
        .arg(PY_OPEN)
        .current_dir(dir)
        .args(["data.key", "erp.json", "manifest.json", "password"]));
    assert_eq!(plain, "canary-erp-password-7f3a");
}
