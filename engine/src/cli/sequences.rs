//! `ibex sequences stagger SYNC [increment=N]`

use super::{Context, NamedParams, Params};
use crate::error::{Error, Result};
use crate::pg;
use crate::sync::{Plan, stagger};

pub async fn stagger(ctx: &Context, args: NamedParams) -> Result<()> {
    let mut params = Params::parse_pairs_only(&args.params)?;
    let increment = params
        .take("increment")
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::usage(format!("bad increment {v:?}: use a whole number above zero")))
        })
        .transpose()?;
    params.finish(&["increment"])?;
    let cat = ctx.catalog().await?;
    let plan = Plan::load(cat.client(), &args.name).await?;
    let mut clients = Vec::with_capacity(plan.dbs.len());
    for db in &plan.dbs {
        clients.push(pg::connect(&db.conn, "ibex stagger").await?);
    }
    for line in stagger::stagger(&plan, &mut clients, increment).await? {
        ctx.out.line(line);
    }
    ctx.out.done(format!("Staggered the sequences of sync {}", args.name));
    Ok(())
}
