//! The three deployment environments and how one is chosen.

use std::fmt;
use std::str::FromStr;

/// Where a role is deployed. The environment changes behaviour, not just file names: see the
/// table in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// A developer's machine: loopback listeners, generated TLS, default logins allowed.
    #[default]
    Development,
    /// A rehearsal of production: same strictness, mail only to an allowlist.
    Staging,
    /// The real thing: TLS-only for passwords, no default credentials.
    Production,
}

/// The variable consulted when `--env` is not given.
pub const ENV_VAR: &str = "QUARTET_ENV";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown environment {given:?}: expected one of development, staging, production")]
pub struct UnknownEnvironment {
    pub given: String,
}

impl Environment {
    pub const ALL: [Environment; 3] = [Self::Development, Self::Staging, Self::Production];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }

    /// Staging and production share the strict policy: no default credentials, real
    /// certificates, no plaintext passwords off loopback.
    pub fn is_strict(self) -> bool {
        !matches!(self, Self::Development)
    }

    /// `--env` wins, then `QUARTET_ENV`, then development.
    pub fn resolve(flag: Option<&str>, variable: Option<&str>) -> Result<Self, UnknownEnvironment> {
        match flag.or(variable) {
            Some(name) => name.parse(),
            None => Ok(Self::Development),
        }
    }
}

impl FromStr for Environment {
    type Err = UnknownEnvironment;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "staging" => Ok(Self::Staging),
            "production" | "prod" => Ok(Self::Production),
            _ => Err(UnknownEnvironment {
                given: name.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_variable_and_default_is_development() {
        assert_eq!(
            Environment::resolve(Some("production"), Some("staging")),
            Ok(Environment::Production)
        );
        assert_eq!(
            Environment::resolve(None, Some("staging")),
            Ok(Environment::Staging)
        );
        assert_eq!(
            Environment::resolve(None, None),
            Ok(Environment::Development)
        );
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = Environment::resolve(Some("prodution"), None).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("\"prodution\""), "{message}");
        for name in ["development", "staging", "production"] {
            assert!(message.contains(name), "{message}");
        }
    }
}
