//! The KID algorithm: one sync cycle, and what it needs (the plan from the
//! catalog, table checks, capture setup).

pub mod compare;
mod connection;
mod cycle;
pub mod ddl;
pub mod hooks;
mod kid;
pub mod pause;
pub mod plan;
pub mod progress;
pub mod setup;
pub mod stagger;
pub mod validate;

pub use cycle::{CycleOutcome, NewCursor};
pub use kid::{Kid, application_name as kid_application_name, syncdone_channel};
pub use plan::{DbId, Plan, PlanDb, TableId};
pub use validate::TableSpec;
