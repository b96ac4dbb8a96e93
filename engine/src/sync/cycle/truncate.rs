//! TRUNCATE in a window, and whole-table copies asked for by capture.
//!
//! The rule: the latest TRUNCATE in the run's windows (by the servers'
//! change times, as `latest` orders conflicts) empties the table on every
//! db, by a whole-table copy from the source that truncated; then every
//! change any source made after that TRUNCATE is applied on top, keys
//! changed on several sources settled by the sync's strategy. Changes made
//! before it are gone everywhere, as they are on the truncating source.
//! Rows changed after the TRUNCATE on other sources are kept aside (a
//! temporary table, dropped at commit) before their db is emptied.

use std::collections::BTreeMap;

use super::window::Probe;
use super::{Cycle, pg_micros, pg_time, read_key, temp_name};
use crate::conflict::{Decision, Version};
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::{BinaryCopyBuilder, copy_in_bytes};
use crate::pg::{quote_ident, quote_literal};
use crate::sync::plan::{DbId, TableId};

/// Per truncated table: each source's keys changed after the TRUNCATE,
/// with their latest change time (microseconds since 2000).
pub(super) type Kept = BTreeMap<TableId, BTreeMap<DbId, BTreeMap<Vec<Vec<u8>>, i64>>>;

impl<'a> Cycle<'a> {
    /// Before the truncated tables are emptied: each source's keys changed
    /// after the TRUNCATE, and on other sources their rows, kept aside.
    pub(super) async fn keep_after_truncates(&self, probe: &Probe) -> Result<Kept> {
        let mut kept = Kept::new();
        for (name, truncated) in &probe.truncated {
            let Some(ti) = self.table_ids().find(|&ti| &self.table(ti).name == name) else { continue };
            let table = self.table(ti);
            let after = pg_time(truncated.at);
            let mut per_source = BTreeMap::new();
            for src in self.plan.sources().collect::<Vec<_>>() {
                let window = self.window(src)?;
                if src != truncated.source {
                    let keep = quote_ident(&temp_name("keep", table));
                    self.client(src)
                        .batch_execute(&format!(
                            "DROP TABLE IF EXISTS pg_temp.{keep};
                             CREATE TEMP TABLE {keep} ON COMMIT DROP AS
                                SELECT {} FROM {} t WHERE {}",
                            table.column_list_of("t"),
                            table.quoted(),
                            table.changed_in("t", &format!("{window} AND d.changed_at > {after}")),
                        ))
                        .await
                        .ctx(|| {
                            format!(
                                "keeping rows of {} changed after a TRUNCATE on db {}",
                                table.name,
                                self.db_name(src)
                            )
                        })?;
                }
                let rows = self
                    .client(src)
                    .query(
                        &format!(
                            "SELECT {keys}, max(d.changed_at)
                               FROM {delta} d WHERE {window} AND d.changed_at > {after} GROUP BY {keys}",
                            keys = table.key_list_of("d"),
                            delta = table.delta()
                        ),
                        &[],
                    )
                    .await
                    .ctx(|| {
                        format!("reading changes of {} after a TRUNCATE on db {}", table.name, self.db_name(src))
                    })?;
                let nk = table.key.len();
                let mut keys = BTreeMap::new();
                for row in rows {
                    let at = row.try_get(nk).ctx(|| "reading a change time".into())?;
                    keys.insert(read_key(&row, nk)?, pg_micros(at));
                }
                if !keys.is_empty() {
                    per_source.insert(src, keys);
                }
            }
            kept.insert(ti, per_source);
        }
        Ok(kept)
    }

    /// After the whole-table copies: the changes made after each TRUNCATE,
    /// settled and applied on every db.
    pub(super) async fn reapply_after_truncates(&mut self, probe: &Probe, kept: &Kept) -> Result<()> {
        for (&ti, per_source) in kept {
            let Some(truncated) = probe.truncated.get(&self.table(ti).name).copied() else { continue };
            let mut keys: BTreeMap<&Vec<Vec<u8>>, Vec<Version>> = BTreeMap::new();
            for (&src, changed) in per_source {
                for (key, &at) in changed {
                    keys.entry(key).or_default().push(Version { db: src, changed_at: at });
                }
            }
            // What each winner other than the truncating source brings back.
            let mut from: BTreeMap<DbId, Vec<Vec<Vec<u8>>>> = BTreeMap::new();
            for (key, versions) in keys {
                let winner = if versions.len() == 1 {
                    Some(versions[0].db)
                } else {
                    self.conflicts += 1;
                    match self.resolver.decide(&versions) {
                        Ok(decision) => {
                            let shown = format!("{} byte key", key.iter().map(Vec::len).sum::<usize>());
                            self.log_conflict(ti, &shown, &versions, decision);
                            match decision {
                                Decision::Winner { db, .. } => Some(db),
                                Decision::Skip => None,
                            }
                        }
                        Err(_) => {
                            return Err(Error::Sync(format!(
                                "conflict_strategy=abort: a key of table {} changed after a TRUNCATE on more than one source, so nothing was applied",
                                self.table(ti).name
                            )));
                        }
                    }
                };
                if let Some(w) = winner.filter(|&w| w != truncated.source) {
                    from.entry(w).or_default().push(key.clone());
                }
            }
            for (src, keys) in from {
                self.bring_back(ti, src, &keys).await?;
            }
        }
        Ok(())
    }

    /// Replaces `keys` on every db by source `src`'s rows kept aside before
    /// the TRUNCATE (a key it deleted stays deleted).
    async fn bring_back(&mut self, ti: TableId, src: DbId, keys: &[Vec<Vec<u8>>]) -> Result<()> {
        let table = self.table(ti);
        let dbs: Vec<DbId> = self.plan.delta_dbs().collect();
        let del = temp_name("del", table);
        let send = temp_name("send", table);
        let keep = quote_ident(&temp_name("keep", table));
        let load_sql = |name: &str| {
            format!("COPY pg_temp.{} ({}) FROM STDIN WITH (FORMAT binary)", quote_ident(name), table.key_list())
        };
        let mut data = BinaryCopyBuilder::new();
        for key in keys {
            data.push_row(key.iter().map(Vec::as_slice));
        }
        let data = data.finish();
        for &d in &dbs {
            self.ensure_temp(d, &del, table).await?;
            copy_in_bytes(self.client(d), &load_sql(&del), data.clone()).await?;
            let deleted = self.delete_loaded(d, &del, table, keys.len() as u64).await?;
            self.count(ti, d, deleted as i64, 0);
        }
        self.ensure_temp(src, &send, table).await?;
        copy_in_bytes(self.client(src), &load_sql(&send), data).await?;
        let rows_from =
            format!("FROM pg_temp.{keep} t JOIN pg_temp.{} k ON {}", quote_ident(&send), table.key_join("t", "k"));
        let receivers: Vec<DbId> = dbs.iter().copied().filter(|&d| d != src).collect();
        let inserted = self.copy_rows(ti, src, &rows_from, &receivers).await?;
        for (&d, n) in receivers.iter().zip(inserted) {
            self.count(ti, d, 0, n as i64);
        }
        // The source itself was emptied too: its own kept rows go back in.
        let own = self
            .client(src)
            .execute(
                &format!(
                    "INSERT INTO {} ({}) SELECT {} {rows_from}",
                    table.quoted(),
                    table.column_list(),
                    table.column_list_of("t")
                ),
                &[],
            )
            .await
            .ctx(|| format!("restoring rows of {} changed after a TRUNCATE on db {}", table.name, self.db_name(src)))?;
        self.count(ti, src, 0, own as i64);
        Ok(())
    }

    /// Whole-table copies asked for by capture (a key change with changes
    /// pending) are done: forget them, in the run's transaction.
    pub(super) async fn resynced(&self, probe: &Probe) -> Result<()> {
        for (name, &src) in &probe.resync {
            self.client(src)
                .execute(
                    &format!(
                        "DELETE FROM ibex.resync WHERE sync = {} AND schema_name = $1 AND rel_name = $2",
                        quote_literal(&self.plan.sync.name)
                    ),
                    &[&name.schema, &name.name],
                )
                .await
                .ctx(|| format!("recording the whole-table copy of {name} on db {}", self.db_name(src)))?;
        }
        Ok(())
    }
}
