//! The broker's shared state and the publish pipeline:
//! publish -> retain -> route -> enqueue to each matching session.
//! Also the session registry: attach (with takeover), detach, expiry, wills.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use midge_protocol::{QoS, Version};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{oneshot, Notify};
use tracing::{info, warn};

use crate::auth::{AuthHook, NoAuth};
use crate::config::MqttConfig;
use crate::message::Message;
use crate::router::{Hit, RetainedStore, Router, SharedKey, SubEntry};
use crate::rules::{events, RuleEngine};
use crate::session::{
    ConnInfo, ConnLink, Delivery, PendingWill, QueueLimits, Session, SessionState,
};
use crate::store::{Op, Snapshot, Store};
use midge_plugin::types::EventSet;
use midge_rules::EventKind;

/// Counters kept by the broker, exported by the admin API's `/metrics`
/// (`admin/metrics.rs`). All are `Relaxed` atomics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages entering `Broker::publish` (clients, wills, plugins, the admin API).
    pub messages_received: AtomicU64,
    pub messages_routed: AtomicU64,
    pub messages_dropped_queue_full: AtomicU64,
    pub messages_dropped_expired: AtomicU64,
    pub messages_dropped_too_large: AtomicU64,
    /// Publishes that matched no subscription (the broker's `$SYS`
    /// updates are not counted here).
    pub messages_dropped_no_subscribers: AtomicU64,
    /// `$SYS` messages the broker published (`Broker::route`), counted
    /// apart from clients' messages.
    pub sys_messages_published: AtomicU64,
    pub connections_total: AtomicU64,
    /// CONNECTs refused because `allow_anonymous` is off.
    pub connections_refused_anonymous: AtomicU64,
    /// Clients disconnected for exceeding `max_publish_rate` (0x96).
    pub limit_publish_rate: AtomicU64,
    /// Clients disconnected for exceeding `max_publish_bytes_rate` (0x97).
    pub limit_publish_bytes_rate: AtomicU64,
    /// Subscriptions refused by `max_subscriptions`.
    pub limit_subscriptions: AtomicU64,
    /// Packets from clients over `mqtt.max_packet_size` (DISCONNECT 0x95).
    pub limit_packet_too_large: AtomicU64,
    /// Clients over `mqtt.receive_maximum` QoS 2 publishes in flight (DISCONNECT 0x93).
    pub limit_receive_maximum: AtomicU64,
    /// Connections open now (a gauge): counted from accept, for every
    /// connection a listener admitted, until its task ends. Connections a
    /// limit refuses are not in it.
    pub connections_current: AtomicU64,
    /// Connections refused by `limits.max_connections` (CONNACK 0x97 / code 3).
    pub connections_refused_max_connections: AtomicU64,
    /// Connections refused by `limits.max_listener_connections` (CONNACK 0x97 / code 3).
    pub connections_refused_listener_limit: AtomicU64,
    /// Connections refused by `limits.max_connection_rate` (CONNACK 0x9F / code 3).
    pub connections_refused_rate: AtomicU64,
    /// Connections closed because no CONNECT (or no TLS / WebSocket
    /// handshake) completed within `limits.connect_timeout`.
    pub connections_refused_connect_timeout: AtomicU64,
    /// PUBLISH packets read from clients, by QoS (server/connection.rs).
    pub publish_received: [AtomicU64; 3],
    /// PUBLISH packets written to clients, by QoS (server/writer.rs).
    pub publish_sent: [AtomicU64; 3],
    /// Bytes read from / written to client sockets (MQTT layer, after TLS or WebSocket framing).
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// CONNECTs refused, by CONNACK reason code (5.0 codes; a 3.1.1 refusal
    /// counts under the 5.0 code it was mapped from).
    pub connacks_refused: ReasonCounters,
}

/// One counter per reason code (0..=255): refusals are rare, a fixed table
/// keeps counting lock-free and rendering generic.
#[derive(Debug)]
pub struct ReasonCounters(Box<[AtomicU64]>);

impl Default for ReasonCounters {
    fn default() -> Self {
        ReasonCounters((0..256).map(|_| AtomicU64::new(0)).collect())
    }
}

impl ReasonCounters {
    pub fn add(&self, code: u8) {
        if let Some(c) = self.0.get(usize::from(code)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (code, count) of every code counted at least once.
    pub fn nonzero(&self) -> Vec<(u8, u64)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then_some((i as u8, n))
            })
            .collect()
    }
}

/// Shared broker state, complete when constructed ([`Broker::new`]; the
/// `app` module assembles its parts from the configuration).
#[derive(Debug)]
pub struct Broker {
    pub config: MqttConfig,
    /// `[limits]` that apply per client (the listeners apply the others).
    pub limits: crate::config::LimitsConfig,
    /// `[sys]`: `$SYS` interval and client notices.
    pub sys: crate::config::SysConfig,
    /// Decides who may connect (CONNECT and AUTH).
    pub auth: Arc<dyn AuthHook>,
    /// SQL rules over publishes and events.
    pub rules: RuleEngine,
    /// The Wasm plugins, when `[plugins]` configures any.
    plugins: Option<midge_plugin::PluginHost>,
    /// Events for plugins' `on-event`, drained by one task (`plugins::run_events`).
    pub plugin_events: crate::plugins::EventQueue,
    /// The `sql` capability's databases, when `[plugins.databases]` has any
    /// (metrics, flush at shutdown).
    pub sql: Option<Arc<crate::services::postgres::PgSql>>,
    /// The producer behind plugins' `kafka` capability, when
    /// `[plugins.kafka]` is set (metrics, flush at shutdown).
    pub kafka: Option<Arc<crate::services::kafka::KafkaProducer>>,
    pub router: Router,
    pub retained: RetainedStore,
    pub stats: Stats,
    /// The durable store, when persistence is on.
    pub store: Option<Store>,
    /// The cluster link, when `[cluster]` is on (set once at start-up).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Node>>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    next_conn_id: AtomicU64,
}

/// What a [`Broker`] is built from. `Parts::default()` is a broker with
/// the default `[mqtt]` settings and nothing else (no store, no plugins,
/// no rules): what unit tests use.
#[derive(Debug)]
pub struct Parts {
    pub config: MqttConfig,
    pub limits: crate::config::LimitsConfig,
    pub sys: crate::config::SysConfig,
    pub auth: Arc<dyn AuthHook>,
    pub rules: RuleEngine,
    pub plugins: Option<midge_plugin::PluginHost>,
    pub sql: Option<Arc<crate::services::postgres::PgSql>>,
    pub kafka: Option<Arc<crate::services::kafka::KafkaProducer>>,
    pub store: Option<Store>,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            config: MqttConfig::default(),
            limits: Default::default(),
            sys: Default::default(),
            auth: Arc::new(NoAuth),
            rules: RuleEngine::default(),
            plugins: None,
            sql: None,
            kafka: None,
            store: None,
        }
    }
}

/// The narrow way into the publish pipeline for what the broker runs on its
/// own behalf (plugins' `publish` capability, rule actions): it can publish
/// and nothing else, and holds the broker weakly (the broker holds the
/// plugins). Made before the broker it points to (plugins are loaded before
/// the broker that holds them is built), then bound once with
/// [`PublishHandle::bind`]; a publish before that, or after the broker is
/// gone, is refused.
#[derive(Debug, Clone, Default)]
pub struct PublishHandle(Arc<std::sync::OnceLock<std::sync::Weak<Broker>>>);

/// Why [`PublishHandle::publish`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("the broker is starting")]
    Starting,
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl PublishHandle {
    /// A handle bound to nothing yet.
    pub fn new() -> PublishHandle {
        PublishHandle::default()
    }

    /// Points the handle (and its clones) at `broker`; later binds are ignored.
    pub fn bind(&self, broker: &Arc<Broker>) {
        let _ = self.0.set(Arc::downgrade(broker));
    }

    /// [`Broker::publish`] through the handle: the store ticket of the
    /// publish's durable writes.
    pub fn publish(&self, msg: Arc<Message>) -> Result<u64, Unavailable> {
        let weak = self.0.get().ok_or(Unavailable::Starting)?;
        let broker = weak.upgrade().ok_or(Unavailable::ShuttingDown)?;
        Ok(broker.publish(msg))
    }
}

/// The connection `attach` is attaching.
#[derive(Debug)]
struct NewConn {
    conn_id: u64,
    clean_start: bool,
    expiry_interval: u32,
    version: Version,
    window: usize,
    will: Option<(Arc<Message>, u32)>,
    info: Arc<ConnInfo>,
}

/// What `attach` found.
#[derive(Debug)]
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    pub conn_id: u64,
    pub kicked: oneshot::Receiver<u8>,
    pub detached: Arc<Notify>,
    /// Store ticket of the session's record (wait for it before CONNACK).
    pub ticket: u64,
}

impl Broker {
    pub fn new(parts: Parts) -> Broker {
        let Parts {
            config,
            limits,
            sys,
            auth,
            rules,
            plugins,
            sql,
            kafka,
            store,
        } = parts;
        Broker {
            store,
            config,
            limits,
            sys,
            auth,
            rules,
            plugins,
            plugin_events: Default::default(),
            sql,
            kafka,
            router: Router::default(),
            retained: RetainedStore::default(),
            stats: Stats::default(),
            cluster: std::sync::OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
        }
    }

    /// The plugin host, when `[plugins]` configures any plugin.
    pub fn plugins(&self) -> Option<&midge_plugin::PluginHost> {
        self.plugins.as_ref()
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.config.max_queued_messages,
            max_bytes: self.config.max_queued_bytes,
            policy: self.config.queue_full_policy,
        }
    }

    /// The publish pipeline after authorization: retain, route, enqueue.
    /// Returns the store ticket covering every durable write it made (0:
    /// none), which the publisher's acknowledgement waits for.
    pub fn publish(&self, msg: Arc<Message>) -> u64 {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        self.route_to_rules(msg).0
    }

    /// The broker's own `$SYS` messages: counted apart from clients'
    /// (`sys_messages_published`, never as received, nor as dropped when
    /// nobody subscribes). Retained `$SYS` messages are kept in memory only.
    pub fn route(&self, msg: Arc<Message>) -> u64 {
        self.stats
            .sys_messages_published
            .fetch_add(1, Ordering::Relaxed);
        self.route_to_rules(msg).0
    }

    /// [`Broker::publish`] for a client's connection: also returns the
    /// action lane its rule outputs were queued on, if any, for the
    /// connection to hold its client back while that lane is deep
    /// ([`crate::rules::queue`]).
    pub fn publish_from_client(&self, msg: Arc<Message>) -> (u64, Option<usize>) {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        self.route_to_rules(msg)
    }

    /// Rules on the topic are evaluated first; their outputs are queued for
    /// their actions after the message itself was delivered, so its
    /// subscribers get it before what rules derive from it.
    fn route_to_rules(&self, msg: Arc<Message>) -> (u64, Option<usize>) {
        let outputs = self.rules.on_message(&msg);
        if outputs.is_empty() {
            return (self.deliver(msg), None);
        }
        let lane = self.rules.lane_of_message(&msg);
        let ticket = self.deliver(msg);
        self.rules.enqueue(lane, outputs);
        (ticket, Some(lane))
    }

    /// Retains and delivers `msg` to its subscribers (no rules), here and
    /// on other cluster nodes.
    fn deliver(&self, msg: Arc<Message>) -> u64 {
        let mut ticket = 0;
        if msg.retain {
            ticket = self.retained.update(&msg, self.store.as_ref());
        }
        crate::cluster::forward(self, &msg);
        ticket.max(self.route_local(msg))
    }

    /// Delivers `msg` to this node's subscribers only (also: messages from
    /// other cluster nodes). Returns the store ticket of the enqueues.
    pub fn route_local(&self, msg: Arc<Message>) -> u64 {
        let mut ticket = 0;
        let mut hits: Vec<Hit> = Vec::new();
        self.router.matches(&msg.topic, &mut hits);
        // The broker's own $SYS updates are not drops when nobody listens.
        if hits.is_empty() && msg.publisher().is_none() && msg.topic.starts_with("$SYS/") {
            return ticket;
        }
        if hits.is_empty() {
            self.stats
                .messages_dropped_no_subscribers
                .fetch_add(1, Ordering::Relaxed);
            if self.rules.wants(EventKind::MessageDropped) {
                let mut f = events::message_fields(&msg);
                f.set("reason", "no_subscribers");
                self.rules.on_event(EventKind::MessageDropped, &f);
            }
            self.plugin_event(EventSet::DROPPED, || {
                crate::plugins::dropped_event("", &msg, msg.qos, "no subscribers")
            });
            return ticket;
        }
        if let Some(publisher) = msg.publisher() {
            hits.retain(|h| !(h.no_local && *h.session.client_id == *publisher));
        }
        merge_overlapping(&mut hits);
        let limits = self.queue_limits();
        for hit in hits {
            let qos = hit.qos.min(msg.qos);
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain: msg.retain && hit.retain_as_published,
                sub_ids: hit.sub_ids,
                shared: hit.shared,
                seq: 0,
            };
            ticket = ticket.max(self.enqueue(&hit.session, d, limits));
        }
        ticket
    }

    fn enqueue(&self, session: &Arc<Session>, d: Delivery, limits: QueueLimits) -> u64 {
        use crate::session::EnqueueOutcome::*;
        let watched = self
            .rules
            .wants(EventKind::DeliveryDropped)
            .then(|| d.msg.clone());
        let plugin_watched = self
            .plugins
            .as_ref()
            .is_some_and(|h| h.wants_event(EventSet::DROPPED))
            .then(|| (d.msg.clone(), d.qos));
        let (outcome, ticket) = session.enqueue(d, limits);
        match outcome {
            Queued => {
                self.stats.messages_routed.fetch_add(1, Ordering::Relaxed);
            }
            DroppedFull => {
                self.stats
                    .messages_dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                let dropped = session.state.lock().dropped;
                // Logged on the first drop and then every 1000th, per session.
                if dropped % 1000 == 1 {
                    warn!(client_id = %session.client_id, dropped, "session queue full: message dropped (mqtt.max_queued_messages / max_queued_bytes)");
                }
                if let Some(msg) = watched {
                    let mut f = events::delivery_fields(&msg, &session.client_id);
                    f.set("reason", "queue_full");
                    self.rules.on_event(EventKind::DeliveryDropped, &f);
                }
                if let Some((msg, qos)) = plugin_watched {
                    self.plugin_event(EventSet::DROPPED, || {
                        crate::plugins::dropped_event(&session.client_id, &msg, qos, "queue full")
                    });
                }
            }
            Skipped => {}
        }
        ticket
    }

    /// Hands deliveries of a shared subscription to another member of its group.
    pub fn redistribute_shared(&self, from: &Arc<Session>, deliveries: Vec<Delivery>) {
        let limits = self.queue_limits();
        for mut d in deliveries {
            let Some(key) = d.shared.clone() else {
                continue;
            };
            match self.router.pick_shared(&key, from) {
                Some(entry) => {
                    d.qos = entry.opts.qos.min(d.msg.qos);
                    d.sub_ids = entry.id.into_iter().collect();
                    let _ = self.enqueue(&entry.session, d, limits);
                }
                None => {
                    // No other member: keep it for this one.
                    let _ = from.enqueue(d, limits);
                }
            }
        }
    }

    /// Attaches a new connection to the session of `client_id`, taking over
    /// any live connection (which is told 0x8E) and discarding the old
    /// session when `info.clean_start`.
    pub async fn attach(
        &self,
        client_id: Arc<str>,
        expiry_interval: u32,
        version: Version,
        window: usize,
        will: Option<(Arc<Message>, u32)>,
        info: Arc<ConnInfo>,
    ) -> Attached {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let new = NewConn {
            conn_id,
            clean_start: info.clean_start,
            expiry_interval,
            version,
            window,
            will,
            info,
        };
        // Bounded: each round attaches or waits for the live connection to go.
        for _ in 0..50 {
            match self.try_attach(&client_id, &new) {
                Ok(a) => return a,
                Err(gone) => {
                    let _ = tokio::time::timeout(Duration::from_millis(100), gone).await;
                }
            }
        }
        // The old connection did not let go in time: drop its session from
        // the registry and attach to a fresh one.
        loop {
            let old = self.sessions.lock().remove(&client_id);
            if let Some(old) = old {
                if let Some(link) = old.state.lock().conn.take() {
                    link.detached.notify_waiters();
                }
                old.set_online(false);
                self.end_session(&old);
            }
            if let Ok(a) = self.try_attach(&client_id, &new) {
                return a;
            }
        }
    }

    /// One attempt: attaches, or kicks the live connection and returns a
    /// future that completes when it has detached.
    fn try_attach(&self, client_id: &Arc<str>, new: &NewConn) -> Result<Attached, OwnedNotified> {
        let mut sessions = self.sessions.lock();
        let existing = sessions.get(client_id).cloned();
        if let Some(s) = &existing {
            let mut st = s.state.lock();
            if let Some(link) = st.conn.as_mut() {
                if let Some(kick) = link.kick.take() {
                    let _ = kick.send(midge_protocol::reason::SESSION_TAKEN_OVER);
                }
                return Err(link.detached.clone().notified_owned());
            }
        }
        let mut ticket = 0;
        let (session, present, old) = match existing {
            Some(s) if !new.clean_start && !s.state.lock().ended => (s, true, None),
            other => {
                if let Some(old) = &other {
                    // The old session's records go before the new one's are written.
                    let mut ost = old.state.lock();
                    if ost.persist {
                        ost.persist = false;
                        ticket = old.store_op(Op::DropSession(client_id.clone()));
                    }
                }
                let s = Arc::new(Session::new(
                    client_id.clone(),
                    new.expiry_interval,
                    self.store.clone(),
                ));
                sessions.insert(client_id.clone(), s.clone());
                (s, false, other)
            }
        };
        let (kick_tx, kick_rx) = oneshot::channel();
        let detached = Arc::new(Notify::new());
        {
            let mut st = session.state.lock();
            // A reconnect cancels a pending will (its delay was running).
            st.will = None;
            st.generation += 1;
            st.expiry_interval = new.expiry_interval;
            st.resend = true;
            st.conn = Some(ConnLink {
                id: new.conn_id,
                version: new.version,
                window: new.window,
                kick: Some(kick_tx),
                detached: detached.clone(),
                info: new.info.clone(),
            });
            st.conn_will = new.will.clone();
            let persist = self.store.is_some() && new.expiry_interval > 0;
            if persist && !st.persist {
                st.persist = true;
                ticket = persist_all(&session, &mut st);
            } else if persist {
                ticket = session.store_op(Op::PutSession(client_id.clone(), st.record()));
            } else if st.persist {
                st.persist = false;
                ticket = session.store_op(Op::DropSession(client_id.clone()));
            }
        }
        session.set_online(true);
        drop(sessions);
        if let Some(old) = old {
            self.end_session(&old);
        }
        Ok(Attached {
            session_present: present,
            session,
            conn_id: new.conn_id,
            kicked: kick_rx,
            detached,
            ticket,
        })
    }

    /// Detaches connection `conn_id` from `session`. `will` is published
    /// (now or after its delay) unless the disconnect was normal.
    pub fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        conn_id: u64,
        will: Option<PendingWill>,
    ) {
        let mut st = session.state.lock();
        let Some(link) = st.conn.as_ref() else { return };
        if link.id != conn_id {
            return;
        }
        let detached = link.detached.clone();
        crate::cluster::will_changed(self, &session.client_id);
        st.conn = None;
        st.generation += 1;
        session.set_online(false);
        let generation = st.generation;
        let expiry = st.expiry_interval;
        // QoS 0 messages are not kept for an offline session.
        st.queue.retain(|d| d.qos != QoS::AtMostOnce);
        st.queued_bytes = st.queue.iter().map(|d| d.msg.payload.len()).sum();
        st.control.clear();
        let shared = st.take_shared(session);
        let mut publish_now = None;
        if let Some(w) = will {
            if w.delay == 0 || expiry == 0 {
                publish_now = Some(w.msg);
            } else {
                st.will = Some(w);
            }
        }
        let pending_delay = st.will.as_ref().map(|w| w.delay);
        st.conn_will = None;
        st.offline_since_ms = Some(crate::message::now_ms());
        if st.persist && expiry > 0 {
            session.store_op(Op::PutSession(session.client_id.clone(), st.record()));
        }
        drop(st);
        detached.notify_waiters();
        if !shared.is_empty() {
            self.redistribute_shared(session, shared);
        }
        if let Some(msg) = publish_now {
            self.publish(msg);
        }
        if expiry == 0 {
            self.remove_session(session);
            return;
        }
        let will_in = pending_delay.map(|d| Duration::from_secs(u64::from(d.min(expiry))));
        let expire_in = (expiry != u32::MAX).then(|| Duration::from_secs(u64::from(expiry)));
        self.schedule_offline(session, generation, will_in, expire_in);
    }

    /// Timers of an offline session: its pending will, then its expiry.
    /// Both stand down if the session's generation moved on (a reconnect).
    fn schedule_offline(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        will_in: Option<Duration>,
        expire_in: Option<Duration>,
    ) {
        if let Some(wait) = will_in {
            let broker = self.clone();
            let s = session.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let will = {
                    let mut st = s.state.lock();
                    if st.generation != generation {
                        None
                    } else {
                        let w = st.will.take();
                        if w.is_some() && st.persist {
                            s.store_op(Op::PutSession(s.client_id.clone(), st.record()));
                        }
                        w
                    }
                };
                if let Some(w) = will {
                    broker.publish(w.msg);
                }
            });
        }
        if let Some(wait) = expire_in {
            let broker = self.clone();
            let s = session.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if s.state.lock().generation == generation {
                    info!(client_id = %s.client_id, "session expired");
                    broker.remove_session(&s);
                }
            });
        }
    }

    /// Removes `session` from the registry (if it is still the registered
    /// one) and ends it.
    fn remove_session(&self, session: &Arc<Session>) {
        {
            let mut sessions = self.sessions.lock();
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.client_id);
            }
        }
        self.end_session(session);
    }

    /// Ends a session: drops its subscriptions from the router, publishes a pending will.
    fn end_session(&self, session: &Arc<Session>) {
        let (subs, will, shared) = {
            let mut st = session.state.lock();
            if st.ended {
                return;
            }
            st.ended = true;
            st.generation += 1;
            let shared = st.take_shared(session);
            if st.persist {
                st.persist = false;
                session.store_op(Op::DropSession(session.client_id.clone()));
            }
            let subs: Vec<String> = st.subscriptions.drain().map(|(f, _)| f).collect();
            st.queue.clear();
            st.queued_bytes = 0;
            st.inflight.clear();
            (subs, st.will.take(), shared)
        };
        for filter in subs {
            let (group, f) = split_filter(&filter);
            self.router.unsubscribe(f, group, session);
        }
        if !shared.is_empty() {
            self.redistribute_shared(session, shared);
        }
        if let Some(w) = will {
            self.publish(w.msg);
        }
    }

    /// Adds a subscription to the session and the router. Returns whether
    /// one existed on that filter before, and the store ticket.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        record: crate::session::SubscriptionRecord,
    ) -> (bool, u64) {
        let (group, f) = split_filter(filter);
        let (existed, ticket) = {
            let mut st = session.state.lock();
            let existed = st
                .subscriptions
                .insert(filter.to_string(), record.clone())
                .is_some();
            let ticket = if st.persist {
                session.store_op(Op::PutSub(
                    session.client_id.clone(),
                    filter.to_string(),
                    record.clone(),
                ))
            } else {
                0
            };
            (existed, ticket)
        };
        self.router.subscribe(
            f,
            group,
            SubEntry {
                session: session.clone(),
                opts: record.opts,
                id: record.id,
            },
        );
        (existed, ticket)
    }

    /// Removes a subscription; returns whether it existed, and the store ticket.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> (bool, u64) {
        let (group, f) = split_filter(filter);
        let (existed, ticket) = {
            let mut st = session.state.lock();
            let existed = st.subscriptions.remove(filter).is_some();
            let ticket = if existed && st.persist {
                session.store_op(Op::DelSub(session.client_id.clone(), filter.to_string()))
            } else {
                0
            };
            (existed, ticket)
        };
        self.router.unsubscribe(f, group, session);
        (existed, ticket)
    }

    /// Rebuilds the persistent sessions and retained messages a store held
    /// (before any listener accepts): sessions come back offline with their
    /// subscriptions in the router, their queues and inflight state, and the
    /// timers of their wills and expiry, counted from when they went offline
    /// (a session that was connected when the broker stopped counts from now).
    /// Expired sessions and messages are purged; wills of expired sessions
    /// are published once everything is restored.
    pub fn restore(self: &Arc<Self>, snap: Snapshot) -> RestoreStats {
        let Some(store) = self.store.clone() else {
            return RestoreStats::default();
        };
        let now_ms = crate::message::now_ms();
        let mut stats = RestoreStats::default();
        for c in snap.orphans {
            store.submit(Op::DropSession(c));
        }
        for m in snap.retained {
            let mut m = m;
            if rebase_expiry(&mut m, now_ms) {
                store.submit(Op::DelRetained(m.topic.to_string()));
                stats.expired_messages += 1;
                continue;
            }
            self.retained.restore(Arc::new(m));
            stats.retained += 1;
        }
        let mut wills = Vec::new();
        let mut registry = HashMap::with_capacity(snap.sessions.len());
        for r in snap.sessions {
            let rec = r.record;
            let offline_since = rec.disconnected_at_ms.unwrap_or(now_ms);
            let offline_for = u64::try_from(now_ms - offline_since).unwrap_or(0);
            let expiry_ms = u64::from(rec.expiry) * 1000;
            if rec.expiry != u32::MAX && offline_for >= expiry_ms {
                store.submit(Op::DropSession(r.client_id.clone()));
                if let Some((w, _)) = rec.will {
                    wills.push(w);
                }
                stats.expired_sessions += 1;
                continue;
            }
            let session = Arc::new(Session::new(
                r.client_id.clone(),
                rec.expiry,
                Some(store.clone()),
            ));
            let (will_in, expire_in) = {
                let mut st = session.state.lock();
                st.persist = true;
                st.offline_since_ms = Some(offline_since);
                let mut max_seq = 0;
                let mut max_id = 0;
                for (d, inflight) in r.queue {
                    max_seq = max_seq.max(d.seq);
                    let mut d = d;
                    let msg = Arc::get_mut(&mut d.msg).map(|m| rebase_expiry(m, now_ms));
                    if msg == Some(true) {
                        store.submit(Op::Dequeue(r.client_id.clone(), d.seq));
                        stats.expired_messages += 1;
                        continue;
                    }
                    stats.messages += 1;
                    match inflight {
                        Some((packet_id, stage)) => {
                            max_id = max_id.max(packet_id);
                            st.inflight.push_back(crate::session::Inflight {
                                packet_id,
                                delivery: d,
                                stage,
                            });
                        }
                        None => {
                            st.queued_bytes += d.msg.payload.len();
                            st.queue.push_back(d);
                        }
                    }
                }
                st.next_seq = max_seq + 1;
                st.next_packet_id = max_id.checked_add(1).unwrap_or(1);
                st.incoming_qos2 = r.incoming_qos2.into_iter().collect();
                for (filter, sub) in r.subscriptions {
                    let (group, f) = split_filter(&filter);
                    self.router.subscribe(
                        f,
                        group,
                        SubEntry {
                            session: session.clone(),
                            opts: sub.opts,
                            id: sub.id,
                        },
                    );
                    st.subscriptions.insert(filter, sub);
                    stats.subscriptions += 1;
                }
                let mut will_in = None;
                if let Some((w, delay)) = rec.will {
                    let due = offline_since + i64::from(delay) * 1000;
                    let left = u64::try_from(due - now_ms).unwrap_or(0);
                    if left == 0 {
                        wills.push(w);
                        store.submit(Op::PutSession(r.client_id.clone(), st.record()));
                    } else {
                        st.will = Some(PendingWill { msg: w, delay });
                        will_in = Some(Duration::from_millis(left));
                    }
                }
                let expire_in = (rec.expiry != u32::MAX)
                    .then(|| Duration::from_millis(expiry_ms - offline_for));
                (will_in, expire_in)
            };
            self.schedule_offline(&session, 0, will_in, expire_in);
            registry.insert(r.client_id, session);
            stats.sessions += 1;
        }
        self.sessions.lock().extend(registry);
        for w in wills {
            let _ = self.publish(w);
        }
        stats
    }

    /// (connected clients, sessions, subscriptions): `$SYS` and the admin API.
    pub fn client_counts(&self) -> (usize, usize, usize) {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        let connected = sessions.iter().filter(|s| s.is_online()).count();
        let subscriptions = sessions
            .iter()
            .map(|s| s.state.lock().subscriptions.len())
            .sum();
        (connected, sessions.len(), subscriptions)
    }

    /// The registry itself, for the cluster's session hand-over
    /// (`cluster::takeover`); lock order: registry, then a session.
    pub(crate) fn registry(&self) -> &Mutex<HashMap<Arc<str>, Arc<Session>>> {
        &self.sessions
    }

    /// Number of sessions (connected or not).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Every session (connected or not), sorted by client id (stable pages
    /// for the admin API).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// The session of `client_id`, if any.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Closes the live connection of `session` (5.0: DISCONNECT `reason`);
    /// the returned future completes when it has detached. `None`: offline.
    pub fn kick(&self, session: &Session, reason: u8) -> Option<OwnedNotified> {
        let mut st = session.state.lock();
        let link = st.conn.as_mut()?;
        if let Some(k) = link.kick.take() {
            let _ = k.send(reason);
        }
        Some(link.detached.clone().notified_owned())
    }

    /// Ends `session` now (subscriptions, queue and stored records go; a
    /// pending will is published) if it is still the registered one and no
    /// connection is attached. Returns whether it was discarded.
    pub fn discard(&self, session: &Arc<Session>) -> bool {
        {
            let mut sessions = self.sessions.lock();
            let registered = sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session));
            // Registry lock, then session lock: the order `try_attach` uses.
            if !registered || session.state.lock().conn.is_some() {
                return false;
            }
            sessions.remove(&session.client_id);
        }
        self.end_session(session);
        true
    }

    /// Kicks every connection (server shutdown) with `reason`; the returned
    /// futures complete as the connections detach.
    pub fn kick_all(&self, reason: u8) -> Vec<OwnedNotified> {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        let mut waits = Vec::new();
        for s in sessions {
            let mut st = s.state.lock();
            if let Some(link) = st.conn.as_mut() {
                if let Some(k) = link.kick.take() {
                    let _ = k.send(reason);
                }
                waits.push(link.detached.clone().notified_owned());
            }
        }
        waits
    }

    /// Hands a shared key's group name for logs.
    pub fn describe_shared(key: &SharedKey) -> String {
        format!("$share/{}/{}", key.group, key.filter)
    }
}

/// `$share/g/f` -> (Some("g"), "f"); `$queue/f` -> (Some("$queue"), "f"); else (None, filter).
pub fn split_filter(filter: &str) -> (Option<&str>, &str) {
    match midge_protocol::topic::split_shared(filter) {
        Some((g, f)) => (Some(g), f),
        None => (None, filter),
    }
}

/// Merges hits of one session from overlapping subscriptions into one:
/// highest QoS, every subscription identifier. Shared-group hits stay apart.
fn merge_overlapping(hits: &mut Vec<Hit>) {
    if hits.len() < 2 {
        return;
    }
    hits.sort_by_key(|h| (Arc::as_ptr(&h.session) as usize, h.shared.is_some()));
    let mut out: Vec<Hit> = Vec::with_capacity(hits.len());
    for h in hits.drain(..) {
        if let Some(last) = out.last_mut() {
            if h.shared.is_none() && last.shared.is_none() && Arc::ptr_eq(&last.session, &h.session)
            {
                last.qos = last.qos.max(h.qos);
                last.retain_as_published |= h.retain_as_published;
                let ids: SmallVec<[u32; 2]> = h.sub_ids;
                last.sub_ids.extend(ids);
                continue;
            }
        }
        out.push(h);
    }
    *hits = out;
}

/// Writes a session that just became persistent, whole: its record,
/// subscriptions and queued / inflight deliveries. Returns the last ticket.
fn persist_all(session: &Session, st: &mut SessionState) -> u64 {
    let c = &session.client_id;
    let mut t = session.store_op(Op::PutSession(c.clone(), st.record()));
    for (f, r) in &st.subscriptions {
        t = session.store_op(Op::PutSub(c.clone(), f.clone(), r.clone()));
    }
    let mut next = st.next_seq;
    for i in st.inflight.iter_mut() {
        if i.delivery.qos != QoS::AtMostOnce {
            i.delivery.seq = next;
            next += 1;
            session.store_op(Op::Queue(c.clone(), i.delivery.seq, i.delivery.clone()));
            t = session.store_op(Op::Inflight(
                c.clone(),
                i.delivery.seq,
                i.packet_id,
                i.stage,
            ));
        }
    }
    for d in st.queue.iter_mut() {
        if d.qos != QoS::AtMostOnce {
            d.seq = next;
            next += 1;
            t = session.store_op(Op::Queue(c.clone(), d.seq, d.clone()));
        }
    }
    for id in &st.incoming_qos2 {
        t = session.store_op(Op::PutQos2(c.clone(), *id));
    }
    st.next_seq = next;
    t
}

/// What [`Broker::restore`] brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    pub sessions: usize,
    pub subscriptions: usize,
    pub messages: usize,
    pub retained: usize,
    pub expired_sessions: usize,
    pub expired_messages: usize,
}

/// Turns a restored message's expiry into what is left of it now; true when
/// nothing is left (expired while the broker was down).
fn rebase_expiry(m: &mut Message, now_ms: i64) -> bool {
    let Some(total) = m.properties.message_expiry_interval else {
        return false;
    };
    let age_ms = u64::try_from(now_ms - m.timestamp_ms).unwrap_or(0);
    let total_ms = u64::from(total) * 1000;
    if age_ms >= total_ms {
        return true;
    }
    // Rounded up: a message with 0.4 s left still has "1 s" to live.
    m.properties.message_expiry_interval = Some((total_ms - age_ms).div_ceil(1000) as u32);
    m.received_at = std::time::Instant::now();
    false
}
