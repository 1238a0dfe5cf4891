//! The outbound queue over HTTP:
//!
//! - `GET /api/v1/queue`: one entry per recipient;
//! - `POST /api/v1/queue/{id}/retry`: its pending recipients are tried now;
//! - `DELETE /api/v1/queue/{id}`: dropped, neither delivered nor bounced.
//!
//! An account sees what it submitted; development sees everything.

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{Api, Viewer, caller, error, unavailable};
use crate::store::QueuedRecipient;

pub(super) fn routes() -> axum::Router<Api> {
    axum::Router::new()
        .route("/api/v1/queue", get(list_queue))
        .route("/api/v1/queue/{id}", axum::routing::delete(delete_queued))
        .route("/api/v1/queue/{id}/retry", post(retry_queued))
}

/// The entries the viewer may see.
async fn visible(api: &Api, viewer: &Viewer) -> Result<Vec<QueuedRecipient>, Response> {
    let all = api.store.queue().await.map_err(|_| unavailable())?;
    let Some(account) = viewer.account() else {
        return Ok(all);
    };
    // By who submitted it, not by the sender address (which aliases share).
    Ok(all
        .into_iter()
        .filter(|entry| entry.account.as_deref() == Some(account))
        .collect())
}

async fn list_queue(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let viewer = match caller(&api, &headers, peer.ip(), false).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    match visible(&api, &viewer).await {
        Ok(entries) => Json(json!({ "queue": entries })).into_response(),
        Err(response) => response,
    }
}

/// Entry `id`, if the caller may act on it.
async fn owned(
    api: &Api,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    id: i64,
) -> Result<(), Response> {
    let viewer = caller(api, headers, peer, true).await?;
    let entries = visible(api, &viewer).await?;
    if entries.iter().any(|e| e.queue_id == id) {
        Ok(())
    } else {
        Err(error(StatusCode::NOT_FOUND, "no such queue entry"))
    }
}

async fn retry_queued(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = owned(&api, &headers, peer.ip(), id).await {
        return response;
    }
    match api.store.retry_now(id).await {
        Ok(true) => {
            api.outbound.notify_one();
            Json(json!({ "retried": id })).into_response()
        }
        Ok(false) => error(StatusCode::CONFLICT, "nothing pending in this entry"),
        Err(_) => unavailable(),
    }
}

async fn delete_queued(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = owned(&api, &headers, peer.ip(), id).await {
        return response;
    }
    match api.store.delete_queued(id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such queue entry"),
        Err(_) => unavailable(),
    }
}
