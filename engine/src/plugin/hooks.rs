//! Calling sync hooks at Bucardo's customcode hook points.

use std::sync::Arc;

use super::bindings::sync_hooks::ibex::plugin::hooks::{Action, HookCall};
use super::bindings::types::SyncInfo;
use super::host::HostDbs;
use super::runtime::{LoadedPlugin, PluginRuntime, Pre, describe_failure, settle};
use crate::error::{PluginCause, PluginFailure};

pub use super::bindings::sync_hooks::ibex::plugin::hooks::{Action as HookAction, Failure, HookPoint};

impl HookPoint {
    pub fn parse(name: &str) -> Option<HookPoint> {
        Some(match name.replace('-', "_").as_str() {
            "before_sync" => HookPoint::BeforeSync,
            "after_sync" => HookPoint::AfterSync,
            "before_txn" => HookPoint::BeforeTxn,
            "after_txn" => HookPoint::AfterTxn,
            "before_check_rows" => HookPoint::BeforeCheckRows,
            "exception" => HookPoint::Exception,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            HookPoint::BeforeSync => "before_sync",
            HookPoint::AfterSync => "after_sync",
            HookPoint::BeforeTxn => "before_txn",
            HookPoint::AfterTxn => "after_txn",
            HookPoint::BeforeCheckRows => "before_check_rows",
            HookPoint::Exception => "exception",
        }
    }

    pub const NAMES: &'static str = "before_sync, after_sync, before_txn, after_txn, before_check_rows, exception";
}

/// Runs one hook; the error says why the plugin could not answer.
pub async fn run_hook(
    plugin: &LoadedPlugin,
    dbs: Arc<HostDbs>,
    sync: &SyncInfo,
    call: &HookCall,
) -> Result<Action, PluginCause> {
    let runtime = PluginRuntime::get().map_err(|e| PluginCause::new(PluginFailure::Unusable, e.to_string()))?;
    let Pre::Hooks(pre) = &plugin.pre else {
        return Err(PluginCause::new(
            PluginFailure::Unusable,
            format!("it is a {}, not sync hooks", plugin.manifest.kind),
        ));
    };
    let mut store = runtime.store(plugin, dbs)?;
    let outcome = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance.call_run_hook(&mut store, sync, call).await
    }
    .await;
    settle(plugin, &store)?;
    outcome.map_err(|err| describe_failure(plugin, &err, &store.data().stderr_text()))
}
