//! Serving an axum `Router` on a bound listener, over plain HTTP or TLS (HTTP/1.1 and HTTP/2).
//!
//! `axum::serve` installs no timer, so hyper's header-read timeout would never fire and a
//! slowloris client could hold a connection forever; this uses hyper-util's builder with a
//! timer instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use crate::framing::{Findings, Guarded};
use crate::listeners::{AcceptLimits, BoundListener, ConnectionMetrics, accept_loop};
use crate::shutdown::Shutdown;
use crate::tls::TlsAcceptor;

/// ALPN protocols an HTTPS listener offers.
pub const ALPN_HTTP: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Serve TLS (implicit) with this acceptor; `None` for plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// A client must send its complete request head within this time (HTTP/1.1; an idle
    /// keep-alive connection is closed after the same time).
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1.1: 431 above it; HTTP/2: the header list size).
    pub max_header_bytes: usize,
    pub limits: AcceptLimits,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            limits: AcceptLimits::default(),
        }
    }
}

/// Request counters by listener and status code.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    status: u16,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by listener and status code",
            metrics.requests.clone(),
        );
        metrics
    }
}

#[derive(Clone)]
struct Tracked {
    metrics: HttpMetrics,
    listener: &'static str,
}

/// Set on a request by the connection's framing guard when it carried both `Content-Length`
/// and `Transfer-Encoding`.
#[derive(Debug, Clone, Copy)]
struct AmbiguousFraming;

async fn count_request(State(tracked): State<Tracked>, request: Request, next: Next) -> Response {
    let response = if request.extensions().get::<AmbiguousFraming>().is_some() {
        let mut refused = Response::new(axum::body::Body::from(
            "both Content-Length and Transfer-Encoding\n",
        ));
        *refused.status_mut() = axum::http::StatusCode::BAD_REQUEST;
        refused.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        refused
    } else {
        next.run(request).await
    };
    tracked
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            listener: tracked.listener.to_owned(),
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Serves `router` on `bound` until shutdown; open connections are closed gracefully (in-flight
/// requests finish, idle keep-alive connections close).
pub async fn serve(
    bound: BoundListener,
    router: Router,
    options: HttpOptions,
    http_metrics: HttpMetrics,
    connection_metrics: ConnectionMetrics,
    shutdown: Shutdown,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(
        Tracked {
            metrics: http_metrics,
            listener: bound.spec.name,
        },
        count_request,
    ));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // hyper's read buffer bounds the request head; it cannot go below 8 KiB.
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));

    let tls = options.tls.clone();
    let first_byte_timeout = options.header_read_timeout;
    let conn_shutdown = shutdown.clone();
    accept_loop(
        bound,
        options.limits,
        connection_metrics,
        shutdown,
        move |stream, peer| {
            let router = router.clone();
            let builder = builder.clone();
            let tls = tls.clone();
            let shutdown = conn_shutdown.clone();
            async move {
                match tls {
                    None => {
                        // hyper's header timer starts only once the protocol is known, so a
                        // client that connects and says nothing is closed here.
                        let mut probe = [0u8; 1];
                        let spoke = tokio::select! {
                            peeked = tokio::time::timeout(first_byte_timeout, stream.peek(&mut probe)) => {
                                matches!(peeked, Ok(Ok(n)) if n > 0)
                            }
                            () = shutdown.cancelled() => false,
                        };
                        if spoke {
                            let findings = Arc::new(Findings::default());
                            let stream = Guarded::new(stream, Arc::clone(&findings));
                            serve_connection(&builder, stream, router, peer, Some(findings), &shutdown).await
                        }
                    }
                    Some(acceptor) => {
                        let handshake = tokio::select! {
                            result = acceptor.accept(stream) => result,
                            // A half-open handshake is not in-flight work: drop it.
                            () = shutdown.cancelled() => return,
                        };
                        match handshake {
                            Ok(stream) => {
                                // ALPN already chose the protocol: no sniffing, and HTTP/1.1
                                // gets hyper's header timer from the first byte.
                                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                if h2 {
                                    // hyper has no idle timeout for HTTP/2: close a connection
                                    // that has sent nothing for the header timeout.
                                    let builder = builder.clone().http2_only();
                                    let activity = Arc::new(Activity::new());
                                    let stream = Watched { inner: stream, activity: Arc::clone(&activity) };
                                    serve_connection_watched(&builder, stream, router, peer, None, Some((activity, first_byte_timeout)), &shutdown).await
                                } else {
                                    let builder = builder.clone().http1_only();
                                    let findings = Arc::new(Findings::default());
                                    let stream = Guarded::new(stream, Arc::clone(&findings));
                                    serve_connection(&builder, stream, router, peer, Some(findings), &shutdown).await
                                }
                            }
                            Err(err) => {
                                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            }
                        }
                    }
                }
            }
        },
    )
    .await;
}

async fn serve_connection<IO>(
    builder: &auto::Builder<TokioExecutor>,
    stream: IO,
    router: Router,
    peer: SocketAddr,
    findings: Option<Arc<Findings>>,
    shutdown: &Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_watched(builder, stream, router, peer, findings, None, shutdown).await
}

/// When a connection last received bytes, in milliseconds since `start`, and how many of its
/// requests are still being answered (a connection with work in flight is never idle).
struct Activity {
    start: std::time::Instant,
    last_read_ms: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Set by the watchdog: the connection's next read ends it.
    expired: std::sync::atomic::AtomicBool,
    reader: futures_util::task::AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            last_read_ms: std::sync::atomic::AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            expired: std::sync::atomic::AtomicBool::new(false),
            reader: futures_util::task::AtomicWaker::new(),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_read_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once nothing has been read for `limit` and no request is in flight.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last =
                Duration::from_millis(self.last_read_ms.load(std::sync::atomic::Ordering::Relaxed));
            let idle = self.start.elapsed().saturating_sub(last);
            let busy = self.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0;
            if idle >= limit && !busy {
                return;
            }
            let wait = if busy { limit } else { limit - idle };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Records read activity on a connection.
struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self
            .activity
            .expired
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // Idle past the limit: end of stream, and the connection closes.
            return std::task::Poll::Ready(Ok(()));
        }
        self.activity.reader.register(cx.waker());
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Forwarded so HTTP/2 keeps writing frames in one vectored call.
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

async fn serve_connection_watched<IO>(
    builder: &auto::Builder<TokioExecutor>,
    stream: IO,
    router: Router,
    peer: SocketAddr,
    findings: Option<Arc<Findings>>,
    idle: Option<(Arc<Activity>, Duration)>,
    shutdown: &Shutdown,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let in_flight = idle.as_ref().map(|(activity, _)| Arc::clone(activity));
    type Incoming = hyper::Request<hyper::body::Incoming>;
    let router = ServiceExt::<Incoming>::map_future(router, move |response| {
        let in_flight = in_flight.clone();
        if let Some(activity) = &in_flight {
            activity
                .in_flight
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        async move {
            let response: Result<Response, std::convert::Infallible> = response.await;
            if let Some(activity) = &in_flight {
                activity
                    .in_flight
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            response
        }
    });
    let service = TowerToHyperService::new(router.map_request(
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            // HTTP/1 requests arrive here in order, as the guard saw their heads.
            if findings
                .as_ref()
                .is_some_and(|findings| findings.next_request_flagged())
            {
                request.extensions_mut().insert(AmbiguousFraming);
            }
            request
        },
    ));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // The idle watchdog runs beside the connection (polling a timer in the connection's own
    // select would cost every wake-up) and ends it through its reads.
    let watchdog = idle.map(|(activity, limit)| {
        tokio::spawn(async move {
            activity.idle_for(limit).await;
            activity
                .expired
                .store(true, std::sync::atomic::Ordering::Release);
            activity.reader.wake();
        })
    });
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
    }
}
