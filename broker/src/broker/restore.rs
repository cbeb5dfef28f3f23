//! Restore: the sessions and retained messages a store held, rebuilt before
//! the listeners accept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Broker;
use crate::message::Message;
use crate::router::{split_filter, SubEntry};
use crate::session::{PendingWill, Session};
use crate::store::{Op, Snapshot};

impl Broker {
    /// Rebuilds the persistent sessions and retained messages a store held
    /// (before any listener accepts): sessions come back offline with their
    /// subscriptions in the router, their queues and inflight state, and the
    /// timers of their wills and expiry, counted from when they went offline
    /// (a session that was connected when the broker stopped counts from now).
    /// Expired sessions and messages are purged; wills of expired sessions
    /// are published once everything is restored.
    pub fn restore(self: &Arc<Self>, snap: Snapshot) -> RestoreStats {
        let Some(store) = self.store.clone() else {
            return RestoreStats::default();
        };
        let now_ms = crate::message::now_ms();
        let mut stats = RestoreStats::default();
        for c in snap.orphans {
            store.submit(Op::DropSession(c));
        }
        for m in snap.retained {
            let mut m = m;
            if rebase_expiry(&mut m, now_ms) {
                store.submit(Op::DelRetained(m.topic.to_string()));
                stats.expired_messages += 1;
                continue;
            }
            self.retained.restore(Arc::new(m));
            stats.retained += 1;
        }
        let mut wills = Vec::new();
        let mut registry = HashMap::with_capacity(snap.sessions.len());
        for r in snap.sessions {
            let rec = r.record;
            let offline_since = rec.disconnected_at_ms.unwrap_or(now_ms);
            let offline_for = u64::try_from(now_ms - offline_since).unwrap_or(0);
            let expiry_ms = u64::from(rec.expiry) * 1000;
            if rec.expiry != u32::MAX && offline_for >= expiry_ms {
                store.submit(Op::DropSession(r.client_id.clone()));
                if let Some((w, _)) = rec.will {
                    wills.push(w);
                }
                stats.expired_sessions += 1;
                continue;
            }
            let session = Arc::new(Session::new(
                r.client_id.clone(),
                rec.expiry,
                Some(store.clone()),
            ));
            let (will_in, expire_in) = {
                let mut st = session.state.lock();
                st.persist = true;
                st.offline_since_ms = Some(offline_since);
                let mut max_seq = 0;
                let mut max_id = 0;
                for (d, inflight) in r.queue {
                    max_seq = max_seq.max(d.seq);
                    let mut d = d;
                    let msg = Arc::get_mut(&mut d.msg).map(|m| rebase_expiry(m, now_ms));
                    if msg == Some(true) {
                        store.submit(Op::Dequeue(r.client_id.clone(), d.seq));
                        stats.expired_messages += 1;
                        continue;
                    }
                    stats.messages += 1;
                    match inflight {
                        Some((packet_id, stage)) => {
                            max_id = max_id.max(packet_id);
                            st.inflight.push_back(crate::session::Inflight {
                                packet_id,
                                delivery: d,
                                stage,
                            });
                        }
                        None => {
                            st.queued_bytes += d.msg.payload.len();
                            st.queue.push_back(d);
                        }
                    }
                }
                st.next_seq = max_seq + 1;
                st.next_packet_id = max_id.checked_add(1).unwrap_or(1);
                st.incoming_qos2 = r.incoming_qos2.into_iter().collect();
                for (filter, sub) in r.subscriptions {
                    let (group, f) = split_filter(&filter);
                    self.router.subscribe(
                        f,
                        group,
                        SubEntry {
                            session: session.clone(),
                            opts: sub.opts,
                            id: sub.id,
                        },
                    );
                    st.subscriptions.insert(filter, sub);
                    stats.subscriptions += 1;
                }
                let mut will_in = None;
                if let Some((w, delay)) = rec.will {
                    let due = offline_since + i64::from(delay) * 1000;
                    let left = u64::try_from(due - now_ms).unwrap_or(0);
                    if left == 0 {
                        wills.push(w);
                        store.submit(Op::PutSession(r.client_id.clone(), st.record()));
                    } else {
                        st.will = Some(PendingWill { msg: w, delay });
                        will_in = Some(Duration::from_millis(left));
                    }
                }
                let expire_in = (rec.expiry != u32::MAX)
                    .then(|| Duration::from_millis(expiry_ms - offline_for));
                (will_in, expire_in)
            };
            self.schedule_offline(&session, 0, will_in, expire_in);
            registry.insert(r.client_id, session);
            stats.sessions += 1;
        }
        self.sessions.lock().extend(registry);
        for w in wills {
            let _ = self.publish(w);
        }
        stats
    }
}

/// What [`Broker::restore`] brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    pub sessions: usize,
    pub subscriptions: usize,
    pub messages: usize,
    pub retained: usize,
    pub expired_sessions: usize,
    pub expired_messages: usize,
}

/// Turns a restored message's expiry into what is left of it now; true when
/// nothing is left (expired while the broker was down).
pub(crate) fn rebase_expiry(m: &mut Message, now_ms: i64) -> bool {
    let Some(total) = m.properties.message_expiry_interval else {
        return false;
    };
    let age_ms = u64::try_from(now_ms - m.timestamp_ms).unwrap_or(0);
    let total_ms = u64::from(total) * 1000;
    if age_ms >= total_ms {
        return true;
    }
    // Rounded up: a message with 0.4 s left still has "1 s" to live.
    m.properties.message_expiry_interval = Some((total_ms - age_ms).div_ceil(1000) as u32);
    m.received_at = std::time::Instant::now();
    false
}
