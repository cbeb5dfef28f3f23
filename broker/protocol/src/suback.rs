//! SUBACK: packet id, 5.0 properties, one return/reason code per filter.

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::properties::PropCtx;
use crate::{DecodeError, Properties, SubAck, Version};

fn valid_code(code: u8, version: Version) -> bool {
    match version {
        Version::V311 => matches!(code, 0x00..=0x02 | 0x80),
        Version::V5 => matches!(
            code,
            0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
        ),
    }
}

impl SubAck {
    pub(crate) fn decode(mut r: Reader, version: Version) -> Result<SubAck, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = match version {
            Version::V5 => Properties::decode(&mut r, PropCtx::SubAck)?,
            Version::V311 => Properties::default(),
        };
        let codes = r.rest();
        if codes.is_empty() {
            return Err(DecodeError::Protocol("SUBACK without return codes"));
        }
        if !codes.iter().all(|&c| valid_code(c, version)) {
            return Err(DecodeError::Protocol("invalid SUBACK return code"));
        }
        Ok(SubAck {
            packet_id,
            properties,
            codes: codes.to_vec(),
        })
    }

    pub(crate) fn remaining_len(&self, version: Version) -> usize {
        let mut len = 2 + self.codes.len();
        if version == Version::V5 {
            len += self.properties.wire_len();
        }
        len
    }

    pub(crate) fn encode_body(&self, version: Version, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if version == Version::V5 {
            self.properties.encode(out);
        }
        out.put_slice(&self.codes);
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, roundtrip};
    use crate::Packet;

    use super::*;

    #[test]
    fn v311_vectors() {
        let v = Some(Version::V311);
        assert_eq!(
            decode_all(&[0x90, 0x06, 0x00, 0x01, 0x00, 0x01, 0x02, 0x80], v),
            Packet::SubAck(SubAck {
                packet_id: 1,
                properties: Properties::default(),
                codes: vec![0, 1, 2, 0x80],
            })
        );
        // 0x87 is a 5.0 code only.
        assert!(matches!(
            decode_err(&[0x90, 0x03, 0x00, 0x01, 0x87], v),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            decode_err(&[0x90, 0x03, 0x00, 0x01, 0x03], v),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            decode_err(&[0x90, 0x02, 0x00, 0x01], v),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            decode_err(&[0x90, 0x03, 0x00, 0x00, 0x00], v),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn v5_vectors() {
        let v = Some(Version::V5);
        let Packet::SubAck(s) = decode_all(&[0x90, 0x05, 0x00, 0x01, 0x00, 0x87, 0xa2], v) else {
            panic!()
        };
        assert_eq!(s.codes, [0x87, 0xa2]);
        assert!(matches!(
            decode_err(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x11], v),
            DecodeError::Protocol(_)
        ));
        // Missing property length.
        assert!(matches!(
            decode_err(&[0x90, 0x02, 0x00, 0x01], v),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn roundtrips() {
        let mut s = SubAck {
            packet_id: 7,
            properties: Properties::default(),
            codes: vec![0, 1, 2, 0x80],
        };
        roundtrip(&Packet::SubAck(s.clone()), Version::V311);
        roundtrip(&Packet::SubAck(s.clone()), Version::V5);
        s.codes.push(0x9e);
        s.properties.reason_string = Some("no shared".into());
        s.properties.user_properties = vec![("a".into(), "b".into())];
        roundtrip(&Packet::SubAck(s), Version::V5);
    }
}
