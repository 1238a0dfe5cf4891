//! Between engine values and the wire: result columns and rows in text or binary format, and
//! the parameters of a Bind in either format.

use std::sync::Arc;

use futures_util::stream;
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};

use super::{Prepared, binary};
use crate::engine::value::{Column, ColumnType, Value};
use crate::engine::{SqlError, StatementResult, sqlstate};

/// The format of column (or parameter) `index`: one code applies to all, several are one each.
fn format_at(format: &Format, index: usize) -> FieldFormat {
    match format {
        Format::UnifiedText => FieldFormat::Text,
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(codes) => {
            let code = if codes.len() == 1 {
                codes.first()
            } else {
                codes.get(index)
            };
            FieldFormat::from(code.copied().unwrap_or(0))
        }
    }
}

fn protocol_error(message: String) -> PgWireError {
    super::user_error(&SqlError::new(sqlstate::PROTOCOL_VIOLATION, message))
}

/// The PostgreSQL type announced for a column, in either format.
fn wire_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Bool => Type::BOOL,
        ColumnType::Int8 => Type::INT8,
        ColumnType::Float8 => Type::FLOAT8,
        ColumnType::Bytea => Type::BYTEA,
        ColumnType::Text => Type::TEXT,
        ColumnType::Numeric => Type::NUMERIC,
        ColumnType::Date => Type::DATE,
        ColumnType::Time => Type::TIME,
        ColumnType::Timestamp => Type::TIMESTAMP,
    }
}

/// RowDescription fields for `columns` in `format`.
pub fn fields(columns: &[Column], format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    if let Format::Individual(codes) = format
        && codes.len() > 1
        && codes.len() != columns.len()
    {
        return Err(protocol_error(format!(
            "{} result format codes for {} columns",
            codes.len(),
            columns.len()
        )));
    }
    Ok(columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            let format = format_at(format, index);
            FieldInfo::new(
                column.name.clone(),
                None,
                None,
                wire_type(column.ty),
                format,
            )
        })
        .collect())
}

fn invalid(value: &Value, ty: &Type) -> PgWireError {
    super::user_error(&SqlError::new(
        "22P02",
        format!("the value {value:?} cannot be sent as {}", ty.name()),
    ))
}

/// Encodes one value into the row being built.
fn encode_value(
    encoder: &mut DataRowEncoder,
    value: &Value,
    column: ColumnType,
    field: &FieldInfo,
) -> PgWireResult<()> {
    if field.format() == FieldFormat::Text || matches!(value, Value::Null) {
        return encoder.encode_field(&value.to_pg_text(column));
    }
    let ty = field.datatype();
    match *ty {
        Type::INT8 => {
            let number = match value {
                Value::Integer(i) => *i,
                Value::Real(r) if r.fract() == 0.0 => *r as i64,
                Value::Text(t) => t.trim().parse().map_err(|_| invalid(value, ty))?,
                _ => return Err(invalid(value, ty)),
            };
            encoder.encode_field(&number)
        }
        Type::FLOAT8 => {
            let number = match value {
                Value::Integer(i) => *i as f64,
                Value::Real(r) => *r,
                Value::Text(t) => t.trim().parse().map_err(|_| invalid(value, ty))?,
                _ => return Err(invalid(value, ty)),
            };
            encoder.encode_field(&number)
        }
        Type::BOOL => {
            let truth = match value.to_pg_text(ColumnType::Bool).as_deref() {
                Some("t") => true,
                Some("f") => false,
                _ => return Err(invalid(value, ty)),
            };
            encoder.encode_field(&truth)
        }
        Type::BYTEA => match value {
            Value::Blob(bytes) => encoder.encode_field(bytes),
            Value::Text(text) => encoder.encode_field(&text.as_bytes().to_vec()),
            _ => Err(invalid(value, ty)),
        },
        // SQLite keeps these as text, or as numbers (a date function's Unix seconds or Julian
        // day): the binary form is worked out from either, and sent as its bytes.
        Type::NUMERIC | Type::DATE | Type::TIME | Type::TIMESTAMP => {
            let text = value.to_pg_text(column).unwrap_or_default();
            let moment = || match value {
                Value::Integer(seconds) => binary::moment_of_unix_seconds(*seconds),
                Value::Real(day) => binary::moment_of_julian_day(*day),
                _ => binary::moment_of_text(&text),
            };
            let bytes = match *ty {
                Type::NUMERIC => binary::numeric_bytes(&text),
                Type::DATE => moment()
                    .and_then(binary::date_days)
                    .map(|days| days.to_be_bytes().to_vec()),
                Type::TIME => moment()
                    .and_then(binary::time_micros)
                    .map(|micros| micros.to_be_bytes().to_vec()),
                _ => moment()
                    .and_then(binary::timestamp_micros)
                    .map(|micros| micros.to_be_bytes().to_vec()),
            };
            match bytes {
                Some(bytes) => encoder.encode_field(&bytes),
                None => Err(super::user_error(&SqlError::new(
                    if *ty == Type::NUMERIC {
                        "22P02"
                    } else {
                        "22007"
                    },
                    format!(
                        "the value {text:?} cannot be sent as a binary {}",
                        ty.name()
                    ),
                ))),
            }
        }
        _ => encoder.encode_field(&value.to_pg_text(column)),
    }
}

/// A statement's result as a pgwire response, rows in `format`.
pub fn response(
    result: StatementResult,
    format: &Format,
    status: crate::engine::TxStatus,
) -> PgWireResult<Response> {
    let tag = result.tag.as_str();
    // pgwire derives ReadyForQuery's status from the kind of response: say what the session
    // is in now (ROLLBACK TO leaves it in its transaction; a COMMIT that fails ends it).
    if tag == "BEGIN" || tag == "COMMIT" || tag == "ROLLBACK" {
        return Ok(match status {
            crate::engine::TxStatus::Idle => Response::TransactionEnd(Tag::new(tag)),
            _ => Response::TransactionStart(Tag::new(tag)),
        });
    }
    if !result.returns_rows {
        return Ok(Response::Execution(Tag::new(tag)));
    }
    let schema = Arc::new(fields(&result.columns, format)?);
    let mut encoder = DataRowEncoder::new(Arc::clone(&schema));
    let mut rows = Vec::with_capacity(result.rows.len());
    for row in &result.rows {
        for ((value, column), field) in row.iter().zip(&result.columns).zip(schema.iter()) {
            encode_value(&mut encoder, value, column.ty, field)?;
        }
        rows.push(Ok(encoder.take_row()));
    }
    let mut query = QueryResponse::new(schema, stream::iter(rows));
    // pgwire appends the row count to the tag.
    let base = match tag.split_whitespace().next().unwrap_or("SELECT") {
        "INSERT" => "INSERT 0",
        "UPDATE" => "UPDATE",
        "DELETE" => "DELETE",
        "SHOW" => "SHOW",
        _ => "SELECT",
    };
    query.set_command_tag(base);
    Ok(Response::Query(query))
}

/// Decodes a hex (`\x…`) or escaped `bytea` literal.
fn bytea_from_text(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        if hex.len() % 2 != 0 {
            return None;
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| {
                // `get` is None mid-character: not hex digits anyway.
                hex.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect();
    }
    Some(text.as_bytes().to_vec())
}

/// The Bind's parameters as engine values, by the types the client declared, else the ones
/// Describe announced (`inferred`).
pub fn parameters(portal: &Portal<Prepared>, inferred: &[Type]) -> Result<Vec<Value>, SqlError> {
    let declared = &portal.statement.parameter_types;
    let mut values = Vec::with_capacity(portal.parameter_len());
    for (index, raw) in portal.parameters.iter().enumerate() {
        let Some(bytes) = raw else {
            values.push(Value::Null);
            continue;
        };
        let ty = declared
            .get(index)
            .cloned()
            .flatten()
            .or_else(|| inferred.get(index).cloned());
        let binary = format_at(&portal.parameter_format, index) == FieldFormat::Binary;
        let bad = |what: &str| {
            SqlError::new("22P02", format!("parameter ${}: invalid {what}", index + 1))
        };
        let text = || std::str::from_utf8(bytes).map_err(|_| bad("UTF-8 text"));
        let value = match (ty.as_ref(), binary) {
            (Some(&Type::INT2), true) => Value::Integer(i64::from(i16::from_be_bytes(
                bytes[..].try_into().map_err(|_| bad("int2"))?,
            ))),
            (Some(&Type::INT4), true) => Value::Integer(i64::from(i32::from_be_bytes(
                bytes[..].try_into().map_err(|_| bad("int4"))?,
            ))),
            (Some(&Type::INT8), true) => Value::Integer(i64::from_be_bytes(
                bytes[..].try_into().map_err(|_| bad("int8"))?,
            )),
            (Some(&Type::FLOAT4), true) => Value::Real(f64::from(f32::from_be_bytes(
                bytes[..].try_into().map_err(|_| bad("float4"))?,
            ))),
            (Some(&Type::FLOAT8), true) => Value::Real(f64::from_be_bytes(
                bytes[..].try_into().map_err(|_| bad("float8"))?,
            )),
            (Some(&Type::BOOL), true) => match bytes.first() {
                Some(0) => Value::Integer(0),
                Some(_) => Value::Integer(1),
                None => return Err(bad("bool")),
            },
            (Some(&Type::BYTEA), true) => Value::Blob(bytes.to_vec()),
            (Some(&Type::NUMERIC), true) => {
                Value::Text(binary::numeric_text(bytes).ok_or_else(|| bad("numeric"))?)
            }
            (Some(&Type::DATE), true) => Value::Text(
                bytes[..]
                    .try_into()
                    .ok()
                    .and_then(|days| binary::date_text(i32::from_be_bytes(days)))
                    .ok_or_else(|| bad("date"))?,
            ),
            (Some(&Type::TIME), true) => Value::Text(
                bytes[..]
                    .try_into()
                    .ok()
                    .and_then(|micros| binary::time_text(i64::from_be_bytes(micros)))
                    .ok_or_else(|| bad("time"))?,
            ),
            // Kept as SQLite's date functions write them: a timestamptz in UTC.
            (Some(&Type::TIMESTAMP | &Type::TIMESTAMPTZ), true) => Value::Text(
                bytes[..]
                    .try_into()
                    .ok()
                    .and_then(|micros| binary::timestamp_text(i64::from_be_bytes(micros)))
                    .ok_or_else(|| bad("timestamp"))?,
            ),
            (
                None
                | Some(
                    &Type::TEXT
                    | &Type::VARCHAR
                    | &Type::BPCHAR
                    | &Type::NAME
                    | &Type::UNKNOWN
                    | &Type::JSON,
                ),
                true,
            ) => Value::Text(text()?.to_owned()),
            (Some(other), true) => {
                return Err(SqlError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "parameter ${}: binary {} is not supported; send it as text",
                        index + 1,
                        other.name()
                    ),
                ));
            }
            (Some(&Type::INT2 | &Type::INT4 | &Type::INT8 | &Type::OID), false) => {
                Value::Integer(text()?.trim().parse().map_err(|_| bad("integer"))?)
            }
            (Some(&Type::FLOAT4 | &Type::FLOAT8), false) => {
                let text = text()?.trim();
                Value::Real(match text.to_ascii_lowercase().as_str() {
                    "nan" => f64::NAN,
                    "infinity" => f64::INFINITY,
                    "-infinity" => f64::NEG_INFINITY,
                    _ => text.parse().map_err(|_| bad("float"))?,
                })
            }
            (Some(&Type::BOOL), false) => match text()?.trim().to_ascii_lowercase().as_str() {
                "t" | "true" | "1" | "y" | "yes" | "on" => Value::Integer(1),
                "f" | "false" | "0" | "n" | "no" | "off" => Value::Integer(0),
                _ => return Err(bad("boolean")),
            },
            (Some(&Type::BYTEA), false) => {
                Value::Blob(bytea_from_text(text()?).ok_or_else(|| bad("bytea"))?)
            }
            // Text, numeric (kept exact as text), dates and times, and undeclared types.
            (_, false) => Value::Text(text()?.to_owned()),
        };
        values.push(value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_codes() {
        assert_eq!(
            format_at(&Format::Individual(vec![1]), 5),
            FieldFormat::Binary
        );
        assert_eq!(
            format_at(&Format::Individual(vec![0, 1]), 1),
            FieldFormat::Binary
        );
        assert_eq!(
            format_at(&Format::Individual(vec![0, 1]), 7),
            FieldFormat::Text
        );
        let columns = vec![
            Column {
                name: "a".into(),
                ty: ColumnType::Int8,
            },
            Column {
                name: "b".into(),
                ty: ColumnType::Numeric,
            },
        ];
        assert!(fields(&columns, &Format::Individual(vec![1, 1, 1])).is_err());
        let binary = fields(&columns, &Format::UnifiedBinary).expect("fields");
        assert_eq!(*binary[0].datatype(), Type::INT8);
        assert_eq!(
            *binary[1].datatype(),
            Type::NUMERIC,
            "numeric in binary is numeric too"
        );
        let text = fields(&columns, &Format::UnifiedText).expect("fields");
        assert_eq!(*text[1].datatype(), Type::NUMERIC);
    }

    #[test]
    fn bytea_literals() {
        assert_eq!(bytea_from_text("\\xdead"), Some(vec![0xde, 0xad]));
        assert_eq!(bytea_from_text("\\xabc"), None);
        assert_eq!(bytea_from_text("\\xa€"), None);
        assert_eq!(bytea_from_text("raw"), Some(b"raw".to_vec()));
    }
}
