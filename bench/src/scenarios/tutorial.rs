//! The seed tutorial, timed by each engine's own run record.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ibex_tests::Daemon;

use super::{
    Bench, PGBENCH_TABLES, bucardo_dbs, check_same, ibex_dbs, keep_daemon_log, last_ibex_run, pgbench_all, settle,
};
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
    settle(&s.cluster)?;
    if !daemon.run(&["kick", "foobar", "--wait", "1800"]).success() {
        bail!("ibex: the tutorial run failed:\n{}", daemon.log());
    }
    keep_daemon_log(&daemon.log(), "tutorial");
    drop(daemon);
    let ibex_time = last_ibex_run(&s)?;
    check_same(&s, "ibex", &ibex_names, PGBENCH_TABLES)?;
    bench.profile(&s, "tutorial", "the converging run", "foobar")?;
    let floor = merge_floor(&s, &ibex_names, "foobar")?;

    let b = bench.bucardo(&s)?;
    let names = ["b1", "b2", "b3", "b4", "b5"];
    bucardo_dbs(&s, &b, "tmpl", &names)?;
    b.cmd(&["add", "table", "pgbench_accounts", "pgbench_branches", "pgbench_tellers", "db=b1", "relgroup=therd"])?;
    b.cmd(&["add", "dbgroup", "tgroup", "b1:source", "b2:source", "b3:source", "b4:source", "b5:target"])?;
    b.cmd(&["add", "sync", "foobar", "relgroup=therd", "dbs=tgroup", "autokick=0"])?;
    b.start()?;
    pgbench_all(&s.cluster, &names[..4], &["-n", "-t", &t])?;
    settle(&s.cluster)?;
    let bucardo_time = b.kick_and_wait(&s.cluster, "foobar", Duration::from_secs(1800))?;
    b.stop();
    if bucardo_time.is_some() {
        check_same(&s, "Bucardo", &names, PGBENCH_TABLES)?;
    }
    let bucardo = Figure::or_missing(bucardo_time.map(|d| d.as_secs_f64()), "its run did not end in 1800 s");
    bench.add(
        Measure::new(
            "tutorial",
            "seed tutorial",
            format!("converge after 4 x {transactions} txns"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::of(ibex_time))
        .bucardo(bucardo.clone())
        .reference(Figure::missing("no raw reference: the goal is stated against Bucardo"), "")
        .goal(Goal::BucardoAtMost(0.2), "<= 1/5 of Bucardo's time"),
    );
    bench.add(
        Measure::new(
            "tutorial_floor",
            "seed tutorial",
            format!("converge after 4 x {transactions} txns, against the writes alone"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::of(ibex_time))
        .bucardo(bucardo.clone())
        .reference(
            Figure::of(floor.insert.as_secs_f64()),
            "as many rows per db as the run wrote, deleted and inserted again server-side, all dbs at once, triggers off",
        )
        .goal(Goal::ReferenceAtMost(1.0 / 0.9), "within 10% of its writes alone"),
    );
    bench.add(
        Measure::new(
            "tutorial_copy_floor",
            "seed tutorial",
            format!("converge after 4 x {transactions} txns, against raw delete + copy"),
            "s",
            Better::Lower,
        )
        .ibex(Figure::of(ibex_time))
        .bucardo(bucardo)
        .reference(
            Figure::of(floor.copy.as_secs_f64()),
            "the same rows deleted, then COPYed in from a server-side file, all dbs at once, triggers off",
        )
        .goal(Goal::ReferenceAtMost(1.0 / 0.9), "within 10% of raw delete + copy"),
    );
    Ok(())
}

/// The wall times of the converging run's writes done again by hand.
struct Floor {
    /// DELETE USING, then INSERT ... SELECT from a table of the rows.
    insert: Duration,
    /// DELETE USING, then COPY FROM a binary file of the rows (the
    /// issue's "raw delete + raw copy"; COPY is ibex's transport).
    copy: Duration,
}

/// Rows a run changed in one table on one db (its run record's counts).
struct Applied {
    table: String,
    db: String,
    deleted: u64,
    inserted: u64,
}

/// The floor of the converging run's writes: on every db at once, as the
/// run works on them, each table's rows that the run deleted and inserted
/// there are deleted and inserted again, server-side in one statement each
/// (DELETE USING a table of those rows, then INSERT from it): the writes
/// alone, without reading changed keys, settling conflicts or moving rows
/// between servers. Which rows: the same number, picked in hash order, so
/// they are spread over the table as pgbench's random keys are, and
/// written in key order, as the run writes them. Timed both ways, each
/// twice: inserted from a table of the rows, and copied in from a file.
fn merge_floor(s: &ibex_tests::Setup, dbs: &[&str], sync: &str) -> Result<Floor> {
    let record = s.cluster.psql(
        "ibex",
        &format!(
            "SELECT t->>'table', t->>'db', t->>'deleted', t->>'inserted'
               FROM ibex.run r, jsonb_array_elements(r.tables) t
              WHERE r.id = (SELECT max(id) FROM ibex.run WHERE sync = '{sync}' AND state = 'good')"
        ),
    )?;
    let mut applied = Vec::new();
    for line in record.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split('|').collect();
        let [table, db, deleted, inserted] = parts[..] else { bail!("unreadable run record line {line:?}") };
        let a = Applied {
            table: table.to_string(),
            db: db.to_string(),
            deleted: deleted.parse().with_context(|| format!("deleted count in {line:?}"))?,
            inserted: inserted.parse().with_context(|| format!("inserted count in {line:?}"))?,
        };
        if a.deleted > 0 || a.inserted > 0 {
            applied.push(a);
        }
    }
    if applied.is_empty() {
        bail!("the run record of {sync} lists no rows applied");
    }
    let key_of = |table: &str| -> Result<&'static str> {
        Ok(match table.rsplit('.').next().unwrap_or(table).trim_matches('"') {
            "pgbench_accounts" => "aid",
            "pgbench_branches" => "bid",
            "pgbench_tellers" => "tid",
            other => bail!("no key known for table {other} in the tutorial floor"),
        })
    };
    // Per db, its statements, run in one transaction.
    let mut writes: BTreeMap<&str, String> = BTreeMap::new();
    let mut copies: BTreeMap<&str, String> = BTreeMap::new();
    // Every db of the run is on the one cluster.
    let data_dir = s.cluster.psql("ibex", "SHOW data_directory")?;
    for a in &applied {
        if a.inserted != a.deleted {
            bail!(
                "{} on {}: {} rows inserted, {} deleted; the floor rewrites rows in place",
                a.table,
                a.db,
                a.inserted,
                a.deleted
            );
        }
        let key = key_of(&a.table)?;
        let rows = format!("floor_rows_{key}");
        s.cluster.psql(
            &a.db,
            &format!(
                "DROP TABLE IF EXISTS {rows};
                 CREATE UNLOGGED TABLE {rows} AS
                     SELECT * FROM (SELECT * FROM {} ORDER BY hashint4({key}), {key} LIMIT {}) picked ORDER BY {key};
                 ANALYZE {rows}",
                a.table, a.deleted
            ),
        )?;
        // A file in the server's data directory, written now, read back
        // in the timed COPY.
        let file = format!("{}/ibex_floor_{}_{key}.bin", data_dir.trim(), a.db);
        s.cluster.psql(&a.db, &format!("COPY {rows} TO '{file}' WITH (FORMAT binary)"))?;
        let delete = format!("DELETE FROM {table} t USING {rows} k WHERE t.{key} = k.{key};", table = a.table);
        writes
            .entry(a.db.as_str())
            .or_default()
            .push_str(&format!("{delete} INSERT INTO {table} SELECT * FROM {rows};", table = a.table));
        copies
            .entry(a.db.as_str())
            .or_default()
            .push_str(&format!("{delete} COPY {table} FROM '{file}' WITH (FORMAT binary);", table = a.table));
    }
    // Each rewrite leaves the rows where the next one finds them: timed in
    // the order insert, copy, copy, insert, each floor the faster of its two.
    let insert_first = rewrite_at_once(s, dbs, &writes)?;
    let copy_first = rewrite_at_once(s, dbs, &copies)?;
    let copy_second = rewrite_at_once(s, dbs, &copies)?;
    let insert_second = rewrite_at_once(s, dbs, &writes)?;
    let (insert, copy) = (insert_first.min(insert_second), copy_first.min(copy_second));
    eprintln!(
        "  floor: the run's rows deleted and written again on {} dbs at once: inserted in {:.3} / {:.3} s, copied in {:.3} / {:.3} s",
        dbs.len(),
        insert_first.as_secs_f64(),
        insert_second.as_secs_f64(),
        copy_first.as_secs_f64(),
        copy_second.as_secs_f64()
    );
    Ok(Floor { insert, copy })
}

/// Runs each db's statements in one transaction, all dbs at once, on
/// freshly vacuumed tables, as ibex applies rows: with
/// `session_replication_role = replica`, so that capture triggers do not
/// fire (ibex's own writes are not captured either); returns the wall time.
fn rewrite_at_once(s: &ibex_tests::Setup, dbs: &[&str], statements: &BTreeMap<&str, String>) -> Result<Duration> {
    for db in dbs {
        s.cluster.psql(db, "VACUUM ANALYZE")?;
    }
    settle(&s.cluster)?;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = statements
            .iter()
            .map(|(db, sql)| {
                scope.spawn(move || {
                    s.cluster.psql(
                        db,
                        &format!("SET work_mem = '64MB'; SET session_replication_role = replica; BEGIN; {sql} COMMIT"),
                    )
                })
            })
            .collect();
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("a floor worker panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let wall = started.elapsed();
    check_same(s, "the raw rewrite of the tutorial's rows", dbs, PGBENCH_TABLES)?;
    Ok(wall)
}
