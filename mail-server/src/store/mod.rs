//! The mail store: accounts, aliases, mailboxes and messages in one SQLite file under
//! `data_dir/mail/` (through sqlx, WAL).
//!
//! Writes of received mail go through one writer task that takes every delivery waiting, writes
//! them in one transaction and makes it durable with one fsync of the WAL before any of them is
//! acknowledged: group commit across SMTP sessions, so that a 250 always means "on disk" and a
//! busy server pays one fsync per batch, not per message.

mod accounts;
mod deliver;
mod queue;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use accounts::{Account, hash_password, verify_password};
pub use deliver::{Delivery, Metadata, Target};
pub use queue::QueuedRecipient;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mail store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("mail store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the mail store's writer has stopped")]
    WriterGone,
    #[error("an earlier fsync of the mail store failed: restart mail-server")]
    Poisoned,
    #[error("{0}")]
    Invalid(String),
}

/// Mailboxes every account has, with their IMAP special-use attribute.
pub const STANDARD_MAILBOXES: [(&str, Option<&str>); 5] = [
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
];

/// Where development and staging keep outbound mail they do not send.
pub const CAPTURE_MAILBOX: &str = "Captured";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS accounts (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        from_config INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS aliases (
        address TEXT NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (address, target)
    )",
    "CREATE TABLE IF NOT EXISTS mailboxes (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        special_use TEXT,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL DEFAULT 1,
        subscribed INTEGER NOT NULL DEFAULT 1,
        UNIQUE (account_id, name)
    )",
    "CREATE TABLE IF NOT EXISTS bodies (
        id INTEGER PRIMARY KEY,
        raw BLOB NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY,
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        body_id INTEGER NOT NULL REFERENCES bodies(id),
        flags TEXT NOT NULL DEFAULT '',
        internal_date INTEGER NOT NULL,
        size INTEGER NOT NULL,
        envelope_from TEXT NOT NULL,
        from_addr TEXT,
        to_addrs TEXT,
        subject TEXT,
        date INTEGER,
        message_id TEXT,
        has_attachments INTEGER NOT NULL DEFAULT 0,
        UNIQUE (mailbox_id, uid)
    )",
    "CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id)",
    "CREATE TABLE IF NOT EXISTS queue (
        id INTEGER PRIMARY KEY,
        body_id INTEGER NOT NULL REFERENCES bodies(id),
        sender TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS queue_recipients (
        queue_id INTEGER NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
        recipient TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        last_error TEXT,
        PRIMARY KEY (queue_id, recipient)
    )",
];

/// The store of one mail-server.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    writer: tokio::sync::mpsc::Sender<deliver::Job>,
}

fn options(path: &Path) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Durability comes from the writer's own fsync of the WAL after each batch.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10)))
}

impl Store {
    /// Opens (creating) `dir/mail.db` and starts the writer task.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("mail.db");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options(&path)?)
            .await?;
        for statement in SCHEMA {
            // Fixed text from this file.
            sqlx::query(sqlx::AssertSqlSafe(*statement))
                .execute(&pool)
                .await?;
        }
        let writer = deliver::start_writer(&path, options(&path)?).await?;
        Ok(Self { pool, writer })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    common::clock::unix_now()
}

/// A message as a mailbox holds it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub uid: i64,
    pub raw: Vec<u8>,
    pub envelope_from: String,
    pub subject: Option<String>,
    pub message_id: Option<String>,
}

impl Store {
    /// The messages of `account`'s `mailbox`, by UID.
    pub async fn messages(
        &self,
        account: &str,
        mailbox: &str,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        use sqlx::Row as _;
        let rows = sqlx::query(
            "SELECT m.uid, b.raw, m.envelope_from, m.subject, m.message_id
             FROM messages m
             JOIN mailboxes x ON x.id = m.mailbox_id
             JOIN accounts a ON a.id = x.account_id
             JOIN bodies b ON b.id = m.body_id
             WHERE a.address = ? AND x.name = ?
             ORDER BY m.uid",
        )
        .bind(account.to_ascii_lowercase())
        .bind(mailbox)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredMessage {
                uid: row.get(0),
                raw: row.get(1),
                envelope_from: row.get(2),
                subject: row.get(3),
                message_id: row.get(4),
            })
            .collect())
    }

    /// Recipients waiting in the outbound queue, with the sender.
    pub async fn queued(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        use sqlx::Row as _;
        let rows = sqlx::query(
            "SELECT q.sender, r.recipient, r.status FROM queue q
             JOIN queue_recipients r ON r.queue_id = q.id ORDER BY q.id, r.recipient",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }
}
