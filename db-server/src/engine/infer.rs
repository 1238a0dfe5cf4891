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
        lower[i..].starts_with(word)
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
    byte.is_ascii_alphanumeric() || byte == b'_'
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
            b' ' if depth == 0 && lower[i..].starts_with(" as ") => alias_at = Some(i),
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
