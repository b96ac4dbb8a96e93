//! One wasmtime engine per process: components compiled once and cached by
//! sha256, a new store per call (cheap, and required after a trap), fuel
//! and an epoch deadline per call, a fuel budget per run, a memory and a
//! table cap from the manifest.
//!
//! Native code is only ever code this host compiled: the catalog holds the
//! WebAssembly bytes and their sha256 (checked at every load), and the
//! compiled form is cached in a private directory on this host, each file
//! authenticated with an HMAC under a key only this host's ibex user can
//! read. A cache file that fails the check is recompiled, never run.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use super::bindings::{conflict_handler, row_transform, sync_hooks};
use super::host::{HostDbs, HostState};
use crate::catalog::manifest::{Manifest, PluginKind};
use crate::error::{Error, PluginCause, PluginFailure, Result};

/// How often the engine's epoch advances: the resolution of timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    compiled: Mutex<HashMap<String, Component>>,
    /// Where compiled code is cached, with its key; None: compile in memory.
    cache: Option<CodeCache>,
}

/// A plugin ready to call: its manifest, its database role and its
/// pre-instantiated component.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub name: String,
    pub sha256: String,
    pub manifest: Manifest,
    /// Its database role (see `roles.rs`).
    pub role: String,
    pub(super) pre: Pre,
}

/// Compiled components on disk, each file `MAC || code`, the MAC (HMAC-SHA256)
/// over the component's sha256, the engine's compatibility hash and the code.
struct CodeCache {
    dir: PathBuf,
    key: Vec<u8>,
    engine_hash: String,
}

const MAC_LEN: usize = 32;

impl CodeCache {
    /// The cache in ibex's state directory; None (with a warning) when it
    /// cannot be made private, in which case components compile in memory.
    fn open(engine: &Engine) -> Option<CodeCache> {
        let dir = crate::config::state_dir().join("plugin-cache");
        let opened = crate::config::prepare_dir(&dir).and_then(|()| Self::key(&dir));
        match opened {
            Ok(key) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                engine.precompile_compatibility_hash().hash(&mut hasher);
                Some(CodeCache { dir, key, engine_hash: format!("{:016x}", hasher.finish()) })
            }
            Err(err) => {
                tracing::warn!(error = %err, "no private cache for compiled plugins; compiling them in memory at each start");
                None
            }
        }
    }

    /// The host's key: 32 random bytes in a 0600 file, made once.
    fn key(dir: &Path) -> Result<Vec<u8>> {
        let path = dir.join("key");
        if let Ok(key) = std::fs::read(&path)
            && key.len() == 32
        {
            return Ok(key);
        }
        let mut key = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", path.display())))?;
        file.write_all(&key).map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
        Ok(key)
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_hash))
    }

    fn mac(&self, sha256: &str, code: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(sha256.as_bytes());
        mac.update(self.engine_hash.as_bytes());
        mac.update(code);
        mac
    }

    /// The cached code, if it is there and authentic.
    fn read(&self, sha256: &str) -> Option<Vec<u8>> {
        let path = self.path(sha256);
        let bytes = std::fs::read(&path).ok()?;
        if bytes.len() > MAC_LEN && self.mac(sha256, &bytes[MAC_LEN..]).verify_slice(&bytes[..MAC_LEN]).is_ok() {
            return Some(bytes[MAC_LEN..].to_vec());
        }
        tracing::warn!(path = %path.display(), "compiled plugin failed its authenticity check: recompiling it, not running it");
        let _ = std::fs::remove_file(&path);
        None
    }

    fn write(&self, sha256: &str, code: &[u8]) {
        let path = self.path(sha256);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            file.write_all(&self.mac(sha256, code).finalize().into_bytes())?;
            file.write_all(code)?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(err) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), error = %err, "cannot cache a compiled plugin; it compiles again next start");
        }
    }
}

#[derive(Clone)]
pub(super) enum Pre {
    Conflict(conflict_handler::ConflictHandlerPre<HostState>),
    Transform(row_transform::RowTransformPre<HostState>),
    Hooks(sync_hooks::SyncHooksPre<HostState>),
}

fn plugin_error(msg: impl Into<String>) -> Error {
    Error::plugin_unusable(msg)
}

impl PluginRuntime {
    /// The process's runtime (created on first use).
    pub fn get() -> Result<&'static PluginRuntime> {
        static RUNTIME: OnceLock<std::result::Result<PluginRuntime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| PluginRuntime::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| plugin_error(format!("cannot start the WebAssembly runtime: {e}")))
    }

    fn new() -> Result<PluginRuntime> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| plugin_error(format!("wasmtime: {e}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| plugin_error(format!("linking WASI: {e}")))?;
        // The worlds share `types` and `host`: later definitions replace
        // earlier ones with the same implementation.
        linker.allow_shadowing(true);
        let link = |e: wasmtime::Error| plugin_error(format!("linking the host: {e}"));
        conflict_handler::ConflictHandler::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(link)?;
        row_transform::RowTransform::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(link)?;
        sync_hooks::SyncHooks::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(link)?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("ibex-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| plugin_error(format!("cannot start the epoch thread: {e}")))?;
        let cache = CodeCache::open(&engine);
        Ok(PluginRuntime { engine, linker, compiled: Mutex::new(HashMap::new()), cache })
    }

    /// The component for `wasm`, whose sha256 must be `sha256`: from memory,
    /// from this host's authenticated cache, or compiled now (and cached).
    fn component(&self, sha256: &str, wasm: &[u8]) -> Result<Component> {
        if let Some(c) = self.compiled.lock().ok().and_then(|m| m.get(sha256).cloned()) {
            return Ok(c);
        }
        if super::sha256_hex(wasm) != sha256 {
            return Err(plugin_error(format!(
                "its component's bytes do not match their recorded sha256 {sha256}: the catalog entry was altered; replace it with `ibex update plugin NAME FILE.wasm`"
            )));
        }
        let cached = self.cache.as_ref().and_then(|cache| cache.read(sha256)).and_then(|code| {
            // SAFETY: `code` was compiled by this host's engine (its file
            // carries an HMAC under this host's private key, checked above,
            // bound to the component's sha256 and the engine's
            // compatibility hash).
            match unsafe { Component::deserialize(&self.engine, &code) } {
                Ok(c) => Some(c),
                Err(err) => {
                    tracing::warn!(error = %first_line(&err), "cached plugin code unusable; recompiling");
                    None
                }
            }
        });
        let component = match cached {
            Some(c) => c,
            None => {
                let component = Component::new(&self.engine, wasm)
                    .map_err(|e| plugin_error(format!("not a valid WebAssembly component: {}", first_line(&e))))?;
                if let Some(cache) = &self.cache {
                    match component.serialize() {
                        Ok(code) => cache.write(sha256, &code),
                        Err(err) => tracing::warn!(error = %first_line(&err), "cannot serialize a compiled plugin"),
                    }
                }
                component
            }
        };
        if let Ok(mut map) = self.compiled.lock() {
            map.insert(sha256.to_string(), component.clone());
        }
        Ok(component)
    }

    /// What the component imports (interface names), for review at `add plugin`.
    pub fn imports(&self, wasm: &[u8]) -> Result<Vec<String>> {
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| plugin_error(format!("not a valid WebAssembly component: {}", first_line(&e))))?;
        let ty = component.component_type();
        Ok(ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect())
    }

    /// Which worlds the component implements.
    pub fn kinds(&self, wasm: &[u8]) -> Result<Vec<PluginKind>> {
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| plugin_error(format!("not a valid WebAssembly component: {}", first_line(&e))))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| plugin_error(format!("the component imports what ibex does not offer: {}", first_line(&e))))?;
        let mut kinds = Vec::new();
        if conflict_handler::ConflictHandlerPre::new(pre.clone()).is_ok() {
            kinds.push(PluginKind::ConflictHandler);
        }
        if row_transform::RowTransformPre::new(pre.clone()).is_ok() {
            kinds.push(PluginKind::RowTransform);
        }
        if sync_hooks::SyncHooksPre::new(pre).is_ok() {
            kinds.push(PluginKind::SyncHooks);
        }
        Ok(kinds)
    }

    /// Prepares a plugin for calls; checks it against its manifest's world.
    pub fn load(&self, name: &str, sha256: &str, wasm: &[u8], role: &str, manifest: Manifest) -> Result<LoadedPlugin> {
        let component = self.component(sha256, wasm).map_err(|e| match e {
            Error::Plugin { message, .. } => plugin_error(format!("plugin {name}: {message}")),
            other => other,
        })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| plugin_error(format!("plugin {name} imports what ibex does not offer: {}", first_line(&e))))?;
        let wrong_world = |e: wasmtime::Error| {
            plugin_error(format!(
                "plugin {name} is not a {} (ibex:plugin/{}@0.1.0): {}",
                manifest.kind,
                manifest.kind,
                first_line(&e)
            ))
        };
        let pre = match manifest.kind {
            PluginKind::ConflictHandler => {
                Pre::Conflict(conflict_handler::ConflictHandlerPre::new(pre).map_err(wrong_world)?)
            }
            PluginKind::RowTransform => Pre::Transform(row_transform::RowTransformPre::new(pre).map_err(wrong_world)?),
            PluginKind::SyncHooks => Pre::Hooks(sync_hooks::SyncHooksPre::new(pre).map_err(wrong_world)?),
        };
        Ok(LoadedPlugin { name: name.to_string(), sha256: sha256.to_string(), manifest, role: role.to_string(), pre })
    }

    /// A fresh store for one call, with the plugin's limits armed: its fuel
    /// per call, or what is left of its fuel for the run if that is less.
    pub(super) fn store(
        &self,
        plugin: &LoadedPlugin,
        dbs: Arc<HostDbs>,
    ) -> std::result::Result<Store<HostState>, PluginCause> {
        let m = &plugin.manifest;
        let left = m.run_fuel.saturating_sub(dbs.spent(&plugin.name).fuel);
        if left == 0 {
            return Err(PluginCause::new(
                PluginFailure::Limit,
                format!("it used all its fuel for this run ({} units; raise it with run_fuel=)", m.run_fuel),
            ));
        }
        let mut store = Store::new(&self.engine, HostState::new(&plugin.name, &plugin.role, m, dbs));
        store.limiter(|state| &mut state.limits);
        store
            .set_fuel(m.fuel.min(left))
            .map_err(|e| PluginCause::new(PluginFailure::Unusable, format!("setting fuel: {e}")))?;
        let ticks = (m.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok(store)
    }
}

/// After a call: charges its fuel and statements to the run, and fails the
/// call if it ran into a limit (even one whose error the plugin ignored).
pub(super) fn settle(plugin: &LoadedPlugin, store: &Store<HostState>) -> std::result::Result<(), PluginCause> {
    let m = &plugin.manifest;
    let state = store.data();
    let given = m.fuel.min(m.run_fuel.saturating_sub(state.dbs.spent(&plugin.name).fuel));
    let used = given.saturating_sub(store.get_fuel().unwrap_or(0));
    state.dbs.spend(&plugin.name, used, state.statements());
    match &state.limit_hit {
        Some(limit) => Err(PluginCause::new(PluginFailure::Limit, limit.clone())),
        None => Ok(()),
    }
}

/// What the plugin's own error means: it gave up after the host refused it
/// something (Denied), or failed on its own (Error).
pub(super) fn returned_error(store: &Store<HostState>, message: &str) -> PluginCause {
    let failure = if store.data().denied { PluginFailure::Denied } else { PluginFailure::Error };
    PluginCause::new(failure, format!("it returned an error: {message}"))
}

fn first_line(err: &wasmtime::Error) -> String {
    let text = format!("{err:#}");
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

/// Says why a call failed, in words an operator can act on.
pub(super) fn describe_failure(plugin: &LoadedPlugin, err: &wasmtime::Error, stderr: &str) -> PluginCause {
    let m = &plugin.manifest;
    let (failure, cause) = match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => (
            PluginFailure::Limit,
            format!(
                "it used all its fuel ({} units per call, {} per run; raise them with fuel= or run_fuel=)",
                m.fuel, m.run_fuel
            ),
        ),
        Some(Trap::Interrupt) => {
            (PluginFailure::Limit, format!("it ran longer than its timeout ({} ms)", m.timeout.as_millis()))
        }
        Some(Trap::StackOverflow) => (PluginFailure::Limit, "its stack overflowed".to_string()),
        Some(trap) => (PluginFailure::Trap, format!("it trapped: {trap}")),
        None => {
            let text = format!("{err:#}");
            if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
                (
                    PluginFailure::Limit,
                    format!("it tried to use more than its memory cap ({} bytes; raise it with memory=)", m.memory),
                )
            } else if text.contains("table") && (text.contains("grow") || text.contains("limit")) {
                (
                    PluginFailure::Limit,
                    format!(
                        "it tried to grow a table past its table_elements limit ({}; raise it with table_elements=)",
                        m.table_elements
                    ),
                )
            } else {
                (PluginFailure::Trap, first_line(err))
            }
        }
    };
    // A Rust guest's panic lands on stderr: "thread ... panicked at FILE:" and the message.
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let panic = lines
        .iter()
        .position(|l| l.contains("panicked"))
        .map(|i| format!(" ({})", lines[i..(i + 2).min(lines.len())].join(" ")))
        .unwrap_or_default();
    PluginCause::new(failure, format!("{cause}{panic}"))
}
