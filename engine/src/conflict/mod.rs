//! Conflict strategies: given the versions of one key changed on several
//! sources in one window, which one wins. Pure functions over small inputs,
//! so the KID can call them per key while streaming.

use rand::Rng;

use crate::catalog::ConflictStrategy;
use crate::ids::DbId;

/// One source's change of a key: which db (of the sync's dbs) and
/// when (microseconds since 2000-01-01, PostgreSQL's timestamptz).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub db: DbId,
    pub changed_at: i64,
}

/// What happens to a conflicting key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every other db gets this db's row (or loses the row, if it was deleted there).
    Winner { db: DbId, reason: Reason },
    /// The key is left as it is on each db.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Latest,
    Priority,
    Name,
    LatestAllTables,
    Ordered,
    Random,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Latest => "latest change",
            Reason::Priority => "same time, higher priority",
            Reason::Name => "same time and priority, first by name",
            Reason::LatestAllTables => "latest change in any table of the sync",
            Reason::Ordered => "first in the conflict_strategy list",
            Reason::Random => "random",
        }
    }
}

/// The sync's dbs as the resolver sees them.
#[derive(Debug, Clone)]
pub struct Contender {
    pub name: String,
    pub priority: i32,
}

/// Decides conflicts for one run of one sync.
pub struct Resolver {
    strategy: ConflictStrategy,
    dbs: Vec<Contender>,
    /// For latest_all_tables: the db with the newest change of the run.
    run_winner: Option<DbId>,
}

/// `abort` strategy: the run must fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MustAbort;

impl Resolver {
    pub fn new(strategy: ConflictStrategy, dbs: Vec<Contender>) -> Self {
        Resolver { strategy, dbs, run_winner: None }
    }

    /// latest_all_tables needs, before any decision, the newest change time
    /// of each source over every table of the window.
    pub fn set_newest_per_db(&mut self, newest: &[Version]) {
        self.run_winner = (!newest.is_empty()).then(|| self.latest(newest).0);
    }

    pub fn needs_newest_per_db(&self) -> bool {
        self.strategy == ConflictStrategy::LatestAllTables
    }

    /// Decides one key changed on two or more sources.
    pub fn decide(&self, versions: &[Version]) -> Result<Decision, MustAbort> {
        Ok(match &self.strategy {
            ConflictStrategy::Latest => {
                let (db, reason) = self.latest(versions);
                Decision::Winner { db, reason }
            }
            ConflictStrategy::LatestAllTables => match self.run_winner {
                Some(db) if versions.iter().any(|v| v.db == db) => {
                    Decision::Winner { db, reason: Reason::LatestAllTables }
                }
                _ => {
                    let (db, reason) = self.latest(versions);
                    Decision::Winner { db, reason }
                }
            },
            ConflictStrategy::Ordered(order) => {
                let first = order.iter().find_map(|name| versions.iter().find(|v| &self.contender(v.db).name == name));
                match first {
                    Some(v) => Decision::Winner { db: v.db, reason: Reason::Ordered },
                    None => {
                        let (db, reason) = self.latest(versions);
                        Decision::Winner { db, reason }
                    }
                }
            }
            ConflictStrategy::Random => {
                let pick = rand::rng().random_range(0..versions.len());
                Decision::Winner { db: versions[pick].db, reason: Reason::Random }
            }
            ConflictStrategy::Skip => Decision::Skip,
            // A plugin decides in batches elsewhere; asked per key, it is latest.
            ConflictStrategy::Plugin(_) => {
                let (db, reason) = self.latest(versions);
                Decision::Winner { db, reason }
            }

            ConflictStrategy::Abort => return Err(MustAbort),
        })
    }

    /// Newest change wins; a tie goes to the higher priority, then to the
    /// name that sorts first, so every run decides the same way.
    fn latest(&self, versions: &[Version]) -> (DbId, Reason) {
        let rank = |v: &Version| {
            let db = self.contender(v.db);
            (v.changed_at, db.priority, std::cmp::Reverse(db.name.as_str()))
        };
        let best = versions.iter().max_by(|a, b| rank(a).cmp(&rank(b))).copied().unwrap_or(versions[0]);
        let tied: Vec<&Version> = versions.iter().filter(|v| v.changed_at == best.changed_at).collect();
        let reason = if tied.len() == 1 {
            Reason::Latest
        } else if tied
            .iter()
            .filter(|v| v.db != best.db)
            .all(|v| self.contender(v.db).priority < self.contender(best.db).priority)
        {
            Reason::Priority
        } else {
            Reason::Name
        };
        (best.db, reason)
    }

    pub fn db_name(&self, db: DbId) -> &str {
        &self.contender(db).name
    }

    fn contender(&self, db: DbId) -> &Contender {
        &self.dbs[db.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbs() -> Vec<Contender> {
        vec![
            Contender { name: "b".into(), priority: 0 },
            Contender { name: "a".into(), priority: 0 },
            Contender { name: "c".into(), priority: 5 },
        ]
    }

    fn v(db: usize, changed_at: i64) -> Version {
        Version { db: DbId::new(db), changed_at }
    }

    fn winner(db: usize, reason: Reason) -> Result<Decision, MustAbort> {
        Ok(Decision::Winner { db: DbId::new(db), reason })
    }

    #[test]
    fn latest_prefers_newest_then_priority_then_name() {
        let r = Resolver::new(ConflictStrategy::Latest, dbs());
        assert_eq!(r.decide(&[v(0, 10), v(1, 20)]), winner(1, Reason::Latest));
        assert_eq!(r.decide(&[v(0, 10), v(2, 10)]), winner(2, Reason::Priority));
        assert_eq!(r.decide(&[v(2, 10), v(0, 10)]), winner(2, Reason::Priority));
        assert_eq!(r.decide(&[v(0, 10), v(1, 10)]), winner(1, Reason::Name));
        assert_eq!(r.decide(&[v(1, 10), v(0, 10)]), winner(1, Reason::Name));
    }

    #[test]
    fn ordered_list_then_latest() {
        let r = Resolver::new(ConflictStrategy::Ordered(vec!["c".into(), "b".into()]), dbs());
        assert_eq!(r.decide(&[v(0, 99), v(2, 1)]), winner(2, Reason::Ordered));
        assert_eq!(r.decide(&[v(0, 1), v(1, 99)]), winner(0, Reason::Ordered));
    }

    #[test]
    fn latest_all_tables_uses_the_run_winner() {
        let mut r = Resolver::new(ConflictStrategy::LatestAllTables, dbs());
        r.set_newest_per_db(&[v(0, 50), v(1, 40)]);
        assert_eq!(r.decide(&[v(0, 1), v(1, 30)]), winner(0, Reason::LatestAllTables));
    }

    #[test]
    fn skip_abort_random() {
        assert_eq!(Resolver::new(ConflictStrategy::Skip, dbs()).decide(&[v(0, 1), v(1, 2)]), Ok(Decision::Skip));
        assert_eq!(Resolver::new(ConflictStrategy::Abort, dbs()).decide(&[v(0, 1), v(1, 2)]), Err(MustAbort));
        let r = Resolver::new(ConflictStrategy::Random, dbs());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            if let Ok(Decision::Winner { db, .. }) = r.decide(&[v(0, 1), v(1, 2)]) {
                seen.insert(db.index());
            }
        }
        assert_eq!(seen.len(), 2);
    }
}
