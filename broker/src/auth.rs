//! The authentication hook point. CONNECT (and, for 5.0 enhanced
//! authentication, AUTH) is handed to an [`AuthHook`]; the plugin system
//! provides real implementations. Decisions carry MQTT reason codes.
//!
//! `[limits] allow_anonymous = false` means: only a client that an
//! authenticator (an `authenticate` plugin, such as `builtin:auth-password`)
//! accepted gets in. A client nobody authenticated is refused with 0x87
//! (3.1.1: code 5) whether or not it sent a username, and the broker refuses
//! to start when no authenticator is configured ([`check_authenticator`];
//! `midge check` says so too), instead of starting and refusing everyone.

use std::fmt::Debug;
use std::net::SocketAddr;

use bytes::Bytes;
use midge_plugin::types::HookSet;
use midge_plugin::PluginHost;
use midge_protocol::{reason, Version};

/// What the hook sees of a connecting client.
#[derive(Debug, Clone)]
pub struct ConnectInfo<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a Bytes>,
    pub peer: SocketAddr,
    pub version: Version,
    /// 5.0 Authentication Method, for enhanced authentication.
    pub auth_method: Option<&'a str>,
    pub auth_data: Option<&'a Bytes>,
}

/// An authentication decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in.
    Allow { superuser: bool },
    /// Refuse with this 5.0 reason code (mapped to a 3.1.1 return code).
    Deny { reason: u8 },
    /// Enhanced authentication goes on: send AUTH 0x18 with this data.
    Continue { data: Bytes },
}

/// Decides who may connect.
pub trait AuthHook: Send + Sync + Debug {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthDecision;
}

/// The default when nothing is configured: everyone may connect without
/// enhanced authentication; a CONNECT carrying an Authentication Method is
/// refused with 0x8C (bad authentication method).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAuth;

impl AuthHook for NoAuth {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthDecision {
        if info.auth_method.is_some() {
            AuthDecision::Deny {
                reason: reason::BAD_AUTHENTICATION_METHOD,
            }
        } else {
            AuthDecision::Allow { superuser: false }
        }
    }
}

/// Why a client that no authenticator accepted is refused while
/// `allow_anonymous` is off (the CONNACK's reason string and the log).
pub fn not_authenticated(has_username: bool) -> &'static str {
    if has_username {
        "no authenticator accepted the username (limits.allow_anonymous = false)"
    } else {
        "anonymous access is off (limits.allow_anonymous = false)"
    }
}

/// What to do instead, said by every "no authenticator" error.
const HOW: &str = "add an authenticating plugin (e.g. `path = \"builtin:auth-password\"` with a \
                   password file made by `midge passwd`) or set `allow_anonymous = true`";

/// The configuration-level check (`midge check`, `Config::validate`):
/// `allow_anonymous = false` with no enabled plugin at all.
pub fn config_problem(
    allow_anonymous: bool,
    plugins: &midge_plugin::PluginsConfig,
) -> Option<String> {
    if allow_anonymous || plugins.plugins.iter().any(|p| p.enabled) {
        return None;
    }
    Some(format!(
        "false needs an authenticator, and no [[plugins.plugin]] is enabled: every client would be refused; {HOW}"
    ))
}

/// After the plugins loaded: with `allow_anonymous = false`, at least one
/// of them must implement `authenticate` (which plugins do is known only
/// once their `init` declared it).
pub fn check_authenticator(allow_anonymous: bool, host: Option<&PluginHost>) -> Result<(), String> {
    if allow_anonymous || host.is_some_and(|h| h.has_hook(HookSet::AUTHENTICATE)) {
        return Ok(());
    }
    let loaded = host.map(|h| h.plugins()).unwrap_or_default();
    Err(format!(
        "limits.allow_anonymous = false, but no loaded plugin authenticates clients \
         (loaded: {}): every client would be refused; {HOW}",
        if loaded.is_empty() {
            "none".to_string()
        } else {
            loaded.join(", ")
        }
    ))
}
