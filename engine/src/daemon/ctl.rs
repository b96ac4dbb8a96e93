//! A CTL: decides when its sync runs. It runs the KID on a kick (CLI), on
//! a change notified by the capture triggers of any source (through the
//! daemon's shared listeners), every `checktime`, once at start (to catch
//! up), and again after a failure with backoff. Runs across the daemon are
//! bounded by a semaphore, so a hundred syncs do not open a hundred sets of
//! connections at once.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::hub::Hub;
use super::metrics::Metrics;
use super::{SharedCatalog, backoff};
use crate::catalog::{Role, RunState};
use crate::pg::listen::Notice;
use crate::sync::{Kid, Plan};

pub enum CtlCommand {
    Kick,
    NewPlan(Box<Plan>),
}

/// The kick payload is `schema.table`; an empty one (a listener that
/// reconnected) means changes may have been missed.
fn watches(plan: &Plan, notice: &Notice) -> bool {
    notice.payload.is_empty() || plan.tables.iter().any(|t| notice.payload == crate::capture::kick_payload(&t.name))
}

/// Forwards the shared listeners' notices of every source into one channel.
fn subscribe(plan: &Plan, hub: &Arc<Hub>, tx: &mpsc::UnboundedSender<Notice>) -> Vec<JoinHandle<()>> {
    plan.dbs
        .iter()
        .filter(|db| db.role == Role::Source)
        .map(|db| {
            let mut rx = hub.subscribe(&db.name, &db.conn);
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(notice) => {
                            if tx.send(notice).is_err() {
                                return;
                            }
                        }
                        // Fell behind: some notices were dropped, so run anyway.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(Notice { channel: String::new(), payload: String::new() });
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        })
        .collect()
}

pub struct CtlContext {
    pub catalog: Arc<SharedCatalog>,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub runs: Arc<Semaphore>,
}

pub async fn run(
    plan: Plan,
    lease: i64,
    ctx: CtlContext,
    mut commands: mpsc::UnboundedReceiver<CtlCommand>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = plan.sync.name.clone();
    tracing::info!(sync = %name, "CTL started");
    let (wake_tx, mut wakes) = mpsc::unbounded_channel();
    let mut forwarders = if plan.sync.params.autokick { subscribe(&plan, &ctx.hub, &wake_tx) } else { Vec::new() };
    let mut kid = Kid::new(plan);
    kid.hold_lease(lease);
    // Run once at start: changes may have waited while the daemon was down.
    let mut due: Option<Instant> = Some(Instant::now());
    let mut failures: u32 = 0;
    let mut last_run = Instant::now();
    // The status page shows the last good and bad runs from before this start.
    if let Ok(client) = ctx.catalog.get().await {
        ctx.metrics.seed_last_runs(client.as_ref(), &name).await;
    }
    loop {
        if *shutdown.borrow() {
            break;
        }
        let checktime = kid.plan().sync.params.checktime.map(|c| last_run + c);
        let wake_at = [due, checktime].into_iter().flatten().min();
        tokio::select! {
            _ = shutdown.changed() => break,
            command = commands.recv() => match command {
                Some(CtlCommand::Kick) => due = Some(Instant::now()),
                Some(CtlCommand::NewPlan(plan)) => {
                    tracing::info!(sync = %name, "CTL picked up a changed sync");
                    for f in forwarders.drain(..) {
                        f.abort();
                    }
                    if plan.sync.params.autokick {
                        forwarders = subscribe(&plan, &ctx.hub, &wake_tx);
                    }
                    kid.set_plan(*plan);
                    due = Some(Instant::now());
                }
                None => break,
            },
            Some(notice) = wakes.recv() => {
                if watches(kid.plan(), &notice) {
                    due = Some(due.map_or(Instant::now(), |d| d.min(Instant::now())));
                }
            }
            _ = async { match wake_at { Some(at) => sleep_until(at).await, None => std::future::pending().await } } => {
                if checktime.is_some_and(|at| at <= Instant::now()) {
                    due = Some(Instant::now());
                }
            }
        }
        if due.is_none_or(|d| d > Instant::now()) {
            continue;
        }
        // Notices that arrived meanwhile are covered by this run.
        while wakes.try_recv().is_ok() {}
        due = None;
        let Ok(_permit) = ctx.runs.acquire().await else { break };
        last_run = Instant::now();
        ctx.metrics.run_started(&name);
        let outcome = match ctx.catalog.get().await {
            Ok(client) => kid.run(&client).await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(record) => {
                ctx.metrics.record_run(&record);
                ctx.metrics.record_phases(&record.sync, &record.phases);
                if !kid.paused().is_empty() {
                    // Held back by the ddl policy: look again soon, writes or not.
                    let recheck = Instant::now() + crate::sync::pause::RECHECK;
                    due = Some(due.map_or(recheck, |d| d.min(recheck)));
                }
                if record.state == RunState::Good {
                    failures = 0;
                    if let Some(left) = record.backlog.filter(|b| *b > 0) {
                        // Catching up in parts: the next part right away.
                        tracing::info!(sync = %name, applied = record.window_rows.unwrap_or(0), pending = left, "catching up");
                        due = Some(Instant::now());
                    }
                } else {
                    failures += 1;
                    due = Some(Instant::now() + backoff(failures));
                    tracing::warn!(sync = %name, retry_in_s = backoff(failures).as_secs(), error = record.error.as_deref().unwrap_or(""), "sync is Bad; will retry after retry_in_s, or sooner when a source changes");
                }
            }
            Err(err) => {
                ctx.metrics.run_aborted(&name);
                failures += 1;
                due = Some(Instant::now() + backoff(failures));
                tracing::error!(sync = %name, error = %err, "cannot record the run in the catalog; will retry");
                kid.disconnect();
            }
        }
        if !kid.plan().sync.params.kidsalive {
            kid.disconnect();
        }
    }
    for f in forwarders {
        f.abort();
    }
    tracing::info!(sync = %name, "CTL stopped");
}
