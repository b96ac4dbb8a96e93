//! The harness starts real servers of every supported major (10..=18).

use std::process::Command;

use ibex_tests::Cluster;
use ibex_tests::versions::MAJORS;

fn round_trip(major: u32) {
    let cluster = Cluster::start_version(major).unwrap_or_else(|e| panic!("PostgreSQL {major}: {e:#}"));
    let num = cluster.server_version_num().unwrap();
    assert_eq!(num / 10000, major, "server_version_num {num} of a PostgreSQL {major} cluster");
    cluster.create_db("versions").unwrap();
    cluster.psql("versions", "CREATE TABLE t (id int PRIMARY KEY, note text)").unwrap();
    cluster.psql("versions", &format!("INSERT INTO t VALUES (1, 'pg {major}')")).unwrap();
    assert_eq!(cluster.psql("versions", "SELECT id || ':' || note FROM t").unwrap(), format!("1:pg {major}"));
    // The scram-sha-256 login of `create_password_role` works on every major.
    cluster.create_password_role("s3cret").unwrap();
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT current_user"])
        .arg(format!("host=127.0.0.1 port={} user=ibex_pw password=s3cret dbname=versions", cluster.port()))
        .output()
        .unwrap();
    assert!(out.status.success(), "scram login on PostgreSQL {major}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ibex_pw");
    assert!(cluster.bin_dir().ends_with("package/native/bin"), "{}", cluster.bin_dir().display());
}

#[test]
fn oldest_and_newest_majors_start() {
    round_trip(10);
    round_trip(18);
}

#[test]
fn every_major_starts_restarts_and_stops() {
    for major in MAJORS {
        round_trip(major);
        // restart, crash, kill and drop use the cluster's own binaries.
        let mut cluster = Cluster::start_version(major).unwrap();
        cluster.psql("postgres", "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)").unwrap();
        // synchronous_commit is off in the harness: write the WAL out before the crash.
        cluster.psql("postgres", "CHECKPOINT").unwrap();
        cluster.crash().unwrap();
        cluster.restart().unwrap();
        assert_eq!(cluster.psql("postgres", "SELECT x FROM kept").unwrap(), "42");
        cluster.kill().unwrap();
        cluster.restart().unwrap();
        assert_eq!(cluster.server_version_num().unwrap() / 10000, major);
        cluster.stop().unwrap();
        assert!(!cluster.is_running());
    }
}
