//! The process lifecycle a role sees: stop (SIGTERM/SIGINT) and reload (SIGHUP).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the process may take to stop once shutdown begins (the contract's 10 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a role waits for in-flight work, leaving the rest of [`DRAIN_TIMEOUT`] for
/// returning and exiting.
pub const ROLE_DRAIN_TIMEOUT: Duration = Duration::from_millis(9_000);

/// Shared by everything a role spawns. Cancelling stops accept loops; the tracker knows which
/// connections are still in flight, so the role can wait for them (at most [`DRAIN_TIMEOUT`]).
#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    reload: Arc<watch::Sender<u64>>,
    /// How many roles sharing this lifecycle have finished starting.
    ready: Arc<watch::Sender<usize>>,
    /// The configuration re-read on the last SIGHUP, if it was valid.
    config: Arc<std::sync::Mutex<Option<Arc<crate::Config>>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            reload: Arc::new(watch::Sender::new(0)),
            ready: Arc::new(watch::Sender::new(0)),
            config: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Begin shutting down: accept loops stop, connections finish what they are doing.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Waits for every tracked task, at most `limit`. Returns false if some were still running.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Ask every role to reload what it can (certificates; more in later issues).
    pub fn request_reload(&self) {
        self.reload.send_modify(|generation| *generation += 1);
    }

    /// Called by a role once it serves traffic.
    pub fn role_ready(&self) {
        self.ready.send_modify(|count| *count += 1);
    }

    /// Waits until `roles` roles sharing this lifecycle are ready (or shutdown begins).
    pub async fn wait_ready(&self, roles: usize) {
        let mut ready = self.ready.subscribe();
        tokio::select! {
            _ = ready.wait_for(|count| *count >= roles) => {}
            () = self.cancelled() => {}
        }
    }

    /// Publishes a freshly loaded configuration, then asks every role to reload.
    pub fn reload_with(&self, config: Arc<crate::Config>) {
        if let Ok(mut slot) = self.config.lock() {
            *slot = Some(config);
        }
        self.request_reload();
    }

    /// The configuration published by the last successful reload, if any.
    pub fn reloaded_config(&self) -> Option<Arc<crate::Config>> {
        self.config.lock().ok().and_then(|slot| slot.clone())
    }

    /// A receiver that changes every time a reload is requested.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reload.subscribe()
    }
}

/// Re-reads the configuration for a reload; an error keeps the running configuration.
pub type Reloader = Box<dyn Fn() -> Result<crate::Config, String> + Send + Sync>;

/// Turns SIGTERM and SIGINT into [`Shutdown::trigger`] and SIGHUP into a reload: the
/// configuration is re-read with `reloader` (when given) and published if valid, then every
/// role reloads. A second SIGTERM/SIGINT while draining exits at once.
pub fn handle_signals(shutdown: Shutdown, reloader: Option<Reloader>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    match reloader.as_ref().map(|reload| reload()) {
                        Some(Ok(config)) => shutdown.reload_with(Arc::new(config)),
                        Some(Err(err)) => {
                            tracing::error!("configuration not reloaded, keeping the running one: {err}");
                            shutdown.request_reload();
                        }
                        None => shutdown.request_reload(),
                    }
                    continue;
                }
            };
            if shutdown.is_triggered() {
                tracing::warn!(
                    signal = name,
                    "second stop signal: exiting without draining"
                );
                std::process::exit(1);
            }
            tracing::info!(
                signal = name,
                "stopping: no new connections, finishing in-flight work (at most {}s)",
                DRAIN_TIMEOUT.as_secs()
            );
            shutdown.trigger();
        }
    });
    Ok(())
}
