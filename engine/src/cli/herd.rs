//! `ibex add|list|update|remove herd`

use super::capture::Affected;
use super::{Context, HerdArgs, NamedParams, Names, Params};
use crate::catalog::{self, check_name};
use crate::error::{Error, Result};

fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

pub async fn add(ctx: &Context, args: HerdArgs) -> Result<()> {
    check_name("herd", &args.name)?;
    if let Some(pair) = args.members.iter().find(|m| m.contains('=')) {
        return Err(Error::usage(format!(
            "unexpected {pair:?}: `ibex add herd` takes a name and the tables to put in it"
        )));
    }
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| {
        catalog::herd::add(tx, &args.name).await?;
        for typed in &args.members {
            let rel = catalog::relation::find(tx, None, typed).await?;
            catalog::herd::add_member(tx, &args.name, rel.id, &rel.name.to_string()).await?;
        }
        Ok(())
    })
    .await?;
    ctx.out.done(format!(
        "Added herd {} with {} member{}",
        args.name,
        args.members.len(),
        if args.members.len() == 1 { "" } else { "s" }
    ));
    Ok(())
}

pub async fn list(ctx: &Context) -> Result<()> {
    let cat = ctx.catalog().await?;
    let herds = catalog::herd::list(cat.client()).await?;
    ctx.out.listing(
        &herds,
        "No herds: add one with `ibex add herd NAME TABLE...`",
        &["Herd", "Members", "Syncs"],
        |h| vec![h.name.clone(), h.members.join(", "), h.syncs.join(", ")],
    );
    Ok(())
}

pub async fn update(ctx: &Context, args: NamedParams) -> Result<()> {
    let mut params = Params::parse_pairs_only(&args.params)?;
    let add = params.take("add").map(|v| split_list(&v)).unwrap_or_default();
    let remove = params.take("remove").map(|v| split_list(&v)).unwrap_or_default();
    params.finish(&["add", "remove"])?;
    if add.is_empty() && remove.is_empty() {
        return Err(Error::usage(format!("nothing to change: e.g. ibex update herd {} add=public.orders", args.name)));
    }
    let mut cat = ctx.catalog().await?;
    let lines = cat
        .change(async |tx| {
            catalog::herd::get(tx, &args.name).await?;
            for typed in &add {
                let rel = catalog::relation::find(tx, None, typed).await?;
                catalog::herd::add_member(tx, &args.name, rel.id, &rel.name.to_string()).await?;
            }
            for typed in &remove {
                let rel = catalog::relation::find(tx, None, typed).await?;
                catalog::herd::remove_member(tx, &args.name, rel.id, &rel.name.to_string()).await?;
            }
            let mut affected = Affected::default();
            affected.add_herd(tx, &args.name).await?;
            affected.apply(tx, &ctx.out, true).await
        })
        .await?;
    ctx.out.done(format!("Updated herd {}", args.name));
    for line in lines {
        ctx.out.line(line);
    }
    Ok(())
}

pub async fn remove(ctx: &Context, args: Names) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| {
        for name in &args.names {
            catalog::herd::remove(tx, name).await?;
        }
        Ok(())
    })
    .await?;
    for name in &args.names {
        ctx.out.done(format!("Removed herd {name}"));
    }
    Ok(())
}
