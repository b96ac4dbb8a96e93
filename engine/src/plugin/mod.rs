//! The plugin host: conflict handlers, row transforms and sync hooks as
//! WebAssembly components behind `wit/ibex.wit`, run by wasmtime in a
//! sandbox (no files, network or environment; fuel, a wall-clock deadline
//! and a memory cap per call).

pub mod bindings;
pub mod conflict;
pub mod convert;
pub mod hooks;
mod host;
pub mod roles;
mod runtime;
pub mod transform;

pub use crate::catalog::manifest::{Manifest, OnError, PluginKind, table_name};
pub use convert::{ColumnKind, Value};
pub use host::HostDbs;
pub use runtime::{LoadedPlugin, PluginRuntime};

/// The sha256 of a component, in hex: its identity in the catalog.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
