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
use tracing::{debug, info};

use crate::auth::{AuthHook, NoAuth};
use crate::config::MqttConfig;
use crate::message::Message;
use crate::router::{Hit, RetainedStore, Router, SharedKey, SubEntry};
use crate::rules::{events, RuleEngine};
use crate::session::{ConnLink, Delivery, PendingWill, QueueLimits, Session};
use midge_rules::EventKind;

/// Counters kept by the broker (the admin issue exports them).
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_received: AtomicU64,
    pub messages_routed: AtomicU64,
    pub messages_dropped_queue_full: AtomicU64,
    pub messages_dropped_expired: AtomicU64,
    pub messages_dropped_too_large: AtomicU64,
    pub connections_total: AtomicU64,
}

/// Shared broker state.
#[derive(Debug)]
pub struct Broker {
    pub config: MqttConfig,
    /// Decides who may connect (CONNECT and AUTH).
    pub auth: Arc<dyn AuthHook>,
    /// SQL rules over publishes and events.
    pub rules: RuleEngine,
    /// The Wasm plugins, when `[plugins]` configures any.
    pub plugins: std::sync::OnceLock<midge_plugin::PluginHost>,
    pub router: Router,
    pub retained: RetainedStore,
    pub stats: Stats,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    next_conn_id: AtomicU64,
}

/// The connection `attach` is attaching.
#[derive(Debug)]
struct NewConn {
    conn_id: u64,
    clean_start: bool,
    expiry_interval: u32,
    version: Version,
    window: usize,
}

/// What `attach` found.
#[derive(Debug)]
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    pub conn_id: u64,
    pub kicked: oneshot::Receiver<u8>,
    pub detached: Arc<Notify>,
}

impl Broker {
    pub fn new(config: MqttConfig) -> Broker {
        Broker {
            config,
            auth: Arc::new(NoAuth),
            rules: RuleEngine::default(),
            plugins: std::sync::OnceLock::new(),
            router: Router::default(),
            retained: RetainedStore::default(),
            stats: Stats::default(),
            sessions: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.config.max_queued_messages,
            max_bytes: self.config.max_queued_bytes,
            policy: self.config.queue_full_policy,
        }
    }

    /// The publish pipeline after authorization: retain, route, enqueue.
    pub fn publish(&self, msg: Arc<Message>) {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        self.rules.on_message(&msg);
        if msg.retain {
            self.retained.update(&msg);
        }
        let mut hits: Vec<Hit> = Vec::new();
        self.router.matches(&msg.topic, &mut hits);
        if hits.is_empty() {
            if self.rules.wants(EventKind::MessageDropped) {
                let mut f = events::message_fields(&msg);
                f.set("reason", "no_subscribers");
                self.rules.on_event(EventKind::MessageDropped, &f);
            }
            return;
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
            };
            self.enqueue(&hit.session, d, limits);
        }
    }

    fn enqueue(&self, session: &Arc<Session>, d: Delivery, limits: QueueLimits) {
        use crate::session::EnqueueOutcome::*;
        let watched = self
            .rules
            .wants(EventKind::DeliveryDropped)
            .then(|| d.msg.clone());
        match session.enqueue(d, limits) {
            Queued => {
                self.stats.messages_routed.fetch_add(1, Ordering::Relaxed);
            }
            DroppedFull => {
                self.stats
                    .messages_dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                debug!(client_id = %session.client_id, "dropped: queue full");
                if let Some(msg) = watched {
                    let mut f = events::delivery_fields(&msg, &session.client_id);
                    f.set("reason", "queue_full");
                    self.rules.on_event(EventKind::DeliveryDropped, &f);
                }
            }
            Skipped => {}
        }
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
                    self.enqueue(&entry.session, d, limits);
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
    /// session when `clean_start`.
    pub async fn attach(
        &self,
        client_id: Arc<str>,
        clean_start: bool,
        expiry_interval: u32,
        version: Version,
        window: usize,
    ) -> Attached {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let new = NewConn {
            conn_id,
            clean_start,
            expiry_interval,
            version,
            window,
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
        let (session, present, old) = match existing {
            Some(s) if !new.clean_start && !s.state.lock().ended => (s, true, None),
            other => {
                let s = Arc::new(Session::new(client_id.clone(), new.expiry_interval));
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
            });
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
        st.conn = None;
        st.generation += 1;
        session.set_online(false);
        let generation = st.generation;
        let expiry = st.expiry_interval;
        // QoS 0 messages are not kept for an offline session.
        st.queue.retain(|d| d.qos != QoS::AtMostOnce);
        st.queued_bytes = st.queue.iter().map(|d| d.msg.payload.len()).sum();
        st.control.clear();
        let shared = st.take_shared();
        let mut publish_now = None;
        if let Some(w) = will {
            if w.delay == 0 || expiry == 0 {
                publish_now = Some(w.msg);
            } else {
                st.will = Some(w);
            }
        }
        let pending_delay = st.will.as_ref().map(|w| w.delay);
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
        if let Some(delay) = pending_delay {
            let broker = self.clone();
            let s = session.clone();
            let wait = delay.min(expiry);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(wait))).await;
                let will = {
                    let mut st = s.state.lock();
                    if st.generation != generation {
                        None
                    } else {
                        st.will.take()
                    }
                };
                if let Some(w) = will {
                    broker.publish(w.msg);
                }
            });
        }
        if expiry != u32::MAX {
            let broker = self.clone();
            let s = session.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
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
            let subs: Vec<String> = st.subscriptions.drain().map(|(f, _)| f).collect();
            let shared = st.take_shared();
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
    /// one existed on that filter before.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        record: crate::session::SubscriptionRecord,
    ) -> bool {
        let (group, f) = split_filter(filter);
        let existed = session
            .state
            .lock()
            .subscriptions
            .insert(filter.to_string(), record.clone())
            .is_some();
        self.router.subscribe(
            f,
            group,
            SubEntry {
                session: session.clone(),
                opts: record.opts,
                id: record.id,
            },
        );
        existed
    }

    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let (group, f) = split_filter(filter);
        let existed = session.state.lock().subscriptions.remove(filter).is_some();
        self.router.unsubscribe(f, group, session);
        existed
    }

    /// Number of sessions (connected or not).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
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
