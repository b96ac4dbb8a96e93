//! `ddl=pause` (and `ddl=addcol` for what it cannot add): a table whose
//! columns differ between the sync's dbs is held back while capture goes
//! on, and resumes by itself once they match (the KID checks again when a
//! run finds the columns changed, and every `RECHECK` while anything is
//! held).
//!
//! With one source only the drifted table waits: the others run and the
//! cursor moves on, so the held table's changes are not applied one by
//! one. Instead the source records, before any run leaves the table out,
//! that it is to be copied whole (`ibex.resync`) at the first run that
//! applies it again, in that run's transaction: nothing is lost, and a
//! crash at any point leaves the record in place. With several sources a
//! whole copy from one master would overwrite the others' changes, so the
//! whole sync waits with its cursors where they are and applies every
//! change in order once the table matches.

use std::time::Duration;

use tokio_postgres::Client;

use super::plan::Plan;
use super::validate::Drift;
use crate::capture;
use crate::catalog::paused::PausedTable;
use crate::error::Result;

/// How often a sync that holds something back checks its tables again.
pub const RECHECK: Duration = Duration::from_secs(5);

/// What waits for these differences. On one source the whole-table copies
/// are recorded there first (see the module comment).
pub async fn hold(plan: &Plan, clients: &[&Client], drift: &[Drift]) -> Result<Vec<PausedTable>> {
    let whole_sync = plan.sources().count() > 1;
    let mut held = Vec::with_capacity(drift.len());
    for d in drift {
        let reason = d.problems.join("; ");
        if !whole_sync {
            let source = plan.primary_source();
            let why = format!("held back by ddl={}: {reason}", plan.sync.params.ddl.as_str());
            capture::schedule_resync(clients[source.index()], &plan.sync.name, &d.table, &why).await?;
        }
        held.push(PausedTable { table: d.table.to_string(), reason, whole_sync, since: None });
    }
    Ok(held)
}

/// Says what started and stopped waiting since the last check.
pub fn log_changes(sync: &str, before: &[PausedTable], now: &[PausedTable]) {
    for p in now.iter().filter(|p| !before.iter().any(|b| b.table == p.table)) {
        if p.whole_sync {
            tracing::warn!(sync, table = %p.table, reason = %p.reason, "paused: the sync applies nothing (it has several sources) until the table's columns match on every db; capture goes on");
        } else {
            tracing::warn!(sync, table = %p.table, reason = %p.reason, "paused: the table is held back until its columns match on every db; capture goes on, the other tables keep running");
        }
    }
    for b in before.iter().filter(|b| !now.iter().any(|p| p.table == b.table)) {
        if b.whole_sync {
            tracing::info!(sync, table = %b.table, "resumed: the table's columns match again; the sync applies what waited");
        } else {
            tracing::info!(sync, table = %b.table, "resumed: the table's columns match again; this run copies it whole from the source");
        }
    }
}

/// One line for a run record: `public.a: <reason>; public.b: <reason>`.
pub fn summary(held: &[PausedTable]) -> String {
    held.iter().map(|p| format!("{}: {}", p.table, p.reason)).collect::<Vec<_>>().join("; ")
}
