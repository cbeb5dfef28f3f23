//! Shared wire primitives: the fixed header, variable byte integers, u16/u32,
//! UTF-8 strings (as [`ByteStr`]) and binary data (as [`Bytes`]).
//!
//! Decoding goes through [`Reader`], a cursor over the `Bytes` of one whole
//! packet: every read is checked (a short read is a malformed packet, never a
//! panic) and strings / binary fields are zero-copy slices of the packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{ByteStr, DecodeError};

/// Largest value a variable byte integer (4 bytes) can carry.
pub(crate) const MAX_VARINT: usize = 268_435_455;

/// Parses the remaining length that follows the first fixed-header byte.
///
/// `buf` starts right after the packet type byte. Returns the value and the
/// number of bytes it occupies, or `Ok(None)` when more bytes are needed.
pub(crate) fn parse_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::Malformed("non-minimal variable byte integer"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// Number of bytes the variable byte integer encoding of `v` takes.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `v` as a variable byte integer. Values above [`MAX_VARINT`] cannot
/// be represented; they are clamped (the caller built an impossible packet).
pub(crate) fn put_varint(out: &mut BytesMut, v: usize) {
    let mut v = v.min(MAX_VARINT);
    loop {
        let mut byte = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Writes a two-byte length followed by `data` (binary data or a UTF-8
/// string). Data longer than 65535 bytes cannot be represented and is
/// truncated (a caller bug: decoded data always fits).
pub(crate) fn put_binary(out: &mut BytesMut, data: &[u8]) {
    let data = data.get(..usize::from(u16::MAX)).unwrap_or(data);
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

/// Writes an MQTT UTF-8 string.
pub(crate) fn put_str(out: &mut BytesMut, s: &ByteStr) {
    put_binary(out, s.as_bytes());
}

/// Encoded length of a length-prefixed string or binary field.
pub(crate) fn binary_len(data: &[u8]) -> usize {
    2 + data.len().min(usize::from(u16::MAX))
}

/// Writes the fixed header: packet type/flags byte and remaining length.
pub(crate) fn put_fixed_header(out: &mut BytesMut, first: u8, remaining: usize) {
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first);
    put_varint(out, remaining);
}

/// Checked cursor over the body of one packet.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes the next `n` bytes (zero copy).
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Malformed(
                "length field runs past the end of the packet",
            ));
        }
        Ok(self.buf.split_to(n))
    }

    /// Takes everything not yet read (zero copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Malformed("packet ends early"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    /// A non-zero packet identifier.
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::Protocol("packet identifier 0")),
            id => Ok(id),
        }
    }

    /// A variable byte integer (at most 4 bytes, minimally encoded).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match parse_remaining_length(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value as u32)
            }
            None => Err(DecodeError::Malformed(
                "packet ends inside a variable byte integer",
            )),
        }
    }

    /// Two-byte length followed by that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// An MQTT UTF-8 string: well-formed UTF-8 without U+0000.
    pub(crate) fn string(&mut self) -> Result<ByteStr, DecodeError> {
        ByteStr::from_bytes(self.binary()?).ok_or(DecodeError::Malformed("invalid UTF-8 string"))
    }

    /// Fails when bytes are left over after the packet's declared contents.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "bytes left over at the end of the packet",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &'static [u8]) -> Reader {
        Reader::new(Bytes::from_static(bytes))
    }

    #[test]
    fn remaining_length_boundaries() {
        let cases: &[(&[u8], usize)] = &[
            (&[0x00], 0),
            (&[0x7f], 127),
            (&[0x80, 0x01], 128),
            (&[0xff, 0x7f], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xff, 0xff, 0x7f], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xff, 0xff, 0xff, 0x7f], MAX_VARINT),
        ];
        for &(bytes, value) in cases {
            assert_eq!(
                parse_remaining_length(bytes),
                Ok(Some((value, bytes.len()))),
                "{bytes:?}"
            );
            assert_eq!(varint_len(value), bytes.len());
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(&out[..], bytes);
        }
    }

    #[test]
    fn remaining_length_incomplete() {
        assert_eq!(parse_remaining_length(&[]), Ok(None));
        assert_eq!(parse_remaining_length(&[0x80]), Ok(None));
        assert_eq!(parse_remaining_length(&[0xff, 0xff, 0xff]), Ok(None));
    }

    #[test]
    fn remaining_length_too_long_is_malformed() {
        assert!(matches!(
            parse_remaining_length(&[0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::Malformed(_))
        ));
        // Detected as soon as the fourth byte still has the continuation bit.
        assert!(matches!(
            parse_remaining_length(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn remaining_length_non_minimal_is_malformed() {
        for bytes in [
            &[0x80, 0x00][..],
            &[0x80, 0x80, 0x00],
            &[0x81, 0x80, 0x80, 0x00],
        ] {
            assert!(
                matches!(
                    parse_remaining_length(bytes),
                    Err(DecodeError::Malformed(_))
                ),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn reader_primitives() {
        let mut r = reader(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x80, 0x01]);
        assert_eq!(r.u8(), Ok(0x01));
        assert_eq!(r.u16(), Ok(0x0203));
        assert_eq!(r.u32(), Ok(0x0405_0607));
        assert_eq!(r.varint(), Ok(128));
        assert!(r.is_empty());
        assert!(r.finish().is_ok());
        assert!(matches!(r.u8(), Err(DecodeError::Malformed(_))));
        assert!(matches!(r.u16(), Err(DecodeError::Malformed(_))));
        assert!(matches!(r.u32(), Err(DecodeError::Malformed(_))));
        assert!(matches!(r.varint(), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn reader_strings() {
        let mut r = reader(&[0x00, 0x02, b'h', b'i', 0x00, 0x01, 0xff]);
        assert_eq!(r.string().map(|s| s.to_string()), Ok("hi".to_string()));
        assert_eq!(r.binary(), Ok(Bytes::from_static(&[0xff])));
        // Invalid UTF-8.
        assert!(matches!(
            reader(&[0x00, 0x01, 0xff]).string(),
            Err(DecodeError::Malformed(_))
        ));
        // Surrogate half encoded in UTF-8 (CESU) is not valid UTF-8.
        assert!(matches!(
            reader(&[0x00, 0x03, 0xed, 0xa0, 0x80]).string(),
            Err(DecodeError::Malformed(_))
        ));
        // U+0000.
        assert!(matches!(
            reader(&[0x00, 0x02, b'a', 0x00]).string(),
            Err(DecodeError::Malformed(_))
        ));
        // Length running past the end.
        assert!(matches!(
            reader(&[0x00, 0x05, b'a']).string(),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            reader(&[0x00, 0x05, b'a']).binary(),
            Err(DecodeError::Malformed(_))
        ));
        // Leftover bytes.
        let mut r = reader(&[0x00, 0x00, 0x01]);
        assert_eq!(r.binary(), Ok(Bytes::new()));
        assert!(matches!(r.finish(), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn packet_id_zero_is_protocol_error() {
        assert!(matches!(
            reader(&[0, 0]).packet_id(),
            Err(DecodeError::Protocol(_))
        ));
        assert_eq!(reader(&[0, 7]).packet_id(), Ok(7));
    }

    #[test]
    fn put_binary_and_str() {
        let mut out = BytesMut::new();
        put_str(&mut out, &ByteStr::from("ab"));
        put_binary(&mut out, &[1]);
        assert_eq!(&out[..], &[0, 2, b'a', b'b', 0, 1, 1]);
        assert_eq!(binary_len(b"ab"), 4);
    }
}
