//! Subscription index: a topic trie mapping filters to subscribers, with
//! shared-subscription groups, plus the retained message store.
//!
//! The trie is read-mostly behind one `RwLock`: publishers take the read
//! lock only long enough to collect their hits, then deliver without it.

mod retained;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use midge_protocol::{QoS, SubOptions};
use parking_lot::RwLock;
use smallvec::SmallVec;

pub use retained::{Refused, RetainedBudget, RetainedStore, RetainedWatch};

pub use crate::records::SharedKey;
use crate::session::Session;

/// One subscription of one session.
#[derive(Debug, Clone)]
pub struct SubEntry {
    pub session: Arc<Session>,
    pub opts: SubOptions,
    pub id: Option<u32>,
}

/// A subscriber matched by a publish.
#[derive(Debug, Clone)]
pub struct Hit {
    pub session: Arc<Session>,
    pub qos: QoS,
    pub retain_as_published: bool,
    pub no_local: bool,
    pub sub_ids: SmallVec<[u32; 2]>,
    pub shared: Option<SharedKey>,
}

#[derive(Debug)]
struct SharedGroup {
    key: SharedKey,
    members: Vec<SubEntry>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node, foldhash::fast::RandomState>,
    subs: Vec<SubEntry>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }

    fn collect(&self, out: &mut Vec<Hit>, shared: bool) {
        for e in &self.subs {
            out.push(Hit {
                session: e.session.clone(),
                qos: e.opts.qos,
                retain_as_published: e.opts.retain_as_published,
                no_local: e.opts.no_local,
                sub_ids: e.id.into_iter().collect(),
                shared: None,
            });
        }
        for g in self.shared.iter().filter(|_| shared) {
            if let Some(e) = pick_member(g, None) {
                out.push(Hit {
                    session: e.session.clone(),
                    qos: e.opts.qos,
                    retain_as_published: e.opts.retain_as_published,
                    no_local: false,
                    sub_ids: e.id.into_iter().collect(),
                    shared: Some(g.key.clone()),
                });
            }
        }
    }
}

/// Round robin over the group, preferring members that are online.
fn pick_member<'a>(g: &'a SharedGroup, exclude: Option<&Arc<Session>>) -> Option<&'a SubEntry> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let start = g.next.fetch_add(1, Ordering::Relaxed);
    let candidates = (0..n)
        .map(|i| &g.members[(start + i) % n])
        .filter(|e| exclude.is_none_or(|x| !Arc::ptr_eq(x, &e.session)));
    let mut fallback = None;
    for e in candidates {
        if e.session.is_online() {
            return Some(e);
        }
        fallback.get_or_insert(e);
    }
    fallback
}

/// Told when a filter gets its first subscriber or loses its last one: a
/// plain filter, or one shared group on a filter (`group` set). Called under
/// the trie's write lock, in the order the changes happen: must not block.
/// The cluster subscribes the node on NATS with it.
pub trait InterestWatch: Send + Sync + std::fmt::Debug {
    fn changed(&self, filter: &str, group: Option<&str>, present: bool);
}

/// `$share/g/f` -> (Some("g"), "f"); `$queue/f` -> (Some("$queue"), "f"); else (None, filter).
pub fn split_filter(filter: &str) -> (Option<&str>, &str) {
    match midge_protocol::topic::split_shared(filter) {
        Some((g, f)) => (Some(g), f),
        None => (None, filter),
    }
}

/// The subscription trie.
#[derive(Debug, Default)]
pub struct Router {
    root: RwLock<Node>,
    /// Set once at start-up when the node is clustered.
    pub watch: std::sync::OnceLock<Arc<dyn InterestWatch>>,
}

impl Router {
    /// Adds or replaces the subscription of `entry.session` on `filter`
    /// (in shared `group` if given). Returns true if it replaced one.
    pub fn subscribe(&self, filter: &str, group: Option<&str>, entry: SubEntry) -> bool {
        let mut root = self.root.write();
        let mut node = &mut *root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let same = |e: &SubEntry| Arc::ptr_eq(&e.session, &entry.session);
        match group {
            None => {
                if let Some(e) = node.subs.iter_mut().find(|e| same(e)) {
                    *e = entry;
                    true
                } else {
                    // Most filters have one subscriber (a device's own
                    // topic): room for one, not Vec's first four.
                    if node.subs.capacity() == 0 {
                        node.subs.reserve_exact(1);
                    }
                    node.subs.push(entry);
                    if node.subs.len() == 1 {
                        self.tell(filter, None, true);
                    }
                    false
                }
            }
            Some(group) => {
                let g = match node.shared.iter_mut().position(|g| &*g.key.group == group) {
                    Some(i) => &mut node.shared[i],
                    None => {
                        self.tell(filter, Some(group), true);
                        node.shared.push(SharedGroup {
                            key: SharedKey {
                                group: group.into(),
                                filter: filter.into(),
                            },
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        let last = node.shared.len() - 1;
                        &mut node.shared[last]
                    }
                };
                if let Some(e) = g.members.iter_mut().find(|e| same(e)) {
                    *e = entry;
                    true
                } else {
                    g.members.push(entry);
                    false
                }
            }
        }
    }

    /// Removes `session`'s subscription on `filter`. Returns true if it existed.
    pub fn unsubscribe(&self, filter: &str, group: Option<&str>, session: &Arc<Session>) -> bool {
        let mut root = self.root.write();
        let levels: SmallVec<[&str; 8]> = filter.split('/').collect();
        let (removed, emptied) = remove(&mut root, &levels, group, session);
        if emptied {
            self.tell(filter, group, false);
        }
        removed
    }

    fn tell(&self, filter: &str, group: Option<&str>, present: bool) {
        if let Some(w) = self.watch.get() {
            w.changed(filter, group, present);
        }
    }

    /// Every plain filter and shared group in the trie, as `(filter,
    /// group)` (a cluster joining after a restore).
    pub fn interests(&self) -> Vec<(String, Option<String>)> {
        fn go(node: &Node, path: &mut Vec<String>, out: &mut Vec<(String, Option<String>)>) {
            if !node.subs.is_empty() {
                out.push((path.join("/"), None));
            }
            for g in &node.shared {
                out.push((path.join("/"), Some(g.key.group.to_string())));
            }
            for (k, c) in &node.children {
                path.push(k.to_string());
                go(c, path, out);
                path.pop();
            }
        }
        let mut out = Vec::new();
        let root = self.root.read();
        for (k, c) in &root.children {
            go(c, &mut vec![k.to_string()], &mut out);
        }
        out
    }

    /// Every subscription matching `topic`; one member per shared group.
    /// Clustered (`watch` set), shared groups are left out: NATS picks the
    /// node of each group (see `cluster`), which uses [`Router::pick_group`].
    pub fn matches(&self, topic: &str, out: &mut Vec<Hit>) {
        let levels: SmallVec<[&str; 8]> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let shared = self.watch.get().is_none();
        let root = self.root.read();
        walk(&root, &levels, 0, dollar, shared, out);
    }

    /// A member of shared group `key`, preferring online ones.
    pub fn pick_group(&self, key: &SharedKey) -> Option<SubEntry> {
        let root = self.root.read();
        let mut node = &*root;
        for level in key.filter.split('/') {
            node = node.children.get(level)?;
        }
        let g = node.shared.iter().find(|g| g.key.group == key.group)?;
        pick_member(g, None).cloned()
    }

    /// Another member of a shared group than `exclude`, preferring online ones.
    pub fn pick_shared(&self, key: &SharedKey, exclude: &Arc<Session>) -> Option<SubEntry> {
        let root = self.root.read();
        let mut node = &*root;
        for level in key.filter.split('/') {
            node = node.children.get(level)?;
        }
        let g = node.shared.iter().find(|g| g.key.group == key.group)?;
        pick_member(g, Some(exclude)).cloned()
    }
}

fn walk(node: &Node, levels: &[&str], idx: usize, dollar: bool, shared: bool, out: &mut Vec<Hit>) {
    let wild_ok = !(idx == 0 && dollar);
    if idx == levels.len() {
        node.collect(out, shared);
        // "a/#" also matches "a".
        if let Some(hash) = node.children.get("#") {
            hash.collect(out, shared);
        }
        return;
    }
    if let Some(child) = node.children.get(levels[idx]) {
        walk(child, levels, idx + 1, dollar, shared, out);
    }
    if wild_ok {
        if let Some(child) = node.children.get("+") {
            walk(child, levels, idx + 1, dollar, shared, out);
        }
        if let Some(hash) = node.children.get("#") {
            hash.collect(out, shared);
        }
    }
}

/// Removes the entry; returns (it existed, the filter or group has no
/// subscriber left because of it).
fn remove(
    node: &mut Node,
    levels: &[&str],
    group: Option<&str>,
    session: &Arc<Session>,
) -> (bool, bool) {
    let Some((first, rest)) = levels.split_first() else {
        let same = |e: &SubEntry| Arc::ptr_eq(&e.session, session);
        return match group {
            None => {
                let before = node.subs.len();
                node.subs.retain(|e| !same(e));
                let removed = node.subs.len() != before;
                (removed, removed && node.subs.is_empty())
            }
            Some(group) => {
                let Some(i) = node.shared.iter().position(|g| &*g.key.group == group) else {
                    return (false, false);
                };
                let g = &mut node.shared[i];
                let before = g.members.len();
                g.members.retain(|e| !same(e));
                let removed = g.members.len() != before;
                let emptied = g.members.is_empty();
                if emptied {
                    node.shared.swap_remove(i);
                }
                (removed, emptied)
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return (false, false);
    };
    let removed = remove(child, rest, group, session);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(id.into(), 0, None))
    }

    fn entry(s: &Arc<Session>, qos: QoS, id: Option<u32>) -> SubEntry {
        SubEntry {
            session: s.clone(),
            opts: SubOptions::qos(qos),
            id,
        }
    }

    fn hits(r: &Router, topic: &str) -> Vec<(String, QoS)> {
        let mut out = Vec::new();
        r.matches(topic, &mut out);
        let mut v: Vec<_> = out
            .into_iter()
            .map(|h| (h.session.client_id.to_string(), h.qos))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_match_per_spec() {
        let r = Router::default();
        let a = session("a");
        r.subscribe("sport/#", None, entry(&a, QoS::AtMostOnce, None));
        let b = session("b");
        r.subscribe("sport/+/player1", None, entry(&b, QoS::AtLeastOnce, None));
        let c = session("c");
        r.subscribe("+", None, entry(&c, QoS::AtMostOnce, None));
        assert_eq!(
            hits(&r, "sport"),
            vec![("a".into(), QoS::AtMostOnce), ("c".into(), QoS::AtMostOnce)]
        );
        assert_eq!(
            hits(&r, "sport/tennis/player1"),
            vec![
                ("a".into(), QoS::AtMostOnce),
                ("b".into(), QoS::AtLeastOnce)
            ]
        );
        assert_eq!(
            hits(&r, "sport/tennis/player2"),
            vec![("a".into(), QoS::AtMostOnce)]
        );
        assert!(hits(&r, "other/x").is_empty());
        // "+" matches one level only, and an empty level counts.
        assert_eq!(hits(&r, "/"), vec![]);
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        let r = Router::default();
        let a = session("a");
        r.subscribe("#", None, entry(&a, QoS::AtMostOnce, None));
        let b = session("b");
        r.subscribe("+/monitor/Clients", None, entry(&b, QoS::AtMostOnce, None));
        let c = session("c");
        r.subscribe("$SYS/#", None, entry(&c, QoS::AtMostOnce, None));
        assert_eq!(
            hits(&r, "$SYS/monitor/Clients"),
            vec![("c".into(), QoS::AtMostOnce)]
        );
        assert_eq!(hits(&r, "x/monitor/Clients").len(), 2);
    }

    #[test]
    fn resubscribe_replaces_and_unsubscribe_prunes() {
        let r = Router::default();
        let a = session("a");
        assert!(!r.subscribe("t/1", None, entry(&a, QoS::AtMostOnce, None)));
        assert!(r.subscribe("t/1", None, entry(&a, QoS::ExactlyOnce, None)));
        assert_eq!(hits(&r, "t/1"), vec![("a".into(), QoS::ExactlyOnce)]);
        assert!(r.unsubscribe("t/1", None, &a));
        assert!(!r.unsubscribe("t/1", None, &a));
        assert!(hits(&r, "t/1").is_empty());
        assert!(r.root.read().is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn shared_group_delivers_to_one_member_round_robin() {
        let r = Router::default();
        let a = session("a");
        let b = session("b");
        a.set_online(true);
        b.set_online(true);
        r.subscribe("job/+", Some("g"), entry(&a, QoS::AtLeastOnce, None));
        r.subscribe("job/+", Some("g"), entry(&b, QoS::AtLeastOnce, None));
        let mut seen = HashMap::new();
        for _ in 0..10 {
            let h = hits(&r, "job/1");
            assert_eq!(h.len(), 1);
            *seen.entry(h[0].0.clone()).or_insert(0) += 1;
        }
        assert_eq!(seen.get("a"), Some(&5));
        assert_eq!(seen.get("b"), Some(&5));
        // An offline member is skipped while an online one exists.
        b.set_online(false);
        for _ in 0..4 {
            assert_eq!(hits(&r, "job/1")[0].0, "a");
        }
        let key = SharedKey {
            group: "g".into(),
            filter: "job/+".into(),
        };
        assert_eq!(
            r.pick_shared(&key, &a)
                .map(|e| e.session.client_id.to_string()),
            Some("b".into())
        );
    }
}
