//! PostgreSQL 10 to 18 as source, target and multi-master peer: each major
//! from the npm builds (`tests/src/versions.rs`), the control catalog and
//! the other side on Debian's 15. Every sync ends with identical tables and
//! a clean `ibex compare`.

use ibex_tests::{Cluster, Setup, versions};

/// Types every supported major has, with values whose text form depends on
/// session settings (dates, floats, bytea, intervals).
const SCHEMA: &str = "CREATE TABLE items (
        id int PRIMARY KEY, name text, n numeric, f8 float8, f4 float4, b bytea, ts timestamptz,
        d date, iv interval, j jsonb, arr text[], u uuid)";

fn rows(first: i32, tag: &str) -> String {
    format!(
        "INSERT INTO items SELECT i, '{tag} ' || i, i * 1.25, i / 3.0, 'NaN', decode(md5(i::text), 'hex'),
                '2024-02-29 12:34:56.789+05:30'::timestamptz + i * interval '1 hour', '2000-01-01'::date + i,
                i * interval '1 day 02:03:04.5', jsonb_build_object('i', i, 'tag', '{tag}'), ARRAY['{tag}', NULL, 'x,y'],
                md5(i::text)::uuid
           FROM generate_series({first}, {first} + 49) i"
    )
}

fn add_db(s: &Setup, name: &str, cluster: &Cluster) {
    s.add_db_on(name, "app", cluster.port()).ok();
}

fn app_db(cluster: &Cluster) {
    cluster.create_db("app").unwrap();
    cluster.psql("app", SCHEMA).unwrap();
}

/// The rows' fingerprint with the text forms pinned and floats by their
/// bits, so servers of different majors print the same values alike.
fn fingerprint(cluster: &Cluster, db: &str, filter: &str) -> String {
    cluster
        .psql(
            db,
            &format!(
                "SET extra_float_digits = 3; SET DateStyle = ISO; SET TimeZone = 'UTC'; SET IntervalStyle = postgres;
                 SET bytea_output = hex;
                 SELECT count(*) || ':' || coalesce(md5(string_agg(
                     ROW(id, name, n, float8send(f8), float4send(f4), b, ts, d, iv, j, arr, u)::text, E'\\n' ORDER BY id)), '')
                   FROM items {filter}"
            ),
        )
        .unwrap()
}

fn hash(cluster: &Cluster) -> String {
    fingerprint(cluster, "app", "")
}

#[test]
fn every_major_as_source_and_as_target_of_fifteen() {
    let s = Setup::new();
    let hub = Cluster::start().unwrap();
    for major in versions::MAJORS {
        let other = Cluster::start_version(major).unwrap_or_else(|e| panic!("PostgreSQL {major}: {e:#}"));
        app_db(&other);
        hub.create_db(&format!("in{major}")).unwrap();
        hub.psql(&format!("in{major}"), SCHEMA).unwrap();
        hub.create_db(&format!("out{major}")).unwrap();
        hub.psql(&format!("out{major}"), SCHEMA).unwrap();
        let v = format!("v{major}");
        add_db(&s, &v, &other);
        s.add_db_on(&format!("in{major}"), &format!("in{major}"), hub.port()).ok();
        s.add_db_on(&format!("out{major}"), &format!("out{major}"), hub.port()).ok();
        if major == versions::MAJORS[0] {
            // One table in the catalog, one herd for every sync.
            s.ibex.run(&["add", "table", "items", &format!("db={v}"), "herd=h"]).ok();
        }
        // PG `major` -> 15, and 15 -> PG `major`.
        s.ibex.run(&["add", "sync", &format!("up{major}"), "herd=h", &format!("dbs={v}:source,in{major}:target")]).ok();
        s.ibex
            .run(&["add", "sync", &format!("down{major}"), "herd=h", &format!("dbs=out{major}:source,{v}:target")])
            .ok();
        other.psql("app", &rows(1, "old")).unwrap();
        other
            .psql(
                "app",
                "UPDATE items SET name = 'moved', id = id + 1000 WHERE id <= 5; DELETE FROM items WHERE id = 10",
            )
            .unwrap();
        let up = s.run(&format!("up{major}"));
        assert_eq!(up["run"]["state"], "good", "PostgreSQL {major} as source: {up}");
        assert_eq!(hash(&other), fingerprint(&hub, &format!("in{major}"), ""), "PostgreSQL {major} -> 15 differs");
        s.assert_compare_clean(&format!("up{major}"));
        hub.psql(&format!("out{major}"), &rows(500, "new")).unwrap();
        let down = s.run(&format!("down{major}"));
        assert_eq!(down["run"]["state"], "good", "PostgreSQL {major} as target: {down}");
        assert_eq!(
            fingerprint(&hub, &format!("out{major}"), ""),
            fingerprint(&other, "app", "WHERE id BETWEEN 500 AND 549"),
            "15 -> PostgreSQL {major} differs"
        );
        let version = other.server_version_num().unwrap();
        assert_eq!(version / 10_000, major, "cluster of {major} runs {version}");
        eprintln!("PostgreSQL {major} ({version}): source and target ok");
    }
}

#[test]
fn twelve_and_seventeen_as_multi_master_with_conflicts() {
    let s = Setup::new();
    let old = Cluster::start_version(12).unwrap();
    let new = Cluster::start_version(17).unwrap();
    for c in [&old, &new] {
        app_db(c);
        c.psql("app", &rows(1, "seed")).unwrap();
    }
    add_db(&s, "old", &old);
    add_db(&s, "new", &new);
    s.ibex.sh("add table items db=old herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=old:source,new:source conflict_strategy=latest").ok();
    old.psql("app", "UPDATE items SET name = 'old wins?' WHERE id <= 10; INSERT INTO items SELECT 100 + i, 'old', 0, 0, 0, NULL, now(), NULL, NULL, NULL, NULL, NULL FROM generate_series(1, 5) i").unwrap();
    new.psql(
        "app",
        "UPDATE items SET name = 'new is later' WHERE id BETWEEN 6 AND 15; DELETE FROM items WHERE id = 20",
    )
    .unwrap();
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert!(run["run"]["conflicts"].as_i64().unwrap() >= 5, "{run}");
    assert_eq!(hash(&old), hash(&new), "12 and 17 differ after the run");
    assert_eq!(old.psql("app", "SELECT name FROM items WHERE id = 8").unwrap(), "new is later");
    assert_eq!(old.psql("app", "SELECT count(*) FROM items WHERE id = 20").unwrap(), "0");
    s.assert_compare_clean("mm");
    // And back: the later change on 12 wins over 17's.
    new.psql("app", "UPDATE items SET name = 'new' WHERE id = 30").unwrap();
    old.psql("app", "UPDATE items SET name = 'old, later' WHERE id = 30").unwrap();
    s.run("mm");
    assert_eq!(new.psql("app", "SELECT name FROM items WHERE id = 30").unwrap(), "old, later");
    s.assert_compare_clean("mm");
}

/// WAL capture on the oldest major (no `pg_replication_slot_advance`: the
/// slot is moved by consuming its changes) and the newest, as two masters.
#[test]
fn ten_and_eighteen_as_masters_with_wal_capture() {
    let s = Setup::new();
    let old = Cluster::start_version(10).unwrap();
    let new = Cluster::start_version(18).unwrap();
    for c in [&old, &new] {
        app_db(c);
        c.psql("app", &rows(1, "seed")).unwrap();
        // Keys stored out of line (2,240 bytes): an UPDATE keeping one
        // decodes it only from the old key that 10.20 and later log.
        c.psql(
            "app",
            "CREATE TABLE docs (k text PRIMARY KEY, v int); ALTER TABLE docs ALTER COLUMN k SET STORAGE EXTERNAL;
             INSERT INTO docs SELECT string_agg(md5(i::text || n::text), ''), n FROM generate_series(1, 70) i, generate_series(1, 3) n GROUP BY n",
        )
        .unwrap();
    }
    add_db(&s, "old", &old);
    add_db(&s, "new", &new);
    for db in ["old", "new"] {
        s.ibex.run(&["update", "db", db, "capture=wal"]).ok();
    }
    s.ibex.sh("add table items db=old herd=h").ok();
    s.ibex.sh("add table docs db=old herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=old:source,new:source conflict_strategy=latest").ok();
    old.psql(
        "app",
        "UPDATE items SET name = 'old first' WHERE id <= 10; UPDATE items SET id = 1000 WHERE id = 25;
         UPDATE docs SET v = v + 10",
    )
    .unwrap();
    new.psql("app", "UPDATE items SET name = 'new later' WHERE id BETWEEN 6 AND 15; DELETE FROM items WHERE id = 20")
        .unwrap();
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert!(run["run"]["conflicts"].as_i64().unwrap() >= 5, "{run}");
    assert_eq!(hash(&old), hash(&new), "10 and 18 differ after the run");
    assert_eq!(old.psql("app", "SELECT name FROM items WHERE id = 8").unwrap(), "new later");
    assert_eq!(new.psql("app", "SELECT count(*) FROM items WHERE id IN (20, 25)").unwrap(), "0");
    assert_eq!(new.psql("app", "SELECT count(*) FROM items WHERE id = 1000").unwrap(), "1");
    assert_eq!(new.psql("app", "SELECT sum(v) FROM docs").unwrap(), "36");
    // Nothing ibex wrote comes back, and both slots moved on.
    let again = s.run("mm");
    assert_eq!(again["run"]["inserted"].as_i64().unwrap() + again["run"]["deleted"].as_i64().unwrap(), 0, "{again}");
    for c in [&old, &new] {
        let lag = c
            .psql(
                "app",
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) < 1000000 FROM pg_replication_slots",
            )
            .unwrap();
        assert_eq!(lag, "t");
    }
    // 16 and later: a run that finds the slot's restart point far behind
    // logs the running transactions, so the next run re-decodes little.
    new.psql("app", "CREATE TABLE junk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g").unwrap();
    new.psql("app", "UPDATE items SET name = 'after junk' WHERE id = 1").unwrap();
    assert_eq!(s.run("mm")["run"]["state"], "good");
    let restart_lag =
        new.psql("app", "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn) FROM pg_replication_slots").unwrap();
    assert!(
        restart_lag.parse::<i64>().unwrap() < 1_000_000,
        "the slot restarts {restart_lag} bytes behind its position on 18"
    );
    // The daemon streams both slots: the replication protocol, and
    // test_decoding's lines for a transaction that only emits a message,
    // as 10 and 18 send them.
    let mut d = ibex_tests::Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    old.psql("app", "UPDATE items SET name = 'streamed from 10' WHERE id = 2").unwrap();
    new.psql("app", "UPDATE items SET name = 'streamed from 18' WHERE id = 3").unwrap();
    let name = |c: &Cluster, id: i32| c.psql("app", &format!("SELECT name FROM items WHERE id = {id}")).unwrap();
    ibex_tests::faults::wait_until(&d, "both changes to cross", std::time::Duration::from_secs(30), || {
        name(&old, 3) == "streamed from 18" && name(&new, 2) == "streamed from 10"
    })
    .unwrap();
    for c in [&old, &new] {
        let streams = c
            .psql(
                "app",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ibex wal stream' AND backend_type = 'walsender'",
            )
            .unwrap();
        assert_eq!(streams, "1", "no stream of the slot: {}", d.log());
    }
    assert!(!d.log().contains("reading the slot by SQL"), "a read fell back from the stream: {}", d.log());
    d.kill();
    s.assert_compare_clean("mm");
}

/// examples/major-upgrade.sh end to end (12 -> 17 under writes): it must
/// finish, compare clean twice, and print its timings.
#[test]
fn the_major_upgrade_example_runs() {
    let root = ibex_tests::plugins::workspace_root();
    let out = std::process::Command::new("bash")
        .arg(root.join("examples/major-upgrade.sh"))
        .env("IBEX", ibex_tests::ibex::ibex_bin().unwrap())
        .env("OLD_BIN", versions::pg_bin_dir_for(12).unwrap())
        .env("NEW_BIN", versions::pg_bin_dir_for(17).unwrap())
        .env("SCALE", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "the example failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("public.pgbench_accounts: identical (200000 rows each on 2 dbs)").count(), 2, "{stdout}");
    assert!(stdout.contains("== done: PostgreSQL 12 -> 17 with a write freeze of"), "{stdout}");
    assert!(!stderr.contains("warning:"), "the example warns: {stderr}");
}

/// PostgreSQL 16 hashes a password set in plain text with the
/// `scram_iterations` in force. ibex logs in at up to 100,000 iterations and refuses
/// more (the count comes from the server before it has proven anything)
/// with what to change, never showing the password.
#[test]
fn a_password_hashed_past_the_scram_iteration_cap_is_refused_with_the_fix() {
    let s = Setup::new();
    let sixteen = Cluster::start_version(16).unwrap();
    let add = |name: &str, password: &str| {
        s.ibex.run(&[
            "add",
            "db",
            name,
            "dbname=postgres",
            "host=127.0.0.1",
            &format!("port={}", sixteen.port()),
            "user=ibex_pw",
            &format!("pass={password}"),
        ])
    };
    sixteen
        .psql("postgres", "SET scram_iterations = 100000; CREATE ROLE ibex_pw LOGIN PASSWORD 'at-the-cap-pw'")
        .unwrap();
    add("at_cap", "at-the-cap-pw").ok();
    sixteen.psql("postgres", "SET scram_iterations = 100001; ALTER ROLE ibex_pw PASSWORD 'past-the-cap-pw'").unwrap();
    let refused = add("past_cap", "past-the-cap-pw").fails_with("more than 100000 SCRAM iterations");
    assert!(refused.stderr.contains("SET scram_iterations = 4096"), "{}", refused.stderr);
    assert!(!refused.stderr.contains("past-the-cap-pw"), "{}", refused.stderr);
}
