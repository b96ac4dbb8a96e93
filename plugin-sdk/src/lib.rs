//! The guest side of ibex plugins: conflict handlers, row transforms and
//! sync hooks written in Rust and built as WebAssembly components for
//! `wasm32-wasip2`. The WIT contract (`wit/ibex.wit`) and the traits that
//! implement it arrive with the plugin work; until then this crate only
//! reserves its place in the workspace.
