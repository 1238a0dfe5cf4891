//! One IMAP session's state and what each command does to it.
//!
//! A selected mailbox is held as a view: its messages' UIDs and flags in UID order, the
//! message sequence number being the position in it. The view changes only when this session
//! is told (EXISTS, EXPUNGE, FETCH FLAGS responses), so numbers stay what the client thinks
//! they are; [`Session::updates`] brings it level with the store when the store's version of
//! the mailbox has moved.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use imap_next::imap_types::command::{Command, CommandBody};
use imap_next::imap_types::core::{IString, NString, QuotedChar, Tag, Vec1};
use imap_next::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_next::imap_types::extensions::namespace::Namespace;
use imap_next::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_next::imap_types::flag::{Flag, FlagNameAttribute, FlagPerm, StoreResponse, StoreType};
use imap_next::imap_types::mailbox::{ListMailbox, Mailbox as ImapMailbox};
use imap_next::imap_types::response::{Code, Data, Status, StatusKind};
use imap_next::imap_types::search::SearchKey;
use imap_next::imap_types::sequence::SequenceSet;
use imap_next::imap_types::status::{StatusDataItem, StatusDataItemName};

use super::{ImapService, Wire, bye, capabilities, fetch, search, sequence, status, structure};
use crate::auth::{Login, decode_plain_bytes};
use crate::store::{Bytes, Entry, FlagChange, Mailbox, StoreError, Version};

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Logout,
    StartTls,
}

/// The tagged status a command ends with.
struct Reply {
    kind: StatusKind,
    code: Option<Code<'static>>,
    text: String,
}

impl Reply {
    fn ok(text: impl Into<String>) -> Self {
        Self {
            kind: StatusKind::Ok,
            code: None,
            text: text.into(),
        }
    }
    fn no(text: impl Into<String>) -> Self {
        Self {
            kind: StatusKind::No,
            code: None,
            text: text.into(),
        }
    }
    fn bad(text: impl Into<String>) -> Self {
        Self {
            kind: StatusKind::Bad,
            code: None,
            text: text.into(),
        }
    }
    fn code(mut self, code: Code<'static>) -> Self {
        self.code = Some(code);
        self
    }
}

impl From<StoreError> for Reply {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "IMAP: the store failed");
        Reply::no("Server error, try again later")
    }
}

/// The selected mailbox.
struct Selected {
    mailbox: Mailbox,
    read_only: bool,
    view: Vec<Entry>,
    /// Messages from this UID on are \Recent in this session.
    recent_from: u32,
    version: Version,
    /// Expunges seen in the store but not told yet (not allowed during FETCH, STORE, SEARCH).
    behind: bool,
}

impl Selected {
    fn last_uid(&self) -> u32 {
        self.view.last().map_or(0, |entry| entry.uid)
    }

    /// `(sequence number, index)` of the messages `set` names, in order. Each range is
    /// found by binary search in the view (sorted by UID), so `FETCH 7` costs the same in a
    /// mailbox of ten messages or of a million.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, usize)> {
        let mut indices: Vec<usize> = Vec::new();
        for (low, high) in sequence::ranges(
            set,
            if uid {
                self.last_uid()
            } else {
                self.view.len() as u32
            },
        ) {
            let (start, end) = if uid {
                (
                    self.view.partition_point(|e| e.uid < low),
                    self.view.partition_point(|e| e.uid <= high),
                )
            } else {
                let len = self.view.len();
                (
                    (low as usize).saturating_sub(1).min(len),
                    (high as usize).min(len),
                )
            };
            indices.extend(start..end);
        }
        // The ranges are sorted and disjoint, so the indices are too.
        indices
            .into_iter()
            .map(|index| (index as u32 + 1, index))
            .collect()
    }

    fn recent(&self, uid: u32) -> bool {
        uid >= self.recent_from
    }
}

/// Messages read from the store per round trip during FETCH and SEARCH…
const BATCH: usize = 200;
/// …and, when their bytes are read, about this many bytes (a batch holds at least one).
const BATCH_BYTES: u64 = 16 * 1024 * 1024;

/// Bytes read of each message when only its header is wanted (most headers are far shorter;
/// longer ones are read again whole).
const HEAD_BYTES: u32 = 16 * 1024;

/// `targets` cut into batches of at most [`BATCH`] messages and, `with_bytes`, about
/// [`BATCH_BYTES`].
fn batches(view: &[Entry], targets: &[(u32, usize)], with_bytes: bool) -> Vec<(usize, usize)> {
    let mut cuts = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (at, &(_, index)) in targets.iter().enumerate() {
        let size = u64::from(view[index].size);
        let full = at - start >= BATCH || (with_bytes && at > start && bytes + size > BATCH_BYTES);
        if full {
            cuts.push((start, at));
            start = at;
            bytes = 0;
        }
        bytes += size;
    }
    if start < targets.len() {
        cuts.push((start, targets.len()));
    }
    cuts
}

pub(crate) struct Session<'s> {
    service: &'s ImapService,
    peer: SocketAddr,
    secure: bool,
    account: Option<(i64, String)>,
    selected: Option<Selected>,
    errors: usize,
    /// Tells of changes made through this server's store.
    changes: tokio::sync::watch::Receiver<u64>,
    /// When the store was last asked for the selected mailbox's version.
    last_check: Instant,
}

/// Without a notification, the store is asked at most this often whether the selected mailbox
/// changed (for changes made by another mail-server sharing a PostgreSQL store).
const CHECK_EVERY: Duration = Duration::from_secs(1);

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// A mailbox name as the store keeps it.
fn mailbox_name(mailbox: &ImapMailbox<'_>) -> String {
    match mailbox {
        ImapMailbox::Inbox => "INBOX".to_owned(),
        ImapMailbox::Other(other) => {
            crate::store::canonical_name(&String::from_utf8_lossy(other.inner().as_ref()))
        }
    }
}

fn imap_mailbox(name: &str) -> ImapMailbox<'static> {
    ImapMailbox::try_from(name.to_owned()).unwrap_or(ImapMailbox::Inbox)
}

/// Flags as the store keeps them: space-separated, each once, \Recent never.
fn flag_string(flags: &[String]) -> String {
    flags.join(" ")
}

fn parse_flags(flags: &str) -> Vec<String> {
    flags
        .split(' ')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

fn has(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

/// `*` matches anything, `%` anything but the hierarchy delimiter (RFC 3501 §6.3.8).
/// Dynamic programming over (pattern, name) positions: time `pattern × name`, no recursion,
/// whatever wildcards the client strings together.
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    // matched[j]: the pattern so far matches the first `j` bytes of the name.
    let mut matched = vec![false; name.len() + 1];
    matched[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        match p {
            b'*' => {
                let mut any = false;
                for j in 0..=name.len() {
                    any |= matched[j];
                    next[j] = any;
                }
            }
            b'%' => {
                let mut any = false;
                for j in 0..=name.len() {
                    any |= matched[j];
                    next[j] = any;
                    if j < name.len() && name[j] == b'/' {
                        any = false;
                    }
                }
            }
            c => {
                for j in 1..=name.len() {
                    next[j] = matched[j - 1] && name[j - 1] == c;
                }
            }
        }
        matched = next;
    }
    matched[name.len()]
}

/// Longest LIST pattern (reference and mailbox together) answered.
const MAX_PATTERN: usize = 1024;

const DELIMITER: char = '/';
const SYSTEM_FLAGS: [Flag<'static>; 5] = [
    Flag::Answered,
    Flag::Flagged,
    Flag::Deleted,
    Flag::Seen,
    Flag::Draft,
];

impl<'s> Session<'s> {
    pub(crate) fn new(service: &'s ImapService, peer: SocketAddr, secure: bool) -> Self {
        Self {
            service,
            peer,
            secure,
            account: None,
            selected: None,
            errors: 0,
            changes: service.store.changes(),
            last_check: Instant::now(),
        }
    }

    pub(crate) fn logged_in(&self) -> bool {
        self.account.is_some()
    }

    pub(crate) fn login_allowed(&self) -> bool {
        self.service.login_allowed(self.secure, self.peer)
    }

    pub(crate) fn secured(&mut self) {
        self.secure = true;
    }

    /// Counts an error; returns how many there have been.
    pub(crate) fn error(&mut self) -> usize {
        self.errors += 1;
        self.errors
    }

    fn capabilities(&self) -> Vec1<imap_next::imap_types::response::Capability<'static>> {
        capabilities(
            self.logged_in(),
            self.secure,
            self.service.tls.is_some(),
            self.login_allowed(),
        )
    }

    async fn login(&mut self, user: &str, password: String) -> Reply {
        let login = self
            .service
            .logins
            .login(self.peer.ip(), "imap", user, password)
            .await;
        match login {
            Login::Accepted(address) => match self.service.store.account_id(&address).await {
                Ok(Some(id)) => {
                    tracing::debug!(peer = %self.peer, account = %address, "IMAP login");
                    self.account = Some((id, address));
                    Reply::ok("Logged in").code(Code::Capability(self.capabilities()))
                }
                Ok(None) => Reply::no("Authentication failed").code(authentication_failed()),
                Err(err) => err.into(),
            },
            Login::Refused => Reply::no("Authentication failed").code(authentication_failed()),
            Login::Blocked => {
                Reply::no("Too many failed logins, try again later").code(unavailable())
            }
            Login::Unavailable => Reply::no("Temporary failure").code(unavailable()),
        }
    }

    /// AUTHENTICATE PLAIN with the client's (decoded) response.
    pub(crate) async fn authenticate(
        &mut self,
        tag: Tag<'static>,
        response: &[u8],
    ) -> Status<'static> {
        let reply = match decode_plain_bytes(response) {
            Some(credentials) => self.login(&credentials.user, credentials.password).await,
            None => Reply::bad("Malformed PLAIN response"),
        };
        status(Some(tag), reply.kind, reply.code, &reply.text)
    }

    /// Runs one command; its responses are queued on `wire`.
    pub(crate) async fn command(
        &mut self,
        wire: &mut Wire,
        command: Command<'static>,
    ) -> std::io::Result<Flow> {
        let tag = command.tag;
        let mut flow = Flow::Continue;
        // EXPUNGE responses may not be sent during FETCH, STORE and SEARCH (RFC 3501 §7.4.1).
        let mut expunges_allowed = true;
        let reply = match command.body {
            CommandBody::Capability => {
                wire.data(Data::Capability(self.capabilities()));
                Reply::ok("CAPABILITY completed")
            }
            CommandBody::Noop => Reply::ok("NOOP completed"),
            CommandBody::Logout => {
                wire.status(bye("Logging out"));
                flow = Flow::Logout;
                Reply::ok("LOGOUT completed")
            }
            CommandBody::StartTLS => {
                if self.secure {
                    Reply::bad("TLS is already on")
                } else if self.logged_in() {
                    Reply::bad("STARTTLS goes before login")
                } else if self.service.tls.is_none() {
                    Reply::no("TLS is not available")
                } else {
                    flow = Flow::StartTls;
                    Reply::ok("Begin TLS negotiation now")
                }
            }
            CommandBody::Login { username, password } => {
                if self.logged_in() {
                    Reply::bad("Already logged in")
                } else if !self.login_allowed() {
                    Reply::no("Log in after STARTTLS").code(privacy_required())
                } else {
                    let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                    let password =
                        String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                    self.login(&user, password).await
                }
            }
            CommandBody::Id { .. } => {
                let name = IString::try_from("name").expect("valid");
                let value = NString::try_from("Quartet").expect("valid");
                wire.data(Data::Id {
                    parameters: Some(vec![(name, value)]),
                });
                Reply::ok("ID completed")
            }
            body if !self.logged_in() => {
                drop(body);
                Reply::bad("Log in first")
            }
            body => {
                if matches!(
                    body,
                    CommandBody::Fetch { uid: false, .. }
                        | CommandBody::Store { uid: false, .. }
                        | CommandBody::Search { uid: false, .. }
                ) {
                    expunges_allowed = false;
                }
                self.authenticated_command(wire, body).await?
            }
        };
        if flow == Flow::Continue && self.selected.is_some() {
            self.updates(wire, expunges_allowed).await;
        }
        wire.status(status(Some(tag), reply.kind, reply.code, &reply.text));
        Ok(flow)
    }

    async fn authenticated_command(
        &mut self,
        wire: &mut Wire,
        body: CommandBody<'static>,
    ) -> std::io::Result<Reply> {
        let Some((account_id, _)) = self.account.clone() else {
            return Ok(Reply::bad("Log in first"));
        };
        Ok(match body {
            CommandBody::Select { mailbox, .. } => {
                self.select(wire, account_id, &mailbox, false).await
            }
            CommandBody::Examine { mailbox, .. } => {
                self.select(wire, account_id, &mailbox, true).await
            }
            CommandBody::Unselect => match self.selected.take() {
                Some(_) => Reply::ok("UNSELECT completed"),
                None => Reply::bad("No mailbox selected"),
            },
            CommandBody::Close => match self.selected.take() {
                Some(selected) => {
                    if !selected.read_only {
                        let all: Vec<u32> = selected.view.iter().map(|e| e.uid).collect();
                        if let Err(err) = self
                            .service
                            .store
                            .expunge_deleted(selected.mailbox.id, &all)
                            .await
                        {
                            return Ok(err.into());
                        }
                    }
                    Reply::ok("CLOSE completed")
                }
                None => Reply::bad("No mailbox selected"),
            },
            CommandBody::Create { mailbox } => {
                self.create(account_id, &mailbox_name(&mailbox)).await
            }
            CommandBody::Delete { mailbox } => {
                let name = mailbox_name(&mailbox);
                if name == "INBOX" {
                    Reply::no("INBOX cannot be deleted")
                } else {
                    match self.service.store.delete_mailbox(account_id, &name).await {
                        Ok(true) => {
                            if self
                                .selected
                                .as_ref()
                                .is_some_and(|s| s.mailbox.name == name)
                            {
                                self.selected = None;
                            }
                            Reply::ok("DELETE completed")
                        }
                        Ok(false) => Reply::no("No such mailbox").code(nonexistent()),
                        Err(err) => err.into(),
                    }
                }
            }
            CommandBody::Rename { from, to } => {
                let (from, to) = (mailbox_name(&from), mailbox_name(&to));
                if let Err(reason) = valid_new_name(&to) {
                    Reply::no(reason)
                } else {
                    match self.service.store.mailbox(account_id, &from).await {
                        Ok(None) => Reply::no("No such mailbox").code(nonexistent()),
                        Err(err) => err.into(),
                        Ok(Some(_)) => {
                            match self
                                .service
                                .store
                                .rename_mailbox(account_id, &from, &to)
                                .await
                            {
                                Ok(()) => Reply::ok("RENAME completed"),
                                Err(StoreError::Invalid(reason)) => {
                                    Reply::no(reason).code(already_exists())
                                }
                                Err(err) => err.into(),
                            }
                        }
                    }
                }
            }
            CommandBody::Subscribe { mailbox } => {
                match self
                    .service
                    .store
                    .subscribe(account_id, &mailbox_name(&mailbox), true)
                    .await
                {
                    Ok(true) => Reply::ok("SUBSCRIBE completed"),
                    Ok(false) => Reply::no("No such mailbox").code(nonexistent()),
                    Err(err) => err.into(),
                }
            }
            CommandBody::Unsubscribe { mailbox } => {
                match self
                    .service
                    .store
                    .subscribe(account_id, &mailbox_name(&mailbox), false)
                    .await
                {
                    Ok(_) => Reply::ok("UNSUBSCRIBE completed"),
                    Err(err) => err.into(),
                }
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                self.list(wire, account_id, &reference, &mailbox_wildcard, false)
                    .await
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                self.list(wire, account_id, &reference, &mailbox_wildcard, true)
                    .await
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(wire, account_id, &mailbox, &item_names).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let bytes = match &message {
                    LiteralOrLiteral8::Literal(literal) => literal.data(),
                    LiteralOrLiteral8::Literal8(literal) => literal.data.as_ref(),
                };
                let date = date.map(|d| d.as_ref().timestamp());
                self.append(account_id, &mailbox_name(&mailbox), &flags, date, bytes)
                    .await
            }
            CommandBody::Namespace => {
                let personal = Namespace {
                    prefix: IString::try_from("").expect("valid"),
                    delimiter: QuotedChar::try_from(DELIMITER).ok(),
                    extensions: Vec::new(),
                };
                wire.data(Data::Namespace {
                    personal: vec![personal],
                    other: Vec::new(),
                    shared: Vec::new(),
                });
                Reply::ok("NAMESPACE completed")
            }
            CommandBody::Enable { .. } => {
                wire.data(Data::Enabled {
                    capabilities: Vec::new(),
                });
                Reply::ok("ENABLE completed")
            }
            // Selected state from here on.
            _ if self.selected.is_none() => Reply::bad("No mailbox selected"),
            CommandBody::Check => Reply::ok("CHECK completed"),
            CommandBody::Expunge => self.expunge(wire, None).await,
            CommandBody::ExpungeUid { sequence_set } => {
                self.expunge(wire, Some(&sequence_set)).await
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                let known = charset.as_ref().is_none_or(|c| {
                    ["US-ASCII", "UTF-8"]
                        .iter()
                        .any(|known| c.as_ref().eq_ignore_ascii_case(known))
                });
                if known {
                    self.search(wire, SearchKey::And(criteria), uid).await
                } else {
                    Reply::no("Unknown charset").code(Code::badcharset(vec![
                        "US-ASCII".try_into().expect("valid"),
                        "UTF-8".try_into().expect("valid"),
                    ]))
                }
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                ..
            } => {
                let names: Vec<MessageDataItemName<'static>> = match macro_or_item_names {
                    MacroOrMessageDataItemNames::Macro(m) => m
                        .expand()
                        .into_iter()
                        .map(imap_next::imap_types::IntoStatic::into_static)
                        .collect(),
                    MacroOrMessageDataItemNames::MessageDataItemNames(names) => names,
                };
                self.fetch(wire, &sequence_set, names, uid).await?
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                ..
            } => {
                self.store(wire, &sequence_set, kind, response, &flags, uid)
                    .await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(wire, account_id, &sequence_set, &mailbox, uid, false)
                    .await
            }
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(wire, account_id, &sequence_set, &mailbox, uid, true)
                    .await
            }
            _ => Reply::bad("Command not supported"),
        })
    }

    async fn select(
        &mut self,
        wire: &mut Wire,
        account_id: i64,
        mailbox: &ImapMailbox<'_>,
        read_only: bool,
    ) -> Reply {
        // A failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1).
        self.selected = None;
        let store = &self.service.store;
        let name = mailbox_name(mailbox);
        let mailbox = match store.mailbox(account_id, &name).await {
            Ok(Some(mailbox)) => mailbox,
            Ok(None) => return Reply::no("No such mailbox").code(nonexistent()),
            Err(err) => return err.into(),
        };
        // The version first: a change between the two reads is seen again, never missed.
        let version = match store.version(mailbox.id).await {
            Ok(Some(version)) => version,
            Ok(None) => return Reply::no("No such mailbox").code(nonexistent()),
            Err(err) => return err.into(),
        };
        let view = match store.entries(mailbox.id).await {
            Ok(view) => view,
            Err(err) => return err.into(),
        };
        let recent_from = if read_only {
            mailbox.recent_uid
        } else {
            match store.take_recent(mailbox.id).await {
                Ok(from) => from,
                Err(err) => return err.into(),
            }
        };
        let selected = Selected {
            mailbox,
            read_only,
            view,
            recent_from,
            version,
            behind: false,
        };
        wire.data(Data::Flags(SYSTEM_FLAGS.to_vec()));
        let permanent = if read_only {
            Vec::new()
        } else {
            let mut flags: Vec<FlagPerm<'static>> =
                SYSTEM_FLAGS.iter().cloned().map(FlagPerm::Flag).collect();
            flags.push(FlagPerm::Asterisk);
            flags
        };
        wire.status(status(
            None,
            StatusKind::Ok,
            Some(Code::PermanentFlags(permanent)),
            "Flags permitted",
        ));
        wire.data(Data::Exists(selected.view.len() as u32));
        let recent = selected
            .view
            .iter()
            .filter(|e| selected.recent(e.uid))
            .count();
        wire.data(Data::Recent(recent as u32));
        if let Some(first_unseen) = selected
            .view
            .iter()
            .position(|e| !has(&parse_flags(&e.flags), "\\Seen"))
        {
            wire.status(status(
                None,
                StatusKind::Ok,
                Some(Code::Unseen(nz(first_unseen as u32 + 1))),
                "First unseen",
            ));
        }
        wire.status(status(
            None,
            StatusKind::Ok,
            Some(Code::UidValidity(nz(selected.mailbox.uidvalidity))),
            "UIDs valid",
        ));
        let uidnext = selected.version.uidnext.max(selected.last_uid() + 1);
        wire.status(status(
            None,
            StatusKind::Ok,
            Some(Code::UidNext(nz(uidnext))),
            "Predicted next UID",
        ));
        self.selected = Some(selected);
        if read_only {
            Reply::ok("EXAMINE completed").code(Code::ReadOnly)
        } else {
            Reply::ok("SELECT completed").code(Code::ReadWrite)
        }
    }

    /// Brings the selected mailbox's view level with the store, telling the client what
    /// changed: new messages (EXISTS, RECENT), flags (FETCH), and, when allowed, removed
    /// messages (EXPUNGE).
    pub(crate) async fn updates(&mut self, wire: &mut Wire, expunges_allowed: bool) {
        let Some(selected) = self.selected.as_mut() else {
            return;
        };
        let notified = self.changes.has_changed().unwrap_or(true);
        if !notified && !selected.behind && self.last_check.elapsed() < CHECK_EVERY {
            return;
        }
        self.changes.mark_unchanged();
        self.last_check = Instant::now();
        let store = &self.service.store;
        let Ok(Some(version)) = store.version(selected.mailbox.id).await else {
            return;
        };
        if version == selected.version {
            return;
        }
        let Ok(fresh) = store.entries(selected.mailbox.id).await else {
            return;
        };
        let current: HashMap<u32, &str> = fresh.iter().map(|e| (e.uid, e.flags.as_str())).collect();
        let mut all_applied = true;
        let removed: Vec<u32> = selected
            .view
            .iter()
            .filter(|e| !current.contains_key(&e.uid))
            .map(|e| e.uid)
            .collect();
        if !removed.is_empty() {
            if expunges_allowed {
                remove_from_view(wire, selected, &removed);
            } else {
                all_applied = false;
            }
        }
        for (index, entry) in selected.view.iter_mut().enumerate() {
            if let Some(flags) = current.get(&entry.uid)
                && *flags != entry.flags
            {
                entry.flags = (*flags).to_owned();
                let recent = entry.uid >= selected.recent_from;
                let items = Vec1::from(imap_next::imap_types::fetch::MessageDataItem::Flags(
                    fetch::flags(&entry.flags, recent),
                ));
                wire.data(Data::Fetch {
                    seq: nz(index as u32 + 1),
                    items,
                });
            }
        }
        let last = selected.last_uid();
        let before = selected.view.len();
        selected
            .view
            .extend(fresh.into_iter().filter(|e| e.uid > last));
        if selected.view.len() > before {
            wire.data(Data::Exists(selected.view.len() as u32));
            let recent = selected
                .view
                .iter()
                .filter(|e| e.uid >= selected.recent_from)
                .count();
            wire.data(Data::Recent(recent as u32));
        }
        selected.behind = !all_applied;
        if all_applied {
            selected.version = version;
        }
    }

    async fn create(&mut self, account_id: i64, name: &str) -> Reply {
        let name = name.trim_end_matches(DELIMITER);
        if let Err(reason) = valid_new_name(name) {
            return Reply::no(reason);
        }
        // Superior names are created too (RFC 3501 §6.3.3).
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split(DELIMITER).collect();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                prefix.push(DELIMITER);
            }
            prefix.push_str(part);
            let created = self.service.store.create_mailbox(account_id, &prefix).await;
            match created {
                Ok(false) if i + 1 == parts.len() => {
                    return Reply::no("Mailbox already exists").code(already_exists());
                }
                Ok(_) => {}
                Err(err) => return err.into(),
            }
        }
        Reply::ok("CREATE completed")
    }

    async fn list(
        &mut self,
        wire: &mut Wire,
        account_id: i64,
        reference: &ImapMailbox<'_>,
        pattern: &ListMailbox<'_>,
        subscribed_only: bool,
    ) -> Reply {
        let reference = match reference {
            ImapMailbox::Inbox => "INBOX".to_owned(),
            ImapMailbox::Other(other) => {
                String::from_utf8_lossy(other.inner().as_ref()).into_owned()
            }
        };
        let pattern = match pattern {
            ListMailbox::Token(token) => String::from_utf8_lossy(token.as_ref()).into_owned(),
            ListMailbox::String(string) => {
                String::from_utf8_lossy(&string.clone().into_inner()).into_owned()
            }
        };
        let delimiter = QuotedChar::try_from(DELIMITER).ok();
        if pattern.is_empty() {
            // The hierarchy delimiter and root (RFC 3501 §6.3.8).
            let item = Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter,
                mailbox: ImapMailbox::try_from("").unwrap_or(ImapMailbox::Inbox),
            };
            wire.data(if subscribed_only { lsub(item) } else { item });
            return Reply::ok("LIST completed");
        }
        let full = format!("{reference}{pattern}");
        if full.len() > MAX_PATTERN {
            return Reply::bad("Pattern too long");
        }
        let mailboxes = match self.service.store.mailboxes(account_id).await {
            Ok(mailboxes) => mailboxes,
            Err(err) => return err.into(),
        };
        for mailbox in &mailboxes {
            let matched = if mailbox.name == "INBOX" {
                wildcard_match(full.to_ascii_uppercase().as_bytes(), b"INBOX")
            } else {
                wildcard_match(full.as_bytes(), mailbox.name.as_bytes())
            };
            if !matched || (subscribed_only && !mailbox.subscribed) {
                continue;
            }
            let mut items = Vec::new();
            let children = format!("{}{DELIMITER}", mailbox.name);
            let attribute = |name: &str| {
                imap_next::imap_types::core::Atom::try_from(name.to_owned())
                    .ok()
                    .map(FlagNameAttribute::from)
            };
            let has_children = mailboxes.iter().any(|m| m.name.starts_with(&children));
            items.extend(attribute(if has_children {
                "HasChildren"
            } else {
                "HasNoChildren"
            }));
            if let Some(special) = &mailbox.special_use {
                items.extend(attribute(special.trim_start_matches('\\')));
            }
            let item = Data::List {
                items,
                delimiter,
                mailbox: imap_mailbox(&mailbox.name),
            };
            wire.data(if subscribed_only { lsub(item) } else { item });
        }
        Reply::ok(if subscribed_only {
            "LSUB completed"
        } else {
            "LIST completed"
        })
    }

    async fn status(
        &mut self,
        wire: &mut Wire,
        account_id: i64,
        mailbox: &ImapMailbox<'_>,
        names: &[StatusDataItemName],
    ) -> Reply {
        let store = &self.service.store;
        let mailbox = match store.mailbox(account_id, &mailbox_name(mailbox)).await {
            Ok(Some(mailbox)) => mailbox,
            Ok(None) => return Reply::no("No such mailbox").code(nonexistent()),
            Err(err) => return err.into(),
        };
        let entries = match store.entries(mailbox.id).await {
            Ok(entries) => entries,
            Err(err) => return err.into(),
        };
        let count = |flag: &str| {
            entries
                .iter()
                .filter(|e| has(&parse_flags(&e.flags), flag))
                .count() as u32
        };
        let mut items = Vec::new();
        for name in names {
            items.push(match name {
                StatusDataItemName::Messages => StatusDataItem::Messages(entries.len() as u32),
                StatusDataItemName::Recent => StatusDataItem::Recent(
                    entries
                        .iter()
                        .filter(|e| e.uid >= mailbox.recent_uid)
                        .count() as u32,
                ),
                StatusDataItemName::UidNext => StatusDataItem::UidNext(nz(mailbox.uidnext)),
                StatusDataItemName::UidValidity => {
                    StatusDataItem::UidValidity(nz(mailbox.uidvalidity))
                }
                StatusDataItemName::Unseen => {
                    StatusDataItem::Unseen(entries.len() as u32 - count("\\Seen"))
                }
                StatusDataItemName::Deleted => StatusDataItem::Deleted(count("\\Deleted")),
                _ => continue,
            });
        }
        wire.data(Data::Status {
            mailbox: imap_mailbox(&mailbox.name),
            items: Cow::Owned(items),
        });
        Reply::ok("STATUS completed")
    }

    async fn append(
        &mut self,
        account_id: i64,
        name: &str,
        flags: &[Flag<'_>],
        date: Option<i64>,
        bytes: &[u8],
    ) -> Reply {
        let store = &self.service.store;
        let mailbox = match store.mailbox(account_id, name).await {
            Ok(Some(mailbox)) => mailbox,
            Ok(None) => return Reply::no("No such mailbox").code(Code::TryCreate),
            Err(err) => return err.into(),
        };
        if bytes.is_empty() {
            return Reply::no("An empty message cannot be appended");
        }
        if flags.iter().any(|f| matches!(f, Flag::Extension(_))) {
            return Reply::bad("Only system flags and keywords can be set");
        }
        let mut list: Vec<String> = Vec::new();
        for flag in flags {
            let flag = flag.to_string();
            if !has(&list, &flag) {
                list.push(flag);
            }
        }
        let metadata = crate::message::metadata(bytes);
        let internal_date = date.unwrap_or_else(crate::store::now);
        match store
            .append(
                mailbox.id,
                bytes,
                &flag_string(&list),
                internal_date,
                &metadata,
            )
            .await
        {
            Ok(uid) => Reply::ok("APPEND completed").code(Code::AppendUid {
                uid_validity: nz(mailbox.uidvalidity),
                uid: nz(uid),
            }),
            Err(err) => err.into(),
        }
    }

    async fn expunge(&mut self, wire: &mut Wire, only: Option<&SequenceSet>) -> Reply {
        let Some(selected) = self.selected.as_mut() else {
            return Reply::bad("No mailbox selected");
        };
        if selected.read_only {
            return Reply::no("The mailbox is read-only");
        }
        let last = selected.last_uid();
        // Every message in range: the store removes those \Deleted now.
        let candidates: Vec<u32> = selected
            .view
            .iter()
            .filter(|e| only.is_none_or(|set| sequence::contains(set, e.uid, last)))
            .map(|e| e.uid)
            .collect();
        let removed = match self
            .service
            .store
            .expunge_deleted(selected.mailbox.id, &candidates)
            .await
        {
            Ok(removed) => removed,
            Err(err) => return err.into(),
        };
        remove_from_view(wire, selected, &removed);
        Reply::ok("EXPUNGE completed")
    }

    async fn search(&mut self, wire: &mut Wire, key: SearchKey<'static>, uid: bool) -> Reply {
        let Some(selected) = self.selected.as_ref() else {
            return Reply::bad("No mailbox selected");
        };
        let store = &self.service.store;
        let bounds = search::Bounds {
            last_seq: selected.view.len() as u32,
            last_uid: selected.last_uid(),
        };
        let with_bytes = search::needs_bytes(&key);
        let bytes = if with_bytes { Bytes::All } else { Bytes::None };
        let mut found = Vec::new();
        let targets: Vec<(u32, usize)> = (0..selected.view.len())
            .map(|index| (index as u32 + 1, index))
            .collect();
        for (from, to) in batches(&selected.view, &targets, with_bytes) {
            let batch = &targets[from..to];
            let uids: Vec<u32> = batch.iter().map(|(_, i)| selected.view[*i].uid).collect();
            let summaries = match store.summaries(selected.mailbox.id, &uids, bytes).await {
                Ok(summaries) => summaries,
                Err(err) => return err.into(),
            };
            let summaries: HashMap<u32, _> = summaries.into_iter().map(|s| (s.uid, s)).collect();
            for &(seq, index) in batch {
                let entry = &selected.view[index];
                let Some(summary) = summaries.get(&entry.uid) else {
                    continue;
                };
                let candidate = search::Candidate::new(
                    seq,
                    entry.uid,
                    &entry.flags,
                    selected.recent(entry.uid),
                    summary,
                );
                if search::matches(&key, &candidate, bounds) {
                    found.push(nz(if uid { entry.uid } else { seq }));
                }
            }
        }
        wire.data(Data::Search(found));
        Reply::ok("SEARCH completed")
    }

    async fn fetch(
        &mut self,
        wire: &mut Wire,
        set: &SequenceSet,
        mut names: Vec<MessageDataItemName<'static>>,
        uid: bool,
    ) -> std::io::Result<Reply> {
        let Some(selected) = self.selected.as_mut() else {
            return Ok(Reply::bad("No mailbox selected"));
        };
        if fetch::unsupported(&names) {
            return Ok(Reply::bad("BINARY is not supported"));
        }
        let store = &self.service.store;
        let marks_seen = fetch::sets_seen(&names) && !selected.read_only;
        if marks_seen && !names.contains(&MessageDataItemName::Flags) {
            names.push(MessageDataItemName::Flags);
        }
        let bytes = if !fetch::needs_bytes(&names) {
            Bytes::None
        } else if fetch::header_only(&names) {
            Bytes::Head(HEAD_BYTES)
        } else {
            Bytes::All
        };
        let targets = selected.resolve(set, uid);
        for (from, to) in batches(&selected.view, &targets, bytes == Bytes::All) {
            let batch = &targets[from..to];
            let uids: Vec<u32> = batch.iter().map(|(_, i)| selected.view[*i].uid).collect();
            let summaries = match store.summaries(selected.mailbox.id, &uids, bytes).await {
                Ok(summaries) => summaries,
                Err(err) => return Ok(err.into()),
            };
            let mut summaries: HashMap<u32, _> =
                summaries.into_iter().map(|s| (s.uid, s)).collect();
            if bytes != Bytes::All && bytes != Bytes::None {
                // Headers longer than the first bytes read: those messages whole.
                let longer: Vec<u32> = summaries
                    .values()
                    .filter(|s| {
                        let raw = s.raw.as_deref().unwrap_or_default();
                        raw.len() < s.size as usize && !structure::has_header_end(raw)
                    })
                    .map(|s| s.uid)
                    .collect();
                if !longer.is_empty() {
                    match store
                        .summaries(selected.mailbox.id, &longer, Bytes::All)
                        .await
                    {
                        Ok(whole) => summaries.extend(whole.into_iter().map(|s| (s.uid, s))),
                        Err(err) => return Ok(err.into()),
                    }
                }
            }
            if marks_seen {
                // \Seen first, in the store, so the FLAGS sent below are what is stored.
                let unseen: Vec<u32> = batch
                    .iter()
                    .map(|(_, index)| &selected.view[*index])
                    .filter(|e| !has(&parse_flags(&e.flags), "\\Seen"))
                    .map(|e| e.uid)
                    .collect();
                let seen = FlagChange::Add(vec!["\\Seen".to_owned()]);
                match store
                    .change_flags(selected.mailbox.id, &unseen, &seen)
                    .await
                {
                    Ok(updated) => {
                        let updated: HashMap<u32, String> = updated.into_iter().collect();
                        for &(_, index) in batch {
                            if let Some(flags) = updated.get(&selected.view[index].uid) {
                                selected.view[index].flags.clone_from(flags);
                            }
                        }
                    }
                    Err(err) => return Ok(err.into()),
                }
            }
            for &(seq, index) in batch {
                let entry = &mut selected.view[index];
                // Expunged by another session since: nothing to send (RFC 3501 allows this).
                let Some(summary) = summaries.get(&entry.uid) else {
                    continue;
                };
                let message = fetch::Message {
                    uid: entry.uid,
                    flags: &entry.flags,
                    recent: entry.uid >= selected.recent_from,
                    summary,
                    raw: summary.raw.as_deref(),
                };
                if let Some(items) = fetch::items(&names, &message, uid) {
                    wire.data(Data::Fetch {
                        seq: nz(seq),
                        items,
                    });
                }
            }
            // Out before the next batch is read: a FETCH of a whole mailbox is never held in
            // memory at once.
            wire.drain().await?;
        }
        Ok(Reply::ok("FETCH completed"))
    }

    async fn store(
        &mut self,
        wire: &mut Wire,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
    ) -> Reply {
        let Some(selected) = self.selected.as_mut() else {
            return Reply::bad("No mailbox selected");
        };
        if selected.read_only {
            return Reply::no("The mailbox is read-only");
        }
        if flags.iter().any(|f| matches!(f, Flag::Extension(_))) {
            // \Recent and unknown \Words are the server's (RFC 3501 §2.3.2).
            return Reply::bad("Only system flags and keywords can be stored");
        }
        let given: Vec<String> = flags.iter().map(ToString::to_string).collect();
        let change = match kind {
            StoreType::Replace => FlagChange::Replace(given),
            StoreType::Add => FlagChange::Add(given),
            StoreType::Remove => FlagChange::Remove(given),
        };
        let targets = selected.resolve(set, uid);
        let uids: Vec<u32> = targets.iter().map(|(_, i)| selected.view[*i].uid).collect();
        // Applied to the flags as they are in the store, not as this session last saw them.
        let updated = match self
            .service
            .store
            .change_flags(selected.mailbox.id, &uids, &change)
            .await
        {
            Ok(updated) => updated,
            Err(err) => return err.into(),
        };
        let updated: HashMap<u32, String> = updated.into_iter().collect();
        let targets: Vec<(u32, usize)> = targets
            .into_iter()
            .filter(|(_, index)| updated.contains_key(&selected.view[*index].uid))
            .collect();
        for &(_, index) in &targets {
            if let Some(flags) = updated.get(&selected.view[index].uid) {
                selected.view[index].flags.clone_from(flags);
            }
        }
        if response == StoreResponse::Answer {
            for &(seq, index) in &targets {
                let entry = &selected.view[index];
                let mut items = vec![imap_next::imap_types::fetch::MessageDataItem::Flags(
                    fetch::flags(&entry.flags, entry.uid >= selected.recent_from),
                )];
                if uid {
                    items.push(imap_next::imap_types::fetch::MessageDataItem::Uid(nz(
                        entry.uid,
                    )));
                }
                if let Ok(items) = Vec1::try_from(items) {
                    wire.data(Data::Fetch {
                        seq: nz(seq),
                        items,
                    });
                }
            }
        }
        Reply::ok("STORE completed")
    }

    async fn copy(
        &mut self,
        wire: &mut Wire,
        account_id: i64,
        set: &SequenceSet,
        target: &ImapMailbox<'_>,
        uid: bool,
        is_move: bool,
    ) -> Reply {
        let store = &self.service.store;
        let target = match store.mailbox(account_id, &mailbox_name(target)).await {
            Ok(Some(mailbox)) => mailbox,
            Ok(None) => return Reply::no("No such mailbox").code(Code::TryCreate),
            Err(err) => return err.into(),
        };
        let Some(selected) = self.selected.as_mut() else {
            return Reply::bad("No mailbox selected");
        };
        if is_move && selected.read_only {
            return Reply::no("The mailbox is read-only");
        }
        let uids: Vec<u32> = selected
            .resolve(set, uid)
            .iter()
            .map(|(_, index)| selected.view[*index].uid)
            .collect();
        let (pairs, uidvalidity) = match store
            .copy_messages(selected.mailbox.id, &uids, target.id, is_move)
            .await
        {
            Ok(done) => done,
            Err(err) => return err.into(),
        };
        let done = if is_move {
            "MOVE completed"
        } else {
            "COPY completed"
        };
        let sources: Vec<u32> = pairs.iter().map(|(from, _)| *from).collect();
        let destinations: Vec<u32> = pairs.iter().map(|(_, to)| *to).collect();
        let code = match (
            sequence::uid_set(&sources),
            sequence::uid_set(&destinations),
        ) {
            (Some(source), Some(destination)) => Some(Code::CopyUid {
                uid_validity: nz(uidvalidity),
                source,
                destination,
            }),
            _ => None,
        };
        if !is_move {
            return match code {
                Some(code) => Reply::ok(done).code(code),
                None => Reply::ok(done),
            };
        }
        // RFC 6851: COPYUID in an untagged OK before the EXPUNGEs.
        if let Some(code) = code {
            wire.status(status(None, StatusKind::Ok, Some(code), "Moved"));
        }
        remove_from_view(wire, selected, &sources);
        Reply::ok(done)
    }
}

/// Drops `uids` from the view, with an EXPUNGE for each, highest number first (so the numbers
/// still to send do not move).
fn remove_from_view(wire: &mut Wire, selected: &mut Selected, uids: &[u32]) {
    let gone: std::collections::HashSet<u32> = uids.iter().copied().collect();
    for index in (0..selected.view.len()).rev() {
        if gone.contains(&selected.view[index].uid) {
            wire.data(Data::Expunge(nz(index as u32 + 1)));
        }
    }
    selected.view.retain(|entry| !gone.contains(&entry.uid));
}

fn lsub(list: Data<'static>) -> Data<'static> {
    match list {
        Data::List {
            items,
            delimiter,
            mailbox,
        } => Data::Lsub {
            items,
            delimiter,
            mailbox,
        },
        other => other,
    }
}

fn valid_new_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("Mailbox names are 1 to 255 bytes");
    }
    if name.eq_ignore_ascii_case("INBOX") {
        return Err("INBOX already exists");
    }
    if name.contains(['*', '%']) || name.contains("//") || name.starts_with(DELIMITER) {
        return Err("That mailbox name is not allowed");
    }
    Ok(())
}

/// A response code from RFC 5530 (fixed text from this file).
fn other_code(name: &'static str) -> Code<'static> {
    Code::Other(imap_next::imap_types::response::CodeOther::unvalidated(
        name.as_bytes(),
    ))
}

fn authentication_failed() -> Code<'static> {
    other_code("AUTHENTICATIONFAILED")
}
fn unavailable() -> Code<'static> {
    other_code("UNAVAILABLE")
}
fn privacy_required() -> Code<'static> {
    other_code("PRIVACYREQUIRED")
}
fn nonexistent() -> Code<'static> {
    other_code("NONEXISTENT")
}
fn already_exists() -> Code<'static> {
    other_code("ALREADYEXISTS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_wildcards() {
        assert!(wildcard_match(b"*", b"a/b/c"));
        assert!(wildcard_match(b"%", b"Sent"));
        assert!(!wildcard_match(b"%", b"a/b"));
        assert!(wildcard_match(b"a/%", b"a/b"));
        assert!(!wildcard_match(b"a/%", b"a/b/c"));
        assert!(wildcard_match(b"a*c", b"a/b/c"));
        assert!(wildcard_match(b"Se%", b"Sent"));
        assert!(!wildcard_match(b"Tr", b"Trash"));
        assert!(wildcard_match(b"%/%", b"a/b"));
        assert!(!wildcard_match(b"%/%", b"a/b/c"));
        assert!(wildcard_match(b"", b""));
        assert!(!wildcard_match(b"", b"a"));
        // Hundreds of wildcards cost pattern × name steps, not an explosion.
        let pattern = [b"*".repeat(500), b"X".to_vec()].concat();
        assert!(!wildcard_match(&pattern, &b"a".repeat(200)));
    }

    #[test]
    fn new_names_are_checked() {
        assert!(valid_new_name("Work/2026").is_ok());
        assert!(valid_new_name("inbox").is_err());
        assert!(valid_new_name("a//b").is_err());
        assert!(valid_new_name("a*").is_err());
        assert!(valid_new_name("").is_err());
    }
}
