//! Client sessions in front of the PostgreSQL backend.
//!
//! The startup is the proxy's own: TLS (required off loopback in staging and production),
//! SCRAM-SHA-256 against Quartet's roles, the grant on the database. Then the session gets a
//! backend connection from the pool, set up with the session's limits (statement timeout, idle
//! transaction timeout, read-only for a read grant) and the client's startup parameters, and
//! from there messages are relayed both ways unchanged, except:
//!
//! - Quartet's own administration statements (`CREATE/DROP DATABASE`, `CREATE/ALTER/DROP
//!   ROLE`, `GRANT/REVOKE … ON DATABASE`) are answered by the proxy, in the simple and the
//!   extended protocol, so roles and grants stay Quartet's;
//! - a read-only session may not send what would lift its read-only setting;
//! - `Terminate` ends the session and the backend connection goes back to the pool.
//!
//! Answers the proxy gives itself must not overtake the backend's answers to earlier messages:
//! the proxy first waits until the backend has answered everything sent so far (a Sync is
//! added when the client has sent extended-protocol messages without one).

use crate::pg::Admission;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::Upstream;
use super::conn::Connection;
use super::scram;
use super::wire::{self, BoxIo, Reader, Writer};
use crate::engine::admin::{self, Caller};
use crate::engine::{Engine, Privilege, SqlError, sqlstate};

/// Largest message whose body the proxy reads whole (queries, Parse, Bind).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Startup packets and SASL messages are small.
const MAX_STARTUP: usize = 10_000;
/// The startup and authentication must finish within this.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A session waits this long for a free backend connection.
const CHECKOUT_WAIT: Duration = Duration::from_secs(10);

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3: i32 = 196_608;

/// What every proxied connection shares.
pub struct ProxyService {
    pub engine: Arc<Engine>,
    pub upstream: Arc<Upstream>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Refuse logins without TLS off loopback (staging and production).
    pub require_tls: bool,
    pub statement_timeout: Duration,
    pub idle_in_transaction: Duration,
    /// Cancelled when the role stops: each session ends with FATAL 57P01 once the backend has
    /// answered what it was sent.
    pub stop: CancellationToken,
    /// Connections now, against `db.max_connections`.
    pub sessions: crate::pg::SessionCounter,
}

impl std::fmt::Debug for ProxyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyService")
            .field("tls", &self.tls.is_some())
            .field("require_tls", &self.require_tls)
            .finish_non_exhaustive()
    }
}

/// Who logged in, to which database.
struct Login {
    role: String,
    database: String,
    privilege: Privilege,
    superuser: bool,
    /// Startup parameters to set on the backend connection (`application_name`, `DateStyle`…).
    settings: Vec<(String, String)>,
}

/// At stop, how long a session waits for the backend's answers under way before it ends.
const STOP_WAIT: Duration = Duration::from_secs(5);

impl ProxyService {
    /// Serves one client connection to its end.
    pub async fn serve(self: Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let loopback = stream.peer_addr().is_ok_and(|peer| peer.ip().is_loopback());
        let started = tokio::time::timeout(STARTUP_TIMEOUT, self.startup(stream, loopback)).await;
        // `_admission` holds the session's place under db.max_connections to its end.
        let (reader, writer, login, conn, _admission) = match started {
            Ok(Some(session)) => session,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("a PostgreSQL client did not finish its startup in time");
                return;
            }
        };
        let (conn, clean) = self.relay(reader, writer, &login, conn).await;
        let upstream = Arc::clone(&self.upstream);
        upstream.pool.checkin(conn, clean).await;
    }

    /// The startup phase; `None` when the connection ended (answered or refused).
    async fn startup(
        &self,
        stream: TcpStream,
        loopback: bool,
    ) -> Option<(Reader, Writer, Login, Connection, Admission)> {
        let mut io: BoxIo = Box::new(stream);
        let mut secure = false;
        let params = loop {
            let length = io.read_i32().await.ok()?;
            let length = usize::try_from(length)
                .ok()
                .filter(|l| (8..MAX_STARTUP).contains(l))?;
            let mut packet = vec![0u8; length - 4];
            io.read_exact(&mut packet).await.ok()?;
            let code = i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
            match code {
                SSL_REQUEST if !secure => match &self.tls {
                    Some(tls) => {
                        io.write_all(b"S").await.ok()?;
                        io = Box::new(tls.accept(io).await.ok()?);
                        secure = true;
                    }
                    None => io.write_all(b"N").await.ok()?,
                },
                GSSENC_REQUEST => io.write_all(b"N").await.ok()?,
                CANCEL_REQUEST if packet.len() >= 12 => {
                    let pid = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
                    let secret = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                    self.upstream.cancel(pid, secret).await;
                    return None;
                }
                PROTOCOL_3 => break parse_startup(&packet[4..]),
                _ => {
                    let (_, mut writer) = wire::split(io);
                    fatal(
                        &mut writer,
                        sqlstate::PROTOCOL_VIOLATION,
                        "unsupported protocol",
                    )
                    .await;
                    return None;
                }
            }
        };
        let (mut reader, mut writer) = wire::split(io);
        if self.require_tls && !secure && !loopback {
            fatal(
                &mut writer,
                sqlstate::INVALID_AUTHORIZATION,
                "this server accepts logins only over TLS: connect with sslmode=require",
            )
            .await;
            return None;
        }
        let Some(admission) = self.sessions.try_admit() else {
            fatal(
                &mut writer,
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already (db.max_connections)",
            )
            .await;
            return None;
        };
        let login = match self.authenticate(&mut reader, &mut writer, params).await {
            Ok(login) => login,
            Err(err) => {
                fatal(&mut writer, err.code, &err.message).await;
                return None;
            }
        };
        match self.open_backend(&login).await {
            Ok(conn) => {
                let mut out = BytesMut::new();
                wire::message(&mut out, b'R', |b| b.put_i32(0));
                for (name, value) in &conn.parameters {
                    wire::parameter_status(&mut out, name, value);
                }
                let (pid, secret) = self.upstream.register(conn.key);
                wire::message(&mut out, b'K', |b| {
                    b.put_i32(pid);
                    b.put_i32(secret);
                });
                wire::ready_for_query(&mut out, b'I');
                if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
                    self.upstream.unregister(pid);
                    return None;
                }
                tracing::debug!(role = %login.role, database = %login.database, pid, "proxied session");
                Some((reader, writer, login, conn, admission))
            }
            Err(err) => {
                fatal(&mut writer, err.code, &err.message).await;
                None
            }
        }
    }

    /// SCRAM-SHA-256 against the catalog, then the grant on the database.
    async fn authenticate(
        &self,
        reader: &mut Reader,
        writer: &mut Writer,
        params: Vec<(String, String)>,
    ) -> Result<Login, SqlError> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let role = get("user")
            .ok_or_else(|| SqlError::new(sqlstate::INVALID_AUTHORIZATION, "no user name given"))?;
        let database = get("database").unwrap_or_else(|| role.clone());
        let denied = || {
            SqlError::new(
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{role}\""),
            )
        };
        let io = |_| SqlError::new(sqlstate::PROTOCOL_VIOLATION, "the client went away");
        let mut out = BytesMut::new();
        wire::message(&mut out, b'R', |b| {
            b.put_i32(10);
            wire::put_cstr(b, "SCRAM-SHA-256");
            b.put_u8(0);
        });
        writer.write_all(&out).await.map_err(io)?;
        writer.flush().await.map_err(io)?;
        // SASLInitialResponse: mechanism, length, client-first-message.
        let (tag, body) = wire::read_message(reader, MAX_STARTUP).await.map_err(io)?;
        let mut at = 0;
        let mechanism = wire::cstr(&body, &mut at);
        if tag != b'p' || mechanism != Some("SCRAM-SHA-256") {
            return Err(SqlError::new(
                sqlstate::PROTOCOL_VIOLATION,
                "expected a SASL response for SCRAM-SHA-256",
            ));
        }
        let first = body
            .get(at + 4..)
            .and_then(|data| std::str::from_utf8(data).ok())
            .ok_or_else(denied)?;
        let verifier = self.engine.catalog.verifier(&role).await?;
        let (exchange, server_first) =
            scram::Exchange::start(first, verifier).map_err(|_| denied())?;
        out.clear();
        wire::message(&mut out, b'R', |b| {
            b.put_i32(11);
            b.put_slice(server_first.as_bytes());
        });
        writer.write_all(&out).await.map_err(io)?;
        writer.flush().await.map_err(io)?;
        let (tag, body) = wire::read_message(reader, MAX_STARTUP).await.map_err(io)?;
        let client_final = std::str::from_utf8(&body).map_err(|_| denied())?;
        if tag != b'p' {
            return Err(denied());
        }
        let server_final = exchange.finish(client_final).map_err(|_| denied())?;
        out.clear();
        wire::message(&mut out, b'R', |b| {
            b.put_i32(12);
            b.put_slice(server_final.as_bytes());
        });
        writer.write_all(&out).await.map_err(io)?;
        let privilege = self
            .engine
            .catalog
            .privilege(&role, &database)
            .await?
            .ok_or_else(|| {
                SqlError::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("permission denied for database \"{database}\""),
                )
            })?;
        let superuser = self.engine.catalog.is_superuser(&role).await?;
        let settings = params
            .into_iter()
            .filter(|(name, _)| !matches!(name.as_str(), "user" | "database" | "replication"))
            .flat_map(|(name, value)| {
                if name == "options" {
                    parse_options(&value)
                } else {
                    vec![(name, value)]
                }
            })
            .collect();
        Ok(Login {
            role,
            database,
            privilege,
            superuser,
            settings,
        })
    }

    /// A pooled backend connection set up for this session.
    async fn open_backend(&self, login: &Login) -> Result<Connection, SqlError> {
        let mut setup = String::new();
        for (name, value) in &login.settings {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                return Err(SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("{name:?} is not a parameter name"),
                ));
            }
            setup.push_str(&format!("SET {name} = {};", quote_literal(value)));
        }
        if !self.statement_timeout.is_zero() {
            setup.push_str(&format!(
                "SET statement_timeout = '{}ms';",
                self.statement_timeout.as_millis()
            ));
        }
        if !self.idle_in_transaction.is_zero() {
            setup.push_str(&format!(
                "SET idle_in_transaction_session_timeout = '{}ms';",
                self.idle_in_transaction.as_millis()
            ));
        }
        if login.privilege == Privilege::Read {
            setup.push_str("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;");
        }
        // An idle connection may have been closed by the backend meanwhile: one retry with a
        // fresh connection.
        for attempt in 0..2 {
            let mut conn = self
                .upstream
                .pool
                .checkout(&login.database, CHECKOUT_WAIT)
                .await?;
            match conn.simple_query(&setup).await {
                Ok(_) => return Ok(conn),
                Err(err) if err.code == "08006" && attempt == 0 => continue,
                Err(err) => {
                    self.upstream.pool.checkin(conn, true).await;
                    return Err(err);
                }
            }
        }
        Err(SqlError::new(
            sqlstate::intern("08006"),
            "the PostgreSQL backend closed the connection",
        ))
    }

    /// Relays messages both ways until either side ends. Returns the backend connection and
    /// whether it is at a clean point (nothing in flight) for reuse.
    async fn relay(
        &self,
        mut client_reader: Reader,
        client_writer: Writer,
        login: &Login,
        mut conn: Connection,
    ) -> (Connection, bool) {
        let shared = Shared {
            pending: AtomicI64::new(0),
            drained: Notify::new(),
            swallow: AtomicI64::new(0),
            status: AtomicU8::new(b'I'),
            stop: CancellationToken::new(),
            broken: AtomicBool::new(false),
        };
        let client_writer = Mutex::new(client_writer);
        let (our_pid, _) = self.upstream.pid_of(conn.key).unwrap_or((0, 0));
        let Connection {
            reader: upstream_reader,
            writer: upstream_writer,
            ..
        } = &mut conn;
        let mut client = ClientSide {
            service: self,
            login,
            shared: &shared,
            client_writer: &client_writer,
            upstream_writer,
            unsynced: false,
            answered_since_sync: false,
            skipping: false,
            local_statements: HashMap::new(),
            local_portals: HashMap::new(),
        };
        let to_backend = async {
            let ended = client.run(&mut client_reader).await;
            if ended.is_err() || shared.pending.load(Ordering::Acquire) != 0 {
                shared.broken.store(true, Ordering::Release);
            }
            shared.stop.cancel();
        };
        let to_client = async {
            if backend_to_client(upstream_reader, &client_writer, &shared)
                .await
                .is_err()
            {
                shared.broken.store(true, Ordering::Release);
            }
            shared.stop.cancel();
        };
        tokio::join!(to_backend, to_client);
        self.upstream.unregister(our_pid);
        conn.status = shared.status.load(Ordering::Acquire);
        let mut writer = client_writer.into_inner();
        let _ = writer.shutdown().await;
        (conn, !shared.broken.load(Ordering::Acquire))
    }
}

/// State both directions of a session share.
struct Shared {
    /// Queries and Syncs sent to the backend whose ReadyForQuery has not come back.
    pending: AtomicI64,
    /// Signalled when `pending` drops to zero.
    drained: Notify,
    /// ReadyForQuery answers to Syncs the proxy added, not passed to the client.
    swallow: AtomicI64,
    /// The backend's last transaction status.
    status: AtomicU8,
    stop: CancellationToken,
    /// The backend connection is in an unknown state.
    broken: AtomicBool,
}

/// Backend → client: everything is copied; ReadyForQuery also updates the shared state.
async fn backend_to_client(
    reader: &mut Reader,
    client: &Mutex<Writer>,
    shared: &Shared,
) -> std::io::Result<()> {
    loop {
        // `fill_buf` loses nothing when the stop wins: the bytes stay in the reader.
        tokio::select! {
            filled = reader.fill_buf() => {
                if filled?.is_empty() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            _ = shared.stop.cancelled() => return Ok(()),
        }
        let (tag, length) = wire::read_header(reader, MAX_MESSAGE).await?;
        if tag == b'Z' {
            let body = wire::read_body(reader, length).await?;
            let status = body.first().copied().unwrap_or(b'I');
            shared.status.store(status, Ordering::Release);
            let swallowed = shared
                .swallow
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n > 0).then(|| n - 1)
                })
                .is_ok();
            if !swallowed {
                let mut writer = client.lock().await;
                wire::write_header(&mut *writer, tag, length).await?;
                writer.write_all(&body).await?;
                writer.flush().await?;
            }
            if shared.pending.fetch_sub(1, Ordering::AcqRel) <= 1 {
                shared.pending.store(0, Ordering::Release);
                shared.drained.notify_waiters();
            }
            continue;
        }
        let mut writer = client.lock().await;
        wire::write_header(&mut *writer, tag, length).await?;
        wire::copy_body(reader, &mut *writer, length).await?;
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}

/// Client → backend, with the proxy's own answers.
struct ClientSide<'a> {
    service: &'a ProxyService,
    login: &'a Login,
    shared: &'a Shared,
    client_writer: &'a Mutex<Writer>,
    upstream_writer: &'a mut Writer,
    /// Extended-protocol messages went to the backend since the last Sync.
    unsynced: bool,
    /// The proxy answered something itself since the last Sync.
    answered_since_sync: bool,
    /// An error was answered in the extended protocol: messages are dropped until Sync.
    skipping: bool,
    /// Statements and portals of administration statements, answered by the proxy.
    local_statements: HashMap<String, String>,
    local_portals: HashMap<String, String>,
}

/// What to do with a statement's text.
enum Verdict {
    Forward,
    Admin,
    Refuse(SqlError),
}

impl ClientSide<'_> {
    /// Runs until the client terminates (`Ok`) or the session breaks.
    async fn run(&mut self, reader: &mut Reader) -> std::io::Result<()> {
        loop {
            tokio::select! {
                filled = reader.fill_buf() => {
                    if filled?.is_empty() {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                _ = self.shared.stop.cancelled() => return Err(std::io::ErrorKind::BrokenPipe.into()),
                _ = self.service.stop.cancelled() => {
                    // What the backend was sent is answered first, for at most a few seconds
                    // (a COPY FROM STDIN, say, would wait for data that will not come).
                    if tokio::time::timeout(STOP_WAIT, self.wait_for_backend()).await.is_err() {
                        tracing::debug!("a proxied session ends at stop with its backend still busy");
                    }
                    let mut out = BytesMut::new();
                    wire::error_response(
                        &mut out,
                        "FATAL",
                        sqlstate::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    );
                    self.answer(out).await?;
                    // Not clean: the backend connection, perhaps in a transaction, is closed.
                    return Err(std::io::ErrorKind::ConnectionAborted.into());
                }
            }
            let (tag, length) = match wire::read_header(reader, MAX_MESSAGE).await {
                Ok(header) => header,
                Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                    let mut out = BytesMut::new();
                    wire::error_response(
                        &mut out,
                        "FATAL",
                        sqlstate::PROTOCOL_VIOLATION,
                        &err.to_string(),
                    );
                    self.answer(out).await?;
                    return Err(err);
                }
                Err(err) => return Err(err),
            };
            match tag {
                b'X' => {
                    wire::read_body(reader, length).await?;
                    return Ok(());
                }
                b'Q' => {
                    let body = wire::read_body(reader, length).await?;
                    self.query(tag, body).await?;
                }
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    let body = wire::read_body(reader, length).await?;
                    self.extended(tag, body).await?;
                }
                b'S' => {
                    wire::read_body(reader, length).await?;
                    self.skipping = false;
                    if !self.unsynced && self.answered_since_sync {
                        let mut out = BytesMut::new();
                        wire::ready_for_query(&mut out, self.shared.status.load(Ordering::Acquire));
                        self.answer(out).await?;
                    } else {
                        self.shared.pending.fetch_add(1, Ordering::AcqRel);
                        wire::write_header(self.upstream_writer, tag, 0).await?;
                        self.upstream_writer.flush().await?;
                    }
                    self.unsynced = false;
                    self.answered_since_sync = false;
                }
                _ => {
                    if self.skipping {
                        let mut sink = tokio::io::sink();
                        wire::copy_body(reader, &mut sink, length).await?;
                        continue;
                    }
                    // Function calls expect a ReadyForQuery like a query.
                    if tag == b'F' {
                        self.shared.pending.fetch_add(1, Ordering::AcqRel);
                    } else if tag == b'H' {
                        // Flush: nothing of the backend's is outstanding without it.
                    } else if !matches!(tag, b'd' | b'c' | b'f') {
                        self.unsynced = true;
                    }
                    wire::write_header(self.upstream_writer, tag, length).await?;
                    wire::copy_body(reader, self.upstream_writer, length).await?;
                    if reader.buffer().is_empty() {
                        self.upstream_writer.flush().await?;
                    }
                }
            }
        }
    }

    /// A message forwarded as it came.
    async fn forward(&mut self, tag: u8, body: &[u8], buffered: bool) -> std::io::Result<()> {
        wire::write_header(self.upstream_writer, tag, body.len()).await?;
        self.upstream_writer.write_all(body).await?;
        if !buffered {
            self.upstream_writer.flush().await?;
        }
        Ok(())
    }

    fn verdict(&self, sql: &str) -> Verdict {
        let admin = admin::is_quartet_admin(sql);
        let statements = crate::engine::split::split_statements(sql);
        if statements.len() > 1 && statements.iter().any(|s| admin::is_quartet_admin(s)) {
            return Verdict::Refuse(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "send CREATE/DROP DATABASE, CREATE/ALTER/DROP ROLE and GRANT/REVOKE ON DATABASE \
                 one per query",
            ));
        }
        if admin {
            return Verdict::Admin;
        }
        if self.login.privilege == Privilege::Read && lifts_read_only(sql) {
            return Verdict::Refuse(SqlError::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied: role \"{}\" may only read database \"{}\"",
                    self.login.role, self.login.database
                ),
            ));
        }
        Verdict::Forward
    }

    async fn run_admin(&self, sql: &str) -> Result<String, SqlError> {
        let caller = Caller {
            role: &self.login.role,
            superuser: self.login.superuser,
        };
        match admin::answer(&self.service.engine, caller, sql).await {
            Some(Ok(result)) => Ok(result.tag),
            Some(Err(err)) => Err(err),
            None => Err(SqlError::new(
                sqlstate::INTERNAL_ERROR,
                "not an administration statement",
            )),
        }
    }

    /// A simple-protocol query.
    async fn query(&mut self, tag: u8, body: Vec<u8>) -> std::io::Result<()> {
        let mut at = 0;
        let sql = wire::cstr(&body, &mut at).unwrap_or_default().to_owned();
        let mut out = BytesMut::new();
        match self.verdict(&sql) {
            Verdict::Forward => {
                self.shared.pending.fetch_add(1, Ordering::AcqRel);
                return self.forward(tag, &body, false).await;
            }
            Verdict::Admin => match self.run_admin(&sql).await {
                Ok(done) => wire::command_complete(&mut out, &done),
                Err(err) => wire::error_response(&mut out, "ERROR", err.code, &err.message),
            },
            Verdict::Refuse(err) => {
                wire::error_response(&mut out, "ERROR", err.code, &err.message);
            }
        }
        self.wait_for_backend().await?;
        wire::ready_for_query(&mut out, self.shared.status.load(Ordering::Acquire));
        self.answer(out).await
    }

    /// Parse, Bind, Describe, Execute, Close: forwarded unless they concern an administration
    /// statement or break the read-only rule.
    async fn extended(&mut self, tag: u8, body: Vec<u8>) -> std::io::Result<()> {
        if self.skipping {
            return Ok(());
        }
        let mut at = 0;
        let mut out = BytesMut::new();
        match tag {
            b'P' => {
                let name = wire::cstr(&body, &mut at).unwrap_or_default().to_owned();
                let sql = wire::cstr(&body, &mut at).unwrap_or_default().to_owned();
                match self.verdict(&sql) {
                    Verdict::Forward => {
                        self.local_statements.remove(&name);
                    }
                    Verdict::Admin => {
                        self.local_statements.insert(name, sql);
                        wire::message(&mut out, b'1', |_| {});
                    }
                    Verdict::Refuse(err) => {
                        wire::error_response(&mut out, "ERROR", err.code, &err.message);
                        self.skipping = true;
                    }
                }
            }
            b'B' => {
                let portal = wire::cstr(&body, &mut at).unwrap_or_default().to_owned();
                let statement = wire::cstr(&body, &mut at).unwrap_or_default();
                match self.local_statements.get(statement) {
                    Some(sql) => {
                        self.local_portals.insert(portal, sql.clone());
                        wire::message(&mut out, b'2', |_| {});
                    }
                    None => {
                        self.local_portals.remove(&portal);
                    }
                }
            }
            b'D' | b'C' => {
                let kind = body.first().copied().unwrap_or(0);
                at = 1;
                let name = wire::cstr(&body, &mut at).unwrap_or_default().to_owned();
                let local = if kind == b'S' {
                    self.local_statements.contains_key(&name)
                } else {
                    self.local_portals.contains_key(&name)
                };
                if local && tag == b'D' {
                    if kind == b'S' {
                        wire::message(&mut out, b't', |b| b.put_i16(0));
                    }
                    wire::message(&mut out, b'n', |_| {});
                } else if local {
                    if kind == b'S' {
                        self.local_statements.remove(&name);
                    } else {
                        self.local_portals.remove(&name);
                    }
                    wire::message(&mut out, b'3', |_| {});
                }
            }
            b'E' => {
                let portal = wire::cstr(&body, &mut at).unwrap_or_default();
                if let Some(sql) = self.local_portals.get(portal).cloned() {
                    match self.run_admin(&sql).await {
                        Ok(done) => wire::command_complete(&mut out, &done),
                        Err(err) => {
                            wire::error_response(&mut out, "ERROR", err.code, &err.message);
                            self.skipping = true;
                        }
                    }
                }
            }
            _ => {}
        }
        if out.is_empty() {
            self.unsynced = true;
            return self.forward(tag, &body, true).await;
        }
        self.wait_for_backend().await?;
        self.answered_since_sync = true;
        self.answer(out).await
    }

    /// Waits until the backend has answered everything sent to it, adding a Sync if
    /// extended-protocol messages went without one (its ReadyForQuery is not passed on).
    async fn wait_for_backend(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.shared.swallow.fetch_add(1, Ordering::AcqRel);
            self.shared.pending.fetch_add(1, Ordering::AcqRel);
            wire::write_header(self.upstream_writer, b'S', 0).await?;
            self.unsynced = false;
        }
        self.upstream_writer.flush().await?;
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.shared.pending.load(Ordering::Acquire) <= 0 {
                return Ok(());
            }
            tokio::select! {
                _ = drained => {}
                _ = self.shared.stop.cancelled() => {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
            }
        }
    }

    /// Writes the proxy's own answer to the client.
    async fn answer(&self, out: BytesMut) -> std::io::Result<()> {
        let mut writer = self.client_writer.lock().await;
        writer.write_all(&out).await?;
        writer.flush().await
    }
}

/// Whether `sql` could lift a session's read-only setting (or run code that could): refused
/// for roles that may only read.
pub(crate) fn lifts_read_only(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().any(|w| {
        w.contains("read_only")
            || matches!(
                *w,
                "set_config" | "discard" | "authorization" | "characteristics" | "do"
            )
    }) || words.windows(2).any(|pair| {
        matches!(
            pair,
            ["read", "write"] | ["reset", "all"] | ["set" | "reset", "role"]
        )
    })
}

/// A string literal in PostgreSQL's syntax.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The startup packet's parameters.
fn parse_startup(body: &[u8]) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut at = 0;
    while let (Some(name), Some(value)) = (wire::cstr(body, &mut at), wire::cstr(body, &mut at)) {
        if name.is_empty() {
            break;
        }
        params.push((name.to_owned(), value.to_owned()));
    }
    params
}

/// `-c name=value` and `--name=value` in the `options` startup parameter.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let pair = if word == "-c" {
            words.next()
        } else {
            word.strip_prefix("--").or_else(|| word.strip_prefix("-c"))
        };
        if let Some((name, value)) = pair.and_then(|p| p.split_once('=')) {
            out.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    out
}

async fn fatal(writer: &mut Writer, code: &str, message: &str) {
    let mut out = BytesMut::new();
    wire::error_response(&mut out, "FATAL", code, message);
    let _ = writer.write_all(&out).await;
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_lift_read_only_are_recognised() {
        for sql in [
            "SET default_transaction_read_only = off",
            "set transaction read write",
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "select set_config('default_transaction_read_only','off',false)",
            "RESET ALL",
            "DISCARD ALL",
            "DO $$ BEGIN EXECUTE 'x'; END $$",
            "SET ROLE postgres",
        ] {
            assert!(lifts_read_only(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM t",
            "SHOW TimeZone",
            "BEGIN READ ONLY",
            "select 1",
        ] {
            assert!(!lifts_read_only(sql), "{sql}");
        }
    }

    #[test]
    fn options_become_settings() {
        assert_eq!(
            parse_options("-c search_path=app -c statement-timeout=5s --DateStyle=ISO"),
            [
                ("search_path".to_owned(), "app".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
                ("DateStyle".to_owned(), "ISO".to_owned()),
            ]
        );
    }
}
