//! The built-in `latest` strategy as a plugin: the newest change wins each
//! conflict; ties go to the higher priority, then to the name that sorts
//! first. It exists to measure what a plugin costs against the built-in.

use ibex_plugin_sdk::conflict::{Conflict, ConflictHandler, Decision, Verdict};
use ibex_plugin_sdk::{SyncInfo, TableInfo};

struct LatestWins;

impl ConflictHandler for LatestWins {
    fn resolve(sync: &SyncInfo, _table: &TableInfo, conflicts: Vec<Conflict>) -> Result<Verdict, String> {
        let rank = |db: u32, at: i64| {
            let info = &sync.dbs[db as usize];
            (at, info.priority, std::cmp::Reverse(info.name.clone()))
        };
        let decisions = conflicts
            .iter()
            .map(|c| {
                let best = c.versions.iter().max_by(|a, b| rank(a.db, a.changed_at).cmp(&rank(b.db, b.changed_at)));
                Decision::Winner(best.map_or(0, |v| v.db))
            })
            .collect();
        Ok(Verdict::PerKey(decisions))
    }
}

ibex_plugin_sdk::export_conflict_handler!(LatestWins);
