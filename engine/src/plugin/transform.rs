//! Calling a row transform: one batch of rows on their way from one db to
//! another, and a check of what comes back.

use std::sync::Arc;

use super::bindings::types::{SyncInfo, TableInfo};
use super::convert::{ColumnKind, Value};
use super::host::HostDbs;
use super::runtime::{LoadedPlugin, PluginRuntime, Pre, describe_failure, returned_error, settle};
use crate::error::{PluginCause, PluginFailure};

/// Returns, per input row, the row to write or None to leave it out. The
/// error says why the plugin could not be used.
#[allow(clippy::too_many_arguments)]
pub async fn transform(
    plugin: &LoadedPlugin,
    dbs: Arc<HostDbs>,
    sync: &SyncInfo,
    source: u32,
    target: u32,
    table: &TableInfo,
    kinds: &[ColumnKind],
    rows: Vec<Vec<Value>>,
) -> Result<Vec<Option<Vec<Value>>>, PluginCause> {
    let runtime = PluginRuntime::get().map_err(|e| PluginCause::new(PluginFailure::Unusable, e.to_string()))?;
    let Pre::Transform(pre) = &plugin.pre else {
        return Err(PluginCause::new(
            PluginFailure::Unusable,
            format!("it is a {}, not a row transform", plugin.manifest.kind),
        ));
    };
    let keys: Vec<usize> = table.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect();
    let input_keys: Vec<Vec<Value>> = rows.iter().map(|r| keys.iter().map(|&i| r[i].clone()).collect()).collect();
    let count = rows.len();
    let mut store = runtime.store(plugin, dbs)?;
    let outcome = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance.call_transform(&mut store, sync, source, target, table, &rows).await
    }
    .await;
    settle(plugin, &store)?;
    let out = match outcome {
        Ok(Ok(out)) => out,
        Ok(Err(message)) => return Err(returned_error(&store, &message)),
        Err(err) => return Err(describe_failure(plugin, &err, &store.data().stderr_text())),
    };
    let answer = |why: String| PluginCause::new(PluginFailure::Answer, why);
    if out.len() != count {
        return Err(answer(format!("it answered {} rows for {count}", out.len())));
    }
    for (n, (row, key)) in out.iter().zip(&input_keys).enumerate() {
        let Some(row) = row else { continue };
        if row.len() != kinds.len() {
            return Err(answer(format!(
                "it returned a row of {} values for a table of {} columns",
                row.len(),
                kinds.len()
            )));
        }
        if let Some((i, _)) = row.iter().zip(kinds).enumerate().find(|(_, (v, k))| !k.accepts(v)) {
            return Err(answer(format!("row #{n}: value #{i} does not fit its column")));
        }
        let same_key = keys.iter().zip(key).all(|(&i, k)| format!("{:?}", row[i]) == format!("{k:?}"));
        if !same_key {
            return Err(answer(format!("row #{n}: it changed the key, which a transform may not do")));
        }
    }
    Ok(out)
}
