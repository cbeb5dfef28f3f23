//! The publish pipeline: rules -> retain -> (cluster) forward -> match ->
//! merge overlaps -> enqueue to each matching session.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use smallvec::SmallVec;
use tracing::warn;

use super::Broker;
use crate::events::{DropReason, Event, Kind};
use crate::message::Message;
use crate::router::Hit;
use crate::session::{Delivery, QueueLimits, Session};

impl Broker {
    /// The publish pipeline after authorization: retain, route, enqueue.
    /// Returns the store ticket covering every durable write it made (0:
    /// none), which the publisher's acknowledgement waits for.
    pub fn publish(&self, msg: Arc<Message>) -> u64 {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        self.route_to_rules(msg).0
    }

    /// The broker's own `$SYS` messages: counted apart from clients'
    /// (`sys_messages_published`, never as received, nor as dropped when
    /// nobody subscribes). Retained `$SYS` messages are kept in memory only.
    pub fn route(&self, msg: Arc<Message>) -> u64 {
        self.stats
            .sys_messages_published
            .fetch_add(1, Ordering::Relaxed);
        self.route_to_rules(msg).0
    }

    /// [`Broker::publish`] for a client's connection: also returns the
    /// action lane its rule outputs were queued on, if any, for the
    /// connection to hold its client back while that lane is deep
    /// ([`crate::rules::queue`]).
    pub fn publish_from_client(&self, msg: Arc<Message>) -> (u64, Option<usize>) {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        self.route_to_rules(msg)
    }

    /// Rules on the topic are evaluated first; their outputs are queued for
    /// their actions after the message itself was delivered, so its
    /// subscribers get it before what rules derive from it.
    fn route_to_rules(&self, msg: Arc<Message>) -> (u64, Option<usize>) {
        let outputs = self.rules.on_message(&msg);
        if outputs.is_empty() {
            return (self.deliver(msg), None);
        }
        let lane = self.rules.lane_of_message(&msg);
        let ticket = self.deliver(msg);
        self.rules.enqueue(lane, outputs);
        (ticket, Some(lane))
    }

    /// Retains and delivers `msg` to its subscribers (no rules), here and
    /// on other cluster nodes.
    fn deliver(&self, msg: Arc<Message>) -> u64 {
        let mut ticket = 0;
        if msg.retain {
            ticket = self.retained.update(&msg, self.store.as_ref());
        }
        if let Some(c) = self.cluster.get() {
            c.forward(&msg);
        }
        ticket.max(self.route_local(msg))
    }

    /// Delivers `msg` to this node's subscribers only (also: messages from
    /// other cluster nodes). Returns the store ticket of the enqueues.
    pub fn route_local(&self, msg: Arc<Message>) -> u64 {
        let mut ticket = 0;
        let mut hits: Vec<Hit> = Vec::new();
        self.router.matches(&msg.topic, &mut hits);
        // The broker's own $SYS updates are not drops when nobody listens.
        if hits.is_empty() && msg.publisher().is_none() && msg.topic.starts_with("$SYS/") {
            return ticket;
        }
        if hits.is_empty() {
            self.stats
                .messages_dropped_no_subscribers
                .fetch_add(1, Ordering::Relaxed);
            self.emit(Event::MessageDropped { msg: &msg });
            return ticket;
        }
        if let Some(publisher) = msg.publisher() {
            hits.retain(|h| !(h.no_local && *h.session.client_id == *publisher));
        }
        merge_overlapping(&mut hits);
        let limits = self.queue_limits();
        for hit in hits {
            let qos = hit.qos.min(msg.qos);
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain: msg.retain && hit.retain_as_published,
                sub_ids: hit.sub_ids,
                shared: hit.shared,
                seq: 0,
            };
            ticket = ticket.max(self.enqueue(&hit.session, d, limits));
        }
        ticket
    }

    fn enqueue(&self, session: &Arc<Session>, d: Delivery, limits: QueueLimits) -> u64 {
        use crate::session::EnqueueOutcome::*;
        // Kept for the event only when someone listens (no clone otherwise).
        let watched = self
            .wants(Kind::DELIVERY_DROPPED)
            .then(|| (d.msg.clone(), d.qos));
        let (outcome, ticket) = session.enqueue(d, limits);
        match outcome {
            Queued => {
                self.stats.messages_routed.fetch_add(1, Ordering::Relaxed);
            }
            DroppedFull => {
                self.stats
                    .messages_dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                let dropped = session.state.lock().dropped;
                // Logged on the first drop and then every 1000th, per session.
                if dropped % 1000 == 1 {
                    warn!(client_id = %session.client_id, dropped, "session queue full: message dropped (mqtt.max_queued_messages / max_queued_bytes)");
                }
                if let Some((msg, qos)) = watched {
                    self.emit(Event::DeliveryDropped {
                        receiver: &session.client_id,
                        msg: &msg,
                        qos,
                        reason: DropReason::QueueFull,
                    });
                }
            }
            Skipped => {}
        }
        ticket
    }

    /// Hands deliveries of a shared subscription to another member of its group.
    pub fn redistribute_shared(&self, from: &Arc<Session>, deliveries: Vec<Delivery>) {
        let limits = self.queue_limits();
        for mut d in deliveries {
            let Some(key) = d.shared.clone() else {
                continue;
            };
            match self.router.pick_shared(&key, from) {
                Some(entry) => {
                    d.qos = entry.opts.qos.min(d.msg.qos);
                    d.sub_ids = entry.id.into_iter().collect();
                    let _ = self.enqueue(&entry.session, d, limits);
                }
                None => {
                    // No other member: keep it for this one.
                    let _ = from.enqueue(d, limits);
                }
            }
        }
    }
}

/// Merges hits of one session from overlapping subscriptions into one:
/// highest QoS, every subscription identifier. Shared-group hits stay apart.
fn merge_overlapping(hits: &mut Vec<Hit>) {
    if hits.len() < 2 {
        return;
    }
    hits.sort_by_key(|h| (Arc::as_ptr(&h.session) as usize, h.shared.is_some()));
    let mut out: Vec<Hit> = Vec::with_capacity(hits.len());
    for h in hits.drain(..) {
        if let Some(last) = out.last_mut() {
            if h.shared.is_none() && last.shared.is_none() && Arc::ptr_eq(&last.session, &h.session)
            {
                last.qos = last.qos.max(h.qos);
                last.retain_as_published |= h.retain_as_published;
                let ids: SmallVec<[u32; 2]> = h.sub_ids;
                last.sub_ids.extend(ids);
                continue;
            }
        }
        out.push(h);
    }
    *hits = out;
}
