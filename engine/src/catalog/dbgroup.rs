//! `ibex.dbgroup`: the databases of a sync and the role each plays.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::{Error, PgContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Changes are read here and written here (multi-master when several).
    Source,
    /// Changes are written here.
    Target,
    /// Every run empties its tables and copies them whole from a source.
    Fullcopy,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Target => "target",
            Role::Fullcopy => "fullcopy",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "source" | "master" => Ok(Role::Source),
            "target" | "slave" | "replica" => Ok(Role::Target),
            "fullcopy" => Ok(Role::Fullcopy),
            other => Err(Error::usage(format!("bad role {other:?}: use source, target or fullcopy"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbGroupMember {
    pub db: String,
    pub role: Role,
    /// Breaks ties in conflict resolution: higher wins.
    pub priority: i32,
}

impl DbGroupMember {
    /// Parses `db[:role[:priority]]`. Without a role the first db is a
    /// source and the others are targets, as in Bucardo.
    pub fn parse(spec: &str, position: usize) -> Result<Self> {
        let mut parts = spec.split(':');
        let db = parts.next().unwrap_or_default().to_string();
        if db.is_empty() {
            return Err(Error::usage(format!("bad dbgroup member {spec:?}: write DB:ROLE, e.g. t1:source")));
        }
        let role = match parts.next() {
            Some(role) => role.parse()?,
            None if position == 0 => Role::Source,
            None => Role::Target,
        };
        let priority = match parts.next() {
            Some(p) => p.parse().map_err(|_| {
                Error::usage(format!("bad priority {p:?} in {spec:?}: write DB:ROLE:NUMBER, e.g. t1:source:10"))
            })?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(Error::usage(format!("bad dbgroup member {spec:?}: write DB[:ROLE[:PRIORITY]]")));
        }
        Ok(DbGroupMember { db, role, priority })
    }

    pub fn spec(&self) -> String {
        if self.priority == 0 {
            format!("{}:{}", self.db, self.role)
        } else {
            format!("{}:{}:{}", self.db, self.role, self.priority)
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DbGroup {
    pub name: String,
    pub members: Vec<DbGroupMember>,
    pub syncs: Vec<String>,
}

impl DbGroup {
    pub fn sources(&self) -> impl Iterator<Item = &DbGroupMember> {
        self.members.iter().filter(|m| m.role == Role::Source)
    }
}

/// Parses member specs and checks them against each other (the dbs are
/// checked against the catalog by `set_members`).
pub fn parse_members(specs: &[String]) -> Result<Vec<DbGroupMember>> {
    let members: Vec<DbGroupMember> =
        specs.iter().enumerate().map(|(i, spec)| DbGroupMember::parse(spec, i)).collect::<Result<_>>()?;
    for (i, m) in members.iter().enumerate() {
        if members[..i].iter().any(|o| o.db == m.db) {
            return Err(Error::usage(format!("db {:?} is listed twice", m.db)));
        }
    }
    if members.is_empty() {
        return Err(Error::usage("a dbgroup needs databases: e.g. t1:source t2:target"));
    }
    Ok(members)
}

pub async fn exists(c: &impl GenericClient, name: &str) -> Result<bool> {
    Ok(c.query_opt("SELECT 1 FROM ibex.dbgroup WHERE name = $1", &[&name])
        .await
        .ctx(|| format!("looking up dbgroup {name:?}"))?
        .is_some())
}

pub async fn add(c: &impl GenericClient, name: &str, members: &[DbGroupMember]) -> Result<()> {
    if exists(c, name).await? {
        return Err(Error::duplicate_hint("dbgroup", name, "change it with `ibex update dbgroup`"));
    }
    c.execute("INSERT INTO ibex.dbgroup (name) VALUES ($1)", &[&name])
        .await
        .ctx(|| format!("adding dbgroup {name:?}"))?;
    set_members(c, name, members).await
}

/// Replaces the members of a dbgroup; every db must be in the catalog.
pub async fn set_members(c: &impl GenericClient, name: &str, members: &[DbGroupMember]) -> Result<()> {
    for m in members {
        if !super::dbs::exists(c, &m.db).await? {
            return Err(Error::not_found_hint(
                "db",
                &m.db,
                format!("add it first with `ibex add db {} dbname=...`", m.db),
            ));
        }
    }
    c.execute("DELETE FROM ibex.dbgroup_member WHERE dbgroup = $1", &[&name])
        .await
        .ctx(|| format!("replacing the members of dbgroup {name:?}"))?;
    for (position, m) in members.iter().enumerate() {
        c.execute(
            "INSERT INTO ibex.dbgroup_member (dbgroup, db, role, priority, position) VALUES ($1, $2, $3, $4, $5)",
            &[&name, &m.db, &m.role.as_str(), &m.priority, &(position as i32)],
        )
        .await
        .ctx(|| format!("adding db {:?} to dbgroup {name:?}", m.db))?;
    }
    Ok(())
}

pub async fn get(c: &impl GenericClient, name: &str) -> Result<DbGroup> {
    list(c)
        .await?
        .into_iter()
        .find(|g| g.name == name)
        .ok_or_else(|| Error::not_found_hint("dbgroup", name, "list them with `ibex list dbgroups`"))
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<DbGroup>> {
    let groups = c
        .query(
            "SELECT g.name, coalesce((SELECT array_agg(s.name ORDER BY s.name) FROM ibex.sync s WHERE s.dbgroup = g.name), '{}')
               FROM ibex.dbgroup g ORDER BY g.name",
            &[],
        )
        .await
        .ctx(|| "listing dbgroups".into())?;
    let members = c
        .query("SELECT dbgroup, db, role, priority FROM ibex.dbgroup_member ORDER BY dbgroup, position", &[])
        .await
        .ctx(|| "listing dbgroup members".into())?;
    groups
        .iter()
        .map(|g| {
            let name: String = g.get(0);
            let members = members
                .iter()
                .filter(|m| m.get::<_, String>(0) == name)
                .map(|m| Ok(DbGroupMember { db: m.get(1), role: m.get::<_, String>(2).parse()?, priority: m.get(3) }))
                .collect::<Result<Vec<_>>>()?;
            Ok(DbGroup { name, members, syncs: g.get(1) })
        })
        .collect()
}

pub async fn remove(c: &impl GenericClient, name: &str) -> Result<()> {
    let group = get(c, name).await?;
    if !group.syncs.is_empty() {
        return Err(Error::Refused(format!(
            "dbgroup {name:?} is used by sync {}: remove the sync first",
            group.syncs.join(", ")
        )));
    }
    c.execute("DELETE FROM ibex.dbgroup WHERE name = $1", &[&name])
        .await
        .ctx(|| format!("removing dbgroup {name:?}"))?;
    Ok(())
}
