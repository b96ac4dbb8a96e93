//! Writes docs/RELIABILITY.md from the records the fault tests left in
//! target/reliability/ (scripts/reliability.sh runs the fault suite, then this).

use std::fmt::Write;

use anyhow::{Context, Result};
use ibex_tests::load::FaultRecord;
use ibex_tests::plugins::workspace_root;

fn main() -> Result<()> {
    let root = workspace_root();
    let dir = root.join("target/reliability");
    let mut records: Vec<FaultRecord> = Vec::new();
    for entry in std::fs::read_dir(&dir)
        .with_context(|| format!("no fault records in {}: run the tests first", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            records.push(
                serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| path.display().to_string())?,
            );
        }
    }
    records.sort_by(|a, b| a.fault.cmp(&b.fault));
    let date = String::from_utf8_lossy(
        &std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output()?.stdout,
    )
    .trim()
    .to_string();
    let mut doc = String::new();
    let _ = writeln!(
        doc,
        "# Reliability\n\nWhat the fault-injection suite (`tests/tests/faults.rs`; regenerate this page with `bash scripts/reliability.sh`) did in its last run ({date}), \
         and what ibex guarantees. Every fault ran under a write load on two masters; afterwards `ibex compare` had to report every db identical, \
         and every write the load saw committed had to be on every db, with its counter matching (a change applied twice or lost would show).\n"
    );
    let _ =
        writeln!(doc, "| fault | times injected | rows written | rows lost | counters off |\n|---|---|---|---|---|");
    for r in &records {
        let _ =
            writeln!(doc, "| {} | {} | {} | {} | {} |", r.fault, r.injected, r.rows_written, r.rows_lost, r.doubled);
    }
    doc.push_str(
        r#"
## What is guaranteed

- **No committed change is lost.** A change committed on a source is in that
  source's delta table (written in the same transaction) until every sync
  reading it has applied it everywhere; cursors move only after every db of
  the run committed, with `synchronous_commit = on` for ibex's own commits.
  A crash at any point re-applies the same window next time, which is
  harmless: delete + copy of the current row is idempotent.
- **Nothing echoes.** ibex writes with `session_replication_role = replica`,
  so its own writes are never captured again, except on makedelta tables,
  where they are captured with the writing sync's name and that sync skips them.
- **Conflicts are decided, recorded and convergent.** A key changed on two
  sources in one window is settled by the sync's strategy; every decision is
  in `ibex.conflict`. Write conflicts with the application (serialization
  failures on hot rows) are retried with the tables locked, so they converge.
- **A bad database, plugin or network path fails only its own sync**, which
  shows Bad with the error and retries (1 s doubling to a minute) until the
  path heals; other syncs and the daemon go on.

## What is not guaranteed

- **Commits on several databases are not atomic together.** Between the
  commits of one run the dbs can briefly differ; the next run repairs it.
- **`latest` trusts the servers' clocks.** A server whose clock runs ahead
  wins conflicts against later changes (the clock-skew row above). Keep
  clocks in NTP sync, or use an ordered strategy or a conflict handler.
- **Writes on a target are not replicated** and may be overwritten by the
  next change of the same key from a source.
- **DDL is not replicated.** Change the table on every db, then
  `ibex validate SYNC`; until then the sync fails with the difference named.

## A database gone for a day

Its syncs go Bad and keep retrying (at most once a minute); the other
syncs are unaffected. On every source, the delta rows those syncs still
need are kept (the VAC never purges what a sync has not applied), so the
backlog grows with the write rate: watch `ibex_delta_backlog` and
`ibex_replication_lag_seconds` on the metrics endpoint. When the db
returns, the next run applies the whole window in one transaction per db,
with memory bounded by chunks, not by the backlog. If the db will not
return, take it out of the dbgroup (`ibex update dbgroup`): its capture and
cursors are dropped and the backlog with them. To bring a replaced db back
in, add it with `onetimecopy=2` (empty tables are copied whole) and run
`ibex compare` / `ibex reconcile` afterwards.
"#,
    );
    let out = root.join("docs/RELIABILITY.md");
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(&out, doc)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
