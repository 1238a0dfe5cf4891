//! Administration statements, in PostgreSQL's syntax, for both front ends:
//! `CREATE DATABASE`, `DROP DATABASE [IF EXISTS]`, `CREATE ROLE|USER … [SUPERUSER] PASSWORD '…'`,
//! `ALTER ROLE|USER … PASSWORD '…'`, `DROP ROLE|USER [IF EXISTS]`, and
//! `GRANT {SELECT|READ|WRITE|ALL [PRIVILEGES]|ADMIN} ON DATABASE d TO r` / `REVOKE … FROM r`.
//! Databases and roles need a superuser; grants need admin on the database.

use super::session::StatementResult;
use super::{Engine, Privilege, SqlError, sqlstate, valid_database_name, valid_role_name};

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub role: &'a str,
    pub superuser: bool,
}

fn done(tag: &str) -> StatementResult {
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

/// Words of a statement: identifiers lowercased (unless double-quoted), string literals kept
/// with their quotes.
fn tokens(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.trim().trim_end_matches(';').chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == ',' {
            chars.next();
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut text = String::new();
            while let Some(next) = chars.next() {
                if next == c {
                    if chars.peek() == Some(&c) {
                        chars.next();
                        text.push(c);
                        continue;
                    }
                    break;
                }
                text.push(next);
            }
            out.push(if c == '\'' { format!("'{text}") } else { text });
        } else {
            let mut word = String::new();
            while let Some(&next) = chars.peek() {
                if next.is_whitespace() || next == ',' || next == '\'' || next == '"' {
                    break;
                }
                word.push(next);
                chars.next();
            }
            out.push(word.to_ascii_lowercase());
        }
    }
    out
}

fn syntax(message: &str) -> SqlError {
    SqlError::new(sqlstate::SYNTAX_ERROR, message)
}

fn need_superuser(caller: Caller<'_>, what: &str) -> Result<(), SqlError> {
    if caller.superuser {
        Ok(())
    } else {
        Err(SqlError::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to {what}: role \"{}\" is not a superuser",
                caller.role
            ),
        ))
    }
}

fn name<'a>(tokens: &'a [String], index: usize, what: &str) -> Result<&'a str, SqlError> {
    let name = tokens
        .get(index)
        .map(String::as_str)
        .ok_or_else(|| syntax(&format!("{what} name expected")))?;
    let valid = if what == "database" {
        valid_database_name(name)
    } else {
        valid_role_name(name)
    };
    if valid {
        Ok(name)
    } else {
        Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("{name:?} is not a valid {what} name (1-63 of a-z, 0-9 and _)"),
        ))
    }
}

/// The password after `PASSWORD`, if given.
fn password(tokens: &[String]) -> Result<Option<String>, SqlError> {
    match tokens.iter().position(|t| t == "password") {
        None => Ok(None),
        Some(at) => match tokens.get(at + 1) {
            Some(literal) if literal.starts_with('\'') => Ok(Some(literal[1..].to_owned())),
            _ => Err(syntax("PASSWORD needs a quoted string")),
        },
    }
}

/// Runs `sql` if it is an administration statement; `None` otherwise.
pub async fn answer(
    engine: &Engine,
    caller: Caller<'_>,
    sql: &str,
) -> Option<Result<StatementResult, SqlError>> {
    if !is_admin(sql) {
        return None;
    }
    Some(run(engine, caller, &tokens(sql)).await)
}

/// Whether `sql` is one of the statements this module runs.
pub fn is_admin(sql: &str) -> bool {
    let first_two: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(str::to_ascii_lowercase)
        .collect();
    matches!(
        (
            first_two.first().map(String::as_str),
            first_two.get(1).map(String::as_str)
        ),
        (Some("create" | "drop"), Some("database" | "role" | "user"))
            | (Some("alter"), Some("role" | "user"))
            | (Some("grant" | "revoke"), Some(_))
    )
}

/// Whether `sql` is one of Quartet's own administration statements when a PostgreSQL backend
/// runs everything else: as [`is_admin`], but `GRANT`/`REVOKE` only `ON DATABASE` (grants on
/// tables are the backend's).
pub fn is_quartet_admin(sql: &str) -> bool {
    if !is_admin(sql) {
        return false;
    }
    let words = tokens(sql);
    match words.first().map(String::as_str) {
        Some("grant" | "revoke") => words.windows(2).any(|pair| pair == ["on", "database"]),
        _ => true,
    }
}

async fn run(
    engine: &Engine,
    caller: Caller<'_>,
    t: &[String],
) -> Result<StatementResult, SqlError> {
    let words: Vec<&str> = t.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["create", "database", ..] => {
            need_superuser(caller, "create databases")?;
            engine.create_database(name(t, 2, "database")?).await?;
            Ok(done("CREATE DATABASE"))
        }
        ["drop", "database", "if", "exists", ..] => {
            need_superuser(caller, "drop databases")?;
            match engine.drop_database(name(t, 4, "database")?).await {
                Err(err) if err.code == sqlstate::INVALID_CATALOG_NAME => Ok(done("DROP DATABASE")),
                other => other.map(|()| done("DROP DATABASE")),
            }
        }
        ["drop", "database", ..] => {
            need_superuser(caller, "drop databases")?;
            engine.drop_database(name(t, 2, "database")?).await?;
            Ok(done("DROP DATABASE"))
        }
        ["create", "role" | "user", ..] => {
            need_superuser(caller, "create roles")?;
            let role = name(t, 2, "role")?;
            let password = password(t)?.ok_or_else(|| {
                SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "a role needs a PASSWORD: it logs in with SCRAM-SHA-256",
                )
            })?;
            let superuser = words.contains(&"superuser");
            engine
                .catalog
                .put_role(role, &password, superuser, false)
                .await?;
            Ok(done("CREATE ROLE"))
        }
        ["alter", "role" | "user", ..] => {
            let role = name(t, 2, "role")?;
            // Anyone may change their own password; other roles need a superuser.
            if role != caller.role {
                need_superuser(caller, "alter other roles")?;
            }
            let password =
                password(t)?.ok_or_else(|| syntax("ALTER ROLE … PASSWORD '…' expected"))?;
            let superuser = if caller.superuser {
                words.contains(&"superuser")
                    || (engine.catalog.is_superuser(role).await? && !words.contains(&"nosuperuser"))
            } else {
                false
            };
            if engine.catalog.verifier(role).await?.is_none() {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("role \"{role}\" does not exist"),
                ));
            }
            engine
                .catalog
                .put_role(role, &password, superuser, true)
                .await?;
            Ok(done("ALTER ROLE"))
        }
        ["drop", "role" | "user", "if", "exists", ..] => {
            need_superuser(caller, "drop roles")?;
            match engine.catalog.drop_role(name(t, 4, "role")?).await {
                Err(err) if err.code == sqlstate::UNDEFINED_OBJECT => Ok(done("DROP ROLE")),
                other => other.map(|()| done("DROP ROLE")),
            }
        }
        ["drop", "role" | "user", ..] => {
            need_superuser(caller, "drop roles")?;
            let role = name(t, 2, "role")?;
            if role == caller.role {
                return Err(SqlError::new(
                    sqlstate::OBJECT_IN_USE,
                    "current user cannot be dropped",
                ));
            }
            engine.catalog.drop_role(role).await?;
            Ok(done("DROP ROLE"))
        }
        ["grant", .., "on", "database", _, "to", _]
        | ["revoke", .., "on", "database", _, "from", _] => {
            let grant = words[0] == "grant";
            let on = words.iter().position(|w| *w == "on").unwrap_or(1);
            let privilege: Privilege = words[1..on].join(" ").parse()?;
            let database = name(t, on + 2, "database")?;
            let role = name(t, on + 4, "role")?;
            if !engine.has_database(database).await? {
                return Err(SqlError::new(
                    sqlstate::INVALID_CATALOG_NAME,
                    format!("database \"{database}\" does not exist"),
                ));
            }
            let allowed = caller.superuser
                || engine.catalog.privilege(caller.role, database).await? == Some(Privilege::Admin);
            if !allowed {
                return Err(SqlError::new(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!("permission denied: granting on \"{database}\" needs admin on it"),
                ));
            }
            if grant {
                engine.catalog.grant(role, database, privilege).await?;
                Ok(done("GRANT"))
            } else {
                engine.catalog.revoke(role, database).await?;
                Ok(done("REVOKE"))
            }
        }
        _ => Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "supported: CREATE/DROP DATABASE, CREATE/ALTER/DROP ROLE … PASSWORD '…', \
             GRANT/REVOKE {READ|WRITE|ADMIN} ON DATABASE d TO/FROM r",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_tokenised_with_their_literals() {
        assert_eq!(
            tokens("CREATE ROLE Alice WITH LOGIN PASSWORD 'it''s secret';"),
            [
                "create",
                "role",
                "alice",
                "with",
                "login",
                "password",
                "'it's secret"
            ]
        );
        assert_eq!(
            tokens("grant all privileges on database shop to bob"),
            [
                "grant",
                "all",
                "privileges",
                "on",
                "database",
                "shop",
                "to",
                "bob"
            ]
        );
    }
}
