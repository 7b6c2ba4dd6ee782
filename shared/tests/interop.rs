//! Interoperability with standard tools, exactly as docs/FORMAT.md says: a third party verifies a
//! bundle with unzip, openssl and sha256sum; a sealed value opens with the `age` CLI and an
//! independent ChaCha20-Poly1305 (Python `cryptography`); keys cross between OpenSSL and us.
//! These tests need openssl, unzip, sha256sum, age and python3 with cryptography (.ci/run
//! installs them); they fail, not skip, when a tool is missing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use flowpack_shared::keys::{SigningKey, VerifyingKey};
use flowpack_shared::seal::SealingIdentity;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn unzip_entry(bundle: &Path, entry: &str) -> Vec<u8> {
    run(Command::new("unzip").arg("-p").arg(bundle).arg(entry))
}

#[test]
fn third_party_verifies_with_unzip_openssl_and_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let (m, c) = project(&dir.path().join("project"));
    // An OpenSSL-generated key signs the bundle.
    let key_path = dir.path().join("signer.key");
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key_path));
    let key = SigningKey::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
    let pub_pem = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_path));
    assert_eq!(
        VerifyingKey::from_pem(std::str::from_utf8(&pub_pem).unwrap()).unwrap(),
        key.verifying_key()
    );
    let bundle = dir.path().join("b.fpk");
    std::fs::write(
        &bundle,
        write(
            &key,
            &opts(
                "/public/orders",
                Some(SealingIdentity::generate().recipient()),
            ),
            &m,
            &c,
        ),
    )
    .unwrap();
    verify(&std::fs::read(&bundle).unwrap(), &key, None).unwrap();

    let manifest = unzip_entry(&bundle, "manifest.json");
    let sig = unzip_entry(&bundle, "manifest.sig");
    std::fs::write(dir.path().join("manifest.json"), &manifest).unwrap();
    std::fs::write(dir.path().join("manifest.sig"), &sig).unwrap();
    std::fs::write(dir.path().join("signer.pub"), &pub_pem).unwrap();
    let out = run(Command::new("openssl").current_dir(dir.path()).args([
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        "signer.pub",
        "-rawin",
        "-in",
        "manifest.json",
        "-sigfile",
        "manifest.sig",
    ]));
    assert!(String::from_utf8_lossy(&out).contains("Signature Verified Successfully"));

    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    for e in parsed["entries"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        let data = unzip_entry(&bundle, path);
        let f = dir.path().join("entry");
        std::fs::write(&f, &data).unwrap();
        let sum = run(Command::new("sha256sum").arg(&f));
        assert_eq!(
            &String::from_utf8_lossy(&sum)[..64],
            e["sha256"].as_str().unwrap(),
            "{path}"
        );
        assert_eq!(data.len() as u64, e["size"].as_u64().unwrap());
    }
    // A tampered manifest fails openssl's check too.
    let mut bad = manifest.clone();
    bad[10] ^= 1;
    std::fs::write(dir.path().join("manifest.json"), &bad).unwrap();
    let status = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "signer.pub",
            "-rawin",
            "-in",
            "manifest.json",
            "-sigfile",
            "manifest.sig",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
}

#[test]
fn our_keys_load_in_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let key_path = dir.path().join("k.pem");
    std::fs::write(&key_path, key.to_pem().as_bytes()).unwrap();
    let pub_pem = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_path));
    assert_eq!(
        String::from_utf8(pub_pem).unwrap(),
        key.verifying_key().to_pem()
    );
    // And OpenSSL verifies our signature over arbitrary bytes.
    std::fs::write(dir.path().join("msg"), b"hello").unwrap();
    std::fs::write(dir.path().join("sig"), key.sign(b"hello")).unwrap();
    std::fs::write(dir.path().join("pub.pem"), key.verifying_key().to_pem()).unwrap();
    run(Command::new("openssl").current_dir(dir.path()).args([
        "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg", "-sigfile",
        "sig",
    ]));
}

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
fn sealed_value_opens_with_age_cli_and_python_cryptography() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (m, c) = project(&dir.path().join("project"));
    let key = SigningKey::generate().unwrap();
    // The receiver's identity is made by age-keygen, the standard tool.
    let id_path = dir.path().join("receiver.agekey");
    run(Command::new("age-keygen").arg("-o").arg(&id_path));
    let identity = SealingIdentity::parse(&std::fs::read_to_string(&id_path).unwrap()).unwrap();
    let bundle = dir.path().join("b.fpk");
    std::fs::write(
        &bundle,
        write(
            &key,
            &opts("/public/orders", Some(identity.recipient())),
            &m,
            &c,
        ),
    )
    .unwrap();
    let manifest = unzip_entry(&bundle, "manifest.json");
    std::fs::write(dir.path().join("manifest.json"), &manifest).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(parsed["sealing"]["wrapped_key"].as_str().unwrap())
        .unwrap();
    std::fs::write(dir.path().join("wrapped.age"), wrapped).unwrap();
    run(Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&id_path)
        .arg("-o")
        .arg(dir.path().join("data.key"))
        .arg(dir.path().join("wrapped.age")));
    assert_eq!(
        std::fs::metadata(dir.path().join("data.key"))
            .unwrap()
            .len(),
        32
    );
    std::fs::write(
        dir.path().join("erp.json"),
        unzip_entry(&bundle, "credentials/erp.json"),
    )
    .unwrap();
    let plain = run(Command::new("python3")
        .arg("-c")
        .arg(PY_OPEN)
        .current_dir(dir.path())
        .args(["data.key", "erp.json", "manifest.json", "password"]));
    assert_eq!(String::from_utf8(plain).unwrap(), CANARY_PASSWORD);
}
