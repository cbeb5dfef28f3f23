//! Event inputs (`$events/...`): the broker fills an [`EventFields`] only
//! when some rule listens to that event.

use bytes::Bytes;
use midge_protocol::Properties;
use midge_rules::{EventKind, Input, Map, Value};

use crate::message::{now_ms, Message};

/// Fields of one event; anything beyond the common ones goes in `extra`
/// under the name EMQX uses (`reason`, `peername`, `proto_ver`, ...).
#[derive(Debug, Default, Clone)]
pub struct EventFields {
    pub clientid: Option<String>,
    pub username: Option<String>,
    pub peerhost: Option<String>,
    pub topic: Option<String>,
    pub payload: Option<Bytes>,
    pub qos: Option<u8>,
    pub retain: Option<bool>,
    pub id: Option<String>,
    pub extra: Map,
}

impl EventFields {
    pub fn set(&mut self, key: &str, v: impl Into<Value>) -> &mut Self {
        self.extra.insert(key.to_string(), v.into());
        self
    }

    pub(super) fn input(&self, kind: EventKind) -> Input<'_> {
        let mut i = Input::event(kind)
            .timestamp(now_ms())
            .node(crate::node::name())
            .extra(&self.extra);
        if let Some(v) = &self.clientid {
            i = i.clientid(v);
        }
        if self.clientid.is_some() {
            i = i.username(self.username.as_deref());
        }
        if let Some(v) = &self.peerhost {
            i = i.peerhost(v);
        }
        if let Some(v) = &self.topic {
            i = i.topic(v);
        }
        if let Some(v) = &self.payload {
            i = i.payload_shared(v);
        }
        if let Some(v) = self.qos {
            i = i.qos(v);
        }
        if let Some(r) = self.retain {
            i = i.flags(r, false);
        }
        if let Some(v) = &self.id {
            i = i.id(v);
        }
        i
    }
}

/// 5.0 PUBLISH properties as EMQX shows them in `pub_props`. Correlation
/// data is binary and stays bytes.
pub fn pub_props(p: &Properties) -> Value {
    let mut m = Map::new();
    if !p.user_properties.is_empty() {
        let mut u = Map::new();
        let mut pairs = Vec::new();
        for (k, v) in &p.user_properties {
            u.insert(k.to_string(), Value::from(v.as_str()));
            let mut pair = Map::new();
            pair.insert("key".into(), Value::from(k.as_str()));
            pair.insert("value".into(), Value::from(v.as_str()));
            pairs.push(Value::Map(pair));
        }
        m.insert("User-Property".into(), Value::Map(u));
        m.insert("User-Property-Pairs".into(), Value::Array(pairs));
    }
    if let Some(v) = &p.content_type {
        m.insert("Content-Type".into(), Value::from(v.as_str()));
    }
    if let Some(v) = &p.response_topic {
        m.insert("Response-Topic".into(), Value::from(v.as_str()));
    }
    if let Some(v) = &p.correlation_data {
        m.insert("Correlation-Data".into(), Value::Bytes(v.clone()));
    }
    if let Some(v) = p.message_expiry_interval {
        m.insert("Message-Expiry-Interval".into(), Value::from(v));
    }
    if let Some(v) = p.payload_format_indicator {
        m.insert("Payload-Format-Indicator".into(), Value::from(v));
    }
    Value::Map(m)
}

/// Fields of a message event (`message_dropped`, ...): the message and its publisher.
pub fn message_fields(msg: &Message) -> EventFields {
    let mut f = EventFields {
        topic: Some(msg.topic.to_string()),
        payload: Some(msg.payload.clone()),
        qos: Some(msg.qos as u8),
        retain: Some(msg.retain),
        id: Some(format!("{:016X}", msg.id)),
        ..EventFields::default()
    };
    if let Some(o) = &msg.origin {
        f.clientid = Some(o.client_id.to_string());
        f.username = o.username.as_deref().map(str::to_string);
        f.peerhost = Some(o.peer.ip().to_string());
        f.set("peername", o.peer.to_string());
    }
    f.set("pub_props", pub_props(&msg.properties));
    f.set("publish_received_at", msg.timestamp_ms);
    let mut flags = Map::new();
    flags.insert("retain".into(), Value::Bool(msg.retain));
    flags.insert("dup".into(), Value::Bool(false));
    f.set("flags", Value::Map(flags));
    f
}

/// Fields of a delivery event (`message_delivered`, `message_acked`,
/// `delivery_dropped`): the message, its publisher as `from_*`, and the receiver.
pub fn delivery_fields(msg: &Message, receiver: &str) -> EventFields {
    let mut f = message_fields(msg);
    if let Some(o) = &msg.origin {
        f.set("from_clientid", o.client_id.to_string());
        f.set("from_username", o.username.as_deref().map(Value::from));
    }
    f.clientid = Some(receiver.to_string());
    f.username = None;
    f.peerhost = None;
    f.extra.remove("peername");
    f
}

/// Fields common to client events (`client_connected`, `client_connack`, ...).
pub fn client_fields(
    client_id: &str,
    username: Option<&str>,
    peer: std::net::SocketAddr,
) -> EventFields {
    let mut f = EventFields {
        clientid: Some(client_id.to_string()),
        username: username.map(str::to_string),
        peerhost: Some(peer.ip().to_string()),
        ..EventFields::default()
    };
    f.set("peername", peer.to_string());
    f
}
