//! Evaluation input: one message or event, filled cheaply by the broker.
//!
//! Fields are borrowed; the payload is JSON-decoded lazily, at most once per
//! [`Input`], and shared by every rule evaluated against the same input. The
//! payload itself is a binary ([`Value::Bytes`]): a rule that selects it gets
//! the bytes that came in, shared (no copy) when the broker hands over its
//! `Bytes`.

use std::cell::OnceCell;

use bytes::Bytes;

use crate::value::{Map, Value};

/// Client/session/delivery events a rule can select `FROM "$events/..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `$events/client_connected`
    ClientConnected,
    /// `$events/client_disconnected`
    ClientDisconnected,
    /// `$events/client_connack`
    ClientConnack,
    /// `$events/session_subscribed`
    SessionSubscribed,
    /// `$events/session_unsubscribed`
    SessionUnsubscribed,
    /// `$events/message_delivered`
    MessageDelivered,
    /// `$events/message_acked`
    MessageAcked,
    /// `$events/message_dropped`
    MessageDropped,
    /// `$events/delivery_dropped`
    DeliveryDropped,
    /// `$events/client_check_authn_complete`
    ClientCheckAuthnComplete,
    /// `$events/client_check_authz_complete`
    ClientCheckAuthzComplete,
}

/// Fields of a published message (`FROM "t/#"`), as EMQX documents them.
pub const MESSAGE_FIELDS: &[&str] = &[
    "event",
    "event_type",
    "id",
    "clientid",
    "username",
    "payload",
    "peerhost",
    "peername",
    "topic",
    "qos",
    "flags",
    "retain",
    "headers",
    "pub_props",
    "timestamp",
    "publish_received_at",
    "node",
    "client_attrs",
    "metadata",
];

const CONNECTED: &[&str] = &[
    "event",
    "clientid",
    "username",
    "mountpoint",
    "peername",
    "sockname",
    "proto_name",
    "proto_ver",
    "keepalive",
    "clean_start",
    "expiry_interval",
    "is_bridge",
    "conn_props",
    "connected_at",
    "timestamp",
    "node",
    "client_attrs",
    "metadata",
];
const DISCONNECTED: &[&str] = &[
    "event",
    "reason",
    "clientid",
    "username",
    "peername",
    "sockname",
    "proto_name",
    "proto_ver",
    "disconn_props",
    "disconnected_at",
    "timestamp",
    "node",
    "client_attrs",
    "metadata",
];
const CONNACK: &[&str] = &[
    "event",
    "reason_code",
    "clientid",
    "username",
    "peername",
    "sockname",
    "proto_name",
    "proto_ver",
    "keepalive",
    "clean_start",
    "expiry_interval",
    "connected_at",
    "conn_props",
    "timestamp",
    "node",
    "metadata",
];
const SUBSCRIBED: &[&str] = &[
    "event",
    "clientid",
    "username",
    "peerhost",
    "peername",
    "topic",
    "qos",
    "sub_props",
    "timestamp",
    "node",
    "client_attrs",
    "metadata",
];
const UNSUBSCRIBED: &[&str] = &[
    "event",
    "clientid",
    "username",
    "peerhost",
    "peername",
    "topic",
    "qos",
    "unsub_props",
    "timestamp",
    "node",
    "client_attrs",
    "metadata",
];
const DELIVERED: &[&str] = &[
    "event",
    "id",
    "from_clientid",
    "from_username",
    "clientid",
    "username",
    "payload",
    "peerhost",
    "peername",
    "topic",
    "qos",
    "flags",
    "retain",
    "pub_props",
    "publish_received_at",
    "timestamp",
    "node",
    "metadata",
];
const ACKED: &[&str] = &[
    "event",
    "id",
    "from_clientid",
    "from_username",
    "clientid",
    "username",
    "payload",
    "peerhost",
    "peername",
    "topic",
    "qos",
    "flags",
    "retain",
    "pub_props",
    "puback_props",
    "publish_received_at",
    "timestamp",
    "node",
    "metadata",
];
const MSG_DROPPED: &[&str] = &[
    "event",
    "id",
    "reason",
    "clientid",
    "username",
    "payload",
    "peerhost",
    "peername",
    "topic",
    "qos",
    "flags",
    "retain",
    "pub_props",
    "publish_received_at",
    "timestamp",
    "node",
    "metadata",
];
const DELIVERY_DROPPED: &[&str] = &[
    "event",
    "id",
    "reason",
    "from_clientid",
    "from_username",
    "clientid",
    "username",
    "payload",
    "peerhost",
    "peername",
    "topic",
    "qos",
    "flags",
    "retain",
    "pub_props",
    "publish_received_at",
    "timestamp",
    "node",
    "metadata",
];
const AUTHN: &[&str] = &[
    "event",
    "clientid",
    "username",
    "peername",
    "reason_code",
    "is_superuser",
    "is_anonymous",
    "timestamp",
    "node",
    "client_attrs",
    "metadata",
];
const AUTHZ: &[&str] = &[
    "event",
    "clientid",
    "username",
    "peerhost",
    "peername",
    "topic",
    "action",
    "authz_source",
    "result",
    "timestamp",
    "node",
    "client_attrs",
    "metadata",
];

impl EventKind {
    /// Every event kind.
    pub const ALL: [EventKind; 11] = [
        EventKind::ClientConnected,
        EventKind::ClientDisconnected,
        EventKind::ClientConnack,
        EventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed,
        EventKind::MessageDelivered,
        EventKind::MessageAcked,
        EventKind::MessageDropped,
        EventKind::DeliveryDropped,
        EventKind::ClientCheckAuthnComplete,
        EventKind::ClientCheckAuthzComplete,
    ];

    /// The `FROM` topic, e.g. `$events/client_connected`.
    pub fn topic(self) -> &'static str {
        match self {
            EventKind::ClientConnected => "$events/client_connected",
            EventKind::ClientDisconnected => "$events/client_disconnected",
            EventKind::ClientConnack => "$events/client_connack",
            EventKind::SessionSubscribed => "$events/session_subscribed",
            EventKind::SessionUnsubscribed => "$events/session_unsubscribed",
            EventKind::MessageDelivered => "$events/message_delivered",
            EventKind::MessageAcked => "$events/message_acked",
            EventKind::MessageDropped => "$events/message_dropped",
            EventKind::DeliveryDropped => "$events/delivery_dropped",
            EventKind::ClientCheckAuthnComplete => "$events/client_check_authn_complete",
            EventKind::ClientCheckAuthzComplete => "$events/client_check_authz_complete",
        }
    }

    /// The value of the `event` field, e.g. `client.connected`.
    pub fn event_name(self) -> &'static str {
        match self {
            EventKind::ClientConnected => "client.connected",
            EventKind::ClientDisconnected => "client.disconnected",
            EventKind::ClientConnack => "client.connack",
            EventKind::SessionSubscribed => "session.subscribed",
            EventKind::SessionUnsubscribed => "session.unsubscribed",
            EventKind::MessageDelivered => "message.delivered",
            EventKind::MessageAcked => "message.acked",
            EventKind::MessageDropped => "message.dropped",
            EventKind::DeliveryDropped => "delivery.dropped",
            EventKind::ClientCheckAuthnComplete => "client.check_authn_complete",
            EventKind::ClientCheckAuthzComplete => "client.check_authz_complete",
        }
    }

    /// Parses a `$events/...` topic.
    pub fn from_topic(topic: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.topic() == topic)
    }

    /// The field names a rule may reference for this event.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            EventKind::ClientConnected => CONNECTED,
            EventKind::ClientDisconnected => DISCONNECTED,
            EventKind::ClientConnack => CONNACK,
            EventKind::SessionSubscribed => SUBSCRIBED,
            EventKind::SessionUnsubscribed => UNSUBSCRIBED,
            EventKind::MessageDelivered => DELIVERED,
            EventKind::MessageAcked => ACKED,
            EventKind::MessageDropped => MSG_DROPPED,
            EventKind::DeliveryDropped => DELIVERY_DROPPED,
            EventKind::ClientCheckAuthnComplete => AUTHN,
            EventKind::ClientCheckAuthzComplete => AUTHZ,
        }
    }
}

/// What produced an [`Input`]: a published message or an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A PUBLISH (matched against the rule's topic filters).
    Message,
    /// A client/session/delivery event.
    Event(EventKind),
}

impl Source {
    /// Field names valid for this source.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Source::Message => MESSAGE_FIELDS,
            Source::Event(k) => k.fields(),
        }
    }
}

/// One message or event to evaluate rules against.
///
/// Build it once per message with [`Input::message`] / [`Input::event`] and
/// the setters, then pass it to every candidate rule: the payload JSON is
/// decoded at most once and shared. Fields that are not set evaluate to
/// `null` (EMQX `undefined`). Anything not covered by a setter (`pub_props`,
/// `headers`, `reason`, `conn_props`, `from_clientid`, ...) goes in
/// [`Input::extra`].
#[derive(Debug)]
pub struct Input<'a> {
    source: Source,
    topic: Option<&'a str>,
    payload: Option<Payload<'a>>,
    clientid: Option<&'a str>,
    username: Option<&'a str>,
    username_set: bool,
    peerhost: Option<&'a str>,
    id: Option<&'a str>,
    qos: Option<u8>,
    flags: Option<(bool, bool)>,
    timestamp: Option<i64>,
    publish_received_at: Option<i64>,
    node: Option<&'a str>,
    extra: Option<&'a Map>,
    lazy: Option<Lazy<'a>>,
    json: OnceCell<Result<Value, String>>,
}

/// The payload as the caller has it: a slice (copied when a rule selects
/// it) or a shared `Bytes` (cloned, no copy).
#[derive(Debug, Clone, Copy)]
enum Payload<'a> {
    Slice(&'a [u8]),
    Shared(&'a Bytes),
}

impl Payload<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Slice(s) => s,
            Payload::Shared(b) => b,
        }
    }

    fn to_value(self) -> Value {
        match self {
            Payload::Slice(s) => Value::Bytes(Bytes::copy_from_slice(s)),
            Payload::Shared(b) => Value::Bytes(b.clone()),
        }
    }
}

/// Fields the caller computes only when a rule reads them (see
/// [`Input::lazy`]).
#[derive(Clone, Copy)]
struct Lazy<'a>(&'a dyn Fn(&str) -> Option<Value>);

impl std::fmt::Debug for Lazy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lazy(..)")
    }
}

impl<'a> Input<'a> {
    fn new(source: Source) -> Self {
        Input {
            source,
            topic: None,
            payload: None,
            clientid: None,
            username: None,
            username_set: false,
            peerhost: None,
            id: None,
            qos: None,
            flags: None,
            timestamp: None,
            publish_received_at: None,
            node: None,
            extra: None,
            lazy: None,
            json: OnceCell::new(),
        }
    }

    /// A published message on `topic` with `payload`.
    pub fn message(topic: &'a str, payload: &'a [u8]) -> Self {
        let mut i = Input::new(Source::Message);
        i.topic = Some(topic);
        i.payload = Some(Payload::Slice(payload));
        i
    }

    /// A published message whose payload is shared: `SELECT payload`
    /// clones the `Bytes` instead of copying them.
    pub fn message_shared(topic: &'a str, payload: &'a Bytes) -> Self {
        let mut i = Input::new(Source::Message);
        i.topic = Some(topic);
        i.payload = Some(Payload::Shared(payload));
        i
    }

    /// An event of `kind` (set `topic`/`payload` for message events).
    pub fn event(kind: EventKind) -> Self {
        Input::new(Source::Event(kind))
    }

    /// Sets the topic (message events, subscribe/unsubscribe, authz).
    #[must_use]
    pub fn topic(mut self, topic: &'a str) -> Self {
        self.topic = Some(topic);
        self
    }
    /// Sets the payload (message events).
    #[must_use]
    pub fn payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = Some(Payload::Slice(payload));
        self
    }
    /// Sets the payload (message events), shared.
    #[must_use]
    pub fn payload_shared(mut self, payload: &'a Bytes) -> Self {
        self.payload = Some(Payload::Shared(payload));
        self
    }
    /// Sets `clientid`.
    #[must_use]
    pub fn clientid(mut self, v: &'a str) -> Self {
        self.clientid = Some(v);
        self
    }
    /// Sets `username` (`None` = anonymous, reported as `null`).
    #[must_use]
    pub fn username(mut self, v: Option<&'a str>) -> Self {
        self.username = v;
        self.username_set = true;
        self
    }
    /// Sets `peerhost` (IP address without port).
    #[must_use]
    pub fn peerhost(mut self, v: &'a str) -> Self {
        self.peerhost = Some(v);
        self
    }
    /// Sets the message `id`.
    #[must_use]
    pub fn id(mut self, v: &'a str) -> Self {
        self.id = Some(v);
        self
    }
    /// Sets `qos`.
    #[must_use]
    pub fn qos(mut self, v: u8) -> Self {
        self.qos = Some(v);
        self
    }
    /// Sets the `flags` map (`retain`, `dup`).
    #[must_use]
    pub fn flags(mut self, retain: bool, dup: bool) -> Self {
        self.flags = Some((retain, dup));
        self
    }
    /// Sets `timestamp` (ms since the epoch).
    #[must_use]
    pub fn timestamp(mut self, v: i64) -> Self {
        self.timestamp = Some(v);
        self
    }
    /// Sets `publish_received_at` (ms since the epoch).
    #[must_use]
    pub fn publish_received_at(mut self, v: i64) -> Self {
        self.publish_received_at = Some(v);
        self
    }
    /// Sets `node`.
    #[must_use]
    pub fn node(mut self, v: &'a str) -> Self {
        self.node = Some(v);
        self
    }
    /// Any further fields (`pub_props`, `headers`, event-specific fields).
    #[must_use]
    pub fn extra(mut self, v: &'a Map) -> Self {
        self.extra = Some(v);
        self
    }

    /// Fields computed on demand: `fields(name)` is asked for a field that
    /// neither a setter nor [`Input::extra`] provides, each time a rule
    /// reads it (and for `SELECT *`). For fields that cost something to
    /// build (`id`, `peername`, `pub_props` ...) that most rules never read.
    #[must_use]
    pub fn lazy(mut self, fields: &'a dyn Fn(&str) -> Option<Value>) -> Self {
        self.lazy = Some(Lazy(fields));
        self
    }

    /// The source of this input.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The topic, if any.
    pub fn topic_str(&self) -> Option<&'a str> {
        self.topic
    }

    /// The raw payload bytes, if any.
    pub fn payload_bytes(&self) -> Option<&[u8]> {
        self.payload.as_ref().map(Payload::as_slice)
    }

    /// Whether the payload was already JSON-decoded (for tests/metrics).
    pub fn payload_decoded(&self) -> bool {
        self.json.get().is_some()
    }

    /// The payload decoded as JSON (decoded once, cached).
    pub(crate) fn payload_json(&self) -> Result<&Value, String> {
        let r = self.json.get_or_init(|| match &self.payload {
            None => Ok(Value::Undefined),
            Some(p) => serde_json::from_slice::<Value>(p.as_slice())
                .map_err(|e| format!("payload is not valid JSON: {e}")),
        });
        r.as_ref().map_err(Clone::clone)
    }

    /// Value of a field (`undefined` when not set). `payload` is the raw
    /// payload, as bytes.
    pub(crate) fn field(&self, name: &str) -> Value {
        self.field_opt(name).unwrap_or(Value::Undefined)
    }

    fn field_opt(&self, name: &str) -> Option<Value> {
        let s = |v: Option<&str>| v.map(|s| Value::Str(s.to_owned()));
        match name {
            "topic" if self.topic.is_some() => s(self.topic),
            "payload" => self.payload.map(Payload::to_value),
            "clientid" if self.clientid.is_some() => s(self.clientid),
            "username" if self.username_set => Some(s(self.username).unwrap_or(Value::Undefined)),
            "peerhost" if self.peerhost.is_some() => s(self.peerhost),
            "id" if self.id.is_some() => s(self.id),
            "qos" if self.qos.is_some() => self.qos.map(Value::from),
            "flags" if self.flags.is_some() => self.flags.map(|(retain, dup)| {
                let mut m = Map::new();
                m.insert("dup".into(), Value::Bool(dup));
                m.insert("retain".into(), Value::Bool(retain));
                Value::Map(m)
            }),
            "retain" if self.flags.is_some() => self.flags.map(|(r, _)| Value::Bool(r)),
            "timestamp" if self.timestamp.is_some() => self.timestamp.map(Value::from),
            "publish_received_at" if self.publish_received_at.is_some() => {
                self.publish_received_at.map(Value::from)
            }
            "node" if self.node.is_some() => s(self.node),
            "event" => Some(Value::Str(
                match self.source {
                    Source::Message => "message.publish",
                    Source::Event(k) => k.event_name(),
                }
                .to_owned(),
            )),
            _ => self
                .extra
                .and_then(|m| m.get(name))
                .cloned()
                .or_else(|| self.lazy.and_then(|f| (f.0)(name))),
        }
    }

    /// All fields that are set (what `SELECT *` returns).
    pub(crate) fn all_fields(&self) -> Map {
        let mut out = Map::new();
        for name in self.source.fields() {
            if *name == "retain" || *name == "event_type" || *name == "metadata" {
                continue;
            }
            if let Some(v) = self.field_opt(name) {
                out.insert((*name).to_owned(), v);
            }
        }
        if let Some(extra) = self.extra {
            for (k, v) in extra {
                out.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        out
    }
}
