//! A directory of SQL files as a target: every run that changed something
//! leaves one file, `<commit time>-<sync>.sql`, holding the statements that
//! reproduce its changes (CREATE TABLE IF NOT EXISTS for the tables it
//! touched, then BEGIN; DELETE ...; INSERT ...; COMMIT) in PostgreSQL or
//! MySQL dialect. File names sort in commit order, so replaying the files
//! in name order into an empty database yields the source's contents.
//! A run's statements go to a hidden `.partial` file first; only its
//! commit gives the file its name, so a failed run leaves nothing behind.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::types::Kind;
use super::{Dialect, Shape, TextRow, Writer};
use crate::error::{Error, Result};
use crate::pg::{quote_ident, quote_literal};

/// Keys per DELETE and rows per INSERT statement.
const PER_STATEMENT: usize = 200;

pub struct FlatfileWriter {
    db: String,
    dir: PathBuf,
    dialect: Dialect,
    sync: String,
    /// CREATE TABLE statements of the tables this run touched.
    ddl: Vec<String>,
    /// The run's DELETE and INSERT statements, once there is one.
    body: Option<(PathBuf, BufWriter<File>)>,
}

/// Checks `dir` exists and takes new files.
pub fn check_dir(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".ibex-check-{}", std::process::id()));
    File::create(&probe).and_then(|_| fs::remove_file(&probe)).map_err(|e| {
        Error::usage(format!(
            "cannot write files in {}: {e}; create the directory or fix its permissions",
            dir.display()
        ))
    })
}

impl FlatfileWriter {
    pub fn new(db: &str, dir: &Path, dialect: Dialect, sync: &str) -> FlatfileWriter {
        FlatfileWriter {
            db: db.to_string(),
            dir: dir.to_path_buf(),
            dialect,
            sync: sync.to_string(),
            ddl: Vec::new(),
            body: None,
        }
    }

    fn io_error(&self, what: &str, path: &Path, err: std::io::Error) -> Error {
        Error::Sync(format!("db {} (flatfile): {what} {}: {err}", self.db, path.display()))
    }

    fn write(&mut self, statement: &str) -> Result<()> {
        if self.body.is_none() {
            let path = self.dir.join(format!(".{}-{}.partial", self.sync, std::process::id()));
            let file = File::create(&path).map_err(|e| self.io_error("cannot create", &path, e))?;
            self.body = Some((path, BufWriter::new(file)));
        }
        let Some((path, out)) = self.body.as_mut() else { return Ok(()) };
        let result = out.write_all(statement.as_bytes()).and_then(|_| out.write_all(b";\n"));
        let path = path.clone();
        result.map_err(|e| self.io_error("cannot write", &path, e))
    }

    fn table_name(&self, table: &Shape) -> String {
        match self.dialect {
            Dialect::Postgres => table.name.quoted(),
            Dialect::Mysql => backtick(&table.flat_name()),
        }
    }

    fn column_name(&self, name: &str) -> String {
        match self.dialect {
            Dialect::Postgres => quote_ident(name),
            Dialect::Mysql => backtick(name),
        }
    }

    fn literal(&self, table: &Shape, column: usize, value: &Option<String>) -> Result<String> {
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

    fn create_table(&self, table: &Shape) -> Result<String> {
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

    /// Committed files of this directory, in replay order.
    pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "sql")
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        files.sort();
        Ok(files)
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

impl Writer for FlatfileWriter {
    fn prepare(&mut self, table: &Shape) -> Result<()> {
        let ddl = self.create_table(table)?;
        if !self.ddl.contains(&ddl) {
            self.ddl.push(ddl);
        }
        Ok(())
    }

    fn delete_keys(&mut self, table: &Shape, keys: &[TextRow]) -> Result<u64> {
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
            let sql = format!("DELETE FROM {} WHERE {}", self.table_name(table), conditions.join(" OR "));
            self.write(&sql)?;
        }
        // What a replay deletes is only known then.
        Ok(0)
    }

    fn delete_all(&mut self, table: &Shape) -> Result<u64> {
        let sql = format!("DELETE FROM {}", self.table_name(table));
        self.write(&sql)?;
        Ok(0)
    }

    /// Whether no earlier file of the directory made the table.
    fn is_empty(&mut self, table: &Shape) -> Result<bool> {
        let ddl = self.create_table(table)?;
        let files = Self::files(&self.dir).map_err(|e| self.io_error("cannot list", &self.dir, e))?;
        for file in files {
            let text = fs::read_to_string(&file).map_err(|e| self.io_error("cannot read", &file, e))?;
            if text.contains(&ddl) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn write_rows(&mut self, table: &Shape, rows: &[TextRow]) -> Result<u64> {
        let columns: Vec<String> = table.columns.iter().map(|c| self.column_name(&c.name)).collect();
        for chunk in rows.chunks(PER_STATEMENT) {
            let mut tuples = Vec::with_capacity(chunk.len());
            for row in chunk {
                let values =
                    row.iter().enumerate().map(|(i, v)| self.literal(table, i, v)).collect::<Result<Vec<_>>>()?;
                tuples.push(format!("({})", values.join(", ")));
            }
            let sql = format!(
                "INSERT INTO {} ({}) VALUES\n{}",
                self.table_name(table),
                columns.join(", "),
                tuples.join(",\n")
            );
            self.write(&sql)?;
        }
        Ok(rows.len() as u64)
    }

    fn commit(&mut self) -> Result<()> {
        let Some((partial, mut out)) = self.body.take() else {
            return Ok(()); // nothing changed: no file
        };
        out.flush().map_err(|e| self.io_error("cannot write", &partial, e))?;
        drop(out);
        let now = chrono::Utc::now();
        let mut path = self.dir.join(format!("{}-{}.sql", now.format("%Y%m%dT%H%M%S%.6fZ"), self.sync));
        let mut n = 1;
        while path.exists() {
            path = self.dir.join(format!("{}-{}-{n}.sql", now.format("%Y%m%dT%H%M%S%.6fZ"), self.sync));
            n += 1;
        }
        let staged = self.dir.join(format!(".{}-{}.staged", self.sync, std::process::id()));
        let mut head = format!("-- ibex sync {} to db {}, committed {}\n", self.sync, self.db, now.to_rfc3339());
        match self.dialect {
            Dialect::Postgres => {
                head.push_str("SET standard_conforming_strings = on;\nSET client_encoding = 'UTF8';\n")
            }
            Dialect::Mysql => head.push_str("SET NAMES utf8mb4;\nSET time_zone = '+00:00';\n"),
        }
        for ddl in &self.ddl {
            head.push_str(ddl);
            head.push_str(";\n");
        }
        head.push_str(match self.dialect {
            Dialect::Postgres => "BEGIN;\n",
            Dialect::Mysql => "START TRANSACTION;\n",
        });
        let assemble = || -> std::io::Result<()> {
            let mut file = BufWriter::new(File::create(&staged)?);
            file.write_all(head.as_bytes())?;
            std::io::copy(&mut File::open(&partial)?, &mut file)?;
            file.write_all(b"COMMIT;\n")?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::remove_file(&partial)?;
            fs::rename(&staged, &path)?;
            Ok(())
        };
        assemble().map_err(|e| self.io_error("cannot commit the run's file", &path, e))?;
        tracing::debug!(db = %self.db, file = %path.display(), "flatfile written");
        Ok(())
    }
}

impl Drop for FlatfileWriter {
    fn drop(&mut self) {
        // A run that did not commit leaves no file.
        if let Some((partial, out)) = self.body.take() {
            drop(out);
            if let Err(err) = fs::remove_file(&partial) {
                tracing::warn!(db = %self.db, file = %partial.display(), %err, "removing the file of a failed run");
            }
        }
    }
}
