//! Runs the real `ibex` binary, the way an operator does.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Where the `ibex` binary is: `IBEX_BIN`, else next to this test's
/// `deps/` directory (cargo builds it for `cargo test --workspace`).
pub fn ibex_bin() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("IBEX_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // Tests live in target/<profile>/deps/, binaries in target/<profile>/.
    let dir = exe.parent().context("cannot find the target directory")?;
    let profile_dir = if dir.ends_with("deps") { dir.parent().unwrap_or(dir) } else { dir };
    let bin = profile_dir.join("ibex");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (`cargo build -p ibex`) or run the whole suite with `cargo test --workspace`",
            bin.display()
        );
    }
    Ok(bin)
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// Panics with the command's output unless it succeeded.
    pub fn ok(self) -> Self {
        assert!(
            self.success(),
            "expected success, got exit {}:\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless it failed with a one-line error containing `needle`.
    pub fn fails_with(self, needle: &str) -> Self {
        assert!(!self.success(), "expected failure containing {needle:?}, got success:\n{}", self.stdout);
        assert!(self.stderr.contains(needle), "expected an error containing {needle:?}, got:\n{}", self.stderr);
        let error_lines = self.stderr.lines().filter(|l| l.starts_with("error:")).count();
        assert_eq!(error_lines, 1, "expected one error line, got:\n{}", self.stderr);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", self.stdout))
    }
}

/// A count of a `sync run --json` report (`inserted`, `deleted`, `conflicts`...).
pub fn run_count(run: &serde_json::Value, key: &str) -> i64 {
    run["run"][key].as_i64().unwrap_or_else(|| panic!("no {key} in {run}"))
}

/// The CLI pointed at one control database.
#[derive(Debug, Clone)]
pub struct Ibex {
    pub control: String,
    pub bin: PathBuf,
    pub envs: Vec<(String, String)>,
}

impl Ibex {
    pub fn new(control_dsn: impl Into<String>) -> Result<Self> {
        Ok(Ibex { control: control_dsn.into(), bin: ibex_bin()?, envs: Vec::new() })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("IBEX_CONTROL", &self.control).env_remove("PGPASSWORD").args(args).stdin(Stdio::null());
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    /// Runs `ibex ARGS...` and collects its output.
    pub fn run(&self, args: &[&str]) -> Outcome {
        let out = self.command(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// `run` split on whitespace, for commands without quoted parts.
    pub fn sh(&self, line: &str) -> Outcome {
        let args: Vec<&str> = line.split_whitespace().collect();
        self.run(&args)
    }
}

/// Every row of the control catalog's configuration tables as JSON text,
/// to prove a refused command changed nothing.
pub fn catalog_snapshot(cluster: &crate::Cluster, control_db: &str) -> String {
    let tables = [
        "db",
        "relation",
        "herd",
        "herd_member",
        "dbgroup",
        "dbgroup_member",
        "sync",
        "setting",
        "plugin",
        "plugin_use",
    ];
    let sql = tables
        .iter()
        .map(|t| format!("SELECT '{t}', coalesce(json_agg(x ORDER BY x::text)::text, '[]') FROM ibex.{t} x"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    cluster.psql(control_db, &sql).unwrap_or_else(|e| panic!("cannot read the catalog: {e:#}"))
}
