//! Makes the catalog match a plan, inside one catalog transaction, through
//! the same catalog functions the add/update/remove commands use. Order
//! matters: what others depend on is added first and removed last (syncs go
//! before their herds, dbgroups and plugins; dbs go after everything).

use std::collections::BTreeSet;
use std::path::Path;

use tokio_postgres::Transaction;

use super::plan::{Action, Plan, Step};
use super::state::{State, SyncState, UseState};
use crate::catalog::manifest::{PluginKind, table_name};
use crate::catalog::{self, RelKind};
use crate::error::{Error, Result};
use crate::pg::introspect::{self, LiveKind};
use crate::pg::{self, ConnInfo};
use crate::plugin::{PluginRuntime, sha256_hex};

/// What the caller must still do in the same transaction: check the syncs
/// and bring capture in line on the dbs.
#[derive(Debug, Default)]
pub struct Applied {
    /// Syncs added or changed, or whose herd, dbgroup or tables changed.
    pub syncs: BTreeSet<String>,
    /// Dbs whose capture may have to change.
    pub dbs: BTreeSet<String>,
    /// Dbs capture may have to leave (a failure there is only a warning).
    pub leaving_dbs: BTreeSet<String>,
    /// What was done beyond the plan (plugin roles).
    pub lines: Vec<String>,
    pub warnings: Vec<String>,
}

/// The WAL capture slots of the dbs `desired` moves to capture = "wal",
/// made before the catalog's transaction (a slot waits for every open
/// transaction, that one included: see `capture::create_wal_slot`). A
/// refusal (wal_level, free slots) stops the apply before anything changed.
pub async fn prepare_wal_slots(
    catalog_client: &impl tokio_postgres::GenericClient,
    current: &State,
    desired: &State,
) -> Result<PreparedSlots> {
    let mut made = Vec::new();
    let mut warnings = Vec::new();
    for (name, db) in &desired.dbs {
        let was_wal = current.dbs.get(name).is_some_and(|c| c.capture == crate::capture::CaptureMode::Wal);
        if db.capture != crate::capture::CaptureMode::Wal || db.target.is_some() || was_wal {
            continue;
        }
        let record = catalog::dbs::DbRecord {
            name: name.clone(),
            conn: db.conn.clone(),
            status: db.status.clone(),
            target: None,
            capture: db.capture,
        };
        match crate::sync::setup::prepare_wal_slot(catalog_client, &record).await {
            Ok(slot) => {
                warnings.extend(slot.warning(name));
                if slot.is_new() {
                    made.push(record);
                }
            }
            Err(err) => {
                drop_wal_slots(catalog_client, &made).await;
                return Err(err);
            }
        }
    }
    Ok(PreparedSlots { made, warnings })
}

/// What [`prepare_wal_slots`] did.
pub struct PreparedSlots {
    /// The dbs whose slot was made here, to drop if the apply fails.
    pub made: Vec<catalog::dbs::DbRecord>,
    /// Slots that replaced lost ones: for once the apply has landed.
    pub warnings: Vec<String>,
}

/// Drops the slots `prepare_wal_slots` made, after a failed apply; a slot
/// that cannot be dropped is logged with its db (it would hold WAL).
pub async fn drop_wal_slots(catalog_client: &impl tokio_postgres::GenericClient, made: &[catalog::dbs::DbRecord]) {
    for record in made {
        if let Err(err) = crate::sync::setup::drop_wal_slot(catalog_client, record).await {
            tracing::warn!(db = %record.name, error = %err, "the WAL capture slot made for the apply was not dropped; drop it by hand (it holds the server's WAL)");
        }
    }
}

pub async fn apply(tx: &Transaction<'_>, plan: &Plan, current: &State, desired: &State) -> Result<Applied> {
    let mut done = Applied::default();
    let desired_sync = |name: &str| desired.syncs.get(name);

    for step in plan.of("sync", Action::Remove) {
        if let Some(group) = current.syncs.get(&step.name).and_then(|s| current.dbgroups.get(&s.record.dbgroup)) {
            done.leaving_dbs.extend(group.iter().map(|m| m.db.clone()));
        }
        catalog::sync::remove(tx, &step.name).await?;
    }
    // Attachments that change are taken off now and put back after the syncs.
    let mut reattach: Vec<&SyncState> = Vec::new();
    for step in plan.of("sync", Action::Change) {
        let (Some(old), Some(new)) = (current.syncs.get(&step.name), desired_sync(&step.name)) else { continue };
        if old.uses != new.uses {
            for u in &old.uses {
                catalog::plugin::remove_uses(tx, &u.plugin, &step.name, &u.kind).await?;
            }
            reattach.push(new);
        }
    }

    for step in plan.steps.iter().filter(|s| s.object == "db" && s.action != Action::Remove) {
        let Some(db) = desired.dbs.get(&step.name) else { continue };
        let old = current.dbs.get(&step.name);
        if let Some(old) = old
            && old.target != db.target
        {
            return Err(Error::Refused(format!(
                "db {}: a db's type, and a foreign db's settings, cannot change in place (`ibex update db` changes only a foreign db's status): take it out of the file (and out of its dbgroups), apply, then add it back",
                step.name
            )));
        }
        match &db.target {
            Some(target) if old.is_none() => {
                target.check()?;
                catalog::dbs::add_foreign(tx, &step.name, target).await?;
                if db.status != "active" {
                    let mut record = catalog::dbs::get(tx, &step.name).await?;
                    record.status = db.status.clone();
                    catalog::dbs::update(tx, &record).await?;
                }
            }
            _ => {
                if old.is_none_or(|c| c.conn != db.conn) && db.target.is_none() {
                    check_connects(&step.name, &db.conn).await?;
                }
                if step.action == Action::Add {
                    catalog::dbs::add(tx, &step.name, &db.conn, db.capture).await?;
                }
                let mut record = catalog::dbs::get(tx, &step.name).await?;
                if record.capture != db.capture {
                    // The switch happens on the db with this transaction (the
                    // slot was made before it: `prepare_wal_slots`).
                    done.dbs.insert(step.name.clone());
                }
                record.conn = db.conn.clone();
                record.status = db.status.clone();
                record.capture = db.capture;
                catalog::dbs::update(tx, &record).await?;
            }
        }
    }

    for step in plan.steps.iter().filter(|s| s.object == "plugin" && s.action != Action::Remove) {
        apply_plugin(tx, step, current, desired, &mut done).await?;
    }

    for step in plan.steps.iter().filter(|s| matches!(s.object, "table" | "sequence")) {
        if step.action == Action::Remove {
            continue;
        }
        apply_relation(tx, step, current, desired).await?;
        let key = &step.name;
        done.syncs.extend(
            desired
                .syncs
                .values()
                .filter(|s| desired.herds.get(&s.record.herd).is_some_and(|h| h.contains(key)))
                .map(|s| s.record.name.clone()),
        );
    }

    for step in plan.steps.iter().filter(|s| s.object == "herd" && s.action != Action::Remove) {
        let Some(members) = desired.herds.get(&step.name) else { continue };
        let before = current.herds.get(&step.name).cloned().unwrap_or_default();
        if step.action == Action::Add {
            catalog::herd::add(tx, &step.name).await?;
        }
        for key in members.difference(&before) {
            let id = relation_id(tx, key).await?;
            catalog::herd::add_member(tx, &step.name, id, key).await?;
        }
        for key in before.difference(members) {
            let id = relation_id(tx, key).await?;
            catalog::herd::remove_member(tx, &step.name, id, key).await?;
        }
        done.syncs.extend(desired.syncs.values().filter(|s| s.record.herd == step.name).map(|s| s.record.name.clone()));
    }

    for step in plan.steps.iter().filter(|s| s.object == "dbgroup" && s.action != Action::Remove) {
        let Some(members) = desired.dbgroups.get(&step.name) else { continue };
        match step.action {
            Action::Add => catalog::dbgroup::add(tx, &step.name, members).await?,
            _ => {
                if let Some(old) = current.dbgroups.get(&step.name) {
                    done.leaving_dbs.extend(old.iter().map(|m| m.db.clone()));
                }
                catalog::dbgroup::set_members(tx, &step.name, members).await?;
            }
        }
        done.syncs
            .extend(desired.syncs.values().filter(|s| s.record.dbgroup == step.name).map(|s| s.record.name.clone()));
    }

    for step in plan.steps.iter().filter(|s| s.object == "sync" && s.action != Action::Remove) {
        let Some(sync) = desired_sync(&step.name) else { continue };
        if let Some(old) = current.syncs.get(&step.name)
            && let Some(group) = current.dbgroups.get(&old.record.dbgroup)
        {
            done.leaving_dbs.extend(group.iter().map(|m| m.db.clone()));
        }
        match step.action {
            Action::Add => {
                catalog::sync::add(tx, &sync.record).await?;
                reattach.push(sync);
            }
            _ => catalog::sync::update(tx, &sync.record).await?,
        }
        done.syncs.insert(step.name.clone());
    }
    for sync in reattach {
        for u in &sync.uses {
            attach(tx, &sync.record.name, u).await?;
        }
        done.syncs.insert(sync.record.name.clone());
    }

    for step in plan.of("herd", Action::Remove) {
        catalog::herd::remove(tx, &step.name).await?;
    }
    for step in plan.steps.iter().filter(|s| matches!(s.object, "table" | "sequence") && s.action == Action::Remove) {
        let id = relation_id(tx, &step.name).await?;
        for sync in catalog::relation::syncs_using(tx, id).await? {
            if let Some(group) = desired.syncs.get(&sync).and_then(|s| desired.dbgroups.get(&s.record.dbgroup)) {
                done.leaving_dbs.extend(group.iter().map(|m| m.db.clone()));
            }
        }
        catalog::relation::remove(tx, id).await?;
    }
    for step in plan.of("dbgroup", Action::Remove) {
        catalog::dbgroup::remove(tx, &step.name).await?;
    }
    for step in plan.of("plugin", Action::Remove) {
        let record = catalog::plugin::get(tx, &step.name).await?;
        catalog::plugin::remove(tx, &step.name).await?;
        let mut granted: Vec<String> =
            record.manifest.grants.iter().chain(&record.manifest.write_grants).cloned().collect();
        granted.dedup();
        // Nothing granted any more: the role goes from every db it was on.
        let mut none = record.manifest.clone();
        none.grants.clear();
        none.write_grants.clear();
        done.lines.extend(crate::sync::setup::plugin_roles(tx, &step.name, &none, &granted).await?);
    }
    for step in plan.of("db", Action::Remove) {
        if catalog::dbs::syncs_using(tx, &step.name).await?.is_empty() {
            // No sync reads it any more: take capture off it, if reachable.
            if let Err(err) = crate::sync::setup::reconcile_db(tx, &step.name).await {
                done.warnings.push(format!("capture on db {} was not removed: {err}", step.name));
            }
        }
        done.leaving_dbs.remove(&step.name);
        catalog::dbs::remove(tx, &step.name).await?;
    }

    for step in plan.steps.iter().filter(|s| s.object == "setting") {
        if let Some(value) = desired.settings.get(&step.name) {
            catalog::setting::set(tx, &step.name, value).await?;
        }
    }

    for sync in &done.syncs {
        if let Some(group) = desired.syncs.get(sync).and_then(|s| desired.dbgroups.get(&s.record.dbgroup)) {
            done.dbs.extend(group.iter().map(|m| m.db.clone()));
        }
    }
    let strict = done.dbs.clone();
    done.leaving_dbs.retain(|db| !strict.contains(db) && desired.dbs.contains_key(db));
    Ok(done)
}

async fn check_connects(name: &str, conn: &ConnInfo) -> Result<()> {
    pg::connect(conn, "ibex check").await.map(drop).map_err(|err| match err {
        Error::Connect { target, reason } => Error::Connect {
            target: format!("db {name} ({target})"),
            reason: format!("{reason}; fix the connection settings in the file or check that the server is up"),
        },
        other => other,
    })
}

async fn relation_id(tx: &Transaction<'_>, key: &str) -> Result<i32> {
    catalog::relation::find_exact(tx, &table_name(key))
        .await?
        .map(|r| r.id)
        .ok_or_else(|| Error::not_found("table or sequence", key))
}

async fn apply_relation(tx: &Transaction<'_>, step: &Step, current: &State, desired: &State) -> Result<()> {
    let Some(rel) = desired.relations.get(&step.name) else { return Ok(()) };
    let name = table_name(&step.name);
    let old = current.relations.get(&step.name);
    if let Some(old) = old
        && old.kind != rel.kind
    {
        return Err(Error::Refused(format!(
            "{} is a {} in the catalog and a {} in the file: take it out of the file, apply, then add it back",
            step.name,
            old.kind.as_str(),
            rel.kind.as_str()
        )));
    }
    let key_changes = rel.key.is_some() && old.is_none_or(|o| o.key != rel.key);
    let found_key = if rel.kind == RelKind::Table && (old.is_none() || key_changes) {
        let db = rel
            .db
            .clone()
            .or_else(|| old.and_then(|o| o.db.clone()))
            .ok_or_else(|| Error::usage(format!("table {}: set db = \"DB\" to check its key on", step.name)))?;
        Some(live_key(tx, &db, &name, rel.kind, rel.key.as_deref()).await?)
    } else {
        None
    };
    let id = match old {
        None => {
            let db = rel
                .db
                .clone()
                .ok_or_else(|| Error::usage(format!("{}: db = \"DB\" is needed to add it", step.name)))?;
            if rel.kind == RelKind::Sequence {
                live_key(tx, &db, &name, rel.kind, None).await?;
            }
            let key = found_key.as_ref().and_then(|k| k.as_ref());
            catalog::relation::add(
                tx,
                rel.kind,
                &name,
                key.map(|(cols, _)| cols.as_slice()),
                key.map(|(_, source)| *source),
                &db,
            )
            .await?
        }
        Some(_) => {
            let id = relation_id(tx, &step.name).await?;
            if let Some(Some((cols, source))) = &found_key {
                catalog::relation::set_key(tx, id, cols, source).await?;
            }
            id
        }
    };
    if old.is_none_or(|o| o.capture_old != rel.capture_old) {
        catalog::relation::set_capture_old(tx, id, rel.capture_old).await?;
    }
    if old.is_none_or(|o| o.makedelta != rel.makedelta) {
        catalog::relation::set_makedelta(tx, id, rel.makedelta).await?;
    }
    Ok(())
}

/// Looks the relation up on `db` as `ibex add table|sequence` does; a
/// table's key comes back.
async fn live_key(
    tx: &Transaction<'_>,
    db: &str,
    name: &pg::QualifiedName,
    kind: RelKind,
    pkey: Option<&[String]>,
) -> Result<Option<(Vec<String>, &'static str)>> {
    let record = catalog::dbs::get(tx, db).await?;
    let client = pg::connect(&record.conn, "ibex").await?;
    let live = introspect::resolve(&client, &name.quoted()).await?.ok_or_else(|| {
        Error::not_found_hint(
            kind.as_str(),
            name.to_string(),
            format!("it is not on db {db}; check the name and schema"),
        )
    })?;
    match (kind, live.kind) {
        (RelKind::Table, LiveKind::Table | LiveKind::PartitionedTable) => {
            Ok(Some(introspect::table_key(&client, &live, db, pkey).await?))
        }
        (RelKind::Sequence, LiveKind::Sequence) => Ok(None),
        _ => Err(Error::Schema(format!("{name} on db {db} is not a {}", kind.as_str()))),
    }
}

async fn apply_plugin(
    tx: &Transaction<'_>,
    step: &Step,
    current: &State,
    desired: &State,
    done: &mut Applied,
) -> Result<()> {
    let Some(p) = desired.plugins.get(&step.name) else { return Ok(()) };
    let old = current.plugins.get(&step.name);
    let runtime = PluginRuntime::get()?;
    let component = match old {
        Some(o) if o.sha256 == p.sha256 => None,
        _ => {
            let path = p.path.as_deref().ok_or_else(|| {
                Error::usage(format!("plugin {}: add path = \"FILE.wasm\" (sha256 {})", step.name, p.sha256))
            })?;
            Some(read_component(runtime, &step.name, path, &p.sha256, p.manifest.kind)?)
        }
    };
    let role = format!("plugin {}", step.name);
    match (old, &component) {
        (None, Some(wasm)) => {
            runtime.load(&step.name, &p.sha256, wasm, &role, p.manifest.clone())?;
            catalog::plugin::add(tx, &step.name, wasm, &p.sha256, &p.manifest).await?;
            done.lines.extend(crate::sync::setup::plugin_roles(tx, &step.name, &p.manifest, &[]).await?);
        }
        (Some(old), _) => {
            if old.manifest.kind != p.manifest.kind {
                let uses = catalog::plugin::uses(tx, &step.name).await?;
                if !uses.is_empty() {
                    return Err(Error::Refused(format!(
                        "plugin {} is in use ({}): its kind cannot change",
                        step.name,
                        uses.join("; ")
                    )));
                }
                if component.is_none() {
                    let wasm = catalog::plugin::bytes(tx, &step.name).await?;
                    check_kind(runtime, &step.name, Path::new(&step.name), &wasm, p.manifest.kind)?;
                }
            }
            if let Some(wasm) = &component {
                runtime.load(&step.name, &p.sha256, wasm, &role, p.manifest.clone())?;
            }
            let before: Vec<String> = old.manifest.grants.iter().chain(&old.manifest.write_grants).cloned().collect();
            let replacement = component.as_ref().map(|w| (w.as_slice(), p.sha256.as_str()));
            catalog::plugin::update(tx, &step.name, replacement, &p.manifest).await?;
            done.lines.extend(crate::sync::setup::plugin_roles(tx, &step.name, &p.manifest, &before).await?);
        }
        (None, None) => {
            return Err(Error::usage(format!("plugin {}: add path = \"FILE.wasm\"", step.name)));
        }
    }
    Ok(())
}

/// Reads a component, checks it is the one the file names and of its kind.
fn read_component(runtime: &PluginRuntime, name: &str, path: &Path, sha256: &str, kind: PluginKind) -> Result<Vec<u8>> {
    let wasm =
        std::fs::read(path).map_err(|e| Error::usage(format!("plugin {name}: cannot read {}: {e}", path.display())))?;
    let found = sha256_hex(&wasm);
    if found != sha256 {
        return Err(Error::Refused(format!(
            "plugin {name}: {} has sha256 {found}, not the {sha256} the file names: it is not the component you meant",
            path.display()
        )));
    }
    check_kind(runtime, name, path, &wasm, kind)?;
    Ok(wasm)
}

fn check_kind(runtime: &PluginRuntime, name: &str, path: &Path, wasm: &[u8], kind: PluginKind) -> Result<()> {
    let kinds = runtime
        .kinds(wasm)
        .map_err(|e| Error::plugin_unusable(format!("plugin {name}: {} is refused: {e}", path.display())))?;
    if kinds.contains(&kind) {
        Ok(())
    } else {
        Err(Error::plugin_unusable(format!(
            "plugin {name}: {} does not implement ibex:plugin/{kind}@0.1.0",
            path.display()
        )))
    }
}

async fn attach(tx: &Transaction<'_>, sync: &str, u: &UseState) -> Result<()> {
    let relation = match &u.table {
        Some(key) => Some(relation_id(tx, key).await?),
        None => None,
    };
    let hook_points = (u.kind == "hook").then_some(u.when.as_slice());
    catalog::plugin::add_use(tx, &u.plugin, sync, &u.kind, relation, u.target.as_deref(), hook_points).await
}
