//! Whole-table copies (fullcopy dbs, onetimecopy, after a TRUNCATE or a
//! key change) and sequences.

use std::collections::BTreeMap;

use super::Cycle;
use super::window::Probe;
use crate::error::{PgContext, Result};
use crate::pg::quote_literal;
use crate::sync::plan::{DbId, TableId};
use crate::sync::progress::CopyProgress;
use crate::target;

impl<'a> Cycle<'a> {
    /// Whole-table copies: into fullcopy dbs every run, for onetimecopy,
    /// and after a TRUNCATE on a source (the truncating source wins the table).
    pub(super) async fn full_copies(&mut self, onetimecopy: i16, probe: &Probe) -> Result<()> {
        let primary = self.plan.primary_source();
        let fullcopy: Vec<DbId> = self.plan.fullcopy_dbs().collect();
        // (table, from) -> receivers
        let mut jobs: BTreeMap<(TableId, DbId), Vec<DbId>> = BTreeMap::new();
        for (ti, table) in self.table_ids().zip(self.tables) {
            if !fullcopy.is_empty() {
                jobs.entry((ti, primary)).or_default().extend(&fullcopy);
            }
            let whole_from =
                probe.truncated.get(&table.name).map(|t| t.source).or(probe.resync.get(&table.name).copied());
            if let Some(from) = whole_from {
                let receivers = self.plan.delta_dbs().filter(|&d| d != from);
                jobs.entry((ti, from)).or_default().extend(receivers);
                continue;
            }
            match onetimecopy {
                1 => {
                    let receivers = self.plan.delta_dbs().filter(|&d| d != primary);
                    jobs.entry((ti, primary)).or_default().extend(receivers);
                }
                2 => {
                    for d in self.plan.delta_dbs().filter(|&d| d != primary).collect::<Vec<_>>() {
                        let row = self
                            .client(d)
                            .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {})", table.quoted()), &[])
                            .await
                            .ctx(|| format!("checking whether {} is empty on db {}", table.name, self.db_name(d)))?;
                        if row.get::<_, bool>(0) {
                            jobs.entry((ti, primary)).or_default().push(d);
                        }
                    }
                }
                _ => {}
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        // Empty every receiving table first, one TRUNCATE per db, so foreign
        // keys among the herd's tables do not stand in the way.
        let mut per_db: BTreeMap<DbId, Vec<TableId>> = BTreeMap::new();
        for (&(ti, _), receivers) in &jobs {
            for &d in receivers {
                per_db.entry(d).or_default().push(ti);
            }
        }
        for (&d, tis) in &per_db {
            let names: Vec<String> = tis.iter().map(|&ti| self.table(ti).quoted()).collect();
            self.client(d)
                .batch_execute(&format!("TRUNCATE {}", names.join(", ")))
                .await
                .ctx(|| format!("emptying {} on db {} for a full copy", names.join(", "), self.db_name(d)))?;
        }
        for ((ti, from), receivers) in jobs {
            let table = self.table(ti);
            tracing::info!(sync = %self.plan.sync.name, table = %table.name, from = self.db_name(from), to = receivers.len(), "full copy");
            let mut progress = self.copy_progress(ti, from, &receivers).await?;
            let rows = self
                .copy_rows_reporting(ti, from, &format!("FROM {} t", table.quoted()), &receivers, Some(&mut progress))
                .await?;
            progress.finish(rows.iter().copied().max().unwrap_or(0));
            for (&d, n) in receivers.iter().zip(rows) {
                self.count(ti, d, 0, n as i64);
                if self.plan.settings.analyze_after_copy {
                    self.client(d)
                        .batch_execute(&format!("ANALYZE {}", self.table(ti).quoted()))
                        .await
                        .ctx(|| format!("analyzing {} on db {}", self.table(ti).name, self.db_name(d)))?;
                }
            }
        }
        Ok(())
    }

    /// Progress of copying table `ti` whole from `from`, with the source's
    /// row estimate (and size, for tables never analyzed) as the total.
    async fn copy_progress(&self, ti: TableId, from: DbId, receivers: &[DbId]) -> Result<CopyProgress> {
        let table = self.table(ti);
        let row = self
            .client(from)
            .query_one(
                "SELECT c.reltuples::float8, pg_table_size(c.oid) FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&table.quoted()],
            )
            .await
            .ctx(|| format!("estimating the rows of {} on db {}", table.name, self.db_name(from)))?;
        let to: Vec<&str> = receivers.iter().map(|&d| self.db_name(d)).collect();
        let label = format!(
            "sync {}: full copy of {} from {} to {}",
            self.plan.sync.name,
            table.name,
            self.db_name(from),
            to.join(", ")
        );
        Ok(CopyProgress::new(label, !table.text_format, row.get(0), row.get(1)))
    }

    /// Every db's sequences go up to the highest value any source has.
    pub(super) async fn sync_sequences(&self) -> Result<()> {
        for seq in &self.plan.sequences {
            let mut values = Vec::new();
            for d in self.plan.db_ids() {
                let row = self
                    .client(d)
                    .query_one(&format!("SELECT last_value, is_called FROM {}", seq.quoted()), &[])
                    .await
                    .ctx(|| format!("reading sequence {seq} on db {}", self.plan.db(d).name))?;
                let (value, called): (i64, bool) = (row.get(0), row.get(1));
                // The value the next nextval() hands out is what we compare.
                let next = if called { value.saturating_add(1) } else { value };
                values.push((next, value, called));
            }
            let Some(&(best_next, best_value, best_called)) =
                self.plan.sources().map(|s| &values[s.index()]).max_by_key(|(next, _, _)| *next)
            else {
                continue;
            };
            for (d, &(next, _, _)) in self.plan.db_ids().zip(&values) {
                if next < best_next {
                    self.client(d)
                        .query_one(
                            &format!("SELECT setval({}, $1, $2)", quote_literal(&seq.quoted())),
                            &[&best_value, &best_called],
                        )
                        .await
                        .ctx(|| format!("setting sequence {seq} on db {}", self.db_name(d)))?;
                }
            }
        }
        Ok(())
    }
}

impl<'a> Cycle<'a> {
    /// Whole-table copies into foreign targets: for onetimecopy (1 always,
    /// 2 into empty tables) from the primary source, and after a TRUNCATE
    /// or a resync from the source that decided the table.
    pub(super) async fn foreign_full_copies(&mut self, onetimecopy: i16, probe: &Probe) -> Result<()> {
        if self.foreign.is_empty() {
            return Ok(());
        }
        let primary = self.plan.primary_source();
        for (ti, table) in self.table_ids().zip(self.tables) {
            let whole_from =
                probe.truncated.get(&table.name).map(|t| t.source).or(probe.resync.get(&table.name).copied());
            let (from, receivers): (DbId, Vec<DbId>) = match (whole_from, onetimecopy) {
                (Some(from), _) => (from, self.plan.foreign_ids().collect()),
                (None, 1) => (primary, self.plan.foreign_ids().collect()),
                (None, 2) => {
                    let mut empty = Vec::new();
                    for (d, slot) in self.plan.foreign_ids().zip(&self.foreign) {
                        if target::feed::is_empty(table, slot)? {
                            empty.push(d);
                        }
                    }
                    (primary, empty)
                }
                _ => continue,
            };
            if receivers.is_empty() {
                continue;
            }
            tracing::info!(sync = %self.plan.sync.name, table = %table.name, from = self.db_name(from), to = receivers.len(), "full copy to foreign targets");
            let slots: Vec<&target::Slot> = receivers.iter().map(|&d| self.foreign_target(d)).collect();
            let deleted = target::feed::delete_all(table, &slots)?;
            let inserted = self.foreign_rows(ti, from, &format!("FROM {} t", table.quoted()), &receivers).await?;
            let counts = deleted.into_iter().zip(inserted);
            for (&d, (del, ins)) in receivers.iter().zip(counts) {
                self.count(ti, d, del as i64, ins as i64);
            }
        }
        Ok(())
    }
}
