//! Property tests: any project round-trips through write → verify → read, and any single-byte
//! change to a bundle is refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::LazyLock;

use common::*;
use flowpack_shared::Secret;
use flowpack_shared::bundle::write::MappingInput;
use flowpack_shared::keys::SigningKey;
use flowpack_shared::model::credential::{Credential, CredentialType, SecretValue};
use flowpack_shared::model::mapping::{Mapping, ParamType, Parameter};
use flowpack_shared::names::{Name, RelPath};
use flowpack_shared::seal::SealingIdentity;
use proptest::prelude::*;

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::generate().unwrap());
static ID: LazyLock<SealingIdentity> = LazyLock::new(SealingIdentity::generate);

fn name() -> impl Strategy<Value = Name> {
    "[a-z][a-z0-9._-]{0,12}".prop_map(|s| Name::parse(&s).unwrap())
}

fn credential() -> impl Strategy<Value = Credential> {
    (
        name(),
        0..4usize,
        any::<bool>(),
        proptest::option::of("[ -~]{0,40}"),
        proptest::option::of("\\PC{0,20}"),
    )
        .prop_map(|(n, t, flag, user, secret)| {
            let kind = [
                CredentialType::Password,
                CredentialType::Oauth2,
                CredentialType::ApiKey,
                CredentialType::Database,
            ][t];
            let mut c = Credential::empty(n, kind);
            c.include_in_deployment = flag;
            if let (Some(u), true) = (user, kind != CredentialType::ApiKey) {
                c.public.insert(
                    "username",
                    flowpack_shared::model::credential::PublicValue::Text(u),
                );
            }
            if let Some(s) = secret {
                let field = kind.sensitive_fields().next().unwrap();
                c.secrets.insert(field, SecretValue::Plain(Secret::new(s)));
            }
            c
        })
}

/// Mappings with their files (path, bytes).
type Mappings = Vec<(Name, Vec<(String, Vec<u8>)>)>;

fn project() -> impl Strategy<Value = (Mappings, Vec<Credential>)> {
    let files = proptest::collection::vec(
        (
            "[a-z]{1,8}(/[a-z]{1,8})?\\.[a-z]{1,3}",
            proptest::collection::vec(any::<u8>(), 0..300),
        ),
        0..4,
    );
    (
        proptest::collection::btree_map(name(), files, 0..3),
        proptest::collection::btree_map(name(), credential(), 0..4),
    )
        .prop_map(|(m, c)| {
            let creds = c
                .into_iter()
                .map(|(n, mut c)| {
                    c.name = n;
                    c
                })
                .collect();
            (m.into_iter().collect(), creds)
        })
}

fn materialize(
    dir: &std::path::Path,
    mappings: &Mappings,
    creds: &[Credential],
) -> Vec<MappingInput> {
    let mut out = Vec::new();
    for (i, (n, files)) in mappings.iter().enumerate() {
        let d = dir.join(format!("m{i}"));
        let mut listed = Vec::new();
        for (p, data) in files {
            if listed
                .iter()
                .any(|l: &RelPath| l.as_str().eq_ignore_ascii_case(p))
                || files.iter().any(|(q, _)| {
                    q != p && (q.starts_with(&format!("{p}/")) || p.starts_with(&format!("{q}/")))
                })
            {
                continue;
            }
            let path = d.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, data).unwrap();
            listed.push(RelPath::parse(p).unwrap());
        }
        let parameters = creds
            .iter()
            .take(1)
            .map(|c| Parameter {
                name: Name::parse("cred").unwrap(),
                kind: ParamType::Credential,
                required: false,
                description: None,
                credential: Some(c.name.clone()),
                external: false,
                credential_type: None,
            })
            .collect();
        out.push(MappingInput {
            mapping: Mapping {
                name: n.clone(),
                description: None,
                parameters,
                files: listed,
            },
            dir: d,
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_project_round_trips((mappings, creds) in project()) {
        let dir = tempfile::tempdir().unwrap();
        let inputs = materialize(dir.path(), &mappings, &creds);
        let bytes = write(&KEY, &opts("/p/q", Some(ID.recipient())), &inputs, &creds);
        let mut files = Vec::new();
        let trust = trust_all(&KEY);
        let mut b = flowpack_shared::bundle::read::OpenBundle::open(std::io::Cursor::new(&bytes[..]), &Default::default(), &trust).unwrap();
        let payload = b.read_payload(Some(&ID), &mut |m, p, _, r| { let mut v = Vec::new(); r.read_to_end(&mut v)?; files.push((m.clone(), p.clone(), v)); Ok(()) }).unwrap();
        prop_assert_eq!(payload.mappings, inputs.iter().map(|m| m.mapping.clone()).collect::<Vec<_>>());
        for (c, got) in creds.iter().zip(&payload.credentials) {
            let mut expected = c.clone();
            expected.include_in_deployment = false;
            if !c.include_in_deployment { expected.secrets.clear(); }
            prop_assert_eq!(&expected, got);
        }
        let mut want = Vec::new();
        for m in &inputs { for f in &m.mapping.files { want.push((m.mapping.name.clone(), f.clone(), std::fs::read(m.dir.join(f.as_str())).unwrap())); } }
        prop_assert_eq!(files, want);
    }

    /// Any single-byte change is refused, with one exception that changes nothing decoded: the
    /// unused high bits of a deflate stream's final byte (docs/FORMAT.md §1, "Known gap"). The
    /// test allows exactly that: the byte is the last of an entry's data, and the decoded
    /// payload is identical to the original's.
    #[test]
    fn any_single_byte_change_is_refused(pos in any::<proptest::sample::Index>(), delta in 1u8..=255) {
        static BUNDLE: LazyLock<Vec<u8>> = LazyLock::new(|| {
            let dir = tempfile::tempdir().unwrap();
            let (m, c) = project_fixture(dir.path());
            write(&KEY, &opts("/public/orders", Some(ID.recipient())), &m, &c)
        });
        let original = &*BUNDLE;
        let mut bytes = original.clone();
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        if let Ok(changed) = decoded(&bytes) {
            let next = &original[i + 1..(i + 5).min(original.len())];
            let ends_entry_data = next == b"PK\x03\x04" || next == b"PK\x01\x02";
            prop_assert!(ends_entry_data, "byte {} changed and still accepted", i);
            prop_assert!(changed == decoded(original).unwrap(), "byte {} changed what the bundle decodes to", i);
        }
    }
}

/// Everything a bundle decodes to: its records and every mapping file's bytes.
fn decoded(bytes: &[u8]) -> Result<String, flowpack_shared::bundle::BundleError> {
    let trust = trust_all(&KEY);
    let mut b = flowpack_shared::bundle::read::OpenBundle::open(
        std::io::Cursor::new(bytes),
        &Default::default(),
        &trust,
    )?;
    b.check_times(
        flowpack_shared::timefmt::Timestamp::now(),
        time::Duration::minutes(5),
    )?;
    let mut files = Vec::new();
    let p = b.read_payload(Some(&ID), &mut |m, f, _, r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        files.push((m.clone(), f.clone(), v));
        Ok(())
    })?;
    Ok(format!(
        "{:?}{:?}{:?}{:?}",
        b.manifest_bytes(),
        p.mappings,
        p.credentials
            .iter()
            .map(|c| (c.bundle_json(), c.kind))
            .collect::<Vec<_>>(),
        files
    ))
}

fn project_fixture(dir: &std::path::Path) -> (Vec<MappingInput>, Vec<Credential>) {
    common::project(dir)
}
