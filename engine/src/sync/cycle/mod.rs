//! One attempt of one sync cycle (DESIGN.md, "One sync cycle"): open a
//! transaction on every db, read each source's changes between its cursor
//! and now, settle conflicts, delete the changed keys where they must be
//! replaced and COPY the winning rows in, set sequences, commit. The caller
//! advances the cursors after the commits.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::try_join_all;
use tokio_postgres::Client;

use super::plan::Plan;
use super::validate::TableSpec;
use crate::catalog::{ConflictRecord, ConflictStrategy, Role, TableCounts};
use crate::conflict::{Contender, Decision, Resolver, Version};
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::{BinaryCopyBuilder, RawValue, copy_fanout, copy_in_bytes};
use crate::pg::{quote_ident, quote_literal};
use crate::plugin::convert::push_copy_row;
use crate::plugin::hooks::HookPoint;
use crate::plugin::{HostDbs, LoadedPlugin, Value};
use crate::sync::hooks::Hooks;

mod guarded;
mod plugged;
mod transform;
mod truncate;
mod window;

use window::{Probe, SourceWindow};

/// What a successful attempt did.
#[derive(Debug, Default)]
pub struct CycleOutcome {
    pub tables: Vec<TableCounts>,
    pub inserted: i64,
    pub deleted: i64,
    pub conflicts: i64,
    pub conflict_log: Vec<ConflictRecord>,
    /// The snapshot each source's cursor advances to, once all committed.
    pub new_cursors: Vec<(usize, String)>,
    /// Whether this attempt made the one-time full copy.
    pub did_onetimecopy: bool,
    /// Delta rows applied, when some window was cut short.
    pub window_rows: Option<i64>,
    /// Delta rows left for later runs, when some window was cut short.
    pub backlog: Option<i64>,
}

pub struct Cycle<'a> {
    plan: &'a Plan,
    tables: &'a [TableSpec],
    clients: &'a [Arc<Client>],
    lock_tables: bool,
    resolver: Resolver,
    /// Per db: the window of this run, for sources.
    windows: Vec<Option<SourceWindow>>,
    /// Delta rows one run may take from a source (window_rows).
    window_limit: Option<u64>,
    counts: BTreeMap<(usize, usize), (i64, i64)>,
    conflicts: i64,
    conflict_log: Vec<ConflictRecord>,
    /// The conflict handler, when the strategy is `plugin:NAME`.
    conflict_plugin: Option<&'a LoadedPlugin>,
    /// What plugin calls of this run may reach.
    host_dbs: Arc<HostDbs>,
    /// Winners a plugin chose "always": per table, and for the whole run.
    table_winner: BTreeMap<usize, usize>,
    sync_winner: Option<usize>,
    /// Row transforms: (relation id or any table, db index or any target, plugin).
    transforms: Vec<(Option<i32>, Option<usize>, &'a LoadedPlugin)>,
    hooks: Hooks<'a>,
}

/// Logs (at verbose) how long each step of a run took.
struct StepClock<'a> {
    sync: &'a str,
    last: std::time::Instant,
}

impl<'a> StepClock<'a> {
    fn new(sync: &'a str) -> Self {
        StepClock { sync, last: std::time::Instant::now() }
    }

    fn step(&mut self, what: &str) {
        let now = std::time::Instant::now();
        tracing::debug!(sync = %self.sync, step = what, us = (now - self.last).as_micros() as u64, "step");
        self.last = now;
    }
}

/// Microseconds since 2000-01-01 UTC, PostgreSQL's timestamp unit.
fn pg_micros(t: DateTime<Utc>) -> i64 {
    let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single().unwrap_or_default();
    (t - epoch).num_microseconds().unwrap_or(i64::MAX)
}

/// Names of per-connection temporary key tables, unique per table shape.
fn temp_name(kind: &str, table: &TableSpec) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for part in [table.name.schema.as_str(), table.name.name.as_str()]
        .into_iter()
        .chain(table.key.iter().flat_map(|c| [c.name.as_str(), c.type_sql.as_str()]))
    {
        for byte in part.as_bytes().iter().chain(b"\0") {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    format!("ibex_{kind}_{}_{hash:08x}", table.id)
}

/// A changed key read from one source, in key-byte order.
struct KeyRow {
    fields: Vec<Vec<u8>>,
    changed_at: i64,
    shown: String,
    /// Changed inside this run's (cut) window, not only after it.
    inside: bool,
}

struct Gather {
    db: usize,
    cursor: String,
    buffer: VecDeque<KeyRow>,
    exhausted: bool,
}

/// What happens to one changed key.
enum Apply {
    /// Every other db gets this db's row (or loses the key).
    From(usize),
    /// Every db gets this row (a plugin's merge).
    Merged(Vec<Value>),
    /// Left as it is everywhere.
    Skip,
}

/// Keys decided in the current chunk, with what to do with each.
type Chunk = Vec<(Vec<Vec<u8>>, Apply)>;

/// A conflict waiting for the plugin's batch.
struct Pending {
    fields: Vec<Vec<u8>>,
    versions: Vec<Version>,
    shown: String,
}

/// Conflicts handed to a plugin per call.
const PLUGIN_BATCH: usize = 1000;

/// The plugins a run calls.
pub struct RunPlugins<'a> {
    /// The conflict handler, when the strategy is `plugin:NAME`.
    pub conflict: Option<&'a LoadedPlugin>,
    /// Row transforms: (relation id or any table, db index or any target, plugin).
    pub transforms: Vec<(Option<i32>, Option<usize>, &'a LoadedPlugin)>,
    pub hooks: Hooks<'a>,
}

impl<'a> Cycle<'a> {
    pub fn new(
        plan: &'a Plan,
        tables: &'a [TableSpec],
        clients: &'a [Arc<Client>],
        lock_tables: bool,
        plugins: RunPlugins<'a>,
        window_limit: Option<u64>,
    ) -> Self {
        let RunPlugins { conflict: conflict_plugin, transforms, hooks } = plugins;
        let contenders = plan.dbs.iter().map(|d| Contender { name: d.name.clone(), priority: d.priority }).collect();
        // With a plugin, the built-in resolver is its on_error fallback.
        let strategy = match (conflict_plugin, &plan.sync.params.conflict_strategy) {
            (Some(p), _) => match &p.manifest.on_error {
                crate::plugin::OnError::Fallback(s) => s.clone(),
                crate::plugin::OnError::Abort => ConflictStrategy::Latest,
            },
            (None, s) => s.clone(),
        };
        let host_dbs =
            HostDbs::new(plan.dbs.iter().zip(clients).map(|(d, c)| (d.name.clone(), d.conn.clone(), Some(c.clone()))));
        Cycle {
            plan,
            tables,
            clients,
            lock_tables,
            resolver: Resolver::new(strategy, contenders),
            windows: vec![None; plan.dbs.len()],
            window_limit,
            counts: BTreeMap::new(),
            conflicts: 0,
            conflict_log: Vec::new(),
            conflict_plugin,
            host_dbs,
            table_winner: BTreeMap::new(),
            sync_winner: None,
            transforms,
            hooks,
        }
    }

    fn db_name(&self, db: usize) -> &str {
        &self.plan.dbs[db].name
    }

    fn count(&mut self, table: usize, db: usize, deleted: i64, inserted: i64) {
        let entry = self.counts.entry((table, db)).or_default();
        entry.0 += deleted;
        entry.1 += inserted;
    }

    /// Runs the whole attempt. On error the caller drops the connections,
    /// which rolls back every database.
    pub async fn run(mut self, onetimecopy: i16) -> Result<CycleOutcome> {
        let mut clock = StepClock::new(&self.plan.sync.name);
        self.begin().await?;
        clock.step("begin");
        self.hooks.checkpoint(self.plan, &self.host_dbs, HookPoint::BeforeTxn).await?;
        self.hooks.checkpoint(self.plan, &self.host_dbs, HookPoint::BeforeCheckRows).await?;
        let mut probe = Probe::default();
        if !self.tables.is_empty() {
            probe = self.probe(self.window_limit).await?;
            if let Some(limit) = self.window_limit
                && probe.window_rows.values().any(|&rows| rows > limit as i64)
            {
                self.cut_windows(&probe, limit).await?;
                probe = self.probe(None).await?;
            }
        }
        clock.step("probe");
        if self.resolver.needs_newest_per_db() {
            let newest = self.newest_per_source().await?;
            self.resolver.set_newest_per_db(&newest);
        }
        let kept = self.keep_after_truncates(&probe).await?;
        self.full_copies(onetimecopy, &probe).await?;
        self.reapply_after_truncates(&probe, &kept).await?;
        self.resynced(&probe).await?;
        for ti in 0..self.tables.len() {
            let name = &self.tables[ti].name;
            if probe.truncated.contains_key(name) || probe.resync.contains_key(name) || onetimecopy == 1 {
                continue; // copied whole above
            }
            let flag = |m: &std::collections::BTreeMap<usize, Vec<bool>>, s: usize| m.get(&s).is_some_and(|c| c[ti]);
            let inside: Vec<usize> = self.plan.sources().filter(|&s| flag(&probe.changed, s)).collect();
            if inside.is_empty() {
                continue;
            }
            // Sources whose later changes to this table must take part in settling its keys.
            let contenders: Vec<usize> =
                self.plan.sources().filter(|&s| flag(&probe.changed, s) || flag(&probe.beyond, s)).collect();
            match contenders.len() {
                1 => self.apply_single_source(ti, contenders[0]).await?,
                _ => self.apply_merged(ti, &contenders).await?,
            }
            clock.step(&format!("apply {}", self.tables[ti].name));
        }
        self.sync_sequences().await?;
        clock.step("sequences");
        self.hooks.checkpoint(self.plan, &self.host_dbs, HookPoint::AfterTxn).await?;
        self.commit().await?;
        clock.step("commit");
        let mut outcome = CycleOutcome {
            inserted: self.counts.values().map(|c| c.1).sum(),
            deleted: self.counts.values().map(|c| c.0).sum(),
            conflicts: self.conflicts,
            did_onetimecopy: onetimecopy != 0,
            ..CycleOutcome::default()
        };
        for (&(ti, db), &(deleted, inserted)) in &self.counts {
            outcome.tables.push(TableCounts {
                table: self.tables[ti].name.to_string(),
                db: self.db_name(db).to_string(),
                deleted,
                inserted,
            });
        }
        outcome.conflict_log = std::mem::take(&mut self.conflict_log);
        for (db, window) in self.windows.iter().enumerate() {
            if let Some(w) = window {
                outcome.new_cursors.push((db, w.next_cursor()));
            }
        }
        let cuts: Vec<_> = self.windows.iter().flatten().filter_map(|w| w.cut).collect();
        if !cuts.is_empty() {
            outcome.window_rows = Some(cuts.iter().map(|c| c.rows).sum());
            outcome.backlog = Some(cuts.iter().map(|c| c.backlog).sum());
        }
        Ok(outcome)
    }

    /// Opens the transaction on every db at once, one round trip each; on
    /// sources the same round trip reads the run's snapshot and the cursor.
    async fn begin(&mut self) -> Result<()> {
        let params = &self.plan.sync.params;
        let locks: Vec<String> = self.tables.iter().map(TableSpec::quoted).collect();
        let sync = self.plan.sync.name.clone();
        let results = try_join_all(self.plan.dbs.iter().enumerate().map(|(i, db)| {
            // synchronous_commit: the cursors advance after these commits, so
            // they must survive a crash of the db (even if its default is
            // off), or the rows would be lost for good.
            // ibex.origin and ibex.makedelta tell capture triggers that fire
            // for ibex's writes (makedelta tables) which sync wrote the rows.
            let mut sql = format!(
                "BEGIN ISOLATION LEVEL {}; SET LOCAL session_replication_role = replica; SET LOCAL synchronous_commit = on; SET LOCAL ibex.origin = {}; SET LOCAL ibex.makedelta = {};",
                params.isolation_level.as_sql(),
                quote_literal(&sync),
                if params.makedelta { "on" } else { "off" }
            );
            if let Some(timeout) = params.lock_timeout {
                sql.push_str(&format!(" SET LOCAL lock_timeout = '{}ms';", timeout.as_millis()));
            }
            // After a serialization failure, hold writers off for this run:
            // taken before the snapshot, so nothing can change under it.
            if self.lock_tables && !locks.is_empty() {
                sql.push_str(&format!(" LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE;", locks.join(", ")));
            }
            let source = db.role == Role::Source;
            if source {
                sql.push_str(&format!(
                    " SELECT pg_current_snapshot()::text, (SELECT snapshot::text FROM ibex.cursor WHERE sync = {});",
                    quote_literal(&sync)
                ));
            }
            let client = &self.clients[i];
            let sync = sync.clone();
            let name = db.name.clone();
            async move {
                let messages = client.simple_query(&sql).await.map_err(|e| begin_error(&name, &sync, e))?;
                if !source {
                    return Ok(None);
                }
                let row = messages.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                    _ => None,
                });
                let snapshot = row.and_then(|r| r.get(0)).map(str::to_string);
                let cursor = row.and_then(|r| r.get(1)).map(str::to_string);
                match (snapshot, cursor) {
                    (Some(snapshot), Some(cursor)) => Ok::<_, Error>(Some(SourceWindow::new(&snapshot, &cursor)?)),
                    _ => Err(Error::Sync(format!(
                        "sync {sync} has no cursor on db {name}: run `ibex validate {sync}` to install capture"
                    ))),
                }
            }
        }))
        .await?;
        self.windows = results;
        Ok(())
    }

    async fn newest_per_source(&self) -> Result<Vec<(usize, i64)>> {
        let mut out = Vec::new();
        for src in self.plan.sources() {
            let window = self.window(src)?;
            let parts: Vec<String> = self
                .tables
                .iter()
                .map(|t| format!("(SELECT max(d.changed_at) FROM {} d WHERE {window})", t.delta()))
                .collect();
            if parts.is_empty() {
                continue;
            }
            let row = self.clients[src]
                .query_one(&format!("SELECT greatest({})", parts.join(", ")), &[])
                .await
                .ctx(|| format!("finding the newest change on db {}", self.db_name(src)))?;
            if let Some(at) = row.get::<_, Option<DateTime<Utc>>>(0) {
                out.push((src, pg_micros(at)));
            }
        }
        Ok(out)
    }

    /// Whole-table copies: into fullcopy dbs every run, for onetimecopy,
    /// and after a TRUNCATE on a source (the truncating source wins the table).
    async fn full_copies(&mut self, onetimecopy: i16, probe: &Probe) -> Result<()> {
        let primary = self.plan.primary_source();
        let fullcopy: Vec<usize> = self.plan.fullcopy_dbs().collect();
        // (table, from) -> receivers
        let mut jobs: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (ti, table) in self.tables.iter().enumerate() {
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
                        let row = self.clients[d]
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
        let mut per_db: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (&(ti, _), receivers) in &jobs {
            for &d in receivers {
                per_db.entry(d).or_default().push(ti);
            }
        }
        for (&d, tis) in &per_db {
            let names: Vec<String> = tis.iter().map(|&ti| self.tables[ti].quoted()).collect();
            self.clients[d]
                .batch_execute(&format!("TRUNCATE {}", names.join(", ")))
                .await
                .ctx(|| format!("emptying {} on db {} for a full copy", names.join(", "), self.db_name(d)))?;
        }
        for ((ti, from), receivers) in jobs {
            let table = &self.tables[ti];
            tracing::info!(sync = %self.plan.sync.name, table = %table.name, from = self.db_name(from), to = receivers.len(), "full copy");
            let rows = self.copy_rows(ti, from, &format!("FROM {} t", table.quoted()), &receivers).await?;
            for (&d, n) in receivers.iter().zip(rows) {
                self.count(ti, d, 0, n as i64);
                if self.plan.settings.analyze_after_copy {
                    self.clients[d]
                        .batch_execute(&format!("ANALYZE {}", self.tables[ti].quoted()))
                        .await
                        .ctx(|| format!("analyzing {} on db {}", self.tables[ti].name, self.db_name(d)))?;
                }
            }
        }
        Ok(())
    }

    fn table_error(&self, err: Error, ti: usize) -> Error {
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
    async fn copy_rows(&self, ti: usize, from: usize, rows_from: &str, receivers: &[usize]) -> Result<Vec<u64>> {
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
            let rows =
                copy_fanout(&self.clients[from], &out_sql, &targets).await.map_err(|e| self.table_error(e, ti))?;
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
    async fn ensure_temp(&self, db: usize, name: &str, table: &TableSpec) -> Result<()> {
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
    async fn delete_loaded(&self, db: usize, keys: &str, table: &TableSpec, loaded: u64) -> Result<u64> {
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
    async fn apply_single_source(&mut self, ti: usize, src: usize) -> Result<()> {
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
        if self.guarded() {
            let rows_from = format!(
                "FROM {} t WHERE ({}) IN (SELECT {} FROM {} d WHERE {window})",
                table.quoted(),
                table.key_list_of("t"),
                table.key_list_of("d"),
                table.delta()
            );
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
        let rows_from = format!(
            "FROM {} t WHERE ({}) IN (SELECT {} FROM {} d WHERE {window})",
            table.quoted(),
            table.key_list_of("t"),
            table.key_list_of("d"),
            table.delta()
        );
        let inserted = self.copy_rows(ti, src, &rows_from, &receivers).await?;
        tracing::debug!(table = %table.name, ms = step.elapsed().as_millis() as u64, "rows copied");
        for ((&d, del), ins) in receivers.iter().zip(deleted).zip(inserted) {
            self.count(ti, d, del as i64, ins as i64);
        }
        Ok(())
    }

    /// Several sources changed this table: merge their changed keys in
    /// key order, settle the keys changed on more than one, and apply in
    /// chunks of `chunk_keys` so memory stays flat however large the window.
    async fn apply_merged(&mut self, ti: usize, sources: &[usize]) -> Result<()> {
        let table = &self.tables[ti];
        let render = if table.key.len() == 1 {
            format!("{}::text", table.key_list_of("d"))
        } else {
            format!("ROW({})::text", table.key_list_of("d"))
        };
        // Ordered by the keys' binary form: the same order on every db,
        // whatever its collation, and the order Rust compares bytes in.
        let order: Vec<String> =
            table.key.iter().map(|c| format!("{}(d.{})", c.send_fn, quote_ident(&c.name))).collect();
        let mut gathers = Vec::new();
        // When a window was cut short, changes past its end are read too:
        // they take part in settling keys changed inside, never alone.
        let contended = self.contended();
        for (n, &src) in sources.iter().enumerate() {
            let cursor = format!("ibex_gather_{n}");
            let window = if contended { self.whole_window(src)? } else { self.window(src)? };
            let inside = if contended { self.in_window(src)? } else { "true".into() };
            self.clients[src]
                .batch_execute(&format!(
                    "DECLARE {cursor} NO SCROLL CURSOR FOR SELECT {}, max(d.changed_at), {render}, bool_or({inside}) FROM {} d WHERE {window} GROUP BY {} ORDER BY {}",
                    table.key_list_of("d"),
                    table.delta(),
                    table.key_list_of("d"),
                    order.join(", ")
                ))
                .await
                .ctx(|| format!("reading changed keys of {} on db {}", table.name, self.db_name(src)))?;
            gathers.push(Gather { db: src, cursor, buffer: VecDeque::new(), exhausted: false });
        }
        let chunk_keys = self.plan.settings.chunk_keys;
        let fetch = chunk_keys.clamp(100, 10_000);
        let mut abort_keys: Vec<String> = Vec::new();
        let mut chunk: Chunk = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            for g in gathers.iter_mut() {
                if g.buffer.is_empty() && !g.exhausted {
                    self.fetch(g, ti, fetch).await?;
                }
            }
            let Some(min) = gathers.iter().filter_map(|g| g.buffer.front()).map(|k| &k.fields).min().cloned() else {
                break;
            };
            let mut versions = Vec::new();
            let mut shown = String::new();
            let mut inside = false;
            for g in gathers.iter_mut() {
                if g.buffer.front().is_some_and(|k| k.fields == min)
                    && let Some(k) = g.buffer.pop_front()
                {
                    versions.push(Version { db: g.db, changed_at: k.changed_at });
                    shown = k.shown;
                    inside |= k.inside;
                }
            }
            if !inside {
                continue; // changed only past the windows' ends: a later run's
            }
            if versions.len() == 1 {
                // Once the run is failing for abort, only more keys to list matter.
                if abort_keys.is_empty() {
                    chunk.push((min, Apply::From(versions[0].db)));
                }
            } else {
                self.conflicts += 1;
                if self.conflict_plugin.is_some() {
                    pending.push(Pending { fields: min, versions, shown });
                    if pending.len() >= PLUGIN_BATCH {
                        self.decide_with_plugin(ti, std::mem::take(&mut pending), &mut chunk).await?;
                    }
                } else {
                    match self.resolver.decide(&versions) {
                        Ok(decision) => {
                            self.log_conflict(ti, &shown, &versions, decision);
                            let apply = match decision {
                                Decision::Winner { db, .. } => Apply::From(db),
                                Decision::Skip => Apply::Skip,
                            };
                            chunk.push((min, apply));
                        }
                        Err(_) => {
                            if abort_keys.len() < 20 {
                                let dbs: Vec<&str> = versions.iter().map(|v| self.db_name(v.db)).collect();
                                abort_keys.push(format!("{shown} ({})", dbs.join(", ")));
                            }
                        }
                    }
                }
            }
            // Applying as we go is safe under abort: a conflict found later
            // fails the run and rolls every db back.
            if chunk.len() >= chunk_keys && abort_keys.is_empty() {
                self.flush(ti, std::mem::take(&mut chunk)).await?;
            }
        }
        if !pending.is_empty() {
            self.decide_with_plugin(ti, pending, &mut chunk).await?;
        }
        if !abort_keys.is_empty() {
            return Err(Error::Sync(format!(
                "conflict_strategy=abort: {} key{} of table {} changed on more than one source, so nothing was applied: {}",
                self.conflicts,
                if self.conflicts == 1 { "" } else { "s" },
                self.tables[ti].name,
                abort_keys.join("; ")
            )));
        }
        if !chunk.is_empty() {
            self.flush(ti, chunk).await?;
        }
        for g in &gathers {
            self.clients[g.db]
                .batch_execute(&format!("CLOSE {}", g.cursor))
                .await
                .ctx(|| format!("closing a cursor on db {}", self.db_name(g.db)))?;
        }
        Ok(())
    }

    async fn fetch(&self, g: &mut Gather, ti: usize, n: usize) -> Result<()> {
        let nkeys = self.tables[ti].key.len();
        let rows = self.clients[g.db]
            .query(&format!("FETCH FORWARD {n} FROM {}", g.cursor), &[])
            .await
            .ctx(|| format!("reading changed keys of {} on db {}", self.tables[ti].name, self.db_name(g.db)))?;
        if rows.len() < n {
            g.exhausted = true;
        }
        for row in rows {
            let mut fields = Vec::with_capacity(nkeys);
            for i in 0..nkeys {
                fields.push(row.try_get::<_, RawValue>(i).ctx(|| "reading a key".into())?.0);
            }
            g.buffer.push_back(KeyRow {
                fields,
                changed_at: pg_micros(row.try_get(nkeys).ctx(|| "reading a change time".into())?),
                shown: row.try_get(nkeys + 1).ctx(|| "reading a key".into())?,
                inside: row.try_get(nkeys + 2).ctx(|| "reading a key".into())?,
            });
        }
        Ok(())
    }

    fn log_conflict(&mut self, ti: usize, shown: &str, versions: &[Version], decision: Decision) {
        if self.conflict_log.len() >= self.plan.settings.conflict_log_limit {
            return;
        }
        let (winner, reason) = match decision {
            Decision::Winner { db, reason } => (Some(self.db_name(db).to_string()), reason.as_str().to_string()),
            Decision::Skip => (None, "skipped (conflict_strategy=skip)".to_string()),
        };
        self.conflict_log.push(ConflictRecord {
            table: self.tables[ti].name.to_string(),
            key: shown.to_string(),
            dbs: versions.iter().map(|v| self.db_name(v.db).to_string()).collect(),
            winner,
            reason,
        });
    }

    /// Applies one chunk of decided keys: every db deletes the keys it did
    /// not win, then each winner's rows are copied to every other db.
    async fn flush(&mut self, ti: usize, chunk: Chunk) -> Result<()> {
        let table = &self.tables[ti];
        let dbs: Vec<usize> = self.plan.delta_dbs().collect();
        let del = temp_name("del", table);
        let send = temp_name("send", table);
        let mut to_delete: Vec<BinaryCopyBuilder> = dbs.iter().map(|_| BinaryCopyBuilder::new()).collect();
        let mut to_send: BTreeMap<usize, BinaryCopyBuilder> = BTreeMap::new();
        let mut merged: Vec<&[Value]> = Vec::new();
        for (fields, apply) in &chunk {
            let winner = match apply {
                Apply::From(w) => Some(*w),
                Apply::Merged(row) => {
                    merged.push(row);
                    None
                }
                Apply::Skip => continue,
            };
            for (slot, &d) in dbs.iter().enumerate() {
                if Some(d) != winner {
                    to_delete[slot].push_row(fields.iter().map(Vec::as_slice));
                }
            }
            if let Some(w) = winner {
                to_send.entry(w).or_default().push_row(fields.iter().map(Vec::as_slice));
            }
        }

        let load_sql = |name: &str| {
            format!("COPY pg_temp.{} ({}) FROM STDIN WITH (FORMAT binary)", quote_ident(name), table.key_list())
        };
        if self.guarded() {
            // Each db's deletes and copies run together under its savepoint.
            for (&d, data) in dbs.iter().zip(to_delete) {
                self.ensure_temp(d, &del, table).await?;
                if data.rows() > 0 {
                    copy_in_bytes(&self.clients[d], &load_sql(&del), data.finish()).await?;
                }
            }
            let winners: Vec<usize> = to_send.keys().copied().collect();
            for (w, data) in to_send {
                self.ensure_temp(w, &send, table).await?;
                copy_in_bytes(&self.clients[w], &load_sql(&send), data.finish()).await?;
            }
            let rows_from = format!(
                "FROM {} t JOIN pg_temp.{} k ON {} WHERE true",
                table.quoted(),
                quote_ident(&send),
                table.key_join("t", "k")
            );
            for &d in &dbs {
                let copies: Vec<(usize, String)> =
                    winners.iter().filter(|&&w| w != d).map(|&w| (w, rows_from.clone())).collect();
                let (deleted, inserted) = self.apply_guarded(ti, d, Some(&del), copies, &merged).await?;
                self.count(ti, d, deleted as i64, inserted as i64);
            }
            return Ok(());
        }
        let this = &*self;
        let deleted = try_join_all(dbs.iter().zip(to_delete).map(|(&d, data)| {
            let load = load_sql(&del);
            let del = del.clone();
            async move {
                this.ensure_temp(d, &del, table).await?;
                let rows = data.rows();
                if rows == 0 {
                    return Ok(0);
                }
                copy_in_bytes(&this.clients[d], &load, data.finish()).await?;
                this.delete_loaded(d, &del, table, rows).await
            }
        }))
        .await?;
        for (&d, n) in dbs.iter().zip(deleted) {
            self.count(ti, d, n as i64, 0);
        }
        for (w, data) in to_send {
            self.ensure_temp(w, &send, table).await?;
            copy_in_bytes(&self.clients[w], &load_sql(&send), data.finish()).await?;
            let receivers: Vec<usize> = dbs.iter().copied().filter(|&d| d != w).collect();
            if receivers.is_empty() {
                continue;
            }
            let rows_from = format!(
                "FROM {} t JOIN pg_temp.{} k ON {}",
                table.quoted(),
                quote_ident(&send),
                table.key_join("t", "k")
            );
            let inserted = self.copy_rows(ti, w, &rows_from, &receivers).await?;
            for (&d, n) in receivers.iter().zip(inserted) {
                self.count(ti, d, 0, n as i64);
            }
        }
        if !merged.is_empty() {
            // Merged rows exist nowhere yet: every db gets them, in COPY's
            // text format, which reads back every type exactly.
            let mut text = String::new();
            for row in &merged {
                push_copy_row(&mut text, row);
            }
            let sql = format!("COPY {} ({}) FROM STDIN", table.quoted(), table.column_list());
            let data = bytes::Bytes::from(text);
            let inserted = try_join_all(dbs.iter().map(|&d| copy_in_bytes(&self.clients[d], &sql, data.clone())))
                .await
                .map_err(|e| self.table_error(e, ti))?;
            for (&d, n) in dbs.iter().zip(inserted) {
                self.count(ti, d, 0, n as i64);
            }
        }
        Ok(())
    }

    /// Every db's sequences go up to the highest value any source has.
    async fn sync_sequences(&self) -> Result<()> {
        for seq in &self.plan.sequences {
            let mut values = Vec::new();
            for (d, db) in self.plan.dbs.iter().enumerate() {
                let row = self.clients[d]
                    .query_one(&format!("SELECT last_value, is_called FROM {}", seq.quoted()), &[])
                    .await
                    .ctx(|| format!("reading sequence {seq} on db {}", db.name))?;
                let (value, called): (i64, bool) = (row.get(0), row.get(1));
                // The value the next nextval() hands out is what we compare.
                let next = if called { value.saturating_add(1) } else { value };
                values.push((next, value, called));
            }
            let Some(&(best_next, best_value, best_called)) =
                self.plan.sources().map(|s| &values[s]).max_by_key(|(next, _, _)| *next)
            else {
                continue;
            };
            for (d, &(next, _, _)) in values.iter().enumerate() {
                if next < best_next {
                    self.clients[d]
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

    async fn commit(&self) -> Result<()> {
        try_join_all(self.plan.dbs.iter().enumerate().map(|(d, db)| async move {
            self.clients[d].batch_execute("COMMIT").await.ctx(|| format!("committing on db {}", db.name))
        }))
        .await?;
        Ok(())
    }
}

fn begin_error(db: &str, sync: &str, err: tokio_postgres::Error) -> Error {
    if err.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
        return Error::Sync(format!("capture is not installed on db {db}: run `ibex validate {sync}`"));
    }
    if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        return Error::Sync(format!(
            "db {db}: {}: ibex applies rows with session_replication_role = replica, which needs a superuser or (PostgreSQL 15+) GRANT SET ON PARAMETER session_replication_role TO the ibex user",
            crate::error::describe_pg(&err)
        ));
    }
    Error::Postgres { context: format!("starting the run on db {db}"), source: err }
}
