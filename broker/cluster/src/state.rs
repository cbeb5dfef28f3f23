//! Session state that outlives its node: the `<c>-state` bucket holds, per
//! persistent session, what another node needs to resume it when the node
//! that held it is gone (`kill -9`): its subscriptions, expiry, incoming
//! QoS 2 packet ids, and a checkpoint into the message stream (`floor`).
//!
//! The messages themselves are not copied: every QoS 1/2 message a
//! persistent session can be due is in the stream `<C>_MSGS` before its
//! publisher is acknowledged (a node holding persistent sessions stores all
//! its QoS 1/2 publishes). `floor` is a stream sequence such that every
//! stored message the session was due up to it was acknowledged by the
//! client: a new owner replays the stream from `floor + 1`, filtered by the
//! session's filters ([`Cluster::replay_for`]). A message acknowledged after
//! the last write of the record comes again (QoS 1 allows the copy).
//!
//! Every write is a compare-and-set on the record's revision and carries the
//! writer's claim epoch (from `<c>-sessions`): a node whose write is refused
//! reads the record, and if a newer epoch wrote it the session is no longer
//! its own (fencing).

use std::sync::atomic::Ordering::Relaxed;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::node::{bounded, now_ms, Cluster, ClusterError};
use crate::subject::kv_key;

/// A persistent session's record in `<c>-state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The node that wrote it, and its claim's epoch.
    pub node: String,
    pub epoch: u64,
    /// Session Expiry Interval (seconds).
    pub expiry: u32,
    /// When its connection ended (ms since the Unix epoch); absent while
    /// connected. A node resuming the session after this plus `expiry`
    /// finds it expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since_ms: Option<i64>,
    /// Every stored message the session was due up to this stream
    /// sequence was acknowledged by its client.
    pub floor: u64,
    /// Subscriptions: the full filter (with `$share/g/` when shared) and
    /// the broker's encoding of its options, base64.
    #[serde(default)]
    pub subs: Vec<(String, String)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qos2_in: Vec<u16>,
    /// Outgoing QoS 2 deliveries whose PUBREC came (PUBREL due): stream
    /// sequence and packet id. Written before the PUBREL goes out, so a
    /// node resuming the session sends PUBREL for them, never the PUBLISH
    /// again (which a client that completed it would take as new).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<(u64, u16)>,
    /// Stream sequences above `floor` the client acknowledged (PUBACK,
    /// PUBCOMP), as inclusive ranges: `floor` trails them (it stays below
    /// any message that may still arrive), and a resume must not send
    /// these again (for QoS 2 that would be a second delivery).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<(u64, u64)>,
    /// When it was written (ms since the Unix epoch).
    #[serde(default)]
    pub written_ms: i64,
}

impl SessionRecord {
    /// Equal apart from when it was written.
    pub fn same(&self, other: &SessionRecord) -> bool {
        self.node == other.node
            && self.epoch == other.epoch
            && self.expiry == other.expiry
            && self.offline_since_ms == other.offline_since_ms
            && self.floor == other.floor
            && self.subs == other.subs
            && self.qos2_in == other.qos2_in
            && self.released == other.released
            && self.done == other.done
    }

    /// When the session expires (ms since the Unix epoch), its node being
    /// dead: `expiry` seconds after its connection ended, or, recorded as
    /// connected, after `noticed_ms` (when the node's death was noticed);
    /// `None` for a session that never expires.
    pub fn expires_at(&self, noticed_ms: i64) -> Option<i64> {
        let since = self.offline_since_ms.unwrap_or(noticed_ms);
        (self.expiry != u32::MAX).then(|| since.saturating_add(i64::from(self.expiry) * 1000))
    }

    /// Whether the client acknowledged stream sequence `seq` (above the floor).
    pub fn is_done(&self, seq: u64) -> bool {
        let i = self.done.partition_point(|r| r.1 < seq);
        self.done.get(i).is_some_and(|r| r.0 <= seq)
    }
}

/// How a compare-and-set write of a record ended.
#[derive(Debug)]
pub enum Written {
    /// Stored; the new revision.
    Ok(u64),
    /// Another write came first: the record now (`None`: deleted) and the
    /// revision the next write must expect.
    Conflict(Option<SessionRecord>, u64),
}

/// A persistent session this node holds: its claim's epoch, the revision
/// its next write expects, what it wrote last.
#[derive(Debug, Clone)]
pub struct Held {
    pub epoch: u64,
    pub revision: u64,
    pub last: Option<SessionRecord>,
    /// Stream sequences the client acknowledged that the floor may not
    /// cover yet (pruned below the floor at each write).
    pub done: std::collections::BTreeSet<u64>,
}

/// Most ranges of acknowledged sequences a record keeps (the oldest go
/// first; a resume may then send those messages again).
pub const MAX_DONE_RANGES: usize = 1024;

/// Most messages one resume reads from the stream.
pub const MAX_REPLAY: usize = 100_000;

impl Cluster {
    /// The record of `client_id` (`None`: absent or deleted) and the
    /// revision a write must expect (0: never written).
    pub async fn read_state(
        &self,
        client_id: &str,
    ) -> Result<(Option<SessionRecord>, u64), ClusterError> {
        let e = bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "session state",
            self.state.entry(kv_key(client_id)),
        )
        .await?;
        Ok(match e {
            Some(e) if e.operation == kv::Operation::Put => {
                match serde_json::from_slice::<SessionRecord>(&e.value) {
                    Ok(r) => (Some(r), e.revision),
                    Err(err) => {
                        self.metrics.rejected.fetch_add(1, Relaxed);
                        tracing::warn!(%client_id, error = %err, "cluster: session state record does not decode; treated as absent");
                        (None, e.revision)
                    }
                }
            }
            Some(e) => (None, e.revision),
            None => (None, 0),
        })
    }

    /// Writes `rec` if the record is still at `revision`.
    pub async fn write_state(
        &self,
        client_id: &str,
        rec: &SessionRecord,
        revision: u64,
    ) -> Result<Written, ClusterError> {
        let value = Bytes::from(serde_json::to_vec(rec).unwrap_or_default());
        let t = self.config().request_timeout();
        let start = std::time::Instant::now();
        match tokio::time::timeout(t, self.state.update(kv_key(client_id), value, revision)).await {
            Ok(Ok(rev)) => {
                self.metrics.kv_rtt.observe(start.elapsed());
                Ok(Written::Ok(rev))
            }
            Ok(Err(e))
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision
                    || e.to_string().contains("wrong last sequence") =>
            {
                self.metrics.claim_conflicts.fetch_add(1, Relaxed);
                let (now, rev) = self.read_state(client_id).await?;
                Ok(Written::Conflict(now, rev))
            }
            Ok(Err(e)) => {
                self.metrics.errors.fetch_add(1, Relaxed);
                Err(ClusterError::Nats {
                    what: format!("session state of client {client_id:?}"),
                    message: e.to_string(),
                })
            }
            Err(_) => {
                self.metrics.timeouts.fetch_add(1, Relaxed);
                Err(ClusterError::Timeout {
                    what: format!("session state of client {client_id:?}"),
                    ms: t.as_millis() as u64,
                })
            }
        }
    }

    /// Deletes the record (the session ended) if it is still at `revision`;
    /// `Ok(false)`: another write came first (a newer owner's record stays).
    pub async fn delete_state(&self, client_id: &str, revision: u64) -> Result<bool, ClusterError> {
        let r = bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "session state delete",
            self.state
                .purge_expect_revision(kv_key(client_id), Some(revision)),
        )
        .await;
        match r {
            Ok(()) => Ok(true),
            Err(ClusterError::Nats { message, .. }) if message.contains("wrong last sequence") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether any session record exists (a dead node's interest summary is
    /// kept while one may still be resumed).
    pub async fn any_state(&self) -> Result<bool, ClusterError> {
        let t = self.config().request_timeout();
        let m = &self.metrics;
        let mut keys = bounded(m, &m.kv_rtt, t, "state keys", self.state.keys()).await?;
        Ok(matches!(
            tokio::time::timeout(t, keys.next()).await,
            Ok(Some(Ok(_)))
        ))
    }

    /// Every session record now: client id, record and the revision a
    /// write must expect. A key that is not a client id's, or a value that
    /// is not a record, is left out (logged and counted as rejected).
    pub async fn state_records(&self) -> Result<Vec<(String, SessionRecord, u64)>, ClusterError> {
        let t = self.config().request_timeout();
        let m = &self.metrics;
        let keys = bounded(m, &m.kv_rtt, t, "state keys", self.state.keys()).await?;
        let keys: Vec<String> = match tokio::time::timeout(
            t * 4,
            keys.filter_map(|k| async { k.ok() })
                .collect::<Vec<String>>(),
        )
        .await
        {
            Ok(k) => k,
            Err(_) => {
                m.timeouts.fetch_add(1, Relaxed);
                return Err(ClusterError::Timeout {
                    what: "state keys".into(),
                    ms: (t * 4).as_millis() as u64,
                });
            }
        };
        let mut ids = Vec::with_capacity(keys.len());
        for k in keys {
            match crate::subject::kv_key_decode(&k) {
                Some(id) => ids.push(id),
                None => {
                    m.rejected.fetch_add(1, Relaxed);
                    tracing::warn!(key = %k, "cluster: session state key is not a client id's; skipped");
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(64) {
            let reads = chunk
                .iter()
                .map(|id| async move { (id, self.read_state(id).await) });
            for (id, r) in futures_util::future::join_all(reads).await {
                if let (Some(rec), revision) = r? {
                    out.push((id.clone(), rec, revision));
                }
            }
        }
        Ok(out)
    }

    /// This node now holds `client_id`'s persistent session under claim
    /// `epoch`; its record is at `revision`.
    pub fn hold(&self, client_id: &str, epoch: u64, revision: u64) {
        self.persistent.store(true, Relaxed);
        self.held.lock().insert(
            client_id.to_string(),
            Held {
                epoch,
                revision,
                last: None,
                done: Default::default(),
            },
        );
    }

    /// Whether this node holds `client_id`'s persistent session.
    pub fn is_held(&self, client_id: &str) -> bool {
        self.persistent.load(Relaxed) && self.held.lock().contains_key(client_id)
    }

    /// What this node holds of `client_id`'s session, if anything.
    pub fn held(&self, client_id: &str) -> Option<Held> {
        self.held.lock().get(client_id).cloned()
    }

    /// `rec` was written at `revision` (kept only if the claim is the same).
    pub fn wrote(&self, client_id: &str, rec: SessionRecord, revision: u64) {
        if let Some(h) = self.held.lock().get_mut(client_id) {
            if h.epoch == rec.epoch {
                h.revision = revision;
                h.last = Some(rec);
            }
        }
    }

    /// Whether the last record written of `client_id` lists every one of
    /// `released` (sorted) as released.
    pub fn written_released(&self, client_id: &str, released: &[(u64, u16)]) -> bool {
        self.held.lock().get(client_id).is_some_and(|h| {
            h.last
                .as_ref()
                .is_some_and(|l| released.iter().all(|r| l.released.binary_search(r).is_ok()))
        })
    }

    /// The client of a held session acknowledged the message at stream
    /// sequence `seq`.
    pub fn acknowledged(&self, client_id: &str, seq: u64) {
        if let Some(h) = self.held.lock().get_mut(client_id) {
            h.done.insert(seq);
        }
    }

    /// The acknowledged sequences above `floor`, as ranges (forgetting
    /// those at or below it).
    pub fn done_above(&self, client_id: &str, floor: u64) -> Vec<(u64, u64)> {
        let mut held = self.held.lock();
        let Some(h) = held.get_mut(client_id) else {
            return Vec::new();
        };
        h.done = h.done.split_off(&(floor + 1));
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &s in &h.done {
            match out.last_mut() {
                Some(r) if r.1 + 1 == s => r.1 = s,
                _ => out.push((s, s)),
            }
        }
        if out.len() > MAX_DONE_RANGES {
            out.drain(..out.len() - MAX_DONE_RANGES);
        }
        out
    }

    /// This node no longer writes `client_id`'s record (handed over, taken
    /// by a newer claim, ended).
    pub fn let_go(&self, client_id: &str) {
        self.held.lock().remove(client_id);
    }

    /// Whether a persistent session was ever claimed here (then every QoS
    /// 1/2 publish of this node goes to the stream).
    pub fn holds_persistent(&self) -> bool {
        self.persistent.load(Relaxed)
    }

    /// Persistent sessions held here now.
    pub fn held_count(&self) -> usize {
        self.held.lock().len()
    }

    /// A record written by this node under claim `epoch`.
    pub fn new_state(&self, epoch: u64) -> SessionRecord {
        SessionRecord {
            node: self.node().to_string(),
            epoch,
            written_ms: now_ms(),
            ..Default::default()
        }
    }

    /// The stored messages after sequence `floor` on `filters` (plain MQTT
    /// filters), oldest first, with their sequences: read with one
    /// short-lived ordered consumer up to the stream's end as it is when the
    /// read starts (at most [`MAX_REPLAY`]).
    pub async fn replay_for(
        &self,
        filters: &[String],
        floor: u64,
    ) -> Result<Vec<(u64, Envelope)>, ClusterError> {
        let t = self.config().request_timeout();
        let m = &self.metrics;
        let mut stream = bounded(
            m,
            &m.kv_rtt,
            t,
            "stream info",
            self.jetstream().get_stream(self.stream_name()),
        )
        .await?;
        let info = bounded(m, &m.kv_rtt, t, "stream info", stream.info()).await?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if filters.is_empty() || last <= floor {
            return Ok(Vec::new());
        }
        if floor + 1 < first {
            tracing::warn!(
                floor,
                first,
                "cluster: a resumed session's checkpoint is older than the stream keeps (stream_max_age_s / stream_max_bytes); messages before sequence {first} are gone"
            );
        }
        let filter_subjects: Vec<String> = filters
            .iter()
            .flat_map(|f| crate::subject::filter_subjects(self.stored_prefix(), f))
            .collect();
        let consumer = bounded(
            m,
            &m.kv_rtt,
            t,
            "resume consumer",
            stream.create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subjects,
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                },
                ..Default::default()
            }),
        )
        .await?;
        // Nothing stored on these filters since the checkpoint: no wait.
        if consumer.cached_info().num_pending == 0 {
            return Ok(Vec::new());
        }
        let mut msgs = bounded(m, &m.kv_rtt, t, "resume messages", consumer.messages()).await?;
        let mut out = Vec::new();
        while out.len() < MAX_REPLAY {
            let next = match tokio::time::timeout(t, msgs.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => {
                    m.errors.fetch_add(1, Relaxed);
                    return Err(ClusterError::Nats {
                        what: "resume replay".into(),
                        message: e.to_string(),
                    });
                }
                // Nothing more within the timeout: what matched was read.
                Ok(None) | Err(_) => break,
            };
            let Ok(info) = next.info() else { continue };
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > last {
                break;
            }
            // (Stored messages are never batches: one envelope each.)
            if let Some(d) = crate::node::decode_inbound(&next.message, 2, m) {
                out.extend(d.into_iter().map(|env| (seq, env)));
            }
            if pending == 0 || seq == last {
                break;
            }
        }
        m.replayed.fetch_add(out.len() as u64, Relaxed);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_compares_without_its_time() {
        let rec = SessionRecord {
            node: "n1".into(),
            epoch: 3,
            expiry: 60,
            offline_since_ms: None,
            floor: 100,
            subs: vec![("a/#".into(), "AQI=".into())],
            qos2_in: vec![],
            released: vec![],
            done: vec![(103, 105), (110, 110)],
            written_ms: 1,
        };
        let json = serde_json::to_string(&rec).unwrap_or_default();
        assert!(
            !json.contains("qos2_in"),
            "empty lists are left out: {json}"
        );
        let back: SessionRecord = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, rec);
        let later = SessionRecord {
            written_ms: 2,
            ..rec.clone()
        };
        assert!(later.same(&rec));
        let moved = SessionRecord {
            floor: 101,
            ..rec.clone()
        };
        assert!(!moved.same(&rec));
        assert!(rec.is_done(103) && rec.is_done(105) && rec.is_done(110));
        // Connected (no offline time): `expiry` s after the death was
        // noticed; offline: `expiry` s after it went offline; never: none.
        let on = SessionRecord {
            expiry: 30,
            ..rec.clone()
        };
        assert_eq!(on.expires_at(5_000), Some(35_000));
        let off = SessionRecord {
            offline_since_ms: Some(1_000),
            ..on.clone()
        };
        assert_eq!(off.expires_at(5_000), Some(31_000));
        let never = SessionRecord {
            expiry: u32::MAX,
            ..off.clone()
        };
        assert_eq!(never.expires_at(5_000), None);
        assert!(!rec.is_done(102) && !rec.is_done(106) && !rec.is_done(111));
        let released = SessionRecord {
            released: vec![(120, 7)],
            ..rec.clone()
        };
        assert!(!released.same(&rec));
        let json = serde_json::to_string(&released).unwrap_or_default();
        assert_eq!(
            serde_json::from_str::<SessionRecord>(&json).ok(),
            Some(released)
        );
    }
}
