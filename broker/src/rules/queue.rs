//! The action lanes: bounded queues of rule outputs, each served by one task.
//!
//! Outputs are spread over lanes by publisher (client id; the topic for
//! messages without one), so a publisher's outputs keep their order. A push
//! never waits: the publisher's path only appends. Instead the publishing
//! connection, after a read batch that queued outputs, asks
//! [`Lanes::should_hold`] and stops reading while its lane is more than
//! [`HOLD_AT`] deep ([`Lanes::space`]): TCP then holds the publisher back at
//! the pace the actions run. A hold lasts at most [`HOLD_MAX`]; a lane
//! whose actions are that slow is marked overloaded, nobody waits for it
//! until it has drained to [`RESUME_AT`], and outputs beyond
//! [`LANE_CAPACITY`] are dropped and counted. The publish itself is routed
//! before its outputs are queued and is never dropped for them.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Job;

/// Most outputs waiting in one lane; beyond it they are dropped and counted.
pub const LANE_CAPACITY: usize = 16_384;
/// A publisher that fed a lane this deep stops being read until it drains.
pub const HOLD_AT: usize = 4_096;
/// Held publishers are read again once their lane is below this.
pub const RESUME_AT: usize = HOLD_AT / 2;
/// The longest a publisher is held for one lane; the lane is overloaded after.
pub const HOLD_MAX: Duration = Duration::from_secs(2);
/// Outputs a lane's task takes per turn.
const BATCH: usize = 256;

#[derive(Debug, Default)]
struct Lane {
    jobs: Mutex<VecDeque<Job>>,
    /// Outputs queued or being run.
    pending: AtomicUsize,
    /// Wakes the lane's task.
    work: Notify,
    /// Wakes held publishers.
    space: Notify,
    /// A hold ran out: publishers do not wait for this lane until it has
    /// drained to [`RESUME_AT`].
    overloaded: AtomicBool,
}

/// The lanes of one rule engine.
#[derive(Debug)]
pub struct Lanes {
    lanes: Box<[Lane]>,
    /// Holds that ran out ([`HOLD_MAX`]).
    pub hold_timeouts: AtomicU64,
    started: AtomicBool,
}

impl Default for Lanes {
    fn default() -> Self {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 16);
        Lanes::new(n)
    }
}

impl Lanes {
    pub fn new(n: usize) -> Self {
        Lanes {
            lanes: (0..n.max(1)).map(|_| Lane::default()).collect(),
            hold_timeouts: AtomicU64::new(0),
            started: AtomicBool::new(false),
        }
    }

    /// How many lanes (and tasks) there are.
    pub fn count(&self) -> usize {
        self.lanes.len()
    }

    /// The lane of a publisher or client.
    pub fn lane_of(&self, key: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.lanes.len() as u64) as usize
    }

    /// Appends `jobs` to `lane`; those beyond [`LANE_CAPACITY`] are returned
    /// (for the caller to count as dropped).
    pub fn push(&self, lane: usize, jobs: impl IntoIterator<Item = Job>) -> Vec<Job> {
        let l = &self.lanes[lane];
        let mut rejected = Vec::new();
        let mut added = 0;
        let before;
        {
            let mut q = l.jobs.lock();
            before = l.pending.load(Ordering::Acquire);
            for job in jobs {
                if before + added < LANE_CAPACITY {
                    q.push_back(job);
                    added += 1;
                } else {
                    rejected.push(job);
                }
            }
            if added > 0 {
                l.pending.fetch_add(added, Ordering::AcqRel);
            }
        }
        if added > 0 {
            l.work.notify_one();
        }
        rejected
    }

    /// Should a publisher that just fed `lane` stop reading until it drains?
    pub fn should_hold(&self, lane: usize) -> bool {
        let l = &self.lanes[lane];
        l.pending.load(Ordering::Acquire) >= HOLD_AT && !l.overloaded.load(Ordering::Acquire)
    }

    /// Completes once `lane` is below [`RESUME_AT`] or at `deadline`, when
    /// the lane is marked overloaded.
    pub async fn space(&self, lane: usize, deadline: Instant) {
        let l = &self.lanes[lane];
        loop {
            let notified = l.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if l.pending.load(Ordering::Acquire) < RESUME_AT || l.overloaded.load(Ordering::Acquire)
            {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                if !l.overloaded.swap(true, Ordering::AcqRel) {
                    self.hold_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        lane,
                        pending = l.pending.load(Ordering::Relaxed),
                        "rule actions too slow: publishers no longer held for them, outputs beyond the queue are dropped"
                    );
                }
                return;
            }
        }
    }

    /// Whether the lanes' tasks are to be started (true once).
    pub fn start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// Takes up to [`BATCH`] outputs of `lane` into `batch`, waiting for one.
    pub async fn take(&self, lane: usize, batch: &mut Vec<Job>) {
        let l = &self.lanes[lane];
        loop {
            {
                let mut q = l.jobs.lock();
                let n = q.len().min(BATCH);
                batch.extend(q.drain(..n));
            }
            if !batch.is_empty() {
                return;
            }
            l.work.notified().await;
        }
    }

    /// `n` outputs of `lane` have run: wakes held publishers once it is low.
    pub fn done(&self, lane: usize, n: usize) {
        let l = &self.lanes[lane];
        let left = l.pending.fetch_sub(n, Ordering::AcqRel) - n;
        if left < RESUME_AT {
            l.overloaded.store(false, Ordering::Release);
            l.space.notify_waiters();
        }
    }

    /// Outputs queued or running in `lane`.
    pub fn pending(&self, lane: usize) -> usize {
        self.lanes[lane].pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rules::RuleSet;

    fn jobs(n: usize) -> Vec<Job> {
        let set = Arc::new(RuleSet::default());
        (0..n)
            .map(|_| Job {
                set: set.clone(),
                rule: 0,
                row: Default::default(),
                depth: 0,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_deep_lane_holds_until_it_drains_and_a_full_one_rejects() {
        let lanes = Lanes::new(2);
        assert!(lanes.push(0, jobs(HOLD_AT - 1)).is_empty());
        assert!(!lanes.should_hold(0), "below HOLD_AT");
        assert!(lanes.push(0, jobs(1)).is_empty());
        assert!(lanes.should_hold(0), "at HOLD_AT");
        assert!(!lanes.should_hold(1), "lanes are separate");
        // Running the outputs down to RESUME_AT lets the held publisher go.
        let far = Instant::now() + Duration::from_secs(3600);
        let mut batch = Vec::new();
        let lanes = Arc::new(lanes);
        let waiter = tokio::spawn({
            let lanes = lanes.clone();
            async move { lanes.space(0, far).await }
        });
        let mut taken = 0;
        while lanes.pending(0) - taken >= RESUME_AT {
            lanes.take(0, &mut batch).await;
            taken += batch.len();
            batch.clear();
        }
        assert!(!waiter.is_finished());
        lanes.done(0, taken);
        waiter.await.unwrap();
        assert_eq!(lanes.hold_timeouts.load(Ordering::Relaxed), 0);
        // Beyond capacity, the rest comes back.
        let left = lanes.pending(0);
        let rejected = lanes.push(0, jobs(LANE_CAPACITY));
        assert_eq!(rejected.len(), left);
        assert_eq!(lanes.pending(0), LANE_CAPACITY);
    }

    #[tokio::test]
    async fn a_hold_that_runs_out_marks_the_lane_overloaded_until_it_drains() {
        let lanes = Lanes::new(1);
        lanes.push(0, jobs(HOLD_AT));
        assert!(lanes.should_hold(0));
        lanes.space(0, Instant::now()).await;
        assert_eq!(lanes.hold_timeouts.load(Ordering::Relaxed), 1);
        assert!(!lanes.should_hold(0), "nobody waits for an overloaded lane");
        lanes.push(0, jobs(1));
        assert!(!lanes.should_hold(0));
        // Drained below RESUME_AT: holding applies again once it is deep.
        let mut batch = Vec::new();
        let mut taken = 0;
        while taken < HOLD_AT + 1 - RESUME_AT + 1 {
            lanes.take(0, &mut batch).await;
            taken += batch.len();
            batch.clear();
        }
        lanes.done(0, taken);
        assert!(lanes.pending(0) < RESUME_AT);
        lanes.push(0, jobs(HOLD_AT));
        assert!(lanes.should_hold(0));
    }
}
