//! Masks columns on the way to a target: for analytics copies, staging
//! databases, or a region that must not hold personal data.
//!
//! config.columns = comma-separated columns to mask.
//! config.with = `null` (default: text columns get `***`, others NULL) or
//! `hash` (text columns get a stable 16-hex-digit fingerprint, so joins
//! and counts still work).

use ibex_plugin_sdk::transform::RowTransform;
use ibex_plugin_sdk::{Row, SyncInfo, TableInfo, Value};

struct MaskColumns;

/// FNV-1a: stable, dependency-free; a fingerprint, not a secret.
fn fingerprint(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl RowTransform for MaskColumns {
    fn transform(
        sync: &SyncInfo,
        _source: u32,
        _target: u32,
        table: &TableInfo,
        rows: Vec<Row>,
    ) -> Result<Vec<Option<Row>>, String> {
        let names: Vec<&str> =
            sync.config("columns").unwrap_or("").split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
        let hash = sync.config("with") == Some("hash");
        let mut masked = Vec::new();
        for name in names {
            match table.column_index(name) {
                Some(i) if table.columns[i].key => {
                    return Err(format!("column {name} is part of the key and cannot be masked"));
                }
                Some(i) => masked.push(i),
                // The table has no such column: nothing to mask in it.
                None => {}
            }
        }
        Ok(rows
            .into_iter()
            .map(|mut row| {
                for &i in &masked {
                    row[i] = match &row[i] {
                        Value::Null => Value::Null,
                        Value::Text(t) if hash => Value::Text(fingerprint(t)),
                        Value::Text(_) => Value::Text("***".into()),
                        _ => Value::Null,
                    };
                }
                Some(row)
            })
            .collect())
    }
}

ibex_plugin_sdk::export_row_transform!(MaskColumns);
