//! What a bridge reports: link state, last error, counters, rates. Counters
//! are `Relaxed` atomics bumped by the link task; the admin API, `/metrics`
//! and `$SYS` read them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Why a message meant for the remote was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The topic mapping gave no valid topic.
    Unmappable,
    /// Larger than the remote's Maximum Packet Size.
    TooLarge,
    /// Its message expiry interval ran out in the buffer.
    Expired,
    /// The remote answered PUBACK / PUBREC with an error code.
    Refused,
    /// It already went through this bridge (its loop marker says so).
    Looped,
}

impl Dropped {
    pub const ALL: [Dropped; 5] = [
        Dropped::Unmappable,
        Dropped::TooLarge,
        Dropped::Expired,
        Dropped::Refused,
        Dropped::Looped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dropped::Unmappable => "unmappable",
            Dropped::TooLarge => "too_large",
            Dropped::Expired => "expired",
            Dropped::Refused => "refused",
            Dropped::Looped => "looped",
        }
    }
}

/// Live state and counters of one bridge.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: AtomicBool,
    /// The remote acknowledged the `in` subscriptions of the current link.
    pub subscribed: AtomicBool,
    /// When the current link was accepted (ms since the epoch; 0: down).
    pub connected_since_ms: AtomicI64,
    /// Connections accepted by the remote (CONNACK 0).
    pub connects: AtomicU64,
    /// Attempts that failed (transport, TLS, CONNACK refusal, timeout).
    pub connect_failures: AtomicU64,
    /// Links that ended after being up.
    pub disconnects: AtomicU64,
    /// PUBLISH packets written to the remote (resends included).
    pub sent: AtomicU64,
    /// QoS 1/2 messages the remote acknowledged (PUBACK / PUBCOMP).
    pub acked: AtomicU64,
    /// PUBLISH packets received from the remote and published here.
    pub received: AtomicU64,
    dropped: [AtomicU64; 5],
    last_error: Mutex<Option<(i64, String)>>,
    rates: Mutex<Rates>,
}

/// Messages per second, from the counters sampled once a second.
#[derive(Debug, Default)]
struct Rates {
    /// (when, sent, received) of the last few samples, oldest first.
    samples: std::collections::VecDeque<(Instant, u64, u64)>,
    sent: f64,
    received: f64,
}

/// Samples kept for the rates: they average over the last 5 seconds.
const RATE_SAMPLES: usize = 6;

impl Status {
    pub fn drop(&self, why: Dropped) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }

    /// Records `error` (shown by the API until the next one) with the time.
    pub fn set_error(&self, error: String) {
        *self.last_error.lock() = Some((crate::message::now_ms(), error));
    }

    /// The last error and when (ms since the epoch).
    pub fn last_error(&self) -> Option<(i64, String)> {
        self.last_error.lock().clone()
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        if !up {
            self.subscribed.store(false, Ordering::Relaxed);
        }
        let since = if up { crate::message::now_ms() } else { 0 };
        self.connected_since_ms.store(since, Ordering::Relaxed);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Takes a sample of the counters (once a second, by the bridge's task).
    pub fn sample(&self, now: Instant) {
        let sent = self.sent.load(Ordering::Relaxed);
        let received = self.received.load(Ordering::Relaxed);
        let mut r = self.rates.lock();
        r.samples.push_back((now, sent, received));
        while r.samples.len() > RATE_SAMPLES {
            r.samples.pop_front();
        }
        if let (Some(a), Some(b)) = (r.samples.front().copied(), r.samples.back().copied()) {
            let secs = b.0.saturating_duration_since(a.0).as_secs_f64();
            if secs > 0.0 {
                r.sent = (b.1 - a.1) as f64 / secs;
                r.received = (b.2 - a.2) as f64 / secs;
            }
        }
    }

    /// (sent, received) messages per second over the last seconds.
    pub fn rates(&self) -> (f64, f64) {
        let r = self.rates.lock();
        (r.sent, r.received)
    }
}

/// The `$SYS/brokers/<node>/bridges/<name>/...` values (the sys module).
pub fn sys(bridges: &super::Registry, put: &mut impl FnMut(&str, String)) {
    for b in bridges.list() {
        let st = &b.status;
        let name = b.name();
        let dropped = b.dropped_full() + Dropped::ALL.iter().map(|d| st.dropped(*d)).sum::<u64>();
        put(
            &format!("bridges/{name}/connected"),
            u8::from(st.is_connected()).to_string(),
        );
        put(
            &format!("bridges/{name}/buffered"),
            b.buffered().0.to_string(),
        );
        put(
            &format!("bridges/{name}/sent"),
            st.sent.load(Ordering::Relaxed).to_string(),
        );
        put(
            &format!("bridges/{name}/received"),
            st.received.load(Ordering::Relaxed).to_string(),
        );
        put(&format!("bridges/{name}/dropped"), dropped.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_average_the_last_samples() {
        let s = Status::default();
        let t0 = Instant::now();
        s.sample(t0);
        s.sent.fetch_add(100, Ordering::Relaxed);
        s.received.fetch_add(10, Ordering::Relaxed);
        s.sample(t0 + Duration::from_secs(1));
        assert_eq!(s.rates(), (100.0, 10.0));
        for i in 2..20 {
            s.sample(t0 + Duration::from_secs(i));
        }
        assert_eq!(s.rates(), (0.0, 0.0), "nothing moved for 5 s");
        s.drop(Dropped::Refused);
        assert_eq!(s.dropped(Dropped::Refused), 1);
        assert_eq!(s.dropped(Dropped::Expired), 0);
    }
}
