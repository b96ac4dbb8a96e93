//! The pid file: where `ibex stop` and a second `ibex start` look first.
//! It lives in a directory only its user can write (never a predictable
//! name in a world-writable one), is created exclusively, and a pid read
//! from it counts only if that process is an ibex binary.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{prepare_dir, state_dir};
use crate::error::{Error, Result};
use crate::pg::ConnInfo;

/// The default pid file for a control database: one per catalog, in the
/// state directory, so two catalogs on one host do not collide.
pub fn default_path(control: &ConnInfo) -> PathBuf {
    let hash = crate::names::fnv1a64(control.describe().into_bytes());
    state_dir().join(format!("ibex-{hash:016x}.pid"))
}

/// The pid in the file, if the file exists and that process is a live ibex.
pub fn running(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (alive(pid) && is_ibex(pid)).then_some(pid)
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited: it counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` runs an ibex binary (this one, or one named ibex): a pid
/// file naming some other process is stale, and that process is left alone.
pub fn is_ibex(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return false };
    let me = std::env::current_exe().ok().and_then(|me| me.canonicalize().ok());
    runs_ibex(&exe, me.as_deref())
}

/// Whether a process whose `/proc/PID/exe` reads `exe` runs ibex. A binary
/// replaced while it runs (a package upgrade) reads `PATH (deleted)`: that
/// daemon still runs, and must still be found by `ibex stop` and `start`.
fn runs_ibex(exe: &Path, me: Option<&Path>) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let bytes = exe.as_os_str().as_bytes();
    let exe = Path::new(std::ffi::OsStr::from_bytes(bytes.strip_suffix(b" (deleted)").unwrap_or(bytes)));
    if me.is_some_and(|me| me == exe) {
        return true;
    }
    exe.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == "ibex" || n.starts_with("ibex-"))
}

/// Writes this process's pid, creating the file exclusively (0600). A file
/// left by a process that is gone (or is not ibex) is replaced.
pub fn write(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_dir(dir)?;
    }
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut file) => {
                return file
                    .write_all(format!("{}\n", std::process::id()).as_bytes())
                    .map_err(|e| Error::Config(format!("cannot write pid file {}: {e}", path.display())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Some(pid) = running(path).filter(|p| *p != std::process::id()) {
                    return Err(Error::Refused(format!(
                        "ibex is already running (pid {pid}, pid file {})",
                        path.display()
                    )));
                }
                tracing::info!(path = %path.display(), "replacing a stale pid file");
                std::fs::remove_file(path)
                    .map_err(|e| Error::Config(format!("cannot remove stale pid file {}: {e}", path.display())))?;
            }
            Err(e) => return Err(Error::Config(format!("cannot create pid file {}: {e}", path.display()))),
        }
    }
    Err(Error::Config(format!("pid file {} keeps coming back: is another ibex starting?", path.display())))
}

/// Removes the file if it still names this process.
pub fn remove(path: &Path) {
    if std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u32>().ok()) == Some(std::process::id())
        && let Err(err) = std::fs::remove_file(path)
    {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove the pid file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_ibex_binary_still_counts_as_ibex() {
        let me = Path::new("/opt/bin/ibexd");
        assert!(runs_ibex(Path::new("/usr/bin/ibex (deleted)"), None));
        assert!(runs_ibex(Path::new("/opt/bin/ibexd (deleted)"), Some(me)));
        assert!(runs_ibex(Path::new("/opt/bin/ibexd"), Some(me)));
        assert!(!runs_ibex(Path::new("/usr/bin/postgres (deleted)"), Some(me)));
        assert!(!runs_ibex(Path::new("/usr/bin/bash"), Some(me)));
    }
}
