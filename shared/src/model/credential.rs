//! Credential records: four types, each with its non-sensitive and sensitive fields.
//!
//! The fields of each type are a table ([`fields_of`]); parsing walks the table, so a field is
//! known, typed and checked in one place. Sensitive values are [`SecretValue`]s: plain (a
//! [`Secret`] that never prints) or sealed (opaque base64 for the receiver).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{RecordError, json_type, parse_object};
use crate::names::{Name, quoted};
use crate::secret::Secret;

/// The four credential types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CredentialType {
    /// Username and password.
    Password,
    /// OAuth 2.0 client and tokens.
    Oauth2,
    /// An API key sent in a header or the query.
    ApiKey,
    /// A database login.
    Database,
}

impl CredentialType {
    /// The type's name in records and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::Password => "password",
            CredentialType::Oauth2 => "oauth2",
            CredentialType::ApiKey => "api_key",
            CredentialType::Database => "database",
        }
    }

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<CredentialType> {
        Some(match s {
            "password" => CredentialType::Password,
            "oauth2" => CredentialType::Oauth2,
            "api_key" => CredentialType::ApiKey,
            "database" => CredentialType::Database,
            _ => return None,
        })
    }

    /// The sensitive fields of this type, in table order.
    pub fn sensitive_fields(self) -> impl Iterator<Item = &'static str> {
        fields_of(self)
            .iter()
            .filter(|f| matches!(f.kind, FieldKind::Sensitive))
            .map(|f| f.name)
    }

    /// True when `field` is one of this type's sensitive fields.
    pub fn is_sensitive(self, field: &str) -> bool {
        self.sensitive_fields().any(|f| f == field)
    }

    /// The *destination fields*: the non-sensitive fields that say where this type's secrets
    /// are sent. A secret is bound to the values these had when it was stored; a change to
    /// any of them, without the secrets given again, makes the receiver forget the secrets.
    pub fn destination_fields(self) -> &'static [&'static str] {
        match self {
            CredentialType::Oauth2 => &["token_endpoint", "authorization_endpoint"],
            CredentialType::Password | CredentialType::ApiKey => &["verify_url"],
            CredentialType::Database => &["host", "port", "driver"],
        }
    }
}

impl serde::Serialize for CredentialType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CredentialType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CredentialType::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown credential type {}; expected password, oauth2, api_key or database",
                quoted(&s)
            ))
        })
    }
}

/// What a credential may be used for (`allow_usage_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Usage {
    /// HTTP requests.
    Http,
    /// FTP.
    Ftp,
    /// SFTP.
    Sftp,
    /// Database connections.
    Database,
    /// Running jobs.
    JobExecution,
}

/// Every usage name, in order.
pub const USAGES: [&str; 5] = ["http", "ftp", "sftp", "database", "job_execution"];

impl Usage {
    /// The usage's name.
    pub fn as_str(self) -> &'static str {
        USAGES[self as usize]
    }

    /// Parses a usage name.
    pub fn parse(s: &str) -> Option<Usage> {
        Some(match s {
            "http" => Usage::Http,
            "ftp" => Usage::Ftp,
            "sftp" => Usage::Sftp,
            "database" => Usage::Database,
            "job_execution" => Usage::JobExecution,
            _ => return None,
        })
    }
}

/// How a field's value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Free text.
    Text,
    /// An `http://` or `https://` URL.
    Url,
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
    /// A TCP port, 1–65535.
    Port,
    /// An RFC 3339 timestamp.
    Timestamp,
    /// A list of usages.
    Usages,
    /// A sensitive value.
    Sensitive,
}

/// One field of a credential type.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// The field's name in records.
    pub name: &'static str,
    /// How its value is checked.
    pub kind: FieldKind,
}

const fn f(name: &'static str, kind: FieldKind) -> FieldSpec {
    FieldSpec { name, kind }
}

const USAGE: FieldSpec = f("allow_usage_for", FieldKind::Usages);
const PASSWORD_FIELDS: &[FieldSpec] = &[
    f("username", FieldKind::Text),
    f("verify_url", FieldKind::Url),
    USAGE,
    f("password", FieldKind::Sensitive),
];
const OAUTH2_FIELDS: &[FieldSpec] = &[
    f(
        "grant_type",
        FieldKind::OneOf(&[
            "authorization_code",
            "implicit",
            "client_credentials",
            "password",
        ]),
    ),
    f("authorization_endpoint", FieldKind::Url),
    f("token_endpoint", FieldKind::Url),
    f("token_endpoint_auth", FieldKind::OneOf(&["header", "body"])),
    f("client_id", FieldKind::Text),
    f("scope", FieldKind::Text),
    f("redirect_uri", FieldKind::Url),
    f("username", FieldKind::Text),
    f("expires_at", FieldKind::Timestamp),
    USAGE,
    f("client_secret", FieldKind::Sensitive),
    f("access_token", FieldKind::Sensitive),
    f("refresh_token", FieldKind::Sensitive),
    f("password", FieldKind::Sensitive),
];
const API_KEY_FIELDS: &[FieldSpec] = &[
    f("placement", FieldKind::OneOf(&["header", "query"])),
    f("parameter_name", FieldKind::Text),
    f("verify_url", FieldKind::Url),
    USAGE,
    f("key", FieldKind::Sensitive),
];
const DATABASE_FIELDS: &[FieldSpec] = &[
    f("host", FieldKind::Text),
    f("port", FieldKind::Port),
    f("database", FieldKind::Text),
    f("username", FieldKind::Text),
    f("driver", FieldKind::Text),
    USAGE,
    f("password", FieldKind::Sensitive),
];

/// The type-specific fields of a credential type (besides `name`, `type`, `description`).
pub fn fields_of(t: CredentialType) -> &'static [FieldSpec] {
    match t {
        CredentialType::Password => PASSWORD_FIELDS,
        CredentialType::Oauth2 => OAUTH2_FIELDS,
        CredentialType::ApiKey => API_KEY_FIELDS,
        CredentialType::Database => DATABASE_FIELDS,
    }
}

/// A non-sensitive field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicValue {
    /// Text, URL, enumerated word or timestamp.
    Text(String),
    /// A port number.
    Port(u16),
    /// `allow_usage_for`.
    Usages(Vec<Usage>),
}

impl PublicValue {
    /// The value as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            PublicValue::Text(s) => Value::String(s.clone()),
            PublicValue::Port(p) => Value::from(*p),
            PublicValue::Usages(u) => {
                Value::Array(u.iter().map(|u| Value::String(u.as_str().into())).collect())
            }
        }
    }
}

/// A sensitive field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretValue {
    /// The value in clear, in a type that never prints it.
    Plain(Secret),
    /// `{"sealed": "…"}`: base64 of nonce ‖ ciphertext ‖ tag, opened only by the receiver.
    Sealed(String),
}

/// Where a record is read from: which fields and value forms are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordForm {
    /// A designer's `*.credential.json`: may have `include_in_deployment` and `environments`;
    /// sensitive values are plain strings.
    SourceFile,
    /// A `credentials/<name>.json` bundle entry: no `include_in_deployment` or `environments`;
    /// sensitive values plain or sealed.
    BundleEntry,
    /// An admin's change on the receiver: plain values only.
    Admin,
}

/// A credential record with one environment applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The credential's name.
    pub name: Name,
    /// Its type.
    pub kind: CredentialType,
    /// Optional description.
    pub description: Option<String>,
    /// Whether its sensitive fields go into bundles (source files only; `false` elsewhere).
    pub include_in_deployment: bool,
    /// Non-sensitive type-specific fields that are set.
    pub public: BTreeMap<&'static str, PublicValue>,
    /// Sensitive fields that are set.
    pub secrets: BTreeMap<&'static str, SecretValue>,
}

impl Credential {
    /// An empty credential: a name and a type.
    pub fn empty(name: Name, kind: CredentialType) -> Credential {
        Credential {
            name,
            kind,
            description: None,
            include_in_deployment: false,
            public: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// Parses a `credentials/<name>.json` bundle entry.
    pub fn from_bundle_entry(origin: &str, bytes: &[u8]) -> Result<Credential, RecordError> {
        let map = parse_object(origin, bytes)?;
        Credential::from_map(origin, &map, RecordForm::BundleEntry)
    }

    /// Parses a record from a JSON object, in the given form.
    pub fn from_map(
        origin: &str,
        map: &Map<String, Value>,
        form: RecordForm,
    ) -> Result<Credential, RecordError> {
        let err = |field: &str, problem: String| RecordError::new(origin, Some(field), problem);
        let name = match map.get("name") {
            Some(Value::String(s)) => Name::parse(s).map_err(|e| err("name", e.0))?,
            Some(v) => {
                return Err(err(
                    "name",
                    format!("expected a string, found {}", json_type(v)),
                ));
            }
            None => {
                return Err(RecordError::new(
                    origin,
                    None,
                    "missing required field `name`",
                ));
            }
        };
        let kind = match map.get("type") {
            Some(Value::String(s)) => CredentialType::parse(s).ok_or_else(|| {
                err(
                    "type",
                    format!(
                        "unknown credential type {}; expected password, oauth2, api_key or database",
                        quoted(s)
                    ),
                )
            })?,
            Some(v) => return Err(err("type", format!("expected a string, found {}", json_type(v)))),
            None => return Err(RecordError::new(origin, None, "missing required field `type`")),
        };
        let mut cred = Credential::empty(name, kind);
        let specs = fields_of(kind);
        for (key, value) in map {
            match key.as_str() {
                "name" | "type" => {}
                "description" => match value {
                    Value::String(s) => cred.description = Some(s.clone()),
                    v => {
                        return Err(err(
                            key,
                            format!("expected a string, found {}", json_type(v)),
                        ));
                    }
                },
                "include_in_deployment" if form == RecordForm::SourceFile => match value {
                    Value::Bool(b) => cred.include_in_deployment = *b,
                    v => {
                        return Err(err(
                            key,
                            format!("expected true or false, found {}", json_type(v)),
                        ));
                    }
                },
                "environments" if form == RecordForm::SourceFile => {
                    // Handled by `CredentialFile`; a resolved record never keeps it.
                }
                _ => {
                    let Some(spec) = specs.iter().find(|s| s.name == key) else {
                        let known: Vec<&str> = ["name", "type", "description"]
                            .into_iter()
                            .chain(
                                (form == RecordForm::SourceFile)
                                    .then_some(["include_in_deployment", "environments"])
                                    .into_iter()
                                    .flatten(),
                            )
                            .chain(specs.iter().map(|s| s.name))
                            .collect();
                        return Err(err(
                            key,
                            format!(
                                "unknown field for a {} credential; known fields: {}",
                                kind.as_str(),
                                known.join(", ")
                            ),
                        ));
                    };
                    if spec.kind == FieldKind::Sensitive {
                        let v = parse_secret(value, form).map_err(|p| err(key, p))?;
                        cred.secrets.insert(spec.name, v);
                    } else {
                        let v = parse_public(spec.kind, value).map_err(|p| err(key, p))?;
                        cred.public.insert(spec.name, v);
                    }
                }
            }
        }
        Ok(cred)
    }

    /// True when none of the type's sensitive fields is set.
    pub fn needs_secrets(&self) -> bool {
        self.secrets.is_empty()
    }

    /// True when `allow_usage_for` permits `usage`. A record without `allow_usage_for` allows
    /// every usage (docs/DECISIONS.md).
    pub fn allows(&self, usage: Usage) -> bool {
        match self.public.get("allow_usage_for") {
            Some(PublicValue::Usages(list)) => list.contains(&usage),
            _ => true,
        }
    }

    /// A text field's value.
    pub fn text(&self, field: &str) -> Option<&str> {
        match self.public.get(field) {
            Some(PublicValue::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// A plain sensitive value.
    pub fn plain_secret(&self, field: &str) -> Option<&Secret> {
        match self.secrets.get(field) {
            Some(SecretValue::Plain(s)) => Some(s),
            _ => None,
        }
    }

    /// The non-sensitive part as a JSON object: `name`, `type`, `description` and the public
    /// fields. Never contains a secret.
    pub fn public_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(self.name.to_string()));
        m.insert("type".into(), Value::String(self.kind.as_str().into()));
        if let Some(d) = &self.description {
            m.insert("description".into(), Value::String(d.clone()));
        }
        for (k, v) in &self.public {
            m.insert((*k).into(), v.to_json());
        }
        m
    }

    /// The bundle-entry form: the public fields plus each sensitive field as a plain string or
    /// `{"sealed": …}`. Contains plain secrets when the record holds them: callers decide.
    pub fn bundle_json(&self) -> Map<String, Value> {
        let mut m = self.public_json();
        for (k, v) in &self.secrets {
            let json = match v {
                SecretValue::Plain(s) => Value::String(s.expose().to_owned()),
                SecretValue::Sealed(b) => {
                    let mut o = Map::new();
                    o.insert("sealed".into(), Value::String(b.clone()));
                    Value::Object(o)
                }
            };
            m.insert((*k).into(), json);
        }
        m
    }
}

fn parse_public(kind: FieldKind, value: &Value) -> Result<PublicValue, String> {
    let text = || match value {
        Value::String(s) => Ok(s.clone()),
        v => Err(format!("expected a string, found {}", json_type(v))),
    };
    Ok(match kind {
        FieldKind::Text => PublicValue::Text(text()?),
        FieldKind::Url => {
            let s = text()?;
            // Checked first, and the value never quoted: user info would put a password in a
            // field that is stored and shown in clear.
            let after_scheme = s.split_once("://").map_or(s.as_str(), |(_, r)| r);
            let authority = after_scheme
                .split(['/', '?', '#'])
                .next()
                .unwrap_or_default();
            if authority.contains('@') {
                return Err(
                    "a URL must not carry a user name or password (before `@`): give them in \
                     the credential's username and sensitive fields, which are encrypted and \
                     never shown"
                        .into(),
                );
            }
            let rest = s
                .strip_prefix("https://")
                .or_else(|| s.strip_prefix("http://"))
                .ok_or_else(|| {
                    format!("expected an http:// or https:// URL, found {}", quoted(&s))
                })?;
            if rest.is_empty()
                || rest.starts_with('/')
                || s.chars().any(|c| c.is_control() || c == ' ')
            {
                return Err(format!("not a valid URL: {}", quoted(&s)));
            }
            PublicValue::Text(s)
        }
        FieldKind::OneOf(words) => {
            let s = text()?;
            if !words.contains(&s.as_str()) {
                return Err(format!(
                    "expected one of {}, found {}",
                    words.join(", "),
                    quoted(&s)
                ));
            }
            PublicValue::Text(s)
        }
        FieldKind::Port => match value.as_u64() {
            Some(p @ 1..=65535) => PublicValue::Port(p as u16),
            _ => {
                return Err(format!(
                    "expected a port number 1-65535, found {}",
                    json_type(value)
                ));
            }
        },
        FieldKind::Timestamp => {
            let s = text()?;
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| format!("expected an RFC 3339 timestamp, found {}", quoted(&s)))?;
            PublicValue::Text(s)
        }
        FieldKind::Usages => {
            let Value::Array(items) = value else {
                return Err(format!(
                    "expected an array of usages, found {}",
                    json_type(value)
                ));
            };
            let mut out = Vec::new();
            for item in items {
                let u = item.as_str().and_then(Usage::parse).ok_or_else(|| {
                    format!(
                        "expected usages from {}, found {}",
                        USAGES.join(", "),
                        match item {
                            Value::String(s) => quoted(s),
                            v => json_type(v).to_owned(),
                        }
                    )
                })?;
                if !out.contains(&u) {
                    out.push(u);
                }
            }
            PublicValue::Usages(out)
        }
        FieldKind::Sensitive => return Err("internal: sensitive field parsed as public".into()),
    })
}

fn parse_secret(value: &Value, form: RecordForm) -> Result<SecretValue, String> {
    // Messages here must never quote the value.
    match value {
        Value::String(s) => Ok(SecretValue::Plain(Secret::new(s.clone()))),
        Value::Object(o) if form == RecordForm::BundleEntry => match (o.len(), o.get("sealed")) {
            (1, Some(Value::String(b))) => Ok(SecretValue::Sealed(b.clone())),
            _ => Err(
                "a sealed value is an object with the single field `sealed` (a base64 string)"
                    .into(),
            ),
        },
        v => Err(format!("expected a string, found {}", json_type(v))),
    }
}

/// A designer's `*.credential.json`, before an environment is chosen.
#[derive(Debug, Clone)]
pub struct CredentialFile {
    origin: String,
    base: Map<String, Value>,
    environments: BTreeMap<String, Map<String, Value>>,
    /// The record without any environment applied (already checked).
    plain: Credential,
}

impl CredentialFile {
    /// Parses and checks a source file, including every environment's merged record.
    pub fn parse(origin: &str, bytes: &[u8]) -> Result<CredentialFile, RecordError> {
        let base = parse_object(origin, bytes)?;
        let plain = Credential::from_map(origin, &base, RecordForm::SourceFile)?;
        let mut environments = BTreeMap::new();
        match base.get("environments") {
            None => {}
            Some(Value::Object(envs)) => {
                for (env, overrides) in envs {
                    let field = format!("environments.{env}");
                    let Value::Object(o) = overrides else {
                        return Err(RecordError::new(
                            origin,
                            Some(&field),
                            format!(
                                "expected an object of overrides, found {}",
                                json_type(overrides)
                            ),
                        ));
                    };
                    for k in ["name", "type", "environments"] {
                        if o.contains_key(k) {
                            return Err(RecordError::new(
                                origin,
                                Some(&format!("{field}.{k}")),
                                "cannot be overridden per environment",
                            ));
                        }
                    }
                    let merged = merge(&base, o);
                    Credential::from_map(origin, &merged, RecordForm::SourceFile).map_err(
                        |mut e| {
                            e.field = e.field.map(|f| format!("{field}.{f}"));
                            e
                        },
                    )?;
                    environments.insert(env.clone(), o.clone());
                }
            }
            Some(v) => {
                return Err(RecordError::new(
                    origin,
                    Some("environments"),
                    format!("expected an object, found {}", json_type(v)),
                ));
            }
        }
        Ok(CredentialFile {
            origin: origin.to_owned(),
            base,
            environments,
            plain,
        })
    }

    /// The credential's name.
    pub fn name(&self) -> &Name {
        &self.plain.name
    }

    /// Where it was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The environments it defines.
    pub fn environments(&self) -> Vec<&str> {
        self.environments.keys().map(String::as_str).collect()
    }

    /// The record for `env`. A record with environments needs one of them; a record without
    /// environments is the same in every environment.
    pub fn resolve(&self, env: Option<&str>) -> Result<Credential, RecordError> {
        if self.environments.is_empty() {
            return Ok(self.plain.clone());
        }
        let listed = self.environments().join(", ");
        match env {
            None => Err(RecordError::new(
                &self.origin,
                Some("environments"),
                format!("this credential has environments ({listed}); choose one with --env"),
            )),
            Some(e) => match self.environments.get(e) {
                Some(o) => Credential::from_map(
                    &self.origin,
                    &merge(&self.base, o),
                    RecordForm::SourceFile,
                ),
                None => Err(RecordError::new(
                    &self.origin,
                    Some("environments"),
                    format!("no environment {} here; it has: {listed}", quoted(e)),
                )),
            },
        }
    }
}

fn merge(base: &Map<String, Value>, overrides: &Map<String, Value>) -> Map<String, Value> {
    let mut m = base.clone();
    m.remove("environments");
    for (k, v) in overrides {
        m.insert(k.clone(), v.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str) -> Result<CredentialFile, RecordError> {
        CredentialFile::parse("erp.credential.json", json.as_bytes())
    }

    #[test]
    fn empty_credential_is_valid_and_needs_secrets() {
        let c = file(r#"{"name":"erp","type":"password"}"#).and_then(|f| f.resolve(None));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert!(c.needs_secrets());
        assert!(!c.include_in_deployment);
        assert!(c.allows(Usage::Ftp));
    }

    #[test]
    fn unknown_field_names_file_and_field() {
        let e = file(r#"{"name":"erp","type":"password","pasword":"x"}"#).err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.starts_with("erp.credential.json: field `pasword`: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_refused_without_quoting_secret() {
        let e = file(r#"{"name":"erp","type":"database","port":"5432"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.unwrap_or_default()
                .contains("field `port`: expected a port number")
        );
        let e = file(r#"{"name":"erp","type":"api_key","key":{"x":"canary-9"}}"#)
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("field `key`") && !e.contains("canary-9"), "{e}");
    }

    #[test]
    fn a_url_with_user_info_is_refused_without_quoting_it() {
        for url in [
            "https://u:canary-pw-1@idp.example/token",
            "http://:canary-pw-1@127.0.0.1/",
            "ftp://u:canary-pw-1@h/",
        ] {
            let json = format!(r#"{{"name":"erp","type":"password","verify_url":"{url}"}}"#);
            let e = file(&json).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                e.contains("field `verify_url`") && e.contains("user name or password"),
                "{e}"
            );
            assert!(!e.contains("canary-pw-1"), "{e}");
        }
        // An `@` in the path or query is no user info.
        let ok = r#"{"name":"erp","type":"password","verify_url":"https://h.example/a@b?c=@"}"#;
        assert!(file(ok).is_ok());
    }

    #[test]
    fn invalid_name_is_refused() {
        let e = file(r#"{"name":"../erp","type":"password"}"#)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("field `name`: invalid name"));
    }

    #[test]
    fn sensitive_field_of_another_type_is_unknown() {
        assert!(file(r#"{"name":"a","type":"password","client_secret":"s"}"#).is_err());
        assert!(
            file(r#"{"name":"a","type":"oauth2","client_secret":"s","grant_type":"password"}"#)
                .is_ok()
        );
    }

    #[test]
    fn enumerations_and_usages_are_checked() {
        assert!(file(r#"{"name":"a","type":"oauth2","grant_type":"magic"}"#).is_err());
        assert!(file(r#"{"name":"a","type":"api_key","placement":"cookie"}"#).is_err());
        assert!(
            file(r#"{"name":"a","type":"password","allow_usage_for":["http","smtp"]}"#).is_err()
        );
        let c = file(r#"{"name":"a","type":"password","allow_usage_for":["http"]}"#)
            .and_then(|f| f.resolve(None))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.allows(Usage::Http) && !c.allows(Usage::Database));
    }

    #[test]
    fn environments_override_and_must_be_chosen() {
        let f = file(
            r#"{"name":"db","type":"database","host":"dev","environments":{
                "staging":{"host":"stg"},"production":{"host":"prod","password":"p"}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = f
            .resolve(None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("production, staging"), "{e}");
        let e = f
            .resolve(Some("qa"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("no environment \"qa\"") && e.contains("production, staging"),
            "{e}"
        );
        let p = f
            .resolve(Some("production"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.text("host"), Some("prod"));
        assert!(!p.needs_secrets());
        let s = f.resolve(Some("staging")).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.needs_secrets());
    }

    #[test]
    fn bad_environment_override_names_the_environment() {
        let e = file(r#"{"name":"db","type":"database","environments":{"prod":{"port":0}}}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("field `environments.prod.port`"), "{e}");
        assert!(
            file(r#"{"name":"db","type":"database","environments":{"prod":{"name":"x"}}}"#)
                .is_err()
        );
    }

    #[test]
    fn bundle_entry_refuses_source_only_fields_and_accepts_sealed() {
        let ok = Credential::from_bundle_entry(
            "e",
            br#"{"name":"a","type":"api_key","key":{"sealed":"AAAA"}}"#,
        );
        assert!(matches!(
            ok.map(|c| c.secrets.get("key").cloned()),
            Ok(Some(SecretValue::Sealed(_)))
        ));
        assert!(
            Credential::from_bundle_entry(
                "e",
                br#"{"name":"a","type":"api_key","include_in_deployment":true}"#
            )
            .is_err()
        );
        assert!(
            Credential::from_bundle_entry(
                "e",
                br#"{"name":"a","type":"api_key","environments":{}}"#
            )
            .is_err()
        );
        assert!(
            Credential::from_bundle_entry(
                "e",
                br#"{"name":"a","type":"api_key","key":{"sealed":"A","x":1}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn bundle_json_round_trips() {
        let src = r#"{"name":"o","type":"oauth2","grant_type":"client_credentials","client_id":"c","scope":"s","token_endpoint":"https://idp/token","allow_usage_for":["http"],"client_secret":"x"}"#;
        let c =
            Credential::from_bundle_entry("e", src.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let again = serde_json::to_vec(&c.bundle_json()).unwrap_or_default();
        assert_eq!(Credential::from_bundle_entry("e", &again), Ok(c));
    }
}
