//! `ibex ddl SYNC 'ALTER TABLE ...'`: one schema change on every db of a
//! sync, in the order that keeps it running. Additions go to targets
//! first (a target never receives a column it lacks), removals to sources
//! first (a source never sends a column the targets no longer have); each
//! db's statement runs in a transaction opened on every db before any is
//! committed, so a statement that fails anywhere is applied nowhere.
//! Capture is reconciled afterwards (a changed key moves its triggers),
//! and each running sync notices the new columns at its next run (see
//! `introspect::shape_query`).

use futures_util::future::try_join_all;
use tokio_postgres::Client;

use super::plan::{Plan, PlanDb};
use super::setup;
use crate::catalog::Role;
use crate::error::{Error, PgContext, Result};
use crate::pg;

/// Which dbs take the statement first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    TargetsFirst,
    SourcesFirst,
}

impl Order {
    /// Removals (DROP, and RENAME, which removes a name) go to sources
    /// first; everything else to targets first.
    pub fn for_statement(sql: &str) -> Order {
        let upper = sql.to_ascii_uppercase();
        let words: Vec<&str> = upper.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
        if words.iter().any(|w| *w == "DROP" || *w == "RENAME") { Order::SourcesFirst } else { Order::TargetsFirst }
    }
}

/// What `run` did, per db in the order it committed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DdlReport {
    pub order: Vec<String>,
    /// Capture changes made afterwards, per db (empty when none were needed).
    pub capture: Vec<String>,
}

/// Attempts when the statement waits too long for a lock or deadlocks with
/// a running sync (which holds locks on one db while it waits on another).
const ATTEMPTS: u32 = 5;

pub async fn run(
    catalog_client: &impl tokio_postgres::GenericClient,
    plan: &Plan,
    statement: &str,
    lock_timeout_ms: u64,
) -> Result<DdlReport> {
    if statement.trim().is_empty() {
        return Err(Error::usage("give the DDL statement to run, e.g. 'ALTER TABLE acct ADD COLUMN note text'"));
    }
    let mut attempt = 0;
    let committed = loop {
        attempt += 1;
        match change(plan, statement, lock_timeout_ms).await {
            Err(err) if err.is_transient() && attempt < ATTEMPTS => {
                tracing::info!(attempt, error = %err, "schema change rolled back everywhere; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
            }
            other => break other?,
        }
    };
    let mut capture = Vec::new();
    for db in &plan.dbs {
        let report = setup::reconcile_db(catalog_client, &db.name).await?;
        capture.extend(setup::describe(&db.name, &report));
    }
    Ok(DdlReport { order: committed, capture })
}

/// One attempt: every db's transaction open, the statement run on each in
/// order, then the commits in the same order. Returns the dbs committed.
async fn change(plan: &Plan, statement: &str, lock_timeout_ms: u64) -> Result<Vec<String>> {
    let order = Order::for_statement(statement);
    let rank = |db: &PlanDb| match (order, db.role) {
        (Order::TargetsFirst, Role::Source) | (Order::SourcesFirst, Role::Target) => 1,
        _ => 0,
    };
    let mut dbs: Vec<&PlanDb> = plan.dbs.iter().collect();
    dbs.sort_by_key(|db| rank(db));
    let clients = try_join_all(dbs.iter().map(|db| async move {
        let client = pg::connect(&db.conn, "ibex ddl").await?;
        // The user's statement resolves its names as theirs would in psql,
        // not under ibex's own path (see `pg/session.rs`).
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{lock_timeout_ms}ms'; SET LOCAL search_path TO {}",
                pg::session::USER_SEARCH_PATH
            ))
            .await
            .ctx(|| format!("starting the schema change on db {}", db.name))?;
        Ok::<_, Error>(client)
    }))
    .await?;
    for (db, client) in dbs.iter().zip(&clients) {
        if let Err(err) = client.batch_execute(statement).await {
            // Nothing is committed yet: the connections' ends roll every db back.
            return Err(Error::Postgres {
                context: format!("the schema change failed on db {} and was applied on no db", db.name),
                source: err,
            });
        }
    }
    let mut committed = Vec::new();
    for (db, client) in dbs.iter().zip(&clients) {
        if let Err(err) = client.batch_execute("COMMIT").await {
            let pending: Vec<&str> = dbs.iter().skip(committed.len()).map(|d| d.name.as_str()).collect();
            return Err(Error::Postgres {
                context: format!(
                    "the schema change committed on db(s) {} but not on {}: run the statement there by hand (or `ibex ddl` again with IF NOT EXISTS / IF EXISTS)",
                    if committed.is_empty() { "none".to_string() } else { committed.join(", ") },
                    pending.join(", ")
                ),
                source: err,
            });
        }
        committed.push(db.name.clone());
    }
    Ok(committed)
}

/// The `ddl=addcol` policy: every column a source has and another db of
/// the sync lacks is added there, defined as on that source. Returns one
/// line per column added (empty when there was nothing to add). Other
/// differences are left for the table check to report.
pub async fn add_missing_columns(plan: &Plan, clients: &[&Client]) -> Result<Vec<String>> {
    let mut added = Vec::new();
    for table in &plan.tables {
        let mut present = Vec::with_capacity(clients.len());
        for client in clients {
            present.push(pg::introspect::columns(*client, &table.name).await?);
        }
        for (s, source) in plan.dbs.iter().enumerate().filter(|(_, d)| d.role == Role::Source) {
            let Some(source_columns) = &present[s] else { continue };
            for column in source_columns {
                for (t, db) in plan.dbs.iter().enumerate() {
                    let Some(columns) = &present[t] else { continue };
                    if t == s || columns.iter().any(|c| c.name == column.name) {
                        continue;
                    }
                    if added.iter().any(|(tt, name): &(usize, String)| *tt == t && *name == column.name) {
                        continue;
                    }
                    let Some(definition) =
                        pg::introspect::column_definition(clients[s], &table.name, &column.name).await?
                    else {
                        continue;
                    };
                    let sql = format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {definition}",
                        table.name.quoted(),
                        pg::quote_ident(&column.name)
                    );
                    clients[t].batch_execute(&sql).await.map_err(|err| Error::Postgres {
                        context: format!(
                            "ddl=addcol: adding column {}.{} ({definition}) on db {} as on db {}",
                            table.name, column.name, db.name, source.name
                        ),
                        source: err,
                    })?;
                    tracing::warn!(sync = %plan.sync.name, table = %table.name, column = %column.name, db = %db.name, from = %source.name, definition = %definition, "ddl=addcol: added a column a source has");
                    added.push((t, column.name.clone()));
                }
            }
        }
    }
    Ok(added.into_iter().map(|(t, c)| format!("added column {c} on db {}", plan.dbs[t].name)).collect())
}

#[cfg(test)]
mod tests {
    use super::Order;

    #[test]
    fn removals_go_to_sources_first() {
        assert_eq!(Order::for_statement("ALTER TABLE a ADD COLUMN b int"), Order::TargetsFirst);
        assert_eq!(Order::for_statement("alter table a drop column b"), Order::SourcesFirst);
        assert_eq!(Order::for_statement("ALTER TABLE a RENAME COLUMN b TO c"), Order::SourcesFirst);
        assert_eq!(Order::for_statement("ALTER TABLE a ADD COLUMN dropped_at timestamptz"), Order::TargetsFirst);
        assert_eq!(Order::for_statement("CREATE INDEX ON a (b)"), Order::TargetsFirst);
    }
}
