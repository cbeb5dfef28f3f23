//! A deterministic harness for the session core, in the spirit of
//! quinn-proto's tests: packets from the client and clock ticks go in, the
//! packets the core answers with come out. No sockets, no tokio, no clock:
//! time is a number the test moves. What it drives is the core the
//! connection drives (`proto::accept`, `Session::on_ack`,
//! `Session::on_publish`, `Session::take_outgoing`, `TopicAliasesIn` /
//! `TopicAliasesOut`, `proto::fit`, the keep-alive deadline,
//! `proto::takeover`), through the same calls.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use midge_protocol::{reason, Ack, ByteStr, Connect, Packet, Properties, Publish, QoS, Version};

use super::outbound::Outgoing;
use super::proto::{self, Existing, Offer, Takeover, TopicAliasesIn, TopicAliasesOut};
use super::{Delivery, Session};
use crate::message::Message;

/// One connection's core, driven by the test.
struct Core {
    session: Session,
    version: Version,
    receive_maximum: u16,
    aliases_in: TopicAliasesIn,
    aliases_out: TopicAliasesOut,
    alias_max_out: u16,
    client_max_packet: usize,
    keep_alive: Option<Duration>,
    /// The test's clock, and when the client last sent something.
    now: Duration,
    last_heard: Duration,
    /// Packet ids of deliveries the client acknowledged (the `Acked` events).
    acked: Vec<u16>,
    /// Packet ids (0 for QoS 0) of the client's PUBLISHes the core routed.
    routed: Vec<u16>,
    /// The connection ended with this reason.
    closed: Option<u8>,
}

fn offer() -> Offer {
    Offer {
        max_client_id_len: 64,
        max_qos: 2,
        retain_available: true,
        max_keep_alive: 0,
        max_session_expiry: 3600,
        max_inflight: 10,
        receive_maximum: 2,
        max_packet_size: 1 << 20,
        topic_alias_maximum: 3,
        wildcard_subscriptions: true,
        subscription_identifiers: true,
        shared_subscriptions: true,
    }
}

fn connect(version: Version) -> Connect {
    Connect {
        version,
        clean_start: true,
        keep_alive: 10,
        properties: Properties::default(),
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    }
}

fn publish(qos: QoS, packet_id: u16, topic: &str, alias: Option<u16>) -> Packet {
    let mut properties = Properties::default();
    properties.topic_alias = alias;
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties,
        payload: Bytes::from_static(b"x"),
    })
}

/// A delivery of a message on `topic` at `qos`, as the router queues it
/// (sequence number `seq`). The session core's tests (here, `client`,
/// `proto`, the session's own) all build theirs with it.
pub(super) fn delivery(qos: QoS, topic: &str, seq: u64) -> Delivery {
    let msg = Message::new(
        ByteStr::from(topic),
        Bytes::from_static(b"payload"),
        qos,
        false,
        Properties::default(),
    );
    Delivery {
        msg: Arc::new(msg),
        qos,
        retain: false,
        sub_ids: Default::default(),
        shared: None,
        seq,
    }
}

fn ack(kind: fn(Ack) -> Packet, packet_id: u16, code: u8) -> Packet {
    kind(Ack::new(packet_id, code))
}

impl Core {
    /// A CONNECT accepted by the core, with the server's `offer`.
    fn connect(c: Connect, offer: &Offer) -> Core {
        let a = proto::accept(&c, offer, Ok(None)).expect("accepted");
        Core {
            session: Session::new("c".into(), a.expiry, None),
            version: c.version,
            receive_maximum: offer.receive_maximum,
            aliases_in: TopicAliasesIn::new(offer.topic_alias_maximum),
            aliases_out: TopicAliasesOut::default(),
            alias_max_out: a.limits.topic_alias_max,
            client_max_packet: a.limits.max_packet_size,
            keep_alive: proto::keep_alive_deadline(a.keep_alive),
            now: Duration::ZERO,
            last_heard: Duration::ZERO,
            acked: Vec::new(),
            routed: Vec::new(),
            closed: None,
        }
    }

    /// A packet from the client; returns the core's answer.
    fn recv(&mut self, p: Packet) -> Vec<Packet> {
        assert!(self.closed.is_none(), "the connection is closed");
        self.last_heard = self.now;
        if let Some(a) = self.session.on_ack(&p, self.version) {
            if let Some(d) = &a.acked {
                let id = match &p {
                    Packet::PubAck(x) | Packet::PubComp(x) => x.packet_id,
                    _ => 0,
                };
                assert_eq!(&*d.msg.topic, "out", "the acked delivery");
                self.acked.push(id);
            }
            return a.reply.into_iter().collect();
        }
        match p {
            Packet::Publish(mut p) => {
                let checked = proto::client_publish(&p.properties).and_then(|()| {
                    self.aliases_in
                        .resolve(&mut p.topic, p.properties.topic_alias)
                });
                if let Err(v) = checked {
                    return self.close(v.reason);
                }
                let answer = self.session.on_publish(
                    p.qos,
                    p.packet_id,
                    reason::SUCCESS,
                    self.version,
                    self.receive_maximum,
                );
                match answer {
                    Ok(a) => {
                        if a.route {
                            self.routed.push(p.packet_id);
                        }
                        a.ack.into_iter().collect()
                    }
                    Err(v) => self.close(v.reason),
                }
            }
            Packet::PingReq => vec![Packet::PingResp],
            _ => Vec::new(),
        }
    }

    /// The clock moves on by `d`; returns what the core sends (a 5.0
    /// DISCONNECT 0x8D when the keep-alive ran out).
    fn tick(&mut self, d: Duration) -> Vec<Packet> {
        self.now += d;
        match self.keep_alive {
            Some(ka) if self.now - self.last_heard >= ka && self.closed.is_none() => {
                self.close(reason::KEEP_ALIVE_TIMEOUT)
            }
            _ => Vec::new(),
        }
    }

    /// A message for the client: queued, then taken through the outbound
    /// window (`Session::take_outgoing`, as the output does: a fresh packet
    /// id for QoS 1/2), its PUBLISH fitted to the client.
    fn deliver(&mut self, qos: QoS, topic: &str) -> Option<Packet> {
        let delivery = delivery(qos, topic, 0);
        {
            let mut st = self.session.state.lock();
            st.queued_bytes += delivery.msg.payload.len();
            st.queue.push_back(delivery);
        }
        let mut items = Vec::new();
        self.session
            .take_outgoing(usize::MAX, QoS::ExactlyOnce, 1, &mut items);
        let Some(Outgoing::Publish { packet_id, .. }) = items.pop() else {
            panic!("the window hands out the queued delivery");
        };
        let mut p = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from_static(b"payload"),
        };
        let mut alias = None;
        let new =
            self.aliases_out
                .apply(self.version, self.alias_max_out, &mut p.topic, &mut alias);
        p.properties.topic_alias = alias;
        let mut p = Packet::Publish(p);
        if !proto::fit(&mut p, self.version, self.client_max_packet) {
            if let Some(t) = new {
                self.aliases_out.forget(&t);
            }
            return None;
        }
        Some(p)
    }

    fn close(&mut self, code: u8) -> Vec<Packet> {
        self.closed = Some(code);
        let mut last: Vec<Packet> = proto::server_disconnect(self.version, code)
            .into_iter()
            .collect();
        last.retain_mut(|d| proto::fit(d, self.version, self.client_max_packet));
        last
    }

    /// A CONNECT `c` for the client id of this core's session, as the
    /// registry decides it (`proto::takeover`): a live connection is told
    /// why it ends, then the new connection resumes the session or gets a
    /// fresh one. Returns this core's last packets, the new core and its
    /// CONNACK's Session Present flag.
    fn taken_over_by(&mut self, c: Connect) -> (Vec<Packet>, Core, bool) {
        let seen = |core: &Core| Existing {
            live: core.closed.is_none(),
            ended: false,
        };
        let mut last = Vec::new();
        let mut decision = proto::takeover(Some(seen(self)), c.clean_start);
        if let Takeover::Kick { reason } = decision {
            last = self.close(reason);
            decision = proto::takeover(Some(seen(self)), c.clean_start);
        }
        let mut new = Core::connect(c, &offer());
        if decision == Takeover::Resume {
            let expiry = new.session.state.lock().expiry_interval;
            let fresh = Session::new("c".into(), 0, None);
            new.session = std::mem::replace(&mut self.session, fresh);
            new.session.state.lock().expiry_interval = expiry;
        }
        (last, new, decision.session_present())
    }

    fn inflight(&self) -> Vec<u16> {
        let st = self.session.state.lock();
        st.inflight.iter().map(|i| i.packet_id).collect()
    }
}

fn v5() -> Core {
    Core::connect(connect(Version::V5), &offer())
}

#[test]
fn inbound_qos1_and_qos0_acks_and_ping() {
    let mut c = v5();
    assert_eq!(c.recv(publish(QoS::AtMostOnce, 0, "a", None)), []);
    assert_eq!(
        c.recv(publish(QoS::AtLeastOnce, 7, "a", None)),
        [ack(Packet::PubAck, 7, 0)]
    );
    assert_eq!(c.recv(Packet::PingReq), [Packet::PingResp]);
}

#[test]
fn inbound_qos2_with_packet_id_reuse_and_unknown_ids() {
    let mut c = v5();
    let pubrec = |id| ack(Packet::PubRec, id, 0);
    assert_eq!(c.recv(publish(QoS::ExactlyOnce, 1, "a", None)), [pubrec(1)]);
    // A resend before PUBREL (DUP set, as a client or a bridge's remote
    // sends it after a reconnect): PUBREC again, routed once only.
    let mut dup = publish(QoS::ExactlyOnce, 1, "a", None);
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    assert_eq!(c.recv(dup), [pubrec(1)]);
    assert_eq!(c.routed, [1], "the resend is not routed again");
    assert_eq!(
        c.recv(ack(Packet::PubRel, 1, 0)),
        [ack(Packet::PubComp, 1, 0)]
    );
    // The id is free again: a new message with it is fresh.
    assert_eq!(c.recv(publish(QoS::ExactlyOnce, 1, "a", None)), [pubrec(1)]);
    assert_eq!(c.routed, [1, 1]);
    assert_eq!(
        c.recv(ack(Packet::PubRel, 1, 0)),
        [ack(Packet::PubComp, 1, 0)]
    );
    // PUBREL of an id not awaiting one: 0x92 in 5.0, success in 3.1.1.
    assert_eq!(
        c.recv(ack(Packet::PubRel, 1, 0)),
        [ack(Packet::PubComp, 1, reason::PACKET_IDENTIFIER_NOT_FOUND)]
    );
    let mut c = Core::connect(connect(Version::V311), &offer());
    assert_eq!(
        c.recv(ack(Packet::PubRel, 9, 0)),
        [ack(Packet::PubComp, 9, 0)]
    );
}

#[test]
fn receive_maximum_exceeded_closes_with_0x93() {
    let mut c = v5(); // receive maximum 2
    c.recv(publish(QoS::ExactlyOnce, 1, "a", None));
    c.recv(publish(QoS::ExactlyOnce, 2, "a", None));
    let out = c.recv(publish(QoS::ExactlyOnce, 3, "a", None));
    assert_eq!(c.closed, Some(reason::RECEIVE_MAXIMUM_EXCEEDED));
    assert!(matches!(&out[..], [Packet::Disconnect(d)] if d.reason == 0x93));
}

#[test]
fn outbound_acks_qos1_and_qos2_through_the_window() {
    let mut c = v5();
    let Some(Packet::Publish(p1)) = c.deliver(QoS::AtLeastOnce, "out") else {
        panic!("sent")
    };
    let Some(Packet::Publish(p2)) = c.deliver(QoS::ExactlyOnce, "out") else {
        panic!("sent")
    };
    assert_eq!(c.inflight(), [p1.packet_id, p2.packet_id]);
    // A PUBACK for the QoS 2 id, or a PUBCOMP before PUBREC: ignored.
    assert_eq!(c.recv(ack(Packet::PubAck, p2.packet_id, 0)), []);
    assert_eq!(c.recv(ack(Packet::PubComp, p2.packet_id, 0)), []);
    assert_eq!(c.recv(ack(Packet::PubAck, p1.packet_id, 0)), []);
    assert_eq!(c.acked, [p1.packet_id]);
    assert_eq!(
        c.recv(ack(Packet::PubRec, p2.packet_id, 0)),
        [ack(Packet::PubRel, p2.packet_id, 0)]
    );
    assert_eq!(c.recv(ack(Packet::PubComp, p2.packet_id, 0)), []);
    assert_eq!(c.acked, [p1.packet_id, p2.packet_id]);
    assert!(c.inflight().is_empty());
    // PUBREC of an unknown id: PUBREL 0x92; a refusing PUBREC: no PUBREL.
    assert_eq!(
        c.recv(ack(Packet::PubRec, 99, 0)),
        [ack(Packet::PubRel, 99, reason::PACKET_IDENTIFIER_NOT_FOUND)]
    );
    let Some(Packet::Publish(p3)) = c.deliver(QoS::ExactlyOnce, "out") else {
        panic!("sent")
    };
    assert_eq!(
        c.recv(ack(Packet::PubRec, p3.packet_id, reason::UNSPECIFIED_ERROR)),
        []
    );
    assert!(c.inflight().is_empty());
}

#[test]
fn inbound_aliases_are_set_used_and_refused() {
    let mut c = v5(); // the server allows aliases 1..=3
    assert_eq!(
        c.recv(publish(QoS::AtLeastOnce, 1, "t/1", Some(1))),
        [ack(Packet::PubAck, 1, 0)]
    );
    assert_eq!(
        c.recv(publish(QoS::AtLeastOnce, 2, "", Some(1))),
        [ack(Packet::PubAck, 2, 0)]
    );
    let out = c.recv(publish(QoS::AtLeastOnce, 3, "t", Some(4)));
    assert!(matches!(&out[..], [Packet::Disconnect(d)] if d.reason == reason::TOPIC_ALIAS_INVALID));
    let mut c = v5();
    let out = c.recv(publish(QoS::AtLeastOnce, 1, "", Some(2)));
    assert!(matches!(&out[..], [Packet::Disconnect(d)] if d.reason == reason::PROTOCOL_ERROR));
}

#[test]
fn outbound_aliases_are_assigned_up_to_the_clients_maximum() {
    let mut c5 = connect(Version::V5);
    c5.properties.topic_alias_maximum = Some(1);
    let mut c = Core::connect(c5, &offer());
    let alias = |p: Option<Packet>| match p {
        Some(Packet::Publish(p)) => (p.topic.to_string(), p.properties.topic_alias),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        alias(c.deliver(QoS::AtMostOnce, "a")),
        ("a".into(), Some(1))
    );
    assert_eq!(alias(c.deliver(QoS::AtMostOnce, "a")), ("".into(), Some(1)));
    // No room for a second alias: the topic goes in full.
    assert_eq!(alias(c.deliver(QoS::AtMostOnce, "b")), ("b".into(), None));
    // A client that allows none gets none.
    let mut c = v5();
    assert_eq!(alias(c.deliver(QoS::AtMostOnce, "a")), ("a".into(), None));
}

#[test]
fn oversized_packets_both_ways() {
    // Inbound: the server's Maximum Packet Size is in CONNACK (the decoder
    // refuses a larger packet with 0x95).
    let a = proto::accept(&connect(Version::V5), &offer(), Ok(None)).unwrap();
    assert_eq!(a.connack.maximum_packet_size, Some(1 << 20));
    // Outbound: a PUBLISH larger than the client's maximum is not sent,
    // and the alias it would have set is taken back.
    let mut c5 = connect(Version::V5);
    c5.properties.maximum_packet_size = Some(20);
    c5.properties.topic_alias_maximum = Some(5);
    let mut c = Core::connect(c5, &offer());
    assert!(c
        .deliver(QoS::AtMostOnce, "a/very/long/topic/name")
        .is_none());
    match c.deliver(QoS::AtMostOnce, "t") {
        Some(Packet::Publish(p)) => assert_eq!(p.properties.topic_alias, Some(1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn keep_alive_ticks_one_and_a_half_times() {
    let mut c = v5(); // keep alive 10 s: silent for 15 s ends it
    assert_eq!(c.tick(Duration::from_secs(14)), []);
    assert_eq!(c.recv(Packet::PingReq), [Packet::PingResp]);
    assert_eq!(c.tick(Duration::from_secs(14)), [], "counted from the ping");
    let out = c.tick(Duration::from_secs(1));
    assert!(matches!(&out[..], [Packet::Disconnect(d)] if d.reason == reason::KEEP_ALIVE_TIMEOUT));
    // 3.1.1: closed without a packet. No keep alive: never.
    let mut c = Core::connect(connect(Version::V311), &offer());
    assert_eq!(c.tick(Duration::from_secs(15)), []);
    assert_eq!(c.closed, Some(reason::KEEP_ALIVE_TIMEOUT));
    let mut none = connect(Version::V311);
    none.keep_alive = 0;
    let mut c = Core::connect(none, &offer());
    assert_eq!(c.tick(Duration::from_secs(86_400)), []);
    assert_eq!(c.closed, None);
}

#[test]
fn expiry_is_granted_and_changed_at_disconnect() {
    let mut c5 = connect(Version::V5);
    c5.properties.session_expiry_interval = Some(10_000);
    let c = Core::connect(c5, &offer()); // capped at 3600
    assert_eq!(c.session.state.lock().expiry_interval, 3600);
    assert!(c.session.expiry_at_disconnect(60, 3600).is_ok());
    assert_eq!(c.session.state.lock().expiry_interval, 60);
    let c = v5(); // none asked: 0, and DISCONNECT cannot set one
    assert_eq!(
        c.session.expiry_at_disconnect(60, 3600).unwrap_err().reason,
        reason::PROTOCOL_ERROR
    );
}

#[test]
fn takeover_kicks_the_live_connection_then_resumes_or_starts_fresh() {
    let mut old = v5();
    let Some(Packet::Publish(p)) = old.deliver(QoS::AtLeastOnce, "out") else {
        panic!("sent")
    };
    old.recv(publish(QoS::ExactlyOnce, 4, "a", None));
    let mut again = connect(Version::V5);
    again.clean_start = false;
    let (last, mut new, present) = old.taken_over_by(again);
    // The old connection reads why (5.0), the new one finds its session:
    // the delivery in flight and the QoS 2 id awaiting PUBREL.
    assert!(matches!(&last[..], [Packet::Disconnect(d)] if d.reason == reason::SESSION_TAKEN_OVER));
    assert_eq!(old.closed, Some(reason::SESSION_TAKEN_OVER));
    assert!(present);
    assert_eq!(new.inflight(), [p.packet_id]);
    assert_eq!(new.recv(ack(Packet::PubAck, p.packet_id, 0)), []);
    assert_eq!(new.acked, [p.packet_id]);
    assert_eq!(
        new.recv(ack(Packet::PubRel, 4, 0)),
        [ack(Packet::PubComp, 4, 0)],
        "the QoS 2 id carried over"
    );
    // 3.1.1 with Clean Start: the old one is closed without a packet,
    // the new session starts empty.
    let mut old = Core::connect(connect(Version::V311), &offer());
    old.deliver(QoS::AtLeastOnce, "out");
    let (last, new, present) = old.taken_over_by(connect(Version::V311));
    assert_eq!(last, []);
    assert_eq!(old.closed, Some(reason::SESSION_TAKEN_OVER));
    assert!(!present);
    assert!(new.inflight().is_empty());
    // An offline session (its connection gone) is resumed without a kick.
    let mut old = v5();
    old.tick(Duration::from_secs(15)); // keep alive ran out
    let mut again = connect(Version::V5);
    again.clean_start = false;
    let (last, _, present) = old.taken_over_by(again);
    assert_eq!((last, present), (Vec::new(), true));
}
