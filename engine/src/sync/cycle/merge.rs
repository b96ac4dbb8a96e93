//! Tables changed on several sources: their changed keys merged in key
//! order across the sources, each key changed on more than one settled by
//! the strategy (or a plugin, see `plugged.rs`), applied chunk by chunk so
//! memory stays flat however large the window.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::future::{Shared, try_join_all};
use tokio::sync::oneshot;

use super::{Cycle, pg_micros, read_key, temp_name};
use crate::catalog::ConflictRecord;
use crate::conflict::{Decision, Version};
use crate::error::{Error, PgContext, Result};
use crate::pg::copy::{BinaryCopyBuilder, Spool, copy_in_bytes, copy_in_receiver, copy_in_spool, copy_out_spooled};
use crate::pg::pipeline::try_join;
use crate::pg::quote_ident;
use crate::plugin::Value;
use crate::plugin::convert::push_copy_row;
use crate::sync::plan::{DbId, TableId};
use crate::target::TableSpec;

/// A changed key read from one source, in key-byte order.
pub(super) struct KeyRow {
    fields: Vec<Vec<u8>>,
    changed_at: i64,
    shown: String,
    /// Changed inside this run's (cut) window, not only after it.
    inside: bool,
}

pub(super) struct Gather {
    db: DbId,
    cursor: String,
    buffer: VecDeque<KeyRow>,
    exhausted: bool,
}

/// What happens to one changed key.
pub(super) enum Apply {
    /// Every other db gets this db's row (or loses the key).
    From(DbId),
    /// Every db gets this row (a plugin's merge).
    Merged(Vec<Value>),
    /// Left as it is everywhere.
    Skip,
}

/// Keys decided in the current chunk, with what to do with each.
pub(super) type Chunk = Vec<(Vec<Vec<u8>>, Apply)>;

/// A conflict waiting for the plugin's batch.
pub(super) struct Pending {
    pub fields: Vec<Vec<u8>>,
    pub versions: Vec<Version>,
    pub shown: String,
}

/// Conflicts handed to a plugin per call.
pub(super) const PLUGIN_BATCH: usize = 1000;

impl<'a> Cycle<'a> {
    pub(super) async fn newest_per_source(&self) -> Result<Vec<Version>> {
        let sources: Vec<DbId> = self.plan.sources().collect();
        let newest = try_join_all(sources.iter().map(|&src| async move {
            let window = self.window(src)?;
            let parts: Vec<String> = self
                .tables
                .iter()
                .map(|t| format!("(SELECT max(d.changed_at) FROM {} d WHERE {window})", t.delta()))
                .collect();
            if parts.is_empty() {
                return Ok(None);
            }
            let row = self
                .client(src)
                .query_typed_one(&format!("SELECT greatest({})", parts.join(", ")), &[])
                .await
                .ctx(|| format!("finding the newest change on db {}", self.db_name(src)))?;
            let at = row.try_get::<_, Option<DateTime<Utc>>>(0).ctx(|| "reading a change time".into())?;
            Ok::<_, Error>(at.map(|at| Version { db: src, changed_at: pg_micros(at) }))
        }))
        .await?;
        Ok(newest.into_iter().flatten().collect())
    }

    /// Several sources changed this table: merge their changed keys in
    /// key order, settle the keys changed on more than one, and apply in
    /// chunks of `chunk_keys` so memory stays flat however large the window.
    pub(super) async fn apply_merged(&mut self, ti: TableId, sources: &[DbId]) -> Result<()> {
        let table = self.table(ti);
        let render = if let [key] = table.key.as_slice() {
            key.as_text(&format!("d.{}", quote_ident(&key.name)))
        } else {
            format!("ROW({})::text", table.key_list_of("d"))
        };
        // Ordered by the keys' binary form: the same order on every db,
        // whatever its collation, and the order Rust compares bytes in.
        let order: Vec<String> =
            table.key.iter().map(|c| format!("{}(d.{})", c.send_fn, quote_ident(&c.name))).collect();
        // When a window was cut short, changes past its end are read too:
        // they take part in settling keys changed inside, never alone.
        let contended = self.contended();
        let chunk_keys = self.plan.settings.chunk_keys;
        let fetch = chunk_keys.clamp(100, 10_000);
        // One cursor per source, declared on all of them at once; each
        // DECLARE and its first FETCH go out together (pipelined in that
        // order on the one connection), one round trip in all.
        let this = &*self;
        let mut gathers = try_join_all(sources.iter().enumerate().map(|(n, &src)| {
            let (order, render) = (&order, &render);
            async move {
                let mut gather =
                    Gather { db: src, cursor: format!("ibex_gather_{n}"), buffer: VecDeque::new(), exhausted: false };
                let window = if contended { this.whole_window(src)? } else { this.window(src)? };
                let inside = if contended { this.in_window(src)? } else { "true".into() };
                // CLOSE ALL ends the cursors of the table merged before this
                // one in the same message (the last table's close at commit).
                let declare = format!(
                    "CLOSE ALL; DECLARE {} NO SCROLL CURSOR FOR SELECT {}, max(d.changed_at), {render}, bool_or({inside}) FROM {} d WHERE {window} GROUP BY {} ORDER BY {}",
                    gather.cursor,
                    table.key_list_of("d"),
                    table.delta(),
                    table.key_list_of("d"),
                    order.join(", ")
                );
                let declared = async {
                    this.client(src)
                        .batch_execute(&declare)
                        .await
                        .ctx(|| format!("reading changed keys of {} on db {}", table.name, this.db_name(src)))
                };
                try_join(declared, this.fetch(&mut gather, ti, fetch)).await?;
                Ok::<_, Error>(gather)
            }
        }))
        .await?;
        let mut abort_keys: Vec<String> = Vec::new();
        let mut chunk: Chunk = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            // The sources whose buffers ran dry are read again at once.
            try_join_all(
                gathers.iter_mut().filter(|g| g.buffer.is_empty() && !g.exhausted).map(|g| self.fetch(g, ti, fetch)),
            )
            .await?;
            let Some(min) = gathers.iter().filter_map(|g| g.buffer.front()).map(|k| &k.fields).min().cloned() else {
                break;
            };
            let mut versions = Vec::new();
            let mut shown = String::new();
            let mut inside = false;
            for g in gathers.iter_mut() {
                if g.buffer.front().is_some_and(|k| k.fields == min)
                    && let Some(k) = g.buffer.pop_front()
                {
                    versions.push(Version { db: g.db, changed_at: k.changed_at });
                    shown = k.shown;
                    inside |= k.inside;
                }
            }
            if !inside {
                continue; // changed only past the windows' ends: a later run's
            }
            if versions.len() == 1 {
                // Once the run is failing for abort, only more keys to list matter.
                if abort_keys.is_empty() {
                    chunk.push((min, Apply::From(versions[0].db)));
                }
            } else {
                self.conflicts += 1;
                if self.conflict_plugin.is_some() {
                    pending.push(Pending { fields: min, versions, shown });
                    if pending.len() >= PLUGIN_BATCH {
                        self.decide_with_plugin(ti, std::mem::take(&mut pending), &mut chunk).await?;
                    }
                } else {
                    match self.resolver.decide(&versions) {
                        Ok(decision) => {
                            self.log_conflict(ti, &shown, &versions, decision);
                            let apply = match decision {
                                Decision::Winner { db, .. } => Apply::From(db),
                                Decision::Skip => Apply::Skip,
                            };
                            chunk.push((min, apply));
                        }
                        Err(_) => {
                            if abort_keys.len() < 20 {
                                let dbs: Vec<&str> = versions.iter().map(|v| self.db_name(v.db)).collect();
                                abort_keys.push(format!("{shown} ({})", dbs.join(", ")));
                            }
                        }
                    }
                }
            }
            // Applying as we go is safe under abort: a conflict found later
            // fails the run and rolls every db back.
            if chunk.len() >= chunk_keys && abort_keys.is_empty() {
                self.flush(ti, std::mem::take(&mut chunk)).await?;
            }
        }
        if !pending.is_empty() {
            self.decide_with_plugin(ti, pending, &mut chunk).await?;
        }
        if !abort_keys.is_empty() {
            return Err(Error::Sync(format!(
                "conflict_strategy=abort: {} key{} of table {} changed on more than one source, so nothing was applied: {}",
                self.conflicts,
                if self.conflicts == 1 { "" } else { "s" },
                self.table(ti).name,
                abort_keys.join("; ")
            )));
        }
        if !chunk.is_empty() {
            self.flush(ti, chunk).await?;
        }
        Ok(())
    }

    pub(super) async fn fetch(&self, g: &mut Gather, ti: TableId, n: usize) -> Result<()> {
        let nkeys = self.table(ti).key.len();
        let rows = self
            .client(g.db)
            // Typed: one round trip, no prepare (results come back binary).
            .query_typed(&format!("FETCH FORWARD {n} FROM {}", g.cursor), &[])
            .await
            .ctx(|| format!("reading changed keys of {} on db {}", self.table(ti).name, self.db_name(g.db)))?;
        if rows.len() < n {
            g.exhausted = true;
        }
        for row in rows {
            g.buffer.push_back(KeyRow {
                fields: read_key(&row, nkeys)?,
                changed_at: pg_micros(row.try_get(nkeys).ctx(|| "reading a change time".into())?),
                shown: row.try_get(nkeys + 1).ctx(|| "reading a key".into())?,
                inside: row.try_get(nkeys + 2).ctx(|| "reading a key".into())?,
            });
        }
        Ok(())
    }

    pub(super) fn log_conflict(&mut self, ti: TableId, shown: &str, versions: &[Version], decision: Decision) {
        if self.conflict_log.len() >= self.plan.settings.conflict_log_limit {
            return;
        }
        let (winner, reason) = match decision {
            Decision::Winner { db, reason } => (Some(self.db_name(db).to_string()), reason.as_str().to_string()),
            Decision::Skip => (None, "skipped (conflict_strategy=skip)".to_string()),
        };
        self.conflict_log.push(ConflictRecord {
            table: self.table(ti).name.to_string(),
            key: shown.to_string(),
            dbs: versions.iter().map(|v| self.db_name(v.db).to_string()).collect(),
            winner,
            reason,
        });
    }

    /// Applies one chunk of decided keys: every db deletes the keys it did
    /// not win before it loads the rows of those keys from their winners
    /// (with several winners, each db as soon as it can; see
    /// `apply_from_winners_at_once`).
    pub(super) async fn flush(&mut self, ti: TableId, chunk: Chunk) -> Result<()> {
        let table = self.table(ti);
        let dbs: Vec<DbId> = self.plan.delta_dbs().collect();
        let del = temp_name("del", table);
        let send = temp_name("send", table);
        let mut to_delete: Vec<BinaryCopyBuilder> = dbs.iter().map(|_| BinaryCopyBuilder::new()).collect();
        let mut to_send: BTreeMap<DbId, BinaryCopyBuilder> = BTreeMap::new();
        let mut merged: Vec<&[Value]> = Vec::new();
        for (fields, apply) in &chunk {
            let winner = match apply {
                Apply::From(w) => Some(*w),
                Apply::Merged(row) => {
                    merged.push(row);
                    None
                }
                Apply::Skip => continue,
            };
            for (slot, &d) in dbs.iter().enumerate() {
                if Some(d) != winner {
                    to_delete[slot].push_row(fields.iter().map(Vec::as_slice));
                }
            }
            if let Some(w) = winner {
                to_send.entry(w).or_default().push_row(fields.iter().map(Vec::as_slice));
            }
        }

        if self.guarded() {
            // Each db's deletes and copies run together under its savepoint.
            for (&d, data) in dbs.iter().zip(to_delete) {
                self.ensure_temp(d, &del, table).await?;
                if data.rows() > 0 {
                    copy_in_bytes(self.client(d), &key_load_sql(&del, table), data.finish()).await?;
                }
            }
            let winners: Vec<DbId> = to_send.keys().copied().collect();
            for (w, data) in to_send {
                self.ensure_temp(w, &send, table).await?;
                copy_in_bytes(self.client(w), &key_load_sql(&send, table), data.finish()).await?;
            }
            let rows_from = format!(
                "FROM {} t JOIN pg_temp.{} k ON {} WHERE true",
                table.quoted(),
                quote_ident(&send),
                table.key_join("t", "k")
            );
            for &d in &dbs {
                let copies: Vec<(DbId, String)> =
                    winners.iter().filter(|&&w| w != d).map(|&w| (w, rows_from.clone())).collect();
                let (deleted, inserted) = self.apply_guarded(ti, d, Some(&del), copies, &merged).await?;
                self.count(ti, d, deleted as i64, inserted as i64);
            }
            return Ok(());
        }
        let step = Instant::now();
        let transformed = dbs.iter().any(|&d| self.transform_for(ti, d).is_some());
        let sends: Vec<(DbId, u64)> = to_send.iter().map(|(&w, keys)| (w, keys.rows())).collect();
        let winners = sends.len();
        let keys = ChunkKeys { lost: to_delete, sent: to_send, lost_table: &del, sent_table: &send };
        let deletes_done = if winners > 1 && !transformed {
            self.apply_from_winners_at_once(ti, &dbs, keys).await?
        } else {
            let deletes_done = self.delete_lost_and_load_sent_keys(ti, &dbs, keys).await?;
            // Then each winner's rows to the others, one COPY stream at a
            // time: two at once could each wait on the other's connection.
            for &(w, sending) in &sends {
                let receivers: Vec<DbId> = dbs.iter().copied().filter(|&d| d != w).collect();
                if receivers.is_empty() {
                    continue;
                }
                let rows_from = winner_rows(table, &send, sending);
                let inserted = self.copy_rows(ti, w, &rows_from, &receivers).await?;
                for (&d, n) in receivers.iter().zip(inserted) {
                    self.count(ti, d, 0, n as i64);
                }
            }
            deletes_done
        };
        tracing::debug!(
            table = %self.table(ti).name,
            keys = chunk.len(),
            winners,
            deletes_done_ms = deletes_done.as_millis() as u64,
            applied_ms = step.elapsed().as_millis() as u64,
            "merged chunk applied"
        );
        if !merged.is_empty() {
            // Merged rows exist nowhere yet: every db gets them, in COPY's
            // text format, which reads back every type exactly.
            let mut text = String::new();
            for row in &merged {
                push_copy_row(&mut text, row);
            }
            let sql = format!("COPY {} ({}) FROM STDIN", table.quoted(), table.column_list());
            let data = bytes::Bytes::from(text);
            let inserted = try_join_all(dbs.iter().map(|&d| copy_in_bytes(self.client(d), &sql, data.clone())))
                .await
                .map_err(|e| self.table_error(e, ti))?;
            for (&d, n) in dbs.iter().zip(inserted) {
                self.count(ti, d, 0, n as i64);
            }
        }
        Ok(())
    }

    /// Per db at once: its keys to delete loaded and deleted, and, on a
    /// winner, the keys it sends loaded. The key tables are made in the
    /// same pipeline as the COPY into them (one message each, so first).
    /// Returns how long that took.
    async fn delete_lost_and_load_sent_keys(
        &mut self,
        ti: TableId,
        dbs: &[DbId],
        keys: ChunkKeys<'_>,
    ) -> Result<Duration> {
        let ChunkKeys { lost: to_delete, sent: mut to_send, lost_table: del, sent_table: send } = keys;
        let table = self.table(ti);
        let started = Instant::now();
        let this = &*self;
        let deleted = try_join_all(dbs.iter().zip(to_delete).map(|(&d, data)| {
            let to_be_sent = to_send.remove(&d).map(BinaryCopyBuilder::finish);
            async move {
                let rows = data.rows();
                if rows > 0 {
                    this.load_keys(d, del, table, data.finish()).await?;
                }
                let sending = async {
                    if let Some(keys) = to_be_sent {
                        this.load_keys(d, send, table, keys).await?;
                    }
                    Ok::<_, Error>(())
                };
                let (n, ()) = try_join(this.delete_loaded(d, del, table, rows), sending).await?;
                Ok::<_, Error>(n)
            }
        }))
        .await?;
        for (&d, n) in dbs.iter().zip(deleted) {
            self.count(ti, d, n as i64, 0);
        }
        Ok(started.elapsed())
    }

    /// Makes the key table `name` on `db` and loads `keys` into it, in one
    /// pipeline.
    async fn load_keys(&self, db: DbId, name: &str, table: &TableSpec, keys: bytes::Bytes) -> Result<()> {
        let receiver = self.receiver(db, key_load_sql(name, table));
        try_join(self.ensure_temp(db, name, table), copy_in_receiver(&receiver, keys)).await?;
        Ok(())
    }

    /// Two or more winners, every db at once. A winner first loads the
    /// keys it sends and reads their rows into a spool (on its own
    /// connection, before its delete: the keys it won are not among those
    /// it deletes). Then every db loads and deletes the keys it lost, and
    /// loads each other winner's spool as soon as that spool is read. A
    /// spool waits on nothing but its own connection, so no db waits on
    /// one that waits on it (streamed, two fan-outs could each wait on the
    /// other's connection), and no phase waits for the slowest db of the
    /// one before. Returns how long after the start the last delete ended.
    async fn apply_from_winners_at_once(&mut self, ti: TableId, dbs: &[DbId], keys: ChunkKeys<'_>) -> Result<Duration> {
        let ChunkKeys { lost: to_delete, sent: mut to_send, lost_table: del, sent_table: send } = keys;
        let table = self.table(ti);
        let memory_limit = self.plan.settings.merge_memory / to_send.len().max(1);
        let this = &*self;
        // A spool's own errors name no table.
        let failed = |e: Error| match e {
            Error::Sync(message) => Error::Sync(format!("table {}: {message}", table.name)),
            other => this.table_error(other, ti),
        };
        // Each winner's spool, or why it could not be read, handed to every
        // other db: a db waiting on it reports the winner's own error.
        let mut spool_senders: BTreeMap<DbId, oneshot::Sender<SpoolRead>> = BTreeMap::new();
        let spools: Vec<(DbId, Shared<oneshot::Receiver<SpoolRead>>)> = to_send
            .keys()
            .map(|&w| {
                let (sender, receiver) = oneshot::channel();
                spool_senders.insert(w, sender);
                (w, receiver.shared())
            })
            .collect();
        let in_sql = crate::target::postgres::copy_in_sql(table);
        // The failpoint pauses once, when every db has begun loading rows,
        // so that a fault injected there finds COPYs open.
        let (loading, paused) = (AtomicUsize::new(0), AtomicBool::new(false));
        let started = Instant::now();
        let applying = try_join_all(dbs.iter().zip(to_delete).map(|(&d, lost)| {
            let to_be_sent = to_send.remove(&d).zip(spool_senders.remove(&d));
            let (spools, in_sql, failed, loading, paused) = (&spools, in_sql.clone(), &failed, &loading, &paused);
            async move {
                let mut read_at = None;
                if let Some((keys, spool_sender)) = to_be_sent {
                    let sending = keys.rows();
                    let read = async {
                        this.load_keys(d, send, table, keys.finish()).await?;
                        let out_sql = table.copy_out_sql(&winner_rows(table, send, sending));
                        copy_out_spooled(this.client(d), &out_sql, memory_limit).await.map_err(failed)
                    }
                    .await;
                    // A send fails only when no db waits any more: nothing to tell.
                    match read {
                        Ok(spool) => {
                            read_at = Some(started.elapsed());
                            if spool.spilled() {
                                tracing::debug!(
                                    table = %table.name,
                                    db = this.db_name(d),
                                    in_memory = spool.in_memory(),
                                    "a winner's rows passed the spool's memory limit: the rest went to a temporary file"
                                );
                            }
                            let _ = spool_sender.send(Ok(Arc::new(spool)));
                        }
                        Err(e) => {
                            let _ = spool_sender.send(Err(e.to_string()));
                            return Err(e);
                        }
                    }
                }
                let rows = lost.rows();
                if rows > 0 {
                    this.load_keys(d, del, table, lost.finish()).await?;
                }
                let deleted = this.delete_loaded(d, del, table, rows).await?;
                let deleted_at = started.elapsed();
                let receiver = this.receiver(d, in_sql);
                loading.fetch_add(1, Ordering::SeqCst);
                let forwarded = |_: &[u8]| {
                    if loading.load(Ordering::SeqCst) == dbs.len() && !paused.swap(true, Ordering::SeqCst) {
                        crate::failpoint::pause_blocking("mid_copy");
                    }
                };
                let mut inserted = 0;
                let mut waited = Duration::ZERO;
                for (w, spool) in spools.iter().filter(|(w, _)| *w != d) {
                    let asked = Instant::now();
                    let spool = match spool.clone().await {
                        Ok(Ok(spool)) => spool,
                        Ok(Err(why)) => {
                            return Err(Error::Sync(format!(
                                "table {}: db {} cannot load the rows of db {}, which could not be read: {why}",
                                table.name,
                                this.db_name(d),
                                this.db_name(*w)
                            )));
                        }
                        Err(_) => {
                            return Err(Error::Sync(format!(
                                "table {}: db {} cannot load the rows of db {}, whose read was abandoned",
                                table.name,
                                this.db_name(d),
                                this.db_name(*w)
                            )));
                        }
                    };
                    waited += asked.elapsed();
                    inserted += copy_in_spool(&receiver, &spool, forwarded).await.map_err(failed)?;
                }
                tracing::debug!(
                    table = %table.name,
                    db = this.db_name(d),
                    deleted,
                    inserted,
                    rows_read_at_ms = read_at.map(|at| at.as_millis() as u64),
                    deleted_at_ms = deleted_at.as_millis() as u64,
                    waited_for_rows_ms = waited.as_millis() as u64,
                    done_at_ms = started.elapsed().as_millis() as u64,
                    "a db's share of a merged chunk applied"
                );
                Ok::<_, Error>(Applied { deleted, inserted, deleted_at })
            }
        }));
        // A winner left without a db of its own would never send: its
        // receivers then fail at once instead of waiting.
        drop(spool_senders);
        let applied = applying.await?;
        let mut deletes_done = Duration::ZERO;
        for (&d, a) in dbs.iter().zip(applied) {
            self.count(ti, d, a.deleted as i64, a.inserted as i64);
            deletes_done = deletes_done.max(a.deleted_at);
        }
        Ok(deletes_done)
    }
}

/// One chunk's keys: those each db lost (it deletes them) and those each
/// winner sends, with the temporary tables each set is loaded into.
struct ChunkKeys<'n> {
    /// Per db of the chunk's dbs, in their order.
    lost: Vec<BinaryCopyBuilder>,
    sent: BTreeMap<DbId, BinaryCopyBuilder>,
    lost_table: &'n str,
    sent_table: &'n str,
}

/// A winner's rows, or why they could not be read.
type SpoolRead = std::result::Result<Arc<Spool>, String>;

/// What one db's share of a chunk did.
struct Applied {
    deleted: u64,
    inserted: u64,
    /// When its delete ended, from the chunk's start.
    deleted_at: Duration,
}

/// Loads keys into the key table `name`.
fn key_load_sql(name: &str, table: &TableSpec) -> String {
    format!("COPY pg_temp.{} ({}) FROM STDIN WITH (FORMAT binary)", quote_ident(name), table.key_list())
}

/// The rows a winner sends: those of the `sending` keys loaded into its
/// key table `send`, as a `FROM ... t ...` clause.
fn winner_rows(table: &TableSpec, send: &str, sending: u64) -> String {
    format!(
        "FROM {} t JOIN {} k ON {}",
        table.quoted(),
        crate::target::postgres::loaded_keys(send, sending),
        table.key_join("t", "k")
    )
}
