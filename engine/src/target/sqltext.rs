//! SQL text that reproduces a run's changes, in PostgreSQL or MySQL
//! dialect: what a flatfile target writes to its files and a MariaDB target
//! sends to its server. Values become literals from their COPY text, typed
//! by `types.rs`; what MySQL cannot represent is refused naming the column.

use super::types::Kind;
use super::{Dialect, Shape, TextRow};
use crate::error::{Error, Result};
use crate::pg::{quote_ident, quote_literal};

/// Keys per DELETE and rows per INSERT statement.
const PER_STATEMENT: usize = 200;

pub struct SqlText {
    /// The db the statements are for, for messages.
    db: String,
    dialect: Dialect,
}

impl SqlText {
    pub fn new(db: &str, dialect: Dialect) -> SqlText {
        SqlText { db: db.to_string(), dialect }
    }

    pub fn table_name(&self, table: &Shape) -> String {
        match self.dialect {
            Dialect::Postgres => table.name.quoted(),
            Dialect::Mysql => backtick(&table.flat_name()),
        }
    }

    pub fn column_name(&self, name: &str) -> String {
        match self.dialect {
            Dialect::Postgres => quote_ident(name),
            Dialect::Mysql => backtick(name),
        }
    }

    pub fn literal(&self, table: &Shape, column: usize, value: &Option<String>) -> Result<String> {
        let Some(text) = value else { return Ok("NULL".into()) };
        let col = &table.columns[column];
        let refuse = |why: &str| {
            Error::Sync(format!(
                "db {}: value {text:?} of column {} of table {} {why} in MySQL",
                self.db, col.name, table.name
            ))
        };
        Ok(match (self.dialect, &col.kind) {
            (_, Kind::Integer(_)) => text.clone(),
            (Dialect::Postgres, _) => quote_literal(text),
            (Dialect::Mysql, Kind::Float(_) | Kind::Decimal(_)) => {
                if text.chars().any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') {
                    return Err(refuse("has no representation"));
                }
                text.clone()
            }
            (Dialect::Mysql, Kind::Bool) => if text == "t" { "TRUE" } else { "FALSE" }.into(),
            (Dialect::Mysql, Kind::Bytes) => {
                let hex = text.strip_prefix("\\x").ok_or_else(|| refuse("is not hex bytea"))?;
                format!("X'{hex}'")
            }
            (Dialect::Mysql, Kind::Date | Kind::Timestamp | Kind::TimestampTz) => {
                if text.contains("infinity") || text.ends_with(" BC") {
                    return Err(refuse("has no representation"));
                }
                // TimeZone is pinned to UTC, so the offset is always +00.
                mysql_string(text.strip_suffix("+00").unwrap_or(text))
            }
            (Dialect::Mysql, _) => mysql_string(text),
        })
    }

    /// `CREATE TABLE IF NOT EXISTS` for the table (with its schema, in PostgreSQL).
    pub fn create_table(&self, table: &Shape) -> Result<String> {
        let mut defs = Vec::new();
        for (i, c) in table.columns.iter().enumerate() {
            let is_key = table.key.contains(&i);
            let type_sql = match self.dialect {
                Dialect::Postgres => c.type_sql.clone(),
                // MySQL keys cannot be unbounded text; 255 characters leave room for
                // three such columns in InnoDB's 3072-byte keys.
                Dialect::Mysql if is_key && matches!(c.kind, Kind::Text | Kind::Varchar(None) | Kind::Json) => {
                    "VARCHAR(255)".into()
                }
                Dialect::Mysql => c
                    .kind
                    .mysql_type()
                    .map_err(|why| Error::Schema(format!("column {} of table {} {why}", c.name, table.name)))?,
            };
            let not_null = if c.not_null || is_key { " NOT NULL" } else { "" };
            defs.push(format!("{} {type_sql}{not_null}", self.column_name(&c.name)));
        }
        let key: Vec<String> = table.key.iter().map(|&i| self.column_name(&table.columns[i].name)).collect();
        defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
        let mut sql = String::new();
        if self.dialect == Dialect::Postgres && table.name.schema != "public" {
            sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(&table.name.schema)));
        }
        sql.push_str(&format!("CREATE TABLE IF NOT EXISTS {} ({})", self.table_name(table), defs.join(", ")));
        if self.dialect == Dialect::Mysql {
            // Any text, compared byte for byte as PostgreSQL compares keys
            // (the server's default may be latin1, case-insensitive).
            sql.push_str(" DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin");
        }
        Ok(sql)
    }

    /// `DELETE ... WHERE (k = v AND ...) OR ...`, a statement per batch of keys.
    pub fn delete_keys(&self, table: &Shape, keys: &[TextRow]) -> Result<Vec<String>> {
        let mut statements = Vec::new();
        for chunk in keys.chunks(PER_STATEMENT) {
            let mut conditions = Vec::with_capacity(chunk.len());
            for key in chunk {
                let mut parts = Vec::with_capacity(table.key.len());
                for (value, &col) in key.iter().zip(&table.key) {
                    let literal = self.literal(table, col, value)?;
                    parts.push(format!("{} = {literal}", self.column_name(&table.columns[col].name)));
                }
                conditions.push(format!("({})", parts.join(" AND ")));
            }
            statements.push(format!("DELETE FROM {} WHERE {}", self.table_name(table), conditions.join(" OR ")));
        }
        Ok(statements)
    }

    pub fn delete_all(&self, table: &Shape) -> String {
        format!("DELETE FROM {}", self.table_name(table))
    }

    /// `INSERT ... VALUES (...), ...`, a statement per batch of rows.
    pub fn insert_rows(&self, table: &Shape, rows: &[TextRow]) -> Result<Vec<String>> {
        let columns: Vec<String> = table.columns.iter().map(|c| self.column_name(&c.name)).collect();
        let mut statements = Vec::new();
        for chunk in rows.chunks(PER_STATEMENT) {
            let mut tuples = Vec::with_capacity(chunk.len());
            for row in chunk {
                let values =
                    row.iter().enumerate().map(|(i, v)| self.literal(table, i, v)).collect::<Result<Vec<_>>>()?;
                tuples.push(format!("({})", values.join(", ")));
            }
            statements.push(format!(
                "INSERT INTO {} ({}) VALUES\n{}",
                self.table_name(table),
                columns.join(", "),
                tuples.join(",\n")
            ));
        }
        Ok(statements)
    }
}

fn backtick(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A MySQL string literal under the default sql_mode (backslash escapes on).
fn mysql_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\u{1a}' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
