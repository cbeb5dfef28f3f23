//! Host bindings generated from ../../sdk/wit: the WIT package lives in the
//! guest SDK crate (so the published crate carries it) and the host reads that
//! one copy.
#![allow(missing_debug_implementations, missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../../sdk/wit",
    world: "plugin",
    imports: {
        "midge:plugin/sql": async,
        "midge:plugin/kafka": async,
    },
    exports: { default: async },
});
