//! What a plugin may call: `log`, read-only `query` on granted dbs, and
//! `execute` in the run's transaction on dbs granted for writing. Its SQL
//! runs as its own database role, inside that role's definer functions
//! (see `roles.rs`), never as ibex's user. The rest of WASI is linked with
//! an empty context: no preopened dirs, no environment, no sockets; stdout
//! is dropped and stderr kept (bounded) so a panic's message can be
//! reported. Every limit a call runs into fails that call, naming the limit.

use std::collections::HashMap;
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
use super::roles;
use crate::catalog::manifest::Manifest;
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

/// The dbs of one run, shared by every plugin call of the run, and what
/// each plugin has spent of its per-run budgets.
#[derive(Default)]
pub struct HostDbs {
    dbs: Vec<HostDb>,
    spent: std::sync::Mutex<HashMap<String, RunSpent>>,
}

/// A plugin's use of its per-run limits so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunSpent {
    pub fuel: u64,
    pub statements: u64,
}

impl HostDbs {
    pub fn new(dbs: impl IntoIterator<Item = (String, ConnInfo, Option<Arc<Client>>)>) -> Arc<HostDbs> {
        Arc::new(HostDbs {
            dbs: dbs
                .into_iter()
                .map(|(name, conn, client)| HostDb { name, conn, client, readonly: Mutex::new(None) })
                .collect(),
            spent: Default::default(),
        })
    }

    fn find(&self, name: &str) -> Option<&HostDb> {
        self.dbs.iter().find(|d| d.name == name)
    }

    pub fn spent(&self, plugin: &str) -> RunSpent {
        self.spent.lock().map(|m| m.get(plugin).copied().unwrap_or_default()).unwrap_or_default()
    }

    pub fn spend(&self, plugin: &str, fuel: u64, statements: u64) {
        if let Ok(mut map) = self.spent.lock() {
            let entry = map.entry(plugin.to_string()).or_default();
            entry.fuel = entry.fuel.saturating_add(fuel);
            entry.statements = entry.statements.saturating_add(statements);
        }
    }
}

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    pub plugin: String,
    /// The plugin's database role (see `roles.rs`).
    role: String,
    grants: Vec<String>,
    write_grants: Vec<String>,
    row_cap: u64,
    statement_timeout_ms: u128,
    log_cap: u64,
    logged: u64,
    statement_cap: u64,
    statements: u64,
    pub dbs: Arc<HostDbs>,
    pub stderr: MemoryOutputPipe,
    /// The first limit this call ran into: the call fails with it, even if
    /// the plugin ignored the error it was handed.
    pub limit_hit: Option<String>,
    /// The host or the database refused the plugin something in this call
    /// (a db not granted, permission denied): its own error then means Denied.
    pub denied: bool,
}

impl HostState {
    pub fn new(plugin: &str, role: &str, manifest: &Manifest, dbs: Arc<HostDbs>) -> HostState {
        let stderr = MemoryOutputPipe::new(64 * 1024);
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder.stderr(stderr.clone());
        let spent = dbs.spent(plugin);
        HostState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(manifest.memory as usize)
                .table_elements(manifest.table_elements as usize)
                .instances(16)
                .tables(64)
                .memories(16)
                .trap_on_grow_failure(true)
                .build(),
            plugin: plugin.to_string(),
            role: role.to_string(),
            grants: manifest.grants.clone(),
            write_grants: manifest.write_grants.clone(),
            row_cap: manifest.query_row_cap,
            statement_timeout_ms: manifest.timeout.as_millis(),
            log_cap: manifest.log_bytes,
            logged: 0,
            statement_cap: manifest.max_statements.saturating_sub(spent.statements),
            statements: 0,
            dbs,
            stderr,
            limit_hit: None,
            denied: false,
        }
    }

    /// Statements this call ran with `execute` (charged to the run).
    pub fn statements(&self) -> u64 {
        self.statements
    }

    fn hit(&mut self, what: String) -> String {
        self.limit_hit.get_or_insert_with(|| what.clone());
        what
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

/// Parses (only) a plugin's statement with the names it will have in its
/// role's function, under that function's search_path rather than ibex's
/// (see `pg/session.rs`): the path set, the parse and the path set back
/// go out together, one round trip. A failed parse inside a transaction
/// aborts it, and setting the path back fails too: callers parse inside a
/// savepoint and roll back to it, which restores the path.
async fn parse_statement(
    client: &Client,
    sql: &str,
    types: &[Type],
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    let (set, parsed, back) = futures_util::future::join3(
        client.batch_execute(&format!("SET search_path TO {}", roles::SEARCH_PATH)),
        client.prepare_typed(sql, types),
        client.batch_execute(&format!("SET search_path TO {}", pg::session::IBEX_SEARCH_PATH)),
    )
    .await;
    set?;
    let parsed = parsed?;
    back?;
    Ok(parsed)
}

/// Runs a plugin's query inside its role's definer function: typed by a
/// parse of the statement (under the role), every column sent back as text
/// and read back into WIT values by type. Returns at most `row_cap` rows,
/// or says it would have returned more.
async fn run_query(
    client: &Client,
    role: &str,
    sql: &str,
    params: &[Value],
    row_cap: u64,
) -> Result<Result<Vec<Vec<Value>>, String>, String> {
    if params.len() > roles::MAX_PARAMS {
        return Err(format!("a statement takes at most {} parameters", roles::MAX_PARAMS));
    }
    let sql = sql.trim().trim_end_matches(';');
    let types = vec![Type::TEXT; params.len()];
    // In a savepoint of the read's transaction, opened in the parse's round
    // trip: a query that fails (to parse, or to run) would otherwise abort
    // the transaction, and every later query of the run on this db with it.
    // Parse only: types and columns. One statement (the extended protocol
    // refuses several), nothing executed, nothing planned.
    let (savepoint, parsed) =
        futures_util::future::join(client.batch_execute(QUERY_SAVEPOINT), parse_statement(client, sql, &types)).await;
    savepoint.map_err(|e| describe_pg(&e))?;
    let plain = match parsed {
        Ok(plain) => plain,
        Err(e) => return Err(roll_back_query(client, &e).await),
    };
    let kinds: Vec<ColumnKind> = plain.columns().iter().map(|c| ColumnKind::of(c.type_().oid())).collect();
    let aliases: Vec<String> = (1..=kinds.len()).map(|i| format!("c{i}")).collect();
    let texts: Vec<String> = aliases.iter().map(|a| format!("ibex_q.{a}::text")).collect();
    let wrapped = format!(
        "SELECT ARRAY[{}]::text[] FROM ({sql}) ibex_q{} LIMIT {}",
        texts.join(", "),
        if aliases.is_empty() { String::new() } else { format!("({})", aliases.join(", ")) },
        row_cap + 1
    );
    let mut args: Vec<Option<String>> = vec![Some(wrapped)];
    args.extend(text_params(params));
    let placeholders: Vec<String> = (1..=args.len()).map(|i| format!("${i}")).collect();
    let call = format!("SELECT r FROM {}({}) r", roles::query_function(role), placeholders.join(", "));
    // Typed, so parsed, run and released in this order in one round trip
    // (a prepare first would let the release run before the query).
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = args.iter().map(|v| (v as &(dyn ToSql + Sync), Type::TEXT)).collect();
    let (ran, released) =
        futures_util::future::join(client.query_typed(&call, &typed), client.batch_execute(QUERY_RELEASE)).await;
    let rows = match ran.and_then(|rows| released.map(|()| rows)) {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
            let why = roll_back_query(client, &e).await;
            return Ok(Err(format!("its query ran past its statement timeout ({why})")));
        }
        Err(e) => return Err(roll_back_query(client, &e).await),
    };
    if rows.len() as u64 > row_cap {
        return Ok(Err(format!("the query returned more than {row_cap} rows (the plugin's query_rows limit)")));
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let texts: Vec<Option<String>> = row.try_get(0).map_err(|e| describe_pg(&e))?;
        out.push(texts.iter().zip(&kinds).map(|(t, k)| convert::from_text(t.as_deref(), *k)).collect());
    }
    Ok(Ok(out))
}

/// The savepoint each plugin query runs in (see [`run_query`]).
const QUERY_SAVEPOINT: &str = "SAVEPOINT ibex_plugin_query";
const QUERY_RELEASE: &str = "RELEASE SAVEPOINT ibex_plugin_query";

/// Undoes a failed plugin query, so that the read's transaction takes the
/// next one; returns the query's error as the plugin sees it, or also why
/// the transaction is lost for this run.
async fn roll_back_query(client: &Client, failed: &tokio_postgres::Error) -> String {
    let error = describe_pg(failed);
    match client.batch_execute("ROLLBACK TO SAVEPOINT ibex_plugin_query; RELEASE SAVEPOINT ibex_plugin_query").await {
        Ok(()) => error,
        Err(e) => format!(
            "{error}; and the read could not be rolled back to before it, so later queries on this db fail too: {}",
            describe_pg(&e)
        ),
    }
}

impl host::Host for HostState {
    async fn log(&mut self, level: types::LogLevel, message: String) {
        self.logged = self.logged.saturating_add(message.len() as u64);
        if self.logged > self.log_cap {
            let cap = self.log_cap;
            self.hit(format!("it logged more than {cap} bytes in one call (its log_bytes limit)"));
            return;
        }
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
            self.denied = true;
            return Err(format!("db {db} is not granted to plugin {}: add it with grant={db}", self.plugin));
        }
        let dbs = self.dbs.clone();
        let target = dbs.find(&db).ok_or_else(|| format!("db {db} is not in this sync"))?;
        let mut slot = target.readonly.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let client =
                pg::connect(&target.conn, &format!("ibex plugin {}", self.plugin)).await.map_err(|e| e.to_string())?;
            // Read only; the plugin's SQL itself runs as its role, in its function.
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = '{}ms';
                     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = hex",
                    self.statement_timeout_ms,
                ))
                .await
                .map_err(|e| describe_pg(&e))?;
            *slot = Some(client);
        }
        let client = slot.as_ref().ok_or("no connection")?;
        let result = run_query(client, &self.role, &sql, &params, self.row_cap).await;
        if result.as_ref().is_err_and(|e| e.contains("(SQLSTATE 42501)")) {
            self.denied = true;
        }
        match result? {
            Ok(rows) => Ok(rows),
            Err(limit) => Err(self.hit(limit)),
        }
    }

    async fn execute(&mut self, db: String, sql: String, params: Vec<Value>) -> Result<u64, String> {
        if !self.write_grants.contains(&db) {
            self.denied = true;
            return Err(format!(
                "db {db} is not granted for writing to plugin {}: add it with write={db}",
                self.plugin
            ));
        }
        if self.statements >= self.statement_cap {
            let message = format!(
                "it ran more statements with execute than its max_statements limit allows in one run ({})",
                self.statement_cap
            );
            return Err(self.hit(message));
        }
        if params.len() > roles::MAX_PARAMS {
            return Err(format!("a statement takes at most {} parameters", roles::MAX_PARAMS));
        }
        let target = self.dbs.find(&db).ok_or_else(|| format!("db {db} is not in this sync"))?;
        let client = target.client.as_ref().ok_or_else(|| format!("db {db} has no open transaction in this run"))?;
        self.statements += 1;
        let statement = sql.trim().trim_end_matches(';');
        let mut args: Vec<Option<String>> = vec![Some(statement.to_string())];
        args.extend(text_params(&params));
        let placeholders: Vec<String> = (1..=args.len()).map(|i| format!("${i}")).collect();
        let call = format!("SELECT {}({})", roles::execute_function(&self.role), placeholders.join(", "));
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        // Two round trips, requests pipelined in order: (1) open a savepoint
        // (a refused statement must not fail the whole run), parse the
        // plugin's statement (the extended protocol refuses a string of
        // several) and the call of its role's function; (2) run the call in
        // the run's transaction, as the plugin's role, and release.
        let types = vec![Type::TEXT; params.len()];
        let (savepoint, parsed, prepared) = futures_util::future::join3(
            client.batch_execute("SAVEPOINT ibex_plugin_execute"),
            parse_statement(client, statement, &types),
            client.prepare(&call),
        )
        .await;
        savepoint.map_err(|e| describe_pg(&e))?;
        let prepared = match parsed.and(prepared) {
            Ok(prepared) => prepared,
            Err(err) => {
                client.batch_execute("ROLLBACK TO SAVEPOINT ibex_plugin_execute").await.map_err(|e| describe_pg(&e))?;
                return Err(describe_pg(&err));
            }
        };
        let (ran, released) = futures_util::future::join(
            client.query_one(&prepared, &refs),
            client.batch_execute("RELEASE SAVEPOINT ibex_plugin_execute"),
        )
        .await;
        match ran.and_then(|row| released.map(|()| row)) {
            Ok(row) => Ok(row.try_get::<_, i64>(0).map_err(|e| describe_pg(&e))?.max(0) as u64),
            Err(err) => {
                client.batch_execute("ROLLBACK TO SAVEPOINT ibex_plugin_execute").await.map_err(|e| describe_pg(&e))?;
                if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                    self.denied = true;
                }
                Err(describe_pg(&err))
            }
        }
    }
}
