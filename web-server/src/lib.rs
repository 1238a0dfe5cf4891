//! web-server: serves static sites and reverse-proxies to apps over HTTP/1.1 and HTTP/2 with TLS.
//!
//! This crate is a library first: the `web-server` binary, `quartet up` and the tests all call
//! [`run`]. Today it serves `/healthz` and `/metrics` on both listeners; static files and the
//! reverse proxy are issue #3.

use std::sync::Arc;

use axum::http::StatusCode;
use common::server::{RoleServer, StartError};
use common::{Config, Listeners, Role, Shutdown};

/// Runs the web role on its bound `http` and `https` listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let mut server = RoleServer::new(Role::Web, config, shutdown);
    let router = server
        .health_routes()
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    server.serve_http(listeners.take("http")?, router.clone(), false)?;
    server.serve_http(listeners.take("https")?, router, true)?;
    server.run_until_shutdown().await;
    Ok(())
}
