//! `quartet app …`: the command line for app-server's control API (what the Heroku CLI is to
//! Heroku), and `quartet app local`, which runs an app on this machine the way app-server does.

mod client;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use client::ApiClient;

#[derive(Debug, Args)]
pub struct AppArgs {
    /// app-server's control API.
    #[arg(
        long,
        global = true,
        env = "QUARTET_APP_API",
        default_value = "http://127.0.0.1:7070"
    )]
    api: String,
    /// Its bearer token (`app.api_token`; development's is `dev`).
    #[arg(
        long,
        global = true,
        env = "QUARTET_APP_TOKEN",
        default_value = "dev",
        hide_default_value = true
    )]
    token: String,
    /// A PEM certificate to trust besides the public roots, e.g. data/development/tls/ca.pem.
    #[arg(long, global = true, env = "QUARTET_CA", value_name = "FILE")]
    cacert: Option<PathBuf>,
    #[command(subcommand)]
    command: AppCommand,
}

/// Which app a command is about: `--app`, else `$QUARTET_APP`, else the current folder's name.
#[derive(Debug, Args)]
struct Which {
    #[arg(short, long, env = "QUARTET_APP")]
    app: Option<String>,
}

impl Which {
    fn name(&self, folder: Option<&Path>) -> anyhow::Result<String> {
        if let Some(app) = &self.app {
            return Ok(app.clone());
        }
        let folder = match folder {
            Some(folder) => folder.to_path_buf(),
            None => std::env::current_dir()?,
        };
        let folder_name = std::fs::canonicalize(&folder)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        match app_server::store::app_name_from(&folder_name) {
            Some(name) => Ok(name),
            None => bail!("which app? pass --app NAME (or set QUARTET_APP)"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// Create an app.
    Create {
        name: String,
        /// A host name routed to the app besides NAME.{app.domain}; repeatable.
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// A path new web processes must answer with 2xx/3xx before they get traffic.
        #[arg(long)]
        health_path: Option<String>,
    },
    /// List the apps.
    Apps,
    /// Show an app: its release, processes, formation and schedules.
    Info(Which),
    /// Upload a folder (with its Procfile), build it and release it; shows the build as it runs.
    Deploy {
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        which: Which,
    },
    /// Show config vars, or change them (`set K=V…`, `unset K…`): a new release.
    Config {
        #[command(flatten)]
        which: Which,
        #[command(subcommand)]
        change: Option<ConfigChange>,
    },
    /// List an app's releases.
    Releases(Which),
    /// A new release with the build and config of release VERSION.
    Rollback {
        version: i64,
        #[command(flatten)]
        which: Which,
    },
    /// Set how many processes of each type run: `scale web=2 worker=1`.
    Scale {
        #[arg(required = true, value_name = "TYPE=COUNT")]
        counts: Vec<String>,
        #[command(flatten)]
        which: Which,
    },
    /// Restart an app's processes (new ones first, as a deploy does).
    Restart(Which),
    /// Show an app's log; `-f` keeps following it.
    Logs {
        #[command(flatten)]
        which: Which,
        /// Lines from the end.
        #[arg(short = 'n', long, default_value_t = 100)]
        tail: usize,
        #[arg(short, long)]
        follow: bool,
    },
    /// Send the current release's build to another app-server and release it there.
    Promote {
        #[command(flatten)]
        which: Which,
        /// The other app-server's control API, e.g. https://prod.example.org:7070.
        #[arg(long)]
        to: String,
        /// Its token.
        #[arg(long, env = "QUARTET_PROMOTE_TOKEN")]
        to_token: String,
        /// The app's name there (default: the same).
        #[arg(long)]
        to_app: Option<String>,
    },
    /// Delete an app, its releases and its logs.
    Destroy {
        name: String,
        /// The app's name again.
        #[arg(long)]
        confirm: String,
    },
    /// Run a folder's app on this machine as app-server would, until Ctrl-C.
    Local {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where the app answers (127.0.0.1:PORT, any Host).
        #[arg(short, long, default_value_t = 5000)]
        port: u16,
        /// A config var; repeatable, wins over the env file.
        #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Config vars from this file if it exists [default: DIR/.env].
        #[arg(long)]
        env_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigChange {
    /// Set vars: `set KEY=VALUE…`.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove vars.
    Unset {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// Runs `quartet app …`; errors are printed by the caller.
pub fn main(args: AppArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: AppArgs) -> anyhow::Result<()> {
    if let AppCommand::Local {
        dir,
        port,
        vars,
        env_file,
    } = args.command
    {
        return local(dir, port, &vars, env_file).await;
    }
    let api = ApiClient::new(&args.api, &args.token, args.cacert.as_deref())?;
    match args.command {
        AppCommand::Create {
            name,
            domains,
            health_path,
        } => {
            let mut body = json!({ "name": name });
            if !domains.is_empty() {
                body["domains"] = json!(domains);
            }
            if let Some(path) = health_path {
                body["health_path"] = json!(path);
            }
            api.call(Method::POST, "/apps", &body).await?;
            println!("Created {name}. Deploy it with: quartet app deploy DIR --app {name}");
        }
        AppCommand::Apps => {
            let apps = api.get("/apps").await?;
            for app in apps.as_array().into_iter().flatten() {
                println!("{}", app["name"].as_str().unwrap_or("?"));
            }
        }
        AppCommand::Info(which) => {
            let app = api.get(&format!("/apps/{}", which.name(None)?)).await?;
            print_info(&app);
        }
        AppCommand::Deploy { dir, which } => {
            let name = which.name(Some(&dir))?;
            deploy(&api, &name, &dir).await?;
        }
        AppCommand::Config { which, change } => {
            let name = which.name(None)?;
            let path = format!("/apps/{name}/config");
            let changes: BTreeMap<String, Value> = match change {
                None => {
                    let config = api.get(&path).await?;
                    for (key, value) in config.as_object().into_iter().flatten() {
                        println!("{key}={}", value.as_str().unwrap_or_default());
                    }
                    return Ok(());
                }
                Some(ConfigChange::Set { pairs }) => pairs
                    .iter()
                    .map(|pair| {
                        let (key, value) = split_pair(pair)?;
                        Ok((key.to_owned(), json!(value)))
                    })
                    .collect::<anyhow::Result<_>>()?,
                Some(ConfigChange::Unset { keys }) => {
                    keys.into_iter().map(|key| (key, Value::Null)).collect()
                }
            };
            let answer = api.call(Method::PUT, &path, &json!(changes)).await?;
            match answer["release"].as_i64() {
                Some(version) => println!("Config changed; released v{version}."),
                None => println!("Config changed; it applies from the first deploy."),
            }
        }
        AppCommand::Releases(which) => {
            let releases = api
                .get(&format!("/apps/{}/releases", which.name(None)?))
                .await?;
            for release in releases.as_array().into_iter().flatten() {
                println!(
                    "v{:<4} {} build {} {} vars{}",
                    release["version"],
                    unix_time(release["created_at"].as_i64().unwrap_or(0)),
                    &release["build"].as_str().unwrap_or("")
                        [..12.min(release["build"].as_str().map_or(0, str::len))],
                    release["config"].as_object().map_or(0, |c| c.len()),
                    match (release["current"] == true, release["failure"].as_str()) {
                        (true, _) => "  (current)".to_owned(),
                        (false, Some(why)) => format!("  (failed: {why})"),
                        (false, None) => String::new(),
                    },
                );
            }
        }
        AppCommand::Rollback { version, which } => {
            let name = which.name(None)?;
            let answer = api
                .call(
                    Method::POST,
                    &format!("/apps/{name}/rollback"),
                    &json!({ "version": version }),
                )
                .await?;
            println!(
                "Rolled back {name} to v{version}'s build and config: released v{}.",
                answer["version"]
            );
        }
        AppCommand::Scale { counts, which } => {
            let name = which.name(None)?;
            let mut formation = BTreeMap::new();
            for pair in &counts {
                let (kind, count) = split_pair(pair)?;
                let count: u32 = count
                    .parse()
                    .with_context(|| format!("{pair}: the count is not a number"))?;
                formation.insert(kind.to_owned(), count);
            }
            api.call(
                Method::PUT,
                &format!("/apps/{name}/formation"),
                &json!(formation),
            )
            .await?;
            println!("Scaled {name}: {}", counts.join(" "));
        }
        AppCommand::Restart(which) => {
            let name = which.name(None)?;
            api.call(Method::POST, &format!("/apps/{name}/restart"), &json!({}))
                .await?;
            println!("Restarted {name}.");
        }
        AppCommand::Logs {
            which,
            tail,
            follow,
        } => logs(&api, &which.name(None)?, tail, follow).await?,
        AppCommand::Promote {
            which,
            to,
            to_token,
            to_app,
        } => {
            let name = which.name(None)?;
            let mut body = json!({ "to": to, "token": to_token });
            if let Some(target) = &to_app {
                body["app"] = json!(target);
            }
            eprintln!("-----> Promoting {name}'s current build to {to}");
            let answer = api
                .call(Method::POST, &format!("/apps/{name}/promote"), &body)
                .await?;
            let promoted = &answer["promoted"];
            println!(
                "Promoted v{} (build {}) of {name}: released v{} of {} at {to}.",
                promoted["from_version"],
                promoted["build"].as_str().unwrap_or("?"),
                promoted["version"],
                to_app.as_deref().unwrap_or(&name),
            );
        }
        AppCommand::Destroy { name, confirm } => {
            if confirm != name {
                bail!("--confirm must repeat the app's name ({name})");
            }
            api.send(api.request(Method::DELETE, &format!("/apps/{name}")))
                .await?;
            println!("Destroyed {name}.");
        }
        AppCommand::Local { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn split_pair(pair: &str) -> anyhow::Result<(&str, &str)> {
    pair.split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .with_context(|| format!("{pair:?}: expected KEY=VALUE"))
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn unix_time(secs: i64) -> String {
    common::clock::readable(secs)
}

fn print_info(app: &Value) {
    let name = app["name"].as_str().unwrap_or("?");
    println!("=== {name}");
    match app["release"].as_i64() {
        Some(version) => println!(
            "Release:   v{version} (build {})",
            app["build"].as_str().unwrap_or("?")
        ),
        None => println!("Release:   none yet"),
    }
    if let Some(domains) = app["domains"].as_array().filter(|d| !d.is_empty()) {
        let list: Vec<&str> = domains.iter().filter_map(Value::as_str).collect();
        println!("Domains:   {}", list.join(", "));
    }
    if let Some(path) = app["health_path"].as_str() {
        println!("Health:    GET {path}");
    }
    println!("Processes:");
    for process in app["processes"].as_array().into_iter().flatten() {
        let last = process["last_exit"]
            .as_str()
            .map(|e| format!(", last exit: {e}"))
            .unwrap_or_default();
        println!(
            "  {:<12} {:<14} port {:<6} restarts {}{last}",
            process["name"].as_str().unwrap_or("?"),
            process["state"].as_str().unwrap_or("?"),
            process["port"],
            process["restarts"],
        );
    }
    for schedule in app["schedules"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} {:<14} next {} last {}",
            schedule["name"].as_str().unwrap_or("?"),
            schedule["schedule"].as_str().unwrap_or("?"),
            schedule["next_run"]
                .as_i64()
                .map_or_else(|| "-".into(), unix_time),
            schedule["last_result"].as_str().unwrap_or("-"),
        );
    }
}

/// Packs `dir`, uploads it with a progress bar, then prints the build as it runs; fails if
/// the release did not go live.
async fn deploy(api: &ApiClient, name: &str, dir: &Path) -> anyhow::Result<()> {
    let folder = dir.to_path_buf();
    let packed =
        tokio::task::spawn_blocking(move || app_server::source::pack::pack_dir(&folder)).await??;
    let size = packed.archive.len() as u64;
    eprintln!(
        "-----> Packed {} files from {} ({size} bytes)",
        packed.files,
        dir.display()
    );
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "       Uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )?
        .progress_chars("=> "),
    );
    let archive = bytes::Bytes::from(packed.archive);
    let chunks: Vec<bytes::Bytes> = (0..archive.len())
        .step_by(64 * 1024)
        .map(|start| archive.slice(start..(start + 64 * 1024).min(archive.len())))
        .collect();
    let counted = bar.clone();
    let body = futures_util::stream::iter(chunks).map(move |chunk| {
        counted.inc(chunk.len() as u64);
        Ok::<_, std::convert::Infallible>(chunk)
    });
    let response = api
        .send(
            api.request(Method::POST, &format!("/apps/{name}/builds"))
                .header("Content-Type", "application/gzip")
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await;
    bar.finish_and_clear();
    let response = response?;
    eprintln!("-----> Uploaded; building on app-server");
    let mut last = String::new();
    for_each_line(response, |line| {
        if !last.is_empty() {
            println!("{last}");
        }
        last = line.to_owned();
    })
    .await?;
    let status: Value = serde_json::from_str(&last)
        .with_context(|| format!("the build's last line is not its status: {last}"))?;
    if status["status"] == "released" {
        println!(
            "-----> Released v{} of {name} (build {})",
            status["version"],
            status["build"].as_str().unwrap_or("?")
        );
        Ok(())
    } else {
        bail!(
            "the deploy failed: {}",
            status["error"].as_str().unwrap_or("no reason given")
        )
    }
}

/// Calls `each` with every line of a streamed answer as it arrives.
async fn for_each_line(
    response: reqwest::Response,
    mut each: impl FnMut(&str),
) -> anyhow::Result<()> {
    // Lines end with LF, CR or CR LF (as server-sent events define them).
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n' || *b == b'\r') {
            if pending[end] == b'\r' && end + 1 == pending.len() {
                break; // a CR at the end of a chunk may be the first half of CR LF
            }
            let crlf = pending[end] == b'\r' && pending.get(end + 1) == Some(&b'\n');
            let line: Vec<u8> = pending.drain(..=end).collect();
            if crlf {
                pending.remove(0);
            }
            each(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref());
        }
    }
    if !pending.is_empty() {
        each(String::from_utf8_lossy(&pending).trim_end_matches(['\r', '\n']));
    }
    Ok(())
}

async fn logs(api: &ApiClient, name: &str, tail: usize, follow: bool) -> anyhow::Result<()> {
    let path = format!("/apps/{name}/logs?tail={tail}&follow={follow}");
    let response = api.send(api.request(Method::GET, &path)).await?;
    if !follow {
        print!("{}", response.text().await?);
        return Ok(());
    }
    // Server-sent events: `data:` lines are log lines; an `event: skipped` says some were lost.
    let mut event = String::new();
    let mut stdout = std::io::stdout();
    for_each_line(response, |line| {
        if let Some(kind) = line.strip_prefix("event:") {
            event = kind.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            let data = data.strip_prefix(' ').unwrap_or(data);
            if event == "skipped" {
                eprintln!("({data})");
            } else {
                let _ = writeln!(stdout, "{data}");
                let _ = stdout.flush();
            }
        } else if line.is_empty() {
            event.clear();
        }
    })
    .await
}

async fn local(
    dir: PathBuf,
    port: u16,
    pairs: &[String],
    env_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let env_path = env_file.clone().unwrap_or_else(|| dir.join(".env"));
    let mut vars = match std::fs::read_to_string(&env_path) {
        Ok(text) => app_server::local::parse_dotenv(&text)
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", env_path.display()))?,
        Err(_) if env_file.is_none() => BTreeMap::new(),
        Err(err) => bail!("{}: {err}", env_path.display()),
    };
    for pair in pairs {
        let (key, value) = split_pair(pair)?;
        vars.insert(key.to_owned(), value.to_owned());
    }
    let options = app_server::local::LocalOptions {
        dir,
        port,
        vars,
        environment: "development".into(),
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    app_server::local::run_local(options, stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs() {
        assert_eq!(split_pair("A=b=c").unwrap(), ("A", "b=c"));
        assert!(split_pair("=x").is_err() && split_pair("novalue").is_err());
    }
}
