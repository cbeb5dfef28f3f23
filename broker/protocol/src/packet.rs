//! The packet enum and the top-level decode / encode entry points.

use bytes::{Buf, BytesMut};

use crate::codec::{self, put_fixed_header, Reader};
use crate::{pingreq, pingresp};
use crate::{puback, pubcomp, pubrec, pubrel};
use crate::{
    Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, Publish, SubAck, Subscribe, UnsubAck,
    Unsubscribe, Version,
};

/// Any of the 15 MQTT control packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet's name as the specification writes it (`"PUBLISH"`), for
    /// logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Decodes one packet from the front of `buf`, advancing it past the packet.
///
/// - `Ok(None)`: more bytes are needed; `buf` is untouched.
/// - `version`: `None` before CONNECT has been received; then only CONNECT
///   is accepted (anything else is a protocol error). A CONNECT is decoded
///   in the version its protocol level announces, whatever `version` says.
/// - `max_size`: the largest whole packet (fixed header included) accepted;
///   a larger one is rejected as soon as its fixed header is readable.
///
/// The packet is split off `buf` as one `Bytes`; strings, topics, payloads
/// and binary properties of the result are slices of it (zero copy). On
/// error `buf` may have been advanced; the connection must be closed.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let kind = first >> 4;
    let flags = first & 0x0f;
    check_first_byte(kind, flags, version)?;
    let Some((remaining, len_len)) = codec::parse_remaining_length(buf.get(1..).unwrap_or(&[]))?
    else {
        return Ok(None);
    };
    let total = 1 + len_len + remaining;
    if total > max_size {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut bytes = buf.split_to(total).freeze();
    bytes.advance(1 + len_len);
    let r = Reader::new(bytes);
    let Some(version) = version else {
        // check_first_byte only lets CONNECT through.
        return Ok(Some(Packet::Connect(Box::new(Connect::decode(r)?))));
    };
    let packet = match kind {
        CONNECT => Packet::Connect(Box::new(Connect::decode(r)?)),
        CONNACK => Packet::ConnAck(ConnAck::decode(r, version)?),
        PUBLISH => Packet::Publish(Publish::decode(r, flags, version)?),
        PUBACK => Packet::PubAck(puback::decode(r, version)?),
        PUBREC => Packet::PubRec(pubrec::decode(r, version)?),
        PUBREL => Packet::PubRel(pubrel::decode(r, version)?),
        PUBCOMP => Packet::PubComp(pubcomp::decode(r, version)?),
        SUBSCRIBE => Packet::Subscribe(Subscribe::decode(r, version)?),
        SUBACK => Packet::SubAck(SubAck::decode(r, version)?),
        UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
        UNSUBACK => Packet::UnsubAck(UnsubAck::decode(r, version)?),
        PINGREQ => {
            pingreq::decode(r)?;
            Packet::PingReq
        }
        PINGRESP => {
            pingresp::decode(r)?;
            Packet::PingResp
        }
        DISCONNECT => Packet::Disconnect(Disconnect::decode(r, version)?),
        AUTH => Packet::Auth(Auth::decode(r)?),
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    Ok(Some(packet))
}

// Packet type numbers (high nibble of the first byte).
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Checks the packet type and its fixed-header flags as soon as the first
/// byte is there, before the rest of the packet is buffered.
fn check_first_byte(kind: u8, flags: u8, version: Option<Version>) -> Result<(), DecodeError> {
    if kind == 0 {
        return Err(DecodeError::Malformed("reserved packet type 0"));
    }
    if version.is_none() && kind != CONNECT {
        return Err(DecodeError::Protocol("first packet is not CONNECT"));
    }
    if kind == AUTH && version == Some(Version::V311) {
        return Err(DecodeError::Malformed("AUTH does not exist in MQTT 3.1.1"));
    }
    let flags_ok = match kind {
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::Malformed("PUBLISH QoS 0 with DUP set"));
            }
            true
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => flags == 0b0010,
        _ => flags == 0,
    };
    if flags_ok {
        Ok(())
    } else {
        Err(DecodeError::Malformed("reserved fixed header flags"))
    }
}

/// Appends the encoding of `packet` for `version` to `out`.
///
/// A CONNECT is encoded in the version of its `version` field (it is what
/// announces the version). AUTH only exists in 5.0 and is always encoded in
/// its 5.0 form. Fields a 3.1.1 packet cannot carry (properties, ack reason
/// codes, UNSUBACK codes, subscription options other than QoS) are dropped.
/// Encoding does not validate: a packet that breaks the spec (say, a topic
/// longer than 65535 bytes) is written as given, or truncated.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) {
    if let Packet::Publish(p) = packet {
        out.reserve(encoded_len(packet, version));
        p.encode_header(version, out);
        out.extend_from_slice(&p.payload);
        return;
    }
    let remaining = remaining_len(packet, version);
    put_fixed_header(out, first_byte(packet), remaining);
    match packet {
        Packet::Connect(c) => c.encode_body(out),
        Packet::ConnAck(c) => c.encode_body(version, out),
        Packet::Publish(_) => {}
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            puback::encode_ack_body(a, version, out)
        }
        Packet::Subscribe(s) => s.encode_body(version, out),
        Packet::SubAck(s) => s.encode_body(version, out),
        Packet::Unsubscribe(u) => u.encode_body(version, out),
        Packet::UnsubAck(u) => u.encode_body(version, out),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => d.encode_body(version, out),
        Packet::Auth(a) => a.encode_body(out),
    }
}

/// Length in bytes of `encode(packet, version, ..)`, fixed header included.
pub fn encoded_len(packet: &Packet, version: Version) -> usize {
    let remaining = remaining_len(packet, version);
    1 + codec::varint_len(remaining) + remaining
}

/// First byte of the fixed header.
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => CONNECT << 4,
        Packet::ConnAck(_) => CONNACK << 4,
        Packet::Publish(p) => p.first_byte(),
        Packet::PubAck(_) => PUBACK << 4,
        Packet::PubRec(_) => PUBREC << 4,
        Packet::PubRel(_) => PUBREL << 4 | 0b0010,
        Packet::PubComp(_) => PUBCOMP << 4,
        Packet::Subscribe(_) => SUBSCRIBE << 4 | 0b0010,
        Packet::SubAck(_) => SUBACK << 4,
        Packet::Unsubscribe(_) => UNSUBSCRIBE << 4 | 0b0010,
        Packet::UnsubAck(_) => UNSUBACK << 4,
        Packet::PingReq => PINGREQ << 4,
        Packet::PingResp => PINGRESP << 4,
        Packet::Disconnect(_) => DISCONNECT << 4,
        Packet::Auth(_) => AUTH << 4,
    }
}

/// The remaining length `encode` writes for `packet`.
fn remaining_len(packet: &Packet, version: Version) -> usize {
    match packet {
        Packet::Connect(c) => c.remaining_len(),
        Packet::ConnAck(c) => c.remaining_len(version),
        Packet::Publish(p) => p.remaining_len(version),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            puback::ack_remaining_len(a, version)
        }
        Packet::Subscribe(s) => s.remaining_len(version),
        Packet::SubAck(s) => s.remaining_len(version),
        Packet::Unsubscribe(u) => u.remaining_len(version),
        Packet::UnsubAck(u) => u.remaining_len(version),
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => d.remaining_len(version),
        Packet::Auth(a) => a.remaining_len(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::testutil::{decode_all, decode_err, roundtrip, MAX};
    use crate::{ByteStr, Properties, QoS, SubOptions, Will};

    use super::*;

    #[test]
    fn empty_buffer_needs_more() {
        let mut buf = BytesMut::new();
        for v in [None, Some(Version::V311), Some(Version::V5)] {
            assert_eq!(decode(&mut buf, v, MAX), Ok(None));
        }
    }

    #[test]
    fn reserved_type_0() {
        assert!(matches!(
            decode_err(&[0x00, 0x00], Some(Version::V5)),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(&[0x00], None),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn only_connect_before_version() {
        for bytes in [
            &[0x20, 0x02, 0x00, 0x00][..],
            &[0x30, 0x03, 0x00, 0x01, b'a'],
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            &[0xe0, 0x00],
        ] {
            assert!(matches!(decode_err(bytes, None), DecodeError::Protocol(_)));
        }
    }

    #[test]
    fn remaining_length_errors() {
        // Five length bytes.
        assert!(matches!(
            decode_err(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], Some(Version::V5)),
            DecodeError::Malformed(_)
        ));
        // Non-minimal 0.
        assert!(matches!(
            decode_err(&[0xc0, 0x80, 0x00], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        // Non-minimal 2.
        assert!(matches!(
            decode_err(&[0x40, 0x82, 0x00, 0x00, 0x01], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn too_large_is_detected_from_the_fixed_header() {
        // PUBLISH announcing 2,097,151 bytes; only the fixed header is here.
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0x7f][..]);
        assert_eq!(
            decode(&mut buf, Some(Version::V5), 1024),
            Err(DecodeError::TooLarge {
                size: 2_097_155,
                max: 1024
            })
        );
        assert_eq!(
            DecodeError::TooLarge { size: 0, max: 0 }.reason_code(),
            crate::reason::PACKET_TOO_LARGE
        );
        // Before CONNECT too.
        let mut buf = BytesMut::from(&[0x10, 0xff, 0x01][..]);
        assert!(matches!(
            decode(&mut buf, None, 100),
            Err(DecodeError::TooLarge {
                size: 258,
                max: 100
            })
        ));
        // Exactly max_size is accepted, one less is not.
        let bytes = [0x30, 0x05, 0x00, 0x01, b'a', b'h', b'i'];
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(
            decode(&mut buf, Some(Version::V311), 7),
            Ok(Some(Packet::Publish(_)))
        ));
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(
            decode(&mut buf, Some(Version::V311), 6),
            Err(DecodeError::TooLarge { size: 7, max: 6 })
        ));
    }

    #[test]
    fn several_packets_in_one_buffer() {
        let mut buf = BytesMut::from(
            &[
                0xc0, 0x00, // PINGREQ
                0x30, 0x04, 0x00, 0x01, b'a', b'x', // PUBLISH
                0xe0, 0x00, // DISCONNECT
                0x40, // start of a PUBACK
            ][..],
        );
        let v = Some(Version::V311);
        assert_eq!(decode(&mut buf, v, MAX), Ok(Some(Packet::PingReq)));
        assert!(matches!(
            decode(&mut buf, v, MAX),
            Ok(Some(Packet::Publish(_)))
        ));
        assert!(matches!(
            decode(&mut buf, v, MAX),
            Ok(Some(Packet::Disconnect(_)))
        ));
        assert_eq!(decode(&mut buf, v, MAX), Ok(None));
        assert_eq!(&buf[..], &[0x40]);
        buf.extend_from_slice(&[0x02, 0x00, 0x09]);
        assert_eq!(
            decode(&mut buf, v, MAX),
            Ok(Some(Packet::PubAck(Ack::new(9, 0))))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn connect_decodes_on_established_stream() {
        let bytes = [
            0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01,
            b'c',
        ];
        assert!(matches!(
            decode_all(&bytes, Some(Version::V5)),
            Packet::Connect(_)
        ));
    }

    /// xorshift64*: deterministic pseudo-random numbers for the tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self) -> bool {
            self.next() & 1 == 1
        }
        fn u16(&mut self) -> u16 {
            self.next() as u16
        }
        fn nz16(&mut self) -> u16 {
            self.u16().max(1)
        }
        fn u32(&mut self) -> u32 {
            self.next() as u32
        }
        fn pick(&mut self, items: &[u8]) -> u8 {
            items[self.below(items.len() as u64) as usize]
        }
        fn qos(&mut self) -> QoS {
            QoS::from_u8(self.below(3) as u8).unwrap_or(QoS::AtMostOnce)
        }
        fn text(&mut self) -> ByteStr {
            const CHARS: &[&str] = &["a", "b", "/", "é", "日", "$", " ", "😀", "Z"];
            let n = self.below(12);
            let s: String = (0..n)
                .map(|_| CHARS[self.below(CHARS.len() as u64) as usize])
                .collect();
            ByteStr::from(s)
        }
        fn topic(&mut self) -> ByteStr {
            let t = self.text();
            if t.is_empty() {
                ByteStr::from("t")
            } else {
                t
            }
        }
        fn filter(&mut self) -> ByteStr {
            let base = self.topic();
            let s = match self.below(5) {
                0 => format!("{base}/#"),
                1 => format!("+/{base}"),
                2 => format!("$share/g/{base}/+"),
                3 => "#".to_string(),
                _ => base.to_string(),
            };
            ByteStr::from(s)
        }
        fn binary(&mut self) -> Bytes {
            let n = self.below(20);
            (0..n)
                .map(|_| self.next() as u8)
                .collect::<Vec<u8>>()
                .into()
        }
        fn maybe<T>(&mut self, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
            if self.chance() {
                Some(f(self))
            } else {
                None
            }
        }

        /// Random properties, all allowed in `ctx`.
        fn properties(&mut self, ctx: &str) -> Properties {
            let mut p = Properties::default();
            let user = self.below(3);
            for _ in 0..user {
                let kv = (self.text(), self.text());
                p.user_properties.push(kv);
            }
            match ctx {
                "publish" | "will" => {
                    p.payload_format_indicator = self.maybe(|r| r.below(2) as u8);
                    p.message_expiry_interval = self.maybe(Rng::u32);
                    p.content_type = self.maybe(Rng::text);
                    p.response_topic = self.maybe(Rng::topic);
                    p.correlation_data = self.maybe(Rng::binary);
                    if ctx == "publish" {
                        let n = self.below(3);
                        for _ in 0..n {
                            let id = (self.u32() % 268_435_455).max(1);
                            p.subscription_identifiers.push(id);
                        }
                        p.topic_alias = self.maybe(Rng::nz16);
                    } else {
                        p.will_delay_interval = self.maybe(Rng::u32);
                    }
                }
                "connect" | "connack" => {
                    p.session_expiry_interval = self.maybe(Rng::u32);
                    p.receive_maximum = self.maybe(Rng::nz16);
                    p.topic_alias_maximum = self.maybe(Rng::u16);
                    p.maximum_packet_size = self.maybe(|r| r.u32().max(1));
                    if self.chance() {
                        p.authentication_method = Some(self.text());
                        p.authentication_data = self.maybe(Rng::binary);
                    }
                    if ctx == "connect" {
                        p.request_problem_information = self.maybe(|r| r.below(2) as u8);
                        p.request_response_information = self.maybe(|r| r.below(2) as u8);
                    } else {
                        p.assigned_client_identifier = self.maybe(Rng::text);
                        p.server_keep_alive = self.maybe(Rng::u16);
                        p.response_information = self.maybe(Rng::text);
                        p.server_reference = self.maybe(Rng::text);
                        p.reason_string = self.maybe(Rng::text);
                        p.maximum_qos = self.maybe(|r| r.below(2) as u8);
                        p.retain_available = self.maybe(|r| r.below(2) as u8);
                        p.wildcard_subscription_available = self.maybe(|r| r.below(2) as u8);
                        p.subscription_identifier_available = self.maybe(|r| r.below(2) as u8);
                        p.shared_subscription_available = self.maybe(|r| r.below(2) as u8);
                    }
                }
                "subscribe" => {
                    if self.chance() {
                        p.subscription_identifiers
                            .push((self.u32() % 268_435_455).max(1));
                    }
                }
                "unsubscribe" => {}
                "disconnect" => {
                    p.session_expiry_interval = self.maybe(Rng::u32);
                    p.server_reference = self.maybe(Rng::text);
                    p.reason_string = self.maybe(Rng::text);
                }
                "auth" => {
                    if self.chance() {
                        p.authentication_method = Some(self.text());
                        p.authentication_data = self.maybe(Rng::binary);
                    }
                    p.reason_string = self.maybe(Rng::text);
                }
                _ => p.reason_string = self.maybe(Rng::text),
            }
            p
        }

        fn packet(&mut self, version: Version) -> Packet {
            let v5 = version == Version::V5;
            let props = |r: &mut Rng, ctx: &str| {
                if v5 {
                    r.properties(ctx)
                } else {
                    Properties::default()
                }
            };
            let ack = |r: &mut Rng, codes: &[u8]| Ack {
                packet_id: r.nz16(),
                reason: if v5 { r.pick(codes) } else { 0 },
                properties: props(r, "ack"),
            };
            match self.below(15) {
                0 => {
                    let will = self.maybe(|r| Will {
                        topic: r.topic(),
                        payload: r.binary(),
                        qos: r.qos(),
                        retain: r.chance(),
                        properties: props(r, "will"),
                    });
                    let username = self.maybe(Rng::text);
                    let password = if username.is_some() || v5 {
                        self.maybe(Rng::binary)
                    } else {
                        None
                    };
                    Packet::Connect(Box::new(crate::Connect {
                        version,
                        clean_start: self.chance(),
                        keep_alive: self.u16(),
                        properties: props(self, "connect"),
                        client_id: self.text(),
                        will,
                        username,
                        password,
                    }))
                }
                1 => {
                    let code = if v5 {
                        self.pick(&[0, 0x80, 0x84, 0x86, 0x9f])
                    } else {
                        self.below(6) as u8
                    };
                    Packet::ConnAck(crate::ConnAck {
                        session_present: code == 0 && self.chance(),
                        code,
                        properties: props(self, "connack"),
                    })
                }
                2 => {
                    let qos = self.qos();
                    let properties = props(self, "publish");
                    let topic = if properties.topic_alias.is_some() && self.chance() {
                        ByteStr::default()
                    } else {
                        self.topic()
                    };
                    Packet::Publish(Publish {
                        dup: qos != QoS::AtMostOnce && self.chance(),
                        qos,
                        retain: self.chance(),
                        topic,
                        packet_id: if qos == QoS::AtMostOnce {
                            0
                        } else {
                            self.nz16()
                        },
                        properties,
                        payload: self.binary(),
                    })
                }
                3 => Packet::PubAck(ack(self, &[0, 0x10, 0x80, 0x99])),
                4 => Packet::PubRec(ack(self, &[0, 0x10, 0x91, 0x97])),
                5 => Packet::PubRel(ack(self, &[0, 0x92])),
                6 => Packet::PubComp(ack(self, &[0, 0x92])),
                7 => {
                    let n = 1 + self.below(4);
                    let filters = (0..n)
                        .map(|_| {
                            let f = self.filter();
                            let shared = crate::topic::split_shared(&f).is_some();
                            let o = SubOptions {
                                qos: self.qos(),
                                no_local: v5 && !shared && self.chance(),
                                retain_as_published: v5 && self.chance(),
                                retain_handling: if v5 { self.below(3) as u8 } else { 0 },
                            };
                            (f, o)
                        })
                        .collect();
                    Packet::Subscribe(Subscribe {
                        packet_id: self.nz16(),
                        properties: props(self, "subscribe"),
                        filters,
                    })
                }
                8 => {
                    let n = 1 + self.below(4);
                    let codes = (0..n)
                        .map(|_| {
                            if v5 {
                                self.pick(&[0, 1, 2, 0x80, 0x8f, 0xa2])
                            } else {
                                self.pick(&[0, 1, 2, 0x80])
                            }
                        })
                        .collect();
                    Packet::SubAck(SubAck {
                        packet_id: self.nz16(),
                        properties: props(self, "suback"),
                        codes,
                    })
                }
                9 => {
                    let n = 1 + self.below(4);
                    Packet::Unsubscribe(Unsubscribe {
                        packet_id: self.nz16(),
                        properties: props(self, "unsubscribe"),
                        filters: (0..n).map(|_| self.filter()).collect(),
                    })
                }
                10 => {
                    let codes = if v5 {
                        let n = 1 + self.below(4);
                        (0..n).map(|_| self.pick(&[0, 0x11, 0x87])).collect()
                    } else {
                        Vec::new()
                    };
                    Packet::UnsubAck(UnsubAck {
                        packet_id: self.nz16(),
                        properties: props(self, "unsuback"),
                        codes,
                    })
                }
                11 => Packet::PingReq,
                12 => Packet::PingResp,
                13 => Packet::Disconnect(Disconnect {
                    reason: if v5 {
                        self.pick(&[0, 4, 0x8e, 0xa2])
                    } else {
                        0
                    },
                    properties: props(self, "disconnect"),
                }),
                _ if v5 => Packet::Auth(Auth {
                    reason: self.pick(&[0, 0x18, 0x19]),
                    properties: props(self, "auth"),
                }),
                _ => Packet::PingReq,
            }
        }
    }

    #[test]
    fn pseudo_random_roundtrips() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            for v in [Version::V311, Version::V5] {
                let p = rng.packet(v);
                roundtrip(&p, v);
            }
        }
    }

    #[test]
    fn pseudo_random_stream() {
        // Many packets back to back, fed in random-sized chunks.
        let mut rng = Rng(42);
        for v in [Version::V311, Version::V5] {
            let packets: Vec<Packet> = (0..500)
                .map(|_| match rng.packet(v) {
                    Packet::Connect(_) => Packet::PingReq,
                    p => p,
                })
                .collect();
            let mut wire = BytesMut::new();
            for p in &packets {
                encode(p, v, &mut wire);
            }
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            while !wire.is_empty() {
                let n = (1 + rng.below(40) as usize).min(wire.len());
                buf.extend_from_slice(&wire.split_to(n));
                while let Some(p) = decode(&mut buf, Some(v), MAX).expect("valid stream") {
                    decoded.push(p);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(decoded, packets);
        }
    }
}
