//! PINGRESP: no variable header, no payload.

use crate::codec::Reader;
use crate::DecodeError;

pub(crate) fn decode(r: Reader) -> Result<(), DecodeError> {
    r.finish()
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, encode_vec, roundtrip};
    use crate::{DecodeError, Packet, Version};

    #[test]
    fn vectors() {
        for v in [Version::V311, Version::V5] {
            assert_eq!(decode_all(&[0xd0, 0x00], Some(v)), Packet::PingResp);
            assert!(matches!(
                decode_err(&[0xd0, 0x02, 0x00, 0x00], Some(v)),
                DecodeError::Malformed(_)
            ));
            assert!(matches!(
                decode_err(&[0xd8, 0x00], Some(v)),
                DecodeError::Malformed(_)
            ));
            assert_eq!(encode_vec(&Packet::PingResp, v), [0xd0, 0x00]);
            roundtrip(&Packet::PingResp, v);
        }
    }
}
