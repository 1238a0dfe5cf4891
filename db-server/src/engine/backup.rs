//! Snapshots: taken on a schedule (`db.backup.every`, `db.backup.keep`) and by hand
//! (`db-server backup DB FILE`), each a consistent copy (`VACUUM INTO`) that passes
//! `PRAGMA integrity_check` before it counts; restores go through [`Engine::restore_from`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Engine, SqlError, check_snapshot, sqlstate};

/// A scratch file beside the databases (a snapshot on its way out, an upload on its way in),
/// removed when dropped.
#[derive(Debug)]
pub struct ScratchFile(PathBuf);

impl ScratchFile {
    /// A fresh name beside `database`'s file, tagged with `what` it is for.
    pub fn beside(engine: &Engine, database: &str, what: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Self(
            engine
                .path_of(database)
                .with_extension(format!("{what}-{nanos}")),
        )
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where the scheduled snapshots of `database` go.
pub fn snapshot_dir(engine_dir: &Path, database: &str) -> PathBuf {
    engine_dir.join("backups").join(database)
}

/// Takes one checked snapshot of `database` into `dir`, named by time, and keeps the newest
/// `keep` there. Returns its path.
pub async fn take_snapshot(
    engine: &Engine,
    database: &str,
    dir: &Path,
    keep: usize,
) -> Result<PathBuf, SqlError> {
    let io = |e: std::io::Error| {
        SqlError::new(sqlstate::INTERNAL_ERROR, format!("{}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let stamp = common::clock::compact(common::clock::unix_now());
    let path = dir.join(format!("{database}-{stamp}.db"));
    let partial = dir.join(format!(".{database}-{stamp}.partial"));
    let _ = std::fs::remove_file(&partial);
    let taken = async {
        engine.backup_to(database, &partial).await?;
        check_snapshot(&partial).await?;
        std::fs::rename(&partial, &path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }
    .await;
    if let Err(err) = taken {
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    prune(dir, database, keep);
    Ok(path)
}

/// Deletes all but the newest `keep` snapshots of `database` in `dir`.
fn prune(dir: &Path, database: &str, keep: usize) {
    let prefix = format!("{database}-");
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".db"))
                })
                .collect()
        })
        .unwrap_or_default();
    // Names carry a sortable UTC time.
    snapshots.sort();
    let excess = snapshots.len().saturating_sub(keep);
    for old in &snapshots[..excess] {
        if let Err(err) = std::fs::remove_file(old) {
            tracing::warn!(path = %old.display(), error = %err, "cannot remove an old snapshot");
        }
    }
}

/// Snapshots every database every `every`, until `stop`.
pub async fn run_schedule(
    engine: std::sync::Arc<Engine>,
    engine_dir: PathBuf,
    every: Duration,
    keep: usize,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let databases = match engine.databases().await {
            Ok(databases) => databases,
            Err(err) => {
                tracing::error!(error = %err, "scheduled snapshots: cannot list databases");
                continue;
            }
        };
        for database in databases {
            let dir = snapshot_dir(&engine_dir, &database);
            match take_snapshot(&engine, &database, &dir, keep).await {
                Ok(path) => tracing::info!(database, path = %path.display(), "snapshot taken"),
                Err(err) => tracing::error!(database, error = %err, "snapshot failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{DatabaseOptions, Durability, Session, SessionLimits};
    use std::sync::Arc;

    /// A snapshot reads beside the writer: a transaction holding the writer neither blocks it
    /// nor shows up in it.
    #[tokio::test]
    async fn a_snapshot_neither_waits_for_the_writer_nor_sees_uncommitted_rows() {
        use crate::engine::tests::{limits, open_snapshot, scratch};
        use crate::engine::value::Value;
        let (dir, engine, db) = scratch(&Default::default()).await;
        let mut session = Session::new(Arc::clone(&db), limits());
        for sql in [
            "CREATE TABLE t (id INTEGER PRIMARY KEY)",
            "INSERT INTO t VALUES (1)",
            "BEGIN",
            // RETURNING keeps the transaction on the writer until it ends.
            "INSERT INTO t VALUES (2) RETURNING id",
        ] {
            session.execute(sql, &[]).await.expect(sql);
        }
        let file = dir.path().join("during.db");
        tokio::time::timeout(Duration::from_secs(2), engine.backup_to("quartet", &file))
            .await
            .expect("the snapshot does not wait for the writer")
            .expect("snapshot");
        session.execute("COMMIT", &[]).await.expect("commit");
        let live = session
            .execute("SELECT count(*) FROM t", &[])
            .await
            .expect("count");
        assert_eq!(live.rows, vec![vec![Value::Integer(2)]]);

        check_snapshot(&file)
            .await
            .expect("the snapshot checks out");
        let mut alone = open_snapshot(&file).await;
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM t ORDER BY id")
            .fetch_all(&mut alone)
            .await
            .expect("select");
        assert_eq!(ids, vec![1], "only what was committed");
    }

    #[tokio::test]
    async fn snapshots_are_checked_kept_by_number_and_restore() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(
            dir.path(),
            DatabaseOptions {
                durability: Durability::Full,
                readers: 1,
                paths: Default::default(),
            },
        )
        .await
        .expect("engine");
        engine
            .bootstrap("admin", "pw", Some("shop"))
            .await
            .expect("bootstrap");
        let limits = SessionLimits {
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(1),
            max_rows: 0,
        };
        {
            let mut session = Session::new(engine.database("shop").await.expect("db"), limits);
            for sql in ["CREATE TABLE t (a)", "INSERT INTO t VALUES (1)"] {
                session.execute(sql, &[]).await.expect("setup");
            }
        }
        let snapshots = snapshot_dir(dir.path(), "shop");
        let first = take_snapshot(&engine, "shop", &snapshots, 2)
            .await
            .expect("snapshot");
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            take_snapshot(&engine, "shop", &snapshots, 2)
                .await
                .expect("snapshot");
        }
        let kept: Vec<_> = std::fs::read_dir(&snapshots).expect("dir").collect();
        assert_eq!(kept.len(), 2, "the oldest is pruned");
        assert!(!first.exists());

        // Restore one over a changed database; refused while a session holds it.
        let latest = std::fs::read_dir(&snapshots)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .max()
            .expect("a snapshot");
        let db = engine.database("shop").await.expect("db");
        let mut session = Session::new(Arc::clone(&db), limits);
        session.execute("DELETE FROM t", &[]).await.expect("delete");
        let busy = engine
            .restore_from("shop", &latest)
            .await
            .expect_err("in use");
        assert_eq!(busy.code, sqlstate::OBJECT_IN_USE);
        drop(session);
        drop(db);
        engine.restore_from("shop", &latest).await.expect("restore");
        let mut session = Session::new(engine.database("shop").await.expect("db"), limits);
        let rows = session
            .execute("SELECT a FROM t", &[])
            .await
            .expect("select");
        assert_eq!(rows.rows.len(), 1);
    }

    /// `db.backup.every` and `db.backup.keep`: the schedule snapshots every database at each
    /// tick, keeps the newest `keep` of each, and ends when told to stop.
    #[tokio::test]
    async fn the_schedule_snapshots_every_database_and_keeps_the_newest() {
        let (dir, engine, db) = crate::engine::tests::scratch(&Default::default()).await;
        let mut session = Session::new(db, crate::engine::tests::limits());
        for sql in ["CREATE TABLE t (a)", "INSERT INTO t VALUES (1)"] {
            session.execute(sql, &[]).await.expect("setup");
        }
        engine
            .bootstrap("admin", "pw", Some("shop"))
            .await
            .expect("a second database");
        let engine = Arc::new(engine);
        let stop = tokio_util::sync::CancellationToken::new();
        // Snapshot files are named by the second: ticks a little over one apart.
        let schedule = tokio::spawn(run_schedule(
            Arc::clone(&engine),
            dir.path().to_path_buf(),
            Duration::from_millis(1100),
            2,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(3700)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), schedule)
            .await
            .expect("the schedule stops when told")
            .expect("schedule task");
        for database in ["quartet", "shop"] {
            let kept: Vec<PathBuf> = std::fs::read_dir(snapshot_dir(dir.path(), database))
                .expect("snapshot folder")
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .collect();
            assert_eq!(kept.len(), 2, "{database}: three taken, two kept: {kept:?}");
            for file in &kept {
                check_snapshot(file).await.expect("a sound snapshot");
            }
        }
    }
}
