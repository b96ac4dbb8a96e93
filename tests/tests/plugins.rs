//! WebAssembly plugins in real syncs: the official conflict handlers, a
//! sandbox that holds against hostile plugins, on_error, hot swap, and the
//! plugin CLI.
//!
//! Long on purpose: one scenario per test, sharing the two-master fixture
//! and the hostile plugin driver.

use std::time::{Duration, Instant};

use ibex_tests::{Cluster, Daemon, Setup, plugins};
use serde_json::Value;

fn wasm(path: std::path::PathBuf) -> String {
    path.to_str().expect("utf-8 path").to_string()
}

/// Two masters with an `acct` table and a sync `mm` using `strategy`.
fn two_masters(strategy: &str) -> Setup {
    two_masters_of(20, strategy)
}

/// [`two_masters`] with `rows` rows in `acct`.
fn two_masters_of(rows: u32, strategy: &str) -> Setup {
    let s = Setup::new();
    s.cluster.create_db("m1").unwrap();
    s.sql(
        "m1",
        &format!(
            "CREATE TABLE acct (id int PRIMARY KEY, tenant text, note text, balance numeric(12,2), visits int);
             INSERT INTO acct SELECT i, CASE WHEN i % 2 = 0 THEN 'm1' ELSE 'm2' END, 'start', 100, 0 FROM generate_series(1, {rows}) i;"
        ),
    );
    s.dbs_from("m1", &["m1", "m2"]);
    s.ibex.sh("add table acct db=m1 herd=h").ok();
    if !strategy.starts_with("plugin:") {
        s.ibex
            .run(&["add", "sync", "mm", "herd=h", "dbs=m1:source,m2:source", &format!("conflict_strategy={strategy}")])
            .ok();
    }
    s
}

fn add_sync(s: &Setup, strategy: &str) {
    s.ibex
        .run(&["add", "sync", "mm", "herd=h", "dbs=m1:source,m2:source", &format!("conflict_strategy={strategy}")])
        .ok();
}

/// The official additive merge as plugin `merge`, adding up balance and visits.
fn add_additive_merge(s: &Setup) {
    s.ibex
        .run(&[
            "add",
            "plugin",
            "merge",
            &wasm(plugins::official("additive-merge").unwrap()),
            "config.columns=balance,visits",
        ])
        .ok();
}

#[test]
fn additive_merge_adds_both_sides_changes() {
    let s = two_masters("plugin:");
    add_additive_merge(&s);
    s.ibex.sh("update table acct capture_old=true").ok();
    add_sync(&s, "plugin:merge");
    // The seed's example: both nodes add $10; the result is +$20.
    s.sql("m1", "UPDATE acct SET balance = balance + 10, visits = visits + 1, note = 'm1' WHERE id <= 10");
    s.sql("m2", "UPDATE acct SET balance = balance + 10, visits = visits + 2, note = 'm2' WHERE id BETWEEN 6 AND 15");
    // A delete on one side is not merged: the newest change wins.
    s.sql("m2", "UPDATE acct SET balance = 1 WHERE id = 20");
    s.sql("m1", "DELETE FROM acct WHERE id = 20");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["conflicts"], 6, "{run}");
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(s.sql("m2", "SELECT balance || '/' || visits FROM acct WHERE id = 8"), "120.00/3");
    assert_eq!(s.sql("m1", "SELECT balance || '/' || visits FROM acct WHERE id = 3"), "110.00/1");
    assert_eq!(s.sql("m1", "SELECT balance || '/' || visits FROM acct WHERE id = 12"), "110.00/2");
    assert_eq!(s.sql("m2", "SELECT count(*) FROM acct WHERE id = 20"), "0");
    let reasons: Vec<String> =
        run["conflicts"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap().to_string()).collect();
    assert_eq!(reasons.iter().filter(|r| *r == "merged by plugin merge").count(), 5, "{reasons:?}");
    // Without old images there is no base: the newest change wins instead.
    s.ibex.sh("update table acct capture_old=false").ok();
    s.sql("m1", "UPDATE acct SET balance = balance + 1 WHERE id = 1");
    s.sql("m2", "UPDATE acct SET balance = balance + 5 WHERE id = 1");
    s.run("mm");
    assert_eq!(s.sql("m1", "SELECT balance FROM acct WHERE id = 1"), "115.00");
}

/// More conflicts than one plugin call takes (`PLUGIN_BATCH` in
/// engine/src/sync/cycle/merge.rs, 1,000): every key of every
/// batch is merged from its own rows and base. A winner kept for the rest
/// of the run ("always") decides the batches after it without asking again.
#[test]
fn conflicts_over_several_plugin_batches_each_get_their_own_rows() {
    let s = two_masters_of(2500, "plugin:");
    s.ibex.sh("update table acct capture_old=true").ok();
    s.ibex.sh("set conflict_log_limit=5000").ok();
    add_additive_merge(&s);
    add_sync(&s, "plugin:merge");
    s.sql("m1", "UPDATE acct SET balance = balance + id, visits = visits + 1, note = 'm1'");
    s.sql("m2", "UPDATE acct SET balance = balance + 2 * id, visits = visits + 2, note = 'm2'");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["conflicts"], 2500, "{run}");
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(s.sql("m2", "SELECT count(*) FROM acct WHERE balance = 100 + 3 * id AND visits = 3"), "2500");

    s.ibex.run(&["add", "plugin", "hostile", &wasm(plugins::for_tests("hostile").unwrap()), "config.mode=always"]).ok();
    s.ibex.sh("update sync mm conflict_strategy=plugin:hostile").ok();
    s.sql("m1", "UPDATE acct SET note = 'm1 ' || id");
    s.sql("m2", "UPDATE acct SET note = 'm2 ' || id");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["conflicts"], 2500, "{run}");
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(s.sql("m1", "SELECT count(*) FROM acct WHERE note = 'm2 ' || id"), "2500");
    let reasons: Vec<&str> =
        run["conflicts"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 2500, "every decision is logged");
    // Asked once, for the first batch; kept for the batches after it.
    let asked = reasons.iter().filter(|r| **r == "plugin hostile").count();
    let kept = reasons.iter().filter(|r| **r == "plugin hostile (always)").count();
    assert!(asked > 0 && kept > 0 && asked + kept == 2500, "asked {asked}, kept {kept}: {:?}", &reasons[..3]);
}

/// A conflict handler's rows are found whatever the key: a composite key
/// of text, a date, an enum and a domain travels as one array per key
/// column, and the merge sees each version's row and its base (without
/// them it could not add both sides' changes).
#[test]
fn a_plugin_reads_the_rows_of_composite_keys_of_any_type() {
    let s = Setup::new();
    composite_keys_merge(&s, &s.cluster);
}

/// The same on PostgreSQL 10, which has no arrays of domains: the domain
/// key's array is passed as its base type's.
#[test]
fn a_plugin_reads_the_rows_of_a_domain_key_on_ten() {
    let s = Setup::new();
    let ten = Cluster::start_version(10).expect("a PostgreSQL 10 cluster");
    composite_keys_merge(&s, &ten);
}

/// Masters m1 and m2 on `cluster` with table stock, merged by the additive
/// merge; checks every conflict was merged from both sides' rows.
fn composite_keys_merge(s: &Setup, cluster: &Cluster) {
    let psql = |db: &str, sql: &str| cluster.psql(db, sql).unwrap_or_else(|e| panic!("SQL on {db} failed: {e:#}"));
    for db in ["m1", "m2"] {
        cluster.create_db(db).unwrap();
        psql(
            db,
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN code AS varchar(8) CHECK (VALUE <> '');
             CREATE TABLE stock (region text, day date, kind mood, sku code, balance numeric(12,2), visits int,
                                 PRIMARY KEY (region, day, kind, sku));
             INSERT INTO stock SELECT r, date '2026-01-01' + i, k, 'c' || i, 100, 0
               FROM unnest(ARRAY['north', 'süd', 'o''brien, \"x\"']) r, generate_series(1, 4) i, unnest(enum_range(NULL::mood)) k;",
        );
        s.add_db_on(db, db, cluster.port()).ok();
    }
    s.ibex.sh("add table stock db=m1 herd=h").ok();
    add_additive_merge(s);
    s.ibex.sh("update table stock capture_old=true").ok();
    s.ibex.run(&["add", "sync", "mm", "herd=h", "dbs=m1:source,m2:source", "conflict_strategy=plugin:merge"]).ok();
    psql("m1", "UPDATE stock SET balance = balance + 10, visits = visits + 1");
    psql("m2", "UPDATE stock SET balance = balance + 5, visits = visits + 2 WHERE kind <> 'sad'");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    // 3 regions x 4 days x 2 kinds changed on both sides.
    assert_eq!(run["run"]["conflicts"], 24, "{run}");
    let merged = "SELECT count(*) FILTER (WHERE balance = 115 AND visits = 3) || '/' ||
                         count(*) FILTER (WHERE balance = 110 AND visits = 1) || '/' || count(*) FROM stock";
    for db in ["m1", "m2"] {
        assert_eq!(psql(db, merged), "24/12/36", "{db}");
    }
    s.assert_compare_clean("mm");
}

#[test]
fn tenant_rules_let_the_owner_win() {
    let s = two_masters("plugin:");
    s.ibex
        .run(&["add", "plugin", "tenants", &wasm(plugins::official("tenant-rules").unwrap()), "config.owners=acme=m1"])
        .ok();
    add_sync(&s, "plugin:tenants");
    s.sql("m1", "UPDATE acct SET tenant = 'acme' WHERE id = 7");
    s.sql("m2", "UPDATE acct SET tenant = 'acme' WHERE id = 7");
    s.run("mm");
    // Rows of tenant m1 are decided by db m1 even when m2 changed them last.
    s.sql("m1", "UPDATE acct SET note = 'by owner' WHERE id IN (2, 3, 7)");
    s.sql("m2", "UPDATE acct SET note = 'by other' WHERE id IN (2, 3, 7)");
    let run = s.run("mm");
    assert_eq!(run["run"]["conflicts"], 3);
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(s.sql("m1", "SELECT note FROM acct WHERE id = 2"), "by owner", "tenant m1 owns id 2");
    assert_eq!(s.sql("m1", "SELECT note FROM acct WHERE id = 3"), "by other", "tenant m2 owns id 3");
    assert_eq!(s.sql("m2", "SELECT note FROM acct WHERE id = 7"), "by owner", "acme is owned by m1 (config.owners)");
}

#[test]
fn a_plugin_decides_like_the_builtin_it_copies() {
    let builtin = two_masters("latest");
    let plugged = two_masters("plugin:");
    plugged.ibex.run(&["add", "plugin", "lw", &wasm(plugins::official("latest-wins").unwrap())]).ok();
    add_sync(&plugged, "plugin:lw");
    for s in [&builtin, &plugged] {
        s.sql("m1", "UPDATE acct SET note = 'm1 first' WHERE id <= 15");
        s.sql("m2", "UPDATE acct SET note = 'm2 later' WHERE id >= 5");
        s.sql("m1", "UPDATE acct SET note = 'm1 last' WHERE id = 12");
        s.run("mm");
        s.assert_same(&["m1", "m2"], &["acct"]);
    }
    assert_eq!(
        builtin.sql("m1", "SELECT string_agg(note, ',' ORDER BY id) FROM acct"),
        plugged.sql("m1", "SELECT string_agg(note, ',' ORDER BY id) FROM acct")
    );
}

/// Runs `mm` with the hostile plugin in `mode` and returns the error.
fn hostile_run(s: &Setup, mode: &str) -> String {
    s.ibex.run(&["update", "plugin", "hostile", &format!("config.mode={mode}")]).ok();
    s.sql("m1", "UPDATE acct SET note = 'm1' WHERE id = 1");
    s.sql("m2", "UPDATE acct SET note = 'm2' WHERE id = 1");
    let out = s.ibex.run(&["sync", "run", "mm"]).fails_with("plugin hostile failed");
    assert!(out.stderr.contains("table public.acct in sync mm"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was applied"), "{}", out.stderr);
    // Nothing applied: each db still has its own version.
    assert_eq!(s.sql("m1", "SELECT note FROM acct WHERE id = 1"), "m1");
    assert_eq!(s.sql("m2", "SELECT note FROM acct WHERE id = 1"), "m2");
    out.stderr
}

#[test]
fn hostile_plugins_fail_their_sync_and_nothing_else() {
    let s = two_masters("plugin:");
    s.ibex
        .run(&[
            "add",
            "plugin",
            "hostile",
            &wasm(plugins::for_tests("hostile").unwrap()),
            "timeout=1s",
            "memory=32MiB",
            "fuel=500000000",
        ])
        .ok();
    add_sync(&s, "plugin:hostile");
    // A second sync on the same dbs, without the plugin, keeps working.
    s.cluster.create_db("m3").unwrap();
    s.sql("m3", "CREATE TABLE acct (id int PRIMARY KEY, tenant text, note text, balance numeric(12,2), visits int)");
    s.add_db("m3", "m3").ok();
    s.ibex.sh("add sync copy herd=h dbs=m1:source,m3:target onetimecopy=1").ok();
    let cases = [
        ("loop", "it used all its fuel"),
        ("alloc", "more than its memory cap"),
        ("trap", "hostile plugin gives up"),
        ("stack", "its stack overflowed"),
        ("bad_winner", "named db #99 as the winner"),
        ("short_answer", "answered 0 decisions for 1 conflicts"),
        ("file", "cannot open /etc/passwd"),
        ("socket", "cannot connect"),
        ("env", "environment: []"),
    ];
    for (mode, needle) in cases {
        let started = Instant::now();
        let err = hostile_run(&s, mode);
        assert!(err.contains(needle), "mode {mode}: {err}");
        assert!(started.elapsed() < Duration::from_secs(30), "mode {mode} took {:?}", started.elapsed());
        let copy = s.run("copy");
        assert_eq!(copy["run"]["state"], "good", "the other sync after mode {mode}: {copy}");
    }
    // The wall-clock limit stops a loop that fuel alone would let run long.
    s.ibex.run(&["update", "plugin", "hostile", "fuel=100000000000000", "timeout=300ms"]).ok();
    let err = hostile_run(&s, "loop");
    assert!(err.contains("ran longer than its timeout (300 ms)"), "{err}");
    // No row was lost: with a sane component the pending changes replicate.
    s.ibex.run(&["update", "plugin", "hostile", &wasm(plugins::official("latest-wins").unwrap())]).ok();
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(s.sql("m1", "SELECT note FROM acct WHERE id = 1"), "m2");
}

#[test]
fn on_error_fallback_decides_with_a_builtin() {
    let s = two_masters("plugin:");
    s.ibex
        .run(&[
            "add",
            "plugin",
            "flaky",
            &wasm(plugins::for_tests("hostile").unwrap()),
            "config.mode=trap",
            "on_error=fallback=m1,m2",
        ])
        .ok();
    add_sync(&s, "plugin:flaky");
    s.sql("m2", "UPDATE acct SET note = 'm2' WHERE id = 4");
    s.sql("m1", "UPDATE acct SET note = 'm1' WHERE id = 4");
    s.sql("m2", "UPDATE acct SET note = 'm2 last' WHERE id = 4");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(s.sql("m2", "SELECT note FROM acct WHERE id = 4"), "m1", "the fallback (m1 first) decided");
}

#[test]
fn the_daemon_survives_a_bad_plugin_and_swaps_in_a_good_one() {
    let s = two_masters("plugin:");
    s.ibex.run(&["add", "plugin", "p", &wasm(plugins::for_tests("hostile").unwrap()), "config.mode=trap"]).ok();
    add_sync(&s, "plugin:p");
    s.cluster.create_db("m3").unwrap();
    s.sql("m3", "CREATE TABLE acct (id int PRIMARY KEY, tenant text, note text, balance numeric(12,2), visits int)");
    s.add_db("m3", "m3").ok();
    s.ibex.sh("add sync side herd=h dbs=m1:source,m3:target onetimecopy=1").ok();
    // Kicked by hand, so both changes land in one window.
    s.ibex.sh("update sync mm autokick=false").ok();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    s.sql("m1", "UPDATE acct SET note = 'from m1' WHERE id = 9");
    s.sql("m2", "UPDATE acct SET note = 'from m2' WHERE id = 9");
    d.run(&["kick", "mm"]).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = d.run(&["status", "mm", "--json"]).ok().json();
        if st["status"]["state"] == "Bad" {
            let error = st["status"]["last_bad"]["error"].as_str().unwrap_or_default().to_string();
            assert!(error.contains("plugin p failed") && error.contains("hostile plugin gives up"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "mm never went Bad:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The other sync and the daemon are fine.
    s.sql("m1", "UPDATE acct SET visits = 42 WHERE id = 1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.sql("m3", "SELECT coalesce(max(visits), 0) FROM acct WHERE id = 1") != "42" {
        assert!(Instant::now() < deadline, "side sync stalled:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.run(&["ping"]).ok().stdout.contains("Pong"));
    // Swap the component; the daemon picks it up and the pending rows go through.
    d.run(&["update", "plugin", "p", &wasm(plugins::official("latest-wins").unwrap())]).ok();
    d.run(&["reload"]).ok();
    let deadline = Instant::now() + Duration::from_secs(90);
    while s.sql("m1", "SELECT note FROM acct WHERE id = 9") != "from m2" {
        assert!(Instant::now() < deadline, "the swapped plugin never ran:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    s.assert_same(&["m1", "m2"], &["acct"]);
}

#[test]
fn plugin_cli_refuses_what_it_cannot_run() {
    let s = two_masters("latest");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0garbage").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.path().join("readme.txt");
    std::fs::write(&text, b"not wasm at all").unwrap();
    let before = s.snapshot();
    s.ibex.run(&["add", "plugin", "p", junk.to_str().unwrap()]).fails_with("junk.wasm is refused");
    s.ibex.run(&["add", "plugin", "p", core.to_str().unwrap()]).fails_with("is refused");
    s.ibex.run(&["add", "plugin", "p", text.to_str().unwrap()]).fails_with("is refused");
    s.ibex.run(&["add", "plugin", "p", "/nonexistent.wasm"]).fails_with("cannot read /nonexistent.wasm");
    let lw = wasm(plugins::official("latest-wins").unwrap());
    s.ibex
        .run(&["add", "plugin", "p", &lw, "kind=row-transform"])
        .fails_with("does not implement ibex:plugin/row-transform@0.1.0 (it implements: conflict-handler)");
    s.ibex.run(&["add", "plugin", "p", &lw, "memory=lots"]).fails_with("bad memory");
    s.ibex.run(&["add", "plugin", "p", &lw, "grant=nosuch"]).fails_with("db \"nosuch\" does not exist");
    s.ibex.run(&["add", "plugin", "p", &lw, "colour=red"]).fails_with("unknown plugin key");
    s.ibex.run(&["add", "plugin", "bad name", &lw]).fails_with("bad plugin name");
    assert_eq!(before, s.snapshot(), "refused plugin commands changed the catalog");
    s.ibex.run(&["add", "plugin", "p", &lw, "on_error=fallback=latest", "grant=m1"]).ok();
    s.ibex.run(&["add", "plugin", "p", &lw]).fails_with("plugin \"p\" already exists");
    let listed = s.ibex.sh("list plugins --json").ok().json();
    assert_eq!(listed[0]["kind"], "conflict-handler");
    assert_eq!(listed[0]["on_error"], "fallback=latest");
    assert_eq!(listed[0]["grants"], serde_json::json!(["m1"]));
    // In use: removal refused; a strategy naming an unknown plugin refused.
    s.ibex.sh("update sync mm conflict_strategy=plugin:p").ok();
    s.ibex.sh("remove plugin p").fails_with("plugin \"p\" is in use (conflict handler of sync mm)");
    s.ibex.sh("update sync mm conflict_strategy=plugin:nosuch").fails_with("plugin \"nosuch\" does not exist");
    // plugin test: a sample batch offline.
    let input = dir.path().join("batch.json");
    std::fs::write(
        &input,
        r#"{"sync": {"name": "demo", "dbs": [{"name": "a", "role": "Source", "priority": 0}, {"name": "b", "role": "Source", "priority": 0}], "config": []},
            "table": {"schema": "public", "name": "acct", "columns": [{"name": "id", "type_name": "integer", "key": true}]},
            "conflicts": [{"key": [{"Int": 1}], "base": null, "versions": [
                {"db": 0, "changed_at": 100, "operation": "Update", "row": [{"Int": 1}]},
                {"db": 1, "changed_at": 200, "operation": "Update", "row": [{"Int": 1}]}]}]}"#,
    )
    .unwrap();
    let verdict: Value = s.ibex.run(&["plugin", "test", "p", "--input", input.to_str().unwrap()]).ok().json();
    assert_eq!(verdict, serde_json::json!({"PerKey": [{"Winner": 1}]}));
    s.ibex.sh("update sync mm conflict_strategy=latest").ok();
    s.ibex.sh("remove plugin p").ok();
}

#[test]
fn mask_columns_on_the_way_to_one_target() {
    let s = Setup::new();
    s.cluster.create_db("crm").unwrap();
    s.sql(
        "crm",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text, score int);
         INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '555-1', 10), (2, 'Bob', NULL, '555-2', 20);",
    );
    for db in ["analytics", "backup"] {
        s.cluster.create_db(db).unwrap();
        s.sql(db, "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text, score int)");
        s.add_db(db, db).ok();
    }
    s.add_db("crm", "crm").ok();
    s.ibex.sh("add table customers db=crm herd=h").ok();
    s.ibex.sh("add sync out herd=h dbs=crm:source,analytics:target,backup:target onetimecopy=1").ok();
    s.ibex
        .run(&[
            "add",
            "plugin",
            "mask",
            &wasm(plugins::official("mask-columns").unwrap()),
            "config.columns=email,phone",
        ])
        .ok();
    s.ibex.sh("add transform mask sync=out table=customers target=analytics").ok();
    // The full copy goes through the transform too.
    s.run("out");
    assert_eq!(
        s.sql(
            "analytics",
            "SELECT string_agg(concat_ws('/', id, name, email, phone, score), ' ' ORDER BY id) FROM customers"
        ),
        "1/Ann/***/***/10 2/Bob/***/20"
    );
    s.assert_same(&["crm", "backup"], &["customers"]);
    s.sql("crm", "UPDATE customers SET email = 'ann@new.example', score = 11 WHERE id = 1; INSERT INTO customers VALUES (3, 'Cy', 'cy@x', NULL, 0)");
    s.run("out");
    assert_eq!(s.sql("analytics", "SELECT concat_ws('/', email, score) FROM customers WHERE id = 1"), "***/11");
    assert_eq!(s.sql("analytics", "SELECT concat_ws('/', name, email) FROM customers WHERE id = 3"), "Cy/***");
    s.assert_same(&["crm", "backup"], &["customers"]);
    // A transform that would touch the key is refused, and nothing is applied.
    s.ibex.run(&["update", "plugin", "mask", "config.columns=id"]).ok();
    s.sql("crm", "UPDATE customers SET score = 99 WHERE id = 2");
    s.ibex
        .sh("sync run out")
        .fails_with("plugin mask failed transforming rows of table public.customers for db analytics");
    assert_eq!(s.sql("backup", "SELECT score FROM customers WHERE id = 2"), "20", "nothing applied anywhere");
    s.ibex.run(&["update", "plugin", "mask", "config.columns=email"]).ok();
    s.run("out");
    assert_eq!(s.sql("backup", "SELECT score FROM customers WHERE id = 2"), "99");
}

#[test]
fn tenant_filter_sends_each_target_its_rows() {
    let s = Setup::new();
    s.cluster.create_db("shared").unwrap();
    s.sql(
        "shared",
        "CREATE TABLE orders (id int PRIMARY KEY, tenant text NOT NULL, amount int);
         INSERT INTO orders SELECT i, CASE WHEN i % 3 = 0 THEN 'globex' ELSE 'acme' END, i FROM generate_series(1, 30) i;",
    );
    for db in ["acme", "globex"] {
        s.cluster.create_db(db).unwrap();
        s.sql(db, "CREATE TABLE orders (id int PRIMARY KEY, tenant text NOT NULL, amount int)");
        s.add_db(db, db).ok();
    }
    s.add_db("shared", "shared").ok();
    s.ibex.sh("add table orders db=shared herd=h").ok();
    s.ibex.sh("add sync split herd=h dbs=shared:source,acme:target,globex:target onetimecopy=1").ok();
    s.ibex.run(&["add", "plugin", "filter", &wasm(plugins::official("tenant-filter").unwrap())]).ok();
    s.ibex.sh("add transform filter sync=split").ok();
    s.run("split");
    assert_eq!(s.sql("acme", "SELECT count(*) || '/' || count(*) FILTER (WHERE tenant = 'acme') FROM orders"), "20/20");
    assert_eq!(
        s.sql("globex", "SELECT count(*) || '/' || count(*) FILTER (WHERE tenant = 'globex') FROM orders"),
        "10/10"
    );
    // An order moving to another tenant leaves one db and arrives in the other.
    s.sql("shared", "UPDATE orders SET tenant = 'globex' WHERE id = 1; INSERT INTO orders VALUES (31, 'acme', 1); DELETE FROM orders WHERE id = 3");
    s.run("split");
    assert_eq!(s.sql("acme", "SELECT count(*) FROM orders WHERE id IN (1, 31)"), "1");
    assert_eq!(s.sql("globex", "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders WHERE id IN (1, 3, 31)"), "1");
    s.ibex.sh("remove transform filter sync=split").ok();
    s.ibex.sh("remove transform filter sync=split").fails_with("does not exist");
}

#[test]
fn unique_fixer_keeps_the_newer_row_and_archives_the_other() {
    let s = Setup::new();
    s.cluster.create_db("u1").unwrap();
    s.sql(
        "u1",
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, updated_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE users_archive (id int, email text, updated_at timestamptz);",
    );
    s.dbs_from("u1", &["u1", "u2"]);
    s.ibex.sh("add table users db=u1 herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=u1:source,u2:source").ok();
    s.ibex
        .run(&[
            "add",
            "plugin",
            "fixer",
            &wasm(plugins::official("unique-fixer").unwrap()),
            "grant=u1,u2",
            "write=u1,u2",
            "write_tables=users,users_archive",
            "config.column=email",
            "config.time_column=updated_at",
            "config.archive=users_archive",
        ])
        .ok();
    // Without the hook, the same email on both masters stops the sync.
    s.sql("u1", "INSERT INTO users VALUES (1, 'ann@example.com', '2026-01-01 10:00+00')");
    s.sql("u2", "INSERT INTO users VALUES (2, 'ann@example.com', '2026-01-01 11:00+00')");
    s.sql("u1", "INSERT INTO users VALUES (3, 'bob@example.com', '2026-01-01 09:00+00')");
    s.ibex.sh("sync run mm").fails_with("duplicate key value violates unique constraint");
    s.ibex.sh("add hook fixer sync=mm when=exception").ok();
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["u1", "u2"], &["users"]);
    assert_eq!(
        s.sql("u1", "SELECT string_agg(id || ':' || email, ',' ORDER BY id) FROM users"),
        "2:ann@example.com,3:bob@example.com"
    );
    assert_eq!(
        s.sql("u1", "SELECT string_agg(id::text, ',') FROM users_archive"),
        "1",
        "the older row is archived where it lived"
    );
    // A newer row arriving where an older one is: the older one is archived there too.
    s.sql("u2", "INSERT INTO users VALUES (4, 'cy@example.com', '2026-01-02 10:00+00')");
    s.sql("u1", "INSERT INTO users VALUES (5, 'cy@example.com', '2026-01-02 12:00+00')");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["u1", "u2"], &["users"]);
    assert_eq!(s.sql("u2", "SELECT string_agg(id::text, ',' ORDER BY id) FROM users"), "2,3,5");
    assert_eq!(s.sql("u2", "SELECT string_agg(id::text, ',') FROM users_archive"), "4");
    // On u1 the older incoming row 4 was left out (logged), not archived.
    let left_out = run["conflicts"].as_array().unwrap();
    assert!(
        left_out.iter().any(|c| c["reason"].as_str().unwrap_or("").contains("left out on db u1 by hook fixer")),
        "{run}"
    );
    s.ibex.sh("add hook fixer sync=mm when=sometimes").fails_with("unknown hook point");
    s.ibex.sh("remove hook fixer sync=mm").ok();
}

#[test]
fn a_python_conflict_handler_runs_behind_the_same_contract() {
    let s = two_masters("plugin:");
    let component = plugins::python("python-prefer", "conflict-handler").unwrap();
    s.ibex.run(&["add", "plugin", "prefer", &wasm(component), "config.prefer=m2"]).ok();
    add_sync(&s, "plugin:prefer");
    // m2 changed these keys first, m1 last: m2 still wins, as configured.
    s.sql("m2", "UPDATE acct SET note = 'm2' WHERE id <= 6");
    s.sql("m1", "UPDATE acct SET note = 'm1' WHERE id <= 6");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["conflicts"], 6);
    s.assert_same(&["m1", "m2"], &["acct"]);
    assert_eq!(s.sql("m1", "SELECT string_agg(DISTINCT note, ',') FROM acct WHERE id <= 6"), "m2");
}

#[test]
fn plugin_test_runs_transforms_and_hooks_offline() {
    let s = Setup::new();
    s.ibex
        .run(&["add", "plugin", "mask", &wasm(plugins::official("mask-columns").unwrap()), "config.columns=email"])
        .ok();
    s.ibex.run(&["add", "plugin", "fixer", &wasm(plugins::official("unique-fixer").unwrap())]).ok();
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.json");
    std::fs::write(
        &rows,
        r#"{"sync": {"name": "demo", "dbs": [{"name": "a", "role": "Source", "priority": 0}, {"name": "b", "role": "Target", "priority": 0}], "config": []},
            "source": 0, "target": 1,
            "table": {"schema": "public", "name": "users", "columns": [
                {"name": "id", "type_name": "integer", "key": true}, {"name": "email", "type_name": "text", "key": false}]},
            "rows": [[{"Int": 1}, {"Text": "ann@example.com"}], [{"Int": 2}, "Null"]]}"#,
    )
    .unwrap();
    let out = s.ibex.run(&["plugin", "test", "mask", "--input", rows.to_str().unwrap()]).ok().json();
    assert_eq!(out, serde_json::json!([[{"Int": 1}, {"Text": "***"}], [{"Int": 2}, "Null"]]));
    let call = dir.path().join("call.json");
    std::fs::write(
        &call,
        r#"{"sync": {"name": "demo", "dbs": [], "config": []}, "call": {"point": "BeforeSync", "failure": null}}"#,
    )
    .unwrap();
    let out = s.ibex.run(&["plugin", "test", "fixer", "--input", call.to_str().unwrap()]).ok().json();
    assert_eq!(out, serde_json::json!("Proceed"));
    s.ibex.run(&["plugin", "test", "mask", "--input", call.to_str().unwrap()]).fails_with("is not a transform batch");
}

/// A tenant's conflict handler, granted `acct` only, tries what an attacker
/// would with ibex connected as a superuser: every attempt is refused by
/// the database, the daemon-less run fails with the plugin named, and the
/// data it should not reach is unchanged.
#[test]
fn a_tenant_plugin_cannot_reach_past_its_grants() {
    let s = two_masters("plugin:");
    s.sql("m1", "CREATE TABLE secret (id int PRIMARY KEY, v text); INSERT INTO secret VALUES (1, 'keep out')");
    s.ibex
        .run(&[
            "add",
            "plugin",
            "hostile",
            &wasm(plugins::for_tests("hostile").unwrap()),
            "grant=m1",
            "write=m1",
            "tables=acct",
            "write_tables=public.acct",
            "timeout=2s",
            "memory=32MiB",
        ])
        .ok();
    add_sync(&s, "plugin:hostile");
    let marker = format!("/tmp/ibex-pwned-{}", std::process::id());
    let program = format!("execute:COPY (SELECT 1) TO PROGRAM 'touch {marker}'");
    let cases: Vec<(String, &str)> = vec![
        ("query:SELECT pg_read_file('/etc/passwd')".into(), "permission denied for function pg_read_file"),
        ("query:SELECT pg_ls_dir('.')".into(), "permission denied for function pg_ls_dir"),
        ("query:SELECT v FROM secret".into(), "permission denied for table secret"),
        ("query:SELECT rolname, rolpassword FROM pg_authid".into(), "permission denied for table pg_authid"),
        ("execute:UPDATE secret SET v = 'pwned'".into(), "permission denied for table secret"),
        (program, "syntax error"),
        ("execute:SET ROLE postgres".into(), "syntax error"),
        ("query:RESET ROLE".into(), "syntax error"),
        ("query:SELECT set_config('role', 'postgres', true)".into(), "within security-definer function"),
        ("execute:SELECT set_config('role', 'none', true)".into(), "within security-definer function"),
        (
            "execute:SELECT 1; SELECT pg_read_file('/etc/passwd')".into(),
            "cannot insert multiple commands into a prepared statement",
        ),
        (
            "query:SELECT 1; SELECT pg_read_file('/etc/passwd')".into(),
            "cannot insert multiple commands into a prepared statement",
        ),
        // Its own definer function, handed a string of its own: not callable by the role.
        (
            "execute:SELECT ibex_plugin.x_ROLE('SELECT 1; ALTER FUNCTION ibex_plugin.x_ROLE(text,text,text,text,text,text,text,text,text,text,text,text,text,text,text,text,text) SECURITY INVOKER')".into(),
            "permission denied for function",
        ),
    ];
    let role = s.sql("m1", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'ibex_plugin_hostile_%'");
    for (mode, needle) in &cases {
        let mode = mode.replace("x_ROLE", &format!("\"x_{role}\""));
        let err = hostile_run(&s, &mode);
        assert!(err.contains("attack refused"), "mode {mode}: {err}");
        assert!(err.contains(needle), "mode {mode}: expected {needle:?} in {err}");
        assert!(!err.contains("ATTACK SUCCEEDED") && !err.contains("root:"), "mode {mode}: {err}");
    }
    assert!(!std::path::Path::new(&marker).exists(), "COPY TO PROGRAM ran a shell command");
    assert_eq!(s.sql("m1", "SELECT v FROM secret"), "keep out");
    // Callers tell failures apart by kind, not by text: exit code 9 for a
    // plugin, and --json says how it failed.
    for (mode, failure) in [("query:SELECT v FROM secret", "denied"), ("big_query", "limit"), ("bad_winner", "answer")]
    {
        s.ibex.run(&["update", "plugin", "hostile", &format!("config.mode={mode}")]).ok();
        s.sql("m1", "UPDATE acct SET note = 'kind m1' WHERE id = 2");
        s.sql("m2", "UPDATE acct SET note = 'kind m2' WHERE id = 2");
        let out = s.ibex.run(&["sync", "run", "mm", "--json"]);
        assert_eq!(out.code, 9, "mode {mode}: {}", out.stderr);
        let json: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
        assert_eq!(json["run"]["error_kind"], "plugin", "{json}");
        assert_eq!(json["run"]["plugin_failure"], failure, "mode {mode}: {json}");
    }
    // What it was granted, it can do.
    let err = hostile_run(&s, "query:SELECT count(*) FROM acct");
    assert!(err.contains("ATTACK SUCCEEDED: query returned [[Value::Int(20)]]"), "{err}");
    // A query that fails, to parse or to run, leaves the plugin's later
    // queries in the run working (each runs in a savepoint of the read).
    for bad in ["SELEC 1", "SELECT 1 / 0"] {
        s.ibex.run(&["update", "plugin", "hostile", &format!("config.mode=recover:{bad}")]).ok();
        s.sql("m1", "UPDATE acct SET note = 'recover m1' WHERE id = 3");
        s.sql("m2", "UPDATE acct SET note = 'recover m2' WHERE id = 3");
        let run = s.run("mm");
        assert_eq!(run["run"]["state"], "good", "after {bad:?}: {run}");
        s.assert_same(&["m1", "m2"], &["acct"]);
    }
    // Limits: each stopped with an error naming it, even when ignored by the plugin.
    for (mode, needle) in [
        ("big_query", "more than 10000 rows (the plugin's query_rows limit)"),
        ("log_flood", "logged more than 65536 bytes in one call (its log_bytes limit)"),
        ("alloc4g", "more than its memory cap"),
    ] {
        let err = hostile_run(&s, mode);
        assert!(err.contains(needle), "mode {mode}: {err}");
    }
    let listed = s.ibex.sh("list plugins --json").ok().json();
    let hostile = listed.as_array().unwrap().iter().find(|p| p["name"] == "hostile").unwrap().clone();
    assert_eq!(hostile["tables"], serde_json::json!(["acct"]), "{hostile}");
    assert_eq!(hostile["write_tables"], serde_json::json!(["public.acct"]), "{hostile}");
    // The role ibex made for it: no login, no superuser, nothing inherited.
    assert_eq!(
        s.sql("m1", &format!("SELECT rolsuper OR rolcanlogin OR rolinherit FROM pg_roles WHERE rolname = '{role}'")),
        "f"
    );
    // validate notices a role someone loosened, and puts it back.
    s.sql("m1", &format!("ALTER ROLE \"{role}\" LOGIN; GRANT SELECT ON secret TO \"{role}\""));
    let validated = s.ibex.sh("validate mm").ok();
    assert!(validated.stdout.contains("repaired: role"), "{}", validated.stdout);
    assert_eq!(s.sql("m1", &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")), "f");
    let err = hostile_run(&s, "query:SELECT v FROM secret");
    assert!(err.contains("permission denied for table secret"), "{err}");
    // Removing the plugin removes its role.
    s.ibex.sh("remove sync mm").ok();
    s.ibex.sh("remove plugin hostile").ok();
    assert_eq!(s.sql("m1", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'")), "0");
}

/// Native code is trusted only if this host compiled it: a component whose
/// bytes were altered in the catalog is refused, a precompiled blob planted
/// in the catalog is ignored, and a tampered cache file is recompiled.
#[test]
fn tampered_plugin_code_is_never_run() {
    let mut s = two_masters("plugin:");
    // Its own state directory: other tests running latest-wins at the same
    // time would otherwise find (and mend) the flipped cache file first.
    let state = tempfile::tempdir().unwrap();
    s.ibex.envs.push(("IBEX_STATE_DIR".into(), state.path().display().to_string()));
    s.ibex.run(&["add", "plugin", "lw", &wasm(plugins::official("latest-wins").unwrap())]).ok();
    add_sync(&s, "plugin:lw");
    let sha = s.sql("ibex", "SELECT sha256 FROM ibex.plugin WHERE name = 'lw'");
    // A planted "precompiled" blob is never read.
    s.sql("ibex", "UPDATE ibex.plugin SET precompiled = '\\xdeadbeef' WHERE name = 'lw'");
    s.sql("m1", "UPDATE acct SET note = 'a' WHERE id = 2");
    s.sql("m2", "UPDATE acct SET note = 'b' WHERE id = 2");
    assert_eq!(s.run("mm")["run"]["state"], "good");
    // The host's cache holds the code it compiled, authenticated; flip a byte.
    let cache = state.path().join("plugin-cache");
    let file = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&sha)))
        .unwrap_or_else(|| panic!("no cache file for {sha} in {}", cache.display()));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    s.sql("m1", "UPDATE acct SET note = 'c' WHERE id = 3");
    s.sql("m2", "UPDATE acct SET note = 'd' WHERE id = 3");
    let out = s.ibex.run(&["--log-level", "normal", "sync", "run", "mm"]).ok();
    assert!(out.stderr.contains("failed its authenticity check"), "{}", out.stderr);
    assert_ne!(std::fs::read(&file).unwrap(), bytes, "the tampered file was kept");
    s.assert_same(&["m1", "m2"], &["acct"]);
    // Altered component bytes in the catalog: refused, nothing applied.
    s.sql(
        "ibex",
        "UPDATE ibex.plugin SET wasm = overlay(wasm placing '\\x00'::bytea from 200 for 1) WHERE name = 'lw'",
    );
    s.sql("m1", "UPDATE acct SET note = 'e' WHERE id = 4");
    s.sql("m2", "UPDATE acct SET note = 'f' WHERE id = 4");
    s.ibex.run(&["sync", "run", "mm"]).fails_with("do not match their recorded sha256");
    assert_eq!(s.sql("m1", "SELECT note FROM acct WHERE id = 4"), "e");
    assert_eq!(s.sql("m2", "SELECT note FROM acct WHERE id = 4"), "f");
}

#[test]
fn add_plugin_shows_what_it_asks_for_and_checks_the_expected_sha() {
    let s = two_masters("plugin:");
    let lw = wasm(plugins::official("latest-wins").unwrap());
    let bytes = std::fs::read(&lw).unwrap();
    let sha = ibex::plugin::sha256_hex(&bytes);
    let wrong = "0".repeat(64);
    let before = s.snapshot();
    s.ibex.run(&["add", "plugin", "lw", &lw, "--expect-sha256", &wrong]).fails_with("not the expected");
    assert_eq!(s.snapshot(), before, "a refused component changed the catalog");
    let out = s.ibex.run(&["add", "plugin", "lw", &lw, "--expect-sha256", &sha, "grant=m1", "tables=acct"]).ok();
    assert!(out.stdout.contains(&format!("sha256 {sha}")), "{}", out.stdout);
    assert!(out.stdout.contains("imports:") && out.stdout.contains("ibex:plugin/types"), "{}", out.stdout);
    assert!(out.stdout.contains("grants: query on dbs m1 (tables acct)"), "{}", out.stdout);
}
