//! The records flowpack carries: credentials and mapping definitions.
//!
//! Both are parsed strictly, once: unknown fields, wrong types and bad names are errors that name
//! the file (or bundle entry) and the field at fault.

pub mod credential;
pub mod mapping;

use std::fmt;

/// A record that broke a model rule, with where it came from and which field is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RecordError {
    /// The file or bundle entry the record came from.
    pub origin: String,
    /// The field at fault (a JSON path such as `parameters[1].name`), when there is one.
    pub field: Option<String>,
    /// What is wrong, in words; never contains a secret value.
    pub problem: String,
}

impl RecordError {
    pub(crate) fn new(origin: &str, field: Option<&str>, problem: impl Into<String>) -> Self {
        RecordError {
            origin: origin.to_owned(),
            field: field.map(str::to_owned),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{}`: {}", self.origin, field, self.problem),
            None => write!(f, "{}: {}", self.origin, self.problem),
        }
    }
}

/// Describes a JSON value's type for an error message, without its content (it may be secret).
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Parses JSON text into an object, with an error that names the origin but quotes nothing of
/// the content (serde_json's messages only give a line and column).
pub(crate) fn parse_object(
    origin: &str,
    bytes: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, RecordError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| RecordError::new(origin, None, format!("not valid JSON: {e}")))?;
    match value {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(RecordError::new(
            origin,
            None,
            format!("expected a JSON object, found {}", json_type(&other)),
        )),
    }
}

/// Rules across a set of records: unique names, every credential reference
/// resolved within the set, no mapping in a standalone credential bundle. The packager checks
/// them before writing and the receiver again after reading, with the same code.
pub fn check_project(
    origin: &str,
    credentials_only: bool,
    mappings: &[&mapping::Mapping],
    credentials: &[&credential::Credential],
) -> Result<(), RecordError> {
    let kinds: Vec<(&str, credential::CredentialType)> = credentials
        .iter()
        .map(|c| (c.name.as_str(), c.kind))
        .collect();
    check_records(origin, credentials_only, mappings, &kinds)
}

/// [`check_project`] given each credential's name and type, which are all its rules look at:
/// for a reader that hands credentials on as it reads them instead of keeping them.
pub fn check_records(
    origin: &str,
    credentials_only: bool,
    mappings: &[&mapping::Mapping],
    credentials: &[(&str, credential::CredentialType)],
) -> Result<(), RecordError> {
    use std::collections::BTreeSet;
    if let (true, Some(m)) = (credentials_only, mappings.first()) {
        return Err(RecordError::new(
            origin,
            None,
            format!(
                "a standalone credential bundle cannot contain mapping `{}`",
                m.name
            ),
        ));
    }
    let mut names = BTreeSet::new();
    for m in mappings {
        if !names.insert(m.name.as_str()) {
            return Err(RecordError::new(
                origin,
                None,
                format!("two mappings are named `{}`", m.name),
            ));
        }
    }
    let mut creds = BTreeSet::new();
    for (name, _) in credentials {
        if !creds.insert(*name) {
            return Err(RecordError::new(
                origin,
                None,
                format!("two credentials are named `{name}`"),
            ));
        }
    }
    for m in mappings {
        for p in &m.parameters {
            let (Some(cred), Some(needed)) = (&p.credential, p.credential_type) else {
                continue;
            };
            if let Some((_, kind)) = credentials.iter().find(|(n, _)| *n == cred.as_str())
                && *kind != needed
            {
                return Err(RecordError::new(
                    origin,
                    None,
                    format!(
                        "mapping `{}` parameter `{}` needs a credential of type {}, but credential `{cred}` is of type {}",
                        m.name,
                        p.name,
                        needed.as_str(),
                        kind.as_str()
                    ),
                ));
            }
        }
        for (param, cred) in m.credential_refs() {
            if !creds.contains(cred.as_str()) {
                return Err(RecordError::new(
                    origin,
                    None,
                    format!(
                        "mapping `{}` parameter `{param}` references credential `{cred}`, which is not in the project (add {cred}.credential.json or mark the parameter \"external\": true)",
                        m.name
                    ),
                ));
            }
        }
    }
    Ok(())
}
