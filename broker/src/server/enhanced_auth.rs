//! MQTT 5.0 enhanced authentication (section 4.12) driven by the
//! authenticate plugins: the CONNECT-time exchange of AUTH packets before
//! CONNACK, and the pieces shared with re-authentication (the reader's AUTH
//! handling in connection.rs).
//!
//! The chain is asked once per exchange; a plugin answering `continue-auth`
//! gets every later step alone ([`PluginHost::authenticate_continue`]), with
//! the state it asked the broker to keep. The CONNECT-time exchange is bounded
//! by the connection's CONNECT deadline (`[limits] connect_timeout`).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use midge_plugin::types as pt;
use midge_plugin::PluginHost;
use midge_protocol::{
    decode, encode, reason, Auth, ByteStr, Connect, Packet, Properties, PropertyValues, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::plugins;

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
