//! `$SYS/brokers/<node>/...`: broker status in Mosquitto's style, published
//! as retained QoS 0 messages every `[sys] interval` seconds (a value is
//! republished only when it changed, as Mosquitto does; `uptime` always),
//! and client connected/disconnected notices.
//!
//! Topics (under `$SYS/brokers/<node>/`): `version`, `uptime` (seconds),
//! `clients/connected`, `clients/disconnected` (persistent sessions without a
//! connection), `clients/total`, `clients/maximum` (most connected at once
//! since start), `messages/received`, `messages/sent`, `messages/dropped`,
//! `messages/retained`, `bytes/received`, `bytes/sent`, `subscriptions/count`,
//! and `load/{messages,bytes}/{received,sent}/{1min,5min,15min}` plus
//! `load/connections/{1min,5min,15min}`: per-minute rates as exponentially
//! damped averages over 1, 5 and 15 minutes (Mosquitto's load figures).
//! Per bridge: `bridges/<name>/{connected,buffered,sent,received,dropped}`.
//! Notices: `clients/<clientid>/connected` and `.../disconnected` (JSON, not
//! retained) are raised by the event fan-out (`events::sys_notice`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use midge_protocol::{ByteStr, Properties, QoS};

use crate::broker::Broker;
use crate::message::Message;

/// The three damping periods of the load averages, in seconds.
const PERIODS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// A load series: a monotonic counter turned into damped per-minute rates.
#[derive(Debug)]
struct Load {
    name: &'static str,
    last: u64,
    avg: [f64; 3],
}

impl Load {
    fn new(name: &'static str, now: u64) -> Load {
        Load {
            name,
            last: now,
            avg: [0.0; 3],
        }
    }

    /// Folds in the counter's value after `secs` seconds.
    fn update(&mut self, value: u64, secs: f64) {
        let per_minute = value.saturating_sub(self.last) as f64 * 60.0 / secs;
        self.last = value;
        for (avg, (_, period)) in self.avg.iter_mut().zip(PERIODS) {
            let k = (-secs / period).exp();
            *avg = per_minute + k * (*avg - per_minute);
        }
    }
}

/// The counters the load series follow, in `Load` order.
fn load_counters(b: &Broker) -> [u64; 5] {
    let s = &b.stats;
    [
        s.messages_received.load(Ordering::Relaxed),
        s.publish_sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum(),
        s.bytes_received.load(Ordering::Relaxed),
        s.bytes_sent.load(Ordering::Relaxed),
        s.connections_total.load(Ordering::Relaxed),
    ]
}

/// Publishes the `$SYS` tree every `interval` until the task is aborted.
pub async fn run(broker: Arc<Broker>, bridges: Arc<crate::bridge::Registry>, interval: Duration) {
    let started = Instant::now();
    let prefix = crate::events::sys_notice::prefix();
    let names = [
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
        "connections",
    ];
    let first = load_counters(&broker);
    let mut loads: Vec<Load> = names
        .iter()
        .zip(first)
        .map(|(n, v)| Load::new(n, v))
        .collect();
    let mut published: HashMap<String, String> = HashMap::new();
    let mut maximum = 0u64;
    let mut last_tick = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let secs = now.duration_since(last_tick).as_secs_f64();
        last_tick = now;
        let mut values: Vec<(String, String)> = Vec::with_capacity(40);
        let mut put = |k: &str, v: String| values.push((k.to_string(), v));
        let s = &broker.stats;
        let (connected, total, subscriptions) = broker.client_counts();
        maximum = maximum.max(connected as u64);
        put("version", format!("midge {}", env!("CARGO_PKG_VERSION")));
        put("uptime", started.elapsed().as_secs().to_string());
        put("clients/connected", connected.to_string());
        put("clients/disconnected", (total - connected).to_string());
        put("clients/total", total.to_string());
        put("clients/maximum", maximum.to_string());
        let dropped = s.messages_dropped_queue_full.load(Ordering::Relaxed)
            + s.messages_dropped_expired.load(Ordering::Relaxed)
            + s.messages_dropped_too_large.load(Ordering::Relaxed);
        put(
            "messages/received",
            s.messages_received.load(Ordering::Relaxed).to_string(),
        );
        let sent: u64 = s
            .publish_sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        put("messages/sent", sent.to_string());
        put("messages/dropped", dropped.to_string());
        // Clients' retained messages, not this tree's own topics.
        put(
            "messages/retained",
            broker.retained.len_published().to_string(),
        );
        put(
            "bytes/received",
            s.bytes_received.load(Ordering::Relaxed).to_string(),
        );
        put(
            "bytes/sent",
            s.bytes_sent.load(Ordering::Relaxed).to_string(),
        );
        put("subscriptions/count", subscriptions.to_string());
        crate::bridge::status::sys(&bridges, &mut put);
        if secs > 0.0 {
            for (load, value) in loads.iter_mut().zip(load_counters(&broker)) {
                load.update(value, secs);
            }
        }
        for load in &loads {
            for (avg, (period, _)) in load.avg.iter().zip(PERIODS) {
                put(&format!("load/{}/{period}", load.name), format!("{avg:.2}"));
            }
        }
        for (key, value) in values {
            if key != "uptime" && published.get(&key) == Some(&value) {
                continue;
            }
            let topic = format!("{prefix}/{key}");
            publish(
                &broker,
                topic,
                Bytes::from(value.clone().into_bytes()),
                true,
            );
            published.insert(key, value);
        }
    }
}

/// Routes one broker-originated `$SYS` message (not counted as received;
/// retained in memory only: the tree is rebuilt after a restart).
fn publish(broker: &Broker, topic: String, payload: Bytes, retain: bool) {
    let msg = Message::new(
        ByteStr::from(topic),
        payload,
        QoS::AtMostOnce,
        retain,
        Properties::default(),
    );
    broker.route(Arc::new(msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_average_follows_a_steady_rate_and_decays() {
        let mut l = Load::new("x", 0);
        // 10 messages every 10 s = 60 per minute, for three hours.
        let mut v = 0;
        for _ in 0..1080 {
            v += 10;
            l.update(v, 10.0);
        }
        for avg in l.avg {
            assert!((avg - 60.0).abs() < 1.0, "{avg}");
        }
        // Then silence for 5 minutes: the 1-minute average falls fastest.
        for _ in 0..30 {
            l.update(v, 10.0);
        }
        assert!(l.avg[0] < 1.0, "{:?}", l.avg);
        assert!(l.avg[0] < l.avg[1] && l.avg[1] < l.avg[2], "{:?}", l.avg);
    }
}
