//! mail-server: SMTP receive and submission, mailboxes, IMAP, POP3 and a web inbox
//! (issues #5 and #6).
//!
//! Today: every listener is bound; the HTTP listener serves `/healthz` and `/metrics`, and the
//! mail protocols answer with their protocol's "service not available" reply (SMTP 421, IMAP
//! BYE, POP3 -ERR), over TLS on the implicit-TLS ports, so clients fail fast and clearly.

use std::sync::Arc;

use axum::http::StatusCode;
use common::server::{RoleServer, StartError};
use common::{Config, Listeners, Role, Shutdown};

const SMTP_UNAVAILABLE: &[u8] = b"421 4.3.2 Quartet mail-server: SMTP is not available yet\r\n";
const IMAP_UNAVAILABLE: &[u8] = b"* BYE Quartet mail-server: IMAP is not available yet\r\n";
const POP3_UNAVAILABLE: &[u8] = b"-ERR Quartet mail-server: POP3 is not available yet\r\n";

/// Runs the mail role on its bound listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let http_tls = config.mail.http_tls;
    let mut server = RoleServer::new(Role::Mail, config, shutdown);
    let router = server
        .health_routes()
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    server.serve_http(listeners.take("http")?, router, http_tls)?;
    for (name, implicit_tls, reply) in [
        ("smtp", false, SMTP_UNAVAILABLE),
        ("submission", false, SMTP_UNAVAILABLE),
        ("submissions", true, SMTP_UNAVAILABLE),
        ("imap", false, IMAP_UNAVAILABLE),
        ("imaps", true, IMAP_UNAVAILABLE),
        ("pop3", false, POP3_UNAVAILABLE),
        ("pop3s", true, POP3_UNAVAILABLE),
    ] {
        server.refuse_connections(listeners.take(name)?, implicit_tls, reply)?;
    }
    server.run_until_shutdown().await;
    Ok(())
}
