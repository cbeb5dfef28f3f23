//! Criterion benches of the broker's rule engine: the cost of
//! `RuleEngine::on_message` for one publish, with no rules, with 1 rule and
//! with 1,000 rules on distinct filters (`sensor/{i}/#`), where the message
//! matches exactly one rule. The FROM index is a trie, so the 1,000-rule
//! figure should be close to the 1-rule one. Rules have no actions: only
//! matching and evaluation are measured.
//!
//! Run: `cargo bench -p midge --bench rules` (add `-- --quick` for a short run).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use midge::message::Message;
use midge::rules::{RuleConfig, RuleEngine};
use midge_protocol::{ByteStr, Properties, QoS};

const PAYLOAD: &[u8] = br#"{"temp": 31.5, "hum": 40, "loc": {"lat": 1.0, "lon": 2.0}}"#;

/// `n` rules, rule `i` on `sensor/{i}/#`, each with `sql_for(i)` and no actions.
fn engine(n: usize, sql_for: impl Fn(usize) -> String) -> RuleEngine {
    let configs: Vec<RuleConfig> = (0..n)
        .map(|i| RuleConfig {
            id: format!("r{i}"),
            sql: sql_for(i),
            actions: Vec::new(),
            enabled: true,
            description: String::new(),
        })
        .collect();
    let engine = RuleEngine::default();
    let loaded = engine.load(&configs).expect("rules compile");
    assert_eq!(loaded, n);
    engine
}

fn message() -> Message {
    Message::new(
        ByteStr::from("sensor/1/temp"),
        Bytes::from_static(PAYLOAD),
        QoS::AtMostOnce,
        false,
        Properties::default(),
    )
}

/// Runs one group: no rules, 1 rule, 1,000 rules, all built with `sql_for`.
fn group(c: &mut Criterion, name: &str, sql_for: fn(usize) -> String) {
    let msg = message();
    let mut g = c.benchmark_group(name);
    for (label, n) in [("none", 0), ("1_rule", 1), ("1000_rules", 1000)] {
        // With n > 1 rule 1 is the one `sensor/1/temp` matches; with n == 1
        // the single rule must be that one too.
        let e = if n == 1 {
            engine(1, |_| sql_for(1))
        } else {
            engine(n, sql_for)
        };
        g.bench_function(label, |b| b.iter(|| e.on_message(black_box(&msg))));
        if n > 0 {
            let stats = e.stats();
            let matched: u64 = stats.iter().map(|s| s.matched).sum();
            let passed: u64 = stats.iter().map(|s| s.passed).sum();
            let failed: u64 = stats.iter().map(|s| s.failed).sum();
            assert!(matched > 0, "{name}/{label}: no rule matched");
            assert_eq!(failed, 0, "{name}/{label}: rule evaluation failed");
            assert_eq!(passed, matched, "{name}/{label}: WHERE must hold");
            assert_eq!(
                stats.iter().filter(|s| s.matched > 0).count(),
                1,
                "{name}/{label}: the message must match exactly one rule"
            );
        }
    }
    g.finish();
}

fn on_message_topic_only(c: &mut Criterion) {
    group(c, "on_message/select_topic", |i| {
        format!(r#"SELECT topic, qos FROM "sensor/{i}/#""#)
    });
}

fn on_message_json(c: &mut Criterion) {
    group(c, "on_message/json_where", |i| {
        format!(r#"SELECT payload.temp AS t FROM "sensor/{i}/#" WHERE t > 30"#)
    });
}

criterion_group!(benches, on_message_topic_only, on_message_json);
criterion_main!(benches);
