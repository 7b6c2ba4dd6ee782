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
#[command(name = "flowpack", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an Ed25519 signing key: KEY (mode 0600) and KEY.pub; prints the key id.
    Keygen(KeygenArgs),
    /// Package every *.mapping.json and *.credential.json found under DIR into a signed bundle.
    Package(PackageArgs),
    /// Package credential files alone into a standalone credential bundle.
    PackageCredentials(PackageCredentialsArgs),
    /// Show what a bundle holds (never a secret value; control characters in its text are
    /// shown escaped, as \u{1b}).
    Inspect(InspectArgs),
    /// Verify a bundle fully: signature, trust, times, every entry's digest and record.
    Verify(VerifyArgs),
    /// Upload a bundle to a receiver (POST /v1/deployments).
    Deploy(DeployArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on standard output.
    Man,
}

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
    /// Seal secrets to this receiver's recipient (age1…, from `GET /v1/keys`).
    #[arg(long = "seal-to", value_name = "RECIPIENT", value_parser = parse_recipient)]
    pub seal_to: Option<SealingRecipient>,
    /// Write the secrets of credentials with include_in_deployment set in clear (not sealed).
    #[arg(long = "plaintext-secrets")]
    pub plaintext_secrets: bool,
    /// How long the bundle stays valid: a whole number and a unit, m (minutes), h (hours) or
    /// d (days), e.g. 30m, 12h or 7d; from 1m to 3650d (ten years).
    #[arg(long = "expires", value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub expires: time::Duration,
    /// The bundle file to write (.fpk).
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
    /// The bundle.
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
    /// The bundle.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Trusted signer public keys (PEM), for every container.
    #[arg(long = "trust", value_name = "PUB", num_args = 1.., required = true)]
    pub trust: Vec<PathBuf>,
    /// Print {"valid", "code", "detail", "bundle_id"} as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `flowpack deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The bundle.
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// The receiver's base URL, e.g. https://receiver.example.com:8443.
    #[arg(long = "server", value_name = "URL")]
    pub server: String,
    /// A file holding the bearer token (else FLOWPACK_TOKEN, else standard input).
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for the receiver's TLS certificate.
    #[arg(long = "ca-cert", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Have the receiver verify every credential that carries secrets (a token request, a
    /// request to its verify_url, a connection to its database) and refuse the whole bundle
    /// if one fails.
    #[arg(long)]
    pub verify: bool,
    /// Print the deployment record as JSON.
    #[arg(long)]
    pub json: bool,
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

fn parse_recipient(s: &str) -> Result<SealingRecipient, String> {
    SealingRecipient::parse(s).map_err(|e| e.to_string())
}

/// clap shows the value and names `--expires` itself (`invalid value '7w' for '--expires
/// <DURATION>': …`) and exits 2.
fn parse_duration(s: &str) -> Result<time::Duration, flowpack_shared::timefmt::DurationError> {
    flowpack_shared::timefmt::parse_duration(s)
}
