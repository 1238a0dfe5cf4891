//! Splitting a query string into statements, as a simple-query message may hold several
//! (`BEGIN; UPDATE …; COMMIT;`), and rewriting PostgreSQL's `$1` parameters into SQLite's `?1`.
//!
//! Both walk the text once, skipping what SQLite does not read as code: '…' strings, "…" and
//! `…` and […] identifiers, `--` and `/* */` comments. A `CREATE TRIGGER … BEGIN … END` body
//! keeps its inner semicolons.

/// What a position in the text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lexeme {
    Code,
    Quoted(u8),
    LineComment,
    BlockComment,
}

/// Calls `each` with the index of every byte that is code. Shared by the splitter and the
/// parameter rewriter so both agree on what is a string or a comment.
fn walk_code(sql: &[u8], mut each: impl FnMut(usize)) {
    let mut state = Lexeme::Code;
    let mut i = 0;
    while i < sql.len() {
        let byte = sql[i];
        match state {
            Lexeme::Code => match byte {
                b'\'' | b'"' | b'`' => state = Lexeme::Quoted(byte),
                b'[' => state = Lexeme::Quoted(b']'),
                b'-' if sql.get(i + 1) == Some(&b'-') => state = Lexeme::LineComment,
                b'/' if sql.get(i + 1) == Some(&b'*') => {
                    state = Lexeme::BlockComment;
                    i += 1;
                }
                _ => each(i),
            },
            Lexeme::Quoted(end) => {
                if byte == end {
                    // A doubled quote is an escaped quote, not the end.
                    if end != b']' && sql.get(i + 1) == Some(&end) {
                        i += 1;
                    } else {
                        state = Lexeme::Code;
                    }
                }
            }
            Lexeme::LineComment => {
                if byte == b'\n' {
                    state = Lexeme::Code;
                }
            }
            Lexeme::BlockComment => {
                if byte == b'*' && sql.get(i + 1) == Some(&b'/') {
                    state = Lexeme::Code;
                    i += 1;
                }
            }
        }
        i += 1;
    }
}

/// Bytes that continue an identifier in SQLite: letters, digits, `_`, `$` and anything
/// non-ASCII (`x$begin` and `prénom` are single words).
pub fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

/// `sql` with everything that is not code (strings, quoted identifiers, comments) blanked
/// out with spaces, byte for byte: words can be read off it, and an offset in it is the same
/// offset in `sql`.
pub fn code_only(sql: &str) -> std::borrow::Cow<'_, str> {
    // Most statements have no string, quoted name or comment: nothing to blank out.
    let bytes = sql.as_bytes();
    let plain = !bytes
        .iter()
        .any(|b| matches!(b, b'\'' | b'"' | b'`' | b'['))
        && !sql.contains("--")
        && !sql.contains("/*");
    if plain {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mask = code_mask(sql);
    let mut out = String::with_capacity(sql.len());
    for (i, c) in sql.char_indices() {
        if mask.get(i).copied().unwrap_or(false) {
            out.push(c);
        } else {
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// For each byte of `sql`, whether it is code (not inside a string, a quoted identifier or a
/// comment).
pub fn code_mask(sql: &str) -> Vec<bool> {
    let mut mask = vec![false; sql.len()];
    walk_code(sql.as_bytes(), |i| mask[i] = true);
    mask
}

/// `sql` with its literals (numbers, '…' strings) replaced by `?` and its comments left
/// out: statements that differ only in their values have one shape. Used to remember how
/// long a statement sent with its values inline (the simple query protocol) takes to run.
pub fn shape(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mask = code_mask(sql);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if mask[i] {
            let after_word = i > 0 && mask[i - 1] && is_word_byte(bytes[i - 1]);
            // A parameter (`?1`, `$1`) has the shape of the value it stands for.
            let parameter = matches!(byte, b'?' | b'$')
                && !after_word
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
            if parameter {
                i += 1;
            }
            if (byte.is_ascii_digit() || parameter) && !after_word {
                out.push(b'?');
                while i < bytes.len() && mask[i] && (is_word_byte(bytes[i]) || bytes[i] == b'.') {
                    i += 1;
                }
                continue;
            }
            out.push(byte);
            i += 1;
            continue;
        }
        // A run of what is not code: a string, a quoted identifier or a comment.
        let end = (i..bytes.len()).find(|&j| mask[j]).unwrap_or(bytes.len());
        match byte {
            b'\'' => out.push(b'?'),
            b'"' | b'`' | b'[' => out.extend_from_slice(&bytes[i..end]),
            _ => out.push(b' '),
        }
        i = end;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Longest statement [`inline_values`] rewrites.
const INLINE_VALUES_MAX_BYTES: usize = 4096;

/// For a statement sent with its values inline (the simple query protocol): the statement
/// with its numbers and '…' strings as numbered parameters, and their values. The same
/// statement with other values then has the same text, which SQLite prepares once and the
/// engine runs from its statement cache, as a client's prepared statement would be.
///
/// Only where a parameter means what the literal meant, and the rest stays as written. A
/// value becomes a parameter where an expression's operand goes (after an operator, or after
/// WHERE, SET, AND, LIKE…), in an INSERT, UPDATE, DELETE or REPLACE, or after a SELECT's
/// first FROM (result columns are named after their expressions: `SELECT 1` answers a
/// column named "1"); never inside a function's arguments (an index on an expression matches
/// its literals; `likelihood` takes only one), nor a string where SQLite reads a name
/// (`FROM 't'`, `'t'.a`). Statements where the place of a literal matters more are left
/// whole: with parameters already, ORDER BY or GROUP BY (`1` names a column there), LIMIT,
/// CAST, an upsert's ON CONFLICT (matched against an index's own literals), INDEXED BY,
/// subqueries, compound SELECTs, WITH, DISTINCT; and `None` for a literal it does not read
/// exactly (hex, exponents, blobs, integers past 64 bits).
pub fn inline_values(sql: &str) -> Option<(String, Vec<super::value::Value>)> {
    use super::value::Value;
    if sql.len() > INLINE_VALUES_MAX_BYTES {
        return None;
    }
    let code = code_only(sql);
    let mut words = code
        .split(|c: char| !c.is_ascii() || !is_word_byte(c as u8))
        .filter(|w| !w.is_empty());
    let first = words.next()?;
    let select = first.eq_ignore_ascii_case("SELECT");
    if !select
        && !["INSERT", "UPDATE", "DELETE", "REPLACE"]
            .iter()
            .any(|verb| first.eq_ignore_ascii_case(verb))
    {
        return None;
    }
    let refused: &[&str] = if select {
        &[
            "SELECT",
            "RETURNING",
            "ORDER",
            "GROUP",
            "LIMIT",
            "UNION",
            "INTERSECT",
            "EXCEPT",
            "WITH",
            "WINDOW",
            "OVER",
            "CAST",
            "DISTINCT",
            "INDEXED",
        ]
    } else {
        // (CAST: `AS DECIMAL(10, 2)` takes numbers, not parameters.)
        // (CONFLICT: an upsert's target is matched against an index's own literals.)
        &[
            "SELECT",
            "RETURNING",
            "ORDER",
            "GROUP",
            "LIMIT",
            "CAST",
            "CONFLICT",
            "INDEXED",
        ]
    };
    if words.any(|w| refused.iter().any(|r| w.eq_ignore_ascii_case(r))) {
        return None;
    }
    // A SELECT's values are taken only after its first FROM, and there must be one.
    let from = if select {
        let upper = code.to_ascii_uppercase();
        let at = upper.match_indices("FROM").map(|(at, _)| at).find(|&at| {
            let before = at.checked_sub(1).map(|b| upper.as_bytes()[b]);
            let after = upper.as_bytes().get(at + 4).copied();
            !before.is_some_and(is_word_byte) && !after.is_some_and(is_word_byte)
        })?;
        at + 4
    } else {
        0
    };
    let bytes = sql.as_bytes();
    let mask = code_mask(sql);
    if bytes
        .iter()
        .enumerate()
        .any(|(i, b)| mask[i] && matches!(b, b'?' | b'$' | b':' | b'@'))
    {
        return None; // parameters already
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut values = Vec::new();
    // For each open parenthesis: whether a value inside may become a parameter (a group, a
    // VALUES row, an IN list), or not (a function's arguments: an index on an expression
    // matches its literals, and some functions take only literals; a list of column names).
    let mut parens: Vec<bool> = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if mask[i] && byte == b'(' {
            parens.push(opens_values(previous_token(sql, &mask, i)));
            i += 1;
            continue;
        }
        if mask[i] && byte == b')' {
            parens.pop();
            i += 1;
            continue;
        }
        let after_word =
            i > 0 && mask[i - 1] && (is_word_byte(bytes[i - 1]) || bytes[i - 1] == b'.');
        let is_number = mask[i] && byte.is_ascii_digit() && !after_word;
        // A string starts where code stops (a quote inside "…" or a comment is not one).
        let is_string = !mask[i] && byte == b'\'' && (i == 0 || mask[i - 1]);
        if !is_number && !is_string {
            i += 1;
            continue;
        }
        let start = i;
        let value = if is_number {
            while i < bytes.len() && mask[i] && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            if i < bytes.len() && (is_word_byte(bytes[i]) || bytes[i] == b'\'') {
                return None; // 0x1F, 1e5, 12abc: not read here
            }
            let literal = &sql[start..i];
            if literal.contains('.') {
                // Exactly as SQLite reads it: short, and not a zero (`-0.0` keeps its sign
                // only as text).
                let digits = literal.bytes().filter(u8::is_ascii_digit).count();
                match literal.parse::<f64>() {
                    Ok(real) if real.is_finite() && real != 0.0 && digits <= 15 => {
                        Some(Value::Real(real))
                    }
                    _ => None,
                }
            } else {
                Some(Value::Integer(literal.parse::<i64>().ok()?))
            }
        } else {
            if i > 0 && mask[i - 1] && is_word_byte(bytes[i - 1]) {
                return None; // x'0A' (a blob) or N'…'
            }
            // Up to the closing quote, '' standing for one quote.
            let mut text = String::new();
            i += 1;
            loop {
                let rest = sql.get(i..)?;
                let end = rest.find('\'')?;
                text.push_str(&rest[..end]);
                i += end + 1;
                if bytes.get(i) == Some(&b'\'') {
                    text.push('\'');
                    i += 1;
                } else {
                    break;
                }
            }
            // 'a'.b: a name, not a value.
            let next = sql[i..].trim_start().bytes().next();
            (next != Some(b'.')).then_some(Value::Text(text))
        };
        // Only a value where an expression's operand goes, outside any function's arguments
        // and after a SELECT's FROM; anything else stays as written.
        let in_place = start >= from
            && parens.iter().all(|&values| values)
            && takes_value(previous_token(sql, &mask, start));
        if let (Some(value), true) = (value, in_place) {
            out.push_str(&sql[copied..start]);
            values.push(value);
            out.push_str(&format!("?{}", values.len()));
            copied = i;
        }
    }
    if values.is_empty() {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some((out, values))
}

/// The code token before byte `at`: a word, or a single character (`None` at the start).
fn previous_token<'a>(sql: &'a str, mask: &[bool], at: usize) -> Option<&'a str> {
    let bytes = sql.as_bytes();
    let mut end = at;
    while end > 0 && (!mask[end - 1] || bytes[end - 1].is_ascii_whitespace()) {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut begin = end - 1;
    if is_word_byte(bytes[begin]) {
        while begin > 0 && mask[begin - 1] && is_word_byte(bytes[begin - 1]) {
            begin -= 1;
        }
    }
    sql.get(begin..end)
}

/// Whether what follows `previous` is an operand: after an operator, or a keyword that an
/// expression follows.
fn takes_value(previous: Option<&str>) -> bool {
    const WORDS: &[&str] = &[
        "AND", "OR", "NOT", "IS", "LIKE", "GLOB", "BETWEEN", "CASE", "WHEN", "THEN", "ELSE",
        "WHERE", "ON",
    ];
    match previous {
        None => false,
        Some(token) if token.len() == 1 && !is_word_byte(token.as_bytes()[0]) => {
            matches!(
                token.as_bytes()[0],
                b'=' | b'<' | b'>' | b',' | b'(' | b'+' | b'-' | b'*' | b'/' | b'%' | b'|'
            )
        }
        Some(word) => WORDS.iter().any(|w| word.eq_ignore_ascii_case(w)),
    }
}

/// Whether a parenthesis after `previous` holds values (a group, a VALUES row, an IN list)
/// rather than a function's arguments or a list of names.
fn opens_values(previous: Option<&str>) -> bool {
    match previous {
        Some(word) if is_word_byte(word.as_bytes()[0]) => {
            word.eq_ignore_ascii_case("VALUES")
                || word.eq_ignore_ascii_case("IN")
                || takes_value(Some(word))
        }
        other => other.is_none() || takes_value(other),
    }
}

/// The statements of `sql`, trimmed, without their `;`, empty ones left out.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut word_start: Option<usize> = None;
    let mut body = TriggerBody::default();
    walk_code(bytes, |i| {
        let byte = bytes[i];
        if is_word_byte(byte) {
            word_start.get_or_insert(i);
            return;
        }
        if let Some(from) = word_start.take() {
            body.word(&sql[from..i]);
        }
        if byte == b';' && !body.inside() {
            let statement = sql[start..i].trim();
            if !statement.is_empty() {
                statements.push(statement);
            }
            start = i + 1;
            body = TriggerBody::default();
        }
    });
    let rest = sql[start..].trim();
    if !rest.is_empty() && !only_comments(rest) {
        statements.push(rest);
    }
    statements
}

/// Follows the words of one statement to know when it is inside a `CREATE TRIGGER … BEGIN …
/// END` body, where `;` does not end the statement (`CASE … END` inside does not close it).
#[derive(Debug, Default)]
struct TriggerBody {
    words: usize,
    creating: bool,
    trigger: bool,
    depth: usize,
    cases: usize,
}

impl TriggerBody {
    fn word(&mut self, word: &str) {
        self.words += 1;
        let word = word.to_ascii_uppercase();
        if self.words == 1 {
            self.creating = word == "CREATE";
        } else if self.creating && self.words <= 4 && word == "TRIGGER" {
            self.trigger = true;
        } else if self.trigger {
            match word.as_str() {
                "BEGIN" => self.depth += 1,
                "CASE" if self.depth > 0 => self.cases += 1,
                "END" if self.cases > 0 => self.cases -= 1,
                "END" if self.depth > 0 => self.depth -= 1,
                _ => {}
            }
        }
    }

    fn inside(&self) -> bool {
        self.depth > 0
    }
}

/// Whether `text` holds nothing but comments and whitespace.
fn only_comments(text: &str) -> bool {
    let mut code = false;
    walk_code(text.as_bytes(), |i| {
        if !text.as_bytes()[i].is_ascii_whitespace() {
            code = true;
        }
    });
    !code && !text.contains(['\'', '"', '`', '['])
}

/// Rewrites `$N` parameters to `?N` (SQLite binds `?N` to the N-th value whatever the order
/// they appear in, as PostgreSQL does for `$N`). Returns the text and the highest N.
pub fn rewrite_parameters(sql: &str) -> (String, usize) {
    let bytes = sql.as_bytes();
    let mut out = sql.as_bytes().to_vec();
    let mut highest = 0;
    walk_code(bytes, |i| {
        if bytes[i] != b'$' {
            return;
        }
        let digits = bytes[i + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        // `$1` but not `a$1` (an identifier may contain `$`).
        let joined = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if digits > 0 && !joined {
            out[i] = b'?';
            if let Ok(n) = sql[i + 1..i + 1 + digits].parse::<usize>() {
                highest = highest.max(n);
            }
        }
    });
    // Only ASCII bytes were replaced by ASCII bytes.
    (
        String::from_utf8(out).unwrap_or_else(|_| sql.to_owned()),
        highest,
    )
}

/// The HTTP API's `?` and `?N` placeholders as PostgreSQL's `$N` (for a PostgreSQL backend);
/// question marks inside strings, quoted names and comments are left alone.
pub fn question_marks_to_dollars(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut places = Vec::new();
    walk_code(bytes, |i| {
        if bytes[i] == b'?' {
            places.push(i);
        }
    });
    let mut out = String::with_capacity(sql.len() + places.len() * 2);
    let mut next = 0usize;
    let mut counter = 0usize;
    for at in places {
        out.push_str(&sql[next..at]);
        let digits = bytes[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 {
            out.push('$');
            out.push_str(&sql[at + 1..at + 1 + digits]);
            next = at + 1 + digits;
        } else {
            counter += 1;
            out.push_str(&format!("${counter}"));
            next = at + 1;
        }
    }
    out.push_str(&sql[next..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_values_become_parameters_where_they_mean_the_same() {
        use crate::engine::value::Value;
        let (sql, values) = inline_values(
            "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 56 AND t1 = 'it''s' -- 9",
        )
        .expect("rewritten");
        assert_eq!(
            sql,
            "UPDATE pgbench_accounts SET abalance = abalance + -?1 WHERE aid = ?2 AND t1 = ?3 -- 9"
        );
        assert_eq!(
            values,
            vec![
                Value::Integer(1234),
                Value::Integer(56),
                Value::Text("it's".into())
            ]
        );
        let (sql, values) =
            inline_values("INSERT INTO h (a, b, c) VALUES (1, 2.5, CURRENT_TIMESTAMP)")
                .expect("insert");
        assert_eq!(
            sql,
            "INSERT INTO h (a, b, c) VALUES (?1, ?2, CURRENT_TIMESTAMP)"
        );
        assert_eq!(values, vec![Value::Integer(1), Value::Real(2.5)]);
        let (sql, values) =
            inline_values("SELECT abalance FROM pgbench_accounts WHERE aid = 42").expect("select");
        assert_eq!(sql, "SELECT abalance FROM pgbench_accounts WHERE aid = ?1");
        assert_eq!(values, vec![Value::Integer(42)]);
        // Values where a parameter means the same become parameters; the rest stay.
        for (sql, rewritten) in [
            (
                "SELECT 1 AS one FROM t WHERE a = 2",
                "SELECT 1 AS one FROM t WHERE a = ?1",
            ),
            (
                "SELECT 'a' || name FROM t WHERE a = 2",
                "SELECT 'a' || name FROM t WHERE a = ?1",
            ),
            // An index on an expression matches its literals: function arguments stay.
            (
                "SELECT id FROM d WHERE json_extract(data, '$.k') = 5",
                "SELECT id FROM d WHERE json_extract(data, '$.k') = ?1",
            ),
            (
                "SELECT id FROM t WHERE likelihood(a = 1, 0.25) AND b = 2",
                "SELECT id FROM t WHERE likelihood(a = 1, 0.25) AND b = ?1",
            ),
            // Strings where SQLite reads a name stay.
            (
                "SELECT id FROM 't' WHERE a = 1",
                "SELECT id FROM 't' WHERE a = ?1",
            ),
            (
                "SELECT x.id FROM t AS 'x' WHERE a = 1",
                "SELECT x.id FROM t AS 'x' WHERE a = ?1",
            ),
            (
                "INSERT INTO t ('a','b') VALUES (7,'x')",
                "INSERT INTO t ('a','b') VALUES (?1,?2)",
            ),
            (
                "UPDATE t SET 'b' = 3 WHERE id = 9",
                "UPDATE t SET 'b' = ?1 WHERE id = ?2",
            ),
            (
                "SELECT id FROM t WHERE t.'b' = 2",
                "SELECT id FROM t WHERE t.'b' = ?1",
            ),
            (
                "SELECT id FROM t WHERE 'b'.c = 2",
                "SELECT id FROM t WHERE 'b'.c = ?1",
            ),
            (
                "SELECT id FROM t WHERE a = 'x' COLLATE 'nocase'",
                "SELECT id FROM t WHERE a = ?1 COLLATE 'nocase'",
            ),
            (
                "SELECT id FROM t WHERE a IN 't2' AND b = 1",
                "SELECT id FROM t WHERE a IN 't2' AND b = ?1",
            ),
            (
                "SELECT id FROM t JOIN u USING ('a') WHERE b = 1",
                "SELECT id FROM t JOIN u USING ('a') WHERE b = ?1",
            ),
            (
                "UPDATE t SET a = 1 WHERE b IN (2, 3)",
                "UPDATE t SET a = ?1 WHERE b IN (?2, ?3)",
            ),
            // -0.0 keeps its sign only as text; long reals are read as SQLite reads them.
            (
                "INSERT INTO t (a, b) VALUES (-0.0, 1)",
                "INSERT INTO t (a, b) VALUES (-0.0, ?1)",
            ),
            (
                "INSERT INTO t (a, b) VALUES (9007199254740993.0000000000001, 1)",
                "INSERT INTO t (a, b) VALUES (9007199254740993.0000000000001, ?1)",
            ),
        ] {
            assert_eq!(
                inline_values(sql).map(|(text, _)| text).as_deref(),
                Some(rewritten),
                "{sql}"
            );
        }
        for kept in [
            "SELECT 1",
            "SELECT a FROM t WHERE b = 1 ORDER BY 1",
            "SELECT a FROM t GROUP BY 1",
            "SELECT a FROM t LIMIT 5",
            "SELECT a FROM t WHERE b = 1 UNION SELECT 2 FROM u",
            "SELECT a FROM t WHERE b IN (SELECT 1)",
            "SELECT fromage FROM t",
            "SELECT a IS DISTINCT FROM 1 FROM t",
            "SELECT NULL IS NOT DISTINCT FROM 5",
            "SELECT id FROM t INDEXED BY pi WHERE b = 2",
            "SELECT a FROM t WHERE CAST(b AS VARCHAR(10)) = 'x'",
            "UPDATE t SET a = CAST(b AS DECIMAL(10, 2)) WHERE id = 1",
            "INSERT INTO d VALUES ('{}') ON CONFLICT(json_extract(data, '$.id')) DO UPDATE SET data = excluded.data",
            "INSERT INTO t VALUES (1) ON CONFLICT(a) WHERE b = 1 DO NOTHING",
            "INSERT INTO t SELECT 1",
            "INSERT INTO t VALUES (1) RETURNING id",
            "DELETE FROM t WHERE id = ?1 OR id = 2",
            "UPDATE t SET b = x'0A' WHERE id = 1",
            "UPDATE t SET b = 0x1F",
            "UPDATE t SET b = 1e5",
            "UPDATE t SET b = 99999999999999999999",
            "CREATE TABLE t (a VARCHAR(20) DEFAULT 5)",
            "UPDATE t SET a = b",
            "UPDATE \"it's\" SET a = b -- it's",
        ] {
            assert_eq!(inline_values(kept), None, "{kept}");
        }
    }

    /// Garbage and half-written SQL: no panic, and nothing rewritten that is not read whole.
    #[test]
    fn inline_values_and_shapes_take_garbage() {
        for sql in [
            "",
            "'",
            "UPDATE t SET a = 'unterminated",
            "UPDATE t SET a = 'x'' WHERE b = 1",
            "UPDATE t SET a = 1é WHERE b = 2",
            "UPDATE t SET a = é'x' WHERE b = 2",
            "UPDATE t SET a = 'é' WHERE b = 2.",
            "DELETE FROM t WHERE a = 1.2.3",
            "INSERT INTO t VALUES ((((1",
            "INSERT INTO t VALUES 1))))",
            "UPDATE t SET a = -- 1\n2",
            "UPDATE t SET a = /* 1",
            "SELECT a FROM",
            "\u{0}\u{7f}\u{10ffff}",
        ] {
            let _ = shape(sql);
            if let Some((text, values)) = inline_values(sql) {
                assert!(!values.is_empty(), "{sql}");
                assert!(text.contains("?1"), "{sql} -> {text}");
            }
        }
        assert_eq!(inline_values("UPDATE t SET a = 'unterminated"), None);
    }

    #[test]
    fn statements_differing_in_values_have_one_shape() {
        let one = shape("UPDATE t1 SET a = a + -12 WHERE id = 3 AND name = 'x''y' -- c");
        let two = shape("UPDATE t1 SET a = a + -7.5 WHERE id = 40 AND name = 'z'");
        assert_eq!(one.trim_end(), two.trim_end());
        assert_eq!(two, "UPDATE t1 SET a = a + -? WHERE id = ? AND name = ?");
        assert_eq!(
            shape("SELECT \"col 1\" FROM [t 2]"),
            "SELECT \"col 1\" FROM [t 2]"
        );
        assert_ne!(shape("SELECT * FROM t1"), shape("SELECT * FROM t2"));
        // Parameters and inline values alike.
        assert_eq!(shape("VALUES ($1, ?2, ?)"), shape("VALUES (10, 'a', ?)"));
    }

    #[test]
    fn question_marks_become_numbered_parameters() {
        assert_eq!(
            question_marks_to_dollars("select ?, '?', ?2 -- ?\n from t where a = ?"),
            "select $1, '?', $2 -- ?\n from t where a = $2"
        );
    }

    #[test]
    fn statements_split_on_semicolons_outside_strings_and_comments() {
        assert_eq!(
            split_statements("BEGIN; UPDATE t SET a = 'x;y' ; -- c;\nCOMMIT;"),
            ["BEGIN", "UPDATE t SET a = 'x;y'", "-- c;\nCOMMIT"]
        );
        assert_eq!(
            split_statements("select 'it''s; fine' /* ; */ ; select \"a;b\" from [x;y]"),
            ["select 'it''s; fine' /* ; */", "select \"a;b\" from [x;y]"]
        );
        assert_eq!(split_statements(" ; ;; "), Vec::<&str>::new());
        assert_eq!(split_statements("select 1; -- trailing"), ["select 1"]);
    }

    #[test]
    fn trigger_bodies_keep_their_semicolons() {
        let sql = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE u SET n = n + 1; \
                   INSERT INTO log VALUES (CASE WHEN 1 THEN 2 END); END; SELECT 1";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert!(statements[0].ends_with("END"));
        assert_eq!(statements[1], "SELECT 1");
        // BEGIN as a statement is not a trigger body.
        assert_eq!(split_statements("BEGIN; SELECT 1; END;").len(), 3);
    }

    #[test]
    fn dollar_parameters_become_numbered_question_marks() {
        assert_eq!(
            rewrite_parameters("select $2, '$1', a$1 from t where id = $1 -- $3"),
            (
                "select ?2, '$1', a$1 from t where id = ?1 -- $3".to_owned(),
                2
            )
        );
        assert_eq!(rewrite_parameters("select 1"), ("select 1".to_owned(), 0));
    }
}
