//! Persistent sessions that survive their node (`midge_cluster::state`):
//! the node holding a persistent session keeps its record in the cluster's
//! `<c>-state` bucket (subscriptions, expiry, incoming QoS 2 ids and a
//! checkpoint into the message stream), and a node that takes the client
//! id over when the old node is gone resumes the session from the record:
//! subscriptions installed, the stream replayed from the checkpoint into
//! its queue.
//!
//! - [`Sink`] (an `EventSink` in `broker::Parts::sinks`, put there by
//!   `App::bind` when `[cluster]` is on) hears every event that can change
//!   a record (connected, disconnected, subscribed, unsubscribed, acked,
//!   session expired) and queues the client id; one task ([`writer`])
//!   writes the records of the sessions this node holds, in batches, each a
//!   compare-and-set fenced by the claim's epoch; a session gone from the
//!   registry has its record deleted.
//! - [`after_claim`] runs in `takeover::claim` once this node owns the
//!   client id: it reads the record, holds it, and resumes the session from
//!   it when no session came from the old owner and none is here.
//!
//! The checkpoint of a session is the lowest `Message::stream_mark` of the
//! QoS 1/2 messages it holds unacknowledged, or, holding none, the node's
//! [`Cluster::mark`] read before the session is looked at.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use midge_cluster::state::{SessionRecord, Written};
use midge_cluster::{Cluster, ClusterError};
use midge_protocol::QoS;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::events::{Event, EventSink, Kind};
use crate::message::{InterestSync, MARK_EXACT};
use crate::records::{Delivery, Stage, SubscriptionRecord};
use crate::router::split_filter;
use crate::session::{Inflight, Session, SessionState};
use crate::store::codec;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How long a resume waits for the node's NATS subscriptions of the
/// session's filters before it reads the stream.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);

/// Hears the events that change a persistent session's record.
#[derive(Debug)]
pub struct Sink {
    tx: mpsc::UnboundedSender<Arc<str>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Arc<str>>>>,
    /// Set once joined: events of sessions this node does not hold a
    /// record of (clean sessions) are left out here, not queued.
    cluster: OnceLock<Arc<Cluster>>,
    /// Every SUBSCRIBED event registers its client's SUBACK here.
    sync: Arc<InterestSync>,
}

impl Sink {
    pub fn new() -> Arc<Sink> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Sink {
            tx,
            rx: Mutex::new(Some(rx)),
            cluster: OnceLock::new(),
            sync: Arc::default(),
        })
    }

    /// The node's interest barrier (SUBACKs wait on it).
    pub fn interest_sync(&self) -> Arc<InterestSync> {
        self.sync.clone()
    }
}

impl EventSink for Sink {
    fn kinds(&self) -> Kind {
        Kind::CONNECTED
            .union(Kind::DISCONNECTED)
            .union(Kind::SUBSCRIBED)
            .union(Kind::UNSUBSCRIBED)
            .union(Kind::ACKED)
            .union(Kind::SESSION_EXPIRED)
    }

    fn on_event(&self, event: &Event<'_>) {
        let id = match event {
            Event::Connected { client, .. }
            | Event::Disconnected { client, .. }
            | Event::Subscribed { client, .. }
            | Event::Unsubscribed { client, .. } => client.client_id,
            Event::Acked { receiver, .. } => receiver.client_id,
            Event::SessionExpired { client_id } => client_id,
            _ => return,
        };
        if matches!(event, Event::Subscribed { .. }) {
            self.sync.subscribed(id);
        }
        // Only CONNECTED can come before the claim's hold is visible here
        // (it follows it); every later event of a held session passes.
        if !matches!(event, Event::Connected { .. })
            && self.cluster.get().is_some_and(|c| !c.is_held(id))
        {
            return;
        }
        if let (Event::Acked { msg, .. }, Some(c)) = (event, self.cluster.get()) {
            let m = msg.stream_mark.load(Relaxed);
            if m != u64::MAX && m & MARK_EXACT != 0 {
                c.acknowledged(id, (m & !MARK_EXACT) + 1);
            }
        }
        let _ = self.tx.send(Arc::from(id));
    }
}

/// Starts the record writer (once; the sink's queue is taken).
pub fn start(broker: &Arc<Broker>, cluster: &Arc<Cluster>, sink: &Sink) {
    let _ = sink.cluster.set(cluster.clone());
    if let Some(rx) = sink.rx.lock().take() {
        tokio::spawn(writer(Arc::downgrade(broker), cluster.clone(), rx));
    }
}

/// Writes the records of the sessions whose client ids come in, a batch
/// at a time (a burst of acknowledgements costs one write per session).
async fn writer(broker: Weak<Broker>, c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<Arc<str>>) {
    let mut dirty: HashSet<Arc<str>> = HashSet::new();
    loop {
        if dirty.is_empty() {
            match rx.recv().await {
                Some(id) => {
                    dirty.insert(id);
                }
                None => return,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while let Ok(id) = rx.try_recv() {
            dirty.insert(id);
        }
        let Some(b) = broker.upgrade() else { return };
        let batch: Vec<Arc<str>> = dirty.drain().filter(|id| c.is_held(id)).collect();
        let mut failed = Vec::new();
        for chunk in batch.chunks(64) {
            let done =
                futures_util::future::join_all(chunk.iter().map(|id| sync(&b, &c, id))).await;
            for (id, r) in chunk.iter().zip(done) {
                if let Err(e) = r {
                    warn!(client_id = %id, error = %e, "cluster: session record not written; retrying");
                    failed.push(id.clone());
                }
            }
        }
        drop(b);
        if !failed.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            dirty.extend(failed);
        }
    }
}

/// Makes `client_id`'s record match its session here (deleted when the
/// session is gone).
async fn sync(b: &Arc<Broker>, c: &Cluster, client_id: &str) -> Result<(), ClusterError> {
    let Some(held) = c.held(client_id) else {
        return Ok(());
    };
    // The node's mark first: a message routed after it is read has a mark
    // at least as high, or is in the queue when the session is read.
    let mark = c.mark();
    let session = b.session(client_id).filter(|s| !s.state.lock().ended);
    let Some(session) = session else {
        delete_ours(c, client_id, &held).await?;
        c.let_go(client_id);
        return Ok(());
    };
    let rec = record_of(c, &session, held.epoch, mark);
    if held.last.as_ref().is_some_and(|l| l.same(&rec)) {
        return Ok(());
    }
    let mut revision = held.revision;
    for _ in 0..4 {
        match c.write_state(client_id, &rec, revision).await? {
            Written::Ok(rev) => {
                c.wrote(client_id, rec, rev);
                return Ok(());
            }
            Written::Conflict(now, rev) => {
                // Deleted while this write was in flight, and the session
                // is gone here (an admin kick discarded it): not put back.
                if now.is_none()
                    && b.session(client_id)
                        .filter(|s| !s.state.lock().ended)
                        .is_none()
                {
                    debug!(%client_id, "cluster: session record deleted while written; left deleted");
                    return Ok(());
                }
                if let Some(now) = now.filter(|n| n.epoch > held.epoch) {
                    info!(%client_id, node = %now.node, "cluster: a newer owner writes this session's record; this node lets it go");
                    c.let_go(client_id);
                    return Ok(());
                }
                revision = rev;
            }
        }
    }
    Err(ClusterError::Nats {
        what: format!("session state of client {client_id:?}"),
        message: "lost 4 compare-and-set rounds in a row".into(),
    })
}

/// Deletes `client_id`'s record while it is still this node's claim's: a
/// write of this node that landed after `held` was read (the writer's, in
/// flight when an admin kick discarded the session) moved the revision, so
/// the delete is tried again at the new one; a newer owner's record stays.
async fn delete_ours(
    c: &Cluster,
    client_id: &str,
    held: &midge_cluster::state::Held,
) -> Result<(), ClusterError> {
    let mut revision = held.revision;
    for _ in 0..4 {
        if c.delete_state(client_id, revision).await? {
            debug!(%client_id, "cluster: session ended; its record deleted");
            return Ok(());
        }
        match c.read_state(client_id).await? {
            (Some(rec), rev) if rec.epoch == held.epoch && rec.node == c.node() => revision = rev,
            // Gone already, or a newer claim's.
            _ => return Ok(()),
        }
    }
    Err(ClusterError::Nats {
        what: format!("session state of client {client_id:?}"),
        message: "record not deleted: lost 4 compare-and-set rounds in a row".into(),
    })
}

/// `client_id`'s session was discarded here (a kick through the admin
/// API): its record goes now, not at a later event (none may come), so no
/// node resumes it from the record.
pub async fn discarded(b: &Arc<Broker>, client_id: &str) {
    let Some(node) = b.cluster.get() else {
        return;
    };
    let c = node.cluster().clone();
    if !c.is_held(client_id) {
        return;
    }
    if let Err(e) = sync(b, &c, client_id).await {
        warn!(%client_id, error = %e, "cluster: record of a discarded session not deleted; another node may resume it");
    }
}

/// The session's checkpoint: the lowest mark of the QoS 1/2 messages it
/// holds, else the node's `mark` (read before the session's lock).
pub(super) fn floor_of(st: &SessionState, mark: u64) -> u64 {
    st.queue
        .iter()
        .chain(st.inflight.iter().map(|i| &i.delivery))
        .filter(|d| d.qos != QoS::AtMostOnce)
        .map(|d| d.msg.stream_mark.load(Relaxed))
        .filter(|m| *m != u64::MAX)
        .map(|m| m & !MARK_EXACT)
        .fold(mark, u64::min)
}

/// Outgoing QoS 2 deliveries in stage Released whose stream sequence is
/// known: (sequence, packet id), sorted; and whether any such delivery in
/// the stream does not know its sequence yet (published here, JetStream's
/// acknowledgement on its way).
fn released_of(st: &SessionState) -> (Vec<(u64, u16)>, bool) {
    let mut out = Vec::new();
    let mut inexact = false;
    for i in &st.inflight {
        if i.stage != Stage::Released || i.delivery.qos != QoS::ExactlyOnce {
            continue;
        }
        match i.delivery.msg.stream_mark.load(Relaxed) {
            u64::MAX => {}
            m if m & MARK_EXACT != 0 => out.push(((m & !MARK_EXACT) + 1, i.packet_id)),
            _ => inexact = true,
        }
    }
    out.sort_unstable();
    (out, inexact)
}

/// Holds a persistent session's PUBREL until its record (in the cluster)
/// lists the message as released: a node that resumes the session after
/// this one dies then sends PUBREL for it, not the PUBLISH again, so QoS 2
/// stays exactly once across a node's death. One record write per batch of
/// PUBRECs; nothing for clean sessions or when nothing was released.
#[derive(Debug)]
pub struct ReleaseGate {
    broker: Weak<Broker>,
    cluster: Arc<Cluster>,
}

impl ReleaseGate {
    pub fn new(broker: &Arc<Broker>, cluster: &Arc<Cluster>) -> ReleaseGate {
        ReleaseGate {
            broker: Arc::downgrade(broker),
            cluster: cluster.clone(),
        }
    }
}

impl crate::message::AckGate for ReleaseGate {
    fn before_acks(
        &self,
        client_id: &str,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        if !self.cluster.is_held(client_id) {
            return None;
        }
        let b = self.broker.upgrade()?;
        let session = b.session(client_id)?;
        let (released, inexact) = released_of(&session.state.lock());
        if !inexact && (released.is_empty() || self.cluster.written_released(client_id, &released))
        {
            return None;
        }
        let (c, id) = (self.cluster.clone(), client_id.to_string());
        Some(Box::pin(async move {
            // A message published here learns its sequence when JetStream
            // acknowledges it (its publisher waits for the same).
            let deadline = Instant::now() + c.config().request_timeout();
            while released_of(&session.state.lock()).1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if let Err(e) = sync(&b, &c, &id).await {
                warn!(client_id = %id, error = %e, "cluster: session record not written before PUBREL; a node resuming it may send a completed QoS 2 message again");
            }
        }))
    }
}

/// Stream sequences of the messages the session holds, where known exactly.
fn exact_seqs(st: &SessionState) -> HashSet<u64> {
    st.queue
        .iter()
        .chain(st.inflight.iter().map(|i| &i.delivery))
        .map(|d| d.msg.stream_mark.load(Relaxed))
        .filter(|m| *m != u64::MAX && m & MARK_EXACT != 0)
        .map(|m| (m & !MARK_EXACT) + 1)
        .collect()
}

/// The record of `session` as it is now.
fn record_of(c: &Cluster, session: &Session, epoch: u64, mark: u64) -> SessionRecord {
    let st = session.state.lock();
    let floor = floor_of(&st, mark);
    let mut subs: Vec<(String, String)> = st
        .subscriptions
        .iter()
        .map(|(f, r)| (f.clone(), B64.encode(codec::encode_sub(r))))
        .collect();
    subs.sort();
    let mut qos2_in: Vec<u16> = st.incoming_qos2.iter().copied().collect();
    qos2_in.sort_unstable();
    let (released, _) = released_of(&st);
    let done = c.done_above(&session.client_id, floor);
    SessionRecord {
        expiry: st.expiry_interval,
        offline_since_ms: if st.conn.is_none() {
            st.offline_since_ms
        } else {
            None
        },
        floor,
        subs,
        qos2_in,
        released,
        done,
        ..c.new_state(epoch)
    }
}

/// This node just claimed `client_id` (epoch `epoch`); `imported`: the old
/// owner handed its session over. A persistent session's record is read
/// and held (this node writes it from now on); when nothing came from the
/// old owner and no session of the client id is here, the session resumes
/// from the record. A clean session without expiry has its record deleted.
pub async fn after_claim(
    b: &Arc<Broker>,
    c: &Arc<Cluster>,
    client_id: &Arc<str>,
    epoch: u64,
    clean_start: bool,
    persistent: bool,
    imported: Option<u64>,
) {
    if !persistent {
        // A discarded session's record goes, off the CONNECT's path.
        c.let_go(client_id);
        let (c, id) = (c.clone(), client_id.clone());
        tokio::spawn(async move {
            if let Ok((Some(_), revision)) = c.read_state(&id).await {
                if let Err(e) = c.delete_state(&id, revision).await {
                    debug!(client_id = %id, error = %e, "cluster: record of a discarded session not deleted");
                }
            }
        });
        return;
    }
    let (rec, revision) = match c.read_state(client_id).await {
        Ok(r) => r,
        Err(e) => {
            warn!(%client_id, error = %e, "cluster: session record not read; the session is not resumed from it");
            c.hold(client_id, epoch, 0);
            return;
        }
    };
    c.hold(client_id, epoch, revision);
    if clean_start {
        return;
    }
    if let Some(floor) = imported {
        match catch_up(b, c, client_id, floor).await {
            Ok(0) => {}
            Ok(n) => {
                info!(%client_id, messages = n, "cluster: messages stored while the session moved queued")
            }
            Err(e) => {
                warn!(%client_id, error = %e, "cluster: messages stored while the session moved not read")
            }
        }
        return;
    }
    let Some(rec) = rec else { return };
    if b.session(client_id).is_some() {
        return;
    }
    // Offline on a node that died, past its expiry: gone, as it would
    // have been there.
    if let Some(since) = rec.offline_since_ms {
        if since + i64::from(rec.expiry) * 1000 <= crate::message::now_ms() {
            info!(%client_id, from = %rec.node, "cluster: the session's record is past its expiry; a new session starts");
            return;
        }
    }
    let started = Instant::now();
    match resume(b, c, client_id, &rec).await {
        Ok(n) => {
            info!(%client_id, from = %rec.node, messages = n, ms = started.elapsed().as_millis() as u64, "cluster: session resumed from its record")
        }
        Err(e) => {
            warn!(%client_id, from = %rec.node, error = %e, "cluster: session not resumed from its record")
        }
    }
}

/// Installs the session `rec` describes as an offline session here and
/// queues the stored messages after its checkpoint that its subscriptions
/// match; returns how many.
async fn resume(
    b: &Arc<Broker>,
    c: &Arc<Cluster>,
    client_id: &Arc<str>,
    rec: &SessionRecord,
) -> Result<usize, String> {
    let session = Arc::new(Session::new(client_id.clone(), rec.expiry, b.store.clone()));
    let mut subs: Vec<(String, SubscriptionRecord)> = Vec::with_capacity(rec.subs.len());
    for (f, enc) in &rec.subs {
        let bytes = B64
            .decode(enc)
            .map_err(|e| format!("subscription {f:?}: {e}"))?;
        let r = codec::decode_sub(&bytes).map_err(|e| format!("subscription {f:?}: {}", e.0))?;
        subs.push((f.clone(), r));
    }
    {
        let mut st = session.state.lock();
        for (f, r) in &subs {
            st.subscriptions.insert(f.clone(), r.clone());
        }
        st.incoming_qos2.extend(rec.qos2_in.iter().copied());
        st.offline_since_ms = Some(crate::message::now_ms());
    }
    super::takeover::install(b, &session)?;
    replay_into(c, &session, rec.floor, 0, Some(rec)).await
}

/// After a session moved here from a live node (its queue handed over):
/// the messages stored since the old node's checkpoint `floor` that its
/// subscriptions match and it does not hold, queued after the handed-over
/// ones. They are the messages published while neither node was
/// subscribed for its filters.
async fn catch_up(
    b: &Arc<Broker>,
    c: &Arc<Cluster>,
    client_id: &Arc<str>,
    floor: u64,
) -> Result<usize, String> {
    let Some(session) = b.session(client_id) else {
        return Ok(0);
    };
    let handed = session.state.lock().queue.len();
    replay_into(c, &session, floor, handed, None).await
}

/// Reads the stream after `floor` on `session`'s plain filters (once this
/// node's NATS subscriptions for them are in place, so what is stored later
/// arrives live) and queues what they match that the session does not
/// hold already, at queue position `at` (before what arrived live since);
/// returns how many. From a record (`rec`, a resume): a message the client
/// acknowledged (`done`) is left out, and one listed as released goes
/// inflight in stage Released under its packet id: the client gets its
/// PUBREL, not the message again.
async fn replay_into(
    c: &Arc<Cluster>,
    session: &Arc<Session>,
    floor: u64,
    at: usize,
    rec: Option<&SessionRecord>,
) -> Result<usize, String> {
    let released: &[(u64, u16)] = rec.map_or(&[], |r| &r.released);
    let client_id = &session.client_id;
    let subs: Vec<(String, SubscriptionRecord)> = session
        .state
        .lock()
        .subscriptions
        .iter()
        .map(|(f, r)| (f.clone(), r.clone()))
        .collect();
    // (`$SYS` never leaves its node; shared groups are not replayed.)
    let plain: Vec<&(String, SubscriptionRecord)> = subs
        .iter()
        .filter(|(f, _)| split_filter(f).0.is_none() && !f.starts_with("$SYS"))
        .collect();
    let filters: Vec<String> = plain.iter().map(|(f, _)| f.clone()).collect();
    let deadline = Instant::now() + SUBSCRIBE_WAIT;
    while !filters.iter().all(|f| c.is_subscribed(f)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = c.flush().await;
    let stored = c
        .replay_for(&filters, floor)
        .await
        .map_err(|e| e.to_string())?;
    let held = exact_seqs(&session.state.lock());
    let mut out: Vec<Delivery> = Vec::with_capacity(stored.len());
    let mut rel: Vec<Inflight> = Vec::new();
    for (seq, env) in stored {
        if held.contains(&seq) || rec.is_some_and(|r| r.is_done(seq)) {
            continue;
        }
        if let Ok(i) = released.binary_search_by_key(&seq, |r| r.0) {
            let msg = super::message(env);
            msg.stream_mark
                .store(seq.saturating_sub(1) | MARK_EXACT, Relaxed);
            rel.push(Inflight {
                packet_id: released[i].1,
                delivery: Delivery {
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    sub_ids: Default::default(),
                    shared: None,
                    seq: 0,
                    msg: Arc::new(msg),
                },
                stage: Stage::Released,
            });
            continue;
        }
        let mine = env.client_id.as_deref() == Some(&**client_id);
        let mut qos = None;
        let mut retain_as_published = false;
        let mut sub_ids = smallvec::SmallVec::new();
        for (f, r) in &plain {
            if !midge_protocol::topic::matches(f, &env.topic) || (r.opts.no_local && mine) {
                continue;
            }
            qos = qos.max(Some(r.opts.qos));
            retain_as_published |= r.opts.retain_as_published;
            sub_ids.extend(r.id);
        }
        let Some(qos) = qos else { continue };
        let msg = super::message(env);
        msg.stream_mark
            .store(seq.saturating_sub(1) | MARK_EXACT, Relaxed);
        out.push(Delivery {
            qos: qos.min(msg.qos),
            retain: msg.retain && retain_as_published,
            sub_ids,
            shared: None,
            seq: 0,
            msg: Arc::new(msg),
        });
    }
    let mut st = session.state.lock();
    if !rel.is_empty() {
        info!(%client_id, released = rel.len(), "cluster: QoS 2 deliveries the client had received resume at PUBREL");
        st.inflight.extend(rel);
        st.resend = true;
    }
    // Copies of what arrived live meanwhile are dropped; the rest goes
    // before it (it is newer).
    let live = exact_seqs(&st);
    let mut i = at.min(st.queue.len());
    let mut n = 0;
    for d in out {
        let seq = (d.msg.stream_mark.load(Relaxed) & !MARK_EXACT) + 1;
        if live.contains(&seq) {
            continue;
        }
        st.queued_bytes += d.msg.payload.len();
        st.queue.insert(i, d);
        i += 1;
        n += 1;
    }
    drop(st);
    session.notify.notify_one();
    Ok(n)
}

/// Before asking a live node for `client_id`'s session: this node
/// subscribes for the filters its record names and tells the other nodes
/// (its interest summary), so a message published meanwhile is stored and
/// reaches this node ([`catch_up`] then finds what came before the session
/// did). Returns the filters, to give up with [`release_later`].
pub async fn pre_subscribe(c: &Arc<Cluster>, client_id: &str) -> Vec<String> {
    let Ok((Some(rec), _)) = c.read_state(client_id).await else {
        return Vec::new();
    };
    let filters: Vec<String> = rec
        .subs
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| split_filter(f).0.is_none() && !f.starts_with("$SYS"))
        .collect();
    for f in &filters {
        c.interest_added(f).await;
    }
    if !filters.is_empty() {
        if let Err(e) = c.publish_interest().await {
            debug!(%client_id, error = %e, "cluster: interest summary before a takeover not written");
        }
    }
    filters
}

/// Gives up [`pre_subscribe`]'s subscriptions once the session's own
/// (through the router) are surely in place.
pub fn release_later(c: &Arc<Cluster>, filters: Vec<String>) {
    if filters.is_empty() {
        return;
    }
    let c = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for f in &filters {
            c.interest_removed(f);
        }
        if let Err(e) = c.publish_interest().await {
            debug!(error = %e, "cluster: interest summary after a takeover not written");
        }
    });
}
