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

use crate::cli::DeployArgs;
use crate::client::{Receiver, block_on, clean};

/// `flowpack deploy BUNDLE --server URL [--token-file F] [--ca-cert PEM] [--verify] [--json]`.
pub fn deploy(a: &DeployArgs) -> anyhow::Result<()> {
    let size = std::fs::metadata(&a.bundle)
        .with_context(|| format!("bundle {}", a.bundle.display()))?
        .len();
    let receiver = Receiver::new(&a.server, "deploy")?;
    // The receiver verifies the bundle's credentials before applying it.
    let path = if a.verify {
        "/v1/deployments?verify=true"
    } else {
        "/v1/deployments"
    };
    let url = receiver.url(path);
    let bar = crate::progress::bytes(size, "uploading");
    let answer = block_on(async {
        // Each try streams the file anew (a file that cannot be opened fails the request).
        let attempt = || {
            let bundle = a.bundle.clone();
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
    let record = answer.json;
    if !record.is_object() {
        anyhow::bail!(
            "the receiver at {url} answered HTTP {} without a deployment record",
            answer.status
        );
    }
    if a.server.json {
        outln!(
            "{}",
            crate::text::json_safe(&serde_json::to_string_pretty(&record)?)
        );
    } else {
        print_record(&record)?;
    }
    Ok(())
}

fn print_record(r: &Value) -> anyhow::Result<()> {
    let text = |k: &str| r.get(k).and_then(Value::as_str).map(clean);
    let replayed = r.get("replayed").and_then(Value::as_bool).unwrap_or(false);
    let bundle = text("bundle_id").unwrap_or_else(|| "?".into());
    let container = text("container").unwrap_or_else(|| "?".into());
    if replayed {
        outln!(
            "replayed: bundle {bundle} was already applied to {container}; nothing changed (original deployment below)"
        );
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
