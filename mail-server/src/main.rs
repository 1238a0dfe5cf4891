//! `mail-server [--env E] [--config F]... [--check]`: parse, load, run. See [`mail_server::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    common::cli::main(common::Role::Mail, common::cli::no_checks, mail_server::run)
}
