//! One wasmtime engine per process: components compiled once (or loaded
//! precompiled from the catalog) and cached by sha256, a new store per
//! call (cheap, and required after a trap), fuel and an epoch deadline per
//! call, a memory cap from the manifest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use super::bindings::{conflict_handler, row_transform, sync_hooks};
use super::host::{HostDbs, HostState};
use super::manifest::{Manifest, PluginKind};
use crate::error::{Error, Result};

/// How often the engine's epoch advances: the resolution of timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    compiled: Mutex<HashMap<String, Component>>,
}

/// A plugin ready to call: its manifest and its pre-instantiated component.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub name: String,
    pub sha256: String,
    pub manifest: Manifest,
    pub(super) pre: Pre,
}

#[derive(Clone)]
pub(super) enum Pre {
    Conflict(conflict_handler::ConflictHandlerPre<HostState>),
    Transform(row_transform::RowTransformPre<HostState>),
    Hooks(sync_hooks::SyncHooksPre<HostState>),
}

fn plugin_error(msg: impl Into<String>) -> Error {
    Error::Plugin(msg.into())
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
        Ok(PluginRuntime { engine, linker, compiled: Mutex::new(HashMap::new()) })
    }

    /// Compiles to native code once, at `ibex add plugin`, so every daemon
    /// loads it in milliseconds.
    pub fn precompile(&self, wasm: &[u8]) -> Result<Vec<u8>> {
        self.engine
            .precompile_component(wasm)
            .map_err(|e| plugin_error(format!("not a valid WebAssembly component: {}", first_line(&e))))
    }

    fn component(&self, sha256: &str, wasm: &[u8], precompiled: Option<&[u8]>) -> Result<Component> {
        if let Some(c) = self.compiled.lock().ok().and_then(|m| m.get(sha256).cloned()) {
            return Ok(c);
        }
        // SAFETY: the precompiled bytes were made by this engine build at
        // `ibex add plugin` and stored beside their sha256; a mismatch of
        // engine versions or settings is detected by deserialize and we
        // compile from the wasm bytes instead.
        let loaded = precompiled.and_then(|bytes| unsafe { Component::deserialize(&self.engine, bytes) }.ok());
        let component = match loaded {
            Some(c) => c,
            None => Component::new(&self.engine, wasm)
                .map_err(|e| plugin_error(format!("not a valid WebAssembly component: {}", first_line(&e))))?,
        };
        if let Ok(mut map) = self.compiled.lock() {
            map.insert(sha256.to_string(), component.clone());
        }
        Ok(component)
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
    pub fn load(
        &self,
        name: &str,
        sha256: &str,
        wasm: &[u8],
        precompiled: Option<&[u8]>,
        manifest: Manifest,
    ) -> Result<LoadedPlugin> {
        let component = self.component(sha256, wasm, precompiled)?;
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
        Ok(LoadedPlugin { name: name.to_string(), sha256: sha256.to_string(), manifest, pre })
    }

    /// A fresh store for one call, with the plugin's limits armed.
    pub(super) fn store(&self, plugin: &LoadedPlugin, dbs: Arc<HostDbs>) -> Result<Store<HostState>> {
        let mut store = Store::new(&self.engine, HostState::new(&plugin.name, &plugin.manifest, dbs));
        store.limiter(|state| &mut state.limits);
        store.set_fuel(plugin.manifest.fuel).map_err(|e| plugin_error(format!("setting fuel: {e}")))?;
        let ticks = (plugin.manifest.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok(store)
    }
}

fn first_line(err: &wasmtime::Error) -> String {
    let text = format!("{err:#}");
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

/// Says why a call failed, in words an operator can act on.
pub(super) fn describe_failure(plugin: &LoadedPlugin, err: &wasmtime::Error, stderr: &str) -> String {
    let m = &plugin.manifest;
    let cause = match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => format!("it used all its fuel ({} units; raise it with fuel=)", m.fuel),
        Some(Trap::Interrupt) => format!("it ran longer than its timeout ({} ms)", m.timeout.as_millis()),
        Some(Trap::StackOverflow) => "its stack overflowed".to_string(),
        Some(trap) => format!("it trapped: {trap}"),
        None => {
            let text = format!("{err:#}");
            if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
                format!("it tried to use more than its memory cap ({} bytes; raise it with memory=)", m.memory)
            } else {
                first_line(err)
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
    format!("{cause}{panic}")
}
