//! `ibex.plugin` and `ibex.plugin_use`: WebAssembly components with their
//! manifests, and the syncs they are attached to.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use super::manifest::{Manifest, OnError, PluginKind};
use crate::error::{Error, PgContext, Result};

#[derive(Debug, Clone)]
pub struct PluginRecord {
    pub name: String,
    pub sha256: String,
    pub size: i64,
    pub manifest: Manifest,
    pub updated_at: DateTime<Utc>,
}

/// A plugin as `ibex list plugins` shows it: the record, its manifest's
/// fields alongside, and the syncs that use it.
#[derive(Debug, Serialize)]
pub struct PluginView<'a> {
    pub name: &'a str,
    pub sha256: &'a str,
    pub size: i64,
    #[serde(flatten)]
    pub manifest: &'a Manifest,
    pub used_by: Vec<String>,
}

impl PluginRecord {
    pub fn view(&self, used_by: Vec<String>) -> PluginView<'_> {
        PluginView { name: &self.name, sha256: &self.sha256, size: self.size, manifest: &self.manifest, used_by }
    }

    fn from_row(row: &Row) -> Result<Self> {
        let name: String = row.get("name");
        let bad = |what: &str| Error::Catalog(format!("plugin {name:?} has an unreadable {what} in the catalog"));
        let kind: PluginKind = row.get::<_, String>("kind").parse().map_err(|_| bad("kind"))?;
        let config: serde_json::Value = row.get("config");
        let limits: serde_json::Value = row.get("limits");
        let defaults = Manifest::defaults(kind);
        let limit = |key: &str, default: u64| limits.get(key).and_then(|v| v.as_u64()).unwrap_or(default);
        let manifest = Manifest {
            kind,
            fuel: row.get::<_, i64>("fuel") as u64,
            memory: row.get::<_, i64>("memory") as u64,
            timeout: std::time::Duration::from_millis(row.get::<_, i64>("timeout_ms") as u64),
            grants: row.get("grants"),
            write_grants: row.get("write_grants"),
            on_error: row.get::<_, String>("on_error").parse::<OnError>().map_err(|_| bad("on_error"))?,
            config: serde_json::from_value(config).map_err(|_| bad("config"))?,
            query_row_cap: row.get::<_, i64>("query_rows") as u64,
            rows: row.get("rows"),
            tables: row.get("tables"),
            write_tables: row.get("write_tables"),
            max_statements: limit("max_statements", defaults.max_statements),
            log_bytes: limit("log_bytes", defaults.log_bytes),
            table_elements: limit("table_elements", defaults.table_elements),
            run_fuel: limit("run_fuel", defaults.run_fuel),
        };
        Ok(PluginRecord {
            sha256: row.get("sha256"),
            size: row.get("size"),
            updated_at: row.get("updated_at"),
            manifest,
            name,
        })
    }
}

const SELECT: &str = "SELECT name, kind, sha256, octet_length(wasm)::int8 AS size, fuel, memory, timeout_ms, grants,
        write_grants, on_error, query_rows, rows, config, updated_at, tables, write_tables, limits FROM ibex.plugin";

pub async fn exists(c: &impl GenericClient, name: &str) -> Result<bool> {
    Ok(c.query_opt("SELECT 1 FROM ibex.plugin WHERE name = $1", &[&name])
        .await
        .ctx(|| format!("looking up plugin {name:?}"))?
        .is_some())
}

fn manifest_params(m: &Manifest) -> Result<(i64, i64, i64, i64, serde_json::Value)> {
    let config = serde_json::to_value(&m.config).map_err(|e| Error::Catalog(format!("cannot store config: {e}")))?;
    Ok((m.fuel as i64, m.memory as i64, m.timeout.as_millis() as i64, m.query_row_cap as i64, config))
}

fn limits_json(m: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "max_statements": m.max_statements,
        "log_bytes": m.log_bytes,
        "table_elements": m.table_elements,
        "run_fuel": m.run_fuel,
    })
}

/// The manifest's access lists and limits, stored beside its other columns.
async fn set_access(c: &impl GenericClient, name: &str, m: &Manifest) -> Result<()> {
    c.execute(
        "UPDATE ibex.plugin SET tables = $2, write_tables = $3, limits = $4 WHERE name = $1",
        &[&name, &m.tables, &m.write_tables, &limits_json(m)],
    )
    .await
    .ctx(|| format!("storing the grants of plugin {name:?}"))?;
    Ok(())
}

pub async fn add(c: &impl GenericClient, name: &str, wasm: &[u8], sha256: &str, m: &Manifest) -> Result<()> {
    if exists(c, name).await? {
        return Err(Error::duplicate_hint("plugin", name, "replace it with `ibex update plugin NAME FILE.wasm`"));
    }
    let (fuel, memory, timeout, rows, config) = manifest_params(m)?;
    c.execute(
        "INSERT INTO ibex.plugin (name, kind, wasm, sha256, fuel, memory, timeout_ms, grants, write_grants,
                                  on_error, query_rows, config, rows)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &name,
            &m.kind.as_str(),
            &wasm,
            &sha256,
            &fuel,
            &memory,
            &timeout,
            &m.grants,
            &m.write_grants,
            &m.on_error.to_string(),
            &rows,
            &config,
            &m.rows,
        ],
    )
    .await
    .ctx(|| format!("adding plugin {name:?}"))?;
    set_access(c, name, m).await
}

/// Replaces the component (when `wasm` is given) and the manifest.
pub async fn update(c: &impl GenericClient, name: &str, wasm: Option<(&[u8], &str)>, m: &Manifest) -> Result<()> {
    let (fuel, memory, timeout, rows, config) = manifest_params(m)?;
    c.execute(
        "UPDATE ibex.plugin SET kind = $2, fuel = $3, memory = $4, timeout_ms = $5, grants = $6, write_grants = $7,
                on_error = $8, query_rows = $9, config = $10, rows = $11, updated_at = now()
          WHERE name = $1",
        &[
            &name,
            &m.kind.as_str(),
            &fuel,
            &memory,
            &timeout,
            &m.grants,
            &m.write_grants,
            &m.on_error.to_string(),
            &rows,
            &config,
            &m.rows,
        ],
    )
    .await
    .ctx(|| format!("updating plugin {name:?}"))?;
    set_access(c, name, m).await?;
    if let Some((bytes, sha)) = wasm {
        c.execute(
            "UPDATE ibex.plugin SET wasm = $2, sha256 = $3, precompiled = NULL WHERE name = $1",
            &[&name, &bytes, &sha],
        )
        .await
        .ctx(|| format!("replacing the component of plugin {name:?}"))?;
    }
    Ok(())
}

pub async fn get(c: &impl GenericClient, name: &str) -> Result<PluginRecord> {
    let row = c
        .query_opt(&format!("{SELECT} WHERE name = $1"), &[&name])
        .await
        .ctx(|| format!("reading plugin {name:?}"))?
        .ok_or_else(|| Error::not_found_hint("plugin", name, "add it with `ibex add plugin NAME FILE.wasm`"))?;
    PluginRecord::from_row(&row)
}

/// The component's bytes (WebAssembly, never native code).
pub async fn bytes(c: &impl GenericClient, name: &str) -> Result<Vec<u8>> {
    let row = c
        .query_opt("SELECT wasm FROM ibex.plugin WHERE name = $1", &[&name])
        .await
        .ctx(|| format!("reading plugin {name:?}"))?
        .ok_or_else(|| Error::not_found("plugin", name))?;
    Ok(row.get(0))
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<PluginRecord>> {
    let rows = c.query(&format!("{SELECT} ORDER BY name"), &[]).await.ctx(|| "listing plugins".into())?;
    rows.iter().map(PluginRecord::from_row).collect()
}

/// Where the plugin is in use, one line each.
pub async fn uses(c: &impl GenericClient, name: &str) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT 'conflict handler of sync ' || s.name FROM ibex.sync s WHERE s.conflict_strategy = 'plugin:' || $1
             UNION ALL
             SELECT u.kind || ' of sync ' || u.sync ||
                    coalesce(' on ' || r.schema_name || '.' || r.rel_name, '') || coalesce(' to ' || u.target_db, '')
               FROM ibex.plugin_use u LEFT JOIN ibex.relation r ON r.id = u.relation
              WHERE u.plugin = $1
             ORDER BY 1",
            &[&name],
        )
        .await
        .ctx(|| format!("finding where plugin {name:?} is used"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn remove(c: &impl GenericClient, name: &str) -> Result<()> {
    get(c, name).await?;
    let uses = uses(c, name).await?;
    if !uses.is_empty() {
        return Err(Error::Refused(format!("plugin {name:?} is in use ({}): detach it first", uses.join("; "))));
    }
    c.execute("DELETE FROM ibex.plugin WHERE name = $1", &[&name]).await.ctx(|| format!("removing plugin {name:?}"))?;
    Ok(())
}

/// A transform or hook attached to a sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginUse {
    pub plugin: String,
    pub kind: String,
    /// The table a transform applies to (None: every table of the sync).
    pub table: Option<crate::pg::QualifiedName>,
    pub target_db: Option<String>,
    pub hook_points: Vec<String>,
}

pub async fn add_use(
    c: &impl GenericClient,
    plugin: &str,
    sync: &str,
    kind: &str,
    relation: Option<i32>,
    target_db: Option<&str>,
    hook_points: Option<&[String]>,
) -> Result<()> {
    let inserted = c
        .execute(
            "INSERT INTO ibex.plugin_use (plugin, sync, kind, relation, target_db, hook_points)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[&plugin, &sync, &kind, &relation, &target_db, &hook_points],
        )
        .await
        .ctx(|| format!("attaching plugin {plugin:?} to sync {sync:?}"))?;
    if inserted == 0 {
        return Err(Error::duplicate("attachment", format!("{kind} {plugin} on sync {sync}")));
    }
    Ok(())
}

pub async fn uses_of_sync(c: &impl GenericClient, sync: &str) -> Result<Vec<PluginUse>> {
    let rows = c
        .query(
            "SELECT u.plugin, u.kind, r.schema_name, r.rel_name, u.target_db, coalesce(u.hook_points, '{}')
               FROM ibex.plugin_use u LEFT JOIN ibex.relation r ON r.id = u.relation
              WHERE u.sync = $1 ORDER BY u.id",
            &[&sync],
        )
        .await
        .ctx(|| format!("reading the plugins of sync {sync:?}"))?;
    Ok(rows
        .iter()
        .map(|r| PluginUse {
            plugin: r.get(0),
            kind: r.get(1),
            table: r
                .get::<_, Option<String>>(2)
                .map(|s| crate::pg::QualifiedName::new(s, r.get::<_, Option<String>>(3).unwrap_or_default())),
            target_db: r.get(4),
            hook_points: r.get(5),
        })
        .collect())
}

pub async fn remove_uses(c: &impl GenericClient, plugin: &str, sync: &str, kind: &str) -> Result<u64> {
    c.execute("DELETE FROM ibex.plugin_use WHERE plugin = $1 AND sync = $2 AND kind = $3", &[&plugin, &sync, &kind])
        .await
        .ctx(|| format!("detaching plugin {plugin:?} from sync {sync:?}"))
}
