//! Test helpers: build the plugins workspace to wasm once, load plugins.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use midge_plugin::types::{AuthRequest, ClientInfo, Message, ProtocolVersion};
use midge_plugin::{PluginConfig, PluginHost, PluginsConfig, Services};

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

/// Skip the test (return) when the plugins cannot be built here.
#[macro_export]
macro_rules! wasm_or_skip {
    () => {
        match common::wasm_dir() {
            Some(d) => d,
            None => return,
        }
    };
}

pub fn plugin(dir: &Path, name: &str, file: &str) -> PluginConfig {
    PluginConfig::new(name, dir.join(format!("{file}.wasm")))
}

pub async fn host(plugins: Vec<PluginConfig>) -> PluginHost {
    host_with(plugins, Services::default()).await
}

pub async fn host_with(plugins: Vec<PluginConfig>, services: Services) -> PluginHost {
    // sled directories for kv grants live in target/tmp (cargo's scratch space for tests)
    let kv = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    let config = PluginsConfig {
        plugins,
        kv_path: kv,
        ..PluginsConfig::default()
    };
    PluginHost::load(&config, services).await.unwrap()
}

pub fn client(id: &str, user: Option<&str>) -> ClientInfo {
    ClientInfo {
        client_id: id.to_string(),
        username: user.map(str::to_string),
        peer_address: "127.0.0.1:5000".into(),
        protocol_version: ProtocolVersion::V5,
        superuser: false,
        attributes: Vec::new(),
    }
}

pub fn auth(client_id: &str, user: Option<&str>, password: Option<&[u8]>) -> AuthRequest {
    AuthRequest {
        client_id: client_id.to_string(),
        username: user.map(str::to_string),
        password: password.map(<[u8]>::to_vec),
        peer_address: "127.0.0.1:5000".into(),
        protocol_version: ProtocolVersion::V311,
        auth_method: None,
        auth_data: None,
    }
}

pub fn msg(topic: &str, payload: &[u8]) -> Message {
    Message::new(topic, payload.to_vec())
}
