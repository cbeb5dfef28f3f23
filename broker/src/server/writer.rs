//! The output of a connection: drains the session's control packets,
//! inflight resends and queued deliveries into one buffer and one write.
//! Applies the client's limits: Receive Maximum (inflight window), Maximum
//! Packet Size, Topic Alias Maximum (outgoing aliases), message expiry.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;
use midge_protocol::{encode, encoded_len, Ack, Packet, Publish, QoS, Version};

use super::idle;
use crate::broker::Broker;
use crate::events::{DropReason, Event};
use crate::session::outbound::Outgoing;
use crate::session::proto::{self, ClientLimits, TopicAliasesOut};
use crate::session::{Delivery, Session};

/// Most items taken from the session per write.
const BATCH: usize = 512;

/// The outbound side of a connection, driven by the connection's own task
/// (no second task: idle connections cost less memory). `collect` takes what
/// the session has ready, `encode` turns it into bytes, and the connection
/// writes `unwritten()` whenever the socket takes it, reporting progress with
/// `advance`. Nothing new is collected while bytes are still unwritten, so a
/// client that stops reading holds its messages in the session's bounded
/// queue, not here.
pub struct Output {
    limits: ClientLimits,
    /// Encoded, not yet written (from `pos`). Grows with the first write;
    /// idle connections keep it empty.
    buf: BytesMut,
    pos: usize,
    aliases: TopicAliasesOut,
    /// What `collect` took: control packets first, then the window's
    /// publishes. Grow to the batch size under load, start empty for idle
    /// connections.
    control: Vec<Packet>,
    items: Vec<Outgoing>,
}

impl Output {
    pub fn new(limits: ClientLimits) -> Self {
        Output {
            limits,
            buf: BytesMut::new(),
            pos: 0,
            aliases: TopicAliasesOut::default(),
            control: Vec::new(),
            items: Vec::new(),
        }
    }

    /// True while encoded bytes wait for the socket.
    pub fn pending(&self) -> bool {
        self.pos < self.buf.len()
    }

    pub fn unwritten(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// `n` more bytes were written.
    pub fn advance(&mut self, broker: &Broker, n: usize) {
        self.pos += n;
        broker
            .stats
            .bytes_sent
            .fetch_add(n as u64, Ordering::Relaxed);
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > 1024 * 1024 {
                self.buf = BytesMut::new();
            }
        }
    }

    /// Takes what can be sent now from the session (control packets,
    /// resends, queued deliveries within the window). Returns the store
    /// ticket that must be durable before `encode` (0: none): a QoS 2
    /// packet id must be durable before the PUBLISH leaves, so that after a
    /// restart the message goes out again under the same id (with DUP),
    /// which the client recognises.
    ///
    /// Also returns whether it stopped at [`BATCH`] items: then the session
    /// may hold more that can be sent, and no notify will come for them, so
    /// the caller collects again once this batch is written.
    pub fn collect(&mut self, session: &Session) -> (u64, bool) {
        let ticket = collect(
            session,
            self.limits.window,
            &mut self.control,
            &mut self.items,
            false,
        );
        (ticket, self.control.len() + self.items.len() >= BATCH)
    }

    /// Encodes what `collect` took after the bytes still unwritten.
    pub fn encode(&mut self, broker: &Broker, session: &Session) {
        encode_items(
            broker,
            session,
            &self.limits,
            &mut self.aliases,
            &mut self.control,
            &mut self.items,
            &mut self.buf,
        );
    }

    /// Gives back what an idle connection does not need (see
    /// [`super::idle`]): the encoded-output buffer and the batch, when
    /// nothing waits in them; when `quiet`, also the capacity of the
    /// session's emptied queues. Returns whether it still holds capacity.
    pub fn release(&mut self, session: &Session, quiet: bool) -> bool {
        if quiet {
            let mut st = session.state.lock();
            idle::deque(&mut st.control, true);
            idle::deque(&mut st.queue, true);
            idle::deque(&mut st.inflight, true);
        }
        idle::bytes(&mut self.buf, quiet)
            | idle::vec(&mut self.control, quiet)
            | idle::vec(&mut self.items, quiet)
    }

    /// On close: appends the session's pending control packets (acks) and
    /// `last` (a DISCONNECT) to what is still unwritten.
    pub fn finish(&mut self, broker: &Broker, session: &Session, last: Option<Packet>) {
        collect(
            session,
            self.limits.window,
            &mut self.control,
            &mut self.items,
            true,
        );
        self.encode(broker, session);
        if let Some(mut p) = last {
            if proto::fit(&mut p, self.limits.version, self.limits.max_packet_size) {
                encode(&p, self.limits.version, &mut self.buf);
            }
        }
    }
}

/// Takes what can be sent now from the session, under its lock: its
/// control packets, then the outbound window's publishes (session/outbound.rs).
/// Returns the store ticket the batch must wait for before it is written
/// (0: none).
fn collect(
    session: &Session,
    window: usize,
    control: &mut Vec<Packet>,
    items: &mut Vec<Outgoing>,
    control_only: bool,
) -> u64 {
    let mut st = session.state.lock();
    while control.len() < BATCH {
        match st.control.pop_front() {
            Some(p) => control.push(p),
            None => break,
        }
    }
    // Emptied: a small deque goes at once (see super::idle).
    idle::deque(&mut st.control, false);
    if control_only {
        return 0;
    }
    // Deliveries were lowered to each subscription's QoS when routed: no
    // Maximum QoS applies here.
    let batch = BATCH.saturating_sub(control.len());
    session.take_outgoing_locked(&mut st, window, QoS::ExactlyOnce, batch, items)
}

/// Encodes `items` into `buf`, dropping expired or oversized publishes.
fn encode_items(
    broker: &Broker,
    session: &Session,
    limits: &ClientLimits,
    aliases: &mut TopicAliasesOut,
    control: &mut Vec<Packet>,
    items: &mut Vec<Outgoing>,
    buf: &mut BytesMut,
) {
    for mut p in control.drain(..) {
        if !limits.problem_info {
            proto::without_problem_info(&mut p);
        }
        if !proto::fit(&mut p, limits.version, limits.max_packet_size) {
            tracing::debug!(packet = ?p, "not sent: larger than the client's Maximum Packet Size");
            continue;
        }
        tracing::debug!(packet = ?p, "sent");
        encode(&p, limits.version, buf);
    }
    let now = Instant::now();
    let mut unsendable: Vec<u16> = Vec::new();
    // Counted per batch, added once: one atomic add per QoS per write.
    let mut sent = [0u64; 3];
    for item in items.drain(..) {
        match item {
            Outgoing::Release(packet_id) => {
                let p = Packet::PubRel(Ack::new(packet_id, 0));
                tracing::debug!(packet = ?p, "sent");
                encode(&p, limits.version, buf);
            }
            Outgoing::Publish {
                packet_id,
                dup,
                delivery,
            } => {
                let d = delivery;
                let Ok(remaining) = d.msg.remaining_expiry(now) else {
                    broker
                        .stats
                        .messages_dropped_expired
                        .fetch_add(1, Ordering::Relaxed);
                    delivery_dropped(broker, session, &d, DropReason::Expired);
                    if packet_id != 0 {
                        unsendable.push(packet_id);
                    }
                    continue;
                };
                let mut publish = Publish {
                    dup,
                    qos: d.qos,
                    retain: d.retain,
                    topic: d.msg.topic.clone(),
                    packet_id,
                    properties: Default::default(),
                    payload: d.msg.payload.clone(),
                };
                if limits.version == Version::V5 {
                    publish.properties = d.msg.properties.clone();
                    // Written only when they differ: the first write to an
                    // empty property list allocates it.
                    if publish.properties.message_expiry_interval != remaining {
                        publish.properties.message_expiry_interval = remaining;
                    }
                    if !d.sub_ids.is_empty() {
                        publish.properties.subscription_identifiers = d.sub_ids.to_vec();
                    }
                }
                // The alias goes through a local: `&mut publish.properties.x`
                // would allocate an empty property list for every message
                // (DerefMut), 3.1.1 and alias-less ones included.
                let mut alias = None;
                let new_alias = aliases.apply(
                    limits.version,
                    limits.topic_alias_max,
                    &mut publish.topic,
                    &mut alias,
                );
                if alias.is_some() {
                    publish.properties.topic_alias = alias;
                }
                let packet = Packet::Publish(publish);
                if encoded_len(&packet, limits.version) > limits.max_packet_size {
                    if let Some(t) = new_alias {
                        aliases.forget(&t);
                    }
                    broker
                        .stats
                        .messages_dropped_too_large
                        .fetch_add(1, Ordering::Relaxed);
                    delivery_dropped(broker, session, &d, DropReason::TooLarge);
                    if packet_id != 0 {
                        unsendable.push(packet_id);
                    }
                    continue;
                }
                tracing::debug!(packet = ?packet, "sent");
                encode(&packet, limits.version, buf);
                sent[d.qos as usize] += 1;
                broker.emit(Event::Delivered {
                    receiver: &session.client_id,
                    msg: &d.msg,
                    qos: d.qos,
                    packet_id,
                });
            }
        }
    }
    for (q, n) in sent.into_iter().enumerate() {
        if n > 0 {
            broker.stats.publish_sent[q].fetch_add(n, Ordering::Relaxed);
        }
    }
    session.withdraw(&unsendable);
}

fn delivery_dropped(broker: &Broker, session: &Session, d: &Delivery, reason: DropReason) {
    broker.emit(Event::DeliveryDropped {
        receiver: &session.client_id,
        msg: &d.msg,
        qos: d.qos,
        reason,
    });
}
