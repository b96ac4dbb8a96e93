//! A table changed on one source: its keys and rows stream from it into
//! every other db without being decoded or held (binary COPY out of the
//! source piped into each target), and the helpers every apply path uses.

use std::collections::BTreeMap;

use futures_util::future::try_join_all;

use super::{Cycle, temp_name};
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::{Receiver, copy_fanout, copy_fanout_with_progress};
use crate::pg::pipeline::try_join;
use crate::pg::quote_ident;
use crate::sync::plan::{DbId, TableId};
use crate::sync::progress::CopyProgress;
use crate::sync::validate::TableSpec;
use crate::target;
use crate::target::postgres::KeyRange;

/// Delta rows in a source's window above which a one-way apply looks for
/// a range of changed keys (one aggregate over the window; below this the
/// keys are few and cheap to send).
const RANGE_CHECK_WINDOW_ROWS: i64 = 1000;

impl<'a> Cycle<'a> {
    pub(super) fn table_error(&self, err: Error, ti: TableId) -> Error {
        match err {
            Error::Postgres { context, source } => {
                Error::Postgres { context: format!("{context} (table {})", self.table(ti).name), source }
            }
            other => other,
        }
    }

    /// Copies the rows `rows_from` selects on db `from` (a `FROM ... t
    /// [WHERE ...]` clause) into each receiver: undecoded COPY for most,
    /// through the row transform for receivers that have one. Returns the
    /// rows each receiver took.
    pub(super) async fn copy_rows(
        &self,
        ti: TableId,
        from: DbId,
        rows_from: &str,
        receivers: &[DbId],
    ) -> Result<Vec<u64>> {
        self.copy_rows_reporting(ti, from, rows_from, receivers, None).await
    }

    /// `copy_rows`, counting the rows of the undecoded COPY into `progress`.
    pub(super) async fn copy_rows_reporting(
        &self,
        ti: TableId,
        from: DbId,
        rows_from: &str,
        receivers: &[DbId],
        mut progress: Option<&mut CopyProgress>,
    ) -> Result<Vec<u64>> {
        let table = self.table(ti);
        let (plain, transformed): (Vec<DbId>, Vec<DbId>) =
            receivers.iter().partition(|&&d| self.transform_for(ti, d).is_none());
        let mut counts: BTreeMap<DbId, u64> = BTreeMap::new();
        if !plain.is_empty() {
            let out_sql = table.copy_out_sql(rows_from);
            let in_sql = target::postgres::copy_in_sql(table);
            let targets: Vec<Receiver> = plain.iter().map(|&d| self.receiver(d, in_sql.clone())).collect();
            let forwarded = |piece: &[u8]| {
                crate::failpoint::pause_blocking("mid_copy");
                if let Some(p) = progress.as_deref_mut() {
                    p.forwarded(piece);
                }
            };
            let rows = copy_fanout_with_progress(self.client(from), &out_sql, &targets, forwarded)
                .await
                .map_err(|e| self.table_error(e, ti))?;
            counts.extend(plain.iter().copied().zip(rows));
        }
        for d in transformed {
            counts.insert(d, self.copy_transformed(ti, from, rows_from, d).await?);
        }
        Ok(receivers.iter().map(|d| counts.get(d).copied().unwrap_or(0)).collect())
    }

    /// An empty key table on this connection (see `target::postgres`).
    pub(super) async fn ensure_temp(&self, db: DbId, name: &str, table: &TableSpec) -> Result<()> {
        target::postgres::ensure_key_table(self.client(db), self.db_name(db), name, table).await
    }

    /// Deletes at `db` the keys loaded into its temp table `keys`.
    pub(super) async fn delete_loaded(&self, db: DbId, keys: &str, table: &TableSpec, loaded: u64) -> Result<u64> {
        target::postgres::delete_loaded(self.client(db), self.db_name(db), keys, table, loaded).await
    }

    /// Only one source changed this table: no conflicts are possible, so
    /// keys and rows stream from it straight into every other db.
    pub(super) async fn apply_single_source(&mut self, ti: TableId, src: DbId) -> Result<()> {
        let table = self.table(ti);
        let receivers: Vec<DbId> = self.plan.delta_dbs().filter(|&d| d != src).collect();
        if receivers.is_empty() {
            return Ok(());
        }
        let window = self.window(src)?;
        if !self.guarded()
            && let Some(range) = self.changed_range(ti, src, &window).await?
        {
            return self.apply_range(ti, src, &receivers, range).await;
        }
        let keys = temp_name("del", table);
        // In key order: the delete then visits the target's rows in index
        // (for most tables, physical) order; in hash order 1M deletes took
        // three times as long.
        let key_sql = format!(
            "COPY (SELECT DISTINCT {keys} FROM {} d WHERE {window} ORDER BY {keys}) TO STDOUT WITH (FORMAT binary)",
            table.delta(),
            keys = table.key_list_of("d"),
        );
        let load_sql =
            format!("COPY pg_temp.{} ({}) FROM STDIN WITH (FORMAT binary)", quote_ident(&keys), table.key_list());
        let targets: Vec<Receiver> = receivers.iter().map(|&d| self.receiver(d, load_sql.clone())).collect();
        let step = std::time::Instant::now();
        // Pipelined: each key table is made (one message) before the COPY
        // into it is even prepared, on the same connection.
        let (_, loaded) = try_join(try_join_all(receivers.iter().map(|&d| self.ensure_temp(d, &keys, table))), async {
            copy_fanout(self.client(src), &key_sql, &targets).await.map_err(|e| self.table_error(e, ti))
        })
        .await?;
        tracing::debug!(table = %table.name, keys = loaded.first().copied().unwrap_or(0), ms = step.elapsed().as_millis() as u64, "changed keys loaded");
        // The source's current rows of the window's keys.
        let rows_from = format!("FROM {} t WHERE {}", table.quoted(), table.changed_in("t", &window));
        if self.guarded() {
            for (&d, &n) in receivers.iter().zip(&loaded) {
                let delete = (n > 0).then_some(keys.as_str());
                let (del, ins) = self.apply_guarded(ti, d, delete, vec![(src, rows_from.clone())], &[]).await?;
                self.count(ti, d, del as i64, ins as i64);
            }
            return Ok(());
        }
        let step = std::time::Instant::now();
        // Pipelined: each receiver's DELETE (one message) is sent before
        // the COPY of the new rows is, so it runs first; the source starts
        // its COPY meanwhile.
        let (deleted, inserted) = try_join(
            try_join_all(receivers.iter().zip(&loaded).map(|(&d, &n)| self.delete_loaded(d, &keys, table, n))),
            self.copy_rows(ti, src, &rows_from, &receivers),
        )
        .await?;
        tracing::debug!(table = %table.name, ms = step.elapsed().as_millis() as u64, "changed rows replaced");
        for ((&d, del), ins) in receivers.iter().zip(deleted).zip(inserted) {
            self.count(ti, d, del as i64, ins as i64);
        }
        Ok(())
    }
}

impl<'a> Cycle<'a> {
    /// Where a large window's changed keys of an integer-keyed table fill
    /// a range with no gap (a bulk change of consecutive ids), that range,
    /// found on the source with one aggregate. The keys then need not be
    /// sent: each receiver deletes the range, and the rows are read as the
    /// range. For 1 M keys (PostgreSQL 15, by hand) the aggregate took
    /// 0.13–0.17 s, sending the keys to the target 1.25 s, and reading the
    /// rows as a range 0.32 s against 1.04 s joined with the delta.
    /// Looked for only where the source's window holds over
    /// [`RANGE_CHECK_WINDOW_ROWS`] delta rows (all its tables together).
    async fn changed_range(&self, ti: TableId, src: DbId, window: &str) -> Result<Option<KeyRange>> {
        let table = self.table(ti);
        let large = self.window_rows.get(&src).is_some_and(|&rows| rows > RANGE_CHECK_WINDOW_ROWS);
        let Some(key) = target::postgres::integer_key(table).filter(|_| large) else {
            return Ok(None);
        };
        let delta = table.delta();
        // The distinct count sorts every key: in memory it took 0.10 s for
        // 1 M keys, 0.20 s spilled with the default work_mem (by hand,
        // PostgreSQL 15). Sent first on the same connection, so it applies.
        let (client, work_mem) = (self.client(src), target::postgres::raise_work_mem());
        let raised = async {
            client.batch_execute(&work_mem).await.ctx(|| format!("raising work_mem on db {}", self.db_name(src)))
        };
        // Keys fewer than the span cannot fill it: no sort for the distinct
        // count then (random keys over a large table).
        let sql = format!(
            "SELECT s.lo, s.hi, CASE WHEN s.hi::numeric - s.lo::numeric + 1 <= s.n
                                 THEN (SELECT count(DISTINCT d.{key}) FROM {delta} d WHERE {window}) END::int8
                       FROM (SELECT min(d.{key})::int8 AS lo, max(d.{key})::int8 AS hi, count(*) AS n
                               FROM {delta} d WHERE {window}) s"
        );
        let counted = async {
            client
                .query_typed_one(&sql, &[])
                .await
                .ctx(|| format!("looking for a range of changed keys of {} on db {}", table.name, self.db_name(src)))
        };
        let ((), row) = try_join(raised, counted).await?;
        let read = |e| Error::Postgres { context: "reading a range of changed keys".into(), source: e };
        let (lo, hi, distinct): (Option<i64>, Option<i64>, Option<i64>) =
            (row.try_get(0).map_err(read)?, row.try_get(1).map_err(read)?, row.try_get(2).map_err(read)?);
        Ok(match (lo, hi, distinct) {
            // In i128: a span of the whole int8 range overflows i64.
            (Some(lo), Some(hi), Some(n)) if i128::from(hi) - i128::from(lo) + 1 == i128::from(n) => {
                Some(KeyRange { key, lo, hi })
            }
            _ => None,
        })
    }

    /// [`Cycle::apply_single_source`] for a window whose changed keys fill
    /// `range`: every source row in it is a changed row.
    async fn apply_range(&mut self, ti: TableId, src: DbId, receivers: &[DbId], range: KeyRange) -> Result<()> {
        let table = self.table(ti);
        let rows_from = format!("FROM {} t WHERE {}", table.quoted(), range.condition("t"));
        let step = std::time::Instant::now();
        // Pipelined as in `apply_single_source`: each receiver's DELETE is
        // sent before the COPY of the new rows, so it runs first.
        let (this, range) = (&*self, &range);
        let (deleted, inserted) = try_join(
            try_join_all(receivers.iter().map(|&d| async move {
                target::postgres::delete_range(this.client(d), this.db_name(d), table, range)
                    .await
                    .map_err(|e| this.table_error(e, ti))
            })),
            this.copy_rows(ti, src, &rows_from, receivers),
        )
        .await?;
        tracing::debug!(table = %table.name, lo = range.lo, hi = range.hi, ms = step.elapsed().as_millis() as u64, "changed range replaced");
        for ((&d, del), ins) in receivers.iter().zip(deleted).zip(inserted) {
            self.count(ti, d, del as i64, ins as i64);
        }
        Ok(())
    }

    /// Table `ti`'s changes into the foreign targets, from each source that
    /// changed it in this run's window: that source's changed keys are
    /// deleted there and its rows for them written. Each source already
    /// holds the settled rows (it received the winners above), so a key
    /// changed on two sources is written twice with the same row.
    pub(super) async fn apply_foreign(&mut self, ti: TableId, sources: &[DbId]) -> Result<()> {
        if self.foreign.is_empty() {
            return Ok(());
        }
        let table = self.table(ti);
        let all: Vec<DbId> = self.plan.foreign_ids().collect();
        let slots: Vec<&target::Slot> = self.foreign.iter().collect();
        let mut totals = vec![(0u64, 0u64); slots.len()];
        for &src in sources {
            let window = self.window(src)?;
            let keys_sql = format!(
                "COPY (SELECT DISTINCT {} FROM {} d WHERE {window}) TO STDOUT",
                table.key_list_of("d"),
                table.delta()
            );
            let deleted = target::feed::delete_keys(self.client(src), self.db_name(src), table, &keys_sql, &slots)
                .await
                .map_err(|e| self.table_error(e, ti))?;
            let rows_from = format!("FROM {} t WHERE {}", table.quoted(), table.changed_in("t", &window));
            let inserted = self.foreign_rows(ti, src, &rows_from, &all).await?;
            for ((total, del), ins) in totals.iter_mut().zip(deleted).zip(inserted) {
                total.0 += del;
                total.1 += ins;
            }
        }
        for (d, (del, ins)) in all.into_iter().zip(totals) {
            self.count(ti, d, del as i64, ins as i64);
        }
        Ok(())
    }

    /// Writes the rows `rows_from` selects on `from` into the foreign
    /// targets `receivers`: one COPY text read
    /// for those without a row transform, the transform's rows for the
    /// others. Returns the rows each took.
    pub(super) async fn foreign_rows(
        &self,
        ti: TableId,
        from: DbId,
        rows_from: &str,
        receivers: &[DbId],
    ) -> Result<Vec<u64>> {
        let table = self.table(ti);
        let (plain, transformed): (Vec<DbId>, Vec<DbId>) =
            receivers.iter().partition(|&&d| self.transform_for(ti, d).is_none());
        let mut counts: BTreeMap<DbId, u64> = BTreeMap::new();
        if !plain.is_empty() {
            let slots: Vec<&target::Slot> = plain.iter().map(|&d| self.foreign_target(d)).collect();
            let rows_sql = format!("COPY (SELECT {} {rows_from}) TO STDOUT", table.column_list_of("t"));
            let written = target::feed::write_rows(self.client(from), self.db_name(from), table, &rows_sql, &slots)
                .await
                .map_err(|e| self.table_error(e, ti))?;
            counts.extend(plain.iter().copied().zip(written));
        }
        for d in transformed {
            let sink = super::transform::RowSink::Foreign(self.foreign_target(d));
            let written = self.transformed_rows(ti, from, rows_from, d, &sink).await?;
            counts.insert(d, written);
        }
        Ok(receivers.iter().map(|d| counts.get(d).copied().unwrap_or(0)).collect())
    }
}
