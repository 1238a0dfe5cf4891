//! Everything app-server must remember across restarts, in SQLite under `data_dir/app/`
//! (sqlx). Today: apps. Builds, releases, config and formation join as the deploy path lands.

use std::collections::BTreeMap;
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
    #[error("{domain} already routes to the app {owner}")]
    DomainTaken { domain: String, owner: String },
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
    /// The app's number, never reused: `per-app` users are 61184 + this.
    pub number: u32,
    /// Host names routed to the app besides `{name}.{app.domain}`.
    pub domains: Vec<String>,
    /// A path a new web process must answer with 2xx or 3xx before it gets traffic; without
    /// one, accepting connections is enough.
    pub health_path: Option<String>,
}

/// What may change about an app after it is created (`None`: leave as is).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub domains: Option<Vec<String>>,
    /// `Some(None)` (JSON `null`) removes the health path.
    #[serde(default, deserialize_with = "some_or_null")]
    pub health_path: Option<Option<String>>,
}

fn some_or_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(deserializer).map(Some)
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
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    hash TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    build TEXT NOT NULL REFERENCES builds(hash),
    config TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    current INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app, version)
);
CREATE TABLE IF NOT EXISTS formation (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    process TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (app, process)
);
CREATE TABLE IF NOT EXISTS config_vars (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (app, key)
);
";

/// A release: a build, a snapshot of the app's config vars, and a version number.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Release {
    pub app: String,
    pub version: i64,
    pub build: String,
    /// The config vars the release runs with (values are the owner's to see).
    pub config: BTreeMap<String, String>,
    pub created_at: i64,
    pub current: bool,
    /// Why the release never served (failed `release:` or health check), if it did not.
    pub failure: Option<String>,
}

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
            .busy_timeout(std::time::Duration::from_secs(5))
            .foreign_keys(true);
        // One connection: the control API's writes are few; no writer contention to manage.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query(SCHEMA).execute(&pool).await?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn create_app(&self, name: &str, settings: &AppSettings) -> Result<App, StoreError> {
        let created_at = now();
        let mut tx = self.pool.begin().await?;
        let number: i64 = sqlx::query(
            "INSERT INTO counters (name, value) VALUES ('app_number', 1)
             ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?
        .get("value");
        let domains = settings.domains.clone().unwrap_or_default();
        let health_path = settings.health_path.clone().flatten();
        domains_free(&mut tx, name, &domains).await?;
        let inserted = sqlx::query(
            "INSERT INTO apps (name, created_at, number, domains, health_path) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT(name) DO NOTHING",
        )
        .bind(name)
        .bind(created_at)
        .bind(number)
        .bind(serde_json::to_string(&domains).unwrap_or_else(|_| "[]".into()))
        .bind(&health_path)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Exists(name.to_owned()));
        }
        tx.commit().await?;
        Ok(App {
            name: name.to_owned(),
            created_at,
            number: u32::try_from(number).unwrap_or(u32::MAX),
            domains,
            health_path,
        })
    }

    /// Changes an app's domains and health path.
    pub async fn update_app(&self, name: &str, settings: &AppSettings) -> Result<App, StoreError> {
        let mut app = self.get_app(name).await?;
        if let Some(domains) = &settings.domains {
            app.domains = domains.clone();
        }
        if let Some(health_path) = &settings.health_path {
            app.health_path = health_path.clone();
        }
        // Checked and written in one transaction: two apps cannot claim a domain at once.
        let mut tx = self.pool.begin().await?;
        domains_free(&mut tx, name, &app.domains).await?;
        sqlx::query("UPDATE apps SET domains = ?, health_path = ? WHERE name = ?")
            .bind(serde_json::to_string(&app.domains).unwrap_or_else(|_| "[]".into()))
            .bind(&app.health_path)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(app)
    }

    pub async fn list_apps(&self) -> Result<Vec<App>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, created_at, number, domains, health_path FROM apps ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(app_from_row).collect())
    }

    pub async fn get_app(&self, name: &str) -> Result<App, StoreError> {
        let row = sqlx::query(
            "SELECT name, created_at, number, domains, health_path FROM apps WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        Ok(app_from_row(row))
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

    pub async fn record_build(&self, hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO builds (hash, created_at) VALUES (?, ?) ON CONFLICT(hash) DO NOTHING",
        )
        .bind(hash)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a new release (not yet current) and returns it with its version.
    pub async fn create_release(
        &self,
        app: &str,
        build: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<Release, StoreError> {
        self.get_app(app).await?;
        let mut tx = self.pool.begin().await?;
        let version: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 AS v FROM releases WHERE app = ?")
                .bind(app)
                .fetch_one(&mut *tx)
                .await?
                .get("v");
        let created_at = now();
        let snapshot = serde_json::to_string(config).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO releases (app, version, build, config, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(app)
        .bind(version)
        .bind(build)
        .bind(snapshot)
        .bind(created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Release {
            app: app.to_owned(),
            version,
            build: build.to_owned(),
            config: config.clone(),
            created_at,
            current: false,
            failure: None,
        })
    }

    /// Records why release `version` never served.
    pub async fn mark_failed(&self, app: &str, version: i64, why: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE releases SET failure = ? WHERE app = ? AND version = ?")
            .bind(why)
            .bind(app)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Makes `version` the app's current release (durably, before the deploy is acknowledged).
    pub async fn set_current(&self, app: &str, version: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query("UPDATE releases SET current = (version = ?) WHERE app = ?")
            .bind(version)
            .bind(app)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(app.to_owned()));
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError> {
        self.get_app(app).await?;
        let rows = sqlx::query("SELECT app, version, build, config, created_at, current, failure FROM releases WHERE app = ? ORDER BY version DESC")
            .bind(app)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(release_from_row).collect())
    }

    /// Every app's current release, for bringing apps back on start.
    pub async fn current_releases(&self) -> Result<Vec<Release>, StoreError> {
        let rows = sqlx::query(
            "SELECT app, version, build, config, created_at, current, failure FROM releases WHERE current = 1",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(release_from_row).collect())
    }

    pub async fn release(&self, app: &str, version: i64) -> Result<Release, StoreError> {
        let row = sqlx::query("SELECT app, version, build, config, created_at, current, failure FROM releases WHERE app = ? AND version = ?")
            .bind(app)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("{app} v{version}")))?;
        Ok(release_from_row(row))
    }

    pub async fn current_release(&self, app: &str) -> Result<Option<Release>, StoreError> {
        let row = sqlx::query("SELECT app, version, build, config, created_at, current, failure FROM releases WHERE app = ? AND current = 1")
            .bind(app)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(release_from_row))
    }

    pub async fn config(&self, app: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.get_app(app).await?;
        let rows = sqlx::query("SELECT key, value FROM config_vars WHERE app = ?")
            .bind(app)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get("key"), row.get("value")))
            .collect())
    }

    /// Applies `changes` (`None` removes a key) in one transaction; returns the new config.
    pub async fn update_config(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.get_app(app).await?;
        let mut tx = self.pool.begin().await?;
        for (key, value) in changes {
            match value {
                Some(value) => {
                    sqlx::query("INSERT INTO config_vars (app, key, value) VALUES (?, ?, ?) ON CONFLICT(app, key) DO UPDATE SET value = excluded.value")
                        .bind(app)
                        .bind(key)
                        .bind(value)
                        .execute(&mut *tx)
                        .await?;
                }
                None => {
                    sqlx::query("DELETE FROM config_vars WHERE app = ? AND key = ?")
                        .bind(app)
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        self.config(app).await
    }

    /// How many of each process type to run; `web` defaults to 1, others to 0.
    pub async fn formation(&self, app: &str) -> Result<BTreeMap<String, u32>, StoreError> {
        let rows = sqlx::query("SELECT process, count FROM formation WHERE app = ?")
            .bind(app)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                (
                    row.get("process"),
                    row.get::<i64, _>("count").clamp(0, 100) as u32,
                )
            })
            .collect())
    }

    pub async fn set_formation(
        &self,
        app: &str,
        counts: &BTreeMap<String, u32>,
    ) -> Result<(), StoreError> {
        self.get_app(app).await?;
        let mut tx = self.pool.begin().await?;
        for (process, count) in counts {
            sqlx::query("INSERT INTO formation (app, process, count) VALUES (?, ?, ?) ON CONFLICT(app, process) DO UPDATE SET count = excluded.count")
                .bind(app)
                .bind(process)
                .bind(i64::from(*count))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Fails if another app than `app` routes one of `domains`.
async fn domains_free(
    tx: &mut sqlx::SqliteConnection,
    app: &str,
    domains: &[String],
) -> Result<(), StoreError> {
    for domain in domains {
        let owner = sqlx::query(
            "SELECT apps.name AS owner FROM apps, json_each(apps.domains)
             WHERE json_each.value = ? AND apps.name != ?",
        )
        .bind(domain)
        .bind(app)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(owner) = owner {
            return Err(StoreError::DomainTaken {
                domain: domain.clone(),
                owner: owner.get("owner"),
            });
        }
    }
    Ok(())
}

/// Schema changes since the first release of the store, by `PRAGMA user_version`.
async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let version: i64 = sqlx::query("PRAGMA user_version")
        .fetch_one(pool)
        .await?
        .get(0);
    if version < 1 {
        let mut tx = pool.begin().await?;
        for statement in [
            "ALTER TABLE apps ADD COLUMN number INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE apps ADD COLUMN domains TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE apps ADD COLUMN health_path TEXT",
            // Apps created before numbers existed get theirs in creation order.
            "UPDATE apps SET number = rowid",
            "INSERT INTO counters (name, value) SELECT 'app_number', COALESCE(MAX(number), 0) FROM apps
             WHERE true ON CONFLICT(name) DO NOTHING",
            "PRAGMA user_version = 1",
        ] {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    if version < 2 {
        let mut tx = pool.begin().await?;
        for statement in [
            "ALTER TABLE releases ADD COLUMN failure TEXT",
            "PRAGMA user_version = 2",
        ] {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

fn app_from_row(row: sqlx::sqlite::SqliteRow) -> App {
    let domains: String = row.get("domains");
    App {
        name: row.get("name"),
        created_at: row.get("created_at"),
        number: u32::try_from(row.get::<i64, _>("number")).unwrap_or(u32::MAX),
        domains: serde_json::from_str(&domains).unwrap_or_default(),
        health_path: row.get("health_path"),
    }
}

fn release_from_row(row: sqlx::sqlite::SqliteRow) -> Release {
    let config: String = row.get("config");
    Release {
        app: row.get("app"),
        version: row.get("version"),
        build: row.get("build"),
        config: serde_json::from_str(&config).unwrap_or_default(),
        created_at: row.get("created_at"),
        current: row.get::<i64, _>("current") != 0,
        failure: row.get("failure"),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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

/// An app name made from a folder's name (`My Cool_App` → `my-cool-app`), if one can be.
pub fn app_name_from(text: &str) -> Option<String> {
    let name: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-');
    let name = name[..name.len().min(63)].trim_end_matches('-');
    valid_app_name(name).then(|| name.to_owned())
}
