//! An independent raw MQTT client: hand-written encoders for the packets the
//! tests send, a generic decoder for what the broker sends back, and a TCP
//! client with bounded reads.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// Property identifiers (MQTT 5.0 §2.2.2.2).
pub mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// A property value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prop {
    Byte(u8, u8),
    U16(u8, u16),
    U32(u8, u32),
    VarInt(u8, u32),
    Str(u8, String),
    Bin(u8, Vec<u8>),
    Pair(u8, String, String),
}

impl Prop {
    pub fn id(&self) -> u8 {
        match self {
            Prop::Byte(i, _)
            | Prop::U16(i, _)
            | Prop::U32(i, _)
            | Prop::VarInt(i, _)
            | Prop::Str(i, _)
            | Prop::Bin(i, _)
            | Prop::Pair(i, _, _) => *i,
        }
    }
    pub fn session_expiry(v: u32) -> Prop {
        Prop::U32(prop::SESSION_EXPIRY_INTERVAL, v)
    }
    pub fn receive_maximum(v: u16) -> Prop {
        Prop::U16(prop::RECEIVE_MAXIMUM, v)
    }
    pub fn topic_alias_maximum(v: u16) -> Prop {
        Prop::U16(prop::TOPIC_ALIAS_MAXIMUM, v)
    }
    pub fn topic_alias(v: u16) -> Prop {
        Prop::U16(prop::TOPIC_ALIAS, v)
    }
    pub fn maximum_packet_size(v: u32) -> Prop {
        Prop::U32(prop::MAXIMUM_PACKET_SIZE, v)
    }
    pub fn subscription_id(v: u32) -> Prop {
        Prop::VarInt(prop::SUBSCRIPTION_IDENTIFIER, v)
    }
    pub fn auth_method(m: &str) -> Prop {
        Prop::Str(prop::AUTHENTICATION_METHOD, m.into())
    }
    pub fn auth_data(d: &[u8]) -> Prop {
        Prop::Bin(prop::AUTHENTICATION_DATA, d.to_vec())
    }
    pub fn user(k: &str, v: &str) -> Prop {
        Prop::Pair(prop::USER_PROPERTY, k.into(), v.into())
    }
}

/// Decoded property list, in wire order (duplicates kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Props(pub Vec<Prop>);

impl Props {
    pub fn get(&self, id: u8) -> Option<&Prop> {
        self.0.iter().find(|p| p.id() == id)
    }
    pub fn has(&self, id: u8) -> bool {
        self.get(id).is_some()
    }
    pub fn count(&self, id: u8) -> usize {
        self.0.iter().filter(|p| p.id() == id).count()
    }
    /// Numeric value of a Byte/U16/U32/VarInt property.
    pub fn num(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            Prop::Byte(_, v) => Some(*v as u32),
            Prop::U16(_, v) => Some(*v as u32),
            Prop::U32(_, v) | Prop::VarInt(_, v) => Some(*v),
            _ => None,
        }
    }
    pub fn str(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            Prop::Str(_, s) => Some(s),
            _ => None,
        }
    }
    pub fn bin(&self, id: u8) -> Option<&[u8]> {
        match self.get(id)? {
            Prop::Bin(_, b) => Some(b),
            _ => None,
        }
    }
    pub fn user_properties(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Prop::Pair(_, k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }
    pub fn subscription_ids(&self) -> Vec<u32> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Prop::VarInt(prop::SUBSCRIPTION_IDENTIFIER, v) => Some(*v),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

pub fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            break;
        }
    }
}

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn encode_props(props: &[Prop]) -> Vec<u8> {
    let mut body = Vec::new();
    for p in props {
        body.push(p.id());
        match p {
            Prop::Byte(_, v) => body.push(*v),
            Prop::U16(_, v) => body.extend_from_slice(&v.to_be_bytes()),
            Prop::U32(_, v) => body.extend_from_slice(&v.to_be_bytes()),
            Prop::VarInt(_, v) => put_varint(&mut body, *v),
            Prop::Str(_, s) => put_str(&mut body, s.as_bytes()),
            Prop::Bin(_, b) => put_str(&mut body, b),
            Prop::Pair(_, k, v) => {
                put_str(&mut body, k.as_bytes());
                put_str(&mut body, v.as_bytes());
            }
        }
    }
    let mut out = Vec::new();
    put_varint(&mut out, body.len() as u32);
    out.extend_from_slice(&body);
    out
}

/// Fixed header + body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// Will message for [`connect`].
#[derive(Clone, Debug)]
pub struct RawWill {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Vec<Prop>,
}

/// CONNECT builder (protocol level 4 or 5).
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    pub level: u8,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: Vec<Prop>,
    pub will: Option<RawWill>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl ConnectOpts {
    pub fn v4(client_id: &str) -> ConnectOpts {
        ConnectOpts {
            level: 4,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 30,
            props: vec![],
            will: None,
            username: None,
            password: None,
        }
    }
    pub fn v5(client_id: &str) -> ConnectOpts {
        ConnectOpts {
            level: 5,
            ..ConnectOpts::v4(client_id)
        }
    }
    pub fn clean(mut self, c: bool) -> Self {
        self.clean = c;
        self
    }
    pub fn keep_alive(mut self, k: u16) -> Self {
        self.keep_alive = k;
        self
    }
    pub fn prop(mut self, p: Prop) -> Self {
        self.props.push(p);
        self
    }
    pub fn will(mut self, w: RawWill) -> Self {
        self.will = Some(w);
        self
    }
    pub fn encode(&self) -> Vec<u8> {
        let v5 = self.level == 5;
        let mut b = Vec::new();
        put_str(&mut b, b"MQTT");
        b.push(self.level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        b.push(flags);
        b.extend_from_slice(&self.keep_alive.to_be_bytes());
        if v5 {
            b.extend_from_slice(&encode_props(&self.props));
        }
        put_str(&mut b, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if v5 {
                b.extend_from_slice(&encode_props(&w.props));
            }
            put_str(&mut b, w.topic.as_bytes());
            put_str(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(&mut b, u.as_bytes());
        }
        if let Some(p) = &self.password {
            put_str(&mut b, p);
        }
        frame(0x10, &b)
    }
}

/// PUBLISH. `props` is only encoded when `v5`.
#[allow(clippy::too_many_arguments)]
pub fn publish(
    v5: bool,
    topic: &str,
    qos: u8,
    retain: bool,
    dup: bool,
    pid: u16,
    props: &[Prop],
    payload: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, topic.as_bytes());
    if qos > 0 {
        b.extend_from_slice(&pid.to_be_bytes());
    }
    if v5 {
        b.extend_from_slice(&encode_props(props));
    }
    b.extend_from_slice(payload);
    let first = 0x30 | ((dup as u8) << 3) | (qos << 1) | retain as u8;
    frame(first, &b)
}

/// PUBACK (0x40), PUBREC (0x50), PUBREL (0x62), PUBCOMP (0x70): 2-byte form.
pub fn ack(first: u8, pid: u16) -> Vec<u8> {
    frame(first, &pid.to_be_bytes())
}
pub fn puback(pid: u16) -> Vec<u8> {
    ack(0x40, pid)
}
pub fn pubrec(pid: u16) -> Vec<u8> {
    ack(0x50, pid)
}
pub fn pubrel(pid: u16) -> Vec<u8> {
    ack(0x62, pid)
}
pub fn pubcomp(pid: u16) -> Vec<u8> {
    ack(0x70, pid)
}

/// SUBSCRIBE with (filter, options byte) pairs. Options byte: QoS in bits 0-1,
/// no local 0x04, retain as published 0x08, retain handling << 4.
pub fn subscribe(v5: bool, pid: u16, props: &[Prop], filters: &[(&str, u8)]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v5 {
        b.extend_from_slice(&encode_props(props));
    }
    for (f, o) in filters {
        put_str(&mut b, f.as_bytes());
        b.push(*o);
    }
    frame(0x82, &b)
}

pub fn unsubscribe(v5: bool, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v5 {
        b.push(0);
    }
    for f in filters {
        put_str(&mut b, f.as_bytes());
    }
    frame(0xA2, &b)
}

pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT: 3.1.1 form when `v5` is false.
pub fn disconnect(v5: bool, reason: u8, props: &[Prop]) -> Vec<u8> {
    if !v5 {
        return vec![0xE0, 0x00];
    }
    let mut b = vec![reason];
    b.extend_from_slice(&encode_props(props));
    frame(0xE0, &b)
}

/// AUTH (5.0 only) with a reason code and properties.
pub fn auth(reason: u8, props: &[Prop]) -> Vec<u8> {
    let mut b = vec![reason];
    b.extend_from_slice(&encode_props(props));
    frame(0xF0, &b)
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// One packet as received: type nibble, flags nibble and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPacket {
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;
pub const AUTH: u8 = 15;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        assert!(!self.0.is_empty(), "truncated packet");
        let v = self.0[0];
        self.0 = &self.0[1..];
        v
    }
    fn u16(&mut self) -> u16 {
        ((self.u8() as u16) << 8) | self.u8() as u16
    }
    fn u32(&mut self) -> u32 {
        ((self.u16() as u32) << 16) | self.u16() as u32
    }
    fn varint(&mut self) -> u32 {
        let mut v = 0u32;
        let mut mult = 1u32;
        for _ in 0..4 {
            let b = self.u8();
            v += (b & 0x7f) as u32 * mult;
            if b & 0x80 == 0 {
                return v;
            }
            mult *= 128;
        }
        panic!("malformed variable byte integer from broker");
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        assert!(self.0.len() >= n, "truncated packet");
        let v = self.0[..n].to_vec();
        self.0 = &self.0[n..];
        v
    }
    fn bin(&mut self) -> Vec<u8> {
        let n = self.u16() as usize;
        self.bytes(n)
    }
    fn string(&mut self) -> String {
        String::from_utf8(self.bin()).expect("broker sent invalid UTF-8")
    }
    fn props(&mut self) -> Props {
        let len = self.varint() as usize;
        let mut r = Reader(&self.0[..len]);
        self.0 = &self.0[len..];
        let mut out = Vec::new();
        while !r.0.is_empty() {
            let id = r.u8();
            let p = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Prop::Byte(id, r.u8()),
                0x13 | 0x21 | 0x22 | 0x23 => Prop::U16(id, r.u16()),
                0x02 | 0x11 | 0x18 | 0x27 => Prop::U32(id, r.u32()),
                0x0B => Prop::VarInt(id, r.varint()),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Prop::Str(id, r.string()),
                0x09 | 0x16 => Prop::Bin(id, r.bin()),
                0x26 => {
                    let k = r.string();
                    let v = r.string();
                    Prop::Pair(id, k, v)
                }
                other => panic!("broker sent unknown property id {other:#x}"),
            };
            out.push(p);
        }
        Props(out)
    }
}

#[derive(Clone, Debug)]
pub struct ConnAckP {
    pub session_present: bool,
    pub code: u8,
    pub props: Props,
}

#[derive(Clone, Debug)]
pub struct PublishP {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct AckP {
    pub pid: u16,
    pub reason: u8,
    pub props: Props,
}

#[derive(Clone, Debug)]
pub struct SubAckP {
    pub pid: u16,
    pub props: Props,
    pub codes: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct DisconnectP {
    pub reason: u8,
    pub props: Props,
}

impl RawPacket {
    /// Its size on the wire: fixed header, remaining length and body.
    pub fn wire_len(&self) -> usize {
        let mut len_bytes = 1;
        let mut n = self.body.len() >> 7;
        while n > 0 {
            len_bytes += 1;
            n >>= 7;
        }
        1 + len_bytes + self.body.len()
    }
    pub fn connack(&self, v5: bool) -> ConnAckP {
        assert_eq!(self.kind, CONNACK, "expected CONNACK, got {self:?}");
        let mut r = Reader(&self.body);
        let sp = r.u8();
        assert_eq!(sp & 0xFE, 0, "CONNACK acknowledge flags reserved bits set");
        let code = r.u8();
        let props = if v5 && !r.0.is_empty() {
            r.props()
        } else {
            Props::default()
        };
        ConnAckP {
            session_present: sp & 1 == 1,
            code,
            props,
        }
    }
    pub fn publish(&self, v5: bool) -> PublishP {
        assert_eq!(self.kind, PUBLISH, "expected PUBLISH, got {self:?}");
        let qos = (self.flags >> 1) & 3;
        let mut r = Reader(&self.body);
        let topic = r.string();
        let pid = if qos > 0 { r.u16() } else { 0 };
        let props = if v5 { r.props() } else { Props::default() };
        PublishP {
            dup: self.flags & 8 != 0,
            qos,
            retain: self.flags & 1 != 0,
            topic,
            pid,
            props,
            payload: r.0.to_vec(),
        }
    }
    /// PUBACK/PUBREC/PUBREL/PUBCOMP (reason 0 when omitted).
    pub fn ack(&self) -> AckP {
        assert!(
            matches!(self.kind, PUBACK..=PUBCOMP),
            "expected an ack, got {self:?}"
        );
        let mut r = Reader(&self.body);
        let pid = r.u16();
        let reason = if r.0.is_empty() { 0 } else { r.u8() };
        let props = if r.0.is_empty() {
            Props::default()
        } else {
            r.props()
        };
        AckP { pid, reason, props }
    }
    pub fn suback(&self, v5: bool) -> SubAckP {
        assert!(
            matches!(self.kind, SUBACK | UNSUBACK),
            "expected SUBACK/UNSUBACK, got {self:?}"
        );
        let mut r = Reader(&self.body);
        let pid = r.u16();
        let props = if v5 { r.props() } else { Props::default() };
        SubAckP {
            pid,
            props,
            codes: r.0.to_vec(),
        }
    }
    /// AUTH: reason code (0 when omitted) and properties.
    pub fn auth(&self) -> DisconnectP {
        assert_eq!(self.kind, AUTH, "expected AUTH, got {self:?}");
        let mut r = Reader(&self.body);
        let reason = if r.0.is_empty() { 0 } else { r.u8() };
        let props = if r.0.is_empty() {
            Props::default()
        } else {
            r.props()
        };
        DisconnectP { reason, props }
    }
    pub fn disconnect(&self) -> DisconnectP {
        assert_eq!(self.kind, DISCONNECT, "expected DISCONNECT, got {self:?}");
        let mut r = Reader(&self.body);
        let reason = if r.0.is_empty() { 0 } else { r.u8() };
        let props = if r.0.is_empty() {
            Props::default()
        } else {
            r.props()
        };
        DisconnectP { reason, props }
    }
}

/// Takes the first whole packet off the front of `buf` (`None`: not all of
/// it read yet). Also for tests that watch bytes passing through.
pub fn split_packet(buf: &mut BytesMut) -> Option<RawPacket> {
    let b = &buf[..];
    if b.len() < 2 {
        return None;
    }
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 1;
    loop {
        if i >= b.len() {
            return None;
        }
        let x = b[i];
        len += (x & 0x7f) as usize * mult;
        mult *= 128;
        i += 1;
        if x & 0x80 == 0 {
            break;
        }
        assert!(i <= 4, "malformed remaining length from broker");
    }
    if b.len() < i + len {
        return None;
    }
    let first = b[0];
    let body = b[i..i + len].to_vec();
    buf.advance(i + len);
    Some(RawPacket {
        kind: first >> 4,
        flags: first & 0x0F,
        body,
    })
}

/// Result of a bounded read.
#[derive(Debug)]
pub enum Recv {
    Packet(RawPacket),
    Closed,
    Timeout,
}

/// A raw TCP MQTT client.
#[derive(Debug)]
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
    pub v5: bool,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = crate::within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            buf: BytesMut::new(),
            v5: false,
        }
    }

    /// The other end of a connection the broker opened (a test standing in
    /// for a bridge's remote): packets are read and written as by a client.
    pub fn accepted(stream: TcpStream, v5: bool) -> RawClient {
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            buf: BytesMut::new(),
            v5,
        }
    }

    /// Connects, sends CONNECT and returns the CONNACK (asserting success).
    pub async fn handshake(addr: SocketAddr, opts: ConnectOpts) -> (RawClient, ConnAckP) {
        let mut c = RawClient::connect(addr).await;
        let ack = c.send_connect(&opts).await;
        assert_eq!(ack.code, 0, "CONNACK refused: {ack:?}");
        (c, ack)
    }

    /// Sends CONNECT and reads the CONNACK (whatever its code).
    pub async fn send_connect(&mut self, opts: &ConnectOpts) -> ConnAckP {
        self.v5 = opts.level == 5;
        self.send(&opts.encode()).await;
        let p = self.recv().await;
        p.connack(self.v5)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // A write error means the broker already closed; reads will show it.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    fn try_parse(&mut self) -> Option<RawPacket> {
        split_packet(&mut self.buf)
    }

    /// Reads one packet, waiting at most `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(p) = self.try_parse() {
                return Recv::Packet(p);
            }
            let mut tmp = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Recv::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Reads one packet (bounded by [`WAIT`]); panics on close/timeout.
    pub async fn recv(&mut self) -> RawPacket {
        match self.recv_within(WAIT).await {
            Recv::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// Reads packets until one of `kind` arrives, skipping others (e.g. PINGRESP).
    pub async fn recv_kind(&mut self, kind: u8) -> RawPacket {
        loop {
            let p = self.recv().await;
            if p.kind == kind {
                return p;
            }
        }
    }

    pub async fn recv_publish(&mut self) -> PublishP {
        let v5 = self.v5;
        self.recv_kind(PUBLISH).await.publish(v5)
    }

    /// Asserts nothing arrives within `d` (connection still open).
    pub async fn expect_silence(&mut self, d: Duration) {
        match self.recv_within(d).await {
            Recv::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Waits until the broker closes the connection, returning the packets received before.
    pub async fn expect_closed(&mut self) -> Vec<RawPacket> {
        let mut got = Vec::new();
        loop {
            match self.recv_within(WAIT).await {
                Recv::Packet(p) => got.push(p),
                Recv::Closed => return got,
                Recv::Timeout => panic!("connection not closed within {WAIT:?}; received {got:?}"),
            }
        }
    }

    /// v5: expects a DISCONNECT with `reason` and then the close.
    /// 3.1.1: expects a close with no packet.
    pub async fn expect_disconnect(&mut self, reason: u8) {
        let got = self.expect_closed().await;
        if self.v5 {
            let d = got
                .iter()
                .find(|p| p.kind == DISCONNECT)
                .unwrap_or_else(|| panic!("no DISCONNECT before close; got {got:?}"));
            assert_eq!(
                d.disconnect().reason,
                reason,
                "DISCONNECT reason code; packets: {got:?}"
            );
        } else {
            assert!(
                got.iter().all(|p| p.kind != DISCONNECT),
                "3.1.1 broker must not send DISCONNECT: {got:?}"
            );
        }
    }

    /// Subscribes (options byte = QoS etc.) and returns the SUBACK codes.
    pub async fn subscribe(&mut self, pid: u16, props: &[Prop], filters: &[(&str, u8)]) -> SubAckP {
        let v5 = self.v5;
        self.send(&subscribe(v5, pid, props, filters)).await;
        let s = self.recv_kind(SUBACK).await.suback(v5);
        assert_eq!(s.pid, pid);
        s
    }

    /// Publishes and completes the QoS flow as sender.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        pid: u16,
        props: &[Prop],
        payload: &[u8],
    ) {
        let v5 = self.v5;
        self.send(&publish(v5, topic, qos, retain, false, pid, props, payload))
            .await;
        match qos {
            1 => {
                let a = self.recv_kind(PUBACK).await.ack();
                assert_eq!(a.pid, pid);
            }
            2 => {
                let a = self.recv_kind(PUBREC).await.ack();
                assert_eq!(a.pid, pid);
                self.send(&pubrel(pid)).await;
                let c = self.recv_kind(PUBCOMP).await.ack();
                assert_eq!(c.pid, pid);
            }
            _ => {}
        }
    }

    /// PINGREQ -> PINGRESP round trip: proves the connection is alive and
    /// that everything the broker sent before has been read (returned).
    pub async fn ping(&mut self) -> Vec<RawPacket> {
        self.send(&pingreq()).await;
        let mut before = Vec::new();
        loop {
            let p = self.recv().await;
            if p.kind == PINGRESP {
                return before;
            }
            before.push(p);
        }
    }
}
