//! Bulk one-way apply against the raw pipe, and each engine's peak RSS.

use std::time::Duration;

use anyhow::Result;

use ibex_tests::Setup;

use super::{Bench, bucardo_dbs, check_same, ibex_dbs, last_ibex_run, raw_pipe, scale_for, settle};
use crate::bucardo::RssSampler;
use crate::measure::{median, run_measured};
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
        // The rates are compared at the first size, in rounds: one sample
        // of ibex and of each reference per round, each figure the median
        // of its samples. Single samples of one step varied too much for a
        // ratio: ibex's rate went from 189k to 341k rows/s between
        // bench/results/2026-12-03-e8894ef36.json and 2026-12-04-7d867e731.json.
        let with_references = id == "memory_rows";
        let rounds = if with_references { ROUNDS } else { 1 };
        if with_references {
            for db in FLOOR_TARGETS {
                s.cluster.clone_db("tmpl", db)?;
            }
        }
        let mut samples = Samples::default();
        let mut peak_rss_kib = 0;
        for round in 1..=rounds {
            s.sql("isrc", &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {size}"));
            s.sql("isrc", "VACUUM ANALYZE");
            // Every target starts each round as a fresh clone does: its
            // rows packed, no free space, so a COPY extends the file. Into a
            // table whose rows were replaced once and vacuumed the COPY
            // fills the freed pages instead, which is easier (1M rows,
            // PostgreSQL 15, by hand: 2.47 s against 2.79 s).
            let floor_targets = FLOOR_TARGETS.iter().filter(|_| with_references);
            for db in std::iter::once(&"idst").chain(floor_targets) {
                s.sql(db, "VACUUM (FULL, ANALYZE) pgbench_accounts");
            }
            settle(&s.cluster)?;
            let cost = run_measured(s.ibex.command(&["sync", "run", "bulk"]))?;
            peak_rss_kib = peak_rss_kib.max(cost.peak_rss_kib);
            samples.ibex.push(last_ibex_run(&s)?);
            check_same(&s, "ibex", &["isrc", "idst"], &["pgbench_accounts"])?;
            if with_references {
                samples.push_references(&s, size)?;
                eprintln!("  round {round}: {}", samples.last_round());
            }
        }
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
        settle(&s.cluster)?;
        let sampler = RssSampler::start(b.home());
        let bucardo_time = b.kick_and_wait(&s.cluster, "bulk", Duration::from_secs(3600))?;
        let (bucardo_rss, processes) = sampler.finish();
        eprintln!("  Bucardo: up to {processes} processes in one RSS sample");
        b.stop();
        if bucardo_time.is_some() {
            check_same(&s, "Bucardo", &["bsrc", "bdst"], &["pgbench_accounts"])?;
        }
        let unfinished = "its run did not end in 60 min";
        if with_references {
            let rate = |seconds: &[f64]| Figure::or_missing(median(seconds).map(|t| size as f64 / t), "no sample");
            let ibex_rate = rate(&samples.ibex);
            let bucardo_rate = Figure::or_missing(bucardo_time.map(|d| size as f64 / d.as_secs_f64()), unfinished);
            let measure = |id: &str, what: String, reference: &[f64], reference_is: &str, goal: Goal, goal_is: &str| {
                Measure::new(id, "bulk one-way", what, "rows/s", Better::Higher)
                    .ibex(ibex_rate.clone())
                    .bucardo(bucardo_rate.clone())
                    .reference(rate(reference), reference_is)
                    .goal(goal, goal_is)
            };
            let median_of = format!("ibex and reference: median of {rounds} rounds; Bucardo: one run");
            bench.add(measure(
                "bulk",
                format!("{size} changed rows applied ({median_of})"),
                &samples.raw_pipe,
                "raw COPY pipe",
                Goal::ReferenceAtLeast(0.5),
                ">= 0.5 of the raw pipe",
            ));
            bench.add(measure(
                "bulk_floor",
                format!("{size} changed rows applied, against their raw DELETE + COPY ({median_of})"),
                &samples.range_floor,
                "raw DELETE, then COPY pipe, in one transaction",
                Goal::ReferenceAtLeast(0.9),
                ">= 0.9 of raw delete + copy",
            ));
            bench.add(measure(
                "bulk_keyed_floor",
                format!("{size} changed rows applied, against their raw keyed DELETE + COPY ({median_of})"),
                &samples.keyed_floor,
                "keys piped to a key table, DELETE USING it, then COPY pipe, in one transaction",
                Goal::ReferenceAtLeast(0.9),
                ">= 0.9 of raw keyed delete + copy",
            ));
        }
        let bucardo_mib = bucardo_rss as f64 / 1024.0;
        bench.add(
            Measure::new(id, "memory", format!("peak RSS, {size} changed rows"), "MiB", Better::Lower)
                .ibex(Figure::of(peak_rss_kib as f64 / 1024.0))
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

/// Rounds of the rate comparison.
const ROUNDS: usize = 3;

/// The references' own targets, cloned with ibex's and prepared as it is.
const FLOOR_TARGETS: [&str; 2] = ["rdst", "rkdst"];

/// Seconds per round: ibex's run and each reference.
#[derive(Default)]
struct Samples {
    ibex: Vec<f64>,
    /// The changed rows piped into an empty table.
    raw_pipe: Vec<f64>,
    /// The same rows deleted on a target as one range, then piped in again.
    range_floor: Vec<f64>,
    /// The keys piped into a key table, the rows deleted by a join with it
    /// (what the transport does when the changed keys are not one range),
    /// then piped in again.
    keyed_floor: Vec<f64>,
}

impl Samples {
    /// One sample of each reference, on the source as ibex's run left it.
    /// Each step's dead rows are vacuumed before the next timed step, as
    /// the targets were before ibex's run, so that no autovacuum is due.
    fn push_references(&mut self, s: &Setup, size: u64) -> Result<()> {
        let rows_out =
            format!("COPY (SELECT * FROM pgbench_accounts WHERE aid <= {size}) TO STDOUT WITH (FORMAT binary)");
        s.sql("idst", "VACUUM ANALYZE pgbench_accounts");
        s.sql("idst", "CREATE TABLE raw_copy (LIKE pgbench_accounts INCLUDING ALL)");
        settle(&s.cluster)?;
        let raw = raw_pipe(&s.cluster, "isrc", &rows_out, "idst", &["COPY raw_copy FROM STDIN WITH (FORMAT binary)"])?;
        self.raw_pipe.push(raw.as_secs_f64());
        s.sql("idst", "DROP TABLE raw_copy");
        // In one transaction, as the run applies them: after a DELETE in
        // the same transaction each insert's unique check meets the key's
        // old version deleted by its own transaction, not yet dead to all
        // (by hand on PostgreSQL 15, 1M rows: delete + copy 3.5 s in one
        // transaction, 3.1 s in two).
        let delete_then_copy = |target: &str, before: &[&str]| {
            let mut statements = vec!["BEGIN", "SET LOCAL session_replication_role = replica"];
            statements.extend_from_slice(before);
            statements.extend(["COPY pgbench_accounts FROM STDIN WITH (FORMAT binary)", "COMMIT"]);
            raw_pipe(&s.cluster, "isrc", &rows_out, target, &statements)
        };
        let range_delete = format!("DELETE FROM pgbench_accounts WHERE aid <= {size}");
        settle(&s.cluster)?;
        let range = delete_then_copy("rdst", &[&range_delete])?;
        check_same(s, "the raw delete + copy", &["isrc", "rdst"], &["pgbench_accounts"])?;
        self.range_floor.push(range.as_secs_f64());
        s.sql("rdst", "VACUUM ANALYZE pgbench_accounts");
        // The keys' load is timed with the delete + copy, with no settling
        // between them; the join runs with the work_mem ibex gives it.
        s.sql("rkdst", "DROP TABLE IF EXISTS raw_keys; CREATE UNLOGGED TABLE raw_keys (aid int)");
        settle(&s.cluster)?;
        let keys = raw_pipe(
            &s.cluster,
            "isrc",
            &format!(
                "COPY (SELECT aid FROM pgbench_accounts WHERE aid <= {size} ORDER BY aid) TO STDOUT WITH (FORMAT binary)"
            ),
            "rkdst",
            &["COPY raw_keys FROM STDIN WITH (FORMAT binary)"],
        )?;
        let keyed = delete_then_copy(
            "rkdst",
            &[
                "SET LOCAL work_mem = '64MB'",
                "ANALYZE raw_keys",
                "DELETE FROM pgbench_accounts t USING raw_keys k WHERE t.aid = k.aid",
            ],
        )?;
        check_same(s, "the raw keyed delete + copy", &["isrc", "rkdst"], &["pgbench_accounts"])?;
        self.keyed_floor.push((keys + keyed).as_secs_f64());
        Ok(())
    }

    /// The newest round's samples, for the log.
    fn last_round(&self) -> String {
        let last = |v: &[f64]| v.last().map_or("-".to_string(), |t| format!("{t:.3} s"));
        format!(
            "ibex {}, raw pipe {}, raw delete + copy {}, raw keyed delete + copy {}",
            last(&self.ibex),
            last(&self.raw_pipe),
            last(&self.range_floor),
            last(&self.keyed_floor)
        )
    }
}
