//! Database least privilege for plugins. Each plugin gets, on each db its
//! manifest grants, a role of its own (NOLOGIN, no superuser, no
//! inherited memberships) holding only what the manifest names: SELECT on
//! its `tables`, and SELECT, INSERT, UPDATE, DELETE on its `write_tables`.
//!
//! A plugin's SQL never runs as ibex's own user. It runs inside one of two
//! SECURITY DEFINER functions owned by that role (`ibex_plugin.q_*` for
//! `query`, `ibex_plugin.x_*` for `execute`), which PostgreSQL makes a
//! sandbox of its own: inside a security-definer function `SET ROLE`,
//! `RESET ROLE`, `SET SESSION AUTHORIZATION` and `set_config('role', ...)`
//! are refused, so the plugin cannot climb back to ibex's user. Each call
//! first runs `EXPLAIN` of the statement with the same parameters, so only
//! plannable statements (queries and DML) ever execute: no COPY (to a file
//! or a program), no DDL, no SET, no transaction control. The host parses
//! each statement first (extended protocol), so a string of several
//! statements never reaches the function; and only ibex's user may call the
//! functions (not the role itself), so a plugin cannot hand one a string
//! of its own from inside its SQL. Unqualified
//! names resolve in `public` (then `pg_catalog`; `pg_temp` last, so no
//! temporary object can stand in for a table).

use std::fmt::Write;

use tokio_postgres::GenericClient;

use crate::error::{Error, PgContext, Result};
use crate::pg::{QualifiedName, quote_ident, quote_literal};

/// Parameters a plugin statement may take (`$1` .. `$16`).
pub const MAX_PARAMS: usize = 16;

/// The search_path of the plugins' definer functions, under which a
/// plugin's unqualified names resolve (`pg_catalog` implicitly first).
pub const SEARCH_PATH: &str = "public, pg_temp";

/// The schema holding the plugins' definer functions (owned by ibex's user).
pub const SCHEMA: &str = "ibex_plugin";

/// The role of plugin `plugin` in the catalog `catalog_id`: at most 63
/// bytes, unique per catalog and plugin.
pub fn role_name(catalog_id: &str, plugin: &str) -> String {
    let readable = crate::names::readable(plugin, 32);
    let hash = crate::names::fnv1a32(catalog_id.bytes().chain([0]).chain(plugin.bytes()));
    format!("ibex_plugin_{readable}_{hash:08x}")
}

/// `ibex_plugin."q_ROLE"` / `ibex_plugin."x_ROLE"`.
pub fn query_function(role: &str) -> String {
    format!("{SCHEMA}.{}", quote_ident(&format!("q_{role}")))
}

pub fn execute_function(role: &str) -> String {
    format!("{SCHEMA}.{}", quote_ident(&format!("x_{role}")))
}

/// What a plugin may touch on one db.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbAccess {
    /// May read with `query`.
    pub read: bool,
    /// May write with `execute`.
    pub write: bool,
    pub read_tables: Vec<QualifiedName>,
    pub write_tables: Vec<QualifiedName>,
}

fn params_decl() -> String {
    (1..=MAX_PARAMS).map(|i| format!(", p{i} text DEFAULT NULL")).collect()
}

fn params_use() -> String {
    (1..=MAX_PARAMS).map(|i| format!("p{i}")).collect::<Vec<_>>().join(", ")
}

fn params_sig() -> String {
    std::iter::once("text").chain(std::iter::repeat_n("text", MAX_PARAMS)).collect::<Vec<_>>().join(", ")
}

/// Makes the role, its grants and its two functions on one db match
/// `access`, in the caller's transaction. Idempotent: everything the role
/// held before is dropped first (`DROP OWNED`), then granted anew.
pub async fn install(c: &impl GenericClient, role: &str, access: &DbAccess) -> Result<()> {
    let r = quote_ident(role);
    let exists: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&role])
        .await
        .ctx(|| format!("looking up role {role}"))?
        .get(0);
    let mut sql = String::new();
    if exists {
        let _ = writeln!(sql, "DROP OWNED BY {r};");
    } else {
        let _ = writeln!(sql, "CREATE ROLE {r};");
    }
    // Whatever anyone changed: no login, no superuser, nothing inherited.
    let _ = writeln!(
        sql,
        "ALTER ROLE {r} NOLOGIN NOSUPERUSER NOINHERIT NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 0;"
    );
    let _ = writeln!(sql, "CREATE SCHEMA IF NOT EXISTS {SCHEMA};");
    let _ = writeln!(sql, "REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC;");
    let _ = writeln!(sql, "GRANT USAGE ON SCHEMA {SCHEMA} TO {r};");
    let mut schemas: Vec<&str> = Vec::new();
    for t in access.read_tables.iter().filter(|_| access.read) {
        schemas.push(&t.schema);
        let _ = writeln!(sql, "GRANT SELECT ON TABLE {} TO {r};", t.quoted());
    }
    for t in access.write_tables.iter().filter(|_| access.write) {
        schemas.push(&t.schema);
        let _ = writeln!(sql, "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {r};", t.quoted());
    }
    schemas.sort_unstable();
    schemas.dedup();
    for schema in schemas {
        let _ = writeln!(sql, "GRANT USAGE ON SCHEMA {} TO {r};", quote_ident(schema));
    }
    let decl = params_decl();
    let uses = params_use();
    let sig = params_sig();
    if access.read {
        let f = query_function(role);
        let _ = writeln!(
            sql,
            "CREATE OR REPLACE FUNCTION {f}(statement text{decl}) RETURNS SETOF text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {SEARCH_PATH} AS $ibex$
BEGIN
    -- Only what EXPLAIN accepts (queries, DML) ever runs.
    EXECUTE 'EXPLAIN ' || statement USING {uses};
    RETURN QUERY EXECUTE statement USING {uses};
END
$ibex$;
ALTER FUNCTION {f}({sig}) OWNER TO {r};
REVOKE ALL ON FUNCTION {f}({sig}) FROM PUBLIC, {r};
GRANT EXECUTE ON FUNCTION {f}({sig}) TO CURRENT_USER;"
        );
    }
    if access.write {
        let f = execute_function(role);
        let _ = writeln!(
            sql,
            "CREATE OR REPLACE FUNCTION {f}(statement text{decl}) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {SEARCH_PATH} AS $ibex$
DECLARE
    affected bigint;
BEGIN
    EXECUTE 'EXPLAIN ' || statement USING {uses};
    EXECUTE statement USING {uses};
    GET DIAGNOSTICS affected = ROW_COUNT;
    RETURN affected;
END
$ibex$;
ALTER FUNCTION {f}({sig}) OWNER TO {r};
REVOKE ALL ON FUNCTION {f}({sig}) FROM PUBLIC, {r};
GRANT EXECUTE ON FUNCTION {f}({sig}) TO CURRENT_USER;"
        );
    }
    c.batch_execute(&sql).await.map_err(|e| {
        let hint = if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            ": ibex's user needs CREATEROLE (or superuser) to give each plugin a role of its own"
        } else {
            ""
        };
        Error::Postgres { context: format!("setting up the database role {role} of a plugin{hint}"), source: e }
    })
}

/// Drops the role's grants and functions on one db, and the role itself
/// when no other db still needs it (roles are per cluster).
pub async fn remove(c: &impl GenericClient, role: &str) -> Result<()> {
    let exists: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&role])
        .await
        .ctx(|| format!("looking up role {role}"))?
        .get(0);
    if !exists {
        return Ok(());
    }
    let r = quote_ident(role);
    c.batch_execute(&format!("DROP OWNED BY {r}")).await.ctx(|| format!("dropping what role {role} holds"))?;
    if let Err(err) = c.batch_execute(&format!("DROP ROLE {r}")).await {
        // Still granted in another database of this cluster: that db's
        // cleanup drops it.
        if err.code() != Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) {
            return Err(Error::Postgres { context: format!("dropping role {role}"), source: err });
        }
    }
    Ok(())
}

/// What `validate` finds wrong with a plugin's role on one db (empty: fine).
pub async fn check(c: &impl GenericClient, role: &str, access: &DbAccess) -> Result<Vec<String>> {
    let row = c
        .query_opt(
            "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls OR rolcanlogin OR rolinherit,
                    EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid)
               FROM pg_roles r WHERE rolname = $1",
            &[&role],
        )
        .await
        .ctx(|| format!("checking role {role}"))?;
    let Some(row) = row else { return Ok(vec![format!("role {role} is missing")]) };
    let mut problems = Vec::new();
    if row.get::<_, bool>(0) {
        problems.push(format!("role {role} has an attribute it must not have (login, superuser, createrole, ...)"));
    }
    if row.get::<_, bool>(1) {
        problems.push(format!("role {role} was made a member of another role"));
    }
    let mut wanted = Vec::new();
    if access.read {
        wanted.push(query_function(role));
    }
    if access.write {
        wanted.push(execute_function(role));
    }
    for f in wanted {
        let ok: bool = c
            .query_one(
                &format!(
                    "SELECT coalesce((SELECT p.prosecdef AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = $1)
                                        FROM pg_proc p WHERE p.oid = to_regprocedure({})), false)",
                    quote_literal(&format!("{f}({})", params_sig()))
                ),
                &[&role],
            )
            .await
            .ctx(|| format!("checking function {f}"))?
            .get(0);
        if !ok {
            problems.push(format!("function {f} is missing or altered"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_fit_and_differ_per_catalog() {
        let a = role_name("0123456789abcdef", "merge");
        assert!(a.starts_with("ibex_plugin_merge_"));
        assert!(a.len() <= 63);
        assert_ne!(a, role_name("fedcba9876543210", "merge"));
        assert!(role_name("x", &"p".repeat(300)).len() <= 63);
        assert_eq!(role_name("x", "Odd Name\""), role_name("x", "Odd Name\""));
    }
}
