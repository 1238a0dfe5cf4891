//! `db.backend = "postgres://user:password@host:port/database?sslmode=…&sslrootcert=…"`: the
//! PostgreSQL that db-server fronts, in libpq's URL form (the subset a proxy needs).

use std::fmt;
use std::path::PathBuf;

/// How the connection to the backend uses TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never.
    Disable,
    /// TLS when the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is checked against `sslrootcert` when one is given.
    Require,
    /// TLS, certificate signed by a trusted root (`sslrootcert`, else the web PKI roots).
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// Whether a connection in this mode is always encrypted.
    pub fn always_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// A parsed backend URL. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    /// The database used for administration (`CREATE DATABASE`, listing); `postgres` if none.
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresUrl")
            .field("user", &self.user)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish_non_exhaustive()
    }
}

/// `%XX` escapes decoded (user names and passwords may contain `@`, `:` or `/`).
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = text
                .get(at + 1..at + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {text:?}"))?;
            out.push(hex);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

impl PostgresUrl {
    /// Parses `postgres://` or `postgresql://` URLs; the error says what is wrong (never
    /// repeating the password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("the URL must start with postgres:// or postgresql://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        // The last `@` ends the user information (a password may hold `/` or `@`).
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (hostport, path) = match rest.split_once('/') {
            Some((hostport, path)) => (hostport, path),
            None => (rest, ""),
        };
        let (mut user, mut password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (decode(user)?, decode(password)?),
                None => (decode(info)?, String::new()),
            },
            None => (String::new(), String::new()),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ]")?;
            (host.to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err("the URL names no host".into());
        }
        let port = match port {
            None | Some("") => 5432,
            Some(port) => port
                .parse()
                .map_err(|_| format!("{port:?} is not a port number"))?,
        };
        let mut database = decode(path)?;
        let mut sslmode = SslMode::Prefer;
        let mut sslrootcert = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value)?;
            match name {
                "sslmode" => {
                    sslmode = match value.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" | "allow" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "sslmode={other} is not one of disable, prefer, require, \
                                 verify-ca, verify-full"
                            ));
                        }
                    }
                }
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)),
                "user" => user = value,
                "password" => password = value,
                "dbname" => database = value,
                // Harmless libpq options a copied URL may carry.
                "connect_timeout" | "application_name" => {}
                other => return Err(format!("unknown URL parameter {other:?}")),
            }
        }
        if user.is_empty() {
            return Err("the URL names no user".into());
        }
        if database.is_empty() {
            database = "postgres".into();
        }
        Ok(Self {
            user,
            password,
            host,
            port,
            database,
            sslmode,
            sslrootcert,
        })
    }

    /// Whether the backend is on this machine (TLS to it protects nothing).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_libpq() {
        let url = PostgresUrl::parse(
            "postgres://ad%40min:p%3Ass@db.example.test:6543/app?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        )
        .expect("parses");
        assert_eq!(url.user, "ad@min");
        assert_eq!(url.password, "p:ss");
        assert_eq!(url.host, "db.example.test");
        assert_eq!(url.port, 6543);
        assert_eq!(url.database, "app");
        assert_eq!(url.sslmode, SslMode::VerifyFull);
        assert_eq!(url.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert!(!format!("{url:?}").contains("p:ss"));

        let url = PostgresUrl::parse("postgresql://u@[::1]").expect("parses");
        assert_eq!((url.host.as_str(), url.port), ("::1", 5432));
        assert_eq!(url.database, "postgres");
        assert_eq!(url.sslmode, SslMode::Prefer);
        assert!(url.is_loopback());

        for bad in [
            "mysql://u@h/db",
            "postgres://h/db",
            "postgres://u@h:port/db",
            "postgres://u@h/db?sslmode=maybe",
            "postgres://u@/db",
            "postgres://u@h/db?frobnicate=1",
        ] {
            assert!(PostgresUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
