//! Windows of changes: which delta rows a run reads from one source.
//!
//! A cursor is a snapshot (`xmin:xmax:xip,...` with 64-bit transaction
//! ids): the changes a sync has applied are those of transactions visible
//! in it. A run reads the rows of transactions committed after the cursor
//! and before the run's own snapshot. Written for an index: every such
//! transaction either started at or after the cursor's `xmax`, or was in
//! progress when the cursor was taken (its `xip` list), so
//! `txid >= xmax OR txid = ANY(xip)` finds them with two index probes,
//! however long another transaction stays open (an `xmin` bound would
//! scan every row written since that transaction began).
//!
//! A window too large for one transaction is cut at a transaction id
//! `boundary`: the sub-window ends at a synthetic snapshot that sees what
//! the run's snapshot sees below the boundary and what the cursor sees
//! from it on. Consecutive sub-windows are exact and never split a
//! transaction.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A snapshot as PostgreSQL prints `pg_snapshot` (and `txid_snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    /// In-progress transaction ids, sorted, each in `xmin..xmax`.
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// PostgreSQL's `pg_visible_in_snapshot`.
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && self.xip.binary_search(&xid).is_err())
    }

    /// The snapshot that sees what `now` sees below `boundary` and what
    /// `cursor` sees from `boundary` on: between the two (it sees all that
    /// `cursor` sees and only what `now` sees), given `cursor` was taken
    /// before `now` on the same server.
    pub fn bounded(cursor: &Snapshot, now: &Snapshot, boundary: u64) -> Snapshot {
        if boundary >= now.xmax {
            return now.clone();
        }
        let xmax = boundary.max(cursor.xmax);
        // Below the boundary (which is below now's xmax) now's in-progress
        // list decides; from it up to the cursor's xmax, the cursor's.
        let mut xip: Vec<u64> = now.xip.iter().copied().filter(|&x| x < boundary).collect();
        xip.extend(cursor.xip.iter().copied().filter(|&x| x >= boundary && x < xmax));
        xip.sort_unstable();
        xip.dedup();
        let xmin = xip.first().copied().unwrap_or(xmax);
        Snapshot { xmin, xmax, xip }
    }
}

impl FromStr for Snapshot {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        let bad = || Error::Sync(format!("unreadable snapshot {text:?} (expected xmin:xmax:xip,...)"));
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let list = parts.next().ok_or_else(bad)?;
        let mut xip = Vec::new();
        for x in list.split(',').filter(|x| !x.is_empty()) {
            xip.push(x.parse::<u64>().map_err(|_| bad())?);
        }
        xip.sort_unstable();
        if xmin > xmax {
            return Err(bad());
        }
        Ok(Snapshot { xmin, xmax, xip })
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

/// The changes one run reads from one source: committed after `cursor`,
/// and visible in `end` (when the window is cut short) or else in the
/// run's own snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub cursor: Snapshot,
    /// Where a sub-window ends; None: at the run's snapshot.
    pub end: Option<Snapshot>,
}

impl Window {
    /// Everything committed after the cursor (its text form).
    pub fn unbounded(cursor: &str) -> Result<Window> {
        Ok(Window { cursor: cursor.parse()?, end: None })
    }

    pub fn is_bounded(&self) -> bool {
        self.end.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        text.parse().unwrap()
    }

    /// Every xid that `cursor` sees, `mid` sees; every xid `mid` sees, `now` sees;
    /// below the boundary `mid` is `now`, from it on `mid` is `cursor`.
    fn check_between(cursor: &Snapshot, now: &Snapshot, boundary: u64) {
        let mid = Snapshot::bounded(cursor, now, boundary);
        assert!(mid.xmin <= mid.xmax, "{mid}");
        assert!(mid.xip.iter().all(|&x| x >= mid.xmin && x < mid.xmax), "{mid}");
        for xid in 0..now.xmax + 5 {
            if cursor.sees(xid) {
                assert!(mid.sees(xid), "mid {mid} misses {xid} seen by cursor {cursor}");
            }
            if mid.sees(xid) {
                assert!(now.sees(xid), "mid {mid} sees {xid} unseen by now {now}");
            }
            let expected = if xid < boundary { now.sees(xid) } else { cursor.sees(xid) };
            assert_eq!(
                mid.sees(xid),
                expected,
                "xid {xid}: mid {mid}, cursor {cursor}, now {now}, boundary {boundary}"
            );
        }
    }

    #[test]
    fn round_trips_text() {
        assert_eq!(snap("10:20:12,15").to_string(), "10:20:12,15");
        assert_eq!(snap("10:10:").to_string(), "10:10:");
        assert!("x:1:".parse::<Snapshot>().is_err());
        assert!("5:1:".parse::<Snapshot>().is_err());
    }

    #[test]
    fn bounded_snapshots_lie_between_cursor_and_now() {
        let cursor = snap("100:110:100,104,107");
        let now = snap("104:150:104,120,149");
        for boundary in [100, 101, 104, 105, 109, 110, 111, 120, 121, 149, 150, 200] {
            check_between(&cursor, &now, boundary);
        }
        let cursor = snap("5:5:");
        let now = snap("5:40:6,30");
        for boundary in 0..45 {
            check_between(&cursor, &now, boundary);
        }
    }
}
