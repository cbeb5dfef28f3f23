//! The publish/subscribe scenarios (`fan-in`, `fan-out`, `pairs`): closed
//! loop (a window of undelivered messages paces each publisher) or, with
//! `--rate`, open loop (each publisher follows a fixed schedule, see
//! [`Schedule`]).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use midge_protocol::{ByteStr, Packet, QoS, Version};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::client::{self, Reader, Writer};
use crate::stats::{Histogram, SeqSet};
use crate::{procfs, Args, Scenario};

/// Bytes at the front of every payload: publisher id (u32 LE), sequence
/// number (u64 LE), send time in ns since the run's start (u64 LE).
pub const HEADER: usize = 20;
/// Most publishes coalesced into one socket write.
const BATCH: usize = 64;
const KEEP_ALIVE: u16 = 60;

/// Who publishes where and who listens.
#[derive(Debug)]
struct Topology {
    /// Topic of each publisher.
    publishers: Vec<String>,
    /// Filter of each subscriber and the publishers whose messages it gets.
    subscribers: Vec<(String, Vec<usize>)>,
}

fn topology(scenario: Scenario, run: &str) -> Topology {
    match scenario {
        Scenario::FanIn => Topology {
            publishers: (0..8).map(|i| format!("bench/{run}/in/{i}")).collect(),
            subscribers: vec![(format!("bench/{run}/in/+"), (0..8).collect())],
        },
        Scenario::FanOut => Topology {
            publishers: vec![format!("bench/{run}/out")],
            subscribers: (0..100)
                .map(|_| (format!("bench/{run}/out"), vec![0]))
                .collect(),
        },
        Scenario::Pairs => Topology {
            publishers: (0..50).map(|i| format!("bench/{run}/pair/{i}")).collect(),
            subscribers: (0..50)
                .map(|i| (format!("bench/{run}/pair/{i}"), vec![i]))
                .collect(),
        },
        Scenario::Idle
        | Scenario::OfflineQueue
        | Scenario::RestartSessions
        | Scenario::Publish
        | Scenario::KafkaArchive => {
            unreachable!("{} has no topology", scenario.name())
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closed-loop window of one publisher: a permit per message that is not yet
/// delivered to every subscriber that should receive it.
#[derive(Debug)]
struct PubTrack {
    window: Semaphore,
    /// seq -> (receivers still missing, send time ns)
    pending: Mutex<HashMap<u64, (u32, u64)>>,
    receivers: u32,
    sent: AtomicU64,
    /// Publishes sent (actual send time) inside the measurement window.
    sent_measured: AtomicU64,
    acked: AtomicU64,
    expired: AtomicU64,
    /// Open loop: times a due message had to wait for the window bound.
    window_stalls: AtomicU64,
    /// Open loop: times a due QoS 1 message had to wait for the PUBACK cap.
    ack_stalls: AtomicU64,
}

impl PubTrack {
    fn delivered(&self, seq: u64) {
        let mut pending = lock(&self.pending);
        if let Some(entry) = pending.get_mut(&seq) {
            entry.0 -= 1;
            if entry.0 == 0 {
                pending.remove(&seq);
                drop(pending);
                self.window.add_permits(1);
            }
        }
    }

    /// Gives back the permits of messages outstanding for longer than
    /// `max_age_ns` (lost QoS 0 messages would otherwise shrink the window
    /// for good).
    fn expire(&self, now_ns: u64, max_age_ns: u64) {
        let mut pending = lock(&self.pending);
        let before = pending.len();
        pending.retain(|_, (_, sent)| now_ns.saturating_sub(*sent) < max_age_ns);
        let n = before - pending.len();
        drop(pending);
        if n > 0 {
            self.expired.fetch_add(n as u64, Ordering::Relaxed);
            self.window.add_permits(n);
        }
    }

    fn outstanding(&self) -> usize {
        lock(&self.pending).len()
    }
}

/// Everything a run shares between tasks.
#[derive(Debug)]
struct Shared {
    t0: Instant,
    qos: QoS,
    tracks: Vec<PubTrack>,
    /// Receive-time window in which deliveries count for throughput/latency.
    measure_from_ns: u64,
    measure_to_ns: u64,
    /// JSON payloads (`--json`) instead of the binary header.
    json: bool,
}

/// The fixed schedule of one open-loop publisher (`--rate`): message `k` is
/// due `offset_ns + k / rate` seconds after the run's start. Its payload
/// carries that due time, not the time it was actually sent, so a publisher
/// held up by a stalled broker (or by the generator) still charges the wait
/// to the latency instead of quietly publishing less (no coordinated
/// omission).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Schedule {
    offset_ns: u64,
    /// Messages per second of this publisher.
    rate: f64,
}

impl Schedule {
    /// Publisher `id` of `publishers` that share `total_rate` msgs/s evenly.
    /// Publisher `id` starts `id / total_rate` s late, so the publishers
    /// interleave and the combined stream is evenly spaced at `total_rate`
    /// instead of arriving in bursts of `publishers` messages.
    pub(crate) fn new(total_rate: f64, publishers: usize, id: usize) -> Schedule {
        Schedule {
            offset_ns: (id as f64 * 1e9 / total_rate) as u64,
            rate: total_rate / publishers as f64,
        }
    }

    /// When message `k` is due, in ns since the run's start.
    pub(crate) fn due_ns(&self, k: u64) -> u64 {
        self.offset_ns + (k as f64 * 1e9 / self.rate) as u64
    }

    /// How many messages from `next` on are due at `now_ns`, at most `max`.
    /// 0 while `next` lies in the future; more than 1 when the publisher fell
    /// behind: it then sends them at once to catch up (each still stamped
    /// with its own due time).
    pub(crate) fn due_count(&self, next: u64, now_ns: u64, max: usize) -> usize {
        (0..max as u64)
            .take_while(|&i| self.due_ns(next + i) <= now_ns)
            .count()
    }
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

#[derive(Debug, Default)]
struct SubStats {
    hist: Histogram,
    /// Per publisher id.
    seqs: HashMap<usize, SeqSet>,
    /// Distinct deliveries received inside the measurement window.
    measured: u64,
    duplicates: u64,
    reordered: u64,
    unexpected: u64,
}

/// Result of one load run.
#[derive(Debug)]
pub struct LoadReport {
    pub publishers: usize,
    pub subscribers: usize,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub measured: u64,
    pub msgs_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Publishes sent per second during the measured seconds.
    pub achieved_rate: f64,
    /// Open loop: waits for the window bound / the PUBACK cap (see [`PubTrack`]).
    pub window_stalls: Option<u64>,
    pub ack_stalls: Option<u64>,
    /// Open loop: how late the generator sent messages after their due time
    /// (timer granularity, catch-up, stalls), during the measured seconds.
    pub send_lag_p50_us: Option<f64>,
    pub send_lag_p99_us: Option<f64>,
    pub loss: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unexpected: u64,
    pub expired: u64,
    pub drained: bool,
    pub broker_cpu_pct: Option<f64>,
    pub broker_rss_kib: Option<u64>,
    /// Messages the `--watch` connection received.
    pub watched: Option<u64>,
}

pub async fn run(args: &Args, addr: SocketAddr, version: Version) -> Result<LoadReport> {
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let run_id = format!("{}-{}", std::process::id(), args.scenario.name());
    let topo = topology(args.scenario, &run_id);
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let rate = args.rate;
    let mut receivers = vec![0u32; topo.publishers.len()];
    for (_, pubs) in &topo.subscribers {
        for &p in pubs {
            receivers[p] += 1;
        }
    }

    // Connect and subscribe every subscriber before any publisher exists.
    let sub_addr = match args.sub_port {
        Some(p) => SocketAddr::new(addr.ip(), p),
        None => addr,
    };
    let mut subs = Vec::with_capacity(topo.subscribers.len());
    {
        let mut set = JoinSet::new();
        for (i, (filter, _)) in topo.subscribers.iter().enumerate() {
            let filter = filter.clone();
            let id = format!("mb-{run_id}-s{i}");
            set.spawn(async move {
                let (mut r, mut w) = client::connect(sub_addr, &id, version, KEEP_ALIVE).await?;
                client::subscribe(&mut r, &mut w, &filter, qos).await?;
                anyhow::Ok((i, r, w))
            });
        }
        while let Some(res) = set.join_next().await {
            subs.push(res.context("subscriber setup task")??);
        }
        subs.sort_by_key(|(i, _, _)| *i);
    }
    let watcher = match &args.watch {
        Some(filter) => {
            let id = format!("mb-{run_id}-w");
            let (mut r, mut w) = client::connect(sub_addr, &id, version, KEEP_ALIVE).await?;
            client::subscribe(&mut r, &mut w, filter, QoS::AtMostOnce).await?;
            Some((r, w))
        }
        None => None,
    };
    if sub_addr != addr {
        // Subscriptions on another node reach the publishers' node a moment later.
        tokio::time::sleep(Duration::from_secs_f64(args.sub_settle)).await;
    }
    let mut pubs = Vec::with_capacity(topo.publishers.len());
    for i in 0..topo.publishers.len() {
        let id = format!("mb-{run_id}-p{i}");
        pubs.push(client::connect(addr, &id, version, KEEP_ALIVE).await?);
    }

    let t0 = Instant::now();
    let measure_from = t0 + warmup;
    let deadline = measure_from + duration;
    let shared = Arc::new(Shared {
        t0,
        qos,
        tracks: receivers
            .iter()
            .map(|&r| PubTrack {
                window: Semaphore::new(args.window()),
                pending: Mutex::new(HashMap::new()),
                receivers: r,
                sent: AtomicU64::new(0),
                sent_measured: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                expired: AtomicU64::new(0),
                window_stalls: AtomicU64::new(0),
                ack_stalls: AtomicU64::new(0),
            })
            .collect(),
        measure_from_ns: warmup.as_nanos() as u64,
        measure_to_ns: (warmup + duration).as_nanos() as u64,
        json: args.json,
    });

    let cpu_probe = args.broker_pid.map(|pid| {
        tokio::spawn(async move {
            sleep_until(measure_from).await;
            let a = procfs::cpu_ticks(pid);
            sleep_until(deadline).await;
            let b = procfs::cpu_ticks(pid);
            let rss = procfs::rss_kib(pid);
            let cpu = match (a, b) {
                (Ok(a), Ok(b)) => {
                    Some((b - a) as f64 / procfs::CLK_TCK / duration.as_secs_f64() * 100.0)
                }
                _ => None,
            };
            (cpu, rss.ok())
        })
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = JoinSet::new();
    for (i, r, w) in subs {
        let shared = shared.clone();
        let stop = stop_rx.clone();
        sub_tasks.spawn(async move {
            subscriber(r, w, shared, stop)
                .await
                .with_context(|| format!("subscriber {i}"))
        });
    }
    let watch_task = watcher.map(|(r, w)| {
        let stop = stop_rx.clone();
        tokio::spawn(async move { watch_loop(r, w, stop).await.context("watch connection") })
    });
    let mut pub_tasks = JoinSet::new();
    let payload_len = args.payload;
    let expire_ns = args.expire_ms * 1_000_000;
    let publishers = topo.publishers.len();
    let spin = Duration::from_micros(args.spin_us);
    for (i, (r, w)) in pubs.into_iter().enumerate() {
        let shared = shared.clone();
        let stop = stop_rx.clone();
        let topic = ByteStr::from(topo.publishers[i].as_str());
        let window = args.window();
        pub_tasks.spawn(async move {
            publisher(
                PubCfg {
                    id: i,
                    topic,
                    payload_len,
                    window,
                    ack_cap: args_ack_cap(window),
                    expire_ns,
                    deadline,
                    schedule: rate.map(|r| Schedule::new(r, publishers, i)),
                    spin,
                },
                r,
                w,
                shared,
                stop,
            )
            .await
            .with_context(|| format!("publisher {i}"))
        });
    }

    // Publishers stop on their own at the deadline (their PUBACK readers
    // keep going until `stop`).
    let mut writers = Vec::new();
    let mut ack_readers = Vec::new();
    let mut send_lag = Histogram::default();
    while let Some(res) = pub_tasks.join_next().await {
        let (w, reader_task, lag) = res.context("publisher task")??;
        writers.push(w);
        ack_readers.push(reader_task);
        send_lag.merge(&lag);
    }

    // Drain: wait (bounded) until every message reached all its receivers
    // and, for QoS 1, every PUBACK came back.
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    let drained = loop {
        let done = shared.tracks.iter().all(|t| {
            t.outstanding() == 0
                && (qos == QoS::AtMostOnce
                    || t.acked.load(Ordering::Relaxed) >= t.sent.load(Ordering::Relaxed))
        });
        if done {
            break true;
        }
        if Instant::now() >= drain_until {
            break false;
        }
        sleep(Duration::from_millis(5)).await;
    };
    let _ = stop_tx.send(true);

    let mut stats = Vec::new();
    while let Some(res) = sub_tasks.join_next().await {
        stats.push(res.context("subscriber task")??);
    }
    for t in ack_readers {
        t.await.context("PUBACK reader task")??;
    }
    for w in writers {
        w.disconnect().await;
    }
    let watched = match watch_task {
        Some(t) => Some(t.await.context("watch task")??),
        None => None,
    };
    let (broker_cpu_pct, broker_rss_kib) = match cpu_probe {
        Some(t) => t.await.unwrap_or((None, None)),
        None => (None, None),
    };

    let mut hist = Histogram::default();
    let sum = |f: fn(&PubTrack) -> &AtomicU64| -> u64 {
        shared
            .tracks
            .iter()
            .map(|t| f(t).load(Ordering::Relaxed))
            .sum()
    };
    let open_loop = rate.is_some();
    let lag_us = |q: f64| open_loop.then(|| send_lag.quantile(q) as f64 / 1000.0);
    let mut report = LoadReport {
        publishers: topo.publishers.len(),
        subscribers: topo.subscribers.len(),
        sent: shared
            .tracks
            .iter()
            .map(|t| t.sent.load(Ordering::Relaxed))
            .sum(),
        acked: shared
            .tracks
            .iter()
            .map(|t| t.acked.load(Ordering::Relaxed))
            .sum(),
        delivered: 0,
        measured: 0,
        msgs_per_s: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
        p999_us: 0.0,
        max_us: 0.0,
        achieved_rate: sum(|t| &t.sent_measured) as f64 / duration.as_secs_f64(),
        window_stalls: open_loop.then(|| sum(|t| &t.window_stalls)),
        ack_stalls: open_loop.then(|| sum(|t| &t.ack_stalls)),
        send_lag_p50_us: lag_us(0.50),
        send_lag_p99_us: lag_us(0.99),
        loss: 0,
        duplicates: 0,
        reordered: 0,
        unexpected: 0,
        expired: shared
            .tracks
            .iter()
            .map(|t| t.expired.load(Ordering::Relaxed))
            .sum(),
        drained,
        broker_cpu_pct,
        broker_rss_kib,
        watched,
    };
    // Loss = receipts the topology expects minus distinct receipts seen.
    let mut expected_receipts: u64 = 0;
    for (p, t) in shared.tracks.iter().enumerate() {
        expected_receipts += t.sent.load(Ordering::Relaxed) * u64::from(receivers[p]);
    }
    let mut distinct_total = 0;
    for s in &stats {
        hist.merge(&s.hist);
        report.measured += s.measured;
        report.duplicates += s.duplicates;
        report.reordered += s.reordered;
        report.unexpected += s.unexpected;
        for (&p, set) in &s.seqs {
            let sent = shared.tracks[p].sent.load(Ordering::Relaxed);
            // Anything at or above `sent` would be unexpected; count only
            // the valid range as delivered.
            distinct_total += sent - set.missing(sent);
        }
    }
    report.delivered = distinct_total;
    report.loss = expected_receipts - distinct_total;
    report.msgs_per_s = report.measured as f64 / duration.as_secs_f64();
    report.p50_us = hist.quantile(0.50) as f64 / 1000.0;
    report.p99_us = hist.quantile(0.99) as f64 / 1000.0;
    report.p999_us = hist.quantile(0.999) as f64 / 1000.0;
    report.max_us = hist.max() as f64 / 1000.0;
    if hist.count() != report.measured {
        bail!("internal error: histogram count mismatch");
    }
    Ok(report)
}

async fn subscriber(
    mut r: Reader,
    mut w: Writer,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<SubStats> {
    let mut st = SubStats::default();
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE / 2)));
    ping.tick().await;
    loop {
        while let Some(packet) = r.try_next()? {
            match packet {
                Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        w.push(&client::puback(p.packet_id));
                    }
                    on_message(&mut st, &shared, &p.payload);
                }
                Packet::PingResp | Packet::SubAck(_) => {}
                other => bail!("unexpected packet from broker: {other:?}"),
            }
        }
        w.flush().await?;
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            res = r.fill() => res?,
            _ = ping.tick() => w.send(&Packet::PingReq).await?,
        }
    }
    w.disconnect().await;
    Ok(st)
}

/// Counts every PUBLISH on the `--watch` filter until `stop`, then until
/// nothing arrived for 300 ms (rule republishes trail the deliveries).
async fn watch_loop(mut r: Reader, mut w: Writer, mut stop: watch::Receiver<bool>) -> Result<u64> {
    let mut n: u64 = 0;
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE / 2)));
    ping.tick().await;
    let mut stopping = false;
    loop {
        while let Some(packet) = r.try_next()? {
            match packet {
                Packet::Publish(p) => {
                    n += 1;
                    if p.qos == QoS::AtLeastOnce {
                        w.push(&client::puback(p.packet_id));
                    }
                }
                Packet::PingResp | Packet::SubAck(_) => {}
                other => bail!("unexpected packet from broker: {other:?}"),
            }
        }
        w.flush().await?;
        if stopping {
            match timeout(Duration::from_millis(300), r.fill()).await {
                Ok(res) => res?,
                Err(_) => break,
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => stopping = true,
            res = r.fill() => res?,
            _ = ping.tick() => w.send(&Packet::PingReq).await?,
        }
    }
    w.disconnect().await;
    Ok(n)
}

/// Publisher id, sequence number and send time from a binary payload header.
pub(crate) fn decode_header(payload: &[u8]) -> Option<(usize, u64, u64)> {
    decode(payload, false)
}

/// Publisher id, sequence number and send time from a payload.
fn decode(payload: &[u8], json: bool) -> Option<(usize, u64, u64)> {
    if json {
        return Some((
            json_u64(payload, b"\"p\":")? as usize,
            json_u64(payload, b"\"seq\":")?,
            json_u64(payload, b"\"ts\":")?,
        ));
    }
    if payload.len() < HEADER {
        return None;
    }
    let field = |a: usize, b: usize| {
        let mut x = [0u8; 8];
        x[..b - a].copy_from_slice(&payload[a..b]);
        u64::from_le_bytes(x)
    };
    Some((field(0, 4) as usize, field(4, 12), field(12, 20)))
}

/// The unsigned integer after `key` (`"name":`) in a flat JSON object as
/// written by [`json_payload`]; `None` if absent or not a number.
fn json_u64(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = payload[at..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit());
    let mut v: u64 = 0;
    let mut any = false;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

/// `{"p":ID,"seq":SEQ,"ts":NS,"pad":"xx.."}` padded to `len` bytes (longer
/// when the fields alone do not fit).
fn json_payload(buf: &mut Vec<u8>, id: usize, seq: u64, ts: u64, len: usize) {
    buf.clear();
    let _ = write!(buf, r#"{{"p":{id},"seq":{seq},"ts":{ts},"pad":""#);
    let pad = len.saturating_sub(buf.len() + 2);
    buf.extend(std::iter::repeat_n(b'x', pad));
    buf.extend_from_slice(b"\"}");
}

fn on_message(st: &mut SubStats, shared: &Shared, payload: &[u8]) {
    let now = shared.now_ns();
    let Some((pid, seq, sent_ns)) = decode(payload, shared.json) else {
        st.unexpected += 1;
        return;
    };
    let Some(track) = shared.tracks.get(pid) else {
        st.unexpected += 1;
        return;
    };
    if seq >= track.sent.load(Ordering::Relaxed) + BATCH as u64 * 2 {
        // Far beyond anything published: not ours.
        st.unexpected += 1;
        return;
    }
    let set = st.seqs.entry(pid).or_default();
    if !set.insert(seq) {
        st.duplicates += 1;
        return;
    }
    match set.max_seen {
        Some(m) if seq < m => st.reordered += 1,
        _ => set.max_seen = Some(seq),
    }
    if now >= shared.measure_from_ns && now <= shared.measure_to_ns {
        st.measured += 1;
        st.hist.record(now.saturating_sub(sent_ns));
    }
    track.delivered(seq);
}

/// Most QoS 1 publishes without PUBACK for a delivery window of `window`:
/// the window itself, but never more than the 65,535 packet ids (PUBACKs
/// come back in order, so an id is free again before it is reused).
fn args_ack_cap(window: usize) -> usize {
    window.min(usize::from(u16::MAX))
}

#[derive(Debug)]
struct PubCfg {
    id: usize,
    topic: ByteStr,
    payload_len: usize,
    /// Closed loop: the window; open loop: its safety bound.
    window: usize,
    /// QoS 1 publishes without PUBACK at most.
    ack_cap: usize,
    expire_ns: u64,
    deadline: Instant,
    /// Open loop (`--rate`): when each message is due.
    schedule: Option<Schedule>,
    /// Open loop: the last stretch before a due time spent yielding instead
    /// of on tokio's timer (`--spin-us`).
    spin: Duration,
}

/// Builds and queues the publishes of one publisher.
struct Publishes {
    zeros: Vec<u8>,
    json_buf: Vec<u8>,
    seq: u64,
    packet_id: u16,
}

impl Publishes {
    fn new(payload_len: usize) -> Publishes {
        Publishes {
            zeros: vec![0u8; payload_len],
            json_buf: Vec::with_capacity(payload_len + 64),
            seq: 0,
            packet_id: 0,
        }
    }

    /// Queues the next message on `w`, stamped `ts` (ns since the run's
    /// start); `now` is the actual time, for the measured send count.
    fn push(
        &mut self,
        w: &mut Writer,
        cfg: &PubCfg,
        shared: &Shared,
        track: &PubTrack,
        ts: u64,
        now: u64,
    ) {
        let seq = self.seq;
        lock(&track.pending).insert(seq, (track.receivers, ts));
        let payload = if shared.json {
            json_payload(&mut self.json_buf, cfg.id, seq, ts, cfg.payload_len);
            Bytes::copy_from_slice(&self.json_buf)
        } else {
            let mut payload = BytesMut::with_capacity(cfg.payload_len);
            payload.put_u32_le(cfg.id as u32);
            payload.put_u64_le(seq);
            payload.put_u64_le(ts);
            payload.put_slice(&self.zeros[HEADER..]);
            payload.freeze()
        };
        let id = if shared.qos == QoS::AtLeastOnce {
            self.packet_id = self.packet_id.checked_add(1).unwrap_or(1);
            self.packet_id
        } else {
            0
        };
        w.push(&client::publish(&cfg.topic, shared.qos, id, payload));
        self.seq += 1;
        track.sent.store(self.seq, Ordering::Relaxed);
        if now >= shared.measure_from_ns && now < shared.measure_to_ns {
            track.sent_measured.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type AckReader = tokio::task::JoinHandle<Result<()>>;

async fn publisher(
    cfg: PubCfg,
    mut r: Reader,
    mut w: Writer,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(Writer, AckReader, Histogram)> {
    let track_idx = cfg.id;
    // At most `ack_cap` QoS 1 publishes without PUBACK, like a client's
    // Receive Maximum; keeps packet ids from ever colliding.
    let acks = Arc::new(Semaphore::new(cfg.ack_cap));
    let reader = {
        let shared = shared.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            loop {
                let packet = tokio::select! {
                    biased;
                    _ = stop.changed() => return Ok(()),
                    p = r.next() => p?,
                };
                match packet {
                    Packet::PubAck(_) => {
                        shared.tracks[track_idx]
                            .acked
                            .fetch_add(1, Ordering::Relaxed);
                        acks.add_permits(1);
                    }
                    Packet::PingResp => {}
                    other => bail!("unexpected packet from broker: {other:?}"),
                }
            }
        })
    };
    let mut lag = Histogram::default();
    match cfg.schedule {
        Some(schedule) => open_loop(&cfg, schedule, &mut w, &shared, &acks, &mut lag).await?,
        None => closed_loop(&cfg, &mut w, &shared, &acks).await?,
    }
    Ok((w, reader, lag))
}

/// Publishes whenever a window slot is free, until the deadline.
async fn closed_loop(
    cfg: &PubCfg,
    w: &mut Writer,
    shared: &Shared,
    acks: &Semaphore,
) -> Result<()> {
    let track = &shared.tracks[cfg.id];
    let mut out = Publishes::new(cfg.payload_len);
    let mut last_send = Instant::now();
    let tick = Duration::from_millis(100);
    'run: while Instant::now() < cfg.deadline {
        let permit = tokio::select! {
            _ = sleep_until(cfg.deadline) => break 'run,
            p = timeout(tick, track.window.acquire()) => p,
        };
        let mut n = match permit {
            Ok(p) => {
                p.context("window closed")?.forget();
                1
            }
            Err(_) => {
                track.expire(shared.now_ns(), cfg.expire_ns);
                if last_send.elapsed() > Duration::from_secs(u64::from(KEEP_ALIVE / 2)) {
                    w.send(&Packet::PingReq).await?;
                    last_send = Instant::now();
                }
                continue;
            }
        };
        while n < BATCH {
            match track.window.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if shared.qos == QoS::AtLeastOnce {
            let got = tokio::select! {
                _ = sleep_until(cfg.deadline) => break 'run,
                p = acks.acquire_many(n as u32) => p,
            };
            got.context("ack window closed")?.forget();
        }
        for _ in 0..n {
            let now = shared.now_ns();
            out.push(w, cfg, shared, track, now, now);
        }
        w.flush().await?;
        last_send = Instant::now();
    }
    Ok(())
}

/// Returns at `due`: on tokio's timer, which has millisecond ticks and so
/// fires up to about 1 ms late, until `spin` before it, then by yielding to
/// the other tasks until the time has come (a busy wait, but other tasks
/// and the socket still run).
async fn wait_until(due: Instant, spin: Duration) {
    // Only when `early` is ahead: the timer rounds up to its next tick, so
    // even a deadline just past can sleep for most of a millisecond.
    if let Some(early) = due.checked_sub(spin).filter(|&e| Instant::now() < e) {
        sleep_until(early).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// Open loop, every `tick`: lost QoS 0 messages must not fill the window
/// bound, and an idle connection needs a PINGREQ.
async fn housekeep(
    cfg: &PubCfg,
    w: &mut Writer,
    shared: &Shared,
    last_send: &mut Instant,
) -> Result<()> {
    shared.tracks[cfg.id].expire(shared.now_ns(), cfg.expire_ns);
    if last_send.elapsed() > Duration::from_secs(u64::from(KEEP_ALIVE / 2)) {
        w.send(&Packet::PingReq).await?;
        *last_send = Instant::now();
    }
    Ok(())
}

/// Publishes every message at its due time on `schedule` (at once when
/// behind), until the deadline; the window and the PUBACK cap are only
/// bounds, and every wait for them is counted as a stall. Records in `lag`
/// how late each message measured went out.
async fn open_loop(
    cfg: &PubCfg,
    schedule: Schedule,
    w: &mut Writer,
    shared: &Shared,
    acks: &Semaphore,
    lag: &mut Histogram,
) -> Result<()> {
    let track = &shared.tracks[cfg.id];
    let mut out = Publishes::new(cfg.payload_len);
    let mut last_send = Instant::now();
    let tick = Duration::from_millis(100);
    let deadline_ns = shared.measure_to_ns;
    // Permits are taken per batch: a batch never needs more than a bound holds.
    let max_batch = BATCH.min(cfg.window).min(cfg.ack_cap);
    let mut housekeeping = Instant::now() + tick;
    'run: loop {
        let due_ns = schedule.due_ns(out.seq);
        if due_ns >= deadline_ns {
            break;
        }
        let due = shared.t0 + Duration::from_nanos(due_ns);
        if Instant::now() >= housekeeping {
            housekeep(cfg, w, shared, &mut last_send).await?;
            housekeeping = Instant::now() + tick;
        }
        if Instant::now() < due {
            tokio::select! {
                _ = wait_until(due, cfg.spin) => {}
                _ = sleep_until(housekeeping) => continue,
            }
        }
        let now_ns = shared.now_ns().min(deadline_ns - 1);
        let n = schedule.due_count(out.seq, now_ns, max_batch).max(1);
        if let Ok(p) = track.window.try_acquire_many(n as u32) {
            p.forget();
        } else {
            track.window_stalls.fetch_add(1, Ordering::Relaxed);
            loop {
                let got = tokio::select! {
                    _ = sleep_until(cfg.deadline) => break 'run,
                    p = timeout(tick, track.window.acquire_many(n as u32)) => p,
                };
                match got {
                    Ok(p) => {
                        p.context("window closed")?.forget();
                        break;
                    }
                    Err(_) => {
                        housekeep(cfg, w, shared, &mut last_send).await?;
                        housekeeping = Instant::now() + tick;
                    }
                }
            }
        }
        if shared.qos == QoS::AtLeastOnce {
            if let Ok(p) = acks.try_acquire_many(n as u32) {
                p.forget();
            } else {
                track.ack_stalls.fetch_add(1, Ordering::Relaxed);
                let got = tokio::select! {
                    _ = sleep_until(cfg.deadline) => break 'run,
                    p = acks.acquire_many(n as u32) => p,
                };
                got.context("ack window closed")?.forget();
            }
        }
        for _ in 0..n {
            let ts = schedule.due_ns(out.seq);
            let now = shared.now_ns();
            if now >= shared.measure_from_ns && now < shared.measure_to_ns {
                lag.record(now.saturating_sub(ts));
            }
            out.push(w, cfg, shared, track, ts, now);
        }
        w.flush().await?;
        last_send = Instant::now();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payload_round_trips_at_the_requested_size() {
        let mut buf = Vec::new();
        json_payload(&mut buf, 7, 123_456, 9_876_543_210, 64);
        assert_eq!(buf.len(), 64);
        assert!(buf.starts_with(br#"{"p":7,"seq":123456,"ts":9876543210,"pad":"x"#));
        assert!(buf.ends_with(br#"x"}"#));
        assert_eq!(decode(&buf, true), Some((7, 123_456, 9_876_543_210)));
        // Fields longer than the requested size: no padding, still valid.
        json_payload(&mut buf, 1, u64::MAX, u64::MAX, 20);
        assert!(buf.ends_with(br#""pad":""}"#));
        assert_eq!(decode(&buf, true), Some((1, u64::MAX, u64::MAX)));
        assert_eq!(decode(b"{\"p\":1}", true), None);
    }

    #[test]
    fn schedule_spaces_each_publisher_at_its_share_of_the_rate() {
        // 10,000 msgs/s over 8 publishers: 1,250 each, one every 0.8 ms.
        let s = Schedule::new(10_000.0, 8, 0);
        assert_eq!(s.due_ns(0), 0);
        assert_eq!(s.due_ns(1), 800_000);
        assert_eq!(s.due_ns(1_250), 1_000_000_000);
        // Publisher 3 starts 3 / 10,000 s late.
        let s3 = Schedule::new(10_000.0, 8, 3);
        assert_eq!(s3.due_ns(0), 300_000);
        assert_eq!(s3.due_ns(2), 1_900_000);
        // Rates that do not divide a second: still on time, never early.
        let third = Schedule::new(3.0, 1, 0);
        assert_eq!(third.due_ns(1), 333_333_333);
        assert_eq!(third.due_ns(3), 1_000_000_000);
        let mut last = 0;
        for k in 0..100_000 {
            let d = third.due_ns(k);
            assert!(d >= last);
            last = d;
        }
    }

    #[test]
    fn publishers_interleave_into_one_evenly_spaced_stream() {
        let mut all: Vec<u64> = (0..50)
            .flat_map(|id| {
                let s = Schedule::new(10_000.0, 50, id);
                (0..20).map(move |k| s.due_ns(k))
            })
            .collect();
        all.sort_unstable();
        assert_eq!(all.len(), 1_000);
        for (i, pair) in all.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            assert!(gap.abs_diff(100_000) <= 1, "gap {gap} ns after message {i}");
        }
    }

    #[test]
    fn due_count_catches_up_after_falling_behind() {
        // One message every ms. Before the next due time: nothing to send.
        let s = Schedule::new(1_000.0, 1, 0);
        assert_eq!(s.due_count(5, 4_999_999, BATCH), 0);
        // On time: exactly the one message.
        assert_eq!(s.due_count(5, 5_000_000, BATCH), 1);
        assert_eq!(s.due_count(5, 5_999_999, BATCH), 1);
        // 10.5 ms late: messages 5..=15 are all due and go out at once.
        assert_eq!(s.due_count(5, 15_500_000, BATCH), 11);
        // Far behind: one batch at a time, the next call continues.
        assert_eq!(s.due_count(0, 1_000_000_000, BATCH), BATCH);
        assert_eq!(s.due_count(BATCH as u64, 1_000_000_000, 10), 10);
        // Every message of the catch-up keeps its own due time (what the
        // payload carries), so the wait counts as latency.
        let stamps: Vec<u64> = (5..16).map(|k| s.due_ns(k)).collect();
        assert_eq!(stamps.first(), Some(&5_000_000));
        assert_eq!(stamps.last(), Some(&15_000_000));
    }

    #[test]
    fn ack_cap_never_exceeds_the_packet_ids() {
        assert_eq!(args_ack_cap(64), 64);
        assert_eq!(args_ack_cap(65_535), 65_535);
        assert_eq!(args_ack_cap(100_000), 65_535);
    }
}
