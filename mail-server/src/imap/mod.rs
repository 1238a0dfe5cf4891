//! IMAP4rev1 (RFC 3501) on `mail.imap_listen` (STARTTLS) and `mail.imaps_listen` (TLS from
//! the first byte), over the same store SMTP delivers into.
//!
//! imap-next parses commands and encodes responses (it is sans-I/O: [`Wire`] feeds it bytes
//! and writes what it produces); [`session`] decides what each command does. A connection:
//!
//! 1. greeting, then CAPABILITY / STARTTLS / LOGIN / AUTHENTICATE PLAIN (login only inside TLS,
//!    outside development; failures share the guessing brake with SMTP and HTTP);
//! 2. commands of the authenticated and selected states ([`session::Session::command`]);
//! 3. IDLE waits on the store's change notifications (and looks every few seconds, for changes
//!    made by another mail-server sharing a PostgreSQL store).
//!
//! Extensions: LITERAL+, SASL-IR, IDLE, NAMESPACE, UNSELECT, UIDPLUS, MOVE, SPECIAL-USE,
//! CHILDREN, ID, ENABLE (which enables nothing).

mod fetch;
mod search;
mod sequence;
mod session;
pub mod structure;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_next::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_next::imap_types::core::{Tag, Text, Vec1};
use imap_next::imap_types::response::{
    Capability, Code, CommandContinuationRequest, Data, Greeting, Status, StatusKind,
};
use imap_next::server::{Event, Options, Server};
use imap_next::{Interrupt, Io as NeedIo, State as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};
use tokio::net::TcpStream;

use crate::auth::Logins;
use crate::connection::{BUDGET_UNIT, BoxIo, Budget, PerIp};
use crate::store::Store;

/// RFC 3501 §5.4: an authenticated client may stay silent for at least 30 minutes.
const AUTOLOGOUT: Duration = Duration::from_secs(30 * 60);
/// How often a session in IDLE looks for changes nobody told it about (another server).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Malformed or refused commands before the connection is closed.
const MAX_ERRORS: usize = 20;
/// Longest command line, literals aside (Dovecot's limit).
const MAX_COMMAND: u32 = 64 * 1024;

/// What the IMAP listeners share.
pub struct ImapService {
    pub store: Store,
    pub logins: Arc<Logins>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Development: LOGIN without TLS from loopback.
    pub plaintext_login_on_loopback: bool,
    /// Largest APPEND, as SMTP's largest message.
    pub max_message_bytes: u32,
    /// How long a client that has not logged in may stay silent.
    pub login_timeout: Duration,
    per_ip: PerIp,
    /// Memory for literals being received, shared with SMTP.
    budget: Budget,
}

impl std::fmt::Debug for ImapService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapService").finish_non_exhaustive()
    }
}

impl ImapService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        logins: Arc<Logins>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        plaintext_login_on_loopback: bool,
        max_message_bytes: usize,
        login_timeout: Duration,
        max_per_ip: usize,
        budget: Budget,
    ) -> Self {
        Self {
            store,
            logins,
            tls,
            plaintext_login_on_loopback,
            max_message_bytes: u32::try_from(max_message_bytes).unwrap_or(u32::MAX),
            login_timeout,
            per_ip: PerIp::new(max_per_ip),
            budget,
        }
    }

    /// Serves one connection to its end.
    pub async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, implicit_tls: bool) {
        let slot = self.per_ip.enter(peer.ip());
        let opened =
            crate::connection::open(stream, implicit_tls, self.tls.as_ref(), self.login_timeout);
        let Some((mut io, secure)) = opened.await else {
            return;
        };
        if !slot.admitted {
            let _ = io
                .write_all(b"* BYE Too many connections from your address\r\n")
                .await;
            let _ = io.shutdown().await;
            return;
        }
        let mut wire = Wire::new(io, self.options(), greeting(), self.budget.clone());
        let mut session = session::Session::new(&self, peer, secure);
        if let Err(err) = run(&self, &mut wire, &mut session).await {
            tracing::debug!(%peer, error = %err, "IMAP connection ended");
        }
        let _ = wire.io.flush().await;
        let _ = wire.io.shutdown().await;
    }

    fn options(&self) -> Options {
        let mut options = Options::default();
        options.max_literal_size = self.max_message_bytes;
        options.max_command_size = self.max_message_bytes.saturating_add(MAX_COMMAND);
        let _ = options.set_literal_accept_text("Ready for literal data".to_owned());
        let _ = options.set_literal_reject_text("[TOOBIG] Literal too big".to_owned());
        options
    }

    fn login_allowed(&self, secure: bool, peer: SocketAddr) -> bool {
        secure || (self.plaintext_login_on_loopback && peer.ip().is_loopback())
    }
}

fn greeting() -> Greeting<'static> {
    Greeting::ok(None, "Quartet IMAP4rev1 ready").expect("valid greeting")
}

/// A text for a status response: ASCII without line breaks, never empty.
pub(crate) fn text(message: &str) -> Text<'static> {
    let clean: String = message
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                ' '
            }
        })
        .collect();
    let clean = clean.trim().trim_start_matches('[');
    Text::try_from(if clean.is_empty() { "done" } else { clean }.to_owned())
        .unwrap_or_else(|_| Text::try_from("done").expect("valid text"))
}

pub(crate) fn status(
    tag: Option<Tag<'static>>,
    kind: StatusKind,
    code: Option<Code<'static>>,
    message: &str,
) -> Status<'static> {
    Status::new(tag.clone(), kind, code, text(message))
        .unwrap_or_else(|_| Status::new(tag, kind, None, text("done")).expect("valid status"))
}

pub(crate) fn bye(message: &str) -> Status<'static> {
    Status::bye(None, text(message))
        .unwrap_or_else(|_| Status::bye(None, text("Bye")).expect("valid"))
}

/// What came from the client.
pub(crate) enum Incoming {
    Event(Event),
    /// Something imap-next could not parse; the bytes it skipped.
    Malformed(imap_next::server::Error),
    /// A change to some mailbox (while in IDLE).
    Changed,
    Closed,
    TimedOut,
    /// More unparsed input than the caller allows (before login: no literal worth holding).
    TooMuch,
    /// The memory budget for messages stayed spent.
    NoMemory,
}

/// imap-next's server state and the connection it speaks over.
pub(crate) struct Wire {
    server: Server,
    io: BufWriter<BoxIo>,
    /// Client events met while flushing responses, handled next.
    pending: VecDeque<Incoming>,
    buffer: Vec<u8>,
    /// Bytes handed to imap-next since it last produced an event.
    unparsed: usize,
    /// Memory held for them (past the first unit), from the budget shared with SMTP: a
    /// command with a large literal holds it until the next command is read.
    budget: Budget,
    held: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl Wire {
    fn new(io: BoxIo, options: Options, greeting: Greeting<'static>, budget: Budget) -> Self {
        Self {
            server: Server::new(options, greeting),
            io: BufWriter::with_capacity(64 * 1024, io),
            pending: VecDeque::new(),
            buffer: vec![0; 64 * 1024],
            unparsed: 0,
            budget,
            held: Vec::new(),
        }
    }

    pub(crate) fn data(&mut self, data: Data<'static>) {
        self.server.enqueue_data(data);
    }

    pub(crate) fn status(&mut self, status: Status<'static>) {
        self.server.enqueue_status(status);
    }

    /// Writes every response queued so far (a large FETCH calls this between batches, so
    /// that its responses are not all held at once).
    pub(crate) async fn drain(&mut self) -> std::io::Result<()> {
        loop {
            match self.server.next() {
                Err(Interrupt::Io(NeedIo::Output(bytes))) => self.io.write_all(&bytes).await?,
                Err(Interrupt::Io(NeedIo::NeedMoreInput)) => break,
                Ok(Event::ResponseSent { .. } | Event::GreetingSent { .. }) => {}
                // Responses are written before input is read, so the queue is empty here.
                Ok(event) => {
                    self.pending.push_back(Incoming::Event(event));
                    break;
                }
                Err(Interrupt::Error(err)) => {
                    self.pending.push_back(Incoming::Malformed(err));
                    break;
                }
            }
        }
        Ok(())
    }

    /// The next thing from the client, writing queued responses first. While `idle` is given,
    /// a change to the store ends the wait too; more than `max_unparsed` bytes without a
    /// complete command ends it with [`Incoming::TooMuch`].
    async fn next(
        &mut self,
        timeout: Duration,
        mut idle: Option<&mut tokio::sync::watch::Receiver<u64>>,
        max_unparsed: usize,
    ) -> std::io::Result<Incoming> {
        if let Some(incoming) = self.pending.pop_front() {
            return Ok(incoming);
        }
        // The last command has been handled: its literal's memory goes back.
        if self.unparsed == 0 {
            self.held.clear();
        }
        loop {
            match self.server.next() {
                Ok(Event::ResponseSent { .. } | Event::GreetingSent { .. }) => {}
                Ok(event) => {
                    self.unparsed = 0;
                    return Ok(Incoming::Event(event));
                }
                Err(Interrupt::Io(NeedIo::Output(bytes))) => self.io.write_all(&bytes).await?,
                Err(Interrupt::Error(err)) => {
                    self.unparsed = 0;
                    return Ok(Incoming::Malformed(err));
                }
                Err(Interrupt::Io(NeedIo::NeedMoreInput)) => {
                    if self.unparsed > max_unparsed {
                        return Ok(Incoming::TooMuch);
                    }
                    self.io.flush().await?;
                    let read = match idle.as_deref_mut() {
                        Some(changes) => tokio::select! {
                            read = self.io.read(&mut self.buffer) => read?,
                            changed = changes.changed() => {
                                if changed.is_err() {
                                    return Ok(Incoming::Closed);
                                }
                                return Ok(Incoming::Changed);
                            }
                            () = tokio::time::sleep(IDLE_POLL) => return Ok(Incoming::Changed),
                        },
                        None => {
                            match tokio::time::timeout(timeout, self.io.read(&mut self.buffer))
                                .await
                            {
                                Ok(read) => read?,
                                Err(_) => return Ok(Incoming::TimedOut),
                            }
                        }
                    };
                    if read == 0 {
                        return Ok(Incoming::Closed);
                    }
                    self.unparsed += read;
                    if self.unparsed > BUDGET_UNIT
                        && !self
                            .budget
                            .grow(&mut self.held, self.unparsed, timeout)
                            .await
                    {
                        return Ok(Incoming::NoMemory);
                    }
                    self.server.enqueue_input(&self.buffer[..read]);
                }
            }
        }
    }
}

/// The tag of a malformed command, when its first word is one (for `tag BAD`).
fn tag_of(bytes: &[u8]) -> Option<Tag<'static>> {
    let word = bytes.split(|&b| b == b' ').next()?;
    Tag::try_from(String::from_utf8(word.to_vec()).ok()?).ok()
}

async fn run(
    service: &ImapService,
    wire: &mut Wire,
    session: &mut session::Session<'_>,
) -> std::io::Result<()> {
    let mut authenticate_tag: Option<Tag<'static>> = None;
    let mut idle_tag: Option<Tag<'static>> = None;
    let mut changes = service.store.changes();
    loop {
        let timeout = if session.logged_in() {
            AUTOLOGOUT
        } else {
            service.login_timeout
        };
        let idle = idle_tag.is_some().then_some(&mut changes);
        // Before login no command needs more than a line: literals (APPEND's up to
        // mail.max_message_bytes) are for logged-in clients only.
        let max_unparsed = if session.logged_in() {
            usize::MAX
        } else {
            MAX_COMMAND as usize
        };
        let incoming = wire.next(timeout, idle, max_unparsed).await?;
        match incoming {
            Incoming::Closed => return Ok(()),
            Incoming::TooMuch => {
                wire.status(bye("Command too long before login"));
                wire.drain().await?;
                return Ok(());
            }
            Incoming::NoMemory => {
                wire.status(bye("Server busy, try again later"));
                wire.drain().await?;
                return Ok(());
            }
            Incoming::TimedOut => {
                wire.status(bye("Autologout; idle too long"));
                wire.drain().await?;
                return Ok(());
            }
            Incoming::Changed => {
                session.updates(wire, true).await;
            }
            Incoming::Malformed(err) => {
                use imap_next::server::Error;
                let refusal = match &err {
                    Error::MalformedMessage { discarded_bytes }
                    | Error::ExpectedCrlfGotLf { discarded_bytes } => {
                        Some((discarded_bytes.declassify(), "Could not parse the command"))
                    }
                    Error::CommandTooLong { discarded_bytes } => {
                        Some((discarded_bytes.declassify(), "Command too long"))
                    }
                    // imap-next has answered this one itself.
                    Error::LiteralTooLong { .. } => None,
                };
                if let Some((bytes, message)) = refusal {
                    wire.status(status(tag_of(bytes), StatusKind::Bad, None, message));
                }
                if session.error() >= MAX_ERRORS {
                    wire.status(bye("Too many errors"));
                    wire.drain().await?;
                    return Ok(());
                }
            }
            Incoming::Event(Event::CommandReceived { command }) => {
                match session.command(wire, command).await? {
                    session::Flow::Continue => {}
                    session::Flow::Logout => {
                        wire.drain().await?;
                        return Ok(());
                    }
                    session::Flow::StartTls => {
                        wire.drain().await?;
                        wire.io.flush().await?;
                        let Some(tls) = service.tls.clone() else {
                            return Ok(());
                        };
                        // Whatever the client sent after STARTTLS stays behind with the
                        // plaintext state: only what comes inside TLS counts.
                        let io = std::mem::replace(
                            &mut wire.io,
                            BufWriter::new(Box::new(tokio::io::duplex(1).0)),
                        );
                        let io = io.into_inner();
                        let stream =
                            match tokio::time::timeout(service.login_timeout, tls.accept(io)).await
                            {
                                Ok(Ok(stream)) => stream,
                                _ => return Ok(()),
                            };
                        *wire = Wire::new(
                            Box::new(stream),
                            service.options(),
                            greeting(),
                            service.budget.clone(),
                        );
                        // The fresh state's greeting is not sent: TLS does not start over.
                        wire.skip_greeting();
                        session.secured();
                    }
                }
            }
            Incoming::Event(Event::CommandAuthenticateReceived {
                command_authenticate,
            }) => {
                let tag = command_authenticate.tag;
                let refusal = if session.logged_in() {
                    Some((StatusKind::Bad, "Already logged in"))
                } else if !session.login_allowed() {
                    Some((StatusKind::No, "Log in after STARTTLS"))
                } else if command_authenticate.mechanism != AuthMechanism::Plain {
                    Some((StatusKind::No, "Only AUTHENTICATE PLAIN is offered"))
                } else {
                    None
                };
                if let Some((kind, message)) = refusal {
                    let _ = wire
                        .server
                        .authenticate_finish(status(Some(tag), kind, None, message));
                    continue;
                }
                match command_authenticate.initial_response {
                    Some(response) => {
                        let finish = session.authenticate(tag, response.declassify()).await;
                        let _ = wire.server.authenticate_finish(finish);
                    }
                    None => {
                        authenticate_tag = Some(tag);
                        let _ = wire
                            .server
                            .authenticate_continue(CommandContinuationRequest::base64(Vec::new()));
                    }
                }
            }
            Incoming::Event(Event::AuthenticateDataReceived { authenticate_data }) => {
                let Some(tag) = authenticate_tag.take() else {
                    continue;
                };
                let finish = match authenticate_data {
                    AuthenticateData::Continue(response) => {
                        session.authenticate(tag, response.declassify()).await
                    }
                    AuthenticateData::Cancel => {
                        status(Some(tag), StatusKind::Bad, None, "Authentication cancelled")
                    }
                };
                let _ = wire.server.authenticate_finish(finish);
            }
            Incoming::Event(Event::IdleCommandReceived { tag }) => {
                if session.logged_in() {
                    let accept = CommandContinuationRequest::basic(None, "idling")
                        .expect("valid continuation");
                    let _ = wire.server.idle_accept(accept);
                    idle_tag = Some(tag);
                    // Anything that arrived before IDLE is reported at once.
                    changes.mark_unchanged();
                    session.updates(wire, true).await;
                } else {
                    let _ = wire.server.idle_reject(status(
                        Some(tag),
                        StatusKind::No,
                        None,
                        "Log in first",
                    ));
                }
            }
            Incoming::Event(Event::IdleDoneReceived) => {
                if let Some(tag) = idle_tag.take() {
                    session.updates(wire, true).await;
                    wire.status(status(Some(tag), StatusKind::Ok, None, "IDLE terminated"));
                }
            }
            Incoming::Event(Event::ResponseSent { .. } | Event::GreetingSent { .. }) => {}
        }
    }
}

impl Wire {
    /// Consumes the greeting a fresh state would send.
    fn skip_greeting(&mut self) {
        while let Err(Interrupt::Io(NeedIo::Output(_))) = self.server.next() {}
    }
}

/// The capabilities to announce in this state.
pub(crate) fn capabilities(
    logged_in: bool,
    secure: bool,
    tls_available: bool,
    login_allowed: bool,
) -> Vec1<Capability<'static>> {
    let mut list = vec![Capability::Imap4Rev1];
    if !logged_in {
        if !secure && tls_available {
            list.push(Capability::StartTls);
        }
        if login_allowed {
            list.push(Capability::Auth(AuthMechanism::Plain));
        } else {
            list.push(Capability::LoginDisabled);
        }
    }
    list.extend([
        Capability::SaslIr,
        Capability::LiteralPlus,
        Capability::Idle,
        Capability::Namespace,
        Capability::Unselect,
        Capability::UidPlus,
        Capability::Move,
        Capability::Id,
        Capability::Enable,
    ]);
    for name in ["SPECIAL-USE", "CHILDREN"] {
        if let Ok(atom) = imap_next::imap_types::core::Atom::try_from(name) {
            list.push(Capability::from(atom));
        }
    }
    Vec1::try_from(list).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
}
