//! Scenario tests of the sync cycle against real clusters: topologies,
//! conflicts under each strategy, full copies, sequences, crash recovery
//! and concurrent load. Each ends by comparing every table on every db.
//!
//! Long on purpose: one scenario per test, sharing the `Masters` fixture.

use std::thread;

use ibex_tests::{Setup, run_count};

const PGBENCH_TABLES: &[&str] = &["pgbench_accounts", "pgbench_branches", "pgbench_tellers"];

#[test]
fn seed_tutorial_four_sources_and_a_target() {
    let s = Setup::new();
    s.cluster.create_pgbench_db("btest1", 1).unwrap();
    s.dbs_from("btest1", &["btest1", "btest2", "btest3", "btest4", "btest5"]);
    let added = s.ibex.sh("add all tables db=btest1 herd=therd").ok();
    assert!(added.stderr.contains("pgbench_history on db btest1 has no primary key"), "{}", added.stderr);
    s.ibex.sh("add dbgroup tgroup btest1:source btest2:source btest3:source btest4:source btest5:target").ok();
    s.ibex.sh("add sync foobar herd=therd dbs=tgroup autokick=false").ok();
    let loads: Vec<_> = ["btest1", "btest2", "btest3", "btest4"]
        .into_iter()
        .map(|db| {
            let port = s.cluster.port();
            thread::spawn(move || {
                let status = std::process::Command::new("pgbench")
                    .args(["-n", "-t", "1000", "-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string(), db])
                    .output()
                    .unwrap();
                assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
            })
        })
        .collect();
    for load in loads {
        load.join().unwrap();
    }
    let run = s.run("foobar");
    assert_eq!(run["run"]["state"], "good");
    // The one branch row was changed on all four sources: a conflict at least.
    assert!(run_count(&run, "conflicts") >= 1, "{run}");
    assert!(run_count(&run, "inserted") > 4000, "{run}");
    s.assert_same(&["btest1", "btest2", "btest3", "btest4", "btest5"], PGBENCH_TABLES);
    let conflicts = run["conflicts"].as_array().unwrap();
    let branch = conflicts.iter().find(|c| c["table"] == "public.pgbench_branches").expect("branch conflict logged");
    assert_eq!(branch["key"], "1");
    assert_eq!(branch["dbs"].as_array().unwrap().len(), 4);
    assert_eq!(branch["reason"], "latest change");
    // Nothing echoes back: the next run has nothing to do.
    let again = s.run("foobar");
    assert_eq!(run_count(&again, "inserted") + run_count(&again, "deleted"), 0, "{again}");
    let status = s.ibex.sh("status").ok().stdout;
    assert!(status.contains("foobar") && status.contains("Good"), "{status}");
    let detail = s.ibex.sh("status foobar --json").ok().json();
    assert_eq!(detail["status"]["state"], "Good");
}

#[test]
fn one_way_inserts_updates_deletes_and_key_changes() {
    one_way("trigger");
}

/// The same with the source's changes read from a logical replication slot.
#[test]
fn one_way_inserts_updates_deletes_and_key_changes_with_wal_capture() {
    one_way("wal");
}

fn one_way(capture: &str) {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql(
        "src",
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
         CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
         INSERT INTO items SELECT i, 'item ' || i, i FROM generate_series(1, 50) i;",
    );
    s.dbs_from("src", &["src", "r1", "r2", "r3"]);
    s.ibex.run(&["update", "db", "src", &format!("capture={capture}")]).ok();
    s.ibex.sh("add table items pairs db=src herd=h").ok();
    s.ibex.sh("add sync push herd=h dbs=src:source,r1:target,r2:target,r3:target").ok();
    // Capture lives only where changes are read.
    assert_eq!(s.sql("r1", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ibex%'"), "0");
    let row_triggers = s.sql("src", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ibex_capture_insert'");
    assert_eq!(row_triggers, if capture == "wal" { "0" } else { "2" });
    s.sql(
        "src",
        "INSERT INTO items SELECT i, 'new ' || i, 0 FROM generate_series(51, 150) i;
         UPDATE items SET qty = qty * 10 WHERE id % 3 = 0;
         DELETE FROM items WHERE id % 7 = 0;
         UPDATE items SET id = id + 1000 WHERE id < 5;
         INSERT INTO pairs VALUES (1, 'a', 'x'), (1, 'b', 'y'), (2, 'a', 'z');
         UPDATE pairs SET b = 'c' WHERE a = 1 AND b = 'b';",
    );
    let run = s.run("push");
    assert_eq!(run["run"]["state"], "good");
    s.assert_same(&["src", "r1", "r2", "r3"], &["items", "pairs"]);
    assert_eq!(s.sql("r2", "SELECT count(*) FROM items WHERE id < 5"), "0");
    assert_eq!(s.sql("r2", "SELECT count(*) FROM items WHERE id > 1000"), "4");
    assert_eq!(s.sql("r3", "SELECT string_agg(b, ',' ORDER BY b) FROM pairs WHERE a = 1"), "a,c");
    // Targets never capture what ibex writes, so nothing flows back.
    let again = s.run("push");
    assert_eq!(run_count(&again, "inserted"), 0);
    // A change made on a target is not replicated (it is not a source).
    s.sql("r1", "UPDATE items SET name = 'local' WHERE id = 10");
    s.sql("src", "UPDATE items SET qty = -1 WHERE id = 11");
    s.run("push");
    assert_eq!(s.sql("src", "SELECT name FROM items WHERE id = 10"), "item 10");
    assert_eq!(s.sql("r2", "SELECT qty FROM items WHERE id = 11"), "-1");
}

/// Two or three masters editing the same keys, one strategy per sync.
struct Masters {
    s: Setup,
    dbs: Vec<&'static str>,
}

impl Masters {
    fn new(dbs: &[&'static str], strategy: &str) -> Masters {
        let s = Setup::new();
        s.cluster.create_db(dbs[0]).unwrap();
        s.sql(
            dbs[0],
            "CREATE TABLE acct (id int PRIMARY KEY, val text);
             CREATE TABLE other (id int PRIMARY KEY, val text);
             INSERT INTO acct SELECT i, 'v' || i FROM generate_series(1, 20) i;
             INSERT INTO other SELECT i, 'o' || i FROM generate_series(1, 20) i;",
        );
        s.dbs_from(dbs[0], dbs);
        s.ibex.run(&["add", "table", "acct", "other", &format!("db={}", dbs[0]), "herd=h"]).ok();
        let members: Vec<String> = dbs.iter().map(|d| format!("{d}:source")).collect();
        s.ibex
            .run(&[
                "add",
                "sync",
                "mm",
                "herd=h",
                &format!("dbs={}", members.join(",")),
                &format!("conflict_strategy={strategy}"),
            ])
            .ok();
        Masters { s, dbs: dbs.to_vec() }
    }

    fn set(&self, db: &str, id: i32, val: &str) {
        self.s.sql(db, &format!("UPDATE acct SET val = '{val}' WHERE id = {id}"));
    }

    fn val(&self, db: &str, id: i32) -> String {
        self.s.sql(db, &format!("SELECT coalesce(val, 'NULL') FROM acct WHERE id = {id}"))
    }

    fn same(&self) {
        self.s.assert_same(&self.dbs, &["acct", "other"]);
    }
}

#[test]
fn latest_wins_per_key_and_deletes_conflict_too() {
    let m = Masters::new(&["m1", "m2", "m3"], "latest");
    m.set("m1", 1, "first");
    m.set("m2", 1, "second");
    m.set("m3", 1, "third");
    m.set("m3", 2, "early");
    m.set("m1", 2, "late");
    // Update then delete: the delete is newer and wins.
    m.set("m2", 3, "updated");
    m.s.sql("m1", "DELETE FROM acct WHERE id = 3");
    // Delete then update: the update is newer and wins.
    m.s.sql("m3", "DELETE FROM acct WHERE id = 4");
    m.set("m2", 4, "revived");
    // A key changed on one master only is no conflict.
    m.set("m2", 5, "solo");
    let run = m.s.run("mm");
    assert_eq!(run_count(&run, "conflicts"), 4, "{run}");
    m.same();
    assert_eq!(m.val("m1", 1), "third");
    assert_eq!(m.val("m2", 2), "late");
    assert_eq!(m.s.sql("m3", "SELECT count(*) FROM acct WHERE id = 3"), "0");
    assert_eq!(m.val("m1", 4), "revived");
    assert_eq!(m.val("m3", 5), "solo");
    // Every conflict is on record with the winner.
    let winners = m.s.sql(
        "ibex",
        "SELECT string_agg(key || '=' || winner || ':' || array_to_string(dbs, '+'), ' ' ORDER BY key) FROM ibex.conflict",
    );
    assert_eq!(winners, "1=m3:m1+m2+m3 2=m1:m1+m3 3=m1:m1+m2 4=m2:m2+m3");
}

#[test]
fn ordered_list_strategy_prefers_the_first_listed_db() {
    let m = Masters::new(&["p1", "p2"], "p2,p1");
    m.set("p2", 1, "from p2");
    m.set("p1", 1, "from p1, later");
    m.s.run("mm");
    m.same();
    assert_eq!(m.val("p1", 1), "from p2");
    m.s.ibex.sh("update sync mm conflict_strategy=p1,p2").ok();
    m.set("p2", 2, "from p2");
    m.set("p1", 2, "from p1");
    m.s.run("mm");
    assert_eq!(m.val("p2", 2), "from p1");
    m.same();
}

#[test]
fn abort_strategy_applies_nothing_and_keeps_the_changes() {
    let m = Masters::new(&["a1", "a2"], "abort");
    m.set("a1", 7, "a1 says");
    m.set("a2", 7, "a2 says");
    m.set("a1", 8, "no conflict");
    let err = m.s.run_fails("mm", "conflict_strategy=abort");
    assert!(err.contains("acct") && err.contains("7 (a1, a2)"), "{err}");
    assert_eq!(m.val("a2", 8), "v8", "nothing may be applied");
    assert_eq!(m.val("a1", 7), "a1 says");
    // The changes wait: with another strategy the next run settles them.
    m.s.ibex.sh("update sync mm conflict_strategy=latest").ok();
    m.s.run("mm");
    m.same();
    assert_eq!(m.val("a1", 7), "a2 says");
    assert_eq!(m.val("a2", 8), "no conflict");
}

#[test]
fn skip_strategy_leaves_conflicts_and_reports_them() {
    let m = Masters::new(&["k1", "k2"], "skip");
    m.set("k1", 3, "k1 value");
    m.set("k2", 3, "k2 value");
    m.set("k2", 4, "applied");
    let run = m.s.run("mm");
    assert_eq!(run_count(&run, "conflicts"), 1);
    assert_eq!(m.val("k1", 3), "k1 value");
    assert_eq!(m.val("k2", 3), "k2 value");
    assert_eq!(m.val("k1", 4), "applied");
    let conflict = &run["conflicts"][0];
    assert!(conflict["winner"].is_null(), "{conflict}");
    assert!(conflict["reason"].as_str().unwrap().contains("skip"));
}

#[test]
fn random_strategy_converges_on_one_version() {
    let m = Masters::new(&["r1", "r2"], "random");
    for id in 1..=10 {
        m.set("r1", id, "r1");
        m.set("r2", id, "r2");
    }
    let run = m.s.run("mm");
    assert_eq!(run_count(&run, "conflicts"), 10);
    m.same();
}

#[test]
fn latest_all_tables_gives_every_conflict_to_the_newest_source() {
    let m = Masters::new(&["l1", "l2"], "latest_all_tables");
    m.set("l2", 1, "l2, earlier");
    m.set("l1", 1, "l1, later");
    // l2's newest change is in another table and newest of all.
    m.s.sql("l2", "UPDATE other SET val = 'newest' WHERE id = 9");
    m.s.run("mm");
    m.same();
    assert_eq!(m.val("l1", 1), "l2, earlier");
}

#[test]
fn merge_in_small_chunks_keeps_every_key() {
    let m = Masters::new(&["c1", "c2"], "latest");
    m.s.ibex.sh("set chunk_keys=7").ok();
    m.s.sql("c1", "INSERT INTO acct SELECT i, 'c1 ' || i FROM generate_series(100, 400) i");
    m.s.sql("c2", "INSERT INTO acct SELECT i, 'c2 ' || i FROM generate_series(300, 600) i");
    m.s.sql("c1", "UPDATE acct SET val = 'c1 later' WHERE id BETWEEN 350 AND 360");
    let run = m.s.run("mm");
    assert_eq!(run_count(&run, "conflicts"), 101, "{run}");
    m.same();
    assert_eq!(m.s.sql("c2", "SELECT count(*) FROM acct"), "521");
    assert_eq!(m.val("c2", 355), "c1 later");
    assert_eq!(m.val("c1", 320), "c2 320");
}

/// Three winners of 1.5 MB of rows each, past a 1 MiB merge_memory_mib:
/// their rows go through temporary files, every db gets every row, and
/// no file is left in TMPDIR.
#[test]
fn a_merge_past_its_memory_limit_spools_to_files_and_keeps_every_row() {
    let m = Masters::new(&["w1", "w2", "w3"], "latest");
    m.s.ibex.sh("set merge_memory_mib=1").ok();
    for (n, db) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let first = 1000 + 150 * n;
        m.s.sql(
            db,
            &format!(
                "INSERT INTO acct SELECT i, '{db} ' || repeat(md5(i::text), 300) FROM generate_series({first}, {}) i",
                first + 149
            ),
        );
    }
    m.set("w1", 1, "conflict, earlier");
    m.set("w3", 1, "conflict, later");
    let tmp = tempfile::tempdir().expect("a TMPDIR for the run");
    let out =
        m.s.ibex
            .command(&["sync", "run", "mm"])
            .env("IBEX_LOG", "ibex=debug")
            .env("TMPDIR", tmp.path())
            .output()
            .expect("running the sync");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        log.matches("the rest went to a temporary file").count(),
        3,
        "each winner spools past its share:\n{log}"
    );
    m.same();
    for db in ["w1", "w2", "w3"] {
        assert_eq!(m.s.sql(db, "SELECT count(*) FROM acct WHERE id >= 1000"), "450", "{db}");
        assert_eq!(m.s.sql(db, "SELECT count(*) FROM acct WHERE id >= 1000 AND val LIKE 'w2 %'"), "150", "{db}");
    }
    assert_eq!(m.val("w2", 1), "conflict, later");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("reading TMPDIR").collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[test]
fn every_type_and_odd_name_round_trips() {
    every_type("trigger");
}

#[test]
fn every_type_and_odd_name_round_trips_with_wal_capture() {
    every_type("wal");
}

fn every_type(capture: &str) {
    let s = Setup::new();
    s.cluster.create_db("tsrc").unwrap();
    s.sql(
        "tsrc",
        r#"
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE SCHEMA "Odd Schema";
        CREATE TABLE "Odd Schema"."Weird ""Table""; x" (
            "Id" int,
            "kéy 2" text,
            i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8,
            "Text; DROP" text, b bytea, j json, jb jsonb, arr int[], tarr text[], u uuid,
            d date, tm time, ts timestamp, tstz timestamptz, iv interval, m mood, dom posint,
            gen int GENERATED ALWAYS AS (i2 * 2) STORED,
            ident bigint GENERATED ALWAYS AS IDENTITY,
            PRIMARY KEY ("Id", "kéy 2"));
        CREATE TABLE enum_arrays (id uuid PRIMARY KEY, moods mood[], m mood);
        CREATE TABLE parent (id int PRIMARY KEY, name text);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, note text);
        "#,
    );
    s.dbs_from("tsrc", &["tsrc", "tdst"]);
    for db in ["tsrc", "tdst"] {
        s.ibex.run(&["update", "db", db, &format!("capture={capture}")]).ok();
    }
    s.ibex
        .run(&[
            "add",
            "table",
            "Odd Schema.Weird \"Table\"; x",
            "enum_arrays",
            "child",
            "parent",
            "db=tsrc",
            "herd=types",
        ])
        .ok();
    s.ibex.sh("add sync types herd=types dbs=tsrc:source,tdst:source").ok();
    let weird = r#""Odd Schema"."Weird ""Table""; x""#;
    let cols =
        r#""Id", "kéy 2", i2, i4, i8, num, f4, f8, "Text; DROP", b, j, jb, arr, tarr, u, d, tm, ts, tstz, iv, m, dom"#;
    s.sql(
        "tsrc",
        &format!(
            r#"
        INSERT INTO {weird} ({cols}) VALUES
          (1, 'ünïcødé ☃', -32768, 2147483647, -9223372036854775808, 123456789012345678901234567890.123456789012345678901234567890,
           'NaN', '-Infinity', E'quote '' dq " back\\slash tab\t nl\n end', '\x00ff10', '{{"a": [1, 2.50, null]}}', '{{"b": {{"c": true}}}}',
           ARRAY[1, NULL, 3], ARRAY['x', NULL, 'y,z', '"q"'], 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '2024-02-29', '23:59:59.999999', '1999-12-31 23:59:59.5', '2020-01-01 00:00:00+05:30', '1 year 2 mons -3 days 04:05:06.7',
           'happy', 42),
          (2, '', NULL, NULL, NULL, 'NaN', '-0', 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (3, 'big', 1, 1, 1, 0.1, 1.5, 2.5, repeat('long text ', 200000), (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 50000) i)::bytea,
           NULL, NULL, ARRAY[[1, 2], [3, 4]], NULL, NULL, 'infinity', '00:00', '-infinity', 'infinity', '0', 'sad', 1);
        INSERT INTO enum_arrays VALUES ('00000000-0000-0000-0000-000000000001', ARRAY['sad', 'happy']::mood[], 'ok'),
                                       ('00000000-0000-0000-0000-000000000002', NULL, NULL);
        INSERT INTO parent VALUES (1, 'p1'), (2, 'p2');
        INSERT INTO child VALUES (10, 1, 'c10'), (20, 2, 'c20');
        "#
        ),
    );
    let run = s.run("types");
    assert_eq!(run["run"]["state"], "good", "{run}");
    let tables = [weird, "enum_arrays", "parent", "child"];
    s.assert_same(&["tsrc", "tdst"], &tables);
    // Generated columns are computed on the target; identity values are copied.
    assert_eq!(s.sql("tdst", &format!("SELECT gen, ident FROM {weird} WHERE \"Id\" = 1")), "-65536|1");
    assert_eq!(s.sql("tdst", &format!("SELECT octet_length(b) FROM {weird} WHERE \"Id\" = 3")), "1600000");
    // And the other way, with updates, key changes and deletes.
    s.sql(
        "tdst",
        &format!(
            r#"UPDATE {weird} SET "Text; DROP" = E'edited\r\n', f4 = 'Infinity' WHERE "Id" = 1;
               UPDATE {weird} SET "kéy 2" = 'moved' WHERE "Id" = 2;
               UPDATE enum_arrays SET moods = ARRAY['ok']::mood[] WHERE m = 'ok';
               DELETE FROM child WHERE id = 20; DELETE FROM parent WHERE id = 2;
               INSERT INTO parent VALUES (3, 'p3'); INSERT INTO child VALUES (30, 3, 'c30');"#
        ),
    );
    s.run("types");
    s.assert_same(&["tsrc", "tdst"], &tables);
    assert_eq!(s.sql("tsrc", &format!("SELECT count(*) FROM {weird} WHERE \"kéy 2\" = 'moved'")), "1");
    assert_eq!(s.sql("tsrc", "SELECT string_agg(id::text, ',' ORDER BY id) FROM child"), "10,30");
}

#[test]
fn writes_during_back_to_back_cycles_converge() {
    let s = Setup::new();
    s.cluster.create_pgbench_db("w1", 1).unwrap();
    s.dbs_from("w1", &["w1", "w2", "w3"]);
    s.ibex.sh("add all tables db=w1 herd=h").ok();
    s.ibex.sh("add sync busy herd=h dbs=w1:source,w2:source,w3:target autokick=false").ok();
    let port = s.cluster.port();
    // Two masters under pgbench: the one-row pgbench_branches is hot on both.
    let loads: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|db| {
            thread::spawn(move || {
                let out = std::process::Command::new("pgbench")
                    .args([
                        "-n",
                        "-T",
                        "8",
                        "-c",
                        "2",
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "-p",
                        &port.to_string(),
                        db,
                    ])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            })
        })
        .collect();
    let mut runs = 0;
    let mut retried = 0;
    while !loads.iter().all(|l| l.is_finished()) {
        let run = s.run("busy");
        assert_eq!(run["run"]["state"], "good", "a run under load failed: {run}");
        runs += 1;
        if run["run"]["attempts"].as_i64().unwrap_or(1) > 1 {
            retried += 1;
        }
    }
    for load in loads {
        load.join().unwrap();
    }
    let last = s.run("busy");
    assert_eq!(last["run"]["state"], "good");
    s.assert_same(&["w1", "w2", "w3"], PGBENCH_TABLES);
    eprintln!("{runs} runs under load, {retried} needed a retry");
    assert!(runs >= 3, "only {runs} runs happened under load");
}

#[test]
fn a_crash_after_commit_reapplies_without_loss_or_doubling() {
    let s = Setup::new();
    s.cluster.create_db("f1").unwrap();
    s.sql(
        "f1",
        "CREATE TABLE counter (id int PRIMARY KEY, n int); INSERT INTO counter VALUES (1, 0);
         CREATE TABLE log (id int PRIMARY KEY, note text);",
    );
    s.dbs_from("f1", &["f1", "f2"]);
    s.ibex.sh("add table counter log db=f1 herd=h").ok();
    s.ibex.sh("add sync crashy herd=h dbs=f1:source,f2:source").ok();
    s.sql("f1", "UPDATE counter SET n = n + 1; INSERT INTO log SELECT i, 'f1' FROM generate_series(1, 100) i");
    s.sql("f2", "INSERT INTO log SELECT i, 'f2' FROM generate_series(101, 150) i");
    let mut cmd = s.ibex.command(&["sync", "run", "crashy"]);
    cmd.env("IBEX_FAILPOINTS", "after_commit");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failpoint after_commit"));
    // The data was committed, the cursors were not advanced.
    assert_eq!(s.sql("f2", "SELECT n FROM counter"), "1");
    assert_eq!(s.ibex.sh("status crashy --json").ok().json()["status"]["state"], "Bad");
    let again = s.run("crashy");
    assert_eq!(run_count(&again, "inserted"), 151, "the same changes are applied again: {again}");
    s.assert_same(&["f1", "f2"], &["counter", "log"]);
    assert_eq!(s.sql("f1", "SELECT n FROM counter"), "1");
    assert_eq!(s.sql("f2", "SELECT count(*) FROM log"), "150");
    let quiet = s.run("crashy");
    assert_eq!(run_count(&quiet, "inserted"), 0);
}

#[test]
fn onetimecopy_fullcopy_truncate_and_sequences() {
    let s = Setup::new();
    s.cluster.create_pgbench_db("o1", 1).unwrap();
    s.sql("o1", "CREATE SEQUENCE ticket_seq; SELECT setval('ticket_seq', 500)");
    for db in ["empty", "stale", "fc"] {
        s.cluster.create_db(db).unwrap();
        s.sql(
            db,
            "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
             CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
             CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
             CREATE SEQUENCE ticket_seq;",
        );
        s.add_db(db, db).ok();
    }
    s.add_db("o1", "o1").ok();
    s.sql("stale", "INSERT INTO pgbench_branches VALUES (1, -999, 'stale'), (77, 0, 'extra')");
    s.ibex.sh("add all tables db=o1 herd=h").ok();
    s.ibex.sh("add sequence ticket_seq db=o1 herd=h").ok();
    s.ibex.sh("add sync otc herd=h dbs=o1:source,empty:target,stale:target onetimecopy=2").ok();
    let run = s.run("otc");
    assert_eq!(run["run"]["state"], "good", "{run}");
    // 2: only empty tables got a full copy.
    s.assert_same(&["o1", "empty"], PGBENCH_TABLES);
    s.assert_same(&["o1", "stale"], &["pgbench_accounts", "pgbench_tellers"]);
    assert_eq!(s.sql("stale", "SELECT bbalance FROM pgbench_branches WHERE bid = 1"), "-999");
    assert_eq!(s.ibex.sh("list syncs --json").ok().json()[0]["onetimecopy"], 0, "onetimecopy resets after the copy");
    // The sequence went up to the source's value everywhere.
    assert_eq!(s.sql("empty", "SELECT nextval('ticket_seq')"), "501");
    // 1: every target is copied whole.
    s.ibex.sh("update sync otc onetimecopy=1").ok();
    s.run("otc");
    s.assert_same(&["o1", "empty", "stale"], PGBENCH_TABLES);
    // A TRUNCATE on the source is replayed: the table is copied whole.
    s.sql("o1", "TRUNCATE pgbench_tellers; INSERT INTO pgbench_tellers VALUES (1, 1, 5, ''), (2, 1, 6, '')");
    s.run("otc");
    s.assert_same(&["o1", "empty", "stale"], PGBENCH_TABLES);
    assert_eq!(s.sql("stale", "SELECT count(*) FROM pgbench_tellers"), "2");
    // A fullcopy db is emptied and copied whole on every run.
    s.sql("fc", "INSERT INTO pgbench_branches VALUES (5, 5, 'junk')");
    s.ibex.sh("add sync full herd=h dbs=o1:source,fc:fullcopy").ok();
    s.run("full");
    s.assert_same(&["o1", "fc"], PGBENCH_TABLES);
    s.sql("o1", "UPDATE pgbench_accounts SET abalance = 1 WHERE aid <= 10");
    s.sql("fc", "DELETE FROM pgbench_accounts WHERE aid > 99990");
    let run = s.run("full");
    assert_eq!(run_count(&run, "inserted"), 100_000 + 1 + 2, "{run}");
    s.assert_same(&["o1", "fc"], PGBENCH_TABLES);
}

#[test]
fn validate_lists_differences_and_remove_cleans_up() {
    let s = Setup::new();
    s.cluster.create_db("v1").unwrap();
    s.sql(
        "v1",
        "CREATE TABLE a (id int PRIMARY KEY, x int, y text); CREATE TABLE b (id int PRIMARY KEY, z int);
         CREATE TABLE c (id int PRIMARY KEY);",
    );
    s.cluster.create_db("v2").unwrap();
    s.sql("v2", "CREATE TABLE a (id int PRIMARY KEY, x bigint, extra int); CREATE TABLE c (id int PRIMARY KEY);");
    s.add_db("v1", "v1").ok();
    s.add_db("v2", "v2").ok();
    s.ibex.sh("add table a b c db=v1 herd=h").ok();
    let before = s.snapshot();
    let err = s.ibex.sh("add sync vs herd=h dbs=v1:source,v2:source").fails_with("sync vs cannot run").stderr;
    for needle in [
        "column public.a.x is bigint on db v2 but integer on db v1",
        "table public.a on db v2 lacks column y (text)",
        "table public.a on db v2 has column extra (integer) that db v1 lacks",
        "table public.b is missing on db v2",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert_eq!(before, s.snapshot(), "a refused sync leaves the catalog as it was");
    assert_eq!(s.sql("v1", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ibex%'"), "0");
    // Fix the schema; now the sync is added and capture installed on both.
    s.sql("v2", "ALTER TABLE a ALTER x TYPE int, DROP extra, ADD y text; CREATE TABLE b (id int PRIMARY KEY, z int);");
    s.ibex.sh("add sync vs herd=h dbs=v1:source,v2:source").ok();
    assert_eq!(s.sql("v2", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ibex%'"), "15");
    // validate repairs a dropped trigger.
    s.sql("v1", "DROP TRIGGER ibex_capture_update ON a");
    let out = s.ibex.sh("validate vs").ok();
    assert!(out.stdout.contains("db v1: repaired capture on public.a"), "{}", out.stdout);
    assert_eq!(s.sql("v1", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ibex%'"), "15");
    // validate replaces the capture functions an earlier ibex wrote (here
    // one that captures nothing, marked as the same triggers with other
    // functions), without locking the table: a writer holding it open does
    // not stop it (a lock wait would time out).
    let function = s.sql(
        "v2",
        "SELECT tgfoid::regproc FROM pg_trigger WHERE tgname = 'ibex_capture_insert' AND tgrelid = 'b'::regclass",
    );
    let mark = s.sql("v2", &format!("SELECT obj_description('{function}'::regproc, 'pg_proc')"));
    let (_, triggers) = mark.split_once(" triggers ").expect("a capture mark naming its triggers");
    s.sql(
        "v2",
        &format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
             COMMENT ON FUNCTION {function}() IS 'ibex capture functions 0000000000000000 triggers {triggers}';
             ALTER DATABASE v2 SET lock_timeout = '3s'"
        ),
    );
    let writer = s.cluster.hold("v2", "INSERT INTO b VALUES (999, 0)").unwrap();
    let out = s.ibex.sh("validate vs").ok();
    assert!(out.stdout.contains("db v2: repaired capture on public.b"), "{}", out.stdout);
    writer.release().unwrap();
    s.sql("v2", "ALTER DATABASE v2 RESET lock_timeout");
    assert_eq!(s.sql("v2", &format!("SELECT obj_description('{function}'::regproc, 'pg_proc')")), mark);
    let out = s.ibex.sh("validate vs").ok();
    assert!(!out.stdout.contains("repaired"), "a second validate repaired again: {}", out.stdout);
    s.sql("v2", "INSERT INTO b VALUES (5, 5)");
    s.run("vs");
    assert_eq!(s.sql("v1", "SELECT z FROM b WHERE id = 5"), "5");
    // Unmarked (as an ibex before marks left it), triggers and functions
    // are both installed again.
    s.sql("v2", &format!("COMMENT ON FUNCTION {function}() IS NULL"));
    let out = s.ibex.sh("validate vs").ok();
    assert!(out.stdout.contains("db v2: repaired capture on public.b"), "{}", out.stdout);
    assert_eq!(s.sql("v2", &format!("SELECT obj_description('{function}'::regproc, 'pg_proc')")), mark);
    assert_eq!(s.sql("v2", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ibex%'"), "15");
    // Removing a table takes its triggers and delta table away, only its.
    s.ibex.sh("remove table c").ok();
    assert_eq!(s.sql("v2", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ibex%'"), "10");
    assert_eq!(s.sql("v2", "SELECT count(*) FROM ibex.captured"), "2");
    // Removing the sync removes the rest; the user's tables are untouched.
    s.ibex.sh("remove sync vs").ok();
    for db in ["v1", "v2"] {
        assert_eq!(s.sql(db, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ibex%'"), "0");
        assert_eq!(
            s.sql(db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'ibex' AND tablename LIKE 'delta%'"),
            "0"
        );
        assert_eq!(s.sql(db, "SELECT count(*) FROM ibex.cursor"), "0");
    }
}

#[test]
fn hostile_identifiers_replicate_and_inject_nothing() {
    let s = Setup::new();
    s.cluster.create_db("h1").unwrap();
    s.sql(
        "h1",
        r#"CREATE TABLE y (id int PRIMARY KEY);
           CREATE TABLE "x""; DROP TABLE y; --" ("id""; DROP TABLE y; --" int PRIMARY KEY, "v'); DROP TABLE y; --" text);
           INSERT INTO "x""; DROP TABLE y; --" VALUES (1, $$'); DROP TABLE y; --$$);"#,
    );
    s.dbs_from("h1", &["h1", "h2"]);
    s.ibex.run(&["add", "table", "x\"; DROP TABLE y; --", "y", "db=h1", "herd=h"]).ok();
    s.ibex.sh("add sync hs herd=h dbs=h1:source,h2:source").ok();
    s.sql("h1", r#"INSERT INTO "x""; DROP TABLE y; --" VALUES (2, 'two')"#);
    s.sql(
        "h2",
        r#"UPDATE "x""; DROP TABLE y; --" SET "id""; DROP TABLE y; --" = 10 WHERE "id""; DROP TABLE y; --" = 1"#,
    );
    s.run("hs");
    s.assert_same(&["h1", "h2"], &[r#""x""; DROP TABLE y; --""#, "y"]);
    for db in ["h1", "h2"] {
        assert_eq!(s.sql(db, "SELECT to_regclass('y') IS NOT NULL"), "t", "table y survived on {db}");
    }
    assert_eq!(
        s.sql(
            "h1",
            r#"SELECT string_agg("id""; DROP TABLE y; --"::text, ',' ORDER BY 1) FROM "x""; DROP TABLE y; --""#
        ),
        "2,10"
    );
    assert!(s.ibex.run(&["compare", "hs"]).success());
}

/// An `=` and `<>` that someone put in `public` for a key type that is not
/// PostgreSQL's own match it exactly and would win over the type's real
/// ones under any search_path that holds `public` (the writers', and
/// ibex's own before it left `public` out): an enum's and a domain's (in
/// pg_catalog) and an extension type's (citext in schema `ext`). So would
/// an `=` for a domain over citext made in citext's own schema, in
/// `OPERATOR(ext.=)`, unless both sides are cast to citext first. Each
/// raises "hijacked" on both dbs for the whole test, as do exact-typed
/// look-alikes of `cardinality` and `enum_send`. Key changes, also one
/// that changes only a value's bytes, replicate one way (the single-source
/// path) and then both ways with conflicts (the merge path).
#[test]
fn an_operator_in_public_reaches_neither_capture_nor_ibex() {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    let mut schema = String::from(
        "CREATE SCHEMA ext;
         CREATE EXTENSION citext SCHEMA ext;
         CREATE TYPE mood AS ENUM ('calm', 'glad', 'sad');
         CREATE TABLE m (k mood PRIMARY KEY, v text);
         INSERT INTO m VALUES ('calm', 'a'), ('glad', 'b');
         CREATE DOMAIN amount AS numeric;
         CREATE TABLE n (k amount PRIMARY KEY, v text);
         INSERT INTO n VALUES (1.0, 'a'), (2, 'b');
         CREATE TABLE c (k ext.citext PRIMARY KEY, v text);
         INSERT INTO c VALUES ('Ab', 'a'), ('cd', 'b');
         CREATE DOMAIN cikey AS ext.citext;
         CREATE TABLE d (k cikey PRIMARY KEY, v text);
         INSERT INTO d VALUES ('Ab', 'a'), ('cd', 'b');
         CREATE ROLE app;
         GRANT USAGE ON SCHEMA ext TO app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON m, n, c, d TO app;",
    );
    // Whoever may create in the extension's schema (`public`, where citext
    // usually is) adds an `=` for a domain over its type there: exact, it
    // would win over citext's own in `OPERATOR(ext.=)`.
    schema.push_str(
        "CREATE FUNCTION public.trap(cikey, cikey) RETURNS bool LANGUAGE plpgsql AS
             $f$ BEGIN RAISE EXCEPTION 'hijacked'; END $f$;
         CREATE OPERATOR ext.= (LEFTARG = cikey, RIGHTARG = cikey, FUNCTION = public.trap);",
    );
    for ty in ["mood", "amount", "ext.citext"] {
        schema.push_str(&format!(
            "CREATE FUNCTION public.trap({ty}, {ty}) RETURNS bool LANGUAGE plpgsql AS
                 $f$ BEGIN RAISE EXCEPTION 'hijacked'; END $f$;
             CREATE OPERATOR public.= (LEFTARG = {ty}, RIGHTARG = {ty}, FUNCTION = public.trap);
             CREATE OPERATOR public.<> (LEFTARG = {ty}, RIGHTARG = {ty}, FUNCTION = public.trap);"
        ));
    }
    // Exact-typed look-alikes of polymorphic functions ibex calls on keys
    // and their delta arrays (the domain's are kept as text).
    for array in ["mood[]", "text[]", "ext.citext[]"] {
        schema.push_str(&format!(
            "CREATE FUNCTION public.cardinality({array}) RETURNS int LANGUAGE plpgsql AS
                 $f$ BEGIN RAISE EXCEPTION 'hijacked'; END $f$;"
        ));
    }
    schema.push_str(
        "CREATE FUNCTION public.enum_send(mood) RETURNS bytea LANGUAGE plpgsql AS
             $f$ BEGIN RAISE EXCEPTION 'hijacked'; END $f$;",
    );
    s.sql("src", &schema);
    s.dbs_from("src", &["src", "dst"]);
    // The trap springs for what binds it.
    for lure in [
        "SELECT 'calm'::mood = 'glad'::mood",
        "SELECT 1::amount <> 2::amount",
        "SELECT 'a'::ext.citext = 'A'",
        "SELECT 'a'::cikey OPERATOR(ext.=) 'A'::cikey",
        "SELECT cardinality(ARRAY['calm'::mood])",
        "SELECT enum_send('calm'::mood)",
    ] {
        let err = s.cluster.psql("dst", lure).expect_err(lure);
        assert!(format!("{err:#}").contains("hijacked"), "{lure}: {err:#}");
    }
    s.ibex.sh("add table m n c d db=src herd=h").ok();
    s.ibex.sh("add sync hs herd=h dbs=src:source,dst:source conflict_strategy=latest").ok();
    // The writers' own WHEREs name no key: that `=` would be theirs.
    let as_app = |db: &str, sql: &str| {
        let wrote = s.cluster.psql(db, &format!("SET ROLE app; {sql}"));
        assert!(wrote.is_ok(), "writes on {db} under an operator in public: {wrote:?}");
    };
    as_app(
        "src",
        "UPDATE m SET k = 'sad' WHERE v = 'a';
         UPDATE m SET v = 'kept' WHERE v = 'b';
         UPDATE n SET k = 3 WHERE v = 'b';
         UPDATE n SET k = 1.00 WHERE v = 'a';
         UPDATE c SET k = 'AB' WHERE v = 'a';
         UPDATE c SET k = 'ef' WHERE v = 'b';
         UPDATE d SET k = 'AB' WHERE v = 'a';
         UPDATE d SET v = 'kept' WHERE v = 'b';",
    );
    s.run("hs");
    s.assert_same(&["src", "dst"], &["m", "n", "c", "d"]);
    assert_eq!(s.sql("dst", "SELECT string_agg(k::text || '=' || v, ',' ORDER BY k::text) FROM d"), "AB=a,cd=kept");
    assert_eq!(s.sql("dst", "SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM m"), "glad=kept,sad=a");
    assert_eq!(s.sql("dst", "SELECT string_agg(k::text || '=' || v, ',' ORDER BY k::text) FROM n"), "1.00=a,3=b");
    assert_eq!(s.sql("dst", "SELECT string_agg(k::text || '=' || v, ',' ORDER BY k::text) FROM c"), "AB=a,ef=b");
    // Both ways, the same keys changed on both dbs: the merge settles them.
    as_app("dst", "UPDATE m SET v = 'dst'; UPDATE n SET v = 'dst'; UPDATE c SET v = 'dst'; UPDATE d SET v = 'dst';");
    as_app(
        "src",
        "UPDATE m SET v = 'src'; UPDATE n SET v = 'src'; UPDATE c SET k = 'aB' WHERE v = 'a'; UPDATE c SET v = 'src';
         UPDATE d SET v = 'src';",
    );
    let run = s.run("hs");
    assert!(run["run"]["conflicts"].as_u64().unwrap_or(0) >= 8, "{run}");
    s.assert_same(&["src", "dst"], &["m", "n", "c", "d"]);
    assert_eq!(s.sql("dst", "SELECT string_agg(DISTINCT v, ',') FROM d"), "src");
    assert_eq!(s.sql("dst", "SELECT string_agg(DISTINCT v, ',') FROM m"), "src");
    assert_eq!(s.sql("dst", "SELECT string_agg(k::text || '=' || v, ',' ORDER BY k::text) FROM c"), "aB=src,ef=src");
}

/// Capture functions run as their owner with the writer's search_path. A
/// writer whose path puts its own schema before pg_catalog, holding
/// look-alikes of what capture calls (functions, aggregates, operators
/// and a type named `text`, each raising "hijacked"), reaches none of
/// them, and its writes are captured whole: few keys and many, a key
/// change, old images, a makedelta table, the kick.
#[test]
fn a_writer_s_search_path_cannot_reach_into_capture() {
    writer_s_search_path("trigger");
}

/// The same with WAL capture, where the kick is the writer's trigger.
#[test]
fn a_writer_s_search_path_cannot_reach_into_capture_with_wal_capture() {
    writer_s_search_path("wal");
}

fn writer_s_search_path(capture: &str) {
    let schema = "CREATE DOMAIN code AS text;
         CREATE TABLE t (id int, tag code, v text, PRIMARY KEY (id, tag));
         INSERT INTO t SELECT i, 'c', 'v' FROM generate_series(1, 10) i;
         CREATE TABLE g (id int PRIMARY KEY, v text);";
    // t's key is partly kept as text (the aggregate writes its large
    // statements), g's of fixed size (they are sliced).
    let s = if capture == "wal" {
        Setup::one_way_wal(schema, "t g", "hs", "")
    } else {
        Setup::one_way(schema, "t g", "hs", "")
    };
    // Before any sync writes into src, makedelta has nothing to keep.
    s.ibex.sh("update table t makedelta=true").ok();
    // A sync that writes into src, whose writes src's capture keeps
    // (makedelta): the capture functions test the session's role.
    s.cluster.create_db("up").unwrap();
    s.sql("up", schema);
    s.add_db("up", "up").ok();
    s.ibex.sh("add sync feed herd=h dbs=up:source,src:target").ok();
    s.ibex.sh("update table t capture_old=true makedelta=true").ok();
    s.ibex.sh("update table g makedelta=true").ok();
    s.sql(
        "src",
        r#"CREATE ROLE app;
           GRANT SELECT, INSERT, UPDATE, DELETE ON t, g TO app;
           CREATE SCHEMA evil;
           GRANT USAGE ON SCHEMA evil TO app;
           CREATE FUNCTION evil.hijack(what pg_catalog.text) RETURNS pg_catalog.bool LANGUAGE plpgsql AS
               $f$ BEGIN RAISE EXCEPTION 'hijacked: %', what; END $f$;
           CREATE FUNCTION evil.cardinality(anyarray) RETURNS pg_catalog.int4 LANGUAGE sql AS
               $f$ SELECT 0 WHERE evil.hijack('cardinality') $f$;
           CREATE FUNCTION evil.octet_length(pg_catalog.text) RETURNS pg_catalog.int4 LANGUAGE sql AS
               $f$ SELECT 0 WHERE evil.hijack('octet_length') $f$;
           CREATE FUNCTION evil.current_setting(pg_catalog.text) RETURNS pg_catalog.text LANGUAGE sql AS
               $f$ SELECT '' WHERE evil.hijack('current_setting') $f$;
           CREATE FUNCTION evil.current_setting(pg_catalog.text, pg_catalog.bool) RETURNS pg_catalog.text LANGUAGE sql AS
               $f$ SELECT '' WHERE evil.hijack('current_setting') $f$;
           CREATE FUNCTION evil.pg_notify(pg_catalog.text, pg_catalog.text) RETURNS void LANGUAGE sql AS
               $f$ SELECT WHERE evil.hijack('pg_notify') $f$;
           CREATE FUNCTION evil.generate_series(pg_catalog.int4, pg_catalog.int4, pg_catalog.int4)
               RETURNS SETOF pg_catalog.int4 LANGUAGE sql AS $f$ SELECT 0 WHERE evil.hijack('generate_series') $f$;
           CREATE FUNCTION evil.plus(pg_catalog.int4, pg_catalog.int4) RETURNS pg_catalog.int4 LANGUAGE sql AS
               $f$ SELECT 0 WHERE evil.hijack('an operator') $f$;
           CREATE FUNCTION evil.step(anyarray, anyelement) RETURNS anyarray LANGUAGE sql AS
               $f$ SELECT $1 WHERE evil.hijack('an aggregate') $f$;
           CREATE FUNCTION evil.sum_step(pg_catalog.int8, pg_catalog.int4) RETURNS pg_catalog.int8 LANGUAGE sql AS
               $f$ SELECT $1 WHERE evil.hijack('sum') $f$;
           CREATE AGGREGATE evil.array_agg(pg_catalog.int4) (SFUNC = evil.step, STYPE = pg_catalog.int4[]);
           CREATE AGGREGATE evil.array_agg(pg_catalog.text) (SFUNC = evil.step, STYPE = pg_catalog.text[]);
           CREATE AGGREGATE evil.sum(pg_catalog.int4) (SFUNC = evil.sum_step, STYPE = pg_catalog.int8);
           CREATE FUNCTION evil.test(pg_catalog.text, pg_catalog.text) RETURNS pg_catalog.bool LANGUAGE sql AS
               $f$ SELECT evil.hijack('an operator') $f$;
           CREATE FUNCTION evil.test(pg_catalog.int4, pg_catalog.int4) RETURNS pg_catalog.bool LANGUAGE sql AS
               $f$ SELECT evil.hijack('an operator') $f$;
           CREATE FUNCTION evil.math(pg_catalog.int8, pg_catalog.int4) RETURNS pg_catalog.int8 LANGUAGE sql AS
               $f$ SELECT 0::pg_catalog.int8 WHERE evil.hijack('an operator') $f$;
           CREATE FUNCTION evil.cat(pg_catalog.text, pg_catalog.text) RETURNS pg_catalog.text LANGUAGE sql AS
               $f$ SELECT '' WHERE evil.hijack('||') $f$;
           CREATE OPERATOR evil.= (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text, FUNCTION = evil.test);
           CREATE OPERATOR evil.<> (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text, FUNCTION = evil.test);
           CREATE OPERATOR evil.>= (LEFTARG = pg_catalog.int4, RIGHTARG = pg_catalog.int4, FUNCTION = evil.test);
           CREATE OPERATOR evil.<= (LEFTARG = pg_catalog.int4, RIGHTARG = pg_catalog.int4, FUNCTION = evil.test);
           CREATE OPERATOR evil.- (LEFTARG = pg_catalog.int8, RIGHTARG = pg_catalog.int4, FUNCTION = evil.math);
           CREATE OPERATOR evil./ (LEFTARG = pg_catalog.int8, RIGHTARG = pg_catalog.int4, FUNCTION = evil.math);
           CREATE OPERATOR evil.|| (LEFTARG = pg_catalog.text, RIGHTARG = pg_catalog.text, FUNCTION = evil.cat);
           CREATE OPERATOR evil.+ (LEFTARG = pg_catalog.int4, RIGHTARG = pg_catalog.int4, FUNCTION = evil.plus);
           CREATE OPERATOR evil.- (LEFTARG = pg_catalog.int4, RIGHTARG = pg_catalog.int4, FUNCTION = evil.plus);
           CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.hijack('the type text'));"#,
    );
    let as_app =
        |sql: &str| s.cluster.psql("src", &format!("SET ROLE app; SET search_path = evil, pg_catalog, public; {sql}"));
    // The trap springs for what names no schema.
    for lure in [
        "SELECT cardinality(ARRAY[1])",
        "SELECT 'a'::text",
        "SELECT 'a' = 'b'",
        "SELECT array_agg(1)",
        "SELECT 1 + 1",
        "SELECT generate_series(1, 2, 1)",
    ] {
        let err = as_app(lure).expect_err(lure);
        assert!(format!("{err:#}").contains("hijacked"), "{lure}: {err:#}");
    }
    // Few keys and many (the chunked path), a key change, a delete.
    let wrote = as_app(
        "INSERT INTO t SELECT i, 'c', 'new' FROM generate_series(11, 1500) i;
         UPDATE t SET v = 'one' WHERE id = 2;
         UPDATE t SET v = 'all' WHERE id > 5;
         UPDATE t SET id = 5000 WHERE id = 1;
         DELETE FROM t WHERE id > 1400 AND id < 5000;
         INSERT INTO g SELECT i, 'new' FROM generate_series(1, 1500) i;
         UPDATE g SET v = 'all';
         DELETE FROM g WHERE id > 1400;",
    );
    assert!(wrote.is_ok(), "writes under the hostile search_path: {wrote:?}");
    s.run("hs");
    s.assert_same(&["src", "dst"], &["t", "g"]);
    assert_eq!(s.sql("dst", "SELECT count(*), count(*) FILTER (WHERE v = 'all') FROM t"), "1400|1395");
    assert_eq!(s.sql("dst", "SELECT count(*), count(*) FILTER (WHERE v = 'all') FROM g"), "1400|1400");
}

/// ibex's sessions keep `public` off their search_path (as PostgreSQL's
/// own replication workers do), so a user trigger that fires on ibex's
/// writes (ENABLE ALWAYS) and names a table without its schema fails
/// there, and the run with it (the error says where, and why). `ibex
/// validate` names the trigger, and an event trigger (it fires on the DDL
/// ibex runs), with the fix; once their functions have a path of their
/// own, validate is quiet and the trigger sees ibex's writes.
#[test]
fn validate_names_a_trigger_that_fires_on_ibex_s_writes_without_a_path_of_its_own() {
    let s = Setup::one_way("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", "hs", "");
    s.sql(
        "dst",
        "CREATE TABLE audit_log (id int);
         CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS
             $f$ BEGIN INSERT INTO audit_log VALUES (NEW.id); RETURN NULL; END $f$;
         CREATE TRIGGER audit AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit();
         ALTER TABLE t ENABLE ALWAYS TRIGGER audit;",
    );
    // Event triggers fire on DDL ibex runs (installing capture, ddl=addcol).
    let event_trigger = "CREATE TABLE ddl_log (tag text);
         CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
             $f$ BEGIN INSERT INTO ddl_log VALUES (tg_tag); END $f$;
         CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();";
    s.sql("dst", event_trigger);
    let fix = "ALTER FUNCTION public.audit() SET search_path = public";
    let warned = s.ibex.run(&["validate", "hs"]).ok().stderr;
    for needle in [
        "trigger audit on table public.t of db dst fires on the rows ibex writes (ENABLE ALWAYS)",
        fix,
        "event trigger log_ddl (ddl_command_end) of db dst fires on the DDL ibex runs",
        "ALTER FUNCTION public.log_ddl() SET search_path = public",
    ] {
        assert!(warned.contains(needle), "missing {needle:?} in:\n{warned}");
    }
    assert!(!warned.contains("db src"), "{warned}");
    s.sql("src", "INSERT INTO t VALUES (1, 'a')");
    let failed = s.run_fails("hs", "audit_log");
    assert!(failed.contains("raised in PL/pgSQL function public.audit()"), "{failed}");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "0");
    s.sql("dst", fix);
    s.sql("dst", "ALTER FUNCTION log_ddl() SET search_path = public");
    let quiet = s.ibex.run(&["validate", "hs"]).ok();
    assert!(!quiet.stderr.contains("trigger"), "{}", quiet.stderr);
    // On src, ibex's own DDL fails in the event trigger, saying what to do.
    s.sql("src", event_trigger);
    let refused = s.ibex.run(&["update", "table", "t", "capture_old=true"]).fails_with("ddl_log").stderr;
    assert!(refused.contains("raised in PL/pgSQL function public.log_ddl()"), "{refused}");
    assert!(refused.contains("give it a path of its own"), "{refused}");
    s.sql("src", "ALTER FUNCTION log_ddl() SET search_path = public");
    s.ibex.run(&["update", "table", "t", "capture_old=true"]).ok();
    assert_ne!(s.sql("src", "SELECT count(*) FROM ddl_log"), "0");
    s.run("hs");
    assert_eq!(s.sql("dst", "SELECT string_agg(id::text, ',') FROM audit_log"), "1");
}

/// Capture functions run as ibex's role, and a type's owner may write its
/// cast to text (`CREATE CAST`). A key kept as text (a domain over a
/// range of an enum) and old images of an enum column become text by the types' output
/// functions: the casts, which raise "hijacked", never run, whoever
/// writes, nor in ibex's own sessions (compare, a merge). Key changes and
/// old images still arrive whole.
#[test]
fn a_cast_to_text_a_type_s_owner_wrote_runs_neither_in_capture_nor_in_ibex() {
    let s = Setup::one_way(
        "CREATE TYPE mood AS ENUM ('calm', 'glad', 'sad');
         CREATE TYPE moods AS RANGE (subtype = mood);
         CREATE DOMAIN span AS moods;
         CREATE TABLE e (k span PRIMARY KEY, feel mood, v text);
         INSERT INTO e VALUES ('[calm,calm]', 'glad', 'a'), ('[glad,sad]', 'sad', 'b');
         CREATE FUNCTION public.mood_text(mood) RETURNS text LANGUAGE plpgsql AS
             $f$ BEGIN RAISE EXCEPTION 'hijacked'; END $f$;
         CREATE CAST (mood AS text) WITH FUNCTION public.mood_text(mood);
         CREATE FUNCTION public.moods_text(moods) RETURNS text LANGUAGE plpgsql AS
             $f$ BEGIN RAISE EXCEPTION 'hijacked'; END $f$;
         CREATE CAST (moods AS text) WITH FUNCTION public.moods_text(moods);
         CREATE ROLE app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON e TO app;",
        "e",
        "hs",
        "",
    );
    s.ibex.sh("update table e capture_old=true").ok();
    for lure in ["SELECT 'calm'::mood::text", "SELECT '[calm,sad]'::span::text"] {
        let err = s.cluster.psql("src", lure).expect_err(lure);
        assert!(format!("{err:#}").contains("hijacked"), "{lure}: {err:#}");
    }
    let wrote = s.cluster.psql(
        "src",
        "SET ROLE app;
         UPDATE e SET k = '[sad,sad]', feel = 'calm' WHERE v = 'a';
         UPDATE e SET v = 'kept' WHERE v = 'b';
         INSERT INTO e SELECT '[calm,calm]', NULL, 'n';
         DELETE FROM e WHERE v = 'kept';",
    );
    assert!(wrote.is_ok(), "writes under a hostile cast: {wrote:?}");
    // The old images hold the enum labels.
    let delta = s.sql("src", "SELECT delta_table FROM ibex.captured WHERE rel_name = 'e'");
    let images = s.sql(
        "src",
        &format!(
            "SELECT string_agg(array_to_string(d.old_row, '|', '(null)'), ';' ORDER BY 1) FROM ibex.\"{delta}\" d"
        ),
    );
    assert!(images.contains("calm]\",glad,a}") && images.contains("sad]\",sad,kept}"), "{images}");
    s.run("hs");
    s.assert_same(&["src", "dst"], &["e"]);
    assert_eq!(
        s.sql("dst", "SELECT string_agg(format('%s=%s:%s', k, feel, v), ',' ORDER BY v) FROM e"),
        "[sad,sad]=calm:a,[calm,calm]=:n"
    );
    // ibex's own sessions, which run as its role, use no such cast either:
    // compare (keys as text) and a merge of the same key changed on both.
    s.assert_compare_clean("hs");
    s.ibex.sh("add sync both herd=h dbs=src:source,dst:source conflict_strategy=latest").ok();
    s.sql("dst", "UPDATE e SET v = 'dst'");
    s.sql("src", "UPDATE e SET v = 'src'");
    let run = s.run("both");
    assert_eq!(run["run"]["conflicts"].as_u64(), Some(2), "{run}");
    s.assert_same(&["src", "dst"], &["e"]);
}

/// Name resolution prefers an exact match to a polymorphic one (or to one
/// reached by a coercion), whatever the search_path's order:
/// `public.unnest(int[])` wins over `pg_catalog.unnest(anyarray)` for
/// every caller with `public` on its path that does not name
/// `pg_catalog`. With such a look-alike of every polymorphic built-in
/// function, aggregate and operator in `public` (each raising "hijacked",
/// see `tests/src/lookalikes.rs`), for the key and value types of the
/// tables here and the catalog's, capture (under the writer's path, which
/// has `public`), `add table`, a one-way and a merged run, compare,
/// reconcile and a TRUNCATE trip none of them.
#[test]
fn look_alikes_of_polymorphic_built_ins_in_public_reach_nothing_ibex_runs() {
    look_alikes_of_polymorphic_built_ins("trigger");
}

/// The same with db src on WAL capture (a mixed sync: dst keeps triggers).
#[test]
fn look_alikes_of_polymorphic_built_ins_in_public_reach_nothing_ibex_runs_with_wal_capture() {
    look_alikes_of_polymorphic_built_ins("wal");
}

fn look_alikes_of_polymorphic_built_ins(capture: &str) {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql(
        "src",
        "CREATE TYPE mood AS ENUM ('calm', 'glad', 'sad');
         CREATE DOMAIN amount AS numeric;
         CREATE DOMAIN code AS text;
         CREATE TABLE i (k int PRIMARY KEY, v text, at timestamptz);
         CREATE TABLE m (k mood PRIMARY KEY, v text);
         CREATE TABLE n (k amount PRIMARY KEY, v bytea);
         CREATE TABLE c (a int, b code, v text, PRIMARY KEY (a, b));
         CREATE TABLE w (k text PRIMARY KEY, v jsonb, f bool);
         INSERT INTO i SELECT g, 'v' || g, now() FROM generate_series(1, 300) g;
         INSERT INTO m VALUES ('calm', 'a'), ('glad', 'b');
         INSERT INTO n SELECT g, '\\x01' FROM generate_series(1, 50) g;
         INSERT INTO c SELECT g, 'c' || g, 'v' FROM generate_series(1, 50) g;
         INSERT INTO w SELECT 'k' || g, '{}', true FROM generate_series(1, 50) g;",
    );
    // The tables' types, and the catalog's that ibex reads.
    let types = [
        "int",
        "bigint",
        "smallint",
        "text",
        "numeric",
        "bool",
        "bytea",
        "timestamptz",
        "jsonb",
        "mood",
        "amount",
        "code",
        "oid",
        "name",
        "\"char\"",
        "regclass",
        "regtype",
        "regproc",
        "xid",
        "xid8",
        "pg_lsn",
    ];
    s.sql("src", &ibex_tests::lookalikes::arm(&types));
    // Exact matches of built-ins that take their argument by a coercion
    // (name to text, smallint to integer) win the same way.
    s.sql(
        "src",
        "CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS
             $f$ BEGIN RAISE EXCEPTION 'hijacked: quote_ident(name)'; END $f$;
         CREATE FUNCTION public.format_type(oid, smallint) RETURNS text LANGUAGE plpgsql AS
             $f$ BEGIN RAISE EXCEPTION 'hijacked: format_type(oid, smallint)'; END $f$;",
    );
    s.dbs_from("src", &["src", "dst"]);
    // The look-alikes spring for what does not name pg_catalog.
    for lure in [
        "SELECT unnest(ARRAY[1])",
        "SELECT count(k) FROM i",
        "SELECT array_agg(k) FROM m",
        "SELECT max(k) FROM m",
        "SELECT cardinality(ARRAY['x'::text])",
        "SELECT ARRAY[1] = ARRAY[2]",
        "SELECT format('%s', 1::amount)",
        "SELECT quote_ident(relname) FROM pg_class LIMIT 1",
    ] {
        let err = s.cluster.psql("dst", lure).expect_err(lure);
        assert!(format!("{err:#}").contains("hijacked"), "{lure}: {err:#}");
    }
    if capture != "trigger" {
        s.ibex.run(&["update", "db", "src", &format!("capture={capture}")]).ok();
    }
    s.ibex.sh("add table i m n c w db=src herd=h").ok();
    s.ibex.sh("update table m capture_old=true").ok();
    s.ibex.sh("add sync hs herd=h dbs=src:source,dst:source conflict_strategy=latest").ok();
    // One source changed: few keys and many, key changes, deletes.
    s.sql(
        "src",
        "INSERT INTO i SELECT g, 'new', now() FROM generate_series(301, 2300) g;
         UPDATE i SET k = k + 5000 WHERE k <= 10;
         DELETE FROM i WHERE k BETWEEN 11 AND 20;
         UPDATE m SET k = 'sad' WHERE v = 'a';
         UPDATE n SET k = k + 100 WHERE k <= 5;
         UPDATE n SET v = '\\x02' WHERE k > 40;
         UPDATE c SET b = 'moved' WHERE a = 1;
         DELETE FROM c WHERE a = 2;
         UPDATE w SET v = '{\"a\": 1}', f = false WHERE k = 'k1';",
    );
    s.run("hs");
    let tables = ["i", "m", "n", "c", "w"];
    s.assert_same(&["src", "dst"], &tables);
    assert_eq!(s.sql("dst", "SELECT count(*) FROM i"), "2290");
    // Both sources changed the same keys: the merge settles them.
    s.sql("dst", "UPDATE i SET v = 'dst' WHERE k <= 200; UPDATE m SET v = 'dst'; UPDATE n SET v = '\\x03'; UPDATE c SET v = 'dst'; UPDATE w SET f = true;");
    s.sql("src", "UPDATE i SET v = 'src' WHERE k <= 100; UPDATE m SET v = 'src'; UPDATE n SET v = '\\x04'; UPDATE c SET v = 'src'; UPDATE w SET f = false;");
    let run = s.run("hs");
    assert!(run["run"]["conflicts"].as_u64().unwrap_or(0) >= 100, "{run}");
    s.assert_same(&["src", "dst"], &tables);
    assert_eq!(s.sql("dst", "SELECT string_agg(DISTINCT v, ',') FROM m"), "src");
    s.assert_compare_clean("hs");
    // A difference made behind ibex's back: compare finds it, reconcile mends it.
    s.sql("dst", "SET session_replication_role = replica; UPDATE i SET v = 'tampered' WHERE k = 150; DELETE FROM m WHERE v = 'src' AND k::text = 'glad'");
    assert_eq!(s.ibex.run(&["compare", "hs"]).code, 1);
    s.ibex.sh("reconcile hs").ok();
    s.assert_same(&["src", "dst"], &tables);
    s.sql("src", "TRUNCATE c");
    s.run("hs");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM c"), "0");
    s.assert_same(&["src", "dst"], &tables);
}

/// ibex needs no superuser on the dbs it syncs (PostgreSQL 15+): a login
/// role with CREATE on each db (for its schema), the table rights of what
/// it captures and writes (TRIGGER to install capture) and
/// `GRANT SET ON PARAMETER session_replication_role` runs a one-way sync
/// with inserts, updates, deletes and a TRUNCATE. Without that grant the
/// run fails before writing anything and says what to grant.
#[test]
fn a_role_without_superuser_runs_a_sync_given_the_documented_grants() {
    let s = Setup::new();
    for db in ["src", "dst"] {
        s.cluster.create_db(db).unwrap();
        s.sql(db, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    }
    s.sql("postgres", "CREATE ROLE ibex_app LOGIN NOSUPERUSER");
    for db in ["src", "dst"] {
        s.sql(
            db,
            &format!(
                "GRANT CREATE ON DATABASE {db} TO ibex_app;
                 GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER ON t TO ibex_app"
            ),
        );
        let port = format!("port={}", s.cluster.port());
        s.ibex.run(&["add", "db", db, &format!("dbname={db}"), "host=127.0.0.1", &port, "user=ibex_app"]).ok();
    }
    s.ibex.sh("add table t db=src herd=h").ok();
    s.ibex.sh("add sync s1 herd=h dbs=src:source,dst:target").ok();
    s.sql("src", "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100) i");
    let refused = s.run_fails("s1", "GRANT SET ON PARAMETER session_replication_role TO the ibex user");
    assert!(refused.contains("permission denied to set parameter"), "{refused}");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "0");
    s.sql("postgres", "GRANT SET ON PARAMETER session_replication_role TO ibex_app");
    s.run("s1");
    s.sql("src", "UPDATE t SET v = 'w' WHERE id <= 10; DELETE FROM t WHERE id > 90");
    s.run("s1");
    s.assert_same(&["src", "dst"], &["t"]);
    s.sql("src", "TRUNCATE t; INSERT INTO t VALUES (1, 'after')");
    s.run("s1");
    s.assert_same(&["src", "dst"], &["t"]);
    assert_eq!(s.sql("dst", "SELECT v FROM t"), "after");
    s.assert_compare_clean("s1");
    // ibex's sessions on the dbs were the role's own.
    let capture_owner = "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'ibex'";
    assert_eq!(s.sql("src", capture_owner), "ibex_app");
}
