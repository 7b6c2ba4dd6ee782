//! The projects and bundles the tests deploy: the standard project (mapping `orders-to-erp`
//! and credential `erp`), bundles written with the shared writer, and archives taken apart and
//! put back together to tamper with them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Read};
use std::path::Path;

use flowpack_shared::bundle::BundleKind;
use flowpack_shared::bundle::write::{BundleOptions, MappingInput, write_bundle};
use flowpack_shared::keys::SigningKey;
use flowpack_shared::model::credential::{Credential, RecordForm};
use flowpack_shared::model::mapping::Mapping;
use flowpack_shared::seal::SealingRecipient;
use flowpack_shared::timefmt::Timestamp;
use serde_json::Value;

use crate::cp;

/// A credential from its source-file JSON.
pub fn credential(json: Value) -> Credential {
    let Value::Object(m) = json else { panic!() };
    Credential::from_map("test", &m, RecordForm::SourceFile).unwrap()
}

/// A small project: mapping `orders-to-erp` with two files and credential `erp`.
pub struct Project {
    /// Where the mapping files are.
    pub dir: tempfile::TempDir,
    pub mappings: Vec<MappingInput>,
    pub credentials: Vec<Credential>,
}

/// A mapping of definition `def` whose `files` are written into `dir`.
pub fn mapping_input(dir: &Path, def: Value, files: &[(&str, &[u8])]) -> MappingInput {
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    MappingInput {
        mapping: Mapping::parse("test", def.to_string().as_bytes()).unwrap(),
        dir: dir.to_owned(),
    }
}

/// The standard project: mapping `orders-to-erp` (files `orders.mfd`, `schemas/order.xsd`)
/// referencing credential `erp` (password). `secret` is the password, `include` its flag.
pub fn project(secret: Option<&str>, include: bool, mfd: &[u8]) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let m = mapping_input(
        dir.path(),
        serde_json::json!({
            "name": "orders-to-erp", "description": "orders",
            "parameters": [
                {"name": "input", "type": "file", "required": true},
                {"name": "erp.credentials", "type": "credential", "credential": "erp"}
            ],
            "files": ["orders.mfd", "schemas/order.xsd"]
        }),
        &[("orders.mfd", mfd), ("schemas/order.xsd", b"<xsd/>")],
    );
    let mut c = serde_json::json!({
        "name": "erp", "type": "password", "username": "svc",
        "allow_usage_for": ["http"], "include_in_deployment": include,
        "description": "zzzz"
    });
    if let Some(s) = secret {
        c["password"] = Value::String(s.into());
    }
    Project {
        dir,
        mappings: vec![m],
        credentials: vec![credential(c)],
    }
}

/// How a bundle is made.
pub struct Opts {
    pub kind: BundleKind,
    pub container: &'static str,
    pub created_at: Timestamp,
    pub expires_in: time::Duration,
    pub seal_to: Option<SealingRecipient>,
}

impl Opts {
    /// A deployment bundle to `container`, made now, valid for 7 days, not sealed.
    pub fn new(container: &'static str) -> Opts {
        Opts {
            kind: BundleKind::Deployment,
            container,
            created_at: Timestamp::now(),
            expires_in: time::Duration::days(7),
            seal_to: None,
        }
    }
    /// Sealed to `r`.
    pub fn sealed(mut self, r: SealingRecipient) -> Opts {
        self.seal_to = Some(r);
        self
    }
    /// Made at `t`.
    pub fn created(mut self, t: Timestamp) -> Opts {
        self.created_at = t;
        self
    }
}

/// A bundle signed by `key` of `mappings` and `creds`.
pub fn bundle(
    key: &SigningKey,
    opts: &Opts,
    mappings: &[MappingInput],
    creds: &[Credential],
) -> Vec<u8> {
    let o = BundleOptions {
        kind: opts.kind,
        target_container: cp(opts.container),
        environment: None,
        created_at: opts.created_at,
        expires_at: opts.created_at.plus(opts.expires_in),
        allow_plaintext: opts.seal_to.is_none(),
        seal_to: opts.seal_to.clone().into_iter().collect(),
        level: 6,
    };
    let mut out = Cursor::new(Vec::new());
    write_bundle(&mut out, key, &o, mappings, creds, &mut |_, _| {}).unwrap();
    out.into_inner()
}

/// A bundle's entries, in order: (name, inflated bytes).
pub fn entries_of(b: &[u8]) -> Vec<(String, Vec<u8>)> {
    use flowpack_shared::zipfmt::{Limits, ZipReader};
    let mut zr = ZipReader::open(Cursor::new(b.to_vec()), &Limits::default()).unwrap();
    let mut entries = Vec::new();
    while let Some(mut e) = zr.next_entry().unwrap() {
        let name = e.entry().name.clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        entries.push((name, data));
    }
    entries
}

/// An archive of `entries`, in order, deflated.
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    use flowpack_shared::zipfmt::{Method, ZipWriter};
    let mut zw = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        zw.add(name, Method::Deflate, 6, &mut &data[..], &mut |_| {})
            .unwrap();
    }
    zw.finish().unwrap().into_inner()
}

/// Rewrites a bundle with `edit` applied to its last entry's data (same length, so only the
/// digest can tell); the signed manifest is unchanged.
pub fn tamper_last_entry(b: &[u8], edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut entries = entries_of(b);
    let last = entries.len() - 1;
    edit(&mut entries[last].1);
    zip_of(&entries)
}

/// `minutes` ago.
pub fn ts_minus(minutes: i64) -> Timestamp {
    Timestamp::now().plus(time::Duration::minutes(-minutes))
}
