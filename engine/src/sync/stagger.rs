//! Staggered sequences for multi-master syncs: each source's sequences that
//! feed the herd's tables get a common `INCREMENT BY` (room for more
//! sources than today) and a distinct offset, so keys made on different
//! masters never collide. Those sequences must not also be in the herd
//! (a run would set them to the highest value everywhere).

use tokio_postgres::Client;

use super::plan::{DbId, Plan};
use crate::error::{Error, PgContext, Result};
use crate::pg::{QualifiedName, quote_literal};

/// A sequence that fills a column of one of the herd's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedingSequence {
    pub table: QualifiedName,
    pub column: String,
    /// As `pg_get_serial_sequence` names it (quoted, schema-qualified).
    pub sequence: String,
}

/// The sequences filling columns (serial or identity) of the plan's tables on one db.
pub async fn feeding_sequences(client: &Client, plan: &Plan) -> Result<Vec<FeedingSequence>> {
    let mut out = Vec::new();
    for table in &plan.tables {
        let rows = client
            .query(
                "SELECT a.attname::text, pg_get_serial_sequence($1, a.attname)
                   FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&table.name.quoted()],
            )
            .await
            .ctx(|| format!("finding the sequences of {}", table.name))?;
        for row in rows {
            if let Some(sequence) = row.get::<_, Option<String>>(1) {
                out.push(FeedingSequence { table: table.name.clone(), column: row.get(0), sequence });
            }
        }
    }
    Ok(out)
}

/// What `validate` should say about a multi-master sync whose tables take
/// keys from sequences that are not staggered on some source.
pub async fn unstaggered(plan: &Plan, clients: &[&Client]) -> Result<Vec<String>> {
    let sources: Vec<DbId> = plan.sources().collect();
    if sources.len() < 2 {
        return Ok(Vec::new());
    }
    let mut warnings = Vec::new();
    for &src in &sources {
        for feed in feeding_sequences(clients[src.index()], plan).await? {
            let increment: i64 = clients[src.index()]
                .query_one(
                    "SELECT increment_by FROM pg_sequences WHERE format('%I.%I', schemaname, sequencename)::regclass = $1::text::regclass",
                    &[&feed.sequence],
                )
                .await
                .ctx(|| format!("reading sequence {}", feed.sequence))?
                .get(0);
            if increment < sources.len() as i64 {
                warnings.push(format!(
                    "sync {} is multi-master and {}.{} takes its values from sequence {} (increment {increment}) on db {}: keys made on different masters can collide; run `ibex sequences stagger {}`",
                    plan.sync.name, feed.table, feed.column, feed.sequence, plan.db(src).name, plan.sync.name
                ));
            }
        }
    }
    Ok(warnings)
}

/// Staggers every feeding sequence on every source: increment `increment`
/// (default: ten, or twice the sources if more), source i (in dbgroup
/// order) hands out values ≡ i + 1 (mod increment), all above every value
/// any source has handed out. One transaction per source.
pub async fn stagger(plan: &Plan, clients: &mut [Client], increment: Option<i64>) -> Result<Vec<String>> {
    let sources: Vec<DbId> = plan.sources().collect();
    let increment = increment.unwrap_or_else(|| (2 * sources.len() as i64).max(10));
    if increment < sources.len() as i64 {
        return Err(Error::usage(format!(
            "increment={increment} is less than the {} sources of sync {}: use at least {}",
            sources.len(),
            plan.sync.name,
            sources.len()
        )));
    }
    let first =
        sources.first().copied().ok_or_else(|| Error::Sync(format!("sync {} has no source", plan.sync.name)))?;
    let feeds = feeding_sequences(&clients[first.index()], plan).await?;
    if feeds.is_empty() {
        return Ok(vec![format!("sync {}: no table of its herd takes values from a sequence", plan.sync.name)]);
    }
    for feed in &feeds {
        if plan.sequences.iter().any(|s| s.quoted() == feed.sequence || s.to_string() == feed.sequence) {
            return Err(Error::Refused(format!(
                "sequence {} is in the herd of sync {}, whose runs set it to the highest value everywhere: remove it from the herd (`ibex update herd {} remove={}`) before staggering it",
                feed.sequence, plan.sync.name, plan.sync.herd, feed.sequence
            )));
        }
    }
    let mut lines = Vec::new();
    for feed in &feeds {
        // Above every value any source has handed out, rounded up to the increment.
        let mut highest = 0i64;
        for &src in &sources {
            let row = clients[src.index()]
                .query_one(&format!("SELECT last_value FROM {}", feed.sequence), &[])
                .await
                .ctx(|| format!("reading sequence {} on db {}", feed.sequence, plan.db(src).name))?;
            highest = highest.max(row.get(0));
        }
        let base = (highest / increment + 1) * increment;
        for (i, &src) in sources.iter().enumerate() {
            let start = base + i as i64 + 1;
            let tx = clients[src.index()].transaction().await.ctx(|| "starting the stagger".into())?;
            tx.batch_execute(&format!("ALTER SEQUENCE {} INCREMENT BY {increment}", feed.sequence))
                .await
                .ctx(|| format!("staggering {} on db {}", feed.sequence, plan.db(src).name))?;
            tx.execute(&format!("SELECT setval({}, $1, false)", quote_literal(&feed.sequence)), &[&start])
                .await
                .ctx(|| format!("staggering {} on db {}", feed.sequence, plan.db(src).name))?;
            tx.commit().await.ctx(|| "committing the stagger".into())?;
            lines.push(format!(
                "db {}: {} (for {}.{}) starts at {start}, increment {increment}",
                plan.db(src).name,
                feed.sequence,
                feed.table,
                feed.column
            ));
        }
    }
    Ok(lines)
}
