//! Faults injected under a write load on both masters, with the real
//! daemon: SIGKILL of a source and of a target PostgreSQL (fsync on) while
//! a run is paused inside its apply transaction, SIGKILL of the daemon at
//! every failpoint of the cycle, network stalls longer than run_timeout
//! and connections cut mid-COPY (a TCP proxy), ibex's backends terminated,
//! clocks skewed by an hour under `latest`, a target's disk filling up
//! mid-apply, the control database restarted mid-run, a partition of one
//! db for minutes while another sync goes on, and TCP keepalive expiry on
//! a path whose packets the kernel drops. After each, `ibex compare` must
//! find every db equal and the independent audit (`tests/src/audit.rs`)
//! must find nothing lost, doubled or differing. Each test records what it
//! did in target/reliability/ for docs/RELIABILITY.md; `IBEX_FAULT_REPS`
//! sets the repetitions (unset: the short form of the test suite).

use std::thread;
use std::time::{Duration, Instant};

use ibex_tests::audit::{AuditedDb, Tally, check};
use ibex_tests::faults::{
    self, DBS, MaxTime, RUN_DONE, Rig, SYNC, Scenario, ScenarioRecord, SqlLoop, Tmpfs, failed_runs_with,
    ibex_inside_apply, kill_postgres, log_count, logged_error, long_form, reps, run_trouble, runs_done, wait_log,
    wait_run_done, wait_until,
};
use ibex_tests::proxy::{FaultProxy, KeepaliveProbes, PacketDrop};
use ibex_tests::{Cluster, Daemon, Setup};

/// Fails the test unless the audit is clean.
fn assert_clean(what: &str, tally: &Tally) {
    assert!(tally.written > 100, "{what}: the load wrote only {} rows", tally.written);
    assert_eq!(tally.lost, 0, "{what}: committed rows are missing: {tally:?}");
    assert_eq!(tally.doubled, 0, "{what}: rows were applied twice: {tally:?}");
    assert_eq!(tally.differing, 0, "{what}: rows differ: {tally:?}");
}

/// A daemon for the rig with `IBEX_FAILPOINTS` set (empty: none).
fn daemon(rig: &Rig, failpoints: &str) -> Daemon {
    let mut d = Daemon::configure(&rig.setup.ibex).expect("configuring the daemon");
    if !failpoints.is_empty() {
        d.ibex.envs.push(("IBEX_FAILPOINTS".into(), failpoints.into()));
    }
    d
}

#[test]
fn the_audit_catches_planted_loss_double_apply_and_difference() {
    let rig = Rig::new(&[], false, |_, port| port).expect("the rig");
    let ibex = &rig.setup.ibex;
    let m1 = rig.cluster("m1");
    let write = |from: i32, to: i32| {
        m1.psql(
            "m1",
            &format!(
                "INSERT INTO writes (db, n) SELECT 'm1', i FROM generate_series({from}, {to}) i;
                 INSERT INTO counter VALUES ('m1', {to}) ON CONFLICT (db) DO UPDATE SET n = EXCLUDED.n"
            ),
        )
        .expect("writing on m1");
    };
    let audit = |upto: i32| {
        let committed: Vec<i32> = (1..=upto).collect();
        let dbs: Vec<AuditedDb> = faults::DBS
            .iter()
            .map(|db| AuditedDb {
                name: db,
                cluster: rig.cluster(db),
                committed: (*db == "m1").then_some(committed.as_slice()),
            })
            .collect();
        check(SYNC, &dbs).expect("auditing")
    };
    write(1, 50);
    ibex.run(&["sync", "run", SYNC]).ok();
    assert_eq!(audit(50), Tally { written: 50, ..Tally::default() }, "a clean run");

    // The documented re-apply: committed everywhere, then the run fails
    // before the cursor advance, so the next run applies the window again.
    write(51, 60);
    let mut failing = ibex.clone();
    failing.envs.push(("IBEX_FAILPOINTS".into(), "before_cursor_advance".into()));
    failing.run(&["sync", "run", SYNC]).fails_with("failpoint before_cursor_advance");
    ibex.run(&["sync", "run", SYNC]).ok();
    // 10 rows and the counter, on m2 and on t.
    assert_eq!(audit(60), Tally { written: 60, reapplied: 22, ..Tally::default() }, "an expected re-apply");

    // A planted double apply: the cursor put back by hand after the window
    // was applied and advanced past.
    let cursor =
        m1.psql("m1", &format!("SELECT snapshot::text FROM ibex.cursor WHERE sync = '{SYNC}'")).expect("cursor");
    write(61, 70);
    ibex.run(&["sync", "run", SYNC]).ok();
    m1.psql("m1", &format!("UPDATE ibex.cursor SET snapshot = '{cursor}' WHERE sync = '{SYNC}'")).expect("rewinding");
    ibex.run(&["sync", "run", SYNC]).ok();
    let tally = audit(70);
    assert_eq!((tally.doubled, tally.lost, tally.differing), (22, 0, 0), "a window applied twice: {tally:?}");

    // A planted loss (a row deleted on t behind ibex's back) and a planted
    // difference (a row changed on m2).
    rig.cluster("t")
        .psql("t", "SET session_replication_role = replica; DELETE FROM writes WHERE db = 'm1' AND n = 7")
        .expect("deleting");
    rig.cluster("m2")
        .psql(
            "m2",
            "SET session_replication_role = replica; UPDATE writes SET at = at + interval '1 day' WHERE db = 'm1' AND n = 8",
        )
        .expect("changing");
    assert_eq!(
        audit(70),
        Tally { written: 70, lost: 1, doubled: 22, reapplied: 22, differing: 1 },
        "every planted fault is counted once"
    );
}

/// SIGKILL of `victim`'s whole PostgreSQL (fsync on) while a run is paused
/// inside its apply transaction, as pg_stat_activity shows, `n` times.
fn sigkill_postgres_inside_the_apply(victim: &str, id: &str, scenario: &str) {
    let started = Instant::now();
    let full = 20;
    let n = reps(full, 2);
    let mut rig = Rig::new(&[victim], true, |_, port| port).expect("the rig");
    rig.setup.ibex.sh("set run_timeout=60s retry_limit=20").ok();
    let mut d = daemon(&rig, "mid_apply=sleep(1500)");
    d.start().expect("starting the daemon");
    let load = rig.writers();
    let mut recovery = MaxTime::default();
    let mut done = 0;
    for rep in 0..n {
        // Wait for a pause in which ibex's transaction on the victim wrote.
        let mut inside = false;
        for _ in 0..20 {
            let seen = log_count(&d, "failpoint mid_apply reached");
            wait_log(&d, "failpoint mid_apply reached", seen, Duration::from_secs(120)).expect("a run reaching apply");
            thread::sleep(Duration::from_millis(100));
            if ibex_inside_apply(rig.cluster(victim), victim).expect("pg_stat_activity") {
                inside = true;
                break;
            }
        }
        assert!(inside, "rep {rep}: never caught ibex inside an apply transaction on {victim}");
        let runs = log_count(&d, RUN_DONE);
        let cluster = rig.cluster_mut(victim);
        kill_postgres(cluster).expect("killing PostgreSQL");
        let killed = Instant::now();
        cluster.restart().expect("restarting after the crash");
        wait_log(&d, RUN_DONE, runs, Duration::from_secs(180)).expect("a good run after the crash");
        recovery.add(killed.elapsed());
        done += 1;
    }
    assert!(d.run(&["ping"]).success(), "the daemon must carry on:\n{}", d.log());
    let done = Scenario {
        id: id.into(),
        scenario: scenario.into(),
        reps_planned: n,
        reps_full: full,
        reps: done,
        faults: done as u64,
        max_recovery_ms: recovery.get(),
        observed: None,
    };
    let tally = rig.finish(&d, load, started, done).expect("settling and recording");
    assert_clean(scenario, &tally);
}

#[test]
fn sigkill_of_a_source_postgres_inside_the_apply() {
    sigkill_postgres_inside_the_apply(
        "m1",
        "pg_kill_source",
        "SIGKILL of a source PostgreSQL (postmaster and backends, fsync on) while ibex's apply transaction on it is open",
    );
}

#[test]
fn sigkill_of_a_target_postgres_inside_the_apply() {
    sigkill_postgres_inside_the_apply(
        "t",
        "pg_kill_target",
        "SIGKILL of a target PostgreSQL (postmaster and backends, fsync on) while ibex's apply transaction on it is open",
    );
}

/// The cycle's failpoints, in order (see engine/src/sync/cycle/mod.rs,
/// cycle/stream.rs, cycle/merge.rs and sync/kid.rs).
const POINTS: [&str; 5] = ["after_capture_read", "mid_copy", "mid_apply", "between_commits", "before_cursor_advance"];

#[test]
fn sigkill_of_the_daemon_at_every_failpoint() {
    let started = Instant::now();
    let full = 10;
    let n = reps(full, 1);
    let rig = Rig::new(&[], true, |_, port| port).expect("the rig");
    let load = rig.writers();
    let mut recovery = MaxTime::default();
    let mut kills = 0u64;
    let mut at_points = 0;
    let mut d = daemon(&rig, "");
    for rep in 0..n {
        for point in POINTS {
            // A daemon that pauses at `point` in every run, killed there.
            d = daemon(&rig, &format!("{point}=sleep(60000)"));
            d.start().unwrap_or_else(|e| panic!("start at {point}, rep {rep}: {e}"));
            wait_log(&d, &format!("failpoint {point} reached"), 0, Duration::from_secs(120))
                .unwrap_or_else(|e| panic!("{point}: {e}"));
            d.kill();
            let killed = Instant::now();
            at_points += 1;
            kills += 1;
            // A plain daemon carries on from there.
            d = daemon(&rig, "");
            d.start().expect("starting after the kill");
            wait_log(&d, RUN_DONE, 0, Duration::from_secs(120)).expect("a good run after the kill");
            recovery.add(killed.elapsed());
        }
    }
    let done = Scenario {
        id: "daemon_kill".into(),
        scenario: format!(
            "SIGKILL of the ibex daemon paused at each failpoint of the cycle ({}), fsync on",
            POINTS.join(", ")
        ),
        reps_planned: n * POINTS.len() as u32,
        reps_full: full * POINTS.len() as u32,
        reps: at_points,
        faults: kills,
        max_recovery_ms: recovery.get(),
        observed: None,
    };
    let tally = rig.finish(&d, load, started, done).expect("settling and recording");
    assert_clean("daemon kills", &tally);
}

#[test]
fn network_stalls_past_run_timeout_and_cuts_mid_copy() {
    let started = Instant::now();
    let full = 10;
    let n = reps(full, 2);
    let mut proxies: Vec<(String, FaultProxy)> = Vec::new();
    let rig = Rig::new(&[], false, |db, port| {
        let proxy = FaultProxy::start(port).expect("starting a fault proxy");
        let port = proxy.port;
        proxies.push((db.to_string(), proxy));
        port
    })
    .expect("the rig");
    let proxy = |db: &str| &proxies.iter().find(|(name, _)| name == db).expect("a proxy per db").1;
    let run_timeout = Duration::from_secs(5);
    rig.setup.ibex.sh("set run_timeout=5s retry_limit=3").ok();
    // Short enough that a run with a few COPY pieces stays within run_timeout.
    let mut d = daemon(&rig, "mid_copy=sleep(300)");
    d.start().expect("starting the daemon");
    let load = rig.writers();
    let mut recovery = MaxTime::default();
    let (mut stalls, mut cuts) = (0u64, 0u64);
    let timeouts_before = log_count(&d, "longer than run_timeout");
    for rep in 0..n {
        // A stall of every byte to and from t, three times run_timeout.
        let victim = ["t", "m2"][rep as usize % 2];
        proxy(victim).stall();
        thread::sleep(run_timeout * 3);
        let runs = log_count(&d, RUN_DONE);
        proxy(victim).heal();
        let healed = Instant::now();
        stalls += 1;
        wait_log(&d, RUN_DONE, runs, Duration::from_secs(180)).expect("a good run after the stall");
        recovery.add(healed.elapsed());
        // Every connection to the victim cut while a COPY is open.
        let seen = log_count(&d, "failpoint mid_copy reached");
        wait_log(&d, "failpoint mid_copy reached", seen, Duration::from_secs(60)).expect("a COPY");
        let failed = log_count(&d, "run failed");
        proxy(victim).cut();
        let cut = Instant::now();
        wait_log(&d, "run failed", failed, Duration::from_secs(60)).expect("the cut run fails");
        cuts += 1;
        let runs = log_count(&d, RUN_DONE);
        wait_log(&d, RUN_DONE, runs, Duration::from_secs(180)).expect("a good run after the cut");
        recovery.add(cut.elapsed());
    }
    let timeouts = log_count(&d, "longer than run_timeout") - timeouts_before;
    assert!(timeouts as u64 >= stalls, "only {timeouts} run_timeout expiries for {stalls} stalls:\n{}", d.log());
    let done = Scenario {
        id: "network".into(),
        scenario: format!(
            "network stalls of {} s (3 × run_timeout; {timeouts} run_timeout expiries seen) and every connection cut while a COPY is open (TCP proxy), alternately on t and m2",
            (run_timeout * 3).as_secs()
        ),
        reps_planned: n,
        reps_full: full,
        reps: stalls.min(cuts) as u32,
        faults: stalls + cuts,
        max_recovery_ms: recovery.get(),
        observed: None,
    };
    let tally = rig.finish(&d, load, started, done).expect("settling and recording");
    assert_clean("network faults", &tally);
}

#[test]
fn terminated_engine_connections() {
    let started = Instant::now();
    let full = 30;
    let n = reps(full, 10);
    let rig = Rig::new(&[], false, |_, port| port).expect("the rig");
    let mut d = daemon(&rig, "");
    d.start().expect("starting the daemon");
    let load = rig.writers();
    let mut killed = 0u64;
    let mut rounds = 0;
    let mut pause = 1u64;
    for _ in 0..n {
        // A pseudo-random pause, so the terminations land in every phase.
        pause = (pause * 7 + 3) % 11;
        thread::sleep(Duration::from_millis(100 + 30 * pause));
        let terminated: u64 = rig
            .setup
            .sql(
                "postgres",
                "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity
                   WHERE application_name LIKE 'ibex%' AND pid <> pg_backend_pid() ORDER BY random() LIMIT 2) x",
            )
            .parse()
            .unwrap_or(0);
        killed += terminated;
        rounds += u32::from(terminated > 0);
    }
    assert!(d.run(&["ping"]).success(), "the daemon must survive:\n{}", d.log());
    let done = Scenario {
        id: "terminated_connections".into(),
        scenario: "pg_terminate_backend of ibex's connections at pseudo-random moments".into(),
        reps_planned: n,
        reps_full: full,
        reps: rounds,
        faults: killed,
        max_recovery_ms: None,
        observed: None,
    };
    let tally = rig.finish(&d, load, started, done).expect("settling and recording");
    assert_clean("terminated connections", &tally);
}

/// Two masters a and b change one row, a first; a's change times are moved
/// by `skew` (as a clock that far off would have written them). Returns the
/// conflict's winner, the values a and b hold, and the server version.
fn skewed_conflict(skew: &str) -> (String, String, String, String) {
    let s = Setup::new();
    s.cluster.create_db("a").expect("creating a");
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'start')");
    s.dbs_from("a", &["a", "b"]);
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=a:source,b:source").ok();
    s.sql("a", "UPDATE t SET v = 'from a, earlier' WHERE id = 1");
    thread::sleep(Duration::from_millis(50));
    s.sql("b", "UPDATE t SET v = 'from b, later' WHERE id = 1");
    let delta = s.sql("a", "SELECT 'ibex.' || quote_ident(delta_table) FROM ibex.captured");
    s.sql("a", &format!("UPDATE {delta} SET changed_at = changed_at + interval '{skew}'"));
    let run = s.run("mm");
    let winner = run["conflicts"][0]["winner"].as_str().unwrap_or("no conflict recorded").to_string();
    (winner, s.sql("a", "SELECT v FROM t"), s.sql("b", "SELECT v FROM t"), s.sql("postgres", "SELECT version()"))
}

#[test]
fn clock_skew_of_an_hour_under_latest() {
    let started = Instant::now();
    let mut observed = Vec::new();
    let mut server_version = String::new();
    let mut outcomes = Vec::new();
    for (skew, words) in [("1 hour", "+1 h"), ("-1 hour", "−1 h")] {
        let (winner, on_a, on_b, version) = skewed_conflict(skew);
        server_version = version;
        observed.push(format!("a's clock {words}: winner {winner}, a holds {on_a:?}, b holds {on_b:?}"));
        // `latest` trusts the clocks: the db whose clock runs ahead wins.
        let expected = if skew.starts_with('-') { "b" } else { "a" };
        outcomes.push((skew, winner == expected && on_a == on_b));
    }
    faults::record(&ScenarioRecord {
        done: Scenario {
            id: "clock_skew".into(),
            scenario: "clock skew of ±1 h on master a under `latest` (a changes a row, b changes it 50 ms later)"
                .into(),
            reps_planned: 2,
            reps_full: 2,
            reps: observed.len() as u32,
            faults: observed.len() as u64,
            max_recovery_ms: None,
            observed: Some(observed.join("; ")),
        },
        tally: None,
        server_version,
        seconds: started.elapsed().as_secs_f64(),
    })
    .expect("recording");
    for (skew, as_documented) in outcomes {
        assert!(as_documented, "skew {skew}: not the documented outcome: {observed:?}");
    }
}

/// What PostgreSQL says when a file cannot grow (SQLSTATE 53100, disk_full).
const DISK_FULL: [&str; 3] = ["could not extend", "No space left on device", "53100"];

/// Fills tablespace `ibex_small` on `db` with table `filler`, in ever
/// smaller batches, until not even one row fits.
fn fill_tablespace(c: &Cluster, db: &str) {
    c.psql(db, "CREATE TABLE filler (x text) TABLESPACE ibex_small").expect("creating the filler");
    for batch in [2000, 100, 5, 1] {
        for _ in 0..10_000 {
            let insert =
                format!("INSERT INTO filler SELECT repeat(md5(i::text), 30) FROM generate_series(1, {batch}) i");
            match c.psql(db, &insert) {
                Ok(_) => {}
                Err(e) if DISK_FULL.iter().any(|n| format!("{e:#}").contains(n)) => break,
                Err(e) => panic!("filling the tablespace: {e:#}"),
            }
        }
    }
}

#[test]
fn a_targets_disk_fills_up_mid_apply() {
    let started = Instant::now();
    let full = 5;
    let n = reps(full, 1);
    // Mounted before the rig, so it is unmounted after the clusters stopped.
    let disk = Tmpfs::mount(24).expect("mounting a 24 MB tmpfs (the fault suite runs as root)");
    let rig = Rig::new(&[], false, |_, port| port).expect("the rig");
    let t = rig.cluster("t");
    t.psql("postgres", &format!("CREATE TABLESPACE ibex_small LOCATION '{}'", disk.dir.display()))
        .expect("a tablespace on the tmpfs");
    t.psql(
        "t",
        "ALTER TABLE writes SET TABLESPACE ibex_small; ALTER INDEX writes_pkey SET TABLESPACE ibex_small;
         ALTER TABLE counter SET TABLESPACE ibex_small; ALTER INDEX counter_pkey SET TABLESPACE ibex_small",
    )
    .expect("moving t's tables onto the tmpfs");
    let mut d = daemon(&rig, "");
    d.start().expect("starting the daemon");
    let load = rig.writers();
    wait_run_done(&d, SYNC, 0, Duration::from_secs(120)).expect("a first good run");
    let mut recovery = MaxTime::default();
    let (mut done, mut failed) = (0, 0);
    for rep in 0..n {
        let before = failed_runs_with(&d, SYNC, &DISK_FULL);
        fill_tablespace(t, "t");
        assert!(disk.free_bytes().expect("df") < 64 * 1024, "rep {rep}: the tmpfs is not full");
        // The masters write on; every run must now fail on t, and be retried.
        wait_until(&d, "two runs failing on the full disk", Duration::from_secs(120), || {
            failed_runs_with(&d, SYNC, &DISK_FULL) >= before + 2
        })
        .unwrap_or_else(|e| panic!("rep {rep}: {e}"));
        assert!(d.run(&["ping"]).success(), "the daemon must carry on with a full disk:\n{}", d.log());
        let runs = runs_done(&d, SYNC);
        t.psql("t", "DROP TABLE filler").expect("freeing the space");
        let freed = Instant::now();
        wait_run_done(&d, SYNC, runs, Duration::from_secs(180)).expect("a good run once there is space");
        recovery.add(freed.elapsed());
        failed += failed_runs_with(&d, SYNC, &DISK_FULL) - before;
        done += 1;
    }
    let error = logged_error(&d, &["run failed", "could not extend"], 400)
        .and_then(|e| e.find("could not extend").map(|at| e[at..].chars().take(140).collect::<String>()))
        .unwrap_or_else(|| "no 'could not extend' error logged".into());
    let done = Scenario {
        id: "disk_full".into(),
        scenario: "a target's disk full mid-apply (its tables in a tablespace on a 24 MB tmpfs, filled up by another \
                   table while the masters write; space freed by dropping that table)"
            .into(),
        reps_planned: n,
        reps_full: full,
        reps: done,
        faults: done as u64,
        max_recovery_ms: recovery.get(),
        observed: Some(format!("{failed} runs failed and were retried while full, e.g. {error}")),
    };
    let tally = rig.finish(&d, load, started, done).expect("settling and recording");
    assert_clean("disk full", &tally);
}

#[test]
fn the_control_database_restarted_mid_run() {
    let started = Instant::now();
    let full = 10;
    let n = reps(full, 2);
    // Every db on a cluster of its own: the control's cluster holds only the catalog.
    let mut rig = Rig::new(&DBS, false, |_, port| port).expect("the rig");
    rig.setup.ibex.sh("set run_timeout=60s").ok();
    let mut d = daemon(&rig, "mid_apply=sleep(1500)");
    d.start().expect("starting the daemon");
    let load = rig.writers();
    let mut recovery = MaxTime::default();
    let mut done = 0;
    let failed_before = log_count(&d, "run failed");
    for rep in 0..n {
        // A run paused inside its apply transaction on every db.
        let seen = log_count(&d, "failpoint mid_apply reached");
        wait_log(&d, "failpoint mid_apply reached", seen, Duration::from_secs(120)).expect("a run reaching apply");
        let runs = runs_done(&d, SYNC);
        let restarted = Instant::now();
        rig.setup.cluster.restart().unwrap_or_else(|e| panic!("rep {rep}: restarting the control's PostgreSQL: {e:#}"));
        wait_run_done(&d, SYNC, runs, Duration::from_secs(180)).expect("a good run after the control's restart");
        recovery.add(restarted.elapsed());
        done += 1;
    }
    let failed = log_count(&d, "run failed") - failed_before;
    assert!(d.run(&["ping"]).success(), "the daemon must carry on:\n{}", d.log());
    let done = Scenario {
        id: "control_restart".into(),
        scenario: "the control database's PostgreSQL restarted (pg_ctl restart -m fast) while a run is paused inside \
                   its apply transaction"
            .into(),
        reps_planned: n,
        reps_full: full,
        reps: done,
        faults: done as u64,
        max_recovery_ms: recovery.get(),
        observed: Some(format!("{failed} runs failed across the restarts; the daemon reconnected by itself")),
    };
    let tally = rig.finish(&d, load, started, done).expect("settling and recording");
    assert_clean("control restart", &tally);
}

#[test]
fn a_partition_of_one_db_for_minutes_while_another_sync_goes_on() {
    let started = Instant::now();
    let full = 2;
    let n = reps(full, 2);
    let window = if long_form() { Duration::from_secs(120) } else { Duration::from_secs(15) };
    let mut proxies: Vec<(String, FaultProxy)> = Vec::new();
    let rig = Rig::new(&[], false, |db, port| {
        let proxy = FaultProxy::start(port).expect("starting a fault proxy");
        let port = proxy.port;
        proxies.push((db.to_string(), proxy));
        port
    })
    .expect("the rig");
    let proxy = |db: &str| &proxies.iter().find(|(name, _)| name == db).expect("a proxy per db").1;
    // A second sync for each victim, without it, on a table and herd of its own.
    let side = |victim: &str| if victim == "t" { "side_m2" } else { "side_t" };
    let ibex = &rig.setup.ibex;
    for db in DBS {
        rig.cluster(db)
            .psql(db, "CREATE TABLE side_m2 (id int PRIMARY KEY); CREATE TABLE side_t (id int PRIMARY KEY)")
            .expect("the second syncs' tables");
    }
    for (sync, target) in [("side_m2", "m2"), ("side_t", "t")] {
        ibex.sh(&format!("add table {sync} db=m1 herd=h_{sync}")).ok();
        ibex.sh(&format!("add sync {sync} herd=h_{sync} dbs=m1:source,{target}:target")).ok();
    }
    ibex.sh("set run_timeout=5s").ok();
    let mut d = daemon(&rig, "");
    d.start().expect("starting the daemon");
    let load = rig.writers();
    let side_load = SqlLoop::start(
        rig.cluster("m1").port(),
        "m1",
        "INSERT INTO side_m2 VALUES ({n}); INSERT INTO side_t VALUES ({n})",
        Duration::from_millis(100),
    );
    for sync in [SYNC, "side_m2", "side_t"] {
        wait_run_done(&d, sync, 0, Duration::from_secs(120)).expect("a first good run of every sync");
    }
    let mut recovery = MaxTime::default();
    let mut observed = Vec::new();
    let mut done = 0;
    for rep in 0..n {
        let victim = ["t", "m2"][rep as usize % 2];
        let other = side(victim);
        let (side_runs, failed) = (runs_done(&d, other), run_trouble(&d, SYNC));
        proxy(victim).blackhole();
        thread::sleep(window);
        let side_during = runs_done(&d, other) - side_runs;
        let failed_during = run_trouble(&d, SYNC) - failed;
        let runs = runs_done(&d, SYNC);
        proxy(victim).heal();
        let healed = Instant::now();
        assert!(failed_during >= 1, "rep {rep}: no run of {SYNC} failed while {victim} was cut off:\n{}", d.log());
        assert!(
            side_during >= 3,
            "rep {rep}: {other} completed only {side_during} good runs while {victim} was cut off:\n{}",
            d.log()
        );
        wait_run_done(&d, SYNC, runs, Duration::from_secs(240)).expect("a good run after the partition");
        recovery.add(healed.elapsed());
        observed.push(format!(
            "{victim} cut off: {other} {side_during} good runs, {SYNC} {failed_during} failed or timed-out runs meanwhile"
        ));
        done += 1;
    }
    let side_writes = side_load.finish();
    assert!(side_writes > 0, "the second syncs' load wrote nothing");
    faults::wait_caught_up(&d, SYNC, 3, 500, Duration::from_secs(240)).expect("the backlog drained under load");
    let done = Scenario {
        id: "partition".into(),
        scenario: format!(
            "a partition of one db for {} s (its TCP proxy black-holed: new connections hang, open ones stall), \
             alternately t and m2, while a second sync without it (m1 → m2 or m1 → t, a table of its own) goes on",
            window.as_secs()
        ),
        reps_planned: n,
        reps_full: full,
        reps: done,
        faults: done as u64,
        max_recovery_ms: recovery.get(),
        observed: Some(observed.join("; ")),
    };
    let tally = rig.finish(&d, load, started, done).expect("settling and recording");
    assert_clean("partition", &tally);
}

/// How many established connections to local port `port` have a TCP
/// keepalive timer running (`ss -o`).
fn keepalive_timers(port: u16) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", "dport", "=", &format!(":{port}")])
        .output()
        .expect("running ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("timer:(keepalive")).count()
}

#[test]
fn tcp_keepalive_expiry_when_packets_are_dropped() {
    let started = Instant::now();
    let full = 2;
    let n = reps(full, 1);
    // ibex reaches m2 through a proxy port whose packets the kernel drops
    // (the writers go to m2 directly); the proxy itself only passes bytes.
    let mut path: Option<FaultProxy> = None;
    let rig = Rig::new(&[], false, |db, port| {
        if db != "m2" {
            return port;
        }
        let proxy = FaultProxy::start(port).expect("starting a proxy");
        let port = proxy.port;
        path = Some(proxy);
        port
    })
    .expect("the rig");
    let path_port = path.as_ref().expect("m2's proxy").port;
    let run_timeout = Duration::from_secs(5);
    rig.setup.ibex.sh("set run_timeout=5s").ok();
    // ibex's sockets keep alive after 30 s idle (engine/src/pg/mod.rs) and
    // leave the probing to the kernel: 2 s × 3 probes here instead of
    // 75 s × 9, so a dead path is declared dead after ~36 s, not ~12 min.
    let _probes = KeepaliveProbes::set(2, 3).expect("setting the kernel's keepalive probing (root)");
    let mut d = daemon(&rig, "");
    d.start().expect("starting the daemon");
    let load = rig.writers();
    wait_run_done(&d, SYNC, 0, Duration::from_secs(120)).expect("a first good run");
    let silence = if long_form() { Duration::from_secs(60) } else { Duration::from_secs(40) };
    // The daemon's LISTEN connection to m2 sends nothing and the proxy
    // never closes it, so while every packet is dropped only its keepalive
    // can end it (hub.rs logs the end; the error itself is a debug line).
    let expired = |d: &Daemon| {
        d.log()
            .lines()
            .filter(|l| l.contains("autokick connection closed") && l.split_whitespace().any(|w| w == "db=m2"))
            .count()
    };
    let mut recovery = MaxTime::default();
    let mut observed = Vec::new();
    let mut done = 0;
    let timeouts_before = log_count(&d, "longer than run_timeout");
    let reconnected = |d: &Daemon| {
        d.log()
            .lines()
            .filter(|l| l.contains("autokick listener connected again") && l.split_whitespace().any(|w| w == "db=m2"))
            .count()
    };
    for rep in 0..n {
        // The listening connection of the previous repetition is back.
        wait_until(&d, "m2's listening connection back", Duration::from_secs(180), || reconnected(&d) >= expired(&d))
            .unwrap_or_else(|e| panic!("rep {rep}: {e}"));
        let (expiries, failed) = (expired(&d), run_trouble(&d, SYNC));
        let mut dropping = PacketDrop::start(path_port).expect("dropping packets with iptables (root)");
        let dropped = Instant::now();
        let armed = keepalive_timers(path_port);
        assert!(armed >= 1, "rep {rep}: no connection to m2's path has a keepalive timer:\n{}", d.log());
        wait_until(
            &d,
            "the keepalive of m2's listening connection expiring",
            silence + Duration::from_secs(60),
            || expired(&d) > expiries,
        )
        .unwrap_or_else(|e| panic!("rep {rep}: {e}"));
        let noticed = dropped.elapsed();
        thread::sleep(silence.saturating_sub(dropped.elapsed()));
        let failed_during = run_trouble(&d, SYNC) - failed;
        let runs = runs_done(&d, SYNC);
        dropping.heal().expect("removing the iptables rules");
        let healed = Instant::now();
        assert!(failed_during >= 1, "rep {rep}: no run of {SYNC} failed while m2 was silent:\n{}", d.log());
        wait_run_done(&d, SYNC, runs, Duration::from_secs(180)).expect("a good run once packets flow");
        recovery.add(healed.elapsed());
        observed.push(format!("keepalive expiry after {:.0} s ({armed} connections with a keepalive timer), {failed_during} failed or timed-out runs", noticed.as_secs_f64()));
        done += 1;
    }
    let timeouts = log_count(&d, "longer than run_timeout") - timeouts_before;
    faults::wait_caught_up(&d, SYNC, 3, 500, Duration::from_secs(240)).expect("the backlog drained under load");
    let done = Scenario {
        id: "keepalive".into(),
        scenario: format!(
            "every packet between ibex and m2 dropped by the kernel (iptables DROP: no RST) for {} s; TCP keepalive \
             (ibex: 30 s idle; kernel probing 2 s × 3) expires the idle LISTEN connection, runs hit run_timeout ({} s; \
             {timeouts} expiries seen) or connect_timeout",
            silence.as_secs(),
            run_timeout.as_secs()
        ),
        reps_planned: n,
        reps_full: full,
        reps: done,
        faults: done as u64,
        max_recovery_ms: recovery.get(),
        observed: Some(observed.join("; ")),
    };
    let tally = rig.finish(&d, load, started, done).expect("settling and recording");
    assert_clean("keepalive expiry", &tally);
}
