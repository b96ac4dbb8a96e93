//! A table as a sync runs it: its key, the columns COPY writes, and how.
//! Made by `sync/validate.rs` from what every db has; used by the cycle
//! and by every target type to write its rows.

use crate::capture::{DeltaKey, delta};
use crate::pg::introspect::LiveColumn;
use crate::pg::{QualifiedName, quote_ident};

#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The relation's id in the catalog.
    pub id: i32,
    pub name: QualifiedName,
    pub key: Vec<LiveColumn>,
    /// The columns COPY writes: all but generated ones.
    pub columns: Vec<LiveColumn>,
    /// Text COPY where binary would carry database-specific type OIDs.
    pub text_format: bool,
    /// The delta keeps old images (`old_row`), the base of merges.
    pub capture_old: bool,
}

impl TableSpec {
    pub fn quoted(&self) -> String {
        self.name.quoted()
    }

    /// The delta table, `ibex."delta_..."`, as it is written.
    pub fn delta_table(&self) -> String {
        crate::capture::delta_table(&self.name)
    }

    /// The delta rows as one row per changed key (`capture/delta.rs`), a
    /// FROM item to give an alias.
    pub fn delta(&self) -> String {
        delta::rows(&self.delta_table(), &self.delta_keys())
    }

    /// The changed keys of the delta rows in `window` (alias `d`), counted
    /// up to `cap` (see `delta::count_keys`).
    pub fn count_keys(&self, window: &str, cap: u64) -> String {
        delta::count_keys(&self.delta_table(), &self.key[0].name, window, cap)
    }

    /// The key as the delta table keeps it.
    pub fn delta_keys(&self) -> Vec<DeltaKey> {
        self.key.iter().map(DeltaKey::of).collect()
    }

    pub fn column_list(&self) -> String {
        self.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
    }

    /// Columns prefixed with a table alias.
    pub fn column_list_of(&self, alias: &str) -> String {
        self.columns.iter().map(|c| format!("{alias}.{}", quote_ident(&c.name))).collect::<Vec<_>>().join(", ")
    }

    pub fn key_list(&self) -> String {
        self.key.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
    }

    pub fn key_list_of(&self, alias: &str) -> String {
        self.key.iter().map(|c| format!("{alias}.{}", quote_ident(&c.name))).collect::<Vec<_>>().join(", ")
    }

    /// `a.k1 = b.k1 AND a.k2 = b.k2`, each `=` the key type's own (see
    /// `LiveColumn::equals`).
    pub fn key_join(&self, a: &str, b: &str) -> String {
        self.key
            .iter()
            .map(|c| {
                let col = quote_ident(&c.name);
                c.equals(&format!("{a}.{col}"), &format!("{b}.{col}"))
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The `COPY ... TO STDOUT` of the rows `rows_from` selects (a `FROM
    /// ... t [WHERE ...]` clause), every column, in this table's format.
    pub fn copy_out_sql(&self, rows_from: &str) -> String {
        format!("COPY (SELECT {} {rows_from}) TO STDOUT{}", self.column_list_of("t"), self.copy_options())
    }

    pub fn copy_options(&self) -> &'static str {
        if self.text_format { "" } else { " WITH (FORMAT binary)" }
    }

    /// A batch of keys passed as one array parameter per key column
    /// (`$1`, `$2`, ... in key order, see `pg::keyarray`), as the FROM
    /// item `k` with the key's column names (a domain column's array is
    /// of its base type: see `LiveColumn::array_element_sql`).
    pub fn key_arrays_as_k(&self) -> String {
        // Named in pg_catalog: an exact-typed `unnest` in `public` would
        // win over its `anyarray` one.
        let arrays: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, c)| format!("pg_catalog.unnest(${}::{}[])", i + 1, c.array_element_sql()))
            .collect();
        format!("ROWS FROM ({}) AS k ({})", arrays.join(", "), self.key_list())
    }

    /// Rows of `alias` whose key is among the changed keys of the delta
    /// rows in `window` (alias `d`).
    pub fn changed_in(&self, alias: &str, window: &str) -> String {
        format!("EXISTS (SELECT FROM {} d WHERE ({window}) AND {})", self.delta(), self.key_join(alias, "d"))
    }

    /// Column definitions of the key, for temporary key tables.
    pub fn key_definitions(&self) -> String {
        self.key.iter().map(|c| format!("{} {}", quote_ident(&c.name), c.type_sql)).collect::<Vec<_>>().join(", ")
    }
}
