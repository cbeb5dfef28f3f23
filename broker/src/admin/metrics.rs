//! `GET /metrics`: the broker's counters in the Prometheus text exposition
//! format 0.0.4, rendered by hand from `Broker::stats`, the session
//! registry (gauges, one session lock at a time), the rule engine, the
//! plugin host and the store.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::Shared;
use crate::broker::{Broker, Stats};

/// The text of one scrape.
#[derive(Debug, Default)]
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    /// A summary family from `(label value, total nanoseconds, count)`
    /// rows, exported in seconds.
    fn summary<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        rows: impl IntoIterator<Item = (&'a str, u64, u64)>,
    ) {
        self.family(name, "summary", help);
        let (sum, count) = (format!("{name}_sum"), format!("{name}_count"));
        for (value, nanos, n) in rows {
            let l = [(label, value)];
            self.sample(&sum, &l, nanos as f64 / 1e9);
            self.sample(&count, &l, n);
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

const QOS: [&str; 3] = ["0", "1", "2"];

pub async fn scrape(State(s): State<Shared>) -> impl IntoResponse {
    let text = render(&s.broker, s.started.elapsed().as_secs_f64());
    let text = text + &render_bridges(&s.bridges);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Renders every metric.
pub fn render(b: &Broker, uptime_seconds: f64) -> String {
    let mut o = Out::default();
    o.family("midge_info", "gauge", "Broker version.");
    o.sample("midge_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    o.one(
        "midge_uptime_seconds",
        "gauge",
        "Seconds since the admin listener started.",
        uptime_seconds,
    );
    sessions(&mut o, b);
    messages(&mut o, &b.stats);
    rules(&mut o, b);
    plugins(&mut o, b);
    sql(&mut o, b);
    kafka(&mut o, b);
    store(&mut o, b);
    if let Some(c) = b.cluster.get() {
        c.cluster().render_metrics(&mut o.0);
    }
    o.0
}

/// Connections, limits, sessions, retained messages and queues: one pass
/// over the session registry.
fn sessions(o: &mut Out, b: &Broker) {
    let st = &b.stats;
    let (mut connected, mut sessions, mut persistent, mut subs) = (0u64, 0u64, 0u64, 0u64);
    let (mut queued, mut queued_max, mut queued_bytes) = (0u64, 0u64, 0u64);
    let (mut inflight, mut inflight_max) = (0u64, 0u64);
    for session in b.sessions() {
        let x = session.state.lock();
        sessions += 1;
        connected += u64::from(x.conn.is_some());
        persistent += u64::from(x.persist);
        subs += x.subscriptions.len() as u64;
        queued += x.queue.len() as u64;
        queued_max = queued_max.max(x.queue.len() as u64);
        queued_bytes += x.queued_bytes as u64;
        inflight += x.inflight.len() as u64;
        inflight_max = inflight_max.max(x.inflight.len() as u64);
    }
    o.one(
        "midge_connections_current",
        "gauge",
        "Client connections attached to a session now.",
        connected,
    );
    o.one(
        "midge_connections_total",
        "counter",
        "Connections accepted (CONNACK success).",
        get(&st.connections_total),
    );
    o.family(
        "midge_connections_refused_total",
        "counter",
        "CONNECTs refused, by CONNACK reason code (MQTT 5.0 codes).",
    );
    for (code, n) in st.connacks_refused.nonzero() {
        let code = format!("0x{code:02X}");
        o.sample("midge_connections_refused_total", &[("code", &code)], n);
    }
    o.one(
        "midge_sockets_open",
        "gauge",
        "Connections admitted by the listeners and open now (before and after CONNECT).",
        get(&st.connections_current),
    );
    o.one(
        "midge_connections_parked",
        "gauge",
        "Idle connections parked now ([limits] park_after): their loop's memory freed until they wake.",
        get(&st.connections_parked),
    );
    limits(o, st);
    o.one(
        "midge_sessions",
        "gauge",
        "Sessions, connected or not.",
        sessions,
    );
    o.one(
        "midge_sessions_persistent",
        "gauge",
        "Sessions kept in the durable store.",
        persistent,
    );
    o.one(
        "midge_subscriptions",
        "gauge",
        "Subscriptions of all sessions.",
        subs,
    );
    o.one(
        "midge_retained_messages",
        "gauge",
        "Retained messages published by clients (the broker's $SYS topics are not counted).",
        b.retained.len_published(),
    );
    o.one(
        "midge_retained_bytes",
        "gauge",
        "Bytes (topic + payload) of the retained messages clients keep ([mqtt] max_retained_bytes bounds them).",
        b.retained.bytes(),
    );
    o.one(
        "midge_retained_refused_total",
        "counter",
        "Retained messages not kept because the retained budget ([mqtt] max_retained, max_retained_bytes) was full; they were still delivered.",
        b.retained.refused(),
    );
    o.one(
        "midge_sys_retained_topics",
        "gauge",
        "The broker's own retained $SYS topics.",
        b.retained.len_sys(),
    );
    o.one(
        "midge_session_queue_messages",
        "gauge",
        "Messages queued in all sessions.",
        queued,
    );
    o.one(
        "midge_session_queue_messages_max",
        "gauge",
        "Longest session queue.",
        queued_max,
    );
    o.one(
        "midge_session_queue_bytes",
        "gauge",
        "Payload bytes queued in all sessions.",
        queued_bytes,
    );
    o.one(
        "midge_inflight_messages",
        "gauge",
        "QoS 1/2 messages sent and not yet acknowledged, all sessions.",
        inflight,
    );
    o.one(
        "midge_inflight_messages_max",
        "gauge",
        "Most unacknowledged messages of one session.",
        inflight_max,
    );
}

/// How often each `[limits]` limit triggered.
fn limits(o: &mut Out, st: &Stats) {
    o.family(
        "midge_limit_triggered_total",
        "counter",
        "Times a [limits] limit triggered, by limit.",
    );
    for (limit, counter) in [
        ("max_connections", &st.connections_refused_max_connections),
        (
            "max_listener_connections",
            &st.connections_refused_listener_limit,
        ),
        ("max_connection_rate", &st.connections_refused_rate),
        ("connect_timeout", &st.connections_refused_connect_timeout),
        ("max_publish_rate", &st.limit_publish_rate),
        ("max_publish_bytes_rate", &st.limit_publish_bytes_rate),
        ("max_subscriptions", &st.limit_subscriptions),
        ("allow_anonymous", &st.connections_refused_anonymous),
        ("max_packet_size", &st.limit_packet_too_large),
        ("receive_maximum", &st.limit_receive_maximum),
        ("max_queued_messages", &st.messages_dropped_queue_full),
    ] {
        o.sample(
            "midge_limit_triggered_total",
            &[("limit", limit)],
            get(counter),
        );
    }
}

/// Messages and bytes through the publish pipeline and the sockets.
fn messages(o: &mut Out, st: &Stats) {
    o.one(
        "midge_messages_received_total",
        "counter",
        "Messages entering the publish pipeline (clients, wills, plugins, rules, the admin API).",
        get(&st.messages_received),
    );
    o.one(
        "midge_sys_messages_published_total",
        "counter",
        "$SYS messages the broker published (not in received or dropped).",
        get(&st.sys_messages_published),
    );
    o.one(
        "midge_messages_routed_total",
        "counter",
        "Deliveries queued to sessions.",
        get(&st.messages_routed),
    );
    o.family(
        "midge_messages_dropped_total",
        "counter",
        "Messages or deliveries dropped, by reason.",
    );
    for (reason, n) in [
        ("no_subscribers", &st.messages_dropped_no_subscribers),
        ("queue_full", &st.messages_dropped_queue_full),
        ("expired", &st.messages_dropped_expired),
        ("too_large", &st.messages_dropped_too_large),
    ] {
        o.sample(
            "midge_messages_dropped_total",
            &[("reason", reason)],
            get(n),
        );
    }
    o.family(
        "midge_publish_received_total",
        "counter",
        "PUBLISH packets received from clients, by QoS.",
    );
    for (q, n) in QOS.iter().zip(&st.publish_received) {
        o.sample("midge_publish_received_total", &[("qos", q)], get(n));
    }
    o.family(
        "midge_publish_sent_total",
        "counter",
        "PUBLISH packets sent to clients, by QoS (resends included).",
    );
    for (q, n) in QOS.iter().zip(&st.publish_sent) {
        o.sample("midge_publish_sent_total", &[("qos", q)], get(n));
    }
    o.one(
        "midge_bytes_received_total",
        "counter",
        "Bytes read from MQTT connections.",
        get(&st.bytes_received),
    );
    o.one(
        "midge_bytes_sent_total",
        "counter",
        "Bytes written to MQTT connections.",
        get(&st.bytes_sent),
    );
}

/// The bridges' families (label `bridge`): link state, buffer, traffic,
/// drops. Nothing without bridges.
pub fn render_bridges(bridges: &crate::bridge::Registry) -> String {
    let mut o = Out(String::new());
    bridges_into(&mut o, bridges);
    o.0
}

fn bridges_into(o: &mut Out, bridges: &crate::bridge::Registry) {
    use crate::bridge::status::Dropped;
    let list = bridges.list();
    if list.is_empty() {
        return;
    }
    type Gauge = fn(&crate::bridge::Bridge) -> u64;
    let gauges: [(&str, &str, &str, Gauge); 9] = [
        (
            "midge_bridge_connected",
            "gauge",
            "1 while the bridge's link to its remote is up.",
            |x| u64::from(x.status.is_connected()),
        ),
        (
            "midge_bridge_buffered_messages",
            "gauge",
            "Messages held for the remote (queued and in flight).",
            |x| x.buffered().0 as u64,
        ),
        (
            "midge_bridge_buffered_bytes",
            "gauge",
            "Payload bytes held for the remote.",
            |x| x.buffered().1 as u64,
        ),
        (
            "midge_bridge_messages_sent_total",
            "counter",
            "PUBLISH packets written to the remote (resends included).",
            |x| get(&x.status.sent),
        ),
        (
            "midge_bridge_messages_acked_total",
            "counter",
            "QoS 1/2 messages the remote acknowledged.",
            |x| get(&x.status.acked),
        ),
        (
            "midge_bridge_messages_received_total",
            "counter",
            "PUBLISH packets received from the remote.",
            |x| get(&x.status.received),
        ),
        (
            "midge_bridge_connects_total",
            "counter",
            "Links the remote accepted.",
            |x| get(&x.status.connects),
        ),
        (
            "midge_bridge_connect_failures_total",
            "counter",
            "Connection attempts that failed.",
            |x| get(&x.status.connect_failures),
        ),
        (
            "midge_bridge_disconnects_total",
            "counter",
            "Links that ended after being up.",
            |x| get(&x.status.disconnects),
        ),
    ];
    for (name, kind, help, f) in gauges {
        o.family(name, kind, help);
        for x in list {
            o.sample(name, &[("bridge", x.name())], f(x));
        }
    }
    let name = "midge_bridge_messages_dropped_total";
    o.family(
        name,
        "counter",
        "Messages for the remote that were not sent, by reason.",
    );
    for x in list {
        o.sample(
            name,
            &[("bridge", x.name()), ("reason", "buffer_full")],
            x.dropped_full(),
        );
        for d in Dropped::ALL {
            o.sample(
                name,
                &[("bridge", x.name()), ("reason", d.name())],
                x.status.dropped(d),
            );
        }
    }
}

fn rules(o: &mut Out, b: &Broker) {
    let stats = b.rules.stats();
    type Pick = fn(&crate::rules::RuleStats) -> u64;
    let families: [(&str, &str, Pick); 6] = [
        (
            "midge_rule_matched_total",
            "Messages or events whose FROM matched the rule.",
            |m| m.matched,
        ),
        (
            "midge_rule_passed_total",
            "Evaluations with at least one output row.",
            |m| m.passed,
        ),
        (
            "midge_rule_no_result_total",
            "Evaluations where WHERE did not hold.",
            |m| m.no_result,
        ),
        ("midge_rule_failed_total", "Evaluations that failed.", |m| {
            m.failed
        }),
        (
            "midge_rule_actions_success_total",
            "Actions that succeeded.",
            |m| m.actions_success,
        ),
        (
            "midge_rule_actions_failed_total",
            "Actions that failed or were dropped.",
            |m| m.actions_failed,
        ),
    ];
    for (name, help, pick) in families {
        o.family(name, "counter", help);
        for m in &stats {
            o.sample(name, &[("rule", &m.id)], pick(m));
        }
    }
    o.summary(
        "midge_rule_eval_seconds",
        "Time spent evaluating the rule (WHERE and SELECT) for messages or events its FROM matched.",
        "rule",
        stats.iter().map(|m| (m.id.as_str(), m.eval_nanos, m.matched)),
    );
    o.summary(
        "midge_rule_action_seconds",
        "Time spent running the rule's actions (republish, log, plugin).",
        "rule",
        stats
            .iter()
            .map(|m| (m.id.as_str(), m.action_nanos, m.action_runs)),
    );
    o.family("midge_rule_enabled", "gauge", "1 when the rule is enabled.");
    for m in &stats {
        o.sample(
            "midge_rule_enabled",
            &[("rule", &m.id)],
            u8::from(m.enabled),
        );
    }
    o.one(
        "midge_rule_outputs_dropped_total",
        "counter",
        "Rule outputs dropped because their action lane was full.",
        get(&b.rules.actions_dropped),
    );
    o.one(
        "midge_rule_publisher_hold_timeouts_total",
        "counter",
        "Times a publisher held back for a deep action lane was let go after the longest hold, the lane's actions being too slow.",
        get(&b.rules.lanes.hold_timeouts),
    );
}

fn plugins(o: &mut Out, b: &Broker) {
    let Some(host) = b.plugins() else {
        return;
    };
    o.one(
        "midge_plugin_events_dropped_total",
        "counter",
        "Plugin events (on-event) dropped because the event queue was full.",
        get(&b.plugin_events.dropped),
    );
    let metrics = host.metrics();
    type Pick = fn(&midge_plugin::PluginMetrics) -> u64;
    let counters: [(&str, &str, Pick); 10] = [
        (
            "midge_plugin_failures_total",
            "Failed calls of any kind.",
            |m| m.failures,
        ),
        ("midge_plugin_traps_total", "Calls that trapped.", |m| {
            m.traps
        }),
        (
            "midge_plugin_timeouts_total",
            "Calls past their deadline.",
            |m| m.timeouts,
        ),
        (
            "midge_plugin_out_of_memory_total",
            "Calls that hit the memory cap.",
            |m| m.out_of_memory,
        ),
        (
            "midge_plugin_invalid_outputs_total",
            "Calls whose answer broke the output rules (a topic, property, size or reason code no client could send, a batch answer that does not fit).",
            |m| m.invalid_outputs,
        ),
        (
            "midge_plugin_busy_total",
            "Calls that found every instance busy.",
            |m| m.busy,
        ),
        (
            "midge_plugin_suspended_calls_total",
            "Calls skipped while suspended.",
            |m| m.suspended_calls,
        ),
        (
            "midge_plugin_suspensions_total",
            "Times the plugin was suspended.",
            |m| m.suspensions,
        ),
        ("midge_plugin_reloads_total", "Successful reloads.", |m| {
            m.reloads
        }),
        (
            "midge_plugin_reload_failures_total",
            "Failed reloads.",
            |m| m.reload_failures,
        ),
    ];
    for (name, help, pick) in counters {
        o.family(name, "counter", help);
        for m in &metrics {
            o.sample(name, &[("plugin", &m.name)], pick(m));
        }
    }
    o.summary(
        "midge_plugin_call_seconds",
        "Time spent in plugin calls.",
        "plugin",
        metrics
            .iter()
            .map(|m| (m.name.as_str(), m.call_nanos, m.calls)),
    );
    o.family(
        "midge_plugin_state",
        "gauge",
        "1 for the plugin's current state (running, suspended, disabled).",
    );
    for m in &metrics {
        let state = m.state();
        o.sample(
            "midge_plugin_state",
            &[("plugin", &m.name), ("state", state)],
            1,
        );
    }
}

/// The `sql` capability's databases: what `enqueue` batched.
fn sql(o: &mut Out, b: &Broker) {
    let Some(sql) = b.sql.as_ref() else {
        return;
    };
    let dbs: Vec<_> = sql.databases().collect();
    type Pick = fn(&crate::services::postgres::DbStats) -> u64;
    let counters: [(&str, &str, Pick); 4] = [
        (
            "midge_plugin_sql_rows_total",
            "Enqueued statements written.",
            |s| get(&s.rows),
        ),
        (
            "midge_plugin_sql_batches_total",
            "Batches of enqueued statements written.",
            |s| get(&s.batches),
        ),
        (
            "midge_plugin_sql_failures_total",
            "Enqueued statements that failed (rejected, or the database unreachable) and were dropped.",
            |s| get(&s.failures),
        ),
        (
            "midge_plugin_sql_queue_full_total",
            "Enqueue calls refused because the queue was full.",
            |s| get(&s.queue_full),
        ),
    ];
    for (name, help, pick) in counters {
        o.family(name, "counter", help);
        for d in &dbs {
            o.sample(name, &[("database", d.name)], pick(d.stats));
        }
    }
    o.family(
        "midge_plugin_sql_queue_depth",
        "gauge",
        "Enqueued statements waiting for the batcher.",
    );
    for d in &dbs {
        o.sample(
            "midge_plugin_sql_queue_depth",
            &[("database", d.name)],
            d.queued,
        );
    }
}

/// The producer behind plugins' `kafka` capability, when configured.
fn kafka(o: &mut Out, b: &Broker) {
    let Some(k) = b.kafka.as_ref() else {
        return;
    };
    let s = k.stats();
    o.one(
        "midge_plugin_kafka_produced_total",
        "counter",
        "Records plugins queued to the Kafka producer.",
        get(&s.produced),
    );
    o.one(
        "midge_plugin_kafka_delivered_total",
        "counter",
        "Records Kafka acknowledged.",
        get(&s.delivered),
    );
    o.one(
        "midge_plugin_kafka_failed_total",
        "counter",
        "Records that failed for good after the producer's retries.",
        get(&s.failed),
    );
    o.one(
        "midge_plugin_kafka_queue_full_total",
        "counter",
        "Records refused because the producer's queue was full.",
        get(&s.queue_full),
    );
    o.one(
        "midge_plugin_kafka_queue_depth",
        "gauge",
        "Records queued or in flight, not yet delivered or failed.",
        k.queue_depth(),
    );
}

fn store(o: &mut Out, b: &Broker) {
    let Some(store) = &b.store else {
        return;
    };
    let s = store.stats();
    o.one(
        "midge_store_ops_total",
        "counter",
        "Changes submitted to the durable store.",
        get(&s.ops),
    );
    o.one(
        "midge_store_records_written_total",
        "counter",
        "Records written (after folding).",
        get(&s.records_written),
    );
    o.one(
        "midge_store_errors_total",
        "counter",
        "Failed commits.",
        get(&s.errors),
    );
    o.family(
        "midge_store_commit_seconds",
        "histogram",
        "Duration of one synced commit (a batch) by the store's commit thread.",
    );
    let mut cumulative = 0;
    for (i, le) in crate::store::COMMIT_BUCKETS_MICROS.iter().enumerate() {
        cumulative += get(&s.commit_buckets[i]);
        let le = format!("{}", *le as f64 / 1e6);
        o.sample(
            "midge_store_commit_seconds_bucket",
            &[("le", &le)],
            cumulative,
        );
    }
    o.sample(
        "midge_store_commit_seconds_bucket",
        &[("le", "+Inf")],
        get(&s.commits),
    );
    o.sample(
        "midge_store_commit_seconds_sum",
        &[],
        get(&s.commit_micros_total) as f64 / 1e6,
    );
    o.sample("midge_store_commit_seconds_count", &[], get(&s.commits));
    o.one(
        "midge_store_commit_seconds_max",
        "gauge",
        "Longest commit so far.",
        get(&s.commit_micros_max) as f64 / 1e6,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_parseable_text() {
        let b = Broker::new(Default::default());
        b.stats.connacks_refused.add(0x87);
        b.stats.publish_received[1].fetch_add(3, Ordering::Relaxed);
        let text = render(&b, 1.5);
        assert!(text.contains("midge_connections_refused_total{code=\"0x87\"} 1\n"));
        assert!(text.contains("midge_publish_received_total{qos=\"1\"} 3\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap_or(("", ""));
            assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
