//! `ibex.run` and `ibex.conflict`: the history of sync runs (what `ibex
//! status` shows) and the conflicts each run settled.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, ErrorKind, PgContext, PluginFailure, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Good,
    Bad,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Good => "good",
            RunState::Bad => "bad",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "good" => RunState::Good,
            "bad" => RunState::Bad,
            _ => RunState::Running,
        }
    }
}

/// Rows a run changed in one table on one db.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableCounts {
    pub table: String,
    pub db: String,
    pub deleted: i64,
    pub inserted: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub sync: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub state: RunState,
    pub inserted: i64,
    pub deleted: i64,
    pub conflicts: i64,
    pub attempts: i32,
    pub tables: Vec<TableCounts>,
    pub error: Option<String>,
    /// Delta rows this run read, when it applied part of a larger window.
    pub window_rows: Option<i64>,
    /// Delta rows still pending after it (catching up); None when it applied all.
    pub backlog: Option<i64>,
    /// Seconds per phase (begin, probe, full_copy, apply, merge, sequences, commit, cursors).
    pub phases: Vec<(String, f64)>,
    /// A failed run's kind of error (see `ErrorKind`), and how a plugin failed.
    pub error_kind: Option<ErrorKind>,
    pub plugin_failure: Option<PluginFailure>,
}

impl RunRecord {
    fn from_row(row: &Row) -> Self {
        let tables: serde_json::Value = row.get("tables");
        RunRecord {
            id: row.get("id"),
            sync: row.get("sync"),
            started_at: row.get("started_at"),
            ended_at: row.get("ended_at"),
            state: RunState::parse(row.get("state")),
            inserted: row.get("inserted"),
            deleted: row.get("deleted"),
            conflicts: row.get("conflicts"),
            attempts: row.get("attempts"),
            tables: serde_json::from_value(tables).unwrap_or_else(|err| {
                // A run's counts are history, not state: say so, show none.
                tracing::warn!(run = row.get::<_, i64>("id"), error = %err, "unreadable table counts in the catalog");
                Vec::new()
            }),
            error: row.get("error"),
            window_rows: row.get("window_rows"),
            backlog: row.get("backlog"),
            phases: serde_json::from_value(row.get("phases")).unwrap_or_else(|err| {
                tracing::warn!(run = row.get::<_, i64>("id"), error = %err, "unreadable phase timings in the catalog");
                Vec::new()
            }),
            error_kind: row
                .get::<_, Option<String>>("error_kind")
                .and_then(|k| serde_json::from_value(serde_json::Value::String(k)).ok()),
            plugin_failure: row
                .get::<_, Option<String>>("plugin_failure")
                .and_then(|k| serde_json::from_value(serde_json::Value::String(k)).ok()),
        }
    }

    /// Wall time of the run so far or in all.
    pub fn duration(&self) -> chrono::Duration {
        self.ended_at.unwrap_or_else(Utc::now) - self.started_at
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConflictRecord {
    pub table: String,
    pub key: String,
    pub dbs: Vec<String>,
    pub winner: Option<String>,
    pub reason: String,
}

const SELECT: &str = "SELECT id, sync, started_at, ended_at, state, inserted, deleted, conflicts, attempts, tables, error, window_rows, backlog, phases, error_kind, plugin_failure FROM ibex.run";

pub async fn start(c: &impl GenericClient, sync: &str, started_at: DateTime<Utc>) -> Result<i64> {
    let row = c
        // Typed, here and in `finish`: one round trip each, no prepare, as
        // they come between one run and the next.
        .query_typed_one(
            "INSERT INTO ibex.run (sync, started_at, state) VALUES ($1, $2, 'running') RETURNING id",
            &[(&sync, Type::TEXT), (&started_at, Type::TIMESTAMPTZ)],
        )
        .await
        .ctx(|| format!("recording the start of a run of sync {sync:?}"))?;
    Ok(row.get(0))
}

/// A serde enum's name as text (its JSON string), for a text column.
fn as_text<T: Serialize>(value: &Option<T>) -> Option<String> {
    value.as_ref().and_then(|v| serde_json::to_value(v).ok()).and_then(|v| v.as_str().map(str::to_string))
}

pub async fn finish(c: &impl GenericClient, run: &RunRecord, conflicts: &[ConflictRecord]) -> Result<()> {
    let tables = serde_json::to_value(&run.tables)
        .map_err(|err| Error::Catalog(format!("cannot record table counts: {err}")))?;
    let phases = serde_json::to_value(&run.phases)
        .map_err(|err| Error::Catalog(format!("cannot record phase timings: {err}")))?;
    c.execute_typed(
        "UPDATE ibex.run SET ended_at = $2, state = $3, inserted = $4, deleted = $5, conflicts = $6,
                attempts = $7, tables = $8, error = $9, window_rows = $10, backlog = $11, phases = $12,
                error_kind = $13, plugin_failure = $14
          WHERE id = $1",
        &[
            (&run.id, Type::INT8),
            (&run.ended_at, Type::TIMESTAMPTZ),
            (&run.state.as_str(), Type::TEXT),
            (&run.inserted, Type::INT8),
            (&run.deleted, Type::INT8),
            (&run.conflicts, Type::INT8),
            (&run.attempts, Type::INT4),
            (&tables, Type::JSONB),
            (&run.error, Type::TEXT),
            (&run.window_rows, Type::INT8),
            (&run.backlog, Type::INT8),
            (&phases, Type::JSONB),
            (&as_text(&run.error_kind), Type::TEXT),
            (&as_text(&run.plugin_failure), Type::TEXT),
        ],
    )
    .await
    .ctx(|| format!("recording the end of run {}", run.id))?;
    if conflicts.is_empty() {
        return Ok(());
    }
    // One statement for all of them: a thousand single INSERTs took 0.37 s
    // after a run with many conflicts, delaying the daemon's next run.
    let column = |f: fn(&ConflictRecord) -> Option<&str>| conflicts.iter().map(f).collect::<Vec<Option<&str>>>();
    let dbs: Vec<serde_json::Value> = conflicts.iter().map(|c| serde_json::json!(c.dbs)).collect();
    c.execute_typed(
        "INSERT INTO ibex.conflict (run_id, table_name, key, dbs, winner, reason)
         SELECT $1, u.t, u.k, ARRAY(SELECT jsonb_array_elements_text(u.d)), u.w, u.r
           FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[]) WITH ORDINALITY AS u(t, k, d, w, r, n)
          ORDER BY u.n",
        &[
            (&run.id, Type::INT8),
            (&column(|c| Some(&c.table)), Type::TEXT_ARRAY),
            (&column(|c| Some(&c.key)), Type::TEXT_ARRAY),
            (&dbs, Type::JSONB_ARRAY),
            (&column(|c| c.winner.as_deref()), Type::TEXT_ARRAY),
            (&column(|c| Some(&c.reason)), Type::TEXT_ARRAY),
        ],
    )
    .await
    .ctx(|| format!("recording conflicts of run {}", run.id))?;
    Ok(())
}

pub async fn get(c: &impl GenericClient, id: i64) -> Result<RunRecord> {
    let row = c
        .query_opt(&format!("{SELECT} WHERE id = $1"), &[&id])
        .await
        .ctx(|| format!("reading run {id}"))?
        .ok_or_else(|| Error::not_found("run", id.to_string()))?;
    Ok(RunRecord::from_row(&row))
}

/// The newest run of a sync in the given state.
pub async fn last(c: &impl GenericClient, sync: &str, state: RunState) -> Result<Option<RunRecord>> {
    let row = c
        .query_opt(
            &format!("{SELECT} WHERE sync = $1 AND state = $2 ORDER BY started_at DESC, id DESC LIMIT 1"),
            &[&sync, &state.as_str()],
        )
        .await
        .ctx(|| format!("reading the runs of sync {sync:?}"))?;
    Ok(row.as_ref().map(RunRecord::from_row))
}

pub async fn conflicts(c: &impl GenericClient, run_id: i64) -> Result<Vec<ConflictRecord>> {
    let rows = c
        .query(
            "SELECT table_name, key, dbs, winner, reason FROM ibex.conflict WHERE run_id = $1 ORDER BY table_name, key",
            &[&run_id],
        )
        .await
        .ctx(|| format!("reading the conflicts of run {run_id}"))?;
    Ok(rows
        .iter()
        .map(|r| ConflictRecord { table: r.get(0), key: r.get(1), dbs: r.get(2), winner: r.get(3), reason: r.get(4) })
        .collect())
}
