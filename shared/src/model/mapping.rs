//! Mapping definitions: parameters, credential references and the files they carry.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::RecordError;
use crate::names::{Name, RelPath};

/// A parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// A file input or output.
    File,
    /// A text value.
    String,
    /// A number.
    Number,
    /// A boolean.
    Boolean,
    /// A credential, deployed with the mapping or supplied on the server.
    Credential,
}

/// One parameter of a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// The parameter's name (e.g. `erp.credentials`).
    pub name: Name,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Whether a job must supply it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// For a credential parameter: the credential of the same project it uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Name>,
    /// For a credential parameter: the credential is supplied on the server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// For a credential parameter: the type of credential it needs (a credential is specific
    /// to what it authenticates). Packaging, deploying and resolving refuse another type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_type: Option<super::credential::CredentialType>,
}

/// A mapping definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The mapping's name.
    pub name: Name,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its parameters.
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    /// Files carried with it, relative to the mapping file.
    #[serde(default)]
    pub files: Vec<RelPath>,
}

impl Mapping {
    /// Parses and checks a mapping definition.
    pub fn parse(origin: &str, bytes: &[u8]) -> Result<Mapping, RecordError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let mapping: Mapping = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = (path != ".").then_some(path);
            RecordError::new(origin, field.as_deref(), e.inner().to_string())
        })?;
        mapping.check(origin)?;
        Ok(mapping)
    }

    fn check(&self, origin: &str) -> Result<(), RecordError> {
        let mut names = BTreeSet::new();
        for (i, p) in self.parameters.iter().enumerate() {
            let field = |f: &str| format!("parameters[{i}]{f}");
            if !names.insert(p.name.as_str()) {
                return Err(RecordError::new(
                    origin,
                    Some(&field(".name")),
                    format!("duplicate parameter `{}`", p.name),
                ));
            }
            match (p.kind, &p.credential, p.external) {
                (ParamType::Credential, Some(_), false) | (ParamType::Credential, None, true) => {}
                (ParamType::Credential, Some(_), true) => {
                    return Err(RecordError::new(
                        origin,
                        Some(&field("")),
                        "a credential parameter names a `credential` or sets `external: true`, not both",
                    ));
                }
                (ParamType::Credential, None, false) => {
                    return Err(RecordError::new(
                        origin,
                        Some(&field("")),
                        "a credential parameter needs `credential` (a credential of the project) or `external: true`",
                    ));
                }
                (_, Some(_), _) | (_, _, true) => {
                    return Err(RecordError::new(
                        origin,
                        Some(&field("")),
                        "`credential` and `external` are only for parameters of type credential",
                    ));
                }
                _ => {}
            }
            if p.credential_type.is_some() && p.kind != ParamType::Credential {
                return Err(RecordError::new(
                    origin,
                    Some(&field(".credential_type")),
                    "`credential_type` is only for parameters of type credential",
                ));
            }
        }
        // Two files whose names differ only in case would collide on case-insensitive disks
        // and are refused by the receiver's duplicate rule: refuse them here too.
        let mut seen = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            if !seen.insert(f.as_str().to_lowercase()) {
                return Err(RecordError::new(
                    origin,
                    Some(&format!("files[{i}]")),
                    format!("duplicate file `{f}` (names are compared ignoring case)"),
                ));
            }
        }
        Ok(())
    }

    /// The type a credential parameter needs, if it says.
    pub fn needed_type(&self, parameter: &str) -> Option<super::credential::CredentialType> {
        self.parameters
            .iter()
            .find(|p| p.name.as_str() == parameter)
            .and_then(|p| p.credential_type)
    }

    /// The credential parameters that name a credential of the project: (parameter, credential).
    pub fn credential_refs(&self) -> impl Iterator<Item = (&Name, &Name)> {
        self.parameters
            .iter()
            .filter_map(|p| p.credential.as_ref().map(|c| (&p.name, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{ "name": "orders-to-erp", "description": "d",
      "parameters": [ {"name": "input", "type": "file", "required": true},
                      {"name": "erp.credentials", "type": "credential", "credential": "erp"},
                      {"name": "crm", "type": "credential", "external": true} ],
      "files": ["orders.mfd", "schemas/order.xsd"] }"#;

    fn err(json: &str) -> String {
        Mapping::parse("m.mapping.json", json.as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn parses_the_spec_example() {
        let m = Mapping::parse("m.mapping.json", GOOD.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let refs: Vec<_> = m
            .credential_refs()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        assert_eq!(refs, [("erp.credentials", "erp")]);
        let again = serde_json::to_vec(&m).unwrap_or_default();
        assert_eq!(Mapping::parse("x", &again), Ok(m));
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let e = err(r#"{"name":"m","parameters":[{"name":"p","type":"file","requird":true}]}"#);
        assert!(
            e.contains("field `parameters[0].requird`") || e.contains("field `parameters[0]`"),
            "{e}"
        );
        assert!(e.contains("unknown field `requird`"), "{e}");
    }

    #[test]
    fn file_paths_cannot_escape() {
        for bad in ["../x", "/etc/passwd", "a\\b", "C:/x", "a//b"] {
            let e = err(&format!(
                r#"{{"name":"m","files":[{}]}}"#,
                serde_json::Value::from(bad)
            ));
            assert!(
                e.contains("field `files[0]`") && e.contains("invalid file path"),
                "{bad}: {e}"
            );
        }
        assert!(err(r#"{"name":"m","files":["a.xsd","A.XSD"]}"#).contains("duplicate file"));
    }

    #[test]
    fn credential_type_is_read_and_only_for_credential_parameters() {
        let m = Mapping::parse(
            "m.mapping.json",
            br#"{"name":"m","parameters":[{"name":"c","type":"credential","credential":"erp","credential_type":"password"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            m.needed_type("c"),
            Some(crate::model::credential::CredentialType::Password)
        );
        assert!(
            err(r#"{"name":"m","parameters":[{"name":"c","type":"string","credential_type":"password"}]}"#)
                .contains("`credential_type` is only for parameters of type credential")
        );
        assert!(
            err(r#"{"name":"m","parameters":[{"name":"c","type":"credential","external":true,"credential_type":"kerberos"}]}"#)
                .contains("unknown credential type")
        );
    }

    #[test]
    fn credential_parameters_need_a_source() {
        assert!(
            err(r#"{"name":"m","parameters":[{"name":"c","type":"credential"}]}"#)
                .contains("needs `credential`")
        );
        assert!(
            err(r#"{"name":"m","parameters":[{"name":"c","type":"string","credential":"x"}]}"#)
                .contains("only for parameters of type credential")
        );
        assert!(err(r#"{"name":"m","parameters":[{"name":"c","type":"file"},{"name":"c","type":"file"}]}"#).contains("duplicate parameter"));
        assert!(err(r#"{"name":"bad name"}"#).contains("field `name`"));
    }
}
