//! WAL capture (`capture=wal` on a db): a logical replication slot instead
//! of row triggers. The application's transactions write nothing extra;
//! before each run reads a source, [`materialize`] decodes what the slot
//! holds and writes the changed keys into the same delta tables the
//! triggers fill, so windows, conflicts, plugins and delete + copy work as
//! they do for trigger capture.
//!
//! Exactness: the delta rows carry the materializing transaction's id, not
//! the decoded one. To every cursor that transaction is one that committed
//! after it, exactly as if the triggers had captured the changes late; a
//! decoded id could already be visible in a cursor and be skipped. The
//! commit decoded up to is written in `ibex.wal` in the same transaction,
//! and a later read skips every transaction that committed at or before
//! it, so the slot may lag behind without a change being taken twice. The
//! slot is advanced only after that commit, and not on every run: each
//! advance decodes the slot from its restart point once more, as long as
//! the read itself. See [`advance_due`].
//!
//! The daemon reads through a stream of the slot that it keeps open
//! ([`stream_slots`], `pg/replication.rs`), so each change is decoded once,
//! as it is written; other processes, and the daemon when its stream
//! fails, use `pg_logical_slot_peek_changes`, which decodes from the slot's
//! restart point on every call. Both give the same lines.
//!
//! The slot uses `test_decoding`, whose output names each column, so a
//! column added or dropped since the change was written cannot shift the
//! key (pgoutput's tuples are positional, and its relation messages are
//! cached per backend). ibex's own applies are skipped: each apply
//! transaction on a WAL db first emits the transactional message
//! [`MARKER_PREFIX`] (see `sync/cycle/mod.rs`), which decodes ahead of its
//! changes. Replication origins would need a superuser before 15.
//! TRUNCATE keeps its statement trigger (on 10 nothing else would see it).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use futures_util::TryStreamExt;
use futures_util::future::try_join_all;
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use super::{IbexWrites, LOST_SLOT_WHY, SLOT_STATUS_SQL, SlotState};
use crate::error::{Error, PgContext, Result};
use crate::pg::replication::{Lsn, Message, ReplicationStream};
use crate::pg::version::Capabilities;
use crate::pg::{ConnInfo, QualifiedName, quote_ident};

/// The prefix of the logical message that marks ibex's apply transactions.
pub const MARKER_PREFIX: &str = "ibex";

/// The prefix of the logical message that ends ibex's apply transactions
/// (just before COMMIT): a transaction that wrote no row prints its marker
/// alone, with no COMMIT, and the marker must not reach the next one.
pub const END_MARKER_PREFIX: &str = "ibex-end";

/// Changes decoded per transaction of the materializer (whole source
/// transactions are never split, so one may exceed it).
const BATCH_CHANGES: i32 = 50_000;

/// Keys written per INSERT into a delta table.
const INSERT_CHUNK: usize = 20_000;

/// The logical message body an apply transaction emits: the writing sync,
/// and whether its writes are to be captured too (makedelta).
pub fn marker_body(sync: &str, makedelta: bool) -> String {
    format!("{sync}\n{}", if makedelta { "makedelta" } else { "plain" })
}

/// The slot of one catalog's capture on database `dbname`: slots are
/// named per server, so the name holds both. Lower-case, at most 63 bytes.
pub fn slot_name(catalog_id: &str, dbname: &str) -> String {
    let clean: String =
        catalog_id.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).take(32).collect();
    format!("ibex_{clean}_{:08x}", crate::names::fnv1a32(dbname.bytes()))
}

/// What one call decoded and wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Materialized {
    /// Transactions of the application decoded (ibex's own excluded).
    pub transactions: u64,
    /// Keys written into delta tables.
    pub keys: u64,
    /// ibex's own apply transactions skipped.
    pub skipped: u64,
    /// Transactions read again that an earlier call had written (the slot
    /// was not yet advanced past them), skipped.
    pub replayed: u64,
}

/// A captured table as the materializer writes it.
struct Target {
    delta: String,
    /// Key column names and the element types of their delta columns.
    key: Vec<(String, String)>,
    ibex_writes: IbexWrites,
    /// Decoded keys, one vector per key column, and for each key its
    /// transaction (an index into `Decoder::txns`).
    columns: Vec<Vec<String>>,
    txn: Vec<u32>,
}

impl Target {
    /// Forgets the keys of transaction `txn`, the last one filed.
    fn drop_txn(&mut self, txn: u32) {
        while self.txn.last() == Some(&txn) {
            self.txn.pop();
            for col in &mut self.columns {
                col.pop();
            }
        }
    }
}

/// A decoded transaction, as its keys are written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Txn {
    /// The commit time: the change time of its keys (for `latest`).
    at: Option<String>,
    /// The sync that wrote it, where ibex's own writes are kept (makedelta).
    origin: Option<String>,
}

/// Decodes everything the db's slot holds up to now into the delta tables,
/// in transactions of about [`BATCH_CHANGES`] changes, and advances the
/// slot past it. Does nothing on a db without WAL capture. Safe to call
/// from several runs at once (they queue on an advisory lock). `info`, the
/// db's connection info, lets a process that streams slots
/// ([`stream_slots`]) read through its stream.
pub async fn materialize(client: &Client, server: Capabilities, info: Option<&ConnInfo>) -> Result<Materialized> {
    let (report, advance) = read_slot(client, server, info, true).await?;
    if let Some(advance) = advance {
        advance.run(client).await;
    }
    Ok(report)
}

/// [`materialize`] for the VAC, which only keeps a slot that no run reads
/// from holding the server's WAL. A slot that another ibex stream holds
/// (the daemon running the db's syncs, when this one runs none of them) is
/// moving already, and is left to it rather than taken from it, unless
/// that stream has stalled: its confirmed position the same over
/// [`STALLED_PASSES`] passes, and [`STALLED_BYTES`] of WAL behind it. A
/// stream that stopped reading must not keep the WAL for good. None when
/// it was left.
pub async fn materialize_unless_streamed_elsewhere(
    client: &Client,
    server: Capabilities,
    info: &ConnInfo,
) -> Result<Option<Materialized>> {
    // The walsender of this process's stream, if any (after a read under way).
    let ours = match shared_stream(info) {
        Some(shared) => shared.lock().await.stream.as_ref().map(ReplicationStream::backend_pid),
        None => None,
    };
    let context = || "reading which session holds the WAL capture slot".to_string();
    // application_name, not backend_type: both are ibex's role's sessions,
    // but backend_type shows only to roles that may read others' stats.
    let holder = client
        .query_opt(
            "SELECT a.pid, s.confirmed_flush_lsn::text,
                    coalesce(pg_wal_lsn_diff(pg_current_wal_flush_lsn(), s.confirmed_flush_lsn), 0)::bigint
               FROM ibex.wal w JOIN pg_replication_slots s ON s.slot_name = w.slot_name
               JOIN pg_stat_activity a ON a.pid = s.active_pid AND a.application_name = $1",
            &[&STREAM_NAME],
        )
        .await
        .ctx(context)?;
    let sighting = match holder {
        Some(row) => {
            let stream: i32 = row.try_get(0).ctx(context)?;
            let confirmed: Option<String> = row.try_get(1).ctx(context)?;
            let unconfirmed: i64 = row.try_get(2).ctx(context)?;
            (Some(stream) != ours).then_some((HeldElsewhere { stream, confirmed, passes: 0 }, unconfirmed))
        }
        None => None,
    };
    match held_elsewhere(info.describe(), sighting) {
        Holder::Left => return Ok(None),
        Holder::Stalled { passes, unconfirmed } => tracing::info!(
            db = %info.describe(), unconfirmed_bytes = unconfirmed,
            "the ibex stream holding the WAL capture slot has not confirmed anything for {passes} VAC passes; the VAC reads the slot itself"
        ),
        Holder::None => {}
    }
    materialize(client, server, Some(info)).await.map(Some)
}

/// Another ibex stream holding a db's slot, as the VAC last saw it.
struct HeldElsewhere {
    stream: i32,
    confirmed: Option<String>,
    /// The VAC passes since, each finding the same.
    passes: u32,
}

/// What the VAC makes of the session holding a db's slot.
enum Holder {
    /// None, or this process's own stream: the VAC reads the slot.
    None,
    /// Another ibex stream, moving (or not behind enough to matter).
    Left,
    /// Another ibex stream that has not confirmed anything for `passes`.
    Stalled { passes: u32, unconfirmed: i64 },
}

/// Files a sighting of another ibex stream holding `db`'s slot (None:
/// none holds it) against the last one.
fn held_elsewhere(db: String, sighting: Option<(HeldElsewhere, i64)>) -> Holder {
    let mut seen = HELD_ELSEWHERE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some((sighting, unconfirmed)) = sighting else {
        seen.remove(&db);
        return Holder::None;
    };
    let passes = match seen.get(&db) {
        Some(last) if last.stream == sighting.stream && last.confirmed == sighting.confirmed => last.passes + 1,
        _ => 0,
    };
    if passes >= STALLED_PASSES && unconfirmed >= STALLED_BYTES {
        seen.remove(&db);
        return Holder::Stalled { passes, unconfirmed };
    }
    seen.insert(db, HeldElsewhere { passes, ..sighting });
    Holder::Left
}

/// The slots this process's VAC found held by another ibex stream, by db.
static HELD_ELSEWHERE: LazyLock<std::sync::Mutex<HashMap<String, HeldElsewhere>>> = LazyLock::new(Default::default);

/// VAC passes after which a stream whose confirmed position did not move
/// counts as stalled: the daemon holding it reads every slot at least
/// once per vac_interval (its own VAC does), so two passes leave a margin.
const STALLED_PASSES: u32 = 2;

/// WAL behind a stalled stream's confirmed position past which the VAC
/// takes its slot (less is not worth the other daemon's fallback).
const STALLED_BYTES: i64 = 64 << 20;

/// The slot's advance past what [`materialize_deferring_advance`] committed,
/// left to the caller: a KID runs it after its targets committed, so the
/// changes it decoded do not wait for it (the advance decodes the slot from
/// its restart point once more). Not run at all, the next read skips what
/// was written already, and advances the slot.
#[must_use = "the slot keeps its WAL until it is advanced"]
pub enum SlotAdvance {
    /// By SQL: a decode from the restart point.
    Sql(SlotPosition),
    /// By a status message on the daemon's stream of the slot: no decode.
    Stream(SharedStream, Lsn),
}

/// A db's stream as the daemon keeps it between reads.
#[derive(Default)]
pub struct Streaming {
    stream: Option<ReplicationStream>,
    /// When a read last went through the stream.
    last_read: Option<tokio::time::Instant>,
    /// Why this db is read by SQL for good (its encoding, a synchronous
    /// standby list that would take the stream in): said once.
    refused: Option<String>,
}

impl SlotAdvance {
    /// Advances the slot; a failure is logged, as the next call advances it.
    pub async fn run(self, client: &Client) {
        let clock = std::time::Instant::now();
        let advanced = match self {
            SlotAdvance::Sql(position) => advance_alone(client, &position).await,
            SlotAdvance::Stream(shared, lsn) => {
                let mut streaming = shared.lock().await;
                streaming.last_read = Some(tokio::time::Instant::now());
                match streaming.stream.as_mut() {
                    Some(stream) => stream.status(Some(lsn), false).await,
                    // Dropped meanwhile: the next read advances it.
                    None => Ok(()),
                }
            }
        };
        match advanced {
            Ok(()) => tracing::debug!(us = clock.elapsed().as_micros() as u64, "WAL capture slot advanced"),
            Err(err) => tracing::warn!(error = %err, "could not advance the WAL capture slot; the next run will"),
        }
    }
}

/// A db's stream of its slot, shared by the daemon's KIDs and its VAC.
pub type SharedStream = Arc<tokio::sync::Mutex<Streaming>>;

/// Whether this process streams its slots ([`stream_slots`]).
static STREAMING: AtomicBool = AtomicBool::new(false);

/// The streams of this process, by db (`ConnInfo::describe`).
static STREAMS: LazyLock<std::sync::Mutex<HashMap<String, SharedStream>>> = LazyLock::new(Default::default);

/// From now on this process reads each WAL db's slot through a stream
/// that stays open from read to read (see `pg/replication.rs`), where the
/// SQL functions decode again from the slot's restart point on every
/// call. For the daemon: a stream holds its slot, which another reader
/// (a command, another daemon) takes over by ending it (see
/// [`take_slot_sql`]); the daemon opens it again at its next read.
pub fn stream_slots() {
    STREAMING.store(true, Ordering::Relaxed);
}

fn shared_stream(info: &ConnInfo) -> Option<SharedStream> {
    if !STREAMING.load(Ordering::Relaxed) {
        return None;
    }
    let mut streams = STREAMS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let shared = streams
        .entry(info.describe())
        .or_insert_with(|| {
            let shared = SharedStream::default();
            tokio::spawn(keep_alive(Arc::downgrade(&shared), info.describe()));
            shared
        })
        .clone();
    Some(shared)
}

/// How long a stream may go unread before the keepalive task closes it.
const STREAM_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// How often the keepalive task looks at its stream.
const KEEPALIVE_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Keeps a db's stream alive between reads (see
/// `ReplicationStream::keep_alive`), for as long as the stream is shared.
/// A read in progress holds the stream and answers the server itself.
async fn keep_alive(shared: std::sync::Weak<tokio::sync::Mutex<Streaming>>, db: String) {
    loop {
        tokio::time::sleep(KEEPALIVE_TICK).await;
        let Some(shared) = shared.upgrade() else { return };
        let Ok(mut streaming) = shared.try_lock() else { continue };
        let idle = streaming.last_read.is_none_or(|read| read.elapsed() >= STREAM_IDLE_LIMIT);
        if idle && streaming.stream.is_some() {
            // Kept alive, it would hold the slot for good: for a db this
            // process no longer reads (its address or user changed, its
            // syncs went elsewhere).
            streaming.stream = None;
            tracing::info!(%db, "nothing read the WAL capture stream for {} s; it is closed", STREAM_IDLE_LIMIT.as_secs());
            continue;
        }
        let Some(stream) = streaming.stream.as_mut() else { continue };
        if let Err(err) = stream.keep_alive().await {
            streaming.stream = None;
            tracing::info!(%db, error = %err, "the idle WAL capture stream ended; the next read opens it again");
        }
    }
}

/// The application_name of ibex's streams: what [`take_slot_sql`] ends.
const STREAM_NAME: &str = "ibex wal stream";

/// [`materialize`] for a run: the slot's advance, when [`advance_due`], is
/// returned to be run after the run committed.
pub async fn materialize_deferring_advance(
    client: &Client,
    server: Capabilities,
    info: Option<&ConnInfo>,
) -> Result<(Materialized, Option<SlotAdvance>)> {
    read_slot(client, server, info, false).await
}

/// Re-reading what was written costs the server as much output as fresh
/// changes; an advance costs a decode from the restart point. A read
/// advances the slot once it re-read [`REPLAY_LIMIT`] changes, or the slot
/// holds [`RESTART_LAG_BYTES`] of WAL behind the end (an idle db's slot
/// follows the server's WAL, which other dbs may write), or when `always`.
/// From 16 also when its restart point is that far behind: the read logged
/// the running transactions (see [`log_running_xacts`]), and only an
/// advance moves the restart point to them.
fn advance_due(batch: &Batch, server: Capabilities, always: bool) -> bool {
    let restart_lag = if server.logs_standby_snapshot() { batch.restart_lag_bytes } else { 0 };
    always
        || batch.replayed_changes >= REPLAY_LIMIT
        || batch.lag_bytes >= RESTART_LAG_BYTES
        || restart_lag >= RESTART_LAG_BYTES
}

/// The changes a read may re-read before it advances the slot: a few
/// seconds of a busy db's single-row transactions.
const REPLAY_LIMIT: u64 = 250;

async fn read_slot(
    client: &Client,
    server: Capabilities,
    info: Option<&ConnInfo>,
    always: bool,
) -> Result<(Materialized, Option<SlotAdvance>)> {
    if let Some((info, shared)) = info.and_then(|info| Some((info, shared_stream(info)?))) {
        let mut streaming = shared.lock().await;
        streaming.last_read = Some(tokio::time::Instant::now());
        let outcome = match &streaming.refused {
            Some(_) => None,
            None => Some(read_streamed(client, server, info, &mut streaming.stream).await),
        };
        // Also at the end: a read may take longer than the idle limit.
        streaming.last_read = Some(tokio::time::Instant::now());
        match outcome {
            None => {}
            Some(Ok((report, lsn))) => {
                drop(streaming);
                return Ok((report, lsn.map(|lsn| SlotAdvance::Stream(shared.clone(), lsn))));
            }
            Some(Err(Error::Refused(why))) => {
                streaming.stream = None;
                tracing::warn!(db = %info.describe(), "the WAL capture slot is read by SQL, not streamed: {why}");
                streaming.refused = Some(why);
            }
            Some(Err(err)) => {
                // Read again by SQL, which first ends the stream's session
                // if it still holds the slot: a failure that is not the
                // stream's shows there too.
                streaming.stream = None;
                tracing::info!(error = %err, "the WAL capture stream ended; reading the slot by SQL this time, and streaming again from the next read");
            }
        }
    }
    read_slot_by_sql(client, server, always).await
}

/// [`read_slot`] through the db's stream (opened under the slot's lock
/// when there is none): batches up to the end of the flushed WAL as the
/// first began, each committed before the slot's confirmed position moves
/// to it. Returns where the slot may be advanced once the caller wishes.
async fn read_streamed(
    client: &Client,
    server: Capabilities,
    info: &ConnInfo,
    stream: &mut Option<ReplicationStream>,
) -> Result<(Materialized, Option<Lsn>)> {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let token = format!("{}-{}-{}", std::process::id(), started.as_nanos(), READS.fetch_add(1, Ordering::Relaxed));
    let mut flush = Some(flush_sql(server, Some(&token)));
    let mut total = Materialized::default();
    let mut reached = false;
    loop {
        let mut source = Lines::Stream { info, stream: &mut *stream, token: &token, reached };
        let batch = materialize_batch(client, flush.take().as_deref(), &mut source).await?;
        if let Lines::Stream { reached: now, .. } = source {
            reached = now;
        }
        total.transactions += batch.report.transactions;
        total.keys += batch.report.keys;
        total.skipped += batch.report.skipped;
        total.replayed += batch.report.replayed;
        let position = batch.safe.as_ref().and_then(|p| Lsn::parse(&p.lsn));
        if batch.drained {
            return Ok((total, position));
        }
        // Committed: the slot may give up what this batch wrote.
        if let (Some(lsn), Some(open)) = (position, stream.as_mut()) {
            open.status(Some(lsn), false).await?;
        }
    }
}

/// Reads of this process so far: each stream read's token is new.
static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The prefix of the logical message [`flush_sql`] emits.
const FLUSH_PREFIX: &str = "ibex-flush";

/// The flush that goes out with the first batch's start (see
/// [`read_slot_by_sql`]). A stream read gives a `token`: the message is
/// then always written, and the read ends at its commit, which the stream
/// sends after every transaction that committed before it. (The end of
/// the flushed WAL will not do: it may fall inside a record that is only
/// partly flushed, which the server does not decode before the rest is.)
fn flush_sql(server: Capabilities, token: Option<&str>) -> String {
    let message = match token {
        Some(token) => format!("SELECT pg_logical_emit_message(true, '{FLUSH_PREFIX}', '{token}');"),
        None => format!(
            "SELECT pg_logical_emit_message(true, '{FLUSH_PREFIX}', '')
              WHERE pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn();"
        ),
    };
    // `local`: decoding needs the WAL flushed here, not on a synchronous
    // standby (which could be ibex's own stream).
    format!(
        "BEGIN; SET LOCAL synchronous_commit = local; {} {message} COMMIT; ",
        if server.logs_standby_snapshot() { log_running_xacts() } else { String::new() }
    )
}

async fn read_slot_by_sql(
    client: &Client,
    server: Capabilities,
    always: bool,
) -> Result<(Materialized, Option<SlotAdvance>)> {
    // Decoding reads only flushed WAL: a commit made with synchronous_commit
    // = off may not be yet, and its kick would find nothing. A synchronous
    // commit that wrote WAL flushes all WAL before it (a bare xid would
    // commit asynchronously); skipped when nothing waits. It goes out with
    // the first batch's start.
    let mut flush = Some(flush_sql(server, None));
    let mut total = Materialized::default();
    loop {
        let batch = materialize_batch(client, flush.take().as_deref(), &mut Lines::Peek).await?;
        total.transactions += batch.report.transactions;
        total.keys += batch.report.keys;
        total.skipped += batch.report.skipped;
        total.replayed += batch.report.replayed;
        let due = advance_due(&batch, server, always);
        let Some(position) = batch.safe else {
            return Ok((total, None));
        };
        if !batch.drained {
            // The next batch would re-read this one: the slot moves first.
            advance_alone(client, &position).await?;
            continue;
        }
        return Ok((total, due.then_some(SlotAdvance::Sql(position))));
    }
}

/// Where a db's slot may be advanced to.
pub struct SlotPosition {
    slot: String,
    /// Every transaction that committed before it is in the delta tables
    /// (`pg_lsn` as text).
    lsn: String,
    /// `server_version_num`: how the slot is advanced.
    version: i32,
}

/// What one transaction of [`materialize`] did.
struct Batch {
    report: Materialized,
    /// Where the slot may move once this batch committed; none when the
    /// slot has nothing to give up.
    safe: Option<SlotPosition>,
    /// The slot held nothing more up to the LSN this batch read to.
    drained: bool,
    /// Changes re-read (see [`Materialized::replayed`]).
    replayed_changes: u64,
    /// Bytes of WAL between the slot's confirmed position and the end of
    /// the flushed WAL, as the batch began.
    lag_bytes: i64,
    /// The same for the slot's restart point.
    restart_lag_bytes: i64,
}

/// One transaction of [`materialize`], after `flush` (SQL) when given.
async fn materialize_batch(client: &Client, flush: Option<&str>, source: &mut Lines<'_>) -> Result<Batch> {
    match read_batch(client, flush, source).await {
        Ok(batch) => Ok(batch),
        Err(err) => {
            // The first error is the one to report; the KID drops this
            // connection anyway. (After a failed COMMIT there is no
            // transaction left, and this only warns.)
            if let Err(rollback) = client.batch_execute("ROLLBACK").await {
                tracing::warn!(error = %rollback, "could not roll back a failed read of the WAL capture slot");
            }
            Err(err)
        }
    }
}

/// Where the slot stands: the end of the flushed WAL (decoded up to in full
/// when the batch is not cut short) and how far behind it the slot's
/// confirmed position and restart point are; and whether the server still
/// has the slot and its WAL (see `SlotState`).
static POSITION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT w.slot_name, pg_current_wal_flush_lsn()::text,
        current_setting('server_version_num')::int,
        coalesce(pg_wal_lsn_diff(pg_current_wal_flush_lsn(), s.confirmed_flush_lsn), 0)::bigint,
        coalesce(pg_wal_lsn_diff(pg_current_wal_flush_lsn(), s.restart_lsn), 0)::bigint,
        {SLOT_STATUS_SQL}, w.materialized_lsn::text,
        current_setting('synchronous_standby_names'), current_setting('server_encoding')
   FROM ibex.wal w LEFT JOIN pg_replication_slots s ON s.slot_name = w.slot_name"
    )
});

/// The slot's changes, each with whether it ends a transaction committed
/// at or before what was written already: those are read again (the slot
/// lags behind on purpose) and skipped. Up to the end of the flushed WAL,
/// which is at or past the position [`POSITION_SQL`] read before it.
const PEEK_SQL: &str = "SELECT c.lsn::text, c.data, coalesce(c.lsn <= w.materialized_lsn, false)
   FROM ibex.wal w, LATERAL pg_logical_slot_peek_changes(w.slot_name, pg_current_wal_flush_lsn(), $1,
        'include-xids', '0', 'skip-empty-xacts', '1', 'include-timestamp', '1') c";

/// Where a batch's lines come from.
enum Lines<'a> {
    /// `pg_logical_slot_peek_changes`, up to the end of the flushed WAL.
    Peek,
    /// The db's stream, opened by the batch when there is none, up to the
    /// commit of the read's flush message, whose content is `token`
    /// (`reached` once it came).
    Stream { info: &'a ConnInfo, stream: &'a mut Option<ReplicationStream>, token: &'a str, reached: bool },
}

/// How long a stream may stay silent before the read gives up on it:
/// the server answers a request for its position between two records.
const STREAM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The lines of one batch as they are read: the decoder, and where the
/// read stands.
#[derive(Default)]
struct Reading {
    decoder: Decoder,
    seen: i32,
    /// Lines of the open transaction so far.
    in_txn: u64,
    replayed_changes: u64,
    /// The end of the last transaction filed: what the batch records.
    last_new: Option<String>,
    /// The end of the last transaction read, filed or skipped.
    last_seen: Option<String>,
}

impl Reading {
    /// Takes one line at `lsn`; true when it ended a transaction.
    fn take(
        &mut self,
        lsn: String,
        data: &str,
        written_already: bool,
        targets: &mut BTreeMap<String, Target>,
        report: &mut Materialized,
    ) -> Result<bool> {
        self.seen += 1;
        self.in_txn += 1;
        match self.decoder.line(data, written_already, targets, report)? {
            Line::Inside => return Ok(false),
            Line::Committed => self.last_new = Some(lsn.clone()),
            Line::Replayed => self.replayed_changes += self.in_txn,
        }
        self.in_txn = 0;
        self.last_seen = Some(lsn);
        Ok(true)
    }
}

/// The work of [`materialize_batch`], its transaction included. Statements
/// that need no answer before the next are pipelined: the start (with the
/// flush), the position, the captured tables and the decoding go out
/// together, then the keys with the new position and the commit: two
/// round trips.
async fn read_batch(client: &Client, flush: Option<&str>, source: &mut Lines<'_>) -> Result<Batch> {
    // A peek first ends an ibex stream that holds the slot (another
    // process's, or this one's that failed).
    let take =
        if matches!(source, Lines::Peek) { take_slot_sql("(SELECT slot_name FROM ibex.wal)") } else { String::new() };
    let begin = format!(
        "{}BEGIN; SET LOCAL synchronous_commit = on; SET LOCAL client_min_messages = warning; {LOCK_SLOT}; {take}",
        flush.unwrap_or_default()
    );
    let clock = std::time::Instant::now();
    let peeking = matches!(source, Lines::Peek);
    let peek = async {
        if peeking {
            Some(client.query_typed_raw(PEEK_SQL, [(&BATCH_CHANGES as &(dyn ToSql + Sync), Type::INT4)]).await)
        } else {
            None
        }
    };
    let (began, position, targets, rows) = futures_util::future::join4(
        client.batch_execute(&begin),
        client.query_typed_opt(&POSITION_SQL, &[]),
        targets(client),
        peek,
    )
    .await;
    began.ctx(|| {
        if flush.is_some() {
            "flushing the WAL and starting to read the WAL capture slot"
        } else {
            "starting to read the WAL capture slot"
        }
        .into()
    })?;
    let mut report = Materialized::default();
    let Some(row) = position.ctx(|| "reading the WAL capture position".into())? else {
        // No slot on this db: nothing to read (and the tables' reading was
        // then of no use, failed or not).
        client.batch_execute("COMMIT").await.ctx(|| "ending the read of the WAL capture slot".into())?;
        return Ok(Batch {
            report,
            safe: None,
            drained: true,
            replayed_changes: 0,
            lag_bytes: 0,
            restart_lag_bytes: 0,
        });
    };
    let mut targets = targets?;
    let slot: String = row.get(0);
    let flushed: String = row.get(1);
    let version: i32 = row.get(2);
    let lag_bytes: i64 = row.get(3);
    let restart_lag_bytes: i64 = row.get(4);
    let state = SlotState::from_status(row.get::<_, Option<String>>(5).as_deref());
    let materialized: Option<String> = row.get(6);
    let standby_names: String = row.get(7);
    let encoding: String = row.get(8);
    if state != SlotState::Usable {
        return Err(Error::Sync(slot_unusable(&slot, state)));
    }
    let mut reading = Reading::default();
    let (drained, safe) = match source {
        Lines::Peek => {
            let rows = rows
                .ok_or_else(|| Error::Sync("the WAL capture slot was not read".into()))?
                .ctx(|| format!("decoding the WAL capture slot {slot}"))?;
            futures_util::pin_mut!(rows);
            while let Some(row) = rows.try_next().await.ctx(|| format!("decoding the WAL capture slot {slot}"))? {
                let lsn: String = row.get(0);
                let data: String = row.get(1);
                let written_already: bool = row.get(2);
                reading.take(lsn, &data, written_already, &mut targets, &mut report)?;
            }
            // Cut short at BATCH_CHANGES, it decoded whole transactions up
            // to the last commit it saw; otherwise everything that
            // committed before the flushed end read first, which lets an
            // idle db's slot follow the WAL.
            let drained = reading.seen < BATCH_CHANGES;
            (drained, if drained { Some(flushed) } else { reading.last_seen.clone() })
        }
        Lines::Stream { info, stream, token, reached } => {
            let flush_line =
                format!("message: transactional: 1 prefix: {FLUSH_PREFIX}, sz: {} content:{token}", token.len());
            if encoding != "UTF8" {
                // The stream sends the server's bytes; the SQL functions
                // convert them.
                return Err(Error::Refused(format!(
                    "its encoding is {encoding}, and ibex streams only UTF8 databases"
                )));
            }
            if standby_names.contains('*') {
                return Err(Error::Refused(format!(
                    "synchronous_standby_names = '{standby_names}' would make ibex's stream a synchronous standby, and the server's commits would wait for ibex's reads: name the standbys"
                )));
            }
            let open = match stream {
                Some(open) => open,
                None => {
                    let command = format!(
                        "START_REPLICATION SLOT {} LOGICAL 0/0 (\"include-xids\" '0', \"skip-empty-xacts\" '1', \"include-timestamp\" '1')",
                        quote_ident(&slot)
                    );
                    tracing::debug!(%slot, "opening the WAL capture stream");
                    stream.insert(ReplicationStream::start(info, STREAM_NAME, &command).await?)
                }
            };
            let materialized = materialized.as_deref().and_then(Lsn::parse);
            // Lines of a transaction come together, at its commit; a read
            // stops between two. A transaction that only emitted a message
            // prints that line alone, without BEGIN or COMMIT.
            let mut inside = false;
            let mut flush_inside = false;
            let mut patience = tokio::time::Instant::now() + STREAM_PATIENCE;
            let drained = loop {
                if !inside && *reached {
                    break true;
                }
                // Not between ibex's marker and the BEGIN it printed ahead
                // of: the next batch's decoder would not know it.
                if !inside && !reading.decoder.in_marked_transaction() && reading.seen >= BATCH_CHANGES {
                    break false;
                }
                if tokio::time::Instant::now() >= patience {
                    return Err(Error::Sync(format!(
                        "the WAL capture stream of slot {slot} sent no line for {} s",
                        STREAM_PATIENCE.as_secs()
                    )));
                }
                let Some(Message::Data { lsn, data }) = open.next(STREAM_PATIENCE).await? else { continue };
                patience = tokio::time::Instant::now() + STREAM_PATIENCE;
                let data = std::str::from_utf8(&data).map_err(|_| {
                    Error::Sync(format!("the WAL capture stream of slot {slot} sent a line that is not UTF-8"))
                })?;
                if data == flush_line {
                    // Alone (15 prints a transaction that only emitted a
                    // message without BEGIN and COMMIT), or at its COMMIT.
                    if inside {
                        flush_inside = true;
                    } else {
                        *reached = true;
                    }
                } else if data == "BEGIN" || data.starts_with("table ") {
                    inside = true;
                }
                let written_already = materialized.is_some_and(|m| lsn <= m);
                if reading.take(lsn.to_string(), data, written_already, &mut targets, &mut report)? {
                    inside = false;
                    *reached |= flush_inside;
                    flush_inside = false;
                }
            };
            (drained, if drained { Some(open.read_to().to_string()) } else { reading.last_seen.clone() })
        }
    };
    let Reading { mut decoder, seen, replayed_changes, last_new, .. } = reading;
    decoder.finish()?;
    let decoded_us = clock.elapsed().as_micros() as u64;
    // Sent together, the keys of all tables and the position: a failed
    // write aborts the transaction, so the position cannot be recorded
    // without it. The COMMIT goes with them only when each table's keys
    // are one statement: write_keys sends a later chunk only once the one
    // before it answered, which would be after a COMMIT sent meanwhile.
    let one_round = targets.values().all(|target| target.txn.len() <= INSERT_CHUNK);
    let txns = &decoder.txns;
    let recorded = async {
        if let Some(lsn) = &last_new {
            client
                .execute_typed(
                    "UPDATE ibex.wal SET materialized_lsn = $1::text::pg_lsn, materialized_at = now()",
                    &[(lsn, Type::TEXT)],
                )
                .await
                .ctx(|| "recording the WAL capture position".into())?;
        }
        Ok(())
    };
    let commit = || async { client.batch_execute("COMMIT").await.ctx(|| "committing decoded changes".into()) };
    let writes = crate::pg::pipeline::try_join(
        try_join_all(targets.values_mut().map(|target| write_keys(client, target, txns))),
        recorded,
    );
    let written = if one_round {
        // A failed write makes this COMMIT a rollback; the write's error is
        // the one reported.
        crate::pg::pipeline::try_join(writes, commit()).await?.0.0
    } else {
        let (written, ()) = writes.await?;
        commit().await?;
        written
    };
    report.keys += written.iter().sum::<u64>();
    tracing::debug!(
        decoded_us,
        written_us = clock.elapsed().as_micros() as u64 - decoded_us,
        changes = seen,
        replayed_changes,
        lag_bytes,
        "WAL capture slot read"
    );
    Ok(Batch {
        report,
        safe: safe.map(|lsn| SlotPosition { slot, lsn, version }),
        drained,
        replayed_changes,
        lag_bytes,
        restart_lag_bytes,
    })
}

/// Why a db's WAL capture cannot go on, and the way back.
fn slot_unusable(slot: &str, state: SlotState) -> String {
    let what = if state == SlotState::Lost {
        format!("was invalidated by the server ({LOST_SLOT_WHY})")
    } else {
        "is missing (dropped outside ibex)".to_string()
    };
    format!(
        "the WAL capture slot {slot} {what}: the changes in the WAL it no longer holds cannot be read. \
         Run `ibex update db DB capture=wal` to replace it, then `ibex reconcile SYNC` for each sync reading the db, \
         which brings over what was missed"
    )
}

/// Every call decodes the slot from its restart point, which moves only
/// to where the server logged its running transactions: every 15 s (the
/// background writer) or at a checkpoint, so a busy db re-decodes up to
/// 15 s of WAL per run. From 16, where the role may call
/// `pg_log_standby_snapshot()` (a superuser, or granted EXECUTE), this
/// logs such a record whenever the restart point is more than
/// [`RESTART_LAG_BYTES`] behind the end of the WAL: the call decodes
/// through it, and the advance after it (due then: see [`advance_due`])
/// moves the restart point. Sent only to servers that have the function.
fn log_running_xacts() -> String {
    format!(
        "DO $ibex$ BEGIN
    IF has_function_privilege('pg_catalog.pg_log_standby_snapshot()', 'EXECUTE') AND EXISTS (
        SELECT 1 FROM pg_catalog.pg_replication_slots s JOIN ibex.wal w ON w.slot_name = s.slot_name
         WHERE pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn) > {RESTART_LAG_BYTES}) THEN
        PERFORM pg_catalog.pg_log_standby_snapshot();
    END IF;
END $ibex$;"
    )
}

/// The restart lag [`log_running_xacts`] lets be, and the lag of the
/// slot's position a read lets be before it advances the slot (see
/// [`advance_due`]): 1 MiB, about 1 ms of
/// decoding per call (measured on 15: 2.8 MB took 2.2 ms, 9.7 MB 9.3 ms).
/// Each record it logs makes the server write a small snapshot file into
/// pg_logical/snapshots, removed at a later checkpoint; at most one per
/// call, and only after another MiB of WAL.
const RESTART_LAG_BYTES: i64 = 1 << 20;

/// Taken by every reader of the slot for its transaction: a slot serves
/// one backend at a time, and a second reader (or an advance) would fail
/// with "replication slot ... is active for PID ...".
const LOCK_SLOT: &str = "SELECT pg_advisory_xact_lock(hashtext('ibex wal'))";

/// Ends the session of an ibex stream (see [`stream_slots`]) that holds the
/// slot named by SQL expression `slot`, and waits for the slot to be free,
/// up to 5 s: SQL functions cannot use a slot a stream holds. Run under
/// [`LOCK_SLOT`], which a stream is opened under too, so the stream cannot
/// come back meanwhile. A slot held by anything else is left alone (the
/// read that follows names its holder).
pub(crate) fn take_slot_sql(slot: &str) -> String {
    format!(
        "DO $ibex$ DECLARE holder int; BEGIN
    SELECT s.active_pid INTO holder FROM pg_catalog.pg_replication_slots s
      JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) s.active_pid
     WHERE s.slot_name OPERATOR(pg_catalog.=) {slot} AND a.application_name OPERATOR(pg_catalog.=) {name}
       AND s.active_pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid();
    IF holder IS NOT NULL THEN
        BEGIN
            PERFORM pg_catalog.pg_terminate_backend(holder);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'an ibex daemon streams the WAL capture slot (walsender pid %%), and this role may not end that session'
                USING HINT = 'run this as the role the daemon connects as (or a superuser), or stop the daemon first';
        END;
        FOR i IN 1..1000 LOOP
            EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s
                                   WHERE s.slot_name OPERATOR(pg_catalog.=) {slot}
                                     AND s.active_pid OPERATOR(pg_catalog.=) holder);
            PERFORM pg_catalog.pg_sleep(0.005);
        END LOOP;
    END IF;
END $ibex$;",
        name = crate::pg::quote_literal(STREAM_NAME)
    )
}

/// Drops the WAL capture slot `slot` of this db, if there is one, ending an
/// ibex stream that holds it first, all under [`LOCK_SLOT`] so that the
/// stream cannot come back in between.
pub(crate) fn drop_slot_sql(slot: &str) -> String {
    let literal = crate::pg::quote_literal(slot);
    format!(
        "BEGIN; {LOCK_SLOT}; {} SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
          WHERE slot_name OPERATOR(pg_catalog.=) {literal} AND database OPERATOR(pg_catalog.=) pg_catalog.current_database(); COMMIT;",
        take_slot_sql(&literal)
    )
}

/// [`advance`] after a batch committed, in a transaction of its own under
/// [`LOCK_SLOT`], so it waits for a run decoding the slot meanwhile.
async fn advance_alone(client: &Client, position: &SlotPosition) -> Result<()> {
    // One round trip: after a failure the COMMIT ends the transaction as a
    // rollback, and the first error is reported.
    let (locked, advanced, ended) = futures_util::future::join3(
        client.batch_execute(&format!("BEGIN; {LOCK_SLOT}; {}", take_slot_sql("(SELECT slot_name FROM ibex.wal)"))),
        advance(client, position),
        client.batch_execute("COMMIT"),
    )
    .await;
    locked.ctx(|| "waiting for the WAL capture slot".into())?;
    advanced?;
    ended.ctx(|| "ending the advance of the WAL capture slot".into())
}

/// Moves the slot's confirmed position up to `lsn` (never back): from 11
/// with `pg_replication_slot_advance`, on 10 by consuming the changes.
async fn advance(client: &Client, position: &SlotPosition) -> Result<()> {
    let SlotPosition { slot, lsn, version } = position;
    let sql = if *version >= 110_000 {
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn
            AND pg_replication_slot_advance($1, $2::text::pg_lsn) IS NOT NULL"
    } else {
        // LATERAL: consumed only from a slot found behind (10 would move a
        // slot back to an older position).
        "SELECT count(*) FROM (SELECT slot_name::text AS name FROM pg_replication_slots
                                WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn) s,
                LATERAL pg_logical_slot_get_changes(s.name, $2::text::pg_lsn, NULL)"
    };
    client
        .query_typed(sql, &[(slot, Type::TEXT), (lsn, Type::TEXT)])
        .await
        .ctx(|| format!("advancing the WAL capture slot {slot} to {lsn}"))?;
    Ok(())
}

/// The captured tables, by their name as test_decoding prints it.
async fn targets(client: &Client) -> Result<BTreeMap<String, Target>> {
    let rows = client
        .query_typed(
            "SELECT c.schema_name, c.rel_name, c.key_columns, c.ibex_writes,
                    array(SELECT format_type(t.typelem, a.atttypmod) FROM unnest(c.key_columns) WITH ORDINALITY k(name, i)
                            JOIN pg_attribute a ON a.attrelid = to_regclass('ibex.' || quote_ident(c.delta_table))
                             AND a.attname = k.name
                            JOIN pg_type t ON t.oid = a.atttypid AND t.typcategory = 'A' ORDER BY k.i),
                    quote_ident(c.schema_name) || '.' || quote_ident(c.rel_name)
               FROM ibex.captured c",
            &[],
        )
        .await
        .ctx(|| "reading the captured tables".into())?;
    let mut targets = BTreeMap::new();
    for row in rows {
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let names: Vec<String> = row.get(2);
        let types: Vec<String> = row.get(4);
        if names.len() != types.len() {
            return Err(Error::Sync(format!(
                "the delta table of {name} lacks key columns, or is in an earlier ibex's layout: run `ibex validate` to repair capture"
            )));
        }
        let ibex_writes = match row.get::<_, String>(3).as_str() {
            "all" => IbexWrites::All,
            "when-asked" => IbexWrites::WhenAsked,
            _ => IbexWrites::Ignore,
        };
        // As test_decoding prints it: the server's own quoting (keywords too).
        let printed: String = row.get(5);
        targets.insert(
            printed,
            Target {
                delta: super::delta_table(&name),
                columns: vec![Vec::new(); names.len()],
                key: names.into_iter().zip(types).collect(),
                ibex_writes,
                txn: Vec::new(),
            },
        );
    }
    Ok(targets)
}

/// Writes and forgets a table's decoded keys; returns how many.
async fn write_keys(client: &Client, target: &mut Target, txns: &[Txn]) -> Result<u64> {
    let total = target.txn.len();
    if total == 0 {
        return Ok(0);
    }
    let names: Vec<String> = target.key.iter().map(|(c, _)| quote_ident(c)).collect();
    // A delta row per transaction (and chunk), as the triggers write one per statement.
    let casts: Vec<String> =
        target.key.iter().enumerate().map(|(i, (_, ty))| format!("pg_catalog.array_agg(k{i}::{ty})::{ty}[]")).collect();
    let aliases: Vec<String> = (0..target.key.len()).map(|i| format!("k{i}")).collect();
    let params: Vec<String> = (1..=target.key.len() + 2).map(|i| format!("${i}::text[]")).collect();
    let sql = format!(
        "INSERT INTO {} ({}, origin, changed_at) SELECT {}, o, coalesce(t::timestamptz, clock_timestamp())
           FROM unnest({}) AS u({}, o, t) GROUP BY o, t",
        target.delta,
        names.join(", "),
        casts.join(", "),
        params.join(", "),
        aliases.join(", ")
    );
    let mut start = 0;
    while start < total {
        let end = (start + INSERT_CHUNK).min(total);
        let mut values: Vec<Vec<Option<&str>>> =
            target.columns.iter().map(|col| col[start..end].iter().map(|v| Some(v.as_str())).collect()).collect();
        let of = |i: &u32| txns.get(*i as usize);
        values.push(target.txn[start..end].iter().map(|i| of(i).and_then(|t| t.origin.as_deref())).collect());
        values.push(target.txn[start..end].iter().map(|i| of(i).and_then(|t| t.at.as_deref())).collect());
        let typed: Vec<(&(dyn ToSql + Sync), Type)> =
            values.iter().map(|v| (v as &(dyn ToSql + Sync), Type::TEXT_ARRAY)).collect();
        // Typed: one round trip, no prepare.
        client.execute_typed(&sql, &typed).await.ctx(|| format!("writing decoded keys into {}", target.delta))?;
        start = end;
    }
    for col in &mut target.columns {
        col.clear();
    }
    target.txn.clear();
    Ok(total as u64)
}

/// Where a line left the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Inside a transaction (or outside any).
    Inside,
    /// It ended a transaction, whose keys are filed.
    Committed,
    /// It ended a transaction written already, whose keys were dropped.
    Replayed,
}

/// Reads test_decoding's lines in order and files the keys of each
/// application transaction under its table. A change it cannot read fails
/// its transaction's COMMIT, not the line: a transaction read again after
/// it was written (its keys read under a later capture setup, such as a
/// changed key) is skipped whole.
#[derive(Default)]
struct Decoder {
    /// Why the open transaction's changes cannot be read.
    unreadable: Option<Error>,
    /// The open transaction is ibex's: the writing sync and whether its
    /// writes are captured (makedelta).
    ibex: Option<(String, bool)>,
    /// The transactions decoded so far; the open one is next.
    txns: Vec<Txn>,
}

impl Decoder {
    /// Takes one line; `written_already` marks a COMMIT of a transaction
    /// an earlier read wrote into the delta tables.
    fn line(
        &mut self,
        data: &str,
        written_already: bool,
        targets: &mut BTreeMap<String, Target>,
        report: &mut Materialized,
    ) -> Result<Line> {
        if data == "BEGIN" {
            // With skip-empty-xacts a transactional message may print ahead
            // of its BEGIN (PostgreSQL 15 does): the marker state is reset
            // at COMMIT only.
            return Ok(Line::Inside);
        }
        if let Some(rest) = data.strip_prefix("COMMIT") {
            if written_already {
                let txn = self.next_txn()?;
                for target in targets.values_mut() {
                    target.drop_txn(txn);
                }
                self.ibex = None;
                self.unreadable = None;
                report.replayed += 1;
                return Ok(Line::Replayed);
            }
            if let Some(err) = self.unreadable.take() {
                return Err(err);
            }
            match &self.ibex {
                Some(_) => report.skipped += 1,
                None => report.transactions += 1,
            }
            // `COMMIT (at 2026-12-02 10:00:00.123+00)`: the change time of
            // each of its keys.
            let at = rest.trim().strip_prefix("(at ").and_then(|t| t.strip_suffix(')')).map(str::to_string);
            let origin = self.ibex.take().map(|(sync, _)| sync);
            self.txns.push(Txn { at, origin });
            return Ok(Line::Committed);
        }
        if let Some(rest) = data.strip_prefix("message: transactional: 1 prefix: ") {
            if rest.split_once(", sz: ").is_some_and(|(prefix, _)| prefix == END_MARKER_PREFIX) {
                self.ibex = None;
            } else if let Some((prefix, body)) = rest.split_once(", sz: ")
                && prefix == MARKER_PREFIX
            {
                let content = body.split_once(" content:").map_or("", |(_, c)| c);
                let (sync, mode) = content.split_once('\n').unwrap_or((content, "plain"));
                self.ibex = Some((sync.to_string(), mode == "makedelta"));
            }
            return Ok(Line::Inside);
        }
        let Some(rest) = data.strip_prefix("table ") else {
            return Ok(Line::Inside); // non-transactional messages and the like
        };
        if self.unreadable.is_none()
            && let Err(err) = self.change(data, rest, targets)
        {
            self.unreadable = Some(err);
        }
        Ok(Line::Inside)
    }

    /// Files the key of one decoded change (`rest` of the line `data`).
    fn change(&mut self, data: &str, rest: &str, targets: &mut BTreeMap<String, Target>) -> Result<()> {
        let change = parse_change(rest).ok_or_else(|| {
            Error::Sync(format!("cannot read a decoded change of the WAL capture slot: {}", shorten(data)))
        })?;
        let Some(target) = targets.get_mut(change.table) else {
            return Ok(()); // a table no sync reads
        };
        if let Some((_, makedelta)) = &self.ibex {
            match (target.ibex_writes, makedelta) {
                (IbexWrites::All, _) | (IbexWrites::WhenAsked, true) => {}
                _ => return Ok(()), // ibex's own write, not captured here
            }
        }
        let txn = self.next_txn()?;
        let tuples: Vec<&str> = match change.op {
            "INSERT" => vec![change.tuple],
            "DELETE" => vec![change.tuple],
            "UPDATE" => match change.tuple.strip_prefix("old-key:").and_then(|t| t.split_once(" new-tuple:")) {
                Some((old, new)) => vec![old, new],
                None => vec![change.tuple],
            },
            _ => return Ok(()), // TRUNCATE: its statement trigger logs it
        };
        // An UPDATE that keeps a TOASTed key prints it as unchanged in the
        // new tuple; the old key (logged when the key is stored out of
        // line, from 15, or with REPLICA IDENTITY FULL) holds its value.
        let mut previous: Option<Vec<String>> = None;
        for tuple in tuples {
            let key = key_of(tuple, &target.key, previous.as_deref()).map_err(|why| {
                Error::Sync(format!(
                    "a decoded {} of {} has no usable key ({why}): {}",
                    change.op,
                    change.table,
                    if why.contains("no-tuple-data") || why.contains("missing") || why.contains("TOAST") {
                        "its REPLICA IDENTITY must include the sync's key columns (`ALTER TABLE ... REPLICA IDENTITY FULL`, or a primary key on them); `ibex validate` checks this"
                    } else {
                        "use capture=trigger for this db"
                    }
                ))
            })?;
            if previous.as_ref() == Some(&key) {
                continue; // the key did not change
            }
            for (col, value) in target.columns.iter_mut().zip(&key) {
                col.push(value.clone());
            }
            target.txn.push(txn);
            previous = Some(key);
        }
        Ok(())
    }

    /// After the last line: a transaction cut off before its COMMIT (the
    /// server never ends a read inside one) still reports what it could
    /// not read.
    fn finish(&mut self) -> Result<()> {
        self.unreadable.take().map_or(Ok(()), Err)
    }

    /// Whether ibex's marker was read and its transaction has not ended.
    fn in_marked_transaction(&self) -> bool {
        self.ibex.is_some()
    }

    /// The index the open transaction will have in `txns`.
    fn next_txn(&self) -> Result<u32> {
        u32::try_from(self.txns.len()).map_err(|_| Error::Sync("too many transactions in one decoded batch".into()))
    }
}

fn shorten(text: &str) -> String {
    if text.len() <= 200 {
        return text.to_string();
    }
    let mut end = 200;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// One decoded change: `schema.table: OP: tuple`.
struct Change<'a> {
    table: &'a str,
    op: &'a str,
    tuple: &'a str,
}

fn parse_change(rest: &str) -> Option<Change<'_>> {
    // The table name may be quoted and contain ": ", so skip over quotes.
    let bytes = rest.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => quoted = !quoted,
            b':' if !quoted && bytes.get(i + 1) == Some(&b' ') => break,
            _ => {}
        }
        i += 1;
    }
    let table = rest.get(..i)?;
    let after = rest.get(i + 2..)?;
    let (op, tuple) = after.split_once(':')?;
    Some(Change { table, op, tuple: tuple.strip_prefix(' ').unwrap_or(tuple) })
}

/// The values of `key` columns in a printed tuple (` name[type]:value ...`).
fn key_of(
    tuple: &str,
    key: &[(String, String)],
    old_key: Option<&[String]>,
) -> std::result::Result<Vec<String>, String> {
    if tuple.trim() == "(no-tuple-data)" {
        return Err("no-tuple-data".into());
    }
    let columns = parse_tuple(tuple).ok_or_else(|| format!("unreadable tuple {}", shorten(tuple)))?;
    let mut values = Vec::with_capacity(key.len());
    for (i, (name, _)) in key.iter().enumerate() {
        match columns.iter().find(|(n, _)| n == name) {
            Some((_, Value::Text(v))) => values.push(v.clone()),
            Some((_, Value::Null)) => return Err(format!("key column {name} is null")),
            Some((_, Value::UnchangedToast)) => match old_key.and_then(|old| old.get(i)) {
                Some(unchanged) => values.push(unchanged.clone()),
                None => {
                    return Err(format!(
                        "key column {name} is an unchanged TOAST value, printed without it, and no old key was logged"
                    ));
                }
            },
            None => return Err(format!("key column {name} missing")),
        }
    }
    Ok(values)
}

#[derive(Debug, PartialEq, Eq)]
enum Value {
    Text(String),
    Null,
    UnchangedToast,
}

/// Splits test_decoding's `name[type]:value` list. Names are printed by
/// `quote_identifier`, types by `format_type` (an array type ends in `[]`,
/// hence the search for `]:`), values bare (numbers, booleans, null) or in
/// single quotes with quotes doubled (`B'...'` for bit strings).
fn parse_tuple(text: &str) -> Option<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (name, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let (name, used) = read_quoted(quoted, '"')?;
            (name, &quoted[used..])
        } else {
            let end = rest.find('[')?;
            (rest[..end].to_string(), &rest[end..])
        };
        let after = after.strip_prefix('[')?;
        let type_end = after.find("]:")?;
        let after = &after[type_end + 2..];
        let (value, after) = if let Some(quoted) = after.strip_prefix('\'') {
            let (value, used) = read_quoted(quoted, '\'')?;
            (Value::Text(value), &quoted[used..])
        } else if let Some(quoted) = after.strip_prefix("B'") {
            let (value, used) = read_quoted(quoted, '\'')?;
            (Value::Text(value), &quoted[used..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let word = &after[..end];
            let value = match word {
                "null" => Value::Null,
                "unchanged-toast-datum" => Value::UnchangedToast,
                _ => Value::Text(word.to_string()),
            };
            (value, &after[end..])
        };
        out.push((name, value));
        rest = after.trim_start();
    }
    Some(out)
}

/// Reads up to the closing `quote` (doubled inside); returns the text and
/// the bytes used, closing quote included.
fn read_quoted(text: &str, quote: char) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|&(_, n)| n == quote) {
                chars.next();
                value.push(quote);
                continue;
            }
            return Some((value, i + c.len_utf8()));
        }
        value.push(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_stream_is_taken_over_only_once_it_stalls_far_behind() {
        let sight = |stream: i32, confirmed: &str, unconfirmed: i64| {
            Some((HeldElsewhere { stream, confirmed: Some(confirmed.into()), passes: 0 }, unconfirmed))
        };
        let far = STALLED_BYTES;
        let db = || "stall-test".to_string();
        // Moving: left, however far behind.
        for lsn in ["0/1", "0/2", "0/3", "0/4"] {
            assert!(matches!(held_elsewhere(db(), sight(7, lsn, far)), Holder::Left));
        }
        // Still: left for STALLED_PASSES passes, then taken.
        assert!(matches!(held_elsewhere(db(), sight(7, "0/4", far)), Holder::Left));
        assert!(matches!(held_elsewhere(db(), sight(7, "0/4", far)), Holder::Stalled { passes: 2, .. }));
        // Still but close behind: left.
        for _ in 0..4 {
            assert!(matches!(held_elsewhere(db(), sight(7, "0/4", far - 1)), Holder::Left));
        }
        // A new stream starts the count again; none holding it forgets it.
        assert!(matches!(held_elsewhere(db(), sight(8, "0/4", far)), Holder::Left));
        assert!(matches!(held_elsewhere(db(), None), Holder::None));
        assert!(matches!(held_elsewhere(db(), sight(8, "0/4", far)), Holder::Left));
    }

    fn key(cols: &[&str]) -> Vec<(String, String)> {
        cols.iter().map(|c| (c.to_string(), "text".to_string())).collect()
    }

    #[test]
    fn reads_tuples_as_test_decoding_prints_them() {
        let tuple = r#"id[integer]:7 "Odd ""col"""[text]:'it''s: a [x]:' tags[text[]]:'{a,b}' b[bit(3)]:B'101' n[text]:null big[text]:unchanged-toast-datum f[boolean]:true"#;
        let parsed = parse_tuple(tuple).unwrap();
        assert_eq!(parsed[0], ("id".into(), Value::Text("7".into())));
        assert_eq!(parsed[1], ("Odd \"col\"".into(), Value::Text("it's: a [x]:".into())));
        assert_eq!(parsed[2], ("tags".into(), Value::Text("{a,b}".into())));
        assert_eq!(parsed[3], ("b".into(), Value::Text("101".into())));
        assert_eq!(parsed[4], ("n".into(), Value::Null));
        assert_eq!(parsed[5], ("big".into(), Value::UnchangedToast));
        assert_eq!(parsed[6], ("f".into(), Value::Text("true".into())));
        assert_eq!(key_of(tuple, &key(&["Odd \"col\"", "id"]), None).unwrap(), vec!["it's: a [x]:", "7"]);
        assert!(key_of(tuple, &key(&["n"]), None).unwrap_err().contains("null"));
        assert!(key_of(tuple, &key(&["big"]), None).unwrap_err().contains("TOAST"));
        assert!(key_of("(no-tuple-data)", &key(&["id"]), None).unwrap_err().contains("no-tuple-data"));
        // An unchanged TOASTed key is the old key's value.
        let old = vec!["7".to_string(), "long".to_string()];
        assert_eq!(key_of(tuple, &key(&["id", "big"]), Some(&old)).unwrap(), vec!["7", "long"]);
    }

    #[test]
    fn reads_changes_with_quoted_table_names() {
        let c = parse_change(r#""we: ird"."T": UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2"#).unwrap();
        assert_eq!((c.table, c.op), (r#""we: ird"."T""#, "UPDATE"));
        assert_eq!(c.tuple, "old-key: id[integer]:1 new-tuple: id[integer]:2");
    }

    #[test]
    fn skips_ibex_transactions_unless_makedelta() {
        let mut targets = BTreeMap::new();
        for (name, writes) in [("public.t", IbexWrites::Ignore), ("public.m", IbexWrites::WhenAsked)] {
            targets.insert(
                name.to_string(),
                Target {
                    delta: String::new(),
                    key: key(&["id"]),
                    ibex_writes: writes,
                    columns: vec![Vec::new()],
                    txn: Vec::new(),
                },
            );
        }
        let mut report = Materialized::default();
        let mut d = Decoder::default();
        let marker = format!("message: transactional: 1 prefix: ibex, sz: 9 content:{}", marker_body("s1", true));
        for line in [
            "BEGIN",
            "table public.t: INSERT: id[integer]:1",
            "table public.t: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 v[text]:'x'",
            "COMMIT",
            marker.as_str(),
            "BEGIN",
            "table public.t: INSERT: id[integer]:3",
            "table public.m: INSERT: id[integer]:4",
            "COMMIT",
            "BEGIN",
            "table public.t: TRUNCATE: (no-flags)",
            "table public.other: DELETE: id[integer]:9",
            "table public.t: DELETE: id[integer]:5",
            "COMMIT (at 2026-12-02 10:00:00.5+00)",
        ] {
            d.line(line, false, &mut targets, &mut report).unwrap();
        }
        assert_eq!(targets["public.t"].columns[0], vec!["1", "1", "2", "5"]);
        assert_eq!(targets["public.m"].columns[0], vec!["4"]);
        // Keys point at their transaction: its commit time and writer.
        assert_eq!(targets["public.t"].txn, vec![0, 0, 0, 2]);
        assert_eq!(targets["public.m"].txn, vec![1]);
        assert_eq!(d.txns[1].origin.as_deref(), Some("s1"));
        assert_eq!(d.txns[2], Txn { at: Some("2026-12-02 10:00:00.5+00".into()), origin: None });
        assert_eq!(report, Materialized { transactions: 2, keys: 0, skipped: 1, replayed: 0 });
        // An unreadable change fails its transaction's COMMIT, unless that
        // transaction was written already.
        assert_eq!(
            d.line("table public.t: DELETE: (no-tuple-data)", false, &mut targets, &mut report).unwrap(),
            Line::Inside
        );
        assert!(d.line("COMMIT", false, &mut targets, &mut report).is_err());
        d.line("table public.t: DELETE: (no-tuple-data)", false, &mut targets, &mut report).unwrap();
        assert_eq!(d.line("COMMIT", true, &mut targets, &mut report).unwrap(), Line::Replayed);
        d.line("table public.t: DELETE: (no-tuple-data)", false, &mut targets, &mut report).unwrap();
        assert!(d.finish().is_err());
    }

    #[test]
    fn drops_the_keys_of_a_transaction_written_already() {
        let mut targets = BTreeMap::new();
        targets.insert(
            "public.t".to_string(),
            Target {
                delta: String::new(),
                key: key(&["id"]),
                ibex_writes: IbexWrites::Ignore,
                columns: vec![Vec::new()],
                txn: Vec::new(),
            },
        );
        let mut report = Materialized::default();
        let mut d = Decoder::default();
        let marker = format!("message: transactional: 1 prefix: ibex, sz: 9 content:{}", marker_body("s1", false));
        let lines = [
            ("BEGIN", false, Line::Inside),
            ("table public.t: INSERT: id[integer]:1", false, Line::Inside),
            ("table public.t: INSERT: id[integer]:2", false, Line::Inside),
            ("COMMIT", true, Line::Replayed),
            (marker.as_str(), false, Line::Inside),
            ("BEGIN", false, Line::Inside),
            ("COMMIT", true, Line::Replayed),
            ("BEGIN", false, Line::Inside),
            ("table public.t: INSERT: id[integer]:3", false, Line::Inside),
            ("COMMIT", false, Line::Committed),
        ];
        for (line, written, ends) in lines {
            assert_eq!(d.line(line, written, &mut targets, &mut report).unwrap(), ends, "{line}");
        }
        // Only the new transaction's key, under its index; the replayed
        // marker did not mark the transaction after it as ibex's.
        assert_eq!(targets["public.t"].columns[0], vec!["3"]);
        assert_eq!(targets["public.t"].txn, vec![0]);
        assert_eq!(d.txns, vec![Txn { at: None, origin: None }]);
        assert_eq!(report, Materialized { transactions: 1, keys: 0, skipped: 0, replayed: 2 });
    }
}
