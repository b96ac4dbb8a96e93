//! PostgreSQL values to and from the WIT `value`: booleans, integers,
//! floats and bytea typed, every other type in its exact text form. Rows
//! are read with a select list that casts those other types to text, and
//! written back through COPY's text format, so any type round-trips.

use std::fmt::Write;

use tokio_postgres::Row;
use tokio_postgres::types::Type;

pub use super::bindings::types::Value;
use crate::pg::introspect::LiveColumn;
use crate::pg::quote_ident;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bytea,
    /// Anything else: read and written as text.
    Text,
}

impl ColumnKind {
    pub fn of(type_oid: u32) -> ColumnKind {
        match Type::from_oid(type_oid) {
            Some(Type::BOOL) => ColumnKind::Bool,
            Some(Type::INT2) => ColumnKind::Int2,
            Some(Type::INT4) => ColumnKind::Int4,
            Some(Type::INT8) => ColumnKind::Int8,
            Some(Type::FLOAT4) => ColumnKind::Float4,
            Some(Type::FLOAT8) => ColumnKind::Float8,
            Some(Type::BYTEA) => ColumnKind::Bytea,
            _ => ColumnKind::Text,
        }
    }

    /// The select-list expression for `column` of alias `alias`.
    pub fn select(self, alias: &str, column: &LiveColumn) -> String {
        let col = format!("{alias}.{}", quote_ident(&column.name));
        match self {
            ColumnKind::Text => column.as_text(&col),
            _ => col,
        }
    }

    /// Whether a value of this shape may be written to such a column.
    pub fn accepts(self, value: &Value) -> bool {
        match value {
            Value::Null | Value::Text(_) => true,
            Value::Boolean(_) => matches!(self, ColumnKind::Bool),
            Value::Int(_) => {
                matches!(
                    self,
                    ColumnKind::Int2
                        | ColumnKind::Int4
                        | ColumnKind::Int8
                        | ColumnKind::Float4
                        | ColumnKind::Float8
                        | ColumnKind::Text
                )
            }
            Value::Float(_) => matches!(self, ColumnKind::Float4 | ColumnKind::Float8 | ColumnKind::Text),
            Value::Bytes(_) => matches!(self, ColumnKind::Bytea),
        }
    }
}

/// Reads column `idx` of a row selected with `ColumnKind::select`.
pub fn from_row(row: &Row, idx: usize, kind: ColumnKind) -> Result<Value, tokio_postgres::Error> {
    Ok(match kind {
        ColumnKind::Bool => row.try_get::<_, Option<bool>>(idx)?.map_or(Value::Null, Value::Boolean),
        ColumnKind::Int2 => row.try_get::<_, Option<i16>>(idx)?.map_or(Value::Null, |v| Value::Int(v.into())),
        ColumnKind::Int4 => row.try_get::<_, Option<i32>>(idx)?.map_or(Value::Null, |v| Value::Int(v.into())),
        ColumnKind::Int8 => row.try_get::<_, Option<i64>>(idx)?.map_or(Value::Null, Value::Int),
        ColumnKind::Float4 => row.try_get::<_, Option<f32>>(idx)?.map_or(Value::Null, |v| Value::Float(v.into())),
        ColumnKind::Float8 => row.try_get::<_, Option<f64>>(idx)?.map_or(Value::Null, Value::Float),
        ColumnKind::Bytea => row.try_get::<_, Option<Vec<u8>>>(idx)?.map_or(Value::Null, Value::Bytes),
        ColumnKind::Text => row.try_get::<_, Option<String>>(idx)?.map_or(Value::Null, Value::Text),
    })
}

/// A value from its PostgreSQL text form (old images are kept as text).
pub fn from_text(text: Option<&str>, kind: ColumnKind) -> Value {
    let Some(text) = text else { return Value::Null };
    let parsed = match kind {
        ColumnKind::Bool => match text {
            "t" | "true" => Some(Value::Boolean(true)),
            "f" | "false" => Some(Value::Boolean(false)),
            _ => None,
        },
        ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8 => text.parse().ok().map(Value::Int),
        ColumnKind::Float4 | ColumnKind::Float8 => match text {
            "NaN" => Some(Value::Float(f64::NAN)),
            "Infinity" => Some(Value::Float(f64::INFINITY)),
            "-Infinity" => Some(Value::Float(f64::NEG_INFINITY)),
            other => other.parse().ok().map(Value::Float),
        },
        ColumnKind::Bytea => text.strip_prefix("\\x").and_then(decode_hex).map(Value::Bytes),
        ColumnKind::Text => None,
    };
    parsed.unwrap_or_else(|| Value::Text(text.to_string()))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
}

/// The text form PostgreSQL reads back: None for NULL.
pub fn to_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        Value::Boolean(b) => if *b { "t" } else { "f" }.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_nan() => "NaN".into(),
        Value::Float(f) if f.is_infinite() => if *f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        Value::Float(f) if *f == 0.0 && f.is_sign_negative() => "-0".into(),
        // Rust prints the shortest text that reads back as the same f64.
        Value::Float(f) => format!("{f:?}"),
        Value::Bytes(b) => {
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("\\x");
            for byte in b {
                let _ = write!(s, "{byte:02x}");
            }
            s
        }
        Value::Text(t) => t.clone(),
    })
}

/// Appends one row in COPY text format (tab-separated, `\N` for NULL).
pub fn push_copy_row(out: &mut String, row: &[Value]) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        match to_text(value) {
            None => out.push_str("\\N"),
            Some(text) => {
                for ch in text.chars() {
                    match ch {
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out.push('\n');
}

/// A value from PostgreSQL's binary form, for the common key types;
/// None for types read as text from the database instead.
pub fn from_binary(type_oid: u32, raw: &[u8]) -> Option<Value> {
    let int = |n: usize| (raw.len() == n).then(|| raw.iter().fold(0i64, |acc, b| (acc << 8) | i64::from(*b)));
    Some(match Type::from_oid(type_oid)? {
        Type::BOOL => Value::Boolean(*raw.first()? != 0),
        Type::INT2 => Value::Int(i64::from(int(2)? as u16 as i16)),
        Type::INT4 => Value::Int(i64::from(int(4)? as u32 as i32)),
        Type::INT8 => Value::Int(int(8)?),
        Type::FLOAT4 => Value::Float(f64::from(f32::from_bits(int(4)? as u32))),
        Type::FLOAT8 => Value::Float(f64::from_bits(int(8)? as u64)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Value::Text(String::from_utf8(raw.to_vec()).ok()?),
        Type::BYTEA => Value::Bytes(raw.to_vec()),
        Type::UUID if raw.len() == 16 => {
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            Value::Text(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for (v, kind) in [
            (Value::Float(-0.0), ColumnKind::Float8),
            (Value::Float(f64::NEG_INFINITY), ColumnKind::Float8),
            (Value::Float(1e300), ColumnKind::Float8),
            (Value::Int(-9223372036854775808), ColumnKind::Int8),
            (Value::Bytes(vec![0, 255, 16]), ColumnKind::Bytea),
            (Value::Boolean(true), ColumnKind::Bool),
        ] {
            let text = to_text(&v);
            let back = from_text(text.as_deref(), kind);
            assert_eq!(format!("{back:?}"), format!("{v:?}"));
        }
        assert!(matches!(from_text(Some("NaN"), ColumnKind::Float4), Value::Float(f) if f.is_nan()));
    }

    #[test]
    fn copy_rows_escape() {
        let mut out = String::new();
        push_copy_row(&mut out, &[Value::Text("a\tb\\c\nd".into()), Value::Null]);
        assert_eq!(out, "a\\tb\\\\c\\nd\t\\N\n");
    }
}
