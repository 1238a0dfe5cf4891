//! Enough of `pg_catalog` for psql's `\l`, `\dt` (`\d`, `\dv`, `\di`), `\d table` and `\du`.
//!
//! psql's catalog queries use PostgreSQL-only syntax SQLite cannot parse, so they are
//! recognised here by what they read and answered from SQLite's own catalog (`sqlite_schema`,
//! `PRAGMA table_info`, `PRAGMA index_list`) and from the role catalog, in the shape psql
//! expects. Other catalog queries (the footers of `\d`: publications, statistics, inheritance…)
//! get an empty answer rather than an error, which psql shows as "nothing of that kind".

use crate::engine::session::StatementResult;
use crate::engine::value::{Column, ColumnType, Value};
use crate::engine::{Engine, Session, SqlError};

/// Relations get OIDs from this base upwards, in `sqlite_schema` order.
const FIRST_OID: i64 = 16384;

/// Whether `sql` reads PostgreSQL's catalog.
pub fn is_catalog_query(sql: &str) -> bool {
    // In code only: `INSERT … VALUES ('see pg_catalog.x')` is not a catalog query.
    // Nor is a call of a function that `compat` answers, named with its schema.
    let lower = crate::engine::split::code_only(sql)
        .to_ascii_lowercase()
        .replace("pg_catalog.version()", "")
        .replace("pg_catalog.current_database()", "");
    lower.contains("pg_catalog.") || lower.contains("information_schema.")
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn result(columns: &[(&str, ColumnType)], rows: Vec<Vec<Value>>) -> StatementResult {
    let count = rows.len();
    StatementResult {
        columns: columns
            .iter()
            .map(|(name, ty)| Column {
                name: (*name).to_owned(),
                ty: *ty,
            })
            .collect(),
        rows,
        tag: format!("SELECT {count}"),
        rows_affected: 0,
        last_insert_id: None,
        returns_rows: true,
        warning: None,
    }
}

/// A relation of the current database.
#[derive(Debug, Clone)]
struct Relation {
    oid: i64,
    name: String,
    /// `r` table, `v` view, `i` index.
    kind: char,
    table: String,
}

async fn relations(session: &mut Session) -> Result<Vec<Relation>, SqlError> {
    let listed = session
        .execute(
            "SELECT name, type, tbl_name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY rowid",
            &[],
        )
        .await?;
    Ok(listed
        .rows
        .into_iter()
        .enumerate()
        .filter_map(|(index, row)| {
            let [Value::Text(name), Value::Text(kind), Value::Text(table)] = &row[..] else {
                return None;
            };
            let kind = match kind.as_str() {
                "table" => 'r',
                "view" => 'v',
                "index" => 'i',
                _ => return None,
            };
            Some(Relation {
                oid: FIRST_OID + index as i64,
                name: name.clone(),
                kind,
                table: table.clone(),
            })
        })
        .collect())
}

/// The kinds a psql listing asks for: `c.relkind IN ('r','p','v',…)`.
fn kinds_asked(lower: &str) -> Vec<char> {
    let Some(at) = lower.find("c.relkind in (") else {
        return vec!['r', 'v', 'i'];
    };
    let list = &lower[at + "c.relkind in (".len()..];
    let list = &list[..list.find(')').unwrap_or(list.len())];
    list.split(',')
        .filter_map(|item| item.trim().trim_matches('\'').chars().next())
        .collect()
}

/// The relation a `WHERE c.oid = '16385'` names.
fn oid_asked(lower: &str) -> Option<i64> {
    for marker in ["c.oid = '", "a.attrelid = '", "i.indrelid = '", "c.oid = "] {
        if let Some(at) = lower.find(marker) {
            let digits: String = lower[at + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(oid) = digits.parse() {
                return Some(oid);
            }
        }
    }
    None
}

/// The name pattern of `\d name`: `c.relname OPERATOR(pg_catalog.~) '^(name)$'`.
fn name_asked(sql: &str) -> Option<String> {
    let at = sql.find("'^(")?;
    let rest = &sql[at + 3..];
    let end = rest.find(")$'")?;
    Some(rest[..end].replace("\\\\", "\\"))
}

/// Answers a catalog query, or `None` when `sql` does not read the catalog.
pub async fn answer(
    sql: &str,
    engine: &Engine,
    session: &mut Session,
    role: &str,
) -> Option<Result<StatementResult, SqlError>> {
    if !is_catalog_query(sql) {
        return None;
    }
    Some(run(sql, engine, session, role).await)
}

async fn run(
    sql: &str,
    engine: &Engine,
    session: &mut Session,
    role: &str,
) -> Result<StatementResult, SqlError> {
    let lower = sql.to_ascii_lowercase();
    use ColumnType::{Bool, Int8, Text};

    // \l
    if lower.contains("from pg_catalog.pg_database d") {
        let mut rows = Vec::new();
        for name in engine.databases().await? {
            if engine.catalog.privilege(role, &name).await?.is_some() {
                rows.push(vec![
                    text(name),
                    text(role),
                    text("UTF8"),
                    text("C"),
                    text("C"),
                    Value::Null,
                    text("libc"),
                    Value::Null,
                ]);
            }
        }
        return Ok(result(
            &[
                ("Name", Text),
                ("Owner", Text),
                ("Encoding", Text),
                ("Collate", Text),
                ("Ctype", Text),
                ("ICU Locale", Text),
                ("Locale Provider", Text),
                ("Access privileges", Text),
            ],
            rows,
        ));
    }
    // \du
    if lower.contains("from pg_catalog.pg_roles r") {
        let rows = engine
            .catalog
            .roles()
            .await?
            .into_iter()
            .map(|r| {
                vec![
                    text(r.name),
                    Value::Integer(i64::from(r.superuser)),
                    Value::Integer(1),
                    Value::Integer(i64::from(r.superuser)),
                    Value::Integer(i64::from(r.superuser)),
                    Value::Integer(1),
                    Value::Integer(-1),
                    Value::Null,
                    text("{}"),
                    Value::Integer(0),
                    Value::Integer(0),
                ]
            })
            .collect();
        return Ok(result(
            &[
                ("rolname", Text),
                ("rolsuper", Bool),
                ("rolinherit", Bool),
                ("rolcreaterole", Bool),
                ("rolcreatedb", Bool),
                ("rolcanlogin", Bool),
                ("rolconnlimit", Int8),
                ("rolvaliduntil", Text),
                ("memberof", Text),
                ("rolreplication", Bool),
                ("rolbypassrls", Bool),
            ],
            rows,
        ));
    }
    let relations = relations(session).await?;
    // \d name, first step: which relations match.
    if lower.contains("c.relname operator(pg_catalog.~)") {
        let wanted = name_asked(sql).unwrap_or_default();
        let rows = relations
            .iter()
            .filter(|r| r.name == wanted)
            .map(|r| {
                vec![
                    text(r.oid.to_string()),
                    text("public"),
                    text(r.name.clone()),
                ]
            })
            .collect();
        return Ok(result(
            &[("oid", Text), ("nspname", Text), ("relname", Text)],
            rows,
        ));
    }
    // \dt, \d, \dv, \di
    if lower.contains("from pg_catalog.pg_class c") && lower.contains("c.relkind in (") {
        let kinds = kinds_asked(&lower);
        let with_table = lower.contains("as \"table\"");
        let rows = relations
            .iter()
            .filter(|r| kinds.contains(&r.kind))
            .map(|r| {
                let kind = match r.kind {
                    'r' => "table",
                    'v' => "view",
                    _ => "index",
                };
                let mut row = vec![text("public"), text(r.name.clone()), text(kind), text(role)];
                if with_table {
                    row.push(text(if r.kind == 'i' {
                        r.table.clone()
                    } else {
                        String::new()
                    }));
                }
                row
            })
            .collect();
        let mut columns = vec![
            ("Schema", Text),
            ("Name", Text),
            ("Type", Text),
            ("Owner", Text),
        ];
        if with_table {
            columns.push(("Table", Text));
        }
        return Ok(result(&columns, rows));
    }
    let relation =
        oid_asked(&lower).and_then(|oid| relations.iter().find(|r| r.oid == oid).cloned());
    // \d name, second step: what the relation is.
    if lower.contains("c.relchecks, c.relkind") {
        let Some(relation) = relation else {
            return Ok(result(&[("relchecks", Int8)], Vec::new()));
        };
        let has_index = relations
            .iter()
            .any(|r| r.kind == 'i' && r.table == relation.name && relation.kind == 'r');
        let row = vec![
            Value::Integer(0),
            text(relation.kind.to_string()),
            Value::Integer(i64::from(has_index)),
            Value::Integer(0),
            Value::Integer(0),
            Value::Integer(0),
            Value::Integer(0),
            Value::Integer(0),
            Value::Integer(0),
            text(""),
            Value::Integer(0),
            text(""),
            text("p"),
            text("d"),
            text("heap"),
        ];
        return Ok(result(
            &[
                ("relchecks", Int8),
                ("relkind", Text),
                ("relhasindex", Bool),
                ("relhasrules", Bool),
                ("relhastriggers", Bool),
                ("relrowsecurity", Bool),
                ("relforcerowsecurity", Bool),
                ("relhasoids", Bool),
                ("relispartition", Bool),
                ("reloptions", Text),
                ("reltablespace", Int8),
                ("reloftype", Text),
                ("relpersistence", Text),
                ("relreplident", Text),
                ("amname", Text),
            ],
            vec![row],
        ));
    }
    // \d name, third step: the columns.
    if lower.contains("from pg_catalog.pg_attribute a") && lower.contains("a.attnum > 0") {
        let Some(relation) = relation else {
            return Ok(result(&[("attname", Text)], Vec::new()));
        };
        let info = session
            .execute(
                &format!(
                    "PRAGMA table_info(\"{}\")",
                    relation.name.replace('"', "\"\"")
                ),
                &[],
            )
            .await?;
        let rows = info
            .rows
            .into_iter()
            .map(|row| {
                // cid, name, type, notnull, dflt_value, pk
                let name = row.get(1).cloned().unwrap_or(Value::Null);
                let declared = match row.get(2) {
                    Some(Value::Text(t)) if !t.is_empty() => pg_type_name(t),
                    _ => "text".to_owned(),
                };
                let not_null = matches!(row.get(3), Some(Value::Integer(n)) if *n != 0)
                    || matches!(row.get(5), Some(Value::Integer(n)) if *n != 0);
                let default = row.get(4).cloned().unwrap_or(Value::Null);
                vec![
                    name,
                    text(declared),
                    default,
                    Value::Integer(i64::from(not_null)),
                    Value::Null,
                    text(""),
                    text(""),
                ]
            })
            .collect();
        return Ok(result(
            &[
                ("attname", Text),
                ("format_type", Text),
                ("pg_get_expr", Text),
                ("attnotnull", Bool),
                ("attcollation", Text),
                ("attidentity", Text),
                ("attgenerated", Text),
            ],
            rows,
        ));
    }
    // \d name, the indexes footer (asked when relhasindex is true).
    if lower.contains("pg_catalog.pg_index i") && lower.contains("i.indexrelid = c2.oid") {
        let mut rows = Vec::new();
        if let Some(relation) = &relation {
            for index in relations
                .iter()
                .filter(|r| r.kind == 'i' && r.table == relation.name)
            {
                let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
                let list = session
                    .execute(
                        &format!("PRAGMA index_list({})", quoted(&relation.name)),
                        &[],
                    )
                    .await?;
                let unique = list.rows.iter().any(|row| {
                    matches!(row.get(1), Some(Value::Text(name)) if *name == index.name)
                        && matches!(row.get(2), Some(Value::Integer(1)))
                });
                let info = session
                    .execute(&format!("PRAGMA index_info({})", quoted(&index.name)), &[])
                    .await?;
                let columns: Vec<String> = info
                    .rows
                    .iter()
                    .filter_map(|row| match row.get(2) {
                        Some(Value::Text(column)) => Some(column.clone()),
                        _ => None,
                    })
                    .collect();
                let definition = format!(
                    "CREATE {}INDEX {} ON public.{} USING btree ({})",
                    if unique { "UNIQUE " } else { "" },
                    index.name,
                    relation.name,
                    columns.join(", ")
                );
                rows.push(vec![
                    text(index.name.clone()),
                    Value::Integer(0),
                    Value::Integer(i64::from(unique)),
                    Value::Integer(0),
                    Value::Integer(1),
                    text(definition),
                    Value::Null,
                    Value::Null,
                    Value::Integer(0),
                    Value::Integer(0),
                    Value::Integer(0),
                    Value::Integer(0),
                ]);
            }
        }
        return Ok(result(
            &[
                ("relname", Text),
                ("indisprimary", Bool),
                ("indisunique", Bool),
                ("indisclustered", Bool),
                ("indisvalid", Bool),
                ("pg_get_indexdef", Text),
                ("pg_get_constraintdef", Text),
                ("contype", Text),
                ("condeferrable", Bool),
                ("condeferred", Bool),
                ("indisreplident", Bool),
                ("reltablespace", Int8),
            ],
            rows,
        ));
    }
    // Anything else of the catalog (footers of \d…): nothing of that kind here.
    Ok(result(&[("?column?", Text)], Vec::new()))
}

/// The PostgreSQL name of a declared SQLite type, as `\d` shows it.
fn pg_type_name(declared: &str) -> String {
    let lower = declared.to_ascii_lowercase();
    if lower.contains("int") {
        "bigint".into()
    } else if lower.contains("char") || lower.contains("text") || lower.contains("clob") {
        "text".into()
    } else if lower.contains("real") || lower.contains("floa") || lower.contains("doub") {
        "double precision".into()
    } else if lower.contains("blob") {
        "bytea".into()
    } else if lower.contains("bool") {
        "boolean".into()
    } else if lower.contains("timestamp") || lower.contains("datetime") {
        "timestamp without time zone".into()
    } else if lower == "date" {
        "date".into()
    } else {
        lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_query_fragments() {
        assert_eq!(
            kinds_asked("where c.relkind in ('r','p','') and"),
            vec!['r', 'p']
        );
        assert_eq!(oid_asked("where c.oid = '16390';"), Some(16390));
        assert_eq!(oid_asked("where a.attrelid = '16384' and"), Some(16384));
        assert_eq!(
            name_asked("WHERE c.relname OPERATOR(pg_catalog.~) '^(accounts)$' COLLATE"),
            Some("accounts".into())
        );
        assert_eq!(pg_type_name("INTEGER"), "bigint");
        assert_eq!(pg_type_name("VARCHAR(20)"), "text");
    }
}
