//! Out over the link: the bridge session's buffer -> the inflight window ->
//! PUBLISH packets with remote topics, and the remote's acknowledgements.
//!
//! The session is the one the router fills ([`super::Bridge::session`]);
//! this is its writer in the client role. Packet ids, the inflight window
//! and the QoS 2 stages live in the session's state, and every change to
//! them is submitted to the store (bridge keys) under its lock, as the
//! server's writer does for a client: a QoS 2 PUBLISH leaves only once its
//! packet id is durable, PUBREL only once "released" is.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;
use midge_protocol::{encode, encoded_len, reason, topic, Ack, Packet, Publish, QoS, Version};
use tracing::{debug, warn};

use super::status::Dropped;
use super::Bridge;
use crate::session::proto::{self, PubRec};
use crate::session::{Delivery, Inflight, Session, Stage};
use crate::store::Op;

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

/// What the remote's CONNACK allows.
#[derive(Debug, Clone, Copy)]
pub(super) struct RemoteLimits {
    pub version: Version,
    /// Inflight window: `max_inflight`, lowered by the remote's Receive Maximum.
    pub window: usize,
    pub max_qos: QoS,
    pub retain_available: bool,
    pub max_packet_size: usize,
}

enum Item {
    Publish {
        packet_id: u16,
        dup: bool,
        delivery: Delivery,
    },
    Release(u16),
}

/// The outbound half of one link.
pub(super) struct Outbound {
    pub limits: RemoteLimits,
    items: Vec<Item>,
}

impl Outbound {
    pub fn new(limits: RemoteLimits) -> Outbound {
        Outbound {
            limits,
            items: Vec::new(),
        }
    }

    /// Takes what can go out now: after a reconnect every inflight message
    /// again (PUBLISH with DUP, or PUBREL), then queued messages while the
    /// window has room. Returns the store ticket to wait for before the
    /// bytes are written (0: none), and whether it stopped at the batch
    /// size (more may be ready: collect again once written).
    pub fn collect(&mut self, session: &Session) -> (u64, bool) {
        let mut st = session.state.lock();
        let mut ticket = 0;
        if st.resend {
            st.resend = false;
            for i in &st.inflight {
                self.items.push(match i.stage {
                    Stage::Published => Item::Publish {
                        packet_id: i.packet_id,
                        dup: true,
                        delivery: i.delivery.clone(),
                    },
                    Stage::Released => Item::Release(i.packet_id),
                });
            }
        }
        while self.items.len() < BATCH {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= self.limits.window {
                break;
            }
            let Some(mut d) = st.queue.pop_front() else {
                break;
            };
            st.queued_bytes -= d.msg.payload.len();
            // The remote's Maximum QoS: sending more is a protocol error.
            if d.qos > self.limits.max_qos {
                d.qos = self.limits.max_qos;
            }
            if d.qos == QoS::AtMostOnce {
                // Never acknowledged: done once written.
                session.forget(d.seq);
                d.seq = 0;
                self.items.push(Item::Publish {
                    packet_id: 0,
                    dup: false,
                    delivery: d,
                });
                continue;
            }
            let packet_id = st.alloc_packet_id();
            if d.seq != 0 {
                let t = session.store_op(Op::Inflight(
                    session.client_id.clone(),
                    d.seq,
                    packet_id,
                    Stage::Published,
                ));
                if d.qos == QoS::ExactlyOnce {
                    ticket = t;
                }
            }
            st.inflight.push_back(Inflight {
                packet_id,
                delivery: d.clone(),
                stage: Stage::Published,
            });
            self.items.push(Item::Publish {
                packet_id,
                dup: false,
                delivery: d,
            });
        }
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
                Item::Release(id) => {
                    encode(&Packet::PubRel(Ack::new(id, 0)), l.version, buf);
                    continue;
                }
                Item::Publish {
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
            let mut p = Publish {
                dup,
                qos: d.qos,
                retain: d.retain && l.retain_available,
                topic: topic.into(),
                packet_id,
                properties: Default::default(),
                payload: d.msg.payload.clone(),
            };
            if l.version == Version::V5 {
                p.properties = d.msg.properties.clone();
                if p.properties.message_expiry_interval != remaining {
                    p.properties.message_expiry_interval = remaining;
                }
                p.properties
                    .user_properties
                    .push((VIA.into(), bridge.spec.client_id.as_str().into()));
            }
            let packet = Packet::Publish(p);
            if encoded_len(&packet, l.version) > l.max_packet_size {
                skip(Dropped::TooLarge);
                continue;
            }
            encode(&packet, l.version, buf);
            sent += 1;
        }
        if sent > 0 {
            bridge.status.sent.fetch_add(sent, Ordering::Relaxed);
        }
        if !unsendable.is_empty() {
            let s = &bridge.session;
            let mut st = s.state.lock();
            st.inflight.retain(|i| {
                if !unsendable.contains(&i.packet_id) {
                    return true;
                }
                s.forget(i.delivery.seq);
                false
            });
        }
    }

    /// PUBACK: the QoS 1 message is done (delivered, or refused: counted).
    /// The window rules are the session core's (`session::proto`), the same
    /// the server side applies to its subscribers' acks.
    pub fn puback(&self, bridge: &Bridge, a: &Ack) {
        let s = &bridge.session;
        let mut st = s.state.lock();
        if let Some(done) = proto::puback(&mut st.inflight, a.packet_id) {
            // A lost delete only means a duplicate QoS 1 resend: no wait.
            s.forget(done.delivery.seq);
            drop(st);
            done_by_remote(bridge, &done.delivery, a.reason);
        }
        s.notify.notify_one();
    }

    /// PUBREC: the remote has the QoS 2 message; returns the store ticket
    /// to wait for and the PUBREL to send after it (PUBREL with 0x92 for an
    /// id we do not know, as a server would; a repeated PUBREC gets its
    /// PUBREL again).
    pub fn pubrec(&self, bridge: &Bridge, a: &Ack) -> Option<(u64, Packet)> {
        let s = &bridge.session;
        let mut st = s.state.lock();
        let refused = |st: &crate::session::SessionState| {
            st.inflight
                .iter()
                .find(|i| i.packet_id == a.packet_id)
                .map(|i| i.delivery.clone())
        };
        let delivery = if a.reason >= 0x80 { refused(&st) } else { None };
        match proto::pubrec(&mut st.inflight, a.packet_id, a.reason) {
            PubRec::Release { seq } => {
                let t = if seq != 0 {
                    s.store_op(Op::Inflight(
                        s.client_id.clone(),
                        seq,
                        a.packet_id,
                        Stage::Released,
                    ))
                } else {
                    0
                };
                Some((t, Packet::PubRel(Ack::new(a.packet_id, 0))))
            }
            PubRec::Refused { seq } => {
                s.forget(seq);
                drop(st);
                if let Some(d) = delivery {
                    done_by_remote(bridge, &d, a.reason);
                }
                s.notify.notify_one();
                None
            }
            PubRec::Unknown => Some((
                0,
                Packet::PubRel(Ack::new(a.packet_id, reason::PACKET_IDENTIFIER_NOT_FOUND)),
            )),
        }
    }

    /// PUBCOMP: the QoS 2 message is done. After a lost remote session it
    /// may carry 0x92 (the remote no longer knows the id): done as well.
    pub fn pubcomp(&self, bridge: &Bridge, a: &Ack) {
        let s = &bridge.session;
        let mut st = s.state.lock();
        if let Some(done) = proto::pubcomp(&mut st.inflight, a.packet_id) {
            s.forget(done.delivery.seq);
            drop(st);
            bridge.status.acked.fetch_add(1, Ordering::Relaxed);
        }
        s.notify.notify_one();
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
