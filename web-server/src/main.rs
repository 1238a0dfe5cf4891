//! `web-server [--env E] [--config F]... [--check]`: parse, load, run. See [`web_server::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    common::cli::main(common::Role::Web, web_server::check, web_server::run)
}
