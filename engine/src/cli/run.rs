//! `ibex validate SYNC|all`, `ibex sync run SYNC`

use std::process::ExitCode;

use super::capture::Affected;
use super::{Context, SyncName, SyncNames, status};
use crate::catalog::{self, RunState};
use crate::error::Result;
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
    let record = kid.run(cat.client()).await?;
    let conflicts = catalog::runs::conflicts(cat.client(), record.id).await?;
    if ctx.out.json {
        ctx.out.print_json(&serde_json::json!({ "run": record, "conflicts": conflicts }));
    } else {
        status::print_run(&ctx.out, &record);
    }
    Ok(match record.state {
        RunState::Good => ExitCode::SUCCESS,
        _ => {
            ctx.out.error(&format!(
                "run of sync {} failed: {}",
                record.sync,
                record.error.as_deref().unwrap_or("unknown error")
            ));
            ExitCode::FAILURE
        }
    })
}
