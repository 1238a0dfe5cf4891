//! The four roles and the listeners each one binds.

use std::fmt;
use std::str::FromStr;

use crate::config::{Config, ListenAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Web,
    Db,
    Mail,
    App,
}

/// How a listener treats passwords, which decides what the environment policy demands of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Carries no passwords (public HTTP, SMTP relay port, app traffic).
    Plain,
    /// Plaintext until STARTTLS / STLS / SSLRequest; passwords only after the upgrade.
    StartTls,
    /// TLS from the first byte.
    ImplicitTls,
    /// An HTTP listener that carries passwords or tokens; `tls` says whether it is served over TLS.
    Http { tls: bool },
}

/// One listener of a role, as configured.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub role: Role,
    /// Short name the role uses to take it from [`crate::Listeners`] (`http`, `smtp`, ...).
    pub name: &'static str,
    /// What a client speaks to it, for logs and the `quartet up` table.
    pub protocol: &'static str,
    /// The configuration key it comes from, for error messages.
    pub key: &'static str,
    pub addr: ListenAddr,
    pub transport: Transport,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Web, Role::Db, Role::Mail, Role::App];

    pub fn name(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Db => "db",
            Role::Mail => "mail",
            Role::App => "app",
        }
    }

    /// Every listener this role binds, in the order they are logged.
    pub fn listeners(self, config: &Config) -> Vec<ListenerSpec> {
        use Transport::*;
        let spec = |name, protocol, key, addr: &ListenAddr, transport| ListenerSpec {
            role: self,
            name,
            protocol,
            key,
            addr: addr.clone(),
            transport,
        };
        let http_or_https = |tls: bool| if tls { "https" } else { "http" };
        match self {
            Role::Web => vec![
                spec(
                    "http",
                    "http",
                    "web.http_listen",
                    &config.web.http_listen,
                    Plain,
                ),
                spec(
                    "https",
                    "https",
                    "web.https_listen",
                    &config.web.https_listen,
                    ImplicitTls,
                ),
            ],
            Role::Db => vec![
                spec(
                    "pg",
                    "postgresql",
                    "db.pg_listen",
                    &config.db.pg_listen,
                    StartTls,
                ),
                spec(
                    "http",
                    http_or_https(config.db.http_tls),
                    "db.http_listen",
                    &config.db.http_listen,
                    Http {
                        tls: config.db.http_tls,
                    },
                ),
            ],
            Role::Mail => vec![
                spec(
                    "smtp",
                    "smtp",
                    "mail.smtp_listen",
                    &config.mail.smtp_listen,
                    Plain,
                ),
                spec(
                    "submission",
                    "submission",
                    "mail.submission_listen",
                    &config.mail.submission_listen,
                    StartTls,
                ),
                spec(
                    "submissions",
                    "submissions",
                    "mail.submissions_listen",
                    &config.mail.submissions_listen,
                    ImplicitTls,
                ),
                spec(
                    "imap",
                    "imap",
                    "mail.imap_listen",
                    &config.mail.imap_listen,
                    StartTls,
                ),
                spec(
                    "imaps",
                    "imaps",
                    "mail.imaps_listen",
                    &config.mail.imaps_listen,
                    ImplicitTls,
                ),
                spec(
                    "pop3",
                    "pop3",
                    "mail.pop3_listen",
                    &config.mail.pop3_listen,
                    StartTls,
                ),
                spec(
                    "pop3s",
                    "pop3s",
                    "mail.pop3s_listen",
                    &config.mail.pop3s_listen,
                    ImplicitTls,
                ),
                spec(
                    "http",
                    http_or_https(config.mail.http_tls),
                    "mail.http_listen",
                    &config.mail.http_listen,
                    Http {
                        tls: config.mail.http_tls,
                    },
                ),
            ],
            Role::App => vec![
                spec(
                    "api",
                    http_or_https(config.app.api_tls),
                    "app.api_listen",
                    &config.app.api_listen,
                    Http {
                        tls: config.app.api_tls,
                    },
                ),
                spec(
                    "http",
                    "http",
                    "app.http_listen",
                    &config.app.http_listen,
                    Plain,
                ),
            ],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected web, db, mail or app")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim() {
            "web" => Ok(Role::Web),
            "db" => Ok(Role::Db),
            "mail" => Ok(Role::Mail),
            "app" => Ok(Role::App),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}
