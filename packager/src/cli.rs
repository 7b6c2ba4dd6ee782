//! The command line, as clap derive types: what each subcommand takes.
//!
//! Values with a syntax (container paths, recipients, durations) are parsed here, so a bad one is
//! a usage error (exit 2) and the commands only ever see checked values.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use flowpack_shared::names::ContainerPath;
use flowpack_shared::seal::SealingRecipient;

/// flowpack: bundle integration mappings with their credentials into signed bundles, and deploy
/// them to a flowpack receiver.
#[derive(Debug, Parser)]
#[command(
    name = "flowpack",
    version,
    about,
    max_term_width = 100,
    after_help = EXIT_STATUS
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What the exit status tells a script.
const EXIT_STATUS: &str = "\
Exit status:
  0  success
  1  failure, with a one-line reason on standard error
  2  usage error (a bad option or value)
  3  the receiver could not be reached, or did not answer within --timeout
  4  the receiver refused the token (401) or its grants (403)
  5  conflict (409): a stale bundle, a bundle id already used, a credential in use
  6  deploy --dry-run and diff: the plan has changes (0: it has none)
With --json, a failure of a command that talks to a receiver prints the problem document
(application/problem+json) on standard output.

Environment:
  FLOWPACK_SERVER   stands for --server
  FLOWPACK_CA_CERT  stands for --ca-cert
  FLOWPACK_TOKEN    the bearer token (when no --token-file is given)";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an Ed25519 signing key: KEY (mode 0600) and KEY.pub; prints the key id.
    #[command(after_help = EX_KEYGEN)]
    Keygen(KeygenArgs),
    /// Package every *.mapping.json and *.credential.json found under DIR into a signed bundle.
    #[command(after_help = EX_PACKAGE)]
    Package(PackageArgs),
    /// Package credential files alone into a standalone credential bundle.
    #[command(after_help = EX_PACKAGE_CREDENTIALS)]
    PackageCredentials(PackageCredentialsArgs),
    /// Show what a bundle holds (never a secret value; control characters in its text are
    /// shown escaped, as \u{1b}).
    #[command(after_help = EX_INSPECT)]
    Inspect(InspectArgs),
    /// Verify a bundle fully: signature, trust, times, every entry's digest and record.
    #[command(after_help = EX_VERIFY)]
    Verify(VerifyArgs),
    /// Upload a bundle to a receiver (POST /v1/deployments). Safe to retry: a bundle applied
    /// already is answered as a replay and changes nothing.
    #[command(after_help = EX_DEPLOY)]
    Deploy(DeployArgs),
    /// Show what deploying a bundle would change on a receiver, object by object, without
    /// changing anything (the same as deploy --dry-run). Exit status 0: no changes, 6: changes.
    #[command(after_help = EX_DIFF)]
    Diff(DiffArgs),
    /// Put back what a deployment left on a receiver (mappings and credentials as it wrote
    /// them), as a new deployment that can itself be rolled back.
    #[command(after_help = EX_ROLLBACK)]
    Rollback(RollbackArgs),
    /// List a container of a receiver: its containers, mappings and credentials.
    #[command(after_help = EX_LS)]
    Ls(LsArgs),
    /// Show a mapping or a credential of a receiver (credentials redacted, as the receiver
    /// shows them).
    #[command(after_help = EX_GET)]
    Get(GetArgs),
    /// Show a receiver's audit trail, newest first.
    #[command(after_help = EX_AUDIT)]
    Audit(ListArgs),
    /// Show a receiver's deployment history, newest first.
    #[command(after_help = EX_HISTORY)]
    History(ListArgs),
    /// Print a shell completion script.
    #[command(after_help = EX_COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on standard output, or write one per command to a
    /// directory.
    #[command(after_help = EX_MAN)]
    Man(ManArgs),
}

// Examples shown after each subcommand's help and in its manual page.
const EX_KEYGEN: &str = "Examples:
  flowpack keygen -o ~/.flowpack/signer.key
  # then, on the receiver: trust the public half
  flowpack-receiver trust add signer.key.pub --data-dir /var/lib/flowpack --containers /public";

const EX_PACKAGE: &str = "Examples:
  flowpack package ./orders -k signer.key -c /public/orders \\
      --seal-to-server https://receiver.example.com:8443 -o orders.fpk
  flowpack package ./orders -k signer.key -c /public/orders --env prod \\
      --seal-to age1… --seal-to age1… --expires 2w -o orders.fpk
  flowpack package ./orders -k signer.key -c /public/orders --seal-to age1… -o - \\
      | flowpack verify - --trust signer.key.pub";

const EX_PACKAGE_CREDENTIALS: &str = "Examples:
  flowpack package-credentials erp.credential.json crm.credential.json -k signer.key \\
      -c /public/orders --env prod --seal-to age1… -o creds.fpk
  flowpack package-credentials erp.credential.json -k signer.key -c /public/orders \\
      --seal-to age1… --expires 30m -o - > creds.fpk";

const EX_INSPECT: &str = "Examples:
  flowpack inspect orders.fpk --trust signer.key.pub
  flowpack inspect orders.fpk --json | jq '.credentials[] | {name, secrets}'
  flowpack inspect - < orders.fpk";

const EX_VERIFY: &str = "Examples:
  flowpack verify orders.fpk --trust signer.key.pub
  flowpack verify orders.fpk --trust alice.pub bob.pub --json
  curl -sf https://artifacts.example.com/orders.fpk | flowpack verify - --trust signer.key.pub";

const EX_DEPLOY: &str = "Examples:
  flowpack deploy orders.fpk --server https://receiver.example.com:8443 --token-file token
  FLOWPACK_SERVER=https://receiver.example.com:8443 FLOWPACK_CA_CERT=ca.pem \\
      FLOWPACK_TOKEN=$TOKEN flowpack deploy orders.fpk --verify --retries 3 --json
  vault read -field=token secret/flowpack | flowpack deploy orders.fpk --server https://receiver.example.com:8443
  flowpack deploy orders.fpk --dry-run --token-file token   # the plan; exit 6 when it changes something";

const EX_DIFF: &str = "Examples:
  flowpack diff orders.fpk --server https://receiver.example.com:8443 --token-file token
  flowpack diff orders.fpk --json > plan.json; [ $? -eq 6 ] && echo \"changes planned\"";

const EX_ROLLBACK: &str = "Examples:
  flowpack history --container /public/orders --limit 5   # find the deployment's id
  flowpack rollback 41 --server https://receiver.example.com:8443 --token-file token";

const EX_LS: &str = "Examples:
  flowpack ls / --server https://receiver.example.com:8443 --token-file token
  flowpack ls /public/orders --json";

const EX_GET: &str = "Examples:
  flowpack get /public/orders/erp --server https://receiver.example.com:8443 --token-file token
  flowpack get /public/orders/orders-to-erp --kind mapping --json";

const EX_AUDIT: &str = "Examples:
  flowpack audit --server https://receiver.example.com:8443 --token-file token
  flowpack audit --container /public/orders --limit 20 --json
  flowpack audit --before 120";

const EX_HISTORY: &str = "Examples:
  flowpack history --server https://receiver.example.com:8443 --token-file token
  flowpack history --container /public/orders --limit 5 --json";

const EX_COMPLETIONS: &str = "Examples:
  flowpack completions bash > /etc/bash_completion.d/flowpack
  flowpack completions zsh > ~/.zfunc/_flowpack
  flowpack completions fish > ~/.config/fish/completions/flowpack.fish";

const EX_MAN: &str = "Examples:
  flowpack man | man -l -
  flowpack man --dir man/   # flowpack.1 and one page per subcommand";

/// `flowpack keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes to the same path plus `.pub`.
    #[arg(short = 'o', long = "output", value_name = "KEY")]
    pub output: PathBuf,
    /// Overwrite KEY and KEY.pub if they exist.
    #[arg(long)]
    pub force: bool,
}

/// Options shared by `package` and `package-credentials`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The Ed25519 signing key (PEM PKCS#8, as `flowpack keygen` or `openssl genpkey` write it).
    #[arg(short = 'k', long = "key", value_name = "KEY")]
    pub key: PathBuf,
    /// The target container on the receiver, e.g. /public/orders.
    #[arg(short = 'c', long = "container", value_name = "CONTAINER", value_parser = parse_container)]
    pub container: ContainerPath,
    /// The environment to apply to credentials that define environments.
    #[arg(long = "env", value_name = "NAME")]
    pub env: Option<String>,
    /// Seal secrets to this receiver's recipient (age1…, from `GET /v1/keys`). Give it several
    /// times to seal to several receivers: any of them can open the bundle.
    #[arg(long = "seal-to", value_name = "RECIPIENT", value_parser = parse_recipient)]
    pub seal_to: Vec<SealingRecipient>,
    /// Seal secrets to the recipient this receiver publishes at GET /v1/keys, fetched over
    /// https:// (plain http:// only to a loopback address).
    #[arg(
        long = "seal-to-server",
        value_name = "URL",
        conflicts_with = "seal_to"
    )]
    pub seal_to_server: Option<String>,
    /// Trust this CA certificate (PEM) for --seal-to-server's TLS certificate.
    #[arg(long = "ca-cert", value_name = "PEM", env = "FLOWPACK_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Write the secrets of credentials with include_in_deployment set in clear (not sealed).
    #[arg(long = "plaintext-secrets")]
    pub plaintext_secrets: bool,
    /// How long the bundle stays valid: a number and a unit, e.g. 30m, 12h, 7d, 2w or 1h30m
    /// (units s, m, h, d, w, M for 30.44 days, y for 365.25 days); from 1m to 3650d (ten years).
    #[arg(long = "expires", value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub expires: time::Duration,
    /// The bundle file to write (.fpk), or - for standard output (refused when it is a
    /// terminal; the summary then goes to standard error).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
}

/// `flowpack package`.
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// The project directory, searched recursively. A symbolic link anywhere below DIR (to a
    /// file or a directory) is refused, naming it: nothing is read through a link. DIR itself
    /// may be a link.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Key, container, sealing and output options.
    #[command(flatten)]
    pub bundle: BundleArgs,
}

/// `flowpack package-credentials`.
#[derive(Debug, Args)]
pub struct PackageCredentialsArgs {
    /// Credential files (*.credential.json). A FILE that is itself a symbolic link is refused
    /// (the directories on the way to it may be links).
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Key, container, sealing and output options.
    #[command(flatten)]
    pub bundle: BundleArgs,
}

/// `flowpack inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle, or - to read it from standard input.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Public keys to verify the signature with (PEM); without, the signature is not verified.
    #[arg(long = "trust", value_name = "PUB", num_args = 1..)]
    pub trust: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `flowpack verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle, or - to read it from standard input.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Trusted signer public keys (PEM), for every container.
    #[arg(long = "trust", value_name = "PUB", num_args = 1.., required = true)]
    pub trust: Vec<PathBuf>,
    /// Print {"valid", "code", "detail", "bundle_id"} as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How to reach a receiver: shared by every command that talks to one.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The receiver's base URL, e.g. https://receiver.example.com:8443.
    // The text is the option's --help, printed as written: a plain URL, not a Markdown link.
    #[allow(rustdoc::bare_urls)]
    #[arg(long = "server", value_name = "URL", env = "FLOWPACK_SERVER")]
    pub server: String,
    /// A file holding the bearer token (else FLOWPACK_TOKEN, else standard input).
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for the receiver's TLS certificate.
    #[arg(long = "ca-cert", value_name = "PEM", env = "FLOWPACK_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Give up when the receiver cannot be connected to, or sends no byte of its answer, for
    /// this long: a number and a unit, e.g. 30s, 2m or 1m30s; from 1s to 1h.
    #[arg(long = "timeout", value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
    /// Try again up to N times (0 to 10) when the receiver cannot be reached or answers 502,
    /// 503 or 504, waiting 1 s, 2 s, 4 s … (at most 16 s) between tries.
    #[arg(long = "retries", value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,
    /// Print the answer as JSON; a failure prints the problem document on standard output.
    #[arg(long)]
    pub json: bool,
}

/// `flowpack deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The bundle.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// The receiver, token, TLS, timeout and retries.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Have the receiver verify every credential that carries secrets (a token request, a
    /// request to its verify_url, a connection to its database) and refuse the whole bundle
    /// if one fails.
    #[arg(long, conflicts_with = "dry_run")]
    pub verify: bool,
    /// Change nothing: have the receiver check the bundle exactly as for a deploy and print
    /// the plan of what the deploy would change (exit status 0: no changes, 6: changes).
    #[arg(long = "dry-run")]
    pub dry_run: bool,
}

/// `flowpack diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The bundle.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// The receiver, token, TLS, timeout and retries.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `flowpack rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The deployment whose objects to put back (an id from `flowpack history`).
    #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// The receiver, token, TLS, timeout and retries.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `flowpack ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The container, e.g. /public/orders (/ for the root).
    #[arg(value_name = "PATH", value_parser = parse_container)]
    pub path: ContainerPath,
    /// The receiver, token, TLS, timeout and retries.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `flowpack get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The object: its container's path, then its name, e.g. /public/orders/erp.
    #[arg(value_name = "PATH", value_parser = parse_object)]
    pub path: ContainerPath,
    /// Which kind of object: needed only when a mapping and a credential share the path.
    #[arg(long = "kind", value_name = "KIND")]
    pub kind: Option<ObjectKind>,
    /// The receiver, token, TLS, timeout and retries.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A mapping or a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectKind {
    /// A mapping.
    Mapping,
    /// A credential.
    Credential,
}

/// `flowpack audit` and `flowpack history`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this container (exactly).
    #[arg(long = "container", value_name = "PATH", value_parser = parse_container)]
    pub container: Option<ContainerPath>,
    /// How many rows, newest first (1 to 1000).
    #[arg(long = "limit", value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Rows older than this id (the `next` of a previous page).
    #[arg(long = "before", value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub before: Option<u64>,
    /// The receiver, token, TLS, timeout and retries.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `flowpack man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write flowpack.1 and a page per subcommand (flowpack-package.1, …) into DIR instead.
    #[arg(long = "dir", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `flowpack completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// A command-line value found bad after parsing; `main` reports it as clap does, exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn parse_container(s: &str) -> Result<ContainerPath, String> {
    ContainerPath::parse(s).map_err(|e| e.to_string())
}

/// An object path: a container path with at least one segment (its last is the name).
fn parse_object(s: &str) -> Result<ContainerPath, String> {
    let p = ContainerPath::parse(s).map_err(|e| e.to_string())?;
    if p.is_root() {
        return Err("expected CONTAINER/NAME, e.g. /public/orders/erp".into());
    }
    Ok(p)
}

/// `--timeout`: a duration from 1 s to 1 h (clap names the option and shows the value).
fn parse_timeout(s: &str) -> Result<std::time::Duration, flowpack_shared::timefmt::DurationError> {
    use std::time::Duration;
    flowpack_shared::timefmt::parse_duration_within(
        s,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    )
}

fn parse_recipient(s: &str) -> Result<SealingRecipient, String> {
    SealingRecipient::parse(s).map_err(|e| e.to_string())
}

/// clap shows the value and names `--expires` itself (`invalid value '7x' for '--expires
/// <DURATION>': …`) and exits 2.
fn parse_duration(s: &str) -> Result<time::Duration, flowpack_shared::timefmt::DurationError> {
    flowpack_shared::timefmt::parse_duration(s)
}
