//! The message as it travels through the broker: one `Arc<Message>` is
//! shared by every subscriber queue it is delivered to.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use midge_protocol::{ByteStr, Properties, Publish, QoS};

/// In `Message::stream_mark`: the mark is the message's stream sequence - 1.
pub const MARK_EXACT: u64 = 1 << 63;

/// A published message, immutable once routed.
#[derive(Debug)]
pub struct Message {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Properties forwarded to subscribers (no topic alias, no subscription
    /// identifiers: those are per delivery).
    pub properties: Properties,
    /// The publishing client (for No Local and rule fields); `None` for the
    /// broker itself (rule republish).
    pub origin: Option<Arc<ClientInfo>>,
    pub received_at: Instant,
    /// Wall-clock receive time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Unique per broker run (rule field `id`).
    pub id: u64,
    /// How many rule republishes led to this message (loop guard).
    pub rule_depth: u8,
    /// Clustered, for a QoS 1/2 message in the cluster's stream: a stream
    /// sequence below its own (a session holding it unacknowledged
    /// checkpoints no higher), with [`MARK_EXACT`] set when it is exactly
    /// its sequence - 1 (known from the stream); `u64::MAX`: not in the
    /// stream.
    pub stream_mark: AtomicU64,
}

/// Who a connection belongs to; one `Arc` per connection, shared by its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    pub peer: SocketAddr,
    /// The connection's cross-node publishes awaiting JetStream (cluster on).
    pub cluster: Acks,
}

/// Cross-node QoS 1/2 publishes of one connection that JetStream has not
/// acknowledged yet. One per connection (in its [`ClientInfo`]); `None`
/// when clustering is off. Counted and awaited by the cluster module.
#[derive(Debug, Clone, Default)]
pub struct Acks(pub(crate) Option<Arc<AckState>>);

/// Connections compare equal whatever their pending acknowledgements.
impl PartialEq for Acks {
    fn eq(&self, _: &Acks) -> bool {
        true
    }
}
impl Eq for Acks {}

#[derive(Debug, Default)]
pub struct AckState {
    pub(crate) outstanding: std::sync::atomic::AtomicUsize,
    pub(crate) done: tokio::sync::Notify,
    /// The node's interest barrier: a SUBACK waits until the node's new
    /// filters are known to every other node (cluster on).
    pub(crate) interest: Option<Arc<InterestSync>>,
    /// What else the connection's acks wait for (cluster on: a PUBREL
    /// waits until the session's record says the message is released).
    pub(crate) gate: Option<Arc<dyn AckGate>>,
}

/// A wait before a clustered connection hands over its acks (implemented
/// by the cluster module).
pub trait AckGate: Send + Sync + std::fmt::Debug {
    /// `None` (at once) when nothing must happen before `client_id`'s acks
    /// go out; else the wait.
    fn before_acks(
        &self,
        client_id: &str,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;
}

/// Interest changes of a clustered node and how far the other nodes have
/// seen them, so that a SUBACK goes out only once a publish on any other
/// node after it is sent this node's way. Changes are numbered as the
/// router reports them (`requested`); the cluster module's interest task
/// raises `visible` once every other node confirmed a batch. A subscribing
/// client waits (bounded) for the number current when it subscribed.
#[derive(Debug, Default)]
pub struct InterestSync {
    pub(crate) requested: AtomicU64,
    visible: AtomicU64,
    notify: tokio::sync::Notify,
    /// Client id -> the change number its SUBACK waits for.
    waits: parking_lot::Mutex<std::collections::HashMap<Arc<str>, u64>>,
    pending: std::sync::atomic::AtomicUsize,
}

impl InterestSync {
    /// `client_id` subscribed (after the router reported any change): its
    /// SUBACK waits for every change reported so far.
    pub fn subscribed(&self, client_id: &str) {
        let r = self.requested.load(Ordering::SeqCst);
        if self.visible.load(Ordering::SeqCst) >= r {
            return;
        }
        if self.waits.lock().insert(client_id.into(), r).is_none() {
            self.pending.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Changes up to `upto` are visible to every node (or given up on).
    pub fn visible(&self, upto: u64) {
        self.visible.fetch_max(upto, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Waits, at most `max`, until what `client_id` subscribed to is visible
    /// to every node; at once when it has nothing pending. True when it had
    /// to give up.
    pub async fn wait(&self, client_id: &str, max: std::time::Duration) -> bool {
        if self.pending.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let Some(r) = self.waits.lock().remove(client_id) else {
            return false;
        };
        self.pending.fetch_sub(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let notified = self.notify.notified();
            if self.visible.load(Ordering::SeqCst) >= r {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return true;
            }
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A receive time: monotonic, and wall-clock milliseconds since the epoch.
pub type Stamp = (Instant, i64);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Message {
    /// A message originating in the broker (or a rule), received now.
    pub fn new(
        topic: ByteStr,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Message {
        Message::new_at(
            topic,
            payload,
            qos,
            retain,
            properties,
            (Instant::now(), now_ms()),
        )
    }

    /// [`Message::new`] received at `at` (see [`Stamp`]): rule
    /// outputs of one message share one clock reading.
    pub fn new_at(
        topic: ByteStr,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
        at: Stamp,
    ) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            origin: None,
            received_at: at.0,
            timestamp_ms: at.1,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rule_depth: 0,
            stream_mark: AtomicU64::new(u64::MAX),
        }
    }

    /// Client id of the publisher, if a client published it.
    pub fn publisher(&self) -> Option<&str> {
        self.origin.as_deref().map(|o| &*o.client_id)
    }
}

impl Message {
    /// Builds a message from a received PUBLISH whose topic alias is already resolved.
    pub fn from_publish(p: Publish, origin: Option<Arc<ClientInfo>>) -> Message {
        let mut properties = p.properties;
        // Only written when set: a write allocates an empty property list.
        if properties.topic_alias.is_some() {
            properties.topic_alias = None;
        }
        if !properties.subscription_identifiers.is_empty() {
            properties.subscription_identifiers.clear();
        }
        let mut m = Message::new(p.topic, p.payload, p.qos, p.retain, properties);
        m.origin = origin;
        m
    }

    /// Seconds of message expiry left, `Some(0)` never returned: an expired
    /// message yields `Err(())`. `Ok(None)` when the message does not expire.
    pub fn remaining_expiry(&self, now: Instant) -> Result<Option<u32>, Expired> {
        match self.properties.message_expiry_interval {
            None => Ok(None),
            Some(total) => {
                let elapsed = now.saturating_duration_since(self.received_at).as_secs();
                if elapsed >= u64::from(total) {
                    Err(Expired)
                } else {
                    Ok(Some(total - elapsed as u32))
                }
            }
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry(now).is_err()
    }
}

/// Marker: the message's expiry interval has elapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;
