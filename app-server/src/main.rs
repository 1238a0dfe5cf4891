//! `app-server [--env E] [--config F]... [--check]`: parse, load, run. See [`app_server::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    common::cli::main(common::Role::App, common::cli::no_checks, app_server::run)
}
