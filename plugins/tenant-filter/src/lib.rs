//! Sends each target only the rows of its tenant (partial replication of a
//! shared table into per-tenant databases).
//!
//! config.tenant_column = the tenant column (default `tenant`).
//! config.tenants = `DB=TENANT[|TENANT],DB=...`; a db not listed receives
//! the rows whose tenant equals its own name.

use ibex_plugin_sdk::transform::RowTransform;
use ibex_plugin_sdk::{Row, SyncInfo, TableInfo};

struct TenantFilter;

fn tenants_of(sync: &SyncInfo, db: &str) -> Vec<String> {
    sync.config("tenants")
        .unwrap_or("")
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(d, _)| d.trim() == db)
        .map(|(_, list)| list.split('|').map(|t| t.trim().to_string()).collect())
        .unwrap_or_else(|| vec![db.to_string()])
}

impl RowTransform for TenantFilter {
    fn transform(
        sync: &SyncInfo,
        _source: u32,
        target: u32,
        table: &TableInfo,
        rows: Vec<Row>,
    ) -> Result<Vec<Option<Row>>, String> {
        let column = sync.config("tenant_column").unwrap_or("tenant");
        let Some(index) = table.column_index(column) else {
            return Err(format!(
                "table {}.{} has no tenant column {column} (set config.tenant_column)",
                table.schema, table.name
            ));
        };
        let db = sync.dbs.get(target as usize).map(|d| d.name.as_str()).ok_or("unknown target")?;
        let wanted = tenants_of(sync, db);
        Ok(rows
            .into_iter()
            .map(|row| {
                let tenant = row[index].as_str().map(str::to_string);
                tenant.is_some_and(|t| wanted.contains(&t)).then_some(row)
            })
            .collect())
    }
}

ibex_plugin_sdk::export_row_transform!(TenantFilter);
