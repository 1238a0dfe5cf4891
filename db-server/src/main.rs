//! `db-server [--env E] [--config F]... [--check]`: parse, load, run (see [`db_server::run`]);
//! `db-server backup|restore DB FILE`: snapshots by hand (see [`db_server::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("backup" | "restore") => db_server::cli::main(),
        _ => common::cli::main(common::Role::Db, common::cli::no_checks, db_server::run),
    }
}
