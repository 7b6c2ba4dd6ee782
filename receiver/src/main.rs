//! `flowpack-receiver`: the command line over the library.
//!
//! Exit status: 0 success, 1 failure (one line on stderr), 2 usage error (clap).

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use flowpack_receiver::config::{LogFormat, StoreKind, StoreUrl};
use flowpack_receiver::datadir::{self, DataDir};
use flowpack_receiver::reload::{self, Reloader, Settings};
use flowpack_receiver::{App, auth, logs, store::Store, tls};
use flowpack_shared::names::ContainerPath;

/// The most blocking threads the runtime starts (tokio's default is 512); see `serve`.
const BLOCKING_THREADS: usize = 32;

#[derive(Parser, Debug)]
#[command(
    name = "flowpack-receiver",
    version,
    about = "flowpack's bundle receiver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates a data directory: keys, database, configuration and an admin token.
    #[command(
        after_help = "Examples:\n  flowpack-receiver init --data-dir /var/lib/flowpack\n  # prints the sealing recipient (age1…, for flowpack package --seal-to) and an admin token\n  flowpack-receiver init --data-dir /var/lib/flowpack --store postgres://flowpack@db.internal/flowpack\n  flowpack-receiver init --data-dir /var/lib/flowpack-2 --join /var/lib/flowpack"
    )]
    Init {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Keep the store in this PostgreSQL database (postgres://user@host:port/database),
        /// which must hold no store yet; several receivers may then share it. The default is
        /// SQLite in the data directory.
        #[arg(long, conflicts_with = "join", value_name = "URL")]
        store: Option<String>,
        /// Make another node's data directory for the PostgreSQL store of data directory
        /// DIR: its key files and config.json are copied (never a second set of keys).
        #[arg(long, value_name = "DIR")]
        join: Option<PathBuf>,
    },
    /// Manages trusted signer keys: add, list, remove.
    #[command(
        after_help = "Examples:\n  flowpack-receiver trust add signer.key.pub --data-dir /var/lib/flowpack --containers /public\n  flowpack-receiver trust list --data-dir /var/lib/flowpack\n  flowpack-receiver trust remove 7ae14ee21833d49b --data-dir /var/lib/flowpack"
    )]
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Manages API tokens: create, list, revoke.
    #[command(
        after_help = "Examples:\n  flowpack-receiver token create ci --data-dir /var/lib/flowpack --grant /public=read,write --expires 90d\n  flowpack-receiver token list --data-dir /var/lib/flowpack\n  flowpack-receiver token revoke ci --data-dir /var/lib/flowpack"
    )]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Rotates a key: the sealing identity, or the at-rest key; works while serve runs.
    #[command(
        after_help = "Examples:\n  flowpack-receiver rotate sealing --data-dir /var/lib/flowpack --retire-after 7d\n  flowpack-receiver rotate at-rest --data-dir /var/lib/flowpack"
    )]
    Rotate {
        #[command(subcommand)]
        command: RotateCommand,
    },
    /// Writes a consistent backup of a data directory (store, keys, configuration) to one
    /// file (mode 0600), while serve runs.
    #[command(
        after_help = "Examples:\n  flowpack-receiver backup --data-dir /var/lib/flowpack -o /backups/flowpack-$(date +%F).tar\n  flowpack-receiver backup --data-dir /var/lib/flowpack -o flowpack.tar.age --encrypt-to age1…"
    )]
    Backup {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file to write; it must not exist.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Seals the backup to an age recipient (age1…); repeatable. The file is then a
        /// standard age file (`age -d -i KEY FILE | tar t`).
        #[arg(long = "encrypt-to", value_name = "RECIPIENT", value_parser = parse_age_recipient)]
        encrypt_to: Vec<age::x25519::Recipient>,
    },
    /// Makes a new data directory from a backup.
    #[command(
        after_help = "Examples:\n  flowpack-receiver restore /backups/flowpack-2026-11-30.tar --data-dir /var/lib/flowpack-new\n  flowpack-receiver restore flowpack.tar.age --data-dir ./restored --identity backup.agekey"
    )]
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The new data directory; it must not exist, or be empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// An age identity file that opens an encrypted backup.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Serves the HTTP API. Each flag overrides its key in the data directory's config.json;
    /// SIGHUP reloads config.json and the TLS certificate, SIGTERM stops after in-flight
    /// requests.
    #[command(
        after_help = "Examples:\n  flowpack-receiver serve --data-dir /var/lib/flowpack --listen 0.0.0.0:8443 \\\n      --tls-cert /etc/flowpack/cert.pem --tls-key /etc/flowpack/key.pem\n  flowpack-receiver serve --data-dir ./data   # http://127.0.0.1:7443, this machine only\n  FLOWPACK_LOG=debug flowpack-receiver serve --data-dir ./data"
    )]
    Serve {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on [default: config.json's `listen`, else 127.0.0.1:7443];
        /// without TLS only loopback addresses are allowed.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// TLS certificate chain (PEM) [default: config.json's `tls_cert`].
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM) [default: config.json's `tls_key`].
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Log lines as text or JSON objects [default: config.json's `log_format`, else text].
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Writes the manual pages: flowpack-receiver.1 and one per subcommand, into DIR.
    #[command(hide = true)]
    Man {
        /// The directory (the repository keeps them in man/).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum RotateCommand {
    /// Makes a new sealing identity; bundles sealed to the current one stay accepted until it
    /// retires.
    #[command(
        after_help = "Examples:\n  flowpack-receiver rotate sealing --data-dir /var/lib/flowpack --retire-after 2w\n  flowpack-receiver rotate sealing --data-dir /var/lib/flowpack --retire-after now   # a leaked key"
    )]
    Sealing {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// How long bundles sealed to the current identity stay accepted: a number and a unit,
        /// e.g. 12h, 7d or 2w, or `now` to refuse them at once (a leaked key).
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_retire_after)]
        retire_after: time::Duration,
    },
    /// Re-encrypts every stored secret under a new at-rest key, in one transaction.
    #[command(
        after_help = "Examples:\n  flowpack-receiver rotate at-rest --data-dir /var/lib/flowpack"
    )]
    AtRest {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TrustCommand {
    /// Trusts a signer's public key (PEM) for container prefixes (none: every container).
    #[command(
        after_help = "Examples:\n  flowpack-receiver trust add signer.key.pub --data-dir /var/lib/flowpack\n  flowpack-receiver trust add ci.pub --data-dir /var/lib/flowpack --containers /public/orders --containers /shared"
    )]
    Add {
        /// The public key file.
        public_key: PathBuf,
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// A container prefix the key may deploy to; repeatable.
        #[arg(long = "containers", value_parser = parse_container)]
        containers: Vec<ContainerPath>,
    },
    /// Lists the trusted keys: key id, the container prefixes each may deploy to, when added.
    #[command(
        after_help = "Examples:\n  flowpack-receiver trust list --data-dir /var/lib/flowpack\n  flowpack-receiver trust list --data-dir /var/lib/flowpack --json | jq -r '.signers[].key_id'"
    )]
    List {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Prints JSON: {"signers": [{"key_id", "containers", "added_at"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Stops trusting a key: its bundles are refused from the next deploy on.
    #[command(
        after_help = "Examples:\n  flowpack-receiver trust remove 7ae14ee21833d49b --data-dir /var/lib/flowpack"
    )]
    Remove {
        /// The key id (16 hex digits, as `trust add` and `trust list` print it).
        key_id: String,
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Issues a token for a principal (created if new), adding the grants given.
    #[command(
        after_help = "Examples:\n  flowpack-receiver token create ci --data-dir /var/lib/flowpack --grant /public/orders=write --expires 2w\n  flowpack-receiver token create ops --data-dir /var/lib/flowpack --grant /=read --grant /public=read,write,use"
    )]
    Create {
        /// The principal's name.
        name: String,
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// PREFIX=read,write,use; repeatable.
        #[arg(long = "grant", value_parser = parse_grant)]
        grants: Vec<(ContainerPath, auth::PermSet)>,
        /// How long the token is accepted: a number and a unit, e.g. 30m, 12h, 90d or 2w;
        /// from 1m to 3650d. Without it: until revoked.
        #[arg(long = "expires", value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<time::Duration>,
    },
    /// Lists the tokens: principal, token id, grants, created, expires, last used (to the
    /// minute); never a secret.
    #[command(
        after_help = "Examples:\n  flowpack-receiver token list --data-dir /var/lib/flowpack\n  flowpack-receiver token list --data-dir /var/lib/flowpack --json | jq '.tokens[] | select(.expired)'"
    )]
    List {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Prints JSON: {"tokens": [{"id", "principal", "grants", "created_at",
        /// "expires_at", "expired", "last_used_at"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a token by its id, or every token of a principal by its name; refused from the
    /// next request on.
    #[command(
        after_help = "Examples:\n  flowpack-receiver token revoke 0123456789abcdef --data-dir /var/lib/flowpack   # one token, by id\n  flowpack-receiver token revoke ci --data-dir /var/lib/flowpack                 # every token of ci"
    )]
    Revoke {
        /// A token id (the 16 hex digits after `fpt_`) or a principal's name.
        id_or_name: String,
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn parse_container(s: &str) -> Result<ContainerPath, String> {
    ContainerPath::parse(s).map_err(|e| e.0)
}

fn parse_grant(s: &str) -> Result<(ContainerPath, auth::PermSet), String> {
    auth::parse_grant(s)
}

/// clap shows the value and names `--expires` itself, and exits 2.
fn parse_duration(s: &str) -> Result<time::Duration, flowpack_shared::timefmt::DurationError> {
    flowpack_shared::timefmt::parse_duration(s)
}

/// `now`, or a duration as `--expires` takes it.
fn parse_retire_after(s: &str) -> Result<time::Duration, String> {
    if s == "now" {
        return Ok(time::Duration::ZERO);
    }
    flowpack_shared::timefmt::parse_duration(s).map_err(|e| format!("{e}, or `now`"))
}

fn parse_age_recipient(s: &str) -> Result<age::x25519::Recipient, String> {
    s.parse::<age::x25519::Recipient>()
        .map_err(|e| format!("not an age X25519 recipient (age1…): {e}"))
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
        eprintln!("flowpack-receiver: {}", chain.join(": "));
        std::process::exit(1);
    }
}

fn print_line(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")?;
    out.flush()?;
    Ok(())
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            store,
            join: None,
        } => {
            let store = match store {
                None => StoreKind::Sqlite,
                Some(url) => StoreUrl::postgres(&url).map(StoreKind::Postgres).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--store: not a PostgreSQL URL (postgres://user@host:port/database; its value is not shown)"
                    )
                })?,
            };
            let done = datadir::init_with(&DataDir::new(data_dir), &store)?;
            print_line(&format!("sealing_recipient: {}", done.sealing_recipient))?;
            print_line(&format!("admin_token: {}", done.admin_token.as_str()))?;
            Ok(())
        }
        Command::Init {
            data_dir,
            join: Some(from),
            ..
        } => {
            let recipient = datadir::join(&DataDir::new(data_dir), &DataDir::new(from))?;
            print_line(&format!("sealing_recipient: {recipient}"))?;
            Ok(())
        }
        Command::Trust { command } => trust(command),
        Command::Rotate { command } => rotate(command),
        Command::Backup {
            data_dir,
            output,
            encrypt_to,
        } => {
            let done = flowpack_receiver::backup::backup(
                &DataDir::new(data_dir),
                &output,
                &encrypt_to,
                flowpack_shared::timefmt::Timestamp::now(),
            )?;
            print_line(&format!(
                "wrote {} ({} bytes{}); sealing_recipient: {}",
                done.path.display(),
                done.size,
                if done.encrypted {
                    ", age-encrypted"
                } else {
                    ""
                },
                done.sealing_recipient
            ))
        }
        Command::Restore {
            file,
            data_dir,
            identity,
        } => {
            let done = flowpack_receiver::backup::restore(
                &file,
                &DataDir::new(&data_dir),
                identity.as_deref(),
            )?;
            print_line(&format!(
                "restored {} from the backup taken at {}; sealing_recipient: {}",
                data_dir.display(),
                done.created_at,
                done.sealing_recipient
            ))
        }
        Command::Token { command } => token(command),
        Command::Serve {
            data_dir,
            listen,
            tls_cert,
            tls_key,
            log_format,
        } => serve(
            data_dir,
            reload::Flags {
                listen,
                tls: tls_cert.zip(tls_key),
                log_format,
            },
        ),
        Command::Man { dir } => {
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("writing manual pages in {}", dir.display()))
        }
    }
}

fn rotate(command: RotateCommand) -> anyhow::Result<()> {
    use flowpack_receiver::rotate;
    match command {
        RotateCommand::Sealing {
            data_dir,
            retire_after,
        } => {
            let done = rotate::rotate_sealing(
                &DataDir::new(data_dir),
                flowpack_shared::timefmt::Timestamp::now(),
                retire_after,
            )?;
            let mut lines = vec![format!("sealing_recipient: {}", done.recipient)];
            for (recipient, at) in &done.previous {
                lines.push(format!("previous: {recipient} (accepted until {at})"));
            }
            for recipient in &done.retired {
                lines.push(format!("retired: {recipient}"));
            }
            print_line(&lines.join("\n"))
        }
        RotateCommand::AtRest { data_dir } => {
            let done = rotate::rotate_at_rest(&DataDir::new(data_dir))?;
            print_line(&format!(
                "re-encrypted {} stored value{} under at-rest key {} (was {})",
                done.values,
                if done.values == 1 { "" } else { "s" },
                done.new_id,
                done.old_id
            ))?;
            if !done.wal_truncated {
                eprintln!(
                    "flowpack-receiver: warning: a reader kept the write-ahead log from being emptied; ciphertext from before the rotation stays in store.db-wal until it is reused"
                );
            }
            Ok(())
        }
    }
}

fn trust(command: TrustCommand) -> anyhow::Result<()> {
    match command {
        TrustCommand::Add {
            public_key,
            data_dir,
            containers,
        } => {
            let pem = std::fs::read_to_string(&public_key)
                .with_context(|| format!("reading {}", public_key.display()))?;
            let store = open_store(&data_dir)?;
            let id = flowpack_receiver::trust_signer(&store, &pem, &containers)
                .with_context(|| public_key.display().to_string())?;
            let list = if containers.is_empty() {
                "/".to_owned()
            } else {
                containers
                    .iter()
                    .map(ContainerPath::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            print_line(&format!("trusted signer {id} for {list}"))
        }
        TrustCommand::List { data_dir, json } => {
            let store = open_store(&data_dir)?;
            let signers = store.db()?.signers()?;
            let rows: Vec<(String, Vec<String>, String)> = signers
                .into_iter()
                .map(|s| {
                    // Written by `trust add` as a JSON array of paths.
                    let containers = serde_json::from_str(&s.containers).unwrap_or_default();
                    (s.key_id, containers, s.added_at)
                })
                .collect();
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(key_id, containers, added_at)| {
                        serde_json::json!({
                            "key_id": key_id,
                            "containers": containers,
                            "added_at": added_at,
                        })
                    })
                    .collect();
                return print_line(&serde_json::json!({ "signers": list }).to_string());
            }
            let table: Vec<[String; 3]> = rows
                .into_iter()
                .map(|(key_id, containers, added_at)| [key_id, added_at, containers.join(",")])
                .collect();
            print_table(&["KEY ID", "ADDED", "CONTAINERS"], &table)
        }
        TrustCommand::Remove { key_id, data_dir } => {
            let store = open_store(&data_dir)?;
            let mut db = store.db()?;
            let tx = db.write()?;
            let removed = tx.delete_signer(&key_id)?;
            tx.commit()?;
            if !removed {
                bail!("no trusted signer has key id {key_id:?}");
            }
            print_line(&format!("removed trusted signer {key_id}"))
        }
    }
}

fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            name,
            data_dir,
            grants,
            expires,
        } => {
            if flowpack_shared::names::Name::parse(&name).is_err() {
                bail!("invalid principal name {name:?}: use A-Z a-z 0-9 . _ -");
            }
            let store = open_store(&data_dir)?;
            let expires_at = expires.map(|d| store.db().map(|db| db.time().plus(d)));
            let token = auth::create_token_until(&store, &name, &grants, expires_at.transpose()?)?;
            print_line(token.as_str())
        }
        TokenCommand::List { data_dir, json } => {
            let store = open_store(&data_dir)?;
            let tokens = auth::list_tokens(&store)?;
            if json {
                return print_line(&serde_json::json!({ "tokens": tokens }).to_string());
            }
            let never = || "never".to_owned();
            let table: Vec<[String; 6]> = tokens
                .into_iter()
                .map(|t| {
                    let grants = t
                        .grants
                        .iter()
                        .map(|g| format!("{}={}", g.prefix, g.perms.join(",")))
                        .collect::<Vec<_>>()
                        .join(" ");
                    let expires = match t.expires_at {
                        Some(at) if t.expired => format!("{at} (expired)"),
                        Some(at) => at.to_string(),
                        None => never(),
                    };
                    let used = t.last_used_at.map_or_else(never, |at| at.to_string());
                    [t.principal, t.id, t.created_at, expires, used, grants]
                })
                .collect();
            print_table(
                &[
                    "PRINCIPAL",
                    "TOKEN ID",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                    "GRANTS",
                ],
                &table,
            )
        }
        TokenCommand::Revoke {
            id_or_name,
            data_dir,
        } => {
            let store = open_store(&data_dir)?;
            match auth::revoke(&store, &id_or_name)? {
                Some(auth::Revoked::Token { id, principal }) => {
                    print_line(&format!("revoked token {id} of {principal}"))
                }
                Some(auth::Revoked::Principal { name, ids }) if ids.is_empty() => {
                    print_line(&format!("{name} has no token to revoke"))
                }
                Some(auth::Revoked::Principal { name, ids }) => print_line(&format!(
                    "revoked {} token{} of {name}: {}",
                    ids.len(),
                    if ids.len() == 1 { "" } else { "s" },
                    ids.join(", ")
                )),
                None => bail!("no token id or principal {id_or_name:?}"),
            }
        }
    }
}

/// Prints a header and rows in columns two spaces apart (the last column unpadded).
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> anyhow::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = line(*header);
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    print_line(&out)
}

fn open_store(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    DataDir::new(data_dir).open_store()
}

fn serve(data_dir: PathBuf, flags: reload::Flags) -> anyhow::Result<()> {
    let dir = DataDir::new(&data_dir);
    // Read first for the log's format; `App::load` reads it again with the rest.
    let config = flowpack_receiver::config::read(&dir.config())?;
    let settings = Settings::of(&config, &flags, &data_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", dir.config().display()))?;
    logs::init(settings.log_format)?;
    let listen = settings.listen;
    if settings.tls.is_none() && !listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {listen} without TLS: give --tls-cert and --tls-key (or tls_cert and tls_key in config.json), or listen on a loopback address"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Requests touch the store on blocking threads. Most hold one for well under a
        // millisecond; without a cap a burst of connections grows hundreds of threads that
        // contend on SQLite's global mutexes. Enough remain for slow work (a deploy being
        // applied, a mapping file streamed to a slow client) beside the short reads.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;
    // As early as there is a runtime: SIGHUP's default action ends the process, and a
    // supervisor may send it (`systemctl reload`) as soon as the process has started. One that
    // arrives while the server starts is answered by a reload once it serves.
    let mut hangup = {
        let _runtime = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?
    };
    // Held until `serve` returns: a second server on the same directory exits here.
    let _lock = datadir::lock_for_serving(&dir)?;
    let app = Arc::new(App::load(&data_dir)?);
    let cert = match &settings.tls {
        Some((cert, key)) => Some(Arc::new(tls::ServerCert::load(cert, key)?)),
        None => None,
    };
    let acceptor = cert.clone().map(tls::acceptor).transpose()?;
    let mut reloader = Reloader::new(app.clone(), cert, flags, settings);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let shutdown = shutdown_signal()?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading config.json and the TLS certificate");
                // Files are read and HTTP clients built: off the async threads.
                match tokio::task::spawn_blocking(move || {
                    reloader.reload();
                    reloader
                })
                .await
                {
                    Ok(r) => reloader = r,
                    Err(e) => {
                        tracing::error!(error = %e, "reload failed; reloads are off until restart");
                        return;
                    }
                }
            }
        });
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        print_line(&format!("listening on {scheme}://{addr}"))?;
        flowpack_receiver::run(listener, app, acceptor, shutdown).await?;
        Ok(())
    })
}

/// Registers the SIGTERM and SIGINT handlers now, and returns a future that completes on
/// either. Registering before `listening on` is printed matters: a signal sent the moment a
/// supervisor (or a test) sees that line must shut down gracefully, not hit the default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}
