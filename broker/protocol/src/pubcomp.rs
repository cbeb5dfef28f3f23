//! PUBCOMP: QoS 2 publish complete (step 3 of 3).
//! Same shape as PUBACK; the shared codec lives in `puback.rs`.

use crate::codec::Reader;
use crate::{Ack, DecodeError, Version};

/// Reason codes allowed in PUBCOMP.
fn valid_code(code: u8) -> bool {
    matches!(code, 0x00 | 0x92)
}

pub(crate) fn decode(r: Reader, version: Version) -> Result<Ack, DecodeError> {
    crate::puback::decode_ack(r, version, valid_code)
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, encode_vec, roundtrip};
    use crate::{Packet, Properties, PropertyValues};

    use super::*;

    #[test]
    fn vectors() {
        for v in [Version::V311, Version::V5] {
            assert_eq!(
                decode_all(&[0x70, 0x02, 0x12, 0x34], Some(v)),
                Packet::PubComp(Ack::new(0x1234, 0))
            );
            // Packet id 0.
            assert!(matches!(
                decode_err(&[0x70, 0x02, 0x00, 0x00], Some(v)),
                DecodeError::Protocol(_)
            ));
            // Wrong fixed-header flags.
            assert!(matches!(
                decode_err(&[0x72, 0x02, 0x00, 0x01], Some(v)),
                DecodeError::Malformed(_)
            ));
        }
        let v5 = Some(Version::V5);
        assert_eq!(
            decode_all(&[0x70, 0x03, 0x00, 0x01, 0x92], v5),
            Packet::PubComp(Ack::new(1, 0x92))
        );
        assert!(matches!(
            decode_err(&[0x70, 0x03, 0x00, 0x01, 0x10], v5),
            DecodeError::Protocol(_)
        ));
        assert_eq!(
            encode_vec(&Packet::PubComp(Ack::new(1, 0)), Version::V5),
            [0x70, 0x02, 0x00, 0x01]
        );
        assert_eq!(
            encode_vec(&Packet::PubComp(Ack::new(1, 0x92)), Version::V5),
            [0x70, 0x03, 0x00, 0x01, 0x92]
        );
    }

    #[test]
    fn roundtrips() {
        roundtrip(&Packet::PubComp(Ack::new(9, 0)), Version::V311);
        roundtrip(&Packet::PubComp(Ack::new(9, 0x92)), Version::V5);
        let properties = Properties::from(PropertyValues {
            reason_string: Some("why".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..PropertyValues::default()
        });
        roundtrip(
            &Packet::PubComp(Ack {
                packet_id: 10,
                reason: 0,
                properties,
            }),
            Version::V5,
        );
    }
}
