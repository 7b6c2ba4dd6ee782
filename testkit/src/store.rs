//! The storage engine the suite runs on, chosen by `FLOWPACK_TEST_STORE`:
//!
//! - unset or `embedded`: each test receiver keeps its embedded SQLite store, in its data
//!   directory;
//! - `postgres`: each gets a database of its own on the PostgreSQL server that
//!   `FLOWPACK_TEST_POSTGRES` names (`postgres://user@host:port/db`), created empty by
//!   [`crate::init`], so that the same tests run in parallel on that engine.
//!
//! Such a database is named `flowpack_suite_<pid>_<random>` after the test process that made it.
//! Nothing drops it when the test ends (a test may leave a `serve` child behind it); the first
//! receiver a later test process makes drops those of test processes that have ended.
//!
//! Any other value is refused: a misspelt engine must not quietly test the default one.

use std::sync::Once;

/// The engine of the suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// SQLite in the data directory.
    Embedded,
    /// A database per receiver on the PostgreSQL server at this URL.
    Postgres(String),
}

/// The engine `FLOWPACK_TEST_STORE` chooses; panics on a value it does not know, or on
/// `postgres` without `FLOWPACK_TEST_POSTGRES`.
pub fn engine() -> Engine {
    match std::env::var("FLOWPACK_TEST_STORE").as_deref() {
        Err(_) | Ok("") | Ok("embedded") => Engine::Embedded,
        Ok("postgres") => match std::env::var("FLOWPACK_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Engine::Postgres(url),
            _ => panic!(
                "FLOWPACK_TEST_STORE=postgres needs FLOWPACK_TEST_POSTGRES, the URL of a PostgreSQL server"
            ),
        },
        Ok(other) => panic!("FLOWPACK_TEST_STORE={other}: expected embedded or postgres"),
    }
}

/// Whether the suite runs on the embedded store: tests of what only it has (its file, its
/// backups) run only then.
pub fn embedded() -> bool {
    engine() == Engine::Embedded
}

/// A new empty database on the server at `server`; returns its URL.
pub(crate) fn new_database(server: &str) -> String {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| drop_ended(server));
    let mut random = [0u8; 6];
    random_bytes(&mut random);
    let name = format!(
        "flowpack_suite_{}_{}",
        std::process::id(),
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let url = format!("{}/{name}", server_part(server));
    admin(server, move |client| async move {
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
    });
    url
}

/// Drops the suite's databases whose test process has ended.
fn drop_ended(server: &str) {
    admin(server, |client| async move {
        let rows = client
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'flowpack\\_suite\\_%'",
                &[],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let pid = name.split('_').nth(2).unwrap_or_default();
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            // Another test process may be dropping it too.
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
        Ok(())
    });
}

/// The URL of `server` without its database and query: `postgres://user@host:port`.
fn server_part(server: &str) -> &str {
    let base = server.split_once('?').map_or(server, |(b, _)| b);
    match base.rsplit_once('/') {
        Some((s, _)) if !s.ends_with('/') => s,
        _ => panic!("FLOWPACK_TEST_POSTGRES: no database in the URL"),
    }
}

/// Runs `work` with a client of `server`, on a thread and runtime of its own (the caller may
/// be async); panics on any failure, naming the statement's error.
fn admin<T, F, W>(server: &str, work: W) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send,
    W: FnOnce(tokio_postgres::Client) -> F + Send + 'static,
{
    let server = server.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime: {e}"));
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connecting to FLOWPACK_TEST_POSTGRES: {e}"));
            tokio::spawn(conn);
            work(client)
                .await
                .unwrap_or_else(|e| panic!("FLOWPACK_TEST_POSTGRES: {e}"))
        })
    })
    .join()
    .unwrap_or_else(|_| panic!("a statement on FLOWPACK_TEST_POSTGRES panicked"))
}

/// Fills `out` from the system's random source.
fn random_bytes(out: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .unwrap_or_else(|e| panic!("/dev/urandom: {e}"));
}
