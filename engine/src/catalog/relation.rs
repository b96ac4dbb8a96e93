//! `ibex.relation`: the tables and sequences ibex knows (Bucardo's goats),
//! each with the key that identifies its rows.

use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, PgContext, Result};
use crate::pg::QualifiedName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelKind {
    Table,
    Sequence,
}

impl RelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RelKind::Table => "table",
            RelKind::Sequence => "sequence",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Relation {
    pub id: i32,
    pub kind: RelKind,
    pub name: QualifiedName,
    /// Key columns in index order; empty for sequences.
    pub key_columns: Vec<String>,
    /// "primary key" or "unique index".
    pub key_source: Option<String>,
    pub added_from: Option<String>,
    pub herds: Vec<String>,
    /// The delta keeps the row before each change (for merging handlers).
    pub capture_old: bool,
    /// Rows ibex applies to it are captured for other syncs (makedelta).
    pub makedelta: bool,
}

const SELECT: &str = "SELECT r.id, r.kind, r.schema_name, r.rel_name, r.key_columns, r.key_source, r.added_from, r.capture_old, r.makedelta,
        coalesce((SELECT array_agg(m.herd ORDER BY m.herd) FROM ibex.herd_member m WHERE m.relation = r.id), '{}') AS herds
   FROM ibex.relation r";

impl Relation {
    fn from_row(row: &Row) -> Self {
        let kind: String = row.get("kind");
        Relation {
            id: row.get("id"),
            kind: if kind == "sequence" { RelKind::Sequence } else { RelKind::Table },
            name: QualifiedName::new(row.get::<_, String>("schema_name"), row.get::<_, String>("rel_name")),
            key_columns: row.get::<_, Option<Vec<String>>>("key_columns").unwrap_or_default(),
            key_source: row.get("key_source"),
            added_from: row.get("added_from"),
            herds: row.get("herds"),
            capture_old: row.get("capture_old"),
            makedelta: row.get("makedelta"),
        }
    }
}

/// Adds a relation; a relation of that name already in the catalog is an error.
pub async fn add(
    c: &impl GenericClient,
    kind: RelKind,
    name: &QualifiedName,
    key_columns: Option<&[String]>,
    key_source: Option<&str>,
    added_from: &str,
) -> Result<i32> {
    if let Some(existing) = find_exact(c, name).await? {
        return Err(Error::duplicate_hint(
            existing.kind.as_str(),
            name.to_string(),
            "to put it in a herd: `ibex update herd HERD add=NAME`",
        ));
    }
    let row = c
        .query_one(
            "INSERT INTO ibex.relation (kind, schema_name, rel_name, key_columns, key_source, added_from)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[&kind.as_str(), &name.schema, &name.name, &key_columns, &key_source, &added_from],
        )
        .await
        .ctx(|| format!("adding {} {name}", kind.as_str()))?;
    Ok(row.get(0))
}

pub async fn find_exact(c: &impl GenericClient, name: &QualifiedName) -> Result<Option<Relation>> {
    let row = c
        .query_opt(&format!("{SELECT} WHERE r.schema_name = $1 AND r.rel_name = $2"), &[&name.schema, &name.name])
        .await
        .ctx(|| format!("looking up {name}"))?;
    Ok(row.as_ref().map(Relation::from_row))
}

/// Finds a relation by what a user typed: `name`, `schema.name`, or quoted
/// SQL identifiers (`"My Schema"."My Table"`).
pub async fn find(c: &impl GenericClient, kind: Option<RelKind>, typed: &str) -> Result<Relation> {
    let rows = c
        .query(
            &format!(
                "{SELECT}, (SELECT ibex.try_parse_ident($1) AS p) typed
                  WHERE r.rel_name = $1
                     OR r.schema_name || '.' || r.rel_name = $1
                     OR (cardinality(typed.p) = 2 AND r.schema_name = typed.p[1] AND r.rel_name = typed.p[2])
                     OR (cardinality(typed.p) = 1 AND r.rel_name = typed.p[1])
                  ORDER BY r.schema_name, r.rel_name"
            ),
            &[&typed],
        )
        .await
        .ctx(|| format!("looking up {typed:?}"))?;
    let mut found: Vec<Relation> = rows.iter().map(Relation::from_row).collect();
    if let Some(kind) = kind {
        found.retain(|r| r.kind == kind);
    }
    let what = kind.map_or("table or sequence", RelKind::as_str);
    match found.len() {
        0 => Err(Error::not_found_hint(
            what,
            typed,
            format!("add it with `ibex add {} {typed} db=DB`", kind.unwrap_or(RelKind::Table).as_str()),
        )),
        1 => Ok(found.remove(0)),
        _ => {
            // An exact schema.name or a lone public match wins; else ask.
            let exact = found
                .iter()
                .position(|r| r.name.to_string() == typed || format!("{}.{}", r.name.schema, r.name.name) == typed);
            if let Some(i) = exact {
                return Ok(found.remove(i));
            }
            let names: Vec<String> = found.iter().map(|r| r.name.to_string()).collect();
            Err(Error::usage(format!("{typed:?} is ambiguous: it matches {}; write schema.name", names.join(", "))))
        }
    }
}

pub async fn list(c: &impl GenericClient, kind: Option<RelKind>) -> Result<Vec<Relation>> {
    let rows = c
        .query(
            &format!("{SELECT} WHERE $1::text IS NULL OR r.kind = $1 ORDER BY r.schema_name, r.rel_name"),
            &[&kind.map(RelKind::as_str)],
        )
        .await
        .ctx(|| "listing tables".into())?;
    Ok(rows.iter().map(Relation::from_row).collect())
}

pub async fn get(c: &impl GenericClient, id: i32) -> Result<Relation> {
    let row = c
        .query_opt(&format!("{SELECT} WHERE r.id = $1"), &[&id])
        .await
        .ctx(|| format!("reading relation {id}"))?
        .ok_or_else(|| Error::not_found("relation", id.to_string()))?;
    Ok(Relation::from_row(&row))
}

pub async fn remove(c: &impl GenericClient, id: i32) -> Result<()> {
    c.execute("DELETE FROM ibex.relation WHERE id = $1", &[&id]).await.ctx(|| format!("removing relation {id}"))?;
    Ok(())
}

pub async fn set_capture_old(c: &impl GenericClient, id: i32, on: bool) -> Result<()> {
    c.execute("UPDATE ibex.relation SET capture_old = $2 WHERE id = $1", &[&id, &on])
        .await
        .ctx(|| format!("updating relation {id}"))?;
    Ok(())
}

pub async fn set_makedelta(c: &impl GenericClient, id: i32, on: bool) -> Result<()> {
    c.execute("UPDATE ibex.relation SET makedelta = $2 WHERE id = $1", &[&id, &on])
        .await
        .ctx(|| format!("updating relation {id}"))?;
    Ok(())
}

/// Changes the key a table's rows are identified by.
pub async fn set_key(c: &impl GenericClient, id: i32, columns: &[String], source: &str) -> Result<()> {
    c.execute("UPDATE ibex.relation SET key_columns = $2, key_source = $3 WHERE id = $1", &[&id, &columns, &source])
        .await
        .ctx(|| format!("updating the key of relation {id}"))?;
    Ok(())
}

/// The syncs whose herd holds the relation.
pub async fn syncs_using(c: &impl GenericClient, id: i32) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT DISTINCT s.name FROM ibex.sync s JOIN ibex.herd_member m ON m.herd = s.herd WHERE m.relation = $1 ORDER BY 1",
            &[&id],
        )
        .await
        .ctx(|| format!("finding the syncs of relation {id}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
