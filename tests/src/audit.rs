//! An audit of what each database received, independent of ibex: an
//! `AFTER` row trigger (ENABLE ALWAYS, so it also fires for ibex's
//! `session_replication_role = replica` writes) logs every row version of
//! the writers' tables into `ibex_audit.arrival`, and a trigger on
//! `ibex.cursor` logs every cursor move into `ibex_audit.cursor_move`. The
//! schema is never added to a sync, so ibex does not know about it.
//!
//! [`check`] compares what every source committed (the writer's log of
//! acknowledged commits, and the source's own audit of the rows its
//! clients wrote) with what every other db received and holds:
//! - **lost**: a row a source committed that is missing on a db (the source
//!   itself included: an acknowledged commit gone after a crash);
//! - **differing**: a row whose contents on a db differ from its source's,
//!   and counters that do not match the source;
//! - **re-applied** (expected, not an error): a row version that arrives
//!   again on a db while its source's cursor has not yet passed the
//!   transaction that wrote it. That is the documented idempotent
//!   re-apply: a run committed on the db but the daemon (or a db) died
//!   before the cursor advance, so the next run applies the same window
//!   again. A backlog applied in parts (`window_rows`) does it too: every
//!   part copies the current row of each key it holds, so a key changed in
//!   several parts (the counter) arrives once per part in its newest
//!   version, before the cursor reaches the transaction that wrote it;
//! - **doubled**: a row version that arrives again on a db after its
//!   source's cursor passed the transaction that wrote it (a window applied
//!   twice), twice in one transaction, or a counter that goes back to an
//!   older value.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};

use crate::Cluster;

/// The audit schema, function and log tables (once per db).
const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS ibex_audit;
CREATE TABLE IF NOT EXISTS ibex_audit.arrival (
    seq bigserial PRIMARY KEY,
    tbl text NOT NULL,
    op text NOT NULL,
    key text NOT NULL,
    row_text text,
    by_ibex boolean NOT NULL,
    xid bigint NOT NULL DEFAULT txid_current(),
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS ibex_audit.cursor_move (
    seq bigserial PRIMARY KEY,
    sync text,
    snapshot text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION ibex_audit.log_row() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
    r jsonb := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
    k text := '';
BEGIN
    FOR i IN 0 .. TG_NARGS - 1 LOOP
        k := k || coalesce(r ->> TG_ARGV[i], '') || '|';
    END LOOP;
    INSERT INTO ibex_audit.arrival (tbl, op, key, row_text, by_ibex)
    VALUES (TG_TABLE_NAME, TG_OP, k, CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE r::text END,
            current_setting('session_replication_role') = 'replica');
    RETURN NULL;
END
$f$;
CREATE OR REPLACE FUNCTION ibex_audit.log_cursor() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO ibex_audit.cursor_move (sync, snapshot)
    VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.sync ELSE NEW.sync END,
            CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.snapshot::text END);
    RETURN NULL;
END
$f$;
"#;

/// The audited tables and their key columns (the writers' tables, see
/// `load::Writer::SCHEMA`).
const TABLES: [(&str, &[&str]); 2] = [("writes", &["db", "n"]), ("counter", &["db"])];

/// Installs the audit on `db`: the log tables, a trigger on each writer
/// table, and on a source (where ibex installed `ibex.cursor`) a trigger on
/// the cursor. Call it after the sync's capture is installed.
pub fn install(cluster: &Cluster, db: &str) -> Result<()> {
    let mut sql = SCHEMA.to_string();
    for (table, key) in TABLES {
        let args = key.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ");
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS ibex_audit_{table} ON {table};
             CREATE TRIGGER ibex_audit_{table} AFTER INSERT OR UPDATE OR DELETE ON {table}
                 FOR EACH ROW EXECUTE FUNCTION ibex_audit.log_row({args});
             ALTER TABLE {table} ENABLE ALWAYS TRIGGER ibex_audit_{table};\n"
        ));
    }
    cluster.psql(db, &sql).with_context(|| format!("installing the audit on {db}"))?;
    let has_cursor = cluster.psql(db, "SELECT to_regclass('ibex.cursor') IS NOT NULL")?;
    if has_cursor == "t" {
        cluster.psql(
            db,
            "DROP TRIGGER IF EXISTS ibex_audit_cursor ON ibex.cursor;
             CREATE TRIGGER ibex_audit_cursor AFTER INSERT OR UPDATE OR DELETE ON ibex.cursor
                 FOR EACH ROW EXECUTE FUNCTION ibex_audit.log_cursor();
             ALTER TABLE ibex.cursor ENABLE ALWAYS TRIGGER ibex_audit_cursor;",
        )?;
    }
    Ok(())
}

/// One audited db: where it is, and whether its clients write (a source
/// with a writer).
pub struct AuditedDb<'a> {
    pub name: &'a str,
    pub cluster: &'a Cluster,
    /// The writer's acknowledged commits on this db (the `n` of each), if
    /// a writer ran here.
    pub committed: Option<&'a [i32]>,
}

/// What the audit found, summed over every (source, db) pair.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Rows the sources committed (acknowledged or found in their audit).
    pub written: u64,
    pub lost: u64,
    pub doubled: u64,
    /// Expected re-applies (see the module comment); not an error.
    pub reapplied: u64,
    pub differing: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.written += other.written;
        self.lost += other.lost;
        self.doubled += other.doubled;
        self.reapplied += other.reapplied;
        self.differing += other.differing;
    }
}

/// One arrival of a row version on a db.
struct Arrival {
    row: String,
    xid: i64,
    /// Microseconds since the epoch (all clusters of a test share a clock).
    at: i64,
}

/// Audited rows of `table` written on `db`, by key: (row text, xid, time).
fn arrivals(
    cluster: &Cluster,
    db: &str,
    table: &str,
    by_ibex: bool,
    origin: &str,
) -> Result<BTreeMap<String, Vec<Arrival>>> {
    let text = cluster.psql(
        db,
        &format!(
            "SELECT key || E'\\t' || row_text || E'\\t' || xid || E'\\t' || (extract(epoch FROM at) * 1000000)::bigint
               FROM ibex_audit.arrival
              WHERE tbl = '{table}' AND op <> 'DELETE' AND by_ibex = {by_ibex} AND key LIKE '{origin}|%'
              ORDER BY at, seq"
        ),
    )?;
    let mut out: BTreeMap<String, Vec<Arrival>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let parts: Vec<&str> = line.split('\t').collect();
        let [key, row, xid, at] = parts[..] else { bail!("bad audit line on {db}: {line:?}") };
        out.entry(key.to_string()).or_default().push(Arrival {
            row: row.to_string(),
            xid: xid.parse().with_context(|| format!("audit xid {xid:?}"))?,
            at: at.parse().with_context(|| format!("audit time {at:?}"))?,
        });
    }
    Ok(out)
}

/// The current rows of `table` whose key starts with `origin`, by key.
fn current_rows(cluster: &Cluster, db: &str, table: &str, origin: &str) -> Result<BTreeMap<String, String>> {
    let key = TABLES
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, k)| k.iter().map(|c| format!("coalesce(x.{c}::text, '') || '|'")).collect::<Vec<_>>().join(" || "))
        .with_context(|| format!("{table} is not audited"))?;
    let text = cluster.psql(
        db,
        &format!("SELECT {key} || E'\\t' || to_jsonb(x)::text FROM {table} x WHERE x.db = '{origin}' ORDER BY 1"),
    )?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let Some((k, row)) = line.split_once('\t') else { bail!("bad row line on {db}: {line:?}") };
        out.insert(k.to_string(), row.to_string());
    }
    Ok(out)
}

/// A cursor snapshot as the server prints it (`xmin:xmax:xip,...`), with
/// its visibility rule: a transaction is passed when it is below `xmin`,
/// or below `xmax` and not in progress.
#[derive(Debug, PartialEq)]
struct Snapshot {
    xmin: i64,
    xmax: i64,
    in_progress: BTreeSet<i64>,
}

impl Snapshot {
    fn parse(text: &str) -> Result<Snapshot> {
        let mut parts = text.splitn(3, ':');
        let (Some(xmin), Some(xmax), Some(xip)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("cursor snapshot {text:?} is not xmin:xmax:xip")
        };
        let number = |s: &str| s.parse::<i64>().with_context(|| format!("cursor snapshot {text:?}"));
        Ok(Snapshot {
            xmin: number(xmin)?,
            xmax: number(xmax)?,
            in_progress: xip.split(',').filter(|x| !x.is_empty()).map(number).collect::<Result<_>>()?,
        })
    }

    fn passed(&self, xid: i64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }
}

/// One move of a sync's cursor on its source.
struct CursorMove {
    /// Microseconds since the epoch.
    at: i64,
    /// The snapshot it moved to; `None` when the cursor was deleted.
    snapshot: Option<Snapshot>,
}

/// The moves of the cursors of `sync` on `db`, in time order.
fn cursor_moves(cluster: &Cluster, db: &str, sync: &str) -> Result<Vec<CursorMove>> {
    let text = cluster.psql(
        db,
        &format!(
            "SELECT (extract(epoch FROM at) * 1000000)::bigint || E'\\t' || coalesce(snapshot, '')
               FROM ibex_audit.cursor_move WHERE sync = '{sync}' ORDER BY at"
        ),
    )?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (at, snapshot) = line.split_once('\t').with_context(|| format!("bad cursor move line {line:?}"))?;
            Ok(CursorMove {
                at: at.parse().with_context(|| format!("cursor move time {at:?}"))?,
                snapshot: if snapshot.is_empty() { None } else { Some(Snapshot::parse(snapshot)?) },
            })
        })
        .collect()
}

/// Counts the repeated arrivals of one key on one db: (re-applied, doubled).
/// A repeat is expected while the source's cursor has not passed the
/// transaction that wrote the version (`written_by`, from the source's own
/// audit; unknown, any cursor move counts); same-transaction repeats and
/// repeats after the cursor passed it are not.
fn repeats(list: &[Arrival], moves: &[CursorMove], written_by: &BTreeMap<String, i64>) -> (u64, u64) {
    let (mut reapplied, mut doubled) = (0, 0);
    for pair in list.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.row != b.row {
            continue; // a newer version of the row (the counter), not a repeat
        }
        let writer = written_by.get(&a.row);
        let passed = moves.iter().filter(|m| m.at > a.at && m.at < b.at).any(|m| match (writer, &m.snapshot) {
            (Some(&xid), Some(snapshot)) => snapshot.passed(xid),
            _ => true,
        });
        if a.xid == b.xid || passed {
            doubled += 1;
        } else {
            reapplied += 1;
        }
    }
    (reapplied, doubled)
}

/// The source transaction that wrote each row version, from the source's
/// own audit of its tables.
fn writers(own: [&BTreeMap<String, Vec<Arrival>>; 2]) -> BTreeMap<String, i64> {
    own.into_iter().flat_map(|by_key| by_key.values().flatten()).map(|a| (a.row.clone(), a.xid)).collect()
}

/// The counter's value in a row's JSON text.
fn counter_value(row: &str) -> Result<i64> {
    let v: serde_json::Value = serde_json::from_str(row).with_context(|| format!("counter row {row:?}"))?;
    v["n"].as_i64().with_context(|| format!("no n in counter row {row:?}"))
}

/// Compares every writing source of sync `sync` with every other db.
pub fn check(sync: &str, dbs: &[AuditedDb]) -> Result<Tally> {
    let mut tally = Tally::default();
    for origin in dbs {
        let Some(committed) = origin.committed else { continue };
        let own = current_rows(origin.cluster, origin.name, "writes", origin.name)?;
        let own_audit = arrivals(origin.cluster, origin.name, "writes", false, origin.name)?;
        let acknowledged: BTreeSet<String> = committed.iter().map(|n| format!("{}|{n}|", origin.name)).collect();
        // What the source committed: what its client saw acknowledged, and
        // what its own audit logged (commits whose answer was lost in a crash).
        let all: BTreeSet<&String> = acknowledged.iter().chain(own_audit.keys()).collect();
        tally.written += all.len() as u64;
        tally.lost += acknowledged.iter().filter(|k| !own.contains_key(*k)).count() as u64;
        let own_counter = current_rows(origin.cluster, origin.name, "counter", origin.name)?;
        let own_count = own_counter.values().next().map(|r| counter_value(r)).transpose()?.unwrap_or(0);
        if own_count != own.len() as i64 {
            tally.differing += 1;
        }
        let moves = cursor_moves(origin.cluster, origin.name, sync)?;
        let own_counter_audit = arrivals(origin.cluster, origin.name, "counter", false, origin.name)?;
        let written_by = writers([&own_audit, &own_counter_audit]);
        for db in dbs.iter().filter(|d| d.name != origin.name) {
            let held = current_rows(db.cluster, db.name, "writes", origin.name)?;
            for (key, row) in &own {
                match held.get(key) {
                    None => tally.lost += 1,
                    Some(other) if other != row => tally.differing += 1,
                    Some(_) => {}
                }
            }
            // Rows the source does not hold (lost there) are differences too.
            tally.differing += held.keys().filter(|k| !own.contains_key(*k)).count() as u64;
            for list in arrivals(db.cluster, db.name, "writes", true, origin.name)?.values() {
                let (reapplied, doubled) = repeats(list, &moves, &written_by);
                tally.reapplied += reapplied;
                tally.doubled += doubled;
            }
            let counters = arrivals(db.cluster, db.name, "counter", true, origin.name)?;
            for list in counters.values() {
                let (reapplied, doubled) = repeats(list, &moves, &written_by);
                tally.reapplied += reapplied;
                tally.doubled += doubled;
                let values: Vec<i64> = list.iter().map(|a| counter_value(&a.row)).collect::<Result<_>>()?;
                // An older count arriving after a newer one: an old window applied again.
                tally.doubled += values.windows(2).filter(|w| w[1] < w[0]).count() as u64;
            }
            let held_counter = current_rows(db.cluster, db.name, "counter", origin.name)?;
            if held_counter != own_counter {
                tally.differing += 1;
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(row: &str, xid: i64, at: i64) -> Arrival {
        Arrival { row: row.into(), xid, at }
    }

    fn moved(at: i64, snapshot: &str) -> CursorMove {
        CursorMove { at, snapshot: Some(Snapshot::parse(snapshot).expect("a snapshot")) }
    }

    #[test]
    fn a_snapshot_passes_what_committed_before_it() {
        let s = Snapshot::parse("100:105:101,103").expect("parses");
        assert!(s.passed(99) && s.passed(102) && s.passed(104));
        assert!(!s.passed(101) && !s.passed(103) && !s.passed(105) && !s.passed(200));
        assert!(Snapshot::parse("100:105:").expect("no xip").passed(104));
        assert!(Snapshot::parse("100").is_err());
    }

    #[test]
    fn a_version_copied_by_each_part_of_a_cut_backlog_is_a_re_apply() {
        // Version n=7 written by xid 500; the cursor moves to cuts at 300 and 400
        // between its arrivals, then past 500.
        let written_by = BTreeMap::from([("{\"n\": 7}".to_string(), 500)]);
        let list = [arrival("{\"n\": 7}", 1, 10), arrival("{\"n\": 7}", 2, 20), arrival("{\"n\": 7}", 3, 30)];
        let cuts = [moved(15, "300:300:"), moved(25, "400:400:"), moved(35, "501:501:")];
        assert_eq!(repeats(&list, &cuts, &written_by), (2, 0));
        // Arriving again after the cursor passed xid 500: doubled.
        let again = [arrival("{\"n\": 7}", 3, 30), arrival("{\"n\": 7}", 4, 40)];
        assert_eq!(repeats(&again, &cuts, &written_by), (0, 1));
        // Its writer unknown, any move counts.
        assert_eq!(repeats(&list, &cuts, &BTreeMap::new()), (0, 2));
        // Twice in one transaction: doubled.
        let same_xid = [arrival("{\"n\": 7}", 1, 10), arrival("{\"n\": 7}", 1, 11)];
        assert_eq!(repeats(&same_xid, &cuts, &written_by), (0, 1));
    }
}
