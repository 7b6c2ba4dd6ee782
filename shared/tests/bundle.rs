//! Bundle writing and verification end to end, inside the library.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Cursor, Read};

use common::*;
use flowpack_shared::bundle::Class;
use flowpack_shared::bundle::manifest::{BundleKind, SecretsState};
use flowpack_shared::bundle::read::{OpenBundle, TrustedSigner};
use flowpack_shared::bundle::write::{WriteError, write_bundle};
use flowpack_shared::keys::SigningKey;
use flowpack_shared::model::credential::SecretValue;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::SealingIdentity;
use flowpack_shared::timefmt::Timestamp;
use flowpack_shared::zipfmt::Limits;

#[test]
fn sealed_bundle_round_trips_and_opens_only_for_its_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let (m, c) = project(dir.path());
    let key = SigningKey::generate().unwrap();
    let id = SealingIdentity::generate();
    let bytes = write(&key, &opts("/public/orders", Some(id.recipient())), &m, &c);
    let payload = verify(&bytes, &key, Some(&id)).unwrap();
    assert_eq!(payload.mappings[0].name.as_str(), "orders-to-erp");
    let erp = &payload.credentials[0];
    assert_eq!(
        erp.plain_secret("password").map(|s| s.expose()),
        Some(CANARY_PASSWORD)
    );
    // The api credential's flag is off: its key never travels.
    assert!(payload.credentials[1].secrets.is_empty());
    // Another receiver is refused with both recipients named.
    let other = SealingIdentity::generate();
    let e = verify(&bytes, &key, Some(&other)).unwrap_err();
    assert_eq!(e.code(), "seal-recipient-mismatch");
    assert!(
        e.to_string().contains(&id.recipient().to_string())
            && e.to_string().contains(&other.recipient().to_string())
    );
    // Without an identity, sealed values stay sealed.
    let p = verify(&bytes, &key, None).unwrap();
    assert!(matches!(
        p.credentials[0].secrets.get("password"),
        Some(SecretValue::Sealed(_))
    ));
}

#[test]
fn a_bundle_sealed_to_several_receivers_opens_for_each_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (m, c) = project(dir.path());
    let key = SigningKey::generate().unwrap();
    let (a, b) = (SealingIdentity::generate(), SealingIdentity::generate());
    let mut o = opts("/public/orders", None);
    o.seal_to = vec![a.recipient(), b.recipient()];
    let bytes = write(&key, &o, &m, &c);
    for id in [&a, &b] {
        let payload = verify(&bytes, &key, Some(id)).unwrap();
        assert_eq!(
            payload.credentials[0]
                .plain_secret("password")
                .map(|s| s.expose()),
            Some(CANARY_PASSWORD)
        );
    }
    let other = SealingIdentity::generate();
    let e = verify(&bytes, &key, Some(&other)).unwrap_err();
    assert_eq!(e.code(), "seal-recipient-mismatch");
    for r in [&a, &b, &other] {
        assert!(e.to_string().contains(&r.recipient().to_string()), "{e}");
    }
}

#[test]
fn flag_off_puts_no_byte_of_secret_in_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (m, mut c) = project(dir.path());
    c[0].include_in_deployment = false;
    let key = SigningKey::generate().unwrap();
    let o = opts("/public/orders", None);
    let bytes = write(&key, &o, &m, &c);
    for canary in [CANARY_PASSWORD, CANARY_KEY] {
        assert!(
            !contains(&bytes, canary.as_bytes()),
            "{canary} in the archive"
        );
        // Nor anywhere inside a compressed entry.
        let mut z = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
        for i in 0..z.len() {
            let mut data = Vec::new();
            z.by_index(i).unwrap().read_to_end(&mut data).unwrap();
            assert!(!contains(&data, canary.as_bytes()), "{canary} in entry {i}");
        }
    }
    let trust = trust_all(&key);
    let b = OpenBundle::open(Cursor::new(&bytes[..]), &Limits::default(), &trust).unwrap();
    let states: Vec<_> = b.manifest().credentials.iter().map(|c| c.secrets).collect();
    assert_eq!(states, [SecretsState::Omitted, SecretsState::Omitted]);
}

#[test]
fn flag_set_secrets_are_refused_without_sealing_or_plaintext_choice() {
    let dir = tempfile::tempdir().unwrap();
    let (m, c) = project(dir.path());
    let key = SigningKey::generate().unwrap();
    let mut out = Cursor::new(Vec::new());
    let e = write_bundle(&mut out, &key, &opts("/p", None), &m, &c, &mut |_, _| {}).unwrap_err();
    assert!(matches!(&e, WriteError::PlaintextRefused(n) if n == &["erp"]));
    assert!(
        e.to_string().contains("--plaintext-secrets") && !e.to_string().contains(CANARY_PASSWORD)
    );
    let mut o = opts("/p", None);
    o.allow_plaintext = true;
    let bytes = write(&key, &o, &m, &c);
    let p = verify(&bytes, &key, None).unwrap();
    assert_eq!(
        p.credentials[0]
            .plain_secret("password")
            .map(|s| s.expose()),
        Some(CANARY_PASSWORD)
    );
}

#[test]
fn readable_by_an_independent_zip_implementation() {
    let dir = tempfile::tempdir().unwrap();
    let (m, c) = project(dir.path());
    let key = SigningKey::generate().unwrap();
    let bytes = write(
        &key,
        &opts(
            "/public/orders",
            Some(SealingIdentity::generate().recipient()),
        ),
        &m,
        &c,
    );
    let mut z = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
    let names: Vec<String> = (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().unwrap().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.sig",
            "mappings/orders-to-erp/mapping.json",
            "mappings/orders-to-erp/files/orders.mfd",
            "mappings/orders-to-erp/files/schemas/order.xsd",
            "credentials/erp.json",
            "credentials/api.json"
        ]
    );
    let mut manifest = Vec::new();
    z.by_name("manifest.json")
        .unwrap()
        .read_to_end(&mut manifest)
        .unwrap();
    let mut sig = Vec::new();
    z.by_name("manifest.sig")
        .unwrap()
        .read_to_end(&mut sig)
        .unwrap();
    assert!(key.verifying_key().verify(&manifest, &sig));
    let mut orders = Vec::new();
    z.by_name("mappings/orders-to-erp/files/orders.mfd")
        .unwrap()
        .read_to_end(&mut orders)
        .unwrap();
    assert_eq!(
        orders,
        std::fs::read(dir.path().join("orders.mfd")).unwrap()
    );
}

#[test]
fn refuses_untrusted_or_misplaced_signers() {
    let dir = tempfile::tempdir().unwrap();
    let (m, mut c) = project(dir.path());
    c[0].include_in_deployment = false;
    let key = SigningKey::generate().unwrap();
    let bytes = write(&key, &opts("/public/orders", None), &m, &c);
    let stranger = SigningKey::generate().unwrap();
    assert_eq!(
        verify(&bytes, &stranger, None).unwrap_err().code(),
        "unknown-signer"
    );
    let vk = key.verifying_key();
    let only_other = move |_: &_| {
        Some(TrustedSigner {
            key: vk.clone(),
            containers: vec![
                ContainerPath::parse("/other").unwrap(),
                ContainerPath::parse("/pub").unwrap(),
            ],
        })
    };
    let e = OpenBundle::open(Cursor::new(&bytes[..]), &Limits::default(), &only_other).unwrap_err();
    assert_eq!(e.code(), "signer-not-allowed");
    assert_eq!(e.class(), Class::Refused);
    // A key that claims the right id but is another key: bad signature.
    let vk = key.verifying_key();
    let impostor = stranger.verifying_key();
    let lying = move |id: &_| {
        (*id == vk.key_id()).then(|| TrustedSigner {
            key: impostor.clone(),
            containers: vec![ContainerPath::root()],
        })
    };
    assert_eq!(
        OpenBundle::open(Cursor::new(&bytes[..]), &Limits::default(), &lying)
            .unwrap_err()
            .code(),
        "bad-signature"
    );
}

#[test]
fn refuses_expired_and_future_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let (m, mut c) = project(dir.path());
    c[0].include_in_deployment = false;
    let key = SigningKey::generate().unwrap();
    let mut o = opts("/p", None);
    o.created_at = Timestamp::now().plus(time::Duration::days(-8));
    o.expires_at = Timestamp::now().plus(time::Duration::days(-1));
    assert_eq!(
        verify(&write(&key, &o, &m, &c), &key, None)
            .unwrap_err()
            .code(),
        "expired"
    );
    o.created_at = Timestamp::now().plus(time::Duration::minutes(6));
    o.expires_at = Timestamp::now().plus(time::Duration::days(1));
    assert_eq!(
        verify(&write(&key, &o, &m, &c), &key, None)
            .unwrap_err()
            .code(),
        "not-yet-valid"
    );
    o.created_at = Timestamp::now().plus(time::Duration::minutes(4));
    assert!(verify(&write(&key, &o, &m, &c), &key, None).is_ok());
}

#[test]
fn credentials_bundle_refuses_mappings_and_writes_credentials_only() {
    let dir = tempfile::tempdir().unwrap();
    let (m, mut c) = project(dir.path());
    c[0].include_in_deployment = false;
    let key = SigningKey::generate().unwrap();
    let mut o = opts("/shared", None);
    o.kind = BundleKind::Credentials;
    let mut out = Cursor::new(Vec::new());
    let e = write_bundle(&mut out, &key, &o, &m, &c, &mut |_, _| {}).unwrap_err();
    assert!(
        e.to_string().contains("standalone credential bundle"),
        "{e}"
    );
    let p = verify(&write(&key, &o, &[], &c), &key, None).unwrap();
    assert_eq!((p.mappings.len(), p.credentials.len()), (0, 2));
}

#[test]
fn dangling_credential_reference_names_mapping_and_credential() {
    let dir = tempfile::tempdir().unwrap();
    let (m, c) = project(dir.path());
    let key = SigningKey::generate().unwrap();
    let mut out = Cursor::new(Vec::new());
    let e = write_bundle(
        &mut out,
        &key,
        &opts("/p", None),
        &m,
        &c[1..],
        &mut |_, _| {},
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("orders-to-erp") && msg.contains("`erp`"),
        "{msg}"
    );
}

#[test]
fn a_file_sink_sees_an_error_before_the_end_of_a_corrupt_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (m, mut c) = project(dir.path());
    c[0].include_in_deployment = false;
    let key = SigningKey::generate().unwrap();
    let mut bytes = write(&key, &opts("/p", None), &m, &c);
    // Corrupt a byte inside orders.mfd's compressed data, keeping the archive's structure.
    let name = b"mappings/orders-to-erp/files/orders.mfd";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 3;
    bytes[at] ^= 0x55;
    let trust = trust_all(&key);
    let mut b = OpenBundle::open(Cursor::new(&bytes[..]), &Limits::default(), &trust).unwrap();
    let mut sink_finished_cleanly = false;
    let e = b
        .read_payload(None, &mut |_, _, _, r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            sink_finished_cleanly = true;
            Ok(())
        })
        .unwrap_err();
    assert!(
        !sink_finished_cleanly,
        "the sink must not see a clean end of a corrupt entry"
    );
    assert!(
        matches!(
            e.code(),
            "size-mismatch" | "crc-mismatch" | "digest-mismatch"
        ),
        "{e}"
    );
}
