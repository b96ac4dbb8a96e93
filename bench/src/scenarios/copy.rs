//! Initial copy (onetimecopy) into an empty target, against the raw pipe.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{Bench, bucardo_dbs, check_same, ibex_dbs, last_ibex_run, raw_pipe, scale_for};
use crate::measure::run_measured;
use crate::report::{Better, Figure, Goal, Measure};

/// Scenario 6: Initial copy: onetimecopy of `rows` rows into an empty target.
pub fn initial_copy(bench: &mut Bench, rows: u64) -> Result<()> {
    eprintln!("== onetimecopy of pgbench_accounts (at least {rows} rows) into an empty target");
    let s = bench.setup()?;
    s.cluster.create_pgbench_db("tmpl", scale_for(rows))?;
    s.cluster.clone_db("tmpl", "empty")?;
    s.sql("empty", "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history");
    ibex_dbs(&s, "tmpl", &["osrc"]);
    s.cluster.clone_db("empty", "odst")?;
    s.add_db("odst", "odst").ok();
    s.ibex.sh("add table pgbench_accounts db=osrc herd=h").ok();
    s.ibex.sh("add sync otc herd=h dbs=osrc:source,odst:target onetimecopy=1 autokick=false").ok();
    // The whole table is copied: pgbench's scale rounds `rows` up.
    let rows: u64 = s.sql("osrc", "SELECT count(*) FROM pgbench_accounts").parse().context("counting the rows")?;
    run_measured(s.ibex.command(&["sync", "run", "otc"]))?;
    let ibex_secs = last_ibex_run(&s)?;
    check_same(&s, "ibex", &["osrc", "odst"], &["pgbench_accounts"])?;
    bench.profile(&s, "copy", &format!("onetimecopy of {rows} rows"), "otc")?;
    let b = bench.bucardo(&s)?;
    bucardo_dbs(&s, &b, "tmpl", &["psrc"])?;
    s.cluster.clone_db("empty", "pdst")?;
    b.add_db("pdst", "pdst")?;
    b.cmd(&["add", "table", "pgbench_accounts", "db=psrc", "relgroup=h"])?;
    b.cmd(&["add", "sync", "otc", "relgroup=h", "dbs=psrc:source,pdst:target", "onetimecopy=1", "autokick=0"])?;
    b.start()?;
    let bucardo_time = b.kick_and_wait(&s.cluster, "otc", Duration::from_secs(1800))?;
    b.stop();
    if bucardo_time.is_some() {
        check_same(&s, "Bucardo", &["psrc", "pdst"], &["pgbench_accounts"])?;
    }
    s.cluster.clone_db("empty", "rawdst")?;
    let raw = raw_pipe(
        &s.cluster,
        "osrc",
        "COPY pgbench_accounts TO STDOUT WITH (FORMAT binary)",
        "rawdst",
        &["COPY pgbench_accounts FROM STDIN WITH (FORMAT binary)"],
    )?;
    bench.add(
        Measure::new("onetimecopy", "initial copy", format!("onetimecopy of {rows} rows"), "rows/s", Better::Higher)
            .ibex(Figure::of(rows as f64 / ibex_secs))
            .bucardo(Figure::or_missing(
                bucardo_time.map(|d| rows as f64 / d.as_secs_f64()),
                "its run did not end in 1800 s",
            ))
            .reference(Figure::of(rows as f64 / raw.as_secs_f64()), "raw COPY pipe")
            .goal(Goal::ReferenceAtLeast(0.8), ">= 0.8 of the raw pipe"),
    );
    Ok(())
}
