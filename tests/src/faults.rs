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

/// What one scenario did, for docs/RELIABILITY.md. Every field is measured
/// by the run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScenarioRecord {
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
    /// None for scenarios whose outcome is a decision, not a copy.
    pub tally: Option<Tally>,
    /// The longest time from a fault to the next good run, in ms.
    pub max_recovery_ms: Option<u64>,
    /// What was observed, when the outcome is a decision (clock skew).
    pub observed: Option<String>,
    /// `SELECT version()` of the servers involved.
    pub server_version: String,
    /// Wall-clock seconds the scenario took.
    pub seconds: f64,
}

/// Writes a scenario's record to target/reliability/ID.json.
pub fn record(rec: &ScenarioRecord) -> Result<()> {
    let dir = crate::plugins::workspace_root().join("target/reliability");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{}.json", rec.id)), serde_json::to_string_pretty(rec)?)?;
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
    let deadline = Instant::now() + within;
    while log_count(d, needle) <= seen {
        if Instant::now() > deadline {
            bail!("no new {needle:?} line in the daemon's log within {within:?}:\n{}", tail(&d.log(), 40));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
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
