//! The byte layout of stored records. Every value starts with a format
//! version byte; a value that does not decode is reported as corrupt with
//! its key, never skipped.
//!
//! Layouts (integers big-endian, `str`/`bytes` are a u32 length + bytes):
//! - message:  topic str, payload bytes, qos u8, retain u8, timestamp_ms i64,
//!   rule_depth u8, properties bytes (MQTT 5.0 PUBLISH property encoding),
//!   origin flag u8 [client_id str, username flag u8 [str], peer str]
//! - session:  v, expiry u32, disconnected_at_ms i64 (-1: connected), will flag u8
//!   [delay u32, message]
//! - subscription: v, options u8 (qos | no_local<<2 | rap<<3 | rh<<4), id flag u8 [id u32]
//! - queued delivery: v, qos u8, retain u8, id count u8, ids u32*, shared flag u8
//!   [group str, filter str], message
//! - inflight: v, packet_id u16, stage u8 (0 published, 1 released)
//! - retained: v, message

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use midge_protocol::{ByteStr, Properties, QoS, SubOptions};
use smallvec::SmallVec;

use crate::message::{ClientInfo, Message};
use crate::records::{Delivery, SharedKey, Stage, SubscriptionRecord};

use super::SessionRecord;

const V1: u8 = 1;

/// Why a record did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub String);

type R<T> = Result<T, Corrupt>;

fn bad<T>(what: &str) -> R<T> {
    Err(Corrupt(what.to_string()))
}

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize, what: &str) -> R<&'a [u8]> {
        if self.0.len() < n {
            return bad(&format!("truncated at {what}"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> R<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> R<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> R<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self, what: &str) -> R<i64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn bytes(&mut self, what: &str) -> R<&'a [u8]> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    fn str(&mut self, what: &str) -> R<&'a str> {
        std::str::from_utf8(self.bytes(what)?).or_else(|_| bad(&format!("{what} is not UTF-8")))
    }
    fn flag(&mut self, what: &str) -> R<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => bad(&format!("{what} is not 0 or 1")),
        }
    }
    fn version(&mut self) -> R<()> {
        match self.u8("format version")? {
            V1 => Ok(()),
            v => bad(&format!("unknown format version {v}")),
        }
    }
    fn end(&self) -> R<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            bad(&format!("{} trailing bytes", self.0.len()))
        }
    }
}

fn qos(v: u8) -> R<QoS> {
    QoS::from_u8(v).ok_or_else(|| Corrupt(format!("QoS {v}")))
}

fn put_message(w: &mut W, m: &Message) {
    w.bytes(m.topic.as_bytes());
    w.bytes(&m.payload);
    w.u8(m.qos as u8);
    w.u8(u8::from(m.retain));
    w.i64(m.timestamp_ms);
    w.u8(m.rule_depth);
    let mut props = BytesMut::new();
    m.properties.encode_message(&mut props);
    w.bytes(&props);
    match &m.origin {
        None => w.u8(0),
        Some(o) => {
            w.u8(1);
            w.bytes(o.client_id.as_bytes());
            match &o.username {
                None => w.u8(0),
                Some(u) => {
                    w.u8(1);
                    w.bytes(u.as_bytes());
                }
            }
            w.bytes(o.peer.to_string().as_bytes());
        }
    }
}

fn get_message(r: &mut Rd<'_>) -> R<Message> {
    let topic = r.str("topic")?;
    if !midge_protocol::topic::valid_name(topic) {
        return bad("topic is not a valid topic name");
    }
    let payload = Bytes::copy_from_slice(r.bytes("payload")?);
    let q = qos(r.u8("qos")?)?;
    let retain = r.flag("retain")?;
    let timestamp_ms = r.i64("timestamp")?;
    let rule_depth = r.u8("rule depth")?;
    let props = Bytes::copy_from_slice(r.bytes("properties")?);
    let (properties, rest) =
        Properties::decode_message(props).map_err(|e| Corrupt(format!("properties: {e}")))?;
    if !rest.is_empty() {
        return bad("bytes after the properties");
    }
    let origin = if r.flag("origin flag")? {
        let client_id: Arc<str> = r.str("origin client id")?.into();
        let username = if r.flag("username flag")? {
            Some(Arc::from(r.str("username")?))
        } else {
            None
        };
        let peer: SocketAddr = r
            .str("peer")?
            .parse()
            .map_err(|_| Corrupt("peer address".into()))?;
        Some(Arc::new(ClientInfo {
            client_id,
            username,
            peer,
            cluster: Default::default(),
        }))
    } else {
        None
    };
    let mut m = Message::new(ByteStr::from(topic), payload, q, retain, properties);
    m.timestamp_ms = timestamp_ms;
    m.rule_depth = rule_depth;
    m.origin = origin;
    m.received_at = Instant::now();
    Ok(m)
}

pub fn encode_session(s: &SessionRecord) -> Vec<u8> {
    let mut w = W::default();
    w.u8(V1);
    w.u32(s.expiry);
    w.i64(s.disconnected_at_ms.unwrap_or(-1));
    match &s.will {
        None => w.u8(0),
        Some((m, delay)) => {
            w.u8(1);
            w.u32(*delay);
            put_message(&mut w, m);
        }
    }
    w.0
}

pub fn decode_session(b: &[u8]) -> R<SessionRecord> {
    let mut r = Rd(b);
    r.version()?;
    let expiry = r.u32("expiry")?;
    let at = r.i64("disconnected_at")?;
    let will = if r.flag("will flag")? {
        let delay = r.u32("will delay")?;
        Some((Arc::new(get_message(&mut r)?), delay))
    } else {
        None
    };
    r.end()?;
    Ok(SessionRecord {
        expiry,
        disconnected_at_ms: (at >= 0).then_some(at),
        will,
    })
}

pub fn encode_sub(s: &SubscriptionRecord) -> Vec<u8> {
    let mut w = W::default();
    w.u8(V1);
    let o = &s.opts;
    w.u8(o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | o.retain_handling << 4);
    match s.id {
        None => w.u8(0),
        Some(id) => {
            w.u8(1);
            w.u32(id);
        }
    }
    w.0
}

pub fn decode_sub(b: &[u8]) -> R<SubscriptionRecord> {
    let mut r = Rd(b);
    r.version()?;
    let o = r.u8("options")?;
    if o >> 6 != 0 || (o >> 4) & 3 == 3 {
        return bad("subscription options");
    }
    let opts = SubOptions {
        qos: qos(o & 3)?,
        no_local: o & 4 != 0,
        retain_as_published: o & 8 != 0,
        retain_handling: (o >> 4) & 3,
    };
    let id = if r.flag("id flag")? {
        Some(r.u32("subscription id")?)
    } else {
        None
    };
    r.end()?;
    Ok(SubscriptionRecord { opts, id })
}

pub fn encode_delivery(d: &Delivery) -> Vec<u8> {
    let mut w = W::default();
    w.u8(V1);
    w.u8(d.qos as u8);
    w.u8(u8::from(d.retain));
    w.u8(d.sub_ids.len().min(255) as u8);
    for id in d.sub_ids.iter().take(255) {
        w.u32(*id);
    }
    match &d.shared {
        None => w.u8(0),
        Some(k) => {
            w.u8(1);
            w.bytes(k.group.as_bytes());
            w.bytes(k.filter.as_bytes());
        }
    }
    put_message(&mut w, &d.msg);
    w.0
}

pub fn decode_delivery(b: &[u8], seq: u64) -> R<Delivery> {
    let mut r = Rd(b);
    r.version()?;
    let q = qos(r.u8("qos")?)?;
    let retain = r.flag("retain")?;
    let n = r.u8("id count")?;
    let mut sub_ids = SmallVec::new();
    for _ in 0..n {
        sub_ids.push(r.u32("subscription id")?);
    }
    let shared = if r.flag("shared flag")? {
        Some(SharedKey {
            group: r.str("share group")?.into(),
            filter: r.str("share filter")?.into(),
        })
    } else {
        None
    };
    let msg = Arc::new(get_message(&mut r)?);
    r.end()?;
    Ok(Delivery {
        msg,
        qos: q,
        retain,
        sub_ids,
        shared,
        seq,
    })
}

pub fn encode_inflight(packet_id: u16, stage: Stage) -> Vec<u8> {
    let mut w = W::default();
    w.u8(V1);
    w.u16(packet_id);
    w.u8(match stage {
        Stage::Published => 0,
        Stage::Released => 1,
    });
    w.0
}

pub fn decode_inflight(b: &[u8]) -> R<(u16, Stage)> {
    let mut r = Rd(b);
    r.version()?;
    let id = r.u16("packet id")?;
    if id == 0 {
        return bad("packet id 0");
    }
    let stage = match r.u8("stage")? {
        0 => Stage::Published,
        1 => Stage::Released,
        s => return bad(&format!("stage {s}")),
    };
    r.end()?;
    Ok((id, stage))
}

pub fn encode_retained(m: &Message) -> Vec<u8> {
    let mut w = W::default();
    w.u8(V1);
    put_message(&mut w, m);
    w.0
}

pub fn decode_retained(b: &[u8]) -> R<Message> {
    let mut r = Rd(b);
    r.version()?;
    let m = get_message(&mut r)?;
    r.end()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_protocol::PropertyValues;

    fn msg() -> Message {
        let props = Properties::from(PropertyValues {
            message_expiry_interval: Some(30),
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into())],
            ..PropertyValues::default()
        });
        let mut m = Message::new(
            "a/b".into(),
            Bytes::from_static(b"payload"),
            QoS::ExactlyOnce,
            true,
            props,
        );
        m.origin = Some(Arc::new(ClientInfo {
            client_id: "c1".into(),
            username: Some("u".into()),
            peer: "127.0.0.1:5000".parse().unwrap(),
            cluster: Default::default(),
        }));
        m.rule_depth = 2;
        m
    }

    fn same(a: &Message, b: &Message) {
        assert_eq!(a.topic, b.topic);
        assert_eq!(a.payload, b.payload);
        assert_eq!(a.qos, b.qos);
        assert_eq!(a.retain, b.retain);
        assert_eq!(a.properties, b.properties);
        assert_eq!(a.origin, b.origin);
        assert_eq!(a.timestamp_ms, b.timestamp_ms);
        assert_eq!(a.rule_depth, b.rule_depth);
    }

    #[test]
    fn delivery_round_trips() {
        let d = Delivery {
            msg: Arc::new(msg()),
            qos: QoS::AtLeastOnce,
            retain: true,
            sub_ids: SmallVec::from_slice(&[3, 70_000]),
            shared: Some(SharedKey {
                group: "g".into(),
                filter: "a/#".into(),
            }),
            seq: 9,
        };
        let back = decode_delivery(&encode_delivery(&d), 9).unwrap();
        same(&d.msg, &back.msg);
        assert_eq!(back.qos, d.qos);
        assert!(back.retain);
        assert_eq!(back.sub_ids, d.sub_ids);
        assert_eq!(back.shared, d.shared);
        assert_eq!(back.seq, 9);
    }

    #[test]
    fn session_sub_inflight_retained_round_trip() {
        let m = Arc::new(msg());
        let s = SessionRecord {
            expiry: 600,
            disconnected_at_ms: Some(1_700_000_000_000),
            will: Some((m.clone(), 5)),
        };
        let back = decode_session(&encode_session(&s)).unwrap();
        assert_eq!(back.expiry, 600);
        assert_eq!(back.disconnected_at_ms, s.disconnected_at_ms);
        let (w, delay) = back.will.unwrap();
        assert_eq!(delay, 5);
        same(&w, &m);

        let sub = SubscriptionRecord {
            opts: SubOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
            id: Some(42),
        };
        assert_eq!(decode_sub(&encode_sub(&sub)).unwrap(), sub);
        assert_eq!(
            decode_inflight(&encode_inflight(7, Stage::Released)).unwrap(),
            (7, Stage::Released)
        );
        same(&decode_retained(&encode_retained(&m)).unwrap(), &m);
    }

    #[test]
    fn damaged_records_are_reported_not_misread() {
        let d = Delivery {
            msg: Arc::new(msg()),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: SmallVec::new(),
            shared: None,
            seq: 1,
        };
        let good = encode_delivery(&d);
        // Every truncation is an error, never a shorter message.
        for n in 0..good.len() {
            assert!(decode_delivery(&good[..n], 1).is_err(), "prefix {n}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode_delivery(&extra, 1).is_err());
        let mut version = good.clone();
        version[0] = 9;
        assert!(decode_delivery(&version, 1)
            .unwrap_err()
            .0
            .contains("format version"));
        let mut q = good;
        q[1] = 3;
        assert!(decode_delivery(&q, 1).is_err());
        assert!(decode_sub(&[1, 0xff, 0]).is_err());
        assert!(decode_inflight(&[1, 0, 0, 0]).is_err());
    }
}
