//! Durable sessions and retained messages.
//!
//! The broker describes every change to persistent state as an [`Op`]
//! (session created, subscription added, message queued, packet id assigned,
//! message acknowledged, ...) and submits it with [`Store::submit`] while it
//! holds the lock that orders that change, so the log is in the order the
//! broker applied the changes. `submit` never blocks on I/O: it appends to
//! an in-memory list and returns a ticket.
//!
//! One commit thread takes everything pending, folds it into one batch (the
//! last write per key wins; a message queued and acknowledged within the
//! same batch is never written at all), and hands it to the [`Backend`]
//! (sled or PostgreSQL) as one atomic, synced write. Then it publishes the
//! highest ticket it made durable; [`Store::durable`] waits for a ticket,
//! which is how a PUBACK / PUBREC / SUBACK / CONNACK waits for its data
//! (with `sync = "ack"`, the default). While one batch is written the next
//! one gathers: group commit, one fsync for every connection's writes.

pub(crate) mod codec;
mod config;
pub mod postgres;
pub mod sled;
pub mod tools;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::message::Message;
use crate::records::{Delivery, Stage, SubscriptionRecord};

pub use codec::Corrupt;
pub use config::{BackendKind, PersistenceConfig, SyncPolicy};

/// Errors opening, reading or writing a store. Each names the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: cannot open: {message}")]
    Open { store: String, message: String },
    /// Another process (a running broker) holds the store's lock.
    #[error(
        "{store}: cannot open: the store is locked by another process (is a broker running on it?)"
    )]
    Locked { store: String },
    #[error("{store}: record {key} is corrupt: {message}")]
    Corrupt {
        store: String,
        key: String,
        message: String,
    },
    #[error("{store}: {message}")]
    Io { store: String, message: String },
}

/// A persistent session's own record.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub expiry: u32,
    /// When its connection ended (ms since the epoch); `None` while connected.
    pub disconnected_at_ms: Option<i64>,
    /// The will (message, delay in seconds) of the live connection, or the
    /// will still waiting for its delay.
    pub will: Option<(Arc<Message>, u32)>,
}

/// One change to durable state.
#[derive(Debug, Clone)]
pub enum Op {
    PutSession(Arc<str>, SessionRecord),
    /// Deletes the session and every record of it.
    DropSession(Arc<str>),
    PutSub(Arc<str>, String, SubscriptionRecord),
    DelSub(Arc<str>, String),
    /// A QoS 1/2 delivery queued for the session, under its sequence number.
    Queue(Arc<str>, u64, Delivery),
    /// The delivery `seq` is in flight with this packet id and stage.
    Inflight(Arc<str>, u64, u16, Stage),
    /// The delivery `seq` is done (acknowledged, expired or dropped).
    Dequeue(Arc<str>, u64),
    /// An incoming QoS 2 packet id awaiting PUBREL.
    PutQos2(Arc<str>, u16),
    DelQos2(Arc<str>, u16),
    PutRetained(Arc<Message>),
    DelRetained(String),
    /// A bridge's outbound buffer (the bridge/ module): a message queued for the
    /// remote under the bridge's name and its sequence number.
    BridgeQueue(Arc<str>, u64, Delivery),
    /// The buffered message `seq` is in flight to the remote with this
    /// packet id and stage.
    BridgeInflight(Arc<str>, u64, u16, Stage),
    /// The buffered message `seq` is done (the remote acknowledged it, or it
    /// was dropped).
    BridgeDequeue(Arc<str>, u64),
    /// A QoS 2 packet id received from the remote, awaiting its PUBREL.
    BridgePutQos2(Arc<str>, u16),
    BridgeDelQos2(Arc<str>, u16),
    /// Deletes every record of the bridge.
    DropBridge(Arc<str>),
}

/// Which records the ops of a [`Store`] handle land in: a session's, or
/// (the same kinds of change, made by a bridge's buffer, which is a
/// session of its own) a bridge's, whose keys no client id can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Sessions,
    Bridges,
}

impl Op {
    /// The op as it is stored for a bridge buffer: queue, inflight and
    /// incoming QoS 2 changes go to the bridge's keys, a dropped session
    /// drops the bridge's records; session records and subscriptions are
    /// not kept for bridges (their configuration says them): `None`.
    fn for_bridge(self) -> Option<Op> {
        Some(match self {
            Op::Queue(b, s, d) => Op::BridgeQueue(b, s, d),
            Op::Inflight(b, s, id, st) => Op::BridgeInflight(b, s, id, st),
            Op::Dequeue(b, s) => Op::BridgeDequeue(b, s),
            Op::PutQos2(b, id) => Op::BridgePutQos2(b, id),
            Op::DelQos2(b, id) => Op::BridgeDelQos2(b, id),
            Op::DropSession(b) => Op::DropBridge(b),
            Op::PutSession(..) | Op::PutSub(..) | Op::DelSub(..) => return None,
            other => other,
        })
    }
}

/// Where a record lives. Backends map these to their own keys or tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Session(Arc<str>),
    Sub(Arc<str>, String),
    Queue(Arc<str>, u64),
    Inflight(Arc<str>, u64),
    Qos2(Arc<str>, u16),
    Retained(String),
    BridgeQueue(Arc<str>, u64),
    BridgeInflight(Arc<str>, u64),
    BridgeQos2(Arc<str>, u16),
}

impl Key {
    fn client(&self) -> Option<&Arc<str>> {
        match self {
            Key::Session(c)
            | Key::Sub(c, _)
            | Key::Queue(c, _)
            | Key::Inflight(c, _)
            | Key::Qos2(c, _) => Some(c),
            _ => None,
        }
    }

    fn bridge(&self) -> Option<&Arc<str>> {
        match self {
            Key::BridgeQueue(b, _) | Key::BridgeInflight(b, _) | Key::BridgeQos2(b, _) => Some(b),
            _ => None,
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Session(c) => write!(f, "session {c:?}"),
            Key::Sub(c, t) => write!(f, "subscription {t:?} of {c:?}"),
            Key::Queue(c, s) => write!(f, "queued message {s} of {c:?}"),
            Key::Inflight(c, s) => write!(f, "inflight state of message {s} of {c:?}"),
            Key::Qos2(c, p) => write!(f, "incoming QoS 2 id {p} of {c:?}"),
            Key::Retained(t) => write!(f, "retained message {t:?}"),
            Key::BridgeQueue(b, s) => write!(f, "buffered message {s} of bridge {b:?}"),
            Key::BridgeInflight(b, s) => {
                write!(f, "inflight state of buffered message {s} of bridge {b:?}")
            }
            Key::BridgeQos2(b, p) => write!(f, "incoming QoS 2 id {p} of bridge {b:?}"),
        }
    }
}

/// One atomic write: first every record of the `cleared` clients and
/// `cleared_bridges` is deleted, then each key is set (`Some`) or deleted
/// (`None`).
#[derive(Debug, Default)]
pub struct Batch {
    pub cleared: Vec<Arc<str>>,
    pub cleared_bridges: Vec<Arc<str>>,
    pub writes: Vec<(Key, Option<Vec<u8>>)>,
}

/// A storage engine.
pub trait Backend: Send + 'static {
    /// "sled store at ./data", for errors and logs.
    fn describe(&self) -> String;
    /// Every record.
    fn load(&mut self) -> Result<Vec<(Key, Vec<u8>)>, StoreError>;
    /// Applies `batch` atomically and durably (synced) before returning.
    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError>;
    /// For `midge store repair`: deletes records that hold other records
    /// and cannot be split into them (sled's queue chunks), which `load`
    /// would refuse; returns a description of each. Records that load
    /// individually are checked, and deleted, by the caller.
    fn drop_unreadable(&mut self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub ops: AtomicU64,
    pub commits: AtomicU64,
    pub records_written: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub commit_micros_max: AtomicU64,
    /// Commits by duration: `commit_buckets[i]` counts those above
    /// `COMMIT_BUCKETS_MICROS[i - 1]` and at most `COMMIT_BUCKETS_MICROS[i]`
    /// (longer ones only in `commits`). For the `/metrics` histogram.
    pub commit_buckets: [AtomicU64; COMMIT_BUCKETS_MICROS.len()],
    pub errors: AtomicU64,
}

/// Upper bounds (microseconds) of the commit-duration histogram buckets.
pub const COMMIT_BUCKETS_MICROS: [u64; 11] = [
    100, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// With `sync = "interval"`, how many ops the store may fall behind the
/// acknowledgements before publishers wait.
pub const INTERVAL_MAX_LAG: u64 = 100_000;

#[derive(Debug, Default)]
struct Pending {
    ops: Vec<Op>,
    /// Ticket of the last op submitted.
    last: u64,
    closing: bool,
}

#[derive(Debug)]
struct Inner {
    name: String,
    pending: Mutex<Pending>,
    wake: Condvar,
    committed: watch::Sender<u64>,
    sync: SyncPolicy,
    interval: Duration,
    stats: StoreStats,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The handle the broker holds (cheap to clone).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
    space: Space,
}

/// Everything a store held at start, decoded and grouped by session.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sessions: Vec<RestoredSession>,
    pub retained: Vec<Message>,
    /// Records of clients without a session record (dropped at restore).
    pub orphans: Vec<Arc<str>>,
    /// The bridges' outbound buffers and incoming QoS 2 ids, by name.
    pub bridges: Vec<RestoredBridge>,
}

/// What the store held for one bridge.
#[derive(Debug)]
pub struct RestoredBridge {
    pub name: Arc<str>,
    /// Buffered messages in sequence order, with their inflight state if sent.
    pub queue: Vec<(Delivery, Option<(u16, Stage)>)>,
    pub incoming_qos2: Vec<u16>,
}

#[derive(Debug)]
pub struct RestoredSession {
    pub client_id: Arc<str>,
    pub record: SessionRecord,
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// Deliveries in sequence order, with their inflight state if sent.
    pub queue: Vec<(Delivery, Option<(u16, Stage)>)>,
    pub incoming_qos2: Vec<u16>,
}

impl Store {
    /// Opens the configured backend and reads everything in it.
    pub fn open(cfg: &PersistenceConfig) -> Result<(Store, Snapshot), StoreError> {
        let backend = cfg.open_backend()?;
        Store::with_backend(
            backend,
            cfg.sync,
            Duration::from_millis(cfg.sync_interval_ms),
        )
    }

    /// Starts a store over `backend` (tests use this with their own backends).
    pub fn with_backend(
        mut backend: Box<dyn Backend>,
        sync: SyncPolicy,
        interval: Duration,
    ) -> Result<(Store, Snapshot), StoreError> {
        let name = backend.describe();
        let started = Instant::now();
        let rows = backend.load()?;
        let n = rows.len();
        let snapshot = assemble(&name, rows)?;
        info!(store = %name, records = n, sessions = snapshot.sessions.len(), retained = snapshot.retained.len(), ms = started.elapsed().as_millis() as u64, "store loaded");
        let (committed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            name,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            committed,
            sync,
            interval,
            stats: StoreStats::default(),
            thread: Mutex::new(None),
        });
        let i = inner.clone();
        let handle = std::thread::Builder::new()
            .name("midge-store".into())
            .spawn(move || commit_loop(i, backend))
            .map_err(|e| StoreError::Open {
                store: inner.name.clone(),
                message: format!("cannot start the commit thread: {e}"),
            })?;
        *inner.thread.lock() = Some(handle);
        Ok((
            Store {
                inner,
                space: Space::Sessions,
            },
            snapshot,
        ))
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// This store, for a bridge's buffer: the ops submitted through the
    /// handle land in the bridge keys ([`Space::Bridges`]).
    pub fn for_bridges(&self) -> Store {
        Store {
            inner: self.inner.clone(),
            space: Space::Bridges,
        }
    }

    /// Appends `op` to the log; returns its ticket for [`Store::durable`].
    pub fn submit(&self, op: Op) -> u64 {
        let op = match self.space {
            Space::Sessions => op,
            Space::Bridges => match op.for_bridge() {
                Some(op) => op,
                // Nothing to write: the ticket of what is already pending.
                None => return self.inner.pending.lock().last,
            },
        };
        let mut p = self.inner.pending.lock();
        p.ops.push(op);
        p.last += 1;
        let t = p.last;
        if p.ops.len() == 1 {
            self.inner.wake.notify_one();
        }
        t
    }

    /// Completes once every op up to `ticket` is durable (for ticket 0: at
    /// once). With `sync = "interval"` it does not wait for `ticket` itself,
    /// only for the store to be less than [`INTERVAL_MAX_LAG`] ops behind it:
    /// publishers are slowed down rather than memory growing without bound
    /// when the disk cannot keep up.
    pub async fn durable(&self, ticket: u64) {
        let need = match self.inner.sync {
            SyncPolicy::Ack => ticket,
            SyncPolicy::Interval => ticket.saturating_sub(INTERVAL_MAX_LAG),
        };
        if need == 0 || *self.inner.committed.borrow() >= need {
            return;
        }
        let mut rx = self.inner.committed.subscribe();
        let _ = rx.wait_for(|c| *c >= need).await;
    }

    /// Writes what is pending and stops the commit thread (blocking).
    pub fn close(&self) {
        self.inner.pending.lock().closing = true;
        self.inner.wake.notify_one();
        let handle = self.inner.thread.lock().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn commit_loop(inner: Arc<Inner>, mut backend: Box<dyn Backend>) {
    loop {
        let (ops, last, closing) = {
            let mut p = inner.pending.lock();
            while p.ops.is_empty() && !p.closing {
                inner.wake.wait(&mut p);
            }
            if inner.sync == SyncPolicy::Interval && !p.closing {
                // Let the interval's writes gather.
                inner.wake.wait_for(&mut p, inner.interval);
            }
            (std::mem::take(&mut p.ops), p.last, p.closing)
        };
        if !ops.is_empty() {
            let n = ops.len() as u64;
            let batch = fold(ops);
            let mut failures = 0u32;
            loop {
                let t = Instant::now();
                match backend.commit(&batch) {
                    Ok(()) => {
                        let us = t.elapsed().as_micros() as u64;
                        let s = &inner.stats;
                        s.ops.fetch_add(n, Ordering::Relaxed);
                        s.commits.fetch_add(1, Ordering::Relaxed);
                        s.records_written
                            .fetch_add(batch.writes.len() as u64, Ordering::Relaxed);
                        s.commit_micros_total.fetch_add(us, Ordering::Relaxed);
                        s.commit_micros_max.fetch_max(us, Ordering::Relaxed);
                        if let Some(i) = COMMIT_BUCKETS_MICROS.iter().position(|&le| us <= le) {
                            s.commit_buckets[i].fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Err(e) => {
                        // Nothing is acknowledged until this succeeds: publishers
                        // waiting on it are held back, not told a lie.
                        inner.stats.errors.fetch_add(1, Ordering::Relaxed);
                        failures += 1;
                        error!(error = %e, attempt = failures, "store write failed; retrying");
                        if closing && failures >= 20 {
                            error!(store = %inner.name, "giving up on the final write at shutdown");
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(
                            (50 * u64::from(failures)).min(2000),
                        ));
                    }
                }
            }
        }
        inner.committed.send_replace(last);
        if closing && inner.pending.lock().ops.is_empty() {
            return;
        }
    }
}

/// Folds a run of ops into one batch: the last write per key wins, and a
/// delivery queued and finished within the run is left out entirely.
fn fold(ops: Vec<Op>) -> Batch {
    enum V {
        Session(SessionRecord),
        Sub(SubscriptionRecord),
        Queue(Delivery),
        Inflight(u16, Stage),
        Qos2,
        Retained(Arc<Message>),
    }
    let mut cleared: Vec<Arc<str>> = Vec::new();
    let mut cleared_bridges: Vec<Arc<str>> = Vec::new();
    // (bridge?, owner, seq) of the deliveries queued in this run.
    let mut born: HashSet<(bool, Arc<str>, u64)> = HashSet::new();
    let mut slots: Vec<Option<(Key, Option<V>)>> = Vec::with_capacity(ops.len());
    let mut index: HashMap<Key, usize> = HashMap::with_capacity(ops.len());
    let mut set =
        |slots: &mut Vec<Option<(Key, Option<V>)>>, k: Key, v: Option<V>| match index.get(&k) {
            Some(&i) => slots[i] = Some((k, v)),
            None => {
                index.insert(k.clone(), slots.len());
                slots.push(Some((k, v)));
            }
        };
    for op in ops {
        match op {
            Op::PutSession(c, r) => set(&mut slots, Key::Session(c), Some(V::Session(r))),
            Op::DropSession(c) => {
                // Later writes for this client land on an empty slate (the
                // backend clears first); earlier ones are moot.
                for s in slots.iter_mut() {
                    if s.as_ref().and_then(|(k, _)| k.client()) == Some(&c) {
                        *s = None;
                    }
                }
                cleared.push(c);
            }
            Op::PutSub(c, f, r) => set(&mut slots, Key::Sub(c, f), Some(V::Sub(r))),
            Op::DelSub(c, f) => set(&mut slots, Key::Sub(c, f), None),
            Op::Queue(c, seq, d) => {
                born.insert((false, c.clone(), seq));
                set(&mut slots, Key::Queue(c, seq), Some(V::Queue(d)))
            }
            Op::Inflight(c, seq, id, st) => {
                set(&mut slots, Key::Inflight(c, seq), Some(V::Inflight(id, st)))
            }
            Op::Dequeue(c, seq) => {
                set(&mut slots, Key::Queue(c.clone(), seq), None);
                set(&mut slots, Key::Inflight(c, seq), None);
            }
            Op::PutQos2(c, id) => set(&mut slots, Key::Qos2(c, id), Some(V::Qos2)),
            Op::DelQos2(c, id) => set(&mut slots, Key::Qos2(c, id), None),
            Op::PutRetained(m) => set(
                &mut slots,
                Key::Retained(m.topic.to_string()),
                Some(V::Retained(m)),
            ),
            Op::DelRetained(t) => set(&mut slots, Key::Retained(t), None),
            Op::BridgeQueue(b, seq, d) => {
                born.insert((true, b.clone(), seq));
                set(&mut slots, Key::BridgeQueue(b, seq), Some(V::Queue(d)))
            }
            Op::BridgeInflight(b, seq, id, st) => set(
                &mut slots,
                Key::BridgeInflight(b, seq),
                Some(V::Inflight(id, st)),
            ),
            Op::BridgeDequeue(b, seq) => {
                set(&mut slots, Key::BridgeQueue(b.clone(), seq), None);
                set(&mut slots, Key::BridgeInflight(b, seq), None);
            }
            Op::BridgePutQos2(b, id) => set(&mut slots, Key::BridgeQos2(b, id), Some(V::Qos2)),
            Op::BridgeDelQos2(b, id) => set(&mut slots, Key::BridgeQos2(b, id), None),
            Op::DropBridge(b) => {
                for s in slots.iter_mut() {
                    if s.as_ref().and_then(|(k, _)| k.bridge()) == Some(&b) {
                        *s = None;
                    }
                }
                cleared_bridges.push(b);
            }
        }
    }
    let mut writes = Vec::with_capacity(slots.len());
    for (k, v) in slots.into_iter().flatten() {
        // A delivery both queued and finished in this run never reaches the store.
        if let (Key::Queue(c, s) | Key::Inflight(c, s), None) = (&k, &v) {
            if born.contains(&(false, c.clone(), *s)) {
                continue;
            }
        }
        if let (Key::BridgeQueue(b, s) | Key::BridgeInflight(b, s), None) = (&k, &v) {
            if born.contains(&(true, b.clone(), *s)) {
                continue;
            }
        }
        let enc = match v {
            None => None,
            Some(V::Session(r)) => Some(codec::encode_session(&r)),
            Some(V::Sub(r)) => Some(codec::encode_sub(&r)),
            Some(V::Queue(d)) => Some(codec::encode_delivery(&d)),
            Some(V::Inflight(id, st)) => Some(codec::encode_inflight(id, st)),
            Some(V::Qos2) => Some(Vec::new()),
            Some(V::Retained(m)) => Some(codec::encode_retained(&m)),
        };
        writes.push((k, enc));
    }
    Batch {
        cleared,
        cleared_bridges,
        writes,
    }
}

/// Decodes and groups loaded records; a record that does not decode is an
/// error naming the store and the record.
fn assemble(store: &str, rows: Vec<(Key, Vec<u8>)>) -> Result<Snapshot, StoreError> {
    let corrupt = |k: &Key, c: Corrupt| StoreError::Corrupt {
        store: store.to_string(),
        key: k.to_string(),
        message: c.0,
    };
    let mut sessions: HashMap<Arc<str>, RestoredSession> = HashMap::new();
    let mut subs: Vec<(Arc<str>, String, SubscriptionRecord)> = Vec::new();
    let mut queued: HashMap<(Arc<str>, u64), Delivery> = HashMap::new();
    let mut inflight: HashMap<(Arc<str>, u64), (u16, Stage)> = HashMap::new();
    let mut qos2: Vec<(Arc<str>, u16)> = Vec::new();
    let mut retained = Vec::new();
    let mut bridges: HashMap<Arc<str>, RestoredBridge> = HashMap::new();
    let mut bridge_inflight: HashMap<(Arc<str>, u64), (u16, Stage)> = HashMap::new();
    fn bridge<'a>(
        all: &'a mut HashMap<Arc<str>, RestoredBridge>,
        b: &Arc<str>,
    ) -> &'a mut RestoredBridge {
        all.entry(b.clone()).or_insert_with(|| RestoredBridge {
            name: b.clone(),
            queue: Vec::new(),
            incoming_qos2: Vec::new(),
        })
    }
    for (k, v) in rows {
        match &k {
            Key::Session(c) => {
                let record = codec::decode_session(&v).map_err(|e| corrupt(&k, e))?;
                sessions.insert(
                    c.clone(),
                    RestoredSession {
                        client_id: c.clone(),
                        record,
                        subscriptions: Vec::new(),
                        queue: Vec::new(),
                        incoming_qos2: Vec::new(),
                    },
                );
            }
            Key::Sub(c, f) => {
                if !midge_protocol::topic::valid_filter(
                    midge_protocol::topic::split_shared(f).map_or(f.as_str(), |(_, f)| f),
                ) {
                    return Err(corrupt(&k, Corrupt("invalid topic filter".into())));
                }
                let r = codec::decode_sub(&v).map_err(|e| corrupt(&k, e))?;
                subs.push((c.clone(), f.clone(), r));
            }
            Key::Queue(c, s) => {
                let d = codec::decode_delivery(&v, *s).map_err(|e| corrupt(&k, e))?;
                queued.insert((c.clone(), *s), d);
            }
            Key::Inflight(c, s) => {
                let i = codec::decode_inflight(&v).map_err(|e| corrupt(&k, e))?;
                inflight.insert((c.clone(), *s), i);
            }
            Key::Qos2(c, id) => qos2.push((c.clone(), *id)),
            Key::Retained(t) => {
                let m = codec::decode_retained(&v).map_err(|e| corrupt(&k, e))?;
                if m.topic.as_str() != t {
                    return Err(corrupt(&k, Corrupt("topic differs from its key".into())));
                }
                retained.push(m);
            }
            Key::BridgeQueue(b, s) => {
                let d = codec::decode_delivery(&v, *s).map_err(|e| corrupt(&k, e))?;
                bridge(&mut bridges, b).queue.push((d, None));
            }
            Key::BridgeInflight(b, s) => {
                let i = codec::decode_inflight(&v).map_err(|e| corrupt(&k, e))?;
                bridge_inflight.insert((b.clone(), *s), i);
            }
            Key::BridgeQos2(b, id) => bridge(&mut bridges, b).incoming_qos2.push(*id),
        }
    }
    let mut bridges: Vec<RestoredBridge> = bridges.into_values().collect();
    for b in &mut bridges {
        b.queue.sort_by_key(|(d, _)| d.seq);
        for (d, state) in &mut b.queue {
            *state = bridge_inflight.remove(&(b.name.clone(), d.seq));
        }
        b.incoming_qos2.sort_unstable();
    }
    bridges.sort_by(|a, b| a.name.cmp(&b.name));
    for ((b, s), _) in bridge_inflight {
        warn!(store, bridge = %b, seq = s, "inflight state without its buffered message; ignored");
    }
    let mut orphans: Vec<Arc<str>> = Vec::new();
    let mut orphan = |c: &Arc<str>| {
        if !orphans.contains(c) {
            warn!(store, client_id = %c, "records without a session record; dropping them");
            orphans.push(c.clone());
        }
    };
    for (c, f, r) in subs {
        match sessions.get_mut(&c) {
            Some(s) => s.subscriptions.push((f, r)),
            None => orphan(&c),
        }
    }
    for (c, id) in qos2 {
        match sessions.get_mut(&c) {
            Some(s) => s.incoming_qos2.push(id),
            None => orphan(&c),
        }
    }
    let mut queued: Vec<((Arc<str>, u64), Delivery)> = queued.into_iter().collect();
    queued.sort_by_key(|((_, s), _)| *s);
    for (key, d) in queued {
        let state = inflight.remove(&key);
        match sessions.get_mut(&key.0) {
            Some(s) => s.queue.push((d, state)),
            None => orphan(&key.0),
        }
    }
    // Inflight state whose message is gone: left from an interrupted
    // acknowledgement; harmless, dropped with the orphans' cleanup.
    for ((c, s), _) in inflight {
        warn!(store, client_id = %c, seq = s, "inflight state without its message; ignored");
    }
    let mut sessions: Vec<RestoredSession> = sessions.into_values().collect();
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(Snapshot {
        sessions,
        retained,
        orphans,
        bridges,
    })
}

#[cfg(test)]
mod tests;
