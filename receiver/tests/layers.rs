//! The receiver's layers, checked on its source: each file's `crate::…` paths may name only
//! its own layer or the ones below it (ARCHITECTURE.md draws them).
//!
//! From the bottom: `problem` (imports nothing of the crate); `store`; the infrastructure
//! (`config`, `outbound`, `conns`, `metrics`, `tls`, `logs`); the services (`service/`); the HTTP API (`api/`) and the admin page (`ui/`) beside it. The
//! wiring (`lib.rs`, `main.rs`, `datadir.rs`, `reload.rs`) may use everything. Items of the crate root
//! (`App`, `blocking`, `Clock`) are the services' and the API's context: only they may name
//! them. Services also never name `hyper`: they return values and `Problem`s, never responses.
//! Only `store/sqlite/` names `rusqlite`; outside `store/`, nothing names an engine's own
//! module or the traits an engine implements to build the handles (`Connection`, `Engine`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The layers, bottom first.
const LAYERS: &[(&str, &[&str])] = &[
    ("problem", &["problem"]),
    ("store", &["store"]),
    (
        "infrastructure",
        &[
            "config", "outbound", "conns", "metrics", "tls", "logs", "keyring",
        ],
    ),
    ("services", &["service"]),
    // The admin page sits beside the API: both answer HTTP over the services.
    ("api", &["api", "ui"]),
];

/// Modules that wire the layers together: they may use any of them.
const WIRING: &[&str] = &["lib", "main", "datadir", "reload", "rotate", "backup"];

/// The first module of a file's path under `src/`: `api/router.rs` → `api`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_owned()
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate-level names a file's `crate::` paths start with, with their line numbers:
/// `crate::store::Db` → `store`, `use crate::{App, problem::Problem}` → `App`, `problem`.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            // `flowpack_receiver::` is another crate; `crate::` must start a path.
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let name = item.trim().split("::").next().unwrap_or("").trim();
                    if !name.is_empty() {
                        out.push((n + 1, name.to_owned()));
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push((n + 1, name));
            }
        }
    }
    out
}

#[test]
fn each_module_imports_only_its_layer_or_those_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules_seen = Vec::new();
    let mut faults = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        modules_seen.push(module.clone());
        if WIRING.contains(&module.as_str()) {
            continue;
        }
        let Some(own) = rank(&module) else {
            faults.push(format!(
                "{}: module `{module}` is in no layer (add it to LAYERS or WIRING)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, name) in crate_paths(&text) {
            let ok = match rank(&name) {
                Some(r) => r <= own,
                // Wiring modules are above every layer.
                None if WIRING.contains(&name.as_str()) => false,
                // An item of the crate root: the services' and the API's context.
                None => own >= rank("service").unwrap(),
            };
            if !ok {
                faults.push(format!(
                    "{}:{line}: `{module}` ({}) names `crate::{name}`, which is above it",
                    file.display(),
                    LAYERS[own].0
                ));
            }
        }
        let in_engine = file.starts_with(src.join("store").join("sqlite"));
        if !in_engine && text.contains("rusqlite") {
            faults.push(format!(
                "{}: names `rusqlite`; only store/sqlite/ knows the database engine",
                file.display()
            ));
        }
        let in_store = file.starts_with(src.join("store"));
        for engine_only in ["store::sqlite", "store::Connection", "store::Engine"] {
            if !in_store && text.contains(engine_only) {
                faults.push(format!(
                    "{}: names `{engine_only}`; above the store, only the handles and the \
                     queries (`Store`, `Db`, `Tx`, `Reads`, `Writes`) are used",
                    file.display()
                ));
            }
        }
        if module == "service" && text.contains("hyper") {
            faults.push(format!(
                "{}: a service names `hyper`; services return values and Problems",
                file.display()
            ));
        }
    }
    assert!(
        faults.is_empty(),
        "layer violations:\n{}",
        faults.join("\n")
    );
    // The check has something to check: every layer has files.
    for (layer, mods) in LAYERS {
        assert!(
            mods.iter().any(|m| modules_seen.iter().any(|s| s == m)),
            "no file of layer {layer}"
        );
    }
}

#[test]
fn the_path_reader_finds_grouped_and_nested_paths() {
    let text = "use crate::{App, problem::Problem};\nlet x = crate::store::Db::new(); // crate::api\nflowpack_receiver::api::x();\n";
    let names: Vec<String> = crate_paths(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["App", "problem", "store"]);
}
