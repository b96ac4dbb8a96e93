//! Named points where tests make a run fail on purpose (environment
//! variable `IBEX_FAILPOINTS`, comma-separated), to prove recovery from a
//! crash at exactly that moment. Unset in production, where every check is
//! one environment lookup per run.

use crate::error::{Error, Result};

pub fn check(name: &str) -> Result<()> {
    match std::env::var("IBEX_FAILPOINTS") {
        Ok(list) if list.split(',').any(|p| p.trim() == name) => {
            Err(Error::Sync(format!("failpoint {name} hit (IBEX_FAILPOINTS)")))
        }
        _ => Ok(()),
    }
}
