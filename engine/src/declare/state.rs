//! The catalog's configuration as one value, read from the catalog or
//! resolved from a file (every value checked, every reference followed), so
//! that the plan compares like with like.
//!
//! Long on purpose: one resolver per kind of object (dbs, plugins, tables,
//! herds, dbgroups, syncs), each short, kept beside the value they fill.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tokio_postgres::GenericClient;

use super::model::{Config, PortSpec, Source};
use crate::capture::CaptureMode;
use crate::catalog::manifest::{Manifest, PluginKind, table_name};
use crate::catalog::{self, DbGroup, DbGroupMember, RelKind, SyncParams, SyncRecord, check_name};
use crate::error::{Error, Result};
use crate::pg::ConnInfo;
use crate::target::{Dialect, TargetSpec};

#[derive(Debug, Clone, PartialEq)]
pub struct DbState {
    pub conn: ConnInfo,
    pub status: String,
    /// The variable the password came from (files only).
    pub password_env: Option<String>,
    /// None for PostgreSQL; else the foreign target.
    pub target: Option<TargetSpec>,
    pub capture: CaptureMode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PluginState {
    pub sha256: String,
    pub manifest: Manifest,
    /// The component to read when the catalog does not hold it (files only).
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationState {
    pub kind: RelKind,
    /// The db it is looked up on when added.
    pub db: Option<String>,
    /// Key columns; None in a file: the primary key found on the db.
    pub key: Option<Vec<String>>,
    /// "primary key" or "unique index" (catalog only).
    pub key_source: Option<String>,
    pub capture_old: bool,
    pub makedelta: bool,
}

/// A transform or hook attached to a sync.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UseState {
    pub kind: String,
    pub plugin: String,
    pub table: Option<String>,
    pub target: Option<String>,
    pub when: Vec<String>,
}

impl std::fmt::Display for UseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.plugin)?;
        if let Some(t) = &self.table {
            write!(f, " on {t}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " to {t}")?;
        }
        if !self.when.is_empty() {
            write!(f, " at {}", self.when.join(","))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncState {
    pub record: SyncRecord,
    /// Sorted.
    pub uses: Vec<UseState>,
}

#[derive(Debug, Clone, Default)]
pub struct State {
    /// Settings set explicitly (normal form).
    pub settings: BTreeMap<String, String>,
    pub dbs: BTreeMap<String, DbState>,
    pub plugins: BTreeMap<String, PluginState>,
    /// Tables and sequences by `schema.name`.
    pub relations: BTreeMap<String, RelationState>,
    pub herds: BTreeMap<String, BTreeSet<String>>,
    pub dbgroups: BTreeMap<String, Vec<DbGroupMember>>,
    pub syncs: BTreeMap<String, SyncState>,
}

/// `schema.name` as the catalog lists it; a bare name is in schema public.
pub fn relation_key(typed: &str) -> String {
    let q = table_name(typed);
    format!("{}.{}", q.schema, q.name)
}

impl State {
    /// Everything the catalog holds that a file describes.
    pub async fn read(c: &impl GenericClient) -> Result<State> {
        let mut state = State::default();
        for s in catalog::setting::all(c).await? {
            if !s.is_default {
                state.settings.insert(s.key, s.value);
            }
        }
        for db in catalog::dbs::list(c).await? {
            state.dbs.insert(
                db.name,
                DbState {
                    conn: db.conn,
                    status: db.status,
                    password_env: None,
                    target: db.target,
                    capture: db.capture,
                },
            );
        }
        for p in catalog::plugin::list(c).await? {
            state.plugins.insert(p.name, PluginState { sha256: p.sha256, manifest: p.manifest, path: None });
        }
        for r in catalog::relation::list(c, None).await? {
            state.relations.insert(
                format!("{}.{}", r.name.schema, r.name.name),
                RelationState {
                    kind: r.kind,
                    db: r.added_from,
                    key: (r.kind == RelKind::Table).then_some(r.key_columns),
                    key_source: r.key_source,
                    capture_old: r.capture_old,
                    makedelta: r.makedelta,
                },
            );
        }
        for h in catalog::herd::list(c).await? {
            state.herds.insert(h.name, h.members.into_iter().collect());
        }
        for g in catalog::dbgroup::list(c).await? {
            state.dbgroups.insert(g.name, g.members);
        }
        for record in catalog::sync::list(c).await? {
            let mut uses: Vec<UseState> = catalog::plugin::uses_of_sync(c, &record.name)
                .await?
                .into_iter()
                .map(|u| UseState {
                    kind: u.kind,
                    plugin: u.plugin,
                    table: u.table.map(|t| format!("{}.{}", t.schema, t.name)),
                    target: u.target_db,
                    when: u.hook_points,
                })
                .collect();
            uses.sort();
            state.syncs.insert(record.name.clone(), SyncState { record, uses });
        }
        Ok(state)
    }

    /// Checks a file and turns it into a state. `current` supplies what a
    /// file leaves to the catalog: stored passwords, stored components.
    pub fn resolve(config: &Config, src: &Source, current: &State) -> Result<State> {
        let mut state = State::default();
        for (key, value) in &config.settings {
            let normal = catalog::setting::normalize(key, &value.get_ref().to_string())
                .map_err(|e| src.error(value.span(), format!("[settings] {key}: {e}")))?;
            state.settings.insert(key.clone(), normal);
        }
        for (name, spec) in &config.dbs {
            let at = spec.span();
            let fail = |e: Error| src.error(at.clone(), format!("db {name}: {e}"));
            check_name("db", name).map_err(fail)?;
            let state_db = resolve_db(name, spec, current.dbs.get(name), src)?;
            if !matches!(state_db.status.as_str(), "active" | "inactive") {
                return Err(fail(Error::usage(format!("bad status {:?}: use active or inactive", state_db.status))));
            }
            state.dbs.insert(name.clone(), state_db);
        }
        for (name, spec) in &config.plugins {
            let fail = |e: Error| src.error(spec.span(), format!("plugin {name}: {e}"));
            check_name("plugin", name).map_err(fail)?;
            let p = spec.get_ref();
            let manifest = resolve_manifest(p).map_err(fail)?;
            for db in manifest.grants.iter().chain(&manifest.write_grants) {
                if !config.dbs.contains_key(db) {
                    return Err(fail(Error::usage(format!(
                        "grants name db {db:?}, which is not a [db] of the file: add [db.{db}] or fix the name"
                    ))));
                }
            }
            let sha256 = p.sha256.trim().to_ascii_lowercase();
            let stored = current.plugins.get(name).is_some_and(|c| c.sha256 == sha256);
            if !stored && p.path.is_none() {
                return Err(fail(Error::usage(format!(
                    "the catalog does not hold a component with sha256 {sha256}: add path = \"FILE.wasm\""
                ))));
            }
            let path = p.path.as_deref().map(|p| src.relative(p));
            state.plugins.insert(name.clone(), PluginState { sha256, manifest, path });
        }
        for (typed, spec) in &config.tables {
            let t = spec.get_ref();
            let rel = RelationState {
                kind: RelKind::Table,
                db: t.db.as_ref().map(|d| d.get_ref().clone()),
                key: t.pkey.clone(),
                key_source: None,
                capture_old: t.capture_old,
                makedelta: t.makedelta,
            };
            insert_relation(&mut state, config, src, current, typed, spec.span(), t.db.as_ref(), rel)?;
        }
        for (typed, spec) in &config.sequences {
            let s = spec.get_ref();
            let rel = RelationState {
                kind: RelKind::Sequence,
                db: s.db.as_ref().map(|d| d.get_ref().clone()),
                key: None,
                key_source: None,
                capture_old: false,
                makedelta: false,
            };
            insert_relation(&mut state, config, src, current, typed, spec.span(), s.db.as_ref(), rel)?;
        }
        for (name, spec) in &config.herds {
            check_name("herd", name).map_err(|e| src.error(spec.span(), format!("herd {name}: {e}")))?;
            let mut members = BTreeSet::new();
            for m in &spec.get_ref().members {
                let key = relation_key(m.get_ref());
                if !state.relations.contains_key(&key) {
                    return Err(src.error(
                        m.span(),
                        format!(
                            "herd {name}: member {key:?} is not a [table] or [sequence] of the file: add [table.\"{key}\"] or remove it from members"
                        ),
                    ));
                }
                if !members.insert(key.clone()) {
                    return Err(src.error(m.span(), format!("herd {name}: {key} is listed twice")));
                }
            }
            state.herds.insert(name.clone(), members);
        }
        for (name, spec) in &config.dbgroups {
            check_name("dbgroup", name).map_err(|e| src.error(spec.span(), format!("dbgroup {name}: {e}")))?;
            let mut members: Vec<DbGroupMember> = Vec::new();
            for (i, m) in spec.get_ref().members.iter().enumerate() {
                let member = DbGroupMember::parse(m.get_ref(), i)
                    .map_err(|e| src.error(m.span(), format!("dbgroup {name}: {e}")))?;
                if !config.dbs.contains_key(&member.db) {
                    return Err(src.error(
                        m.span(),
                        format!(
                            "dbgroup {name}: db {:?} is not a [db] of the file: add [db.{}] or fix the name",
                            member.db, member.db
                        ),
                    ));
                }
                if members.iter().any(|o| o.db == member.db) {
                    return Err(src.error(m.span(), format!("dbgroup {name}: db {:?} is listed twice", member.db)));
                }
                members.push(member);
            }
            if members.is_empty() {
                return Err(src.error(
                    spec.span(),
                    format!("dbgroup {name}: members is empty: e.g. [\"t1:source\", \"t2:target\"]"),
                ));
            }
            state.dbgroups.insert(name.clone(), members);
        }
        for (name, spec) in &config.syncs {
            let mut sync = resolve_sync(name, spec, config, src, &state)?;
            // onetimecopy asks for one full copy, and the run that makes it sets
            // it back to 0: it counts when a sync is added, never as a change.
            if let Some(old) = current.syncs.get(name) {
                sync.record.params.onetimecopy = old.record.params.onetimecopy;
            }
            state.syncs.insert(name.clone(), sync);
        }
        Ok(state)
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_relation(
    state: &mut State,
    config: &Config,
    src: &Source,
    current: &State,
    typed: &str,
    at: std::ops::Range<usize>,
    db: Option<&toml::Spanned<String>>,
    rel: RelationState,
) -> Result<()> {
    let key = relation_key(typed);
    let what = rel.kind.as_str();
    if let Some(db) = db
        && !config.dbs.contains_key(db.get_ref())
    {
        return Err(src.error(
            db.span(),
            format!(
                "{what} {key}: db {:?} is not a [db] of the file: add [db.{}] or fix the name",
                db.get_ref(),
                db.get_ref()
            ),
        ));
    }
    if rel.db.is_none() && !current.relations.contains_key(&key) {
        return Err(src.error(at, format!("{what} {key}: db = \"DB\" is needed to add it (the db it is looked up on)")));
    }
    if rel.key.as_ref().is_some_and(|cols| cols.is_empty() || cols.iter().any(|c| c.trim().is_empty())) {
        return Err(src.error(at, format!("{what} {key}: bad pkey: write pkey = [\"col\"] or [\"col1\", \"col2\"]")));
    }
    if state.relations.insert(key.clone(), rel).is_some() {
        return Err(src.error(at, format!("{key} is both a [table] and a [sequence]: keep one")));
    }
    Ok(())
}

fn resolve_db(
    name: &str,
    spanned: &toml::Spanned<super::model::DbSpec>,
    current: Option<&DbState>,
    src: &Source,
) -> Result<DbState> {
    let spec = spanned.get_ref();
    let at = |e: Error| match e {
        Error::Usage(m) if m.starts_with(&src.path.display().to_string()) => Error::Usage(m),
        other => src.error(spanned.span(), format!("db {name}: {other}")),
    };
    if let Some(target) = foreign_target(name, spanned, current, src).map_err(at)? {
        // As `ibex add db type=...` keeps it: the connection only names it.
        let conn = ConnInfo { dbname: target.describe(), ..ConnInfo::default() };
        let status = spec.status.clone().unwrap_or_else(|| "active".into());
        let password_env = spec.password_env.as_ref().map(|v| v.get_ref().clone());
        if spec.capture.is_some() {
            return Err(src.error(
                spanned.span(),
                format!("db {name}: capture belongs to a PostgreSQL db (a foreign db is only ever a target)"),
            ));
        }
        return Ok(DbState { conn, status, password_env, target: Some(target), capture: CaptureMode::Trigger });
    }
    if spec.path.is_some() || spec.dir.is_some() || spec.dialect.is_some() {
        return Err(src.error(
            spanned.span(),
            format!("db {name}: path, dir and dialect belong to type = \"sqlite\" or \"flatfile\""),
        ));
    }
    let mut conn = ConnInfo { dbname: spec.dbname.clone().unwrap_or_default(), ..ConnInfo::default() };
    let texts = [
        ("host", spec.host.clone()),
        (
            "port",
            spec.port.as_ref().map(|p| match p {
                PortSpec::One(n) => n.to_string(),
                PortSpec::Many(s) => s.clone(),
            }),
        ),
        ("user", spec.user.clone()),
        ("sslmode", spec.sslmode.clone()),
        ("sslrootcert", spec.sslrootcert.clone()),
        ("sslcert", spec.sslcert.clone()),
        ("sslkey", spec.sslkey.clone()),
        ("sslcrl", spec.sslcrl.clone()),
        ("channel_binding", spec.channel_binding.clone()),
        ("service", spec.service.clone()),
        ("passfile", spec.passfile.clone()),
        ("application_name", spec.application_name.clone()),
        ("options", spec.options.clone()),
        ("connect_timeout", spec.connect_timeout.map(|t| t.to_string())),
        ("target_session_attrs", spec.target_session_attrs.clone()),
    ];
    for (key, value) in texts {
        if let Some(value) = value {
            conn.set(key, &value).map_err(|e| src.error(spanned.span(), format!("db {name}: {e}")))?;
        }
    }
    if conn.dbname.is_empty() && conn.service.is_none() {
        return Err(src.error(spanned.span(), format!("db {name}: dbname is required (or service = \"NAME\")")));
    }
    let password_env = spec.password_env.as_ref().map(|v| v.get_ref().clone());
    conn.password = match &spec.password_env {
        Some(var) => Some(env_password(name, var, src)?),
        // Left out: the stored password (if any) stays.
        None => current.and_then(|c| c.conn.password.clone()),
    };
    let capture = match &spec.capture {
        Some(text) => CaptureMode::parse(text).map_err(at)?,
        None => CaptureMode::Trigger,
    };
    Ok(DbState {
        conn,
        status: spec.status.clone().unwrap_or_else(|| "active".into()),
        password_env,
        target: None,
        capture,
    })
}

/// `type = "sqlite"`, `"flatfile"` or `"mariadb"`: a target that is not
/// PostgreSQL, with the keys `ibex add db type=...` takes and nothing else.
fn foreign_target(
    name: &str,
    spanned: &toml::Spanned<super::model::DbSpec>,
    current: Option<&DbState>,
    src: &Source,
) -> Result<Option<TargetSpec>> {
    let spec = spanned.get_ref();
    let absolute = |key: &str, value: &Option<String>| -> Result<std::path::PathBuf> {
        let value = value.clone().ok_or_else(|| Error::usage(format!("{key} is required for this type")))?;
        let path = std::path::PathBuf::from(&value);
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(Error::usage(format!(
                "{key} = {value:?} is relative: give an absolute path, as the daemon may run elsewhere"
            )))
        }
    };
    let required = |key: &str, value: &Option<String>| {
        value.clone().ok_or_else(|| Error::usage(format!("{key} is required for type = \"mariadb\"")))
    };
    let target = match spec.db_type.as_deref() {
        None | Some("postgres" | "postgresql") => return Ok(None),
        Some("sqlite") => TargetSpec::Sqlite { path: absolute("path", &spec.path)? },
        Some("flatfile") => TargetSpec::Flatfile {
            dir: absolute("dir", &spec.dir)?,
            dialect: Dialect::parse(spec.dialect.as_deref().unwrap_or("postgres"))?,
        },
        Some("mariadb" | "mysql") => {
            let port = match &spec.port {
                None => None,
                Some(PortSpec::One(p)) => Some(*p),
                Some(PortSpec::Many(p)) => {
                    return Err(Error::usage(format!("bad port {p:?}: a mariadb db takes one port, e.g. port = 3306")));
                }
            };
            let socket = match &spec.socket {
                Some(_) => Some(absolute("socket", &spec.socket)?),
                None => None,
            };
            // As for PostgreSQL dbs: from the environment, else the stored one.
            let stored = match current.and_then(|c| c.target.as_ref()) {
                Some(TargetSpec::Mariadb(old)) => old.password.clone(),
                _ => None,
            };
            let password = match &spec.password_env {
                Some(var) => Some(env_password(name, var, src)?),
                None => stored,
            };
            TargetSpec::Mariadb(crate::target::mariadb::MariadbConn {
                host: spec.host.clone(),
                port,
                socket,
                user: required("user", &spec.user)?,
                password,
                dbname: required("dbname", &spec.dbname)?,
            })
        }
        Some(other) => {
            return Err(Error::usage(format!(
                "unknown type {other:?}: use postgres (the default), sqlite (with path), flatfile (with dir and dialect) or mariadb"
            )));
        }
    };
    let libpq_only = spec.sslmode.is_some()
        || spec.sslrootcert.is_some()
        || spec.sslcert.is_some()
        || spec.sslkey.is_some()
        || spec.sslcrl.is_some()
        || spec.channel_binding.is_some()
        || spec.service.is_some()
        || spec.passfile.is_some()
        || spec.application_name.is_some()
        || spec.options.is_some()
        || spec.connect_timeout.is_some()
        || spec.target_session_attrs.is_some();
    let connection = spec.dbname.is_some()
        || spec.host.is_some()
        || spec.port.is_some()
        || spec.user.is_some()
        || spec.password_env.is_some();
    let (misplaced, takes) = match &target {
        TargetSpec::Sqlite { .. } => {
            (connection || spec.dir.is_some() || spec.dialect.is_some() || spec.socket.is_some(), "path")
        }
        TargetSpec::Flatfile { .. } => (connection || spec.path.is_some() || spec.socket.is_some(), "dir and dialect"),
        TargetSpec::Mariadb(_) => (
            spec.path.is_some() || spec.dir.is_some() || spec.dialect.is_some(),
            "dbname, user, host, port, socket and password_env",
        ),
    };
    if libpq_only || misplaced {
        return Err(Error::usage(format!("a {} db takes only {takes} (and status)", target.type_name())));
    }
    Ok(Some(target))
}

/// The password a `password_env` variable holds.
fn env_password(name: &str, var: &toml::Spanned<String>, src: &Source) -> Result<String> {
    std::env::var(var.get_ref()).map_err(|_| {
        src.error(
            var.span(),
            format!(
                "db {name}: password_env names ${}, which is not set: export it, or leave password_env out to keep the stored password (.pgpass works too)",
                var.get_ref()
            ),
        )
    })
}

fn resolve_manifest(p: &super::model::PluginSpec) -> Result<Manifest> {
    let kind: PluginKind = p.kind.parse()?;
    let mut m = Manifest::defaults(kind);
    let mut set = |key: &str, value: Option<String>| match value {
        Some(v) => m.set(key, &v),
        None => Ok(()),
    };
    set("fuel", p.fuel.map(|v| v.to_string()))?;
    set("run_fuel", p.run_fuel.map(|v| v.to_string()))?;
    set("memory", p.memory.as_ref().map(|v| v.to_string()))?;
    set("table_elements", p.table_elements.map(|v| v.to_string()))?;
    set("timeout", p.timeout.clone())?;
    set("grant", Some(p.grants.join(",")))?;
    set("write", Some(p.write_grants.join(",")))?;
    set("tables", Some(p.tables.join(",")))?;
    set("write_tables", Some(p.write_tables.join(",")))?;
    set("on_error", p.on_error.clone())?;
    set("query_rows", p.query_rows.map(|v| v.to_string()))?;
    set("max_statements", p.max_statements.map(|v| v.to_string()))?;
    set("log_bytes", p.log_bytes.as_ref().map(|v| v.to_string()))?;
    set("rows", p.rows.map(|v| v.to_string()))?;
    for (k, v) in &p.config {
        set(&format!("config.{k}"), Some(v.clone()))?;
    }
    Ok(m)
}

fn resolve_sync(
    name: &str,
    spec: &toml::Spanned<super::model::SyncSpec>,
    config: &Config,
    src: &Source,
    state: &State,
) -> Result<SyncState> {
    let fail = |e: Error| src.error(spec.span(), format!("sync {name}: {e}"));
    check_name("sync", name).map_err(fail)?;
    let s = spec.get_ref();
    let herd = s.herd.get_ref();
    let Some(members) = state.herds.get(herd) else {
        return Err(src.error(
            s.herd.span(),
            format!("sync {name}: herd {herd:?} is not a [herd] of the file: add [herd.{herd}] or fix the name"),
        ));
    };
    if members.is_empty() {
        return Err(src.error(s.herd.span(), format!("sync {name}: herd {herd:?} is empty: give it members")));
    }
    let dbgroup = s.dbgroup.get_ref();
    let Some(group_members) = state.dbgroups.get(dbgroup) else {
        return Err(src.error(
            s.dbgroup.span(),
            format!(
                "sync {name}: dbgroup {dbgroup:?} is not a [dbgroup] of the file: add [dbgroup.{dbgroup}] or fix the name"
            ),
        ));
    };
    let group = DbGroup { name: dbgroup.clone(), members: group_members.clone(), syncs: Vec::new() };
    if group.sources().next().is_none() {
        return Err(src.error(
            s.dbgroup.span(),
            format!("sync {name}: dbgroup {dbgroup:?} has no source: give at least one db the role source"),
        ));
    }
    if group.members.len() < 2 {
        return Err(src.error(
            s.dbgroup.span(),
            format!("sync {name}: dbgroup {dbgroup:?} has one db: a sync needs at least two"),
        ));
    }
    let mut params = SyncParams::default();
    let texts = [
        ("status", s.status.clone()),
        ("conflict_strategy", s.conflict_strategy.clone()),
        ("autokick", s.autokick.map(|b| b.to_string())),
        ("checktime", s.checktime.clone()),
        ("onetimecopy", s.onetimecopy.map(|n| n.to_string())),
        ("kidsalive", s.kidsalive.map(|b| b.to_string())),
        ("lock_timeout", s.lock_timeout.clone()),
        ("isolation_level", s.isolation_level.clone()),
        ("makedelta", s.makedelta.map(|b| b.to_string())),
        ("ddl", s.ddl.clone()),
    ];
    for (key, value) in texts {
        if let Some(value) = value {
            params.set(key, &value).map_err(fail)?;
        }
    }
    params.conflict_strategy.check_against(&group).map_err(fail)?;
    if let catalog::ConflictStrategy::Plugin(p) = &params.conflict_strategy {
        check_plugin(config, p, PluginKind::ConflictHandler).map_err(fail)?;
    }
    let mut uses = Vec::new();
    for t in &s.transform {
        let plugin = t.plugin.get_ref();
        check_plugin(config, plugin, PluginKind::RowTransform)
            .map_err(|e| src.error(t.plugin.span(), format!("sync {name}: {e}")))?;
        let table = t.table.as_deref().map(relation_key);
        if let Some(table) = &table
            && !members.contains(table)
        {
            return Err(fail(Error::usage(format!("transform {plugin}: table {table} is not in herd {herd}"))));
        }
        if let Some(db) = &t.target
            && !group.members.iter().any(|m| &m.db == db)
        {
            return Err(fail(Error::usage(format!("transform {plugin}: db {db} is not in dbgroup {dbgroup}"))));
        }
        uses.push(UseState {
            kind: "transform".into(),
            plugin: plugin.clone(),
            table,
            target: t.target.clone(),
            when: Vec::new(),
        });
    }
    for h in &s.hook {
        let plugin = h.plugin.get_ref();
        check_plugin(config, plugin, PluginKind::SyncHooks)
            .map_err(|e| src.error(h.plugin.span(), format!("sync {name}: {e}")))?;
        let mut when = Vec::new();
        for point in &h.when {
            let p = crate::plugin::hooks::HookPoint::parse(point).ok_or_else(|| {
                fail(Error::usage(format!(
                    "hook {plugin}: unknown hook point {point:?}: use {}",
                    crate::plugin::hooks::HookPoint::NAMES
                )))
            })?;
            when.push(p.name().to_string());
        }
        if when.is_empty() {
            return Err(fail(Error::usage(format!("hook {plugin}: when is empty: e.g. when = [\"exception\"]"))));
        }
        uses.push(UseState { kind: "hook".into(), plugin: plugin.clone(), table: None, target: None, when });
    }
    uses.sort();
    if uses.windows(2).any(|w| w[0].kind == w[1].kind && w[0].plugin == w[1].plugin && w[0] == w[1]) {
        return Err(fail(Error::usage("an attachment is listed twice")));
    }
    Ok(SyncState {
        record: SyncRecord { name: name.to_string(), herd: herd.clone(), dbgroup: dbgroup.clone(), params },
        uses,
    })
}

fn check_plugin(config: &Config, name: &str, kind: PluginKind) -> Result<()> {
    match config.plugins.get(name) {
        None => Err(Error::usage(format!(
            "plugin {name:?} is not a [plugin] of the file: add [plugin.{name}] or fix the name"
        ))),
        Some(p) => {
            let found: PluginKind = p.get_ref().kind.parse()?;
            if found == kind { Ok(()) } else { Err(Error::usage(format!("plugin {name} is a {found}, not a {kind}"))) }
        }
    }
}
