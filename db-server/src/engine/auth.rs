//! Roles, their passwords and their grants, kept in `data_dir/db/system.db`.
//!
//! Passwords are stored only as SCRAM-SHA-256 verifiers (salt, iterations, StoredKey,
//! ServerKey), the form PostgreSQL keeps in `pg_authid`: a client proves it knows the password
//! without sending it, and the file never holds anything a login could be replayed from.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ring::{digest, hmac, rand::SecureRandom};
use serde::Serialize;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::error::{SqlError, sqlstate};

/// Iterations of PBKDF2 for new verifiers (PostgreSQL's default).
const ITERATIONS: usize = 4096;

/// What a role may do on a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    Read,
    Write,
    Admin,
}

impl FromStr for Privilege {
    type Err = SqlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "read" | "select" => Ok(Privilege::Read),
            "write" | "all" | "all privileges" => Ok(Privilege::Write),
            "admin" => Ok(Privilege::Admin),
            other => Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("{other:?} is not a privilege: read, write or admin"),
            )),
        }
    }
}

impl Privilege {
    fn as_str(self) -> &'static str {
        match self {
            Privilege::Read => "read",
            Privilege::Write => "write",
            Privilege::Admin => "admin",
        }
    }
}

/// A SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub salt: Vec<u8>,
    pub iterations: usize,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Verifier {
    /// A fresh verifier for `password` with a random salt.
    pub fn new(password: &str) -> Result<Self, SqlError> {
        let mut salt = vec![0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| SqlError::new(sqlstate::INTERNAL_ERROR, "no randomness for a salt"))?;
        Ok(Self::with_salt(password, salt, ITERATIONS))
    }

    fn with_salt(password: &str, salt: Vec<u8>, iterations: usize) -> Self {
        let salted =
            pgwire::api::auth::sasl::scram::gen_salted_password(password, &salt, iterations);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let server_key = hmac::sign(&key, b"Server Key");
        Self {
            salt,
            iterations,
            stored_key: stored_key.as_ref().to_vec(),
            server_key: server_key.as_ref().to_vec(),
        }
    }

    /// Whether `password` is the one this verifier was made from (HTTP Basic logins).
    pub fn matches(&self, password: &str) -> bool {
        let candidate = Self::with_salt(password, self.salt.clone(), self.iterations);
        // Compared without stopping at the first difference.
        candidate.stored_key.len() == self.stored_key.len()
            && candidate
                .stored_key
                .iter()
                .zip(&self.stored_key)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// PostgreSQL's text form: `SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey`.
    pub fn to_text(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            b64.encode(&self.salt),
            b64.encode(&self.stored_key),
            b64.encode(&self.server_key)
        )
    }

    pub fn from_text(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Self {
            salt: b64.decode(salt).ok()?,
            iterations: iterations.parse().ok()?,
            stored_key: b64.decode(stored).ok()?,
            server_key: b64.decode(server).ok()?,
        })
    }
}

/// A role as `\du` and the HTTP API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleInfo {
    pub name: String,
    pub superuser: bool,
}

/// The system catalog: roles, grants, databases.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: SqlitePool,
    remembered: Arc<Mutex<Remembered>>,
}

/// Answers the catalog gave lately, kept in memory: the HTTP API needs a role's verifier, its
/// privilege and the database at every request, and each query is a round trip to the
/// catalog's single connection. Every change to the catalog goes through this process's
/// [`Catalog`] (the file is opened with `unix-excl`: no other process can open it while the
/// server runs), which forgets everything once the change is made; an answer read while a
/// change was under way is not kept.
#[derive(Debug, Default)]
struct Remembered {
    /// Changes made so far: an answer is kept only if none was made while it was read.
    generation: u64,
    verifiers: HashMap<String, Option<Verifier>>,
    superusers: HashMap<String, bool>,
    grants: HashMap<(String, String), Option<Privilege>>,
    databases: HashMap<String, bool>,
    /// Known bearer tokens (by digest) and their roles; unknown ones are not kept.
    tokens: HashMap<String, String>,
}

/// After a change: nothing remembered holds any more.
fn forget(remembered: &Mutex<Remembered>) {
    if let Ok(mut remembered) = remembered.lock() {
        let generation = remembered.generation.wrapping_add(1);
        *remembered = Remembered {
            generation,
            ..Remembered::default()
        };
    }
}

/// Entries per map past which it is emptied (names a flood of bad logins made up).
const REMEMBERED_MAX: usize = 4096;

fn keep<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= REMEMBERED_MAX {
        map.clear();
    }
    map.insert(key, value);
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS roles (
    name TEXT PRIMARY KEY NOT NULL,
    verifier TEXT NOT NULL,
    superuser INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE IF NOT EXISTS databases (
    name TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE IF NOT EXISTS grants (
    role TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
    database TEXT NOT NULL REFERENCES databases(name) ON DELETE CASCADE,
    privilege TEXT NOT NULL CHECK (privilege IN ('read', 'write', 'admin')),
    PRIMARY KEY (role, database)
);
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL REFERENCES roles(name) ON DELETE CASCADE,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
";

fn db_error(err: sqlx::Error) -> SqlError {
    SqlError::from_sqlx(&err)
}

impl Catalog {
    pub async fn open(path: &std::path::Path) -> Result<Self, SqlError> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| SqlError::new(sqlstate::INTERNAL_ERROR, e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            // The file is the server's alone while it runs (as its databases are), which is
            // what lets the catalog remember its answers: no other process can change it.
            .vfs("unix-excl")
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(db_error)?;
        Ok(Self {
            pool,
            remembered: Arc::default(),
        })
    }

    /// What is remembered, picked by `pick`, and the generation it belongs to.
    fn recall<T>(&self, pick: impl FnOnce(&Remembered) -> Option<T>) -> (Option<T>, u64) {
        match self.remembered.lock() {
            Ok(remembered) => (pick(&remembered), remembered.generation),
            Err(_) => (None, u64::MAX),
        }
    }

    /// Keeps an answer read during `generation`, unless the catalog changed since.
    fn remember(&self, generation: u64, put: impl FnOnce(&mut Remembered)) {
        if let Ok(mut remembered) = self.remembered.lock()
            && remembered.generation == generation
        {
            put(&mut remembered);
        }
    }

    /// Runs a change to the catalog, then forgets everything remembered, on a task of its
    /// own: a caller that goes away mid-change (an HTTP client hanging up during `ALTER ROLE`)
    /// must not leave the change made and the old answers still in memory.
    async fn change(
        &self,
        query: sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error> {
        let pool = self.pool.clone();
        let remembered = Arc::clone(&self.remembered);
        let task = tokio::spawn(async move {
            let outcome = query.execute(&pool).await;
            forget(&remembered);
            outcome
        });
        task.await
            .unwrap_or_else(|err| Err(sqlx::Error::Protocol(format!("catalog change: {err}"))))
    }

    /// Creates `name`, or with `replace` sets its password and superuser flag.
    pub async fn put_role(
        &self,
        name: &str,
        password: &str,
        superuser: bool,
        replace: bool,
    ) -> Result<(), SqlError> {
        let verifier = Verifier::new(password)?.to_text();
        let sql = if replace {
            "INSERT INTO roles (name, verifier, superuser) VALUES (?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET verifier = excluded.verifier, superuser = excluded.superuser"
        } else {
            "INSERT INTO roles (name, verifier, superuser) VALUES (?, ?, ?)"
        };
        self.change(
            sqlx::query(sql)
                .bind(name.to_owned())
                .bind(verifier)
                .bind(superuser),
        )
        .await
        .map_err(|err| {
            let err = SqlError::from_sqlx(&err);
            if err.code == sqlstate::UNIQUE_VIOLATION {
                SqlError::new(
                    sqlstate::DUPLICATE_OBJECT,
                    format!("role \"{name}\" already exists"),
                )
            } else {
                err
            }
        })?;
        Ok(())
    }

    pub async fn drop_role(&self, name: &str) -> Result<(), SqlError> {
        let done = self
            .change(sqlx::query("DELETE FROM roles WHERE name = ?").bind(name.to_owned()))
            .await
            .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(SqlError::new(
                sqlstate::UNDEFINED_OBJECT,
                format!("role \"{name}\" does not exist"),
            ));
        }
        Ok(())
    }

    /// Whether any role exists (first start creates the administrator).
    pub async fn has_roles(&self) -> Result<bool, SqlError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM roles")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(row.get::<i64, _>("n") > 0)
    }

    pub async fn verifier(&self, role: &str) -> Result<Option<Verifier>, SqlError> {
        let (known, generation) = self.recall(|r| r.verifiers.get(role).cloned());
        if let Some(known) = known {
            return Ok(known);
        }
        let row = sqlx::query("SELECT verifier FROM roles WHERE name = ?")
            .bind(role)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let verifier = row.and_then(|row| Verifier::from_text(&row.get::<String, _>("verifier")));
        // Only roles that exist: a login may name anything.
        if verifier.is_some() {
            self.remember(generation, |r| {
                keep(&mut r.verifiers, role.to_owned(), verifier.clone())
            });
        }
        Ok(verifier)
    }

    pub async fn is_superuser(&self, role: &str) -> Result<bool, SqlError> {
        let (known, generation) = self.recall(|r| r.superusers.get(role).copied());
        if let Some(known) = known {
            return Ok(known);
        }
        let row = sqlx::query("SELECT superuser FROM roles WHERE name = ?")
            .bind(role)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let superuser = row.is_some_and(|row| row.get::<i64, _>("superuser") != 0);
        self.remember(generation, |r| {
            keep(&mut r.superusers, role.to_owned(), superuser)
        });
        Ok(superuser)
    }

    pub async fn roles(&self) -> Result<Vec<RoleInfo>, SqlError> {
        let rows = sqlx::query("SELECT name, superuser FROM roles ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|row| RoleInfo {
                name: row.get("name"),
                superuser: row.get::<i64, _>("superuser") != 0,
            })
            .collect())
    }

    /// What `role` may do on `database`: superusers everything, others their grant.
    pub async fn privilege(
        &self,
        role: &str,
        database: &str,
    ) -> Result<Option<Privilege>, SqlError> {
        if self.is_superuser(role).await? {
            return Ok(Some(Privilege::Admin));
        }
        let key = (role.to_owned(), database.to_owned());
        let (known, generation) = self.recall(|r| r.grants.get(&key).copied());
        if let Some(known) = known {
            return Ok(known);
        }
        let row = sqlx::query("SELECT privilege FROM grants WHERE role = ? AND database = ?")
            .bind(role)
            .bind(database)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let privilege = row
            .map(|row| row.get::<String, _>("privilege").parse())
            .transpose()?;
        self.remember(generation, |r| keep(&mut r.grants, key, privilege));
        Ok(privilege)
    }

    pub async fn grant(
        &self,
        role: &str,
        database: &str,
        privilege: Privilege,
    ) -> Result<(), SqlError> {
        self.change(
            sqlx::query(
                "INSERT INTO grants (role, database, privilege) VALUES (?, ?, ?)
                 ON CONFLICT(role, database) DO UPDATE SET privilege = excluded.privilege",
            )
            .bind(role.to_owned())
            .bind(database.to_owned())
            .bind(privilege.as_str()),
        )
        .await
        .map_err(|err| {
            let err = SqlError::from_sqlx(&err);
            if err.code == sqlstate::FOREIGN_KEY_VIOLATION {
                SqlError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("role \"{role}\" or database \"{database}\" does not exist"),
                )
            } else {
                err
            }
        })?;
        Ok(())
    }

    pub async fn revoke(&self, role: &str, database: &str) -> Result<(), SqlError> {
        self.change(
            sqlx::query("DELETE FROM grants WHERE role = ? AND database = ?")
                .bind(role.to_owned())
                .bind(database.to_owned()),
        )
        .await
        .map_err(db_error)?;
        Ok(())
    }

    pub async fn add_database(&self, name: &str) -> Result<(), SqlError> {
        self.change(sqlx::query("INSERT INTO databases (name) VALUES (?)").bind(name.to_owned()))
            .await
            .map_err(|err| {
                let err = SqlError::from_sqlx(&err);
                if err.code == sqlstate::UNIQUE_VIOLATION {
                    SqlError::new(
                        sqlstate::DUPLICATE_DATABASE,
                        format!("database \"{name}\" already exists"),
                    )
                } else {
                    err
                }
            })?;
        Ok(())
    }

    pub async fn remove_database(&self, name: &str) -> Result<bool, SqlError> {
        let done = self
            .change(sqlx::query("DELETE FROM databases WHERE name = ?").bind(name.to_owned()))
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn databases(&self) -> Result<Vec<String>, SqlError> {
        let rows = sqlx::query("SELECT name FROM databases ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows.into_iter().map(|row| row.get("name")).collect())
    }

    pub async fn has_database(&self, name: &str) -> Result<bool, SqlError> {
        let (known, generation) = self.recall(|r| r.databases.get(name).copied());
        if let Some(known) = known {
            return Ok(known);
        }
        let row = sqlx::query("SELECT 1 AS present FROM databases WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let present = row.is_some();
        self.remember(generation, |r| {
            keep(&mut r.databases, name.to_owned(), present)
        });
        Ok(present)
    }

    /// A new bearer token for `role` (only its digest is stored).
    pub async fn create_token(&self, role: &str) -> Result<String, SqlError> {
        let mut raw = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| SqlError::new(sqlstate::INTERNAL_ERROR, "no randomness for a token"))?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        sqlx::query("INSERT INTO tokens (digest, role) VALUES (?, ?)")
            .bind(token_digest(&token))
            .bind(role)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(token)
    }

    /// The role a bearer token is bound to.
    pub async fn token_role(&self, token: &str) -> Result<Option<String>, SqlError> {
        let digest = token_digest(token);
        let (known, generation) = self.recall(|r| r.tokens.get(&digest).cloned());
        if known.is_some() {
            return Ok(known);
        }
        let row = sqlx::query("SELECT role FROM tokens WHERE digest = ?")
            .bind(&digest)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let role: Option<String> = row.map(|row| row.get("role"));
        if let Some(role) = &role {
            self.remember(generation, |r| keep(&mut r.tokens, digest, role.clone()));
        }
        Ok(role)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn token_digest(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers are remembered, and every kind of change is seen at once.
    #[tokio::test]
    async fn remembered_answers_follow_every_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let catalog = Catalog::open(&dir.path().join("system.db"))
            .await
            .expect("catalog");
        catalog
            .put_role("ann", "one", false, false)
            .await
            .expect("role");
        catalog.add_database("shop").await.expect("database");
        let first = catalog.verifier("ann").await.expect("verifier");
        assert!(first.as_ref().is_some_and(|v| v.matches("one")));
        assert_eq!(catalog.privilege("ann", "shop").await.expect("p"), None);
        assert!(catalog.has_database("shop").await.expect("has"));
        let token = catalog.create_token("ann").await.expect("token");
        assert_eq!(
            catalog.token_role(&token).await.expect("t").as_deref(),
            Some("ann")
        );
        // Asked again: the same answers, from memory.
        assert_eq!(catalog.verifier("ann").await.expect("verifier"), first);
        assert!(catalog.has_database("shop").await.expect("has"));

        catalog
            .put_role("ann", "two", true, true)
            .await
            .expect("alter");
        let second = catalog.verifier("ann").await.expect("verifier");
        assert!(
            second
                .as_ref()
                .is_some_and(|v| v.matches("two") && !v.matches("one"))
        );
        assert!(catalog.is_superuser("ann").await.expect("superuser"));
        catalog
            .put_role("ann", "two", false, true)
            .await
            .expect("alter");
        assert!(!catalog.is_superuser("ann").await.expect("superuser"));

        catalog
            .grant("ann", "shop", Privilege::Read)
            .await
            .expect("grant");
        assert_eq!(
            catalog.privilege("ann", "shop").await.expect("p"),
            Some(Privilege::Read)
        );
        catalog
            .grant("ann", "shop", Privilege::Write)
            .await
            .expect("grant");
        assert_eq!(
            catalog.privilege("ann", "shop").await.expect("p"),
            Some(Privilege::Write)
        );
        catalog.revoke("ann", "shop").await.expect("revoke");
        assert_eq!(catalog.privilege("ann", "shop").await.expect("p"), None);

        assert!(catalog.remove_database("shop").await.expect("remove"));
        assert!(!catalog.has_database("shop").await.expect("has"));

        catalog.drop_role("ann").await.expect("drop");
        assert_eq!(catalog.verifier("ann").await.expect("verifier"), None);
        assert_eq!(
            catalog.token_role(&token).await.expect("t"),
            None,
            "tokens go with the role"
        );
    }

    #[test]
    fn verifiers_check_passwords_and_round_trip_as_text() {
        let verifier = Verifier::new("s3cret").expect("verifier");
        assert!(verifier.matches("s3cret"));
        assert!(!verifier.matches("s3cret "));
        let text = verifier.to_text();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"));
        assert!(!text.contains("s3cret"));
        assert_eq!(Verifier::from_text(&text), Some(verifier));
        assert_eq!(Verifier::from_text("md5abc"), None);
    }

    #[test]
    fn known_answer_from_rfc_7677() {
        // RFC 7677's example: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==,
        // 4096 iterations; its ServerSignature implies this ServerKey/StoredKey pair.
        use base64::Engine as _;
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .expect("salt");
        let verifier = Verifier::with_salt("pencil", salt, 4096);
        let text = verifier.to_text();
        assert_eq!(
            text,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }
}
