//! Schema changes on a running multi-master sync: `ibex ddl` adds a
//! column on every db while writes go on, the daemon's running sync picks
//! it up at its next run (no restart, nothing lost, the new column's values
//! replicate), a drop works the same way, and a statement that fails on
//! one db is applied on none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ibex_tests::{Daemon, Setup};

const DBS: [&str; 3] = ["m1", "m2", "m3"];

fn converge(s: &Setup, what: &str, check: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if DBS.iter().all(|db| s.sql(db, check) == expected) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", DBS.map(|db| s.sql(db, check)));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ibex_ddl_changes_three_masters_under_writes_and_the_running_sync_follows() {
    let s = Arc::new(Setup::new());
    s.cluster.create_db("m1").unwrap();
    s.sql("m1", "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL DEFAULT 0); INSERT INTO acct SELECT i, 0 FROM generate_series(1, 300) i");
    s.dbs_from("m1", &DBS);
    s.ibex.sh("add table acct db=m1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source,m3:source").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();

    // Writers on two masters, on keys of their own (101..=300), all along.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU32::new(0));
    let writers: Vec<_> = [("m1", 0), ("m2", 1)]
        .into_iter()
        .map(|(db, parity)| {
            let (s, stop, writes) = (s.clone(), stop.clone(), writes.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = 100 + (i % 100) * 2 + parity + 1;
                    s.sql(db, &format!("UPDATE acct SET n = n + 1 WHERE id = {id}"));
                    writes.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    let added = s.ibex.run(&["ddl", "mm", "ALTER TABLE acct ADD COLUMN note text"]).ok();
    assert!(added.stdout.contains("Changed the schema of sync mm"), "{}", added.stdout);
    for db in DBS {
        assert_eq!(
            s.sql(
                db,
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'acct' AND column_name = 'note'"
            ),
            "1"
        );
    }
    // The new column's values replicate, through the daemon's running sync.
    s.sql("m1", "UPDATE acct SET note = 'from m1' WHERE id BETWEEN 1 AND 20");
    s.sql("m3", "UPDATE acct SET note = 'from m3' WHERE id BETWEEN 21 AND 40");
    converge(&s, "notes replicated", "SELECT count(note) FROM acct", "40");

    // A statement that fails on one db (the column exists only there) is applied on none.
    s.sql("m3", "ALTER TABLE acct ADD COLUMN only_here int");
    s.ibex.run(&["ddl", "mm", "ALTER TABLE acct ADD COLUMN only_here int"]).fails_with("applied on no db");
    for db in ["m1", "m2"] {
        assert_eq!(s.sql(db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'acct' AND column_name = 'only_here'"), "0");
    }
    s.sql("m3", "ALTER TABLE acct DROP COLUMN only_here");

    let dropped = s.ibex.run(&["ddl", "mm", "ALTER TABLE acct DROP COLUMN note"]).ok();
    assert!(dropped.stdout.contains("Changed the schema"), "{}", dropped.stdout);

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let total = writes.load(Ordering::Relaxed);
    assert!(total > 20, "the writers barely ran ({total} updates)");
    // Every update on either master reached all three: n sums to the writes.
    converge(&s, "every update replicated", "SELECT sum(n) FROM acct", &total.to_string());
    s.assert_same(&DBS, &["acct"]);
    let log = d.log();
    assert!(log.contains("checking the tables again"), "the running sync did not notice the change:\n{log}");
}

/// `ddl=addcol`: a column added on the source by hand (outside ibex) while
/// the daemon runs the sync is added on the target, with its type,
/// default and NOT NULL, before rows with it are applied; with the default
/// `ddl=fail` the same change stops the run, naming table, db and column.
#[test]
fn addcol_follows_a_column_added_on_the_source_and_fail_names_it() {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql(
        "src",
        "CREATE TABLE acct (id int PRIMARY KEY, n int); INSERT INTO acct SELECT i, i FROM generate_series(1, 50) i",
    );
    s.dbs_from("src", &["src", "dst", "other"]);
    s.ibex.sh("add table acct db=src herd=h").ok();
    s.ibex.sh("add sync follow herd=h dbs=src:source,dst:target ddl=addcol").ok();
    s.ibex.sh("add sync strict herd=h dbs=src:source,other:target").ok();
    s.ibex.sh("deactivate strict").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    s.sql("src", "UPDATE acct SET n = n + 1 WHERE id <= 5");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.sql("dst", "SELECT sum(n) FROM acct") != s.sql("src", "SELECT sum(n) FROM acct") {
        assert!(Instant::now() < deadline, "the first changes never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }

    s.sql("src", "ALTER TABLE acct ADD COLUMN note varchar(20) COLLATE \"C\" NOT NULL DEFAULT 'none'");
    s.sql("src", "UPDATE acct SET note = 'set on src' WHERE id <= 10");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.sql(
        "dst",
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'acct' AND column_name = 'note'",
    ) != "1"
        || s.sql("dst", "SELECT count(*) FROM acct WHERE note = 'set on src'") != "10"
    {
        assert!(Instant::now() < deadline, "addcol did not bring the column and its values:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        s.sql("dst", "SELECT format_type(atttypid, atttypmod) || ' ' || attnotnull || ' ' || pg_get_expr(adbin, adrelid) FROM pg_attribute JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum WHERE attrelid = 'acct'::regclass AND attname = 'note'"),
        "character varying(20) true 'none'::character varying"
    );
    s.assert_same(&["src", "dst"], &["acct"]);
    assert!(d.log().contains("ddl=addcol: added a column"), "{}", d.log());

    // The strict sync (ddl=fail) refuses to run, naming what differs.
    let failed = s.ibex.run(&["sync", "run", "strict"]);
    assert!(!failed.success());
    let said = format!("{}{}", failed.stdout, failed.stderr);
    assert!(said.contains("table public.acct on db other lacks column note"), "{said}");

    // What addcol cannot add (a changed type) pauses the table instead.
    s.sql("src", "ALTER TABLE acct ALTER COLUMN n TYPE bigint");
    s.sql("src", "UPDATE acct SET n = n + 1 WHERE id = 1");
    status_says(
        &s,
        &d,
        "follow",
        &["paused: column public.acct.n is integer on db dst but bigint on db src"],
        "addcol did not fall back to pause",
    );
}

/// Waits until `ibex status SYNC` contains every one of `needles`.
fn status_says(s: &Setup, d: &Daemon, sync: &str, needles: &[&str], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = s.ibex.run(&["status", sync]).ok().stdout;
        if needles.iter().all(|n| status.contains(n)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}:\n{status}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `check` gives the same answer on every db of `dbs`.
fn same_everywhere(s: &Setup, d: &Daemon, dbs: &[&str], what: &str, check: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answers: Vec<String> = dbs.iter().map(|db| s.sql(db, check)).collect();
        if answers.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {answers:?}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ddl=pause` with one source: a column added on the source by hand holds
/// back only that table (the other keeps replicating, `status` says why),
/// its changes wait, and once the target has the column too the table
/// resumes by itself with every change made meanwhile (updates, deletes,
/// inserts), copied whole in one transaction.
#[test]
fn pause_holds_back_only_the_drifted_table_and_resumes_by_itself() {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql(
        "src",
        "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL);
         CREATE TABLE other (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO acct SELECT i, 0 FROM generate_series(1, 100) i;
         INSERT INTO other SELECT i, 0 FROM generate_series(1, 100) i",
    );
    s.dbs_from("src", &["src", "dst"]);
    s.ibex.sh("add table acct other db=src herd=h").ok();
    s.ibex.sh("add sync follow herd=h dbs=src:source,dst:target ddl=pause").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    s.sql("src", "UPDATE acct SET n = 1 WHERE id <= 10");
    same_everywhere(&s, &d, &["src", "dst"], "the first changes never arrived", "SELECT sum(n) FROM acct");

    s.sql("src", "ALTER TABLE acct ADD COLUMN note text");
    s.sql("src", "UPDATE acct SET n = n + 1, note = 'while paused' WHERE id <= 20");
    s.sql("src", "DELETE FROM acct WHERE id > 90");
    s.sql("src", "INSERT INTO acct (id, n, note) SELECT i, 7, 'new' FROM generate_series(101, 110) i");
    s.sql("src", "UPDATE other SET n = n + 5 WHERE id <= 50");
    // The other table goes on while acct waits.
    same_everywhere(&s, &d, &["src", "dst"], "the table that did not change stopped too", "SELECT sum(n) FROM other");
    status_says(
        &s,
        &d,
        "follow",
        &["Table public.acct", "paused: table public.acct on db dst lacks column note"],
        "status does not say acct is paused",
    );
    assert_eq!(s.sql("dst", "SELECT count(*) FROM acct WHERE id > 90"), "10", "acct was applied while paused");
    // More changes, while it waits, to both tables.
    s.sql("src", "UPDATE acct SET n = n + 100 WHERE id BETWEEN 30 AND 39");
    s.sql("src", "UPDATE other SET n = n + 1");
    same_everywhere(&s, &d, &["src", "dst"], "other stopped", "SELECT sum(n) FROM other");

    // The repair: the target gets the column; acct resumes by itself.
    s.sql("dst", "ALTER TABLE acct ADD COLUMN note text");
    same_everywhere(
        &s,
        &d,
        &["src", "dst"],
        "acct did not resume",
        "SELECT count(*) || ' ' || sum(n) || ' ' || count(note) FROM acct",
    );
    s.assert_same(&["src", "dst"], &["acct", "other"]);
    let status = s.ibex.run(&["status", "follow"]).ok().stdout;
    assert!(!status.contains("paused:"), "still paused after the repair:\n{status}");
    assert!(d.log().contains("resumed"), "{}", d.log());
    // Later changes flow one by one again.
    s.sql("src", "UPDATE acct SET note = 'after' WHERE id = 1");
    same_everywhere(&s, &d, &["src", "dst"], "acct stopped after resuming", "SELECT note FROM acct WHERE id = 1");
}

/// `ddl=pause` with two masters: a column added on one master by hand
/// holds the whole sync (a whole copy from one master would overwrite the
/// other's changes); both masters' changes wait, and once the other
/// master has the column too every change arrives, nothing lost.
#[test]
fn pause_on_two_masters_holds_the_sync_and_loses_nothing() {
    let s = Setup::new();
    s.cluster.create_db("m1").unwrap();
    s.sql("m1", "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL); INSERT INTO acct SELECT i, 0 FROM generate_series(1, 100) i");
    s.dbs_from("m1", &["m1", "m2"]);
    s.ibex.sh("add table acct db=m1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source ddl=pause").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    s.sql("m1", "UPDATE acct SET n = 1 WHERE id <= 10");
    same_everywhere(&s, &d, &["m1", "m2"], "the first changes never arrived", "SELECT sum(n) FROM acct");

    s.sql("m2", "ALTER TABLE acct ADD COLUMN extra int");
    // Odd keys written on m1, even ones on m2, while the sync waits.
    for round in 0..5 {
        s.sql("m1", &format!("UPDATE acct SET n = n + 1 WHERE id % 2 = 1 AND id > {round}"));
        s.sql("m2", &format!("UPDATE acct SET n = n + 1, extra = {round} WHERE id % 2 = 0 AND id > {round}"));
        std::thread::sleep(Duration::from_millis(300));
    }
    status_says(
        &s,
        &d,
        "mm",
        &["Paused", "paused: table public.acct", "whole sync waits"],
        "status does not say mm is paused",
    );
    let m1_sum = s.sql("m1", "SELECT sum(n) FROM acct WHERE id % 2 = 1");
    let m2_sum = s.sql("m2", "SELECT sum(n) FROM acct WHERE id % 2 = 0");
    assert_ne!(
        s.sql("m2", "SELECT sum(n) FROM acct WHERE id % 2 = 1"),
        m1_sum,
        "m1's changes were applied while paused"
    );

    s.sql("m1", "ALTER TABLE acct ADD COLUMN extra int");
    same_everywhere(&s, &d, &["m1", "m2"], "mm did not resume", "SELECT sum(n) || ' ' || count(extra) FROM acct");
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(s.sql("m2", "SELECT sum(n) FROM acct WHERE id % 2 = 1"), m1_sum, "a change of m1 was lost");
    assert_eq!(s.sql("m1", "SELECT sum(n) FROM acct WHERE id % 2 = 0"), m2_sum, "a change of m2 was lost");
    let status = s.ibex.run(&["status", "mm"]).ok().stdout;
    assert!(!status.contains("paused:"), "still paused after the repair:\n{status}");
}
