//! db-server: a network SQL database speaking the PostgreSQL wire protocol over embedded
//! SQLite (issue #4).
//!
//! - [`engine`]: databases (SQLite files, one writer, read-only readers), sessions with
//!   PostgreSQL's transaction semantics, roles and grants, SQLSTATEs.
//! - [`pg`]: the PostgreSQL wire protocol on `db.pg_listen` (pgwire).
//! - [`http`]: the HTTP SQL API on `db.http_listen`, beside `/healthz` and `/metrics`.
//! - [`control`]: the Unix socket through which `db-server backup` gets a snapshot from the
//!   running server.
//! - [`upstream`]: with `db.backend = "postgres://…"`, both front ends in front of a real
//!   PostgreSQL (sessions proxied through a pool).

pub mod cli;
pub mod control;
pub mod engine;
pub mod http;
pub mod pg;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::listeners::AcceptLimits;
use common::server::{RoleServer, StartError};
use common::{Config, Environment, Listeners, Role, Shutdown};

/// Connections accepted past `db.max_connections` only to be refused with 53300.
const REFUSAL_ROOM: usize = 16;

/// Where PostgreSQL sessions are served.
enum Sessions {
    /// On the SQLite engine, on threads of their own.
    Local(pg::ServingThreads),
    /// Proxied to the PostgreSQL backend.
    Proxied(Arc<upstream::Upstream>),
}

/// Why the db role could not run.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Listener(#[from] common::listeners::ListenerError),
    #[error(transparent)]
    Tls(#[from] common::tls::TlsError),
    #[error("database engine: {0}")]
    Engine(#[from] engine::SqlError),
    #[error("could not start the threads that serve PostgreSQL sessions: {0}")]
    ServingThreads(#[from] std::io::Error),
}

/// Runs the db role on its bound `pg` and `http` listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), DbError> {
    let db = &config.db;
    let mut server = RoleServer::new(Role::Db, Arc::clone(&config), shutdown);
    let options = engine::DatabaseOptions {
        durability: if db.synchronous == "normal" {
            engine::Durability::Normal
        } else {
            engine::Durability::Full
        },
        readers: db.readers,
        paths: engine::EngineMetrics::register(server.registry_mut()),
    };
    let dir = config.data_dir.join("db");
    let _lock = engine::lock_dir(&dir)?;
    let upstream = match db.backend.postgres() {
        None => None,
        Some(url) => {
            let url = url.map_err(|reason| {
                engine::SqlError::new(engine::sqlstate::INVALID_PARAMETER_VALUE, reason)
            })?;
            tracing::info!(backend = %db.backend, "databases are on a PostgreSQL backend");
            Some(Arc::new(upstream::Upstream::new(
                url,
                db.backend_pool_size,
            )?))
        }
    };
    // Sessions on SQLite run on threads of their own (`pg::threads`), counted on /metrics:
    // registered before `health_routes` freezes the registry.
    let sessions = match &upstream {
        Some(upstream) => Sessions::Proxied(Arc::clone(upstream)),
        None => {
            let threads = pg::ServingThreads::for_this_machine()?;
            threads.register(server.registry_mut());
            Sessions::Local(threads)
        }
    };
    let engine = Arc::new(engine::Engine::open_with(&dir, options, upstream.clone()).await?);
    // Development starts with the database `quartet`; elsewhere the administrator makes them.
    let first_database = (config.environment == Environment::Development).then_some("quartet");
    engine
        .bootstrap(&db.admin_user, db.admin_password.expose(), None)
        .await?;
    if let Some(name) = first_database {
        match engine.bootstrap(&db.admin_user, "", Some(name)).await {
            Ok(()) => {}
            // A backend that is not up yet must not keep the role from starting.
            Err(err) if upstream.is_some() => {
                tracing::warn!(error = %err, "could not check the backend for the database {name}")
            }
            Err(err) => return Err(err.into()),
        }
    }
    let http_tls = db.http_tls;
    let session_limits = engine::SessionLimits {
        statement_timeout: Duration::from_secs(db.statement_timeout_secs),
        lock_timeout: Duration::from_secs(db.lock_timeout_secs),
        max_rows: 0,
    };
    let api = http::Api::new(
        Arc::clone(&engine),
        session_limits,
        http::HttpLimits {
            max_rows: db.http_max_rows,
            max_response_bytes: db.http_max_response_bytes,
            max_body_bytes: db.http_max_body_bytes,
            max_restore_bytes: db.max_restore_bytes,
        },
    );
    let router = server
        .health_routes()
        .merge(http::router(api))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    server.serve_http(listeners.take("http")?, router, http_tls)?;
    let tls = server.tls()?.acceptor(&[])?.rustls();
    // Past db.max_connections a client is told so (53300), as PostgreSQL does, rather than
    // left waiting to be accepted: the listener takes a few more than the limit.
    let limits = AcceptLimits {
        max_connections: db.max_connections.saturating_add(REFUSAL_ROOM),
    };
    let serving_threads = match sessions {
        Sessions::Local(threads) => threads,
        Sessions::Proxied(upstream) => {
            if !db.backup.every.trim().is_empty()
                && common::config::parse_interval(&db.backup.every)
                    .ok()
                    .flatten()
                    .is_some()
            {
                tracing::info!(
                    "db.backup.every is for the sqlite backend: back up the PostgreSQL backend with pg_dump"
                );
            }
            let service = Arc::new(upstream::proxy::ProxyService {
                engine: Arc::clone(&engine),
                upstream,
                tls: Some(tls),
                require_tls: config.environment.is_strict(),
                statement_timeout: session_limits.statement_timeout,
                idle_in_transaction: Duration::from_secs(db.idle_in_transaction_timeout_secs),
                stop: server.shutdown.token().clone(),
                sessions: pg::SessionCounter::new(db.max_connections),
            });
            server.serve_connections(listeners.take("pg")?, limits, move |stream, _peer| {
                Arc::clone(&service).serve(stream)
            });
            server.run_until_shutdown().await;
            engine.close().await;
            return Ok(());
        }
    };
    let mut service = pg::PgService::new(
        Arc::clone(&engine),
        session_limits,
        Some(tls),
        config.environment.is_strict(),
        serving_threads,
    );
    service.idle_in_transaction = Duration::from_secs(db.idle_in_transaction_timeout_secs);
    service.stop = server.shutdown.token().clone();
    service.sessions = pg::SessionCounter::new(db.max_connections);
    let service = Arc::new(service);
    server.serve_connections(listeners.take("pg")?, limits, move |stream, _peer| {
        service.serve_on_thread(stream)
    });
    match control::ControlSocket::bind(&dir) {
        Ok(socket) => {
            server
                .shutdown
                .spawn(socket.serve(Arc::clone(&engine), server.shutdown.clone()));
        }
        Err(err) => tracing::warn!(
            path = %control::socket_path(&dir).display(),
            error = %err,
            "no control socket: `db-server backup` cannot take a snapshot while this server runs"
        ),
    }
    if let Ok(Some(every)) = common::config::parse_interval(&db.backup.every) {
        let stop = server.shutdown.token().clone();
        tokio::spawn(engine::backup::run_schedule(
            Arc::clone(&engine),
            dir.clone(),
            every,
            db.backup.keep,
            stop,
        ));
    }
    server.run_until_shutdown().await;
    engine.close().await;
    Ok(())
}
