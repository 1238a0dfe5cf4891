//! The writer task: deliveries from every session, written in batches, each batch made durable
//! before any of its messages is acknowledged (SQLite: one fsync of the WAL; PostgreSQL: its
//! COMMIT, durable with `synchronous_commit` on).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::AnyConnection;
use sqlx::{Connection as _, Row as _};
use tokio::sync::{mpsc, oneshot, watch};

use super::{CAPTURE_MAILBOX, Store, StoreError, now};

/// Where one copy of a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A mailbox of a local account.
    Mailbox { account: String, mailbox: String },
    /// The outbound queue, for a recipient elsewhere.
    Queue { recipient: String },
}

impl Target {
    pub fn inbox(account: &str) -> Self {
        Target::Mailbox {
            account: account.to_owned(),
            mailbox: "INBOX".to_owned(),
        }
    }

    pub fn captured(account: &str) -> Self {
        Target::Mailbox {
            account: account.to_owned(),
            mailbox: CAPTURE_MAILBOX.to_owned(),
        }
    }
}

/// What is indexed of a message for search (from its headers, by mail-parser).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub date: Option<i64>,
    pub message_id: Option<String>,
    pub has_attachments: bool,
}

/// A message to store: its bytes with our `Received` header, the envelope sender, and its
/// targets. Copies in mailboxes also get `Return-Path` (final delivery, RFC 5321 §4.4);
/// queued copies do not.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub raw: Vec<u8>,
    pub envelope_from: String,
    pub targets: Vec<Target>,
    pub metadata: Metadata,
    /// The account that submitted it (none for mail received or generated here).
    pub account: Option<String>,
}

pub(crate) struct Job {
    delivery: Delivery,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Deliveries written in one transaction at most.
const BATCH: usize = 256;
const BATCH_BYTES: usize = 64 * 1024 * 1024;

impl Store {
    /// Stores `delivery`; returns once it is on disk.
    pub async fn deliver(&self, delivery: Delivery) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.writer
            .send(Job { delivery, done })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

pub(crate) fn start_writer(
    connection: AnyConnection,
    wal: Option<PathBuf>,
    changes: Arc<watch::Sender<u64>>,
) -> mpsc::Sender<Job> {
    let (sender, receiver) = mpsc::channel(1024);
    tokio::spawn(writer(connection, wal, receiver, changes));
    sender
}

/// A written message's answer, waiting for the fsync that makes it durable.
type Pending = (
    oneshot::Sender<Result<(), StoreError>>,
    Result<(), StoreError>,
);

/// Writes batches of messages, one transaction each, and hands their answers to the syncer.
/// Writing the next batch overlaps the fsync of the one before (an fsync covers everything
/// written before it began), so neither waits for the other.
async fn writer(
    mut connection: AnyConnection,
    wal: Option<PathBuf>,
    mut jobs: mpsc::Receiver<Job>,
    changes: Arc<watch::Sender<u64>>,
) {
    let poisoned = Arc::new(AtomicBool::new(false));
    let (written, to_sync) = mpsc::channel(64);
    tokio::spawn(syncer(wal, to_sync, changes, Arc::clone(&poisoned)));
    while let Some(first) = jobs.recv().await {
        let mut bytes = first.delivery.raw.len();
        let mut batch = vec![first];
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.delivery.raw.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        if poisoned.load(Ordering::Acquire) {
            for job in batch {
                let _ = job.done.send(Err(StoreError::Poisoned));
            }
            continue;
        }
        let outcomes = write_batch(&mut connection, &batch).await;
        let pending: Vec<Pending> = batch
            .into_iter()
            .zip(outcomes)
            .map(|(job, outcome)| (job.done, outcome))
            .collect();
        if written.send(pending).await.is_err() {
            return;
        }
    }
}

/// Answers written messages once an fsync of the WAL covers them: whatever has been written
/// while the last fsync ran shares the next one. After a failed fsync nothing more is
/// acknowledged (what the kernel failed to write may be gone, and a later fsync would not
/// say so).
async fn syncer(
    wal: Option<PathBuf>,
    mut written: mpsc::Receiver<Vec<Pending>>,
    changes: Arc<watch::Sender<u64>>,
    poisoned: Arc<AtomicBool>,
) {
    while let Some(mut pending) = written.recv().await {
        while let Ok(more) = written.try_recv() {
            pending.extend(more);
        }
        let synced = if poisoned.load(Ordering::Acquire) {
            Err(StoreError::Poisoned)
        } else {
            match &wal {
                Some(wal) => sync(wal).await,
                None => Ok(()),
            }
        };
        match &synced {
            Err(StoreError::Poisoned) => {}
            Err(err) => {
                tracing::error!(error = %err, "fsync of the mail store failed; refusing mail from now on");
                poisoned.store(true, Ordering::Release);
            }
            Ok(()) => changes.send_modify(|count| *count = count.wrapping_add(1)),
        }
        for (done, outcome) in pending {
            let answer = match (&synced, outcome) {
                (Err(_), _) => Err(StoreError::Poisoned),
                (Ok(()), outcome) => outcome,
            };
            let _ = done.send(answer);
        }
    }
}

async fn sync(wal: &Path) -> Result<(), StoreError> {
    let wal = wal.to_path_buf();
    tokio::task::spawn_blocking(move || match std::fs::File::open(&wal) {
        Ok(file) => file
            .sync_data()
            .map_err(|source| StoreError::Io { path: wal, source }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io { path: wal, source }),
    })
    .await
    .map_err(|_| StoreError::WriterGone)?
}

/// The batch in one transaction; if that fails, each delivery alone, so one bad message
/// does not fail the others.
async fn write_batch(connection: &mut AnyConnection, batch: &[Job]) -> Vec<Result<(), StoreError>> {
    let together = async {
        let mut tx = connection.begin().await?;
        let mut uids = take_uids(&mut tx, batch.iter().map(|job| &job.delivery)).await?;
        for job in batch {
            write_one(&mut tx, &job.delivery, &mut uids).await?;
        }
        tx.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    if together.is_ok() {
        return batch.iter().map(|_| Ok(())).collect();
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let alone = async {
            let mut tx = connection.begin().await?;
            let mut uids = take_uids(&mut tx, std::iter::once(&job.delivery)).await?;
            write_one(&mut tx, &job.delivery, &mut uids).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(err) = &alone {
            tracing::error!(error = %err, "a message could not be stored");
        }
        outcomes.push(alone);
    }
    outcomes
}

pub(super) async fn insert_body(tx: &mut AnyConnection, raw: &[u8]) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("INSERT INTO bodies (raw) VALUES ($1) RETURNING id")
            .bind(raw)
            .fetch_one(&mut *tx)
            .await?
            .get(0),
    )
}

/// UIDs taken for a batch: per (account, mailbox), its id and the next UID to hand out.
type Uids = HashMap<(String, String), (i64, i64)>;

/// Takes the UIDs every delivery of a batch needs, one UPDATE per mailbox (not one per
/// message: each statement is a round trip to sqlx's worker thread).
async fn take_uids<'a>(
    tx: &mut AnyConnection,
    deliveries: impl Iterator<Item = &'a Delivery>,
) -> Result<Uids, StoreError> {
    let mut wanted: Vec<((String, String), i64)> = Vec::new();
    for delivery in deliveries {
        for target in &delivery.targets {
            if let Target::Mailbox { account, mailbox } = target {
                let key = (account.clone(), mailbox.clone());
                match wanted.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, count)) => *count += 1,
                    None => wanted.push((key, 1)),
                }
            }
        }
    }
    let mut uids = Uids::new();
    for ((account, mailbox), count) in wanted {
        let taken = take_uid(tx, &account, &mailbox, count).await?;
        uids.insert((account, mailbox), taken);
    }
    Ok(uids)
}

async fn write_one(
    tx: &mut AnyConnection,
    delivery: &Delivery,
    uids: &mut Uids,
) -> Result<(), StoreError> {
    let sqlite = tx.backend_name() == "SQLite";
    let mut local: Option<(i64, i64)> = None;
    let meta = &delivery.metadata;
    let mut queued: Vec<&str> = Vec::new();
    for target in &delivery.targets {
        let (account, mailbox) = match target {
            Target::Mailbox { account, mailbox } => (account, mailbox),
            Target::Queue { recipient } => {
                queued.push(recipient);
                continue;
            }
        };
        let Some((mailbox_id, next)) = uids.get_mut(&(account.clone(), mailbox.clone())) else {
            return Err(StoreError::Invalid(format!(
                "no UID taken for {account}/{mailbox}"
            )));
        };
        let (mailbox_id, uid) = (*mailbox_id, *next);
        *next += 1;
        let mut message = NewMessage {
            mailbox_id,
            uid,
            body_id: 0,
            flags: "",
            internal_date: now(),
            size: 0,
            envelope_from: &delivery.envelope_from,
            metadata: meta,
        };
        match local {
            Some((body_id, size)) => {
                message.body_id = body_id;
                message.size = size;
                insert_message(tx, message).await?;
            }
            None => {
                let mut raw = format!("Return-Path: <{}>\r\n", delivery.envelope_from).into_bytes();
                raw.extend_from_slice(&delivery.raw);
                message.size = raw.len() as i64;
                let body_id = if sqlite {
                    insert_body_and_message(tx, &raw, message).await?
                } else {
                    let body_id = insert_body(tx, &raw).await?;
                    message.body_id = body_id;
                    insert_message(tx, message).await?;
                    body_id
                };
                local = Some((body_id, raw.len() as i64));
            }
        }
    }
    if !queued.is_empty() {
        let body_id = insert_body(tx, &delivery.raw).await?;
        let queue_id: i64 = sqlx::query(
            "INSERT INTO queue (body_id, sender, created_at, account) VALUES ($1, $2, $3, $4)
             RETURNING id",
        )
        .bind(body_id)
        .bind(&delivery.envelope_from)
        .bind(now())
        .bind(&delivery.account)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        for recipient in queued {
            sqlx::query(
                "INSERT INTO queue_recipients (queue_id, recipient, next_attempt)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(queue_id)
            .bind(recipient)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// A message row, for delivery and IMAP APPEND alike.
pub(super) struct NewMessage<'a> {
    pub mailbox_id: i64,
    pub uid: i64,
    pub body_id: i64,
    pub flags: &'a str,
    pub internal_date: i64,
    pub size: i64,
    pub envelope_from: &'a str,
    pub metadata: &'a Metadata,
}

/// SQLite: the body and its first message row in one round trip to sqlx's worker thread (two
/// statements in one query; the row takes the body's id from `last_insert_rowid()`). Returns
/// the body's id.
async fn insert_body_and_message(
    tx: &mut AnyConnection,
    raw: &[u8],
    message: NewMessage<'_>,
) -> Result<i64, StoreError> {
    let sql = format!(
        "INSERT INTO bodies (raw) VALUES ($13);
         {MESSAGE_INSERT} last_insert_rowid()) RETURNING body_id"
    );
    let rows = bind_message(sqlx::query(sqlx::AssertSqlSafe(sql)), &message)
        .bind(raw)
        // Not fetch_one: sqlx stops that after the first statement, which returns no row.
        .fetch_all(&mut *tx)
        .await?;
    match rows.first() {
        Some(row) => Ok(row.get(0)),
        None => Err(StoreError::Invalid(
            "the message row was not written".into(),
        )),
    }
}

pub(super) async fn insert_message(
    tx: &mut AnyConnection,
    message: NewMessage<'_>,
) -> Result<(), StoreError> {
    let sql = format!("{MESSAGE_INSERT} $13)");
    bind_message(sqlx::query(sqlx::AssertSqlSafe(sql)), &message)
        .bind(message.body_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A message row's columns as $1 to $12, the body's id last (the caller closes the list).
const MESSAGE_INSERT: &str = "INSERT INTO messages (mailbox_id, uid, flags, internal_date, size,
    envelope_from, from_addr, to_addrs, subject, date, message_id, has_attachments, body_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,";

/// Binds [`MESSAGE_INSERT`]'s $1 to $12.
fn bind_message<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    message: &NewMessage<'q>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let meta = message.metadata;
    query
        .bind(message.mailbox_id)
        .bind(message.uid)
        .bind(message.flags)
        .bind(message.internal_date)
        .bind(message.size)
        .bind(message.envelope_from)
        .bind(meta.from.clone())
        .bind(meta.to.clone())
        .bind(meta.subject.clone())
        .bind(meta.date)
        .bind(meta.message_id.clone())
        .bind(i64::from(meta.has_attachments))
}

/// The mailbox's id and the first of `count` UIDs, taken; a missing mailbox (the capture
/// mailbox) is created first.
async fn take_uid(
    tx: &mut AnyConnection,
    account: &str,
    mailbox: &str,
    count: i64,
) -> Result<(i64, i64), StoreError> {
    let take = || {
        sqlx::query(
            "UPDATE mailboxes SET uidnext = uidnext + $3
             WHERE account_id = (SELECT id FROM accounts WHERE address = $1) AND name = $2
             RETURNING id, uidnext - $3",
        )
        .bind(account)
        .bind(mailbox)
        .bind(count)
    };
    if let Some(row) = take().fetch_optional(&mut *tx).await? {
        return Ok((row.get(0), row.get(1)));
    }
    let Some(account_id) = sqlx::query("SELECT id FROM accounts WHERE address = $1")
        .bind(account)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.get::<i64, _>(0))
    else {
        return Err(StoreError::Invalid(format!("no account {account}")));
    };
    let uidvalidity = super::mailboxes::next_uidvalidity(tx, account_id).await?;
    sqlx::query("INSERT INTO mailboxes (account_id, name, uidvalidity) VALUES ($1, $2, $3)")
        .bind(account_id)
        .bind(mailbox)
        .bind(uidvalidity)
        .execute(&mut *tx)
        .await?;
    let row = take().fetch_one(&mut *tx).await?;
    Ok((row.get(0), row.get(1)))
}
