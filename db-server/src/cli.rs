//! `db-server backup DB FILE` and `db-server restore DB FILE`: snapshots by hand, on the same
//! data folder the server uses (`--env`, `--config` as for the server).
//!
//! A backup may run while the server serves (SQLite readers never block it); a restore needs
//! the server stopped (or use `POST /db/{name}/restore`, which refuses while sessions use the
//! database).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
            let engine = Engine::open(&dir, options).await?;
            let outcome = async {
                engine.backup_to(&database, &file).await?;
                engine::check_snapshot(&file).await
            }
            .await;
            engine.close().await;
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
