//! Targets other than PostgreSQL (issue 16, item 3): a SQLite file kept
//! equal to the source through inserts, updates, deletes, key changes, a
//! TRUNCATE and a table of many types; SQL files (flatfile) whose replay
//! into an empty PostgreSQL database gives the source's contents; the MySQL
//! dialect's text; foreign dbs refused as sources and unmappable columns
//! refused at `add sync`, naming the column.

use std::path::Path;

use ibex_tests::Setup;
use ibex_tests::mariadb::MariaDb;
use rusqlite::types::ValueRef;

/// Tables of the scenarios: a plain one and one with many types. `gen` is
/// generated, so it is never copied.
const SCHEMA: &str = r#"
    CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int, price numeric(10,2));
    CREATE TABLE kinds (
        id int, tag text,
        i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8, bo boolean,
        t text, vc varchar(20), ch char(3), b bytea, j json, jb jsonb, arr int[], tarr text[], u uuid,
        d date, tm time, ts timestamp, tstz timestamptz, iv interval, ip inet,
        gen int GENERATED ALWAYS AS (i2 * 2) STORED,
        PRIMARY KEY (id, tag));
"#;

/// Columns of `kinds` that COPY carries (all but the generated one).
const KIND_COLUMNS: &str =
    "id, tag, i2, i4, i8, num, f4, f8, bo, t, vc, ch, b, j, jb, arr, tarr, u, d, tm, ts, tstz, iv, ip";

const KIND_ROWS: &str = r#"
    INSERT INTO kinds (id, tag, i2, i4, i8, num, f4, f8, bo, t, vc, ch, b, j, jb, arr, tarr, u, d, tm, ts, tstz, iv, ip) VALUES
      (1, 'ünïcødé ☃', -32768, 2147483647, -9223372036854775808, 123456789012345678901234567890.123456789012345678901234567890,
       1.5, -2.25, true, E'quote '' dq " back\\slash tab\t nl\n cr\r end', 'varchar', 'abc', '\x00ff10', '{"a": [1, 2.50, null]}',
       '{"b": {"c": true}}', ARRAY[1, NULL, 3], ARRAY['x', NULL, 'y,z', '"q"'], 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
       '2024-02-29', '23:59:59.999999', '1999-12-31 23:59:59.5', '2020-01-01 00:00:00+05:30', '1 year 2 mons -3 days 04:05:06.7', '10.1.2.3/8'),
      (2, '', NULL, NULL, NULL, 'NaN', 'NaN', 'Infinity', false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL),
      (3, 'big', 1, 1, 1, 0.1, 0.1, 0.1, NULL, repeat('long text ', 20000), '', '', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 5000) i)::bytea,
       NULL, NULL, ARRAY[[1, 2], [3, 4]], '{}', NULL, 'infinity', '00:00', '-infinity', 'infinity', '0', '::1');
"#;

/// A source db `src` with the tables, registered; herd `h` holds both.
fn source(s: &Setup, rows: bool) {
    s.cluster.create_db("src").unwrap();
    s.sql("src", SCHEMA);
    if rows {
        s.sql("src", "INSERT INTO items SELECT i, 'item ' || i, i * 10, i * 1.25 FROM generate_series(1, 50) i");
        s.sql("src", KIND_ROWS);
    }
    s.add_db("src", "src").ok();
    s.ibex.sh("add table items kinds db=src herd=h").ok();
}

/// Rows of `table` on the PostgreSQL db, each column as PostgreSQL's text.
fn pg_rows(s: &Setup, db: &str, table: &str, columns: &str) -> Vec<Vec<Option<String>>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = s.cluster.connect(db).await.unwrap();
        // The text protocol gives each type's output text, as COPY does
        // (a cast to text would trim char(n)'s padding).
        let sql = format!(
            "SET TimeZone = 'UTC'; SET extra_float_digits = 3; SELECT {columns} FROM {table} ORDER BY {}",
            order_of(table)
        );
        let mut rows = Vec::new();
        for message in client.simple_query(&sql).await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = message {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
        }
        rows
    })
}

fn order_of(table: &str) -> &'static str {
    if table == "kinds" { "id, tag" } else { "id" }
}

/// Rows of `table` in the SQLite file, each value written as PostgreSQL
/// writes its text (booleans are 0/1 there, bytea a blob, floats reals).
fn sqlite_rows(path: &Path, table: &str, columns: &str) -> Vec<Vec<Option<String>>> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let names: Vec<&str> = columns.split(", ").collect();
    let quoted: Vec<String> = names.iter().map(|c| format!("\"{c}\"")).collect();
    let sql = format!("SELECT {} FROM \"{table}\" ORDER BY {}", quoted.join(", "), order_of(table));
    let mut stmt = conn.prepare(&sql).unwrap();
    let rows = stmt
        .query_map([], |row| {
            let mut out = Vec::new();
            for (i, name) in names.iter().enumerate() {
                out.push(match row.get_ref(i)? {
                    ValueRef::Null => None,
                    ValueRef::Integer(v) if *name == "bo" => Some(if v == 1 { "t" } else { "f" }.to_string()),
                    ValueRef::Integer(v) => Some(v.to_string()),
                    ValueRef::Real(v) if v == f64::INFINITY => Some("Infinity".into()),
                    ValueRef::Real(v) if v == f64::NEG_INFINITY => Some("-Infinity".into()),
                    ValueRef::Real(v) => Some(v.to_string()),
                    ValueRef::Text(t) => Some(String::from_utf8(t.to_vec()).unwrap()),
                    ValueRef::Blob(b) => {
                        Some(format!("\\x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()))
                    }
                });
            }
            Ok(out)
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn assert_sqlite_equal(s: &Setup, path: &Path) {
    for (table, columns) in [("items", "id, name, qty, price"), ("kinds", KIND_COLUMNS)] {
        let want = pg_rows(s, "src", table, columns);
        let got = sqlite_rows(path, table, columns);
        assert_eq!(want.len(), got.len(), "row count of {table}");
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w, g, "a row of {table} differs");
        }
    }
}

fn changes(s: &Setup) {
    s.sql(
        "src",
        r#"
        INSERT INTO items VALUES (1001, 'new', 1, 9.99), (1002, 'newer', NULL, NULL);
        UPDATE items SET qty = qty + 1, name = name || E' \\ ''x''' WHERE id % 7 = 0;
        DELETE FROM items WHERE id IN (2, 4, 1002);
        UPDATE items SET id = 5000 WHERE id = 3;
        UPDATE kinds SET tag = 'renamed', f8 = 3.75, bo = NOT bo WHERE id = 1;
        UPDATE kinds SET b = '\x', arr = NULL WHERE id = 3;
        DELETE FROM kinds WHERE id = 2;
        INSERT INTO kinds (id, tag, t, tarr) VALUES (4, E'tab\there', E'\\N is not null', '{"a\\\\b"}');
        "#,
    );
}

#[test]
fn sqlite_target_equals_source() {
    let s = Setup::new();
    source(&s, true);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy.db");
    let out = s.ibex.run(&["add", "db", "lite", "type=sqlite", &format!("path={}", file.display())]).ok();
    assert!(out.stdout.contains("a target only"), "{}", out.stdout);
    s.ibex.sh("add sync tolite herd=h dbs=src:source,lite:target onetimecopy=2").ok();
    // The first run copies the existing rows whole (the tables are empty).
    let run = s.run("tolite");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_sqlite_equal(&s, &file);
    // Inserts, updates, deletes and a key change, over two runs.
    changes(&s);
    let run = s.run("tolite");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_sqlite_equal(&s, &file);
    s.sql("src", "UPDATE items SET id = id + 10000 WHERE id < 20; INSERT INTO items VALUES (7, 'back', 7, 7)");
    s.run("tolite");
    assert_sqlite_equal(&s, &file);
    // A TRUNCATE on the source empties the table there too, later rows follow.
    s.sql("src", "TRUNCATE items; INSERT INTO items VALUES (1, 'after truncate', 1, 1)");
    let run = s.run("tolite");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_sqlite_equal(&s, &file);
    assert_eq!(sqlite_rows(&file, "items", "id").len(), 1);
    // Nothing changed: nothing written.
    let run = s.run("tolite");
    assert_eq!(run["run"]["inserted"], 0, "{run}");
}

#[test]
fn foreign_dbs_are_targets_only_and_unmappable_columns_are_refused() {
    let s = Setup::new();
    source(&s, false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.db");
    s.ibex.run(&["add", "db", "lite", "type=sqlite", "path=relative.db"]).fails_with("absolute path");
    s.ibex.run(&["add", "db", "lite", "type=oracle"]).fails_with("unknown db type");
    s.ibex.run(&["add", "db", "lite", "type=sqlite", &format!("path={}", file.display())]).ok();
    s.ibex
        .sh("add sync back herd=h dbs=lite:source,src:target")
        .fails_with("db lite is a sqlite db and can only be a target");
    let listed = s.ibex.sh("list dbs --json").ok().json();
    let lite = listed.as_array().unwrap().iter().find(|d| d["name"] == "lite").cloned().unwrap_or_default();
    assert_eq!(lite["type"], "sqlite", "{listed}");
    s.ibex.sh("update db lite path=/elsewhere.db").fails_with("db lite is a sqlite db: only status= can change");
    s.ibex.sh("update db lite status=inactive").ok();
    // The catalog is unchanged by the refused sync.
    s.ibex.sh("list syncs").ok();
    assert_eq!(s.sql("ibex", "SELECT count(*) FROM ibex.sync"), "0");

    // The MySQL dialect has no arrays; SQLite has no enums.
    s.sql("src", "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TABLE feel (id int PRIMARY KEY, m mood)");
    s.ibex.sh("add table feel db=src herd=f").ok();
    s.ibex.sh("add sync feelings herd=f dbs=src:source,lite:target").fails_with("column m of table public.feel");
    s.ibex.run(&["add", "db", "my", "type=flatfile", &format!("dir={}", dir.path().display()), "dialect=mysql"]).ok();
    s.ibex.sh("add sync tomy herd=h dbs=src:source,my:target").fails_with("column arr of table public.kinds");
}

/// Replays a flatfile directory's files in order into db `into`.
fn replay(s: &Setup, dir: &Path, into: &str) -> usize {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    for file in &files {
        // psql -f: a file can be larger than one command-line argument may be.
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(s.cluster.port().to_string())
            .args(["-d", into, "-f"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "replaying {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
    files.len()
}

#[test]
fn flatfile_postgres_dialect_replays_to_the_source() {
    let s = Setup::new();
    source(&s, true);
    let dir = tempfile::tempdir().unwrap();
    s.ibex
        .run(&["add", "db", "files", "type=flatfile", &format!("dir={}", dir.path().display()), "dialect=postgres"])
        .ok();
    s.ibex.sh("add sync tofiles herd=h dbs=src:source,files:target onetimecopy=1").ok();
    let run = s.run("tofiles");
    assert_eq!(run["run"]["state"], "good", "{run}");
    changes(&s);
    s.run("tofiles");
    s.sql(
        "src",
        "UPDATE items SET id = id + 10000 WHERE id < 20; TRUNCATE kinds; INSERT INTO kinds (id, tag) VALUES (9, 'x')",
    );
    s.run("tofiles");
    // An empty run leaves no file.
    s.run("tofiles");
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 3, "one file per run that changed something");
    s.cluster.create_db("replay").unwrap();
    assert_eq!(replay(&s, dir.path(), "replay"), 3);
    // `gen` is generated on the source and never copied: compare the rest.
    for (table, columns) in [("items", "id, name, qty, price"), ("kinds", KIND_COLUMNS)] {
        assert_eq!(pg_rows(&s, "src", table, columns), pg_rows(&s, "replay", table, columns), "table {table}");
    }
    assert_eq!(s.sql("replay", "SELECT count(*) FROM items"), s.sql("src", "SELECT count(*) FROM items"));
}

#[test]
fn flatfile_mysql_dialect_writes_mysql_sql() {
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql(
        "src",
        r#"CREATE TABLE prices (id int PRIMARY KEY, name text, price numeric(8,2), ok boolean, b bytea,
                                    at timestamptz, day date, doc jsonb);
           INSERT INTO prices VALUES (1, E'it''s a \\ back`slash', 1.50, true, '\xdeadbeef', '2024-05-06 07:08:09.5+02', '2024-01-31', '{"k": 1}');"#,
    );
    s.add_db("src", "src").ok();
    s.ibex.sh("add table prices db=src herd=h").ok();
    let dir = tempfile::tempdir().unwrap();
    s.ibex.run(&["add", "db", "my", "type=flatfile", &format!("dir={}", dir.path().display()), "dialect=mysql"]).ok();
    s.ibex.sh("add sync tomy herd=h dbs=src:source,my:target onetimecopy=1").ok();
    s.run("tomy");
    s.sql("src", "DELETE FROM prices WHERE id = 1; INSERT INTO prices (id, ok) VALUES (2, false)");
    s.run("tomy");
    let mut files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 2);
    let first = std::fs::read_to_string(&files[0]).unwrap();
    for needle in [
        "SET time_zone = '+00:00';",
        "CREATE TABLE IF NOT EXISTS `prices` (`id` INT NOT NULL, `name` LONGTEXT, `price` DECIMAL(8,2), `ok` BOOLEAN, `b` LONGBLOB, `at` DATETIME(6), `day` DATE, `doc` JSON, PRIMARY KEY (`id`)) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;",
        "START TRANSACTION;",
        "DELETE FROM `prices`;",
        "INSERT INTO `prices` (`id`, `name`, `price`, `ok`, `b`, `at`, `day`, `doc`) VALUES\n(1, 'it''s a \\\\ back`slash', 1.50, TRUE, X'deadbeef', '2024-05-06 05:08:09.5', '2024-01-31', '{\"k\": 1}');",
        "COMMIT;",
    ] {
        assert!(first.contains(needle), "missing {needle:?} in:\n{first}");
    }
    assert!(
        first.find("CREATE TABLE") < first.find("START TRANSACTION"),
        "DDL commits implicitly in MySQL: it comes first"
    );
    let second = std::fs::read_to_string(&files[1]).unwrap();
    let delete = second.lines().find(|l| l.starts_with("DELETE FROM `prices` WHERE ")).unwrap_or_default();
    assert!(delete.contains("(`id` = 1)") && delete.contains("(`id` = 2)"), "{second}");
    assert!(second.contains("VALUES\n(2, NULL, NULL, FALSE, NULL, NULL, NULL, NULL);"), "{second}");
}

#[test]
fn a_row_transform_reshapes_rows_for_a_sqlite_target() {
    let s = Setup::new();
    s.cluster.create_db("crm").unwrap();
    s.sql(
        "crm",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text);
         INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '555-1'), (2, 'Bob', NULL, '555-2');",
    );
    s.add_db("crm", "crm").ok();
    s.ibex.sh("add table customers db=crm herd=h").ok();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crm.db");
    s.ibex.run(&["add", "db", "lite", "type=sqlite", &format!("path={}", file.display())]).ok();
    let plain = dir.path().join("plain.db");
    s.ibex.run(&["add", "db", "plain", "type=sqlite", &format!("path={}", plain.display())]).ok();
    s.ibex.sh("add sync out herd=h dbs=crm:source,lite:target,plain:target onetimecopy=1").ok();
    let plugin = ibex_tests::plugins::official("mask-columns").unwrap();
    s.ibex.run(&["add", "plugin", "mask", plugin.to_str().unwrap(), "config.columns=email,phone"]).ok();
    // Masked for db lite only; db plain gets the rows as they are.
    s.ibex.sh("add transform mask sync=out table=customers target=lite").ok();
    // The full copy goes through the transform, and so do later changes.
    s.run("out");
    let columns = "id, name, email, phone";
    let rows = |v: &[[Option<&str>; 4]]| -> Vec<Vec<Option<String>>> {
        v.iter().map(|r| r.iter().map(|c| c.map(str::to_string)).collect()).collect()
    };
    assert_eq!(
        sqlite_rows(&file, "customers", columns),
        rows(&[[Some("1"), Some("Ann"), Some("***"), Some("***")], [Some("2"), Some("Bob"), None, Some("***")]])
    );
    s.sql("crm", "UPDATE customers SET name = 'Anne', email = 'anne@x' WHERE id = 1; INSERT INTO customers VALUES (3, 'Cy', 'cy@x', NULL); DELETE FROM customers WHERE id = 2");
    let run = s.run("out");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(
        sqlite_rows(&file, "customers", columns),
        rows(&[[Some("1"), Some("Anne"), Some("***"), Some("***")], [Some("3"), Some("Cy"), Some("***"), None]])
    );
    assert_eq!(sqlite_rows(&plain, "customers", columns), pg_rows(&s, "crm", "customers", columns));
}

#[test]
fn two_masters_feed_one_sqlite_target() {
    let s = Setup::new();
    s.cluster.create_db("m1").unwrap();
    s.sql("m1", "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int, price numeric(10,2))");
    s.sql("m1", "INSERT INTO items SELECT i, 'item ' || i, i, i FROM generate_series(1, 20) i");
    s.dbs_from("m1", &["m1", "m2"]);
    s.ibex.sh("add table items db=m1 herd=h").ok();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mm.db");
    s.ibex.run(&["add", "db", "lite", "type=sqlite", &format!("path={}", file.display())]).ok();
    s.ibex.sh("add sync mm herd=h dbs=m1:source,m2:source,lite:target onetimecopy=2").ok();
    s.run("mm");
    // Both masters change the same key (m2 last, so it wins), and keys of their own.
    s.sql("m1", "UPDATE items SET name = 'from m1' WHERE id = 5; INSERT INTO items VALUES (100, 'm1 only', 1, 1); DELETE FROM items WHERE id = 6");
    s.sql("m2", "UPDATE items SET name = 'from m2' WHERE id = 5; UPDATE items SET id = 200 WHERE id = 7; DELETE FROM items WHERE id = 8");
    let run = s.run("mm");
    assert_eq!(run["run"]["state"], "good", "{run}");
    s.assert_same(&["m1", "m2"], &["items"]);
    let columns = "id, name, qty, price";
    assert_eq!(pg_rows(&s, "m1", "items", columns), sqlite_rows(&file, "items", columns));
    assert_eq!(s.sql("m1", "SELECT name FROM items WHERE id = 5"), "from m2");
}

/// Tables with every type the MySQL side maps, and rows for them.
const MONEY: &str = r#"
        CREATE TABLE money (id int PRIMARY KEY, name text, vc varchar(20), ch char(3), i2 int2, i8 int8, f8 float8,
            num numeric(12,3), ok boolean, b bytea, at timestamptz, ts timestamp, day date, tm time, u uuid, doc jsonb, ip inet);
        CREATE TABLE tags (name text, n int, note text, PRIMARY KEY (name, n));
        INSERT INTO money VALUES
          (1, 'ünïcødé ☃', E'it''s \\ `q`', 'ab', -32768, -9223372036854775808, 2.25, 1.5, true, '\x00ff10',
           '2024-05-06 07:08:09.5+02', '1999-12-31 23:59:59.123456', '2024-02-29', '23:59:59.5',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.5, null], "s": "x\"y"}', '10.1.2.3/8'),
          (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false, '\x', NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        INSERT INTO money (id, name, num) SELECT i, repeat('row ', i), i / 7.0 FROM generate_series(3, 300) i;
        INSERT INTO tags SELECT 'tag ' || (i % 5), i, 'note ' || i FROM generate_series(1, 20) i;
        "#;

/// Inserts, updates, deletes and key changes of `MONEY`'s tables.
const MONEY_CHANGES: &str = r#"UPDATE money SET name = name || ' changed', ok = NOT ok, f8 = 0.5 WHERE id % 10 = 1;
           DELETE FROM money WHERE id IN (2, 50, 51);
           UPDATE money SET id = 1000 WHERE id = 3;
           INSERT INTO money (id, name, b) VALUES (2000, E'new\nline\ttab \\ end', '\x0a0d');
           UPDATE tags SET name = 'renamed' WHERE n = 4;
           DELETE FROM tags WHERE n = 5;"#;

/// Each row of `money` as one line, rendered alike by PostgreSQL and MariaDB.
fn money_lines_pg(s: &Setup, db: &str) -> String {
    s.sql(
        db,
        "SELECT concat_ws('|', id, coalesce(md5(name), 'NULL'), coalesce(vc, 'NULL'), coalesce(rtrim(ch), 'NULL'),
                coalesce(i2::text, 'NULL'), coalesce(i8::text, 'NULL'), coalesce(f8::text, 'NULL'), coalesce(num::text, 'NULL'),
                coalesce(ok::int::text, 'NULL'), coalesce(upper(encode(b, 'hex')), 'NULL'),
                coalesce(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), 'NULL'),
                coalesce(to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US'), 'NULL'), coalesce(day::text, 'NULL'),
                coalesce(to_char('2000-01-01'::date + tm, 'HH24:MI:SS.US'), 'NULL'), coalesce(u::text, 'NULL'),
                coalesce(doc::text, 'NULL'), coalesce(ip::text, 'NULL'))
           FROM money ORDER BY id",
    )
}

fn money_lines_mariadb(m: &MariaDb, db: &str) -> String {
    m.sql(
        db,
        "SELECT concat_ws('|', `id`, coalesce(md5(`name`), 'NULL'), coalesce(`vc`, 'NULL'), coalesce(`ch`, 'NULL'),
                coalesce(`i2`, 'NULL'), coalesce(`i8`, 'NULL'), coalesce(`f8`, 'NULL'), coalesce(`num`, 'NULL'),
                coalesce(`ok`, 'NULL'), coalesce(hex(`b`), 'NULL'), coalesce(`at`, 'NULL'), coalesce(`ts`, 'NULL'),
                coalesce(`day`, 'NULL'), coalesce(`tm`, 'NULL'), coalesce(`u`, 'NULL'), coalesce(`doc`, 'NULL'),
                coalesce(`ip`, 'NULL'))
           FROM `money` ORDER BY `id`",
    )
    .unwrap()
}

#[test]
fn flatfile_mysql_dialect_replays_into_mariadb() {
    let maria = MariaDb::start().unwrap();
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql("src", MONEY);
    s.add_db("src", "src").ok();
    s.ibex.sh("add table money tags db=src herd=h").ok();
    let dir = tempfile::tempdir().unwrap();
    s.ibex.run(&["add", "db", "my", "type=flatfile", &format!("dir={}", dir.path().display()), "dialect=mysql"]).ok();
    s.ibex.sh("add sync tomy herd=h dbs=src:source,my:target onetimecopy=1").ok();
    assert_eq!(s.run("tomy")["run"]["state"], "good");
    s.sql("src", MONEY_CHANGES);
    assert_eq!(s.run("tomy")["run"]["state"], "good");
    s.sql("src", "TRUNCATE tags; INSERT INTO tags VALUES ('after', 1, NULL)");
    assert_eq!(s.run("tomy")["run"]["state"], "good");
    maria.sql("mysql", "CREATE DATABASE replay").unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 3);
    for file in &files {
        maria.run_file("replay", file).unwrap();
    }
    let want = money_lines_pg(&s, "src");
    assert_eq!(want.lines().count(), 298);
    assert_eq!(money_lines_mariadb(&maria, "replay"), want);
    let tags = "SELECT concat_ws('|', name, n, coalesce(note, 'NULL')) FROM tags ORDER BY name, n";
    assert_eq!(maria.sql("replay", tags).unwrap(), s.sql("src", tags));
}

#[test]
fn mariadb_target_equals_source() {
    let maria = MariaDb::start().unwrap();
    maria.sql("mysql", "CREATE DATABASE copy").unwrap();
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql("src", MONEY);
    s.add_db("src", "src").ok();
    s.ibex.sh("add table money tags db=src herd=h").ok();
    let socket = format!("socket={}", maria.socket().display());
    s.ibex
        .run(&["add", "db", "maria", "type=mariadb", &socket, "user=root", "dbname=nosuchdb"])
        .fails_with("cannot connect");
    let out = s.ibex.run(&["add", "db", "maria", "type=mariadb", &socket, "user=root", "dbname=copy"]).ok();
    assert!(out.stdout.contains("a target only"), "{}", out.stdout);
    s.ibex.sh("add sync tomaria herd=h dbs=src:source,maria:target onetimecopy=2").ok();
    let tags = "SELECT concat_ws('|', name, n, coalesce(note, 'NULL')) FROM tags ORDER BY name, n";
    let same = || {
        assert_eq!(money_lines_mariadb(&maria, "copy"), money_lines_pg(&s, "src"));
        assert_eq!(maria.sql("copy", tags).unwrap(), s.sql("src", tags));
    };
    assert_eq!(s.run("tomaria")["run"]["state"], "good");
    same();
    s.sql("src", MONEY_CHANGES);
    let run = s.run("tomaria");
    assert_eq!(run["run"]["state"], "good", "{run}");
    same();
    s.sql(
        "src",
        "TRUNCATE tags; INSERT INTO tags VALUES ('after', 1, NULL); UPDATE money SET id = id + 5000 WHERE id < 10",
    );
    assert_eq!(s.run("tomaria")["run"]["state"], "good");
    same();
    assert_eq!(maria.sql("copy", "SELECT count(*) FROM `tags`").unwrap(), "1");
    // A value MySQL cannot hold fails the run, naming it; nothing is applied.
    s.sql("src", "UPDATE money SET f8 = 'NaN' WHERE id = 1000");
    let err = s.run_fails("tomaria", "has no representation in MySQL");
    assert!(err.contains("column f8 of table public.money"), "{err}");
    s.sql("src", "UPDATE money SET f8 = 1 WHERE id = 1000");
    assert_eq!(s.run("tomaria")["run"]["state"], "good");
    same();
}

#[test]
fn a_bulk_change_reaches_three_foreign_targets_in_one_run() {
    let maria = MariaDb::start().unwrap();
    maria.sql("mysql", "CREATE DATABASE bulk").unwrap();
    let s = Setup::new();
    s.cluster.create_db("src").unwrap();
    s.sql("src", "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int, price numeric(10,2))");
    s.add_db("src", "src").ok();
    s.ibex.sh("add table items db=src herd=h").ok();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bulk.db");
    let sql_dir = dir.path().join("sql");
    std::fs::create_dir(&sql_dir).unwrap();
    s.ibex.run(&["add", "db", "lite", "type=sqlite", &format!("path={}", file.display())]).ok();
    s.ibex.run(&["add", "db", "files", "type=flatfile", &format!("dir={}", sql_dir.display())]).ok();
    let socket = format!("socket={}", maria.socket().display());
    s.ibex.run(&["add", "db", "maria", "type=mariadb", &socket, "user=root", "dbname=bulk"]).ok();
    s.ibex.sh("add sync bulk herd=h dbs=src:source,lite:target,files:target,maria:target").ok();
    let rows = 50_000;
    s.sql(
        "src",
        &format!("INSERT INTO items SELECT i, 'item ' || i, i % 97, i * 0.01 FROM generate_series(1, {rows}) i"),
    );
    let started = std::time::Instant::now();
    let run = s.run("bulk");
    let took = started.elapsed();
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(run["run"]["inserted"], 3 * rows, "{run}");
    eprintln!("{rows} inserted rows into sqlite, flatfile and mariadb in one run: {took:?}");
    s.sql("src", "UPDATE items SET qty = qty + 1 WHERE id % 3 = 0; DELETE FROM items WHERE id % 5 = 0");
    let started = std::time::Instant::now();
    assert_eq!(s.run("bulk")["run"]["state"], "good");
    eprintln!("an update of 1/3 and a delete of 1/5 of them: {:?}", started.elapsed());
    let want = s.sql("src", "SELECT count(*) || '|' || sum(qty) || '|' || sum(price) FROM items");
    let conn = rusqlite::Connection::open(&file).unwrap();
    let lite: String = conn
        .query_row(
            "SELECT count(*) || '|' || sum(qty) || '|' || printf('%.2f', sum(CAST(price AS REAL))) FROM items",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(lite, want);
    let mariadb = maria.sql("bulk", "SELECT concat(count(*), '|', sum(qty), '|', sum(price)) FROM `items`").unwrap();
    assert_eq!(mariadb, want);
    s.cluster.create_db("replay").unwrap();
    replay(&s, &sql_dir, "replay");
    s.assert_same(&["src", "replay"], &["items"]);
}
