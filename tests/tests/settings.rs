//! Row text must not depend on the server's session defaults: a cluster
//! with odd DateStyle, TimeZone, IntervalStyle, extra_float_digits and
//! bytea_output replicates both ways with a normal one, and compare finds
//! them identical.

use ibex_tests::{Cluster, Setup};

const TABLE: &str = "CREATE TABLE kinds (
    id int PRIMARY KEY, tstz timestamptz, ts timestamp, d date, iv interval,
    f4 float4, f8 float8, num numeric, b bytea, j json, jb jsonb, ta text[],
    u uuid, ip inet, m money, t time, tz timetz)";

fn rows(first: i32) -> String {
    let ids: Vec<i32> = (first..first + 4).collect();
    format!(
        "INSERT INTO kinds VALUES
      ({}, '2024-02-29 23:59:59.123456+00', '2001-02-03 04:05:06.789', '2001-02-03', '1 year 2 mons -3 days 04:05:06.7',
       'NaN', 0.1::float8 + 0.2::float8, 123456789.000000001, '\\x00ff10', '{{\"a\": [1, 2.50, null]}}', '{{\"b\": {{\"c\": true}}}}',
       ARRAY['x', NULL, 'y,z', '\"q\"'], 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.1.2.3/8', 12.34, '13:14:15.5', '13:14:15+05:30'),
      ({}, 'infinity', '-infinity', 'infinity', '-1 day -00:00:01', 'Infinity', '-Infinity', 'NaN', '\\x', '[]', '[]',
       '{{}}', '00000000-0000-0000-0000-000000000000', '::1', -0.01, '00:00', '23:59:59.999999-12'),
      ({}, '1999-12-31 23:59:59.5-08', '1999-12-31 23:59:59.5', '1999-01-13', '0', '-0', '-0', '-0.000', 'a\\\\b'::bytea,
       'null', 'null', ARRAY['a b', 'ü'], NULL, '192.168.0.1', 0, '12:00', '12:00+00'),
      ({}, NULL, NULL, NULL, NULL, 3.4028235e38, 1e-307, 1e100, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        ids[0], ids[1], ids[2], ids[3]
    )
}

#[test]
fn odd_session_defaults_replicate_and_compare_identical() {
    let s = Setup::new();
    let odd = Cluster::start().expect("starting a second cluster");
    for setting in [
        "DateStyle = 'SQL, DMY'",
        "TimeZone = 'Asia/Kolkata'",
        "IntervalStyle = sql_standard",
        "extra_float_digits = 0",
        "bytea_output = escape",
    ] {
        odd.psql("postgres", &format!("ALTER SYSTEM SET {setting}")).unwrap();
    }
    odd.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    // The odd defaults are in force for ordinary sessions.
    let shown = odd.psql("postgres", "SELECT now()::date::text, 0.1::float8::text").unwrap();
    assert!(shown.contains('/') && shown.ends_with("|0.1"), "{shown}");
    s.cluster.create_db("plain").unwrap();
    odd.create_db("odd").unwrap();
    s.sql("plain", TABLE);
    odd.psql("odd", TABLE).unwrap();
    s.add_db("plain", "plain").ok();
    s.add_db_on("odd", "odd", odd.port()).ok();
    s.ibex.sh("add table kinds db=plain herd=h").ok();
    s.ibex.sh("add sync both herd=h dbs=plain:source,odd:source autokick=false").ok();
    s.sql("plain", &rows(1));
    odd.psql("odd", &rows(101)).unwrap();
    let run = s.run("both");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(s.sql("plain", "SELECT count(*) FROM kinds"), "8");
    assert_eq!(odd.psql("odd", "SELECT count(*) FROM kinds").unwrap(), "8");
    // Same values on both sides, read under the same settings.
    let pinned = "SET DateStyle = ISO; SET TimeZone = UTC; SET IntervalStyle = postgres; SET extra_float_digits = 3; SET bytea_output = hex;";
    let dump = format!("{pinned} SELECT string_agg(k::text, E'\\n' ORDER BY id) FROM kinds k");
    assert_eq!(s.sql("plain", &dump), odd.psql("odd", &dump).unwrap());
    // Changes made on the odd side after the first copy, too.
    odd.psql("odd", "UPDATE kinds SET iv = iv + '1 second', f4 = f4 / 3, tstz = tstz + '1 day' WHERE id = 101")
        .unwrap();
    assert_eq!(s.run("both")["run"]["state"], "good");
    let compare = s.ibex.sh("compare both");
    assert_eq!(compare.code, 0, "compare reported differences:\n{}\n{}", compare.stdout, compare.stderr);
}
