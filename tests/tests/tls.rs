//! TLS with libpq's sslmode rules, against a cluster with ssl = on whose
//! certificates the test makes with the openssl CLI. Its pg_hba.conf only
//! has `hostssl` lines for TCP, so any plaintext connection is refused.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ibex_tests::{Cluster, Ibex, Setup};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
    fs::set_permissions(dir.join(format!("{name}.key")), fs::Permissions::from_mode(0o600)).unwrap();
}

/// A cluster serving TLS with a certificate for 127.0.0.1 only, and the
/// files a client needs.
struct Tls {
    setup: Setup,
    pki: PathBuf,
    _keep: tempfile::TempDir,
}

impl Tls {
    fn new() -> Tls {
        let mut cluster = Cluster::start().expect("starting a cluster");
        let keep = tempfile::tempdir().unwrap();
        let pki = keep.path().to_path_buf();
        make_ca(&pki, "ca");
        make_ca(&pki, "other-ca");
        make_cert(
            &pki,
            "ca",
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        make_cert(
            &pki,
            "ca",
            "client",
            "ibex_cert",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        );
        let data = cluster.dir().join("data");
        for f in ["server.crt", "server.key", "ca.crt"] {
            fs::copy(pki.join(f), data.join(f)).unwrap();
        }
        fs::set_permissions(data.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .args(["server.crt", "server.key", "ca.crt"])
            .current_dir(&data)
            .status();
        assert!(chown.is_ok_and(|s| s.success()), "chown of the server's TLS files failed");
        // One statement per psql call: ALTER SYSTEM refuses a transaction block.
        for setting in
            ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'", "ssl_ca_file = 'ca.crt'"]
        {
            cluster.psql("postgres", &format!("ALTER SYSTEM SET {setting}")).unwrap();
        }
        cluster.psql("postgres", "CREATE ROLE ibex_cert LOGIN SUPERUSER").unwrap();
        // TCP only over TLS; ibex_cert must show its client certificate.
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all ibex_cert 127.0.0.1/32 cert\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        cluster.restart().expect("restarting with ssl = on");
        cluster.create_db("ibex").unwrap();
        let control = format!(
            "host=127.0.0.1 port={} user=postgres dbname=ibex sslmode=verify-full sslrootcert={}",
            cluster.port(),
            pki.join("ca.crt").display()
        );
        let mut ibex = Ibex::new(control).expect("finding the ibex binary");
        // No ~/.postgresql of the machine's: only what the test gives.
        ibex.envs.push(("HOME".into(), pki.display().to_string()));
        ibex.sh("install").ok();
        Tls { setup: Setup { cluster, ibex }, pki, _keep: keep }
    }

    fn file(&self, name: &str) -> String {
        self.pki.join(name).display().to_string()
    }

    fn add_db(&self, name: &str, extra: &[&str]) -> ibex_tests::Outcome {
        let port = format!("port={}", self.setup.cluster.port());
        let mut args = vec!["add", "db", name, "dbname=postgres", "user=postgres", &port];
        let has_host = extra.iter().any(|e| e.starts_with("host="));
        if !has_host {
            args.push("host=127.0.0.1");
        }
        args.extend_from_slice(extra);
        self.setup.ibex.run(&args)
    }
}

#[test]
fn verify_full_control_connection_and_db() {
    let t = Tls::new();
    let root = format!("sslrootcert={}", t.file("ca.crt"));
    t.add_db("full", &["sslmode=verify-full", &root]).ok();
    // verify-ca checks the chain only: a name not in the certificate is fine.
    t.add_db("ca", &["host=localhost", "sslmode=verify-ca", &root]).ok();
    let list = t.setup.ibex.sh("list dbs --json").ok().json();
    let text = list.to_string();
    assert!(text.contains("verify-full") && text.contains("verify-ca"), "{text}");
    // The server saw TLS: pg_hba.conf has no plaintext TCP line at all.
    let ssl = t.setup.sql("postgres", "SELECT count(*) > 0 FROM pg_stat_ssl WHERE ssl");
    assert_eq!(ssl, "t");
}

#[test]
fn wrong_ca_fails_naming_certificate_verification() {
    let t = Tls::new();
    let out = t.add_db("bad", &["sslmode=verify-full", &format!("sslrootcert={}", t.file("other-ca.crt"))]);
    let out = out.fails_with("certificate verification failed");
    assert!(out.stderr.contains("sslrootcert"), "{}", out.stderr);
    // The control connection too.
    let mut ibex = t.setup.ibex.clone();
    ibex.control = ibex.control.replace("ca.crt", "other-ca.crt");
    ibex.sh("list dbs").fails_with("certificate verification failed");
    // require with an existing root certificate checks the chain, as libpq does.
    t.add_db("req", &["sslmode=require", &format!("sslrootcert={}", t.file("other-ca.crt"))])
        .fails_with("certificate verification failed");
    // A root file that does not exist is a clear setup error.
    t.add_db("none", &["sslmode=verify-ca", "sslrootcert=/nonexistent/ca.crt"]).fails_with("does not exist");
}

#[test]
fn wrong_host_name_fails_naming_the_host() {
    let t = Tls::new();
    let root = format!("sslrootcert={}", t.file("ca.crt"));
    let out = t.add_db("local", &["host=localhost", "sslmode=verify-full", &root]).fails_with("host name");
    assert!(out.stderr.contains("\"localhost\""), "{}", out.stderr);
}

#[test]
fn require_without_root_encrypts_and_allow_upgrades() {
    let t = Tls::new();
    // No root certificate anywhere: encryption without checks.
    t.add_db("req", &["sslmode=require"]).ok();
    // allow tries plaintext first; pg_hba.conf refuses it, so TLS.
    t.add_db("allow", &["sslmode=allow"]).ok();
    // disable cannot get in: there is no plaintext line.
    t.add_db("plain", &["sslmode=disable"]).fails_with("no encryption");
}

#[test]
fn tls_against_a_server_without_tls() {
    let s = Setup::new();
    let port = s.port_arg();
    let add = |name: &str, mode: &str| {
        s.ibex.run(&["add", "db", name, "dbname=postgres", "host=127.0.0.1", &port, "user=postgres", mode])
    };
    add("req", "sslmode=require").fails_with("server does not support TLS");
    add("full", "sslmode=verify-full").fails_with("does not exist");
    // prefer (the default) and allow fall back to plaintext.
    add("pref", "sslmode=prefer").ok();
    add("dflt", "connect_timeout=5").ok();
    add("allow", "sslmode=allow").ok();
}

#[test]
fn client_certificate_login() {
    let t = Tls::new();
    let root = format!("sslrootcert={}", t.file("ca.crt"));
    let cert = format!("sslcert={}", t.file("client.crt"));
    let key = format!("sslkey={}", t.file("client.key"));
    t.setup
        .ibex
        .run(&[
            "add",
            "db",
            "certdb",
            "dbname=postgres",
            "host=127.0.0.1",
            &format!("port={}", t.setup.cluster.port()),
            "user=ibex_cert",
            "sslmode=verify-full",
            &root,
            &cert,
            &key,
        ])
        .ok();
    t.setup
        .ibex
        .run(&[
            "add",
            "db",
            "nocert",
            "dbname=postgres",
            "host=127.0.0.1",
            &format!("port={}", t.setup.cluster.port()),
            "user=ibex_cert",
            "sslmode=verify-full",
            &root,
        ])
        .fails_with("certificate");
    // A key others can read is refused, as libpq refuses it.
    fs::set_permissions(t.pki.join("client.key"), fs::Permissions::from_mode(0o644)).unwrap();
    t.setup
        .ibex
        .run(&[
            "add",
            "db",
            "loosekey",
            "dbname=postgres",
            "host=127.0.0.1",
            &format!("port={}", t.setup.cluster.port()),
            "user=ibex_cert",
            "sslmode=verify-full",
            &root,
            &cert,
            &key,
        ])
        .fails_with("0600");
}

#[test]
fn one_way_sync_over_verify_full() {
    let t = Tls::new();
    let s = &t.setup;
    s.sql("postgres", "CREATE DATABASE src");
    s.sql("postgres", "CREATE DATABASE dst");
    for db in ["src", "dst"] {
        s.sql(db, "CREATE TABLE items (id int PRIMARY KEY, note text, at timestamptz)");
    }
    let root = format!("sslrootcert={}", t.file("ca.crt"));
    let port = format!("port={}", s.cluster.port());
    for db in ["src", "dst"] {
        s.ibex
            .run(&[
                "add",
                "db",
                db,
                &format!("dbname={db}"),
                "host=127.0.0.1",
                &port,
                "user=postgres",
                "sslmode=verify-full",
                &root,
            ])
            .ok();
    }
    s.ibex.sh("add table items db=src herd=h").ok();
    s.ibex.sh("add sync tls herd=h dbs=src:source,dst:target autokick=false").ok();
    s.sql("src", "INSERT INTO items SELECT g, 'n' || g, now() FROM generate_series(1, 50) g");
    let run = s.run("tls");
    assert_eq!(run["run"]["state"], "good", "{run}");
    assert_eq!(s.sql("dst", "SELECT count(*) FROM items"), "50");
    s.assert_same(&["src", "dst"], &["items"]);
    // Every ibex session on this cluster was encrypted (hostssl only).
    let plain = s.sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name LIKE 'ibex%' AND NOT s.ssl",
    );
    assert_eq!(plain, "0");
}

/// Role ibex_scram (password scr4m-s3cret, stored as SCRAM) logs in over
/// TLS by SCRAM only; `lines` go before the catch-all trust line too.
fn scram_role(s: &Setup, lines: &[&str]) {
    s.sql(
        "postgres",
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE ibex_scram LOGIN SUPERUSER PASSWORD 'scr4m-s3cret'",
    );
    let hba = s.cluster.dir().join("data").join("pg_hba.conf");
    let rules = fs::read_to_string(&hba).unwrap();
    let mut ours = vec!["hostssl all ibex_scram 127.0.0.1/32 scram-sha-256"];
    ours.extend_from_slice(lines);
    ours.push("hostssl all all 127.0.0.1/32 trust");
    fs::write(&hba, rules.replace("hostssl all all 127.0.0.1/32 trust", &ours.join("\n"))).unwrap();
    s.sql("postgres", "SELECT pg_reload_conf()");
}

/// The daemon's stream of a WAL db's slot (a replication connection of its
/// own, `pg/replication.rs`) goes over verify-full TLS and logs in with
/// SCRAM bound to the TLS session (channel_binding=require), as every
/// other session does: the server only takes TLS over TCP, and the role
/// only a SCRAM password.
#[test]
fn the_daemons_wal_stream_is_encrypted_and_logs_in_with_scram() {
    let t = Tls::new();
    let s = &t.setup;
    s.sql("postgres", "CREATE DATABASE src");
    s.sql("postgres", "CREATE DATABASE dst");
    for db in ["src", "dst"] {
        s.sql(db, "CREATE TABLE items (id int PRIMARY KEY, note text)");
    }
    scram_role(s, &[]);
    let root = format!("sslrootcert={}", t.file("ca.crt"));
    let port = format!("port={}", s.cluster.port());
    for (db, user) in [("src", "user=ibex_scram"), ("dst", "user=postgres")] {
        let dbname = format!("dbname={db}");
        let mut args = vec!["add", "db", db, &dbname, "host=127.0.0.1", &port, user, "sslmode=verify-full", &root];
        if db == "src" {
            // Bound to the TLS session, or no login at all: the stream too.
            args.extend(["pass=scr4m-s3cret", "capture=wal", "channel_binding=require"]);
        }
        s.ibex.run(&args).ok();
    }
    s.ibex.sh("add table items db=src herd=h").ok();
    s.ibex.sh("add sync tls herd=h dbs=src:source,dst:target").ok();
    let mut d = ibex_tests::Daemon::configure(&s.ibex).unwrap();
    d.start().unwrap();
    s.sql("src", "INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g");
    ibex_tests::faults::wait_until(&d, "dst to have the rows", std::time::Duration::from_secs(30), || {
        s.sql("dst", "SELECT count(*) FROM items") == "50"
    })
    .unwrap();
    s.sql("src", "UPDATE items SET note = 'again' WHERE id <= 10");
    ibex_tests::faults::wait_until(&d, "dst to have the update", std::time::Duration::from_secs(30), || {
        s.sql("dst", "SELECT count(*) FROM items WHERE note = 'again'") == "10"
    })
    .unwrap();
    s.assert_same(&["src", "dst"], &["items"]);
    let stream = s.sql(
        "postgres",
        "SELECT a.usename || ' ' || s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name = 'ibex wal stream' AND a.backend_type = 'walsender'",
    );
    assert_eq!(stream, "ibex_scram true", "the stream is not open as ibex_scram over TLS: {}", d.log());
    assert!(!d.log().contains("reading the slot by SQL"), "a read fell back from the stream: {}", d.log());
    assert!(!d.log().contains("scr4m-s3cret"), "the password was logged");
}

/// channel_binding=require takes only a SCRAM login bound to the TLS
/// session, on ordinary connections and on a replication stream alike: a
/// role let in by trust or by an md5 password is refused with what the
/// server needs, and sslmode=disable with it is a setup error.
#[test]
fn channel_binding_require_takes_only_a_bound_scram_login() {
    let t = Tls::new();
    let s = &t.setup;
    s.sql("postgres", "SET password_encryption = 'md5'; CREATE ROLE ibex_md5 LOGIN REPLICATION PASSWORD 'md5-s3cret'");
    scram_role(s, &["hostssl all ibex_md5 127.0.0.1/32 md5"]);
    let root = format!("sslrootcert={}", t.file("ca.crt"));
    let port = format!("port={}", s.cluster.port());
    let add = |name: &str, login: &[&str], binding: &str| {
        let mut args =
            vec!["add", "db", name, "dbname=postgres", "host=127.0.0.1", &port, "sslmode=verify-full", &root];
        args.extend_from_slice(login);
        args.push(binding);
        s.ibex.run(&args)
    };
    let require = "channel_binding=require";
    add("bound", &["user=ibex_scram", "pass=scr4m-s3cret"], require).ok();
    let needs = "did not authenticate by SCRAM bound to the TLS session";
    add("trusted", &["user=postgres"], require).fails_with(needs);
    add("md5", &["user=ibex_md5", "pass=md5-s3cret"], require).fails_with(needs);
    // Without require the same md5 login gets in (prefer binds when it can).
    add("md5ok", &["user=ibex_md5", "pass=md5-s3cret"], "channel_binding=prefer").ok();
    add("typo", &["user=postgres"], "channel_binding=yes").fails_with("bad channel_binding \"yes\"");
    t.add_db("plain", &["sslmode=disable", require]).fails_with("sslmode=disable turns TLS off");

    // The replication stream logs in by itself: the same rule holds there.
    let dsn = |binding: &str| {
        format!(
            "host=127.0.0.1 port={} dbname=postgres user=ibex_md5 password=md5-s3cret sslmode=verify-full {root} channel_binding={binding}",
            s.cluster.port()
        )
    };
    let start = |binding: &str| {
        let info = ibex::pg::ConnInfo::from_dsn(&dsn(binding)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime
            .block_on(ibex::pg::replication::ReplicationStream::start(
                &info,
                "ibex test stream",
                "START_REPLICATION SLOT ibex_no_such_slot LOGICAL 0/0",
            ))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let refused = start("require");
    assert!(refused.contains(needs), "{refused}");
    // prefer logs in, and fails only at the slot, which does not exist.
    let logged_in = start("prefer");
    assert!(logged_in.contains("ibex_no_such_slot") && !logged_in.contains(needs), "{logged_in}");
}
