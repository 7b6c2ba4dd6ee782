//! Sums up what a test run recorded with `FLOWPACK_OPENAPI_COVERAGE=DIR`: for each operation
//! of the OpenAPI document, the statuses whose answers were validated, and the operations
//! never answered with a success. Exits 1 when there is such an operation.
//!
//! ```text
//! FLOWPACK_OPENAPI_COVERAGE=/tmp/cov cargo nextest run --workspace
//! cargo run -p flowpack-testkit --bin openapi-coverage -- /tmp/cov
//! ```

use std::collections::{BTreeMap, BTreeSet};

use flowpack_testkit::openapi::{document, operations};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: openapi-coverage DIR"))?;
    let mut seen: BTreeMap<(String, String), BTreeMap<u16, u64>> = BTreeMap::new();
    let mut answers = 0u64;
    for entry in std::fs::read_dir(&dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            let mut f = line.split('\t');
            let (Some(m), Some(t), Some(st)) = (f.next(), f.next(), f.next()) else {
                anyhow::bail!("a line that is not METHOD<TAB>template<TAB>status: {line:?}");
            };
            *seen
                .entry((m.to_owned(), t.to_owned()))
                .or_default()
                .entry(st.parse()?)
                .or_default() += 1;
            answers += 1;
        }
    }
    let documented = operations(&document());
    let mut unsucceeded = BTreeSet::new();
    println!("{answers} answers validated");
    for op in &documented {
        let statuses = seen.get(op).cloned().unwrap_or_default();
        let list: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        println!("{} {}: {}", op.0, op.1, list.join(" "));
        if !statuses.keys().any(|s| (200..300).contains(s)) {
            unsucceeded.insert(op.clone());
        }
    }
    for (op, statuses) in &seen {
        if !documented.contains(op) {
            println!("(not an operation) {} {}: {statuses:?}", op.0, op.1);
        }
    }
    if unsucceeded.is_empty() {
        println!("every documented operation was answered with a success");
        Ok(())
    } else {
        for (m, t) in &unsucceeded {
            println!("never answered with a success: {m} {t}");
        }
        std::process::exit(1)
    }
}
