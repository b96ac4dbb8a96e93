//! The scenarios of the side-by-side comparison, one module each. Each
//! starts its own cluster; Bucardo and ibex get identical databases in it
//! (copies of one template) and the same workload, one engine at a time.
//! This module holds what they share.

mod bulk;
mod capture;
mod catchup;
mod copy;
mod latency;
mod plugin;
mod tutorial;

pub use bulk::bulk;
pub use capture::capture;
pub use catchup::catchup;
pub use copy::initial_copy;
pub use latency::latency;
pub use plugin::plugin;
pub use tutorial::tutorial;

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ibex_tests::{Cluster, Setup};

use crate::bucardo::Bucardo;
use crate::measure::timed;
use crate::profile;
use crate::provenance::bucardo_version;
use crate::report::{Measure, Results};

pub(super) const PGBENCH_TABLES: &[&str] = &["pgbench_accounts", "pgbench_branches", "pgbench_tellers"];

/// What every scenario shares: the results being filled in and whether to
/// print ibex's per-phase profile as it goes.
pub struct Bench {
    pub results: Results,
    pub print_profiles: bool,
}

impl Bench {
    pub(super) fn add(&mut self, m: Measure) {
        self.results.add(m);
    }

    /// A fresh cluster with the catalog; the first one also records the
    /// server's version and the settings that bear on the figures.
    pub(super) fn setup(&mut self) -> Result<Setup> {
        let s = Setup::new();
        if self.results.provenance.postgres.is_none() {
            self.results.provenance.postgres = Some(s.cluster.psql("postgres", "SHOW server_version")?);
            for setting in ["fsync", "synchronous_commit", "shared_buffers", "max_wal_size"] {
                let value = s.cluster.psql("postgres", &format!("SHOW {setting}"))?;
                self.results.provenance.postgres_settings.push((setting.to_string(), value));
            }
        }
        Ok(s)
    }

    /// Installs Bucardo into the scenario's cluster; its version is read
    /// only now, after the package is surely there.
    pub(super) fn bucardo(&mut self, s: &Setup) -> Result<Bucardo> {
        let b = Bucardo::install(&s.cluster)?;
        if self.results.provenance.bucardo.is_none() {
            self.results.provenance.bucardo = Some(bucardo_version()?);
        }
        Ok(b)
    }

    /// Keeps (and with --profile prints) the phases of ibex's runs of `sync`.
    pub(super) fn profile(&mut self, s: &Setup, scenario: &str, label: &str, sync: &str) -> Result<()> {
        self.profile_after(s, scenario, label, sync, 0)
    }

    /// [`Bench::profile`] of the runs after run id `after`.
    pub(super) fn profile_after(
        &mut self,
        s: &Setup,
        scenario: &str,
        label: &str,
        sync: &str,
        after: i64,
    ) -> Result<()> {
        let p = profile::collect(&s.cluster, scenario, label, sync, after)?;
        if self.print_profiles {
            eprint!("{}", p.text());
        }
        self.results.profiles.push(p);
        Ok(())
    }
}

pub(super) fn scale_for(rows: u64) -> u32 {
    rows.div_ceil(100_000).max(1) as u32
}

/// `pgbench ARGS` on each db at once.
pub(super) fn pgbench_all(cluster: &Cluster, dbs: &[&str], args: &[&str]) -> Result<()> {
    let children: Vec<_> = dbs
        .iter()
        .map(|db| {
            Command::new("pgbench")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &cluster.port().to_string()])
                .args(args)
                .arg(db)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for mut child in children {
        if !child.wait()?.success() {
            bail!("pgbench {} failed", args.join(" "));
        }
    }
    Ok(())
}

pub(super) fn same(s: &Setup, dbs: &[&str], tables: &[&str]) -> Result<bool> {
    for t in tables {
        let first = s.cluster.table_hash(dbs[0], t)?;
        for db in &dbs[1..] {
            if s.cluster.table_hash(db, t)? != first {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

pub(super) fn check_same(s: &Setup, engine: &str, dbs: &[&str], tables: &[&str]) -> Result<()> {
    if !same(s, dbs, tables)? {
        bail!("{engine}: the databases differ after the run");
    }
    Ok(())
}

/// The duration of the newest ibex run, by the catalog (as Bucardo's syncrun).
pub(super) fn last_ibex_run(s: &Setup) -> Result<f64> {
    s.cluster
        .psql("ibex", "SELECT extract(epoch FROM ended_at - started_at) FROM ibex.run ORDER BY id DESC LIMIT 1")?
        .trim()
        .parse()
        .context("reading the last run")
}

pub(super) fn ibex_dbs(s: &Setup, template: &str, names: &[&str]) {
    s.dbs_from(template, names);
}

pub(super) fn bucardo_dbs(s: &Setup, b: &Bucardo, template: &str, names: &[&str]) -> Result<()> {
    for name in names {
        s.cluster.clone_db(template, name)?;
        b.add_db(name, name)?;
    }
    Ok(())
}

/// Before a timed step: no autovacuum worker running, the cluster's dirty
/// buffers written out (CHECKPOINT) and the kernel's dirty pages flushed to
/// disk (`sync`), so that no step pays for the writes of the setup or of
/// the step before it (by hand, `Dirty` in /proc/meminfo after the bulk
/// scenario's setup: 1.4 GB).
pub(super) fn settle(cluster: &Cluster) -> Result<()> {
    let workers = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'";
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while cluster.psql("postgres", workers)?.trim() != "0" {
        if std::time::Instant::now() > deadline {
            eprintln!("  settle: an autovacuum worker still runs after 120 s; the next timed step starts anyway");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.psql("postgres", "CHECKPOINT")?;
    let status = Command::new("sync").status().context("running sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

/// `psql -c "COPY (...) TO STDOUT" | psql -c "COPY ... FROM STDIN"`, binary;
/// the receiving psql runs `to_sql` in order in one session (one `-c`
/// each), one of them the COPY that reads the pipe.
pub(super) fn raw_pipe(
    cluster: &Cluster,
    from_db: &str,
    out_sql: &str,
    to_db: &str,
    to_sql: &[&str],
) -> Result<Duration> {
    let port = cluster.port().to_string();
    let psql = |db: &str, sql: &[&str]| {
        let mut c = Command::new("psql");
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-p", &port, "-d", db]);
        for statement in sql {
            c.args(["-c", statement]);
        }
        c
    };
    let (_, wall) = timed(|| {
        let mut reader = psql(from_db, &[out_sql]).stdout(Stdio::piped()).spawn()?;
        let out = reader.stdout.take().context("no stdout")?;
        let writer = psql(to_db, to_sql).stdin(out).output()?;
        if !reader.wait()?.success() || !writer.status.success() {
            bail!("raw COPY pipe failed: {}", String::from_utf8_lossy(&writer.stderr));
        }
        Ok(())
    })?;
    Ok(wall)
}

/// Keeps a daemon's whole log as `IBEX_BENCH_LOG_DIR`/LABEL.log when that
/// variable is set (with `IBEX_LOG=ibex=debug`, every run's phases).
pub fn keep_daemon_log(log: &str, label: &str) {
    if let Ok(dir) = std::env::var("IBEX_BENCH_LOG_DIR") {
        let file = std::path::Path::new(&dir).join(format!("{}.log", label.replace([' ', ',', '=', ':'], "_")));
        if let Err(err) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, log)) {
            eprintln!("  cannot keep the daemon log in {}: {err}", file.display());
        }
    }
}
