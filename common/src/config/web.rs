//! The web role's section: listeners, limits, and the sites it serves.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ListenAddr;
use crate::secret::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    pub http_listen: ListenAddr,
    pub https_listen: ListenAddr,
    /// Document root of the default site (the site without `hosts`); unset means
    /// `<data_dir>/www`.
    pub root: Option<PathBuf>,
    /// Sites by `Host` header and SNI. Empty: one default site serving `root`.
    pub sites: Vec<SiteConfig>,
    /// One line per request: combined format in development, JSON otherwise.
    pub access_log: bool,
    /// A client must send a whole request head within this many seconds; an idle keep-alive
    /// connection is closed after the same time.
    pub header_timeout_secs: u64,
    /// Largest request head accepted (431 above).
    pub max_header_bytes: usize,
    /// Longest request target accepted (414 above).
    pub max_uri_bytes: usize,
    /// Connections served at once per listener.
    pub max_connections: usize,
    /// How long a cached file's metadata is trusted before it is checked again (ms).
    pub cache_validity_ms: u64,
    /// Files up to this size are kept in memory (and compressed once).
    pub cache_max_file_bytes: u64,
    /// Memory for cached file bodies, all sites together.
    pub cache_max_bytes: u64,
    /// Compressible responses at least this large are compressed on the fly.
    pub compress_min_bytes: u64,
    /// `Strict-Transport-Security: max-age=…` on HTTPS responses in staging and production.
    pub hsts_max_age_secs: u64,
    pub proxy_connect_timeout_secs: u64,
    /// Time allowed for an upstream's response head.
    pub proxy_response_timeout_secs: u64,
    /// Set by `quartet up` when it added the default site itself (to sit beside the app site
    /// it wires in): that site still shows the development welcome page. Never from a file.
    #[serde(skip)]
    pub wired_default_site: bool,
}

/// One site: a set of host names, a document root and/or proxy routes, and its rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Host names matched against `Host` and SNI (`*.example.org` matches one label). A site
    /// without hosts is the default site.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Document root. The default site falls back to `web.root`.
    #[serde(default)]
    pub root: Option<PathBuf>,
    #[serde(default = "default_index")]
    pub index: Vec<String>,
    /// Directory listing (HTML, or JSON with `Accept: application/json`).
    #[serde(default)]
    pub listing: bool,
    /// Served for unknown paths when the client accepts `text/html` (single-page apps).
    #[serde(default)]
    pub spa_fallback: Option<String>,
    /// Status code → file under the root, e.g. `{ 404 = "404.html", 502 = "down.html" }`.
    #[serde(default)]
    pub error_pages: BTreeMap<String, String>,
    /// Serve symlinks whose target lies outside the root (nginx's and Caddy's default; not ours).
    #[serde(default)]
    pub allow_symlink_escape: bool,
    #[serde(default)]
    pub proxy: Vec<ProxyRoute>,
    #[serde(default)]
    pub headers: Vec<HeaderRule>,
    #[serde(default)]
    pub auth: Vec<AuthRule>,
    #[serde(default)]
    pub redirects: Vec<RedirectRule>,
    /// The site's own certificate, chosen by SNI; else `tls.cert`.
    #[serde(default)]
    pub tls: Option<SiteTls>,
}

impl SiteConfig {
    /// A site for `hosts` (none: the default site) with every option at its default.
    pub fn for_hosts(hosts: Vec<String>) -> Self {
        Self {
            hosts,
            root: None,
            index: default_index(),
            listing: false,
            spa_fallback: None,
            error_pages: BTreeMap::new(),
            allow_symlink_escape: false,
            proxy: Vec::new(),
            headers: Vec::new(),
            auth: Vec::new(),
            redirects: Vec::new(),
            tls: None,
        }
    }
}

fn default_index() -> Vec<String> {
    vec!["index.html".to_owned()]
}

/// Requests under `path` go to `upstreams` (round-robin, with health checks).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRoute {
    /// Path prefix; the longest matching prefix wins.
    pub path: String,
    /// `http://host:port` base URLs.
    pub upstreams: Vec<String>,
    /// Remove `path` from the request path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Path the active health check requests on each upstream (any status below 500 is
    /// healthy).
    #[serde(default = "default_health_path")]
    pub health_check: String,
    #[serde(default = "default_health_interval")]
    pub health_interval_secs: u64,
}

fn default_health_path() -> String {
    "/".to_owned()
}

fn default_health_interval() -> u64 {
    5
}

/// Response headers set on paths matching `glob` (`/assets/**`). An empty value removes the
/// header, which is how a site drops one of the default security headers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    pub glob: String,
    pub set: BTreeMap<String, String>,
}

/// HTTP Basic authentication for paths under `path`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    pub path: String,
    #[serde(default = "default_realm")]
    pub realm: String,
    /// User name → argon2 (`$argon2id$…`) or bcrypt (`$2b$…`) hash. Never a plain password.
    pub users: BTreeMap<String, Secret>,
}

fn default_realm() -> String {
    "restricted".to_owned()
}

/// Requests for `from` (exact path, or a prefix when it ends with `*`) are redirected to `to`.
/// With a prefix, the rest of the path is appended to `to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectRule {
    pub from: String,
    pub to: String,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    301
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}
