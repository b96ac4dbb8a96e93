//! The KID: runs cycles of one sync. It keeps its connections between runs
//! (kidsalive), retries a cycle after serialization failures, deadlocks and
//! lock timeouts (locking the tables on the retry so it converges; the next
//! run starts unlocked again), halves its window when a run outlasts
//! run_timeout (and doubles it back after quick runs), records every run in
//! the catalog and announces it with `ibex_syncdone_<sync>`.
//!
//! Over 500 lines because the KID owns the state every run shares (its
//! connections, table checks, held tables, lease token, loaded plugins);
//! the decisions live elsewhere: the cycle in `cycle/`, what waits under
//! a ddl policy in `pause.rs`, the checks in `validate.rs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::try_join_all;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::connection::DbConnection;
use super::cycle::{Cycle, CycleOutcome, NewCursor, RunPlugins, Transform, Writers};
use super::plan::{DbId, Plan};
use super::validate::{self, TableSpec};
use crate::capture::wal::SlotAdvance;
use crate::catalog::sync::DdlPolicy;
use crate::catalog::{self, RunRecord, RunState};
use crate::error::{Error, PgContext, Result};
use crate::failpoint;
use crate::pg;
use crate::pg::prepared::Prepared;
use crate::plugin::hooks::HookPoint;
use crate::plugin::{LoadedPlugin, PluginRuntime};
use crate::sync::hooks::Hooks;

/// The channel a finished run is announced on; the payload is the run id.
pub fn syncdone_channel(sync: &str) -> String {
    format!("ibex_syncdone_{sync}")
}

/// The application name of a KID's sessions, by which `ibex status` finds
/// them in pg_stat_activity (a user's own application_name takes
/// precedence, see `pg::open`).
pub fn application_name(sync: &str) -> String {
    format!("ibex kid {sync}")
}

pub struct Kid {
    plan: Plan,
    /// Per db (plan order): its connection, kept between runs.
    connections: Vec<DbConnection>,
    specs: Option<Vec<TableSpec>>,
    /// Plugins of the plan, loaded (by name; reloaded when the sha changes).
    plugins: std::collections::HashMap<String, LoadedPlugin>,
    /// Delta rows a run takes from a source: window_rows, halved after a
    /// run that outlasted run_timeout, doubled back after quick runs.
    window_limit: u64,
    /// Backends of connections dropped since (by db name): ended at the
    /// next connect, in case the server has not noticed (see `end_dropped`).
    dropped: Vec<(String, pg::activity::Backend)>,
    /// The lease token a daemon holds for this sync; None outside a daemon,
    /// where each run fences with the catalog's current token.
    lease: Option<i64>,
    /// The token this run fences with on the sources (`ibex.fence()`).
    fence: i64,
    /// Per db, the fingerprint of the tables' columns when `specs` were
    /// made; each run checks it (see `introspect::shape_query`).
    shapes: Vec<String>,
    /// Sources holding delta tables of an earlier ibex, as last checked
    /// (see `validate::Checked::earlier_layout`).
    earlier_layout: Vec<String>,
    /// Tables held back by the ddl policy (see `pause.rs`), as last checked.
    paused: Vec<catalog::paused::PausedTable>,
    /// What the catalog last heard of `paused` (None: not written yet).
    paused_recorded: Option<Vec<catalog::paused::PausedTable>>,
    /// Runs left that hold writers off from their first attempt, after a
    /// run whose optimistic attempt met a write conflict.
    held_off_runs: u32,
    /// How long decoding this run's sources with WAL capture took, once
    /// done (see `decode_wal`): a retry does not decode again.
    wal_decoded: Option<Duration>,
    /// The WAL capture slots to advance once this run committed.
    slot_advances: Vec<(DbId, SlotAdvance)>,
}

/// The smallest window a timeout can shrink it to.
const MIN_WINDOW_ROWS: u64 = 1000;

/// Runs that hold writers off from the start after a write conflict: under
/// steady conflicts (writers on the same rows as the apply, as with
/// pgbench's one-row branches table on several masters) almost every
/// optimistic attempt fails and is wasted; every HELD_OFF_RUNS + 1-th run
/// tries again without holding them off.
const HELD_OFF_RUNS: u32 = 8;

/// How long a failed attempt's ROLLBACK may take before its connections
/// are dropped instead.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(2);

impl Kid {
    pub fn new(plan: Plan) -> Self {
        let window_limit = plan.settings.window_rows;
        Kid {
            plan,
            connections: Vec::new(),
            specs: None,
            plugins: Default::default(),
            window_limit,
            dropped: Vec::new(),
            lease: None,
            fence: 0,
            shapes: Vec::new(),
            earlier_layout: Vec::new(),
            paused: Vec::new(),
            paused_recorded: None,
            held_off_runs: 0,
            wal_decoded: None,
            slot_advances: Vec::new(),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Tables the ddl policy holds back, as the last check found them.
    pub fn paused(&self) -> &[catalog::paused::PausedTable] {
        &self.paused
    }

    /// Replaces the plan (after a catalog change); connections are redone.
    pub fn set_plan(&mut self, plan: Plan) {
        self.window_limit = plan.settings.window_rows;
        self.plan = plan;
        self.disconnect();
        self.specs = None;
    }

    /// Runs from now on fence with this lease token (a daemon took the
    /// sync's lease, see `daemon/lease.rs`).
    pub fn hold_lease(&mut self, token: i64) {
        self.lease = Some(token);
    }

    /// Drops the connections; each tells its server it is leaving, so
    /// their backends end by themselves.
    pub fn disconnect(&mut self) {
        self.connections.clear();
    }

    /// Rolls back a failed attempt on every connection, keeping them for
    /// the retry (a reconnect costs more than the attempt). A connection
    /// that does not roll back within ROLLBACK_TIMEOUT (a statement of the
    /// attempt still waiting on a lock) is abandoned with the rest.
    async fn roll_back(&mut self) {
        let clients: Vec<Arc<Client>> = self.connections.iter().map(|c| c.client.clone()).collect();
        let rolled = tokio::time::timeout(
            ROLLBACK_TIMEOUT,
            try_join_all(clients.iter().map(|c| async move { c.batch_execute("ROLLBACK").await })),
        )
        .await;
        if !matches!(rolled, Ok(Ok(_))) {
            tracing::info!(sync = %self.plan.sync.name, "a connection did not roll back; reconnecting");
            self.abandon();
        }
    }

    /// Drops connections that may not be able to say so (a run that
    /// outlasted run_timeout, a failed run, a lost connection): their
    /// backends are ended at the next connect (`end_dropped`).
    fn abandon(&mut self) {
        let names = self.plan.dbs.iter().map(|db| db.name.clone());
        self.dropped.extend(names.zip(self.connections.drain(..).map(|c| c.backend)));
    }

    fn connected(&self) -> bool {
        self.connections.len() == self.plan.dbs.len() && self.connections.iter().all(|c| !c.client.is_closed())
    }

    async fn connect(&mut self) -> Result<()> {
        if self.connected() {
            return Ok(());
        }
        if !self.connections.is_empty() {
            // One of them was lost.
            self.abandon();
        }
        let app = application_name(&self.plan.sync.name);
        let connections = try_join_all(self.plan.dbs.iter().map(|db| {
            let app = app.clone();
            async move {
                let client = pg::connect(&db.conn, &app).await.map_err(|err| match err {
                    Error::Connect { target, reason } => {
                        Error::Connect { target: format!("db {} ({target})", db.name), reason }
                    }
                    other => other,
                })?;
                let backend = pg::activity::setup_and_name(
                    &client,
                    "SET standard_conforming_strings = on; SET client_min_messages = warning",
                    &db.name,
                )
                .await?;
                let server = crate::pg::version::detect(&client).await.map_err(|e| match e {
                    Error::Refused(why) => Error::Refused(format!("db {}: {why}", db.name)),
                    other => other,
                })?;
                Ok::<_, Error>(DbConnection {
                    client: Arc::new(client),
                    server,
                    prepared: Prepared::default(),
                    backend,
                })
            }
        }))
        .await?;
        self.connections = connections;
        self.end_dropped().await;
        Ok(())
    }

    /// Ends the backends of the connections this KID dropped (after a run
    /// outlasted run_timeout, or a connection was lost), where they still
    /// run. Behind a dead path the server learns of the drop only from its
    /// keepalive, and until then such a backend can hold an unfinished
    /// apply's row locks that every later run would wait on. A failure is
    /// logged: the server still ends them on its own.
    async fn end_dropped(&mut self) {
        let dropped = std::mem::take(&mut self.dropped);
        for (i, db) in self.plan.dbs.iter().enumerate() {
            let backends: Vec<pg::activity::Backend> =
                dropped.iter().filter(|(name, _)| name == &db.name).map(|(_, b)| b.clone()).collect();
            let Some(connection) = self.connections.get(i).filter(|_| !backends.is_empty()) else { continue };
            match pg::activity::end_backends(connection.client.as_ref(), &backends).await {
                Ok(ended) if !ended.is_empty() => tracing::warn!(
                    sync = %self.plan.sync.name,
                    db = %db.name,
                    pids = ?ended,
                    "ended backends of dropped connections that were still running (they could hold an unfinished apply's locks)"
                ),
                Ok(_) => {}
                Err(err) => tracing::warn!(
                    sync = %self.plan.sync.name,
                    db = %db.name,
                    error = %err,
                    "could not end the backends of dropped connections; the server ends them when its keepalive finds the peer gone"
                ),
            }
        }
    }

    /// Reading or marking deltas an earlier ibex wrote would fail on their
    /// layout: say what converts them instead.
    fn refuse_earlier_layout(&mut self) -> Result<()> {
        if self.earlier_layout.is_empty() {
            return Ok(());
        }
        // Checked again at the next run, after the operator's validate.
        self.specs = None;
        Err(Error::Refused(self.earlier_layout.join("; ")))
    }

    /// Checks the tables on every db (columns, types, keys); cached until
    /// the plan changes or a run fails.
    pub async fn validate(&mut self) -> Result<&[TableSpec]> {
        self.connect().await?;
        if self.specs.is_none() {
            let clients: Vec<&Client> = self.connections.iter().map(|c| c.client.as_ref()).collect();
            // Read before the check: a change during it shows at the next run.
            let shape = crate::pg::introspect::shape_query(
                &self.plan.tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            );
            let mut shapes = validate::shapes(&self.plan, &clients, &shape).await?;
            let mut checked = validate::check_tables(&self.plan, &clients).await?;
            self.earlier_layout = std::mem::take(&mut checked.earlier_layout);
            let policy = self.plan.sync.params.ddl;
            if policy == DdlPolicy::Addcol
                && !checked.is_clean()
                && !super::ddl::add_missing_columns(&self.plan, &clients).await?.is_empty()
            {
                shapes = validate::shapes(&self.plan, &clients, &shape).await?;
                checked = validate::check_tables(&self.plan, &clients).await?;
                self.earlier_layout = std::mem::take(&mut checked.earlier_layout);
            }
            let specs = match policy {
                DdlPolicy::Fail => {
                    self.paused.clear();
                    checked.strict(&self.plan)?
                }
                // Differences of the sync as a whole (a missing sequence, an
                // unmappable type) are not a table's to wait for.
                _ if !checked.other.is_empty() => checked.strict(&self.plan)?,
                DdlPolicy::Pause | DdlPolicy::Addcol => {
                    let held = super::pause::hold(&self.plan, &clients, &checked.drift).await?;
                    super::pause::log_changes(&self.plan.sync.name, &self.paused, &held);
                    self.paused = held;
                    if self.paused.iter().any(|p| p.whole_sync) {
                        // Checked again at every run until the tables match.
                        return Err(Error::Paused(super::pause::summary(&self.paused)));
                    }
                    checked.specs
                }
            };
            self.specs = Some(specs);
            self.shapes = shapes;
        }
        Ok(self.specs.as_deref().unwrap_or_default())
    }

    /// Runs one cycle (with retries), records it, notifies, and returns
    /// the run record (good or bad). Only catalog failures are errors.
    pub async fn run(&mut self, catalog_client: &Client) -> Result<RunRecord> {
        let started_at = Utc::now();
        let sync = self.plan.sync.name.clone();
        let clock = std::time::Instant::now();
        self.fence = match self.lease {
            Some(token) => token,
            None => catalog::lease::current_token(catalog_client, &sync).await?,
        };
        let id = catalog::runs::start(catalog_client, &sync, started_at).await?;
        tracing::debug!(sync = %sync, us = clock.elapsed().as_micros() as u64, "step: run recorded");
        let (result, attempts) = match self.load_plugins(catalog_client).await {
            Ok(()) => match self.before_sync().await {
                Ok(()) => self.attempts().await,
                Err(err) => (Err(err), 0),
            },
            Err(err) => (Err(err), 0),
        };
        let clock = std::time::Instant::now();
        let mut record = RunRecord {
            id,
            sync: sync.clone(),
            started_at,
            ended_at: None,
            state: RunState::Good,
            inserted: 0,
            deleted: 0,
            conflicts: 0,
            attempts: attempts as i32,
            tables: Vec::new(),
            error: None,
            window_rows: None,
            backlog: None,
            phases: Vec::new(),
            error_kind: None,
            plugin_failure: None,
        };
        let mut conflicts = Vec::new();
        match result {
            Ok(outcome) => {
                record.inserted = outcome.inserted;
                record.deleted = outcome.deleted;
                record.conflicts = outcome.conflicts;
                record.tables = outcome.tables;
                record.window_rows = outcome.window_rows;
                record.backlog = outcome.backlog;
                record.phases = outcome.phases;
                conflicts = outcome.conflict_log;
                if outcome.did_onetimecopy {
                    // Done once: later runs only apply changes (as in Bucardo).
                    self.plan.sync.params.onetimecopy = 0;
                    if let Err(err) = reset_onetimecopy(catalog_client, &sync).await {
                        // The copy is committed; only the flag is stale. Say so
                        // in the run, which is still recorded as finished.
                        tracing::warn!(sync = %sync, error = %err, "the full copy is done but onetimecopy could not be reset; reset it with `ibex update sync {sync} onetimecopy=0`");
                        record.error = Some(format!(
                            "full copy done, but onetimecopy could not be reset ({err}): run `ibex update sync {sync} onetimecopy=0`"
                        ));
                    }
                }
            }
            Err(Error::Skipped(why)) => {
                // Nothing was applied and nothing is wrong: the changes wait.
                record.error = Some(format!("skipped: {why}"));
                self.disconnect();
            }
            Err(Error::Paused(why)) => {
                // As the ddl policy asks: nothing applied, the changes wait.
                record.error = Some(format!("paused: {why}"));
            }
            Err(err) => {
                record.state = RunState::Bad;
                record.error = Some(err.to_string());
                record.error_kind = Some(err.kind());
                if let Error::Plugin { failure, .. } = &err {
                    record.plugin_failure = Some(*failure);
                }
                self.abandon();
                self.specs = None;
            }
        }
        if record.error.is_none() && !self.paused.is_empty() {
            record.error = Some(format!("paused: {}", super::pause::summary(&self.paused)));
        }
        if self.paused_recorded.as_ref() != Some(&self.paused) {
            catalog::paused::record(catalog_client, &sync, &self.paused).await?;
            self.paused_recorded = Some(self.paused.clone());
        }
        record.ended_at = Some(Utc::now());
        catalog::runs::finish(catalog_client, &record, &conflicts).await?;
        catalog_client
            .execute_typed(
                "SELECT pg_notify($1, $2)",
                &[(&syncdone_channel(&sync), Type::TEXT), (&record.id.to_string(), Type::TEXT)],
            )
            .await
            .ctx(|| "announcing the end of the run".into())?;
        tracing::debug!(sync = %sync, us = clock.elapsed().as_micros() as u64, "step: run finished in the catalog");
        match record.state {
            RunState::Good => tracing::info!(
                sync = %sync,
                seconds = record.duration().num_milliseconds() as f64 / 1000.0,
                inserted = record.inserted,
                deleted = record.deleted,
                conflicts = record.conflicts,
                attempts = record.attempts,
                "run done"
            ),
            _ => {
                tracing::warn!(sync = %sync, error = record.error.as_deref().unwrap_or(""), "run failed")
            }
        }
        Ok(record)
    }

    /// Attempts the cycle until it succeeds, fails for good, or runs out of
    /// retries; then advances the cursors.
    async fn attempts(&mut self) -> (Result<CycleOutcome>, u32) {
        let mut attempt = 0;
        let limit = self.plan.settings.retry_limit.max(1);
        self.wal_decoded = None;
        // Left by a failed run: the next read of each slot advances it.
        self.slot_advances.clear();
        let timeout = self.plan.settings.run_timeout;
        loop {
            attempt += 1;
            // Optimistic first; a retry after a write conflict holds writers
            // off for its own run only.
            let writers = match attempt {
                1 if self.held_off_runs > 0 => {
                    self.held_off_runs -= 1;
                    Writers::HeldOff
                }
                1 if limit > 1 => Writers::FailFast,
                1 => Writers::Wait,
                _ => Writers::HeldOff,
            };
            let started = std::time::Instant::now();
            let result = match tokio::time::timeout(timeout, self.attempt(writers)).await {
                Ok(result) => result,
                Err(_) => {
                    // Dropping the connections rolls every database back.
                    self.abandon();
                    if attempt < limit && self.window_limit > MIN_WINDOW_ROWS {
                        self.window_limit = (self.window_limit / 2).max(MIN_WINDOW_ROWS);
                        tracing::warn!(
                            sync = %self.plan.sync.name,
                            window_rows = self.window_limit,
                            "run took longer than run_timeout ({}) and was rolled back; retrying with a window of at most {} delta rows per source",
                            humantime::format_duration(timeout),
                            self.window_limit
                        );
                        continue;
                    }
                    Err(Error::Sync(format!(
                        "run of sync {} took longer than run_timeout ({}) and was rolled back, even with a window of {} delta rows: raise run_timeout (`ibex set run_timeout=...`)",
                        self.plan.sync.name,
                        humantime::format_duration(timeout),
                        self.window_limit
                    )))
                }
            };
            match result {
                Ok(mut outcome) => {
                    // A window halved by a timeout grows back after runs that
                    // took under half of run_timeout, not at once. (Under a
                    // quarter left it at its minimum for good when runs
                    // had a fixed cost of more than that, and a backlog
                    // never drained: the fault suite's network scenario.)
                    if started.elapsed() < timeout / 2 {
                        self.window_limit = self.window_limit.saturating_mul(2).min(self.plan.settings.window_rows);
                    }
                    // Committed: outside run_timeout, as nothing is rolled back now.
                    if let Some(took) = self.advance_slots(timeout).await {
                        outcome.phases.push(("slot_advance".into(), took));
                    }
                    return (Ok(outcome), attempt);
                }
                Err(Error::SchemaChanged(why)) if attempt < limit => {
                    // Check the tables again: the next attempt copies the
                    // new columns, or fails naming what differs.
                    tracing::info!(sync = %self.plan.sync.name, reason = %why, "checking the tables again");
                    self.disconnect();
                    self.specs = None;
                }
                Err(err) if err.is_transient() && attempt < limit => {
                    tracing::info!(sync = %self.plan.sync.name, attempt, error = %err, "retrying with the tables locked");
                    if writers == Writers::FailFast {
                        self.held_off_runs = HELD_OFF_RUNS;
                    }
                    self.roll_back().await;
                    // The first retry holds the writers off, so it need not
                    // wait; later ones (a lock still taken) back off.
                    let backoff = Duration::from_millis(50 * u64::from((attempt - 1).min(20)));
                    tokio::time::sleep(backoff).await;
                }
                Err(err) => return (Err(err), attempt),
            }
        }
    }

    /// Advances the WAL capture slots this run decoded (see `decode_wal`);
    /// the seconds it took, if there were any. A slot not advanced (an
    /// error, or more than `limit`) is logged: the next read advances it.
    async fn advance_slots(&mut self, limit: Duration) -> Option<f64> {
        if self.slot_advances.is_empty() {
            return None;
        }
        let clock = std::time::Instant::now();
        let pending = std::mem::take(&mut self.slot_advances);
        let (connections, plan) = (&self.connections, &self.plan);
        let advances = pending.into_iter().map(|(db, advance)| async move {
            match connections.get(db.index()) {
                Some(connection) => advance.run(&connection.client).await,
                None => tracing::debug!(db = %plan.db(db).name, "no connection to advance the WAL capture slot on; the next run will"),
            }
        });
        if tokio::time::timeout(limit, futures_util::future::join_all(advances)).await.is_err() {
            tracing::warn!(sync = %self.plan.sync.name, "advancing the WAL capture slots took longer than run_timeout; the next run will");
        }
        Some(clock.elapsed().as_secs_f64())
    }

    fn hooks(&self) -> Result<Hooks<'_>> {
        let mut attached = Vec::new();
        for (name, points) in &self.plan.hooks {
            let plugin = self.plugins.get(name).ok_or_else(|| {
                Error::plugin_unusable(format!("plugin {name} is not loaded for sync {}", self.plan.sync.name))
            })?;
            attached.push((plugin, points.iter().filter_map(|p| HookPoint::parse(p)).collect()));
        }
        Ok(Hooks { attached })
    }

    /// The dbs plugin calls may reach outside the run's transactions.
    fn host_dbs(&self) -> Arc<crate::plugin::HostDbs> {
        crate::plugin::HostDbs::new(
            self.plan
                .dbs
                .iter()
                .enumerate()
                .map(|(i, d)| (d.name.clone(), d.conn.clone(), self.connections.get(i).map(|c| c.client.clone()))),
        )
    }

    /// Loads the plan's plugins that are not loaded yet (or were replaced).
    async fn load_plugins(&mut self, catalog_client: &Client) -> Result<()> {
        self.plugins.retain(|name, p| self.plan.plugins.iter().any(|r| &r.name == name && r.sha256 == p.sha256));
        if self.plan.plugins.iter().all(|r| self.plugins.contains_key(&r.name)) {
            return Ok(());
        }
        for r in &self.plan.plugins {
            if self.plugins.contains_key(&r.name) {
                continue;
            }
            let record = catalog::plugin::get(catalog_client, &r.name).await?;
            let wasm = catalog::plugin::bytes(catalog_client, &r.name).await?;
            let role = crate::plugin::roles::role_name(&self.plan.catalog_id, &record.name);
            let loaded = PluginRuntime::get()?.load(&record.name, &record.sha256, &wasm, &role, record.manifest)?;
            self.plugins.insert(r.name.clone(), loaded);
        }
        Ok(())
    }

    async fn attempt(&mut self, writers: Writers) -> Result<CycleOutcome> {
        self.validate().await?;
        self.refuse_earlier_layout()?;
        let decoding = match self.wal_decoded {
            Some(took) => took,
            None => {
                let clock = std::time::Instant::now();
                self.slot_advances = self.decode_wal().await?;
                let took = clock.elapsed();
                tracing::debug!(sync = %self.plan.sync.name, step = "materialize", detail = "", us = took.as_micros() as u64, "step");
                *self.wal_decoded.insert(took)
            }
        };
        let specs = self.specs.clone().unwrap_or_default();
        let onetimecopy = self.plan.sync.params.onetimecopy;
        let conflict_plugin = match &self.plan.sync.params.conflict_strategy {
            crate::catalog::ConflictStrategy::Plugin(name) => Some(self.plugins.get(name).ok_or_else(|| {
                Error::plugin_unusable(format!("plugin {name} is not loaded for sync {}", self.plan.sync.name))
            })?),
            _ => None,
        };
        let mut transforms = Vec::new();
        for t in &self.plan.transforms {
            let plugin = self.plugins.get(&t.plugin).ok_or_else(|| {
                Error::plugin_unusable(format!("plugin {} is not loaded for sync {}", t.plugin, self.plan.sync.name))
            })?;
            let target = t.target.as_ref().and_then(|name| self.plan.db_index(name));
            transforms.push(Transform { table: t.table, target, plugin });
        }
        let hooks = self.hooks()?;
        let plugins = RunPlugins { conflict: conflict_plugin, transforms, hooks };
        let outcome = Cycle::new(&self.plan, &specs, &self.connections, writers, plugins, Some(self.window_limit))
            .fenced(self.fence)
            .expecting_shapes(&self.shapes)
            .run(onetimecopy)
            .await?;
        failpoint::check("after_commit")?;
        failpoint::hit("before_cursor_advance").await?;
        let clock = std::time::Instant::now();
        self.advance_cursors(&outcome.new_cursors).await?;
        tracing::debug!(sync = %self.plan.sync.name, us = clock.elapsed().as_micros() as u64, "step: cursors advanced");
        let mut outcome = outcome;
        outcome.phases.insert(0, ("materialize".into(), decoding.as_secs_f64()));
        outcome.phases.push(("cursors".into(), clock.elapsed().as_secs_f64()));

        let hooks = self.hooks()?;
        if hooks.at(HookPoint::AfterSync) {
            // The run is done: an answer here changes nothing, a failure is logged.
            if let Err(err) = hooks.run(&self.plan, &self.host_dbs(), HookPoint::AfterSync, None).await {
                tracing::warn!(sync = %self.plan.sync.name, error = %err, "after_sync hook failed");
            }
        }

        Ok(outcome)
    }

    /// Sources with WAL capture: what their slot holds goes into the delta
    /// tables now, before the run's snapshot, so the run sees it. Once per
    /// run: a retry finds the keys already there, and what was committed
    /// since is decoded by the next run (the delta rows carry the decoding
    /// transaction's id, so no cursor can have passed them).
    ///
    /// The slots' advances are left for after the run's commit.
    async fn decode_wal(&self) -> Result<Vec<(DbId, SlotAdvance)>> {
        let advances = try_join_all(self.plan.db_ids().filter(|&i| self.plan.db(i).reads_wal()).map(|i| async move {
            let db = &self.plan.db(i).name;
            let connection = self
                .connections
                .get(i.index())
                .ok_or_else(|| Error::Sync(format!("db {db} has no connection to decode its WAL capture slot on")))?;
            let (decoded, advance) = crate::capture::wal::materialize_deferring_advance(
                &connection.client,
                connection.server,
                Some(&self.plan.db(i).conn),
            )
            .await
            .map_err(|err| match err {
                Error::Postgres { context, source } => {
                    Error::Postgres { context: format!("{context} on db {db}"), source }
                }
                Error::Sync(message) => Error::Sync(format!("db {db}: {message}")),
                other => other,
            })?;
            if decoded.keys > 0 {
                tracing::debug!(db = %db, transactions = decoded.transactions, keys = decoded.keys, "decoded WAL");
            }
            Ok::<_, Error>(advance.map(|advance| (i, advance)))
        }))
        .await?;
        Ok(advances.into_iter().flatten().collect())
    }

    /// After every db committed: the sources' cursors move to this run's
    /// snapshots. A crash before this re-applies the same changes next
    /// time, which delete + copy of current rows makes harmless.
    async fn advance_cursors(&self, cursors: &[NewCursor]) -> Result<()> {
        try_join_all(cursors.iter().map(|c| self.advance_cursor(c.db.index(), &c.snapshot))).await?;
        Ok(())
    }

    /// One source's cursor, only while no newer lease holder ran the sync there.
    async fn advance_cursor(&self, db: usize, snapshot: &str) -> Result<()> {
        let sync = self.plan.sync.name.as_str();
        let snapshot_type = self.connections.get(db).map(|c| c.server.xids).unwrap_or_default().snapshot_type();
        let name = self.plan.dbs[db].name.as_str();
        // Typed: one round trip, no prepare.
        let moved = self.connections[db]
            .client
            .execute_typed(
                &format!(
                    "UPDATE ibex.cursor SET snapshot = $2::text::{snapshot_type}, updated_at = now()
                      WHERE sync = $1 AND NOT EXISTS (SELECT 1 FROM ibex.fence f WHERE f.sync = $1 AND f.token > $3)"
                ),
                &[(&sync, Type::TEXT), (&snapshot, Type::TEXT), (&self.fence, Type::INT8)],
            )
            .await
            .ctx(|| format!("advancing the cursor of sync {sync} on db {name}"))?;
        if moved == 0 {
            return Err(Error::Fenced(format!(
                "the cursor of sync {sync} on db {name} did not advance: another daemon took over the sync's lease (token {} is stale); its next run applies these changes again",
                self.fence
            )));
        }
        Ok(())
    }
}

async fn reset_onetimecopy(catalog_client: &Client, sync: &str) -> Result<()> {
    let mut current = catalog::sync::get(catalog_client, sync).await?;
    current.params.onetimecopy = 0;
    catalog::sync::update(catalog_client, &current).await
}

impl Kid {
    /// The before_sync hooks, before any transaction is opened.
    async fn before_sync(&mut self) -> Result<()> {
        let hooks = self.hooks()?;
        if !hooks.at(HookPoint::BeforeSync) {
            return Ok(());
        }
        hooks.checkpoint(&self.plan, &self.host_dbs(), HookPoint::BeforeSync).await
    }
}

impl Kid {
    /// Warnings about sequences a multi-master sync's keys come from that
    /// are not staggered (see `stagger.rs`).
    pub async fn stagger_warnings(&mut self) -> Result<Vec<String>> {
        self.connect().await?;
        let clients: Vec<&Client> = self.connections.iter().map(|c| c.client.as_ref()).collect();
        super::stagger::unstaggered(&self.plan, &clients).await
    }

    /// Compares the sync's tables (or one) on every db.
    pub async fn compare(
        &mut self,
        only: Option<&crate::pg::QualifiedName>,
        with_keys: bool,
    ) -> Result<Vec<super::compare::TableDiff>> {
        self.validate().await?;
        let specs = self.specs.clone().unwrap_or_default();
        let clients: Vec<&Client> = self.connections.iter().map(|c| c.client.as_ref()).collect();
        super::compare::compare(&self.plan, &clients, &specs, only, with_keys).await
    }

    /// Marks differing keys changed on the sources chosen by
    /// `compare::marks_for`; returns the marks made per db name.
    pub async fn mark_differences(
        &mut self,
        diffs: &[super::compare::TableDiff],
        at: &str,
    ) -> Result<Vec<(String, String, u64)>> {
        self.validate().await?;
        self.refuse_earlier_layout()?;
        let specs = self.specs.clone().unwrap_or_default();
        let mut made = Vec::new();
        for diff in diffs {
            let Some(table) = specs.iter().find(|t| t.name.to_string() == diff.table) else { continue };
            let mut per_db: std::collections::BTreeMap<super::DbId, Vec<&super::compare::KeyDiff>> = Default::default();
            for key in &diff.keys {
                for db in super::compare::marks_for(&self.plan, key) {
                    per_db.entry(db).or_default().push(key);
                }
            }
            for (db, keys) in per_db {
                let n = super::compare::mark(&self.connections[db.index()].client, table, &keys, at).await?;
                made.push((diff.table.clone(), self.plan.db(db).name.clone(), n));
            }
        }
        Ok(made)
    }
}
