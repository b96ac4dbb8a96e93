//! Applying a table on one db under a savepoint, for syncs with an
//! `exception` hook (Bucardo's exception customcode): when the delete or a
//! copy fails there, the db rolls back to the savepoint, the hook sees the
//! error and the rows, may repair rows with `host.execute`, and asks to
//! retry, to leave some keys out, or to abort.

use super::{Cycle, temp_name};
use crate::catalog::ConflictRecord;
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::{copy_fanout, copy_in_bytes};
use crate::pg::quote_ident;
use crate::plugin::Value;
use crate::plugin::convert::{self, ColumnKind, push_copy_row};
use crate::plugin::hooks::{Failure, HookAction, HookPoint};
use crate::sync::plan::{DbId, TableId};

/// Tries per table and db before the run gives up.
const EXCEPTION_RETRIES: u32 = 5;
/// Rows shown to the hook.
const FAILURE_ROWS: usize = 1000;

impl<'a> Cycle<'a> {
    pub(super) fn guarded(&self) -> bool {
        self.hooks.at(HookPoint::Exception)
    }

    /// Copies rows into one db: undecoded, or through its transform.
    async fn copy_one(&self, ti: TableId, from: DbId, rows_from: &str, d: DbId) -> Result<u64> {
        if self.transform_for(ti, d).is_some() {
            return self.copy_transformed(ti, from, rows_from, d).await;
        }
        let table = self.table(ti);
        let out_sql = table.copy_out_sql(rows_from);
        let in_sql = crate::target::postgres::copy_in_sql(table);
        let counts = copy_fanout(self.client(from), &out_sql, &[self.receiver(d, in_sql)])
            .await
            .map_err(|e| self.table_error(e, ti))?;
        Ok(counts.first().copied().unwrap_or(0))
    }

    /// Replaces the key table `drop` on `db` with the dropped keys.
    async fn load_dropped(&self, ti: TableId, db: DbId, dropped: &[Vec<Value>]) -> Result<()> {
        let table = self.table(ti);
        let name = temp_name("drop", table);
        self.ensure_temp(db, &name, table).await?;
        let mut text = String::new();
        for key in dropped {
            push_copy_row(&mut text, key);
        }
        let sql = format!("COPY pg_temp.{} ({}) FROM STDIN", quote_ident(&name), table.key_list());
        copy_in_bytes(self.client(db), &sql, bytes::Bytes::from(text)).await?;
        Ok(())
    }

    /// The rows the copies would write (the first FAILURE_ROWS), typed.
    async fn failing_rows(&self, ti: TableId, copies: &[(DbId, String)], filter: &str) -> Result<Vec<Vec<Value>>> {
        let table = self.table(ti);
        let kinds: Vec<ColumnKind> = table.columns.iter().map(|c| ColumnKind::of(c.type_oid)).collect();
        let select: Vec<String> = table.columns.iter().zip(&kinds).map(|(c, k)| k.select("t", c)).collect();
        let mut out = Vec::new();
        for (from, rows_from) in copies {
            if out.len() >= FAILURE_ROWS {
                break;
            }
            let sql = format!("SELECT {} {rows_from}{filter} LIMIT {}", select.join(", "), FAILURE_ROWS - out.len());
            let rows =
                self.client(*from).query(&sql, &[]).await.ctx(|| format!("reading the rows of {}", table.name))?;
            for row in rows {
                let values = kinds
                    .iter()
                    .enumerate()
                    .map(|(i, k)| convert::from_row(&row, i, *k))
                    .collect::<std::result::Result<Vec<Value>, _>>()
                    .ctx(|| format!("reading a row of {}", table.name))?;
                out.push(values);
            }
        }
        Ok(out)
    }

    /// Deletes the loaded keys on `d`, then copies each source's rows into
    /// it, under a savepoint, with the exception hook on failure. Returns
    /// (deleted, inserted).
    pub(super) async fn apply_guarded(
        &mut self,
        ti: TableId,
        d: DbId,
        delete_keys: Option<&str>,
        copies: Vec<(DbId, String)>,
        merged: &[&[Value]],
    ) -> Result<(u64, u64)> {
        let table = self.table(ti);
        let drop = quote_ident(&temp_name("drop", table));
        let key_positions: Vec<usize> =
            table.key.iter().filter_map(|k| table.columns.iter().position(|c| c.name == k.name)).collect();
        let mut dropped: Vec<Vec<Value>> = Vec::new();
        let mut last_error = None;
        for attempt in 1..=EXCEPTION_RETRIES {
            let filter = if dropped.is_empty() {
                String::new()
            } else {
                format!(" AND NOT EXISTS (SELECT 1 FROM pg_temp.{drop} x WHERE {})", table.key_join("t", "x"))
            };
            let client = self.client(d);
            client.batch_execute("SAVEPOINT ibex_apply").await.ctx(|| "setting a savepoint".into())?;
            let attempt_result: Result<(u64, u64)> = async {
                let deleted = match delete_keys {
                    Some(keys) => client
                        .execute(
                            &format!(
                                "DELETE FROM {} t USING pg_temp.{} k WHERE {}{filter}",
                                table.quoted(),
                                quote_ident(keys),
                                table.key_join("t", "k")
                            ),
                            &[],
                        )
                        .await
                        .ctx(|| format!("deleting changed rows of {} on db {}", table.name, self.plan.db(d).name))?,
                    None => 0,
                };
                let mut inserted = 0;
                for (from, rows_from) in &copies {
                    inserted += self.copy_one(ti, *from, &format!("{rows_from}{filter}"), d).await?;
                }
                let keep: Vec<&&[Value]> = merged
                    .iter()
                    .filter(|row| {
                        let key: Vec<Value> = key_positions.iter().map(|&i| row[i].clone()).collect();
                        !dropped.iter().any(|k| format!("{k:?}") == format!("{key:?}"))
                    })
                    .collect();
                if !keep.is_empty() {
                    let mut text = String::new();
                    for row in keep {
                        push_copy_row(&mut text, row);
                    }
                    let sql = format!("COPY {} ({}) FROM STDIN", table.quoted(), table.column_list());
                    inserted += copy_in_bytes(client, &sql, bytes::Bytes::from(text)).await?;
                }
                Ok((deleted, inserted))
            }
            .await;
            let err = match attempt_result {
                Ok(counts) => {
                    client
                        .batch_execute("RELEASE SAVEPOINT ibex_apply")
                        .await
                        .ctx(|| "releasing a savepoint".into())?;
                    return Ok(counts);
                }
                Err(err) => err,
            };
            let Some(db_error) = (match &err {
                Error::Postgres { source, .. } => source.as_db_error().cloned(),
                _ => None,
            }) else {
                return Err(err);
            };
            client
                .batch_execute("ROLLBACK TO SAVEPOINT ibex_apply")
                .await
                .ctx(|| "rolling back to the savepoint".into())?;
            let failure = Failure {
                db: d.index() as u32,
                table: self.table_info(ti),
                sqlstate: db_error.code().code().to_string(),
                message: db_error.message().to_string(),
                constraint: db_error.constraint().map(str::to_string),
                rows: self.failing_rows(ti, &copies, &filter).await?,
                attempt,
            };
            match self.hooks.run(self.plan, &self.host_dbs, HookPoint::Exception, Some(failure)).await? {
                Some((HookAction::Retry, plugin)) => {
                    tracing::info!(plugin = %plugin.name, table = %table.name, db = %self.plan.db(d).name, attempt, "exception hook asked to retry");
                }
                Some((HookAction::DropKeys(keys), plugin)) => {
                    tracing::info!(plugin = %plugin.name, table = %table.name, db = %self.plan.db(d).name, keys = keys.len(), "exception hook left keys out");
                    for key in &keys {
                        if self.conflict_log.len() < self.plan.settings.conflict_log_limit {
                            self.conflict_log.push(ConflictRecord {
                                table: table.name.to_string(),
                                key: key
                                    .iter()
                                    .map(|v| convert::to_text(v).unwrap_or_else(|| "NULL".into()))
                                    .collect::<Vec<_>>()
                                    .join(","),
                                dbs: vec![self.plan.db(d).name.clone()],
                                winner: None,
                                reason: format!(
                                    "left out on db {} by hook {} after: {}",
                                    self.plan.db(d).name,
                                    plugin.name,
                                    db_error.message()
                                ),
                            });
                        }
                    }
                    dropped.extend(keys);
                    self.load_dropped(ti, d, &dropped).await?;
                    for (from, _) in &copies {
                        if *from != d {
                            self.load_dropped(ti, *from, &dropped).await?;
                        }
                    }
                }
                Some((HookAction::Abort(message), plugin)) => {
                    return Err(Error::plugin(
                        crate::error::PluginFailure::Error,
                        format!(
                            "exception hook of plugin {} aborted the run after {} on table {} of db {}: {message}",
                            plugin.name,
                            db_error.message(),
                            table.name,
                            self.plan.db(d).name
                        ),
                    ));
                }
                _ => return Err(err),
            }
            last_error = Some(err);
        }
        Err(Error::Sync(format!(
            "table {} on db {} still fails after {EXCEPTION_RETRIES} tries under the exception hook: {}",
            table.name,
            self.plan.db(d).name,
            last_error.map(|e| e.to_string()).unwrap_or_default()
        )))
    }
}
