//! `wrk-parse` and `report`: turn raw measurements into the markdown section of
//! `docs/PERFORMANCE.md`.
//!
//! `run.sh` records every measurement as one line `metric<TAB>variant<TAB>rep<TAB>value` in a
//! results file; the report takes medians per (metric, variant), computes the ratios that the
//! targets of the benchmark issue are stated in, and says for each whether it is met.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;

use crate::Opts;

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`, `1.00m`) in milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let units = [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)];
    units.iter().find_map(|(u, f)| {
        s.strip_suffix(u)
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n * f)
    })
}

/// `wrk-parse FILE`: prints `rps= avg_ms= p50_ms= p99_ms= non2xx= errors=` from `wrk --latency`.
pub fn wrk_parse(o: &Opts) -> Result<(), String> {
    let file = o.positional.first().ok_or("wrk-parse FILE")?;
    let text = fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let (mut rps, mut avg, mut p50, mut p99, mut non2xx, mut errors) =
        (None, None, None, None, 0u64, 0u64);
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            ["Latency", a, ..] => avg = wrk_ms(a),
            ["50%", v] => p50 = wrk_ms(v),
            ["99%", v] => p99 = wrk_ms(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => non2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                errors = rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let rps = rps.ok_or_else(|| format!("{file}: no Requests/sec line"))?;
    println!(
        "rps={rps:.1} avg_ms={:.3} p50_ms={:.3} p99_ms={:.3} non2xx={non2xx} errors={errors}",
        avg.unwrap_or(f64::NAN),
        p50.unwrap_or(f64::NAN),
        p99.unwrap_or(f64::NAN)
    );
    Ok(())
}

struct Results(BTreeMap<(String, String), Vec<(u64, f64)>>);

impl Results {
    fn load(path: &str) -> Result<Results, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let mut map: BTreeMap<(String, String), Vec<(u64, f64)>> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split('\t').collect();
            let [metric, variant, rep, value] = f.as_slice() else {
                return Err(format!("{path}:{}: expected 4 tab-separated fields", n + 1));
            };
            let rep = rep.parse().unwrap_or(0);
            let value: f64 = value
                .parse()
                .map_err(|_| format!("{path}:{}: bad value {value:?}", n + 1))?;
            map.entry(((*metric).to_owned(), (*variant).to_owned()))
                .or_default()
                .push((rep, value));
        }
        Ok(Results(map))
    }

    fn median(&self, metric: &str, variant: &str) -> Option<f64> {
        let v = self.0.get(&(metric.to_owned(), variant.to_owned()))?;
        let mut xs: Vec<f64> = v.iter().map(|(_, x)| *x).collect();
        xs.sort_by(f64::total_cmp);
        let n = xs.len();
        if n == 0 {
            None
        } else if n % 2 == 1 {
            Some(xs[n / 2])
        } else {
            Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0)
        }
    }
}

fn fmt(x: Option<f64>) -> String {
    match x {
        None => "—".into(),
        Some(v) if v.is_nan() => "—".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

enum Goal {
    RatioAtMost(f64),
    RatioAtLeast(f64),
    RatioWithin(f64, f64),
    ValueAtMost(f64),
    ValueAtLeast(f64),
    /// Reported beside another figure, with no target.
    Reported,
}

struct Row {
    what: &'static str,
    ours: Option<f64>,
    theirs: Option<f64>,
    goal: Goal,
}

/// `report --results TSV --machine FILE --title TEXT`: the markdown section, on stdout.
pub fn report(o: &Opts) -> Result<(), String> {
    let r = Results::load(o.str("results")?)?;
    let machine = fs::read_to_string(o.str("machine")?).map_err(|e| e.to_string())?;
    let title = o.str("title")?;
    let m = |metric: &str, variant: &str| r.median(metric, variant);
    let rows = [
        Row {
            what: "send L (s): `flowpack package --seal-to` vs zip -6 + sha256sum + openssl sign",
            ours: m("send_L", "flowpack"),
            theirs: m("send_L", "manual"),
            goal: Goal::RatioAtMost(0.5),
        },
        Row {
            what: "send S (s): the same on S (many 4 KiB files)",
            ours: m("send_S", "flowpack"),
            theirs: m("send_S", "manual"),
            goal: Goal::RatioAtMost(0.5),
        },
        Row {
            what: "receive L (s): `flowpack deploy` (upload + verify + apply, durable) vs curl → nginx + openssl verify + sha256sum -c + unzip",
            ours: m("recv_L", "flowpack"),
            theirs: m("recv_L", "manual"),
            goal: Goal::RatioAtMost(1.0),
        },
        Row {
            what: "receiver peak RSS after the L deploys (MiB)",
            ours: m("rss_mib", "receiver"),
            theirs: None,
            goal: Goal::ValueAtMost(64.0),
        },
        Row {
            what: "receiver peak RSS applying one 25,000-credential bundle, fresh receiver (MiB; bench/rss.sh)",
            ours: m("rss_mib", "receiver_apply_25k"),
            theirs: None,
            goal: Goal::ValueAtMost(64.0),
        },
        Row {
            what: "receiver peak RSS applying one 100,000-entry bundle (99,994 mapping files), fresh receiver (MiB; bench/rss.sh)",
            ours: m("rss_mib", "receiver_apply_100k_entries"),
            theirs: None,
            goal: Goal::ValueAtMost(64.0),
        },
        Row {
            what: "credential GET (req/s), wrk -t2 -c64, vs nginx serving a static 300-byte JSON file",
            ours: m("get_rps", "flowpack"),
            theirs: m("get_rps", "nginx"),
            goal: Goal::RatioAtLeast(0.5),
        },
        Row {
            what: "credential GET p99 (ms)",
            ours: m("get_p99_ms", "flowpack"),
            theirs: m("get_p99_ms", "nginx"),
            goal: Goal::ValueAtMost(5.0),
        },
        Row {
            what: "standalone credential deploys acknowledged per second, 32 clients",
            ours: m("deploy_rate", "flowpack"),
            theirs: None,
            goal: Goal::ValueAtLeast(500.0),
        },
        Row {
            what: "growth: package time per MiB, big vs small corpus (s/MiB)",
            ours: m("grow_pkg_s_per_mib", "big"),
            theirs: m("grow_pkg_s_per_mib", "small"),
            goal: Goal::RatioWithin(0.8, 1.2),
        },
        Row {
            what: "growth: GET p50 latency (ms), many vs few credentials in one container",
            ours: m("grow_get_p50_ms", "many"),
            theirs: m("grow_get_p50_ms", "few"),
            goal: Goal::RatioAtMost(1.5),
        },
        Row {
            what: "growth, the store's path (answer cache off): GET p50 latency (ms), many vs few credentials",
            ours: m("grow_get_p50_ms", "many_uncached"),
            theirs: m("grow_get_p50_ms", "few_uncached"),
            goal: Goal::RatioAtMost(1.5),
        },
        Row {
            what: "PostgreSQL store, two nodes: standalone credential deploys acknowledged per second, 32 clients (half to each node), vs the embedded store",
            ours: m("deploy_rate", "postgres"),
            theirs: m("deploy_rate", "flowpack"),
            goal: Goal::Reported,
        },
        Row {
            what: "PostgreSQL store: credential GET (req/s), wrk -t2 -c64, one node, vs the embedded store",
            ours: m("get_rps", "postgres"),
            theirs: m("get_rps", "flowpack"),
            goal: Goal::Reported,
        },
        Row {
            what: "PostgreSQL store: credential GET p99 (ms), vs the embedded store",
            ours: m("get_p99_ms", "postgres"),
            theirs: m("get_p99_ms", "flowpack"),
            goal: Goal::Reported,
        },
    ];
    let mut out = String::new();
    let w = &mut out;
    // Writing to a String cannot fail.
    let _ = writeln!(w, "\n## {title}\n\n{}", machine.trim_end());
    let _ = writeln!(
        w,
        "\n| target | flowpack | alternative | ratio | goal | met |\n|---|---:|---:|---:|---|---|"
    );
    let (mut missed, mut reported) = (0, 0);
    for row in &rows {
        let ratio = match (row.ours, row.theirs) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        let (goal, met) = match row.goal {
            Goal::RatioAtMost(g) => (format!("≤ {g}×"), ratio.map(|x| x <= g)),
            Goal::RatioAtLeast(g) => (format!("≥ {g}×"), ratio.map(|x| x >= g)),
            Goal::RatioWithin(lo, hi) => (
                format!("{lo}×–{hi}×"),
                ratio.map(|x| (lo..=hi).contains(&x)),
            ),
            Goal::ValueAtMost(g) => (format!("≤ {g}"), row.ours.map(|x| x <= g)),
            Goal::ValueAtLeast(g) => (format!("≥ {g}"), row.ours.map(|x| x >= g)),
            Goal::Reported => ("—".to_owned(), None),
        };
        let ratio_text = match (row.goal_is_ratio(), ratio) {
            (true, Some(x)) => format!("{x:.2}×"),
            (false, Some(x)) => format!("({x:.2}×)"),
            _ => "—".into(),
        };
        let met_text = match met {
            _ if matches!(row.goal, Goal::Reported) => {
                reported += 1;
                "(no target)"
            }
            Some(true) => "yes",
            Some(false) => {
                missed += 1;
                "**no**"
            }
            None => {
                missed += 1;
                "not measured"
            }
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {ratio_text} | {goal} | {met_text} |",
            row.what,
            fmt(row.ours),
            fmt(row.theirs)
        );
    }
    let _ = writeln!(
        w,
        "\n{} of {} targets met.\n\nEvery measurement (median of the repetitions; the values in run order):\n\n| metric | variant | median | values |\n|---|---|---:|---|",
        rows.len() - reported - missed,
        rows.len() - reported
    );
    for ((metric, variant), vals) in &r.0 {
        let list: Vec<String> = vals.iter().map(|(_, v)| fmt(Some(*v))).collect();
        let _ = writeln!(
            w,
            "| {metric} | {variant} | {} | {} |",
            fmt(r.median(metric, variant)),
            list.join(", ")
        );
    }
    print!("{out}");
    Ok(())
}

impl Row {
    fn goal_is_ratio(&self) -> bool {
        matches!(
            self.goal,
            Goal::RatioAtMost(_)
                | Goal::RatioAtLeast(_)
                | Goal::RatioWithin(..)
                | Goal::Reported
        )
    }
}
