//! Bucardo 5 (Debian's package) on the bench's cluster, driven the way its
//! docs say: `bucardo install`, an rc file, `bucardo add ...`, `bucardo
//! start`, kicks timed from its own `syncrun` table, processes found by
//! their working directory (Bucardo renames them and clears their
//! environment).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ibex_tests::Cluster;

pub struct Bucardo {
    home: tempfile::TempDir,
    port: u16,
}

/// Installs Debian's bucardo (and plperl) when missing.
pub fn ensure_installed() -> Result<()> {
    if Command::new("sh").args(["-c", "command -v bucardo"]).output()?.status.success()
        && Path::new("/usr/share/postgresql").exists()
        && std::fs::read_dir("/usr/share/postgresql")?
            .flatten()
            .any(|v| v.path().join("extension/plperlu.control").exists())
    {
        return Ok(());
    }
    eprintln!("== installing Debian's bucardo and postgresql-plperl");
    let status = Command::new("sh")
        .args(["-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bucardo postgresql-plperl-15 >/dev/null"])
        .status()?;
    if !status.success() {
        bail!("cannot install bucardo (apt-get install bucardo postgresql-plperl-15, as root)");
    }
    Ok(())
}

impl Bucardo {
    /// `bucardo install` into `cluster` (database `bucardo`).
    pub fn install(cluster: &Cluster) -> Result<Bucardo> {
        ensure_installed()?;
        let home = tempfile::tempdir()?;
        for dir in ["pid", "log"] {
            std::fs::create_dir_all(home.path().join(dir))?;
        }
        let b = Bucardo { home, port: cluster.port() };
        let out = Command::new("bucardo")
            .args(["install", "--batch", "--dbhost", "127.0.0.1", "--dbport", &b.port.to_string()])
            .args(["--dbuser", "postgres", "--dbname", "postgres", "--piddir"])
            .arg(b.home.path().join("pid"))
            .env("HOME", b.home.path())
            .current_dir(b.home.path())
            .output()
            .context("running bucardo install")?;
        if !out.status.success() {
            bail!(
                "bucardo install failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(
            b.rc(),
            format!(
                "dbhost = 127.0.0.1\ndbport = {}\ndbname = bucardo\ndbuser = bucardo\npiddir = {}\nlogdest = {}\n",
                b.port,
                b.home.path().join("pid").display(),
                b.home.path().join("log").display()
            ),
        )?;
        Ok(b)
    }

    fn rc(&self) -> PathBuf {
        self.home.path().join("bucardorc")
    }

    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("bucardo")
            .arg("--bucardorc")
            .arg(self.rc())
            .args(args)
            .env("HOME", self.home.path())
            .current_dir(self.home.path())
            .output()
            .with_context(|| format!("running bucardo {}", args.join(" ")))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("bucardo {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }

    pub fn add_db(&self, name: &str, dbname: &str) -> Result<()> {
        let port = format!("port={}", self.port);
        self.cmd(&["add", "db", name, &format!("dbname={dbname}"), "host=127.0.0.1", &port, "user=postgres"])?;
        Ok(())
    }

    /// `bucardo start`, without waiting: Bucardo's MCP daemonizes and gets
    /// to work at once, so a timed scenario starts its clock before this.
    pub fn launch(&self) -> Result<()> {
        let _ = std::fs::remove_file(self.home.path().join("pid/fullstopbucardo"));
        self.cmd(&["start"])?;
        Ok(())
    }

    /// `bucardo start`, then waits for the MCP and gives it a moment to
    /// fork its controllers and kids.
    pub fn start(&self) -> Result<()> {
        self.launch()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.home.path().join("pid/bucardo.mcp.pid").exists() {
            if Instant::now() > deadline {
                bail!("bucardo did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn stop(&self) {
        let _ = self.cmd(&["stop"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }

    /// Bucardo's processes: those working in its home, and their children.
    pub fn pids(&self) -> Vec<u32> {
        process_tree(self.home.path())
    }

    /// What Bucardo's own `syncrun` table says about the runs of `sync`
    /// that started after `after` (a timestamp from its database).
    pub fn runs_since(&self, cluster: &Cluster, sync: &str, after: &str) -> Result<RunSummary> {
        let counts = cluster.psql(
            "bucardo",
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE lastgood OR lastempty OR status LIKE 'Complete%'),
                        count(*) FILTER (WHERE lastbad OR status LIKE 'Failed%')
                   FROM bucardo.syncrun WHERE sync = '{sync}' AND started >= '{after}'"
            ),
        )?;
        let mut parts = counts.split('|').map(|v| v.trim().parse::<u64>());
        let mut next = || parts.next().and_then(|v| v.ok()).context("reading bucardo.syncrun counts");
        let (runs, completed, failed) = (next()?, next()?, next()?);
        let first_failure = cluster.psql(
            "bucardo",
            &format!(
                "SELECT status FROM bucardo.syncrun WHERE sync = '{sync}' AND started >= '{after}'
                    AND (lastbad OR status LIKE 'Failed%') ORDER BY started LIMIT 1"
            ),
        )?;
        let kid_deaths = std::fs::read_to_string(self.home.path().join("log/log.bucardo"))
            .map(|log| log.lines().filter(|l| l.contains("Kid has died")).count() as u64)
            .unwrap_or(0);
        Ok(RunSummary { runs, completed, failed, first_failure: first_failure.trim().to_string(), kid_deaths })
    }

    /// Bucardo's clock, to mark the start of a measured stretch.
    pub fn now(&self, cluster: &Cluster) -> Result<String> {
        cluster.psql("bucardo", "SELECT now()")
    }

    /// Kicks the sync and waits for its run to end (from Bucardo's own
    /// `syncrun` table); returns the run's duration by Bucardo's clock.
    pub fn kick_and_wait(&self, cluster: &Cluster, sync: &str, timeout: Duration) -> Result<Option<Duration>> {
        let before = self.now(cluster)?;
        self.cmd(&["kick", sync])?;
        self.wait_for_run(cluster, sync, &before, timeout)
    }

    /// Waits for a run of `sync` that started after `after` to end.
    pub fn wait_for_run(
        &self,
        cluster: &Cluster,
        sync: &str,
        after: &str,
        timeout: Duration,
    ) -> Result<Option<Duration>> {
        let deadline = Instant::now() + timeout;
        let sql = format!(
            "SELECT extract(epoch FROM ended - started) FROM bucardo.syncrun
              WHERE sync = '{sync}' AND started >= '{after}' AND ended IS NOT NULL ORDER BY started LIMIT 1"
        );
        loop {
            let got = cluster.psql("bucardo", &sql)?;
            if let Ok(secs) = got.trim().parse::<f64>() {
                return Ok(Some(Duration::from_secs_f64(secs)));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bucardo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What Bucardo's `syncrun` table recorded for a stretch of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub runs: u64,
    pub completed: u64,
    pub failed: u64,
    /// The status text of the first failed run ("" when none failed).
    pub first_failure: String,
    /// "Kid has died" lines in Bucardo's log (the whole install's life).
    pub kid_deaths: u64,
}

/// Every process whose working directory is `dir` and whose name Bucardo
/// set, and all their descendants, read afresh from /proc on each call so
/// that kids forked after the start are counted.
pub fn process_tree(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let procs: Vec<(u32, u32)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| parent_of(pid).map(|ppid| (pid, ppid)))
        .collect();
    let mut tree: Vec<u32> = procs
        .iter()
        .map(|&(pid, _)| pid)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"Bucardo"))
        })
        .collect();
    // Descendants, however deep: add children of members until none is new.
    loop {
        let before = tree.len();
        for &(pid, ppid) in &procs {
            if tree.contains(&ppid) && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// The parent pid from /proc/PID/stat (the field after the command name,
/// which may itself contain spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the summed RSS of Bucardo's process tree every 100 ms until
/// stopped, re-reading the tree on every sample; keeps the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<Mutex<u64>>,
    most_processes: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(home: &Path) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new(0));
        let most_processes = Arc::new(Mutex::new(0));
        let (s, p, m, home) = (stop.clone(), peak.clone(), most_processes.clone(), home.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let pids = process_tree(&home);
                let total: u64 = pids.iter().copied().map(rss_kib).sum();
                if let Ok(mut peak) = p.lock() {
                    *peak = (*peak).max(total);
                }
                if let Ok(mut most) = m.lock() {
                    *most = (*most).max(pids.len());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { stop, peak, most_processes, thread: Some(thread) }
    }

    /// Stops sampling; the peak summed RSS in KiB and the most processes
    /// seen in one sample.
    pub fn finish(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.peak.lock().map(|p| *p).unwrap_or(0), self.most_processes.lock().map(|m| *m).unwrap_or(0))
    }
}
