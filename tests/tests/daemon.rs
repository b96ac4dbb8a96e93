//! The real `ibex` daemon against harness clusters: autokick latency under
//! load, checktime, kick --wait, kill -9 recovery, a database going away,
//! VAC, reload, start/stop/ping, logs and metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ibex_tests::faults::wait_until;
use ibex_tests::{Cluster, Daemon, Setup};

/// Polls `check` every 20 ms until it holds or `limit` passes.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn pgbench_in_background(cluster: &Cluster, db: &str, seconds: u32) -> thread::JoinHandle<()> {
    let port = cluster.port().to_string();
    let db = db.to_string();
    thread::spawn(move || {
        let out = std::process::Command::new("pgbench")
            .args(["-n", "-c", "2", "-T", &seconds.to_string(), "-h", "127.0.0.1", "-U", "postgres", "-p", &port, &db])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    })
}

/// No checktime: only autokick can deliver. The bound is generous on
/// purpose (the suite runs four tests at once on two cores); the latency
/// itself is measured by the bench (`ibex-bench latency`), not asserted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autokick_delivers_every_commit_under_load() {
    let s = Setup::new();
    s.cluster.create_pgbench_db("src", 1).unwrap();
    s.sql("src", "CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    s.dbs_from("src", &["src", "dst1", "dst2"]);
    s.ibex.sh("add all tables db=src herd=h").ok();
    s.ibex.sh("add sync live herd=h dbs=src:source,dst1:target,dst2:target").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let load = pgbench_in_background(&s.cluster, "src", 12);
    let src = s.cluster.connect("src").await.unwrap();
    let dsts = [s.cluster.connect("dst1").await.unwrap(), s.cluster.connect("dst2").await.unwrap()];
    let mut worst = Duration::ZERO;
    for id in 0..20 {
        let started = Instant::now();
        src.execute("INSERT INTO marks (id) VALUES ($1)", &[&id]).await.unwrap();
        for dst in &dsts {
            loop {
                let found: i64 =
                    dst.query_one("SELECT count(*) FROM marks WHERE id = $1", &[&id]).await.unwrap().get(0);
                if found == 1 {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(5), "row {id} took over 5 s:\n{}", d.log());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("worst commit-to-visible under load: {worst:?}");
    load.join().unwrap();
    s.ibex.run(&["--config", &d.config_path().display().to_string(), "kick", "live", "--wait", "60"]).ok();
    s.assert_same(&["src", "dst1", "dst2"], &["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "marks"]);
}

/// Two masters under pgbench: the one-row pgbench_branches is written on
/// both, so nearly every optimistic apply meets a write conflict and
/// retries with the writers held off. After one, the daemon's next runs
/// hold them off from the start: most runs need one attempt.
#[test]
fn after_a_write_conflict_runs_hold_writers_off_from_the_start() {
    let s = Setup::new();
    s.cluster.create_pgbench_db("m1", 1).unwrap();
    s.dbs_from("m1", &["m1", "m2"]);
    s.ibex.sh("add all tables db=m1 herd=h").ok();
    s.ibex.sh("add sync hot herd=h dbs=m1:source,m2:source").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let loads = [pgbench_in_background(&s.cluster, "m1", 8), pgbench_in_background(&s.cluster, "m2", 8)];
    for load in loads {
        load.join().unwrap();
    }
    d.run(&["kick", "hot", "--wait", "60"]).ok();
    let counts = s.sql(
        "ibex",
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE attempts > 1) FROM ibex.run WHERE sync = 'hot' AND state = 'good'",
    );
    let (runs, retried) = counts.split_once(' ').expect("two counts");
    let (runs, retried): (u32, u32) = (runs.parse().unwrap(), retried.parse().unwrap());
    eprintln!("{runs} runs under load, {retried} retried");
    assert!(retried > 0, "no run met a write conflict, so this test showed nothing:\n{}", d.log());
    assert!(retried * 2 < runs, "{retried} of {runs} runs retried after a write conflict:\n{}", d.log());
    s.assert_same(&["m1", "m2"], &["pgbench_accounts", "pgbench_branches", "pgbench_tellers"]);
}

#[test]
fn checktime_runs_without_kicks_and_kick_wait_reports() {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.dbs_from("a", &["a", "b", "c"]);
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync timed herd=h dbs=a:source,b:target autokick=false checktime=1s").ok();
    s.ibex.sh("add sync kicked herd=h dbs=a:source,c:target autokick=false").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    // Kicking needs a daemon.
    d.run(&["kick", "kicked"]).fails_with("ibex is not running");
    d.start().unwrap();
    s.sql("a", "INSERT INTO t VALUES (1, 'one')");
    eventually(Duration::from_secs(5), "checktime to apply the row", || s.sql("b", "SELECT count(*) FROM t") == "1");
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.sql("c", "SELECT count(*) FROM t"), "0", "no autokick, no checktime: nothing runs");
    let out = d.run(&["kick", "kicked", "--wait", "30"]).ok();
    assert!(out.stdout.contains("Sync kicked: run") && out.stdout.contains("good"), "{}", out.stdout);
    assert!(out.stdout.contains("1 inserted"), "{}", out.stdout);
    assert_eq!(s.sql("c", "SELECT v FROM t"), "one");
    // A failing run: exit code and the error.
    s.sql("c", "ALTER TABLE t RENAME TO t_gone");
    s.sql("a", "INSERT INTO t VALUES (2, 'two')");
    let failed = d.run(&["kick", "kicked", "--wait", "30"]).fails_with("run of sync kicked failed");
    assert!(failed.stdout.contains("bad"), "{}", failed.stdout);
    d.run(&["kick", "nosuch"]).fails_with("sync \"nosuch\" does not exist");
    d.run(&["deactivate", "kicked"]).ok();
    d.run(&["kick", "kicked"]).fails_with("sync kicked is inactive");
    // Without --wait, kick returns at once.
    d.run(&["kick", "timed"]).ok();
}

#[test]
fn kill_9_mid_runs_loses_no_change() {
    kill_9_mid_runs("trigger");
}

/// With WAL capture the kill also lands between a slot's decode and its
/// advance: nothing may be lost or decoded twice into a doubled row.
#[test]
fn kill_9_mid_runs_loses_no_change_with_wal_capture() {
    kill_9_mid_runs("wal");
}

fn kill_9_mid_runs(capture: &str) {
    let s = Setup::new();
    s.cluster.create_db("m1").unwrap();
    s.sql("m1", "CREATE TABLE writes (db text, n int, at timestamptz DEFAULT clock_timestamp(), PRIMARY KEY (db, n))");
    s.dbs_from("m1", &["m1", "m2"]);
    for db in ["m1", "m2"] {
        s.ibex.run(&["update", "db", db, &format!("capture={capture}")]).ok();
    }
    s.ibex.sh("add table writes db=m1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let port = s.cluster.port();
    let writers: Vec<_> = ["m1", "m2"]
        .into_iter()
        .map(|db| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut written = Vec::new();
                let mut client = postgres_sync(port, db).unwrap_or_else(|e| panic!("connecting to {db}: {e}"));
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    client(&format!("INSERT INTO writes (db, n) VALUES ('{db}', {n})"));
                    written.push(n);
                }
                written
            })
        })
        .collect();
    for round in 0..4 {
        thread::sleep(Duration::from_millis(700));
        d.kill();
        thread::sleep(Duration::from_millis(200));
        d.start().unwrap_or_else(|e| panic!("restart {round}: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<Vec<i32>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    d.run(&["kick", "mm", "--wait", "60"]).ok();
    s.assert_same(&["m1", "m2"], &["writes"]);
    for (db, written) in ["m1", "m2"].iter().zip(&logs) {
        assert!(written.len() > 50, "the load wrote too little on {db}");
        let present: BTreeSet<i32> = s
            .sql("m2", &format!("SELECT string_agg(n::text, ',') FROM writes WHERE db = '{db}'"))
            .split(',')
            .map(|n| n.parse().unwrap())
            .collect();
        let lost: Vec<&i32> = written.iter().filter(|n| !present.contains(n)).collect();
        assert!(lost.is_empty(), "{} writes of {db} lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
        assert_eq!(present.len(), written.len());
    }
}

/// A blocking SQL runner for writer threads: each call returns once the
/// statement has committed, so the writer's log lists only real commits.
fn postgres_sync(port: u16, db: &str) -> anyhow::Result<impl FnMut(&str)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname={db}");
    let (client, connection) = runtime.block_on(tokio_postgres::connect(&dsn, tokio_postgres::NoTls))?;
    runtime.spawn(connection);
    Ok(move |sql: &str| {
        runtime.block_on(client.batch_execute(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

#[test]
fn a_database_going_away_makes_only_its_sync_bad() {
    let s = Setup::new();
    let mut far = Cluster::start().unwrap();
    s.cluster.create_db("src").unwrap();
    s.sql("src", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.dbs_from("src", &["src", "near"]);
    far.create_db("far").unwrap();
    far.psql("far", "CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    s.ibex
        .run(&["add", "db", "far", "dbname=far", "host=127.0.0.1", &format!("port={}", far.port()), "user=postgres"])
        .ok();
    s.ibex.sh("add table t db=src herd=h").ok();
    s.ibex.sh("add sync to_far herd=h dbs=src:source,far:target").ok();
    s.ibex.sh("add sync to_near herd=h dbs=src:source,near:target").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    s.sql("src", "INSERT INTO t VALUES (1, 'before')");
    eventually(Duration::from_secs(5), "both targets", || {
        s.sql("near", "SELECT count(*) FROM t") == "1" && far.psql("far", "SELECT count(*) FROM t").unwrap() == "1"
    });
    far.crash().unwrap();
    s.sql("src", "INSERT INTO t VALUES (2, 'while far is down')");
    eventually(Duration::from_secs(5), "the near target to keep going", || {
        s.sql("near", "SELECT count(*) FROM t") == "2"
    });
    eventually(Duration::from_secs(15), "to_far to go Bad", || {
        let st = d.run(&["status", "to_far", "--json"]).ok().json();
        st["status"]["state"] == "Bad"
    });
    let bad = d.run(&["status", "to_far", "--json"]).ok().json();
    let error = bad["status"]["last_bad"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("db far") && error.contains(&far.port().to_string()), "{error}");
    assert_eq!(d.run(&["status", "to_near", "--json"]).ok().json()["status"]["state"], "Good");
    s.sql("src", "INSERT INTO t VALUES (3, 'still down')");
    eventually(Duration::from_secs(5), "near", || s.sql("near", "SELECT count(*) FROM t") == "3");
    far.restart().unwrap();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(Duration::from_secs(45), "far to catch up", || {
            far.psql("far", "SELECT count(*) FROM t").unwrap() == "3"
        })
    }));
    if waited.is_err() {
        panic!("far did not catch up:\n{}", d.log());
    }

    eventually(Duration::from_secs(5), "to_far to be Good", || {
        d.run(&["status", "to_far", "--json"]).ok().json()["status"]["state"] == "Good"
    });
}

#[test]
fn vac_purges_what_all_have_applied_and_keeps_what_an_inactive_sync_needs() {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.dbs_from("a", &["a", "b", "c"]);
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync to_b herd=h dbs=a:source,b:target").ok();
    s.ibex.sh("add sync to_c herd=h dbs=a:source,c:target").ok();
    s.ibex.sh("deactivate to_c").ok();
    s.ibex.sh("set vac_interval=1s").ok();
    let delta = s.sql("a", "SELECT 'ibex.' || quote_ident(delta_table) FROM ibex.captured");
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    s.sql("a", "INSERT INTO t SELECT i, 'x' FROM generate_series(1, 100) i");
    eventually(Duration::from_secs(5), "b to get the rows", || s.sql("b", "SELECT count(*) FROM t") == "100");
    // Several VAC rounds later the rows are still there: to_c needs them.
    thread::sleep(Duration::from_secs(8));
    // One delta row holds the statement's 100 keys.
    assert_eq!(s.sql("a", &format!("SELECT sum(cardinality(id)) FROM {delta}")), "100", "{}", d.log());
    assert_eq!(s.sql("c", "SELECT count(*) FROM t"), "0");
    s.ibex.sh("activate to_c").ok();
    eventually(Duration::from_secs(10), "c to catch up", || s.sql("c", "SELECT count(*) FROM t") == "100");
    eventually(Duration::from_secs(20), "VAC to purge", || s.sql("a", &format!("SELECT count(*) FROM {delta}")) == "0");
}

/// Sync `push` from db a, on WAL capture, to b: table t (id, v).
fn wal_push() -> Setup {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.dbs_from("a", &["a", "b"]);
    s.ibex.sh("update db a capture=wal").ok();
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync push herd=h dbs=a:source,b:target").ok();
    s
}

/// A WAL db whose only sync is inactive: the VAC decodes its slot into
/// the delta table, so the server does not keep the WAL for it; the keys
/// wait there for the sync.
#[test]
fn vac_reads_the_wal_slot_of_an_inactive_sync() {
    let s = wal_push();
    s.ibex.sh("deactivate push").ok();
    s.ibex.sh("set vac_interval=1s").ok();
    let delta = s.sql("a", "SELECT 'ibex.' || quote_ident(delta_table) FROM ibex.captured");
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    s.sql("a", "INSERT INTO t SELECT i, 'x' FROM generate_series(1, 100) i");
    let written = s.sql("a", "SELECT pg_current_wal_lsn()");
    wait_until(&d, "the VAC to decode the slot past the insert", Duration::from_secs(30), || {
        s.sql(
            "a",
            &format!(
                "SELECT confirmed_flush_lsn >= '{written}' FROM pg_replication_slots WHERE slot_name LIKE 'ibex%'"
            ),
        ) == "t"
    })
    .unwrap();
    // One delta row holds the statement's 100 keys.
    assert_eq!(s.sql("a", &format!("SELECT sum(cardinality(id)) FROM {delta}")), "100", "{}", d.log());
    assert_eq!(s.sql("b", "SELECT count(*) FROM t"), "0");
    s.ibex.sh("activate push").ok();
    eventually(Duration::from_secs(10), "b to catch up", || s.sql("b", "SELECT count(*) FROM t") == "100");
    s.assert_same(&["a", "b"], &["t"]);
}

/// Inserts row `id` on db a and waits for b to hold `id` rows.
fn insert_arrives(s: &Setup, id: u32, v: &str) {
    s.sql("a", &format!("INSERT INTO t VALUES ({id}, '{v}')"));
    eventually(Duration::from_secs(30), &format!("b to have row {id}"), || {
        s.sql("b", "SELECT count(*) FROM t") == id.to_string()
    });
}

/// The walsender of the daemon's stream of db a's slot; 0 when none.
fn stream_pid(s: &Setup) -> String {
    s.sql(
        "a",
        "SELECT coalesce(max(s.active_pid), 0) FROM pg_replication_slots s
           JOIN pg_stat_activity a ON a.pid = s.active_pid
          WHERE s.slot_name LIKE 'ibex%' AND a.application_name = 'ibex wal stream'
            AND a.backend_type = 'walsender'",
    )
}

/// target_session_attrs=read-write holds for the stream as for every other
/// connection: of two hosts, the first read-only, the stream opens on the
/// second, and no read falls back to SQL.
#[test]
fn the_wal_stream_passes_over_a_read_only_host_for_read_write() {
    let s = Setup::new();
    let decoy = Cluster::start().unwrap();
    decoy.create_db("a").unwrap();
    decoy.psql("postgres", "ALTER SYSTEM SET default_transaction_read_only = on").unwrap();
    decoy.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.cluster.clone_db("a", "b").unwrap();
    s.ibex
        .run(&[
            "add",
            "db",
            "a",
            "dbname=a",
            "host=127.0.0.1,127.0.0.1",
            &format!("port={},{}", decoy.port(), s.cluster.port()),
            "user=postgres",
            "target_session_attrs=read-write",
        ])
        .ok();
    s.add_db("b", "b").ok();
    s.ibex.sh("update db a capture=wal").ok();
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync push herd=h dbs=a:source,b:target").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    for id in [1, 2] {
        insert_arrives(&s, id, "x");
    }
    assert_ne!(stream_pid(&s), "0", "no stream on the read-write host: {}", d.log());
    let on_decoy = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ibex wal stream'";
    assert_eq!(decoy.psql("postgres", on_decoy).unwrap(), "0");
    assert!(!d.log().contains("SQL this time"), "a read fell back to SQL: {}", d.log());
}

/// A second daemon on the catalog runs none of the syncs while the first
/// holds their leases, but its VAC still visits every WAL db: it leaves the
/// slot to the first daemon's stream instead of taking it away every
/// vac_interval, which made each of the first daemon's next reads fall
/// back to SQL.
#[test]
fn a_second_daemon_leaves_the_wal_slot_to_the_one_streaming_it() {
    let s = wal_push();
    s.ibex.sh("set vac_interval=1s").ok();
    let mut first = Daemon::configure(&s.ibex).unwrap();
    first.start().unwrap();
    insert_arrives(&s, 1, "x");
    let stream = stream_pid(&s);
    assert_ne!(stream, "0", "no stream holds the slot after a run: {}", first.log());
    // The second at debug level: its VAC says when it leaves the slot.
    let mut debug = s.ibex.clone();
    debug.envs.push(("IBEX_LOG".into(), "ibex=debug".into()));
    let mut second = Daemon::configure(&debug).unwrap();
    second.start().unwrap();
    // Its VAC passes (the first 5 s after its start) leave the slot, some
    // of them while the first daemon's VAC reads it too.
    let left = "VAC left the WAL capture slot to the session that streams it";
    eventually(Duration::from_secs(30), "the second VAC to leave the slot three times", || {
        second.log().matches(left).count() >= 3
    });
    insert_arrives(&s, 2, "y");
    assert_eq!(stream_pid(&s), stream, "the slot changed hands: {}\n---\n{}", first.log(), second.log());
    assert!(!first.log().contains("SQL this time"), "a read fell back to SQL: {}", first.log());
    s.assert_same(&["a", "b"], &["t"]);
}

/// Between reads the daemon tells the server its stream is there: the
/// server ends a walsender that heard nothing for wal_sender_timeout, and
/// every read after an idle spell would go by SQL, decoding again from
/// the slot's restart point.
#[test]
fn an_idle_daemons_wal_stream_outlives_the_senders_timeout() {
    let s = wal_push();
    s.sql("a", "ALTER SYSTEM SET wal_sender_timeout = '3s'");
    s.sql("a", "SELECT pg_reload_conf()");
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    insert_arrives(&s, 1, "x");
    let first = stream_pid(&s);
    assert_ne!(first, "0", "no stream holds the slot after a run: {}", d.log());
    // Idle for more than two timeouts.
    thread::sleep(Duration::from_secs(8));
    assert_eq!(stream_pid(&s), first, "the server ended the idle stream: {}", d.log());
    insert_arrives(&s, 2, "y");
    assert_eq!(stream_pid(&s), first, "the stream was opened again: {}", d.log());
    assert!(!d.log().contains("SQL this time"), "a read fell back to SQL: {}", d.log());
    s.assert_same(&["a", "b"], &["t"]);
}

/// The daemon reads a WAL db's slot through a walsender session it keeps
/// open ("ibex wal stream"). A session that dies is replaced (that read
/// goes by SQL), and a command that needs the slot takes it from the
/// stream; nothing is lost or applied twice on the way.
#[test]
fn the_daemon_streams_a_wal_slot_and_gives_it_up_to_a_command() {
    let s = wal_push();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let stream = || stream_pid(&s);
    let b_has = |sql: &str, want: &str| s.sql("b", sql) == want;
    s.sql("a", "INSERT INTO t SELECT i, 'x' FROM generate_series(1, 100) i");
    eventually(Duration::from_secs(30), "b to have the first rows", || b_has("SELECT count(*) FROM t", "100"));
    let first = stream();
    assert_ne!(first, "0", "no stream holds the slot after a run: {}", d.log());

    // Its session dies: the next read goes by SQL, a later one streams again.
    s.sql("a", &format!("SELECT pg_terminate_backend({first})"));
    s.sql("a", "UPDATE t SET v = 'y' WHERE id <= 50");
    s.sql("a", "INSERT INTO t SELECT i, 'z' FROM generate_series(101, 150) i");
    eventually(Duration::from_secs(30), "b to have the changes made after the stream died", || {
        b_has("SELECT count(*) FILTER (WHERE v = 'y') || '/' || count(*) FROM t", "50/150")
    });
    s.sql("a", "INSERT INTO t VALUES (151, 'w')");
    eventually(Duration::from_secs(30), "the row after the fallback", || b_has("SELECT count(*) FROM t", "151"));
    let second = stream();
    assert!(second != "0" && second != first, "the stream was not opened again ({first} -> {second}): {}", d.log());
    // The read that found it dead fell back (the keepalive writes only 10 s
    // after the stream's last message, which the run just before sent).
    assert!(d.log().contains("reading the slot by SQL this time"), "the fallback was not logged: {}", d.log());

    // A command that drops the slot takes it from the stream.
    s.ibex.sh("update db a capture=trigger").ok();
    assert_eq!(s.sql("a", "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'ibex%'"), "0");
    s.sql("a", "DELETE FROM t WHERE id > 140");
    eventually(Duration::from_secs(30), "the delete on triggers", || b_has("SELECT count(*) FROM t", "140"));
    s.assert_same(&["a", "b"], &["t"]);
}

#[test]
fn start_stop_reload_ping_logs_and_metrics() {
    let s = Setup::new();
    s.cluster.create_password_role("hunter2-secret").unwrap();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    s.dbs_from("a", &["a", "b", "c"]);
    // One db logs in with a password, which must never show up anywhere.
    s.ibex.run(&["remove", "db", "b"]).ok();
    s.ibex
        .run(&["add", "db", "b", "dbname=b", "host=127.0.0.1", &s.port_arg(), "user=ibex_pw", "pass=hunter2-secret"])
        .ok();
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync first herd=h dbs=a:source,b:target").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.run(&["ping", "--timeout", "1"]).fails_with("no response from the daemon within 1 s");
    d.start().unwrap();
    let pid = d.pid().unwrap();
    d.run(&["start"]).fails_with(&format!("ibex is already running (pid {pid})"));
    d.run(&["start", "--foreground"]).fails_with("already running");
    assert!(d.run(&["ping"]).ok().stdout.contains("Pong"));
    // A new sync is picked up without a restart (the catalog change wakes the daemon).
    s.ibex.sh("add sync second herd=h dbs=a:source,c:target").ok();
    assert!(d.run(&["reload"]).ok().stdout.contains("Reloaded: 2 syncs running"));
    s.sql("a", "INSERT INTO t VALUES (1, 'x')");
    eventually(Duration::from_secs(5), "both syncs", || {
        s.sql("b", "SELECT count(*) FROM t") == "1" && s.sql("c", "SELECT count(*) FROM t") == "1"
    });
    // A removed sync stops.
    s.ibex.sh("remove sync second").ok();
    eventually(Duration::from_secs(5), "the CTL to stop", || {
        d.log().contains("sync stopped (removed or deactivated) sync=second")
    });
    s.sql("a", "INSERT INTO t VALUES (2, 'y')");
    eventually(Duration::from_secs(5), "first", || s.sql("b", "SELECT count(*) FROM t") == "2");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(s.sql("c", "SELECT count(*) FROM t"), "1");
    // Metrics.
    let metrics = d.metrics().unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(metrics.contains("ibex_runs_total{sync=\"first\",state=\"good\"}"), "{metrics}");
    assert!(metrics.contains("ibex_run_duration_seconds_count{sync=\"first\"}"), "{metrics}");
    eventually(Duration::from_secs(15), "backlog gauges", || {
        d.metrics().unwrap().contains("ibex_delta_backlog{sync=\"first\",table=\"public.t\"} 0")
    });
    assert!(d.metrics().unwrap().contains("ibex_replication_lag_seconds{sync=\"first\"}"));
    // Log level from the catalog applies on reload; one line per run.
    s.ibex.sh("set log_level=verbose").ok();
    d.run(&["reload"]).ok();
    s.sql("a", "INSERT INTO t VALUES (3, 'z')");
    eventually(Duration::from_secs(5), "a verbose line", || d.log().contains("DEBUG"));
    let log = d.log();
    assert!(log.contains("run done sync=first"), "{log}");
    // Stop: the daemon exits and pings go unanswered.
    assert!(d.run(&["stop"]).ok().stdout.contains(&format!("Stopped ibex (pid {pid})")));
    assert!(d.wait_exit(Duration::from_secs(30)).unwrap().success());
    d.run(&["ping", "--timeout", "1"]).fails_with("no response from the daemon");
    assert!(d.run(&["stop"]).ok().stdout.contains("not running"));
    // Detached start, then restart and stop.
    let started = d.run(&["start"]).ok();
    assert!(started.stdout.contains("Started ibex (pid"), "{}", started.stdout);
    assert!(d.run(&["ping"]).ok().stdout.contains("Pong"));
    let restarted = d.run(&["restart"]).ok();
    assert!(
        restarted.stdout.contains("Stopped ibex") && restarted.stdout.contains("Started ibex"),
        "{}",
        restarted.stdout
    );
    d.run(&["stop"]).ok();
    // No password anywhere.
    for (what, text) in
        [("log", d.log()), ("metrics", metrics), ("status", s.ibex.sh("status first --json").ok().stdout)]
    {
        assert!(!text.contains("hunter2"), "password in {what}");
    }
}

#[test]
fn json_logs() {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE t (id int PRIMARY KEY)");
    s.dbs_from("a", &["a", "b"]);
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync j herd=h dbs=a:source,b:target").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    let mut toml = std::fs::read_to_string(d.config_path()).unwrap();
    toml.push_str("format = \"json\"\n");
    std::fs::write(d.config_path(), toml).unwrap();
    d.start().unwrap();
    s.sql("a", "INSERT INTO t VALUES (1)");
    eventually(Duration::from_secs(5), "the row", || s.sql("b", "SELECT count(*) FROM t") == "1");
    // The run is logged once it is recorded, a moment after its commit.
    let logged = |log: &str| {
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .filter(|v| v["message"] == "run done")
            .any(|r| r["sync"] == "j" && r["inserted"] == 1)
    };
    eventually(Duration::from_secs(5), "the run's JSON log line", || logged(&d.log()));
}

/// Seconds left on a socket's keepalive timer as `ss -o` prints it
/// (`timer:(keepalive,1min59sec,0)`, `59sec`, `850ms`).
fn keepalive_seconds(line: &str) -> Option<f64> {
    let timer = line.split("timer:(keepalive,").nth(1)?.split(',').next()?;
    let mut total = 0.0;
    let mut number = String::new();
    let mut unit = String::new();
    for c in timer.chars().chain(std::iter::once('0')) {
        if c.is_ascii_digit() || c == '.' {
            if !unit.is_empty() {
                let n: f64 = number.parse().ok()?;
                total += n * match unit.as_str() {
                    "min" => 60.0,
                    "sec" => 1.0,
                    "ms" => 0.001,
                    _ => return None,
                };
                number.clear();
                unit.clear();
            }
            number.push(c);
        } else {
            unit.push(c);
        }
    }
    Some(total)
}

#[test]
fn the_server_probes_ibex_sessions_for_a_dead_peer() {
    // A backend whose ibex vanished without a FIN holds its locks until the
    // server's keepalive gives up: ibex asks for probes after 60 s idle,
    // not the kernel's two hours.
    assert_eq!(keepalive_seconds("x timer:(keepalive,119min,0)"), Some(7140.0));
    assert_eq!(keepalive_seconds("x timer:(keepalive,1min2sec,0)"), Some(62.0));
    let s = Setup::new();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let ports = s.sql(
        "ibex",
        "SELECT string_agg(client_port::text, ' ') FROM pg_stat_activity WHERE application_name LIKE 'ibex%' AND client_port > 0",
    );
    let ports: Vec<&str> = ports.split_whitespace().collect();
    assert!(!ports.is_empty(), "no TCP session of the daemon in pg_stat_activity");
    for port in ports {
        // A socket with data in flight shows its retransmission timer
        // (`timer:(on,...)`) instead: look again until it is idle.
        let mut line = String::new();
        for _ in 0..50 {
            let out = std::process::Command::new("ss")
                .args(["-tnoH", "state", "established", "sport", "=", &format!(":{}", s.cluster.port())])
                .output()
                .expect("running ss (iproute2)");
            let sockets = String::from_utf8_lossy(&out.stdout).to_string();
            line = sockets
                .lines()
                .find(|l| l.split_whitespace().any(|field| field.ends_with(&format!(":{port}"))))
                .unwrap_or_else(|| panic!("no server socket for ibex's port {port} in:\n{sockets}"))
                .to_string();
            if !line.contains("timer:(on,") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let left =
            keepalive_seconds(&line).unwrap_or_else(|| panic!("no keepalive timer on the server's socket: {line}"));
        assert!(left <= 60.0, "the server probes ibex's session only after {left} s: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_left_behind_a_dead_path_is_ended_at_the_next_connect() {
    // A run holds a row lock on dst when every packet of its connection
    // starts being dropped: its backend would live on (retransmitting, for
    // some 15 minutes) and block each later run on that row. The next
    // connect ends it.
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql("src", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')");
    s.dbs_from("src", &["src", "dst"]);
    s.ibex.sh("add table t db=src herd=h").ok();
    s.ibex.sh("add sync dead herd=h dbs=src:source,dst:target").ok();
    s.ibex.sh("set run_timeout=3s").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    let locker = s.cluster.connect("dst").await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE t IN SHARE MODE").await.unwrap();
    s.sql("src", "UPDATE t SET v = 'new' WHERE id = 1");
    let waiting = "SELECT pid || ' ' || client_port FROM pg_stat_activity
                    WHERE datname = 'dst' AND application_name = 'ibex kid dead' AND wait_event_type = 'Lock'";
    let mut found = String::new();
    wait_until(&d, "the run waiting on the lock", Duration::from_secs(60), || {
        found = s.sql("dst", waiting);
        !found.is_empty()
    })
    .unwrap();
    let (pid, port) = found.lines().next().and_then(|l| l.split_once(' ')).expect("pid and port");
    let port: u16 = port.parse().expect("a client port");
    let mut path = ibex_tests::proxy::PacketDrop::start(port).expect("dropping the run's packets (iptables, as root)");
    locker.batch_execute("COMMIT").await.unwrap();
    // The stale backend deletes row 1 and waits for a client that is gone.
    wait_until(&d, "a run past the dropped connection's row lock", Duration::from_secs(40), || {
        s.sql("dst", "SELECT coalesce((SELECT v FROM t WHERE id = 1), '')") == "new"
    })
    .unwrap();
    let alive = s.sql("dst", &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"));
    assert_eq!(alive, "0", "the dropped connection's backend {pid} still runs");
    assert!(d.log().contains("ended backends of dropped connections"), "{}", d.log());
    path.heal().unwrap();
}
