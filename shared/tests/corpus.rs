//! The hostile corpus in fixtures/malicious/ (made by an independent Python writer): every file
//! is refused with the code its `.expect` names, and the valid ones verify. Also the test
//! vectors of docs/FORMAT.md.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::{Path, PathBuf};

use flowpack_shared::bundle::read::{OpenBundle, TrustedSigner};
use flowpack_shared::bundle::{BundleError, Class};
use flowpack_shared::keys::{KeyId, VerifyingKey};
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::{DataKey, SealContext, SealingIdentity};
use flowpack_shared::timefmt::Timestamp;
use flowpack_shared::zipfmt::Limits;

/// The class of refusal the receiver answers with `status` (the `.expect` files give the
/// receiver's status; the library gives the class).
fn class_of(status: u64) -> Option<Class> {
    match status {
        400 => Some(Class::Malformed),
        413 => Some(Class::TooLarge),
        422 => Some(Class::Refused),
        _ => None,
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn key(name: &str) -> VerifyingKey {
    VerifyingKey::from_pem(&std::fs::read_to_string(fixtures().join("keys").join(name)).unwrap())
        .unwrap()
}

/// The trust the corpus assumes: signer.pub for every container, other.pub for /other only.
fn trust(id: &KeyId) -> Option<TrustedSigner> {
    let p = |s| ContainerPath::parse(s).unwrap();
    [(key("signer.pub"), p("/")), (key("other.pub"), p("/other"))]
        .into_iter()
        .find(|(k, _)| k.key_id() == *id)
        .map(|(key, c)| TrustedSigner {
            key,
            containers: vec![c],
        })
}

fn verify(path: &Path, identity: &SealingIdentity) -> Result<(), BundleError> {
    let mut b = OpenBundle::open(File::open(path)?, &Limits::default(), &trust)?;
    b.check_times(Timestamp::now(), time::Duration::minutes(5))?;
    b.read_payload(Some(identity), &mut |_, _, _, r| {
        std::io::copy(r, &mut std::io::sink()).map(|_| ())
    })?;
    Ok(())
}

#[test]
fn every_hostile_bundle_is_refused_with_its_expected_code() {
    let identity = SealingIdentity::parse(
        &std::fs::read_to_string(fixtures().join("keys/receiver.agekey")).unwrap(),
    )
    .unwrap();
    let dir = fixtures().join("malicious");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fpk"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "the corpus has {} bundles", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let expect: serde_json::Value =
            serde_json::from_slice(&std::fs::read(case.with_extension("expect")).unwrap()).unwrap();
        let code = expect["code"].as_str().unwrap();
        let status = expect["status"].as_u64().unwrap();
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        match (verify(case, &identity), code) {
            (Ok(()), "ok") => {}
            (Ok(()), _) => wrong.push(format!("{name}: accepted, expected {code}")),
            (Err(e), "ok") => wrong.push(format!(
                "{name}: refused ({}: {e}), expected to verify",
                e.code()
            )),
            (Err(e), _) if e.code() != code || Some(e.class()) != class_of(status) => {
                wrong.push(format!(
                    "{name}: {} {:?} ({e}), expected {code} {status}",
                    e.code(),
                    e.class()
                ))
            }
            (Err(e), _) => {
                // The detail is precise: it is never empty and never just the code.
                assert!(e.to_string().len() > 15, "{name}: vague detail {e}");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn format_vectors_verify_and_open() {
    let v = fixtures().join("vectors");
    let identity =
        SealingIdentity::parse(&std::fs::read_to_string(v.join("receiver.agekey")).unwrap())
            .unwrap();
    let signer =
        VerifyingKey::from_pem(&std::fs::read_to_string(v.join("vector-signing.pub")).unwrap())
            .unwrap();
    let trust = move |id: &KeyId| {
        (*id == signer.key_id()).then(|| TrustedSigner {
            key: signer.clone(),
            containers: vec![ContainerPath::root()],
        })
    };
    let mut b = OpenBundle::open(
        File::open(v.join("bundle.fpk")).unwrap(),
        &Limits::default(),
        &trust,
    )
    .unwrap();
    assert_eq!(
        b.manifest_bytes(),
        std::fs::read(v.join("manifest.json")).unwrap()
    );
    let payload = b
        .read_payload(Some(&identity), &mut |_, _, _, _| Ok(()))
        .unwrap();
    let field: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v.join("sealed-field.json")).unwrap()).unwrap();
    let erp = payload
        .credentials
        .iter()
        .find(|c| c.name.as_str() == "erp")
        .unwrap();
    assert_eq!(
        erp.plain_secret("password").unwrap().expose(),
        field["plaintext"].as_str().unwrap()
    );
    // The sealed field opens with the published data key alone.
    let key_hex = std::fs::read_to_string(v.join("data-key.hex")).unwrap();
    let mut key = [0u8; 32];
    hex::decode_to_slice(key_hex.trim(), &mut key).unwrap();
    let ctx = SealContext {
        bundle_id: field["bundle_id"].as_str().unwrap(),
        container: field["target_container"].as_str().unwrap(),
        credential: "erp",
        field: "password",
    };
    assert_eq!(
        hex::encode(ctx.associated_data()),
        field["associated_data_hex"].as_str().unwrap()
    );
    let opened = DataKey::from_bytes(key)
        .open(&ctx, field["sealed_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(opened.expose(), field["plaintext"].as_str().unwrap());
}
