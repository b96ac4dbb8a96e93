//! libpq's conventions: ~/.pgpass (PGPASSFILE), service files, PG*
//! environment variables, URIs, several hosts; the password never shows.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use ibex_tests::{Ibex, Setup};

const SECRET: &str = "Sup3r:Secret\\pw";

/// A cluster with the scram role ibex_pw, and a 0600 password file for it.
fn with_pgpass() -> (Setup, tempfile::TempDir, std::path::PathBuf) {
    let s = Setup::new();
    s.cluster.create_password_role(SECRET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    // Escapes: `\:` and `\\` in the password; wildcards for db.
    let escaped = SECRET.replace('\\', "\\\\").replace(':', "\\:");
    fs::write(&file, format!("# test\nother:1:*:*:wrong\n127.0.0.1:{}:*:ibex_pw:{escaped}\n", s.cluster.port()))
        .unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    (s, dir, file)
}

fn add_pw_db(ibex: &Ibex, name: &str, port: u16) -> ibex_tests::Outcome {
    ibex.run(&["add", "db", name, "dbname=postgres", "host=127.0.0.1", &format!("port={port}"), "user=ibex_pw"])
}

#[test]
fn pgpass_file_supplies_a_scram_password() {
    let (s, _dir, file) = with_pgpass();
    let mut ibex = s.ibex.clone();
    ibex.envs.push(("PGPASSFILE".into(), file.display().to_string()));
    add_pw_db(&ibex, "pw", s.cluster.port()).ok();
    // Every later connection finds it too (no password stored).
    ibex.sh("update db pw status=active").ok();
    // Without the file: a clear error naming the ways to give one.
    let mut none = s.ibex.clone();
    none.envs.push(("PGPASSFILE".into(), "/nonexistent/pgpass".into()));
    none.envs.push(("HOME".into(), "/nonexistent".into()));
    add_pw_db(&none, "pw2", s.cluster.port()).fails_with("pgpass");
}

#[test]
fn group_readable_pgpass_is_ignored_with_a_warning() {
    let (s, _dir, file) = with_pgpass();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let mut ibex = s.ibex.clone();
    ibex.envs.push(("PGPASSFILE".into(), file.display().to_string()));
    let out = add_pw_db(&ibex, "pw", s.cluster.port()).fails_with("group or world access");
    assert!(out.stderr.contains("0600"), "{}", out.stderr);
    assert!(!out.stderr.contains("Secret"), "{}", out.stderr);
}

#[test]
fn service_file_entry() {
    let s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg_service.conf");
    fs::write(
        &file,
        format!(
            "# services\n[other]\nhost=nowhere\n\n[svc]\nhost=127.0.0.1\nport={}\nuser=postgres\ndbname=postgres\n",
            s.cluster.port()
        ),
    )
    .unwrap();
    let mut ibex = s.ibex.clone();
    ibex.envs.push(("PGSERVICEFILE".into(), file.display().to_string()));
    ibex.sh("add db x service=svc").ok();
    let list = ibex.sh("list dbs --json").ok().json().to_string();
    assert!(list.contains("\"x\""), "{list}");
    ibex.sh("add db y service=nope").fails_with("service \"nope\" is not defined");
    // The control connection may name a service too.
    let mut by_service = ibex.clone();
    by_service.control = "service=svc dbname=ibex".into();
    by_service.sh("list dbs").ok();
}

#[test]
fn environment_fills_what_the_settings_leave_out() {
    let s = Setup::new();
    let mut ibex = s.ibex.clone();
    for (k, v) in [("PGHOST", "127.0.0.1"), ("PGPORT", &s.cluster.port().to_string()), ("PGUSER", "postgres")] {
        ibex.envs.push((k.into(), v.to_string()));
    }
    ibex.sh("add db e dbname=postgres").ok();
    // The control DSN from the environment alone.
    let mut bare = ibex.clone();
    bare.control = String::new();
    bare.envs.push(("PGDATABASE".into(), "ibex".into()));
    bare.envs.push(("PGCONNECT_TIMEOUT".into(), "5".into()));
    bare.envs.push(("PGAPPNAME".into(), "from-env".into()));
    bare.sh("list dbs").ok();
    // PGSSLMODE is read: this cluster has no TLS.
    let mut tls = ibex.clone();
    tls.envs.push(("PGSSLMODE".into(), "require".into()));
    tls.sh("add db f dbname=postgres").fails_with("does not support TLS");
    let mut bad = ibex.clone();
    bad.envs.push(("PGPORT".into(), "nope".into()));
    bad.sh("add db g dbname=postgres").fails_with("PGPORT");
}

#[test]
fn uri_control_connection() {
    let s = Setup::new();
    let uri = format!("postgresql://postgres@127.0.0.1:{}/ibex?sslmode=prefer&connect_timeout=5", s.cluster.port());
    let mut ibex = s.ibex.clone();
    ibex.control = uri;
    s.add_db("a", "postgres").ok();
    let list = ibex.sh("list dbs --json").ok().json().to_string();
    assert!(list.contains("\"a\""), "{list}");
}

#[test]
fn several_hosts_connect_to_the_first_that_answers() {
    let s = Setup::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let ports = format!("port={dead_port},{}", s.cluster.port());
    s.ibex
        .run(&[
            "add",
            "db",
            "m",
            "dbname=postgres",
            "host=127.0.0.1,127.0.0.1",
            &ports,
            "user=postgres",
            "target_session_attrs=read-write",
        ])
        .ok();
    let list = s.ibex.sh("list dbs --json").ok().json().to_string();
    assert!(list.contains("\"m\""), "{list}");
    // Both down: the error names each host.
    let out = s
        .ibex
        .run(&[
            "add",
            "db",
            "n",
            "dbname=postgres",
            "host=127.0.0.1,127.0.0.1",
            &format!("port={dead_port},{dead_port}"),
            "user=postgres",
        ])
        .fails_with("cannot connect");
    assert_eq!(out.stderr.matches(&format!("127.0.0.1:{dead_port}:")).count(), 2, "{}", out.stderr);
}

#[test]
fn password_never_shown() {
    let s = Setup::new();
    s.cluster.create_password_role(SECRET).unwrap();
    let port = s.port_arg();
    s.ibex
        .run(&["add", "db", "p", "dbname=postgres", "host=127.0.0.1", &port, "user=ibex_pw", &format!("pass={SECRET}")])
        .ok();
    for args in [&["list", "dbs"][..], &["list", "dbs", "--json"], &["status"], &["status", "--json"]] {
        let out = s.ibex.run(args);
        assert!(!out.stdout.contains("Secret") && !out.stderr.contains("Secret"), "{args:?}: {out:?}");
    }
    let list = s.ibex.sh("list dbs --json").ok().json().to_string();
    assert!(list.contains("********"), "{list}");
    // A wrong password: the error names the login, not the password.
    let out = s.ibex.run(&["update", "db", "p", "pass=Wr0ngSecretXYZ"]).fails_with("password authentication failed");
    assert!(!out.stderr.contains("Wr0ngSecretXYZ"), "{}", out.stderr);
    // A bad control DSN with a password in it.
    let mut bad = s.ibex.clone();
    bad.control = format!("host=127.0.0.1 {port} user=ibex_pw password=Wr0ngSecretXYZ dbname=ibex colour=red");
    let out = bad.sh("list dbs").fails_with("colour");
    assert!(!out.stderr.contains("Wr0ngSecretXYZ"), "{}", out.stderr);
    bad.control = format!("postgresql://ibex_pw:Wr0ngSecretXYZ@127.0.0.1:{}/ibex", s.cluster.port());
    let out = bad.sh("list dbs").fails_with("password authentication failed");
    assert!(!out.stderr.contains("Wr0ngSecretXYZ"), "{}", out.stderr);
}
