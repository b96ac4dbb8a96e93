//! Configuration as code: the catalog described by a TOML file.
//! `ibex plan FILE` compares the file with the catalog, `ibex apply FILE`
//! makes the catalog match it in one transaction, `ibex dump` writes the
//! catalog as such a file. One job per module: the file's types (`model`),
//! the typed catalog both sides are turned into (`state`), the difference
//! (`plan`), the change (`apply`) and the file written back (`dump`).

pub mod apply;
pub mod dump;
pub mod model;
pub mod plan;
pub mod state;

use std::path::Path;

use tokio_postgres::GenericClient;

use crate::error::Result;

/// A file checked against the catalog: both sides and their difference.
pub struct Planned {
    pub current: state::State,
    pub desired: state::State,
    pub plan: plan::Plan,
}

/// Reads and checks `path`, then compares it with the catalog. A bad file
/// is an error naming its line; nothing is changed here.
pub async fn plan_file(c: &impl GenericClient, path: &Path) -> Result<Planned> {
    let source = model::Source::read(path)?;
    let config = source.parse()?;
    let current = state::State::read(c).await?;
    let desired = state::State::resolve(&config, &source, &current)?;
    let plan = plan::diff(&current, &desired);
    Ok(Planned { current, desired, plan })
}
