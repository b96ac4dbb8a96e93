//! `ibex validate SYNC|all`, `ibex sync run SYNC`

use std::process::ExitCode;

use super::capture::Affected;
use super::{Context, SyncName, SyncNames, status};
use crate::catalog::{self, RunState};
use crate::error::Result;
use crate::sync::progress::{self, Progress};
use crate::sync::{Kid, Plan};

pub async fn validate(ctx: &Context, args: SyncNames) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    let lines = cat
        .change(async |tx| {
            let mut affected = Affected::default();
            let names: Vec<String> = if args.syncs.iter().any(|s| s == "all") {
                catalog::sync::list(tx).await?.into_iter().map(|s| s.name).collect()
            } else {
                args.syncs.clone()
            };
            for name in &names {
                affected.add_sync(tx, name).await?;
            }
            affected.apply(tx, &ctx.out, true).await
        })
        .await?;
    for line in lines {
        ctx.out.done(line);
    }
    Ok(())
}

pub async fn run_once(ctx: &Context, args: SyncName) -> Result<ExitCode> {
    let cat = ctx.catalog().await?;
    let plan = Plan::load(cat.client(), &args.sync).await?;
    let mut kid = Kid::new(plan);
    // A backlog larger than one run's window is applied in consecutive
    // runs, each committed: go on until it is all applied (or one fails).
    let mut runs = 0;
    let mut conflicts = Vec::new();
    let started = std::time::Instant::now();
    // Over the delta rows of the whole backlog, once the first run shows one.
    let mut progress: Option<Progress> = None;
    let record = loop {
        let record = kid.run(cat.client()).await?;
        runs += 1;
        conflicts.extend(catalog::runs::conflicts(cat.client(), record.id).await?);
        if !ctx.out.json {
            progress::suspend(|| status::print_run(&ctx.out, &record));
        }
        let applied = record.window_rows.unwrap_or(0).max(0) as u64;
        let backlog = record.backlog.unwrap_or(0).max(0) as u64;
        if record.state != RunState::Good || backlog == 0 {
            // A failed run drops the bar (the error says why).
            if let Some(p) = progress.take()
                && record.state == RunState::Good
            {
                // The last part is the rest of the window, however large.
                let total = p.total().unwrap_or(0).max(p.done() + applied);
                p.finish_at(total);
            }
            break record;
        }
        let p = progress.get_or_insert_with(|| {
            Progress::new(format!("sync {}: catching up", record.sync), "delta rows", None).since(started)
        });
        // The backlog is re-measured each run (new changes keep arriving).
        p.set_total(Some(p.done() + applied + backlog), false);
        p.advance(applied);
        tracing::info!(sync = %record.sync, backlog = record.backlog, "catching up: running the next part");
    };
    if ctx.out.json {
        ctx.out.print_json(&serde_json::json!({
            "run": record,
            "conflicts": conflicts,
            "runs": runs,
            "peak_rss_kib": peak_rss_kib(),
        }));
    }
    Ok(match record.state {
        RunState::Good => ExitCode::SUCCESS,
        _ => {
            ctx.out.error(&format!(
                "run of sync {} failed: {}",
                record.sync,
                record.error.as_deref().unwrap_or("unknown error")
            ));
            // The same exit code as the error would have had on its own.
            ExitCode::from(record.error_kind.map_or(1, |k| k.exit_code()))
        }
    })
}

/// This process's peak resident memory (VmHWM), to show that a long
/// catch-up stays flat; None where /proc is not there.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
