//! Out over the link: the bridge session's buffer -> the inflight window ->
//! PUBLISH packets with remote topics, and the remote's acknowledgements.
//!
//! The session is the one the router fills ([`super::Bridge::session`]);
//! this is its writer in the client role. The window and the acks are the
//! session core's (`session::client`: `Session::take_outgoing`,
//! `withdraw`, `remote_ack`, over the same transitions the server side
//! applies to its clients' acks): packet ids, the inflight window and the
//! QoS 2 stages live in the session's state, and every change to them is
//! submitted to the store (bridge keys) under its lock, as for a client: a
//! QoS 2 PUBLISH leaves only once its packet id is durable, PUBREL only
//! once "released" is. What is left here is the bridge's own: mapping each
//! topic through the `out` directions, the loop marker, topic aliases and
//! the counters.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;
use midge_protocol::{encode, encoded_len, topic, Ack, ByteStr, Packet, Publish, Version};
use tracing::{debug, warn};

use super::status::Dropped;
use super::Bridge;
use crate::session::client::{Negotiated, Outgoing};
use crate::session::proto::TopicAliasesOut;
use crate::session::{Delivery, Session};

/// Subscription identifiers of a delivery whose topic is already the
/// remote one (the rule action `bridge`). No subscription has id 0.
pub(super) const PREMAPPED: [u32; 1] = [0];

/// The 5.0 user property a bridge adds to what it forwards, with its
/// client id at the remote as value: a bridge never forwards (out or in) a
/// message that already carries its own, so two bridges forwarding the same
/// topics in opposite directions send a message back at most once, instead
/// of around forever.
pub(super) const VIA: &str = "midge-bridge-via";

/// Did `msg` already go through the bridge whose client id is `id`?
pub(super) fn went_through(msg_props: &midge_protocol::Properties, id: &str) -> bool {
    msg_props
        .user_properties
        .iter()
        .any(|(k, v)| k.as_str() == VIA && v.as_str() == id)
}

/// Most items taken from the session per write.
const BATCH: usize = 512;

/// The outbound half of one link.
pub(super) struct Outbound {
    /// What the remote's CONNACK allows.
    pub limits: Negotiated,
    items: Vec<Outgoing>,
    /// Topic aliases given to the remote on this link (up to its Topic
    /// Alias Maximum; a new link starts without any).
    aliases: TopicAliasesOut,
}

impl Outbound {
    pub fn new(limits: Negotiated) -> Outbound {
        Outbound {
            limits,
            items: Vec::new(),
            aliases: TopicAliasesOut::default(),
        }
    }

    /// Takes what can go out now: after a reconnect every inflight message
    /// again (PUBLISH with DUP, or PUBREL), then queued messages while the
    /// window has room. Returns the store ticket to wait for before the
    /// bytes are written (0: none), and whether it stopped at the batch
    /// size (more may be ready: collect again once written).
    pub fn collect(&mut self, session: &Session) -> (u64, bool) {
        let l = self.limits;
        let ticket = session.take_outgoing(l.window, l.max_qos, BATCH, &mut self.items);
        (ticket, self.items.len() >= BATCH)
    }

    /// Encodes what `collect` took into `buf`. A message whose topic does
    /// not map, that expired, or that is larger than the remote accepts is
    /// dropped (counted) and leaves the window and the store.
    pub fn encode(&mut self, bridge: &Bridge, buf: &mut BytesMut) {
        let now = Instant::now();
        let l = self.limits;
        let mut unsendable: Vec<u16> = Vec::new();
        let mut sent = 0u64;
        for item in self.items.drain(..) {
            let (packet_id, dup, d) = match item {
                Outgoing::Release(id) => {
                    encode(&Packet::PubRel(Ack::new(id, 0)), l.version, buf);
                    continue;
                }
                Outgoing::Publish {
                    packet_id,
                    dup,
                    delivery,
                } => (packet_id, dup, delivery),
            };
            let mut skip = |why: Dropped| {
                bridge.status.drop(why);
                if packet_id != 0 {
                    unsendable.push(packet_id);
                }
            };
            let Ok(remaining) = d.msg.remaining_expiry(now) else {
                skip(Dropped::Expired);
                continue;
            };
            if l.version == Version::V5 && went_through(&d.msg.properties, &bridge.spec.client_id) {
                skip(Dropped::Looped);
                continue;
            }
            let Some(topic) = remote_topic(bridge, &d) else {
                if bridge
                    .status
                    .dropped(Dropped::Unmappable)
                    .is_multiple_of(1000)
                {
                    warn!(bridge = %bridge.name(), topic = %d.msg.topic, "no valid remote topic for this message (see the out mappings); dropped");
                }
                skip(Dropped::Unmappable);
                continue;
            };
            let mut topic = ByteStr::from(topic);
            let mut alias = None;
            let new_alias =
                self.aliases
                    .apply(l.version, l.topic_alias_max, &mut topic, &mut alias);
            let mut p = Publish {
                dup,
                qos: d.qos,
                retain: d.retain && l.retain_available,
                topic,
                packet_id,
                properties: Default::default(),
                payload: d.msg.payload.clone(),
            };
            if l.version == Version::V5 {
                p.properties = d.msg.properties.clone();
                if p.properties.message_expiry_interval != remaining {
                    p.properties.message_expiry_interval = remaining;
                }
                if p.properties.topic_alias != alias {
                    p.properties.topic_alias = alias;
                }
                p.properties
                    .user_properties
                    .push((VIA.into(), bridge.spec.client_id.as_str().into()));
            }
            let packet = Packet::Publish(p);
            if encoded_len(&packet, l.version) > l.max_packet_size {
                if let Some(t) = new_alias {
                    self.aliases.forget(&t);
                }
                skip(Dropped::TooLarge);
                continue;
            }
            encode(&packet, l.version, buf);
            sent += 1;
        }
        if sent > 0 {
            bridge.status.sent.fetch_add(sent, Ordering::Relaxed);
        }
        bridge.session.withdraw(&unsendable);
    }

    /// The remote's PUBACK, PUBREC or PUBCOMP (`None` for another packet),
    /// through the session core (`Session::remote_ack`): returns the store
    /// ticket to wait for and the answer to send after it (PUBREL for
    /// PUBREC); a message the remote is done with is counted.
    pub fn ack(&self, bridge: &Bridge, p: &Packet) -> Option<(u64, Option<Packet>)> {
        let a = bridge.session.remote_ack(p)?;
        if let Some((d, code)) = &a.done {
            done_by_remote(bridge, d, *code);
        }
        Some((a.ticket, a.reply))
    }
}

/// Counts a QoS 1/2 message the remote answered: acknowledged, or refused
/// with a reason code (logged, kept as the last error).
fn done_by_remote(bridge: &Bridge, d: &Delivery, code: u8) {
    if code < 0x80 {
        bridge.status.acked.fetch_add(1, Ordering::Relaxed);
        return;
    }
    bridge.status.drop(Dropped::Refused);
    let why = format!(
        "the remote refused a message on `{}` with reason code {code:#04x}",
        d.msg.topic
    );
    if bridge.status.dropped(Dropped::Refused) % 1000 == 1 {
        warn!(bridge = %bridge.name(), "{why}");
    } else {
        debug!(bridge = %bridge.name(), "{why}");
    }
    bridge.status.set_error(why);
}

/// The topic `d` gets at the remote: its own for the rule action `bridge`,
/// else the mapping of the first `out` direction whose filter matches.
fn remote_topic(bridge: &Bridge, d: &Delivery) -> Option<String> {
    if d.sub_ids.as_slice() == PREMAPPED {
        return Some(d.msg.topic.to_string());
    }
    bridge
        .spec
        .outbound
        .iter()
        .find(|o| topic::matches(&o.filter, &d.msg.topic))
        .and_then(|o| o.mapping.apply(&d.msg.topic))
}
