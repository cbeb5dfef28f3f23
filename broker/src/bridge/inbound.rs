//! In over the link: PUBLISH and PUBREL from the remote -> this broker.
//!
//! A message from the remote takes the topic of the first `in` direction
//! whose filter matches it, then goes through [`Broker::publish`] (rules,
//! retain, routing) with `$bridge/<name>` as its publisher: the bridge's own
//! `out` subscriptions skip it (No Local), so it never goes back. Its PUBACK
//! / PUBREC waits for the store ticket of what publishing it wrote, as a
//! client's does. QoS 2 ids are kept in the bridge session (and the store)
//! until PUBREL, so a resend after a reconnect or a restart is not published
//! twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use midge_protocol::{topic, Ack, ByteStr, Packet, Publish, QoS, Version};
use tracing::debug;

use super::status::Dropped;
use super::Bridge;
use crate::broker::Broker;
use crate::message::{ClientInfo, Message};
use crate::session::proto;
use crate::store::Op;

/// What the link does after a packet: wait for `ticket`, then send `ack`.
#[derive(Debug, Default)]
pub(super) struct Reply {
    pub ticket: u64,
    pub ack: Option<Packet>,
}

/// The inbound half of one link.
#[derive(Debug)]
pub(super) struct Inbound {
    /// The publisher of what comes in (client id `$bridge/<name>`, the
    /// remote's address).
    pub origin: Arc<ClientInfo>,
    /// Most QoS 2 messages the remote may have unreleased (our Receive
    /// Maximum in CONNECT).
    pub receive_maximum: usize,
}

impl Inbound {
    /// A PUBLISH from the remote. `Err`: a protocol error (the link closes).
    pub fn publish(&self, broker: &Broker, bridge: &Bridge, p: Publish) -> Result<Reply, String> {
        if p.properties.topic_alias.is_some() {
            return Err("the remote used a topic alias (we allow none)".into());
        }
        bridge.status.received.fetch_add(1, Ordering::Relaxed);
        let id = p.packet_id;
        match p.qos {
            QoS::AtMostOnce => {
                self.route(broker, bridge, p);
                Ok(Reply::default())
            }
            QoS::AtLeastOnce => Ok(Reply {
                ticket: self.route(broker, bridge, p),
                ack: Some(Packet::PubAck(Ack::new(id, 0))),
            }),
            QoS::ExactlyOnce => {
                let s = &bridge.session;
                {
                    let st = s.state.lock();
                    if st.incoming_qos2.contains(&id) {
                        // A resend before PUBREL: published once already.
                        return Ok(Reply {
                            ticket: 0,
                            ack: Some(Packet::PubRec(Ack::new(id, 0))),
                        });
                    }
                    if st.incoming_qos2.len() >= self.receive_maximum {
                        return Err(format!(
                            "the remote exceeded our Receive Maximum ({})",
                            self.receive_maximum
                        ));
                    }
                }
                // Published first, the id stored after: a crash between the
                // two writes makes a duplicate, never a loss.
                let routed = self.route(broker, bridge, p);
                let mut st = s.state.lock();
                st.incoming_qos2.insert(id);
                let t = if st.persist {
                    s.store_op(Op::PutQos2(s.client_id.clone(), id))
                } else {
                    0
                };
                Ok(Reply {
                    ticket: routed.max(t),
                    ack: Some(Packet::PubRec(Ack::new(id, 0))),
                })
            }
        }
    }

    /// PUBREL: the QoS 2 id is free again once that is durable; PUBCOMP.
    /// The session core's rule (`Session::pubrel`), as for a client.
    pub fn pubrel(&self, bridge: &Bridge, a: &Ack, v5: bool) -> Reply {
        let (known, ticket) = bridge.session.pubrel(a.packet_id);
        let version = if v5 { Version::V5 } else { Version::V311 };
        let code = proto::pubcomp_code(known, version);
        Reply {
            ticket,
            ack: Some(Packet::PubComp(Ack::new(a.packet_id, code))),
        }
    }

    /// Publishes `p` here under its mapped topic; returns the store ticket.
    fn route(&self, broker: &Broker, bridge: &Bridge, mut p: Publish) -> u64 {
        let mapped = bridge
            .spec
            .inbound
            .iter()
            .find(|d| topic::matches(&d.filter, &p.topic))
            .and_then(|d| d.mapping.apply(&p.topic));
        if super::outbound::went_through(&p.properties, &bridge.spec.client_id) {
            bridge.status.drop(Dropped::Looped);
            return 0;
        }
        let Some(local) = mapped else {
            debug!(bridge = %bridge.name(), topic = %p.topic, "message from the remote matches no `in` mapping; dropped");
            bridge.status.drop(Dropped::Unmappable);
            return 0;
        };
        p.topic = ByteStr::from(local);
        let msg = Message::from_publish(p, Some(self.origin.clone()));
        broker.publish(Arc::new(msg))
    }
}
