//! Test support shared by every crate's tests (feature `test-support`): configuration injected
//! as a map (never by mutating the process environment), roles run in-process on port 0, real
//! binaries spawned with their logs captured, and TLS clients that trust a chosen CA.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::net::TcpStream;

use crate::Config;
use crate::config::{ConfigError, LoadOptions, Loaded, load};
use crate::environment::Environment;
use crate::listeners::Listeners;
use crate::role::Role;
use crate::shutdown::{DRAIN_TIMEOUT, Shutdown};

/// A configuration for one test: its own data and config directories, every listener of every
/// role on `127.0.0.1:0`, and variables kept in a map.
#[derive(Debug)]
pub struct TestConfig {
    pub dir: TempDir,
    pub environment: Environment,
    pub vars: HashMap<String, String>,
    pub files: Vec<PathBuf>,
}

/// `web.http_listen` → `QUARTET__WEB__HTTP_LISTEN`.
pub fn var_name(key: &str) -> String {
    format!("QUARTET__{}", key.to_uppercase().replace('.', "__"))
}

impl TestConfig {
    pub fn new(environment: Environment) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        std::fs::create_dir_all(dir.path().join("config")).expect("create the config directory");
        let mut config = Self {
            environment,
            vars: HashMap::new(),
            files: Vec::new(),
            dir,
        };
        let data_dir = config.dir.path().join("data");
        config = config.set("data_dir", data_dir.to_string_lossy());
        let defaults = crate::config::defaults(environment);
        for (key, _) in defaults {
            if key.ends_with("_listen") {
                config = config.set(key, "127.0.0.1:0");
            }
        }
        config
    }

    /// Sets `key` as a `QUARTET__…` variable would.
    pub fn set(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.vars.insert(var_name(key), value.as_ref().to_owned());
        self
    }

    /// The configuration directory (`default.toml`, `<env>.toml` go here).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Points `tls.cert`/`tls.key` at a development PKI generated under the test's directory
    /// (for staging and production, which refuse to start without certificates). Returns the
    /// CA a client should trust.
    pub fn with_generated_tls(self) -> (Self, PathBuf) {
        let pki = crate::tls::ensure_dev_certificates(&self.dir.path().join("pki"))
            .expect("generate a test PKI");
        let ca = pki.ca_cert.clone();
        let config = self
            .set("tls.cert", pki.cert.to_string_lossy())
            .set("tls.key", pki.key.to_string_lossy());
        (config, ca)
    }

    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            environment: self.environment,
            config_dir: Some(self.config_dir()),
            files: self.files.clone(),
            vars: self.vars.clone(),
        }
    }

    pub fn load(&self, roles: &[Role]) -> Result<Loaded, ConfigError> {
        load(&self.options(), roles)
    }

    /// Variables for a child process: the configuration variables plus the config directory,
    /// so the child reads nothing from the developer's machine.
    pub fn child_env(&self) -> HashMap<String, String> {
        let mut vars = self.vars.clone();
        vars.insert(
            crate::config::CONFIG_DIR_VAR.to_owned(),
            self.config_dir().to_string_lossy().into_owned(),
        );
        vars.insert("QUARTET_ENV".to_owned(), self.environment.to_string());
        vars
    }
}

/// A role running in this test's runtime, started through its crate's `run` like the binary.
#[derive(Debug)]
pub struct RunningRole {
    pub config: Arc<Config>,
    addrs: HashMap<&'static str, SocketAddr>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl RunningRole {
    pub async fn start<F, Fut, E>(role: Role, test: &TestConfig, run: F) -> Self
    where
        F: FnOnce(Arc<Config>, Listeners, Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let loaded = test.load(&[role]).expect("test configuration is valid");
        let config = Arc::new(loaded.config);
        let listeners = Listeners::bind(role, &config)
            .await
            .expect("bind listeners");
        let addrs = listeners
            .addresses()
            .into_iter()
            .map(|(spec, addr)| (spec.name, addr))
            .collect();
        let shutdown = Shutdown::new();
        let future = run(Arc::clone(&config), listeners, shutdown.clone());
        let task = tokio::spawn(async move { future.await.map_err(|err| err.to_string()) });
        let mut running = Self {
            config,
            addrs,
            shutdown,
            task,
        };
        running.wait_ready().await;
        running
    }

    /// The bound address of the listener called `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no listener named {name}"))
    }

    /// Waits until the role reports ready (certificates loaded, listeners served); a role
    /// that fails while starting fails the test with its own error.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::select! {
            () = self.shutdown.wait_ready(1) => {}
            result = &mut self.task => panic!("role stopped while starting: {result:?}"),
            () = deadline => panic!("role not ready within 30s"),
        }
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Stops the role as SIGTERM would and returns what its `run` returned.
    pub async fn stop(self) -> Result<(), String> {
        self.shutdown.trigger();
        match tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(2), self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(format!("role task failed: {join}")),
            Err(_) => Err("role did not stop in time".to_owned()),
        }
    }
}

/// A real server binary, its stderr collected line by line.
#[derive(Debug)]
pub struct Binary {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    /// Spawns `program args` with only `vars` (plus `PATH`) in its environment, in `cwd`.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        vars: &HashMap<String, String>,
        cwd: &Path,
    ) -> Self {
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(vars)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {}: {err}", program.display()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            collect_lines(pipe, Arc::clone(&stderr));
        }
        if let Some(pipe) = child.stdout.take() {
            collect_lines(pipe, Arc::clone(&stdout));
        }
        Self {
            child,
            stderr,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits for `count` "ROLE LISTENER listening on PROTO://ADDR" log lines and for every
    /// role among them to log "ROLE ready", then returns the addresses by `"role listener"`
    /// (for example `"web https"`).
    pub fn wait_for_listeners(&mut self, count: usize) -> HashMap<String, SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.stderr();
            let found = parse_listening_lines(&text);
            let all_ready = found.keys().all(|key| {
                let role = key.split(' ').next().unwrap_or_default();
                text.contains(&format!("{role} ready: serving traffic"))
            });
            if found.len() >= count && all_ready {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited with {status} before listening:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} listeners after 30s:\n{}",
                found.len(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect_lines<R: std::io::Read + Send + 'static>(pipe: R, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut lines) = sink.lock() {
                lines.push(line);
            }
        }
    });
}

/// Finds "ROLE LISTENER listening on PROTO://ADDR" in log text (pretty or JSON).
pub fn parse_listening_lines(text: &str) -> HashMap<String, SocketAddr> {
    let mut found = HashMap::new();
    for line in text.lines() {
        let Some(at) = line.find(" listening on ") else {
            continue;
        };
        let before: Vec<&str> = line[..at].split_whitespace().collect();
        let [.., role, listener] = before.as_slice() else {
            continue;
        };
        let role = role
            .trim_start_matches(['"', '{'])
            .rsplit('"')
            .next()
            .unwrap_or(role);
        let after = &line[at + " listening on ".len()..];
        let Some((_, rest)) = after.split_once("://") else {
            continue;
        };
        let addr_text: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect();
        if let Ok(addr) = addr_text.parse() {
            found.insert(format!("{role} {listener}"), addr);
        }
    }
    found
}

/// Runs `program args` to completion with only `vars` (plus `PATH`) and returns its output.
pub fn run_to_end(
    program: &Path,
    args: &[&str],
    vars: &HashMap<String, String>,
    cwd: &Path,
) -> std::process::Output {
    Command::new(program)
        .args(args)
        .env_clear()
        .envs(vars)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("run {}: {err}", program.display()))
}

/// `curl -sS` with `args`; returns (HTTP status, body). Panics if curl cannot run at all.
pub fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (the README's test script installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A TLS connector that trusts only the CA certificates in `ca_pem`.
pub fn tls_connector(ca_pem: &Path) -> tokio_rustls::TlsConnector {
    tls_connector_with_alpn(ca_pem, &[])
}

/// Like [`tls_connector`], offering the ALPN protocols `alpn` (e.g. `[b"h2"]`).
pub fn tls_connector_with_alpn(ca_pem: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    crate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read CA file") {
        roots
            .add(cert.expect("parse CA certificate"))
            .expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects to `addr` over TLS as `localhost`, trusting only `ca_pem`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("valid name");
    tls_connector(ca_pem).connect(name, tcp).await
}

/// Sends one HTTP/1.1 GET on an open connection (kept alive) and returns the status code.
pub async fn http_get_on<S>(stream: &mut S, path: &str) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // Read the head, then exactly Content-Length bytes, so the connection stays usable.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok(status)
}

/// The life of a role binary as a user sees it: start it, wait for its `listeners` log lines,
/// check `GET /healthz` (200) and `GET /metrics` on `http` (a `"role listener"` key; over TLS
/// trusting `ca` if given), let `probe` exercise the other listeners, then SIGTERM: exit 0
/// within 10 s.
pub fn run_binary_lifecycle(
    program: &Path,
    test: &TestConfig,
    listeners: usize,
    http: &str,
    ca: Option<&Path>,
    probe: impl FnOnce(&HashMap<String, SocketAddr>),
) {
    let mut server = Binary::spawn(program, &[], &test.child_env(), test.dir.path());
    let addrs = server.wait_for_listeners(listeners);
    let addr = addrs[http];
    let (scheme, mut extra) = match ca {
        Some(ca) => (
            "https",
            vec![
                "--cacert".to_owned(),
                ca.to_string_lossy().into_owned(),
                "--resolve".to_owned(),
                format!("localhost:{}:{}", addr.port(), addr.ip()),
            ],
        ),
        None => ("http", Vec::new()),
    };
    let host = if ca.is_some() {
        "localhost".to_owned()
    } else {
        addr.ip().to_string()
    };
    extra.push(format!("{scheme}://{host}:{}/healthz", addr.port()));
    let args: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (status, body) = curl(&args);
    assert_eq!(status, 200, "healthz: {body}\n{}", server.stderr());
    let last = extra.len() - 1;
    extra[last] = format!("{scheme}://{host}:{}/metrics", addr.port());
    let args: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (status, metrics) = curl(&args);
    assert_eq!(status, 200);
    let role = http.split_whitespace().next().unwrap_or_default();
    assert!(metrics.contains(&format!("role=\"{role}\"")), "{metrics}");
    probe(&addrs);
    server.signal("TERM");
    let exit = server
        .wait_exit(DRAIN_TIMEOUT)
        .expect("exits within 10s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", server.stderr());
}

/// Connects over TCP and reads what the server says first (a greeting), at most `limit` bytes.
pub fn read_greeting(addr: SocketAddr, send: &[u8], limit: usize) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    if !send.is_empty() {
        stream.write_all(send).expect("send");
    }
    let mut buf = Vec::new();
    let _ = stream.take(limit as u64).read_to_end(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::parse_listening_lines;

    #[test]
    fn finds_listeners_in_pretty_and_json_logs() {
        let text = "2026-01-01T00:00:00Z  INFO web https listening on https://127.0.0.1:4431 role=\"web\"\n\
            {\"timestamp\":\"x\",\"level\":\"INFO\",\"message\":\"mail smtp listening on smtp://127.0.0.1:2526\",\"role\":\"mail\"}";
        let found = parse_listening_lines(text);
        assert_eq!(found["web https"].port(), 4431);
        assert_eq!(found["mail smtp"].port(), 2526);
    }
}

/// A PostgreSQL cluster of a test's own: `initdb` in a temporary directory (Debian's
/// postgresql package), SCRAM logins, TLS with a test CA, a loopback port picked at run time.
/// Stopped (fast shutdown) when dropped. As root, the cluster belongs to the `postgres` user.
#[derive(Debug)]
pub struct PostgresCluster {
    _dir: TempDir,
    server: Child,
    pub port: u16,
    /// The CA that signed the server's certificate (for `sslmode=verify-full`).
    pub ca: PathBuf,
}

impl PostgresCluster {
    pub const ADMIN: &'static str = "pgadmin";
    pub const PASSWORD: &'static str = "pg-secret";

    pub fn start() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server package (scripts/install-test-deps installs it)")
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().to_path_buf();
        let id = |args: &[&str]| {
            let output = Command::new("id").args(args).output().expect("id");
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        };
        // PostgreSQL refuses to run as root: the cluster then belongs to `postgres`.
        let as_root = id(&["-u"]) == Some(0);
        let owner = as_root.then(|| {
            (
                id(&["-u", "postgres"]).expect("the postgres user (Debian's postgresql package)"),
                id(&["-g", "postgres"]).expect("the postgres group"),
            )
        });
        let give = |path: &Path| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
            }
        };
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let certs = crate::tls::ensure_dev_certificates(&root.join("certs")).expect("test PKI");
        let tls_dir = root.join("pgtls");
        std::fs::create_dir(&tls_dir).expect("mkdir");
        std::fs::copy(&certs.cert, tls_dir.join("server.crt")).expect("copy");
        std::fs::copy(&certs.key, tls_dir.join("server.key")).expect("copy");
        std::fs::set_permissions(
            tls_dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        for path in [
            &tls_dir,
            &tls_dir.join("server.crt"),
            &tls_dir.join("server.key"),
        ] {
            give(path);
        }
        let data = root.join("data");
        std::fs::create_dir(&data).expect("mkdir");
        give(&data);
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, Self::PASSWORD).expect("write");
        give(&pwfile);
        let command = |program: &str| {
            // setpriv execs (no process in between), so signals reach PostgreSQL itself.
            let mut command = if as_root {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            command.current_dir(&root);
            command
        };
        let initdb = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", Self::ADMIN, "--auth=scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .stdout(Stdio::null())
            .output()
            .expect("initdb");
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                tls_dir.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!(
                "ssl_key_file={}",
                tls_dir.join("server.key").display()
            ))
            .args(["-c", "max_connections=60", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let cluster = Self {
            ca: certs.ca_cert.clone(),
            _dir: dir,
            server,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// A URL for database `database`: TLS, certificate and host name checked.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}:{}@localhost:{}/{database}?sslmode=verify-full&sslrootcert={}",
            Self::ADMIN,
            Self::PASSWORD,
            self.port,
            self.ca.display()
        )
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        let _ = Command::new("kill")
            .args(["-INT", &self.server.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Ok(None) = self.server.try_wait() {
            if Instant::now() > deadline {
                let _ = self.server.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
