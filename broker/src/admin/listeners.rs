//! `GET /api/v1/listeners`: the MQTT listeners as bound (a configured port
//! 0 shows the port picked), their WebSocket path, and the connections open
//! on each. The dashboard's live topic page connects to the `ws` (or `wss`)
//! listener it finds here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::Shared;
use crate::server::{Gate, Listener, Server};

/// The bound listeners and the admission state that counts their connections.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    bound: Vec<(Listener, SocketAddr)>,
    gate: Option<Arc<Gate>>,
}

impl Listeners {
    /// What `server` has bound (before it runs), counted by `gate`.
    pub fn of(server: &Server, gate: Arc<Gate>) -> Listeners {
        let bound = [
            (Listener::Mqtt, server.mqtt_addr()),
            (Listener::Ws, server.ws_addr()),
            (Listener::Mqtts, server.mqtts_addr()),
            (Listener::Wss, server.wss_addr()),
        ]
        .into_iter()
        .filter_map(|(l, a)| a.map(|a| (l, a)))
        .collect();
        Listeners {
            bound,
            gate: Some(gate),
        }
    }

    /// Connections open now on mqtt, ws, mqtts and wss.
    pub fn counts(&self) -> [u64; 4] {
        let Some(g) = &self.gate else {
            return [0; 4];
        };
        Listener::ALL.map(|l| g.current(l))
    }
}

/// Every bound listener: `name` (as in `[listeners]`), `address`, `port`,
/// `tls`, `websocket`, `path` (WebSocket listeners: the first of
/// `ws_paths`) and `paths` (all of them), `connections` (open now) and
/// `max_connections` (`limits.max_listener_connections`, `null` for none).
pub async fn list(State(s): State<Shared>) -> Json<Value> {
    let counts = s.listeners.counts();
    let cfg = &s.running;
    let data: Vec<Value> = s
        .listeners
        .bound
        .iter()
        .map(|(l, addr)| {
            let websocket = matches!(l, Listener::Ws | Listener::Wss);
            let i = Listener::ALL.iter().position(|x| x == l).unwrap_or(0);
            json!({
                "name": l.name(),
                "address": addr.to_string(),
                "port": addr.port(),
                "tls": matches!(l, Listener::Mqtts | Listener::Wss),
                "websocket": websocket,
                "path": websocket.then(|| cfg.listeners.ws_paths.first().cloned()).flatten(),
                "paths": websocket.then(|| cfg.listeners.ws_paths.clone()),
                "connections": counts[i],
                "max_connections": cfg.limits.max_listener_connections.get(l.name()),
            })
        })
        .collect();
    let count = data.len();
    Json(json!({ "data": data, "meta": { "count": count } }))
}
