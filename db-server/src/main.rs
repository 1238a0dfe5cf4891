//! `db-server [--env E] [--config F]... [--check]`: parse, load, run (see [`db_server::run`]);
//! `db-server backup|restore DB FILE`: snapshots by hand (see [`db_server::cli`]).

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: a query allocates and frees a few dozen small buffers
/// (protocol messages, rows), and glibc's allocator was 3-5 % of db-server's time under
/// pgbench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("backup" | "restore") => db_server::cli::main(),
        _ => common::cli::main(common::Role::Db, common::cli::no_checks, db_server::run),
    }
}
