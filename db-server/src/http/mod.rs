//! The HTTP SQL API on `db.http_listen`, rqlite-style, over the same engine as the PostgreSQL
//! front end:
//!
//! - `POST /db/{database}/query` `{"statements":[{"sql":"…","params":[…]}],"transaction":true}`
//!   → `{"results":[{"columns":[…],"types":[…],"rows":[[…]],"rows_affected":N,"last_insert_id":N}]}`;
//!   a failed statement gives `{"error":{"code":"42P01","message":"…"}}` in its place (and,
//!   with `"transaction":true`, rolls the whole request back: 400 with the failing statement).
//! - `GET /db`, `PUT /db/{name}`, `DELETE /db/{name}`: list, create, drop.
//! - `GET /db/{name}/backup`: a consistent snapshot; `POST /db/{name}/restore`: replace from one.
//! - `POST /tokens`: a bearer token for the calling role.
//!
//! Every request authenticates with HTTP Basic (a role and its password) or a bearer token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use crate::engine::backup::ScratchFile;
use crate::engine::value::Value;
use crate::engine::{Engine, Privilege, Session, SessionLimits, SqlError, sqlstate};

/// Limits of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_rows: usize,
    pub max_response_bytes: usize,
    pub max_body_bytes: usize,
    /// A snapshot uploaded to `POST /db/{name}/restore`.
    pub max_restore_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Api {
    pub engine: Arc<Engine>,
    pub session_limits: SessionLimits,
    pub limits: HttpLimits,
    /// Basic credentials checked recently: PBKDF2 runs once per minute per credential, not on
    /// every request.
    verified: Arc<std::sync::Mutex<Verified>>,
    /// Password checks running at once.
    verifying: Arc<tokio::sync::Semaphore>,
}

/// SHA-256 of `role:password` → the role, its verifier's StoredKey then, and when.
type Verified = HashMap<[u8; 32], (String, Vec<u8>, Instant)>;

const VERIFIED_FOR: Duration = Duration::from_secs(60);

impl Api {
    pub fn new(engine: Arc<Engine>, session_limits: SessionLimits, limits: HttpLimits) -> Self {
        Self {
            engine,
            session_limits,
            limits,
            verified: Arc::new(std::sync::Mutex::new(HashMap::new())),
            verifying: Arc::new(tokio::sync::Semaphore::new(2)),
        }
    }
}

/// The authenticated routes.
pub fn router(api: Api) -> axum::Router {
    use axum::extract::DefaultBodyLimit;
    let body_limit = api.limits.max_body_bytes;
    let restore_limit = api.limits.max_restore_bytes;
    axum::Router::new()
        .route("/db", get(list_databases))
        .route("/db/{name}", put(create_database).delete(drop_database))
        .route(
            "/db/{name}/query",
            post(query).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/db/{name}/backup", get(backup))
        .route(
            "/db/{name}/restore",
            post(restore).layer(DefaultBodyLimit::max(restore_limit)),
        )
        .route("/tokens", post(create_token))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(api)
}

fn sql_status(err: &SqlError) -> StatusCode {
    match err.code {
        sqlstate::INVALID_CATALOG_NAME | sqlstate::UNDEFINED_TABLE | sqlstate::UNDEFINED_OBJECT => {
            StatusCode::NOT_FOUND
        }
        sqlstate::INSUFFICIENT_PRIVILEGE => StatusCode::FORBIDDEN,
        sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION => StatusCode::UNAUTHORIZED,
        sqlstate::DUPLICATE_DATABASE | sqlstate::OBJECT_IN_USE | sqlstate::LOCK_NOT_AVAILABLE => {
            StatusCode::CONFLICT
        }
        sqlstate::PROGRAM_LIMIT_EXCEEDED => StatusCode::PAYLOAD_TOO_LARGE,
        sqlstate::INTERNAL_ERROR | sqlstate::DATA_CORRUPTED | sqlstate::DISK_FULL => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

fn error_json(err: &SqlError) -> Json_ {
    json!({ "code": err.code, "message": err.message })
}

/// An error as a handler returns it: `?` turns any [`SqlError`] into its HTTP answer.
#[derive(Debug)]
struct Failure(SqlError);

impl From<SqlError> for Failure {
    fn from(err: SqlError) -> Self {
        Failure(err)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        failure(&self.0)
    }
}

fn failure(err: &SqlError) -> Response {
    let mut response = (sql_status(err), Json(json!({ "error": error_json(err) }))).into_response();
    if sql_status(err) == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"quartet-db\", charset=\"UTF-8\""),
        );
    }
    response
}

/// Who is calling: a role, from Basic credentials or a bearer token.
async fn caller(api: &Api, headers: &HeaderMap) -> Result<String, SqlError> {
    use base64::Engine as _;
    let unauthorized = || {
        SqlError::new(
            sqlstate::INVALID_AUTHORIZATION,
            "HTTP Basic (a role and its password) or a bearer token is required",
        )
    };
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    if let Some(token) = header.strip_prefix("Bearer ") {
        return api
            .engine
            .catalog
            .token_role(token.trim())
            .await?
            .ok_or_else(|| SqlError::new(sqlstate::INVALID_PASSWORD, "unknown bearer token"));
    }
    let encoded = header.strip_prefix("Basic ").ok_or_else(unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| unauthorized())?;
    let text = String::from_utf8(decoded).map_err(|_| unauthorized())?;
    let (role, password) = text.split_once(':').ok_or_else(unauthorized)?;
    let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .try_into()
        .unwrap_or([0; 32]);
    // The current verifier is looked up every time (the catalog remembers it until it
    // changes): a changed password or a dropped role ends a cached login at once.
    let verifier = api.engine.catalog.verifier(role).await?;
    let Some(verifier) = verifier else {
        return Err(SqlError::new(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{role}\""),
        ));
    };
    let cached = api.verified.lock().ok().is_some_and(|verified| {
        verified.get(&key).is_some_and(|(known, stored_key, at)| {
            known == role && *stored_key == verifier.stored_key && at.elapsed() < VERIFIED_FOR
        })
    });
    if cached {
        return Ok(role.to_owned());
    }
    let stored_key = verifier.stored_key.clone();
    let password = password.to_owned();
    // PBKDF2 is deliberately slow: at most two run at once, so a flood of bad logins cannot
    // take every core.
    let _slot = api.verifying.acquire().await;
    let ok = tokio::task::spawn_blocking(move || verifier.matches(&password))
        .await
        .unwrap_or(false);
    if !ok {
        return Err(SqlError::new(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{role}\""),
        ));
    }
    if let Ok(mut verified) = api.verified.lock() {
        verified.retain(|_, (_, _, at)| at.elapsed() < VERIFIED_FOR);
        verified.insert(key, (role.to_owned(), stored_key, Instant::now()));
    }
    Ok(role.to_owned())
}

/// The caller's privilege on `database`, or why not.
async fn privilege(api: &Api, role: &str, database: &str) -> Result<Privilege, SqlError> {
    if !api.engine.has_database(database).await? {
        return Err(SqlError::new(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ));
    }
    api.engine
        .catalog
        .privilege(role, database)
        .await?
        .ok_or_else(|| {
            SqlError::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("permission denied for database \"{database}\""),
            )
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    statements: Vec<StatementRequest>,
    #[serde(default)]
    transaction: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementRequest {
    sql: String,
    #[serde(default)]
    params: Vec<Json_>,
}

fn param(value: &Json_, index: usize) -> Result<Value, SqlError> {
    Ok(match value {
        Json_::Null => Value::Null,
        Json_::Bool(b) => Value::Integer(i64::from(*b)),
        Json_::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json_::String(s) => Value::Text(s.clone()),
        _ => {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "parameter {}: null, a boolean, a number or a string",
                    index + 1
                ),
            ));
        }
    })
}

fn result_json(result: &crate::engine::StatementResult) -> Json_ {
    let rows: Vec<Json_> = result
        .rows
        .iter()
        .map(|row| Json_::Array(row.iter().map(Value::to_json).collect()))
        .collect();
    json!({
        "columns": result.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "types": result.columns.iter().map(|c| c.ty.sqlite_name()).collect::<Vec<_>>(),
        "rows": rows,
        "rows_affected": result.rows_affected,
        "last_insert_id": result.last_insert_id,
    })
}

async fn query(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let role = caller(&api, &headers).await?;
    let level = privilege(&api, &role, &name).await?;
    let request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return Err(Failure(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "expected {{\"statements\":[{{\"sql\":\"…\",\"params\":[…]}}],\"transaction\":false}}: {err}"
                ),
            )));
        }
    };
    if request.statements.is_empty() || request.statements.len() > 1000 {
        return Err(Failure(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            "1 to 1000 statements per request",
        )));
    }
    if let Some(upstream) = api.engine.upstream() {
        return Ok(upstream_request(&api, upstream, &name, &role, level, &request).await);
    }
    let db = api.engine.database(&name).await?;
    let limits = SessionLimits {
        max_rows: api.limits.max_rows,
        ..api.session_limits
    };
    // Answers carry each INSERT's rowid: transactions hold the writer (no replay).
    let mut session = Session::new(db, limits).reporting_insert_ids();
    if level == Privilege::Read {
        session = session.reading_only();
    }
    let mut local = Local {
        api: &api,
        session: &mut session,
        role: &role,
        level,
    };
    let outcome = run_statements(&api, &mut local, &request).await;
    session.close().await;
    Ok(outcome)
}

/// Where a request's statements run: an engine session (SQLite) or a pooled connection to the
/// PostgreSQL backend. [`run_statements`] drives either the same way.
trait Statements {
    /// BEGIN, COMMIT or ROLLBACK.
    async fn control(&mut self, sql: &'static str) -> Result<(), SqlError>;
    /// One statement of the request, as its JSON result.
    async fn run(&mut self, statement: &StatementRequest) -> Result<Json_, SqlError>;
}

/// The statements of SQLite databases, through the caller's engine session.
struct Local<'a> {
    api: &'a Api,
    session: &'a mut Session,
    role: &'a str,
    level: Privilege,
}

impl Statements for Local<'_> {
    async fn control(&mut self, sql: &'static str) -> Result<(), SqlError> {
        self.session.execute(sql, &[]).await.map(|_| ())
    }

    async fn run(&mut self, statement: &StatementRequest) -> Result<Json_, SqlError> {
        let params = statement
            .params
            .iter()
            .enumerate()
            .map(|(i, v)| param(v, i))
            .collect::<Result<Vec<_>, _>>()?;
        if self.level == Privilege::Read && !crate::pg::is_read_only(&statement.sql) {
            return Err(read_only_refusal(self.role));
        }
        if crate::engine::admin::is_admin(&statement.sql) {
            let caller = crate::engine::admin::Caller {
                role: self.role,
                superuser: self.api.engine.catalog.is_superuser(self.role).await?,
            };
            if let Some(answer) =
                crate::engine::admin::answer(&self.api.engine, caller, &statement.sql).await
            {
                return answer.map(|result| result_json(&result));
            }
        }
        let sql = crate::engine::split::rewrite_parameters(&statement.sql).0;
        let result = self.session.execute(&sql, &params).await?;
        Ok(result_json(&result))
    }
}

/// The statements of a PostgreSQL backend, on one pooled connection.
struct Remote<'a> {
    api: &'a Api,
    conn: &'a mut crate::upstream::Connection,
    role: &'a str,
    level: Privilege,
}

impl Statements for Remote<'_> {
    async fn control(&mut self, sql: &'static str) -> Result<(), SqlError> {
        self.conn.simple_query(sql).await.map(|_| ())
    }

    async fn run(&mut self, statement: &StatementRequest) -> Result<Json_, SqlError> {
        let params = statement
            .params
            .iter()
            .enumerate()
            .map(|(i, v)| text_param(v, i))
            .collect::<Result<Vec<_>, _>>()?;
        if self.level == Privilege::Read && crate::upstream::proxy::lifts_read_only(&statement.sql)
        {
            return Err(read_only_refusal(self.role));
        }
        if crate::engine::admin::is_quartet_admin(&statement.sql) {
            let caller = crate::engine::admin::Caller {
                role: self.role,
                superuser: self.api.engine.catalog.is_superuser(self.role).await?,
            };
            let answer = crate::engine::admin::answer(&self.api.engine, caller, &statement.sql)
                .await
                .unwrap_or_else(|| {
                    Err(SqlError::new(
                        sqlstate::INTERNAL_ERROR,
                        "not administration",
                    ))
                })?;
            return Ok(result_json(&answer));
        }
        let sql = crate::engine::split::question_marks_to_dollars(&statement.sql);
        let max_rows = self.api.limits.max_rows;
        let outcome = self.conn.query(&sql, &params, max_rows).await?;
        if outcome.truncated {
            return Err(SqlError::new(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!("the statement returns more than {max_rows} rows (db.http_max_rows)"),
            ));
        }
        Ok(outcome_json(&outcome))
    }
}

fn read_only_refusal(role: &str) -> SqlError {
    SqlError::new(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!("permission denied: role \"{role}\" may only read this database"),
    )
}

/// Runs a request's statements in order: each result or error in `results`; with
/// `"transaction": true` all of them or none (the first error rolls back and is the answer).
/// The answer as a whole stays under `db.http_max_response_bytes`.
async fn run_statements(
    api: &Api,
    target: &mut impl Statements,
    request: &QueryRequest,
) -> Response {
    let mut results = Vec::with_capacity(request.statements.len());
    let mut size = 0usize;
    if request.transaction
        && let Err(err) = target.control("BEGIN").await
    {
        return failure(&err);
    }
    for (index, statement) in request.statements.iter().enumerate() {
        match target.run(statement).await {
            Ok(json) => {
                size += json.to_string().len();
                if size > api.limits.max_response_bytes {
                    if request.transaction {
                        let _ = target.control("ROLLBACK").await;
                    }
                    let err = SqlError::new(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        format!(
                            "the answer is larger than {} bytes",
                            api.limits.max_response_bytes
                        ),
                    );
                    return failure(&err);
                }
                results.push(json);
            }
            Err(err) if request.transaction => {
                let _ = target.control("ROLLBACK").await;
                return (
                    sql_status(&err),
                    Json(json!({ "error": error_json(&err), "statement": index })),
                )
                    .into_response();
            }
            Err(err) => results.push(json!({ "error": error_json(&err) })),
        }
    }
    if request.transaction
        && let Err(err) = target.control("COMMIT").await
    {
        return failure(&err);
    }
    Json(json!({ "results": results })).into_response()
}

/// A request with a PostgreSQL backend: the same answers, from a pooled backend connection.
async fn upstream_request(
    api: &Api,
    upstream: &crate::upstream::Upstream,
    database: &str,
    role: &str,
    level: Privilege,
    request: &QueryRequest,
) -> Response {
    let read_only = level == Privilege::Read;
    let mut conn = match upstream
        .session(database, read_only, api.session_limits.statement_timeout)
        .await
    {
        Ok(conn) => conn,
        Err(err) => return failure(&err),
    };
    let mut remote = Remote {
        api,
        conn: &mut conn,
        role,
        level,
    };
    let response = run_statements(api, &mut remote, request).await;
    upstream.pool.checkin(conn, true).await;
    response
}

/// A JSON parameter as the text PostgreSQL parses for a parameter of unknown type.
fn text_param(value: &Json_, index: usize) -> Result<Option<String>, SqlError> {
    Ok(match value {
        Json_::Null => None,
        Json_::Bool(b) => Some(b.to_string()),
        Json_::Number(n) => Some(n.to_string()),
        Json_::String(s) => Some(s.clone()),
        _ => {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "parameter {}: null, a boolean, a number or a string",
                    index + 1
                ),
            ));
        }
    })
}

/// A backend result as JSON: numbers and booleans as such, JSON columns parsed, the rest text.
fn outcome_json(outcome: &crate::upstream::Outcome) -> Json_ {
    let rows: Vec<Json_> = outcome
        .rows
        .iter()
        .map(|row| {
            Json_::Array(
                row.iter()
                    .zip(&outcome.columns)
                    .map(|(value, (_, oid))| match value {
                        None => Json_::Null,
                        Some(text) => typed_json(text, *oid),
                    })
                    .collect(),
            )
        })
        .collect();
    // "INSERT 0 3", "UPDATE 2", "SELECT 5": the last word is the count.
    let rows_affected = if outcome.tag.starts_with("SELECT") {
        0
    } else {
        outcome
            .tag
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    json!({
        "columns": outcome.columns.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(),
        "types": outcome.columns.iter().map(|(_, oid)| type_name(*oid)).collect::<Vec<_>>(),
        "rows": rows,
        "rows_affected": rows_affected,
        "last_insert_id": null,
    })
}

fn typed_json(text: &str, oid: u32) -> Json_ {
    match oid {
        // int2, int4, int8, oid
        21 | 23 | 20 | 26 => text
            .parse::<i64>()
            .map(Json_::from)
            .unwrap_or_else(|_| Json_::from(text)),
        // float4, float8
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json_::Number)
            .unwrap_or_else(|| Json_::from(text)),
        16 => Json_::Bool(text == "t"),
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| Json_::from(text)),
        _ => Json_::from(text),
    }
}

/// PostgreSQL's name for the common type OIDs.
fn type_name(oid: u32) -> String {
    match oid {
        16 => "boolean",
        17 => "bytea",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return format!("oid {oid}"),
    }
    .to_owned()
}

async fn list_databases(State(api): State<Api>, headers: HeaderMap) -> Result<Response, Failure> {
    let role = caller(&api, &headers).await?;
    let names = api.engine.databases().await?;
    let mut visible = Vec::new();
    for name in names {
        if let Ok(Some(level)) = api.engine.catalog.privilege(&role, &name).await {
            visible.push(json!({ "name": name, "privilege": level }));
        }
    }
    Ok(Json(json!({ "databases": visible })).into_response())
}

async fn superuser(api: &Api, headers: &HeaderMap) -> Result<String, SqlError> {
    let role = caller(api, headers).await?;
    if api.engine.catalog.is_superuser(&role).await? {
        Ok(role)
    } else {
        Err(SqlError::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("role \"{role}\" is not a superuser"),
        ))
    }
}

async fn create_database(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    superuser(&api, &headers).await?;
    api.engine.create_database(&name).await?;
    Ok((StatusCode::CREATED, Json(json!({ "name": name }))).into_response())
}

async fn drop_database(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    superuser(&api, &headers).await?;
    api.engine.drop_database(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn backup(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let role = caller(&api, &headers).await?;
    privilege(&api, &role, &name).await?;
    let file = ScratchFile::beside(&api.engine, &name, "backup");
    api.engine.backup_to(&name, file.path()).await?;
    let bytes = tokio::fs::read(file.path())
        .await
        .map_err(|err| SqlError::new(sqlstate::INTERNAL_ERROR, err.to_string()))?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/vnd.sqlite3".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.db\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn restore(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let role = caller(&api, &headers).await?;
    // The name becomes a file name: checked before anything is written under it.
    if !crate::engine::valid_database_name(&name) {
        return Err(Failure(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("{name:?} is not a database name"),
        )));
    }
    let allowed = match api.engine.catalog.is_superuser(&role).await {
        Ok(true) => true,
        _ => matches!(
            api.engine.catalog.privilege(&role, &name).await,
            Ok(Some(Privilege::Admin))
        ),
    };
    if !allowed {
        return Err(Failure(SqlError::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("restoring \"{name}\" needs admin on it"),
        )));
    }
    let file = ScratchFile::beside(&api.engine, &name, "upload");
    tokio::fs::write(file.path(), &body)
        .await
        .map_err(|err| SqlError::new(sqlstate::INTERNAL_ERROR, err.to_string()))?;
    api.engine.restore_from(&name, file.path()).await?;
    Ok(Json(json!({ "restored": name, "bytes": body.len() })).into_response())
}

async fn create_token(State(api): State<Api>, headers: HeaderMap) -> Result<Response, Failure> {
    let role = caller(&api, &headers).await?;
    let token = api.engine.catalog.create_token(&role).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "role": role })),
    )
        .into_response())
}
