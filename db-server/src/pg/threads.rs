//! The threads PostgreSQL sessions are served on: one runtime of a single worker per core,
//! rather than the process's shared work-stealing runtime.
//!
//! Why: a point select costs SQLite about 10 µs and runs on the thread that serves the session
//! (see `engine::direct`). On a work-stealing runtime, waking a session's task may also wake an
//! idle worker to come and steal it; those futex wake-ups and the thread hops that follow cost
//! about as much as the query (about 0.45 of them per query under pgbench). A runtime with one
//! worker has no one to wake: a session's socket, its task and its statements stay on one
//! thread.
//!
//! A thread of its own must not be held by one session: reads and autocommitted writes that
//! run on it are stopped at a budget and moved to sqlx's worker thread, and a write inside a
//! transaction, which cannot be stopped, hands the runtime's other sessions to another thread
//! once past that budget (`engine::direct::hand_over_thread`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// The serving runtimes, and how many sessions each serves now.
pub struct ServingThreads {
    runtimes: Vec<Runtime>,
    sessions: Vec<Arc<AtomicUsize>>,
}

impl std::fmt::Debug for ServingThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingThreads")
            .field("threads", &self.runtimes.len())
            .finish()
    }
}

impl ServingThreads {
    /// One runtime per core, their threads named `db-pg-N`.
    pub fn for_this_machine() -> std::io::Result<Self> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// `count` runtimes (at least one) of one worker each.
    pub fn new(count: usize) -> std::io::Result<Self> {
        let mut runtimes = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            // Multi-threaded with one worker rather than current-thread: the worker can be
            // handed to another thread (`block_in_place`), and the runtime drives itself.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .thread_name(format!("db-pg-{index}"))
                .build()?;
            runtimes.push(runtime);
        }
        let sessions = runtimes
            .iter()
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect();
        Ok(Self { runtimes, sessions })
    }

    /// `quartet_db_serving_tasks` on `/metrics`: the tasks alive on these threads (each
    /// session, and its idle-transaction watcher while it has one).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let runtimes = self.runtimes.iter().map(Runtime::metrics).collect();
        registry.register_collector(Box::new(ServingTasks(runtimes)));
    }

    /// Serves `stream` with `session` on the runtime with the fewest sessions; the returned
    /// future resolves when the session ends, and dropping it stops the session.
    pub fn serve<S, F>(&self, stream: TcpStream, session: S) -> impl Future<Output = ()> + use<S, F>
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let index = (0..self.sessions.len())
            .min_by_key(|&index| self.sessions[index].load(Ordering::Relaxed))
            .unwrap_or(0);
        let runtime = self.runtimes[index].handle().clone();
        let counted = Counted::new(Arc::clone(&self.sessions[index]));
        async move {
            // The socket is registered with the accepting runtime's reactor: it moves to the
            // serving runtime's.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(error = %err, "could not hand a connection over");
                    return;
                }
            };
            let served = runtime.spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => session(stream).await,
                    Err(err) => tracing::debug!(error = %err, "could not take a connection over"),
                }
            });
            let stop_on_drop = AbortOnDrop(served.abort_handle());
            let _ = served.await;
            drop(stop_on_drop);
            drop(counted);
        }
    }
}

impl Drop for ServingThreads {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async context must not do.
        for runtime in self.runtimes.drain(..) {
            runtime.shutdown_background();
        }
    }
}

/// One session counted on its runtime while this lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts the serving threads' tasks when `/metrics` is read.
#[derive(Debug)]
struct ServingTasks(Vec<tokio::runtime::RuntimeMetrics>);

impl prometheus_client::collector::Collector for ServingTasks {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let tasks: i64 = self
            .0
            .iter()
            .map(|runtime| runtime.num_alive_tasks() as i64)
            .sum();
        let metric = encoder.encode_descriptor(
            "db_serving_tasks",
            "Tasks alive on the threads that serve PostgreSQL sessions",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(tasks).encode(metric)
    }
}
