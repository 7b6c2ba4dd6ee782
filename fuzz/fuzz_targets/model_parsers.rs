//! Fuzz target: arbitrary bytes through the three record parsers — a designer's credential
//! file (`CredentialFile::parse`, then `resolve` for no environment and for each one it
//! names), a credential record as carried in a bundle (`Credential::from_bundle_entry`), and
//! a mapping definition (`Mapping::parse`). Errors are expected; panics are findings.
#![no_main]

use flowpack_shared::model::credential::{Credential, CredentialFile};
use flowpack_shared::model::mapping::Mapping;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = CredentialFile::parse("fuzz.credential.json", data) {
        let _ = file.resolve(None);
        for env in file.environments() {
            if let Ok(c) = file.resolve(Some(env)) {
                let _ = c.public_json();
                let _ = c.bundle_json();
                let _ = c.needs_secrets();
            }
        }
    }
    if let Ok(c) = Credential::from_bundle_entry("credentials/fuzz.json", data) {
        let _ = c.public_json();
        let _ = c.bundle_json();
        let _ = c.needs_secrets();
    }
    if let Ok(m) = Mapping::parse("mappings/fuzz/mapping.json", data) {
        let _ = m.credential_refs().count();
    }
});
