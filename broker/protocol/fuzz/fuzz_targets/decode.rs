//! Fuzz target `decode`: arbitrary bytes must never panic the decoder, and
//! every packet it accepts must survive encode -> decode unchanged (with
//! `encoded_len` equal to the bytes written).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use midge_protocol::{decode, encode, encoded_len, Packet, Version};

fn check_roundtrip(packet: &Packet, version: Version) {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out);
    assert_eq!(out.len(), encoded_len(packet, version), "{packet:?}");
    let total = out.len();
    // A CONNECT announces its own version; decode it like a first packet.
    let decode_version = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    let again = decode(&mut out, decode_version, total);
    assert_eq!(again.as_ref().ok().and_then(|p| p.as_ref()), Some(packet));
    assert!(out.is_empty());
}

fn run(data: &[u8], mut version: Option<Version>, max_size: usize) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode(&mut buf, version, max_size) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before);
                if let Packet::Connect(c) = &packet {
                    version = Some(c.version);
                }
                // `version` is Some after the first (CONNECT) packet.
                if let Some(v) = version {
                    check_roundtrip(&packet, v);
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            Err(e) => {
                let _ = e.reason_code();
                break;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let max = data.first().map_or(1, |&b| usize::from(b) * 4 + 2);
    run(data, None, usize::MAX);
    run(data, Some(Version::V311), usize::MAX);
    run(data, Some(Version::V5), usize::MAX);
    run(data, Some(Version::V5), max);
    run(data, Some(Version::V311), max);
});
