//! The mail store: accounts, aliases, mailboxes, messages and the outbound queue, through
//! sqlx's `Any` driver: one SQLite file under `data_dir/mail/` (WAL) by default, or a
//! PostgreSQL database (`mail.store = "postgres://…"`) that several mail-servers share. The SQL
//! is written once (`$N` parameters, `ON CONFLICT`, `RETURNING`: both speak them); only the
//! table definitions differ.
//!
//! Writes of received mail go through one writer task that takes every delivery waiting, writes
//! them in one transaction and makes it durable with one fsync of the WAL before any of them is
//! acknowledged: group commit across SMTP sessions, so that a 250 always means "on disk" and a
//! busy server pays one fsync per batch, not per message.

mod accounts;
mod browse;
mod deliver;
mod mailboxes;
mod queue;

use std::path::{Path, PathBuf};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool};
use sqlx::{Connection as _, Executor as _};

pub use accounts::{Account, hash_password, verify_password};
pub use browse::{Filter, Listed};
pub use deliver::{Delivery, Metadata, Target};
pub use mailboxes::{Bytes, Entry, FlagChange, Mailbox, Summary, Version, canonical_name};
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

/// Tables, with `{id}`, `{int}` and `{blob}` for what the dialects write differently.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS accounts (
        id {id},
        address TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        from_config {int} NOT NULL DEFAULT 0,
        created_at {int} NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS aliases (
        address TEXT NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (address, target)
    )",
    "CREATE TABLE IF NOT EXISTS mailboxes (
        id {id},
        account_id {int} NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        special_use TEXT,
        uidvalidity {int} NOT NULL,
        uidnext {int} NOT NULL DEFAULT 1,
        subscribed {int} NOT NULL DEFAULT 1,
        UNIQUE (account_id, name)
    )",
    "CREATE TABLE IF NOT EXISTS bodies (
        id {id},
        raw {blob} NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS messages (
        id {id},
        mailbox_id {int} NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid {int} NOT NULL,
        body_id {int} NOT NULL REFERENCES bodies(id),
        flags TEXT NOT NULL DEFAULT '',
        internal_date {int} NOT NULL,
        size {int} NOT NULL,
        envelope_from TEXT NOT NULL,
        from_addr TEXT,
        to_addrs TEXT,
        subject TEXT,
        date {int},
        message_id TEXT,
        has_attachments {int} NOT NULL DEFAULT 0,
        UNIQUE (mailbox_id, uid)
    )",
    "CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id)",
    "CREATE INDEX IF NOT EXISTS messages_body ON messages (body_id)",
    "CREATE TABLE IF NOT EXISTS queue (
        id {id},
        body_id {int} NOT NULL REFERENCES bodies(id),
        sender TEXT NOT NULL,
        created_at {int} NOT NULL,
        account TEXT
    )",
    "CREATE TABLE IF NOT EXISTS queue_recipients (
        queue_id {int} NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
        recipient TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts {int} NOT NULL DEFAULT 0,
        next_attempt {int} NOT NULL,
        last_error TEXT,
        PRIMARY KEY (queue_id, recipient)
    )",
    "CREATE INDEX IF NOT EXISTS queue_body ON queue (body_id)",
];

/// Columns added after the first release, for stores made before them.
const ADDED_COLUMNS: &[&str] = &[
    "ALTER TABLE queue ADD COLUMN account TEXT",
    "ALTER TABLE mailboxes ADD COLUMN modseq {int} NOT NULL DEFAULT 0",
    "ALTER TABLE mailboxes ADD COLUMN recent_uid {int} NOT NULL DEFAULT 1",
    "ALTER TABLE accounts ADD COLUMN last_uidvalidity {int} NOT NULL DEFAULT 0",
];

/// The store of one mail-server.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    writer: tokio::sync::mpsc::Sender<deliver::Job>,
    /// Counts changes to any mailbox, for sessions waiting to hear of them (IMAP IDLE, the
    /// web inbox's live list).
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// PostgreSQL rather than SQLite (for the few SQL texts that differ).
    postgres: bool,
}

/// Where the store lives.
#[derive(Debug, Clone)]
enum Location {
    /// `dir/mail.db`; its WAL is fsynced by the writer.
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    fn url(&self) -> String {
        match self {
            Location::Sqlite(path) => {
                // A path in a URL: the few characters that would end it are escaped.
                let path = path
                    .display()
                    .to_string()
                    .replace('%', "%25")
                    .replace(' ', "%20")
                    .replace('?', "%3F")
                    .replace('#', "%23");
                format!("sqlite://{path}?mode=rwc")
            }
            Location::Postgres(url) => url.clone(),
        }
    }

    fn table(&self, statement: &str) -> String {
        let (id, int, blob) = match self {
            Location::Sqlite(_) => ("INTEGER PRIMARY KEY", "INTEGER", "BLOB"),
            Location::Postgres(_) => ("BIGSERIAL PRIMARY KEY", "BIGINT", "BYTEA"),
        };
        statement
            .replace("{id}", id)
            .replace("{int}", int)
            .replace("{blob}", blob)
    }
}

/// SQLite settings every connection gets: WAL, foreign keys, waiting for the writer's lock,
/// and each commit fsynced (IMAP's flag changes, moves and appends are acknowledged after it).
/// A new store gets 16 KiB pages (before WAL is set, the only time SQLite takes it): a 100 KiB
/// message is 7 pages to write instead of 26, which took 100 KiB deliveries from about 1,800
/// to 2,000-2,400 a second here; a store made before keeps its page size.
///
/// Temporary files stay in memory (`temp_store`): with 16 KiB pages a delivery's statement
/// journal passed SQLite's in-memory limit, and each message created, unlinked and closed a
/// temporary file.
const SQLITE_SETTINGS: &str = "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; \
    PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
    PRAGMA temp_store = MEMORY;";

/// A COMMIT on PostgreSQL returns once its WAL is flushed, whatever the server's default (a
/// server set to `synchronous_commit = off` would acknowledge mail it can still lose).
const POSTGRES_SETTINGS: &str = "SET synchronous_commit = on";

/// The writer's connection commits without an fsync: it fsyncs the WAL itself once per batch
/// (group commit), before acknowledging any message of it.
const SQLITE_WRITER_SETTINGS: &str = "PRAGMA synchronous = NORMAL;";

async fn connect(location: &Location) -> Result<AnyConnection, StoreError> {
    let mut connection = AnyConnection::connect(&location.url()).await?;
    match location {
        Location::Sqlite(_) => {
            connection.execute(SQLITE_SETTINGS).await?;
            connection.execute(SQLITE_WRITER_SETTINGS).await?;
        }
        Location::Postgres(_) => {
            connection.execute(POSTGRES_SETTINGS).await?;
        }
    }
    Ok(connection)
}

impl Store {
    /// Opens (creating) the SQLite store `dir/mail.db` and starts the writer task.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_backend(dir, &common::config::Backend::new("sqlite")).await
    }

    /// Opens the store `mail.store` names: SQLite under `dir`, or a PostgreSQL URL.
    pub async fn open_backend(
        dir: &Path,
        backend: &common::config::Backend,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let location = if backend.is_sqlite() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            Location::Sqlite(dir.join("mail.db"))
        } else {
            Location::Postgres(backend.expose().to_owned())
        };
        let sqlite = matches!(location, Location::Sqlite(_));
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if sqlite {
                        connection.execute(SQLITE_SETTINGS).await?;
                    } else {
                        connection.execute(POSTGRES_SETTINGS).await?;
                    }
                    Ok(())
                })
            })
            .connect(&location.url())
            .await?;
        for statement in SCHEMA {
            // Fixed text from this file.
            sqlx::query(sqlx::AssertSqlSafe(location.table(statement)))
                .execute(&pool)
                .await?;
        }
        for statement in ADDED_COLUMNS {
            // Fails when the column is there already.
            let _ = sqlx::query(sqlx::AssertSqlSafe(location.table(statement)))
                .execute(&pool)
                .await;
        }
        let wal = match &location {
            Location::Sqlite(path) => Some(PathBuf::from(format!("{}-wal", path.display()))),
            Location::Postgres(_) => None,
        };
        let changes = std::sync::Arc::new(tokio::sync::watch::Sender::new(0));
        let writer = deliver::start_writer(
            connect(&location).await?,
            wal,
            std::sync::Arc::clone(&changes),
        );
        Ok(Self {
            pool,
            writer,
            changes,
            postgres: !sqlite,
        })
    }

    /// A receiver that wakes on every change to a mailbox made through this store.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    pub fn pool(&self) -> &AnyPool {
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
             WHERE a.address = $1 AND x.name = $2
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

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row as _;

    #[tokio::test]
    async fn the_sqlite_store_is_in_wal_mode_with_foreign_keys() {
        // The writer's durability is an fsync of the WAL: the store must be in WAL mode.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).await.expect("store");
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .expect("pragma")
            .get(0);
        assert_eq!(mode, "wal");
        let keys: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(store.pool())
            .await
            .expect("pragma")
            .get(0);
        assert_eq!(keys, 1);
        store
            .put_account("ann@example.test", "$argon2id$x", false)
            .await
            .expect("account");
        store
            .deliver(Delivery {
                raw: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
                envelope_from: "bob@far.test".into(),
                targets: vec![Target::inbox("ann@example.test")],
                metadata: Metadata::default(),
                account: None,
            })
            .await
            .expect("delivered");
        assert!(
            dir.path().join("mail.db-wal").exists(),
            "the WAL the writer fsyncs"
        );
        let messages = store
            .messages("ann@example.test", "INBOX")
            .await
            .expect("read");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].uid, 1);
        store.close().await;
    }

    /// Deliveries that the writer takes as one batch: UIDs in order with no gap or repeat,
    /// each row with its own body, a message for two accounts stored once for both.
    #[tokio::test]
    async fn a_batch_gets_its_uids_in_order_and_each_message_its_body() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).await.expect("store");
        for account in ["ann@example.test", "cy@example.test"] {
            store
                .put_account(account, "$argon2id$x", false)
                .await
                .expect("account");
        }
        let delivery = |n: usize, targets: Vec<Target>| Delivery {
            raw: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes(),
            envelope_from: format!("sender{n}@far.test"),
            targets,
            metadata: Metadata {
                subject: Some(n.to_string()),
                ..Metadata::default()
            },
            account: None,
        };
        let mut sending = Vec::new();
        for n in 0..20 {
            let targets = if n == 7 {
                vec![
                    Target::inbox("ann@example.test"),
                    Target::inbox("cy@example.test"),
                ]
            } else {
                vec![Target::inbox("ann@example.test")]
            };
            let store = store.clone();
            let delivery = delivery(n, targets);
            sending.push(tokio::spawn(async move { store.deliver(delivery).await }));
        }
        for sent in sending {
            sent.await.expect("task").expect("delivered");
        }
        let ann = store
            .messages("ann@example.test", "INBOX")
            .await
            .expect("read");
        assert_eq!(
            ann.iter().map(|m| m.uid).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<i64>>()
        );
        for message in &ann {
            let n = message.subject.as_deref().expect("subject");
            let expected =
                format!("Return-Path: <sender{n}@far.test>\r\nSubject: {n}\r\n\r\nbody {n}\r\n");
            assert_eq!(String::from_utf8_lossy(&message.raw), expected);
        }
        let cy = store
            .messages("cy@example.test", "INBOX")
            .await
            .expect("read");
        assert_eq!(cy.len(), 1);
        assert_eq!(cy[0].uid, 1);
        assert!(String::from_utf8_lossy(&cy[0].raw).contains("body 7"));
        let bodies: i64 = sqlx::query("SELECT count(*) FROM bodies")
            .fetch_one(store.pool())
            .await
            .expect("count")
            .get(0);
        assert_eq!(bodies, 20, "one body for the message sent to two accounts");
        store.close().await;
    }
}
