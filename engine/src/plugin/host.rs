//! What a plugin may call: `log`, read-only `query` on granted dbs, and
//! `execute` in the run's transaction on dbs granted for writing. The
//! rest of WASI is linked with an empty context: no preopened dirs, no
//! environment, no sockets; stdout is dropped and stderr kept (bounded) so a
//! panic's message can be reported.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::types::{ToSql, Type};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::conflict_handler::ibex::plugin::{conflicts, host, types};
use super::bindings::row_transform::ibex::plugin::transforms;
use super::bindings::sync_hooks::ibex::plugin::hooks;

use super::convert::{self, ColumnKind, Value};
use super::manifest::Manifest;
use crate::error::describe_pg;
use crate::pg::{self, Client, ConnInfo};

/// A db of the running sync, as plugin calls may reach it.
pub struct HostDb {
    pub name: String,
    pub conn: ConnInfo,
    /// The KID's connection, inside the run's transaction (for `execute`).
    pub client: Option<Arc<Client>>,
    /// Opened on the first `query`: its own READ ONLY transaction.
    readonly: Mutex<Option<Client>>,
}

/// The dbs of one run, shared by every plugin call of the run.
#[derive(Default)]
pub struct HostDbs {
    dbs: Vec<HostDb>,
}

impl HostDbs {
    pub fn new(dbs: impl IntoIterator<Item = (String, ConnInfo, Option<Arc<Client>>)>) -> Arc<HostDbs> {
        Arc::new(HostDbs {
            dbs: dbs
                .into_iter()
                .map(|(name, conn, client)| HostDb { name, conn, client, readonly: Mutex::new(None) })
                .collect(),
        })
    }

    fn find(&self, name: &str) -> Option<&HostDb> {
        self.dbs.iter().find(|d| d.name == name)
    }
}

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    pub plugin: String,
    grants: Vec<String>,
    write_grants: Vec<String>,
    row_cap: u64,
    statement_timeout_ms: u128,
    dbs: Arc<HostDbs>,
    pub stderr: MemoryOutputPipe,
}

impl HostState {
    pub fn new(plugin: &str, manifest: &Manifest, dbs: Arc<HostDbs>) -> HostState {
        let stderr = MemoryOutputPipe::new(64 * 1024);
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder.stderr(stderr.clone());
        HostState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(manifest.memory as usize)
                .instances(16)
                .tables(64)
                .memories(16)
                .trap_on_grow_failure(true)
                .build(),
            plugin: plugin.to_string(),
            grants: manifest.grants.clone(),
            write_grants: manifest.write_grants.clone(),
            row_cap: manifest.query_row_cap,
            statement_timeout_ms: manifest.timeout.as_millis(),
            dbs,
            stderr,
        }
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_string()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for HostState {}
impl conflicts::Host for HostState {}
impl transforms::Host for HostState {}
impl hooks::Host for HostState {}

fn text_params(params: &[Value]) -> Vec<Option<String>> {
    params.iter().map(convert::to_text).collect()
}

/// Runs `sql` wrapped so every column comes back as a WIT value.
async fn run_query(client: &Client, sql: &str, params: &[Value], row_cap: u64) -> Result<Vec<Vec<Value>>, String> {
    let sql = sql.trim().trim_end_matches(';');
    let types = vec![Type::TEXT; params.len()];
    let plain = client.prepare_typed(sql, &types).await.map_err(|e| describe_pg(&e))?;
    let kinds: Vec<ColumnKind> = plain.columns().iter().map(|c| ColumnKind::of(c.type_().oid())).collect();
    let select: Vec<String> = plain.columns().iter().zip(&kinds).map(|(c, kind)| kind.select("q", c.name())).collect();
    let wrapped = format!("SELECT {} FROM ({sql}) q LIMIT {}", select.join(", "), row_cap + 1);
    let statement = client.prepare_typed(&wrapped, &types).await.map_err(|e| describe_pg(&e))?;
    let values = text_params(params);
    let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&statement, &refs).await.map_err(|e| describe_pg(&e))?;
    if rows.len() as u64 > row_cap {
        return Err(format!("the query returned more than {row_cap} rows (the plugin's query_rows limit)"));
    }
    rows.iter()
        .map(|row| {
            kinds
                .iter()
                .enumerate()
                .map(|(i, kind)| convert::from_row(row, i, *kind).map_err(|e| describe_pg(&e)))
                .collect()
        })
        .collect()
}

impl host::Host for HostState {
    async fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = self.plugin.as_str();
        match level {
            types::LogLevel::Error => tracing::error!(plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
        }
    }

    async fn query(&mut self, db: String, sql: String, params: Vec<Value>) -> Result<Vec<Vec<Value>>, String> {
        if !self.grants.contains(&db) {
            return Err(format!("db {db} is not granted to plugin {}: add it with grant={db}", self.plugin));
        }
        let target = self.dbs.find(&db).ok_or_else(|| format!("db {db} is not in this sync"))?;
        let mut slot = target.readonly.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let client =
                pg::connect(&target.conn, &format!("ibex plugin {}", self.plugin)).await.map_err(|e| e.to_string())?;
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = '{}ms'",
                    self.statement_timeout_ms
                ))
                .await
                .map_err(|e| describe_pg(&e))?;
            *slot = Some(client);
        }
        let client = slot.as_ref().ok_or("no connection")?;
        run_query(client, &sql, &params, self.row_cap).await
    }

    async fn execute(&mut self, db: String, sql: String, params: Vec<Value>) -> Result<u64, String> {
        if !self.write_grants.contains(&db) {
            return Err(format!(
                "db {db} is not granted for writing to plugin {}: add it with write={db}",
                self.plugin
            ));
        }
        let target = self.dbs.find(&db).ok_or_else(|| format!("db {db} is not in this sync"))?;
        let client = target.client.as_ref().ok_or_else(|| format!("db {db} has no open transaction in this run"))?;
        let types = vec![Type::TEXT; params.len()];
        let statement =
            client.prepare_typed(sql.trim().trim_end_matches(';'), &types).await.map_err(|e| describe_pg(&e))?;
        let values = text_params(&params);
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        client.execute(&statement, &refs).await.map_err(|e| describe_pg(&e))
    }
}
