//! A throwaway MariaDB server (Debian's `mariadb-server`) for tests of the
//! MySQL side of ibex's foreign targets: a fresh data directory, the server
//! run as the `mysql` user when the tests run as root, reachable only on a
//! unix socket in that directory (no port to collide with other tests).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::is_root;

pub struct MariaDb {
    dir: tempfile::TempDir,
    server: Child,
}

impl MariaDb {
    /// Initialises a data directory and starts the server on it.
    pub fn start() -> Result<MariaDb> {
        let dir = tempfile::Builder::new().prefix("ibex-mariadb-").tempdir().context("making a MariaDB directory")?;
        let data = dir.path().join("data");
        // Its own temporary directory: two servers bootstrapping at once
        // in /tmp collided on a temporary table's file name.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).context("making MariaDB's temporary directory")?;
        let user = if is_root() { "mysql" } else { "" };
        if is_root() {
            let ok = Command::new("chown").args(["-R", "mysql:mysql"]).arg(dir.path()).status()?.success();
            if !ok {
                bail!("cannot give {} to the mysql user", dir.path().display());
            }
        }
        let mut init = Command::new("mariadb-install-db");
        init.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg(format!("--tmpdir={}", tmp.display()));
        if !user.is_empty() {
            init.arg(format!("--user={user}"));
        }
        let out = init.output().context("running mariadb-install-db (is mariadb-server installed?)")?;
        if !out.status.success() {
            bail!("mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut server = Command::new("mariadbd");
        server
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", dir.path().join("error.log").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--skip-networking")
            .arg("--skip-log-bin")
            .arg("--innodb-buffer-pool-size=32M")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !user.is_empty() {
            server.arg(format!("--user={user}"));
        }
        let server = server.spawn().context("starting mariadbd")?;
        let db = MariaDb { dir, server };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if db.sql("mysql", "SELECT 1").is_ok() {
                return Ok(db);
            }
            if Instant::now() > deadline {
                bail!(
                    "MariaDB did not start: {}",
                    std::fs::read_to_string(db.dir.path().join("error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn client(&self, database: &str) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--batch", "--raw", "--skip-column-names", "--default-character-set=utf8mb4"])
            .arg(database);
        c
    }

    /// Runs SQL; returns the rows as tab-separated lines (batch mode escapes
    /// tabs, newlines and backslashes in values).
    pub fn sql(&self, database: &str, sql: &str) -> Result<String> {
        let out = self.client(database).arg("-e").arg(sql).output().context("running the mariadb client")?;
        if !out.status.success() {
            bail!("SQL on MariaDB {database} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Runs a file of SQL statements, as `mariadb DB < FILE` would.
    pub fn run_file(&self, database: &str, file: &Path) -> Result<()> {
        let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let out = self.client(database).stdin(input).output().context("running the mariadb client")?;
        if !out.status.success() {
            bail!("replaying {} into MariaDB failed: {}", file.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
