//! app-server: takes an app's source, builds and runs it, keeps releases and routes HTTP to it
//! (issue #7).
//!
//! Today: the control API listener serves `/healthz` and `/metrics`; the app traffic listener
//! answers 404 because no app can be deployed yet.

use std::sync::Arc;

use axum::http::StatusCode;
use common::server::{RoleServer, StartError};
use common::{Config, Listeners, Role, Shutdown};

/// Runs the app role on its bound `api` and `http` listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    let api_tls = config.app.api_tls;
    let mut server = RoleServer::new(Role::App, config, shutdown);
    let api = server
        .health_routes()
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    server.serve_http(listeners.take("api")?, api, api_tls)?;
    let apps = axum::Router::new()
        .fallback(|| async { (StatusCode::NOT_FOUND, "no app is deployed for this host\n") });
    server.serve_http(listeners.take("http")?, apps, false)?;
    server.run_until_shutdown().await;
    Ok(())
}
