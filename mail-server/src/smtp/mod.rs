//! SMTP (RFC 5321) on three ports: `smtp` receives mail for the local domains from anyone;
//! `submission` (STARTTLS) and `submissions` (implicit TLS, RFC 8314) take mail from
//! authenticated accounts for anywhere (RFC 6409).
//!
//! Commands are parsed by smtp-proto; DATA is read by [`data`]. Replies are written when the
//! client has nothing more pipelined, so a pipelined batch gets one write.

pub mod auth;
pub mod data;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_proto::{EhloResponse, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::{Login, Logins};
use crate::connection::{Conn, PerIp};
use crate::delivery::Policy;
use crate::message;
use crate::store::{Delivery, Store, Target};
use data::{BareLf, Data};

/// Longest command line (RFC 5321 allows 512; AUTH responses and long addresses need more).
const MAX_LINE: usize = 4096;

/// Which port a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Port 25: mail for local domains, no AUTH.
    Relay,
    /// 587 with STARTTLS, or 465 with TLS from the first byte: AUTH required.
    Submission { implicit_tls: bool },
}

/// Settings every session reads.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_recipients: usize,
    pub max_errors: usize,
    pub command_timeout: Duration,
    pub session_timeout: Duration,
    pub max_per_ip: usize,
    pub bare_lf: BareLf,
}

/// What the SMTP listeners share.
pub struct SmtpService {
    pub store: Store,
    pub hostname: String,
    pub domains: Vec<String>,
    pub limits: Limits,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// AUTH without TLS is allowed from loopback (development only).
    pub plaintext_auth_on_loopback: bool,
    pub policy: Policy,
    /// Woken when a message enters the outbound queue.
    pub outbound: Arc<tokio::sync::Notify>,
    /// Memory all sessions' messages may take while they are received.
    budget: crate::connection::Budget,
    per_ip: PerIp,
    logins: Arc<Logins>,
}

impl std::fmt::Debug for SmtpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpService")
            .field("hostname", &self.hostname)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

/// The envelope being built.
#[derive(Debug, Default)]
struct Envelope {
    from: Option<String>,
    targets: Vec<Target>,
    /// Recipients as the client gave them (for the trace header).
    recipients: Vec<String>,
}

enum Flow {
    Continue,
    Close,
    StartTls,
}

impl SmtpService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        hostname: String,
        domains: Vec<String>,
        limits: Limits,
        tls: Option<tokio_rustls::TlsAcceptor>,
        plaintext_auth_on_loopback: bool,
        policy: Policy,
        outbound: Arc<tokio::sync::Notify>,
        logins: Arc<Logins>,
        budget: crate::connection::Budget,
    ) -> Self {
        let max_per_ip = limits.max_per_ip;
        Self {
            store,
            hostname,
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            limits,
            tls,
            plaintext_auth_on_loopback,
            policy,
            outbound,
            budget,
            per_ip: PerIp::new(max_per_ip),
            logins,
        }
    }

    fn is_local(&self, address: &str) -> bool {
        address
            .rsplit_once('@')
            .is_some_and(|(_, domain)| self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)))
    }

    /// Serves one connection to its end.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, port: Port) {
        let slot = self.per_ip.enter(peer.ip());
        let implicit_tls = port == Port::Submission { implicit_tls: true };
        let opened = crate::connection::open(
            stream,
            implicit_tls,
            self.tls.as_ref(),
            self.limits.command_timeout,
        );
        let Some((io, secure)) = opened.await else {
            return;
        };
        let mut conn = Conn::new(io);
        if !slot.admitted {
            let _ = conn
                .reply("421 4.7.0 Too many connections from your address, try again later\r\n")
                .await;
            let _ = conn.writer.shutdown().await;
            return;
        }
        let deadline = tokio::time::Instant::now() + self.limits.session_timeout;
        let mut session = Session {
            service: &self,
            peer,
            port,
            secure,
            helo: None,
            authenticated: None,
            envelope: Envelope::default(),
            errors: 0,
        };
        session.run(conn, deadline).await;
    }
}

struct Session<'a> {
    service: &'a SmtpService,
    peer: SocketAddr,
    port: Port,
    secure: bool,
    helo: Option<String>,
    /// The account logged in with AUTH.
    authenticated: Option<String>,
    envelope: Envelope,
    errors: usize,
}

impl Session<'_> {
    /// The longest the last reply and the close may take (a client that stopped reading).
    const TEARDOWN: Duration = Duration::from_secs(5);

    /// Serves the connection until the client leaves or `deadline` (mail.session_timeout_secs)
    /// passes; then the client is told (421) and disconnected.
    async fn run(&mut self, mut conn: Conn, deadline: tokio::time::Instant) {
        let greeting = format!("220 {} ESMTP Quartet\r\n", self.service.hostname);
        if conn.reply(&greeting).await.is_err() {
            return;
        }
        loop {
            let served = tokio::time::timeout_at(deadline, self.serve_commands(&mut conn)).await;
            let Ok(served) = served else {
                tracing::debug!(peer = %self.peer, "SMTP session reached its time limit");
                // Bounded as a whole: a client that reads nothing must not keep the task.
                let _ = tokio::time::timeout(Self::TEARDOWN, async {
                    let _ = conn
                        .reply("421 4.4.2 Session time limit reached, closing connection\r\n")
                        .await;
                    let _ = conn.writer.shutdown().await;
                })
                .await;
                return;
            };
            match served {
                Ok(Flow::StartTls) => {
                    let Some(tls) = self.service.tls.clone() else {
                        return;
                    };
                    let io = conn.into_io();
                    let accepted =
                        tokio::time::timeout(self.service.limits.command_timeout, tls.accept(io))
                            .await;
                    match accepted {
                        Ok(Ok(stream)) => {
                            conn = Conn::new(Box::new(stream));
                            self.secure = true;
                            // RFC 3207: the session starts over.
                            self.helo = None;
                            self.authenticated = None;
                            self.envelope = Envelope::default();
                        }
                        _ => return,
                    }
                }
                Ok(Flow::Close | Flow::Continue) | Err(_) => {
                    let _ = tokio::time::timeout(Self::TEARDOWN, async {
                        let _ = conn.writer.flush().await;
                        let _ = conn.writer.shutdown().await;
                    })
                    .await;
                    return;
                }
            }
        }
    }

    fn protocol(&self) -> &'static str {
        match (self.secure, self.authenticated.is_some()) {
            (false, false) => "ESMTP",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (true, true) => "ESMTPSA",
        }
    }

    fn may_auth(&self) -> bool {
        matches!(self.port, Port::Submission { .. })
            && (self.secure
                || (self.service.plaintext_auth_on_loopback && self.peer.ip().is_loopback()))
    }

    /// Counts an error; `true` when the session has had too many.
    fn error(&mut self) -> bool {
        self.errors += 1;
        self.errors >= self.service.limits.max_errors
    }

    async fn serve_commands(&mut self, conn: &mut Conn) -> std::io::Result<Flow> {
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            let read = tokio::time::timeout(
                self.service.limits.command_timeout,
                crate::connection::read_capped(&mut conn.reader, &mut line, MAX_LINE),
            )
            .await;
            match read {
                Err(_) => {
                    conn.reply("421 4.4.2 Idle too long, closing connection\r\n")
                        .await?;
                    return Ok(Flow::Close);
                }
                Ok(Err(err)) => return Err(err),
                Ok(Ok(())) if line.is_empty() => return Ok(Flow::Close),
                Ok(Ok(())) => {}
            }
            if line.last() != Some(&b'\n') {
                // Over-long: skip to the end of the line, then refuse it.
                loop {
                    line.clear();
                    let skip =
                        crate::connection::read_capped(&mut conn.reader, &mut line, MAX_LINE);
                    match tokio::time::timeout(self.service.limits.command_timeout, skip).await {
                        Ok(read) => read?,
                        Err(_) => return Ok(Flow::Close),
                    }
                    if line.is_empty() || line.last() == Some(&b'\n') {
                        break;
                    }
                }
                conn.reply("500 5.5.2 Line too long\r\n").await?;
                if self.error() {
                    return self.too_many_errors(conn).await;
                }
                continue;
            }
            let flow = self.command(conn, &line).await?;
            if !matches!(flow, Flow::Continue) {
                return Ok(flow);
            }
        }
    }

    async fn too_many_errors(&mut self, conn: &mut Conn) -> std::io::Result<Flow> {
        conn.reply("421 4.7.0 Too many errors, closing connection\r\n")
            .await?;
        Ok(Flow::Close)
    }

    async fn command(&mut self, conn: &mut Conn, line: &[u8]) -> std::io::Result<Flow> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(err) => {
                let reply = match err {
                    smtp_proto::Error::UnknownCommand => "500 5.5.1 Unknown command\r\n",
                    smtp_proto::Error::InvalidSenderAddress => {
                        "501 5.1.7 Bad sender address syntax\r\n"
                    }
                    smtp_proto::Error::InvalidRecipientAddress => {
                        "501 5.1.3 Bad recipient address syntax\r\n"
                    }
                    smtp_proto::Error::UnsupportedParameter { .. } => {
                        "555 5.5.4 Unsupported parameter\r\n"
                    }
                    _ => "501 5.5.4 Syntax error\r\n",
                };
                conn.reply(reply).await?;
                if self.error() {
                    return self.too_many_errors(conn).await;
                }
                return Ok(Flow::Continue);
            }
        };
        let reply: String = match request {
            Request::Ehlo { host } => {
                self.helo = Some(host);
                self.envelope = Envelope::default();
                let mut ehlo = EhloResponse::new(self.service.hostname.as_str());
                ehlo.capabilities = smtp_proto::EXT_PIPELINING
                    | smtp_proto::EXT_8BIT_MIME
                    | smtp_proto::EXT_SMTP_UTF8
                    | smtp_proto::EXT_SIZE
                    | smtp_proto::EXT_ENHANCED_STATUS_CODES;
                ehlo.size = self.service.limits.max_message_bytes;
                if !self.secure && self.service.tls.is_some() {
                    ehlo.capabilities |= smtp_proto::EXT_START_TLS;
                }
                if self.may_auth() && self.authenticated.is_none() {
                    ehlo.capabilities |= smtp_proto::EXT_AUTH;
                    ehlo.auth_mechanisms = smtp_proto::AUTH_PLAIN | smtp_proto::AUTH_LOGIN;
                }
                let mut out = Vec::new();
                ehlo.write(&mut out)?;
                // smtp-proto's first line carries a joke; ours names the server and the client.
                String::from_utf8_lossy(&out).replacen(
                    " you had me at EHLO",
                    &format!(" Hello {}", self.helo.as_deref().unwrap_or("")),
                    1,
                )
            }
            Request::Helo { host } | Request::Lhlo { host } => {
                self.helo = Some(host);
                self.envelope = Envelope::default();
                format!("250 {}\r\n", self.service.hostname)
            }
            Request::StartTls => {
                if self.secure || self.service.tls.is_none() {
                    "503 5.5.1 TLS is already on or not offered\r\n".into()
                } else {
                    conn.reply("220 2.0.0 Ready to start TLS\r\n").await?;
                    conn.writer.flush().await?;
                    return Ok(Flow::StartTls);
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(conn, mechanism, initial_response).await?,
            Request::Mail { from } => self.mail_from(from).await,
            Request::Rcpt { to } => self.rcpt_to(&to.address).await,
            Request::Data => return self.data(conn).await,
            Request::Bdat { .. } => "502 5.5.1 CHUNKING is not offered\r\n".into(),
            Request::Rset => {
                self.envelope = Envelope::default();
                "250 2.0.0 Reset\r\n".into()
            }
            Request::Noop { .. } => "250 2.0.0 OK\r\n".into(),
            Request::Vrfy { .. } => {
                "252 2.5.2 Cannot verify the user, but will accept the message\r\n".into()
            }
            Request::Help { .. } => "214 2.0.0 See RFC 5321\r\n".into(),
            Request::Quit => {
                conn.reply("221 2.0.0 Bye\r\n").await?;
                return Ok(Flow::Close);
            }
            _ => "502 5.5.1 Command not implemented\r\n".into(),
        };
        let failed = reply.starts_with('5') || reply.starts_with('4');
        conn.reply(&reply).await?;
        if failed && self.error() {
            return self.too_many_errors(conn).await;
        }
        Ok(Flow::Continue)
    }

    async fn mail_from(&mut self, from: smtp_proto::MailFrom<String>) -> String {
        if self.helo.is_none() {
            return "503 5.5.1 Say EHLO first\r\n".into();
        }
        if self.envelope.from.is_some() {
            return "503 5.5.1 Sender already given\r\n".into();
        }
        if matches!(self.port, Port::Submission { .. }) && self.authenticated.is_none() {
            return "530 5.7.0 Authentication required\r\n".into();
        }
        if from.size > self.service.limits.max_message_bytes {
            return format!(
                "552 5.3.4 Message size exceeds the limit of {} bytes\r\n",
                self.service.limits.max_message_bytes
            );
        }
        let address = from.address.to_ascii_lowercase();
        if let Some(account) = &self.authenticated {
            // Submission: the envelope sender is the account or one of its aliases.
            match self.service.store.may_send_as(account, &address).await {
                Ok(true) => {}
                Ok(false) => {
                    return format!(
                        "553 5.7.1 Sender address <{address}> is not yours ({account})\r\n"
                    );
                }
                Err(err) => {
                    tracing::error!(error = %err, "sender check failed");
                    return "451 4.3.0 Temporary server error\r\n".into();
                }
            }
        }
        self.envelope.from = Some(address);
        "250 2.1.0 Sender OK\r\n".into()
    }

    async fn rcpt_to(&mut self, to: &str) -> String {
        if self.envelope.from.is_none() {
            return "503 5.5.1 Need MAIL before RCPT\r\n".into();
        }
        if self.envelope.recipients.len() >= self.service.limits.max_recipients {
            return "452 4.5.3 Too many recipients\r\n".into();
        }
        let mut address = to.to_ascii_lowercase();
        if address.is_empty() {
            // `RCPT TO:<postmaster>` (RFC 5321 §4.5.1): the first local domain's postmaster.
            match (self.port, self.service.domains.first()) {
                (Port::Relay, Some(domain)) => address = format!("postmaster@{domain}"),
                _ => return "501 5.1.3 Empty recipient address\r\n".into(),
            }
        }
        if self.service.is_local(&address) {
            match self.service.store.resolve(&address).await {
                Ok(accounts) if accounts.is_empty() => {
                    return format!("550 5.1.1 <{address}>: no such user here\r\n");
                }
                Ok(accounts) => {
                    for account in accounts {
                        let target = Target::inbox(&account);
                        if !self.envelope.targets.contains(&target) {
                            self.envelope.targets.push(target);
                        }
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "recipient lookup failed");
                    return "451 4.3.0 Temporary server error\r\n".into();
                }
            }
        } else if let Some(account) = &self.authenticated {
            let target = self.service.policy.outbound(&address, account);
            if !self.envelope.targets.contains(&target) {
                self.envelope.targets.push(target);
            }
        } else {
            return format!("554 5.7.1 <{address}>: relay access denied\r\n");
        }
        self.envelope.recipients.push(address);
        "250 2.1.5 Recipient OK\r\n".into()
    }

    async fn data(&mut self, conn: &mut Conn) -> std::io::Result<Flow> {
        let Some(from) = self.envelope.from.clone() else {
            conn.reply("503 5.5.1 Need MAIL and RCPT before DATA\r\n")
                .await?;
            return Ok(Flow::Continue);
        };
        if self.envelope.targets.is_empty() {
            conn.reply("554 5.5.1 No valid recipients\r\n").await?;
            return Ok(Flow::Continue);
        }
        conn.reply("354 End data with <CR><LF>.<CR><LF>\r\n")
            .await?;
        conn.writer.flush().await?;
        let limits = &self.service.limits;
        let id = message_id();
        let recipient =
            (self.envelope.recipients.len() == 1).then(|| self.envelope.recipients[0].as_str());
        // The trace header first, so that the message is read into its final buffer.
        let received = message::received_header(
            self.helo.as_deref().unwrap_or("unknown"),
            self.peer.ip(),
            &self.service.hostname,
            self.protocol(),
            &id,
            recipient,
        )
        .into_bytes();
        let data = data::read_data(
            &mut conn.reader,
            received,
            limits.max_message_bytes,
            limits.bare_lf,
            limits.command_timeout,
            &self.service.budget,
        )
        .await?;
        let envelope = std::mem::take(&mut self.envelope);
        let (raw, _memory) = match data {
            Data::Complete(raw, memory) => (raw, memory),
            Data::NoMemory => {
                conn.reply("452 4.3.1 Insufficient system storage, try again later\r\n")
                    .await?;
                return Ok(Flow::Continue);
            }
            Data::TooLarge => {
                conn.reply(&format!(
                    "552 5.3.4 Message size exceeds the limit of {} bytes\r\n",
                    limits.max_message_bytes
                ))
                .await?;
                return Ok(Flow::Continue);
            }
            Data::BareLf => {
                // The rest of the message cannot be told apart from commands: end here.
                conn.reply(
                    "554 5.5.2 Bare <LF> or <CR> in message: lines must end with <CR><LF>\r\n",
                )
                .await?;
                return Ok(Flow::Close);
            }
        };
        let queued = envelope
            .targets
            .iter()
            .any(|t| matches!(t, Target::Queue { .. }));
        let delivery = Delivery {
            metadata: message::metadata(&raw),
            raw,
            envelope_from: from,
            targets: envelope.targets,
            account: self.authenticated.clone(),
        };
        let started = Instant::now();
        match self.service.store.deliver(delivery).await {
            Ok(()) => {
                tracing::debug!(%id, took = ?started.elapsed(), "message stored");
                if queued {
                    self.service.outbound.notify_one();
                }
                conn.reply(&format!("250 2.0.0 OK: queued as {id}\r\n"))
                    .await?;
            }
            Err(err) => {
                tracing::error!(error = %err, "a message could not be stored");
                conn.reply("451 4.3.0 Message not stored, try again later\r\n")
                    .await?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn auth(
        &mut self,
        conn: &mut Conn,
        mechanism: u64,
        initial: String,
    ) -> std::io::Result<String> {
        if !matches!(self.port, Port::Submission { .. }) {
            return Ok("502 5.5.1 AUTH is for the submission ports\r\n".into());
        }
        if !self.may_auth() {
            return Ok("538 5.7.11 Encryption required: STARTTLS first\r\n".into());
        }
        if self.authenticated.is_some() {
            return Ok("503 5.5.1 Already authenticated\r\n".into());
        }
        if self.helo.is_none() || self.envelope.from.is_some() {
            return Ok("503 5.5.1 AUTH goes after EHLO and before MAIL\r\n".into());
        }
        if self.service.logins.blocked(self.peer.ip()) {
            return Ok("454 4.7.0 Too many failed logins, try again later\r\n".into());
        }
        let exchange = auth::read_credentials(conn, mechanism, initial);
        let credentials =
            match tokio::time::timeout(self.service.limits.command_timeout, exchange).await {
                Ok(outcome) => match outcome? {
                    Ok(credentials) => credentials,
                    Err(reply) => return Ok(reply.into()),
                },
                Err(_) => return Ok("421 4.4.2 Idle too long during AUTH\r\n".into()),
            };
        let login = self.service.logins.login(
            self.peer.ip(),
            "smtp",
            &credentials.user,
            credentials.password,
        );
        Ok(match login.await {
            Login::Accepted(user) => {
                self.authenticated = Some(user);
                "235 2.7.0 Authentication successful\r\n".into()
            }
            Login::Refused => "535 5.7.8 Authentication credentials invalid\r\n".into(),
            Login::Blocked => "454 4.7.0 Too many failed logins, try again later\r\n".into(),
            Login::Unavailable => "454 4.7.0 Temporary authentication failure\r\n".into(),
        })
    }
}

/// A short unique queue id for replies and trace headers.
fn message_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut raw = [0u8; 9];
    let _ = ring::rand::SystemRandom::new().fill(&mut raw);
    raw.iter().map(|b| format!("{b:02X}")).collect()
}
