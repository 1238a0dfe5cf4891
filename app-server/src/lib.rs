//! app-server: takes an app's source, builds and runs it, keeps releases and routes HTTP to it
//! (issue #7).
//!
//! - [`api`]: the control API (bearer token) on `app.api_listen`.
//! - [`apps`]: the deploy pipeline (build → release → start → health → switch → drain),
//!   supervision, scaling, schedules, promotion.
//! - [`runner`]: how one process is run (user, limits, environment, process group, output).
//! - [`logs`]: each app's rotated log and its live followers.
//! - [`router`]: app traffic on `app.http_listen` by Host.
//! - [`local`]: `quartet app local`, the same pipeline run in-process on a developer's machine.
//! - [`source`]: safe unpacking of uploads and the Procfile; [`store`]: SQLite state.

pub mod api;
pub mod apps;
pub mod local;
pub mod logs;
pub mod ports;
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
    // Checked by `Config::validate`; the fallback is the documented default.
    let (ports_low, ports_high) = app.port_range().unwrap_or((20000, 29999));
    let logs_dir = config.data_dir.join("app").join("logs");
    let logs = logs::AppLogs::new(logs_dir.clone(), app.log_max_bytes, app.log_files).map_err(
        |source| store::StoreError::Directory {
            path: logs_dir.display().to_string(),
            source,
        },
    )?;
    let runner = runner::Runner {
        identity,
        environment: config.environment.to_string(),
        logs: Arc::new(logs),
        stop_grace: std::time::Duration::from_secs(app.stop_grace_secs),
        limits: runner::Limits {
            open_files: app.max_open_files,
            processes: app.max_processes,
            memory_bytes: app.max_memory_mb.saturating_mul(1024 * 1024),
        },
        ports: Arc::new(ports::PortPool::new(ports_low, ports_high)),
    };
    let mut apps = apps::Apps::new(
        store.clone(),
        runner,
        &config.data_dir,
        source::unpack::UnpackLimits {
            max_entries: app.max_archive_entries,
            max_bytes: app.max_unpacked_bytes,
            symlinks_may_point_outside: false,
        },
        std::time::Duration::from_secs(app.health_timeout_secs),
    );
    // Promotion trusts this machine's development CA too (app-servers on one laptop).
    let dev_ca = common::tls::DevCertificates::in_dir(&config.data_dir.join("tls")).ca_cert;
    apps.extra_ca = dev_ca.is_file().then_some(dev_ca);
    let apps = Arc::new(apps);
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
            shutdown: shutdown.clone(),
            app_domain: app
                .domain
                .trim_start_matches('.')
                .to_ascii_lowercase()
                .into(),
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
            fallback_app: None,
        });
    server.serve_http(listeners.take("http")?, traffic, false)?;
    server.run_until_shutdown().await;
    apps.stop_all().await;
    store.close().await;
    Ok(())
}
