//! UNSUBACK: packet id; in 5.0 also properties and one reason code per
//! filter (3.1.1 has no payload).

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::properties::PropCtx;
use crate::{DecodeError, Properties, UnsubAck, Version};

fn valid_code(code: u8) -> bool {
    matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

impl UnsubAck {
    pub(crate) fn decode(mut r: Reader, version: Version) -> Result<UnsubAck, DecodeError> {
        let packet_id = r.packet_id()?;
        if version == Version::V311 {
            r.finish()?;
            return Ok(UnsubAck {
                packet_id,
                properties: Properties::default(),
                codes: Vec::new(),
            });
        }
        let properties = Properties::decode(&mut r, PropCtx::UnsubAck)?;
        let codes = r.rest();
        if codes.is_empty() {
            return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
        }
        if !codes.iter().all(|&c| valid_code(c)) {
            return Err(DecodeError::Protocol("invalid UNSUBACK reason code"));
        }
        Ok(UnsubAck {
            packet_id,
            properties,
            codes: codes.to_vec(),
        })
    }

    pub(crate) fn remaining_len(&self, version: Version) -> usize {
        match version {
            Version::V311 => 2,
            Version::V5 => 2 + self.properties.wire_len() + self.codes.len(),
        }
    }

    pub(crate) fn encode_body(&self, version: Version, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if version == Version::V5 {
            self.properties.encode(out);
            out.put_slice(&self.codes);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, encode_vec, roundtrip};
    use crate::Packet;

    use super::*;

    fn unsuback(packet_id: u16, codes: Vec<u8>) -> UnsubAck {
        UnsubAck {
            packet_id,
            properties: Properties::default(),
            codes,
        }
    }

    #[test]
    fn v311_has_no_payload() {
        let v = Some(Version::V311);
        assert_eq!(
            decode_all(&[0xb0, 0x02, 0x00, 0x04], v),
            Packet::UnsubAck(unsuback(4, vec![]))
        );
        assert!(matches!(
            decode_err(&[0xb0, 0x03, 0x00, 0x04, 0x00], v),
            DecodeError::Malformed(_)
        ));
        assert_eq!(
            encode_vec(&Packet::UnsubAck(unsuback(4, vec![0, 0x11])), Version::V311),
            [0xb0, 0x02, 0x00, 0x04]
        );
    }

    #[test]
    fn v5_vectors() {
        let v = Some(Version::V5);
        assert_eq!(
            decode_all(&[0xb0, 0x05, 0x00, 0x04, 0x00, 0x00, 0x11], v),
            Packet::UnsubAck(unsuback(4, vec![0, 0x11]))
        );
        assert!(matches!(
            decode_err(&[0xb0, 0x04, 0x00, 0x04, 0x00, 0x02], v),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            decode_err(&[0xb0, 0x03, 0x00, 0x04, 0x00], v),
            DecodeError::Protocol(_)
        ));
        assert!(matches!(
            decode_err(&[0xb0, 0x04, 0x00, 0x00, 0x00, 0x00], v),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn roundtrips() {
        roundtrip(&Packet::UnsubAck(unsuback(1, vec![])), Version::V311);
        let mut u = unsuback(2, vec![0x00, 0x11, 0x87]);
        roundtrip(&Packet::UnsubAck(u.clone()), Version::V5);
        u.properties.reason_string = Some("partly".into());
        roundtrip(&Packet::UnsubAck(u), Version::V5);
    }
}
