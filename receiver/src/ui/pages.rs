//! The pages: one askama template (in `receiver/templates/`) per page, and the views they
//! show, built from the services' answers. Templates escape everything they print; nothing
//! here ever holds a secret value (the credential views are built from the redacted record).

use askama::Template;
use flowpack_shared::model::credential::{CredentialType, FieldKind, fields_of};
use flowpack_shared::names::ContainerPath;
use serde_json::Value;

use super::session::Notice;
use crate::service::catalog::Page;

/// What every page shows around its content.
#[derive(Debug, Default, Clone)]
pub struct Chrome {
    /// The signed-in principal, if any.
    pub who: Option<String>,
    /// The session's CSRF token (for the sign-out form).
    pub csrf: String,
    /// A notice left by the previous action.
    pub notice: Option<Notice>,
}

/// A link.
#[derive(Debug)]
pub struct Link {
    pub label: String,
    pub href: String,
}

/// The page of container `c`.
pub fn container_href(c: &str) -> String {
    format!("/ui/containers{}", if c == "/" { "/" } else { c })
}

fn object_href(kind: &str, path: &str) -> String {
    format!("/ui/{kind}{path}")
}

/// A link to the container an object at `path` (`/a/b/name`) is in.
fn parent_link(path: &str) -> Link {
    let parent = match path.rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((p, _)) => p,
    };
    Link {
        label: parent.to_owned(),
        href: container_href(parent),
    }
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn texts(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignIn {
    pub c: Chrome,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct Message {
    pub c: Chrome,
    pub title: String,
    pub text: String,
    pub ok: bool,
    pub link: Option<Link>,
}

#[derive(Template)]
#[template(path = "container.html")]
pub struct Container {
    pub c: Chrome,
    pub path: String,
    pub crumbs: Vec<Link>,
    pub containers: Vec<Link>,
    pub mappings: Vec<Link>,
    pub credentials: Vec<Link>,
    pub can_write: bool,
}

impl Container {
    /// From `GET /v1/containers/…`'s answer.
    pub fn of(c: Chrome, v: &Value, can_write: bool) -> Container {
        let path = text(v, "path");
        let join = |name: &str| {
            if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            }
        };
        let links = |key: &str, href: &dyn Fn(&str) -> String| {
            texts(v, key)
                .into_iter()
                .map(|n| Link {
                    href: href(&join(&n)),
                    label: n,
                })
                .collect()
        };
        let mut crumbs = vec![Link {
            label: "/".into(),
            href: container_href("/"),
        }];
        if let Ok(cp) = ContainerPath::parse(&path) {
            let mut at = String::new();
            for seg in cp.segments() {
                at.push('/');
                at.push_str(seg);
                crumbs.push(Link {
                    label: seg.to_owned(),
                    href: container_href(&at),
                });
            }
        }
        Container {
            containers: links("containers", &|p| container_href(p)),
            mappings: links("mappings", &|p| object_href("mappings", p)),
            credentials: links("credentials", &|p| object_href("credentials", p)),
            c,
            path,
            crumbs,
            can_write,
        }
    }
}

/// A credential parameter of a mapping.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub credential: Option<Link>,
    pub stored: bool,
    pub has_secrets: bool,
    /// A credential is named but not stored, or stored without its secrets.
    pub needs: bool,
}

#[derive(Template)]
#[template(path = "mapping.html")]
pub struct Mapping {
    pub c: Chrome,
    pub path: String,
    pub container: Link,
    pub description: Option<String>,
    pub version: String,
    pub files: String,
    pub params: Vec<Param>,
    pub other_params: Vec<String>,
}

impl Mapping {
    /// From `GET /v1/mappings/…`'s answer.
    pub fn of(c: Chrome, v: &Value) -> Mapping {
        let path = text(v, "path");
        let empty = Vec::new();
        let params = v["credential_parameters"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|p| {
                let stored = p["stored"].as_bool().unwrap_or(false);
                let has_secrets = p["has_secrets"].as_bool().unwrap_or(false);
                let credential = p["credential"].as_str().map(|cp| Link {
                    label: cp.to_owned(),
                    href: object_href("credentials", cp),
                });
                Param {
                    name: text(p, "name"),
                    needs: credential.is_some() && !(stored && has_secrets),
                    credential,
                    stored,
                    has_secrets,
                }
            })
            .collect::<Vec<_>>();
        let other_params = v["parameters"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|p| text(p, "name"))
            .filter(|n| !params.iter().any(|p| &p.name == n))
            .collect();
        let files = match v["files"].as_array() {
            Some(f) => f
                .iter()
                .map(|x| x.as_str().map_or_else(|| text(x, "path"), str::to_owned))
                .collect::<Vec<_>>()
                .join(", "),
            None => String::new(),
        };
        Mapping {
            container: parent_link(&path),
            description: v["description"].as_str().map(str::to_owned),
            version: text(v, "version"),
            files,
            c,
            path,
            params,
            other_params,
        }
    }
}

/// A field of a credential as shown.
#[derive(Debug)]
pub struct FieldRow {
    pub name: String,
    /// A non-sensitive field's value.
    pub value: String,
    pub sensitive: bool,
    /// A set sensitive field's fingerprint.
    pub fingerprint: Option<String>,
}

/// An editable non-sensitive field.
#[derive(Debug)]
pub struct EditField {
    pub name: String,
    pub value: String,
    /// How the value is written, when it is not free text.
    pub hint: String,
}

fn hint(kind: FieldKind) -> String {
    match kind {
        FieldKind::OneOf(words) => words.join(" | "),
        FieldKind::Usages => "comma-separated: http, database, …".into(),
        FieldKind::Port => "1–65535".into(),
        FieldKind::Url => "https://…".into(),
        FieldKind::Timestamp => "RFC 3339".into(),
        FieldKind::Text | FieldKind::Sensitive => String::new(),
    }
}

/// A field's value as typed in a form: lists are comma-separated.
pub fn form_value(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// The non-sensitive fields of `kind` (with `description` first) and its sensitive ones.
pub fn form_fields(kind: CredentialType, record: &Value) -> (Vec<EditField>, Vec<String>) {
    let mut edit = vec![EditField {
        name: "description".into(),
        value: form_value(&record["description"]),
        hint: String::new(),
    }];
    let mut secret = Vec::new();
    for f in fields_of(kind) {
        if f.kind == FieldKind::Sensitive {
            secret.push(f.name.to_owned());
        } else {
            edit.push(EditField {
                name: f.name.to_owned(),
                value: form_value(&record[f.name]),
                hint: hint(f.kind),
            });
        }
    }
    (edit, secret)
}

#[derive(Template)]
#[template(path = "credential.html")]
pub struct Credential {
    pub c: Chrome,
    pub path: String,
    pub container: Link,
    pub action: String,
    pub kind: String,
    pub fields: Vec<FieldRow>,
    pub needs_secrets: bool,
    pub needs_authorization: bool,
    pub can_write: bool,
    pub can_use: bool,
    /// An oauth2 credential with an authorization endpoint.
    pub authorizable: bool,
    pub edit_fields: Vec<EditField>,
    pub secret_fields: Vec<String>,
}

impl Credential {
    /// From the redacted record (`GET /v1/credentials/…`).
    pub fn of(c: Chrome, v: &Value, can_write: bool, can_use: bool) -> Credential {
        let path = text(v, "path");
        let kind_text = text(v, "type");
        let kind = CredentialType::parse(&kind_text);
        let mut fields = vec![FieldRow {
            name: "description".into(),
            value: form_value(&v["description"]),
            sensitive: false,
            fingerprint: None,
        }];
        let (edit_fields, secret_fields) = match kind {
            Some(k) => {
                for f in fields_of(k) {
                    let sensitive = f.kind == FieldKind::Sensitive;
                    fields.push(FieldRow {
                        name: f.name.to_owned(),
                        value: if sensitive {
                            String::new()
                        } else {
                            form_value(&v[f.name])
                        },
                        sensitive,
                        fingerprint: if sensitive {
                            v[f.name]["fingerprint"].as_str().map(str::to_owned)
                        } else {
                            None
                        },
                    });
                }
                form_fields(k, v)
            }
            None => (Vec::new(), Vec::new()),
        };
        Credential {
            container: parent_link(&path),
            action: object_href("credentials", &path),
            needs_secrets: v["needs_secrets"].as_bool().unwrap_or(false),
            needs_authorization: v["needs_authorization"].as_bool().unwrap_or(false),
            authorizable: kind == Some(CredentialType::Oauth2)
                && v["authorization_endpoint"].is_string(),
            c,
            path,
            kind: kind_text,
            fields,
            can_write,
            can_use,
            edit_fields,
            secret_fields,
        }
    }
}

#[derive(Template)]
#[template(path = "new_credential.html")]
pub struct NewCredential {
    pub c: Chrome,
    pub container: String,
    /// The chosen type, empty before one is chosen.
    pub kind: String,
    pub kinds: Vec<String>,
    pub edit_fields: Vec<EditField>,
    pub secret_fields: Vec<String>,
}

impl NewCredential {
    pub fn of(c: Chrome, container: String, kind: Option<CredentialType>) -> NewCredential {
        let (mut edit_fields, secret_fields) = match kind {
            Some(k) => form_fields(k, &Value::Null),
            None => (Vec::new(), Vec::new()),
        };
        // The form has its own description field.
        edit_fields.retain(|f| f.name != "description");
        NewCredential {
            c,
            container,
            kind: kind.map(CredentialType::as_str).unwrap_or("").to_owned(),
            kinds: ["password", "oauth2", "api_key", "database"]
                .map(String::from)
                .to_vec(),
            edit_fields,
            secret_fields,
        }
    }
}

/// A deployment record as shown.
#[derive(Debug)]
pub struct Deployment {
    pub id: String,
    pub at: String,
    pub container: String,
    pub principal: String,
    pub bundle_id: String,
    pub signer: String,
    pub environment: String,
    pub rollback_of: String,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub needs_secrets: Vec<String>,
}

impl Deployment {
    pub fn of(v: &Value) -> Deployment {
        Deployment {
            id: text(v, "id"),
            at: text(v, "at"),
            container: text(v, "container"),
            principal: text(v, "principal"),
            bundle_id: text(v, "bundle_id"),
            signer: text(v, "signer_key_id"),
            environment: text(v, "environment"),
            rollback_of: text(v, "rollback_of"),
            created: texts(v, "created"),
            updated: texts(v, "updated"),
            needs_secrets: texts(v, "needs_secrets"),
        }
    }
}

#[derive(Template)]
#[template(path = "deployments.html")]
pub struct Deployments {
    pub c: Chrome,
    pub container: String,
    pub rows: Vec<Deployment>,
    pub next: Option<String>,
    pub can_write: bool,
}

#[derive(Template)]
#[template(path = "deployment.html")]
pub struct DeploymentPage {
    pub c: Chrome,
    pub d: Deployment,
    pub can_write: bool,
}

#[derive(Template)]
#[template(path = "rollback.html")]
pub struct Rollback {
    pub c: Chrome,
    pub d: Deployment,
}

/// One change of a plan.
#[derive(Debug)]
pub struct Change {
    pub path: String,
    pub kind: String,
    pub action: String,
    pub fields: String,
    pub secrets: String,
    pub drift: bool,
}

#[derive(Template)]
#[template(path = "plan.html")]
pub struct Plan {
    pub c: Chrome,
    pub bundle_id: String,
    pub container: String,
    pub changes: Vec<Change>,
}

impl Plan {
    /// From a dry run's answer.
    pub fn of(c: Chrome, v: &Value) -> Plan {
        let empty = Vec::new();
        Plan {
            bundle_id: text(v, "bundle_id"),
            container: text(v, "container"),
            changes: v["changes"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|ch| Change {
                    path: text(ch, "path"),
                    kind: text(ch, "kind"),
                    action: text(ch, "action"),
                    fields: texts(ch, "fields").join(", "),
                    secrets: text(ch, "secrets"),
                    drift: ch["drift"].as_bool().unwrap_or(false),
                })
                .collect(),
            c,
        }
    }
}

/// An audit row as shown.
#[derive(Debug)]
pub struct AuditEntry {
    pub id: String,
    pub at: String,
    pub principal: String,
    pub action: String,
    pub container: String,
    pub target: String,
    pub outcome: String,
    pub status: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct Audit {
    pub c: Chrome,
    pub container: String,
    pub rows: Vec<AuditEntry>,
    pub next: Option<String>,
}

impl Audit {
    pub fn rows(v: &Value) -> Vec<AuditEntry> {
        let empty = Vec::new();
        v["audit"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|a| AuditEntry {
                id: text(a, "id"),
                at: text(a, "at"),
                principal: text(a, "principal"),
                action: text(a, "action"),
                container: text(a, "container"),
                target: text(a, "target"),
                outcome: text(a, "outcome"),
                status: text(a, "status"),
                detail: text(a, "detail"),
            })
            .collect()
    }
}

/// A listing's container filter as its form shows it, and the maker of the link to the
/// page after it (at `base`, from the answer's `next`), keeping the filter and page size.
pub fn listing_links(page: &Page) -> (String, impl Fn(&str, &Value) -> Option<String> + use<>) {
    let container = page
        .container
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let (filter, limit) = (container.clone(), page.limit);
    let next = move |base: &str, next: &Value| {
        let id = next.as_i64()?;
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if !filter.is_empty() {
            q.append_pair("container", &filter);
        }
        q.append_pair("limit", &limit.to_string());
        q.append_pair("before", &id.to_string());
        Some(format!("{base}?{}", q.finish()))
    };
    (container, next)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_page_flags_what_it_needs_and_never_prints_a_sensitive_value() {
        let record = serde_json::json!({
            "path": "/apps/ac", "type": "oauth2", "grant_type": "authorization_code",
            "authorization_endpoint": "https://idp.example.com/authorize",
            "client_id": "client-<1>",
            "client_secret": {"set": true, "fingerprint": "fp-client"},
            // Not what a redacted record holds: even so, a sensitive field's value is not shown.
            "refresh_token": "LEAKED-VALUE",
            "needs_secrets": false, "needs_authorization": true,
        });
        let page = Credential::of(Chrome::default(), &record, true, true)
            .render()
            .unwrap();
        assert!(page.contains("id=\"needs-authorization\""), "{page}");
        assert!(page.contains("id=\"has-secrets\""));
        assert!(page.contains("fingerprint fp-client"));
        assert!(page.contains("id=\"authorize\""));
        assert!(!page.contains("LEAKED-VALUE"));
        // Escaped, as every value is.
        assert!(
            page.contains("client-&#60;1&#62;") || page.contains("client-&lt;1&gt;"),
            "{page}"
        );
        assert!(!page.contains("<script"));

        let read_only = Credential::of(Chrome::default(), &record, false, false)
            .render()
            .unwrap();
        for control in [
            "secrets-form",
            "fields-form",
            "id=\"verify\"",
            "id=\"authorize\"",
        ] {
            assert!(!read_only.contains(control), "{control}");
        }
    }
}
