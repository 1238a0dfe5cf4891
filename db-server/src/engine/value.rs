//! Values and column types as they cross between SQLite and PostgreSQL clients. SQLite stores
//! five kinds of value; a column's PostgreSQL type comes from its declared type when it has one
//! (`BOOLEAN`, `TIMESTAMP`, …) and from the value's storage class otherwise.

use sqlx::{Row as _, TypeInfo as _, ValueRef as _};

/// A value as SQLite stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The PostgreSQL type a result column is announced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    Int8,
    Float8,
    Numeric,
    Text,
    Bytea,
    Date,
    Time,
    Timestamp,
}

impl ColumnType {
    /// The type's OID in `pg_type`.
    pub fn oid(self) -> u32 {
        match self {
            ColumnType::Bool => 16,
            ColumnType::Bytea => 17,
            ColumnType::Int8 => 20,
            ColumnType::Text => 25,
            ColumnType::Float8 => 701,
            ColumnType::Date => 1082,
            ColumnType::Time => 1083,
            ColumnType::Timestamp => 1114,
            ColumnType::Numeric => 1700,
        }
    }

    /// The name the HTTP API reports (SQLite's words, as its users write them).
    pub fn sqlite_name(self) -> &'static str {
        match self {
            ColumnType::Bool => "BOOLEAN",
            ColumnType::Int8 => "INTEGER",
            ColumnType::Float8 => "REAL",
            ColumnType::Numeric => "NUMERIC",
            ColumnType::Text => "TEXT",
            ColumnType::Bytea => "BLOB",
            ColumnType::Date => "DATE",
            ColumnType::Time => "TIME",
            ColumnType::Timestamp => "DATETIME",
        }
    }

    /// From a column's declared type, by SQLite's affinity rules as sqlx reads them;
    /// TEXT (to be refined by the values) for a type those rules do not name.
    pub fn from_declared(declared: &str) -> Self {
        let declared = declared.to_ascii_lowercase();
        match declared.as_str() {
            "int4" | "int8" => ColumnType::Int8,
            "boolean" | "bool" => ColumnType::Bool,
            "date" => ColumnType::Date,
            "time" => ColumnType::Time,
            "datetime" | "timestamp" => ColumnType::Timestamp,
            d if d.contains("int") => ColumnType::Int8,
            d if d.contains("char") || d.contains("clob") || d.contains("text") => ColumnType::Text,
            d if d.contains("blob") || d == "bytea" => ColumnType::Bytea,
            d if d.contains("real") || d.contains("floa") || d.contains("doub") => {
                ColumnType::Float8
            }
            _ => ColumnType::Text,
        }
    }

    /// From sqlx's name for a column's type (declared, or the value's storage class).
    fn from_sqlx_name(name: &str) -> Self {
        match name {
            "BOOLEAN" => ColumnType::Bool,
            "INTEGER" => ColumnType::Int8,
            "REAL" => ColumnType::Float8,
            "NUMERIC" => ColumnType::Numeric,
            "BLOB" => ColumnType::Bytea,
            "DATE" => ColumnType::Date,
            "TIME" => ColumnType::Time,
            "DATETIME" => ColumnType::Timestamp,
            _ => ColumnType::Text,
        }
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// Result columns of a statement, from a row or from sqlx's description of the statement.
pub fn columns_of<C: sqlx::Column>(columns: &[C]) -> Vec<Column> {
    columns
        .iter()
        .map(|column| Column {
            name: column.name().to_owned(),
            ty: ColumnType::from_sqlx_name(column.type_info().name()),
        })
        .collect()
}

/// Columns of a result whose declared types are unknown (expressions): typed by the first
/// row's values, as SQLite itself does.
pub fn refine_types(columns: &mut [Column], first_row: &[Value]) {
    for (column, value) in columns.iter_mut().zip(first_row) {
        if column.ty == ColumnType::Text {
            column.ty = match value {
                Value::Integer(_) => ColumnType::Int8,
                Value::Real(_) => ColumnType::Float8,
                Value::Blob(_) => ColumnType::Bytea,
                _ => ColumnType::Text,
            };
        }
    }
}

/// The values of a row, by their storage class.
pub fn values_of(row: &sqlx::sqlite::SqliteRow) -> Vec<Value> {
    (0..row.len())
        .map(|index| {
            let Ok(raw) = row.try_get_raw(index) else {
                return Value::Null;
            };
            if raw.is_null() {
                return Value::Null;
            }
            match raw.type_info().name() {
                "INTEGER" => row.try_get::<i64, _>(index).map(Value::Integer),
                "REAL" => row.try_get::<f64, _>(index).map(Value::Real),
                "BLOB" => row.try_get::<Vec<u8>, _>(index).map(Value::Blob),
                _ => row.try_get::<String, _>(index).map(Value::Text),
            }
            .unwrap_or(Value::Null)
        })
        .collect()
}

impl Value {
    /// PostgreSQL's text format for this value in a column of type `ty`; `None` for NULL.
    pub fn to_pg_text(&self, ty: ColumnType) -> Option<String> {
        Some(match (self, ty) {
            (Value::Null, _) => return None,
            (Value::Integer(i), ColumnType::Bool) => if *i != 0 { "t" } else { "f" }.to_owned(),
            (Value::Integer(i), _) => i.to_string(),
            (Value::Real(r), _) => float_text(*r),
            (Value::Text(text), ColumnType::Bool) => match text.to_ascii_lowercase().as_str() {
                "1" | "t" | "true" | "y" | "yes" | "on" => "t".to_owned(),
                "0" | "f" | "false" | "n" | "no" | "off" => "f".to_owned(),
                _ => text.clone(),
            },
            (Value::Text(text), _) => text.clone(),
            (Value::Blob(bytes), _) => {
                let mut out = String::with_capacity(2 + bytes.len() * 2);
                out.push_str("\\x");
                for byte in bytes {
                    out.push_str(&format!("{byte:02x}"));
                }
                out
            }
        })
    }

    /// The value as JSON for the HTTP API.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Real(r) => serde_json::Number::from_f64(*r)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| serde_json::Value::String(float_text(*r))),
            Value::Text(text) => serde_json::Value::String(text.clone()),
            Value::Blob(bytes) => {
                use base64::Engine as _;
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

/// Floats as PostgreSQL prints them: shortest round-trip digits, `Infinity`, `NaN`.
fn float_text(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        format!("{value}")
    }
}

/// Binds one parameter to a sqlx query.
pub fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    value: &Value,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    match value {
        Value::Null => query.bind(None::<String>),
        Value::Integer(i) => query.bind(*i),
        Value::Real(r) => query.bind(*r),
        Value::Text(text) => query.bind(text.clone()),
        Value::Blob(bytes) => query.bind(bytes.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_follows_postgresql() {
        assert_eq!(
            Value::Integer(1).to_pg_text(ColumnType::Bool).as_deref(),
            Some("t")
        );
        assert_eq!(
            Value::Real(1.5).to_pg_text(ColumnType::Float8).as_deref(),
            Some("1.5")
        );
        assert_eq!(
            Value::Real(f64::INFINITY)
                .to_pg_text(ColumnType::Float8)
                .as_deref(),
            Some("Infinity")
        );
        assert_eq!(
            Value::Blob(vec![0xde, 0xad])
                .to_pg_text(ColumnType::Bytea)
                .as_deref(),
            Some("\\xdead")
        );
        assert_eq!(Value::Null.to_pg_text(ColumnType::Text), None);
    }
}
