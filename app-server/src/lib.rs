//! app-server: takes an app's source, builds and runs it, keeps releases and routes HTTP to it
//! (issue #7).
//!
//! Today: the control API (bearer token) manages apps, kept in [`store`]; the app traffic
//! listener answers 404 because nothing can be deployed yet. The pieces of the deploy path that
//! exist so far: [`source::unpack`] (safe `tar.gz` unpacking) and [`source::procfile`].

pub mod api;
pub mod source;
pub mod store;

use std::sync::Arc;

use axum::http::StatusCode;
use common::server::{RoleServer, StartError};

/// Why the app role could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Listener(#[from] common::listeners::ListenerError),
    #[error(transparent)]
    Tls(#[from] common::tls::TlsError),
    #[error("app store: {0}")]
    Store(#[from] store::StoreError),
}
use common::{Config, Listeners, Role, Shutdown};

/// Runs the app role on its bound `api` and `http` listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), AppError> {
    let api_tls = config.app.api_tls;
    let store = store::Store::open(&config.data_dir).await?;
    let token: std::sync::Arc<str> = config.app.api_token.expose().into();
    let mut server = RoleServer::new(Role::App, config, shutdown);
    let api = server
        .health_routes()
        .merge(api::router(api::Api {
            store: store.clone(),
            token,
        }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    server.serve_http(listeners.take("api")?, api, api_tls)?;
    let apps = axum::Router::new()
        .fallback(|| async { (StatusCode::NOT_FOUND, "no app is deployed for this host\n") });
    server.serve_http(listeners.take("http")?, apps, false)?;
    server.run_until_shutdown().await;
    store.close().await;
    Ok(())
}
