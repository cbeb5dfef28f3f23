//! SUBSCRIBE: packet id, 5.0 properties (one Subscription Identifier at
//! most), and one or more (topic filter, subscription options) pairs.

use bytes::{BufMut, BytesMut};

use crate::codec::{binary_len, put_str, Reader};
use crate::properties::PropCtx;
use crate::{topic, DecodeError, Properties, QoS, SubOptions, Subscribe, Version};

impl SubOptions {
    /// Parses the options byte; reserved bits (6-7 in 5.0, 2-7 in 3.1.1),
    /// QoS 3 and retain handling 3 are malformed.
    pub(crate) fn from_byte(b: u8, version: Version) -> Result<SubOptions, DecodeError> {
        let reserved = match version {
            Version::V311 => 0b1111_1100,
            Version::V5 => 0b1100_0000,
        };
        if b & reserved != 0 {
            return Err(DecodeError::Malformed(
                "subscription options reserved bits set",
            ));
        }
        let qos = QoS::from_u8(b & 0b11).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        let retain_handling = (b >> 4) & 0b11;
        if retain_handling == 3 {
            return Err(DecodeError::Malformed("retain handling 3"));
        }
        Ok(SubOptions {
            qos,
            no_local: b & 0b0100 != 0,
            retain_as_published: b & 0b1000 != 0,
            retain_handling,
        })
    }

    /// The options byte; only the QoS in 3.1.1.
    pub(crate) fn to_byte(self, version: Version) -> u8 {
        let mut b = self.qos as u8;
        if version == Version::V5 {
            if self.no_local {
                b |= 0b0100;
            }
            if self.retain_as_published {
                b |= 0b1000;
            }
            b |= (self.retain_handling & 0b11) << 4;
        }
        b
    }
}

impl Subscribe {
    pub(crate) fn decode(mut r: Reader, version: Version) -> Result<Subscribe, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = match version {
            Version::V5 => Properties::decode(&mut r, PropCtx::Subscribe)?,
            Version::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            if !topic::valid_filter(&filter) {
                return Err(DecodeError::Malformed("invalid topic filter"));
            }
            let options = SubOptions::from_byte(r.u8()?, version)?;
            if options.no_local && topic::split_shared(&filter).is_some() {
                return Err(DecodeError::Protocol("no local on a shared subscription"));
            }
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn remaining_len(&self, version: Version) -> usize {
        let mut len = 2;
        if version == Version::V5 {
            len += self.properties.wire_len();
        }
        len + self
            .filters
            .iter()
            .map(|(f, _)| binary_len(f.as_bytes()) + 1)
            .sum::<usize>()
    }

    pub(crate) fn encode_body(&self, version: Version, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if version == Version::V5 {
            self.properties.encode(out);
        }
        for (filter, options) in &self.filters {
            put_str(out, filter);
            out.put_u8(options.to_byte(version));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, roundtrip};
    use crate::{ByteStr, Packet};

    use super::*;

    fn err(bytes: &[u8], v: Version) -> DecodeError {
        decode_err(bytes, Some(v))
    }

    #[test]
    fn v311_vector() {
        let bytes = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'#', 0x01];
        let p = decode_all(&bytes, Some(Version::V311));
        assert_eq!(
            p,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec![(ByteStr::from("a/#"), SubOptions::qos(QoS::AtLeastOnce))],
            })
        );
    }

    #[test]
    fn v5_vector() {
        // Subscription Identifier 5, filter "a" with No Local, RAP, RH 2, QoS 2.
        let bytes = [
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0b, 0x05, 0x00, 0x01, b'a', 0x2e,
        ];
        let Packet::Subscribe(s) = decode_all(&bytes, Some(Version::V5)) else {
            panic!()
        };
        assert_eq!(s.properties.subscription_identifiers, [5]);
        assert_eq!(
            s.filters[0].1,
            SubOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2
            }
        );
    }

    #[test]
    fn flags_must_be_0010() {
        for first in [0x80, 0x83, 0x8a] {
            assert!(matches!(
                err(
                    &[first, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
                    Version::V311
                ),
                DecodeError::Malformed(_)
            ));
        }
    }

    #[test]
    fn no_filters_is_protocol_error() {
        assert!(matches!(
            err(&[0x82, 0x02, 0x00, 0x01], Version::V311),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            err(&[0x82, 0x03, 0x00, 0x01, 0x00], Version::V5),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn packet_id_zero() {
        assert!(matches!(
            err(
                &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
                Version::V311
            ),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn options_byte() {
        let v311 = |o: u8| {
            err(
                &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', o],
                Version::V311,
            )
        };
        let v5 = |o: u8| {
            err(
                &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', o],
                Version::V5,
            )
        };
        // Reserved bits 2-7 in 3.1.1.
        for o in [0x04, 0x08, 0x10, 0x80] {
            assert!(matches!(v311(o), DecodeError::Malformed(_)), "{o:#x}");
        }
        // Reserved bits 6-7 in 5.0.
        for o in [0x40, 0x80] {
            assert!(matches!(v5(o), DecodeError::Malformed(_)), "{o:#x}");
        }
        // QoS 3, retain handling 3.
        assert!(matches!(v311(0x03), DecodeError::Malformed(_)));
        assert!(matches!(v5(0x03), DecodeError::Malformed(_)));
        assert!(matches!(v5(0x30), DecodeError::Malformed(_)));
    }

    #[test]
    fn invalid_filters() {
        let sub = |f: &[u8]| {
            let mut b = vec![0x82, (f.len() + 5) as u8, 0x00, 0x01, 0x00, f.len() as u8];
            b.extend_from_slice(f);
            b.push(0x00);
            err(&b, Version::V311)
        };
        for f in [
            &b""[..],
            b"a/#/b",
            b"a#",
            b"a+/b",
            b"$share/g",
            b"$share//a",
            b"$share/g+/a",
        ] {
            assert!(matches!(sub(f), DecodeError::Malformed(_)), "{f:?}");
        }
        // Invalid UTF-8 and U+0000.
        assert!(matches!(sub(&[0xc0, 0x80]), DecodeError::Malformed(_)));
        assert!(matches!(sub(&[b'a', 0x00]), DecodeError::Malformed(_)));
        // Filter length past the end, missing options byte.
        assert!(matches!(
            err(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x09, b'a'], Version::V311),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            err(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], Version::V311),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn properties() {
        // Subscription Identifier 0.
        assert!(matches!(
            err(
                &[0x82, 0x09, 0x00, 0x01, 0x02, 0x0b, 0x00, 0x00, 0x01, b'a', 0x00],
                Version::V5
            ),
            DecodeError::Protocol(_)
        ));
        // Two Subscription Identifiers.
        assert!(matches!(
            err(
                &[0x82, 0x0b, 0x00, 0x01, 0x04, 0x0b, 0x01, 0x0b, 0x02, 0x00, 0x01, b'a', 0x00],
                Version::V5
            ),
            DecodeError::Protocol(_)
        ));
        // Reason String is not a SUBSCRIBE property.
        assert!(matches!(
            err(
                &[0x82, 0x0b, 0x00, 0x01, 0x04, 0x1f, 0x00, 0x01, b'x', 0x00, 0x01, b'a', 0x00],
                Version::V5
            ),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn shared_no_local_is_protocol_error() {
        let mut b = vec![0x82, 0x0f, 0x00, 0x01, 0x00, 0x00, 0x09];
        b.extend_from_slice(b"$share/g/");
        b.push(0x04);
        b[6] = 0x09;
        // "$share/g/" has an empty inner filter: malformed first.
        assert!(matches!(err(&b, Version::V5), DecodeError::Malformed(_)));
        let mut b = vec![0x82, 0x10, 0x00, 0x01, 0x00, 0x00, 0x0a];
        b.extend_from_slice(b"$share/g/a");
        b.push(0x04);
        assert!(matches!(err(&b, Version::V5), DecodeError::Protocol(_)));
        let last = b.len() - 1;
        b[last] = 0x00;
        assert!(matches!(
            decode_all(&b, Some(Version::V5)),
            Packet::Subscribe(_)
        ));
    }

    #[test]
    fn roundtrips() {
        let mut s = Subscribe {
            packet_id: 42,
            properties: Properties::default(),
            filters: vec![
                ("a/+/c".into(), SubOptions::qos(QoS::AtMostOnce)),
                ("#".into(), SubOptions::qos(QoS::ExactlyOnce)),
                ("$share/g/x".into(), SubOptions::qos(QoS::AtLeastOnce)),
            ],
        };
        roundtrip(&Packet::Subscribe(s.clone()), Version::V311);
        s.properties.subscription_identifiers = vec![268_435_455];
        s.properties.user_properties = vec![("u".into(), "p".into())];
        s.filters.push((
            "x/y".into(),
            SubOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 1,
            },
        ));
        roundtrip(&Packet::Subscribe(s), Version::V5);
    }
}
