//! Mailboxes and the messages in them, as IMAP, POP3 and the web inbox see them: listing,
//! creating, renaming and deleting mailboxes; flags, copies, moves, appends and expunges.
//!
//! Every change bumps the mailbox's `modseq` (new mail bumps `uidnext`), so a session can
//! tell cheaply whether it has anything to catch up on, and wakes the sessions waiting in
//! [`Store::changes`]. Each change is one transaction that starts by writing the mailbox row:
//! SQLite takes its write lock first (waiting on `busy_timeout`), and PostgreSQL locks the row,
//! so that concurrent sessions and servers take UIDs one after the other.

use sqlx::{AnyConnection, Row as _};

use super::{Metadata, Store, StoreError, now};

/// A mailbox of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub id: i64,
    pub name: String,
    /// `\Sent`, `\Trash`, … (RFC 6154).
    pub special_use: Option<String>,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub subscribed: bool,
    /// Messages from this UID on have not been seen by any session yet (\Recent).
    pub recent_uid: u32,
}

/// A message's place in its mailbox: what a session keeps of each message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uid: u32,
    /// Space-separated, as IMAP writes them (`\Seen \Flagged $label`).
    pub flags: String,
    /// Bytes, to size the batches FETCH and SEARCH read.
    pub size: u32,
}

/// What is known of a message without reading its bytes.
#[derive(Debug, Clone)]
pub struct Summary {
    pub uid: u32,
    pub internal_date: i64,
    pub size: u32,
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub date: Option<i64>,
    pub has_attachments: bool,
    /// The message's bytes, when asked for.
    pub raw: Option<Vec<u8>>,
}

/// How much of a message's bytes to read with its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bytes {
    None,
    All,
    /// The first bytes only: enough for the header of most messages.
    Head(u32),
}

/// How far a mailbox has changed: new mail moves `uidnext`, anything else `modseq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub uidnext: u32,
    pub modseq: i64,
}

/// Rows per query when a command names many messages.
const CHUNK: usize = 500;

fn mailbox_from_row(row: &sqlx::any::AnyRow) -> Mailbox {
    Mailbox {
        id: row.get(0),
        name: row.get(1),
        special_use: row.get(2),
        uidvalidity: clamp_u32(row.get(3)),
        uidnext: clamp_u32(row.get(4)),
        subscribed: row.get::<i64, _>(5) != 0,
        recent_uid: clamp_u32(row.get(6)),
    }
}

fn clamp_u32(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

/// `$first, $first+1, …` for `count` parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const MAILBOX_COLUMNS: &str = "id, name, special_use, uidvalidity, uidnext, subscribed, recent_uid";

impl Store {
    /// The id of the account `address`.
    pub async fn account_id(&self, address: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query("SELECT id FROM accounts WHERE address = $1")
            .bind(address.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.get(0)))
    }

    /// The account's mailboxes, by name.
    pub async fn mailboxes(&self, account_id: i64) -> Result<Vec<Mailbox>, StoreError> {
        let sql =
            format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(mailbox_from_row).collect())
    }

    /// The account's mailbox `name` (`INBOX` in any case).
    pub async fn mailbox(
        &self,
        account_id: i64,
        name: &str,
    ) -> Result<Option<Mailbox>, StoreError> {
        let sql =
            format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 AND name = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account_id)
            .bind(canonical_name(name))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(mailbox_from_row))
    }

    /// Creates the mailbox `name`; `false` if it exists.
    pub async fn create_mailbox(&self, account_id: i64, name: &str) -> Result<bool, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let uidvalidity = next_uidvalidity(&mut connection, account_id).await?;
        let created = sqlx::query(
            "INSERT INTO mailboxes (account_id, name, uidvalidity) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(canonical_name(name))
        .bind(uidvalidity)
        .execute(&mut *connection)
        .await?;
        self.changed();
        Ok(created.rows_affected() == 1)
    }

    /// Deletes a mailbox and its messages; `false` if there was none.
    pub async fn delete_mailbox(&self, account_id: i64, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "UPDATE mailboxes SET modseq = modseq + 1 WHERE account_id = $1 AND name = $2
             RETURNING id",
        )
        .bind(account_id)
        .bind(canonical_name(name))
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        let id: i64 = row.get(0);
        let bodies: Vec<i64> =
            sqlx::query("SELECT DISTINCT body_id FROM messages WHERE mailbox_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
        sqlx::query("DELETE FROM messages WHERE mailbox_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM mailboxes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        delete_orphan_bodies(&mut tx, &bodies).await?;
        tx.commit().await?;
        self.changed();
        Ok(true)
    }

    /// Renames a mailbox and those below it (`from/…`). Renaming INBOX moves its messages to
    /// a new mailbox and leaves INBOX empty (RFC 3501 §6.3.5).
    pub async fn rename_mailbox(
        &self,
        account_id: i64,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        let (from, to) = (canonical_name(from), canonical_name(to));
        let mut tx = self.pool.begin().await?;
        let source = sqlx::query(
            "UPDATE mailboxes SET modseq = modseq + 1 WHERE account_id = $1 AND name = $2
             RETURNING id, uidnext",
        )
        .bind(account_id)
        .bind(&from)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("no mailbox {from}")))?;
        let taken = sqlx::query("SELECT 1 FROM mailboxes WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(&to)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::Invalid(format!("{to} already exists")));
        }
        if from == "INBOX" {
            let (inbox, uidnext): (i64, i64) = (source.get(0), source.get(1));
            let new_id: i64 = sqlx::query(
                "INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext)
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(account_id)
            .bind(&to)
            .bind(next_uidvalidity(&mut tx, account_id).await?)
            .bind(uidnext)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
            sqlx::query("UPDATE messages SET mailbox_id = $1 WHERE mailbox_id = $2")
                .bind(new_id)
                .bind(inbox)
                .execute(&mut *tx)
                .await?;
        } else {
            // The account's mailboxes are few: filtered here rather than with LIKE, whose
            // escaping differs between SQLite and PostgreSQL.
            let all = sqlx::query("SELECT id, name FROM mailboxes WHERE account_id = $1")
                .bind(account_id)
                .fetch_all(&mut *tx)
                .await?;
            let mut uidvalidity = next_uidvalidity(&mut tx, account_id).await?;
            for row in all {
                let (id, name): (i64, String) = (row.get(0), row.get(1));
                if name != from && !name.starts_with(&format!("{from}/")) {
                    continue;
                }
                let renamed = format!("{to}{}", &name[from.len()..]);
                sqlx::query("UPDATE mailboxes SET name = $1, uidvalidity = $2 WHERE id = $3")
                    .bind(renamed)
                    .bind(uidvalidity)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                uidvalidity += 1;
            }
        }
        tx.commit().await?;
        self.changed();
        Ok(())
    }

    /// Marks a mailbox subscribed or not; `false` if there is no such mailbox.
    pub async fn subscribe(
        &self,
        account_id: i64,
        name: &str,
        subscribed: bool,
    ) -> Result<bool, StoreError> {
        let updated =
            sqlx::query("UPDATE mailboxes SET subscribed = $1 WHERE account_id = $2 AND name = $3")
                .bind(i64::from(subscribed))
                .bind(account_id)
                .bind(canonical_name(name))
                .execute(&self.pool)
                .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// The mailbox's version, to tell whether a session has anything to catch up on.
    pub async fn version(&self, mailbox_id: i64) -> Result<Option<Version>, StoreError> {
        Ok(
            sqlx::query("SELECT uidnext, modseq FROM mailboxes WHERE id = $1")
                .bind(mailbox_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| Version {
                    uidnext: clamp_u32(row.get(0)),
                    modseq: row.get(1),
                }),
        )
    }

    /// Every message of the mailbox with its flags, by UID.
    pub async fn entries(&self, mailbox_id: i64) -> Result<Vec<Entry>, StoreError> {
        let rows =
            sqlx::query("SELECT uid, flags, size FROM messages WHERE mailbox_id = $1 ORDER BY uid")
                .bind(mailbox_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|row| Entry {
                uid: clamp_u32(row.get(0)),
                flags: row.get(1),
                size: clamp_u32(row.get(2)),
            })
            .collect())
    }

    /// The messages with these UIDs that are still there, with as much of their bytes as
    /// `bytes` asks (one query for both: FETCH and SEARCH ask for many messages, one at a time).
    pub async fn summaries(
        &self,
        mailbox_id: i64,
        uids: &[u32],
        bytes: Bytes,
    ) -> Result<Vec<Summary>, StoreError> {
        let mut found = Vec::with_capacity(uids.len());
        let raw = match bytes {
            Bytes::None => String::new(),
            Bytes::All => ", b.raw".to_owned(),
            // substr on a BLOB / bytea counts bytes in both dialects.
            Bytes::Head(length) => format!(", substr(b.raw, 1, {length})"),
        };
        let join = if bytes == Bytes::None {
            ""
        } else {
            "JOIN bodies b ON b.id = m.body_id"
        };
        for chunk in uids.chunks(CHUNK) {
            let sql = format!(
                "SELECT m.uid, m.internal_date, m.size, m.from_addr, m.to_addrs, m.subject, m.date,
                    m.has_attachments{raw}
                 FROM messages m {join} WHERE m.mailbox_id = $1 AND m.uid IN ({}) ORDER BY m.uid",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id);
            for uid in chunk {
                query = query.bind(i64::from(*uid));
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push(Summary {
                    uid: clamp_u32(row.get(0)),
                    internal_date: row.get(1),
                    size: clamp_u32(row.get(2)),
                    from: row.get(3),
                    to: row.get(4),
                    subject: row.get(5),
                    date: row.get(6),
                    has_attachments: row.get::<i64, _>(7) != 0,
                    raw: (bytes != Bytes::None).then(|| row.get(8)),
                });
            }
        }
        Ok(found)
    }

    /// The bytes of the messages with these UIDs (at most [`CHUNK`] at a time is the caller's
    /// business: all of them are held at once).
    pub async fn raw_messages(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let mut found = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(CHUNK) {
            let sql = format!(
                "SELECT m.uid, b.raw FROM messages m JOIN bodies b ON b.id = m.body_id
                 WHERE m.mailbox_id = $1 AND m.uid IN ({}) ORDER BY m.uid",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id);
            for uid in chunk {
                query = query.bind(i64::from(*uid));
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push((clamp_u32(row.get(0)), row.get(1)));
            }
        }
        Ok(found)
    }

    /// Applies `change` to the flags the messages have now, in one transaction, so that what
    /// another session changed meanwhile is kept; returns the new flags of those still there.
    pub async fn change_flags(
        &self,
        mailbox_id: i64,
        uids: &[u32],
        change: &FlagChange,
    ) -> Result<Vec<(u32, String)>, StoreError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // The mailbox row first: writers to one mailbox take turns (see the module's comment).
        bump(&mut tx, mailbox_id).await?;
        let mut updated = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(CHUNK) {
            let sql = format!(
                "SELECT uid, flags FROM messages WHERE mailbox_id = $1 AND uid IN ({}) ORDER BY uid",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id);
            for uid in chunk {
                query = query.bind(i64::from(*uid));
            }
            for row in query.fetch_all(&mut *tx).await? {
                let (uid, current): (i64, String) = (row.get(0), row.get(1));
                let new = change.apply(&current);
                if new != current {
                    sqlx::query(
                        "UPDATE messages SET flags = $1 WHERE mailbox_id = $2 AND uid = $3",
                    )
                    .bind(&new)
                    .bind(mailbox_id)
                    .bind(uid)
                    .execute(&mut *tx)
                    .await?;
                }
                updated.push((clamp_u32(uid), new));
            }
        }
        tx.commit().await?;
        self.changed();
        Ok(updated)
    }

    /// Of these messages, removes those flagged \Deleted now (not as a session last saw
    /// them: another may have undeleted one); returns their UIDs.
    pub async fn expunge_deleted(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<Vec<u32>, StoreError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        bump(&mut tx, mailbox_id).await?;
        let mut removed = Vec::new();
        let mut bodies = Vec::new();
        for chunk in uids.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM messages WHERE mailbox_id = $1 AND uid IN ({})
                   AND flags LIKE '%\\Deleted%' ESCAPE '!'
                 RETURNING uid, body_id",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id);
            for uid in chunk {
                query = query.bind(i64::from(*uid));
            }
            for row in query.fetch_all(&mut *tx).await? {
                removed.push(clamp_u32(row.get(0)));
                bodies.push(row.get::<i64, _>(1));
            }
        }
        delete_orphan_bodies(&mut tx, &bodies).await?;
        tx.commit().await?;
        self.changed();
        removed.sort_unstable();
        Ok(removed)
    }

    /// Removes messages for good.
    pub async fn expunge(&self, mailbox_id: i64, uids: &[u32]) -> Result<(), StoreError> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        bump(&mut tx, mailbox_id).await?;
        let bodies = remove(&mut tx, mailbox_id, uids).await?;
        delete_orphan_bodies(&mut tx, &bodies).await?;
        tx.commit().await?;
        self.changed();
        Ok(())
    }

    /// Copies messages into another mailbox (the bytes are shared, not duplicated); with
    /// `remove`, a move. Returns `(old uid, new uid)` pairs and the target's UIDVALIDITY.
    pub async fn copy_messages(
        &self,
        from: i64,
        uids: &[u32],
        to: i64,
        remove_source: bool,
    ) -> Result<(Vec<(u32, u32)>, u32), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The target's row first: the write lock before any read (see the module's comment).
        bump(&mut tx, to).await?;
        // Existing messages only, in UID order: they get consecutive new UIDs.
        let mut present = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(CHUNK) {
            let sql = format!(
                "SELECT uid FROM messages WHERE mailbox_id = $1 AND uid IN ({}) ORDER BY uid",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(from);
            for uid in chunk {
                query = query.bind(i64::from(*uid));
            }
            for row in query.fetch_all(&mut *tx).await? {
                present.push(clamp_u32(row.get(0)));
            }
        }
        let count = present.len() as i64;
        let target = sqlx::query(
            "UPDATE mailboxes SET uidnext = uidnext + $1, modseq = modseq + 1 WHERE id = $2
             RETURNING uidnext - $1, uidvalidity",
        )
        .bind(count)
        .bind(to)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Invalid("the target mailbox is gone".into()))?;
        let (first, uidvalidity): (i64, i64) = (target.get(0), target.get(1));
        let mut pairs = Vec::with_capacity(present.len());
        for (offset, uid) in present.iter().enumerate() {
            let new_uid = first + offset as i64;
            sqlx::query(
                "INSERT INTO messages (mailbox_id, uid, body_id, flags, internal_date, size,
                    envelope_from, from_addr, to_addrs, subject, date, message_id, has_attachments)
                 SELECT $1, $2, body_id, flags, internal_date, size, envelope_from, from_addr,
                    to_addrs, subject, date, message_id, has_attachments
                 FROM messages WHERE mailbox_id = $3 AND uid = $4",
            )
            .bind(to)
            .bind(new_uid)
            .bind(from)
            .bind(i64::from(*uid))
            .execute(&mut *tx)
            .await?;
            pairs.push((*uid, clamp_u32(new_uid)));
        }
        if remove_source && !present.is_empty() {
            bump(&mut tx, from).await?;
            // The bodies stay: the copies use them.
            remove(&mut tx, from, &present).await?;
        }
        tx.commit().await?;
        self.changed();
        Ok((pairs, clamp_u32(uidvalidity)))
    }

    /// Adds a message to a mailbox (IMAP APPEND); returns its UID. Durable when this returns:
    /// the pool's SQLite connections commit with `synchronous = FULL`.
    pub async fn append(
        &self,
        mailbox_id: i64,
        raw: &[u8],
        flags: &str,
        internal_date: i64,
        metadata: &Metadata,
    ) -> Result<u32, StoreError> {
        let mut tx = self.pool.begin().await?;
        let uid: i64 = sqlx::query(
            "UPDATE mailboxes SET uidnext = uidnext + 1 WHERE id = $1 RETURNING uidnext - 1",
        )
        .bind(mailbox_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Invalid("the mailbox is gone".into()))?
        .get(0);
        let body_id = super::deliver::insert_body(&mut tx, raw).await?;
        super::deliver::insert_message(
            &mut tx,
            super::deliver::NewMessage {
                mailbox_id,
                uid,
                body_id,
                flags,
                internal_date,
                size: raw.len() as i64,
                envelope_from: "",
                metadata,
            },
        )
        .await?;
        tx.commit().await?;
        self.changed();
        Ok(clamp_u32(uid))
    }

    /// The first UID not yet shown as \Recent to a session, moved past the mailbox's
    /// messages: the session that calls this sees those from the returned UID on as \Recent,
    /// later sessions do not (RFC 3501 §2.3.2).
    pub async fn take_recent(&self, mailbox_id: i64) -> Result<u32, StoreError> {
        let Some(row) = sqlx::query("SELECT recent_uid, uidnext FROM mailboxes WHERE id = $1")
            .bind(mailbox_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(u32::MAX);
        };
        let (recent, uidnext): (i64, i64) = (row.get(0), row.get(1));
        if recent >= uidnext {
            return Ok(clamp_u32(uidnext));
        }
        let taken =
            sqlx::query("UPDATE mailboxes SET recent_uid = $1 WHERE id = $2 AND recent_uid = $3")
                .bind(uidnext)
                .bind(mailbox_id)
                .bind(recent)
                .execute(&self.pool)
                .await?;
        // Another session took them first.
        Ok(clamp_u32(if taken.rows_affected() == 1 {
            recent
        } else {
            uidnext
        }))
    }
}

/// A change to messages' flags (IMAP STORE, a read message, the web inbox's read/unread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagChange {
    Add(Vec<String>),
    Remove(Vec<String>),
    Replace(Vec<String>),
}

impl FlagChange {
    /// `current` (space-separated) with the change made; flags compare without case.
    pub fn apply(&self, current: &str) -> String {
        let has = |list: &[String], flag: &str| list.iter().any(|f| f.eq_ignore_ascii_case(flag));
        let mut flags: Vec<String> = current
            .split(' ')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        match self {
            FlagChange::Add(add) => {
                for flag in add {
                    if !has(&flags, flag) {
                        flags.push(flag.clone());
                    }
                }
            }
            FlagChange::Remove(remove) => flags.retain(|f| !has(remove, f)),
            FlagChange::Replace(given) => {
                flags.clear();
                for flag in given {
                    if !has(&flags, flag) {
                        flags.push(flag.clone());
                    }
                }
            }
        }
        flags.join(" ")
    }
}

/// `INBOX` is case-insensitive; other names are kept as given.
pub fn canonical_name(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_owned()
    } else {
        name.to_owned()
    }
}

/// A UIDVALIDITY no mailbox of the account has had: the time, or one more than the last one
/// handed out (kept with the account, as mailboxes come and go), so a mailbox deleted and made
/// again within a second still gets a new one (RFC 3501 §2.3.1.1: UIDs are never reused
/// under one UIDVALIDITY).
pub(super) async fn next_uidvalidity(
    tx: &mut AnyConnection,
    account_id: i64,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "SELECT a.last_uidvalidity, COALESCE((SELECT MAX(m.uidvalidity) FROM mailboxes m
                                               WHERE m.account_id = a.id), 0)
         FROM accounts a WHERE a.id = $1",
    )
    .bind(account_id)
    .fetch_one(&mut *tx)
    .await?;
    let (last, largest): (i64, i64) = (row.get(0), row.get(1));
    let next = now().max(last + 1).max(largest + 1);
    sqlx::query("UPDATE accounts SET last_uidvalidity = $1 WHERE id = $2")
        .bind(next)
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
    Ok(next)
}

async fn bump(tx: &mut AnyConnection, mailbox_id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE mailboxes SET modseq = modseq + 1 WHERE id = $1")
        .bind(mailbox_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Deletes messages; returns the bodies they used.
async fn remove(
    tx: &mut AnyConnection,
    mailbox_id: i64,
    uids: &[u32],
) -> Result<Vec<i64>, StoreError> {
    let mut bodies = Vec::new();
    for chunk in uids.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM messages WHERE mailbox_id = $1 AND uid IN ({}) RETURNING body_id",
            placeholders(2, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id);
        for uid in chunk {
            query = query.bind(i64::from(*uid));
        }
        bodies.extend(
            query
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.get::<i64, _>(0)),
        );
    }
    Ok(bodies)
}

/// Of these bodies, those no message or queue entry refers to any more are deleted.
async fn delete_orphan_bodies(tx: &mut AnyConnection, bodies: &[i64]) -> Result<(), StoreError> {
    for chunk in bodies.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM bodies WHERE id IN ({})
               AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.body_id = bodies.id)
               AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.body_id = bodies.id)",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}
