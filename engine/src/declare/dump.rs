//! The catalog written as a file `ibex apply` reads back to the same
//! catalog. Passwords are never written: a db with a stored password gets a
//! comment saying it is kept, and how to give one with `password_env`.

use toml::Spanned;

use super::model::{
    Config, DbGroupSpec, DbSpec, HerdSpec, HookSpec, PluginSpec, PortSpec, Scalar, SequenceSpec, SyncSpec, TableSpec,
    TransformSpec,
};
use super::state::State;
use crate::catalog::RelKind;
use crate::catalog::sync::format_duration;
use crate::error::{Error, Result};
use crate::target::TargetSpec;

const HEADER: &str = "# The ibex catalog as configuration: `ibex plan FILE` shows what `ibex apply FILE`
# would change; objects left out of the file are removed by apply.
";

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// The file for `state`.
pub fn to_config(state: &State) -> Config {
    let mut config = Config::default();
    for (key, value) in &state.settings {
        config.settings.insert(key.clone(), spanned(Scalar::Text(value.clone())));
    }
    for (name, db) in &state.dbs {
        if let Some(target) = &db.target {
            config.dbs.insert(name.clone(), spanned(foreign_spec(target, &db.status)));
            continue;
        }
        let c = &db.conn;
        let port = if c.ports.len() > 1 {
            Some(PortSpec::Many(c.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")))
        } else {
            c.port.map(PortSpec::One)
        };
        let spec = DbSpec {
            db_type: None,
            path: None,
            dir: None,
            dialect: None,
            socket: None,
            dbname: (!c.dbname.is_empty()).then(|| c.dbname.clone()),
            host: c.host.clone(),
            port,
            user: c.user.clone(),
            password_env: None,
            sslmode: c.sslmode.map(|m| m.as_str().to_string()),
            sslrootcert: c.sslrootcert.clone(),
            sslcert: c.sslcert.clone(),
            sslkey: c.sslkey.clone(),
            sslcrl: c.sslcrl.clone(),
            channel_binding: c.channel_binding.map(|b| b.as_str().to_string()),
            service: c.service.clone(),
            passfile: c.passfile.clone(),
            application_name: c.application_name.clone(),
            options: c.options.clone(),
            connect_timeout: c.connect_timeout,
            target_session_attrs: c.target_session_attrs.clone(),
            status: (db.status != "active").then(|| db.status.clone()),
            capture: (db.capture != crate::capture::CaptureMode::Trigger).then(|| db.capture.as_str().to_string()),
        };
        config.dbs.insert(name.clone(), spanned(spec));
    }
    for (name, p) in &state.plugins {
        let m = &p.manifest;
        let spec = PluginSpec {
            sha256: p.sha256.clone(),
            path: None,
            kind: m.kind.to_string(),
            fuel: Some(m.fuel),
            run_fuel: Some(m.run_fuel),
            memory: Some(Scalar::Int(m.memory as i64)),
            table_elements: Some(m.table_elements),
            timeout: Some(format_duration(Some(m.timeout))),
            grants: m.grants.clone(),
            write_grants: m.write_grants.clone(),
            tables: m.tables.clone(),
            write_tables: m.write_tables.clone(),
            on_error: Some(m.on_error.to_string()),
            query_rows: Some(m.query_row_cap),
            max_statements: Some(m.max_statements),
            log_bytes: Some(Scalar::Int(m.log_bytes as i64)),
            rows: Some(m.rows),
            config: m.config.iter().cloned().collect(),
        };
        config.plugins.insert(name.clone(), spanned(spec));
    }
    for (name, r) in &state.relations {
        let db = r.db.clone().map(spanned);
        match r.kind {
            RelKind::Table => {
                // The primary key is found again on the db; a unique index is named.
                let pkey = if r.key_source.as_deref() == Some("unique index") { r.key.clone() } else { None };
                let spec = TableSpec { db, pkey, capture_old: r.capture_old, makedelta: r.makedelta };
                config.tables.insert(name.clone(), spanned(spec));
            }
            RelKind::Sequence => {
                config.sequences.insert(name.clone(), spanned(SequenceSpec { db }));
            }
        }
    }
    for (name, members) in &state.herds {
        let spec = HerdSpec { members: members.iter().cloned().map(spanned).collect() };
        config.herds.insert(name.clone(), spanned(spec));
    }
    for (name, members) in &state.dbgroups {
        let spec = DbGroupSpec { members: members.iter().map(|m| spanned(m.spec())).collect() };
        config.dbgroups.insert(name.clone(), spanned(spec));
    }
    for (name, s) in &state.syncs {
        let r = &s.record;
        let p = &r.params;
        let spec = SyncSpec {
            herd: spanned(r.herd.clone()),
            dbgroup: spanned(r.dbgroup.clone()),
            status: Some(p.status.clone()),
            conflict_strategy: Some(p.conflict_strategy.to_string()),
            autokick: Some(p.autokick),
            checktime: Some(format_duration(p.checktime)),
            onetimecopy: Some(p.onetimecopy),
            kidsalive: Some(p.kidsalive),
            lock_timeout: Some(format_duration(p.lock_timeout)),
            isolation_level: Some(p.isolation_level.as_sql().to_string()),
            makedelta: Some(p.makedelta),
            ddl: Some(p.ddl.as_str().to_string()),
            transform: s
                .uses
                .iter()
                .filter(|u| u.kind == "transform")
                .map(|u| TransformSpec {
                    plugin: spanned(u.plugin.clone()),
                    table: u.table.clone(),
                    target: u.target.clone(),
                })
                .collect(),
            hook: s
                .uses
                .iter()
                .filter(|u| u.kind == "hook")
                .map(|u| HookSpec { plugin: spanned(u.plugin.clone()), when: u.when.clone() })
                .collect(),
        };
        config.syncs.insert(name.clone(), spanned(spec));
    }
    config
}

/// A db that is not PostgreSQL: its type and where its rows go.
fn foreign_spec(target: &TargetSpec, status: &str) -> DbSpec {
    let mut spec = DbSpec {
        db_type: Some(target.type_name().to_string()),
        status: (status != "active").then(|| status.to_string()),
        ..DbSpec::default()
    };
    match target {
        TargetSpec::Sqlite { path } => spec.path = Some(path.display().to_string()),
        TargetSpec::Flatfile { dir, dialect } => {
            spec.dir = Some(dir.display().to_string());
            spec.dialect = Some(dialect.as_str().to_string());
        }
        // The password stays in the catalog, as for PostgreSQL dbs.
        TargetSpec::Mariadb(m) => {
            spec.dbname = Some(m.dbname.clone());
            spec.user = Some(m.user.clone());
            spec.host = m.host.clone();
            spec.port = m.port.map(PortSpec::One);
            spec.socket = m.socket.as_ref().map(|s| s.display().to_string());
        }
    }
    spec
}

/// The file's text, with the comments that say what is not in it.
pub fn to_toml(state: &State) -> Result<String> {
    let body = toml::to_string(&to_config(state))
        .map_err(|e| Error::Catalog(format!("cannot write the catalog as TOML: {e}")))?;
    let mut out = String::from(HEADER);
    for line in body.lines() {
        out.push_str(line);
        out.push('\n');
        if let Some(name) = header_name(line, "db")
            && state.dbs.get(&name).is_some_and(has_password)
        {
            out.push_str(
                "# A password is stored in the catalog; it is not written here and apply keeps it.\n\
                 # To set it from the environment instead: password_env = \"VARIABLE\" (or use ~/.pgpass).\n",
            );
        }
        if header_name(line, "plugin").is_some() {
            out.push_str(
                "# The component is stored in the catalog under this sha256; to apply this file to\n\
                 # another catalog, add path = \"FILE.wasm\".\n",
            );
        }
    }
    Ok(out)
}

fn has_password(db: &super::state::DbState) -> bool {
    match &db.target {
        Some(TargetSpec::Mariadb(m)) => m.password.is_some(),
        _ => db.conn.password.is_some(),
    }
}

/// The NAME of a `[section.NAME]` header line, quoted or not.
fn header_name(line: &str, section: &str) -> Option<String> {
    let inner = line.strip_prefix(&format!("[{section}."))?.strip_suffix(']')?;
    let name = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(inner);
    Some(name.to_string())
}
