//! `quartet`: every role in one process (`quartet up`), operations (`quartet check`) and the
//! app-server command line (`quartet app …`).

mod app;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use common::Role;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Quartet: web, database, mail and application servers on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the chosen roles in one process and print what listens where.
    Up(Common),
    /// Validate every chosen role's configuration and print it with secrets redacted.
    Check(Common),
    /// Deploy and manage apps on an app-server, or run one locally (`quartet app local`).
    App(app::AppArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// development, staging or production [default: $QUARTET_ENV, else development]
    #[arg(long, value_name = "NAME")]
    env: Option<String>,
    /// An extra configuration file; repeatable, later files win.
    #[arg(long = "config", value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Comma-separated roles.
    #[arg(long, value_delimiter = ',', default_value = "web,db,mail,app")]
    roles: Vec<Role>,
}

/// mimalloc, as in `db-server`'s binary: the roles run here allocate per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::App(args) => {
            return match app::main(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("quartet app: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Up(ref args) | Command::Check(ref args) => args,
    };
    let mut roles = args.roles.clone();
    roles.sort();
    roles.dedup();
    let checks = up::checks(&roles);
    let (options, loaded) = match common::cli::load_from_process(
        args.env.as_deref(),
        args.config.clone(),
        &roles,
        &checks,
    ) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("quartet: {err}");
            return ExitCode::from(common::cli::EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::Check(_) => {
            print!("{}", common::cli::render_check(&loaded, &roles));
            ExitCode::SUCCESS
        }
        Command::Up(_) => up::run(options, loaded, roles),
        Command::App(_) => unreachable!("handled above"),
    }
}
