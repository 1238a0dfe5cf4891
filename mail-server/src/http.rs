//! The HTTP API on `mail.http_listen` (the web inbox of issue #6 grows here):
//!
//! - `GET /api/v1/queue`: the outbound queue, one entry per recipient;
//! - `POST /api/v1/queue/{id}/retry`: its pending recipients are tried now;
//! - `DELETE /api/v1/queue/{id}`: dropped, neither delivered nor bounced.
//!
//! Development needs no login and shows everything (as Mailpit does). Staging and production
//! need HTTP Basic with an account's address and password, and show only what that account
//! submitted.

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::auth::{Login, Logins};
use crate::store::{QueuedRecipient, Store};

#[derive(Clone)]
pub struct Api {
    pub store: Store,
    /// Development: no login, everything visible.
    pub open: bool,
    pub outbound: Arc<tokio::sync::Notify>,
    pub logins: Arc<Logins>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("open", &self.open).finish()
    }
}

pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/queue", get(list_queue))
        .route("/api/v1/queue/{id}", axum::routing::delete(delete_queued))
        .route("/api/v1/queue/{id}/retry", post(retry_queued))
        .with_state(api)
}

fn error(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"quartet-mail\", charset=\"UTF-8\""),
        );
    }
    response
}

/// Who is asking: `None` when every entry may be seen (development).
async fn caller(
    api: &Api,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
) -> Result<Option<String>, Response> {
    use base64::Engine as _;
    if api.open {
        return Ok(None);
    }
    let unauthorized = || {
        error(
            StatusCode::UNAUTHORIZED,
            "log in with your address and password",
        )
    };
    if api.logins.blocked(peer) {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins, try later",
        ));
    }
    let encoded = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or_else(unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(unauthorized)?;
    let (user, password) = decoded.split_once(':').ok_or_else(unauthorized)?;
    match api
        .logins
        .login(peer, "http", user, password.to_owned())
        .await
    {
        Login::Accepted(account) => Ok(Some(account)),
        Login::Refused => Err(unauthorized()),
        Login::Blocked => Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins, try later",
        )),
        Login::Unavailable => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is unavailable",
        )),
    }
}

/// The entries `account` may see (all with `None`).
async fn visible(api: &Api, account: Option<&str>) -> Result<Vec<QueuedRecipient>, Response> {
    let all = api
        .store
        .queue()
        .await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"))?;
    let Some(account) = account else {
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
    let account = match caller(&api, &headers, peer.ip()).await {
        Ok(account) => account,
        Err(response) => return response,
    };
    match visible(&api, account.as_deref()).await {
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
    let account = caller(api, headers, peer).await?;
    let entries = visible(api, account.as_deref()).await?;
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
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
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
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
    }
}
