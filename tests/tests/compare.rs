//! `ibex compare` and `ibex reconcile` against real clusters.

use ibex_tests::Setup;

#[test]
fn compare_finds_and_reconcile_repairs_a_one_way_target() {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql(
        "src",
        "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 5000) i;
         CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b)); INSERT INTO pairs VALUES (1, 'x', 1), (2, 'y', 2);",
    );
    s.dbs_from("src", &["src", "dst"]);
    s.ibex.sh("add table items pairs db=src herd=h").ok();
    s.ibex.sh("add sync push herd=h dbs=src:source,dst:target").ok();
    let same = s.ibex.sh("compare push").ok();
    assert!(same.stdout.contains("public.items: identical (5000 rows each on 2 dbs)"), "{}", same.stdout);
    // Damage the target behind ibex's back.
    s.sql("dst", "DELETE FROM items WHERE id = 17; UPDATE items SET name = 'tampered' WHERE id = 4000; INSERT INTO items VALUES (9999, 'extra'); UPDATE pairs SET v = 9 WHERE a = 2");
    let out = s.ibex.run(&["compare", "push", "--rows"]);
    assert_eq!(out.code, 1);
    for needle in [
        "public.items: DIFFERS (rows: src 5000, dst 5000",
        "key 17: versions src; missing on dst",
        "key 4000: versions src / dst",
        "key 9999: versions dst; missing on src",
        "key (2,y): versions src / dst",
    ] {
        assert!(out.stdout.contains(needle), "missing {needle:?} in:\n{}", out.stdout);
    }
    let json = s.ibex.run(&["compare", "push", "--table", "items", "--json", "--rows"]);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed.as_array().unwrap().len(), 1);
    assert_eq!(parsed[0]["keys"].as_array().unwrap().len(), 3);
    // A dry run changes nothing.
    let plan = s.ibex.run(&["reconcile", "push", "--dry-run"]);
    assert_eq!(plan.code, 1);
    assert!(plan.stdout.contains("would mark changed on src"), "{}", plan.stdout);
    assert_eq!(s.sql("dst", "SELECT name FROM items WHERE id = 4000"), "tampered");
    let fixed = s.ibex.sh("reconcile push").ok();
    assert!(fixed.stdout.contains("public.items: identical"), "{}", fixed.stdout);
    s.assert_same(&["src", "dst"], &["items", "pairs"]);
    s.ibex.sh("compare push").ok();
}

#[test]
fn reconcile_merges_rows_that_existed_before_the_sync() {
    // Bucardo users ask for this: two masters set up with different rows.
    let s = Setup::new();
    for (db, rows) in
        [("a", "(1, 'a only'), (3, 'a says'), (4, 'same')"), ("b", "(2, 'b only'), (3, 'b says'), (4, 'same')")]
    {
        s.cluster.create_db(db).unwrap();
        s.sql(db, &format!("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES {rows}"));
        s.add_db(db, db).ok();
    }
    s.ibex.sh("add table t db=a herd=h").ok();
    s.ibex.sh("add sync mm herd=h dbs=a:source,b:source:10").ok();
    assert_eq!(s.ibex.sh("compare mm").code, 1);
    let out = s.ibex.sh("reconcile mm").ok();
    assert!(out.stdout.contains("key 3: versions a / b; marking changed on a, b"), "{}", out.stdout);
    s.assert_same(&["a", "b"], &["t"]);
    assert_eq!(
        s.sql("a", "SELECT string_agg(id || '=' || v, ' ' ORDER BY id) FROM t"),
        "1=a only 2=b only 3=b says 4=same"
    );
    s.ibex.sh("compare mm").ok();
}
