//! Several daemons on one catalog: each sync is run by the daemon holding
//! its lease; when the holder stops renewing it (SIGSTOP mid-run, SIGKILL),
//! another takes the sync over within the lease's life, and the old holder,
//! resumed, cannot commit. An audit trigger on the target (which ibex does
//! not know about) counts every row version that arrives: none twice.

use std::time::{Duration, Instant};

use ibex_tests::{Daemon, Setup};

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid} failed");
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn holder_pid(d: &Daemon, sync: &str) -> Option<u32> {
    let json = d.run(&["list", "daemons", "--json"]).ok().json();
    json.as_array()?
        .iter()
        .find(|d| d["syncs"].as_array().is_some_and(|s| s.iter().any(|x| x == sync)))
        .and_then(|d| d["pid"].as_u64())
        .map(|p| p as u32)
}

#[test]
fn a_second_daemon_takes_over_a_stopped_or_killed_holder_and_nothing_is_applied_twice() {
    let s = Setup::new();
    s.cluster.create_db("m1").unwrap();
    s.sql("m1", "CREATE TABLE acct (id int PRIMARY KEY, note text)");
    s.dbs_from("m1", &["m1", "m2"]);
    s.sql(
        "m2",
        "CREATE TABLE audit_log (id int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
         -- It fires in ibex's sessions, whose search_path holds only
         -- pg_catalog and pg_temp (as PostgreSQL's replication workers'):
         -- it names its own.
         CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS
           $$ BEGIN INSERT INTO audit_log (id) VALUES (NEW.id); RETURN NULL; END $$;
         CREATE TRIGGER audit AFTER INSERT OR UPDATE ON acct FOR EACH ROW EXECUTE FUNCTION audit();
         -- ibex applies as a replica: make the audit see its writes too.
         ALTER TABLE acct ENABLE ALWAYS TRIGGER audit;",
    );
    s.ibex.sh("add table acct db=m1 herd=h").ok();
    s.ibex.sh("add sync one herd=h dbs=m1:source,m2:target").ok();
    s.ibex.sh("set lease_ttl=3s").ok();
    s.sql("m1", "INSERT INTO acct SELECT i, 'first' FROM generate_series(1, 100) i");

    // A pauses 8 s inside every run's apply transaction.
    let mut slow = s.ibex.clone();
    slow.envs.push(("IBEX_FAILPOINTS".into(), "mid_apply=sleep(8000)".into()));
    let mut a = Daemon::configure(&slow).unwrap();
    a.start().unwrap();
    let a_pid = a.pid().unwrap();
    wait_for("A takes the lease", Duration::from_secs(20), || holder_pid(&a, "one") == Some(a_pid));
    wait_for("A's run reaches the apply", Duration::from_secs(20), || a.log().contains("failpoint mid_apply reached"));
    signal(a_pid, "-STOP");
    let stopped = Instant::now();

    let mut b = Daemon::configure(&s.ibex).unwrap();
    b.start().unwrap();
    let b_pid = b.pid().unwrap();
    let count = |sql: &str| s.sql("m2", sql).parse::<i64>().unwrap();
    wait_for("B applies the window A was applying", Duration::from_secs(30), || {
        count("SELECT count(*) FROM acct") == 100
    });
    let takeover = stopped.elapsed();
    eprintln!("takeover after SIGSTOP of the holder: {takeover:?}");
    assert!(takeover < Duration::from_secs(15), "takeover took {takeover:?}");
    assert_eq!(holder_pid(&b, "one"), Some(b_pid));
    let status = b.run(&["status", "one"]).ok().stdout;
    assert!(status.contains("Run by daemon") && status.contains(&format!(":{b_pid}:")), "{status}");
    assert!(b.log().contains("took over the sync"), "{}", b.log());

    // A resumes: its run's transactions were ended, so it cannot commit,
    // and it learns it lost the lease.
    signal(a_pid, "-CONT");
    wait_for("A gives the sync up", Duration::from_secs(30), || a.log().contains("lost the sync's lease"));
    s.sql("m1", "INSERT INTO acct SELECT i, 'second' FROM generate_series(101, 150) i");
    s.sql("m1", "UPDATE acct SET note = 'changed' WHERE id <= 10");
    wait_for("B applies the next changes", Duration::from_secs(30), || {
        count("SELECT count(*) FROM acct") == 150 && count("SELECT count(*) FROM acct WHERE note = 'changed'") == 10
    });
    // Let A's paused run (if it were still going) reach its commit.
    std::thread::sleep(Duration::from_secs(9));
    s.assert_same(&["m1", "m2"], &["acct"]);
    // Every key arrived once, plus once more for each of the 10 updates.
    assert_eq!(count("SELECT count(*) FROM audit_log"), 160, "rows applied twice");
    assert_eq!(count("SELECT count(*) FROM (SELECT id FROM audit_log GROUP BY id HAVING count(*) > 2) x"), 0);
    assert_eq!(holder_pid(&b, "one"), Some(b_pid));

    // SIGKILL of the holder: A (still running, without the lease) takes over.
    b.kill();
    let killed = Instant::now();
    s.sql("m1", "INSERT INTO acct SELECT i, 'third' FROM generate_series(151, 200) i");
    wait_for("A takes the sync over from the killed B", Duration::from_secs(40), || {
        count("SELECT count(*) FROM acct") == 200
    });
    assert!(killed.elapsed() < Duration::from_secs(15) + Duration::from_secs(9), "took {:?}", killed.elapsed());
    assert_eq!(holder_pid(&a, "one"), Some(a_pid));
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(count("SELECT count(*) FROM audit_log"), 210, "rows applied twice");
    let daemons = a.run(&["list", "daemons"]).ok().stdout;
    assert!(daemons.contains(&a_pid.to_string()) && !daemons.contains(&format!(" {b_pid} ")), "{daemons}");
}
