//! Configuration as code: `ibex plan`, `ibex apply` and `ibex dump` on real
//! clusters. A file builds a working sync on an empty catalog, a dump
//! applies back as a no-op, changes show in the plan and apply makes them,
//! bad files change nothing, and no password is ever written.

use std::path::{Path, PathBuf};

use ibex_tests::{Outcome, Setup};

/// Creates databases `a` and `b` with two tables and registers nothing.
fn two_dbs(s: &Setup) {
    s.cluster.create_db("a").unwrap();
    s.sql(
        "a",
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         CREATE TABLE other (id int PRIMARY KEY, n int);
         CREATE TABLE coded (code text NOT NULL, v text);
         CREATE UNIQUE INDEX coded_code ON coded (code);
         CREATE SEQUENCE items_seq;",
    );
    s.cluster.clone_db("a", "b").unwrap();
}

fn db_section(s: &Setup, name: &str) -> String {
    format!(
        "[db.{name}]\ndbname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n",
        s.cluster.port()
    )
}

/// A two-master sync of `items` and `other`, with `extra` appended.
fn two_master_file(s: &Setup, sync_extra: &str, tables: &[&str]) -> String {
    let mut text = format!("{}\n{}\n", db_section(s, "a"), db_section(s, "b"));
    for t in tables {
        text.push_str(&format!("[table.\"public.{t}\"]\ndb = \"a\"\n\n"));
    }
    let members: Vec<String> = tables.iter().map(|t| format!("\"public.{t}\"")).collect();
    text.push_str(&format!(
        "[herd.h]\nmembers = [{}]\n\n[dbgroup.g]\nmembers = [\"a:source\", \"b:source\"]\n\n[sync.ab]\nherd = \"h\"\ndbgroup = \"g\"\n{sync_extra}",
        members.join(", ")
    ));
    text
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run(s: &Setup, args: &[&str], file: &Path) -> Outcome {
    let mut all = args.to_vec();
    let f = file.to_str().unwrap();
    all.insert(1, f);
    s.ibex.run(&all)
}

/// `ibex apply FILE` on a terminal (script(1) gives it one), answering the
/// confirmation with `answer`. The terminal merges stdout and stderr.
fn apply_on_terminal(s: &Setup, file: &Path, answer: &str) -> Outcome {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let line = format!("{} apply {}", s.ibex.bin.display(), file.display());
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("IBEX_CONTROL", &s.ibex.control)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running script(1)");
    child.stdin.take().expect("script's stdin").write_all(format!("{answer}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().expect("waiting for script(1)");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

#[test]
fn apply_on_an_empty_catalog_builds_a_working_two_master_sync() {
    let s = Setup::new();
    two_dbs(&s);
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "catalog.toml", &two_master_file(&s, "", &["items", "other"]));
    let empty = s.snapshot();

    let plan = run(&s, &["plan"], &file).ok();
    for line in ["+ db a", "+ db b", "+ table public.items", "+ herd h", "+ dbgroup g", "+ sync ab"] {
        assert!(plan.stdout.contains(line), "plan lacks {line:?}:\n{}", plan.stdout);
    }
    let json = run(&s, &["plan", "--json"], &file).ok().json();
    assert_eq!(json["add"], 7, "{json}");
    assert_eq!(json["steps"][0]["object"], "db", "{json}");
    assert_eq!(s.snapshot(), empty, "plan changed the catalog");

    // No terminal and no --yes: refused, nothing changed.
    run(&s, &["apply"], &file).fails_with("--yes");
    assert_eq!(s.snapshot(), empty, "a refused apply changed the catalog");

    // On a terminal it asks; anything but yes changes nothing.
    let declined = apply_on_terminal(&s, &file, "n");
    assert_ne!(declined.code, 0, "{declined:?}");
    assert!(declined.stdout.contains("Apply these changes (7 to add"), "{}", declined.stdout);
    assert!(declined.stdout.contains("the plan was not confirmed"), "{}", declined.stdout);
    assert_eq!(s.snapshot(), empty, "a declined apply changed the catalog");

    let applied = apply_on_terminal(&s, &file, "y");
    assert_eq!(applied.code, 0, "{applied:?}");
    assert!(applied.stdout.contains("Validated sync ab"), "{}", applied.stdout);
    s.sql("a", "INSERT INTO items VALUES (1, 'from a')");
    s.sql("b", "INSERT INTO other VALUES (7, 70)");
    let r = s.run("ab");
    assert_eq!(r["run"]["state"], "good", "{r}");
    assert_eq!(s.sql("b", "SELECT v FROM items WHERE id = 1"), "from a");
    assert_eq!(s.sql("a", "SELECT n FROM other WHERE id = 7"), "70");

    // The same file again: nothing to do.
    let again = run(&s, &["apply", "--yes"], &file).ok();
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);
}

#[test]
fn a_dump_applies_back_as_a_no_op_and_holds_no_password() {
    let s = Setup::new();
    two_dbs(&s);
    let port = s.port_arg();
    for db in ["a", "b"] {
        s.ibex
            .run(&[
                "add",
                "db",
                db,
                &format!("dbname={db}"),
                "host=127.0.0.1",
                &port,
                "user=postgres",
                "pass=hunter2-secret",
            ])
            .ok();
    }
    s.ibex.sh("add table items other db=a herd=h").ok();
    s.ibex.sh("add table coded db=a herd=h pkey=code").ok();
    s.ibex.sh("add sequence items_seq db=a herd=h").ok();
    s.ibex.sh("add sync ab herd=h dbs=a:source:5,b:source checktime=30s conflict_strategy=b,a autokick=false").ok();
    s.ibex.sh("update table items capture_old=true").ok();
    s.ibex.sh("set retry_limit=5").ok();
    s.ibex.sh("update db b status=inactive").ok();
    let files = tempfile::tempdir().unwrap();
    let dir_arg = format!("dir={}", files.path().display());
    s.ibex.run(&["add", "db", "files", "type=flatfile", &dir_arg, "dialect=mysql"]).ok();

    let dumped = s.ibex.sh("dump").ok().stdout;
    assert!(!dumped.contains("hunter2"), "the dump holds a password:\n{dumped}");
    assert!(!dumped.contains("password ="), "the dump holds a password key:\n{dumped}");
    assert!(dumped.contains("A password is stored in the catalog"), "{dumped}");
    for needle in [
        "[sync.ab]",
        "checktime = \"30s\"",
        "conflict_strategy = \"b,a\"",
        "pkey = [\"code\"]",
        "capture_old = true",
        "a:source:5",
        "[sequence.\"public.items_seq\"]",
        "retry_limit = \"5\"",
        "status = \"inactive\"",
        "type = \"flatfile\"",
        "dialect = \"mysql\"",
    ] {
        assert!(dumped.contains(needle), "the dump lacks {needle:?}:\n{dumped}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.toml");
    s.ibex.run(&["dump", file.to_str().unwrap()]).ok();
    let before = s.snapshot();
    let plan = run(&s, &["plan", "--json"], &file).ok().json();
    assert_eq!(plan["steps"].as_array().map(Vec::len), Some(0), "{plan}");
    let applied = run(&s, &["apply", "--yes"], &file).ok();
    assert!(applied.stdout.contains("No changes"), "{}", applied.stdout);
    assert_eq!(s.snapshot(), before, "applying the dump changed the catalog");

    // A password from the environment is used, shown as changed, never printed.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text = text.replacen("[db.a]\n", "[db.a]\npassword_env = \"IBEX_TEST_PASSWORD\"\n", 1);
    let with_env = write(dir.path(), "env.toml", &text);
    run(&s, &["plan"], &with_env).fails_with("IBEX_TEST_PASSWORD, which is not set");
    let mut ibex = s.ibex.clone();
    ibex.envs.push(("IBEX_TEST_PASSWORD".into(), "new-secret-value".into()));
    let plan = ibex.run(&["plan", with_env.to_str().unwrap()]).ok();
    assert!(plan.stdout.contains("password: (stored) → (from $IBEX_TEST_PASSWORD)"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("new-secret-value"), "{}", plan.stdout);
    ibex.run(&["apply", with_env.to_str().unwrap(), "--yes"]).ok();
    let stored = s.sql("ibex", "SELECT conn->>'password' FROM ibex.db WHERE name = 'a'");
    assert_eq!(stored, "new-secret-value");
    let dumped = s.ibex.sh("dump").ok().stdout;
    assert!(!dumped.contains("new-secret-value") && !dumped.contains("hunter2"), "{dumped}");
}

#[test]
fn plan_shows_a_change_and_apply_makes_it() {
    let s = Setup::new();
    two_dbs(&s);
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), "v1.toml", &two_master_file(&s, "", &["items", "other"]));
    run(&s, &["apply", "--yes"], &first).ok();
    assert!(s.sql("a", "SELECT count(*) FROM ibex.captured WHERE rel_name = 'other'") == "1");

    let files = tempfile::tempdir().unwrap();
    let flatfile = format!("[db.files]\ntype = \"flatfile\"\ndir = \"{}\"\n\n", files.path().display());
    let v2 = flatfile
        + &two_master_file(&s, "checktime = \"30s\"\nconflict_strategy = \"a,b\"\nonetimecopy = 1\n", &["items"]);
    let second = write(dir.path(), "v2.toml", &v2);
    let plan = run(&s, &["plan"], &second).ok().stdout;
    for line in [
        "+ db files",
        "~ herd h",
        "~ sync ab",
        "checktime: off → 30s",
        "conflict_strategy: latest → a,b",
        "- table public.other",
    ] {
        assert!(plan.contains(line), "plan lacks {line:?}:\n{plan}");
    }
    // onetimecopy asks for a copy when a sync is added; it is no change later.
    assert!(!plan.contains("onetimecopy"), "{plan}");
    run(&s, &["apply", "--yes"], &second).ok();
    let syncs = s.ibex.run(&["list", "syncs", "--json"]).ok().json();
    assert_eq!(syncs[0]["checktime"], "30s", "{syncs}");
    assert_eq!(syncs[0]["conflict_strategy"], "a,b", "{syncs}");
    assert_eq!(syncs[0]["onetimecopy"], 0, "{syncs}");
    let tables = s.ibex.run(&["list", "tables", "--json"]).ok().json();
    let names: Vec<&str> = tables.as_array().unwrap().iter().filter_map(|t| t["name"]["name"].as_str()).collect();
    assert_eq!(names, vec!["items"], "{tables}");
    let dbs = s.ibex.run(&["list", "dbs", "--json"]).ok().json();
    assert!(dbs.to_string().contains("flatfile"), "{dbs}");
    // Capture left the table no sync reads any more.
    assert_eq!(s.sql("a", "SELECT count(*) FROM ibex.captured WHERE rel_name = 'other'"), "0");
    assert!(run(&s, &["plan"], &second).ok().stdout.contains("No changes"));
    // And the sync still replicates.
    s.sql("b", "INSERT INTO items VALUES (2, 'from b')");
    assert_eq!(s.run("ab")["run"]["state"], "good");
    assert_eq!(s.sql("a", "SELECT v FROM items WHERE id = 2"), "from b");
}

#[test]
fn bad_files_say_where_and_change_nothing() {
    let s = Setup::new();
    two_dbs(&s);
    let dir = tempfile::tempdir().unwrap();
    let good = two_master_file(&s, "", &["items"]);
    let base = write(dir.path(), "good.toml", &good);
    run(&s, &["apply", "--yes"], &base).ok();
    let before = s.snapshot();

    // An unknown key: the line and the key are named.
    let unknown = write(dir.path(), "unknown.toml", &good.replace("[sync.ab]\n", "[sync.ab]\ncolour = \"red\"\n"));
    let line = good.lines().position(|l| l == "[sync.ab]").unwrap() + 2;
    let err = run(&s, &["apply", "--yes"], &unknown).fails_with("colour").stderr;
    assert!(err.contains(&format!("unknown.toml:{line}:")), "{err}");
    assert!(err.contains("remove the key or correct its spelling"), "{err}");

    // A sync naming a herd the file does not have.
    let dangling = write(dir.path(), "dangling.toml", &good.replace("herd = \"h\"", "herd = \"nope\""));
    let line = good.lines().position(|l| l == "herd = \"h\"").unwrap() + 1;
    let err = run(&s, &["apply", "--yes"], &dangling).fails_with("herd \"nope\" is not a [herd] of the file").stderr;
    assert!(err.contains(&format!("dangling.toml:{line}:")), "{err}");

    // A bad value, a missing db and TOML that does not parse.
    let bad_value = write(dir.path(), "value.toml", &good.replace("[sync.ab]\n", "[sync.ab]\nonetimecopy = 7\n"));
    run(&s, &["apply", "--yes"], &bad_value).fails_with("bad onetimecopy");
    let no_db = write(dir.path(), "nodb.toml", &good.replace("\"b:source\"", "\"c:source\""));
    run(&s, &["plan"], &no_db).fails_with("db \"c\" is not a [db] of the file");
    let broken = write(dir.path(), "broken.toml", &good.replace("[herd.h]", "[herd.h"));
    run(&s, &["plan"], &broken).fails_with("broken.toml:");
    // A table the db does not have: refused by the same check as `add table`.
    let missing = two_master_file(&s, "", &["items", "nosuch"]);
    let missing = write(dir.path(), "missing.toml", &missing);
    run(&s, &["apply", "--yes"], &missing).fails_with("nosuch");

    assert_eq!(s.snapshot(), before, "a refused file changed the catalog");
}

#[test]
fn plugins_and_their_attachments_dump_and_build_another_catalog() {
    let s = Setup::new();
    two_dbs(&s);
    for copy in ["c", "d"] {
        s.cluster.clone_db("a", copy).unwrap();
    }
    for db in ["a", "b"] {
        s.add_db(db, db).ok();
    }
    let merge = ibex_tests::plugins::official("additive-merge").unwrap();
    let mask = ibex_tests::plugins::official("mask-columns").unwrap();
    let fixer = ibex_tests::plugins::official("unique-fixer").unwrap();
    s.ibex.sh("add table items other db=a herd=h").ok();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    s.ibex
        .run(&["add", "plugin", "merge", &path(&merge), "config.columns=n", "grant=a", "on_error=fallback=latest"])
        .ok();
    s.ibex.run(&["add", "plugin", "mask", &path(&mask), "config.columns=v", "memory=32MiB", "timeout=2s"]).ok();
    s.ibex
        .run(&[
            "add",
            "plugin",
            "fixer",
            &path(&fixer),
            "grant=a,b",
            "write=a,b",
            "write_tables=items",
            "config.column=v",
        ])
        .ok();
    s.ibex.sh("add sync ab herd=h dbs=a:source,b:source conflict_strategy=plugin:merge").ok();
    s.ibex.sh("add transform mask sync=ab table=items target=b").ok();
    s.ibex.sh("add hook fixer sync=ab when=exception,before_sync").ok();

    let dumped = s.ibex.sh("dump").ok().stdout;
    for needle in [
        "[plugin.merge]",
        "on_error = \"fallback=latest\"",
        "memory = 33554432",
        "write_tables = [\"items\"]",
        "conflict_strategy = \"plugin:merge\"",
        "[[sync.ab.transform]]",
        "[[sync.ab.hook]]",
    ] {
        assert!(dumped.contains(needle), "the dump lacks {needle:?}:\n{dumped}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "dump.toml", &dumped);
    assert!(run(&s, &["plan"], &file).ok().stdout.contains("No changes"));

    // Another catalog, other databases, the components from files.
    let other = ibex_tests::Ibex::new(s.cluster.dsn("ibex2")).unwrap();
    other.sh("install").ok();
    let mut text = dumped.replace("dbname = \"a\"", "dbname = \"c\"").replace("dbname = \"b\"", "dbname = \"d\"");
    let no_path = write(dir.path(), "no-path.toml", &text);
    other.run(&["plan", no_path.to_str().unwrap()]).fails_with("add path = \"FILE.wasm\"");
    for (name, wasm) in [("merge", &merge), ("mask", &mask), ("fixer", &fixer)] {
        text =
            text.replacen(&format!("[plugin.{name}]\n"), &format!("[plugin.{name}]\npath = \"{}\"\n", path(wasm)), 1);
    }
    let with_paths = write(dir.path(), "with-paths.toml", &text);
    other.run(&["apply", with_paths.to_str().unwrap(), "--yes"]).ok();
    let rebuilt = other.sh("dump").ok().stdout;
    let expected = dumped.replace("dbname = \"a\"", "dbname = \"c\"").replace("dbname = \"b\"", "dbname = \"d\"");
    assert_eq!(rebuilt, expected, "the rebuilt catalog dumps differently");
    // A manifest change: the plan names the field, apply makes it.
    assert!(text.contains("timeout = \"2s\""), "{text}");
    let longer = write(dir.path(), "longer.toml", &text.replacen("timeout = \"2s\"", "timeout = \"5s\"", 1));
    let plan = other.run(&["plan", longer.to_str().unwrap()]).ok().stdout;
    assert!(plan.contains("~ plugin mask") && plan.contains("timeout: 2s → 5s"), "{plan}");
    other.run(&["apply", longer.to_str().unwrap(), "--yes"]).ok();
    let plugins = other.run(&["list", "plugins", "--json"]).ok().json();
    let mask_view = plugins.as_array().unwrap().iter().find(|p| p["name"] == "mask").expect("plugin mask");
    assert_eq!(mask_view["timeout_ms"], 5000, "{plugins}");
    // A component that is not the one the file names is refused.
    let wrong = write(dir.path(), "wrong.toml", &text.replacen(&path(&mask), &path(&merge), 1));
    let third = ibex_tests::Ibex::new(s.cluster.dsn("ibex3")).unwrap();
    third.sh("install").ok();
    third.run(&["apply", wrong.to_str().unwrap(), "--yes"]).fails_with("it is not the component you meant");
}

#[test]
fn capture_in_the_file_moves_a_db_to_wal_and_back() {
    let s = Setup::new();
    two_dbs(&s);
    let dir = tempfile::tempdir().unwrap();
    let triggers = two_master_file(&s, "", &["items"]);
    // Only db a on WAL.
    let wal = triggers.replacen("user = \"postgres\"\n", "user = \"postgres\"\ncapture = \"wal\"\n", 1);
    let file = write(dir.path(), "wal.toml", &wal);
    run(&s, &["apply", "--yes"], &file).ok();
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE database = 'a'";
    assert_eq!(s.sql("a", slots), "1", "no WAL capture slot for db a");
    assert_eq!(s.sql("a", "SELECT count(*) FROM ibex.wal"), "1");
    s.sql("a", "INSERT INTO items VALUES (1, 'through the slot')");
    assert_eq!(s.run("ab")["run"]["state"], "good");
    assert_eq!(s.sql("b", "SELECT v FROM items WHERE id = 1"), "through the slot");
    // The dump says so, and the file is a no-op now.
    let dump = s.ibex.run(&["dump"]).ok().stdout;
    assert!(dump.contains("capture = \"wal\""), "{dump}");
    let again = run(&s, &["plan"], &file).ok().stdout;
    assert!(again.contains("No changes"), "{again}");
    // Left out, capture is trigger again: the plan says so and the slot goes.
    let back = write(dir.path(), "triggers.toml", &triggers);
    let plan = run(&s, &["plan"], &back).ok().stdout;
    assert!(plan.contains("capture") && plan.contains("wal") && plan.contains("trigger"), "{plan}");
    run(&s, &["apply", "--yes"], &back).ok();
    assert_eq!(s.sql("a", slots), "0", "the WAL capture slot of db a is still there");
    s.sql("a", "INSERT INTO items VALUES (2, 'through the triggers')");
    assert_eq!(s.run("ab")["run"]["state"], "good");
    assert_eq!(s.sql("b", "SELECT v FROM items WHERE id = 2"), "through the triggers");
    // Not a PostgreSQL value: refused, saying what is allowed, nothing changed.
    let bad = write(
        dir.path(),
        "bad.toml",
        &triggers.replacen("user = \"postgres\"\n", "user = \"postgres\"\ncapture = \"logical\"\n", 1),
    );
    let refused = run(&s, &["apply", "--yes"], &bad);
    assert!(!refused.success() && refused.stderr.contains("capture=wal"), "{}", refused.stderr);
}
