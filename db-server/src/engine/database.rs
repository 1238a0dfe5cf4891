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

use super::direct::{Direct, EngineMetrics, WalWatch};
use super::error::{SqlError, sqlstate};

/// How durable a COMMIT is (`db.synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A COMMIT acknowledged is on disk: its WAL frames are fsynced before the answer, by a
    /// group commit ([`GroupSync`]) that covers every transaction committed meanwhile with
    /// one fsync.
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
    /// Where statements ran, for `/metrics`.
    pub paths: EngineMetrics,
}

/// Stops a running statement when its deadline passes or it is cancelled.
#[derive(Debug, Default)]
pub struct Interrupt {
    /// Milliseconds since [`epoch`] after which the statement stops; 0 = none.
    deadline_ms: AtomicU64,
    cancelled: AtomicBool,
    /// Microseconds since [`epoch`] after which a statement run on the serving thread is
    /// moved to sqlx's worker ([`super::direct`]); 0 = none.
    budget_until_us: AtomicU64,
    /// The budget, not a deadline or a cancel, stopped the statement.
    over_budget: AtomicBool,
    /// Microseconds since [`epoch`] after which a statement that runs on the serving thread
    /// and cannot be stopped hands that thread's other tasks over ([`super::direct`]); 0 =
    /// none.
    hand_over_at_us: AtomicU64,
    /// The statement running handed its thread over.
    handed_over: AtomicBool,
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

    /// Stops the statement about to run once it has run for `budget`.
    pub fn set_budget(&self, budget: Duration) {
        self.over_budget.store(false, Ordering::Relaxed);
        let until = epoch().elapsed() + budget;
        self.budget_until_us
            .store(until.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn clear_budget(&self) {
        self.budget_until_us.store(0, Ordering::Relaxed);
    }

    /// Hands the serving thread's other tasks over once the statement about to run has run
    /// for `after` (see [`super::direct::hand_over_thread`]).
    pub fn set_hand_over(&self, after: Duration) {
        self.handed_over.store(false, Ordering::Relaxed);
        let at = epoch().elapsed() + after;
        self.hand_over_at_us
            .store(at.as_micros() as u64, Ordering::Relaxed);
    }

    /// Stops watching for a hand-over; true if the statement that ran handed its thread over.
    pub fn clear_hand_over(&self) -> bool {
        self.hand_over_at_us.store(0, Ordering::Relaxed);
        self.handed_over.swap(false, Ordering::Relaxed)
    }

    /// Whether the budget (rather than a deadline or a cancel) stopped the last statement.
    pub fn took_over_budget(&self) -> bool {
        self.over_budget.load(Ordering::Relaxed) && !self.cancelled.load(Ordering::Relaxed)
    }

    /// Whether the statement may go on.
    fn may_continue(&self) -> bool {
        if self.cancelled.load(Ordering::Relaxed) {
            return false;
        }
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        if deadline != 0 && now_ms() >= deadline {
            return false;
        }
        let budget = self.budget_until_us.load(Ordering::Relaxed);
        if budget != 0 && epoch().elapsed().as_micros() as u64 >= budget {
            self.over_budget.store(true, Ordering::Relaxed);
            return false;
        }
        let hand_over = self.hand_over_at_us.load(Ordering::Relaxed);
        if hand_over != 0 && epoch().elapsed().as_micros() as u64 >= hand_over {
            let next = if super::direct::hand_over_thread() {
                self.handed_over.store(true, Ordering::Relaxed);
                0
            } else {
                // Not taken over in time (both cores busy): try again later, counted from
                // after the wait.
                (epoch().elapsed() + super::direct::HAND_OVER_RETRY).as_micros() as u64
            };
            self.hand_over_at_us.store(next, Ordering::Relaxed);
        }
        true
    }
}

/// A connection and its interrupt.
#[derive(Debug)]
pub struct Conn {
    /// Declared before `connection`: its statements are finalized before sqlx closes the
    /// handle (SQLite refuses to close a connection with statements left).
    pub direct: Direct,
    /// `None` once the database is closed (see [`Database::close`]).
    pub(super) connection: Option<SqliteConnection>,
    pub interrupt: Arc<Interrupt>,
    /// A transaction was begun on this connection and not yet ended. A session dropped
    /// mid-transaction (a client gone, a request abandoned) leaves it set; the next user of
    /// the writer rolls that transaction back before anything else.
    pub open_tx: bool,
    /// The transaction open here ([`TxId::NONE`] for none). A session between two
    /// statements of an optimistic transaction leaves its transaction open on the writer;
    /// another session that takes the writer meanwhile rolls it back, and the owner replays
    /// it when it comes back (see `session`).
    pub tx_owner: TxId,
    /// A statement was handed to sqlx's worker thread and its answer not yet taken (the
    /// future was dropped: a client gone). The worker may still be running it; the next user
    /// cancels it and waits for the worker before using the handle from this thread.
    pub worker_busy: bool,
}

impl Conn {
    /// sqlx's connection, for what runs on its worker thread.
    pub fn sqlx(&mut self) -> Result<&mut SqliteConnection, SqlError> {
        self.connection
            .as_mut()
            .ok_or_else(|| SqlError::new(sqlstate::ADMIN_SHUTDOWN, "the database was closed"))
    }

    /// Rolls back the transaction open here, if any: one a session marked (`open_tx`), or
    /// one SQLite has that nobody marked (a BEGIN whose session went away while it ran on
    /// the worker). On the serving thread, unless that fails.
    pub async fn roll_back(&mut self) {
        self.settle_worker().await;
        if (self.open_tx || self.direct.in_transaction())
            && !self.direct.rollback()
            && let Some(connection) = self.connection.as_mut()
        {
            use sqlx::Executor as _;
            let _ = connection.execute("ROLLBACK").await;
        }
        self.open_tx = false;
        self.tx_owner = TxId::NONE;
    }

    /// An abandoned statement may still run on sqlx's worker: stops it, and waits for the
    /// worker to be done before this thread uses the handle.
    pub async fn settle_worker(&mut self) {
        if self.worker_busy {
            use sqlx::Connection as _;
            self.interrupt.cancel();
            if let Some(connection) = self.connection.as_mut() {
                let _ = connection.ping().await;
            }
            self.worker_busy = false;
        }
    }

    /// Whether a session taking this connection must first roll back what is open on it:
    /// a transaction that is not `owner`'s, or one nobody marked.
    fn needs_rollback(&self, owner: TxId) -> bool {
        self.worker_busy
            || if self.open_tx {
                self.tx_owner != owner || owner == TxId::NONE
            } else {
                self.direct.in_transaction()
            }
    }

    /// Closes the connection now (sqlx would otherwise close it later on its worker thread,
    /// and SQLite's last connection to a file removes its `-wal` and `-shm` by name).
    async fn close(&mut self) {
        self.roll_back().await;
        self.direct.finalize_all(); // SQLite refuses to close a handle with statements left
        if let Some(connection) = self.connection.take() {
            use sqlx::Connection as _;
            let _ = connection.close().await;
        }
    }
}

/// One transaction, to tell whether the transaction open on the writer is still a
/// session's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxId(u64);

impl TxId {
    /// No transaction: engine work such as a backup's fallback.
    pub const NONE: TxId = TxId(0);

    /// A new id, never handed out before in this process.
    pub fn next() -> TxId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TxId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Group commit: a COMMIT returns from SQLite without an fsync (`synchronous=NORMAL` in WAL
/// mode), the writer goes on to the next transaction, and the committed session waits here
/// until one fsync of the WAL covers its frames. Whoever finds no fsync in progress does one
/// for everything written so far; the others wait for it. SQLite itself fsyncs the WAL before
/// every checkpoint, so frames moved into the database file stay durable.
#[derive(Debug)]
pub struct GroupSync {
    wal: PathBuf,
    /// Commits finished (their frames are in the WAL file).
    written: AtomicU64,
    /// Commits known to be on disk.
    synced: AtomicU64,
    /// An fsync failed: what was written since may be lost, so nothing more is acknowledged.
    poisoned: AtomicBool,
    leader: tokio::sync::Mutex<()>,
}

impl GroupSync {
    fn new(database: &Path) -> Self {
        Self {
            wal: PathBuf::from(format!("{}-wal", database.display())),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            leader: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns once the commit that just finished is on disk.
    pub async fn durable(&self) -> Result<(), SqlError> {
        let mine = self.written.fetch_add(1, Ordering::AcqRel) + 1;
        let _leader = self.leader.lock().await;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(SqlError::new(
                sqlstate::DISK_FULL,
                "an earlier fsync of this database failed: restart db-server",
            ));
        }
        if self.synced.load(Ordering::Acquire) >= mine {
            return Ok(()); // an fsync that started after our commit covered it
        }
        let covered = self.written.load(Ordering::Acquire);
        let wal = self.wal.clone();
        let synced = tokio::task::spawn_blocking(move || match std::fs::File::open(&wal) {
            Ok(file) => file.sync_data(),
            // No WAL file: nothing waits in one (the last connection checkpointed it away).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        })
        .await
        .map_err(|e| SqlError::new(sqlstate::INTERNAL_ERROR, e.to_string()))?;
        synced.map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            SqlError::new(
                sqlstate::DISK_FULL,
                format!("cannot make the commit durable: {e}"),
            )
        })?;
        self.synced.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }
}

/// How long a statement on sqlx's worker waits for a lock held by another connection of this
/// process (or a checkpoint); on the serving thread statements never wait (see `direct`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The role of a connection to a database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The single writer: its commits never checkpoint (the [`Checkpointer`] does), so that
    /// they can run on the serving thread.
    Writer,
    Reader,
    /// A connection of its own, beside the pool: the checkpointer's, a snapshot's.
    Aside,
}

/// How much of a database file each connection reads through a memory map
/// (`PRAGMA mmap_size`) instead of a `pread` per page: a point select on a large table misses
/// the connection's own page cache on nearly every leaf page, and the system call was a
/// large share of its cost.
const MMAP_SIZE: &str = "1073741824";

fn options(path: &Path, role: Role, create: bool) -> Result<SqliteConnectOptions, SqlError> {
    let options = SqliteConnectOptions::from_str("sqlite:")
        .map_err(|e| SqlError::new(sqlstate::INTERNAL_ERROR, e.to_string()))?
        .filename(path)
        .create_if_missing(create)
        // The process keeps the file to itself: SQLite takes one lock on it for good and
        // keeps the WAL index in memory, so that beginning a read costs no `fcntl` and no
        // mutex wait. Per-statement file locks were a third of a point select's system calls
        // and the two runtime threads waited on each other's. Other processes (a `sqlite3`
        // shell) cannot open the file while the server runs; `db-server backup` asks the
        // server over its control socket.
        .vfs("unix-excl")
        // Read-write handles with writes refused: a read-only handle would take file locks of
        // its own, which `unix-excl` would then drop for the whole process.
        .pragma("query_only", if role == Role::Reader { "1" } else { "0" })
        .journal_mode(SqliteJournalMode::Wal)
        // Full durability fsyncs through GroupSync, after the writer is released.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        // Writers queue on the writer lock, readers never wait in WAL: a short busy timeout
        // only covers checkpoints and connections beside the pool.
        .busy_timeout(BUSY_TIMEOUT)
        .statement_cache_capacity(256)
        .pragma("mmap_size", MMAP_SIZE);
    Ok(match role {
        Role::Writer => options
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", WAL_SIZE_LIMIT),
        Role::Reader | Role::Aside => options,
    })
}

async fn connect(
    path: &Path,
    role: Role,
    create: bool,
    paths: &EngineMetrics,
    wal_watch: Option<&Arc<WalWatch>>,
) -> Result<Conn, SqlError> {
    let connect = options(path, role, create)?
        // SQLite serialises calls on the handle itself: statements run both here, on the
        // session's thread (`direct`), and on sqlx's worker thread.
        .serialized(true);
    let mut connection = SqliteConnection::connect_with(&connect)
        .await
        .map_err(|e| SqlError::from_sqlx(&e))?;
    let interrupt = Arc::new(Interrupt::default());
    let watched = Arc::clone(&interrupt);
    let mut locked = connection
        .lock_handle()
        .await
        .map_err(|e| SqlError::from_sqlx(&e))?;
    locked.set_progress_handler(4096, move || watched.may_continue());
    // SAFETY: the handle is in serialized mode and lives as long as `connection`, which the
    // returned Conn drops after `direct`.
    #[allow(unsafe_code)]
    let mut direct =
        unsafe { Direct::new(locked.as_raw_handle(), role == Role::Writer, paths.clone()) };
    if let Some(watch) = wal_watch {
        direct.watch_wal(Arc::clone(watch));
    }
    drop(locked);
    Ok(Conn {
        direct,
        connection: Some(connection),
        interrupt,
        open_tx: false,
        tx_owner: TxId::NONE,
        worker_busy: false,
    })
}

/// Moves committed WAL frames into the database file in the background: the writer's own
/// commits never checkpoint (`wal_autocheckpoint=0`), so a COMMIT on the serving thread is
/// only a write to the WAL. SQLite fsyncs the WAL before a checkpoint and the database file
/// after it.
///
/// Every [`CHECKPOINT_EVERY`] if something was committed since, and as soon as a commit
/// leaves [`RESTART_FRAMES`] in the WAL (the writer's WAL hook, [`WalWatch`]), a PASSIVE
/// checkpoint on the checkpointer's own connection copies what it can while readers and the
/// writer go on. That alone would let
/// the WAL grow for ever under steady writes: SQLite starts the WAL over only when a write
/// transaction begins with every frame already copied, and with commits landing during the
/// copy that never happens. So once the WAL holds [`RESTART_FRAMES`], the checkpointer then
/// takes the writer (as a session does, rolling back an optimistic transaction left on it,
/// which its session replays) and checkpoints the rest on it, on sqlx's worker thread: the
/// next write transaction starts the WAL over.
#[derive(Debug)]
struct Checkpointer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Frames in the WAL past which the checkpointer checkpoints on the writer (about 4 MB of
/// 4 KiB pages, SQLite's own autocheckpoint threshold).
const RESTART_FRAMES: i64 = 1000;

/// A WAL that grew past this (a big transaction) is cut back to it when it starts over.
const WAL_SIZE_LIMIT: &str = "67108864";

impl Checkpointer {
    async fn start(
        name: &str,
        path: &Path,
        writer: Arc<tokio::sync::Mutex<Conn>>,
        watch: Arc<WalWatch>,
        home: &tokio::runtime::Handle,
    ) -> Result<Self, SqlError> {
        let mut connection = SqliteConnection::connect_with(&options(path, Role::Aside, false)?)
            .await
            .map_err(|e| SqlError::from_sqlx(&e))?;
        let name = name.to_owned();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = home.spawn(async move {
            // Unlike any count of commits: the first look checkpoints what the WAL may hold
            // from before (a server killed with frames not yet copied).
            let mut checkpointed = u64::MAX;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
                    () = watch.grown.notified() => {}
                }
                // Nothing committed since the last look: nothing to copy.
                let commits = watch.commits.load(Ordering::Relaxed);
                if commits == checkpointed {
                    continue;
                }
                checkpointed = commits;
                let frames = match checkpoint(&mut connection).await {
                    Ok(frames) => frames,
                    Err(err) => {
                        tracing::warn!(database = %name, error = %err.message, "checkpoint failed");
                        continue;
                    }
                };
                if frames < RESTART_FRAMES {
                    continue;
                }
                let mut conn = writer.lock().await;
                conn.roll_back().await;
                let done = match conn.sqlx() {
                    Ok(connection) => checkpoint(connection).await.map(|_| ()),
                    Err(err) => Err(err),
                };
                drop(conn);
                if let Err(err) = done {
                    tracing::warn!(database = %name, error = %err.message, "checkpoint failed");
                }
            }
            let _ = connection.close().await;
        });
        Ok(Self { stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A PASSIVE checkpoint on `connection`; returns the frames in the WAL.
async fn checkpoint(connection: &mut SqliteConnection) -> Result<i64, SqlError> {
    let (_busy, frames, _copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(connection)
            .await
            .map_err(|e| SqlError::from_sqlx(&e))?;
    Ok(frames)
}

/// One database file and its connections.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub path: PathBuf,
    writer: Arc<tokio::sync::Mutex<Conn>>,
    readers: ReaderPool,
    /// Present when COMMITs must be durable before they are acknowledged.
    pub sync: Option<GroupSync>,
    /// The engine's counters (`/metrics`).
    pub metrics: EngineMetrics,
    /// Taken by `close`; dropping it also stops the task.
    checkpointer: std::sync::Mutex<Option<Checkpointer>>,
}

impl Database {
    /// Opens (or, with `create`, creates) the database file at `path`.
    pub async fn open(
        name: &str,
        path: &Path,
        options: &DatabaseOptions,
        create: bool,
        home: &tokio::runtime::Handle,
    ) -> Result<Self, SqlError> {
        let watch = Arc::new(WalWatch {
            threshold: RESTART_FRAMES,
            ..WalWatch::default()
        });
        let writer = connect(path, Role::Writer, create, &options.paths, Some(&watch)).await?;
        let mut readers = Vec::new();
        for _ in 0..options.readers.max(1) {
            readers.push(connect(path, Role::Reader, false, &options.paths, None).await?);
        }
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let checkpointer =
            Checkpointer::start(name, path, Arc::clone(&writer), watch, home).await?;
        Ok(Self {
            name: name.to_owned(),
            path: path.to_path_buf(),
            writer,
            readers: ReaderPool::new(readers),
            sync: (options.durability == Durability::Full).then(|| GroupSync::new(path)),
            checkpointer: std::sync::Mutex::new(Some(checkpointer)),
            metrics: options.paths.clone(),
        })
    }

    /// The writer connection, waiting at most `wait` for the session holding it. A
    /// transaction another session left open on it (abandoned, or optimistic and between
    /// two statements) is rolled back; transaction `owner` is kept.
    pub async fn writer(
        &self,
        wait: Duration,
        owner: TxId,
    ) -> Result<tokio::sync::OwnedMutexGuard<Conn>, SqlError> {
        let lock = Arc::clone(&self.writer).lock_owned();
        match if wait.is_zero() {
            Ok(lock.await)
        } else {
            tokio::time::timeout(wait, lock).await
        } {
            Ok(mut guard) => {
                if guard.needs_rollback(owner) {
                    guard.roll_back().await;
                }
                Ok(guard)
            }
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

    /// Rolls back transaction `owner` if it is still open on the writer. If a session holds
    /// the writer now, it has rolled it back already (see [`Database::writer`]).
    pub async fn roll_back_if_open(&self, owner: TxId) {
        if let Ok(mut guard) = Arc::clone(&self.writer).try_lock_owned()
            && guard.open_tx
            && guard.tx_owner == owner
        {
            guard.roll_back().await;
        }
    }

    /// A read-write connection of its own, beside the writer and the readers (a snapshot's
    /// `VACUUM INTO`): the caller closes it.
    pub async fn connection_aside(&self) -> Result<SqliteConnection, SqlError> {
        SqliteConnection::connect_with(&options(&self.path, Role::Aside, false)?)
            .await
            .map_err(|e| SqlError::from_sqlx(&e))
    }

    /// A reader connection (readers are never held long: one statement at a time).
    pub async fn reader(&self) -> ReaderGuard<'_> {
        let mut guard = self.readers.get().await;
        if let Some(conn) = guard.conn() {
            end_abandoned(conn).await;
        }
        guard
    }

    /// A reader held by a read-only transaction from BEGIN to its end.
    pub async fn reader_owned(self: &Arc<Self>) -> OwnedReader {
        let permit = match Arc::clone(&self.readers.available).acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("the reader semaphore is never closed"),
        };
        let mut conn = self
            .readers
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.pop());
        if let Some(conn) = conn.as_mut() {
            end_abandoned(conn).await;
        }
        OwnedReader {
            db: Arc::clone(self),
            conn,
            _permit: permit,
        }
    }

    /// Closes every connection (the database is being dropped or the role stops).
    pub async fn close(&self) {
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        if let Some(checkpointer) = checkpointer {
            checkpointer.stop().await;
        }
        self.writer.lock().await.close().await;
        self.readers.close().await;
    }
}

/// Read-only connections handed out one statement at a time.
#[derive(Debug)]
struct ReaderPool {
    idle: std::sync::Mutex<Vec<Conn>>,
    available: Arc<tokio::sync::Semaphore>,
}

/// Rolls back a transaction a session left open on a reader (a dropped read-only
/// transaction).
async fn end_abandoned(conn: &mut Conn) {
    if conn.needs_rollback(TxId::NONE) {
        conn.roll_back().await;
    }
}

/// A reader owned by a session's read-only transaction; back to the pool when dropped.
#[derive(Debug)]
pub struct OwnedReader {
    db: Arc<Database>,
    conn: Option<Conn>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl OwnedReader {
    /// A permit of the pool always comes with an idle connection.
    pub fn conn_ref(&self) -> &Conn {
        match &self.conn {
            Some(conn) => conn,
            None => unreachable!("a reader permit without a connection"),
        }
    }

    pub fn conn_mut(&mut self) -> &mut Conn {
        match &mut self.conn {
            Some(conn) => conn,
            None => unreachable!("a reader permit without a connection"),
        }
    }
}

impl Drop for OwnedReader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && let Ok(mut idle) = self.db.readers.idle.lock()
        {
            idle.push(conn);
        }
    }
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
            available: Arc::new(tokio::sync::Semaphore::new(count)),
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
        for mut conn in conns {
            conn.close().await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Session, SessionLimits};

    /// Under steady writes from several sessions (commits landing while the checkpointer
    /// copies), the WAL still starts over: it stays near the restart threshold instead of
    /// growing by everything written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_steady_writes() {
        let (_dir, _engine, db) = crate::engine::tests::scratch(&EngineMetrics::default()).await;
        let limits = SessionLimits {
            statement_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(10),
            max_rows: 0,
        };
        Session::new(Arc::clone(&db), limits)
            .execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)", &[])
            .await
            .expect("create");
        // 4 writers × 600 rows of 8 KiB: about 40 MB of WAL frames in all.
        let mut writers = Vec::new();
        for _ in 0..4 {
            let mut session = Session::new(Arc::clone(&db), limits);
            writers.push(tokio::spawn(async move {
                for _ in 0..600 {
                    session
                        .execute("INSERT INTO t (v) VALUES (zeroblob(8192))", &[])
                        .await
                        .expect("insert");
                }
            }));
        }
        for writer in writers {
            writer.await.expect("writer");
        }
        let wal = std::fs::metadata(format!("{}-wal", db.path.display()))
            .map(|meta| meta.len())
            .unwrap_or(0);
        assert!(wal < 24 << 20, "the WAL grew to {} MB", wal >> 20);
    }

    /// The writer's commits never checkpoint; the checkpointer moves committed frames into
    /// the database file on its own, so the file alone (without its WAL) holds them soon after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpointer_moves_commits_into_the_database_file() {
        let (dir, _engine, db) = crate::engine::tests::scratch(&EngineMetrics::default()).await;
        let mut session = Session::new(
            Arc::clone(&db),
            SessionLimits {
                statement_timeout: Duration::from_secs(10),
                lock_timeout: Duration::from_secs(1),
                max_rows: 0,
            },
        );
        session
            .execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", &[])
            .await
            .expect("create");
        for id in 0..50 {
            session
                .execute(
                    "INSERT INTO t (id, v) VALUES (?1, ?2)",
                    &[
                        super::super::value::Value::Integer(id),
                        super::super::value::Value::Text("x".repeat(1000)),
                    ],
                )
                .await
                .expect("insert");
        }
        let copy = dir.path().join("copy.db");
        let deadline = Instant::now() + Duration::from_secs(5);
        let rows = loop {
            // The database file alone, as it is on disk now. (Closing this copy's handle on
            // the live file drops the process's `unix-excl` lock on it, POSIX locks being per
            // process: harmless here, where no other process looks; the server itself never
            // opens its files but through SQLite.)
            std::fs::copy(&db.path, &copy).expect("copy");
            let rows = async {
                use sqlx::Connection as _;
                let mut alone = SqliteConnection::connect(&format!(
                    "sqlite://{}?mode=ro&immutable=1",
                    copy.display()
                ))
                .await
                .ok()?;
                let count: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM t")
                    .fetch_one(&mut alone)
                    .await
                    .ok();
                let _ = alone.close().await;
                count
            }
            .await;
            if rows == Some(50) || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(rows, Some(50), "the commits reached the database file");
    }
}
