use ibex_tests::{Setup, plugins};

#[test]
fn smoke_plugin() {
    let s = Setup::new();
    s.cluster.create_db("a").unwrap();
    s.sql("a", "CREATE TABLE acct (id int PRIMARY KEY, val text, bal numeric(12,2), n int)");
    s.sql("a", "INSERT INTO acct SELECT i, 'v', 100, 5 FROM generate_series(1, 10) i");
    s.dbs_from("a", &["a", "b"]);
    s.ibex.sh("add table acct db=a herd=h").ok();
    let wasm = plugins::official("additive-merge").unwrap();
    s.ibex.run(&["add", "plugin", "am", wasm.to_str().unwrap(), "config.columns=bal,n"]).ok();
    println!("{}", s.ibex.sh("update table acct capture_old=true").ok().stdout);
    s.ibex.sh("add sync mm herd=h dbs=a:source,b:source conflict_strategy=plugin:am").ok();
    println!("{}", s.ibex.sh("update table acct capture_old=true").ok().stdout);
    s.sql("a", "UPDATE acct SET bal = bal + 10, n = n + 1, val = 'a' WHERE id <= 5");
    s.sql("b", "UPDATE acct SET bal = bal + 10.5, n = n + 2, val = 'b' WHERE id >= 3");
    let run = s.run("mm");
    println!("{run}");
    s.assert_same(&["a", "b"], &["acct"]);
    println!(
        "{}",
        s.sql("a", "SELECT string_agg(id || '=' || val || '/' || bal || '/' || n, ' ' ORDER BY id) FROM acct")
    );
}
