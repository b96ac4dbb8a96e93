//! The daemon: one process, Bucardo's roles as supervised tokio tasks.
//! The MCP listens on the control database and supervises one CTL per
//! active sync and the VAC; each CTL owns a KID that runs its cycles.

mod ctl;
mod hub;
mod lease;
mod mcp;
pub mod metrics;
mod notify;
pub mod pidfile;
mod status_page;
mod vac;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

pub use mcp::run;

use crate::error::Result;
use crate::logging::LevelHandle;
use crate::pg::{self, Client, ConnInfo};

/// Channels on the control database.
pub const PING: &str = "ibex_ping";
pub const PONG: &str = "ibex_pong";
pub const RELOAD: &str = "ibex_reload";
pub const RELOADED: &str = "ibex_reloaded";
pub const STOP: &str = "ibex_stop";

/// `ibex kick SYNC` notifies this channel.
pub fn kick_channel(sync: &str) -> String {
    format!("ibex_kick_{sync}")
}

/// What the daemon needs before it can read the catalog.
#[derive(Clone)]
pub struct DaemonOptions {
    pub control: ConnInfo,
    pub pid_file: PathBuf,
    pub metrics_address: Option<String>,
    /// Changes the log level when the catalog's log_level changes.
    pub log_level: Option<LevelHandle>,
}

/// One connection to the control database shared by every task; it is
/// re-opened when it breaks (the catalog can restart under a running daemon).
pub struct SharedCatalog {
    info: ConnInfo,
    client: Mutex<Option<Arc<Client>>>,
}

impl SharedCatalog {
    pub fn new(info: ConnInfo) -> Arc<Self> {
        Arc::new(SharedCatalog { info, client: Mutex::new(None) })
    }

    pub async fn get(&self) -> Result<Arc<Client>> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(pg::connect(&self.info, "ibex daemon").await?);
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// Exponential backoff: 1 s, 2 s, 4 s ... up to a minute.
pub fn backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(std::time::Duration::from_secs(60))
}
