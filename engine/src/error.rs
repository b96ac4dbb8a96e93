//! The library's error type. Callers match on the variant to tell bad input
//! from a missing object, a refused change or a database failure; the message
//! always names the problem and, where there is one, the fix.

use std::fmt;

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
    #[error("{0}")]
    Plugin(String),

    /// A sync hook asked to skip this run: nothing applied, changes wait.
    #[error("{0}")]
    Skipped(String),
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
