//! `db-server [--env E] [--config F]... [--check]`: parse, load, run. See [`db_server::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    common::cli::main(common::Role::Db, common::cli::no_checks, db_server::run)
}
