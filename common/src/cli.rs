//! The command line every role binary shares: `<role>-server [--env E] [--config F]... [--check]`.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::config::{Config, ConfigError, LoadOptions, Loaded, Origins, Problem, load};
use crate::listeners::Listeners;
use crate::role::Role;
use crate::shutdown::{DRAIN_TIMEOUT, Shutdown, handle_signals};

/// Exit code for an invalid configuration (`--check` and normal start alike).
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A Quartet server role. See README.md for the configuration keys."
)]
pub struct RoleArgs {
    /// development, staging or production [default: $QUARTET_ENV, else development]
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// An extra configuration file, layered over $QUARTET_CONFIG_DIR/{default,<env>}.toml.
    /// Repeatable; later files win.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Validate the configuration, print it with secrets redacted, and exit.
    #[arg(long)]
    pub check: bool,
}

/// A role's own configuration checks, beyond what `common` validates (the web role compiles
/// its sites, for example). Each problem names its key and layer.
pub type RoleCheck = fn(&Config, &Origins) -> Vec<Problem>;

/// For roles with nothing to check beyond `common`.
pub fn no_checks(_: &Config, _: &Origins) -> Vec<Problem> {
    Vec::new()
}

/// Loads the configuration for `roles` from the command line and the process environment,
/// and runs each role's own `checks`.
pub fn load_from_process(
    env_flag: Option<&str>,
    files: Vec<PathBuf>,
    roles: &[Role],
    checks: &[RoleCheck],
) -> Result<(LoadOptions, Loaded), ConfigError> {
    let options = LoadOptions::from_process(env_flag, files)?;
    let loaded = load_checked(&options, roles, checks)?;
    Ok((options, loaded))
}

/// [`load`] followed by the roles' own checks.
pub fn load_checked(
    options: &LoadOptions,
    roles: &[Role],
    checks: &[RoleCheck],
) -> Result<Loaded, ConfigError> {
    let loaded = load(options, roles)?;
    let problems: Vec<Problem> = checks
        .iter()
        .flat_map(|check| check(&loaded.config, &loaded.origins))
        .collect();
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigError { problems })
    }
}

/// What SIGHUP runs: the same layers, read again, checked again.
pub fn reloader(
    options: LoadOptions,
    roles: Vec<Role>,
    checks: Vec<RoleCheck>,
) -> crate::shutdown::Reloader {
    Box::new(move || {
        load_checked(&options, &roles, &checks)
            .map(|loaded| loaded.config)
            .map_err(|err| err.to_string())
    })
}

/// What `--check` prints: the environment, the layers read, warnings, then the effective
/// configuration as TOML with secrets redacted.
pub fn render_check(loaded: &Loaded, roles: &[Role]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    out.push_str(&format!(
        "# configuration is valid for {} ({})\n",
        names.join(", "),
        loaded.config.environment
    ));
    out.push_str("# layers, lowest first:\n");
    for layer in &loaded.layers {
        out.push_str(&format!("#   {layer}\n"));
    }
    for warning in &loaded.warnings {
        out.push_str(&format!("# warning: {warning}\n"));
    }
    out.push_str(&format!(
        "environment = \"{}\"\n",
        loaded.config.environment
    ));
    out.push_str(&loaded.config.to_redacted_toml());
    out
}

/// Worker threads for a process that runs `roles`: one per core, except that with the db
/// role there are twice as many (at least four). db-server runs short SQLite statements on
/// the worker that serves the session (up to 2 ms each, see db-server's `engine::direct`),
/// and a worker inside SQLite reads and writes no socket; spare workers keep the other
/// sessions' traffic moving meanwhile. Measured under pgbench on 2 cores: 5-10 % more point
/// selects per second with four workers than with two. `TOKIO_WORKER_THREADS` overrides.
pub fn worker_threads(roles: &[Role]) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if roles.contains(&Role::Db) {
        (cores * 2).max(4)
    } else {
        cores
    }
}

/// The multi-threaded runtime a process running `roles` serves on ([`worker_threads`]).
pub fn runtime_for(roles: &[Role]) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Tokio reads TOKIO_WORKER_THREADS itself when no count is set here.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(worker_threads(roles));
    }
    builder.build()
}

/// The whole `main` of a role binary: parse arguments, load configuration and run the role's
/// `check` (exit 2 with every problem if it is invalid), `--check`, or bind the listeners and
/// call `run` until SIGTERM/SIGINT. SIGHUP re-reads the configuration.
pub fn main<F, Fut, E>(role: Role, check: RoleCheck, run: F) -> ExitCode
where
    F: FnOnce(Arc<Config>, Listeners, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let args = RoleArgs::parse();
    let program = format!("{role}-server");
    let (options, loaded) =
        match load_from_process(args.env.as_deref(), args.config, &[role], &[check]) {
            Ok(loaded) => loaded,
            Err(err) => {
                eprintln!("{program}: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    if args.check {
        print!("{}", render_check(&loaded, &[role]));
        return ExitCode::SUCCESS;
    }

    let runtime = match runtime_for(&[role]) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{program}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        crate::telemetry::init(&loaded.config.log);
        for warning in &loaded.warnings {
            tracing::warn!("configuration: {warning}");
        }
        let config = Arc::new(loaded.config);
        let listeners = match Listeners::bind(role, &config).await {
            Ok(listeners) => listeners,
            Err(err) => {
                tracing::error!("{err}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = Shutdown::new();
        let reload = reloader(options, vec![role], vec![check]);
        if let Err(err) = handle_signals(shutdown.clone(), Some(reload)) {
            tracing::error!("cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
        let stopped = shutdown.clone();
        let deadline = async move {
            stopped.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT - std::time::Duration::from_millis(200)).await;
        };
        tokio::select! {
            result = run(config, listeners, shutdown.clone()) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{program} failed: {err}");
                    ExitCode::FAILURE
                }
            },
            () = deadline => {
                tracing::warn!("{program} did not stop within {}s", DRAIN_TIMEOUT.as_secs());
                ExitCode::SUCCESS
            }
        }
    })
}

/// A role binary's maintenance command (`db-server backup …`, `mail-server accounts …`):
/// loads the configuration for `role` as the server would, runs `command` on a small runtime,
/// prints what it returns, or reports its error as `program: error` with a non-zero status.
pub fn run_command<F, Fut, E>(
    program: &str,
    role: Role,
    env_flag: Option<&str>,
    files: Vec<PathBuf>,
    command: F,
) -> ExitCode
where
    F: FnOnce(crate::Config) -> Fut,
    Fut: std::future::Future<Output = Result<String, E>>,
    E: std::fmt::Display,
{
    let loaded = match load_from_process(env_flag, files, &[role], &[no_checks]) {
        Ok((_, loaded)) => loaded,
        Err(err) => {
            eprintln!("{program}: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{program}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command(loaded.config)) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{program}: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_db_role_gets_spare_workers() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worker_threads(&[Role::Web]), cores);
        assert_eq!(worker_threads(&[Role::Mail, Role::App]), cores);
        assert_eq!(worker_threads(&[Role::Db]), (2 * cores).max(4));
        assert_eq!(worker_threads(&[Role::Web, Role::Db]), (2 * cores).max(4));
    }
}
