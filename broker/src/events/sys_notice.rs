//! Events as `$SYS/brokers/<node>/clients/<clientid>/connected|disconnected`
//! notices (JSON, not retained), with `[sys] client_notices`.

use midge_protocol::Version;

use super::Event;

/// `$SYS/brokers/<node>`.
pub fn prefix() -> String {
    format!("$SYS/brokers/{}", crate::node::name())
}

/// The notice's topic and body for `e`. `None` for other kinds, and for
/// client ids that cannot be part of a topic name (`+`, `#`, NUL).
pub fn notice(e: &Event<'_>) -> Option<(String, String)> {
    let (client_id, what, body) = match *e {
        Event::Connected {
            client,
            connect,
            expiry,
            connected_at_ms,
            ..
        } => (
            client.client_id,
            "connected",
            serde_json::json!({
                "clientid": client.client_id,
                "username": client.username,
                "ipaddress": client.peer.ip().to_string(),
                "proto_ver": if connect.version == Version::V5 { 5 } else { 4 },
                "keepalive": connect.keep_alive,
                "clean_start": connect.clean_start,
                "expiry_interval": expiry,
                "connected_at": connected_at_ms,
            }),
        ),
        Event::Disconnected {
            client,
            reason,
            disconnected_at_ms,
            ..
        } => (
            client.client_id,
            "disconnected",
            serde_json::json!({
                "clientid": client.client_id,
                "username": client.username,
                "reason": reason,
                "disconnected_at": disconnected_at_ms,
            }),
        ),
        _ => return None,
    };
    if client_id.contains(['+', '#', '\0']) {
        return None;
    }
    Some((
        format!("{}/clients/{client_id}/{what}", prefix()),
        body.to_string(),
    ))
}
