//! Everything one sync needs to run, read from the catalog: its dbs with
//! roles, its tables with keys, its sequences and the run settings.

use std::time::Duration;

use tokio_postgres::GenericClient;

use crate::catalog::{self, RelKind, Role, SyncRecord};
use crate::error::{Error, Result};
use crate::pg::{ConnInfo, QualifiedName};

pub use crate::ids::{DbId, TableId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDb {
    pub name: String,
    pub conn: ConnInfo,
    pub role: Role,
    pub priority: i32,
    pub capture: crate::capture::CaptureMode,
}

impl PlanDb {
    /// A source whose changes come from a logical replication slot.
    pub fn reads_wal(&self) -> bool {
        self.role == Role::Source && self.capture == crate::capture::CaptureMode::Wal
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTable {
    pub id: i32,
    pub name: QualifiedName,
    pub key: Vec<String>,
    pub capture_old: bool,
}

/// Settings from `ibex set` that a run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    pub retry_limit: u32,
    pub conflict_log_limit: usize,
    pub chunk_keys: usize,
    /// Bytes of the winners' rows a merge step holds in memory (see
    /// `sync/cycle/merge.rs`); more go to temporary files.
    pub merge_memory: usize,
    pub run_timeout: Duration,
    pub analyze_after_copy: bool,
    /// Delta rows one run takes from a source; more wait for the next run.
    pub window_rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub sync: SyncRecord,
    /// The catalog's id: it names what the catalog owns on each db (the
    /// WAL capture slot, plugin roles).
    pub catalog_id: String,
    /// In dbgroup order: the first source is the primary one (full copies
    /// come from it).
    pub dbs: Vec<PlanDb>,
    pub tables: Vec<PlanTable>,
    pub sequences: Vec<QualifiedName>,
    pub settings: RunSettings,
    /// Plugins the sync uses, with the sha256 of their component (so a
    /// replaced component makes a different plan).
    pub plugins: Vec<PluginRef>,
    /// Row transforms attached to the sync.
    pub transforms: Vec<PlanTransform>,
    /// Sync hooks: plugin and the points it runs at, in attachment order.
    pub hooks: Vec<(String, Vec<String>)>,
    /// Targets that are not PostgreSQL (`target/`), apart from `dbs`:
    /// nothing that connects to a sync's dbs sees them.
    pub foreign: Vec<crate::target::ForeignDb>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTransform {
    pub plugin: String,
    /// The relation id of the table it applies to; None: every table.
    pub table: Option<i32>,
    /// The db it applies to; None: every target.
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRef {
    pub name: String,
    pub sha256: String,
}

impl Plan {
    pub async fn load(catalog: &impl GenericClient, sync: &str) -> Result<Plan> {
        let record = catalog::sync::get(catalog, sync).await?;
        let (catalog_id, _) = catalog::identity(catalog).await?;
        let group = catalog::dbgroup::get(catalog, &record.dbgroup).await?;
        let mut dbs = Vec::new();
        let mut foreign = Vec::new();
        for member in &group.members {
            let db = catalog::dbs::get(catalog, &member.db).await?;
            if let Some(spec) = db.target {
                if member.role != Role::Target {
                    return Err(Error::Refused(format!(
                        "db {} is a {} db and can only be a target, but dbgroup {} gives it the role {}: sources and fullcopy dbs must be PostgreSQL; use {}:target",
                        db.name,
                        spec.type_name(),
                        group.name,
                        member.role,
                        db.name
                    )));
                }
                foreign.push(crate::target::ForeignDb { name: db.name, spec });
                continue;
            }
            dbs.push(PlanDb {
                name: db.name,
                conn: db.conn,
                role: member.role,
                priority: member.priority,
                capture: db.capture,
            });
        }
        if !dbs.iter().any(|d| d.role == Role::Source) {
            return Err(Error::Sync(format!(
                "sync {sync} has no source db: give one db of dbgroup {} the role source",
                group.name
            )));
        }
        let herd = catalog::herd::get(catalog, &record.herd).await?;
        let mut tables = Vec::new();
        let mut sequences = Vec::new();
        for rel in catalog::relation::list(catalog, None).await? {
            if !rel.herds.contains(&herd.name) {
                continue;
            }
            match rel.kind {
                RelKind::Table => tables.push(PlanTable {
                    id: rel.id,
                    name: rel.name,
                    key: rel.key_columns,
                    capture_old: rel.capture_old,
                }),

                RelKind::Sequence => sequences.push(rel.name),
            }
        }
        let setting = async |key: &str| catalog::setting::get(catalog, key).await.map(|s| s.value);
        let count = |key: &str, value: String| {
            value.parse::<u64>().map_err(|_| {
                Error::Catalog(format!("setting {key} has a bad value {value:?}: fix it with `ibex set {key}=...`"))
            })
        };
        let duration = |key: &str, value: String| {
            catalog::sync::parse_duration(key, &value)?
                .ok_or_else(|| Error::Catalog(format!("setting {key} must be longer than zero")))
        };
        let settings = RunSettings {
            retry_limit: count("retry_limit", setting("retry_limit").await?)? as u32,
            conflict_log_limit: count("conflict_log_limit", setting("conflict_log_limit").await?)? as usize,
            chunk_keys: count("chunk_keys", setting("chunk_keys").await?)?.max(1) as usize,
            merge_memory: (count("merge_memory_mib", setting("merge_memory_mib").await?)?.max(1) as usize)
                .saturating_mul(1 << 20),
            run_timeout: duration("run_timeout", setting("run_timeout").await?)?,
            analyze_after_copy: setting("analyze_after_copy").await? == "true",
            window_rows: count("window_rows", setting("window_rows").await?)?.max(1),
        };
        let mut plugins = Vec::new();
        if let crate::catalog::ConflictStrategy::Plugin(name) = &record.params.conflict_strategy {
            let plugin = catalog::plugin::get(catalog, name).await?;
            if plugin.manifest.kind != crate::plugin::PluginKind::ConflictHandler {
                return Err(Error::Sync(format!(
                    "sync {sync} uses plugin {name} as its conflict handler, but it is a {}",
                    plugin.manifest.kind
                )));
            }
            plugins.push(PluginRef { name: plugin.name, sha256: plugin.sha256 });
        }
        let mut transforms = Vec::new();
        let mut hooks = Vec::new();
        for used in catalog::plugin::uses_of_sync(catalog, sync).await? {
            if !plugins.iter().any(|p| p.name == used.plugin) {
                let plugin = catalog::plugin::get(catalog, &used.plugin).await?;
                plugins.push(PluginRef { name: plugin.name, sha256: plugin.sha256 });
            }
            if used.kind == "hook" {
                hooks.push((used.plugin, used.hook_points));
                continue;
            }
            let table = match &used.table {
                Some(name) => tables.iter().find(|t| &t.name == name).map(|t| t.id),
                None => None,
            };
            if used.table.is_some() && table.is_none() {
                continue; // the table left the herd
            }
            transforms.push(PlanTransform { plugin: used.plugin, table, target: used.target_db });
        }
        Ok(Plan { sync: record, catalog_id, dbs, tables, sequences, settings, plugins, transforms, hooks, foreign })
    }

    /// A db's id in a run: its place in `dbs`, or for a foreign target
    /// `dbs.len()` plus its place in `foreign`.
    pub fn db_index(&self, name: &str) -> Option<DbId> {
        self.dbs
            .iter()
            .position(|d| d.name == name)
            .map(DbId::new)
            .or_else(|| self.foreign.iter().position(|f| f.name == name).map(|i| self.foreign_id(i)))
    }

    /// A PostgreSQL db of the sync (not a foreign target).
    pub fn db(&self, db: DbId) -> &PlanDb {
        &self.dbs[db.index()]
    }

    /// The sync's PostgreSQL dbs, in dbgroup order.
    pub fn db_ids(&self) -> impl Iterator<Item = DbId> + use<> {
        (0..self.dbs.len()).map(DbId::new)
    }

    /// The id of `foreign[i]`: after every PostgreSQL db.
    pub fn foreign_id(&self, i: usize) -> DbId {
        DbId::new(self.dbs.len() + i)
    }

    /// The foreign targets, in the order of `foreign`.
    pub fn foreign_ids(&self) -> impl Iterator<Item = DbId> + use<> {
        let first = self.dbs.len();
        (0..self.foreign.len()).map(move |i| DbId::new(first + i))
    }

    fn with_role(&self, keep: impl Fn(Role) -> bool) -> impl Iterator<Item = DbId> {
        self.db_ids().filter(move |&d| keep(self.db(d).role))
    }

    pub fn sources(&self) -> impl Iterator<Item = DbId> + '_ {
        self.with_role(|r| r == Role::Source)
    }

    pub fn targets(&self) -> impl Iterator<Item = DbId> + '_ {
        self.with_role(|r| r == Role::Target)
    }

    /// The db full copies come from: the first source.
    pub fn primary_source(&self) -> DbId {
        self.sources().next().unwrap_or(DbId::new(0))
    }

    /// Dbs that take delta changes (sources and targets, not fullcopy).
    pub fn delta_dbs(&self) -> impl Iterator<Item = DbId> + '_ {
        self.with_role(|r| r != Role::Fullcopy)
    }

    pub fn fullcopy_dbs(&self) -> impl Iterator<Item = DbId> + '_ {
        self.with_role(|r| r == Role::Fullcopy)
    }
}
