use ibex_tests::{Setup, plugins};

#[test]
fn smoke_plugin() {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE acct (id int PRIMARY KEY, val text, n numeric)");
    s.sql("a", "INSERT INTO acct SELECT i, 'v', i FROM generate_series(1, 10) i");
    s.dbs_from("a", &["a", "b"]);
    s.ibex.sh("add table acct db=a herd=h").ok();
    let wasm = plugins::official("latest-wins").unwrap();
    let out = s.ibex.run(&["add", "plugin", "lw", wasm.to_str().unwrap()]);
    println!("{out:?}");
    println!("{}", s.ibex.sh("list plugins").stdout);
    s.ibex.sh("add sync mm herd=h dbs=a:source,b:source conflict_strategy=plugin:lw").ok();
    s.sql("a", "UPDATE acct SET val = 'a' WHERE id <= 5");
    s.sql("b", "UPDATE acct SET val = 'b' WHERE id >= 3");
    let run = s.run("mm");
    println!("{run}");
    s.assert_same(&["a", "b"], &["acct"]);
    println!("{}", s.sql("a", "SELECT string_agg(id || '=' || val, ' ' ORDER BY id) FROM acct"));
}
