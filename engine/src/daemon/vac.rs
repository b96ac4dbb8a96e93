//! The VAC: every `vac_interval`, deletes the delta rows that every sync
//! reading them has applied (visible in each of their cursors: snapshots
//! are not ordered, so each is tested, never a "minimum"). A sync without a
//! cursor, inactive or failing, keeps its rows. Between purges it refreshes
//! the backlog and lag gauges with bounded reads. It keeps one connection
//! per db between passes, and says when a db fails and when it is back.
//! On a db with WAL capture it first decodes the slot, so a slot no run
//! reads (its syncs inactive or failing) does not hold the server's WAL;
//! a slot another daemon's stream holds and keeps moving is left to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::SharedCatalog;
use super::metrics::Metrics;
use crate::capture::{Snapshot, Window, delta_table, window_condition};
use crate::catalog;
use crate::error::{PgContext, Result};
use crate::pg::version::{Capabilities, XidFlavour};
use crate::pg::{self, ConnInfo, QualifiedName};

/// Rows deleted per statement, so a purge never holds one huge transaction.
const PURGE_BATCH: i64 = 50_000;
const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// The backlog gauge counts at most this many delta rows per table.
pub const BACKLOG_CAP: i64 = 100_000;

/// The VAC's connections, one per db, kept between passes, with what
/// each server can do.
#[derive(Default)]
struct Connections {
    open: HashMap<String, (ConnInfo, pg::Client, Capabilities)>,
    /// The last error per db, so a failing db is reported once, not every pass.
    failing: HashMap<String, String>,
}

impl Connections {
    async fn get(&mut self, db: &str, conn: &ConnInfo) -> Result<(&pg::Client, Capabilities)> {
        let stale = self.open.get(db).is_none_or(|(info, client, _)| info != conn || client.is_closed());
        if stale {
            let client = pg::connect(conn, "ibex vac").await?;
            let server = pg::version::detect(&client).await?;
            self.open.insert(db.to_string(), (conn.clone(), client, server));
        }
        match self.open.get(db) {
            Some((_, client, server)) => Ok((client, *server)),
            None => Err(crate::Error::Sync(format!("no connection to db {db}"))),
        }
    }

    /// Logs a db's failure when it starts (or changes), and its recovery.
    fn report(&mut self, db: &str, what: &str, result: &Result<()>) {
        match result {
            Ok(()) => {
                if self.failing.remove(db).is_some() {
                    tracing::info!(db = %db, "VAC reaches db again");
                }
            }
            Err(err) => {
                let text = err.to_string();
                if self.failing.get(db) != Some(&text) {
                    tracing::warn!(db = %db, error = %text, "VAC could not {what}; it retries every pass");
                    self.failing.insert(db.to_string(), text);
                }
                self.open.remove(db);
            }
        }
    }
}

pub async fn run(catalog: Arc<SharedCatalog>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    tracing::info!("VAC started");
    let mut next_purge = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut connections = Connections::default();
    loop {
        let interval = vac_interval(&catalog).await;
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(STATS_INTERVAL.min(interval)) => {}
        }
        if *shutdown.borrow() {
            break;
        }
        if let Err(err) = refresh_stats(&catalog, &metrics, &mut connections).await {
            tracing::warn!(error = %err, "VAC could not read the catalog to refresh the backlog");
        }
        if tokio::time::Instant::now() >= next_purge {
            match purge_all(&catalog, &mut connections).await {
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
        Ok(c) => match catalog::setting::get(c.as_ref(), "vac_interval").await {
            Ok(s) => Some(s.value),
            Err(err) => {
                tracing::warn!(error = %err, "VAC cannot read vac_interval; using 60s");
                None
            }
        },
        Err(_) => None,
    };
    value
        .and_then(|v| catalog::sync::parse_duration("vac_interval", &v).ok().flatten())
        .unwrap_or(Duration::from_secs(60))
}

/// Purges every db that some sync reads. Returns the rows deleted.
async fn purge_all(catalog: &SharedCatalog, connections: &mut Connections) -> Result<u64> {
    let client = catalog.get().await?;
    let mut total = 0;
    for db in catalog::sync::dbs_in_syncs(client.as_ref()).await? {
        let result = purge_db(client.as_ref(), &db, connections).await;
        if let Ok(n) = &result {
            total += n;
        }
        connections.report(&db, "purge its delta tables", &result.map(|_| ()));
    }
    Ok(total)
}

async fn purge_db(catalog_client: &pg::Client, db: &str, connections: &mut Connections) -> Result<u64> {
    let (_, needs) = catalog::capture::needs(catalog_client, db).await?;
    if needs.is_empty() {
        return Ok(0);
    }
    let record = catalog::dbs::get(catalog_client, db).await?;
    let (client, server) = connections.get(db, &record.conn).await?;
    let xids = server.xids;
    if record.capture == crate::capture::CaptureMode::Wal {
        // A slot keeps the server's WAL until it is read: decoded into the
        // delta tables here, the keys wait there (like trigger-captured
        // ones) for a sync that is inactive or failing, and the WAL goes.
        match crate::capture::wal::materialize_unless_streamed_elsewhere(client, server, &record.conn).await? {
            Some(decoded) if decoded.keys > 0 => {
                tracing::debug!(db = %db, keys = decoded.keys, "VAC decoded the WAL capture slot");
            }
            Some(_) => {}
            None => tracing::debug!(db = %db, "VAC left the WAL capture slot to the session that streams it"),
        }
    }
    let mut readers: BTreeMap<QualifiedName, Vec<String>> = BTreeMap::new();
    for need in &needs {
        readers.entry(need.table.clone()).or_default().push(need.sync.clone());
    }
    let cursors = read_cursors(client).await.ctx(|| format!("reading the cursors on db {db}"))?;
    let mut deleted = 0;
    for (table, syncs) in &readers {
        // A sync without a cursor has applied nothing: keep every row.
        let Some(applied) = applied_by_all(&cursors, syncs, xids) else { continue };
        let delta = delta_table(table);
        deleted +=
            purge(client, &delta, &applied, None).await.ctx(|| format!("purging the delta of {table} on db {db}"))?;
        deleted += purge(client, "ibex.truncate_log", &applied, Some(table))
            .await
            .ctx(|| format!("purging the truncate log of {table} on db {db}"))?;
    }
    Ok(deleted)
}

async fn read_cursors(client: &pg::Client) -> std::result::Result<HashMap<String, String>, tokio_postgres::Error> {
    let rows = client.query("SELECT sync, snapshot::text FROM ibex.cursor", &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The predicate "applied by every one of `syncs`" over delta alias `d`:
/// visible in each cursor, with an upper bound on txid for the index (the
/// smallest cursor xmax). Rows of a transaction still open when a cursor
/// was taken stay; rows after it, once applied, go (an `xmin` bound would
/// keep everything written since the oldest open transaction began).
fn applied_by_all(cursors: &HashMap<String, String>, syncs: &[String], xids: XidFlavour) -> Option<String> {
    let mut snapshots = Vec::new();
    for sync in syncs {
        snapshots.push(cursors.get(sync)?.parse::<Snapshot>().ok()?);
    }
    let bound = snapshots.iter().map(|s| s.xmax).min()?;
    let mut sql = format!("d.txid < {}", xids.xid(bound));
    for snapshot in &snapshots {
        // Below a snapshot's xmin every transaction is visible: no test needed.
        if snapshot.xmin < bound {
            sql.push_str(&format!(" AND {}", xids.visible("d.txid", &snapshot.to_string())));
        }
    }
    Some(sql)
}

/// Deletes, in batches, the rows that `applied` holds for.
async fn purge(
    client: &pg::Client,
    relation: &str,
    applied: &str,
    table: Option<&QualifiedName>,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let only_table = if table.is_some() { "AND d.schema_name = $2 AND d.rel_name = $3" } else { "" };
    let sql = format!(
        "DELETE FROM {relation} x USING (SELECT d.ctid FROM {relation} d WHERE {applied} {only_table} LIMIT $1) doomed
          WHERE x.ctid = doomed.ctid"
    );
    let mut total = 0;
    loop {
        let n = match table {
            Some(t) => client.execute(&sql, &[&PURGE_BATCH, &t.schema, &t.name]).await?,
            None => client.execute(&sql, &[&PURGE_BATCH]).await?,
        };
        total += n;
        if n < PURGE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Backlog (delta rows not yet applied, counted up to BACKLOG_CAP) per
/// sync and table, and the age of the oldest such change, for the metrics
/// endpoint. Each read is bounded and served by the delta's txid index.
async fn refresh_stats(catalog: &SharedCatalog, metrics: &Metrics, connections: &mut Connections) -> Result<()> {
    let client = catalog.get().await?;
    let syncs = catalog::sync::list(client.as_ref()).await?;
    metrics.retain_syncs(&syncs.iter().map(|s| s.name.clone()).collect::<Vec<_>>());
    let mut per_sync: BTreeMap<String, (Vec<(String, i64)>, f64)> = BTreeMap::new();
    for db in catalog::sync::dbs_in_syncs(client.as_ref()).await? {
        let (_, needs) = catalog::capture::needs(client.as_ref(), &db).await?;
        if needs.is_empty() {
            continue;
        }
        let record = catalog::dbs::get(client.as_ref(), &db).await?;
        let result = async {
            let (conn, server) = connections.get(&db, &record.conn).await?;
            let xids = server.xids;
            let cursors = read_cursors(conn).await.ctx(|| format!("reading the cursors on db {db}"))?;
            let mut found = Vec::new();
            for need in &needs {
                let Some(cursor) = cursors.get(&need.sync) else { continue };
                let window = window_condition("d", &Window::unbounded(cursor)?, xids);
                let delta = delta_table(&need.table);
                let Some(first_key) = need.key.first() else { continue };
                // Changed keys, not delta rows (a row holds a statement's keys).
                let keys = crate::capture::delta::count_keys(&delta, first_key, &window, BACKLOG_CAP.unsigned_abs());
                let stats = conn
                    .query_one(
                        &format!(
                            "SELECT {keys},
                                    coalesce((SELECT extract(epoch FROM now() - d.changed_at)::float8
                                                FROM {delta} d WHERE {window} ORDER BY d.txid LIMIT 1), 0)"
                        ),
                        &[],
                    )
                    .await
                    .ctx(|| format!("measuring the backlog of {} on db {db}", need.table))?;
                found.push((need.sync.clone(), need.table.to_string(), stats.get::<_, i64>(0), stats.get::<_, f64>(1)));
            }
            Ok::<_, crate::Error>(found)
        }
        .await;
        let found = match result {
            Ok(found) => {
                connections.report(&db, "measure the backlog", &Ok(()));
                found
            }
            Err(err) => {
                connections.report(&db, "measure the backlog", &Err(err));
                continue;
            }
        };
        for (sync, table, keys, lag) in found {
            let entry = per_sync.entry(sync).or_default();
            match entry.0.iter_mut().find(|(t, _)| *t == table) {
                Some((_, k)) => *k += keys,
                None => entry.0.push((table, keys)),
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
