//! ibex benchmarks. Every figure is a ratio against a reference measured in
//! the same run on the same cluster: a raw `COPY TO STDOUT | COPY FROM
//! STDIN` pipe of the same rows, or the same workload without capture.
//!
//!   cargo build --release -p ibex -p ibex-bench
//!   target/release/ibex-bench bulk [--rows 1000000] [--rss-rows 4000000]
//!   target/release/ibex-bench capture [--rows 1000000]
//!   target/release/ibex-bench latency [--samples 200]
//!   target/release/ibex-bench plugin [--conflicts 10000]

//!   target/release/ibex-bench all

mod measure;
mod scenarios;

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
    let scenario = args.first().map(String::as_str).unwrap_or("all");
    let rows = arg_value(&args, "--rows", 1_000_000)?;
    let rss_rows = arg_value(&args, "--rss-rows", 4_000_000)?;
    let samples = arg_value(&args, "--samples", 200)?;
    let conflicts = arg_value(&args, "--conflicts", 10_000)?;
    let mut report = measure::Report::default();
    match scenario {
        "bulk" => scenarios::bulk(&mut report, rows, rss_rows)?,
        "capture" => scenarios::capture(&mut report, rows)?,
        "latency" => scenarios::latency(&mut report, samples)?,
        "plugin" => scenarios::plugin(&mut report, conflicts)?,
        "all" => {
            scenarios::bulk(&mut report, rows, rss_rows)?;
            scenarios::capture(&mut report, rows)?;
            scenarios::latency(&mut report, samples)?;
            scenarios::plugin(&mut report, conflicts)?;
        }
        other => bail!("unknown scenario {other:?}: use bulk, capture, latency, plugin or all"),
    }
    report.print();
    report.write_json("bench-results.json")?;
    Ok(())
}
