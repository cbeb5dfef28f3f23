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
//!
//! The receiver counts message expiry from `M-T`, so the time a message spent
//! in transit or in a stream is subtracted (clocks of the nodes are assumed to
//! agree within a second, as NTP gives).

use async_nats::HeaderMap;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use midge_protocol::{ByteStr, Properties, QoS};

pub const H_QOS: &str = "M-Q";
pub const H_ORIGIN: &str = "M-O";
pub const H_TIME: &str = "M-T";
pub const H_PROPS: &str = "M-P";
pub const H_CLIENT: &str = "M-C";

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
}
