//! A WebAssembly conflict plugin held against the built-in strategy.

use anyhow::{Context, Result, bail};
use ibex_tests::Daemon;

use super::{Bench, check_same, keep_daemon_log, last_ibex_run};
use crate::measure::median;
use crate::report::{Better, Figure, Goal, Measure};

/// Cycles timed per strategy.
const ROUNDS: u32 = 5;

/// Cycles of `keys` conflicting keys each: the latest-wins plugin (the same
/// rule as a WebAssembly component) held against the built-in `latest`,
/// which is this row's reference.
pub fn plugin(bench: &mut Bench, keys: u64) -> Result<()> {
    eprintln!("== conflicts: {keys} keys changed on two masters, built-in latest vs plugin");
    let wasm = ibex_tests::plugins::official("latest-wins")?;
    let wasm = wasm.to_str().context("the plugin's path is not UTF-8")?.to_string();
    let mut times = Vec::new();
    // The plugin gets no rows (it needs none), then every version's row.
    for (strategy, rows) in [("latest", "rows=false"), ("plugin:lw", "rows=false"), ("plugin:lw", "rows=true")] {
        let s = bench.setup()?;
        s.cluster.create_db("c1")?;
        s.sql(
            "c1",
            &format!("CREATE TABLE acct (id int PRIMARY KEY, note text, n int); INSERT INTO acct SELECT i, 'x', 0 FROM generate_series(1, {keys}) i"),
        );
        s.dbs_from("c1", &["c1", "c2"]);
        s.ibex.sh("add table acct db=c1 herd=h").ok();
        s.ibex.run(&["add", "plugin", "lw", &wasm, rows]).ok();
        s.ibex
            .run(&[
                "add",
                "sync",
                "mm",
                "herd=h",
                "dbs=c1:source,c2:source",
                "autokick=false",
                &format!("conflict_strategy={strategy}"),
            ])
            .ok();
        // A running daemon: the plugin is loaded and the tables checked
        // by its first run, as in production.
        let mut daemon = Daemon::configure(&s.ibex)?;
        daemon.start()?;
        // ROUNDS cycles of fresh conflicts each, the daemon warm after the
        // first; the median is the figure.
        let mut runs = Vec::new();
        for round in 1..=ROUNDS {
            s.sql("c1", &format!("UPDATE acct SET note = 'c1 {round}', n = {round}1"));
            s.sql("c2", &format!("UPDATE acct SET note = 'c2 {round}', n = {round}2"));
            if !daemon.run(&["kick", "mm", "--wait", "600"]).success() {
                bail!("ibex: the conflict run failed:\n{}", daemon.log());
            }
            let conflicts = s.sql("ibex", "SELECT conflicts FROM ibex.run ORDER BY id DESC LIMIT 1");
            if conflicts != keys.to_string() {
                bail!("expected {keys} conflicts, the run counted {conflicts}");
            }
            runs.push(last_ibex_run(&s)?);
        }
        keep_daemon_log(&daemon.log(), &format!("plugin {strategy} {rows}"));
        drop(daemon);
        check_same(&s, "ibex", &["c1", "c2"], &["acct"])?;
        times.push(median(&runs).context("no timed run")?);
        bench.profile(&s, "plugin", &format!("{strategy}, {rows}"), "mm")?;
    }
    for (i, id, label) in [(1, "plugin_rows_false", "plugin, rows=false"), (2, "plugin_rows_true", "plugin, with rows")]
    {
        bench.add(
            Measure::new(
                id,
                "WebAssembly plugin",
                format!("cycle with {keys} conflicts, {label} (median of {ROUNDS})"),
                "s",
                Better::Lower,
            )
            .ibex(Figure::of(times[i]))
            .bucardo(Figure::missing("Bucardo has no WebAssembly plugins (its conflict code is Perl)"))
            .reference(Figure::of(times[0]), "built-in latest")
            .goal(Goal::ReferenceAtMost(1.3), "<= 1.3x of built-in"),
        );
    }
    Ok(())
}
