//! Multi-tenant winner rules: a row whose tenant column names an owner is
//! decided by the owner's database, whichever changed it last; other rows
//! go to the newest change.
//!
//! config.tenant_column = the column holding the tenant (default `tenant`).
//! config.owners = `TENANT=DB,TENANT=DB`; a tenant not listed is owned by
//! the db of the same name, if the sync has one.

use ibex_plugin_sdk::conflict::{Conflict, ConflictHandler, Decision, Verdict};
use ibex_plugin_sdk::{SyncInfo, TableInfo};

struct TenantRules;

fn owner(sync: &SyncInfo, tenant: &str) -> Option<u32> {
    let listed = sync.config("owners").unwrap_or("").split(',').find_map(|pair| {
        let (t, db) = pair.split_once('=')?;
        (t.trim() == tenant).then(|| db.trim())
    });
    sync.db_index(listed.unwrap_or(tenant))
}

impl ConflictHandler for TenantRules {
    fn resolve(sync: &SyncInfo, table: &TableInfo, conflicts: Vec<Conflict>) -> Result<Verdict, String> {
        let column = sync.config("tenant_column").unwrap_or("tenant");
        if table.column_index(column).is_none() {
            return Err(format!(
                "table {}.{} has no tenant column {column} (set config.tenant_column)",
                table.schema, table.name
            ));
        }
        let decisions = conflicts
            .iter()
            .map(|c| {
                // The tenant as the newest version has it (a deleted row has none).
                let tenant = c
                    .versions
                    .iter()
                    .filter_map(|v| v.row.as_ref().and_then(|r| table.value(r, column)).and_then(|t| t.as_str()))
                    .next();
                Decision::Winner(tenant.and_then(|t| owner(sync, t)).unwrap_or(c.latest().db))
            })
            .collect();
        Ok(Verdict::PerKey(decisions))
    }
}

ibex_plugin_sdk::export_conflict_handler!(TenantRules);
