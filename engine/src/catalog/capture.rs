//! What capture on one db must hold, from the catalog: the syncs that read
//! the db, the tables each reads, and whose writes to those tables other
//! syncs must see (makedelta).

use tokio_postgres::GenericClient;

use crate::error::{PgContext, Result};

/// One table that a sync reads from a db, as capture needs it.
#[derive(Debug, Clone)]
pub struct CaptureNeed {
    pub sync: String,
    pub autokick: bool,
    pub table: crate::pg::QualifiedName,
    pub key: Vec<String>,
    /// The table keeps old images (capture_old).
    pub capture_old: bool,
    /// Another sync writes this table to this db: "all" (the table is
    /// makedelta), "asked" (only writers with makedelta) or "none" (no
    /// writer captures, or no other writer).
    pub ibex_writes: &'static str,
    /// Writers of this table to this db whose writes nobody captures (no
    /// makedelta), while this sync reads it: the cascade gap to warn about.
    pub uncaptured_writers: Vec<String>,
}

/// A sync that reads a db.
#[derive(Debug, Clone)]
pub struct CaptureReader {
    pub sync: String,
    /// It has other sources too.
    pub multi_source: bool,
}

/// Every (sync, table) that reads from `db`: the syncs where it is a source.
pub async fn needs(c: &impl GenericClient, db: &str) -> Result<(Vec<CaptureReader>, Vec<CaptureNeed>)> {
    let syncs = c
        .query(
            "SELECT s.name, (SELECT count(*) FROM ibex.dbgroup_member o WHERE o.dbgroup = s.dbgroup AND o.role = 'source') > 1
               FROM ibex.sync s JOIN ibex.dbgroup_member m ON m.dbgroup = s.dbgroup
              WHERE m.db = $1 AND m.role = 'source' ORDER BY s.name",
            &[&db],
        )
        .await
        .ctx(|| format!("finding the syncs that read db {db}"))?;
    // Per (reader, table): the other syncs that write the table to this db
    // and that the reader would carry further (it writes some db the writer
    // does not reach; a reverse sync of the same dbs would only echo), split
    // by whether their writes are captured (makedelta).
    let rows = c
        .query(
            "SELECT s.name, s.autokick, r.schema_name, r.rel_name, r.key_columns, r.capture_old, r.makedelta,
                    coalesce(array_agg(w.name ORDER BY w.name) FILTER (WHERE w.name IS NOT NULL AND (w.makedelta OR r.makedelta)), '{}'),
                    coalesce(array_agg(w.name ORDER BY w.name) FILTER (WHERE w.name IS NOT NULL AND NOT (w.makedelta OR r.makedelta)), '{}')
               FROM ibex.sync s
               JOIN ibex.dbgroup_member m ON m.dbgroup = s.dbgroup AND m.role = 'source'
               JOIN ibex.herd_member h ON h.herd = s.herd
               JOIN ibex.relation r ON r.id = h.relation AND r.kind = 'table'
               LEFT JOIN (ibex.sync w
                          JOIN ibex.dbgroup_member wm ON wm.dbgroup = w.dbgroup
                          JOIN ibex.herd_member wh ON wh.herd = w.herd)
                      ON wm.db = m.db AND wh.relation = r.id AND w.name <> s.name
                     AND EXISTS (SELECT 1 FROM ibex.dbgroup_member further
                                  WHERE further.dbgroup = s.dbgroup
                                    AND further.db NOT IN (SELECT reach.db FROM ibex.dbgroup_member reach
                                                            WHERE reach.dbgroup = w.dbgroup))
              WHERE m.db = $1
              GROUP BY s.name, s.autokick, r.schema_name, r.rel_name, r.key_columns, r.capture_old, r.makedelta
              ORDER BY r.schema_name, r.rel_name, s.name",
            &[&db],
        )
        .await
        .ctx(|| format!("finding the tables read from db {db}"))?;
    Ok((
        syncs.iter().map(|r| CaptureReader { sync: r.get(0), multi_source: r.get(1) }).collect(),
        rows.iter()
            .map(|r| {
                let table_makedelta: bool = r.get(6);
                let captured: Vec<String> = r.get(7);
                CaptureNeed {
                    sync: r.get(0),
                    autokick: r.get(1),
                    table: crate::pg::QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
                    key: r.get(4),
                    capture_old: r.get(5),
                    ibex_writes: match (captured.is_empty(), table_makedelta) {
                        (true, _) => "none",
                        (false, true) => "all",
                        (false, false) => "asked",
                    },
                    uncaptured_writers: r.get(8),
                }
            })
            .collect(),
    ))
}
