//! CONNACK: session present flag, return code (3.1.1) / reason code (5.0)
//! and, in 5.0, properties (the property length is always encoded).

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::properties::PropCtx;
use crate::{ConnAck, DecodeError, Properties, Version};

/// Reason codes a 5.0 CONNACK may carry.
fn valid_v5_code(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
    )
}

impl ConnAck {
    /// A successful CONNACK without properties.
    pub fn new(session_present: bool, code: u8) -> ConnAck {
        ConnAck {
            session_present,
            code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(mut r: Reader, version: Version) -> Result<ConnAck, DecodeError> {
        let flags = r.u8()?;
        if flags & !1 != 0 {
            return Err(DecodeError::Malformed("CONNACK reserved flags set"));
        }
        let session_present = flags & 1 != 0;
        let code = r.u8()?;
        let properties = match version {
            Version::V311 => {
                if code > 5 {
                    return Err(DecodeError::Protocol("invalid CONNACK return code"));
                }
                Properties::default()
            }
            Version::V5 => {
                if !valid_v5_code(code) {
                    return Err(DecodeError::Protocol("invalid CONNACK reason code"));
                }
                Properties::decode(&mut r, PropCtx::ConnAck)?
            }
        };
        r.finish()?;
        if session_present && code != 0 {
            return Err(DecodeError::Protocol("session present with a failure code"));
        }
        Ok(ConnAck {
            session_present,
            code,
            properties,
        })
    }

    pub(crate) fn remaining_len(&self, version: Version) -> usize {
        match version {
            Version::V311 => 2,
            Version::V5 => 2 + self.properties.wire_len(),
        }
    }

    pub(crate) fn encode_body(&self, version: Version, out: &mut BytesMut) {
        out.put_u8(u8::from(self.session_present));
        out.put_u8(self.code);
        if version == Version::V5 {
            self.properties.encode(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::testutil::{decode_all, decode_err, encode_vec, roundtrip};
    use crate::{reason, Packet};

    use super::*;

    #[test]
    fn v311_vectors() {
        let p = decode_all(&[0x20, 0x02, 0x01, 0x00], Some(Version::V311));
        assert_eq!(p, Packet::ConnAck(ConnAck::new(true, 0)));
        let p = decode_all(&[0x20, 0x02, 0x00, 0x05], Some(Version::V311));
        assert_eq!(p, Packet::ConnAck(ConnAck::new(false, 5)));
        // Reserved acknowledge flags.
        assert!(matches!(
            decode_err(&[0x20, 0x02, 0x02, 0x00], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        // Return code 6 is reserved.
        assert!(matches!(
            decode_err(&[0x20, 0x02, 0x00, 0x06], Some(Version::V311)),
            DecodeError::Protocol(_)
        ));
        // Session present with a refusal.
        assert!(matches!(
            decode_err(&[0x20, 0x02, 0x01, 0x05], Some(Version::V311)),
            DecodeError::Protocol(_)
        ));
        // Reserved fixed-header flags.
        assert!(matches!(
            decode_err(&[0x21, 0x02, 0x00, 0x00], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        // Too long.
        assert!(matches!(
            decode_err(&[0x20, 0x03, 0x00, 0x00, 0x00], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn v311_encodes_code_as_given() {
        let bytes = encode_vec(
            &Packet::ConnAck(ConnAck::new(false, reason::v311::NOT_AUTHORIZED)),
            Version::V311,
        );
        assert_eq!(bytes, [0x20, 0x02, 0x00, 0x05]);
    }

    #[test]
    fn v5_vectors() {
        let p = decode_all(&[0x20, 0x03, 0x00, 0x00, 0x00], Some(Version::V5));
        assert_eq!(p, Packet::ConnAck(ConnAck::new(false, 0)));
        // Always encodes the property length.
        assert_eq!(
            encode_vec(&Packet::ConnAck(ConnAck::new(false, 0)), Version::V5),
            [0x20, 0x03, 0x00, 0x00, 0x00]
        );
        // Missing property length.
        assert!(matches!(
            decode_err(&[0x20, 0x02, 0x00, 0x00], Some(Version::V5)),
            DecodeError::Malformed(_)
        ));
        // Maximum QoS 2 is not allowed (only 0 or 1).
        assert!(matches!(
            decode_err(
                &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
                Some(Version::V5)
            ),
            DecodeError::Protocol(_)
        ));
        // Retain Available 2.
        assert!(matches!(
            decode_err(
                &[0x20, 0x05, 0x00, 0x00, 0x02, 0x25, 0x02],
                Some(Version::V5)
            ),
            DecodeError::Protocol(_)
        ));
        // Wildcard / Subscription Identifier / Shared Subscription Available 2.
        for id in [0x28, 0x29, 0x2a] {
            assert!(matches!(
                decode_err(&[0x20, 0x05, 0x00, 0x00, 0x02, id, 0x02], Some(Version::V5)),
                DecodeError::Protocol(_)
            ));
        }
        // Receive Maximum 0.
        assert!(matches!(
            decode_err(
                &[0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00],
                Some(Version::V5)
            ),
            DecodeError::Protocol(_)
        ));
        // Invalid reason code.
        assert!(matches!(
            decode_err(&[0x20, 0x03, 0x00, 0x01, 0x00], Some(Version::V5)),
            DecodeError::Protocol(_)
        ));
        // Will Delay Interval is not a CONNACK property.
        assert!(matches!(
            decode_err(
                &[0x20, 0x08, 0x00, 0x00, 0x05, 0x18, 0x00, 0x00, 0x00, 0x01],
                Some(Version::V5)
            ),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn roundtrips() {
        roundtrip(&Packet::ConnAck(ConnAck::new(true, 0)), Version::V311);
        roundtrip(&Packet::ConnAck(ConnAck::new(false, 2)), Version::V311);
        roundtrip(&Packet::ConnAck(ConnAck::new(false, 0x87)), Version::V5);
        let mut c = ConnAck::new(true, 0);
        let p = &mut c.properties;
        p.session_expiry_interval = Some(7);
        p.assigned_client_identifier = Some("auto-1".into());
        p.server_keep_alive = Some(30);
        p.authentication_method = Some("m".into());
        p.authentication_data = Some(Bytes::from_static(b"d"));
        p.response_information = Some("info".into());
        p.server_reference = Some("other:1883".into());
        p.reason_string = Some("welcome".into());
        p.receive_maximum = Some(65535);
        p.topic_alias_maximum = Some(16);
        p.maximum_qos = Some(1);
        p.retain_available = Some(0);
        p.user_properties = vec![("x".into(), "y".into())];
        p.maximum_packet_size = Some(268_435_460);
        p.wildcard_subscription_available = Some(1);
        p.subscription_identifier_available = Some(0);
        p.shared_subscription_available = Some(1);
        roundtrip(&Packet::ConnAck(c), Version::V5);
    }
}
