//! For tests: a database of their own on the PostgreSQL server `FLOWPACK_TEST_POSTGRES`
//! names (`postgres://user@host:port/db`), created empty and dropped at the end, so that tests
//! run in parallel.

/// A database made for one test; dropped (with its connections) when this is.
pub(crate) struct TestDb {
    /// The URL of the test's database.
    pub(crate) url: String,
    /// The URL of the server's database it was made from.
    admin: String,
    name: String,
}

/// The server tests run against, if one is named.
pub(crate) fn server() -> Option<String> {
    std::env::var("FLOWPACK_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.is_empty())
}

impl TestDb {
    /// A new empty database, or `None` when no server is named.
    pub(crate) fn new() -> Option<TestDb> {
        let admin = server()?;
        let mut random = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .unwrap_or_else(|e| panic!("{e}"));
        let name = format!("flowpack_{}", hex::encode(random));
        let (base, _) = admin
            .split_once('?')
            .map_or((admin.as_str(), ""), |(b, q)| (b, q));
        let (server, _) = base
            .rsplit_once('/')
            .unwrap_or_else(|| panic!("FLOWPACK_TEST_POSTGRES: no database in the URL"));
        let url = format!("{server}/{name}");
        admin_sql(&admin, &format!("CREATE DATABASE {name}"));
        Some(TestDb { url, admin, name })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Runs `sql` on the server's own database, on a thread of its own (the caller may be async).
fn admin_sql(admin: &str, sql: &str) {
    let (admin, owned) = (admin.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let sql = owned;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connecting to FLOWPACK_TEST_POSTGRES: {e}"));
            tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    })
    .join()
    .unwrap_or_else(|_| panic!("{sql} panicked"));
}
