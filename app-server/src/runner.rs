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

/// Where a deploy's progress goes as it happens (the streamed answer to an upload), if anywhere.
pub type Progress = Option<tokio::sync::mpsc::UnboundedSender<String>>;

/// Sends one progress line.
pub fn say(progress: &Progress, line: impl Into<String>) {
    if let Some(progress) = progress {
        let _ = progress.send(line.into());
    }
}

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
    /// The process group (the leader's pid at spawn), signalled even after the leader is gone.
    pgid: Option<i32>,
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
        // `FOO=1 cmd` is an assignment prefix, which `exec` would take for the command.
        let first_word = command.split_whitespace().next().unwrap_or("");
        let simple =
            !command.contains([';', '&', '|', '(', ')', '\n']) && !first_word.contains('=');
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

    /// Spawns `command` in `dir` with exactly `env`, in its own process group, output piped.
    fn spawn(
        &self,
        name: &str,
        command: &str,
        dir: &Path,
        env: BTreeMap<String, String>,
    ) -> Result<Child, RunError> {
        let mut cmd = self.command(command);
        cmd.envs(env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd.spawn().map_err(|source| RunError::Spawn {
            name: name.to_owned(),
            source,
        })
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
    /// and the tail of its output (all of it goes to the app's log). Anything it left running
    /// in its process group is killed afterwards.
    #[allow(clippy::too_many_arguments)] // one-off runs are described by all of these
    pub async fn run_once(
        &self,
        app: &str,
        name: &str,
        command: &str,
        dir: &Path,
        vars: &BTreeMap<String, String>,
        limit: Duration,
        progress: &Progress,
    ) -> Result<(bool, String), RunError> {
        let mut child = self.spawn(name, command, dir, self.base_env(dir, vars))?;
        let pgid = child.id().map(|pid| Pid::from_raw(pid as i32));
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Tail {
            progress: progress.clone(),
            ..Tail::default()
        }));
        let readers =
            self.capture_output(app, name, &mut child, Some(std::sync::Arc::clone(&tail)));
        let waited = tokio::time::timeout(limit, child.wait()).await;
        if let Some(group) = pgid {
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = child.wait().await;
        for reader in readers {
            let _ = reader.await;
        }
        let output = tail.lock().map(|t| t.text()).unwrap_or_default();
        match waited {
            Ok(Ok(status)) => Ok((status.success(), output)),
            Ok(Err(source)) => Err(RunError::Spawn {
                name: name.to_owned(),
                source,
            }),
            Err(_) => Ok((
                false,
                format!(
                    "{output}\n{name} did not finish within {}s",
                    limit.as_secs()
                ),
            )),
        }
    }

    /// Starts copying the child's stdout and stderr into the app's log.
    fn capture_output(
        &self,
        app: &str,
        name: &str,
        child: &mut Child,
        tail: Option<std::sync::Arc<std::sync::Mutex<Tail>>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        type Pipe = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
        let stdout = child.stdout.take().map(|p| Box::new(p) as Pipe);
        let stderr = child.stderr.take().map(|p| Box::new(p) as Pipe);
        [stdout, stderr]
            .into_iter()
            .flatten()
            .map(|pipe| {
                let pump = self
                    .clone()
                    .pump(app.to_owned(), name.to_owned(), pipe, tail.clone());
                tokio::spawn(pump)
            })
            .collect()
    }

    /// Copies a process's output into the app's log, line by line (lossy UTF-8, lines capped
    /// at 16 KiB), optionally keeping a bounded tail.
    async fn pump(
        self,
        app: String,
        name: String,
        pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        tail: Option<std::sync::Arc<std::sync::Mutex<Tail>>>,
    ) {
        use tokio::io::AsyncReadExt;
        const MAX_LINE: u64 = 16 * 1024;
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            let mut limited = (&mut reader).take(MAX_LINE);
            match limited.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']);
                    self.append_log(&app, &name, text).await;
                    if let Some(tail) = &tail
                        && let Ok(mut tail) = tail.lock()
                    {
                        tail.push(text);
                    }
                }
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
        let mut child = self.spawn(name, command, dir, env)?;
        self.capture_output(app, name, &mut child, None);
        tracing::info!(app, process = name, port, "started");
        let pgid = child.id().map(|pid| pid as i32);
        Ok(Running {
            name: name.to_owned(),
            port,
            child,
            pgid,
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

    /// SIGTERM to the process group, then SIGKILL to whatever of the group is left after the
    /// leader exits or the grace period ends (a member ignoring SIGTERM does not survive).
    pub async fn stop(&self, mut process: Running) {
        if let Some(pgid) = process.pgid {
            let group = Pid::from_raw(pgid);
            let _ = killpg(group, Signal::SIGTERM);
            let _ = tokio::time::timeout(self.stop_grace, process.child.wait()).await;
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = process.child.wait().await;
        tracing::info!(process = process.name, "stopped");
    }

    /// A line of app-server's own in the app's log.
    pub async fn note(&self, app: &str, name: &str, text: &str) {
        self.append_log(app, name, text).await;
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

/// The last 64 KiB of a command's output, for the deploy's answer.
#[derive(Debug, Default)]
struct Tail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
    /// Each line also goes here as it arrives.
    progress: Progress,
}

impl Tail {
    const MAX: usize = 64 * 1024;

    fn push(&mut self, line: &str) {
        say(&self.progress, line);
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_owned());
        while self.bytes > Self::MAX {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }

    fn text(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
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
    chown_tree(dir, *uid, *gid)
}

/// Gives a built tree back to root (readable by all, writable by no app), so a build stays
/// immutable whichever app runs it.
pub fn take_back(identity: &Identity, dir: &Path) -> std::io::Result<()> {
    if matches!(identity, Identity::Inherit) {
        return Ok(());
    }
    chown_tree(dir, 0, 0)
}

/// Changes the owner of everything under `dir`, deepest first and without following links:
/// while a folder's contents are being changed it still belongs to its previous owner, so
/// nothing in it can be swapped for a link in the meantime.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut order = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
        order.push(path);
    }
    for path in order.iter().rev() {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)?;
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
