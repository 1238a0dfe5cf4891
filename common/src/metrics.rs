//! Prometheus metrics and health: one registry per role (no global recorder, so several roles
//! share a process), served with `/healthz` on the role's HTTP listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::environment::Environment;
use crate::role::Role;

/// A new registry for `role`, with `quartet_build_info` and `quartet_start_time_seconds`.
pub fn registry(role: Role, environment: Environment) -> Registry {
    let mut registry = Registry::with_prefix("quartet");
    registry.register(
        "build",
        "Version, role and environment of this server",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("role", role.name().to_owned()),
            ("environment", environment.as_str().to_owned()),
        ]),
    );
    let started: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    started.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    );
    registry.register(
        "start_time_seconds",
        "Start time of the role since the Unix epoch, in seconds",
        started,
    );
    registry
}

/// Whether a role is ready for traffic: false while starting and once shutdown begins, so a
/// load balancer stops sending requests before connections close.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct HealthState {
    registry: Arc<Registry>,
    readiness: Readiness,
    started: Instant,
}

/// `GET /healthz` (200 when ready, 503 otherwise) and `GET /metrics` (Prometheus text).
pub fn health_routes<S>(registry: Arc<Registry>, readiness: Readiness) -> Router<S> {
    let state = HealthState {
        registry,
        readiness,
        started: Instant::now(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<HealthState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (
            StatusCode::OK,
            format!("ok\nuptime_seconds {}\n", state.started.elapsed().as_secs()),
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
    }
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    let mut body = String::new();
    match encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "cannot encode metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn healthz_is_503_until_ready_and_after() {
        let readiness = Readiness::default();
        let registry = Arc::new(registry(Role::Web, Environment::Development));
        let router: Router = health_routes(registry, readiness.clone());
        let status = |router: Router| async move {
            let request = axum::http::Request::get("/healthz")
                .body(axum::body::Body::empty())
                .unwrap();
            router.oneshot(request).await.unwrap().status()
        };
        assert_eq!(
            status(router.clone()).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_ready(true);
        assert_eq!(status(router.clone()).await, StatusCode::OK);
        readiness.set_ready(false);
        assert_eq!(status(router).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
