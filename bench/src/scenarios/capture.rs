//! What capture costs the application: a bulk UPDATE, INSERT and DELETE,
//! and pgbench TPS, with trigger capture and with WAL capture.

use anyhow::{Context, Result};

use super::{Bench, bucardo_dbs, scale_for, settle};
use crate::measure::{median, timed};
use crate::report::{Better, Figure, Goal, Measure};

/// Scenario 3: What capture costs the application: a bulk UPDATE, INSERT
/// and DELETE, and pgbench TPS, with each engine's triggers, against the
/// same without any.
pub fn capture(bench: &mut Bench, rows: u64) -> Result<()> {
    eprintln!("== capture cost: UPDATE, INSERT and DELETE of {rows} rows, pgbench TPS");
    let s = bench.setup()?;
    s.cluster.create_pgbench_db("bare", scale_for(rows))?;
    s.dbs_from("bare", &["ib", "ib_sink", "iw", "iw_sink", "ik", "iwk"]);
    s.cluster.clone_db("bare", "floor")?;
    s.cluster.clone_db("bare", "delta_floor")?;
    for (table, key) in CAPTURED {
        s.cluster.psql("floor", &trigger_floor(table, key, None))?;
        s.cluster.psql("delta_floor", &trigger_floor(table, key, Some(&delta_floor_table(table))))?;
    }
    s.ibex.sh("update db iw capture=wal").ok();
    s.ibex.sh("update db iwk capture=wal").ok();
    s.ibex.sh("add all tables db=ib herd=h");
    s.ibex.sh("add sync cap herd=h dbs=ib:source,ib_sink:target").ok();
    s.ibex.sh("add sync capw herd=h dbs=iw:source,iw_sink:target").ok();
    // Without autokick no kick trigger is installed: what capture costs
    // without the NOTIFY, whose commit takes a lock every notifying commit
    // of the server waits for.
    s.ibex.sh("add sync capk herd=h dbs=ik:source,ib_sink:target autokick=false").ok();
    s.ibex.sh("add sync capwk herd=h dbs=iwk:source,iw_sink:target autokick=false").ok();
    let b = bench.bucardo(&s)?;
    bucardo_dbs(&s, &b, "bare", &["bu", "bu_sink"])?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=bu", "relgroup=h"])?;
    b.cmd(&["add", "sync", "cap", "relgroup=h", "dbs=bu:source,bu_sink:target"])?;
    // INSERT then DELETE of the same rows leave the table as it was.
    let offset = rows * 10;
    let statements = [
        ("update", "UPDATE", format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {rows}")),
        (
            "insert",
            "INSERT",
            format!(
                "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) \
                 SELECT aid + {offset}, bid, abalance, filler FROM pgbench_accounts WHERE aid <= {rows}"
            ),
        ),
        ("delete", "DELETE", format!("DELETE FROM pgbench_accounts WHERE aid > {offset}")),
    ];
    let empty_deltas = |db: &str| -> Result<()> {
        s.cluster.psql(
            db,
            "DO $$ DECLARE t text; BEGIN
               FOR t IN SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
                         WHERE (schemaname = 'ibex' AND tablename LIKE 'delta%')
                            OR (schemaname = 'public' AND tablename LIKE 'floor_delta%')
                            OR (schemaname = 'bucardo' AND (tablename LIKE 'delta%' OR tablename LIKE 'track%')) LOOP
                 EXECUTE 'TRUNCATE ' || t;
               END LOOP; END $$",
        )?;
        Ok(())
    };
    // times[statement][engine]: bare, ibex, Bucardo, ibex with WAL capture,
    // the trigger floor.
    let mut times: [[Vec<f64>; 5]; 3] = Default::default();
    for _ in 0..3 {
        for (i, db) in ["bare", "ib", "bu", "iw", "floor"].into_iter().enumerate() {
            for (k, (_, _, sql)) in statements.iter().enumerate() {
                empty_deltas(db)?;
                s.sql(db, "VACUUM ANALYZE pgbench_accounts");
                settle(&s.cluster)?;
                let (_, t) = timed(|| Ok(s.sql(db, sql)))?;
                times[k][i].push(t.as_secs_f64());
            }
        }
    }
    let no_median = "no timing";
    let no_wal = "Bucardo has no WAL capture";
    let trigger_floor_is = "triggers of ibex's shape that write no delta (transition tables, key test, kick)";
    let no_floor = "Bucardo's triggers are per row: no floor of this shape";
    for ((id, verb, _), [bare, ib, bu, iw, floor]) in statements.iter().zip(times) {
        bench.add(
            Measure::new(
                &format!("capture_{id}_floor"),
                "capture cost",
                format!("{verb} of {rows} rows, against the trigger floor (median of 3)"),
                "s",
                Better::Lower,
            )
            .ibex(Figure::or_missing(median(&ib), no_median))
            .bucardo(Figure::missing(no_floor))
            .reference(Figure::or_missing(median(&floor), no_median), trigger_floor_is)
            .goal(Goal::ReferenceAtMost(1.0 / 0.9), "within 10% of the trigger floor"),
        );
        bench.add(
            Measure::new(
                &format!("capture_wal_{id}"),
                "capture cost",
                format!("{verb} of {rows} rows, capture=wal (median of 3)"),
                "s",
                Better::Lower,
            )
            .ibex(Figure::or_missing(median(&iw), no_median))
            .bucardo(Figure::missing(no_wal))
            .reference(Figure::or_missing(median(&bare), no_median), "no triggers")
            .goal(Goal::ReferenceAtMost(1.3), "<= 1.3x of no triggers"),
        );
        bench.add(
            Measure::new(
                &format!("capture_{id}"),
                "capture cost",
                format!("{verb} of {rows} rows (median of 3)"),
                "s",
                Better::Lower,
            )
            .ibex(Figure::or_missing(median(&ib), no_median))
            .bucardo(Figure::or_missing(median(&bu), no_median))
            .reference(Figure::or_missing(median(&bare), no_median), "no triggers")
            .goal(Goal::ReferenceAtMost(1.3), "<= 1.3x of no triggers"),
        );
    }
    // Each run starts from the same tables: without this, dead rows of
    // the runs before pile up on the ten branches and hundred tellers
    // (pgbench -n does not vacuum), and a db's TPS drifted by a quarter
    // between rounds. What pgbench does before a run without -n, and the
    // accounts too.
    let tps = |db: &str| -> Result<f64> {
        empty_deltas(db)?;
        s.cluster.psql(db, "VACUUM ANALYZE pgbench_branches, pgbench_tellers, pgbench_accounts")?;
        s.cluster.psql(db, "TRUNCATE pgbench_history")?;
        settle(&s.cluster)?;
        let out = s.cluster.pgbench(db, &["-n", "-c", "2", "-j", "2", "-T", "10"])?;
        out.lines()
            .find(|l| l.starts_with("tps"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .context("no tps in pgbench output")
    };
    // Rounds with every db once in each, so a drift of the machine
    // reaches all of them alike; each figure is its db's median.
    let mut rounds: [Vec<f64>; 8] = Default::default();
    for round in 1..=TPS_ROUNDS {
        let mut line = format!("  pgbench round {round}:");
        for (db, samples) in
            ["bare", "ib", "bu", "iw", "floor", "ik", "iwk", "delta_floor"].into_iter().zip(rounds.iter_mut())
        {
            let sample = tps(db)?;
            line.push_str(&format!(" {db} {sample:.0}"));
            samples.push(sample);
        }
        eprintln!("{line} tps");
    }
    let no_tps = "no pgbench run";
    let [bare_tps, ib_tps, bu_tps, iw_tps, floor_tps, ik_tps, iwk_tps, delta_floor_tps] =
        rounds.map(|samples| Figure::or_missing(median(&samples), no_tps));
    // What capture of ibex's shape pays once it writes anything, against
    // no triggers at all.
    if let (Some(delta), Some(bare)) = (delta_floor_tps.value, bare_tps.value) {
        eprintln!("  the trigger floor with a minimal delta row runs pgbench at {:.3} of no triggers", delta / bare);
    }
    bench.add(
        Measure::new(
            "capture_tps_delta_floor",
            "capture cost",
            format!("pgbench TPS (-c 2 -j 2 -T 10, median of {TPS_ROUNDS}), against the trigger floor with a minimal delta row"),
            "tps",
            Better::Higher,
        )
        .ibex(ib_tps.clone())
        .bucardo(Figure::missing(no_floor))
        .reference(
            delta_floor_tps,
            "the trigger floor plus a minimal delta row per statement (the keys' array and the transaction id; no change time, no index)",
        )
        .goal(Goal::ReferenceAtLeast(0.9), ">= 0.9 of the trigger floor with a minimal delta row"),
    );
    let no_kick_is = "Bucardo was measured with its kick (a NOTIFY per statement, as ibex's autokick)";
    for (id, what, value) in [("capture_tps_nokick", "", ik_tps), ("capture_wal_tps_nokick", ", capture=wal", iwk_tps)]
    {
        bench.add(
            Measure::new(
                id,
                "capture cost",
                format!("pgbench TPS (-c 2 -j 2 -T 10, median of {TPS_ROUNDS}){what}, autokick=false: capture without the kick's NOTIFY"),
                "tps",
                Better::Higher,
            )
            .ibex(value)
            .bucardo(Figure::missing(no_kick_is))
            .reference(bare_tps.clone(), "no triggers")
            .goal(Goal::ReferenceAtLeast(0.9), ">= 0.9 of no triggers"),
        );
    }
    bench.add(
        Measure::new(
            "capture_tps_floor",
            "capture cost",
            format!("pgbench TPS (-c 2 -j 2 -T 10, median of {TPS_ROUNDS}), against the trigger floor"),
            "tps",
            Better::Higher,
        )
        .ibex(ib_tps.clone())
        .bucardo(Figure::missing(no_floor))
        .reference(floor_tps.clone(), trigger_floor_is)
        .goal(Goal::ReferenceAtLeast(0.9), ">= 0.9 of the trigger floor"),
    );
    bench.add(
        Measure::new(
            "capture_wal_tps",
            "capture cost",
            format!("pgbench TPS (-c 2 -j 2 -T 10, median of {TPS_ROUNDS}), capture=wal"),
            "tps",
            Better::Higher,
        )
        .ibex(iw_tps.clone())
        .bucardo(Figure::missing(no_wal))
        .reference(bare_tps.clone(), "no triggers")
        .goal(Goal::ReferenceAtLeast(0.9), ">= 0.9 of no triggers"),
    );
    bench.add(
        Measure::new(
            "capture_tps",
            "capture cost",
            format!("pgbench TPS (-c 2 -j 2 -T 10, median of {TPS_ROUNDS})"),
            "tps",
            Better::Higher,
        )
        .ibex(ib_tps.clone())
        .bucardo(bu_tps.clone())
        .reference(bare_tps.clone(), "no triggers")
        .goal(Goal::ReferenceAtLeast(0.9), ">= 0.9 of no triggers"),
    );
    Ok(())
}

/// pgbench runs per db. Ten-second runs on two cores moved by up to a
/// fifth from round to round even from vacuumed tables; with five, the
/// median holds against two outlying rounds.
const TPS_ROUNDS: u32 = 5;

/// The pgbench tables ibex captures in this scenario, with their keys
/// (pgbench_history has none).
const CAPTURED: [(&str, &str); 3] =
    [("pgbench_accounts", "aid"), ("pgbench_branches", "bid"), ("pgbench_tellers", "tid")];

/// Triggers of the shape ibex's trigger capture installs on `table`
/// (engine/src/capture/sql.rs): a statement trigger per write with its
/// transition table, a SECURITY DEFINER function that names its schema
/// for everything it calls, the key-change row trigger's WHEN test, and
/// the kick. Without `delta` they write nothing: what capturing with
/// statement triggers costs before a delta row is written, which
/// capture=trigger can be no cheaper than. With `delta`, each statement
/// also writes a minimal delta row into it (see [`delta_floor_table`]):
/// what this shape costs once it writes anything. `EXECUTE PROCEDURE`:
/// the spelling every version accepts (10 has no `EXECUTE FUNCTION`).
fn trigger_floor(table: &str, key: &str, delta: Option<&str>) -> String {
    let (delta_table, write) = match delta {
        Some(delta) => (
            format!(
                "CREATE TABLE {delta} (keys int[] NOT NULL, txid bigint NOT NULL DEFAULT pg_catalog.txid_current());"
            ),
            format!(
                "IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
                     INSERT INTO {delta} (keys) SELECT pg_catalog.array_agg(o.{key}) FROM ibex_old o
                         HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0;
                 ELSE
                     INSERT INTO {delta} (keys) SELECT pg_catalog.array_agg(n.{key}) FROM ibex_new n
                         HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0;
                 END IF;"
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "{delta_table}
         CREATE FUNCTION floor_{table}() RETURNS trigger
         LANGUAGE plpgsql SECURITY DEFINER AS $f$
         BEGIN
             {write}
             PERFORM pg_catalog.pg_notify('ibex_changed', 'public.{table}');
             RETURN NULL;
         END $f$;
         CREATE FUNCTION floor_{table}_key() RETURNS trigger
         LANGUAGE plpgsql SECURITY DEFINER AS $f$
         BEGIN RETURN NULL; END $f$;
         CREATE TRIGGER floor_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS ibex_new
             FOR EACH STATEMENT EXECUTE PROCEDURE floor_{table}();
         CREATE TRIGGER floor_update AFTER UPDATE ON {table} REFERENCING NEW TABLE AS ibex_new
             FOR EACH STATEMENT EXECUTE PROCEDURE floor_{table}();
         CREATE TRIGGER floor_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS ibex_old
             FOR EACH STATEMENT EXECUTE PROCEDURE floor_{table}();
         CREATE TRIGGER floor_key AFTER UPDATE ON {table} FOR EACH ROW
             WHEN (OLD.{key} IS DISTINCT FROM NEW.{key}) EXECUTE PROCEDURE floor_{table}_key();"
    )
}

/// The delta floor's table for `table` (an empty statement writes no
/// row, as in ibex's): the keys of a statement as one
/// array and the writing transaction, without the change time, the
/// columns of old images and origins, or the index that ibex's delta
/// tables have (engine/src/capture/sql.rs).
fn delta_floor_table(table: &str) -> String {
    format!("public.floor_delta_{table}")
}
