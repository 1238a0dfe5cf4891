//! Running an app's processes: each in its own process group, with a clean environment
//! (`PORT`, `QUARTET_ENV`, `PATH`, `HOME` and nothing of app-server's), resource limits (through
//! `prlimit`), never as root (when app-server is root, through `setpriv` as the app's own user
//! or `app.run_as`, with no new privileges and no supplementary groups), output appended to the
//! app's log with time and process name.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::logs::AppLogs;

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
    #[error("app number {0} has no user ID left in 61184-65519 (app.run_as = \"per-app\")")]
    NoUserIds(u32),
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
    /// app-server is root: every app runs as this user and group (`app.run_as = "name"`).
    Shared { uid: u32, gid: u32 },
    /// app-server is root: each app runs as its own user ID, unnamed, like systemd's
    /// `DynamicUser` (`app.run_as = "per-app"`): apps cannot touch each other's processes or
    /// files.
    PerApp,
}

/// The first of the user IDs `per-app` hands out; systemd's dynamic users take the same range
/// (61184–65519), which distributions leave free of named users.
pub const PER_APP_FIRST_UID: u32 = 61184;
const PER_APP_LAST_UID: u32 = 65519;

impl Identity {
    pub fn resolve(run_as: &str) -> Result<Self, RunError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Identity::Inherit);
        }
        if run_as == "per-app" {
            return Ok(Identity::PerApp);
        }
        match User::from_name(run_as) {
            // Neither root's user nor root's group.
            Ok(Some(user)) if !user.uid.is_root() && user.gid.as_raw() != 0 => {
                Ok(Identity::Shared {
                    uid: user.uid.as_raw(),
                    gid: user.gid.as_raw(),
                })
            }
            _ => Err(RunError::NoSuchUser(run_as.to_owned())),
        }
    }

    /// The user and group the app numbered `number` runs as (`None`: app-server's own).
    pub fn of_app(&self, name: &str, number: u32) -> Result<AppUser, RunError> {
        let ids = match self {
            Identity::Inherit => None,
            Identity::Shared { uid, gid } => Some((*uid, *gid)),
            Identity::PerApp => {
                let uid = PER_APP_FIRST_UID
                    .checked_add(number)
                    .filter(|uid| *uid <= PER_APP_LAST_UID && number > 0)
                    .ok_or(RunError::NoUserIds(number))?;
                Some((uid, uid))
            }
        };
        Ok(AppUser {
            name: name.to_owned(),
            ids,
        })
    }
}

/// An app as the runner sees it: its name (whose log its output goes to) and the user and group
/// its processes run as (`None`: app-server's own user, which is not root).
#[derive(Debug, Clone)]
pub struct AppUser {
    pub name: String,
    pub ids: Option<(u32, u32)>,
}

/// Resource limits of every app process; 0 means no limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub open_files: u64,
    pub processes: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Runner {
    pub identity: Identity,
    pub environment: String,
    pub logs: Arc<AppLogs>,
    pub stop_grace: Duration,
    pub limits: Limits,
    pub ports: Arc<crate::ports::PortPool>,
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

    /// SIGKILL to everything left in the process group (its leader has exited or must go).
    fn kill_group(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// A process dropped without being stopped (a failed deploy's `?`) takes its whole group
/// with it, not only its leader.
impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Kills a process group when dropped.
struct GroupKill(Option<Pid>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Runner {
    /// The command line for `command`: through `setpriv` when dropping root. A simple command
    /// is `exec`ed by the shell, so the process we wait for and signal is the app itself, not a
    /// shell that could leave it behind.
    fn command(&self, app: &AppUser, command: &str) -> Command {
        // `FOO=1 cmd` is an assignment prefix, which `exec` would take for the command.
        let first_word = command.split_whitespace().next().unwrap_or("");
        let simple =
            !command.contains([';', '&', '|', '(', ')', '\n']) && !first_word.contains('=');
        let command = if simple && !command.starts_with("exec ") {
            format!("exec {command}")
        } else {
            command.to_owned()
        };
        // The child becomes the app's user before it executes anything (the spawn sets the
        // group, drops supplementary groups and sets the user between fork and exec), so no
        // program ever runs as root with the app's environment (LD_PRELOAD, PATH…). Then, as
        // the app: prlimit lowers the limits, setpriv sets no-new-privileges, sh runs the
        // command. Absolute paths: the app's PATH is not consulted for them.
        let mut cmd = Command::new("/usr/bin/prlimit");
        let limits = self.limits;
        if limits.open_files > 0 {
            cmd.arg(format!("--nofile={0}:{0}", limits.open_files));
        }
        // Processes are counted per user: only meaningful when the app has a user of its own
        // (on a developer's machine it would count the developer's every process).
        if limits.processes > 0 && app.ids.is_some() {
            cmd.arg(format!("--nproc={0}:{0}", limits.processes));
        }
        if limits.memory_bytes > 0 {
            cmd.arg(format!("--as={0}:{0}", limits.memory_bytes));
        }
        cmd.arg("--")
            .arg("/usr/bin/setpriv")
            .arg("--no-new-privs")
            .arg("--")
            .arg("/bin/sh")
            .arg("-c")
            .arg(command);
        if let Some((uid, gid)) = app.ids {
            cmd.gid(gid).uid(uid);
        }
        cmd.env_clear();
        cmd
    }

    /// Spawns `command` in `dir` with exactly `env`, in its own process group, output piped.
    fn spawn(
        &self,
        app: &AppUser,
        name: &str,
        command: &str,
        dir: &Path,
        env: BTreeMap<String, String>,
    ) -> Result<Child, RunError> {
        let mut cmd = self.command(app, command);
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
        app: &AppUser,
        name: &str,
        command: &str,
        dir: &Path,
        vars: &BTreeMap<String, String>,
        limit: Duration,
        progress: &Progress,
    ) -> Result<(bool, String), RunError> {
        let mut child = self.spawn(app, name, command, dir, self.base_env(dir, vars))?;
        let pgid = child.id().map(|pid| Pid::from_raw(pid as i32));
        // Whatever happens to this future (a schedule stopped with its release), nothing of
        // the command's process group outlives it.
        let _group = GroupKill(pgid);
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
        // A daemon that left the group may hold the pipes open: stop waiting for them.
        for mut reader in readers {
            if tokio::time::timeout(Duration::from_secs(2), &mut reader)
                .await
                .is_err()
            {
                reader.abort();
            }
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
        app: &AppUser,
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
                let pump = pump(
                    Arc::clone(&self.logs),
                    app.name.clone(),
                    name.to_owned(),
                    pipe,
                    tail.clone(),
                );
                tokio::spawn(pump)
            })
            .collect()
    }

    /// Starts a long-running process, on `port` or a fresh one.
    pub fn start(
        &self,
        app: &AppUser,
        name: &str,
        command: &str,
        dir: &Path,
        vars: &BTreeMap<String, String>,
        port: Option<u16>,
    ) -> Result<Running, RunError> {
        let (port, fresh) = match port {
            Some(port) => (port, false),
            None => (self.ports.take().map_err(RunError::Port)?, true),
        };
        let mut env = self.base_env(dir, vars);
        env.insert("PORT".into(), port.to_string());
        let mut child = match self.spawn(app, name, command, dir, env) {
            Ok(child) => child,
            Err(err) => {
                if fresh {
                    self.ports.give_back(port);
                }
                return Err(err);
            }
        };
        self.capture_output(app, name, &mut child, None);
        tracing::info!(app = app.name, process = name, port, "started");
        let pgid = child.id().map(|pid| pid as i32);
        Ok(Running {
            name: name.to_owned(),
            port,
            child,
            pgid,
        })
    }

    /// Waits until the process accepts connections on its port (and, given a health path,
    /// answers it with 2xx or 3xx), or it exits, or `limit`.
    pub async fn wait_ready(
        &self,
        process: &mut Running,
        health_path: Option<&str>,
        limit: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last_answer = None;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before it was ready",
                    process.name
                ));
            }
            let ours = || {
                process.pgid.is_none_or(|pgid| {
                    crate::ports::listened_on_by_group(process.port, pgid) != Some(false)
                })
            };
            if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", process.port)).await {
                // Something answers; make sure it is this process and not another program
                // that took the port first.
                if !ours() {
                    let why = format!(
                        "did not listen on port {}: another program holds it",
                        process.port
                    );
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "{} {why} within {}s",
                            process.name,
                            limit.as_secs()
                        ));
                    }
                    last_answer = Some(why);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let Some(path) = health_path else {
                    return Ok(());
                };
                match tokio::time::timeout(Duration::from_secs(5), probe(stream, path)).await {
                    Ok(Ok(status)) if (200..400).contains(&status) => return Ok(()),
                    Ok(Ok(status)) => last_answer = Some(format!("answered {path} with {status}")),
                    Ok(Err(err)) => last_answer = Some(format!("{path}: {err}")),
                    Err(_) => last_answer = Some(format!("{path} took over 5s to answer")),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let why = last_answer.unwrap_or_else(|| {
                    format!("did not accept connections on port {}", process.port)
                });
                return Err(format!(
                    "{} {why} within {}s",
                    process.name,
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
        }
        process.kill_group();
        let _ = process.child.wait().await;
        self.ports.give_back(process.port);
        tracing::info!(process = process.name, "stopped");
    }

    /// A line of app-server's own in the app's log.
    pub async fn note(&self, app: &AppUser, name: &str, text: &str) {
        self.logs.append(&app.name, name, text).await;
    }
}

/// Copies a process's output into the app's log, line by line (lossy UTF-8, lines capped
/// at 16 KiB), optionally keeping a bounded tail.
async fn pump(
    logs: Arc<AppLogs>,
    app: String,
    name: String,
    pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    tail: Option<std::sync::Arc<std::sync::Mutex<Tail>>>,
) {
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
                logs.append(&app, &name, text).await;
                if let Some(tail) = &tail
                    && let Ok(mut tail) = tail.lock()
                {
                    tail.push(text);
                }
            }
        }
    }
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

/// `GET path` over HTTP/1.1 on `stream`; the status code of the answer.
async fn probe(mut stream: tokio::net::TcpStream, path: &str) -> std::io::Result<u16> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: quartet-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut reader = BufReader::new(stream).take(8192);
    reader.read_until(b'\n', &mut head).await?;
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|code| code.parse().ok()),
    ) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the answer is not HTTP",
        )),
    }
}

/// Gives `dir` and everything in it to the app's user, so that `build:` can write there.
pub fn give_to(app: &AppUser, dir: &Path) -> std::io::Result<()> {
    let Some((uid, gid)) = app.ids else {
        return Ok(());
    };
    chown_tree(dir, uid, gid)
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
        app: &AppUser,
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
            app.clone(),
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
                // The leader is gone; what it left in its group (children holding the port)
                // goes too, or the restart could not bind.
                running.kill_group();
                let exit = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_START;
                }
                let name = running.name.clone();
                tracing::warn!(app = app.name, process = name, %exit, "process exited; restarting in {:?}", backoff);
                runner
                    .note(
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
                        () = task_stop.cancelled() => {
                            runner.ports.give_back(port);
                            return;
                        }
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
                            tracing::error!(app = app.name, process = name, error = %err, "cannot restart; trying again in {:?}", backoff);
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
