//! Browser sessions for the web inbox (staging and production):
//!
//! - `POST /api/v1/login` with `{"address", "password"}`: sets the session cookie and answers
//!   the account and its CSRF token;
//! - `GET /api/v1/session`: who is logged in (401 if nobody), with the CSRF token;
//! - `POST /api/v1/logout`: ends the session.
//!
//! The cookie is random (256 bits), HttpOnly (scripts cannot read it), SameSite=Strict (other
//! sites' pages do not send it) and Secure when the listener speaks TLS; sessions live in
//! memory for 12 hours, so a restart logs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{Api, Viewer, caller, cookie, error, login_outcome};

pub(super) const COOKIE: &str = "quartet_mail_session";
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most; the oldest go first.
const MAX_SESSIONS: usize = 10_000;

pub(super) fn routes() -> axum::Router<Api> {
    axum::Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/session", get(session))
}

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct WebSession {
    pub account: String,
    pub csrf: String,
    expires: Instant,
}

/// The live browser sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, WebSession>>,
}

fn random_token() -> String {
    use ring::rand::SecureRandom as _;
    let mut raw = [0u8; 32];
    // The system's generator does not fail on Linux; a failure leaves zeros, which the
    // check below refuses rather than hand out.
    let _ = ring::rand::SystemRandom::new().fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares tokens in time that does not depend on where they differ.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !b.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Starts a session for `account`; returns its cookie token.
    pub fn start(&self, account: &str) -> Option<(String, WebSession)> {
        let token = random_token();
        let csrf = random_token();
        if token.bytes().all(|b| b == b'0') {
            return None;
        }
        let session = WebSession {
            account: account.to_owned(),
            csrf,
            expires: Instant::now() + LIFETIME,
        };
        let mut sessions = self.sessions.lock().ok()?;
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(token, _)| token.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(token.clone(), session.clone());
        Some((token, session))
    }

    pub fn get(&self, token: &str) -> Option<WebSession> {
        let sessions = self.sessions.lock().ok()?;
        sessions
            .get(token)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    pub fn end(&self, token: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(token);
        }
    }
}

fn set_cookie(api: &Api, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if api.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .ok()
}

#[derive(Debug, serde::Deserialize)]
struct Credentials {
    address: String,
    password: String,
}

async fn login(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(credentials): Json<Credentials>,
) -> Response {
    if super::cross_site(&headers) {
        return error(StatusCode::FORBIDDEN, "log in from this site's page");
    }
    if api.open {
        return Json(json!({ "account": null, "csrf": null, "open": true })).into_response();
    }
    let login = api
        .logins
        .login(
            peer.ip(),
            "http",
            &credentials.address,
            credentials.password,
        )
        .await;
    let account = match login_outcome(login, &headers) {
        Ok(account) => account,
        Err(response) => return response,
    };
    let Some((token, session)) = api.sessions.start(&account) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no session could be started",
        );
    };
    let mut response =
        Json(json!({ "account": account, "csrf": session.csrf, "open": false })).into_response();
    if let Some(cookie) = set_cookie(&api, &token, LIFETIME.as_secs()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

async fn logout(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, COOKIE) {
        api.sessions.end(&token);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = set_cookie(&api, "", 0) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

async fn session(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if api.open {
        return Json(json!({ "account": null, "csrf": null, "open": true })).into_response();
    }
    let csrf = cookie(&headers, COOKIE)
        .and_then(|token| api.sessions.get(&token))
        .map(|session| session.csrf);
    match caller(&api, &headers, peer.ip(), false).await {
        Ok(Viewer::Account(account)) => {
            Json(json!({ "account": account, "csrf": csrf, "open": false })).into_response()
        }
        Ok(Viewer::Everyone) => {
            Json(json!({ "account": null, "csrf": null, "open": true })).into_response()
        }
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_start_find_and_end() {
        let sessions = Sessions::default();
        let (token, session) = sessions.start("ann@example.test").expect("started");
        assert_eq!(token.len(), 64);
        assert_ne!(token, session.csrf);
        assert_eq!(
            sessions.get(&token).map(|s| s.account),
            Some("ann@example.test".to_owned())
        );
        assert!(sessions.get("nope").is_none());
        sessions.end(&token);
        assert!(sessions.get(&token).is_none());
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("", ""));
    }
}
