//! PUBLISH: flags (DUP, QoS, RETAIN), topic name, packet id (QoS > 0),
//! 5.0 properties and the payload, which is a zero-copy slice on decode and
//! can be written separately from the header on encode.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{binary_len, put_str, put_varint, varint_len, Reader};
use crate::properties::PropCtx;
use crate::{topic, ByteStr, DecodeError, Properties, Publish, QoS, Version};

impl Publish {
    /// A PUBLISH without properties; `packet_id` is ignored (0) for QoS 0.
    pub fn new(
        topic: impl Into<ByteStr>,
        qos: QoS,
        packet_id: u16,
        payload: impl Into<Bytes>,
    ) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
            properties: Properties::default(),
            payload: payload.into(),
        }
    }

    /// Writes the fixed header, topic, packet id and properties of this
    /// PUBLISH (everything but the payload) so that a writer can send
    /// `self.payload` after it without copying it.
    ///
    /// The remaining length covers the payload. DUP is only written for
    /// QoS > 0 and the packet id only for QoS > 0; properties only in 5.0.
    pub fn encode_header(&self, version: Version, out: &mut BytesMut) {
        let remaining = self.remaining_len(version);
        out.reserve(1 + varint_len(remaining) + remaining - self.payload.len());
        out.put_u8(self.first_byte());
        put_varint(out, remaining);
        put_str(out, &self.topic);
        if self.qos != QoS::AtMostOnce {
            out.put_u16(self.packet_id);
        }
        if version == Version::V5 {
            self.properties.encode(out);
        }
    }

    /// Number of bytes [`Publish::encode_header`] writes.
    pub fn header_len(&self, version: Version) -> usize {
        let remaining = self.remaining_len(version);
        1 + varint_len(remaining) + remaining - self.payload.len()
    }

    pub(crate) fn first_byte(&self) -> u8 {
        let mut b = 0x30 | (self.qos as u8) << 1;
        if self.dup && self.qos != QoS::AtMostOnce {
            b |= 0b1000;
        }
        if self.retain {
            b |= 1;
        }
        b
    }

    pub(crate) fn remaining_len(&self, version: Version) -> usize {
        let mut len = binary_len(self.topic.as_bytes()) + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if version == Version::V5 {
            len += self.properties.wire_len();
        }
        len
    }

    /// `flags` were checked by the caller (QoS 3, DUP with QoS 0).
    pub(crate) fn decode(
        mut r: Reader,
        flags: u8,
        version: Version,
    ) -> Result<Publish, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0b11)
            .ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
        let topic = r.string()?;
        let packet_id = match qos {
            QoS::AtMostOnce => 0,
            _ => r.packet_id()?,
        };
        let properties = match version {
            Version::V5 => Properties::decode(&mut r, PropCtx::Publish)?,
            Version::V311 => Properties::default(),
        };
        if topic.is_empty() {
            if properties.topic_alias.is_none() {
                return Err(DecodeError::Protocol("empty topic name"));
            }
        } else if !topic::valid_name(&topic) {
            return Err(DecodeError::Protocol("topic name contains wildcards"));
        }
        Ok(Publish {
            dup: flags & 0b1000 != 0,
            qos,
            retain: flags & 1 != 0,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, encode_vec, roundtrip};
    use crate::{encode, Packet};

    use super::*;

    #[test]
    fn qos0_vector() {
        let bytes = [0x30, 0x06, 0x00, 0x01, b'a', b'h', b'i', b'!'];
        let p = decode_all(&bytes, Some(Version::V311));
        assert_eq!(
            p,
            Packet::Publish(Publish::new("a", QoS::AtMostOnce, 0, "hi!"))
        );
        let bytes_v5 = [0x31, 0x05, 0x00, 0x01, b'a', 0x00, b'x'];
        let Packet::Publish(p) = decode_all(&bytes_v5, Some(Version::V5)) else {
            panic!()
        };
        assert!(p.retain);
        assert_eq!(&p.payload[..], b"x");
    }

    #[test]
    fn qos1_and_2_vectors() {
        let bytes = [0x3b, 0x05, 0x00, 0x01, b'a', 0x00, 0x07];
        let Packet::Publish(p) = decode_all(&bytes, Some(Version::V311)) else {
            panic!()
        };
        assert!(p.dup && p.retain);
        assert_eq!((p.qos, p.packet_id), (QoS::AtLeastOnce, 7));
        assert!(p.payload.is_empty());
        let bytes = [0x34, 0x05, 0x00, 0x01, b'a', 0x12, 0x34];
        let Packet::Publish(p) = decode_all(&bytes, Some(Version::V311)) else {
            panic!()
        };
        assert_eq!((p.qos, p.packet_id), (QoS::ExactlyOnce, 0x1234));
    }

    #[test]
    fn bad_flags() {
        // QoS 3.
        assert!(matches!(
            decode_err(
                &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
                Some(Version::V311)
            ),
            DecodeError::Malformed(_)
        ));
        // Detected from the first byte alone.
        assert!(matches!(
            decode_err(&[0x36], Some(Version::V5)),
            DecodeError::Malformed(_)
        ));
        // QoS 0 with DUP.
        assert!(matches!(
            decode_err(&[0x38, 0x03, 0x00, 0x01, b'a'], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn packet_id_zero() {
        assert!(matches!(
            decode_err(
                &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
                Some(Version::V311)
            ),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn topic_checks() {
        // Wildcards.
        for c in [b'+', b'#'] {
            assert!(matches!(
                decode_err(&[0x30, 0x03, 0x00, 0x01, c], Some(Version::V311)),
                DecodeError::Protocol(_)
            ));
        }
        // Empty topic without alias.
        assert!(matches!(
            decode_err(&[0x30, 0x02, 0x00, 0x00], Some(Version::V311)),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            decode_err(&[0x30, 0x03, 0x00, 0x00, 0x00], Some(Version::V5)),
            DecodeError::Protocol(_)
        ));
        // Empty topic with alias 3 is fine in 5.0.
        let Packet::Publish(p) = decode_all(
            &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x03],
            Some(Version::V5),
        ) else {
            panic!()
        };
        assert_eq!(p.properties.topic_alias, Some(3));
        assert!(p.topic.is_empty());
        // Topic alias 0.
        assert_eq!(
            decode_err(
                &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x00],
                Some(Version::V5)
            ),
            DecodeError::TopicAliasInvalid
        );
        // Invalid UTF-8 / U+0000 in the topic.
        assert!(matches!(
            decode_err(&[0x30, 0x03, 0x00, 0x01, 0xff], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(&[0x30, 0x03, 0x00, 0x01, 0x00], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        // Topic length running past the end.
        assert!(matches!(
            decode_err(&[0x30, 0x03, 0x00, 0x05, b'a'], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn properties_checks() {
        // Payload Format Indicator 2.
        assert!(matches!(
            decode_err(
                &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x01, 0x02],
                Some(Version::V5)
            )
            .reason_code(),
            0x82
        ));
        // Subscription Identifier 0.
        assert!(matches!(
            decode_err(
                &[0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x0b, 0x00],
                Some(Version::V5)
            ),
            DecodeError::Protocol(_)
        ));
        // Subscription Identifier may repeat in PUBLISH.
        let Packet::Publish(p) = decode_all(
            &[
                0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x0b, 0x01, 0x0b, 0x80, 0x01,
            ],
            Some(Version::V5),
        ) else {
            panic!()
        };
        assert_eq!(p.properties.subscription_identifiers, [1, 128]);
        // Non-minimal Subscription Identifier.
        assert!(matches!(
            decode_err(
                &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x0b, 0x81, 0x00],
                Some(Version::V5)
            ),
            DecodeError::Malformed(_)
        ));
        // Duplicate Topic Alias.
        assert!(matches!(
            decode_err(
                &[0x30, 0x0a, 0x00, 0x01, b'a', 0x06, 0x23, 0x00, 0x01, 0x23, 0x00, 0x02],
                Some(Version::V5)
            ),
            DecodeError::Protocol(_)
        ));
        // Session Expiry Interval is not a PUBLISH property.
        assert!(matches!(
            decode_err(
                &[0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01],
                Some(Version::V5)
            ),
            DecodeError::Protocol(_)
        ));
        // Response Topic with a wildcard.
        assert!(matches!(
            decode_err(
                &[0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x08, 0x00, 0x01, b'#'],
                Some(Version::V5)
            ),
            DecodeError::Protocol(_)
        ));
        // Content Type that is not UTF-8.
        assert!(matches!(
            decode_err(
                &[0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x03, 0x00, 0x01, 0xfe],
                Some(Version::V5)
            ),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn payload_is_zero_copy() {
        let mut buf = BytesMut::from(&[0x30, 0x06, 0x00, 0x01, b'a', b'h', b'i', b'!'][..]);
        let start = buf.as_ptr() as usize;
        let Ok(Some(Packet::Publish(p))) = crate::decode(&mut buf, Some(Version::V311), 100) else {
            panic!()
        };
        assert_eq!(p.payload.as_ptr() as usize, start + 5);
        assert_eq!(p.topic.as_bytes().as_ptr() as usize, start + 4);
    }

    #[test]
    fn header_then_payload_equals_encode() {
        for v in [Version::V311, Version::V5] {
            let mut p = Publish::new("t/x", QoS::AtLeastOnce, 9, &b"payload"[..]);
            p.properties.message_expiry_interval = Some(5);
            let mut split = BytesMut::new();
            p.encode_header(v, &mut split);
            assert_eq!(split.len(), p.header_len(v));
            split.extend_from_slice(&p.payload);
            let mut whole = BytesMut::new();
            encode(&Packet::Publish(p), v, &mut whole);
            assert_eq!(split, whole);
        }
    }

    #[test]
    fn encode_drops_dup_for_qos0() {
        let mut p = Publish::new("a", QoS::AtMostOnce, 0, Bytes::new());
        p.dup = true;
        assert_eq!(
            encode_vec(&Packet::Publish(p), Version::V311),
            [0x30, 0x03, 0x00, 0x01, b'a']
        );
    }

    #[test]
    fn roundtrips() {
        for v in [Version::V311, Version::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut p = Publish::new("a/b", qos, 65535, vec![7u8; 300]);
                p.retain = true;
                p.dup = qos != QoS::AtMostOnce;
                roundtrip(&Packet::Publish(p), v);
            }
        }
        let mut p = Publish::new("", QoS::AtLeastOnce, 1, Bytes::from_static(b"{}"));
        let props = &mut p.properties;
        props.payload_format_indicator = Some(1);
        props.message_expiry_interval = Some(0);
        props.content_type = Some("application/json".into());
        props.response_topic = Some("r/1".into());
        props.correlation_data = Some(Bytes::from_static(&[0; 3]));
        props.subscription_identifiers = vec![1, 268_435_455];
        props.topic_alias = Some(65535);
        props.user_properties = vec![("k".into(), "".into())];
        roundtrip(&Packet::Publish(p), Version::V5);
    }
}
