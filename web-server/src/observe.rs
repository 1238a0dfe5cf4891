//! The access log and the web role's request metrics.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, Uri, Version};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SiteStatus {
    site: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SiteLabel {
    site: String,
}

#[derive(Debug, Clone)]
pub struct WebMetrics {
    requests: Family<SiteStatus, Counter>,
    bytes: Family<SiteLabel, Counter>,
    latency: Family<SiteLabel, Histogram>,
}

impl WebMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            bytes: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
            }),
        };
        registry.register(
            "web_requests",
            "Requests answered, by site and status",
            metrics.requests.clone(),
        );
        registry.register(
            "web_response_bytes",
            "Response body bytes sent (as declared by Content-Length), by site",
            metrics.bytes.clone(),
        );
        registry.register(
            "web_request_duration_seconds",
            "Time to the response head, by site",
            metrics.latency.clone(),
        );
        metrics
    }

    pub fn record(&self, site: &str, status: StatusCode, bytes: u64, elapsed: Duration) {
        self.requests
            .get_or_create(&SiteStatus {
                site: site.to_owned(),
                status: status.as_u16(),
            })
            .inc();
        let label = SiteLabel {
            site: site.to_owned(),
        };
        self.bytes.get_or_create(&label).inc_by(bytes);
        self.latency
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }
}

/// One request, for the access log.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    pub peer: Option<SocketAddr>,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
    pub status: StatusCode,
    pub bytes: u64,
    pub site: &'a str,
    pub elapsed: Duration,
}

/// Writes one access-log line: the combined format (as nginx and Apache write it) when
/// `combined`, else structured fields (JSON in staging and production).
pub fn log(record: &AccessRecord<'_>, combined: bool) {
    let header = |name: &str| {
        record
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let peer = record
        .peer
        .map(|p| p.ip().to_string())
        .unwrap_or_else(|| "-".into());
    if combined {
        let time = combined_time(std::time::SystemTime::now());
        tracing::info!(
            target: "access",
            "{peer} - - [{time}] \"{} {} {:?}\" {} {} \"{}\" \"{}\"",
            record.method,
            record.uri,
            record.version,
            record.status.as_u16(),
            record.bytes,
            header("referer").replace('"', "%22"),
            header("user-agent").replace('"', "%22"),
        );
    } else {
        tracing::info!(
            target: "access",
            peer = %peer,
            method = %record.method,
            uri = %record.uri,
            version = ?record.version,
            status = record.status.as_u16(),
            bytes = record.bytes,
            site = record.site,
            referer = %header("referer"),
            user_agent = %header("user-agent"),
            duration_ms = record.elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// `10/Oct/2000:13:55:36 +0000`, the time format of the combined log.
fn combined_time(now: std::time::SystemTime) -> String {
    // From the HTTP date "Tue, 10 Oct 2000 13:55:36 GMT".
    let http = httpdate::fmt_http_date(now);
    let parts: Vec<&str> = http.split_whitespace().collect();
    match parts.as_slice() {
        [_, day, month, year, time, _] => format!("{day}/{month}/{year}:{time} +0000"),
        _ => http,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn combined_log_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(971_186_136);
        assert_eq!(super::combined_time(t), "10/Oct/2000:13:55:36 +0000");
    }
}
