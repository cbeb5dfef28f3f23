//! Session ownership: the `<c>-sessions` bucket maps a client id to the node
//! that owns its session and an epoch. A node takes a session with
//! create-if-absent or update-expecting-revision (compare-and-set), so of two
//! nodes racing for one client id exactly one wins; each win raises the
//! epoch, and a node whose epoch is no longer the record's knows it lost the
//! session (fencing).

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::node::{bounded, now_ms, Cluster, ClusterError};
use crate::subject::kv_key;

/// The owner record of one client id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub node: String,
    pub epoch: u64,
    /// When it was taken (ms since the epoch).
    pub since_ms: i64,
}

/// A won claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub epoch: u64,
    /// The record's revision after the claim (for fenced updates and release).
    pub revision: u64,
    /// Who owned it before, if anyone.
    pub previous: Option<Owner>,
}

/// How many compare-and-set rounds a claim tries before giving up: each
/// lost round means another node wrote in between.
const CLAIM_ROUNDS: usize = 16;

impl Cluster {
    /// The current owner of `client_id` and the record's revision.
    pub async fn owner(&self, client_id: &str) -> Result<Option<(Owner, u64)>, ClusterError> {
        let e = bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "session owner",
            self.owners.entry(kv_key(client_id)),
        )
        .await?;
        use async_nats::jetstream::kv::Operation;
        Ok(e.filter(|e| e.operation == Operation::Put).and_then(|e| {
            serde_json::from_slice::<Owner>(&e.value)
                .ok()
                .map(|o| (o, e.revision))
        }))
    }

    /// Makes this node the owner of `client_id` (compare-and-set on the
    /// record). Fails when NATS does not answer (the caller must then
    /// refuse a session it cannot fence) or after too many lost races.
    pub async fn claim(&self, client_id: &str) -> Result<Claim, ClusterError> {
        let key = kv_key(client_id);
        let t = self.config().request_timeout();
        let r = async {
            for _ in 0..CLAIM_ROUNDS {
                let current = bounded(
                    &self.metrics,
                    &self.metrics.kv_rtt,
                    t,
                    "session owner",
                    self.owners.entry(key.clone()),
                )
                .await?;
                use async_nats::jetstream::kv::Operation;
                let (previous, expect) = match &current {
                    Some(e) if e.operation == Operation::Put => {
                        (serde_json::from_slice::<Owner>(&e.value).ok(), e.revision)
                    }
                    Some(e) => (None, e.revision),
                    None => (None, 0),
                };
                let epoch = previous.as_ref().map_or(0, |o| o.epoch) + 1;
                let rec = Owner {
                    node: self.node().to_string(),
                    epoch,
                    since_ms: now_ms(),
                };
                let value = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
                let start = std::time::Instant::now();
                match tokio::time::timeout(t, self.owners.update(key.clone(), value, expect)).await
                {
                    Ok(Ok(revision)) => {
                        self.metrics.kv_rtt.observe(start.elapsed());
                        self.metrics.claims.fetch_add(1, Relaxed);
                        return Ok(Claim {
                            epoch,
                            revision,
                            previous,
                        });
                    }
                    Ok(Err(e))
                        if e.kind()
                            == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
                            || e.to_string().contains("wrong last sequence") =>
                    {
                        self.metrics.claim_conflicts.fetch_add(1, Relaxed);
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.metrics.errors.fetch_add(1, Relaxed);
                        return Err(ClusterError::Nats {
                            what: format!("claim of client {client_id:?}"),
                            message: e.to_string(),
                        });
                    }
                    Err(_) => {
                        self.metrics.timeouts.fetch_add(1, Relaxed);
                        return Err(ClusterError::Timeout {
                            what: format!("claim of client {client_id:?}"),
                            ms: t.as_millis() as u64,
                        });
                    }
                }
            }
            Err(ClusterError::Nats {
                what: format!("claim of client {client_id:?}"),
                message: format!("lost {CLAIM_ROUNDS} compare-and-set rounds in a row"),
            })
        }
        .await;
        if r.is_err() {
            self.metrics.claim_refused.fetch_add(1, Relaxed);
        }
        r
    }

    /// Every change of an owner record from now on (fencing).
    pub async fn watch_owners(&self) -> Result<async_nats::jetstream::kv::Watch, ClusterError> {
        bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "watch session owners",
            self.owners.watch_all(),
        )
        .await
    }

    /// Is `claim` still the record's (nobody took the session since)?
    pub async fn still_owner(&self, client_id: &str, claim: &Claim) -> Result<bool, ClusterError> {
        Ok(self.owner(client_id).await?.is_some_and(|(o, rev)| {
            rev == claim.revision && o.node == self.node() && o.epoch == claim.epoch
        }))
    }

    /// Gives the session up (session ended) if this node still holds
    /// `claim`; a newer owner's record is left alone. Returns whether it
    /// was released.
    pub async fn release(&self, client_id: &str, claim: &Claim) -> Result<bool, ClusterError> {
        let r = bounded(
            &self.metrics,
            &self.metrics.kv_rtt,
            self.config().request_timeout(),
            "session release",
            self.owners
                .delete_expect_revision(kv_key(client_id), Some(claim.revision)),
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
}
