//! Retained messages: the last retained message per topic, within a budget
//! (`[mqtt] max_retained`, `max_retained_bytes`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use midge_protocol::topic;
use parking_lot::RwLock;

use crate::message::Message;
use crate::ratelog::RateLog;
use crate::store::{Op, Store};

/// How many retained messages, and how many bytes of them, clients may
/// keep on this node (`[mqtt] max_retained`, `max_retained_bytes`; 0: no
/// limit). A message's bytes are its topic's and its payload's. The
/// broker's own `$SYS` topics are outside the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetainedBudget {
    pub max_topics: usize,
    pub max_bytes: usize,
}

/// A retained message the budget had no room for: the message is still
/// delivered to the subscribers it matches, only not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A new topic while `max_retained` topics are kept.
    Topics,
    /// More bytes than `max_retained_bytes` allows (a replacement that does
    /// not fit also drops the message it would have replaced, so a stale
    /// value is never served as the last one).
    Bytes,
}

/// Refused retained messages: 10 log lines a minute.
static REFUSALS: RateLog = RateLog::new(10, Duration::from_secs(60));

/// The bytes a retained message counts for in the budget.
fn cost(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

/// Told of every retained change made on this node (set: `Some`, clear:
/// `None`), `$SYS` left out; called under the map's lock, in order, so it
/// must not block. The cluster writes the changes to its retained bucket.
pub trait RetainedWatch: Send + Sync + std::fmt::Debug {
    fn changed(&self, topic: &str, msg: Option<&Arc<Message>>);
}

/// Topic -> last retained message. An empty payload deletes.
#[derive(Debug, Default)]
pub struct RetainedStore {
    map: RwLock<HashMap<Box<str>, Arc<Message>>>,
    /// Set once at start-up when the node is clustered.
    pub watch: std::sync::OnceLock<Arc<dyn RetainedWatch>>,
    /// How many of the map's topics are the broker's own `$SYS` ones
    /// (changed under the map's write lock), so counts can leave them out.
    sys: AtomicUsize,
    budget: RetainedBudget,
    /// Bytes ([`cost`]) of the retained messages other than `$SYS` ones
    /// (changed under the map's write lock).
    bytes: AtomicUsize,
    /// Retained messages not kept for want of room in the budget.
    refused: AtomicU64,
}

fn is_sys(topic: &str) -> bool {
    topic.starts_with("$SYS/")
}

impl RetainedStore {
    /// An empty store that keeps clients' retained messages within `budget`.
    pub fn new(budget: RetainedBudget) -> RetainedStore {
        RetainedStore {
            budget,
            ..RetainedStore::default()
        }
    }

    /// Stores, replaces or (empty payload) deletes the retained message of
    /// `msg.topic`, and tells `store` (under the lock, so the store sees the
    /// same order). Returns the store ticket (0 without a store).
    ///
    /// A message the budget has no room for is not kept (see [`Refused`]):
    /// counted in [`RetainedStore::refused`] and logged (rate-limited).
    pub fn update(&self, msg: &Arc<Message>, store: Option<&Store>) -> u64 {
        let mut map = self.map.write();
        let sys = is_sys(&msg.topic);
        if msg.payload.is_empty() {
            if let Some(w) = self.watch.get().filter(|_| !sys) {
                w.changed(&msg.topic, None);
            }
            let had = self.take(&mut map, msg.topic.as_str());
            match store {
                Some(s) if had => s.submit(Op::DelRetained(msg.topic.to_string())),
                _ => 0,
            }
        } else if sys {
            if map.insert(msg.topic.as_str().into(), msg.clone()).is_none() {
                self.sys.fetch_add(1, Ordering::Relaxed);
            }
            0 // rebuilt by the broker after a restart
        } else {
            let old = map.get(msg.topic.as_str()).map(|m| cost(m));
            if let Err(why) = self.fits(&map, old, cost(msg)) {
                self.refuse(msg, why);
                // A replacement that does not fit: the old value goes too.
                if old.is_some() && self.take(&mut map, msg.topic.as_str()) {
                    if let Some(w) = self.watch.get() {
                        w.changed(&msg.topic, None);
                    }
                    return store.map_or(0, |s| s.submit(Op::DelRetained(msg.topic.to_string())));
                }
                return 0;
            }
            if let Some(w) = self.watch.get() {
                w.changed(&msg.topic, Some(msg));
            }
            self.put(&mut map, msg.topic.as_str(), msg.clone());
            store.map_or(0, |s| s.submit(Op::PutRetained(msg.clone())))
        }
    }

    /// Whether a client's retained message of `size` bytes, replacing one of
    /// `old` bytes (`None`: a new topic), fits the budget.
    fn fits(
        &self,
        map: &HashMap<Box<str>, Arc<Message>>,
        old: Option<usize>,
        size: usize,
    ) -> Result<(), Refused> {
        let b = self.budget;
        let topics = map.len() - self.sys.load(Ordering::Relaxed).min(map.len());
        if old.is_none() && b.max_topics > 0 && topics >= b.max_topics {
            return Err(Refused::Topics);
        }
        let bytes = self.bytes.load(Ordering::Relaxed) - old.unwrap_or(0);
        if b.max_bytes > 0 && bytes + size > b.max_bytes {
            return Err(Refused::Bytes);
        }
        Ok(())
    }

    /// Counts and logs a retained message left out by the budget.
    fn refuse(&self, msg: &Message, why: Refused) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = REFUSALS.admit(Instant::now()) {
            let b = self.budget;
            let (limit, value) = match why {
                Refused::Topics => ("max_retained", b.max_topics),
                Refused::Bytes => ("max_retained_bytes", b.max_bytes),
            };
            tracing::warn!(
                topic = msg.topic.as_str(),
                bytes = cost(msg),
                limit,
                value,
                suppressed,
                "retained message not kept: the retained budget ([mqtt] {limit} = {value}) is full; \
                 the message was still delivered (at most 10 such lines a minute; \
                 midge_retained_refused_total counts them all)"
            );
        }
    }

    /// Removes `topic` under the write lock, keeping the counts. Whether it
    /// was there.
    fn take(&self, map: &mut HashMap<Box<str>, Arc<Message>>, topic: &str) -> bool {
        let Some(old) = map.remove(topic) else {
            return false;
        };
        if is_sys(topic) {
            self.sys.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.bytes
                .fetch_sub(topic.len() + old.payload.len(), Ordering::Relaxed);
        }
        true
    }

    /// Adds or replaces `key` under the write lock, keeping the counts (no
    /// budget: what the store or the cluster already holds is taken as it is).
    fn put(&self, map: &mut HashMap<Box<str>, Arc<Message>>, key: &str, msg: Arc<Message>) {
        let sys = is_sys(key);
        if !sys {
            self.bytes
                .fetch_add(key.len() + msg.payload.len(), Ordering::Relaxed);
        }
        match map.insert(key.into(), msg) {
            None if sys => {
                self.sys.fetch_add(1, Ordering::Relaxed);
            }
            Some(old) if !sys => {
                self.bytes
                    .fetch_sub(key.len() + old.payload.len(), Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Puts back a message read from the store. The budget is not applied
    /// (nothing durable is dropped); a store over a lowered budget refuses
    /// new topics until it is back within it.
    pub fn restore(&self, msg: Arc<Message>) {
        let key = msg.topic.clone();
        self.put(&mut self.map.write(), key.as_str(), msg);
    }

    /// Retained messages whose topic matches `filter`, expired ones left out.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let map = self.map.read();
        if !filter.contains(['+', '#']) {
            return map
                .get(filter)
                .filter(|m| !m.is_expired(now))
                .cloned()
                .into_iter()
                .collect();
        }
        map.iter()
            .filter(|(t, m)| topic::matches(filter, t) && !m.is_expired(now))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every retained message, sorted by topic (expired ones left out).
    pub fn list(&self) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let mut v: Vec<Arc<Message>> = self
            .map
            .read()
            .values()
            .filter(|m| !m.is_expired(now))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        v
    }

    /// The retained message of exactly `topic` (not expired).
    pub fn get(&self, topic: &str) -> Option<Arc<Message>> {
        let now = Instant::now();
        self.map
            .read()
            .get(topic)
            .filter(|m| !m.is_expired(now))
            .cloned()
    }

    /// Deletes the retained message of `topic` (and its stored record, under
    /// the lock like `update`). `None` when there was none; else the store
    /// ticket (0 without a store).
    pub fn remove(&self, topic: &str, store: Option<&Store>) -> Option<u64> {
        let mut map = self.map.write();
        if !self.take(&mut map, topic) {
            return None;
        }
        if let Some(w) = self.watch.get() {
            w.changed(topic, None);
        }
        Some(store.map_or(0, |s| s.submit(Op::DelRetained(topic.to_string()))))
    }

    /// Applies a change another cluster node made: kept in memory only (the
    /// cluster's bucket is where it lasts), and not told to `watch`. The
    /// budget is not applied: every node serves the cluster's retained set
    /// (the node the message entered applied its own).
    pub fn apply_remote(&self, topic: &str, msg: Option<Arc<Message>>) {
        let mut map = self.map.write();
        match msg {
            Some(m) => self.put(&mut map, topic, m),
            None => {
                self.take(&mut map, topic);
            }
        }
    }

    /// Every retained topic, the broker's `$SYS` ones included.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Retained messages published by clients (and the admin API, rules,
    /// plugins): [`RetainedStore::len`] without the broker's `$SYS` topics.
    pub fn len_published(&self) -> usize {
        let map = self.map.read();
        map.len() - self.sys.load(Ordering::Relaxed).min(map.len())
    }

    /// The broker's own retained `$SYS` topics.
    pub fn len_sys(&self) -> usize {
        self.sys.load(Ordering::Relaxed)
    }

    /// Bytes (topic + payload) of the retained messages within the budget's
    /// reach (all but the broker's `$SYS` topics).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Retained messages not kept because the budget was full, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The budget in force.
    pub fn budget(&self) -> RetainedBudget {
        self.budget
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
