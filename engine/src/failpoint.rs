//! Named points where tests make a run fail or pause on purpose, to prove
//! recovery from a crash at exactly that moment. The environment variable
//! `IBEX_FAILPOINTS` is a comma-separated list of `name` (the run fails
//! there) or `name=sleep(MS)` (the run waits there MS milliseconds, long
//! enough for a test to kill the daemon or a database while the run is
//! provably at that point). Each pause logs `failpoint NAME reached`, which
//! the tests wait for. Unset in production, where every check is one
//! environment lookup.

use std::time::Duration;

use crate::error::{Error, Result};

/// What `IBEX_FAILPOINTS` asks for at one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Fail,
    Sleep(Duration),
}

/// The action configured for `name` in `list` (the variable's value).
fn action_in(list: &str, name: &str) -> Option<Action> {
    list.split(',').find_map(|entry| {
        let (point, action) = match entry.split_once('=') {
            Some((point, action)) => (point.trim(), action.trim()),
            None => (entry.trim(), ""),
        };
        if point != name {
            return None;
        }
        if action.is_empty() {
            return Some(Action::Fail);
        }
        let millis = action.strip_prefix("sleep(").and_then(|a| a.strip_suffix(')')).and_then(|ms| ms.parse().ok());
        match millis {
            Some(ms) => Some(Action::Sleep(Duration::from_millis(ms))),
            None => {
                tracing::warn!(failpoint = name, action, "bad IBEX_FAILPOINTS action: use NAME or NAME=sleep(MS)");
                None
            }
        }
    })
}

fn action(name: &str) -> Option<Action> {
    std::env::var("IBEX_FAILPOINTS").ok().and_then(|list| action_in(&list, name))
}

fn failed(name: &str) -> Error {
    Error::Sync(format!("failpoint {name} hit (IBEX_FAILPOINTS)"))
}

/// Fails at `name` when asked to; a pause configured here blocks the
/// thread (use [`hit`] where the caller can await).
pub fn check(name: &str) -> Result<()> {
    match action(name) {
        Some(Action::Fail) => Err(failed(name)),
        Some(Action::Sleep(pause)) => {
            pause_blocking_for(name, pause);
            Ok(())
        }
        None => Ok(()),
    }
}

/// Fails or pauses at `name` when asked to, without blocking the runtime.
pub async fn hit(name: &str) -> Result<()> {
    match action(name) {
        Some(Action::Fail) => Err(failed(name)),
        Some(Action::Sleep(pause)) => {
            tracing::warn!(failpoint = name, ms = pause.as_millis() as u64, "failpoint {name} reached");
            tokio::time::sleep(pause).await;
            Ok(())
        }
        None => Ok(()),
    }
}

/// [`hit`] for the `db`-th of several concurrent steps, every one but the
/// first: the first goes on while the others wait or fail (e.g. some dbs
/// committed and others not yet).
pub async fn hit_after_first(db: usize, name: &str) -> Result<()> {
    if db == 0 { Ok(()) } else { hit(name).await }
}

/// Pauses the calling thread at `name` when a sleep is configured there
/// (for points inside synchronous callbacks, e.g. between the pieces of a
/// COPY); a plain `name` is ignored here, as the callback cannot fail.
pub fn pause_blocking(name: &str) {
    if let Some(Action::Sleep(pause)) = action(name) {
        pause_blocking_for(name, pause);
    }
}

fn pause_blocking_for(name: &str, pause: Duration) {
    tracing::warn!(failpoint = name, ms = pause.as_millis() as u64, "failpoint {name} reached");
    // On a runtime worker, the worker's queued tasks move to another
    // thread first: a task woken just before (held in the worker's
    // unstealable LIFO slot) would otherwise wait out the pause, e.g. the
    // MCP that answers `ibex ping`.
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_worker {
        tokio::task::block_in_place(|| std::thread::sleep(pause));
    } else {
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fail_and_sleep_forms() {
        let list = "after_commit, mid_copy=sleep(1500),odd=sleep(x)";
        assert_eq!(action_in(list, "after_commit"), Some(Action::Fail));
        assert_eq!(action_in(list, "mid_copy"), Some(Action::Sleep(Duration::from_millis(1500))));
        assert_eq!(action_in(list, "odd"), None);
        assert_eq!(action_in(list, "other"), None);
    }
}
