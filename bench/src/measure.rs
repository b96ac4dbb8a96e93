//! Timing child processes (wall time and peak RSS) and the report table.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// What one child process cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub wall: Duration,
    pub peak_rss_kib: i64,
}

/// Runs a command to completion and measures it with wait4(2), so the
/// peak RSS is this child's own.
pub fn run_measured(mut cmd: Command) -> Result<Cost> {
    let started = Instant::now();
    let child = cmd.spawn().context("starting a measured command")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if waited != pid {
        bail!("wait4 failed for {cmd:?}");
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok(Cost { wall, peak_rss_kib: usage.ru_maxrss })
}

pub fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = f()?;
    Ok((value, started.elapsed()))
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub measure: String,
    pub ibex: f64,
    pub reference: Option<f64>,
    pub reference_name: String,
    /// ibex / reference, oriented so that above 1 is better for ibex where
    /// the goal is stated that way (see `better`).
    pub ratio: Option<f64>,
    pub unit: String,
    pub goal: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub machine: String,
    pub postgres: String,
    pub rows: Vec<Row>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        scenario: &str,
        measure: &str,
        ibex: f64,
        reference: Option<(f64, &str)>,
        unit: &str,
        goal: &str,
    ) {
        let row = Row {
            scenario: scenario.into(),
            measure: measure.into(),
            ibex,
            reference: reference.map(|r| r.0),
            reference_name: reference.map(|r| r.1.to_string()).unwrap_or_default(),
            ratio: reference.filter(|r| r.0 != 0.0).map(|r| ibex / r.0),
            unit: unit.into(),
            goal: goal.into(),
        };
        eprintln!(
            "  {scenario} / {measure}: ibex {:.3} {unit}{}",
            ibex,
            row.ratio
                .map(|r| format!(", {} {:.3} {unit}, ratio {r:.3}", row.reference_name, row.reference.unwrap_or(0.0)))
                .unwrap_or_default()
        );
        self.rows.push(row);
    }

    pub fn print(&self) {
        println!("machine: {}", self.machine);
        println!("postgres: {}", self.postgres);
        println!("| scenario | measure | ibex | reference | ratio | goal |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {:.2} {} | {} | {} | {} |",
                r.scenario,
                r.measure,
                r.ibex,
                r.unit,
                r.reference.map(|v| format!("{:.2} {} ({})", v, r.unit, r.reference_name)).unwrap_or_default(),
                r.ratio.map(|v| format!("{v:.2}")).unwrap_or_default(),
                r.goal
            );
        }
    }

    pub fn write_json(&self, path: &str) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        eprintln!("wrote {path}");
        Ok(())
    }
}

/// One line describing this machine, for the report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib / 1024 / 1024)
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model}), {mem} GiB RAM")
}
