//! The MCP: registers the daemon in the catalog (several may serve one
//! catalog), writes the pid file, listens on the control database, takes
//! the lease of every active sync no other daemon holds and starts one CTL
//! per leased sync (see `lease.rs`), renews its leases and gives up the
//! ones it lost, starts the VAC, restarts whatever dies (with backoff),
//! follows catalog changes, and stops cleanly on SIGTERM, SIGINT or
//! `ibex stop`, releasing its leases.
//!
//! Long on purpose: the MCP is one state machine (its event loop and what
//! each event does to its tasks and leases); the lease rows are
//! `catalog/lease.rs`, fencing a previous holder `lease.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ctl::{self, CtlCommand, CtlContext};
use super::hub::Hub;
use super::lease::{self as fencing, holder_id};
use super::metrics::{self, Metrics};
use super::{
    DaemonOptions, PING, PONG, RELOAD, RELOADED, STOP, SharedCatalog, backoff, kick_channel, notify as systemd,
    pidfile, vac,
};
use crate::catalog::{self, CHANGED_CHANNEL, Catalog, lease};
use crate::error::{Error, PgContext, Result, describe_pg};
use crate::logging::LogLevel;
use crate::pg::listen::{Listener, notify};
use crate::sync::Plan;

/// How long running cycles get to finish on stop before they are rolled back.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Catalog changes arriving together cause one reload.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

struct CtlHandle {
    commands: mpsc::UnboundedSender<CtlCommand>,
    plan: Plan,
    /// The lease token its runs fence with.
    lease: i64,
}

struct Mcp {
    options: DaemonOptions,
    catalog: Arc<SharedCatalog>,
    listener: Listener,
    metrics: Arc<Metrics>,
    ctls: HashMap<String, CtlHandle>,
    tasks: JoinSet<String>,
    task_names: HashMap<tokio::task::Id, String>,
    /// Per task: how often it ended unexpectedly, and when it may start again.
    restarts: HashMap<String, (u32, Option<Instant>)>,
    shutdown: watch::Sender<bool>,
    hub: Arc<Hub>,
    /// Runs at once across all syncs (setting max_parallel_runs).
    runs: Arc<tokio::sync::Semaphore>,
    runs_size: usize,
    /// This daemon's name in `ibex.daemon` and `ibex.lease`.
    id: String,
    /// Syncs whose lease this daemon holds, with their tokens.
    leases: HashMap<String, i64>,
    lease_ttl: Duration,
    /// When the leases were last renewed, by this host's clock.
    renewed: Instant,
}

/// Runs the daemon in this process until it is told to stop.
pub async fn run(options: DaemonOptions) -> Result<()> {
    if let Some(pid) = pidfile::running(&options.pid_file).filter(|p| *p != std::process::id()) {
        return Err(Error::Refused(format!(
            "ibex is already running (pid {pid}, pid file {})",
            options.pid_file.display()
        )));
    }
    // Checks the catalog exists and is at this binary's version.
    drop(Catalog::open(&options.control).await?);
    let listener = Listener::connect(&options.control, "ibex mcp").await?;
    let id = holder_id();
    register(&listener, &id).await?;
    pidfile::write(&options.pid_file)?;
    // Runs follow one another: a stream per WAL db spares each a decode of
    // the slot from its restart point.
    crate::capture::wal::stream_slots();
    let result = serve(options.clone(), listener, id).await;
    pidfile::remove(&options.pid_file);
    result
}

/// Records this daemon in the catalog (`ibex list daemons`), forgetting
/// daemons whose catalog session is gone.
async fn register(listener: &Listener, id: &str) -> Result<()> {
    let host = crate::config::hostname();
    listener
        .client
        .batch_execute(
            "DELETE FROM ibex.daemon d WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = d.backend_pid)",
        )
        .await
        .ctx(|| "forgetting daemons that are gone".into())?;
    listener
        .client
        .execute(
            "INSERT INTO ibex.daemon (id, pid, host, backend_pid, version) VALUES ($1, $2, $3, pg_backend_pid(), $4)
             ON CONFLICT (id) DO UPDATE SET backend_pid = excluded.backend_pid, seen_at = now()",
            &[&id, &(std::process::id() as i32), &host, &env!("CARGO_PKG_VERSION")],
        )
        .await
        .ctx(|| "registering the daemon".into())?;
    Ok(())
}

async fn serve(options: DaemonOptions, listener: Listener, id: String) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    if let Some(address) = &options.metrics_address {
        let socket = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| Error::Config(format!("cannot serve metrics on {address}: {e}")))?;
        tracing::info!(%address, "serving metrics at /metrics");
        tokio::spawn(metrics::serve(socket, metrics.clone()));
    }
    let (shutdown, _) = watch::channel(false);
    let mut mcp = Mcp {
        catalog: SharedCatalog::new(options.control.clone()),
        options,
        listener,
        metrics,
        ctls: HashMap::new(),
        tasks: JoinSet::new(),
        task_names: HashMap::new(),
        restarts: HashMap::new(),
        shutdown,
        hub: Arc::new(Hub::default()),
        runs: Arc::new(tokio::sync::Semaphore::new(1)),
        runs_size: 1,
        id,
        leases: HashMap::new(),
        lease_ttl: lease::DEFAULT_TTL,
        renewed: Instant::now(),
    };
    mcp.listen_all().await?;
    mcp.spawn_vac();
    mcp.reload().await;
    tracing::info!(pid = std::process::id(), syncs = mcp.ctls.len(), "ibex started");
    systemd::ready(&format!("{} syncs running", mcp.ctls.len()));
    if let Some(every) = systemd::spawn_watchdog() {
        tracing::debug!(every_ms = every.as_millis() as u64, "pinging the systemd watchdog");
    }
    let result = mcp.event_loop().await;
    systemd::stopping();
    mcp.stop().await;
    result
}

impl Mcp {
    async fn listen_all(&self) -> Result<()> {
        for channel in [PING, RELOAD, STOP, CHANGED_CHANNEL] {
            self.listener.listen(channel).await?;
        }
        for sync in self.ctls.keys() {
            self.listener.listen(&kick_channel(sync)).await?;
        }
        Ok(())
    }

    async fn event_loop(&mut self) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Config(format!("signals: {e}")))?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::Config(format!("signals: {e}")))?;
        let mut sighup = signal(SignalKind::hangup()).map_err(|e| Error::Config(format!("signals: {e}")))?;
        let mut reload_at: Option<Instant> = None;
        // Reloads asked for (SIGHUP, `ibex reload`) are reported to systemd; catalog changes are not.
        let mut asked = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); return Ok(()); }
                _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); return Ok(()); }
                _ = sighup.recv() => { reload_at = Some(Instant::now()); asked = true; }
                notice = self.listener.notices.recv() => match notice {
                    Some(n) if n.channel == PING => {
                        if let Err(err) = notify(&self.listener.client, PONG, &n.payload).await {
                            tracing::warn!(error = %err, "cannot answer a ping");
                        }
                    }
                    Some(n) if n.channel == STOP => { tracing::info!("stop requested"); return Ok(()); }
                    Some(n) if n.channel == RELOAD => { reload_at = Some(Instant::now()); asked = true; }
                    Some(n) if n.channel == CHANGED_CHANNEL => {
                        reload_at.get_or_insert(Instant::now() + RELOAD_DEBOUNCE);
                    }
                    Some(n) => {
                        let sync = n.channel.strip_prefix("ibex_kick_").unwrap_or_default();
                        match self.ctls.get(sync) {
                            Some(ctl) => { let _ = ctl.commands.send(CtlCommand::Kick); }
                            None => tracing::warn!(channel = %n.channel, "kick for a sync that is not running"),
                        }
                    }
                    None => {
                        tracing::error!("lost the control database connection; reconnecting");
                        // Its leases cannot be renewed: another daemon may take the syncs.
                        self.drop_all_leases("the control database connection was lost");
                        self.reconnect().await?;
                        reload_at = Some(Instant::now());
                    }
                },
                Some(done) = self.tasks.join_next_with_id() => {
                    let (id, panicked) = match &done {
                        Ok((id, _)) => (*id, false),
                        Err(err) => (err.id(), err.is_panic()),
                    };
                    if let Some(name) = self.task_names.remove(&id) && self.task_ended(name, panicked) {
                        reload_at = Some(Instant::now());
                    }
                }
                _ = async { match reload_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    reload_at = None;
                    if asked { systemd::reloading(); }
                    self.reload().await;
                    if std::mem::take(&mut asked) { systemd::ready(&format!("{} syncs running", self.ctls.len())); }
                }
                _ = tick.tick() => {
                    self.restart_due().await;
                    self.tend_leases().await;
                }
            }
        }
    }

    /// A CTL or the VAC ended. One that ended without being asked to starts
    /// again later (with a backoff). Returns true when a CTL told to stop has finished: the caller reloads,
    /// which starts its successor if the sync is still this daemon's to run.
    fn task_ended(&mut self, name: String, panicked: bool) -> bool {
        if *self.shutdown.borrow() {
            return false;
        }
        // A CTL whose sync was removed, deactivated or re-leased ends as it should.
        if name != "VAC" && !self.ctls.contains_key(&name) {
            return true;
        }

        let count = self.restarts.get(&name).map_or(0, |(c, _)| *c) + 1;
        let delay = backoff(count);
        tracing::error!(task = %name, panicked, restart_in_s = delay.as_secs(), "task ended unexpectedly; restarting");
        self.ctls.remove(&name);
        self.restarts.insert(name, (count, Some(Instant::now() + delay)));
        false
    }

    /// A CTL told to stop (lease lost or re-taken, sync deactivated) finishes
    /// its current run first. Its successor waits for that: two runs of one
    /// sync at once would read the same window and apply it twice.
    fn finishing(&self, name: &str) -> bool {
        !self.ctls.contains_key(name) && self.task_names.values().any(|n| n == name)
    }

    fn waiting_to_restart(&self, name: &str) -> bool {
        self.restarts.get(name).is_some_and(|(_, at)| at.is_some_and(|at| at > Instant::now()))
    }

    async fn restart_due(&mut self) {
        let now = Instant::now();
        let mut any = false;
        let mut vac = false;
        for (name, (_, at)) in self.restarts.iter_mut() {
            if at.is_some_and(|at| at <= now) {
                *at = None;
                any = true;
                vac |= name == "VAC";
            }
        }
        if vac {
            self.spawn_vac();
        }
        if any {
            // CTLs come back through reload, which starts every active sync.
            self.reload().await;
        }
    }

    fn spawn_vac(&mut self) {
        let task = vac::run(self.catalog.clone(), self.metrics.clone(), self.shutdown.subscribe());
        let handle = self.tasks.spawn(async move {
            task.await;
            "VAC".to_string()
        });
        self.task_names.insert(handle.id(), "VAC".into());
    }

    async fn reconnect(&mut self) -> Result<()> {
        let mut failures = 0;
        loop {
            match Listener::connect(&self.options.control, "ibex mcp").await {
                Ok(listener) => {
                    register(&listener, &self.id).await?;
                    self.listener = listener;
                    self.listen_all().await?;
                    tracing::info!("control database connection back");
                    return Ok(());
                }
                Err(err) => {
                    failures += 1;
                    tracing::warn!(error = %err, "control database unreachable");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// Reads the catalog: starts CTLs for new active syncs, hands changed
    /// plans to running ones, stops the ones removed or deactivated.
    async fn reload(&mut self) {
        let client = match self.catalog.get().await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(error = %err, "reload: catalog unreachable");
                return;
            }
        };
        if let Some(handle) = &self.options.log_level {
            match catalog::setting::get(client.as_ref(), "log_level").await.and_then(|s| s.value.parse::<LogLevel>()) {
                Ok(level) => handle.set(level),
                Err(err) => tracing::warn!(error = %err, "reload: cannot read log_level; keeping the current level"),
            }
        }
        match catalog::setting::get(client.as_ref(), "lease_ttl").await.map(|s| humantime::parse_duration(&s.value)) {
            Ok(Ok(ttl)) => self.lease_ttl = ttl,
            Ok(Err(err)) => tracing::warn!(error = %err, "reload: lease_ttl is not a duration; unchanged"),
            Err(err) => tracing::warn!(error = %err, "reload: cannot read lease_ttl; unchanged"),
        }
        match catalog::setting::get(client.as_ref(), "max_parallel_runs").await {
            Ok(setting) => match setting.value.parse::<usize>() {
                Ok(wanted) => self.resize_runs(wanted),
                Err(_) => {
                    tracing::warn!(value = %setting.value, "reload: max_parallel_runs is not a number; unchanged")
                }
            },
            Err(err) => tracing::warn!(error = %err, "reload: cannot read max_parallel_runs; unchanged"),
        }
        let syncs = match catalog::sync::list(client.as_ref()).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(error = %err, "reload: cannot list syncs");
                return;
            }
        };
        let active: Vec<String> =
            syncs.iter().filter(|s| s.params.status == "active").map(|s| s.name.clone()).collect();
        let gone: Vec<String> = self.ctls.keys().filter(|s| !active.contains(s)).cloned().collect();
        let released: Vec<String> = self.leases.keys().filter(|s| !active.contains(s)).cloned().collect();
        for name in released {
            self.leases.remove(&name);
            if let Err(err) = lease::release(client.as_ref(), &self.id, Some(&name)).await {
                tracing::warn!(sync = %name, error = %err, "cannot release the lease of a sync no longer active (it expires by itself)");
            }
        }
        for name in gone {
            // Dropping the sender ends the CTL after its current run.
            self.ctls.remove(&name);
            if let Err(err) = self.listener.unlisten(&kick_channel(&name)).await {
                tracing::warn!(sync = %name, error = %err, "cannot stop listening for its kicks (harmless: they are ignored)");
            }
            tracing::info!(sync = %name, "sync stopped (removed or deactivated)");
        }
        for name in &active {
            if self.waiting_to_restart(name) {
                continue;
            }
            if self.finishing(name) {
                tracing::info!(sync = %name, "the sync's previous CTL is finishing its run; starting its successor after it");
                continue;
            }

            let plan = match Plan::load(client.as_ref(), name).await {
                Ok(p) => p,
                Err(err) => {
                    tracing::warn!(sync = %name, error = %err, "cannot load sync");
                    continue;
                }
            };
            let token = match self.leases.get(name) {
                Some(&token) => token,
                None => match lease::take(client.as_ref(), name, &self.id, self.lease_ttl).await {
                    Ok(Some(taken)) => {
                        if let Some(from) = &taken.from {
                            tracing::warn!(sync = %name, from = %from, token = taken.token, "took over the sync from a daemon that stopped renewing its lease");
                            end_stale_sessions(&plan, from).await;
                        } else {
                            tracing::info!(sync = %name, token = taken.token, "took the sync's lease");
                        }
                        self.leases.insert(name.clone(), taken.token);
                        taken.token
                    }
                    // Another daemon runs it.
                    Ok(None) => continue,
                    Err(err) => {
                        tracing::warn!(sync = %name, error = %err, "cannot take the sync's lease");
                        continue;
                    }
                },
            };
            match self.ctls.get_mut(name) {
                Some(ctl) if ctl.lease != token => {
                    // Lost and taken again: the old CTL's runs are fenced out;
                    // its successor starts once it has finished (`finishing`).
                    self.ctls.remove(name);
                }
                Some(ctl) if ctl.plan != plan => {
                    ctl.plan = plan.clone();
                    if ctl.commands.send(CtlCommand::NewPlan(Box::new(plan))).is_err() {
                        // Its task ended; the supervisor restarts it with the new plan.
                        tracing::warn!(sync = %name, "the sync's CTL has ended; it restarts with the new plan");
                    }
                }
                Some(_) => {}
                None => self.spawn_ctl(name, plan, token).await,
            }
        }
        let summary = format!("{} syncs running", self.ctls.len());
        if let Err(err) = notify(&self.listener.client, RELOADED, &summary).await {
            tracing::warn!(error = %err, "cannot confirm the reload to `ibex reload`");
        }
        tracing::debug!(%summary, "catalog read");
    }

    /// Lets more runs go at once; fewer takes a restart (permits in use
    /// cannot be taken back from running CTLs).
    fn resize_runs(&mut self, wanted: usize) {
        let wanted = wanted.max(1);
        if wanted > self.runs_size {
            self.runs.add_permits(wanted - self.runs_size);
            self.runs_size = wanted;
        } else if wanted < self.runs_size {
            tracing::info!(
                max_parallel_runs = wanted,
                now = self.runs_size,
                "fewer parallel runs apply at the next start"
            );
        }
    }

    async fn spawn_ctl(&mut self, name: &str, plan: Plan, lease: i64) {
        let (tx, rx) = mpsc::unbounded_channel();
        let context = CtlContext {
            catalog: self.catalog.clone(),
            metrics: self.metrics.clone(),
            hub: self.hub.clone(),
            runs: self.runs.clone(),
        };
        let task = ctl::run(plan.clone(), lease, context, rx, self.shutdown.subscribe());
        let owned = name.to_string();
        let handle = self.tasks.spawn(async move {
            task.await;
            owned
        });
        self.task_names.insert(handle.id(), name.to_string());
        self.ctls.insert(name.to_string(), CtlHandle { commands: tx, plan, lease });
        if let Err(err) = self.listener.listen(&kick_channel(name)).await {
            tracing::warn!(sync = %name, error = %err, "cannot listen for kicks");
        }
    }

    /// Every second: renews the leases when a third of their life has
    /// passed, stops the syncs whose lease was lost, and takes syncs that
    /// nobody holds (their holder stopped renewing).
    async fn tend_leases(&mut self) {
        if *self.shutdown.borrow() {
            return;
        }
        let client = match self.catalog.get().await {
            Ok(c) => c,
            Err(err) => {
                self.renewal_failed(&err.to_string());
                return;
            }
        };
        if self.renewed.elapsed() >= self.lease_ttl / 3 {
            match lease::renew(client.as_ref(), &self.id, self.lease_ttl).await {
                Ok(held) => {
                    self.renewed = Instant::now();
                    let held: HashMap<String, i64> = held.into_iter().collect();
                    let lost: Vec<String> =
                        self.leases.iter().filter(|(s, t)| held.get(*s) != Some(t)).map(|(s, _)| s.clone()).collect();
                    for name in lost {
                        tracing::warn!(sync = %name, "lost the sync's lease (it expired or another daemon took it); stopped running it here");
                        self.leases.remove(&name);
                        self.ctls.remove(&name);
                    }
                }
                Err(err) => {
                    self.renewal_failed(&err.to_string());
                    return;
                }
            }
        }
        match lease::untaken(client.as_ref()).await {
            Ok(names) if names.iter().any(|n| !self.waiting_to_restart(n)) => self.reload().await,
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot look for syncs to take over"),
        }
    }

    /// Leases not renewed for two thirds of their life may be taken by
    /// another daemon at any moment: stop running their syncs first.
    fn renewal_failed(&mut self, why: &str) {
        tracing::warn!(error = %why, "cannot renew the daemon's leases");
        if !self.leases.is_empty() && self.renewed.elapsed() >= self.lease_ttl * 2 / 3 {
            self.drop_all_leases("its leases could not be renewed in time");
        }
    }

    fn drop_all_leases(&mut self, why: &str) {
        if self.leases.is_empty() {
            return;
        }
        tracing::error!(
            syncs = self.leases.len(),
            reason = why,
            "stopped running this daemon's syncs; another daemon may take them"
        );
        self.leases.clear();
        self.ctls.clear();
    }

    /// Asks every task to stop, waits for running cycles to finish, then
    /// aborts what is left (its transactions roll back with its connections).
    async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        self.ctls.clear();
        let waited = tokio::time::timeout(STOP_GRACE, async { while self.tasks.join_next().await.is_some() {} }).await;
        if waited.is_err() {
            tracing::warn!("cycles still running after {} s: rolling them back", STOP_GRACE.as_secs());
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        if let Err(err) = lease::release(&self.listener.client, &self.id, None).await {
            tracing::warn!(error = %err, "cannot release the daemon's leases; they expire by themselves");
        }
        if let Err(err) = self.listener.client.execute("DELETE FROM ibex.daemon WHERE id = $1", &[&self.id]).await {
            // The row only counts while this backend lives: harmless, but say so.
            tracing::warn!(error = %describe_pg(&err), "cannot remove the daemon's row from the catalog");
        }
        tracing::info!("ibex stopped");
    }
}

/// After a takeover: ends the sessions the sync's previous holder may still
/// have open on its dbs, so that, resumed, it cannot commit a run. Failing
/// that, the fence still refuses its runs; say so and go on.
async fn end_stale_sessions(plan: &Plan, from: &str) {
    for db in &plan.dbs {
        match fencing::end_stale_sessions(db, &plan.sync.name).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(sync = %plan.sync.name, db = %db.name, sessions = n, previous = %from, "ended the previous holder's sessions")
            }
            Err(err) => {
                tracing::warn!(sync = %plan.sync.name, db = %db.name, error = %err, "cannot end the previous holder's sessions; the fence still refuses its runs")
            }
        }
    }
}
