//! AUTH (5.0 only; packet type 15 is malformed in 3.1.1): optional reason
//! code and optional properties, `f0 00` meaning success.

use bytes::BytesMut;

use crate::codec::Reader;
use crate::disconnect::{
    decode_reason_and_properties, encode_reason_and_properties, reason_and_properties_len,
};
use crate::properties::PropCtx;
use crate::{Auth, DecodeError};

fn valid_code(code: u8) -> bool {
    matches!(code, 0x00 | 0x18 | 0x19)
}

impl Auth {
    pub(crate) fn decode(r: Reader) -> Result<Auth, DecodeError> {
        let (reason, properties) = decode_reason_and_properties(r, PropCtx::Auth, valid_code)?;
        Ok(Auth { reason, properties })
    }

    pub(crate) fn remaining_len(&self) -> usize {
        reason_and_properties_len(self.reason, &self.properties)
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        encode_reason_and_properties(self.reason, &self.properties, out);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::testutil::{decode_all, decode_err, encode_vec, roundtrip};
    use crate::{Packet, Version};

    use super::*;

    #[test]
    fn vectors() {
        let v = Some(Version::V5);
        assert_eq!(decode_all(&[0xf0, 0x00], v), Packet::Auth(Auth::default()));
        assert_eq!(
            encode_vec(&Packet::Auth(Auth::default()), Version::V5),
            [0xf0, 0x00]
        );
        let Packet::Auth(a) = decode_all(
            &[
                0xf0, 0x0b, 0x18, 0x09, 0x15, 0x00, 0x01, b'm', 0x16, 0x00, 0x02, 0x00, 0xff,
            ],
            v,
        ) else {
            panic!()
        };
        assert_eq!(a.reason, 0x18);
        assert_eq!(a.properties.authentication_method.as_deref(), Some("m"));
        assert_eq!(
            a.properties.authentication_data,
            Some(Bytes::from_static(&[0x00, 0xff]))
        );
        // Authentication Data without Method.
        assert!(matches!(
            decode_err(&[0xf0, 0x07, 0x18, 0x05, 0x16, 0x00, 0x02, 0x00, 0xff], v),
            DecodeError::Protocol(_)
        ));
        // Invalid reason code.
        assert!(matches!(
            decode_err(&[0xf0, 0x01, 0x04], v),
            DecodeError::Protocol(_)
        ));
        // Reserved flags.
        assert!(matches!(
            decode_err(&[0xf1, 0x00], v),
            DecodeError::Malformed(_)
        ));
        // AUTH does not exist in 3.1.1 (rejected from the first byte).
        assert!(matches!(
            decode_err(&[0xf0, 0x00], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(&[0xf0], Some(Version::V311)),
            DecodeError::Malformed(_)
        ));
        // Before CONNECT.
        assert!(matches!(
            decode_err(&[0xf0, 0x00], None),
            DecodeError::Protocol(_)
        ));
    }

    #[test]
    fn roundtrips() {
        roundtrip(&Packet::Auth(Auth::default()), Version::V5);
        roundtrip(
            &Packet::Auth(Auth {
                reason: 0x19,
                properties: Default::default(),
            }),
            Version::V5,
        );
        let mut a = Auth {
            reason: 0x18,
            properties: Default::default(),
        };
        a.properties.authentication_method = Some("SCRAM-SHA-1".into());
        a.properties.authentication_data = Some(Bytes::from_static(b"client-first"));
        a.properties.reason_string = Some("continue".into());
        a.properties.user_properties = vec![("k".into(), "v".into())];
        roundtrip(&Packet::Auth(a), Version::V5);
    }
}
