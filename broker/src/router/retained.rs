//! Retained messages: the last retained message per topic.

use std::collections::HashMap;
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
            match store {
                Some(s) if had => s.submit(Op::DelRetained(msg.topic.to_string())),
                _ => 0,
            }
        } else {
            map.insert(msg.topic.as_str().into(), msg.clone());
            if msg.topic.starts_with("$SYS/") {
                return 0; // rebuilt by the broker after a restart
            }
            store.map_or(0, |s| s.submit(Op::PutRetained(msg.clone())))
        }
    }

    /// Puts back a message read from the store.
    pub fn restore(&self, msg: Arc<Message>) {
        self.map.write().insert(msg.topic.as_str().into(), msg);
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
        if let Some(w) = self.watch.get() {
            w.changed(topic, None);
        }
        Some(store.map_or(0, |s| s.submit(Op::DelRetained(topic.to_string()))))
    }

    /// Applies a change another cluster node made: kept in memory only (the
    /// cluster's bucket is where it lasts), and not told to `watch`.
    pub fn apply_remote(&self, topic: &str, msg: Option<Arc<Message>>) {
        let mut map = self.map.write();
        match msg {
            Some(m) => map.insert(topic.into(), m),
            None => map.remove(topic),
        };
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
