//! After a catalog change that touches syncs: check the affected syncs'
//! tables on their dbs and bring capture in line, inside the same catalog
//! transaction, so a failure leaves the catalog unchanged.

use std::collections::BTreeSet;

use tokio_postgres::GenericClient;

use super::Output;
use crate::catalog;
use crate::error::Result;
use crate::sync::{Kid, Plan, setup};

/// What to check and where to reconcile, collected before the change.
#[derive(Default)]
pub struct Affected {
    pub syncs: BTreeSet<String>,
    pub dbs: BTreeSet<String>,
}

impl Affected {
    /// The sync and every db of its dbgroup.
    pub async fn add_sync(&mut self, c: &impl GenericClient, sync: &str) -> Result<()> {
        let record = catalog::sync::get(c, sync).await?;
        let group = catalog::dbgroup::get(c, &record.dbgroup).await?;
        self.syncs.insert(sync.to_string());
        self.dbs.extend(group.members.into_iter().map(|m| m.db));
        Ok(())
    }

    /// Every sync using the herd, with their dbs.
    pub async fn add_herd(&mut self, c: &impl GenericClient, herd: &str) -> Result<()> {
        for sync in catalog::herd::get(c, herd).await?.syncs {
            self.add_sync(c, &sync).await?;
        }
        Ok(())
    }

    /// Every sync using the dbgroup, with their dbs.
    pub async fn add_dbgroup(&mut self, c: &impl GenericClient, group: &str) -> Result<()> {
        let group = catalog::dbgroup::get(c, group).await?;
        self.dbs.extend(group.members.iter().map(|m| m.db.clone()));
        for sync in group.syncs {
            self.add_sync(c, &sync).await?;
        }
        Ok(())
    }

    /// Every db any sync uses.
    pub async fn add_all_sync_dbs(&mut self, c: &impl GenericClient) -> Result<()> {
        self.dbs.extend(catalog::sync::dbs_in_syncs(c).await?);
        Ok(())
    }

    /// Checks the syncs that still exist and reconciles capture on the dbs.
    /// `strict`: any failure is an error (the change is refused); else
    /// unreachable dbs are reported as warnings.
    pub async fn apply(&self, c: &impl GenericClient, out: &Output, strict: bool) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for sync in &self.syncs {
            if !catalog::sync::exists(c, sync).await? {
                continue;
            }
            let plan = Plan::load(c, sync).await?;
            // Each plugin it uses gets its role, grants and functions as its manifest says.
            for plugin in &plan.plugins {
                let record = catalog::plugin::get(c, &plugin.name).await?;
                lines.extend(setup::plugin_roles(c, &record.name, &record.manifest, &[]).await?);
            }
            let mut kid = Kid::new(plan);
            let tables = kid.validate().await?.len();
            for warning in kid.stagger_warnings().await? {
                out.warn(warning);
            }
            lines.push(format!(
                "Validated sync {sync}: {tables} table{} on {} dbs",
                plural(tables),
                kid.plan().dbs.len()
            ));
        }
        for db in &self.dbs {
            if !catalog::dbs::exists(c, db).await? {
                continue;
            }
            match setup::reconcile_db(c, db).await {
                Ok(report) => {
                    for warning in &report.warnings {
                        out.warn(warning.clone());
                    }
                    lines.extend(setup::describe(db, &report));
                }
                Err(err) if !strict => out.warn(format!(
                    "capture on db {db} was not updated ({err}); run `ibex validate` once it is reachable"
                )),
                Err(err) => return Err(err),
            }
        }
        Ok(lines)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
