//! Capture: what ibex installs on every database a sync reads from.
//!
//! Schema `ibex` holds, per replicated table, a delta table of changed keys
//! with the writing transaction's id (`xid8`) and the change time, filled by
//! statement-level triggers with transition tables (one INSERT per
//! statement, however many rows it touched), plus a row-level trigger that
//! fires only when an UPDATE changes the key, to record the old key too.
//! TRUNCATE is logged in `ibex.truncate_log`. An optional statement-level
//! kick trigger NOTIFYs `ibex_changed` with the table's name. Each sync that
//! reads the database has a cursor: the snapshot up to which it applied.
//!
//! The triggers are ordinary (ENABLE ORIGIN) triggers, so they do not fire
//! while ibex applies rows under `session_replication_role = replica`: no
//! echo, and no bookkeeping per applied row.

mod sql;

use std::collections::BTreeMap;

use tokio_postgres::Client;

pub use sql::{delta_table_name, window_condition};

use crate::error::{PgContext, Result};
use crate::pg::QualifiedName;

/// The channel the kick triggers notify; the payload is `schema.table`.
pub const KICK_CHANNEL: &str = "ibex_changed";

/// A table to capture on one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureTable {
    pub name: QualifiedName,
    /// Key columns with their SQL types on this database.
    pub key: Vec<(String, String)>,
    /// Install the kick trigger (some sync reading it has autokick).
    pub kick: bool,
    /// Keep the row before each UPDATE or DELETE (these columns, as text),
    /// for conflict handlers that merge column by column.
    pub old_image: Option<Vec<String>>,
}

/// What reconcile changed, for messages.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CaptureReport {
    pub installed: Vec<String>,
    pub repaired: Vec<String>,
    pub removed: Vec<String>,
    pub cursors_added: Vec<String>,
    pub cursors_removed: Vec<String>,
}

impl CaptureReport {
    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
            && self.repaired.is_empty()
            && self.removed.is_empty()
            && self.cursors_added.is_empty()
            && self.cursors_removed.is_empty()
    }
}

/// Makes the database's capture match `tables` and `syncs` (the syncs that
/// read it): installs what is missing, repairs what is broken, removes
/// triggers and delta tables that nothing needs, adds a cursor at the
/// current snapshot for each new sync and drops the cursors of others.
/// Runs in one transaction; the user's tables get triggers and nothing else.
pub async fn reconcile(client: &mut Client, tables: &[CaptureTable], syncs: &[String]) -> Result<CaptureReport> {
    let tx = client.transaction().await.ctx(|| "starting capture setup".into())?;
    // One installer at a time per database.
    tx.batch_execute("SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock(hashtext('ibex capture'))")
        .await
        .ctx(|| "locking for capture setup".into())?;
    tx.batch_execute(sql::SCHEMA).await.ctx(|| "creating schema ibex".into())?;

    let installed = installed_tables(&tx).await?;
    let mut report = CaptureReport::default();
    for table in tables {
        let shown = table.name.to_string();
        let key_names: Vec<String> = table.key.iter().map(|(c, _)| c.clone()).collect();
        match installed.get(&table.name) {
            Some(existing)
                if existing.key_columns == key_names
                    && existing.old_image == table.old_image.is_some()
                    && existing.kick == table.kick =>
            {
                if triggers_complete(&tx, table).await? {
                    // Leave a healthy capture alone: reinstalling would lock the table.
                    continue;
                }
                report.repaired.push(shown.clone());
            }
            Some(existing) if existing.key_columns == key_names => {
                // Old images or the kick switched on or off: same delta, new function.
                report.repaired.push(shown.clone());
            }
            Some(_) => {
                // The key changed: the old delta rows cannot be read any more.
                tx.batch_execute(&sql::drop_table(&table.name))
                    .await
                    .ctx(|| format!("removing the old capture of {shown}"))?;
                report.repaired.push(shown.clone());
            }
            None => report.installed.push(shown.clone()),
        }
        tx.batch_execute(&sql::install_table(table)).await.ctx(|| format!("installing capture on {shown}"))?;
        tx.execute(
            "INSERT INTO ibex.captured (schema_name, rel_name, delta_table, key_columns, kick, old_image)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (schema_name, rel_name) DO UPDATE
                SET delta_table = excluded.delta_table, key_columns = excluded.key_columns, kick = excluded.kick,
                    old_image = excluded.old_image",
            &[
                &table.name.schema,
                &table.name.name,
                &delta_table_name(&table.name),
                &key_names,
                &table.kick,
                &table.old_image.is_some(),
            ],
        )
        .await
        .ctx(|| format!("recording the capture of {shown}"))?;
    }
    for name in installed.keys() {
        if !tables.iter().any(|t| &t.name == name) {
            tx.batch_execute(&sql::drop_table(name)).await.ctx(|| format!("removing the capture of {name}"))?;
            report.removed.push(name.to_string());
        }
    }

    let existing: Vec<String> = tx
        .query("SELECT sync FROM ibex.cursor", &[])
        .await
        .ctx(|| "reading cursors".into())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for sync in syncs {
        if !existing.contains(sync) {
            tx.execute("INSERT INTO ibex.cursor (sync, snapshot) VALUES ($1, pg_current_snapshot())", &[sync])
                .await
                .ctx(|| format!("adding the cursor of sync {sync}"))?;
            report.cursors_added.push(sync.clone());
        }
    }
    for sync in existing {
        if !syncs.contains(&sync) {
            tx.execute("DELETE FROM ibex.cursor WHERE sync = $1", &[&sync])
                .await
                .ctx(|| format!("removing the cursor of sync {sync}"))?;
            report.cursors_removed.push(sync);
        }
    }
    tx.commit().await.ctx(|| "committing capture setup".into())?;
    Ok(report)
}

/// Removes everything ibex installed on a database.
pub async fn uninstall(client: &mut Client) -> Result<CaptureReport> {
    reconcile(client, &[], &[]).await
}

struct Installed {
    key_columns: Vec<String>,
    old_image: bool,
    kick: bool,
}

async fn installed_tables(tx: &tokio_postgres::Transaction<'_>) -> Result<BTreeMap<QualifiedName, Installed>> {
    let rows = tx
        .query("SELECT schema_name, rel_name, key_columns, old_image, kick FROM ibex.captured", &[])
        .await
        .ctx(|| "reading captured tables".into())?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                Installed { key_columns: r.get(2), old_image: r.get(3), kick: r.get(4) },
            )
        })
        .collect())
}

/// True when the table still has every capture trigger (and no other ibex
/// trigger) and its delta table exists.
async fn triggers_complete(tx: &tokio_postgres::Transaction<'_>, table: &CaptureTable) -> Result<bool> {
    let row = tx
        .query_one(
            "SELECT coalesce(array_agg(t.tgname::text ORDER BY t.tgname), '{}'),
                    to_regclass('ibex.' || quote_ident($2)) IS NOT NULL
               FROM pg_trigger t WHERE t.tgrelid = to_regclass($1) AND t.tgname LIKE 'ibex\\_%'",
            &[&table.name.quoted(), &delta_table_name(&table.name)],
        )
        .await
        .ctx(|| format!("checking the triggers of {}", table.name))?;
    let names: Vec<String> = row.get(0);
    let delta_exists: bool = row.get(1);
    let mut wanted: Vec<&str> = sql::CAPTURE_TRIGGERS.to_vec();
    wanted.sort_unstable();
    Ok(delta_exists && names == wanted)
}
