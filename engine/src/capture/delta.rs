//! The layout of a delta table, and how it is written and read.
//!
//! A delta row is written per statement, not per changed row: the keys a
//! statement changed are one array per key column, in chunks of at most
//! `KEYS_PER_ROW` keys (and, where old images are kept, `IMAGE_BYTES` of
//! them: an array is bounded by 1 GB, and a statement may change more rows
//! than that holds). One heap tuple and one index entry per statement is
//! what brings capture of a bulk write near the cost of the write itself.
//! Old images, where a table keeps them, are one more array in the same
//! order as the keys, each image a `text[]` written as text.
//!
//! Every reader sees the delta through `rows`: one row per changed key,
//! with the columns `txid`, `changed_at`, `origin`, `old_row` and the key.

use crate::pg::introspect::LiveColumn;
use crate::pg::quote_ident;

/// The most keys one delta row holds.
pub const KEYS_PER_ROW: u32 = 100_000;

/// The most keys a statement's delta row is written for in one INSERT of
/// `ARRAY(SELECT key ...)` (see `write_keys`); a statement of more keys is
/// sliced or written by the chunking aggregate. Most statements change a row or a
/// few: by hand on PG 15, a single-row UPDATE with capture took 20.3 µs
/// this way against 21.4-28.1 µs through the aggregate (10-12.6 µs bare).
pub const FEW_KEYS: u32 = 1_000;

/// Names a delta table and its readers use for their own columns: a key
/// column of one of these names cannot be captured (see `sync/validate.rs`).
pub const OWN_NAMES: [&str; 8] =
    ["txid", "changed_at", "old_row", "origin", "ibex_image", "ibex_chunk", "ibex_bytes", "ibex_slice"];

/// The alias of a transition table's row in the trigger's SQL: its
/// columns are always qualified with it, so that no key column is taken
/// for a plpgsql variable (`ibex_origin`), whatever its name.
pub const ROW_ALIAS: &str = "ibex_row";

/// The most bytes of old images one delta row holds (beyond one image).
pub const IMAGE_BYTES: u32 = 256 << 20;

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
    /// Kept as text and cast back when read: arrays and domains (see
    /// `LiveColumn::kept_as_text_in_delta`).
    pub as_text: bool,
    /// The size of every value, where the type has one (see
    /// `LiveColumn::fixed_bytes`): what bounds an array of many keys.
    pub fixed_bytes: Option<u16>,
    /// See `LiveColumn::built_in`: whether `pg_catalog`'s `<>` and cast
    /// to text are the type's own.
    pub built_in: bool,
}

impl DeltaKey {
    /// The key column `column` as its delta table keeps it.
    pub fn of(column: &LiveColumn) -> DeltaKey {
        DeltaKey {
            name: column.name.clone(),
            type_sql: column.type_sql.clone(),
            as_text: column.kept_as_text_in_delta,
            fixed_bytes: column.fixed_bytes.filter(|_| !column.kept_as_text_in_delta),
            built_in: column.built_in,
        }
    }

    fn stored_element(&self) -> &str {
        if self.as_text { "text" } else { &self.type_sql }
    }

    /// The delta column's definition.
    pub fn definition(&self) -> String {
        format!("{} {}[] NOT NULL", quote_ident(&self.name), self.stored_element())
    }

    /// The delta column's value from the values `value` of a group of
    /// rows. No cast to the column's type: the trigger functions name
    /// only `pg_catalog`'s objects (see `capture/sql.rs`), and a user's
    /// type would have to be named too.
    pub fn aggregate(&self, value: &str) -> String {
        format!("pg_catalog.array_agg({})", self.stored(value))
    }

    /// The delta column's value for the one key `value`.
    pub fn single(&self, value: &str) -> String {
        format!("ARRAY[{}]", self.stored(value))
    }

    /// The delta column's value from the first `rows` rows of the
    /// transition table `transition` (each key array scans it in the same
    /// order: a tuplestore is read in insertion order).
    fn first(&self, transition: &str, rows: u32) -> String {
        format!(
            "ARRAY(SELECT {} FROM {transition} {ROW_ALIAS} LIMIT {rows})",
            self.stored(&format!("{ROW_ALIAS}.{}", quote_ident(&self.name))),
        )
    }

    /// The key value `value` as the delta keeps it.
    fn stored(&self, value: &str) -> String {
        if self.as_text { LiveColumn::text_of(value, self.built_in) } else { value.to_string() }
    }

    /// The key as read back from the unnested element `element`.
    fn read(&self, element: &str) -> String {
        if self.as_text { format!("{element}::{}", self.type_sql) } else { element.to_string() }
    }
}

/// The delta table `delta` (quoted) as one row per changed key. A delta
/// row without old images unnests a null `old_row` (multi-argument unnest
/// pads it).
pub fn rows(delta: &str, key: &[DeltaKey]) -> String {
    let arrays: Vec<String> = key.iter().map(|k| format!("s.{}", quote_ident(&k.name))).collect();
    let names: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
    let values: Vec<String> = key
        .iter()
        .map(|k| format!("{} AS {}", k.read(&format!("u.{}", quote_ident(&k.name))), quote_ident(&k.name)))
        .collect();
    format!(
        "(SELECT s.txid, s.changed_at, s.origin, u.ibex_image::text[] AS old_row, {}
            FROM {delta} s CROSS JOIN LATERAL unnest({}, s.old_row) AS u({}, ibex_image))",
        values.join(", "),
        arrays.join(", "),
        names.join(", ")
    )
}

/// How many keys the delta rows of `delta` (quoted, aliased `d` in
/// `window`) in `window` hold, counted up to `cap`: the lengths of at most
/// `cap` rows' key arrays summed (each row holds a key at least), no key
/// unnested. A scalar subquery, bigint.
pub fn count_keys(delta: &str, first_key: &str, window: &str, cap: u64) -> String {
    let k = quote_ident(first_key);
    format!(
        "(SELECT least(coalesce(sum(pg_catalog.cardinality(c.{k})), 0), {cap}) FROM (SELECT d.{k} FROM {delta} d WHERE ({window}) AND pg_catalog.cardinality(d.{k}) > 0 LIMIT {cap}) c)"
    )
}

/// The SELECT that writes the delta rows of the transition table
/// `transition`: the key arrays, the old images (`image`: the row as a
/// `text[]` expression, where the table keeps them), and `extra` values
/// as they are, in chunks of `KEYS_PER_ROW` keys and `IMAGE_BYTES` bytes.
pub fn aggregate_rows(key: &[DeltaKey], image: Option<&str>, extra: &str, transition: &str) -> String {
    let inner: Vec<String> = key.iter().map(|k| format!("{ROW_ALIAS}.{}", quote_ident(&k.name))).collect();
    let mut outer: Vec<String> = key.iter().map(|k| k.aggregate(&format!("r.{}", quote_ident(&k.name)))).collect();
    // Rows stay in scan order in both running counts, so each chunk is a
    // run of consecutive rows.
    let (image_columns, image_group) = match image {
        Some(image) => {
            outer.push("pg_catalog.array_agg(r.ibex_image)".to_string());
            (
                format!(
                    ", ({image})::pg_catalog.text AS ibex_image, \
                     pg_catalog.sum(pg_catalog.octet_length(({image})::pg_catalog.text)) OVER w OPERATOR(pg_catalog./) {IMAGE_BYTES} AS ibex_bytes"
                ),
                ", r.ibex_bytes",
            )
        }
        None => (String::new(), ""),
    };
    format!(
        "SELECT {}{extra} FROM (SELECT {}{image_columns}, (pg_catalog.row_number() OVER w OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog./) {KEYS_PER_ROW} AS ibex_chunk
                                  FROM {transition} {ROW_ALIAS} WINDOW w AS (ROWS UNBOUNDED PRECEDING)) r
          GROUP BY r.ibex_chunk{image_group}",
        outer.join(", "),
        inner.join(", ")
    )
}

/// The most keys a statement's delta rows are written for by slicing one
/// array per key column (see `write_keys`).
pub const SLICED_KEYS: u32 = 1_000_000;
/// The most bytes of key values those arrays may hold together, counted
/// as `typlen` per value: alignment and the copies made while an array is
/// built can take two or three times as much, still bounded.
pub const SLICED_BYTES: u32 = 32 << 20;

/// How many keys of `key` a statement may change and still be written by
/// slicing: only where every key column's values have one size, so that
/// the arrays' bytes are known before they are built.
fn sliced_limit(key: &[DeltaKey]) -> Option<u32> {
    let bytes: u32 = key.iter().map(|k| k.fixed_bytes.map(u32::from)).sum::<Option<u32>>()?;
    let limit = SLICED_KEYS.min(SLICED_BYTES / bytes.max(1));
    (limit > FEW_KEYS).then_some(limit)
}

/// The plpgsql that writes the keys of the transition table `transition`
/// (no old images) into `delta` (quoted), with `extra_columns` and
/// `extra_values` (", origin" and its value, or empty):
/// - a statement of at most `FEW_KEYS` keys is one INSERT of one row;
/// - one of at most `sliced_limit` keys (fixed-size keys only) is one
///   array per key column, sliced into rows of `KEYS_PER_ROW`: by hand on
///   PG 15, 126 ms for a million keys against 273 ms through the
///   chunking aggregate, whose window and hash aggregate cost the rest;
/// - a larger one is written by that aggregate;
/// - an empty one (an UPDATE that matched nothing, the unused half of an
///   upsert) writes nothing, and costs the first INSERT and a test for
///   more rows: by hand on PG 15, 9.8 µs against 13.2 µs when it went
///   through the aggregate too (2.5 µs without capture).
///
/// No plpgsql variable of its own, and every column qualified: a key
/// column may have any name. `OFFSET 0` keeps a subquery whole, so each
/// array is built once, not once for the filter and once for the row (by
/// hand on PG 15: 20.3 µs vs 21.9-23.1 µs).
pub fn write_keys(delta: &str, key: &[DeltaKey], extra_columns: &str, extra_values: &str, transition: &str) -> String {
    let columns: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
    // The key arrays of the first `most` keys and one more, which tells a
    // statement of more keys.
    let first = |most: u32| -> String {
        let arrays: Vec<String> =
            key.iter().map(|k| format!("{} AS {}", k.first(transition, most + 1), quote_ident(&k.name))).collect();
        arrays.join(", ")
    };
    let picked: Vec<String> = key.iter().map(|k| format!("s.{}", quote_ident(&k.name))).collect();
    let counted = picked.first().map(String::as_str).unwrap_or("NULL");
    let chunked = format!(
        "INSERT INTO {delta} ({columns}{extra_columns}) {};",
        aggregate_rows(key, None, extra_values, transition),
        columns = columns.join(", ")
    );
    let larger = match sliced_limit(key) {
        Some(limit) => {
            let sliced: Vec<String> = picked
                .iter()
                .map(|array| {
                    format!(
                        "{array}[ibex_slice.ibex_at OPERATOR(pg_catalog.+) 1 : ibex_slice.ibex_at OPERATOR(pg_catalog.+) {KEYS_PER_ROW}]"
                    )
                })
                .collect();
            format!(
                "INSERT INTO {delta} ({columns}{extra_columns})
                SELECT {sliced}{extra_values} FROM (SELECT {first} OFFSET 0) s,
                       pg_catalog.generate_series(0, pg_catalog.cardinality({counted}) OPERATOR(pg_catalog.-) 1, {KEYS_PER_ROW}) AS ibex_slice(ibex_at)
                 WHERE pg_catalog.cardinality({counted}) OPERATOR(pg_catalog.<=) {limit};
            IF NOT FOUND THEN
                {chunked}
            END IF;",
                columns = columns.join(", "),
                sliced = sliced.join(", "),
                first = first(limit),
            )
        }
        None => chunked,
    };
    // Nothing written: an empty statement or a larger one. The test for
    // a row past the first FEW_KEYS runs only then, so a single-row
    // statement pays nothing for it, and an empty one stops there.
    format!(
        "INSERT INTO {delta} ({columns}{extra_columns})
            SELECT {picked}{extra_values} FROM (SELECT {first} OFFSET 0) s
             WHERE pg_catalog.cardinality({counted}) OPERATOR(pg_catalog.>=) 1
               AND pg_catalog.cardinality({counted}) OPERATOR(pg_catalog.<=) {FEW_KEYS};
        IF NOT FOUND THEN
          IF EXISTS (SELECT FROM {transition} {ROW_ALIAS} OFFSET {FEW_KEYS}) THEN
            {larger}
          END IF;
        END IF;",
        columns = columns.join(", "),
        picked = picked.join(", "),
        first = first(FEW_KEYS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, ty: &str, as_text: bool) -> DeltaKey {
        DeltaKey { name: name.into(), type_sql: ty.into(), as_text, fixed_bytes: None, built_in: !ty.contains('.') }
    }

    #[test]
    fn keys_kept_as_text_are_read_back_as_their_type() {
        let plain = key("id", "integer", false);
        assert_eq!(plain.definition(), "\"id\" integer[] NOT NULL");
        assert_eq!(plain.single("OLD.\"id\""), "ARRAY[OLD.\"id\"]");
        let array = key("tags", "public.ids", true);
        assert_eq!(array.definition(), "\"tags\" text[] NOT NULL");
        // Not PostgreSQL's own type: its output function, not a cast.
        assert_eq!(
            array.aggregate("r.\"tags\""),
            "pg_catalog.array_agg(CASE WHEN pg_catalog.num_nulls(r.\"tags\") OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format('%s', r.\"tags\") END)"
        );
        let built_in = key("nums", "integer[]", true);
        assert_eq!(built_in.aggregate("r.\"nums\""), "pg_catalog.array_agg(r.\"nums\"::pg_catalog.text)");
        let read = rows("ibex.\"d\"", &[plain, array]);
        assert!(read.contains("u.\"tags\"::public.ids AS \"tags\""), "{read}");
        assert!(read.contains("unnest(s.\"id\", s.\"tags\", s.old_row) AS u(\"id\", \"tags\", ibex_image)"), "{read}");
    }

    #[test]
    fn few_keys_are_one_insert_and_more_are_chunked() {
        let keys = [key("ibex_origin", "integer", false), key("b", "public.code", true)];
        let sql = write_keys("ibex.\"d\"", &keys, ", origin", ", ibex_origin", "ibex_new");
        // Columns are qualified: a key column named like the variable is no clash.
        assert!(sql.contains("ARRAY(SELECT ibex_row.\"ibex_origin\" FROM ibex_new ibex_row LIMIT 1001)"), "{sql}");
        assert!(
            sql.contains("ARRAY(SELECT CASE WHEN pg_catalog.num_nulls(ibex_row.\"b\") OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format('%s', ibex_row.\"b\") END FROM ibex_new ibex_row LIMIT 1001)"),
            "{sql}"
        );
        assert!(sql.contains("SELECT s.\"ibex_origin\", s.\"b\", ibex_origin FROM"), "{sql}");
        assert!(sql.contains("WHERE pg_catalog.cardinality(s.\"ibex_origin\") OPERATOR(pg_catalog.>=) 1"), "{sql}");
        assert!(sql.contains("AND pg_catalog.cardinality(s.\"ibex_origin\") OPERATOR(pg_catalog.<=) 1000"), "{sql}");
        assert!(sql.contains("IF NOT FOUND THEN"), "{sql}");
        assert!(sql.contains("FROM ibex_new ibex_row WINDOW w"), "{sql}");
    }

    #[test]
    fn only_keys_of_one_size_are_sliced_and_within_the_byte_bound() {
        let sized = |bytes: u16| DeltaKey { fixed_bytes: Some(bytes), ..key("id", "integer", false) };
        assert_eq!(sliced_limit(&[sized(4)]), Some(SLICED_KEYS));
        assert_eq!(sliced_limit(&[sized(64), sized(64)]), Some(SLICED_BYTES / 128));
        assert_eq!(sliced_limit(&[sized(4), key("b", "text", false)]), None);
        let sliced = write_keys("ibex.\"d\"", &[sized(8)], "", "", "ibex_new");
        assert!(sliced.contains("LIMIT 1000001) AS \"id\" OFFSET 0) s,"), "{sliced}");
        assert!(sliced.contains("s.\"id\"[ibex_slice.ibex_at OPERATOR(pg_catalog.+) 1 :"), "{sliced}");
        assert!(sliced.contains("FROM ibex_new ibex_row WINDOW w"), "the aggregate beyond the bound: {sliced}");
        let unsliced = write_keys("ibex.\"d\"", &[key("b", "text", false)], "", "", "ibex_new");
        assert!(!unsliced.contains("ibex_slice"), "{unsliced}");
    }

    #[test]
    fn old_images_bound_their_chunks_by_bytes_too() {
        let with = aggregate_rows(&[key("id", "integer", false)], Some("ARRAY[\"v\"::text]"), "", "ibex_old");
        assert!(with.contains("GROUP BY r.ibex_chunk, r.ibex_bytes"), "{with}");
        let without = aggregate_rows(&[key("id", "integer", false)], None, "", "ibex_new");
        assert!(without.contains("GROUP BY r.ibex_chunk\n") || without.ends_with("GROUP BY r.ibex_chunk"), "{without}");
    }
}
