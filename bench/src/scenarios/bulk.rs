//! Bulk one-way apply against the raw pipe, and each engine's peak RSS.

use std::time::Duration;

use anyhow::Result;

use super::{Bench, bucardo_dbs, check_same, ibex_dbs, last_ibex_run, raw_pipe, scale_for};
use crate::bucardo::RssSampler;
use crate::measure::run_measured;
use crate::report::{Better, Figure, Goal, Measure};

/// Scenarios 2 and 7: one-way apply of `rows` changed rows: rows/s against the raw
/// pipe, and each engine's peak RSS, again at `rss_rows`.
pub fn bulk(bench: &mut Bench, rows: u64, rss_rows: u64) -> Result<()> {
    for (id, size) in [("memory_rows", rows), ("memory_rss_rows", rss_rows)] {
        eprintln!("== bulk one-way: {size} changed rows");
        let s = bench.setup()?;
        s.cluster.create_pgbench_db("tmpl", scale_for(size))?;
        // ibex
        ibex_dbs(&s, "tmpl", &["isrc", "idst"]);
        s.ibex.sh("add table pgbench_accounts db=isrc herd=h").ok();
        s.ibex.sh("add sync bulk herd=h dbs=isrc:source,idst:target autokick=false").ok();
        s.sql("isrc", &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {size}"));
        s.sql("isrc", "VACUUM ANALYZE");
        s.sql("idst", "VACUUM ANALYZE");
        let cost = run_measured(s.ibex.command(&["sync", "run", "bulk"]))?;
        let ibex_secs = last_ibex_run(&s)?;
        check_same(&s, "ibex", &["isrc", "idst"], &["pgbench_accounts"])?;
        bench.profile(&s, "bulk", &format!("{size} changed rows"), "bulk")?;
        // Bucardo
        let b = bench.bucardo(&s)?;
        bucardo_dbs(&s, &b, "tmpl", &["bsrc", "bdst"])?;
        b.cmd(&["add", "table", "pgbench_accounts", "db=bsrc", "relgroup=h"])?;
        b.cmd(&["add", "sync", "bulk", "relgroup=h", "dbs=bsrc:source,bdst:target", "autokick=0"])?;
        s.sql("bsrc", &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {size}"));
        s.sql("bsrc", "VACUUM ANALYZE");
        s.sql("bdst", "VACUUM ANALYZE");
        b.start()?;
        let sampler = RssSampler::start(b.home());
        let bucardo_time = b.kick_and_wait(&s.cluster, "bulk", Duration::from_secs(3600))?;
        let (bucardo_rss, processes) = sampler.finish();
        eprintln!("  Bucardo: up to {processes} processes in one RSS sample");
        b.stop();
        if bucardo_time.is_some() {
            check_same(&s, "Bucardo", &["bsrc", "bdst"], &["pgbench_accounts"])?;
        }
        let unfinished = "its run did not end in 60 min";
        if id == "memory_rows" {
            s.sql("idst", "CREATE TABLE raw_copy (LIKE pgbench_accounts INCLUDING ALL)");
            let raw = raw_pipe(
                &s.cluster,
                "isrc",
                &format!("COPY (SELECT * FROM pgbench_accounts WHERE aid <= {size}) TO STDOUT WITH (FORMAT binary)"),
                "idst",
                &["COPY raw_copy FROM STDIN WITH (FORMAT binary)"],
            )?;
            bench.add(
                Measure::new("bulk", "bulk one-way", format!("{size} changed rows applied"), "rows/s", Better::Higher)
                    .ibex(Figure::of(size as f64 / ibex_secs))
                    .bucardo(Figure::or_missing(bucardo_time.map(|d| size as f64 / d.as_secs_f64()), unfinished))
                    .reference(Figure::of(size as f64 / raw.as_secs_f64()), "raw COPY pipe")
                    .goal(Goal::ReferenceAtLeast(0.5), ">= 0.5 of the raw pipe"),
            );
            // The changed rows piped into the target again, after `before`,
            // in one transaction, as the run applies them: after a DELETE in
            // the same transaction each insert's unique check meets the
            // key's old version deleted by its own transaction, not yet
            // dead to all (by hand on PostgreSQL 15, 1M rows: delete + copy
            // 3.5 s in one transaction, 3.1 s in two).
            let delete_then_copy = |before: &[&str]| {
                let mut statements = vec!["BEGIN", "SET LOCAL session_replication_role = replica"];
                statements.extend_from_slice(before);
                statements.extend(["COPY pgbench_accounts FROM STDIN WITH (FORMAT binary)", "COMMIT"]);
                raw_pipe(
                    &s.cluster,
                    "isrc",
                    &format!(
                        "COPY (SELECT * FROM pgbench_accounts WHERE aid <= {size}) TO STDOUT WITH (FORMAT binary)"
                    ),
                    "idst",
                    &statements,
                )
            };
            // The floor of delete + copy: the same rows deleted on the
            // (vacuumed) target as one statement, then piped in again.
            s.sql("idst", "VACUUM ANALYZE pgbench_accounts");
            let range_delete = format!("DELETE FROM pgbench_accounts WHERE aid <= {size}");
            let delete_and_refill = delete_then_copy(&[&range_delete])?;
            check_same(&s, "the raw delete + copy", &["isrc", "idst"], &["pgbench_accounts"])?;
            // The floor of a keyed delete + copy, which is what the
            // transport does when the changed keys are not one range: the
            // keys piped into a key table, deleted with one join (with the
            // work_mem ibex gives it), then the rows piped in.
            s.sql("idst", "VACUUM ANALYZE pgbench_accounts");
            s.sql("idst", "CREATE UNLOGGED TABLE raw_keys (aid int)");
            let keys = raw_pipe(
                &s.cluster,
                "isrc",
                &format!(
                    "COPY (SELECT aid FROM pgbench_accounts WHERE aid <= {size} ORDER BY aid) TO STDOUT WITH (FORMAT binary)"
                ),
                "idst",
                &["COPY raw_keys FROM STDIN WITH (FORMAT binary)"],
            )?;
            let keyed_delete_and_refill = delete_then_copy(&[
                "SET LOCAL work_mem = '64MB'",
                "ANALYZE raw_keys",
                "DELETE FROM pgbench_accounts t USING raw_keys k WHERE t.aid = k.aid",
            ])?;
            check_same(&s, "the raw keyed delete + copy", &["isrc", "idst"], &["pgbench_accounts"])?;
            // ibex against one floor of delete + copy, which took `floor`.
            let against_floor = |id: &str, what: &str, floor: Duration, reference_is: &str, goal: &str| {
                Measure::new(
                    id,
                    "bulk one-way",
                    format!("{size} changed rows applied, against their {what}"),
                    "rows/s",
                    Better::Higher,
                )
                .ibex(Figure::of(size as f64 / ibex_secs))
                .bucardo(Figure::or_missing(bucardo_time.map(|d| size as f64 / d.as_secs_f64()), unfinished))
                .reference(Figure::of(size as f64 / floor.as_secs_f64()), reference_is)
                .goal(Goal::ReferenceAtLeast(0.9), goal)
            };
            bench.add(against_floor(
                "bulk_floor",
                "raw DELETE + COPY",
                delete_and_refill,
                "raw DELETE, then COPY pipe, in one transaction",
                ">= 0.9 of raw delete + copy",
            ));
            bench.add(against_floor(
                "bulk_keyed_floor",
                "raw keyed DELETE + COPY",
                keys + keyed_delete_and_refill,
                "keys piped to a key table, DELETE USING it, then COPY pipe, in one transaction",
                ">= 0.9 of raw keyed delete + copy",
            ));
        }
        let bucardo_mib = bucardo_rss as f64 / 1024.0;
        bench.add(
            Measure::new(id, "memory", format!("peak RSS, {size} changed rows"), "MiB", Better::Lower)
                .ibex(Figure::of(cost.peak_rss_kib as f64 / 1024.0))
                .bucardo(match bucardo_time {
                    Some(_) => Figure::of(bucardo_mib),
                    None => Figure::missing(format!("{unfinished} (peak until then {bucardo_mib:.0} MiB)")),
                })
                .reference(Figure::missing("no raw reference: the goal is absolute"), "")
                .goal(Goal::Below(128.0), "< 128 MiB, flat"),
        );
    }
    Ok(())
}
