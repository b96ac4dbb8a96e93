//! Keeps capture on each db in line with the catalog: the tables of every
//! sync that reads the db, a cursor per such sync, and the kick trigger
//! where a sync has autokick. Also sets up each plugin's database role on
//! the dbs its manifest grants (see `plugin/roles.rs`).

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

use crate::capture::{self, CaptureReport, CaptureTable, IbexWrites, Owner, Reader};
use crate::catalog;
use crate::error::{Error, Result};
use crate::pg::{self, introspect};

/// Reconciles capture on one db with what the catalog (as `catalog` sees
/// it, possibly inside an uncommitted change) says.
pub async fn reconcile_db(catalog_client: &impl GenericClient, db: &str) -> Result<CaptureReport> {
    let record = catalog::dbs::get(catalog_client, db).await?;
    if record.target.is_some() {
        return Ok(CaptureReport::default()); // not PostgreSQL: nothing is captured there
    }
    let (readers, needs) = catalog::capture::needs(catalog_client, db).await?;
    let (owner, mut client) = open_as_owner(catalog_client, &record).await?;
    let mut tables: BTreeMap<pg::QualifiedName, CaptureTable> = BTreeMap::new();
    let mut warnings = Vec::new();
    for need in needs {
        for writer in &need.uncaptured_writers {
            warnings.push(format!(
                "sync {} reads table {} from db {db}, which sync {writer} writes without makedelta: rows {writer} applies on {db} never reach {}; set `ibex update sync {writer} makedelta=true` (or `ibex update table {} makedelta=true`)",
                need.sync, need.table, need.sync, need.table
            ));
        }
        let writes = match need.ibex_writes {
            "all" => IbexWrites::All,
            "asked" => IbexWrites::WhenAsked,
            _ => IbexWrites::Ignore,
        };
        if let Some(existing) = tables.get_mut(&need.table) {
            existing.kick |= need.autokick;
            existing.ibex_writes = existing.ibex_writes.max(writes);
            continue;
        }
        let columns = introspect::columns(&client, &need.table).await?.ok_or_else(|| {
            Error::Schema(format!(
                "table {} is missing on db {db}, which sync {} reads: create it there or take the db out of the sync",
                need.table, need.sync
            ))
        })?;
        let mut key = Vec::new();
        for col in &need.key {
            let live = columns
                .iter()
                .find(|c| &c.name == col)
                .ok_or_else(|| Error::Schema(format!("table {} on db {db} lacks key column {col}", need.table)))?;
            key.push(capture::DeltaKey::of(live));
        }
        let old_image = need.capture_old.then(|| {
            columns
                .iter()
                .filter(|c| !c.generated)
                .map(|c| capture::ImageColumn { name: c.name.clone(), built_in: c.built_in })
                .collect()
        });
        tables.insert(
            need.table.clone(),
            CaptureTable { name: need.table, key, kick: need.autokick, old_image, ibex_writes: writes },
        );
    }
    let tables: Vec<CaptureTable> = tables.into_values().collect();
    let readers: Vec<Reader> =
        readers.into_iter().map(|r| Reader { sync: r.sync, multi_source: r.multi_source }).collect();
    let mut report = capture::reconcile(&mut client, &owner, &tables, &readers, record.capture)
        .await
        .map_err(|err| naming_db(err, db))?;
    report.warnings.extend(warnings);
    let written = catalog::sync::tables_written_to(catalog_client, db).await?;
    for trigger in introspect::triggers_without_own_path(&client, &written).await.map_err(|err| naming_db(err, db))? {
        report.warnings.push(path_warning(db, &trigger));
    }
    Ok(report)
}

/// What to say of a user trigger that fires in ibex's sessions and would
/// find names only in pg_catalog.
fn path_warning(db: &str, trigger: &introspect::ReplicaTrigger) -> String {
    let what = match trigger.fires_on.strip_prefix("event ") {
        Some(event) => format!(
            "event trigger {} ({event}) of db {db} fires on the DDL ibex runs there (installing capture, ddl=addcol)",
            trigger.name
        ),
        None => format!(
            "trigger {} on {} of db {db} fires on the rows ibex writes ({})",
            trigger.name,
            trigger.fires_on,
            if trigger.always { "ENABLE ALWAYS" } else { "ENABLE REPLICA" }
        ),
    };
    format!(
        "{what}. It runs in ibex's session, whose search_path is `{}` (as in PostgreSQL's own replication workers), so a table or function that its function {} names without a schema is not found. Qualify those names, or give the function a path of its own: ALTER FUNCTION {} SET search_path = public (a schema only trusted roles may create in: before PostgreSQL 15, also REVOKE CREATE ON SCHEMA public FROM PUBLIC)",
        pg::session::IBEX_SEARCH_PATH,
        trigger.function,
        trigger.function
    )
}

/// The catalog as the owner of capture, and a connection to `record`'s db.
async fn open_as_owner(
    catalog_client: &impl GenericClient,
    record: &catalog::dbs::DbRecord,
) -> Result<(Owner, tokio_postgres::Client)> {
    let (catalog_id, catalog_at) = catalog::identity(catalog_client).await?;
    let client = pg::connect(&record.conn, "ibex capture").await?;
    Ok((Owner { catalog_id, catalog: catalog_at }, client))
}

/// A capture error, saying which db it happened on.
fn naming_db(err: Error, db: &str) -> Error {
    match err {
        Error::Postgres { context, source } => Error::Postgres { context: format!("{context} on db {db}"), source },
        Error::Refused(why) => Error::Refused(format!("db {db}: {why}")),
        other => other,
    }
}

/// Makes the WAL capture slot on `db` (when its capture is wal), before
/// the catalog change that needs it: see `capture::create_wal_slot`, which
/// must not run inside a catalog transaction.
pub async fn prepare_wal_slot(
    catalog_client: &impl GenericClient,
    record: &catalog::dbs::DbRecord,
) -> Result<capture::SlotMade> {
    if record.capture != capture::CaptureMode::Wal || record.target.is_some() {
        return Ok(capture::SlotMade::NotNeeded);
    }
    let (owner, client) = open_as_owner(catalog_client, record).await?;
    capture::create_wal_slot(&client, &owner).await.map_err(|err| naming_db(err, &record.name))
}

/// Drops `db`'s WAL capture slot (when its capture is wal), as it leaves.
pub async fn drop_wal_slot(catalog_client: &impl GenericClient, record: &catalog::dbs::DbRecord) -> Result<()> {
    if record.capture != capture::CaptureMode::Wal || record.target.is_some() {
        return Ok(());
    }
    let (owner, client) = open_as_owner(catalog_client, record).await?;
    capture::drop_wal_slot(&client, &owner).await.map_err(|err| naming_db(err, &record.name))
}

/// One line per db that changed, for the CLI.
pub fn describe(db: &str, report: &CaptureReport) -> Option<String> {
    if report.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    let mut list = |what: &str, items: &[String]| {
        if !items.is_empty() {
            parts.push(format!("{what} {}", items.join(", ")));
        }
    };
    list("installed capture on", &report.installed);
    list("repaired capture on", &report.repaired);
    list("removed capture from", &report.removed);
    list("added cursor for", &report.cursors_added);
    list("removed cursor of", &report.cursors_removed);
    list("whole-table copy on the next run (the key changed with changes pending) for", &report.resyncs);
    Some(format!("db {db}: {}", parts.join("; ")))
}

/// A plugin's access on one db, from its manifest.
pub fn plugin_access(manifest: &crate::plugin::Manifest, db: &str) -> crate::plugin::roles::DbAccess {
    use crate::plugin::{roles::DbAccess, table_name};
    DbAccess {
        read: manifest.grants.iter().any(|g| g == db),
        write: manifest.write_grants.iter().any(|g| g == db),
        read_tables: manifest.tables.iter().map(|t| table_name(t)).collect(),
        write_tables: manifest.write_tables.iter().map(|t| table_name(t)).collect(),
    }
}

/// Sets up (or repairs) plugin `name`'s role on every db its manifest
/// grants, and removes it from `dropped` dbs (granted before, not now).
/// Returns one line per db.
pub async fn plugin_roles(
    catalog_client: &impl GenericClient,
    name: &str,
    manifest: &crate::plugin::Manifest,
    dropped: &[String],
) -> Result<Vec<String>> {
    use crate::plugin::roles;
    let (catalog_id, _) = catalog::identity(catalog_client).await?;
    let role = roles::role_name(&catalog_id, name);
    let mut dbs: Vec<&String> = manifest.grants.iter().chain(&manifest.write_grants).collect();
    dbs.sort();
    dbs.dedup();
    let mut lines = Vec::new();
    for db in dbs {
        let record = catalog::dbs::get(catalog_client, db).await?;
        let mut client = pg::connect(&record.conn, "ibex plugin setup").await?;
        let access = plugin_access(manifest, db);
        let problems = roles::check(&client, &role, &access).await?;
        let tx = client.transaction().await.map_err(|e| Error::Postgres {
            context: format!("starting the role setup of plugin {name} on db {db}"),
            source: e,
        })?;
        roles::install(&tx, &role, &access).await.map_err(|e| match e {
            Error::Postgres { context, source } => Error::Postgres { context: format!("{context} on db {db}"), source },
            other => other,
        })?;
        tx.commit().await.map_err(|e| Error::Postgres {
            context: format!("committing the role setup of plugin {name} on db {db}"),
            source: e,
        })?;
        let list = |tables: &[crate::pg::QualifiedName]| {
            if tables.is_empty() {
                "no tables".to_string()
            } else {
                tables.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
            }
        };
        let mut parts = Vec::new();
        if access.read {
            parts.push(format!("query reads {}", list(&access.read_tables)));
        }
        if access.write {
            parts.push(format!("execute writes {}", list(&access.write_tables)));
        }
        let repaired = if problems.is_empty() { String::new() } else { format!("; repaired: {}", problems.join(", ")) };
        lines.push(format!("plugin {name}: role {role} on db {db} ({}){repaired}", parts.join("; ")));
    }
    for db in dropped {
        if manifest.grants.contains(db) || manifest.write_grants.contains(db) {
            continue;
        }
        let Ok(record) = catalog::dbs::get(catalog_client, db).await else { continue };
        let client = pg::connect(&record.conn, "ibex plugin setup").await?;
        roles::remove(&client, &role).await?;
        lines.push(format!("plugin {name}: role {role} removed from db {db}"));
    }
    Ok(lines)
}
