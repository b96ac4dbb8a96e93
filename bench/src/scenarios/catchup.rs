//! Catch-up after a backlog made while the engine was stopped.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ibex_tests::Daemon;

use super::{Bench, PGBENCH_TABLES, bucardo_dbs, ibex_dbs, pgbench_all, same};
use crate::report::{Better, Figure, Goal, Measure};

/// Scenario 5: Catch-up: pgbench runs while the engine is stopped; then it
/// starts. Both engines get the same backlog (ibex's is made for `seconds`,
/// Bucardo's is the same number of transactions) and the same clock: from
/// just before the engine's start command to the first comparison that
/// finds the target equal to the source.
pub fn catchup(bench: &mut Bench, seconds: u64, cap: Duration) -> Result<()> {
    eprintln!("== catch-up after {seconds} s of pgbench with the engine stopped");
    let s = bench.setup()?;
    s.cluster.create_pgbench_db("tmpl", 1)?;
    let wait_same = |src: &str, dst: &str, started: Instant| -> Result<Option<f64>> {
        loop {
            let checked_at = started.elapsed();
            if same(&s, &[src, dst], PGBENCH_TABLES)? {
                return Ok(Some(checked_at.as_secs_f64()));
            }
            if started.elapsed() > cap {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    ibex_dbs(&s, "tmpl", &["csrc", "cdst"]);
    s.ibex.sh("add all tables db=csrc herd=h");
    s.ibex.sh("add sync c herd=h dbs=csrc:source,cdst:target").ok();
    pgbench_all(&s.cluster, &["csrc"], &["-n", "-c", "2", "-T", &seconds.to_string()])?;
    let backlog: u64 = s.sql("csrc", "SELECT count(*) FROM pgbench_history").parse().context("counting the backlog")?;
    let mut daemon = Daemon::configure(&s.ibex)?;
    let started = Instant::now();
    daemon.start()?;
    let ibex_time = wait_same("csrc", "cdst", started)?;
    drop(daemon);
    bench.profile(&s, "catchup", &format!("catching up {backlog} txns"), "c")?;
    let b = bench.bucardo(&s)?;
    bucardo_dbs(&s, &b, "tmpl", &["bsrc", "bdst"])?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=bsrc", "relgroup=h"])?;
    b.cmd(&["add", "sync", "c", "relgroup=h", "dbs=bsrc:source,bdst:target"])?;
    let per_client = (backlog / 2).max(1).to_string();
    pgbench_all(&s.cluster, &["bsrc"], &["-n", "-c", "2", "-t", &per_client])?;
    let started = Instant::now();
    b.launch()?;
    let bucardo_time = wait_same("bsrc", "bdst", started)?;
    b.stop();
    let capped = |engine: &str| format!("{engine} had not caught up after {} s", cap.as_secs());
    bench.add(
        Measure::new(
            "catchup",
            "catch-up",
            format!("{backlog} pgbench txns made while stopped, start to equal"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::or_missing(ibex_time, capped("ibex")))
        .bucardo(Figure::or_missing(bucardo_time, capped("Bucardo")))
        .reference(Figure::missing("no raw reference: the goal is absolute"), "")
        .goal(Goal::Below(60.0), "seconds, not minutes (< 60 s)"),
    );
    Ok(())
}
