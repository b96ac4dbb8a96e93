//! `ibex add|list|update|remove plugin`, `ibex plugin test`

use std::path::Path;

use super::{Context, NamedParams, Names, Params, PluginAddArgs, PluginTestArgs};
use crate::catalog::{self, check_name};
use crate::error::{Error, Result};
use crate::plugin::bindings::conflicts::Conflict;
use crate::plugin::bindings::types::{SyncInfo, TableInfo};
use crate::plugin::{ColumnKind, HostDbs, Manifest, PluginKind, PluginRuntime, sha256_hex};

fn read_component(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))
}

/// Type-checks the component and settles its kind: the one given, or the
/// only world it implements.
fn settle_kind(runtime: &PluginRuntime, wasm: &[u8], file: &Path, given: Option<PluginKind>) -> Result<PluginKind> {
    let kinds =
        runtime.kinds(wasm).map_err(|e| Error::plugin_unusable(format!("{} is refused: {e}", file.display())))?;
    let names = || kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
    match given {
        Some(kind) if kinds.contains(&kind) => Ok(kind),
        Some(kind) => Err(Error::plugin_unusable(format!(
            "{} does not implement ibex:plugin/{kind}@0.1.0 (it implements: {})",
            file.display(),
            if kinds.is_empty() { "none".into() } else { names() }
        ))),
        None => match kinds.as_slice() {
            [kind] => Ok(*kind),
            [] => Err(Error::plugin_unusable(format!(
                "{} implements no ibex plugin world (conflict-handler, row-transform or sync-hooks of ibex:plugin@0.1.0)",
                file.display()
            ))),
            _ => Err(Error::usage(format!(
                "{} implements several worlds ({}): say which with kind=",
                file.display(),
                names()
            ))),
        },
    }
}

async fn check_grants(c: &impl tokio_postgres::GenericClient, manifest: &Manifest) -> Result<()> {
    for db in manifest.grants.iter().chain(&manifest.write_grants) {
        if !catalog::dbs::exists(c, db).await? {
            return Err(Error::not_found_hint("db", db, "grants name dbs of the catalog"));
        }
    }
    Ok(())
}

fn apply_keys(manifest: &mut Manifest, params: &Params) -> Result<()> {
    for (key, value) in params.remaining() {
        if key == "kind" {
            continue;
        }
        manifest.set(&key, &value)?;
    }
    Ok(())
}

pub async fn add(ctx: &Context, args: PluginAddArgs) -> Result<()> {
    check_name("plugin", &args.name)?;
    let mut params = Params::parse_pairs_only(&args.params)?;
    let given = params.take("kind").map(|k| k.parse::<PluginKind>()).transpose()?;
    let wasm = read_component(&args.file)?;
    let runtime = PluginRuntime::get()?;
    let kind = settle_kind(runtime, &wasm, &args.file, given)?;
    let mut manifest = Manifest::defaults(kind);
    apply_keys(&mut manifest, &params)?;
    let mut cat = ctx.catalog().await?;
    if catalog::plugin::exists(cat.client(), &args.name).await? {
        return Err(Error::duplicate_hint("plugin", &args.name, "replace it with `ibex update plugin NAME FILE.wasm`"));
    }
    check_grants(cat.client(), &manifest).await?;
    let sha = sha256_hex(&wasm);
    if let Some(expected) = &args.expect_sha256
        && !expected.trim().eq_ignore_ascii_case(&sha)
    {
        return Err(Error::Refused(format!(
            "{} has sha256 {sha}, not the expected {}: it is not the component you meant to install",
            args.file.display(),
            expected.trim()
        )));
    }
    let imports = runtime.imports(&wasm)?;
    // What the operator is about to trust, before anything is stored.
    ctx.out.line(format!("Component {}: {} KiB, sha256 {sha}", args.file.display(), wasm.len().div_ceil(1024)));
    ctx.out.line(format!("  implements: ibex:plugin/{kind}@0.1.0"));
    ctx.out.line(format!("  imports: {}", if imports.is_empty() { "nothing".into() } else { imports.join(", ") }));
    ctx.out.line(format!("  {}", describe_access(&manifest)));
    let role = format!("plugin {}", args.name);
    runtime.load(&args.name, &sha, &wasm, &role, manifest.clone())?;
    let lines = cat
        .change(async |tx| {
            catalog::plugin::add(tx, &args.name, &wasm, &sha, &manifest).await?;
            crate::sync::setup::plugin_roles(tx, &args.name, &manifest, &[]).await
        })
        .await?;
    for line in lines {
        ctx.out.line(line);
    }
    ctx.out.done(format!(
        "Added plugin {} ({}, {} KiB, sha256 {})",
        args.name,
        kind,
        wasm.len().div_ceil(1024),
        &sha[..16]
    ));
    Ok(())
}

/// The manifest's grants and limits in one line, for review.
fn describe_access(m: &Manifest) -> String {
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(",") };
    format!(
        "grants: query on dbs {} (tables {}), execute on dbs {} (tables {}); limits: {} fuel/call, {} fuel/run, {} MiB, {} ms/call, {} rows/query, {} statements/run, {} log bytes/call",
        list(&m.grants),
        list(&m.tables),
        list(&m.write_grants),
        list(&m.write_tables),
        m.fuel,
        m.run_fuel,
        m.memory / (1024 * 1024),
        m.timeout.as_millis(),
        m.query_row_cap,
        m.max_statements,
        m.log_bytes
    )
}

pub async fn list(ctx: &Context) -> Result<()> {
    let cat = ctx.catalog().await?;
    let plugins = catalog::plugin::list(cat.client()).await?;
    let mut views = Vec::new();
    for p in &plugins {
        let uses = catalog::plugin::uses(cat.client(), &p.name).await?;
        views.push(p.view(uses));
    }
    ctx.out.listing(
        &views,
        "No plugins: add one with `ibex add plugin NAME FILE.wasm`",
        &["Plugin", "Kind", "Size", "Sha256", "Limits", "Grants", "On error", "Used by"],
        |v| {
            vec![
                v.name.to_string(),
                v.manifest.kind.to_string(),
                format!("{} KiB", (v.size as u64).div_ceil(1024)),
                v.sha256[..12].to_string(),
                format!(
                    "{} MiB / {} ms / {} fuel",
                    v.manifest.memory / (1024 * 1024),
                    v.manifest.timeout.as_millis(),
                    v.manifest.fuel
                ),
                v.manifest.grants.join(","),
                v.manifest.on_error.to_string(),
                v.used_by.join("; "),
            ]
        },
    );
    Ok(())
}

pub async fn update(ctx: &Context, args: NamedParams) -> Result<()> {
    let file = args.params.first().filter(|a| !a.contains('=')).cloned();
    let rest: Vec<String> = args.params.iter().skip(usize::from(file.is_some())).cloned().collect();
    let mut params = Params::parse_pairs_only(&rest)?;
    if file.is_none() && rest.is_empty() {
        return Err(Error::usage(format!(
            "nothing to change: e.g. ibex update plugin {} new.wasm fuel=1000000",
            args.name
        )));
    }
    let mut cat = ctx.catalog().await?;
    let record = catalog::plugin::get(cat.client(), &args.name).await?;
    let mut manifest = record.manifest.clone();
    if let Some(kind) = params.take("kind") {
        manifest.kind = kind.parse()?;
    }
    apply_keys(&mut manifest, &params)?;
    check_grants(cat.client(), &manifest).await?;
    let runtime = PluginRuntime::get()?;
    let replacement = match &file {
        Some(path) => {
            let path = Path::new(path);
            let wasm = read_component(path)?;
            settle_kind(runtime, &wasm, path, Some(manifest.kind))?;
            let sha = sha256_hex(&wasm);
            runtime.load(&args.name, &sha, &wasm, &format!("plugin {}", args.name), manifest.clone())?;
            Some((wasm, sha))
        }
        None => {
            if manifest.kind != record.manifest.kind {
                let wasm = catalog::plugin::bytes(cat.client(), &args.name).await?;
                settle_kind(runtime, &wasm, Path::new(&args.name), Some(manifest.kind))?;
            }
            None
        }
    };
    let name = args.name.clone();
    let before: Vec<String> = record.manifest.grants.iter().chain(&record.manifest.write_grants).cloned().collect();
    let lines = cat
        .change(async |tx| {
            let uses = catalog::plugin::uses(tx, &name).await?;
            if manifest.kind != record.manifest.kind && !uses.is_empty() {
                return Err(Error::Refused(format!(
                    "plugin {name} is in use ({}): its kind cannot change",
                    uses.join("; ")
                )));
            }
            let wasm = replacement.as_ref().map(|(w, s)| (w.as_slice(), s.as_str()));
            catalog::plugin::update(tx, &name, wasm, &manifest).await?;
            crate::sync::setup::plugin_roles(tx, &name, &manifest, &before).await
        })
        .await?;
    for line in lines {
        ctx.out.line(line);
    }
    let swapped = replacement.map(|(_, sha)| format!(", new component sha256 {}", &sha[..16])).unwrap_or_default();
    ctx.out.done(format!("Updated plugin {}{swapped}; a running daemon picks it up on reload", args.name));
    Ok(())
}

pub async fn remove(ctx: &Context, args: Names) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| {
        for name in &args.names {
            let record = catalog::plugin::get(tx, name).await?;
            catalog::plugin::remove(tx, name).await?;
            let mut granted: Vec<String> =
                record.manifest.grants.iter().chain(&record.manifest.write_grants).cloned().collect();
            granted.dedup();
            // Nothing granted any more: the role goes from every db it was on.
            let mut none = record.manifest.clone();
            none.grants.clear();
            none.write_grants.clear();
            crate::sync::setup::plugin_roles(tx, name, &none, &granted).await?;
        }
        Ok(())
    })
    .await?;
    for name in &args.names {
        ctx.out.done(format!("Removed plugin {name}"));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct ConflictInput {
    sync: SyncInfo,
    table: TableInfo,
    conflicts: Vec<Conflict>,
}

/// Runs a plugin offline on a sample batch and prints its answer.
pub async fn test(ctx: &Context, args: PluginTestArgs) -> Result<()> {
    let cat = ctx.catalog().await?;
    let record = catalog::plugin::get(cat.client(), &args.name).await?;
    let wasm = catalog::plugin::bytes(cat.client(), &args.name).await?;
    let runtime = PluginRuntime::get()?;
    let (catalog_id, _) = catalog::identity(cat.client()).await?;
    let role = crate::plugin::roles::role_name(&catalog_id, &record.name);
    let plugin = runtime.load(&record.name, &record.sha256, &wasm, &role, record.manifest.clone())?;
    let text = std::fs::read_to_string(&args.input)
        .map_err(|e| Error::usage(format!("cannot read {}: {e}", args.input.display())))?;
    // The manifest's config.KEY=VALUE, as in a real run; the file may override.
    let with_config = |sync: &mut SyncInfo| {
        let mut config = record.manifest.config.clone();
        for (k, v) in std::mem::take(&mut sync.config) {
            config.retain(|(key, _)| *key != k);
            config.push((k, v));
        }
        sync.config = config;
    };
    match record.manifest.kind {
        PluginKind::ConflictHandler => {
            let mut input: ConflictInput = serde_json::from_str(&text).map_err(|e| {
                Error::usage(format!(
                    "{} is not a conflict batch ({e}); see examples/plugin-test-conflicts.json",
                    args.input.display()
                ))
            })?;
            with_config(&mut input.sync);
            let kinds: Vec<ColumnKind> = input.table.columns.iter().map(|c| kind_of_type_name(&c.type_name)).collect();
            let verdict = crate::plugin::conflict::resolve(
                &plugin,
                HostDbs::new(Vec::new()),
                &input.sync,
                &input.table,
                &kinds,
                &input.conflicts,
            )
            .await
            .map_err(|cause| Error::plugin(cause.failure, format!("plugin {} failed: {cause}", record.name)))?;
            ctx.out.print_json(&verdict);
        }
        PluginKind::RowTransform => {
            let mut input: TransformInput = serde_json::from_str(&text).map_err(|e| {
                Error::usage(format!(
                    "{} is not a transform batch ({e}): {{\"sync\": ..., \"source\": 0, \"target\": 1, \"table\": ..., \"rows\": [...]}}",
                    args.input.display()
                ))
            })?;
            with_config(&mut input.sync);
            let kinds: Vec<ColumnKind> = input.table.columns.iter().map(|c| kind_of_type_name(&c.type_name)).collect();
            let out = crate::plugin::transform::transform(
                &plugin,
                HostDbs::new(Vec::new()),
                &input.sync,
                input.source,
                input.target,
                &input.table,
                &kinds,
                input.rows,
            )
            .await
            .map_err(|cause| Error::plugin(cause.failure, format!("plugin {} failed: {cause}", record.name)))?;
            ctx.out.print_json(&out);
        }
        PluginKind::SyncHooks => {
            let mut input: HookInput = serde_json::from_str(&text).map_err(|e| {
                Error::usage(format!(
                    "{} is not a hook call ({e}): {{\"sync\": ..., \"call\": {{\"point\": \"BeforeSync\", \"failure\": null}}}}",
                    args.input.display()
                ))
            })?;
            with_config(&mut input.sync);
            let action = crate::plugin::hooks::run_hook(&plugin, HostDbs::new(Vec::new()), &input.sync, &input.call)
                .await
                .map_err(|cause| Error::plugin(cause.failure, format!("plugin {} failed: {cause}", record.name)))?;
            ctx.out.print_json(&action);
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct TransformInput {
    sync: SyncInfo,
    source: u32,
    target: u32,
    table: TableInfo,
    rows: Vec<Vec<crate::plugin::Value>>,
}

#[derive(serde::Deserialize)]
struct HookInput {
    sync: SyncInfo,
    call: crate::plugin::bindings::sync_hooks::ibex::plugin::hooks::HookCall,
}

/// Offline there is no database to ask: the common type names are enough.
fn kind_of_type_name(name: &str) -> ColumnKind {
    match name {
        "boolean" => ColumnKind::Bool,
        "smallint" => ColumnKind::Int2,
        "integer" => ColumnKind::Int4,
        "bigint" => ColumnKind::Int8,
        "real" => ColumnKind::Float4,
        "double precision" => ColumnKind::Float8,
        "bytea" => ColumnKind::Bytea,
        _ => ColumnKind::Text,
    }
}

/// `ibex add transform PLUGIN sync=S [table=T] [target=DB]`
pub async fn add_transform(ctx: &Context, args: NamedParams) -> Result<()> {
    let mut params = Params::parse_pairs_only(&args.params)?;
    let sync = params.require("sync", "sync=foobar")?;
    let table = params.take("table");
    let target = params.take("target");
    params.finish(&["sync", "table", "target"])?;
    let mut cat = ctx.catalog().await?;
    let shown = cat
        .change(async |tx| {
            let plugin = catalog::plugin::get(tx, &args.name).await?;
            if plugin.manifest.kind != PluginKind::RowTransform {
                return Err(Error::usage(format!(
                    "plugin {} is a {}, not a row-transform",
                    args.name, plugin.manifest.kind
                )));
            }
            let record = catalog::sync::get(tx, &sync).await?;
            let relation = match &table {
                Some(typed) => {
                    let rel = catalog::relation::find(tx, Some(catalog::RelKind::Table), typed).await?;
                    if !rel.herds.contains(&record.herd) {
                        return Err(Error::usage(format!(
                            "table {} is not in herd {} of sync {sync}",
                            rel.name, record.herd
                        )));
                    }
                    Some(rel)
                }
                None => None,
            };
            if let Some(db) = &target {
                let group = catalog::dbgroup::get(tx, &record.dbgroup).await?;
                if !group.members.iter().any(|m| &m.db == db) {
                    return Err(Error::usage(format!("db {db} is not in sync {sync}")));
                }
            }
            catalog::plugin::add_use(
                tx,
                &args.name,
                &sync,
                "transform",
                relation.as_ref().map(|r| r.id),
                target.as_deref(),
                None,
            )
            .await?;
            let mut affected = super::capture::Affected::default();
            affected.add_sync(tx, &sync).await?;
            affected.apply(tx, &ctx.out, true).await?;
            Ok(format!(
                "{} on {} to {}",
                args.name,
                relation.map_or("every table".to_string(), |r| r.name.to_string()),
                target.clone().unwrap_or_else(|| "every db".into())
            ))
        })
        .await?;
    ctx.out.done(format!("Added transform {shown} in sync {sync}"));
    Ok(())
}

/// `ibex remove transform|hook PLUGIN sync=S`
pub async fn remove_use(ctx: &Context, args: NamedParams, kind: &str) -> Result<()> {
    let mut params = Params::parse_pairs_only(&args.params)?;
    let sync = params.require("sync", "sync=foobar")?;
    params.finish(&["sync"])?;
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| {
        if catalog::plugin::remove_uses(tx, &args.name, &sync, kind).await? == 0 {
            return Err(Error::not_found(
                if kind == "transform" { "transform" } else { "hook" },
                format!("{} in sync {sync}", args.name),
            ));
        }
        Ok(())
    })
    .await?;
    ctx.out.done(format!("Removed {kind} {} from sync {sync}", args.name));
    Ok(())
}

/// `ibex add hook PLUGIN sync=S when=POINT[,POINT]`
pub async fn add_hook(ctx: &Context, args: NamedParams) -> Result<()> {
    use crate::plugin::hooks::HookPoint;
    let mut params = Params::parse_pairs_only(&args.params)?;
    let sync = params.require("sync", "sync=foobar")?;
    let when = params.require("when", "when=exception")?;
    params.finish(&["sync", "when"])?;
    let mut points = Vec::new();
    for name in when.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let point = HookPoint::parse(name)
            .ok_or_else(|| Error::usage(format!("unknown hook point {name:?}: use {}", HookPoint::NAMES)))?;
        points.push(point.name().to_string());
    }
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| {
        let plugin = catalog::plugin::get(tx, &args.name).await?;
        if plugin.manifest.kind != PluginKind::SyncHooks {
            return Err(Error::usage(format!("plugin {} is a {}, not sync-hooks", args.name, plugin.manifest.kind)));
        }
        catalog::sync::get(tx, &sync).await?;
        catalog::plugin::add_use(tx, &args.name, &sync, "hook", None, None, Some(&points)).await
    })
    .await?;
    ctx.out.done(format!("Added hook {} to sync {sync} at {}", args.name, points.join(", ")));
    Ok(())
}
