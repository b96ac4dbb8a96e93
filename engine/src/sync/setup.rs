//! Keeps capture on each db in line with the catalog: the tables of every
//! sync that reads the db, a cursor per such sync, and the kick trigger
//! where a sync has autokick.

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

use crate::capture::{self, CaptureReport, CaptureTable};
use crate::catalog;
use crate::error::{Error, Result};
use crate::pg::{self, introspect};

/// Reconciles capture on one db with what the catalog (as `catalog` sees
/// it, possibly inside an uncommitted change) says.
pub async fn reconcile_db(catalog_client: &impl GenericClient, db: &str) -> Result<CaptureReport> {
    let record = catalog::dbs::get(catalog_client, db).await?;
    let (syncs, needs) = catalog::sync::capture_needs(catalog_client, db).await?;
    let mut client = pg::connect(&record.conn, "ibex capture").await?;
    let mut tables: BTreeMap<pg::QualifiedName, CaptureTable> = BTreeMap::new();
    for need in needs {
        if let Some(existing) = tables.get_mut(&need.table) {
            existing.kick |= need.autokick;
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
            key.push((col.clone(), live.type_sql.clone()));
        }
        let old_image =
            need.capture_old.then(|| columns.iter().filter(|c| !c.generated).map(|c| c.name.clone()).collect());
        tables.insert(need.table.clone(), CaptureTable { name: need.table, key, kick: need.autokick, old_image });
    }
    let tables: Vec<CaptureTable> = tables.into_values().collect();
    capture::reconcile(&mut client, &tables, &syncs).await.map_err(|err| match err {
        Error::Postgres { context, source } => Error::Postgres { context: format!("{context} on db {db}"), source },
        other => other,
    })
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
    Some(format!("db {db}: {}", parts.join("; ")))
}
