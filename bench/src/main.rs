//! ibex benchmarks, side by side with Bucardo 5 (Debian's package, installed
//! when missing) and the raw limits, measured in one run on one cluster.
//!
//!   cargo build --release -p ibex -p ibex-bench
//!   target/release/ibex-bench all [--readme README.md]
//!   target/release/ibex-bench SCENARIO ...   (tutorial, bulk, capture, latency, catchup, copy, plugin)
//!
//! Options: --rows N (1000000), --rss-rows N (4000000), --transactions N
//! (10000), --samples N (200), --catchup-secs N (60), --cap-secs N (900),
//! --conflicts N (10000).

mod bucardo;
mod measure;
mod scenarios;

use std::time::Duration;

use anyhow::{Result, bail};

fn arg_value(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(v) => Ok(v),
            None => bail!("{name} needs a number"),
        },
        None => Ok(default),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenarios: Vec<&str> = args.iter().take_while(|a| !a.starts_with("--")).map(String::as_str).collect();
    let rows = arg_value(&args, "--rows", 1_000_000)?;
    let rss_rows = arg_value(&args, "--rss-rows", 4_000_000)?;
    let transactions = arg_value(&args, "--transactions", 10_000)?;
    let samples = arg_value(&args, "--samples", 200)?;
    let catchup_secs = arg_value(&args, "--catchup-secs", 60)?;
    let cap = Duration::from_secs(arg_value(&args, "--cap-secs", 900)?);
    let conflicts = arg_value(&args, "--conflicts", 10_000)?;
    let readme = args.iter().position(|a| a == "--readme").and_then(|i| args.get(i + 1)).cloned();
    let all = ["tutorial", "bulk", "capture", "latency", "catchup", "copy", "plugin"];
    let chosen: Vec<&str> = if scenarios.is_empty() || scenarios == ["all"] { all.to_vec() } else { scenarios };
    let mut report = measure::Report::default();
    for scenario in chosen {
        match scenario {
            "tutorial" => scenarios::tutorial(&mut report, transactions)?,
            "bulk" => scenarios::bulk(&mut report, rows, rss_rows)?,
            "capture" => scenarios::capture(&mut report, rows)?,
            "latency" => scenarios::latency(&mut report, samples)?,
            "catchup" => scenarios::catchup(&mut report, catchup_secs, cap)?,
            "copy" => scenarios::initial_copy(&mut report, rows)?,
            "plugin" => scenarios::plugin(&mut report, conflicts)?,
            other => bail!("unknown scenario {other:?}: use {} or all", all.join(", ")),
        }
    }
    println!("{}", report.markdown());
    report.write("bench-results.json", "bench-results.md")?;
    if let Some(readme) = readme {
        report.write_into_readme(&readme)?;
    }
    Ok(())
}
