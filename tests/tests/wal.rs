//! WAL capture (`capture=wal`): a db's changes read from a logical
//! replication slot instead of triggers. One-way, the type table and kill -9
//! run in replication.rs and daemon.rs with WAL variants; here: masters
//! mixing WAL and trigger capture with conflicts, TRUNCATE, switching a db
//! between modes with changes pending, and what validate says a db lacks.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use ibex_tests::{Outcome, Setup, run_count};

fn three_masters(captures: [&str; 3]) -> Setup {
    let s = Setup::new();
    s.cluster.create_db("m1").unwrap();
    s.sql(
        "m1",
        "CREATE TABLE acct (id int PRIMARY KEY, val text);
         INSERT INTO acct SELECT i, 'v' || i FROM generate_series(1, 20) i;",
    );
    s.dbs_from("m1", &["m1", "m2", "m3"]);
    for (db, capture) in ["m1", "m2", "m3"].iter().zip(captures) {
        s.ibex.run(&["update", "db", db, &format!("capture={capture}")]).ok();
    }
    s.ibex.sh("add table acct db=m1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source,m3:source conflict_strategy=latest autokick=false").ok();
    s
}

#[test]
fn three_masters_two_on_wal_one_on_triggers_resolve_conflicts_without_echo() {
    let s = three_masters(["wal", "wal", "trigger"]);
    // One slot per WAL db (all three live on one server here).
    let slots = s.sql("m1", "SELECT string_agg(database::text, ',' ORDER BY database) FROM pg_replication_slots");
    assert_eq!(slots, "m1,m2");
    // The same key on all three, newest last; and changes of one key each.
    s.sql("m3", "UPDATE acct SET val = 'm3 old' WHERE id = 1");
    s.sql("m1", "UPDATE acct SET val = 'm1 mid' WHERE id = 1");
    s.sql("m2", "UPDATE acct SET val = 'm2 newest' WHERE id = 1");
    s.sql("m1", "INSERT INTO acct VALUES (101, 'from m1'); DELETE FROM acct WHERE id = 2");
    s.sql("m2", "INSERT INTO acct VALUES (102, 'from m2'); UPDATE acct SET id = 1003 WHERE id = 3");
    s.sql("m3", "INSERT INTO acct VALUES (103, 'from m3'); DELETE FROM acct WHERE id = 4");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert!(run_count(&run, "conflicts") >= 1, "{run}");
    s.assert_same(&["m1", "m2", "m3"], &["acct"]);
    assert_eq!(s.sql("m3", "SELECT val FROM acct WHERE id = 1"), "m2 newest");
    assert_eq!(s.sql("m1", "SELECT count(*) FROM acct WHERE id IN (2, 3, 4)"), "0");
    assert_eq!(
        s.sql("m1", "SELECT string_agg(id::text, ',' ORDER BY id) FROM acct WHERE id > 100"),
        "101,102,103,1003"
    );
    // What ibex wrote on the WAL dbs is not decoded back as a change.
    let again = s.run("mm");
    assert_eq!(run_count(&again, "inserted") + run_count(&again, "deleted"), 0, "{again}");
    // A delete racing an update of the same key: latest wins, everywhere.
    s.sql("m1", "DELETE FROM acct WHERE id = 5");
    s.sql("m3", "UPDATE acct SET val = 'kept' WHERE id = 5");
    s.run("mm");
    s.assert_same(&["m1", "m2", "m3"], &["acct"]);
    assert_eq!(s.sql("m1", "SELECT val FROM acct WHERE id = 5"), "kept");
    // The slot lets go of what was decoded: its position follows the runs.
    let behind = s.sql(
        "m2",
        "SELECT bool_and(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) < 1000000) FROM pg_replication_slots",
    );
    assert_eq!(behind, "t");
}

/// A run advances the slot only now and then (each advance decodes the
/// slot once more): the runs in between read again what earlier runs
/// wrote and skip it. A db with no changes of its own still lets go of the
/// WAL that other dbs of its server write.
#[test]
fn a_lagging_slot_rereads_nothing_twice_and_an_idle_slot_follows_the_wal() {
    let s = Setup::one_way_wal("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", "push", "autokick=false");
    let delta = s.sql("src", "SELECT 'ibex.' || quote_ident(delta_table) FROM ibex.captured");
    for i in 1..=5 {
        s.sql("src", &format!("INSERT INTO t VALUES ({i}, 'x')"));
        let run = s.run("push");
        assert_eq!(run_count(&run, "inserted"), 1, "run {i}: {run}");
    }
    // The slot stayed behind what was written, so the later runs re-read
    // the earlier inserts: each is still one delta row, not one per read.
    let lagging = s.sql(
        "src",
        "SELECT s.confirmed_flush_lsn < w.materialized_lsn FROM pg_replication_slots s JOIN ibex.wal w USING (slot_name)",
    );
    assert_eq!(lagging, "t", "the runs advanced the slot every time; this test no longer re-reads");
    assert_eq!(s.sql("src", &format!("SELECT count(*) FROM {delta}")), "5");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "5");
    // Another db of the same server writes 2 MiB of WAL; src writes nothing.
    s.cluster.create_db("other").unwrap();
    s.sql("other", "CREATE TABLE junk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 30000) g");
    let run = s.run("push");
    assert_eq!(run_count(&run, "inserted") + run_count(&run, "deleted"), 0, "{run}");
    let lag =
        s.sql("src", "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) FROM pg_replication_slots");
    assert!(lag.parse::<f64>().unwrap() < 1_000_000.0, "the idle slot keeps {lag} bytes of WAL");
    assert_eq!(s.sql("src", &format!("SELECT count(*) FROM {delta}")), "5");
    s.sql("src", "UPDATE t SET v = 'y' WHERE id = 3");
    assert_eq!(run_count(&s.run("push"), "inserted"), 1);
    s.assert_same(&["src", "dst"], &["t"]);
}

/// More than one read's worth of changes (50,000): the first read stops
/// after the transaction that passes it, the slot moves past that before
/// the next read, and no transaction is taken twice or lost.
#[test]
fn a_backlog_larger_than_one_read_arrives_once() {
    let s = Setup::one_way_wal("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", "push", "autokick=false");
    for part in 0..3 {
        s.sql(
            "src",
            &format!(
                "INSERT INTO t SELECT g, 'x' FROM generate_series({} + 1, {} + 30000) g",
                part * 30000,
                part * 30000
            ),
        );
    }
    let run = s.run("push");
    assert_eq!(run_count(&run, "inserted"), 90000, "{run}");
    let delta = s.sql("src", "SELECT 'ibex.' || quote_ident(delta_table) FROM ibex.captured");
    // Each key once in the delta table: none was written by two reads.
    assert_eq!(s.sql("src", &format!("SELECT sum(cardinality(id)) FROM {delta}")), "90000");
    // Each read wrote its keys (in chunks of 20,000) in one transaction:
    // two reads, two writing transactions.
    assert_eq!(s.sql("src", &format!("SELECT count(DISTINCT txid) FROM {delta}")), "2");
    s.assert_same(&["src", "dst"], &["t"]);
}

/// Makes the server invalidate src's slot: it may keep 1 MB of WAL, and
/// 50 MB follow.
fn lose_the_slot(s: &Setup) {
    s.sql("src", "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    s.sql("src", "SELECT pg_reload_conf()");
    s.sql("src", "CREATE TABLE junk AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 100000) g");
    s.sql("src", "SELECT pg_switch_wal()");
    s.sql("src", "CHECKPOINT");
    assert_eq!(s.sql("src", "SELECT wal_status FROM pg_replication_slots"), "lost");
}

/// `out` (of the step that replaced src's lost slot) says to reconcile,
/// and src's slot is usable again.
fn assert_slot_replaced(s: &Setup, out: &Outcome) {
    assert!(
        out.stderr.contains("run `ibex reconcile SYNC` for each sync reading db src"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(s.sql("src", "SELECT wal_status <> 'lost' FROM pg_replication_slots"), "t");
}

/// A lost slot does not stop a switch back to triggers: what it held is
/// named as lost, and reconcile brings it over.
#[test]
fn a_db_whose_slot_was_lost_goes_back_to_triggers() {
    let s = Setup::one_way_wal("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", "push", "autokick=false");
    s.sql("src", "INSERT INTO t VALUES (1, 'in the lost WAL')");
    lose_the_slot(&s);
    let out = s.ibex.sh("update db src capture=trigger").ok();
    assert!(out.stderr.contains("run `ibex reconcile SYNC`"), "{}{}", out.stdout, out.stderr);
    assert_eq!(s.sql("src", "SELECT count(*) FROM pg_replication_slots"), "0");
    s.sql("src", "INSERT INTO t VALUES (2, 'on triggers')");
    assert_eq!(run_count(&s.run("push"), "inserted"), 1);
    s.ibex.sh("reconcile push").ok();
    s.assert_same(&["src", "dst"], &["t"]);
}

/// A catalog that says triggers (restored from a backup taken before the
/// switch to WAL) while the db still holds its lost slot: `ibex apply` of
/// capture = "wal" replaces the slot and says to reconcile, as
/// `update db` does.
#[test]
fn apply_replacing_a_lost_slot_says_to_reconcile() {
    let s = Setup::one_way_wal("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", "push", "autokick=false");
    let file = s.cluster.dir().join("wal.toml");
    std::fs::write(&file, s.ibex.sh("dump").ok().stdout).unwrap();
    lose_the_slot(&s);
    s.sql("ibex", "UPDATE ibex.db SET capture = 'trigger' WHERE name = 'src'");
    let out = s.ibex.run(&["apply", file.to_str().unwrap(), "--yes"]).ok();
    assert_slot_replaced(&s, &out);
}

/// The server invalidates a slot that falls more than
/// max_slot_wal_keep_size behind: runs and validate name it and the way
/// back; `update db ... capture=wal` replaces it and says to reconcile,
/// and reconcile brings over the change the lost WAL held.
#[test]
fn a_slot_the_server_invalidated_is_named_and_replaced() {
    let s = Setup::one_way_wal("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", "push", "autokick=false");
    s.sql("src", "INSERT INTO t VALUES (1, 'x')");
    assert_eq!(run_count(&s.run("push"), "inserted"), 1);
    s.sql("src", "INSERT INTO t VALUES (2, 'in the lost WAL')");
    lose_the_slot(&s);
    let err = s.run_fails("push", "invalidated its capture slot");
    assert!(err.contains("`ibex update db src capture=wal`") && err.contains("ibex reconcile"), "{err}");
    // A position past anything the new slot will decode (as a dump
    // restored from a server further along would hold) is forgotten.
    s.sql("src", "UPDATE ibex.wal SET materialized_lsn = 'FFFFFFF/0'");
    let out = s.ibex.sh("update db src capture=wal").ok();
    assert_slot_replaced(&s, &out);
    s.sql("src", "INSERT INTO t VALUES (3, 'after')");
    assert_eq!(run_count(&s.run("push"), "inserted"), 1, "the new slot captures what follows");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t WHERE id = 2"), "0");
    s.ibex.sh("reconcile push").ok();
    s.assert_same(&["src", "dst"], &["t"]);
}

#[test]
fn truncate_on_a_wal_db_and_later_rows_reach_the_targets() {
    let s = Setup::one_way_wal(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'x' FROM generate_series(1, 100) i",
        "t",
        "push",
        "",
    );
    s.sql("src", "INSERT INTO t VALUES (500, 'before')");
    s.sql("src", "TRUNCATE t");
    s.sql("src", "INSERT INTO t VALUES (1, 'after'), (2, 'after')");
    let run = s.run("push");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["src", "dst"], &["t"]);
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "2");
}

#[test]
fn an_update_keeping_a_toasted_key_reaches_the_target() {
    // A 2,240-byte key stored out of line: an UPDATE of another column
    // decodes it as an unchanged TOAST value in the new tuple.
    let s = Setup::one_way_wal("CREATE TABLE big (k text PRIMARY KEY, v int); ALTER TABLE big ALTER COLUMN k SET STORAGE EXTERNAL;
         INSERT INTO big SELECT string_agg(md5(i::text || n::text), ''), n FROM generate_series(1, 70) i, generate_series(1, 3) n GROUP BY n", "big", "push", "");
    assert_eq!(s.sql("src", "SELECT count(*) FROM big WHERE pg_column_size(k) > 2000"), "3");
    s.sql("src", "UPDATE big SET v = v + 10");
    let run = s.run("push");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run_count(&run, "inserted"), 3, "{run}");
    s.assert_same(&["src", "dst"], &["big"]);
    assert_eq!(s.sql("dst", "SELECT sum(v) FROM big"), "36");
}

#[test]
fn switching_capture_mode_keeps_pending_changes_and_drops_the_slot() {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql("src", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.dbs_from("src", &["src", "dst"]);
    s.ibex.sh("add table t db=src herd=h").ok();
    s.ibex.sh("add sync push herd=h dbs=src:source,dst:target").ok();
    // Changes captured by triggers, then the switch, then changes in the slot.
    s.sql("src", "INSERT INTO t VALUES (1, 'trigger')");
    let switched = s.ibex.sh("update db src capture=wal").ok();
    assert!(switched.stdout.contains("capture is now wal"), "{}", switched.stdout);
    s.sql("src", "INSERT INTO t VALUES (2, 'wal'); UPDATE t SET v = 'wal too' WHERE id = 1");
    s.run("push");
    s.assert_same(&["src", "dst"], &["t"]);
    assert_eq!(s.sql("dst", "SELECT string_agg(v, ',' ORDER BY id) FROM t"), "wal too,wal");
    // Back to triggers with a change still in the slot: it is kept.
    s.sql("src", "INSERT INTO t VALUES (3, 'pending in the slot')");
    s.ibex.sh("update db src capture=trigger").ok();
    assert_eq!(s.sql("src", "SELECT count(*) FROM pg_replication_slots"), "0");
    s.sql("src", "INSERT INTO t VALUES (4, 'trigger again')");
    s.run("push");
    s.assert_same(&["src", "dst"], &["t"]);
    assert_eq!(s.sql("dst", "SELECT count(*) FROM t"), "4");
    // A db that leaves ibex takes its slot with it.
    s.ibex.sh("update db src capture=wal").ok();
    assert_eq!(s.sql("src", "SELECT count(*) FROM pg_replication_slots"), "1");
    s.ibex.sh("remove sync push").ok();
    s.ibex.sh("remove db src").ok();
    assert_eq!(s.sql("src", "SELECT count(*) FROM pg_replication_slots"), "0");
}

#[test]
fn validate_names_what_a_db_lacks_for_wal_capture() {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    // No key in the replica identity: a decoded DELETE would have no key.
    s.sql(
        "src",
        "CREATE TABLE u (code text NOT NULL, v text); CREATE UNIQUE INDEX u_code ON u (code);
         ALTER TABLE u REPLICA IDENTITY NOTHING",
    );
    s.dbs_from("src", &["src", "dst"]);
    s.ibex.sh("update db src capture=wal").ok();
    s.ibex.sh("add table u db=src herd=h pkey=code").ok();
    let out = s.ibex.sh("add sync push herd=h dbs=src:source,dst:target").fails_with("REPLICA IDENTITY");
    assert!(out.stderr.contains("ALTER TABLE \"public\".\"u\" REPLICA IDENTITY FULL"), "{}", out.stderr);
    s.sql("src", "ALTER TABLE u REPLICA IDENTITY FULL");
    s.ibex.sh("add sync push herd=h dbs=src:source,dst:target").ok();
    s.ibex.sh("validate push").ok();
    s.sql("src", "INSERT INTO u VALUES ('a', '1'), ('b', '2'); DELETE FROM u WHERE code = 'a'");
    s.run("push");
    s.assert_same(&["src", "dst"], &["u"]);
    // A server without wal_level = logical: refused, saying what to set.
    s.cluster.psql("postgres", "ALTER SYSTEM SET wal_level = replica").unwrap();
    s.ibex.sh("update db src capture=trigger").ok();
    let mut cluster = s.cluster;
    cluster.restart().unwrap();
    let ibex = s.ibex;
    let refused = ibex.sh("update db src capture=wal").fails_with("wal_level = logical");
    assert!(refused.stderr.contains("capture=trigger"), "{}", refused.stderr);
    let listed = ibex.sh("list dbs --json").ok().json();
    let src = listed.as_array().unwrap().iter().find(|d| d["name"] == "src").unwrap().clone();
    assert_eq!(src["capture"], "trigger", "a refused switch changes nothing: {src}");
}

/// A run that retries after a write conflict decodes the slot once: the
/// retry applies what the first attempt decoded, and a change committed in
/// between is decoded, and applied, by the next run (its delta rows carry
/// the decoding transaction's id, which no cursor has passed).
#[test]
fn a_retried_run_decodes_once_and_the_next_run_takes_what_came_meanwhile() {
    let s = Setup::one_way_wal(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')",
        "t",
        "push",
        "autokick=false",
    );
    s.sql("src", "UPDATE t SET v = 'new' WHERE id = 1");
    // The target row held: the first attempt gives up on it, the retry waits.
    let holder = s.cluster.hold("dst", "SELECT * FROM t WHERE id = 1 FOR UPDATE").unwrap();
    // Each attempt pauses after reading its window, the first one after
    // decoding the slot.
    let mut child = s
        .ibex
        .command(&["sync", "run", "push", "--json"])
        .env("IBEX_FAILPOINTS", "after_capture_read=sleep(1000)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ibex sync run");
    let stderr = BufReader::new(child.stderr.take().expect("the run's stderr"));
    let (tx, pauses) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("failpoint after_capture_read reached") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let pause = || pauses.recv_timeout(Duration::from_secs(60)).expect("an attempt reaching its pause");
    pause();
    // Committed after the first attempt decoded the slot, before the retry.
    s.sql("src", "INSERT INTO t VALUES (2, 'meanwhile')");
    pause();
    holder.release().unwrap();
    let mut out = String::new();
    child.stdout.take().expect("the run's stdout").read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(status.success(), "{log}");
    let run: serde_json::Value = serde_json::from_str(&out).expect("the run as JSON");
    assert_eq!(run["run"]["attempts"], 2, "{run}");
    assert_eq!(s.sql("dst", "SELECT v FROM t WHERE id = 1"), "new");
    assert_eq!(run_count(&run, "inserted"), 1, "the retry decoded the slot again: {run}");
    let next = s.run("push");
    assert_eq!(run_count(&next, "inserted"), 1, "{next}");
    s.assert_same(&["src", "dst"], &["t"]);
}

/// A db that is one sync's target and another's WAL source: a run of the
/// first that writes no row there commits a transaction that only holds
/// ibex's marker, which test_decoding prints alone, with no COMMIT. The
/// application's next transaction there is still the application's, and
/// the second sync carries it on.
#[test]
fn a_run_that_wrote_nothing_on_a_wal_db_hides_no_later_change() {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.dbs_from("a", &["a", "b", "c"]);
    s.ibex.sh("update db b capture=wal").ok();
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync push herd=h dbs=a:source,b:target autokick=false").ok();
    s.ibex.sh("add sync fwd herd=h dbs=b:source,c:target autokick=false").ok();
    s.sql("a", "INSERT INTO t VALUES (1, 'first')");
    assert_eq!(s.run("push")["run"]["state"], "good");
    assert_eq!(s.run("fwd")["run"]["state"], "good");
    // Nothing new on a: push writes no row on b.
    assert_eq!(s.run("push")["run"]["state"], "good");
    s.sql("b", "INSERT INTO t VALUES (2, 'written on b')");
    assert_eq!(s.run("fwd")["run"]["state"], "good");
    assert_eq!(s.sql("c", "SELECT string_agg(v, ',' ORDER BY id) FROM t"), "written on b");
}

/// The retry after a write conflict locks the tables before it takes its
/// snapshot, also on a WAL db, where each transaction of a run starts with
/// ibex's logical message: a writer that commits while the retry waits for
/// its lock is then in the retry's snapshot, and the retry succeeds. (With
/// the message sent first, the snapshot predated the lock, and the retry
/// failed on the writer's row as the first attempt had.)
#[test]
fn the_retry_on_a_wal_db_takes_its_snapshot_after_its_lock() {
    let s = Setup::one_way_wal(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')",
        "t",
        "held",
        "autokick=false",
    );
    s.ibex.run(&["update", "db", "dst", "capture=wal"]).ok();
    s.sql("src", "UPDATE t SET v = 'new' WHERE id = 1");
    // A writer changes the target's row and commits only once a run waits.
    let holder = s.cluster.hold("dst", "UPDATE t SET v = 'theirs' WHERE id = 1").unwrap();
    let run = s.run_releasing_after_a_wait("held", "dst", holder);
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["attempts"], 2, "the retry failed on the writer's row: {run}");
    assert_eq!(s.sql("dst", "SELECT v FROM t WHERE id = 1"), "new");
}
