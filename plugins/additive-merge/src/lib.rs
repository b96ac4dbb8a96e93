//! Additive merge: when two sources changed the same row, configured
//! numeric columns get the base plus every side's change (both nodes add
//! $10 to a balance: the result is +$20), and the other columns come from
//! the newest change. Needs old images (`ibex update table T
//! capture_old=true`) for the base; without one, or when a side deleted the
//! row, the newest change wins.
//!
//! config.columns = comma-separated numeric columns (integer, bigint,
//! numeric, real, double precision).

mod decimal;

use decimal::Decimal;
use ibex_plugin_sdk::conflict::{Conflict, ConflictHandler, Decision, Verdict};
use ibex_plugin_sdk::host::log;
use ibex_plugin_sdk::{LogLevel, Row, SyncInfo, TableInfo, Value};

struct AdditiveMerge;

/// base + sum(version - base), in the value's own representation.
fn add_deltas(base: &Value, versions: &[&Value]) -> Option<Value> {
    match base {
        Value::Int(b) => {
            let mut total = *b;
            for v in versions {
                total = total.checked_add(v.as_i64()?.checked_sub(*b)?)?;
            }
            Some(Value::Int(total))
        }
        Value::Float(b) => {
            Some(Value::Float(versions.iter().map(|v| v.as_f64().map(|x| x - b)).sum::<Option<f64>>()? + b))
        }
        Value::Text(b) => {
            let base = Decimal::parse(b)?;
            let mut total = base.clone();
            for v in versions {
                total = total.add(&Decimal::parse(v.as_str()?)?.sub(&base)?)?;
            }
            Some(Value::Text(total.to_string()))
        }
        _ => None,
    }
}

fn merge(table: &TableInfo, columns: &[&str], conflict: &Conflict) -> Option<Row> {
    let base = conflict.base.as_ref()?;
    let rows: Vec<&Row> = conflict.versions.iter().map(|v| v.row.as_ref()).collect::<Option<_>>()?;
    let mut merged = conflict.latest().row.clone()?;
    for column in columns {
        let i = table.column_index(column)?;
        let values: Vec<&Value> = rows.iter().map(|r| &r[i]).collect();
        merged[i] = add_deltas(&base[i], &values)?;
    }
    Some(merged)
}

impl ConflictHandler for AdditiveMerge {
    fn resolve(sync: &SyncInfo, table: &TableInfo, conflicts: Vec<Conflict>) -> Result<Verdict, String> {
        let columns: Vec<&str> =
            sync.config("columns").unwrap_or("").split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
        if columns.is_empty() {
            return Err("config.columns is not set: name the numeric columns to add up".into());
        }
        if let Some(missing) = columns.iter().find(|c| table.column_index(c).is_none()) {
            return Err(format!("config.columns names {missing}, which table {}.{} lacks", table.schema, table.name));
        }
        let mut unmerged = 0;
        let decisions = conflicts
            .iter()
            .map(|c| match merge(table, &columns, c) {
                Some(row) => Decision::Merged(row),
                None => {
                    unmerged += 1;
                    Decision::Winner(c.latest().db)
                }
            })
            .collect();
        if unmerged > 0 {
            log(
                LogLevel::Info,
                &format!("{unmerged} conflicts without a base or with a delete: the newest change won"),
            );
        }
        Ok(Verdict::PerKey(decisions))
    }
}

ibex_plugin_sdk::export_conflict_handler!(AdditiveMerge);
