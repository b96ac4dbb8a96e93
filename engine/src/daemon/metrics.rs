//! Prometheus metrics: counters the CTLs update after each run, gauges the
//! VAC refreshes (delta backlog, replication lag), and a minimal HTTP
//! endpoint that serves them as text. No secrets are ever in here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::catalog::{RunRecord, RunState};

/// Upper bounds of the run duration histogram, in seconds.
const BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Default)]
struct SyncCounters {
    good: u64,
    bad: u64,
    inserted: u64,
    deleted: u64,
    conflicts: u64,
    buckets: Vec<u64>,
    duration_sum: f64,
    last_good: bool,
}

#[derive(Default)]
struct Inner {
    syncs: BTreeMap<String, SyncCounters>,
    /// (sync, table) -> changed keys waiting.
    backlog: BTreeMap<(String, String), i64>,
    /// sync -> seconds since the oldest change not yet applied.
    lag: BTreeMap<String, f64>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn record_run(&self, run: &RunRecord) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let c = inner.syncs.entry(run.sync.clone()).or_default();
        if c.buckets.is_empty() {
            c.buckets = vec![0; BUCKETS.len()];
        }
        let seconds = run.duration().num_milliseconds() as f64 / 1000.0;
        match run.state {
            RunState::Good => {
                c.good += 1;
                c.last_good = true;
            }
            _ => {
                c.bad += 1;
                c.last_good = false;
            }
        }
        c.inserted += run.inserted.max(0) as u64;
        c.deleted += run.deleted.max(0) as u64;
        c.conflicts += run.conflicts.max(0) as u64;
        c.duration_sum += seconds;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                c.buckets[i] += 1;
            }
        }
    }

    /// Replaces the backlog and lag gauges of one sync.
    pub fn set_backlog(&self, sync: &str, per_table: &[(String, i64)], lag_seconds: f64) {
        let Ok(mut inner) = self.inner.lock() else { return };
        inner.backlog.retain(|(s, _), _| s != sync);
        for (table, keys) in per_table {
            inner.backlog.insert((sync.to_string(), table.clone()), *keys);
        }
        inner.lag.insert(sync.to_string(), lag_seconds);
    }

    /// Forgets syncs that are no longer run.
    pub fn retain_syncs(&self, syncs: &[String]) {
        let Ok(mut inner) = self.inner.lock() else { return };
        inner.syncs.retain(|s, _| syncs.contains(s));
        inner.backlog.retain(|(s, _), _| syncs.contains(s));
        inner.lag.retain(|s, _| syncs.contains(s));
    }

    pub fn render(&self) -> String {
        let Ok(inner) = self.inner.lock() else { return String::new() };
        let mut out = String::new();
        let _ = writeln!(out, "# HELP ibex_runs_total Sync runs by outcome.\n# TYPE ibex_runs_total counter");
        for (sync, c) in &inner.syncs {
            let s = label(sync);
            let _ = writeln!(out, "ibex_runs_total{{sync=\"{s}\",state=\"good\"}} {}", c.good);
            let _ = writeln!(out, "ibex_runs_total{{sync=\"{s}\",state=\"bad\"}} {}", c.bad);
        }
        let _ =
            writeln!(out, "# HELP ibex_run_failures_total Failed sync runs.\n# TYPE ibex_run_failures_total counter");
        for (sync, c) in &inner.syncs {
            let _ = writeln!(out, "ibex_run_failures_total{{sync=\"{}\"}} {}", label(sync), c.bad);
        }
        let _ = writeln!(out, "# HELP ibex_rows_total Rows written by sync runs.\n# TYPE ibex_rows_total counter");
        for (sync, c) in &inner.syncs {
            let s = label(sync);
            let _ = writeln!(out, "ibex_rows_total{{sync=\"{s}\",op=\"insert\"}} {}", c.inserted);
            let _ = writeln!(out, "ibex_rows_total{{sync=\"{s}\",op=\"delete\"}} {}", c.deleted);
        }
        let _ = writeln!(
            out,
            "# HELP ibex_conflicts_total Keys changed on more than one source.\n# TYPE ibex_conflicts_total counter"
        );
        for (sync, c) in &inner.syncs {
            let _ = writeln!(out, "ibex_conflicts_total{{sync=\"{}\"}} {}", label(sync), c.conflicts);
        }
        let _ = writeln!(out, "# HELP ibex_sync_good 1 if the last run was good.\n# TYPE ibex_sync_good gauge");
        for (sync, c) in &inner.syncs {
            let _ = writeln!(out, "ibex_sync_good{{sync=\"{}\"}} {}", label(sync), u8::from(c.last_good));
        }
        let _ = writeln!(
            out,
            "# HELP ibex_run_duration_seconds Sync run duration.\n# TYPE ibex_run_duration_seconds histogram"
        );
        for (sync, c) in &inner.syncs {
            let s = label(sync);
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ =
                    writeln!(out, "ibex_run_duration_seconds_bucket{{sync=\"{s}\",le=\"{bound}\"}} {}", c.buckets[i]);
            }
            let total = c.good + c.bad;
            let _ = writeln!(out, "ibex_run_duration_seconds_bucket{{sync=\"{s}\",le=\"+Inf\"}} {total}");
            let _ = writeln!(out, "ibex_run_duration_seconds_sum{{sync=\"{s}\"}} {}", c.duration_sum);
            let _ = writeln!(out, "ibex_run_duration_seconds_count{{sync=\"{s}\"}} {total}");
        }
        let _ = writeln!(
            out,
            "# HELP ibex_delta_backlog Delta rows not yet applied, per sync and table (counted up to 100000 per table).\n# TYPE ibex_delta_backlog gauge"
        );
        for ((sync, table), keys) in &inner.backlog {
            let _ = writeln!(out, "ibex_delta_backlog{{sync=\"{}\",table=\"{}\"}} {keys}", label(sync), label(table));
        }
        let _ = writeln!(
            out,
            "# HELP ibex_replication_lag_seconds Age of the oldest change not yet applied.\n# TYPE ibex_replication_lag_seconds gauge"
        );
        for (sync, lag) in &inner.lag {
            let _ = writeln!(out, "ibex_replication_lag_seconds{{sync=\"{}\"}} {lag}", label(sync));
        }
        out
    }
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut read = 0;
            // Read the request head; the body (if any) does not matter.
            while read < buf.len() {
                match tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf[read..])).await {
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
            let (status, body) = if head.starts_with("GET /metrics") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}
