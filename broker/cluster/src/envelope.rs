//! The envelope of a message crossing nodes: the payload travels as the NATS
//! payload, untouched; everything else is a few short NATS headers.
//!
//! | header | value | when |
//! |---|---|---|
//! | `M-Q` | QoS digit, then `r` if retained (`1`, `0r`) | always |
//! | `M-O` | the origin node's name | always |
//! | `M-T` | receive time on the origin node, ms since the Unix epoch | the message expires (v5 Message Expiry Interval), or it is stored (offline queues) |
//! | `M-P` | the v5 PUBLISH properties in MQTT's own encoding (user properties in order), base64 without padding | any property is set |
//! | `M-C` | the publishing client's id | the message came from a client (No Local, `$events`) |
//! | `Nats-Msg-Id` | `<node>.<run>.<counter>` | JetStream publishes (dedup of a retried publish) |
//! | `M-N` | how many messages the payload holds | a batch (below) |
//!
//! **Batches (QoS 0).** The outbound task sends what it finds queued at once:
//! QoS 0 messages on one topic go as one NATS message on the topic's subject,
//! with `M-Q: 0`, `M-O`, `M-I` and `M-N: <count>` as headers and the messages
//! one after another as the payload ([`Envelope::encode_item`]): a flags byte
//! (1 retain, 2 client id, 4 receive time, 8 properties), then the client id
//! (u16 length, bytes), the receive time (i64), the properties (MQTT's own
//! encoding, which carries its length) when flagged, and the payload (u32
//! length, bytes); integers big-endian. NATS then parses, routes and delivers
//! one message where it did one per MQTT message, and so does each node's
//! client; a single queued message still goes in the plain form above. Every
//! node of a cluster must read batches (this version or later).
//!
//! The receiver counts message expiry from `M-T`, so the time a message spent
//! in transit or in a stream is subtracted (clocks of the nodes are assumed to
//! agree within a second, as NTP gives).

use async_nats::HeaderMap;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use midge_protocol::{ByteStr, Properties, QoS};

pub const H_QOS: &str = "M-Q";
pub const H_ORIGIN: &str = "M-O";
pub const H_TIME: &str = "M-T";
pub const H_PROPS: &str = "M-P";
pub const H_CLIENT: &str = "M-C";
pub const H_BATCH: &str = "M-N";

/// A batch is cut past this many payload bytes: far below NATS's default
/// `max_payload` (1 MiB), and large enough that the per-message cost of NATS
/// is spread over many small messages.
pub const BATCH_MAX_BYTES: usize = 64 * 1024;

/// A batch holds at most this many messages (a bound on the receiver's
/// allocation per NATS message, whatever the header says).
pub const BATCH_MAX_ITEMS: usize = 1024;

const F_RETAIN: u8 = 1;
const F_CLIENT: u8 = 2;
const F_TIME: u8 = 4;
const F_PROPS: u8 = 8;

/// A message as it crosses nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
    /// Node the message entered the cluster on.
    pub origin: String,
    /// Publishing client, if a client published it.
    pub client_id: Option<String>,
    /// Receive time on the origin node (ms since the epoch), when carried.
    pub timestamp_ms: Option<i64>,
}

/// Why a peer's message was refused (it names the header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("no headers (not a Midge cluster message)")]
    NoHeaders,
    #[error("header {0}: missing")]
    Missing(&'static str),
    #[error("header {0}: bad value {1:?}")]
    Bad(&'static str, String),
    #[error("batch: message {0} of {1}: {2}")]
    Batch(usize, usize, &'static str),
}

impl Envelope {
    /// The headers for this envelope; `always_time` adds `M-T` even when
    /// the message does not expire (stored messages).
    pub fn headers(&self, always_time: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        let q = match (self.qos, self.retain) {
            (QoS::AtMostOnce, false) => "0",
            (QoS::AtLeastOnce, false) => "1",
            (QoS::ExactlyOnce, false) => "2",
            (QoS::AtMostOnce, true) => "0r",
            (QoS::AtLeastOnce, true) => "1r",
            (QoS::ExactlyOnce, true) => "2r",
        };
        h.insert(H_QOS, q);
        h.insert(H_ORIGIN, self.origin.as_str());
        if let Some(c) = &self.client_id {
            // Header values cannot hold CR / LF; such an id is simply not
            // carried (it only serves No Local, which cannot apply remotely:
            // a client id lives on one node at a time).
            if !c.bytes().any(|b| b == b'\r' || b == b'\n') {
                h.insert(H_CLIENT, c.as_str());
            }
        }
        let expires = self.properties.message_expiry_interval.is_some();
        if let Some(t) = self.timestamp_ms.filter(|_| expires || always_time) {
            h.insert(H_TIME, t.to_string().as_str());
        }
        if !self.properties.is_empty() {
            let mut buf = BytesMut::new();
            self.properties.encode_message(&mut buf);
            h.insert(H_PROPS, B64.encode(&buf).as_str());
        }
        h
    }

    /// Appends this message to a batch's payload (see the module doc); the
    /// batch's headers carry the QoS (0) and the origin.
    pub fn encode_item(&self, out: &mut BytesMut) {
        let client = self
            .client_id
            .as_deref()
            .filter(|c| u16::try_from(c.len()).is_ok());
        let time = self
            .timestamp_ms
            .filter(|_| self.properties.message_expiry_interval.is_some());
        let props = !self.properties.is_empty();
        let flags = (u8::from(self.retain) * F_RETAIN)
            | (u8::from(client.is_some()) * F_CLIENT)
            | (u8::from(time.is_some()) * F_TIME)
            | (u8::from(props) * F_PROPS);
        out.reserve(self.payload.len() + 16);
        out.put_u8(flags);
        if let Some(c) = client {
            out.put_u16(c.len() as u16);
            out.put_slice(c.as_bytes());
        }
        if let Some(t) = time {
            out.put_i64(t);
        }
        if props {
            self.properties.encode_message(out);
        }
        // (An MQTT payload is below 256 MiB: its length fits.)
        out.put_u32(self.payload.len() as u32);
        out.put_slice(&self.payload);
    }

    /// The headers of a batch of `count` QoS 0 messages from `origin`.
    pub fn batch_headers(origin: &str, count: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_QOS, "0");
        h.insert(H_ORIGIN, origin);
        h.insert(H_BATCH, count.to_string().as_str());
        h
    }

    /// The messages of a batch (headers with `M-N`), each a slice of
    /// `payload`; any malformed item refuses the whole batch.
    pub fn decode_batch(
        topic: ByteStr,
        h: &HeaderMap,
        payload: Bytes,
    ) -> Result<Vec<Envelope>, EnvelopeError> {
        let get = |name: &'static str| h.get(name).map(|v| v.as_str());
        let n = get(H_BATCH).ok_or(EnvelopeError::Missing(H_BATCH))?;
        let count = n
            .parse::<usize>()
            .ok()
            .filter(|c| (1..=BATCH_MAX_ITEMS).contains(c))
            .ok_or_else(|| EnvelopeError::Bad(H_BATCH, n.into()))?;
        match get(H_QOS) {
            Some("0") => {}
            Some(v) => return Err(EnvelopeError::Bad(H_QOS, v.into())),
            None => return Err(EnvelopeError::Missing(H_QOS)),
        }
        let origin = get(H_ORIGIN).ok_or(EnvelopeError::Missing(H_ORIGIN))?;
        let mut out = Vec::with_capacity(count);
        let mut rest = payload;
        for i in 0..count {
            let bad = |why: &'static str| EnvelopeError::Batch(i + 1, count, why);
            let flags = take_u8(&mut rest).ok_or_else(|| bad("truncated"))?;
            if flags & !(F_RETAIN | F_CLIENT | F_TIME | F_PROPS) != 0 {
                return Err(bad("unknown flags"));
            }
            let client_id = if flags & F_CLIENT != 0 {
                let len = take_u16(&mut rest).ok_or_else(|| bad("truncated"))?;
                let raw = take(&mut rest, usize::from(len)).ok_or_else(|| bad("truncated"))?;
                let c = std::str::from_utf8(&raw).map_err(|_| bad("client id not UTF-8"))?;
                Some(c.to_string())
            } else {
                None
            };
            let timestamp_ms = if flags & F_TIME != 0 {
                let raw = take(&mut rest, 8).ok_or_else(|| bad("truncated"))?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw);
                Some(i64::from_be_bytes(b))
            } else {
                None
            };
            let properties = if flags & F_PROPS != 0 {
                let (p, after) = Properties::decode_message(std::mem::take(&mut rest))
                    .map_err(|_| bad("bad properties"))?;
                rest = after;
                p
            } else {
                Properties::default()
            };
            let len = take_u32(&mut rest).ok_or_else(|| bad("truncated"))?;
            let payload = usize::try_from(len)
                .ok()
                .and_then(|l| take(&mut rest, l))
                .ok_or_else(|| bad("truncated"))?;
            out.push(Envelope {
                topic: topic.clone(),
                payload,
                qos: QoS::AtMostOnce,
                retain: flags & F_RETAIN != 0,
                properties,
                origin: origin.into(),
                client_id,
                timestamp_ms,
            });
        }
        if !rest.is_empty() {
            return Err(EnvelopeError::Batch(
                count,
                count,
                "bytes after the last message",
            ));
        }
        Ok(out)
    }

    /// Reads an envelope from a NATS message's parts.
    pub fn decode(
        topic: ByteStr,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<Envelope, EnvelopeError> {
        let h = headers.ok_or(EnvelopeError::NoHeaders)?;
        let get = |name: &'static str| h.get(name).map(|v| v.as_str());
        let q = get(H_QOS).ok_or(EnvelopeError::Missing(H_QOS))?;
        let bad = |name: &'static str, v: &str| EnvelopeError::Bad(name, v.into());
        let (qos, retain) = match q {
            "0" => (QoS::AtMostOnce, false),
            "1" => (QoS::AtLeastOnce, false),
            "2" => (QoS::ExactlyOnce, false),
            "0r" => (QoS::AtMostOnce, true),
            "1r" => (QoS::AtLeastOnce, true),
            "2r" => (QoS::ExactlyOnce, true),
            v => return Err(bad(H_QOS, v)),
        };
        let origin = get(H_ORIGIN).ok_or(EnvelopeError::Missing(H_ORIGIN))?;
        let timestamp_ms = match get(H_TIME) {
            None => None,
            Some(v) => Some(v.parse::<i64>().map_err(|_| bad(H_TIME, v))?),
        };
        let properties = match get(H_PROPS) {
            None => Properties::default(),
            Some(v) => {
                let raw = B64.decode(v).map_err(|_| bad(H_PROPS, v))?;
                let (p, rest) =
                    Properties::decode_message(Bytes::from(raw)).map_err(|_| bad(H_PROPS, v))?;
                if !rest.is_empty() {
                    return Err(bad(H_PROPS, v));
                }
                p
            }
        };
        Ok(Envelope {
            topic,
            payload,
            qos,
            retain,
            properties,
            origin: origin.into(),
            client_id: get(H_CLIENT).map(str::to_string),
            timestamp_ms,
        })
    }
}

fn take(b: &mut Bytes, n: usize) -> Option<Bytes> {
    (b.len() >= n).then(|| b.split_to(n))
}

fn take_u8(b: &mut Bytes) -> Option<u8> {
    take(b, 1).map(|v| v[0])
}

fn take_u16(b: &mut Bytes) -> Option<u16> {
    take(b, 2).map(|v| u16::from_be_bytes([v[0], v[1]]))
}

fn take_u32(b: &mut Bytes) -> Option<u32> {
    take(b, 4).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_protocol::PropertyValues;

    fn sample() -> Envelope {
        let mut p = PropertyValues {
            message_expiry_interval: Some(30),
            content_type: Some("application/json".into()),
            response_topic: Some("r/1".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\xffid")),
            payload_format_indicator: Some(1),
            ..Default::default()
        };
        p.user_properties = vec![
            ("k".into(), "2".into()),
            ("a".into(), "line\nbreak".into()),
            ("k".into(), "1".into()),
        ];
        Envelope {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\x00payload\r\n"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties::from(p),
            origin: "n1".into(),
            client_id: Some("c 1".into()),
            timestamp_ms: Some(1_700_000_000_123),
        }
    }

    #[test]
    fn round_trips_every_field_with_user_properties_in_order() {
        let e = sample();
        let h = e.headers(false);
        let back = Envelope::decode(e.topic.clone(), Some(&h), e.payload.clone()).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            back.properties.user_properties,
            e.properties.user_properties
        );
    }

    #[test]
    fn minimal_message_is_two_short_headers() {
        let e = Envelope {
            properties: Properties::default(),
            client_id: None,
            retain: false,
            qos: QoS::AtLeastOnce,
            ..sample()
        };
        let h = e.headers(false);
        assert_eq!(h.iter().count(), 2);
        let back = Envelope::decode(e.topic.clone(), Some(&h), e.payload.clone()).unwrap();
        // No expiry: the timestamp is not carried unless asked for.
        assert_eq!(back.timestamp_ms, None);
        assert_eq!(back.qos, QoS::AtLeastOnce);
        let h = e.headers(true);
        let back = Envelope::decode(e.topic.clone(), Some(&h), e.payload.clone()).unwrap();
        assert_eq!(back.timestamp_ms, e.timestamp_ms);
    }

    #[test]
    fn bad_headers_name_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(
            Envelope::decode("t".into(), None, Bytes::new()),
            Err(EnvelopeError::NoHeaders)
        );
        h.insert(H_QOS, "3");
        h.insert(H_ORIGIN, "n");
        let e = Envelope::decode("t".into(), Some(&h), Bytes::new()).unwrap_err();
        assert_eq!(e.to_string(), "header M-Q: bad value \"3\"");
        h.insert(H_QOS, "1");
        h.insert(H_PROPS, "!!");
        let e = Envelope::decode("t".into(), Some(&h), Bytes::new()).unwrap_err();
        assert!(e.to_string().starts_with("header M-P"), "{e}");
    }

    #[test]
    fn batches_round_trip_and_bad_ones_are_refused() {
        let full = Envelope {
            qos: QoS::AtMostOnce,
            ..sample()
        };
        let plain = Envelope {
            payload: Bytes::new(),
            retain: false,
            properties: Properties::default(),
            client_id: None,
            // Not carried without an expiry.
            timestamp_ms: None,
            ..full.clone()
        };
        let mut buf = BytesMut::new();
        for e in [&full, &plain, &full] {
            e.encode_item(&mut buf);
        }
        let payload = buf.freeze();
        let h = Envelope::batch_headers("n1", 3);
        let back = Envelope::decode_batch(full.topic.clone(), &h, payload.clone()).unwrap();
        assert_eq!(back, vec![full.clone(), plain, full.clone()]);
        // Every cut short, a wrong count, bytes left over: refused, no panic.
        for cut in 0..payload.len() {
            assert!(Envelope::decode_batch("t".into(), &h, payload.slice(..cut)).is_err());
        }
        for n in ["0", "2", "4", "x", "1025"] {
            let mut h = h.clone();
            h.insert(H_BATCH, n);
            assert!(
                Envelope::decode_batch("t".into(), &h, payload.clone()).is_err(),
                "{n}"
            );
        }
        let mut h1 = h.clone();
        h1.insert(H_QOS, "1");
        assert!(Envelope::decode_batch("t".into(), &h1, payload.clone()).is_err());
        let mut odd = BytesMut::from(&payload[..]);
        odd[0] = 0x80;
        let e = Envelope::decode_batch("t".into(), &h, odd.freeze()).unwrap_err();
        assert_eq!(e.to_string(), "batch: message 1 of 3: unknown flags");
        // Arbitrary bytes never panic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..300 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Envelope::decode_batch("t".into(), &h, Bytes::from(junk));
        }
    }
}
