//! A write load that logs what it committed, to check afterwards that
//! every committed write arrived (nothing lost) and counters were not
//! applied twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::Result;

/// One writer thread on one db: inserts rows `(db, n)` into `writes` and
/// adds 1 to `counter` for its db in the same transaction.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Vec<i32>>>,
    pub db: String,
}

impl Writer {
    /// The tables the writers use (create them on the template db).
    pub const SCHEMA: &'static str =
        "CREATE TABLE writes (db text, n int, at timestamptz DEFAULT clock_timestamp(), PRIMARY KEY (db, n));
         CREATE TABLE counter (db text PRIMARY KEY, n int NOT NULL)";

    pub fn start(port: u16, db: &str, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = db.to_string();
        let handle = thread::spawn(move || {
            let mut committed = Vec::new();
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return committed;
            };
            let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname={name}");
            let mut client = None;
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c: &tokio_postgres::Client| c.is_closed()) {
                    client = runtime.block_on(async {
                        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.ok()?;
                        tokio::spawn(conn);
                        Some(c)
                    });
                    if client.is_none() {
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                n += 1;
                let sql = format!(
                    "BEGIN; INSERT INTO writes (db, n) VALUES ('{name}', {n});
                     INSERT INTO counter VALUES ('{name}', 1) ON CONFLICT (db) DO UPDATE SET n = counter.n + 1; COMMIT;"
                );
                // Only a write whose COMMIT answered counts as committed.
                if runtime.block_on(c.batch_execute(&sql)).is_ok() {
                    committed.push(n);
                } else {
                    client = None;
                }
                thread::sleep(pause);
            }
            committed
        });
        Writer { stop, handle: Some(handle), db: db.to_string() }
    }

    /// Stops and returns the numbers of the committed writes.
    pub fn finish(mut self) -> Vec<i32> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

/// What a fault test found, for docs/RELIABILITY.md.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct FaultRecord {
    pub fault: String,
    pub injected: u64,
    pub rows_written: u64,
    pub rows_lost: u64,
    pub doubled: u64,
}

/// Checks every committed write against what `db` holds; returns
/// (written, lost, doubled counters).
pub fn check_writes(cluster: &crate::Cluster, db: &str, writers: &[(String, Vec<i32>)]) -> Result<(u64, u64, u64)> {
    let mut written = 0;
    let mut lost = 0;
    let mut doubled = 0;
    for (origin, committed) in writers {
        written += committed.len() as u64;
        let present: std::collections::BTreeSet<i32> = cluster
            .psql(db, &format!("SELECT coalesce(string_agg(n::text, ','), '') FROM writes WHERE db = '{origin}'"))?
            .split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        lost += committed.iter().filter(|n| !present.contains(n)).count() as u64;
        let counter: i64 = cluster
            .psql(db, &format!("SELECT coalesce((SELECT n FROM counter WHERE db = '{origin}'), 0)"))?
            .parse()
            .unwrap_or(0);
        // The counter moves with every write: any other value means a
        // change was lost or applied twice.
        if counter != present.len() as i64 {
            doubled += (counter - present.len() as i64).unsigned_abs();
        }
    }
    Ok((written, lost, doubled))
}

/// Appends a record to target/reliability/, read by the report.
pub fn record(rec: &FaultRecord) -> Result<()> {
    let dir = crate::plugins::workspace_root().join("target/reliability");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{}.json", rec.fault.replace(|c: char| !c.is_ascii_alphanumeric(), "_")));
    std::fs::write(file, serde_json::to_string_pretty(rec)?)?;
    Ok(())
}
