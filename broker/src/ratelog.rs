//! Rate-limited logging for events a peer can cause at will (failed TLS
//! handshakes): the first few per window are logged, the rest counted and
//! reported with the next line that is logged, so an operator sees every
//! kind of failure without a scanner filling the disk.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// At most `burst` lines per `window`.
#[derive(Debug)]
pub struct RateLog {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLog {
    pub const fn new(burst: u32, window: Duration) -> RateLog {
        RateLog {
            burst,
            window,
            state: Mutex::new(State {
                window_start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)`: log this one, mentioning the `n` left out before it;
    /// `None`: leave it out (counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock();
        if s.window_start
            .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            s.window_start = Some(now);
            s.logged = 0;
        }
        if s.logged < self.burst {
            s.logged += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

/// Failed TLS handshakes (`mqtts`, `wss`): 10 lines a minute.
static TLS_FAILURES: RateLog = RateLog::new(10, Duration::from_secs(60));

/// Logs a failed TLS handshake with the peer, the listener and rustls'
/// reason (unknown CA, protocol version, ...), rate-limited. A connection
/// closed before it said anything (a load balancer's TCP health check, a
/// port scan) is only a debug line.
pub fn tls_failure(peer: std::net::SocketAddr, listener: &str, reason: &std::io::Error) {
    if reason.kind() == std::io::ErrorKind::UnexpectedEof {
        tracing::debug!(%peer, listener, %reason, "TLS connection closed during the handshake");
        return;
    }
    if let Some(suppressed) = TLS_FAILURES.admit(Instant::now()) {
        tracing::warn!(
            %peer,
            listener,
            %reason,
            suppressed,
            "TLS handshake failed (at most 10 such lines a minute; `suppressed` counts those left out before this one)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_the_count() {
        let r = RateLog::new(2, Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(r.admit(t), Some(0));
        assert_eq!(r.admit(t), Some(0));
        assert_eq!(r.admit(t), None);
        assert_eq!(r.admit(t), None);
        let later = t + Duration::from_secs(61);
        assert_eq!(
            r.admit(later),
            Some(2),
            "the next window reports what was left out"
        );
        assert_eq!(r.admit(later), Some(0));
    }
}
