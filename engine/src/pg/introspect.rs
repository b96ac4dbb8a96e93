//! Reading a live database's catalogs: which relation a typed name means,
//! its kind and the columns that identify its rows.

use tokio_postgres::GenericClient;

use super::QualifiedName;
use crate::error::{Error, PgContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    Table,
    PartitionedTable,
    Sequence,
    /// A view, foreign table, index...: named for the error message.
    Other(&'static str),
}

#[derive(Debug, Clone)]
pub struct LiveRelation {
    pub oid: u32,
    pub name: QualifiedName,
    pub kind: LiveKind,
    /// Primary key columns in index order, if there is a primary key.
    pub primary_key: Option<Vec<String>>,
}

fn kind_of(relkind: i8) -> LiveKind {
    match relkind as u8 {
        b'r' => LiveKind::Table,
        b'p' => LiveKind::PartitionedTable,
        b'S' => LiveKind::Sequence,
        b'v' => LiveKind::Other("view"),
        b'm' => LiveKind::Other("materialized view"),
        b'f' => LiveKind::Other("foreign table"),
        b'i' | b'I' => LiveKind::Other("index"),
        b'c' => LiveKind::Other("composite type"),
        _ => LiveKind::Other("relation"),
    }
}

const SELECT: &str = "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind,
        (SELECT array_agg(a.attname::text ORDER BY k.ord)
           FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = c.oid AND i.indisprimary) AS pkey
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace";

fn from_row(row: &tokio_postgres::Row) -> LiveRelation {
    LiveRelation {
        oid: row.get(0),
        name: QualifiedName::new(row.get::<_, String>(1), row.get::<_, String>(2)),
        kind: kind_of(row.get(3)),
        primary_key: row.get(4),
    }
}

/// Where an unqualified name a user typed is looked for: the position of
/// the relation's schema in PostgreSQL's default search_path (`"$user",
/// public`), NULL outside it. ibex's own sessions leave `public` off their
/// path (see `pg/session.rs`), so `pg_table_is_visible` would find nothing.
const USER_PATH_RANK: &str = "CASE WHEN has_schema_privilege(n.oid, 'USAGE')
    THEN array_position(ARRAY[current_user::text, 'public'], n.nspname::text) END";

/// Finds the relation a user means by `name`, `schema.name` or quoted SQL
/// identifiers; an exact match of the text comes first (so `My Table` and
/// `"odd;name"` work unquoted), then SQL identifier rules.
pub async fn resolve(c: &impl GenericClient, typed: &str) -> Result<Option<LiveRelation>> {
    let exact = c
        .query(
            &format!(
                "{SELECT} WHERE (c.relname = $1 AND {USER_PATH_RANK} IS NOT NULL)
                    OR n.nspname || '.' || c.relname = $1
                  ORDER BY (n.nspname || '.' || c.relname = $1) DESC, {USER_PATH_RANK} LIMIT 1"
            ),
            &[&typed],
        )
        .await
        .ctx(|| format!("looking up {typed:?}"))?;
    if let Some(row) = exact.first() {
        return Ok(Some(from_row(row)));
    }
    // parse_ident raises on bad syntax, which then names nothing. Callers
    // use a connection outside any transaction, so the error costs nothing.
    let rows = match c
        .query(
            &format!(
                "{SELECT}, parse_ident($1) AS p
                  WHERE (cardinality(p) = 1 AND c.relname = p[1] AND {USER_PATH_RANK} IS NOT NULL)
                     OR (cardinality(p) = 2 AND n.nspname = p[1] AND c.relname = p[2])
                  ORDER BY {USER_PATH_RANK} LIMIT 1"
            ),
            &[&typed],
        )
        .await
    {
        Ok(rows) => rows,
        // Not a valid identifier: then it names nothing.
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE) => {
            return Ok(None);
        }
        Err(err) => return Err(err).ctx(|| format!("looking up {typed:?}")),
    };
    Ok(rows.first().map(from_row))
}

/// A user trigger that fires in ibex's sessions and whose function sets no
/// search_path of its own: on a table ibex writes (ibex applies as a
/// replica, so only ENABLE ALWAYS and ENABLE REPLICA ones fire), or an
/// event trigger (on the DDL ibex runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaTrigger {
    pub name: String,
    /// What it fires on: `table public.t`, or `event ddl_command_end`.
    pub fires_on: String,
    /// The function with its argument types, as SQL (`public.audit()`).
    pub function: String,
    /// ENABLE ALWAYS rather than ENABLE REPLICA (or, for an event
    /// trigger, ENABLE ORIGIN).
    pub always: bool,
}

/// The triggers on `tables` (and on their partitions) that fire in ibex's
/// sessions and would run with ibex's search_path (see `pg/session.rs`),
/// and the event triggers, which fire on the DDL ibex runs (installing
/// capture, `ddl=addcol`). ibex's own (in schema ibex), and functions in C
/// or PostgreSQL's own, which look nothing up by the path, are left out.
pub async fn triggers_without_own_path(
    c: &impl GenericClient,
    tables: &[QualifiedName],
) -> Result<Vec<ReplicaTrigger>> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let rows = c
        .query(
            "WITH RECURSIVE written (oid) AS (
                 SELECT to_regclass(x)::oid FROM unnest($1::text[]) x
                 UNION SELECT i.inhrelid FROM pg_inherits i JOIN written w ON i.inhparent = w.oid),
             fired (name, fires_on, fn, always) AS (
                 SELECT t.tgname::text, 'table ' || t.tgrelid::regclass::text, t.tgfoid, t.tgenabled = 'A'
                   FROM pg_trigger t
                  WHERE t.tgrelid IN (SELECT oid FROM written) AND NOT t.tgisinternal AND t.tgenabled IN ('A', 'R')
                 UNION ALL
                 SELECT e.evtname::text, 'event ' || e.evtevent, e.evtfoid, e.evtenabled = 'A'
                   FROM pg_event_trigger e
                  WHERE e.evtenabled <> 'D')
             SELECT f.name, f.fires_on, f.fn::regprocedure::text, f.always
               FROM fired f
               JOIN pg_proc p ON p.oid = f.fn
               JOIN pg_namespace n ON n.oid = p.pronamespace
               JOIN pg_language l ON l.oid = p.prolang
              WHERE n.nspname NOT IN ('ibex', 'pg_catalog') AND l.lanname NOT IN ('c', 'internal')
                AND NOT EXISTS (SELECT FROM unnest(p.proconfig) setting WHERE setting LIKE 'search\\_path=%')
              ORDER BY 2, 1",
            &[&names],
        )
        .await
        .ctx(|| "listing the triggers that fire in ibex's sessions".into())?;
    rows.iter()
        .map(|r| {
            let read = || "reading a trigger".to_string();
            Ok(ReplicaTrigger {
                name: r.try_get(0).ctx(read)?,
                fires_on: r.try_get(1).ctx(read)?,
                function: r.try_get(2).ctx(read)?,
                always: r.try_get(3).ctx(read)?,
            })
        })
        .collect()
}

/// Ordinary and partitioned tables outside the system schemas and ibex's own.
pub async fn list_tables(c: &impl GenericClient, schema: Option<&str>) -> Result<Vec<LiveRelation>> {
    list_of_kinds(c, "rp", schema).await
}

/// Sequences outside the system schemas and ibex's own.
pub async fn list_sequences(c: &impl GenericClient, schema: Option<&str>) -> Result<Vec<LiveRelation>> {
    list_of_kinds(c, "S", schema).await
}

async fn list_of_kinds(c: &impl GenericClient, relkinds: &str, schema: Option<&str>) -> Result<Vec<LiveRelation>> {
    let rows = c
        .query(
            &format!(
                "{SELECT} WHERE strpos($1, c.relkind::text) > 0 AND NOT c.relispartition
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'ibex')
                    AND n.nspname NOT LIKE 'pg\\_%'
                    AND ($2::text IS NULL OR n.nspname = $2)
                  ORDER BY n.nspname, c.relname"
            ),
            &[&relkinds, &schema],
        )
        .await
        .ctx(|| "listing relations".into())?;
    Ok(rows.iter().map(from_row).collect())
}

/// True when `columns` are exactly the columns of a valid, non-partial
/// unique index without expressions, and every one is NOT NULL.
pub async fn is_unique_not_null_key(c: &impl GenericClient, oid: u32, columns: &[String]) -> Result<bool> {
    let row = c
        .query_one(
            "SELECT EXISTS (
                SELECT 1 FROM pg_index i
                 WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
                   AND i.indexprs IS NULL
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                          FROM unnest(i.indkey) k(attnum)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
                       = (SELECT array_agg(x ORDER BY x) FROM unnest($2::text[]) x)
                   AND NOT EXISTS (
                        SELECT 1 FROM unnest(i.indkey) k(attnum)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                         WHERE NOT a.attnotnull))",
            &[&oid, &columns],
        )
        .await
        .ctx(|| "checking unique indexes".into())?;
    Ok(row.get(0))
}

/// Checks that a live table can be replicated and returns its key columns
/// and where they come from: the primary key, or the unique not-null index
/// the user named with `pkey=`.
pub async fn table_key(
    c: &impl GenericClient,
    table: &LiveRelation,
    db: &str,
    pkey: Option<&[String]>,
) -> Result<(Vec<String>, &'static str)> {
    match (pkey, &table.primary_key) {
        (Some(cols), _) => {
            if is_unique_not_null_key(c, table.oid, cols).await? {
                Ok((cols.to_vec(), "unique index"))
            } else {
                Err(Error::Schema(format!(
                    "table {} on db {db} has no unique index on exactly ({}) whose columns are all NOT NULL: create one (CREATE UNIQUE INDEX ON {} ({})) and set the columns NOT NULL, or leave out pkey= to use the primary key",
                    table.name,
                    cols.join(", "),
                    table.name.quoted(),
                    cols.iter().map(|c| super::quote_ident(c)).collect::<Vec<_>>().join(", ")
                )))
            }
        }
        (None, Some(cols)) => Ok((cols.clone(), "primary key")),
        (None, None) => Err(Error::Schema(format!(
            "table {} on db {db} has no primary key: add one (ALTER TABLE {} ADD PRIMARY KEY (...)), or name a unique index whose columns are NOT NULL with pkey=col[,col]",
            table.name,
            table.name.quoted()
        ))),
    }
}

/// A column as COPY and the capture triggers need it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LiveColumn {
    pub name: String,
    /// `format_type()`: the type as SQL text (`integer`, `numeric(10,2)`, `public.mood`).
    pub type_sql: String,
    pub type_oid: u32,
    pub not_null: bool,
    /// Generated columns are computed by each database, never written.
    pub generated: bool,
    /// The type's binary send function, for ordering keys by their bytes,
    /// named with its schema (`-` for a type without one, as `regproc`
    /// prints it).
    pub send_fn: String,
    /// Binary COPY of this type embeds type OIDs that differ between
    /// databases (arrays and composites of user-defined types).
    pub oids_in_binary: bool,
    /// For a domain on PostgreSQL 10, the type under it (under every level
    /// of domain), as SQL text: arrays of domains came only in 11, so there
    /// an array of this column's values is passed as one of that type.
    pub domain_base_sql: Option<String>,
    /// An array or a domain: a delta table keeps such a key as text (see
    /// `capture/delta.rs`): `unnest` flattens an array of arrays, and an
    /// array of domains is not one type on every version (none on 10,
    /// their base type's in `array_agg`).
    pub kept_as_text_in_delta: bool,
    /// The size of every value of the type, where all have one
    /// (`pg_type.typlen` > 0: integers, uuid, timestamps); none for
    /// types of varying length.
    pub fixed_bytes: Option<u16>,
    /// The type, or the type under its domains, is PostgreSQL's own (in
    /// `pg_catalog`): the operators and casts `pg_catalog` has for it are
    /// the type's own, and no one but a superuser made them.
    pub built_in: bool,
    /// The schema of the `=` that the type's default btree operator class
    /// holds: for a base type of an extension or a user (`citext`), the
    /// schema of the operator its operator class names; for every other type
    /// (built-in, enum, array, range, composite, a domain over one of
    /// these), `pg_catalog`'s. ibex names it wherever it compares keys, so
    /// that no `=` someone else put on the search path is chosen.
    pub equality_schema: String,
    /// Where that `=` is not `pg_catalog`'s: the type its operator class
    /// takes (`ext.citext`), which both sides are cast to first, so that
    /// an `=` taking a domain over it exactly, made in the same schema,
    /// cannot be chosen instead.
    pub equality_operand: Option<String>,
}

impl LiveColumn {
    /// `value`, a value of this column, as text: see [`LiveColumn::text_of`].
    pub fn as_text(&self, value: &str) -> String {
        LiveColumn::text_of(value, self.built_in)
    }

    /// `value` as text: PostgreSQL's cast for a type of its own
    /// (`built_in`); for any other, the type's output function, through
    /// `format`, never a cast. A cast to text is a function its type's
    /// owner may write (`CREATE CAST`), and ibex's SQL runs as ibex's role
    /// (capture functions as their owner, for every writer).
    pub fn text_of(value: &str, built_in: bool) -> String {
        if built_in {
            format!("{value}::pg_catalog.text")
        } else {
            // num_nulls, not IS NULL: a composite whose fields are all
            // NULL IS NULL, yet its text is `(,)`.
            format!(
                "CASE WHEN pg_catalog.num_nulls({value}) OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format('%s', {value}) END"
            )
        }
    }

    /// `a = b` for two values of this column, with the type's own `=`
    /// named (see `equality_schema`).
    pub fn equals(&self, a: &str, b: &str) -> String {
        let schema = super::quote_ident(&self.equality_schema);
        match &self.equality_operand {
            Some(operand) => format!("({a})::{operand} OPERATOR({schema}.=) ({b})::{operand}"),
            None => format!("{a} OPERATOR({schema}.=) {b}"),
        }
    }

    /// The element type of an array of this column's values.
    pub fn array_element_sql(&self) -> &str {
        self.domain_base_sql.as_deref().unwrap_or(&self.type_sql)
    }
}

/// A query whose one value fingerprints the columns (names, types,
/// generated or not) of `tables`: a run compares it with the value read
/// when the tables were last checked, in the round trip that opens its
/// transaction, so that a column added or changed since is noticed at once
/// instead of being left out of the copies.
pub fn shape_query(tables: &[QualifiedName]) -> String {
    let names: Vec<String> =
        tables.iter().map(|t| format!("to_regclass({})", super::quote_literal(&t.quoted()))).collect();
    format!(
        "SELECT md5(coalesce(string_agg(a.attrelid::regclass::text || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                        || coalesce(to_jsonb(a) ->> 'attgenerated', ''), ',' ORDER BY a.attrelid::regclass::text, a.attnum), ''))
           FROM pg_attribute a
          WHERE a.attrelid = ANY (ARRAY[{}]::regclass[]) AND a.attnum > 0 AND NOT a.attisdropped",
        if names.is_empty() { "NULL".to_string() } else { names.join(", ") }
    )
}

/// How to add `column` of `table` elsewhere, as this db has it: its type,
/// collation (when not the type's), default or generation expression, and
/// NOT NULL. None if the column does not exist.
pub async fn column_definition(c: &impl GenericClient, table: &QualifiedName, column: &str) -> Result<Option<String>> {
    let row = c
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod)
                    || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                            THEN ' COLLATE ' || quote_ident(n.nspname) || '.' || quote_ident(co.collname) ELSE '' END
                    || CASE WHEN coalesce(to_jsonb(a) ->> 'attgenerated', '') = 's'
                            THEN ' GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
                            ELSE coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '') END
                    || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               LEFT JOIN pg_collation co ON co.oid = a.attcollation
               LEFT JOIN pg_namespace n ON n.oid = co.collnamespace
              WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.quoted(), &column],
        )
        .await
        .ctx(|| format!("reading the definition of {table}.{column}"))?;
    Ok(row.map(|r| r.get(0)))
}

/// The columns of `table` in attribute order, or None if it does not exist.
pub async fn columns(c: &impl GenericClient, table: &QualifiedName) -> Result<Option<Vec<LiveColumn>>> {
    let rows = c
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attnotnull,
                    coalesce(to_jsonb(a) ->> 'attgenerated', '') <> '',
                    coalesce((SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname)
                                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                               WHERE p.oid = t.typsend), '-'),
                    CASE WHEN t.typtype = 'c' THEN true
                         WHEN t.typcategory = 'A' THEN t.typelem >= 16384
                              OR EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = t.typelem AND e.typtype = 'c')
                         ELSE false END,
                    CASE WHEN t.typtype = 'd' AND current_setting('server_version_num')::int < 110000 THEN
                      format_type(b.oid, NULL) END,
                    t.typtype = 'd' OR t.typcategory = 'A', t.typlen,
                    b.typnamespace = 'pg_catalog'::regnamespace,
                    coalesce(eq.schema, 'pg_catalog'), eq.operand
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
               -- The type under every level of domain (the type itself if none).
               CROSS JOIN LATERAL (
                   WITH RECURSIVE under (oid, base) AS (
                       SELECT t.oid, t.typbasetype
                       UNION ALL
                       SELECT p.oid, p.typbasetype FROM under JOIN pg_type p ON p.oid = under.base)
                   SELECT p.oid, p.typnamespace FROM under JOIN pg_type p ON p.oid = under.oid WHERE under.base = 0) b
               -- The `=` of the default btree operator class of that type,
               -- where it is not pg_catalog's: its schema and input type.
               LEFT JOIN LATERAL (
                   SELECT n.nspname::text AS schema, format_type(c.opcintype, NULL) AS operand
                     FROM pg_opclass c
                     JOIN pg_am am ON am.oid = c.opcmethod AND am.amname = 'btree'
                     JOIN pg_amop o ON o.amopfamily = c.opcfamily AND o.amoplefttype = c.opcintype
                                    AND o.amoprighttype = c.opcintype AND o.amopstrategy = 3
                     JOIN pg_operator op ON op.oid = o.amopopr
                     JOIN pg_namespace n ON n.oid = op.oprnamespace
                    WHERE c.opcintype = b.oid AND c.opcdefault AND n.nspname <> 'pg_catalog'
                    LIMIT 1) eq ON true
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table.quoted()],
        )
        .await
        .ctx(|| format!("reading the columns of {table}"))?;
    if rows.is_empty() {
        let exists = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
            .await
            .ctx(|| format!("looking up {table}"))?;
        if !exists.get::<_, bool>(0) {
            return Ok(None);
        }
    }
    Ok(Some(
        rows.iter()
            .map(|r| LiveColumn {
                name: r.get(0),
                type_sql: r.get(1),
                type_oid: r.get(2),
                not_null: r.get(3),
                generated: r.get(4),
                send_fn: r.get(5),
                oids_in_binary: r.get(6),
                domain_base_sql: r.get(7),
                kept_as_text_in_delta: r.get(8),
                fixed_bytes: u16::try_from(r.get::<_, i16>(9)).ok().filter(|bytes| *bytes > 0),
                built_in: r.get(10),
                equality_schema: r.get(11),
                equality_operand: r.get(12),
            })
            .collect(),
    ))
}

/// Whether the columns form the primary key or a valid unique index with
/// only NOT NULL columns on this database.
pub async fn has_key(c: &impl GenericClient, table: &QualifiedName, key: &[String]) -> Result<bool> {
    let oid = c
        .query_one("SELECT to_regclass($1)::oid", &[&table.quoted()])
        .await
        .ctx(|| format!("looking up {table}"))?
        .get::<_, Option<u32>>(0);
    match oid {
        Some(oid) => is_unique_not_null_key(c, oid, key).await,
        None => Ok(false),
    }
}

/// Foreign keys among `tables`: (referencing, referenced) pairs.
pub async fn foreign_keys(
    c: &impl GenericClient,
    tables: &[QualifiedName],
) -> Result<Vec<(QualifiedName, QualifiedName)>> {
    let names: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    let rows = c
        .query(
            "SELECT cn.nspname::text, cl.relname::text, fn.nspname::text, fl.relname::text
               FROM pg_constraint k
               JOIN pg_class cl ON cl.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace
               JOIN pg_class fl ON fl.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = fl.relnamespace
              WHERE k.contype = 'f'
                AND k.conrelid = ANY (SELECT to_regclass(x) FROM unnest($1::text[]) x)
                AND k.confrelid = ANY (SELECT to_regclass(x) FROM unnest($1::text[]) x)",
            &[&names],
        )
        .await
        .ctx(|| "reading foreign keys".into())?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            )
        })
        .collect())
}
