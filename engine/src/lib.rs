//! ibex: trigger-based, asynchronous, multi-master replication for
//! PostgreSQL in the lineage of Bucardo 5. Data flows one way through the
//! modules: cli -> catalog -> daemon -> sync -> (capture, conflict, plugin, pg).

pub mod capture;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod conflict;
pub mod daemon;
pub mod declare;
pub mod error;
pub mod failpoint;
pub mod ids;
pub mod logging;
pub mod names;
pub mod pg;
pub mod plugin;
pub mod sync;
pub mod target;

pub use error::{Error, Result};
