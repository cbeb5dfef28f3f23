//! The broker's side of the cluster (`[cluster]`): joins the NATS cluster
//! through `midge-cluster` and plugs into the broker at four narrow points,
//! each one `OnceLock` load when clustering is off (this module sits above
//! the broker; `crate::message::Acks` and `crate::node` are the two things
//! below it that it fills in):
//!
//! - `Broker::deliver` calls `ClusterLink::forward` (implemented by
//!   [`Node`]; the broker sees the cluster only through that trait) after
//!   retaining, before local routing: the message goes onto this node's
//!   outbound queue, drained in order by one task (QoS 0: core NATS; QoS
//!   1/2: the stream, acknowledged by JetStream).
//! - the publisher's acknowledgements wait in `Reader::flush_control` for
//!   [`settled`]: a client's PUBACK / PUBREC is sent only once JetStream
//!   stored its cross-node QoS 1/2 messages (the wait back-pressures the
//!   client: its connection reads nothing more meanwhile).
//! - `Router::watch` ([`crate::router::InterestWatch`]) tells which filters
//!   have local subscribers: the node subscribes on NATS once per distinct
//!   filter.
//! - `RetainedStore::watch` ([`crate::router::RetainedWatch`]) writes
//!   retained changes to the cluster's bucket; other nodes' changes come
//!   back through `RetainedStore::apply_remote`.
//!
//! Messages from other nodes enter through [`LocalBroker::deliver`] ->
//! `Broker::route_local`: no rules, no plugins, no retained update, no
//! forwarding (rules and plugins run once, on the node a publish entered).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use midge_cluster::{Cluster, ClusterConfig, ClusterError, Envelope, Local};
use midge_protocol::QoS;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::message::{AckState, Acks, ClientInfo, InterestSync, Message, MARK_EXACT};

pub mod orphans;
pub mod sessions;
pub mod takeover;

pub use crate::node::name as node_name;

/// The cluster link of a running broker.
#[derive(Debug)]
pub struct Node {
    pub cluster: Arc<Cluster>,
    out: mpsc::UnboundedSender<Out>,
    /// Messages on `out` now; past `max_pending`, QoS 0 forwards are
    /// dropped (counted) and QoS 1/2 publishers wait.
    queued: AtomicUsize,
    interest: mpsc::UnboundedSender<Change>,
    /// How far the other nodes have seen this node's interest changes
    /// (SUBACKs wait on it).
    sync: Arc<InterestSync>,
    /// PUBRELs of persistent sessions wait for their records.
    gate: Arc<sessions::ReleaseGate>,
    /// Client ids whose will record may need writing or deleting.
    wills: mpsc::UnboundedSender<Arc<str>>,
}

/// One message for the outbound task.
#[derive(Debug)]
struct Out {
    env: Envelope,
    acks: Option<Arc<AckState>>,
    /// QoS 1/2: the message, which learns its stream sequence.
    msg: Option<Arc<Message>>,
}

/// An interest change as the router reported it: its number (see
/// [`InterestSync`]), the filter, the shared group, present or gone.
type Change = (u64, String, Option<String>, bool);

/// The tracker for a new connection: one allocation when clustered.
pub fn acks_for(broker: &Broker) -> Acks {
    Acks(broker.cluster.get().map(|n| {
        Arc::new(AckState {
            interest: n.interest_sync(),
            gate: n.ack_gate(),
            ..Default::default()
        })
    }))
}

/// Longest a SUBACK waits for the other nodes to see a new filter (the
/// interest task's own waits are bounded by `request_timeout_ms`; this only
/// guards against a stuck task).
const SUBACK_WAIT_MAX: Duration = Duration::from_secs(15);

/// Waits until JetStream acknowledged every cross-node QoS 1/2 message the
/// connection published so far (returns at once when none is pending or
/// clustering is off). A publish that cannot be stored is retried by the
/// outbound task until NATS takes it, so this holds the client (no
/// acknowledgement, nothing more read) rather than acknowledge a message
/// the cluster does not have. Then, when the connection subscribed and the
/// node's interest changed, until every other node has seen the change, so
/// that a message published anywhere after the SUBACK is sent here.
pub async fn settled(origin: &ClientInfo) {
    let Some(a) = &origin.cluster.0 else {
        return;
    };
    loop {
        let notified = a.done.notified();
        if a.outstanding.load(Relaxed) == 0 {
            break;
        }
        notified.await;
    }
    if let Some(s) = &a.interest {
        if s.wait(&origin.client_id, SUBACK_WAIT_MAX).await {
            warn!(client_id = %origin.client_id, "cluster: SUBACK sent before the other nodes confirmed the new interest");
        }
    }
    if let Some(wait) = a
        .gate
        .as_ref()
        .and_then(|g| g.before_acks(&origin.client_id))
    {
        wait.await;
    }
}

/// A connection of `client_id` attached here: its will goes to the
/// cluster, and the owner record is read again: if another node took the
/// client id while this one attached, the connection is closed (0x8E), so
/// of two racing nodes exactly one keeps it.
pub fn attached(broker: &Arc<Broker>, client_id: &Arc<str>) {
    let Some(node) = broker.cluster.get() else {
        return;
    };
    node.will_changed(client_id);
    let (weak, c, id) = (
        Arc::downgrade(broker),
        node.cluster().clone(),
        client_id.clone(),
    );
    tokio::spawn(async move {
        let Ok(Some((owner, _))) = c.owner(&id).await else {
            return;
        };
        if owner.node != c.node() {
            if let Some(b) = weak.upgrade() {
                if let Some(s) = b.session(&id) {
                    info!(client_id = %id, owner = %owner.node, "cluster: another node took the client id while it attached here");
                    let _ = b.kick(&s, midge_protocol::reason::SESSION_TAKEN_OVER);
                }
            }
        }
    });
}

impl crate::broker::ClusterLink for Node {
    fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The will task makes the cluster's record of `client_id`'s will match.
    fn will_changed(&self, client_id: &Arc<str>) {
        let _ = self.wills.send(client_id.clone());
    }

    fn interest_sync(&self) -> Option<Arc<InterestSync>> {
        Some(self.sync.clone())
    }

    fn ack_gate(&self) -> Option<Arc<dyn crate::message::AckGate>> {
        Some(self.gate.clone())
    }

    /// Queues a message published on this node for the cluster (not `$SYS`
    /// topics, which never leave their node, nor topics no other node wants).
    fn forward(&self, msg: &Arc<Message>) {
        // A node holding persistent sessions stores every QoS 1/2 publish:
        // a session resumed elsewhere after this node dies reads them there.
        let stored = msg.qos != QoS::AtMostOnce && self.cluster.holds_persistent();
        if msg.topic.starts_with("$SYS") || !(stored || self.cluster.wanted_elsewhere(&msg.topic)) {
            return;
        }
        if msg.qos != QoS::AtMostOnce {
            msg.stream_mark.store(self.cluster.mark(), Relaxed);
        }
        let acks = msg
            .origin
            .as_ref()
            .and_then(|o| o.cluster.0.clone())
            .filter(|_| msg.qos != QoS::AtMostOnce);
        let max = self.cluster.config().max_pending;
        if msg.qos == QoS::AtMostOnce && self.queued.load(Relaxed) >= max {
            self.cluster.metrics.publish_failures.fetch_add(1, Relaxed);
            return;
        }
        if let Some(a) = &acks {
            a.outstanding.fetch_add(1, Relaxed);
        }
        self.queued.fetch_add(1, Relaxed);
        let env = envelope(&self.cluster, msg);
        let msg = (msg.qos != QoS::AtMostOnce).then(|| msg.clone());
        if self.out.send(Out { env, acks, msg }).is_err() {
            self.queued.fetch_sub(1, Relaxed);
        }
    }
}

fn envelope(c: &Cluster, msg: &Message) -> Envelope {
    Envelope {
        topic: msg.topic.clone(),
        payload: msg.payload.clone(),
        qos: msg.qos,
        retain: msg.retain,
        properties: msg.properties.clone(),
        origin: c.node().to_string(),
        client_id: msg.publisher().map(str::to_string),
        timestamp_ms: Some(msg.timestamp_ms),
    }
}

/// A message from another node, as this node's router takes it: its
/// expiry counts from when the origin received it.
pub(crate) fn message(env: Envelope) -> Message {
    let now_ms = crate::message::now_ms();
    let ts = env.timestamp_ms.unwrap_or(now_ms);
    let age = Duration::from_millis(u64::try_from(now_ms - ts).unwrap_or(0));
    let now = Instant::now();
    let at = now.checked_sub(age).unwrap_or(now);
    Message::new_at(
        env.topic,
        env.payload,
        env.qos,
        env.retain,
        env.properties,
        (at, ts),
    )
}

/// The broker as the cluster layer sees it.
#[derive(Debug)]
pub struct LocalBroker(Weak<Broker>);

impl Local for LocalBroker {
    fn deliver(&self, env: Envelope) {
        if let Some(b) = self.0.upgrade() {
            b.route_local(Arc::new(message(env)));
        }
    }

    fn deliver_stored(&self, env: Envelope, seq: u64) {
        if let Some(b) = self.0.upgrade() {
            let msg = message(env);
            if msg.qos != QoS::AtMostOnce {
                msg.stream_mark
                    .store(seq.saturating_sub(1) | MARK_EXACT, Relaxed);
            }
            b.route_local(Arc::new(msg));
        }
    }

    fn deliver_shared(&self, env: Envelope, group: &str, filter: &str) {
        let Some(b) = self.0.upgrade() else { return };
        let key = crate::router::SharedKey {
            group: group.into(),
            filter: filter.into(),
        };
        let Some(e) = b.router.pick_group(&key) else {
            return;
        };
        let msg = Arc::new(message(env));
        let d = crate::session::Delivery {
            qos: e.opts.qos.min(msg.qos),
            retain: msg.retain && e.opts.retain_as_published,
            sub_ids: e.id.into_iter().collect(),
            shared: Some(key),
            seq: 0,
            msg,
        };
        let (outcome, _) = e.session.enqueue(d, b.queue_limits());
        if outcome == crate::session::EnqueueOutcome::Queued {
            b.stats.messages_routed.fetch_add(1, Relaxed);
        }
    }

    fn retained(&self, topic: String, env: Option<Envelope>) {
        if let Some(b) = self.0.upgrade() {
            b.retained
                .apply_remote(&topic, env.map(|e| Arc::new(message(e))));
        }
    }
}

#[derive(Debug)]
struct InterestHook(mpsc::UnboundedSender<Change>, Arc<InterestSync>);

impl crate::router::InterestWatch for InterestHook {
    fn changed(&self, filter: &str, group: Option<&str>, present: bool) {
        // Numbered under the router's lock, before the SUBSCRIBED event
        // that reads the number.
        let n = self.1.requested.fetch_add(1, Relaxed) + 1;
        let _ = self
            .0
            .send((n, filter.to_string(), group.map(str::to_string), present));
    }
}

#[derive(Debug)]
struct RetainedHook(
    mpsc::UnboundedSender<(String, Option<Envelope>)>,
    Arc<Cluster>,
);

impl crate::router::RetainedWatch for RetainedHook {
    fn changed(&self, topic: &str, msg: Option<&Arc<Message>>) {
        let _ = self
            .0
            .send((topic.to_string(), msg.map(|m| envelope(&self.1, m))));
    }
}

/// Joins the cluster when `[cluster]` is on: connects to NATS (an error
/// names the URLs), installs the hooks, subscribes the node for the
/// filters its router already holds. Call before the store is restored
/// and before any listener accepts.
pub async fn join(
    cfg: &ClusterConfig,
    broker: &Arc<Broker>,
    sink: Option<&sessions::Sink>,
) -> Result<(), ClusterError> {
    if !cfg.enabled {
        return Ok(());
    }
    crate::node::set_name(cfg.node_name());
    let local = Arc::new(LocalBroker(Arc::downgrade(broker)));
    let cluster = Cluster::start(cfg, local).await?;
    let (out, out_rx) = mpsc::unbounded_channel();
    let (itx, irx) = mpsc::unbounded_channel();
    let (wtx, wrx) = mpsc::unbounded_channel();
    let sync = sink.map_or_else(Default::default, |s| s.interest_sync());
    let node = Arc::new(Node {
        cluster: cluster.clone(),
        out,
        queued: AtomicUsize::new(0),
        interest: itx.clone(),
        sync: sync.clone(),
        gate: Arc::new(sessions::ReleaseGate::new(broker, &cluster)),
        wills: wtx,
    });
    // Will records of this node's previous run: their connections died with it.
    let me = cluster.node().to_string();
    match cluster.take_wills(|n| n == me).await {
        Ok(wills) => publish_dead_wills(broker, &cluster, wills),
        Err(e) => warn!(error = %e, "cluster: will records of the previous run not read"),
    }
    tokio::spawn(will_records(Arc::downgrade(broker), cluster.clone(), wrx));
    let expiry = orphans::Expiry::start(Arc::downgrade(broker), cluster.clone());
    let weak = Arc::downgrade(broker);
    let (c2, e2) = (cluster.clone(), expiry.clone());
    cluster
        .watch_nodes(move |gone| {
            let (weak, c2, e2) = (weak.clone(), c2.clone(), e2.clone());
            tokio::spawn(async move { dead_node(weak, c2, e2, gone).await });
        })
        .await?;
    tokio::spawn(outbound(Arc::downgrade(&node), cluster.clone(), out_rx));
    tokio::spawn(interest(cluster.clone(), irx, sync.clone()));
    let (rtx, rrx) = mpsc::unbounded_channel();
    tokio::spawn(retained_out(cluster.clone(), rrx));
    let _ = broker
        .router
        .watch
        .set(Arc::new(InterestHook(itx, sync.clone())));
    let _ = broker
        .retained
        .watch
        .set(Arc::new(RetainedHook(rtx, cluster.clone())));
    for (f, g) in broker.router.interests() {
        let n = sync.requested.fetch_add(1, Relaxed) + 1;
        let _ = node.interest.send((n, f, g, true));
    }
    let _ = broker.cluster.set(node);
    takeover::serve(broker, &cluster).await?;
    if let Some(sink) = sink {
        sessions::start(broker, &cluster, sink);
    }
    // Nodes that died while nobody watched (all were down): their wills
    // now, their sessions' expiry scheduled.
    let weak = Arc::downgrade(broker);
    tokio::spawn(dead_node(weak, cluster, expiry, String::new()));
    Ok(())
}

/// A node's membership record went (`gone`; empty: any node without one):
/// take the will records of every node without a record and publish the
/// ones this node won, each after its delay unless its client came back;
/// then schedule the expiry of the sessions such nodes held
/// ([`orphans::sweep`]).
async fn dead_node(
    broker: Weak<Broker>,
    cluster: Arc<Cluster>,
    expiry: orphans::Expiry,
    gone: String,
) {
    dead_wills(&broker, &cluster, &gone).await;
    // (Retried a few times: a failed sweep waits for the next node change.)
    for attempt in 1..=5 {
        match orphans::sweep(&cluster, &expiry).await {
            Ok(0) => return,
            Ok(n) => {
                info!(node = %gone, sessions = n, "cluster: sessions of dead nodes scheduled to expire");
                return;
            }
            Err(e) if attempt < 5 => {
                debug!(node = %gone, error = %e, "cluster: session records not read; retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                warn!(node = %gone, error = %e, "cluster: session records not read; the expiry of dead nodes' sessions waits for the next node change")
            }
        }
    }
}

/// The wills of every node without a membership record: taken, and the
/// ones this node won published.
async fn dead_wills(broker: &Weak<Broker>, cluster: &Arc<Cluster>, gone: &str) {
    let alive: std::collections::HashSet<String> = match cluster.nodes().await {
        Ok(n) => n
            .into_iter()
            .filter(|n| n.state == "alive")
            .map(|n| n.node)
            .collect(),
        Err(e) => {
            warn!(node = %gone, error = %e, "cluster: membership not read; wills of a dead node not taken");
            return;
        }
    };
    let me = cluster.node().to_string();
    // A dead node's filters stay wanted while a session it held may still
    // be resumed elsewhere: its messages must keep reaching the stream.
    let records = cluster.any_state().await.unwrap_or(true);
    if !gone.is_empty() && !alive.contains(gone) && !records {
        if let Err(e) = cluster.forget_interest(gone).await {
            debug!(node = %gone, error = %e, "cluster: summary of a dead node not dropped");
        }
    }
    let wills = match cluster.take_wills(|n| n != me && !alive.contains(n)).await {
        Ok(w) => w,
        Err(e) => {
            warn!(node = %gone, error = %e, "cluster: wills of a dead node not taken");
            return;
        }
    };
    if let Some(b) = broker.upgrade() {
        publish_dead_wills(&b, cluster, wills);
    }
}

/// Publishes wills taken from dead nodes (as if their clients had been
/// connected here): after the will delay, unless the client connected
/// again meanwhile (its owner record names a live node other than the dead one).
fn publish_dead_wills(
    broker: &Arc<Broker>,
    cluster: &Arc<Cluster>,
    wills: Vec<midge_cluster::wills::DeadWill>,
) {
    for w in wills {
        let broker = Arc::downgrade(broker);
        let cluster = cluster.clone();
        tokio::spawn(async move {
            if w.delay > 0 {
                tokio::time::sleep(Duration::from_secs(u64::from(w.delay))).await;
                if let Ok(Some((owner, _))) = cluster.owner(&w.client_id).await {
                    if owner.node != w.node && owner.since_ms > 0 {
                        let alive = cluster
                            .nodes()
                            .await
                            .map(|ns| {
                                ns.iter()
                                    .any(|n| n.node == owner.node && n.state == "alive")
                            })
                            .unwrap_or(false);
                        if alive {
                            debug!(client_id = %w.client_id, "cluster: client back before its will delay; will dropped");
                            return;
                        }
                    }
                }
            }
            if let Some(b) = broker.upgrade() {
                info!(client_id = %w.client_id, node = %w.node, topic = %w.will.topic, "cluster: publishing the will of a dead node's client");
                b.publish(Arc::new(message(w.will)));
            }
        });
    }
}

/// Keeps the `wills` bucket matching the wills of this node's live
/// connections: for each client id told, a connected session with a will
/// gets its record written, any other loses it.
async fn will_records(
    broker: Weak<Broker>,
    cluster: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<Arc<str>>,
) {
    let mut recorded: std::collections::HashSet<Arc<str>> = Default::default();
    while let Some(client_id) = rx.recv().await {
        let Some(b) = broker.upgrade() else { return };
        // The delay recorded is capped at the session's expiry: a node that
        // takes the will after this one died publishes it when the Will
        // Delay Interval passes or the session ends, whichever is first
        // (MQTT 5.0, 3.1.3.2.2); the session expires that long after the
        // death is noticed (orphans.rs), as the will's delay counts.
        let will = b.session(&client_id).and_then(|s| {
            let st = s.state.lock();
            let cap = st.expiry_interval;
            st.conn
                .as_ref()
                .and(st.conn_will.clone())
                .map(|(m, delay)| (m, delay.min(cap)))
        });
        let r = match will {
            Some((msg, delay)) => {
                recorded.insert(client_id.clone());
                cluster
                    .put_will(&client_id, &envelope(&cluster, &msg), delay)
                    .await
            }
            None if recorded.remove(&client_id) => cluster.delete_will(&client_id).await,
            None => Ok(()),
        };
        if let Err(e) = r {
            warn!(%client_id, error = %e, "cluster: will record not updated");
        }
    }
}

/// How many queued messages the outbound task takes at once: QoS 0 ones
/// on one topic among them go to NATS as one batch.
const DRAIN_MAX: usize = 4096;

/// Sends queued messages: what is queued when the task wakes (up to
/// [`DRAIN_MAX`]) is taken at once; its QoS 0 messages go out grouped by
/// topic, a batch per topic in the order they were queued
/// ([`Cluster::send_core_batch`]: order per topic, and so per publisher and
/// topic, is kept); QoS 1/2 ones go to the stream one by one in order, their
/// acknowledgements awaited concurrently and retried (same message id: the
/// stream drops a duplicate) until NATS takes them. Nothing waits for more
/// to come: a lone message leaves at once.
async fn outbound(node: Weak<Node>, cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut acks = FuturesUnordered::new();
    let closed = AtomicBool::new(false);
    let mut taken: Vec<Out> = Vec::new();
    let mut groups: Vec<Vec<Envelope>> = Vec::new();
    let mut by_topic: std::collections::HashMap<midge_protocol::ByteStr, usize> =
        Default::default();
    loop {
        tokio::select! {
            m = rx.recv(), if !closed.load(Relaxed) => {
                let Some(first) = m else {
                    closed.store(true, Relaxed);
                    continue;
                };
                taken.push(first);
                while taken.len() < DRAIN_MAX {
                    match rx.try_recv() {
                        Ok(o) => taken.push(o),
                        Err(_) => break,
                    }
                }
                if let Some(n) = node.upgrade() {
                    n.queued.fetch_sub(taken.len(), Relaxed);
                }
                let mut stored = Vec::new();
                for o in taken.drain(..) {
                    if o.env.qos != QoS::AtMostOnce {
                        stored.push(o);
                        continue;
                    }
                    let i = *by_topic.entry(o.env.topic.clone()).or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                    groups[i].push(o.env);
                }
                by_topic.clear();
                for g in groups.drain(..) {
                    cluster.send_core_batch(&g).await;
                }
                for Out { env, acks: who, msg } in stored {
                    let first = cluster.send_stored(&env).await;
                    acks.push(confirm(cluster.clone(), env, first, who, msg));
                }
            }
            Some(()) = acks.next(), if !acks.is_empty() => {}
            else => return,
        }
    }
}

/// Awaits JetStream's acknowledgement of one stored message, sending it
/// again until NATS takes it; then the message learns its sequence and its
/// publisher's count of unacknowledged cross-node messages goes down.
async fn confirm(
    c: Arc<Cluster>,
    env: Envelope,
    first: midge_cluster::node::Stored,
    who: Option<Arc<AckState>>,
    msg: Option<Arc<Message>>,
) {
    let mut attempt = first;
    let mut delay = Duration::from_millis(50);
    loop {
        if attempt.confirm(&c).await {
            break;
        }
        if delay >= Duration::from_secs(2) {
            warn!(topic = %env.topic, "cluster: stream publish still failing; retrying (publisher not acknowledged)");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        attempt = c.send_stored_again(&attempt).await;
    }
    if let (Some(m), Some(seq)) = (msg, attempt.sequence()) {
        m.stream_mark
            .store(seq.saturating_sub(1) | MARK_EXACT, Relaxed);
    }
    if let Some(a) = who {
        if a.outstanding.fetch_sub(1, Relaxed) == 1 {
            a.done.notify_waiters();
        }
    }
}

/// Applies interest changes in order; after each batch, writes the node's
/// summary and has every other node confirm it (`publish_interest`), then
/// lets the batch's SUBACKs go.
async fn interest(
    cluster: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<Change>,
    sync: Arc<InterestSync>,
) {
    while let Some(first) = rx.recv().await {
        // A batch of changes, then one summary for the other nodes.
        let mut next = Some(first);
        let (mut upto, mut groups) = (0, false);
        while let Some((n, filter, group, present)) = next.take() {
            upto = upto.max(n);
            match (group, present) {
                (None, true) => cluster.interest_added(&filter).await,
                (None, false) => cluster.interest_removed(&filter),
                (Some(g), true) => {
                    groups = true;
                    cluster.group_added(&filter, &g).await
                }
                (Some(g), false) => cluster.group_removed(&filter, &g),
            }
            next = rx.try_recv().ok();
        }
        // Cut off from NATS no other node can be told: SUBACKs go at once
        // (the node serves its local clients; it reconciles on return).
        if !cluster.is_connected() {
            sync.visible(upto);
        }
        if groups {
            // Queue subscriptions use a second connection: in place at
            // the server before the other nodes are told.
            let _ = cluster.flush_groups().await;
        }
        if let Err(e) = cluster.publish_interest().await {
            warn!(error = %e, "cluster: interest summary not written; other nodes may miss this node's new filters");
        }
        sync.visible(upto);
    }
}

/// Writes this node's retained changes to the cluster bucket, in order.
async fn retained_out(
    cluster: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<(String, Option<Envelope>)>,
) {
    while let Some((topic, env)) = rx.recv().await {
        if let Err(e) = cluster.put_retained(&topic, env.as_ref()).await {
            warn!(%topic, error = %e, "cluster: retained change not written to the cluster");
        }
    }
}
