//! Per-client session state: subscriptions, the queue of messages waiting
//! to be sent, QoS 1/2 inflight state in both directions, the link to the
//! live connection (if any), the will and the expiry.
//!
//! One `Mutex<SessionState>` per session, never held across `.await`.
//! Publishers push [`Delivery`]s into the queue and wake the connection
//! through `notify`; its output (server/writer.rs) moves them into the
//! inflight window.

pub mod client;
#[cfg(test)]
mod harness;
pub mod outbound;
pub mod proto;
mod subs;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use midge_protocol::{Ack, Packet, QoS, Version};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::message::Message;
pub use crate::records::{Delivery, Stage, SubscriptionRecord};
use crate::store::{Op, SessionRecord, Store};
use proto::{PubRec, Qos2Arrival};
pub use subs::SubscriptionMap;

/// Queue-full policy for per-session queues.
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    DropNew,
    DropOldest,
}

/// An outgoing QoS 1/2 message not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub stage: Stage,
}

/// A will waiting for its connection to end (or for its delay).
#[derive(Debug, Clone)]
pub struct PendingWill {
    pub msg: Arc<Message>,
    pub delay: u32,
}

/// The live connection attached to a session.
#[derive(Debug)]
pub struct ConnLink {
    pub id: u64,
    pub version: Version,
    /// Most QoS 1/2 messages in flight to the client.
    pub window: usize,
    /// Tells the connection to close, with a DISCONNECT reason for 5.0.
    pub kick: Option<oneshot::Sender<u8>>,
    /// Fired when the connection has detached.
    pub detached: Arc<Notify>,
    /// What the admin API shows of the connection.
    pub info: Arc<ConnInfo>,
}

/// Facts about a live connection, fixed at CONNECT (for the admin API).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub username: Option<Arc<str>>,
    pub peer: SocketAddr,
    /// Keep alive in force (seconds; the server's when it imposed one).
    pub keep_alive: u16,
    pub clean_start: bool,
    /// When CONNECT was accepted (ms since the epoch).
    pub connected_at_ms: i64,
}

/// Mutable session state.
#[derive(Debug)]
pub struct SessionState {
    /// Full filter (including `$share/g/`) -> options (a vector while
    /// there are few: see subs.rs).
    pub subscriptions: SubscriptionMap<SubscriptionRecord>,
    pub queue: VecDeque<Delivery>,
    pub queued_bytes: usize,
    pub inflight: VecDeque<Inflight>,
    /// QoS 2 packet ids received and not yet released by PUBREL.
    pub incoming_qos2: HashSet<u16>,
    /// Packets the writer must send before any queued message (acks, SUBACK, ...).
    pub control: VecDeque<Packet>,
    pub next_packet_id: u16,
    pub conn: Option<ConnLink>,
    pub expiry_interval: u32,
    pub will: Option<PendingWill>,
    /// Bumped on every attach, detach and end; timers compare it before acting.
    pub generation: u64,
    /// Resend all inflight messages (with DUP) before anything else: set on resume.
    pub resend: bool,
    /// The session is over (expired or replaced); deliveries are refused.
    pub ended: bool,
    pub dropped: u64,
    /// The live connection's will (message, delay), kept for the store record.
    pub conn_will: Option<(Arc<Message>, u32)>,
    /// When the last connection ended (ms since the epoch), for the store record.
    pub offline_since_ms: Option<i64>,
    /// Changes are written to the durable store (persistence on, expiry > 0).
    pub persist: bool,
    /// Next sequence number for a stored delivery.
    pub next_seq: u64,
}

/// Client ids starting with this are the bridges' own sessions (never in
/// the registry); no client may connect with one.
pub const BRIDGE_CLIENT_ID_PREFIX: &str = "$bridge/";

/// Is `client_id` reserved for a bridge's session?
pub fn reserved_client_id(client_id: &str) -> bool {
    client_id.starts_with(BRIDGE_CLIENT_ID_PREFIX)
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    /// The durable store, when persistence is on (`state.persist` says whether this session uses it).
    pub store: Option<Store>,
    pub state: Mutex<SessionState>,
    /// Wakes the attached connection to write what is ready (its `Output`).
    pub notify: Notify,
    online: AtomicBool,
    /// Queue limits of this session, instead of the ones `enqueue` is given
    /// (a bridge's buffer has its own: the bridge/ module).
    pub limits: Option<QueueLimits>,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Queued,
    /// Queue full: the new message (or, with drop_oldest, an older one) was dropped.
    DroppedFull,
    /// QoS 0 for an offline session, or the session ended.
    Skipped,
}

/// Queue limits applied by [`Session::enqueue`].
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub policy: QueueFullPolicy,
}

impl Session {
    pub fn new(client_id: Arc<str>, expiry_interval: u32, store: Option<Store>) -> Session {
        Session {
            client_id,
            store,
            state: Mutex::new(SessionState {
                subscriptions: SubscriptionMap::new(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                inflight: VecDeque::new(),
                incoming_qos2: HashSet::new(),
                control: VecDeque::new(),
                next_packet_id: 1,
                conn: None,
                expiry_interval,
                will: None,
                generation: 0,
                resend: false,
                ended: false,
                dropped: 0,
                conn_will: None,
                offline_since_ms: None,
                persist: false,
                next_seq: 1,
            }),
            notify: Notify::new(),
            online: AtomicBool::new(false),
            limits: None,
        }
    }

    /// Is a connection attached? (cheap, lock-free; used by shared-group picking)
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Queues a delivery and wakes the writer. QoS 0 messages are not kept
    /// for offline sessions. Returns the outcome and the store ticket of the
    /// write (0 when nothing was stored).
    pub fn enqueue(&self, mut d: Delivery, limits: QueueLimits) -> (EnqueueOutcome, u64) {
        let limits = self.limits.unwrap_or(limits);
        let mut st = self.state.lock();
        if st.ended || (st.conn.is_none() && d.qos == QoS::AtMostOnce) {
            return (EnqueueOutcome::Skipped, 0);
        }
        let size = d.msg.payload.len();
        let full = st.queue.len() >= limits.max_messages
            || (limits.max_bytes > 0 && st.queued_bytes + size > limits.max_bytes);
        let mut outcome = EnqueueOutcome::Queued;
        let mut ticket = 0;
        if full {
            st.dropped += 1;
            outcome = EnqueueOutcome::DroppedFull;
            let evict = limits.policy == QueueFullPolicy::DropOldest && d.qos != QoS::AtMostOnce;
            if !evict {
                return (outcome, 0);
            }
            if let Some(old) = st.queue.pop_front() {
                st.queued_bytes -= old.msg.payload.len();
                ticket = self.forget(old.seq);
            }
        }
        if st.persist && d.qos != QoS::AtMostOnce {
            d.seq = st.next_seq;
            st.next_seq += 1;
            ticket = self.store_op(Op::Queue(self.client_id.clone(), d.seq, d.clone()));
        }
        st.queued_bytes += size;
        st.queue.push_back(d);
        let online = st.conn.is_some();
        drop(st);
        if online {
            self.notify.notify_one();
        }
        (outcome, ticket)
    }

    /// Removes stored delivery `seq` from the store (nothing for 0: not
    /// stored). Call with the state lock held. Returns the store ticket.
    pub fn forget(&self, seq: u64) -> u64 {
        if seq == 0 {
            return 0;
        }
        self.store_op(Op::Dequeue(self.client_id.clone(), seq))
    }

    /// Submits `op` to the store (call with the state lock held, so the
    /// store sees changes in the order they happened). 0 without a store.
    pub fn store_op(&self, op: Op) -> u64 {
        match &self.store {
            Some(s) => s.submit(op),
            None => 0,
        }
    }

    /// Queues a control packet (ack, SUBACK, ...) for the writer.
    pub fn send_control(&self, p: Packet) {
        self.state.lock().control.push_back(p);
        self.notify.notify_one();
    }

    // The client's acknowledgements and QoS 2 arrivals: the session core's
    // rules (proto.rs) applied to this session's state, with the store ops
    // they call for. Each takes the lock once and returns what the
    // connection does next (the ack to send, the store ticket it waits for).

    /// PUBACK from the client: the QoS 1 delivery it acknowledges leaves the
    /// window (and the store: a lost delete only means a duplicate resend,
    /// so no ticket to wait for), and the writer is woken for the freed
    /// slot. `None`: no QoS 1 message in flight with that id (ignored).
    pub fn puback(&self, packet_id: u16) -> Option<Delivery> {
        let mut st = self.state.lock();
        let done = proto::puback(&mut st.inflight, packet_id)?;
        self.forget(done.delivery.seq);
        drop(st);
        self.notify.notify_one();
        Some(done.delivery)
    }

    /// PUBREC from the client with `reason`: the PUBREL to answer (its
    /// reason code; 0x92 for an unknown id) and the store ticket it must
    /// wait for (the stage `Released`, durable before PUBREL: after a
    /// restart PUBREL is resent, never the PUBLISH). `None`: the client
    /// refused the message, which left the window; no PUBREL.
    pub fn pubrec(&self, packet_id: u16, reason: u8) -> Option<(u8, u64)> {
        let mut st = self.state.lock();
        match proto::pubrec(&mut st.inflight, packet_id, reason) {
            PubRec::Refused { seq } => {
                self.forget(seq);
                drop(st);
                self.notify.notify_one();
                None
            }
            PubRec::Release { seq } => {
                let ticket = if seq != 0 {
                    let op = Op::Inflight(self.client_id.clone(), seq, packet_id, Stage::Released);
                    self.store_op(op)
                } else {
                    0
                };
                Some((midge_protocol::reason::SUCCESS, ticket))
            }
            PubRec::Unknown => Some((midge_protocol::reason::PACKET_IDENTIFIER_NOT_FOUND, 0)),
        }
    }

    /// PUBCOMP from the client: the released QoS 2 delivery leaves the
    /// window (as for PUBACK). `None`: no released message with that id.
    pub fn pubcomp(&self, packet_id: u16) -> Option<Delivery> {
        let mut st = self.state.lock();
        let done = proto::pubcomp(&mut st.inflight, packet_id)?;
        self.forget(done.delivery.seq);
        drop(st);
        self.notify.notify_one();
        Some(done.delivery)
    }

    /// PUBREL from the client: was the QoS 2 id awaiting it, and the store
    /// ticket PUBCOMP waits for (PUBCOMP frees the id for reuse, so the
    /// release must be durable first).
    pub fn pubrel(&self, packet_id: u16) -> (bool, u64) {
        let mut st = self.state.lock();
        let known = st.incoming_qos2.remove(&packet_id);
        let ticket = if known && st.persist {
            self.store_op(Op::DelQos2(self.client_id.clone(), packet_id))
        } else {
            0
        };
        (known, ticket)
    }

    /// A QoS 2 PUBLISH from the client with `packet_id`, decided
    /// (`accepted`: not refused by authorization or a plugin). A fresh id is
    /// recorded (stored, for a persistent session) until its PUBREL; a
    /// refused one is not kept, nothing will await its PUBREL. Returns the
    /// arrival and the store ticket PUBREC waits for.
    pub fn qos2_arrived(
        &self,
        packet_id: u16,
        receive_maximum: u16,
        accepted: bool,
    ) -> (Qos2Arrival, u64) {
        let mut st = self.state.lock();
        let arrival = proto::qos2_arrived(&mut st.incoming_qos2, packet_id, receive_maximum);
        let mut ticket = 0;
        if arrival == Qos2Arrival::Fresh {
            if !accepted {
                st.incoming_qos2.remove(&packet_id);
            } else if st.persist {
                ticket = self.store_op(Op::PutQos2(self.client_id.clone(), packet_id));
            }
        }
        (arrival, ticket)
    }

    /// Hands the connection's acks to the writer's control queue (no
    /// notify: the caller is the connection that writes them). Returns how
    /// many control packets the session holds now.
    pub fn push_control(&self, acks: &mut Vec<Packet>) -> usize {
        let mut st = self.state.lock();
        st.control.extend(acks.drain(..));
        st.control.len()
    }

    /// How many control packets wait for the writer.
    pub fn control_len(&self) -> usize {
        self.state.lock().control.len()
    }

    /// Would subscribing to `filter` (not a replacement of an existing
    /// subscription) go over `max` subscriptions (0: no maximum)?
    pub fn over_subscription_limit(&self, filter: &str, max: usize) -> bool {
        if max == 0 {
            return false;
        }
        let st = self.state.lock();
        st.subscriptions.len() >= max && !st.subscriptions.contains_key(filter)
    }

    /// A DISCONNECT's Session Expiry Interval, at most `max`: a session that
    /// CONNECT gave none (0) cannot be given one now (a Protocol Error,
    /// MQTT-3.14.2-2).
    pub fn expiry_at_disconnect(&self, new: u32, max: u32) -> Result<(), proto::Violation> {
        let mut st = self.state.lock();
        if st.expiry_interval == 0 && new != 0 {
            return Err(proto::Violation::protocol(
                "session expiry set in DISCONNECT after 0 in CONNECT",
            ));
        }
        st.expiry_interval = new.min(max);
        Ok(())
    }
}

/// What the session makes of an acknowledgement from its client.
#[derive(Debug, Default)]
pub struct AckAnswer {
    /// The packet to answer with (PUBREL for PUBREC, PUBCOMP for PUBREL),
    /// once `ticket` is durable.
    pub reply: Option<Packet>,
    /// The store ticket the reply waits for (0: none).
    pub ticket: u64,
    /// The delivery the client acknowledged (PUBACK, PUBCOMP), for the
    /// `Acked` event.
    pub acked: Option<Delivery>,
}

impl Session {
    /// The client's PUBACK, PUBREC, PUBCOMP or PUBREL, against this
    /// session (`None` for any other packet): the one place the connection
    /// turns an ack into the session's transition and its answer.
    pub fn on_ack(&self, p: &Packet, version: Version) -> Option<AckAnswer> {
        Some(match p {
            Packet::PubAck(a) => AckAnswer {
                acked: self.puback(a.packet_id),
                ..AckAnswer::default()
            },
            Packet::PubRec(a) => match self.pubrec(a.packet_id, a.reason) {
                Some((code, ticket)) => AckAnswer {
                    reply: Some(Packet::PubRel(Ack::new(a.packet_id, code))),
                    ticket,
                    acked: None,
                },
                None => AckAnswer::default(),
            },
            Packet::PubComp(a) => AckAnswer {
                acked: self.pubcomp(a.packet_id),
                ..AckAnswer::default()
            },
            Packet::PubRel(a) => {
                let (known, ticket) = self.pubrel(a.packet_id);
                let code = proto::pubcomp_code(known, version);
                AckAnswer {
                    reply: Some(Packet::PubComp(Ack::new(a.packet_id, code))),
                    ticket,
                    acked: None,
                }
            }
            _ => return None,
        })
    }
}

/// What the session makes of a PUBLISH from its client, once decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PublishAnswer {
    /// Route the message: it was accepted, and it is not the resend of a
    /// QoS 2 message still awaiting its PUBREL (routed once already).
    pub route: bool,
    /// The PUBACK / PUBREC to answer with (none for QoS 0), once what it
    /// acknowledges is durable: the route's store ticket and `ticket`.
    pub ack: Option<Packet>,
    /// The store ticket of the QoS 2 id recorded (0: none).
    pub ticket: u64,
}

impl Session {
    /// A PUBLISH from the client, decided with `code` (success, or why it
    /// was refused: authorization, a plugin): whether to route it and the
    /// ack it gets (its reason code for 5.0, success for 3.1.1; a QoS 2
    /// packet id recorded until PUBREL through `qos2_arrived`). `Err`: the
    /// client went over the server's `receive_maximum` (0x93), the
    /// connection ends. The one place both the connection
    /// (server/connection/publish.rs) and the harness turn a PUBLISH into
    /// its answer.
    pub fn on_publish(
        &self,
        qos: QoS,
        packet_id: u16,
        code: u8,
        version: Version,
        receive_maximum: u16,
    ) -> Result<PublishAnswer, proto::Violation> {
        let accepted = code == midge_protocol::reason::SUCCESS;
        let ack_code = proto::publish_ack_code(code, version);
        Ok(match qos {
            QoS::AtMostOnce => PublishAnswer {
                route: accepted,
                ..PublishAnswer::default()
            },
            QoS::AtLeastOnce => PublishAnswer {
                route: accepted,
                ack: Some(Packet::PubAck(Ack::new(packet_id, ack_code))),
                ticket: 0,
            },
            QoS::ExactlyOnce => {
                let (arrival, ticket) = self.qos2_arrived(packet_id, receive_maximum, accepted);
                let route = match arrival {
                    Qos2Arrival::OverReceiveMaximum => {
                        return Err(proto::Violation {
                            reason: midge_protocol::reason::RECEIVE_MAXIMUM_EXCEEDED,
                            why: "receive maximum exceeded",
                        })
                    }
                    // Refused: the session did not keep the id, nothing awaits a PUBREL.
                    Qos2Arrival::Fresh => accepted,
                    // A resend before PUBREL: already routed once.
                    Qos2Arrival::Duplicate => false,
                };
                PublishAnswer {
                    route,
                    ack: Some(Packet::PubRec(Ack::new(packet_id, ack_code))),
                    ticket,
                }
            }
        })
    }
}

impl Session {
    /// Writes the session to the durable store as an attach decided
    /// (`proto::persistence`); call with the state lock held. Returns the
    /// last store ticket (`None`: nothing written).
    pub fn persist(&self, st: &mut SessionState, how: proto::Persist) -> Option<u64> {
        let c = &self.client_id;
        match how {
            proto::Persist::All => {
                st.persist = true;
                Some(persist_all(self, st))
            }
            proto::Persist::Record => Some(self.store_op(Op::PutSession(c.clone(), st.record()))),
            proto::Persist::Drop => {
                st.persist = false;
                Some(self.store_op(Op::DropSession(c.clone())))
            }
            proto::Persist::Nothing => None,
        }
    }
}

impl SessionState {
    /// The session's own record for the store.
    pub fn record(&self) -> SessionRecord {
        let will = match (&self.conn, &self.will) {
            (Some(_), _) => self.conn_will.clone(),
            (None, Some(w)) => Some((w.msg.clone(), w.delay)),
            (None, None) => None,
        };
        SessionRecord {
            expiry: self.expiry_interval,
            disconnected_at_ms: if self.conn.is_some() {
                None
            } else {
                self.offline_since_ms
            },
            will,
        }
    }

    /// A packet id not used by any inflight message.
    pub fn alloc_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    /// Index of the inflight entry with `packet_id` (acks usually come in order: front first).
    pub fn find_inflight(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|i| i.packet_id == packet_id)
    }

    /// Takes every queued or inflight delivery that came through a shared subscription.
    /// Stored ones are removed from the store (via `session`'s store; call
    /// with the lock held).
    pub fn take_shared(&mut self, session: &Session) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for d in self.queue.drain(..) {
            if d.shared.is_some() {
                self.queued_bytes -= d.msg.payload.len();
                session.forget(d.seq);
                let mut d = d;
                d.seq = 0;
                out.push(d);
            } else {
                kept.push_back(d);
            }
        }
        self.queue = kept;
        self.inflight.retain(|i| {
            // QoS 2 stays: the client may already hold it, and exactly-once wins.
            if i.delivery.shared.is_some() && i.delivery.qos == QoS::AtLeastOnce {
                session.forget(i.delivery.seq);
                let mut d = i.delivery.clone();
                d.seq = 0;
                out.push(d);
                false
            } else {
                true
            }
        });
        out
    }
}

/// Writes a session that just became persistent, whole: its record,
/// subscriptions and queued / inflight deliveries. Returns the last ticket.
fn persist_all(session: &Session, st: &mut SessionState) -> u64 {
    let c = &session.client_id;
    let mut t = session.store_op(Op::PutSession(c.clone(), st.record()));
    for (f, r) in &st.subscriptions {
        t = session.store_op(Op::PutSub(c.clone(), f.clone(), r.clone()));
    }
    let mut next = st.next_seq;
    for i in st.inflight.iter_mut() {
        if i.delivery.qos != QoS::AtMostOnce {
            i.delivery.seq = next;
            next += 1;
            session.store_op(Op::Queue(c.clone(), i.delivery.seq, i.delivery.clone()));
            t = session.store_op(Op::Inflight(
                c.clone(),
                i.delivery.seq,
                i.packet_id,
                i.stage,
            ));
        }
    }
    for d in st.queue.iter_mut() {
        if d.qos != QoS::AtMostOnce {
            d.seq = next;
            next += 1;
            t = session.store_op(Op::Queue(c.clone(), d.seq, d.clone()));
        }
    }
    for id in &st.incoming_qos2 {
        t = session.store_op(Op::PutQos2(c.clone(), *id));
    }
    st.next_seq = next;
    t
}

#[cfg(test)]
mod tests {
    use midge_protocol::reason;

    use super::*;

    fn delivery(qos: QoS, seq: u64) -> Delivery {
        harness::delivery(qos, "t", seq)
    }

    /// A session with QoS 1 id 1 and QoS 2 id 2 in flight.
    fn session() -> Session {
        let s = Session::new("c".into(), 0, None);
        {
            let mut st = s.state.lock();
            for (packet_id, qos) in [(1, QoS::AtLeastOnce), (2, QoS::ExactlyOnce)] {
                st.inflight.push_back(Inflight {
                    packet_id,
                    delivery: delivery(qos, 0),
                    stage: Stage::Published,
                });
            }
        }
        s
    }

    fn inflight_ids(s: &Session) -> Vec<u16> {
        s.state
            .lock()
            .inflight
            .iter()
            .map(|i| i.packet_id)
            .collect()
    }

    #[test]
    fn puback_takes_the_qos1_delivery_out_of_the_window() {
        let s = session();
        assert!(s.puback(2).is_none(), "a QoS 2 id is not PUBACKed");
        assert!(s.puback(9).is_none());
        assert_eq!(s.puback(1).map(|d| d.qos), Some(QoS::AtLeastOnce));
        assert_eq!(inflight_ids(&s), [2]);
        assert!(s.puback(1).is_none(), "a second PUBACK is ignored");
    }

    #[test]
    fn pubrec_releases_then_pubcomp_completes() {
        let s = session();
        assert!(s.pubcomp(2).is_none(), "PUBCOMP before PUBREC is ignored");
        assert_eq!(s.pubrec(2, reason::SUCCESS), Some((reason::SUCCESS, 0)));
        assert_eq!(s.state.lock().inflight[1].stage, Stage::Released);
        assert_eq!(s.pubcomp(2).map(|d| d.qos), Some(QoS::ExactlyOnce));
        assert_eq!(inflight_ids(&s), [1]);
    }

    #[test]
    fn pubrec_unknown_is_answered_0x92_and_a_refusal_drops_the_message() {
        let s = session();
        assert_eq!(
            s.pubrec(9, 0),
            Some((reason::PACKET_IDENTIFIER_NOT_FOUND, 0))
        );
        assert_eq!(
            s.pubrec(1, 0),
            Some((reason::PACKET_IDENTIFIER_NOT_FOUND, 0))
        );
        assert_eq!(s.pubrec(2, reason::UNSPECIFIED_ERROR), None);
        assert_eq!(inflight_ids(&s), [1]);
    }

    #[test]
    fn qos2_arrival_then_pubrel_frees_the_id_for_reuse() {
        let s = session();
        assert_eq!(s.qos2_arrived(7, 2, true).0, Qos2Arrival::Fresh);
        assert_eq!(s.qos2_arrived(7, 2, true).0, Qos2Arrival::Duplicate);
        assert_eq!(s.pubrel(7), (true, 0));
        assert_eq!(s.pubrel(7), (false, 0), "a second PUBREL: unknown id");
        assert_eq!(s.qos2_arrived(7, 2, true).0, Qos2Arrival::Fresh, "reused");
    }

    #[test]
    fn qos2_over_receive_maximum_and_a_refused_arrival_is_not_kept() {
        let s = session();
        assert_eq!(s.qos2_arrived(1, 1, true).0, Qos2Arrival::Fresh);
        assert_eq!(
            s.qos2_arrived(2, 1, true).0,
            Qos2Arrival::OverReceiveMaximum
        );
        assert_eq!(s.pubrel(1), (true, 0));
        assert_eq!(s.qos2_arrived(3, 1, false).0, Qos2Arrival::Fresh);
        assert!(
            s.state.lock().incoming_qos2.is_empty(),
            "refused: nothing awaits PUBREL"
        );
    }

    #[test]
    fn on_publish_routes_and_acks_per_qos_and_decision() {
        let s = session();
        let (ok, v5) = (reason::SUCCESS, Version::V5);
        let a = s.on_publish(QoS::AtMostOnce, 0, ok, v5, 2).unwrap();
        let plain = PublishAnswer {
            route: true,
            ack: None,
            ticket: 0,
        };
        assert_eq!(a, plain);
        let a = s.on_publish(QoS::AtMostOnce, 0, reason::NOT_AUTHORIZED, v5, 2);
        assert!(!a.unwrap().route, "refused: not routed");
        // QoS 1: PUBACK with the decision's code (5.0), success (3.1.1).
        let puback = |id, code| Some(Packet::PubAck(Ack::new(id, code)));
        let a = s.on_publish(QoS::AtLeastOnce, 3, ok, v5, 2).unwrap();
        assert_eq!((a.route, a.ack), (true, puback(3, ok)));
        let a = s.on_publish(QoS::AtLeastOnce, 3, reason::NOT_AUTHORIZED, v5, 2);
        let a = a.unwrap();
        assert_eq!((a.route, a.ack), (false, puback(3, reason::NOT_AUTHORIZED)));
        let a = s.on_publish(
            QoS::AtLeastOnce,
            3,
            reason::NOT_AUTHORIZED,
            Version::V311,
            2,
        );
        assert_eq!(a.unwrap().ack, puback(3, ok));
        // QoS 2: a fresh id is routed once, its resend is not; a refused
        // one is not kept; one over the receive maximum ends it (0x93).
        let pubrec = |id, code| Some(Packet::PubRec(Ack::new(id, code)));
        let a = s.on_publish(QoS::ExactlyOnce, 5, ok, v5, 2).unwrap();
        assert_eq!((a.route, a.ack), (true, pubrec(5, ok)));
        let a = s.on_publish(QoS::ExactlyOnce, 5, ok, v5, 2).unwrap();
        assert_eq!((a.route, a.ack), (false, pubrec(5, ok)), "a resend");
        let a = s.on_publish(QoS::ExactlyOnce, 6, reason::QUOTA_EXCEEDED, v5, 2);
        let a = a.unwrap();
        assert_eq!((a.route, a.ack), (false, pubrec(6, reason::QUOTA_EXCEEDED)));
        assert!(!s.state.lock().incoming_qos2.contains(&6));
        assert!(s.on_publish(QoS::ExactlyOnce, 7, ok, v5, 2).unwrap().route);
        let over = s.on_publish(QoS::ExactlyOnce, 8, ok, v5, 2).unwrap_err();
        assert_eq!(over.reason, reason::RECEIVE_MAXIMUM_EXCEEDED);
    }

    #[test]
    fn control_packets_are_handed_over_and_counted() {
        let s = session();
        let mut acks = vec![Packet::PingResp, Packet::PingResp];
        assert_eq!(s.push_control(&mut acks), 2);
        assert!(acks.is_empty());
        assert_eq!(s.control_len(), 2);
    }

    #[test]
    fn subscription_limit_counts_new_filters_only() {
        let s = session();
        assert!(!s.over_subscription_limit("a", 0), "0: no limit");
        s.state.lock().subscriptions.insert(
            "a".into(),
            SubscriptionRecord {
                opts: midge_protocol::SubOptions::qos(QoS::AtMostOnce),
                id: None,
            },
        );
        assert!(s.over_subscription_limit("b", 1));
        assert!(!s.over_subscription_limit("a", 1), "a replacement");
        assert!(!s.over_subscription_limit("b", 2));
    }

    #[test]
    fn expiry_at_disconnect_is_capped_and_cannot_start_from_zero() {
        let s = session(); // CONNECT gave 0
        assert!(s.expiry_at_disconnect(0, 100).is_ok());
        assert_eq!(
            s.expiry_at_disconnect(10, 100).unwrap_err().reason,
            reason::PROTOCOL_ERROR
        );
        s.state.lock().expiry_interval = 50;
        assert!(s.expiry_at_disconnect(500, 100).is_ok());
        assert_eq!(s.state.lock().expiry_interval, 100);
    }
}
