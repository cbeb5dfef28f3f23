//! This node's name: `[cluster] node` when clustered, else the single
//! node's ([`DEFAULT`]). It prefixes `$SYS/brokers/<node>`, fills rule
//! events' `node` and the admin API's status. Set once, by `cluster::join`.

use std::sync::OnceLock;

/// The single node's name (EMQX's default node name, which rules written
/// for EMQX may compare with).
pub const DEFAULT: &str = "midge@127.0.0.1";

static NAME: OnceLock<String> = OnceLock::new();

/// This node's name.
pub fn name() -> &'static str {
    NAME.get().map_or(DEFAULT, String::as_str)
}

/// Names this node (once per process; later calls are ignored).
pub fn set_name(name: String) {
    let _ = NAME.set(name);
}
