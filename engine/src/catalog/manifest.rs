//! A plugin's manifest: what it is and what it may use. Set at `ibex add
//! plugin` (key=value), stored in the catalog beside the component. Data
//! only: loading and running plugins is `crate::plugin`'s, which reads it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConflictStrategy;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    ConflictHandler,
    RowTransform,
    SyncHooks,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::ConflictHandler => "conflict-handler",
            PluginKind::RowTransform => "row-transform",
            PluginKind::SyncHooks => "sync-hooks",
        }
    }

    pub const ALL: [PluginKind; 3] = [PluginKind::ConflictHandler, PluginKind::RowTransform, PluginKind::SyncHooks];
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PluginKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "conflict-handler" | "conflict" => Ok(PluginKind::ConflictHandler),
            "row-transform" | "transform" => Ok(PluginKind::RowTransform),
            "sync-hooks" | "hooks" | "hook" => Ok(PluginKind::SyncHooks),
            other => {
                Err(Error::usage(format!("bad kind {other:?}: use conflict-handler, row-transform or sync-hooks")))
            }
        }
    }
}

/// What happens when the plugin traps, times out or answers nonsense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnError {
    /// The run fails; nothing is applied; the changes stay pending.
    Abort,
    /// Decide with a built-in strategy instead (conflict handlers only).
    Fallback(ConflictStrategy),
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnError::Abort => f.write_str("abort"),
            OnError::Fallback(s) => write!(f, "fallback={s}"),
        }
    }
}

impl FromStr for OnError {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "abort" => Ok(OnError::Abort),
            other => match other.strip_prefix("fallback=").or_else(|| other.strip_prefix("fallback:")) {
                Some(strategy) => Ok(OnError::Fallback(strategy.parse()?)),
                None => Err(Error::usage(format!(
                    "bad on_error {other:?}: use abort or fallback=STRATEGY (e.g. fallback=latest)"
                ))),
            },
        }
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

fn as_text<S: serde::Serializer>(v: &OnError, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Serialized as `ibex list plugins --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub kind: PluginKind,
    /// Fuel per call (about one unit per wasm instruction).
    pub fuel: u64,
    /// Linear memory cap in bytes.
    pub memory: u64,
    /// Wall-clock limit per call.
    #[serde(rename = "timeout_ms", serialize_with = "as_millis")]
    pub timeout: Duration,
    /// Dbs the plugin may read with `host.query`.
    pub grants: Vec<String>,
    /// Dbs the plugin may write with `host.execute` (in the run's transaction).
    pub write_grants: Vec<String>,
    #[serde(serialize_with = "as_text")]
    pub on_error: OnError,
    /// `config.KEY=VALUE` pairs handed to every call.
    pub config: Vec<(String, String)>,
    /// Rows a `host.query` may return.
    #[serde(rename = "query_rows")]
    pub query_row_cap: u64,
    /// Conflict handlers: hand each version's current row (and the base).
    /// Off for handlers that decide on change times and dbs alone: then
    /// every version says `update` with no row, and no rows are read.
    pub rows: bool,
    /// Tables (`schema.name`) the plugin's role may SELECT on granted dbs.
    pub tables: Vec<String>,
    /// Tables it may also INSERT, UPDATE and DELETE on write-granted dbs.
    pub write_tables: Vec<String>,
    /// `execute` statements per run.
    pub max_statements: u64,
    /// Bytes of `log` output per call.
    pub log_bytes: u64,
    /// WebAssembly table elements (function references) per instance.
    pub table_elements: u64,
    /// Fuel for all of a run's calls together.
    pub run_fuel: u64,
}

/// A table named in a manifest: `schema.name`, or `name` in schema public.
pub fn table_name(typed: &str) -> crate::pg::QualifiedName {
    match typed.split_once('.') {
        Some((schema, name)) => crate::pg::QualifiedName::new(schema, name),
        None => crate::pg::QualifiedName::new("public", typed),
    }
}

impl Manifest {
    pub fn defaults(kind: PluginKind) -> Manifest {
        Manifest {
            kind,
            fuel: 2_000_000_000,
            memory: 64 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            grants: Vec::new(),
            write_grants: Vec::new(),
            on_error: OnError::Abort,
            config: Vec::new(),
            query_row_cap: 10_000,
            rows: true,
            tables: Vec::new(),
            write_tables: Vec::new(),
            max_statements: 1000,
            log_bytes: 64 * 1024,
            table_elements: 100_000,
            run_fuel: 50_000_000_000,
        }
    }

    pub const KEYS: &'static [&'static str] = &[
        "kind",
        "fuel",
        "run_fuel",
        "memory",
        "table_elements",
        "timeout",
        "grant",
        "write",
        "tables",
        "write_tables",
        "on_error",
        "query_rows",
        "max_statements",
        "log_bytes",
        "rows",
        "config.KEY",
    ];

    /// Sets one key from its text form (`config.X` keys included).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let count = |what: &str| {
            value
                .replace('_', "")
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::usage(format!("bad {what} {value:?}: use a whole number above zero")))
        };
        match key {
            "kind" => self.kind = value.parse()?,
            "fuel" => self.fuel = count("fuel")?,
            "memory" => self.memory = parse_bytes(value)?,
            "timeout" => {
                self.timeout = crate::catalog::sync::parse_duration("timeout", value)?
                    .ok_or_else(|| Error::usage("timeout must be longer than zero"))?
            }
            "grant" => self.grants = list(value),
            "write" => self.write_grants = list(value),
            "on_error" => self.on_error = value.parse()?,
            "query_rows" => self.query_row_cap = count("query_rows")?,
            "run_fuel" => self.run_fuel = count("run_fuel")?,
            "table_elements" => self.table_elements = count("table_elements")?,
            "max_statements" => self.max_statements = count("max_statements")?,
            "log_bytes" => self.log_bytes = parse_bytes(value)?,
            "tables" => self.tables = list(value),
            "write_tables" => self.write_tables = list(value),
            "rows" => self.rows = crate::catalog::sync::parse_bool("rows", value)?,
            other => match other.strip_prefix("config.") {
                Some(name) if !name.is_empty() => {
                    self.config.retain(|(k, _)| k != name);
                    self.config.push((name.to_string(), value.to_string()));
                }
                _ => {
                    return Err(Error::usage(format!("unknown plugin key {other:?}: use {}", Self::KEYS.join(", "))));
                }
            },
        }
        if let OnError::Fallback(_) = self.on_error
            && self.kind != PluginKind::ConflictHandler
        {
            return Err(Error::usage("on_error=fallback applies to conflict handlers only: use on_error=abort"));
        }
        Ok(())
    }
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// `64MiB`, `512KiB`, `1GiB`, `100000000`.
fn parse_bytes(value: &str) -> Result<u64> {
    let v = value.trim();
    let (number, unit) = v.find(|c: char| !c.is_ascii_digit()).map_or((v, ""), |i| v.split_at(i));
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if scale > 0 && n > 0 => Ok(n.saturating_mul(scale)),
        _ => Err(Error::usage(format!("bad memory {value:?}: write e.g. 64MiB, 512KiB or a number of bytes"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys() {
        let mut m = Manifest::defaults(PluginKind::ConflictHandler);
        m.set("memory", "16MiB").unwrap();
        m.set("on_error", "fallback=latest").unwrap();
        m.set("config.columns", "balance,stock").unwrap();
        m.set("grant", "a, b").unwrap();
        assert_eq!(m.memory, 16 * 1024 * 1024);
        assert_eq!(m.on_error, OnError::Fallback(ConflictStrategy::Latest));
        assert_eq!(m.grants, vec!["a", "b"]);
        assert!(m.set("memory", "lots").is_err());
        assert!(m.set("colour", "red").is_err());
        let mut t = Manifest::defaults(PluginKind::RowTransform);
        assert!(t.set("on_error", "fallback=latest").is_err());
    }
}
