//! What the db-server tests share: tokio-postgres connections and their SQLSTATEs.

#![allow(dead_code)]

use std::net::SocketAddr;

/// A tokio-postgres client as `user` on `database` (no TLS: loopback in development).
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(database)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

pub fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {err}"))
}

/// Whether the next session past `db.max_connections` is refused with 53300 (and answered at
/// once, not left waiting), and gets in once `leaving` (a session now in) is dropped.
pub async fn refused_when_full_then_admitted(
    addr: SocketAddr,
    database: &str,
    leaving: tokio_postgres::Client,
) {
    use std::time::{Duration, Instant};
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        connect(addr, "quartet", "quartet", database),
    )
    .await
    .expect("an answer, not a wait")
    .expect_err("a session past the limit");
    assert_eq!(sqlstate(&refused), "53300", "{refused}");
    drop(leaving);
    // The place is given back when the server sees the connection end: shortly.
    let started = Instant::now();
    let admitted = loop {
        match connect(addr, "quartet", "quartet", database).await {
            Ok(client) => break client,
            Err(err) if started.elapsed() < Duration::from_secs(5) => {
                assert_eq!(sqlstate(&err), "53300", "{err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("no place after a session ended: {err}"),
        }
    };
    let answer = admitted
        .simple_query("SELECT 2")
        .await
        .expect("a query once admitted");
    let value = answer.iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("2"));
}
