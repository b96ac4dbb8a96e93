//! A PostgreSQL target: the changed keys are loaded into a temporary key
//! table and deleted with one join, then the winning rows arrive by COPY
//! straight from the source, undecoded (the fan-out itself is
//! `pg::copy::copy_fanout`, driven by the cycle, since one COPY out of the
//! source feeds every PostgreSQL target at once).

use tokio_postgres::Client;

use super::TableSpec;
use crate::error::{PgContext, Result};
use crate::pg::quote_ident;

/// `COPY table (columns) FROM STDIN ...`: what receives the source's rows.
pub fn copy_in_sql(table: &TableSpec) -> String {
    format!("COPY {} ({}) FROM STDIN{}", table.quoted(), table.column_list(), table.copy_options())
}

/// An empty key table on this connection (one simple query, sent when
/// the future is first polled, like `delete_loaded`). It lives as long as the
/// connection; ON COMMIT DELETE ROWS empties it in place at every commit
/// (TRUNCATE would make a new file each time), and within one run the
/// merge empties it with DELETE before reusing it.
pub async fn ensure_key_table(client: &Client, db: &str, name: &str, table: &TableSpec) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS; DELETE FROM pg_temp.{}",
            quote_ident(name),
            table.key_definitions(),
            quote_ident(name)
        ))
        .await
        .ctx(|| format!("preparing a key table on db {db}"))
}

/// The `rows` keys loaded into temp table `name`, as a FROM item. The
/// planner has no statistics for a temp table and guesses it holds
/// thousands of rows, so a join with a large table scans all of it (15 ms
/// for 3 keys of a 100,000-row table); the LIMIT, which removes nothing,
/// tells it how many rows there are, and it probes the key's index.
pub fn loaded_keys(name: &str, rows: u64) -> String {
    format!("(SELECT * FROM pg_temp.{} LIMIT {rows})", quote_ident(name))
}

/// Above this many keys a delete analyzes its key table and may use
/// [`LARGE_WORK_MEM`].
const LARGE_DELETE_KEYS: u64 = 1000;

/// What a delete of many keys, or a count of them, may hash or sort in
/// (for this transaction).
/// With the default 4MB the join with 1 M keys spilled to disk in batches:
/// 2.4–3.0 s against 1.6–2.0 s in memory (a range DELETE of the same rows,
/// the floor: 0.55–0.85 s; PostgreSQL 15, pgbench_accounts at scale 10).
const LARGE_WORK_MEM: &str = "64MB";

/// Gives the rest of this transaction at least [`LARGE_WORK_MEM`] (never
/// less than the role already has); a statement ending in `; `.
pub fn raise_work_mem() -> String {
    format!(
        "SELECT set_config('work_mem', '{LARGE_WORK_MEM}', true) \
          WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes('{LARGE_WORK_MEM}'); "
    )
}

/// Deletes the keys loaded into the temp table `keys` (`loaded` of them).
/// It is one message (one simple query), sent when the future is first
/// polled: a statement polled after it on the same connection runs after it.
pub async fn delete_loaded(client: &Client, db: &str, keys: &str, table: &TableSpec, loaded: u64) -> Result<u64> {
    if loaded == 0 {
        return Ok(0);
    }
    let key_table = quote_ident(keys);
    let join_delete = format!(
        "DELETE FROM {} t USING {} k WHERE {}",
        table.quoted(),
        loaded_keys(keys, loaded),
        table.key_join("t", "k")
    );
    // The statements whose counts are the deletes' (the last ones).
    let mut deletes = 1;
    let sql = if loaded > LARGE_DELETE_KEYS {
        // Without statistics the planner guesses the key table is tiny; and a
        // join of many keys needs room (never less than the role already has).
        let work_mem = raise_work_mem();
        match integer_key(table) {
            Some(key) => {
                deletes = 2;
                range_or_join_delete(table, &key_table, &key, &work_mem, &join_delete)
            }
            None => format!("ANALYZE pg_temp.{key_table}; {work_mem}{join_delete}"),
        }
    } else {
        join_delete
    };
    let counts = delete_counts(client, db, table, &sql).await?;
    // The deletes' counts come last (the prelude's before them); with a
    // range check, one of its two deletes did the work and the other none.
    Ok(counts.iter().rev().take(deletes).sum())
}

/// Deletes the rows whose integer key lies in the range (every key of it
/// changed: see `Cycle::changed_range`). One message, like
/// [`delete_loaded`], so a statement polled after it runs after it.
pub async fn delete_range(client: &Client, db: &str, table: &TableSpec, range: &KeyRange) -> Result<u64> {
    let sql = format!("DELETE FROM {} t WHERE {}", table.quoted(), range.condition("t"));
    Ok(delete_counts(client, db, table, &sql).await?.iter().sum())
}

/// Runs `sql` in one simple query (which returns the counts without a
/// separate prepare); the count of each statement, in order.
async fn delete_counts(client: &Client, db: &str, table: &TableSpec, sql: &str) -> Result<Vec<u64>> {
    let messages =
        client.simple_query(sql).await.ctx(|| format!("deleting changed rows of {} on db {db}", table.name))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect())
}

/// Integer keys `lo..=hi` of one key column, every one of them changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The key column, quoted.
    pub key: String,
    pub lo: i64,
    pub hi: i64,
}

impl KeyRange {
    /// The range as a condition on the rows of `alias`.
    pub fn condition(&self, alias: &str) -> String {
        format!("{alias}.{} BETWEEN {} AND {}", self.key, self.lo, self.hi)
    }
}

/// The key's quoted name when it is one integer column: a set of such
/// keys with no gap is a range, deleted as one.
pub fn integer_key(table: &TableSpec) -> Option<String> {
    use tokio_postgres::types::Type;
    match table.key.as_slice() {
        [key] if [Type::INT2.oid(), Type::INT4.oid(), Type::INT8.oid()].contains(&key.type_oid) => {
            Some(quote_ident(&key.name))
        }
        _ => None,
    }
}

/// Where the loaded keys have no gap (`lo..=hi`, as many keys as the
/// range holds), the transaction setting it records: `lo,hi`, else empty.
const KEY_RANGE_SETTING: &str = "ibex.key_range";

/// Deletes the loaded integer keys as the range they fill when they fill
/// one (a bulk change of consecutive ids: a range scan, like a hand-written
/// DELETE, where the join with 1 M keys took twice as long), else by the
/// join. Both are sent; the setting's one-time filter runs exactly one.
/// Only the join needs the key table analyzed (72 ms for 1 M keys).
fn range_or_join_delete(table: &TableSpec, key_table: &str, key: &str, work_mem: &str, join_delete: &str) -> String {
    // NULL without a range: the bounds are computed even where the filter
    // stops the delete, and '' is no int8.
    let bound = |n: u8| format!("nullif(split_part(current_setting('{KEY_RANGE_SETTING}'), ',', {n}), '')::int8");
    format!(
        "SELECT set_config('{KEY_RANGE_SETTING}', coalesce((SELECT min({key})::text || ',' || max({key})::text
            FROM pg_temp.{key_table} HAVING max({key})::numeric - min({key})::numeric + 1 = count(*)), ''), true);
         DO $ibex$ BEGIN IF current_setting('{KEY_RANGE_SETTING}') = '' THEN ANALYZE pg_temp.{key_table}; END IF; END $ibex$;
         {work_mem}DELETE FROM {} t WHERE current_setting('{KEY_RANGE_SETTING}') <> '' AND t.{key} BETWEEN {} AND {};
         {join_delete} AND current_setting('{KEY_RANGE_SETTING}') = ''",
        table.quoted(),
        bound(1),
        bound(2),
    )
}
