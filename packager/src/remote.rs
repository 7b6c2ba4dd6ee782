//! `ls`, `get`, `audit` and `history`: read a receiver as `curl` would, with the token from a
//! file or the environment, and print what it answers for a reader (or `--json` for a
//! script). Every string the receiver sends is shown escaped: it is not ours to trust.

use serde_json::Value;

use crate::cli::{GetArgs, ListArgs, LsArgs, ObjectKind};
use crate::client::{Receiver, block_on, clean};

/// Prints `v` as JSON (control characters a terminal would act on escaped).
fn print_json(v: &Value) -> anyhow::Result<()> {
    outln!(
        "{}",
        crate::text::json_safe(&serde_json::to_string_pretty(v)?)
    );
    Ok(())
}

/// A path as the API takes it: without its leading slash.
fn api_path(p: &flowpack_shared::names::ContainerPath) -> &str {
    p.as_str().trim_start_matches('/')
}

/// Any value from the receiver as text for a terminal: escaped and bounded, whatever its type
/// (a number where one is expected, or whatever a hostile receiver put there).
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
        .unwrap_or_default()
}

/// `flowpack ls PATH`.
pub fn ls(a: &LsArgs) -> anyhow::Result<()> {
    let receiver = Receiver::new(&a.server, "ls")?;
    let v = block_on(receiver.get(format!("/v1/containers/{}", api_path(&a.path))))??;
    if a.server.json {
        return print_json(&v);
    }
    for (key, suffix) in [
        ("containers", "/"),
        ("mappings", "  (mapping)"),
        ("credentials", "  (credential)"),
    ] {
        for name in strings(&v, key) {
            outln!("{name}{suffix}");
        }
    }
    Ok(())
}

/// `flowpack get PATH [--kind mapping|credential]`.
pub fn get(a: &GetArgs) -> anyhow::Result<()> {
    let receiver = Receiver::new(&a.server, "get")?;
    let path = api_path(&a.path).to_owned();
    let fetch = |kind: &str| receiver.get(format!("/v1/{kind}/{path}"));
    let v = block_on(async {
        match a.kind {
            Some(ObjectKind::Mapping) => fetch("mappings").await.map_err(anyhow::Error::from),
            Some(ObjectKind::Credential) => fetch("credentials").await.map_err(anyhow::Error::from),
            None => match (fetch("mappings").await, fetch("credentials").await) {
                (Ok(_), Ok(_)) => Err(anyhow::anyhow!(
                    "{} is both a mapping and a credential: say which with --kind",
                    a.path
                )),
                (Ok(v), Err(_)) | (Err(_), Ok(v)) => Ok(v),
                // Neither: the credential's failure, unless only the mapping's says more
                // than "not found".
                (Err(m), Err(c)) if c.status == Some(404) && m.status != Some(404) => Err(m.into()),
                (Err(_), Err(c)) => Err(c.into()),
            },
        }
    })??;
    if a.server.json {
        return print_json(&v);
    }
    show_object(&v)
}

/// A mapping or a credential, one `field: value` a line; nested values as compact JSON.
fn show_object(v: &Value) -> anyhow::Result<()> {
    let Some(o) = v.as_object() else {
        return print_json(v);
    };
    for (k, val) in o {
        let text = shown(val);
        outln!("{:<24} {text}", format!("{}:", clean(k)));
    }
    Ok(())
}

/// The query of a listing page.
fn page_query(a: &ListArgs) -> String {
    let mut q = format!("?limit={}", a.limit);
    if let Some(c) = &a.container {
        q.push_str(&format!("&container={}", c.as_str()));
    }
    if let Some(b) = a.before {
        q.push_str(&format!("&before={b}"));
    }
    q
}

/// `flowpack audit`.
pub fn audit(a: &ListArgs) -> anyhow::Result<()> {
    let receiver = Receiver::new(&a.server, "audit")?;
    let v = block_on(receiver.get(format!("/v1/audit{}", page_query(a))))??;
    if a.server.json {
        return print_json(&v);
    }
    let text = |r: &Value, k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .map_or_else(|| "-".into(), clean)
    };
    for r in v
        .get("audit")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = r.get("id").map(shown).unwrap_or_default();
        let status = r.get("status").map(shown).unwrap_or_default();
        outln!(
            "{id:>6}  {}  {:<10} {:<18} {:<9} {status:>3}  {}  {}",
            text(r, "at"),
            text(r, "principal"),
            text(r, "action"),
            text(r, "outcome"),
            text(r, "container"),
            r.get("code")
                .and_then(Value::as_str)
                .map(clean)
                .unwrap_or_default(),
        );
    }
    print_next(&v)
}

/// `flowpack history`.
pub fn history(a: &ListArgs) -> anyhow::Result<()> {
    let receiver = Receiver::new(&a.server, "history")?;
    let v = block_on(receiver.get(format!("/v1/deployments{}", page_query(a))))??;
    if a.server.json {
        return print_json(&v);
    }
    for d in v
        .get("deployments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = d.get("id").map(shown).unwrap_or_default();
        let text = |k: &str| {
            d.get(k)
                .and_then(Value::as_str)
                .map_or_else(|| "-".into(), clean)
        };
        let count = |k: &str| d.get(k).and_then(Value::as_array).map_or(0, Vec::len);
        outln!(
            "{id:>6}  {}  bundle {}  created {}, updated {}, needs secrets {}",
            text("container"),
            text("bundle_id"),
            count("created"),
            count("updated"),
            count("needs_secrets"),
        );
    }
    print_next(&v)
}

fn print_next(v: &Value) -> anyhow::Result<()> {
    if let Some(next) = v.get("next").and_then(Value::as_i64) {
        outln!("(older rows: --before {next})");
    }
    Ok(())
}
