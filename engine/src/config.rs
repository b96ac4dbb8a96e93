//! `ibex.toml`: only what is needed before the catalog is reachable (the
//! control DSN, logging, pid file, metrics address, plugin limit defaults).
//! Everything else lives in the catalog.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pg::ConnInfo;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IbexToml {
    /// libpq key=value string or postgres:// URL of the control database.
    pub control: Option<String>,
    #[serde(default)]
    pub log: LogConfig,
    /// Where the daemon writes its pid; default `ibex.pid` in the state dir.
    pub pid_file: Option<PathBuf>,
    /// `host:port` to serve Prometheus metrics on; off when absent.
    pub metrics_address: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// terse, normal, verbose or debug (the catalog's log_level wins once read).
    pub level: Option<String>,
    /// plain or json.
    pub format: Option<String>,
    /// A file to append to; stderr when absent.
    pub file: Option<PathBuf>,
}

/// Where the settings came from, for messages.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub toml: IbexToml,
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// Reads `explicit`, else `./ibex.toml`, else `~/.config/ibex/ibex.toml`;
    /// none at all is fine.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded> {
        let candidates: Vec<PathBuf> = match explicit {
            Some(path) => vec![path.to_path_buf()],
            None => {
                let mut c = vec![PathBuf::from("ibex.toml")];
                if let Some(home) = std::env::var_os("HOME") {
                    c.push(PathBuf::from(home).join(".config/ibex/ibex.toml"));
                }
                c
            }
        };
        for path in candidates {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let toml: IbexToml = toml::from_str(&text)
                        .map_err(|err| Error::Config(format!("{}: {}", path.display(), err.to_string().trim())))?;
                    return Ok(Loaded { toml, path: Some(path) });
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                    continue;
                }
                Err(err) => {
                    return Err(Error::Config(format!("cannot read {}: {err}", path.display())));
                }
            }
        }
        Ok(Loaded { toml: IbexToml::default(), path: None })
    }

    /// The control database: `--control`, else `IBEX_CONTROL`, else
    /// ibex.toml's `control`, else the local server's database `ibex`.
    pub fn control(&self, flag: Option<&str>) -> Result<ConnInfo> {
        if let Some(dsn) = flag {
            return ConnInfo::from_dsn(dsn);
        }
        if let Ok(dsn) = std::env::var("IBEX_CONTROL")
            && !dsn.trim().is_empty()
        {
            return ConnInfo::from_dsn(&dsn);
        }
        if let Some(dsn) = &self.toml.control {
            return ConnInfo::from_dsn(dsn).map_err(|err| match (&self.path, err) {
                (Some(path), Error::Config(msg)) => Error::Config(format!("{}: control: {msg}", path.display())),
                (_, other) => other,
            });
        }
        Ok(ConnInfo { dbname: "ibex".into(), ..ConnInfo::default() })
    }
}

/// This host's name, as daemons record it in the catalog (empty if unreadable).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Where ibex keeps its own state on this host (pid file, default log,
/// compiled plugins): `$IBEX_STATE_DIR` if set, else `/run/ibex` for root,
/// else `$XDG_STATE_HOME/ibex` (or `~/.local/state/ibex`). Created private
/// (0700) by whoever writes it.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IBEX_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/ibex");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ibex");
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| ".".into());
    home.join(".local/state/ibex")
}

/// Creates a private directory (0700) if missing; refuses one that other
/// users can write (they could plant a pid file or compiled code there).
pub fn prepare_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::Config(format!("cannot create the directory {}: {e}", dir.display())))?;
        return Ok(());
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::Config(format!("cannot read the directory {}: {e}", dir.display())))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let others_write = meta.permissions().mode() & 0o022 != 0;
    let sticky = meta.permissions().mode() & 0o1000 != 0;
    if others_write && !sticky || (others_write && meta.uid() != me && meta.uid() != 0) {
        return Err(Error::Config(format!(
            "the directory {} can be written by other users: use a private directory",
            dir.display()
        )));
    }
    Ok(())
}
