//! Each source's window in a run, and the probe that reads what it holds:
//! which tables changed, which were truncated or must be copied whole, and
//! whether the window is larger than one run may take (then it is cut at a
//! transaction boundary, see `capture/window.rs`, and the rest waits for
//! the next run).

use std::collections::BTreeMap;

use futures_util::future::try_join_all;

use chrono::{DateTime, Utc};

use super::{Cycle, pg_micros};
use crate::capture::{Snapshot, Window, in_window_end, not_written_by, window_condition};
use crate::error::{Error, PgContext, Result};
use crate::pg::version::XidFlavour;
use crate::pg::{QualifiedName, quote_literal};
use crate::sync::plan::{DbId, TableId};

/// Herds up to this size have their windows counted by the probe itself.
const FOLD_COUNTS_UP_TO_TABLES: usize = 64;

/// One source's window in this run.
#[derive(Debug, Clone)]
pub(super) struct SourceWindow {
    /// The run's snapshot on this source.
    pub now: Snapshot,
    pub window: Window,
    /// How this source writes transaction ids and snapshots.
    pub xids: XidFlavour,
    /// Delta rows in the window and after it, when it was cut short.
    pub cut: Option<Cut>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Cut {
    pub rows: i64,
    pub backlog: i64,
}

impl SourceWindow {
    pub fn new(now: &str, cursor: &str, xids: XidFlavour) -> Result<SourceWindow> {
        Ok(SourceWindow { now: now.parse()?, window: Window::unbounded(cursor)?, xids, cut: None })
    }

    /// Where the cursor goes once every db committed.
    pub fn next_cursor(&self) -> String {
        self.window.end.as_ref().unwrap_or(&self.now).to_string()
    }
}

/// A table truncated on a source in the window: the latest truncate wins.
#[derive(Debug, Clone, Copy)]
pub(super) struct Truncated {
    pub source: DbId,
    /// Its change time, in microseconds since 2000-01-01 UTC.
    pub at: i64,
}

/// What the probe found, per source and table (flags by `TableId::index`).
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// Tables with changes in the (possibly cut) window.
    pub changed: BTreeMap<DbId, Vec<bool>>,
    /// Tables with changes past a cut window's end (only when several
    /// sources may contend for keys and some window was cut).
    pub beyond: BTreeMap<DbId, Vec<bool>>,
    pub truncated: BTreeMap<QualifiedName, Truncated>,
    /// Tables to copy whole from a source (their key changed with changes pending).
    pub resync: BTreeMap<QualifiedName, DbId>,
    /// Changed keys in each source's whole window, counted up to the limit + 1.
    pub window_rows: BTreeMap<DbId, i64>,
}

impl<'a> Cycle<'a> {
    fn source_window(&self, db: DbId) -> Result<&SourceWindow> {
        self.windows[db.index()]
            .as_ref()
            .ok_or_else(|| Error::Sync(format!("db {} has no window in this run", self.db_name(db))))
    }

    /// The rows of delta alias `d` this run applies from source `db`.
    pub(super) fn window(&self, db: DbId) -> Result<String> {
        let w = self.source_window(db)?;
        Ok(format!("{} AND {}", window_condition("d", &w.window, w.xids), not_written_by("d", &self.plan.sync.name)))
    }

    /// All rows committed after the cursor, also past a cut window's end.
    pub(super) fn whole_window(&self, db: DbId) -> Result<String> {
        let w = self.source_window(db)?;
        let whole = Window { cursor: w.window.cursor.clone(), end: None };
        Ok(format!("{} AND {}", window_condition("d", &whole, w.xids), not_written_by("d", &self.plan.sync.name)))
    }

    /// True for rows of alias `d` inside the (cut) window.
    pub(super) fn in_window(&self, db: DbId) -> Result<String> {
        let w = self.source_window(db)?;
        Ok(match &w.window.end {
            Some(end) => format!("({})", in_window_end("d", end, w.xids)),
            None => "true".into(),
        })
    }

    /// Several sources, and a window cut short: a key changed inside one
    /// source's window may also have changed past another's end. Those
    /// later versions must take part in settling the key, or applying it
    /// would overwrite them.
    pub(super) fn contended(&self) -> bool {
        self.plan.sources().count() > 1 && self.windows.iter().flatten().any(|w| w.window.is_bounded())
    }

    /// Per source, in one query each and all sources at once.
    pub(super) async fn probe(&self, count_limit: Option<u64>) -> Result<Probe> {
        // Counting in the probe saves a round trip, but a count costs more to
        // plan than an EXISTS: for large herds, count only the changed tables.
        let fold = count_limit.filter(|_| self.tables.len() <= FOLD_COUNTS_UP_TO_TABLES);
        let sources: Vec<DbId> = self.plan.sources().collect();
        let contended = self.contended();
        let sync = quote_literal(&self.plan.sync.name);
        let answers = try_join_all(sources.iter().map(|&src| {
            let sync = sync.clone();
            async move {
                let window = self.window(src)?;
                let whole = self.whole_window(src)?;
                // Per table, the changed keys in the window: counted up to the
                // limit + 1 when the run may cut windows, else 0 or 1.
                let changed: Vec<String> = self
                    .tables
                    .iter()
                    .map(|t| match fold {
                        Some(limit) => t.count_keys(&window, limit.saturating_add(1)),
                        None => format!("(EXISTS (SELECT 1 FROM {} d WHERE {window}))::int", t.delta()),
                    })
                    .collect();
                let beyond: Vec<String> = if contended {
                    self.tables
                        .iter()
                        .map(|t| format!("EXISTS (SELECT 1 FROM {} d WHERE {whole})", t.delta()))
                        .collect()
                } else {
                    Vec::new()
                };
                // Truncates and whole-table copies come back as parallel arrays (one row in all).
                let sql = format!(
                    "WITH x AS (SELECT schema_name, rel_name, max(changed_at) AS at
                                  FROM ibex.truncate_log d WHERE {window} GROUP BY 1, 2)
                     SELECT ARRAY[{}]::int8[], ARRAY[{}]::bool[], t.s, t.r, t.a,
                            (SELECT array_agg(schema_name) FROM ibex.resync WHERE sync = {sync}),
                            (SELECT array_agg(rel_name) FROM ibex.resync WHERE sync = {sync})
                       FROM (SELECT array_agg(schema_name ORDER BY schema_name, rel_name) AS s,
                                    array_agg(rel_name ORDER BY schema_name, rel_name) AS r,
                                    array_agg(at ORDER BY schema_name, rel_name) AS a FROM x) t",
                    changed.join(", "),
                    beyond.join(", "),
                );
                let row = self
                    .client(src)
                    .query_typed_one(&sql, &[])
                    .await
                    .ctx(|| format!("looking for changes on db {}", self.db_name(src)))?;
                let read = |e| Error::Postgres { context: "reading the probe".into(), source: e };
                Ok::<_, Error>((
                    row.try_get::<_, Vec<i64>>(0).map_err(read)?,
                    row.try_get::<_, Vec<bool>>(1).map_err(read)?,
                    row.try_get::<_, Option<Vec<String>>>(2).map_err(read)?.unwrap_or_default(),
                    row.try_get::<_, Option<Vec<String>>>(3).map_err(read)?.unwrap_or_default(),
                    row.try_get::<_, Option<Vec<DateTime<Utc>>>>(4)
                        .map_err(read)?
                        .unwrap_or_default()
                        .into_iter()
                        .map(pg_micros)
                        .collect::<Vec<_>>(),
                    row.try_get::<_, Option<Vec<String>>>(5).map_err(read)?.unwrap_or_default(),
                    row.try_get::<_, Option<Vec<String>>>(6).map_err(read)?.unwrap_or_default(),
                ))
            }
        }))
        .await?;
        let mut probe = Probe::default();
        for (&src, (rows, beyond, schemas, names, times, resync_schemas, resync_names)) in sources.iter().zip(answers) {
            if fold.is_some() {
                probe.window_rows.insert(src, rows.iter().sum());
            }
            probe.changed.insert(src, rows.iter().map(|&n| n > 0).collect());
            if contended {
                probe.beyond.insert(src, beyond);
            }
            for ((schema, name), at) in schemas.into_iter().zip(names).zip(times) {
                let name = QualifiedName::new(schema, name);
                if !self.tables.iter().any(|t| t.name == name) {
                    continue;
                }
                let entry = probe.truncated.entry(name).or_insert(Truncated { source: src, at });
                if at > entry.at {
                    *entry = Truncated { source: src, at };
                }
            }
            for (schema, name) in resync_schemas.into_iter().zip(resync_names) {
                let name = QualifiedName::new(schema, name);
                if self.tables.iter().any(|t| t.name == name) {
                    probe.resync.insert(name, src);
                }
            }
        }
        if let Some(limit) = count_limit.filter(|_| fold.is_none()) {
            probe.window_rows = self.count_windows(&probe, limit).await?;
        }
        Ok(probe)
    }

    /// Per source with changes: the changed keys of its changed tables,
    /// each counted up to `limit + 1` (all an empty or small window costs is
    /// the probe itself).
    async fn count_windows(&self, probe: &Probe, limit: u64) -> Result<BTreeMap<DbId, i64>> {
        let busy: Vec<(DbId, Vec<TableId>)> = probe
            .changed
            .iter()
            .map(|(&src, flags)| (src, self.table_ids().zip(flags).filter(|(_, f)| **f).map(|(ti, _)| ti).collect()))
            .filter(|(_, tables): &(DbId, Vec<TableId>)| !tables.is_empty())
            .collect();
        let counts = try_join_all(busy.iter().map(|(src, tables)| async move {
            let window = self.whole_window(*src)?;
            let parts: Vec<String> =
                tables.iter().map(|&ti| self.table(ti).count_keys(&window, limit.saturating_add(1))).collect();
            let row = self
                .client(*src)
                .query_typed_one(&format!("SELECT ({})::int8", parts.join(" + ")), &[])
                .await
                .ctx(|| format!("measuring the window on db {}", self.db_name(*src)))?;
            Ok::<_, Error>((*src, row.get::<_, i64>(0)))
        }))
        .await?;
        Ok(counts.into_iter().collect())
    }

    /// `SELECT d.txid FROM delta d WHERE <window> UNION ALL ...` over the
    /// tables of the sync that changed on one source.
    fn delta_union(&self, src: DbId, changed: &[bool]) -> Result<String> {
        let window = self.whole_window(src)?;
        Ok(self
            .tables
            .iter()
            .zip(changed)
            .filter(|(_, c)| **c)
            .map(|(t, _)| format!("SELECT d.txid FROM {} d WHERE {window}", t.delta()))
            .collect::<Vec<_>>()
            .join(" UNION ALL "))
    }

    /// Cuts the windows holding more than `limit` delta rows at the
    /// transaction where the limit is reached (a transaction is never
    /// split: one larger than the limit makes a window of its own).
    pub(super) async fn cut_windows(&mut self, probe: &Probe, limit: u64) -> Result<()> {
        let over: Vec<DbId> =
            probe.window_rows.iter().filter(|(_, rows)| **rows > limit as i64).map(|(&src, _)| src).collect();
        for src in over {
            let Some(changed) = probe.changed.get(&src) else { continue };
            let union = self.delta_union(src, changed)?;
            // One scan: rows per transaction, summed in txid order; the
            // cut falls on the transaction holding the limit's next row.
            // The ORDER BY names the numeric txid (`c.txid`): a bare `txid`
            // would sort by the text column of the same name, and past a
            // power of ten ("10000" < "9999") the cut took a far later
            // transaction than the limit allows.
            let row = self
                .client(src)
                .query_typed_opt(
                    &format!(
                        "WITH per AS (SELECT u.txid, count(*) AS n FROM ({union}) u GROUP BY u.txid),
                              cumulative AS (SELECT txid, n, sum(n) OVER (ORDER BY txid) AS upto FROM per)
                         SELECT c.txid::text AS cut_txid, (c.upto - c.n)::int8, c.upto::int8, (SELECT sum(n) FROM per)::int8
                           FROM cumulative c WHERE c.upto > {limit} ORDER BY c.txid LIMIT 1"
                    ),
                    &[],
                )
                .await
                .ctx(|| format!("finding where to cut the window on db {}", self.db_name(src)))?;
            let Some(row) = row else { continue };
            let read = |e| Error::Postgres { context: "reading a cut".into(), source: e };
            let text: String = row.try_get(0).map_err(read)?;
            let at: u64 = text.parse().map_err(|_| Error::Sync(format!("unreadable transaction id {text:?}")))?;
            let (before, through, total): (i64, i64, i64) =
                (row.try_get(1).map_err(read)?, row.try_get(2).map_err(read)?, row.try_get(3).map_err(read)?);
            // The first transaction alone is over the limit: take it whole.
            let (boundary, rows) = if before == 0 { (at + 1, through) } else { (at, before) };
            let Some(w) = self.windows[src.index()].as_mut() else { continue };
            let end = Snapshot::bounded(&w.window.cursor, &w.now, boundary);
            if end == w.now {
                continue;
            }
            w.window.end = Some(end);
            tracing::info!(
                sync = %self.plan.sync.name,
                db = self.db_name(src),
                rows,
                backlog = total - rows,
                "window larger than window_rows: applying it in parts"
            );
            if let Some(w) = self.windows[src.index()].as_mut() {
                w.cut = Some(Cut { rows, backlog: total - rows });
            }
        }
        Ok(())
    }
}
