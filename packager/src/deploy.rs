//! `deploy`: stream a bundle to a receiver's `POST /v1/deployments` and report the outcome.
//!
//! The token comes from a file, `FLOWPACK_TOKEN` or standard input, never from an argument.
//! Failures become one line built from the receiver's `problem+json` (`detail`, `code`) and an
//! exit status a script can act on (see `client`); a raw HTTP body is never printed, since it
//! is not ours to trust or show. A deploy is safe to retry (`--retries`): a bundle already
//! applied is answered as a replay and changes nothing.

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use serde_json::Value;

use std::path::Path;

use crate::cli::{DeployArgs, DiffArgs, RollbackArgs, ServerArgs};
use crate::client::{Answer, Receiver, block_on, clean};

/// `flowpack deploy BUNDLE --server URL [--token-file F] [--ca-cert PEM] [--verify] [--dry-run] [--json]`.
pub fn deploy(a: &DeployArgs) -> anyhow::Result<()> {
    if a.dry_run {
        return plan(&a.bundle, &a.server);
    }
    // The receiver verifies the bundle's credentials before applying it.
    let path = if a.verify {
        "/v1/deployments?verify=true"
    } else {
        "/v1/deployments"
    };
    let (url, answer) = upload(&a.bundle, &a.server, path, "deploy")?;
    show_record(&url, answer, a.server.json)
}

/// `flowpack diff BUNDLE --server URL …`: `deploy --dry-run`.
pub fn diff(a: &DiffArgs) -> anyhow::Result<()> {
    plan(&a.bundle, &a.server)
}

/// A plan with changes: `main` exits with status 6 and prints nothing more.
#[derive(Debug)]
pub struct PlanHasChanges;

impl std::fmt::Display for PlanHasChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the plan has changes")
    }
}

impl std::error::Error for PlanHasChanges {}

/// Asks the receiver for the plan of deploying `bundle` and prints it; fails with
/// [`PlanHasChanges`] when it has changes.
fn plan(bundle: &Path, server: &ServerArgs) -> anyhow::Result<()> {
    let (url, answer) = upload(bundle, server, "/v1/deployments?dry_run=true", "diff")?;
    let (status, answer) = (answer.status, answer.json);
    let Some(changes) = answer.get("changes").and_then(Value::as_array) else {
        anyhow::bail!(
            "the receiver at {url} answered HTTP {status} without a plan (is it older than this flowpack?)"
        );
    };
    let changed = changes
        .iter()
        .any(|c| c.get("action").and_then(Value::as_str) != Some("unchanged"));
    if server.json {
        print_json(&answer)?;
    } else {
        print_plan(&answer, changes)?;
    }
    if changed {
        return Err(PlanHasChanges.into());
    }
    Ok(())
}

/// `flowpack rollback ID --server URL …`.
pub fn rollback(a: &RollbackArgs) -> anyhow::Result<()> {
    let receiver = Receiver::new(&a.server, "rollback")?;
    let url = receiver.url(&format!("/v1/deployments/{}/rollback", a.id));
    let answer = block_on(receiver.send(|| receiver.post(&url)))??;
    show_record(&url, answer, a.server.json)
}

/// Prints a deployment record (a deploy's or a rollback's), as JSON with `--json`.
fn show_record(url: &str, answer: Answer, json: bool) -> anyhow::Result<()> {
    let record = answer.json;
    if !record.is_object() {
        anyhow::bail!(
            "the receiver at {url} answered HTTP {} without a deployment record",
            answer.status
        );
    }
    if json {
        print_json(&record)
    } else {
        print_record(&record)
    }
}

/// Streams `bundle` to `path` (`POST /v1/deployments…`) and returns the URL and the answer
/// of a 2xx.
fn upload(
    bundle: &Path,
    server: &ServerArgs,
    path: &str,
    what: &'static str,
) -> anyhow::Result<(String, Answer)> {
    let size = std::fs::metadata(bundle)
        .with_context(|| format!("bundle {}", bundle.display()))?
        .len();
    let receiver = Receiver::new(server, what)?;
    let url = receiver.url(path);
    let bar = crate::progress::bytes(size, "uploading");
    let answer = block_on(async {
        // Each try streams the file anew (a file that cannot be opened fails the request).
        let attempt = || {
            let bundle = bundle.to_path_buf();
            let tick = bar.clone();
            tick.set_position(0);
            let stream = futures_util::stream::once(tokio::fs::File::open(bundle))
                .map_ok(tokio_util::io::ReaderStream::new)
                .try_flatten()
                .inspect_ok(move |chunk| tick.inc(chunk.len() as u64));
            receiver
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/zip")
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(reqwest::Body::wrap_stream(stream))
        };
        receiver.send(attempt).await
    });
    bar.finish_and_clear();
    let answer = answer??;
    Ok((url, answer))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    outln!(
        "{}",
        crate::text::json_safe(&serde_json::to_string_pretty(v)?)
    );
    Ok(())
}

/// Colours for a terminal: none when stdout is not one, or `NO_COLOR` is set.
struct Paint(bool);

impl Paint {
    fn new() -> Paint {
        use std::io::IsTerminal as _;
        Paint(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

/// The plan as people read a diff: `+` create, `~` update, `=` unchanged; the fields that
/// change, what happens to the secrets, and drift.
fn print_plan(answer: &Value, changes: &[Value]) -> anyhow::Result<()> {
    let text = |k: &str| answer.get(k).and_then(Value::as_str).map(clean);
    let bundle = text("bundle_id").unwrap_or_else(|| "?".into());
    let container = text("container").unwrap_or_else(|| "?".into());
    let paint = Paint::new();
    if answer.get("replay").and_then(Value::as_bool) == Some(true) {
        let id = answer
            .get("deployment")
            .map_or_else(String::new, |d| clean(&d.to_string()));
        outln!(
            "bundle {bundle} was already applied to {container} (deployment {id}): deploying it again changes nothing"
        );
        return Ok(());
    }
    outln!("plan for bundle {bundle} to {container}:");
    let (mut create, mut update, mut same, mut drifted) = (0, 0, 0, 0);
    for c in changes {
        let s = |k: &str| {
            c.get(k)
                .and_then(Value::as_str)
                .map(clean)
                .unwrap_or_default()
        };
        let fields: Vec<String> = c
            .get("fields")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
            .unwrap_or_default();
        let drift = c.get("drift").and_then(Value::as_bool) == Some(true);
        let (mark, colour) = match s("action").as_str() {
            "create" => {
                create += 1;
                ("+", "32")
            }
            "update" => {
                update += 1;
                ("~", "33")
            }
            _ => {
                same += 1;
                ("=", "2")
            }
        };
        let mut line = format!("{mark} {:<10} {}", s("kind"), s("path"));
        if !fields.is_empty() {
            line.push_str(&format!("  fields: {}", fields.join(", ")));
        }
        let secrets = s("secrets");
        if secrets != "none" && !secrets.is_empty() {
            line.push_str(&format!("  secrets: {secrets}"));
        }
        outln!("  {}", paint.paint(colour, &line));
        if secrets == "cleared" {
            outln!(
                "      {}",
                paint.paint("31", "its stored secrets will be forgotten: its destination changes and the bundle does not carry them")
            );
        }
        if drift {
            drifted += 1;
            outln!(
                "      {}",
                paint.paint("31", "drift: changed on the receiver since it was last deployed; the deploy overwrites that change")
            );
        }
    }
    outln!(
        "{create} to create, {update} to update, {same} unchanged{}",
        if drifted > 0 {
            format!(", {drifted} drifted")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn print_record(r: &Value) -> anyhow::Result<()> {
    let text = |k: &str| r.get(k).and_then(Value::as_str).map(clean);
    let replayed = r.get("replayed").and_then(Value::as_bool).unwrap_or(false);
    let bundle = text("bundle_id").unwrap_or_else(|| "?".into());
    let container = text("container").unwrap_or_else(|| "?".into());
    let rollback_of = r.get("rollback_of").filter(|v| !v.is_null());
    if replayed {
        outln!(
            "replayed: bundle {bundle} was already applied to {container}; nothing changed (original deployment below)"
        );
    } else if let Some(of) = rollback_of {
        let of = clean(&of.to_string());
        outln!("rolled back {container} to what deployment {of} left (bundle {bundle})");
    } else {
        outln!("deployed bundle {bundle} to {container}");
    }
    if let Some(id) = r.get("id") {
        let id = match id {
            Value::String(s) => clean(s),
            other => clean(&other.to_string()),
        };
        outln!("  deployment:    {id}");
    }
    for (key, label) in [
        ("created", "created"),
        ("updated", "updated"),
        ("unchanged", "unchanged"),
        ("needs_secrets", "needs secrets"),
    ] {
        let items: Vec<String> = r
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
            .unwrap_or_default();
        if items.is_empty() {
            outln!("  {label:<14} (none)");
        } else {
            for (i, item) in items.iter().enumerate() {
                let l = if i == 0 { label } else { "" };
                outln!("  {l:<14} {item}");
            }
        }
    }
    for path in r
        .get("drift")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        outln!(
            "  drift:         {} had been changed on the receiver since it was last deployed; this deploy overwrote that change",
            clean(path)
        );
    }
    if r.get("needs_secrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        outln!(
            "  (credentials that need secrets: an admin fills them in with PATCH /v1/credentials/…)"
        );
    }
    Ok(())
}
