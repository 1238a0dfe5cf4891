//! Backend connections, reused across client sessions (PgBouncer's session mode): a client
//! session has one backend connection from its start to its end; afterwards the connection is
//! reset (`DISCARD ALL`, which also drops prepared statements and temporary tables) and waits
//! for the next session on the same database. At most `db.backend_pool_size` exist at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::conn::{Connection, Target};
use crate::engine::{SqlError, sqlstate};

/// An idle connection unused this long is closed.
const IDLE_FOR: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Pool {
    pub target: Target,
    slots: Arc<Semaphore>,
    size: usize,
    idle: std::sync::Mutex<Vec<Connection>>,
    /// Signalled when a connection goes back to the pool.
    returned: Notify,
}

impl Pool {
    pub fn new(target: Target, size: usize) -> Self {
        Self {
            target,
            slots: Arc::new(Semaphore::new(size)),
            size,
            idle: std::sync::Mutex::new(Vec::new()),
            returned: Notify::new(),
        }
    }

    fn take_idle(&self, database: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        idle.retain(|conn| conn.idle_since.elapsed() < IDLE_FOR);
        let at = idle.iter().rposition(|conn| conn.database == database)?;
        Some(idle.swap_remove(at))
    }

    /// Closes one idle connection to another database, freeing its slot.
    fn evict_other(&self, database: &str) -> bool {
        let Ok(mut idle) = self.idle.lock() else {
            return false;
        };
        match idle.iter().position(|conn| conn.database != database) {
            Some(at) => {
                drop(idle.swap_remove(at));
                true
            }
            None => false,
        }
    }

    /// A connection to `database`: an idle one, else a new one while the pool has room; waits
    /// up to `wait` for one to come back (53300 after that).
    pub async fn checkout(&self, database: &str, wait: Duration) -> Result<Connection, SqlError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(conn) = self.take_idle(database) {
                return Ok(conn);
            }
            let permit = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) if self.evict_other(database) => continue,
                Err(_) => {
                    let returned = self.returned.notified();
                    tokio::select! {
                        permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
                        _ = returned => None,
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(SqlError::new(
                                sqlstate::TOO_MANY_CONNECTIONS,
                                format!(
                                    "all {} connections to the PostgreSQL backend are in use",
                                    self.size
                                ),
                            ));
                        }
                    }
                }
            };
            if let Some(permit) = permit {
                let mut conn = self.target.connect(database).await?;
                conn.permit = Some(permit);
                return Ok(conn);
            }
        }
    }

    /// Takes a connection back after a session: reset, then kept for the next one. A
    /// connection in an unknown state (mid-result, broken) is closed instead.
    pub async fn checkin(&self, mut conn: Connection, clean: bool) {
        if !clean {
            return;
        }
        let reset = async {
            if conn.status != b'I' {
                conn.simple_query("ROLLBACK").await?;
            }
            conn.simple_query("DISCARD ALL").await
        };
        match tokio::time::timeout(Duration::from_secs(5), reset).await {
            Ok(Ok(_)) if conn.status == b'I' => {
                conn.idle_since = Instant::now();
                if let Ok(mut idle) = self.idle.lock() {
                    idle.push(conn);
                }
                self.returned.notify_one();
            }
            _ => tracing::debug!("a backend connection could not be reset; closed"),
        }
    }

    /// Closes the idle connections to `database` (before it is dropped).
    pub fn forget(&self, database: &str) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|conn| conn.database != database);
        }
    }

    pub fn close(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
