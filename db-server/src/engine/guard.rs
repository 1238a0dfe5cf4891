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

/// Whether a client may run `sql` (one statement).
pub fn check(sql: &str) -> Result<(), SqlError> {
    let mask = super::split::code_mask(sql);
    // Words of code only: `SELECT 'attach'` is fine.
    let code: String = sql
        .char_indices()
        .map(|(i, c)| {
            if mask.get(i).copied().unwrap_or(false) {
                c
            } else {
                ' '
            }
        })
        .collect();
    let lower = code.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let Some(first) = words.first() else {
        return Ok(());
    };
    match *first {
        "attach" | "detach" => Err(refused("ATTACH/DETACH")),
        "vacuum" if words.contains(&"into") => Err(refused("VACUUM INTO")),
        "pragma" => {
            let name = words.get(1).copied().unwrap_or("");
            // `PRAGMA schema.name`: only the main database.
            let (schema, name) = if lower.contains('.') && words.len() > 2 {
                (words[1], words[2])
            } else {
                ("main", name)
            };
            if schema != "main" {
                return Err(refused("PRAGMA on another schema"));
            }
            if !READABLE_PRAGMAS.contains(&name) {
                return Err(refused(&format!("PRAGMA {name}")));
            }
            if lower.contains('=') {
                return Err(refused(&format!("setting PRAGMA {name}")));
            }
            Ok(())
        }
        _ => {
            // ATTACH can also hide behind a CTE-less prefix such as EXPLAIN.
            if words.first() == Some(&"explain")
                && words.iter().any(|w| *w == "attach" || *w == "detach")
            {
                return Err(refused("ATTACH/DETACH"));
            }
            Ok(())
        }
    }
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
