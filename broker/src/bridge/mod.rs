//! MQTT bridges: this broker as a client of another one, forwarding local
//! topics out (`[[bridges.out]]`) and remote topics in (`[[bridges.in]]`),
//! with a durable outbound buffer.
//!
//! How a message goes out: each bridge owns a [`Session`] of its own (client
//! id `$bridge/<name>`, never in the registry) subscribed to its `out`
//! filters with No Local. The router queues matching messages into it like
//! into any session: bounded by `[bridges.buffer]`, and, with persistence
//! on, written to the store through [`crate::store::Store::for_bridges`]
//! (the same ops as a session's, kept under the bridge's own keys) before the
//! publisher is acknowledged. The link task ([`link`]) is that session's
//! connection in the client role: it takes queued messages into the inflight
//! window, maps their topics ([`mapping`]), writes them to the remote, and
//! removes each only when the remote acknowledged it (PUBACK, or PUBREC then
//! PUBCOMP; the QoS 2 stage is stored before the next packet goes out, so
//! after a restart the same packet id is resent: exactly once). While the
//! remote is unreachable the buffer fills; on reconnect the inflight
//! messages are resent first, then the queue drains at full speed.
//!
//! How a message comes in: the link subscribes to the `in` filters at the
//! remote (5.0: No Local, so what this broker sent is not echoed back) and
//! publishes what arrives here through [`Broker::publish`] (rules, retain,
//! routing) with `$bridge/<name>` as the publisher, which the bridge's own
//! `out` subscriptions skip (No Local): a message that came in over a bridge
//! never goes back out over it. Whether to publish what comes in and how to
//! acknowledge it is the session core's decision, as for a client's PUBLISH
//! (`Session::on_publish`: incoming QoS 2 ids kept, and stored, until
//! PUBREL, so a resend is not published twice).
//!
//! - [`config`]: `[[bridges]]` -> checked [`config::BridgeSpec`].
//! - [`mapping`]: the topic mapping syntax of a direction.
//! - [`tls`], [`transport`]: the outbound byte stream (TCP, TLS, WebSocket).
//! - [`link`]: connect, CONNACK, subscribe, the read / write loop, backoff.
//! - [`outbound`]: buffer -> inflight window -> PUBLISH, and the acks.
//! - [`inbound`]: PUBLISH / PUBREL from the remote -> this broker.
//! - [`status`]: counters and last error for the API, metrics and `$SYS`.
//! - [`actions`]: the rule action `bridge` ([`RuleActions`], the context
//!   the rule action lanes run against).

mod actions;
mod inbound;
mod link;
mod outbound;
pub mod status;
pub mod transport;

/// The configuration, topic mapping and TLS client side live with the
/// rest of the configuration (`midge check` builds them without a broker).
pub use crate::config::bridges::{self as config, mapping, tls};

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use midge_protocol::SubOptions;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::QueueFullPolicy;
use crate::session::{Delivery, Inflight, QueueLimits, Session, SubscriptionRecord};
use crate::store::RestoredBridge;
use config::{BridgeConfig, BridgeSpec};
use status::Status;

pub use actions::RuleActions;

pub use crate::session::{reserved_client_id, BRIDGE_CLIENT_ID_PREFIX as CLIENT_ID_PREFIX};

/// One running bridge.
#[derive(Debug)]
pub struct Bridge {
    pub spec: BridgeSpec,
    /// The outbound buffer, inflight window and incoming QoS 2 ids.
    pub session: Arc<Session>,
    pub status: Status,
}

impl Bridge {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// (messages, payload bytes) held for the remote: queued and in flight.
    pub fn buffered(&self) -> (usize, usize) {
        let st = self.session.state.lock();
        let inflight: usize = st
            .inflight
            .iter()
            .map(|i| i.delivery.msg.payload.len())
            .sum();
        (
            st.queue.len() + st.inflight.len(),
            st.queued_bytes + inflight,
        )
    }

    /// Messages the buffer dropped because it was full.
    pub fn dropped_full(&self) -> u64 {
        self.session.state.lock().dropped
    }

    /// `[bridges.buffer]` as queue limits.
    pub fn limits(&self) -> QueueLimits {
        limits(&self.spec)
    }
}

fn limits(spec: &BridgeSpec) -> QueueLimits {
    QueueLimits {
        max_messages: spec.buffer.max_messages,
        max_bytes: spec.buffer.max_bytes,
        policy: spec.buffer.full_policy,
    }
}

/// The broker's bridges: set up once at start, their link tasks started by
/// the server and stopped before the store closes.
#[derive(Debug, Default)]
pub struct Registry {
    bridges: OnceLock<Vec<Arc<Bridge>>>,
    stop: OnceLock<watch::Sender<bool>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Registry {
    /// Every bridge (enabled ones; in configuration order).
    pub fn list(&self) -> &[Arc<Bridge>] {
        self.bridges.get().map(Vec::as_slice).unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Bridge>> {
        self.list().iter().find(|b| b.name() == name)
    }

    /// Builds the enabled bridges of `configs`: their sessions, with what
    /// the store kept of them (`restored`), subscribed to their `out`
    /// filters. Runs before any listener accepts, so no message routed
    /// afterwards misses a bridge. Called once.
    pub fn setup(
        &self,
        broker: &Arc<Broker>,
        configs: &[BridgeConfig],
        restored: Vec<RestoredBridge>,
    ) -> Result<(), String> {
        let mut restored = restored;
        let mut list = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            if !c.enabled {
                continue;
            }
            let spec = c.build(i).map_err(|errs| {
                errs.iter()
                    .map(|(k, m)| format!("field `{k}`: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            let client_id: Arc<str> = Arc::from(format!("{CLIENT_ID_PREFIX}{}", spec.name));
            let kept = restored
                .iter()
                .position(|r| r.name == client_id)
                .map(|i| restored.swap_remove(i));
            let bridge = Arc::new(Bridge {
                session: Arc::new(new_session(broker, &spec, client_id, kept)),
                spec,
                status: Status::default(),
            });
            for d in &bridge.spec.outbound {
                let record = SubscriptionRecord {
                    opts: SubOptions {
                        qos: d.qos,
                        no_local: true,
                        retain_as_published: d.retain_as_published,
                        retain_handling: d.retain_handling,
                    },
                    id: None,
                };
                broker.subscribe(&bridge.session, &d.filter, record);
            }
            let (buffered, _) = bridge.buffered();
            info!(bridge = %bridge.name(), remote = %bridge.spec.remote, buffered, "bridge set up");
            list.push(bridge);
        }
        for r in &restored {
            warn!(bridge = %r.name, buffered = r.queue.len(), "the store holds messages for a bridge that is not configured (or disabled); kept");
        }
        let _ = self.bridges.set(list);
        Ok(())
    }

    /// Starts each bridge's link task (needs the tokio runtime).
    pub fn start(&self, broker: &Arc<Broker>) {
        let (tx, rx) = watch::channel(false);
        let _ = self.stop.set(tx);
        let mut tasks = self.tasks.lock();
        for b in self.list() {
            let span = tracing::info_span!("bridge", name = %b.name());
            tasks.push(tokio::spawn(tracing::Instrument::instrument(
                link::run(broker.clone(), b.clone(), rx.clone()),
                span,
            )));
        }
        if !self.list().is_empty() {
            let bridges: Vec<Arc<Bridge>> = self.list().to_vec();
            let mut rx = rx;
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = rx.changed() => return,
                    }
                    let now = std::time::Instant::now();
                    for b in &bridges {
                        b.status.sample(now);
                    }
                }
            }));
        }
    }

    /// Tells every link to close (5.0: DISCONNECT, session kept at the
    /// remote) and waits for them, bounded; what is not acknowledged stays
    /// in the buffer (and the store).
    pub async fn stop(&self) {
        if let Some(tx) = self.stop.get() {
            let _ = tx.send(true);
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        for mut t in tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }

    /// Puts `msg` into bridge `name`'s buffer as it is (its topic is the
    /// remote one: no `out` mapping), for the rule action `bridge`.
    /// Returns the store ticket, or why it was not buffered.
    pub fn send(&self, name: &str, d: Delivery) -> Result<u64, String> {
        let b = self
            .get(name)
            .ok_or_else(|| format!("no bridge named `{name}`"))?;
        let mut d = d;
        d.sub_ids = outbound::PREMAPPED.iter().copied().collect();
        match b.session.enqueue(d, b.limits()) {
            (crate::session::EnqueueOutcome::Queued, t) => Ok(t),
            (crate::session::EnqueueOutcome::DroppedFull, t) => {
                if b.spec.buffer.full_policy == QueueFullPolicy::DropOldest {
                    Ok(t)
                } else {
                    Err(format!("bridge `{name}`: buffer full"))
                }
            }
            (crate::session::EnqueueOutcome::Skipped, _) => Err(format!(
                "bridge `{name}`: not connected (QoS 0 is not buffered)"
            )),
        }
    }
}

/// The bridge's session: its own limits and store handle, and what the
/// store kept of its buffer.
fn new_session(
    broker: &Broker,
    spec: &BridgeSpec,
    client_id: Arc<str>,
    kept: Option<RestoredBridge>,
) -> Session {
    let store = broker.store.as_ref().map(|s| s.for_bridges());
    let persist = store.is_some();
    let mut session = Session::new(client_id, u32::MAX, store);
    session.limits = Some(limits(spec));
    {
        let mut st = session.state.lock();
        st.persist = persist;
        if let Some(kept) = kept {
            let now_ms = crate::message::now_ms();
            let mut max_seq = 0;
            let mut max_id = 0;
            for (d, inflight) in kept.queue {
                max_seq = max_seq.max(d.seq);
                let mut d = d;
                if std::sync::Arc::get_mut(&mut d.msg)
                    .is_some_and(|m| crate::broker::rebase_expiry(m, now_ms))
                {
                    session.forget(d.seq);
                    continue;
                }
                match inflight {
                    Some((packet_id, stage)) => {
                        max_id = max_id.max(packet_id);
                        st.inflight.push_back(Inflight {
                            packet_id,
                            delivery: d,
                            stage,
                        });
                    }
                    None => {
                        st.queued_bytes += d.msg.payload.len();
                        st.queue.push_back(d);
                    }
                }
            }
            st.next_seq = max_seq + 1;
            st.next_packet_id = max_id.checked_add(1).unwrap_or(1);
            st.incoming_qos2 = kept.incoming_qos2.into_iter().collect();
            st.resend = true;
        }
    }
    session
}

/// The retained messages an `out` direction sends when a link comes up
/// (see docs/bridges.md: retain_handling 0 on every connect, 1 when the
/// remote has no session for us, 2 never).
fn retained_for(broker: &Broker, b: &Bridge, session_present: bool) {
    for d in &b.spec.outbound {
        let send = d.retain_handling == 0 || (d.retain_handling == 1 && !session_present);
        if !send {
            continue;
        }
        for m in broker.retained.matching(&d.filter) {
            let qos = d.qos.min(m.qos);
            let _ = b.session.enqueue(
                Delivery {
                    qos,
                    msg: m,
                    retain: true,
                    sub_ids: Default::default(),
                    shared: None,
                    seq: 0,
                },
                b.limits(),
            );
        }
    }
}
