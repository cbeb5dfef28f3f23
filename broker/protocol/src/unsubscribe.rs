//! UNSUBSCRIBE: packet id, 5.0 properties (User Property only), one or more
//! topic filters.

use bytes::{BufMut, BytesMut};

use crate::codec::{binary_len, put_str, Reader};
use crate::properties::PropCtx;
use crate::{topic, DecodeError, Properties, Unsubscribe, Version};

impl Unsubscribe {
    pub(crate) fn decode(mut r: Reader, version: Version) -> Result<Unsubscribe, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = match version {
            Version::V5 => Properties::decode(&mut r, PropCtx::Unsubscribe)?,
            Version::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            if !topic::valid_filter(&filter) {
                return Err(DecodeError::Malformed("invalid topic filter"));
            }
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn remaining_len(&self, version: Version) -> usize {
        let mut len = 2;
        if version == Version::V5 {
            len += self.properties.wire_len();
        }
        len + self
            .filters
            .iter()
            .map(|f| binary_len(f.as_bytes()))
            .sum::<usize>()
    }

    pub(crate) fn encode_body(&self, version: Version, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if version == Version::V5 {
            self.properties.encode(out);
        }
        for filter in &self.filters {
            put_str(out, filter);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{decode_all, decode_err, roundtrip};
    use crate::{ByteStr, Packet};

    use super::*;

    #[test]
    fn vectors() {
        let p = decode_all(
            &[
                0xa2, 0x09, 0x00, 0x03, 0x00, 0x01, b'a', 0x00, 0x02, b'+', b'/',
            ],
            Some(Version::V311),
        );
        assert_eq!(
            p,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 3,
                properties: Properties::default(),
                filters: vec![ByteStr::from("a"), ByteStr::from("+/")],
            })
        );
        let v5 = Some(Version::V5);
        assert!(matches!(
            decode_all(&[0xa2, 0x06, 0x00, 0x03, 0x00, 0x00, 0x01, b'a'], v5),
            Packet::Unsubscribe(_)
        ));
        // Reserved flags.
        assert!(matches!(
            decode_err(&[0xa0, 0x05, 0x00, 0x03, 0x00, 0x01, b'a'], v5),
            DecodeError::Malformed(_)
        ));
        // No filters.
        assert!(matches!(
            decode_err(&[0xa2, 0x03, 0x00, 0x03, 0x00], v5),
            DecodeError::Protocol(_)
        ));
        // Packet id 0.
        assert!(matches!(
            decode_err(&[0xa2, 0x06, 0x00, 0x00, 0x00, 0x00, 0x01, b'a'], v5),
            DecodeError::Protocol(_)
        ));
        // Invalid filter.
        assert!(matches!(
            decode_err(&[0xa2, 0x07, 0x00, 0x03, 0x00, 0x00, 0x02, b'#', b'a'], v5),
            DecodeError::Malformed(_)
        ));
        // Subscription Identifier is not an UNSUBSCRIBE property.
        assert!(matches!(
            decode_err(
                &[0xa2, 0x08, 0x00, 0x03, 0x02, 0x0b, 0x01, 0x00, 0x01, b'a'],
                v5
            ),
            DecodeError::Protocol(_)
        ));
        // Truncated filter.
        assert!(matches!(
            decode_err(&[0xa2, 0x05, 0x00, 0x03, 0x00, 0x00, 0x01], v5),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn roundtrips() {
        let mut u = Unsubscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec!["a/b".into(), "$share/g/#".into()],
        };
        roundtrip(&Packet::Unsubscribe(u.clone()), Version::V311);
        u.properties.user_properties = vec![("k".into(), "v".into())];
        roundtrip(&Packet::Unsubscribe(u), Version::V5);
    }
}
