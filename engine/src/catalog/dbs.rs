//! `ibex.db`: the databases ibex connects to.

use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, PgContext, Result};
use crate::pg::ConnInfo;

#[derive(Debug, Clone)]
pub struct DbRecord {
    pub name: String,
    pub conn: ConnInfo,
    pub status: String,
    /// None for PostgreSQL; else the foreign target (only ever a sync's target).
    pub target: Option<crate::target::TargetSpec>,
    /// How changes are captured where the db is a source.
    pub capture: crate::capture::CaptureMode,
}

/// What `list dbs` shows: everything but the password, which is only said
/// to be set.
#[derive(Debug, Serialize)]
pub struct DbView {
    pub name: String,
    pub dbname: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<&'static str>,
    pub sslmode: Option<&'static str>,
    pub status: String,
    pub used_by_syncs: Vec<String>,
    /// postgres, or the foreign target's type (sqlite, flatfile).
    #[serde(rename = "type")]
    pub db_type: &'static str,
    pub capture: crate::capture::CaptureMode,
}

impl DbRecord {
    fn from_row(row: &Row) -> Result<Self> {
        let name: String = row.get("name");
        let conn: serde_json::Value = row.get("conn");
        let conn: ConnInfo = serde_json::from_value(conn).map_err(|err| {
            Error::Catalog(format!("db {name:?} has unreadable connection info in the catalog: {err}"))
        })?;
        let target: Option<serde_json::Value> = row.get("target");
        let target = target
            .map(serde_json::from_value)
            .transpose()
            .map_err(|err| Error::Catalog(format!("db {name:?} has an unreadable target in the catalog: {err}")))?;
        let capture = crate::capture::CaptureMode::parse(row.get("capture"))
            .map_err(|err| Error::Catalog(format!("db {name:?} has an unreadable capture mode: {err}")))?;
        Ok(DbRecord { name, conn, status: row.get("status"), target, capture })
    }

    pub fn view(&self, used_by_syncs: Vec<String>) -> DbView {
        DbView {
            name: self.name.clone(),
            dbname: self.conn.dbname.clone(),
            host: self.conn.host.clone(),
            port: self.conn.port,
            user: self.conn.user.clone(),
            password: self.conn.password.as_ref().map(|_| "********"),
            sslmode: self.conn.sslmode.map(|m| m.as_str()),
            status: self.status.clone(),
            used_by_syncs,
            db_type: self.target.as_ref().map_or("postgres", |t| t.type_name()),
            capture: self.capture,
        }
    }
}

fn conn_json(conn: &ConnInfo) -> Result<serde_json::Value> {
    serde_json::to_value(conn).map_err(|err| Error::Catalog(format!("cannot store connection info: {err}")))
}

pub async fn exists(c: &impl GenericClient, name: &str) -> Result<bool> {
    let row = c
        .query_opt("SELECT 1 FROM ibex.db WHERE name = $1", &[&name])
        .await
        .ctx(|| format!("looking up db {name:?}"))?;
    Ok(row.is_some())
}

pub async fn add(
    c: &impl GenericClient,
    name: &str,
    conn: &ConnInfo,
    capture: crate::capture::CaptureMode,
) -> Result<()> {
    if exists(c, name).await? {
        return Err(Error::duplicate_hint("db", name, "pick another name or change it with `ibex update db`"));
    }
    c.execute(
        "INSERT INTO ibex.db (name, conn, capture) VALUES ($1, $2, $3)",
        &[&name, &conn_json(conn)?, &capture.as_str()],
    )
    .await
    .ctx(|| format!("adding db {name:?}"))?;
    Ok(())
}

/// Adds a db that is not PostgreSQL; `conn` only names it for listings.
pub async fn add_foreign(c: &impl GenericClient, name: &str, spec: &crate::target::TargetSpec) -> Result<()> {
    if exists(c, name).await? {
        return Err(Error::duplicate_hint("db", name, "pick another name or change it with `ibex update db`"));
    }
    let conn = ConnInfo { dbname: spec.describe(), ..ConnInfo::default() };
    let target = serde_json::to_value(spec).map_err(|err| Error::Catalog(format!("cannot store the target: {err}")))?;
    c.execute("INSERT INTO ibex.db (name, conn, target) VALUES ($1, $2, $3)", &[&name, &conn_json(&conn)?, &target])
        .await
        .ctx(|| format!("adding db {name:?}"))?;
    Ok(())
}

pub async fn get(c: &impl GenericClient, name: &str) -> Result<DbRecord> {
    let row = c
        .query_opt("SELECT name, conn, status, target, capture FROM ibex.db WHERE name = $1", &[&name])
        .await
        .ctx(|| format!("reading db {name:?}"))?
        .ok_or_else(|| Error::not_found_hint("db", name, "list them with `ibex list dbs`"))?;
    DbRecord::from_row(&row)
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<DbRecord>> {
    let rows = c
        .query("SELECT name, conn, status, target, capture FROM ibex.db ORDER BY name", &[])
        .await
        .ctx(|| "listing dbs".into())?;
    rows.iter().map(DbRecord::from_row).collect()
}

pub async fn update(c: &impl GenericClient, db: &DbRecord) -> Result<()> {
    let name = &db.name;
    c.execute(
        "UPDATE ibex.db SET conn = $2, status = $3, capture = $4, updated_at = now() WHERE name = $1",
        &[name, &conn_json(&db.conn)?, &db.status, &db.capture.as_str()],
    )
    .await
    .ctx(|| format!("updating db {name:?}"))?;
    Ok(())
}

/// The syncs whose dbgroup includes this db.
pub async fn syncs_using(c: &impl GenericClient, name: &str) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT DISTINCT s.name FROM ibex.sync s
               JOIN ibex.dbgroup_member m ON m.dbgroup = s.dbgroup
              WHERE m.db = $1 ORDER BY 1",
            &[&name],
        )
        .await
        .ctx(|| format!("finding syncs that use db {name:?}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn remove(c: &impl GenericClient, name: &str) -> Result<()> {
    get(c, name).await?;
    let syncs = syncs_using(c, name).await?;
    if !syncs.is_empty() {
        return Err(Error::Refused(format!(
            "db {name:?} is used by sync {}: remove the sync or take the db out of its dbgroup first",
            syncs.join(", ")
        )));
    }
    c.execute("DELETE FROM ibex.dbgroup_member WHERE db = $1", &[&name])
        .await
        .ctx(|| format!("removing db {name:?} from its dbgroups"))?;
    c.execute("DELETE FROM ibex.db WHERE name = $1", &[&name]).await.ctx(|| format!("removing db {name:?}"))?;
    Ok(())
}
