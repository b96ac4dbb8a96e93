//! The SQL text of capture. Every name is quoted; key columns come from the
//! catalog and the live database, never from row data.

use std::fmt::Write;

use super::{CaptureMode, CaptureTable, IbexWrites, KICK_CHANNEL, Window, delta};
use crate::pg::introspect::LiveColumn;
use crate::pg::version::{Capabilities, XidFlavour};
use crate::pg::{QualifiedName, quote_ident, quote_literal};

pub const CAPTURE_TRIGGERS: &[&str] =
    &["ibex_capture_delete", "ibex_capture_insert", "ibex_capture_key", "ibex_capture_truncate", "ibex_capture_update"];
pub const KICK_TRIGGER: &str = "ibex_kick";

/// The ibex triggers a captured table carries. With WAL capture only
/// TRUNCATE keeps a trigger (and the kick, which wakes the daemon).
pub fn triggers_of(mode: CaptureMode, kick: bool) -> Vec<&'static str> {
    match mode {
        CaptureMode::Trigger => CAPTURE_TRIGGERS.to_vec(),
        CaptureMode::Wal if kick => vec!["ibex_capture_truncate", KICK_TRIGGER],
        CaptureMode::Wal => vec!["ibex_capture_truncate"],
    }
}

/// Objects shared by all captured tables of a database, in the server's flavour.
pub fn schema(caps: &Capabilities) -> String {
    let x = caps.xids;
    SCHEMA
        .replace("{xid_type}", x.xid_type())
        .replace("{current_xid}", x.current_xid())
        .replace("{snapshot_type}", x.snapshot_type())
}

const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS ibex;
COMMENT ON SCHEMA ibex IS 'ibex replication: change capture (delta tables, cursors); managed by ibex';
CREATE TABLE IF NOT EXISTS ibex.captured (
    schema_name  text NOT NULL,
    rel_name     text NOT NULL,
    delta_table  text NOT NULL,
    key_columns  text[] NOT NULL,
    kick         boolean NOT NULL DEFAULT false,
    installed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, rel_name)
);
ALTER TABLE ibex.captured ADD COLUMN IF NOT EXISTS old_image boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS ibex.cursor (
    sync        text PRIMARY KEY,
    snapshot    {snapshot_type} NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS ibex.truncate_log (
    schema_name text NOT NULL,
    rel_name    text NOT NULL,
    txid        {xid_type} NOT NULL DEFAULT {current_xid},
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS truncate_log_txid ON ibex.truncate_log (txid);
ALTER TABLE ibex.truncate_log ADD COLUMN IF NOT EXISTS origin text;
ALTER TABLE ibex.captured ADD COLUMN IF NOT EXISTS ibex_writes text NOT NULL DEFAULT 'ignore';
-- The one catalog whose syncs own this capture: a second catalog would
-- remove the first one's cursors and triggers.
CREATE TABLE IF NOT EXISTS ibex.owner (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    catalog_id  text NOT NULL,
    catalog     text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
-- Tables a sync must copy whole from this db on its next run (their
-- pending changes could not be kept when their key columns changed).
CREATE TABLE IF NOT EXISTS ibex.resync (
    sync         text NOT NULL,
    schema_name  text NOT NULL,
    rel_name     text NOT NULL,
    reason       text NOT NULL,
    PRIMARY KEY (sync, schema_name, rel_name)
);
-- Fencing for daemons that share a catalog (see engine/src/daemon/lease.rs):
-- each run on this db first records its sync's lease token here, and is
-- refused if a newer holder has already been here. The row lock it takes
-- lasts until the run commits, so runs of one sync never overlap.
CREATE TABLE IF NOT EXISTS ibex.fence (
    sync        text PRIMARY KEY,
    token       bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION ibex.fence(p_sync text, p_token bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO ibex.fence AS f (sync, token) VALUES (p_sync, p_token)
    ON CONFLICT (sync) DO UPDATE SET token = excluded.token, updated_at = now() WHERE f.token <= excluded.token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sync % was run here by a newer lease holder: this run''s lease (token %) is stale', p_sync, p_token
            USING ERRCODE = 'IBXFN';
    END IF;
END
$$;
-- WAL capture (capture=wal): the slot, and the position decoded up to
-- (written with the delta rows; the slot is advanced to it after commit).
CREATE TABLE IF NOT EXISTS ibex.wal (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    slot_name         text NOT NULL,
    materialized_lsn  pg_lsn,
    materialized_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE ibex.captured ADD COLUMN IF NOT EXISTS capture text NOT NULL DEFAULT 'trigger';
-- How the delta table is written: 'row' (a row per changed row, by an
-- earlier ibex; converted on the next reconcile) or 'statement'.
ALTER TABLE ibex.captured ADD COLUMN IF NOT EXISTS layout text NOT NULL DEFAULT 'row';
-- The kick of WAL-captured tables: nothing else fires in their writers.
-- Every name qualified, no SET clause: see function_bodies.
CREATE OR REPLACE FUNCTION ibex.kick() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('ibex_changed', TG_TABLE_SCHEMA OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE OR REPLACE FUNCTION ibex.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    origin text;
BEGIN
    -- Fires for ibex's own writes only where the trigger is ENABLE ALWAYS (makedelta).
    IF current_setting('session_replication_role') = 'replica' THEN
        IF coalesce(current_setting('ibex.makedelta', true), '') <> 'on' AND NOT EXISTS (
            SELECT 1 FROM ibex.captured c
             WHERE c.schema_name = TG_TABLE_SCHEMA AND c.rel_name = TG_TABLE_NAME AND c.ibex_writes = 'all') THEN
            RETURN NULL;
        END IF;
        origin := nullif(current_setting('ibex.origin', true), '');
    END IF;
    INSERT INTO ibex.truncate_log (schema_name, rel_name, origin) VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, origin);
    -- A truncate is rare: waking every CTL that reads this db costs nothing.
    PERFORM pg_notify('ibex_changed', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$$;
"#;

/// A name of at most 63 bytes, unique per table: a readable prefix and a
/// hash of the full `schema.table`.
fn object_name(prefix: &str, table: &QualifiedName) -> String {
    let hash = crate::names::fnv1a32(format!("{}.{}", table.schema, table.name).into_bytes());
    let readable = crate::names::readable(&table.name, 40);
    format!("{prefix}{readable}_{hash:08x}")
}

/// The delta table of `table`, in schema `ibex`.
pub fn delta_table_name(table: &QualifiedName) -> String {
    object_name("delta_", table)
}

/// The delta table of `table`, schema-qualified and quoted.
pub fn delta_table(table: &QualifiedName) -> String {
    format!("ibex.{}", quote_ident(&delta_table_name(table)))
}

fn function_name(table: &QualifiedName, suffix: &str) -> String {
    format!("ibex.{}", quote_ident(&object_name(&format!("capture{suffix}_"), table)))
}

/// Rows of the delta table `alias` in `window` (see `window.rs`): written by
/// transactions that started at or after the cursor's xmax or were in
/// progress when it was taken, and (for a cut window) visible at its end.
/// Read inside the run's snapshot, the rest is invisible anyway.
pub fn window_condition(alias: &str, window: &Window, x: XidFlavour) -> String {
    let cursor = &window.cursor;
    let mut sql = if cursor.xip.is_empty() {
        format!("{alias}.txid >= {}", x.xid(cursor.xmax))
    } else {
        format!("({alias}.txid >= {} OR {alias}.txid = ANY({}))", x.xid(cursor.xmax), x.xids(&cursor.xip))
    };
    if let Some(end) = &window.end {
        sql.push_str(&format!(" AND {}", in_window_end(alias, end, x)));
    }
    sql
}

/// Rows of alias `alias` visible at a cut window's `end`.
pub fn in_window_end(alias: &str, end: &super::Snapshot, x: XidFlavour) -> String {
    format!("{alias}.txid < {} AND {}", x.xid(end.xmax), x.visible(&format!("{alias}.txid"), &end.to_string()))
}

/// Rows not written by `sync` itself (its own applies, captured where a
/// table is makedelta): a sync never reads back what it wrote.
pub fn not_written_by(alias: &str, sync: &str) -> String {
    format!("({alias}.origin IS NULL OR {alias}.origin <> {})", quote_literal(sync))
}

/// Installs (or repairs) the capture of one table. Idempotent. The delta
/// table is written per statement (see `delta.rs`).
pub fn install_table(table: &CaptureTable, caps: &Capabilities, mode: CaptureMode) -> String {
    let x = caps.xids;
    let delta = delta_table(&table.name);
    let mut sql = String::new();
    let _ = writeln!(sql, "CREATE TABLE IF NOT EXISTS {delta} (");
    for key in &table.key {
        let _ = writeln!(sql, "    {},", key.definition());
    }
    let _ = writeln!(
        sql,
        "    txid {} NOT NULL DEFAULT {},\n    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()\n);",
        x.xid_type(),
        x.current_xid()
    );
    // The rows before the change, as text (one row of this two-dimensional
    // array per key), for tables that keep old images.
    let _ = writeln!(sql, "ALTER TABLE {delta} ADD COLUMN IF NOT EXISTS old_row text[];");
    // The sync that wrote the row (makedelta), so that sync skips it.
    let _ = writeln!(sql, "ALTER TABLE {delta} ADD COLUMN IF NOT EXISTS origin text;");
    let _ = writeln!(
        sql,
        "CREATE INDEX IF NOT EXISTS {} ON {delta} (txid);",
        quote_ident(&object_name("txid_", &table.name))
    );
    sql.push_str(&capture_functions(table, caps, mode));
    sql.push_str(&capture_triggers(table, caps, mode));
    sql
}

/// The capture triggers of one table, those of other ibex versions and
/// modes dropped first.
fn capture_triggers(table: &CaptureTable, caps: &Capabilities, mode: CaptureMode) -> String {
    let execute = caps.execute_trigger_function();
    let target = table.name.quoted();
    let statement_fn = function_name(&table.name, "");
    let key_fn = function_name(&table.name, "_key");
    let mut sql = String::new();
    // DROP + CREATE rather than CREATE OR REPLACE TRIGGER, which needs 14+.
    for name in CAPTURE_TRIGGERS.iter().chain([&KICK_TRIGGER]) {
        let _ = writeln!(sql, "DROP TRIGGER IF EXISTS {name} ON {target};");
    }
    if mode == CaptureMode::Wal {
        // The slot sees the rows; TRUNCATE keeps its trigger.
        let _ = writeln!(
            sql,
            "CREATE TRIGGER ibex_capture_truncate AFTER TRUNCATE ON {target} FOR EACH STATEMENT {execute} ibex.capture_truncate();"
        );
        if table.kick {
            let _ = writeln!(
                sql,
                "CREATE TRIGGER {KICK_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {target} FOR EACH STATEMENT {execute} ibex.kick();"
            );
        }
        if table.ibex_writes != IbexWrites::Ignore {
            let _ = writeln!(sql, "ALTER TABLE {target} ENABLE ALWAYS TRIGGER ibex_capture_truncate;");
        }
        return sql;
    }
    let _ = writeln!(
        sql,
        "CREATE TRIGGER ibex_capture_insert AFTER INSERT ON {target} REFERENCING NEW TABLE AS ibex_new FOR EACH STATEMENT {execute} {statement_fn}();"
    );
    let _ = writeln!(
        sql,
        "CREATE TRIGGER ibex_capture_update AFTER UPDATE ON {target} REFERENCING {}NEW TABLE AS ibex_new FOR EACH STATEMENT {execute} {statement_fn}();",
        if table.old_image.is_some() { "OLD TABLE AS ibex_old " } else { "" }
    );

    let _ = writeln!(
        sql,
        "CREATE TRIGGER ibex_capture_delete AFTER DELETE ON {target} REFERENCING OLD TABLE AS ibex_old FOR EACH STATEMENT {execute} {statement_fn}();"
    );
    // Every UPDATE, not `UPDATE OF key`: a BEFORE trigger can rewrite the
    // key of an UPDATE that never names it. The WHEN test costs a
    // comparison per row and queues nothing unless the key changed.
    let changed: Vec<String> = table.key.iter().map(key_changed).collect();
    let _ = writeln!(
        sql,
        "CREATE TRIGGER ibex_capture_key AFTER UPDATE ON {target} FOR EACH ROW WHEN ({}) {execute} {key_fn}();",
        changed.join(" OR ")
    );
    let _ = writeln!(
        sql,
        "CREATE TRIGGER ibex_capture_truncate AFTER TRUNCATE ON {target} FOR EACH STATEMENT {execute} ibex.capture_truncate();"
    );
    if table.ibex_writes != IbexWrites::Ignore {
        // Fire under session_replication_role = replica too: ibex's applies.
        for name in CAPTURE_TRIGGERS {
            let _ = writeln!(sql, "ALTER TABLE {target} ENABLE ALWAYS TRIGGER {name};");
        }
    }
    sql
}

/// Whether an UPDATE changed key column `key`, for the key trigger's WHEN.
/// The WHEN runs as every writer but is bound when ibex installs it, so it
/// names no operator a search_path could choose: for a type of PostgreSQL's
/// own, `pg_catalog`'s `<>` (NULL counts as changed: a key is NOT NULL, and
/// an extra key only costs a lookup); for any other, a comparison of the
/// values' bytes, built in, which runs none of the type's code (an `=` in
/// `public` would otherwise win for it). Values equal but not in bytes (a
/// numeric's scale, a citext's case) count as changed: capturing a key too
/// many is harmless, one too few leaves a stale row.
fn key_changed(key: &delta::DeltaKey) -> String {
    let column = quote_ident(&key.name);
    if key.built_in {
        format!("(OLD.{column} OPERATOR(pg_catalog.<>) NEW.{column}) IS NOT FALSE")
    } else {
        format!("ROW(OLD.{column})::pg_catalog.record OPERATOR(pg_catalog.*<>) ROW(NEW.{column})::pg_catalog.record")
    }
}

/// The capture functions of one table (CREATE OR REPLACE: no lock on the
/// table), the statement function commented with the [`CaptureMark`] of
/// this ibex's functions and triggers, so that a capture an earlier ibex
/// wrote is found.
pub fn capture_functions(table: &CaptureTable, caps: &Capabilities, mode: CaptureMode) -> String {
    format!(
        "{}COMMENT ON FUNCTION {}() IS {};\n",
        function_bodies(table, caps),
        function_name(&table.name, ""),
        quote_literal(&CaptureMark::of(table, caps, mode).to_string())
    )
}

/// The comment on a table's statement capture function: hashes of the
/// text of its capture functions and of its triggers as the ibex that
/// wrote them did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureMark {
    pub functions: u64,
    pub triggers: u64,
}

impl CaptureMark {
    const PREFIX: &'static str = "ibex capture";

    /// The mark of this ibex's capture of `table` on this server.
    pub fn of(table: &CaptureTable, caps: &Capabilities, mode: CaptureMode) -> CaptureMark {
        CaptureMark {
            functions: crate::names::fnv1a64(function_bodies(table, caps).bytes()),
            triggers: crate::names::fnv1a64(capture_triggers(table, caps, mode).bytes()),
        }
    }

    /// Reads a comment written by [`CaptureMark`]'s `Display`; none for
    /// anything else (a capture from before marks, or a comment changed).
    pub fn parse(comment: &str) -> Option<CaptureMark> {
        let mut words = comment.strip_prefix(Self::PREFIX)?.split_whitespace();
        let mut hash = |name: &str| {
            (words.next() == Some(name)).then_some(())?;
            u64::from_str_radix(words.next()?, 16).ok()
        };
        let functions = hash("functions")?;
        let triggers = hash("triggers")?;
        Some(CaptureMark { functions, triggers })
    }
}

impl std::fmt::Display for CaptureMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} functions {:016x} triggers {:016x}", Self::PREFIX, self.functions, self.triggers)
    }
}

/// The statement capture function of `table`, as `to_regprocedure` reads it.
pub fn statement_function_signature(table: &QualifiedName) -> String {
    format!("{}()", function_name(table, ""))
}

/// The statement function (inserts, updates, deletes) and the key function
/// (a key changed in an UPDATE) of one table.
///
/// They run as their owner (SECURITY DEFINER: writers need no right on the
/// delta table) with the writer's search_path, so every function, operator
/// and type in them is named with its schema, `pg_catalog`, and the only
/// unqualified relations are the transition tables, which the parser finds
/// before any schema. No `SET search_path` clause: it made each call set
/// and restore the setting, about 2 µs of a single-row statement's 18 µs
/// (by hand on PG 15, 50,000 single-row UPDATEs in a loop). The test
/// `a_writer_s_search_path_cannot_reach_into_capture` holds them to it.
fn function_bodies(table: &CaptureTable, caps: &Capabilities) -> String {
    let delta = delta_table(&table.name);
    let statement_fn = function_name(&table.name, "");
    let key_fn = function_name(&table.name, "_key");
    let key_cols: Vec<String> = table.key.iter().map(|k| quote_ident(&k.name)).collect();
    let key_list = key_cols.join(", ");
    let mut sql = String::new();
    // Where ibex's own writes are captured too (ENABLE ALWAYS triggers),
    // they carry the writing sync's name; everywhere else the column is null.
    let (origin_col, origin_val) = match table.ibex_writes {
        IbexWrites::Ignore => ("", ""),
        _ => (", origin", ", ibex_origin"),
    };
    let image = table.old_image.as_ref().map(|columns| {
        let image: Vec<String> = columns
            .iter()
            .map(|c| LiveColumn::text_of(&format!("{}.{}", delta::ROW_ALIAS, quote_ident(&c.name)), c.built_in))
            .collect();
        format!("ARRAY[{}]::pg_catalog.text[]", image.join(", "))
    });
    let old_insert = match &image {
        Some(image) => format!(
            "INSERT INTO {delta} ({key_list}, old_row{origin_col}) {};",
            delta::aggregate_rows(&table.key, Some(image), origin_val, "ibex_old")
        ),
        None => delta::write_keys(&delta, &table.key, origin_col, origin_val, "ibex_old"),
    };
    let new_insert = delta::write_keys(&delta, &table.key, origin_col, origin_val, "ibex_new");
    let update_old = if image.is_some() { old_insert.as_str() } else { "" };
    // The kick rides in the capture trigger: one trigger call per statement,
    // not two. Its payload is written here, not concatenated per statement.
    let kick = if table.kick {
        let payload = super::kick_payload(&table.name);
        format!("PERFORM pg_catalog.pg_notify({}, {});", quote_literal(KICK_CHANNEL), quote_literal(&payload))
    } else {
        String::new()
    };
    let (declare, replica_check) = replica_check(table.ibex_writes);
    // Before 13 a hash aggregate cannot spill: grouping a huge statement's
    // chunks by sorting keeps one chunk's arrays in memory, not all.
    let group_by_sort = if caps.version_num < 130_000 { " SET enable_hashagg = off" } else { "" };
    let _ = writeln!(
        sql,
        "CREATE OR REPLACE FUNCTION {statement_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER{group_by_sort} AS $ibex$
{declare}BEGIN
    {replica_check}
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        {old_insert}
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        {update_old}
        {new_insert}
    ELSE
        {new_insert}
    END IF;
    {kick}
    RETURN NULL;
END
$ibex$;"
    );
    let old_keys: Vec<String> = table.key.iter().map(|k| k.single(&format!("OLD.{}", quote_ident(&k.name)))).collect();
    let _ = writeln!(
        sql,
        "CREATE OR REPLACE FUNCTION {key_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $ibex$
{declare}BEGIN
    {replica_check}
    INSERT INTO {delta} ({key_list}{origin_col}) VALUES ({}{origin_val});
    RETURN NULL;
END
$ibex$;",
        old_keys.join(", ")
    );
    sql
}

/// The start of a capture function that also fires for ibex's writes:
/// under replica mode it captures only makedelta writes, tagged with the
/// writing sync (ibex sets `ibex.origin` and `ibex.makedelta` in its runs).
fn replica_check(writes: IbexWrites) -> (&'static str, String) {
    let asked = "coalesce(pg_catalog.current_setting('ibex.makedelta', true), '') OPERATOR(pg_catalog.<>) 'on'";
    let skip = match writes {
        IbexWrites::Ignore => return ("", String::new()),
        IbexWrites::All => String::new(),
        IbexWrites::WhenAsked => format!("IF {asked} THEN RETURN NULL; END IF;\n        "),
    };
    (
        "DECLARE\n    ibex_origin pg_catalog.text;\n",
        // No NULLIF: it looks its `=` up by the caller's search_path.
        format!(
            "IF pg_catalog.current_setting('session_replication_role') OPERATOR(pg_catalog.=) 'replica' THEN
        {skip}ibex_origin := pg_catalog.current_setting('ibex.origin', true);
        IF ibex_origin OPERATOR(pg_catalog.=) '' THEN ibex_origin := NULL; END IF;
    END IF;"
        ),
    )
}

/// Removes the capture of one table (the table itself may be gone).
pub fn drop_table(table: &QualifiedName) -> String {
    let target = table.quoted();
    let mut sql = String::new();
    // Only touch the user's table if it still exists.
    let _ = writeln!(sql, "DO $ibex$ BEGIN IF to_regclass({}) IS NOT NULL THEN", quote_literal(&target));
    for name in CAPTURE_TRIGGERS.iter().chain([&KICK_TRIGGER]) {
        let _ = writeln!(sql, "    EXECUTE {};", quote_literal(&format!("DROP TRIGGER IF EXISTS {name} ON {target}")));
    }
    let _ = writeln!(sql, "END IF; END $ibex$;");
    let _ = writeln!(sql, "DROP FUNCTION IF EXISTS {}();", function_name(table, ""));
    let _ = writeln!(sql, "DROP FUNCTION IF EXISTS {}();", function_name(table, "_key"));
    let _ = writeln!(sql, "DROP TABLE IF EXISTS ibex.{};", quote_ident(&delta_table_name(table)));
    let _ = writeln!(
        sql,
        "DELETE FROM ibex.captured WHERE schema_name = {} AND rel_name = {};",
        quote_literal(&table.schema),
        quote_literal(&table.name)
    );
    let _ = writeln!(
        sql,
        "DELETE FROM ibex.truncate_log WHERE schema_name = {} AND rel_name = {};",
        quote_literal(&table.schema),
        quote_literal(&table.name)
    );
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_mark_reads_back_and_nothing_else_does() {
        let mark = CaptureMark { functions: 0x0123_4567_89ab_cdef, triggers: 7 };
        assert_eq!(CaptureMark::parse(&mark.to_string()), Some(mark));
        for other in
            ["", "ibex capture", "ibex capture functions 12 triggers", "ibex capture triggers 1 functions 2", "note"]
        {
            assert_eq!(CaptureMark::parse(other), None, "{other}");
        }
    }

    #[test]
    fn object_names_fit_and_differ() {
        let long = QualifiedName::new("s", "x".repeat(200));
        assert!(delta_table_name(&long).len() <= 63);
        assert_ne!(delta_table_name(&QualifiedName::new("a", "t")), delta_table_name(&QualifiedName::new("b", "t")));
        assert_eq!(
            delta_table_name(&QualifiedName::new("public", "Odd \"Name\"")),
            delta_table_name(&QualifiedName::new("public", "Odd \"Name\""))
        );
    }

    fn table(writes: IbexWrites) -> CaptureTable {
        CaptureTable {
            name: QualifiedName::new("public", "t"),
            key: vec![delta::DeltaKey {
                name: "id".into(),
                type_sql: "integer".into(),
                as_text: false,
                fixed_bytes: Some(4),
                built_in: true,
            }],
            kick: true,
            old_image: None,
            ibex_writes: writes,
        }
    }

    /// The capture functions' bodies with string literals, quoted names,
    /// schema-qualified operators and casts to pg_catalog.text taken out:
    /// what is left must name no operator, function or type unqualified.
    fn unqualified_in(body: &str) -> Vec<String> {
        let mut plain = String::new();
        let mut quote: Option<char> = None;
        for c in body.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    plain.push('q');
                }
                None => plain.push(c),
            }
        }
        let mut plain = plain
            .replace("::pg_catalog.text[]", "")
            .replace("::pg_catalog.text", "")
            .replace("::pg_catalog.record", "")
            .replace(":=", " ");
        for op in ["=", "<>", ">=", "<=", "+", "-", "/", "||", "*<>"] {
            plain = plain.replace(&format!("OPERATOR(pg_catalog.{op})"), " op ");
        }
        let mut found: Vec<String> = plain
            .split(|c: char| c.is_alphanumeric() || c == '_' || c.is_whitespace() || "(),;.[]".contains(c))
            .filter(|rest| !rest.is_empty() && *rest != ":")
            .map(|op| format!("operator {op}"))
            .collect();
        // Syntax that looks its operator up by name.
        for syntax in ["BETWEEN", "NULLIF", "nullif", "DISTINCT FROM", "LIKE", " IN ("] {
            if plain.contains(syntax) {
                found.push(format!("syntax {syntax}"));
            }
        }
        // A name followed by `(` is a call unless qualified, a keyword, or
        // an alias's column list (`AS name(`).
        let keywords =
            ["ARRAY", "EXISTS", "coalesce", "VALUES", "AS", "FROM", "AND", "OR", "NOT", "IN", "WHERE", "ROW"];
        let words: Vec<&str> = plain.split_inclusive(|c: char| !(c.is_alphanumeric() || c == '_')).collect();
        for (i, word) in words.iter().enumerate() {
            let Some(name) = word.strip_suffix('(') else { continue };
            let before = if i > 0 { words[i - 1] } else { "" };
            if name.is_empty() || before.ends_with('.') || before.trim() == "AS" || keywords.contains(&name) {
                continue;
            }
            found.push(format!("call {name}("));
        }
        found
    }

    #[test]
    fn capture_functions_name_the_schema_of_everything_they_call() {
        let fixed = delta::DeltaKey {
            name: "id".into(),
            type_sql: "integer".into(),
            as_text: false,
            fixed_bytes: Some(4),
            built_in: true,
        };
        let text = delta::DeltaKey {
            name: "b".into(),
            type_sql: "public.code".into(),
            as_text: true,
            fixed_bytes: None,
            built_in: false,
        };
        for version in [100023, 170010] {
            let caps = Capabilities::of_version(version);
            for writes in [IbexWrites::Ignore, IbexWrites::WhenAsked, IbexWrites::All] {
                for (key, image) in [
                    (vec![fixed.clone()], None),
                    (
                        vec![fixed.clone(), text.clone()],
                        Some(vec![
                            super::super::ImageColumn { name: "id".into(), built_in: true },
                            super::super::ImageColumn { name: "b".into(), built_in: false },
                        ]),
                    ),
                ] {
                    let mut t = table(writes);
                    t.key = key;
                    t.old_image = image;
                    let sql = function_bodies(&t, &caps);
                    let bodies: Vec<&str> = sql.split("$ibex$").skip(1).step_by(2).collect();
                    assert_eq!(bodies.len(), 2, "{sql}");
                    for body in bodies {
                        assert_eq!(unqualified_in(body), Vec::<String>::new(), "{body}");
                        // A type not PostgreSQL's own becomes text by its
                        // output function, never by a cast its owner wrote.
                        assert!(!body.contains("\"b\"::"), "{body}");
                    }
                    if t.old_image.is_some() {
                        assert!(sql.contains("pg_catalog.format('%s', ibex_row.\"b\")"), "{sql}");
                        assert!(sql.contains("ibex_row.\"id\"::pg_catalog.text"), "{sql}");
                    }
                    // The key trigger's WHEN is bound under ibex's search_path
                    // but runs as every writer.
                    let triggers = capture_triggers(&t, &caps, CaptureMode::Trigger);
                    let when = triggers.split(" WHEN (").nth(1).and_then(|rest| rest.split(") EXECUTE").next());
                    let when = when.unwrap_or_default();
                    assert!(when.contains("OLD."), "{triggers}");
                    assert_eq!(unqualified_in(when), Vec::<String>::new(), "{when}");
                }
            }
        }
        let kick = SCHEMA.split("ibex.kick()").nth(1).and_then(|rest| rest.split("$$").nth(1)).unwrap_or_default();
        assert!(kick.contains("pg_notify"), "{kick}");
        assert_eq!(unqualified_in(kick), Vec::<String>::new(), "{kick}");
        // The lint sees what it must.
        assert_eq!(
            unqualified_in("x := cardinality(a) + 1 AND b::text"),
            ["operator +", "operator ::", "call cardinality("]
        );
    }

    #[test]
    fn windows_are_written_for_the_txid_index_in_both_flavours() {
        let window = Window::unbounded("100:110:100,104").unwrap();
        assert_eq!(
            window_condition("d", &window, XidFlavour::Xid8),
            "(d.txid >= '110'::xid8 OR d.txid = ANY('{100,104}'::xid8[]))"
        );
        assert_eq!(
            window_condition("d", &window, XidFlavour::Txid),
            "(d.txid >= 110::int8 OR d.txid = ANY('{100,104}'::int8[]))"
        );
        let cut = Window { cursor: "120:120:".parse().unwrap(), end: Some("118:130:125".parse().unwrap()) };
        assert_eq!(
            window_condition("d", &cut, XidFlavour::Txid),
            "d.txid >= 120::int8 AND d.txid < 130::int8 AND txid_visible_in_snapshot(d.txid, '118:130:125'::txid_snapshot)"
        );
        assert_eq!(not_written_by("d", "o'k"), "(d.origin IS NULL OR d.origin <> 'o''k')");
    }

    /// Every name the delta table and its readers give their own columns,
    /// in the SQL as written, is one `sync/validate.rs` refuses for a key
    /// column (`delta::OWN_NAMES`): a column added to the delta without
    /// adding its name there fails here.
    #[test]
    fn every_own_column_of_the_delta_is_refused_as_a_key_name() {
        let mut imaged = table(IbexWrites::All);
        imaged.old_image =
            Some(["id", "note"].map(|name| super::super::ImageColumn { name: name.into(), built_in: true }).to_vec());
        let v17 = Capabilities::of_version(170010);
        let sql = install_table(&imaged, &v17, CaptureMode::Trigger);
        let reader = delta::rows("ibex.d", &imaged.key);
        let mut own: Vec<String> = Vec::new();
        // The CREATE TABLE's columns, the key's aside.
        let created = sql.split("CREATE TABLE IF NOT EXISTS").nth(1).and_then(|rest| rest.split(");").next());
        for line in created.unwrap_or_default().lines().skip(1) {
            if let Some(name) = line.split_whitespace().next() {
                own.push(name.to_string());
            }
        }
        own.extend(
            sql.split("ADD COLUMN IF NOT EXISTS ")
                .skip(1)
                .filter_map(|rest| rest.split_whitespace().next())
                .map(String::from),
        );
        // Aliases the writer and the reader give their own values (not
        // the transition tables: `REFERENCING NEW TABLE AS ibex_new`).
        for text in [&sql, &reader] {
            for (at, _) in text.match_indices(" AS ") {
                if text[..at].ends_with("TABLE") {
                    continue;
                }
                let rest = &text[at + 4..];
                let name = rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or_default();
                if name.starts_with("ibex_") || ["txid", "changed_at", "old_row", "origin"].contains(&name) {
                    own.push(name.to_string());
                }
            }
        }
        own.extend(
            reader.split("u(").nth(1).and_then(|rest| rest.split(')').next()).into_iter().flat_map(|list| {
                list.split(", ").filter(|n| !n.starts_with('"')).map(String::from).collect::<Vec<_>>()
            }),
        );
        own.retain(|name| name != "\"id\"");
        let found: std::collections::BTreeSet<&str> = own.iter().map(String::as_str).collect();
        let listed: std::collections::BTreeSet<&str> = delta::OWN_NAMES.into_iter().collect();
        // The CREATE TABLE and its ADD COLUMNs were read (not only aliases).
        for column in ["txid", "changed_at", "old_row", "origin"] {
            assert!(found.contains(column), "{column} not found: the SQL's shape changed: {found:?}\n{sql}");
        }
        assert_eq!(found, listed, "the delta's own names (left) and OWN_NAMES (right) differ");
    }

    #[test]
    fn triggers_per_version_and_makedelta() {
        let v10 = Capabilities::of_version(100023);
        let v17 = Capabilities::of_version(170010);
        let plain = install_table(&table(IbexWrites::Ignore), &v17, CaptureMode::Trigger);
        assert!(plain.contains("EXECUTE FUNCTION") && !plain.contains("EXECUTE PROCEDURE"), "{plain}");
        assert!(plain.contains("txid xid8 NOT NULL DEFAULT pg_current_xact_id()"), "{plain}");
        // A BEFORE trigger may rewrite the key of an UPDATE that never names it.
        assert!(plain.contains("AFTER UPDATE ON \"public\".\"t\" FOR EACH ROW WHEN"), "{plain}");
        assert!(!plain.contains("ENABLE ALWAYS") && !plain.contains("ibex_origin"), "{plain}");
        let old = install_table(&table(IbexWrites::WhenAsked), &v10, CaptureMode::Trigger);
        assert!(old.contains("EXECUTE PROCEDURE") && !old.contains("EXECUTE FUNCTION"), "{old}");
        assert!(old.contains("txid bigint NOT NULL DEFAULT txid_current()"), "{old}");
        assert!(old.contains("SET enable_hashagg = off") && !plain.contains("enable_hashagg"), "{old}");
        assert!(old.contains("ENABLE ALWAYS TRIGGER ibex_capture_insert"), "{old}");
        assert!(old.contains("current_setting('ibex.makedelta', true)"), "{old}");
        let all = install_table(&table(IbexWrites::All), &v17, CaptureMode::Trigger);
        assert!(all.contains("ibex_origin := pg_catalog.current_setting('ibex.origin', true);"), "{all}");
        // The capture functions take the writer's search_path (see function_bodies).
        for sql in [&plain, &old, &all] {
            assert!(!sql.contains("search_path") && !sql.contains("nullif"), "{sql}");
        }
        assert!(!all.contains("ibex.makedelta"), "a makedelta table captures every ibex write: {all}");
        let wal = install_table(&table(IbexWrites::Ignore), &v17, CaptureMode::Wal);
        assert!(wal.contains("CREATE TRIGGER ibex_capture_truncate") && wal.contains("ibex.kick()"), "{wal}");
        assert!(!wal.contains("CREATE TRIGGER ibex_capture_insert"), "{wal}");
        let schema = schema(&v10);
        assert!(schema.contains("snapshot    txid_snapshot NOT NULL") && !schema.contains("xid8"), "{schema}");
    }
}
