//! Types of result columns SQLite cannot declare before running a statement: a column that is
//! an expression (`count(*)`, `length(name)`, `1 + 1`) has no declared type, but drivers that
//! prepare statements (tokio-postgres, pgjdbc, asyncpg) decode by the type announced in
//! Describe. The select list is read here to announce what the expression will produce.

use super::value::ColumnType;

/// The top-level expressions of the first select list in `sql`, or `None` when there is no
/// simple select list (`*`, no SELECT).
pub fn select_list(sql: &str) -> Option<Vec<String>> {
    let mask = super::split::code_mask(sql);
    let lower = sql.to_ascii_lowercase();
    let bytes = sql.as_bytes();
    let word_at = |i: usize, word: &str| {
        lower.as_bytes()[i..].starts_with(word.as_bytes())
            && (i == 0 || !is_word(bytes[i - 1]))
            && bytes.get(i + word.len()).is_none_or(|b| !is_word(*b))
            && mask[i]
    };
    let start = (0..sql.len()).find(|&i| word_at(i, "select"))? + "select".len();
    let mut depth = 0i32;
    let mut expressions = Vec::new();
    let mut from = start;
    let mut i = start;
    while i < sql.len() {
        if mask[i] {
            match bytes[i] {
                b'(' => depth += 1,
                b')' => depth -= 1,
                b',' if depth == 0 => {
                    expressions.push(sql[from..i].trim().to_owned());
                    from = i + 1;
                }
                _ if depth == 0
                    && ["from", "where", "group", "order", "limit", "union"]
                        .iter()
                        .any(|w| word_at(i, w)) =>
                {
                    break;
                }
                _ => {}
            }
        }
        i += 1;
    }
    expressions.push(sql[from..i.min(sql.len())].trim().to_owned());
    if expressions
        .iter()
        .any(|e| e == "*" || e.ends_with(".*") || e.is_empty())
    {
        return None;
    }
    // DISTINCT / ALL belong to the list, not to the first expression.
    if let Some(first) = expressions.first_mut() {
        for keyword in ["distinct ", "all "] {
            if first.to_ascii_lowercase().starts_with(keyword) {
                *first = first[keyword.len()..].trim().to_owned();
            }
        }
    }
    Some(expressions)
}

fn is_word(byte: u8) -> bool {
    super::split::is_word_byte(byte)
}

/// What an expression yields, when that can be told from its text.
pub fn expression_type(expression: &str) -> Option<ColumnType> {
    let lower = expression.trim().to_ascii_lowercase();
    // Without its alias: `expr AS name` (an AS inside parentheses is CAST's).
    let mut depth = 0i32;
    let mut alias_at = None;
    for (i, byte) in lower.bytes().enumerate() {
        match byte {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b' ' if depth == 0 && lower.as_bytes()[i..].starts_with(b" as ") => alias_at = Some(i),
            _ => {}
        }
    }
    let body = match alias_at {
        Some(at) => lower[..at].trim(),
        None => lower.as_str(),
    };
    let function = body.split('(').next().unwrap_or("").trim();
    if body.contains('(') && body.ends_with(')') {
        return match function {
            "count" | "length" | "octet_length" | "instr" | "unicode" | "random" | "changes"
            | "total_changes" | "last_insert_rowid" | "row_number" | "rank" | "dense_rank"
            | "ntile" => Some(ColumnType::Int8),
            "avg" | "total" => Some(ColumnType::Float8),
            "lower" | "upper" | "trim" | "ltrim" | "rtrim" | "substr" | "substring" | "replace"
            | "printf" | "format" | "group_concat" | "string_agg" | "typeof" | "quote" | "hex"
            | "char" => Some(ColumnType::Text),
            "date" => Some(ColumnType::Date),
            "time" => Some(ColumnType::Time),
            "datetime" => Some(ColumnType::Timestamp),
            "cast" => {
                let target = body.rsplit(" as ").next().unwrap_or("");
                if target.contains("int") {
                    Some(ColumnType::Int8)
                } else if target.contains("real")
                    || target.contains("float")
                    || target.contains("double")
                {
                    Some(ColumnType::Float8)
                } else if target.contains("text") || target.contains("char") {
                    Some(ColumnType::Text)
                } else if target.contains("blob") {
                    Some(ColumnType::Bytea)
                } else {
                    None
                }
            }
            _ => None,
        };
    }
    if body.starts_with('\'') && body.ends_with('\'') {
        return Some(ColumnType::Text);
    }
    if body.parse::<i64>().is_ok() {
        return Some(ColumnType::Int8);
    }
    if body.parse::<f64>().is_ok() {
        return Some(ColumnType::Float8);
    }
    if body == "true" || body == "false" {
        return Some(ColumnType::Int8);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_lists_and_expression_types() {
        assert_eq!(
            select_list("SELECT count(*) AS n, max(a, b), 'x,y' FROM t WHERE a = 1").unwrap(),
            ["count(*) AS n", "max(a, b)", "'x,y'"]
        );
        assert_eq!(select_list("select * from t"), None);
        assert_eq!(select_list("select distinct a from t").unwrap(), ["a"]);
        assert_eq!(expression_type("count(*) AS n"), Some(ColumnType::Int8));
        assert_eq!(expression_type("avg(x)"), Some(ColumnType::Float8));
        assert_eq!(
            expression_type("CAST(x AS INTEGER)"),
            Some(ColumnType::Int8)
        );
        assert_eq!(expression_type("40 + 2"), None);
        assert_eq!(expression_type("42"), Some(ColumnType::Int8));
        assert_eq!(expression_type("'hi' AS greeting"), Some(ColumnType::Text));
        assert_eq!(expression_type("name"), None);
    }
}

/// What a statement tells about its parameters (`?N` after rewriting): the column each is
/// compared with or stored into, or that it must be an integer (LIMIT, OFFSET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParameterUse {
    Column(String),
    Integer,
}

/// Tokens of the code of `sql` (strings and comments left out).
fn code_tokens(sql: &str) -> Vec<String> {
    let mask = super::split::code_mask(sql);
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !mask[i] || bytes[i].is_ascii_whitespace() {
            // A string literal stands as one opaque token, so `x = 'a'` is not `x = ?`.
            if !mask[i] && !bytes[i].is_ascii_whitespace() && tokens.last().is_none_or(|t| t != "'")
            {
                tokens.push("'".to_owned());
            }
            i += 1;
            continue;
        }
        let start = i;
        if is_word(bytes[i]) || bytes[i] == b'?' {
            i += 1;
            while i < bytes.len() && mask[i] && (is_word(bytes[i]) || bytes[i] == b'.') {
                i += 1;
            }
        } else if i + 1 < bytes.len()
            && matches!(&bytes[i..i + 2], b"<=" | b">=" | b"<>" | b"!=" | b"==")
        {
            i += 2;
        } else {
            i += 1;
        }
        tokens.push(sql[start..i].to_ascii_lowercase());
    }
    tokens
}

/// How each parameter of `sql` is used, by parameter number (1-based).
pub fn parameter_uses(sql: &str) -> std::collections::BTreeMap<usize, ParameterUse> {
    let tokens = code_tokens(sql);
    let param = |t: &str| t.strip_prefix('?').and_then(|n| n.parse::<usize>().ok());
    let column = |t: &str| {
        let name = t.rsplit('.').next().unwrap_or(t);
        (!name.is_empty() && name.bytes().all(is_word) && !name.bytes().all(|b| b.is_ascii_digit()))
            .then(|| name.to_owned())
    };
    // Compared with a column, or computed with one: the column's type.
    let comparison = [
        "=", "==", "<", ">", "<=", ">=", "<>", "!=", "like", "+", "-", "*", "/",
    ];
    let mut uses = std::collections::BTreeMap::new();
    for (i, token) in tokens.iter().enumerate() {
        let Some(n) = param(token) else { continue };
        let before = i.checked_sub(1).map(|j| tokens[j].as_str());
        let before2 = i.checked_sub(2).map(|j| tokens[j].as_str());
        let after = tokens.get(i + 1).map(String::as_str);
        let after2 = tokens.get(i + 2).map(String::as_str);
        let found = if matches!(before, Some("limit" | "offset")) {
            Some(ParameterUse::Integer)
        } else if let (Some(op), Some(name)) = (before, before2)
            && comparison.contains(&op)
        {
            column(name).map(ParameterUse::Column)
        } else if let (Some(op), Some(name)) = (after, after2)
            && comparison.contains(&op)
        {
            column(name).map(ParameterUse::Column)
        } else {
            None
        };
        if let Some(found) = found {
            uses.entry(n).or_insert(found);
        }
    }
    // INSERT INTO t (a, b, …) VALUES (?1, ?2, …): by position.
    if let Some(into) = tokens.iter().position(|t| t == "into")
        && tokens.get(into + 2).map(String::as_str) == Some("(")
    {
        let names_end = tokens[into + 3..]
            .iter()
            .position(|t| t == ")")
            .map(|p| p + into + 3);
        let values = tokens.iter().position(|t| t == "values");
        if let (Some(end), Some(values)) = (names_end, values) {
            let names: Vec<&String> = tokens[into + 3..end].iter().filter(|t| *t != ",").collect();
            let mut position = 0;
            for token in tokens[values..].iter().skip(2) {
                match token.as_str() {
                    ")" => break,
                    "," => position += 1,
                    t => {
                        if let (Some(n), Some(name)) = (param(t), names.get(position)) {
                            uses.entry(n)
                                .or_insert(ParameterUse::Column((*name).clone()));
                        }
                    }
                }
            }
        }
    }
    uses
}

/// The tables a statement reads or writes (after FROM, JOIN, UPDATE, INTO).
pub fn tables_named(sql: &str) -> Vec<String> {
    let tokens = code_tokens(sql);
    let mut tables = Vec::new();
    for window in tokens.windows(2) {
        if matches!(window[0].as_str(), "from" | "join" | "update" | "into")
            && window[1].bytes().all(|b| is_word(b) || b == b'.')
        {
            let name = window[1].rsplit('.').next().unwrap_or("").to_owned();
            if !name.is_empty() && !tables.contains(&name) {
                tables.push(name);
            }
        }
    }
    tables
}

#[cfg(test)]
mod parameter_tests {
    use super::*;

    #[test]
    fn parameters_are_matched_with_their_columns() {
        let uses = parameter_uses(
            "SELECT a FROM t WHERE t.aid = ?1 AND ?2 < score AND name = 'x' LIMIT ?3",
        );
        assert_eq!(uses[&1], ParameterUse::Column("aid".into()));
        assert_eq!(uses[&2], ParameterUse::Column("score".into()));
        assert_eq!(uses[&3], ParameterUse::Integer);
        let uses = parameter_uses("INSERT INTO accounts (owner, balance) VALUES (?1, ?2)");
        assert_eq!(uses[&1], ParameterUse::Column("owner".into()));
        assert_eq!(uses[&2], ParameterUse::Column("balance".into()));
        let uses = parameter_uses("UPDATE t SET abalance = abalance + ?1 WHERE aid = ?2");
        assert_eq!(uses[&1], ParameterUse::Column("abalance".into()));
        assert_eq!(uses[&2], ParameterUse::Column("aid".into()));
        assert_eq!(
            tables_named("select * from a join b on a.x = b.y where 1"),
            ["a", "b"]
        );
        assert_eq!(ColumnType::from_declared("VARCHAR(10)"), ColumnType::Text);
        assert_eq!(ColumnType::from_declared("BYTEA"), ColumnType::Bytea);
    }
}
