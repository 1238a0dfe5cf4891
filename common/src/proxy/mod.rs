//! The reverse proxy the web role (routes to upstreams) and the app role (routes to app
//! processes) share: forwards a request to one of a pool's upstreams over a keep-alive
//! connection pool, with forwarding headers, WebSocket (and any HTTP/1.1 upgrade)
//! pass-through, connect and response timeouts, and 502/504 when the upstream cannot answer.

mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{CONNECTION, HOST, UPGRADE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

pub use upstream::Upstreams;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

#[derive(Debug, Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    response_timeout: Duration,
}

/// Why the proxy answered itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFailure {
    /// No upstream accepted the connection or the request failed: 502.
    BadGateway,
    /// The upstream did not send its response head in time: 504.
    Timeout,
}

impl ProxyFailure {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyFailure::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// What the proxy needs to know about the client side.
#[derive(Debug, Clone)]
pub struct Forwarding {
    pub peer: SocketAddr,
    pub https: bool,
    pub host: Option<String>,
}

impl Proxy {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            // Shorter than the keep-alive of common upstreams (60-75 s), so a pooled
            // connection is rarely one the upstream has just closed.
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            response_timeout,
        }
    }

    /// Forwards `request` along `route`. Requests without a body are retried on the next
    /// upstream when one cannot be reached; a request with a body is sent once.
    /// Forwards to one of `upstreams`; with `strip_prefix`, that prefix is removed from the
    /// path first.
    pub async fn forward(
        &self,
        upstreams: &Upstreams,
        strip_prefix: Option<&str>,
        parts: &axum::http::request::Parts,
        body: Body,
        forwarding: &Forwarding,
    ) -> Result<Response<Body>, ProxyFailure> {
        let upgrade = upgrade_protocol(&parts.headers);
        // The upgrade handle lives in the request's extensions (hyper puts it there).
        let client_upgrade = match &upgrade {
            Some(_) => parts.extensions.get::<hyper::upgrade::OnUpgrade>().cloned(),
            None => None,
        };
        let path_and_query = rewrite_path(&parts.uri, strip_prefix);
        let mut headers = forward_headers(&parts.headers, forwarding, upgrade.as_ref());
        // Only an idempotent request with no body may be tried on a second upstream: a body
        // is consumed by the first attempt.
        let retryable = matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        ) && axum::body::HttpBody::size_hint(&body).exact() == Some(0);
        let mut body = Some(body);

        let order = upstreams.order();
        let mut last = ProxyFailure::BadGateway;
        for index in order {
            let upstream = &upstreams.list[index];
            let uri = Uri::builder()
                .scheme(upstream.scheme.clone())
                .authority(upstream.authority.clone())
                .path_and_query(format!("{}{path_and_query}", upstream.base_path))
                .build();
            let Ok(uri) = uri else {
                return Err(ProxyFailure::BadGateway);
            };
            let mut outgoing = Request::new(body.take().unwrap_or_else(Body::empty));
            *outgoing.method_mut() = parts.method.clone();
            *outgoing.uri_mut() = uri;
            *outgoing.headers_mut() = if retryable {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            match tokio::time::timeout(self.response_timeout, self.client.request(outgoing)).await {
                Ok(Ok(mut response)) => {
                    upstreams.mark_ok(index);
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(client_upgrade) = client_upgrade
                    {
                        let upstream_upgrade = hyper::upgrade::on(&mut response);
                        tokio::spawn(async move {
                            let (Ok(client), Ok(upstream)) =
                                (client_upgrade.await, upstream_upgrade.await)
                            else {
                                return;
                            };
                            let mut client = TokioIo::new(client);
                            let mut upstream = TokioIo::new(upstream);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        });
                        let (mut parts, _) = response.into_parts();
                        strip_hop_by_hop(&mut parts.headers, true);
                        return Ok(Response::from_parts(parts, Body::empty()));
                    }
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers, false);
                    return Ok(Response::from_parts(parts, Body::new(body)));
                }
                Ok(Err(err)) => {
                    tracing::warn!(upstream = %upstream.authority, error = %err, "upstream request failed");
                    if err.is_connect() {
                        upstreams.mark_failed(index);
                    }
                    last = ProxyFailure::BadGateway;
                    if !(err.is_connect() && retryable) {
                        break;
                    }
                }
                Err(_) => {
                    tracing::warn!(upstream = %upstream.authority, "upstream did not answer within {}s", self.response_timeout.as_secs());
                    last = ProxyFailure::Timeout;
                    break;
                }
            }
        }
        Err(last)
    }

    /// Checks every upstream of `pool` every `health_interval` until `stop`.
    pub async fn health_check_loop(
        &self,
        pool: Arc<Upstreams>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(pool.health_interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            for (index, upstream) in pool.list.iter().enumerate() {
                let uri = format!(
                    "{}://{}{}{}",
                    upstream.scheme, upstream.authority, upstream.base_path, pool.health_path
                );
                let Ok(uri) = uri.parse::<Uri>() else {
                    continue;
                };
                let mut request = Request::new(Body::empty());
                *request.uri_mut() = uri;
                let check =
                    tokio::time::timeout(Duration::from_secs(2), self.client.request(request))
                        .await;
                let healthy =
                    matches!(&check, Ok(Ok(response)) if response.status().as_u16() < 500);
                pool.set_healthy(index, healthy);
            }
        }
    }

    /// A plain GET for the welcome page's status probes.
    pub async fn probe(&self, uri: Uri) -> Option<StatusCode> {
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = uri;
        match tokio::time::timeout(Duration::from_secs(1), self.client.request(request)).await {
            Ok(Ok(response)) => Some(response.status()),
            _ => None,
        }
    }
}

/// The path (and query) to send upstream.
fn rewrite_path(uri: &Uri, strip_prefix: Option<&str>) -> String {
    let path = uri.path();
    let path = if let Some(prefix) = strip_prefix {
        let rest = path
            .strip_prefix(prefix.trim_end_matches('/'))
            .unwrap_or(path);
        if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        }
    } else {
        path.to_owned()
    };
    match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
}

/// The upgrade a client asks for (`websocket`), if any.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    connection_upgrade
        .then(|| headers.get(UPGRADE).cloned())
        .flatten()
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if !(keep_upgrade && name == UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// The request headers an upstream receives: hop-by-hop ones removed, the original `Host`
/// kept, and `X-Forwarded-For/-Proto/-Host` plus `Forwarded` describing the client.
fn forward_headers(
    incoming: &HeaderMap,
    forwarding: &Forwarding,
    upgrade: Option<&HeaderValue>,
) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers, upgrade.is_some());
    // HTTP/2 clients may split cookies over several fields; an HTTP/1.1 upstream needs one
    // (RFC 9113 §8.2.3).
    let cookies: Vec<&str> = incoming
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if cookies.len() > 1
        && let Ok(joined) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(axum::http::header::COOKIE, joined);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(UPGRADE, upgrade.clone());
    }
    let ip = forwarding.peer.ip().to_string();
    let proto = if forwarding.https { "https" } else { "http" };
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip.clone(),
    };
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    let host = forwarding.host.clone().or_else(|| {
        incoming
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    if let Some(host) = &host
        && let Ok(value) = HeaderValue::from_str(host)
    {
        headers.insert("x-forwarded-host", value.clone());
        if !headers.contains_key(HOST) {
            headers.insert(HOST, value);
        }
    }
    let node = if forwarding.peer.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip
    };
    let mut forwarded = format!("for={node};proto={proto}");
    if let Some(host) = &host {
        forwarded.push_str(&format!(";host=\"{}\"", host.replace(['"', '\\'], "")));
    }
    let forwarded = match headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {forwarded}"),
        None => forwarded,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert("forwarded", value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_describe_the_client() {
        let mut incoming = HeaderMap::new();
        incoming.insert(HOST, HeaderValue::from_static("example.test"));
        incoming.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        incoming.insert("x-secret", HeaderValue::from_static("1"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let forwarding = Forwarding {
            peer: "127.0.0.9:5555".parse().unwrap(),
            https: true,
            host: None,
        };
        let out = forward_headers(&incoming, &forwarding, None);
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "example.test");
        assert_eq!(
            out["forwarded"],
            "for=127.0.0.9;proto=https;host=\"example.test\""
        );
        assert_eq!(out[HOST], "example.test");
        assert!(!out.contains_key(CONNECTION) && !out.contains_key("x-secret"));
    }
}
