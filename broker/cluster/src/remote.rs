//! What other nodes want, so a publish no other node wants never leaves
//! its node (same-node traffic on a clustered node pays no NATS round trip,
//! and QoS 1/2 no stream write).
//!
//! Each node keeps a summary of its distinct filters (shared groups' filters
//! included) in the `<c>-interest` bucket under its name: the filters, or
//! "everything" past [`MAX_FILTERS`] (a node with per-device filters then
//! gets every publish, as without summaries). It rewrites the record after
//! each batch of interest changes and hands the new summary to every other
//! node it knows (`<c>.isync.<node>`, request / reply), which applies it and
//! answers; the batch's SUBACKs wait for the answers (the broker's
//! `InterestSync`), so a publish on any node after a SUBACK goes to the
//! subscriber's node. Every node also watches the bucket (nodes that start
//! later, and what a lost note missed).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_nats::RequestErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::node::{bounded, Cluster, ClusterError};

/// Past this many distinct filters a node's summary is "everything".
pub const MAX_FILTERS: usize = 256;

/// One node's summary as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Every publish.
    pub all: bool,
    pub filters: Vec<String>,
}

/// A summary as every publish asks it: filters without wildcards in a
/// hash set (a node with per-device topics answers in one look-up, not a
/// scan of up to [`MAX_FILTERS`]), the others matched one by one.
#[derive(Debug)]
struct Wants {
    all: bool,
    exact: HashSet<String>,
    wild: Vec<String>,
}

impl From<Summary> for Wants {
    fn from(s: Summary) -> Wants {
        let (wild, exact): (Vec<String>, Vec<String>) =
            s.filters.into_iter().partition(|f| f.contains(['+', '#']));
        Wants {
            all: s.all,
            exact: exact.into_iter().collect(),
            wild,
        }
    }
}

impl Wants {
    fn wants(&self, topic: &str) -> bool {
        self.all
            || self.exact.contains(topic)
            || self
                .wild
                .iter()
                .any(|f| midge_protocol::topic::matches(f, topic))
    }
}

/// The other nodes' summaries: node -> (revision, summary).
#[derive(Debug, Default)]
pub struct Remote {
    nodes: RwLock<HashMap<String, (u64, Wants)>>,
}

impl Remote {
    fn apply(&self, node: &str, revision: u64, s: Option<Summary>) {
        let mut m = self.nodes.write();
        if m.get(node).is_some_and(|(r, _)| *r > revision) {
            return;
        }
        match s {
            Some(s) => m.insert(node.to_string(), (revision, Wants::from(s))),
            None => m.remove(node),
        };
    }
}

impl Cluster {
    /// Does any other node have a subscriber (or shared group) for `topic`?
    pub fn wanted_elsewhere(&self, topic: &str) -> bool {
        self.remote
            .nodes
            .read()
            .values()
            .any(|(_, s)| s.wants(topic))
    }

    /// This node's summary, from its interest subscriptions.
    fn summary(&self) -> Summary {
        let keys = self.interest_keys();
        let mut filters: Vec<String> = keys
            .into_iter()
            .map(|k| match k.strip_prefix('\0') {
                // "\0group\0filter"
                Some(rest) => rest
                    .split_once('\0')
                    .map_or(rest.to_string(), |(_, f)| f.to_string()),
                None => k,
            })
            .collect();
        filters.sort();
        filters.dedup();
        if filters.len() > MAX_FILTERS {
            Summary {
                all: true,
                filters: Vec::new(),
            }
        } else {
            Summary {
                all: false,
                filters,
            }
        }
    }

    /// Writes this node's summary (after interest changes), then hands it
    /// to every other node it knows of and waits until each has applied it
    /// (a node that does not answer within `request_timeout_ms` is logged
    /// and counted; a dead one has no responder and is skipped): a publish
    /// on any node after this returns is sent this node's way.
    pub async fn publish_interest(&self) -> Result<(), ClusterError> {
        let summary = self.summary();
        let v = Bytes::from(serde_json::to_vec(&summary).unwrap_or_default());
        let revision = bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "interest summary",
            self.interest_kv.put(self.node(), v),
        )
        .await?;
        self.confirm_interest(revision, summary).await;
        Ok(())
    }

    /// Hands summary `revision` to every other node (`<c>.isync.<node>`)
    /// and waits for their answers (bounded).
    async fn confirm_interest(&self, revision: u64, summary: Summary) {
        let peers: Vec<String> = self.remote.nodes.read().keys().cloned().collect();
        if peers.is_empty() {
            return;
        }
        let body = Bytes::from(
            serde_json::to_vec(&SyncNote {
                node: self.node().to_string(),
                revision,
                summary,
            })
            .unwrap_or_default(),
        );
        let t = self.config().request_timeout();
        let start = std::time::Instant::now();
        let asks = peers.iter().map(|p| {
            let subject = format!("{}.isync.{p}", self.config().name);
            let body = body.clone();
            async move {
                let r = tokio::time::timeout(t, self.client().request(subject, body)).await;
                (p, r)
            }
        });
        for (p, r) in futures_util::future::join_all(asks).await {
            match r {
                Ok(Ok(_)) => {}
                // Nobody listens there: a dead node, which forwards nothing.
                Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {}
                Ok(Err(e)) if e.kind() != RequestErrorKind::TimedOut => {
                    self.metrics.errors.fetch_add(1, Relaxed);
                    warn!(node = %p, error = %e, "cluster: a node was not told this node's new interest; a publish there may miss this node until its watch catches up");
                }
                _ => {
                    self.metrics.timeouts.fetch_add(1, Relaxed);
                    warn!(node = %p, ms = t.as_millis() as u64, "cluster: a node did not confirm this node's new interest in time; a publish there may miss this node until its watch catches up");
                }
            }
        }
        self.metrics.kv_rtt.observe(start.elapsed());
    }

    /// Drops the summary of a node that is gone.
    pub async fn forget_interest(&self, node: &str) -> Result<(), ClusterError> {
        self.remote.nodes.write().remove(node);
        bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "interest summary delete",
            self.interest_kv.purge(node),
        )
        .await
    }
}

/// A node's new summary, handed to the others directly (the bucket's
/// watch may lag; this one is confirmed before SUBACK).
#[derive(Debug, Serialize, Deserialize)]
struct SyncNote {
    node: String,
    revision: u64,
    summary: Summary,
}

/// Answers other nodes' [`SyncNote`]s on `<c>.isync.<this node>`: applied
/// (by revision, as the watch does), then confirmed.
pub(crate) async fn spawn_sync(c: &Arc<Cluster>) -> Result<(), ClusterError> {
    let subject = format!("{}.isync.{}", c.config().name, c.node());
    let mut sub = c
        .client()
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Nats {
            what: format!("subscription to {subject}"),
            message: e.to_string(),
        })?;
    let weak = Arc::downgrade(c);
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(c) = weak.upgrade() else { return };
            match serde_json::from_slice::<SyncNote>(&m.payload) {
                Ok(n) if n.node != c.node() => c.remote.apply(&n.node, n.revision, Some(n.summary)),
                Ok(_) => {}
                Err(e) => {
                    c.metrics.rejected.fetch_add(1, Relaxed);
                    warn!(%subject, error = %e, "cluster: interest note from a peer does not decode; ignored (its watch applies the summary)");
                }
            }
            if let Some(reply) = m.reply {
                if let Err(e) = c.client().publish(reply, Bytes::new()).await {
                    debug!(error = %e, "cluster: interest note not confirmed");
                }
            }
        }
    });
    Ok(())
}

/// Loads the other nodes' summaries, then follows their changes.
pub(crate) async fn spawn_watch(c: &Arc<Cluster>) -> Result<(), ClusterError> {
    let t = c.config().request_timeout();
    let m = &c.metrics;
    // Watch first, then read what is there: a change seen by both is
    // applied once by revision order.
    let mut w = bounded(m, &m.kv_rtt, t, "watch interest", c.interest_kv.watch_all()).await?;
    let keys = bounded(m, &m.kv_rtt, t, "interest keys", c.interest_kv.keys()).await?;
    let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
    for k in keys.into_iter().filter(|k| k != c.node()) {
        if let Some(e) = bounded(
            m,
            &m.kv_rtt,
            t,
            "interest read",
            c.interest_kv.entry(k.clone()),
        )
        .await?
        {
            let s = serde_json::from_slice::<Summary>(&e.value).ok();
            c.remote.apply(&k, e.revision, s);
        }
    }
    let weak = Arc::downgrade(c);
    let me = c.node().to_string();
    tokio::spawn(async move {
        while let Some(e) = w.next().await {
            let Some(c) = weak.upgrade() else { return };
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    debug!(error = %e, "cluster: interest watch error");
                    continue;
                }
            };
            if e.key == me {
                continue;
            }
            let s = if e.operation == async_nats::jetstream::kv::Operation::Put {
                match serde_json::from_slice::<Summary>(&e.value) {
                    Ok(s) => Some(s),
                    Err(err) => {
                        c.metrics.rejected.fetch_add(1, Relaxed);
                        warn!(node = %e.key, error = %err, "cluster: interest summary does not decode; treated as everything");
                        Some(Summary {
                            all: true,
                            filters: Vec::new(),
                        })
                    }
                }
            } else {
                None
            };
            c.remote.apply(&e.key, e.revision, s);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_match_topics_and_newer_revisions_win() {
        let r = Remote::default();
        let s = |f: &[&str]| Summary {
            all: false,
            filters: f.iter().map(|s| s.to_string()).collect(),
        };
        r.apply("b", 5, Some(s(&["a/#", "x/+/y"])));
        let wants = |t: &str| r.nodes.read().values().any(|(_, s)| s.wants(t));
        assert!(wants("a") && wants("a/b") && wants("x/1/y"));
        assert!(!wants("x/1/z") && !wants("b"));
        // An older revision (a snapshot read after a watch event) loses.
        r.apply("b", 4, Some(s(&[])));
        assert!(wants("a/b"));
        r.apply("b", 6, None);
        assert!(!wants("a/b"));
        r.apply(
            "c",
            1,
            Some(Summary {
                all: true,
                filters: vec![],
            }),
        );
        assert!(wants("anything/at/all"));
    }
}
