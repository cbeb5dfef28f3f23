//! Per-client rate limits: token buckets refilled continuously, holding at
//! most one second's worth (so a client may burst up to its per-second rate).

use std::time::Instant;

use midge_protocol::reason;

use crate::config::LimitsConfig;

/// A token bucket of `rate` tokens per second, capacity `rate`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64) -> TokenBucket {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens if there are enough; false (taking none) if not.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(n as f64));
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Which publish limit a client broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `max_publish_rate`: DISCONNECT 0x96 (message rate too high).
    Messages,
    /// `max_publish_bytes_rate`: DISCONNECT 0x97 (quota exceeded).
    Bytes,
}

impl Exceeded {
    pub fn reason(self) -> u8 {
        match self {
            Exceeded::Messages => reason::MESSAGE_RATE_TOO_HIGH,
            Exceeded::Bytes => reason::QUOTA_EXCEEDED,
        }
    }
}

/// One client's publish limits (`None` when neither is configured, so an
/// unlimited client pays one branch per PUBLISH).
#[derive(Debug, Clone)]
pub struct PublishLimiter {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl PublishLimiter {
    pub fn from_config(l: &LimitsConfig) -> Option<PublishLimiter> {
        if l.max_publish_rate == 0 && l.max_publish_bytes_rate == 0 {
            return None;
        }
        Some(PublishLimiter {
            messages: (l.max_publish_rate > 0).then(|| TokenBucket::new(l.max_publish_rate.into())),
            bytes: (l.max_publish_bytes_rate > 0)
                .then(|| TokenBucket::new(l.max_publish_bytes_rate)),
        })
    }

    /// Accounts one PUBLISH of `payload` bytes.
    pub fn check(&mut self, payload: usize) -> Result<(), Exceeded> {
        let now = Instant::now();
        if let Some(b) = &mut self.messages {
            if !b.take(1, now) {
                return Err(Exceeded::Messages);
            }
        }
        if let Some(b) = &mut self.bytes {
            if !b.take(payload as u64, now) {
                return Err(Exceeded::Bytes);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_of_one_second_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5);
        for _ in 0..5 {
            assert!(b.take(1, t0));
        }
        assert!(!b.take(1, t0), "sixth in the same instant is over the rate");
        assert!(
            b.take(1, t0 + Duration::from_millis(200)),
            "refilled 1 token"
        );
        assert!(!b.take(1, t0 + Duration::from_millis(200)));
        // Never more than one second's worth, however long the pause.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take(1, later));
        }
        assert!(!b.take(1, later));
    }

    #[test]
    fn byte_rate_counts_payload_bytes() {
        let mut l = PublishLimiter::from_config(&LimitsConfig {
            max_publish_bytes_rate: 100,
            ..LimitsConfig::default()
        })
        .expect("configured");
        assert_eq!(l.check(60), Ok(()));
        assert_eq!(l.check(60), Err(Exceeded::Bytes));
        assert!(PublishLimiter::from_config(&LimitsConfig::default()).is_none());
    }
}
