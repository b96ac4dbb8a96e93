//! What the fault suite (`tests/tests/faults.rs`) shares: the three-db rig
//! (masters m1 and m2 with writers, target t) with the audit installed,
//! the number of repetitions (`IBEX_FAULT_REPS`), SIGKILL of a whole
//! PostgreSQL, waiting for the daemon to reach a failpoint, and the record
//! each scenario leaves in target/reliability/ for docs/RELIABILITY.md
//! (written by `tests/src/bin/reliability-report.rs`).

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::audit::{self, AuditedDb, Tally};
use crate::load::Writer;
use crate::{Cluster, Daemon, Setup};

/// The sync every scenario runs, and its dbs in plan order.
pub const SYNC: &str = "mm";
pub const DBS: [&str; 3] = ["m1", "m2", "t"];
/// The dbs with a writer (the masters).
pub const MASTERS: [&str; 2] = ["m1", "m2"];

/// Repetitions of a scenario: `IBEX_FAULT_REPS=full` asks for `full` (what
/// docs/RELIABILITY.md states), a number for that many, unset for `short`
/// (the test suite's short form).
pub fn reps(full: u32, short: u32) -> u32 {
    match std::env::var("IBEX_FAULT_REPS").ok().as_deref() {
        Some("full") => full,
        Some(n) => n.trim().parse::<u32>().map(|n| n.max(1)).unwrap_or(short),
        None => short,
    }
}

/// What a scenario tells of itself; the rest of its record is measured
/// when it ends (`Rig::finish`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Scenario {
    /// A stable id (the file name).
    pub id: String,
    /// What was done, in words.
    pub scenario: String,
    /// Repetitions asked for, and the number the full suite states.
    pub reps_planned: u32,
    pub reps_full: u32,
    /// Repetitions that injected their fault where they had to.
    pub reps: u32,
    /// Faults injected in all (a repetition may inject several).
    pub faults: u64,
    /// The longest time from a fault to the next good run, in ms.
    pub max_recovery_ms: Option<u64>,
    /// What was observed, when the outcome is a decision (clock skew).
    pub observed: Option<String>,
}

/// What one scenario did, for docs/RELIABILITY.md. Every field is measured
/// by the run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScenarioRecord {
    #[serde(flatten)]
    pub done: Scenario,
    /// None for scenarios whose outcome is a decision, not a copy.
    pub tally: Option<Tally>,
    /// `SELECT version()` of the servers involved.
    pub server_version: String,
    /// Wall-clock seconds the scenario took.
    pub seconds: f64,
}

/// Writes a scenario's record to target/reliability/ID.json.
pub fn record(rec: &ScenarioRecord) -> Result<()> {
    let dir = crate::plugins::workspace_root().join("target/reliability");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{}.json", rec.done.id)), serde_json::to_string_pretty(rec)?)?;
    Ok(())
}

/// SIGKILL of the postmaster and every backend at once (no shutdown, no
/// checkpoint: a crash), then waits until they are gone.
pub fn kill_postgres(cluster: &mut Cluster) -> Result<()> {
    let text = std::fs::read_to_string(cluster.dir().join("data/postmaster.pid"))?;
    let postmaster = text.lines().next().map(str::trim).ok_or_else(|| anyhow!("empty postmaster.pid"))?.to_string();
    let mut victims = vec![postmaster.clone()];
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: the command name may hold spaces.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(postmaster.as_str()) {
            victims.push(entry.file_name().to_string_lossy().to_string());
        }
    }
    if victims.len() < 2 {
        bail!("the postmaster {postmaster} has no backends to kill");
    }
    // A backend may exit on its own meanwhile; kill says so on stderr.
    Command::new("kill").arg("-9").args(&victims).stderr(std::process::Stdio::null()).status()?;
    // Waits for the postmaster to go and marks the cluster stopped.
    cluster.kill()
}

/// How many lines of the daemon's log contain `needle`.
pub fn log_count(d: &Daemon, needle: &str) -> usize {
    d.log().lines().filter(|l| l.contains(needle)).count()
}

/// Waits until the daemon's log holds more than `seen` lines with `needle`.
pub fn wait_log(d: &Daemon, needle: &str, seen: usize, within: Duration) -> Result<()> {
    wait_until(d, &format!("a new {needle:?} line in the daemon's log"), within, || log_count(d, needle) > seen)
}

/// The last `n` lines of a log, for failure messages.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The log line of a good run of the sync (see `sync/kid.rs`).
pub const RUN_DONE: &str = "run done";

/// Three dbs (m1, m2 masters, t target) with the writers' tables, sync
/// `mm` over them, and the audit on each. Dbs named in `own` live on
/// clusters of their own (to be killed), the rest on the control's.
pub struct Rig {
    pub setup: Setup,
    own: BTreeMap<String, Cluster>,
}

impl Rig {
    /// `port_of(db, port)` says where ibex reaches a db that listens on
    /// `port` (a fault proxy in front of it, or the port itself).
    pub fn new(own: &[&str], durable: bool, mut port_of: impl FnMut(&str, u16) -> u16) -> Result<Rig> {
        let setup = Setup::new();
        let mut rig = Rig { setup, own: BTreeMap::new() };
        for db in own {
            rig.own.insert(db.to_string(), Cluster::start()?);
        }
        if durable {
            rig.setup.cluster.make_durable()?;
            for c in rig.own.values() {
                c.make_durable()?;
            }
        }
        for db in DBS {
            let c = rig.cluster(db);
            c.create_db(db)?;
            c.psql(db, Writer::SCHEMA)?;
            rig.setup.add_db_on(db, db, port_of(db, c.port())).ok();
        }
        let ibex = &rig.setup.ibex;
        ibex.sh("add table writes counter db=m1 herd=h").ok();
        ibex.sh(&format!("add sync {SYNC} herd=h dbs=m1:source,m2:source,t:target")).ok();
        for db in DBS {
            audit::install(rig.cluster(db), db)?;
        }
        for db in MASTERS {
            // Without it, every repeated arrival would pass as a re-apply.
            if rig.cluster(db).psql(db, "SELECT count(*) FROM pg_trigger WHERE tgname = 'ibex_audit_cursor'")? != "1" {
                bail!("no cursor audit on {db}: ibex.cursor was not installed before the audit");
            }
        }
        Ok(rig)
    }

    pub fn cluster(&self, db: &str) -> &Cluster {
        self.own.get(db).unwrap_or(&self.setup.cluster)
    }

    pub fn cluster_mut(&mut self, db: &str) -> &mut Cluster {
        self.own.get_mut(db).unwrap_or(&mut self.setup.cluster)
    }

    /// One writer per master, writing to it directly (not through proxies).
    pub fn writers(&self) -> Vec<Writer> {
        MASTERS.iter().map(|db| Writer::start(self.cluster(db).port(), db, Duration::from_millis(3))).collect()
    }

    /// The server version(s) of the rig, e.g. "PostgreSQL 15.14 (...)".
    pub fn server_version(&self) -> Result<String> {
        let mut versions: Vec<String> = Vec::new();
        for db in DBS {
            let v = self.cluster(db).psql("postgres", "SELECT version()")?;
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
        Ok(versions.join("; "))
    }

    /// Stops the writers, waits until `ibex compare` finds every db equal
    /// (kicking the sync), and audits every db.
    pub fn settle(&self, d: &Daemon, writers: Vec<Writer>, within: Duration) -> Result<Tally> {
        let committed: Vec<(String, Vec<i32>)> = writers.into_iter().map(|w| (w.db.clone(), w.finish())).collect();
        converge(d, within)?;
        self.audit(&committed)
    }

    /// Ends a scenario that copied rows: settles and audits (`settle`),
    /// records what it did with the tally, and writes the evidence when the
    /// audit found something. Returns the tally.
    pub fn finish(&self, d: &Daemon, writers: Vec<Writer>, started: Instant, done: Scenario) -> Result<Tally> {
        let tally = self.settle(d, writers, Duration::from_secs(240)).context("settling")?;
        let id = done.id.clone();
        record(&ScenarioRecord {
            done,
            tally: Some(tally),
            server_version: self.server_version()?,
            seconds: started.elapsed().as_secs_f64(),
        })
        .context("recording")?;
        self.evidence(d, &id, &tally).context("writing the evidence")?;
        Ok(tally)
    }

    /// When the audit found something, writes what explains it to
    /// target/reliability/ID.evidence.txt: the daemon's log, every row
    /// version that arrived more than once on a db (with its transaction and
    /// time), and the cursor moves of every source.
    pub fn evidence(&self, d: &Daemon, id: &str, tally: &Tally) -> Result<()> {
        if tally.lost == 0 && tally.doubled == 0 && tally.differing == 0 {
            return Ok(());
        }
        let mut text = String::new();
        for db in DBS {
            let c = self.cluster(db);
            text.push_str(&format!(
                "== {db}: row versions that arrived more than once (tbl, key, xid, at, row)\n{}\n",
                c.psql(
                    db,
                    "SELECT a.tbl, a.key, a.xid, a.at, a.row_text FROM ibex_audit.arrival a
                      WHERE a.by_ibex AND (a.tbl, a.key, a.row_text) IN
                            (SELECT tbl, key, row_text FROM ibex_audit.arrival WHERE by_ibex
                              GROUP BY 1, 2, 3 HAVING count(*) > 1)
                      ORDER BY a.tbl, a.key, a.at"
                )?
            ));
            if MASTERS.contains(&db) {
                text.push_str(&format!(
                    "== {db}: cursor moves\n{}\n",
                    c.psql(db, "SELECT sync, at FROM ibex_audit.cursor_move ORDER BY at")?
                ));
            }
        }
        text.push_str(&format!("== the daemon's log\n{}", d.log()));
        let dir = crate::plugins::workspace_root().join("target/reliability");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{id}.evidence.txt")), text)?;
        Ok(())
    }

    /// The audit of every db against the writers' acknowledged commits.
    pub fn audit(&self, committed: &[(String, Vec<i32>)]) -> Result<Tally> {
        let dbs: Vec<AuditedDb> = DBS
            .iter()
            .map(|db| AuditedDb {
                name: db,
                cluster: self.cluster(db),
                committed: committed.iter().find(|(w, _)| w == db).map(|(_, n)| n.as_slice()),
            })
            .collect();
        audit::check(SYNC, &dbs)
    }
}

/// Kicks the sync until `ibex compare` finds every db equal.
pub fn converge(d: &Daemon, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while !d.run(&["compare", SYNC]).success() {
        let _ = d.run(&["kick", SYNC, "--wait", "60"]);
        if Instant::now() > deadline {
            bail!("the dbs never converged within {within:?}:\n{}", tail(&d.log(), 60));
        }
        thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// Whether an ibex connection to `db` is inside a transaction that wrote
/// (has a transaction id): the apply transaction of a run.
pub fn ibex_inside_apply(cluster: &Cluster, db: &str) -> Result<bool> {
    let n = cluster
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name LIKE 'ibex kid%'
                   AND state LIKE 'idle in transaction%' AND backend_xid IS NOT NULL"
            ),
        )
        .context("reading pg_stat_activity")?;
    Ok(n != "0")
}

/// The longest of several durations, in ms.
#[derive(Debug, Default)]
pub struct MaxTime(Option<u64>);

impl MaxTime {
    pub fn add(&mut self, took: Duration) {
        let ms = took.as_millis() as u64;
        self.0 = Some(self.0.map_or(ms, |m| m.max(ms)));
    }

    pub fn get(&self) -> Option<u64> {
        self.0
    }
}

/// Whether a daemon log line is about sync `sync` (`sync=NAME` field).
fn about_sync(line: &str, sync: &str) -> bool {
    let field = format!("sync={sync}");
    line.split_whitespace().any(|word| word == field)
}

/// How many good runs of `sync` the daemon's log shows.
pub fn runs_done(d: &Daemon, sync: &str) -> usize {
    d.log().lines().filter(|l| l.contains(RUN_DONE) && about_sync(l, sync)).count()
}

/// Waits until the daemon's log shows more than `seen` good runs of `sync`.
pub fn wait_run_done(d: &Daemon, sync: &str, seen: usize, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while runs_done(d, sync) <= seen {
        if Instant::now() > deadline {
            bail!("no new good run of {sync} in the daemon's log within {within:?}:\n{}", tail(&d.log(), 40));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until the backlog of `sync` is drained while the writers still
/// write: its last `runs` good runs each inserted fewer than `rows` rows
/// (a run cut at its window, after run_timeout halved it, inserts about
/// twice the window). Settling with a backlog of several windows would copy
/// the same current row once per window after the writers stopped, which
/// the audit cannot tell from a window applied twice.
pub fn wait_caught_up(d: &Daemon, sync: &str, runs: usize, rows: u64, within: Duration) -> Result<()> {
    let inserted = |line: &str| -> Option<u64> {
        line.split_whitespace().find_map(|w| w.strip_prefix("inserted=")).and_then(|n| n.parse().ok())
    };
    wait_until(d, &format!("{sync} caught up ({runs} good runs inserting under {rows} rows each)"), within, || {
        let log = d.log();
        let last: Vec<u64> =
            log.lines().filter(|l| l.contains(RUN_DONE) && about_sync(l, sync)).filter_map(inserted).collect();
        last.len() >= runs && last[last.len() - runs..].iter().all(|&n| n < rows)
    })
}

/// The daemon's `run failed` lines of `sync` that contain one of `needles`.
pub fn failed_runs_with(d: &Daemon, sync: &str, needles: &[&str]) -> usize {
    d.log()
        .lines()
        .filter(|l| l.contains("run failed") && about_sync(l, sync) && needles.iter().any(|n| l.contains(n)))
        .count()
}

/// The daemon's lines about `sync` that say a run failed or outlasted
/// run_timeout (the kid retries those within the run).
pub fn run_trouble(d: &Daemon, sync: &str) -> usize {
    d.log()
        .lines()
        .filter(|l| (l.contains("run failed") || l.contains("longer than run_timeout")) && about_sync(l, sync))
        .count()
}

/// Runs `sql` on `db` (on `port`) with psql every `pause` until finished,
/// counting the statements that succeeded: a load of its own for a second
/// sync.
pub struct SqlLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
}

impl SqlLoop {
    /// `sql` may use `{n}`, replaced by 1, 2, 3...
    pub fn start(port: u16, db: &str, sql: &str, pause: Duration) -> SqlLoop {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (db, sql) = (db.to_string(), sql.to_string());
        let handle = thread::spawn(move || {
            let mut ok = 0;
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let status = Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                    .arg(port.to_string())
                    .args(["-d", &db, "-c", &sql.replace("{n}", &n.to_string())])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                if status.is_ok_and(|s| s.success()) {
                    ok += 1;
                }
                thread::sleep(pause);
            }
            ok
        });
        SqlLoop { stop, handle: Some(handle) }
    }

    /// Stops and returns how many statements succeeded.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0)
    }
}

impl Drop for SqlLoop {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A small tmpfs mounted for a test (root only), unmounted and removed on
/// drop, also when the test panics. `resize` changes its size in place.
pub struct Tmpfs {
    pub dir: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `megabytes` MB on a new directory owned by
    /// `postgres` (for a tablespace).
    pub fn mount(megabytes: u32) -> Result<Tmpfs> {
        let dir = tempfile::Builder::new().prefix("ibex-tmpfs-").tempdir()?.keep();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700"), "tmpfs"])
            .arg(&dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            bail!("mount -t tmpfs was refused ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let fs = Tmpfs { dir };
        let out = Command::new("chown").args(["postgres:postgres"]).arg(&fs.dir).output()?;
        if !out.status.success() {
            bail!("chown postgres {}: {}", fs.dir.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(fs)
    }

    /// Free bytes on the tmpfs.
    pub fn free_bytes(&self) -> Result<u64> {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&self.dir).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).ok_or_else(|| anyhow!("df said {text:?}"))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a server still holding a file open cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Whether the long form runs (`IBEX_FAULT_REPS` set, as
/// scripts/reliability.sh does): faults that last minutes there last
/// seconds in the test suite's short form.
pub fn long_form() -> bool {
    std::env::var("IBEX_FAULT_REPS").is_ok()
}

/// Waits until `done()` holds, failing with `what` and the daemon's log.
pub fn wait_until(d: &Daemon, what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}:\n{}", tail(&d.log(), 40));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The first daemon log line containing every one of `needles`, from its
/// `error=` field on (or the whole line), cut to `max` characters and with
/// no `|` (it goes into a Markdown table).
pub fn logged_error(d: &Daemon, needles: &[&str], max: usize) -> Option<String> {
    let log = d.log();
    let line = log.lines().find(|l| needles.iter().all(|n| l.contains(n)))?;
    let text = line.split_once("error=").map_or(line, |(_, e)| e).replace("\\\"", "'").replace(['"', '|'], "");
    Some(text.chars().take(max).collect())
}
