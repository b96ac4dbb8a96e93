//! What an operator installs and runs around ibex: shell completions and
//! man pages (no control database needed), tables on stdout, and the
//! systemd notify protocol of `ibex start --foreground` (a fake
//! NOTIFY_SOCKET stands in for systemd).

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ibex_tests::{Daemon, Ibex, Setup};

/// No control database and no ibex.toml: completions and man pages come
/// from the grammar alone.
fn cluster_free() -> Ibex {
    Ibex::new("host=127.0.0.1 port=1 dbname=none").unwrap()
}

/// The subcommand names listed under "Commands:" in `ibex ARGS --help`.
fn subcommands(ibex: &Ibex, path: &[&str]) -> Vec<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let help = ibex.run(&args).ok().stdout;
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // Wrapped descriptions are indented further than the names.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Every command path: [], [install], [add], [add, db] ...
fn command_tree(ibex: &Ibex) -> Vec<Vec<String>> {
    let mut all = vec![Vec::new()];
    let mut pending = vec![Vec::<String>::new()];
    while let Some(path) = pending.pop() {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        for name in subcommands(ibex, &refs) {
            let mut child = path.clone();
            child.push(name);
            all.push(child.clone());
            pending.push(child);
        }
    }
    all
}

#[test]
fn completions_name_every_top_level_subcommand() {
    let ibex = cluster_free();
    let top = subcommands(&ibex, &[]);
    for expected in ["install", "add", "list", "start", "reload", "status", "completions", "man"] {
        assert!(top.contains(&expected.to_string()), "{expected} missing from `ibex --help`: {top:?}");
    }
    for shell in ["bash", "zsh", "fish"] {
        // A broken ibex.toml must not matter either.
        let out = ibex.run(&["--config", "/nonexistent/ibex.toml", "completions", shell]).ok();
        assert!(out.stdout.len() > 1000, "{shell} completions are too short:\n{}", out.stdout);
        for name in &top {
            assert!(out.stdout.contains(name.as_str()), "{shell} completions do not mention {name}");
        }
    }
    ibex.run(&["completions", "tcsh"]).fails_with("invalid value 'tcsh'");
}

fn assert_roff(page: &str, what: &str) {
    assert!(page.starts_with(".TH") || page.starts_with(".ie"), "{what} is not roff:\n{page}");
    assert!(page.contains(".SH NAME"), "{what} has no NAME section:\n{page}");
}

#[test]
fn man_pages_for_ibex_and_every_subcommand() {
    let ibex = cluster_free();
    let tree = command_tree(&ibex);
    assert!(tree.iter().any(|p| p == &["add", "db"]), "{tree:?}");
    for path in &tree {
        let mut args = vec!["--config", "/nonexistent/ibex.toml", "man"];
        args.extend(path.iter().map(String::as_str));
        let page = ibex.run(&args).ok().stdout;
        let what = format!("`ibex {}`", args.join(" "));
        assert_roff(&page, &what);
        // The page is about that command: its synopsis names it.
        let title = std::iter::once("ibex").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join("-");
        assert!(page.contains(&title), "{what} does not name {title}:\n{page}");
    }
    ibex.run(&["man", "add", "widget"]).fails_with("`ibex add` has no subcommand \"widget\"");

    // --all writes one page per command, named as `man ibex-add-db` finds it.
    let dir = tempfile::tempdir().unwrap();
    let out = ibex.run(&["man", "--all", &dir.path().display().to_string()]).ok();
    assert!(out.stdout.contains(&format!("Wrote {} man pages", tree.len())), "{}", out.stdout);
    for path in &tree {
        let name = std::iter::once("ibex").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join("-");
        let file = dir.path().join(format!("{name}.1"));
        let page = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_roff(&page, &file.display().to_string());
    }
}

#[test]
fn list_dbs_is_a_table_with_every_name_and_json_is_unchanged() {
    let s = Setup::new();
    let long = "a_long_db_name_that_is_never_wrapped_or_cut_x";
    s.add_db("t1", "postgres").ok();
    s.add_db(long, "ibex").ok();
    let table = s.ibex.sh("list dbs").ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("Name ") && lines[0].contains("| Status"), "{table}");
    // Piped, so ASCII: a header rule, no box drawing, no ANSI escapes.
    assert!(lines[1].starts_with("---") && lines[1].contains("-+-"), "{table}");
    assert!(table.is_ascii() && !table.contains('\u{1b}'), "{table}");
    assert!(lines.iter().any(|l| l.starts_with("t1 ") && l.contains("postgres")), "{table}");
    assert!(lines.iter().any(|l| l.starts_with(long) && l.contains("ibex")), "{table}");
    assert_eq!(lines.len(), 4, "{table}");

    let json = s.ibex.sh("list dbs --json").ok().json();
    let names: Vec<&str> = json.as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, [long, "t1"], "{json}");

    // status goes through the same table.
    let status = s.ibex.sh("status").ok().stdout;
    assert!(!status.contains('\u{1b}'), "{status}");
}

/// The daemon child, killed if the test fails half-way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A fake systemd: the notify socket and every message it got.
struct Systemd {
    socket: UnixDatagram,
    log: Vec<String>,
}

impl Systemd {
    fn bind(dir: &Path) -> Systemd {
        let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Systemd { socket, log: Vec::new() }
    }

    /// Waits for a message with the line `want`; returns it.
    fn expect(&mut self, want: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buf) else { continue };
            let message = String::from_utf8_lossy(&buf[..n]).to_string();
            self.log.push(message.clone());
            if message.lines().any(|l| l == want) {
                return message;
            }
        }
        panic!("no {want} within {limit:?}; got: {:?}", self.log);
    }
}

#[test]
fn systemd_hears_ready_watchdog_reload_and_stopping() {
    let s = Setup::new();
    s.add_db("a", "postgres").ok();
    let d = Daemon::configure(&s.ibex).unwrap();
    // Logs on stderr (no log file), as under systemd with StandardError=journal.
    let toml =
        format!("control = \"{}\"\npid_file = \"{}\"\n", s.ibex.control, d.dir.path().join("ibex.pid").display());
    let config = d.dir.path().join("systemd.toml");
    std::fs::write(&config, toml).unwrap();
    let config = config.display().to_string();
    let stderr_path = d.dir.path().join("stderr");
    let mut systemd = Systemd::bind(d.dir.path());
    let child = d
        .ibex
        .command(&["--config", &config, "--log-level", "normal", "start", "--foreground"])
        .env("NOTIFY_SOCKET", d.dir.path().join("notify"))
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Running(child);
    let run = |args: &[&str]| {
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        s.ibex.run(&full)
    };

    let ready = systemd.expect("READY=1", Duration::from_secs(30));
    assert!(ready.lines().any(|l| l.starts_with("STATUS=") && l.contains("syncs running")), "{ready}");
    // It is up for real: the daemon answers.
    assert!(run(&["ping", "--timeout", "5"]).ok().stdout.contains("Pong"));
    // Half of WATCHDOG_USEC is 1 s.
    systemd.expect("WATCHDOG=1", Duration::from_secs(3));

    assert!(run(&["reload"]).ok().stdout.contains("Reloaded"));
    let reloading = systemd.expect("RELOADING=1", Duration::from_secs(5));
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading}");
    systemd.expect("READY=1", Duration::from_secs(5));

    // SIGHUP, as `ExecReload=kill -HUP $MAINPID` sends.
    let pid = daemon.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    systemd.expect("RELOADING=1", Duration::from_secs(5));
    systemd.expect("READY=1", Duration::from_secs(5));

    assert!(run(&["stop"]).ok().stdout.contains("Stopped ibex"));
    systemd.expect("STOPPING=1", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the daemon did not exit after `ibex stop`");
        std::thread::sleep(Duration::from_millis(50));
    }

    // journald stamps lines itself: the daemon's own lines carry no time.
    let mut stderr = String::new();
    std::fs::File::open(&stderr_path).unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("ibex started"), "{stderr}");
    for line in stderr.lines() {
        let stamped = line.len() > 10 && line.as_bytes()[4] == b'-' && line.as_bytes()[7] == b'-';
        assert!(!stamped, "timestamp under systemd: {line}");
    }
}

#[test]
fn no_notify_socket_means_no_notifications_and_no_errors() {
    // Without NOTIFY_SOCKET the daemon behaves as before (the other daemon
    // tests cover it); a bad NOTIFY_SOCKET is logged, never fatal.
    let s = Setup::new();
    let mut d = Daemon::configure(&s.ibex).unwrap();
    d.ibex.envs.push(("NOTIFY_SOCKET".into(), "/nonexistent/notify".into()));
    d.ibex.envs.push(("WATCHDOG_USEC".into(), "2000000".into()));
    d.start().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(d.run(&["ping"]).ok().stdout.contains("Pong"));
    assert!(d.log().contains("cannot notify systemd"), "{}", d.log());
    assert!(d.run(&["stop"]).ok().stdout.contains("Stopped ibex"));
    d.wait_exit(Duration::from_secs(30)).unwrap();
}

/// A run in progress shows in `ibex status SYNC`: the KID's session on each
/// db, what it waits on and for how long (here, a lock someone holds on the
/// target table), and nothing once the run is over.
#[test]
fn status_shows_what_a_running_sync_is_doing_on_each_db() {
    let s = Setup::new();
    s.cluster.create_db("m1").unwrap();
    s.sql("m1", "CREATE TABLE acct (id int PRIMARY KEY, note text); INSERT INTO acct SELECT i, 'x' FROM generate_series(1, 10) i");
    s.dbs_from("m1", &["m1", "m2"]);
    s.ibex.sh("add table acct db=m1 herd=h").ok();
    s.ibex.sh("add sync one herd=h dbs=m1:source,m2:target").ok();
    s.run("one");
    assert!(s.ibex.sh("status one --json").ok().json()["running"].is_null());
    s.sql("m1", "UPDATE acct SET note = 'y' WHERE id = 3");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt
        .block_on(async {
            let c = s.cluster.connect("m2").await?;
            c.batch_execute("BEGIN; LOCK TABLE acct IN ACCESS EXCLUSIVE MODE").await?;
            anyhow::Ok(c)
        })
        .unwrap();
    let mut run = Running(s.ibex.command(&["sync", "run", "one"]).spawn().unwrap());
    let waits_on_a_lock = |json: &serde_json::Value| {
        json["running"]["dbs"]
            .as_array()
            .and_then(|dbs| dbs.iter().find(|d| d["db"] == "m2"))
            .and_then(|d| d["sessions"].as_array())
            .is_some_and(|ss| ss.iter().any(|x| x["waiting_on"].as_str().is_some_and(|w| w.starts_with("Lock/"))))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let json = s.ibex.sh("status one --json").ok().json();
        if waits_on_a_lock(&json) {
            assert!(json["running"]["run"].as_i64().is_some(), "{json}");
            break;
        }
        assert!(Instant::now() < deadline, "status never showed the run waiting on m2: {json}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = s.ibex.sh("status one").ok().stdout;
    assert!(text.contains("Running now") && text.contains("on db m2"), "{text}");
    assert!(text.contains("waiting on Lock/"), "{text}");

    rt.block_on(holder.batch_execute("COMMIT")).unwrap();
    assert!(run.0.wait().unwrap().success(), "the run failed after the lock was released");
    assert!(s.ibex.sh("status one --json").ok().json()["running"].is_null());
    assert_eq!(s.sql("m2", "SELECT note FROM acct WHERE id = 3"), "y");
}
