//! Midge WebAssembly plugin host (work in progress).
mod bindings;
