//! One database: a SQLite file in WAL mode with a single writer connection (every write
//! transaction starts with `BEGIN IMMEDIATE` on it, so writers queue here instead of failing with
//! SQLITE_BUSY) and a pool of read-only reader connections (WAL readers never block the
//! writer nor each other).
//!
//! Every connection carries an [`Interrupt`]: a statement timeout or a client's CancelRequest
//! sets it, and SQLite's progress handler, polled every few thousand VM steps, stops the
//! statement (`SQLITE_INTERRUPT` → SQLSTATE 57014).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};

use super::error::{SqlError, sqlstate};

/// How durable a COMMIT is (`db.synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: a COMMIT acknowledged is on disk.
    Full,
    /// fsync at checkpoints only: the last commits can be lost on power failure, never on a
    /// crash of db-server alone.
    Normal,
}

/// Settings every database of an engine shares.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    pub durability: Durability,
    pub readers: usize,
}

/// Stops a running statement when its deadline passes or it is cancelled.
#[derive(Debug, Default)]
pub struct Interrupt {
    /// Milliseconds since [`epoch`] after which the statement stops; 0 = none.
    deadline_ms: AtomicU64,
    cancelled: AtomicBool,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Interrupt {
    /// Arms the interrupt for a statement that may run for `limit` (none if zero).
    pub fn arm(&self, limit: Duration) {
        self.cancelled.store(false, Ordering::Relaxed);
        let deadline = if limit.is_zero() {
            0
        } else {
            now_ms() + limit.as_millis() as u64
        };
        self.deadline_ms.store(deadline, Ordering::Relaxed);
    }

    pub fn disarm(&self) {
        self.deadline_ms.store(0, Ordering::Relaxed);
    }

    /// Stops the statement running now (a client's CancelRequest).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether the statement may go on.
    fn may_continue(&self) -> bool {
        if self.cancelled.load(Ordering::Relaxed) {
            return false;
        }
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        deadline == 0 || now_ms() < deadline
    }
}

/// A connection and its interrupt.
#[derive(Debug)]
pub struct Conn {
    pub connection: SqliteConnection,
    pub interrupt: Arc<Interrupt>,
}

async fn connect(
    path: &Path,
    options: &DatabaseOptions,
    read_only: bool,
    create: bool,
) -> Result<Conn, SqlError> {
    let connect = SqliteConnectOptions::from_str("sqlite:")
        .map_err(|e| SqlError::new(sqlstate::INTERNAL_ERROR, e.to_string()))?
        .filename(path)
        .create_if_missing(create)
        .read_only(read_only)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match options.durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .foreign_keys(true)
        // Writers queue on the writer lock, readers never wait in WAL: a short busy timeout
        // only covers checkpoints.
        .busy_timeout(Duration::from_secs(5))
        .statement_cache_capacity(256);
    let mut connection = SqliteConnection::connect_with(&connect)
        .await
        .map_err(|e| SqlError::from_sqlx(&e))?;
    let interrupt = Arc::new(Interrupt::default());
    let watched = Arc::clone(&interrupt);
    connection
        .lock_handle()
        .await
        .map_err(|e| SqlError::from_sqlx(&e))?
        .set_progress_handler(4096, move || watched.may_continue());
    Ok(Conn {
        connection,
        interrupt,
    })
}

/// One database file and its connections.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub path: PathBuf,
    writer: Arc<tokio::sync::Mutex<Conn>>,
    readers: ReaderPool,
}

impl Database {
    /// Opens (or, with `create`, creates) the database file at `path`.
    pub async fn open(
        name: &str,
        path: &Path,
        options: &DatabaseOptions,
        create: bool,
    ) -> Result<Self, SqlError> {
        let writer = connect(path, options, false, create).await?;
        let mut readers = Vec::new();
        for _ in 0..options.readers.max(1) {
            readers.push(connect(path, options, true, false).await?);
        }
        Ok(Self {
            name: name.to_owned(),
            path: path.to_path_buf(),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers: ReaderPool::new(readers),
        })
    }

    /// The writer connection, waiting at most `wait` for the transaction holding it.
    pub async fn writer(
        &self,
        wait: Duration,
    ) -> Result<tokio::sync::OwnedMutexGuard<Conn>, SqlError> {
        let lock = Arc::clone(&self.writer).lock_owned();
        match if wait.is_zero() {
            Ok(lock.await)
        } else {
            tokio::time::timeout(wait, lock).await
        } {
            Ok(guard) => Ok(guard),
            Err(_) => Err(SqlError::new(
                sqlstate::LOCK_NOT_AVAILABLE,
                format!(
                    "another transaction held the write lock of database {:?} for over {}s",
                    self.name,
                    wait.as_secs_f32()
                ),
            )),
        }
    }

    /// A reader connection (readers are never held long: one statement at a time).
    pub async fn reader(&self) -> ReaderGuard<'_> {
        self.readers.get().await
    }

    /// Closes every connection (the database is being dropped or the role stops).
    pub async fn close(&self) {
        let writer = self.writer.lock().await;
        drop(writer);
        self.readers.close().await;
    }
}

/// Read-only connections handed out one statement at a time.
#[derive(Debug)]
struct ReaderPool {
    idle: std::sync::Mutex<Vec<Conn>>,
    available: tokio::sync::Semaphore,
}

/// A borrowed reader; it goes back to the pool when dropped.
#[derive(Debug)]
pub struct ReaderGuard<'a> {
    pool: &'a ReaderPool,
    conn: Option<Conn>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl ReaderPool {
    fn new(conns: Vec<Conn>) -> Self {
        let count = conns.len();
        Self {
            idle: std::sync::Mutex::new(conns),
            available: tokio::sync::Semaphore::new(count),
        }
    }

    async fn get(&self) -> ReaderGuard<'_> {
        // The semaphore is never closed, so acquiring cannot fail; a permit guarantees an
        // idle connection.
        let permit = match self.available.acquire().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("the reader semaphore is never closed"),
        };
        let conn = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        ReaderGuard {
            pool: self,
            conn,
            _permit: permit,
        }
    }

    async fn close(&self) {
        let conns: Vec<Conn> = self
            .idle
            .lock()
            .map(|mut idle| idle.drain(..).collect())
            .unwrap_or_default();
        for conn in conns {
            let _ = conn.connection.close().await;
        }
    }
}

impl ReaderGuard<'_> {
    pub fn conn(&mut self) -> Option<&mut Conn> {
        self.conn.as_mut()
    }
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && let Ok(mut idle) = self.pool.idle.lock()
        {
            idle.push(conn);
        }
    }
}
