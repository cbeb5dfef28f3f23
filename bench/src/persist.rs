//! The persistence scenarios.
//!
//! - `offline-queue`: one subscriber creates a persistent session
//!   (`<prefix>-oq-sub`, clean session 0) subscribed with QoS 1 to
//!   `bench/<prefix>/oq/+` and goes offline; `--publishers` publishers then
//!   publish QoS 1 (each at most `--window` without PUBACK) on
//!   `bench/<prefix>/oq/<i>` until `--messages` in total were sent or
//!   `--duration` seconds passed, whichever comes first, and every PUBACK is
//!   back. Then the subscriber reconnects (clean session 0) and the drain is
//!   timed until every acknowledged message arrived (or nothing arrived for
//!   `--drain` seconds). Loss = acknowledged messages never delivered.
//! - `restart-sessions --phase setup`: creates `--sessions` persistent sessions
//!   `<prefix>-rs-<i>` (connect with clean session 0, subscribe QoS 1 to
//!   `bench/<prefix>/rs/<i>`, disconnect), `--connect-concurrency` at a time.
//! - `restart-sessions --phase probe`: run right after the broker was
//!   (re)started at `--t0-ns` (wall clock, ns since the epoch, e.g.
//!   `date +%s%N`): polls until the port accepts and session `<prefix>-rs-0`
//!   reconnects with session present = 1 (a CONNACK with session present = 0
//!   is a failure, not retried); then checks that this session's subscription
//!   survived (a QoS 1 publish to its topic reaches it) and that `--sample`
//!   other sessions are present.
//! - `publish`: `--publishers` QoS 1 publishers on `bench/<prefix>/pub/<i>`
//!   and no subscriber, until `--messages` in total (or `--duration`): what
//!   the broker accepts when the messages go to a plugin (bench/archive.sh).
//!
//! Everything is bounded by `--timeout` (each phase) and shorter waits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use midge_protocol::{ByteStr, Packet, QoS, Version};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::client::{self, ConnectOpts, Reader, Writer};
use crate::load::{decode_header, HEADER};
use crate::stats::{Histogram, SeqSet};
use crate::{procfs, Args};

const KEEP_ALIVE: u16 = 60;
/// A publisher with messages in flight that gets no PUBACK for this long fails.
const ACK_STALL: Duration = Duration::from_secs(60);
/// Bound on waiting for the broker to close a connection after DISCONNECT.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// CPU ticks of the broker at a point in time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    ticks: u64,
    at: Instant,
}

pub(crate) fn cpu_mark(pid: Option<u32>) -> Option<CpuMark> {
    let ticks = procfs::cpu_ticks(pid?).ok()?;
    Some(CpuMark {
        ticks,
        at: Instant::now(),
    })
}

/// Broker CPU % (100 = one core) since `mark`.
pub(crate) fn cpu_since(pid: Option<u32>, mark: Option<CpuMark>) -> Option<f64> {
    let mark = mark?;
    let now = procfs::cpu_ticks(pid?).ok()?;
    let dt = mark.at.elapsed().as_secs_f64();
    (dt > 0.0).then(|| now.saturating_sub(mark.ticks) as f64 / procfs::CLK_TCK / dt * 100.0)
}

fn rss(pid: Option<u32>) -> Option<u64> {
    procfs::rss_kib(pid?).ok()
}

pub fn session_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-rs-{i}")
}

pub fn session_topic(prefix: &str, i: usize) -> String {
    format!("bench/{prefix}/rs/{i}")
}

// ---------------------------------------------------------------- offline-queue

/// Result of one `offline-queue` run.
#[derive(Debug)]
pub struct OfflineReport {
    pub publishers: usize,
    /// `--messages` (0: none, the duration alone ended publishing).
    pub target: u64,
    pub sent: u64,
    pub acked: u64,
    /// Seconds from the first publish to the last PUBACK.
    pub publish_s: f64,
    /// Acknowledged messages per second over `publish_s`.
    pub pub_msgs_per_s: f64,
    pub ack_p50_us: f64,
    pub ack_p99_us: f64,
    pub ack_max_us: f64,
    pub pub_cpu_pct: Option<f64>,
    /// Broker RSS with everything queued (before the drain).
    pub rss_queued_kib: Option<u64>,
    /// CONNACK session present on the subscriber's reconnect.
    pub session_present: bool,
    /// Milliseconds from reconnect start to the first message.
    pub first_ms: Option<f64>,
    /// Seconds from reconnect start (TCP connect) to the last acknowledged
    /// message received (or to the give-up point when not drained).
    pub drain_s: f64,
    pub drain_msgs_per_s: f64,
    /// Distinct acknowledged messages delivered on reconnect.
    pub delivered: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unexpected: u64,
    /// Acknowledged messages never delivered.
    pub loss: u64,
    /// Every acknowledged message arrived.
    pub drained: bool,
    pub drain_cpu_pct: Option<f64>,
    pub rss_drained_kib: Option<u64>,
}

/// What one publisher did.
#[derive(Debug)]
pub(crate) struct PubOut {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) hist: Histogram,
}

pub async fn offline_queue(
    args: &Args,
    addr: SocketAddr,
    version: Version,
) -> Result<OfflineReport> {
    let prefix = args.prefix.as_str();
    let sub_id = format!("{prefix}-oq-sub");
    let filter = format!("bench/{prefix}/oq/+");
    let limit = Duration::from_secs_f64(args.timeout);

    // A clean connect first discards any session left by an earlier run.
    let (r, w) = client::connect(addr, &sub_id, version, KEEP_ALIVE).await?;
    client::disconnect_and_wait(r, w, CLOSE_WAIT).await;
    let (mut r, mut w, _) = client::connect_persistent(addr, &sub_id, version, KEEP_ALIVE).await?;
    client::subscribe(&mut r, &mut w, &filter, QoS::AtLeastOnce).await?;
    client::disconnect_and_wait(r, w, CLOSE_WAIT).await;

    let n = args.publishers.max(1);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-oq-p{i}");
        conns.push(client::connect(addr, &id, version, KEEP_ALIVE).await?);
    }

    // Publish phase.
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.duration).min(limit);
    let claim = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_mark(args.broker_pid);
    let mut set = JoinSet::new();
    for (i, (r, w)) in conns.into_iter().enumerate() {
        let cfg = QueuePub {
            id: i,
            topic: ByteStr::from(format!("bench/{prefix}/oq/{i}").as_str()),
            window: args.window(),
            payload_len: args.payload,
            target: args.messages,
            deadline,
            t0,
        };
        let claim = claim.clone();
        set.spawn(async move {
            let out = queue_publisher(cfg, r, w, claim)
                .await
                .with_context(|| format!("publisher {i}"))?;
            anyhow::Ok((i, out))
        });
    }
    let mut outs: Vec<(usize, PubOut)> = Vec::with_capacity(n);
    while let Some(res) = set.join_next().await {
        outs.push(res.context("publisher task")??);
    }
    let publish_s = secs(t0.elapsed());
    let pub_cpu_pct = cpu_since(args.broker_pid, cpu0);
    let rss_queued_kib = rss(args.broker_pid);
    outs.sort_by_key(|(i, _)| *i);
    let sent_per_pub: Vec<u64> = outs.iter().map(|(_, o)| o.sent).collect();
    let sent: u64 = sent_per_pub.iter().sum();
    let acked: u64 = outs.iter().map(|(_, o)| o.acked).sum();
    let mut hist = Histogram::default();
    for (_, o) in &outs {
        hist.merge(&o.hist);
    }

    // Drain phase.
    let cpu1 = cpu_mark(args.broker_pid);
    let d = drain(args, addr, version, &sub_id, &sent_per_pub, limit).await?;
    let drain_cpu_pct = cpu_since(args.broker_pid, cpu1);
    let rss_drained_kib = rss(args.broker_pid);

    Ok(OfflineReport {
        publishers: n,
        target: args.messages,
        sent,
        acked,
        publish_s,
        pub_msgs_per_s: acked as f64 / publish_s,
        ack_p50_us: hist.quantile(0.50) as f64 / 1000.0,
        ack_p99_us: hist.quantile(0.99) as f64 / 1000.0,
        ack_max_us: hist.max() as f64 / 1000.0,
        pub_cpu_pct,
        rss_queued_kib,
        session_present: d.session_present,
        first_ms: d.first.map(|f| secs(f) * 1000.0),
        drain_s: secs(d.elapsed),
        drain_msgs_per_s: if d.elapsed.is_zero() {
            0.0
        } else {
            d.delivered as f64 / secs(d.elapsed)
        },
        delivered: d.delivered,
        duplicates: d.duplicates,
        reordered: d.reordered,
        unexpected: d.unexpected,
        loss: acked - d.delivered.min(acked),
        drained: d.delivered >= acked,
        drain_cpu_pct,
        rss_drained_kib,
    })
}

/// What `publish` measured.
#[derive(Debug)]
pub struct PublishReport {
    pub publishers: usize,
    pub sent: u64,
    pub acked: u64,
    pub publish_s: f64,
    pub pub_msgs_per_s: f64,
    pub ack_p50_us: f64,
    pub ack_p99_us: f64,
}

pub async fn publish_only(
    args: &Args,
    addr: SocketAddr,
    version: Version,
) -> Result<PublishReport> {
    let prefix = args.prefix.as_str();
    let limit = Duration::from_secs_f64(args.timeout);
    let n = args.publishers.max(1);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-pub-p{i}");
        conns.push(client::connect(addr, &id, version, KEEP_ALIVE).await?);
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.duration).min(limit);
    let claim = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for (i, (r, w)) in conns.into_iter().enumerate() {
        let cfg = QueuePub {
            id: i,
            topic: ByteStr::from(format!("bench/{prefix}/pub/{i}").as_str()),
            window: args.window(),
            payload_len: args.payload,
            target: args.messages,
            deadline,
            t0,
        };
        let claim = claim.clone();
        set.spawn(async move {
            queue_publisher(cfg, r, w, claim)
                .await
                .with_context(|| format!("publisher {i}"))
        });
    }
    let mut hist = Histogram::default();
    let (mut sent, mut acked) = (0, 0);
    while let Some(res) = set.join_next().await {
        let o = res.context("publisher task")??;
        sent += o.sent;
        acked += o.acked;
        hist.merge(&o.hist);
    }
    let publish_s = secs(t0.elapsed());
    Ok(PublishReport {
        publishers: n,
        sent,
        acked,
        publish_s,
        pub_msgs_per_s: acked as f64 / publish_s,
        ack_p50_us: hist.quantile(0.50) as f64 / 1000.0,
        ack_p99_us: hist.quantile(0.99) as f64 / 1000.0,
    })
}

#[derive(Debug)]
pub(crate) struct QueuePub {
    pub(crate) id: usize,
    pub(crate) topic: ByteStr,
    pub(crate) window: usize,
    pub(crate) payload_len: usize,
    /// Total messages of all publishers (0: no limit).
    pub(crate) target: u64,
    pub(crate) deadline: Instant,
    pub(crate) t0: Instant,
}

/// Publishes QoS 1 with at most `window` messages without PUBACK until the
/// shared `claim` reaches the target or the deadline passes, then waits for
/// the outstanding PUBACKs. Records send -> PUBACK latency.
pub(crate) async fn queue_publisher(
    cfg: QueuePub,
    mut r: Reader,
    mut w: Writer,
    claim: Arc<AtomicU64>,
) -> Result<PubOut> {
    let now_ns = || cfg.t0.elapsed().as_nanos() as u64;
    let mut sent_at = vec![0u64; 1 << 16];
    let mut hist = Histogram::default();
    let zeros = vec![0u8; cfg.payload_len];
    let mut seq: u64 = 0;
    let mut acked: u64 = 0;
    let mut inflight: usize = 0;
    let mut packet_id: u16 = 0;
    let mut sending = true;
    loop {
        while let Some(p) = r.try_next()? {
            match p {
                Packet::PubAck(a) => {
                    hist.record(now_ns().saturating_sub(sent_at[usize::from(a.packet_id)]));
                    acked += 1;
                    inflight = inflight
                        .checked_sub(1)
                        .context("PUBACK with nothing in flight")?;
                }
                Packet::PingResp => {}
                other => bail!("unexpected packet from broker: {other:?}"),
            }
        }
        while sending && inflight < cfg.window {
            if Instant::now() >= cfg.deadline
                || (cfg.target > 0 && claim.fetch_add(1, Ordering::Relaxed) >= cfg.target)
            {
                sending = false;
                break;
            }
            packet_id = packet_id.checked_add(1).unwrap_or(1);
            let now = now_ns();
            sent_at[usize::from(packet_id)] = now;
            let mut payload = BytesMut::with_capacity(cfg.payload_len);
            payload.put_u32_le(cfg.id as u32);
            payload.put_u64_le(seq);
            payload.put_u64_le(now);
            payload.put_slice(&zeros[HEADER..]);
            w.push(&client::publish(
                &cfg.topic,
                QoS::AtLeastOnce,
                packet_id,
                payload.freeze(),
            ));
            seq += 1;
            inflight += 1;
        }
        w.flush().await?;
        if !sending && inflight == 0 {
            break;
        }
        match timeout(ACK_STALL, r.fill()).await {
            Ok(res) => res?,
            Err(_) => bail!("no PUBACK for {ACK_STALL:?} with {inflight} messages in flight"),
        }
    }
    w.disconnect().await;
    Ok(PubOut {
        sent: seq,
        acked,
        hist,
    })
}

#[derive(Debug)]
struct DrainOut {
    session_present: bool,
    first: Option<Duration>,
    elapsed: Duration,
    delivered: u64,
    duplicates: u64,
    reordered: u64,
    unexpected: u64,
}

/// Reconnects the subscriber and receives (and acknowledges) until every
/// message of `sent` (per publisher: sequence numbers `0..sent[p]`) arrived,
/// nothing arrived for `--drain` seconds, or `limit` passed.
async fn drain(
    args: &Args,
    addr: SocketAddr,
    version: Version,
    sub_id: &str,
    sent: &[u64],
    limit: Duration,
) -> Result<DrainOut> {
    let expected: u64 = sent.iter().sum();
    let stall = Duration::from_secs_f64(args.drain.max(0.1));
    let start = Instant::now();
    let until = start + limit;
    let stream = client::tcp_connect(addr, limit).await?;
    let opts = ConnectOpts {
        client_id: sub_id,
        version,
        keep_alive: KEEP_ALIVE,
        clean_start: false,
        handshake_timeout: limit,
    };
    let (mut r, mut w, session_present) = client::handshake(stream, &opts).await?;
    let mut seqs: Vec<SeqSet> = vec![SeqSet::default(); sent.len()];
    let mut out = DrainOut {
        session_present,
        first: None,
        elapsed: Duration::ZERO,
        delivered: 0,
        duplicates: 0,
        reordered: 0,
        unexpected: 0,
    };
    let mut last = start;
    'recv: while out.delivered < expected {
        while let Some(packet) = r.try_next()? {
            match packet {
                Packet::Publish(p) => {
                    if p.qos != QoS::AtMostOnce {
                        w.push(&client::puback(p.packet_id));
                    }
                    let known = decode_header(&p.payload)
                        .filter(|&(pid, seq, _)| pid < sent.len() && seq < sent[pid]);
                    let Some((pid, seq, _)) = known else {
                        out.unexpected += 1;
                        continue;
                    };
                    let set = &mut seqs[pid];
                    if !set.insert(seq) {
                        out.duplicates += 1;
                        continue;
                    }
                    match set.max_seen {
                        Some(m) if seq < m => out.reordered += 1,
                        _ => set.max_seen = Some(seq),
                    }
                    out.delivered += 1;
                    last = Instant::now();
                    out.first.get_or_insert_with(|| start.elapsed());
                }
                Packet::PingResp => {}
                other => bail!("unexpected packet from broker: {other:?}"),
            }
        }
        w.flush().await?;
        if out.delivered >= expected {
            break;
        }
        let wait_until = (Instant::now() + stall).min(until);
        match timeout_at(wait_until, r.fill()).await {
            Ok(res) => res?,
            Err(_) => break 'recv,
        }
    }
    out.elapsed = if out.delivered >= expected {
        last.duration_since(start)
    } else {
        start.elapsed()
    };
    client::disconnect_and_wait(r, w, CLOSE_WAIT).await;
    Ok(out)
}

// ---------------------------------------------------------------- restart-sessions

/// Result of `restart-sessions --phase setup`.
#[derive(Debug)]
pub struct SetupReport {
    pub sessions: usize,
    pub setup_s: f64,
    pub sessions_per_s: f64,
    /// Sessions that already existed (session present = 1).
    pub already_present: u64,
}

pub async fn setup_sessions(
    args: &Args,
    addr: SocketAddr,
    version: Version,
) -> Result<SetupReport> {
    let k = args.sessions;
    let next = Arc::new(AtomicUsize::new(0));
    let present = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.timeout);
    let mut set = JoinSet::new();
    for _ in 0..args.connect_concurrency.clamp(1, k.max(1)) {
        let next = next.clone();
        let present = present.clone();
        let prefix = args.prefix.clone();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= k {
                    return anyhow::Ok(());
                }
                if Instant::now() >= until {
                    bail!("setup not finished within the timeout ({i} of {k} sessions started)");
                }
                let id = session_id(&prefix, i);
                let (mut r, mut w, sp) = client::connect_persistent(addr, &id, version, KEEP_ALIVE)
                    .await
                    .with_context(|| format!("session {id}"))?;
                if sp {
                    present.fetch_add(1, Ordering::Relaxed);
                }
                client::subscribe(&mut r, &mut w, &session_topic(&prefix, i), QoS::AtLeastOnce)
                    .await
                    .with_context(|| format!("session {id}"))?;
                client::disconnect_and_wait(r, w, CLOSE_WAIT).await;
            }
        });
    }
    while let Some(res) = set.join_next().await {
        res.context("setup task")??;
    }
    let setup_s = secs(start.elapsed());
    Ok(SetupReport {
        sessions: k,
        setup_s,
        sessions_per_s: k as f64 / setup_s,
        already_present: present.load(Ordering::Relaxed),
    })
}

/// Result of `restart-sessions --phase probe`.
#[derive(Debug)]
pub struct ProbeReport {
    pub sessions: usize,
    /// Seconds from `--t0-ns` to the first accepted TCP connection.
    pub listen_s: f64,
    /// Seconds from `--t0-ns` to CONNACK with session present = 1.
    pub ready_s: f64,
    pub attempts: u64,
    /// A QoS 1 publish to session 0's topic reached it after the restart.
    pub subscription_ok: bool,
    pub sample: usize,
    pub sample_present: u64,
    /// Broker RSS once ready.
    pub rss_kib: Option<u64>,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub async fn probe_sessions(
    args: &Args,
    addr: SocketAddr,
    version: Version,
) -> Result<ProbeReport> {
    let t0_ns = args.t0_ns.unwrap_or_else(wall_ns);
    let since_t0 = || wall_ns().saturating_sub(t0_ns) as f64 / 1e9;
    let limit = Duration::from_secs_f64(args.timeout);
    let until = Instant::now() + limit;
    let prefix = args.prefix.as_str();
    let id0 = session_id(prefix, 0);
    let mut attempts: u64 = 0;
    let mut listen_s = None;
    let mut last_err = String::new();
    let (mut r, mut w, ready_s) = loop {
        if Instant::now() >= until {
            bail!("session {id0} not back within {limit:?} (last error: {last_err})");
        }
        attempts += 1;
        let left = until.saturating_duration_since(Instant::now());
        let stream = match client::tcp_connect(addr, left).await {
            Ok(s) => s,
            Err(e) => {
                last_err = format!("{e:#}");
                sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        listen_s.get_or_insert_with(since_t0);
        let opts = ConnectOpts {
            client_id: &id0,
            version,
            keep_alive: KEEP_ALIVE,
            clean_start: false,
            handshake_timeout: until.saturating_duration_since(Instant::now()),
        };
        match client::handshake(stream, &opts).await {
            Ok((_, _, false)) => {
                bail!("session {id0} is gone after the restart (CONNACK session present = 0)")
            }
            Ok((r, w, true)) => break (r, w, since_t0()),
            Err(e) => {
                // Closed while the broker was starting: try again.
                last_err = format!("{e:#}");
                sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let rss_kib = rss(args.broker_pid);

    // Its subscription must have survived: publish to its topic.
    let subscription_ok = {
        let topic = session_topic(prefix, 0);
        let (mut pr, mut pw) =
            client::connect(addr, &format!("{prefix}-probe-pub"), version, KEEP_ALIVE).await?;
        pw.send(&client::publish(
            &ByteStr::from(topic.as_str()),
            QoS::AtLeastOnce,
            1,
            Bytes::from_static(b"probe"),
        ))
        .await?;
        let check = timeout(Duration::from_secs(10), async {
            loop {
                match r.next().await? {
                    Packet::Publish(p) => {
                        if p.qos != QoS::AtMostOnce {
                            w.send(&client::puback(p.packet_id)).await?;
                        }
                        if p.topic.as_str() == topic && &p.payload[..] == b"probe" {
                            return anyhow::Ok(true);
                        }
                    }
                    Packet::PingResp => {}
                    other => bail!("unexpected packet from broker: {other:?}"),
                }
            }
        })
        .await;
        let _ = timeout(Duration::from_secs(5), pr.next()).await; // its PUBACK
        client::disconnect_and_wait(pr, pw, CLOSE_WAIT).await;
        matches!(check, Ok(Ok(true)))
    };
    client::disconnect_and_wait(r, w, CLOSE_WAIT).await;

    // A sample of the other sessions, spread over the whole range.
    let k = args.sessions;
    let sample = args.sample.min(k.saturating_sub(1));
    let ids: Vec<usize> = (0..sample).map(|j| 1 + j * (k - 1) / sample).collect();
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let present = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..args.connect_concurrency.clamp(1, sample.max(1)) {
        let (ids, next, present) = (ids.clone(), next.clone(), present.clone());
        let prefix = prefix.to_string();
        set.spawn(async move {
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = ids.get(j) else {
                    return anyhow::Ok(());
                };
                if Instant::now() >= until {
                    bail!("sample check not finished within the timeout");
                }
                let id = session_id(&prefix, i);
                let (r, w, sp) = client::connect_persistent(addr, &id, version, KEEP_ALIVE)
                    .await
                    .with_context(|| format!("session {id}"))?;
                if sp {
                    present.fetch_add(1, Ordering::Relaxed);
                }
                client::disconnect_and_wait(r, w, CLOSE_WAIT).await;
            }
        });
    }
    while let Some(res) = set.join_next().await {
        res.context("sample task")??;
    }
    Ok(ProbeReport {
        sessions: k,
        listen_s: listen_s.unwrap_or(ready_s),
        ready_s,
        attempts,
        subscription_ok,
        sample,
        sample_present: present.load(Ordering::Relaxed),
        rss_kib,
    })
}
