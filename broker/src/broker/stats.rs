//! The broker's counters (exported by `/metrics`, `$SYS`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept by the broker, exported by the admin API's `/metrics`
/// (`admin/metrics.rs`). All are `Relaxed` atomics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages entering `Broker::publish` (clients, wills, plugins, the admin API).
    pub messages_received: AtomicU64,
    pub messages_routed: AtomicU64,
    pub messages_dropped_queue_full: AtomicU64,
    pub messages_dropped_expired: AtomicU64,
    pub messages_dropped_too_large: AtomicU64,
    /// Publishes that matched no subscription (the broker's `$SYS`
    /// updates are not counted here).
    pub messages_dropped_no_subscribers: AtomicU64,
    /// `$SYS` messages the broker published (`Broker::route`), counted
    /// apart from clients' messages.
    pub sys_messages_published: AtomicU64,
    pub connections_total: AtomicU64,
    /// CONNECTs refused because `allow_anonymous` is off.
    pub connections_refused_anonymous: AtomicU64,
    /// Clients disconnected for exceeding `max_publish_rate` (0x96).
    pub limit_publish_rate: AtomicU64,
    /// Clients disconnected for exceeding `max_publish_bytes_rate` (0x97).
    pub limit_publish_bytes_rate: AtomicU64,
    /// Subscriptions refused by `max_subscriptions`.
    pub limit_subscriptions: AtomicU64,
    /// Packets from clients over `mqtt.max_packet_size` (DISCONNECT 0x95).
    pub limit_packet_too_large: AtomicU64,
    /// Clients over `mqtt.receive_maximum` QoS 2 publishes in flight (DISCONNECT 0x93).
    pub limit_receive_maximum: AtomicU64,
    /// Connections open now (a gauge): counted from accept, for every
    /// connection a listener admitted, until its task ends. Connections a
    /// limit refuses are not in it.
    pub connections_current: AtomicU64,
    /// Connections parked now (a gauge): idle past `limits.park_after`,
    /// their loop's memory freed (server/park.rs).
    pub connections_parked: AtomicU64,
    /// Connections refused by `limits.max_connections` (CONNACK 0x97 / code 3).
    pub connections_refused_max_connections: AtomicU64,
    /// Connections refused by `limits.max_listener_connections` (CONNACK 0x97 / code 3).
    pub connections_refused_listener_limit: AtomicU64,
    /// Connections refused by `limits.max_connection_rate` (CONNACK 0x9F / code 3).
    pub connections_refused_rate: AtomicU64,
    /// Connections closed because no CONNECT (or no TLS / WebSocket
    /// handshake) completed within `limits.connect_timeout`.
    pub connections_refused_connect_timeout: AtomicU64,
    /// PUBLISH packets read from clients, by QoS (server/connection/publish.rs).
    pub publish_received: [AtomicU64; 3],
    /// PUBLISH packets written to clients, by QoS (server/writer.rs).
    pub publish_sent: [AtomicU64; 3],
    /// Bytes read from / written to client sockets (MQTT layer, after TLS or WebSocket framing).
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// CONNECTs refused, by CONNACK reason code (5.0 codes; a 3.1.1 refusal
    /// counts under the 5.0 code it was mapped from).
    pub connacks_refused: ReasonCounters,
}

/// One counter per reason code (0..=255): refusals are rare, a fixed table
/// keeps counting lock-free and rendering generic.
#[derive(Debug)]
pub struct ReasonCounters(Box<[AtomicU64]>);

impl Default for ReasonCounters {
    fn default() -> Self {
        ReasonCounters((0..256).map(|_| AtomicU64::new(0)).collect())
    }
}

impl ReasonCounters {
    pub fn add(&self, code: u8) {
        if let Some(c) = self.0.get(usize::from(code)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (code, count) of every code counted at least once.
    pub fn nonzero(&self) -> Vec<(u8, u64)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then_some((i as u8, n))
            })
            .collect()
    }
}
