//! `mail-server [--env E] [--config F]... [--check]`: parse, load, run (see
//! [`mail_server::run`]); `mail-server accounts|aliases …`: manage the store (see
//! [`mail_server::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("accounts" | "aliases" | "queue") => mail_server::cli::main(),
        _ => common::cli::main(common::Role::Mail, common::cli::no_checks, mail_server::run),
    }
}
