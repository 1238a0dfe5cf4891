//! Helpers for the web tests: a site on disk, the role in-process, curl with headers, and a
//! small upstream server that echoes what it receives.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::testing::{RunningRole, TestConfig};
use common::{Environment, Role};

pub struct Web {
    pub test: TestConfig,
    pub role: RunningRole,
    pub root: PathBuf,
}

impl Web {
    pub fn http(&self) -> SocketAddr {
        self.role.addr("http")
    }

    pub fn https(&self) -> SocketAddr {
        self.role.addr("https")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http())
    }

    pub fn ca(&self) -> PathBuf {
        self.test.data_dir().join("tls/ca.pem")
    }
}

/// Writes `files` (path → contents) under a fresh document root.
pub fn site_root(test: &TestConfig, files: &[(&str, &[u8])]) -> PathBuf {
    let root = test.dir.path().join("www");
    for (path, contents) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Starts the web role with `toml` as `<env>.toml` (use `{ROOT}` for the document root).
pub async fn start(
    env: Environment,
    files: &[(&str, &[u8])],
    toml: &str,
    vars: &[(&str, &str)],
) -> Web {
    let mut test = TestConfig::new(env);
    if env.is_strict() {
        test = test.with_generated_tls().0;
    }
    for (key, value) in vars {
        test = test.set(key, value);
    }
    let root = site_root(&test, files);
    let toml = toml.replace("{ROOT}", &root.display().to_string());
    std::fs::write(test.config_dir().join(format!("{env}.toml")), toml).unwrap();
    let role = RunningRole::start(Role::Web, &test, web_server::run).await;
    Web { test, role, root }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub http_version: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs curl with `args` (blocking; call from `spawn_blocking` in async tests, or use
/// [`curl_async`]).
pub fn curl(args: &[&str]) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("curl runs");
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut parts = summary.split_whitespace();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let http_version = parts.next().unwrap_or("").to_owned();
    let raw = std::fs::read_to_string(&headers).unwrap_or_default();
    // With several responses (redirects), keep the last header block.
    let last = raw.trim_end().rsplit("\r\n\r\n").next().unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        http_version,
    }
}

pub async fn curl_async(args: &[&str]) -> Reply {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    })
    .await
    .unwrap()
}

/// A throwaway HTTP upstream: answers every request with a JSON echo of its method, path and
/// headers; `/slow` waits 3 s; `/ws` accepts a WebSocket-style upgrade and echoes bytes.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, name)
    }

    pub async fn start_on(addr: SocketAddr, name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, name)
    }

    fn serve(listener: tokio::net::TcpListener, name: &'static str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
                    () = stopped.cancelled() => return,
                };
                let connection_stopped = stopped.clone();
                tokio::spawn(async move {
                    // A stopped upstream drops its open connections too, as a crashed one would.
                    tokio::select! {
                      () = connection_stopped.cancelled() => {}
                      () = async {
                      loop {
                          // Read one request head (requests in these tests carry no body).
                          let mut head = Vec::new();
                          let mut byte = [0u8; 1];
                          while !head.ends_with(b"\r\n\r\n") {
                              match stream.read(&mut byte).await {
                                  Ok(1) => head.push(byte[0]),
                                  _ => return,
                              }
                          }
                          let head = String::from_utf8_lossy(&head).into_owned();
                          let mut lines = head.lines();
                          let request_line = lines.next().unwrap_or("").to_owned();
                          let mut parts = request_line.split_whitespace();
                          let method = parts.next().unwrap_or("").to_owned();
                          let path = parts.next().unwrap_or("").to_owned();
                          let headers: HashMap<String, String> = lines
                              .filter_map(|l| l.split_once(':'))
                              .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                              .collect();
                          if path == "/slow" {
                              tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                          }
                          if path == "/ws" {
                              let _ = stream
                                  .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
                                  .await;
                              let mut buf = [0u8; 1024];
                              while let Ok(n) = stream.read(&mut buf).await {
                                  if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                      return;
                                  }
                              }
                              return;
                          }
                          let body = serde_json::json!({
                              "upstream": name, "method": method, "path": path, "headers": headers,
                          })
                          .to_string();
                          let response = format!(
                              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n{body}",
                              body.len()
                          );
                          if stream.write_all(response.as_bytes()).await.is_err() {
                              return;
                          }
                      }
                    } => {}
                    }
                });
            }
        });
        Self { addr, stop }
    }

    pub fn stop(self) {
        self.stop.cancel();
    }
}

pub fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.text()))
}

pub fn write(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap();
}
