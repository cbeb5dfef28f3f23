//! The session core in the client role: what a bridge's link to its remote
//! broker decides, as plain types and functions (no tokio, no sockets, no
//! clock of their own: a time is an argument), driven by bridge/link.rs and
//! bridge/outbound.rs, unit-tested below packet by packet.
//!
//! - CONNECT from the link's settings ([`ClientConnect::packet`]);
//! - the remote's CONNACK checked into what the link may do
//!   ([`check_connack`] -> [`Negotiated`]: window, Maximum QoS, retain,
//!   Maximum Packet Size, Topic Alias Maximum, keep alive, session present),
//!   or a refusal / protocol error in words ([`ConnackError`]);
//! - the outbound window over the session's buffer (`Session::take_outgoing`
//!   and `Session::withdraw` in session/outbound.rs, shared with the server
//!   side, lowering QoS to the remote's Maximum QoS), and the remote's acks
//!   ([`Session::remote_ack`], over the same `puback` / `pubrec` / `pubcomp`
//!   transitions the server side applies to its clients' acks);
//! - the keep-alive of the client ([`keep_alive`]: PINGREQ when nothing was
//!   written for the keep alive, the link lost when no answer comes within it).

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use midge_protocol::{reason, Ack, ConnAck, Connect, Packet, Properties, QoS, Version};

pub use super::outbound::Outgoing;
use super::{Delivery, Session};

/// What the client's CONNECT says (a bridge's settings, and this broker's
/// own limits for what the remote sends it).
#[derive(Debug, Clone)]
pub struct ClientConnect<'a> {
    pub version: Version,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub keep_alive: u16,
    pub clean_start: bool,
    /// 5.0 only (3.1.1 keeps the session while `clean_start` is false).
    pub session_expiry: u32,
    /// Most messages in flight to the remote (before its Receive Maximum).
    pub max_inflight: u16,
    /// Our Receive Maximum and Maximum Packet Size (5.0 CONNECT properties).
    pub receive_maximum: u16,
    pub max_packet_size: u32,
}

impl ClientConnect<'_> {
    /// The CONNECT packet. No will; no topic aliases from the remote (no
    /// Topic Alias Maximum: it may use none).
    pub fn packet(&self) -> Connect {
        let mut properties = Properties::default();
        if self.version == Version::V5 {
            properties.session_expiry_interval = Some(self.session_expiry);
            properties.receive_maximum = Some(self.receive_maximum);
            properties.maximum_packet_size = Some(self.max_packet_size);
        }
        Connect {
            version: self.version,
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            properties,
            client_id: self.client_id.into(),
            will: None,
            username: self.username.map(Into::into),
            password: self.password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        }
    }
}

/// What the remote's CONNACK allows the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: Version,
    /// The remote kept our session (in-flight QoS 2 state, subscriptions).
    pub session_present: bool,
    /// Most QoS 1/2 messages in flight: `max_inflight`, lowered to the
    /// remote's Receive Maximum.
    pub window: usize,
    /// The remote's Maximum QoS (2 when it says none): more is a Protocol
    /// Error, so what goes out is lowered to it.
    pub max_qos: QoS,
    pub retain_available: bool,
    /// The remote's Maximum Packet Size (`usize::MAX`: none).
    pub max_packet_size: usize,
    /// Topic aliases the remote accepts from us (0: none).
    pub topic_alias_max: u16,
    /// Seconds; the remote's Server Keep Alive when it set one (0: none).
    pub keep_alive: u16,
}

/// Why the link cannot go on after CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnackError {
    /// The remote refused the connection (3.1.1 return code, 5.0 reason
    /// code, with the 5.0 Reason String when it sent one).
    Refused {
        version: Version,
        code: u8,
        reason_string: Option<String>,
    },
    /// The CONNACK breaks a rule of the protocol.
    Protocol(&'static str),
}

impl fmt::Display for ConnackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnackError::Refused {
                version,
                code,
                reason_string,
            } => {
                write!(
                    f,
                    "the remote refused the connection: {}",
                    connack_text(*version, *code)
                )?;
                if let Some(s) = reason_string {
                    write!(f, ": {s}")?;
                }
                Ok(())
            }
            ConnackError::Protocol(why) => write!(f, "protocol error in CONNACK: {why}"),
        }
    }
}

/// A CONNACK refusal in words (3.1.1 return codes and 5.0 reason codes).
pub fn connack_text(v: Version, code: u8) -> String {
    let text = match (v, code) {
        (Version::V311, 1) => "unacceptable protocol version",
        (Version::V311, 2) => "client id rejected",
        (Version::V311, 3) => "server unavailable",
        (Version::V311, 4) => "bad user name or password",
        (Version::V311, 5) => "not authorized",
        (Version::V5, reason::UNSPECIFIED_ERROR) => "unspecified error",
        (Version::V5, reason::MALFORMED_PACKET) => "malformed packet",
        (Version::V5, reason::PROTOCOL_ERROR) => "protocol error",
        (Version::V5, reason::IMPLEMENTATION_SPECIFIC_ERROR) => "implementation specific error",
        (Version::V5, reason::UNSUPPORTED_PROTOCOL_VERSION) => "unsupported protocol version",
        (Version::V5, reason::CLIENT_IDENTIFIER_NOT_VALID) => "client id not valid",
        (Version::V5, reason::BAD_USER_NAME_OR_PASSWORD) => "bad user name or password",
        (Version::V5, reason::NOT_AUTHORIZED) => "not authorized",
        (Version::V5, reason::SERVER_UNAVAILABLE) => "server unavailable",
        (Version::V5, reason::SERVER_BUSY) => "server busy",
        (Version::V5, reason::BANNED) => "banned",
        (Version::V5, reason::BAD_AUTHENTICATION_METHOD) => "bad authentication method",
        (Version::V5, reason::TOPIC_NAME_INVALID) => "topic name invalid",
        (Version::V5, reason::PACKET_TOO_LARGE) => "packet too large",
        (Version::V5, reason::QUOTA_EXCEEDED) => "quota exceeded",
        (Version::V5, reason::PAYLOAD_FORMAT_INVALID) => "payload format invalid",
        (Version::V5, reason::RETAIN_NOT_SUPPORTED) => "retain not supported",
        (Version::V5, reason::QOS_NOT_SUPPORTED) => "QoS not supported",
        (Version::V5, reason::USE_ANOTHER_SERVER) => "use another server",
        (Version::V5, reason::SERVER_MOVED) => "server moved",
        (Version::V5, reason::CONNECTION_RATE_EXCEEDED) => "connection rate exceeded",
        _ => "refused",
    };
    let kind = if v == Version::V311 {
        "return code"
    } else {
        "reason code"
    };
    format!("CONNACK {kind} {code:#04x} ({text})")
}

/// Did a 3.1.1-only remote answer our 5.0 CONNECT with the 3.1.1 refusal
/// "unacceptable protocol version" (which does not decode as 5.0)? `read`:
/// the bytes read so far.
pub fn v311_refusal_of_v5(read: &[u8]) -> bool {
    read.len() >= 4 && read[..4] == [0x20, 0x02, 0x00, 0x01]
}

/// The remote's CONNACK to `c`: what the link may do, or why it cannot go on.
pub fn check_connack(c: &ClientConnect<'_>, ack: &ConnAck) -> Result<Negotiated, ConnackError> {
    let v = c.version;
    let failed = match v {
        Version::V311 => ack.code != 0,
        Version::V5 => ack.code >= 0x80,
    };
    if failed {
        if ack.session_present {
            // MQTT-3.2.2-6 (3.1.1: 3.2.2-4): a refusal has Session Present 0.
            return Err(ConnackError::Protocol(
                "a refusing CONNACK with Session Present set",
            ));
        }
        return Err(ConnackError::Refused {
            version: v,
            code: ack.code,
            reason_string: ack.properties.reason_string.as_ref().map(|s| s.to_string()),
        });
    }
    if v == Version::V5 && ack.code != reason::SUCCESS {
        return Err(ConnackError::Protocol(
            "a reason code below 0x80 other than Success",
        ));
    }
    if c.clean_start && ack.session_present {
        // MQTT-3.2.2-2: a new session is never "present"; a client that has
        // no session state there closes the connection (MQTT-3.2.2-4 in 5.0).
        return Err(ConnackError::Protocol(
            "Session Present set after a CONNECT with Clean Start",
        ));
    }
    let p = &ack.properties;
    // The codec refuses these when it decodes; a CONNACK built otherwise
    // gets the same answer here.
    if p.receive_maximum == Some(0) {
        return Err(ConnackError::Protocol("Receive Maximum 0"));
    }
    if p.maximum_packet_size == Some(0) {
        return Err(ConnackError::Protocol("Maximum Packet Size 0"));
    }
    let max_qos = match p.maximum_qos {
        None => QoS::ExactlyOnce,
        Some(0) => QoS::AtMostOnce,
        Some(1) => QoS::AtLeastOnce,
        Some(_) => return Err(ConnackError::Protocol("Maximum QoS other than 0 or 1")),
    };
    Ok(Negotiated {
        version: v,
        session_present: ack.session_present,
        window: usize::from(c.max_inflight.max(1))
            .min(usize::from(p.receive_maximum.unwrap_or(u16::MAX))),
        max_qos,
        retain_available: p.retain_available != Some(0),
        max_packet_size: p.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
        topic_alias_max: p.topic_alias_maximum.unwrap_or(0),
        keep_alive: p.server_keep_alive.unwrap_or(c.keep_alive),
    })
}

/// What the remote's acknowledgement did.
#[derive(Debug, Default)]
pub struct RemoteAck {
    /// The packet to answer with (PUBREL for PUBREC) once `ticket` is durable.
    pub reply: Option<Packet>,
    /// The store ticket the reply waits for (0: none).
    pub ticket: u64,
    /// The delivery the remote is done with (PUBACK, PUBCOMP, or a PUBACK /
    /// PUBREC refusing it) and the reason code it gave.
    pub done: Option<(Delivery, u8)>,
}

impl Session {
    /// The remote's PUBACK, PUBREC or PUBCOMP (`None` for any other
    /// packet), through the same window transitions as a client's acks
    /// (`Session::puback` / `pubrec` / `pubcomp`): PUBACK and PUBCOMP end
    /// the delivery; PUBREC releases it (PUBREL once the stage `Released`
    /// is durable), or ends it when it refuses the message; a PUBREC for an
    /// id not in flight is answered PUBREL 0x92. A PUBCOMP 0x92 (the remote
    /// lost its session) ends the delivery as well: there is nothing to
    /// resend it to.
    pub fn remote_ack(&self, p: &Packet) -> Option<RemoteAck> {
        Some(match p {
            Packet::PubAck(a) => RemoteAck {
                done: self.puback(a.packet_id).map(|d| (d, a.reason)),
                ..RemoteAck::default()
            },
            Packet::PubRec(a) => {
                let refused = if a.reason >= 0x80 {
                    let st = self.state.lock();
                    st.find_inflight(a.packet_id)
                        .map(|i| st.inflight[i].delivery.clone())
                } else {
                    None
                };
                match self.pubrec(a.packet_id, a.reason) {
                    Some((code, ticket)) => RemoteAck {
                        reply: Some(Packet::PubRel(Ack::new(a.packet_id, code))),
                        ticket,
                        done: None,
                    },
                    None => RemoteAck {
                        done: refused.map(|d| (d, a.reason)),
                        ..RemoteAck::default()
                    },
                }
            }
            Packet::PubComp(a) => RemoteAck {
                done: self.pubcomp(a.packet_id).map(|d| (d, reason::SUCCESS)),
                ..RemoteAck::default()
            },
            _ => return None,
        })
    }
}

/// What the client's keep-alive timer does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveStep {
    /// Nothing yet: look again at this time.
    Wait(Instant),
    /// Nothing was written for the keep alive: send PINGREQ now.
    Ping,
    /// A PINGREQ went unanswered (nothing read) for the keep alive: the
    /// link is lost.
    Lost,
}

/// The client's keep-alive at `now` (MQTT 3.1.2.10: a client sends
/// something at least every keep alive; we wait one keep alive for the
/// answer to PINGREQ). `last_write`: when we last wrote; `ping_sent`: the
/// PINGREQ awaiting an answer (cleared by anything read). `None`: no keep
/// alive (0).
pub fn keep_alive(
    keep_alive: Duration,
    now: Instant,
    last_write: Instant,
    ping_sent: Option<Instant>,
) -> Option<KeepAliveStep> {
    if keep_alive.is_zero() {
        return None;
    }
    Some(match ping_sent {
        Some(at) if now.duration_since(at) >= keep_alive => KeepAliveStep::Lost,
        Some(at) => KeepAliveStep::Wait(at + keep_alive),
        None if now.duration_since(last_write) >= keep_alive => KeepAliveStep::Ping,
        None => KeepAliveStep::Wait(last_write + keep_alive),
    })
}

#[cfg(test)]
mod tests {
    // The client role driven as quinn-proto's tests drive a connection:
    // the remote's packets and clock ticks in, our packets out, no
    // sockets. `Link` below is the few lines of glue bridge/outbound.rs
    // and bridge/link.rs put around these functions.

    use midge_protocol::{ByteStr, Publish};

    use super::*;
    use crate::session::harness;
    use crate::session::Stage;

    fn connect(version: Version) -> ClientConnect<'static> {
        ClientConnect {
            version,
            client_id: "edge-1",
            username: Some("u"),
            password: Some("p"),
            keep_alive: 30,
            clean_start: false,
            session_expiry: 3600,
            max_inflight: 8,
            receive_maximum: 100,
            max_packet_size: 1 << 20,
        }
    }

    fn connack(code: u8, session_present: bool) -> ConnAck {
        ConnAck {
            session_present,
            code,
            properties: Properties::default(),
        }
    }

    fn refused(version: Version, code: u8) -> ConnackError {
        ConnackError::Refused {
            version,
            code,
            reason_string: None,
        }
    }

    #[test]
    fn connect_carries_the_settings_and_5_0_our_limits() {
        let c = connect(Version::V5).packet();
        assert_eq!(
            (c.version, c.keep_alive, c.clean_start),
            (Version::V5, 30, false)
        );
        assert_eq!(&*c.client_id, "edge-1");
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
        assert!(c.will.is_none());
        let p = &c.properties;
        assert_eq!(p.session_expiry_interval, Some(3600));
        assert_eq!(p.receive_maximum, Some(100));
        assert_eq!(p.maximum_packet_size, Some(1 << 20));
        assert_eq!(p.topic_alias_maximum, None, "the remote may use no alias");
        let c = connect(Version::V311).packet();
        assert_eq!(c.version, Version::V311);
        assert!(
            c.properties.session_expiry_interval.is_none()
                && c.properties.receive_maximum.is_none()
                && c.properties.maximum_packet_size.is_none(),
            "3.1.1 has no properties"
        );
    }

    #[test]
    fn connack_without_properties_leaves_our_own_limits() {
        let n = check_connack(&connect(Version::V5), &connack(0, true)).unwrap();
        assert_eq!(
            n,
            Negotiated {
                version: Version::V5,
                session_present: true,
                window: 8,
                max_qos: QoS::ExactlyOnce,
                retain_available: true,
                max_packet_size: usize::MAX,
                topic_alias_max: 0,
                keep_alive: 30,
            }
        );
        let n = check_connack(&connect(Version::V311), &connack(0, false)).unwrap();
        assert_eq!((n.window, n.session_present, n.keep_alive), (8, false, 30));
    }

    #[test]
    fn connack_properties_narrow_what_the_link_may_do() {
        let mut ack = connack(0, false);
        let p = &mut ack.properties;
        p.receive_maximum = Some(3);
        p.maximum_qos = Some(1);
        p.retain_available = Some(0);
        p.maximum_packet_size = Some(512);
        p.topic_alias_maximum = Some(10);
        p.server_keep_alive = Some(5);
        let n = check_connack(&connect(Version::V5), &ack).unwrap();
        assert_eq!(
            n.window, 3,
            "the remote's Receive Maximum is below max_inflight"
        );
        assert_eq!(n.max_qos, QoS::AtLeastOnce);
        assert!(!n.retain_available);
        assert_eq!(n.max_packet_size, 512);
        assert_eq!(n.topic_alias_max, 10);
        assert_eq!(n.keep_alive, 5, "the Server Keep Alive wins");
        ack.properties.receive_maximum = Some(1000);
        ack.properties.maximum_qos = Some(0);
        let n = check_connack(&connect(Version::V5), &ack).unwrap();
        assert_eq!(
            n.window, 8,
            "max_inflight is below the remote's Receive Maximum"
        );
        assert_eq!(n.max_qos, QoS::AtMostOnce);
    }

    #[test]
    fn a_refusal_is_put_in_words_for_either_version() {
        let e = check_connack(&connect(Version::V311), &connack(5, false)).unwrap_err();
        assert_eq!(e, refused(Version::V311, 5));
        assert_eq!(
            e.to_string(),
            "the remote refused the connection: CONNACK return code 0x05 (not authorized)"
        );
        let mut ack = connack(reason::BAD_USER_NAME_OR_PASSWORD, false);
        ack.properties.reason_string = Some(ByteStr::from("try again"));
        let e = check_connack(&connect(Version::V5), &ack).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the remote refused the connection: CONNACK reason code 0x86 \
             (bad user name or password): try again"
        );
        assert_eq!(
            connack_text(Version::V5, reason::QUOTA_EXCEEDED),
            "CONNACK reason code 0x97 (quota exceeded)"
        );
        assert_eq!(
            connack_text(Version::V311, 9),
            "CONNACK return code 0x09 (refused)"
        );
    }

    #[test]
    fn a_connack_breaking_the_protocol_is_an_error_not_a_link() {
        let protocol = |c: &ClientConnect<'_>, ack: ConnAck| match check_connack(c, &ack) {
            Err(ConnackError::Protocol(why)) => why,
            other => panic!("{other:?}"),
        };
        let v5 = connect(Version::V5);
        let clean = ClientConnect {
            clean_start: true,
            ..connect(Version::V5)
        };
        assert!(protocol(&clean, connack(0, true)).contains("Clean Start"));
        assert!(check_connack(&clean, &connack(0, false)).is_ok());
        assert!(protocol(&v5, connack(0x87, true)).contains("Session Present"));
        assert!(protocol(&v5, connack(0x10, false)).contains("below 0x80"));
        let mut ack = connack(0, false);
        ack.properties.receive_maximum = Some(0);
        assert!(protocol(&v5, ack).contains("Receive Maximum"));
        let mut ack = connack(0, false);
        ack.properties.maximum_packet_size = Some(0);
        assert!(protocol(&v5, ack).contains("Maximum Packet Size"));
        let mut ack = connack(0, false);
        ack.properties.maximum_qos = Some(2);
        assert!(protocol(&v5, ack).contains("Maximum QoS"));
    }

    #[test]
    fn a_311_refusal_of_a_5_0_connect_is_recognised() {
        assert!(v311_refusal_of_v5(&[0x20, 0x02, 0x00, 0x01]));
        assert!(!v311_refusal_of_v5(&[0x20, 0x02, 0x00]), "not all read yet");
        assert!(
            !v311_refusal_of_v5(&[0x20, 0x03, 0x00, 0x00, 0x00]),
            "a 5.0 CONNACK"
        );
    }

    #[test]
    fn keep_alive_pings_when_idle_and_loses_the_link_without_an_answer() {
        let t0 = Instant::now();
        let ka = Duration::from_secs(10);
        let s = |n: u64| t0 + Duration::from_secs(n);
        assert_eq!(keep_alive(Duration::ZERO, s(100), t0, None), None);
        assert_eq!(
            keep_alive(ka, s(3), t0, None),
            Some(KeepAliveStep::Wait(s(10)))
        );
        assert_eq!(keep_alive(ka, s(10), t0, None), Some(KeepAliveStep::Ping));
        // Written at 8: the next ping is due at 18.
        assert_eq!(
            keep_alive(ka, s(12), s(8), None),
            Some(KeepAliveStep::Wait(s(18)))
        );
        // PINGREQ at 18, nothing read since.
        assert_eq!(
            keep_alive(ka, s(20), s(18), Some(s(18))),
            Some(KeepAliveStep::Wait(s(28)))
        );
        assert_eq!(
            keep_alive(ka, s(28), s(18), Some(s(18))),
            Some(KeepAliveStep::Lost)
        );
    }

    // ---- the outbound window, driven packet by packet

    /// A bridge session and the link's glue: deliveries queued by "the
    /// router", taken into the window, turned into packets; the remote's
    /// acks in, our answers out.
    struct Link {
        session: Session,
        window: usize,
        max_qos: QoS,
        batch: usize,
        /// Deliveries the remote is done with, and the reason it gave.
        done: Vec<(String, u8)>,
    }

    impl Link {
        fn new(n: &Negotiated) -> Link {
            let session = Session::new("$bridge/b".into(), 0, None);
            session.state.lock().resend = true; // as attaching the link does
            Link {
                session,
                window: n.window,
                max_qos: n.max_qos,
                batch: 512,
                done: Vec::new(),
            }
        }

        fn queue(&self, qos: QoS, topic: &str) {
            let d = harness::delivery(qos, topic, 0);
            let mut st = self.session.state.lock();
            st.queued_bytes += d.msg.payload.len();
            st.queue.push_back(d);
        }

        /// What goes out now, as packets.
        fn send(&mut self) -> Vec<Packet> {
            let mut items = Vec::new();
            let ticket =
                self.session
                    .take_outgoing(self.window, self.max_qos, self.batch, &mut items);
            assert_eq!(ticket, 0, "no store here");
            items
                .into_iter()
                .map(|i| match i {
                    Outgoing::Publish {
                        packet_id,
                        dup,
                        delivery,
                    } => Packet::Publish(Publish {
                        dup,
                        qos: delivery.qos,
                        retain: false,
                        topic: delivery.msg.topic.clone(),
                        packet_id,
                        properties: Properties::default(),
                        payload: delivery.msg.payload.clone(),
                    }),
                    Outgoing::Release(id) => Packet::PubRel(Ack::new(id, 0)),
                })
                .collect()
        }

        /// A packet from the remote; our answer.
        fn recv(&mut self, p: Packet) -> Vec<Packet> {
            let a = self.session.remote_ack(&p).expect("an ack");
            assert_eq!(a.ticket, 0, "no store here");
            if let Some((d, code)) = a.done {
                self.done.push((d.msg.topic.to_string(), code));
            }
            a.reply.into_iter().collect()
        }

        fn inflight(&self) -> Vec<(u16, Stage)> {
            let st = self.session.state.lock();
            st.inflight.iter().map(|i| (i.packet_id, i.stage)).collect()
        }

        fn queued(&self) -> usize {
            self.session.state.lock().queue.len()
        }

        /// The link ends and a new one comes up.
        fn reconnect(&mut self) {
            self.session.state.lock().resend = true;
        }
    }

    fn negotiated(window: usize, max_qos: QoS) -> Negotiated {
        Negotiated {
            version: Version::V5,
            session_present: false,
            window,
            max_qos,
            retain_available: true,
            max_packet_size: usize::MAX,
            topic_alias_max: 0,
            keep_alive: 0,
        }
    }

    /// (packet kind, packet id, topic or "", dup, qos) of what went out.
    fn sent(out: &[Packet]) -> Vec<(&'static str, u16, String, bool, u8)> {
        out.iter()
            .map(|p| match p {
                Packet::Publish(p) => (
                    "PUBLISH",
                    p.packet_id,
                    p.topic.to_string(),
                    p.dup,
                    p.qos as u8,
                ),
                Packet::PubRel(a) => ("PUBREL", a.packet_id, String::new(), false, a.reason),
                other => (other.name(), 0, String::new(), false, 0),
            })
            .collect()
    }

    fn puback(id: u16, code: u8) -> Packet {
        Packet::PubAck(Ack::new(id, code))
    }
    fn pubrec(id: u16, code: u8) -> Packet {
        Packet::PubRec(Ack::new(id, code))
    }
    fn pubcomp(id: u16, code: u8) -> Packet {
        Packet::PubComp(Ack::new(id, code))
    }

    #[test]
    fn the_window_holds_back_qos1_and_2_but_never_qos0() {
        let mut l = Link::new(&negotiated(2, QoS::ExactlyOnce));
        l.queue(QoS::AtLeastOnce, "a");
        l.queue(QoS::ExactlyOnce, "b");
        l.queue(QoS::AtLeastOnce, "c");
        assert_eq!(
            sent(&l.send()),
            [
                ("PUBLISH", 1, "a".into(), false, 1),
                ("PUBLISH", 2, "b".into(), false, 2)
            ]
        );
        assert_eq!(l.queued(), 1, "c waits for room in the window");
        assert!(l.send().is_empty(), "still full");
        // QoS 0 behind a QoS 1 message waiting for room waits too: the
        // queue's order is kept.
        l.queue(QoS::AtMostOnce, "d");
        assert!(l.send().is_empty());
        assert_eq!(l.recv(puback(1, 0)), []);
        assert_eq!(
            sent(&l.send()),
            [
                ("PUBLISH", 3, "c".into(), false, 1),
                ("PUBLISH", 0, "d".into(), false, 0)
            ],
            "room for one more; QoS 0 needs none"
        );
        assert_eq!(l.done, [("a".to_string(), 0)]);
    }

    #[test]
    fn qos2_goes_publish_pubrec_pubrel_pubcomp() {
        let mut l = Link::new(&negotiated(8, QoS::ExactlyOnce));
        l.queue(QoS::ExactlyOnce, "q2");
        assert_eq!(sent(&l.send()), [("PUBLISH", 1, "q2".into(), false, 2)]);
        // Acks that do not fit the stage are ignored.
        assert_eq!(l.recv(puback(1, 0)), []);
        assert_eq!(l.recv(pubcomp(1, 0)), [], "PUBCOMP before PUBREC");
        assert_eq!(l.inflight(), [(1, Stage::Published)]);
        assert_eq!(l.recv(pubrec(1, 0)), [Packet::PubRel(Ack::new(1, 0))]);
        assert_eq!(l.inflight(), [(1, Stage::Released)]);
        // A repeated PUBREC gets its PUBREL again.
        assert_eq!(l.recv(pubrec(1, 0)), [Packet::PubRel(Ack::new(1, 0))]);
        assert!(l.done.is_empty());
        assert_eq!(l.recv(pubcomp(1, 0)), []);
        assert!(l.inflight().is_empty());
        assert_eq!(l.done, [("q2".to_string(), 0)]);
        l.queue(QoS::ExactlyOnce, "again");
        assert_eq!(sent(&l.send()), [("PUBLISH", 2, "again".into(), false, 2)]);
    }

    #[test]
    fn unknown_ids_and_refusals() {
        let mut l = Link::new(&negotiated(8, QoS::ExactlyOnce));
        l.queue(QoS::AtLeastOnce, "one");
        l.queue(QoS::ExactlyOnce, "two");
        l.queue(QoS::ExactlyOnce, "three");
        l.send();
        // PUBREC for an id not in flight (or a QoS 1 one): PUBREL 0x92.
        assert_eq!(
            l.recv(pubrec(9, 0)),
            [Packet::PubRel(Ack::new(
                9,
                reason::PACKET_IDENTIFIER_NOT_FOUND
            ))]
        );
        assert_eq!(
            l.recv(pubrec(1, 0)),
            [Packet::PubRel(Ack::new(
                1,
                reason::PACKET_IDENTIFIER_NOT_FOUND
            ))]
        );
        assert_eq!(
            l.recv(puback(9, 0)),
            [],
            "PUBACK for an unknown id: ignored"
        );
        assert_eq!(l.recv(pubcomp(9, 0)), []);
        // The remote refuses the QoS 1 message and one QoS 2 message: done,
        // with their reason codes, and no PUBREL.
        assert_eq!(l.recv(puback(1, reason::NOT_AUTHORIZED)), []);
        assert_eq!(l.recv(pubrec(2, reason::QUOTA_EXCEEDED)), []);
        assert_eq!(
            l.done,
            [
                ("one".to_string(), reason::NOT_AUTHORIZED),
                ("two".to_string(), reason::QUOTA_EXCEEDED)
            ]
        );
        assert_eq!(l.inflight(), [(3, Stage::Published)]);
        // After PUBREC, a PUBCOMP 0x92 (the remote lost its session) ends it.
        l.recv(pubrec(3, 0));
        assert_eq!(l.recv(pubcomp(3, reason::PACKET_IDENTIFIER_NOT_FOUND)), []);
        assert!(l.inflight().is_empty());
        assert_eq!(l.done.len(), 3);
    }

    #[test]
    fn a_reconnect_resends_what_is_in_flight_first_with_dup_or_pubrel() {
        let mut l = Link::new(&negotiated(8, QoS::ExactlyOnce));
        l.queue(QoS::AtLeastOnce, "a");
        l.queue(QoS::ExactlyOnce, "b");
        l.queue(QoS::ExactlyOnce, "c");
        l.send();
        l.recv(pubrec(2, 0)); // b released, PUBCOMP lost with the link
        l.reconnect();
        l.queue(QoS::AtLeastOnce, "d");
        assert_eq!(
            sent(&l.send()),
            [
                ("PUBLISH", 1, "a".into(), true, 1),
                ("PUBREL", 2, String::new(), false, 0),
                ("PUBLISH", 3, "c".into(), true, 2),
                ("PUBLISH", 4, "d".into(), false, 1),
            ]
        );
        assert!(l.send().is_empty(), "resent once per link");
    }

    #[test]
    fn the_remotes_maximum_qos_lowers_what_goes_out() {
        let mut l = Link::new(&negotiated(8, QoS::AtMostOnce));
        l.queue(QoS::ExactlyOnce, "x");
        l.queue(QoS::AtLeastOnce, "y");
        assert_eq!(
            sent(&l.send()),
            [
                ("PUBLISH", 0, "x".into(), false, 0),
                ("PUBLISH", 0, "y".into(), false, 0)
            ]
        );
        assert!(l.inflight().is_empty(), "QoS 0 is never in the window");
        let mut l = Link::new(&negotiated(8, QoS::AtLeastOnce));
        l.queue(QoS::ExactlyOnce, "x");
        assert_eq!(sent(&l.send()), [("PUBLISH", 1, "x".into(), false, 1)]);
        assert_eq!(l.recv(puback(1, 0)), []);
        assert_eq!(l.done, [("x".to_string(), 0)]);
    }

    #[test]
    fn a_batch_stops_at_its_size_and_withdrawn_messages_free_their_ids() {
        let mut l = Link::new(&negotiated(8, QoS::ExactlyOnce));
        l.batch = 2;
        for t in ["a", "b", "c"] {
            l.queue(QoS::AtLeastOnce, t);
        }
        assert_eq!(l.send().len(), 2);
        assert_eq!(l.queued(), 1);
        // The link could not send b (say, too large for the remote).
        l.session.withdraw(&[2]);
        assert_eq!(l.inflight(), [(1, Stage::Published)]);
        assert_eq!(sent(&l.send()), [("PUBLISH", 3, "c".into(), false, 1)]);
        assert_eq!(l.recv(puback(3, 0)), []);
        assert_eq!(l.done, [("c".to_string(), 0)]);
    }

    #[test]
    fn connack_then_window_end_to_end() {
        // The remote allows 2 in flight and QoS 1: five QoS 2 messages go
        // two at a time as QoS 1, each PUBACK letting the next one out.
        let mut ack = connack(0, false);
        ack.properties.receive_maximum = Some(2);
        ack.properties.maximum_qos = Some(1);
        let n = check_connack(&connect(Version::V5), &ack).unwrap();
        let mut l = Link::new(&n);
        for i in 0..5 {
            l.queue(QoS::ExactlyOnce, &format!("t/{i}"));
        }
        let mut got = Vec::new();
        for _ in 0..10 {
            let out = l.send();
            if out.is_empty() && l.inflight().is_empty() {
                break;
            }
            assert!(l.inflight().len() <= 2, "the remote's Receive Maximum");
            for p in out {
                let Packet::Publish(p) = p else {
                    panic!("{p:?}")
                };
                assert_eq!(p.qos, QoS::AtLeastOnce);
                got.push(p.topic.to_string());
                l.recv(puback(p.packet_id, 0));
            }
        }
        assert_eq!(
            got,
            ["t/0", "t/1", "t/2", "t/3", "t/4"],
            "in order, each once"
        );
        assert_eq!(l.done.len(), 5);
    }
}
