//! Verifying a database credential by logging in with its driver and running `SELECT 1`: a
//! TCP connection alone says nothing about the user name, the password or the database.
//!
//! Every connection goes through the outbound policy on its resolved addresses. PostgreSQL
//! (tokio-postgres) runs over a TCP connection the policy opened (`connect_raw`); MySQL and
//! MariaDB (mysql_async) are given the addresses the policy checked (`resolved_ips`), so
//! neither driver resolves the name again. TLS (rustls) is required, except to a host listed
//! in `outbound_allow`, where the server may decline it (the same rule as plain `http://`).
//!
//! What a failure tells is one of a few fixed phrases — the login was refused, the database
//! does not exist, no connection, TLS refused — never the server's own text, which is not
//! ours to show and may quote what it was sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flowpack_shared::secret::Secret;

use super::{Outbound, Refused, TcpError};

/// A database login to try.
#[derive(Debug)]
pub struct Login<'a> {
    /// The credential's `driver`.
    pub driver: &'a str,
    /// Its `host`.
    pub host: &'a str,
    /// Its `port`.
    pub port: u16,
    /// Its `database`, if any.
    pub database: Option<&'a str>,
    /// Its `username`, if any.
    pub username: Option<&'a str>,
    /// Its `password`, if set.
    pub password: Option<&'a Secret>,
}

/// Why a login did not succeed.
#[derive(Debug, Clone)]
pub enum LoginError {
    /// The policy refuses the host.
    Refused(Refused),
    /// No connection (unresolved, closed, filtered or timed out: deliberately not told).
    CouldNotConnect,
    /// The server would not, or could not, set up TLS, which a host not listed in
    /// `outbound_allow` requires.
    Tls,
    /// The server refused the user name or the password.
    LoginRefused,
    /// The server does not know the database.
    UnknownDatabase,
    /// The login did not complete for another reason.
    Failed,
    /// No driver of this receiver speaks to this kind of database.
    UnsupportedDriver,
}

impl LoginError {
    /// A fixed, secret-free description.
    pub fn detail(&self) -> String {
        match self {
            LoginError::Refused(r) => r.detail(),
            LoginError::CouldNotConnect => "could not connect".into(),
            LoginError::Tls => {
                "the server did not set up TLS, which is required for a host not listed in outbound_allow".into()
            }
            LoginError::LoginRefused => "the database refused the login (user name or password)".into(),
            LoginError::UnknownDatabase => "the database does not exist on the server".into(),
            LoginError::Failed => "the login did not complete".into(),
            LoginError::UnsupportedDriver => {
                "this receiver verifies postgresql and mysql/mariadb logins only (field `driver`)"
                    .into()
            }
        }
    }
}

impl From<TcpError> for LoginError {
    fn from(e: TcpError) -> LoginError {
        match e {
            TcpError::Refused(r) => LoginError::Refused(r),
            TcpError::Invalid(_) | TcpError::CouldNotConnect => LoginError::CouldNotConnect,
        }
    }
}

/// The kind of database a driver name stands for.
fn kind(driver: &str) -> Option<Kind> {
    match driver.to_ascii_lowercase().as_str() {
        "postgresql" | "postgres" | "pgsql" | "pg" => Some(Kind::Postgres),
        "mysql" | "mariadb" => Some(Kind::Mysql),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Postgres,
    Mysql,
}

/// Logs in as `l` says and runs `SELECT 1`, all within `timeout`.
/// The policy is applied first: a refused host is refused whatever the driver.
pub async fn login(out: &Outbound, l: &Login<'_>, timeout: Duration) -> Result<(), LoginError> {
    out.resolve_checked(l.host, l.port, timeout).await?;
    let kind = kind(l.driver).ok_or(LoginError::UnsupportedDriver)?;
    let attempt = async {
        match kind {
            Kind::Postgres => postgres(out, l, timeout).await,
            Kind::Mysql => mysql(out, l, timeout).await,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(LoginError::CouldNotConnect))
}

/// A rustls client configuration trusting the platform's roots (the same verifier the
/// receiver's HTTP client uses), with ring.
fn tls_config() -> Result<rustls::ClientConfig, LoginError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|_| LoginError::Tls)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| LoginError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// PostgreSQL: TLS with a verified certificate; to a listed host, when that fails short of an
/// answer from the server (no TLS offered, a certificate this receiver does not trust), once
/// more without TLS, as plain `http://` is allowed to a listed host.
async fn postgres(out: &Outbound, l: &Login<'_>, timeout: Duration) -> Result<(), LoginError> {
    use tokio_postgres::config::SslMode;
    let (_, listed) = out.resolve_checked(l.host, l.port, timeout).await?;
    match postgres_once(out, l, timeout, SslMode::Require).await {
        Err(LoginError::Tls) if listed => postgres_once(out, l, timeout, SslMode::Disable)
            .await
            .map_err(|e| match e {
                LoginError::Tls => LoginError::Failed,
                e => e,
            }),
        other => other,
    }
}

async fn postgres_once(
    out: &Outbound,
    l: &Login<'_>,
    timeout: Duration,
    ssl: tokio_postgres::config::SslMode,
) -> Result<(), LoginError> {
    use tokio_postgres::error::SqlState;

    let stream = Capped::new(out.connect_tcp(l.host, l.port, timeout).await?);
    let mut config = tokio_postgres::Config::new();
    config.ssl_mode(ssl);
    if let Some(u) = l.username {
        config.user(u);
    }
    if let Some(d) = l.database {
        config.dbname(d);
    }
    if let Some(p) = l.password {
        config.password(p.expose().as_bytes());
    }
    let mut make = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?);
    let tls = <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        Capped,
    >>::make_tls_connect(&mut make, l.host)
    .map_err(|_| LoginError::Tls)?;
    let (client, connection) = config.connect_raw(stream, tls).await.map_err(|e| {
        match e.code() {
            Some(c) if *c == SqlState::INVALID_PASSWORD => LoginError::LoginRefused,
            Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                LoginError::LoginRefused
            }
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => LoginError::UnknownDatabase,
            Some(_) => LoginError::Failed,
            // No answer from the server: the TLS handshake or the transport failed.
            None => LoginError::Tls,
        }
    })?;
    // Aborted when dropped, also when the caller's timeout cancels this future: a server
    // that never answers the query must not keep a connection and a task alive.
    let _driving = AbortOnDrop(tokio::spawn(connection));
    let queried = client.simple_query("SELECT 1").await;
    queried.map(drop).map_err(|_| LoginError::Failed)
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Most bytes a login may read from a server: a login and `SELECT 1` take a few KiB, while a
/// hostile server may announce a message of 2 GiB that the driver would buffer whole.
const MAX_READ: u64 = 1 << 20;

/// A TCP stream that fails once more than [`MAX_READ`] bytes have been read from it.
struct Capped {
    inner: tokio::net::TcpStream,
    read: u64,
}

impl Capped {
    fn new(inner: tokio::net::TcpStream) -> Capped {
        Capped { inner, read: 0 }
    }
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.read >= MAX_READ {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the server sent more than a login needs",
            )));
        }
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = (buf.filled().len() - before) as u64;
        self.read += got;
        polled
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn mysql(out: &Outbound, l: &Login<'_>, timeout: Duration) -> Result<(), LoginError> {
    let (addrs, listed) = out.resolve_checked(l.host, l.port, timeout).await?;
    let ips: Vec<std::net::IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    let mut opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(l.host)
        .tcp_port(l.port)
        // Connects to these (checked) addresses and never resolves the name itself.
        .resolved_ips(Some(ips))
        .prefer_socket(false)
        .user(l.username)
        .pass(l.password.map(|p| p.expose()))
        .db_name(l.database);
    if !listed {
        opts = opts.ssl_opts(Some(mysql_async::SslOpts::default()));
    }
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| mysql_error(&e, listed))?;
    use mysql_async::prelude::Queryable as _;
    let queried = conn.query_drop("SELECT 1").await;
    let _ = conn.disconnect().await;
    queried.map_err(|_| LoginError::Failed)
}

fn mysql_error(e: &mysql_async::Error, listed: bool) -> LoginError {
    match e {
        // ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR.
        mysql_async::Error::Server(s) if matches!(s.code, 1044 | 1045 | 1698) => {
            LoginError::LoginRefused
        }
        // ER_BAD_DB_ERROR.
        mysql_async::Error::Server(s) if s.code == 1049 => LoginError::UnknownDatabase,
        mysql_async::Error::Server(_) => LoginError::Failed,
        mysql_async::Error::Io(_) if !listed => LoginError::Tls,
        mysql_async::Error::Io(_) => LoginError::CouldNotConnect,
        _ => LoginError::Failed,
    }
}
