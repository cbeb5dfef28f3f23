//! One node's connection to the cluster: NATS client, the stream and buckets,
//! cross-node publish, interest subscriptions and the inbound task.
//!
//! Subjects (`<c>` is `[cluster] name`):
//!
//! | subject | carries |
//! |---|---|
//! | `<c>.m.0.<topic>` | QoS 0 publishes (core NATS only) |
//! | `<c>.s.<topic>` | QoS 1/2 publishes, into the stream `<C>_MSGS` (replicas); JetStream's acknowledgement comes before the publisher's PUBACK |
//! | `<c>.m.1.<topic>` | the stream republishes each stored message here, with its stream sequence (`Nats-Sequence`) |
//!
//! A node subscribes once per distinct local filter to `<c>.m.*.<filter>`
//! (two subjects for a filter ending in `/#`, see [`crate::subject`]), and
//! unsubscribes when the filter's last local subscriber leaves. The NATS
//! connection is opened with `no_echo`; republished messages come from the
//! server, so a node drops those whose origin (`M-O`) is itself: its own
//! subscribers were served by its local router. Overlapping filters make
//! NATS deliver one copy per subscription: every subscription feeds one
//! inbound task, which drops copies by message id.
//!
//! Reconcile: the inbound task keeps the highest stream sequence it handled.
//! When the NATS connection comes back (or NATS reports this node a slow
//! consumer), it reads the stream from there with an ordered consumer
//! filtered by the node's interest, so QoS 1/2 messages stored while it was
//! cut off still reach its subscribers (copies it already had are dropped
//! by id). It does the same when JetStream announces a new leader for the
//! stream: the old leader may have stored (and acknowledged) messages it
//! never republished. A replay asked for just after live messages resumed
//! from a pause starts from before the pause, not from the later messages
//! that already raised the floor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::IntoFuture as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{CreateKeyValueErrorKind, CreateStreamErrorKind};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, kv, stream};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{AbortHandle, Abortable, SelectAll};
use futures_util::StreamExt;
use midge_protocol::{ByteStr, QoS};
use parking_lot::Mutex;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::envelope::{Envelope, BATCH_MAX_BYTES, BATCH_MAX_ITEMS, H_BATCH};
use crate::metrics::Metrics;
use crate::subject;

/// Header with the message id (also `Nats-Msg-Id` for stored messages).
pub const H_ID: &str = "M-I";

/// What the cluster needs from the broker it runs in.
pub trait Local: Send + Sync + 'static {
    /// A message from another node for this node's subscribers: route it
    /// locally only (no rules, no plugins, no retained update, no forwarding).
    fn deliver(&self, env: Envelope);
    /// [`Local::deliver`] for a message read from the stream, with its
    /// sequence (a session's checkpoint counts in sequences).
    fn deliver_stored(&self, env: Envelope, seq: u64) {
        let _ = seq;
        self.deliver(env);
    }
    /// A retained message set (`Some`) or cleared (`None`) on any node.
    fn retained(&self, topic: String, env: Option<Envelope>);
    /// A message for one member of shared group `group` on `filter` here
    /// (NATS picked this node among the group's nodes).
    fn deliver_shared(&self, env: Envelope, group: &str, filter: &str);
}

/// Errors of the cluster layer; each names the NATS server, stream, bucket
/// or peer it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
    #[error("cluster: cannot read {what}: {source}")]
    Credentials {
        what: String,
        source: std::io::Error,
    },
    #[error("cluster: JetStream {what} at {urls}: {message}")]
    Setup {
        what: String,
        urls: String,
        message: String,
    },
    #[error("cluster: NATS did not answer {what} within {ms} ms")]
    Timeout { what: String, ms: u64 },
    #[error("cluster: {what}: {message}")]
    Nats { what: String, message: String },
}

/// Local subscriptions of one plain filter.
struct Interest {
    count: usize,
    aborts: Vec<AbortHandle>,
}

/// A shared subscription group a queue subscription serves.
#[derive(Debug, PartialEq, Eq)]
pub struct Group {
    pub group: String,
    pub filter: String,
}

/// What the inbound task reads: messages of one subscription, tagged with
/// the group when it is a queue subscription.
type Tagged = (Option<Arc<Group>>, async_nats::Message);
type Inbound = Abortable<std::pin::Pin<Box<dyn futures_util::Stream<Item = Tagged> + Send>>>;

/// A QoS 1/2 message sent to the stream, its acknowledgement not yet awaited.
#[derive(Debug)]
pub struct Stored {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Bytes,
    ack: Option<async_nats::jetstream::context::PublishAckFuture>,
    start: Instant,
    /// The stream sequence JetStream gave it, once confirmed.
    seq: Option<u64>,
}

impl Stored {
    /// The stream sequence of the message, once [`Stored::confirm`] said yes.
    pub fn sequence(&self) -> Option<u64> {
        self.seq
    }

    /// Awaits JetStream's acknowledgement (bounded by `request_timeout`);
    /// false when it failed or did not come (send it again).
    pub async fn confirm(&mut self, c: &Cluster) -> bool {
        let Some(ack) = self.ack.take() else {
            return false;
        };
        let t = c.cfg.request_timeout();
        match tokio::time::timeout(t, ack.into_future()).await {
            Ok(Ok(ack)) => {
                c.metrics.publish_rtt.observe(self.start.elapsed());
                self.seq = Some(ack.sequence);
                true
            }
            Ok(Err(e)) => {
                c.metrics.errors.fetch_add(1, Relaxed);
                c.metrics.publish_failures.fetch_add(1, Relaxed);
                warn!(error = %e, subject = %self.subject, "cluster: stream publish refused");
                false
            }
            Err(_) => {
                c.metrics.timeouts.fetch_add(1, Relaxed);
                c.metrics.publish_failures.fetch_add(1, Relaxed);
                warn!(subject = %self.subject, ms = t.as_millis() as u64, "cluster: stream publish not acknowledged in time");
                false
            }
        }
    }
}

/// A node's live link to the cluster.
pub struct Cluster {
    node: Arc<str>,
    cfg: ClusterConfig,
    urls: String,
    /// `<c>.m.0.`, `<c>.s.`, `<c>.m.*.`
    p0: String,
    p1: String,
    psub: String,
    /// Highest stream sequence the inbound task handled.
    floor: AtomicU64,
    /// Every stored message up to this sequence that this node's
    /// subscriptions match was handed to the broker (see [`Cluster::mark`]).
    mark: Arc<AtomicU64>,
    client: async_nats::Client,
    /// A second connection, with echo, for shared groups' queue
    /// subscriptions: a node's own publishes must be able to reach its own
    /// members through the queue group.
    qclient: async_nats::Client,
    js: jetstream::Context,
    pub(crate) owners: kv::Store,
    pub(crate) nodes: kv::Store,
    pub(crate) retained: kv::Store,
    pub(crate) wills: kv::Store,
    pub(crate) interest_kv: kv::Store,
    pub(crate) state: kv::Store,
    /// Persistent sessions whose records this node writes (state.rs).
    pub(crate) held: Mutex<HashMap<String, crate::state::Held>>,
    /// A persistent session was claimed here: every QoS 1/2 publish goes
    /// to the stream (a session's checkpoint counts in its sequences).
    pub(crate) persistent: AtomicBool,
    pub(crate) remote: crate::remote::Remote,
    stream: String,
    /// Identifies this run of the node in message ids (start time, ms).
    run: u64,
    seq: AtomicU64,
    permits: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    interest: Mutex<HashMap<String, Interest>>,
    add: mpsc::UnboundedSender<Inbound>,
    /// Asks the inbound task to reconcile from the stream (again).
    replay_again: mpsc::UnboundedSender<()>,
    connected: Arc<AtomicBool>,
    pub(crate) started_ms: i64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("nats", &self.urls)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Bounds a NATS wait: counts its time in `h` and a timeout in `metrics`.
pub(crate) async fn bounded<T, E: std::fmt::Display>(
    metrics: &Metrics,
    h: &crate::metrics::Histogram,
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ClusterError> {
    let t = Instant::now();
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => {
            h.observe(t.elapsed());
            Ok(v)
        }
        Ok(Err(e)) => {
            metrics.errors.fetch_add(1, Relaxed);
            Err(ClusterError::Nats {
                what: what.into(),
                message: e.to_string(),
            })
        }
        Err(_) => {
            metrics.timeouts.fetch_add(1, Relaxed);
            Err(ClusterError::Timeout {
                what: what.into(),
                ms: timeout.as_millis() as u64,
            })
        }
    }
}

impl Cluster {
    /// Connects to NATS, makes sure the stream and buckets exist (creating
    /// or updating them), and starts the inbound task, the membership
    /// heartbeat and the retained watcher. Fails with an error naming the
    /// URLs when no NATS server answers within `connect_timeout_ms`.
    pub async fn start(
        cfg: &ClusterConfig,
        local: Arc<dyn Local>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let node: Arc<str> = cfg.node_name().into();
        let urls = cfg.nats.join(",");
        let metrics = Arc::new(Metrics::default());
        let connected = Arc::new(AtomicBool::new(false));
        let (replay_tx, replay_rx) = mpsc::unbounded_channel();
        let replay_again = replay_tx.clone();
        let client = connect(
            cfg,
            &node,
            &urls,
            metrics.clone(),
            connected.clone(),
            replay_tx,
            true,
        )
        .await?;
        let (qreplay, _) = mpsc::unbounded_channel();
        let qclient = connect(
            cfg,
            &format!("{node}-groups"),
            &urls,
            Arc::new(Metrics::default()),
            Arc::new(AtomicBool::new(false)),
            qreplay,
            false,
        )
        .await?;
        connected.store(true, Relaxed);
        let js = jetstream::ContextBuilder::new()
            .timeout(cfg.request_timeout())
            .build(client.clone());
        let setup = |what: &str, e: &dyn std::fmt::Display| ClusterError::Setup {
            what: what.into(),
            urls: urls.clone(),
            message: e.to_string(),
        };
        let c = &cfg.name;
        let stream_name = format!("{}_MSGS", c.to_uppercase());
        let deadline = cfg.request_timeout() * 4;
        let stream_cfg = stream::Config {
            name: stream_name.clone(),
            description: Some("Midge: QoS 1/2 messages crossing nodes".into()),
            subjects: vec![format!("{c}.s.>")],
            republish: Some(stream::Republish {
                source: format!("{c}.s.>"),
                destination: format!("{c}.m.1.>"),
                headers_only: false,
            }),
            max_age: Duration::from_secs(cfg.stream_max_age_s),
            max_bytes: if cfg.stream_max_bytes > 0 {
                cfg.stream_max_bytes
            } else {
                -1
            },
            num_replicas: cfg.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        // A JetStream that was just started (or is electing a meta leader)
        // times out its first requests: the setup below retries those for
        // up to `connect_timeout_ms`, like the first connection, and fails
        // at once on any other error.
        let patience = tokio::time::Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
        // Messages stored before this node joined are not its concern.
        let start_seq = loop {
            let what = format!("stream {stream_name}");
            let failed: Box<dyn std::fmt::Display + Send> = match tokio::time::timeout(
                deadline,
                js.create_or_update_stream(stream_cfg.clone()),
            )
            .await
            {
                Ok(Ok(info)) => break info.state.last_sequence,
                Ok(Err(e)) if not_ready(&e.kind()) => Box::new(e),
                Ok(Err(e)) => return Err(setup(&what, &e)),
                Err(_) => Box::new(
                    "no answer (is JetStream enabled with enough servers for the replicas?)",
                ),
            };
            if !again(patience, &what, &*failed).await {
                return Err(setup(&what, &*failed));
            }
        };
        let bucket =
            |suffix: &str, history: i64, max_age: Duration, markers: Option<Duration>| kv::Config {
                bucket: format!("{c}-{suffix}"),
                history,
                max_age,
                num_replicas: cfg.replicas,
                limit_markers: markers,
                ..Default::default()
            };
        let node_ttl = Duration::from_millis(cfg.node_timeout_ms);
        let mut stores = Vec::new();
        for kc in [
            bucket("sessions", 1, Duration::ZERO, None),
            // Records older than the node timeout vanish; the marker tells watchers.
            bucket(
                "nodes",
                1,
                node_ttl,
                Some(node_ttl.max(Duration::from_secs(1))),
            ),
            bucket("retained", 1, Duration::ZERO, None),
            bucket("wills", 1, Duration::ZERO, None),
            bucket("interest", 1, Duration::ZERO, None),
            bucket("state", 1, Duration::ZERO, None),
        ] {
            let what = format!("bucket {}", kc.bucket);
            loop {
                let failed: Box<dyn std::fmt::Display + Send> =
                    match tokio::time::timeout(deadline, js.create_or_update_key_value(kc.clone()))
                        .await
                    {
                        Ok(Ok(s)) => {
                            stores.push(s);
                            break;
                        }
                        // The bucket's stream error comes as text here.
                        Ok(Err(e))
                            if e.kind() == CreateKeyValueErrorKind::TimedOut
                                || e.to_string().contains("error code 10008")
                                || e.to_string().contains("error code 10005") =>
                        {
                            Box::new(e)
                        }
                        Ok(Err(e)) => return Err(setup(&what, &e)),
                        Err(_) => Box::new("no answer"),
                    };
                if !again(patience, &what, &*failed).await {
                    return Err(setup(&what, &*failed));
                }
            }
        }
        let state = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let interest_kv = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let wills = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let retained = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let nodes = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let owners = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let (add, add_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            node,
            urls,
            p0: format!("{c}.m.0."),
            p1: format!("{c}.s."),
            floor: AtomicU64::new(start_seq),
            mark: Arc::new(AtomicU64::new(start_seq)),
            psub: format!("{c}.m.*."),
            client,
            qclient,
            js,
            owners,
            nodes,
            retained,
            wills,
            interest_kv,
            state,
            held: Mutex::new(HashMap::new()),
            persistent: AtomicBool::new(false),
            remote: Default::default(),
            stream: stream_name,
            run: now_ms() as u64,
            seq: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(cfg.max_pending)),
            metrics,
            interest: Mutex::new(HashMap::new()),
            add,
            replay_again,
            connected,
            started_ms: now_ms(),
            cfg: cfg.clone(),
        });
        tokio::spawn(inbound(
            Arc::downgrade(&cluster),
            cluster.mark.clone(),
            cluster.node.clone(),
            cluster.metrics.clone(),
            local.clone(),
            add_rx,
            replay_rx,
        ));
        spawn_leader_watch(&cluster).await?;
        crate::membership::spawn_heartbeat(&cluster);
        crate::retained::spawn_watch(&cluster, local).await?;
        crate::remote::spawn_sync(&cluster).await?;
        crate::remote::spawn_watch(&cluster).await?;
        cluster.publish_interest().await?;
        info!(node = %cluster.node, nats = %cluster.urls, "cluster: joined");
        Ok(cluster)
    }

    /// A stream sequence such that every stored message up to it that this
    /// node's subscriptions match was handed to the broker already (a
    /// message routed here before it was stored gets a sequence above it).
    pub fn mark(&self) -> u64 {
        self.mark.load(Relaxed)
    }

    /// `<c>.s.`: the stream's subjects start with it.
    pub(crate) fn stored_prefix(&self) -> &str {
        &self.p1
    }

    /// Whether the node's NATS subscription for plain filter `filter` is in
    /// place (subscribed, not only asked for).
    pub fn is_subscribed(&self, filter: &str) -> bool {
        self.interest
            .lock()
            .get(filter)
            .is_some_and(|i| !i.aborts.is_empty())
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    pub fn nats_urls(&self) -> &str {
        &self.urls
    }

    /// Is the NATS connection up now?
    pub fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub(crate) fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Relaxed);
        format!("{}.{}.{}", self.node, self.run, n)
    }

    /// Sends a message to the nodes whose clients want it, for callers
    /// that do not order their sends themselves: QoS 0 returns `None` once
    /// sent; QoS 1/2 returns a handle that completes with whether JetStream
    /// acknowledged it (retried with the same id until `request_timeout`).
    /// Waits (back-pressure) while `max_pending` sends are in flight.
    pub async fn forward(
        self: &Arc<Self>,
        env: &Envelope,
    ) -> Option<tokio::task::JoinHandle<bool>> {
        let permit = self.permit().await;
        if env.qos == QoS::AtMostOnce {
            self.send_core(env).await;
            drop(permit);
            return None;
        }
        let mut s = self.send_stored(env).await;
        let this = self.clone();
        Some(tokio::spawn(async move {
            let start = Instant::now();
            let mut delay = Duration::from_millis(20);
            loop {
                if s.confirm(&this).await {
                    break;
                }
                if start.elapsed() + delay >= this.cfg.request_timeout() {
                    drop(permit);
                    return false;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
                s = this.send_stored_again(&s).await;
            }
            drop(permit);
            true
        }))
    }

    /// Publishes a QoS 0 message on core NATS (`<c>.m.0.<topic>`): delivered
    /// to the nodes subscribed for it now, stored nowhere.
    pub async fn send_core(&self, env: &Envelope) {
        let mut headers = env.headers(false);
        headers.insert(H_ID, self.next_id().as_str());
        self.metrics.forwarded[0].fetch_add(1, Relaxed);
        self.metrics
            .forwarded_bytes
            .fetch_add(env.payload.len() as u64, Relaxed);
        let subject = subject::topic_subject(&self.p0, &env.topic);
        if let Err(e) = self
            .client
            .publish_with_headers(subject, headers, env.payload.clone())
            .await
        {
            self.metrics.publish_failures.fetch_add(1, Relaxed);
            debug!(error = %e, "cluster: QoS 0 publish not sent");
        }
    }

    /// Publishes QoS 0 messages of one topic, in order (see
    /// [`crate::envelope`]): a lone message as [`Cluster::send_core`] does,
    /// several as batches; a batch is cut before the message that would
    /// take it past [`BATCH_MAX_BYTES`] (a message larger than that goes as
    /// a batch of its own) or [`BATCH_MAX_ITEMS`].
    pub async fn send_core_batch(&self, envs: &[Envelope]) {
        let Some(first) = envs.first() else { return };
        if envs.len() == 1 {
            return self.send_core(first).await;
        }
        let subject = subject::topic_subject(&self.p0, &first.topic);
        let mut buf = BytesMut::new();
        let mut n = 0;
        for e in envs {
            self.metrics.forwarded[0].fetch_add(1, Relaxed);
            self.metrics
                .forwarded_bytes
                .fetch_add(e.payload.len() as u64, Relaxed);
            let before = buf.len();
            e.encode_item(&mut buf);
            if n > 0 && (buf.len() > BATCH_MAX_BYTES || n == BATCH_MAX_ITEMS) {
                let done = buf.split_to(before).freeze();
                self.publish_batch(&subject, n, done).await;
                n = 0;
            }
            n += 1;
        }
        self.publish_batch(&subject, n, buf.freeze()).await;
    }

    /// One NATS message holding `n` QoS 0 messages (`payload`).
    async fn publish_batch(&self, subject: &str, n: usize, payload: Bytes) {
        let mut headers = Envelope::batch_headers(&self.node, n);
        headers.insert(H_ID, self.next_id().as_str());
        self.metrics.batches.fetch_add(1, Relaxed);
        if let Err(e) = self
            .client
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
        {
            self.metrics.publish_failures.fetch_add(n as u64, Relaxed);
            debug!(error = %e, messages = n, "cluster: QoS 0 batch not sent");
        }
    }

    /// Publishes a QoS 1/2 message to the stream (`<c>.s.<topic>`, with
    /// `Nats-Msg-Id`); the stream republishes it to `<c>.m.1.<topic>` as it
    /// stores it, where the nodes subscribed for it get it. [`Stored::confirm`] awaits JetStream's acknowledgement.
    pub async fn send_stored(&self, env: &Envelope) -> Stored {
        let id = self.next_id();
        let mut headers = env.headers(false);
        headers.insert(H_ID, id.as_str());
        headers.insert("Nats-Msg-Id", id.as_str());
        let q = (env.qos as usize).min(2);
        self.metrics.forwarded[q].fetch_add(1, Relaxed);
        self.metrics
            .forwarded_bytes
            .fetch_add(env.payload.len() as u64, Relaxed);
        let mut s = Stored {
            subject: subject::topic_subject(&self.p1, &env.topic),
            headers,
            payload: env.payload.clone(),
            ack: None,
            start: Instant::now(),
            seq: None,
        };
        s.ack = self.publish_stored(&s).await;
        s
    }

    /// Publishes `s` again (same message id: a copy the stream already has
    /// is dropped by its duplicate window).
    pub async fn send_stored_again(&self, s: &Stored) -> Stored {
        let ack = self.publish_stored(s).await;
        Stored {
            subject: s.subject.clone(),
            headers: s.headers.clone(),
            payload: s.payload.clone(),
            ack,
            start: s.start,
            seq: None,
        }
    }

    /// One JetStream publish of `s` (its copy kept for a retry).
    async fn publish_stored(
        &self,
        s: &Stored,
    ) -> Option<async_nats::jetstream::context::PublishAckFuture> {
        match self
            .js
            .publish_with_headers(s.subject.clone(), s.headers.clone(), s.payload.clone())
            .await
        {
            Ok(a) => Some(a),
            Err(e) => {
                self.metrics.errors.fetch_add(1, Relaxed);
                debug!(error = %e, subject = %s.subject, "cluster: stream publish not sent");
                None
            }
        }
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return p;
        }
        self.metrics.backpressure_waits.fetch_add(1, Relaxed);
        // The semaphore is never closed, so this only waits.
        loop {
            if let Ok(p) = self.permits.clone().acquire_owned().await {
                return p;
            }
        }
    }

    /// Cross-node publishes waiting for NATS now.
    pub fn pending(&self) -> usize {
        self.cfg.max_pending - self.permits.available_permits()
    }

    /// Appends this node's cluster metrics as Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        self.metrics.pending.store(self.pending() as u64, Relaxed);
        self.metrics.subscriptions.load(Relaxed);
        self.metrics.render(out, self.is_connected());
    }

    /// A local subscriber appeared on plain filter `filter` (no `$share/`
    /// prefix): the first one subscribes the node on NATS.
    pub async fn interest_added(&self, filter: &str) {
        if filter.starts_with("$SYS") {
            return;
        }
        {
            let mut map = self.interest.lock();
            if let Some(i) = map.get_mut(filter) {
                i.count += 1;
                return;
            }
            map.insert(
                filter.to_string(),
                Interest {
                    count: 1,
                    aborts: Vec::new(),
                },
            );
        }
        let mut aborts = Vec::new();
        for s in subject::filter_subjects(&self.psub, filter) {
            match self.client.subscribe(s.clone()).await {
                Ok(sub) => {
                    let (h, reg) = AbortHandle::new_pair();
                    aborts.push(h);
                    let tagged = sub.map(|m| (None, m)).boxed();
                    let _ = self.add.send(Abortable::new(tagged, reg));
                    self.metrics.subscriptions.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Relaxed);
                    warn!(error = %e, subject = %s, "cluster: subscribe failed");
                }
            }
        }
        let mut map = self.interest.lock();
        match map.get_mut(filter) {
            Some(i) => i.aborts = aborts,
            // Removed while subscribing: undo.
            None => aborts.iter().for_each(|a| {
                a.abort();
                self.metrics.subscriptions.fetch_sub(1, Relaxed);
            }),
        }
    }

    /// The last local subscriber of `filter` left: unsubscribe on NATS.
    pub fn interest_removed(&self, filter: &str) {
        let mut map = self.interest.lock();
        let Some(i) = map.get_mut(filter) else {
            return;
        };
        i.count -= 1;
        if i.count == 0 {
            if let Some(i) = map.remove(filter) {
                for a in i.aborts {
                    a.abort();
                    self.metrics.subscriptions.fetch_sub(1, Relaxed);
                }
            }
        }
    }

    /// Shared group `group` on `filter` got its first local member: the
    /// node joins the NATS queue group of that name on the filter's
    /// subjects, so each message goes to one node of the group, which hands
    /// it to one of its members.
    pub async fn group_added(&self, filter: &str, group: &str) {
        let key = format!("\0{group}\0{filter}");
        {
            let mut map = self.interest.lock();
            if let Some(i) = map.get_mut(&key) {
                i.count += 1;
                return;
            }
            map.insert(
                key.clone(),
                Interest {
                    count: 1,
                    aborts: Vec::new(),
                },
            );
        }
        let tag = Arc::new(Group {
            group: group.to_string(),
            filter: filter.to_string(),
        });
        let queue = subject::token(group);
        let mut aborts = Vec::new();
        for s in subject::filter_subjects(&self.psub, filter) {
            match self.qclient.queue_subscribe(s.clone(), queue.clone()).await {
                Ok(sub) => {
                    let (h, reg) = AbortHandle::new_pair();
                    aborts.push(h);
                    let t = tag.clone();
                    let tagged = sub.map(move |m| (Some(t.clone()), m)).boxed();
                    let _ = self.add.send(Abortable::new(tagged, reg));
                    self.metrics.subscriptions.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Relaxed);
                    warn!(error = %e, subject = %s, %group, "cluster: queue subscribe failed");
                }
            }
        }
        let mut map = self.interest.lock();
        match map.get_mut(&key) {
            Some(i) => i.aborts = aborts,
            None => aborts.iter().for_each(|a| {
                a.abort();
                self.metrics.subscriptions.fetch_sub(1, Relaxed);
            }),
        }
    }

    /// Shared group `group` on `filter` lost its last local member.
    pub fn group_removed(&self, filter: &str, group: &str) {
        self.interest_removed(&format!("\0{group}\0{filter}"));
    }

    /// Keys of the interest map: plain filters, and `\0group\0filter` for
    /// shared groups.
    pub(crate) fn interest_keys(&self) -> Vec<String> {
        self.interest.lock().keys().cloned().collect()
    }

    /// Distinct local filters the node is subscribed for.
    pub fn interest_count(&self) -> usize {
        self.interest.lock().len()
    }

    /// Flushes the shared groups' connection: its queue subscriptions are
    /// in place at the server once this returns.
    pub async fn flush_groups(&self) -> Result<(), ClusterError> {
        bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.cfg.request_timeout(),
            "flush",
            self.qclient.flush(),
        )
        .await
    }

    /// Flushes what the client buffered (tests, shutdown).
    pub async fn flush(&self) -> Result<(), ClusterError> {
        bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.cfg.request_timeout(),
            "flush",
            self.client.flush(),
        )
        .await
    }
}

async fn connect(
    cfg: &ClusterConfig,
    node: &str,
    urls: &str,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicBool>,
    replay: mpsc::UnboundedSender<()>,
    no_echo: bool,
) -> Result<async_nats::Client, ClusterError> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("midge-{node}"))
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .request_timeout(Some(cfg.request_timeout()))
        // Keep trying forever once connected: a node outlives NATS restarts.
        .max_reconnects(None)
        .event_callback(move |ev| {
            let metrics = metrics.clone();
            let connected = connected.clone();
            let replay = replay.clone();
            async move {
                match ev {
                    async_nats::Event::Disconnected => {
                        connected.store(false, Relaxed);
                        metrics.disconnects.fetch_add(1, Relaxed);
                        warn!("cluster: NATS connection lost; serving local clients only");
                    }
                    async_nats::Event::Connected => {
                        if !connected.swap(true, Relaxed) {
                            metrics.reconnects.fetch_add(1, Relaxed);
                            info!("cluster: NATS connection back; reconciling from the stream");
                            let _ = replay.send(());
                        }
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        warn!(sid, "cluster: slow consumer: NATS dropped messages for a subscription; reconciling from the stream");
                        let _ = replay.send(());
                    }
                    other => debug!(event = %other, "cluster: NATS event"),
                }
            }
        });
    if no_echo {
        o = o.no_echo();
    }
    if let Some(p) = &cfg.credentials {
        o = o
            .credentials_file(p)
            .await
            .map_err(|source| ClusterError::Credentials {
                what: format!("cluster.credentials {}", p.display()),
                source,
            })?;
    }
    if let (Some(u), Some(pw)) = (&cfg.user, &cfg.password) {
        o = o.user_and_password(u.clone(), pw.clone());
    }
    if let Some(t) = &cfg.token {
        o = o.token(t.clone());
    }
    if let Some(ca) = &cfg.tls_ca {
        o = o.add_root_certificates(ca.clone());
    }
    if let (Some(c), Some(k)) = (&cfg.tls_cert, &cfg.tls_key) {
        o = o.add_client_certificate(c.clone(), k.clone());
    }
    if cfg.tls_required {
        o = o.require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> =
        cfg.nats.iter().filter_map(|u| u.parse().ok()).collect();
    let total = Duration::from_millis(cfg.connect_timeout_ms);
    match tokio::time::timeout(total + Duration::from_millis(500), o.connect(addrs)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(source)) => Err(ClusterError::Connect {
            urls: urls.into(),
            source,
        }),
        Err(_) => Err(ClusterError::Timeout {
            what: format!("connect to {urls}"),
            ms: cfg.connect_timeout_ms,
        }),
    }
}

/// A new leader for the stream: reconcile. The stream republishes each
/// stored message over core NATS from its leader; when the leader dies,
/// messages it stored (with a quorum, so acknowledged to the publisher)
/// but had not yet republished, or whose republish died in its buffers,
/// never arrive live, and this node's own NATS connection may not have
/// blinked at all. The advisory says when that can have happened.
async fn spawn_leader_watch(cluster: &Arc<Cluster>) -> Result<(), ClusterError> {
    let subject = format!(
        "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}",
        cluster.stream
    );
    let mut sub = cluster
        .client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Setup {
            what: format!("subscription to {subject}"),
            urls: cluster.urls.clone(),
            message: e.to_string(),
        })?;
    let again = cluster.replay_again.clone();
    tokio::spawn(async move {
        while sub.next().await.is_some() {
            info!("cluster: the stream has a new leader; reconciling from the stream");
            if again.send(()).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Stored messages arriving live further apart than this mark a pause (a
/// leader election, a lost connection, or just quiet).
const PAUSE: Duration = Duration::from_millis(250);

/// A replay asked for within this long after live messages resumed reads
/// from where the pause began: the signal (an advisory, a reconnect) and
/// the first messages after the pause race each other.
const RACE: Duration = Duration::from_secs(3);

/// How many message ids the inbound task remembers, to drop copies that
/// came through overlapping filters or again through a replay.
const SEEN: usize = 65_536;

/// Recently handled message ids (bounded, oldest forgotten first).
struct Seen {
    set: HashSet<Bytes>,
    order: VecDeque<Bytes>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            set: HashSet::with_capacity(1024),
            order: VecDeque::with_capacity(1024),
        }
    }

    /// False when `id` was handled already.
    fn first(&mut self, id: &str) -> bool {
        let id = Bytes::copy_from_slice(id.as_bytes());
        if !self.set.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// What the inbound task needs to handle one message.
struct Handler {
    node: Arc<str>,
    metrics: Arc<Metrics>,
    local: Arc<dyn Local>,
    seen: Seen,
    floor: u64,
    /// When the last stored message arrived live.
    last_live: Option<Instant>,
    /// The floor when live stored messages last resumed after a pause, and
    /// when.
    resumed: Option<(u64, Instant)>,
}

impl Handler {
    /// Where a replay starts (exclusive): the floor, or, when live messages
    /// resumed after a pause just now, the floor from before the pause, so
    /// that messages lost in the pause are not skipped because later ones
    /// already raised the floor (copies are dropped by id).
    fn replay_from(&self) -> u64 {
        match self.resumed {
            Some((floor, at)) if at.elapsed() < RACE => floor.min(self.floor),
            _ => self.floor,
        }
    }

    /// A message of a shared group's queue subscription: for one local
    /// member of that group, also when this node published it.
    fn handle_shared(&mut self, msg: &async_nats::Message, g: &Group) {
        let Some(d) = decode_inbound(msg, 3, &self.metrics) else {
            return;
        };
        for env in d {
            let q = env.qos as usize;
            self.metrics.received[q.min(2)].fetch_add(1, Relaxed);
            self.local.deliver_shared(env, &g.group, &g.filter);
        }
    }

    /// Decodes `msg` (its topic after `prefix_tokens` subject tokens) and
    /// hands it to the broker unless it is this node's own or a copy.
    fn handle(
        &mut self,
        msg: &async_nats::Message,
        prefix_tokens: usize,
        seq: Option<u64>,
        dedupe: bool,
    ) {
        let Some(d) = decode_inbound(msg, prefix_tokens, &self.metrics) else {
            return;
        };
        let live = seq.is_none();
        let seq = seq.or_else(|| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get("Nats-Sequence"))
                .and_then(|v| v.as_str().parse().ok())
        });
        if let Some(seq) = seq {
            if live {
                let now = Instant::now();
                if self.last_live.is_none_or(|t| now - t >= PAUSE) {
                    self.resumed = Some((self.floor, now));
                }
                self.last_live = Some(now);
            }
            self.floor = self.floor.max(seq);
        }
        if d.origin() == &*self.node {
            return;
        }
        if dedupe || seq.is_some() {
            let id = msg.headers.as_ref().and_then(|h| h.get(H_ID));
            if let Some(id) = id {
                if !self.seen.first(id.as_str()) {
                    self.metrics.duplicates.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
        for env in d {
            let q = env.qos as usize;
            self.metrics.received[q.min(2)].fetch_add(1, Relaxed);
            self.metrics
                .received_bytes
                .fetch_add(env.payload.len() as u64, Relaxed);
            match seq {
                Some(seq) => self.local.deliver_stored(env, seq),
                None => self.local.deliver(env),
            }
        }
    }
}

/// The inbound task: every interest subscription feeds it; it decodes,
/// drops copies and hands each message to the local router, in the order
/// NATS delivered them. On a replay signal it first reads what the stream
/// stored since the last sequence it handled.
#[allow(clippy::too_many_arguments)]
async fn inbound(
    cluster: std::sync::Weak<Cluster>,
    mark: Arc<AtomicU64>,
    node: Arc<str>,
    metrics: Arc<Metrics>,
    local: Arc<dyn Local>,
    mut add: mpsc::UnboundedReceiver<Inbound>,
    mut replay: mpsc::UnboundedReceiver<()>,
) {
    let mut subs: SelectAll<Inbound> = SelectAll::new();
    let floor = cluster.upgrade().map_or(0, |c| c.floor.load(Relaxed));
    let mut h = Handler {
        node,
        metrics,
        local,
        seen: Seen::new(),
        floor,
        last_live: None,
        resumed: None,
    };
    loop {
        tokio::select! {
            a = add.recv() => match a {
                Some(s) => subs.push(s),
                None => return,
            },
            Some(()) = replay.recv() => {
                // Several signals in a row need one replay.
                while replay.try_recv().is_ok() {}
                let Some(c) = cluster.upgrade() else { return };
                c.floor.store(h.floor, Relaxed);
                let r = c.replay(&mut h).await;
                mark.store(h.replay_from(), Relaxed);
                if let Err(e) = r {
                    warn!(error = %e, "cluster: reconcile from the stream failed; retrying in 1 s");
                    let again = c.replay_again.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = again.send(());
                    });
                }
            },
            Some((group, m)) = subs.next(), if !subs.is_empty() => match group {
                None => {
                    let many = subs.len() > 1;
                    h.handle(&m, 3, None, many);
                    mark.store(h.replay_from(), Relaxed);
                }
                Some(g) => h.handle_shared(&m, &g),
            },
        }
    }
}

impl Cluster {
    /// Reads the stream from just after the handler's floor to its end (as
    /// it is when the replay starts), filtered by this node's interest, and
    /// hands every message the node has not seen to the broker.
    async fn replay(&self, h: &mut Handler) -> Result<(), ClusterError> {
        let t = self.cfg.request_timeout();
        let m = &self.metrics;
        let mut stream = bounded(
            m,
            &m.kv_rtt,
            t,
            "stream info",
            self.js.get_stream(&self.stream),
        )
        .await?;
        let last = bounded(m, &m.kv_rtt, t, "stream info", async {
            stream.info().await.map(|i| i.state.last_sequence)
        })
        .await?;
        let from = h.replay_from();
        if last <= from {
            return Ok(());
        }
        let filters: Vec<String> = self
            .interest
            .lock()
            .keys()
            .filter(|k| !k.starts_with('\0'))
            .cloned()
            .collect();
        if filters.is_empty() {
            h.floor = last;
            return Ok(());
        }
        // A long filter list makes a heavy consumer config: past 64, read
        // everything and match here.
        let server_side = filters.len() <= 64;
        let filter_subjects = if server_side {
            filters
                .iter()
                .flat_map(|f| subject::filter_subjects(&self.p1, f))
                .collect()
        } else {
            Vec::new()
        };
        let start = from + 1;
        let consumer = bounded(
            m,
            &m.kv_rtt,
            t,
            "replay consumer",
            stream.create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subjects,
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            }),
        )
        .await?;
        let mut msgs = bounded(m, &m.kv_rtt, t, "replay messages", consumer.messages()).await?;
        let mut n = 0u64;
        let mut at = from;
        while at < last {
            let next = match tokio::time::timeout(t, msgs.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => {
                    m.errors.fetch_add(1, Relaxed);
                    return Err(ClusterError::Nats {
                        what: "replay".into(),
                        message: e.to_string(),
                    });
                }
                // Nothing more within the timeout: what matched was read.
                Ok(None) | Err(_) => break,
            };
            let Ok(info) = next.info() else { continue };
            let (seq, pending) = (info.stream_sequence, info.pending);
            at = seq;
            let wanted = server_side || {
                let topic = decode_inbound(&next.message, 2, m).and_then(|d| d.topic().cloned());
                topic.is_some_and(|t| {
                    filters
                        .iter()
                        .any(|f| midge_protocol::topic::matches(f, &t))
                })
            };
            if wanted {
                h.handle(&next.message, 2, Some(seq), true);
                n += 1;
            } else {
                h.floor = h.floor.max(seq);
            }
            if pending == 0 {
                break;
            }
        }
        h.floor = h.floor.max(last);
        m.replayed.fetch_add(n, Relaxed);
        info!(
            from = start,
            to = last,
            messages = n,
            "cluster: reconciled from the stream"
        );
        Ok(())
    }
}

/// The messages of one NATS message: one, or a batch's.
#[derive(Debug)]
pub(crate) enum Decoded {
    One(Envelope),
    Batch(Vec<Envelope>),
}

impl Decoded {
    /// The node they entered the cluster on.
    fn origin(&self) -> &str {
        match self {
            Decoded::One(e) => &e.origin,
            Decoded::Batch(v) => v.first().map_or("", |e| &e.origin),
        }
    }

    fn topic(&self) -> Option<&ByteStr> {
        match self {
            Decoded::One(e) => Some(&e.topic),
            Decoded::Batch(v) => v.first().map(|e| &e.topic),
        }
    }
}

impl IntoIterator for Decoded {
    type Item = Envelope;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Envelope>, std::vec::IntoIter<Envelope>>;

    fn into_iter(self) -> Self::IntoIter {
        let (one, batch) = match self {
            Decoded::One(e) => (Some(e), Vec::new()),
            Decoded::Batch(v) => (None, v),
        };
        one.into_iter().chain(batch)
    }
}

/// `<c>.m.<q>.<topic>` (3 prefix tokens) or `<c>.s.<topic>` (2) -> the
/// envelope, or a batch's envelopes; a message this node cannot read is
/// counted and logged with its subject and origin.
pub(crate) fn decode_inbound(
    msg: &async_nats::Message,
    prefix_tokens: usize,
    metrics: &Metrics,
) -> Option<Decoded> {
    let subject = msg.subject.as_str();
    let mut dots = 0;
    let mut cut = None;
    for (i, b) in subject.bytes().enumerate() {
        if b == b'.' {
            dots += 1;
            if dots == prefix_tokens {
                cut = Some(i + 1);
                break;
            }
        }
    }
    let reject = |why: String| {
        metrics.rejected.fetch_add(1, Relaxed);
        let origin = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::envelope::H_ORIGIN))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        warn!(%subject, node = %origin, "cluster: message from a peer refused: {why}");
    };
    let Some(cut) = cut else {
        reject("subject too short".into());
        return None;
    };
    let topic = match subject::subject_to_topic(&subject[..cut], subject) {
        Ok(t) => t,
        Err(e) => {
            reject(e.to_string());
            return None;
        }
    };
    let Some(topic) = ByteStr::from_bytes(Bytes::from(topic)) else {
        reject("topic is not valid UTF-8".into());
        return None;
    };
    let batch = msg.headers.as_ref().filter(|h| h.get(H_BATCH).is_some());
    let decoded = match batch {
        Some(h) => Envelope::decode_batch(topic, h, msg.payload.clone()).map(Decoded::Batch),
        None => {
            Envelope::decode(topic, msg.headers.as_ref(), msg.payload.clone()).map(Decoded::One)
        }
    };
    match decoded {
        Ok(d) => Some(d),
        Err(e) => {
            reject(e.to_string());
            None
        }
    }
}

/// A JetStream that cannot answer yet: a timeout, no JetStream, "JetStream
/// system temporarily unavailable" (10008: no meta leader, e.g. without a
/// quorum) or "no suitable peers for placement" (10005: the servers for the
/// replicas are not all up yet; when they never come, the same error ends
/// the start once the wait is over).
fn not_ready(kind: &CreateStreamErrorKind) -> bool {
    match kind {
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
        CreateStreamErrorKind::JetStream(e) => {
            e.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE
                || e.error_code() == ErrorCode::CLUSTER_NO_PEERS
        }
        _ => false,
    }
}

/// Whether a setup request that timed out may be tried again (before
/// `patience`): says so in the log and pauses a moment first.
async fn again(patience: tokio::time::Instant, what: &str, why: &dyn std::fmt::Display) -> bool {
    if tokio::time::Instant::now() >= patience {
        return false;
    }
    warn!(%what, error = %why, "JetStream not answering yet at start; trying again");
    tokio::time::sleep(Duration::from_millis(200)).await;
    true
}
