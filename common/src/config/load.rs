//! Reading the layers and turning every failure into a [`Problem`] that names the key, the
//! layer and the reason.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use config::{FileFormat, Map, Source, Value, ValueKind};

use super::Config;
use super::defaults::defaults;
use crate::environment::{self, Environment};
use crate::role::Role;

/// Prefix of the variables that override configuration keys: `QUARTET__WEB__HTTP_LISTEN`.
pub const VAR_PREFIX: &str = "QUARTET__";
/// Variable naming the directory that holds `default.toml` and `<env>.toml`.
pub const CONFIG_DIR_VAR: &str = "QUARTET_CONFIG_DIR";

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Variable(String),
    /// A command-line flag such as `--env`.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("built-in default"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Variable(name) => write!(f, "variable {name}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// For every key, the last layer that set it.
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// The layer that set `key`, or the nearest enclosing table that was set as a whole.
    pub fn of(&self, key: &str) -> Origin {
        let mut probe = key;
        loop {
            if let Some(origin) = self.0.get(probe) {
                return origin.clone();
            }
            match probe.rsplit_once('.') {
                Some((parent, _)) => probe = parent,
                None => return Origin::Default,
            }
        }
    }

    fn set(&mut self, key: String, origin: Origin) {
        self.0.insert(key, origin);
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`web.http_listen`), or `None` for a whole file that cannot be read.
    pub key: Option<String>,
    pub origin: Origin,
    pub reason: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, origin: Origin, reason: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            origin,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {} (from {})", self.reason, self.origin),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

/// Every problem found while loading; never only the first.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "invalid configuration ({count} problem{})",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl From<Problem> for ConfigError {
    fn from(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

/// What to load: the environment, the layers' locations and the variables to read.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub environment: Environment,
    /// Overrides `QUARTET_CONFIG_DIR` and the `deploy/config` / `/etc/quartet` fallback.
    pub config_dir: Option<PathBuf>,
    /// `--config FILE` layers, in order; each must exist.
    pub files: Vec<PathBuf>,
    /// The process environment, or a map a test injects (never `set_var`).
    pub vars: HashMap<String, String>,
}

impl LoadOptions {
    /// Options for `environment` with no files and no variables: built-in defaults only.
    pub fn new(environment: Environment) -> Self {
        Self {
            environment,
            config_dir: None,
            files: Vec::new(),
            vars: HashMap::new(),
        }
    }

    /// Options from the command line and the process environment (read once, here).
    pub fn from_process(env_flag: Option<&str>, files: Vec<PathBuf>) -> Result<Self, ConfigError> {
        // Variables that are not valid UTF-8 cannot be configuration; skip them, don't panic.
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        // An empty QUARTET_ENV counts as unset.
        let variable = vars
            .get(environment::ENV_VAR)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty());
        let environment = Environment::resolve(env_flag, variable).map_err(|err| {
            let origin = if env_flag.is_some() {
                Origin::Flag("--env".into())
            } else {
                Origin::Variable(environment::ENV_VAR.into())
            };
            Problem::new("environment", origin, err.to_string())
        })?;
        Ok(Self {
            environment,
            config_dir: None,
            files,
            vars,
        })
    }

    /// `--config-dir`, else `QUARTET_CONFIG_DIR`, else `./deploy/config` if it exists, else
    /// `/etc/quartet`.
    pub fn config_dir(&self) -> PathBuf {
        if let Some(dir) = &self.config_dir {
            return dir.clone();
        }
        if let Some(dir) = self.vars.get(CONFIG_DIR_VAR).filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let local = Path::new("deploy/config");
        if local.is_dir() {
            local.to_path_buf()
        } else {
            PathBuf::from("/etc/quartet")
        }
    }
}

/// A loaded, validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub origins: Origins,
    /// The layers that were read, lowest first, for `--check` to show.
    pub layers: Vec<Origin>,
    /// Not wrong, but worth a look (printed by `--check`, logged at start).
    pub warnings: Vec<Problem>,
}

/// Loads and validates the configuration for running `roles`.
pub fn load(options: &LoadOptions, roles: &[Role]) -> Result<Loaded, ConfigError> {
    let environment = options.environment;
    let mut problems = Vec::new();
    let mut origins = Origins::default();
    let mut layers = vec![Origin::Default];
    let mut builder = config::Config::builder();

    let known: Vec<&'static str> = defaults(environment).iter().map(|(k, _)| *k).collect();
    for (key, value) in defaults(environment) {
        builder = builder
            .set_default(key, value)
            .map_err(|err| Problem::new(key, Origin::Default, err.to_string()))?;
        origins.set(key.to_owned(), Origin::Default);
    }

    // Files: default.toml and <env>.toml are optional, --config files are required.
    let dir = options.config_dir();
    let mut files: Vec<(PathBuf, bool)> = vec![
        (dir.join("default.toml"), false),
        (dir.join(format!("{environment}.toml")), false),
    ];
    files.extend(options.files.iter().map(|path| (path.clone(), true)));
    for (path, required) in files {
        if !required && !path.exists() {
            continue;
        }
        let origin = Origin::File(path.clone());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) => {
                problems.push(Problem {
                    key: None,
                    origin,
                    reason: format!("cannot read: {err}"),
                });
                continue;
            }
        };
        let source = config::File::from_str(&text, FileFormat::Toml);
        let map = match source.collect() {
            Ok(map) => map,
            Err(err) => {
                problems.push(Problem {
                    key: None,
                    origin,
                    reason: format!("not valid TOML: {}", file_parse_reason(&err)),
                });
                continue;
            }
        };
        let mut keys = Vec::new();
        flatten(&map, "", &mut keys);
        for key in keys {
            check_known(&key, &known, &origin, &mut problems);
            origins.set(key, origin.clone());
        }
        builder = builder.add_source(source);
        layers.push(origin);
    }

    // Variables: QUARTET__SECTION__KEY, lowercased, `__` between levels.
    let mut variables: HashMap<String, String> = HashMap::new();
    for (name, value) in &options.vars {
        let Some(rest) = strip_prefix_ignore_case(name, VAR_PREFIX) else {
            continue;
        };
        let key = rest.to_lowercase().replace("__", ".");
        let origin = Origin::Variable(name.clone());
        check_known(&key, &known, &origin, &mut problems);
        origins.set(key, origin.clone());
        layers.push(origin);
        variables.insert(name.clone(), value.clone());
    }
    builder = builder.add_source(
        config::Environment::default()
            .prefix("QUARTET")
            .prefix_separator("__")
            .separator("__")
            .source(Some(variables)),
    );

    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }

    let merged = builder
        .build()
        .map_err(|err| describe(&err, None, &origins))?;
    let mut config: Config = merged
        .try_deserialize()
        .map_err(|err| describe(&err, None, &origins))?;
    config.environment = environment;
    config.normalise();

    let (problems, warnings) = config.validate(roles, &origins);
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Ok(Loaded {
        config,
        origins,
        layers,
        warnings,
    })
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// Dotted paths of every leaf of a layer.
fn flatten(map: &Map<String, Value>, prefix: &str, out: &mut Vec<String>) {
    for (name, value) in map {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match &value.kind {
            ValueKind::Table(table) if !table.is_empty() => flatten(table, &path, out),
            _ => out.push(path),
        }
    }
}

/// A key is known if it is a default's key, lies inside a known key whose value is structured
/// (a list or table of entries, checked by serde), or names a section (serde checks its type).
fn check_known(key: &str, known: &[&str], origin: &Origin, problems: &mut Vec<Problem>) {
    let is_known = known.iter().any(|k| {
        *k == key
            || key
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('.'))
            || k.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with('.'))
    });
    if is_known {
        return;
    }
    let mut reason = "unknown key".to_owned();
    if let Some(best) = known
        .iter()
        .map(|k| (edit_distance(k, key), k))
        .filter(|(distance, _)| *distance <= 3)
        .min()
    {
        reason.push_str(&format!("; did you mean `{}`?", best.1));
    }
    problems.push(Problem::new(key, origin.clone(), reason));
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

fn file_parse_reason(err: &config::ConfigError) -> String {
    match err {
        config::ConfigError::FileParse { cause, .. } => cause.to_string().trim().to_owned(),
        other => other.to_string(),
    }
}

/// Turns a `config` crate error into a problem naming the key and the layer that set it.
fn describe(err: &config::ConfigError, key: Option<String>, origins: &Origins) -> Problem {
    match err {
        config::ConfigError::At {
            error, key: inner, ..
        } => describe(error, inner.clone().or(key), origins),
        config::ConfigError::Type {
            unexpected,
            expected,
            key: inner,
            ..
        } => {
            let key = inner.clone().or(key).unwrap_or_else(|| "(root)".into());
            let origin = origins.of(&key);
            Problem::new(
                key,
                origin,
                format!("invalid value: {unexpected}, expected {expected}"),
            )
        }
        config::ConfigError::Message(message) => {
            let key = key.unwrap_or_else(|| "(root)".into());
            let origin = origins.of(&key);
            Problem::new(key, origin, message.clone())
        }
        other => {
            let key = key.unwrap_or_else(|| "(root)".into());
            let origin = origins.of(&key);
            Problem::new(key, origin, other.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("web.http_listen", "web.http_listen"), 0);
        assert_eq!(edit_distance("web.http_listen", "web.htp_listen"), 1);
        assert_eq!(edit_distance("abc", ""), 3);
    }
}
