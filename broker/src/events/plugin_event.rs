//! Events as plugins' `on-event` records, and the queue between the event
//! points and the one task that hands them to the plugins, in order.

use midge_plugin::types as pt;
use midge_plugin::PluginHost;
use midge_protocol::QoS;

use super::Event;
use crate::message::Message;
use crate::plugins::{qos_to, version_to};

/// `e` as plugins see it (`None`: plugins have no such kind).
pub fn convert(e: &Event<'_>) -> Option<pt::Event> {
    Some(match *e {
        Event::Connected {
            client,
            connect,
            superuser,
            attributes,
            ..
        } => pt::Event::Connected(pt::ClientInfo {
            client_id: client.client_id.to_string(),
            username: client.username.map(str::to_string),
            peer_address: client.peer.to_string(),
            protocol_version: version_to(connect.version),
            superuser,
            attributes: attributes.to_vec(),
        }),
        Event::Disconnected {
            client,
            code,
            description,
            ..
        } => pt::Event::Disconnected(pt::DisconnectedEvent {
            client_id: client.client_id.to_string(),
            username: client.username.map(str::to_string),
            reason: code,
            description: description.to_string(),
        }),
        Event::Subscribed {
            client,
            filter,
            qos,
        } => pt::Event::Subscribed(pt::SubscribedEvent {
            client_id: client.client_id.to_string(),
            filter: filter.to_string(),
            qos: qos_to(qos),
        }),
        Event::Unsubscribed { client, filter } => pt::Event::Unsubscribed(pt::UnsubscribedEvent {
            client_id: client.client_id.to_string(),
            filter: filter.to_string(),
        }),
        Event::Delivered {
            receiver,
            msg,
            qos,
            packet_id,
        } => pt::Event::Delivered(delivery(receiver, msg, qos, packet_id)),
        Event::Acked {
            receiver,
            msg,
            qos,
            packet_id,
        } => pt::Event::Acked(delivery(receiver.client_id, msg, qos, packet_id)),
        Event::MessageDropped { msg } => dropped("", msg, msg.qos, "no subscribers"),
        Event::DeliveryDropped {
            receiver,
            msg,
            qos,
            reason,
        } => dropped(receiver, msg, qos, reason.words()),
        Event::ConnackRefused { .. }
        | Event::AuthzChecked { .. }
        | Event::WillPublished { .. }
        | Event::SessionExpired { .. } => return None,
    })
}

/// A delivery event (`delivered` / `acked`) as plugins see it.
fn delivery(client_id: &str, m: &Message, qos: QoS, packet_id: u16) -> pt::DeliveryEvent {
    pt::DeliveryEvent {
        client_id: client_id.to_string(),
        topic: m.topic.to_string(),
        qos: qos_to(qos),
        packet_id,
    }
}

/// A `dropped` event: `client_id` empty when no subscriber was involved.
fn dropped(client_id: &str, m: &Message, qos: QoS, reason: &str) -> pt::Event {
    pt::Event::Dropped(pt::DroppedEvent {
        client_id: client_id.to_string(),
        topic: m.topic.to_string(),
        qos: qos_to(qos),
        reason: reason.to_string(),
    })
}

/// How many plugin events may wait for the event task before new ones are
/// dropped (and counted).
pub const EVENT_QUEUE: usize = 4096;

/// The queue between the event points and the one task that hands events
/// to plugins' `on-event`, in order. Pushing never waits: a full queue
/// drops the event and counts it.
#[derive(Debug)]
pub struct EventQueue {
    tx: tokio::sync::mpsc::Sender<(pt::Event, u64)>,
    rx: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<(pt::Event, u64)>>>,
    /// Events dropped because the queue was full.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl Default for EventQueue {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        EventQueue {
            tx,
            rx: parking_lot::Mutex::new(Some(rx)),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl EventQueue {
    /// Queues `event` (timestamped now) for the event task.
    pub fn push(&self, event: pt::Event) {
        let at = midge_plugin::now_millis();
        if self.tx.try_send((event, at)).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Logged on the first drop and then every 1000th.
            if n.is_multiple_of(1000) {
                tracing::warn!(dropped = n + 1, "plugin event queue full: event dropped");
            }
        }
    }

    /// The receiving end, taken once (by [`run`]'s caller).
    pub fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<(pt::Event, u64)>> {
        self.rx.lock().take()
    }
}

/// The event task: hands queued events to the plugins in order, one at a
/// time. Ends when the broker (the queue's sender) is gone.
pub async fn run(host: PluginHost, mut rx: tokio::sync::mpsc::Receiver<(pt::Event, u64)>) {
    while let Some((event, at)) = rx.recv().await {
        // Failures are logged and counted by the host, per plugin.
        let _ = Box::pin(host.on_event(&event, at)).await;
    }
}
