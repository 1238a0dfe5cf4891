//! The site table: `web.sites` compiled into what a request needs — host lookup, document
//! root, proxy routes, header rules, authentication and redirects. Compiling is also how the
//! web role validates its configuration: every problem names its key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderName, HeaderValue, StatusCode};
use common::Config;
use common::config::SiteConfig;
use globset::{GlobBuilder, GlobMatcher};

use crate::static_files::StaticSite;
use common::proxy::Upstreams;

/// A problem in `web.sites`, by key.
pub type SiteProblem = (String, String);

#[derive(Debug)]
pub struct Site {
    pub id: usize,
    /// For logs and metrics: the first host name, or `default`.
    pub name: String,
    pub hosts: Vec<String>,
    pub files: Option<StaticSite>,
    pub error_pages: HashMap<u16, String>,
    /// Longest path first.
    pub proxies: Vec<ProxyRoute>,
    pub header_rules: Vec<HeaderRule>,
    pub auth: Vec<AuthRule>,
    pub redirects: Vec<Redirect>,
    /// The site's own certificate and key files (SNI).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Development with no site configured: `/` shows the welcome page until the root has an
    /// index file.
    pub welcome: bool,
}

#[derive(Debug)]
pub struct ProxyRoute {
    pub path: String,
    pub strip_prefix: bool,
    pub upstreams: Arc<Upstreams>,
}

#[derive(Debug)]
pub struct HeaderRule {
    pub matcher: GlobMatcher,
    /// `None` removes the header.
    pub set: Vec<(HeaderName, Option<HeaderValue>)>,
}

#[derive(Debug)]
pub struct AuthRule {
    pub path: String,
    pub challenge: HeaderValue,
    pub users: HashMap<String, String>,
    /// `Authorization` values already verified, so argon2 runs once per credential, not per
    /// request. Bounded.
    pub verified: Mutex<Vec<String>>,
}

#[derive(Debug)]
pub struct Redirect {
    pub from: String,
    pub prefix: bool,
    pub to: String,
    pub status: StatusCode,
}

#[derive(Debug)]
pub struct Sites {
    pub list: Vec<Arc<Site>>,
    exact: HashMap<String, usize>,
    /// `*.example.org` → `.example.org`.
    wildcard: Vec<(String, usize)>,
    default: Option<usize>,
}

impl Sites {
    /// The site for a `Host` header or SNI name (without port), else the default site.
    pub fn for_host(&self, host: Option<&str>) -> Option<&Arc<Site>> {
        if let Some(host) = host {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            if let Some(&index) = self.exact.get(&host) {
                return self.list.get(index);
            }
            if let Some((_, index)) = self.wildcard.iter().find(|(suffix, _)| {
                host.ends_with(suffix.as_str()) && !host[..host.len() - suffix.len()].contains('.')
            }) {
                return self.list.get(*index);
            }
        }
        self.default.and_then(|index| self.list.get(index))
    }

    /// Compiles `config.web`; `upstreams` makes (or reuses) the upstream pool for a route.
    pub fn compile(
        config: &Config,
        mut upstreams: impl FnMut(&[String], &str, u64) -> Result<Arc<Upstreams>, String>,
    ) -> Result<Self, Vec<SiteProblem>> {
        let mut problems = Vec::new();
        let configured = !config.web.sites.is_empty();
        let site_configs: Vec<SiteConfig> = if configured {
            config.web.sites.clone()
        } else {
            vec![SiteConfig::for_hosts(Vec::new())]
        };

        let mut sites = Sites {
            list: Vec::new(),
            exact: HashMap::new(),
            wildcard: Vec::new(),
            default: None,
        };
        for (id, site) in site_configs.iter().enumerate() {
            let key = format!("web.sites[{id}]");
            let is_default = site.hosts.is_empty();
            for host in &site.hosts {
                let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
                if !common::config::valid_host_name(host.trim_start_matches("*.")) {
                    problems.push((
                        format!("{key}.hosts"),
                        format!("{host:?} is not a host name"),
                    ));
                    continue;
                }
                let taken = if let Some(suffix) = host.strip_prefix('*') {
                    let taken = sites.wildcard.iter().any(|(s, _)| s == suffix);
                    sites.wildcard.push((suffix.to_owned(), id));
                    taken
                } else {
                    sites.exact.insert(host.clone(), id).is_some()
                };
                if taken {
                    problems.push((
                        format!("{key}.hosts"),
                        format!("{host} belongs to two sites"),
                    ));
                }
            }
            if is_default {
                if sites.default.is_some() {
                    problems.push((
                        format!("{key}.hosts"),
                        "two sites without hosts: only one can be the default site".into(),
                    ));
                }
                sites.default = Some(id);
            }

            // Document root: the default site falls back to web.root / <data_dir>/www.
            let root = match (&site.root, is_default) {
                (Some(root), _) => Some(root.clone()),
                (None, true) => Some(config.web_root()),
                (None, false) => None,
            };
            let files = match root {
                Some(root) => match std::fs::canonicalize(&root) {
                    Ok(canonical) if canonical.is_dir() => Some(StaticSite {
                        id,
                        root: canonical,
                        index: site.index.clone(),
                        listing: site.listing,
                        spa_fallback: site.spa_fallback.clone(),
                        allow_symlink_escape: site.allow_symlink_escape,
                    }),
                    _ if site.root.is_none() => {
                        // The implicit default root may not exist yet; serve nothing from it.
                        None
                    }
                    _ => {
                        problems.push((
                            format!("{key}.root"),
                            format!("{} is not a readable directory", root.display()),
                        ));
                        None
                    }
                },
                None => None,
            };

            let mut error_pages = HashMap::new();
            for (status, file) in &site.error_pages {
                match status.parse::<u16>() {
                    Ok(code) if (400..600).contains(&code) => {
                        error_pages.insert(code, file.trim_start_matches('/').to_owned());
                    }
                    _ => problems.push((
                        format!("{key}.error_pages"),
                        format!("{status:?} is not an error status (400-599)"),
                    )),
                }
            }

            let mut proxies = Vec::new();
            for (index, route) in site.proxy.iter().enumerate() {
                let route_key = format!("{key}.proxy[{index}]");
                if !route.path.starts_with('/') {
                    problems.push((format!("{route_key}.path"), "must start with /".into()));
                    continue;
                }
                if route.upstreams.is_empty() {
                    problems.push((
                        format!("{route_key}.upstreams"),
                        "needs at least one upstream".into(),
                    ));
                    continue;
                }
                match upstreams(
                    &route.upstreams,
                    &route.health_check,
                    route.health_interval_secs,
                ) {
                    Ok(pool) => proxies.push(ProxyRoute {
                        path: route.path.clone(),
                        strip_prefix: route.strip_prefix,
                        upstreams: pool,
                    }),
                    Err(reason) => problems.push((format!("{route_key}.upstreams"), reason)),
                }
            }
            proxies.sort_by_key(|route| std::cmp::Reverse(route.path.len()));

            let mut header_rules = Vec::new();
            for (index, rule) in site.headers.iter().enumerate() {
                let rule_key = format!("{key}.headers[{index}]");
                let matcher = match GlobBuilder::new(&rule.glob).literal_separator(true).build() {
                    Ok(glob) => glob.compile_matcher(),
                    Err(err) => {
                        problems.push((format!("{rule_key}.glob"), err.to_string()));
                        continue;
                    }
                };
                let mut set = Vec::new();
                for (name, value) in &rule.set {
                    let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                        problems.push((
                            format!("{rule_key}.set"),
                            format!("{name:?} is not a header name"),
                        ));
                        continue;
                    };
                    if value.is_empty() {
                        set.push((name, None));
                    } else if let Ok(value) = HeaderValue::from_str(value) {
                        set.push((name, Some(value)));
                    } else {
                        problems.push((
                            format!("{rule_key}.set"),
                            format!("invalid value for {name}"),
                        ));
                    }
                }
                header_rules.push(HeaderRule { matcher, set });
            }

            let mut auth = Vec::new();
            for (index, rule) in site.auth.iter().enumerate() {
                let rule_key = format!("{key}.auth[{index}]");
                let mut users = HashMap::new();
                for (user, hash) in &rule.users {
                    let hash = hash.expose();
                    if crate::auth::hash_kind(hash).is_none() {
                        problems.push((
                            format!("{rule_key}.users.{user}"),
                            "is not an argon2 ($argon2id$…) or bcrypt ($2b$…) hash; plain passwords are refused".into(),
                        ));
                        continue;
                    }
                    users.insert(user.clone(), hash.to_owned());
                }
                let realm = rule.realm.replace(['"', '\\'], "");
                let challenge =
                    HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                        .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"restricted\""));
                auth.push(AuthRule {
                    path: rule.path.clone(),
                    challenge,
                    users,
                    verified: Mutex::new(Vec::new()),
                });
            }
            auth.sort_by_key(|rule| std::cmp::Reverse(rule.path.len()));

            let mut redirects = Vec::new();
            for (index, rule) in site.redirects.iter().enumerate() {
                let rule_key = format!("{key}.redirects[{index}]");
                let Ok(status) = StatusCode::from_u16(rule.status) else {
                    problems.push((format!("{rule_key}.status"), "not a status code".into()));
                    continue;
                };
                if ![301, 302, 303, 307, 308].contains(&rule.status) {
                    problems.push((
                        format!("{rule_key}.status"),
                        "must be 301, 302, 303, 307 or 308".into(),
                    ));
                    continue;
                }
                if HeaderValue::from_str(&rule.to).is_err() {
                    problems.push((format!("{rule_key}.to"), "not a valid Location".into()));
                    continue;
                }
                let (from, prefix) = match rule.from.strip_suffix('*') {
                    Some(prefix) => (prefix.to_owned(), true),
                    None => (rule.from.clone(), false),
                };
                redirects.push(Redirect {
                    from,
                    prefix,
                    to: rule.to.clone(),
                    status,
                });
            }

            let tls = match &site.tls {
                Some(tls) => match common::tls::load_certified_key(&tls.cert, &tls.key) {
                    Ok(_) => Some((tls.cert.clone(), tls.key.clone())),
                    Err(err) => {
                        problems.push((format!("{key}.tls"), err.to_string()));
                        None
                    }
                },
                None => None,
            };

            sites.list.push(Arc::new(Site {
                id,
                name: site
                    .hosts
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "default".into()),
                hosts: site.hosts.clone(),
                files,
                error_pages,
                proxies,
                header_rules,
                auth,
                redirects,
                tls,
                welcome: is_default
                    && (!configured || config.web.wired_default_site)
                    && !config.environment.is_strict(),
            }));
        }
        if problems.is_empty() {
            Ok(sites)
        } else {
            Err(problems)
        }
    }
}
