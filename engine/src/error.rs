//! The library's error type. Callers match on the variant to tell bad input
//! from a missing object, a refused change or a database failure; the message
//! always names the problem and, where there is one, the fix.

use std::fmt;

use tokio_postgres::error::SqlState;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something malformed (unknown key, bad value, wrong arity).
    #[error("{0}")]
    Usage(String),

    /// A named object is not in the catalog (or not in a database).
    #[error("{kind} \"{name}\" does not exist{hint}")]
    NotFound { kind: &'static str, name: String, hint: Hint },

    /// A named object exists already.
    #[error("{kind} \"{name}\" already exists{hint}")]
    Duplicate { kind: &'static str, name: String, hint: Hint },

    /// The change is refused because something depends on the object.
    #[error("{0}")]
    Refused(String),

    /// A database could not be reached or refused the login.
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },

    /// A statement failed; `context` says what ibex was doing.
    #[error("{context}: {}", describe_pg(.source))]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The control catalog is missing or at another schema version.
    #[error("{0}")]
    Catalog(String),

    /// ibex.toml or the environment is wrong.
    #[error("{0}")]
    Config(String),

    /// A table is not fit for replication (no key, different columns...).
    #[error("{0}")]
    Schema(String),

    /// A sync run failed; the message names the sync, database and table.
    #[error("{0}")]
    Sync(String),

    /// A WebAssembly plugin failed or cannot be used; the message names it.
    #[error("{message}")]
    Plugin { failure: PluginFailure, message: String },

    /// A sync hook asked to skip this run: nothing applied, changes wait.
    #[error("{0}")]
    Skipped(String),

    /// A `ddl=pause` sync with several sources holds every table while one
    /// differs between dbs: nothing applied, changes wait (`sync/pause.rs`).
    #[error("{0}")]
    Paused(String),

    /// A table's columns changed on a db since the sync checked them: the
    /// run is rolled back and the tables checked again.
    #[error("{0}")]
    SchemaChanged(String),

    /// This process no longer holds the sync's lease: another daemon took
    /// it over, so nothing of this run may commit (see `daemon/lease.rs`).
    #[error("{0}")]
    Fenced(String),
}

/// What kind of failure an error is: what a caller (retry logic, the CLI's
/// exit code, `--json` error objects) acts on, without reading its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed input: fix the command.
    Usage,
    /// A named object does not exist.
    NotFound,
    /// Refused: it exists already, something depends on it, or it is not allowed.
    Refused,
    /// ibex.toml, the environment or a setting is wrong.
    Config,
    /// A database cannot be reached (or the connection dropped).
    Down,
    /// Retrying can succeed: serialization failure, deadlock, lock timeout.
    Retryable,
    /// Tables do not fit replication (drift, no key, missing table).
    Schema,
    /// A plugin failed, hit a limit, or was refused something.
    Plugin,
    /// The control catalog is missing or at another version.
    Catalog,
    /// Anything else a run or a statement failed with.
    Failed,
}

impl ErrorKind {
    /// The process exit code for this kind (2 is clap's own for bad usage).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Refused => 4,
            ErrorKind::Config => 5,
            ErrorKind::Down => 6,
            ErrorKind::Retryable => 7,
            ErrorKind::Schema => 8,
            ErrorKind::Plugin => 9,
            ErrorKind::Catalog => 10,
        }
    }
}

/// How a plugin failed: what an operator (and `--json`) acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginFailure {
    /// It ran into one of its limits (fuel, time, memory, table, rows,
    /// statements, log bytes): raise the limit or fix the plugin.
    Limit,
    /// It trapped (a panic, an unreachable, a bad memory access).
    Trap,
    /// It was refused something it asked for (a db or table not granted,
    /// a statement ibex does not run) and gave up.
    Denied,
    /// Its answer cannot be applied (wrong shape, unknown db, a changed key).
    Answer,
    /// It returned an error of its own.
    Error,
    /// It cannot be loaded or run at all (not a component, wrong world,
    /// altered bytes, not loaded for the sync).
    Unusable,
}

/// Why a plugin call failed: the kind, and the sentence that says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCause {
    pub failure: PluginFailure,
    pub message: String,
}

impl PluginCause {
    pub fn new(failure: PluginFailure, message: impl Into<String>) -> Self {
        PluginCause { failure, message: message.into() }
    }
}

impl fmt::Display for PluginCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// An optional trailing sentence of advice, printed after a `: `-free message.
#[derive(Debug, Default, Clone)]
pub struct Hint(pub Option<String>);

impl Hint {
    pub fn none() -> Self {
        Hint(None)
    }
    pub fn new(text: impl Into<String>) -> Self {
        Hint(Some(text.into()))
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(text) => write!(f, "; {text}"),
            None => Ok(()),
        }
    }
}

impl Error {
    /// A plugin error of `failure`'s kind.
    pub fn plugin(failure: PluginFailure, message: impl Into<String>) -> Self {
        Error::Plugin { failure, message: message.into() }
    }

    /// A plugin that cannot be loaded or run at all.
    pub fn plugin_unusable(message: impl Into<String>) -> Self {
        Error::plugin(PluginFailure::Unusable, message)
    }

    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound { kind, name: name.into(), hint: Hint::none() }
    }

    pub fn not_found_hint(kind: &'static str, name: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::NotFound { kind, name: name.into(), hint: Hint::new(hint) }
    }

    pub fn duplicate(kind: &'static str, name: impl Into<String>) -> Self {
        Error::Duplicate { kind, name: name.into(), hint: Hint::none() }
    }

    pub fn duplicate_hint(kind: &'static str, name: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Duplicate { kind, name: name.into(), hint: Hint::new(hint) }
    }

    /// The SQLSTATE of a failed statement, if this is one.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Postgres { source, .. } => source.code(),
            _ => None,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) => ErrorKind::Usage,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Duplicate { .. } | Error::Refused(_) | Error::Skipped(_) | Error::Fenced(_) => ErrorKind::Refused,
            Error::Connect { .. } => ErrorKind::Down,
            Error::Postgres { source, .. } => match source.code() {
                // No SQLSTATE: the client lost the connection (I/O, closed),
                // or it could not even send the statement (a bug of ours).
                None if source.is_closed()
                    || std::error::Error::source(source).is_some_and(|s| s.is::<std::io::Error>()) =>
                {
                    ErrorKind::Down
                }
                None => ErrorKind::Failed,
                // 08: connection exceptions; 57P0x: the server is shutting down or ended the session.
                Some(code) if code.code().starts_with("08") || code.code().starts_with("57P0") => ErrorKind::Down,
                Some(_) if self.is_transient() => ErrorKind::Retryable,
                Some(_) if self.is_fenced() => ErrorKind::Refused,
                Some(_) => ErrorKind::Failed,
            },
            Error::Catalog(_) => ErrorKind::Catalog,
            Error::Config(_) => ErrorKind::Config,
            Error::Schema(_) | Error::SchemaChanged(_) | Error::Paused(_) => ErrorKind::Schema,
            Error::Sync(_) => ErrorKind::Failed,
            Error::Plugin { .. } => ErrorKind::Plugin,
        }
    }

    /// True when a newer holder of the sync's lease has run it: this
    /// process must stop running it (a run refused by `ibex.fence()` on a
    /// db, SQLSTATE IBXFN, or a cursor advance refused by the same check).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Fenced(_)) || self.sqlstate().is_some_and(|c| c.code() == FENCED_SQLSTATE)
    }

    /// True when retrying the whole cycle can succeed: serialization
    /// failures, deadlocks and lock timeouts.
    pub fn is_transient(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(
            self.sqlstate(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE
        )
    }
}

/// What `ibex.fence()` raises on a db (see `capture/sql.rs`).
pub const FENCED_SQLSTATE: &str = "IBXFN";

/// One line for a PostgreSQL error: the server's message with its detail and
/// hint, or the client-side cause (closed connection, I/O).
pub fn describe_pg(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        if let Some(place) = db.where_() {
            text.push_str(&format!("; raised in {}", place.replace('\n', ", ")));
            // A name a user's function (a trigger on ibex's writes) could
            // not find under ibex's path; plugins' functions have their own.
            let missing = [SqlState::UNDEFINED_TABLE, SqlState::UNDEFINED_FUNCTION, SqlState::UNDEFINED_OBJECT];
            if missing.contains(db.code()) && !place.contains(crate::plugin::roles::SCHEMA) {
                text.push_str(&format!(
                    "; a function that runs in ibex's session (a trigger on ibex's writes, an event trigger on its DDL) finds names under search_path {}, as in PostgreSQL's replication workers: qualify the names it uses, or give it a path of its own (ALTER FUNCTION ... SET search_path = public)",
                    crate::pg::session::IBEX_SEARCH_PATH
                ));
            }
        }
        return text;
    }
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Adds "what ibex was doing" to a tokio-postgres error.
pub trait PgContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> PgContext<T> for std::result::Result<T, tokio_postgres::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Postgres { context: context(), source })
    }
}
