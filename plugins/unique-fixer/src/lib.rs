//! An exception hook for a unique index other than the key (the same email
//! inserted on two masters; Bucardo's 40-customcode-exception): on a
//! unique violation, the newer of the colliding rows is kept, the older one
//! is archived and removed, and the table is applied again.
//!
//! config.column = the uniquely indexed column (e.g. `email`).
//! config.time_column = the column saying which row is newer (e.g. `updated_at`).
//! config.archive = a table with the same columns to keep losing rows in.
//! Grants: `grant=` and `write=` on every db of the sync, and
//! `write_tables=` the table and its archive (its role may touch nothing else).

use ibex_plugin_sdk::hooks::{Action, Failure, HookCall, HookPoint, SyncHooks};
use ibex_plugin_sdk::host::{execute, log, query};
use ibex_plugin_sdk::{LogLevel, Row, SyncInfo, TableInfo, Value};

struct UniqueFixer;

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

struct Setup<'a> {
    column: &'a str,
    time_column: &'a str,
    archive: &'a str,
}

/// `"a" = $1::integer AND "b" = $2::text` for the key columns, from `first`.
fn key_match(table: &TableInfo, first: usize) -> String {
    table
        .columns
        .iter()
        .filter(|c| c.key)
        .enumerate()
        .map(|(i, c)| format!("{} = ${}::{}", quote_ident(&c.name), first + i, c.type_name))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_of(table: &TableInfo, row: &Row) -> Vec<Value> {
    table.columns.iter().zip(row).filter(|(c, _)| c.key).map(|(_, v)| v.clone()).collect()
}

fn fix(sync: &SyncInfo, setup: &Setup, failure: &Failure) -> Result<Action, String> {
    let table = &failure.table;
    let db = &sync.dbs.get(failure.db as usize).ok_or("unknown db")?.name;
    let unique = table.column_index(setup.column).ok_or_else(|| format!("no column {}", setup.column))?;
    let time = table.column_index(setup.time_column).ok_or_else(|| format!("no column {}", setup.time_column))?;
    let target = format!("{}.{}", quote_ident(&table.schema), quote_ident(&table.name));
    let key_columns: Vec<String> = table.columns.iter().filter(|c| c.key).map(|c| quote_ident(&c.name)).collect();
    let mut drop = Vec::new();
    let mut archived = 0;
    for incoming in &failure.rows {
        let incoming_key = key_of(table, incoming);
        let incoming_time = incoming[time].as_str().unwrap_or("").to_string();
        // Rows already on this db holding the same unique value under another key.
        let sql = format!(
            "SELECT {keys}, {time}::text FROM {target} WHERE {unique} = $1 AND NOT ({matches})",
            keys = key_columns.join(", "),
            time = quote_ident(setup.time_column),
            unique = quote_ident(setup.column),
            matches = key_match(table, 2)
        );
        let mut params = vec![incoming[unique].clone()];
        params.extend(incoming_key.iter().cloned());
        for local in query(db, &sql, &params)? {
            let (local_key, local_time) = local.split_at(key_columns.len());
            let local_time = local_time.first().and_then(|v| v.as_str()).unwrap_or("");
            if local_time < incoming_time.as_str() {
                // The incoming row is newer: archive the local one and make room.
                let matches = key_match(table, 1);
                execute(
                    db,
                    &format!("INSERT INTO {} SELECT * FROM {target} WHERE {matches}", setup.archive),
                    local_key,
                )?;
                execute(db, &format!("DELETE FROM {target} WHERE {matches}"), local_key)?;
                archived += 1;
            } else {
                drop.push(incoming_key.clone());
            }
        }
    }
    log(
        LogLevel::Info,
        &format!("db {db}: archived {archived} older rows, left {} older incoming rows out", drop.len()),
    );
    Ok(if drop.is_empty() { Action::Retry } else { Action::DropKeys(drop) })
}

impl SyncHooks for UniqueFixer {
    fn run_hook(sync: &SyncInfo, call: HookCall) -> Action {
        let (HookPoint::Exception, Some(failure)) = (call.point, call.failure) else { return Action::Proceed };
        // Only unique violations are ours to fix.
        if failure.sqlstate != "23505" {
            return Action::Proceed;
        }
        let setup = match (sync.config("column"), sync.config("time_column"), sync.config("archive")) {
            (Some(column), Some(time_column), Some(archive)) => Setup { column, time_column, archive },
            _ => {
                return Action::Abort("unique-fixer needs config.column, config.time_column and config.archive".into());
            }
        };
        match fix(sync, &setup, &failure) {
            Ok(action) => action,
            Err(e) => Action::Abort(format!("unique-fixer could not repair {}: {e}", failure.table.name)),
        }
    }
}

ibex_plugin_sdk::export_sync_hooks!(UniqueFixer);
