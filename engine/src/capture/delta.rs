//! The layout of a delta table, and how it is written and read.
//!
//! A delta row is written per statement, not per changed row: the keys a
//! statement changed are one array per key column, in chunks of at most
//! `KEYS_PER_ROW` (an array is bounded by 1 GB, and a statement may change
//! more rows than that holds). One heap tuple and one index entry per
//! statement is what brings capture of a bulk write near the cost of the
//! write itself. Old images, where a table keeps them, are a
//! two-dimensional `text[]` in the same order as the keys.
//!
//! Every reader sees the delta through `rows`: one row per changed key,
//! with the columns `txid`, `changed_at`, `origin`, `old_row` and the key.

use crate::pg::quote_ident;

/// The most keys one delta row holds.
pub const KEYS_PER_ROW: u32 = 100_000;

/// `ibex.captured.layout` of a delta table written per statement; tables
/// recorded without it (an earlier ibex: one row per changed row) are
/// converted when capture is next reconciled.
pub const LAYOUT: &str = "statement";

/// A key column as its delta table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaKey {
    pub name: String,
    /// The column's type as SQL (`format_type`).
    pub type_sql: String,
    /// The element type of an array of its values: the type itself, or a
    /// domain's base type on PostgreSQL 10 (no arrays of domains there).
    pub element_sql: String,
}

impl DeltaKey {
    /// Keys kept as text, and cast back when read: arrays (an array of
    /// arrays is one array with more dimensions, which unnest flattens),
    /// and domains on 10, whose values `array_agg` cannot take there and
    /// the trigger functions cannot cast to a base type they may not see
    /// (they run with `search_path = pg_catalog`).
    fn kept_as_text(&self) -> bool {
        self.element_sql.ends_with("[]") || self.element_sql != self.type_sql
    }

    fn stored_element(&self) -> &str {
        if self.kept_as_text() { "text" } else { &self.element_sql }
    }

    /// The delta column's definition.
    pub fn definition(&self) -> String {
        format!("{} {}[] NOT NULL", quote_ident(&self.name), self.stored_element())
    }

    /// The delta column's value from the values `value` of a group of
    /// rows. No cast to the column's type: the trigger functions run with
    /// `search_path = pg_catalog`, where a user's type name is unknown; the
    /// INSERT's assignment converts the array (a domain's is of its base).
    pub fn aggregate(&self, value: &str) -> String {
        format!("array_agg({}{})", value, self.text_cast())
    }

    /// The delta column's value for the one key `value`.
    pub fn single(&self, value: &str) -> String {
        format!("ARRAY[{}{}]", value, self.text_cast())
    }

    fn text_cast(&self) -> &'static str {
        if self.kept_as_text() { "::text" } else { "" }
    }

    /// The key as read back from the unnested element `element`.
    fn read(&self, element: &str) -> String {
        if self.kept_as_text() { format!("{element}::{}", self.type_sql) } else { element.to_string() }
    }
}

/// The delta table `delta` (quoted) as one row per changed key.
pub fn rows(delta: &str, key: &[DeltaKey]) -> String {
    let arrays: Vec<String> = key.iter().map(|k| format!("s.{}", quote_ident(&k.name))).collect();
    let names: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
    let values: Vec<String> = key
        .iter()
        .map(|k| format!("{} AS {}", k.read(&format!("u.{}", quote_ident(&k.name))), quote_ident(&k.name)))
        .collect();
    format!(
        "(SELECT s.txid, s.changed_at, s.origin,
                 CASE WHEN s.old_row IS NOT NULL THEN ARRAY(SELECT unnest(s.old_row[u.ibex_n:u.ibex_n])) END AS old_row,
                 {}
            FROM {delta} s CROSS JOIN LATERAL unnest({}) WITH ORDINALITY AS u({}, ibex_n))",
        values.join(", "),
        arrays.join(", "),
        names.join(", ")
    )
}

/// The delta table `delta` as one row per changed key, with only the
/// columns of a count: enough to count keys without knowing their types.
pub fn counted(delta: &str, first_key: &str) -> String {
    format!(
        "(SELECT s.txid, s.changed_at, s.origin FROM {delta} s CROSS JOIN LATERAL unnest(s.{}) AS u)",
        quote_ident(first_key)
    )
}

/// The SELECT that writes the delta rows of the transition table
/// `transition`: the key arrays, the old images (`image`: the row as a
/// `text[]` expression, where the table keeps them), and `extra` values
/// as they are, in chunks of `KEYS_PER_ROW` keys.
pub fn aggregate_rows(key: &[DeltaKey], image: Option<&str>, extra: &str, transition: &str) -> String {
    let inner: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
    let mut outer: Vec<String> = key.iter().map(|k| k.aggregate(&format!("r.{}", quote_ident(&k.name)))).collect();
    let image_column = match image {
        Some(image) => {
            outer.push("array_agg(r.ibex_image)".to_string());
            format!(", {image} AS ibex_image")
        }
        None => String::new(),
    };
    format!(
        "SELECT {}{extra} FROM (SELECT {}{image_column}, (row_number() OVER ()) / {KEYS_PER_ROW} AS ibex_chunk FROM {transition}) r GROUP BY r.ibex_chunk",
        outer.join(", "),
        inner.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, ty: &str) -> DeltaKey {
        DeltaKey { name: name.into(), type_sql: ty.into(), element_sql: ty.into() }
    }

    #[test]
    fn array_keys_are_kept_as_text_and_read_back_as_their_type() {
        let plain = key("id", "integer");
        assert_eq!(plain.definition(), "\"id\" integer[] NOT NULL");
        assert_eq!(plain.single("OLD.\"id\""), "ARRAY[OLD.\"id\"]");
        let array = key("tags", "text[]");
        assert_eq!(array.definition(), "\"tags\" text[] NOT NULL");
        assert_eq!(array.aggregate("r.\"tags\""), "array_agg(r.\"tags\"::text)");
        let read = rows("ibex.\"d\"", &[plain, array]);
        assert!(read.contains("u.\"tags\"::text[] AS \"tags\""), "{read}");
        assert!(read.contains("unnest(s.\"id\", s.\"tags\") WITH ORDINALITY AS u(\"id\", \"tags\", ibex_n)"), "{read}");
    }

    #[test]
    fn a_domain_on_10_is_kept_as_text() {
        let domain = DeltaKey { name: "k".into(), type_sql: "public.code".into(), element_sql: "integer".into() };
        assert_eq!(domain.definition(), "\"k\" text[] NOT NULL");
        assert_eq!(domain.single("OLD.\"k\""), "ARRAY[OLD.\"k\"::text]");
        assert!(rows("ibex.\"d\"", &[domain]).contains("u.\"k\"::public.code AS \"k\""));
    }
}
