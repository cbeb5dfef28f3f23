//! The overview series behind the dashboard's charts: one [`Point`] every
//! [`INTERVAL`], the last [`KEEP`] of them (15 minutes) kept in memory in a
//! fixed ring, and a live stream of new points (server-sent events).
//!
//! One task ([`run`], started with the admin listener and aborted with it)
//! samples. Most of a point is counters and gauges the broker keeps anyway
//! (atomics, the retained map's length, the listeners' counts, the rules'
//! and plugins' counters): a few hundred nanoseconds. The gauges summed over
//! the session registry (sessions, subscriptions, queued and inflight
//! messages) need a pass over every session; that pass is timed and spaced
//! so it takes at most 1 % of one core (every second with up to some ten
//! thousand sessions, less often with millions; points in between repeat
//! the last pass). Nobody watching costs nothing more: the stream is a
//! broadcast channel with no receivers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::Shared;
use crate::broker::Broker;

/// Time between two points.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Points kept: 15 minutes.
pub const KEEP: usize = 900;
/// The registry pass may take this fraction of the time between passes.
const REGISTRY_DUTY: u32 = 100;

/// One point of the overview series. Gauges are values at `t`; `*_rate`
/// fields are per second over the interval that ends at `t`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Point {
    /// Milliseconds since the epoch.
    pub t: i64,
    /// Connections open (admitted by a listener, before or after CONNECT).
    pub connections: u64,
    /// Connections open per listener.
    pub conn_mqtt: u64,
    pub conn_ws: u64,
    pub conn_mqtts: u64,
    pub conn_wss: u64,
    /// Sessions, connected or not (registry pass).
    pub sessions: u64,
    /// Subscriptions of all sessions (registry pass).
    pub subscriptions: u64,
    /// Messages queued in all sessions (registry pass).
    pub queued: u64,
    /// QoS 1/2 messages sent and not acknowledged (registry pass).
    pub inflight: u64,
    pub retained: u64,
    /// Messages entering the publish pipeline.
    pub messages_in_rate: f64,
    /// PUBLISH packets sent to clients.
    pub messages_out_rate: f64,
    pub bytes_in_rate: f64,
    pub bytes_out_rate: f64,
    /// Deliveries dropped: queue full, expired, too large for the client.
    pub dropped_rate: f64,
    /// Publishes that matched no subscription.
    pub no_subscribers_rate: f64,
    /// Rules: messages or events matched, evaluations with output, failed
    /// evaluations, actions run successfully and failed (all rules).
    pub rule_matched_rate: f64,
    pub rule_passed_rate: f64,
    pub rule_failed_rate: f64,
    pub rule_actions_rate: f64,
    pub rule_actions_failed_rate: f64,
    /// Plugins: calls and failed calls (all plugins).
    pub plugin_calls_rate: f64,
    pub plugin_failures_rate: f64,
    /// Cluster: messages sent to and received from other nodes (0 on a
    /// node that is not clustered).
    pub cluster_forwarded_rate: f64,
    pub cluster_received_rate: f64,
}

/// Counters read at one instant, turned into rates between two readings.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    dropped: u64,
    no_subscribers: u64,
    rule_matched: u64,
    rule_passed: u64,
    rule_failed: u64,
    rule_actions: u64,
    rule_actions_failed: u64,
    plugin_calls: u64,
    plugin_failures: u64,
    cluster_forwarded: u64,
    cluster_received: u64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Counters {
    fn read(b: &Broker) -> Counters {
        let st = &b.stats;
        let mut c = Counters {
            messages_in: get(&st.messages_received),
            messages_out: st.publish_sent.iter().map(get).sum(),
            bytes_in: get(&st.bytes_received),
            bytes_out: get(&st.bytes_sent),
            dropped: get(&st.messages_dropped_queue_full)
                + get(&st.messages_dropped_expired)
                + get(&st.messages_dropped_too_large),
            no_subscribers: get(&st.messages_dropped_no_subscribers),
            ..Counters::default()
        };
        for r in b.rules.stats() {
            c.rule_matched += r.matched;
            c.rule_passed += r.passed;
            c.rule_failed += r.failed;
            c.rule_actions += r.actions_success;
            c.rule_actions_failed += r.actions_failed;
        }
        if let Some(host) = b.plugins() {
            for m in host.metrics() {
                c.plugin_calls += m.calls;
                c.plugin_failures += m.failures;
            }
        }
        if let Some(node) = b.cluster.get() {
            let t = node.cluster().metrics.traffic();
            c.cluster_forwarded = t.forwarded;
            c.cluster_received = t.received;
        }
        c
    }
}

/// Per second from `a` to `b` over `secs` (0 when a counter went down: a
/// rule or plugin removed).
fn rate(a: u64, b: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    // Rounded to a thousandth: the JSON stays short.
    (b.saturating_sub(a) as f64 / secs * 1000.0).round() / 1000.0
}

/// The gauges of one pass over the session registry.
#[derive(Debug, Clone, Copy, Default)]
struct Registry {
    sessions: u64,
    subscriptions: u64,
    queued: u64,
    inflight: u64,
}

impl Registry {
    fn read(b: &Broker) -> Registry {
        let mut r = Registry::default();
        for s in b.sessions() {
            let x = s.state.lock();
            r.sessions += 1;
            r.subscriptions += x.subscriptions.len() as u64;
            r.queued += x.queue.len() as u64;
            r.inflight += x.inflight.len() as u64;
        }
        r
    }
}

/// The sampler's memory between two points.
#[derive(Debug)]
struct Sampler {
    last: Option<(Instant, Counters)>,
    registry: Registry,
    next_pass: Instant,
}

impl Sampler {
    fn new() -> Sampler {
        Sampler {
            last: None,
            registry: Registry::default(),
            next_pass: Instant::now(),
        }
    }

    fn sample(&mut self, s: &super::AdminState) -> Point {
        let b = &s.broker;
        let now = Instant::now();
        if now >= self.next_pass {
            self.registry = Registry::read(b);
            let cost = now.elapsed();
            self.next_pass = now + INTERVAL.max(cost * REGISTRY_DUTY);
        }
        let c = Counters::read(b);
        let (was, secs) = match self.last {
            Some((at, was)) => (was, now.duration_since(at).as_secs_f64()),
            None => (c, 0.0),
        };
        self.last = Some((now, c));
        let [conn_mqtt, conn_ws, conn_mqtts, conn_wss] = s.listeners.counts();
        let r = self.registry;
        Point {
            t: crate::message::now_ms(),
            connections: get(&b.stats.connections_current),
            conn_mqtt,
            conn_ws,
            conn_mqtts,
            conn_wss,
            sessions: r.sessions,
            subscriptions: r.subscriptions,
            queued: r.queued,
            inflight: r.inflight,
            retained: b.retained.len() as u64,
            messages_in_rate: rate(was.messages_in, c.messages_in, secs),
            messages_out_rate: rate(was.messages_out, c.messages_out, secs),
            bytes_in_rate: rate(was.bytes_in, c.bytes_in, secs),
            bytes_out_rate: rate(was.bytes_out, c.bytes_out, secs),
            dropped_rate: rate(was.dropped, c.dropped, secs),
            no_subscribers_rate: rate(was.no_subscribers, c.no_subscribers, secs),
            rule_matched_rate: rate(was.rule_matched, c.rule_matched, secs),
            rule_passed_rate: rate(was.rule_passed, c.rule_passed, secs),
            rule_failed_rate: rate(was.rule_failed, c.rule_failed, secs),
            rule_actions_rate: rate(was.rule_actions, c.rule_actions, secs),
            rule_actions_failed_rate: rate(was.rule_actions_failed, c.rule_actions_failed, secs),
            plugin_calls_rate: rate(was.plugin_calls, c.plugin_calls, secs),
            plugin_failures_rate: rate(was.plugin_failures, c.plugin_failures, secs),
            cluster_forwarded_rate: rate(was.cluster_forwarded, c.cluster_forwarded, secs),
            cluster_received_rate: rate(was.cluster_received, c.cluster_received, secs),
        }
    }
}

/// The kept points and the live stream's receiving end.
#[derive(Debug)]
pub struct History {
    ring: Mutex<VecDeque<Point>>,
    /// Never read: new subscribers are made from it ([`broadcast::Receiver::resubscribe`]).
    rx: broadcast::Receiver<Point>,
    /// Taken by the sampler, the only sender: when its task stops (the
    /// admin listener's shutdown), every stream ends.
    tx: Mutex<Option<broadcast::Sender<Point>>>,
}

impl Default for History {
    fn default() -> History {
        let (tx, rx) = broadcast::channel(16);
        History {
            ring: Mutex::new(VecDeque::with_capacity(KEEP)),
            rx,
            tx: Mutex::new(Some(tx)),
        }
    }
}

impl History {
    fn push(&self, p: Point) {
        let mut ring = self.ring.lock();
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(p);
    }

    /// The kept points, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.ring.lock().iter().copied().collect()
    }

    /// `{"interval_seconds", "keep_seconds", "series": {field: [values]}}`:
    /// one array per field of [`Point`], oldest first.
    pub fn columns(&self) -> Value {
        let points = self.points();
        let mut series: Map<String, Value> = Map::new();
        for p in &points {
            if let Ok(Value::Object(fields)) = serde_json::to_value(p) {
                for (k, v) in fields {
                    match series.get_mut(&k) {
                        Some(Value::Array(col)) => col.push(v),
                        _ => {
                            series.insert(k, Value::Array(vec![v]));
                        }
                    }
                }
            }
        }
        json!({
            "interval_seconds": INTERVAL.as_secs(),
            "keep_seconds": INTERVAL.as_secs() * KEEP as u64,
            "length": points.len(),
            "series": series,
        })
    }
}

/// Samples every [`INTERVAL`] until the task is aborted.
pub async fn run(state: Shared) {
    let Some(tx) = state.history.tx.lock().take() else {
        return; // Another sampler runs for this state.
    };
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sampler = Sampler::new();
    loop {
        tick.tick().await;
        let st = state.clone();
        // Off the runtime's workers: the registry pass may take a while
        // with millions of sessions.
        let step = tokio::task::spawn_blocking(move || {
            let p = sampler.sample(&st);
            (sampler, p)
        });
        let Ok((back, point)) = step.await else {
            return;
        };
        sampler = back;
        state.history.push(point);
        // No receiver (nobody watching): nothing is sent.
        let _ = tx.send(point);
    }
}

/// `GET /api/v1/metrics/history`.
pub async fn history(State(s): State<Shared>) -> Json<Value> {
    Json(s.history.columns())
}

/// `GET /api/v1/metrics/stream`: server-sent events; first `history` (as
/// `GET /metrics/history`), then one `sample` per new point. A point may
/// be in both; clients skip points not newer than the last they have.
pub async fn stream(State(s): State<Shared>) -> impl IntoResponse {
    let rx = s.history.rx.resubscribe();
    let first = Event::default()
        .event("history")
        .json_data(s.history.columns());
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(p) => return Some((Event::default().event("sample").json_data(p), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let events = futures_util::stream::once(async move { first }).chain(rest);
    (
        [(axum::http::header::CACHE_CONTROL, "no-cache")],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `MetricsPoint` in openapi.json names exactly the fields of [`Point`].
    #[test]
    fn point_schema_names_exactly_its_fields() {
        let doc: Value = serde_json::from_str(super::super::openapi::SPEC).unwrap();
        let props = doc["components"]["schemas"]["MetricsPoint"]["properties"]
            .as_object()
            .expect("MetricsPoint properties");
        let mut described: Vec<&String> = props.keys().collect();
        described.sort();
        let Ok(Value::Object(fields)) = serde_json::to_value(Point::default()) else {
            panic!("a Point serializes to an object");
        };
        let mut served: Vec<&String> = fields.keys().collect();
        served.sort();
        assert_eq!(served, described);
    }

    #[test]
    fn ring_keeps_the_last_points_and_columns_align() {
        let h = History::default();
        for i in 0..(KEEP + 5) {
            h.push(Point {
                t: i as i64,
                connections: i as u64 * 2,
                ..Point::default()
            });
        }
        let points = h.points();
        assert_eq!(points.len(), KEEP);
        assert_eq!(points[0].t, 5);
        let c = h.columns();
        assert_eq!(c["length"], KEEP);
        let t = c["series"]["t"].as_array().unwrap();
        let conns = c["series"]["connections"].as_array().unwrap();
        assert_eq!(t.len(), KEEP);
        assert_eq!(conns.len(), KEEP);
        assert_eq!(t[KEEP - 1], json!(KEEP + 4));
        assert_eq!(conns[KEEP - 1], json!((KEEP + 4) * 2));
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate(10, 30, 2.0), 10.0);
        assert_eq!(rate(30, 10, 2.0), 0.0);
        assert_eq!(rate(0, 5, 0.0), 0.0);
        assert_eq!(rate(0, 1, 3.0), 0.333);
    }
}
