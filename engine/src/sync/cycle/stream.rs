//! A table changed on one source: its keys and rows stream from it into
//! every other db without being decoded or held (binary COPY out of the
//! source piped into each target), and the helpers every apply path uses.

use std::collections::BTreeMap;

use futures_util::future::try_join_all;
use tokio_postgres::Client;

use super::{Cycle, temp_name};
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::{copy_fanout, copy_fanout_with_progress};
use crate::pg::quote_ident;
use crate::sync::progress::CopyProgress;
use crate::sync::validate::TableSpec;

impl<'a> Cycle<'a> {
    pub(super) fn table_error(&self, err: Error, ti: usize) -> Error {
        match err {
            Error::Postgres { context, source } => {
                Error::Postgres { context: format!("{context} (table {})", self.tables[ti].name), source }
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
        ti: usize,
        from: usize,
        rows_from: &str,
        receivers: &[usize],
    ) -> Result<Vec<u64>> {
        self.copy_rows_reporting(ti, from, rows_from, receivers, None).await
    }

    /// `copy_rows`, counting the rows of the undecoded COPY into `progress`.
    pub(super) async fn copy_rows_reporting(
        &self,
        ti: usize,
        from: usize,
        rows_from: &str,
        receivers: &[usize],
        mut progress: Option<&mut CopyProgress>,
    ) -> Result<Vec<u64>> {
        let table = &self.tables[ti];
        let (plain, transformed): (Vec<usize>, Vec<usize>) =
            receivers.iter().partition(|&&d| self.transform_for(ti, d).is_none());
        let mut counts: BTreeMap<usize, u64> = BTreeMap::new();
        if !plain.is_empty() {
            let out_sql =
                format!("COPY (SELECT {} {rows_from}) TO STDOUT{}", table.column_list_of("t"), table.copy_options());
            let in_sql =
                format!("COPY {} ({}) FROM STDIN{}", table.quoted(), table.column_list(), table.copy_options());
            let targets: Vec<(&Client, String)> = plain.iter().map(|&d| (&*self.clients[d], in_sql.clone())).collect();
            let forwarded = |piece: &[u8]| {
                if let Some(p) = progress.as_deref_mut() {
                    p.forwarded(piece);
                }
            };
            let rows = copy_fanout_with_progress(&self.clients[from], &out_sql, &targets, forwarded)
                .await
                .map_err(|e| self.table_error(e, ti))?;
            counts.extend(plain.iter().copied().zip(rows));
        }
        for d in transformed {
            counts.insert(d, self.copy_transformed(ti, from, rows_from, d).await?);
        }
        Ok(receivers.iter().map(|d| counts.get(d).copied().unwrap_or(0)).collect())
    }

    /// An empty key table on this connection. It lives as long as the
    /// connection; ON COMMIT DELETE ROWS empties it in place at every commit
    /// (TRUNCATE would make a new file each time), and within one run the
    /// merge empties it with DELETE before reusing it.
    pub(super) async fn ensure_temp(&self, db: usize, name: &str, table: &TableSpec) -> Result<()> {
        self.clients[db]
            .batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS; DELETE FROM pg_temp.{}",
                quote_ident(name),
                table.key_definitions(),
                quote_ident(name)
            ))
            .await
            .ctx(|| format!("preparing a key table on db {}", self.db_name(db)))
    }

    /// Deletes at `db` the keys loaded into its temp table `keys`.
    pub(super) async fn delete_loaded(&self, db: usize, keys: &str, table: &TableSpec, loaded: u64) -> Result<u64> {
        let client = &self.clients[db];
        if loaded == 0 {
            return Ok(0);
        }
        if loaded > 1000 {
            // Without statistics the planner guesses the key table is tiny.
            client
                .batch_execute(&format!("ANALYZE pg_temp.{}", quote_ident(keys)))
                .await
                .ctx(|| format!("analyzing keys on db {}", self.db_name(db)))?;
        }
        client
            .execute(
                &format!(
                    "DELETE FROM {} t USING pg_temp.{} k WHERE {}",
                    table.quoted(),
                    quote_ident(keys),
                    table.key_join("t", "k")
                ),
                &[],
            )
            .await
            .ctx(|| format!("deleting changed rows of {} on db {}", table.name, self.db_name(db)))
    }

    /// Only one source changed this table: no conflicts are possible, so
    /// keys and rows stream from it straight into every other db.
    pub(super) async fn apply_single_source(&mut self, ti: usize, src: usize) -> Result<()> {
        let table = &self.tables[ti];
        let receivers: Vec<usize> = self.plan.delta_dbs().filter(|&d| d != src).collect();
        if receivers.is_empty() {
            return Ok(());
        }
        let window = self.window(src)?;
        let keys = temp_name("del", table);
        try_join_all(receivers.iter().map(|&d| self.ensure_temp(d, &keys, table))).await?;
        let key_sql = format!(
            "COPY (SELECT DISTINCT {} FROM {} d WHERE {window}) TO STDOUT WITH (FORMAT binary)",
            table.key_list_of("d"),
            table.delta()
        );
        let load_sql =
            format!("COPY pg_temp.{} ({}) FROM STDIN WITH (FORMAT binary)", quote_ident(&keys), table.key_list());
        let targets: Vec<(&Client, String)> =
            receivers.iter().map(|&d| (&*self.clients[d], load_sql.clone())).collect();
        let step = std::time::Instant::now();
        let loaded = copy_fanout(&self.clients[src], &key_sql, &targets).await.map_err(|e| self.table_error(e, ti))?;
        tracing::debug!(table = %table.name, keys = loaded.first().copied().unwrap_or(0), ms = step.elapsed().as_millis() as u64, "changed keys loaded");
        // The source's current rows of the window's keys.
        let rows_from = format!(
            "FROM {} t WHERE ({}) IN (SELECT {} FROM {} d WHERE {window})",
            table.quoted(),
            table.key_list_of("t"),
            table.key_list_of("d"),
            table.delta()
        );
        if self.guarded() {
            for (&d, &n) in receivers.iter().zip(&loaded) {
                let delete = (n > 0).then_some(keys.as_str());
                let (del, ins) = self.apply_guarded(ti, d, delete, vec![(src, rows_from.clone())], &[]).await?;
                self.count(ti, d, del as i64, ins as i64);
            }
            return Ok(());
        }
        let step = std::time::Instant::now();
        let deleted =
            try_join_all(receivers.iter().zip(&loaded).map(|(&d, &n)| self.delete_loaded(d, &keys, table, n))).await?;
        tracing::debug!(table = %table.name, ms = step.elapsed().as_millis() as u64, "changed rows deleted");
        let step = std::time::Instant::now();
        let inserted = self.copy_rows(ti, src, &rows_from, &receivers).await?;
        tracing::debug!(table = %table.name, ms = step.elapsed().as_millis() as u64, "rows copied");
        for ((&d, del), ins) in receivers.iter().zip(deleted).zip(inserted) {
            self.count(ti, d, del as i64, ins as i64);
        }
        Ok(())
    }
}
