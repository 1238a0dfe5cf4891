//! web-server: static sites and a reverse proxy, over HTTP/1.1 and HTTP/2 with TLS.
//!
//! A library first: the `web-server` binary, `quartet up` and the tests all call [`run`].
//! Map of the crate:
//! - [`sites`]: `web.sites` compiled into a table looked up by host;
//! - [`handler`]: one request, from limits and redirects through auth to proxy or files,
//!   then error pages, security headers, access log and metrics;
//! - [`static_files`]: files with validators, ranges, compression and a file cache;
//! - [`proxy`]: upstream pools, forwarding, upgrades, health checks;
//! - [`sni`]: a certificate per site by SNI;
//! - [`welcome`]: the development welcome page.
//!
//! Everything built from the configuration lives in a [`Generation`], swapped atomically on
//! SIGHUP, so a reload never drops a connection.

pub mod auth;
pub mod handler;
mod observe;
pub mod sites;
pub mod sni;
pub mod static_files;
pub mod welcome;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use common::config::{Origins, Problem};
use common::http::{ALPN_HTTP, HttpOptions};
use common::listeners::AcceptLimits;
use common::server::{RoleServer, StartError};
use common::tls::TlsAcceptor;
use common::{Config, Listeners, Role, Shutdown};
use tokio_util::sync::CancellationToken;

use crate::sites::Sites;
use crate::static_files::{CacheLimits, StaticFiles};
use common::proxy::{Proxy, Upstreams};

/// What the configuration builds: sites, the file cache, upstream pools (with their health
/// checks, stopped when the generation is replaced).
#[derive(Debug)]
pub struct Generation {
    pub config: Arc<Config>,
    pub sites: Sites,
    pub files: StaticFiles,
    health_checks: CancellationToken,
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.health_checks.cancel();
    }
}

/// Shared by both listeners.
#[derive(Debug)]
pub struct WebState {
    pub generation: ArcSwap<Generation>,
    pub proxy: Proxy,
    pub metrics: observe::WebMetrics,
    /// The bound HTTPS port, for redirects from HTTP.
    pub https_port: u16,
    pub sni: Arc<sni::SniResolver>,
}

/// The web role's own configuration checks: the site table must compile.
pub fn check(config: &Config, origins: &Origins) -> Vec<Problem> {
    match Sites::compile(config, |urls, health, interval| {
        Upstreams::parse(urls, health, interval)
    }) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|(key, reason)| Problem::new(key, origins.of("web.sites"), reason))
            .collect(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Listener(#[from] common::listeners::ListenerError),
    #[error(transparent)]
    Tls(#[from] common::tls::TlsError),
    #[error("invalid web configuration: {0}")]
    Sites(String),
}

fn build_generation(
    config: Arc<Config>,
    proxy: &Proxy,
    shutdown: &Shutdown,
) -> Result<Generation, String> {
    let health_checks = CancellationToken::new();
    let mut pools = Vec::new();
    let sites = Sites::compile(&config, |urls, health, interval| {
        let pool = Upstreams::parse(urls, health, interval)?;
        pools.push(Arc::clone(&pool));
        Ok(pool)
    })
    .map_err(|problems| {
        problems
            .into_iter()
            .map(|(key, reason)| format!("{key}: {reason}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    for pool in pools {
        let proxy = proxy.clone();
        let stop = health_checks.clone();
        let shutdown_token = shutdown.token().clone();
        shutdown.spawn(async move {
            tokio::select! {
                () = proxy.health_check_loop(pool, stop) => {}
                () = shutdown_token.cancelled() => {}
            }
        });
    }
    let web = &config.web;
    let files = StaticFiles::new(
        CacheLimits {
            validity: Duration::from_millis(web.cache_validity_ms),
            max_file_bytes: web.cache_max_file_bytes,
            max_bytes: web.cache_max_bytes,
            max_entries: 100_000,
        },
        web.compress_min_bytes,
    );
    Ok(Generation {
        config,
        sites,
        files,
        health_checks,
    })
}

/// Runs the web role on its bound `http` and `https` listeners until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), WebError> {
    let mut server = RoleServer::new(Role::Web, Arc::clone(&config), shutdown.clone());
    let metrics = observe::WebMetrics::register(server.registry_mut());
    let web = &config.web;
    let proxy = Proxy::new(
        Duration::from_secs(web.proxy_connect_timeout_secs),
        Duration::from_secs(web.proxy_response_timeout_secs),
    );
    let generation =
        build_generation(Arc::clone(&config), &proxy, &shutdown).map_err(WebError::Sites)?;
    let default_cert = server.tls()?;
    let sni = Arc::new(sni::SniResolver::new(default_cert, &generation.sites));
    let http = listeners.take("http")?;
    let https = listeners.take("https")?;
    let state = Arc::new(WebState {
        generation: ArcSwap::from_pointee(generation),
        proxy,
        metrics,
        https_port: https.local_addr.port(),
        sni: Arc::clone(&sni),
    });

    let health = server.health_routes();
    let router = |https: bool| -> Router {
        let sites = Router::new()
            .fallback(handler::handle)
            .with_state(handler::Listener {
                state: Arc::clone(&state),
                https,
            });
        health.clone().fallback_service(sites)
    };
    let options = |tls: Option<TlsAcceptor>| HttpOptions {
        tls,
        header_read_timeout: Duration::from_secs(web.header_timeout_secs.max(1)),
        max_header_bytes: web.max_header_bytes,
        limits: AcceptLimits {
            max_connections: web.max_connections.max(1),
        },
    };
    server.serve_http_with(http, router(false), options(None));
    let acceptor = TlsAcceptor::with_resolver(
        sni as Arc<dyn rustls::server::ResolvesServerCert>,
        &ALPN_HTTP,
    )?;
    server.serve_http_with(https, router(true), options(Some(acceptor)));

    // SIGHUP: rebuild everything from the re-read configuration; keep the old on error.
    let reload_state = Arc::clone(&state);
    let reload_shutdown = shutdown.clone();
    shutdown.spawn(async move {
        let mut reloads = reload_shutdown.reloads();
        loop {
            tokio::select! {
                changed = reloads.changed() => if changed.is_err() { break },
                () = reload_shutdown.cancelled() => break,
            }
            let Some(config) = reload_shutdown.reloaded_config() else {
                continue;
            };
            match build_generation(config, &reload_state.proxy, &reload_shutdown) {
                Ok(generation) => {
                    reload_state.sni.rebuild(&generation.sites);
                    reload_state.generation.store(Arc::new(generation));
                    tracing::info!(role = "web", "sites reloaded");
                }
                Err(err) => tracing::error!(role = "web", "sites not reloaded: {err}"),
            }
        }
    });

    server.run_until_shutdown().await;
    Ok(())
}
