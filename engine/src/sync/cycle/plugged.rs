//! The merge path with a WebAssembly conflict handler: conflicts are
//! batched, each version's current row is read from its db, the plugin
//! decides the batch, and its answer becomes what the chunk applies.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use tokio_postgres::types::ToSql;

use super::Cycle;
use super::merge::{Apply, Chunk, PLUGIN_BATCH, Pending};
use crate::catalog::{ConflictRecord, Role};
use crate::conflict::Decision;
use crate::error::{Error, PgContext, PluginCause, PluginFailure, Result};
use crate::pg::copy::RawValue;
use crate::pg::keyarray::{KeyColumnArray, key_columns};
use crate::pg::pipeline::try_join;
use crate::pg::quote_ident;
use crate::plugin::bindings::conflicts::{self as wit, Conflict, Operation, Verdict};
use crate::plugin::bindings::types::{Column, SyncInfo, TableInfo};
use crate::plugin::convert::{self, ColumnKind};
use crate::plugin::{LoadedPlugin, OnError, Value};
use crate::sync::plan::{DbId, TableId};

/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

type Fetched = HashMap<Vec<Vec<u8>>, (Vec<Value>, Option<Vec<Value>>)>;

impl<'a> Cycle<'a> {
    pub(super) fn sync_info(&self, plugin: &LoadedPlugin) -> SyncInfo {
        crate::sync::hooks::sync_info(self.plan, plugin)
    }

    pub(super) fn table_info(&self, ti: TableId) -> TableInfo {
        let table = self.table(ti);
        TableInfo {
            schema: table.name.schema.clone(),
            name: table.name.name.clone(),
            columns: table
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    type_name: c.type_sql.clone(),
                    key: table.key.iter().any(|k| k.name == c.name),
                })
                .collect(),
        }
    }

    fn log_plugin_decision(&mut self, ti: TableId, pending: &Pending, winner: Option<DbId>, reason: String) {
        if self.conflict_log.len() >= self.plan.settings.conflict_log_limit {
            return;
        }
        self.conflict_log.push(ConflictRecord {
            table: self.table(ti).name.to_string(),
            key: pending.shown.clone(),
            dbs: pending.versions.iter().map(|v| self.plan.db(v.db).name.clone()).collect(),
            winner: winner.map(|w| self.plan.db(w).name.clone()),
            reason,
        });
    }

    /// Decides a batch of conflicts with the sync's conflict handler.
    pub(super) async fn decide_with_plugin(
        &mut self,
        ti: TableId,
        batch: Vec<Pending>,
        chunk: &mut Chunk,
    ) -> Result<()> {
        let Some(plugin) = self.conflict_plugin else {
            return Err(Error::Sync("no conflict handler is loaded".into()));
        };
        // A winner chosen "always" decides without asking again.
        if let Some(db) = self.sync_winner.or_else(|| self.table_winner.get(&ti).copied()) {
            for p in batch {
                self.log_plugin_decision(ti, &p, Some(db), format!("plugin {} (always)", plugin.name));
                chunk.push((p.fields, Apply::From(db)));
            }
            return Ok(());
        }
        let step = Instant::now();
        let conflicts = self.conflicts_for_plugin(ti, &batch).await?;
        let fetched = step.elapsed();
        let kinds: Vec<ColumnKind> = self.table(ti).columns.iter().map(|c| ColumnKind::of(c.type_oid)).collect();
        let sync = self.sync_info(plugin);
        let table = self.table_info(ti);
        let outcome =
            crate::plugin::conflict::resolve(plugin, self.host_dbs.clone(), &sync, &table, &kinds, &conflicts).await;
        tracing::debug!(
            plugin = %plugin.name, table = %self.table(ti).name, conflicts = batch.len(),
            fetch_ms = fetched.as_secs_f64() * 1000.0, call_ms = (step.elapsed() - fetched).as_secs_f64() * 1000.0,
            "conflict batch decided by the plugin"
        );
        let verdict =
            outcome.and_then(|v| self.check_roles(v).map_err(|why| PluginCause::new(PluginFailure::Answer, why)));
        match verdict {
            Ok(verdict) => {
                self.apply_verdict(ti, plugin, verdict, batch, chunk);
                Ok(())
            }
            Err(cause) => match &plugin.manifest.on_error {
                OnError::Abort => Err(Error::plugin(
                    cause.failure,
                    format!(
                        "plugin {} failed deciding {} conflict{} of table {} in sync {}: {cause}; nothing was applied and the changes stay pending (on_error=abort)",
                        plugin.name,
                        batch.len(),
                        if batch.len() == 1 { "" } else { "s" },
                        self.table(ti).name,
                        self.plan.sync.name
                    ),
                )),
                OnError::Fallback(strategy) => {
                    tracing::warn!(
                        plugin = %plugin.name, sync = %self.plan.sync.name, table = %self.table(ti).name,
                        fallback = %strategy, "conflict handler failed ({cause}); deciding with the fallback"
                    );
                    for p in batch {
                        let decision = self.resolver.decide(&p.versions).map_err(|_| {
                            Error::Sync(format!(
                                "plugin {} failed ({cause}) and its fallback {strategy} refused the conflicts of table {}",
                                plugin.name, self.table(ti).name
                            ))
                        })?;
                        self.log_conflict(ti, &p.shown, &p.versions, decision);
                        let apply = match decision {
                            Decision::Winner { db, .. } => Apply::From(db),
                            Decision::Skip => Apply::Skip,
                        };
                        chunk.push((p.fields, apply));
                    }
                    Ok(())
                }
            },
        }
    }

    /// Winners must be dbs that take changes (not fullcopy ones).
    fn check_roles(&self, verdict: Verdict) -> std::result::Result<Verdict, String> {
        let bad = |db: u32| self.plan.dbs.get(db as usize).is_none_or(|d| d.role == Role::Fullcopy);
        let named = match &verdict {
            Verdict::TableWinner(w) | Verdict::SyncWinner(w) => vec![w.db],
            Verdict::PerKey(ds) => {
                ds.iter().filter_map(|d| if let wit::Decision::Winner(db) = d { Some(*db) } else { None }).collect()
            }
        };
        match named.into_iter().find(|db| bad(*db)) {
            Some(db) => Err(format!("it named db #{db} as a winner, which is not a source or target of the sync")),
            None => Ok(verdict),
        }
    }

    fn apply_verdict(
        &mut self,
        ti: TableId,
        plugin: &LoadedPlugin,
        verdict: Verdict,
        batch: Vec<Pending>,
        chunk: &mut Chunk,
    ) {
        let whole = |db: u32| batch.iter().map(move |_| wit::Decision::Winner(db)).collect::<Vec<_>>();
        let decisions = match verdict {
            Verdict::PerKey(decisions) => decisions,
            Verdict::TableWinner(choice) => {
                if choice.always {
                    self.table_winner.insert(ti, DbId::new(choice.db as usize));
                }
                whole(choice.db)
            }
            Verdict::SyncWinner(choice) => {
                if choice.always {
                    self.sync_winner = Some(DbId::new(choice.db as usize));
                }
                whole(choice.db)
            }
        };
        for (p, decision) in batch.into_iter().zip(decisions) {
            let (apply, winner, reason) = match decision {
                wit::Decision::Winner(db) => {
                    let db = DbId::new(db as usize);
                    (Apply::From(db), Some(db), format!("plugin {}", plugin.name))
                }
                wit::Decision::Merged(row) => (Apply::Merged(row), None, format!("merged by plugin {}", plugin.name)),
                wit::Decision::Skip => (Apply::Skip, None, format!("skipped by plugin {}", plugin.name)),
            };
            self.log_plugin_decision(ti, &p, winner, reason);
            chunk.push((p.fields, apply));
        }
    }

    /// The batch as the plugin sees it: each version with the row as it is
    /// now on its db (read in the run's snapshot).
    async fn conflicts_for_plugin(&self, ti: TableId, batch: &[Pending]) -> Result<Vec<Conflict>> {
        debug_assert!(batch.len() <= PLUGIN_BATCH);
        let table = self.table(ti);
        let wants_rows = self.conflict_plugin.is_none_or(|p| p.manifest.rows);
        if !wants_rows {
            // Change times and dbs are enough: no rows are read, keys are
            // decoded from their binary form when their types allow.
            let decoded: Option<Vec<Conflict>> = batch
                .iter()
                .map(|p| {
                    let key = p
                        .fields
                        .iter()
                        .zip(&table.key)
                        .map(|(raw, col)| convert::from_binary(col.type_oid, raw))
                        .collect::<Option<Vec<Value>>>()?;
                    let versions = p
                        .versions
                        .iter()
                        .map(|v| wit::Version {
                            db: v.db.index() as u32,
                            changed_at: v.changed_at.saturating_add(PG_EPOCH_UNIX_MICROS),
                            operation: Operation::Update,
                            row: None,
                        })
                        .collect();
                    Some(Conflict { key, versions, base: None })
                })
                .collect();
            if let Some(conflicts) = decoded {
                return Ok(conflicts);
            }
        }
        let dbs: Vec<DbId> = batch
            .iter()
            .flat_map(|p| p.versions.iter().map(|v| v.db))
            .collect::<BTreeSet<DbId>>()
            .into_iter()
            .collect();
        let fields: Vec<&[Vec<u8>]> = batch.iter().map(|p| p.fields.as_slice()).collect();
        let keys = key_columns(&fields, table.key.len())
            .ok_or_else(|| Error::Sync(format!("a conflicting key of {} lacks a key column", table.name)))?;
        // Every db at once, each in one round trip (two with old images).
        let keys = &keys;
        let per_db = futures_util::future::try_join_all(dbs.iter().map(|&db| async move {
            let reads = async {
                if self.table(ti).capture_old { self.fetch_bases(ti, db, keys).await } else { Ok(HashMap::new()) }
            };
            let (rows, bases) = try_join(self.fetch_rows(ti, db, keys), reads).await?;
            Ok::<_, Error>((db, rows, bases))
        }))
        .await?;
        let mut fetched: HashMap<DbId, Fetched> = HashMap::new();
        let mut bases: HashMap<Vec<Vec<u8>>, (i64, Vec<Value>)> = HashMap::new();
        for (db, rows, db_bases) in per_db {
            fetched.insert(db, rows);
            // The earliest old image of the window on any source is the base.
            for (key, (at, row)) in db_bases {
                if bases.get(&key).is_none_or(|(best, _)| at < *best) {
                    bases.insert(key, (at, row));
                }
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for p in batch {
            let mut key = Vec::new();
            let mut versions = Vec::new();
            for v in &p.versions {
                // Each key is in a batch once, with one version per db: taken, not copied.
                let (key_values, row) = fetched.get_mut(&v.db).and_then(|f| f.remove(&p.fields)).unwrap_or_default();
                if key.is_empty() {
                    key = key_values;
                }
                versions.push(wit::Version {
                    db: v.db.index() as u32,
                    changed_at: v.changed_at.saturating_add(PG_EPOCH_UNIX_MICROS),
                    operation: if row.is_some() { Operation::Update } else { Operation::Delete },
                    row,
                });
            }
            let base = bases.remove(&p.fields).map(|(_, row)| row);
            if self.table(ti).capture_old && base.is_none() {
                // Old images are kept, yet none: the key is new in this window.
                for v in versions.iter_mut().filter(|v| v.row.is_some()) {
                    v.operation = Operation::Insert;
                }
            }
            out.push(Conflict { key, versions, base });
        }
        Ok(out)
    }

    /// Reads, on one source, the first old image in the window of each key
    /// of the batch (`keys`, see `pg::keyarray`), with its change time.
    async fn fetch_bases(
        &self,
        ti: TableId,
        db: DbId,
        keys: &[KeyColumnArray<'_>],
    ) -> Result<HashMap<Vec<Vec<u8>>, (i64, Vec<Value>)>> {
        let table = self.table(ti);
        let window = self.window(db)?;
        let sql = format!(
            "SELECT DISTINCT ON ({keys}) {keys}, d.old_row, (extract(epoch FROM d.changed_at) * 1000000)::int8
               FROM {delta} d JOIN {batch} ON {join}
              WHERE {window} AND d.old_row IS NOT NULL
              ORDER BY {keys}, d.txid, d.changed_at",
            keys = table.key_list_of("d"),
            delta = table.delta(),
            batch = table.key_arrays_as_k(),
            join = table.key_join("d", "k"),
        );
        let rows = self
            .query_keys(db, &sql, keys)
            .await
            .ctx(|| format!("reading old images of {} on db {}", table.name, self.plan.db(db).name))?;
        let kinds: Vec<ColumnKind> = table.columns.iter().map(|c| ColumnKind::of(c.type_oid)).collect();
        let nk = table.key.len();
        let mut out = HashMap::new();
        for row in rows {
            let read = |e| Error::Postgres { context: format!("reading an old image of {}", table.name), source: e };
            let mut fields = Vec::with_capacity(nk);
            for i in 0..nk {
                fields.push(row.try_get::<_, RawValue>(i).map_err(read)?.0);
            }
            let image: Vec<Option<String>> = row.try_get(nk).map_err(read)?;
            let at: i64 = row.try_get(nk + 1).map_err(read)?;
            // Images recorded before a column change do not fit: no base.
            if image.len() != kinds.len() {
                continue;
            }
            let values =
                image.iter().zip(&kinds).map(|(text, kind)| convert::from_text(text.as_deref(), *kind)).collect();
            out.insert(fields, (at, values));
        }
        Ok(out)
    }

    /// Reads, on one db, the key values and current row of every key of the
    /// batch (`keys`, see `pg::keyarray`).
    async fn fetch_rows(&self, ti: TableId, db: DbId, keys: &[KeyColumnArray<'_>]) -> Result<Fetched> {
        let table = self.table(ti);
        let key_kinds: Vec<ColumnKind> = table.key.iter().map(|c| ColumnKind::of(c.type_oid)).collect();
        let col_kinds: Vec<ColumnKind> = table.columns.iter().map(|c| ColumnKind::of(c.type_oid)).collect();
        let first_key = quote_ident(&table.key[0].name);
        let select: Vec<String> = table
            .key
            .iter()
            .map(|c| format!("k.{}", quote_ident(&c.name)))
            .chain(table.key.iter().zip(&key_kinds).map(|(c, kind)| kind.select("k", c)))
            .chain(std::iter::once(format!("t.{first_key} IS NOT NULL")))
            .chain(table.columns.iter().zip(&col_kinds).map(|(c, kind)| kind.select("t", c)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} LEFT JOIN {} t ON {}",
            select.join(", "),
            table.key_arrays_as_k(),
            table.quoted(),
            table.key_join("t", "k")
        );
        let rows = self
            .query_keys(db, &sql, keys)
            .await
            .ctx(|| format!("reading conflicting rows of {} on db {}", table.name, self.plan.db(db).name))?;
        let nk = table.key.len();
        let mut out = Fetched::new();
        for row in rows {
            let read = |e| Error::Postgres { context: format!("reading a row of {}", table.name), source: e };
            let mut fields = Vec::with_capacity(nk);
            for i in 0..nk {
                fields.push(row.try_get::<_, RawValue>(i).map_err(read)?.0);
            }
            let mut key = Vec::with_capacity(nk);
            for (i, kind) in key_kinds.iter().enumerate() {
                key.push(convert::from_row(&row, nk + i, *kind).map_err(read)?);
            }
            let present: bool = row.try_get(2 * nk).map_err(read)?;
            let values = if present {
                let mut values = Vec::with_capacity(col_kinds.len());
                for (i, kind) in col_kinds.iter().enumerate() {
                    values.push(convert::from_row(&row, 2 * nk + 1 + i, *kind).map_err(read)?);
                }
                Some(values)
            } else {
                None
            };
            out.insert(fields, (key, values));
        }
        Ok(out)
    }

    /// Runs `sql`, whose parameters are the batch's `keys`, on db `db`,
    /// kept prepared on its connection from run to run.
    async fn query_keys(
        &self,
        db: DbId,
        sql: &str,
        keys: &[KeyColumnArray<'_>],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let connection = self.connection(db);
        let client = &connection.client;
        let statement = connection.prepared.statement(client, sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> = keys.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
        client.query(&statement, &params).await
    }
}
