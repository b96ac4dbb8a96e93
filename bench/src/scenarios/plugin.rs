//! A WebAssembly conflict plugin held against the built-in strategy.

use std::io::Write;

use anyhow::{Context, Result, bail};
use ibex_tests::Daemon;

use super::{Bench, check_same, keep_daemon_log, settle};
use crate::measure::median;
use crate::report::{Better, Figure, Goal, Measure};

/// Timed cycles per strategy, after one untimed warm-up each: a multiple
/// of the three contenders, so that each takes every turn as often.
const ROUNDS: usize = 6;

/// One way of settling the conflicts: its sync, its table, how it decides.
struct Contender {
    sync: &'static str,
    table: &'static str,
    strategy: &'static str,
    label: &'static str,
}

/// Cycles of `keys` conflicting keys each: the latest-wins plugin (the same
/// rule as a WebAssembly component), without rows and with them, held
/// against the built-in `latest`, which is this row's reference. The three
/// share one cluster and one daemon, each with its own table and sync, and
/// take turns round by round (each round in a rotated order), so that a
/// slow moment of the machine falls on all of them alike.
pub fn plugin(bench: &mut Bench, keys: u64) -> Result<()> {
    eprintln!("== conflicts: {keys} keys changed on two masters, built-in latest vs plugin, in turns");
    let contenders = [
        Contender { sync: "builtin", table: "acct_builtin", strategy: "latest", label: "latest, rows=false" },
        Contender { sync: "plain", table: "acct_plain", strategy: "plugin:lw", label: "plugin:lw, rows=false" },
        Contender { sync: "rows", table: "acct_rows", strategy: "plugin:lwr", label: "plugin:lwr, rows=true" },
    ];
    let wasm = ibex_tests::plugins::official("latest-wins")?;
    let wasm = wasm.to_str().context("the plugin's path is not UTF-8")?.to_string();
    let s = bench.setup()?;
    s.cluster.create_db("c1")?;
    for c in &contenders {
        s.sql(
            "c1",
            &format!(
                "CREATE TABLE {} (id int PRIMARY KEY, note text, n int); INSERT INTO {} SELECT i, 'x', 0 FROM generate_series(1, {keys}) i",
                c.table, c.table
            ),
        );
    }
    s.dbs_from("c1", &["c1", "c2"]);
    s.ibex.run(&["add", "plugin", "lw", &wasm, "rows=false"]).ok();
    s.ibex.run(&["add", "plugin", "lwr", &wasm, "rows=true"]).ok();
    for c in &contenders {
        s.ibex.sh(&format!("add table {} db=c1 herd=h_{}", c.table, c.sync)).ok();
        s.ibex
            .run(&[
                "add",
                "sync",
                c.sync,
                &format!("herd=h_{}", c.sync),
                "dbs=c1:source,c2:source",
                "autokick=false",
                &format!("conflict_strategy={}", c.strategy),
            ])
            .ok();
    }
    // A running daemon: plugins are loaded and tables checked by each
    // sync's first (untimed) run, as in production.
    let mut daemon = Daemon::configure(&s.ibex)?;
    daemon.start()?;
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    // The id of the newest run, and of the warm-up's last (the profiles
    // leave the warm-up out).
    let mut last_run_id: i64 = 0;
    let mut warm_up_last_id: i64 = 0;
    for round in 0..=ROUNDS {
        let mut line = if round == 0 { "  warm-up:".to_string() } else { format!("  round {round}:") };
        for turn in 0..contenders.len() {
            let i = (round + turn) % contenders.len();
            let c = &contenders[i];
            // Each round starts from vacuumed tables, so no round pays for
            // the dead rows of the one before.
            conflicting_versions(&s, c.table, round)?;
            if !daemon.run(&["kick", c.sync, "--wait", "600"]).success() {
                bail!("ibex: the conflict run of sync {} failed:\n{}", c.sync, daemon.log());
            }
            let last = s.sql(
                "ibex",
                &format!(
                    "SELECT id || ' ' || conflicts || ' ' || extract(epoch FROM ended_at - started_at)
                       FROM ibex.run WHERE sync = '{}' ORDER BY id DESC LIMIT 1",
                    c.sync
                ),
            );
            let [id, conflicts, seconds] = last.split(' ').collect::<Vec<_>>()[..] else {
                bail!("sync {}: cannot read its last run from {last:?}", c.sync);
            };
            if conflicts != keys.to_string() {
                bail!("sync {}: expected {keys} conflicts, the run counted {conflicts}", c.sync);
            }
            let seconds: f64 = seconds.parse().with_context(|| format!("reading the run time {seconds:?}"))?;
            last_run_id = id.parse().with_context(|| format!("reading the run id {id:?}"))?;
            line.push_str(&format!(" {} {:.1} ms", c.sync, seconds * 1000.0));
            if round > 0 {
                runs[i].push(seconds);
            }
        }
        eprintln!("{line}");
        if round == 0 {
            warm_up_last_id = last_run_id;
        }
    }
    keep_daemon_log(&daemon.log(), "plugin");
    drop(daemon);
    let tables: Vec<&str> = contenders.iter().map(|c| c.table).collect();
    check_same(&s, "ibex", &["c1", "c2"], &tables)?;
    // The rows read by hand in the state each run found them in, as many
    // times as the runs (the tables differ again afterwards: nothing
    // checks them after this).
    let with_rows = contenders[2].table;
    let reads: Result<Vec<f64>> = (1..=ROUNDS)
        .map(|round| {
            conflicting_versions(&s, with_rows, round)?;
            read_rows(&s, with_rows, keys)
        })
        .collect();
    let read = reads.and_then(|reads| median(&reads).context("no read timed"));
    for c in &contenders {
        bench.profile_after(&s, "plugin", c.label, c.sync, warm_up_last_id)?;
    }
    let times: Vec<f64> = runs.iter().map(|r| median(r).context("no timed run")).collect::<Result<_>>()?;
    for (i, id, label) in [(1, "plugin_rows_false", "plugin, rows=false"), (2, "plugin_rows_true", "plugin, with rows")]
    {
        bench.add(
            Measure::new(
                id,
                "WebAssembly plugin",
                format!("cycle with {keys} conflicts, {label} (median of {ROUNDS}, in turns with the built-in)"),
                "s",
                Better::Lower,
            )
            .ibex(Figure::of(times[i]))
            .bucardo(Figure::missing("Bucardo has no WebAssembly plugins (its conflict code is Perl)"))
            .reference(Figure::of(times[0]), "built-in latest")
            .goal(Goal::ReferenceAtMost(1.3), "<= 1.3x of built-in"),
        );
    }
    // A plugin that sees rows cannot cost less than one that does not plus
    // the reading of those rows, which the built-in never does.
    let floor = match read {
        Ok(read) => {
            eprintln!(
                "  reading the {keys} conflicting rows on both dbs at once, {ROW_BATCH} keys a query: {:.1} ms; with the plugin without rows: {:.1} ms",
                read * 1000.0,
                (times[1] + read) * 1000.0
            );
            Figure::of(times[1] + read)
        }
        Err(err) => Figure::missing(format!("the rows could not be read by hand: {err:#}")),
    };
    bench.add(
        Measure::new(
            "plugin_rows_floor",
            "WebAssembly plugin",
            format!("cycle with {keys} conflicts, with rows, against the plugin without rows plus reading the rows"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::of(times[2]))
        .bucardo(Figure::missing("Bucardo has no WebAssembly plugins (its conflict code is Perl)"))
        .reference(
            floor,
            "the plugin's run without rows, plus the rows read by the same join on both dbs at once (pgbench, prepared)",
        )
        .goal(Goal::ReferenceAtMost(1.0 / 0.9), "within 10% of the plugin without rows plus the reading"),
    );
    Ok(())
}

/// Every key of `table` changed on both dbs, each its own way, from
/// vacuumed tables, then settled: the conflicts of one run.
fn conflicting_versions(s: &ibex_tests::Setup, table: &str, round: usize) -> Result<()> {
    for db in ["c1", "c2"] {
        s.sql(db, &format!("VACUUM ANALYZE {table}"));
    }
    s.sql("c1", &format!("UPDATE {table} SET note = 'c1 {round}', n = {round}1"));
    s.sql("c2", &format!("UPDATE {table} SET note = 'c2 {round}', n = {round}2"));
    settle(&s.cluster)
}

/// Keys a plugin's conflicts are read and decided in per batch
/// (`PLUGIN_BATCH` in engine/src/sync/cycle/merge.rs).
const ROW_BATCH: u64 = 1000;

/// Seconds to read the current rows of `keys` keys of `table` on c1 and
/// c2 at once, [`ROW_BATCH`] keys per query, by the join a plugin's batch
/// is read with (`fetch_rows` in engine/src/sync/cycle/plugged.rs: the
/// keys unnested from an array): each db's prepared query timed by
/// pgbench (the statement's own latency, `-r`, over enough runs that the
/// first ones, which plan it, weigh little), times the batches of a
/// cycle; the slower db's.
fn read_rows(s: &ibex_tests::Setup, table: &str, keys: u64) -> Result<f64> {
    let batches = keys.div_ceil(ROW_BATCH).max(1);
    // Created exclusively, removed when dropped.
    let mut script = tempfile::Builder::new().prefix("ibex-bench-read-rows").suffix(".sql").tempfile()?;
    write!(
        script,
        "\\set start random(0, {last}) * {ROW_BATCH}
SELECT k.id, k.id, t.id IS NOT NULL, t.id, t.note, t.n
  FROM pg_catalog.unnest(ARRAY(SELECT pg_catalog.generate_series(:start + 1, :start + {ROW_BATCH}))) AS k (id)
  LEFT JOIN {table} t ON t.id = k.id;
",
        last = batches - 1
    )?;
    script.flush()?;
    let path = script.path().to_str().context("the temporary file's path is not UTF-8")?;
    let latencies = std::thread::scope(|scope| {
        let readers: Vec<_> = ["c1", "c2"]
            .into_iter()
            .map(|db| {
                scope.spawn(move || s.cluster.pgbench(db, &["-n", "-r", "-M", "prepared", "-f", path, "-t", "200"]))
            })
            .collect();
        readers
            .into_iter()
            .map(|reader| {
                let out = reader.join().map_err(|_| anyhow::anyhow!("a pgbench reader panicked"))??;
                // `-r`: each command's mean latency in ms, first on its line.
                out.lines()
                    .find(|l| l.contains("SELECT k.id"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|ms| ms.parse::<f64>().ok())
                    .with_context(|| format!("no latency for the read in pgbench's output:\n{out}"))
            })
            .collect::<Result<Vec<f64>>>()
    })?;
    let slowest_ms = latencies.into_iter().fold(0.0, f64::max);
    Ok(slowest_ms / 1000.0 * batches as f64)
}
