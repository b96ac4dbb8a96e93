//! Rows for foreign targets, read from a PostgreSQL source as COPY text in
//! bounded batches (memory stays flat however many rows change).

use futures_util::{StreamExt, pin_mut};
use tokio_postgres::Client;

use super::TableSpec;
use super::copytext::LineSplitter;
use super::{Shape, Slot, TextRow};
use crate::error::{Error, PgContext, Result};

/// Rows handed on per batch.
pub const BATCH_ROWS: usize = 1000;

/// Runs `copy_sql` (a `COPY ... TO STDOUT` in text format) on `source` and
/// hands the rows to `each` in batches. Returns the rows read.
pub async fn copy_text(
    source: &Client,
    copy_sql: &str,
    what: &str,
    mut each: impl FnMut(&[TextRow]) -> Result<()>,
) -> Result<u64> {
    let stream = source.copy_out(copy_sql).await.ctx(|| format!("reading {what}"))?;
    pin_mut!(stream);
    let mut splitter = LineSplitter::default();
    let mut batch: Vec<TextRow> = Vec::with_capacity(BATCH_ROWS);
    let mut total = 0u64;
    let bad = |why: String| Error::Sync(format!("reading {what}: {why}"));
    while let Some(piece) = stream.next().await {
        let piece = piece.ctx(|| format!("reading {what}"))?;
        for row in splitter.push(&piece).map_err(bad)? {
            batch.push(row);
            if batch.len() >= BATCH_ROWS {
                total += batch.len() as u64;
                each(&batch)?;
                batch.clear();
            }
        }
    }
    splitter.finish().map_err(bad)?;
    if !batch.is_empty() {
        total += batch.len() as u64;
        each(&batch)?;
    }
    Ok(total)
}

/// Makes `table` on each slot if missing and deletes there the keys
/// `keys_sql` (a `COPY ... TO STDOUT`, text) reads from `source`.
/// Returns the rows each slot deleted.
pub async fn delete_keys(
    source: &Client,
    source_name: &str,
    table: &TableSpec,
    keys_sql: &str,
    slots: &[&Slot],
) -> Result<Vec<u64>> {
    let shape = Shape::new(&table.name, &table.columns, &table.key)?;
    for slot in slots {
        slot.with(|w| w.prepare(&shape))?;
    }
    let mut deleted = vec![0u64; slots.len()];
    let what = format!("changed keys of {} on db {source_name}", table.name);
    copy_text(source, keys_sql, &what, |keys| {
        for (slot, count) in slots.iter().zip(deleted.iter_mut()) {
            *count += slot.with(|w| w.delete_keys(&shape, keys))?;
        }
        Ok(())
    })
    .await?;
    Ok(deleted)
}

/// Makes `table` on each slot if missing and empties it.
pub fn delete_all(table: &TableSpec, slots: &[&Slot]) -> Result<Vec<u64>> {
    let shape = Shape::new(&table.name, &table.columns, &table.key)?;
    slots
        .iter()
        .map(|slot| {
            slot.with(|w| {
                w.prepare(&shape)?;
                w.delete_all(&shape)
            })
        })
        .collect()
}

/// Writes to each slot the rows `rows_sql` (a `COPY ... TO STDOUT`, text)
/// reads from `source`. Returns the rows each slot took.
pub async fn write_rows(
    source: &Client,
    source_name: &str,
    table: &TableSpec,
    rows_sql: &str,
    slots: &[&Slot],
) -> Result<Vec<u64>> {
    let shape = Shape::new(&table.name, &table.columns, &table.key)?;
    let mut written = vec![0u64; slots.len()];
    let what = format!("rows of {} on db {source_name}", table.name);
    copy_text(source, rows_sql, &what, |rows| {
        for (slot, count) in slots.iter().zip(written.iter_mut()) {
            *count += slot.with(|w| w.write_rows(&shape, rows))?;
        }
        Ok(())
    })
    .await?;
    Ok(written)
}

/// Writes rows given as COPY text (what a row transform returned) to one slot.
pub fn write_copy_text(table: &TableSpec, slot: &Slot, text: &str) -> Result<u64> {
    let shape = Shape::new(&table.name, &table.columns, &table.key)?;
    let mut splitter = LineSplitter::default();
    let bad = |why: String| Error::Sync(format!("rows of {} from a row transform: {why}", table.name));
    let rows = splitter.push(text.as_bytes()).map_err(bad)?;
    splitter.finish().map_err(bad)?;
    slot.with(|w| w.write_rows(&shape, &rows))
}

/// Whether table is empty on the foreign target (onetimecopy=2).
pub fn is_empty(table: &TableSpec, slot: &Slot) -> Result<bool> {
    let shape = Shape::new(&table.name, &table.columns, &table.key)?;
    slot.with(|w| {
        w.prepare(&shape)?;
        w.is_empty(&shape)
    })
}
