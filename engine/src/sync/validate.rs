//! Checks that every table of a sync has the same columns, types and key
//! on every db, and works out how to copy it. The result (`TableSpec`s in
//! foreign-key order) is what the KID runs with.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::plan::Plan;
use crate::error::{Error, PgContext, Result};
use crate::pg::QualifiedName;
use crate::pg::introspect::{self, LiveColumn};
pub use crate::target::TableSpec;

/// What `check_tables` found: the tables that match on every db, and the
/// differences, per table (a `ddl=pause` sync holds those tables back)
/// and of the sync as a whole (missing sequences, unmappable types).
#[derive(Debug, Default)]
pub struct Checked {
    /// Tables that match everywhere, in foreign-key order.
    pub specs: Vec<TableSpec>,
    pub drift: Vec<Drift>,
    pub other: Vec<String>,
    /// Sources whose delta tables an earlier ibex wrote: a run cannot read
    /// them until `ibex validate` converts them (which is why this is not
    /// among the problems that stop validate itself).
    pub earlier_layout: Vec<String>,
}

/// How one table differs between the sync's dbs.
#[derive(Debug, Clone)]
pub struct Drift {
    pub table: QualifiedName,
    pub problems: Vec<String>,
}

impl Checked {
    pub fn is_clean(&self) -> bool {
        self.drift.is_empty() && self.other.is_empty()
    }

    /// Every difference, in table order, then the sync's own.
    pub fn problems(&self) -> Vec<String> {
        self.drift.iter().flat_map(|d| d.problems.iter().cloned()).chain(self.other.iter().cloned()).collect()
    }

    /// The specs, or the error naming every difference.
    pub fn strict(self, plan: &Plan) -> Result<Vec<TableSpec>> {
        if self.is_clean() {
            Ok(self.specs)
        } else {
            Err(Error::Schema(format!("sync {} cannot run: {}", plan.sync.name, self.problems().join("; "))))
        }
    }
}

/// Reads every table on every db and compares them with the primary
/// source. All differences are reported at once.
pub async fn check(plan: &Plan, clients: &[&Client]) -> Result<Vec<TableSpec>> {
    check_tables(plan, clients).await?.strict(plan)
}

/// Like `check`, but a table that differs is left out of the specs and
/// named in `drift` instead of failing the whole check.
pub async fn check_tables(plan: &Plan, clients: &[&Client]) -> Result<Checked> {
    let primary = plan.primary_source().index();
    let mut specs = Vec::new();
    let mut drift = Vec::new();
    for table in &plan.tables {
        let mut problems = Vec::new();
        let mut per_db = Vec::new();
        for (i, db) in plan.dbs.iter().enumerate() {
            match introspect::columns(clients[i], &table.name).await? {
                Some(cols) => per_db.push(Some(cols)),
                None => {
                    problems.push(format!("table {} is missing on db {}", table.name, db.name));
                    per_db.push(None);
                }
            }
        }
        let Some(reference) = per_db[primary].clone() else {
            drift.push(Drift { table: table.name.clone(), problems });
            continue;
        };
        for (i, cols) in per_db.iter().enumerate() {
            let Some(cols) = cols else { continue };
            if i != primary {
                compare(&table.name, &plan.dbs[primary].name, &reference, &plan.dbs[i].name, cols, &mut problems);
            }
            if plan.dbs[i].reads_wal()
                && let Some(why) = wal_identity_problem(clients[i], &table.name, &table.key).await?
            {
                problems.push(format!("table {} on db {} (capture=wal): {why}", table.name, plan.dbs[i].name));
            }
            if !introspect::has_key(clients[i], &table.name, &table.key).await? {
                problems.push(format!(
                    "table {} on db {} has no primary key or unique NOT NULL index on ({})",
                    table.name,
                    plan.dbs[i].name,
                    table.key.join(", ")
                ));
            }
        }
        let mut key = Vec::new();
        for col in &table.key {
            match reference.iter().find(|c| &c.name == col) {
                Some(c) if c.oids_in_binary => problems.push(format!(
                    "key column {col} of table {} has type {}, an array or composite of a user-defined type, which ibex cannot use as a key",
                    table.name, c.type_sql
                )),
                Some(c) if crate::capture::delta::OWN_NAMES.contains(&c.name.as_str()) => problems.push(format!(
                    "key column {col} of table {} has a name ibex's delta table uses for a column of its own ({}), so ibex cannot capture the table by it: key it by a unique index on other NOT NULL columns (pkey=col[,col]), or rename the column",
                    table.name,
                    crate::capture::delta::OWN_NAMES.join(", ")
                )),
                Some(c) => key.push(c.clone()),
                None => problems.push(format!("key column {col} of table {} is missing", table.name)),
            }
        }
        if !problems.is_empty() {
            drift.push(Drift { table: table.name.clone(), problems });
            continue;
        }
        let columns: Vec<LiveColumn> = reference.iter().filter(|c| !c.generated).cloned().collect();
        specs.push(TableSpec {
            id: table.id,
            name: table.name.clone(),
            key,
            text_format: columns.iter().any(|c| c.oids_in_binary),
            columns,
            capture_old: table.capture_old,
        });
    }
    let mut problems = Vec::new();
    for seq in &plan.sequences {
        for (i, db) in plan.dbs.iter().enumerate() {
            let row = clients[i]
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass($1) AND relkind = 'S')",
                    &[&seq.quoted()],
                )
                .await
                .map_err(|e| Error::Postgres {
                    context: format!("looking up sequence {seq} on db {}", db.name),
                    source: e,
                })?;
            if !row.get::<_, bool>(0) {
                problems.push(format!("sequence {seq} is missing on db {}", db.name));
            }
        }
    }
    let mut earlier_layout = Vec::new();
    for (i, db) in plan.dbs.iter().enumerate() {
        if db.reads_wal() {
            problems.extend(wal_server_problems(clients[i], &db.name, &plan.catalog_id).await?);
        }
        if db.role == crate::catalog::Role::Source {
            earlier_layout.extend(earlier_layout_problem(clients[i], &db.name, &plan.sync.name).await?);
        }
    }
    problems.extend(crate::target::unmappable(&plan.foreign, &specs));
    let fks =
        introspect::foreign_keys(clients[primary], &specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>()).await?;
    Ok(Checked { specs: dependency_order(specs, &fks), drift, other: problems, earlier_layout })
}

/// Delta tables an earlier ibex wrote (a row per changed row) are read
/// only once converted: capture is reconciled explicitly, since the
/// conversion locks the user's tables for a moment.
async fn earlier_layout_problem(client: &Client, db: &str, sync: &str) -> Result<Option<String>> {
    let installed: bool = client
        .query_one("SELECT to_regclass('ibex.captured') IS NOT NULL", &[])
        .await
        .ctx(|| format!("looking for capture on db {db}"))?
        .get(0);
    if !installed {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT string_agg(c.schema_name || '.' || c.rel_name, ', ' ORDER BY c.schema_name, c.rel_name) FROM ibex.captured c
              WHERE coalesce(to_jsonb(c) ->> 'layout', 'row') <> $1",
            &[&crate::capture::delta::LAYOUT],
        )
        .await
        .ctx(|| format!("checking the delta tables on db {db}"))?;
    Ok(row.get::<_, Option<String>>(0).map(|tables| {
        format!(
            "db {db} holds delta tables of an earlier ibex ({tables}): run `ibex validate {sync}` to convert them, with their pending changes, to this version's layout"
        )
    }))
}

/// Why a WAL-captured table's decoded DELETEs and key changes would lack
/// the key: its REPLICA IDENTITY must hold every key column.
async fn wal_identity_problem(client: &Client, table: &QualifiedName, key: &[String]) -> Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT c.relreplident::text,
                    coalesce((SELECT array_agg(a.attname::text) FROM pg_index i
                                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                               WHERE i.indrelid = c.oid
                                 AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))),
                             '{}')
               FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&table.quoted()],
        )
        .await
        .ctx(|| format!("reading the replica identity of {table}"))?;
    let Some(row) = row else { return Ok(None) };
    let identity: String = row.get(0);
    let columns: Vec<String> = row.get(1);
    if identity == "f" || key.iter().all(|k| columns.contains(k)) && identity != "n" {
        return Ok(None);
    }
    Ok(Some(format!(
        "its REPLICA IDENTITY does not hold the key ({}), so a decoded DELETE or key change would come without it: `ALTER TABLE {} REPLICA IDENTITY FULL`, or make ({}) its primary key",
        key.join(", "),
        table.quoted(),
        key.join(", ")
    )))
}

/// What a server lacks for WAL capture: `wal_level = logical`, and the
/// catalog's slot for the db (which `ibex update db DB capture=wal`
/// creates, given a free `max_replication_slots`).
async fn wal_server_problems(client: &Client, db: &str, catalog_id: &str) -> Result<Vec<String>> {
    let slot = crate::capture::wal_slot_of(client, catalog_id).await?;
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1
                               AND plugin = 'test_decoding' AND database = current_database())",
            &[&slot],
        )
        .await
        .ctx(|| format!("checking WAL capture on db {db}"))?;
    let wal_level: String = row.get(0);
    let free: i32 = row.get(1);
    let has_slot: bool = row.get(2);
    let lost = crate::capture::slot_state(client, &slot).await? == crate::capture::SlotState::Lost;
    let mut problems = Vec::new();
    if wal_level != "logical" {
        problems.push(format!(
            "db {db} has capture=wal but wal_level = {wal_level}: set wal_level = logical and restart PostgreSQL (on a managed service, turn on its logical replication setting), or `ibex update db {db} capture=trigger`"
        ));
    }
    if lost {
        problems.push(format!(
            "db {db} has capture=wal but the server invalidated its capture slot {slot} ({}), so changes were lost: run `ibex update db {db} capture=wal` to replace it, then `ibex reconcile` for each sync reading db {db}",
            crate::capture::LOST_SLOT_WHY
        ));
    } else if !has_slot {
        problems.push(format!(
            "db {db} has capture=wal but no capture slot{}: run `ibex update db {db} capture=wal` to create it",
            if free <= 0 {
                " and no free replication slot (raise max_replication_slots and restart PostgreSQL)"
            } else {
                ""
            }
        ));
    }
    Ok(problems)
}

/// Per db, the fingerprint of the sync's tables' columns (`shape`).
pub async fn shapes(plan: &Plan, clients: &[&Client], shape: &str) -> Result<Vec<String>> {
    let mut shapes = Vec::with_capacity(clients.len());
    for (client, db) in clients.iter().zip(&plan.dbs) {
        let row = client
            .query_one(shape, &[])
            .await
            .ctx(|| format!("reading the columns of the sync's tables on db {}", db.name))?;
        shapes.push(row.try_get::<_, String>(0).ctx(|| "reading a column fingerprint".into())?);
    }
    Ok(shapes)
}

fn compare(
    table: &QualifiedName,
    ref_db: &str,
    reference: &[LiveColumn],
    db: &str,
    cols: &[LiveColumn],
    problems: &mut Vec<String>,
) {
    for r in reference {
        match cols.iter().find(|c| c.name == r.name) {
            None => problems.push(format!("table {table} on db {db} lacks column {} ({})", r.name, r.type_sql)),
            Some(c) if c.type_sql != r.type_sql => problems.push(format!(
                "column {}.{} is {} on db {db} but {} on db {ref_db}",
                table, r.name, c.type_sql, r.type_sql
            )),
            Some(c) if c.generated != r.generated => problems.push(format!(
                "column {}.{} is {}generated on db {db} but {}generated on db {ref_db}",
                table,
                r.name,
                if c.generated { "" } else { "not " },
                if r.generated { "" } else { "not " }
            )),
            Some(_) => {}
        }
    }
    for c in cols {
        if !reference.iter().any(|r| r.name == c.name) {
            problems.push(format!(
                "table {table} on db {db} has column {} ({}) that db {ref_db} lacks",
                c.name, c.type_sql
            ));
        }
    }
}

/// Referenced tables before the tables that reference them (cycles keep
/// their catalog order). Applies run in this order.
fn dependency_order(specs: Vec<TableSpec>, fks: &[(QualifiedName, QualifiedName)]) -> Vec<TableSpec> {
    let mut parents: BTreeMap<QualifiedName, BTreeSet<QualifiedName>> = BTreeMap::new();
    for (child, parent) in fks {
        if child != parent {
            parents.entry(child.clone()).or_default().insert(parent.clone());
        }
    }
    let mut ordered: Vec<TableSpec> = Vec::with_capacity(specs.len());
    let mut pending = specs;
    while !pending.is_empty() {
        let ready = pending.iter().position(|s| {
            parents.get(&s.name).is_none_or(|ps| {
                ps.iter().all(|p| ordered.iter().any(|o| &o.name == p) || !pending.iter().any(|q| &q.name == p))
            })
        });
        let next = pending.remove(ready.unwrap_or(0));
        ordered.push(next);
    }
    ordered
}
