//! `quartet app local DIR`: runs an app on the developer's machine exactly as app-server runs
//! it, because it *is* app-server's pipeline, in-process, with a throwaway data folder: the
//! folder packed as `quartet app deploy` would upload it, unpacked with the same limits, the
//! `build:` and `release:` steps, each process with `PORT`, `QUARTET_ENV` and the config vars
//! (from `.env` and `--env`) and nothing else of the caller's environment, supervision and
//! schedules, the same log lines, and the router in front on `--port` (any Host).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::apps::{Apps, DeployError};
use crate::logs::AppLogs;
use crate::runner::{Identity, Limits, RunError, Runner};
use crate::source::pack::{PackError, pack_dir};
use crate::source::unpack::UnpackLimits;
use crate::store::{AppSettings, Store, StoreError};

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The app's folder (with its Procfile).
    pub dir: PathBuf,
    /// Where the router listens on 127.0.0.1.
    pub port: u16,
    /// Config vars, as `PUT /apps/{name}/config` would set them.
    pub vars: BTreeMap<String, String>,
    /// `QUARTET_ENV` for the app.
    pub environment: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// Reads a `.env` file: `KEY=value` lines, `#` comments, optional `export `, values optionally
/// in single or double quotes.
pub fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=value", index + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "line {}: {key:?} is not a variable name",
                index + 1
            ));
        }
        let value = value.trim();
        let unquoted = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(open, close)| {
                value
                    .strip_prefix(*open)
                    .and_then(|v| v.strip_suffix(*close))
            })
            .unwrap_or(value);
        vars.insert(key.to_owned(), unquoted.to_owned());
    }
    Ok(vars)
}

/// Runs the app in `options.dir` until `stop` completes, printing its log lines to stdout and
/// the deploy's progress to stderr.
pub async fn run_local(
    options: LocalOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), LocalError> {
    let dir = options.dir.clone();
    let packed = tokio::task::spawn_blocking(move || pack_dir(&dir))
        .await
        .map_err(|e| io("packing")(std::io::Error::other(e)))??;
    // Bind first: a port already taken fails before anything is built.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(io(format!("127.0.0.1:{}", options.port)))?;
    let address = listener.local_addr().map_err(io("listener"))?;

    let work = std::env::temp_dir().join(format!(
        "quartet-local-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&work).map_err(io(work.display().to_string()))?;
    // Apps may run as their own user (when this runs as root): let them reach their build.
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io(work.display().to_string()))?;
    let result = run_in(&work, options, packed.archive, listener, address, stop).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_in(
    work: &std::path::Path,
    options: LocalOptions,
    archive: Vec<u8>,
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), LocalError> {
    let name = app_name(&options.dir);
    let store = Store::open(work).await?;
    let logs = Arc::new(
        AppLogs::new(work.join("app").join("logs"), 64 * 1024 * 1024, 1)
            .map_err(io("log folder"))?,
    );
    let runner = Runner {
        identity: Identity::resolve("per-app")?,
        environment: options.environment.clone(),
        logs: Arc::clone(&logs),
        stop_grace: Duration::from_secs(10),
        limits: Limits {
            open_files: 4096,
            processes: 512,
            memory_bytes: 0,
        },
        ports: Arc::new(crate::ports::PortPool::new(20000, 29999)),
    };
    let apps = Arc::new(Apps::new(
        store.clone(),
        runner,
        work,
        UnpackLimits {
            max_entries: 50_000,
            max_bytes: 1 << 30,
            symlinks_may_point_outside: false,
        },
        Duration::from_secs(30),
    ));
    store.create_app(&name, &AppSettings::default()).await?;
    let changes = options
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    store.update_config(&name, &changes).await?;

    let mut lines = logs.follow(&name);
    let printer = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match lines.recv().await {
                Ok(line) => println!("{line}"),
                Err(RecvError::Lagged(skipped)) => eprintln!("({skipped} log lines skipped)"),
                Err(RecvError::Closed) => break,
            }
        }
    });
    let (progress, mut said) = tokio::sync::mpsc::unbounded_channel::<String>();
    let narrator = tokio::spawn(async move {
        while let Some(line) = said.recv().await {
            eprintln!("{line}");
        }
    });
    let deployed = apps
        .deploy(&name, bytes::Bytes::from(archive), &Some(progress))
        .await;
    let _ = narrator.await;
    let release = match deployed {
        Ok(release) => release,
        Err(err) => {
            printer.abort();
            return Err(err.into());
        }
    };
    eprintln!(
        "-----> v{} of {name} is up: http://{address}/ (Ctrl-C stops it)",
        release.version
    );
    let router = axum::Router::new()
        .fallback(crate::router::route)
        .with_state(crate::router::Router {
            apps: Arc::clone(&apps),
            proxy: common::proxy::Proxy::new(Duration::from_secs(5), Duration::from_secs(60)),
            suffix: ".localhost".into(),
            fallback_app: Some(name),
        });
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
    .map_err(io("serving"));
    apps.stop_all().await;
    printer.abort();
    store.close().await;
    served
}

/// The folder's name as an app name (`My App` → `my-app`), or `app`.
fn app_name(dir: &std::path::Path) -> String {
    let base = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    crate::store::app_name_from(&base).unwrap_or_else(|| "app".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines() {
        let vars = parse_dotenv(
            "# comment\nA=1\nexport B = two words \nC=\"quoted # not a comment\"\nD='x'\n\nE=\n",
        )
        .expect("parses");
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "quoted # not a comment");
        assert_eq!(vars["D"], "x");
        assert_eq!(vars["E"], "");
        assert!(parse_dotenv("NOVALUE\n").unwrap_err().contains("line 1"));
        assert!(parse_dotenv("BAD KEY=1\n").is_err());
    }

    #[test]
    fn app_names_from_folders() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("My Cool_App");
        std::fs::create_dir(&folder).expect("mkdir");
        assert_eq!(app_name(&folder), "my-cool-app");
    }
}
