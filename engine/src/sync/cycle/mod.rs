//! One attempt of one sync cycle (DESIGN.md, "One sync cycle"): open a
//! transaction on every db, read each source's changes between its cursor
//! and now, settle conflicts, delete the changed keys where they must be
//! replaced and COPY the winning rows in, set sequences, commit. The caller
//! advances the cursors after the commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::try_join_all;
use tokio_postgres::Client;

use super::connection::DbConnection;
use super::plan::{DbId, Plan, TableId};
use super::validate::TableSpec;
use crate::catalog::{ConflictRecord, ConflictStrategy, Role, TableCounts};
use crate::conflict::{Contender, Resolver};
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::Receiver;
use crate::pg::quote_literal;
use crate::plugin::hooks::HookPoint;
use crate::plugin::{HostDbs, LoadedPlugin};
use crate::sync::hooks::Hooks;

mod guarded;
mod merge;
mod plugged;
mod stream;
mod transform;
mod truncate;
mod whole;
mod window;

use window::{Probe, SourceWindow};

/// Where one source's cursor goes once every db committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCursor {
    pub db: DbId,
    pub snapshot: String,
}

/// What a successful attempt did.
#[derive(Debug, Default)]
pub struct CycleOutcome {
    pub tables: Vec<TableCounts>,
    pub inserted: i64,
    pub deleted: i64,
    pub conflicts: i64,
    pub conflict_log: Vec<ConflictRecord>,
    /// The snapshot each source's cursor advances to, once all committed.
    pub new_cursors: Vec<NewCursor>,
    /// Whether this attempt made the one-time full copy.
    pub did_onetimecopy: bool,
    /// Delta rows applied, when some window was cut short.
    pub window_rows: Option<i64>,
    /// Delta rows left for later runs, when some window was cut short.
    pub backlog: Option<i64>,
    /// Seconds spent per phase (begin, probe, full_copy, apply, merge, sequences, commit).
    pub phases: Vec<(String, f64)>,
}

pub struct Cycle<'a> {
    plan: &'a Plan,
    tables: &'a [TableSpec],
    /// Per db (by `DbId::index`): its connection.
    connections: &'a [DbConnection],
    writers: Writers,
    resolver: Resolver,
    /// Per db (by `DbId::index`): the window of this run, for sources.
    windows: Vec<Option<SourceWindow>>,
    /// Delta rows one run may take from a source (window_rows).
    window_limit: Option<u64>,
    /// Delta rows in each source's window, as the first probe counted them
    /// (before any cut; each table's count capped at the limit + 1): a
    /// large window is worth a look for a range of changed keys (see
    /// `stream.rs`).
    window_rows: BTreeMap<DbId, i64>,
    /// Rows changed, per table and db.
    counts: BTreeMap<(TableId, DbId), Counts>,
    conflicts: i64,
    conflict_log: Vec<ConflictRecord>,
    /// The conflict handler, when the strategy is `plugin:NAME`.
    conflict_plugin: Option<&'a LoadedPlugin>,
    /// What plugin calls of this run may reach.
    host_dbs: Arc<HostDbs>,
    /// Winners a plugin chose "always": per table, and for the whole run.
    table_winner: BTreeMap<TableId, DbId>,
    sync_winner: Option<DbId>,
    transforms: Vec<Transform<'a>>,
    hooks: Hooks<'a>,
    /// The lease token this run records on each source before reading
    /// (`ibex.fence()`); None records nothing.
    fence: Option<i64>,
    /// Per db, the tables' column fingerprint when they were checked
    /// (`introspect::shape_query`); empty checks nothing.
    shapes: &'a [String],
    /// Targets that are not PostgreSQL; `foreign[i]` is db `plan.foreign_id(i)`.
    foreign: Vec<crate::target::Slot>,
}

/// How long each phase of a run took: logged at verbose per step, and
/// summed per phase (a fixed set of names) into the run's record.
struct StepClock<'a> {
    sync: &'a str,
    last: std::time::Instant,
    phases: Vec<(String, f64)>,
}

impl<'a> StepClock<'a> {
    fn new(sync: &'a str) -> Self {
        StepClock { sync, last: std::time::Instant::now(), phases: Vec::new() }
    }

    /// Ends a step of `phase` (`detail` says which table, for the log only).
    fn step(&mut self, phase: &str, detail: &str) {
        let now = std::time::Instant::now();
        let took = now - self.last;
        tracing::debug!(sync = %self.sync, step = phase, detail, us = took.as_micros() as u64, "step");
        match self.phases.iter_mut().find(|(p, _)| p == phase) {
            Some((_, seconds)) => *seconds += took.as_secs_f64(),
            None => self.phases.push((phase.to_string(), took.as_secs_f64())),
        }
        self.last = now;
    }
}

/// Microseconds since 2000-01-01 UTC, PostgreSQL's timestamp unit: change
/// times travel between steps in it (and back into SQL by `pg_time`).
fn pg_micros(t: DateTime<Utc>) -> i64 {
    let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single().unwrap_or_default();
    (t - epoch).num_microseconds().unwrap_or(i64::MAX)
}

/// `pg_micros`' inverse, as a SQL timestamptz expression.
fn pg_time(micros: i64) -> String {
    format!("('2000-01-01 00:00:00+00'::timestamptz + {micros} * interval '1 microsecond')")
}

/// The first `columns` fields of a row, as raw (binary) key values.
fn read_key(row: &tokio_postgres::Row, columns: usize) -> Result<Vec<Vec<u8>>> {
    (0..columns).map(|i| Ok(row.try_get::<_, crate::pg::copy::RawValue>(i).ctx(|| "reading a key".into())?.0)).collect()
}

/// Names of per-connection temporary key tables, unique per table shape.
fn temp_name(kind: &str, table: &TableSpec) -> String {
    let parts = [table.name.schema.as_str(), table.name.name.as_str()]
        .into_iter()
        .chain(table.key.iter().flat_map(|c| [c.name.as_str(), c.type_sql.as_str()]));
    let hash = crate::names::fnv1a32(parts.flat_map(|p| p.bytes().chain([0])));
    format!("ibex_{kind}_{}_{hash:08x}", table.id)
}

/// Rows a run deleted and inserted in one table on one db.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    deleted: i64,
    inserted: i64,
}

/// A row transform attached to the run.
pub struct Transform<'a> {
    /// The relation id of the table it applies to; None: every table.
    pub table: Option<i32>,
    /// The db it applies to; None: every target.
    pub target: Option<DbId>,
    pub plugin: &'a LoadedPlugin,
}

/// The plugins a run calls.
pub struct RunPlugins<'a> {
    /// The conflict handler, when the strategy is `plugin:NAME`.
    pub conflict: Option<&'a LoadedPlugin>,
    pub transforms: Vec<Transform<'a>>,
    pub hooks: Hooks<'a>,
}

impl<'a> Cycle<'a> {
    pub fn new(
        plan: &'a Plan,
        tables: &'a [TableSpec],
        connections: &'a [DbConnection],
        writers: Writers,
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
        let host_dbs = HostDbs::new(
            plan.dbs.iter().zip(connections).map(|(d, c)| (d.name.clone(), d.conn.clone(), Some(c.client.clone()))),
        );
        Cycle {
            plan,
            tables,
            connections,
            writers,
            resolver: Resolver::new(strategy, contenders),
            windows: vec![None; plan.dbs.len()],
            window_limit,
            window_rows: BTreeMap::new(),
            counts: BTreeMap::new(),
            conflicts: 0,
            conflict_log: Vec::new(),
            conflict_plugin,
            host_dbs,
            table_winner: BTreeMap::new(),
            sync_winner: None,
            transforms,
            hooks,
            foreign: plan.foreign.iter().cloned().map(crate::target::Slot::new).collect(),
            fence: None,
            shapes: &[],
        }
    }

    /// A receiver of `COPY ... FROM STDIN` text `sql` on db `db`; `sql`
    /// must be the same text in every run (it is kept prepared).
    fn receiver(&self, db: DbId, sql: String) -> Receiver<'a> {
        Receiver { client: self.client(db), sql, prepared: Some(&self.connection(db).prepared) }
    }

    /// Checks, as each db's transaction opens, that the tables' columns
    /// are still as they were when `shapes` were read.
    pub fn expecting_shapes(mut self, shapes: &'a [String]) -> Self {
        self.shapes = shapes;
        self
    }

    /// Runs fenced by a sync lease token (see `daemon/lease.rs`).
    pub fn fenced(mut self, token: i64) -> Self {
        self.fence = Some(token);
        self
    }

    fn db_name(&self, db: DbId) -> &str {
        match self.plan.dbs.get(db.index()) {
            Some(d) => &d.name,
            None => self.foreign_slot(db).map_or("?", |f| f.db.name.as_str()),
        }
    }

    /// A foreign target's slot, for a db id past the PostgreSQL dbs.
    fn foreign_slot(&self, db: DbId) -> Option<&crate::target::Slot> {
        db.index().checked_sub(self.plan.dbs.len()).and_then(|i| self.foreign.get(i))
    }

    /// A foreign target's slot (`db` must be one of `plan.foreign_ids()`).
    fn foreign_target(&self, db: DbId) -> &crate::target::Slot {
        &self.foreign[db.index() - self.plan.dbs.len()]
    }

    /// A PostgreSQL db's connection.
    fn client(&self, db: DbId) -> &'a Client {
        &self.connection(db).client
    }

    /// A db's connection, with what is kept on it.
    fn connection(&self, db: DbId) -> &'a DbConnection {
        &self.connections[db.index()]
    }

    /// One of the run's tables.
    fn table(&self, ti: TableId) -> &'a TableSpec {
        &self.tables[ti.index()]
    }

    /// The run's tables, in order.
    fn table_ids(&self) -> impl Iterator<Item = TableId> + use<> {
        TableId::all(self.tables.len())
    }

    fn count(&mut self, table: TableId, db: DbId, deleted: i64, inserted: i64) {
        let entry = self.counts.entry((table, db)).or_default();
        entry.deleted += deleted;
        entry.inserted += inserted;
    }

    /// Runs the whole attempt. On error the caller drops the connections,
    /// which rolls back every database.
    pub async fn run(mut self, onetimecopy: i16) -> Result<CycleOutcome> {
        let mut clock = StepClock::new(&self.plan.sync.name);
        self.begin().await?;
        clock.step("begin", "");
        self.hooks.checkpoint(self.plan, &self.host_dbs, HookPoint::BeforeTxn).await?;
        self.hooks.checkpoint(self.plan, &self.host_dbs, HookPoint::BeforeCheckRows).await?;
        let mut probe = Probe::default();
        if !self.tables.is_empty() {
            probe = self.probe(self.window_limit).await?;
            self.window_rows = probe.window_rows.clone();
            if let Some(limit) = self.window_limit
                && probe.window_rows.values().any(|&rows| rows > limit as i64)
            {
                self.cut_windows(&probe, limit).await?;
                probe = self.probe(None).await?;
            }
        }
        clock.step("probe", "");
        crate::failpoint::hit("after_capture_read").await?;
        if self.resolver.needs_newest_per_db() {
            let newest = self.newest_per_source().await?;
            self.resolver.set_newest_per_db(&newest);
        }
        let kept = self.keep_after_truncates(&probe).await?;
        self.full_copies(onetimecopy, &probe).await?;
        self.reapply_after_truncates(&probe, &kept).await?;
        self.resynced(&probe).await?;
        self.foreign_full_copies(onetimecopy, &probe).await?;
        clock.step("full_copy", "");
        for ti in self.table_ids() {
            let name = &self.table(ti).name;
            if probe.truncated.contains_key(name) || probe.resync.contains_key(name) || onetimecopy == 1 {
                continue; // copied whole above
            }
            let flag = |m: &BTreeMap<DbId, Vec<bool>>, s: DbId| m.get(&s).is_some_and(|c| c[ti.index()]);
            let inside: Vec<DbId> = self.plan.sources().filter(|&s| flag(&probe.changed, s)).collect();
            if inside.is_empty() {
                continue;
            }
            // Sources whose later changes to this table must take part in settling its keys.
            let contenders: Vec<DbId> =
                self.plan.sources().filter(|&s| flag(&probe.changed, s) || flag(&probe.beyond, s)).collect();
            match contenders.len() {
                1 => self.apply_single_source(ti, contenders[0]).await?,
                _ => self.apply_merged(ti, &contenders).await?,
            }
            self.apply_foreign(ti, &inside).await?;
            clock.step(if contenders.len() == 1 { "apply" } else { "merge" }, &self.table(ti).name.to_string());
        }
        crate::failpoint::hit("mid_apply").await?;
        self.sync_sequences().await?;
        clock.step("sequences", "");
        self.hooks.checkpoint(self.plan, &self.host_dbs, HookPoint::AfterTxn).await?;
        self.commit().await?;
        clock.step("commit", "");
        let mut outcome = CycleOutcome {
            inserted: self.counts.values().map(|c| c.inserted).sum(),
            deleted: self.counts.values().map(|c| c.deleted).sum(),
            conflicts: self.conflicts,
            did_onetimecopy: onetimecopy != 0,
            phases: std::mem::take(&mut clock.phases),
            ..CycleOutcome::default()
        };
        for (&(ti, db), &Counts { deleted, inserted }) in &self.counts {
            outcome.tables.push(TableCounts {
                table: self.table(ti).name.to_string(),
                db: self.db_name(db).to_string(),
                deleted,
                inserted,
            });
        }
        outcome.conflict_log = std::mem::take(&mut self.conflict_log);
        for (db, window) in self.plan.db_ids().zip(&self.windows) {
            if let Some(w) = window {
                outcome.new_cursors.push(NewCursor { db, snapshot: w.next_cursor() });
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
        // Every table of the sync, also those a ddl=pause sync holds back:
        // a repair of one of them is what makes it check them again.
        let names: Vec<crate::pg::QualifiedName> = self.plan.tables.iter().map(|t| t.name.clone()).collect();
        let shape_query = crate::pg::introspect::shape_query(&names);
        let sync = self.plan.sync.name.clone();
        let results = try_join_all(self.plan.db_ids().map(|i| {
            let db = self.plan.db(i);
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
            if let Some(timeout) = lock_wait(params.lock_timeout, self.writers) {
                sql.push_str(&format!(" SET LOCAL lock_timeout = '{}ms';", timeout.as_millis()));
            }
            // After a serialization failure, hold writers off for this run:
            // taken before the snapshot (the first SELECT takes it), so
            // nothing can change under it.
            if self.writers == Writers::HeldOff && !locks.is_empty() {
                sql.push_str(&format!(" LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE;", locks.join(", ")));
            }
            if db.capture == crate::capture::CaptureMode::Wal {
                // Ahead of every row ibex writes in the transaction, so it
                // decodes ahead of them: the db's slot skips them (see
                // capture/wal.rs).
                sql.push_str(&format!(
                    " SELECT 1 WHERE pg_logical_emit_message(true, {}, {}) IS NULL;",
                    quote_literal(crate::capture::wal::MARKER_PREFIX),
                    quote_literal(&crate::capture::wal::marker_body(&sync, params.makedelta))
                ));
            }
            let source = db.role == Role::Source;
            let xids = self.connection(i).server.xids;
            if source && let Some(token) = self.fence {
                // Before the snapshot is read: a stale holder stops here,
                // and runs of one sync queue on the fence row's lock.
                sql.push_str(&format!(" SELECT ibex.fence({}, {token});", quote_literal(&sync)));
            }
            let expected = self.shapes.get(i.index()).cloned();
            if expected.is_some() {
                sql.push_str(&format!(" {shape_query};"));
            }
            if source {
                sql.push_str(&format!(
                    " SELECT {}::text, (SELECT snapshot::text FROM ibex.cursor WHERE sync = {});",
                    xids.current_snapshot(),
                    quote_literal(&sync)
                ));
            }
            let client = self.client(i);
            let sync = sync.clone();
            let name = db.name.clone();
            async move {
                let messages = client.simple_query(&sql).await.map_err(|e| begin_error(&name, &sync, e))?;
                let mut rows: Vec<_> = messages
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                        _ => None,
                    })
                    .collect();
                // Last: the snapshot and cursor (sources), before it the shape.
                let row = if source { rows.pop() } else { None };
                if let Some(expected) = expected
                    && rows.last().and_then(|r| r.get(0)) != Some(expected.as_str())
                {
                    return Err(Error::SchemaChanged(format!(
                        "the columns of a table of sync {sync} changed on db {name} since they were checked"
                    )));
                }
                if !source {
                    return Ok(None);
                }
                let snapshot = row.and_then(|r| r.get(0)).map(str::to_string);
                let cursor = row.and_then(|r| r.get(1)).map(str::to_string);
                match (snapshot, cursor) {
                    (Some(snapshot), Some(cursor)) => Ok::<_, Error>(Some(SourceWindow::new(&snapshot, &cursor, xids)?)),
                    _ => Err(Error::Sync(format!(
                        "sync {sync} has no cursor on db {name}: run `ibex validate {sync}` to install capture"
                    ))),
                }
            }
        }))
        .await?;
        self.windows = results;
        for slot in &self.foreign {
            slot.begin(&sync)?;
        }
        Ok(())
    }

    async fn commit(&self) -> Result<()> {
        // Foreign targets first: if one fails, nothing is committed anywhere
        // (a PostgreSQL commit failing after them is harmless: the next run
        // deletes and writes the same keys again).
        for slot in &self.foreign {
            slot.commit()?;
        }
        try_join_all(self.plan.db_ids().map(|d| async move {
            crate::failpoint::hit_after_first(d.index(), "between_commits").await?;
            // On a WAL db the end of ibex's marked transaction (see
            // capture/wal.rs): decoded, it ends the marker's reach.
            let commit = if self.plan.db(d).capture == crate::capture::CaptureMode::Wal {
                format!(
                    "SELECT 1 WHERE pg_logical_emit_message(true, {}, '') IS NULL; COMMIT",
                    quote_literal(crate::capture::wal::END_MARKER_PREFIX)
                )
            } else {
                "COMMIT".to_string()
            };
            self.client(d).batch_execute(&commit).await.ctx(|| format!("committing on db {}", self.plan.db(d).name))
        }))
        .await?;
        Ok(())
    }
}

/// How an attempt meets the sources' own writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Not held off, and a lock wait longer than OPTIMISTIC_LOCK_WAIT
    /// fails the attempt: a retry (with the writers held off) follows.
    FailFast,
    /// Not held off, and lock waits as `lock_timeout` says (no retry follows).
    Wait,
    /// Held off for the run: the tables are locked before the snapshot.
    HeldOff,
}

/// How long an attempt that fails fast waits for a lock. Under repeatable
/// read, a wait for a row a writer changed ends in a serialization failure
/// once the writer commits, so waiting gains nothing; and a writer that
/// takes the same rows in another order deadlocks with the apply, which
/// the server breaks only after deadlock_timeout (1 s by default).
pub const OPTIMISTIC_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The attempt's lock_timeout: the sync's, capped at OPTIMISTIC_LOCK_WAIT
/// when the attempt fails fast.
fn lock_wait(configured: Option<std::time::Duration>, writers: Writers) -> Option<std::time::Duration> {
    match writers {
        Writers::FailFast => Some(configured.map_or(OPTIMISTIC_LOCK_WAIT, |c| c.min(OPTIMISTIC_LOCK_WAIT))),
        Writers::Wait | Writers::HeldOff => configured,
    }
}

fn begin_error(db: &str, sync: &str, err: tokio_postgres::Error) -> Error {
    if err.code().is_some_and(|c| c.code() == crate::error::FENCED_SQLSTATE) {
        return Error::Fenced(format!(
            "db {db} refused this run: another daemon took over the lease of sync {sync}, so this one stops running it"
        ));
    }
    // Capture installed before leases existed: validate adds the fence.
    if err.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) {
        return Error::Sync(format!(
            "capture on db {db} predates sync leases: run `ibex validate {sync}` to update it"
        ));
    }
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
