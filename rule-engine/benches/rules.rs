//! Criterion benches: parse+plan, FROM filter matching, evaluation of a
//! simple select over a JSON payload, a jq rule. Run: `cargo bench -p
//! midge-rules` (or `-- jq` for the jq pair only).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use midge_rules::{topic_matches, Input, Rule};

const SQL: &str = r#"SELECT payload.temp AS t, clientid FROM "sensor/#" WHERE payload.temp > 30"#;
const PAYLOAD: &[u8] = br#"{"temp": 31.5, "hum": 40, "loc": {"lat": 1.0, "lon": 2.0}}"#;

fn parse(c: &mut Criterion) {
    c.bench_function("compile/simple_select", |b| {
        b.iter(|| Rule::compile("r", black_box(SQL)))
    });
    let complex = r#"FOREACH payload.sensors AS s
        DO s.id AS id, CASE WHEN s.v > 10 THEN 'hi' ELSE 'lo' END AS level, upper(clientid) AS c
        INCASE s.v IS NOT NULL AND s.id IN ('a', 'b', 'c')
        FROM "sensor/+/data", "$events/message_delivered"
        WHERE regex_match(topic, '^sensor/[0-9]+/data$')"#;
    c.bench_function("compile/foreach_case_regex", |b| {
        b.iter(|| Rule::compile("r", black_box(complex)))
    });
}

fn filter_match(c: &mut Criterion) {
    c.bench_function("topic_matches/hash", |b| {
        b.iter(|| topic_matches(black_box("sensor/#"), black_box("sensor/1/temp")))
    });
    c.bench_function("topic_matches/plus_miss", |b| {
        b.iter(|| topic_matches(black_box("a/+/c/+/e"), black_box("a/b/c/d/f")))
    });
    let rule = Rule::compile("r", SQL).expect("valid");
    let input = Input::message("sensor/1/temp", PAYLOAD);
    c.bench_function("rule_matches", |b| {
        b.iter(|| rule.matches(black_box(&input)))
    });
}

fn evaluate(c: &mut Criterion) {
    let rule = Rule::compile("r", SQL).expect("valid");
    c.bench_function("evaluate/simple_select_json", |b| {
        b.iter(|| {
            // A fresh input per message: includes the one JSON decode.
            let input = Input::message("sensor/1", black_box(PAYLOAD)).clientid("c1");
            rule.apply(&input)
        })
    });
    let raw = Rule::compile("r", r#"SELECT clientid, topic, qos FROM "sensor/#""#).expect("valid");
    c.bench_function("evaluate/no_payload", |b| {
        b.iter(|| {
            let input = Input::message("sensor/1", black_box(PAYLOAD))
                .clientid("c1")
                .qos(1);
            raw.apply(&input)
        })
    });
}

/// The per-message cost of a rule calling `jq` on the payload (compiled
/// once at load; the payload decoded, handed to jaq, the outputs converted
/// back), next to the same conversion written in rule SQL.
fn jq(c: &mut Criterion) {
    let rule = Rule::compile(
        "jq",
        r#"SELECT jq('{t_f: (.temp * 1.8 + 32), loc}', payload) AS out FROM "sensor/#""#,
    )
    .expect("valid");
    c.bench_function("evaluate/jq_rule_json", |b| {
        b.iter(|| {
            let input = Input::message("sensor/1", black_box(PAYLOAD)).clientid("c1");
            rule.apply(&input)
        })
    });
    let sql = Rule::compile(
        "sql",
        r#"SELECT payload.temp * 1.8 + 32 AS t_f, payload.loc AS loc FROM "sensor/#""#,
    )
    .expect("valid");
    c.bench_function("evaluate/same_in_sql_json", |b| {
        b.iter(|| {
            let input = Input::message("sensor/1", black_box(PAYLOAD)).clientid("c1");
            sql.apply(&input)
        })
    });
}

criterion_group!(benches, parse, filter_match, evaluate, jq);
criterion_main!(benches);
