//! `ibex add|list|update|remove sync`, `ibex activate|deactivate`

use tokio_postgres::Transaction;

use super::capture::Affected;
use super::{Context, NamedParams, Names, Params, SyncNames};
use crate::catalog::{self, DbGroup, Role, SyncParams, SyncRecord, check_name};
use crate::error::{Error, Result};

/// `dbs=` is a dbgroup name, or members inline (`a:source,b:target`).
fn inline_members(dbs: &str) -> Option<Vec<String>> {
    (dbs.contains(':') || dbs.contains(',')).then(|| dbs.split(',').map(|s| s.trim().to_string()).collect())
}

fn check_group(group: &DbGroup) -> Result<()> {
    if !group.members.iter().any(|m| m.role == Role::Source) {
        return Err(Error::usage(format!(
            "dbgroup {:?} has no source: give at least one db the role source (e.g. t1:source)",
            group.name
        )));
    }
    if group.members.len() < 2 {
        return Err(Error::usage(format!("dbgroup {:?} has one db: a sync needs at least two", group.name)));
    }
    Ok(())
}

async fn check_herd(tx: &Transaction<'_>, herd: &str) -> Result<()> {
    let herd = catalog::herd::get(tx, herd).await?;
    if herd.members.is_empty() {
        return Err(Error::usage(format!(
            "herd {:?} is empty: add tables with `ibex update herd {} add=TABLE`",
            herd.name, herd.name
        )));
    }
    Ok(())
}

/// Resolves `dbs=` to a dbgroup, creating one named after the sync for
/// inline members (as Bucardo does).
async fn resolve_dbs(tx: &Transaction<'_>, sync: &str, dbs: &str) -> Result<DbGroup> {
    match inline_members(dbs) {
        Some(specs) => {
            let members = catalog::dbgroup::parse_members(&specs)?;
            if catalog::dbgroup::exists(tx, sync).await? {
                let group = catalog::dbgroup::get(tx, sync).await?;
                if group.syncs.iter().any(|s| s != sync) {
                    return Err(Error::Refused(format!(
                        "dbgroup {sync:?} is also used by sync {}: name a dbgroup with dbs=GROUP instead",
                        group.syncs.join(", ")
                    )));
                }
                catalog::dbgroup::set_members(tx, sync, &members).await?;
            } else {
                catalog::dbgroup::add(tx, sync, &members).await?;
            }
            catalog::dbgroup::get(tx, sync).await
        }
        None => catalog::dbgroup::get(tx, dbs).await,
    }
}

/// `tables=T1,T2` makes a herd named after the sync.
async fn herd_from_tables(tx: &Transaction<'_>, sync: &str, tables: &str) -> Result<String> {
    if catalog::herd::exists(tx, sync).await? {
        return Err(Error::duplicate_hint(
            "herd",
            sync,
            "tables= makes a herd named after the sync; name the existing herd with herd= instead",
        ));
    }
    catalog::herd::add(tx, sync).await?;
    for typed in tables.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let rel = catalog::relation::find(tx, None, typed).await?;
        catalog::herd::add_member(tx, sync, rel.id, &rel.name.to_string()).await?;
    }
    Ok(sync.to_string())
}

fn take_sync_params(params: &mut Params, into: &mut SyncParams) -> Result<()> {
    for key in SyncParams::KEYS.iter().chain(["ping", "stayalive"].iter()) {
        if let Some(value) = params.take(key) {
            into.set(key, &value)?;
        }
    }
    Ok(())
}

fn known_keys(extra: &[&'static str]) -> Vec<&'static str> {
    let mut keys = extra.to_vec();
    keys.extend_from_slice(SyncParams::KEYS);
    keys
}

pub async fn add(ctx: &Context, args: NamedParams) -> Result<()> {
    check_name("sync", &args.name)?;
    let mut params = Params::parse_pairs_only(&args.params)?;
    let herd = params.take_any(&["herd", "relgroup"]);
    let tables = params.take("tables");
    let dbs = params.take_any(&["dbs", "dbgroup"]);
    let mut sync_params = SyncParams::default();
    take_sync_params(&mut params, &mut sync_params)?;
    params.finish(&known_keys(&["herd", "tables", "dbs"]))?;
    let dbs = dbs.ok_or_else(|| Error::usage("dbs is required: dbs=GROUP or dbs=t1:source,t2:target"))?;
    if herd.is_some() && tables.is_some() {
        return Err(Error::usage("give herd= or tables=, not both"));
    }
    if herd.is_none() && tables.is_none() {
        return Err(Error::usage("herd is required: herd=HERD (or tables=T1,T2)"));
    }
    let mut cat = ctx.catalog().await?;
    let name = args.name.clone();
    let group = cat
        .change(async |tx| {
            if catalog::sync::exists(tx, &name).await? {
                return Err(Error::duplicate_hint("sync", &name, "change it with `ibex update sync`"));
            }
            let herd = match (&herd, &tables) {
                (Some(h), _) => h.clone(),
                (None, Some(t)) => herd_from_tables(tx, &name, t).await?,
                (None, None) => unreachable!("checked above"),
            };
            check_herd(tx, &herd).await?;
            let group = resolve_dbs(tx, &name, &dbs).await?;
            check_group(&group)?;
            sync_params.conflict_strategy.check_against(&group)?;
            let record =
                SyncRecord { name: name.clone(), herd, dbgroup: group.name.clone(), params: sync_params.clone() };
            catalog::sync::add(tx, &record).await?;
            let mut affected = Affected::default();
            affected.add_sync(tx, &name).await?;
            let lines = affected.apply(tx, &ctx.out, true).await?;
            Ok((group, lines))
        })
        .await?;
    let (group, lines) = group;
    let specs: Vec<String> = group.members.iter().map(|m| m.spec()).collect();
    ctx.out.done(format!("Added sync {} ({})", args.name, specs.join(" ")));
    for line in lines {
        ctx.out.line(line);
    }
    Ok(())
}

pub async fn list(ctx: &Context) -> Result<()> {
    let cat = ctx.catalog().await?;
    let syncs = catalog::sync::list(cat.client()).await?;
    let groups = catalog::dbgroup::list(cat.client()).await?;
    let views: Vec<_> = syncs.iter().map(|s| s.view(groups.iter().find(|g| g.name == s.dbgroup))).collect();
    ctx.out.listing(
        &views,
        "No syncs: add one with `ibex add sync NAME herd=HERD dbs=GROUP`",
        &["Sync", "Status", "Herd", "Dbs", "Conflicts", "Autokick", "Checktime", "Onetimecopy"],
        |v| {
            vec![
                v.name.clone(),
                v.status.clone(),
                v.herd.clone(),
                v.dbs.join(" "),
                v.conflict_strategy.clone(),
                v.autokick.to_string(),
                v.checktime.clone(),
                v.onetimecopy.to_string(),
            ]
        },
    );
    Ok(())
}

pub async fn update(ctx: &Context, args: NamedParams) -> Result<()> {
    let mut params = Params::parse_pairs_only(&args.params)?;
    if args.params.is_empty() {
        return Err(Error::usage(format!("nothing to change: e.g. ibex update sync {} checktime=30s", args.name)));
    }
    let herd = params.take_any(&["herd", "relgroup"]);
    let dbs = params.take_any(&["dbs", "dbgroup"]);
    let mut cat = ctx.catalog().await?;
    let mut record = catalog::sync::get(cat.client(), &args.name).await?;
    take_sync_params(&mut params, &mut record.params)?;
    params.finish(&known_keys(&["herd", "dbs"]))?;
    let lines = cat
        .change(async |tx| {
            let mut affected = Affected::default();
            affected.add_sync(tx, &record.name).await?;
            if let Some(herd) = &herd {
                check_herd(tx, herd).await?;
                record.herd = herd.clone();
            }
            let group = match &dbs {
                Some(dbs) => resolve_dbs(tx, &record.name, dbs).await?,
                None => catalog::dbgroup::get(tx, &record.dbgroup).await?,
            };
            check_group(&group)?;
            record.params.conflict_strategy.check_against(&group)?;
            record.dbgroup = group.name;
            catalog::sync::update(tx, &record).await?;
            affected.add_sync(tx, &record.name).await?;
            affected.apply(tx, &ctx.out, true).await
        })
        .await?;
    ctx.out.done(format!("Updated sync {}", args.name));
    for line in lines {
        ctx.out.line(line);
    }
    Ok(())
}

pub async fn remove(ctx: &Context, args: Names) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    let lines = cat
        .change(async |tx| {
            let mut affected = Affected::default();
            for name in &args.names {
                affected.add_sync(tx, name).await?;
                catalog::sync::remove(tx, name).await?;
            }
            affected.apply(tx, &ctx.out, false).await
        })
        .await?;
    for name in &args.names {
        ctx.out.done(format!("Removed sync {name}"));
    }
    for line in lines {
        ctx.out.line(line);
    }
    Ok(())
}

pub async fn set_status(ctx: &Context, args: SyncNames, status: &str) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| {
        for name in &args.syncs {
            let mut record = catalog::sync::get(tx, name).await?;
            record.params.status = status.to_string();
            catalog::sync::update(tx, &record).await?;
        }
        Ok(())
    })
    .await?;
    let verb = if status == "active" { "Activated" } else { "Deactivated" };
    for name in &args.syncs {
        ctx.out.done(format!("{verb} sync {name}"));
    }
    Ok(())
}
