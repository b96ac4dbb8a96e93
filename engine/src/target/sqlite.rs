//! A SQLite database file as a target (rusqlite, SQLite built in). Each run
//! is one SQLite transaction; tables are made on first use with the types
//! of `types.rs`, and values are bound typed (integers, reals, blobs, text)
//! so that SQLite compares keys the way it stored them.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use super::types::{Kind, bytea_from_hex};
use super::{Shape, TextRow, Writer};
use crate::error::{Error, Result};

pub struct SqliteWriter {
    db: String,
    conn: Connection,
    in_transaction: bool,
}

/// `"name"` with inner quotes doubled, SQLite's identifier quoting.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SqliteWriter {
    pub fn open(db: &str, path: &Path) -> Result<SqliteWriter> {
        let conn = Connection::open(path).map_err(|e| {
            Error::Sync(format!(
                "db {db}: cannot open SQLite file {}: {e}; check the path and that its directory is writable",
                path.display()
            ))
        })?;
        // Readers of the file (reports, tests) must not make a run fail at once.
        conn.busy_timeout(Duration::from_secs(30)).map_err(|e| sqlite_error(db, "setting a busy timeout", e))?;
        Ok(SqliteWriter { db: db.to_string(), conn, in_transaction: false })
    }

    pub fn begin(mut self) -> Result<SqliteWriter> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| sqlite_error(&self.db, "starting a transaction", e))?;
        self.in_transaction = true;
        Ok(self)
    }

    fn fail(&self, what: &str, table: &Shape, err: rusqlite::Error) -> Error {
        sqlite_error(&self.db, &format!("{what} table {}", table.flat_name()), err)
    }
}

fn sqlite_error(db: &str, what: &str, err: rusqlite::Error) -> Error {
    Error::Sync(format!("db {db} (sqlite): {what}: {err}"))
}

/// One COPY text value as the SQLite value of a column of `kind`.
fn to_value(kind: &Kind, text: &Option<String>) -> std::result::Result<Value, String> {
    let Some(text) = text else { return Ok(Value::Null) };
    Ok(match kind {
        Kind::Integer(_) => Value::Integer(text.parse().map_err(|e| format!("bad integer {text:?}: {e}"))?),
        Kind::Bool => Value::Integer(i64::from(text == "t")),
        // NaN has no REAL in SQLite (it would turn NULL): it stays text.
        Kind::Float(_) if text == "NaN" => Value::Text(text.clone()),
        Kind::Float(_) => Value::Real(match text.as_str() {
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => text.parse().map_err(|e| format!("bad float {text:?}: {e}"))?,
        }),
        Kind::Bytes => Value::Blob(bytea_from_hex(text)?),
        _ => Value::Text(text.clone()),
    })
}

fn to_values<'r>(kinds: impl Iterator<Item = &'r Kind>, row: &'r TextRow) -> std::result::Result<Vec<Value>, String> {
    kinds.zip(row).map(|(k, v)| to_value(k, v)).collect()
}

impl Writer for SqliteWriter {
    fn prepare(&mut self, table: &Shape) -> Result<()> {
        let mut defs: Vec<String> = table
            .columns
            .iter()
            .map(|c| {
                format!("{} {}{}", quote(&c.name), c.kind.sqlite_type(), if c.not_null { " NOT NULL" } else { "" })
            })
            .collect();
        let key: Vec<String> = table.key.iter().map(|&i| quote(&table.columns[i].name)).collect();
        defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
        let sql = format!("CREATE TABLE IF NOT EXISTS {} ({})", quote(&table.flat_name()), defs.join(", "));
        self.conn.execute_batch(&sql).map_err(|e| self.fail("creating", table, e))
    }

    fn delete_keys(&mut self, table: &Shape, keys: &[TextRow]) -> Result<u64> {
        let cond: Vec<String> = table
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} = ?{}", quote(&table.columns[i].name), n + 1))
            .collect();
        let sql = format!("DELETE FROM {} WHERE {}", quote(&table.flat_name()), cond.join(" AND "));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| sqlite_error(&self.db, "preparing a delete", e))?;
        let mut deleted = 0;
        for key in keys {
            let values = to_values(table.key.iter().map(|&i| &table.columns[i].kind), key)
                .map_err(|why| Error::Sync(format!("db {}: a key of table {}: {why}", self.db, table.name)))?;
            deleted += stmt
                .execute(params_from_iter(values))
                .map_err(|e| sqlite_error(&self.db, &format!("deleting from table {}", table.flat_name()), e))?
                as u64;
        }
        Ok(deleted)
    }

    fn delete_all(&mut self, table: &Shape) -> Result<u64> {
        let n = self
            .conn
            .execute(&format!("DELETE FROM {}", quote(&table.flat_name())), [])
            .map_err(|e| self.fail("emptying", table, e))?;
        Ok(n as u64)
    }

    fn is_empty(&mut self, table: &Shape) -> Result<bool> {
        self.conn
            .query_row(&format!("SELECT NOT EXISTS (SELECT 1 FROM {})", quote(&table.flat_name())), [], |r| {
                r.get::<_, bool>(0)
            })
            .map_err(|e| self.fail("reading", table, e))
    }

    fn write_rows(&mut self, table: &Shape, rows: &[TextRow]) -> Result<u64> {
        let columns: Vec<String> = table.columns.iter().map(|c| quote(&c.name)).collect();
        let marks: Vec<String> = (1..=columns.len()).map(|n| format!("?{n}")).collect();
        let sql =
            format!("INSERT INTO {} ({}) VALUES ({})", quote(&table.flat_name()), columns.join(", "), marks.join(", "));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| sqlite_error(&self.db, "preparing an insert", e))?;
        for row in rows {
            let values = to_values(table.columns.iter().map(|c| &c.kind), row)
                .map_err(|why| Error::Sync(format!("db {}: a row of table {}: {why}", self.db, table.name)))?;
            stmt.execute(params_from_iter(values))
                .map_err(|e| sqlite_error(&self.db, &format!("inserting into table {}", table.flat_name()), e))?;
        }
        Ok(rows.len() as u64)
    }

    fn commit(&mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(|e| sqlite_error(&self.db, "committing", e))?;
        self.in_transaction = false;
        Ok(())
    }
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        if self.in_transaction
            && let Err(err) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(db = %self.db, %err, "rolling back a failed run on SQLite");
        }
    }
}
