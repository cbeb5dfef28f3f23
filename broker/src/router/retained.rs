//! Retained messages: the last retained message per topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use midge_protocol::topic;
use parking_lot::RwLock;

use crate::message::Message;
use crate::store::{Op, Store};

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
}

fn is_sys(topic: &str) -> bool {
    topic.starts_with("$SYS/")
}

impl RetainedStore {
    /// Stores, replaces or (empty payload) deletes the retained message of
    /// `msg.topic`, and tells `store` (under the lock, so the store sees the
    /// same order). Returns the store ticket (0 without a store).
    pub fn update(&self, msg: &Arc<Message>, store: Option<&Store>) -> u64 {
        let mut map = self.map.write();
        if let Some(w) = self.watch.get().filter(|_| !msg.topic.starts_with("$SYS/")) {
            w.changed(&msg.topic, Some(msg).filter(|m| !m.payload.is_empty()));
        }
        if msg.payload.is_empty() {
            let had = map.remove(msg.topic.as_str()).is_some();
            if had && is_sys(&msg.topic) {
                self.sys.fetch_sub(1, Ordering::Relaxed);
            }
            match store {
                Some(s) if had => s.submit(Op::DelRetained(msg.topic.to_string())),
                _ => 0,
            }
        } else {
            let new = map.insert(msg.topic.as_str().into(), msg.clone()).is_none();
            if is_sys(&msg.topic) {
                if new {
                    self.sys.fetch_add(1, Ordering::Relaxed);
                }
                return 0; // rebuilt by the broker after a restart
            }
            store.map_or(0, |s| s.submit(Op::PutRetained(msg.clone())))
        }
    }

    /// Puts back a message read from the store.
    pub fn restore(&self, msg: Arc<Message>) {
        let sys = is_sys(&msg.topic);
        let new = self
            .map
            .write()
            .insert(msg.topic.as_str().into(), msg)
            .is_none();
        if new && sys {
            self.sys.fetch_add(1, Ordering::Relaxed);
        }
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
        map.remove(topic)?;
        if is_sys(topic) {
            self.sys.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(w) = self.watch.get() {
            w.changed(topic, None);
        }
        Some(store.map_or(0, |s| s.submit(Op::DelRetained(topic.to_string()))))
    }

    /// Applies a change another cluster node made: kept in memory only (the
    /// cluster's bucket is where it lasts), and not told to `watch`.
    pub fn apply_remote(&self, topic: &str, msg: Option<Arc<Message>>) {
        let mut map = self.map.write();
        let (had, has) = match msg {
            Some(m) => (map.insert(topic.into(), m).is_some(), true),
            None => (map.remove(topic).is_some(), false),
        };
        if is_sys(topic) && had != has {
            if has {
                self.sys.fetch_add(1, Ordering::Relaxed);
            } else {
                self.sys.fetch_sub(1, Ordering::Relaxed);
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
