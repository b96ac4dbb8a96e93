//! The seed tutorial, timed by each engine's own run record.

use std::time::Duration;

use anyhow::{Result, bail};
use ibex_tests::Daemon;

use super::{Bench, PGBENCH_TABLES, bucardo_dbs, check_same, ibex_dbs, last_ibex_run, pgbench_all};
use crate::report::{Better, Figure, Goal, Measure};

/// Scenario 1: The seed tutorial: five pgbench databases, four sources and a
/// target, pgbench on every source, one kick: time to converge, each engine
/// timed by its own run record.
pub fn tutorial(bench: &mut Bench, transactions: u64) -> Result<()> {
    eprintln!("== seed tutorial: 4 sources + 1 target, pgbench -n -t {transactions} on each source");
    let s = bench.setup()?;
    s.cluster.create_pgbench_db("tmpl", 1)?;
    let t = transactions.to_string();
    let ibex_names = ["i1", "i2", "i3", "i4", "i5"];
    ibex_dbs(&s, "tmpl", &ibex_names);
    s.ibex.sh("add all tables db=i1 herd=therd");
    s.ibex.sh("add sync foobar herd=therd dbs=i1:source,i2:source,i3:source,i4:source,i5:target autokick=false").ok();
    // A running daemon, as Bucardo's is: connections open, tables checked.
    let mut daemon = Daemon::configure(&s.ibex)?;
    daemon.start()?;
    pgbench_all(&s.cluster, &ibex_names[..4], &["-n", "-t", &t])?;
    if !daemon.run(&["kick", "foobar", "--wait", "1800"]).success() {
        bail!("ibex: the tutorial run failed:\n{}", daemon.log());
    }
    drop(daemon);
    let ibex_time = last_ibex_run(&s)?;
    check_same(&s, "ibex", &ibex_names, PGBENCH_TABLES)?;
    bench.profile(&s, "tutorial", "the converging run", "foobar")?;

    let b = bench.bucardo(&s)?;
    let names = ["b1", "b2", "b3", "b4", "b5"];
    bucardo_dbs(&s, &b, "tmpl", &names)?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=b1", "relgroup=therd"])?;
    b.cmd(&["add", "dbgroup", "tgroup", "b1:source", "b2:source", "b3:source", "b4:source", "b5:target"])?;
    b.cmd(&["add", "sync", "foobar", "relgroup=therd", "dbs=tgroup", "autokick=0"])?;
    b.start()?;
    pgbench_all(&s.cluster, &names[..4], &["-n", "-t", &t])?;
    let bucardo_time = b.kick_and_wait(&s.cluster, "foobar", Duration::from_secs(1800))?;
    b.stop();
    if bucardo_time.is_some() {
        check_same(&s, "Bucardo", &names, PGBENCH_TABLES)?;
    }
    bench.add(
        Measure::new(
            "tutorial",
            "seed tutorial",
            format!("converge after 4 x {transactions} txns"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::of(ibex_time))
        .bucardo(Figure::or_missing(bucardo_time.map(|d| d.as_secs_f64()), "its run did not end in 1800 s"))
        .reference(Figure::missing("no raw reference: the goal is stated against Bucardo"), "")
        .goal(Goal::BucardoAtMost(0.2), "<= 1/5 of Bucardo's time"),
    );
    Ok(())
}
