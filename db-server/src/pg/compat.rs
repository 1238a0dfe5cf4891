//! What PostgreSQL clients send on their own and SQLite does not know: `SET`, `SHOW`, `RESET`,
//! `version()`, `current_database()`, `current_user`… Answered here, in PostgreSQL's words, so
//! drivers and tools connect and work unchanged.

use std::collections::BTreeMap;

use crate::engine::session::StatementResult;
use crate::engine::value::{Column, ColumnType, Value};
use crate::engine::{SqlError, sqlstate};

/// The PostgreSQL version clients are told (they pick features by it).
pub const SERVER_VERSION: &str = "15.6";

/// `SELECT version()`.
pub fn version_text() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Quartet {} on SQLite) on x86_64-pc-linux-gnu, 64-bit",
        env!("CARGO_PKG_VERSION")
    )
}

/// The settings `SHOW` knows and their values before any `SET`.
pub fn default_settings() -> BTreeMap<String, String> {
    [
        ("server_version", SERVER_VERSION),
        ("server_version_num", "150006"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("datestyle", "ISO, MDY"),
        ("timezone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("intervalstyle", "postgres"),
        ("transaction_isolation", "serializable"),
        ("default_transaction_isolation", "serializable"),
        ("transaction_read_only", "off"),
        ("default_transaction_read_only", "off"),
        ("max_identifier_length", "63"),
        ("search_path", "\"$user\", public"),
        ("application_name", ""),
        ("extra_float_digits", "1"),
        ("statement_timeout", "0"),
        ("lock_timeout", "0"),
        ("idle_in_transaction_session_timeout", "0"),
        ("bytea_output", "hex"),
        ("is_superuser", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn one_value(column: &str, value: String) -> StatementResult {
    StatementResult {
        columns: vec![Column {
            name: column.to_owned(),
            ty: ColumnType::Text,
        }],
        rows: vec![vec![Value::Text(value)]],
        tag: "SHOW".to_owned(),
        rows_affected: 0,
        last_insert_id: None,
        returns_rows: true,
        warning: None,
    }
}

fn tag(tag: &str) -> StatementResult {
    StatementResult {
        columns: Vec::new(),
        rows: Vec::new(),
        tag: tag.to_owned(),
        rows_affected: 0,
        last_insert_id: None,
        returns_rows: false,
        warning: None,
    }
}

/// Whether `sql` is one of the statements [`answer`] takes (by its first word).
pub fn handles(sql: &str) -> bool {
    let first = sql.split_whitespace().next().unwrap_or("");
    ["SET", "RESET", "SHOW", "DISCARD", "DEALLOCATE"]
        .iter()
        .any(|word| first.eq_ignore_ascii_case(word))
}

/// Answers `SET`, `SHOW` and `RESET` (and `DISCARD`, `DEALLOCATE`, which have nothing to undo
/// here). `None`: not one of them, run it.
pub fn answer(
    sql: &str,
    settings: &mut BTreeMap<String, String>,
) -> Option<Result<StatementResult, SqlError>> {
    if !handles(sql) {
        return None;
    }
    let words: Vec<&str> = sql.split_whitespace().collect();
    let first = words.first()?.to_ascii_uppercase();
    match first.as_str() {
        "SET" => {
            // SET [SESSION|LOCAL] name {TO|=} value  |  SET TIME ZONE value  |  SET NAMES value
            let rest = sql.trim_start()[3..].trim_start();
            let rest = strip_word(rest, "SESSION")
                .or_else(|| strip_word(rest, "LOCAL"))
                .unwrap_or(rest);
            if let Some(zone) = strip_word(rest, "TIME").and_then(|r| strip_word(r, "ZONE")) {
                settings.insert("timezone".into(), unquote(zone.trim()).to_owned());
                return Some(Ok(tag("SET")));
            }
            if strip_word(rest, "TRANSACTION").is_some()
                || strip_word(rest, "CHARACTERISTICS").is_some()
            {
                return Some(Ok(tag("SET")));
            }
            let (name, value) = match rest.split_once('=') {
                Some((name, value)) if !name.trim().contains(' ') => (name.trim(), value.trim()),
                _ => {
                    let mut parts = rest.splitn(2, char::is_whitespace);
                    let name = parts.next().unwrap_or("").trim();
                    let value = parts.next().unwrap_or("").trim();
                    (name, strip_word(value, "TO").unwrap_or(value).trim())
                }
            };
            if name.is_empty() {
                return Some(Err(SqlError::new(
                    sqlstate::SYNTAX_ERROR,
                    "SET needs a name and a value",
                )));
            }
            let name = name.to_ascii_lowercase();
            let value = value.trim_end_matches(';').trim();
            let value = if value.eq_ignore_ascii_case("DEFAULT") {
                default_settings().get(&name).cloned().unwrap_or_default()
            } else {
                value
                    .split(',')
                    .map(|part| unquote(part.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            settings.insert(name, value);
            Some(Ok(tag("SET")))
        }
        "RESET" => {
            let name = words
                .get(1)
                .map(|w| w.trim_end_matches(';').to_ascii_lowercase());
            match name.as_deref() {
                Some("all") | None => *settings = default_settings(),
                Some(name) => {
                    let default = default_settings().get(name).cloned().unwrap_or_default();
                    settings.insert(name.to_owned(), default);
                }
            }
            Some(Ok(tag("RESET")))
        }
        "SHOW" => {
            let name = words
                .get(1..)
                .map(|w| w.join(" "))
                .unwrap_or_default()
                .trim_end_matches(';')
                .to_ascii_lowercase();
            let name = if name == "time zone" {
                "timezone".to_owned()
            } else {
                name
            };
            if name == "all" {
                let mut result = StatementResult {
                    columns: vec![
                        Column {
                            name: "name".into(),
                            ty: ColumnType::Text,
                        },
                        Column {
                            name: "setting".into(),
                            ty: ColumnType::Text,
                        },
                    ],
                    rows: settings
                        .iter()
                        .map(|(k, v)| vec![Value::Text(k.clone()), Value::Text(v.clone())])
                        .collect(),
                    ..tag("SHOW")
                };
                result.returns_rows = true;
                return Some(Ok(result));
            }
            match settings.get(&name) {
                Some(value) => Some(Ok(one_value(&name, value.clone()))),
                None => Some(Err(SqlError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"{name}\""),
                ))),
            }
        }
        "DISCARD" => Some(Ok(tag(&format!(
            "DISCARD {}",
            words
                .get(1)
                .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
                .unwrap_or_default()
        )))),
        "DEALLOCATE" => Some(Ok(tag("DEALLOCATE"))),
        _ => None,
    }
}

fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let head = text.get(..word.len())?;
    let rest = &text[word.len()..];
    (head.eq_ignore_ascii_case(word) && (rest.is_empty() || rest.starts_with(char::is_whitespace)))
        .then(|| rest.trim_start())
}

fn unquote(text: &str) -> &str {
    text.strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| text.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
        .unwrap_or(text)
}

/// Replaces PostgreSQL's session functions with their values, in code only (not in strings
/// or comments): `version()`, `current_database()`, `current_schema()`, `current_user`,
/// `session_user`, `pg_backend_pid()`.
pub fn rewrite_functions(sql: &str, database: &str, user: &str, pid: i32) -> String {
    let lower = sql.to_ascii_lowercase();
    // Fast path: nothing to replace in the common case.
    if !["version", "current_", "session_user", "pg_backend_pid"]
        .iter()
        .any(|needle| lower.contains(needle))
    {
        return sql.to_owned();
    }
    let literal = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let replacements: [(&str, String); 9] = [
        ("pg_catalog.version()", literal(&version_text())),
        ("version()", literal(&version_text())),
        ("pg_catalog.current_database()", literal(database)),
        ("current_database()", literal(database)),
        ("current_schema()", literal("public")),
        ("current_schema", literal("public")),
        ("current_user", literal(user)),
        ("session_user", literal(user)),
        ("pg_backend_pid()", pid.to_string()),
    ];
    let bytes = sql.as_bytes();
    let code = crate::engine::split::code_mask(sql);
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        if code[i] {
            let before_ok = i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b'.');
            if before_ok {
                for (pattern, value) in &replacements {
                    let end = i + pattern.len();
                    if end <= bytes.len()
                        && lower.as_bytes()[i..end] == *pattern.as_bytes()
                        && (pattern.ends_with(')')
                            || end == bytes.len()
                            || !(bytes[end].is_ascii_alphanumeric()
                                || bytes[end] == b'_'
                                || bytes[end] == b'('))
                    {
                        out.push_str(value);
                        i = end;
                        continue 'outer;
                    }
                }
            }
        }
        // Copy one whole character.
        let width = sql[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&sql[i..i + width]);
        i += width;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_show_reset() {
        let mut settings = default_settings();
        let s = &mut settings;
        assert_eq!(
            answer("SET application_name = 'psql'", s)
                .unwrap()
                .unwrap()
                .tag,
            "SET"
        );
        assert_eq!(
            answer("set search_path to public, other", s)
                .unwrap()
                .unwrap()
                .tag,
            "SET"
        );
        assert!(answer("SET TIME ZONE 'Europe/Paris'", s).is_some());
        let shown = answer("SHOW application_name", s).unwrap().unwrap();
        assert_eq!(shown.rows, vec![vec![Value::Text("psql".into())]]);
        let shown = answer("show search_path", s).unwrap().unwrap();
        assert_eq!(shown.rows, vec![vec![Value::Text("public, other".into())]]);
        let shown = answer("SHOW TIME ZONE", s).unwrap().unwrap();
        assert_eq!(shown.rows, vec![vec![Value::Text("Europe/Paris".into())]]);
        assert_eq!(
            answer("SHOW nope", s).unwrap().unwrap_err().code,
            sqlstate::UNDEFINED_OBJECT
        );
        answer("RESET ALL", s).unwrap().unwrap();
        let shown = answer("SHOW application_name", s).unwrap().unwrap();
        assert_eq!(shown.rows, vec![vec![Value::Text(String::new())]]);
        assert!(answer("SELECT 1", s).is_none());
    }

    #[test]
    fn session_functions_become_values_outside_strings() {
        let sql = "select version(), current_database(), current_user, 'current_user', x.version() -- version()";
        let out = rewrite_functions(sql, "shop", "alice", 7);
        assert!(out.starts_with("select 'PostgreSQL 15.6 (Quartet"), "{out}");
        assert!(
            out.contains(", 'shop', 'alice', 'current_user', x.version() -- version()"),
            "{out}"
        );
        assert_eq!(
            rewrite_functions("SELECT pg_backend_pid()", "d", "u", 42),
            "SELECT 42"
        );
        assert_eq!(rewrite_functions("select 1", "d", "u", 1), "select 1");
    }
}
