//! Tables a `ddl=pause` sync holds back (`ibex.paused_table`), as the KID
//! last found them: what `ibex status` shows. The KID decides (see
//! `sync/pause.rs`); this is only its record.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::{PgContext, Result};

/// One held table and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PausedTable {
    pub table: String,
    pub reason: String,
    /// The whole sync waits (several sources), not only this table.
    pub whole_sync: bool,
    /// When the table was first held; set by the catalog.
    pub since: Option<DateTime<Utc>>,
}

/// Makes the record match `held`: new tables are added, tables no longer
/// held are removed, and a table held all along keeps its `since`.
pub async fn record(client: &impl GenericClient, sync: &str, held: &[PausedTable]) -> Result<()> {
    let tables: Vec<&str> = held.iter().map(|p| p.table.as_str()).collect();
    let reasons: Vec<&str> = held.iter().map(|p| p.reason.as_str()).collect();
    let whole: Vec<bool> = held.iter().map(|p| p.whole_sync).collect();
    client
        .execute(
            "WITH gone AS (DELETE FROM ibex.paused_table WHERE sync = $1 AND table_name <> ALL ($2::text[]))
             INSERT INTO ibex.paused_table (sync, table_name, reason, whole_sync)
             SELECT $1, t, r, w FROM unnest($2::text[], $3::text[], $4::bool[]) AS h (t, r, w)
             ON CONFLICT (sync, table_name) DO UPDATE SET reason = excluded.reason, whole_sync = excluded.whole_sync",
            &[&sync, &tables, &reasons, &whole],
        )
        .await
        .ctx(|| format!("recording the tables sync {sync} holds back"))?;
    Ok(())
}

/// The tables a sync holds back, oldest first.
pub async fn list(client: &impl GenericClient, sync: &str) -> Result<Vec<PausedTable>> {
    let rows = client
        .query(
            "SELECT table_name, reason, whole_sync, since FROM ibex.paused_table WHERE sync = $1 ORDER BY since, table_name",
            &[&sync],
        )
        .await
        .ctx(|| format!("reading the tables sync {sync} holds back"))?;
    rows.iter()
        .map(|row| {
            Ok(PausedTable {
                table: row.try_get(0).ctx(|| "reading a held table".into())?,
                reason: row.try_get(1).ctx(|| "reading a held table".into())?,
                whole_sync: row.try_get(2).ctx(|| "reading a held table".into())?,
                since: Some(row.try_get(3).ctx(|| "reading a held table".into())?),
            })
        })
        .collect()
}
