//! PUBACK, plus the codec shared by the four publish acknowledgements
//! (PUBACK, PUBREC, PUBREL, PUBCOMP): packet id, and in 5.0 an optional
//! reason code and optional properties (shortest form on encode).

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::properties::PropCtx;
use crate::{Ack, DecodeError, Properties, Version};

/// Reason codes allowed in PUBACK (and PUBREC).
pub(crate) fn valid_code(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
    )
}

pub(crate) fn decode(r: Reader, version: Version) -> Result<Ack, DecodeError> {
    decode_ack(r, version, valid_code)
}

/// Decodes the body of any of the four acks; `valid` says which 5.0 reason
/// codes the packet kind allows.
pub(crate) fn decode_ack(
    mut r: Reader,
    version: Version,
    valid: fn(u8) -> bool,
) -> Result<Ack, DecodeError> {
    let packet_id = r.packet_id()?;
    if version == Version::V311 || r.is_empty() {
        r.finish()?;
        return Ok(Ack::new(packet_id, 0));
    }
    let reason = r.u8()?;
    if !valid(reason) {
        return Err(DecodeError::Protocol("invalid reason code"));
    }
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(&mut r, PropCtx::Ack)?
    };
    r.finish()?;
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

/// Remaining length of an ack in its shortest form.
pub(crate) fn ack_remaining_len(ack: &Ack, version: Version) -> usize {
    match version {
        Version::V311 => 2,
        Version::V5 if ack.properties.is_empty() => {
            if ack.reason == 0 {
                2
            } else {
                3
            }
        }
        Version::V5 => 3 + ack.properties.wire_len(),
    }
}

pub(crate) fn encode_ack_body(ack: &Ack, version: Version, out: &mut BytesMut) {
    out.put_u16(ack.packet_id);
    let len = ack_remaining_len(ack, version);
    if len >= 3 {
        out.put_u8(ack.reason);
    }
    if len > 3 {
        ack.properties.encode(out);
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, encode_vec, roundtrip};
    use crate::Packet;

    use super::*;

    #[test]
    fn v311_vectors() {
        let p = decode_all(&[0x40, 0x02, 0x00, 0x05], Some(Version::V311));
        assert_eq!(p, Packet::PubAck(Ack::new(5, 0)));
        // Packet id 0.
        assert!(matches!(
            decode_err(&[0x40, 0x02, 0x00, 0x00], Some(Version::V311)),
            DecodeError::Protocol(_)
        ));
        // Reason code bytes don't exist in 3.1.1.
        assert!(matches!(
            decode_err(&[0x40, 0x03, 0x00, 0x05, 0x00], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        // Too short.
        assert!(matches!(
            decode_err(&[0x40, 0x01, 0x00], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        // Reserved flags.
        assert!(matches!(
            decode_err(&[0x42, 0x02, 0x00, 0x05], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        // Reason code dropped when encoding for 3.1.1.
        assert_eq!(
            encode_vec(&Packet::PubAck(Ack::new(5, 0x80)), Version::V311),
            [0x40, 0x02, 0x00, 0x05]
        );
    }

    #[test]
    fn v5_vectors() {
        let v = Some(Version::V5);
        assert_eq!(
            decode_all(&[0x40, 0x02, 0x00, 0x05], v),
            Packet::PubAck(Ack::new(5, 0))
        );
        assert_eq!(
            decode_all(&[0x40, 0x03, 0x00, 0x05, 0x10], v),
            Packet::PubAck(Ack::new(5, 0x10))
        );
        assert_eq!(
            decode_all(&[0x40, 0x04, 0x00, 0x05, 0x00, 0x00], v),
            Packet::PubAck(Ack::new(5, 0))
        );
        let Packet::PubAck(a) = decode_all(
            &[0x40, 0x08, 0x00, 0x05, 0x80, 0x04, 0x1f, 0x00, 0x01, b'x'],
            v,
        ) else {
            panic!()
        };
        assert_eq!(a.properties.reason_string.as_deref(), Some("x"));
        // Invalid reason code.
        assert!(matches!(
            decode_err(&[0x40, 0x03, 0x00, 0x05, 0x92], v),
            DecodeError::Protocol(_)
        ));
        // Duplicate Reason String.
        assert!(matches!(
            decode_err(
                &[
                    0x40, 0x0c, 0x00, 0x05, 0x80, 0x08, 0x1f, 0x00, 0x01, b'x', 0x1f, 0x00, 0x01,
                    b'y'
                ],
                v
            ),
            DecodeError::Protocol(_)
        ));
        // Property not allowed in an ack.
        assert!(matches!(
            decode_err(&[0x40, 0x07, 0x00, 0x05, 0x00, 0x03, 0x23, 0x00, 0x01], v),
            DecodeError::Protocol(_)
        ));
        // Property length past the end.
        assert!(matches!(
            decode_err(&[0x40, 0x05, 0x00, 0x05, 0x00, 0x02, 0x1f], v),
            DecodeError::Malformed(_)
        ));
        // Trailing byte after the properties.
        assert!(matches!(
            decode_err(&[0x40, 0x05, 0x00, 0x05, 0x00, 0x00, 0x00], v),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn shortest_encoding() {
        assert_eq!(
            encode_vec(&Packet::PubAck(Ack::new(1, 0)), Version::V5),
            [0x40, 0x02, 0x00, 0x01]
        );
        assert_eq!(
            encode_vec(&Packet::PubAck(Ack::new(1, 0x10)), Version::V5),
            [0x40, 0x03, 0x00, 0x01, 0x10]
        );
        let mut a = Ack::new(1, 0);
        a.properties.reason_string = Some("r".into());
        assert_eq!(
            encode_vec(&Packet::PubAck(a), Version::V5),
            [0x40, 0x08, 0x00, 0x01, 0x00, 0x04, 0x1f, 0x00, 0x01, b'r']
        );
    }

    #[test]
    fn roundtrips() {
        roundtrip(&Packet::PubAck(Ack::new(1, 0)), Version::V311);
        roundtrip(&Packet::PubAck(Ack::new(65535, 0)), Version::V5);
        roundtrip(&Packet::PubAck(Ack::new(2, 0x97)), Version::V5);
        let mut a = Ack::new(3, 0);
        a.properties.user_properties = vec![("a".into(), "b".into())];
        roundtrip(&Packet::PubAck(a.clone()), Version::V5);
        a.reason = 0x99;
        a.properties.reason_string = Some("bad payload".into());
        roundtrip(&Packet::PubAck(a), Version::V5);
    }
}
