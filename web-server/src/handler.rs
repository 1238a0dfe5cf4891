//! One request through the web role: limits → HTTPS redirect → site by host → redirects →
//! authentication → proxy route or static files → error page → security and site headers →
//! access log and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY,
    TRANSFER_ENCODING, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, request};
use axum::response::Response;

use crate::observe::{self, AccessRecord};
use crate::sites::Site;
use crate::static_files::Refusal;
use crate::{Generation, WebState, welcome};
use common::proxy::Forwarding;

/// Which listener a request came in on.
#[derive(Debug, Clone)]
pub struct Listener {
    pub state: Arc<WebState>,
    pub https: bool,
}

/// A response and whether we made it (error pages replace only our own errors, never an
/// upstream's).
struct Outcome {
    response: Response,
    ours: bool,
}

impl Outcome {
    fn ours(response: Response) -> Self {
        Self {
            response,
            ours: true,
        }
    }
}

pub async fn handle(State(listener): State<Listener>, request: Request) -> Response {
    let started = Instant::now();
    let state = &listener.state;
    let generation = state.generation.load_full();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let (parts, body) = request.into_parts();
    let host = request_host(&parts);
    let site = generation.sites.for_host(host.as_deref()).cloned();
    // Rules match the decoded, normalised path, so no spelling of a path slips past them.
    let path = crate::static_files::path::normalize(parts.uri.path()).ok();

    let outcome = dispatch(
        &listener,
        &generation,
        site.as_ref(),
        &parts,
        path.as_deref(),
        body,
        peer,
        host.as_deref(),
    )
    .await;
    let mut response = outcome.response;
    let status = response.status();
    let rule_path = path.as_deref().unwrap_or("");
    if let Some(site) = &site {
        if outcome.ours && status.as_u16() >= 400 {
            response = with_error_page(&generation, site, &parts, response);
        }
        for rule in &site.header_rules {
            if rule.matcher.is_match(rule_path) {
                for (name, value) in &rule.set {
                    match value {
                        Some(value) => {
                            response.headers_mut().insert(name.clone(), value.clone());
                        }
                        None => {
                            response.headers_mut().remove(name);
                        }
                    }
                }
            }
        }
    }
    add_security_headers(&listener, &generation, response.headers_mut());
    // Site rules may remove a default: apply removals once more after the defaults.
    if let Some(site) = &site {
        for rule in &site.header_rules {
            if rule.matcher.is_match(rule_path) {
                for (name, value) in &rule.set {
                    if value.is_none() {
                        response.headers_mut().remove(name);
                    }
                }
            }
        }
    }

    let bytes = if parts.method == axum::http::Method::HEAD {
        0
    } else {
        response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or_else(|| axum::body::HttpBody::size_hint(response.body()).exact())
            .unwrap_or(0)
    };
    let site_name = site.as_ref().map_or("none", |s| s.name.as_str());
    let elapsed = started.elapsed();
    state
        .metrics
        .record(site_name, response.status(), bytes, elapsed);
    if generation.config.web.access_log {
        observe::log(
            &AccessRecord {
                peer,
                method: &parts.method,
                uri: &parts.uri,
                version: parts.version,
                headers: &parts.headers,
                status: response.status(),
                bytes,
                site: site_name,
                elapsed,
            },
            !generation.config.environment.is_strict(),
        );
    }
    response
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    listener: &Listener,
    generation: &Generation,
    site: Option<&Arc<Site>>,
    parts: &request::Parts,
    path: Option<&str>,
    body: Body,
    peer: Option<SocketAddr>,
    host: Option<&str>,
) -> Outcome {
    let config = &generation.config;
    if let Some(refusal) = check_limits(parts, config.web.max_uri_bytes) {
        return Outcome::ours(refusal);
    }
    let Some(path) = path else {
        // `..` in any encoding, or not UTF-8: nothing to match rules against, nothing to serve.
        return Outcome::ours(text(StatusCode::BAD_REQUEST, "bad request\n"));
    };

    // Staging and production: plain HTTP only redirects (ACME challenges excepted).
    if !listener.https
        && config.environment.is_strict()
        && !path.starts_with("/.well-known/acme-challenge/")
    {
        let Some(host) = host else {
            return Outcome::ours(text(StatusCode::BAD_REQUEST, "missing Host\n"));
        };
        let port = listener.state.https_port;
        let authority = if port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        return Outcome::ours(redirect(
            StatusCode::MOVED_PERMANENTLY,
            &format!("https://{authority}{target}"),
        ));
    }

    let Some(site) = site else {
        return Outcome::ours(text(
            StatusCode::NOT_FOUND,
            "no site is configured for this host\n",
        ));
    };

    for rule in &site.redirects {
        let target = if rule.prefix {
            path.strip_prefix(rule.from.as_str())
                .map(|rest| format!("{}{rest}", rule.to))
        } else {
            (path == rule.from).then(|| rule.to.clone())
        };
        if let Some(mut target) = target {
            if let Some(query) = parts.uri.query()
                && !target.contains('?')
            {
                target.push('?');
                target.push_str(query);
            }
            return Outcome::ours(redirect(rule.status, &target));
        }
    }

    if let Some(rule) = site.auth.iter().find(|rule| path_under(path, &rule.path))
        && !crate::auth::authorized(rule, &parts.headers).await
    {
        let mut response = text(StatusCode::UNAUTHORIZED, "authentication required\n");
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, rule.challenge.clone());
        return Outcome::ours(response);
    }

    if let Some(route) = site
        .proxies
        .iter()
        .find(|route| path_under(path, &route.path))
    {
        // The host as the client sent it, port included (HTTP/2 sends it as the authority).
        let original_host = parts
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .map(str::to_owned);
        let forwarding = Forwarding {
            peer: peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            https: listener.https,
            host: original_host,
        };
        return match listener
            .state
            .proxy
            .forward(
                &route.upstreams,
                route.strip_prefix.then_some(route.path.as_str()),
                parts,
                body,
                &forwarding,
            )
            .await
        {
            Ok(response) => Outcome {
                response,
                ours: false,
            },
            Err(failure) => Outcome::ours(text(
                failure.status(),
                match failure.status() {
                    StatusCode::GATEWAY_TIMEOUT => "the upstream did not answer in time\n",
                    _ => "the upstream is unavailable\n",
                },
            )),
        };
    }

    if site.welcome && path == "/_quartet/status" {
        return Outcome::ours(welcome::status(config, &listener.state.proxy).await);
    }
    let Some(files) = &site.files else {
        if site.welcome && path == "/" {
            return Outcome::ours(welcome::page(config));
        }
        return Outcome::ours(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    match generation.files.serve(files, parts) {
        Ok(response) => Outcome::ours(response),
        Err(_) if site.welcome && path == "/" => Outcome::ours(welcome::page(config)),
        Err(Refusal::NotFound) => Outcome::ours(text(StatusCode::NOT_FOUND, "not found\n")),
        Err(Refusal::Forbidden) => Outcome::ours(text(StatusCode::FORBIDDEN, "forbidden\n")),
        Err(Refusal::BadRequest) => Outcome::ours(text(StatusCode::BAD_REQUEST, "bad request\n")),
    }
}

/// 414 for an over-long target; 400 for the shapes request smuggling relies on: both
/// `Content-Length` and `Transfer-Encoding`, or several differing `Content-Length`s.
fn check_limits(parts: &request::Parts, max_uri_bytes: usize) -> Option<Response> {
    let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > max_uri_bytes {
        return Some(text(StatusCode::URI_TOO_LONG, "URI too long\n"));
    }
    let lengths: Vec<&HeaderValue> = parts.headers.get_all(CONTENT_LENGTH).iter().collect();
    if !lengths.is_empty() && parts.headers.contains_key(TRANSFER_ENCODING) {
        return Some(text(
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding\n",
        ));
    }
    if lengths.windows(2).any(|pair| pair[0] != pair[1]) {
        return Some(text(
            StatusCode::BAD_REQUEST,
            "conflicting Content-Length\n",
        ));
    }
    None
}

/// The host a request is for: `Host` (HTTP/1.1) or the URI's authority (HTTP/2), without port.
fn request_host(parts: &request::Parts) -> Option<String> {
    let raw = parts
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))?;
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                host
            } else {
                raw
            }
        })
    };
    Some(host.to_ascii_lowercase())
}

/// `path` is `prefix` or lies under it (`/api` matches `/api` and `/api/x`, not `/apix`).
fn path_under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix.trim_end_matches('/'))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn with_error_page(
    generation: &Generation,
    site: &Site,
    parts: &request::Parts,
    response: Response,
) -> Response {
    let status = response.status();
    let (Some(page), Some(files)) = (site.error_pages.get(&status.as_u16()), &site.files) else {
        return response;
    };
    match generation.files.file_response(files, page, status, parts) {
        Some(mut page) => {
            for name in [
                WWW_AUTHENTICATE,
                axum::http::header::ALLOW,
                axum::http::header::CONTENT_RANGE,
            ] {
                if let Some(value) = response.headers().get(&name) {
                    page.headers_mut().insert(name, value.clone());
                }
            }
            page
        }
        None => response,
    }
}

/// Defaults every response carries unless the response or the site says otherwise.
fn add_security_headers(listener: &Listener, generation: &Generation, headers: &mut HeaderMap) {
    headers
        .entry(X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("strict-origin-when-cross-origin"));
    headers
        .entry(X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("SAMEORIGIN"));
    if listener.https && generation.config.environment.is_strict() {
        let value = format!("max-age={}", generation.config.web.hsts_max_age_secs);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.entry(STRICT_TRANSPORT_SECURITY).or_insert(value);
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut response = text(status, "");
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::path_under;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_under("/api", "/api"));
        assert!(path_under("/api/x", "/api"));
        assert!(path_under("/api/x", "/api/"));
        assert!(!path_under("/apix", "/api"));
        assert!(path_under("/anything", "/"));
    }
}
