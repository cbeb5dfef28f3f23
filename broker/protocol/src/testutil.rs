//! Test helpers shared by the per-packet unit tests.

use bytes::BytesMut;

use crate::{decode, encode, encoded_len, DecodeError, Packet, Version};

/// Large enough for every test vector.
pub(crate) const MAX: usize = 1 << 20;

/// Asserts that every strict prefix of `bytes` decodes to `Ok(None)` and
/// leaves the buffer untouched.
pub(crate) fn assert_prefixes_incomplete(bytes: &[u8], version: Option<Version>) {
    for n in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..n]);
        assert_eq!(
            decode(&mut buf, version, MAX),
            Ok(None),
            "prefix {n} of {bytes:02x?}"
        );
        assert_eq!(&buf[..], &bytes[..n]);
    }
}

/// Decodes `bytes`, which must hold exactly one valid packet, and checks
/// that every strict prefix is incomplete.
pub(crate) fn decode_all(bytes: &[u8], version: Option<Version>) -> Packet {
    assert_prefixes_incomplete(bytes, version);
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, version, MAX) {
        Ok(Some(p)) => {
            assert!(buf.is_empty(), "bytes left in the buffer: {buf:02x?}");
            p
        }
        other => panic!("{bytes:02x?} decoded to {other:?}"),
    }
}

/// Decodes `bytes`, which must be rejected, and returns the error.
pub(crate) fn decode_err(bytes: &[u8], version: Option<Version>) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, version, MAX) {
        Err(e) => e,
        other => panic!("{bytes:02x?} decoded to {other:?}"),
    }
}

/// Encodes `packet` for `version` and returns the bytes, checking
/// `encoded_len`.
pub(crate) fn encode_vec(packet: &Packet, version: Version) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out);
    assert_eq!(encoded_len(packet, version), out.len(), "{packet:?}");
    out.to_vec()
}

/// Encode, check `encoded_len`, decode (also every prefix) and compare.
pub(crate) fn roundtrip(packet: &Packet, version: Version) {
    let bytes = encode_vec(packet, version);
    let decode_version = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    let decoded = decode_all(&bytes, decode_version);
    assert_eq!(&decoded, packet, "bytes {bytes:02x?}");
}
