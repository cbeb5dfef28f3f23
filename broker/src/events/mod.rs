//! Events: what happened to a client, a session or a message, raised once
//! at the place it happens (`Broker::emit`, in `broker/events.rs`) and
//! handed to every listener that asked for its [`Kind`]:
//!
//! - the rule engine: `$events/...` inputs ([`rule_input`]);
//! - plugins' `on-event` ([`plugin_event`]: converted, then one bounded
//!   queue and one task, so a slow plugin never holds up a connection);
//! - `$SYS` client notices ([`sys_notice`], with `[sys] client_notices`);
//! - every [`EventSink`] the broker was built with (a cluster, a dashboard
//!   stream).
//!
//! An [`Event`] is borrowed data: building one costs nothing, and a
//! listener's own form of it (rule fields, a plugin record, a JSON notice)
//! is built only when that listener wants the kind. Without listeners an
//! event point costs one atomic load (the rules' mask), one branch
//! (plugins loaded?) and one load of the sinks' mask.

pub mod plugin_event;
pub mod rule_input;
pub mod sys_notice;

use std::net::SocketAddr;

use midge_plugin::types::EventSet;
use midge_protocol::{QoS, Version};
use midge_rules::EventKind;

use crate::message::Message;

/// A set of event kinds (one bit each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kind(u16);

impl Kind {
    /// CONNECT accepted (CONNACK success sent).
    pub const CONNECTED: Kind = Kind(1);
    /// CONNECT refused with a CONNACK reason code.
    pub const CONNACK_REFUSED: Kind = Kind(1 << 1);
    /// A connection ended (its session detached).
    pub const DISCONNECTED: Kind = Kind(1 << 2);
    /// A publish or subscribe was authorized (or refused).
    pub const AUTHZ_CHECKED: Kind = Kind(1 << 3);
    pub const SUBSCRIBED: Kind = Kind(1 << 4);
    pub const UNSUBSCRIBED: Kind = Kind(1 << 5);
    /// A PUBLISH was written to a subscriber.
    pub const DELIVERED: Kind = Kind(1 << 6);
    /// A subscriber acknowledged a QoS 1/2 message (PUBACK / PUBCOMP).
    pub const ACKED: Kind = Kind(1 << 7);
    /// A publish matched no subscription.
    pub const MESSAGE_DROPPED: Kind = Kind(1 << 8);
    /// A delivery to one subscriber was dropped (queue full, expired, too large).
    pub const DELIVERY_DROPPED: Kind = Kind(1 << 9);
    /// A will was published (at disconnect, after its delay, or when its
    /// session ended).
    pub const WILL_PUBLISHED: Kind = Kind(1 << 10);
    /// An offline session reached its expiry and was removed.
    pub const SESSION_EXPIRED: Kind = Kind(1 << 11);
    pub const NONE: Kind = Kind(0);
    pub const ALL: Kind = Kind((1 << 12) - 1);

    /// Both sets.
    pub const fn union(self, other: Kind) -> Kind {
        Kind(self.0 | other.0)
    }

    /// Any kind in common?
    pub const fn intersects(self, other: Kind) -> bool {
        self.0 & other.0 != 0
    }

    /// The rule engine's `$events/...` sources this kind feeds.
    pub fn rule_kinds(self) -> &'static [EventKind] {
        match self {
            Kind::CONNECTED => &[
                EventKind::ClientCheckAuthnComplete,
                EventKind::ClientConnack,
                EventKind::ClientConnected,
            ],
            Kind::CONNACK_REFUSED => &[EventKind::ClientConnack],
            Kind::DISCONNECTED => &[EventKind::ClientDisconnected],
            Kind::AUTHZ_CHECKED => &[EventKind::ClientCheckAuthzComplete],
            Kind::SUBSCRIBED => &[EventKind::SessionSubscribed],
            Kind::UNSUBSCRIBED => &[EventKind::SessionUnsubscribed],
            Kind::DELIVERED => &[EventKind::MessageDelivered],
            Kind::ACKED => &[EventKind::MessageAcked],
            Kind::MESSAGE_DROPPED => &[EventKind::MessageDropped],
            Kind::DELIVERY_DROPPED => &[EventKind::DeliveryDropped],
            _ => &[],
        }
    }

    /// The plugins' `on-event` kind this kind feeds (empty: none).
    pub fn plugin_set(self) -> EventSet {
        match self {
            Kind::CONNECTED => EventSet::CONNECTED,
            Kind::DISCONNECTED => EventSet::DISCONNECTED,
            Kind::SUBSCRIBED => EventSet::SUBSCRIBED,
            Kind::UNSUBSCRIBED => EventSet::UNSUBSCRIBED,
            Kind::DELIVERED => EventSet::DELIVERED,
            Kind::ACKED => EventSet::ACKED,
            Kind::MESSAGE_DROPPED | Kind::DELIVERY_DROPPED => EventSet::DROPPED,
            _ => EventSet::empty(),
        }
    }

    /// Does this kind make a `$SYS` client notice?
    pub fn sys_notice(self) -> bool {
        self == Kind::CONNECTED || self == Kind::DISCONNECTED
    }
}

/// Who an event is about: a client as its connection knows it.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub peer: SocketAddr,
}

/// What a CONNECT asked for that client events report.
#[derive(Debug, Clone, Copy)]
pub struct ConnectFlags {
    pub version: Version,
    /// The keep-alive the client asked for (seconds).
    pub keep_alive: u16,
    pub clean_start: bool,
}

/// What an authorization was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzAction {
    Publish,
    Subscribe,
}

/// Why a delivery to one subscriber was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's queue was full (`mqtt.max_queued_messages` / `max_queued_bytes`).
    QueueFull,
    /// The message expired before it could be sent.
    Expired,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
}

impl DropReason {
    /// The rule engine's (EMQX's) name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
        }
    }

    /// The words plugins get.
    pub fn words(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too large",
        }
    }
}

/// One event, borrowing what it is about.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Connected {
        client: Client<'a>,
        connect: ConnectFlags,
        /// Session expiry interval in force (seconds).
        expiry: u32,
        anonymous: bool,
        /// What the authenticating plugin said of the client.
        superuser: bool,
        attributes: &'a [(String, String)],
        connected_at_ms: i64,
    },
    ConnackRefused {
        client: Client<'a>,
        connect: ConnectFlags,
        /// The 5.0 CONNACK reason code.
        code: u8,
    },
    Disconnected {
        client: Client<'a>,
        connect: ConnectFlags,
        expiry: u32,
        /// EMQX's name: `normal`, `takenover`, `keepalive_timeout`,
        /// `kicked`, `protocol_error`, `sock_closed`.
        reason: &'static str,
        /// The DISCONNECT reason code, if a DISCONNECT was sent or received.
        code: Option<u8>,
        description: &'a str,
        disconnected_at_ms: i64,
    },
    AuthzChecked {
        client: Client<'a>,
        action: AuthzAction,
        topic: &'a str,
        allowed: bool,
        /// `plugin`, `superuser` or `default`.
        source: &'static str,
    },
    Subscribed {
        client: Client<'a>,
        filter: &'a str,
        /// The QoS granted.
        qos: QoS,
    },
    Unsubscribed {
        client: Client<'a>,
        filter: &'a str,
    },
    Delivered {
        receiver: &'a str,
        msg: &'a Message,
        qos: QoS,
        packet_id: u16,
    },
    Acked {
        receiver: Client<'a>,
        msg: &'a Message,
        qos: QoS,
        packet_id: u16,
    },
    /// No subscription matched.
    MessageDropped {
        msg: &'a Message,
    },
    DeliveryDropped {
        receiver: &'a str,
        msg: &'a Message,
        qos: QoS,
        reason: DropReason,
    },
    WillPublished {
        client_id: &'a str,
        msg: &'a Message,
    },
    SessionExpired {
        client_id: &'a str,
    },
}

impl Event<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Event::Connected { .. } => Kind::CONNECTED,
            Event::ConnackRefused { .. } => Kind::CONNACK_REFUSED,
            Event::Disconnected { .. } => Kind::DISCONNECTED,
            Event::AuthzChecked { .. } => Kind::AUTHZ_CHECKED,
            Event::Subscribed { .. } => Kind::SUBSCRIBED,
            Event::Unsubscribed { .. } => Kind::UNSUBSCRIBED,
            Event::Delivered { .. } => Kind::DELIVERED,
            Event::Acked { .. } => Kind::ACKED,
            Event::MessageDropped { .. } => Kind::MESSAGE_DROPPED,
            Event::DeliveryDropped { .. } => Kind::DELIVERY_DROPPED,
            Event::WillPublished { .. } => Kind::WILL_PUBLISHED,
            Event::SessionExpired { .. } => Kind::SESSION_EXPIRED,
        }
    }
}

/// A listener given to the broker when it is built (`broker::Parts::sinks`):
/// a cluster following connections and sessions, a dashboard's live stream.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// The kinds this sink wants; read once, when the broker is built.
    fn kinds(&self) -> Kind;

    /// Called at the event point, on the thread of the connection or timer
    /// that raised it, possibly under no lock but with the publish in
    /// progress: hand the event to a queue, never block.
    fn on_event(&self, event: &Event<'_>);
}
