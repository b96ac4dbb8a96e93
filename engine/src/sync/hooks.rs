//! Sync hooks at Bucardo's customcode points: which plugins run where, and
//! what their answers mean for the run.

use std::sync::Arc;

use super::plan::Plan;
use crate::catalog::Role;
use crate::error::{Error, Result};
use crate::plugin::bindings::sync_hooks::ibex::plugin::hooks::HookCall;
use crate::plugin::bindings::types::{DbInfo, Role as WitRole, SyncInfo};
use crate::plugin::hooks::{Failure, HookAction, HookPoint, run_hook};
use crate::plugin::{HostDbs, LoadedPlugin};

/// The sync as a plugin sees it (with that plugin's config).
pub fn sync_info(plan: &Plan, plugin: &LoadedPlugin) -> SyncInfo {
    SyncInfo {
        name: plan.sync.name.clone(),
        dbs: plan
            .dbs
            .iter()
            .map(|d| DbInfo {
                name: d.name.clone(),
                role: match d.role {
                    Role::Source => WitRole::Source,
                    Role::Target => WitRole::Target,
                    Role::Fullcopy => WitRole::Fullcopy,
                },
                priority: d.priority,
            })
            .collect(),
        config: plugin.manifest.config.clone(),
    }
}

/// The hooks of a run: each plugin with the points it is attached at.
#[derive(Clone, Default)]
pub struct Hooks<'a> {
    pub attached: Vec<(&'a LoadedPlugin, Vec<HookPoint>)>,
}

impl<'a> Hooks<'a> {
    pub fn at(&self, point: HookPoint) -> bool {
        self.attached.iter().any(|(_, points)| points.contains(&point))
    }

    /// Runs the hooks of `point` in order; the first answer other than
    /// `proceed` wins (with the plugin that gave it). A hook that fails
    /// fails the run.
    pub async fn run(
        &self,
        plan: &Plan,
        dbs: &Arc<HostDbs>,
        point: HookPoint,
        failure: Option<Failure>,
    ) -> Result<Option<(HookAction, &'a LoadedPlugin)>> {
        let call = HookCall { point, failure };
        for (plugin, points) in &self.attached {
            if !points.contains(&point) {
                continue;
            }
            let action = run_hook(plugin, dbs.clone(), &sync_info(plan, plugin), &call).await.map_err(|cause| {
                Error::plugin(cause.failure, format!(
                    "plugin {} failed at hook {} of sync {}: {cause}; nothing was applied and the changes stay pending",
                    plugin.name,
                    point.name(),
                    plan.sync.name
                ))
            })?;
            if !matches!(action, HookAction::Proceed) {
                return Ok(Some((action, plugin)));
            }
        }
        Ok(None)
    }

    /// A hook point before or after the work: `skip` ends the run without
    /// applying anything, `abort` fails it.
    pub async fn checkpoint(&self, plan: &Plan, dbs: &Arc<HostDbs>, point: HookPoint) -> Result<()> {
        if !self.at(point) {
            return Ok(());
        }
        match self.run(plan, dbs, point, None).await? {
            Some((HookAction::Skip, plugin)) => {
                Err(Error::Skipped(format!("hook {} of plugin {} skipped the run", point.name(), plugin.name)))
            }
            Some((HookAction::Abort(message), plugin)) => Err(Error::plugin(
                crate::error::PluginFailure::Error,
                format!("hook {} of plugin {} aborted the run: {message}", point.name(), plugin.name),
            )),
            Some((other, plugin)) => {
                tracing::warn!(plugin = %plugin.name, point = point.name(), answer = ?other, "hook answer means nothing at this point; going on");
                Ok(())
            }
            None => Ok(()),
        }
    }
}
