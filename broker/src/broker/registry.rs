//! The session registry: which session each client id has, and who is
//! connected. Attach (with takeover), detach, expiry timers and wills, and
//! the subscriptions a session adds to the router.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use midge_protocol::{QoS, Version};
use parking_lot::Mutex;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{oneshot, Notify};
use tracing::info;

use super::Broker;
use crate::events::Event;
use crate::message::Message;
use crate::router::{split_filter, SubEntry};
use crate::session::proto::{self, Existing, Takeover};
use crate::session::{ConnInfo, ConnLink, PendingWill, Session};
use crate::store::Op;

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
    /// future that completes when it has detached. The session core decides
    /// (`proto::takeover`, `proto::persistence`); this does what it says.
    fn try_attach(&self, client_id: &Arc<str>, new: &NewConn) -> Result<Attached, OwnedNotified> {
        let mut sessions = self.sessions.lock();
        let existing = sessions.get(client_id).cloned();
        let mut decision = proto::takeover(None, new.clean_start);
        if let Some(s) = &existing {
            let mut st = s.state.lock();
            let seen = Existing {
                live: st.conn.is_some(),
                ended: st.ended,
            };
            decision = proto::takeover(Some(seen), new.clean_start);
            if let (Takeover::Kick { reason }, Some(link)) = (decision, st.conn.as_mut()) {
                if let Some(kick) = link.kick.take() {
                    let _ = kick.send(reason);
                }
                return Err(link.detached.clone().notified_owned());
            }
        }
        let mut ticket = 0;
        let (session, old) = match (decision, existing) {
            (Takeover::Resume, Some(s)) => (s, None),
            (_, other) => {
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
                (s, other)
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
            let persist = proto::persistence(self.store.is_some(), new.expiry_interval, st.persist);
            ticket = session.persist(&mut st, persist).unwrap_or(ticket);
        }
        session.set_online(true);
        drop(sessions);
        if let Some(old) = old {
            self.end_session(&old);
        }
        Ok(Attached {
            session_present: decision.session_present(),
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
        if let Some(c) = self.cluster.get() {
            c.will_changed(&session.client_id);
        }
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
            self.publish_will(&session.client_id, msg);
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
    pub(super) fn schedule_offline(
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
                    broker.publish_will(&s.client_id, w.msg);
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
                    broker.emit(Event::SessionExpired {
                        client_id: &s.client_id,
                    });
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
            self.publish_will(&session.client_id, w.msg);
        }
    }

    /// Publishes the will of `client_id` (and raises `WillPublished`).
    fn publish_will(&self, client_id: &str, msg: Arc<Message>) {
        self.emit(Event::WillPublished {
            client_id,
            msg: &msg,
        });
        self.publish(msg);
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
}
