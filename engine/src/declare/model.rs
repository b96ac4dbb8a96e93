//! The file `ibex apply` reads and `ibex dump` writes: the catalog's
//! objects as TOML tables, one per object, keyed by name. Reading checks
//! the syntax and the keys (with the line of each mistake); what the values
//! mean is checked when the file is resolved against the catalog
//! (`super::state`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Error, Result};

/// A whole file. Every section is optional; a missing object is one to remove.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `ibex set` keys; keys left out keep their value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, Spanned<Scalar>>,
    #[serde(default, rename = "db", skip_serializing_if = "BTreeMap::is_empty")]
    pub dbs: BTreeMap<String, Spanned<DbSpec>>,
    #[serde(default, rename = "plugin", skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, Spanned<PluginSpec>>,
    /// Keyed by `schema.name` (`name` alone: schema public).
    #[serde(default, rename = "table", skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, Spanned<TableSpec>>,
    #[serde(default, rename = "sequence", skip_serializing_if = "BTreeMap::is_empty")]
    pub sequences: BTreeMap<String, Spanned<SequenceSpec>>,
    #[serde(default, rename = "herd", skip_serializing_if = "BTreeMap::is_empty")]
    pub herds: BTreeMap<String, Spanned<HerdSpec>>,
    #[serde(default, rename = "dbgroup", skip_serializing_if = "BTreeMap::is_empty")]
    pub dbgroups: BTreeMap<String, Spanned<DbGroupSpec>>,
    #[serde(default, rename = "sync", skip_serializing_if = "BTreeMap::is_empty")]
    pub syncs: BTreeMap<String, Spanned<SyncSpec>>,
}

/// A setting's value as written: `30s`, `10` or `true` alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

/// `port = 5432`, or several as text: `port = "5432,5433"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    One(u16),
    Many(String),
}

/// A db: libpq's connection keys as the catalog keeps them. The password is
/// never written here: `password_env` names a variable holding it; without
/// it, a password stored in the catalog is kept (and .pgpass, service files
/// and PG* variables work as with libpq).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSpec {
    /// postgres (the default), or a target that is not PostgreSQL: sqlite
    /// (with `path`), flatfile (with `dir` and `dialect`) or mariadb (with
    /// `dbname`, `user`, `host`/`port` or `socket`, `password_env`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub db_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialect: Option<String>,
    /// A MariaDB server's unix socket (type = "mariadb").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcrl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_binding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_session_attrs: Option<String>,
    /// active (the default) or inactive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// trigger (the default) or wal: how changes are captured where the db
    /// is a source (as `ibex update db NAME capture=...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
}

/// A table; its key is found on `db` when it is added (`pkey`: a unique
/// index's columns instead of the primary key).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The db the table is looked up on when it is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkey: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub capture_old: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub makedelta: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HerdSpec {
    /// Tables and sequences, `schema.name`.
    #[serde(default)]
    pub members: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbGroupSpec {
    /// `DB:ROLE[:PRIORITY]`, in order.
    pub members: Vec<Spanned<String>>,
}

/// A sync; parameters left out take `ibex add sync`'s defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSpec {
    pub herd: Spanned<String>,
    pub dbgroup: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autokick: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checktime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onetimecopy: Option<i16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kidsalive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub makedelta: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddl: Option<String>,
    /// Row transforms attached to the sync (`ibex add transform`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<TransformSpec>,
    /// Sync hooks attached to the sync (`ibex add hook`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hook: Vec<HookSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    pub plugin: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    pub plugin: Spanned<String>,
    pub when: Vec<String>,
}

/// A plugin: the component is named by its sha256; `path` (relative to the
/// file) is read when the catalog does not hold that component yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_fuel: Option<u64>,
    /// Bytes, or text such as `64MiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_elements: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_grants: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_tables: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_statements: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A file as read: its text (for line numbers) and where it is (for the
/// plugin paths in it).
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Source> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
        Ok(Source { path: path.to_path_buf(), text })
    }

    /// Parses the file; a syntax error or an unknown key names its line.
    pub fn parse(&self) -> Result<Config> {
        toml::from_str(&self.text).map_err(|err| {
            let message = err.message().trim().replace('\n', " ");
            let fix = if message.contains("unknown field") {
                ": remove the key or correct its spelling (see README, \"Configuration as code\")"
            } else {
                ""
            };
            Error::usage(format!("{}: {message}{fix}", self.at(err.span())))
        })
    }

    /// `FILE:LINE` for a span of the text (`FILE` when there is none).
    pub fn at(&self, span: Option<Range<usize>>) -> String {
        match span {
            Some(span) => {
                let start = span.start.min(self.text.len());
                let line = self.text[..start].bytes().filter(|b| *b == b'\n').count() + 1;
                format!("{}:{line}", self.path.display())
            }
            None => self.path.display().to_string(),
        }
    }

    /// An error about a value of the file, naming its line and the fix.
    pub fn error(&self, span: Range<usize>, message: impl AsRef<str>) -> Error {
        Error::usage(format!("{}: {}", self.at(Some(span)), message.as_ref()))
    }

    /// A path written in the file, relative to the file's directory.
    pub fn relative(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() { p.to_path_buf() } else { self.path.parent().unwrap_or(Path::new(".")).join(p) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source { path: PathBuf::from("ibex-config.toml"), text: text.to_string() }
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let err = source("[db.t1]\ndbname = \"a\"\ncolour = \"red\"\n").parse().unwrap_err().to_string();
        assert!(err.starts_with("ibex-config.toml:3:"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn reads_every_section() {
        let config = source(
            "[settings]\nretry_limit = 5\n[db.t1]\ndbname = \"a\"\nport = 5433\n[table.\"public.items\"]\ndb = \"t1\"\n\
             [herd.h]\nmembers = [\"public.items\"]\n[dbgroup.g]\nmembers = [\"t1:source\", \"t2:target\"]\n\
             [sync.s]\nherd = \"h\"\ndbgroup = \"g\"\nautokick = false\n",
        )
        .parse()
        .unwrap();
        assert_eq!(config.settings["retry_limit"].get_ref(), &Scalar::Int(5));
        assert_eq!(config.dbs["t1"].get_ref().port, Some(PortSpec::One(5433)));
        assert_eq!(config.syncs["s"].get_ref().herd.get_ref(), "h");
    }

    #[test]
    fn the_readme_example_reads() {
        let readme = include_str!("../../../README.md");
        let section = readme.split("## Configuration as code").nth(1).expect("the README section");
        let example = section.split("```toml\n").nth(1).and_then(|s| s.split("```").next()).expect("its example");
        let config = source(example).parse().unwrap();
        assert_eq!(config.syncs["foobar"].get_ref().transform.len(), 1);
        assert_eq!(config.plugins["merge"].get_ref().config["columns"], "balance");
    }
}
