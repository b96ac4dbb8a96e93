//! Where and on what a bench run was made: the machine, the versions, the
//! commit (and whether the tree had uncommitted changes), the command line
//! and the scales, so that a results file says what produced it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The sizes of the workloads (each a command-line option).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Scales {
    pub rows: u64,
    pub rss_rows: u64,
    pub transactions: u64,
    pub samples: u64,
    pub catchup_secs: u64,
    pub cap_secs: u64,
    pub conflicts: u64,
}

impl Scales {
    /// The scales the README table is stated for.
    pub const FULL: Scales = Scales {
        rows: 1_000_000,
        rss_rows: 4_000_000,
        transactions: 10_000,
        samples: 200,
        catchup_secs: 60,
        cap_secs: 900,
        conflicts: 10_000,
    };
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub ram_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    /// When the run started (UTC, RFC 3339).
    pub started: String,
    pub command: String,
    pub scales: Scales,
    pub full_scale: bool,
    pub machine: Machine,
    pub commit: String,
    pub commit_short: String,
    /// Uncommitted changes in the tree when the run started.
    pub dirty: bool,
    pub dirty_paths: Vec<String>,
    pub ibex: String,
    /// Filled in by the first scenario, from its cluster.
    pub postgres: Option<String>,
    /// Settings of the bench's clusters that bear on the figures.
    pub postgres_settings: Vec<(String, String)>,
    /// Filled in after Bucardo is installed (never before: see issue 17).
    pub bucardo: Option<String>,
}

/// The repository this bench was built from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        anyhow::bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git(args: &[&str]) -> Result<String> {
    output(Command::new("git").arg("-C").arg(repo_root()).args(args))
}

impl Provenance {
    pub fn gather(command: String, scales: Scales) -> Result<Provenance> {
        let commit = git(&["rev-parse", "HEAD"]).context("reading the commit (is this a git checkout?)")?;
        let dirty_paths: Vec<String> =
            git(&["status", "--porcelain", "--untracked-files=no"])?.lines().map(|l| l.trim().to_string()).collect();
        let ibex_bin = ibex_tests::ibex::ibex_bin()?;
        let ibex = output(Command::new(&ibex_bin).arg("--version"))?.replace("ibex ", "");
        Ok(Provenance {
            started: output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?,
            command,
            full_scale: scales == Scales::FULL,
            scales,
            machine: machine(),
            commit_short: commit.chars().take(9).collect(),
            commit,
            dirty: !dirty_paths.is_empty(),
            dirty_paths,
            ibex: format!("{ibex} ({})", ibex_bin.display()),
            postgres: None,
            postgres_settings: Vec::new(),
            bucardo: None,
        })
    }

    /// `bench/results/<date>-<short commit>.json`.
    pub fn results_path(&self) -> PathBuf {
        let date = self.started.get(..10).unwrap_or("undated");
        repo_root().join("bench/results").join(format!("{date}-{}.json", self.commit_short))
    }
}

/// Reads Bucardo's version; called only once it is installed.
pub fn bucardo_version() -> Result<String> {
    output(Command::new("bucardo").arg("--version"))
}

fn machine() -> Machine {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    Machine { cores, ram_gib: (ram_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0, cpu_model, kernel }
}
