//! Test helpers: build the plugins workspace to wasm once, load plugins.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use midge_plugin::types::{AuthRequest, ClientInfo, Message, ProtocolVersion};
use midge_plugin::{PluginConfig, PluginHost, PluginsConfig, Services};

pub use midge_plugin::testing::wasm_dir;

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
    let config = PluginsConfig {
        plugins,
        ..PluginsConfig::default()
    };
    host_with_config(config, services).await
}

/// Loads `config` with its kv store in a fresh directory.
pub async fn host_with_config(mut config: PluginsConfig, services: Services) -> PluginHost {
    // sled directories for kv grants live in target/tmp (cargo's scratch space for tests)
    config.kv_path = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
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
        auth_state: None,
    }
}

pub fn msg(topic: &str, payload: &[u8]) -> Message {
    Message::new(topic, payload.to_vec())
}
