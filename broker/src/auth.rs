//! The authentication hook point. CONNECT (and, for 5.0 enhanced
//! authentication, AUTH) is handed to an [`AuthHook`]; the plugin system
//! provides real implementations. Decisions carry MQTT reason codes.

use std::fmt::Debug;
use std::net::SocketAddr;

use bytes::Bytes;
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
