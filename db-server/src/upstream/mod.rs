//! `db.backend = "postgres://…"`: db-server in front of a real PostgreSQL.
//!
//! The same front ends as with SQLite: the PostgreSQL port ([`proxy`]: Quartet's roles, grants
//! and TLS rules at the door, then the session relayed to a pooled backend connection) and the
//! HTTP SQL API (its statements run on pooled connections too). Databases are the backend's;
//! roles and grants stay in Quartet's catalog, and `CREATE/DROP DATABASE` act on the backend.
//!
//! - [`conn`]: one backend connection (TLS per `sslmode`, SCRAM/MD5/password login).
//! - [`pool`]: connections kept per database, `db.backend_pool_size` at most.
//! - [`scram`]: the server side of SCRAM-SHA-256 for the proxy's clients.
//! - [`wire`]: message framing.

pub mod conn;
pub mod pool;
pub mod proxy;
pub mod scram;
pub mod wire;

use std::collections::HashMap;
use std::time::Duration;

use common::config::PostgresUrl;
use ring::rand::SecureRandom as _;

use crate::engine::{SqlError, sqlstate, valid_database_name};
pub use conn::{Connection, Outcome};

/// The backend and what the proxy keeps about it.
#[derive(Debug)]
pub struct Upstream {
    pub pool: pool::Pool,
    /// Cancel keys handed to clients → the backend connection's own key.
    cancels: std::sync::Mutex<HashMap<i32, CancelKey>>,
}

/// The secret handed to the client, and the backend connection's (pid, secret).
type CancelKey = (i32, (i32, i32));

impl Upstream {
    pub fn new(url: PostgresUrl, pool_size: usize) -> Result<Self, SqlError> {
        Ok(Self {
            pool: pool::Pool::new(conn::Target::new(url)?, pool_size),
            cancels: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A connection to the URL's own database, for administration.
    async fn admin(&self) -> Result<Connection, SqlError> {
        let target = &self.pool.target;
        target.connect(&target.url.database).await
    }

    /// Whether the backend has the database.
    pub async fn has_database(&self, name: &str) -> Result<bool, SqlError> {
        if !valid_database_name(name) {
            return Ok(false);
        }
        let found = self
            .admin()
            .await?
            .simple_query(&format!(
                "SELECT 1 FROM pg_database WHERE datname = '{name}' AND datallowconn"
            ))
            .await?;
        Ok(!found.rows.is_empty())
    }

    /// The backend's databases that clients can connect to (templates aside), by name.
    pub async fn databases(&self) -> Result<Vec<String>, SqlError> {
        let found = self
            .admin()
            .await?
            .simple_query(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate \
                 ORDER BY datname",
            )
            .await?;
        Ok(found
            .rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .filter(|name| valid_database_name(name))
            .collect())
    }

    pub async fn create_database(&self, name: &str) -> Result<(), SqlError> {
        // Names are checked (a-z, 0-9, _) before they reach here: quoting is enough.
        self.admin()
            .await?
            .simple_query(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(())
    }

    pub async fn drop_database(&self, name: &str) -> Result<(), SqlError> {
        self.pool.forget(name);
        self.admin()
            .await?
            .simple_query(&format!("DROP DATABASE \"{name}\""))
            .await?;
        Ok(())
    }

    /// A cancel key for a client whose session uses the backend connection with `backend`.
    pub fn register(&self, backend: (i32, i32)) -> (i32, i32) {
        let mut raw = [0u8; 8];
        let _ = ring::rand::SystemRandom::new().fill(&mut raw);
        let pid = i32::from_be_bytes([raw[0] & 0x3f, raw[1], raw[2], raw[3]]).max(1);
        let secret = i32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.insert(pid, (secret, backend));
        }
        (pid, secret)
    }

    /// The client-side key registered for a backend connection.
    pub fn pid_of(&self, backend: (i32, i32)) -> Option<(i32, i32)> {
        let cancels = self.cancels.lock().ok()?;
        cancels
            .iter()
            .find(|(_, (_, key))| *key == backend)
            .map(|(pid, (secret, _))| (*pid, *secret))
    }

    pub fn unregister(&self, pid: i32) {
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.remove(&pid);
        }
    }

    /// A client's CancelRequest: passed on to the backend if the key is right (ignored
    /// otherwise, as PostgreSQL does).
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let backend = self.cancels.lock().ok().and_then(|cancels| {
            cancels
                .get(&pid)
                .filter(|(known, _)| *known == secret)
                .map(|(_, backend)| *backend)
        });
        match backend {
            Some(key) => {
                tracing::info!(pid, "cancel request passed to the backend");
                if let Err(err) = self.pool.target.cancel(key).await {
                    tracing::warn!(error = %err, "cancel request to the backend failed");
                }
            }
            None => tracing::debug!(pid, "cancel request for no known session"),
        }
    }

    /// A pooled connection for an HTTP request: read-only for a read grant, with the
    /// statement timeout.
    pub async fn session(
        &self,
        database: &str,
        read_only: bool,
        statement_timeout: Duration,
    ) -> Result<Connection, SqlError> {
        let mut setup = format!(
            "SET statement_timeout = '{}ms';",
            statement_timeout.as_millis()
        );
        if read_only {
            setup.push_str("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;");
        }
        for attempt in 0..2 {
            let mut conn = self
                .pool
                .checkout(database, Duration::from_secs(10))
                .await?;
            match conn.simple_query(&setup).await {
                Ok(_) => return Ok(conn),
                Err(err) if err.code == "08006" && attempt == 0 => continue,
                Err(err) => return Err(err),
            }
        }
        Err(SqlError::new(
            sqlstate::intern("08006"),
            "the PostgreSQL backend closed the connection",
        ))
    }
}
