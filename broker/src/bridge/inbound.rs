//! In over the link: PUBLISH and PUBREL from the remote -> this broker.
//!
//! A message from the remote takes the topic of the first `in` direction
//! whose filter matches it, then goes through [`Broker::publish`] (rules,
//! retain, routing) with `$bridge/<name>` as its publisher: the bridge's own
//! `out` subscriptions skip it (No Local), so it never goes back. Whether to
//! route it and how to acknowledge it is the session core's decision, as
//! for a client's PUBLISH ([`Session::on_publish`]): QoS 2 packet ids are
//! kept in the bridge session (and the store) until PUBREL, so a resend
//! (DUP, or after a reconnect or a restart) gets its PUBREC again without
//! being published twice, and more unreleased ids than our Receive Maximum
//! end the link. PUBREL goes through [`Session::on_ack`]. The PUBACK /
//! PUBREC waits for the store tickets of the id and of what publishing the
//! message wrote, as a client's does.
//!
//! [`Session::on_publish`]: crate::session::Session::on_publish
//! [`Session::on_ack`]: crate::session::Session::on_ack

use std::sync::atomic::Ordering;
use std::sync::Arc;

use midge_protocol::{reason, topic, ByteStr, Packet, Publish, Version};
use tracing::debug;

use super::status::Dropped;
use super::Bridge;
use crate::broker::Broker;
use crate::message::{ClientInfo, Message};

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
    pub receive_maximum: u16,
    /// The link's protocol version (the acks' reason codes).
    pub version: Version,
}

impl Inbound {
    /// A PUBLISH from the remote. `Err`: a protocol error (the link closes).
    pub fn publish(&self, broker: &Broker, bridge: &Bridge, p: Publish) -> Result<Reply, String> {
        if p.properties.topic_alias.is_some() {
            return Err("the remote used a topic alias (we allow none)".into());
        }
        let answer = bridge
            .session
            .on_publish(
                p.qos,
                p.packet_id,
                reason::SUCCESS,
                self.version,
                self.receive_maximum,
            )
            .map_err(|v| {
                format!(
                    "{} (reason code {:#04x}; our Receive Maximum is {})",
                    v.why, v.reason, self.receive_maximum
                )
            })?;
        let mut ticket = answer.ticket;
        if answer.route {
            bridge.status.received.fetch_add(1, Ordering::Relaxed);
            ticket = ticket.max(self.route(broker, bridge, p));
        }
        Ok(Reply {
            ticket,
            ack: answer.ack,
        })
    }

    /// PUBREL: the QoS 2 id is free again once that is durable; PUBCOMP
    /// (0x92 in 5.0 for an id not awaiting one). The session core's
    /// transition, as for a client.
    pub fn pubrel(&self, bridge: &Bridge, p: &Packet) -> Reply {
        let a = bridge.session.on_ack(p, self.version).unwrap_or_default();
        Reply {
            ticket: a.ticket,
            ack: a.reply,
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
