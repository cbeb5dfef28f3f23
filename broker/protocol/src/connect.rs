//! CONNECT: protocol name/level (which decides the version), connect flags,
//! keep alive, 5.0 properties, and the payload (client id, will, credentials).

use bytes::{BufMut, BytesMut};

use crate::codec::{binary_len, put_binary, put_str, Reader};
use crate::properties::PropCtx;
use crate::{topic, ByteStr, Connect, DecodeError, Properties, QoS, Version, Will};

const FLAG_RESERVED: u8 = 0b0000_0001;
const FLAG_CLEAN_START: u8 = 0b0000_0010;
const FLAG_WILL: u8 = 0b0000_0100;
const FLAG_WILL_QOS: u8 = 0b0001_1000;
const FLAG_WILL_RETAIN: u8 = 0b0010_0000;
const FLAG_PASSWORD: u8 = 0b0100_0000;
const FLAG_USERNAME: u8 = 0b1000_0000;

impl Connect {
    pub(crate) fn decode(mut r: Reader) -> Result<Connect, DecodeError> {
        let name = r.binary()?;
        let level = r.u8()?;
        let version = match (&name[..], level) {
            (b"MQTT", 4) => Version::V311,
            (b"MQTT", 5) => Version::V5,
            (b"MQTT" | b"MQIsdp", level) => return Err(DecodeError::UnsupportedProtocol { level }),
            _ => return Err(DecodeError::Malformed("invalid protocol name")),
        };
        let flags = r.u8()?;
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::Malformed("CONNECT reserved flag set"));
        }
        let has_will = flags & FLAG_WILL != 0;
        let will_qos = (flags & FLAG_WILL_QOS) >> 3;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        if !has_will && (will_qos != 0 || will_retain) {
            return Err(DecodeError::Malformed(
                "will QoS or retain without will flag",
            ));
        }
        let Some(will_qos) = QoS::from_u8(will_qos) else {
            return Err(DecodeError::Malformed("will QoS 3"));
        };
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        if version == Version::V311 && has_password && !has_username {
            return Err(DecodeError::Malformed(
                "password flag without username flag",
            ));
        }
        let keep_alive = r.u16()?;
        let properties = match version {
            Version::V5 => Properties::decode(&mut r, PropCtx::Connect)?,
            Version::V311 => Properties::default(),
        };
        let client_id = r.string()?;
        let will = if has_will {
            let properties = match version {
                Version::V5 => Properties::decode(&mut r, PropCtx::Will)?,
                Version::V311 => Properties::default(),
            };
            let topic = r.string()?;
            if !topic::valid_name(&topic) {
                return Err(DecodeError::Protocol("invalid will topic"));
            }
            let payload = r.binary()?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        r.finish()?;
        Ok(Connect {
            version,
            clean_start: flags & FLAG_CLEAN_START != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | (will.qos as u8) << 3;
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        flags
    }

    pub(crate) fn remaining_len(&self) -> usize {
        let v5 = self.version == Version::V5;
        // Protocol name, level, flags, keep alive.
        let mut len = binary_len(b"MQTT") + 1 + 1 + 2;
        if v5 {
            len += self.properties.wire_len();
        }
        len += binary_len(self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.wire_len();
            }
            len += binary_len(will.topic.as_bytes()) + binary_len(&will.payload);
        }
        len += self
            .username
            .as_ref()
            .map_or(0, |u| binary_len(u.as_bytes()));
        len += self.password.as_ref().map_or(0, |p| binary_len(p));
        len
    }

    /// Writes everything after the fixed header, in the version of
    /// `self.version`.
    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        let v5 = self.version == Version::V5;
        put_binary(out, b"MQTT");
        out.put_u8(if v5 { 5 } else { 4 });
        out.put_u8(self.flags());
        out.put_u16(self.keep_alive);
        if v5 {
            self.properties.encode(out);
        }
        put_str(out, &self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(out);
            }
            put_str(out, &will.topic);
            put_binary(out, &will.payload);
        }
        if let Some(username) = &self.username {
            put_str(out, username);
        }
        if let Some(password) = &self.password {
            put_binary(out, password);
        }
    }
}

impl Connect {
    /// A minimal clean-start CONNECT for `version` with `client_id`, no will,
    /// no credentials, keep alive 60 s and no properties.
    pub fn new(version: Version, client_id: impl Into<ByteStr>) -> Connect {
        Connect {
            version,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::testutil::{decode_all, decode_err, roundtrip};
    use crate::{DecodeError, Packet, Version};

    use super::*;

    /// CONNECT 3.1.1, clean session, keep alive 60, client id "c".
    const V311_MIN: &[u8] = &[
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'c',
    ];

    /// Patches one byte of a packet.
    fn with(bytes: &[u8], at: usize, value: u8) -> Vec<u8> {
        let mut v = bytes.to_vec();
        if let Some(b) = v.get_mut(at) {
            *b = value;
        }
        v
    }

    #[test]
    fn decodes_minimal_v311() {
        let p = decode_all(V311_MIN, None);
        let Packet::Connect(c) = p else {
            panic!("{p:?}")
        };
        assert_eq!(c.version, Version::V311);
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(&*c.client_id, "c");
        assert!(c.will.is_none() && c.username.is_none() && c.password.is_none());
    }

    #[test]
    fn decodes_minimal_v5() {
        let bytes = [
            0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x01, b'c',
        ];
        let Packet::Connect(c) = decode_all(&bytes, None) else {
            panic!()
        };
        assert_eq!(c.version, Version::V5);
        assert!(!c.clean_start);
        // A CONNECT decodes in its own version even on an established stream.
        let Packet::Connect(c) = decode_all(&bytes, Some(Version::V311)) else {
            panic!()
        };
        assert_eq!(c.version, Version::V5);
    }

    #[test]
    fn unsupported_levels() {
        assert_eq!(
            decode_err(&with(V311_MIN, 8, 3), None),
            DecodeError::UnsupportedProtocol { level: 3 }
        );
        assert_eq!(
            decode_err(&with(V311_MIN, 8, 6), None),
            DecodeError::UnsupportedProtocol { level: 6 }
        );
        // MQTT 3.1: "MQIsdp", level 3.
        let mqisdp = [
            0x10, 0x0f, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c,
            0x00, 0x01, b'c',
        ];
        assert_eq!(
            decode_err(&mqisdp, None),
            DecodeError::UnsupportedProtocol { level: 3 }
        );
        // Wrong protocol name.
        assert!(matches!(
            decode_err(&with(V311_MIN, 4, b'X'), None),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn reserved_flag_is_malformed() {
        assert!(matches!(
            decode_err(&with(V311_MIN, 9, 0x03), None),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn will_qos_or_retain_without_will_is_malformed() {
        // Will QoS 1 without will flag.
        assert!(matches!(
            decode_err(&with(V311_MIN, 9, 0x0a), None),
            DecodeError::Malformed(_)
        ));
        // Will retain without will flag.
        assert!(matches!(
            decode_err(&with(V311_MIN, 9, 0x22), None),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn will_qos_3_is_malformed() {
        // Will flag + QoS 3, will topic "t", payload "p".
        let bytes = [
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x1e, 0x00, 0x3c, 0x00, 0x01,
            b'c', 0x00, 0x01, b't', 0x00, 0x01, b'p',
        ];
        assert!(matches!(
            decode_err(&bytes, None),
            DecodeError::Malformed(_)
        ));
        // The same with QoS 2 decodes.
        let Packet::Connect(c) = decode_all(&with(&bytes, 9, 0x16), None) else {
            panic!()
        };
        let will = c.will.as_ref().expect("will");
        assert_eq!(will.qos, QoS::ExactlyOnce);
        assert_eq!(&*will.topic, "t");
        assert_eq!(&will.payload[..], b"p");
        // Will topic with a wildcard.
        assert!(matches!(
            decode_err(&with(&with(&bytes, 9, 0x16), 17, b'#'), None),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn password_without_username() {
        // Password flag only, password = [0xff, 0x00] (binary is fine).
        let v311 = [
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x3c, 0x00, 0x01,
            b'c', 0x00, 0x02, 0xff, 0x00,
        ];
        assert!(matches!(decode_err(&v311, None), DecodeError::Malformed(_)));
        let v5 = [
            0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x3c, 0x00, 0x00,
            0x01, b'c', 0x00, 0x02, 0xff, 0x00,
        ];
        let Packet::Connect(c) = decode_all(&v5, None) else {
            panic!()
        };
        assert_eq!(c.password, Some(Bytes::from_static(&[0xff, 0x00])));
        assert_eq!(c.username, None);
    }

    #[test]
    fn username_and_binary_password_v311() {
        let bytes = [
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xc2, 0x00, 0x3c, 0x00, 0x01,
            b'c', 0x00, 0x01, b'u', 0x00, 0x01, 0x80,
        ];
        let Packet::Connect(c) = decode_all(&bytes, None) else {
            panic!()
        };
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password, Some(Bytes::from_static(&[0x80])));
        // Username that is not UTF-8.
        assert!(matches!(
            decode_err(&with(&bytes, 17, 0xc3), None),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn auth_data_without_method_is_protocol_error() {
        // Properties: Authentication Data (0x16) = [0x01].
        let bytes = [
            0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x04, 0x16,
            0x00, 0x01, 0x01, 0x00, 0x01, b'c',
        ];
        assert!(matches!(decode_err(&bytes, None), DecodeError::Protocol(_)));
    }

    #[test]
    fn forbidden_properties() {
        // Receive Maximum 0.
        let rm0 = [
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x03, 0x21,
            0x00, 0x00, 0x00, 0x01, b'c',
        ];
        assert!(matches!(decode_err(&rm0, None), DecodeError::Protocol(_)));
        // Receive Maximum 1 is fine.
        let Packet::Connect(c) = decode_all(&with(&rm0, 15, 1), None) else {
            panic!()
        };
        assert_eq!(c.properties.receive_maximum, Some(1));
        // Maximum Packet Size 0.
        let mps0 = [
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x05, 0x27,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x01, b'c',
        ];
        assert!(matches!(decode_err(&mps0, None), DecodeError::Protocol(_)));
        // Request Problem Information 2.
        let rpi2 = [
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x02, 0x17,
            0x02, 0x00, 0x01, b'c',
        ];
        assert!(matches!(decode_err(&rpi2, None), DecodeError::Protocol(_)));
        // Request Response Information 2.
        assert!(matches!(
            decode_err(&with(&rpi2, 13, 0x19), None),
            DecodeError::Protocol(_)
        ));
        // Duplicate Session Expiry Interval.
        let dup = [
            0x10, 0x18, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x0a, 0x11,
            0x00, 0x00, 0x00, 0x01, 0x11, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, b'c',
        ];
        assert!(matches!(decode_err(&dup, None), DecodeError::Protocol(_)));
        // Topic Alias (a PUBLISH-only property) in CONNECT.
        assert!(matches!(
            decode_err(&with(&with(&rm0, 13, 0x23), 15, 1), None),
            DecodeError::Protocol(_)
        ));
        // Unknown property 0x7f.
        assert!(matches!(
            decode_err(&with(&rm0, 13, 0x7f), None),
            DecodeError::Malformed(_)
        ));
        // Property length running past the end of the packet.
        assert!(matches!(
            decode_err(&with(&rm0, 12, 0x20), None),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn will_properties_v5() {
        // Will with Will Delay Interval 5 and Payload Format Indicator 1.
        let bytes = [
            0x10, 0x1b, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x3c, 0x00, 0x00,
            0x01, b'c', 0x07, 0x18, 0x00, 0x00, 0x00, 0x05, 0x01, 0x01, 0x00, 0x01, b't', 0x00,
            0x00,
        ];
        let Packet::Connect(c) = decode_all(&bytes, None) else {
            panic!()
        };
        let will = c.will.as_ref().expect("will");
        assert_eq!(will.properties.will_delay_interval, Some(5));
        assert_eq!(will.properties.payload_format_indicator, Some(1));
        assert!(will.payload.is_empty());
        // Will Delay Interval in the CONNECT properties is not allowed.
        let misplaced = [
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x05, 0x18,
            0x00, 0x00, 0x00, 0x05, 0x00, 0x01, b'c',
        ];
        assert!(matches!(
            decode_err(&misplaced, None),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn leftover_bytes_are_malformed() {
        let mut bytes = V311_MIN.to_vec();
        bytes[1] += 1;
        bytes.push(0);
        assert!(matches!(
            decode_err(&bytes, None),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn roundtrips() {
        let mut c = Connect::new(Version::V311, "client");
        roundtrip(&Packet::Connect(Box::new(c.clone())), Version::V311);
        c.will = Some(Will {
            topic: "last/will".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        });
        c.username = Some("user".into());
        c.password = Some(Bytes::from_static(&[0, 1, 2, 0xff]));
        c.clean_start = false;
        c.keep_alive = 0;
        roundtrip(&Packet::Connect(Box::new(c.clone())), Version::V311);

        c.version = Version::V5;
        c.username = None;
        c.properties.session_expiry_interval = Some(3600);
        c.properties.receive_maximum = Some(10);
        c.properties.maximum_packet_size = Some(1 << 20);
        c.properties.topic_alias_maximum = Some(0);
        c.properties.request_response_information = Some(1);
        c.properties.request_problem_information = Some(0);
        c.properties.authentication_method = Some("SCRAM".into());
        c.properties.authentication_data = Some(Bytes::from_static(b"\x00data"));
        c.properties.user_properties = vec![("k".into(), "v".into()), ("k".into(), "w".into())];
        if let Some(will) = c.will.as_mut() {
            will.properties.will_delay_interval = Some(10);
            will.properties.payload_format_indicator = Some(1);
            will.properties.message_expiry_interval = Some(60);
            will.properties.content_type = Some("text/plain".into());
            will.properties.response_topic = Some("reply/here".into());
            will.properties.correlation_data = Some(Bytes::from_static(b"corr"));
            will.properties.user_properties = vec![("a".into(), "b".into())];
        }
        // Encoded with the other version argument: CONNECT keeps its own.
        roundtrip(&Packet::Connect(Box::new(c)), Version::V311);
    }
}
