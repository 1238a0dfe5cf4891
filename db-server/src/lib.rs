//! db-server: a network SQL database speaking the PostgreSQL wire protocol and an HTTP JSON
//! API over embedded SQLite (issue #4).
//!
//! Today: the HTTP listener serves `/healthz` and `/metrics`; the PostgreSQL listener is bound
//! and answers every client with a PostgreSQL `ErrorResponse` (SQLSTATE 0A000) so that psql
//! and drivers report a clear error instead of hanging.

pub mod engine;

use std::sync::Arc;

use axum::http::StatusCode;
use common::server::{RoleServer, StartError};
use common::{Config, Listeners, Role, Shutdown};

/// Runs the db role on its bound `pg` and `http` listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let http_tls = config.db.http_tls;
    let mut server = RoleServer::new(Role::Db, config, shutdown);
    let router = server
        .health_routes()
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    server.serve_http(listeners.take("http")?, router, http_tls)?;
    server.refuse_connections(
        listeners.take("pg")?,
        false,
        pg_error_response(
            "0A000",
            "the Quartet PostgreSQL protocol is not available yet",
        ),
    )?;
    server.run_until_shutdown().await;
    Ok(())
}

/// A PostgreSQL `ErrorResponse` message (FATAL), valid as a reply to a startup or SSL request.
fn pg_error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    let length = u32::try_from(fields.len() + 4).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_response_length_counts_itself_and_the_fields() {
        let message = super::pg_error_response("0A000", "x");
        assert_eq!(message[0], b'E');
        let length = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
        assert_eq!(length as usize, message.len() - 1);
        assert_eq!(*message.last().unwrap(), 0);
    }
}
