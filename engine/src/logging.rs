//! Logging through `tracing`, with Bucardo's levels: terse (warnings and
//! errors), normal (one line per run and lifecycle events), verbose (each
//! step of a run with its timing), debug (everything, SQL included).

use std::path::Path;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Terse,
    Normal,
    Verbose,
    Debug,
}

impl LogLevel {
    fn filter(self) -> &'static str {
        match self {
            LogLevel::Terse => "warn",
            LogLevel::Normal => "info,tokio_postgres=warn",
            LogLevel::Verbose => "debug,tokio_postgres=info",
            LogLevel::Debug => "trace",
        }
    }
}

impl FromStr for LogLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "terse" => Ok(LogLevel::Terse),
            "normal" => Ok(LogLevel::Normal),
            "verbose" => Ok(LogLevel::Verbose),
            "debug" => Ok(LogLevel::Debug),
            other => Err(Error::usage(format!("bad log level {other:?}: use terse, normal, verbose or debug"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

impl FromStr for LogFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "plain" | "text" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            other => Err(Error::usage(format!("bad log format {other:?}: use plain or json"))),
        }
    }
}

/// Changes the level of a running process (the daemon, on reload).
#[derive(Clone)]
pub struct LevelHandle(reload::Handle<EnvFilter, tracing_subscriber::Registry>);

impl LevelHandle {
    /// Sets the level, unless `IBEX_LOG` chose the filter (it overrides
    /// the catalog's log_level for as long as the process runs).
    pub fn set(&self, level: LogLevel) {
        if std::env::var_os("IBEX_LOG").is_some() {
            return;
        }
        if let Err(err) = self.0.modify(|f| *f = EnvFilter::new(level.filter())) {
            tracing::warn!(error = %err, "cannot change the log level");
        }
    }
}

/// Whether stderr goes to systemd's journal (or another log systemd keeps),
/// which stamps each line itself.
fn under_systemd() -> bool {
    ["JOURNAL_STREAM", "INVOCATION_ID"].iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Installs the global subscriber: stderr or a file (appended), plain or
/// JSON lines. `IBEX_LOG` (an EnvFilter) overrides the level for debugging.
/// Plain lines on stderr under systemd carry no timestamp: journald adds one.
pub fn init(level: LogLevel, format: LogFormat, file: Option<&Path>) -> Result<LevelHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = std::env::var("IBEX_LOG").map(EnvFilter::new).unwrap_or_else(|_| EnvFilter::new(level.filter()));
    let (filter, handle) = reload::Layer::new(filter);
    let writer: tracing_subscriber::fmt::writer::BoxMakeWriter = match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::Config(format!("cannot open log file {}: {e}", path.display())))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let plain = tracing_subscriber::fmt::layer().with_target(false).with_ansi(false);
    let result = match format {
        LogFormat::Plain if file.is_none() && under_systemd() => {
            registry.with(plain.with_writer(writer).without_time()).try_init()
        }
        LogFormat::Plain => registry.with(plain.with_writer(writer)).try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer).with_target(false).flatten_event(true))
            .try_init(),
    };
    result.map_err(|e| Error::Config(format!("cannot start logging: {e}")))?;
    Ok(LevelHandle(handle))
}
