//! The helper program of `bench/run.sh`: deterministic corpora, a concurrent deploy client,
//! `wrk` output parsing, and the markdown report.
//!
//! It is a standalone crate with no dependencies, so that the benchmark needs nothing beyond the
//! toolchain and the peers that `run.sh` installs. Every corpus is a pure function of its
//! parameters and the seed: the same command writes the same bytes on any machine.

#![forbid(unsafe_code)]

mod corpus;
mod load;
mod report;

use std::collections::HashMap;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  flowpack-bench project --dir D --bytes N --files N --mappings N --credentials N [--seed S]
  flowpack-bench small   --dir D --files N --size N --mappings N [--seed S]
  flowpack-bench creds   --dir D --count N --prefix P [--secrets] [--seed S]
  flowpack-bench load    --url URL[,URL…] --token-file F --dir D
  flowpack-bench wrk-parse FILE
  flowpack-bench report  --results TSV --machine FILE --title TEXT
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let opts = match Opts::parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("flowpack-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "project" => corpus::project(&opts),
        "small" => corpus::small(&opts),
        "creds" => corpus::creds(&opts),
        "load" => load::run(&opts),
        "wrk-parse" => report::wrk_parse(&opts),
        "report" => report::report(&opts),
        _ => Err(format!("unknown command {cmd:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowpack-bench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` pairs, `--flag` switches and positional arguments.
#[derive(Debug, Default)]
pub struct Opts {
    values: HashMap<String, String>,
    flags: Vec<String>,
    /// Arguments that are not options.
    pub positional: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        const FLAGS: &[&str] = &["secrets"];
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if FLAGS.contains(&name) {
                    o.flags.push(name.to_owned());
                } else {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    o.values.insert(name.to_owned(), v.clone());
                }
            } else {
                o.positional.push(a.clone());
            }
        }
        Ok(o)
    }

    /// A required string option.
    pub fn str(&self, name: &str) -> Result<&str, String> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required"))
    }

    /// A required number option.
    pub fn num(&self, name: &str) -> Result<u64, String> {
        let v = self.str(name)?;
        v.parse()
            .map_err(|_| format!("--{name}: not a number: {v:?}"))
    }

    /// A number option with a default.
    pub fn num_or(&self, name: &str, default: u64) -> Result<u64, String> {
        if self.values.contains_key(name) {
            self.num(name)
        } else {
            Ok(default)
        }
    }

    /// Whether a switch was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}
