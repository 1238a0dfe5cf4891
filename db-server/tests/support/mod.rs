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
