//! Builds plugins for the tests: the official ones in `plugins/` and the
//! misbehaving ones in `tests/plugins/`, for `wasm32-wasip2`, into a target
//! dir of their own (so a build from inside `cargo test` never waits on the
//! lock of the test build itself). Each is built once per test process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn build(manifest: &Path, package: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().map_err(|_| anyhow::anyhow!("plugin build lock poisoned"))?;
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(package) {
        return Ok(path.clone());
    }
    let target_dir = workspace_root().join("target/plugins");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--profile", "plugin", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(manifest)
        .args(["-p", package, "--target-dir"])
        .arg(&target_dir)
        .output()
        .context("running cargo to build a plugin")?;
    if !out.status.success() {
        bail!("building plugin {package} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let path = target_dir.join("wasm32-wasip2/plugin").join(format!("{}.wasm", package.replace('-', "_")));
    if !path.exists() {
        bail!("building plugin {package} made no {}", path.display());
    }
    built.insert(package.to_string(), path.clone());
    Ok(path)
}

/// An official plugin from `plugins/NAME`.
pub fn official(name: &str) -> Result<PathBuf> {
    build(&workspace_root().join("Cargo.toml"), name)
}

/// A test plugin from `tests/plugins/NAME` (its own workspace).
pub fn for_tests(name: &str) -> Result<PathBuf> {
    build(&workspace_root().join("tests/plugins").join(name).join("Cargo.toml"), name)
}

/// A Python plugin from `plugins/NAME/app.py`, built with componentize-py
/// for `world` (installed by scripts/install-deps.sh).
pub fn python(name: &str, world: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().map_err(|_| anyhow::anyhow!("plugin build lock poisoned"))?;
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return Ok(path.clone());
    }
    let root = workspace_root();
    let out_dir = root.join("target/plugins/python");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("{}.wasm", name.replace('-', "_")));
    let result = Command::new("componentize-py")
        .arg("-d")
        .arg(root.join("wit"))
        .args(["-w", world, "componentize", "app", "-o"])
        .arg(&out)
        .current_dir(root.join("plugins").join(name))
        .output()
        .context("running componentize-py (install it with `pip install componentize-py==0.25.*`)")?;
    if !result.status.success() {
        bail!("building Python plugin {name} failed:\n{}", String::from_utf8_lossy(&result.stderr));
    }
    built.insert(name.to_string(), out.clone());
    Ok(out)
}
