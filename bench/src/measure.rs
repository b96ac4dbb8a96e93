//! Timing child processes (wall time and peak RSS), and the report: each
//! row a measure for Bucardo and ibex, and the raw limit where one exists,
//! all from the same run on the same cluster.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// What one child process cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub peak_rss_kib: i64,
}

/// Runs a command to completion and measures its peak RSS with wait4(2),
/// so it is this child's own.
pub fn run_measured(mut cmd: Command) -> Result<Cost> {
    let child = cmd.spawn().context("starting a measured command")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if waited != pid {
        bail!("wait4 failed for {cmd:?}");
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    Ok(Cost { peak_rss_kib: usage.ru_maxrss })
}

pub fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = f()?;
    Ok((value, started.elapsed()))
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub measure: String,
    pub unit: String,
    pub better: Better,
    pub bucardo: Option<f64>,
    pub ibex: Option<f64>,
    /// The raw limit (a bare COPY pipe, no triggers) measured in the same run.
    pub raw: Option<f64>,
    /// How many times better ibex did than Bucardo (above 1: ibex is better).
    pub vs_bucardo: Option<f64>,
    /// ibex divided by the raw limit: a fraction of the raw rate, or a
    /// multiple of the raw time.
    pub of_raw: Option<f64>,
    pub goal: String,
    /// Set when a measurement hit its cap (e.g. "> 600 s").
    pub note: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub postgres: String,
    pub bucardo: String,
    pub ibex: String,
    pub rows: Vec<Row>,
}

pub struct Measure<'a> {
    pub scenario: &'a str,
    pub measure: String,
    pub unit: &'a str,
    pub better: Better,
    pub bucardo: Option<f64>,
    pub ibex: Option<f64>,
    pub raw: Option<f64>,
    pub goal: &'a str,
    pub note: String,
}

impl<'a> Measure<'a> {
    pub fn new(scenario: &'a str, measure: impl Into<String>, unit: &'a str, better: Better) -> Self {
        Measure {
            scenario,
            measure: measure.into(),
            unit,
            better,
            bucardo: None,
            ibex: None,
            raw: None,
            goal: "",
            note: String::new(),
        }
    }
    pub fn bucardo(mut self, v: Option<f64>) -> Self {
        self.bucardo = v;
        self
    }
    pub fn ibex(mut self, v: f64) -> Self {
        self.ibex = Some(v);
        self
    }
    pub fn raw(mut self, v: f64) -> Self {
        self.raw = Some(v);
        self
    }
    pub fn goal(mut self, goal: &'a str) -> Self {
        self.goal = goal;
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

fn better_ratio(better: Better, ibex: Option<f64>, other: Option<f64>) -> Option<f64> {
    let (i, o) = (ibex?, other?);
    if i <= 0.0 || o <= 0.0 {
        return None;
    }
    Some(match better {
        Better::Lower => o / i,
        Better::Higher => i / o,
    })
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "—".into(),
        Some(v) if v >= 1000.0 => format!("{v:.0} {unit}"),
        Some(v) if v >= 10.0 => format!("{v:.1} {unit}"),
        Some(v) => format!("{v:.3} {unit}"),
    }
}

impl Report {
    pub fn add(&mut self, m: Measure) {
        let row = Row {
            scenario: m.scenario.into(),
            vs_bucardo: better_ratio(m.better, m.ibex, m.bucardo),
            of_raw: match (m.ibex, m.raw) {
                (Some(i), Some(r)) if r > 0.0 => Some(i / r),
                _ => None,
            },
            measure: m.measure,
            unit: m.unit.into(),
            better: m.better,
            bucardo: m.bucardo,
            ibex: m.ibex,
            raw: m.raw,
            goal: m.goal.into(),
            note: m.note,
        };
        eprintln!(
            "  {} / {}: Bucardo {}, ibex {}, raw {}{}",
            row.scenario,
            row.measure,
            fmt(row.bucardo, &row.unit),
            fmt(row.ibex, &row.unit),
            fmt(row.raw, &row.unit),
            if row.note.is_empty() { String::new() } else { format!(" ({})", row.note) }
        );
        self.rows.push(row);
    }

    /// The results as a Markdown section (what the README shows).
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Measured {} on {} with PostgreSQL {}, {} and ibex {} (`cargo run --release -p ibex-bench -- all`; \
             every figure from the same run on the same cluster; raw = a bare `COPY TO STDOUT | COPY FROM STDIN` pipe \
             or the same work without triggers).\n\n",
            self.date, self.machine, self.postgres, self.bucardo, self.ibex
        );
        out.push_str("| scenario | measure | Bucardo | ibex | ibex vs Bucardo | raw limit | ibex / raw | goal |\n");
        out.push_str("|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let note = if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) };
            out.push_str(&format!(
                "| {} | {} | {}{} | {} | {} | {} | {} | {} |\n",
                r.scenario,
                r.measure,
                fmt(r.bucardo, &r.unit),
                &note,
                fmt(r.ibex, &r.unit),
                r.vs_bucardo.map(|v| format!("{v:.1}x")).unwrap_or_else(|| "—".into()),
                fmt(r.raw, &r.unit),
                r.of_raw.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into()),
                r.goal
            ));
        }
        out
    }

    pub fn write(&self, json_path: &str, markdown_path: &str) -> Result<()> {
        std::fs::write(json_path, serde_json::to_string_pretty(self)?)?;
        std::fs::write(markdown_path, self.markdown())?;
        eprintln!("wrote {json_path} and {markdown_path}");
        Ok(())
    }

    /// Replaces the README's section between the bench markers.
    pub fn write_into_readme(&self, readme: &str) -> Result<()> {
        let text = std::fs::read_to_string(readme)?;
        let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
        let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
            bail!("{readme} has no {begin} ... {end} section");
        };
        let updated = format!("{}{begin}\n{}{}", &text[..a], self.markdown(), &text[b..]);
        std::fs::write(readme, updated)?;
        eprintln!("updated the results in {readme}");
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
