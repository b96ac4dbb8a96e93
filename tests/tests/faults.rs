//! Faults injected under a write load, with the real daemon: the network
//! cut, stalled and black-holed (a TCP proxy), the daemon killed -9 fifty
//! times, its connections terminated, a target crashed, a source restarted
//! with a backlog, clocks skewed. After each, `ibex compare` must say
//! identical and every committed write must be everywhere, exactly once.
//! Each test records what it injected for docs/RELIABILITY.md.

use std::thread;
use std::time::{Duration, Instant};

use ibex_tests::load::{FaultRecord, Writer, check_writes, record};
use ibex_tests::proxy::FaultProxy;
use ibex_tests::{Cluster, Daemon, Setup};

/// A small pseudo-random sequence; the seed is printed so a failure can be replayed.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        eprintln!("dice seed {seed}");
        Dice(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Two masters (m1, m2) and a target (t) with the writers' tables, each db
/// reached through `port_of(db)`.
fn fixture(s: &Setup, port_of: impl Fn(&str) -> u16) {
    s.cluster.create_db("m1").unwrap();
    s.sql("m1", Writer::SCHEMA);
    for db in ["m2", "t"] {
        s.cluster.clone_db("m1", db).unwrap();
    }
    for db in ["m1", "m2", "t"] {
        s.add_db_on(db, db, port_of(db)).ok();
    }
    s.ibex.sh("add table writes counter db=m1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source,t:target").ok();
    s.ibex.sh("set run_timeout=20s retry_limit=20").ok();
}

fn writers(port: u16, dbs: &[&str]) -> Vec<Writer> {
    dbs.iter().map(|db| Writer::start(port, db, Duration::from_millis(3))).collect()
}

/// Kicks sync mm until `ibex compare` finds every db equal.
fn converge(d: &Daemon, fault: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !d.run(&["compare", "mm"]).success() {
        let _ = d.run(&["kick", "mm", "--wait", "60"]);
        assert!(Instant::now() < deadline, "{fault}: the dbs never converged:\n{}", d.log());
        thread::sleep(Duration::from_millis(500));
    }
}

/// Stops the writers, waits for the sync to converge, checks every write on
/// every db and records the result.
fn settle(s: &Setup, d: &Daemon, writers: Vec<Writer>, fault: &str, injected: u64) {
    let committed: Vec<(String, Vec<i32>)> = writers.into_iter().map(|w| (w.db.clone(), w.finish())).collect();
    converge(d, fault, Duration::from_secs(180));
    let mut written = 0;
    let mut lost = 0;
    let mut doubled = 0;
    for db in ["m1", "m2", "t"] {
        let (w, l, dd) = check_writes(&s.cluster, db, &committed).unwrap();
        written = w;
        lost += l;
        doubled += dd;
    }
    record(&FaultRecord { fault: fault.into(), injected, rows_written: written, rows_lost: lost, doubled }).unwrap();
    assert!(written > 100, "{fault}: the load wrote only {written} rows");
    assert_eq!(lost, 0, "{fault}: committed writes are missing");
    assert_eq!(doubled, 0, "{fault}: counters do not match the writes");
}

#[test]
fn network_cut_stall_and_blackhole_heal_by_themselves() {
    let s = Setup::new();
    let proxies: Vec<FaultProxy> = (0..3).map(|_| FaultProxy::start(s.cluster.port()).unwrap()).collect();
    let index = |db: &str| ["m1", "m2", "t"].iter().position(|d| *d == db).unwrap_or(0);
    fixture(&s, |db| proxies[index(db)].port);
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let load = writers(s.cluster.port(), &["m1", "m2"]);
    let faults: [(usize, &str, u64); 9] = [
        (2, "cut", 0),
        (0, "stall", 3),
        (2, "blackhole", 5),
        (1, "cut", 0),
        (1, "stall", 2),
        (0, "blackhole", 4),
        (0, "cut", 0),
        (2, "stall", 2),
        (1, "blackhole", 3),
    ];
    for (proxy, what, secs) in faults {
        thread::sleep(Duration::from_millis(800));
        match what {
            "cut" => proxies[proxy].cut(),
            "stall" => proxies[proxy].stall(),
            _ => proxies[proxy].blackhole(),
        }
        thread::sleep(Duration::from_secs(secs));
        proxies[proxy].heal();
    }
    thread::sleep(Duration::from_secs(1));
    settle(&s, &d, load, "network cut, stall and black hole (TCP proxy)", faults.len() as u64);
}

#[test]
fn kill_9_of_the_daemon_fifty_times() {
    let s = Setup::new();
    let port = s.cluster.port();
    fixture(&s, |_| port);
    let mut d = Daemon::configure(&s.ibex).unwrap();
    let load = writers(port, &["m1", "m2"]);
    let mut dice = Dice::new();
    for round in 0..50 {
        d.start().unwrap_or_else(|e| panic!("start {round}: {e}"));
        thread::sleep(Duration::from_millis(dice.below(400)));
        d.kill();
    }
    d.start().unwrap();
    settle(&s, &d, load, "kill -9 of the daemon at random moments", 50);
}

#[test]
fn terminated_engine_connections() {
    let s = Setup::new();
    let port = s.cluster.port();
    fixture(&s, |_| port);
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let load = writers(port, &["m1", "m2"]);
    let mut dice = Dice::new();
    let mut killed = 0;
    for _ in 0..30 {
        thread::sleep(Duration::from_millis(100 + dice.below(300)));
        let n: u64 = s
            .sql(
                "postgres",
                "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity
                   WHERE application_name LIKE 'ibex%' AND pid <> pg_backend_pid() ORDER BY random() LIMIT 2) x",
            )
            .parse()
            .unwrap_or(0);
        killed += n;
    }
    assert!(killed >= 20, "only {killed} connections were terminated");
    assert!(d.run(&["ping"]).success(), "the daemon must survive:\n{}", d.log());
    settle(&s, &d, load, "pg_terminate_backend of ibex's connections", killed);
}

#[test]
fn a_target_crashed_mid_cycle_and_restarted() {
    let s = Setup::new();
    let mut far = Cluster::start().unwrap();
    s.cluster.create_db("m1").unwrap();
    s.sql("m1", Writer::SCHEMA);
    s.cluster.clone_db("m1", "m2").unwrap();
    far.create_db("t").unwrap();
    far.psql("t", Writer::SCHEMA).unwrap();
    for (db, port) in [("m1", s.cluster.port()), ("m2", s.cluster.port()), ("t", far.port())] {
        s.add_db_on(db, db, port).ok();
    }
    s.ibex.sh("add table writes counter db=m1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source,t:target").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let load = writers(s.cluster.port(), &["m1", "m2"]);
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(1500));
        far.crash().unwrap();
        thread::sleep(Duration::from_secs(2));
        far.restart().unwrap();
    }
    let committed: Vec<(String, Vec<i32>)> = load.into_iter().map(|w| (w.db.clone(), w.finish())).collect();
    converge(&d, "target crash", Duration::from_secs(180));
    let (written, lost, doubled) = check_writes(&far, "t", &committed).unwrap();
    record(&FaultRecord {
        fault: "target cluster stopped -m immediate mid-cycle, restarted".into(),
        injected: 3,
        rows_written: written,
        rows_lost: lost,
        doubled,
    })
    .unwrap();
    assert_eq!((lost, doubled), (0, 0));
}

#[test]
fn a_source_restarted_with_a_backlog() {
    let s = Setup::new();
    let mut src = Cluster::start().unwrap();
    // Commits must survive the crash below (the harness turns this off for speed).
    src.psql("postgres", "ALTER SYSTEM SET synchronous_commit = on").unwrap();
    src.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    src.create_db("m1").unwrap();
    src.psql("m1", Writer::SCHEMA).unwrap();
    s.cluster.create_db("t").unwrap();
    s.sql("t", Writer::SCHEMA);
    for (db, port) in [("m1", src.port()), ("t", s.cluster.port())] {
        s.add_db_on(db, db, port).ok();
    }
    s.ibex.sh("add table writes counter db=m1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,t:target").ok();
    // The backlog builds up while nothing runs.
    let load = writers(src.port(), &["m1"]);
    thread::sleep(Duration::from_secs(3));
    src.psql("m1", "INSERT INTO writes (db, n) SELECT 'bulk', i FROM generate_series(1, 20000) i").unwrap();
    let committed: Vec<(String, Vec<i32>)> = load.into_iter().map(|w| (w.db.clone(), w.finish())).collect();
    src.crash().unwrap();
    src.restart().unwrap();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    src.stop().unwrap();
    thread::sleep(Duration::from_secs(2));
    src.restart().unwrap();
    converge(&d, "source restart", Duration::from_secs(120));
    let (written, lost, doubled) = check_writes(&s.cluster, "t", &committed).unwrap();
    assert_eq!(s.sql("t", "SELECT count(*) FROM writes WHERE db = 'bulk'"), "20000");
    record(&FaultRecord {
        fault: "source cluster crashed and restarted with a backlog".into(),
        injected: 2,
        rows_written: written + 20000,
        rows_lost: lost,
        doubled,
    })
    .unwrap();
    assert_eq!((lost, doubled), (0, 0));
}

#[test]
fn clock_skew_decides_latest_as_documented() {
    // `latest` trusts each server's clock: a db whose clock runs ahead wins
    // conflicts even against later changes. Emulated by moving that db's
    // change times forward, as a fast clock would have written them.
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'start')");
    s.dbs_from("a", &["a", "b"]);
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=a:source,b:source").ok();
    s.sql("a", "UPDATE t SET v = 'from a, earlier' WHERE id = 1");
    thread::sleep(Duration::from_millis(50));
    s.sql("b", "UPDATE t SET v = 'from b, later' WHERE id = 1");
    let delta = s.sql("a", "SELECT 'ibex.' || quote_ident(delta_table) FROM ibex.captured");
    s.sql("a", &format!("UPDATE {delta} SET changed_at = changed_at + interval '1 hour'"));
    let run = s.run("mm");
    assert_eq!(run["conflicts"][0]["winner"], "a");
    assert_eq!(s.sql("b", "SELECT v FROM t"), "from a, earlier");
    record(&FaultRecord {
        fault: "clock skew of one hour on one master: under latest its earlier change wins, as documented (a recorded conflict)".into(),
        injected: 1,
        rows_written: 2,
        rows_lost: 0,
        doubled: 0,
    })
    .unwrap();
}
