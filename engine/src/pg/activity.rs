//! What ibex's sessions are doing on a server right now: `pg_stat_activity`
//! joined with `pg_stat_progress_copy` (PostgreSQL 14 and later), found by
//! their application name. `ibex status SYNC` shows it for a running sync.

use serde::Serialize;
use tokio_postgres::GenericClient;

use super::version::Capabilities;
use crate::error::{PgContext, Result};

/// One backend of an ibex session.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    pub pid: i32,
    /// `active`, `idle in transaction`, ...
    pub state: Option<String>,
    /// Seconds since its transaction began.
    pub transaction_seconds: Option<f64>,
    /// What it waits for (`Lock/relation`, `IO/DataFileRead`), if anything.
    pub waiting_on: Option<String>,
    /// The start of its current statement.
    pub statement: Option<String>,
    /// A COPY in progress: its direction and table, rows and bytes so far.
    pub copy: Option<CopyProgress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyProgress {
    /// `COPY FROM` or `COPY TO`.
    pub command: String,
    pub table: Option<String>,
    pub rows: i64,
    pub bytes: i64,
}

impl Activity {
    /// One line for people: "COPY FROM public.acct: 120000 rows, 14 MB".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.copy {
            Some(c) => parts.push(format!(
                "{} {}: {} rows, {} MB",
                c.command,
                c.table.as_deref().unwrap_or("(a query)"),
                c.rows,
                c.bytes / 1_000_000
            )),
            None => parts.push(self.statement.clone().unwrap_or_else(|| "(no statement)".into())),
        }
        if let Some(state) = &self.state {
            parts.push(state.clone());
        }
        if let Some(wait) = &self.waiting_on {
            parts.push(format!("waiting on {wait}"));
        }
        if let Some(secs) = self.transaction_seconds {
            parts.push(format!("in its transaction for {secs:.1}s"));
        }
        parts.join(", ")
    }
}

/// The backends whose application name is `application_name` (other than
/// the caller's own).
pub async fn sessions(c: &impl GenericClient, caps: &Capabilities, application_name: &str) -> Result<Vec<Activity>> {
    let progress = caps.version_num >= 140_000;
    let (copy_columns, copy_join) = if progress {
        (
            "p.command, p.relid::regclass::text, p.tuples_processed, p.bytes_processed",
            "LEFT JOIN pg_stat_progress_copy p ON p.pid = a.pid",
        )
    } else {
        ("NULL::text, NULL::text, NULL::int8, NULL::int8", "")
    };
    let sql = format!(
        "SELECT a.pid, a.state, extract(epoch FROM clock_timestamp() - a.xact_start)::float8,
                a.wait_event_type || '/' || a.wait_event, left(a.query, 120), {copy_columns}
           FROM pg_stat_activity a {copy_join}
          WHERE a.application_name = $1 AND a.pid <> pg_backend_pid()
          ORDER BY a.pid"
    );
    let rows = c.query(&sql, &[&application_name]).await.ctx(|| "reading pg_stat_activity".into())?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let read = |e| crate::error::Error::Postgres { context: "reading pg_stat_activity".into(), source: e };
        let command: Option<String> = row.try_get(5).map_err(read)?;
        out.push(Activity {
            pid: row.try_get(0).map_err(read)?,
            state: row.try_get(1).map_err(read)?,
            transaction_seconds: row.try_get(2).map_err(read)?,
            waiting_on: row.try_get(3).map_err(read)?,
            statement: row.try_get(4).map_err(read)?,
            copy: match command {
                Some(command) => Some(CopyProgress {
                    command,
                    table: row.try_get(6).map_err(read)?,
                    rows: row.try_get::<_, Option<i64>>(7).map_err(read)?.unwrap_or(0),
                    bytes: row.try_get::<_, Option<i64>>(8).map_err(read)?.unwrap_or(0),
                }),
                None => None,
            },
        });
    }
    Ok(out)
}
