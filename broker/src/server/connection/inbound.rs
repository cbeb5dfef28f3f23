//! What a connection does with the packets its client sends (`Inbound`):
//! acknowledgements against the session (the session core decides:
//! `Session::puback` and the others), SUBSCRIBE, UNSUBSCRIBE, DISCONNECT,
//! AUTH (re-authentication, in enhanced_auth.rs); PUBLISH is publish.rs.
//! The acks it produces are collected in `control` and handed to the
//! session once the store has what they acknowledge.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use midge_plugin::types as pt;
use midge_protocol::{
    Ack, Disconnect, Packet, Properties, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};

use super::super::enhanced_auth::{self, Reauth, ReauthClient};
use super::{broken, protocol_violation, End};
use crate::broker::Broker;
use crate::events::{self, Event};
use crate::limits::PublishLimiter;
use crate::message::{ClientInfo, Message};
use crate::session::proto::{self, FilterAnswer, SharedFilter, TopicAliasesIn};
use crate::session::{Delivery, Session, SubscriptionRecord};

/// Per-connection inbound state.
pub(super) struct Inbound {
    pub(super) broker: Arc<Broker>,
    pub(super) session: Arc<Session>,
    pub(super) version: Version,
    pub(super) origin: Arc<ClientInfo>,
    /// The client as plugins see it (only when plugins are loaded).
    pub(super) plugin_client: Option<Box<pt::ClientInfo>>,
    /// Inbound topic aliases.
    pub(super) aliases: TopicAliasesIn,
    /// Acks produced while handling a batch of packets, handed to the writer at once.
    pub(super) control: Vec<Packet>,
    /// Highest store ticket the acks in `control` wait for (0: none).
    pub(super) ticket: u64,
    /// Retained messages for new subscriptions, queued after their SUBACK.
    pub(super) retained: Vec<Delivery>,
    /// `max_publish_rate` / `max_publish_bytes_rate`, when configured.
    pub(super) limiter: Option<Box<PublishLimiter>>,
    /// Re-authentication (5.0 enhanced authentication).
    pub(super) reauth: Reauth,
    /// The action lane this batch's publishes queued rule outputs on, if
    /// any: the connection holds its client back while it is deep.
    pub(super) rules_lane: Option<usize>,
}

impl Inbound {
    /// Hands the batch's acks to the session's control queue, once the store
    /// has what they acknowledge; then queues retained messages of new
    /// subscriptions. No notify for the acks: the caller is the connection
    /// that writes them, and it collects right after (or `Output::finish`
    /// does, on close).
    ///
    /// Returns how many control packets the session holds once the batch's
    /// are added (`None` when the batch had none).
    pub(super) async fn flush_control(&mut self) -> Option<usize> {
        crate::cluster::settled(&self.origin).await;
        if self.ticket != 0 {
            if let Some(store) = &self.broker.store {
                store.durable(self.ticket).await;
            }
            self.ticket = 0;
        }
        let mut backlog = None;
        if !self.control.is_empty() {
            backlog = Some(self.session.push_control(&mut self.control));
        }
        if !self.retained.is_empty() {
            let limits = self.broker.queue_limits();
            for d in self.retained.drain(..) {
                let _ = self.session.enqueue(d, limits);
            }
        }
        backlog
    }

    /// Has acks, a store ticket or retained messages to hand over.
    pub(super) fn has_output(&self) -> bool {
        self.ticket != 0 || !self.control.is_empty() || !self.retained.is_empty()
    }

    pub(super) fn wait_for(&mut self, ticket: u64) {
        self.ticket = self.ticket.max(ticket);
    }

    /// The `Acked` event for a message the client acknowledged.
    fn acked(&self, msg: &Message, qos: QoS, packet_id: u16) {
        self.broker.emit(Event::Acked {
            receiver: self.client(),
            msg,
            qos,
            packet_id,
        });
    }

    /// PUBACK from the client: the QoS 1 delivery leaves the session's
    /// window (`Session::puback`, as `Session::on_ack` does), with its
    /// `Acked` event. Synchronous, for the read loop's fast path.
    pub(super) fn puback(&mut self, packet_id: u16) {
        if let Some(d) = self.session.puback(packet_id) {
            self.acked(&d.msg, d.qos, packet_id);
        }
    }

    /// The client, as events name it.
    pub(super) fn client(&self) -> events::Client<'_> {
        events::Client {
            client_id: &self.origin.client_id,
            username: self.origin.username.as_deref(),
            peer: self.origin.peer,
        }
    }

    pub(super) fn protocol_error(&self, why: &'static str) -> Option<End> {
        Some(protocol_violation(why))
    }

    /// Handles one packet; `Some(End)` closes the connection.
    pub(super) async fn handle(&mut self, p: Packet) -> Option<End> {
        match p {
            Packet::Publish(p) => self.publish(p).await,
            Packet::PubAck(Ack { packet_id, .. }) => {
                self.puback(packet_id);
                None
            }
            Packet::PubRec(Ack { packet_id, .. })
            | Packet::PubComp(Ack { packet_id, .. })
            | Packet::PubRel(Ack { packet_id, .. }) => {
                let answer = self.session.on_ack(&p, self.version)?;
                if let Some(d) = answer.acked {
                    self.acked(&d.msg, d.qos, packet_id);
                }
                self.wait_for(answer.ticket);
                self.control.extend(answer.reply);
                None
            }
            Packet::Subscribe(s) => self.subscribe(s).await,
            Packet::Unsubscribe(u) => self.unsubscribe(u),
            Packet::PingReq => {
                self.control.push(Packet::PingResp);
                None
            }
            Packet::Disconnect(d) => self.disconnect(d),
            Packet::Connect(_) => self.protocol_error("second CONNECT"),
            Packet::Auth(a) => {
                let client = ReauthClient {
                    origin: &self.origin,
                    version: self.version,
                    plugin_client: &mut self.plugin_client,
                };
                let step = enhanced_auth::reauthenticate(&self.broker, &mut self.reauth, client, a);
                match step.await {
                    Ok(answer) => {
                        self.control.push(answer);
                        None
                    }
                    Err(v) => Some(broken(v)),
                }
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.protocol_error("server-only packet from a client")
            }
        }
    }

    /// SUBSCRIBE: the session core decides each filter
    /// (`proto::subscribe_filter`) once authorization and the subscription
    /// limit have answered; granted ones go to the router and the store.
    pub(super) async fn subscribe(&mut self, s: Subscribe) -> Option<End> {
        let offer = self.broker.config.offer();
        let sub_id = match proto::subscription_identifier(&s.properties, &offer) {
            Ok(id) => id,
            Err(v) => return Some(broken(v)),
        };
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained: Vec<Delivery> = Vec::new();
        for (filter, opts) in &s.filters {
            let f = SharedFilter::parse(filter);
            if let Err(v) = proto::no_local_on_shared(f, *opts) {
                return Some(broken(v));
            }
            let authorized = self
                .authorized(pt::Action::Subscribe, filter, opts.qos, false)
                .await;
            let max = self.broker.limits.max_subscriptions;
            let over = authorized && self.session.over_subscription_limit(filter, max);
            let answer = proto::subscribe_filter(f, *opts, authorized, over, &offer);
            codes.push(answer.suback_code(self.version));
            let FilterAnswer::Granted(opts) = answer else {
                if over {
                    let stats = &self.broker.stats;
                    stats.limit_subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            let record = SubscriptionRecord { opts, id: sub_id };
            let (existed, t) = self.broker.subscribe(&self.session, filter, record);
            self.ticket = self.ticket.max(t);
            self.broker.emit(Event::Subscribed {
                client: self.client(),
                filter,
                qos: opts.qos,
            });
            if proto::sends_retained(f, opts, existed, &offer) {
                for m in self.broker.retained.matching(f.filter) {
                    retained.push(Delivery {
                        qos: opts.qos.min(m.qos),
                        msg: m,
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                        shared: None,
                        seq: 0,
                    });
                }
            }
        }
        // SUBACK goes out before any retained message: they are queued
        // after the batch's acks are handed over (see `flush_control`).
        self.control.push(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes,
        }));
        self.retained.extend(retained);
        None
    }

    fn unsubscribe(&mut self, u: Unsubscribe) -> Option<End> {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                self.broker.emit(Event::Unsubscribed {
                    client: self.client(),
                    filter: f,
                });
                let (existed, t) = self.broker.unsubscribe(&self.session, f);
                self.ticket = self.ticket.max(t);
                proto::unsuback_code(existed)
            })
            .collect();
        self.control.push(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes,
        }));
        None
    }

    fn disconnect(&mut self, d: Disconnect) -> Option<End> {
        if let Some(new) = d.properties.session_expiry_interval {
            let max = self.broker.config.max_session_expiry;
            if let Err(v) = self.session.expiry_at_disconnect(new, max) {
                return Some(broken(v));
            }
        }
        Some(End::Client { reason: d.reason })
    }
}
