//! A client's session on one database: runs statements one at a time, keeps the transaction
//! state PostgreSQL clients see (idle, in a transaction, failed), and pins the writer
//! connection from BEGIN to COMMIT/ROLLBACK.
//!
//! Outside a transaction a statement that only reads goes to a reader connection (if it turns
//! out to write after all, SQLite refuses it there and it runs on the writer); everything else
//! runs on the writer in autocommit. A transaction's first statement takes the writer with
//! `BEGIN IMMEDIATE`, so a transaction never fails later for want of the write lock.
//!
//! **Optimistic transactions.** SQLite has one writer, and a transaction that held it from
//! its first statement to COMMIT would hold it across every round trip to its client: the
//! other sessions' writes would take turns, waiting on the network. So while a transaction's
//! statements only write and answer with a count (INSERT, UPDATE, DELETE without RETURNING),
//! the session lets go of the writer after each one and leaves the transaction open on it,
//! marked as its own ([`TxId`]). If another session takes the writer meanwhile, it rolls that
//! transaction back; when the owner comes back (its next statement, or COMMIT), it begins
//! again and replays its statements, checking that each affects as many rows as the client
//! was told. Then what the client saw is what a serial run at that point gives, and the
//! transaction goes on; if a count differs, or a replayed statement fails, the transaction
//! ends with `40001` (serialization failure), which clients retry. The first statement that
//! returns rows (a SELECT, a RETURNING), changes the schema, sets a savepoint or was slow
//! pins the transaction to the writer until it ends, as before. The HTTP API, whose answers
//! carry the last inserted rowid (which a replay may change), always pins.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Either, SqlSafeStr as _};

use super::database::{Conn, Database, OwnedReader, TxId};
use super::direct::RawResult;
use super::error::{SqlError, sqlstate};
use super::guard;
use super::value::{Column, Value, bind, columns_of, refine_types, values_of};

/// What ReadyForQuery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

/// The outcome of one statement.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementResult {
    /// Result columns (empty for a statement that returns no rows, such as INSERT).
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
    /// PostgreSQL's command tag: `SELECT 3`, `INSERT 0 1`, `CREATE TABLE`, `BEGIN`…
    pub tag: String,
    pub rows_affected: u64,
    pub last_insert_id: Option<i64>,
    /// Whether the statement returns rows (a SELECT with none still does).
    pub returns_rows: bool,
    /// A notice for the client (e.g. "there is no transaction in progress").
    pub warning: Option<String>,
}

impl StatementResult {
    fn tag_only(tag: &str) -> Self {
        Self {
            columns: Vec::new(),
            rows: Vec::new(),
            tag: tag.to_owned(),
            rows_affected: 0,
            last_insert_id: None,
            returns_rows: false,
            warning: None,
        }
    }
}

/// Limits a session runs under.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A statement running longer is interrupted (57014); zero = no limit.
    pub statement_timeout: Duration,
    /// The longest a statement waits for another transaction's write lock (55P03).
    pub lock_timeout: Duration,
    /// Rows one statement may return before it is stopped (54000); zero = no limit.
    pub max_rows: usize,
}

enum TxState {
    Idle,
    /// BEGIN was answered, nothing has run yet: the writer is taken by the first statement
    /// (PostgreSQL also takes a transaction's snapshot at its first statement), so a
    /// transaction does not hold SQLite's single writer across BEGIN's round trip.
    Pending,
    /// A transaction failed that holds no connection: a pending one, before it had one, or
    /// an optimistic one (rolled back at once, or, after an error the engine did not see,
    /// at ROLLBACK or by the writer's next user).
    PendingFailed,
    Active(TxConn),
    Failed(TxConn),
    /// An optimistic transaction between two statements: open on the writer unless another
    /// session rolled it back meanwhile; [`Session::replay`] holds what to do again.
    Optimistic,
}

/// A statement of an optimistic transaction, kept to be run again.
struct Logged {
    sql: String,
    params: Vec<Value>,
    /// The row count the client was given.
    affected: u64,
}

/// An optimistic transaction replays at most this many statements; past it, it pins the writer.
const REPLAY_STATEMENTS: usize = 32;

/// … and at most this many bytes of SQL and parameters.
const REPLAY_BYTES: usize = 256 * 1024;

/// The connection a transaction is pinned to: the writer, or (for a session that may only
/// read) a reader, so that a read-only transaction never holds the write lock.
enum TxConn {
    Writer(tokio::sync::OwnedMutexGuard<Conn>),
    Reader(Box<OwnedReader>),
}

impl std::ops::Deref for TxConn {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match self {
            TxConn::Writer(guard) => guard,
            TxConn::Reader(reader) => reader.conn_ref(),
        }
    }
}

impl std::ops::DerefMut for TxConn {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            TxConn::Writer(guard) => guard,
            TxConn::Reader(reader) => reader.conn_mut(),
        }
    }
}

/// The statement's kind, from its first words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Begin,
    Commit,
    Rollback,
    /// `ROLLBACK TO [SAVEPOINT] x`: undoes to a savepoint and clears a failed state.
    RollbackTo,
    /// `SAVEPOINT x`, `RELEASE x`: only inside a transaction.
    Savepoint,
    Read,
    Write,
}

pub(super) fn kind_of(sql: &str) -> Kind {
    // Read off the code only: `/* x */ BEGIN` is a BEGIN, `-- c\nCOMMIT` a COMMIT.
    let code = super::split::code_only(sql);
    let mut words = code
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| {
            !w.is_empty()
                && !w.eq_ignore_ascii_case("WORK")
                && !w.eq_ignore_ascii_case("TRANSACTION")
        });
    let first = words.next().unwrap_or_default();
    let is = |word: &str| first.eq_ignore_ascii_case(word);
    if is("BEGIN") || is("START") {
        Kind::Begin
    } else if is("COMMIT") || is("END") {
        Kind::Commit
    } else if is("ROLLBACK") || is("ABORT") {
        match words.next() {
            Some(word) if word.eq_ignore_ascii_case("TO") => Kind::RollbackTo,
            _ => Kind::Rollback,
        }
    } else if is("SAVEPOINT") || is("RELEASE") {
        Kind::Savepoint
    } else if is("SELECT") || is("VALUES") || is("EXPLAIN") {
        Kind::Read
    } else if is("WITH") {
        // A WITH may end in INSERT/UPDATE/DELETE; the reader refuses it then, and it is run
        // again on the writer.
        Kind::Read
    } else {
        Kind::Write
    }
}

/// PostgreSQL's command tag for a statement that ran.
fn tag_for(sql: &str, rows_returned: usize, affected: u64) -> String {
    let code = super::split::code_only(sql);
    let first = code
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches(['(', ';']);
    // The common verbs without allocating; the rest (CREATE TABLE…) read off three words.
    for (verb, tag) in [
        ("SELECT", "SELECT"),
        ("INSERT", "INSERT 0"),
        ("UPDATE", "UPDATE"),
        ("DELETE", "DELETE"),
    ] {
        if first.eq_ignore_ascii_case(verb)
            && (verb != "SELECT" || rows_returned > 0 || affected == 0)
        {
            let count = if verb == "SELECT" {
                rows_returned as u64
            } else {
                affected
            };
            return format!("{tag} {count}");
        }
    }
    let words: Vec<String> = code
        .split_whitespace()
        .take(3)
        .map(|w| w.trim_end_matches(['(', ';']).to_ascii_uppercase())
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    match first {
        "SELECT" | "VALUES" | "WITH" | "PRAGMA" | "EXPLAIN"
            if rows_returned > 0 || affected == 0 =>
        {
            format!("SELECT {rows_returned}")
        }
        "INSERT" | "REPLACE" => format!("INSERT 0 {affected}"),
        "UPDATE" => format!("UPDATE {affected}"),
        "DELETE" => format!("DELETE {affected}"),
        "CREATE" | "DROP" | "ALTER" => {
            // CREATE [UNIQUE|TEMP|VIRTUAL] TABLE/INDEX/VIEW/TRIGGER
            let object = words[1..]
                .iter()
                .find(|w| {
                    matches!(
                        w.as_str(),
                        "TABLE" | "INDEX" | "VIEW" | "TRIGGER" | "SCHEMA" | "DATABASE"
                    )
                })
                .cloned()
                .unwrap_or_default();
            format!("{first} {object}").trim_end().to_owned()
        }
        _ => first.to_owned(),
    }
}

/// A session on one database.
pub struct Session {
    db: Arc<Database>,
    state: TxState,
    limits: SessionLimits,
    /// The interrupt of the connection running a statement now (for CancelRequest).
    running: Arc<std::sync::Mutex<Option<Arc<super::database::Interrupt>>>>,
    /// The session may only read: its transactions run on a reader, never the writer.
    read_only: bool,
    /// The current (or last) transaction's mark on the writer.
    tx: TxId,
    /// Transactions may let go of the writer between statements (see the module's
    /// documentation); off for the HTTP API.
    optimistic: bool,
    /// In a transaction that is still optimistic: its statements so far. `None` once the
    /// transaction is pinned to its connection (or outside one).
    replay: Option<Vec<Logged>>,
    /// The last statement text that passed the checks, and its kind: a client running one
    /// prepared statement again and again (or the same statement with other values inline)
    /// is not checked again each time.
    checked: Option<(String, Kind)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("database", &self.db.name)
            .field("status", &self.status())
            .finish()
    }
}

/// Cancels whatever statement a session is running (from another task).
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<std::sync::Mutex<Option<Arc<super::database::Interrupt>>>>);

impl CancelHandle {
    pub fn cancel(&self) {
        if let Ok(running) = self.0.lock()
            && let Some(interrupt) = running.as_ref()
        {
            interrupt.cancel();
        }
    }
}

impl Session {
    pub fn new(db: Arc<Database>, limits: SessionLimits) -> Self {
        Self {
            db,
            state: TxState::Idle,
            limits,
            running: Arc::new(std::sync::Mutex::new(None)),
            read_only: false,
            tx: TxId::NONE,
            optimistic: true,
            replay: None,
            checked: None,
        }
    }

    /// For a caller that reports each INSERT's rowid (the HTTP API): a replay could change
    /// it, so transactions hold the writer from their first statement to their end.
    pub fn reporting_insert_ids(mut self) -> Self {
        self.optimistic = false;
        self
    }

    /// For a role that may only read: BEGIN pins a reader (`BEGIN DEFERRED`), so an idle read
    /// transaction never blocks writers.
    pub fn reading_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(Arc::clone(&self.running))
    }

    /// Marks an open transaction failed: an error the engine did not see itself (a refused
    /// statement, a bad parameter, a privilege) aborts the transaction as any error does.
    pub fn fail(&mut self) {
        self.state = match std::mem::replace(&mut self.state, TxState::Idle) {
            TxState::Active(writer) => TxState::Failed(writer),
            // An optimistic transaction left on the writer is rolled back by the next session
            // that takes it.
            TxState::Pending | TxState::Optimistic => TxState::PendingFailed,
            other => other,
        };
        self.replay = None;
    }

    pub fn status(&self) -> TxStatus {
        match self.state {
            TxState::Idle => TxStatus::Idle,
            TxState::Active(_) | TxState::Pending | TxState::Optimistic => TxStatus::InTransaction,
            TxState::Failed(_) | TxState::PendingFailed => TxStatus::Failed,
        }
    }

    /// Runs one statement (`$N` already rewritten to `?N`) with `params`.
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<StatementResult, SqlError> {
        // Values sent inline become parameters: one cached statement for all of them. (The
        // checks below read the code's words, which this leaves as they were.)
        let inlined = if params.is_empty() {
            super::split::inline_values(sql)
        } else {
            None
        };
        let (sql, params) = match &inlined {
            Some((text, values)) => (text.as_str(), values.as_slice()),
            None => (sql, params),
        };
        let kind = match &self.checked {
            Some((text, kind)) if text == sql => *kind,
            _ => {
                let refused = guard::check(sql).and_then(|()| {
                    if super::split::split_statements(sql).len() > 1 {
                        Err(SqlError::new(
                            sqlstate::SYNTAX_ERROR,
                            "one statement at a time: this SQL holds several",
                        ))
                    } else {
                        Ok(())
                    }
                });
                if let Err(err) = refused {
                    self.fail();
                    return Err(err);
                }
                let kind = kind_of(sql);
                // (Not a bulk INSERT's megabytes: statements run again are short.)
                self.checked = (sql.len() <= 4096).then(|| (sql.to_owned(), kind));
                kind
            }
        };
        if kind == Kind::Savepoint && matches!(self.state, TxState::Idle) {
            return Err(SqlError::new(
                "25P01",
                "SAVEPOINT and RELEASE can only be used in transaction blocks",
            ));
        }
        let mut state = std::mem::replace(&mut self.state, TxState::Idle);
        // What drivers ask about the schema while preparing (PRAGMA table_info…) does not
        // begin the transaction: it reads on a reader. (An optimistic transaction has not
        // changed the schema: DDL pins a transaction.)
        if matches!(state, TxState::Pending | TxState::Optimistic)
            && super::split::code_only(sql)
                .trim_start()
                .get(..6)
                .is_some_and(|w| w.eq_ignore_ascii_case("pragma"))
        {
            self.state = state;
            let mut reader = self.db.reader().await;
            return match reader.conn() {
                Some(conn) => run_on(conn, sql, params, self.limits, &self.running).await,
                None => Err(SqlError::new(
                    sqlstate::INTERNAL_ERROR,
                    "no reader connection",
                )),
            };
        }
        // The first statement of a pending transaction takes the writer and begins it.
        if matches!(state, TxState::Pending)
            && !matches!(kind, Kind::Begin | Kind::Commit | Kind::Rollback)
        {
            self.tx = TxId::next();
            let mut writer = match self.db.writer(self.limits.lock_timeout, self.tx).await {
                Ok(writer) => TxConn::Writer(writer),
                Err(err) => {
                    self.state = TxState::PendingFailed;
                    return Err(err);
                }
            };
            if let Err(err) = begin_immediate(&mut writer, self.limits, &self.running).await {
                self.state = TxState::PendingFailed;
                return Err(err);
            }
            writer.tx_owner = self.tx;
            self.replay = self.optimistic.then(Vec::new);
            state = TxState::Active(writer);
        }
        // An optimistic transaction takes the writer back for its next statement.
        if matches!(state, TxState::Optimistic) {
            match kind {
                Kind::Begin => {}
                Kind::Rollback => {
                    self.end_optimistic().await;
                    return Ok(StatementResult::tag_only("ROLLBACK"));
                }
                _ => match self.resume().await {
                    Ok(writer) => state = TxState::Active(TxConn::Writer(writer)),
                    Err(err) => {
                        self.replay = None;
                        // A COMMIT that fails ends the transaction; another statement fails it.
                        self.state = if kind == Kind::Commit {
                            TxState::Idle
                        } else {
                            TxState::PendingFailed
                        };
                        return Err(err);
                    }
                },
            }
        }
        match (kind, state) {
            (Kind::Begin, TxState::Idle) if self.read_only => {
                let mut reader = TxConn::Reader(Box::new(self.db.reader_owned().await));
                // Marked first: if this future is dropped while BEGIN runs, the reader's next
                // user still ends the transaction.
                reader.open_tx = true;
                if let Err(err) =
                    run_on(&mut reader, "BEGIN", &[], self.limits, &self.running).await
                {
                    reader.roll_back().await;
                    return Err(err);
                }
                self.state = TxState::Active(reader);
                Ok(StatementResult::tag_only("BEGIN"))
            }
            (Kind::Begin, TxState::Idle) => {
                self.state = TxState::Pending;
                Ok(StatementResult::tag_only("BEGIN"))
            }
            (
                Kind::Begin,
                state @ (TxState::Active(_)
                | TxState::Failed(_)
                | TxState::Pending
                | TxState::PendingFailed
                | TxState::Optimistic),
            ) => {
                self.state = state;
                let mut result = StatementResult::tag_only("BEGIN");
                result.warning = Some("there is already a transaction in progress".into());
                Ok(result)
            }
            (Kind::Commit, TxState::Active(mut writer)) => {
                self.replay = None;
                let outcome = run_on(&mut writer, "COMMIT", &[], self.limits, &self.running).await;
                if outcome.is_err() {
                    // A COMMIT that failed (disk full…) must not leave the transaction open.
                    writer.roll_back().await;
                }
                writer.open_tx = false;
                writer.tx_owner = TxId::NONE;
                let wrote = matches!(writer, TxConn::Writer(_));
                // The next writer may start while this commit is made durable.
                drop(writer);
                outcome?;
                if wrote {
                    self.durable().await?;
                }
                Ok(StatementResult::tag_only("COMMIT"))
            }
            (Kind::Commit | Kind::Rollback, TxState::Failed(mut writer))
            | (Kind::Rollback, TxState::Active(mut writer)) => {
                // (SQLite may have rolled back already: an interrupted write ends the whole
                // transaction. `roll_back` asks it.)
                writer.roll_back().await;
                self.replay = None;
                Ok(StatementResult::tag_only("ROLLBACK"))
            }
            (Kind::Commit, TxState::Pending) => Ok(StatementResult::tag_only("COMMIT")),
            (Kind::Rollback, TxState::Pending) => Ok(StatementResult::tag_only("ROLLBACK")),
            (Kind::Commit | Kind::Rollback, TxState::PendingFailed) => {
                // A failed optimistic transaction may still be open on the writer.
                self.db.roll_back_if_open(self.tx).await;
                Ok(StatementResult::tag_only("ROLLBACK"))
            }
            (_, TxState::PendingFailed) => {
                self.state = TxState::PendingFailed;
                Err(SqlError::new(
                    sqlstate::IN_FAILED_SQL_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ))
            }
            (_, TxState::Pending) => Err(SqlError::new(
                sqlstate::INTERNAL_ERROR,
                "a pending transaction was not begun",
            )),
            (Kind::Commit | Kind::Rollback, TxState::Idle) => {
                let tag = if kind == Kind::Commit {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                let mut result = StatementResult::tag_only(tag);
                result.warning = Some("there is no transaction in progress".into());
                Ok(result)
            }
            (Kind::RollbackTo, TxState::Active(mut writer) | TxState::Failed(mut writer)) => {
                // PostgreSQL's `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] x` in SQLite's words.
                let code = super::split::code_only(sql).to_ascii_lowercase();
                let target = code
                    .find(" to ")
                    .and_then(|at| sql.get(at + 4..))
                    .map(str::trim)
                    .unwrap_or("");
                let target = target
                    .strip_prefix("SAVEPOINT ")
                    .or_else(|| target.strip_prefix("savepoint "))
                    .unwrap_or(target);
                let statement = format!("ROLLBACK TO SAVEPOINT {target}");
                let outcome =
                    run_on(&mut writer, &statement, params, self.limits, &self.running).await;
                self.state = match outcome {
                    Ok(_) => TxState::Active(writer),
                    Err(_) => TxState::Failed(writer),
                };
                outcome
            }
            (_, TxState::Failed(writer)) => {
                self.state = TxState::Failed(writer);
                Err(SqlError::new(
                    sqlstate::IN_FAILED_SQL_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ))
            }
            (_, TxState::Optimistic) => Err(SqlError::new(
                sqlstate::INTERNAL_ERROR,
                "an optimistic transaction was not resumed",
            )),
            (_, TxState::Active(mut writer)) => {
                let outcome = run_on(&mut writer, sql, params, self.limits, &self.running).await;
                // As in PostgreSQL, any error aborts the transaction until ROLLBACK.
                self.state = match (&outcome, self.replay.as_mut()) {
                    (Err(_), Some(_)) => {
                        // Optimistic: nothing to keep (no savepoint), so the writer is freed now.
                        writer.roll_back().await;
                        self.replay = None;
                        TxState::PendingFailed
                    }
                    (Err(_), None) => TxState::Failed(writer),
                    (Ok(result), Some(log))
                        if replayable(kind, sql, params, result, log)
                            && !writer.direct.transaction_was_slow() =>
                    {
                        log.push(Logged {
                            sql: sql.to_owned(),
                            params: params.to_vec(),
                            affected: result.rows_affected,
                        });
                        // Lets go of the writer; the transaction stays open on it.
                        drop(writer);
                        TxState::Optimistic
                    }
                    (Ok(_), _) => {
                        self.replay = None; // pinned from now on
                        TxState::Active(writer)
                    }
                };
                outcome
            }
            (Kind::Read, TxState::Idle) => {
                let mut reader = self.db.reader().await;
                let outcome = match reader.conn() {
                    Some(conn) => run_on(conn, sql, params, self.limits, &self.running).await,
                    None => Err(SqlError::new(
                        sqlstate::INTERNAL_ERROR,
                        "no reader connection",
                    )),
                };
                drop(reader);
                match outcome {
                    Err(err) if err.code == sqlstate::READ_ONLY_SQL_TRANSACTION => {
                        self.autocommit_write(sql, params).await
                    }
                    other => other,
                }
            }
            (_, TxState::Idle) => self.autocommit_write(sql, params).await,
        }
    }

    async fn autocommit_write(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<StatementResult, SqlError> {
        let mut writer = self.db.writer(self.limits.lock_timeout, TxId::NONE).await?;
        let result = run_on(&mut writer, sql, params, self.limits, &self.running).await;
        drop(writer);
        let result = result?;
        // An autocommitted change is acknowledged once durable, as a COMMIT is.
        self.durable().await?;
        Ok(result)
    }

    /// Takes the writer back for an optimistic transaction: as it was left, if no other
    /// session took the writer meanwhile; else begun again with its statements replayed, each
    /// checked to affect the rows it affected before (40001 if not).
    async fn resume(&mut self) -> Result<tokio::sync::OwnedMutexGuard<Conn>, SqlError> {
        let mut writer = self.db.writer(self.limits.lock_timeout, self.tx).await?;
        if writer.open_tx && writer.tx_owner == self.tx {
            return Ok(writer);
        }
        self.db.metrics.replayed.inc();
        // Marked as this transaction's only once the replay is complete: a replay cut short
        // (this future dropped) is rolled back by whoever comes next, never continued.
        begin_immediate(&mut writer, self.limits, &self.running).await?;
        for logged in self.replay.as_deref().unwrap_or_default() {
            let again = run_on(
                &mut writer,
                &logged.sql,
                &logged.params,
                self.limits,
                &self.running,
            )
            .await;
            let differs = match again {
                Ok(result) if result.rows_affected == logged.affected => continue,
                Ok(result) => format!(
                    "it now affects {} row(s), not {}",
                    result.rows_affected, logged.affected
                ),
                Err(err) if err.code == sqlstate::QUERY_CANCELED => {
                    writer.roll_back().await;
                    return Err(err); // a cancel or a timeout, not a conflict
                }
                Err(err) => format!("it now fails: {}", err.message),
            };
            writer.roll_back().await;
            self.db.metrics.serialization_failures.inc();
            return Err(SqlError::new(
                sqlstate::SERIALIZATION_FAILURE,
                format!(
                    "could not serialize access due to concurrent update: a concurrent \
                     transaction changed what \"{}\" touched ({differs})",
                    logged.sql.chars().take(80).collect::<String>()
                ),
            ));
        }
        writer.tx_owner = self.tx;
        Ok(writer)
    }

    /// Rolls back an optimistic transaction (ROLLBACK, or the client gone) if it is still
    /// open on the writer. If another session holds the writer, it has rolled it back.
    async fn end_optimistic(&mut self) {
        self.state = TxState::Idle;
        self.replay = None;
        self.db.roll_back_if_open(self.tx).await;
    }

    async fn durable(&self) -> Result<(), SqlError> {
        match &self.db.sync {
            Some(sync) => sync.durable().await,
            None => Ok(()),
        }
    }

    /// The result columns and parameter count of `sql`, without running it (Describe).
    pub async fn describe(&mut self, sql: &str) -> Result<(Vec<Column>, usize), SqlError> {
        use sqlx::{Executor as _, Statement as _};
        let describe = async |conn: &mut Conn| {
            // Through SQLite itself, so that the columns are typed as the rows will be when
            // the statement runs on the serving thread.
            conn.settle_worker().await;
            let (mut columns, undeclared, parameters) = match conn.direct.describe(sql)? {
                Some(described) => (
                    described.columns,
                    described.undeclared,
                    described.parameters,
                ),
                None => {
                    let statement = conn
                        .sqlx()?
                        .prepare(sqlx::AssertSqlSafe(sql.to_owned()).into_sql_str())
                        .await
                        .map_err(|e| SqlError::from_sqlx(&e))?;
                    let parameters = match statement.parameters() {
                        Some(Either::Right(count)) => count,
                        Some(Either::Left(types)) => types.len(),
                        None => 0,
                    };
                    let undeclared = statement
                        .columns()
                        .iter()
                        .map(|c| sqlx::TypeInfo::name(sqlx::Column::type_info(c)) == "NULL")
                        .collect();
                    (columns_of(statement.columns()), undeclared, parameters)
                }
            };
            // Expressions have no declared type: read it off the select list.
            if undeclared.contains(&true)
                && let Some(expressions) = super::infer::select_list(sql)
                && expressions.len() == columns.len()
            {
                for ((column, expression), undeclared) in
                    columns.iter_mut().zip(&expressions).zip(&undeclared)
                {
                    if *undeclared && let Some(ty) = super::infer::expression_type(expression) {
                        column.ty = ty;
                    }
                }
            }
            Ok::<_, SqlError>((columns, parameters))
        };
        match &mut self.state {
            TxState::Active(writer) | TxState::Failed(writer) => describe(writer).await,
            // An optimistic transaction has not changed the schema (DDL pins a transaction):
            // a reader describes what it would.
            TxState::Idle | TxState::Pending | TxState::PendingFailed | TxState::Optimistic => {
                let mut reader = self.db.reader().await;
                match reader.conn() {
                    Some(conn) => describe(conn).await,
                    None => Err(SqlError::new(
                        sqlstate::INTERNAL_ERROR,
                        "no reader connection",
                    )),
                }
            }
        }
    }

    /// Ends an open transaction (the client went away): rolled back, the writer freed.
    pub async fn close(&mut self) {
        if matches!(self.state, TxState::Optimistic | TxState::PendingFailed) {
            self.end_optimistic().await;
        }
        if let TxState::Active(mut writer) | TxState::Failed(mut writer) =
            std::mem::replace(&mut self.state, TxState::Idle)
        {
            let _ = run_on(&mut writer, "ROLLBACK", &[], self.limits, &self.running).await;
            writer.open_tx = false;
        }
    }
}

/// Whether a statement that just ran in an optimistic transaction may be replayed later:
/// it only writes rows and answered with a count (a replay checks the count), and the
/// transaction's log stays small.
fn replayable(
    kind: Kind,
    sql: &str,
    params: &[Value],
    result: &StatementResult,
    log: &[Logged],
) -> bool {
    if kind != Kind::Write || result.returns_rows || log.len() >= REPLAY_STATEMENTS {
        return false;
    }
    let code = super::split::code_only(sql);
    let first = code.split_whitespace().next().unwrap_or("");
    if !["INSERT", "UPDATE", "DELETE", "REPLACE"]
        .iter()
        .any(|verb| first.eq_ignore_ascii_case(verb))
    {
        return false;
    }
    let size = |sql: &str, params: &[Value]| {
        sql.len()
            + params
                .iter()
                .map(|value| match value {
                    Value::Text(text) => text.len(),
                    Value::Blob(bytes) => bytes.len(),
                    _ => 8,
                })
                .sum::<usize>()
    };
    let logged: usize = log.iter().map(|l| size(&l.sql, &l.params)).sum();
    logged + size(sql, params) <= REPLAY_BYTES
}

/// Begins a write transaction on the writer. Marked open first (with no owner): if this
/// future is dropped while BEGIN runs on the worker, the writer's next user rolls back
/// whatever it left.
async fn begin_immediate(
    writer: &mut Conn,
    limits: SessionLimits,
    running: &std::sync::Mutex<Option<Arc<super::database::Interrupt>>>,
) -> Result<(), SqlError> {
    writer.open_tx = true;
    writer.tx_owner = TxId::NONE;
    if let Err(err) = run_on(writer, "BEGIN IMMEDIATE", &[], limits, running).await {
        writer.roll_back().await;
        return Err(err);
    }
    Ok(())
}

/// Runs one statement on `conn` under the session's limits.
async fn run_on(
    conn: &mut Conn,
    sql: &str,
    params: &[Value],
    limits: SessionLimits,
    running: &std::sync::Mutex<Option<Arc<super::database::Interrupt>>>,
) -> Result<StatementResult, SqlError> {
    conn.settle_worker().await;
    conn.interrupt.arm(limits.statement_timeout);
    if let Ok(mut slot) = running.lock() {
        *slot = Some(Arc::clone(&conn.interrupt));
    }
    // Short statements run here, on the session's thread; the rest on sqlx's worker thread
    // (see `direct` for which is which).
    let outcome = match conn
        .direct
        .run(sql, params, limits.max_rows, conn.open_tx, &conn.interrupt)
    {
        Ok(Some(raw)) => Ok(finish(sql, raw)),
        Err(err) => Err(err),
        Ok(None) => {
            let started = std::time::Instant::now();
            match conn.connection.as_mut() {
                Some(connection) => {
                    // Cleared only if this future is not dropped before the answer.
                    conn.worker_busy = true;
                    let outcome = run_statement(connection, sql, params, limits.max_rows).await;
                    conn.worker_busy = false;
                    conn.direct.ran_on_worker(sql, started.elapsed());
                    outcome.map(|raw| finish(sql, raw))
                }
                None => Err(SqlError::new(
                    sqlstate::ADMIN_SHUTDOWN,
                    "the database was closed",
                )),
            }
        }
    };
    conn.interrupt.disarm();
    if let Ok(mut slot) = running.lock() {
        *slot = None;
    }
    outcome
}

/// Runs a statement on sqlx's worker thread for the connection.
async fn run_statement(
    connection: &mut sqlx::sqlite::SqliteConnection,
    sql: &str,
    params: &[Value],
    max_rows: usize,
) -> Result<RawResult, SqlError> {
    use sqlx::Executor as _;
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    for value in params {
        query = bind(query, value);
    }
    let mut columns: Option<Vec<Column>> = None;
    let mut rows = Vec::new();
    let mut done: Option<SqliteQueryResult> = None;
    {
        let mut stream = (&mut *connection).fetch_many(query);
        while let Some(item) = stream
            .try_next()
            .await
            .map_err(|e| SqlError::from_sqlx(&e))?
        {
            match item {
                Either::Left(result) => done = Some(result),
                Either::Right(row) => {
                    if columns.is_none() {
                        columns = Some(columns_of(sqlx::Row::columns(&row)));
                    }
                    rows.push(values_of(&row));
                    if max_rows > 0 && rows.len() > max_rows {
                        return Err(SqlError::new(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!("the statement returns more than {max_rows} rows"),
                        ));
                    }
                }
            }
        }
    }
    let (affected, last_insert) = done
        .map(|d| (d.rows_affected(), d.last_insert_rowid()))
        .unwrap_or((0, 0));
    // A query that returned no row still has columns, which clients show: ask SQLite.
    let columns = match columns {
        Some(columns) => columns,
        None => (&mut *connection)
            .prepare(sqlx::AssertSqlSafe(sql.to_owned()).into_sql_str())
            .await
            .map(|statement| columns_of(sqlx::Statement::columns(&statement)))
            .unwrap_or_default(),
    };
    Ok(RawResult {
        columns,
        rows,
        affected,
        last_insert,
    })
}

/// A statement's outcome in PostgreSQL's terms: typed columns and the command tag.
fn finish(sql: &str, raw: RawResult) -> StatementResult {
    let RawResult {
        mut columns,
        rows,
        affected,
        last_insert,
    } = raw;
    let returns_rows = !columns.is_empty();
    if let Some(first) = rows.first() {
        refine_types(&mut columns, first);
    }
    let tag = if returns_rows {
        let verb = tag_for(sql, rows.len(), affected);
        if verb.starts_with("SELECT") || verb == "PRAGMA" {
            format!("SELECT {}", rows.len())
        } else {
            verb
        }
    } else {
        tag_for(sql, 0, affected)
    };
    let is_insert = tag.starts_with("INSERT");
    StatementResult {
        columns,
        rows,
        tag,
        rows_affected: affected,
        last_insert_id: (is_insert && affected > 0).then_some(last_insert),
        returns_rows,
        warning: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_kinds_and_tags() {
        assert_eq!(kind_of("  begin isolation level serializable"), Kind::Begin);
        assert_eq!(kind_of("START TRANSACTION"), Kind::Begin);
        assert_eq!(kind_of("rollback to savepoint a"), Kind::RollbackTo);
        assert_eq!(kind_of("ROLLBACK"), Kind::Rollback);
        assert_eq!(kind_of("end"), Kind::Commit);
        assert_eq!(kind_of("select 1"), Kind::Read);
        assert_eq!(kind_of("(select 1)"), Kind::Read);
        assert_eq!(kind_of("insert into t values (1)"), Kind::Write);
        assert_eq!(tag_for("insert into t values (1)", 0, 1), "INSERT 0 1");
        assert_eq!(tag_for("UPDATE t SET a = 1", 0, 3), "UPDATE 3");
        assert_eq!(
            tag_for("create unique index i on t(a)", 0, 0),
            "CREATE INDEX"
        );
        assert_eq!(tag_for("CREATE TABLE t (a)", 0, 0), "CREATE TABLE");
        assert_eq!(tag_for("select * from t", 2, 0), "SELECT 2");
        assert_eq!(tag_for("pragma foo", 0, 0), "SELECT 0");
    }
}
