//! The manual pages in `man/` are what the binaries generate from their command-line
//! definitions today (`flowpack man --dir DIR`, `flowpack-receiver man --dir DIR`), one per
//! command and subcommand, so they cannot fall behind a changed option or a new subcommand.
//! Regenerate them with `man/generate.sh`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use flowpack_e2e::*;
use flowpack_testkit::process::bin;

/// The `*.1` files of `dir`, by name.
fn pages(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".1"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn man_pages_in_the_repository_are_what_the_binaries_generate() {
    let tmp = tempfile::tempdir().unwrap();
    for b in ["flowpack", "flowpack-receiver"] {
        ok(Command::new(bin(b)).args(["man", "--dir"]).arg(tmp.path()));
    }
    let fresh = pages(tmp.path());
    // Every command and subcommand has its page, examples included.
    for name in [
        "flowpack.1",
        "flowpack-package.1",
        "flowpack-deploy.1",
        "flowpack-man.1",
        "flowpack-receiver.1",
        "flowpack-receiver-serve.1",
        "flowpack-receiver-trust-add.1",
        "flowpack-receiver-token-create.1",
    ] {
        let page = fresh
            .get(name)
            .unwrap_or_else(|| panic!("no {name} among {:?}", fresh.keys()));
        if name != "flowpack.1" && name != "flowpack-receiver.1" {
            assert!(contains(page, b"Examples:"), "{name} has no examples");
        }
    }
    let kept = pages(&root().join("man"));
    let stale: std::collections::BTreeSet<&String> = fresh
        .keys()
        .chain(kept.keys())
        .filter(|n| fresh.get(*n) != kept.get(*n))
        .collect();
    assert!(
        stale.is_empty(),
        "man/ is out of date with the command-line definitions ({stale:?} differ, are missing \
         or are left over); regenerate with man/generate.sh"
    );
}

/// The subcommands `--help` lists under `Commands:` (less `help`).
fn subcommands(b: &str, path: &[String]) -> Vec<String> {
    let out = ok(Command::new(bin(b)).args(path).arg("--help"));
    let Some((_, list)) = out.split_once("Commands:\n") else {
        return Vec::new();
    };
    // A name is indented by two spaces; a description wrapped onto the next line, by more.
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_subcommand_help_shows_examples() {
    for b in ["flowpack", "flowpack-receiver"] {
        // Every subcommand, at any depth (`trust add`), as the binary lists them.
        let mut todo: Vec<Vec<String>> = subcommands(b, &[]).into_iter().map(|s| vec![s]).collect();
        assert!(todo.len() >= 4, "{b}: {todo:?}");
        while let Some(path) = todo.pop() {
            for sub in subcommands(b, &path) {
                let mut deeper = path.clone();
                deeper.push(sub);
                todo.push(deeper);
            }
            let out = ok(Command::new(bin(b)).args(&path).arg("--help"));
            let examples = out
                .split_once("Examples:\n")
                .map(|(_, e)| e)
                .unwrap_or_else(|| {
                    panic!("{b} {} --help shows no examples:\n{out}", path.join(" "))
                });
            assert!(
                examples.lines().any(|l| l.contains(b)),
                "{b} {}: the examples do not run {b}:\n{examples}",
                path.join(" ")
            );
        }
    }
}
