//! Running an app's processes: each in its own process group, with a clean environment
//! (`PORT`, `QUARTET_ENV`, `PATH`, `HOME` and nothing of app-server's), never as root (when
//! app-server is root, through `setpriv` as `app.run_as` with no new privileges and no
//! supplementary groups), output appended to the app's log with time and process name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("app-server runs as root but the user {0:?} (app.run_as) does not exist")]
    NoSuchUser(String),
    #[error("no free port: {0}")]
    Port(std::io::Error),
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
}

/// Who apps run as.
#[derive(Debug, Clone)]
pub enum Identity {
    /// app-server is not root: apps run as the same (unprivileged) user.
    Inherit,
    /// app-server is root: apps run as this user and group.
    User { uid: u32, gid: u32 },
}

impl Identity {
    pub fn resolve(run_as: &str) -> Result<Self, RunError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Identity::Inherit);
        }
        match User::from_name(run_as) {
            Ok(Some(user)) if !user.uid.is_root() => Ok(Identity::User {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            _ => Err(RunError::NoSuchUser(run_as.to_owned())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Runner {
    pub identity: Identity,
    pub environment: String,
    pub logs_dir: PathBuf,
    pub stop_grace: Duration,
}

/// One running process of a release.
#[derive(Debug)]
pub struct Running {
    pub name: String,
    pub port: u16,
    child: Child,
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Runner {
    /// The command line for `command`: through `setpriv` when dropping root. A simple command
    /// is `exec`ed by the shell, so the process we wait for and signal is the app itself, not a
    /// shell that could leave it behind.
    fn command(&self, command: &str) -> Command {
        let simple = !command.contains([';', '&', '|', '(', ')', '\n']);
        let command = if simple && !command.starts_with("exec ") {
            format!("exec {command}")
        } else {
            command.to_owned()
        };
        let command = command.as_str();
        let mut cmd = match self.identity {
            Identity::Inherit => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(command);
                cmd
            }
            Identity::User { uid, gid } => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--no-new-privs")
                    .arg("--")
                    .arg("sh")
                    .arg("-c")
                    .arg(command);
                cmd
            }
        };
        cmd.env_clear();
        cmd
    }

    /// Defaults, then the app's config vars (which may override them), then what app-server
    /// decides (`QUARTET_ENV`; `PORT` is added per process).
    fn base_env(&self, dir: &Path, vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
        env.insert("HOME".into(), dir.display().to_string());
        env.insert("LANG".into(), "C.UTF-8".into());
        env.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("QUARTET_ENV".into(), self.environment.clone());
        env
    }

    /// Runs a one-off command (`build:`, `release:`) to completion; returns its exit success
    /// and its combined output.
    pub async fn run_once(
        &self,
        app: &str,
        name: &str,
        command: &str,
        dir: &Path,
        vars: &BTreeMap<String, String>,
        limit: Duration,
    ) -> Result<(bool, String), RunError> {
        let mut cmd = self.command(command);
        cmd.envs(self.base_env(dir, vars))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| RunError::Spawn {
            name: name.to_owned(),
            source,
        })?;
        let pgid = child.id();
        match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(output)) => {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                self.append_log(app, name, &text).await;
                Ok((output.status.success(), text))
            }
            Ok(Err(source)) => Err(RunError::Spawn {
                name: name.to_owned(),
                source,
            }),
            Err(_) => {
                if let Some(pgid) = pgid {
                    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
                }
                Ok((
                    false,
                    format!("{name} did not finish within {}s", limit.as_secs()),
                ))
            }
        }
    }

    /// Starts a long-running process, on `port` or a fresh one.
    pub fn start(
        &self,
        app: &str,
        name: &str,
        command: &str,
        dir: &Path,
        vars: &BTreeMap<String, String>,
        port: Option<u16>,
    ) -> Result<Running, RunError> {
        let port = match port {
            Some(port) => port,
            None => free_port().map_err(RunError::Port)?,
        };
        let mut env = self.base_env(dir, vars);
        env.insert("PORT".into(), port.to_string());
        let mut cmd = self.command(command);
        cmd.envs(env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
            name: name.to_owned(),
            source,
        })?;
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let runner = self.clone();
            let (app, name) = (app.to_owned(), name.to_owned());
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    runner.append_log(&app, &name, &line).await;
                }
            });
        }
        tracing::info!(app, process = name, port, "started");
        Ok(Running {
            name: name.to_owned(),
            port,
            child,
        })
    }

    /// Waits until the process accepts connections on its port, or it exits, or `limit`.
    pub async fn wait_ready(&self, process: &mut Running, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before accepting connections",
                    process.name
                ));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", process.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} did not accept connections on port {} within {}s",
                    process.name,
                    process.port,
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to the process group, SIGKILL after the grace period.
    pub async fn stop(&self, mut process: Running) {
        if let Some(pid) = process.child.id() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if tokio::time::timeout(self.stop_grace, process.child.wait())
                .await
                .is_err()
            {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = process.child.wait().await;
            }
        }
        tracing::info!(process = process.name, "stopped");
    }

    async fn append_log(&self, app: &str, name: &str, text: &str) {
        let path = self.logs_dir.join(format!("{app}.log"));
        let time = httpdate_now();
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(&format!("{time} {name}: {line}\n"));
        }
        if let Ok(mut file) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
        {
            let _ = file.write_all(out.as_bytes()).await;
        }
    }
}

fn httpdate_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    format!("{secs:.3}")
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Gives `dir` and everything in it to the apps' user, so that `build:` can write there.
pub fn give_to(identity: &Identity, dir: &Path) -> std::io::Result<()> {
    let Identity::User { uid, gid } = identity else {
        return Ok(());
    };
    let owner = (
        Some(nix::unistd::Uid::from_raw(*uid)),
        Some(nix::unistd::Gid::from_raw(*gid)),
    );
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &path,
            owner.0,
            owner.1,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// What `GET /apps/{name}` shows of a process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessStatus {
    pub name: String,
    pub port: u16,
    pub state: &'static str,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

/// A supervised process: restarted with exponential backoff when it exits on its own (reset
/// after a stable minute), stopped (SIGTERM, then SIGKILL) when asked.
#[derive(Debug)]
pub struct Supervised {
    pub port: u16,
    pub status: std::sync::Arc<std::sync::Mutex<ProcessStatus>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// First delay before restarting a crashed process, and the cap.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A process that ran this long is considered stable: its backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(60);

impl Supervised {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    pub fn status(&self) -> ProcessStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

impl Runner {
    /// Hands a started (and checked) process to a supervisor task.
    pub fn supervise(
        &self,
        app: &str,
        command: &str,
        dir: &Path,
        vars: &BTreeMap<String, String>,
        running: Running,
    ) -> Supervised {
        let status = std::sync::Arc::new(std::sync::Mutex::new(ProcessStatus {
            name: running.name.clone(),
            port: running.port,
            state: "up",
            restarts: 0,
            last_exit: None,
        }));
        let stop = tokio_util::sync::CancellationToken::new();
        let port = running.port;
        let (runner, app, command, dir, vars) = (
            self.clone(),
            app.to_owned(),
            command.to_owned(),
            dir.to_path_buf(),
            vars.clone(),
        );
        let (task_status, task_stop) = (std::sync::Arc::clone(&status), stop.clone());
        let task = tokio::spawn(async move {
            let mut running = running;
            let mut backoff = BACKOFF_START;
            let mut started = tokio::time::Instant::now();
            loop {
                let exit = tokio::select! {
                    exit = running.child.wait() => exit,
                    () = task_stop.cancelled() => {
                        runner.stop(running).await;
                        return;
                    }
                };
                let exit = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_START;
                }
                let name = running.name.clone();
                tracing::warn!(app, process = name, %exit, "process exited; restarting in {:?}", backoff);
                runner
                    .append_log(
                        &app,
                        &name,
                        &format!("exited ({exit}); restarting in {backoff:?}"),
                    )
                    .await;
                if let Ok(mut s) = task_status.lock() {
                    s.state = "crashed";
                    s.last_exit = Some(exit);
                }
                // Never abandoned: keep trying, further apart each time.
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = task_stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    // Same port: the route to it stays valid.
                    match runner.start(&app, &name, &command, &dir, &vars, Some(port)) {
                        Ok(restarted) => {
                            running = restarted;
                            started = tokio::time::Instant::now();
                            if let Ok(mut s) = task_status.lock() {
                                s.state = "up";
                                s.restarts += 1;
                            }
                            break;
                        }
                        Err(err) => {
                            tracing::error!(app, process = name, error = %err, "cannot restart; trying again in {:?}", backoff);
                            if let Ok(mut s) = task_status.lock() {
                                s.state = "restart failed";
                                s.last_exit = Some(err.to_string());
                            }
                        }
                    }
                }
            }
        });
        Supervised {
            port,
            status,
            stop,
            task,
        }
    }
}
