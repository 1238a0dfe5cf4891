//! app-server: takes an app's source, builds and runs it, keeps releases and routes HTTP to it
//! (issue #7).
//!
//! Today: the control API (bearer token) manages apps, kept in [`store`]; the app traffic
//! listener answers 404 because nothing can be deployed yet. The pieces of the deploy path that
//! exist so far: [`source::unpack`] (safe `tar.gz` unpacking) and [`source::procfile`].

pub mod api;
pub mod apps;
pub mod router;
pub mod runner;
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
    #[error(transparent)]
    Run(#[from] runner::RunError),
}
use common::{Config, Listeners, Role, Shutdown};

/// Runs the app role on its bound `api` and `http` listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), AppError> {
    let api_tls = config.app.api_tls;
    let app = &config.app;
    let store = store::Store::open(&config.data_dir).await?;
    let identity = runner::Identity::resolve(&app.run_as)?;
    let logs_dir = config.data_dir.join("app").join("logs");
    std::fs::create_dir_all(&logs_dir).map_err(|source| store::StoreError::Directory {
        path: logs_dir.display().to_string(),
        source,
    })?;
    let runner = runner::Runner {
        identity,
        environment: config.environment.to_string(),
        logs_dir,
        stop_grace: std::time::Duration::from_secs(app.stop_grace_secs),
    };
    let apps = std::sync::Arc::new(apps::Apps::new(
        store.clone(),
        runner,
        &config.data_dir,
        source::unpack::UnpackLimits {
            max_entries: app.max_archive_entries,
            max_bytes: app.max_unpacked_bytes,
        },
        std::time::Duration::from_secs(app.health_timeout_secs),
    ));
    apps.restore().await;
    let token: std::sync::Arc<str> = app.api_token.expose().into();
    let max_upload_bytes = usize::try_from(app.max_upload_bytes).unwrap_or(usize::MAX);
    let suffix = format!(".{}", app.domain.trim_start_matches('.'));
    let mut server = RoleServer::new(Role::App, Arc::clone(&config), shutdown.clone());
    let api = server
        .health_routes()
        .merge(api::router(api::Api {
            store: store.clone(),
            apps: Arc::clone(&apps),
            token,
            max_upload_bytes,
        }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    server.serve_http(listeners.take("api")?, api, api_tls)?;
    let traffic = axum::Router::new()
        .fallback(router::route)
        .with_state(router::Router {
            apps: Arc::clone(&apps),
            proxy: common::proxy::Proxy::new(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(60),
            ),
            suffix,
        });
    server.serve_http(listeners.take("http")?, traffic, false)?;
    server.run_until_shutdown().await;
    apps.stop_all().await;
    store.close().await;
    Ok(())
}
