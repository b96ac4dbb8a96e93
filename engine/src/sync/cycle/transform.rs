//! Rows through a row transform: read typed from the source in batches,
//! handed to the plugin, written to the target in COPY's text format.

use super::{Cycle, Transform};
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::copy_in_bytes;
use crate::plugin::convert::{self, ColumnKind, push_copy_row};
use crate::plugin::{LoadedPlugin, Value};
use crate::sync::plan::{DbId, TableId};

/// Where a transform's rows go: a PostgreSQL target by COPY, or a foreign one.
pub(super) enum RowSink<'s> {
    Postgres { client: &'s tokio_postgres::Client, in_sql: String },
    Foreign(&'s crate::target::Slot),
}

/// Rows handed to a transform per call.
const TRANSFORM_BATCH: usize = 1000;

impl<'a> Cycle<'a> {
    /// The transform for rows of table `ti` going to db `d`: one for this
    /// table and db first, then this table, then this db, then any.
    pub(super) fn transform_for(&self, ti: TableId, d: DbId) -> Option<&'a LoadedPlugin> {
        let id = self.table(ti).id;
        let rank = |t: &Transform| match (t.table, t.target) {
            (Some(table), Some(db)) if table == id && db == d => Some(0),
            (Some(table), None) if table == id => Some(1),
            (None, Some(db)) if db == d => Some(2),
            (None, None) => Some(3),
            _ => None,
        };
        self.transforms.iter().filter_map(|t| rank(t).map(|r| (r, t.plugin))).min_by_key(|(r, _)| *r).map(|(_, p)| p)
    }

    pub(super) async fn copy_transformed(&self, ti: TableId, from: DbId, rows_from: &str, target: DbId) -> Result<u64> {
        let sink = RowSink::Postgres {
            client: self.client(target),
            // The transform's rows are COPY text, whatever format the table copies in.
            in_sql: format!("COPY {} ({}) FROM STDIN", self.table(ti).quoted(), self.table(ti).column_list()),
        };
        self.transformed_rows(ti, from, rows_from, target, &sink).await
    }

    /// Rows `rows_from` selects on `from`, through the transform for
    /// `target`, handed to `sink` in batches as COPY text. Returns the
    /// rows written.
    pub(super) async fn transformed_rows(
        &self,
        ti: TableId,
        from: DbId,
        rows_from: &str,
        target: DbId,
        sink: &RowSink<'_>,
    ) -> Result<u64> {
        let table = self.table(ti);
        let Some(plugin) = self.transform_for(ti, target) else { return Ok(0) };
        let kinds: Vec<ColumnKind> = table.columns.iter().map(|c| ColumnKind::of(c.type_oid)).collect();
        let select: Vec<String> = table.columns.iter().zip(&kinds).map(|(c, k)| k.select("t", c)).collect();
        let cursor = "ibex_transform";
        let source = self.client(from);
        source
            .batch_execute(&format!("DECLARE {cursor} NO SCROLL CURSOR FOR SELECT {} {rows_from}", select.join(", ")))
            .await
            .ctx(|| format!("reading rows of {} on db {}", table.name, self.plan.db(from).name))?;
        let mut sync = self.sync_info(plugin);
        // Foreign targets follow the sync's PostgreSQL dbs (their indexes in this run).
        sync.dbs.extend(self.foreign.iter().map(|f| crate::plugin::bindings::types::DbInfo {
            name: f.db.name.clone(),
            role: crate::plugin::bindings::types::Role::Target,
            priority: 0,
        }));
        let info = self.table_info(ti);
        let mut written = 0;
        loop {
            let rows = source
                .query(&format!("FETCH FORWARD {TRANSFORM_BATCH} FROM {cursor}"), &[])
                .await
                .ctx(|| format!("reading rows of {} on db {}", table.name, self.plan.db(from).name))?;
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
                from.index() as u32,
                target.index() as u32,
                &info,
                &kinds,
                batch,
            )
            .await
            .map_err(|cause| {
                Error::plugin(cause.failure, format!(
                    "plugin {} failed transforming rows of table {} for db {} in sync {}: {cause}; nothing was applied and the changes stay pending",
                    plugin.name, table.name, self.db_name(target), self.plan.sync.name
                ))
            })?;
            let mut text = String::new();
            for row in out.iter().flatten() {
                push_copy_row(&mut text, row);
            }
            if !text.is_empty() {
                written += match sink {
                    RowSink::Postgres { client, in_sql } => copy_in_bytes(client, in_sql, bytes::Bytes::from(text))
                        .await
                        .map_err(|e| self.table_error(e, ti))?,
                    RowSink::Foreign(slot) => crate::target::feed::write_copy_text(table, slot, &text)?,
                };
            }
            if last {
                break;
            }
        }
        source.batch_execute(&format!("CLOSE {cursor}")).await.ctx(|| "closing a cursor".into())?;
        Ok(written)
    }
}
