//! The standard plugins, usable without a Rust toolchain: a plugin entry
//! with `path = "builtin:auth-password"` names a component shipped with
//! the broker, found (when the configuration is read) in the first of:
//!
//! 1. the directory in `MIDGE_PLUGIN_DIR`;
//! 2. `<dir of the midge binary>/../lib/midge/plugins` (the Debian package
//!    installs `/usr/bin/midge` and `/usr/lib/midge/plugins/*.wasm`);
//! 3. `<dir of the midge binary>/plugins` (an unpacked archive).
//!
//! The components are files next to the binary rather than bytes embedded
//! in it: embedding would make every build of the broker (and every
//! `clippy` and test run) build the wasm32 plugins workspace first, and
//! need the wasm target for any build at all.

use std::path::{Path, PathBuf};

/// The prefix of a built-in plugin's `path`.
pub const PREFIX: &str = "builtin:";

/// The shipped plugins: (name after `builtin:`, component file name).
pub const PLUGINS: &[(&str, &str)] = &[
    ("auth-password", "auth_password.wasm"),
    ("auth-jwt", "auth_jwt.wasm"),
    ("transform", "transform.wasm"),
    ("persist-sled", "persist_sled.wasm"),
    ("persist-postgres", "persist_postgres.wasm"),
    ("persist-kafka", "persist_kafka.wasm"),
];

/// The directories searched, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("MIDGE_PLUGIN_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        if let Some(prefix) = exe_dir.parent() {
            dirs.push(prefix.join("lib/midge/plugins"));
        }
        dirs.push(exe_dir.join("plugins"));
    }
    dirs
}

/// The file of `path` when it names a built-in plugin (`Ok(None)` when it
/// is an ordinary path), or why it cannot be found.
pub fn resolve(path: &Path) -> Result<Option<PathBuf>, String> {
    let Some(name) = path.to_str().and_then(|p| p.strip_prefix(PREFIX)) else {
        return Ok(None);
    };
    let Some((_, file)) = PLUGINS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<String> = PLUGINS
            .iter()
            .map(|(n, _)| format!("{PREFIX}{n}"))
            .collect();
        return Err(format!(
            "`{PREFIX}{name}` is not a built-in plugin (they are: {})",
            known.join(", ")
        ));
    };
    let dirs = search_dirs();
    dirs.iter()
        .map(|d| d.join(file))
        .find(|f| f.is_file())
        .map(Some)
        .ok_or_else(|| {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            format!(
                "`{PREFIX}{name}`: {file} is in none of {} (the midge package installs it; \
                 from source: `cd plugins && cargo build --target wasm32-wasip2 --release`, \
                 then MIDGE_PLUGIN_DIR=plugins/target/wasm32-wasip2/release)",
                searched.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_are_left_alone_and_unknown_names_listed() {
        assert_eq!(resolve(Path::new("plugins/x.wasm")), Ok(None));
        let e = resolve(Path::new("builtin:auth-pasword")).unwrap_err();
        assert!(e.contains("builtin:auth-password, builtin:auth-jwt"), "{e}");
    }
}
