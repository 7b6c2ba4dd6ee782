//! Verifying a database credential by logging in, against the real PostgreSQL and MariaDB of
//! the project's machines: `FLOWPACK_TEST_POSTGRES` and `FLOWPACK_TEST_MYSQL` name them (URLs
//! such as `postgres://postgres@127.0.0.1:5432/test` and `mysql://root@127.0.0.1:3306/test`).
//! `.ci/run` sets both and fails when a server cannot be reached; on a machine without them
//! these tests have nothing to talk to and return at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flowpack_receiver::config::Config;
use flowpack_receiver::outbound::Outbound;
use flowpack_receiver::outbound::dblogin::{Login, LoginError, login};
use flowpack_shared::secret::Secret;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The server a variable names: (host, port, user, database).
fn server(var: &str) -> Option<(String, u16, String, String)> {
    let url = url::Url::parse(&std::env::var(var).ok()?).expect("a URL");
    Some((
        url.host_str().expect("a host").to_owned(),
        url.port().expect("a port"),
        url.username().to_owned(),
        url.path().trim_start_matches('/').to_owned(),
    ))
}

fn outbound(allow: &[&str]) -> Outbound {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config {
        outbound_allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
        ..Config::default()
    };
    Outbound::new(&config).unwrap()
}

/// Logs in to the server of `var` with `driver`, changing the user, password or database.
async fn try_login(
    var: &str,
    driver: &str,
    user: Option<&str>,
    password: Option<&str>,
    database: Option<&str>,
    allow: &[&str],
) -> Option<Result<(), LoginError>> {
    let (host, port, default_user, default_db) = server(var)?;
    let password = password.map(|p| Secret::new(p.to_owned()));
    let l = Login {
        driver,
        host: &host,
        port,
        database: Some(database.unwrap_or(&default_db)),
        username: Some(user.unwrap_or(&default_user)),
        password: password.as_ref(),
    };
    Some(login(&outbound(allow), &l, TIMEOUT).await)
}

#[tokio::test]
async fn postgresql_login_succeeds_and_each_failure_is_told_apart() {
    let var = "FLOWPACK_TEST_POSTGRES";
    let Some(ok) = try_login(var, "postgresql", None, None, None, &["127.0.0.1"]).await else {
        return;
    };
    assert!(ok.is_ok(), "{ok:?}");
    let unknown_db = try_login(
        var,
        "postgresql",
        None,
        None,
        Some("no_such_db_fp"),
        &["127.0.0.1"],
    )
    .await
    .unwrap();
    assert!(
        matches!(unknown_db, Err(LoginError::UnknownDatabase)),
        "{unknown_db:?}"
    );
    // This machine's PostgreSQL trusts loopback logins, so a password cannot be wrong here; a
    // role that does not exist is refused the same way.
    let no_role = try_login(
        var,
        "postgres",
        Some("no_such_role_fp"),
        Some("x"),
        None,
        &["127.0.0.1"],
    )
    .await
    .unwrap();
    assert!(
        matches!(no_role, Err(LoginError::LoginRefused)),
        "{no_role:?}"
    );
    // Not listed: loopback is refused before anything is sent.
    let refused = try_login(var, "postgresql", None, None, None, &[])
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(LoginError::Refused(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn mysql_login_succeeds_and_each_failure_is_told_apart() {
    let var = "FLOWPACK_TEST_MYSQL";
    let Some(ok) = try_login(var, "mysql", None, None, None, &["127.0.0.1"]).await else {
        return;
    };
    assert!(ok.is_ok(), "{ok:?}");
    let wrong = try_login(
        var,
        "mariadb",
        None,
        Some("wrong-password-fp"),
        None,
        &["127.0.0.1"],
    )
    .await
    .unwrap();
    assert!(matches!(wrong, Err(LoginError::LoginRefused)), "{wrong:?}");
    let unknown_db = try_login(
        var,
        "mysql",
        None,
        None,
        Some("no_such_db_fp"),
        &["127.0.0.1"],
    )
    .await
    .unwrap();
    assert!(
        matches!(unknown_db, Err(LoginError::UnknownDatabase)),
        "{unknown_db:?}"
    );
    let refused = try_login(var, "mysql", None, None, None, &[])
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(LoginError::Refused(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_closed_port_and_an_unknown_driver_are_failures_not_passes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for driver in ["postgresql", "mysql"] {
        let l = Login {
            driver,
            host: "127.0.0.1",
            port,
            database: Some("x"),
            username: Some("u"),
            password: None,
        };
        let r = login(&outbound(&["127.0.0.1"]), &l, TIMEOUT).await;
        assert!(
            matches!(r, Err(LoginError::CouldNotConnect)),
            "{driver}: {r:?}"
        );
    }
    let l = Login {
        driver: "oracle",
        host: "127.0.0.1",
        port,
        database: None,
        username: None,
        password: None,
    };
    let r = login(&outbound(&["127.0.0.1"]), &l, TIMEOUT).await;
    assert!(matches!(r, Err(LoginError::UnsupportedDriver)), "{r:?}");
}

/// A fake PostgreSQL server on loopback: it declines TLS, and once it has a startup message,
/// answers as `reply` says. Reports how many bytes it wrote and whether the client closed.
async fn fake_postgres(
    reply: &'static str,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<(u64, bool)>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                // SSLRequest (answered N) or the startup message.
                loop {
                    let mut len = [0u8; 4];
                    if c.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    if c.read_exact(&mut rest).await.is_err() {
                        return;
                    }
                    if rest[..4] == 80877103u32.to_be_bytes() {
                        if c.write_all(b"N").await.is_err() {
                            return;
                        }
                        continue;
                    }
                    break;
                }
                let mut written = 0u64;
                match reply {
                    // An error message that claims 400 MB, streamed until the client leaves.
                    "huge" => {
                        let mut head = vec![b'E'];
                        head.extend_from_slice(&400_000_000u32.to_be_bytes());
                        let _ = c.write_all(&head).await;
                        let chunk = vec![b'x'; 64 * 1024];
                        while written < 400_000_000 && c.write_all(&chunk).await.is_ok() {
                            written += chunk.len() as u64;
                        }
                        let _ = tx.send((written, true));
                    }
                    // Logged in, ready for queries, then silent: is the connection closed?
                    _ => {
                        let mut ok = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
                        ok.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
                        let _ = c.write_all(&ok).await;
                        let mut buf = [0u8; 1024];
                        let closed = loop {
                            match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                                .await
                            {
                                Ok(Ok(0)) | Ok(Err(_)) => break true,
                                Ok(Ok(_)) => continue,
                                Err(_) => break false,
                            }
                        };
                        let _ = tx.send((written, closed));
                    }
                }
            });
        }
    });
    (port, rx, task)
}

fn fake_login(port: u16) -> Login<'static> {
    Login {
        driver: "postgresql",
        host: "127.0.0.1",
        port,
        database: Some("d"),
        username: Some("u"),
        password: None,
    }
}

#[tokio::test]
async fn a_postgres_server_announcing_a_huge_message_is_cut_off_not_buffered() {
    let (port, mut seen, task) = fake_postgres("huge").await;
    let started = std::time::Instant::now();
    let r = login(&outbound(&["127.0.0.1"]), &fake_login(port), TIMEOUT).await;
    assert!(r.is_err(), "{r:?}");
    let (written, _) = seen.recv().await.unwrap();
    // The client stops reading at its cap; what the server got out is what the socket
    // buffers held, far from the 400 MB it announced.
    assert!(written < 64 << 20, "the client read {written} bytes");
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    task.abort();
}

#[tokio::test]
async fn a_postgres_server_that_never_answers_the_query_gets_its_connection_closed() {
    let (port, mut seen, task) = fake_postgres("hang").await;
    let r = login(
        &outbound(&["127.0.0.1"]),
        &fake_login(port),
        Duration::from_secs(1),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    let (_, closed) = seen.recv().await.unwrap();
    assert!(closed, "the connection was left open after the timeout");
    task.abort();
}
