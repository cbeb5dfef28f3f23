//! Sessions of dead nodes expire on schedule, cluster-wide. A node that
//! dies (`kill -9`, or it lost NATS for longer than `node_timeout_ms`) can
//! no longer run the expiry timers of the persistent sessions it held, so
//! the other nodes run them from the sessions' records in `<c>-state`:
//!
//! - [`sweep`] (after a node's membership record goes, and at start) reads
//!   every record. An orphan is a record whose node is not alive, or is
//!   this node without holding it (a previous run's). Its due time: `expiry`
//!   seconds after its connection ended (as the record says), or, recorded
//!   as connected, after now (when this node noticed the death; the nodes
//!   notice it within moments of each other). Nothing is written: a node
//!   that was only cut off and comes back finds its records as it left
//!   them. Each orphan goes into this node's [`Expiry`] schedule.
//! - The schedule's task, at each due time, reads the record again; if it
//!   is still the same claim's (epoch), still an orphan (no node resumed
//!   the session, its node did not come back) and due, it deletes it with
//!   the revision it read (compare-and-set: of the nodes that try, one
//!   wins). The winner counts it
//!   (`midge_cluster_dead_node_sessions_expired_total`), logs it and emits
//!   SESSION_EXPIRED: once, cluster-wide. The owner record in
//!   `<c>-sessions` stays: its epoch keeps the next claim's above the dead
//!   node's, so a node that was only cut off and comes back is still
//!   fenced.
//!
//! A client that comes back before the due time resumes its session from
//! the record (`sessions::after_claim`); after it, it starts a new one.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use midge_cluster::state::SessionRecord;
use midge_cluster::{Cluster, ClusterError};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::events::Event;
use crate::message::now_ms;

/// How long the schedule waits before trying again when NATS failed.
const RETRY_MS: i64 = 2_000;

/// One scheduled expiry: due time (ms since the Unix epoch), client id,
/// and the epoch of the claim whose record it is.
type Due = (i64, String, u64);

/// This node's schedule of orphan records' due times; one task works it.
#[derive(Debug, Clone)]
pub struct Expiry {
    tx: mpsc::UnboundedSender<Due>,
}

impl Expiry {
    /// Starts the schedule's task (it ends with the broker).
    pub fn start(broker: Weak<Broker>, cluster: Arc<Cluster>) -> Expiry {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(broker, cluster, rx));
        Expiry { tx }
    }
}

/// The nodes alive now (membership records fresh).
async fn alive(c: &Cluster) -> Result<HashSet<String>, ClusterError> {
    Ok(c.nodes()
        .await?
        .into_iter()
        .filter(|n| n.state == "alive")
        .map(|n| n.node)
        .collect())
}

/// Whether `rec` (the record of `client_id`) belongs to no live holder:
/// its node is not alive, or it is this node's and this node does not
/// hold the session.
fn orphan(c: &Cluster, alive: &HashSet<String>, client_id: &str, rec: &SessionRecord) -> bool {
    if rec.node == c.node() {
        !c.is_held(client_id)
    } else {
        !alive.contains(&rec.node)
    }
}

/// Schedules the expiry of every orphan record; returns how many.
pub async fn sweep(c: &Arc<Cluster>, expiry: &Expiry) -> Result<usize, ClusterError> {
    let alive = alive(c).await?;
    let now = now_ms();
    let mut n = 0;
    for (client_id, rec, _) in c.state_records().await? {
        if !orphan(c, &alive, &client_id, &rec) {
            continue;
        }
        if let Some(due) = rec.expires_at(now) {
            debug!(%client_id, node = %rec.node, in_ms = due - now, "cluster: a dead node's session scheduled to expire");
            let _ = expiry.tx.send((due, client_id, rec.epoch));
            n += 1;
        }
    }
    Ok(n)
}

/// The schedule's task: sleeps until the earliest due time, then expires
/// what is due (one membership read per batch).
async fn run(broker: Weak<Broker>, c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<Due>) {
    let mut due: BTreeSet<Due> = BTreeSet::new();
    loop {
        let wait = due
            .first()
            .map(|d| Duration::from_millis((d.0 - now_ms()).max(0) as u64));
        tokio::select! {
            m = rx.recv() => match m {
                Some(d) => {
                    due.insert(d);
                }
                None => return,
            },
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {
                let now = now_ms();
                let mut ready = Vec::new();
                while due.first().is_some_and(|d| d.0 <= now) {
                    if let Some(d) = due.pop_first() {
                        ready.push(d);
                    }
                }
                if broker.strong_count() == 0 {
                    return;
                }
                if ready.is_empty() {
                    continue;
                }
                due.extend(expire(&broker, &c, ready).await);
            }
        }
    }
}

/// Expires the records of `ready` that are still due orphans; returns the
/// ones to look at again.
async fn expire(broker: &Weak<Broker>, c: &Arc<Cluster>, ready: Vec<Due>) -> Vec<Due> {
    let alive = match alive(c).await {
        Ok(a) => a,
        Err(e) => {
            warn!(sessions = ready.len(), error = %e, "cluster: membership not read; expiry of dead nodes' sessions retried in 2 s");
            let at = now_ms() + RETRY_MS;
            return ready.into_iter().map(|(_, id, ep)| (at, id, ep)).collect();
        }
    };
    let mut again = Vec::new();
    let mut failed = 0;
    for (at, id, epoch) in ready {
        match expire_one(broker, c, &alive, &id, epoch, at).await {
            Ok(Some(next)) => again.push((next, id, epoch)),
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                debug!(client_id = %id, error = %e, "cluster: a dead node's session not expired yet");
                again.push((now_ms() + RETRY_MS, id, epoch));
            }
        }
    }
    if failed > 0 {
        warn!(
            sessions = failed,
            "cluster: dead nodes' sessions not expired (NATS did not answer); retried in 2 s"
        );
    }
    again
}

/// Expires `client_id`'s record (claim `epoch`, due at `at`) if it is
/// still a due orphan. `Some(t)`: look again at `t` (not due yet, or a
/// concurrent write came first).
async fn expire_one(
    broker: &Weak<Broker>,
    c: &Arc<Cluster>,
    alive: &HashSet<String>,
    client_id: &str,
    epoch: u64,
    at: i64,
) -> Result<Option<i64>, ClusterError> {
    let (Some(rec), revision) = c.read_state(client_id).await? else {
        return Ok(None);
    };
    // Another claim's record: a sweep after that claim's node died
    // scheduled it itself.
    if rec.epoch != epoch || !orphan(c, alive, client_id, &rec) {
        return Ok(None);
    }
    let Some(due) = rec.expires_at(at - i64::from(rec.expiry) * 1000) else {
        return Ok(None);
    };
    let now = now_ms();
    if due > now {
        return Ok(Some(due));
    }
    if !c.delete_state(client_id, revision).await? {
        // Written meanwhile (resumed, or another node's delete): read again.
        return Ok(Some(now + 100));
    }
    c.metrics.dead_sessions_expired.fetch_add(1, Relaxed);
    info!(%client_id, node = %rec.node, "cluster: session of a dead node expired; its record deleted");
    if let Some(b) = broker.upgrade() {
        b.emit(Event::SessionExpired { client_id });
    }
    Ok(None)
}
