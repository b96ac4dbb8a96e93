//! How PostgreSQL column types map onto a foreign target's types (the
//! table in README.md, "Targets other than PostgreSQL"), and how one
//! value's COPY text becomes a value there. What cannot map is refused
//! when a sync is validated, naming the column.

use crate::pg::introspect::LiveColumn;

/// PostgreSQL's first oid for objects made after initdb: anything above is
/// a user-defined type (enum, domain, composite, extension type).
const FIRST_USER_OID: u32 = 16384;

/// What a PostgreSQL column is, as far as a foreign target cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// smallint, integer, bigint; the width in bytes.
    Integer(u8),
    /// real (4) or double precision (8).
    Float(u8),
    /// numeric, with `(precision, scale)` when declared.
    Decimal(Option<(u32, u32)>),
    Bool,
    /// text, name; varchar(n) and char(n) with their length.
    Text,
    Varchar(Option<u32>),
    Char(Option<u32>),
    Bytes,
    Date,
    /// time without time zone.
    Time,
    /// timestamp without time zone.
    Timestamp,
    /// timestamp with time zone (its text is in UTC: ibex pins TimeZone).
    TimestampTz,
    Uuid,
    Json,
    /// inet, cidr, macaddr: short text everywhere.
    Address,
    /// Built-in types only SQLite and PostgreSQL text can carry (arrays,
    /// interval, ranges, geometry, ...): their PostgreSQL text is kept.
    PgText,
}

/// Why a column cannot go to a foreign target.
pub fn classify(column: &LiveColumn) -> Result<Kind, String> {
    if column.type_oid >= FIRST_USER_OID {
        return Err(format!(
            "has the user-defined type {} (an enum, domain, composite or extension type), which ibex does not map to other databases",
            column.type_sql
        ));
    }
    let (base, params) = split_type(&column.type_sql);
    if base.ends_with("[]") {
        return Ok(Kind::PgText);
    }
    Ok(match base.as_str() {
        "smallint" => Kind::Integer(2),
        "integer" => Kind::Integer(4),
        "bigint" => Kind::Integer(8),
        "real" => Kind::Float(4),
        "double precision" => Kind::Float(8),
        "numeric" => Kind::Decimal(match params.as_slice() {
            [p, s] => Some((*p, *s)),
            [p] => Some((*p, 0)),
            _ => None,
        }),
        "boolean" => Kind::Bool,
        "text" | "name" => Kind::Text,
        "character varying" => Kind::Varchar(params.first().copied()),
        "character" => Kind::Char(params.first().copied()),
        "bytea" => Kind::Bytes,
        "date" => Kind::Date,
        "time without time zone" => Kind::Time,
        "timestamp without time zone" => Kind::Timestamp,
        "timestamp with time zone" => Kind::TimestampTz,
        "uuid" => Kind::Uuid,
        "json" | "jsonb" => Kind::Json,
        "inet" | "cidr" | "macaddr" | "macaddr8" => Kind::Address,
        _ => Kind::PgText,
    })
}

/// `timestamp(3) without time zone` -> ("timestamp without time zone", [3]).
fn split_type(type_sql: &str) -> (String, Vec<u32>) {
    let mut base = String::new();
    let mut params = Vec::new();
    let mut rest = type_sql;
    while let Some(open) = rest.find('(') {
        base.push_str(&rest[..open]);
        let Some(close) = rest[open..].find(')') else { break };
        params.extend(rest[open + 1..open + close].split(',').filter_map(|p| p.trim().parse::<u32>().ok()));
        rest = &rest[open + close + 1..];
    }
    base.push_str(rest);
    (base.split_whitespace().collect::<Vec<_>>().join(" "), params)
}

impl Kind {
    /// The SQLite column type (its affinity decides how values are kept).
    pub fn sqlite_type(&self) -> &'static str {
        match self {
            Kind::Integer(_) | Kind::Bool => "INTEGER",
            Kind::Float(_) => "REAL",
            Kind::Bytes => "BLOB",
            // numeric stays text: REAL or NUMERIC affinity would round it.
            _ => "TEXT",
        }
    }

    /// The MySQL/MariaDB column type, or why there is none.
    pub fn mysql_type(&self) -> Result<String, String> {
        Ok(match self {
            Kind::Integer(2) => "SMALLINT".into(),
            Kind::Integer(4) => "INT".into(),
            Kind::Integer(_) => "BIGINT".into(),
            Kind::Float(4) => "FLOAT".into(),
            Kind::Float(_) => "DOUBLE".into(),
            Kind::Decimal(Some((p, s))) if *p <= 65 && *s <= 30 => format!("DECIMAL({p},{s})"),
            Kind::Decimal(Some((p, s))) => {
                return Err(format!("is numeric({p},{s}), beyond MySQL's DECIMAL(65,30)"));
            }
            Kind::Decimal(None) => "DECIMAL(65,30)".into(),
            Kind::Bool => "BOOLEAN".into(),
            Kind::Text => "LONGTEXT".into(),
            Kind::Varchar(Some(n)) => format!("VARCHAR({n})"),
            Kind::Varchar(None) => "LONGTEXT".into(),
            Kind::Char(n) => format!("CHAR({})", n.unwrap_or(1)),
            Kind::Bytes => "LONGBLOB".into(),
            Kind::Date => "DATE".into(),
            Kind::Time => "TIME(6)".into(),
            Kind::Timestamp | Kind::TimestampTz => "DATETIME(6)".into(),
            Kind::Uuid => "CHAR(36)".into(),
            Kind::Json => "JSON".into(),
            Kind::Address => "VARCHAR(64)".into(),
            Kind::PgText => {
                return Err(
                    "has a type MySQL has no counterpart for (arrays, interval, ranges, geometry and the like)".into(),
                );
            }
        })
    }
}

/// `\x0aff` (bytea's hex output) as bytes.
pub fn bytea_from_hex(text: &str) -> Result<Vec<u8>, String> {
    let hex = text.strip_prefix("\\x").ok_or_else(|| format!("bytea value {text:.20?} is not in hex format"))?;
    if hex.len() % 2 != 0 {
        return Err("bytea hex value has an odd number of digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| format!("bad bytea hex value: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(type_sql: &str, type_oid: u32) -> LiveColumn {
        LiveColumn {
            name: "c".into(),
            type_sql: type_sql.into(),
            type_oid,
            not_null: false,
            generated: false,
            send_fn: String::new(),
            oids_in_binary: false,
            domain_base_sql: None,
            kept_as_text_in_delta: false,
            fixed_bytes: None,
            built_in: true,
            equality_schema: "pg_catalog".into(),
            equality_operand: None,
        }
    }

    #[test]
    fn kinds_and_mysql_types() {
        assert_eq!(classify(&column("numeric(10,2)", 1700)).unwrap().mysql_type().unwrap(), "DECIMAL(10,2)");
        assert_eq!(classify(&column("timestamp(3) with time zone", 1184)).unwrap(), Kind::TimestampTz);
        assert_eq!(classify(&column("character varying(20)", 1043)).unwrap(), Kind::Varchar(Some(20)));
        assert_eq!(classify(&column("integer[]", 1007)).unwrap().sqlite_type(), "TEXT");
        assert!(classify(&column("integer[]", 1007)).unwrap().mysql_type().is_err());
        assert!(classify(&column("mood", 16390)).is_err());
        assert_eq!(bytea_from_hex("\\x00ff").unwrap(), vec![0, 255]);
    }
}
