//! The outbound queue: a message (its body) and, per recipient, its state — `pending` with the
//! time of its next attempt, `delivered`, or `failed` — so that each recipient has its own
//! outcome. An entry goes once no recipient is pending.

use sqlx::Row as _;

use super::{Store, StoreError, now};

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueuedRecipient {
    pub queue_id: i64,
    pub recipient: String,
    pub sender: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt: i64,
    pub created_at: i64,
    pub last_error: Option<String>,
    /// The account that submitted it.
    pub account: Option<String>,
    #[serde(skip)]
    pub body_id: i64,
}

fn recipient(row: &sqlx::any::AnyRow) -> QueuedRecipient {
    QueuedRecipient {
        queue_id: row.get("queue_id"),
        recipient: row.get("recipient"),
        sender: row.get("sender"),
        status: row.get("status"),
        attempts: row.get("attempts"),
        next_attempt: row.get("next_attempt"),
        created_at: row.get("created_at"),
        last_error: row.get("last_error"),
        account: row.get("account"),
        body_id: row.get("body_id"),
    }
}

const SELECT: &str = "SELECT r.queue_id, r.recipient, q.sender, r.status, r.attempts,
    r.next_attempt, q.created_at, r.last_error, q.body_id, q.account
    FROM queue_recipients r JOIN queue q ON q.id = r.queue_id";

impl Store {
    /// Every recipient in the queue (the CLI's and the API's list).
    pub async fn queue(&self) -> Result<Vec<QueuedRecipient>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT} ORDER BY r.queue_id, r.recipient"
        )))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(recipient).collect())
    }

    /// Pending recipients whose next attempt is due.
    pub async fn due(&self, limit: i64) -> Result<Vec<QueuedRecipient>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT} WHERE r.status = 'pending' AND r.next_attempt <= $1
             ORDER BY r.next_attempt LIMIT $2"
        )))
        .bind(now())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(recipient).collect())
    }

    /// When the next pending attempt is due, if any is pending.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query("SELECT min(next_attempt) FROM queue_recipients WHERE status = 'pending'")
                .fetch_one(self.pool())
                .await?
                .get(0),
        )
    }

    pub async fn body(&self, body_id: i64) -> Result<Vec<u8>, StoreError> {
        Ok(sqlx::query("SELECT raw FROM bodies WHERE id = $1")
            .bind(body_id)
            .fetch_one(self.pool())
            .await?
            .get(0))
    }

    /// Records an attempt's outcome: `delivered`, `failed`, or `pending` again at `next`;
    /// `false` when the recipient is no longer queued.
    pub async fn record_attempt(
        &self,
        queue_id: i64,
        recipient: &str,
        status: &str,
        next: i64,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE queue_recipients SET status = $1, attempts = attempts + 1, next_attempt = $2,
                last_error = coalesce($3, last_error)
             WHERE queue_id = $4 AND recipient = $5",
        )
        .bind(status)
        .bind(next)
        .bind(error)
        .bind(queue_id)
        .bind(recipient)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes the entry once nobody in it is pending (its body too, unless a mailbox holds it).
    pub async fn finish(&self, queue_id: i64) -> Result<bool, StoreError> {
        let pending: i64 = sqlx::query(
            "SELECT count(*) FROM queue_recipients WHERE queue_id = $1 AND status = 'pending'",
        )
        .bind(queue_id)
        .fetch_one(self.pool())
        .await?
        .get(0);
        if pending > 0 {
            return Ok(false);
        }
        self.delete_queued(queue_id).await
    }

    /// Deletes a queue entry (all its recipients); `false` if there was none.
    pub async fn delete_queued(&self, queue_id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let body: Option<i64> = sqlx::query("SELECT body_id FROM queue WHERE id = $1")
            .bind(queue_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.get(0));
        let Some(body) = body else {
            return Ok(false);
        };
        sqlx::query("DELETE FROM queue WHERE id = $1")
            .bind(queue_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM bodies WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM messages WHERE body_id = $2)
                AND NOT EXISTS (SELECT 1 FROM queue WHERE body_id = $3)",
        )
        .bind(body)
        .bind(body)
        .bind(body)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Makes the entry's pending recipients due now; `false` if there is no such entry.
    pub async fn retry_now(&self, queue_id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE queue_recipients SET next_attempt = $1 WHERE queue_id = $2 AND status = 'pending'",
        )
        .bind(now())
        .bind(queue_id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
