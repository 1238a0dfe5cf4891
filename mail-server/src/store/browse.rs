//! Messages as the web inbox and its JSON API see them: every mailbox at once (or one
//! account's), newest first, filtered by the indexed headers, flags, dates and text.

use sqlx::Row as _;

use super::{Store, StoreError};

/// What to look for; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this account's mailboxes.
    pub account: Option<String>,
    pub mailbox: Option<String>,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub subject: Vec<String>,
    /// Words anywhere: headers or body.
    pub text: Vec<String>,
    /// Received before / on or after (seconds since the epoch).
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub has_attachment: Option<bool>,
    pub unread: Option<bool>,
}

/// A message in a list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub id: i64,
    pub account: String,
    pub mailbox: String,
    pub uid: i64,
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    /// The Date header, seconds since the epoch.
    pub date: Option<i64>,
    /// When it arrived, seconds since the epoch.
    pub received: i64,
    pub size: i64,
    pub flags: String,
    pub seen: bool,
    pub has_attachments: bool,
    pub envelope_from: String,
}

const COLUMNS: &str = "m.id, a.address, x.name, m.uid, m.from_addr, m.to_addrs, m.subject, \
     m.date, m.internal_date, m.size, m.flags, m.has_attachments, m.envelope_from";

const FROM: &str = "FROM messages m JOIN mailboxes x ON x.id = m.mailbox_id \
     JOIN accounts a ON a.id = x.account_id JOIN bodies b ON b.id = m.body_id";

/// `\Seen` among the flags (`!` escapes, so the backslash is literal in both dialects).
const SEEN: &str = "m.flags LIKE '%\\Seen%' ESCAPE '!'";

fn listed(row: &sqlx::any::AnyRow) -> Listed {
    let flags: String = row.get(10);
    Listed {
        id: row.get(0),
        account: row.get(1),
        mailbox: row.get(2),
        uid: row.get(3),
        from: row.get(4),
        to: row.get(5),
        subject: row.get(6),
        date: row.get(7),
        received: row.get(8),
        size: row.get(9),
        seen: flags.split(' ').any(|f| f.eq_ignore_ascii_case("\\Seen")),
        flags,
        has_attachments: row.get::<i64, _>(11) != 0,
        envelope_from: row.get(12),
    }
}

/// A LIKE pattern for `needle` anywhere, lower-cased, its wildcards escaped with `!`.
fn contains(needle: &str) -> String {
    let mut pattern = String::from("%");
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

enum Param {
    Text(String),
    Number(i64),
}

impl Filter {
    fn conditions(&self, postgres: bool) -> (String, Vec<Param>) {
        let mut sql = Vec::new();
        let mut params = Vec::new();
        let add = |params: &mut Vec<Param>, param: Param| {
            params.push(param);
            format!("${}", params.len())
        };
        if let Some(account) = &self.account {
            let p = add(&mut params, Param::Text(account.to_ascii_lowercase()));
            sql.push(format!("a.address = {p}"));
        }
        if let Some(mailbox) = &self.mailbox {
            let p = add(&mut params, Param::Text(super::canonical_name(mailbox)));
            sql.push(format!("x.name = {p}"));
        }
        for (column, terms) in [
            ("m.from_addr", &self.from),
            ("m.to_addrs", &self.to),
            ("m.subject", &self.subject),
        ] {
            for term in terms {
                let p = add(&mut params, Param::Text(contains(term)));
                sql.push(format!("LOWER(COALESCE({column}, '')) LIKE {p} ESCAPE '!'"));
            }
        }
        // The stored bytes as text: SQLite reads the blob as UTF-8; PostgreSQL escapes what
        // is not ASCII, which words typed in a search box still match.
        let body = if postgres {
            "LOWER(encode(b.raw, 'escape'))"
        } else {
            "LOWER(CAST(b.raw AS TEXT))"
        };
        for term in &self.text {
            let p = add(&mut params, Param::Text(contains(term)));
            sql.push(format!(
                "(LOWER(COALESCE(m.subject, '')) LIKE {p} ESCAPE '!' \
                 OR LOWER(COALESCE(m.from_addr, '')) LIKE {p} ESCAPE '!' \
                 OR LOWER(COALESCE(m.to_addrs, '')) LIKE {p} ESCAPE '!' \
                 OR {body} LIKE {p} ESCAPE '!')"
            ));
        }
        if let Some(before) = self.before {
            let p = add(&mut params, Param::Number(before));
            sql.push(format!("m.internal_date < {p}"));
        }
        if let Some(after) = self.after {
            let p = add(&mut params, Param::Number(after));
            sql.push(format!("m.internal_date >= {p}"));
        }
        if let Some(has) = self.has_attachment {
            sql.push(format!("m.has_attachments = {}", i64::from(has)));
        }
        match self.unread {
            Some(true) => sql.push(format!("NOT ({SEEN})")),
            Some(false) => sql.push(SEEN.to_owned()),
            None => {}
        }
        let clause = if sql.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", sql.join(" AND "))
        };
        (clause, params)
    }
}

fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    params: &'q [Param],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for param in params {
        query = match param {
            Param::Text(text) => query.bind(text.as_str()),
            Param::Number(number) => query.bind(*number),
        };
    }
    query
}

impl Store {
    /// One page of the messages `filter` selects, newest first, and how many there are.
    pub async fn browse(
        &self,
        filter: &Filter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Listed>, i64), StoreError> {
        let (clause, params) = filter.conditions(self.postgres);
        let count_sql = format!("SELECT COUNT(*) {FROM} {clause}");
        let total: i64 = bind(sqlx::query(sqlx::AssertSqlSafe(count_sql)), &params)
            .fetch_one(&self.pool)
            .await?
            .get(0);
        let page_sql = format!(
            "SELECT {COLUMNS} {FROM} {clause} ORDER BY m.internal_date DESC, m.id DESC \
             LIMIT {} OFFSET {}",
            limit.clamp(1, 500),
            offset.max(0)
        );
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(page_sql)), &params)
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(listed).collect(), total))
    }

    /// Message `id` with its bytes.
    pub async fn browse_one(&self, id: i64) -> Result<Option<(Listed, Vec<u8>)>, StoreError> {
        let sql = format!("SELECT {COLUMNS}, b.raw {FROM} WHERE m.id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| (listed(&row), row.get(13))))
    }

    /// Marks message `id` read or unread.
    pub async fn set_seen(&self, message: &Listed, seen: bool) -> Result<(), StoreError> {
        let seen_flag = vec!["\\Seen".to_owned()];
        let change = if seen {
            super::FlagChange::Add(seen_flag)
        } else {
            super::FlagChange::Remove(seen_flag)
        };
        let mailbox_id = self.mailbox_of(message.id).await?;
        self.change_flags(
            mailbox_id,
            &[u32::try_from(message.uid).unwrap_or(0)],
            &change,
        )
        .await?;
        Ok(())
    }

    /// Deletes message `id` for good (as IMAP's \Deleted then EXPUNGE would).
    pub async fn delete_message(&self, message: &Listed) -> Result<(), StoreError> {
        let mailbox_id = self.mailbox_of(message.id).await?;
        self.expunge(mailbox_id, &[u32::try_from(message.uid).unwrap_or(0)])
            .await
    }

    /// Moves whenever anything in the account's mailboxes changes (new mail, flags, removals,
    /// mailboxes made or dropped).
    pub async fn account_version(&self, account: &str) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            // PostgreSQL sums BIGINTs into NUMERIC: cast back.
            "SELECT CAST(COALESCE(SUM(x.uidnext + x.modseq), 0) AS BIGINT), COUNT(*) FROM mailboxes x
             JOIN accounts a ON a.id = x.account_id WHERE a.address = $1",
        )
        .bind(account.to_ascii_lowercase())
        .fetch_one(&self.pool)
        .await?;
        Ok((row.get(0), row.get(1)))
    }

    async fn mailbox_of(&self, id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT mailbox_id FROM messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("no message {id}")))?
            .get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Delivery, Metadata, Target};

    #[tokio::test]
    async fn filters_select_and_pages_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).await.expect("store");
        store
            .put_account("ann@example.test", "$argon2id$x", false)
            .await
            .expect("account");
        for (n, (from, subject, attachment)) in [
            ("bob@far.test", "Lunch on Friday", false),
            ("carol@far.test", "Invoice 42%", true),
            ("bob@far.test", "Re: invoice", false),
        ]
        .into_iter()
        .enumerate()
        {
            let raw = format!("From: {from}\r\nSubject: {subject}\r\n\r\nbody number {n}\r\n");
            store
                .deliver(Delivery {
                    raw: raw.into_bytes(),
                    envelope_from: from.into(),
                    targets: vec![Target::inbox("ann@example.test")],
                    metadata: Metadata {
                        from: Some(from.into()),
                        subject: Some(subject.into()),
                        has_attachments: attachment,
                        ..Metadata::default()
                    },
                    account: None,
                })
                .await
                .expect("delivered");
        }
        let find = |filter: Filter| {
            let store = store.clone();
            async move {
                let (found, total) = store.browse(&filter, 0, 50).await.expect("browse");
                assert_eq!(found.len() as i64, total);
                found
                    .into_iter()
                    .map(|m| m.subject.unwrap_or_default())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(find(Filter::default()).await.len(), 3);
        let by_bob = find(Filter {
            from: vec!["BOB".into()],
            ..Filter::default()
        })
        .await;
        assert_eq!(by_bob.len(), 2);
        assert_eq!(
            find(Filter {
                subject: vec!["42%".into()],
                ..Filter::default()
            })
            .await,
            vec!["Invoice 42%"]
        );
        assert_eq!(
            find(Filter {
                text: vec!["number 2".into()],
                ..Filter::default()
            })
            .await,
            vec!["Re: invoice"]
        );
        assert_eq!(
            find(Filter {
                has_attachment: Some(true),
                ..Filter::default()
            })
            .await,
            vec!["Invoice 42%"]
        );
        let (all, _) = store.browse(&Filter::default(), 0, 50).await.expect("all");
        store.set_seen(&all[0], true).await.expect("seen");
        assert_eq!(
            find(Filter {
                unread: Some(true),
                ..Filter::default()
            })
            .await
            .len(),
            2
        );
        let (page, total) = store.browse(&Filter::default(), 1, 1).await.expect("page");
        assert_eq!((page.len(), total), (1, 3));
        store.delete_message(&all[1]).await.expect("deleted");
        assert_eq!(find(Filter::default()).await.len(), 2);
        assert!(store.browse_one(all[1].id).await.expect("read").is_none());
        store.close().await;
    }
}
