//! One bridge's connection to its remote, in the client role: connect
//! (transport, CONNECT, CONNACK within `connect_timeout`; what CONNECT says
//! and what CONNACK allows are the session core's `session::client`), attach to the
//! bridge session, subscribe to the `in` filters, then one loop that reads
//! and writes until the link ends; then wait (exponential backoff with
//! jitter) and connect again, until the broker stops.
//!
//! The loop never blocks on one direction: it selects over the socket's
//! read, the write of what is encoded, the session's notify (new messages
//! queued), the keep-alive timer and the stop signal. Acknowledgements that
//! depend on the store (PUBACK / PUBREC of what came in, PUBREL of what went
//! out) wait for their ticket before they are written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use midge_protocol::{
    decode, encode, reason, Disconnect, Packet, Properties, QoS, SubOptions, Subscribe, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::inbound::{Inbound, Reply};
use super::outbound::Outbound;
use super::transport::{self, Io};
use super::Bridge;
use crate::broker::Broker;
use crate::message::ClientInfo;
use crate::session::client::{self, ClientConnect, KeepAliveStep};
use crate::session::{ConnInfo, ConnLink};

/// How a connection ended.
#[derive(Debug)]
enum Ended {
    /// The broker is stopping.
    Stopped,
    /// It never came up (transport, TLS, refused, timed out).
    Failed(String),
    /// It was up and ended.
    Lost(String),
}

/// Connects, serves and reconnects until `stop` turns true.
pub(super) async fn run(broker: Arc<Broker>, bridge: Arc<Bridge>, mut stop: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    let mut rng = Jitter::seeded(bridge.name());
    loop {
        if *stop.borrow() {
            return;
        }
        let ended = connect_and_serve(&broker, &bridge, &mut stop).await;
        let s = &bridge.status;
        match ended {
            Ended::Stopped => return,
            Ended::Failed(why) => {
                failures = failures.saturating_add(1);
                s.connect_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Every failure while it stays down is not news: the first
                // is a warning, the rest debug (the API shows the last).
                if failures == 1 {
                    warn!(bridge = %bridge.name(), remote = %bridge.spec.remote, error = %why, "bridge cannot connect; retrying with backoff");
                } else {
                    debug!(bridge = %bridge.name(), remote = %bridge.spec.remote, error = %why, attempt = failures, "bridge cannot connect");
                }
                s.set_error(why);
            }
            Ended::Lost(why) => {
                failures = 1;
                s.disconnects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(bridge = %bridge.name(), remote = %bridge.spec.remote, error = %why, "bridge link lost; reconnecting");
                s.set_error(why);
            }
        }
        let wait = backoff(&bridge.spec.reconnect, failures, &mut rng);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Wait before attempt `failures` + 1: `initial_ms` doubled per failure up
/// to `max_ms`, shortened by up to `jitter` of itself.
fn backoff(r: &super::config::ReconnectConfig, failures: u32, rng: &mut Jitter) -> Duration {
    let doubled = r
        .initial_ms
        .saturating_mul(1u64 << failures.saturating_sub(1).min(30));
    let base = doubled.min(r.max_ms) as f64;
    let cut = base * r.jitter * rng.unit();
    Duration::from_millis((base - cut).max(1.0) as u64)
}

/// A small xorshift generator for the jitter (no dependency for it).
struct Jitter(u64);

impl Jitter {
    fn seeded(name: &str) -> Jitter {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Jitter(h.finish() | 1)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn connect_and_serve(
    broker: &Arc<Broker>,
    bridge: &Arc<Bridge>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let spec = &bridge.spec;
    let max_in = broker.config.max_packet_size as usize;
    let cc = ClientConnect {
        version: spec.version,
        client_id: &spec.client_id,
        username: spec.username.as_deref(),
        password: spec.password.as_deref(),
        keep_alive: spec.keep_alive,
        clean_start: spec.clean_start,
        session_expiry: spec.session_expiry,
        max_inflight: spec.max_inflight,
        receive_maximum: broker.config.receive_maximum,
        max_packet_size: broker.config.max_packet_size,
    };
    let hs = tokio::select! {
        hs = tokio::time::timeout(spec.connect_timeout, handshake(bridge, &cc, max_in)) => hs,
        _ = stop.changed() => return Ended::Stopped,
    };
    let (io, peer, ack, rbuf) = match hs {
        Err(_) => {
            return Ended::Failed(format!(
                "{}: no CONNACK within connect_timeout ({} s)",
                spec.remote,
                spec.connect_timeout.as_secs()
            ))
        }
        Ok(Err(e)) => return Ended::Failed(e),
        Ok(Ok(x)) => x,
    };
    let limits = match client::check_connack(&cc, &ack) {
        Ok(n) => n,
        Err(e) => return Ended::Failed(format!("{}: {e}", spec.remote)),
    };
    let keep_alive = limits.keep_alive;
    let session_present = limits.session_present;
    info!(bridge = %bridge.name(), remote = %spec.remote, %peer, session_present, window = limits.window, "bridge connected");
    let mut link = Link {
        broker,
        bridge,
        out: Outbound::new(limits),
        inbound: Inbound {
            origin: Arc::new(ClientInfo {
                client_id: bridge.session.client_id.clone(),
                username: None,
                peer,
                cluster: crate::cluster::acks_for(broker),
            }),
            receive_maximum: broker.config.receive_maximum,
            version: spec.version,
        },
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        rbuf,
        wbuf: BytesMut::new(),
        wpos: 0,
        control: Vec::new(),
        waiting: Vec::new(),
        ticket: 0,
        subscribe_id: None,
        max_in,
    };
    let detached = link.attach(peer, session_present);
    let ended = link.serve(io, stop).await;
    link.detach(detached);
    ended
}

/// Transport, CONNECT, CONNACK. Returns the stream, the peer, the CONNACK
/// and whatever was read after it.
async fn handshake(
    bridge: &Bridge,
    cc: &ClientConnect<'_>,
    max_in: usize,
) -> Result<(Box<dyn Io>, SocketAddr, midge_protocol::ConnAck, BytesMut), String> {
    let spec = &bridge.spec;
    let c = transport::connect(spec).await?;
    let mut io = c.io;
    let mut out = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(cc.packet())),
        spec.version,
        &mut out,
    );
    io.write_all(&out)
        .await
        .map_err(|e| format!("{}: writing CONNECT: {e}", spec.remote))?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // A 3.1.1-only remote answers a 5.0 CONNECT with the 3.1.1 refusal
        // "unacceptable protocol version", which does not parse as 5.0.
        if spec.version == Version::V5 && client::v311_refusal_of_v5(&buf) {
            return Err(format!(
                "{}: the remote does not accept MQTT 5.0 (set protocol = \"3.1.1\")",
                spec.remote
            ));
        }
        match decode(&mut buf, Some(spec.version), max_in) {
            Ok(Some(Packet::ConnAck(a))) => return Ok((io, c.peer, a, buf)),
            Ok(Some(p)) => {
                return Err(format!(
                    "{}: the remote sent {} instead of CONNACK",
                    spec.remote,
                    p.name()
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{}: malformed CONNACK: {e}", spec.remote)),
        }
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("{}: reading CONNACK: {e}", spec.remote))?;
        if n == 0 {
            return Err(format!(
                "{}: the remote closed the connection before CONNACK",
                spec.remote
            ));
        }
    }
}

/// One connection that is up.
struct Link<'a> {
    broker: &'a Arc<Broker>,
    bridge: &'a Arc<Bridge>,
    out: Outbound,
    inbound: Inbound,
    /// 0: no PINGREQ.
    keep_alive: Duration,
    rbuf: BytesMut,
    /// Encoded, written up to `wpos`.
    wbuf: BytesMut,
    wpos: usize,
    /// Packets to write before anything collected from the session.
    control: Vec<Packet>,
    /// Acks to write once `ticket` is durable.
    waiting: Vec<Packet>,
    ticket: u64,
    /// The SUBSCRIBE awaiting its SUBACK.
    subscribe_id: Option<u16>,
    max_in: usize,
}

impl Link<'_> {
    /// Attaches the link to the bridge session (new messages now wake it,
    /// QoS 0 is taken while it is up), queues the retained messages the
    /// `out` directions send on connect, and the SUBSCRIBE of the `in` ones.
    fn attach(&mut self, peer: SocketAddr, session_present: bool) -> Arc<Notify> {
        let b = self.bridge;
        let detached = Arc::new(Notify::new());
        {
            let mut st = b.session.state.lock();
            st.conn = Some(ConnLink {
                id: 0,
                version: b.spec.version,
                window: self.out.limits.window,
                kick: None,
                detached: detached.clone(),
                info: Arc::new(ConnInfo {
                    username: b.spec.username.as_deref().map(Arc::from),
                    peer,
                    keep_alive: b.spec.keep_alive,
                    clean_start: b.spec.clean_start,
                    connected_at_ms: crate::message::now_ms(),
                }),
            });
            // Whatever was in flight goes again first (DUP / PUBREL).
            st.resend = true;
        }
        b.session.set_online(true);
        b.status.set_connected(true);
        b.status
            .connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::retained_for(self.broker, b, session_present);
        if !b.spec.inbound.is_empty() {
            let id = b.session.state.lock().alloc_packet_id();
            let v5 = b.spec.version == Version::V5;
            let filters = b
                .spec
                .inbound
                .iter()
                .map(|d| {
                    let opts = SubOptions {
                        qos: d.qos,
                        // 5.0: what we publish there is not sent back.
                        no_local: v5 && midge_protocol::topic::split_shared(&d.filter).is_none(),
                        retain_as_published: v5 && d.retain_as_published,
                        retain_handling: if v5 { d.retain_handling } else { 0 },
                    };
                    (d.filter.as_str().into(), opts)
                })
                .collect();
            self.subscribe_id = Some(id);
            self.control.push(Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: Properties::default(),
                filters,
            }));
        } else {
            // No `in` directions: nothing to wait for at the remote.
            b.status
                .subscribed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        b.session.notify.notify_one();
        detached
    }

    /// The session is offline again: QoS 0 messages are not kept (as for a
    /// client), inflight ones are resent on the next link.
    fn detach(&mut self, detached: Arc<Notify>) {
        let b = self.bridge;
        {
            let mut st = b.session.state.lock();
            st.conn = None;
            st.resend = true;
            let before = st.queue.len();
            st.queue.retain(|d| d.qos != QoS::AtMostOnce);
            if st.queue.len() != before {
                st.queued_bytes = st.queue.iter().map(|d| d.msg.payload.len()).sum();
            }
        }
        b.session.set_online(false);
        b.status.set_connected(false);
        detached.notify_waiters();
    }

    async fn serve(&mut self, io: Box<dyn Io>, stop: &mut watch::Receiver<bool>) -> Ended {
        let (mut rd, mut wr) = tokio::io::split(io);
        let session = self.bridge.session.clone();
        let mut last_write = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // Collect again without waiting for a notify (a full batch, acks).
        let mut more = true;
        if let Some(e) = self.process() {
            return e;
        }
        loop {
            if self.wpos >= self.wbuf.len() {
                self.wbuf.clear();
                self.wpos = 0;
                if !self.waiting.is_empty() {
                    if let Some(store) = &self.broker.store {
                        store.durable(self.ticket).await;
                    }
                    // Clustered: what went to other nodes is stored there too.
                    crate::cluster::settled(&self.inbound.origin).await;
                    self.control.append(&mut self.waiting);
                }
                if !self.control.is_empty() {
                    // Clustered: what came in and went to other nodes is
                    // in JetStream before the remote gets its ack.
                    crate::cluster::settled(&self.inbound.origin).await;
                }
                for p in self.control.drain(..) {
                    encode(&p, self.out.limits.version, &mut self.wbuf);
                }
                if more || self.wbuf.is_empty() {
                    let (t, full) = self.out.collect(&session);
                    more = full;
                    if t > 0 {
                        if let Some(store) = &self.broker.store {
                            store.durable(t).await;
                        }
                    }
                    self.out.encode(self.bridge, &mut self.wbuf);
                }
            }
            let pending = self.wpos < self.wbuf.len();
            let deadline =
                match client::keep_alive(self.keep_alive, Instant::now(), last_write, ping_sent) {
                    Some(KeepAliveStep::Wait(at)) => Some(at),
                    Some(_) => Some(Instant::now()),
                    None => None,
                };
            tokio::select! {
                r = rd.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => return Ended::Lost("the remote closed the connection".into()),
                    Ok(_) => {
                        ping_sent = None;
                        if let Some(e) = self.process() {
                            return e;
                        }
                        more = true;
                    }
                    Err(e) => return Ended::Lost(format!("read: {e}")),
                },
                r = wr.write(&self.wbuf[self.wpos..]), if pending => match r {
                    Ok(0) => return Ended::Lost("write: connection closed".into()),
                    Ok(n) => {
                        self.wpos += n;
                        last_write = Instant::now();
                    }
                    Err(e) => return Ended::Lost(format!("write: {e}")),
                },
                _ = session.notify.notified(), if !pending && !more => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    let now = Instant::now();
                    match client::keep_alive(self.keep_alive, now, last_write, ping_sent) {
                        Some(KeepAliveStep::Lost) => {
                            return Ended::Lost(format!(
                                "no answer from the remote within keep_alive ({} s)",
                                self.keep_alive.as_secs()
                            ));
                        }
                        Some(KeepAliveStep::Ping) => {
                            self.control.push(Packet::PingReq);
                            ping_sent = Some(now);
                            more = true;
                        }
                        Some(KeepAliveStep::Wait(_)) | None => {}
                    }
                }
                _ = stop.changed() => {
                    self.goodbye(&mut wr).await;
                    return Ended::Stopped;
                }
            }
        }
    }

    /// DISCONNECT (the remote keeps the session), bounded.
    async fn goodbye<W: tokio::io::AsyncWrite + Unpin>(&mut self, wr: &mut W) {
        let mut buf = BytesMut::from(&self.wbuf[self.wpos..]);
        let d = Packet::Disconnect(Disconnect {
            reason: reason::NORMAL_DISCONNECTION,
            properties: Properties::default(),
        });
        encode(&d, self.out.limits.version, &mut buf);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = wr.write_all(&buf).await;
            let _ = wr.shutdown().await;
        })
        .await;
        info!(bridge = %self.bridge.name(), remote = %self.bridge.spec.remote, "bridge disconnected (stopping)");
    }

    /// Handles every whole packet read so far; `Some` ends the link.
    fn process(&mut self) -> Option<Ended> {
        let v = self.out.limits.version;
        loop {
            let p = match decode(&mut self.rbuf, Some(v), self.max_in) {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => {
                    return Some(Ended::Lost(format!(
                        "malformed packet from the remote: {e}"
                    )))
                }
            };
            let b = self.bridge;
            let reply = match p {
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => self
                    .out
                    .ack(b, &p)
                    .map(|(ticket, ack)| Reply { ticket, ack }),
                Packet::Publish(p) => match self.inbound.publish(self.broker, b, p) {
                    Ok(r) => Some(r),
                    Err(e) => return Some(Ended::Lost(format!("protocol error: {e}"))),
                },
                Packet::PubRel(_) => Some(self.inbound.pubrel(b, &p)),
                Packet::SubAck(s) => {
                    self.suback(&s);
                    None
                }
                Packet::PingResp => None,
                Packet::Disconnect(d) => {
                    return Some(Ended::Lost(format!(
                        "the remote sent DISCONNECT with reason code {:#04x}{}",
                        d.reason,
                        d.properties
                            .reason_string
                            .as_ref()
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default()
                    )))
                }
                other => {
                    return Some(Ended::Lost(format!(
                        "protocol error: the remote sent {}",
                        other.name()
                    )))
                }
            };
            if let Some(r) = reply {
                if let Some(ack) = r.ack {
                    let clustered = self.broker.cluster.get().is_some();
                    if r.ticket > 0 || clustered || !self.waiting.is_empty() {
                        // Keeps the acks in order behind one that waits.
                        self.ticket = self.ticket.max(r.ticket);
                        self.waiting.push(ack);
                    } else {
                        self.control.push(ack);
                    }
                }
            }
        }
    }

    fn suback(&mut self, s: &midge_protocol::SubAck) {
        if self.subscribe_id != Some(s.packet_id) {
            return;
        }
        self.subscribe_id = None;
        let b = self.bridge;
        b.status
            .subscribed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (d, code) in b.spec.inbound.iter().zip(&s.codes) {
            if *code >= 0x80 {
                let why = format!(
                    "the remote refused the subscription to `{}` with reason code {code:#04x}",
                    d.filter
                );
                warn!(bridge = %b.name(), remote = %b.spec.remote, "{why}");
                b.status.set_error(why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::ReconnectConfig;

    #[test]
    fn backoff_doubles_to_the_maximum_and_jitter_only_shortens() {
        let r = ReconnectConfig {
            initial_ms: 100,
            max_ms: 1000,
            jitter: 0.0,
        };
        let mut j = Jitter::seeded("t");
        let waits: Vec<u64> = (1..=6)
            .map(|n| backoff(&r, n, &mut j).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        let r = ReconnectConfig { jitter: 0.5, ..r };
        for n in 1..50 {
            let w = backoff(&r, n % 8, &mut j).as_millis() as u64;
            let base = (100u64 << (n % 8).saturating_sub(1)).min(1000);
            assert!(w <= base && w * 2 >= base, "{w} for {base}");
        }
    }
}
