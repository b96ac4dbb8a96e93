//! Test harness for ibex: real PostgreSQL clusters started with initdb and
//! pg_ctl in temporary directories on free ports (as the `postgres` user
//! when the tests run as root), and a runner for the real `ibex` binary.

pub mod audit;
pub mod cluster;
pub mod daemon;
pub mod faults;
pub mod ibex;
pub mod load;
pub mod lookalikes;
pub mod mariadb;
pub mod plugins;
pub mod proxy;
pub mod setup;
pub mod versions;

pub use cluster::Cluster;
pub use daemon::Daemon;
pub use ibex::{Ibex, Outcome, catalog_snapshot, run_count};
pub use setup::Setup;
