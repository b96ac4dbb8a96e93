//! Host bindings generated from `wit/ibex.wit`, one module per world. The
//! shared interfaces (`types`, `host`, ...) are generated once, in
//! `conflict_handler`, and mapped into the others with `with`.

pub mod conflict_handler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "conflict-handler",
        imports: { default: async },
        exports: { default: async },
        // `ibex plugin test` reads and prints these as JSON.
        additional_derives: [serde::Serialize, serde::Deserialize],
    });
}

pub mod row_transform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "row-transform",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize],
        with: {
            "ibex:plugin/types": super::conflict_handler::ibex::plugin::types,
            "ibex:plugin/host": super::conflict_handler::ibex::plugin::host,
        },
    });
}

pub mod sync_hooks {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sync-hooks",
        imports: { default: async },
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize],
        with: {
            "ibex:plugin/types": super::conflict_handler::ibex::plugin::types,
            "ibex:plugin/host": super::conflict_handler::ibex::plugin::host,
        },
    });
}

pub use conflict_handler::ibex::plugin::conflicts;
pub use conflict_handler::ibex::plugin::types;
