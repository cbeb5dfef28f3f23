//! Test support shared by this crate's tests and the broker's end-to-end
//! tests: builds the repository's `plugins/` workspace for wasm32-wasip2
//! once per process and says where the `.wasm` components are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The repository root (this crate lives in `broker/plugin`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn wasm_target_installed() -> bool {
    let Ok(out) = Command::new("rustc")
        .arg("--print")
        .arg("sysroot")
        .current_dir(repo_root())
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/wasm32-wasip2")
        .is_dir()
}

/// Build `plugins/` for wasm32-wasip2 (once per process; cargo's own lock
/// serialises concurrent test processes) and return the directory holding
/// the `.wasm` components, or `None` (test skipped) when the target is
/// missing outside CI. Under `CI=true` a missing target fails the test.
pub fn wasm_dir() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static SKIP: Mutex<bool> = Mutex::new(false);
    let result = BUILT.get_or_init(|| {
        if !wasm_target_installed() {
            let msg = "the wasm32-wasip2 Rust target is not installed; run `rustup target add wasm32-wasip2` \
                       (the plugin tests build plugins/ with it)";
            if std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false) {
                return Err(msg.to_string());
            }
            eprintln!("SKIPPED: {msg}");
            *SKIP.lock().unwrap() = true;
            return Ok(PathBuf::new());
        }
        let root = repo_root();
        let plugins = root.join("plugins");
        let status = Command::new("cargo")
            .args(["build", "--quiet", "--target", "wasm32-wasip2", "--release", "--manifest-path"])
            .arg(plugins.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(plugins.join("target"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .current_dir(&plugins)
            .status()
            .map_err(|e| format!("running cargo to build plugins/: {e}"))?;
        if !status.success() {
            return Err(format!("building plugins/ for wasm32-wasip2 failed: {status}"));
        }
        Ok(plugins.join("target/wasm32-wasip2/release"))
    });
    match result {
        Ok(_) if *SKIP.lock().unwrap() => None,
        Ok(p) => Some(p.clone()),
        Err(e) => panic!("{e}"),
    }
}
