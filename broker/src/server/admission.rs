//! Listener-level admission (`[limits]`): how many connections may be open
//! (all listeners together, and per listener), how fast new ones may arrive
//! (a token bucket), and how long one has to send CONNECT.
//!
//! The accept loops call [`Gate::admit`] for every accepted socket. An
//! admitted connection holds an [`Admitted`] until its task ends (the drop gives
//! the place back, whatever path the task leaves by). A refused one is not
//! closed at once: its task reads the CONNECT (within the connect timeout)
//! and answers CONNACK with the [`Refusal`]'s reason code, so the client
//! learns why.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::limits::TokenBucket;
use midge_protocol::reason;
use parking_lot::Mutex;

use crate::broker::Broker;
use crate::config::LimitsConfig;

/// The four listeners, by their names in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Mqtt,
    Ws,
    Mqtts,
    Wss,
}

impl Listener {
    pub const ALL: [Listener; 4] = [Listener::Mqtt, Listener::Ws, Listener::Mqtts, Listener::Wss];

    /// The name used in `[listeners]` and `limits.max_listener_connections`.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Mqtt => "mqtt",
            Listener::Ws => "ws",
            Listener::Mqtts => "mqtts",
            Listener::Wss => "wss",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` reached.
    MaxConnections,
    /// `limits.max_listener_connections` reached for this listener.
    ListenerLimit,
    /// `limits.max_connection_rate` exceeded.
    Rate,
}

impl Refusal {
    /// The 5.0 CONNACK reason code (3.1.1 clients get 3, server unavailable).
    pub fn reason_code(self) -> u8 {
        match self {
            Refusal::MaxConnections | Refusal::ListenerLimit => reason::QUOTA_EXCEEDED,
            Refusal::Rate => reason::CONNECTION_RATE_EXCEEDED,
        }
    }

    /// Reason string for CONNACK and the log.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "too many connections",
            Refusal::ListenerLimit => "too many connections on this listener",
            Refusal::Rate => "connection rate exceeded",
        }
    }
}

/// Admission state shared by the accept loops.
#[derive(Debug)]
pub struct Gate {
    broker: Arc<Broker>,
    /// 0 = no limit.
    max_connections: u64,
    /// Per listener (by `Listener::index`); 0 = no limit.
    max_listener: [u64; 4],
    /// Admitted connections open now, per listener.
    current: [AtomicU64; 4],
    /// `None` without a rate limit.
    bucket: Option<Mutex<TokenBucket>>,
    /// `limits.connect_timeout`.
    pub connect_timeout: Duration,
}

/// An admitted connection's place; dropping it gives the place back.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Gate>,
    listener: Listener,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate.current[self.listener.index()].fetch_sub(1, Ordering::Relaxed);
        self.gate
            .broker
            .stats
            .connections_current
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Adds one to `n` unless that would exceed `max` (0 = no limit).
fn try_add(n: &AtomicU64, max: u64) -> bool {
    if max == 0 {
        n.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
        (c < max).then_some(c + 1)
    })
    .is_ok()
}

impl Gate {
    pub fn new(broker: Arc<Broker>, limits: &LimitsConfig) -> Gate {
        let mut max_listener = [0; 4];
        for l in Listener::ALL {
            if let Some(&m) = limits.max_listener_connections.get(l.name()) {
                max_listener[l.index()] = m as u64;
            }
        }
        Gate {
            broker,
            max_connections: limits.max_connections as u64,
            max_listener,
            current: Default::default(),
            bucket: (limits.max_connection_rate > 0)
                .then(|| Mutex::new(TokenBucket::new(limits.max_connection_rate.into()))),
            connect_timeout: Duration::from_secs(u64::from(limits.connect_timeout.max(1))),
        }
    }

    /// Decides on a socket just accepted by `listener`; a refusal is counted
    /// in the broker's stats.
    pub fn admit(self: &Arc<Self>, listener: Listener) -> Result<Admitted, Refusal> {
        let stats = &self.broker.stats;
        let refused = |r: Refusal| {
            let counter = match r {
                Refusal::MaxConnections => &stats.connections_refused_max_connections,
                Refusal::ListenerLimit => &stats.connections_refused_listener_limit,
                Refusal::Rate => &stats.connections_refused_rate,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Err(r)
        };
        if let Some(b) = &self.bucket {
            if !b.lock().take(1, std::time::Instant::now()) {
                return refused(Refusal::Rate);
            }
        }
        if !try_add(&stats.connections_current, self.max_connections) {
            return refused(Refusal::MaxConnections);
        }
        let i = listener.index();
        if !try_add(&self.current[i], self.max_listener[i]) {
            stats.connections_current.fetch_sub(1, Ordering::Relaxed);
            return refused(Refusal::ListenerLimit);
        }
        Ok(Admitted {
            gate: self.clone(),
            listener,
        })
    }

    /// Admitted connections open now on `listener`.
    pub fn current(&self, listener: Listener) -> u64 {
        self.current[listener.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(f: impl FnOnce(&mut LimitsConfig)) -> Arc<Gate> {
        let mut l = LimitsConfig::default();
        f(&mut l);
        let broker = Arc::new(Broker::new(Default::default()));
        Arc::new(Gate::new(broker, &l))
    }

    #[test]
    fn global_limit_refuses_then_frees_on_drop() {
        let g = gate(|l| l.max_connections = 2);
        let a = g.admit(Listener::Mqtt).expect("first");
        let _b = g.admit(Listener::Ws).expect("second");
        assert_eq!(
            g.admit(Listener::Mqtt).unwrap_err(),
            Refusal::MaxConnections
        );
        let stats = &g.broker.stats;
        assert_eq!(stats.connections_current.load(Ordering::Relaxed), 2);
        assert_eq!(
            stats
                .connections_refused_max_connections
                .load(Ordering::Relaxed),
            1
        );
        drop(a);
        assert_eq!(g.current(Listener::Mqtt), 0);
        assert!(g.admit(Listener::Mqtt).is_ok());
    }

    #[test]
    fn listener_limit_is_per_listener_and_undoes_the_global_count() {
        let g = gate(|l| {
            l.max_listener_connections.insert("mqtts".into(), 1);
        });
        let _a = g.admit(Listener::Mqtts).expect("first");
        assert_eq!(
            g.admit(Listener::Mqtts).unwrap_err(),
            Refusal::ListenerLimit
        );
        let _b = g.admit(Listener::Mqtt).expect("other listener");
        assert_eq!(
            g.broker.stats.connections_current.load(Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn reason_codes() {
        assert_eq!(Refusal::MaxConnections.reason_code(), 0x97);
        assert_eq!(Refusal::ListenerLimit.reason_code(), 0x97);
        assert_eq!(Refusal::Rate.reason_code(), 0x9F);
    }
}
