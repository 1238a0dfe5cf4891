//! Layered configuration: the one file format every role reads.
//!
//! Layers, later wins: built-in defaults ([`defaults`]) → `$QUARTET_CONFIG_DIR/default.toml` →
//! `$QUARTET_CONFIG_DIR/<env>.toml` → each `--config FILE` → `QUARTET__SECTION__KEY` variables.
//! [`load`] merges them with the `config` crate, remembers which layer set each key (so every
//! error names it), rejects unknown keys, deserialises into [`Config`] and runs
//! [`Config::validate`], which collects every problem rather than stopping at the first.

mod defaults;
mod load;
mod postgres_url;
mod validate;
mod web;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::environment::Environment;
use crate::secret::Secret;

pub use defaults::defaults;
pub use load::{
    CONFIG_DIR_VAR, ConfigError, LoadOptions, Loaded, Origin, Origins, Problem, VAR_PREFIX, load,
};
pub use postgres_url::{PostgresUrl, SslMode};
pub use web::{AuthRule, HeaderRule, ProxyRoute, RedirectRule, SiteConfig, SiteTls, WebConfig};

/// The whole configuration of an installation: one section per role plus what they share.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Chosen by `--env` / `QUARTET_ENV`, never by a file.
    #[serde(skip)]
    pub environment: Environment,
    /// Where every role keeps its state (databases, mail, builds, generated certificates).
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub web: WebConfig,
    pub db: DbConfig,
    pub mail: MailConfig,
    pub app: AppConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `debug`, `web_server=debug,info`). `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Pretty,
    /// One JSON object per line, for a log collector.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Unset in development: a certificate signed by a
    /// generated development CA is used instead.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `cert`.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// PostgreSQL wire protocol (SSLRequest upgrades to TLS).
    pub pg_listen: ListenAddr,
    /// HTTP SQL API, `/healthz` and `/metrics`.
    pub http_listen: ListenAddr,
    /// Serve `http_listen` over TLS. It carries passwords, so staging and production require
    /// it unless the listener is on loopback.
    pub http_tls: bool,
    /// `sqlite` (files under `data_dir/db`) or a `postgres://` URL.
    pub backend: Backend,
    /// With a PostgreSQL backend: connections to it, at most (idle ones are kept for reuse).
    pub backend_pool_size: usize,
    /// The first administrator role, created on first start.
    pub admin_user: String,
    pub admin_password: Secret,
    /// `full`: a COMMIT is on disk before it is acknowledged; `normal`: fsync at checkpoints
    /// only (faster; the last commits can be lost on power failure).
    pub synchronous: String,
    /// PostgreSQL connections served at once.
    pub max_connections: usize,
    /// Read-only SQLite connections per database.
    pub readers: usize,
    /// A statement running longer is cancelled (57014); 0 = no limit.
    pub statement_timeout_secs: u64,
    /// The longest a write waits for another transaction's write lock (55P03).
    pub lock_timeout_secs: u64,
    /// A PostgreSQL session idle inside a transaction this long is rolled back and ended
    /// (25P03), freeing the writer; 0 = never.
    pub idle_in_transaction_timeout_secs: u64,
    /// Limits of the HTTP SQL API: rows per statement, bytes per answer, bytes per request.
    pub http_max_rows: usize,
    pub http_max_response_bytes: usize,
    pub http_max_body_bytes: usize,
    /// Largest snapshot `POST /db/{name}/restore` accepts.
    pub max_restore_bytes: usize,
    /// Scheduled snapshots of every database.
    pub backup: BackupConfig,
}

/// `[db.backup]`: snapshots under `data_dir/db/backups/{database}/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// How often: `30m`, `6h`, `1d`…; `0` or `off` for never.
    pub every: String,
    /// Snapshots kept per database (the oldest go first).
    pub keep: usize,
}

/// A duration as written in configuration: a number and a unit (`s`, `m`, `h`, `d`); `0` or
/// `off` is none.
pub fn parse_interval(text: &str) -> Result<Option<std::time::Duration>, String> {
    let text = text.trim();
    if text == "0" || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30m, 6h or 1d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} is not a duration like 30m, 6h or 1d")),
    };
    if number == 0 {
        return Ok(None);
    }
    Ok(Some(std::time::Duration::from_secs(
        number.saturating_mul(seconds),
    )))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    pub smtp_listen: ListenAddr,
    pub submission_listen: ListenAddr,
    pub submissions_listen: ListenAddr,
    pub imap_listen: ListenAddr,
    pub imaps_listen: ListenAddr,
    pub pop3_listen: ListenAddr,
    pub pop3s_listen: ListenAddr,
    /// Web inbox, JSON API, `/healthz` and `/metrics`.
    pub http_listen: ListenAddr,
    /// Serve `http_listen` over TLS (required off loopback in staging and production).
    pub http_tls: bool,
    /// The domains this server receives mail for. A variable takes a comma-separated list.
    #[serde(deserialize_with = "deserialize_list")]
    pub domains: Vec<String>,
    /// The name this server gives in its SMTP greeting and `Received` headers; empty = this
    /// machine's host name.
    pub hostname: String,
    /// Largest message accepted (advertised in SIZE; 552 above).
    pub max_message_bytes: usize,
    /// Recipients per message (452 above).
    pub max_recipients: usize,
    /// SMTP connections at once, and from one client address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// A client silent this long between commands is disconnected (421), and no session
    /// lasts longer than `session_timeout_secs`.
    pub command_timeout_secs: u64,
    pub session_timeout_secs: u64,
    /// Errors in one session before it is ended (421).
    pub max_errors: usize,
    /// A bare LF in a message: `reject` (554, and the connection ends) or `normalize` (it
    /// becomes CRLF). Either way only `<CRLF>.<CRLF>` ends a message.
    pub bare_lf: String,
    /// Accounts from configuration (more live in the store, managed by `mail-server accounts`).
    pub accounts: Vec<MailAccount>,
    /// Staging delivers only to these recipients (`alice@example.org`, `*@example.org`); the
    /// rest is captured.
    #[serde(deserialize_with = "deserialize_list")]
    pub staging_allowlist: Vec<String>,
    /// `[mail.relay]`: a smarthost for all outbound mail; with no `host`, mail goes to each
    /// domain's MX.
    pub relay: MailRelay,
    /// The port of a domain's MX (25; another for test setups).
    pub mx_port: u16,
    /// The DNS server MX and address lookups ask (`IP:port`); empty = the system's.
    pub dns_server: String,
    /// Waits between delivery attempts after a temporary failure; the last repeats.
    #[serde(deserialize_with = "deserialize_list")]
    pub retry_intervals: Vec<String>,
    /// A message still undelivered after this long is bounced.
    pub max_queue_time: String,
    /// `[mail.dkim]`: outbound mail is signed (required in production).
    pub dkim: MailDkim,
    /// `sqlite` (under `data_dir/mail/`) or a `postgres://` URL several mail-servers share.
    pub store: Backend,
}

/// `[mail.dkim]`: the key outbound mail is signed with, published in DNS as
/// `{selector}._domainkey.{domain}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailDkim {
    /// The signing domain (`d=`); empty = the first of `mail.domains`.
    pub domain: String,
    pub selector: String,
    /// A PEM file: an Ed25519 or RSA private key.
    pub private_key: String,
}

/// `[mail.relay]`: where outbound mail goes when it does not go to the recipient's MX.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailRelay {
    /// Empty: deliver to each domain's MX.
    pub host: String,
    pub port: u16,
    /// `starttls` (required), `tls` (from the first byte), or `none`.
    pub tls: String,
    pub username: String,
    pub password: Secret,
    /// A PEM file with the CA the relay's certificate must chain to; empty = the web PKI.
    pub ca_file: String,
}

/// `[[mail.accounts]]`: an address and its password, as an argon2 PHC string
/// (`password_hash`) or, in development only, in plain text (`password`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailAccount {
    pub address: String,
    #[serde(default)]
    pub password_hash: Option<Secret>,
    #[serde(default)]
    pub password: Option<Secret>,
}

/// The development account, refused in staging and production.
pub const DEV_MAIL_ACCOUNT: &str = "dev@localhost";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Control API (bearer token), `/healthz` and `/metrics`.
    pub api_listen: ListenAddr,
    /// Serve `api_listen` over TLS (required off loopback in staging and production).
    pub api_tls: bool,
    /// Where deployed apps receive their HTTP traffic.
    pub http_listen: ListenAddr,
    /// Bearer token for the control API. Development accepts the documented `dev`.
    pub api_token: Secret,
    /// Apps answer at `{app}.{domain}` on `http_listen`.
    pub domain: String,
    /// Largest source upload accepted (413 above).
    pub max_upload_bytes: u64,
    /// Limits on unpacking an upload (gzip bombs, entry floods).
    pub max_unpacked_bytes: u64,
    pub max_archive_entries: usize,
    /// Seconds a new release's processes have to accept connections before the deploy fails.
    pub health_timeout_secs: u64,
    /// Seconds between SIGTERM and SIGKILL when stopping an app's processes.
    pub stop_grace_secs: u64,
    /// When app-server runs as root, apps run as this user (never as root); `per-app` gives
    /// each app its own user ID, unnamed, from 61184 + the app's number.
    pub run_as: String,
    /// `LOW-HIGH`: the ports app processes are given on 127.0.0.1 (`PORT`).
    pub ports: String,
    /// Resource limits of every app process (`RLIMIT_NOFILE`, `RLIMIT_NPROC`, `RLIMIT_AS`;
    /// 0 = no limit).
    pub max_open_files: u64,
    pub max_processes: u64,
    pub max_memory_mb: u64,
    /// An app's log is rotated at this size; this many rotated files are kept beside it.
    pub log_max_bytes: u64,
    pub log_files: u32,
}

/// A listen address as written in configuration (`IP:PORT`; port 0 picks a free port).
/// Kept as text until [`Config::validate`] so that every bad address is reported, not only the
/// first one serde meets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ListenAddr(String);

impl ListenAddr {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed address. [`Config::validate`] has checked it for every loaded configuration.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.0.trim().parse().map_err(|_| {
            format!(
                "{:?} is not an IP:PORT address (for example 127.0.0.1:8080 or [::1]:8080)",
                self.0
            )
        })
    }
}

impl fmt::Debug for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// The default site's document root.
    pub fn web_root(&self) -> PathBuf {
        self.web
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("www"))
    }

    /// The effective configuration as TOML, secrets redacted: what `--check` prints.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// Accepts a TOML array or, from an environment variable, a comma-separated string.
fn deserialize_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(deserializer)? {
        ListOrText::List(items) => items,
        ListOrText::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// `db.backend`: `sqlite`, or a PostgreSQL URL whose password never prints (`Debug`,
/// `Display` and `Serialize` redact it; [`Backend::expose`] gives the real text).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Backend(String);

impl Backend {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_sqlite(&self) -> bool {
        self.0 == "sqlite"
    }

    /// The PostgreSQL URL, parsed; `None` for `sqlite`.
    pub fn postgres(&self) -> Option<Result<PostgresUrl, String>> {
        (!self.is_sqlite()).then(|| PostgresUrl::parse(&self.0))
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url_password(&self.0))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url_password(&self.0))
    }
}

impl Serialize for Backend {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url_password(&self.0))
    }
}

/// `postgres://user:secret@host/db?password=x` prints as
/// `postgres://user:[redacted]@host/db?password=[redacted]`.
pub(crate) fn redact_url_password(url: &str) -> String {
    let redacted = redact_userinfo_password(url);
    match redacted.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}={}", crate::secret::REDACTED)
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => redacted,
    }
}

fn redact_userinfo_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The userinfo ends at the last `@` before the path; a `/` inside a password is still
    // inside the userinfo.
    let authority_end = match rest.rfind('@') {
        Some(at) => rest[at..].find(['/', '?']).map_or(rest.len(), |i| at + i),
        None => rest.find(['/', '?']).unwrap_or(rest.len()),
    };
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => {
                format!("{scheme}://{user}:{}@{host}{path}", crate::secret::REDACTED)
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;

/// A DNS host name: dot-separated labels of letters, digits and '-', each 1-63 long, 253 in all.
/// Shared by every key and API field that takes one.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl AppConfig {
    /// `app.ports` as a range, if it is one (`LOW-HIGH`, 1024 ≤ LOW ≤ HIGH).
    pub fn port_range(&self) -> Option<(u16, u16)> {
        let (low, high) = self.ports.split_once('-')?;
        let (low, high) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
        (1024 <= low && low <= high).then_some((low, high))
    }
}
