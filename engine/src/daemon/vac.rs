//! The VAC: every `vac_interval`, deletes the delta rows that every sync
//! reading them has applied (visible in each of their cursors: snapshots
//! are not ordered, so each is tested, never a "minimum"). A sync without a
//! cursor, inactive or failing, keeps its rows. Between purges it refreshes
//! the backlog and lag gauges.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::SharedCatalog;
use super::metrics::Metrics;
use crate::capture::{delta_table_name, window_condition};
use crate::catalog;
use crate::error::{PgContext, Result};
use crate::pg::{self, QualifiedName, quote_ident};

/// Rows deleted per statement, so a purge never holds one huge transaction.
const PURGE_BATCH: i64 = 50_000;
const STATS_INTERVAL: Duration = Duration::from_secs(10);

pub async fn run(catalog: Arc<SharedCatalog>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    tracing::info!("VAC started");
    let mut next_purge = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let interval = vac_interval(&catalog).await;
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(STATS_INTERVAL.min(interval)) => {}
        }
        if *shutdown.borrow() {
            break;
        }
        if let Err(err) = refresh_stats(&catalog, &metrics).await {
            tracing::debug!(error = %err, "VAC could not refresh the backlog");
        }
        if tokio::time::Instant::now() >= next_purge {
            match purge_all(&catalog).await {
                Ok(deleted) if deleted > 0 => tracing::info!(deleted, "VAC purged applied delta rows"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "VAC purge failed; will retry"),
            }
            next_purge = tokio::time::Instant::now() + interval;
        }
    }
    tracing::info!("VAC stopped");
}

async fn vac_interval(catalog: &SharedCatalog) -> Duration {
    let value = match catalog.get().await {
        Ok(c) => catalog::setting::get(c.as_ref(), "vac_interval").await.map(|s| s.value).ok(),
        Err(_) => None,
    };
    value
        .and_then(|v| catalog::sync::parse_duration("vac_interval", &v).ok().flatten())
        .unwrap_or(Duration::from_secs(60))
}

/// Purges every db that some sync reads. Returns the rows deleted.
pub async fn purge_all(catalog: &SharedCatalog) -> Result<u64> {
    let client = catalog.get().await?;
    let mut total = 0;
    for db in catalog::sync::dbs_in_syncs(client.as_ref()).await? {
        match purge_db(client.as_ref(), &db).await {
            Ok(n) => total += n,
            Err(err) => tracing::warn!(db = %db, error = %err, "VAC skipped a db"),
        }
    }
    Ok(total)
}

async fn purge_db(catalog_client: &pg::Client, db: &str) -> Result<u64> {
    let (_, needs) = catalog::sync::capture_needs(catalog_client, db).await?;
    if needs.is_empty() {
        return Ok(0);
    }
    let record = catalog::dbs::get(catalog_client, db).await?;
    let client = pg::connect(&record.conn, "ibex vac").await?;
    let mut readers: BTreeMap<QualifiedName, Vec<String>> = BTreeMap::new();
    for need in &needs {
        readers.entry(need.table.clone()).or_default().push(need.sync.clone());
    }
    let mut deleted = 0;

    for (table, syncs) in &readers {
        let delta = format!("ibex.{}", quote_ident(&delta_table_name(table)));
        deleted +=
            purge(&client, &delta, syncs, None).await.ctx(|| format!("purging the delta of {table} on db {db}"))?;
        deleted += purge(&client, "ibex.truncate_log", syncs, Some(table))
            .await
            .ctx(|| format!("purging the truncate log of {table} on db {db}"))?;
    }
    Ok(deleted)
}

/// Deletes, in batches, rows that every one of `syncs` has applied: rows
/// of transactions that had ended before each cursor's snapshot was taken
/// (below its xmin) are visible in all of them. Rows between xmin and xmax
/// wait for a later purge, which is cheap and always safe. If any of the
/// syncs has no cursor, nothing is deleted.
async fn purge(
    client: &pg::Client,
    relation: &str,
    syncs: &[String],
    table: Option<&QualifiedName>,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let only_table = if table.is_some() { "AND d.schema_name = $3 AND d.rel_name = $4" } else { "" };
    let sql = format!(
        "WITH cursors AS (SELECT snapshot FROM ibex.cursor WHERE sync = ANY($1)),
              doomed AS (
                SELECT d.ctid FROM {relation} d
                 WHERE (SELECT count(*) FROM cursors) = cardinality($1)
                   AND d.txid < (SELECT min(pg_snapshot_xmin(snapshot)) FROM cursors)
                   {only_table}
                 LIMIT $2)
         DELETE FROM {relation} d USING doomed WHERE d.ctid = doomed.ctid"
    );
    let mut total = 0;
    loop {
        let n = match table {
            Some(t) => client.execute(&sql, &[&syncs, &PURGE_BATCH, &t.schema, &t.name]).await?,
            None => client.execute(&sql, &[&syncs, &PURGE_BATCH]).await?,
        };
        total += n;
        if n < PURGE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Backlog (changed keys not yet applied) per sync and table, and the age
/// of the oldest such change, for the metrics endpoint.
async fn refresh_stats(catalog: &SharedCatalog, metrics: &Metrics) -> Result<()> {
    let client = catalog.get().await?;
    let syncs = catalog::sync::list(client.as_ref()).await?;
    metrics.retain_syncs(&syncs.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    let mut per_sync: BTreeMap<String, (Vec<(String, i64)>, f64)> = BTreeMap::new();
    for db in catalog::sync::dbs_in_syncs(client.as_ref()).await? {
        let (_, needs) = catalog::sync::capture_needs(client.as_ref(), &db).await?;
        if needs.is_empty() {
            continue;
        }
        let record = catalog::dbs::get(client.as_ref(), &db).await?;
        let Ok(conn) = pg::connect(&record.conn, "ibex vac").await else { continue };
        for need in needs {
            let row = conn
                .query_opt("SELECT snapshot::text FROM ibex.cursor WHERE sync = $1", &[&need.sync])
                .await
                .ctx(|| format!("reading the cursor of {} on db {db}", need.sync))?;
            let Some(cursor) = row.map(|r| r.get::<_, String>(0)) else { continue };
            let delta = format!("ibex.{}", quote_ident(&delta_table_name(&need.table)));
            let stats = conn
                .query_one(
                    &format!(
                        "SELECT count(DISTINCT ({})), coalesce(extract(epoch FROM now() - min(d.changed_at)), 0)::float8
                           FROM {delta} d WHERE {}",
                        need.key.iter().map(|k| format!("d.{}", quote_ident(k))).collect::<Vec<_>>().join(", "),
                        window_condition("d", &cursor)
                    ),
                    &[],
                )
                .await
                .ctx(|| format!("measuring the backlog of {} on db {db}", need.table))?;
            let entry = per_sync.entry(need.sync.clone()).or_default();
            let keys: i64 = stats.get(0);
            let lag: f64 = stats.get(1);
            let shown = need.table.to_string();
            match entry.0.iter_mut().find(|(t, _)| *t == shown) {
                Some((_, k)) => *k += keys,
                None => entry.0.push((shown, keys)),
            }
            entry.1 = entry.1.max(lag);
        }
    }
    for sync in &syncs {
        let (tables, lag) = per_sync.remove(&sync.name).unwrap_or_default();
        metrics.set_backlog(&sync.name, &tables, lag);
    }
    Ok(())
}
