//! `ibex.daemon`: the daemons serving this catalog (several may, each
//! running the syncs whose lease it holds, see `lease.rs`). A row counts
//! while its catalog session (backend_pid) is alive.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::{PgContext, Result};

#[derive(Debug, Clone, Serialize)]
pub struct DaemonRecord {
    pub id: String,
    pub pid: i32,
    pub host: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// The syncs whose lease it holds now.
    pub syncs: Vec<String>,
}

/// The live daemons, oldest first.
pub async fn list(c: &impl GenericClient) -> Result<Vec<DaemonRecord>> {
    let rows = c
        .query(
            "SELECT d.id, d.pid, d.host, d.version, d.started_at,
                    coalesce((SELECT array_agg(l.sync ORDER BY l.sync) FROM ibex.lease l
                               WHERE l.holder = d.id AND l.expires_at >= now()), '{}')
               FROM ibex.daemon d
              WHERE EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = d.backend_pid)
              ORDER BY d.started_at, d.id",
            &[],
        )
        .await
        .ctx(|| "looking for running daemons".into())?;
    Ok(rows
        .iter()
        .map(|r| DaemonRecord {
            id: r.get(0),
            pid: r.get(1),
            host: r.get(2),
            version: r.get(3),
            started_at: r.get(4),
            syncs: r.get(5),
        })
        .collect())
}
