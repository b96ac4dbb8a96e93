//! Are the dbs of a sync the same? Per table, each db sums a hash of every
//! row into buckets by key hash, in the database (one pass, nothing but 256
//! small rows over the wire); buckets that differ are then read key by key
//! to name the differing keys. `reconcile` repairs them through the normal
//! apply path by marking them changed on the sources.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::Client;

use super::plan::{DbId, Plan};
use super::validate::TableSpec;
use crate::catalog::Role;
use crate::error::{PgContext, Result};
use crate::pg::{QualifiedName, quote_ident};
use crate::sync::progress::Progress;

/// Buckets per table: enough to narrow a difference to a few thousand rows
/// of a million-row table.
const BUCKETS: i64 = 256;

#[derive(Debug, Clone, Serialize)]
pub struct DbCount {
    pub db: String,
    pub rows: i64,
}

/// One key whose row is not the same everywhere.
#[derive(Debug, Clone, Serialize)]
pub struct KeyDiff {
    /// The key as text (`42`, `(7,abc)`).
    pub key: String,
    /// The key's columns as text, for repairing it.
    #[serde(skip)]
    pub parts: Vec<String>,
    /// The dbs that have a row for the key, grouped by identical rows.
    pub versions: Vec<Vec<String>>,
    /// The dbs without the key.
    pub missing_on: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableDiff {
    pub table: String,
    pub identical: bool,
    pub counts: Vec<DbCount>,
    pub differing_buckets: usize,
    /// Filled when asked for rows (or to reconcile).
    pub keys: Vec<KeyDiff>,
}

fn key_text(table: &TableSpec, alias: &str) -> String {
    if let [key] = table.key.as_slice() {
        key.as_text(&format!("{alias}.{}", quote_ident(&key.name)))
    } else {
        format!("ROW({})::text", table.key_list_of(alias))
    }
}

/// The row as text, the same on every major: floats by their bits (their
/// text form differs between 10-11 and 12+ even with pinned settings).
fn row_text(table: &TableSpec, alias: &str) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let col = format!("{alias}.{}", quote_ident(&c.name));
            match c.type_oid {
                700 => format!("float4send({col})"),
                701 => format!("float8send({col})"),
                _ => col,
            }
        })
        .collect();
    format!("ROW({})::text", columns.join(", "))
}

/// A 64-bit hash of a text expression that every supported major computes
/// alike (md5 is in all of them; `hashtextextended` is not in 10, and its
/// results are only promised stable, not equal across builds).
fn hash64(text: &str) -> String {
    format!("('x' || left(md5({text}), 16))::bit(64)::int8")
}

/// bucket -> (rows, sum of row hashes as text)
async fn buckets(
    client: &Client,
    table: &TableSpec,
) -> std::result::Result<BTreeMap<i64, (i64, String)>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {key} & {mask}, count(*), sum({row}::numeric)::text
           FROM {table} t GROUP BY 1",
        key = hash64(&key_text(table, "t")),
        mask = BUCKETS - 1,
        row = hash64(&row_text(table, "t")),
        table = table.quoted()
    );
    let rows = client.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| (r.get::<_, i64>(0), (r.get::<_, i64>(1), r.get::<_, String>(2)))).collect())
}

/// key text -> (key parts, row hash), for the rows of some buckets.
async fn rows_of(
    client: &Client,
    table: &TableSpec,
    wanted: &[i64],
) -> std::result::Result<BTreeMap<String, (Vec<String>, i64)>, tokio_postgres::Error> {
    let parts: Vec<String> = table.key.iter().map(|c| c.as_text(&format!("t.{}", quote_ident(&c.name)))).collect();
    let sql = format!(
        "SELECT {key}, ARRAY[{parts}]::text[], {row} FROM {table} t
          WHERE {key_hash} & {mask} = ANY($1)",
        key = key_text(table, "t"),
        key_hash = hash64(&key_text(table, "t")),
        mask = BUCKETS - 1,
        parts = parts.join(", "),
        row = hash64(&row_text(table, "t")),
        table = table.quoted()
    );
    let rows = client.query(&sql, &[&wanted]).await?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), (r.get::<_, Vec<String>>(1), r.get::<_, i64>(2)))).collect())
}

/// Compares each table (or the one named) on every db of the sync.
pub async fn compare(
    plan: &Plan,
    clients: &[&Client],
    specs: &[TableSpec],
    only: Option<&QualifiedName>,
    with_keys: bool,
) -> Result<Vec<TableDiff>> {
    let mut out = Vec::new();
    let tables: Vec<&TableSpec> = specs.iter().filter(|t| only.is_none_or(|o| &t.name == o)).collect();
    let mut progress = Progress::new(format!("sync {}: compare", plan.sync.name), "rows", None);
    if let Some(total) = estimate_rows(plan, clients, &tables).await {
        progress.set_total(Some(total), true);
    }
    for table in tables {
        let mut per_db = Vec::new();
        for (client, db) in clients.iter().zip(&plan.dbs) {
            let hashed = buckets(client, table).await.ctx(|| format!("hashing {} on db {}", table.name, db.name))?;
            progress.set_detail(format!("{} on db {}", table.name, db.name));
            progress.advance(hashed.values().map(|(n, _)| *n).sum::<i64>().max(0) as u64);
            per_db.push(hashed);
        }
        let all: BTreeSet<i64> = per_db.iter().flat_map(|b| b.keys().copied()).collect();
        let differing: Vec<i64> =
            all.into_iter().filter(|b| per_db.iter().any(|m| m.get(b) != per_db[0].get(b))).collect();
        let counts = per_db
            .iter()
            .zip(&plan.dbs)
            .map(|(m, d)| DbCount { db: d.name.clone(), rows: m.values().map(|(n, _)| n).sum() })
            .collect();
        let mut diff = TableDiff {
            table: table.name.to_string(),
            identical: differing.is_empty(),
            counts,
            differing_buckets: differing.len(),
            keys: Vec::new(),
        };
        if with_keys && !differing.is_empty() {
            let mut seen: Vec<BTreeMap<String, (Vec<String>, i64)>> = Vec::new();
            for (client, db) in clients.iter().zip(&plan.dbs) {
                seen.push(
                    rows_of(client, table, &differing)
                        .await
                        .ctx(|| format!("reading keys of {} on db {}", table.name, db.name))?,
                );
            }
            let keys: BTreeSet<&String> = seen.iter().flat_map(|m| m.keys()).collect();
            for key in keys {
                let hashes: Vec<Option<i64>> = seen.iter().map(|m| m.get(key).map(|(_, h)| *h)).collect();
                if hashes.iter().all(|h| *h == hashes[0]) {
                    continue;
                }
                let parts = seen.iter().find_map(|m| m.get(key).map(|(p, _)| p.clone())).unwrap_or_default();
                let mut versions: Vec<(i64, Vec<String>)> = Vec::new();
                let mut missing_on = Vec::new();
                for (h, db) in hashes.iter().zip(&plan.dbs) {
                    match h {
                        None => missing_on.push(db.name.clone()),
                        Some(h) => match versions.iter_mut().find(|(v, _)| v == h) {
                            Some((_, dbs)) => dbs.push(db.name.clone()),
                            None => versions.push((*h, vec![db.name.clone()])),
                        },
                    }
                }
                diff.keys.push(KeyDiff {
                    key: key.clone(),
                    parts,
                    versions: versions.into_iter().map(|(_, d)| d).collect(),
                    missing_on,
                });
            }
        }
        out.push(diff);
    }
    progress.finish();
    Ok(out)
}

/// The rows compare will hash: each db's `reltuples` of the tables, summed;
/// None when any is unknown (never analyzed) or cannot be read.
async fn estimate_rows(plan: &Plan, clients: &[&Client], tables: &[&TableSpec]) -> Option<u64> {
    let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
    let mut total = 0.0;
    for (client, db) in clients.iter().zip(&plan.dbs) {
        // Outside any transaction: a failure here only costs the ETA.
        let row = client
            .query_one(
                "SELECT coalesce(sum(c.reltuples::float8), 0), coalesce(bool_and(c.reltuples >= 1), true)
                   FROM unnest($1::text[]) n(name) JOIN pg_class c ON c.oid = n.name::regclass",
                &[&names],
            )
            .await
            .inspect_err(|e| tracing::debug!(db = %db.name, error = %e, "no row estimate for compare"))
            .ok()?;
        if !row.get::<_, bool>(1) {
            return None;
        }
        total += row.get::<_, f64>(0);
    }
    Some(total as u64)
}

/// Where reconcile marks a differing key changed, so that the next cycle
/// settles it like any change: on the one source of a one-way sync (its
/// rows win, extra rows on targets go); on every source holding a version
/// when the sources disagree (the conflict strategy decides, ties by
/// priority then name, as the marks share one change time); on one source
/// holding it when only some dbs lack it; on the first source when no
/// source has it (it is removed everywhere).
pub fn marks_for(plan: &Plan, key: &KeyDiff) -> Vec<DbId> {
    let sources: Vec<DbId> = plan.sources().collect();
    if sources.len() == 1 {
        return sources;
    }
    let holders: Vec<DbId> =
        sources.iter().copied().filter(|&s| key.versions.iter().any(|v| v.contains(&plan.db(s).name))).collect();
    let source_versions = key
        .versions
        .iter()
        .filter(|v| v.iter().any(|db| plan.dbs.iter().any(|d| &d.name == db && d.role == Role::Source)))
        .count();
    match (holders.first(), source_versions) {
        (None, _) => sources.into_iter().take(1).collect(),
        (Some(_), n) if n > 1 => holders,
        (Some(&first), _) => vec![first],
    }
}

/// Marks keys changed on one source (autocommit): they are in the next window.
pub async fn mark(client: &Client, table: &TableSpec, keys: &[&KeyDiff], at: &str) -> Result<u64> {
    let delta = table.delta_table();
    let values: Vec<String> = table
        .delta_keys()
        .iter()
        .enumerate()
        .map(|(i, k)| k.single(&format!("${}::text::{}", i + 2, k.type_sql)))
        .collect();
    let sql = format!(
        "INSERT INTO {delta} ({}, changed_at) VALUES ({}, $1::text::timestamptz)",
        table.key_list(),
        values.join(", ")
    );
    let statement = client.prepare(&sql).await.ctx(|| format!("preparing marks for {}", table.name))?;
    let mut n = 0;
    for key in keys {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&at];
        for part in &key.parts {
            params.push(part);
        }
        n += client.execute(&statement, &params).await.ctx(|| format!("marking {} of {}", key.key, table.name))?;
    }
    Ok(n)
}
