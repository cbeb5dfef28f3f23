//! Host bindings generated from ../../wit (the one copy shared with the SDK).
#![allow(missing_debug_implementations, missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    imports: {
        "midge:plugin/sql": async,
        "midge:plugin/kafka": async,
    },
    exports: { default: async },
});
