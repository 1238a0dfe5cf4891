//! Checks that need the whole configuration: addresses, certificates and the environment
//! policy (no default credentials, no missing certificates, no plaintext passwords off
//! loopback outside development). Every problem is collected.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Config;
use super::defaults::{DEFAULT_APP_API_TOKEN, DEFAULT_DB_ADMIN_PASSWORD};
use super::load::{Origins, Problem};
use crate::role::{Role, Transport};

impl Config {
    /// Empty strings from variables mean "unset".
    pub(crate) fn normalise(&mut self) {
        for path in [&mut self.tls.cert, &mut self.tls.key, &mut self.web.root] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *path = None;
            }
        }
    }

    /// Problems (refuse to start) and warnings (start, but say so) for running `roles`.
    pub fn validate(&self, roles: &[Role], origins: &Origins) -> (Vec<Problem>, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let env = self.environment;
        let problem = |key: &str, reason: String| Problem::new(key, origins.of(key), reason);

        if self.data_dir.as_os_str().is_empty() {
            problems.push(problem("data_dir", "must not be empty".into()));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(problem(
                "log.level",
                format!("not a valid log filter: {err}"),
            ));
        }

        // Listeners: each address parses, none is used twice, and none carries passwords in
        // plaintext on a public address outside development.
        let mut seen: HashMap<SocketAddr, &'static str> = HashMap::new();
        for spec in roles.iter().flat_map(|role| role.listeners(self)) {
            let addr = match spec.addr.socket_addr() {
                Ok(addr) => addr,
                Err(reason) => {
                    problems.push(problem(spec.key, reason));
                    continue;
                }
            };
            // 0.0.0.0:X also takes 127.0.0.1:X (and [::]:X every IPv6 address).
            let clash = seen.iter().find(|(other, _)| {
                other.port() == addr.port()
                    && other.is_ipv4() == addr.is_ipv4()
                    && (other.ip() == addr.ip()
                        || other.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            });
            if addr.port() != 0 {
                if let Some((other_addr, other_key)) = clash {
                    problems.push(problem(
                        spec.key,
                        format!("{addr} overlaps {other_addr} of {other_key}"),
                    ));
                }
                seen.insert(addr, spec.key);
            }
            if env.is_strict()
                && spec.transport == (Transport::Http { tls: false })
                && !addr.ip().is_loopback()
            {
                let tls_key = spec.key.replace("_listen", "_tls");
                problems.push(problem(
                    spec.key,
                    format!(
                        "carries passwords over plaintext HTTP on the public address {addr}, \
                         refused in {env}: set {tls_key} = true or listen on loopback"
                    ),
                ));
            }
        }

        // TLS: both files or neither; required outside development; must load.
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => {
                if let Err(err) = crate::tls::load_certified_key(cert, key) {
                    use crate::tls::TlsError;
                    let key = match err {
                        TlsError::ReadKey { .. } | TlsError::BadKey { .. } => "tls.key",
                        _ => "tls.cert",
                    };
                    problems.push(problem(key, err.to_string()));
                }
            }
            (Some(_), None) => problems.push(problem(
                "tls.key",
                "missing: tls.cert is set, so tls.key must be too".into(),
            )),
            (None, Some(_)) => problems.push(problem(
                "tls.cert",
                "missing: tls.key is set, so tls.cert must be too".into(),
            )),
            (None, None) if env.is_strict() => problems.push(problem(
                "tls.cert",
                format!(
                    "required in {env}: set tls.cert and tls.key to a PEM certificate chain \
                     and its private key (development generates its own)"
                ),
            )),
            (None, None) => {}
        }

        // Credentials: the documented development defaults are refused outside development.
        if roles.contains(&Role::Db) {
            if self.db.admin_password.is_empty() {
                problems.push(problem("db.admin_password", "must not be empty".into()));
            } else if env.is_strict()
                && self.db.admin_password.expose() == DEFAULT_DB_ADMIN_PASSWORD
            {
                problems.push(problem(
                    "db.admin_password",
                    format!("the documented default password is refused in {env}: set your own"),
                ));
            }
            match self.db.backend.postgres() {
                None => {}
                Some(Err(reason)) => problems.push(problem(
                    "db.backend",
                    format!("neither \"sqlite\" nor a usable PostgreSQL URL: {reason}"),
                )),
                Some(Ok(url)) => {
                    // The backend login's password crosses the network: encrypted, outside
                    // development, unless the backend is on this machine.
                    if env.is_strict() && !url.is_loopback() && !url.sslmode.always_tls() {
                        problems.push(problem(
                            "db.backend",
                            format!(
                                "{} is not on this machine: add sslmode=verify-full (or \
                                 require/verify-ca) in {env}",
                                url.host
                            ),
                        ));
                    }
                    if self.db.backend_pool_size == 0 {
                        problems.push(problem("db.backend_pool_size", "must be at least 1".into()));
                    }
                }
            }
        }
        if roles.contains(&Role::App) {
            if self.app.run_as.trim().is_empty() || self.app.run_as == "root" {
                problems.push(problem(
                    "app.run_as",
                    "apps never run as root: \"per-app\" or an unprivileged user's name".into(),
                ));
            }
            if self.app.port_range().is_none() {
                problems.push(problem(
                    "app.ports",
                    format!(
                        "{:?} is not a port range like \"20000-29999\" (at or above 1024)",
                        self.app.ports
                    ),
                ));
            }
            let domain = self.app.domain.trim_start_matches('.');
            if !super::valid_host_name(domain) {
                problems.push(problem(
                    "app.domain",
                    format!("{:?} is not a domain name", self.app.domain),
                ));
            }
            if self.app.api_token.is_empty() {
                problems.push(problem("app.api_token", "must not be empty".into()));
            } else if env.is_strict() && self.app.api_token.expose() == DEFAULT_APP_API_TOKEN {
                problems.push(problem(
                    "app.api_token",
                    format!("the documented default token is refused in {env}: set your own"),
                ));
            }
        }
        if roles.contains(&Role::Db) {
            match self.db.synchronous.as_str() {
                "full" => {}
                "normal" if env.is_strict() => warnings.push(problem(
                    "db.synchronous",
                    "\"normal\" can lose the last acknowledged commits on power failure".into(),
                )),
                "normal" => {}
                other => problems.push(problem(
                    "db.synchronous",
                    format!("{other:?} is neither \"full\" nor \"normal\""),
                )),
            }
            if self.db.readers == 0 || self.db.readers > 64 {
                problems.push(problem("db.readers", "between 1 and 64".into()));
            }
            if let Err(reason) = super::parse_interval(&self.db.backup.every) {
                problems.push(problem("db.backup.every", reason));
            }
            if self.db.backup.keep == 0 {
                problems.push(problem("db.backup.keep", "keep at least 1 snapshot".into()));
            }
            if self.db.max_connections == 0 {
                problems.push(problem("db.max_connections", "must be at least 1".into()));
            }
        }
        if roles.contains(&Role::Mail) {
            if self.mail.domains.is_empty() {
                problems.push(problem(
                    "mail.domains",
                    "no local domain: list the domains this server receives mail for".into(),
                ));
            }
            for domain in &self.mail.domains {
                if !super::valid_host_name(domain) {
                    problems.push(problem(
                        "mail.domains",
                        format!("{domain:?} is not a domain name"),
                    ));
                }
            }
            if !matches!(self.mail.bare_lf.as_str(), "reject" | "normalize") {
                problems.push(problem(
                    "mail.bare_lf",
                    format!("{:?}: \"reject\" or \"normalize\"", self.mail.bare_lf),
                ));
            }
            if !self.mail.hostname.is_empty() && !super::valid_host_name(&self.mail.hostname) {
                problems.push(problem(
                    "mail.hostname",
                    format!("{:?} is not a host name", self.mail.hostname),
                ));
            }
            for (key, value) in [
                ("mail.max_message_bytes", self.mail.max_message_bytes),
                ("mail.max_recipients", self.mail.max_recipients),
                ("mail.max_connections", self.mail.max_connections),
                (
                    "mail.max_connections_per_ip",
                    self.mail.max_connections_per_ip,
                ),
                ("mail.max_errors", self.mail.max_errors),
            ] {
                if value == 0 {
                    problems.push(problem(key, "must be at least 1".into()));
                }
            }
            let relay = &self.mail.relay;
            if !matches!(relay.tls.as_str(), "starttls" | "tls" | "none") {
                problems.push(problem(
                    "mail.relay.tls",
                    format!("{:?}: \"starttls\", \"tls\" or \"none\"", relay.tls),
                ));
            }
            let relay_loopback = relay.host == "localhost"
                || relay
                    .host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if env.is_strict()
                && !relay.host.is_empty()
                && !relay.username.is_empty()
                && relay.tls == "none"
                && !relay_loopback
            {
                problems.push(problem(
                    "mail.relay.tls",
                    format!("credentials for {} would cross the network in the clear: use starttls or tls in {env}", relay.host),
                ));
            }
            if let Some(Err(reason)) = self.mail.store.postgres() {
                problems.push(problem(
                    "mail.store",
                    format!("neither \"sqlite\" nor a usable PostgreSQL URL: {reason}"),
                ));
            }
            let dkim = &self.mail.dkim;
            if dkim.private_key.is_empty() != dkim.selector.is_empty() {
                problems.push(problem(
                    "mail.dkim",
                    "give both selector and private_key (or neither)".into(),
                ));
            }
            if env == crate::Environment::Production && dkim.private_key.is_empty() {
                problems.push(problem(
                    "mail.dkim.private_key",
                    "required in production: outbound mail is DKIM-signed (set selector and private_key)".into(),
                ));
            }
            if !self.mail.dns_server.is_empty()
                && self
                    .mail
                    .dns_server
                    .parse::<std::net::SocketAddr>()
                    .is_err()
            {
                problems.push(problem(
                    "mail.dns_server",
                    format!("{:?} is not IP:port", self.mail.dns_server),
                ));
            }
            if self.mail.retry_intervals.is_empty() {
                problems.push(problem(
                    "mail.retry_intervals",
                    "give at least one interval".into(),
                ));
            }
            for interval in &self.mail.retry_intervals {
                match super::parse_interval(interval) {
                    Ok(Some(_)) => {}
                    Ok(None) => problems.push(problem(
                        "mail.retry_intervals",
                        format!("{interval:?}: an interval must be longer than 0"),
                    )),
                    Err(reason) => problems.push(problem("mail.retry_intervals", reason)),
                }
            }
            match super::parse_interval(&self.mail.max_queue_time) {
                Ok(Some(_)) => {}
                Ok(None) => problems.push(problem(
                    "mail.max_queue_time",
                    "must be longer than 0".into(),
                )),
                Err(reason) => problems.push(problem("mail.max_queue_time", reason)),
            }
            for account in &self.mail.accounts {
                let address = account.address.to_ascii_lowercase();
                let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                if !address.contains('@') || !self.mail.domains.iter().any(|d| d == domain) {
                    problems.push(problem(
                        "mail.accounts",
                        format!("{:?} is not an address in mail.domains", account.address),
                    ));
                }
                match (&account.password_hash, &account.password) {
                    (Some(hash), None) if !hash.expose().starts_with("$argon2") => {
                        problems.push(problem(
                            "mail.accounts",
                            format!(
                                "{}: password_hash must be an argon2 PHC string ($argon2id$…)",
                                account.address
                            ),
                        ))
                    }
                    (Some(_), None) => {}
                    (None, Some(_)) if env.is_strict() => problems.push(problem(
                        "mail.accounts",
                        format!(
                            "{}: a plain password is refused in {env}: give password_hash \
                             (mail-server accounts hash prints one)",
                            account.address
                        ),
                    )),
                    (None, Some(_)) => {}
                    _ => problems.push(problem(
                        "mail.accounts",
                        format!(
                            "{}: give exactly one of password_hash and password",
                            account.address
                        ),
                    )),
                }
                if env.is_strict() && address == super::DEV_MAIL_ACCOUNT {
                    problems.push(problem(
                        "mail.accounts",
                        format!("the development account {address} is refused in {env}"),
                    ));
                }
            }
        }
        (problems, warnings)
    }
}
