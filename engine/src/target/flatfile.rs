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

use super::sqltext::SqlText;
use super::{Dialect, Shape, TextRow, Writer};
use crate::error::{Error, Result};

pub struct FlatfileWriter {
    db: String,
    dir: PathBuf,
    dialect: Dialect,
    sql: SqlText,
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
            sql: SqlText::new(db, dialect),
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

impl Writer for FlatfileWriter {
    fn prepare(&mut self, table: &Shape) -> Result<()> {
        let ddl = self.sql.create_table(table)?;
        if !self.ddl.contains(&ddl) {
            self.ddl.push(ddl);
        }
        Ok(())
    }

    fn delete_keys(&mut self, table: &Shape, keys: &[TextRow]) -> Result<u64> {
        for statement in self.sql.delete_keys(table, keys)? {
            self.write(&statement)?;
        }
        // What a replay deletes is only known then.
        Ok(0)
    }

    fn delete_all(&mut self, table: &Shape) -> Result<u64> {
        let statement = self.sql.delete_all(table);
        self.write(&statement)?;
        Ok(0)
    }

    /// Whether no earlier file of the directory made the table.
    fn is_empty(&mut self, table: &Shape) -> Result<bool> {
        let ddl = self.sql.create_table(table)?;
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
        for statement in self.sql.insert_rows(table, rows)? {
            self.write(&statement)?;
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
