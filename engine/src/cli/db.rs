//! `ibex add|list|update|remove db`

use super::{Context, NamedParams, Names, Params};
use crate::catalog::{self, check_name};
use crate::error::{Error, Result};
use crate::pg::{self, ConnInfo};

/// Keys `add db` and `update db` take: libpq's (see `pg::CONN_KEYS`),
/// with Bucardo's spelling `pass` offered for the password.
fn conn_keys() -> Vec<&'static str> {
    pg::CONN_KEYS.iter().map(|k| if *k == "password" { "pass" } else { *k }).collect()
}

/// Applies connection keys from `params` onto `conn`; true if any changed.
fn apply_conn_keys(params: &mut Params, conn: &mut ConnInfo) -> Result<bool> {
    let before = conn.clone();
    if let Some(dbname) = params.take("dbname") {
        if dbname.is_empty() {
            return Err(Error::usage("dbname is empty: e.g. dbname=btest1"));
        }
        conn.dbname = dbname;
    }
    if let Some(user) = params.take_any(&["user", "dbuser", "username"]) {
        conn.set("user", &user)?;
    }
    if let Some(pass) = params.take_any(&["pass", "password", "dbpass"]) {
        conn.set("password", &pass)?;
    }
    for key in pg::CONN_KEYS {
        if let Some(value) = params.take(key) {
            conn.set(key, &value)?;
        }
    }
    Ok(*conn != before)
}

async fn check_connects(name: &str, conn: &ConnInfo) -> Result<()> {
    pg::connect(conn, "ibex check").await.map(drop).map_err(|err| match err {
        Error::Connect { target, reason } => Error::Connect {
            target: format!("db {name} ({target})"),
            reason: format!("{reason}; fix the connection settings or check that the server is up"),
        },
        other => other,
    })
}

/// `type=sqlite path=FILE` or `type=flatfile dir=DIR dialect=postgres|mysql`:
/// a db that is not PostgreSQL (None for `type=postgres` or no type).
fn foreign_target(params: &mut Params) -> Result<Option<crate::target::TargetSpec>> {
    use crate::target::{Dialect, TargetSpec};
    let Some(kind) = params.take("type") else { return Ok(None) };
    let absolute = |key: &str, value: String| {
        let path = std::path::PathBuf::from(&value);
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(Error::usage(format!(
                "{key}={value} is relative: give an absolute path, as the daemon may run elsewhere"
            )))
        }
    };
    let spec = match kind.as_str() {
        "postgres" | "postgresql" => return Ok(None),
        "sqlite" => {
            TargetSpec::Sqlite { path: absolute("path", params.require("path", "path=/var/lib/ibex/copy.db")?)? }
        }
        "flatfile" => TargetSpec::Flatfile {
            dir: absolute("dir", params.require("dir", "dir=/var/lib/ibex/sql")?)?,
            dialect: Dialect::parse(&params.take("dialect").unwrap_or_else(|| "postgres".into()))?,
        },
        "mariadb" | "mysql" => {
            let port = match params.take("port") {
                Some(p) => Some(p.parse::<u16>().map_err(|_| Error::usage(format!("bad port {p:?}: e.g. port=3306")))?),
                None => None,
            };
            let socket = match params.take("socket") {
                Some(s) => Some(absolute("socket", s)?),
                None => None,
            };
            TargetSpec::Mariadb(crate::target::mariadb::MariadbConn {
                host: params.take("host"),
                port,
                socket,
                user: params.require("user", "user=ibex")?,
                password: params.take_any(&["password", "pass"]),
                dbname: params.require("dbname", "dbname=reports")?,
            })
        }
        other => {
            return Err(Error::usage(format!(
                "unknown db type {other:?}: use type=postgres (the default), type=sqlite path=FILE, type=flatfile dir=DIR dialect=postgres|mysql or type=mariadb dbname= user= [host= port= socket= password=]"
            )));
        }
    };
    let keys: &[&str] = match spec {
        crate::target::TargetSpec::Sqlite { .. } => &["type", "path"],
        crate::target::TargetSpec::Flatfile { .. } => &["type", "dir", "dialect"],
        crate::target::TargetSpec::Mariadb(_) => &["type", "host", "port", "socket", "user", "password", "dbname"],
    };
    params.finish(keys)?;
    Ok(Some(spec))
}

pub async fn add(ctx: &Context, args: NamedParams) -> Result<()> {
    check_name("db", &args.name)?;
    let mut params = Params::parse_pairs_only(&args.params)?;
    if let Some(spec) = foreign_target(&mut params)? {
        let mut cat = ctx.catalog().await?;
        if catalog::dbs::exists(cat.client(), &args.name).await? {
            return Err(Error::duplicate_hint(
                "db",
                &args.name,
                "pick another name or change it with `ibex update db`",
            ));
        }
        spec.check()?;
        let name = args.name.clone();
        cat.change(async |tx| catalog::dbs::add_foreign(tx, &name, &spec).await).await?;
        ctx.out.done(format!("Added db {} ({}; a target only)", args.name, spec.describe()));
        return Ok(());
    }
    // With service=, the service's entry may name the database.
    let mut conn = ConnInfo::default();
    if params.remaining().iter().all(|(k, _)| k != "service") {
        conn.dbname = params.require("dbname", "dbname=btest1")?;
    }
    apply_conn_keys(&mut params, &mut conn)?;
    let capture = match params.take("capture") {
        Some(text) => crate::capture::CaptureMode::parse(&text)?,
        None => crate::capture::CaptureMode::Trigger,
    };
    let mut known = conn_keys();
    known.push("capture");
    params.finish(&known)?;
    let mut cat = ctx.catalog().await?;
    if catalog::dbs::exists(cat.client(), &args.name).await? {
        return Err(Error::duplicate_hint("db", &args.name, "pick another name or change it with `ibex update db`"));
    }
    check_connects(&args.name, &conn).await?;
    let name = args.name.clone();
    let record = catalog::dbs::DbRecord {
        name: name.clone(),
        conn: conn.clone(),
        status: "active".into(),
        target: None,
        capture,
    };
    let created = crate::sync::setup::prepare_wal_slot(cat.client(), &record).await?.is_new();
    let added = cat.change(async |tx| catalog::dbs::add(tx, &name, &conn, capture).await).await;
    if let Err(err) = added {
        if created && let Err(drop_err) = crate::sync::setup::drop_wal_slot(cat.client(), &record).await {
            ctx.out.warn(format!("the WAL capture slot made on db {name} was not dropped: {drop_err}"));
        }
        return Err(err);
    }
    ctx.out.done(format!("Added db {} ({})", args.name, conn.describe()));
    Ok(())
}

pub async fn list(ctx: &Context) -> Result<()> {
    let cat = ctx.catalog().await?;
    let mut views = Vec::new();
    for db in catalog::dbs::list(cat.client()).await? {
        let syncs = catalog::dbs::syncs_using(cat.client(), &db.name).await?;
        views.push(db.view(syncs));
    }
    ctx.out.listing(
        &views,
        "No dbs: add one with `ibex add db NAME dbname=...`",
        &["Name", "Status", "Dbname", "Host", "Port", "User", "Password", "Sslmode", "Syncs"],
        |v| {
            if v.db_type != "postgres" {
                // A foreign target: Dbname says what and where; nothing else applies.
                let none = || "-".to_string();
                return vec![
                    v.name.clone(),
                    v.status.clone(),
                    v.dbname.clone(),
                    none(),
                    none(),
                    none(),
                    none(),
                    none(),
                    v.used_by_syncs.join(","),
                ];
            }
            vec![
                v.name.clone(),
                v.status.clone(),
                v.dbname.clone(),
                v.host.clone().unwrap_or_else(|| "(local)".into()),
                v.port.map_or_else(|| "5432".into(), |p| p.to_string()),
                v.user.clone().unwrap_or_default(),
                v.password.unwrap_or("").to_string(),
                v.sslmode.unwrap_or("prefer").to_string(),
                v.used_by_syncs.join(","),
            ]
        },
    );
    Ok(())
}

pub async fn update(ctx: &Context, args: NamedParams) -> Result<()> {
    let mut params = Params::parse_pairs_only(&args.params)?;
    if args.params.is_empty() {
        return Err(Error::usage(format!("nothing to change: e.g. ibex update db {} host=10.0.0.6", args.name)));
    }
    let mut cat = ctx.catalog().await?;
    let mut db = catalog::dbs::get(cat.client(), &args.name).await?;
    if let Some(target) = &db.target
        && params.remaining().iter().any(|(k, _)| k != "status")
    {
        return Err(Error::usage(format!(
            "db {} is a {} db: only status= can change; to point it elsewhere, remove it and add it again",
            args.name,
            target.type_name()
        )));
    }
    let conn_changed = apply_conn_keys(&mut params, &mut db.conn)?;
    let capture_before = db.capture;
    let capture_given = params.take("capture");
    if let Some(capture) = &capture_given {
        db.capture = crate::capture::CaptureMode::parse(capture)?;
    }
    if let Some(status) = params.take("status") {
        if status != "active" && status != "inactive" {
            return Err(Error::usage(format!("bad status {status:?}: use active or inactive")));
        }
        db.status = status;
    }
    let mut known = conn_keys();
    known.extend(["status", "capture"]);
    params.finish(&known)?;
    if conn_changed {
        check_connects(&args.name, &db.conn).await?;
    }
    // The slot first, outside the catalog's transaction (see
    // `capture::create_wal_slot`); a refusal (wal_level, slots) changes nothing.
    let slot = if capture_given.is_some() {
        crate::sync::setup::prepare_wal_slot(cat.client(), &db).await?
    } else {
        crate::capture::SlotMade::NotNeeded
    };
    let created = slot.is_new();
    let switched = db.capture != capture_before || created;
    let mut report = None;
    let changed = cat
        .change(async |tx| {
            catalog::dbs::update(tx, &db).await?;
            if switched {
                // The switch happens on the db with the catalog change.
                report = Some(crate::sync::setup::reconcile_db(tx, &db.name).await?);
            }
            Ok(())
        })
        .await;
    if let Err(err) = changed {
        if created && let Err(drop_err) = crate::sync::setup::drop_wal_slot(cat.client(), &db).await {
            ctx.out.warn(format!("the WAL capture slot made on db {} was not dropped: {drop_err}", db.name));
        }
        return Err(err);
    }
    ctx.out.done(format!("Updated db {}", args.name));
    if switched {
        ctx.out.done(format!("db {}: capture is now {}", args.name, db.capture.as_str()));
    }
    if let Some(warning) = slot.warning(&args.name) {
        ctx.out.warn(warning);
    }
    if let Some(report) = report {
        for warning in &report.warnings {
            ctx.out.warn(warning.clone());
        }
        if let Some(line) = crate::sync::setup::describe(&db.name, &report) {
            ctx.out.done(line);
        }
    }
    Ok(())
}

pub async fn remove(ctx: &Context, args: Names) -> Result<()> {
    let mut cat = ctx.catalog().await?;
    cat.change(async |tx| {
        for name in &args.names {
            let syncs = catalog::dbs::syncs_using(tx, name).await?;
            if syncs.is_empty() && catalog::dbs::exists(tx, name).await? {
                // No sync reads it any more: take capture off it, if reachable.
                if let Err(err) = crate::sync::setup::reconcile_db(tx, name).await {
                    ctx.out.warn(format!("capture on db {name} was not removed: {err}"));
                }
                let record = catalog::dbs::get(tx, name).await?;
                if let Err(err) = crate::sync::setup::drop_wal_slot(tx, &record).await {
                    ctx.out.warn(format!("the WAL capture slot on db {name} was not dropped: {err}"));
                }
            }
            catalog::dbs::remove(tx, name).await?;
        }
        Ok(())
    })
    .await?;
    for name in &args.names {
        ctx.out.done(format!("Removed db {name}"));
    }
    Ok(())
}
