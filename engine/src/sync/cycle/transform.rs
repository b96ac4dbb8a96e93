//! Rows through a row transform: read typed from the source in batches,
//! handed to the plugin, written to the target in COPY's text format.

use super::{Cycle, Transform};
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::copy_in_bytes;
use crate::plugin::convert::{self, ColumnKind, push_copy_row};
use crate::plugin::{LoadedPlugin, Value};

/// Rows handed to a transform per call.
const TRANSFORM_BATCH: usize = 1000;

impl<'a> Cycle<'a> {
    /// The transform for rows of table `ti` going to db `d`: one for this
    /// table and db first, then this table, then this db, then any.
    pub(super) fn transform_for(&self, ti: usize, d: usize) -> Option<&'a LoadedPlugin> {
        let id = self.tables[ti].id;
        let rank = |t: &Transform| match (t.table, t.target) {
            (Some(table), Some(db)) if table == id && db == d => Some(0),
            (Some(table), None) if table == id => Some(1),
            (None, Some(db)) if db == d => Some(2),
            (None, None) => Some(3),
            _ => None,
        };
        self.transforms.iter().filter_map(|t| rank(t).map(|r| (r, t.plugin))).min_by_key(|(r, _)| *r).map(|(_, p)| p)
    }

    pub(super) async fn copy_transformed(&self, ti: usize, from: usize, rows_from: &str, target: usize) -> Result<u64> {
        let table = &self.tables[ti];
        let Some(plugin) = self.transform_for(ti, target) else { return Ok(0) };
        let kinds: Vec<ColumnKind> = table.columns.iter().map(|c| ColumnKind::of(c.type_oid)).collect();
        let select: Vec<String> = table.columns.iter().zip(&kinds).map(|(c, k)| k.select("t", &c.name)).collect();
        let cursor = "ibex_transform";
        let source = &self.clients[from];
        source
            .batch_execute(&format!("DECLARE {cursor} NO SCROLL CURSOR FOR SELECT {} {rows_from}", select.join(", ")))
            .await
            .ctx(|| format!("reading rows of {} on db {}", table.name, self.plan.dbs[from].name))?;
        let sync = self.sync_info(plugin);
        let info = self.table_info(ti);
        let in_sql = format!("COPY {} ({}) FROM STDIN", table.quoted(), table.column_list());
        let mut written = 0;
        loop {
            let rows = source
                .query(&format!("FETCH FORWARD {TRANSFORM_BATCH} FROM {cursor}"), &[])
                .await
                .ctx(|| format!("reading rows of {} on db {}", table.name, self.plan.dbs[from].name))?;
            if rows.is_empty() {
                break;
            }
            let last = rows.len() < TRANSFORM_BATCH;
            let mut batch = Vec::with_capacity(rows.len());
            for row in &rows {
                let values = kinds
                    .iter()
                    .enumerate()
                    .map(|(i, k)| convert::from_row(row, i, *k))
                    .collect::<std::result::Result<Vec<Value>, _>>()
                    .ctx(|| format!("reading a row of {}", table.name))?;
                batch.push(values);
            }
            let out = crate::plugin::transform::transform(
                plugin,
                self.host_dbs.clone(),
                &sync,
                from as u32,
                target as u32,
                &info,
                &kinds,
                batch,
            )
            .await
            .map_err(|cause| {
                Error::plugin(cause.failure, format!(
                    "plugin {} failed transforming rows of table {} for db {} in sync {}: {cause}; nothing was applied and the changes stay pending",
                    plugin.name, table.name, self.plan.dbs[target].name, self.plan.sync.name
                ))
            })?;
            let mut text = String::new();
            for row in out.iter().flatten() {
                push_copy_row(&mut text, row);
            }
            if !text.is_empty() {
                written += copy_in_bytes(&self.clients[target], &in_sql, bytes::Bytes::from(text))
                    .await
                    .map_err(|e| self.table_error(e, ti))?;
            }
            if last {
                break;
            }
        }
        source.batch_execute(&format!("CLOSE {cursor}")).await.ctx(|| "closing a cursor".into())?;
        Ok(written)
    }
}
