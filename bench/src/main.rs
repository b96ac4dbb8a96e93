//! ibex benchmarks, side by side with Bucardo 5 (Debian's package, installed
//! when missing) and the raw limits, measured in one run on one machine.
//!
//!   cargo build --release -p ibex -p ibex-bench
//!   target/release/ibex-bench all                  (every scenario; JSON + README table)
//!   target/release/ibex-bench SCENARIO ...         (tutorial, bulk, capture, latency, catchup, copy, plugin)
//!   target/release/ibex-bench readme [FILE.json]   (README table from a results file; default: the newest)
//!
//! Each run writes bench/results/<date>-<short commit>.json (or --out FILE).
//! `all` at the full scales also rewrites README.md's table; other runs do
//! so only with --readme FILE.
//!
//! Options: --rows N (1000000), --rss-rows N (4000000), --transactions N
//! (10000), --samples N (200), --catchup-secs N (60), --cap-secs N (900),
//! --conflicts N (10000), --profile (print ibex's per-phase timings),
//! --out FILE, --readme FILE.
//!
//! IBEX_BENCH_LOG_DIR=DIR keeps the daemon logs of the tutorial, latency
//! and plugin scenarios there (with IBEX_LOG=ibex=debug: every run's phases and each
//! plugin batch's read and call times).

mod bucardo;
mod measure;
mod profile;
mod provenance;
mod readme;
mod report;
mod scenarios;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::provenance::{Provenance, Scales, repo_root};
use crate::report::{Results, ScenarioRun};
use crate::scenarios::Bench;

const SCENARIOS: [&str; 7] = ["tutorial", "bulk", "capture", "latency", "catchup", "copy", "plugin"];
const VALUED: [&str; 9] = [
    "--rows",
    "--rss-rows",
    "--transactions",
    "--samples",
    "--catchup-secs",
    "--cap-secs",
    "--conflicts",
    "--out",
    "--readme",
];

fn number(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => match args.get(i + 1).map(|v| v.parse::<u64>()) {
            Some(Ok(v)) if v > 0 => Ok(v),
            _ => bail!("{name} needs a positive whole number, e.g. {name} {default}"),
        },
        None => Ok(default),
    }
}

fn text(args: &[String], name: &str) -> Result<Option<String>> {
    match args.iter().position(|a| a == name) {
        Some(i) => match args.get(i + 1) {
            Some(v) if !v.starts_with("--") => Ok(Some(v.clone())),
            _ => bail!("{name} needs a file name"),
        },
        None => Ok(None),
    }
}

/// The words that are neither options nor option values.
fn positional(args: &[String]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if VALUED.contains(&a.as_str()) {
            skip = true;
        } else if !a.starts_with("--") {
            out.push(a.as_str());
        }
    }
    out
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(unknown) =
        args.iter().find(|a| a.starts_with("--") && !VALUED.contains(&a.as_str()) && *a != "--profile")
    {
        bail!("unknown option {unknown}: see the options at the top of bench/src/main.rs");
    }
    let words = positional(&args);
    let readme_path = text(&args, "--readme")?.map(PathBuf::from);
    if words.first() == Some(&"readme") {
        let source = match words.get(1) {
            Some(file) => PathBuf::from(file),
            None => readme::newest_results()?,
        };
        let results = readme::load(&source)?;
        return readme::rewrite(&readme_path.unwrap_or_else(|| repo_root().join("README.md")), &results, &source);
    }
    let chosen: Vec<&str> = if words.is_empty() || words == ["all"] { SCENARIOS.to_vec() } else { words };
    if let Some(bad) = chosen.iter().find(|s| !SCENARIOS.contains(s)) {
        bail!("unknown scenario {bad:?}: use {}, all, or readme [FILE.json]", SCENARIOS.join(", "));
    }
    let scales = Scales {
        rows: number(&args, "--rows", Scales::FULL.rows)?,
        rss_rows: number(&args, "--rss-rows", Scales::FULL.rss_rows)?,
        transactions: number(&args, "--transactions", Scales::FULL.transactions)?,
        samples: number(&args, "--samples", Scales::FULL.samples)?,
        catchup_secs: number(&args, "--catchup-secs", Scales::FULL.catchup_secs)?,
        cap_secs: number(&args, "--cap-secs", Scales::FULL.cap_secs)?,
        conflicts: number(&args, "--conflicts", Scales::FULL.conflicts)?,
    };
    // Before any cluster starts: installing plperl can upgrade the server
    // package, and a server started from the old binaries cannot load the
    // new plperl.so (an undefined symbol), so Bucardo's install would fail.
    bucardo::ensure_installed()?;
    let command = std::iter::once("ibex-bench".to_string()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
    let provenance = Provenance::gather(command, scales)?;
    let out = match text(&args, "--out")? {
        Some(file) => PathBuf::from(file),
        None => unused_name(provenance.results_path()),
    };
    let every_scenario = chosen.len() == SCENARIOS.len();
    let mut bench = Bench { results: Results::new(provenance), print_profiles: args.iter().any(|a| a == "--profile") };
    for scenario in chosen {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&mut bench, scenario, scales)));
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(panic) => Some(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()),
            ),
        };
        if let Some(e) = &error {
            eprintln!("!! scenario {scenario} failed: {e}");
        }
        bench.results.scenarios.push(ScenarioRun {
            name: scenario.into(),
            seconds: started.elapsed().as_secs_f64(),
            error,
        });
    }
    let results = bench.results;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    println!("{}", readme::table(&results, &out));
    match readme_path {
        Some(readme) => readme::rewrite(&readme, &results, &out)?,
        None if every_scenario && results.provenance.full_scale => {
            readme::rewrite(&repo_root().join("README.md"), &results, &out)?
        }
        None => eprintln!(
            "README.md left alone (not a full-scale run of every scenario): `ibex-bench readme {}` writes it anyway",
            out.display()
        ),
    }
    let failed: Vec<&str> = results.scenarios.iter().filter(|s| s.error.is_some()).map(|s| s.name.as_str()).collect();
    if !failed.is_empty() {
        bail!("scenarios failed: {} (their reasons are in {})", failed.join(", "), out.display());
    }
    Ok(())
}

fn run(bench: &mut Bench, scenario: &str, scales: Scales) -> Result<()> {
    match scenario {
        "tutorial" => scenarios::tutorial(bench, scales.transactions),
        "bulk" => scenarios::bulk(bench, scales.rows, scales.rss_rows),
        "capture" => scenarios::capture(bench, scales.rows),
        "latency" => scenarios::latency(bench, scales.samples),
        "catchup" => scenarios::catchup(bench, scales.catchup_secs, Duration::from_secs(scales.cap_secs)),
        "copy" => scenarios::initial_copy(bench, scales.rows),
        "plugin" => scenarios::plugin(bench, scales.conflicts),
        other => bail!("unknown scenario {other:?}"),
    }
}

/// `path`, or `path` with -2, -3, ... before the extension when a file of
/// that name exists (two runs on one day and commit).
fn unused_name(path: PathBuf) -> PathBuf {
    if !path.exists() {
        return path;
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    (2..).map(|n| path.with_file_name(format!("{stem}-{n}.json"))).find(|p| !p.exists()).unwrap_or(path)
}
