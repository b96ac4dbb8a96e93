//! The pid file: where `ibex stop` and a second `ibex start` look first.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pg::ConnInfo;

/// The default pid file for a control database: one per catalog, in the
/// temporary directory, so two catalogs on one host do not collide.
pub fn default_path(control: &ConnInfo) -> PathBuf {
    let identity = control.describe();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    std::env::temp_dir().join(format!("ibex-{hash:016x}.pid"))
}

/// The pid in the file, if the file exists and that process is alive.
pub fn running(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited: it counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn write(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create the pid file's directory {}: {e}", dir.display())))?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
        .map_err(|e| Error::Config(format!("cannot write pid file {}: {e}", path.display())))
}

/// Removes the file if it still names this process.
pub fn remove(path: &Path) {
    if std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u32>().ok()) == Some(std::process::id()) {
        let _ = std::fs::remove_file(path);
    }
}
