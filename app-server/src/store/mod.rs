//! Everything app-server must remember across restarts, in SQLite under `data_dir/app/`
//! (sqlx). Today: apps. Builds, releases, config and formation join as the deploy path lands.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("app {0:?} already exists")]
    Exists(String),
    #[error("no app named {0:?}")]
    NotFound(String),
    #[error("cannot create {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct App {
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
);
";

impl Store {
    /// Opens (creating if needed) `data_dir/app/app.db`. Writes are durable when acknowledged
    /// (WAL with `synchronous=FULL`).
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join("app");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(dir.join("app.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        // One connection: the control API's writes are few; no writer contention to manage.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query(SCHEMA).execute(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn create_app(&self, name: &str) -> Result<App, StoreError> {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let inserted = sqlx::query(
            "INSERT INTO apps (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
        )
        .bind(name)
        .bind(created_at)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Exists(name.to_owned()));
        }
        Ok(App {
            name: name.to_owned(),
            created_at,
        })
    }

    pub async fn list_apps(&self) -> Result<Vec<App>, StoreError> {
        let rows = sqlx::query("SELECT name, created_at FROM apps ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| App {
                name: row.get("name"),
                created_at: row.get("created_at"),
            })
            .collect())
    }

    pub async fn get_app(&self, name: &str) -> Result<App, StoreError> {
        let row = sqlx::query("SELECT name, created_at FROM apps WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        Ok(App {
            name: row.get("name"),
            created_at: row.get("created_at"),
        })
    }

    pub async fn delete_app(&self, name: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM apps WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// App names become host names (`{app}.{domain}`): one DNS label, lowercase.
pub fn valid_app_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
