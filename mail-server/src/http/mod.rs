//! The web inbox and its JSON API on `mail.http_listen`.
//!
//! - `/`: the inbox page ([`page`]): the message list with live updates, search, a message
//!   view, and the outbound queue.
//! - `/api/v1/messages…`: messages ([`messages`]); `/api/v1/events`: a server-sent event per
//!   change to any mailbox.
//! - `/api/v1/queue…`: the outbound queue ([`queue`]).
//! - `/api/v1/login`, `/api/v1/logout`, `/api/v1/session`: browser sessions ([`sessions`]).
//!
//! Development needs no login and shows every mailbox, captured outbound mail included (as
//! Mailpit does). Staging and production need a login: a browser session (an HttpOnly,
//! SameSite=Strict cookie, Secure when served over TLS, whose changes must carry the session's
//! CSRF token in `X-CSRF-Token`), or HTTP Basic with an account's address and password; each
//! account sees only its own mailboxes and what it submitted.

mod messages;
mod page;
mod queue;
mod sessions;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::http::header::{AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{Login, Logins};
use crate::store::Store;

pub use sessions::Sessions;

#[derive(Clone)]
pub struct Api {
    pub store: Store,
    /// Development: no login, everything visible.
    pub open: bool,
    pub outbound: Arc<tokio::sync::Notify>,
    pub logins: Arc<Logins>,
    pub sessions: Arc<Sessions>,
    /// Session cookies get `Secure` (the listener speaks TLS).
    pub secure_cookies: bool,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("open", &self.open).finish()
    }
}

pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .merge(page::routes())
        .merge(messages::routes())
        .merge(queue::routes())
        .merge(sessions::routes())
        .with_state(api)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// 401 with a Basic challenge for API clients; the inbox page (which says so with
/// `X-Quartet-Inbox`) gets none, so the browser shows the page's login form rather than its
/// own dialog, whose remembered credentials "Log out" could not forget.
fn unauthorized(headers: &HeaderMap, message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    if !headers.contains_key("x-quartet-inbox") {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"quartet-mail\", charset=\"UTF-8\""),
        );
    }
    response
}

/// Whether a browser sent this request from another site's page (Fetch Metadata, or an
/// Origin that is not this host): such a request may not change anything, whatever
/// credentials the browser attached to it.
fn cross_site(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            origin_host != host
        }
        (Some(_), None) => true,
        _ => false,
    }
}

fn unavailable() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Viewer {
    /// Development: everything is visible.
    Everyone,
    Account(String),
}

impl Viewer {
    /// The account the caller is limited to (`None`: no limit).
    fn account(&self) -> Option<&str> {
        match self {
            Viewer::Everyone => None,
            Viewer::Account(account) => Some(account),
        }
    }
}

/// A request's cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Who is asking; `change` requests from a browser session must carry its CSRF token.
async fn caller(
    api: &Api,
    headers: &HeaderMap,
    peer: IpAddr,
    change: bool,
) -> Result<Viewer, Response> {
    use base64::Engine as _;
    if change && cross_site(headers) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "changes are not accepted from other sites' pages",
        ));
    }
    if api.open {
        return Ok(Viewer::Everyone);
    }
    if let Some(token) = cookie(headers, sessions::COOKIE)
        && let Some(session) = api.sessions.get(&token)
    {
        if change {
            let sent = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !sessions::same(sent, &session.csrf) {
                return Err(error(StatusCode::FORBIDDEN, "missing or wrong CSRF token"));
            }
        }
        return Ok(Viewer::Account(session.account));
    }
    let unauthorized = || unauthorized(headers, "log in with your address and password");
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
    login_outcome(
        api.logins
            .login(peer, "http", user, password.to_owned())
            .await,
        headers,
    )
    .map(Viewer::Account)
}

// The error is the HTTP answer itself, returned straight to axum.
#[allow(clippy::result_large_err)]
fn login_outcome(login: Login, headers: &HeaderMap) -> Result<String, Response> {
    match login {
        Login::Accepted(account) => Ok(account),
        Login::Refused => Err(unauthorized(headers, "wrong address or password")),
        Login::Blocked => Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins, try later",
        )),
        Login::Unavailable => Err(unavailable()),
    }
}
