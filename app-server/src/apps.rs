//! Deploying and running apps: upload → content-addressed build → release → processes started
//! and checked → routing switched → old processes stopped. A failure at any step leaves the
//! running release serving.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use common::clock::unix_now;
use common::proxy::Upstreams;
use sha2::{Digest, Sha256};

use crate::runner::{AppUser, ProcessStatus, Progress, Runner, Supervised, give_to, say};
use crate::source::procfile::Procfile;
use crate::source::seal::{SealLimits, seal_tree};
use crate::source::unpack::{UnpackLimits, unpack};
use crate::store::{Release, Store, StoreError};

/// fsyncs every file and folder under `dir` (a deploy is acknowledged only once durable).
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Links are never followed, and nothing is opened in a way that could block (a FIFO).
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
            .open(path)
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
            open(&path)?.sync_all()?;
        } else if meta.is_file() {
            open(&path)?.sync_all()?;
        }
    }
    Ok(())
}

/// How long a `build:` or `release:` command may run.
const ONE_OFF_LIMIT: Duration = Duration::from_secs(600);
/// Time given to requests already routed to the old release before it is stopped.
const DRAIN: Duration = Duration::from_millis(500);

/// Carries the SHA-256 of a build's tree as sent, so the receiver can tell it arrived whole.
pub const BUILD_DIGEST_HEADER: &str = "x-quartet-build-sha256";

/// What a promotion made on the other app-server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Promoted {
    pub build: String,
    /// The release promoted here, and the one it became there.
    pub from_version: i64,
    pub version: Option<i64>,
    /// Size of the built tree sent, compressed.
    pub bytes: usize,
}

/// The Procfile at the top of a source or built tree: a regular file of at most 64 KiB, never
/// read through a link (root reads it; the tree may come from anyone).
fn read_procfile(dir: &Path) -> Result<Procfile, DeployError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const MAX: u64 = 64 * 1024;
    let missing = || DeployError::Procfile("the source has no Procfile at its top level".into());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(dir.join("Procfile"))
        .map_err(|_| missing())?;
    let meta = file.metadata().map_err(|_| missing())?;
    if !meta.is_file() {
        return Err(missing());
    }
    if meta.len() > MAX {
        return Err(DeployError::Procfile(format!(
            "the Procfile is larger than {MAX} bytes"
        )));
    }
    let mut text = String::new();
    file.take(MAX)
        .read_to_string(&mut text)
        .map_err(|e| DeployError::Procfile(format!("the Procfile is not UTF-8 text: {e}")))?;
    Procfile::parse(&text).map_err(|e| DeployError::Procfile(e.to_string()))
}

/// Builds are named by the SHA-256 of their source, in lowercase hex.
pub fn valid_build_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bad archive: {0}")]
    Archive(String),
    #[error("{0}")]
    Procfile(String),
    #[error("build failed: {0}")]
    Build(String),
    #[error("release command failed: {0}")]
    ReleaseCommand(String),
    #[error("health check failed: {0}")]
    Health(String),
    #[error("{0}")]
    Run(#[from] crate::runner::RunError),
    #[error("{0}")]
    Refused(String),
    #[error("no build {0} on this server")]
    NoBuild(String),
    #[error("promotion failed: {0}")]
    Promote(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug)]
pub struct Apps {
    pub store: Store,
    pub runner: Runner,
    builds_dir: PathBuf,
    limits: UnpackLimits,
    health_timeout: Duration,
    /// What the router sends each app's traffic to; swapped whole, atomically.
    pub routes: ArcSwap<HashMap<String, Arc<Upstreams>>>,
    /// Custom domains → app name.
    pub domains: ArcSwap<HashMap<String, String>>,
    /// Trusted, besides the public roots, when promoting to another app-server over HTTPS
    /// (the development CA, in development).
    pub extra_ca: Option<PathBuf>,
    processes: tokio::sync::Mutex<HashMap<String, Vec<Supervised>>>,
    /// One deploy at a time per app.
    deploying: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The current release's scheduled entries, per app.
    schedulers: std::sync::Mutex<HashMap<String, Scheduler>>,
}

/// What `GET /apps/{name}` shows of a scheduled entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub schedule: String,
    pub command: String,
    /// Unix seconds.
    pub next_run: Option<i64>,
    pub last_run: Option<i64>,
    pub last_result: Option<String>,
    pub running: bool,
}

/// The tasks running one release's schedules; dropped (and so stopped) when replaced.
#[derive(Debug)]
struct Scheduler {
    stop: tokio_util::sync::CancellationToken,
    statuses: Vec<Arc<std::sync::Mutex<ScheduleStatus>>>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Apps {
    pub fn new(
        store: Store,
        runner: Runner,
        data_dir: &Path,
        limits: UnpackLimits,
        health_timeout: Duration,
    ) -> Self {
        Self {
            store,
            runner,
            builds_dir: data_dir.join("app").join("builds"),
            limits,
            health_timeout,
            routes: ArcSwap::from_pointee(HashMap::new()),
            domains: ArcSwap::from_pointee(HashMap::new()),
            extra_ca: None,
            processes: tokio::sync::Mutex::new(HashMap::new()),
            deploying: tokio::sync::Mutex::new(HashMap::new()),
            schedulers: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Uploads, builds and releases `archive` for `app`; returns the release once it serves.
    pub async fn deploy(
        &self,
        app: &str,
        archive: Bytes,
        progress: &Progress,
    ) -> Result<Release, DeployError> {
        self.store.get_app(app).await?;
        let lock = self.lock(app).await;
        let _one_at_a_time = lock.lock().await;
        let hash = format!("{:x}", Sha256::digest(&archive));
        say(
            progress,
            format!(
                "-----> Received {} bytes (build {})",
                archive.len(),
                &hash[..12]
            ),
        );
        let build_dir = self.build(app, &hash, archive, progress).await?;
        self.store.record_build(&hash).await?;
        let config = self.store.config(app).await?;
        self.release(app, &hash, &config, &build_dir, progress)
            .await
    }

    async fn release(
        &self,
        app: &str,
        build: &str,
        config: &BTreeMap<String, String>,
        build_dir: &Path,
        progress: &Progress,
    ) -> Result<Release, DeployError> {
        let release = self.store.create_release(app, build, config).await?;
        say(progress, format!("-----> Releasing v{}", release.version));
        if let Err(err) = self
            .activate(app, &release, build_dir, true, progress)
            .await
        {
            // Kept in the history, marked, so its number is never reused for something else.
            let why = err.to_string();
            let why: String = why.chars().take(4096).collect();
            let _ = self.store.mark_failed(app, release.version, &why).await;
            return Err(err);
        }
        Ok(Release {
            current: true,
            ..release
        })
    }

    /// The app's user, for running its commands.
    async fn user_of(&self, app: &str) -> Result<AppUser, DeployError> {
        let row = self.store.get_app(app).await?;
        Ok(self.runner.identity.of_app(&row.name, row.number)?)
    }

    /// Reloads the custom domain → app map the router reads.
    pub async fn refresh_domains(&self) -> Result<(), StoreError> {
        let apps = self.store.list_apps().await?;
        let map: HashMap<String, String> = apps
            .into_iter()
            .flat_map(|app| {
                let name = app.name;
                app.domains
                    .into_iter()
                    .map(move |domain| (domain.to_ascii_lowercase(), name.clone()))
            })
            .collect();
        self.domains.store(Arc::new(map));
        Ok(())
    }

    async fn lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut deploying = self.deploying.lock().await;
        Arc::clone(deploying.entry(app.to_owned()).or_default())
    }

    /// Changes config vars; if the app runs, a new release with the new config replaces it
    /// (the processes restart with the new environment).
    pub async fn update_config(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<(BTreeMap<String, String>, Option<Release>), DeployError> {
        let lock = self.lock(app).await;
        let _one_at_a_time = lock.lock().await;
        let previous = self.store.config(app).await?;
        let config = self.store.update_config(app, changes).await?;
        let Some(current) = self.store.current_release(app).await? else {
            return Ok((config, None));
        };
        let build_dir = self.build_dir_of(&current.build);
        match self
            .release(app, &current.build, &config, &build_dir, &None)
            .await
        {
            Ok(release) => Ok((config, Some(release))),
            Err(err) => {
                // The running release keeps serving; so does its config.
                let restore: BTreeMap<String, Option<String>> = config
                    .keys()
                    .map(|k| (k.clone(), previous.get(k).cloned()))
                    .chain(previous.iter().map(|(k, v)| (k.clone(), Some(v.clone()))))
                    .collect();
                let _ = self.store.update_config(app, &restore).await;
                Err(err)
            }
        }
    }

    /// A new release with the build and config of `version`.
    pub async fn rollback(&self, app: &str, version: i64) -> Result<Release, DeployError> {
        let lock = self.lock(app).await;
        let _one_at_a_time = lock.lock().await;
        let target = self.store.release(app, version).await?;
        if target.failure.is_some() {
            return Err(DeployError::Refused(format!(
                "v{version} never served (it failed to release); roll back to one that did"
            )));
        }
        let build_dir = self.build_dir_of(&target.build);
        self.release(app, &target.build, &target.config, &build_dir, &None)
            .await
    }

    /// Unpacks and builds once per content hash; builds are immutable.
    async fn build(
        &self,
        app: &str,
        hash: &str,
        archive: Bytes,
        progress: &Progress,
    ) -> Result<PathBuf, DeployError> {
        let build_dir = self.builds_dir.join(hash);
        if build_dir.join("Procfile").is_file() {
            say(
                progress,
                "-----> Same content as an earlier build: reusing it",
            );
            return Ok(build_dir);
        }
        let scratch = self.unpack_to_scratch(hash, archive, self.limits).await?;
        let result = async {
            let procfile = read_procfile(&scratch)?;
            let mut tree = scratch.clone();
            let kinds: Vec<&str> = procfile.processes.keys().map(String::as_str).collect();
            say(progress, format!("-----> Procfile: {}", kinds.join(", ")));
            let user = self.user_of(app).await?;
            if let Some(build) = &procfile.build {
                say(progress, format!("-----> Running build: {build}"));
                give_to(&user, &scratch).map_err(|e| DeployError::Internal(e.to_string()))?;
                let (ok, output) = self
                    .runner
                    .run_once(
                        &user,
                        "build",
                        build,
                        &scratch,
                        &BTreeMap::new(),
                        ONE_OFF_LIMIT,
                        progress,
                    )
                    .await?;
                if !ok {
                    return Err(DeployError::Build(output));
                }
                if user.ids.is_some() {
                    // The app wrote this tree: root copies it into one no app can change.
                    say(progress, "-----> Sealing the build");
                    tree = scratch.with_extension("sealed");
                    let (from, to, limits) = (scratch.clone(), tree.clone(), self.seal_limits());
                    tokio::task::spawn_blocking(move || seal_tree(&from, &to, limits))
                        .await
                        .map_err(|e| DeployError::Internal(e.to_string()))?
                        .map_err(|e| DeployError::Build(e.to_string()))?;
                    let _ = std::fs::remove_dir_all(&scratch);
                }
            }
            Ok(tree)
        }
        .await;
        match result {
            Ok(tree) => self.install_build(&tree, &build_dir),
            Err(err) => {
                let _ = std::fs::remove_dir_all(&scratch);
                let _ = std::fs::remove_dir_all(scratch.with_extension("sealed"));
                Err(err)
            }
        }
    }

    /// What a sealed build may hold: as much as an upload may unpack to, several times over
    /// (a build step installs dependencies).
    fn seal_limits(&self) -> SealLimits {
        SealLimits {
            max_bytes: self.limits.max_bytes.saturating_mul(4),
            max_entries: self.limits.max_entries.saturating_mul(4),
        }
    }

    /// Where build `hash` lives: built here from an upload, else received by promotion
    /// (kept apart, so a promoted tree is never taken for the build of an upload).
    pub fn build_dir_of(&self, hash: &str) -> PathBuf {
        let local = self.builds_dir.join(hash);
        if local.join("Procfile").is_file() {
            local
        } else {
            self.builds_dir.join("promoted").join(hash)
        }
    }

    /// Unpacks `archive` into a fresh scratch folder beside the builds.
    async fn unpack_to_scratch(
        &self,
        hash: &str,
        archive: Bytes,
        limits: UnpackLimits,
    ) -> Result<PathBuf, DeployError> {
        std::fs::create_dir_all(&self.builds_dir)
            .map_err(|e| DeployError::Internal(e.to_string()))?;
        // Unique per attempt: two deploys of the same content never share a scratch tree.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let scratch = self
            .builds_dir
            .join(format!(".{hash}-{}-{nanos}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir(&scratch).map_err(|e| DeployError::Internal(e.to_string()))?;
        let target = scratch.clone();
        let unpacked = tokio::task::spawn_blocking(move || unpack(&archive[..], &target, limits))
            .await
            .map_err(|e| DeployError::Internal(e.to_string()));
        match unpacked {
            Ok(Ok(_)) => Ok(scratch),
            Ok(Err(err)) => {
                let _ = std::fs::remove_dir_all(&scratch);
                Err(DeployError::Archive(err.to_string()))
            }
            Err(err) => {
                let _ = std::fs::remove_dir_all(&scratch);
                Err(err)
            }
        }
    }

    /// Makes a finished scratch tree the build `hash`: back to root (builds are immutable),
    /// on disk for good, then renamed into place before anything uses it.
    fn install_build(&self, tree: &Path, build_dir: &Path) -> Result<PathBuf, DeployError> {
        let internal = |e: std::io::Error| DeployError::Internal(e.to_string());
        if let Err(err) = sync_tree(tree) {
            let _ = std::fs::remove_dir_all(tree);
            return Err(internal(err));
        }
        let parent = build_dir.parent().unwrap_or(&self.builds_dir);
        std::fs::create_dir_all(parent).map_err(internal)?;
        if let Err(err) = std::fs::rename(tree, build_dir) {
            let _ = std::fs::remove_dir_all(tree);
            // The same content was built meanwhile: keep that one. Anything else is a failure.
            if !build_dir.join("Procfile").is_file() {
                return Err(internal(err));
            }
        }
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(internal)?;
        Ok(build_dir.to_path_buf())
    }

    /// Whether the build `hash` is here.
    fn has_build(&self, hash: &str) -> bool {
        valid_build_hash(hash) && self.build_dir_of(hash).join("Procfile").is_file()
    }

    /// A built tree as `tar.gz` (links kept as links), to send to another app-server.
    pub async fn export_build(&self, hash: &str) -> Result<Vec<u8>, DeployError> {
        if !self.has_build(hash) {
            return Err(DeployError::NoBuild(hash.to_owned()));
        }
        let dir = self.build_dir_of(hash);
        tokio::task::spawn_blocking(move || {
            let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            tar.follow_symlinks(false);
            tar.append_dir_all(".", &dir)?;
            tar.into_inner()?.finish()
        })
        .await
        .map_err(|e| DeployError::Internal(e.to_string()))?
        .map_err(|e| DeployError::Internal(format!("packing the build: {e}")))
    }

    /// Receives the built tree of build `hash` from another app-server (promotion): unpacked
    /// with the same limits as an upload, but not built again. Returns whether it was new.
    pub async fn import_build(&self, hash: &str, archive: Bytes) -> Result<bool, DeployError> {
        if !valid_build_hash(hash) {
            return Err(DeployError::Archive(
                "a build is named by 64 lowercase hex digits".into(),
            ));
        }
        if self.has_build(hash) {
            return Ok(false);
        }
        let limits = UnpackLimits {
            symlinks_may_point_outside: true,
            ..self.limits
        };
        let scratch = self.unpack_to_scratch(hash, archive, limits).await?;
        if let Err(err) = read_procfile(&scratch) {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(err);
        }
        let promoted = self.builds_dir.join("promoted").join(hash);
        self.install_build(&scratch, &promoted)?;
        self.store.record_build(hash).await?;
        Ok(true)
    }

    /// Sends the current release's build of `app` to the app-server at `to` (its control API)
    /// and releases it there, as `target_app`, with that server's own config: staging →
    /// production without building again. Answers the release made there.
    pub async fn promote(
        &self,
        app: &str,
        to: &str,
        token: &str,
        target_app: &str,
    ) -> Result<Promoted, DeployError> {
        let current =
            self.store.current_release(app).await?.ok_or_else(|| {
                DeployError::Promote(format!("{app} has no release to promote yet"))
            })?;
        let archive = self.export_build(&current.build).await?;
        let digest = format!("{:x}", Sha256::digest(&archive));
        let mut client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(ONE_OFF_LIMIT);
        if let Some(pem) = self
            .extra_ca
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            && let Ok(ca) = reqwest::Certificate::from_pem(&pem)
        {
            client = client.add_root_certificate(ca);
        }
        let client = client
            .build()
            .map_err(|e| DeployError::Promote(e.to_string()))?;
        let base = to.trim_end_matches('/');
        let unreachable = |e: reqwest::Error| DeployError::Promote(format!("{base}: {e}"));
        let size = archive.len();
        let response = client
            .put(format!("{base}/builds/{}", current.build))
            .bearer_auth(token)
            .header("Content-Type", "application/gzip")
            .header(BUILD_DIGEST_HEADER, &digest)
            .body(archive)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let reason = response.text().await.unwrap_or_default();
            return Err(DeployError::Promote(format!(
                "{base} refused the build ({status}): {}",
                reason.trim()
            )));
        }
        let response = client
            .post(format!("{base}/apps/{target_app}/releases"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "build": current.build }))
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            return Err(DeployError::Promote(format!(
                "{base} did not release {target_app} ({status}): {}",
                answer["error"].as_str().unwrap_or("no reason given")
            )));
        }
        tracing::info!(app, to = base, target_app, build = %current.build, "promoted");
        Ok(Promoted {
            build: current.build,
            from_version: current.version,
            version: answer["version"].as_i64(),
            bytes: size,
        })
    }

    /// Releases build `hash` (already here) with the app's config on this server, as a
    /// promotion does once the build has arrived.
    pub async fn release_build(&self, app: &str, hash: &str) -> Result<Release, DeployError> {
        self.store.get_app(app).await?;
        if !self.has_build(hash) {
            return Err(DeployError::NoBuild(hash.to_owned()));
        }
        let lock = self.lock(app).await;
        let _one_at_a_time = lock.lock().await;
        let config = self.store.config(app).await?;
        let build_dir = self.build_dir_of(hash);
        self.release(app, hash, &config, &build_dir, &None).await
    }

    /// Runs the release command, starts the `web` process, waits for it, switches routing,
    /// records the release as current, and stops the previous processes.
    async fn activate(
        &self,
        app: &str,
        release: &Release,
        build_dir: &Path,
        run_release_command: bool,
        progress: &Progress,
    ) -> Result<(), DeployError> {
        let procfile = read_procfile(build_dir)?;
        let vars = &release.config;
        let row = self.store.get_app(app).await?;
        let user = self.runner.identity.of_app(&row.name, row.number)?;
        if let Some(command) = procfile.release.as_ref().filter(|_| run_release_command) {
            say(progress, format!("-----> Running release: {command}"));
            let (ok, output) = self
                .runner
                .run_once(
                    &user,
                    "release",
                    command,
                    build_dir,
                    vars,
                    ONE_OFF_LIMIT,
                    progress,
                )
                .await?;
            if !ok {
                return Err(DeployError::ReleaseCommand(output));
            }
        }
        if !procfile.processes.contains_key("web") {
            return Err(DeployError::Procfile(
                "no `web` process type to route traffic to".into(),
            ));
        }
        let formation = self.store.formation(app).await?;
        let mut started = Vec::new();
        let mut failure = None;
        'types: for (kind, command) in &procfile.processes {
            let default = u32::from(kind == "web");
            let count = formation.get(kind).copied().unwrap_or(default);
            for index in 1..=count {
                let name = format!("{kind}.{index}");
                let mut process = match self
                    .runner
                    .start(&user, &name, command, build_dir, vars, None)
                {
                    Ok(process) => process,
                    Err(err) => {
                        failure = Some(DeployError::Run(err));
                        break 'types;
                    }
                };
                let starting = format!("starting v{} on port {}", release.version, process.port);
                self.runner.note(&user, &name, &starting).await;
                say(
                    progress,
                    format!("-----> Starting {name} on port {}", process.port),
                );
                // Web processes must accept connections before they get traffic.
                if kind == "web"
                    && let Err(reason) = self
                        .runner
                        .wait_ready(
                            &mut process,
                            row.health_path.as_deref(),
                            self.health_timeout,
                        )
                        .await
                {
                    self.runner.stop(process).await;
                    failure = Some(DeployError::Health(reason));
                    break 'types;
                }
                started.push((kind.clone(), command.clone(), process));
            }
        }
        if let Some(failure) = failure {
            for (_, _, process) in started {
                self.runner.stop(process).await;
            }
            return Err(failure);
        }
        if let Err(err) = self.store.set_current(app, release.version).await {
            // The app was deleted meanwhile, or the store failed: nothing new may keep running.
            for (_, _, process) in started {
                self.runner.stop(process).await;
            }
            return Err(err.into());
        }
        let mut supervised = Vec::new();
        let mut web_ports = Vec::new();
        for (kind, command, process) in started {
            if kind == "web" {
                web_ports.push(format!("http://127.0.0.1:{}", process.port));
            }
            supervised.push(
                self.runner
                    .supervise(&user, &command, build_dir, vars, process),
            );
        }
        let upstreams = if web_ports.is_empty() {
            None
        } else {
            Some(Upstreams::parse(&web_ports, "/", 5).map_err(DeployError::Internal)?)
        };
        self.routes.rcu(|current| {
            let mut routes = HashMap::clone(current);
            match &upstreams {
                Some(upstreams) => routes.insert(app.to_owned(), Arc::clone(upstreams)),
                None => routes.remove(app),
            };
            routes
        });
        let old = self
            .processes
            .lock()
            .await
            .insert(app.to_owned(), supervised);
        self.schedule(&user, &procfile, build_dir, vars);
        tracing::info!(app, version = release.version, build = %release.build, "released");
        let serving = format!("v{} serves traffic", release.version);
        self.runner.note(&user, "app-server", &serving).await;
        if let Some(old) = old {
            tokio::time::sleep(DRAIN).await;
            for process in old {
                let name = process.status().name;
                process.stop().await;
                self.runner.note(&user, &name, "stopped (replaced)").await;
            }
        }
        Ok(())
    }

    /// Sets how many of each process type run, and restarts the current release with it.
    pub async fn scale(
        &self,
        app: &str,
        counts: &BTreeMap<String, u32>,
    ) -> Result<(), DeployError> {
        let lock = self.lock(app).await;
        let _one_at_a_time = lock.lock().await;
        let previous = self.store.formation(app).await?;
        self.store.set_formation(app, counts).await?;
        if let Some(current) = self.store.current_release(app).await? {
            let build_dir = self.build_dir_of(&current.build);
            // Same release, new formation: its release command already ran.
            if let Err(err) = self.activate(app, &current, &build_dir, false, &None).await {
                // What runs is still the old formation; so is what is recorded.
                let restore: BTreeMap<String, u32> = counts
                    .keys()
                    .map(|kind| {
                        let default = u32::from(kind == "web");
                        (kind.clone(), previous.get(kind).copied().unwrap_or(default))
                    })
                    .collect();
                let _ = self.store.set_formation(app, &restore).await;
                return Err(err);
            }
        }
        Ok(())
    }

    /// Restarts the current release's processes (new processes first, as in a deploy).
    pub async fn restart(&self, app: &str) -> Result<Option<i64>, DeployError> {
        let lock = self.lock(app).await;
        let _one_at_a_time = lock.lock().await;
        let Some(current) = self.store.current_release(app).await? else {
            self.store.get_app(app).await?;
            return Ok(None);
        };
        let build_dir = self.build_dir_of(&current.build);
        self.activate(app, &current, &build_dir, false, &None)
            .await?;
        Ok(Some(current.version))
    }

    /// Runs the release's scheduled entries at their times, with the release's environment;
    /// a run still going when the next is due is skipped (and logged). Replaces the schedules
    /// of the previous release.
    fn schedule(
        &self,
        app: &AppUser,
        procfile: &Procfile,
        build_dir: &Path,
        vars: &BTreeMap<String, String>,
    ) {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut statuses = Vec::new();
        for (name, entry) in &procfile.scheduled {
            let status = Arc::new(std::sync::Mutex::new(ScheduleStatus {
                name: name.clone(),
                schedule: entry.spec.clone(),
                command: entry.command.clone(),
                next_run: entry.schedule.next_after(unix_now()),
                last_run: None,
                last_result: None,
                running: false,
            }));
            statuses.push(Arc::clone(&status));
            let (runner, app, name, entry, dir, vars, stop) = (
                self.runner.clone(),
                app.clone(),
                name.clone(),
                entry.clone(),
                build_dir.to_path_buf(),
                vars.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Some(next) = entry.schedule.next_after(unix_now()) else {
                        return;
                    };
                    if let Ok(mut s) = status.lock() {
                        s.next_run = Some(next);
                    }
                    let wait = Duration::from_secs(u64::try_from(next - unix_now()).unwrap_or(0));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return,
                    }
                    let already = status.lock().map(|s| s.running).unwrap_or(true);
                    if already {
                        tracing::warn!(
                            app = app.name,
                            schedule = name,
                            "previous run still going; this one is skipped"
                        );
                        runner
                            .note(&app, &name, "previous run still going; skipped")
                            .await;
                        continue;
                    }
                    if let Ok(mut s) = status.lock() {
                        s.running = true;
                        s.last_run = Some(unix_now());
                    }
                    let (runner, app, name, command, dir, vars, status, stop) = (
                        runner.clone(),
                        app.clone(),
                        name.clone(),
                        entry.command.clone(),
                        dir.clone(),
                        vars.clone(),
                        Arc::clone(&status),
                        stop.clone(),
                    );
                    tokio::spawn(async move {
                        let run = runner.run_once(
                            &app,
                            &name,
                            &command,
                            &dir,
                            &vars,
                            ONE_OFF_LIMIT,
                            &None,
                        );
                        let result = tokio::select! {
                            result = run => match result {
                                Ok((true, _)) => "succeeded".to_owned(),
                                Ok((false, _)) => "failed".to_owned(),
                                Err(err) => err.to_string(),
                            },
                            () = stop.cancelled() => "stopped with its release".to_owned(),
                        };
                        if let Ok(mut s) = status.lock() {
                            s.running = false;
                            s.last_result = Some(result);
                        }
                    });
                }
            });
        }
        if let Ok(mut schedulers) = self.schedulers.lock() {
            schedulers.insert(app.name.clone(), Scheduler { stop, statuses });
        }
    }

    /// The app's scheduled entries as they are now.
    pub fn schedules(&self, app: &str) -> Vec<ScheduleStatus> {
        self.schedulers
            .lock()
            .ok()
            .and_then(|schedulers| {
                schedulers.get(app).map(|scheduler| {
                    scheduler
                        .statuses
                        .iter()
                        .filter_map(|s| s.lock().ok().map(|s| s.clone()))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// The app's processes as they are now.
    pub async fn status(&self, app: &str) -> Vec<ProcessStatus> {
        self.processes
            .lock()
            .await
            .get(app)
            .map(|processes| processes.iter().map(Supervised::status).collect())
            .unwrap_or_default()
    }

    /// Brings every app back to its current release (on start).
    pub async fn restore(&self) {
        if let Err(err) = self.refresh_domains().await {
            tracing::error!(error = %err, "cannot read the apps' domains");
        }
        let releases = match self.store.current_releases().await {
            Ok(releases) => releases,
            Err(err) => {
                tracing::error!(error = %err, "cannot read releases to restore");
                return;
            }
        };
        for release in releases {
            let build_dir = self.build_dir_of(&release.build);
            // Already released once: bring it back without running `release:` again.
            if let Err(err) = self
                .activate(&release.app, &release, &build_dir, false, &None)
                .await
            {
                tracing::error!(app = release.app, version = release.version, error = %err, "could not restore release");
            }
        }
    }

    /// Stops every process (role shutdown).
    pub async fn stop_all(&self) {
        if let Ok(mut schedulers) = self.schedulers.lock() {
            schedulers.clear();
        }
        let all: Vec<Supervised> = self
            .processes
            .lock()
            .await
            .drain()
            .flat_map(|(_, processes)| processes)
            .collect();
        for process in all {
            process.stop().await;
        }
    }

    /// Deletes an app: waits for a deploy in progress (so it cannot bring the app back),
    /// forgets it, its route and its logs, and stops its processes.
    pub async fn delete(&self, app: &str) -> Result<(), StoreError> {
        let lock = self.lock(app).await;
        let _one_at_a_time = lock.lock().await;
        self.store.delete_app(app).await?;
        self.routes.rcu(|current| {
            let mut routes = HashMap::clone(current);
            routes.remove(app);
            routes
        });
        if let Ok(mut schedulers) = self.schedulers.lock() {
            schedulers.remove(app);
        }
        let processes = self.processes.lock().await.remove(app).unwrap_or_default();
        for process in processes {
            process.stop().await;
        }
        self.runner.logs.remove(app).await;
        if let Err(err) = self.refresh_domains().await {
            tracing::error!(error = %err, "cannot read the apps' domains");
        }
        Ok(())
    }
}
