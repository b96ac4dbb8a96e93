//! Sync leases: several daemons may serve one catalog (on different hosts,
//! for availability); each sync is run by the one daemon that holds its
//! lease in the control catalog (`ibex.lease`). The holder renews it; when
//! it stops renewing (dead, stopped, cut off from the control database),
//! the lease expires and another daemon takes it, with a larger token.
//!
//! Fencing: every run records its token on each source db (`ibex.fence()`
//! in `capture/sql.rs`) before it reads anything, and a db refuses a token
//! older than one it has seen; the cursor advance checks the same. A new
//! holder also ends the old holder's sessions on the sync's dbs, so a
//! daemon that was stopped mid-run cannot commit when it resumes. Expiry
//! is judged by the control database's clock alone.

use crate::error::{PgContext, Result};
use crate::pg;
use crate::sync::PlanDb;

/// Ends the sessions a previous holder may still have on a db of the sync
/// (a daemon stopped mid-run keeps its transactions open): rolled back,
/// they cannot commit when it resumes. Returns how many were ended.
pub async fn end_stale_sessions(db: &PlanDb, sync: &str) -> Result<u64> {
    let client = pg::connect(&db.conn, "ibex lease").await?;
    let ended = client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&crate::sync::kid_application_name(sync)],
        )
        .await
        .ctx(|| format!("ending an earlier holder's sessions of sync {sync} on db {}", db.name))?;
    Ok(ended.get::<_, i64>(0) as u64)
}

/// This daemon's name in `ibex.lease.holder` and `ibex.daemon.id`: host,
/// pid and a random part (a pid is reused after a restart).
pub fn holder_id() -> String {
    let host = crate::config::hostname();
    format!("{host}:{}:{:08x}", std::process::id(), rand::random::<u32>())
}
