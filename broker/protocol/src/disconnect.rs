//! DISCONNECT: empty in 3.1.1; in 5.0 an optional reason code and optional
//! properties (`e0 00` is a normal disconnection; shortest form on encode).

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::properties::PropCtx;
use crate::{DecodeError, Disconnect, Properties, Version};

fn valid_code(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
    )
}

/// Decodes the "optional reason code, optional properties" body shared by
/// DISCONNECT and AUTH (5.0).
pub(crate) fn decode_reason_and_properties(
    mut r: Reader,
    ctx: PropCtx,
    valid: fn(u8) -> bool,
) -> Result<(u8, Properties), DecodeError> {
    if r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let reason = r.u8()?;
    if !valid(reason) {
        return Err(DecodeError::Protocol("invalid reason code"));
    }
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        Properties::decode(&mut r, ctx)?
    };
    r.finish()?;
    Ok((reason, properties))
}

/// Remaining length of the shortest "reason code, properties" encoding.
pub(crate) fn reason_and_properties_len(reason: u8, properties: &Properties) -> usize {
    if !properties.is_empty() {
        1 + properties.wire_len()
    } else if reason != 0 {
        1
    } else {
        0
    }
}

pub(crate) fn encode_reason_and_properties(
    reason: u8,
    properties: &Properties,
    out: &mut BytesMut,
) {
    let len = reason_and_properties_len(reason, properties);
    if len >= 1 {
        out.put_u8(reason);
    }
    if len > 1 {
        properties.encode(out);
    }
}

impl Disconnect {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: u8) -> Disconnect {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(r: Reader, version: Version) -> Result<Disconnect, DecodeError> {
        if version == Version::V311 {
            r.finish()?;
            return Ok(Disconnect::default());
        }
        let (reason, properties) =
            decode_reason_and_properties(r, PropCtx::Disconnect, valid_code)?;
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn remaining_len(&self, version: Version) -> usize {
        match version {
            Version::V311 => 0,
            Version::V5 => reason_and_properties_len(self.reason, &self.properties),
        }
    }

    pub(crate) fn encode_body(&self, version: Version, out: &mut BytesMut) {
        if version == Version::V5 {
            encode_reason_and_properties(self.reason, &self.properties, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, encode_vec, roundtrip};
    use crate::Packet;

    use super::*;

    #[test]
    fn v311_vectors() {
        let v = Some(Version::V311);
        assert_eq!(
            decode_all(&[0xe0, 0x00], v),
            Packet::Disconnect(Disconnect::default())
        );
        assert!(matches!(
            decode_err(&[0xe0, 0x01, 0x00], v),
            DecodeError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(&[0xe2, 0x00], v),
            DecodeError::Malformed(_)
        ));
        assert_eq!(
            encode_vec(&Packet::Disconnect(Disconnect::new(0x8e)), Version::V311),
            [0xe0, 0x00]
        );
    }

    #[test]
    fn v5_vectors() {
        let v = Some(Version::V5);
        assert_eq!(
            decode_all(&[0xe0, 0x00], v),
            Packet::Disconnect(Disconnect::default())
        );
        assert_eq!(
            decode_all(&[0xe0, 0x01, 0x04], v),
            Packet::Disconnect(Disconnect::new(0x04))
        );
        assert_eq!(
            decode_all(&[0xe0, 0x02, 0x00, 0x00], v),
            Packet::Disconnect(Disconnect::default())
        );
        let Packet::Disconnect(d) =
            decode_all(&[0xe0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0a], v)
        else {
            panic!()
        };
        assert_eq!(d.properties.session_expiry_interval, Some(10));
        // Invalid reason code.
        assert!(matches!(
            decode_err(&[0xe0, 0x01, 0x01], v),
            DecodeError::Protocol(_)
        ));
        // Property not allowed in DISCONNECT.
        assert!(matches!(
            decode_err(&[0xe0, 0x04, 0x00, 0x02, 0x17, 0x01], v),
            DecodeError::Protocol(_)
        ));
        // Bytes after the properties.
        assert!(matches!(
            decode_err(&[0xe0, 0x03, 0x00, 0x00, 0x00], v),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn shortest_encoding() {
        let e = |d: Disconnect| encode_vec(&Packet::Disconnect(d), Version::V5);
        assert_eq!(e(Disconnect::default()), [0xe0, 0x00]);
        assert_eq!(e(Disconnect::new(0x8b)), [0xe0, 0x01, 0x8b]);
        let mut d = Disconnect::default();
        d.properties.reason_string = Some("bye".into());
        assert_eq!(
            e(d),
            [0xe0, 0x08, 0x00, 0x06, 0x1f, 0x00, 0x03, b'b', b'y', b'e']
        );
    }

    #[test]
    fn roundtrips() {
        roundtrip(&Packet::Disconnect(Disconnect::default()), Version::V311);
        roundtrip(&Packet::Disconnect(Disconnect::default()), Version::V5);
        roundtrip(&Packet::Disconnect(Disconnect::new(0x98)), Version::V5);
        let mut d = Disconnect::new(0x9c);
        d.properties.server_reference = Some("elsewhere".into());
        d.properties.session_expiry_interval = Some(0);
        d.properties.reason_string = Some("moved".into());
        d.properties.user_properties = vec![("k".into(), "v".into())];
        roundtrip(&Packet::Disconnect(d), Version::V5);
    }
}
