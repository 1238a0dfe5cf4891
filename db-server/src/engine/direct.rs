//! Statements run on the thread that serves the session, through SQLite's C API, on a
//! connection that sqlx opened and configured.
//!
//! Why: sqlx gives every SQLite connection a worker thread of its own, so each statement
//! crosses threads twice (the task hands it over, the rows come back). A point select costs
//! SQLite about 10 µs; the two hand-overs (futex wake-ups and context switches) cost more than
//! that, and they were most of db-server's time under pgbench. Running the statement where
//! the session's task already runs removes them.
//!
//! A runtime thread must not be held by one slow statement, so these rules decide what runs
//! here, and everything else still goes to sqlx's worker thread:
//! - a statement that only reads runs under a budget ([`INLINE_BUDGET`]); past it the progress
//!   handler stops it and the session runs it again on the worker (a read has nothing to
//!   undo, and an interrupted read does not end the transaction around it);
//! - a statement that writes runs here only once its shape (its text without its values) has
//!   been seen to finish within [`QUICK`]; the first run of a shape, and the next runs after
//!   a slow one, go to the worker. Outside a transaction a write runs under the budget too
//!   (SQLite undoes all of an interrupted autocommit statement, so it can run again on the
//!   worker); inside one it cannot be stopped without ending the transaction, so a write of
//!   a quick shape that turns out slow runs to its end here, up to the statement timeout, as
//!   it would hold the database's single writer anyway; past the budget it hands the thread's
//!   other tasks (other sessions) to another thread ([`hand_over_thread`]), so that only its
//!   own session waits;
//! - no write waits for a lock here: the busy timeout is off while one runs, and a statement
//!   that finds the database locked (another connection of this process) is run again on
//!   the worker, which waits;
//! - transaction control (BEGIN IMMEDIATE, SAVEPOINT, ROLLBACK) runs here only on the writer,
//!   and a COMMIT (explicit or implicit) only on the writer, whose commits never checkpoint
//!   (the database's checkpointer does that), and only when nothing in the transaction was
//!   slow: it then writes a few pages to the WAL, no fsync (group commit fsyncs after the
//!   writer is released).
//!
//! Safety: the connection is opened in SQLite's serialized mode (`SQLITE_OPEN_FULLMUTEX`), so
//! SQLite itself serialises calls made here and on sqlx's worker thread, even if a statement
//! abandoned there still runs (the session cancels it and waits for the worker before coming
//! here: `Conn::worker_busy`); the statements prepared here are finalized before the
//! connection is closed (see `Conn`'s field order and `ReaderPool::close`).

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::raw::c_int;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::database::{BUSY_TIMEOUT, Interrupt};
use super::error::{SqlError, sqlstate};
use super::session::Kind;
use super::value::{Column, ColumnType, Value};

/// The longest a read runs on the serving thread before it is moved to sqlx's worker.
pub const INLINE_BUDGET: Duration = Duration::from_millis(2);

/// A write runs on the serving thread while its last run took at most this long.
pub const QUICK: Duration = Duration::from_millis(1);

/// Prepared statements kept per connection; past this the cache is emptied.
const CACHE_CAPACITY: usize = 256;

/// The engine's counters on `/metrics`: statements run, by where they ran
/// (`quartet_db_statements_total{thread="serving"|"worker"}`), and what became of optimistic
/// transactions (see `session`). Shared by every connection of an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineMetrics {
    pub serving: Counter,
    pub worker: Counter,
    /// Optimistic transactions begun again and replayed after another session took the
    /// writer: `quartet_db_transactions_replayed_total`.
    pub replayed: Counter,
    /// Replays whose counts differed (40001): `quartet_db_serialization_failures_total`.
    pub serialization_failures: Counter,
    /// Statements that ran past the budget here, unstoppable, and handed their thread's other
    /// sessions to another thread: `quartet_db_thread_hand_overs_total`.
    pub hand_overs: Counter,
}

impl EngineMetrics {
    /// Counters registered in `registry` (a role's `/metrics`).
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        let on = |thread: &str| {
            family
                .get_or_create(&vec![("thread".to_owned(), thread.to_owned())])
                .clone()
        };
        let paths = Self {
            serving: on("serving"),
            worker: on("worker"),
            replayed: Counter::default(),
            serialization_failures: Counter::default(),
            hand_overs: Counter::default(),
        };
        registry.register(
            "db_statements",
            "Statements run, on the thread serving the session or on sqlx's worker thread",
            family,
        );
        registry.register(
            "db_transactions_replayed",
            "Optimistic transactions replayed after another session took the writer",
            paths.replayed.clone(),
        );
        registry.register(
            "db_serialization_failures",
            "Optimistic transactions ended with 40001: a replayed statement's count differed",
            paths.serialization_failures.clone(),
        );
        registry.register(
            "db_thread_hand_overs",
            "Writes that ran past the inline budget inside a transaction and handed their thread's other sessions to another thread",
            paths.hand_overs.clone(),
        );
        paths
    }
}

/// What one statement produced, before it is turned into PostgreSQL's terms.
#[derive(Debug, Default)]
pub struct RawResult {
    /// Empty for a statement that returns no rows.
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
    pub affected: u64,
    pub last_insert: i64,
}

/// A prepared statement and what decides where it runs.
struct Prepared {
    statement: NonNull<ffi::sqlite3_stmt>,
    /// Reads only (and is not transaction control): runs here under the budget.
    reads_only: bool,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT…
    kind: Kind,
    /// SQLite's own verdict: changes nothing (transaction control counts as such).
    changes_nothing: bool,
    /// For a statement that writes: its text with the values left out
    /// ([`super::split::shape`]), the key of what is known of its speed.
    shape: Option<String>,
}

/// What Describe tells of a statement ([`Direct::describe`]).
#[derive(Debug)]
pub struct Description {
    pub columns: Vec<Column>,
    /// Per column: no declared type (an expression), so TEXT until inferred.
    pub undeclared: Vec<bool>,
    pub parameters: usize,
}

/// A write seen slow here runs this many times on the worker before it is tried here again.
const SLOW_RETRY: u32 = 16;

/// What is known of how long a shape of write takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speed {
    /// Not run yet: the first run goes to the worker.
    Unknown,
    /// Its last run took at most [`QUICK`]: it runs here.
    Quick,
    /// Seen slow: this many more runs go to the worker, then one is tried here again. (A time
    /// measured on the worker includes the hand-over, which under load alone can exceed
    /// [`QUICK`]: hence a countdown rather than a verdict.)
    Slow(u32),
}

/// Shapes of writes remembered per connection; past this the memory is emptied.
const SHAPE_CAPACITY: usize = 1024;

/// Writes longer than this have no shape remembered.
const SHAPE_MAX_BYTES: usize = 4096;

/// The raw SQLite connection of one [`super::database::Conn`] and its prepared statements.
pub struct Direct {
    handle: NonNull<ffi::sqlite3>,
    /// What is known of the speed of each shape of write. Keyed by shape so that a
    /// statement sent with its values inline, new text each time, is known after one run.
    speeds: HashMap<String, Speed>,
    /// The database's writer, whose commits never checkpoint: transaction control, commits
    /// and autocommitted writes may run here.
    commits_here: bool,
    /// A statement of the open transaction ran on the worker or took long: its COMMIT may
    /// have many pages to write, and runs on the worker too.
    slow_transaction: bool,
    statements: HashMap<String, Prepared>,
    paths: EngineMetrics,
    /// Told of every commit, when this is the writer (see [`Direct::watch_wal`]).
    wal_watch: Option<std::sync::Arc<WalWatch>>,
}

/// What the database's checkpointer learns from the writer's commits: SQLite calls
/// [`wal_committed`] after each one with the frames now in the WAL.
#[derive(Debug, Default)]
pub struct WalWatch {
    /// Frames in the WAL after the last commit.
    pub frames: std::sync::atomic::AtomicI64,
    /// Commits seen.
    pub commits: std::sync::atomic::AtomicU64,
    /// Notified once the WAL holds at least `threshold` frames.
    pub grown: tokio::sync::Notify,
    pub threshold: i64,
}

/// SQLite's WAL hook: runs on the thread of a COMMIT, so it only records and notifies.
extern "C" fn wal_committed(
    watch: *mut std::os::raw::c_void,
    _handle: *mut ffi::sqlite3,
    _database: *const std::os::raw::c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: `watch` is the `Arc<WalWatch>` that `watch_wal` registered; the Direct that owns
    // it removes the hook before dropping it.
    let watch = unsafe { &*(watch as *const WalWatch) };
    let frames = i64::from(frames);
    watch
        .frames
        .store(frames, std::sync::atomic::Ordering::Relaxed);
    watch
        .commits
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if frames >= watch.threshold {
        watch.grown.notify_one();
    }
    ffi::SQLITE_OK
}

// SAFETY: the handle is in serialized mode (see the module's documentation), and a Direct is
// used through `&mut` only: one thread at a time runs its statements.
unsafe impl Send for Direct {}
// SAFETY: every method that touches the handle or a statement takes `&mut self`; through
// `&Direct` there is nothing to call but `Debug`, which counts the cache.
unsafe impl Sync for Direct {}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("statements", &self.statements.len())
            .finish()
    }
}

impl Direct {
    /// `commits_here`: the connection is the writer, opened with `wal_autocheckpoint=0`.
    ///
    /// # Safety
    /// `handle` is an open connection in serialized mode that outlives the returned value.
    pub unsafe fn new(
        handle: NonNull<ffi::sqlite3>,
        commits_here: bool,
        paths: EngineMetrics,
    ) -> Self {
        Self {
            handle,
            speeds: HashMap::new(),
            commits_here,
            slow_transaction: false,
            statements: HashMap::new(),
            paths,
            wal_watch: None,
        }
    }

    /// Tells `watch` of every commit on this connection (SQLite's WAL hook, which also
    /// replaces SQLite's own autocheckpoint: the checkpointer does that).
    pub fn watch_wal(&mut self, watch: std::sync::Arc<WalWatch>) {
        let arg = std::sync::Arc::as_ptr(&watch) as *mut std::os::raw::c_void;
        // SAFETY: an open handle; `arg` stays valid while the hook is set, since this Direct
        // keeps the Arc and removes the hook before dropping it.
        unsafe { ffi::sqlite3_wal_hook(self.handle.as_ptr(), Some(wal_committed), arg) };
        self.wal_watch = Some(watch);
    }

    /// A statement of the open transaction ran on the worker or took long.
    pub fn transaction_was_slow(&self) -> bool {
        self.slow_transaction
    }

    /// Whether SQLite has a transaction open on this connection.
    pub fn in_transaction(&self) -> bool {
        // SAFETY: an open handle.
        unsafe { ffi::sqlite3_get_autocommit(self.handle.as_ptr()) == 0 }
    }

    /// Rolls back the open transaction here; false if that failed (the caller asks the
    /// worker).
    pub fn rollback(&mut self) -> bool {
        let handle = self.handle.as_ptr();
        // SAFETY: an open handle.
        if unsafe { ffi::sqlite3_get_autocommit(handle) } != 0 {
            return true; // no transaction open
        }
        self.slow_transaction = false;
        let Ok(Some(prepared)) = self.prepare("ROLLBACK") else {
            return false;
        };
        let statement = prepared.statement.as_ptr();
        let outcome = step_all(handle, statement, &[], 0);
        // SAFETY: a statement of this handle.
        unsafe { ffi::sqlite3_reset(statement) };
        outcome.is_ok()
    }

    /// Runs `sql` here if the rules allow; `Ok(None)` means it was not run (or was stopped at
    /// the budget, with no effect) and belongs on sqlx's worker thread.
    pub fn run(
        &mut self,
        sql: &str,
        params: &[Value],
        max_rows: usize,
        in_transaction: bool,
        interrupt: &Interrupt,
    ) -> Result<Option<RawResult>, SqlError> {
        let handle = self.handle.as_ptr();
        let commits_here = self.commits_here;
        let slow_transaction = self.slow_transaction;
        let Some(prepared) = self.prepare(sql)? else {
            return Ok(None);
        };
        let kind = prepared.kind;
        let statement = prepared.statement.as_ptr();
        let reads_only = prepared.reads_only;
        let changes_nothing = prepared.changes_nothing;
        if !reads_only {
            let here = match kind {
                Kind::Begin | Kind::Rollback | Kind::RollbackTo | Kind::Savepoint => commits_here,
                Kind::Commit => commits_here && !slow_transaction,
                Kind::Read | Kind::Write => {
                    matches!(self.speed(sql), Speed::Quick | Speed::Slow(0))
                        && (in_transaction || commits_here)
                }
            };
            if !here {
                if matches!(kind, Kind::Read | Kind::Write) {
                    self.update_speed(sql, |speed| match speed {
                        Speed::Slow(left) => Speed::Slow(left.saturating_sub(1)),
                        other => other,
                    });
                    if in_transaction {
                        self.slow_transaction = true;
                    }
                }
                return Ok(None);
            }
            // Readers refuse writes (`query_only`); `sqlite3_db_readonly` does not see that,
            // so the connection's role decides.
            if !changes_nothing && !self.commits_here {
                // A reader connection: the session moves the statement to the writer.
                return Err(SqlError::new(
                    sqlstate::READ_ONLY_SQL_TRANSACTION,
                    "attempt to write a readonly database",
                ));
            }
        }
        // A read, or a write outside a transaction (SQLite undoes all of an interrupted
        // autocommit statement), runs under the budget: a statement of a shape seen quick
        // can still be slow with other values. A write inside a transaction cannot be
        // stopped so (SQLite would roll back the whole transaction).
        let budgeted = reads_only || (!in_transaction && matches!(kind, Kind::Read | Kind::Write));
        let started = Instant::now();
        if budgeted {
            interrupt.set_budget(INLINE_BUDGET);
        } else {
            interrupt.set_hand_over(INLINE_BUDGET);
        }
        if !reads_only {
            // Never wait for a lock on this thread (see the module's documentation).
            // SAFETY: an open handle.
            unsafe { ffi::sqlite3_busy_timeout(handle, 0) };
        }
        let outcome = step_all(handle, statement, params, max_rows);
        interrupt.clear_budget();
        if interrupt.clear_hand_over() {
            self.paths.hand_overs.inc();
        }
        // SAFETY: the statement belongs to this handle; reset releases its read snapshot
        // and locks, whatever the outcome.
        let busy = unsafe {
            let busy = ffi::sqlite3_extended_errcode(handle) & 0xff == ffi::SQLITE_BUSY;
            ffi::sqlite3_reset(statement);
            ffi::sqlite3_clear_bindings(statement);
            if !reads_only {
                ffi::sqlite3_busy_timeout(handle, BUSY_TIMEOUT.as_millis() as c_int);
            }
            busy
        };
        if outcome.is_err() && busy {
            return Ok(None); // nothing done: the worker waits for the lock
        }
        self.paths.serving.inc();
        let took = started.elapsed();
        match kind {
            Kind::Begin => self.slow_transaction = false,
            Kind::Commit | Kind::Rollback => self.slow_transaction = false,
            Kind::Read | Kind::Write if !reads_only => {
                if took > QUICK {
                    self.update_speed(sql, |_| Speed::Slow(SLOW_RETRY));
                    if in_transaction {
                        self.slow_transaction = true;
                    }
                } else {
                    self.update_speed(sql, |_| Speed::Quick);
                }
            }
            _ => {}
        }
        match outcome {
            Err(_) if budgeted && interrupt.took_over_budget() => Ok(None),
            Err(err) => Err(err),
            Ok(mut raw) => {
                if !reads_only {
                    // SAFETY: an open handle.
                    raw.affected = unsafe { ffi::sqlite3_changes64(handle) }.max(0) as u64;
                }
                // SAFETY: an open handle.
                raw.last_insert = unsafe { ffi::sqlite3_last_insert_rowid(handle) };
                Ok(Some(raw))
            }
        }
    }

    /// Records how long `sql` took on sqlx's worker thread, so that a quick write runs here
    /// next time.
    pub fn ran_on_worker(&mut self, sql: &str, took: Duration) {
        self.paths.worker.inc();
        match self.statements.get(sql) {
            Some(prepared) if prepared.reads_only => {} // a long read leaves nothing to write
            _ => match super::session::kind_of(sql) {
                Kind::Begin | Kind::Commit | Kind::Rollback => self.slow_transaction = false,
                _ => self.slow_transaction = true,
            },
        }
        self.update_speed(sql, |speed| match speed {
            _ if took <= QUICK => Speed::Quick,
            Speed::Unknown => Speed::Slow(SLOW_RETRY),
            other => other,
        });
    }

    /// What is known of the speed of `sql`'s shape.
    fn speed(&self, sql: &str) -> Speed {
        self.statements
            .get(sql)
            .and_then(|prepared| prepared.shape.as_ref())
            .and_then(|shape| self.speeds.get(shape).copied())
            .unwrap_or(Speed::Unknown)
    }

    fn update_speed(&mut self, sql: &str, update: impl FnOnce(Speed) -> Speed) {
        let Some(shape) = self.statements.get(sql).and_then(|p| p.shape.as_ref()) else {
            return;
        };
        if let Some(speed) = self.speeds.get_mut(shape) {
            *speed = update(*speed);
            return;
        }
        if self.speeds.len() >= SHAPE_CAPACITY {
            self.speeds.clear();
        }
        self.speeds.insert(shape.clone(), update(Speed::Unknown));
    }

    /// Describes `sql` without running it: its result columns, typed as when it runs here,
    /// which of them have no declared type (expressions), and its parameter count. `Ok(None)`
    /// when it is not prepared here (several statements).
    pub fn describe(&mut self, sql: &str) -> Result<Option<Description>, SqlError> {
        let Some(prepared) = self.prepare(sql)? else {
            return Ok(None);
        };
        let statement = prepared.statement.as_ptr();
        // SAFETY: a prepared statement of this handle.
        let (parameters, undeclared) = unsafe {
            let parameters = ffi::sqlite3_bind_parameter_count(statement).max(0) as usize;
            let undeclared = (0..ffi::sqlite3_column_count(statement))
                .map(|index| ffi::sqlite3_column_decltype(statement, index).is_null())
                .collect();
            (parameters, undeclared)
        };
        Ok(Some(Description {
            columns: columns(statement),
            undeclared,
            parameters,
        }))
    }

    /// The cached statement for `sql`, prepared on first use; `None` for SQL this path does
    /// not take (empty, or more than one statement).
    fn prepare(&mut self, sql: &str) -> Result<Option<&mut Prepared>, SqlError> {
        if !self.statements.contains_key(sql) {
            let Some(prepared) = self.prepare_new(sql)? else {
                return Ok(None);
            };
            if self.statements.len() >= CACHE_CAPACITY {
                self.finalize_all();
            }
            self.statements.insert(sql.to_owned(), prepared);
        }
        Ok(self.statements.get_mut(sql))
    }

    fn prepare_new(&mut self, sql: &str) -> Result<Option<Prepared>, SqlError> {
        let handle = self.handle.as_ptr();
        let Ok(length) = c_int::try_from(sql.len()) else {
            return Ok(None);
        };
        let mut statement = std::ptr::null_mut();
        let mut tail = std::ptr::null();
        // SAFETY: `sql` is valid for `length` bytes; SQLite writes the statement and the
        // position after it.
        let status = unsafe {
            ffi::sqlite3_prepare_v3(
                handle,
                sql.as_ptr().cast(),
                length,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut statement,
                &mut tail,
            )
        };
        if status != ffi::SQLITE_OK {
            return Err(last_error(handle));
        }
        let Some(statement) = NonNull::new(statement) else {
            return Ok(None); // only whitespace or comments
        };
        let consumed = (tail as usize).saturating_sub(sql.as_ptr() as usize);
        let rest = sql.get(consumed..).unwrap_or("");
        if !super::split::code_only(rest).trim().is_empty() {
            // SAFETY: prepared above and not stored anywhere.
            unsafe { ffi::sqlite3_finalize(statement.as_ptr()) };
            return Ok(None);
        }
        // SAFETY: a prepared statement.
        let read_only = unsafe { ffi::sqlite3_stmt_readonly(statement.as_ptr()) } != 0;
        let kind = super::session::kind_of(sql);
        let control = !matches!(kind, Kind::Read | Kind::Write);
        Ok(Some(Prepared {
            statement,
            reads_only: read_only && !control,
            kind,
            changes_nothing: read_only,
            // (Long SQL, such as a many-row INSERT, is not remembered: always the worker.)
            shape: (!read_only && !control && sql.len() <= SHAPE_MAX_BYTES)
                .then(|| super::split::shape(sql)),
        }))
    }

    /// Finalizes every cached statement (before the connection closes).
    pub fn finalize_all(&mut self) {
        for (_, prepared) in self.statements.drain() {
            // SAFETY: each statement was prepared on this handle and is finalized once.
            unsafe { ffi::sqlite3_finalize(prepared.statement.as_ptr()) };
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.finalize_all();
        if self.wal_watch.take().is_some() {
            // SAFETY: an open handle; no hook is left pointing at the dropped watch.
            unsafe { ffi::sqlite3_wal_hook(self.handle.as_ptr(), None, std::ptr::null_mut()) };
        }
    }
}

/// How long a statement that cannot be stopped waits for another thread to take its runtime
/// worker over, before it carries on regardless (and tries again after [`HAND_OVER_RETRY`]).
const HAND_OVER_WAIT: Duration = Duration::from_millis(1);

/// After a hand-over that no thread took in time (both cores busy), the statement runs this
/// long before it tries again: at most a tenth of its time goes to waiting.
pub const HAND_OVER_RETRY: Duration = Duration::from_millis(10);

/// Called by a statement that runs here past [`INLINE_BUDGET`] and cannot be stopped: on a
/// multi-threaded runtime's worker, gives the worker (its queue of other tasks, its sockets)
/// to a new thread through [`tokio::task::block_in_place`], and returns true once that runtime
/// runs tasks again; this thread then finishes the statement, its session waiting alone.
/// False where there is nothing to give (a current-thread runtime, no runtime) or when no
/// thread took over within [`HAND_OVER_WAIT`] (this thread keeps the worker).
///
/// Runs inside SQLite's progress handler, on the statement's thread.
pub fn hand_over_thread() -> bool {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::runtime::{Handle, RuntimeFlavor};
    let Ok(runtime) = Handle::try_current() else {
        return false;
    };
    // block_in_place panics on a current-thread runtime.
    if runtime.runtime_flavor() != RuntimeFlavor::MultiThread {
        return false;
    }
    let running = Arc::new(AtomicBool::new(false));
    tokio::task::block_in_place(|| {
        // Spawned from outside the worker, this task runs once another thread holds it.
        let signal = Arc::clone(&running);
        runtime.spawn(async move { signal.store(true, Ordering::Release) });
        let deadline = Instant::now() + HAND_OVER_WAIT;
        while !running.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(50));
        }
    });
    running.load(Ordering::Acquire)
}

/// Binds `params`, steps `statement` to its end and collects the rows.
fn step_all(
    handle: *mut ffi::sqlite3,
    statement: *mut ffi::sqlite3_stmt,
    params: &[Value],
    max_rows: usize,
) -> Result<RawResult, SqlError> {
    bind_all(handle, statement, params)?;
    let mut raw = RawResult::default();
    loop {
        // SAFETY: a prepared, bound statement of this handle.
        match unsafe { ffi::sqlite3_step(statement) } {
            ffi::SQLITE_ROW => {
                if raw.columns.is_empty() {
                    raw.columns = columns(statement);
                }
                raw.rows.push(row(statement, raw.columns.len()));
                if max_rows > 0 && raw.rows.len() > max_rows {
                    return Err(SqlError::new(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        format!("the statement returns more than {max_rows} rows"),
                    ));
                }
            }
            ffi::SQLITE_DONE => break,
            _ => return Err(last_error(handle)),
        }
    }
    if raw.columns.is_empty() {
        // A query that returned no row still has columns, which clients show.
        raw.columns = columns(statement);
    }
    Ok(raw)
}

/// Binds parameters as sqlx does: `?NNN` and `$NNN` by number, `?` in order; a parameter
/// without a value stays NULL.
fn bind_all(
    handle: *mut ffi::sqlite3,
    statement: *mut ffi::sqlite3_stmt,
    params: &[Value],
) -> Result<(), SqlError> {
    // SAFETY: a prepared statement.
    let count = unsafe { ffi::sqlite3_bind_parameter_count(statement) };
    let mut next = 0usize;
    for index in 1..=count {
        // SAFETY: index is within 1..=count; the name, when there is one, is NUL-terminated.
        let name = unsafe { ffi::sqlite3_bind_parameter_name(statement, index) };
        let number = if name.is_null() {
            next += 1;
            next
        } else {
            // SAFETY: non-null, NUL-terminated, owned by the statement.
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
            let digits = name.strip_prefix(['?', '$']).unwrap_or("");
            match digits.parse::<usize>() {
                Ok(number) if number > 0 => number,
                _ => {
                    return Err(SqlError::new(
                        sqlstate::SYNTAX_ERROR,
                        format!(
                            "parameter {name}: only numbered parameters ($1, ?1) are supported"
                        ),
                    ));
                }
            }
        };
        let Some(value) = params.get(number - 1) else {
            break; // as sqlx: unbound parameters are NULL
        };
        // SAFETY: the pointers and lengths come from live Rust values; SQLITE_TRANSIENT makes
        // SQLite copy text and blobs before the call returns.
        let status = unsafe {
            match value {
                Value::Null => ffi::sqlite3_bind_null(statement, index),
                Value::Integer(i) => ffi::sqlite3_bind_int64(statement, index, *i),
                Value::Real(r) => ffi::sqlite3_bind_double(statement, index, *r),
                Value::Text(text) => ffi::sqlite3_bind_text64(
                    statement,
                    index,
                    text.as_ptr().cast(),
                    text.len() as u64,
                    ffi::SQLITE_TRANSIENT(),
                    ffi::SQLITE_UTF8 as u8,
                ),
                Value::Blob(bytes) => ffi::sqlite3_bind_blob64(
                    statement,
                    index,
                    bytes.as_ptr().cast(),
                    bytes.len() as u64,
                    ffi::SQLITE_TRANSIENT(),
                ),
            }
        };
        if status != ffi::SQLITE_OK {
            return Err(last_error(handle));
        }
    }
    Ok(())
}

/// The result columns: names, and the PostgreSQL type of the declared type (TEXT, refined by
/// the first row's values, when there is none), as the sqlx path reports them.
fn columns(statement: *mut ffi::sqlite3_stmt) -> Vec<Column> {
    // SAFETY: a prepared statement; names and declared types are NUL-terminated strings
    // owned by it, copied before the next call.
    unsafe {
        let count = ffi::sqlite3_column_count(statement);
        (0..count)
            .map(|index| {
                let name = ffi::sqlite3_column_name(statement, index);
                let name = if name.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(name).to_string_lossy().into_owned()
                };
                let declared = ffi::sqlite3_column_decltype(statement, index);
                let ty = if declared.is_null() {
                    ColumnType::Text
                } else {
                    ColumnType::from_declared(&CStr::from_ptr(declared).to_string_lossy())
                };
                Column { name, ty }
            })
            .collect()
    }
}

/// The current row's values, by their storage class.
fn row(statement: *mut ffi::sqlite3_stmt, count: usize) -> Vec<Value> {
    (0..count as c_int)
        .map(|index| {
            // SAFETY: the statement is on a row; a text or blob pointer is valid for the
            // byte count SQLite reports until the next step, and is copied here.
            unsafe {
                match ffi::sqlite3_column_type(statement, index) {
                    ffi::SQLITE_INTEGER => {
                        Value::Integer(ffi::sqlite3_column_int64(statement, index))
                    }
                    ffi::SQLITE_FLOAT => Value::Real(ffi::sqlite3_column_double(statement, index)),
                    ffi::SQLITE_TEXT => {
                        let text = ffi::sqlite3_column_text(statement, index);
                        let length = ffi::sqlite3_column_bytes(statement, index).max(0) as usize;
                        if text.is_null() {
                            Value::Text(String::new())
                        } else {
                            let bytes = std::slice::from_raw_parts(text, length);
                            Value::Text(String::from_utf8_lossy(bytes).into_owned())
                        }
                    }
                    ffi::SQLITE_BLOB => {
                        let blob = ffi::sqlite3_column_blob(statement, index);
                        let length = ffi::sqlite3_column_bytes(statement, index).max(0) as usize;
                        if blob.is_null() {
                            Value::Blob(Vec::new())
                        } else {
                            Value::Blob(std::slice::from_raw_parts(blob.cast(), length).to_vec())
                        }
                    }
                    _ => Value::Null,
                }
            }
        })
        .collect()
}

/// The handle's last error as a SQLSTATE and message.
fn last_error(handle: *mut ffi::sqlite3) -> SqlError {
    // SAFETY: an open handle; the message is NUL-terminated and copied at once.
    let (extended, message) = unsafe {
        let message = ffi::sqlite3_errmsg(handle);
        let message = if message.is_null() {
            String::from("unknown SQLite error")
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        };
        (ffi::sqlite3_extended_errcode(handle), message)
    };
    SqlError::from_sqlite(extended, message)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Session, SessionLimits};

    fn limits() -> SessionLimits {
        SessionLimits {
            statement_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(1),
            max_rows: 0,
        }
    }

    fn counts(paths: &EngineMetrics) -> (u64, u64) {
        (paths.serving.get(), paths.worker.get())
    }

    #[tokio::test]
    async fn short_statements_run_here_and_long_reads_move_to_the_worker() {
        let paths = EngineMetrics::default();
        let (_dir, _engine, db) = crate::engine::tests::scratch(&paths).await;
        let mut session = Session::new(Arc::clone(&db), limits());
        session
            .execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)", &[])
            .await
            .expect("create");

        // A write runs on the worker the first time, and here once it has been seen quick.
        // BEGIN IMMEDIATE runs here; the COMMIT of a transaction in which a statement ran on
        // the worker runs there too.
        let insert = "INSERT INTO t (id, name) VALUES (?1, ?2)";
        let before = counts(&paths);
        session.execute("BEGIN", &[]).await.expect("begin");
        for id in 1..=3 {
            let done = session
                .execute(insert, &[Value::Integer(id), Value::Text(format!("n{id}"))])
                .await
                .expect("insert");
            assert_eq!(done.tag, "INSERT 0 1");
            assert_eq!(done.last_insert_id, Some(id));
        }
        session.execute("COMMIT", &[]).await.expect("commit");
        let after = counts(&paths);
        assert_eq!(
            after.1 - before.1,
            2,
            "the first INSERT and COMMIT on the worker"
        );
        assert_eq!(
            after.0 - before.0,
            3,
            "BEGIN IMMEDIATE and the next INSERTs here"
        );
        // Outside a transaction too (the writer's commits never checkpoint), and the same
        // write with other values inline is known quick already.
        let before = counts(&paths);
        session
            .execute(insert, &[Value::Integer(4), Value::Text("n4".into())])
            .await
            .expect("autocommit insert");
        session
            .execute("INSERT INTO t (id, name) VALUES (5, 'n5')", &[])
            .await
            .expect("autocommit insert, values inline");
        assert_eq!(counts(&paths).0 - before.0, 2);

        // Point selects run here, typed as the sqlx path types them.
        let before = counts(&paths);
        for id in 1..=3 {
            let row = session
                .execute(
                    "SELECT id, name FROM t WHERE id = ?1",
                    &[Value::Integer(id)],
                )
                .await
                .expect("select");
            assert_eq!(row.tag, "SELECT 1");
            assert_eq!(
                row.rows,
                vec![vec![Value::Integer(id), Value::Text(format!("n{id}"))]]
            );
            assert_eq!(row.columns[0].ty, ColumnType::Int8);
            assert_eq!(row.columns[1].ty, ColumnType::Text);
        }
        assert_eq!(counts(&paths).0 - before.0, 3);

        // A read past the budget is stopped and run again on the worker, with the same answer.
        let long = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) FROM c";
        let before = counts(&paths);
        let counted = session.execute(long, &[]).await.expect("long read");
        assert_eq!(counted.rows, vec![vec![Value::Integer(300_000)]]);
        assert_eq!(counts(&paths).1 - before.1, 1, "moved to the worker");

        // A write that took long goes back to the worker next time.
        let slow_update = "UPDATE t SET name = (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) SELECT 'n' || count(*) FROM c) WHERE id = ?1";
        let before = counts(&paths);
        session.execute("BEGIN", &[]).await.expect("begin");
        for _ in 0..3 {
            let done = session
                .execute(slow_update, &[Value::Integer(1)])
                .await
                .expect("slow update");
            assert_eq!(done.tag, "UPDATE 1");
        }
        session.execute("COMMIT", &[]).await.expect("commit");
        let after = counts(&paths);
        assert_eq!(after.0 - before.0, 1, "only BEGIN IMMEDIATE here");
        assert_eq!(
            after.1 - before.1,
            4,
            "the slow write, and then its COMMIT, there"
        );
    }

    /// A write inside a transaction cannot be stopped at the budget; once past it, the other
    /// tasks of its runtime's one worker (other sessions, here a ticker) carry on on another
    /// thread while it runs to its end.
    #[test]
    fn a_slow_write_in_a_transaction_does_not_hold_up_its_threads_other_sessions() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let paths = EngineMetrics::default();
            let (_dir, _engine, db) = crate::engine::tests::scratch(&paths).await;
            let served = tokio::spawn(async move {
                let mut session = Session::new(Arc::clone(&db), limits());
                session
                    .execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)", &[])
                    .await
                    .expect("create");
                session
                    .execute("INSERT INTO t (id, name) VALUES (1, 'a')", &[])
                    .await
                    .expect("insert");
                // Quick with a small count (seen quick twice, so it runs here), slow with a
                // large one.
                let update = "UPDATE t SET name = (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?2) SELECT 'n' || count(*) FROM c) WHERE id = ?1";
                session.execute("BEGIN", &[]).await.expect("begin");
                for _ in 0..2 {
                    session
                        .execute(update, &[Value::Integer(1), Value::Integer(2)])
                        .await
                        .expect("quick update");
                }
                let here = paths.serving.get();
                let started = Instant::now();
                session
                    .execute(update, &[Value::Integer(1), Value::Integer(3_000_000)])
                    .await
                    .expect("slow update");
                let took = started.elapsed();
                assert_eq!(paths.serving.get() - here, 1, "the slow update ran here");
                assert_eq!(paths.hand_overs.get(), 1, "and handed its thread over once");
                session.execute("COMMIT", &[]).await.expect("commit");
                took
            });
            // The ticker shares the runtime's only worker with the session, and records the
            // longest it went without running.
            let longest_gap_us = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let gaps = Arc::clone(&longest_gap_us);
            let ticker = tokio::spawn(async move {
                let mut last = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let gap = last.elapsed().as_micros() as u64;
                    gaps.fetch_max(gap, std::sync::atomic::Ordering::Relaxed);
                    last = Instant::now();
                }
            });
            let took = served.await.expect("session");
            ticker.abort();
            let longest_gap =
                Duration::from_micros(longest_gap_us.load(std::sync::atomic::Ordering::Relaxed));
            assert!(
                took > Duration::from_millis(100),
                "the slow update took {took:?}: not slow enough to show anything"
            );
            assert!(
                longest_gap < took / 3,
                "the ticker waited {longest_gap:?} while the update took {took:?}"
            );
        });
        runtime.shutdown_background();
    }

    /// A statement abandoned on sqlx's worker (its future dropped: a client gone) is stopped
    /// before the connection's next statement runs here; the next one does not wait for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_statement_is_stopped_before_the_next_one() {
        let paths = EngineMetrics::default();
        let (_dir, _engine, db) = crate::engine::tests::scratch(&paths).await;
        let mut session = Session::new(Arc::clone(&db), limits());
        let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000000) SELECT count(*) FROM c";
        let abandoned =
            tokio::time::timeout(Duration::from_millis(300), session.execute(endless, &[])).await;
        assert!(abandoned.is_err(), "still running when dropped");
        let started = Instant::now();
        let one = session.execute("SELECT 1", &[]).await.expect("select");
        assert_eq!(one.rows, vec![vec![Value::Integer(1)]]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited {:?} for the abandoned statement",
            started.elapsed()
        );
    }

    /// A write that finds the database locked by another connection does not wait on the
    /// serving thread: it is run again on the worker, which waits for the lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_database_moves_a_write_to_the_worker() {
        use sqlx::{Connection as _, Executor as _};
        let paths = EngineMetrics::default();
        let (_dir, _engine, db) = crate::engine::tests::scratch(&paths).await;
        let mut session = Session::new(Arc::clone(&db), limits());
        session
            .execute("CREATE TABLE t (id INTEGER PRIMARY KEY)", &[])
            .await
            .expect("create");
        let insert = "INSERT INTO t (id) VALUES (?1)";
        for id in 1..=2 {
            session
                .execute(insert, &[Value::Integer(id)])
                .await
                .expect("insert"); // the second one, here
        }

        // Another connection holds the write lock for 300 ms (in this process: with the
        // unix-excl VFS no other process can open the file).
        let mut other = sqlx::sqlite::SqliteConnection::connect(&format!(
            "sqlite://{}?vfs=unix-excl",
            db.path.display()
        ))
        .await
        .expect("other connection");
        other.execute("BEGIN IMMEDIATE").await.expect("lock");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            other.execute("COMMIT").await.expect("unlock");
            other
        });
        let before = counts(&paths);
        let started = Instant::now();
        session
            .execute(insert, &[Value::Integer(3)])
            .await
            .expect("insert once the lock is free");
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(counts(&paths).1 - before.1, 1, "waited on the worker");
        let _ = release.await.expect("released").close().await;
        let all = session
            .execute("SELECT count(*) FROM t", &[])
            .await
            .expect("count");
        assert_eq!(all.rows, vec![vec![Value::Integer(3)]]);
    }

    #[tokio::test]
    async fn parameters_errors_limits_and_schema_changes() {
        let paths = EngineMetrics::default();
        let (_dir, _engine, db) = crate::engine::tests::scratch(&paths).await;
        let mut session = Session::new(
            Arc::clone(&db),
            SessionLimits {
                max_rows: 2,
                ..limits()
            },
        );
        // Numbered parameters in any order; one without a value is NULL; every storage class.
        let row = session
            .execute(
                "SELECT ?2, ?1, ?3, ?4, ?5",
                &[
                    Value::Integer(7),
                    Value::Text("x".into()),
                    Value::Real(1.5),
                    Value::Blob(vec![0, 255]),
                ],
            )
            .await
            .expect("select");
        assert_eq!(
            row.rows,
            vec![vec![
                Value::Text("x".into()),
                Value::Integer(7),
                Value::Real(1.5),
                Value::Blob(vec![0, 255]),
                Value::Null
            ]]
        );
        assert_eq!(row.columns[2].ty, ColumnType::Float8);
        assert_eq!(row.columns[3].ty, ColumnType::Bytea);

        let err = session
            .execute("SELECT :name", &[Value::Integer(1)])
            .await
            .expect_err("named");
        assert_eq!(err.code, sqlstate::SYNTAX_ERROR);
        let err = session.execute("SELEC 1", &[]).await.expect_err("syntax");
        assert_eq!(err.code, sqlstate::SYNTAX_ERROR);
        let err = session
            .execute("SELECT * FROM missing", &[])
            .await
            .expect_err("table");
        assert_eq!(err.code, sqlstate::UNDEFINED_TABLE);

        session
            .execute("CREATE TABLE u (id INTEGER PRIMARY KEY, a TEXT)", &[])
            .await
            .expect("create");
        let insert = "INSERT INTO u (id) VALUES (?1)";
        session.execute("BEGIN", &[]).await.expect("begin");
        for id in 1..=3 {
            session
                .execute(insert, &[Value::Integer(id)])
                .await
                .expect("insert");
        }
        session.execute("COMMIT", &[]).await.expect("commit");
        session.execute("BEGIN", &[]).await.expect("begin");
        let before = counts(&paths);
        let err = session
            .execute(insert, &[Value::Integer(1)])
            .await
            .expect_err("duplicate");
        assert_eq!(err.code, sqlstate::UNIQUE_VIOLATION);
        assert_eq!(
            counts(&paths).0 - before.0,
            2,
            "BEGIN IMMEDIATE and the refused INSERT on the serving thread"
        );
        session.execute("ROLLBACK", &[]).await.expect("rollback");

        // The row limit stops a read here too.
        let err = session
            .execute("SELECT id FROM u", &[])
            .await
            .expect_err("too many rows");
        assert_eq!(err.code, sqlstate::PROGRAM_LIMIT_EXCEEDED);

        // A cached statement follows a schema change (SQLite prepares it again).
        let all = "SELECT * FROM u WHERE id = 1";
        let before = session.execute(all, &[]).await.expect("select");
        assert_eq!(before.columns.len(), 2);
        session
            .execute("ALTER TABLE u ADD COLUMN b INTEGER DEFAULT 5", &[])
            .await
            .expect("alter");
        let after = session.execute(all, &[]).await.expect("select");
        assert_eq!(after.columns.len(), 3);
        assert_eq!(after.columns[2].name, "b");
        assert_eq!(
            after.rows,
            vec![vec![Value::Integer(1), Value::Null, Value::Integer(5)]]
        );
        // No rows: the columns are still there.
        let none = session
            .execute("SELECT id, a FROM u WHERE id = 99", &[])
            .await
            .expect("select");
        assert_eq!(none.tag, "SELECT 0");
        assert!(none.returns_rows);
        assert_eq!(none.columns.len(), 2);
    }
}
