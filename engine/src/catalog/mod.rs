//! The control catalog: schema `ibex` in the control database. The CLI
//! writes it (each command in one transaction, so a refused command leaves
//! it unchanged) and NOTIFYs the daemon; the daemon reads it.

pub mod capture;
pub mod daemons;
pub mod dbgroup;
pub mod dbs;
pub mod herd;
pub mod lease;
pub mod manifest;
pub mod migrations;
mod names;
pub mod paused;
pub mod plugin;
pub mod relation;
pub mod runs;
pub mod setting;
pub mod sync;

pub use dbgroup::{DbGroup, DbGroupMember, Role};
pub use dbs::DbRecord;
pub use herd::Herd;
pub use names::check_name;
pub use relation::{RelKind, Relation};
pub use runs::{ConflictRecord, RunRecord, RunState, TableCounts};
pub use setting::Setting;
pub use sync::{ConflictStrategy, IsolationLevel, SyncParams, SyncRecord};

use tokio_postgres::GenericClient;

use crate::error::{Error, PgContext, Result};
use crate::pg::{self, Client, ConnInfo};

/// The channel the CLI notifies after every committed catalog change.
pub const CHANGED_CHANNEL: &str = "ibex_catalog_changed";

/// An open connection to a control catalog at this binary's version.
pub struct Catalog {
    client: Client,
    info: ConnInfo,
}

/// What `ibex install` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    pub created_database: bool,
    pub from_version: i32,
    pub to_version: i32,
}

impl Catalog {
    /// Creates the control database if it is missing, then applies every
    /// pending migration. Running it again is a no-op.
    pub async fn install(info: &ConnInfo) -> Result<InstallReport> {
        Self::install_to(info, migrations::latest_version()).await
    }

    /// Installs up to `version` only (tests use this to build an old schema).
    pub async fn install_to(info: &ConnInfo, version: i32) -> Result<InstallReport> {
        let created_database = create_database_if_missing(info).await?;
        let mut client = pg::connect(info, "ibex install").await?;
        client
            .batch_execute(
                "SET client_min_messages = warning;
                 CREATE SCHEMA IF NOT EXISTS ibex;
                 CREATE TABLE IF NOT EXISTS ibex.schema_version (
                     version     int PRIMARY KEY,
                     description text NOT NULL,
                     applied_at  timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .ctx(|| format!("creating schema ibex in {}", info.describe()))?;
        let mut from_version = None;
        for migration in migrations::MIGRATIONS.iter().filter(|m| m.version <= version) {
            let tx = client.transaction().await.ctx(|| "starting a migration".into())?;
            // One installer at a time; the lock ends with the transaction.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext('ibex install'))", &[])
                .await
                .ctx(|| "locking the catalog for install".into())?;
            let current: i32 = tx
                .query_one("SELECT coalesce(max(version), 0) FROM ibex.schema_version", &[])
                .await
                .ctx(|| "reading the catalog version".into())?
                .get(0);
            from_version.get_or_insert(current);
            if current >= migration.version {
                continue;
            }
            tx.batch_execute(migration.sql)
                .await
                .ctx(|| format!("applying catalog migration {} ({})", migration.version, migration.description))?;
            tx.execute(
                "INSERT INTO ibex.schema_version (version, description) VALUES ($1, $2)",
                &[&migration.version, &migration.description],
            )
            .await
            .ctx(|| "recording the catalog version".into())?;
            tx.commit().await.ctx(|| "committing a catalog migration".into())?;
        }
        let to_version = schema_version(&client).await?.unwrap_or(0);
        Ok(InstallReport { created_database, from_version: from_version.unwrap_or(to_version), to_version })
    }

    /// Connects and checks that the catalog is installed at this binary's version.
    pub async fn open(info: &ConnInfo) -> Result<Catalog> {
        let client = pg::connect(info, "ibex").await.map_err(|err| match err {
            Error::Connect { target, reason } if reason.contains("does not exist") => Error::Catalog(format!(
                "the control database {target} does not exist: run `ibex install` first ({reason})"
            )),
            other => other,
        })?;
        let expected = migrations::latest_version();
        match schema_version(&client).await? {
            None => Err(Error::Catalog(format!("no ibex catalog in {}: run `ibex install` first", info.describe()))),
            Some(v) if v < expected => Err(Error::Catalog(format!(
                "the catalog in {} is at schema version {v} and this ibex needs {expected}: run `ibex install` to migrate it",
                info.describe()
            ))),
            Some(v) if v > expected => Err(Error::Catalog(format!(
                "the catalog in {} is at schema version {v}, newer than this ibex ({expected}): upgrade ibex",
                info.describe()
            ))),
            Some(_) => Ok(Catalog { client, info: info.clone() }),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn conn_info(&self) -> &ConnInfo {
        &self.info
    }

    /// Runs `change` in one transaction and notifies the daemon on commit;
    /// an error rolls everything back.
    pub async fn change<T, F>(&mut self, change: F) -> Result<T>
    where
        F: AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T>,
    {
        let tx = self.client.transaction().await.ctx(|| "starting a catalog transaction".into())?;
        let value = change(&tx).await?;
        tx.execute(&format!("NOTIFY {CHANGED_CHANNEL}"), &[]).await.ctx(|| "notifying the daemon".into())?;
        tx.commit().await.ctx(|| "committing the catalog change".into())?;
        Ok(value)
    }
}

/// This catalog's identity and where it lives, recorded on every db whose
/// capture it owns: (id, host:port/database).
pub async fn identity(c: &impl GenericClient) -> Result<(String, String)> {
    let row = c
        .query_one(
            "SELECT i.id, coalesce(host(inet_server_addr()), 'local socket') || ':' || current_setting('port') || '/' || current_database()
               FROM ibex.instance i",
            &[],
        )
        .await
        .ctx(|| "reading the catalog's identity".into())?;
    Ok((row.get(0), row.get(1)))
}

async fn schema_version(client: &impl GenericClient) -> Result<Option<i32>> {
    let row = client
        .query_one("SELECT to_regclass('ibex.schema_version') IS NOT NULL", &[])
        .await
        .ctx(|| "looking for the ibex catalog".into())?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT max(version) FROM ibex.schema_version", &[])
        .await
        .ctx(|| "reading the catalog version".into())?;
    Ok(row.get::<_, Option<i32>>(0))
}

async fn create_database_if_missing(info: &ConnInfo) -> Result<bool> {
    match pg::connect(info, "ibex install").await {
        Ok(_) => return Ok(false),
        Err(Error::Connect { reason, .. }) if reason.contains("does not exist") => {}
        Err(other) => return Err(other),
    }
    let maintenance = info.with_dbname("postgres");
    let client = pg::connect(&maintenance, "ibex install").await?;
    client
        .batch_execute(&format!("CREATE DATABASE {}", pg::quote_ident(&info.dbname)))
        .await
        .ctx(|| format!("creating the control database {}", info.describe()))?;
    Ok(true)
}
