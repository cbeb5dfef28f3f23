//! Membership: every node keeps a record in the `<c>-nodes` bucket, refreshed
//! every `heartbeat_ms`. The bucket's max age is `node_timeout_ms`, so the
//! record of a node that stopped refreshing it disappears (JetStream places
//! a delete marker that watchers see): that node is dead.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::metrics::Traffic;
use crate::node::{bounded, now_ms, Cluster, ClusterError};

/// A node's membership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// When the node joined (ms since the epoch).
    pub started_ms: i64,
    /// Its last heartbeat (ms since the epoch).
    pub heartbeat_ms: i64,
    /// Its cross-node traffic at that heartbeat (absent from the records
    /// of nodes that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
}

/// One node as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub node: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    /// `alive` while its record is fresh, `dead` once it is older than the timeout.
    pub state: &'static str,
    /// Is it this node?
    pub this: bool,
    /// Milliseconds since its last heartbeat, by this node's clock.
    pub heartbeat_age_ms: i64,
    /// Its cross-node traffic at its last heartbeat (this node's: now);
    /// `null` for a node that does not report it.
    pub traffic: Option<Traffic>,
}

impl Cluster {
    /// Writes this node's record now.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let rec = NodeRecord {
            node: self.node().to_string(),
            started_ms: self.started_ms,
            heartbeat_ms: now_ms(),
            traffic: Some(self.metrics.traffic()),
        };
        let value = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
        bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "membership heartbeat",
            self.nodes.put(self.node(), value),
        )
        .await
        .map(|_| ())
    }

    /// Every node with a record, sorted by name.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClusterError> {
        let timeout = self.config().request_timeout();
        let keys = bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            timeout,
            "list nodes",
            self.nodes.keys(),
        )
        .await?;
        let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
        let dead_after = self.config().node_timeout_ms as i64;
        let now = now_ms();
        let mut out = Vec::new();
        for k in keys {
            let v = bounded(
                &self.metrics,
                &self.metrics.kv_rtt,
                timeout,
                "read node",
                self.nodes.get(k.as_str()),
            )
            .await?;
            let Some(v) = v else { continue };
            let Ok(r) = serde_json::from_slice::<NodeRecord>(&v) else {
                warn!(key = %k, "cluster: membership record does not decode; skipped");
                continue;
            };
            let this = r.node == self.node();
            out.push(NodeView {
                state: if now - r.heartbeat_ms > dead_after {
                    "dead"
                } else {
                    "alive"
                },
                this,
                heartbeat_age_ms: (now - r.heartbeat_ms).max(0),
                traffic: if this {
                    Some(self.metrics.traffic())
                } else {
                    r.traffic
                },
                node: r.node,
                started_ms: r.started_ms,
                heartbeat_ms: r.heartbeat_ms,
            });
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    /// Watches the membership bucket: `on_gone(node)` runs when another
    /// node's record disappears (it stopped heartbeating or left).
    pub async fn watch_nodes(
        self: &Arc<Self>,
        on_gone: impl Fn(String) + Send + Sync + 'static,
    ) -> Result<(), ClusterError> {
        let mut w = bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "watch nodes",
            self.nodes.watch_all(),
        )
        .await?;
        let me = self.node().to_string();
        tokio::spawn(async move {
            while let Some(e) = w.next().await {
                match e {
                    Ok(e) if e.operation != async_nats::jetstream::kv::Operation::Put => {
                        if e.key != me {
                            on_gone(e.key);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "cluster: membership watch error"),
                }
            }
        });
        Ok(())
    }

    /// Removes this node's record (clean leave).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "leave",
            self.nodes.delete(self.node()),
        )
        .await
    }
}

/// Refreshes this node's record every `heartbeat_ms` while the cluster lives.
pub(crate) fn spawn_heartbeat(c: &Arc<Cluster>) {
    let weak: Weak<Cluster> = Arc::downgrade(c);
    let every = Duration::from_millis(c.config().heartbeat_ms);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(c) = weak.upgrade() else { return };
            if let Err(e) = c.heartbeat().await {
                debug!(error = %e, "cluster: heartbeat failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_traffic_still_decode_and_traffic_round_trips() {
        let old = br#"{"node":"n1","started_ms":1,"heartbeat_ms":2}"#;
        let r: NodeRecord = serde_json::from_slice(old).unwrap();
        assert_eq!(r.traffic, None);
        let t = Traffic {
            forwarded: 3,
            received_bytes: 9,
            ..Traffic::default()
        };
        let new = NodeRecord {
            traffic: Some(t),
            ..r
        };
        let back: NodeRecord = serde_json::from_slice(&serde_json::to_vec(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }
}
