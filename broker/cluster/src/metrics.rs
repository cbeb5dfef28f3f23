//! Counters of one node's cluster traffic and of its waits on NATS, rendered
//! as Prometheus text by the broker's `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the NATS round-trip histogram buckets.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

/// One histogram of wait times (lock-free).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            if s <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}le=\"{le}\"}} {}",
                b.load(Relaxed)
            );
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum{{{}}} {}",
            labels.trim_end_matches(','),
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{}}} {n}", labels.trim_end_matches(','));
    }
}

/// What a node counts about the cluster.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages sent to other nodes, by QoS.
    pub forwarded: [AtomicU64; 3],
    pub forwarded_bytes: AtomicU64,
    /// NATS messages that carried several QoS 0 messages (a batch).
    pub batches: AtomicU64,
    /// Messages received from other nodes, by QoS.
    pub received: [AtomicU64; 3],
    pub received_bytes: AtomicU64,
    /// Copies of one message that arrived through overlapping filters and were dropped.
    pub duplicates: AtomicU64,
    /// Messages read back from the stream when reconciling (after a lost
    /// connection or a slow-consumer report).
    pub replayed: AtomicU64,
    /// Messages from other nodes that did not decode (bad subject or headers).
    pub rejected: AtomicU64,
    /// Cross-node publishes that could not be sent or acknowledged.
    pub publish_failures: AtomicU64,
    /// NATS waits that ran into `request_timeout_ms`.
    pub timeouts: AtomicU64,
    /// Other NATS errors (KV, stream, subscribe).
    pub errors: AtomicU64,
    /// Subscriptions on NATS now (one or two per distinct local filter).
    pub subscriptions: AtomicU64,
    /// Cross-node publishes waiting for NATS now.
    pub pending: AtomicU64,
    /// Times a publisher waited because `max_pending` were in flight.
    pub backpressure_waits: AtomicU64,
    /// Session ownership claims: won, lost to a concurrent claim, refused (NATS unreachable).
    pub claims: AtomicU64,
    pub claim_conflicts: AtomicU64,
    pub claim_refused: AtomicU64,
    /// Retained messages written to / applied from the cluster bucket.
    pub retained_out: AtomicU64,
    pub retained_in: AtomicU64,
    /// Wills of dead nodes this node published (it won the claim).
    pub dead_wills: AtomicU64,
    /// Sessions of dead nodes that expired here (this node's delete of the
    /// record won).
    pub dead_sessions_expired: AtomicU64,
    /// NATS connection state changes: disconnects and reconnects.
    pub disconnects: AtomicU64,
    pub reconnects: AtomicU64,
    /// JetStream publish acknowledgement round trips.
    pub publish_rtt: Histogram,
    /// KV round trips (ownership, membership, retained).
    pub kv_rtt: Histogram,
}

fn qos_lines(out: &mut String, name: &str, help: &str, v: &[AtomicU64; 3]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (q, c) in v.iter().enumerate() {
        let _ = writeln!(out, "{name}{{qos=\"{q}\"}} {}", c.load(Relaxed));
    }
}

/// A node's cross-node traffic so far: sent with its membership heartbeat,
/// so any node's admin API (and dashboard) shows every node's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Messages sent to other nodes (every QoS) and their payload bytes.
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    /// Messages received from other nodes (every QoS) and their payload bytes.
    pub received: u64,
    pub received_bytes: u64,
    /// Cross-node publishes that could not be sent or acknowledged.
    pub publish_failures: u64,
    /// NATS waits that ran into `request_timeout_ms`, and other NATS errors.
    pub timeouts: u64,
    pub errors: u64,
    /// Times the NATS connection came back.
    pub reconnects: u64,
}

impl Metrics {
    /// This node's [`Traffic`] now.
    pub fn traffic(&self) -> Traffic {
        let sum = |v: &[AtomicU64; 3]| v.iter().map(|c| c.load(Relaxed)).sum();
        Traffic {
            forwarded: sum(&self.forwarded),
            forwarded_bytes: self.forwarded_bytes.load(Relaxed),
            received: sum(&self.received),
            received_bytes: self.received_bytes.load(Relaxed),
            publish_failures: self.publish_failures.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            errors: self.errors.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
        }
    }

    /// Appends the Prometheus text of every metric; `connected` is the NATS
    /// connection's state now.
    pub fn render(&self, out: &mut String, connected: bool) {
        let _ = writeln!(
            out,
            "# HELP midge_cluster_nats_connected 1 while the node is connected to NATS.\n\
             # TYPE midge_cluster_nats_connected gauge\nmidge_cluster_nats_connected {}",
            u8::from(connected)
        );
        qos_lines(
            out,
            "midge_cluster_forwarded_total",
            "Messages sent to other nodes.",
            &self.forwarded,
        );
        qos_lines(
            out,
            "midge_cluster_received_total",
            "Messages received from other nodes.",
            &self.received,
        );
        let counters: [(&str, &str, &AtomicU64); 21] = [
            (
                "midge_cluster_batches_total",
                "NATS messages sent that carried several QoS 0 messages of one topic.",
                &self.batches,
            ),
            (
                "midge_cluster_replayed_total",
                "Messages read back from the stream when reconciling after a lost connection.",
                &self.replayed,
            ),
            (
                "midge_cluster_forwarded_bytes_total",
                "Payload bytes sent to other nodes.",
                &self.forwarded_bytes,
            ),
            (
                "midge_cluster_received_bytes_total",
                "Payload bytes received from other nodes.",
                &self.received_bytes,
            ),
            (
                "midge_cluster_duplicates_total",
                "Copies dropped that arrived through overlapping filters.",
                &self.duplicates,
            ),
            (
                "midge_cluster_rejected_total",
                "Messages from other nodes that did not decode.",
                &self.rejected,
            ),
            (
                "midge_cluster_publish_failures_total",
                "Cross-node publishes not sent or not acknowledged.",
                &self.publish_failures,
            ),
            (
                "midge_cluster_nats_timeouts_total",
                "NATS waits that ran into request_timeout_ms.",
                &self.timeouts,
            ),
            (
                "midge_cluster_nats_errors_total",
                "Other NATS errors.",
                &self.errors,
            ),
            (
                "midge_cluster_backpressure_waits_total",
                "Publishers held back because max_pending publishes were in flight.",
                &self.backpressure_waits,
            ),
            (
                "midge_cluster_claims_total",
                "Session ownership claims won.",
                &self.claims,
            ),
            (
                "midge_cluster_claim_conflicts_total",
                "Claims that lost a race and were retried.",
                &self.claim_conflicts,
            ),
            (
                "midge_cluster_claims_refused_total",
                "Claims refused because NATS did not answer.",
                &self.claim_refused,
            ),
            (
                "midge_cluster_retained_out_total",
                "Retained changes written to the cluster.",
                &self.retained_out,
            ),
            (
                "midge_cluster_retained_in_total",
                "Retained changes applied from the cluster.",
                &self.retained_in,
            ),
            (
                "midge_cluster_dead_node_wills_total",
                "Wills of dead nodes published here.",
                &self.dead_wills,
            ),
            (
                "midge_cluster_dead_node_sessions_expired_total",
                "Sessions of dead nodes expired here (their records deleted).",
                &self.dead_sessions_expired,
            ),
            (
                "midge_cluster_nats_disconnects_total",
                "Times the NATS connection was lost.",
                &self.disconnects,
            ),
            (
                "midge_cluster_nats_reconnects_total",
                "Times the NATS connection came back.",
                &self.reconnects,
            ),
            (
                "midge_cluster_subscriptions",
                "NATS subscriptions for local filters now.",
                &self.subscriptions,
            ),
            (
                "midge_cluster_pending_publishes",
                "Cross-node publishes waiting for NATS now.",
                &self.pending,
            ),
        ];
        for (name, help, v) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        self.publish_rtt.render(
            out,
            "midge_cluster_nats_rtt_seconds",
            "NATS round trips.",
            "op=\"publish\",",
        );
        self.kv_rtt.render(
            out,
            "midge_cluster_nats_kv_rtt_seconds",
            "NATS KV round trips.",
            "op=\"kv\",",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.forwarded[1].fetch_add(3, Relaxed);
        m.publish_rtt.observe(Duration::from_micros(700));
        let mut s = String::new();
        m.render(&mut s, true);
        assert!(s.contains("midge_cluster_forwarded_total{qos=\"1\"} 3"));
        assert!(s.contains("midge_cluster_nats_connected 1"));
        assert!(s.contains("midge_cluster_nats_rtt_seconds_bucket{op=\"publish\",le=\"0.0005\"} 0"));
        assert!(s.contains("midge_cluster_nats_rtt_seconds_bucket{op=\"publish\",le=\"0.001\"} 1"));
        assert!(s.contains("midge_cluster_nats_rtt_seconds_count{op=\"publish\"} 1"));
    }
}
