//! A pool of upstreams for one route: round-robin, passive failure marking (an upstream that
//! fails to connect is skipped for a while) and an active health check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::Uri;
use axum::http::uri::{Authority, Scheme};

/// How long an upstream that failed is skipped (nginx's `fail_timeout`).
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the upstream URL (`http://host:port/base`), without a trailing slash.
    pub base_path: String,
    /// Passive: milliseconds since `epoch` until which this upstream is skipped.
    down_until_ms: AtomicU64,
    /// Active: the last health check's verdict.
    healthy: AtomicBool,
}

#[derive(Debug)]
pub struct Upstreams {
    pub list: Vec<Upstream>,
    next: AtomicUsize,
    epoch: Instant,
    pub health_path: String,
    pub health_interval: Duration,
}

impl Upstreams {
    pub fn parse(
        urls: &[String],
        health_path: &str,
        interval_secs: u64,
    ) -> Result<Arc<Self>, String> {
        let mut list = Vec::new();
        for url in urls {
            let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
            let scheme = uri
                .scheme()
                .cloned()
                .ok_or_else(|| format!("{url:?} has no scheme"))?;
            if scheme != Scheme::HTTP {
                return Err(format!("{url:?}: only http:// upstreams are supported"));
            }
            let authority = uri
                .authority()
                .cloned()
                .ok_or_else(|| format!("{url:?} has no host"))?;
            list.push(Upstream {
                scheme,
                authority,
                base_path: uri.path().trim_end_matches('/').to_owned(),
                down_until_ms: AtomicU64::new(0),
                healthy: AtomicBool::new(true),
            });
        }
        if !health_path.starts_with('/') {
            return Err(format!("health_check {health_path:?} must start with /"));
        }
        Ok(Arc::new(Self {
            list,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            health_path: health_path.to_owned(),
            health_interval: Duration::from_secs(interval_secs.max(1)),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Upstreams to try, in order: the available ones round-robin, then (as a last resort)
    /// the ones marked down, so a request is never refused without an attempt.
    pub fn order(&self) -> Vec<usize> {
        let count = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let (mut up, mut down): (Vec<usize>, Vec<usize>) =
            (0..count).map(|i| (start + i) % count).partition(|&i| {
                let upstream = &self.list[i];
                upstream.healthy.load(Ordering::Relaxed)
                    && upstream.down_until_ms.load(Ordering::Relaxed) <= now
            });
        up.append(&mut down);
        up
    }

    pub fn mark_failed(&self, index: usize) {
        if let Some(upstream) = self.list.get(index) {
            let until = self.now_ms() + FAIL_TIMEOUT.as_millis() as u64;
            upstream.down_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(upstream = %upstream.authority, "upstream failed; skipping it for {}s", FAIL_TIMEOUT.as_secs());
        }
    }

    pub fn mark_ok(&self, index: usize) {
        if let Some(upstream) = self.list.get(index) {
            upstream.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    pub fn set_healthy(&self, index: usize, healthy: bool) {
        if let Some(upstream) = self.list.get(index) {
            let was = upstream.healthy.swap(healthy, Ordering::Relaxed);
            if was != healthy {
                if healthy {
                    upstream.down_until_ms.store(0, Ordering::Relaxed);
                    tracing::info!(upstream = %upstream.authority, "upstream healthy again");
                } else {
                    tracing::warn!(upstream = %upstream.authority, "upstream failed its health check");
                }
            }
        }
    }
}
