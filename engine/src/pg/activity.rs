//! What ibex's sessions are doing on a server right now: `pg_stat_activity`
//! joined with `pg_stat_progress_copy` (PostgreSQL 14 and later), found by
//! their application name. `ibex status SYNC` shows it for a running sync.
//! A KID also names its own backends here, and ends those it dropped.

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

/// One backend, named so that a later reuse of its process id is not
/// taken for it: the pid and the start of its session (as text, in the
/// UTC every ibex session pins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub pid: i32,
    pub started: String,
}

/// The caller's own backend, from a session's setup statements: ends the
/// `statements` with the query that names it and runs all in one round trip
/// (errors name db `db`).
pub async fn setup_and_name(client: &tokio_postgres::Client, statements: &str, db: &str) -> Result<Backend> {
    let messages = client
        .simple_query(&format!(
            "{statements}; SELECT pid::text, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ))
        .await
        .ctx(|| format!("setting up the connection to db {db}"))?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some(Backend { pid: row.get(0)?.parse().ok()?, started: row.get(1)?.to_string() })
            }
            _ => None,
        })
        .ok_or_else(|| {
            crate::error::Error::Sync(format!("db {db}: the session's own row is missing from pg_stat_activity"))
        })
}

/// Ends (`pg_terminate_backend`) those of `backends` that still run; the
/// pids it ended. A backend whose client vanished without a word (a run
/// dropped by run_timeout behind a dead path) lives on until the server
/// notices, holding its transaction's locks; this frees them at once.
/// Needs membership in the backends' role, which ibex's own role has.
pub async fn end_backends(c: &impl GenericClient, backends: &[Backend]) -> Result<Vec<i32>> {
    let pids: Vec<i32> = backends.iter().map(|b| b.pid).collect();
    let started: Vec<&str> = backends.iter().map(|b| b.started.as_str()).collect();
    let rows = c
        .query(
            // Only the listed pids are ever passed to pg_terminate_backend,
            // and CASE fixes the order: the identity check first. (A filter
            // on pg_stat_activity itself may be evaluated on every backend
            // before a join narrows it.)
            "SELECT b.pid FROM unnest($1::int4[], $2::text[]) AS b (pid, started)
              WHERE CASE WHEN b.pid <> pg_backend_pid()
                              AND EXISTS (SELECT 1 FROM pg_stat_activity a
                                           WHERE a.pid = b.pid AND a.backend_start::text = b.started)
                         THEN pg_terminate_backend(b.pid) ELSE false END",
            &[&pids, &started],
        )
        .await
        .ctx(|| "ending the backends of dropped connections".into())?;
    rows.iter()
        .map(|r| {
            r.try_get(0).map_err(|e| crate::error::Error::Postgres { context: "reading ended pids".into(), source: e })
        })
        .collect()
}
