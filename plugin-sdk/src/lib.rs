//! Write ibex plugins in Rust: conflict handlers, row transforms and sync
//! hooks, built as WebAssembly components for `wasm32-wasip2` against the
//! contract in `wit/ibex.wit` (`ibex:plugin@0.1.0`).
//!
//! Implement the trait of your plugin's kind and export it with the macro
//! of the same kind. A conflict handler that lets the newest change win,
//! except that rows owned by a tenant come from that tenant's database:
//!
//! ```no_run
//! use ibex_plugin_sdk::conflict::{Conflict, ConflictHandler, Decision, Verdict};
//! use ibex_plugin_sdk::{SyncInfo, TableInfo};
//!
//! struct TenantFirst;
//!
//! impl ConflictHandler for TenantFirst {
//!     fn resolve(sync: &SyncInfo, table: &TableInfo, conflicts: Vec<Conflict>) -> Result<Verdict, String> {
//!         let column = sync.config("tenant_column").unwrap_or("tenant");
//!         let decisions = conflicts
//!             .iter()
//!             .map(|c| {
//!                 // The db named like the row's tenant wins; else the newest change.
//!                 let owner = c.versions.iter().find(|v| {
//!                     let tenant = v.row.as_ref().and_then(|r| table.value(r, column)).and_then(|v| v.as_str());
//!                     tenant.is_some_and(|t| sync.db_index(t) == Some(v.db))
//!                 });
//!                 Decision::Winner(owner.unwrap_or_else(|| c.latest()).db)
//!             })
//!             .collect();
//!         Ok(Verdict::PerKey(decisions))
//!     }
//! }
//!
//! ibex_plugin_sdk::export_conflict_handler!(TenantFirst);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and add it with `ibex add plugin NAME target/wasm32-wasip2/release/NAME.wasm`.
//! `ibex plugin test NAME --input batch.json` runs it on a sample batch.
//!
//! Values: booleans, integers, floats and bytea arrive typed
//! ([`Value::Boolean`], [`Value::Int`], [`Value::Float`], [`Value::Bytes`]);
//! every other PostgreSQL type arrives as its exact text form
//! ([`Value::Text`]: numeric, dates, json, arrays, enums...), which is also
//! how to write it back. Rows are lists of values in the table's column
//! order; [`TableInfo::value`] and [`TableInfo::set`] find columns by name.

#[doc(hidden)]
#[allow(clippy::all)]
pub mod bindings {

    pub mod conflict_handler {
        wit_bindgen::generate!({
            path: "../wit",
            world: "conflict-handler",
            pub_export_macro: true,
            export_macro_name: "__export_conflict_handler",
            default_bindings_module: "ibex_plugin_sdk::bindings::conflict_handler",
            type_section_suffix: "ibex-conflict-handler",
        });
    }

    pub mod row_transform {
        wit_bindgen::generate!({
            path: "../wit",
            world: "row-transform",
            pub_export_macro: true,
            export_macro_name: "__export_row_transform",
            default_bindings_module: "ibex_plugin_sdk::bindings::row_transform",
            type_section_suffix: "ibex-row-transform",
            with: {
                "ibex:plugin/types@0.1.0": super::conflict_handler::ibex::plugin::types,
                "ibex:plugin/host@0.1.0": super::conflict_handler::ibex::plugin::host,
            },
        });
    }

    pub mod sync_hooks {
        wit_bindgen::generate!({
            path: "../wit",
            world: "sync-hooks",
            pub_export_macro: true,
            export_macro_name: "__export_sync_hooks",
            default_bindings_module: "ibex_plugin_sdk::bindings::sync_hooks",
            type_section_suffix: "ibex-sync-hooks",
            with: {
                "ibex:plugin/types@0.1.0": super::conflict_handler::ibex::plugin::types,
                "ibex:plugin/host@0.1.0": super::conflict_handler::ibex::plugin::host,
            },
        });
    }
}

mod values;

pub use bindings::conflict_handler::ibex::plugin::types::{Column, DbInfo, LogLevel, Role, SyncInfo, TableInfo, Value};

/// A row: one value per column, in the table's column order.
pub type Row = Vec<Value>;

/// Conflict handlers: `conflict_strategy=plugin:NAME`.
pub mod conflict {
    pub use crate::bindings::conflict_handler::ibex::plugin::conflicts::{
        Conflict, Decision, Operation, Verdict, Version, WinnerChoice,
    };
    use crate::{SyncInfo, TableInfo};

    /// Decides conflicts: keys changed on two or more sources in one window.
    pub trait ConflictHandler {
        /// One batch of conflicts of one table. Answer one decision per
        /// conflict ([`Verdict::PerKey`]), or one winner for the whole batch
        /// ([`Verdict::TableWinner`], [`Verdict::SyncWinner`]; with
        /// `always: true` ibex keeps it for the rest of the run).
        fn resolve(sync: &SyncInfo, table: &TableInfo, conflicts: Vec<Conflict>) -> Result<Verdict, String>;
    }

    impl Conflict {
        /// The version changed last (ties: the first listed).
        pub fn latest(&self) -> &Version {
            let mut best = &self.versions[0];
            for v in &self.versions[1..] {
                if v.changed_at > best.changed_at {
                    best = v;
                }
            }
            best
        }
    }
}

/// Row transforms: `ibex add transform PLUGIN sync=S table=T [target=DB]`.
pub mod transform {
    use crate::{Row, SyncInfo, TableInfo};

    pub trait RowTransform {
        /// Rows on their way from db `source` to db `target` (indexes into
        /// `sync.dbs`). Return one entry per row, in order: `Some(row)` to
        /// write it (changed or not), `None` to leave it out of this target.
        fn transform(
            sync: &SyncInfo,
            source: u32,
            target: u32,
            table: &TableInfo,
            rows: Vec<Row>,
        ) -> Result<Vec<Option<Row>>, String>;
    }
}

/// Sync hooks: `ibex add hook PLUGIN sync=S when=POINT[,POINT]`.
pub mod hooks {
    use crate::SyncInfo;
    pub use crate::bindings::sync_hooks::ibex::plugin::hooks::{Action, Failure, HookCall, HookPoint};

    /// Called at the hook points the attachment names. The default of
    /// every point is [`Action::Proceed`].
    pub trait SyncHooks {
        fn run_hook(sync: &SyncInfo, call: HookCall) -> Action {
            let _ = (sync, call);
            Action::Proceed
        }
    }
}

/// What ibex offers plugins.
pub mod host {
    use crate::bindings::conflict_handler::ibex::plugin::host;
    use crate::{LogLevel, Row, Value};

    /// A line in ibex's log, tagged with the plugin's name.
    pub fn log(level: LogLevel, message: &str) {
        host::log(level, message)
    }

    /// A read-only query on a db granted to the plugin (`grant=DB`).
    /// Parameters are `$1`, `$2`... and arrive as text: cast them in SQL
    /// (`WHERE id = $1::int`).
    pub fn query(db: &str, sql: &str, params: &[Value]) -> Result<Vec<Row>, String> {
        host::query(db, sql, params)
    }

    /// A write on a db granted for writing (`write=DB`), in the run's
    /// transaction. Returns the rows affected.
    pub fn execute(db: &str, sql: &str, params: &[Value]) -> Result<u64, String> {
        host::execute(db, sql, params)
    }
}

/// Exports a [`conflict::ConflictHandler`] as this component's entry point.
#[macro_export]
macro_rules! export_conflict_handler {
    ($handler:ty) => {
        const _: () = {
            struct IbexConflictHandler;
            impl $crate::bindings::conflict_handler::Guest for IbexConflictHandler {
                fn resolve(
                    sync: $crate::SyncInfo,
                    table: $crate::TableInfo,
                    conflicts: ::std::vec::Vec<$crate::conflict::Conflict>,
                ) -> ::std::result::Result<$crate::conflict::Verdict, ::std::string::String> {
                    <$handler as $crate::conflict::ConflictHandler>::resolve(&sync, &table, conflicts)
                }
            }
            $crate::bindings::conflict_handler::__export_conflict_handler!(IbexConflictHandler);
        };
    };
}

/// Exports a [`transform::RowTransform`] as this component's entry point.
#[macro_export]
macro_rules! export_row_transform {
    ($transform:ty) => {
        const _: () = {
            struct IbexRowTransform;
            impl $crate::bindings::row_transform::Guest for IbexRowTransform {
                fn transform(
                    sync: $crate::SyncInfo,
                    source: u32,
                    target: u32,
                    table: $crate::TableInfo,
                    rows: ::std::vec::Vec<$crate::Row>,
                ) -> ::std::result::Result<::std::vec::Vec<::std::option::Option<$crate::Row>>, ::std::string::String>
                {
                    <$transform as $crate::transform::RowTransform>::transform(&sync, source, target, &table, rows)
                }
            }
            $crate::bindings::row_transform::__export_row_transform!(IbexRowTransform);
        };
    };
}

/// Exports [`hooks::SyncHooks`] as this component's entry point.
#[macro_export]
macro_rules! export_sync_hooks {
    ($hooks:ty) => {
        const _: () = {
            struct IbexSyncHooks;
            impl $crate::bindings::sync_hooks::Guest for IbexSyncHooks {
                fn run_hook(sync: $crate::SyncInfo, call: $crate::hooks::HookCall) -> $crate::hooks::Action {
                    <$hooks as $crate::hooks::SyncHooks>::run_hook(&sync, call)
                }
            }
            $crate::bindings::sync_hooks::__export_sync_hooks!(IbexSyncHooks);
        };
    };
}
