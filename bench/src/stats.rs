//! Latency histogram and per-publisher sequence tracking.

/// Log-linear histogram of nanosecond values: exact below 64 ns, then 64
/// sub-buckets per power of two (relative error under 1.6 %).
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0..SUB
    ((e - SUB_BITS + 1) as u64 * SUB + mantissa) as usize
}

/// Upper bound of the values that land in bucket `i`.
fn value_of(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = i / SUB - 1 + SUB_BITS as u64;
    let mantissa = i % SUB + SUB;
    let shift = e - SUB_BITS as u64;
    ((mantissa + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).min(self.max);
            }
        }
        self.max
    }
}

/// Which sequence numbers of one publisher a subscriber has seen.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    bits: Vec<u64>,
    pub distinct: u64,
    /// Highest sequence number seen so far.
    pub max_seen: Option<u64>,
}

impl SeqSet {
    /// Marks `seq`; returns false when it had already been seen.
    pub fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize((word + 1).next_power_of_two(), 0);
        }
        let mask = 1u64 << (seq % 64);
        if self.bits[word] & mask != 0 {
            return false;
        }
        self.bits[word] |= mask;
        self.distinct += 1;
        true
    }

    /// How many of `0..sent` were never seen.
    pub fn missing(&self, sent: u64) -> u64 {
        let seen_below: u64 = (0..sent)
            .step_by(64)
            .map(|start| {
                let word = self.bits.get((start / 64) as usize).copied().unwrap_or(0);
                let width = (sent - start).min(64);
                let mask = if width == 64 {
                    u64::MAX
                } else {
                    (1u64 << width) - 1
                };
                u64::from((word & mask).count_ones())
            })
            .sum();
        sent - seen_below
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 / 99_000_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), 100_000_000);
        for v in [0u64, 1, 63, 64, 65, 127, 128, 1 << 40, u64::MAX] {
            assert!(value_of(index(v)) >= v);
        }
    }

    #[test]
    fn seqset_counts() {
        let mut s = SeqSet::default();
        assert!(s.insert(0));
        assert!(s.insert(70));
        assert!(!s.insert(70));
        assert_eq!(s.distinct, 2);
        assert_eq!(s.missing(71), 69);
        assert_eq!(s.missing(1), 0);
        assert_eq!(s.missing(200), 198);
    }
}
