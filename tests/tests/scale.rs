//! Scale on one daemon: a herd of 2,000 tables whose KID keeps its table
//! checks between runs (an empty cycle costs a fraction of the first one),
//! and 100 syncs over three databases. Times are printed, not asserted:
//! the bench measures speed.

use std::time::{Duration, Instant};

use ibex_tests::{Daemon, Setup};

fn last_run_seconds(s: &Setup) -> f64 {
    s.sql("ibex", "SELECT extract(epoch FROM ended_at - started_at) FROM ibex.run ORDER BY id DESC LIMIT 1")
        .parse()
        .unwrap_or(f64::MAX)
}

#[test]
fn a_herd_of_two_thousand_tables() {
    let s = Setup::new();
    s.cluster.create_db("s1").unwrap();
    s.sql(
        "s1",
        "DO $$ BEGIN FOR i IN 1..2000 LOOP
             EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i);
         END LOOP; END $$",
    );
    s.dbs_from("s1", &["s1", "s2"]);
    s.ibex.sh("add all tables db=s1 herd=big").ok();
    s.ibex.sh("add sync big herd=big dbs=s1:source,s2:target autokick=false").ok();
    assert_eq!(s.sql("s1", "SELECT count(*) FROM ibex.captured"), "2000");
    // A daemon's KID keeps its connections and table checks between runs.
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    d.run(&["kick", "big", "--wait", "300"]).ok();
    d.run(&["kick", "big", "--wait", "300"]).ok();
    let empty = last_run_seconds(&s);
    // The first run (at start) checked 2000 tables on both dbs; later
    // ones must not check them again.
    let first: f64 = s
        .sql("ibex", "SELECT extract(epoch FROM ended_at - started_at) FROM ibex.run ORDER BY id LIMIT 1")
        .parse()
        .unwrap_or(0.0);
    assert!(empty < first / 2.0, "an empty cycle ({empty} s) cost more than half the first one ({first} s)");
    // Changes in a few tables among the 2000 go through.
    s.sql("s1", "INSERT INTO t7 VALUES (1, 'seven'); INSERT INTO t1999 VALUES (2, 'many')");
    d.run(&["kick", "big", "--wait", "300"]).ok();
    assert_eq!(s.sql("s2", "SELECT v FROM t7 UNION ALL SELECT v FROM t1999 ORDER BY 1"), "many\nseven");
    eprintln!(
        "2000 tables: first cycle {first:.3} s, empty cycle {empty:.3} s, then {:.3} s with changes",
        last_run_seconds(&s)
    );
}

fn daemon_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_hundred_syncs_on_one_daemon() {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql(
        "a",
        "DO $$ BEGIN FOR i IN 1..100 LOOP
             EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i);
         END LOOP; END $$",
    );
    s.dbs_from("a", &["a", "b", "c"]);
    for i in 1..=100 {
        s.ibex.run(&["add", "table", &format!("t{i}"), "db=a", &format!("herd=h{i}")]).ok();
        // kidsalive=false: a hundred syncs need no connections between runs.
        let target = if i % 2 == 0 { "b" } else { "c" };
        s.ibex
            .run(&[
                "add",
                "sync",
                &format!("s{i}"),
                &format!("herd=h{i}"),
                &format!("dbs=a:source,{target}:target"),
                "kidsalive=false",
            ])
            .ok();
    }
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    assert!(d.run(&["reload"]).ok().stdout.contains("100 syncs running"));
    s.sql("a", "DO $$ BEGIN FOR i IN 1..100 LOOP EXECUTE format('INSERT INTO t%s VALUES (1, %L)', i, 'row ' || i); END LOOP; END $$");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let b: i64 = s
            .sql(
                "b",
                "SELECT count(*) FROM (SELECT 1 FROM t2 UNION ALL SELECT 1 FROM t50 UNION ALL SELECT 1 FROM t100) x",
            )
            .parse()
            .unwrap();
        let c: i64 = s
            .sql(
                "c",
                "SELECT count(*) FROM (SELECT 1 FROM t1 UNION ALL SELECT 1 FROM t51 UNION ALL SELECT 1 FROM t99) x",
            )
            .parse()
            .unwrap();
        let good: i64 = s
            .sql("ibex", "SELECT count(DISTINCT sync) FROM ibex.run WHERE state = 'good' AND inserted > 0")
            .parse()
            .unwrap();
        if b == 3 && c == 3 && good == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "not every sync delivered ({good} of 100):\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss = daemon_rss_kib(d.pid().unwrap());
    eprintln!("daemon peak RSS with 100 syncs: {} MiB", rss / 1024);
    assert!(rss < 512 * 1024, "the daemon used {} MiB for 100 syncs", rss / 1024);
}
