//! App traffic on `app.http_listen`: `Host: {app}.{domain}` or one of the app's own domains →
//! the app's `web` processes (round-robin), through the shared reverse proxy (keep-alive,
//! `X-Forwarded-*`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::HOST;
use axum::response::{IntoResponse, Response};
use common::proxy::{Forwarding, Proxy};

use crate::apps::Apps;

#[derive(Debug, Clone)]
pub struct Router {
    pub apps: Arc<Apps>,
    pub proxy: Proxy,
    /// `.localhost` for domain `localhost`.
    pub suffix: String,
    /// Gets the traffic no Host names (`quartet app local`, which runs one app).
    pub fallback_app: Option<String>,
}

pub async fn route(State(router): State<Router>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let (parts, body): (_, Body) = request.into_parts();
    let raw_host = parts
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned();
    let host = raw_host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(raw_host.as_str(), |(host, _)| host)
        .to_ascii_lowercase();
    let domains = router.apps.domains.load();
    let Some(app) = domains
        .get(&host)
        .map(String::as_str)
        .or_else(|| host.strip_suffix(&router.suffix))
        .or(router.fallback_app.as_deref())
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("no app answers for {host:?}\n"),
        )
            .into_response();
    };
    let Some(upstreams) = router.apps.routes.load().get(app).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            format!("app {app:?} has no running release\n"),
        )
            .into_response();
    };
    let forwarding = Forwarding {
        peer: peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        https: false,
        host: Some(raw_host.clone()),
    };
    match router
        .proxy
        .forward(&upstreams, None, &parts, body, &forwarding)
        .await
    {
        Ok(response) => response,
        Err(failure) => (failure.status(), "the app is not answering\n").into_response(),
    }
}
