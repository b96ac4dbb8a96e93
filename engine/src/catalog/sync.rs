//! `ibex.sync`: a herd replicated among the databases of a dbgroup, with
//! the parameters that say how.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use super::dbgroup::{DbGroup, Role};
use crate::error::{Error, PgContext, Result};

/// How a key changed on several sources in one window is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictStrategy {
    /// Newest change time per key wins; ties by db priority, then name.
    Latest,
    /// The source with the newest change in any table wins every conflict.
    LatestAllTables,
    /// The first db of this list that changed the key wins.
    Ordered(Vec<String>),
    /// The run fails; nothing is applied.
    Abort,
    /// Conflicting keys are left as they are on each db and reported.
    Skip,
    /// A random one of the changed versions wins.
    Random,
    /// A WebAssembly conflict handler decides (`plugin:NAME`).
    Plugin(String),
}

impl ConflictStrategy {
    /// Checks an ordered list against the sync's dbs.
    pub fn check_against(&self, group: &DbGroup) -> Result<()> {
        if let ConflictStrategy::Ordered(dbs) = self {
            for db in dbs {
                match group.members.iter().find(|m| &m.db == db) {
                    Some(m) if m.role == Role::Source => {}
                    Some(_) => {
                        return Err(Error::usage(format!(
                            "conflict_strategy lists db {db:?}, which is not a source of dbgroup {:?}: list only sources",
                            group.name
                        )));
                    }
                    None => {
                        return Err(Error::usage(format!(
                            "conflict_strategy lists db {db:?}, which is not in dbgroup {:?}: use latest, latest_all_tables, abort, skip, random or a list of its sources",
                            group.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for ConflictStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictStrategy::Latest => f.write_str("latest"),
            ConflictStrategy::LatestAllTables => f.write_str("latest_all_tables"),
            ConflictStrategy::Ordered(dbs) => f.write_str(&dbs.join(",")),
            ConflictStrategy::Abort => f.write_str("abort"),
            ConflictStrategy::Skip => f.write_str("skip"),
            ConflictStrategy::Random => f.write_str("random"),
            ConflictStrategy::Plugin(name) => write!(f, "plugin:{name}"),
        }
    }
}

impl FromStr for ConflictStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        // Bucardo's names are accepted too.
        let plain = s.strip_prefix("bucardo_").unwrap_or(s);
        Ok(match plain {
            "latest" => ConflictStrategy::Latest,
            "latest_all" | "latest_all_tables" => ConflictStrategy::LatestAllTables,
            "abort" => ConflictStrategy::Abort,
            "skip" => ConflictStrategy::Skip,
            "random" => ConflictStrategy::Random,
            "" => {
                return Err(Error::usage(
                    "conflict_strategy is empty: use latest, latest_all_tables, abort, skip, random or a list of source dbs",
                ));
            }
            other if other.starts_with("plugin:") => {
                let name = &other["plugin:".len()..];
                super::check_name("plugin", name)?;
                ConflictStrategy::Plugin(name.to_string())
            }

            other => {
                let dbs: Vec<String> = other.split(',').map(|d| d.trim().to_string()).collect();
                if dbs.iter().any(|d| super::check_name("db", d).is_err()) {
                    return Err(Error::usage(format!(
                        "bad conflict_strategy {s:?}: use latest, latest_all_tables, abort, skip, random or a comma-separated list of source dbs"
                    )));
                }
                ConflictStrategy::Ordered(dbs)
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IsolationLevel {
    #[serde(rename = "repeatable read")]
    RepeatableRead,
    #[serde(rename = "serializable")]
    Serializable,
}

impl IsolationLevel {
    pub fn as_sql(self) -> &'static str {
        match self {
            IsolationLevel::RepeatableRead => "repeatable read",
            IsolationLevel::Serializable => "serializable",
        }
    }
}

impl FromStr for IsolationLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['_', '-'], " ").as_str() {
            "repeatable read" => Ok(IsolationLevel::RepeatableRead),
            "serializable" => Ok(IsolationLevel::Serializable),
            "read committed" => Err(Error::usage(
                "isolation_level=read_committed is refused: an apply outside the snapshot that decided the conflicts can lose updates; use repeatable_read or serializable",
            )),
            _ => Err(Error::usage(format!("bad isolation_level {s:?}: use repeatable_read or serializable"))),
        }
    }
}

/// What a run does when a table's columns differ between dbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DdlPolicy {
    /// The run fails, naming the table, db and column.
    #[default]
    Fail,
    /// The sync stops applying the table (every table, when it has several
    /// sources) while capture goes on, and resumes by itself once the
    /// columns match everywhere (see `sync/pause.rs`).
    Pause,
    /// A column a source has and another db lacks is added there (same
    /// type, collation, default, NOT NULL) before rows with it are
    /// applied; any other difference pauses the table as `Pause` does.
    Addcol,
}

impl DdlPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DdlPolicy::Fail => "fail",
            DdlPolicy::Pause => "pause",
            DdlPolicy::Addcol => "addcol",
        }
    }
}

impl FromStr for DdlPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fail" => Ok(DdlPolicy::Fail),
            "pause" => Ok(DdlPolicy::Pause),
            "addcol" => Ok(DdlPolicy::Addcol),
            other => Err(Error::usage(format!(
                "bad ddl {other:?}: use fail (a run stops on a schema difference), pause (the differing table waits, capture goes on, and it resumes once the columns match) or addcol (columns a source gained are added on the other dbs; other differences pause)"
            ))),
        }
    }
}

/// The parameters of a sync that `add sync` and `update sync` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncParams {
    pub status: String,
    pub conflict_strategy: ConflictStrategy,
    pub autokick: bool,
    pub checktime: Option<Duration>,
    pub onetimecopy: i16,
    pub kidsalive: bool,
    pub lock_timeout: Option<Duration>,
    pub isolation_level: IsolationLevel,
    /// Rows this sync applies are captured where other syncs read them.
    pub makedelta: bool,
    pub ddl: DdlPolicy,
}

impl Default for SyncParams {
    fn default() -> Self {
        SyncParams {
            status: "active".into(),
            conflict_strategy: ConflictStrategy::Latest,
            autokick: true,
            checktime: None,
            onetimecopy: 0,
            kidsalive: true,
            lock_timeout: None,
            isolation_level: IsolationLevel::RepeatableRead,
            makedelta: false,
            ddl: DdlPolicy::Fail,
        }
    }
}

impl SyncParams {
    pub const KEYS: &'static [&'static str] = &[
        "conflict_strategy",
        "autokick",
        "checktime",
        "onetimecopy",
        "kidsalive",
        "status",
        "lock_timeout",
        "isolation_level",
        "makedelta",
        "ddl",
    ];

    /// Sets one parameter from its text form; `key` must be one of `KEYS`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "conflict_strategy" => self.conflict_strategy = value.parse()?,
            "autokick" | "ping" => self.autokick = parse_bool(key, value)?,
            "checktime" => self.checktime = parse_duration(key, value)?,
            "onetimecopy" => {
                self.onetimecopy = match value {
                    "0" => 0,
                    "1" => 1,
                    "2" => 2,
                    _ => {
                        return Err(Error::usage(format!(
                            "bad onetimecopy {value:?}: use 0 (never), 1 (full copy on the next run) or 2 (full copy into empty tables only)"
                        )));
                    }
                }
            }
            "kidsalive" | "stayalive" => self.kidsalive = parse_bool(key, value)?,
            "status" => {
                self.status = match value {
                    "active" | "inactive" => value.to_string(),
                    _ => {
                        return Err(Error::usage(format!("bad status {value:?}: use active or inactive")));
                    }
                }
            }
            "lock_timeout" => self.lock_timeout = parse_duration(key, value)?,
            "isolation_level" => self.isolation_level = value.parse()?,
            "makedelta" => self.makedelta = parse_bool(key, value)?,
            "ddl" => self.ddl = value.parse()?,
            other => {
                return Err(Error::usage(format!(
                    "unknown sync parameter {other:?}: use one of {}",
                    Self::KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }
}

pub fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::usage(format!("bad {key} {value:?}: use true or false"))),
    }
}

/// `30s`, `5m`, `1h 30m`, `250ms`, a bare number of seconds; `0` or `off` for none.
pub fn parse_duration(key: &str, value: &str) -> Result<Option<Duration>> {
    let bad = || {
        Error::usage(format!("bad {key} {value:?}: write a duration such as 30s, 5m, 1h or 250ms (0 or off for none)"))
    };
    let trimmed = value.trim();
    if matches!(trimmed, "0" | "off" | "none" | "") {
        return Ok(None);
    }
    let duration = match trimmed.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(trimmed).map_err(|_| bad())?,
    };
    if duration.is_zero() {
        return Ok(None);
    }
    if duration > Duration::from_secs(366 * 24 * 3600) {
        return Err(bad());
    }
    Ok(Some(duration))
}

pub fn format_duration(d: Option<Duration>) -> String {
    match d {
        None => "off".into(),
        Some(d) => humantime::format_duration(d).to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRecord {
    pub name: String,
    pub herd: String,
    pub dbgroup: String,
    pub params: SyncParams,
}

#[derive(Debug, Serialize)]
pub struct SyncView {
    pub name: String,
    pub status: String,
    pub herd: String,
    pub dbgroup: String,
    pub dbs: Vec<String>,
    pub conflict_strategy: String,
    pub autokick: bool,
    pub checktime: String,
    pub onetimecopy: i16,
    pub kidsalive: bool,
    pub lock_timeout: String,
    pub isolation_level: IsolationLevel,
    pub makedelta: bool,
    pub ddl: DdlPolicy,
}

impl SyncRecord {
    pub fn view(&self, group: Option<&DbGroup>) -> SyncView {
        let p = &self.params;
        SyncView {
            name: self.name.clone(),
            status: p.status.clone(),
            herd: self.herd.clone(),
            dbgroup: self.dbgroup.clone(),
            dbs: group.map(|g| g.members.iter().map(|m| m.spec()).collect()).unwrap_or_default(),
            conflict_strategy: p.conflict_strategy.to_string(),
            autokick: p.autokick,
            checktime: format_duration(p.checktime),
            onetimecopy: p.onetimecopy,
            kidsalive: p.kidsalive,
            lock_timeout: format_duration(p.lock_timeout),
            isolation_level: p.isolation_level,
            makedelta: p.makedelta,
            ddl: p.ddl,
        }
    }

    fn from_row(row: &Row) -> Result<Self> {
        let ms = |col: &str| row.get::<_, Option<i64>>(col).map(|v| Duration::from_millis(v as u64));
        let name: String = row.get("name");
        let strategy: String = row.get("conflict_strategy");
        Ok(SyncRecord {
            herd: row.get("herd"),
            dbgroup: row.get("dbgroup"),
            params: SyncParams {
                status: row.get("status"),
                conflict_strategy: strategy.parse().map_err(|err| {
                    Error::Catalog(format!("sync {name:?} has an unreadable conflict_strategy in the catalog: {err}"))
                })?,
                autokick: row.get("autokick"),
                checktime: ms("checktime_ms"),
                onetimecopy: row.get("onetimecopy"),
                kidsalive: row.get("kidsalive"),
                lock_timeout: ms("lock_timeout_ms"),
                isolation_level: row.get::<_, String>("isolation_level").parse()?,
                makedelta: row.get("makedelta"),
                ddl: row.get::<_, String>("ddl").parse()?,
            },
            name,
        })
    }
}

const SELECT: &str = "SELECT name, herd, dbgroup, status, conflict_strategy, autokick, checktime_ms, onetimecopy,
        kidsalive, lock_timeout_ms, isolation_level, makedelta, ddl FROM ibex.sync";

fn millis(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.as_millis().min(i64::MAX as u128) as i64)
}

pub async fn exists(c: &impl GenericClient, name: &str) -> Result<bool> {
    Ok(c.query_opt("SELECT 1 FROM ibex.sync WHERE name = $1", &[&name])
        .await
        .ctx(|| format!("looking up sync {name:?}"))?
        .is_some())
}

pub async fn add(c: &impl GenericClient, sync: &SyncRecord) -> Result<()> {
    if exists(c, &sync.name).await? {
        return Err(Error::duplicate_hint("sync", &sync.name, "change it with `ibex update sync`"));
    }
    c.execute(
        "INSERT INTO ibex.sync (name, herd, dbgroup) VALUES ($1, $2, $3)",
        &[&sync.name, &sync.herd, &sync.dbgroup],
    )
    .await
    .ctx(|| format!("adding sync {:?}", sync.name))?;
    update(c, sync).await
}

pub async fn update(c: &impl GenericClient, sync: &SyncRecord) -> Result<()> {
    let p = &sync.params;
    c.execute(
        "UPDATE ibex.sync SET herd = $2, dbgroup = $3, status = $4, conflict_strategy = $5, autokick = $6,
                checktime_ms = $7, onetimecopy = $8, kidsalive = $9, lock_timeout_ms = $10,
                isolation_level = $11, makedelta = $12, ddl = $13, updated_at = now()
          WHERE name = $1",
        &[
            &sync.name,
            &sync.herd,
            &sync.dbgroup,
            &p.status,
            &p.conflict_strategy.to_string(),
            &p.autokick,
            &millis(p.checktime),
            &p.onetimecopy,
            &p.kidsalive,
            &millis(p.lock_timeout),
            &p.isolation_level.as_sql(),
            &p.makedelta,
            &p.ddl.as_str(),
        ],
    )
    .await
    .ctx(|| format!("updating sync {:?}", sync.name))?;
    Ok(())
}

pub async fn get(c: &impl GenericClient, name: &str) -> Result<SyncRecord> {
    let row = c
        .query_opt(&format!("{SELECT} WHERE name = $1"), &[&name])
        .await
        .ctx(|| format!("reading sync {name:?}"))?
        .ok_or_else(|| Error::not_found_hint("sync", name, "list them with `ibex list syncs`"))?;
    SyncRecord::from_row(&row)
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<SyncRecord>> {
    let rows = c.query(&format!("{SELECT} ORDER BY name"), &[]).await.ctx(|| "listing syncs".into())?;
    rows.iter().map(SyncRecord::from_row).collect()
}

pub async fn remove(c: &impl GenericClient, name: &str) -> Result<()> {
    get(c, name).await?;
    c.execute("DELETE FROM ibex.sync WHERE name = $1", &[&name]).await.ctx(|| format!("removing sync {name:?}"))?;
    Ok(())
}

/// Dbs of the dbgroups that syncs use: where capture may be installed.
pub async fn dbs_in_syncs(c: &impl GenericClient) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT DISTINCT m.db FROM ibex.sync s JOIN ibex.dbgroup_member m ON m.dbgroup = s.dbgroup ORDER BY 1",
            &[],
        )
        .await
        .ctx(|| "listing the dbs of syncs".into())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Tables syncs write on `db`: those of every sync where it is a target
/// (or fullcopy), or one source of several.
pub async fn tables_written_to(c: &impl GenericClient, db: &str) -> Result<Vec<crate::pg::QualifiedName>> {
    let rows = c
        .query(
            "SELECT DISTINCT r.schema_name, r.rel_name
               FROM ibex.sync s
               JOIN ibex.dbgroup_member m ON m.dbgroup = s.dbgroup
               JOIN ibex.herd_member h ON h.herd = s.herd
               JOIN ibex.relation r ON r.id = h.relation AND r.kind = 'table'
              WHERE m.db = $1
                AND (m.role <> 'source'
                     OR (SELECT count(*) FROM ibex.dbgroup_member o WHERE o.dbgroup = s.dbgroup AND o.role = 'source') > 1)
              ORDER BY 1, 2",
            &[&db],
        )
        .await
        .ctx(|| format!("listing the tables syncs write on db {db}"))?;
    rows.iter()
        .map(|r| {
            let read = || "reading a table name".to_string();
            Ok(crate::pg::QualifiedName::new(
                r.try_get::<_, String>(0).ctx(read)?,
                r.try_get::<_, String>(1).ctx(read)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strategies_and_bucardo_names() {
        assert_eq!("bucardo_latest".parse::<ConflictStrategy>().unwrap(), ConflictStrategy::Latest);
        assert_eq!("a,b".parse::<ConflictStrategy>().unwrap(), ConflictStrategy::Ordered(vec!["a".into(), "b".into()]));
        assert!("a b".parse::<ConflictStrategy>().is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("checktime", "30").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("checktime", "5m").unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("checktime", "off").unwrap(), None);
        assert!(parse_duration("checktime", "soon").is_err());
        assert!(parse_duration("checktime", "-5").is_err());
    }
}
