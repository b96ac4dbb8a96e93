//! A CTL: decides when its sync runs. It runs the KID on a kick (CLI), on
//! a change notified by the autokick triggers of any source, every
//! `checktime`, once at start (to catch up), and again after a failure with
//! backoff. It LISTENs on every source, reconnecting when one goes away.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::metrics::Metrics;
use super::{SharedCatalog, backoff};
use crate::capture::KICK_CHANNEL;
use crate::catalog::{Role, RunState};
use crate::pg::Client;
use crate::pg::listen::{Listener, Notice};

use crate::sync::{Kid, Plan};

pub enum CtlCommand {
    Kick,
    NewPlan(Box<Plan>),
}

enum Wake {
    Changed(Notice),
    Lost(usize),
}

/// The autokick connections: one LISTEN per source db.
struct Autokick {
    clients: Vec<Option<Client>>,
    tx: mpsc::UnboundedSender<Wake>,
    rx: mpsc::UnboundedReceiver<Wake>,
    retry_at: Option<Instant>,
    failures: u32,
}

impl Autokick {
    fn new(dbs: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Autokick { clients: (0..dbs).map(|_| None).collect(), tx, rx, retry_at: Some(Instant::now()), failures: 0 }
    }

    /// Connects the missing listeners; true if any (re)connected, since
    /// changes may have been made while it was away.
    async fn connect(&mut self, plan: &Plan) -> bool {
        let mut connected_any = false;
        let mut missing = false;
        for (i, db) in plan.dbs.iter().enumerate() {
            if db.role != Role::Source || self.clients[i].as_ref().is_some_and(|c| !c.is_closed()) {
                continue;
            }
            match Listener::connect(&db.conn, &format!("ibex ctl {}", plan.sync.name)).await {
                Ok(mut listener) => {
                    if let Err(err) = listener.listen(KICK_CHANNEL).await {
                        tracing::warn!(sync = %plan.sync.name, db = %db.name, error = %err, "cannot listen for changes");
                        missing = true;
                        continue;
                    }
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        while let Some(notice) = listener.notices.recv().await {
                            if tx.send(Wake::Changed(notice)).is_err() {
                                return;
                            }
                        }
                        let _ = tx.send(Wake::Lost(i));
                    });
                    self.clients[i] = Some(listener.client);
                    connected_any = true;
                }
                Err(err) => {
                    tracing::debug!(sync = %plan.sync.name, db = %db.name, error = %err, "autokick listener not connected");
                    missing = true;
                }
            }
        }
        if missing {
            self.failures += 1;
            self.retry_at = Some(Instant::now() + backoff(self.failures));
        } else {
            self.failures = 0;
            self.retry_at = None;
        }
        connected_any
    }
}

/// The kick trigger's payload is `schema.table`.
fn watches(plan: &Plan, notice: &Notice) -> bool {
    plan.tables.iter().any(|t| notice.payload == format!("{}.{}", t.name.schema, t.name.name))
}

pub async fn run(
    plan: Plan,
    catalog: Arc<SharedCatalog>,
    metrics: Arc<Metrics>,
    mut commands: mpsc::UnboundedReceiver<CtlCommand>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = plan.sync.name.clone();
    tracing::info!(sync = %name, "CTL started");
    let mut autokick = Autokick::new(plan.dbs.len());
    let mut kid = Kid::new(plan);
    // Run once at start: changes may have waited while the daemon was down.
    let mut due: Option<Instant> = Some(Instant::now());
    let mut failures: u32 = 0;
    let mut last_run = Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let plan = kid.plan();
        let checktime = plan.sync.params.checktime.map(|c| last_run + c);
        let autokick_on = plan.sync.params.autokick;
        let wake_at = [due, checktime, autokick.retry_at.filter(|_| autokick_on)].into_iter().flatten().min();
        tokio::select! {
            _ = shutdown.changed() => break,
            command = commands.recv() => match command {
                Some(CtlCommand::Kick) => due = Some(Instant::now()),
                Some(CtlCommand::NewPlan(plan)) => {
                    tracing::info!(sync = %name, "CTL picked up a changed sync");
                    kid.set_plan(*plan);
                    autokick = Autokick::new(kid.plan().dbs.len());
                    due = Some(Instant::now());
                }
                None => break,
            },
            wake = autokick.rx.recv(), if autokick_on => match wake {
                Some(Wake::Changed(notice)) if watches(kid.plan(), &notice) => {
                    due = Some(due.map_or(Instant::now(), |d| d.min(Instant::now())));
                }
                Some(Wake::Changed(_)) => {}
                Some(Wake::Lost(i)) => {
                    autokick.clients[i] = None;
                    autokick.retry_at = Some(Instant::now() + backoff(1));
                }
                None => {}
            },
            _ = async { match wake_at { Some(at) => sleep_until(at).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                if autokick_on && autokick.retry_at.is_some_and(|at| at <= now) && autokick.connect(kid.plan()).await {
                    due = Some(now);
                }
                if checktime.is_some_and(|at| at <= now) {
                    due = Some(now);
                }
            }
        }
        if due.is_none_or(|d| d > Instant::now()) {
            continue;
        }
        // Notifications that arrived meanwhile are covered by this run.
        while let Ok(wake) = autokick.rx.try_recv() {
            if let Wake::Lost(i) = wake {
                autokick.clients[i] = None;
                autokick.retry_at = Some(Instant::now() + backoff(1));
            }
        }
        due = None;
        last_run = Instant::now();
        let outcome = match catalog.get().await {
            Ok(client) => kid.run(&client).await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(record) => {
                metrics.record_run(&record);
                if record.state == RunState::Good {
                    failures = 0;
                } else {
                    failures += 1;
                    due = Some(Instant::now() + backoff(failures));
                    tracing::warn!(sync = %name, retry_in_s = backoff(failures).as_secs(), error = record.error.as_deref().unwrap_or(""), "sync is Bad; will retry");
                }
            }
            Err(err) => {
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
    tracing::info!(sync = %name, "CTL stopped");
}
