//! Wills of connections whose node died: while a client with a will is
//! connected, its node keeps the will in the `<c>-wills` bucket under
//! `<node>.<client id key>` and deletes it when the connection ends (the
//! node then handles the will itself). A node whose membership record aged
//! out cannot do that: every other node tries to take each of its will
//! records by deleting it with the revision it read (compare-and-set), and
//! only the node whose delete succeeded publishes the will: once,
//! cluster-wide.

use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use midge_protocol::ByteStr;
use tracing::{debug, info};

use crate::envelope::Envelope;
use crate::node::{bounded, Cluster, ClusterError};
use crate::subject::{kv_key, kv_key_decode};

/// A will taken from a dead node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadWill {
    pub client_id: String,
    pub node: String,
    pub will: Envelope,
    /// Will Delay Interval (seconds).
    pub delay: u32,
}

fn encode(env: &Envelope, delay: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(delay);
    b.put_u16(env.topic.len().min(usize::from(u16::MAX)) as u16);
    b.put_slice(env.topic.as_bytes());
    b.put_u8(u8::from(env.retain));
    b.put_slice(&crate::retained::encode(env));
    b.freeze()
}

fn decode(mut v: Bytes) -> Option<(Envelope, u32)> {
    if v.len() < 7 {
        return None;
    }
    let delay = v.get_u32();
    let n = usize::from(v.get_u16());
    if v.len() < n + 1 {
        return None;
    }
    let topic = ByteStr::from_bytes(v.split_to(n))?;
    let retain = v.get_u8() == 1;
    let mut env = crate::retained::decode(topic, v)?;
    env.retain = retain;
    Some((env, delay))
}

impl Cluster {
    fn will_key(&self, node: &str, client_id: &str) -> String {
        format!("{node}.{}", kv_key(client_id))
    }

    /// Records the will of a connection on this node.
    pub async fn put_will(
        &self,
        client_id: &str,
        will: &Envelope,
        delay: u32,
    ) -> Result<(), ClusterError> {
        let key = self.will_key(self.node(), client_id);
        bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "will put",
            self.wills.put(key, encode(will, delay)),
        )
        .await
        .map(|_| ())
    }

    /// Forgets the will of a connection on this node (it ended here).
    pub async fn delete_will(&self, client_id: &str) -> Result<(), ClusterError> {
        let key = self.will_key(self.node(), client_id);
        bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "will delete",
            self.wills.purge(key),
        )
        .await
    }

    /// Takes every will record of nodes for which `dead(node)` holds; each
    /// returned will was won by this node's compare-and-set delete and must
    /// be published here.
    pub async fn take_wills(
        &self,
        dead: impl Fn(&str) -> bool,
    ) -> Result<Vec<DeadWill>, ClusterError> {
        let t = self.config().request_timeout();
        let m = &self.metrics;
        let keys = bounded(m, &m.kv_rtt, t, "will keys", self.wills.keys()).await?;
        let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
        let mut out = Vec::new();
        for key in keys {
            let Some((node, ck)) = key.split_once('.') else {
                continue;
            };
            if !dead(node) {
                continue;
            }
            let Some(client_id) = kv_key_decode(ck) else {
                continue;
            };
            let e = bounded(m, &m.kv_rtt, t, "will read", self.wills.entry(key.clone())).await?;
            let Some(e) = e.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
            else {
                continue;
            };
            let won = tokio::time::timeout(
                t,
                self.wills
                    .purge_expect_revision(key.clone(), Some(e.revision)),
            )
            .await;
            match won {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    debug!(%key, error = %err, "cluster: will taken by another node");
                    continue;
                }
                Err(_) => {
                    m.timeouts.fetch_add(1, Relaxed);
                    continue;
                }
            }
            let Some((will, delay)) = decode(e.value) else {
                continue;
            };
            m.dead_wills.fetch_add(1, Relaxed);
            info!(%client_id, %node, topic = %will.topic, "cluster: will of a dead node's client taken here");
            out.push(DeadWill {
                client_id,
                node: node.to_string(),
                will,
                delay,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_protocol::{Properties, QoS};

    #[test]
    fn will_value_round_trips() {
        let env = Envelope {
            topic: "w/x y".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
            origin: "n1".into(),
            client_id: None,
            timestamp_ms: Some(5),
        };
        assert_eq!(decode(encode(&env, 7)), Some((env, 7)));
        assert_eq!(decode(Bytes::from_static(b"\0\0")), None);
    }
}
