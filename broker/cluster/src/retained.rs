//! Cluster-wide retained messages: the `<c>-retained` bucket, key = the topic
//! ([`crate::subject::kv_key`]), value = the message ([`encode`]); a clear is
//! a delete. Every node watches the bucket into its local retained index,
//! so a subscriber anywhere sees a retained message set anywhere.
//!
//! Value layout: version (1), QoS (1), receive time ms (8, big-endian),
//! origin node (length u8 + bytes), the v5 properties in MQTT's encoding
//! (varint length first), then the payload.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use midge_protocol::{ByteStr, Properties, QoS};
use tracing::{debug, warn};

use crate::envelope::Envelope;
use crate::node::{bounded, Cluster, ClusterError, Local};
use crate::subject::{kv_key, kv_key_decode};

const VERSION: u8 = 1;

/// The bucket value of a retained message.
pub fn encode(env: &Envelope) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + env.origin.len() + env.payload.len());
    b.put_u8(VERSION);
    b.put_u8(env.qos as u8);
    b.put_i64(env.timestamp_ms.unwrap_or(0));
    let origin = &env.origin.as_bytes()[..env.origin.len().min(255)];
    b.put_u8(origin.len() as u8);
    b.put_slice(origin);
    env.properties.encode_message(&mut b);
    b.put_slice(&env.payload);
    b.freeze()
}

/// Reads a bucket value back; `None` when it does not decode.
pub fn decode(topic: ByteStr, mut v: Bytes) -> Option<Envelope> {
    if v.len() < 11 || v[0] != VERSION {
        return None;
    }
    let qos = QoS::from_u8(v[1])?;
    let ts = i64::from_be_bytes(v[2..10].try_into().ok()?);
    let olen = usize::from(v[10]);
    let origin = std::str::from_utf8(v.get(11..11 + olen)?).ok()?.to_string();
    let rest = v.split_off(11 + olen);
    let (properties, payload) = Properties::decode_message(rest).ok()?;
    Some(Envelope {
        topic,
        payload,
        qos,
        retain: true,
        properties,
        origin,
        client_id: None,
        timestamp_ms: (ts != 0).then_some(ts),
    })
}

impl Cluster {
    /// Sets (`Some`) or clears the retained message of `topic` cluster-wide.
    pub async fn put_retained(
        &self,
        topic: &str,
        env: Option<&Envelope>,
    ) -> Result<(), ClusterError> {
        self.metrics.retained_out.fetch_add(1, Relaxed);
        let key = kv_key(topic);
        let t = self.config().request_timeout();
        match env {
            Some(e) => bounded(
                &self.metrics,
                &self.metrics.kv_rtt,
                t,
                "retained put",
                self.retained.put(key, encode(e)),
            )
            .await
            .map(|_| ()),
            None => {
                bounded(
                    &self.metrics,
                    &self.metrics.kv_rtt,
                    t,
                    "retained delete",
                    self.retained.delete(key),
                )
                .await
            }
        }
    }
}

/// Loads every retained message into the node, then follows changes made
/// by other nodes (this node's own are already applied locally).
pub(crate) async fn spawn_watch(
    c: &Arc<Cluster>,
    local: Arc<dyn Local>,
) -> Result<(), ClusterError> {
    let mut w = bounded(
        &c.metrics,
        &c.metrics.kv_rtt,
        c.config().request_timeout(),
        "watch retained",
        c.retained.watch_with_history(">"),
    )
    .await?;
    let metrics = c.metrics.clone();
    let me = c.node().to_string();
    tokio::spawn(async move {
        while let Some(e) = w.next().await {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    debug!(error = %e, "cluster: retained watch error");
                    continue;
                }
            };
            let Some(topic) = kv_key_decode(&e.key) else {
                warn!(key = %e.key, "cluster: retained key does not decode; skipped");
                continue;
            };
            use async_nats::jetstream::kv::Operation;
            if e.operation != Operation::Put {
                metrics.retained_in.fetch_add(1, Relaxed);
                local.retained(topic, None);
                continue;
            }
            let Some(bt) = ByteStr::from_bytes(Bytes::from(topic.clone())) else {
                continue;
            };
            match decode(bt, e.value) {
                Some(env) if env.origin == me && e.seen_current => {}
                Some(env) => {
                    metrics.retained_in.fetch_add(1, Relaxed);
                    local.retained(topic, Some(env));
                }
                None => warn!(%topic, "cluster: retained value does not decode; skipped"),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_protocol::PropertyValues;

    #[test]
    fn value_round_trips() {
        let env = Envelope {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"xyz"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::from(PropertyValues {
                content_type: Some("t".into()),
                user_properties: vec![("a".into(), "1".into())],
                ..Default::default()
            }),
            origin: "n2".into(),
            client_id: None,
            timestamp_ms: Some(42),
        };
        assert_eq!(decode(env.topic.clone(), encode(&env)), Some(env));
        assert_eq!(decode("t".into(), Bytes::from_static(b"\x02")), None);
    }
}
