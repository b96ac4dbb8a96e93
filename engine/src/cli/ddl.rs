//! `ibex ddl SYNC 'SQL'`: see `sync/ddl.rs`.

use super::{Context, DdlArgs};
use crate::catalog::sync::parse_duration;
use crate::error::{Error, Result};
use crate::sync::{Plan, ddl};

pub async fn run(ctx: &Context, args: DdlArgs) -> Result<()> {
    let timeout = parse_duration("--lock-timeout", &args.lock_timeout)?
        .ok_or_else(|| Error::usage("--lock-timeout must be longer than zero"))?;
    let cat = ctx.catalog().await?;
    let plan = Plan::load(cat.client(), &args.sync).await?;
    for foreign in &plan.foreign {
        ctx.out.line(format!(
            "warning: db {} is not PostgreSQL: change its table yourself, before rows with the new shape reach it",
            foreign.name
        ));
    }
    let report = ddl::run(cat.client(), &plan, &args.statement, timeout.as_millis() as u64).await?;
    if ctx.out.json {
        ctx.out.print_json(&report);
        return Ok(());
    }
    ctx.out.done(format!(
        "Changed the schema of sync {} on db(s) {}, in that order",
        args.sync,
        report.order.join(", ")
    ));
    for line in report.capture {
        ctx.out.line(line);
    }
    Ok(())
}
