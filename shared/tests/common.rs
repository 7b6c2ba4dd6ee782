//! Helpers shared by the integration tests: a small project on disk and bundle writing.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Cursor;
use std::path::Path;

use flowpack_shared::bundle::BundleError;
use flowpack_shared::bundle::manifest::BundleKind;
use flowpack_shared::bundle::read::{OpenBundle, Payload, TrustedSigner};
use flowpack_shared::bundle::write::{BundleOptions, MappingInput, write_bundle};
use flowpack_shared::keys::{KeyId, SigningKey};
use flowpack_shared::model::credential::{Credential, CredentialFile};
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::{SealingIdentity, SealingRecipient};
use flowpack_shared::timefmt::Timestamp;
use flowpack_shared::zipfmt::Limits;

pub const CANARY_PASSWORD: &str = "canary-pw-5e1b9c";
pub const CANARY_KEY: &str = "canary-key-a07d33";

pub fn opts(container: &str, seal_to: Option<SealingRecipient>) -> BundleOptions {
    let now = Timestamp::now();
    BundleOptions {
        kind: BundleKind::Deployment,
        target_container: ContainerPath::parse(container).unwrap(),
        environment: None,
        created_at: now,
        expires_at: now.plus(time::Duration::days(7)),
        seal_to: seal_to.into_iter().collect(),
        allow_plaintext: false,
        level: 6,
    }
}

/// A project: mapping `orders-to-erp` with two files, credentials `erp` (flag on, password)
/// and `api` (flag off, key).
pub fn project(dir: &Path) -> (Vec<MappingInput>, Vec<Credential>) {
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    std::fs::write(
        dir.join("orders.mfd"),
        "<mapping>orders</mapping>\n".repeat(50),
    )
    .unwrap();
    std::fs::write(dir.join("schemas/order.xsd"), b"<xs:schema/>\n").unwrap();
    let mapping = Mapping::parse(
        "m",
        br#"{"name":"orders-to-erp","parameters":[{"name":"erp.credentials","type":"credential","credential":"erp"},
            {"name":"api","type":"credential","credential":"api"}],"files":["orders.mfd","schemas/order.xsd"]}"#,
    )
    .unwrap();
    let erp = CredentialFile::parse(
        "erp.credential.json",
        format!(r#"{{"name":"erp","type":"password","username":"svc","include_in_deployment":true,"password":"{CANARY_PASSWORD}"}}"#).as_bytes(),
    )
    .unwrap()
    .resolve(None)
    .unwrap();
    let api = CredentialFile::parse(
        "api.credential.json",
        format!(r#"{{"name":"api","type":"api_key","placement":"header","parameter_name":"X-API-Key","key":"{CANARY_KEY}"}}"#).as_bytes(),
    )
    .unwrap()
    .resolve(None)
    .unwrap();
    (
        vec![MappingInput {
            mapping,
            dir: dir.to_owned(),
        }],
        vec![erp, api],
    )
}

pub fn write(key: &SigningKey, o: &BundleOptions, m: &[MappingInput], c: &[Credential]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    write_bundle(&mut out, key, o, m, c, &mut |_, _| {}).unwrap();
    out.into_inner()
}

pub fn trust_all(key: &SigningKey) -> impl Fn(&KeyId) -> Option<TrustedSigner> {
    let vk = key.verifying_key();
    move |id| {
        (*id == vk.key_id()).then(|| TrustedSigner {
            key: vk.clone(),
            containers: vec![ContainerPath::root()],
        })
    }
}

/// Fully verifies `bytes`: structure, signature, times, payload (files discarded).
pub fn verify(
    bytes: &[u8],
    key: &SigningKey,
    identity: Option<&SealingIdentity>,
) -> Result<Payload, BundleError> {
    let trust = trust_all(key);
    let mut b = OpenBundle::open(Cursor::new(bytes), &Limits::default(), &trust)?;
    b.check_times(Timestamp::now(), time::Duration::minutes(5))?;
    b.read_payload(identity, &mut |_, _, _, r| {
        std::io::copy(r, &mut std::io::sink()).map(|_| ())
    })
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
