//! Bytes in JSON. A rule row, a rule function's arguments and its result
//! are JSON; a binary that is not UTF-8 (a packed sensor frame, protobuf)
//! crosses as the object `{"$binary": "<base64>"}` (standard alphabet,
//! padded), as the broker writes it. These turn it back into bytes, and
//! bytes into that form.

use serde_json::{Map, Value};

/// The key of the one-key object that carries bytes.
pub const BINARY_TAG: &str = "$binary";

/// The bytes of a `{"$binary": "<base64>"}` value; `None` for any other
/// value (and for a tag whose base64 is invalid).
pub fn binary(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Object(m) if m.len() == 1 => decode(m.get(BINARY_TAG)?.as_str()?),
        _ => None,
    }
}

/// A field as bytes, the way a payload column wants it: a string is its
/// UTF-8, a `{"$binary": ...}` its bytes, anything else its JSON text;
/// `None` for null.
pub fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(binary(other).unwrap_or_else(|| other.to_string().into_bytes())),
    }
}

/// Bytes as a JSON value: a string when they are UTF-8, otherwise
/// `{"$binary": "<base64>"}` (what a rule function returns for bytes).
pub fn to_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => {
            let mut m = Map::new();
            m.insert(BINARY_TAG.to_owned(), Value::String(encode(bytes)));
            Value::Object(m)
        }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64, padded.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padded; `None` when it is not.
fn decode(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(t.len() / 4 * 3);
    for (i, quad) in t.chunks(4).enumerate() {
        let last = i + 1 == t.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_round_trip_through_the_tag() {
        let frame = [0xCB, 0x48, 0xCD, 0x00, 0xFF];
        let v = to_json(&frame);
        assert_eq!(v.to_string(), r#"{"$binary":"y0jNAP8="}"#);
        assert_eq!(binary(&v), Some(frame.to_vec()));
        assert_eq!(bytes(&v), Some(frame.to_vec()));
    }

    #[test]
    fn base64_of_every_length_round_trips() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 200) as u8).collect();
            assert_eq!(decode(&encode(&data)), Some(data));
        }
        assert_eq!(encode(b"CB48CD"), "Q0I0OENE");
        assert_eq!(decode("y0jN"), Some(vec![0xCB, 0x48, 0xCD]));
        for bad in ["y0j", "y0j!", "=y0j", "y0==y0jN", "y==="] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn other_values_are_not_binaries() {
        assert_eq!(binary(&serde_json::json!("y0jN")), None);
        assert_eq!(
            binary(&serde_json::json!({"$binary": "y0jN", "x": 1})),
            None
        );
        assert_eq!(
            bytes(&serde_json::json!("héllo")),
            Some("héllo".as_bytes().to_vec())
        );
        assert_eq!(
            bytes(&serde_json::json!({"a": 1})),
            Some(br#"{"a":1}"#.to_vec())
        );
        assert_eq!(bytes(&Value::Null), None);
        assert_eq!(to_json(b"text"), serde_json::json!("text"));
    }
}
