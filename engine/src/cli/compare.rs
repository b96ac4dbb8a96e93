//! `ibex compare SYNC`, `ibex reconcile SYNC`

use std::process::ExitCode;

use super::{CompareArgs, Context, ReconcileArgs, status};
use crate::catalog::{self, RelKind};
use crate::error::{PgContext, Result};
use crate::sync::compare::{TableDiff, marks_for};
use crate::sync::{Kid, Plan};

fn print(ctx: &Context, diffs: &[TableDiff], with_keys: bool) {
    for d in diffs {
        let counts: Vec<String> = d.counts.iter().map(|c| format!("{} {}", c.db, c.rows)).collect();
        if d.identical {
            ctx.out.line(format!("{}: identical ({} rows each on {} dbs)", d.table, d.counts[0].rows, d.counts.len()));
            continue;
        }
        ctx.out.line(format!(
            "{}: DIFFERS (rows: {}; {} of 256 key buckets differ)",
            d.table,
            counts.join(", "),
            d.differing_buckets
        ));
        if with_keys {
            for k in &d.keys {
                let versions: Vec<String> = k.versions.iter().map(|v| v.join("+")).collect();
                let missing = if k.missing_on.is_empty() {
                    String::new()
                } else {
                    format!("; missing on {}", k.missing_on.join(", "))
                };
                ctx.out.line(format!("  key {}: versions {}{missing}", k.key, versions.join(" / ")));
            }
        }
    }
}

async fn diffs(ctx: &Context, sync: &str, table: Option<&str>, with_keys: bool) -> Result<(Kid, Vec<TableDiff>)> {
    let cat = ctx.catalog().await?;
    let plan = Plan::load(cat.client(), sync).await?;
    let only = match table {
        Some(typed) => Some(catalog::relation::find(cat.client(), Some(RelKind::Table), typed).await?.name),
        None => None,
    };
    let mut kid = Kid::new(plan);
    let diffs = kid.compare(only.as_ref(), with_keys).await?;
    Ok((kid, diffs))
}

pub async fn compare(ctx: &Context, args: CompareArgs) -> Result<ExitCode> {
    let (_, diffs) = diffs(ctx, &args.sync, args.table.as_deref(), args.rows).await?;
    if ctx.out.json {
        ctx.out.print_json(&diffs);
    } else {
        print(ctx, &diffs, args.rows);
    }
    Ok(if diffs.iter().all(|d| d.identical) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn reconcile(ctx: &Context, args: ReconcileArgs) -> Result<ExitCode> {
    let (mut kid, found) = diffs(ctx, &args.sync, args.table.as_deref(), true).await?;
    if found.iter().all(|d| d.identical) {
        ctx.out.done(format!("Sync {}: every table is identical; nothing to reconcile", args.sync));
        return Ok(ExitCode::SUCCESS);
    }
    for d in found.iter().filter(|d| !d.identical) {
        for k in &d.keys {
            let on: Vec<&str> = marks_for(kid.plan(), k).into_iter().map(|i| kid.plan().db(i).name.as_str()).collect();
            let versions: Vec<String> = k.versions.iter().map(|v| v.join("+")).collect();
            ctx.out.line(format!(
                "{} key {}: versions {}{}; {} on {}",
                d.table,
                k.key,
                versions.join(" / "),
                if k.missing_on.is_empty() {
                    String::new()
                } else {
                    format!(", missing on {}", k.missing_on.join(", "))
                },
                if args.dry_run { "would mark changed" } else { "marking changed" },
                on.join(", ")
            ));
        }
    }
    if args.dry_run {
        return Ok(ExitCode::FAILURE);
    }
    let cat = ctx.catalog().await?;
    let at: String = cat.client().query_one("SELECT now()::text", &[]).await.ctx(|| "reading the time".into())?.get(0);
    kid.mark_differences(&found, &at).await?;
    let record = kid.run(cat.client()).await?;
    status::print_run(&ctx.out, &record);
    let (_, after) = diffs(ctx, &args.sync, args.table.as_deref(), false).await?;
    print(ctx, &after, false);
    Ok(if after.iter().all(|d| d.identical) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
