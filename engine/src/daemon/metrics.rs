//! Prometheus metrics and the status page's data: counters the CTLs update
//! after each run, gauges and a histogram the VAC refreshes (delta backlog,
//! replication lag), and a minimal HTTP/1.1 endpoint on `metrics_address`
//! serving `GET /metrics` (Prometheus text format 0.0.4, encoded by the
//! prometheus-client crate) and `GET /` (the status page, status_page.rs).
//! No secrets are ever in here: labels are sync, table and phase names.
//!
//! Exposed names (unchanged from the former hand-written exporter; counters
//! are registered without `_total` because prometheus-client appends it):
//! - `ibex_runs_total{sync,state}` (state = good | bad)
//! - `ibex_run_failures_total{sync}`
//! - `ibex_rows_total{sync,op}` (op = insert | delete)
//! - `ibex_conflicts_total{sync}`
//! - `ibex_sync_good{sync}`: 1 if the last run was good
//! - `ibex_run_duration_seconds{sync}`: histogram
//! - `ibex_delta_backlog{sync,table}`
//! - `ibex_replication_lag_seconds{sync}`: gauge
//!
//! New:
//! - `ibex_replication_lag_seconds_histogram{sync}`: histogram, one
//!   observation per VAC refresh
//! - `ibex_run_phase_seconds{sync,phase}`: histogram of the phases of runs,
//!   fed by `record_phases` from each run's record (materialize, begin,
//!   probe, full_copy, apply, merge, sequences, commit, cursors,
//!   slot_advance)

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_postgres::GenericClient;

use crate::catalog::{RunRecord, RunState, runs};

/// Upper bounds of the run and phase duration histograms, in seconds.
const BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Upper bounds of the lag histogram, in seconds: lag is seconds to hours.
const LAG_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];
/// Lag samples kept per sync for the status page's chart (VAC refreshes).
pub const LAG_SAMPLES: usize = 360;
/// The status page counts conflicts over this window.
pub const CONFLICT_WINDOW: Duration = Duration::from_secs(3600);
/// Errors longer than this are cut on the status page (they stay whole in the catalog).
const MAX_ERROR_LEN: usize = 2000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    sync: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    sync: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    sync: String,
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    sync: String,
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    sync: String,
    phase: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn run_histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

fn lag_histogram() -> Histogram {
    Histogram::new(LAG_BUCKETS.iter().copied())
}

/// One finished run, as the status page shows it.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub ended_at: DateTime<Utc>,
    pub seconds: f64,
    pub rows: i64,
    pub error: Option<String>,
}

impl RunSummary {
    fn of(run: &RunRecord) -> Self {
        let error = run.error.as_ref().map(|e| match e.char_indices().nth(MAX_ERROR_LEN) {
            Some((cut, _)) => format!("{}…", &e[..cut]),
            None => e.clone(),
        });
        RunSummary {
            ended_at: run.ended_at.unwrap_or(run.started_at),
            seconds: run.duration().num_milliseconds() as f64 / 1000.0,
            rows: run.inserted.max(0) + run.deleted.max(0),
            error,
        }
    }
}

/// What the daemon knows of one sync, for the status page (and for
/// forgetting its label sets when it goes away).
#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    /// State of the last finished run.
    pub last_state: Option<RunState>,
    /// Set while a run is under way.
    pub running_since: Option<DateTime<Utc>>,
    pub last_good: Option<RunSummary>,
    pub last_bad: Option<RunSummary>,
    /// Conflicts per finished run within CONFLICT_WINDOW.
    pub conflicts: VecDeque<(DateTime<Utc>, u64)>,
    pub lag: Option<f64>,
    /// The last LAG_SAMPLES lag readings, oldest first.
    pub lag_samples: VecDeque<(DateTime<Utc>, f64)>,
    tables: BTreeSet<String>,
    phases: BTreeSet<String>,
}

impl SyncStatus {
    pub fn conflicts_since(&self, since: DateTime<Utc>) -> u64 {
        self.conflicts.iter().filter(|(at, _)| *at >= since).map(|(_, n)| n).sum()
    }

    fn prune(&mut self, now: DateTime<Utc>) {
        let window = chrono::Duration::from_std(CONFLICT_WINDOW).unwrap_or(chrono::Duration::hours(1));
        while self.conflicts.front().is_some_and(|(at, _)| *at < now - window) {
            self.conflicts.pop_front();
        }
    }
}

pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    failures: Family<SyncLabels, Counter>,
    rows: Family<RowLabels, Counter>,
    conflicts: Family<SyncLabels, Counter>,
    sync_good: Family<SyncLabels, Gauge>,
    run_duration: HistogramFamily<SyncLabels>,
    backlog: Family<TableLabels, Gauge>,
    lag: Family<SyncLabels, Gauge<f64, AtomicU64>>,
    lag_histogram: HistogramFamily<SyncLabels>,
    phases: HistogramFamily<PhaseLabels>,
    status: Mutex<BTreeMap<String, SyncStatus>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            runs: Family::default(),
            failures: Family::default(),
            rows: Family::default(),
            conflicts: Family::default(),
            sync_good: Family::default(),
            run_duration: Family::new_with_constructor(run_histogram),
            backlog: Family::default(),
            lag: Family::default(),
            lag_histogram: Family::new_with_constructor(lag_histogram),
            phases: Family::new_with_constructor(run_histogram),
            status: Mutex::new(BTreeMap::new()),
        };
        let mut registry = Registry::default();
        registry.register("ibex_runs", "Sync runs by outcome", m.runs.clone());
        registry.register("ibex_run_failures", "Failed sync runs", m.failures.clone());
        registry.register("ibex_rows", "Rows written by sync runs", m.rows.clone());
        registry.register("ibex_conflicts", "Keys changed on more than one source", m.conflicts.clone());
        registry.register("ibex_sync_good", "1 if the last run was good", m.sync_good.clone());
        registry.register("ibex_run_duration_seconds", "Sync run duration", m.run_duration.clone());
        registry.register(
            "ibex_delta_backlog",
            "Delta rows not yet applied, per sync and table (counted up to 100000 per table)",
            m.backlog.clone(),
        );
        registry.register("ibex_replication_lag_seconds", "Age of the oldest change not yet applied", m.lag.clone());
        registry.register(
            "ibex_replication_lag_seconds_histogram",
            "Replication lag observed at each VAC refresh",
            m.lag_histogram.clone(),
        );
        registry.register("ibex_run_phase_seconds", "Duration of the phases of sync runs", m.phases.clone());
        Metrics { registry, ..m }
    }
}

fn sync_labels(sync: &str) -> SyncLabels {
    SyncLabels { sync: sync.to_string() }
}

impl Metrics {
    /// A CTL is about to run its sync (the status page shows "running").
    pub fn run_started(&self, sync: &str) {
        let Ok(mut status) = self.status.lock() else { return };
        status.entry(sync.to_string()).or_default().running_since = Some(Utc::now());
    }

    /// A run ended without a record (the catalog was unreachable).
    pub fn run_aborted(&self, sync: &str) {
        let Ok(mut status) = self.status.lock() else { return };
        if let Some(s) = status.get_mut(sync) {
            s.running_since = None;
        }
    }

    pub fn record_run(&self, run: &RunRecord) {
        let sync = &run.sync;
        let good = run.state == RunState::Good;
        // Both outcomes and both ops exist from the first run, so rate() sees a 0 before the first 1.
        for state in ["good", "bad"] {
            let counter = self.runs.get_or_create(&RunLabels { sync: sync.clone(), state: state.to_string() });
            if (state == "good") == good {
                counter.inc();
            }
        }
        // A block: no family guard may be held when the status lock is taken below.
        {
            let failures = self.failures.get_or_create(&sync_labels(sync));
            if !good {
                failures.inc();
            }
        }
        for (op, rows) in [("insert", run.inserted), ("delete", run.deleted)] {
            self.rows.get_or_create(&RowLabels { sync: sync.clone(), op: op.to_string() }).inc_by(rows.max(0) as u64);
        }
        let conflicts = run.conflicts.max(0) as u64;
        self.conflicts.get_or_create(&sync_labels(sync)).inc_by(conflicts);
        self.sync_good.get_or_create(&sync_labels(sync)).set(i64::from(good));
        let summary = RunSummary::of(run);
        self.run_duration.get_or_create(&sync_labels(sync)).observe(summary.seconds.max(0.0));
        let Ok(mut status) = self.status.lock() else { return };
        let s = status.entry(sync.clone()).or_default();
        s.running_since = None;
        s.last_state = Some(if good { RunState::Good } else { RunState::Bad });
        if conflicts > 0 {
            s.conflicts.push_back((summary.ended_at, conflicts));
        }
        s.prune(Utc::now());
        if good {
            s.last_good = Some(summary);
        } else {
            s.last_bad = Some(summary);
        }
    }

    /// Per-phase timings of one run, in seconds, for `ibex_run_phase_seconds`.
    pub fn record_phases(&self, sync: &str, phases: &[(String, f64)]) {
        for (phase, seconds) in phases {
            self.phases.get_or_create(&PhaseLabels { sync: sync.to_string(), phase: phase.clone() }).observe(*seconds);
        }
        let Ok(mut status) = self.status.lock() else { return };
        status.entry(sync.to_string()).or_default().phases.extend(phases.iter().map(|(p, _)| p.clone()));
    }

    /// The last good and bad runs from before this daemon started, read
    /// once when a CTL starts, so the status page is not empty until the
    /// sync's next good and bad runs. Only fills what no run has set yet.
    pub async fn seed_last_runs(&self, client: &impl GenericClient, sync: &str) {
        let good = runs::last(client, sync, RunState::Good).await;
        let bad = runs::last(client, sync, RunState::Bad).await;
        let (good, bad) = match (good, bad) {
            (Ok(good), Ok(bad)) => (good, bad),
            (Err(err), _) | (_, Err(err)) => {
                let what = "status page: cannot read the last runs; it shows new ones only";
                tracing::debug!(sync = %sync, error = %err, "{what}");
                return;
            }
        };
        let Ok(mut status) = self.status.lock() else { return };
        let s = status.entry(sync.to_string()).or_default();
        if s.last_state.is_some() {
            return;
        }
        s.last_good = good.as_ref().map(RunSummary::of);
        s.last_bad = bad.as_ref().map(RunSummary::of);
        s.last_state = match (&s.last_good, &s.last_bad) {
            (Some(g), Some(b)) if b.ended_at > g.ended_at => Some(RunState::Bad),
            (Some(_), _) => Some(RunState::Good),
            (None, Some(_)) => Some(RunState::Bad),
            (None, None) => None,
        };
    }

    /// Replaces the backlog and lag gauges of one sync, and records a lag sample.
    pub fn set_backlog(&self, sync: &str, per_table: &[(String, i64)], lag_seconds: f64) {
        let Ok(mut status) = self.status.lock() else { return };
        let s = status.entry(sync.to_string()).or_default();
        let now: BTreeSet<String> = per_table.iter().map(|(t, _)| t.clone()).collect();
        for gone in s.tables.difference(&now) {
            self.backlog.remove(&TableLabels { sync: sync.to_string(), table: gone.clone() });
        }
        for (table, keys) in per_table {
            self.backlog.get_or_create(&TableLabels { sync: sync.to_string(), table: table.clone() }).set(*keys);
        }
        s.tables = now;
        self.lag.get_or_create(&sync_labels(sync)).set(lag_seconds);
        self.lag_histogram.get_or_create(&sync_labels(sync)).observe(lag_seconds.max(0.0));
        s.lag = Some(lag_seconds);
        if s.lag_samples.len() >= LAG_SAMPLES {
            s.lag_samples.pop_front();
        }
        s.lag_samples.push_back((Utc::now(), lag_seconds));
    }

    /// Forgets syncs that are no longer run.
    pub fn retain_syncs(&self, syncs: &[String]) {
        let Ok(mut status) = self.status.lock() else { return };
        let gone: Vec<String> = status.keys().filter(|s| !syncs.contains(s)).cloned().collect();
        for sync in gone {
            let Some(s) = status.remove(&sync) else { continue };
            let labels = sync_labels(&sync);
            for state in ["good", "bad"] {
                self.runs.remove(&RunLabels { sync: sync.clone(), state: state.to_string() });
            }
            for op in ["insert", "delete"] {
                self.rows.remove(&RowLabels { sync: sync.clone(), op: op.to_string() });
            }
            self.failures.remove(&labels);
            self.conflicts.remove(&labels);
            self.sync_good.remove(&labels);
            self.run_duration.remove(&labels);
            self.lag.remove(&labels);
            self.lag_histogram.remove(&labels);
            for table in s.tables {
                self.backlog.remove(&TableLabels { sync: sync.clone(), table });
            }
            for phase in s.phases {
                self.phases.remove(&PhaseLabels { sync: sync.clone(), phase });
            }
        }
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %err, "cannot encode the metrics");
        }
        out
    }

    /// A copy of what the status page shows, by sync name.
    pub fn status(&self) -> BTreeMap<String, SyncStatus> {
        let Ok(mut status) = self.status.lock() else { return BTreeMap::new() };
        let now = Utc::now();
        for s in status.values_mut() {
            s.prune(now);
        }
        status.clone()
    }
}

/// The request line's method and path, if the head has one.
fn request_line(head: &str) -> Option<(&str, &str)> {
    let mut parts = head.lines().next()?.split_ascii_whitespace();
    Some((parts.next()?, parts.next()?))
}

/// Serves `GET /metrics` and `GET /` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut read = 0;
            // Read the request head; the body (if any) does not matter.
            while read < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf[read..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => {
                        read += n;
                        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..read]);
            const TEXT: &str = "text/plain; charset=utf-8";
            let (status, content_type, body) = match request_line(&head) {
                Some(("GET", path)) => match path.split('?').next().unwrap_or(path) {
                    "/metrics" => {
                        ("200 OK", prometheus_client::encoding::prometheus_text::CONTENT_TYPE, metrics.render())
                    }
                    "/" => (
                        "200 OK",
                        "text/html; charset=utf-8",
                        super::status_page::render(&metrics.status(), Utc::now()),
                    ),
                    _ => {
                        ("404 Not Found", TEXT, "not found: try /metrics (Prometheus) or / (status page)\n".to_string())
                    }
                },
                Some(_) => {
                    ("405 Method Not Allowed", TEXT, "only GET is served: try GET /metrics or GET /\n".to_string())
                }
                None => ("400 Bad Request", TEXT, "no HTTP request line: try GET /metrics or GET /\n".to_string()),
            };
            let allow = if status.starts_with("405") { "Allow: GET\r\n" } else { "" };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sync: &str, state: RunState, conflicts: i64) -> RunRecord {
        let started_at = Utc::now();
        RunRecord {
            id: 1,
            sync: sync.to_string(),
            started_at,
            ended_at: Some(started_at + chrono::Duration::milliseconds(300)),
            state,
            inserted: 2,
            deleted: 1,
            conflicts,
            attempts: 1,
            tables: Vec::new(),
            error: (state == RunState::Bad).then(|| "boom".to_string()),
            window_rows: None,
            backlog: None,
            phases: vec![("apply".to_string(), 0.2)],
            error_kind: None,
            plugin_failure: None,
        }
    }

    #[test]
    fn exposes_the_former_names_and_forgets_removed_syncs() {
        let m = Metrics::default();
        m.record_run(&run("s", RunState::Good, 3));
        m.record_run(&run("s", RunState::Bad, 0));
        m.set_backlog("s", &[("public.t".to_string(), 4)], 1.5);
        m.record_phases("s", &[("apply".to_string(), 0.2)]);
        let text = m.render();
        for needle in [
            "ibex_runs_total{sync=\"s\",state=\"good\"} 1",
            "ibex_runs_total{sync=\"s\",state=\"bad\"} 1",
            "ibex_run_failures_total{sync=\"s\"} 1",
            "ibex_rows_total{sync=\"s\",op=\"insert\"} 4",
            "ibex_conflicts_total{sync=\"s\"} 3",
            "ibex_sync_good{sync=\"s\"} 0",
            "ibex_run_duration_seconds_count{sync=\"s\"} 2",
            "ibex_delta_backlog{sync=\"s\",table=\"public.t\"} 4",
            "ibex_replication_lag_seconds{sync=\"s\"} 1.5",
            "ibex_replication_lag_seconds_histogram_count{sync=\"s\"} 1",
            "ibex_run_phase_seconds_count{sync=\"s\",phase=\"apply\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("_total_total"), "{text}");
        let status = m.status();
        assert_eq!(status["s"].conflicts_since(Utc::now() - chrono::Duration::hours(1)), 3);
        assert_eq!(status["s"].lag_samples.len(), 1);
        m.retain_syncs(&[]);
        assert!(!m.render().contains("sync=\"s\""));
        assert!(m.status().is_empty());
    }
}
