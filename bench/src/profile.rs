//! Where ibex's time went in a scenario: the per-phase timings every run
//! records (`ibex.run.phases`, also in `ibex sync run --json`), summed over
//! the runs of one sync, in the order the phases first occurred.

use anyhow::{Context, Result};
use ibex_tests::Cluster;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub phase: String,
    /// Seconds summed over the runs.
    pub total: f64,
    /// How many runs recorded this phase.
    pub runs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub scenario: String,
    /// Which ibex run (or runs) of the scenario this is.
    pub label: String,
    pub sync: String,
    pub runs: u64,
    /// Wall time of those runs by the catalog (ended - started), summed.
    pub run_seconds: f64,
    pub phases: Vec<Phase>,
}

/// The phases of every run of `sync` in the control database `ibex`.
/// Only runs after run id `after` count (0: all; more: past a warm-up).
pub fn collect(cluster: &Cluster, scenario: &str, label: &str, sync: &str, after: i64) -> Result<Profile> {
    let quoted = sync.replace('\'', "''");
    let totals = cluster.psql(
        "ibex",
        &format!(
            "SELECT count(*), coalesce(sum(extract(epoch FROM ended_at - started_at)), 0)
               FROM ibex.run WHERE sync = '{quoted}' AND id > {after} AND ended_at IS NOT NULL"
        ),
    )?;
    let (runs, run_seconds) = totals.split_once('|').context("reading the run count")?;
    let phases = cluster.psql(
        "ibex",
        &format!(
            "SELECT p.value->>0, sum((p.value->>1)::float8), count(*)
               FROM ibex.run r, jsonb_array_elements(r.phases) WITH ORDINALITY p
              WHERE r.sync = '{quoted}' AND r.id > {after}
              GROUP BY 1 ORDER BY min(r.id), min(p.ordinality)"
        ),
    )?;
    let phases = phases
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.split('|');
            let phase = parts.next().unwrap_or_default().to_string();
            let total = parts.next().and_then(|v| v.parse().ok()).context("reading a phase's seconds")?;
            let runs = parts.next().and_then(|v| v.parse().ok()).context("reading a phase's run count")?;
            Ok(Phase { phase, total, runs })
        })
        .collect::<Result<_>>()?;
    Ok(Profile {
        scenario: scenario.into(),
        label: label.into(),
        sync: sync.into(),
        runs: runs.trim().parse().context("reading the run count")?,
        run_seconds: run_seconds.trim().parse().context("reading the run seconds")?,
        phases,
    })
}

impl Profile {
    /// A few lines for the terminal (what `--profile` prints).
    pub fn text(&self) -> String {
        let mut out = format!(
            "  profile {} / {} (sync {}): {} run(s), {:.3} s in runs\n",
            self.scenario, self.label, self.sync, self.runs, self.run_seconds
        );
        let accounted: f64 = self.phases.iter().map(|p| p.total).sum();
        for p in &self.phases {
            let share = if accounted > 0.0 { 100.0 * p.total / accounted } else { 0.0 };
            let mean_ms = 1000.0 * p.total / p.runs.max(1) as f64;
            out.push_str(&format!(
                "    {:<16} {:>10.3} s  {:>5.1} %  mean {:>9.2} ms over {} run(s)\n",
                p.phase, p.total, share, mean_ms, p.runs
            ));
        }
        out
    }
}
