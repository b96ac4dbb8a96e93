//! Look-alikes in schema `public` of every polymorphic function,
//! aggregate and operator PostgreSQL keeps in `pg_catalog`, each with
//! exact argument types and each raising "hijacked". Name resolution
//! prefers an exact match to a polymorphic one whatever the search_path
//! order, so SQL that calls such a built-in without `pg_catalog.` runs the
//! look-alike instead: a test arms them on a db and asserts ibex never
//! trips one. Where pg_catalog has the same exact signature, it wins (it
//! comes first on every path), so the look-alikes leave monomorphic calls,
//! such as a harness's `count(*)` or `string_agg(text, text)`, alone.

/// Polymorphic pseudo-types taken as one value of the concrete type.
const ELEMENT: &str = "'anyelement', 'anynonarray', 'anycompatible', 'anycompatiblenonarray', '\"any\"'";
/// Polymorphic pseudo-types taken as an array of it.
const ARRAY: &str = "'anyarray', 'anycompatiblearray'";

/// Catalog types that polymorphic array functions take as arrays
/// (`unnest(indkey)`), with their element types.
const VECTORS: [(&str, &str); 2] = [("int2", "int2vector"), ("oid", "oidvector")];

/// A DO block that makes the look-alikes for each of `types` (SQL type
/// names, which must exist) and for the catalog's vector types: for every
/// polymorphic signature of one to three arguments, the arguments of the
/// element kind become the type, those of the array kind its array type
/// (`anyenum` only for an enum; range signatures are left out).
/// Signatures that cannot be made (a clash of two substitutions) are
/// skipped; the count made is raised as a NOTICE.
pub fn arm(types: &[&str]) -> String {
    let pairs =
        types.iter().map(|t| (t.to_string(), format!("{t}[]"))).chain(VECTORS.map(|(e, a)| (e.into(), a.into())));
    let list: Vec<String> =
        pairs.map(|(e, a)| format!("ROW('{e}'::regtype, '{a}'::regtype)::public.lookalike_kind")).collect();
    let list = list.join(", ");
    format!(
        r#"CREATE TYPE public.lookalike_kind AS (element regtype, array_of regtype);
-- The argument types of a polymorphic signature made concrete, or NULL
-- where one cannot be (a range, or another pseudo-type).
CREATE FUNCTION public.lookalike_args(argtypes oid[], t regtype, arr regtype, is_enum bool) RETURNS text[]
LANGUAGE plpgsql AS $args$
DECLARE
    args text[] := '{{}}';
    a oid;
BEGIN
    FOREACH a IN ARRAY argtypes LOOP
        CASE
            WHEN a::regtype::text IN ({ELEMENT}) THEN args := args OPERATOR(pg_catalog.||) t::text;
            WHEN a::regtype::text = 'anyenum' AND is_enum THEN args := args OPERATOR(pg_catalog.||) t::text;
            WHEN a::regtype::text IN ({ARRAY}) THEN args := args OPERATOR(pg_catalog.||) arr::text;
            WHEN (SELECT y.typtype FROM pg_type y WHERE y.oid = a) = 'p' THEN RETURN NULL;
            ELSE args := args OPERATOR(pg_catalog.||) pg_catalog.format_type(a, NULL);
        END CASE;
    END LOOP;
    RETURN args;
END
$args$;
DO $arm$
DECLARE
    pair public.lookalike_kind;
    t regtype;
    arr regtype;
    is_enum bool;
    p record;
    args text[];
    made int := 0;
    trap text := 'LANGUAGE plpgsql AS $f$ BEGIN RAISE EXCEPTION %L; END $f$';
    kind text;
BEGIN
    FOREACH pair IN ARRAY ARRAY[{list}] LOOP
        t := pair.element;
        arr := pair.array_of;
        SELECT typtype = 'e' INTO is_enum FROM pg_type WHERE oid = t;
        FOREACH kind IN ARRAY ARRAY[t::text, arr::text] LOOP
            BEGIN
                EXECUTE pg_catalog.format('CREATE FUNCTION public.lookalike_step(int, %s) RETURNS int ' || trap,
                               kind, 'hijacked: an aggregate over ' || kind);
            EXCEPTION WHEN duplicate_function THEN NULL;
            END;
        END LOOP;
        FOR p IN
            SELECT pr.proname AS name, pr.prokind AS kind, pr.proargtypes::oid[] AS argtypes,
                   coalesce(ag.aggkind, 'n') AS aggkind
              FROM pg_proc pr LEFT JOIN pg_aggregate ag ON ag.aggfnoid = pr.oid
             WHERE pr.pronamespace = 'pg_catalog'::regnamespace AND pr.prokind IN ('f', 'a')
               AND pr.pronargs BETWEEN 1 AND 3
               AND EXISTS (SELECT FROM pg_catalog.unnest(pr.proargtypes::oid[]) x(o) JOIN pg_type y ON y.oid = x.o
                            WHERE y.typtype = 'p' AND y.typname LIKE 'any%')
        LOOP
            args := public.lookalike_args(p.argtypes, t, arr, is_enum);
            CONTINUE WHEN args IS NULL OR (p.kind = 'a' AND (p.aggkind <> 'n' OR pg_catalog.cardinality(args) <> 1));
            BEGIN
                IF p.kind = 'a' THEN
                    EXECUTE pg_catalog.format('CREATE AGGREGATE public.%I(%s) (SFUNC = public.lookalike_step, STYPE = int)',
                                   p.name, args[1]);
                ELSE
                    EXECUTE pg_catalog.format('CREATE FUNCTION public.%I(%s) RETURNS int ' || trap,
                                   p.name, pg_catalog.array_to_string(args, ', '),
                                   pg_catalog.format('hijacked: %s(%s)', p.name, pg_catalog.array_to_string(args, ', ')));
                END IF;
                made := made + 1;
            EXCEPTION WHEN duplicate_function OR invalid_function_definition OR wrong_object_type
                           OR invalid_object_definition THEN NULL;
            END;
        END LOOP;
        FOR p IN
            SELECT o.oprname AS name, o.oprleft AS l, o.oprright AS r
              FROM pg_operator o JOIN pg_type lt ON lt.oid = o.oprleft JOIN pg_type rt ON rt.oid = o.oprright
             WHERE o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprkind = 'b'
               AND (lt.typtype = 'p' OR rt.typtype = 'p')
        LOOP
            args := public.lookalike_args(ARRAY[p.l, p.r], t, arr, is_enum);
            CONTINUE WHEN args IS NULL;
            BEGIN
                EXECUTE pg_catalog.format('CREATE FUNCTION public.lookalike_op(%s, %s) RETURNS bool ' || trap,
                               args[1], args[2], pg_catalog.format('hijacked: an operator on %s, %s', args[1], args[2]));
            EXCEPTION WHEN duplicate_function THEN NULL;
            END;
            BEGIN
                EXECUTE pg_catalog.format('CREATE OPERATOR public.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = public.lookalike_op)',
                               p.name, args[1], args[2]);
                made := made + 1;
            EXCEPTION WHEN duplicate_function OR duplicate_object OR invalid_function_definition
                           OR syntax_error OR invalid_object_definition THEN NULL;
            END;
        END LOOP;
    END LOOP;
    RAISE NOTICE 'look-alikes made: %', made;
END
$arm$"#
    )
}
