//! PINGREQ: no variable header, no payload.

use crate::codec::Reader;
use crate::DecodeError;

pub(crate) fn decode(r: Reader) -> Result<(), DecodeError> {
    r.finish()
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, roundtrip};
    use crate::{DecodeError, Packet, Version};

    #[test]
    fn vectors() {
        for v in [Version::V311, Version::V5] {
            assert_eq!(decode_all(&[0xc0, 0x00], Some(v)), Packet::PingReq);
            assert!(matches!(
                decode_err(&[0xc0, 0x01, 0x00], Some(v)),
                DecodeError::Malformed(_)
            ));
            assert!(matches!(
                decode_err(&[0xc1, 0x00], Some(v)),
                DecodeError::Malformed(_)
            ));
            roundtrip(&Packet::PingReq, v);
        }
        // Before CONNECT.
        assert!(matches!(
            decode_err(&[0xc0, 0x00], None),
            DecodeError::Protocol(_)
        ));
    }
}
