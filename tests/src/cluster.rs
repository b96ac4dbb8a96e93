//! One PostgreSQL cluster per `Cluster`, stopped and deleted on drop (also
//! when the test panics). Clusters left behind by a killed test process are
//! swept the next time any test starts one.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

const ROOT: &str = "/tmp/ibex-test-clusters";

pub struct Cluster {
    dir: PathBuf,
    port: u16,
    running: bool,
    /// initdb, pg_ctl and postgres of this cluster's version.
    bin: PathBuf,
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The directory of initdb, pg_ctl and postgres.
pub fn pg_bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("IBEX_PG_BIN") {
            return Some(PathBuf::from(dir));
        }
        let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop().or_else(|| {
            let out = Command::new("sh").args(["-c", "command -v initdb"]).output().ok()?;
            let path = String::from_utf8(out.stdout).ok()?;
            Path::new(path.trim()).parent().map(Path::to_path_buf)
        })
    })
    .clone()
    .ok_or_else(|| anyhow!("no PostgreSQL server binaries (initdb): install postgresql or set IBEX_PG_BIN"))
}

/// Runs a PostgreSQL server program from `bin`, as `postgres` when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        run(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(path);
                c
            },
            "chown",
        )?;
    }
    Ok(())
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Stops and deletes clusters whose test process is gone.
fn sweep_stale() {
    let Ok(entries) = fs::read_dir(ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join("owner.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok());
        if matches!(owner, Some(pid) if pid_alive(pid)) {
            continue;
        }
        if owner.is_none() && dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("template")) {
            continue;
        }
        if let Ok(text) = fs::read_to_string(dir.join("data/postmaster.pid"))
            && let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok())
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// initdb once per test process and server version (`bin`); every cluster
/// starts as a copy of its version's template. `name` tells the templates of
/// one process apart.
fn template(bin: &Path, name: &str) -> Result<PathBuf> {
    type Cell = Arc<OnceLock<Result<PathBuf, String>>>;
    static TEMPLATES: Mutex<Option<HashMap<PathBuf, Cell>>> = Mutex::new(None);
    let cell = {
        let mut templates = TEMPLATES.lock().map_err(|_| anyhow!("template lock poisoned"))?;
        templates.get_or_insert_with(HashMap::new).entry(bin.to_path_buf()).or_default().clone()
    };
    cell.get_or_init(|| make_template(bin, name).map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn make_template(bin: &Path, name: &str) -> Result<PathBuf> {
    fs::create_dir_all(ROOT)?;
    fs::set_permissions(ROOT, fs::Permissions::from_mode(0o1777))?;
    sweep_stale();
    let dir = PathBuf::from(ROOT).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("owner.pid"), std::process::id().to_string())?;
    chown_postgres(&dir)?;
    let data = dir.join("data");
    let mut initdb = pg_command(bin, "initdb");
    initdb.args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "-N", "-D"]).arg(&data);
    run(initdb, &format!("{}/initdb", bin.display()))?;
    let mut conf = String::from(
        "
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 64MB
max_wal_size = 2GB
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
",
    );
    // Before 14 passwords are stored as md5, which the scram-sha-256 line of
    // pg_hba.conf (for `create_password_role`) cannot check.
    let major = fs::read_to_string(data.join("PG_VERSION"))?.trim().parse::<u32>().unwrap_or(0);
    if major < 14 {
        conf.push_str("password_encryption = 'scram-sha-256'\n");
    }
    append(&data.join("postgresql.conf"), &conf)?;
    fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhost all ibex_pw 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n",
    )?;
    chown_postgres(&dir)?;
    Ok(dir)
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn free_port() -> Result<u16> {
    use rand_port::next;
    for _ in 0..100 {
        let port = next();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found")
}

mod rand_port {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    static SEED: AtomicU32 = AtomicU32::new(0);

    /// A port in 20000..60000, spread by process id and time so parallel
    /// test processes rarely try the same one.
    pub fn next() -> u16 {
        let mut s = SEED.load(Ordering::Relaxed);
        if s == 0 {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1);
            s = nanos ^ (std::process::id().wrapping_mul(2654435761));
        }
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        SEED.store(s, Ordering::Relaxed);
        20000 + (s % 40000) as u16
    }
}

impl Cluster {
    /// Starts a fresh cluster (a copy of this process's initdb template) of
    /// the default server ([`pg_bin_dir`]).
    pub fn start() -> Result<Cluster> {
        let bin = pg_bin_dir()?;
        let template = template(&bin, &format!("template-{}", std::process::id()))?;
        Self::start_from(bin, &template)
    }

    /// Starts a fresh cluster of PostgreSQL `major` (10..=18), with binaries
    /// from [`crate::versions::pg_bin_dir_for`] (fetched on first use).
    pub fn start_version(major: u32) -> Result<Cluster> {
        let bin = crate::versions::pg_bin_dir_for(major)?;
        let template = template(&bin, &format!("template-{}-pg{major}", std::process::id()))
            .with_context(|| format!("making the PostgreSQL {major} template cluster"))?;
        Self::start_from(bin, &template).with_context(|| format!("starting a PostgreSQL {major} cluster"))
    }

    fn start_from(bin: PathBuf, template: &Path) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("cluster-").tempdir_in(ROOT)?.keep();
        fs::write(dir.join("owner.pid"), std::process::id().to_string())?;
        run(
            {
                let mut c = Command::new("cp");
                c.arg("-a").arg(template.join("data")).arg(dir.join("data"));
                c
            },
            "copying the template cluster",
        )?;
        chown_postgres(&dir)?;
        let mut cluster = Cluster { dir, port: 0, running: false, bin };
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("cluster did not start")))
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.arg("start")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {} -k {}", self.port, self.dir.display()));
        run(c, "pg_ctl start")?;
        self.running = true;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of this cluster's initdb, pg_ctl and postgres.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server's `server_version_num`, e.g. 100023 or 180004.
    pub fn server_version_num(&self) -> Result<u32> {
        let text = self.psql("postgres", "SHOW server_version_num")?;
        text.trim().parse().with_context(|| format!("parsing server_version_num {text:?}"))
    }

    /// A libpq connection string for `dbname` as the superuser.
    pub fn dsn(&self, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={dbname}", self.port)
    }

    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.dsn(dbname), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {dbname} on port {}", self.port))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Opens a transaction on `dbname` that runs `lock_sql` (e.g. `SELECT
    /// ... FOR UPDATE`) and keeps its locks until [`HeldLocks::release`].
    pub fn hold(&self, dbname: &str, lock_sql: &str) -> Result<HeldLocks> {
        let runtime = tokio::runtime::Runtime::new().context("starting a runtime for a lock holder")?;
        let client = runtime.block_on(async {
            let client = self.connect(dbname).await?;
            client.batch_execute(&format!("BEGIN; {lock_sql}")).await.with_context(|| format!("holding {lock_sql}"))?;
            Ok::<_, anyhow::Error>(client)
        })?;
        Ok(HeldLocks { runtime, client })
    }

    /// Runs SQL with psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String> {
        let mut c = Command::new("psql");
        c.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(dbname)
            .arg("-c")
            .arg(sql);
        let out = run(c, &format!("psql on {dbname}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    pub fn create_db(&self, dbname: &str) -> Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE \"{}\"", dbname.replace('"', "\"\"")))?;
        Ok(())
    }

    /// Creates a database from another (CREATE DATABASE ... TEMPLATE).
    pub fn clone_db(&self, from: &str, to: &str) -> Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE \"{to}\" TEMPLATE \"{from}\""))?;
        Ok(())
    }

    /// Creates a database and fills it with `pgbench -i -s scale`.
    pub fn create_pgbench_db(&self, dbname: &str, scale: u32) -> Result<()> {
        self.create_db(dbname)?;
        self.pgbench(dbname, &["-i", "-q", "-s", &scale.to_string()])?;
        Ok(())
    }

    /// Runs pgbench with the given arguments against `dbname`.
    pub fn pgbench(&self, dbname: &str, args: &[&str]) -> Result<String> {
        let mut c = Command::new("pgbench");
        c.args(["-h", "127.0.0.1", "-U", "postgres", "-p"]).arg(self.port.to_string()).args(args).arg(dbname);
        let out = run(c, &format!("pgbench {}", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Adds a login role with a password, checked with scram over TCP.
    pub fn create_password_role(&self, password: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE ROLE ibex_pw LOGIN SUPERUSER PASSWORD '{}'", password.replace('\'', "''")),
        )?;
        Ok(())
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) -> Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server like a crash (`-m immediate`).
    pub fn crash(&mut self) -> Result<()> {
        self.pg_ctl_stop("immediate")
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<()> {
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.arg("stop").arg("-D").arg(self.dir.join("data")).args(["-m", mode, "-w"]);
        run(c, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// Kills the postmaster with SIGKILL (children exit when they notice).
    pub fn kill(&mut self) -> Result<()> {
        let pid = fs::read_to_string(self.dir.join("data/postmaster.pid"))?
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
            .ok_or_else(|| anyhow!("no postmaster pid"))?;
        Command::new("kill").args(["-9", &pid.to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.running = false;
        Ok(())
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        if self.running {
            self.stop()?;
        }
        // After a kill the old backends may hold the port for a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    pub fn server_log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command(&self.bin, "pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    /// An order-independent fingerprint of a table's rows: md5 of all rows
    /// as text, sorted. Equal fingerprints mean equal contents.
    pub fn table_hash(&self, dbname: &str, table: &str) -> Result<String> {
        self.psql(
            dbname,
            &format!("SELECT count(*)::text || ':' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM {table} x"),
        )
    }
}

impl Cluster {
    /// Makes the server durable like a production one (`fsync`,
    /// `full_page_writes`, `synchronous_commit` on; the template turns them
    /// off for speed), for crash scenarios: a commit it acknowledged must
    /// survive a SIGKILL. The checkpoint flushes what was written before.
    pub fn make_durable(&self) -> Result<()> {
        self.psql("postgres", "ALTER SYSTEM SET fsync = on")?;
        self.psql("postgres", "ALTER SYSTEM SET full_page_writes = on")?;
        self.psql("postgres", "ALTER SYSTEM SET synchronous_commit = on")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        // The reload reaches the backends asynchronously; wait until it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.psql("postgres", "SHOW fsync")? != "on" {
            if Instant::now() > deadline {
                bail!("fsync did not turn on after the reload");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.psql("postgres", "CHECKPOINT")?;
        Ok(())
    }
}

/// A transaction holding locks on a db (see [`Cluster::hold`]), with the
/// runtime its connection lives on.
pub struct HeldLocks {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl HeldLocks {
    /// Commits the holding transaction: its locks go.
    pub fn release(self) -> Result<()> {
        self.runtime.block_on(self.client.batch_execute("COMMIT")).context("releasing held locks")
    }
}
