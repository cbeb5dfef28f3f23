//! The session core (sans-IO, in the spirit of quinn-proto): MQTT's rules
//! for one connection and its session as plain types and functions, with
//! no tokio, no sockets and no clock of their own (a time is an argument).
//! The connection task (`server/connection/`) moves bytes, time and
//! wake-ups in and out and does the I/O a decision calls for (store writes,
//! events, the acks it sends); the decision itself is made here, and each
//! rule has a unit test below.
//!
//! So far (issue 21 is moving the rules here one at a time): CONNECT
//! negotiation (connect.rs: `accept`), takeover (takeover.rs: what a
//! CONNECT does to the client id's live connection and stored session, how
//! the session is persisted, the DISCONNECT a server-ended connection
//! gets), SUBSCRIBE / UNSUBSCRIBE (subscribe.rs: shared filters, the
//! Subscription Identifier and No Local rules, each filter granted or
//! refused with its code, retain handling, SUBACK / UNSUBACK codes),
//! keep-alive and session-expiry negotiation, the keep-alive deadline,
//! what a client's PUBLISH must not carry, inbound topic aliases, inbound
//! QoS 2 (packet-id reuse, receive maximum, PUBREL; `Session::on_publish`
//! turns a decided PUBLISH into its ack) and the outbound acknowledgements
//! (PUBACK, PUBREC, PUBCOMP against the inflight window), outbound topic
//! aliases, fitting server packets to the client's Maximum Packet Size.
//! Still in the connection: the inflight window (server/writer.rs).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use midge_protocol::{encoded_len, reason, ByteStr, Packet, Properties, QoS, Version};

use super::{Inflight, Stage};

mod connect;
mod subscribe;
mod takeover;
pub use connect::{accept, Accepted, ClientLimits, Offer, Refused};
pub use subscribe::{
    no_local_on_shared, sends_retained, subscribe_filter, subscription_identifier, unsuback_code,
    FilterAnswer, SharedFilter,
};
pub use takeover::{persistence, server_disconnect, takeover, Existing, Persist, Takeover};

/// A rule broken by the client: the connection ends with `reason`
/// (DISCONNECT for 5.0, a plain close for 3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub reason: u8,
    pub why: &'static str,
}

impl Violation {
    /// A Protocol Error (0x82).
    pub const fn protocol(why: &'static str) -> Violation {
        Violation {
            reason: reason::PROTOCOL_ERROR,
            why,
        }
    }
}

/// The rules a PUBLISH from a client breaks by its properties alone:
/// it MUST NOT carry a Subscription Identifier (MQTT-3.3.4-6), and a packet
/// that breaks a MUST is a Protocol Error (MQTT-4.13.1-1).
pub fn client_publish(props: &Properties) -> Result<(), Violation> {
    if !props.subscription_identifiers.is_empty() {
        return Err(Violation::protocol(
            "a PUBLISH from a client carries a Subscription Identifier",
        ));
    }
    Ok(())
}

/// The keep alive in force after CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Seconds (0: no keep alive).
    pub seconds: u16,
    /// The Server Keep Alive to put in CONNACK (5.0, when the server
    /// imposed its own).
    pub server: Option<u16>,
}

/// The keep alive for a CONNECT that asked for `requested` seconds, with
/// `mqtt.max_keep_alive = max` (0: no maximum). A 5.0 client asking for
/// none or more than the maximum gets the maximum, told in CONNACK; a
/// 3.1.1 client cannot be told, and its CONNECT is refused before this
/// (`keep alive above the maximum`).
pub fn negotiate_keep_alive(version: Version, requested: u16, max: u16) -> KeepAlive {
    if version == Version::V5 && max > 0 && (requested == 0 || requested > max) {
        return KeepAlive {
            seconds: max,
            server: Some(max),
        };
    }
    KeepAlive {
        seconds: requested,
        server: None,
    }
}

/// How long the connection may stay silent: one and a half times the keep
/// alive (MQTT 3.1.2.10 / 5.0 3.1.2.10); `None` without a keep alive.
pub fn keep_alive_deadline(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// The session expiry a CONNECT asked for (5.0: its property, absent = 0;
/// 3.1.1: none with clean session, "never" without) and the one granted,
/// at most `max` (`mqtt.max_session_expiry`). When they differ, 5.0's
/// CONNACK says the granted one.
pub fn negotiate_expiry(
    version: Version,
    clean_start: bool,
    property: Option<u32>,
    max: u32,
) -> (u32, u32) {
    let requested = match version {
        Version::V5 => property.unwrap_or(0),
        Version::V311 if clean_start => 0,
        Version::V311 => u32::MAX,
    };
    (requested, requested.min(max))
}

/// Inbound topic aliases (MQTT 5.0 3.3.2.3.4): the client's map from alias
/// to topic, up to the Topic Alias Maximum the server gave in CONNACK.
#[derive(Debug, Default)]
pub struct TopicAliasesIn {
    /// Index = alias - 1; grown on first use.
    slots: Vec<Option<ByteStr>>,
    max: usize,
}

impl TopicAliasesIn {
    /// No alias set yet; aliases 1..=`max` are allowed (0: none).
    pub fn new(max: u16) -> TopicAliasesIn {
        TopicAliasesIn {
            slots: Vec::new(),
            max: usize::from(max),
        }
    }

    /// Applies a PUBLISH's alias: with a topic, the alias now names it;
    /// with an empty topic, the topic is the one the alias names. Errors:
    /// alias 0 or over the maximum (0x94), an alias never set or an empty
    /// topic without an alias (0x82).
    pub fn resolve(&mut self, topic: &mut ByteStr, alias: Option<u16>) -> Result<(), Violation> {
        let Some(alias) = alias else {
            if topic.is_empty() {
                return Err(Violation::protocol("empty topic without a topic alias"));
            }
            return Ok(());
        };
        let slot = usize::from(alias);
        if slot == 0 || slot > self.max {
            return Err(Violation {
                reason: reason::TOPIC_ALIAS_INVALID,
                why: "topic alias out of range",
            });
        }
        if self.slots.len() < slot {
            self.slots.resize(slot, None);
        }
        if topic.is_empty() {
            match &self.slots[slot - 1] {
                Some(t) => *topic = t.clone(),
                None => return Err(Violation::protocol("unknown topic alias")),
            }
        } else {
            self.slots[slot - 1] = Some(topic.clone());
        }
        Ok(())
    }
}

/// Outbound topic aliases: the server's map from topic to alias for one
/// connection, up to the Topic Alias Maximum the 5.0 client gave in CONNECT
/// (aliases are handed out 1, 2, ... and never reassigned).
#[derive(Debug, Default)]
pub struct TopicAliasesOut {
    map: HashMap<ByteStr, u16>,
}

impl TopicAliasesOut {
    /// Gives an outgoing PUBLISH its alias: a topic that has one is sent as
    /// an empty topic with the alias; a new topic gets the next alias while
    /// there is room (sent with both). Nothing for 3.1.1 or `max = 0`.
    /// Returns the topic that got a new alias, for [`Self::forget`] when
    /// the PUBLISH is not sent after all.
    pub fn apply(
        &mut self,
        version: Version,
        max: u16,
        topic: &mut ByteStr,
        alias: &mut Option<u16>,
    ) -> Option<ByteStr> {
        if version != Version::V5 || max == 0 {
            return None;
        }
        if let Some(&a) = self.map.get(topic) {
            *alias = Some(a);
            *topic = ByteStr::default();
            None
        } else if self.map.len() < usize::from(max) {
            let a = self.map.len() as u16 + 1;
            self.map.insert(topic.clone(), a);
            *alias = Some(a);
            Some(topic.clone())
        } else {
            None
        }
    }

    /// Takes back the alias [`Self::apply`] just gave `topic` (its PUBLISH
    /// was not sent, so the client never learnt it).
    pub fn forget(&mut self, topic: &ByteStr) {
        self.map.remove(topic);
    }
}

/// What an inbound QoS 2 PUBLISH is, given the packet ids received and not
/// yet released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Arrival {
    /// A new packet id (now recorded): route the message, answer PUBREC.
    Fresh,
    /// The id awaits its PUBREL: a resend, already routed once; answer
    /// PUBREC again and route nothing.
    Duplicate,
    /// As many QoS 2 messages as the server's Receive Maximum already await
    /// their PUBREL: the connection ends with 0x93.
    OverReceiveMaximum,
}

/// Classifies an inbound QoS 2 PUBLISH with `packet_id` against `pending`
/// (the ids awaiting PUBREL; a fresh id is added) and the server's
/// `receive_maximum`.
pub fn qos2_arrived(
    pending: &mut HashSet<u16>,
    packet_id: u16,
    receive_maximum: u16,
) -> Qos2Arrival {
    if pending.contains(&packet_id) {
        Qos2Arrival::Duplicate
    } else if pending.len() >= usize::from(receive_maximum) {
        Qos2Arrival::OverReceiveMaximum
    } else {
        pending.insert(packet_id);
        Qos2Arrival::Fresh
    }
}

/// The PUBCOMP reason for a PUBREL: success when the id was awaiting it;
/// otherwise 0x92 (5.0), success for 3.1.1, which has no reason codes.
pub fn pubcomp_code(known: bool, version: Version) -> u8 {
    if known || version == Version::V311 {
        reason::SUCCESS
    } else {
        reason::PACKET_IDENTIFIER_NOT_FOUND
    }
}

/// The PUBACK / PUBREC reason a 5.0 client gets for a publish decided with
/// `code`; 3.1.1 acks carry none (success).
pub fn publish_ack_code(code: u8, version: Version) -> u8 {
    if version == Version::V311 {
        reason::SUCCESS
    } else {
        code
    }
}

/// A PUBACK from the client: the QoS 1 message it acknowledges leaves the
/// inflight window. An id that is not a QoS 1 message in flight is ignored.
#[inline]
pub fn puback(inflight: &mut VecDeque<Inflight>, packet_id: u16) -> Option<Inflight> {
    let i = inflight.iter().position(|i| i.packet_id == packet_id)?;
    if inflight[i].delivery.qos != QoS::AtLeastOnce {
        return None;
    }
    inflight.remove(i)
}

/// What a PUBREC from the client does.
#[derive(Debug, PartialEq, Eq)]
pub enum PubRec {
    /// The QoS 2 message is now released: answer PUBREL (once the stage
    /// `Released` of the stored message `seq` is durable, when stored).
    Release { seq: u64 },
    /// The client refused the message (reason >= 0x80): it left the window
    /// (and the store's `seq`); no PUBREL.
    Refused { seq: u64 },
    /// No QoS 2 message in flight with that id: PUBREL 0x92.
    Unknown,
}

/// A PUBREC from the client with `reason`.
pub fn pubrec(inflight: &mut VecDeque<Inflight>, packet_id: u16, reason: u8) -> PubRec {
    let Some(i) = inflight.iter().position(|i| i.packet_id == packet_id) else {
        return PubRec::Unknown;
    };
    if inflight[i].delivery.qos != QoS::ExactlyOnce {
        return PubRec::Unknown;
    }
    let seq = inflight[i].delivery.seq;
    if reason >= 0x80 {
        inflight.remove(i);
        PubRec::Refused { seq }
    } else {
        inflight[i].stage = Stage::Released;
        PubRec::Release { seq }
    }
}

/// A PUBCOMP from the client: the released QoS 2 message leaves the window.
/// An id with no released message is ignored.
pub fn pubcomp(inflight: &mut VecDeque<Inflight>, packet_id: u16) -> Option<Inflight> {
    let i = inflight.iter().position(|i| i.packet_id == packet_id)?;
    if inflight[i].stage != Stage::Released {
        return None;
    }
    inflight.remove(i)
}

/// The properties of a server packet that may carry a Reason String and
/// User Properties (`None`: PUBLISH, pings, client-only packets).
fn diagnostics(p: &mut Packet) -> Option<&mut Properties> {
    match p {
        Packet::ConnAck(c) => Some(&mut c.properties),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            Some(&mut a.properties)
        }
        Packet::SubAck(s) => Some(&mut s.properties),
        Packet::UnsubAck(u) => Some(&mut u.properties),
        Packet::Disconnect(d) => Some(&mut d.properties),
        Packet::Auth(a) => Some(&mut a.properties),
        _ => None,
    }
}

fn drop_diagnostics(props: &mut Properties) {
    if props.reason_string.is_some() || !props.user_properties.is_empty() {
        props.reason_string = None;
        props.user_properties.clear();
    }
}

/// A client's Maximum Packet Size from its CONNECT (`usize::MAX`: none).
pub fn client_max_packet(props: &Properties) -> usize {
    props.maximum_packet_size.map_or(usize::MAX, |m| m as usize)
}

/// Request Problem Information 0 in CONNECT: no Reason String or User
/// Properties on any packet but PUBLISH, CONNACK and DISCONNECT (MQTT-3.1.2-29).
pub fn without_problem_info(p: &mut Packet) {
    if matches!(p, Packet::ConnAck(_) | Packet::Disconnect(_)) {
        return;
    }
    if let Some(props) = diagnostics(p) {
        drop_diagnostics(props);
    }
}

/// Makes a packet the server is about to write fit the client's Maximum
/// Packet Size (`max`, from CONNECT; `usize::MAX`: no limit). Every packet the
/// server writes must fit, those written before the CONNECT is accepted
/// included (MQTT-3.1.2-24). The Reason String and User Properties go first
/// (MQTT-3.2.2-19/20 for CONNACK, 3.14.2-3/4 for DISCONNECT, the same for
/// the acknowledgements and AUTH); then, in a CONNACK, the properties whose
/// value is the one their absence means (Retain, Wildcard, Subscription
/// Identifier and Shared Subscription Available = 1). Returns `false` when
/// the packet still does not fit: it must not be sent.
pub fn fit(p: &mut Packet, version: Version, max: usize) -> bool {
    if max == usize::MAX {
        return true;
    }
    if encoded_len(p, version) <= max {
        return true;
    }
    if let Some(props) = diagnostics(p) {
        drop_diagnostics(props);
    }
    if encoded_len(p, version) <= max {
        return true;
    }
    if let Packet::ConnAck(c) = p {
        let props: &mut midge_protocol::PropertyValues = &mut c.properties;
        for available in [
            &mut props.retain_available,
            &mut props.wildcard_subscription_available,
            &mut props.subscription_identifier_available,
            &mut props.shared_subscription_available,
        ] {
            if *available == Some(1) {
                *available = None;
            }
        }
    }
    encoded_len(p, version) <= max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::harness;

    fn inflight(packet_id: u16, qos: QoS, stage: Stage, seq: u64) -> Inflight {
        Inflight {
            packet_id,
            stage,
            delivery: harness::delivery(qos, "t", seq),
        }
    }

    fn window(items: Vec<Inflight>) -> VecDeque<Inflight> {
        items.into_iter().collect()
    }

    fn ids(w: &VecDeque<Inflight>) -> Vec<u16> {
        w.iter().map(|i| i.packet_id).collect()
    }

    #[test]
    fn keep_alive_v5_gets_the_maximum_when_it_asks_for_none_or_more() {
        let ka = negotiate_keep_alive(Version::V5, 0, 60);
        assert_eq!(
            ka,
            KeepAlive {
                seconds: 60,
                server: Some(60)
            }
        );
        let ka = negotiate_keep_alive(Version::V5, 61, 60);
        assert_eq!(
            ka,
            KeepAlive {
                seconds: 60,
                server: Some(60)
            }
        );
        let ka = negotiate_keep_alive(Version::V5, 30, 60);
        assert_eq!(
            ka,
            KeepAlive {
                seconds: 30,
                server: None
            }
        );
        let ka = negotiate_keep_alive(Version::V5, 0, 0);
        assert_eq!(
            ka,
            KeepAlive {
                seconds: 0,
                server: None
            }
        );
    }

    #[test]
    fn keep_alive_v311_is_never_rewritten() {
        let ka = negotiate_keep_alive(Version::V311, 0, 60);
        assert_eq!(
            ka,
            KeepAlive {
                seconds: 0,
                server: None
            }
        );
        let ka = negotiate_keep_alive(Version::V311, 10, 60);
        assert_eq!(
            ka,
            KeepAlive {
                seconds: 10,
                server: None
            }
        );
    }

    #[test]
    fn keep_alive_deadline_is_one_and_a_half_times() {
        assert_eq!(keep_alive_deadline(0), None);
        assert_eq!(keep_alive_deadline(1), Some(Duration::from_millis(1500)));
        assert_eq!(keep_alive_deadline(60), Some(Duration::from_secs(90)));
        // The largest keep alive does not overflow.
        assert_eq!(
            keep_alive_deadline(u16::MAX),
            Some(Duration::from_millis(65_535 * 1500))
        );
    }

    #[test]
    fn expiry_v5_comes_from_the_property_capped_by_the_maximum() {
        assert_eq!(negotiate_expiry(Version::V5, true, None, 100), (0, 0));
        assert_eq!(
            negotiate_expiry(Version::V5, false, Some(50), 100),
            (50, 50)
        );
        assert_eq!(
            negotiate_expiry(Version::V5, false, Some(500), 100),
            (500, 100)
        );
        assert_eq!(
            negotiate_expiry(Version::V5, false, Some(u32::MAX), u32::MAX),
            (u32::MAX, u32::MAX)
        );
    }

    #[test]
    fn expiry_v311_follows_clean_session() {
        // The property cannot be sent in 3.1.1; it is ignored if present.
        assert_eq!(negotiate_expiry(Version::V311, true, Some(9), 100), (0, 0));
        assert_eq!(
            negotiate_expiry(Version::V311, false, None, 100),
            (u32::MAX, 100)
        );
        assert_eq!(
            negotiate_expiry(Version::V311, false, None, u32::MAX),
            (u32::MAX, u32::MAX)
        );
    }

    #[test]
    fn alias_with_a_topic_sets_it_and_an_empty_topic_uses_it() {
        let mut a = TopicAliasesIn::new(2);
        let mut t = ByteStr::from("a/b");
        assert_eq!(a.resolve(&mut t, Some(2)), Ok(()));
        let mut empty = ByteStr::from("");
        assert_eq!(a.resolve(&mut empty, Some(2)), Ok(()));
        assert_eq!(&*empty, "a/b");
        // Re-pointing an alias.
        let mut t = ByteStr::from("c");
        assert_eq!(a.resolve(&mut t, Some(2)), Ok(()));
        let mut empty = ByteStr::from("");
        a.resolve(&mut empty, Some(2)).unwrap();
        assert_eq!(&*empty, "c");
        // A topic without an alias is left alone.
        let mut t = ByteStr::from("x");
        assert_eq!(a.resolve(&mut t, None), Ok(()));
        assert_eq!(&*t, "x");
    }

    #[test]
    fn alias_out_of_range_is_0x94() {
        let mut a = TopicAliasesIn::new(2);
        for alias in [0, 3, u16::MAX] {
            let mut t = ByteStr::from("a");
            let e = a.resolve(&mut t, Some(alias)).unwrap_err();
            assert_eq!(e.reason, reason::TOPIC_ALIAS_INVALID, "alias {alias}");
        }
        // A server that allows none refuses alias 1.
        let mut none = TopicAliasesIn::new(0);
        let mut t = ByteStr::from("a");
        let e = none.resolve(&mut t, Some(1)).unwrap_err();
        assert_eq!(e.reason, reason::TOPIC_ALIAS_INVALID);
    }

    #[test]
    fn unknown_alias_and_empty_topic_without_alias_are_protocol_errors() {
        let mut a = TopicAliasesIn::new(5);
        let mut empty = ByteStr::from("");
        let e = a.resolve(&mut empty, Some(4)).unwrap_err();
        assert_eq!(e, Violation::protocol("unknown topic alias"));
        let e = a.resolve(&mut empty, None).unwrap_err();
        assert_eq!(e, Violation::protocol("empty topic without a topic alias"));
    }

    #[test]
    fn outbound_alias_first_with_topic_then_alone_up_to_the_maximum() {
        let mut a = TopicAliasesOut::default();
        let send = |a: &mut TopicAliasesOut, t: &str| {
            let (mut topic, mut alias) = (ByteStr::from(t), None);
            let new = a.apply(Version::V5, 2, &mut topic, &mut alias);
            (topic.to_string(), alias, new.map(|t| t.to_string()))
        };
        assert_eq!(send(&mut a, "x"), ("x".into(), Some(1), Some("x".into())));
        assert_eq!(send(&mut a, "x"), ("".into(), Some(1), None));
        assert_eq!(send(&mut a, "y"), ("y".into(), Some(2), Some("y".into())));
        // Full: a third topic goes without an alias.
        assert_eq!(send(&mut a, "z"), ("z".into(), None, None));
        assert_eq!(send(&mut a, "y"), ("".into(), Some(2), None));
    }

    #[test]
    fn outbound_alias_forgotten_when_its_publish_is_not_sent() {
        let mut a = TopicAliasesOut::default();
        let (mut t, mut alias) = (ByteStr::from("big"), None);
        let new = a.apply(Version::V5, 5, &mut t, &mut alias).unwrap();
        a.forget(&new);
        // The client never learnt it: the next PUBLISH carries the topic again.
        let (mut t, mut alias) = (ByteStr::from("big"), None);
        assert!(a.apply(Version::V5, 5, &mut t, &mut alias).is_some());
        assert_eq!((&*t, alias), ("big", Some(1)));
    }

    #[test]
    fn no_outbound_alias_for_311_or_a_client_that_allows_none() {
        let mut a = TopicAliasesOut::default();
        for (v, max) in [(Version::V311, 10), (Version::V5, 0)] {
            let (mut t, mut alias) = (ByteStr::from("x"), None);
            assert!(a.apply(v, max, &mut t, &mut alias).is_none());
            assert_eq!((&*t, alias), ("x", None));
        }
    }

    #[test]
    fn qos2_fresh_then_duplicate_until_released_then_fresh_again() {
        let mut pending = HashSet::new();
        assert_eq!(qos2_arrived(&mut pending, 7, 10), Qos2Arrival::Fresh);
        assert_eq!(qos2_arrived(&mut pending, 7, 10), Qos2Arrival::Duplicate);
        // PUBREL frees the id; the same id is then a new message.
        assert!(pending.remove(&7));
        assert_eq!(qos2_arrived(&mut pending, 7, 10), Qos2Arrival::Fresh);
    }

    #[test]
    fn qos2_over_receive_maximum_is_refused_but_a_resend_is_not() {
        let mut pending = HashSet::new();
        assert_eq!(qos2_arrived(&mut pending, 1, 2), Qos2Arrival::Fresh);
        assert_eq!(qos2_arrived(&mut pending, 2, 2), Qos2Arrival::Fresh);
        assert_eq!(
            qos2_arrived(&mut pending, 3, 2),
            Qos2Arrival::OverReceiveMaximum
        );
        assert!(!pending.contains(&3), "a refused id is not recorded");
        // A resend of an id already pending is no new message: allowed.
        assert_eq!(qos2_arrived(&mut pending, 2, 2), Qos2Arrival::Duplicate);
    }

    #[test]
    fn pubrel_of_an_unknown_id_is_0x92_in_5_and_success_in_311() {
        assert_eq!(pubcomp_code(true, Version::V5), reason::SUCCESS);
        assert_eq!(
            pubcomp_code(false, Version::V5),
            reason::PACKET_IDENTIFIER_NOT_FOUND
        );
        assert_eq!(pubcomp_code(true, Version::V311), reason::SUCCESS);
        assert_eq!(pubcomp_code(false, Version::V311), reason::SUCCESS);
    }

    #[test]
    fn publish_acks_carry_the_decision_only_in_5() {
        assert_eq!(
            publish_ack_code(reason::NOT_AUTHORIZED, Version::V5),
            reason::NOT_AUTHORIZED
        );
        assert_eq!(
            publish_ack_code(reason::NOT_AUTHORIZED, Version::V311),
            reason::SUCCESS
        );
        assert_eq!(
            publish_ack_code(reason::SUCCESS, Version::V5),
            reason::SUCCESS
        );
    }

    #[test]
    fn puback_removes_only_a_qos1_message_with_that_id() {
        let mut w = window(vec![
            inflight(1, QoS::AtLeastOnce, Stage::Published, 11),
            inflight(2, QoS::ExactlyOnce, Stage::Published, 12),
            inflight(3, QoS::AtLeastOnce, Stage::Published, 13),
        ]);
        assert_eq!(puback(&mut w, 3).map(|i| i.delivery.seq), Some(13));
        assert_eq!(ids(&w), [1, 2]);
        // QoS 2 is not acknowledged by PUBACK; unknown ids are ignored.
        assert!(puback(&mut w, 2).is_none());
        assert!(puback(&mut w, 9).is_none());
        assert!(puback(&mut w, 3).is_none(), "a second PUBACK finds nothing");
        assert_eq!(ids(&w), [1, 2]);
    }

    #[test]
    fn pubrec_releases_then_pubcomp_completes() {
        let mut w = window(vec![inflight(5, QoS::ExactlyOnce, Stage::Published, 42)]);
        // PUBCOMP before PUBREC is ignored: the message is not released yet.
        assert!(pubcomp(&mut w, 5).is_none());
        assert_eq!(
            pubrec(&mut w, 5, reason::SUCCESS),
            PubRec::Release { seq: 42 }
        );
        assert_eq!(w[0].stage, Stage::Released);
        // A repeated PUBREC releases again (PUBREL resent), nothing else.
        assert_eq!(
            pubrec(&mut w, 5, reason::SUCCESS),
            PubRec::Release { seq: 42 }
        );
        assert_eq!(pubcomp(&mut w, 5).map(|i| i.packet_id), Some(5));
        assert!(w.is_empty());
        assert!(
            pubcomp(&mut w, 5).is_none(),
            "a second PUBCOMP finds nothing"
        );
    }

    #[test]
    fn pubrec_with_an_error_reason_drops_the_message() {
        let mut w = window(vec![
            inflight(5, QoS::ExactlyOnce, Stage::Published, 42),
            inflight(6, QoS::ExactlyOnce, Stage::Published, 43),
        ]);
        assert_eq!(
            pubrec(&mut w, 5, reason::NOT_AUTHORIZED),
            PubRec::Refused { seq: 42 }
        );
        assert_eq!(ids(&w), [6]);
        // 0x10 (no matching subscribers) is a success code: released.
        assert_eq!(
            pubrec(&mut w, 6, reason::NO_MATCHING_SUBSCRIBERS),
            PubRec::Release { seq: 43 }
        );
    }

    #[test]
    fn pubrec_for_an_unknown_id_or_a_qos1_message_is_unknown() {
        let mut w = window(vec![inflight(1, QoS::AtLeastOnce, Stage::Published, 0)]);
        assert_eq!(pubrec(&mut w, 1, reason::SUCCESS), PubRec::Unknown);
        assert_eq!(pubrec(&mut w, 2, reason::SUCCESS), PubRec::Unknown);
        assert_eq!(w[0].stage, Stage::Published, "untouched");
    }

    #[test]
    fn a_client_publish_with_a_subscription_identifier_is_a_protocol_error() {
        assert_eq!(client_publish(&Properties::default()), Ok(()));
        let mut p = Properties::default();
        p.subscription_identifiers.push(7);
        let v = client_publish(&p).unwrap_err();
        assert_eq!(v.reason, reason::PROTOCOL_ERROR);
        assert!(v.why.contains("Subscription Identifier"), "{}", v.why);
    }

    fn refusal(text: &str) -> Packet {
        let mut properties = Properties::default();
        properties.reason_string = Some(text.into());
        properties
            .user_properties
            .push(("k".into(), "a value".into()));
        Packet::ConnAck(midge_protocol::ConnAck {
            session_present: false,
            code: reason::NOT_AUTHORIZED,
            properties,
        })
    }

    #[test]
    fn a_refusal_drops_its_reason_string_to_fit_the_clients_maximum_packet_size() {
        let mut p = refusal("not authorized");
        assert!(encoded_len(&p, Version::V5) > 20);
        assert!(fit(&mut p, Version::V5, 20));
        assert!(encoded_len(&p, Version::V5) <= 20);
        let Packet::ConnAck(c) = &p else { panic!() };
        assert_eq!(c.code, reason::NOT_AUTHORIZED);
        assert!(c.properties.reason_string.is_none());
        assert!(c.properties.user_properties.is_empty());
    }

    #[test]
    fn a_packet_that_fits_keeps_its_reason_string() {
        let mut p = refusal("not authorized");
        let before = encoded_len(&p, Version::V5);
        assert!(fit(&mut p, Version::V5, before));
        assert!(fit(&mut p, Version::V5, usize::MAX));
        let Packet::ConnAck(c) = &p else { panic!() };
        assert_eq!(
            c.properties.reason_string.as_deref(),
            Some("not authorized")
        );
    }

    #[test]
    fn a_server_disconnect_drops_its_reason_string_to_fit() {
        let mut properties = Properties::default();
        properties.reason_string = Some("session taken over by another connection".into());
        let mut p = Packet::Disconnect(midge_protocol::Disconnect {
            reason: reason::SESSION_TAKEN_OVER,
            properties,
        });
        assert!(fit(&mut p, Version::V5, 10));
        assert!(encoded_len(&p, Version::V5) <= 10);
        let Packet::Disconnect(d) = &p else { panic!() };
        assert_eq!(d.reason, reason::SESSION_TAKEN_OVER);
    }

    #[test]
    fn a_connack_drops_properties_that_say_what_their_absence_says() {
        let mut properties = Properties::default();
        properties.receive_maximum = Some(100);
        properties.retain_available = Some(1);
        properties.wildcard_subscription_available = Some(1);
        properties.subscription_identifier_available = Some(0);
        properties.shared_subscription_available = Some(1);
        properties.maximum_packet_size = Some(1 << 20);
        let mut p = Packet::ConnAck(midge_protocol::ConnAck {
            session_present: false,
            code: reason::SUCCESS,
            properties,
        });
        let before = encoded_len(&p, Version::V5);
        assert!(fit(&mut p, Version::V5, before - 4));
        let Packet::ConnAck(c) = &p else { panic!() };
        assert_eq!(c.properties.retain_available, None);
        assert_eq!(c.properties.shared_subscription_available, None);
        // 0 is not the default: it stays.
        assert_eq!(c.properties.subscription_identifier_available, Some(0));
        assert_eq!(c.properties.receive_maximum, Some(100));
    }

    #[test]
    fn a_packet_that_cannot_fit_is_not_to_be_sent() {
        let mut p = refusal("not authorized");
        assert!(!fit(&mut p, Version::V5, 3));
    }

    #[test]
    fn no_problem_information_strips_acks_but_not_connack_or_disconnect() {
        let mut ack = Packet::PubAck(midge_protocol::Ack {
            packet_id: 1,
            reason: reason::NOT_AUTHORIZED,
            properties: {
                let mut p = Properties::default();
                p.reason_string = Some("denied".into());
                p
            },
        });
        without_problem_info(&mut ack);
        let Packet::PubAck(a) = &ack else { panic!() };
        assert!(a.properties.reason_string.is_none());
        let mut connack = refusal("not authorized");
        without_problem_info(&mut connack);
        let Packet::ConnAck(c) = &connack else {
            panic!()
        };
        assert!(c.properties.reason_string.is_some());
    }
}
