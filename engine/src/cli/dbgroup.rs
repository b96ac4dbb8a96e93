//! `ibex add|list|update|remove dbgroup`

use super::capture::Affected;
use super::{Context, DbGroupArgs, Names};
use crate::catalog::{self, Role, check_name};
use crate::error::{Error, Result};

pub async fn add(ctx: &Context, args: DbGroupArgs) -> Result<()> {
    check_name("dbgroup", &args.name)?;
    let members = catalog::dbgroup::parse_members(&args.members)?;
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| catalog::dbgroup::add(tx, &args.name, &members).await).await?;
    let specs: Vec<String> = members.iter().map(|m| m.spec()).collect();
    ctx.out.done(format!("Added dbgroup {}: {}", args.name, specs.join(" ")));
    Ok(())
}

pub async fn list(ctx: &Context) -> Result<()> {
    let cat = ctx.catalog().await?;
    let groups = catalog::dbgroup::list(cat.client()).await?;
    ctx.out.listing(
        &groups,
        "No dbgroups: add one with `ibex add dbgroup NAME DB:source DB:target`",
        &["Dbgroup", "Members", "Syncs"],
        |g| {
            let specs: Vec<String> = g.members.iter().map(|m| m.spec()).collect();
            vec![g.name.clone(), specs.join(" "), g.syncs.join(", ")]
        },
    );
    Ok(())
}

pub async fn update(ctx: &Context, args: DbGroupArgs) -> Result<()> {
    let members = catalog::dbgroup::parse_members(&args.members)?;
    let mut cat = ctx.catalog().await?;
    let lines = cat.change(async |tx| {
        let mut affected = Affected::default();
        affected.add_dbgroup(tx, &args.name).await?;
        let group = catalog::dbgroup::get(tx, &args.name).await?;
        if !group.syncs.is_empty() {
            if !members.iter().any(|m| m.role == Role::Source) {
                return Err(Error::Refused(format!(
                    "dbgroup {:?} is used by sync {} and would have no source: give at least one db the role source",
                    args.name,
                    group.syncs.join(", ")
                )));
            }
            if members.len() < 2 {
                return Err(Error::Refused(format!(
                    "dbgroup {:?} is used by sync {} and needs at least two dbs",
                    args.name,
                    group.syncs.join(", ")
                )));
            }
        }
        catalog::dbgroup::set_members(tx, &args.name, &members).await?;
        affected.add_dbgroup(tx, &args.name).await?;
        affected.apply(tx, &ctx.out, true).await
    })
    .await?;
    let specs: Vec<String> = members.iter().map(|m| m.spec()).collect();
    ctx.out.done(format!("Updated dbgroup {}: {}", args.name, specs.join(" ")));
    for line in lines {
        ctx.out.line(line);
    }
    Ok(())
}

pub async fn remove(ctx: &Context, args: Names) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| {
        for name in &args.names {
            catalog::dbgroup::remove(tx, name).await?;
        }
        Ok(())
    })
    .await?;
    for name in &args.names {
        ctx.out.done(format!("Removed dbgroup {name}"));
    }
    Ok(())
}
