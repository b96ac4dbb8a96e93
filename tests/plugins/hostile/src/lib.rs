//! Misbehaves as `config.mode` says: loop, alloc, trap, stack, bad_winner,
//! short_answer, file, socket, env, or nothing (latest wins).

use ibex_plugin_sdk::conflict::{Conflict, ConflictHandler, Decision, Verdict};
use ibex_plugin_sdk::{SyncInfo, TableInfo};

struct Hostile;

#[allow(unconditional_recursion)]
fn recurse(depth: u64, acc: &mut Vec<u64>) -> u64 {
    acc.push(depth);
    recurse(depth + 1, acc) + acc[0]
}

impl ConflictHandler for Hostile {
    fn resolve(sync: &SyncInfo, _table: &TableInfo, conflicts: Vec<Conflict>) -> Result<Verdict, String> {
        match sync.config("mode").unwrap_or("") {
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
