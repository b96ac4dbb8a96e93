//! Calling a conflict handler: one batch of conflicts of one table per call,
//! and a check of its answer before anything is applied.

use std::sync::Arc;

use super::bindings::conflicts::{Conflict, Decision, Verdict};
use super::bindings::types::{SyncInfo, TableInfo};
use super::convert::ColumnKind;
use super::host::HostDbs;
use super::runtime::{LoadedPlugin, PluginRuntime, Pre, describe_failure, returned_error, settle};
use crate::error::{PluginCause, PluginFailure};

/// Asks the plugin to decide `conflicts`; the error says why it could not
/// (trap, timeout, fuel, memory, an error it returned, or a nonsense answer).
pub async fn resolve(
    plugin: &LoadedPlugin,
    dbs: Arc<HostDbs>,
    sync: &SyncInfo,
    table: &TableInfo,
    kinds: &[ColumnKind],
    conflicts: &[Conflict],
) -> Result<Verdict, PluginCause> {
    let runtime = PluginRuntime::get().map_err(|e| PluginCause::new(PluginFailure::Unusable, e.to_string()))?;
    let Pre::Conflict(pre) = &plugin.pre else {
        return Err(PluginCause::new(
            PluginFailure::Unusable,
            format!("it is a {}, not a conflict handler", plugin.manifest.kind),
        ));
    };
    let mut store = runtime.store(plugin, dbs)?;
    let outcome = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance.call_resolve(&mut store, sync, table, conflicts).await
    }
    .await;
    settle(plugin, &store)?;
    let verdict = match outcome {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(message)) => return Err(returned_error(&store, &message)),
        Err(err) => return Err(describe_failure(plugin, &err, &store.data().stderr_text())),
    };
    check(&verdict, sync, kinds, conflicts).map_err(|why| PluginCause::new(PluginFailure::Answer, why))?;
    Ok(verdict)
}

/// Refuses answers that cannot be applied: a winner that is no db of the
/// sync, the wrong number of decisions, a merged row of the wrong shape.
fn check(verdict: &Verdict, sync: &SyncInfo, kinds: &[ColumnKind], conflicts: &[Conflict]) -> Result<(), String> {
    let db_ok = |db: u32| {
        if (db as usize) < sync.dbs.len() {
            Ok(())
        } else {
            Err(format!(
                "it named db #{db} as the winner, but the sync has {} dbs (0..{})",
                sync.dbs.len(),
                sync.dbs.len()
            ))
        }
    };
    match verdict {
        Verdict::TableWinner(w) | Verdict::SyncWinner(w) => db_ok(w.db),
        Verdict::PerKey(decisions) => {
            if decisions.len() != conflicts.len() {
                return Err(format!("it answered {} decisions for {} conflicts", decisions.len(), conflicts.len()));
            }
            for decision in decisions {
                match decision {
                    Decision::Winner(db) => db_ok(*db)?,
                    Decision::Merged(row) => {
                        if row.len() != kinds.len() {
                            return Err(format!(
                                "it merged a row of {} values for a table of {} columns",
                                row.len(),
                                kinds.len()
                            ));
                        }
                        if let Some((i, _)) = row.iter().zip(kinds).enumerate().find(|(_, (v, k))| !k.accepts(v)) {
                            return Err(format!("it merged a row whose value #{i} does not fit its column"));
                        }
                    }
                    Decision::Skip => {}
                }
            }
            Ok(())
        }
    }
}
