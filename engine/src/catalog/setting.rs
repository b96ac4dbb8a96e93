//! `ibex.setting`: key/value settings read by the daemon (`ibex set`,
//! `ibex show`). Only known keys are accepted; each has a default.

use serde::Serialize;
use tokio_postgres::GenericClient;

use super::sync::{parse_bool, parse_duration};
use crate::error::{Error, PgContext, Result};

#[derive(Debug, Clone, Copy)]
enum Kind {
    LogLevel,
    Duration,
    Count { max: i64 },
    Bool,
}

struct Known {
    key: &'static str,
    default: &'static str,
    kind: Kind,
    about: &'static str,
}

const KNOWN: &[Known] = &[
    Known {
        key: "log_level",
        default: "normal",
        kind: Kind::LogLevel,
        about: "terse, normal, verbose or debug; the daemon applies it on reload",
    },
    Known {
        key: "vac_interval",
        default: "60s",
        kind: Kind::Duration,
        about: "how often the VAC purges applied delta rows",
    },
    Known {
        key: "run_timeout",
        default: "30m",
        kind: Kind::Duration,
        about: "a run taking longer is cancelled and rolled back",
    },
    Known {
        key: "retry_limit",
        default: "10",
        kind: Kind::Count { max: 1000 },
        about: "attempts per run after serialization failures or lock timeouts",
    },
    Known {
        key: "conflict_log_limit",
        default: "1000",
        kind: Kind::Count { max: 1_000_000 },
        about: "conflicts kept per run in the catalog",
    },
    Known {
        key: "chunk_keys",
        default: "50000",
        kind: Kind::Count { max: 10_000_000 },
        about: "changed keys handled per step of a multi-master merge; bounds memory",
    },
    Known {
        key: "merge_memory_mib",
        default: "64",
        kind: Kind::Count { max: 1_048_576 },
        about: "MiB of the winners' rows a step of a multi-master merge holds in memory to copy them to every db at once; the rest goes to temporary files in TMPDIR",
    },
    Known {
        key: "max_parallel_runs",
        default: "8",
        kind: Kind::Count { max: 1000 },
        about: "sync runs the daemon does at once (each holds a connection per db); raising it applies on reload, lowering on restart",
    },
    Known {
        key: "window_rows",
        default: "1000000",
        kind: Kind::Count { max: 1_000_000_000 },
        about: "delta rows one run takes from a source; a larger backlog is applied in consecutive runs, each committed (halved automatically after a run outlasts run_timeout)",
    },
    Known {
        key: "lease_ttl",
        default: "10s",
        kind: Kind::Duration,
        about: "how long a daemon's lease on a sync lasts unrenewed; another daemon takes the sync over after it (see `ibex list daemons`)",
    },
    Known { key: "analyze_after_copy", default: "true", kind: Kind::Bool, about: "ANALYZE tables after a full copy" },
];

#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub default: String,
    pub is_default: bool,
    pub about: String,
}

fn known(key: &str) -> Result<&'static Known> {
    KNOWN.iter().find(|k| k.key == key).ok_or_else(|| {
        let keys: Vec<&str> = KNOWN.iter().map(|k| k.key).collect();
        Error::usage(format!("unknown setting {key:?}: use one of {}", keys.join(", ")))
    })
}

/// Checks a value and returns its normal form.
pub fn normalize(key: &str, value: &str) -> Result<String> {
    let k = known(key)?;
    match k.kind {
        Kind::LogLevel => match value {
            "terse" | "normal" | "verbose" | "debug" => Ok(value.to_string()),
            _ => Err(Error::usage(format!("bad log_level {value:?}: use terse, normal, verbose or debug"))),
        },
        Kind::Duration => match parse_duration(key, value)? {
            Some(d) => Ok(humantime::format_duration(d).to_string()),
            None => Err(Error::usage(format!("{key} must be longer than zero"))),
        },
        Kind::Count { max } => match value.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n.to_string()),
            _ => Err(Error::usage(format!("bad {key} {value:?}: use a whole number from 1 to {max}"))),
        },
        Kind::Bool => parse_bool(key, value).map(|b| b.to_string()),
    }
}

pub async fn set(c: &impl GenericClient, key: &str, value: &str) -> Result<String> {
    let value = normalize(key, value)?;
    c.execute(
        "INSERT INTO ibex.setting (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()",
        &[&key, &value],
    )
    .await
    .ctx(|| format!("setting {key}"))?;
    Ok(value)
}

pub async fn get(c: &impl GenericClient, key: &str) -> Result<Setting> {
    let k = known(key)?;
    let row = c
        .query_opt("SELECT value FROM ibex.setting WHERE key = $1", &[&key])
        .await
        .ctx(|| format!("reading setting {key}"))?;
    let stored: Option<String> = row.map(|r| r.get(0));
    Ok(Setting {
        key: k.key.to_string(),
        is_default: stored.is_none(),
        value: stored.unwrap_or_else(|| k.default.to_string()),
        default: k.default.to_string(),
        about: k.about.to_string(),
    })
}

pub async fn all(c: &impl GenericClient) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    for k in KNOWN {
        out.push(get(c, k.key).await?);
    }
    Ok(out)
}
