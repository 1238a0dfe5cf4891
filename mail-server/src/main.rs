//! `mail-server [--env E] [--config F]... [--check]`: parse, load, run. See [`mail_server::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    common::cli::main(common::Role::Mail, mail_server::run)
}
