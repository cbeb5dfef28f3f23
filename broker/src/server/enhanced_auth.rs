//! Authentication of a connection: at CONNECT (`authenticate`: the
//! authenticate plugins, then the broker's auth hook) and after it
//! (`reauthenticate`: MQTT 5.0 re-authentication), with the MQTT 5.0
//! enhanced authentication exchange (section 4.12) the plugins drive: AUTH
//! packets before CONNACK, or after it while the session keeps working.
//!
//! The chain is asked once per exchange; a plugin answering `continue-auth`
//! gets every later step alone ([`PluginHost::authenticate_continue`]), with
//! the state it asked the broker to keep. The CONNECT-time exchange is bounded
//! by the connection's CONNECT deadline (`[limits] connect_timeout`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use midge_plugin::types as pt;
use midge_plugin::PluginHost;
use midge_protocol::{
    decode, encode, reason, Auth, ByteStr, Connect, Packet, Properties, PropertyValues, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use midge_plugin::types::HookSet;

use crate::auth::{AuthDecision, ConnectInfo};
use crate::broker::Broker;
use crate::message::ClientInfo;
use crate::plugins;
use crate::session::proto::{Refused, Violation};

/// How the plugins' part of a CONNECT ended.
pub enum ConnectAuth {
    /// The chain's decision: `Allow`, `Deny` or `Ignore` (never `ContinueAuth`).
    Decided(pt::AuthDecision),
    /// Refuse with this CONNACK reason code.
    Refuse(u8, &'static str),
    /// The client closed the connection (or sent DISCONNECT) meanwhile.
    Closed,
    /// The exchange did not finish by the CONNECT deadline.
    TimedOut,
}

/// The request for the first step of a CONNECT.
pub fn connect_request(c: &Connect, peer: SocketAddr) -> pt::AuthRequest {
    pt::AuthRequest {
        client_id: c.client_id.to_string(),
        username: c.username.as_ref().map(|u| u.to_string()),
        password: c.password.as_ref().map(|p| p.to_vec()),
        peer_address: peer.to_string(),
        protocol_version: plugins::version_to(c.version),
        auth_method: c
            .properties
            .authentication_method
            .as_ref()
            .map(|m| m.to_string()),
        auth_data: c
            .properties
            .authentication_data
            .as_ref()
            .map(|d| d.to_vec()),
        auth_state: None,
    }
}

/// An AUTH packet of `method` with `reason` and `data`.
pub fn auth_packet(reason: u8, method: &ByteStr, data: Option<Vec<u8>>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: Properties::from(PropertyValues {
            authentication_method: Some(method.clone()),
            authentication_data: data.map(Bytes::from),
            ..PropertyValues::default()
        }),
    })
}

/// A plugin's refusal code as sent to the client: codes below 0x80 are not
/// errors (0x00 would read as success), so they become 0x87.
pub fn refusal_code(plugin: Option<&str>, code: u8) -> u8 {
    if code >= 0x80 {
        return code;
    }
    warn!(
        plugin = plugin.unwrap_or("?"),
        code, "authenticate answered deny with a code below 0x80; refusing with 0x87"
    );
    reason::NOT_AUTHORIZED
}

/// Asks the authenticate chain about a CONNECT and, while the deciding
/// plugin answers `continue-auth`, runs the AUTH exchange with the client on
/// `rd` / `wr`, all by `deadline`.
#[allow(clippy::too_many_arguments)]
pub async fn connect_exchange<R, W>(
    host: &PluginHost,
    c: &Connect,
    peer: SocketAddr,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    max_in: usize,
    deadline: Instant,
    stats: &crate::broker::Stats,
) -> ConnectAuth
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut req = connect_request(c, peer);
    let (first, by) = Box::pin(host.authenticate_named(&req)).await;
    let mut decision = first.decision;
    loop {
        let cont = match decision {
            pt::AuthDecision::ContinueAuth(cont) => cont,
            pt::AuthDecision::Deny(code) => {
                return ConnectAuth::Decided(pt::AuthDecision::Deny(refusal_code(
                    by.as_deref(),
                    code,
                )))
            }
            other => return ConnectAuth::Decided(other),
        };
        let (Some(method), Version::V5, Some(plugin)) = (
            c.properties.authentication_method.as_ref(),
            c.version,
            by.as_deref(),
        ) else {
            warn!(
                plugin = by.as_deref().unwrap_or("?"),
                "authenticate answered continue-auth to a client without enhanced authentication"
            );
            return ConnectAuth::Refuse(
                reason::BAD_AUTHENTICATION_METHOD,
                "enhanced authentication needs an MQTT 5.0 Authentication Method",
            );
        };
        let mut auth = auth_packet(reason::CONTINUE_AUTHENTICATION, method, Some(cont.data));
        let max = crate::session::proto::client_max_packet(&c.properties);
        if !crate::session::proto::fit(&mut auth, Version::V5, max) {
            return ConnectAuth::Refuse(
                reason::PACKET_TOO_LARGE,
                "an AUTH packet larger than the client's Maximum Packet Size",
            );
        }
        let mut out = BytesMut::new();
        encode(&auth, Version::V5, &mut out);
        match tokio::time::timeout_at(deadline, wr.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return ConnectAuth::Closed,
            Err(_) => return ConnectAuth::TimedOut,
        }
        let a = match next_packet(rd, buf, max_in, deadline, stats).await {
            Next::Packet(p) => match *p {
                Packet::Auth(a) => a,
                Packet::Disconnect(_) => return ConnectAuth::Closed,
                _ => {
                    return ConnectAuth::Refuse(
                        reason::PROTOCOL_ERROR,
                        "a packet other than AUTH during authentication",
                    )
                }
            },
            Next::Closed => return ConnectAuth::Closed,
            Next::Malformed(code) => return ConnectAuth::Refuse(code, "malformed packet"),
            Next::TimedOut => return ConnectAuth::TimedOut,
        };
        if a.properties.authentication_method.as_ref() != Some(method) {
            return ConnectAuth::Refuse(
                reason::BAD_AUTHENTICATION_METHOD,
                "AUTH with another authentication method",
            );
        }
        if a.reason != reason::CONTINUE_AUTHENTICATION {
            return ConnectAuth::Refuse(
                reason::PROTOCOL_ERROR,
                "AUTH during authentication must continue it (0x18)",
            );
        }
        req.auth_data = a
            .properties
            .authentication_data
            .as_ref()
            .map(|d| d.to_vec());
        req.auth_state = Some(cont.state);
        decision = match Box::pin(host.authenticate_continue(plugin, &req))
            .await
            .decision
        {
            pt::AuthDecision::Ignore => pt::AuthDecision::Deny(reason::NOT_AUTHORIZED),
            d => d,
        };
        debug!(plugin, "enhanced authentication step");
    }
}

enum Next {
    Packet(Box<Packet>),
    Malformed(u8),
    Closed,
    TimedOut,
}

/// The next packet from a 5.0 client, by `deadline`.
async fn next_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
    deadline: Instant,
    stats: &crate::broker::Stats,
) -> Next {
    loop {
        match decode(buf, Some(Version::V5), max) {
            Ok(Some(p)) => return Next::Packet(Box::new(p)),
            Ok(None) => {}
            Err(e) => return Next::Malformed(e.reason_code()),
        }
        match tokio::time::timeout_at(deadline, rd.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {
                stats
                    .bytes_received
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(_) => return Next::Closed,
            Err(_) => return Next::TimedOut,
        }
    }
}

/// A client the connect-time authentication let in: what the plugins said
/// of it.
#[derive(Debug, Default)]
pub struct Authenticated {
    pub superuser: bool,
    pub attributes: Vec<(String, String)>,
    /// Final Authentication Data for CONNACK (enhanced authentication).
    pub auth_data: Option<Vec<u8>>,
}

/// Connect-time authentication. The authenticate plugins decide first (in
/// chain order), running any enhanced authentication exchange with the
/// client on `rd` / `wr` by `deadline`; when they all ignore the client (or
/// none is loaded), the broker's own hook (`crate::auth`) decides, and with
/// anonymous access off nobody is let in unauthenticated. `None`: the
/// client went away or ran out of time meanwhile (logged and counted).
#[allow(clippy::too_many_arguments)]
pub async fn authenticate<R, W>(
    broker: &Broker,
    c: &Connect,
    peer: SocketAddr,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Option<Result<Authenticated, Refused>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let plugins = match broker.plugins() {
        Some(host) if host.has_hook(HookSet::AUTHENTICATE) => {
            let max_in = broker.config.max_packet_size as usize;
            let exchange =
                connect_exchange(host, c, peer, rd, wr, buf, max_in, deadline, &broker.stats);
            match Box::pin(exchange).await {
                ConnectAuth::Decided(d) => Some(d),
                ConnectAuth::Refuse(code, why) => return Some(Err(Refused::new(code, why))),
                ConnectAuth::Closed => {
                    debug!("closed during authentication");
                    return None;
                }
                ConnectAuth::TimedOut => {
                    broker
                        .stats
                        .connections_refused_connect_timeout
                        .fetch_add(1, Ordering::Relaxed);
                    info!("authentication not finished within the connect timeout");
                    return None;
                }
            }
        }
        _ => None,
    };
    Some(match plugins {
        Some(pt::AuthDecision::Allow(a)) => Ok(Authenticated {
            superuser: a.superuser,
            attributes: a.attributes,
            auth_data: a.auth_data,
        }),
        Some(pt::AuthDecision::Deny(code)) => {
            Err(Refused::new(code, "refused by an authentication plugin"))
        }
        // `connect_exchange` runs every continue-auth to its end.
        Some(pt::AuthDecision::ContinueAuth(_)) => Err(Refused::new(
            reason::BAD_AUTHENTICATION_METHOD,
            "enhanced authentication did not finish",
        )),
        Some(pt::AuthDecision::Ignore) | None => hook_decides(broker, c, peer),
    })
}

/// Nobody authenticated the client: with anonymous access off it is
/// refused whether or not it sent a username (see `crate::auth`);
/// otherwise the broker's auth hook decides.
fn hook_decides(broker: &Broker, c: &Connect, peer: SocketAddr) -> Result<Authenticated, Refused> {
    if !broker.limits.allow_anonymous {
        broker
            .stats
            .connections_refused_anonymous
            .fetch_add(1, Ordering::Relaxed);
        return Err(Refused::new(
            reason::NOT_AUTHORIZED,
            crate::auth::not_authenticated(c.username.is_some()),
        ));
    }
    let info = ConnectInfo {
        client_id: &c.client_id,
        username: c.username.as_deref(),
        password: c.password.as_ref(),
        peer,
        version: c.version,
        auth_method: c.properties.authentication_method.as_deref(),
        auth_data: c.properties.authentication_data.as_ref(),
    };
    match broker.auth.authenticate(&info) {
        AuthDecision::Allow { .. } => Ok(Authenticated::default()),
        AuthDecision::Deny { reason } => Err(Refused::new(reason, "not authorized")),
        // Multi-step AUTH exchanges arrive with the plugin system.
        AuthDecision::Continue { .. } => Err(Refused::new(
            reason::BAD_AUTHENTICATION_METHOD,
            "authentication method not supported",
        )),
    }
}

/// A connection's re-authentication (MQTT 5.0 section 4.12.1) state.
#[derive(Debug, Default)]
pub struct Reauth {
    /// The Authentication Method of CONNECT (5.0 enhanced authentication);
    /// re-authentication uses the same one.
    method: Option<ByteStr>,
    /// A re-authentication in progress: the plugin that answered
    /// continue-auth and the state it asked to keep.
    step: Option<Box<(String, Vec<u8>)>>,
    /// When the client must have answered the pending re-authentication
    /// challenge (`[limits] connect_timeout` after it was sent); past it the
    /// connection is closed with 0x87.
    pub by: Option<Instant>,
}

impl Reauth {
    pub fn new(method: Option<ByteStr>) -> Reauth {
        Reauth {
            method,
            step: None,
            by: None,
        }
    }
}

/// The connected client, as re-authentication needs it.
pub struct ReauthClient<'a> {
    pub origin: &'a ClientInfo,
    pub version: Version,
    /// The client as plugins see it: an `Allow` updates its superuser flag
    /// and attributes.
    pub plugin_client: &'a mut Option<Box<pt::ClientInfo>>,
}

/// AUTH after CONNACK: re-authentication. 0x19 starts an exchange with the
/// whole authenticate chain, 0x18 continues it with the plugin that asked;
/// the session keeps working meanwhile. `Ok`: the AUTH packet to answer
/// (0x00 on success, 0x18 with a plugin's challenge); `Err`: the connection
/// ends with DISCONNECT and this reason (a refusal: the plugin's code).
pub async fn reauthenticate(
    broker: &Broker,
    state: &mut Reauth,
    client: ReauthClient<'_>,
    a: Auth,
) -> Result<Packet, Violation> {
    let Some(method) = state.method.clone() else {
        return Err(Violation::protocol(
            "AUTH from a client that did not use enhanced authentication",
        ));
    };
    if a.properties.authentication_method.as_ref() != Some(&method) {
        return Err(Violation {
            reason: reason::BAD_AUTHENTICATION_METHOD,
            why: "AUTH with another authentication method",
        });
    }
    state.by = None;
    let step = match (a.reason, state.step.take().map(|b| *b)) {
        (reason::RE_AUTHENTICATE, None) => None,
        (reason::CONTINUE_AUTHENTICATION, Some(step)) => Some(step),
        _ => return Err(Violation::protocol("AUTH out of sequence")),
    };
    let origin = client.origin;
    let req = pt::AuthRequest {
        client_id: origin.client_id.to_string(),
        username: origin.username.as_deref().map(str::to_string),
        password: None,
        peer_address: origin.peer.to_string(),
        protocol_version: plugins::version_to(client.version),
        auth_method: Some(method.to_string()),
        auth_data: a
            .properties
            .authentication_data
            .as_ref()
            .map(|d| d.to_vec()),
        auth_state: step.as_ref().map(|(_, state)| state.clone()),
    };
    let host = broker.plugins();
    let (decision, by) = match (host, step) {
        (Some(host), Some((plugin, _))) => {
            let d = Box::pin(host.authenticate_continue(&plugin, &req))
                .await
                .decision;
            let d = match d {
                pt::AuthDecision::Ignore => pt::AuthDecision::Deny(reason::NOT_AUTHORIZED),
                d => d,
            };
            (d, Some(plugin))
        }
        (Some(host), None) if host.has_hook(HookSet::AUTHENTICATE) => {
            let (out, by) = Box::pin(host.authenticate_named(&req)).await;
            (out.decision, by)
        }
        _ => (pt::AuthDecision::Ignore, None),
    };
    let refused = |reason| Violation {
        reason,
        why: "re-authentication refused",
    };
    match decision {
        pt::AuthDecision::Allow(allow) => {
            if let Some(c) = client.plugin_client {
                c.superuser = allow.superuser;
                c.attributes = allow.attributes;
            }
            info!(plugin = by.as_deref(), "re-authenticated");
            Ok(auth_packet(reason::SUCCESS, &method, allow.auth_data))
        }
        pt::AuthDecision::Deny(code) => {
            let code = refusal_code(by.as_deref(), code);
            info!(plugin = by.as_deref(), code, "re-authentication refused");
            Err(refused(code))
        }
        pt::AuthDecision::ContinueAuth(cont) => match by {
            Some(plugin) => {
                let challenge =
                    auth_packet(reason::CONTINUE_AUTHENTICATION, &method, Some(cont.data));
                state.step = Some(Box::new((plugin, cont.state)));
                let within = u64::from(broker.limits.connect_timeout.max(1));
                state.by = Some(Instant::now() + Duration::from_secs(within));
                Ok(challenge)
            }
            None => Err(Violation {
                reason: reason::BAD_AUTHENTICATION_METHOD,
                why: "re-authentication continued by no plugin",
            }),
        },
        pt::AuthDecision::Ignore => {
            let info = ConnectInfo {
                client_id: &origin.client_id,
                username: origin.username.as_deref(),
                password: None,
                peer: origin.peer,
                version: client.version,
                auth_method: Some(&method),
                auth_data: a.properties.authentication_data.as_ref(),
            };
            match broker.auth.authenticate(&info) {
                AuthDecision::Allow { .. } => Ok(auth_packet(reason::SUCCESS, &method, None)),
                AuthDecision::Deny { reason } => Err(refused(reason)),
                AuthDecision::Continue { .. } => Err(Violation {
                    reason: reason::BAD_AUTHENTICATION_METHOD,
                    why: "authentication method not supported",
                }),
            }
        }
    }
}
