//! Errors as PostgreSQL clients expect them: a SQLSTATE and a message. SQLite's result codes
//! and messages are mapped to the SQLSTATEs clients and ORMs act on (unique violation, undefined
//! table, syntax error, lock not available, query cancelled…).

use std::fmt;

/// SQLSTATE codes used by the engine and the protocols.
pub mod sqlstate {
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const DATA_EXCEPTION: &str = "22000";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const INTEGRITY_CONSTRAINT_VIOLATION: &str = "23000";
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    pub const DUPLICATE_TABLE: &str = "42P07";
    pub const DUPLICATE_DATABASE: &str = "42P04";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const DISK_FULL: &str = "53100";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const DATA_CORRUPTED: &str = "XX001";
    pub const INTERNAL_ERROR: &str = "XX000";

    /// A SQLSTATE received from elsewhere (a PostgreSQL backend) as a `&'static str`: the
    /// codes are a small fixed set, so each distinct one is kept once; anything that is not
    /// five digits or capitals becomes XX000.
    pub fn intern(code: &str) -> &'static str {
        use std::collections::HashSet;
        use std::sync::{Mutex, OnceLock};
        static KNOWN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let valid = code.len() == 5
            && code
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        if !valid {
            return INTERNAL_ERROR;
        }
        let Ok(mut known) = KNOWN.get_or_init(Default::default).lock() else {
            return INTERNAL_ERROR;
        };
        if let Some(code) = known.get(code) {
            return code;
        }
        // PostgreSQL defines a few hundred codes; more than this is not a PostgreSQL.
        if known.len() >= 2048 {
            return INTERNAL_ERROR;
        }
        let leaked: &'static str = Box::leak(code.to_owned().into_boxed_str());
        known.insert(leaked);
        leaked
    }
}

/// An error a client sees: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub code: &'static str,
    pub message: String,
}

impl SqlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Maps a failure of SQLite (through sqlx) to its SQLSTATE.
    pub fn from_sqlx(err: &sqlx::Error) -> Self {
        use sqlstate::*;
        let sqlx::Error::Database(db) = err else {
            return match err {
                sqlx::Error::PoolTimedOut => Self::new(
                    TOO_MANY_CONNECTIONS,
                    "no database connection became free in time",
                ),
                other => Self::new(INTERNAL_ERROR, other.to_string()),
            };
        };
        let extended: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or(1);
        Self::from_sqlite(extended, db.message().to_owned())
    }

    /// Maps SQLite's extended result code and message to a SQLSTATE.
    pub fn from_sqlite(extended: i32, message: String) -> Self {
        use sqlstate::*;
        let code = match extended {
            2067 | 1555 => UNIQUE_VIOLATION, // SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY
            787 => FOREIGN_KEY_VIOLATION,    // SQLITE_CONSTRAINT_FOREIGNKEY
            1299 => NOT_NULL_VIOLATION,      // SQLITE_CONSTRAINT_NOTNULL
            275 => CHECK_VIOLATION,          // SQLITE_CONSTRAINT_CHECK
            517 => SERIALIZATION_FAILURE,    // SQLITE_BUSY_SNAPSHOT
            9 => QUERY_CANCELED,             // SQLITE_INTERRUPT
            13 => DISK_FULL,                 // SQLITE_FULL
            18 => PROGRAM_LIMIT_EXCEEDED,    // SQLITE_TOOBIG
            11 | 26 => DATA_CORRUPTED,       // SQLITE_CORRUPT, SQLITE_NOTADB
            _ => match extended & 0xff {
                5 | 6 => LOCK_NOT_AVAILABLE, // SQLITE_BUSY, SQLITE_LOCKED
                8 => READ_ONLY_SQL_TRANSACTION,
                19 => INTEGRITY_CONSTRAINT_VIOLATION,
                _ => classify_message(&message),
            },
        };
        let message = if code == QUERY_CANCELED {
            "canceling statement due to user request or statement timeout".to_owned()
        } else {
            message
        };
        Self { code, message }
    }
}

/// SQLite reports most mistakes as the generic `SQLITE_ERROR`; its message says which.
fn classify_message(message: &str) -> &'static str {
    use sqlstate::*;
    if message.starts_with("no such table") || message.starts_with("no such view") {
        UNDEFINED_TABLE
    } else if message.starts_with("no such column") || message.contains("has no column named") {
        UNDEFINED_COLUMN
    } else if message.starts_with("no such function") {
        UNDEFINED_FUNCTION
    } else if message.contains("syntax error")
        || message.starts_with("incomplete input")
        || message.starts_with("unrecognized token")
    {
        SYNTAX_ERROR
    } else if message.contains("already exists") {
        DUPLICATE_TABLE
    } else if message.starts_with("cannot start a transaction within a transaction") {
        ACTIVE_SQL_TRANSACTION
    } else if message.starts_with("no such index")
        || message.starts_with("no such trigger")
        || message.starts_with("no such savepoint")
    {
        UNDEFINED_OBJECT
    } else {
        INTERNAL_ERROR
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for SqlError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_without_their_own_code_are_classified() {
        assert_eq!(
            classify_message("no such table: t"),
            sqlstate::UNDEFINED_TABLE
        );
        assert_eq!(
            classify_message("near \"selec\": syntax error"),
            sqlstate::SYNTAX_ERROR
        );
        assert_eq!(
            classify_message("table t already exists"),
            sqlstate::DUPLICATE_TABLE
        );
        assert_eq!(
            classify_message("no such column: x"),
            sqlstate::UNDEFINED_COLUMN
        );
        assert_eq!(classify_message("something odd"), sqlstate::INTERNAL_ERROR);
    }
}
