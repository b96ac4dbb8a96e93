//! What a server can do, read once per connection set: which transaction
//! id and snapshot types capture uses (`xid8`/`pg_snapshot` from 13 on, the
//! epoch-extended `bigint`/`txid_snapshot` family before), and how a
//! trigger names its function (`EXECUTE PROCEDURE` on 10). Capture SQL
//! takes its flavour from here, never from version checks of its own.

use tokio_postgres::GenericClient;

use crate::error::{Error, PgContext, Result};

/// The oldest major ibex runs on: transition tables came in 10.
pub const MIN_VERSION_NUM: i32 = 100_000;

/// How transaction ids and snapshots are written on one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XidFlavour {
    /// `xid8`, `pg_current_xact_id()`, `pg_snapshot` (13 and later).
    #[default]
    Xid8,
    /// `bigint`, `txid_current()`, `txid_snapshot` (10 to 12; both are
    /// 64-bit, epoch-extended, and compare the same way).
    Txid,
}

impl XidFlavour {
    pub fn xid_type(self) -> &'static str {
        match self {
            XidFlavour::Xid8 => "xid8",
            XidFlavour::Txid => "bigint",
        }
    }

    pub fn current_xid(self) -> &'static str {
        match self {
            XidFlavour::Xid8 => "pg_current_xact_id()",
            XidFlavour::Txid => "txid_current()",
        }
    }

    pub fn snapshot_type(self) -> &'static str {
        match self {
            XidFlavour::Xid8 => "pg_snapshot",
            XidFlavour::Txid => "txid_snapshot",
        }
    }

    pub fn current_snapshot(self) -> &'static str {
        match self {
            XidFlavour::Xid8 => "pg_current_snapshot()",
            XidFlavour::Txid => "txid_current_snapshot()",
        }
    }

    /// A transaction id literal of this flavour.
    pub fn xid(self, xid: u64) -> String {
        match self {
            XidFlavour::Xid8 => format!("'{xid}'::xid8"),
            XidFlavour::Txid => format!("{xid}::int8"),
        }
    }

    /// An array of transaction ids.
    pub fn xids(self, xids: &[u64]) -> String {
        let list: Vec<String> = xids.iter().map(u64::to_string).collect();
        match self {
            XidFlavour::Xid8 => format!("'{{{}}}'::xid8[]", list.join(",")),
            XidFlavour::Txid => format!("'{{{}}}'::int8[]", list.join(",")),
        }
    }

    /// `xid` (an SQL expression) is visible in `snapshot` (its text form).
    pub fn visible(self, xid: &str, snapshot: &str) -> String {
        let literal = crate::pg::quote_literal(snapshot);
        match self {
            XidFlavour::Xid8 => format!("pg_visible_in_snapshot({xid}, {literal}::pg_snapshot)"),
            XidFlavour::Txid => format!("txid_visible_in_snapshot({xid}, {literal}::txid_snapshot)"),
        }
    }
}

/// One server's abilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `server_version_num`, e.g. 150018.
    pub version_num: i32,
    pub xids: XidFlavour,
}

impl Capabilities {
    pub fn of_version(version_num: i32) -> Capabilities {
        Capabilities { version_num, xids: if version_num >= 130_000 { XidFlavour::Xid8 } else { XidFlavour::Txid } }
    }

    /// `pg_log_standby_snapshot()` exists (16 and later).
    pub fn logs_standby_snapshot(&self) -> bool {
        self.version_num >= 160_000
    }

    /// `EXECUTE FUNCTION` (11 and later) or `EXECUTE PROCEDURE` (10) in CREATE TRIGGER.
    pub fn execute_trigger_function(&self) -> &'static str {
        if self.version_num >= 110_000 { "EXECUTE FUNCTION" } else { "EXECUTE PROCEDURE" }
    }

    /// "PostgreSQL 12.22"-style, for messages.
    pub fn describe(&self) -> String {
        describe_version(self.version_num)
    }
}

fn describe_version(num: i32) -> String {
    if num >= 100_000 { format!("PostgreSQL {}.{}", num / 10_000, num % 10_000) } else { format!("PostgreSQL {num}") }
}

/// Reads the server's version; one older than ibex supports is refused,
/// naming the version and the minimum.
pub async fn detect(c: &impl GenericClient) -> Result<Capabilities> {
    let num: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .ctx(|| "reading the server version".into())?
        .get(0);
    if num < MIN_VERSION_NUM {
        return Err(Error::Refused(format!(
            "{} is not supported: ibex needs PostgreSQL 10 or newer (statement triggers with transition tables)",
            describe_version(num)
        )));
    }
    Ok(Capabilities::of_version(num))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_by_version() {
        assert_eq!(Capabilities::of_version(100023).xids, XidFlavour::Txid);
        assert_eq!(Capabilities::of_version(120022).xids, XidFlavour::Txid);
        assert_eq!(Capabilities::of_version(130023).xids, XidFlavour::Xid8);
        assert_eq!(Capabilities::of_version(100023).execute_trigger_function(), "EXECUTE PROCEDURE");
        assert_eq!(Capabilities::of_version(110022).execute_trigger_function(), "EXECUTE FUNCTION");
        assert_eq!(Capabilities::of_version(120022).describe(), "PostgreSQL 12.22");
        assert_eq!(XidFlavour::Txid.xids(&[5, 7]), "'{5,7}'::int8[]");
    }
}
