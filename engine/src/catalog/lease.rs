//! Sync leases in the control catalog (`ibex.lease`): which daemon runs
//! each sync, until when, and the token that fences older holders out.
//! How daemons use them is `daemon/lease.rs`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::{PgContext, Result};

/// How long a lease lasts without renewal, unless the `lease_ttl` setting says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// A lease this daemon took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub token: i64,
    /// The daemon that held it before, when it did not release it (it
    /// died, hung or lost the control database): its sessions are ended.
    pub from: Option<String>,
}

/// A lease as `ibex status` and `ibex list daemons` show it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    pub sync: String,
    pub holder: Option<String>,
    pub token: i64,
    pub expires_at: DateTime<Utc>,
    pub live: bool,
}

fn millis(ttl: Duration) -> f64 {
    ttl.as_millis() as f64
}

/// Takes the sync's lease if nobody holds it, its holder let it expire, or
/// it is this holder's own (a daemon that stopped its syncs when it lost
/// the control database takes them back, with a new token that fences out
/// any run it still had going).
pub async fn take(c: &impl GenericClient, sync: &str, holder: &str, ttl: Duration) -> Result<Option<Taken>> {
    let row = c
        .query_opt(
            "WITH before AS (SELECT holder, expires_at FROM ibex.lease WHERE sync = $1)
             INSERT INTO ibex.lease AS l (sync, holder, token, expires_at, taken_at)
             VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond', now())
             ON CONFLICT (sync) DO UPDATE
                SET holder = excluded.holder, token = l.token + 1, expires_at = excluded.expires_at, taken_at = now()
              WHERE l.holder IS NULL OR l.expires_at < now() OR l.holder = excluded.holder
             RETURNING l.token, (SELECT holder FROM before)",
            &[&sync, &holder, &millis(ttl)],
        )
        .await
        .ctx(|| format!("taking the lease of sync {sync}"))?;
    Ok(row.map(|r| Taken { token: r.get(0), from: r.get::<_, Option<String>>(1).filter(|h| h != holder) }))
}

/// Renews every lease `holder` has; returns the syncs it still holds, with their tokens.
pub async fn renew(c: &impl GenericClient, holder: &str, ttl: Duration) -> Result<Vec<(String, i64)>> {
    let rows = c
        .query(
            "UPDATE ibex.lease SET expires_at = now() + $2 * interval '1 millisecond'
              WHERE holder = $1 AND expires_at >= now() RETURNING sync, token",
            &[&holder, &millis(ttl)],
        )
        .await
        .ctx(|| "renewing the daemon's leases".into())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Gives up one lease (the sync was deactivated here) or, with None, all
/// of them (the daemon stops): another daemon may take them at once.
pub async fn release(c: &impl GenericClient, holder: &str, sync: Option<&str>) -> Result<()> {
    c.execute(
        "UPDATE ibex.lease SET holder = NULL, expires_at = now() WHERE holder = $1 AND ($2::text IS NULL OR sync = $2)",
        &[&holder, &sync],
    )
    .await
    .ctx(|| "releasing the daemon's leases".into())?;
    Ok(())
}

/// The token a run outside any daemon (`ibex sync run`) fences with: the
/// current one, so it neither steals the lease nor is refused by the dbs.
/// Its runs and the holder's serialize on the fence row.
pub async fn current_token(c: &impl GenericClient, sync: &str) -> Result<i64> {
    let row = c
        .query_opt("SELECT token FROM ibex.lease WHERE sync = $1", &[&sync])
        .await
        .ctx(|| format!("reading the lease of sync {sync}"))?;
    Ok(row.map_or(0, |r| r.get(0)))
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<LeaseView>> {
    let rows = c
        .query(
            "SELECT sync, holder, token, expires_at, holder IS NOT NULL AND expires_at >= now() FROM ibex.lease ORDER BY sync",
            &[],
        )
        .await
        .ctx(|| "reading the sync leases".into())?;
    Ok(rows
        .iter()
        .map(|r| LeaseView { sync: r.get(0), holder: r.get(1), token: r.get(2), expires_at: r.get(3), live: r.get(4) })
        .collect())
}

/// Active syncs that no daemon holds (new ones, or their holder let the
/// lease expire): a daemon with room takes them.
pub async fn untaken(c: &impl GenericClient) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT s.name FROM ibex.sync s LEFT JOIN ibex.lease l ON l.sync = s.name
              WHERE s.status = 'active' AND (l.sync IS NULL OR l.holder IS NULL OR l.expires_at < now())
              ORDER BY s.name",
            &[],
        )
        .await
        .ctx(|| "looking for syncs no daemon holds".into())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
