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

/// Marks a test of what only the embedded store has (its file, its write-ahead log, its
/// backups): run on another engine, it fails at once, saying so. The PostgreSQL pass of the
/// suite (nextest profile `postgres`) leaves such tests out by name.
pub fn embedded_only(why: &str) {
    if let Engine::Postgres(_) = engine() {
        panic!(
            "a test of the embedded store only ({why}); FLOWPACK_TEST_STORE=postgres runs it on PostgreSQL"
        );
    }
}

/// A new empty database on the server at `server`; returns its URL.
pub(crate) fn new_database(server: &str) -> String {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| drop_ended(server));
    let name = new_name();
    let url = format!("{}/{name}", server_part(server));
    admin(server, move |client| async move {
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
    });
    url
}

/// A name for a new database of this test process.
fn new_name() -> String {
    let mut random = [0u8; 6];
    random_bytes(&mut random);
    format!(
        "flowpack_suite_{}_{}",
        std::process::id(),
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A copy of the database at `url` (one of the suite's), made as a new database of this
/// process; returns its URL. Sessions still open on the original (a stopped receiver's pool)
/// are ended first: PostgreSQL copies only a database nobody is connected to.
pub(crate) fn copy_database(url: &str) -> String {
    let Engine::Postgres(server) = engine() else {
        panic!("{url}: a PostgreSQL store, but the suite does not run on PostgreSQL");
    };
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    let original = base.rsplit('/').next().unwrap_or_default().to_owned();
    assert!(
        original.starts_with("flowpack_suite_"),
        "{original}: not a database of the suite"
    );
    let copy = new_name();
    let copy_url = format!("{}/{copy}", server_part(&server));
    admin(&server, move |client| async move {
        let end_sessions = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()";
        let create = format!("CREATE DATABASE {copy} TEMPLATE {original}");
        let mut tries = 0;
        loop {
            client.query(end_sessions, &[&original]).await?;
            match client.batch_execute(&create).await {
                // 55006: the original is being accessed by other users (a session that was
                // closing): once more.
                Err(e) if tries < 20 && e.code().is_some_and(|c| c.code() == "55006") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                done => return done,
            }
        }
    });
    copy_url
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

/// Runs `work` with a client of the database at `server`, on a thread and runtime of its own
/// (the caller may be async); panics on any failure, naming the statement's error.
pub(crate) fn admin<T, F, W>(server: &str, work: W) -> T
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
                .unwrap_or_else(|e| panic!("connecting to the test database: {e}"));
            tokio::spawn(conn);
            work(client)
                .await
                .unwrap_or_else(|e| panic!("the test database: {e}"))
        })
    })
    .join()
    .unwrap_or_else(|_| panic!("a statement on the test database panicked"))
}

/// Fills `out` from the system's random source.
fn random_bytes(out: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .unwrap_or_else(|e| panic!("/dev/urandom: {e}"));
}
