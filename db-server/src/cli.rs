//! `db-server backup DB FILE` and `db-server restore DB FILE`: snapshots by hand, on the same
//! data folder the server uses (`--env`, `--config` as for the server).
//!
//! A backup may run while the server serves: the server takes it and sends it over its
//! control socket (`control`), since its database files are closed to other processes while
//! it runs; a restore needs the server stopped (or use `POST /db/{name}/restore`, which refuses while sessions use the
//! database).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::control;
use crate::engine::{self, DatabaseOptions, Durability, Engine};

#[derive(Debug, Parser)]
#[command(name = "db-server", about = "Snapshots of db-server's databases")]
struct SnapshotCli {
    #[command(subcommand)]
    command: SnapshotCommand,
    /// development, staging or production [default: $QUARTET_ENV, else development]
    #[arg(long, global = true, value_name = "NAME")]
    env: Option<String>,
    /// An extra configuration file; repeatable, later files win.
    #[arg(long = "config", global = true, value_name = "FILE")]
    config: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Write a consistent, checked snapshot of DATABASE to FILE (which must not exist).
    Backup { database: String, file: PathBuf },
    /// Replace DATABASE (created if needed) with the snapshot in FILE, once it checks out.
    /// The server must be stopped.
    Restore { database: String, file: PathBuf },
}

/// Runs `db-server backup|restore …`.
pub fn main() -> ExitCode {
    let cli = SnapshotCli::parse();
    common::cli::run_command(
        "db-server",
        common::Role::Db,
        cli.env.as_deref(),
        cli.config.clone(),
        |config| run(cli.command, config),
    )
}

async fn run(command: SnapshotCommand, config: common::Config) -> Result<String, engine::SqlError> {
    let dir = config.data_dir.join("db");
    let options = DatabaseOptions {
        durability: Durability::Full,
        readers: 1,
        paths: Default::default(),
    };
    if !config.db.backend.is_sqlite() {
        return Err(engine::SqlError::new(
            engine::sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "db.backend is {}: back it up with pg_dump and restore with pg_restore",
                config.db.backend
            ),
        ));
    }
    match command {
        SnapshotCommand::Backup { database, file } => {
            if file.exists() {
                return Err(engine::SqlError::new(
                    engine::sqlstate::DUPLICATE_OBJECT,
                    format!("{} exists: a backup never overwrites", file.display()),
                ));
            }
            let outcome = match engine::lock_dir(&dir) {
                // The folder is free: the snapshot is taken here, the folder locked meanwhile
                // so that no server starts on it halfway.
                Ok(_lock) => {
                    let engine = Engine::open(&dir, options).await?;
                    let taken = engine.backup_to(&database, &file).await;
                    engine.close().await;
                    match taken {
                        Ok(()) => engine::check_snapshot(&file).await,
                        Err(err) => Err(err),
                    }
                }
                // A running server has the folder (and its files): it takes the snapshot.
                Err(err) if err.code == engine::sqlstate::OBJECT_IN_USE => {
                    match control::request_backup(&dir, &database, &file).await {
                        Ok(_) => engine::check_snapshot(&file).await,
                        Err(err) => Err(err),
                    }
                }
                Err(err) => Err(err),
            };
            if outcome.is_err() {
                let _ = std::fs::remove_file(&file);
            }
            outcome?;
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            Ok(format!(
                "wrote {} ({size} bytes; integrity_check ok)",
                file.display()
            ))
        }
        SnapshotCommand::Restore { database, file } => {
            let _lock = engine::lock_dir(&dir).map_err(|err| {
                engine::SqlError::new(
                    err.code,
                    format!(
                        "{}: stop db-server first, or use POST /db/{database}/restore",
                        err.message
                    ),
                )
            })?;
            let engine = Engine::open(&dir, options).await?;
            let outcome = engine.restore_from(&database, &file).await;
            engine.close().await;
            outcome?;
            Ok(format!("restored {database} from {}", file.display()))
        }
    }
}
