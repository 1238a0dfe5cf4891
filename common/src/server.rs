//! What every role does around its protocols: metrics registry, readiness, TLS, serving its
//! HTTP listener with `/healthz` and `/metrics`, and draining on shutdown. A role's `run`
//! creates a [`RoleServer`], hands it listeners and routers, then awaits
//! [`RoleServer::run_until_shutdown`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::Config;
use crate::http::{ALPN_HTTP, HttpMetrics, HttpOptions};
use crate::listeners::{AcceptLimits, BoundListener, ConnectionMetrics, accept_loop};
use crate::metrics::{Readiness, health_routes, registry};
use crate::role::Role;
use crate::shutdown::{ROLE_DRAIN_TIMEOUT, Shutdown};
use crate::tls::{CertStore, TlsError};

#[derive(Debug)]
pub struct RoleServer {
    pub role: Role,
    pub config: Arc<Config>,
    pub shutdown: Shutdown,
    pub readiness: Readiness,
    registry: Registry,
    connections: ConnectionMetrics,
    http: HttpMetrics,
    tls: Option<Arc<CertStore>>,
}

impl RoleServer {
    pub fn new(role: Role, config: Arc<Config>, shutdown: Shutdown) -> Self {
        let mut registry = registry(role, config.environment);
        let connections = ConnectionMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        Self {
            role,
            config,
            shutdown,
            readiness: Readiness::default(),
            registry,
            connections,
            http,
            tls: None,
        }
    }

    /// The role's registry, for its own metrics. Register before [`Self::health_routes`].
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The role's certificate, loaded (or generated in development) on first use and reloaded
    /// on SIGHUP.
    pub fn tls(&mut self) -> Result<Arc<CertStore>, TlsError> {
        if let Some(store) = &self.tls {
            return Ok(Arc::clone(store));
        }
        let store = CertStore::from_config(&self.config)?;
        store.reload_on_signal(self.role.name(), &self.shutdown);
        self.tls = Some(Arc::clone(&store));
        Ok(store)
    }

    /// `/healthz` and `/metrics`, to merge into the role's HTTP router. Takes the registry:
    /// metrics registered afterwards are not served.
    pub fn health_routes(&mut self) -> Router {
        let registry = std::mem::take(&mut self.registry);
        health_routes(Arc::new(registry), self.readiness.clone())
    }

    /// Serves `router` on `bound`, over TLS with ALPN h2/http1.1 when `tls` is true.
    pub fn serve_http(
        &mut self,
        bound: BoundListener,
        router: Router,
        tls: bool,
    ) -> Result<(), TlsError> {
        let tls = if tls {
            Some(self.tls()?.acceptor(&ALPN_HTTP)?)
        } else {
            None
        };
        let options = HttpOptions {
            tls,
            ..HttpOptions::default()
        };
        self.serve_http_with(bound, router, options);
        Ok(())
    }

    /// Serves `router` on `bound` with explicit options (TLS acceptor, limits).
    pub fn serve_http_with(&mut self, bound: BoundListener, router: Router, options: HttpOptions) {
        self.shutdown.spawn(crate::http::serve(
            bound,
            router,
            options,
            self.http.clone(),
            self.connections.clone(),
            self.shutdown.clone(),
        ));
    }

    /// Accepts connections on `bound` and runs `handle` for each (protocols other than HTTP).
    pub fn serve_connections<H, F>(&self, bound: BoundListener, limits: AcceptLimits, handle: H)
    where
        H: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.shutdown.spawn(accept_loop(
            bound,
            limits,
            self.connections.clone(),
            self.shutdown.clone(),
            handle,
        ));
    }

    /// Answers every connection on `bound` with `reply` and closes it (after a TLS handshake
    /// when `implicit_tls`). For listeners whose protocol is not served yet: a client gets a
    /// protocol-correct refusal instead of a hang.
    pub fn refuse_connections(
        &mut self,
        bound: BoundListener,
        implicit_tls: bool,
        reply: impl Into<Arc<[u8]>>,
    ) -> Result<(), TlsError> {
        let reply: Arc<[u8]> = reply.into();
        let acceptor = if implicit_tls {
            Some(self.tls()?.acceptor(&[])?)
        } else {
            None
        };
        let shutdown = self.shutdown.clone();
        self.serve_connections(bound, AcceptLimits::default(), move |stream, peer| {
            let acceptor = acceptor.clone();
            let reply = Arc::clone(&reply);
            let shutdown = shutdown.clone();
            async move {
                let result = match acceptor {
                    None => write_and_close(stream, &reply).await,
                    Some(acceptor) => {
                        let handshake = tokio::select! {
                            result = acceptor.accept(stream) => result,
                            () = shutdown.cancelled() => return,
                        };
                        match handshake {
                            Ok(tls) => write_and_close(tls, &reply).await,
                            Err(err) => Err(err),
                        }
                    }
                };
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "refusing connection failed");
                }
            }
        });
        Ok(())
    }

    /// Marks the role ready, waits for shutdown, marks it not ready, and drains in-flight work
    /// for at most [`DRAIN_TIMEOUT`].
    pub async fn run_until_shutdown(self) {
        self.readiness.set_ready(true);
        self.shutdown.role_ready();
        tracing::info!(
            role = self.role.name(),
            environment = %self.config.environment,
            "{} ready: serving traffic",
            self.role.name()
        );
        self.shutdown.cancelled().await;
        self.readiness.set_ready(false);
        if !self.shutdown.drain(ROLE_DRAIN_TIMEOUT).await {
            tracing::warn!(
                role = self.role.name(),
                "in-flight work still running after {}s; stopping anyway",
                ROLE_DRAIN_TIMEOUT.as_secs()
            );
        }
        tracing::info!(role = self.role.name(), "stopped");
    }
}

/// Why a role could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listener(#[from] crate::listeners::ListenerError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

async fn write_and_close<S>(mut stream: S, reply: &[u8]) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(reply).await?;
    stream.shutdown().await
}
