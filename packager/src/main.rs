//! `flowpack`, the design-time packager: keys, bundles, inspection, verification and deploys.
//!
//! `main` is thin: it parses the command line (clap exits 2 on a usage error), runs the command,
//! and turns any failure into one line `flowpack: <reason chain>` on stderr and exit status 1.
//! That line may quote untrusted text (a bundle's entry names, a project's file names), so its
//! control characters are escaped (`text::Escaped`): it cannot move the cursor or add a line.

#![forbid(unsafe_code)]

/// Prints a line on stdout, returning the error (a closed pipe ends the program quietly, see
/// `main`) instead of panicking as `println!` does.
macro_rules! outln {
    ($($arg:tt)*) => {
        crate::stdout_line(format_args!($($arg)*))?
    };
}

/// Prints a line on stderr, ignoring failure (a closed stderr must not panic as `eprintln!`
/// does: a warning is not worth dying for).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod client;
mod deploy;
mod inspect;
mod keyfile;
mod package;
mod progress;
mod project;
mod remote;
mod text;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};

use cli::{Cli, Command};

fn main() -> ExitCode {
    // reqwest is built without a rustls provider (PITFALLS.md): install ring's before any TLS.
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(failure) = e.downcast_ref::<client::Failure>() {
                // A script reads the problem document on stdout, and the kind in the status.
                if failure.json {
                    let doc = serde_json::to_string_pretty(&failure.problem).unwrap_or_default();
                    let _ = writeln!(std::io::stdout(), "{}", text::json_safe(&doc));
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "flowpack: {}",
                    text::Escaped(&failure.line)
                );
                return ExitCode::from(failure.kind.exit_status());
            }
            if e.downcast_ref::<deploy::PlanHasChanges>().is_some() {
                // The plan is printed; the status says it has changes (as `diff` does).
                return ExitCode::from(6);
            }
            if let Some(usage) = e.downcast_ref::<cli::UsageError>() {
                // Found after parsing, still the command line's fault: clap's format, exit 2.
                Cli::command()
                    .error(clap::error::ErrorKind::ValueValidation, &usage.0)
                    .exit();
            }
            let line = format!("{e:#}").replace(['\n', '\r', '\t'], " ");
            let _ = writeln!(std::io::stderr(), "flowpack: {}", text::Escaped(&line));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen(a) => keyfile::keygen(&a),
        Command::Package(a) => package::package(&a),
        Command::PackageCredentials(a) => package::package_credentials(&a),
        Command::Inspect(a) => inspect::inspect(&a),
        Command::Verify(a) => inspect::verify(&a),
        Command::Deploy(a) => deploy::deploy(&a),
        Command::Diff(a) => deploy::diff(&a),
        Command::Rollback(a) => deploy::rollback(&a),
        Command::Ls(a) => remote::ls(&a),
        Command::Get(a) => remote::get(&a),
        Command::Audit(a) => remote::audit(&a),
        Command::History(a) => remote::history(&a),
        Command::Completions(a) => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(a.shell, &mut Cli::command(), "flowpack", &mut out);
            out.flush()?;
            Ok(())
        }
        Command::Man(a) => match a.dir {
            // One page per command, named as `man` looks them up (flowpack-package.1): what
            // man/ in the repository holds, and how it is regenerated.
            Some(dir) => clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing manual pages in {}", text::path(&dir))),
            None => {
                let mut out = std::io::stdout().lock();
                clap_mangen::Man::new(Cli::command()).render(&mut out)?;
                out.flush()?;
                Ok(())
            }
        },
    }
}

/// Writes one line to stdout.
fn stdout_line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")
}

/// True when the failure is stdout closed by its reader (`flowpack man | head`): not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
