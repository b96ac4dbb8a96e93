//! Every CLI command against a real catalog, including the bad-input
//! cases: each refused command must leave the catalog exactly as it was.

use ibex_tests::{Cluster, Ibex, Outcome, Setup};

/// The shared setup plus three pgbench databases and the refusal check.
struct Cli {
    s: Setup,
}

impl std::ops::Deref for Cli {
    type Target = Setup;
    fn deref(&self) -> &Setup {
        &self.s
    }
}

impl Cli {
    fn new() -> Cli {
        let s = Setup::new();
        s.cluster.create_pgbench_db("b1", 1).expect("pgbench");
        s.cluster.clone_db("b1", "b2").expect("clone");
        s.cluster.clone_db("b1", "b3").expect("clone");
        Cli { s }
    }

    fn port(&self) -> String {
        self.port_arg()
    }

    /// Runs a command that must fail with `needle` and change nothing.
    fn refused(&self, args: &[&str], needle: &str) -> Outcome {
        let before = self.snapshot();
        let outcome = self.ibex.run(args).fails_with(needle);
        assert_eq!(before, self.snapshot(), "catalog changed by refused `ibex {}`", args.join(" "));
        outcome
    }

    /// Three dbs, the pgbench tables in herd therd.
    fn standard(&self) {
        for (name, dbname) in [("t1", "b1"), ("t2", "b2"), ("t3", "b3")] {
            self.add_db(name, dbname).ok();
        }
        self.ibex.sh("add table pgbench_accounts pgbench_branches pgbench_tellers db=t1 herd=therd").ok();
    }
}

#[test]
fn install_creates_migrates_and_is_idempotent() {
    let cluster = Cluster::start().unwrap();
    let ibex = Ibex::new(cluster.dsn("ctl")).unwrap();
    let first = ibex.sh("install").ok();
    assert!(first.stdout.contains("Created control database"), "{}", first.stdout);
    let latest = ibex::catalog::migrations::latest_version();
    assert!(first.stdout.contains(&format!("schema version 0 -> {latest}")), "{}", first.stdout);
    let again = ibex.sh("install").ok();
    assert!(again.stdout.contains(&format!("up to date (schema version {latest})")), "{}", again.stdout);
    assert_eq!(
        cluster.psql("ctl", "SELECT string_agg(version::text, ',' ORDER BY version) FROM ibex.schema_version").unwrap(),
        (1..=latest).map(|v| v.to_string()).collect::<Vec<_>>().join(",")
    );

    // An older catalog is migrated, and commands refuse to run on it until then.
    let old = Ibex::new(cluster.dsn("old")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ibex::catalog::Catalog::install_to(&ibex::pg::ConnInfo::from_dsn(&cluster.dsn("old")).unwrap(), 1))
        .unwrap();
    old.sh("list dbs").fails_with(&format!("schema version 1 and this ibex needs {latest}: run `ibex install`"));
    let migrated = old.sh("install --json").ok().json();
    assert_eq!(migrated["from_version"], 1);
    assert_eq!(migrated["to_version"], ibex::catalog::migrations::latest_version());
    old.sh("list dbs").ok();

    // No catalog at all.
    cluster.create_db("empty").unwrap();
    Ibex::new(cluster.dsn("empty")).unwrap().sh("list dbs").fails_with("run `ibex install` first");
    Ibex::new(cluster.dsn("missing")).unwrap().sh("list syncs").fails_with("run `ibex install` first");
}

#[test]
fn control_database_comes_from_flag_env_or_toml() {
    let latest = ibex::catalog::migrations::latest_version();
    let cluster = Cluster::start().unwrap();
    let ibex = Ibex::new(cluster.dsn("from_env")).unwrap();
    ibex.sh("install").ok();
    // The flag wins over IBEX_CONTROL.
    ibex.run(&["--control", &cluster.dsn("from_flag"), "install"]).ok();
    assert_eq!(cluster.psql("from_flag", "SELECT count(*) FROM ibex.schema_version").unwrap(), latest.to_string());
    // ibex.toml in the working directory, when IBEX_CONTROL is unset.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ibex.toml"), format!("control = \"{}\"\n", cluster.dsn("from_toml"))).unwrap();
    let out = ibex.command(&["install"]).env_remove("IBEX_CONTROL").current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cluster.psql("from_toml", "SELECT count(*) FROM ibex.schema_version").unwrap(), latest.to_string());
    // A broken ibex.toml is named in the error.
    std::fs::write(dir.path().join("ibex.toml"), "contrl = 1\n").unwrap();
    let out = ibex.command(&["list", "dbs"]).env_remove("IBEX_CONTROL").current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ibex.toml") && stderr.contains("contrl"), "{stderr}");
    // A bad DSN says how to write one.
    ibex.run(&["--control", "host=x port=notaport", "list", "dbs"]).fails_with("bad connection string");
}

#[test]
fn dbs_add_list_update_remove_and_bad_input() {
    let s = Cli::new();
    s.cluster.create_password_role("s3cret-pw").unwrap();
    let out = s
        .ibex
        .run(&["add", "db", "t1", "dbname=b1", "host=127.0.0.1", &s.port(), "user=ibex_pw", "pass=s3cret-pw"])
        .ok();
    assert!(out.stdout.contains("Added db t1"));
    assert!(!out.stdout.contains("s3cret"));
    // Passwords are stored but never printed.
    let list = s.ibex.sh("list dbs").ok();
    assert!(list.stdout.contains("t1") && list.stdout.contains("********"), "{}", list.stdout);
    assert!(!list.stdout.contains("s3cret"));
    let json = s.ibex.sh("list dbs --json").ok();
    assert!(!json.stdout.contains("s3cret"));
    assert_eq!(json.json()[0]["dbname"], "b1");
    assert_eq!(json.json()[0]["password"], "********");

    // Bad input, each refused with a message that names the problem.
    s.refused(&["add", "db", "t1", "dbname=b1"], "db \"t1\" already exists");
    let wrong = s.refused(
        &["add", "db", "t9", "dbname=b1", "host=127.0.0.1", &s.port(), "user=ibex_pw", "pass=pw-WRONG-123"],
        "password authentication failed",
    );
    assert!(!wrong.stderr.contains("pw-WRONG-123"), "a password in an error: {}", wrong.stderr);
    let nodb = s.refused(
        &["add", "db", "t9", "dbname=nosuchdb", "host=127.0.0.1", &s.port(), "user=postgres"],
        "database \"nosuchdb\" does not exist",
    );
    assert!(nodb.stderr.contains(&format!("127.0.0.1:{}/nosuchdb", s.cluster.port())), "{}", nodb.stderr);
    let started = std::time::Instant::now();
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let refused = s.refused(
        &["add", "db", "t9", "dbname=b1", "host=127.0.0.1", &format!("port={closed_port}"), "user=postgres"],
        "cannot connect to db t9",
    );
    assert!(refused.stderr.contains(&format!(":{closed_port}/b1")), "{}", refused.stderr);
    // A black hole (no answer at all) times out within ten seconds.
    let blackhole = s.refused(
        &["add", "db", "t9", "dbname=b1", "host=10.255.255.1", "port=5432", "user=postgres"],
        "cannot connect to db t9",
    );
    assert!(blackhole.stderr.contains("10.255.255.1:5432/b1"), "{}", blackhole.stderr);
    assert!(started.elapsed().as_secs() < 25, "took {:?}", started.elapsed());
    s.refused(&["add", "db", "t9", "host=127.0.0.1"], "dbname is required");
    s.refused(&["add", "db", "t9", "dbname=b1", "colour=blue"], "unknown key \"colour\"");
    s.refused(&["add", "db", "t9", "dbname=b1", "port=99999"], "bad port \"99999\"");
    s.refused(&["add", "db", "t9", "dbname=b1", "sslmode=sometimes"], "bad sslmode");
    s.refused(&["add", "db", "bad name", "dbname=b1"], "bad db name");
    s.refused(&["add", "db", "t9", "dbname=b1", "dbname=b2"], "dbname is given twice");
    s.refused(&["add", "db", "t9", "stray"], "unexpected argument \"stray\"");
    s.refused(&["add", "db"], "required arguments were not provided");
    s.refused(&["add", "db", &"x".repeat(10_000), "dbname=b1"], "bad db name");
    s.refused(&["add", "db", "☃", "dbname=b1"], "bad db name");
    s.refused(
        &["add", "db", "t9", &format!("dbname={}", "☃".repeat(3000)), "host=127.0.0.1", &s.port(), "user=postgres"],
        "cannot connect to db t9",
    );
    s.refused(&["add", "db", "t9", "dbname=b1", "port=-1"], "bad port");
    s.refused(&["add", "db", "t9", "dbname=b1", "ключ=x"], "unknown key \"ключ\"");

    // update checks the new settings by connecting, and refuses bad ones.
    s.refused(&["update", "db", "t1", "pass=nope"], "password authentication failed");
    s.refused(&["update", "db", "nosuch", "host=x"], "db \"nosuch\" does not exist");
    s.refused(&["update", "db", "t1"], "nothing to change");
    s.refused(&["update", "db", "t1", "status=maybe"], "bad status");
    s.ibex.run(&["update", "db", "t1", "user=postgres", "pass="]).ok();
    let json = s.ibex.sh("list dbs --json").ok().json();
    assert_eq!(json[0]["user"], "postgres");
    assert!(json[0]["password"].is_null());

    s.refused(&["remove", "db", "nosuch"], "db \"nosuch\" does not exist");
    s.ibex.sh("remove db t1").ok();
    assert_eq!(s.ibex.sh("list dbs --json").ok().json(), serde_json::json!([]));
}

#[test]
fn tables_and_sequences() {
    let s = Cli::new();
    s.add_db("t1", "b1").ok();
    s.cluster
        .psql(
            "b1",
            r#"CREATE SCHEMA "Sales Dept";
               CREATE TABLE "Sales Dept"."Order ""Lines""; x" (id int PRIMARY KEY, "Qty" int);
               CREATE TABLE nokey (a int, b int);
               CREATE TABLE uniq (a int NOT NULL, b int NOT NULL, c int, UNIQUE (a, b), UNIQUE (c));
               CREATE VIEW v AS SELECT 1 AS x;
               CREATE SEQUENCE order_seq;"#,
        )
        .unwrap();

    let out = s.ibex.sh("add table pgbench_accounts pgbench_branches db=t1 herd=therd").ok();
    assert!(out.stdout.contains("Added table public.pgbench_accounts (key: aid from its primary key) to herd therd"));
    s.ibex.run(&["add", "table", "Sales Dept.Order \"Lines\"; x", "db=t1"]).ok();
    s.ibex.sh("add table uniq db=t1 pkey=a,b").ok();
    let tables = s.ibex.sh("list tables --json").ok().json();
    let names: Vec<String> = tables
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}.{}", t["name"]["schema"].as_str().unwrap(), t["name"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        vec!["Sales Dept.Order \"Lines\"; x", "public.pgbench_accounts", "public.pgbench_branches", "public.uniq"]
    );
    let uniq = tables.as_array().unwrap().iter().find(|t| t["name"]["name"] == "uniq").unwrap();
    assert_eq!(uniq["key_columns"], serde_json::json!(["a", "b"]));
    assert_eq!(uniq["key_source"], "unique index");

    // Tables without a usable key are refused with the fix.
    let nokey = s.refused(&["add", "table", "nokey", "db=t1"], "table public.nokey on db t1 has no primary key");
    assert!(nokey.stderr.contains("ADD PRIMARY KEY") && nokey.stderr.contains("pkey="));
    s.refused(&["add", "table", "pgbench_history", "db=t1"], "pgbench_history on db t1 has no primary key");
    s.refused(&["add", "table", "uniq", "db=t1", "pkey=c"], "whose columns are all NOT NULL");
    s.refused(&["add", "table", "nokey", "db=t1", "pkey=a"], "no unique index on exactly (a)");
    s.refused(&["add", "table", "nosuch", "db=t1"], "table \"nosuch\" does not exist; it is not on db t1");
    s.refused(&["add", "table", "v", "db=t1"], "v on db t1 is a view, not a table");
    s.refused(&["add", "table", "pgbench_tellers", "db=nosuchdb"], "db \"nosuchdb\" does not exist");
    s.refused(&["add", "table", "pgbench_tellers"], "db is required");
    s.refused(&["add", "table", "pgbench_accounts", "db=t1"], "table \"public.pgbench_accounts\" already exists");
    s.refused(&["add", "table", "pgbench_tellers", "db=t1", "herd=bad herd"], "bad herd name");
    s.refused(&["add", "table", "pgbench_tellers", "pgbench_history", "db=t1"], "pgbench_history");
    s.refused(&["add", "table", "pgbench_tellers", "db=t1", "colour=red"], "unknown key \"colour\"");
    s.refused(&["add", "table", "x\"; DROP TABLE pgbench_accounts; --", "db=t1"], "does not exist");
    assert_eq!(s.cluster.psql("b1", "SELECT count(*) FROM pgbench_accounts").unwrap(), "100000");

    // add all tables: skips what has no key (with a warning) and what is known.
    let all = s.ibex.sh("add all tables db=t1 herd=everything schema=public").ok();
    assert!(
        all.stderr.contains("warning: skipped table public.pgbench_history on db t1 has no primary key"),
        "{}",
        all.stderr
    );
    assert!(all.stderr.contains("warning: skipped table public.nokey"), "{}", all.stderr);
    assert!(all.stderr.contains("skipped public.pgbench_accounts: already registered"), "{}", all.stderr);
    assert!(all.stdout.contains("Added table public.pgbench_tellers"), "{}", all.stdout);
    let herds = s.ibex.sh("list herds --json").ok().json();
    let everything = herds.as_array().unwrap().iter().find(|h| h["name"] == "everything").unwrap();
    assert_eq!(everything["members"], serde_json::json!(["public.pgbench_tellers"]));

    // Sequences.
    s.ibex.sh("add sequence order_seq db=t1 herd=therd").ok();
    s.refused(&["add", "sequence", "pgbench_accounts", "db=t1"], "is a table, not a sequence");
    s.refused(&["add", "table", "order_seq", "db=t1"], "is a sequence, not a table");
    let seqs = s.ibex.sh("list sequences --json").ok().json();
    assert_eq!(seqs[0]["name"]["name"], "order_seq");
    assert_eq!(seqs[0]["herds"], serde_json::json!(["therd"]));
    s.ibex.sh("add all sequences db=t1").ok();
    assert_eq!(s.ibex.sh("list sequences --json").ok().json().as_array().unwrap().len(), 1);

    // remove table takes it out of its herds.
    s.refused(&["remove", "table", "nosuch"], "table \"nosuch\" does not exist");
    s.refused(&["remove", "table", "order_seq"], "table \"order_seq\" does not exist");
    s.ibex.sh("remove table public.pgbench_branches").ok();
    s.ibex.sh("remove sequence order_seq").ok();
    let herds = s.ibex.sh("list herds --json").ok().json();
    let therd = herds.as_array().unwrap().iter().find(|h| h["name"] == "therd").unwrap();
    assert_eq!(therd["members"], serde_json::json!(["public.pgbench_accounts"]));
}

#[test]
fn herds_and_dbgroups() {
    let s = Cli::new();
    s.standard();
    // Herds.
    s.ibex.sh("add herd small pgbench_tellers").ok();
    s.refused(&["add", "herd", "small"], "herd \"small\" already exists");
    s.refused(&["add", "herd", "h2", "nosuch"], "table or sequence \"nosuch\" does not exist");
    s.refused(&["add", "herd", "h2", "db=t1"], "unexpected \"db=t1\"");
    s.refused(&["add", "herd", "h 2"], "bad herd name");
    s.ibex.sh("update herd small add=pgbench_branches,public.pgbench_accounts remove=pgbench_tellers").ok();
    let herds = s.ibex.sh("list herds --json").ok().json();
    let small = herds.as_array().unwrap().iter().find(|h| h["name"] == "small").unwrap();
    assert_eq!(small["members"], serde_json::json!(["public.pgbench_accounts", "public.pgbench_branches"]));
    s.refused(&["update", "herd", "small", "add=pgbench_branches"], "already exists");
    s.refused(&["update", "herd", "small", "remove=pgbench_tellers"], "does not exist");
    s.refused(&["update", "herd", "nosuch", "add=pgbench_tellers"], "herd \"nosuch\" does not exist");
    s.refused(&["update", "herd", "small", "swap=x"], "unknown key \"swap\"");

    // Dbgroups.
    let out = s.ibex.sh("add dbgroup g t1:source t2:source:10 t3").ok();
    assert!(out.stdout.contains("t1:source t2:source:10 t3:target"), "{}", out.stdout);
    let groups = s.ibex.sh("list dbgroups --json").ok().json();
    assert_eq!(groups[0]["members"][1], serde_json::json!({"db": "t2", "role": "source", "priority": 10}));
    s.refused(&["add", "dbgroup", "g", "t1:source"], "dbgroup \"g\" already exists");
    s.refused(&["add", "dbgroup", "g2", "t1:source", "nosuch:target"], "db \"nosuch\" does not exist");
    s.refused(&["add", "dbgroup", "g2", "t1:boss"], "bad role \"boss\"");
    s.refused(&["add", "dbgroup", "g2", "t1:source:high"], "bad priority");
    s.refused(&["add", "dbgroup", "g2", "t1:source", "t1:target"], "db \"t1\" is listed twice");
    s.refused(&["add", "dbgroup", "g2"], "required arguments were not provided");
    s.ibex.sh("update dbgroup g t1:source t3:target").ok();

    // Removal is refused while a sync uses the herd, dbgroup or db.
    s.ibex.sh("add sync s1 herd=small dbs=g").ok();
    s.refused(&["remove", "herd", "small"], "herd \"small\" is used by sync s1");
    s.refused(&["remove", "dbgroup", "g"], "dbgroup \"g\" is used by sync s1");
    s.refused(&["remove", "db", "t3"], "db \"t3\" is used by sync s1");
    s.refused(&["update", "dbgroup", "g", "t1:target", "t3:target"], "would have no source");
    s.refused(&["update", "dbgroup", "g", "t1:source"], "needs at least two dbs");
    s.ibex.sh("remove sync s1").ok();
    s.ibex.sh("remove dbgroup g").ok();
    s.ibex.sh("remove herd small").ok();
    s.ibex.sh("remove db t3").ok();
    assert_eq!(s.ibex.sh("list dbgroups --json").ok().json(), serde_json::json!([]));
}

#[test]
fn syncs_and_their_parameters() {
    let s = Cli::new();
    s.standard();
    s.ibex.sh("add dbgroup tgroup t1:source t2:source t3:target").ok();
    s.ibex.sh("add sync foobar herd=therd dbs=tgroup autokick=false checktime=30s onetimecopy=2 lock_timeout=5s").ok();
    // Inline dbs make a dbgroup named after the sync, as Bucardo does.
    s.ibex.sh("add sync oneway herd=therd dbs=t1:source,t3:target conflict_strategy=bucardo_abort").ok();
    let syncs = s.ibex.sh("list syncs --json").ok().json();
    let foobar = &syncs[0];
    assert_eq!(foobar["name"], "foobar");
    assert_eq!(foobar["autokick"], false);
    assert_eq!(foobar["checktime"], "30s");
    assert_eq!(foobar["onetimecopy"], 2);
    assert_eq!(foobar["lock_timeout"], "5s");
    assert_eq!(foobar["conflict_strategy"], "latest");
    assert_eq!(foobar["kidsalive"], true);
    assert_eq!(foobar["isolation_level"], "repeatable read");
    assert_eq!(foobar["dbs"], serde_json::json!(["t1:source", "t2:source", "t3:target"]));
    assert_eq!(syncs[1]["dbgroup"], "oneway");
    assert_eq!(syncs[1]["conflict_strategy"], "abort");
    let table = s.ibex.sh("list syncs").ok();
    assert!(table.stdout.starts_with("Sync"), "{}", table.stdout);

    // Bad input.
    s.refused(&["add", "sync", "foobar", "herd=therd", "dbs=tgroup"], "sync \"foobar\" already exists");
    s.refused(&["add", "sync", "s2", "herd=nosuch", "dbs=tgroup"], "herd \"nosuch\" does not exist");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=nosuch"], "dbgroup \"nosuch\" does not exist");
    s.refused(&["add", "sync", "s2", "herd=therd"], "dbs is required");
    s.refused(&["add", "sync", "s2", "dbs=tgroup"], "herd is required");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=t1:target,t2:target"], "has no source");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=t1:source,t9:target"], "db \"t9\" does not exist");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "onetimecopy=3"], "bad onetimecopy");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "checktime=soon"], "bad checktime");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "autokick=maybe"], "bad autokick");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "status=paused"], "bad status");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "conflict_strategy=t3"], "not a source");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "conflict_strategy=t9,t1"], "not in dbgroup");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "conflict_strategy=a b"], "bad conflict_strategy");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "isolation_level=read_committed"], "lose updates");
    s.refused(&["add", "sync", "s2", "herd=therd", "dbs=tgroup", "speed=fast"], "unknown key \"speed\"");
    s.refused(&["add", "sync", "s 2", "herd=therd", "dbs=tgroup"], "bad sync name");
    s.cluster.psql("ibex", "SELECT 1").unwrap();
    s.ibex.sh("add herd empty").ok();
    s.refused(&["add", "sync", "s2", "herd=empty", "dbs=tgroup"], "herd \"empty\" is empty");

    // update, deactivate, activate.
    s.ibex.sh("update sync foobar conflict_strategy=t2,t1 checktime=off kidsalive=no").ok();
    let foobar = s.ibex.sh("list syncs --json").ok().json()[0].clone();
    assert_eq!(foobar["conflict_strategy"], "t2,t1");
    assert_eq!(foobar["checktime"], "off");
    assert_eq!(foobar["kidsalive"], false);
    s.refused(&["update", "sync", "foobar", "onetimecopy=9"], "bad onetimecopy");
    s.refused(&["update", "sync", "nosuch", "onetimecopy=1"], "sync \"nosuch\" does not exist");
    s.refused(&["update", "sync", "foobar", "herd=nosuch"], "herd \"nosuch\" does not exist");
    s.refused(&["update", "sync", "foobar"], "nothing to change");
    s.ibex.sh("deactivate foobar oneway").ok();
    assert_eq!(s.ibex.sh("list syncs --json").ok().json()[1]["status"], "inactive");
    s.refused(&["activate", "foobar", "nosuch"], "sync \"nosuch\" does not exist");
    s.ibex.sh("activate foobar").ok();
    assert_eq!(s.ibex.sh("list syncs --json").ok().json()[0]["status"], "active");
    s.refused(&["remove", "sync", "nosuch"], "sync \"nosuch\" does not exist");
    s.ibex.sh("remove sync foobar oneway").ok();
    assert_eq!(s.ibex.sh("list syncs --json").ok().json(), serde_json::json!([]));
}

#[test]
fn settings_set_and_show() {
    let s = Cli::new();
    let all = s.ibex.sh("show all --json").ok().json();
    let log_level = all.as_array().unwrap().iter().find(|k| k["key"] == "log_level").unwrap();
    assert_eq!(log_level["value"], "normal");
    assert_eq!(log_level["is_default"], true);
    s.ibex.sh("set log_level=verbose vac_interval=90s").ok();
    let shown = s.ibex.sh("show log_level vac_interval --json").ok().json();
    assert_eq!(shown[0]["value"], "verbose");
    assert_eq!(shown[1]["value"], "1m 30s");
    assert!(s.ibex.sh("show").ok().stdout.contains("verbose"));
    // A bad pair refuses the whole command.
    s.refused(&["set", "log_level=terse", "vac_interval=never"], "bad vac_interval");
    s.refused(&["set", "log_level=chatty"], "bad log_level \"chatty\"");
    s.refused(&["set", "colour=red"], "unknown setting \"colour\"");
    s.refused(&["set", "retry_limit=0"], "bad retry_limit");
    s.refused(&["set", "log_level"], "unexpected argument");
    s.ibex.sh("show nosuch").fails_with("unknown setting \"nosuch\"");
}

#[test]
fn every_command_has_help_with_an_example() {
    let cluster_free = Ibex::new("host=127.0.0.1 port=1 dbname=none").unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["install"],
        &["add", "db"],
        &["add", "table"],
        &["add", "sequence"],
        &["add", "all"],
        &["add", "herd"],
        &["add", "dbgroup"],
        &["add", "sync"],
        &["update", "db"],
        &["update", "herd"],
        &["update", "dbgroup"],
        &["update", "sync"],
        &["remove", "db"],
        &["remove", "table"],
        &["remove", "sequence"],
        &["remove", "herd"],
        &["remove", "dbgroup"],
        &["remove", "sync"],
        &["activate"],
        &["deactivate"],
        &["set"],
        &["show"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = cluster_free.run(&args).ok();
        assert!(out.stdout.contains("Example"), "`ibex {}` has no example:\n{}", args.join(" "), out.stdout);
    }
    cluster_free.sh("frobnicate").fails_with("unrecognized subcommand");
    cluster_free.sh("list widgets").fails_with("unrecognized subcommand");
}
