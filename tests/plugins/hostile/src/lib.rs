//! Misbehaves as `config.mode` says: loop, alloc, alloc4g, trap, stack,
//! bad_winner, short_answer, file, socket, env, log_flood, or one of the
//! database attacks (query:SQL and execute:SQL run SQL on the sync's first
//! db and report what came back; big_query asks for 100 M rows), or
//! recover:SQL (a query that must fail, then one on `acct` that must not,
//! then latest wins), or always (the second db wins the table for the rest
//! of the run), or nothing (latest wins).

use ibex_plugin_sdk::conflict::{Conflict, ConflictHandler, Decision, Verdict, WinnerChoice};
use ibex_plugin_sdk::host::{execute, log, query};
use ibex_plugin_sdk::{LogLevel, SyncInfo, TableInfo};

struct Hostile;

#[allow(unconditional_recursion)]
fn recurse(depth: u64, acc: &mut Vec<u64>) -> u64 {
    acc.push(depth);
    recurse(depth + 1, acc) + acc[0]
}

impl ConflictHandler for Hostile {
    fn resolve(sync: &SyncInfo, _table: &TableInfo, conflicts: Vec<Conflict>) -> Result<Verdict, String> {
        let db = sync.dbs.first().map(|d| d.name.clone()).unwrap_or_default();
        let mode = sync.config("mode").unwrap_or("");
        if let Some(sql) = mode.strip_prefix("query:") {
            return Err(match query(&db, sql, &[]) {
                Ok(rows) => format!("ATTACK SUCCEEDED: query returned {rows:?}"),
                Err(e) => format!("attack refused: {e}"),
            });
        }
        if let Some(bad) = mode.strip_prefix("recover:") {
            if query(&db, bad, &[]).is_ok() {
                return Err(format!("the query {bad:?} did not fail"));
            }
            if let Err(e) = query(&db, "SELECT count(*) FROM acct", &[]) {
                return Err(format!("the query after a failed one failed: {e}"));
            }
        }
        if let Some(sql) = mode.strip_prefix("execute:") {
            return Err(match execute(&db, sql, &[]) {
                Ok(n) => format!("ATTACK SUCCEEDED: execute changed {n} rows"),
                Err(e) => format!("attack refused: {e}"),
            });
        }
        match mode {
            "big_query" => {
                // Ignores the error it is handed: the host still fails the call.
                let _ = query(&db, "SELECT generate_series(1, 100000000) AS g", &[]);
            }
            "log_flood" => {
                let line = "x".repeat(64 * 1024);
                for _ in 0..160 {
                    log(LogLevel::Info, &line);
                }
            }
            "alloc4g" => {
                // Just under 2 GiB: the most one 32-bit Rust allocation may be (4 GiB in 16 steps is "alloc").
                let huge: Vec<u8> = vec![7u8; std::hint::black_box(0x7FFF_0000usize)];
                return Err(format!("allocated {} bytes", huge.len()));
            }
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            "trap" => panic!("hostile plugin gives up"),
            "stack" => {
                let mut acc = Vec::new();
                return Err(recurse(0, &mut acc).to_string());
            }
            "always" => return Ok(Verdict::TableWinner(WinnerChoice { db: 1, always: true })),
            "bad_winner" => return Ok(Verdict::PerKey(conflicts.iter().map(|_| Decision::Winner(99)).collect())),
            "short_answer" => return Ok(Verdict::PerKey(Vec::new())),
            "file" => {
                return Err(match std::fs::read_to_string("/etc/passwd") {
                    Ok(text) => format!("read /etc/passwd: {} bytes", text.len()),
                    Err(e) => format!("cannot open /etc/passwd: {e}"),
                });
            }
            "socket" => {
                return Err(match std::net::TcpStream::connect("127.0.0.1:5432") {
                    Ok(_) => "connected to 127.0.0.1:5432".into(),
                    Err(e) => format!("cannot connect: {e}"),
                });
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                return Err(format!("environment: {vars:?}"));
            }
            _ => {}
        }
        Ok(Verdict::PerKey(conflicts.iter().map(|c| Decision::Winner(c.latest().db)).collect()))
    }
}

ibex_plugin_sdk::export_conflict_handler!(Hostile);
