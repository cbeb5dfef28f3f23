//! Plugin answers checked as if a client had sent them, seen from outside:
//! a real broker process with two `test-misbehave` instances, `po` (failure
//! policy open, on-publish filter `open/#`) and `pc` (closed, `closed/#`),
//! real clients (rumqttc 5.0 and mosquitto_sub / mosquitto_pub). For each
//! kind of invalid answer: what the publisher and the subscribers get under
//! each policy, the WARN line naming plugin, hook and problem, and the
//! `invalid_outputs` counter in `/metrics` and the admin API. Also:
//! suspension across hooks, the panic message in the log, the subscriber's
//! Maximum Packet Size, the publish capability, rule functions.
#![allow(clippy::unwrap_used)] // test helpers

use std::process::Command;
use std::time::Duration;

use midge_e2e::http::Admin;
use midge_e2e::process::BrokerProcess;
use midge_e2e::*;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};

/// Every client logs in: test-misbehave refuses anonymous clients and
/// ignores this user (the broker's default then allows it).
const USER: &str = "tester";

/// The two instances, each limited to its own topics.
const TWO: &str = r#"
[[plugins.plugin]]
name = "po"
path = "{wasm}/test_misbehave.wasm"
config = { filters = ["open/#"] }
# Megabytes through a debug build on a busy machine take time; deadlines
# have their own tests.
limits = { deadline_ms = 5000, suspend_after = 0 }
failure = { on_publish = "open", authenticate = "open" }

[[plugins.plugin]]
name = "pc"
path = "{wasm}/test_misbehave.wasm"
config = { filters = ["closed/#"] }
limits = { deadline_ms = 5000, suspend_after = 0 }
failure = { on_publish = "closed", authenticate = "closed" }
"#;

/// A broker process running `plugins` (`{wasm}` replaced), and its admin API.
struct Bed {
    broker: BrokerProcess,
    admin: Admin,
    _dir: TempDir,
}

fn bed(plugins: &str) -> Option<Bed> {
    bed_with(plugins, "")
}

fn bed_with(plugins: &str, more: &str) -> Option<Bed> {
    let wasm = midge_plugin::testing::wasm_dir()?;
    let dir = TempDir::new("midge-outputs");
    let text = format!(
        "{more}\n[plugins]\nkv_path = \"{}\"\n{}",
        dir.0.join("kv").display(),
        plugins.replace("{wasm}", &wasm.display().to_string())
    );
    let file = dir.0.join("midge.toml");
    std::fs::write(&file, text).unwrap();
    let broker = BrokerProcess::start(&file, 0);
    let admin = Admin::of_process(&broker);
    Some(Bed {
        broker,
        admin,
        _dir: dir,
    })
}

fn mosquitto_present() -> bool {
    let ok = ["mosquitto_pub", "mosquitto_sub"].iter().all(|t| {
        Command::new(t)
            .arg("--help")
            .output()
            .map(|_| true)
            .unwrap_or(false)
    });
    if !ok {
        missing_tool("mosquitto_pub / mosquitto_sub (apt-get install mosquitto-clients)");
    }
    ok
}

fn options(port: u16, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(unique(id), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_credentials(USER, "");
    o.set_max_packet_size(Some(4 << 20));
    o
}

async fn client(port: u16, id: &str) -> V5 {
    V5::connect(options(port, id)).await.0
}

/// Publishes QoS 1 and returns the PUBACK's reason.
async fn pub1(c: &mut V5, topic: &str, payload: &[u8]) -> PubAckReason {
    c.client
        .publish(topic, v5::QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .unwrap();
    c.wait("PUBACK", |e| match e {
        v5::Event::Incoming(Packet::PubAck(a)) => Some(a.reason),
        _ => None,
    })
    .await
}

/// A mosquitto_sub (MQTT 5.0) on `#` and `$SYS/brokers/spoofed` that
/// prints the first message it gets ("topic payload") and exits; returned
/// once its subscriptions are in place.
async fn mosquitto_first(b: &Bed) -> tokio::task::JoinHandle<std::process::Output> {
    let id = unique("msub");
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-V", "mqttv5", "-h", "127.0.0.1", "-p"])
        .arg(b.broker.port().to_string())
        .args([
            "-u", USER, "-i", &id, "-q", "1", "-v", "-C", "1", "-W", "30",
        ])
        .args(["-t", "#", "-t", "$SYS/brokers/spoofed"]);
    let handle = tokio::spawn(run_command(cmd, Duration::from_secs(40)));
    let path = format!("/api/v1/sessions/{id}/subscriptions");
    within("mosquitto_sub to subscribe", async {
        loop {
            let r = b.admin.call("GET", &path, None).await;
            if r.status == 200 && r.json()["meta"]["count"] == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    handle
}

/// A rumqttc 5.0 subscriber on the same filters.
async fn subscriber(b: &Bed) -> V5 {
    let mut s = client(b.broker.port(), "sub").await;
    s.subscribe("#", v5::QoS::AtLeastOnce).await;
    s.subscribe("$SYS/brokers/spoofed", v5::QoS::AtLeastOnce)
        .await;
    s
}

/// The log without ANSI colour codes (the WARN line is matched on text).
fn plain_log(b: &Bed) -> String {
    let log = b.broker.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The broker logged a WARN about `plugin`'s `hook` whose text holds
/// `says`; the line.
async fn assert_warned(b: &Bed, plugin: &str, hook: &str, says: &str) -> String {
    let found = within("the WARN line", async {
        loop {
            let log = plain_log(b);
            let line = log.lines().find(|l| {
                l.contains("WARN")
                    && l.contains(&format!("plugin {plugin}: {hook}"))
                    && l.contains(says)
            });
            if let Some(l) = line {
                return l.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(found.contains("answered invalid output"), "{found}");
    found
}

/// The admin API's entry of `plugin` (GET /api/v1/plugins).
async fn plugin_json(b: &Bed, plugin: &str) -> serde_json::Value {
    let list = b.admin.get("/api/v1/plugins").await;
    list["data"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == plugin))
        .cloned()
        .unwrap_or_else(|| panic!("no plugin {plugin} in {list}"))
}

/// `invalid_outputs` of `plugin`, in /metrics and in the admin API (equal).
async fn invalid_outputs(b: &Bed, plugin: &str) -> u64 {
    let metrics = b.admin.call("GET", "/metrics", None).await.text();
    let key = format!("midge_plugin_invalid_outputs_total{{plugin=\"{plugin}\"}} ");
    let from_metrics: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("{key} not in /metrics"))
        .trim()
        .parse()
        .unwrap();
    let api = plugin_json(b, plugin).await;
    let from_api = api["metrics"]["invalid_outputs"].as_u64().unwrap();
    assert_eq!(from_metrics, from_api, "{api}");
    from_metrics
}

/// One invalid on-publish answer (`bad/<case>` of test-misbehave), under
/// both policies: the open plugin's message arrives as the publisher sent
/// it (PUBACK success), the closed plugin's is refused (PUBACK 0x80) and
/// nothing arrives; `marker` is published after each, so the first
/// message a subscriber gets shows what (else) was delivered.
async fn violation(case: &str, says: &str) {
    let Some(b) = bed(TWO) else {
        return;
    };
    if !mosquitto_present() {
        return;
    }
    let port = b.broker.port();
    for (prefix, plugin, open) in [("open", "po", true), ("closed", "pc", false)] {
        let first = mosquitto_first(&b).await;
        let mut sub = subscriber(&b).await;
        let mut p = client(port, "pub").await;
        let topic = format!("{prefix}/bad/{case}");
        let reason = pub1(&mut p, &topic, b"orig").await;
        let marker = format!("marker/{prefix}");
        assert_eq!(pub1(&mut p, &marker, b"mark").await, PubAckReason::Success);
        let got = sub.next_publish().await;
        let line = text(&first.await.unwrap().stdout);
        if open {
            assert_eq!(reason, PubAckReason::Success, "{case}: open passes it on");
            assert_eq!(
                (text(&got.topic), text(&got.payload)),
                (topic.clone(), "orig".into())
            );
            assert_eq!(
                got.properties.and_then(|p| p.response_topic),
                None,
                "{case}"
            );
            assert_eq!(
                line.trim(),
                format!("{topic} orig"),
                "{case}: mosquitto_sub"
            );
        } else {
            assert_eq!(
                reason,
                PubAckReason::UnspecifiedError,
                "{case}: closed refuses"
            );
            assert_eq!(
                text(&got.topic),
                marker,
                "{case}: nothing before the marker"
            );
            assert_eq!(
                line.trim(),
                format!("{marker} mark"),
                "{case}: mosquitto_sub"
            );
        }
        assert_warned(&b, plugin, "on-publish", says).await;
        assert_eq!(invalid_outputs(&b, plugin).await, 1, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_to_a_hash_topic() {
    violation("topic-hash", "has a wildcard").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_to_a_plus_topic() {
    violation("topic-plus", "has a wildcard").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_to_an_empty_topic() {
    violation("topic-empty", "topic is empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_to_a_70_kb_topic() {
    violation("topic-long", "70000 bytes (at most 65,535)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_to_a_topic_holding_nul() {
    violation("topic-nul", "holds U+0000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_to_sys_without_a_grant() {
    violation("dollar", "starts with $").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_topic_with_a_wildcard() {
    violation("response-topic", "response topic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_indicator_over_a_payload_that_is_not() {
    violation("utf8", "payload-format indicator says UTF-8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_above_max_packet_size() {
    violation("big", "above the broker's max_packet_size of 1048576").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_property_holding_nul() {
    violation("user-property-nul", "user property value").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_data_above_65535_bytes() {
    violation("correlation-big", "correlation data is 70000 bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_with_success_code() {
    violation("deny-0", "deny(0x00)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_with_a_code_that_is_not_a_refusal() {
    violation("deny-10", "deny(0x10)").await;
}

/// PUBLISHes read together go to the plugins as one batch: a bad one
/// between good ones fails alone, and a batch answer with a decision
/// missing is refused and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_invalid_answers() {
    use midge_e2e::raw::*;
    let Some(b) = bed(TWO) else {
        return;
    };
    for (prefix, plugin, open) in [("open", "po", true), ("closed", "pc", false)] {
        let mut o = ConnectOpts::v5(&unique("raw"));
        o.username = Some(USER.into());
        let (mut c, _) = RawClient::handshake(b.broker.addr, o).await;
        let topics = [
            format!("{prefix}/ok"),
            format!("{prefix}/bad/topic-hash"),
            format!("{prefix}/ok"),
        ];
        let mut wire = Vec::new();
        for (i, t) in topics.iter().enumerate() {
            wire.extend(publish(true, t, 1, false, false, i as u16 + 1, &[], b"ab"));
        }
        c.send(&wire).await;
        let mut reasons = Vec::new();
        for _ in 0..3 {
            let a = c.recv_kind(PUBACK).await.ack();
            reasons.push((a.pid, a.reason));
        }
        let refused = if open { 0 } else { 0x80 };
        assert_eq!(reasons, vec![(1, 0), (2, refused), (3, 0)]);
        assert_warned(
            &b,
            plugin,
            "on-publish",
            "message 1: topic \"#\" has a wildcard",
        )
        .await;

        // A message on `short-batch` gets no decision: the answer does not
        // fit the batch, and every message of it fails.
        let mut wire = Vec::new();
        for (i, t) in [format!("{prefix}/ok"), format!("{prefix}/short-batch")]
            .iter()
            .enumerate()
        {
            wire.extend(publish(true, t, 1, false, false, 10 + i as u16, &[], b"x"));
        }
        c.send(&wire).await;
        for pid in [10, 11] {
            let a = c.recv_kind(PUBACK).await.ack();
            assert_eq!((a.pid, a.reason), (pid, refused));
        }
        assert_warned(&b, plugin, "on-publish", "decisions for").await;
        assert_eq!(invalid_outputs(&b, plugin).await, 2);
    }
}

/// The open plugin grows a payload to 5,000 bytes (within the broker's
/// limit): a subscriber announcing Maximum Packet Size 2,000 never gets it,
/// another one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_message_is_not_sent_above_a_subscribers_maximum_packet_size() {
    let Some(b) = bed(TWO) else {
        return;
    };
    if !mosquitto_present() {
        return;
    }
    let port = b.broker.port();
    let mut small_opts = options(port, "small");
    small_opts.set_max_packet_size(Some(2000));
    let mut small = V5::connect(small_opts).await.0;
    small.subscribe("open/#", v5::QoS::AtLeastOnce).await;
    small.subscribe("marker/#", v5::QoS::AtLeastOnce).await;
    let first = mosquitto_first(&b).await;
    let mut p = client(port, "pub").await;
    assert_eq!(
        pub1(&mut p, "open/grow", b"5000").await,
        PubAckReason::Success
    );
    assert_eq!(
        pub1(&mut p, "marker/x", b"mark").await,
        PubAckReason::Success
    );
    let got = small.next_publish().await;
    assert_eq!(
        text(&got.topic),
        "marker/x",
        "the 5,000-byte message was not sent"
    );
    let line = text(&first.await.unwrap().stdout);
    assert_eq!(line.trim(), format!("open/grow {}", "g".repeat(5000)));
    assert_eq!(invalid_outputs(&b, "po").await, 0, "not a plugin failure");
}

/// Authenticate answers no CONNACK can carry: the open plugin's is
/// ignored (the broker's default admits the user), the closed plugin's
/// refuses with 0x88.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_authenticate_answers() {
    if !mosquitto_present() {
        return;
    }
    for (policy, plugin) in [("open", "ao"), ("closed", "ac")] {
        let plugins = format!(
            "[[plugins.plugin]]\nname = \"{plugin}\"\npath = \"{{wasm}}/test_misbehave.wasm\"\nfailure = {{ authenticate = \"{policy}\" }}\n"
        );
        let Some(b) = bed(&plugins) else {
            return;
        };
        for (user, says) in [
            ("deny-0", "deny(0x00)"),
            ("big-auth-data", "auth-data is 70000 bytes"),
        ] {
            let mut o = options(b.broker.port(), "auth");
            o.set_credentials(user, "x");
            let mut c = V5::start(o);
            // rumqttc reports a refusal as an error of its event loop.
            let ack = within("CONNACK", async {
                loop {
                    match c.events.recv().await {
                        Some(Ok(v5::Event::Incoming(Packet::ConnAck(a)))) => return Ok(a.code),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Err("event loop ended".to_string()),
                    }
                }
            })
            .await;
            let out = run_command(
                {
                    let mut cmd = Command::new("mosquitto_pub");
                    cmd.args(["-V", "mqttv5", "-h", "127.0.0.1", "-p"])
                        .arg(b.broker.port().to_string())
                        .args(["-u", user, "-P", "x", "-t", "t", "-m", "x"]);
                    cmd
                },
                Duration::from_secs(20),
            )
            .await;
            if policy == "open" {
                assert_eq!(ack, Ok(ConnectReturnCode::Success), "{user}");
                assert!(out.status.success(), "{user}: {}", text(&out.stderr));
            } else {
                let refused = ack.expect_err("refused");
                assert!(refused.contains("ServerUnavailable"), "{user}: {refused}");
                assert!(!out.status.success(), "{user}");
                assert!(
                    text(&out.stderr).to_lowercase().contains("unavailable"),
                    "{}",
                    text(&out.stderr)
                );
            }
            assert_warned(&b, plugin, "authenticate", says).await;
        }
        assert_eq!(invalid_outputs(&b, plugin).await, 4);
    }
}

/// The publish capability refuses what a client could not publish: the
/// plugin is told, nothing reaches subscribers, the failure is logged and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_capability_with_invalid_messages() {
    let plugins = TWO.replace(
        "config = { filters = [\"open/#\"] }",
        "config = { filters = [\"open/#\"] }\ngrants = { publish = [\"echo/#\"] }",
    );
    let Some(b) = bed(&plugins) else {
        return;
    };
    let port = b.broker.port();
    let mut sub = subscriber(&b).await;
    let mut p = client(port, "pub").await;
    for (n, (case, says)) in [
        ("publish-hash", "has a wildcard"),
        ("publish-big", "above the broker's max_packet_size"),
        ("publish-utf8", "payload-format indicator"),
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("open/bad/{case}");
        assert_eq!(pub1(&mut p, &topic, b"").await, PubAckReason::Success);
        let got = sub.next_publish().await;
        assert_eq!(text(&got.topic), topic, "no echo/... before it");
        let told = text(&got.payload);
        assert!(
            told.contains("InvalidTopic") || told.contains("Rejected"),
            "{told}"
        );
        let line = assert_warned(&b, "po", "on-publish", says).await;
        assert!(line.contains("publish capability: "), "{line}");
        assert_eq!(invalid_outputs(&b, "po").await, n as u64 + 1);
    }
}

/// A rule function returning too much or no JSON: the rule's row fails
/// (nothing republished), logged and counted; a good call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_function_results_are_checked() {
    let plugins = r#"
[[plugins.plugin]]
name = "fx"
path = "{wasm}/test_misbehave.wasm"
config = { mode = "functions-only" }

[[rules]]
id = "huge"
sql = 'SELECT huge(payload.n) AS h FROM "fn/huge"'
actions = [{ type = "republish", topic = "fn/out", payload = "${h}" }]

[[rules]]
id = "notjson"
sql = 'SELECT notjson() AS h FROM "fn/notjson"'
actions = [{ type = "republish", topic = "fn/out", payload = "${h}" }]
"#;
    let Some(b) = bed_with(plugins, "[mqtt]\nmax_packet_size = 10000\n") else {
        return;
    };
    let port = b.broker.port();
    let mut sub = client(port, "sub").await;
    sub.subscribe("fn/out", v5::QoS::AtLeastOnce).await;
    let mut p = client(port, "pub").await;
    pub1(&mut p, "fn/huge", br#"{"n":20000}"#).await;
    assert_warned(&b, "fx", "call-function", "above the limit of 10000").await;
    pub1(&mut p, "fn/notjson", b"{}").await;
    assert_warned(&b, "fx", "call-function", "is not JSON").await;
    pub1(&mut p, "fn/huge", br#"{"n":3}"#).await;
    let got = sub.next_publish().await;
    assert_eq!(text(&got.payload), "hhh", "the first publish to fn/out");
    assert_eq!(invalid_outputs(&b, "fx").await, 2);
}

/// The issue's case: `on-publish` runs into its deadline every time while
/// `authorize` answers in between; the plugin is suspended after
/// `suspend_after` on-publish failures, and says so in the log and the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_on_publish_is_suspended_though_authorize_answers() {
    let plugins = r#"
[[plugins.plugin]]
name = "half"
path = "{wasm}/test_misbehave.wasm"
config = { filters = ["half/#"] }
limits = { deadline_ms = 50, suspend_after = 5, suspend_secs = 3600 }
"#;
    let Some(b) = bed(plugins) else {
        return;
    };
    let mut p = client(b.broker.port(), "pub").await;
    for i in 0..5 {
        let state = plugin_json(&b, "half").await["state"].clone();
        assert_eq!(state, "running", "after {i} failures");
        // authorize answers (allowed/ is allowed), on-publish loops.
        assert_eq!(pub1(&mut p, "allowed/x", b"x").await, PubAckReason::Success);
        assert_eq!(pub1(&mut p, "half/loop", b"x").await, PubAckReason::Success);
    }
    let api = plugin_json(&b, "half").await;
    assert_eq!(api["state"], "suspended", "{api}");
    assert_eq!(api["metrics"]["timeouts"], 5, "{api}");
    assert_eq!(api["metrics"]["suspensions"], 1, "{api}");
    assert!(plain_log(&b).contains("plugin suspended after repeated failures"));
}

/// A guest panic reaches the log with its message and location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_message_reaches_the_log() {
    let Some(b) = bed(TWO) else {
        return;
    };
    let mut p = client(b.broker.port(), "pub").await;
    assert_eq!(pub1(&mut p, "open/trap", b"x").await, PubAckReason::Success);
    assert_eq!(
        pub1(&mut p, "closed/trap", b"x").await,
        PubAckReason::UnspecifiedError
    );
    let found = within("the panic in the log", async {
        loop {
            let log = plain_log(&b);
            if let Some(l) = log
                .lines()
                .find(|l| l.contains("plugin pc: on-publish trapped: panicked at"))
            {
                return l.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(found.contains("src/lib.rs"), "{found}");
    assert!(found.contains("asked to trap"), "{found}");
    assert!(plain_log(&b).contains("plugin po: on-publish trapped: panicked at"));
}
