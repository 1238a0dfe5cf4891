//! The PostgreSQL wire protocol on `db.pg_listen`, through the `pgwire` crate: SSLRequest with
//! rustls, SCRAM-SHA-256 against the catalog's verifiers, the simple protocol (several
//! statements per message) and the extended protocol (named statements and portals, Describe,
//! text and binary parameters and results), ReadyForQuery with the session's true transaction
//! status, and CancelRequest interrupting the running statement.
//!
//! Each connection gets its own handlers (pgwire asks for them once per connection), holding
//! the session on its database, opened after authentication.

mod batched;
mod binary;
mod catalog;
mod compat;
mod encode;
mod startup;
mod threads;

pub use threads::ServingThreads;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;

use crate::engine::session::CancelHandle;
use crate::engine::split::{rewrite_parameters, split_statements};
use crate::engine::value::{Column, ColumnType};
use crate::engine::{Engine, Privilege, Session, SessionLimits, SqlError, sqlstate};

pub use compat::{SERVER_VERSION, version_text};

/// What every connection shares.
pub struct PgService {
    pub engine: Arc<Engine>,
    pub limits: SessionLimits,
    /// Offered on SSLRequest.
    pub tls: Option<pgwire::tokio::TlsAcceptor>,
    /// Refuse password logins without TLS (staging and production, off loopback).
    pub require_tls: bool,
    cancels: std::sync::Mutex<HashMap<i32, (SecretKey, CancelHandle)>>,
    /// One generator for every connection, so that backend pids are unique.
    pub(crate) pids: Arc<pgwire::api::RandomPidSecretKeyGenerator>,
    /// A transaction left idle this long is rolled back and its connection ended (it would
    /// otherwise hold the single writer); zero = never.
    pub idle_in_transaction: std::time::Duration,
    /// Where sessions run (see [`threads`]).
    threads: ServingThreads,
    /// Cancelled when the role stops: idle sessions end, and the others get FATAL 57P01 on
    /// their next query, as PostgreSQL's fast shutdown does.
    pub stop: tokio_util::sync::CancellationToken,
    /// Connections now, against `db.max_connections`.
    pub sessions: SessionCounter,
}

impl std::fmt::Debug for PgService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgService")
            .field("tls", &self.tls.is_some())
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

impl PgService {
    pub fn new(
        engine: Arc<Engine>,
        limits: SessionLimits,
        tls: Option<pgwire::tokio::TlsAcceptor>,
        require_tls: bool,
        threads: ServingThreads,
    ) -> Self {
        Self {
            engine,
            limits,
            tls,
            require_tls,
            cancels: std::sync::Mutex::new(HashMap::new()),
            pids: Arc::new(pgwire::api::RandomPidSecretKeyGenerator::default()),
            idle_in_transaction: std::time::Duration::ZERO,
            threads,
            stop: tokio_util::sync::CancellationToken::new(),
            sessions: SessionCounter::new(0),
        }
    }

    /// Serves one client connection to its end, on one of the serving threads ([`threads`]).
    pub fn serve_on_thread(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
    ) -> impl Future<Output = ()> + use<> {
        let service = Arc::clone(self);
        self.threads
            .serve(stream, move |stream| service.serve(stream))
    }

    /// Serves one client connection to its end.
    pub async fn serve(self: Arc<Self>, stream: tokio::net::TcpStream) {
        let state = Arc::new(tokio::sync::Mutex::new(None));
        let registered = Arc::new(std::sync::Mutex::new(None));
        let handlers = Arc::new(ConnectionHandlers {
            query: Arc::new(QueryHandler {
                service: Arc::clone(&self),
                parser: Arc::new(Parser {
                    state: Arc::clone(&state),
                    service: Arc::clone(&self),
                    registered: Arc::clone(&registered),
                }),
                state,
                registered,
                idle: Arc::new(IdleClock::default()),
                unsynced: std::sync::atomic::AtomicBool::new(false),
            }),
            startup: Arc::new(startup::Startup::new(Arc::clone(&self))),
            service: Arc::clone(&self),
        });
        let query = Arc::clone(&handlers.query);
        let session = pgwire::tokio::process_socket(stream, self.tls.clone(), handlers);
        tokio::pin!(session);
        let ended = tokio::select! {
            ended = &mut session => ended,
            () = self.stop.cancelled() => {
                // Stopping: the session ends once no statement of its is under way (each
                // holds the state from its start until its answer is handed to pgwire).
                loop {
                    tokio::select! {
                        ended = &mut session => break ended,
                        () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
                            if query.state.try_lock().is_ok()
                                && !query.unsynced.load(std::sync::atomic::Ordering::Acquire)
                            {
                                break Ok(());
                            }
                        }
                    }
                }
            }
        };
        if let Err(err) = ended {
            tracing::debug!(error = %err, "PostgreSQL connection ended with an error");
        }
        // A transaction left open is rolled back here, within the connection's task, which
        // the role's shutdown waits for (the handlers' drop is the fallback for a task that
        // is stopped).
        if let Some(open) = query.state.lock().await.as_mut() {
            open.session.close().await;
        }
    }
}

/// Sessions admitted, against `db.max_connections`: one past it is refused at startup with
/// 53300 (too many clients), as PostgreSQL does, rather than left unaccepted. Only sessions
/// that sent a startup message count (not a CancelRequest, nor a probe that connects and
/// leaves). Shared by both front ends (this one and the PostgreSQL backend's proxy).
#[derive(Debug, Default)]
pub struct SessionCounter {
    max: usize,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl SessionCounter {
    /// At most `max` sessions (0: no limit).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            count: Arc::default(),
        }
    }

    /// A place for one more session, held while the returned value lives; `None` when all
    /// `max` are taken.
    pub fn try_admit(&self) -> Option<Admission> {
        use std::sync::atomic::Ordering;
        let mut now = self.count.load(Ordering::Relaxed);
        loop {
            if self.max != 0 && now >= self.max {
                return None;
            }
            match self.count.compare_exchange_weak(
                now,
                now + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Admission(Arc::clone(&self.count))),
                Err(actual) => now = actual,
            }
        }
    }
}

/// One session's place in a [`SessionCounter`], given back when dropped.
#[derive(Debug)]
pub struct Admission(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

struct ConnectionHandlers {
    service: Arc<PgService>,
    query: Arc<QueryHandler>,
    /// One per connection: it holds the session's place under `db.max_connections`.
    startup: Arc<startup::Startup>,
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.query)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.query)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(Canceller {
            service: Arc::clone(&self.service),
        })
    }
}

/// CancelRequest: the pid and secret key given at startup name the session to interrupt.
struct Canceller {
    service: Arc<PgService>,
}

#[async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let handle = self.service.cancels.lock().ok().and_then(|cancels| {
            cancels
                .get(&request.pid)
                .filter(|(secret, _)| key_bytes(secret) == key_bytes(&request.secret_key))
                .map(|(_, handle)| handle.clone())
        });
        match handle {
            Some(handle) => {
                tracing::info!(pid = request.pid, "cancel request");
                handle.cancel();
            }
            // No such session, or the wrong secret: ignored, as PostgreSQL does.
            None => tracing::debug!(pid = request.pid, "cancel request for no known session"),
        }
    }
}

/// A secret key's bytes: the same key may arrive parsed as an `i32` or as bytes.
fn key_bytes(key: &SecretKey) -> Vec<u8> {
    match key {
        SecretKey::I32(n) => n.to_be_bytes().to_vec(),
        SecretKey::Bytes(bytes) => bytes.to_vec(),
    }
}

/// A connection's open session.
struct Open {
    session: Session,
    database: String,
    user: String,
    privilege: Privilege,
    superuser: bool,
    settings: BTreeMap<String, String>,
    pid: i32,
    /// Statements parsed on this connection, by their text.
    parsed: HashMap<String, Prepared>,
    /// Its idle transaction was ended: the connection only answers with a FATAL error.
    terminated: bool,
}

/// Statements whose description a connection keeps.
const PARSED_CACHE: usize = 256;

/// A prepared statement of the extended protocol.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// As the client wrote it (for SET/SHOW/RESET).
    original: String,
    /// With `$N` as `?N` and session functions replaced: what SQLite runs.
    sql: String,
    columns: Vec<Column>,
    /// Each parameter's type: the client's, else inferred from the schema, else text.
    parameter_types: Vec<Type>,
    route: Route,
}

struct QueryHandler {
    service: Arc<PgService>,
    /// The extended protocol's parser, one per connection (pgwire asks for it at every Bind).
    parser: Arc<Parser>,
    state: Arc<tokio::sync::Mutex<Option<Open>>>,
    /// The pid this connection is registered under for CancelRequest.
    registered: Arc<std::sync::Mutex<Option<i32>>>,
    /// Since when the connection's transaction has been idle.
    idle: Arc<IdleClock>,
    /// An Execute's answer is queued until the Sync (see `batched`): the connection is not
    /// ended at stop meanwhile, or a committed statement's answer would be lost.
    unsynced: std::sync::atomic::AtomicBool,
}

/// When the connection's transaction went idle, for `db.idle_in_transaction_timeout_secs`.
#[derive(Debug, Default)]
struct IdleClock {
    /// [`idle_now`] when the last query left a transaction open; 0 while a query runs or
    /// outside a transaction.
    since: std::sync::atomic::AtomicU64,
    /// The connection's watcher task is running (one per connection, started by its first
    /// transaction: a timer per query would leave a sleeping task behind every statement).
    watched: std::sync::atomic::AtomicBool,
}

/// Milliseconds since the first call, from 1 (0 means "not idle").
fn idle_now() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl QueryHandler {
    /// Marks the start of a client query; refuses one on a connection whose idle transaction
    /// was ended.
    fn begin_query(&self, open: &Open) -> PgWireResult<()> {
        self.idle
            .since
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if open.terminated {
            return Err(fatal(
                "25P03",
                "terminating connection due to idle-in-transaction timeout",
            ));
        }
        if self.service.stop.is_cancelled() {
            return Err(fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            ));
        }
        Ok(())
    }

    /// After a query that left a transaction open: if nothing else comes within
    /// `idle_in_transaction`, the transaction is rolled back (freeing the writer) and the
    /// connection's next query gets a FATAL error, as PostgreSQL's
    /// `idle_in_transaction_session_timeout` does.
    fn watch_idle(&self, in_transaction: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let timeout = self.service.idle_in_transaction;
        if timeout.is_zero() {
            return;
        }
        let since = if in_transaction { idle_now() } else { 0 };
        self.idle.since.store(since, Relaxed);
        if in_transaction && !self.idle.watched.swap(true, Relaxed) {
            tokio::spawn(watch_idle(
                Arc::downgrade(&self.state),
                Arc::clone(&self.idle),
                timeout,
            ));
        }
    }
}

/// A connection's idle-transaction watcher: wakes when the transaction would have been idle
/// for `timeout`, and ends it if it still is. Ends with the connection.
async fn watch_idle(
    state: std::sync::Weak<tokio::sync::Mutex<Option<Open>>>,
    idle: Arc<IdleClock>,
    timeout: std::time::Duration,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let timeout = timeout.as_millis() as u64;
    loop {
        let since = idle.since.load(Relaxed);
        let wait = if since == 0 {
            timeout
        } else {
            (since + timeout).saturating_sub(idle_now())
        };
        tokio::time::sleep(std::time::Duration::from_millis(wait.max(1))).await;
        let Some(state) = state.upgrade() else {
            return; // the connection is gone
        };
        let since = idle.since.load(Relaxed);
        if since == 0 || idle_now() < since + timeout {
            continue;
        }
        let mut state = state.lock().await;
        if idle.since.load(Relaxed) != since {
            continue; // a query came meanwhile
        }
        if let Some(open) = state.as_mut()
            && open.session.status() != crate::engine::TxStatus::Idle
        {
            open.session.close().await;
            open.terminated = true;
            tracing::info!(
                pid = open.pid,
                "rolled back a transaction left idle past db.idle_in_transaction_timeout_secs"
            );
            return;
        }
    }
}

impl Drop for QueryHandler {
    fn drop(&mut self) {
        let pid = self.registered.lock().ok().and_then(|mut p| p.take());
        if let Some(pid) = pid
            && let Ok(mut cancels) = self.service.cancels.lock()
        {
            cancels.remove(&pid);
        }
        // An open transaction is rolled back when the session's writer guard is dropped:
        // SQLite rolls back a connection's transaction only when told, so do it here.
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            if let Some(open) = state.lock().await.as_mut() {
                open.session.close().await;
            }
        });
    }
}

/// An engine error as the client sees it.
fn error_info(err: &SqlError) -> ErrorInfo {
    ErrorInfo::new("ERROR".to_owned(), err.code.to_owned(), err.message.clone())
}

fn user_error(err: &SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(err)))
}

fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

/// The connection's session, opened on first use from the startup's user and database.
async fn open_session<'a, C: ClientInfo>(
    service: &PgService,
    registered: &std::sync::Mutex<Option<i32>>,
    state: &'a mut Option<Open>,
    client: &C,
) -> PgWireResult<&'a mut Open> {
    if state.is_none() {
        let user = client
            .metadata()
            .get(pgwire::api::METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let database = client
            .metadata()
            .get(pgwire::api::METADATA_DATABASE)
            .cloned()
            .unwrap_or_else(|| user.clone());
        let engine = &service.engine;
        let db = engine
            .database(&database)
            .await
            .map_err(|e| fatal(e.code, e.message))?;
        let privilege = engine
            .catalog
            .privilege(&user, &database)
            .await
            .map_err(|e| fatal(e.code, e.message))?
            .ok_or_else(|| {
                fatal(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("permission denied for database \"{database}\""),
                )
            })?;
        let mut session = Session::new(db, service.limits);
        if privilege == Privilege::Read {
            session = session.reading_only();
        }
        let (pid, secret) = client.pid_and_secret_key();
        tracing::debug!(pid, database, user, "session opened");
        if let Ok(mut cancels) = service.cancels.lock() {
            cancels.insert(pid, (secret, session.cancel_handle()));
        }
        if let Ok(mut registered) = registered.lock() {
            *registered = Some(pid);
        }
        let superuser = engine
            .catalog
            .is_superuser(&user)
            .await
            .map_err(|e| fatal(e.code, e.message))?;
        let mut settings = compat::default_settings();
        if superuser {
            settings.insert("is_superuser".into(), "on".into());
        }
        *state = Some(Open {
            session,
            database,
            user,
            privilege,
            superuser,
            settings,
            pid,
            parsed: HashMap::new(),
            terminated: false,
        });
    }
    state
        .as_mut()
        .ok_or_else(|| fatal(sqlstate::INTERNAL_ERROR, "no session"))
}

/// Runs one statement of a client (compatibility layer first, then the engine), enforcing the
/// session's privilege.
async fn run_statement(
    engine: &Engine,
    open: &mut Open,
    original: &str,
    sql: &str,
    params: &[crate::engine::value::Value],
    route: Route,
) -> Result<crate::engine::StatementResult, SqlError> {
    let outcome = run_statement_inner(engine, open, original, sql, params, route).await;
    if outcome.is_err() {
        // Whatever refused it (privilege, compatibility layer, catalog), an error inside a
        // transaction fails the transaction, as the client is told.
        open.session.fail();
    }
    outcome
}

async fn run_statement_inner(
    engine: &Engine,
    open: &mut Open,
    original: &str,
    sql: &str,
    params: &[crate::engine::value::Value],
    route: Route,
) -> Result<crate::engine::StatementResult, SqlError> {
    if !route.plain {
        let caller = crate::engine::admin::Caller {
            role: &open.user,
            superuser: open.superuser,
        };
        if let Some(answer) = crate::engine::admin::answer(engine, caller, original).await {
            return answer;
        }
        if route.changes_schema {
            // Column types and parameters described before may change.
            open.parsed.clear();
        }
        if let Some(answer) = compat::answer(original, &mut open.settings) {
            return answer;
        }
        if let Some(answer) = catalog::answer(original, engine, &mut open.session, &open.user).await
        {
            return answer;
        }
    }
    if open.privilege == Privilege::Read && !route.read_only {
        return Err(SqlError::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied: role \"{}\" may only read database \"{}\"",
                open.user, open.database
            ),
        ));
    }
    open.session.execute(sql, params).await
}

/// Where a client's statement goes, decided from its text once: a prepared statement is routed
/// at Parse, not again at every Execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// Not Quartet's administration, nor the compatibility layer's (SET, SHOW…), nor one of
    /// psql's catalog queries, nor DDL: the engine runs it as it is.
    plain: bool,
    /// CREATE, DROP or ALTER: what was described before may change.
    changes_schema: bool,
    /// A read-only grant may run it ([`is_read_only`]).
    read_only: bool,
}

impl Route {
    /// `original` as the client wrote it, `sql` as SQLite runs it.
    fn of(original: &str, sql: &str) -> Self {
        let first = original.split_whitespace().next().unwrap_or("");
        let changes_schema = ["CREATE", "DROP", "ALTER"]
            .iter()
            .any(|word| first.eq_ignore_ascii_case(word));
        let plain = !changes_schema
            && !crate::engine::admin::is_admin(original)
            && !compat::handles(original)
            && !catalog::is_catalog_query(original);
        Self {
            plain,
            changes_schema,
            read_only: is_read_only(sql),
        }
    }
}

/// What a read-only grant may run: queries and transaction control.
pub(crate) fn is_read_only(sql: &str) -> bool {
    let first = sql
        .split(|c: char| c.is_whitespace() || c == '(')
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_ascii_uppercase();
    matches!(
        first.as_str(),
        "SELECT"
            | "VALUES"
            | "EXPLAIN"
            | "BEGIN"
            | "START"
            | "COMMIT"
            | "END"
            | "ROLLBACK"
            | "ABORT"
    ) || (first == "WITH"
        && !["INSERT", "UPDATE", "DELETE", "REPLACE"]
            .iter()
            .any(|w| sql.to_ascii_uppercase().contains(w)))
}

/// The SQL SQLite runs for a client's statement.
fn engine_sql(statement: &str, open: &Open) -> String {
    let replaced = compat::rewrite_functions(statement, &open.database, &open.user, open.pid);
    rewrite_parameters(&replaced).0
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut state = self.state.lock().await;
        let open = open_session(&self.service, &self.registered, &mut state, client).await?;
        self.begin_query(open)?;
        let statements = split_statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            let sql = engine_sql(statement, open);
            let route = Route::of(statement, &sql);
            match run_statement(&self.service.engine, open, statement, &sql, &[], route).await {
                Ok(result) => responses.push(encode::response(
                    result,
                    &Format::UnifiedText,
                    open.session.status(),
                )?),
                Err(err) => {
                    // The rest of the message is not run, as in PostgreSQL.
                    responses.push(Response::Error(Box::new(error_info(&err))));
                    break;
                }
            }
        }
        let in_transaction = open.session.status() != crate::engine::TxStatus::Idle;
        drop(state);
        self.watch_idle(in_transaction);
        Ok(responses)
    }
}

/// Types for the `count` parameters of `sql`: what the client declared, else the type of the
/// column each is compared with or stored into (read from the tables the statement names),
/// else text, which every client can send.
async fn infer_parameter_types(
    session: &mut Session,
    sql: &str,
    declared: &[Option<Type>],
    count: usize,
) -> Vec<Type> {
    use crate::engine::infer::{ParameterUse, parameter_uses, tables_named};
    let uses = parameter_uses(sql);
    let mut columns: HashMap<String, ColumnType> = HashMap::new();
    if uses.values().any(|u| matches!(u, ParameterUse::Column(_))) {
        for table in tables_named(sql) {
            let pragma = format!("PRAGMA table_info(\"{}\")", table.replace('"', "\"\""));
            if let Ok(info) = session.execute(&pragma, &[]).await {
                for row in info.rows {
                    if let (
                        Some(crate::engine::value::Value::Text(name)),
                        Some(crate::engine::value::Value::Text(ty)),
                    ) = (row.get(1), row.get(2))
                    {
                        columns
                            .entry(name.to_ascii_lowercase())
                            .or_insert_with(|| ColumnType::from_declared(ty));
                    }
                }
            }
        }
    }
    (1..=count)
        .map(|n| {
            if let Some(Some(ty)) = declared.get(n - 1) {
                return ty.clone();
            }
            match uses.get(&n) {
                Some(ParameterUse::Integer) => Type::INT8,
                Some(ParameterUse::Column(name)) => match columns.get(name) {
                    Some(ColumnType::Int8) => Type::INT8,
                    Some(ColumnType::Float8) => Type::FLOAT8,
                    Some(ColumnType::Bool) => Type::BOOL,
                    Some(ColumnType::Bytea) => Type::BYTEA,
                    _ => Type::TEXT,
                },
                None => Type::TEXT,
            }
        })
        .collect()
}

/// Parses (prepares) statements for the extended protocol: their result columns and number of
/// parameters come from SQLite, on the session's connection.
pub(crate) struct Parser {
    state: Arc<tokio::sync::Mutex<Option<Open>>>,
    service: Arc<PgService>,
    registered: Arc<std::sync::Mutex<Option<i32>>>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statements = split_statements(sql);
        let statement = match statements.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(user_error(&SqlError::new(
                    sqlstate::SYNTAX_ERROR,
                    "cannot insert multiple commands into a prepared statement",
                )));
            }
        };
        let mut state = self.state.lock().await;
        let open = open_session(&self.service, &self.registered, &mut state, client).await?;
        // A statement parsed before on this connection (pgbench -M extended parses every
        // time) is described from the cache; the client's own types still win.
        if let Some(known) = open.parsed.get(statement) {
            let mut prepared = known.clone();
            for (ty, declared) in prepared.parameter_types.iter_mut().zip(types) {
                if let Some(declared) = declared {
                    *ty = declared.clone();
                }
            }
            return Ok(Some(prepared));
        }
        let (rewritten, highest) = rewrite_parameters(&compat::rewrite_functions(
            statement,
            &open.database,
            &open.user,
            open.pid,
        ));
        // Only the shape of a SET/SHOW's answer is wanted here; it runs at Execute.
        let mut scratch = open.settings.clone();
        let admin = crate::engine::admin::is_admin(statement);
        let is_catalog = catalog::is_catalog_query(statement);
        let catalog_columns = if catalog::is_catalog_query(statement) {
            let answer = catalog::answer(
                statement,
                &self.service.engine,
                &mut open.session,
                &open.user,
            )
            .await;
            match answer {
                Some(Ok(result)) => Some(result.columns),
                Some(Err(err)) => return Err(user_error(&err)),
                None => None,
            }
        } else {
            None
        };
        let (columns, parameters) = match compat::answer(statement, &mut scratch) {
            _ if admin => (Vec::new(), 0),
            _ if catalog_columns.is_some() => (catalog_columns.unwrap_or_default(), 0),
            Some(Ok(result)) => (result.columns, 0),
            Some(Err(err)) => return Err(user_error(&err)),
            None => match open.session.describe(&rewritten).await {
                Ok(described) => described,
                Err(err) => {
                    open.session.fail();
                    return Err(user_error(&err));
                }
            },
        };
        let count = parameters.max(highest);
        let parameter_types =
            infer_parameter_types(&mut open.session, &rewritten, types, count).await;
        let prepared = Prepared {
            route: Route::of(statement, &rewritten),
            original: statement.to_owned(),
            sql: rewritten,
            columns,
            parameter_types,
        };
        // Schema changes make the cache stale: it is kept only for plain queries and DML, and
        // cleared whenever the connection runs DDL.
        if !admin && !is_catalog && open.parsed.len() < PARSED_CACHE {
            open.parsed.insert(statement.to_owned(), prepared.clone());
        }
        Ok(Some(prepared))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.parameter_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        encode::fields(&stmt.columns, column_format.unwrap_or(&Format::UnifiedText))
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    // Parse, Bind, Describe and Execute queue their answers; Sync writes them (batched.rs).

    async fn on_parse<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::extendedquery::Parse,
    ) -> PgWireResult<()>
    where
        C: ClientInfo
            + pgwire::api::ClientPortalStore
            + futures_util::Sink<pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures_util::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        let defaults = batched::ParseAndBind {
            parser: self.query_parser(),
        };
        defaults
            .on_parse(&mut batched::Batched(client), message)
            .await
    }

    async fn on_bind<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::extendedquery::Bind,
    ) -> PgWireResult<()>
    where
        C: ClientInfo
            + pgwire::api::ClientPortalStore
            + futures_util::Sink<pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures_util::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        let defaults = batched::ParseAndBind {
            parser: self.query_parser(),
        };
        defaults
            .on_bind(&mut batched::Batched(client), message)
            .await
    }

    async fn on_describe<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::extendedquery::Describe,
    ) -> PgWireResult<()>
    where
        C: ClientInfo
            + pgwire::api::ClientPortalStore
            + futures_util::Sink<pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures_util::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        self._on_describe(&mut batched::Batched(client), message)
            .await
    }

    async fn on_execute<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::extendedquery::Execute,
    ) -> PgWireResult<()>
    where
        C: ClientInfo
            + pgwire::api::ClientPortalStore
            + futures_util::Sink<pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures_util::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        self.unsynced
            .store(true, std::sync::atomic::Ordering::Release);
        self._on_execute(&mut batched::Batched(client), message)
            .await
    }

    /// As pgwire's own: ReadyForQuery, and everything queued goes out; then the connection
    /// may be ended at stop.
    async fn on_sync<C>(
        &self,
        client: &mut C,
        _message: pgwire::messages::extendedquery::Sync,
    ) -> PgWireResult<()>
    where
        C: ClientInfo
            + pgwire::api::ClientPortalStore
            + futures_util::Sink<pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures_util::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        use futures_util::SinkExt as _;
        use pgwire::api::store::PortalStore as _;
        client.portal_store().rm_portal(pgwire::api::DEFAULT_NAME);
        let status = client.transaction_status();
        client
            .send(pgwire::messages::PgWireBackendMessage::ReadyForQuery(
                pgwire::messages::response::ReadyForQuery::new(status),
            ))
            .await?;
        client.flush().await?;
        self.unsynced
            .store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut state = self.state.lock().await;
        let open = open_session(&self.service, &self.registered, &mut state, client).await?;
        self.begin_query(open)?;
        let prepared = &portal.statement.statement;
        let params = match encode::parameters(portal, &prepared.parameter_types) {
            Ok(params) => params,
            Err(err) => {
                open.session.fail();
                return Err(user_error(&err));
            }
        };
        let outcome = match run_statement(
            &self.service.engine,
            open,
            &prepared.original,
            &prepared.sql,
            &params,
            prepared.route,
        )
        .await
        {
            Ok(mut result) => {
                // Describe announced the prepared columns; rows keep that shape.
                if result.returns_rows && result.columns.len() == prepared.columns.len() {
                    for (column, announced) in result.columns.iter_mut().zip(&prepared.columns) {
                        if announced.ty != ColumnType::Text {
                            column.ty = announced.ty;
                        }
                    }
                }
                encode::response(result, &portal.result_column_format, open.session.status())
            }
            Err(err) => Err(user_error(&err)),
        };
        let in_transaction = open.session.status() != crate::engine::TxStatus::Idle;
        drop(state);
        self.watch_idle(in_transaction);
        outcome
    }
}
