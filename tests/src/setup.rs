//! A cluster with the control catalog installed, and the steps scenario
//! tests share: registering dbs, running a sync, comparing tables.

use crate::cluster::HeldLocks;
use crate::{Cluster, Ibex, Outcome, catalog_snapshot};

pub struct Setup {
    pub cluster: Cluster,
    pub ibex: Ibex,
}

impl Setup {
    /// A fresh cluster with the catalog installed in database `ibex`.
    pub fn new() -> Setup {
        let cluster = Cluster::start().expect("starting a cluster");
        let ibex = Ibex::new(cluster.dsn("ibex")).expect("finding the ibex binary");
        ibex.sh("install").ok();
        Setup { cluster, ibex }
    }

    pub fn port_arg(&self) -> String {
        format!("port={}", self.cluster.port())
    }

    /// `ibex add db NAME dbname=DBNAME` on this cluster.
    pub fn add_db(&self, name: &str, dbname: &str) -> Outcome {
        self.add_db_on(name, dbname, self.cluster.port())
    }

    /// `ibex add db NAME dbname=DBNAME` on whatever listens on `port`
    /// (another cluster, or a fault proxy in front of one).
    pub fn add_db_on(&self, name: &str, dbname: &str, port: u16) -> Outcome {
        self.ibex.run(&[
            "add",
            "db",
            name,
            &format!("dbname={dbname}"),
            "host=127.0.0.1",
            &format!("port={port}"),
            "user=postgres",
        ])
    }

    /// Creates databases `names[i]` as copies of `template` and registers
    /// each as db `names[i]`.
    pub fn dbs_from(&self, template: &str, names: &[&str]) {
        for name in names {
            if *name != template {
                self.cluster.clone_db(template, name).expect("cloning a database");
            }
            self.add_db(name, name).ok();
        }
    }

    /// Database `src` made by `schema` and copied to `dst`, both registered;
    /// `tables` (space-separated) in herd `h`, and sync `sync` from src to
    /// dst with `settings` (`name=value ...`, or empty).
    pub fn one_way(schema: &str, tables: &str, sync: &str, settings: &str) -> Setup {
        Setup::one_way_capturing(schema, tables, sync, settings, "trigger")
    }

    /// [`Setup::one_way`] with `src` on WAL capture.
    pub fn one_way_wal(schema: &str, tables: &str, sync: &str, settings: &str) -> Setup {
        Setup::one_way_capturing(schema, tables, sync, settings, "wal")
    }

    fn one_way_capturing(schema: &str, tables: &str, sync: &str, settings: &str, capture: &str) -> Setup {
        let s = Setup::new();
        s.cluster.create_db("src").expect("creating database src");
        s.sql("src", schema);
        s.dbs_from("src", &["src", "dst"]);
        if capture != "trigger" {
            s.ibex.run(&["update", "db", "src", &format!("capture={capture}")]).ok();
        }
        s.ibex.sh(&format!("add table {tables} db=src herd=h")).ok();
        s.ibex.sh(&format!("add sync {sync} herd=h dbs=src:source,dst:target {settings}")).ok();
        s
    }

    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.cluster.psql(db, sql).unwrap_or_else(|e| panic!("SQL on {db} failed: {e:#}"))
    }

    /// Runs one cycle of `sync` while `holder` keeps its locks on `db`, and
    /// releases them once a session on `db` has waited on a lock for over a
    /// second (an attempt that gives up at once never does); returns the run.
    pub fn run_releasing_after_a_wait(&self, sync: &str, db: &str, holder: HeldLocks) -> serde_json::Value {
        std::thread::scope(|scope| {
            let running = scope.spawn(|| self.run(sync));
            let waiting = format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND wait_event_type = 'Lock'
                   AND now() - query_start > interval '1 second'"
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while self.sql(db, &waiting) != "1" {
                assert!(std::time::Instant::now() < deadline, "no attempt waited on the held locks");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            holder.release().expect("releasing the held locks");
            running.join().expect("the run's thread")
        })
    }

    /// Runs one cycle in the foreground; returns the run as JSON.
    pub fn run(&self, sync: &str) -> serde_json::Value {
        self.ibex.run(&["sync", "run", sync, "--json"]).ok().json()
    }

    /// Runs one cycle that must fail; returns stderr.
    pub fn run_fails(&self, sync: &str, needle: &str) -> String {
        self.ibex.run(&["sync", "run", sync]).fails_with(needle).stderr
    }

    /// Asserts `ibex compare SYNC` finds every db of the sync equal.
    pub fn assert_compare_clean(&self, sync: &str) {
        let out = self.ibex.run(&["compare", sync]);
        assert_eq!(out.code, 0, "compare {sync} found differences:\n{}{}", out.stdout, out.stderr);
    }

    /// Asserts every listed table holds the same rows on every listed db.
    pub fn assert_same(&self, dbs: &[&str], tables: &[&str]) {
        for table in tables {
            let first = self.cluster.table_hash(dbs[0], table).expect("hashing a table");
            for db in &dbs[1..] {
                let other = self.cluster.table_hash(db, table).expect("hashing a table");
                assert_eq!(first, other, "table {table} differs between {} and {db}", dbs[0]);
            }
        }
    }

    pub fn snapshot(&self) -> String {
        catalog_snapshot(&self.cluster, "ibex")
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}
