//! `ibex add|list|remove table|sequence` and `ibex add all tables|sequences`

use super::capture::Affected;
use super::{AllArgs, Context, Names, NamesParams, Params};
use crate::catalog::{self, RelKind, check_name};
use crate::error::{Error, Result};
use crate::pg::introspect::{self, LiveKind, LiveRelation};
use crate::pg::{self, QualifiedName};

/// A relation found on a live db, ready to be registered.
struct Found {
    name: QualifiedName,
    kind: RelKind,
    key: Option<(Vec<String>, &'static str)>,
}

fn kind_error(typed: &str, db: &str, found: &LiveRelation, wanted: RelKind) -> Error {
    let is = match found.kind {
        LiveKind::Table | LiveKind::PartitionedTable => "a table",
        LiveKind::Sequence => "a sequence",
        LiveKind::Other(what) => {
            return Error::Schema(format!(
                "{typed} on db {db} is a {what}, not a {}: ibex replicates tables and sequences",
                wanted.as_str()
            ));
        }
    };
    Error::Schema(format!(
        "{typed} on db {db} is {is}, not a {}: ibex replicates tables and sequences",
        wanted.as_str()
    ))
}

async fn connect_db(ctx_cat: &catalog::Catalog, db: &str) -> Result<(catalog::DbRecord, pg::Client)> {
    let record = catalog::dbs::get(ctx_cat.client(), db).await?;
    let client = pg::connect(&record.conn, "ibex").await?;
    Ok((record, client))
}

pub async fn add(ctx: &Context, kind: RelKind, args: NamesParams) -> Result<()> {
    let mut params = Params::parse(&args.args)?;
    let example = format!("ibex add {} NAME db=t1 herd=therd", kind.as_str());
    if params.names.is_empty() {
        return Err(Error::usage(format!("name the {}s to add: e.g. {example}", kind.as_str())));
    }
    let db = params.require("db", "db=t1")?;
    let herd = params.take_any(&["herd", "relgroup"]);
    let pkey = if kind == RelKind::Table { params.take("pkey") } else { None };
    let known: &[&str] = if kind == RelKind::Table { &["db", "herd", "pkey"] } else { &["db", "herd"] };
    params.finish(known)?;
    if let Some(herd) = &herd {
        check_name("herd", herd)?;
    }
    let pkey: Option<Vec<String>> = pkey.map(|p| p.split(',').map(|c| c.trim().to_string()).collect());
    if pkey.as_ref().is_some_and(|cols| cols.iter().any(String::is_empty)) {
        return Err(Error::usage("bad pkey: write pkey=col or pkey=col1,col2"));
    }
    if pkey.is_some() && params.names.len() > 1 {
        return Err(Error::usage("pkey= names the key of one table: add tables with their own pkey one at a time"));
    }

    let mut cat = ctx.catalog().await?;
    let (record, client) = connect_db(&cat, &db).await?;
    let mut found = Vec::new();
    for typed in &params.names {
        let live = introspect::resolve(&client, typed).await?.ok_or_else(|| {
            Error::not_found_hint(
                kind.as_str(),
                typed,
                format!("it is not on db {db} (database {}); check the name and schema", record.conn.dbname),
            )
        })?;
        let key = match (kind, live.kind) {
            (RelKind::Table, LiveKind::Table | LiveKind::PartitionedTable) => {
                Some(introspect::table_key(&client, &live, &db, pkey.as_deref()).await?)
            }
            (RelKind::Sequence, LiveKind::Sequence) => None,
            _ => return Err(kind_error(typed, &db, &live, kind)),
        };
        if found.iter().any(|f: &Found| f.name == live.name) {
            return Err(Error::usage(format!("{} is listed twice", live.name)));
        }
        found.push(Found { name: live.name, kind, key });
    }
    register(&mut cat, &db, herd.as_deref(), &found).await?;
    for f in &found {
        ctx.out.done(added_message(f, herd.as_deref()));
    }
    Ok(())
}

fn added_message(f: &Found, herd: Option<&str>) -> String {
    let key = f
        .key
        .as_ref()
        .map(|(cols, source)| format!(" (key: {} from its {source})", cols.join(", ")))
        .unwrap_or_default();
    let herd = herd.map(|h| format!(" to herd {h}")).unwrap_or_default();
    format!("Added {} {}{key}{herd}", f.kind.as_str(), f.name)
}

async fn register(cat: &mut catalog::Catalog, db: &str, herd: Option<&str>, found: &[Found]) -> Result<()> {
    cat.change(async |tx| {
        if let Some(herd) = herd {
            catalog::herd::ensure(tx, herd).await?;
        }
        for f in found {
            let id = catalog::relation::add(
                tx,
                f.kind,
                &f.name,
                f.key.as_ref().map(|(cols, _)| cols.as_slice()),
                f.key.as_ref().map(|(_, source)| *source),
                db,
            )
            .await?;
            if let Some(herd) = herd {
                catalog::herd::add_member(tx, herd, id, &f.name.to_string()).await?;
            }
        }
        Ok(())
    })
    .await
}

pub async fn add_all(ctx: &Context, args: AllArgs) -> Result<()> {
    let kind = if args.what == "sequences" { RelKind::Sequence } else { RelKind::Table };
    let mut params = Params::parse_pairs_only(&args.params)?;
    let db = params.require("db", "db=t1")?;
    let herd = params.take_any(&["herd", "relgroup"]);
    let schema = params.take("schema");
    params.finish(&["db", "herd", "schema"])?;
    if let Some(herd) = &herd {
        check_name("herd", herd)?;
    }
    let mut cat = ctx.catalog().await?;
    let (_, client) = connect_db(&cat, &db).await?;
    let live = match kind {
        RelKind::Table => introspect::list_tables(&client, schema.as_deref()).await?,
        RelKind::Sequence => introspect::list_sequences(&client, schema.as_deref()).await?,
    };
    let mut found = Vec::new();
    for rel in live {
        if catalog::relation::find_exact(cat.client(), &rel.name).await?.is_some() {
            ctx.out.warn(format!("skipped {}: already registered", rel.name));
            continue;
        }
        let key = match kind {
            RelKind::Table => match introspect::table_key(&client, &rel, &db, None).await {
                Ok(key) => Some(key),
                Err(Error::Schema(reason)) => {
                    ctx.out.warn(format!("skipped {reason}"));
                    continue;
                }
                Err(other) => return Err(other),
            },
            RelKind::Sequence => None,
        };
        found.push(Found { name: rel.name, kind, key });
    }
    if found.is_empty() {
        ctx.out.done(format!("No new {}s on db {db}", kind.as_str()));
        return Ok(());
    }
    register(&mut cat, &db, herd.as_deref(), &found).await?;
    for f in &found {
        ctx.out.done(added_message(f, herd.as_deref()));
    }
    Ok(())
}

pub async fn list(ctx: &Context, kind: RelKind) -> Result<()> {
    let cat = ctx.catalog().await?;
    let relations = catalog::relation::list(cat.client(), Some(kind)).await?;
    let kind_name = kind.as_str();
    let empty = format!(
        "No {kind_name}s: add them with `ibex add {kind_name} NAME db=DB` or `ibex add all {kind_name}s db=DB`"
    );
    let headers: &[&str] = match kind {
        RelKind::Table => &["Table", "Key", "Herds", "Added from"],
        RelKind::Sequence => &["Sequence", "Herds", "Added from"],
    };
    ctx.out.listing(&relations, &empty, headers, |r| {
        let mut row = vec![r.name.to_string()];
        if kind == RelKind::Table {
            row.push(r.key_columns.join(", "));
        }
        row.push(r.herds.join(", "));
        row.push(r.added_from.clone().unwrap_or_default());
        row
    });
    Ok(())
}

pub async fn remove(ctx: &Context, kind: RelKind, args: Names) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    let mut removed = Vec::new();
    let lines = cat
        .change(async |tx| {
            let mut affected = Affected::default();
            affected.add_all_sync_dbs(tx).await?;
            for typed in &args.names {
                let rel = catalog::relation::find(tx, Some(kind), typed).await?;
                catalog::relation::remove(tx, rel.id).await?;
                removed.push(rel.name.to_string());
            }
            affected.apply(tx, &ctx.out, false).await
        })
        .await?;
    for name in removed {
        ctx.out.done(format!("Removed {} {name}", kind.as_str()));
    }
    for line in lines {
        ctx.out.line(line);
    }
    Ok(())
}

pub async fn update(ctx: &Context, args: super::NamedParams) -> Result<()> {
    let mut params = Params::parse_pairs_only(&args.params)?;
    let capture_old = params.take("capture_old");
    let makedelta = params.take("makedelta");
    let pkey = params.take("pkey");
    params.finish(&["capture_old", "makedelta", "pkey"])?;
    if capture_old.is_none() && makedelta.is_none() && pkey.is_none() {
        return Err(Error::usage(format!(
            "nothing to change: e.g. ibex update table {} capture_old=true (or makedelta=true, pkey=col[,col])",
            args.name
        )));
    }
    let capture_old = capture_old.map(|v| catalog::sync::parse_bool("capture_old", &v)).transpose()?;
    let makedelta = makedelta.map(|v| catalog::sync::parse_bool("makedelta", &v)).transpose()?;
    let pkey: Option<Vec<String>> = pkey.map(|p| p.split(',').map(|c| c.trim().to_string()).collect());
    if pkey.as_ref().is_some_and(|cols| cols.iter().any(String::is_empty)) {
        return Err(Error::usage("bad pkey: write pkey=col or pkey=col1,col2"));
    }
    let mut cat = ctx.catalog().await?;
    // A new key is checked on the db the table was added from.
    let rel = catalog::relation::find(cat.client(), Some(RelKind::Table), &args.name).await?;
    let new_key = match &pkey {
        Some(cols) => {
            let db = rel.added_from.clone().ok_or_else(|| {
                Error::Refused(format!(
                    "table {} no longer has the db it was added from: remove it and add it again with pkey=",
                    rel.name
                ))
            })?;
            let (_, client) = connect_db(&cat, &db).await?;
            let live = introspect::resolve(&client, &rel.name.quoted())
                .await?
                .ok_or_else(|| Error::not_found_hint("table", rel.name.to_string(), format!("it is not on db {db}")))?;
            Some(introspect::table_key(&client, &live, &db, Some(cols)).await?)
        }
        None => None,
    };
    let mut changed = Vec::new();
    if let Some(on) = capture_old {
        changed.push(format!("capture_old={on}"));
    }
    if let Some(on) = makedelta {
        changed.push(format!("makedelta={on}"));
    }
    if let Some(cols) = &pkey {
        changed.push(format!("pkey={}", cols.join(",")));
    }
    let (name, lines) = cat
        .change(async |tx| {
            if let Some(on) = capture_old {
                catalog::relation::set_capture_old(tx, rel.id, on).await?;
            }
            if let Some(on) = makedelta {
                catalog::relation::set_makedelta(tx, rel.id, on).await?;
            }
            if let Some((cols, source)) = &new_key {
                catalog::relation::set_key(tx, rel.id, cols, source).await?;
            }
            let mut affected = Affected::default();
            for sync in catalog::relation::syncs_using(tx, rel.id).await? {
                affected.add_sync(tx, &sync).await?;
            }
            Ok((rel.name.to_string(), affected.apply(tx, &ctx.out, true).await?))
        })
        .await?;
    ctx.out.done(format!("Updated table {name}: {}", changed.join(", ")));
    for line in lines {
        ctx.out.line(line);
    }
    Ok(())
}
