//! POP3 (RFC 1939) with CAPA, RESP-CODES, PIPELINING (RFC 2449), STLS (RFC 2595) and AUTH
//! PLAIN (RFC 5034), on `mail.pop3_listen` and `mail.pop3s_listen` (TLS from the first byte).
//!
//! A session works on the account's INBOX as it was at login: numbers stay fixed for the
//! session, DELE only marks, and the marked messages are removed at QUIT (the UPDATE state),
//! never when the connection just drops. Messages retrieved are flagged \Seen at QUIT too, so
//! IMAP and the web inbox show them as read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::auth::{B64, Login, Logins, decode_plain_bytes};
use crate::connection::{Conn, PerIp, read_capped};
use crate::store::Store;

/// RFC 2449 allows 255 octets; AUTH responses need more.
const MAX_LINE: usize = 2048;
/// RFC 1939 §3: an autologout timer of at least 10 minutes.
const AUTOLOGOUT: Duration = Duration::from_secs(10 * 60);
/// Refused or unknown commands before the connection is closed.
const MAX_ERRORS: usize = 20;

/// What the POP3 listeners share.
pub struct Pop3Service {
    pub store: Store,
    pub logins: Arc<Logins>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Development: USER/PASS without TLS from loopback.
    pub plaintext_login_on_loopback: bool,
    /// How long a client that has not logged in may stay silent.
    pub login_timeout: Duration,
    per_ip: PerIp,
}

impl std::fmt::Debug for Pop3Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pop3Service").finish_non_exhaustive()
    }
}

/// The next command line, without its CRLF; `None` at the end of the stream.
async fn read_line(conn: &mut Conn, timeout: Duration) -> std::io::Result<Option<Line>> {
    let mut line = Vec::with_capacity(64);
    match tokio::time::timeout(timeout, read_capped(&mut conn.reader, &mut line, MAX_LINE)).await {
        Err(_) => return Ok(Some(Line::TimedOut)),
        Ok(read) => read?,
    }
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        // Over-long: skip to its end, within the same time limit.
        loop {
            line.clear();
            let skip = read_capped(&mut conn.reader, &mut line, MAX_LINE);
            match tokio::time::timeout(timeout, skip).await {
                Err(_) => return Ok(Some(Line::TimedOut)),
                Ok(read) => read?,
            }
            if line.is_empty() || line.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Line::TooLong));
    }
    let text = String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_owned();
    Ok(Some(Line::Command(text)))
}

enum Line {
    Command(String),
    TooLong,
    TimedOut,
}

/// A message of the maildrop as it was at login.
#[derive(Debug)]
struct Message {
    uid: u32,
    size: u32,
    deleted: bool,
    retrieved: bool,
}

struct Maildrop {
    account: String,
    mailbox_id: i64,
    uidvalidity: u32,
    messages: Vec<Message>,
}

impl Maildrop {
    /// Message `number` (1-based) if it exists and is not marked deleted.
    fn get(&self, number: &str) -> Result<usize, &'static str> {
        let index = number
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < self.messages.len())
            .ok_or("-ERR No such message\r\n")?;
        if self.messages[index].deleted {
            return Err("-ERR Message is deleted\r\n");
        }
        Ok(index)
    }
}

enum Flow {
    Continue,
    Quit,
    StartTls,
}

struct Session<'s> {
    service: &'s Pop3Service,
    peer: SocketAddr,
    secure: bool,
    user: Option<String>,
    maildrop: Option<Maildrop>,
    errors: usize,
}

impl Pop3Service {
    pub fn new(
        store: Store,
        logins: Arc<Logins>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        plaintext_login_on_loopback: bool,
        login_timeout: Duration,
        max_per_ip: usize,
    ) -> Self {
        Self {
            store,
            logins,
            tls,
            plaintext_login_on_loopback,
            login_timeout,
            per_ip: PerIp::new(max_per_ip),
        }
    }

    /// Serves one connection to its end.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, implicit_tls: bool) {
        let slot = self.per_ip.enter(peer.ip());
        let opened =
            crate::connection::open(stream, implicit_tls, self.tls.as_ref(), self.login_timeout);
        let Some((io, secure)) = opened.await else {
            return;
        };
        let mut conn = Conn::new(io);
        if !slot.admitted {
            let _ = conn
                .reply("-ERR [IN-USE] Too many connections from your address\r\n")
                .await;
            let _ = conn.writer.shutdown().await;
            return;
        }
        let mut session = Session {
            service: &self,
            peer,
            secure,
            user: None,
            maildrop: None,
            errors: 0,
        };
        if let Err(err) = session.run(conn).await {
            tracing::debug!(%peer, error = %err, "POP3 connection ended");
        }
    }
}

impl Session<'_> {
    fn login_allowed(&self) -> bool {
        self.secure || (self.service.plaintext_login_on_loopback && self.peer.ip().is_loopback())
    }

    async fn run(&mut self, mut conn: Conn) -> std::io::Result<()> {
        conn.reply("+OK Quartet POP3 ready\r\n").await?;
        loop {
            let timeout = if self.maildrop.is_some() {
                AUTOLOGOUT
            } else {
                self.service.login_timeout
            };
            let line = match read_line(&mut conn, timeout).await? {
                None => return Ok(()),
                Some(Line::TimedOut) => {
                    conn.reply("-ERR Autologout; idle too long\r\n").await?;
                    return Ok(());
                }
                Some(Line::TooLong) => {
                    conn.reply("-ERR Line too long\r\n").await?;
                    if self.error() {
                        return Ok(());
                    }
                    continue;
                }
                Some(Line::Command(line)) => line,
            };
            match self.command(&mut conn, &line).await? {
                Flow::Continue => {}
                Flow::Quit => {
                    conn.writer.flush().await?;
                    let _ = conn.writer.shutdown().await;
                    return Ok(());
                }
                Flow::StartTls => {
                    conn.writer.flush().await?;
                    let Some(tls) = self.service.tls.clone() else {
                        return Ok(());
                    };
                    let io = conn.into_io();
                    match tokio::time::timeout(self.service.login_timeout, tls.accept(io)).await {
                        Ok(Ok(stream)) => {
                            conn = Conn::new(Box::new(stream));
                            self.secure = true;
                            self.user = None;
                        }
                        _ => return Ok(()),
                    }
                }
            }
        }
    }

    /// Counts an error; `true` when the session has had too many.
    fn error(&mut self) -> bool {
        self.errors += 1;
        self.errors >= MAX_ERRORS
    }

    async fn command(&mut self, conn: &mut Conn, line: &str) -> std::io::Result<Flow> {
        let (verb, raw_argument) = match line.split_once(' ') {
            Some((verb, argument)) => (verb.to_ascii_uppercase(), argument),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        // A password is taken as sent: spaces are part of it.
        let argument = raw_argument.trim();
        if verb == "QUIT" {
            let reply = self.quit().await;
            conn.reply(&reply).await?;
            return Ok(Flow::Quit);
        }
        if verb == "CAPA" {
            conn.reply(&self.capabilities()).await?;
            return Ok(Flow::Continue);
        }
        if verb == "NOOP" && self.maildrop.is_some() {
            conn.reply("+OK\r\n").await?;
            return Ok(Flow::Continue);
        }
        let reply = if self.maildrop.is_none() {
            match verb.as_str() {
                "STLS" => {
                    if self.secure {
                        "-ERR TLS is already on\r\n".to_owned()
                    } else if self.service.tls.is_none() {
                        "-ERR TLS is not available\r\n".to_owned()
                    } else {
                        conn.reply("+OK Begin TLS negotiation\r\n").await?;
                        return Ok(Flow::StartTls);
                    }
                }
                "USER" if !self.login_allowed() => "-ERR [AUTH] Log in after STLS\r\n".to_owned(),
                "USER" if argument.is_empty() => "-ERR USER needs a name\r\n".to_owned(),
                "USER" => {
                    self.user = Some(argument.to_owned());
                    "+OK Send PASS\r\n".to_owned()
                }
                "PASS" => match self.user.take() {
                    None => "-ERR USER first\r\n".to_owned(),
                    Some(user) => self.login(&user, raw_argument.to_owned()).await,
                },
                "AUTH" => self.authenticate(conn, argument).await?,
                _ => "-ERR Log in first (USER/PASS or AUTH PLAIN)\r\n".to_owned(),
            }
        } else {
            match self.transaction(conn, &verb, argument).await? {
                Some(reply) => reply,
                None => return Ok(Flow::Continue),
            }
        };
        if reply.starts_with("-ERR") && self.error() {
            conn.reply(&reply).await?;
            conn.reply("-ERR Too many errors\r\n").await?;
            return Ok(Flow::Quit);
        }
        conn.reply(&reply).await?;
        Ok(Flow::Continue)
    }

    fn capabilities(&self) -> String {
        let mut capa = String::from("+OK Capability list follows\r\n");
        if self.maildrop.is_none() {
            if self.login_allowed() {
                capa.push_str("USER\r\nSASL PLAIN\r\n");
            }
            if !self.secure && self.service.tls.is_some() {
                capa.push_str("STLS\r\n");
            }
        }
        capa.push_str("TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        capa.push_str("EXPIRE NEVER\r\nIMPLEMENTATION Quartet\r\n.\r\n");
        capa
    }

    async fn authenticate(&mut self, conn: &mut Conn, argument: &str) -> std::io::Result<String> {
        if argument.is_empty() {
            return Ok("+OK Mechanisms follow\r\nPLAIN\r\n.\r\n".to_owned());
        }
        if !self.login_allowed() {
            return Ok("-ERR [AUTH] Log in after STLS\r\n".to_owned());
        }
        let (mechanism, initial) = match argument.split_once(' ') {
            Some((mechanism, initial)) => (mechanism, Some(initial.trim().to_owned())),
            None => (argument, None),
        };
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            return Ok("-ERR Only AUTH PLAIN is offered\r\n".to_owned());
        }
        let response = match initial {
            Some(initial) => initial,
            None => {
                conn.reply("+ \r\n").await?;
                conn.writer.flush().await?;
                match read_line(conn, self.service.login_timeout).await? {
                    Some(Line::Command(text)) => text,
                    _ => return Ok("-ERR Authentication aborted\r\n".to_owned()),
                }
            }
        };
        if response.trim() == "*" {
            return Ok("-ERR Authentication cancelled\r\n".to_owned());
        }
        // "=" is an empty initial response (RFC 4422).
        let decoded = if response.trim() == "=" {
            Some(Vec::new())
        } else {
            B64.decode(response.trim()).ok()
        };
        Ok(match decoded.as_deref().and_then(decode_plain_bytes) {
            Some(credentials) => self.login(&credentials.user, credentials.password).await,
            None => "-ERR Malformed PLAIN response\r\n".to_owned(),
        })
    }

    async fn login(&mut self, user: &str, password: String) -> String {
        let login = self
            .service
            .logins
            .login(self.peer.ip(), "pop3", user, password)
            .await;
        let account = match login {
            Login::Accepted(account) => account,
            Login::Refused => return "-ERR [AUTH] Authentication failed\r\n".to_owned(),
            Login::Blocked => {
                return "-ERR [SYS/TEMP] Too many failed logins, try again later\r\n".to_owned();
            }
            Login::Unavailable => return "-ERR [SYS/TEMP] Temporary failure\r\n".to_owned(),
        };
        match self.open_maildrop(&account).await {
            Ok(maildrop) => {
                let count = maildrop.messages.len();
                let size: u64 = maildrop.messages.iter().map(|m| u64::from(m.size)).sum();
                self.maildrop = Some(maildrop);
                format!("+OK Logged in, {count} messages ({size} octets)\r\n")
            }
            Err(err) => {
                tracing::error!(error = %err, "POP3: the store failed");
                "-ERR [SYS/TEMP] Server error, try again later\r\n".to_owned()
            }
        }
    }

    async fn open_maildrop(&self, account: &str) -> Result<Maildrop, crate::store::StoreError> {
        let store = &self.service.store;
        let account_id = store
            .account_id(account)
            .await?
            .ok_or_else(|| crate::store::StoreError::Invalid(format!("no account {account}")))?;
        let inbox = store
            .mailbox(account_id, "INBOX")
            .await?
            .ok_or_else(|| crate::store::StoreError::Invalid("no INBOX".into()))?;
        let entries = store.entries(inbox.id).await?;
        let uids: Vec<u32> = entries.iter().map(|e| e.uid).collect();
        let messages = store
            .summaries(inbox.id, &uids, crate::store::Bytes::None)
            .await?
            .into_iter()
            .map(|summary| Message {
                uid: summary.uid,
                size: summary.size,
                deleted: false,
                retrieved: false,
            })
            .collect();
        Ok(Maildrop {
            account: account.to_owned(),
            mailbox_id: inbox.id,
            uidvalidity: inbox.uidvalidity,
            messages,
        })
    }

    /// A command of the TRANSACTION state; `None` when it has written its own reply.
    async fn transaction(
        &mut self,
        conn: &mut Conn,
        verb: &str,
        argument: &str,
    ) -> std::io::Result<Option<String>> {
        let Some(maildrop) = self.maildrop.as_mut() else {
            return Ok(Some("-ERR Log in first\r\n".to_owned()));
        };
        Ok(Some(match verb {
            "STAT" => {
                let live = || maildrop.messages.iter().filter(|m| !m.deleted);
                let size: u64 = live().map(|m| u64::from(m.size)).sum();
                format!("+OK {} {size}\r\n", live().count())
            }
            "LIST" | "UIDL" => {
                let show = |number: usize, message: &Message| {
                    if verb == "LIST" {
                        format!("{number} {}", message.size)
                    } else {
                        format!("{number} {}.{}", maildrop.uidvalidity, message.uid)
                    }
                };
                if argument.is_empty() {
                    let mut reply = String::from("+OK\r\n");
                    for (index, message) in maildrop.messages.iter().enumerate() {
                        if !message.deleted {
                            reply.push_str(&show(index + 1, message));
                            reply.push_str("\r\n");
                        }
                    }
                    reply.push_str(".\r\n");
                    reply
                } else {
                    match maildrop.get(argument) {
                        Ok(index) => {
                            format!("+OK {}\r\n", show(index + 1, &maildrop.messages[index]))
                        }
                        Err(reply) => reply.to_owned(),
                    }
                }
            }
            "RETR" | "TOP" => {
                let mut words = argument.split_whitespace();
                let number = words.next().unwrap_or_default();
                let lines = if verb == "TOP" {
                    match words.next().and_then(|n| n.parse::<usize>().ok()) {
                        Some(lines) => Some(lines),
                        None => {
                            return Ok(Some(
                                "-ERR TOP needs a message and a line count\r\n".into(),
                            ));
                        }
                    }
                } else {
                    None
                };
                let index = match maildrop.get(number) {
                    Ok(index) => index,
                    Err(reply) => return Ok(Some(reply.to_owned())),
                };
                let uid = maildrop.messages[index].uid;
                let raw = match self
                    .service
                    .store
                    .raw_messages(maildrop.mailbox_id, &[uid])
                    .await
                {
                    Ok(mut found) if !found.is_empty() => found.swap_remove(0).1,
                    Ok(_) => return Ok(Some("-ERR [SYS/TEMP] The message is gone\r\n".into())),
                    Err(err) => {
                        tracing::error!(error = %err, "POP3: the store failed");
                        return Ok(Some("-ERR [SYS/TEMP] Server error\r\n".into()));
                    }
                };
                let bytes = match lines {
                    Some(lines) => top(&raw, lines),
                    None => {
                        maildrop.messages[index].retrieved = true;
                        &raw[..]
                    }
                };
                conn.writer
                    .write_all(format!("+OK {} octets\r\n", raw.len()).as_bytes())
                    .await?;
                conn.writer.write_all(&dot_stuffed(bytes)).await?;
                conn.reply(".\r\n").await?;
                return Ok(None);
            }
            "DELE" => match maildrop.get(argument) {
                Ok(index) => {
                    maildrop.messages[index].deleted = true;
                    format!("+OK Message {} deleted\r\n", index + 1)
                }
                Err(reply) => reply.to_owned(),
            },
            "RSET" => {
                for message in &mut maildrop.messages {
                    message.deleted = false;
                }
                format!("+OK {} messages\r\n", maildrop.messages.len())
            }
            "STLS" => "-ERR STLS goes before login\r\n".to_owned(),
            "USER" | "PASS" | "AUTH" => "-ERR Already logged in\r\n".to_owned(),
            _ => "-ERR Unknown command\r\n".to_owned(),
        }))
    }

    /// QUIT: in the TRANSACTION state, the UPDATE state's removals first.
    async fn quit(&mut self) -> String {
        let Some(maildrop) = self.maildrop.take() else {
            return "+OK Bye\r\n".to_owned();
        };
        let store = &self.service.store;
        let deleted: Vec<u32> = maildrop
            .messages
            .iter()
            .filter(|m| m.deleted)
            .map(|m| m.uid)
            .collect();
        let retrieved: Vec<u32> = maildrop
            .messages
            .iter()
            .filter(|m| m.retrieved && !m.deleted)
            .map(|m| m.uid)
            .collect();
        let outcome = async {
            let seen = crate::store::FlagChange::Add(vec!["\\Seen".to_owned()]);
            store
                .change_flags(maildrop.mailbox_id, &retrieved, &seen)
                .await?;
            store.expunge(maildrop.mailbox_id, &deleted).await
        }
        .await;
        match outcome {
            Ok(()) => {
                tracing::debug!(account = %maildrop.account, deleted = deleted.len(), "POP3 session ended");
                format!("+OK Bye ({} messages deleted)\r\n", deleted.len())
            }
            Err(err) => {
                tracing::error!(error = %err, "POP3: removing deleted messages failed");
                "-ERR [SYS/TEMP] Some deleted messages were not removed\r\n".to_owned()
            }
        }
    }
}

/// The header, the blank line, and the first `lines` lines of the body.
fn top(raw: &[u8], lines: usize) -> &[u8] {
    let body_start = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(raw.len());
    let mut end = body_start;
    for _ in 0..lines {
        match raw[end..].iter().position(|&b| b == b'\n') {
            Some(at) => end += at + 1,
            None => {
                end = raw.len();
                break;
            }
        }
    }
    &raw[..end]
}

/// Lines starting with `.` get another; the result ends with CRLF (RFC 1939 §3).
fn dot_stuffed(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut at_line_start = true;
    for &b in bytes {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_stuffed_and_top_cuts_lines() {
        assert_eq!(dot_stuffed(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n");
        assert_eq!(dot_stuffed(b".x"), b"..x\r\n");
        let raw = b"Subject: x\r\n\r\none\r\ntwo\r\nthree\r\n";
        assert_eq!(top(raw, 0), b"Subject: x\r\n\r\n");
        assert_eq!(top(raw, 2), b"Subject: x\r\n\r\none\r\ntwo\r\n");
        assert_eq!(top(raw, 10), &raw[..]);
    }
}
