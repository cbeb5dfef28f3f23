//! One node's connection to the cluster: NATS client, the stream and buckets,
//! cross-node publish, interest subscriptions and the inbound task.
//!
//! Subjects (`<c>` is `[cluster] name`):
//!
//! | subject | carries |
//! |---|---|
//! | `<c>.m.0.<topic>` | QoS 0 publishes (core NATS only) |
//! | `<c>.m.1.<topic>` | QoS 1/2 publishes; the stream `<C>_MSGS` stores them (replicas) before the publisher is acknowledged |
//!
//! A node subscribes once per distinct local filter to `<c>.m.*.<filter>`
//! (two subjects for a filter ending in `/#`, see [`crate::subject`]), and
//! unsubscribes when the filter's last local subscriber leaves. The NATS
//! connection is opened with `no_echo`, so a node never receives its own
//! publishes: its own subscribers were served by its local router.
//! Overlapping filters make NATS deliver one copy per subscription: every
//! subscription feeds one inbound task, which drops copies by message id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::stream::{AbortHandle, Abortable, SelectAll};
use futures_util::StreamExt;
use midge_protocol::{ByteStr, QoS};
use parking_lot::Mutex;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::envelope::Envelope;
use crate::metrics::Metrics;
use crate::subject;

/// Header with the message id (also `Nats-Msg-Id` for stored messages).
pub const H_ID: &str = "M-I";

/// What the cluster needs from the broker it runs in.
pub trait Local: Send + Sync + 'static {
    /// A message from another node for this node's subscribers: route it
    /// locally only (no rules, no plugins, no retained update, no forwarding).
    fn deliver(&self, env: Envelope);
    /// A retained message set (`Some`) or cleared (`None`) on any node.
    fn retained(&self, topic: String, env: Option<Envelope>);
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

type Inbound = Abortable<async_nats::Subscriber>;

/// A node's live link to the cluster.
pub struct Cluster {
    node: Arc<str>,
    cfg: ClusterConfig,
    urls: String,
    /// `<c>.m.0.`, `<c>.m.1.`, `<c>.m.*.`
    p0: String,
    p1: String,
    psub: String,
    client: async_nats::Client,
    js: jetstream::Context,
    pub(crate) owners: kv::Store,
    pub(crate) nodes: kv::Store,
    pub(crate) retained: kv::Store,
    stream: String,
    /// Identifies this run of the node in message ids (start time, ms).
    run: u64,
    seq: AtomicU64,
    permits: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    interest: Mutex<HashMap<String, Interest>>,
    add: mpsc::UnboundedSender<Inbound>,
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
        let client = connect(cfg, &node, &urls, metrics.clone(), connected.clone()).await?;
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
            subjects: vec![format!("{c}.m.1.>")],
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
        match tokio::time::timeout(deadline, js.create_or_update_stream(stream_cfg)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(setup(&format!("stream {stream_name}"), &e)),
            Err(_) => {
                return Err(setup(
                    &format!("stream {stream_name}"),
                    &"no answer (is JetStream enabled with enough servers for the replicas?)",
                ))
            }
        }
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
        ] {
            let name = kc.bucket.clone();
            match tokio::time::timeout(deadline, js.create_or_update_key_value(kc)).await {
                Ok(Ok(s)) => stores.push(s),
                Ok(Err(e)) => return Err(setup(&format!("bucket {name}"), &e)),
                Err(_) => return Err(setup(&format!("bucket {name}"), &"no answer")),
            }
        }
        let retained = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let nodes = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let owners = stores.pop().ok_or_else(|| setup("buckets", &"missing"))?;
        let (add, add_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            node,
            urls,
            p0: format!("{c}.m.0."),
            p1: format!("{c}.m.1."),
            psub: format!("{c}.m.*."),
            client,
            js,
            owners,
            nodes,
            retained,
            stream: stream_name,
            run: now_ms() as u64,
            seq: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(cfg.max_pending)),
            metrics,
            interest: Mutex::new(HashMap::new()),
            add,
            connected,
            started_ms: now_ms(),
            cfg: cfg.clone(),
        });
        tokio::spawn(inbound(
            cluster.p0.len(),
            cluster.metrics.clone(),
            local.clone(),
            add_rx,
        ));
        crate::membership::spawn_heartbeat(&cluster);
        crate::retained::spawn_watch(&cluster, local).await?;
        info!(node = %cluster.node, nats = %cluster.urls, "cluster: joined");
        Ok(cluster)
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

    /// Sends a message published on this node to the nodes whose clients
    /// want it. QoS 0 goes over core NATS and returns `None` at once. QoS
    /// 1/2 is stored in the stream first: the returned handle completes
    /// when JetStream acknowledged it (or failed), and the publisher's
    /// PUBACK / PUBREC must wait for it. Waits (back-pressure) while
    /// `max_pending` publishes are in flight.
    pub async fn forward(
        self: &Arc<Self>,
        env: &Envelope,
    ) -> Option<tokio::task::JoinHandle<bool>> {
        if env.topic.starts_with('$') && env.topic.starts_with("$SYS") {
            return None;
        }
        let permit = self.permit().await;
        let id = self.next_id();
        let mut headers = env.headers(false);
        headers.insert(H_ID, id.as_str());
        let q = env.qos as usize;
        self.metrics.forwarded[q.min(2)].fetch_add(1, Relaxed);
        self.metrics
            .forwarded_bytes
            .fetch_add(env.payload.len() as u64, Relaxed);
        if env.qos == QoS::AtMostOnce {
            let subject = subject::topic_subject(&self.p0, &env.topic);
            let r = self
                .client
                .publish_with_headers(subject, headers, env.payload.clone())
                .await;
            drop(permit);
            if let Err(e) = r {
                self.metrics.publish_failures.fetch_add(1, Relaxed);
                debug!(error = %e, "cluster: QoS 0 publish not sent");
            }
            return None;
        }
        let subject = subject::topic_subject(&self.p1, &env.topic);
        headers.insert("Nats-Msg-Id", id.as_str());
        let this = self.clone();
        let payload = env.payload.clone();
        Some(tokio::spawn(async move {
            let ok = this.publish_durable(subject, headers, payload).await;
            drop(permit);
            ok
        }))
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

    /// JetStream publish and its acknowledgement, retried with the same
    /// message id (the stream drops a duplicate) until `request_timeout`
    /// passes in total.
    async fn publish_durable(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    ) -> bool {
        let timeout = self.cfg.request_timeout();
        let start = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let attempt = async {
                let ack = self
                    .js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await?;
                ack.await
            };
            match tokio::time::timeout(left, attempt).await {
                Ok(Ok(_)) => {
                    self.metrics.publish_rtt.observe(start.elapsed());
                    return true;
                }
                Ok(Err(e)) if start.elapsed() + delay < timeout => {
                    debug!(error = %e, %subject, "cluster: stream publish failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Ok(Err(e)) => {
                    self.metrics.errors.fetch_add(1, Relaxed);
                    self.metrics.publish_failures.fetch_add(1, Relaxed);
                    warn!(error = %e, %subject, "cluster: stream publish failed");
                    return false;
                }
                Err(_) => {
                    self.metrics.timeouts.fetch_add(1, Relaxed);
                    self.metrics.publish_failures.fetch_add(1, Relaxed);
                    warn!(%subject, ms = timeout.as_millis() as u64, "cluster: stream publish not acknowledged in time");
                    return false;
                }
            }
        }
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
                    let _ = self.add.send(Abortable::new(sub, reg));
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

    /// Distinct local filters the node is subscribed for.
    pub fn interest_count(&self) -> usize {
        self.interest.lock().len()
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
) -> Result<async_nats::Client, ClusterError> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("midge-{node}"))
        .no_echo()
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .request_timeout(Some(cfg.request_timeout()))
        // Keep trying forever once connected: a node outlives NATS restarts.
        .max_reconnects(None)
        .event_callback(move |ev| {
            let metrics = metrics.clone();
            let connected = connected.clone();
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
                            info!("cluster: NATS connection back");
                        }
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        warn!(
                            sid,
                            "cluster: slow consumer: NATS dropped messages for a subscription"
                        );
                    }
                    other => debug!(event = %other, "cluster: NATS event"),
                }
            }
        });
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

/// How many message ids the inbound task remembers to drop copies that
/// came through overlapping filters (they arrive back to back).
const SEEN: usize = 8192;

/// The inbound task: every interest subscription feeds it; it decodes,
/// drops copies and hands each message to the local router, in the order
/// NATS delivered them.
async fn inbound(
    _prefix_len: usize,
    metrics: Arc<Metrics>,
    local: Arc<dyn Local>,
    mut add: mpsc::UnboundedReceiver<Inbound>,
) {
    let mut subs: SelectAll<Inbound> = SelectAll::new();
    let mut seen: HashSet<Bytes> = HashSet::with_capacity(SEEN);
    let mut order: VecDeque<Bytes> = VecDeque::with_capacity(SEEN);
    loop {
        let msg = tokio::select! {
            a = add.recv() => match a {
                Some(s) => { subs.push(s); continue; }
                None => return,
            },
            Some(m) = subs.next(), if !subs.is_empty() => m,
        };
        let Some(env) = decode_inbound(&msg, &metrics) else {
            continue;
        };
        if subs.len() > 1 {
            let id = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(H_ID))
                .map(|v| Bytes::copy_from_slice(v.as_str().as_bytes()));
            if let Some(id) = id {
                if !seen.insert(id.clone()) {
                    metrics.duplicates.fetch_add(1, Relaxed);
                    continue;
                }
                order.push_back(id);
                if order.len() > SEEN {
                    if let Some(old) = order.pop_front() {
                        seen.remove(&old);
                    }
                }
            }
        }
        let q = env.qos as usize;
        metrics.received[q.min(2)].fetch_add(1, Relaxed);
        metrics
            .received_bytes
            .fetch_add(env.payload.len() as u64, Relaxed);
        local.deliver(env);
    }
}

/// `<c>.m.<q>.<topic>` -> the envelope; a message this node cannot read is
/// counted and logged with its subject and origin.
fn decode_inbound(msg: &async_nats::Message, metrics: &Metrics) -> Option<Envelope> {
    let subject = msg.subject.as_str();
    // Skip "<c>.m.<q>." : three dots.
    let mut dots = 0;
    let mut cut = None;
    for (i, b) in subject.bytes().enumerate() {
        if b == b'.' {
            dots += 1;
            if dots == 3 {
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
    match Envelope::decode(topic, msg.headers.as_ref(), msg.payload.clone()) {
        Ok(e) => Some(e),
        Err(e) => {
            reject(e.to_string());
            None
        }
    }
}
