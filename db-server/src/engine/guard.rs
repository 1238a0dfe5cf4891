//! Statements no client may run, whatever its grants: they would reach past the database the
//! session is on or weaken the server's guarantees. `ATTACH`/`DETACH` (another file — the role
//! catalog, another database, any path the server can write), `VACUUM INTO` (writes a file
//! anywhere), and `PRAGMA`s other than read-only introspection (`synchronous = OFF` or
//! `journal_mode = DELETE` would void durability; `writable_schema` corrupts).
//! SQLite's own authorizer would be the finer tool; sqlx does not expose it.

use super::{SqlError, sqlstate};

/// PRAGMAs a client may read (never set).
const READABLE_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "collation_list",
    "user_version",
    "application_id",
    "page_count",
    "page_size",
    "freelist_count",
    "encoding",
    "compile_options",
];

fn refused(what: &str) -> SqlError {
    SqlError::new(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!("{what} is not allowed on this server"),
    )
}

/// PRAGMAs of the list that take an argument in parentheses (a table, an index, a limit).
const PRAGMAS_WITH_ARGUMENT: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "table_list",
];

/// Whether a client may run `sql`. Checked on every word of code, not only the first: a
/// statement the splitter takes for one (a trigger body) must not hide another.
pub fn check(sql: &str) -> Result<(), SqlError> {
    // Words of code only: `SELECT 'attach'` is fine.
    let lower = super::split::code_only(sql).to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii() || !super::split::is_word_byte(c as u8))
        .filter(|w| !w.is_empty())
        .collect();
    if words.iter().any(|w| *w == "attach" || *w == "detach") {
        return Err(refused("ATTACH/DETACH"));
    }
    if words.contains(&"vacuum") && words.contains(&"into") {
        return Err(refused("VACUUM INTO"));
    }
    if words.iter().skip(1).any(|w| *w == "pragma") {
        return Err(refused("PRAGMA after another statement"));
    }
    if words.first() != Some(&"pragma") {
        return Ok(());
    }
    // PRAGMA [schema.]name [(argument)]
    let (schema, name) = match lower.trim_start()[6..].trim_start().split_once('.') {
        Some((schema, rest)) if !schema.contains('(') => (
            schema.trim(),
            rest.split(|c: char| c == '(' || c.is_whitespace() || c == '=' || c == ';')
                .next()
                .unwrap_or(""),
        ),
        _ => ("main", words.get(1).copied().unwrap_or("")),
    };
    if schema != "main" {
        return Err(refused("PRAGMA on another schema"));
    }
    if !READABLE_PRAGMAS.contains(&name) {
        return Err(refused(&format!("PRAGMA {name}")));
    }
    if lower.contains('=') || (lower.contains('(') && !PRAGMAS_WITH_ARGUMENT.contains(&name)) {
        return Err(refused(&format!("setting PRAGMA {name}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_refused_and_introspection_allowed() {
        for sql in [
            "ATTACH DATABASE '/data/db/system.db' AS sys",
            "attach 'x.db' as x",
            "DETACH x",
            "VACUUM INTO '/tmp/copy.db'",
            "PRAGMA synchronous = OFF",
            "pragma journal_mode=delete",
            "PRAGMA writable_schema = 1",
            "PRAGMA user_version = 3",
            "PRAGMA temp.table_info(t)",
            "EXPLAIN ATTACH 'x' AS y",
            "PRAGMA user_version(5)",
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1 AS x$begin; END; ATTACH 's.db' AS s",
            "SELECT 1; PRAGMA synchronous = OFF",
        ] {
            assert!(check(sql).is_err(), "{sql}");
        }
        for sql in [
            "PRAGMA table_info(accounts)",
            "pragma integrity_check",
            "PRAGMA main.index_list(\"t\")",
            "VACUUM",
            "SELECT 'attach database' AS text",
            "INSERT INTO log (line) VALUES ('PRAGMA synchronous = OFF')",
        ] {
            assert!(check(sql).is_ok(), "{sql}");
        }
    }
}
