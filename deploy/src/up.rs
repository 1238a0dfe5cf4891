//! `quartet up`: binds every chosen role's listeners, prints the table, runs the roles side by
//! side in one runtime, and stops them all on SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use common::cli::RoleCheck;
use common::config::{LoadOptions, Loaded};
use common::shutdown::{DRAIN_TIMEOUT, handle_signals};
use common::{Config, Listeners, Role, Shutdown};
use tokio::task::JoinSet;

/// Each chosen role's own configuration checks.
pub fn checks(roles: &[Role]) -> Vec<RoleCheck> {
    roles
        .iter()
        .map(|role| match role {
            Role::Web => web_server::check as RoleCheck,
            Role::Db | Role::Mail | Role::App => common::cli::no_checks,
        })
        .collect()
}

pub fn run(options: LoadOptions, loaded: Loaded, roles: Vec<Role>) -> ExitCode {
    let runtime = match common::cli::runtime_for(&roles) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("quartet: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(up(options, loaded, roles))
}

async fn up(options: LoadOptions, loaded: Loaded, roles: Vec<Role>) -> ExitCode {
    common::telemetry::init(&loaded.config.log);
    for warning in &loaded.warnings {
        tracing::warn!("configuration: {warning}");
    }
    let mut config = loaded.config;

    // Bind everything first, so a port conflict stops the whole box before any role starts.
    let mut bound = Vec::new();
    for &role in &roles {
        match Listeners::bind(role, &config).await {
            Ok(listeners) => bound.push((role, listeners)),
            Err(err) => {
                tracing::error!("{role}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Wire the roles together: the web role proxies app hosts to the app role.
    let app_traffic =
        bound
            .iter()
            .find(|(role, _)| *role == Role::App)
            .and_then(|(_, listeners)| {
                listeners
                    .addresses()
                    .into_iter()
                    .find(|(spec, _)| spec.name == "http")
                    .map(|(_, addr)| addr)
            });
    if roles.contains(&Role::Web) {
        wire(&mut config, app_traffic);
    }
    let config = Arc::new(config);
    let table = table(&bound);
    let count = bound.len();

    let shutdown = Shutdown::new();
    let plain = common::cli::reloader(options, roles.clone(), checks(&roles));
    let wired_roles = roles.clone();
    let reload: common::shutdown::Reloader = Box::new(move || {
        let mut config = plain()?;
        if wired_roles.contains(&Role::Web) {
            wire(&mut config, app_traffic);
        }
        Ok(config)
    });
    if let Err(err) = handle_signals(shutdown.clone(), Some(reload)) {
        tracing::error!("cannot install signal handlers: {err}");
        return ExitCode::FAILURE;
    }
    // Roles run as plain tasks, not on the shutdown tracker: each role drains the tracker, and
    // must not wait for itself.
    let mut running = JoinSet::new();
    for (role, listeners) in bound {
        let config = Arc::clone(&config);
        let shutdown = shutdown.clone();
        running.spawn(async move { (role, run_role(role, config, listeners, shutdown).await) });
    }

    // The table once every role serves, so what it lists answers.
    let printer = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.wait_ready(count).await;
            if !shutdown.is_triggered() {
                println!("{table}");
            }
        })
    };

    let mut code = ExitCode::SUCCESS;
    let deadline = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT - std::time::Duration::from_millis(200)).await;
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            finished = running.join_next() => match finished {
                None => break,
                Some(Ok((role, Ok(())))) => {
                    if !shutdown.is_triggered() {
                        tracing::error!("{role} stopped on its own; stopping the others");
                        code = ExitCode::FAILURE;
                        shutdown.trigger();
                    }
                }
                Some(Ok((role, Err(err)))) => {
                    tracing::error!("{role} failed: {err}; stopping the others");
                    code = ExitCode::FAILURE;
                    shutdown.trigger();
                }
                Some(Err(err)) => {
                    tracing::error!("a role panicked: {err}; stopping the others");
                    code = ExitCode::FAILURE;
                    shutdown.trigger();
                }
            },
            () = &mut deadline => {
                tracing::warn!("roles did not stop within {}s", DRAIN_TIMEOUT.as_secs());
                break;
            }
        }
    }
    printer.abort();
    code
}

/// In one process, the web role sends `*.{app.domain}` to the app role's traffic listener
/// (unless a configured site already claims those hosts), so `http://hello.localhost:8080`
/// reaches the app `hello` as `http://hello.localhost:7080` does.
fn wire(config: &mut Config, app_traffic: Option<std::net::SocketAddr>) {
    let Some(addr) = app_traffic else { return };
    let pattern = format!("*.{}", config.app.domain.trim_start_matches('.'));
    let claimed = config
        .web
        .sites
        .iter()
        .any(|site| site.hosts.iter().any(|h| h.eq_ignore_ascii_case(&pattern)));
    if claimed {
        return;
    }
    // Without sites, the web role serves a default site from web.root; keep it as the
    // explicit default next to the new app site.
    if config.web.sites.is_empty() {
        config
            .web
            .sites
            .push(common::config::SiteConfig::for_hosts(Vec::new()));
        config.web.wired_default_site = true;
    }
    let mut app_site = common::config::SiteConfig::for_hosts(vec![pattern]);
    app_site.proxy.push(common::config::ProxyRoute {
        path: "/".into(),
        upstreams: vec![format!("http://{addr}")],
        strip_prefix: false,
        health_check: "/".into(),
        health_interval_secs: 5,
    });
    config.web.sites.push(app_site);
}

async fn run_role(
    role: Role,
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    match role {
        Role::Web => web_server::run(config, listeners, shutdown).await?,
        Role::Db => db_server::run(config, listeners, shutdown).await?,
        Role::Mail => mail_server::run(config, listeners, shutdown).await?,
        Role::App => app_server::run(config, listeners, shutdown).await?,
    }
    Ok(())
}

/// The "what listens where" table.
fn table(bound: &[(Role, Listeners)]) -> String {
    let mut rows = vec![[
        "ROLE".to_owned(),
        "LISTENER".to_owned(),
        "PROTOCOL".to_owned(),
        "ADDRESS".to_owned(),
    ]];
    for (role, listeners) in bound {
        for (spec, addr) in listeners.addresses() {
            rows.push([
                role.to_string(),
                spec.name.to_owned(),
                spec.protocol.to_owned(),
                addr.to_string(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..3)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|[role, name, protocol, addr]| {
            format!(
                "{role:<w0$}  {name:<w1$}  {protocol:<w2$}  {addr}",
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
