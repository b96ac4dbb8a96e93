//! `ibex.herd`: named sets of tables and sequences that a sync replicates.

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::error::{Error, PgContext, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Herd {
    pub name: String,
    /// `schema.name` of each member, tables and sequences.
    pub members: Vec<String>,
    pub syncs: Vec<String>,
}

pub async fn exists(c: &impl GenericClient, name: &str) -> Result<bool> {
    Ok(c.query_opt("SELECT 1 FROM ibex.herd WHERE name = $1", &[&name])
        .await
        .ctx(|| format!("looking up herd {name:?}"))?
        .is_some())
}

pub async fn add(c: &impl GenericClient, name: &str) -> Result<()> {
    if exists(c, name).await? {
        return Err(Error::duplicate_hint(
            "herd",
            name,
            "to add tables to it: `ibex update herd NAME add=TABLE[,TABLE]`",
        ));
    }
    c.execute("INSERT INTO ibex.herd (name) VALUES ($1)", &[&name]).await.ctx(|| format!("adding herd {name:?}"))?;
    Ok(())
}

/// Creates the herd when it does not exist yet (as `add table ... herd=H` does).
pub async fn ensure(c: &impl GenericClient, name: &str) -> Result<()> {
    c.execute("INSERT INTO ibex.herd (name) VALUES ($1) ON CONFLICT DO NOTHING", &[&name])
        .await
        .ctx(|| format!("adding herd {name:?}"))?;
    Ok(())
}

pub async fn add_member(c: &impl GenericClient, herd: &str, relation: i32, shown: &str) -> Result<()> {
    let inserted = c
        .execute(
            "INSERT INTO ibex.herd_member (herd, relation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&herd, &relation],
        )
        .await
        .ctx(|| format!("adding {shown} to herd {herd:?}"))?;
    if inserted == 0 {
        return Err(Error::duplicate("herd member", format!("{shown} in herd {herd}")));
    }
    Ok(())
}

pub async fn remove_member(c: &impl GenericClient, herd: &str, relation: i32, shown: &str) -> Result<()> {
    let deleted = c
        .execute("DELETE FROM ibex.herd_member WHERE herd = $1 AND relation = $2", &[&herd, &relation])
        .await
        .ctx(|| format!("removing {shown} from herd {herd:?}"))?;
    if deleted == 0 {
        return Err(Error::not_found("herd member", format!("{shown} in herd {herd}")));
    }
    Ok(())
}

pub async fn get(c: &impl GenericClient, name: &str) -> Result<Herd> {
    list(c)
        .await?
        .into_iter()
        .find(|h| h.name == name)
        .ok_or_else(|| Error::not_found_hint("herd", name, "list them with `ibex list herds`"))
}

pub async fn list(c: &impl GenericClient) -> Result<Vec<Herd>> {
    let rows = c
        .query(
            "SELECT h.name,
                    coalesce((SELECT array_agg(r.schema_name || '.' || r.rel_name ORDER BY r.schema_name, r.rel_name)
                                FROM ibex.herd_member m JOIN ibex.relation r ON r.id = m.relation
                               WHERE m.herd = h.name), '{}'),
                    coalesce((SELECT array_agg(s.name ORDER BY s.name) FROM ibex.sync s WHERE s.herd = h.name), '{}')
               FROM ibex.herd h ORDER BY h.name",
            &[],
        )
        .await
        .ctx(|| "listing herds".into())?;
    Ok(rows.iter().map(|r| Herd { name: r.get(0), members: r.get(1), syncs: r.get(2) }).collect())
}

pub async fn remove(c: &impl GenericClient, name: &str) -> Result<()> {
    let herd = get(c, name).await?;
    if !herd.syncs.is_empty() {
        return Err(Error::Refused(format!(
            "herd {name:?} is used by sync {}: remove the sync first",
            herd.syncs.join(", ")
        )));
    }
    c.execute("DELETE FROM ibex.herd WHERE name = $1", &[&name]).await.ctx(|| format!("removing herd {name:?}"))?;
    Ok(())
}
