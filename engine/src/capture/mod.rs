//! Capture: what ibex installs on every database a sync reads from.
//!
//! Schema `ibex` holds, per replicated table, a delta table of changed keys
//! with the writing transaction's id (`xid8`) and the change time, filled by
//! statement-level triggers with transition tables (one delta row per
//! statement, its keys as arrays: see `delta.rs`), plus a row-level trigger
//! that fires only when an UPDATE changes the key, to record the old key too.
//! TRUNCATE is logged in `ibex.truncate_log`. An optional statement-level
//! kick trigger NOTIFYs `ibex_changed` with the table's name. Each sync that
//! reads the database has a cursor: the snapshot up to which it applied.
//!
//! The triggers are ordinary (ENABLE ORIGIN) triggers, so they do not fire
//! while ibex applies rows under `session_replication_role = replica`: no
//! echo, and no bookkeeping per applied row. Where another sync reads what
//! ibex writes to a table (makedelta, for cascades), they are ENABLE ALWAYS
//! and tag ibex's rows with the writing sync, which skips them.
//!
//! One catalog owns a db's capture (`ibex.owner`); another is refused.
//!
//! With `capture=wal` on a db, a logical replication slot replaces the row
//! triggers and fills the same delta tables (see `wal.rs`).

pub mod delta;
mod sql;
pub mod wal;
mod window;

use std::collections::BTreeMap;

use tokio_postgres::Client;

pub use delta::DeltaKey;
pub use sql::{delta_table, delta_table_name, in_window_end, not_written_by, window_condition};
pub use window::{Snapshot, Window};

use crate::error::{Error, PgContext, Result};
use crate::pg::QualifiedName;

/// The channel the kick triggers notify; the payload is `schema.table`.
pub const KICK_CHANNEL: &str = "ibex_changed";

/// The payload of a table's kick on [`KICK_CHANNEL`]: `schema.table`,
/// unquoted, as the daemon's CTL matches it against its plan's tables.
pub fn kick_payload(table: &QualifiedName) -> String {
    format!("{}.{}", table.schema, table.name)
}

/// How a db's changes are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Statement triggers write the delta rows in the writing transaction.
    #[default]
    Trigger,
    /// A logical replication slot, decoded into the delta rows before each run.
    Wal,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Trigger => "trigger",
            CaptureMode::Wal => "wal",
        }
    }

    pub fn parse(text: &str) -> Result<CaptureMode> {
        match text {
            "trigger" => Ok(CaptureMode::Trigger),
            "wal" => Ok(CaptureMode::Wal),
            other => Err(Error::Usage(format!(
                "unknown capture {other:?}: use capture=trigger (the default) or capture=wal (a logical replication slot; needs wal_level = logical)"
            ))),
        }
    }
}

/// A table to capture on one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureTable {
    pub name: QualifiedName,
    /// Key columns with their SQL types on this database.
    pub key: Vec<DeltaKey>,
    /// Install the kick trigger (some sync reading it has autokick).
    pub kick: bool,
    /// Keep the row before each UPDATE or DELETE (these columns, as text),
    /// for conflict handlers that merge column by column.
    pub old_image: Option<Vec<ImageColumn>>,
    /// Whether rows ibex applies here are captured too (makedelta).
    pub ibex_writes: IbexWrites,
}

/// Which of ibex's own writes to a table are captured (Bucardo's makedelta).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum IbexWrites {
    /// None: nothing else reads this db's copy of what ibex writes.
    #[default]
    Ignore,
    /// Those of syncs with makedelta (they say so in their session).
    WhenAsked,
    /// All of them (the table is makedelta).
    All,
}

impl IbexWrites {
    pub fn as_str(self) -> &'static str {
        match self {
            IbexWrites::Ignore => "ignore",
            IbexWrites::WhenAsked => "when-asked",
            IbexWrites::All => "all",
        }
    }
}

/// The catalog reconciling capture: recorded on the db, so a second
/// catalog cannot take its capture apart.
#[derive(Debug, Clone)]
pub struct Owner {
    pub catalog_id: String,
    /// Where that catalog lives (host:port/database), for messages.
    pub catalog: String,
}

/// A column of an old image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageColumn {
    pub name: String,
    /// See `LiveColumn::built_in`: how the column becomes text.
    pub built_in: bool,
}

/// A sync that reads the db, as capture setup needs to know it.
#[derive(Debug, Clone)]
pub struct Reader {
    pub sync: String,
    /// The sync has other sources too (multi-master).
    pub multi_source: bool,
}

/// What reconcile changed, for messages.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CaptureReport {
    pub installed: Vec<String>,
    pub repaired: Vec<String>,
    pub removed: Vec<String>,
    pub cursors_added: Vec<String>,
    pub cursors_removed: Vec<String>,
    /// Tables a sync will copy whole on its next run (`sync: table`).
    pub resyncs: Vec<String>,
    /// Things the operator should know (e.g. a cascade without makedelta).
    pub warnings: Vec<String>,
}

impl CaptureReport {
    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
            && self.repaired.is_empty()
            && self.removed.is_empty()
            && self.cursors_added.is_empty()
            && self.cursors_removed.is_empty()
            && self.resyncs.is_empty()
    }
}

/// Makes the database's capture match `tables` and `readers` (the syncs
/// that read it): installs what is missing, repairs what is broken, removes
/// triggers and delta tables that nothing needs, adds a cursor at the
/// current snapshot for each new sync and drops the cursors of others.
/// Runs in one transaction; the user's tables get triggers and nothing else.
/// Refused when another catalog owns the db's capture.
pub async fn reconcile(
    client: &mut Client,
    owner: &Owner,
    tables: &[CaptureTable],
    readers: &[Reader],
    mode: CaptureMode,
) -> Result<CaptureReport> {
    let wanted = !tables.is_empty() || !readers.is_empty();
    let slot = wal_slot_of(client, &owner.catalog_id).await?;
    // The slot is made beforehand (`create_wal_slot`, outside any catalog
    // transaction: its creation waits for every open transaction of the
    // server). Without it, capture stays on triggers: nothing is missed.
    let state = slot_state(client, &slot).await?;
    let effective = if mode == CaptureMode::Wal && state != SlotState::Missing { mode } else { CaptureMode::Trigger };
    let mut report = reconcile_in_transaction(client, owner, &slot, tables, readers, effective).await?;
    if mode == CaptureMode::Wal && effective == CaptureMode::Trigger && wanted {
        report.warnings.push(format!(
            "the WAL capture slot {slot} is missing, so capture stays on triggers: run `ibex update db DB capture=wal` to create it"
        ));
    }
    if effective == CaptureMode::Trigger && wal_recorded(client).await? {
        // Back on triggers: what the slot still holds goes into the delta
        // tables first (the triggers already capture what follows).
        if wanted && state == SlotState::Usable {
            let server = crate::pg::version::detect(&*client).await?;
            wal::materialize(client, server, None).await?;
        } else if wanted {
            report.warnings.push(format!(
                "the WAL capture slot {slot} was invalidated by the server or dropped, so the changes it still held cannot be read: capture is on triggers now; run `ibex reconcile SYNC` for each sync reading this db"
            ));
        }
        client.execute("DELETE FROM ibex.wal", &[]).await.ctx(|| "forgetting the WAL capture slot".into())?;
    }
    if mode == CaptureMode::Trigger {
        // Also a slot left behind by a crash between the two steps above.
        drop_slot(client, &slot).await?;
    }
    Ok(report)
}

async fn reconcile_in_transaction(
    client: &mut Client,
    owner: &Owner,
    slot: &str,
    tables: &[CaptureTable],
    readers: &[Reader],
    mode: CaptureMode,
) -> Result<CaptureReport> {
    // READ COMMITTED whatever the server's default: a conversion of the
    // delta layout must see rows committed while it waited for its lock.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await
        .ctx(|| "starting capture setup".into())?;
    // One installer at a time per database.
    tx.batch_execute("SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock(hashtext('ibex capture'))")
        .await
        .ctx(|| "locking for capture setup".into())?;
    let mut report = CaptureReport::default();
    let wanted = !tables.is_empty() || !readers.is_empty();
    match current_owner(&tx).await? {
        Some(other) if other.catalog_id != owner.catalog_id => {
            if !wanted {
                // Not ours: nothing to remove.
                return Ok(report);
            }
            return Err(Error::Refused(format!(
                "this db's capture belongs to another ibex catalog ({}, id {}): two catalogs cannot share one db's capture, as each would remove the other's cursors and triggers; use one catalog, or remove the db's syncs from that catalog (or, if that catalog is gone, run `DROP SCHEMA ibex CASCADE` on this db)",
                other.catalog, other.catalog_id
            )));
        }
        Some(_) => {}
        None if !wanted => return Ok(report),
        None => {}
    }
    let caps = crate::pg::version::detect(&tx).await?;
    tx.batch_execute(&sql::schema(&caps)).await.ctx(|| "creating schema ibex".into())?;
    tx.execute(
        "INSERT INTO ibex.owner (catalog_id, catalog) VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE SET catalog = excluded.catalog",
        &[&owner.catalog_id, &owner.catalog],
    )
    .await
    .ctx(|| "recording the catalog that owns capture".into())?;
    if mode == CaptureMode::Wal {
        tx.execute(
            "INSERT INTO ibex.wal (slot_name) VALUES ($1) ON CONFLICT (singleton) DO UPDATE SET slot_name = excluded.slot_name",
            &[&slot],
        )
        .await
        .ctx(|| "recording the WAL capture slot".into())?;
    }

    let installed = installed_tables(&tx).await?;
    let syncs: Vec<String> = readers.iter().map(|r| r.sync.clone()).collect();
    for table in tables {
        let shown = table.name.to_string();
        let key_names: Vec<String> = table.key.iter().map(|k| k.name.clone()).collect();
        let mut converting = false;
        match installed.get(&table.name) {
            Some(existing) if existing.key_columns == key_names && existing.layout != delta::LAYOUT => {
                // Written by an earlier ibex, a row per changed row: its
                // pending rows move into the new layout, writers held off.
                converting = set_aside_old_layout(&tx, table).await?;
                report.repaired.push(shown.clone());
            }
            Some(existing)
                if existing.key_columns == key_names
                    && existing.old_image == table.old_image.is_some()
                    && existing.kick == table.kick
                    && existing.ibex_writes == table.ibex_writes.as_str()
                    && existing.capture == mode.as_str() =>
            {
                if triggers_complete(&tx, table, mode).await? {
                    // Leave a healthy capture alone: reinstalling would lock
                    // the table. Functions an earlier ibex wrote are replaced,
                    // which does not; its triggers are reinstalled below.
                    let wanted = sql::CaptureMark::of(table, &caps, mode);
                    match installed_mark(&tx, table).await? {
                        Some(mark) if mark == wanted => continue,
                        Some(mark) if mark.triggers == wanted.triggers => {
                            tx.batch_execute(&sql::capture_functions(table, &caps, mode))
                                .await
                                .ctx(|| format!("replacing the capture functions of {shown}"))?;
                            report.repaired.push(shown.clone());
                            continue;
                        }
                        _ => {}
                    }
                }
                report.repaired.push(shown.clone());
            }
            Some(existing) if existing.key_columns == key_names => {
                // Old images, the kick, makedelta or the capture mode
                // switched: same delta, new function or triggers.
                report.repaired.push(shown.clone());
            }
            Some(_) => {
                // The key changed: pending rows keyed the old way cannot be
                // read any more. Keep them as a whole-table copy instead.
                keep_pending_as_resync(&tx, &table.name, readers, caps.xids, &mut report).await?;
                tx.batch_execute(&sql::drop_table(&table.name))
                    .await
                    .ctx(|| format!("removing the old capture of {shown}"))?;
                report.repaired.push(shown.clone());
            }
            None => report.installed.push(shown.clone()),
        }
        tx.batch_execute(&sql::install_table(table, &caps, mode))
            .await
            .ctx(|| format!("installing capture on {shown}"))?;
        if converting {
            restore_converted(&tx, table).await?;
        }
        tx.execute(
            "INSERT INTO ibex.captured (schema_name, rel_name, delta_table, key_columns, kick, old_image, ibex_writes, capture, layout)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (schema_name, rel_name) DO UPDATE
                SET delta_table = excluded.delta_table, key_columns = excluded.key_columns, kick = excluded.kick,
                    old_image = excluded.old_image, ibex_writes = excluded.ibex_writes, capture = excluded.capture,
                    layout = excluded.layout",
            &[
                &table.name.schema,
                &table.name.name,
                &delta_table_name(&table.name),
                &key_names,
                &table.kick,
                &table.old_image.is_some(),
                &table.ibex_writes.as_str(),
                &mode.as_str(),
                &delta::LAYOUT,
            ],
        )
        .await
        .ctx(|| format!("recording the capture of {shown}"))?;
    }
    for name in installed.keys() {
        if !tables.iter().any(|t| &t.name == name) {
            tx.batch_execute(&sql::drop_table(name)).await.ctx(|| format!("removing the capture of {name}"))?;
            report.removed.push(name.to_string());
        }
    }

    let existing: Vec<String> = tx
        .query("SELECT sync FROM ibex.cursor", &[])
        .await
        .ctx(|| "reading cursors".into())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for sync in &syncs {
        if !existing.contains(sync) {
            tx.execute(
                &format!("INSERT INTO ibex.cursor (sync, snapshot) VALUES ($1, {})", caps.xids.current_snapshot()),
                &[sync],
            )
            .await
            .ctx(|| format!("adding the cursor of sync {sync}"))?;
            report.cursors_added.push(sync.clone());
        }
    }
    for sync in existing {
        if !syncs.contains(&sync) {
            tx.execute("DELETE FROM ibex.cursor WHERE sync = $1", &[&sync])
                .await
                .ctx(|| format!("removing the cursor of sync {sync}"))?;
            tx.execute("DELETE FROM ibex.resync WHERE sync = $1", &[&sync])
                .await
                .ctx(|| format!("removing the pending copies of sync {sync}"))?;
            report.cursors_removed.push(sync);
        }
    }
    if !wanted {
        tx.execute("DELETE FROM ibex.owner", &[]).await.ctx(|| "releasing the capture".into())?;
    }
    tx.commit().await.ctx(|| "committing capture setup".into())?;
    Ok(report)
}

/// Removes everything this catalog installed on a database.
pub async fn uninstall(client: &mut Client, owner: &Owner) -> Result<CaptureReport> {
    reconcile(client, owner, &[], &[], CaptureMode::Trigger).await
}

/// What [`create_wal_slot`] did, or that no slot was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotMade {
    /// No slot was asked for (trigger capture, a target, or a capture left
    /// unchanged).
    NotNeeded,
    /// The slot was there and usable.
    Existing,
    /// A new slot; the db had none in use.
    Created,
    /// The slot the db was read from was invalidated by the server or
    /// dropped: a new one replaces it, and what was committed in between
    /// was not captured.
    Replaced,
}

impl SlotMade {
    /// A slot was made (to drop again if the catalog change fails).
    pub fn is_new(self) -> bool {
        matches!(self, SlotMade::Created | SlotMade::Replaced)
    }

    /// What the user must do after this on db `db`: a replaced slot missed
    /// what was committed while there was none.
    pub fn warning(self, db: &str) -> Option<String> {
        (self == SlotMade::Replaced).then(|| {
            format!(
                "db {db}: its WAL capture slot had been invalidated by the server or dropped, and a new one replaces it; changes committed before it were not all captured: run `ibex reconcile SYNC` for each sync reading db {db}"
            )
        })
    }
}

/// Creates the WAL capture slot of `owner`'s catalog on the db unless it
/// exists and is usable. Call it outside any transaction of a catalog on
/// the same server: the server waits for every transaction open at that
/// moment to end (and refuses it inside one that wrote).
pub async fn create_wal_slot(client: &Client, owner: &Owner) -> Result<SlotMade> {
    let slot = wal_slot_of(client, &owner.catalog_id).await?;
    let wal_level: String =
        client.query_one("SELECT current_setting('wal_level')", &[]).await.ctx(|| "reading wal_level".into())?.get(0);
    let made = match slot_state(client, &slot).await? {
        SlotState::Usable => return Ok(SlotMade::Existing),
        SlotState::Lost => {
            drop_slot(client, &slot).await?;
            SlotMade::Replaced
        }
        SlotState::Missing if wal_recorded(client).await? => SlotMade::Replaced,
        SlotState::Missing => SlotMade::Created,
    };
    if wal_level != "logical" {
        return Err(Error::Refused(format!(
            "capture=wal needs wal_level = logical, and this server has {wal_level}: set it (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL; on a managed service, its logical replication setting) or keep capture=trigger"
        )));
    }
    client
        .query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", &[&slot])
        .await
        .ctx(|| format!("creating the WAL capture slot {slot} (test_decoding; it needs a free max_replication_slots, and a superuser or the REPLICATION attribute)"))?;
    if wal_recorded(client).await? {
        // A position of an earlier slot (or, restored from a dump, of
        // another server) would make the new slot's reads skip changes.
        client
            .execute("UPDATE ibex.wal SET materialized_lsn = NULL", &[])
            .await
            .ctx(|| "forgetting the earlier WAL capture slot's position".into())?;
    }
    Ok(made)
}

/// Drops the WAL capture slot of `owner`'s catalog (a db leaving ibex).
pub async fn drop_wal_slot(client: &Client, owner: &Owner) -> Result<()> {
    drop_slot(client, &wal_slot_of(client, &owner.catalog_id).await?).await
}

/// The name of catalog `catalog_id`'s WAL capture slot for the db `client`
/// is connected to.
pub async fn wal_slot_of(client: &Client, catalog_id: &str) -> Result<String> {
    let dbname: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .ctx(|| "reading the database name".into())?
        .get(0);
    Ok(wal::slot_name(catalog_id, &dbname))
}

/// A db's WAL capture slot as the server has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Missing,
    /// Invalidated by the server: see [`LOST_SLOT_WHY`].
    Lost,
    Usable,
}

impl SlotState {
    /// From [`SLOT_STATUS_SQL`]'s value: none when there is no such slot.
    pub fn from_status(status: Option<&str>) -> SlotState {
        match status {
            None => SlotState::Missing,
            Some("lost") => SlotState::Lost,
            Some(_) => SlotState::Usable,
        }
    }
}

/// The `wal_status` of slot row `s` (13 and later; read through jsonb,
/// which any version can, as '' where the column does not exist), null
/// where `s` is a missing slot (of an outer join).
pub const SLOT_STATUS_SQL: &str =
    "CASE WHEN s.slot_name IS NOT NULL THEN coalesce(to_jsonb(s) ->> 'wal_status', '') END";

/// Why the server invalidates a slot, for every message that reports one.
pub const LOST_SLOT_WHY: &str = "wal_status = lost: it fell more than max_slot_wal_keep_size behind, \
    or from 18 stayed idle past idle_replication_slot_timeout";

/// The state of slot `slot` on the db `client` is connected to.
pub async fn slot_state(client: &Client, slot: &str) -> Result<SlotState> {
    let row = client
        .query_opt(&format!("SELECT {SLOT_STATUS_SQL} FROM pg_replication_slots s WHERE slot_name = $1"), &[&slot])
        .await
        .ctx(|| "looking for the WAL capture slot".into())?;
    Ok(SlotState::from_status(row.as_ref().and_then(|r| r.get::<_, Option<String>>(0)).as_deref()))
}

/// Whether the db records a WAL capture slot (it is, or was until a
/// switch back to triggers, read by WAL capture).
async fn wal_recorded(client: &Client) -> Result<bool> {
    let table: bool = client
        .query_one("SELECT to_regclass('ibex.wal') IS NOT NULL", &[])
        .await
        .ctx(|| "looking for WAL capture".into())?
        .get(0);
    if !table {
        return Ok(false);
    }
    Ok(client
        .query_one("SELECT EXISTS (SELECT 1 FROM ibex.wal)", &[])
        .await
        .ctx(|| "looking for WAL capture".into())?
        .get(0))
}

async fn drop_slot(client: &Client, slot: &str) -> Result<()> {
    // A daemon's stream of the slot holds it: ended first, under the lock.
    if let Err(err) = client.batch_execute(&wal::drop_slot_sql(slot)).await {
        if let Err(rollback) = client.batch_execute("ROLLBACK").await {
            tracing::warn!(error = %rollback, "could not roll back a failed drop of the WAL capture slot");
        }
        return Err(err).ctx(|| format!("dropping the WAL capture slot {slot}"));
    }
    Ok(())
}

async fn current_owner(tx: &tokio_postgres::Transaction<'_>) -> Result<Option<Owner>> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('ibex.owner') IS NOT NULL", &[])
        .await
        .ctx(|| "looking for the owner of capture".into())?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = tx
        .query_opt("SELECT catalog_id, catalog FROM ibex.owner", &[])
        .await
        .ctx(|| "reading the owner of capture".into())?;
    Ok(row.map(|r| Owner { catalog_id: r.get(0), catalog: r.get(1) }))
}

/// Before a table's key columns change: syncs that have not applied all of
/// its delta rows get a whole-table copy on their next run instead, taken
/// with writers held off so no change slips between the check and the
/// new capture. A multi-master sync cannot take a whole-table copy from
/// one master without overwriting the others' changes: refused.
async fn keep_pending_as_resync(
    tx: &tokio_postgres::Transaction<'_>,
    table: &QualifiedName,
    readers: &[Reader],
    xids: crate::pg::version::XidFlavour,
    report: &mut CaptureReport,
) -> Result<()> {
    let shown = table.to_string();
    tx.batch_execute(&format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", table.quoted()))
        .await
        .ctx(|| format!("holding writers of {shown} off while its key changes"))?;
    let delta = delta_table(table);
    for reader in readers {
        let Some(row) = tx
            .query_opt("SELECT snapshot::text FROM ibex.cursor WHERE sync = $1", &[&reader.sync])
            .await
            .ctx(|| format!("reading the cursor of sync {}", reader.sync))?
        else {
            continue;
        };
        let window = Window::unbounded(&row.get::<_, String>(0))?;
        let pending: bool = tx
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {delta} d WHERE {} AND {})",
                    window_condition("d", &window, xids),
                    not_written_by("d", &reader.sync)
                ),
                &[],
            )
            .await
            .ctx(|| format!("looking for pending changes of {shown}"))?
            .get(0);
        if !pending {
            continue;
        }
        if reader.multi_source {
            return Err(Error::Refused(format!(
                "sync {} has changes of {shown} not yet applied, keyed by the old key: let it apply them first (`ibex kick {} --wait`, with writes to {shown} paused), then change the key",
                reader.sync, reader.sync
            )));
        }
        schedule_resync(tx, &reader.sync, table, "key columns changed").await?;
        report.resyncs.push(format!("{}: {shown}", reader.sync));
    }
    Ok(())
}

/// Asks `sync` to copy `table` whole from this db at the first run that
/// applies the table (see `sync/cycle/whole.rs`); the run forgets the ask
/// in its own transaction.
pub async fn schedule_resync(
    client: &impl tokio_postgres::GenericClient,
    sync: &str,
    table: &QualifiedName,
    reason: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO ibex.resync (sync, schema_name, rel_name, reason) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sync, schema_name, rel_name) DO UPDATE SET reason = excluded.reason",
            &[&sync, &table.schema, &table.name, &reason],
        )
        .await
        .ctx(|| format!("scheduling a whole-table copy of {table} for sync {sync}"))?;
    Ok(())
}

/// A delta table written by an earlier ibex (a row per changed row) is
/// set aside and dropped, for `restore_converted` to fill the new one
/// (`delta.rs`) once it is installed. The user's table is locked against
/// writers first, so nothing writes through the old trigger function
/// between the two.
/// True when there was a delta table to set aside.
async fn set_aside_old_layout(tx: &tokio_postgres::Transaction<'_>, table: &CaptureTable) -> Result<bool> {
    let delta = delta_table(&table.name);
    let exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&delta])
        .await
        .ctx(|| format!("looking for the delta table of {}", table.name))?
        .get(0);
    if !exists {
        return Ok(false);
    }
    // The columns an older delta table may lack are added to the copy.
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE;
         CREATE TEMP TABLE ibex_old_delta ON COMMIT DROP AS SELECT * FROM {delta};
         ALTER TABLE ibex_old_delta ADD COLUMN IF NOT EXISTS old_row text[], ADD COLUMN IF NOT EXISTS origin text;
         DROP TABLE {delta};",
        table.name.quoted()
    ))
    .await
    .ctx(|| format!("setting aside the delta rows of {} to convert them", table.name))?;
    Ok(true)
}

/// Each row set aside by `set_aside_old_layout` becomes a delta row of one
/// key, with its transaction, time, origin and old image.
async fn restore_converted(tx: &tokio_postgres::Transaction<'_>, table: &CaptureTable) -> Result<()> {
    let delta = delta_table(&table.name);
    let keys: Vec<String> = table.key.iter().map(|k| crate::pg::quote_ident(&k.name)).collect();
    let singles: Vec<String> =
        table.key.iter().map(|k| k.single(&format!("o.{}", crate::pg::quote_ident(&k.name)))).collect();
    tx.batch_execute(&format!(
        "INSERT INTO {delta} ({}, txid, changed_at, origin, old_row)
         SELECT {}, o.txid, o.changed_at, o.origin, CASE WHEN o.old_row IS NOT NULL THEN ARRAY[o.old_row::text] END
           FROM ibex_old_delta o;
         DROP TABLE ibex_old_delta;",
        keys.join(", "),
        singles.join(", ")
    ))
    .await
    .ctx(|| format!("converting the delta rows of {}", table.name))
}

struct Installed {
    key_columns: Vec<String>,
    old_image: bool,
    kick: bool,
    ibex_writes: String,
    capture: String,
    layout: String,
}

async fn installed_tables(tx: &tokio_postgres::Transaction<'_>) -> Result<BTreeMap<QualifiedName, Installed>> {
    let rows = tx
        .query(
            "SELECT schema_name, rel_name, key_columns, old_image, kick, ibex_writes, capture, layout FROM ibex.captured",
            &[],
        )
        .await
        .ctx(|| "reading captured tables".into())?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                Installed {
                    key_columns: r.get(2),
                    old_image: r.get(3),
                    kick: r.get(4),
                    ibex_writes: r.get(5),
                    capture: r.get(6),
                    layout: r.get(7),
                },
            )
        })
        .collect())
}

/// The mark an ibex left on `table`'s capture (see `sql::CaptureMark`).
async fn installed_mark(
    tx: &tokio_postgres::Transaction<'_>,
    table: &CaptureTable,
) -> Result<Option<sql::CaptureMark>> {
    let row = tx
        .query_one(
            "SELECT obj_description(to_regprocedure($1), 'pg_proc')",
            &[&sql::statement_function_signature(&table.name)],
        )
        .await
        .ctx(|| format!("reading the mark of the capture of {}", table.name))?;
    Ok(row.get::<_, Option<String>>(0).as_deref().and_then(sql::CaptureMark::parse))
}

/// True when the table still has every capture trigger of `mode` (and no
/// other ibex trigger) and its delta table exists.
async fn triggers_complete(
    tx: &tokio_postgres::Transaction<'_>,
    table: &CaptureTable,
    mode: CaptureMode,
) -> Result<bool> {
    let row = tx
        .query_one(
            "SELECT coalesce(array_agg(t.tgname::text ORDER BY t.tgname), '{}'),
                    to_regclass('ibex.' || quote_ident($2)) IS NOT NULL
               FROM pg_trigger t WHERE t.tgrelid = to_regclass($1) AND t.tgname LIKE 'ibex\\_%'",
            &[&table.name.quoted(), &delta_table_name(&table.name)],
        )
        .await
        .ctx(|| format!("checking the triggers of {}", table.name))?;
    let names: Vec<String> = row.get(0);
    let delta_exists: bool = row.get(1);
    let mut wanted: Vec<&str> = sql::triggers_of(mode, table.kick);
    wanted.sort_unstable();
    Ok(delta_exists && names == wanted)
}
