//! Binding a role's listeners and accepting connections on them.
//!
//! Binding happens outside the role (in `main`, `quartet up` or a test, on port 0 if it likes)
//! and the role receives the bound sockets. That is what lets one process run several roles
//! and what leaves socket activation and privilege dropping possible.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::role::{ListenerSpec, Role};
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("{key}: {reason}")]
    BadAddress { key: &'static str, reason: String },
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {role} role has no listener named {name:?}")]
    Missing { role: Role, name: &'static str },
}

/// A socket bound for one of a role's listeners.
#[derive(Debug)]
pub struct BoundListener {
    pub spec: ListenerSpec,
    pub listener: TcpListener,
    pub local_addr: SocketAddr,
}

/// All listeners of one role, bound and ready to accept.
#[derive(Debug)]
pub struct Listeners {
    role: Role,
    bound: Vec<BoundListener>,
}

impl Listeners {
    /// Binds every listener of `role` and logs one line per listener with its bound address.
    pub async fn bind(role: Role, config: &Config) -> Result<Self, ListenerError> {
        let mut bound = Vec::new();
        for spec in role.listeners(config) {
            let addr = spec
                .addr
                .socket_addr()
                .map_err(|reason| ListenerError::BadAddress {
                    key: spec.key,
                    reason,
                })?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ListenerError::Bind {
                    key: spec.key,
                    addr,
                    source,
                })?;
            let local_addr = listener
                .local_addr()
                .map_err(|source| ListenerError::Bind {
                    key: spec.key,
                    addr,
                    source,
                })?;
            tracing::info!(
                role = role.name(),
                listener = spec.name,
                protocol = spec.protocol,
                addr = %local_addr,
                // Tests and scripts find bound ports (port 0) by this exact shape.
                "{} {} listening on {}://{local_addr}",
                role.name(),
                spec.name,
                spec.protocol
            );
            bound.push(BoundListener {
                spec,
                listener,
                local_addr,
            });
        }
        Ok(Self { role, bound })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Takes the listener called `name` (`http`, `smtp`, ...) out of the set.
    pub fn take(&mut self, name: &'static str) -> Result<BoundListener, ListenerError> {
        let index =
            self.bound
                .iter()
                .position(|b| b.spec.name == name)
                .ok_or(ListenerError::Missing {
                    role: self.role,
                    name,
                })?;
        Ok(self.bound.remove(index))
    }

    /// `(spec, bound address)` of every listener still in the set.
    pub fn addresses(&self) -> Vec<(ListenerSpec, SocketAddr)> {
        self.bound
            .iter()
            .map(|b| (b.spec.clone(), b.local_addr))
            .collect()
    }
}

/// Limits every accept loop applies.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Connections served at once on this listener; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
        }
    }
}

/// Per-listener connection metrics.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    accepted: Family<ListenerLabels, Counter>,
    open: Family<ListenerLabels, Gauge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

impl ConnectionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "connections_accepted",
            "Connections accepted, by listener",
            metrics.accepted.clone(),
        );
        registry.register(
            "connections_open",
            "Connections currently open, by listener",
            metrics.open.clone(),
        );
        metrics
    }
}

/// Accepts connections until shutdown, with `TCP_NODELAY` set and at most
/// `limits.max_connections` at once, and runs `handle` for each as a tracked task.
pub async fn accept_loop<H, F>(
    bound: BoundListener,
    limits: AcceptLimits,
    metrics: ConnectionMetrics,
    shutdown: Shutdown,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let labels = ListenerLabels {
        listener: bound.spec.name.to_owned(),
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let handle = Arc::new(handle);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = bound.listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = bound.spec.name, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        metrics.accepted.get_or_create(&labels).inc();
        let open = metrics.open.get_or_create(&labels).clone();
        open.inc();
        let handle = Arc::clone(&handle);
        shutdown.spawn(async move {
            handle(stream, peer).await;
            open.dec();
            drop(permit);
        });
    }
    tracing::debug!(listener = bound.spec.name, "accept loop stopped");
}
