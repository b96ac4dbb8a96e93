//! Correctness at the edges: cascades through makedelta, masters feeding a
//! reporting target, a large backlog caught up in bounded windows, a long
//! open transaction, TRUNCATE against other masters' writes, keys rewritten
//! by triggers or changed in the catalog, two catalogs on one database, and
//! the daemon's pid file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ibex_tests::{Cluster, Daemon, Ibex, Outcome, Setup, run_count};
use serde_json::Value;

/// Rows a run inserted or deleted: 0 once nothing echoes.
fn moved(run: &Value) -> i64 {
    run_count(run, "inserted") + run_count(run, "deleted")
}

/// Creates `names[0]` with `ddl`, clones it to the others, registers all.
fn dbs_with(s: &Setup, ddl: &str, names: &[&str]) {
    s.cluster.create_db(names[0]).unwrap();
    s.sql(names[0], ddl);
    s.dbs_from(names[0], names);
}

/// The delta table of `table` on `db`, schema-qualified.
fn delta_of(s: &Setup, db: &str, table: &str) -> String {
    s.sql(db, &format!("SELECT 'ibex.' || quote_ident(delta_table) FROM ibex.captured WHERE rel_name = '{table}'"))
}

fn has_warning(out: &Outcome, needle: &str) -> bool {
    out.stderr.lines().any(|l| l.starts_with("warning:") && l.contains(needle))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn cascade_makedelta_a_to_b_to_c() {
    cascade_makedelta("trigger");
}

/// b's capture reads the WAL: ab's applies decode with its marker, which
/// says makedelta, and are kept as ab's writes.
#[test]
fn cascade_makedelta_a_to_b_to_c_with_wal_capture() {
    cascade_makedelta("wal");
}

fn cascade_makedelta(capture: &str) {
    let s = Setup::new();
    dbs_with(
        &s,
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 20) i;",
        &["a", "b", "c"],
    );
    for db in ["a", "b"] {
        s.ibex.run(&["update", "db", db, &format!("capture={capture}")]).ok();
    }
    s.ibex.sh("add table items db=a herd=h").ok();
    s.ibex.sh("add sync ab herd=h dbs=a:source,b:target makedelta=true").ok();
    let added = s.ibex.sh("add sync bc herd=h dbs=b:source,c:target").ok();
    // ab records what it applies on b: nothing to warn about.
    assert!(!has_warning(&added, "makedelta"), "{}", added.stderr);
    s.sql(
        "a",
        "INSERT INTO items SELECT i, 'new ' || i FROM generate_series(21, 30) i;
         UPDATE items SET v = 'changed' WHERE id % 4 = 0;
         DELETE FROM items WHERE id IN (3, 5, 25);
         UPDATE items SET id = 1001 WHERE id = 1;",
    );
    assert_eq!(s.run("ab")["run"]["state"], "good");
    let bc = s.run("bc");
    assert_eq!(bc["run"]["state"], "good", "{bc}");
    assert!(run_count(&bc, "inserted") > 0, "ab's applies on b did not reach bc: {bc}");
    s.assert_same(&["a", "b", "c"], &["items"]);
    assert_eq!(s.sql("c", "SELECT count(*) FROM items WHERE id IN (1, 3)"), "0");
    // No echo: with writes stopped, b's delta stops growing and the third
    // run of each sync has nothing to do.
    let delta = delta_of(&s, "b", "items");
    s.run("ab");
    s.run("bc");
    let delta_rows = s.sql("b", &format!("SELECT count(*) FROM {delta}"));
    for sync in ["ab", "bc"] {
        let run = s.run(sync);
        assert_eq!(moved(&run), 0, "{sync} found changes nobody made: {run}");
    }
    assert_eq!(s.sql("b", &format!("SELECT count(*) FROM {delta}")), delta_rows, "b's delta grew without writes");

    // Without makedelta ab's applies are invisible to bc, and ibex says so.
    s.ibex.sh("update sync ab makedelta=false").ok();
    let validated = s.ibex.sh("validate bc").ok();
    assert!(has_warning(&validated, "makedelta"), "no makedelta warning for bc:\n{}", validated.stderr);
    s.sql("a", "INSERT INTO items SELECT i, 'unseen ' || i FROM generate_series(500, 509) i");
    assert_eq!(s.run("ab")["run"]["state"], "good");
    assert_eq!(s.run("bc")["run"]["state"], "good");
    s.assert_same(&["a", "b"], &["items"]);
    assert_eq!(s.sql("b", "SELECT count(*) FROM items WHERE id BETWEEN 500 AND 509"), "10");
    assert_eq!(
        s.sql("c", "SELECT count(*) FROM items WHERE id BETWEEN 500 AND 509"),
        "0",
        "c got rows without makedelta"
    );
}

#[test]
fn three_masters_feeding_a_reporting_target_converge_without_echo() {
    let s = Setup::new();
    dbs_with(
        &s,
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 20) i;",
        &["m1", "m2", "m3", "r"],
    );
    s.ibex.sh("add table items db=m1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source,m3:source makedelta=true").ok();
    s.ibex.sh("add sync rep herd=h dbs=m1:source,r:target").ok();
    s.sql("m1", "INSERT INTO items VALUES (101, 'm1'); UPDATE items SET v = 'm1 first' WHERE id = 5");
    s.sql("m2", "INSERT INTO items VALUES (102, 'm2'); UPDATE items SET v = 'm2 later' WHERE id = 5");
    s.sql("m3", "INSERT INTO items VALUES (103, 'm3'); DELETE FROM items WHERE id = 7");
    // rep reads m1 only: m2's and m3's rows reach r through mm's applies on m1.
    for sync in ["mm", "rep", "mm", "rep"] {
        let run = s.run(sync);
        assert_eq!(run["run"]["state"], "good", "{sync}: {run}");
    }
    s.assert_same(&["m1", "m2", "m3", "r"], &["items"]);
    assert_eq!(s.sql("r", "SELECT count(*) FROM items"), "22");
    assert_eq!(s.sql("r", "SELECT v FROM items WHERE id = 5"), "m2 later");
    // No echo loop between the masters or into r.
    for sync in ["mm", "rep"] {
        s.run(sync);
    }
    for sync in ["mm", "rep"] {
        let run = s.run(sync);
        assert_eq!(moved(&run), 0, "{sync} still moves rows after writes stopped: {run}");
    }
    s.assert_same(&["m1", "m2", "m3", "r"], &["items"]);
}

#[test]
fn catch_up_of_a_large_backlog_in_bounded_windows() {
    let rows: u64 = std::env::var("IBEX_EDGE_BACKLOG_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    // About ten windows whatever the size, so the catch-up must be split.
    let window = (rows / 10).clamp(1, 500_000);
    let s = Setup::one_way("CREATE TABLE big (id int PRIMARY KEY, v text)", "big", "cu", "");
    // 50 transactions, like a day of batch loads while the sync was off.
    let per = rows.div_ceil(50).max(1);
    let mut first = 1;
    while first <= rows {
        let last = (first + per - 1).min(rows);
        s.sql("src", &format!("INSERT INTO big SELECT i, md5(i::text) FROM generate_series({first}, {last}) i"));
        first = last + 1;
    }
    s.ibex.sh("set run_timeout=20s").ok();
    s.ibex.run(&["set", &format!("window_rows={window}")]).ok();
    let started = Instant::now();
    let json = s.ibex.run(&["sync", "run", "cu", "--json"]).ok().json();
    let secs = started.elapsed().as_secs_f64();
    // ibex's own VmHWM: a child's rusage would also count the test process
    // it was spawned from.
    let peak_kib = json["peak_rss_kib"].as_i64().unwrap_or_else(|| panic!("no peak_rss_kib in {json}"));
    let runs = json["runs"].as_i64().unwrap_or_else(|| panic!("no runs in {json}"));
    let mib = peak_kib / 1024;
    eprintln!("catch-up: {rows} rows in {secs:.1} s, {runs} runs, peak RSS {mib} MiB");
    assert!(runs >= 2, "the backlog was not split into windows: {json}");
    assert_eq!(json["run"]["state"], "good", "{json}");
    let backlog = &json["run"]["backlog"];
    assert!(backlog.is_null() || backlog.as_i64() == Some(0), "not caught up: {json}");
    for db in ["src", "dst"] {
        assert_eq!(s.sql(db, "SELECT count(*) FROM big"), rows.to_string(), "rows on {db}");
    }
    s.assert_same(&["src", "dst"], &["big"]);
    let longest = s.sql(
        "ibex",
        "SELECT max(extract(epoch FROM ended_at - started_at)) FROM ibex.run WHERE sync = 'cu' AND state = 'good'",
    );
    let longest: f64 = longest.parse().unwrap_or_else(|_| panic!("no good run of cu recorded: {longest:?}"));
    assert!(longest < 20.0, "a window took {longest:.1} s, more than run_timeout");
    assert!(mib < 256, "peak RSS {mib} MiB: the catch-up is not bounded by its windows");
}

#[test]
fn a_backlog_across_a_power_of_ten_in_xids_is_cut_at_the_limit() {
    // The cut sorted transaction ids as text once: "10000" < "9999", so a
    // window spanning a power of ten was cut far past window_rows.
    let s = Setup::one_way("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE burn (i int)", "t", "cut", "");
    let current: u64 = s.sql("src", "SELECT txid_current()").parse().expect("a transaction id");
    let mut power = 10_000;
    while power < current + 200 {
        power *= 10;
    }
    // Each block with an exception handler is a subtransaction with an xid of its own.
    let burn = power - 100 - current;
    s.sql(
        "src",
        &format!(
            "DO $$ BEGIN FOR i IN 1..{burn} LOOP BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$"
        ),
    );
    // 200 one-row transactions, half on each side of the power of ten.
    s.sql("src", "DO $$ BEGIN FOR i IN 1..200 LOOP INSERT INTO t VALUES (i); COMMIT; END LOOP; END $$");
    let delta = delta_of(&s, "src", "t");
    let span = s.sql("src", &format!("SELECT min(txid)::text || ' ' || max(txid)::text FROM {delta}"));
    let (low, high) = span.split_once(' ').unwrap_or_else(|| panic!("no delta rows: {span:?}"));
    let (low, high): (u64, u64) = (low.parse().expect("an xid"), high.parse().expect("an xid"));
    assert!(low < power && high >= power, "the changes' xids {low}..{high} do not span {power}");
    s.ibex.sh("set window_rows=10").ok();
    let json = s.ibex.run(&["sync", "run", "cut", "--json"]).ok().json();
    assert_eq!(json["run"]["state"], "good", "{json}");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "200");
    let largest = s.sql("ibex", "SELECT max(inserted) FROM ibex.run WHERE sync = 'cut' AND state = 'good'");
    assert_eq!(largest, "10", "a window of more than window_rows=10 delta rows was applied");
    let runs = json["runs"].as_i64().unwrap_or_else(|| panic!("no runs in {json}"));
    assert!(runs >= 20, "200 one-row transactions in windows of 10 took {runs} runs: {json}");
}

#[test]
fn a_window_is_measured_in_changed_keys_not_in_statements() {
    // A delta row holds a statement's keys: the probe sums their arrays'
    // lengths. One statement of 250 keys and 50 of one key are 300 keys in
    // 51 delta rows: over window_rows=100 only when keys are counted.
    let s = Setup::one_way("CREATE TABLE t (id int PRIMARY KEY)", "t", "keys", "");
    s.sql("src", "INSERT INTO t SELECT generate_series(1, 250)");
    s.sql("src", "DO $$ BEGIN FOR i IN 251..300 LOOP INSERT INTO t VALUES (i); COMMIT; END LOOP; END $$");
    let delta = delta_of(&s, "src", "t");
    assert_eq!(s.sql("src", &format!("SELECT count(*) FROM {delta}")), "51", "one delta row per statement");
    s.ibex.sh("set window_rows=100").ok();
    let json = s.ibex.run(&["sync", "run", "keys", "--json"]).ok().json();
    assert_eq!(json["run"]["state"], "good", "{json}");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "300");
    let runs = json["runs"].as_i64().unwrap_or_else(|| panic!("no runs in {json}"));
    assert!(runs >= 2, "300 changed keys were taken as one window under window_rows=100: {json}");
    let largest = s.sql("ibex", "SELECT max(inserted) FROM ibex.run WHERE sync = 'keys' AND state = 'good'");
    assert_eq!(largest, "250", "the 250-key statement is one window, the rest at most 100: {json}");
}

/// Rows the scans of an EXPLAIN ANALYZE plan touched: returned plus
/// filtered out, over all loops.
fn rows_scanned(node: &Value) -> f64 {
    let mut total = 0.0;
    if node["Node Type"].as_str().is_some_and(|t| t.contains("Scan")) {
        let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
        let per_loop: f64 = ["Actual Rows", "Rows Removed by Filter", "Rows Removed by Index Recheck"]
            .iter()
            .map(|k| node[*k].as_f64().unwrap_or(0.0))
            .sum();
        total += per_loop * loops;
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        total += rows_scanned(child);
    }
    total
}

#[test]
fn long_open_transaction_costs_nothing_extra() {
    let s = Setup::one_way("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", "lo", "");
    // A session left in a transaction (with an xid) for the whole test.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (long, xid) = rt.block_on(async {
        let client = s.cluster.connect("src").await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        let xid: String = client.query_one("SELECT pg_current_xact_id()::text", &[]).await.unwrap().get(0);
        (client, xid)
    });
    // A statement's keys are one delta row: single-row statements make
    // as many delta rows as changes, here 200k behind the window.
    s.sql("src", "DO $$ BEGIN FOR i IN 1..200000 LOOP INSERT INTO t VALUES (i, 'x'); END LOOP; END $$");
    assert_eq!(s.run("lo")["run"]["state"], "good");
    s.sql("src", "DO $$ BEGIN FOR i IN 200001..200010 LOOP INSERT INTO t VALUES (i, 'late'); END LOOP; END $$");
    let cursor = s.sql("src", "SELECT snapshot::text FROM ibex.cursor WHERE sync = 'lo'");
    let in_progress = cursor.split(':').nth(2).unwrap_or_default();
    assert!(in_progress.split(',').any(|x| x == xid), "the cursor {cursor} does not hold the open xid {xid}");
    // The next run's window: only the 10 new rows, found without reading
    // the 200k delta rows written since the open transaction began.
    let delta = delta_of(&s, "src", "t");
    let window = ibex::capture::Window::unbounded(&cursor).unwrap();
    let predicate = ibex::capture::window_condition("d", &window, ibex::pg::version::XidFlavour::Xid8);
    // Statistics as autovacuum would soon have them, so the plan is the real one.
    s.sql("src", &format!("ANALYZE {delta}"));
    assert_eq!(s.sql("src", &format!("SELECT count(*) FROM {delta} d WHERE {predicate}")), "10");
    let explain =
        s.sql("src", &format!("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM {delta} d WHERE {predicate}"));
    let plan: Value = serde_json::from_str(&explain).unwrap_or_else(|e| panic!("bad EXPLAIN JSON ({e}):\n{explain}"));
    let scanned = rows_scanned(&plan[0]["Plan"]);
    assert!((10.0..1000.0).contains(&scanned), "the window read {scanned} rows for 10 changes:\n{plan:#}");
    assert_eq!(s.run("lo")["run"]["state"], "good");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "200010");
    rt.block_on(long.batch_execute("COMMIT")).unwrap();
}

/// A target row held by a writer: the first attempt gives up on it after
/// a short wait instead of waiting it out (the wait could be one half of a
/// deadlock, which the server breaks only after deadlock_timeout); the
/// retry holds writers off and waits for the row.
#[test]
fn a_held_target_row_fails_the_first_attempt_fast_and_the_retry_waits_for_it() {
    let s =
        Setup::one_way("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')", "t", "held", "");
    s.sql("src", "UPDATE t SET v = 'new' WHERE id = 1");
    // Locks the row without changing it: waiting it out would succeed.
    let holder = s.cluster.hold("dst", "SELECT * FROM t WHERE id = 1 FOR UPDATE").unwrap();
    let run = s.run_releasing_after_a_wait("held", "dst", holder);
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["attempts"], 2, "the first attempt waited out the held row: {run}");
    assert_eq!(s.sql("dst", "SELECT v FROM t WHERE id = 1"), "new");
}

/// Over a thousand changed integer keys with no gap are deleted on the
/// target as one range (target/postgres.rs): exactly the range, never a
/// neighbour; keys with a gap, or too far apart for int8 arithmetic, take
/// the join. Rows changed on the target only show any over-deletion.
#[test]
fn consecutive_changed_keys_are_deleted_as_their_range_and_nothing_more() {
    let s = Setup::one_way(
        "CREATE TABLE t (id int8 PRIMARY KEY, v text); INSERT INTO t SELECT i, 'old' FROM generate_series(1, 10000) i",
        "t",
        "range",
        "autokick=false",
    );
    assert_eq!(s.run("range")["run"]["state"], "good");
    // The target's own marks on the neighbours of each changed set: a
    // delete that reaches past the keys removes them for good (the source
    // never changed them, so no run copies them back).
    s.sql("dst", "UPDATE t SET v = 'mark' WHERE id IN (99, 2000, 5001, 6000, 7001, 8002)");
    let marks = "SELECT count(*) FROM t WHERE v = 'mark'";
    // Each run at debug level: whether it found the range on the source
    // (no key sent) shows only in its log.
    let run_logged = |found_range: bool| {
        let out = s.ibex.run(&["--log-level", "debug", "sync", "run", "range", "--json"]).ok();
        assert_eq!(out.stderr.contains("changed range replaced"), found_range, "{}", out.stderr);
        out.json()
    };
    // 3,000 consecutive keys: the range.
    s.sql("src", "UPDATE t SET v = 'new' WHERE id BETWEEN 2001 AND 5000");
    let run = run_logged(true);
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["deleted"], 3000, "{run}");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t WHERE v = 'new'"), "3000");
    assert_eq!(s.sql("dst", marks), "6");
    // A range whose middle the source deleted: gone on the target too.
    s.sql("src", "UPDATE t SET v = 'r2' WHERE id BETWEEN 100 AND 1999; DELETE FROM t WHERE id BETWEEN 500 AND 509");
    let run = run_logged(true);
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["deleted"], 1900, "{run}");
    assert_eq!(run["run"]["inserted"], 1890, "{run}");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t WHERE v = 'r2'"), "1890");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t WHERE id BETWEEN 500 AND 509"), "0");
    assert_eq!(s.sql("dst", marks), "6");
    // 2,000 keys around a gap at 7001: as many keys as a range of 2,000
    // would hold, but not one; the join deletes them.
    s.sql("src", "UPDATE t SET v = 'gap' WHERE id BETWEEN 6001 AND 7000 OR id BETWEEN 7002 AND 8001");
    let run = run_logged(false);
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["deleted"], 2000, "{run}");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t WHERE v = 'gap'"), "2000");
    assert_eq!(s.sql("dst", marks), "6");
    // New keys up to the largest int8, and a set whose span overflows int8.
    s.sql("src", "INSERT INTO t SELECT 9223372036854775807 - i, 'top' FROM generate_series(0, 1499) i");
    s.sql("src", "INSERT INTO t SELECT -9223372036854775808 + i, 'far' FROM generate_series(0, 1) i");
    s.sql("src", "UPDATE t SET v = 'far' WHERE id BETWEEN 9001 AND 10000");
    let run = s.run("range");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(
        s.sql("dst", "SELECT count(*) FILTER (WHERE v = 'top') || '/' || count(*) FILTER (WHERE v = 'far') FROM t"),
        "1500/1002"
    );
    assert_eq!(s.sql("dst", marks), "6");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "11492");
}

/// A target that refuses the delete of changed rows (a trigger that fires
/// even for ibex's applies): the run names the trigger's error, not the
/// "transaction is aborted" of the COPY pipelined behind the delete, on
/// the one-way path and on the multi-master one; no row is half-applied.
#[test]
fn a_failing_delete_is_reported_by_its_own_error_not_the_copy_behind_it() {
    let s = Setup::new();
    dbs_with(
        &s,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'old' FROM generate_series(1, 3000) i;
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN RAISE EXCEPTION 'deletes of t are refused here'; END$$;",
        &["src", "dst", "m2"],
    );
    s.ibex.sh("add table t db=src herd=h").ok();
    s.ibex.sh("add sync one herd=h dbs=src:source,dst:target autokick=false").ok();
    s.ibex.sh("add sync two herd=h dbs=src:source,m2:source autokick=false").ok();
    assert_eq!(s.run("one")["run"]["state"], "good");
    assert_eq!(s.run("two")["run"]["state"], "good");
    for db in ["dst", "m2"] {
        s.sql(
            db,
            "CREATE TRIGGER refuse BEFORE DELETE ON t FOR EACH ROW EXECUTE FUNCTION refuse();
                   ALTER TABLE t ENABLE ALWAYS TRIGGER refuse",
        );
    }
    // m2's own changes make sync two merge (both of its masters changed).
    s.sql("m2", "UPDATE t SET v = 'm2' WHERE id IN (1, 3000)");
    // Few keys, many with gaps (the large delete's join) and then all of
    // them, a range (its range delete): failed runs leave each set's keys
    // to the next.
    for range in ["id <= 3", "id > 3 AND id % 7 <> 0", "id > 3"] {
        s.sql("src", &format!("UPDATE t SET v = 'new' WHERE {range}"));
        for sync in ["one", "two"] {
            let err = s.run_fails(sync, "deletes of t are refused here");
            assert!(!err.contains("current transaction is aborted"), "{sync}, {range}: {err}");
        }
    }
    for (db, old) in [("src", "0"), ("dst", "3000"), ("m2", "2998")] {
        assert_eq!(s.sql(db, "SELECT count(*) FROM t WHERE v = 'old'"), old, "{db}");
    }
}

/// `id=v,...` of table items, by id.
fn items(s: &Setup, db: &str) -> String {
    s.sql(db, "SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM items")
}

#[test]
fn truncate_on_one_master_keeps_later_writes_of_another() {
    let s = Setup::new();
    dbs_with(
        &s,
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 10) i;",
        &["m1", "m2"],
    );
    s.ibex.sh("add table items db=m1 herd=h").ok();
    s.ibex.sh("add sync tm herd=h dbs=m1:source,m2:source").ok();
    // Writes on m2 after m1's TRUNCATE survive it.
    s.sql("m1", "TRUNCATE items");
    s.sql("m1", "SELECT pg_sleep(0.05)");
    s.sql("m2", "INSERT INTO items VALUES (100, 'after'); UPDATE items SET v = 'late' WHERE id = 3");
    assert_eq!(s.run("tm")["run"]["state"], "good");
    for db in ["m1", "m2"] {
        assert_eq!(items(&s, db), "3=late,100=after", "on {db}");
    }
    // Writes on m2 before m1's TRUNCATE do not.
    s.sql("m2", "INSERT INTO items VALUES (200, 'before')");
    s.sql("m2", "SELECT pg_sleep(0.05)");
    s.sql("m1", "TRUNCATE items");
    assert_eq!(s.run("tm")["run"]["state"], "good");
    for db in ["m1", "m2"] {
        assert_eq!(items(&s, db), "", "on {db}");
    }
}

#[test]
fn key_rewritten_by_a_before_trigger_is_captured() {
    let s = Setup::new();
    dbs_with(
        &s,
        "CREATE TABLE k (id int PRIMARY KEY, v text);
         INSERT INTO k SELECT i, 'v' || i FROM generate_series(1, 5) i;",
        &["src", "dst"],
    );
    // On src only: the UPDATE never names id, the trigger changes it.
    s.sql(
        "src",
        "CREATE FUNCTION move_key() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.v = 'move' THEN NEW.id := NEW.id + 1000; END IF; RETURN NEW; END $$;
         CREATE TRIGGER move_key BEFORE UPDATE ON k FOR EACH ROW EXECUTE FUNCTION move_key();",
    );
    s.ibex.sh("add table k db=src herd=h").ok();
    s.ibex.sh("add sync kt herd=h dbs=src:source,dst:target").ok();
    s.sql("src", "UPDATE k SET v = 'move' WHERE id = 2");
    assert_eq!(s.sql("src", "SELECT string_agg(id::text, ',' ORDER BY id) FROM k"), "1,3,4,5,1002");
    assert_eq!(s.run("kt")["run"]["state"], "good");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM k WHERE id = 2"), "0", "the old key stayed on dst");
    assert_eq!(s.sql("dst", "SELECT v FROM k WHERE id = 1002"), "move");
    s.assert_same(&["src", "dst"], &["k"]);
}

#[test]
fn changing_the_key_keeps_pending_changes() {
    let s = Setup::one_way(
        "CREATE TABLE p (a int NOT NULL, b int NOT NULL, v text, PRIMARY KEY (a));
         CREATE UNIQUE INDEX p_b ON p (b);
         INSERT INTO p SELECT i, 100 + i, 'v' || i FROM generate_series(1, 10) i;",
        "p",
        "pk",
        "",
    );
    // Captured under key a, still unapplied when the key becomes b.
    s.sql(
        "src",
        "INSERT INTO p VALUES (11, 111, 'new'); UPDATE p SET v = 'edited' WHERE a = 2; DELETE FROM p WHERE a = 3;",
    );
    s.ibex.sh("update table p pkey=b").ok();
    assert_eq!(s.sql("src", "SELECT key_columns::text FROM ibex.captured WHERE rel_name = 'p'"), "{b}");
    assert_eq!(s.run("pk")["run"]["state"], "good");
    s.assert_same(&["src", "dst"], &["p"]);
    assert_eq!(s.sql("dst", "SELECT count(*) FROM p WHERE a = 3"), "0", "the delete was lost");
    assert_eq!(s.sql("dst", "SELECT v FROM p WHERE a = 11"), "new", "the insert was lost");
    assert_eq!(s.sql("dst", "SELECT v FROM p WHERE a = 2"), "edited", "the update was lost");
    // Changes under the new key flow as well.
    s.sql("src", "UPDATE p SET v = 'by b' WHERE b = 105; DELETE FROM p WHERE b = 106");
    assert_eq!(s.run("pk")["run"]["state"], "good");
    s.assert_same(&["src", "dst"], &["p"]);
}

#[test]
fn two_catalogs_cannot_share_a_db_capture() {
    let s = Setup::new();
    dbs_with(&s, "CREATE TABLE t (id int PRIMARY KEY, v text)", &["src", "dst1", "dst2"]);
    s.ibex.sh("add table t db=src herd=h").ok();
    s.ibex.sh("add sync one herd=h dbs=src:source,dst1:target").ok();
    let triggers = "SELECT string_agg(tgname::text, ',' ORDER BY tgname) FROM pg_trigger WHERE tgname LIKE 'ibex%'";
    let installed = s.sql("src", triggers);
    let other = Ibex::new(s.cluster.dsn("ibex2")).unwrap();
    other.sh("install").ok();
    for db in ["src", "dst2"] {
        other.run(&["add", "db", db, &format!("dbname={db}"), "host=127.0.0.1", &s.port_arg(), "user=postgres"]).ok();
    }
    other.sh("add table t db=src herd=h").ok();
    // A different sync name: the clash is the shared capture, not a name.
    other.sh("add sync two herd=h dbs=src:source,dst2:target").fails_with("another ibex catalog");
    assert_eq!(s.sql("src", "SELECT count(*) FROM ibex.cursor"), "1");
    assert_eq!(s.sql("src", triggers), installed, "the refused sync changed src's capture");
    // The first catalog's sync is unharmed.
    s.sql("src", "INSERT INTO t VALUES (1, 'one')");
    assert_eq!(s.run("one")["run"]["state"], "good");
    assert_eq!(s.sql("dst1", "SELECT v FROM t"), "one");
    assert_eq!(s.sql("dst2", "SELECT count(*) FROM t"), "0");
}

/// A process killed when the test ends, also on panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A detached daemon, sent SIGTERM if the test ends before it stopped.
struct Detached(u32);

impl Drop for Detached {
    fn drop(&mut self) {
        let cmdline = fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("ibex") {
            let _ = Command::new("kill").arg(self.0.to_string()).status();
        }
    }
}

/// `ibex ARGS` with HOME in `home` and no XDG directories.
fn run_at_home(ibex: &Ibex, home: &Path, args: &[&str]) -> Outcome {
    let out = ibex
        .command(args)
        .env("HOME", home)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_STATE_HOME")
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

#[test]
fn pid_file_is_private_and_exclusive() {
    let s = Setup::new();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    // Not 0700 like a fresh tempdir, so the privacy check below means something.
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d.start().unwrap();
    let pid_path = d.dir.path().join("ibex.pid");
    let (file_mode, dir_mode) = (mode(&pid_path), mode(d.dir.path()));
    assert!(file_mode == 0o600 || dir_mode == 0o700, "pid file {file_mode:o} in a {dir_mode:o} directory");
    assert_eq!(fs::read_to_string(&pid_path).unwrap().trim(), d.pid().unwrap().to_string());

    // A pid file naming some other process: `stop` must leave it alone.
    let mut sleeper = KillOnDrop(Command::new("sleep").arg("1000").spawn().unwrap());
    let idle = Ibex::new(s.cluster.dsn("idle")).unwrap();
    idle.sh("install").ok();
    let other_dir = tempfile::tempdir().unwrap();
    let other_pid = other_dir.path().join("ibex.pid");
    fs::write(&other_pid, format!("{}\n", sleeper.0.id())).unwrap();
    let other_toml = other_dir.path().join("ibex.toml");
    fs::write(&other_toml, format!("control = \"{}\"\npid_file = \"{}\"\n", idle.control, other_pid.display()))
        .unwrap();
    let stopped = idle.run(&["--config", &other_toml.display().to_string(), "stop", "--timeout", "5"]).ok();
    assert!(stopped.stdout.contains("not running"), "{}", stopped.stdout);
    assert!(sleeper.0.try_wait().unwrap().is_none(), "ibex stop killed a process that is not ibex");
    assert!(d.run(&["ping", "--timeout", "5"]).ok().stdout.contains("Pong"), "the other catalog's stop stopped ours");
    d.run(&["stop"]).ok();
    assert!(d.wait_exit(Duration::from_secs(30)).unwrap().success());
    drop(sleeper);

    // Without pid_file the default is a private directory, not /tmp.
    let home = tempfile::tempdir().unwrap();
    let toml = home.path().join("ibex.toml");
    fs::write(&toml, format!("control = \"{}\"\n", s.ibex.control)).unwrap();
    let config = toml.display().to_string();
    let started = run_at_home(&s.ibex, home.path(), &["--config", &config, "start"]).ok();
    let line = started.stdout.lines().find(|l| l.contains("Started ibex (pid")).unwrap_or_else(|| {
        panic!("no start line:\n{}", started.stdout);
    });
    let pid: u32 = line.split("(pid ").nth(1).and_then(|r| r.split(')').next()).and_then(|p| p.parse().ok()).unwrap();
    let _guard = Detached(pid);
    let path = line.split("pid file: ").nth(1).unwrap_or_else(|| panic!("no pid file in {line:?}")).trim();
    assert!(!path.starts_with("/tmp/ibex-"), "default pid file in /tmp: {path}");
    let path = Path::new(path);
    assert_eq!(mode(path.parent().unwrap()), 0o700, "the pid file's directory is not private: {}", path.display());
    assert_eq!(fs::read_to_string(path).unwrap().trim(), pid.to_string());
    let stopped = run_at_home(&s.ibex, home.path(), &["--config", &config, "stop"]).ok();
    assert!(stopped.stdout.contains(&format!("Stopped ibex (pid {pid})")), "{}", stopped.stdout);
}

/// The VAC deletes what every cursor has passed even while an older
/// transaction stays open (a purge bounded by the oldest xmin would keep
/// everything written since it began), and it does so on a connection it
/// keeps, not a fresh one per pass.
#[test]
fn vac_purges_past_a_long_open_transaction_on_kept_connections() {
    let s = Setup::one_way("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", "vc", "");
    s.ibex.sh("set vac_interval=1s").ok();
    let long = s.cluster.hold("src", "SELECT pg_current_xact_id()").unwrap();
    s.sql("src", "INSERT INTO t SELECT i, 'x' FROM generate_series(1, 5000) i");
    let delta = delta_of(&s, "src", "t");
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    d.run(&["kick", "vc", "--wait", "60"]).ok();
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "5000");
    let started = Instant::now();
    while s.sql("src", &format!("SELECT count(*) FROM {delta}")) != "0" {
        assert!(started.elapsed() < Duration::from_secs(30), "the VAC kept applied rows behind an open transaction");
        std::thread::sleep(Duration::from_millis(200));
    }
    let vac_backends = || {
        s.sql(
            "src",
            "SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '') FROM pg_stat_activity
              WHERE application_name = 'ibex vac' AND datname = 'src'",
        )
    };
    let before = vac_backends();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!before.is_empty(), "no VAC connection on src");
    assert_eq!(vac_backends(), before, "the VAC opened new connections between passes");
    long.release().unwrap();
}

/// Three masters whose keys come from a bigserial: validate warns until the
/// sequences are staggered; after `ibex sequences stagger`, rows inserted on
/// all three at once get distinct keys, and a run has no conflict.
#[test]
fn staggered_sequences_keep_three_masters_from_colliding() {
    let s = Setup::new();
    dbs_with(
        &s,
        "CREATE TABLE notes (id bigserial PRIMARY KEY, v text);
         INSERT INTO notes (v) SELECT 'seed ' || i FROM generate_series(1, 5) i;",
        &["m1", "m2", "m3"],
    );
    s.ibex.sh("add table notes db=m1 herd=h").ok();
    let added = s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source,m3:source").ok();
    assert!(has_warning(&added, "ibex sequences stagger mm"), "no stagger warning:\n{}", added.stderr);
    let staggered = s.ibex.sh("sequences stagger mm").ok();
    assert!(staggered.stdout.contains("increment 10"), "{}", staggered.stdout);
    let validated = s.ibex.sh("validate mm").ok();
    assert!(!has_warning(&validated, "stagger"), "still warns after staggering:\n{}", validated.stderr);
    // The same statements on every master at once.
    let writers: Vec<_> = ["m1", "m2", "m3"]
        .into_iter()
        .map(|db| {
            let port = s.cluster.port();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let out = Command::new("psql")
                        .args([
                            "-X",
                            "-q",
                            "-h",
                            "127.0.0.1",
                            "-U",
                            "postgres",
                            "-p",
                            &port.to_string(),
                            "-d",
                            db,
                            "-c",
                        ])
                        .arg(format!("INSERT INTO notes (v) VALUES ('{db} {i}')"))
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run_count(&run, "conflicts"), 0, "keys collided: {run}");
    s.assert_same(&["m1", "m2", "m3"], &["notes"]);
    assert_eq!(s.sql("m3", "SELECT count(*) || '/' || count(DISTINCT id) FROM notes"), "65/65");
    // Each master's new keys have its own residue modulo the increment.
    for (db, residue) in [("m1", 1), ("m2", 2), ("m3", 3)] {
        assert_eq!(
            s.sql("m1", &format!("SELECT count(*) FROM notes WHERE v LIKE '{db} %' AND id % 10 = {residue}")),
            "20",
            "keys made on {db}"
        );
    }
}

/// Errors are said at the normal log level, and recovery too: a source
/// that is down when the daemon starts is reported by its listener, which
/// says so again when it is back (it used to log at debug only).
#[test]
fn a_listener_that_cannot_connect_says_so_and_recovers() {
    let s = Setup::new();
    let mut far = ibex_tests::Cluster::start().unwrap();
    far.create_db("src").unwrap();
    far.psql("src", "CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    s.cluster.create_db("dst").unwrap();
    s.sql("dst", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.add_db_on("src", "src", far.port()).ok();
    s.add_db("dst", "dst").ok();
    s.ibex.sh("add table t db=src herd=h").ok();
    s.ibex.sh("add sync ls herd=h dbs=src:source,dst:target").ok();
    far.stop().unwrap();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let started = Instant::now();
    while !d.log().contains("autokick listener cannot connect") {
        assert!(started.elapsed() < Duration::from_secs(20), "no warning about the listener:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let warning =
        d.log().lines().find(|l| l.contains("autokick listener cannot connect")).unwrap_or_default().to_string();
    assert!(warning.contains("WARN") && warning.contains("db=src"), "{warning}");
    far.restart().unwrap();
    far.psql("src", "INSERT INTO t VALUES (1, 'after the outage')").unwrap();
    while !d.log().contains("autokick listener connected again") {
        assert!(started.elapsed() < Duration::from_secs(90), "no word of the recovery:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    while s.sql("dst", "SELECT count(*) FROM t") != "1" {
        assert!(started.elapsed() < Duration::from_secs(120), "the row never arrived:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A delta table written by an earlier ibex, a row per changed row, is
/// converted by the next reconcile (here `validate`) with its pending keys,
/// their transactions and old images; the sync then applies them, and new
/// writes go into the per-statement layout.
#[test]
fn a_delta_table_of_an_earlier_ibex_is_converted_with_its_pending_keys() {
    let s = Setup::new();
    dbs_with(&s, "CREATE TABLE t (id int PRIMARY KEY, v text)", &["src", "dst"]);
    s.ibex.sh("add table t db=src herd=h").ok();
    s.ibex.sh("update table t capture_old=true").ok();
    s.ibex.sh("add sync up herd=h dbs=src:source,dst:target").ok();
    s.sql("src", "INSERT INTO t SELECT i, 'x' FROM generate_series(1, 5) i");
    s.sql("src", "UPDATE t SET v = 'y' WHERE id = 2");
    let delta = delta_of(&s, "src", "t");
    // The layout of an earlier ibex, holding the same pending changes.
    s.sql(
        "src",
        &format!(
            "CREATE TABLE old_rows AS SELECT u.id, s.txid, s.changed_at, u.image::text[] AS image, s.origin
               FROM {delta} s, unnest(s.id, s.old_row) u(id, image);
             DROP TABLE {delta};
             CREATE TABLE {delta} (id int NOT NULL, txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
                                   changed_at timestamptz NOT NULL DEFAULT clock_timestamp(), old_row text[], origin text);
             INSERT INTO {delta} SELECT id, txid, changed_at, image, origin FROM old_rows;
             UPDATE ibex.captured SET layout = 'row';"
        ),
    );
    // 5 inserted keys, and the update's old and new key of id 2.
    assert_eq!(s.sql("src", &format!("SELECT count(*) FROM {delta}")), "7");
    // A run cannot read it, and says what converts it.
    s.ibex.sh("sync run up").fails_with("run `ibex validate up` to convert them");
    s.ibex.sh("validate up").ok();
    assert_eq!(s.sql("src", "SELECT layout FROM ibex.captured"), "statement");
    assert_eq!(
        s.sql("src", &format!("SELECT count(*) || ' ' || count(old_row) FROM {delta}, unnest(id)")),
        "7 1",
        "the keys and the one old image (of id 2) were not all kept"
    );
    assert_eq!(
        s.sql("src", &format!("SELECT (old_row[1]::text[])[2] FROM {delta} WHERE old_row IS NOT NULL")),
        "x",
        "the old image of id 2 changed in the conversion"
    );
    let run = s.run("up");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["src", "dst"], &["t"]);
    s.sql("src", "UPDATE t SET v = 'z' WHERE id <= 3");
    assert_eq!(s.sql("src", &format!("SELECT count(*) FROM {delta} WHERE cardinality(id) = 3")), "2");
    assert_eq!(s.run("up")["run"]["state"], "good");
    s.assert_same(&["src", "dst"], &["t"]);
}

/// Keys that are arrays, or domains over arrays, are kept in the delta as
/// text (an array of arrays would be flattened): writes to such a table
/// succeed and reach the target, key changes included.
#[test]
fn array_and_domain_over_array_keys_are_captured() {
    let s = Setup::one_way(
        "CREATE DOMAIN ids AS int[];
         CREATE TABLE t (k ids PRIMARY KEY, v text);
         CREATE TABLE a (k int[] PRIMARY KEY, v text)",
        "t a",
        "arr",
        "",
    );
    for table in ["t", "a"] {
        s.sql("src", &format!("INSERT INTO {table} SELECT ARRAY[i, i + 1], 'x' FROM generate_series(1, 50) i"));
        s.sql("src", &format!("UPDATE {table} SET k = ARRAY[0, 0] WHERE k = ARRAY[1, 2]"));
        s.sql("src", &format!("DELETE FROM {table} WHERE k = ARRAY[3, 4]"));
    }
    let run = s.run("arr");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["src", "dst"], &["t", "a"]);
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t WHERE k = ARRAY[0, 0]"), "1");
}

/// Statements of every size around the delta's writers (one INSERT for at
/// most 1,000 keys; beyond, rows of 100,000 keys, sliced from one array
/// where the key's values have one size, else by the chunking aggregate):
/// each changed key is in the delta once, an empty statement writes
/// nothing, and a sync applies them all. Two tables of two key columns:
/// `t`'s second kept as text (a domain), `f`'s of fixed size.
#[test]
fn statements_of_every_size_are_captured_key_for_key() {
    // makedelta: the trigger declares its variable ibex_origin, the name
    // of a key column of `odd`.
    let s = Setup::one_way(
        "CREATE DOMAIN code AS text;
         CREATE TABLE t (a int, b code, v int, PRIMARY KEY (a, b));
         CREATE TABLE f (a int, b bigint, v int, PRIMARY KEY (a, b));
         CREATE TABLE w (a name, b name, c name, PRIMARY KEY (a, b, c));
         CREATE TABLE odd (ibex_origin int, ibex_row text, ibex_n int, PRIMARY KEY (ibex_origin, ibex_row))",
        "t f odd w",
        "sizes",
        "makedelta=true",
    );
    // Each table's b as a function of a.
    for (table, b_of) in [("t", "'c' || {a}"), ("f", "{a} * 10")] {
        let b = |a: &str| b_of.replace("{a}", a);
        let statements = [
            format!("INSERT INTO {table} SELECT i, {}, 0 FROM generate_series(1, 250000) i", b("i")),
            format!("UPDATE {table} SET v = v + 1 WHERE a BETWEEN 1 AND 0"),
            format!("UPDATE {table} SET v = v + 1 WHERE a BETWEEN 1 AND 1"),
            format!("UPDATE {table} SET v = v + 1 WHERE a BETWEEN 2 AND 1000"),
            format!("UPDATE {table} SET v = v + 1 WHERE a BETWEEN 1001 AND 2001"),
            format!("UPDATE {table} SET v = v + 1 WHERE a BETWEEN 3000 AND 103000"),
            format!("DELETE FROM {table} WHERE a > 249000"),
            // An upsert fires the INSERT and the UPDATE trigger: one is empty.
            format!("INSERT INTO {table} VALUES (5, {}, 0) ON CONFLICT (a, b) DO UPDATE SET v = {table}.v + 1", b("5")),
        ];
        for statement in &statements {
            s.sql("src", statement);
            s.sql("dst", statement);
        }
        let delta = delta_of(&s, "src", table);
        let keys_per_row = s.sql(
            "src",
            &format!("SELECT string_agg(cardinality(a)::text, ',' ORDER BY txid, cardinality(a)) FROM {delta}"),
        );
        // 250,000 inserted keys are two full rows and a half one; the empty
        // statement wrote nothing; 1,001 keys are one row; 100,001 are two.
        assert_eq!(keys_per_row, "50000,100000,100000,1,999,1001,1,100000,1000,1", "{table}");
        let pairs = s.sql(
            "src",
            &format!(
                "SELECT count(*) || ' ' || count(DISTINCT (d.txid, k.a, k.b)) || ' ' || count(DISTINCT (k.a, k.b))
                        || ' ' || bool_and(k.b = {})
                   FROM {delta} d CROSS JOIN LATERAL unnest(d.a, d.b) AS k(a, b)",
                b("k.a")
            ),
        );
        assert_eq!(pairs, "353003 353003 250000 true", "{table}: every key of a statement once, its columns paired");
        let sliced = s.sql(
            "src",
            &format!(
                "SELECT p.prosrc LIKE '%ibex_slice%' FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid
                  WHERE g.tgrelid = '{table}'::regclass AND g.tgname = 'ibex_capture_insert'"
            ),
        );
        assert_eq!(sliced, if table == "f" { "t" } else { "f" }, "{table}: sliced only where the key has one size");
        for statement in [
            format!("UPDATE {table} SET v = v + 1 WHERE a <= 1500"),
            format!("UPDATE {table} SET v = v + 1 WHERE a = 7"),
            format!("DELETE FROM {table} WHERE a BETWEEN 200000 AND 200500"),
        ] {
            s.sql("src", &statement);
        }
    }
    for statement in [
        // Key columns named like the trigger's variable and row alias.
        "INSERT INTO odd SELECT i, 'r' || i, i FROM generate_series(1, 3) i",
        "UPDATE odd SET ibex_n = 0 WHERE ibex_origin = 2",
        "DELETE FROM odd WHERE ibex_origin = 3",
    ] {
        s.sql("src", statement);
    }
    // Three name columns (64 bytes each) bound the sliced path below
    // 200,000 keys: such a statement falls back to the aggregate.
    s.sql("src", "INSERT INTO w SELECT i::text, i::text, i::text FROM generate_series(1, 200000) i");
    let delta = delta_of(&s, "src", "w");
    assert_eq!(
        s.sql(
            "src",
            &format!(
                "SELECT string_agg(cardinality(a)::text, ',') || ' ' || (SELECT count(DISTINCT (k.a, k.b, k.c))
                   FROM {delta} d CROSS JOIN LATERAL unnest(d.a, d.b, d.c) AS k(a, b, c) WHERE k.a = k.b AND k.b = k.c)
                   FROM {delta}"
            )
        ),
        "100000,100000 200000"
    );
    let run = s.run("sizes");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["src", "dst"], &["t", "f", "odd", "w"]);
    assert_eq!(
        s.sql("dst", "SELECT string_agg(ibex_origin || ibex_row || ibex_n, ',' ORDER BY 1) FROM odd"),
        "1r11,2r20"
    );
}

/// A key column named like one of the delta table's own columns cannot be
/// captured by that key: `add sync` says so and names the way out,
/// instead of failing on the delta table's SQL.
#[test]
fn a_key_column_named_like_a_delta_column_is_refused_clearly() {
    let s = Setup::new();
    dbs_with(&s, "CREATE TABLE pay (txid bigint PRIMARY KEY, v int)", &["src", "dst"]);
    s.ibex.sh("add table pay db=src herd=h").ok();
    s.ibex.sh("add sync p herd=h dbs=src:source,dst:target").fails_with("uses for a column of its own (txid,");
}

/// A COPY the server refuses before copy-in mode begins (behind a failed
/// statement of its transaction, or on a lock timeout) is answered once:
/// every later request on the connection gets its own reply. The published
/// tokio-postgres answered it twice, so the next request "succeeded" on
/// the extra reply and the connection then closed (vendor/README.md).
#[test]
fn a_refused_copy_leaves_the_connection_in_step() {
    let cluster = Cluster::start().unwrap();
    cluster.create_db("db").unwrap();
    cluster.psql("db", "CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(cluster.connect("db")).unwrap();
    let copy_sql = "COPY t (id) FROM STDIN";
    let in_step = |client: &tokio_postgres::Client, case: &str| {
        rt.block_on(async {
            // A ROLLBACK answered by a stray reply would leave its own
            // reply to the query after it, or close the connection.
            client.batch_execute("ROLLBACK").await.unwrap_or_else(|e| panic!("{case}: ROLLBACK: {e}"));
            for n in 1..=3 {
                let row = client
                    .query_one("SELECT $1::int", &[&n])
                    .await
                    .unwrap_or_else(|e| panic!("{case}: query {n} after the refused COPY: {e}"));
                assert_eq!(row.get::<_, i32>(0), n, "{case}: query {n} got another request's reply");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!client.is_closed(), "{case}: the connection closed after the refused COPY");
        })
    };

    // Refused at Bind: a kept statement, in a transaction already aborted.
    let kept = rt.block_on(client.prepare(copy_sql)).unwrap();
    let refused = rt.block_on(async {
        client.batch_execute("BEGIN").await.unwrap();
        assert!(client.batch_execute("SELECT 1 / 0").await.is_err());
        client.copy_in::<_, bytes::Bytes>(&kept).await.err()
    });
    let refused = refused.expect("a COPY in an aborted transaction was accepted");
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION), "{refused}");
    in_step(&client, "behind a failed statement");

    // Refused at Execute: the table is locked past lock_timeout. ibex's own
    // copy helper, as a run loads a target.
    let held = cluster.hold("db", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE").unwrap();
    let refused = rt.block_on(async {
        client.batch_execute("BEGIN; SET LOCAL lock_timeout = '100ms'").await.unwrap();
        ibex::pg::copy::copy_in_bytes(&client, copy_sql, bytes::Bytes::from_static(b"1\n")).await.err()
    });
    let refused = refused.expect("a COPY into a locked table was accepted");
    assert_eq!(refused.sqlstate(), Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE), "{refused}");
    held.release().unwrap();
    in_step(&client, "on a lock timeout");

    // And the connection still loads rows.
    let loaded = rt.block_on(async {
        client.batch_execute("BEGIN").await.unwrap();
        let n = ibex::pg::copy::copy_in_bytes(&client, copy_sql, bytes::Bytes::from_static(b"1\n2\n")).await.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        n
    });
    assert_eq!(loaded, 2);
    assert_eq!(cluster.psql("db", "SELECT count(*) FROM t").unwrap(), "2");
}
