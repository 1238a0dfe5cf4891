//! The SQLite engine behind both front ends (PostgreSQL wire protocol and HTTP API): databases
//! as files under `data_dir/db/`, sessions with PostgreSQL's transaction semantics, roles and
//! grants, errors as SQLSTATEs.

pub mod admin;
pub mod auth;
pub mod backup;
pub mod database;
pub mod direct;
pub mod error;
pub mod guard;
pub mod infer;
pub mod session;
pub mod split;
pub mod value;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use auth::{Catalog, Privilege};
pub use database::{Database, DatabaseOptions, Durability};
pub use direct::EngineMetrics;
pub use error::{SqlError, sqlstate};
pub use session::{Session, SessionLimits, StatementResult, TxStatus};

/// Database names become file names: 1-63 of `[a-z0-9_]`, starting with a letter or `_`.
pub fn valid_database_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name != "system"
}

/// Role names: the same rule as databases.
pub fn valid_role_name(name: &str) -> bool {
    valid_database_name(name)
}

/// Holds `dir/.lock` for as long as it lives: one db-server per data folder, and no offline
/// restore while one runs.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Takes the data folder's lock, or says who holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, SqlError> {
    let path = dir.join(".lock");
    let busy = || {
        SqlError::new(
            sqlstate::OBJECT_IN_USE,
            format!("{} is in use by a running db-server", dir.display()),
        )
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| SqlError::new(sqlstate::INTERNAL_ERROR, format!("{}: {e}", dir.display())))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SqlError::new(sqlstate::INTERNAL_ERROR, format!("{}: {e}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(DirLock)
        .map_err(|_| busy())
}

/// Every database of this server, opened on first use.
#[derive(Debug)]
pub struct Engine {
    dir: PathBuf,
    options: DatabaseOptions,
    pub catalog: Catalog,
    open: tokio::sync::Mutex<HashMap<String, Arc<Database>>>,
    /// With `db.backend = "postgres://…"`: the databases are the backend's (the catalog
    /// mirrors their names for grants).
    upstream: Option<Arc<crate::upstream::Upstream>>,
    /// The runtime the engine was opened on, which runs its databases' background tasks:
    /// sessions may be served on runtimes of their own (see `pg::threads`) that stop first.
    home: tokio::runtime::Handle,
}

fn not_with_postgres(what: &str) -> SqlError {
    SqlError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "{what} is for the sqlite backend; with a PostgreSQL backend use pg_dump/pg_restore"
        ),
    )
}

impl Engine {
    /// Opens `dir` (created if needed) and its catalog.
    pub async fn open(dir: &Path, options: DatabaseOptions) -> Result<Self, SqlError> {
        Self::open_with(dir, options, None).await
    }

    /// As [`Engine::open`], with the PostgreSQL backend that holds the databases, if any.
    pub async fn open_with(
        dir: &Path,
        options: DatabaseOptions,
        upstream: Option<Arc<crate::upstream::Upstream>>,
    ) -> Result<Self, SqlError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            SqlError::new(
                sqlstate::INTERNAL_ERROR,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let catalog = Catalog::open(&dir.join("system.db")).await?;
        Ok(Self {
            dir: dir.to_path_buf(),
            options,
            catalog,
            open: tokio::sync::Mutex::new(HashMap::new()),
            upstream,
            home: tokio::runtime::Handle::current(),
        })
    }

    /// The PostgreSQL backend, when there is one.
    pub fn upstream(&self) -> Option<&Arc<crate::upstream::Upstream>> {
        self.upstream.as_ref()
    }

    /// Whether database `name` exists (with a PostgreSQL backend: on the backend, and then
    /// also in the catalog, so that it can be granted).
    pub async fn has_database(&self, name: &str) -> Result<bool, SqlError> {
        let Some(upstream) = &self.upstream else {
            if self.open.lock().await.contains_key(name) {
                return Ok(true);
            }
            return self.catalog.has_database(name).await;
        };
        let found = upstream.has_database(name).await?;
        if found && !self.catalog.has_database(name).await? {
            self.known(name).await?;
        }
        Ok(found)
    }

    /// Records a backend database in the catalog (already there is fine).
    async fn known(&self, name: &str) -> Result<(), SqlError> {
        match self.catalog.add_database(name).await {
            Err(err) if err.code != sqlstate::DUPLICATE_DATABASE => Err(err),
            _ => Ok(()),
        }
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.db"))
    }

    /// The database `name`, opening it if needed (3D000 if there is none).
    pub async fn database(&self, name: &str) -> Result<Arc<Database>, SqlError> {
        if self.upstream.is_some() {
            return Err(not_with_postgres("an embedded SQLite database"));
        }
        let mut open = self.open.lock().await;
        if let Some(db) = open.get(name) {
            return Ok(Arc::clone(db));
        }
        if !valid_database_name(name) || !self.catalog.has_database(name).await? {
            return Err(SqlError::new(
                sqlstate::INVALID_CATALOG_NAME,
                format!("database \"{name}\" does not exist"),
            ));
        }
        let db = Arc::new(
            Database::open(name, &self.path_of(name), &self.options, true, &self.home).await?,
        );
        open.insert(name.to_owned(), Arc::clone(&db));
        Ok(db)
    }

    /// Creates an empty database (42P04 if it exists).
    pub async fn create_database(&self, name: &str) -> Result<(), SqlError> {
        if !valid_database_name(name) {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("{name:?} is not a database name: 1-63 of a-z, 0-9 and _"),
            ));
        }
        if let Some(upstream) = &self.upstream {
            upstream.create_database(name).await?;
            return self.known(name).await;
        }
        self.catalog.add_database(name).await?;
        // Create the file now, so that a database that exists can always be opened.
        let created =
            Database::open(name, &self.path_of(name), &self.options, true, &self.home).await;
        match created {
            Ok(db) => {
                self.open.lock().await.insert(name.to_owned(), Arc::new(db));
                Ok(())
            }
            Err(err) => {
                let _ = self.catalog.remove_database(name).await;
                Err(err)
            }
        }
    }

    /// Closes database `name` if no session uses it (55006 otherwise), so that its files can
    /// be replaced or removed.
    /// Returns the lock on the open databases: hold it until the files are replaced or gone,
    /// so nothing reopens the old file meanwhile.
    async fn close_unused(
        &self,
        name: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, HashMap<String, Arc<Database>>>, SqlError> {
        let mut open = self.open.lock().await;
        if let Some(db) = open.get(name) {
            let sessions = Arc::strong_count(db) - 1;
            if sessions > 0 {
                return Err(SqlError::new(
                    sqlstate::OBJECT_IN_USE,
                    format!("database \"{name}\" is being accessed by {sessions} other session(s)"),
                ));
            }
        }
        if let Some(db) = open.remove(name) {
            db.close().await;
        }
        Ok(open)
    }

    /// Drops a database and deletes its files (3D000 if there is none, 55006 while in use).
    pub async fn drop_database(&self, name: &str) -> Result<(), SqlError> {
        if let Some(upstream) = &self.upstream {
            if !valid_database_name(name) {
                return Err(SqlError::new(
                    sqlstate::INVALID_CATALOG_NAME,
                    format!("database \"{name}\" does not exist"),
                ));
            }
            upstream.drop_database(name).await?;
            self.catalog.remove_database(name).await?;
            return Ok(());
        }
        if !self.catalog.has_database(name).await? {
            return Err(SqlError::new(
                sqlstate::INVALID_CATALOG_NAME,
                format!("database \"{name}\" does not exist"),
            ));
        }
        let _open = self.close_unused(name).await?;
        self.catalog.remove_database(name).await?;
        let path = self.path_of(name);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Ok(())
    }

    /// Writes a consistent snapshot of database `name` to `dest` (`VACUUM INTO`, which reads
    /// one transaction's view while writers go on), fsynced.
    pub async fn backup_to(&self, name: &str, dest: &Path) -> Result<(), SqlError> {
        use sqlx::{Connection as _, Executor as _};
        if self.upstream.is_some() {
            return Err(not_with_postgres("a snapshot"));
        }
        let db = self.database(name).await?;
        let dest_text = dest.display().to_string();
        let vacuum = move || sqlx::query("VACUUM INTO ?1").bind(dest_text.clone());
        // On a connection of its own: readers refuse writes (`query_only`), and SQLite counts
        // VACUUM INTO as one though it only reads this database. On a task of its own too,
        // which holds the database until that connection is closed: a caller that goes away
        // mid-snapshot (an HTTP client hanging up) must not leave the connection open on a
        // database that, no longer in use, could then be restored or dropped under it.
        let snapshot = tokio::spawn(async move {
            let mut connection = db.connection_aside().await?;
            let done = connection.execute(vacuum()).await;
            let _ = connection.close().await;
            drop(db);
            done.map(|_| ()).map_err(|err| SqlError::from_sqlx(&err))
        });
        let done = snapshot.await.unwrap_or_else(|err| {
            Err(SqlError::new(
                sqlstate::INTERNAL_ERROR,
                format!("the snapshot task failed: {err}"),
            ))
        });
        if let Err(err) = done {
            let _ = std::fs::remove_file(dest);
            return Err(err);
        }
        std::fs::File::open(dest)
            .and_then(|file| file.sync_all())
            .map_err(|e| {
                SqlError::new(sqlstate::INTERNAL_ERROR, format!("{}: {e}", dest.display()))
            })
    }

    /// Replaces database `name` (created if needed) with the snapshot at `source`, once the
    /// snapshot passes `PRAGMA integrity_check`. Refused while sessions use the database.
    pub async fn restore_from(&self, name: &str, source: &Path) -> Result<(), SqlError> {
        if self.upstream.is_some() {
            return Err(not_with_postgres("restoring a snapshot"));
        }
        if !valid_database_name(name) {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("{name:?} is not a database name"),
            ));
        }
        check_snapshot(source).await?;
        let _open = self.close_unused(name).await?;
        let path = self.path_of(name);
        let io = |e: std::io::Error| SqlError::new(sqlstate::INTERNAL_ERROR, e.to_string());
        let staged = path.with_extension("restoring");
        std::fs::copy(source, &staged).map_err(io)?;
        std::fs::File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        std::fs::rename(&staged, &path).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        if !self.catalog.has_database(name).await? {
            self.catalog.add_database(name).await?;
        }
        Ok(())
    }

    pub async fn databases(&self) -> Result<Vec<String>, SqlError> {
        let Some(upstream) = &self.upstream else {
            return self.catalog.databases().await;
        };
        let names = upstream.databases().await?;
        // The catalog follows the backend: new databases can be granted, dropped ones go.
        for name in &names {
            self.known(name).await?;
        }
        for name in self.catalog.databases().await? {
            if !names.contains(&name) {
                self.catalog.remove_database(&name).await?;
            }
        }
        Ok(names)
    }

    /// On first start: the administrator role and, in development, the `quartet` database.
    pub async fn bootstrap(
        &self,
        admin: &str,
        password: &str,
        first_database: Option<&str>,
    ) -> Result<(), SqlError> {
        if !self.catalog.has_roles().await? {
            self.catalog.put_role(admin, password, true, false).await?;
            tracing::info!(role = admin, "created the administrator role");
        }
        if let Some(name) = first_database
            && !self.has_database(name).await?
        {
            self.create_database(name).await?;
            tracing::info!(database = name, "created the first database");
        }
        Ok(())
    }

    /// Closes every open database (the role stops).
    pub async fn close(&self) {
        if let Some(upstream) = &self.upstream {
            upstream.pool.close();
        }
        let open: Vec<Arc<Database>> = self.open.lock().await.drain().map(|(_, db)| db).collect();
        for db in open {
            db.close().await;
        }
        self.catalog.close().await;
    }
}

/// Whether `path` is a SQLite database that passes `PRAGMA integrity_check`.
pub async fn check_snapshot(path: &Path) -> Result<(), SqlError> {
    use sqlx::{Connection as _, Row as _};
    use std::str::FromStr as _;
    let bad = |why: String| {
        SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("the snapshot is not usable: {why}"),
        )
    };
    let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")
        .map_err(|e| bad(e.to_string()))?
        .filename(path)
        .read_only(true)
        .immutable(true);
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let rows = sqlx::query("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let _ = conn.close().await;
    let verdict: Vec<String> = rows.iter().map(|r| r.get::<String, _>(0)).collect();
    if verdict == ["ok"] {
        Ok(())
    } else {
        Err(bad(verdict.join("; ")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::value::Value;
    use std::time::Duration;

    pub(crate) fn limits() -> SessionLimits {
        SessionLimits {
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_millis(300),
            max_rows: 0,
        }
    }

    /// A snapshot file opened on its own, read-only, to look at what was written.
    pub(crate) async fn open_snapshot(path: &Path) -> sqlx::sqlite::SqliteConnection {
        use sqlx::Connection as _;
        sqlx::sqlite::SqliteConnection::connect(&format!(
            "sqlite://{}?mode=ro&immutable=1",
            path.display()
        ))
        .await
        .expect("open the snapshot")
    }

    async fn engine(dir: &Path) -> Engine {
        engine_counting(dir, &EngineMetrics::default()).await
    }

    /// A scratch engine in a temporary directory (kept as long as the engine is) and its
    /// database `quartet`, counting where statements run in `paths`.
    pub(crate) async fn scratch(
        paths: &EngineMetrics,
    ) -> (tempfile::TempDir, Engine, Arc<Database>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = engine_counting(dir.path(), paths).await;
        let db = engine.database("quartet").await.expect("db");
        (dir, engine, db)
    }

    /// An engine with the database and role `quartet`, counting where statements run in
    /// `paths` (the `direct` tests read them).
    pub(super) async fn engine_counting(dir: &Path, paths: &EngineMetrics) -> Engine {
        let engine = Engine::open(
            dir,
            DatabaseOptions {
                durability: Durability::Full,
                readers: 2,
                paths: paths.clone(),
            },
        )
        .await
        .expect("engine");
        engine
            .bootstrap("quartet", "quartet", Some("quartet"))
            .await
            .expect("bootstrap");
        engine
    }

    #[tokio::test]
    async fn transactions_follow_postgresql() {
        let (_dir, _engine, db) = scratch(&EngineMetrics::default()).await;
        let mut a = Session::new(Arc::clone(&db), limits());
        let mut b = Session::new(Arc::clone(&db), limits());
        a.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
            &[],
        )
        .await
        .expect("create");
        let inserted = a
            .execute(
                "INSERT INTO t (name) VALUES (?1)",
                &[Value::Text("x".into())],
            )
            .await
            .expect("insert");
        assert_eq!(inserted.tag, "INSERT 0 1");
        assert_eq!(inserted.last_insert_id, Some(1));

        // Isolation: b does not see a's uncommitted row; a COMMIT makes it visible.
        a.execute("BEGIN", &[]).await.expect("begin");
        assert_eq!(a.status(), TxStatus::InTransaction);
        a.execute("INSERT INTO t (name) VALUES ('y')", &[])
            .await
            .expect("insert");
        // a reads its own write; a read pins the transaction to the writer.
        let own = a
            .execute("SELECT count(*) AS n FROM t", &[])
            .await
            .expect("select");
        assert_eq!(own.rows, vec![vec![Value::Integer(2)]]);
        let seen = b
            .execute("SELECT count(*) AS n FROM t", &[])
            .await
            .expect("select");
        assert_eq!(seen.rows, vec![vec![Value::Integer(1)]]);
        // b cannot write while a holds the writer: a clear lock error, not a hang.
        let blocked = b.execute("INSERT INTO t (name) VALUES ('z')", &[]).await;
        assert_eq!(
            blocked.expect_err("locked").code,
            sqlstate::LOCK_NOT_AVAILABLE
        );
        // An error fails a's transaction until ROLLBACK.
        let dup = a.execute("INSERT INTO t (name) VALUES ('x')", &[]).await;
        assert_eq!(dup.expect_err("unique").code, sqlstate::UNIQUE_VIOLATION);
        assert_eq!(a.status(), TxStatus::Failed);
        let ignored = a.execute("SELECT 1", &[]).await;
        assert_eq!(
            ignored.expect_err("failed").code,
            sqlstate::IN_FAILED_SQL_TRANSACTION
        );
        let ended = a
            .execute("COMMIT", &[])
            .await
            .expect("commit of a failed tx");
        assert_eq!(ended.tag, "ROLLBACK");
        assert_eq!(a.status(), TxStatus::Idle);
        let after = b
            .execute("SELECT name FROM t ORDER BY id", &[])
            .await
            .expect("select");
        assert_eq!(after.rows, vec![vec![Value::Text("x".into())]]);
        assert_eq!(after.tag, "SELECT 1");

        // Errors carry PostgreSQL's SQLSTATEs.
        let missing = b
            .execute("SELECT * FROM nope", &[])
            .await
            .expect_err("missing");
        assert_eq!(missing.code, sqlstate::UNDEFINED_TABLE);
        let syntax = b.execute("SELEC 1", &[]).await.expect_err("syntax");
        assert_eq!(syntax.code, sqlstate::SYNTAX_ERROR);
        // An empty result still has its columns.
        let empty = b
            .execute("SELECT id, name FROM t WHERE id < 0", &[])
            .await
            .expect("empty");
        assert_eq!(empty.columns.len(), 2);
        assert!(empty.returns_rows && empty.rows.is_empty());
        assert_eq!(empty.tag, "SELECT 0");
        // A WITH … INSERT sent to a reader is run on the writer.
        let with = b
            .execute(
                "WITH v(n) AS (SELECT 'w') INSERT INTO t (name) SELECT n FROM v",
                &[],
            )
            .await
            .expect("with insert");
        assert_eq!(with.rows_affected, 1);
    }

    /// Transactions whose statements answer with counts let go of the writer between
    /// statements: another session's writes go on meanwhile, and the first transaction is
    /// replayed, or fails with 40001 if its counts no longer hold.
    #[tokio::test]
    async fn optimistic_transactions_replay_or_fail_with_40001() {
        let paths = EngineMetrics::default();
        let (_dir, _engine, db) = scratch(&paths).await;
        let mut a = Session::new(Arc::clone(&db), limits());
        let mut b = Session::new(Arc::clone(&db), limits());
        a.execute(
            "CREATE TABLE acc (id INTEGER PRIMARY KEY, bal INTEGER)",
            &[],
        )
        .await
        .expect("create");
        a.execute("CREATE TABLE hist (id INTEGER, delta INTEGER)", &[])
            .await
            .expect("create");
        a.execute("INSERT INTO acc VALUES (1, 100), (2, 100), (3, 100)", &[])
            .await
            .expect("rows");
        let update = "UPDATE acc SET bal = bal + ?2 WHERE id = ?1";
        let insert = "INSERT INTO hist (id, delta) VALUES (?1, ?2)";
        // Each shape once, so that both are known quick (a first run goes to the worker,
        // which pins its transaction).
        let delete = "DELETE FROM acc WHERE id = ?1";
        for sql in [update, insert, delete] {
            a.execute(sql, &[Value::Integer(9), Value::Integer(0)])
                .await
                .expect("warm");
        }

        // a and b interleave; b's statements take the writer while a's transaction is open.
        a.execute("BEGIN", &[]).await.expect("begin a");
        let moved = a
            .execute(update, &[Value::Integer(1), Value::Integer(-10)])
            .await
            .expect("a updates");
        assert_eq!(moved.tag, "UPDATE 1");
        b.execute("BEGIN", &[]).await.expect("begin b");
        b.execute(update, &[Value::Integer(2), Value::Integer(5)])
            .await
            .expect("b goes on: a does not hold the writer");
        b.execute(insert, &[Value::Integer(2), Value::Integer(5)])
            .await
            .expect("b inserts");
        a.execute(insert, &[Value::Integer(1), Value::Integer(-10)])
            .await
            .expect("a inserts, after replaying its update");
        b.execute("COMMIT", &[]).await.expect("commit b");
        a.execute("COMMIT", &[])
            .await
            .expect("commit a, replayed again");
        assert!(
            paths.replayed.get() >= 2,
            "{} replays",
            paths.replayed.get()
        );
        let balances = b
            .execute("SELECT id, bal FROM acc ORDER BY id", &[])
            .await
            .expect("select");
        let expected = [(1, 90), (2, 105), (3, 100)]
            .map(|(id, bal)| vec![Value::Integer(id), Value::Integer(bal)]);
        assert_eq!(balances.rows, expected.to_vec());
        let history = b
            .execute("SELECT count(*) FROM hist WHERE delta <> 0", &[])
            .await
            .expect("select");
        assert_eq!(history.rows, vec![vec![Value::Integer(2)]]);

        // a deletes account 3 (DELETE 1); b deletes it too and commits first: a's replay
        // finds nothing to delete, so a's transaction fails with 40001 and changes nothing.
        a.execute("BEGIN", &[]).await.expect("begin");
        a.execute(delete, &[Value::Integer(3)])
            .await
            .expect("a deletes");
        a.execute(update, &[Value::Integer(1), Value::Integer(1000)])
            .await
            .expect("a updates");
        b.execute(delete, &[Value::Integer(3)])
            .await
            .expect("b deletes, autocommit");
        let err = a.execute("COMMIT", &[]).await.expect_err("conflict");
        assert_eq!(err.code, sqlstate::SERIALIZATION_FAILURE, "{err:?}");
        assert_eq!(
            a.status(),
            TxStatus::Idle,
            "a failed COMMIT ends the transaction"
        );
        assert_eq!(paths.serialization_failures.get(), 1);
        let failures = 1;
        let one = b
            .execute("SELECT bal FROM acc WHERE id = 1", &[])
            .await
            .expect("select");
        assert_eq!(
            one.rows,
            vec![vec![Value::Integer(90)]],
            "a's update is gone"
        );

        // What a driver asks while preparing (PRAGMA table_info) reads on a reader: it neither
        // replays nor pins the transaction, and the conflict is still reported at COMMIT.
        a.execute("BEGIN", &[]).await.expect("begin");
        a.execute(update, &[Value::Integer(1), Value::Integer(0)])
            .await
            .expect("a updates");
        b.execute("DELETE FROM acc WHERE id = ?1", &[Value::Integer(1)])
            .await
            .expect("b deletes");
        let info = a
            .execute("PRAGMA table_info(acc)", &[])
            .await
            .expect("pragma");
        assert_eq!(info.rows.len(), 2);
        assert_eq!(a.status(), TxStatus::InTransaction);
        let err = a.execute("COMMIT", &[]).await.expect_err("conflict");
        assert_eq!(err.code, sqlstate::SERIALIZATION_FAILURE);
        b.execute("INSERT INTO acc VALUES (1, 90)", &[])
            .await
            .expect("put back");

        // The same conflict seen at the next statement fails the transaction until ROLLBACK.
        a.execute("BEGIN", &[]).await.expect("begin");
        a.execute(delete, &[Value::Integer(2)])
            .await
            .expect("a deletes");
        b.execute(delete, &[Value::Integer(2)])
            .await
            .expect("b deletes");
        let err = a
            .execute(update, &[Value::Integer(1), Value::Integer(1)])
            .await
            .expect_err("conflict");
        assert_eq!(err.code, sqlstate::SERIALIZATION_FAILURE);
        assert_eq!(a.status(), TxStatus::Failed);
        assert_eq!(paths.serialization_failures.get(), failures + 2);
        assert_eq!(
            a.execute("ROLLBACK", &[]).await.expect("rollback").tag,
            "ROLLBACK"
        );

        // ROLLBACK of an optimistic transaction undoes it; so does a session that goes away.
        a.execute("BEGIN", &[]).await.expect("begin");
        a.execute(update, &[Value::Integer(1), Value::Integer(1)])
            .await
            .expect("update");
        a.execute("ROLLBACK", &[]).await.expect("rollback");
        let mut gone = Session::new(Arc::clone(&db), limits());
        gone.execute("BEGIN", &[]).await.expect("begin");
        gone.execute(update, &[Value::Integer(1), Value::Integer(1)])
            .await
            .expect("update");
        gone.close().await;
        let one = b
            .execute("SELECT bal FROM acc WHERE id = 1", &[])
            .await
            .expect("select");
        assert_eq!(one.rows, vec![vec![Value::Integer(90)]]);

        // A transaction sees what it wrote, even after a replay.
        a.execute("BEGIN", &[]).await.expect("begin");
        a.execute(update, &[Value::Integer(1), Value::Integer(7)])
            .await
            .expect("update");
        b.execute(insert, &[Value::Integer(5), Value::Integer(5)])
            .await
            .expect("b inserts");
        let own = a
            .execute("SELECT bal FROM acc WHERE id = 1", &[])
            .await
            .expect("select");
        assert_eq!(own.rows, vec![vec![Value::Integer(97)]]);
        a.execute("COMMIT", &[]).await.expect("commit");
    }

    /// A BEGIN that waits on the worker for a lock another connection holds, abandoned (the
    /// client gone): the transaction it opens once the lock is free is rolled back by the
    /// writer's next user, whose own write is then committed, not swallowed by it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_begin_abandoned_while_waiting_leaves_no_transaction_behind() {
        use sqlx::{Connection as _, Executor as _};
        let (_dir, _engine, db) = scratch(&EngineMetrics::default()).await;
        let mut a = Session::new(Arc::clone(&db), limits());
        let mut b = Session::new(Arc::clone(&db), limits());
        a.execute("CREATE TABLE t (n INTEGER)", &[])
            .await
            .expect("create");
        let mut other = sqlx::sqlite::SqliteConnection::connect(&format!(
            "sqlite://{}?vfs=unix-excl",
            db.path.display()
        ))
        .await
        .expect("other connection");
        other.execute("BEGIN IMMEDIATE").await.expect("lock");
        a.execute("BEGIN", &[]).await.expect("begin");
        let abandoned = tokio::time::timeout(
            Duration::from_millis(200),
            a.execute("INSERT INTO t VALUES (1)", &[]),
        )
        .await;
        assert!(abandoned.is_err(), "still waiting for the lock");
        drop(a);
        other.execute("COMMIT").await.expect("unlock");
        other.close().await.expect("close");
        b.execute("INSERT INTO t VALUES (2)", &[])
            .await
            .expect("insert");
        let mut c = Session::new(Arc::clone(&db), limits());
        let seen = c.execute("SELECT n FROM t", &[]).await.expect("select");
        assert_eq!(
            seen.rows,
            vec![vec![Value::Integer(2)]],
            "b's write is committed"
        );
    }

    /// Statements with their values inline (the simple protocol) answer as they did before
    /// their values became parameters.
    #[tokio::test]
    async fn inline_values_answer_the_same() {
        let (_dir, _engine, db) = scratch(&EngineMetrics::default()).await;
        let mut a = Session::new(Arc::clone(&db), limits());
        a.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, v REAL)",
            &[],
        )
        .await
        .expect("create");
        for (id, name) in [(1, "it''s"), (2, "b"), (3, "c")] {
            let done = a
                .execute(
                    &format!("INSERT INTO t (id, name, v) VALUES ({id}, '{name}', {id}.5)"),
                    &[],
                )
                .await
                .expect("insert");
            assert_eq!(done.tag, "INSERT 0 1");
        }
        let one = a
            .execute("SELECT id, v FROM t WHERE name = 'it''s'", &[])
            .await
            .expect("select");
        assert_eq!(one.rows, vec![vec![Value::Integer(1), Value::Real(1.5)]]);
        assert_eq!(one.columns[0].name, "id");
        let done = a
            .execute(
                "UPDATE t SET v = v + -1 WHERE id >= 2 AND name <> 'zz'",
                &[],
            )
            .await
            .expect("update");
        assert_eq!(done.tag, "UPDATE 2");
        let sum = a
            .execute("SELECT sum(v) FROM t WHERE id > 1", &[])
            .await
            .expect("sum");
        assert_eq!(sum.rows, vec![vec![Value::Real(4.0)]]);
        assert_eq!(sum.columns[0].name, "sum(v)");
        // A value in the select list keeps its text: columns are named after it.
        let named = a
            .execute("SELECT 1, 'x' FROM t WHERE id = 1", &[])
            .await
            .expect("select");
        assert_eq!(named.columns[0].name, "1");
        assert_eq!(named.columns[1].name, "'x'");
        let deleted = a
            .execute("DELETE FROM t WHERE id = 3", &[])
            .await
            .expect("delete");
        assert_eq!(deleted.tag, "DELETE 1");
    }

    #[tokio::test]
    async fn comments_savepoints_and_abandoned_transactions() {
        let (_dir, _engine, db) = scratch(&EngineMetrics::default()).await;
        let mut a = Session::new(Arc::clone(&db), limits());
        a.execute("CREATE TABLE t (n INTEGER)", &[])
            .await
            .expect("create");
        // Statements are classified by their code, not by a leading comment.
        a.execute("/* x */ BEGIN", &[]).await.expect("begin");
        assert_eq!(a.status(), TxStatus::InTransaction);
        a.execute("SAVEPOINT s", &[]).await.expect("savepoint");
        a.execute("INSERT INTO t VALUES (1)", &[])
            .await
            .expect("insert");
        let back = a
            .execute("ROLLBACK WORK TO s", &[])
            .await
            .expect("rollback to");
        assert_eq!(back.tag, "ROLLBACK");
        assert_eq!(
            a.status(),
            TxStatus::InTransaction,
            "still in the transaction"
        );
        a.execute("INSERT INTO t VALUES (2)", &[])
            .await
            .expect("insert");
        a.execute("-- done\nCOMMIT", &[]).await.expect("commit");
        assert_eq!(a.status(), TxStatus::Idle);
        let err = a.execute("SAVEPOINT t", &[]).await.expect_err("outside");
        assert_eq!(err.code, "25P01");
        // A session dropped mid-transaction: its writes never land, the writer is free.
        let mut gone = Session::new(Arc::clone(&db), limits());
        gone.execute("BEGIN", &[]).await.expect("begin");
        gone.execute("INSERT INTO t VALUES (99)", &[])
            .await
            .expect("insert");
        drop(gone);
        a.execute("INSERT INTO t VALUES (3)", &[])
            .await
            .expect("the writer is free");
        let rows = a
            .execute("SELECT n FROM t ORDER BY n", &[])
            .await
            .expect("select");
        assert_eq!(
            rows.rows,
            vec![vec![Value::Integer(2)], vec![Value::Integer(3)]]
        );
        // A refused statement fails the open transaction like any error.
        a.execute("BEGIN", &[]).await.expect("begin");
        assert!(a.execute("ATTACH 'x.db' AS x", &[]).await.is_err());
        assert_eq!(a.status(), TxStatus::Failed);
        a.execute("ROLLBACK", &[]).await.expect("rollback");
        // Non-ASCII names and values go through.
        a.execute("CREATE TABLE gens (prénom TEXT)", &[])
            .await
            .expect("create");
        a.execute("INSERT INTO gens VALUES ('Zoé — pg_catalog.x')", &[])
            .await
            .expect("insert");
        let cols = a
            .describe("SELECT prénom, count(*) FROM gens WHERE prénom = ?1")
            .await;
        assert!(cols.is_ok(), "{cols:?}");
    }

    #[tokio::test]
    async fn begin_takes_the_writer_only_at_the_first_statement() {
        let (_dir, _engine, db) = scratch(&EngineMetrics::default()).await;
        let mut a = Session::new(Arc::clone(&db), limits());
        let mut b = Session::new(Arc::clone(&db), limits());
        a.execute("CREATE TABLE t (n INTEGER)", &[])
            .await
            .expect("create");
        // Two sessions inside BEGIN: neither holds the writer yet, so both may go on.
        a.execute("BEGIN", &[]).await.expect("begin a");
        b.execute("BEGIN", &[]).await.expect("begin b");
        assert_eq!(a.status(), TxStatus::InTransaction);
        // Schema questions while preparing do not begin it either.
        a.execute("PRAGMA table_info(t)", &[])
            .await
            .expect("pragma");
        // A RETURNING answers with rows: it pins a's transaction to the writer.
        a.execute("INSERT INTO t VALUES (1) RETURNING n", &[])
            .await
            .expect("a writes");
        // b's first statement now waits for a's writer and times out (55P03); b is failed.
        let err = b
            .execute("INSERT INTO t VALUES (2)", &[])
            .await
            .expect_err("writer busy");
        assert_eq!(err.code, sqlstate::LOCK_NOT_AVAILABLE);
        assert_eq!(b.status(), TxStatus::Failed);
        let err = b.execute("SELECT 1", &[]).await.expect_err("aborted");
        assert_eq!(err.code, sqlstate::IN_FAILED_SQL_TRANSACTION);
        assert_eq!(b.execute("COMMIT", &[]).await.expect("end").tag, "ROLLBACK");
        a.execute("COMMIT", &[]).await.expect("commit");
        // An empty transaction commits without touching SQLite.
        b.execute("BEGIN", &[]).await.expect("begin");
        assert_eq!(
            b.execute("COMMIT", &[]).await.expect("commit").tag,
            "COMMIT"
        );
        let rows = b
            .execute("SELECT n FROM t", &[])
            .await
            .expect("select")
            .rows;
        assert_eq!(rows.len(), 1);
    }

    #[tokio::test]
    async fn a_read_only_transaction_does_not_hold_the_writer() {
        let (_dir, _engine, db) = scratch(&EngineMetrics::default()).await;
        let mut writer = Session::new(Arc::clone(&db), limits());
        writer
            .execute("CREATE TABLE t (n INTEGER)", &[])
            .await
            .expect("create");
        writer
            .execute("INSERT INTO t VALUES (1)", &[])
            .await
            .expect("insert");
        let mut reader = Session::new(Arc::clone(&db), limits()).reading_only();
        reader.execute("BEGIN", &[]).await.expect("begin");
        let seen = reader
            .execute("SELECT count(*) FROM t", &[])
            .await
            .expect("select");
        assert_eq!(seen.rows, vec![vec![Value::Integer(1)]]);
        // The writer is free while the read transaction idles; the reader keeps its snapshot.
        writer
            .execute("INSERT INTO t VALUES (2)", &[])
            .await
            .expect("not blocked");
        let again = reader
            .execute("SELECT count(*) FROM t", &[])
            .await
            .expect("select");
        assert_eq!(
            again.rows,
            vec![vec![Value::Integer(1)]],
            "a consistent snapshot"
        );
        let refused = reader.execute("INSERT INTO t VALUES (3)", &[]).await;
        assert!(refused.is_err(), "a reader cannot write");
        reader.execute("ROLLBACK", &[]).await.expect("end");
        // Dropped mid-transaction, a reader goes back to the pool and is cleaned up.
        let mut gone = Session::new(Arc::clone(&db), limits()).reading_only();
        gone.execute("BEGIN", &[]).await.expect("begin");
        gone.execute("SELECT 1", &[]).await.expect("select");
        drop(gone);
        for _ in 0..4 {
            let n = writer
                .execute("SELECT count(*) FROM t", &[])
                .await
                .expect("select");
            assert_eq!(n.rows, vec![vec![Value::Integer(2)]]);
        }
    }

    #[tokio::test]
    async fn a_statement_past_its_timeout_or_cancelled_is_interrupted() {
        let (_dir, _engine, db) = scratch(&EngineMetrics::default()).await;
        let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        let mut session = Session::new(
            Arc::clone(&db),
            SessionLimits {
                statement_timeout: Duration::from_millis(200),
                ..limits()
            },
        );
        let started = std::time::Instant::now();
        let err = session.execute(slow, &[]).await.expect_err("timeout");
        assert_eq!(err.code, sqlstate::QUERY_CANCELED);
        assert!(started.elapsed() < Duration::from_secs(3));

        let mut session = Session::new(Arc::clone(&db), limits());
        let cancel = session.cancel_handle();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let err = session.execute(slow, &[]).await.expect_err("cancelled");
        assert_eq!(err.code, sqlstate::QUERY_CANCELED);
        canceller.await.expect("canceller");
        // The connection is usable again.
        let ok = session.execute("SELECT 2", &[]).await.expect("select");
        assert_eq!(ok.rows, vec![vec![Value::Integer(2)]]);
    }

    #[tokio::test]
    async fn databases_are_created_and_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = engine(dir.path()).await;
        engine.create_database("shop").await.expect("create");
        assert_eq!(
            engine.create_database("shop").await.expect_err("dup").code,
            sqlstate::DUPLICATE_DATABASE
        );
        assert_eq!(engine.databases().await.expect("list"), ["quartet", "shop"]);
        assert!(dir.path().join("shop.db").is_file());
        engine.drop_database("shop").await.expect("drop");
        assert!(!dir.path().join("shop.db").exists());
        assert_eq!(
            engine.database("shop").await.expect_err("gone").code,
            sqlstate::INVALID_CATALOG_NAME
        );
        assert_eq!(
            engine.create_database("../x").await.expect_err("bad").code,
            sqlstate::INVALID_PARAMETER_VALUE
        );
    }
}
