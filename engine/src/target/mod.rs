//! How rows are written to a db of each type (DESIGN.md, "Wave 2": the
//! `target/` room). Sources are always PostgreSQL. A PostgreSQL target takes
//! a table's changes as DELETE of the changed keys and a COPY of the
//! winning rows (`postgres.rs`, fanned out from the source undecoded). A
//! foreign target (`sqlite.rs`, `flatfile.rs`, `mariadb.rs`) takes the same
//! two steps through `Writer`: the rows arrive as COPY text from the
//! source, decoded field by field (`copytext.rs`), and are written in the
//! target's own types (`types.rs`), as SQL text for the MySQL side and the
//! files (`sqltext.rs`).

pub mod copytext;
pub mod feed;
pub mod flatfile;
pub mod mariadb;
pub mod postgres;
pub mod sqlite;
pub mod sqltext;
mod table;
pub mod types;

use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::QualifiedName;
use crate::pg::introspect::LiveColumn;
pub use copytext::TextRow;
pub use table::TableSpec;
use types::Kind;

/// Which SQL a flatfile target writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Mysql,
}

impl Dialect {
    pub fn parse(text: &str) -> Result<Dialect> {
        match text {
            "postgres" | "postgresql" | "pg" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::Mysql),
            other => Err(Error::usage(format!("unknown dialect {other:?}: use dialect=postgres or dialect=mysql"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Mysql => "mysql",
        }
    }
}

/// A db that is not PostgreSQL, as the catalog keeps it (`ibex.db.target`;
/// null there means PostgreSQL, described by `conn`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TargetSpec {
    /// A SQLite database file, created if missing.
    Sqlite { path: PathBuf },
    /// A directory that gets one SQL file per run that changed something.
    Flatfile { dir: PathBuf, dialect: Dialect },
    /// A MariaDB or MySQL server.
    Mariadb(mariadb::MariadbConn),
}

impl TargetSpec {
    pub fn type_name(&self) -> &'static str {
        match self {
            TargetSpec::Sqlite { .. } => "sqlite",
            TargetSpec::Flatfile { .. } => "flatfile",
            TargetSpec::Mariadb(_) => "mariadb",
        }
    }

    /// One line for listings: where the rows go.
    pub fn describe(&self) -> String {
        match self {
            TargetSpec::Sqlite { path } => format!("sqlite {}", path.display()),
            TargetSpec::Flatfile { dir, dialect } => format!("flatfile {} ({})", dir.display(), dialect.as_str()),
            TargetSpec::Mariadb(conn) => conn.describe(),
        }
    }

    /// Checks the target can be written now (the file opens, the directory
    /// exists and takes files), so `add db` fails early with the reason.
    pub fn check(&self) -> Result<()> {
        match self {
            TargetSpec::Sqlite { path } => sqlite::SqliteWriter::open("check", path).map(drop),
            TargetSpec::Flatfile { dir, .. } => flatfile::check_dir(dir),
            TargetSpec::Mariadb(conn) => mariadb::check("check", conn),
        }
    }

    /// Why column `column` of `table` cannot go to this target, if it cannot.
    pub fn refuse_column(&self, column: &LiveColumn) -> Option<String> {
        let kind = match types::classify(column) {
            Ok(kind) => kind,
            Err(why) => return Some(why),
        };
        match self {
            TargetSpec::Flatfile { dialect: Dialect::Mysql, .. } | TargetSpec::Mariadb(_) => kind.mysql_type().err(),
            _ => None,
        }
    }
}

/// A foreign db in a sync's plan (always a target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignDb {
    pub name: String,
    pub spec: TargetSpec,
}

/// A table as a foreign target sees it: the columns COPY carries, in order.
#[derive(Debug, Clone)]
pub struct Shape {
    pub name: QualifiedName,
    pub columns: Vec<ShapeColumn>,
    /// Indexes into `columns` of the key columns.
    pub key: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct ShapeColumn {
    pub name: String,
    pub type_sql: String,
    pub not_null: bool,
    pub kind: Kind,
}

impl Shape {
    /// `columns` as COPY sends them and the `key` columns among them.
    pub fn new(name: &QualifiedName, columns: &[LiveColumn], key: &[LiveColumn]) -> Result<Shape> {
        let mut out = Vec::with_capacity(columns.len());
        for c in columns {
            let kind =
                types::classify(c).map_err(|why| Error::Schema(format!("column {} of table {name} {why}", c.name)))?;
            out.push(ShapeColumn { name: c.name.clone(), type_sql: c.type_sql.clone(), not_null: c.not_null, kind });
        }
        let key = key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c.name == k.name)
                    .ok_or_else(|| Error::Schema(format!("key column {} of table {name} is not copied", k.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Shape { name: name.clone(), columns: out, key })
    }

    /// The table's name on a target without schemas: the bare name for
    /// tables in `public`, else `schema.name` as one identifier.
    pub fn flat_name(&self) -> String {
        if self.name.schema == "public" {
            self.name.name.clone()
        } else {
            format!("{}.{}", self.name.schema, self.name.name)
        }
    }

    /// The key values of a full row.
    pub fn key_of(&self, row: &TextRow) -> TextRow {
        self.key.iter().map(|&i| row.get(i).cloned().flatten()).collect()
    }
}

/// What the cycle's apply step does to one foreign target: within one
/// transaction (or file), per table, delete the changed keys and write the
/// rows the source holds for them now. Calls are synchronous and run on
/// the cycle's task: local files for SQLite and flatfile, and for MariaDB
/// a network round trip inside `block_in_place` (see `mariadb.rs`).
pub trait Writer: Send {
    /// Makes the table if it is missing (idempotent).
    fn prepare(&mut self, table: &Shape) -> Result<()>;
    /// Deletes the rows with these keys (values in key column order).
    fn delete_keys(&mut self, table: &Shape, keys: &[TextRow]) -> Result<u64>;
    /// Deletes every row (whole-table copies, TRUNCATE on a source).
    fn delete_all(&mut self, table: &Shape) -> Result<u64>;
    /// Whether the table holds no rows (onetimecopy=2).
    fn is_empty(&mut self, table: &Shape) -> Result<bool>;
    /// Inserts full rows (values in `table.columns` order).
    fn write_rows(&mut self, table: &Shape, rows: &[TextRow]) -> Result<u64>;
    /// Makes everything since opening durable; dropping without it undoes it.
    fn commit(&mut self) -> Result<()>;
}

/// Opens a writer for one run of `sync` (its transaction starts now).
pub fn open(db: &ForeignDb, sync: &str) -> Result<Box<dyn Writer>> {
    let writer: Box<dyn Writer> = match &db.spec {
        TargetSpec::Sqlite { path } => Box::new(sqlite::SqliteWriter::open(&db.name, path)?.begin()?),
        TargetSpec::Flatfile { dir, dialect } => Box::new(flatfile::FlatfileWriter::new(&db.name, dir, *dialect, sync)),
        TargetSpec::Mariadb(conn) => Box::new(mariadb::MariadbWriter::begin(&db.name, conn)?),
    };
    Ok(writer)
}

/// A foreign target during a run: its writer once the run began. The lock
/// only makes the slot shareable by the cycle's `&self` methods; it is never
/// held across an await.
pub struct Slot {
    pub db: ForeignDb,
    writer: Mutex<Option<Box<dyn Writer>>>,
}

impl Slot {
    pub fn new(db: ForeignDb) -> Slot {
        Slot { db, writer: Mutex::new(None) }
    }

    pub fn begin(&self, sync: &str) -> Result<()> {
        let writer = open(&self.db, sync)?;
        *self.lock()? = Some(writer);
        Ok(())
    }

    /// Runs `f` on the open writer.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Writer) -> Result<T>) -> Result<T> {
        let mut guard = self.lock()?;
        let writer = guard
            .as_mut()
            .ok_or_else(|| Error::Sync(format!("db {} was written before its run began", self.db.name)))?;
        f(writer.as_mut())
    }

    pub fn commit(&self) -> Result<()> {
        let writer = self.lock()?.take();
        match writer {
            Some(mut w) => w.commit(),
            None => Ok(()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<Box<dyn Writer>>>> {
        self.writer
            .lock()
            .map_err(|_| Error::Sync(format!("the writer of db {} failed earlier in this run", self.db.name)))
    }
}

/// A problem line for each column some foreign target cannot take.
pub fn unmappable(foreign: &[ForeignDb], tables: &[TableSpec]) -> Vec<String> {
    let mut problems = Vec::new();
    for db in foreign {
        for table in tables {
            for column in &table.columns {
                if let Some(why) = db.spec.refuse_column(column) {
                    problems.push(format!(
                        "column {} of table {} {why}, so db {} ({}) cannot take it (see README, \"Targets other than PostgreSQL\"): take the table out of the herd, or change the column's type",
                        column.name,
                        table.name,
                        db.name,
                        db.spec.type_name()
                    ));
                }
            }
        }
    }
    problems
}
