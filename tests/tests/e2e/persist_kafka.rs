//! The shipped persist-kafka plugin inside the running broker, producing
//! through the broker's librdkafka producer to a real Kafka-protocol server
//! (tansu, started by scripts/kafka.sh; its address in `MIDGE_TEST_KAFKA`).
//! Records are read back with an rdkafka consumer. Without the server the
//! tests are skipped, and fail under CI=true.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use midge_e2e::http::{sample, Admin};
use midge_e2e::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// How long reading records back may take at most.
const READ_WAIT: Duration = Duration::from_secs(60);

/// The Kafka server's address, or `None` (skip) outside CI.
fn kafka() -> Option<String> {
    match std::env::var("MIDGE_TEST_KAFKA") {
        Ok(a) if !a.is_empty() => Some(a),
        _ => {
            missing_tool("Kafka: MIDGE_TEST_KAFKA is not set (scripts/kafka.sh starts tansu)");
            None
        }
    }
}

/// A fresh single-partition topic.
async fn new_topic(kafka: &str, prefix: &str) -> String {
    let name = unique(prefix);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(&name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("CreateTopics request");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
    name
}

/// One record read back.
#[derive(Debug, Clone)]
struct Record {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.value)
            .unwrap_or_else(|e| panic!("record value is not JSON ({e}): {}", text(&self.value)))
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads `topic` from the beginning until `n` records arrived (bounded),
/// then reads on briefly to catch any extra record.
async fn read_records(kafka: &str, topic: &str, n: usize) -> Vec<Record> {
    let (kafka, topic) = (kafka.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .set("group.id", unique("midge-e2e"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + READ_WAIT;
        let mut extra_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if extra_until.is_some_and(|t| now >= t) {
                break;
            }
            assert!(
                now < deadline,
                "{} of {n} records read from {topic} within {READ_WAIT:?}",
                out.len()
            );
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => panic!("consuming {topic}: {e}"),
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or(&[]).to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Record {
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().unwrap_or(&[]).to_vec(),
                        headers,
                    });
                }
            }
            if out.len() >= n && extra_until.is_none() {
                extra_until = Some(Instant::now() + QUIET);
            }
        }
        out
    })
    .await
    .unwrap()
}

/// A broker with persist-kafka as plugin `kafka` (granted `topic`) and the
/// given plugin config (TOML inline table body) and extra TOML (rules).
async fn broker_with(
    kafka: &str,
    topic: &str,
    plugin_config: &str,
    extra: &str,
) -> Option<TestBroker> {
    let wasm = midge_plugin::testing::wasm_dir()?;
    let toml_text = format!(
        r#"
[plugins.kafka]
brokers = "{kafka}"
linger_ms = 5

[[plugins.plugin]]
name = "kafka"
path = "{wasm}/persist_kafka.wasm"
grants = {{ kafka = ["{topic}"] }}
config = {{ topic = "{topic}", {plugin_config} }}
{extra}
"#,
        wasm = wasm.display()
    );
    let cfg = midge::Config::parse(&toml_text, "persist-kafka-test.toml").expect("config parses");
    Some(
        start_broker(|c| {
            c.plugins = cfg.plugins.clone();
            c.rules = cfg.rules.clone();
        })
        .await,
    )
}

/// Publishes `0..n` as QoS 1 messages to `topic` and waits for every PUBACK.
async fn publish_acked(p: &mut V4, topic: &str, n: usize) {
    let client = p.client.clone();
    let t = topic.to_string();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(&t, rumqttc::QoS::AtLeastOnce, false, i.to_string())
                .await
                .unwrap();
        }
    });
    for _ in 0..n {
        p.wait("PUBACK", |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
        })
        .await;
    }
    sender.await.unwrap();
}

fn mosquitto_pub(b: &TestBroker, topic: &str, id: &str, user: &str, msg: &str) -> bool {
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port().to_string(),
            "-V",
            "mqttv311",
        ])
        .args(["-t", topic, "-q", "1", "-m", msg, "-i", id, "-u", user])
        .output();
    match out {
        Err(_) => {
            missing_tool("mosquitto_pub (apt-get install mosquitto-clients)");
            false
        }
        Ok(o) => {
            assert!(
                o.status.success(),
                "mosquitto_pub: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            true
        }
    }
}

/// JSON format: one record per message, keyed by client id, carrying topic,
/// payload (text or base64), QoS, retain, client id, username and the MQTT
/// 5.0 properties; subscribers still get the message unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_records_carry_the_message_its_publisher_and_properties() {
    let Some(k) = kafka() else { return };
    let kt = new_topic(&k, "json").await;
    let base = topic("kjson");
    let Some(b) = broker_with(&k, &kt, &format!(r#"filters = ["{base}/#"]"#), "").await else {
        return;
    };
    let mut sub = V4::new(&b, "sub").await;
    sub.subscribe(&format!("{base}/#"), rumqttc::QoS::AtLeastOnce)
        .await;

    // MQTT 5.0 with user properties and a correlation id.
    let mut o = v5_options(&b, "v5pub");
    o.set_credentials("alice", "pw");
    let (mut p5, _) = V5::connect(o.clone()).await;
    let props = v5::PublishProperties {
        user_properties: vec![
            ("site".into(), "lab".into()),
            ("site".into(), "roof".into()),
        ],
        content_type: Some("text/plain".into()),
        correlation_data: Some(bytes::Bytes::from_static(&[0xff, 0x00])),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    p5.publish_props(
        &format!("{base}/v5"),
        v5::QoS::AtLeastOnce,
        false,
        "21.5",
        props,
    )
    .await;
    // MQTT 3.1.1, a payload that is not UTF-8, retained.
    let o4 = v4_options(&b, "v4pub");
    let v4_id = o4.client_id();
    let (mut p4, _) = V4::connect(o4).await;
    p4.publish(
        &format!("{base}/v4"),
        rumqttc::QoS::AtLeastOnce,
        true,
        vec![0xde, 0xad, 0xbe, 0xef],
    )
    .await;
    // mosquitto_pub, 3.1.1 with a user name.
    let mosq = mosquitto_pub(
        &b,
        &format!("{base}/mosq"),
        "mosq-client",
        "bob",
        "hello kafka",
    );
    let expected = if mosq { 3 } else { 2 };

    // Subscribers see the messages unchanged.
    let mut seen = HashMap::new();
    for _ in 0..expected {
        let m = sub.next_publish().await;
        seen.insert(m.topic.clone(), m.payload.to_vec());
    }
    assert_eq!(seen[&format!("{base}/v5")], b"21.5");
    assert_eq!(seen[&format!("{base}/v4")], [0xde, 0xad, 0xbe, 0xef]);

    let records = read_records(&k, &kt, expected).await;
    assert_eq!(records.len(), expected, "one record per message");
    let by_topic: HashMap<String, &Record> = records
        .iter()
        .map(|r| (r.json()["topic"].as_str().unwrap().to_string(), r))
        .collect();

    let r5 = by_topic[&format!("{base}/v5")];
    let j = r5.json();
    assert_eq!(
        r5.key.as_deref(),
        Some(o.client_id().as_bytes()),
        "key: client id"
    );
    assert_eq!(j["payload"], "21.5");
    assert_eq!(j["payload_encoding"], "utf8");
    assert_eq!(j["qos"], 1);
    assert_eq!(j["retain"], false);
    assert_eq!(j["client_id"], o.client_id());
    assert_eq!(j["username"], "alice");
    assert_eq!(j["properties"]["content_type"], "text/plain");
    assert_eq!(j["properties"]["payload_format_indicator"], true);
    assert_eq!(j["properties"]["correlation_data"], "/wA=");
    assert_eq!(
        j["properties"]["user_properties"],
        serde_json::json!([["site", "lab"], ["site", "roof"]])
    );
    assert!(j["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(r5.headers.is_empty(), "json records have no headers");

    let r4 = by_topic[&format!("{base}/v4")];
    let j = r4.json();
    assert_eq!(r4.key.as_deref(), Some(v4_id.as_bytes()));
    assert_eq!(j["payload"], "3q2+7w==", "base64 of de ad be ef");
    assert_eq!(j["payload_encoding"], "base64");
    assert_eq!(j["retain"], true);
    assert_eq!(j["username"], Value::Null);
    assert_eq!(j["properties"]["user_properties"], serde_json::json!([]));

    if mosq {
        let rm = by_topic[&format!("{base}/mosq")];
        let j = rm.json();
        assert_eq!(rm.key.as_deref(), Some(&b"mosq-client"[..]));
        assert_eq!(j["payload"], "hello kafka");
        assert_eq!(j["client_id"], "mosq-client");
        assert_eq!(j["username"], "bob");
    }
}

/// Raw format: the payload is the value, the MQTT fields are headers (user
/// properties under their own names), the key is the MQTT topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_records_carry_the_payload_and_mqtt_fields_as_headers() {
    let Some(k) = kafka() else { return };
    let kt = new_topic(&k, "raw").await;
    let base = topic("kraw");
    let conf = format!(r#"filters = ["{base}/#"], format = "raw", key = "topic""#);
    let Some(b) = broker_with(&k, &kt, &conf, "").await else {
        return;
    };
    let o = v5_options(&b, "rawpub");
    let (mut p, _) = V5::connect(o.clone()).await;
    let props = v5::PublishProperties {
        user_properties: vec![("unit".into(), "C".into())],
        ..Default::default()
    };
    let t = format!("{base}/a");
    p.publish_props(
        &t,
        v5::QoS::AtLeastOnce,
        false,
        vec![1u8, 2, 3, 0xff],
        props,
    )
    .await;
    // Outside the filters: not archived.
    p.publish_props(
        &topic("elsewhere"),
        v5::QoS::AtLeastOnce,
        false,
        "no",
        Default::default(),
    )
    .await;

    let records = read_records(&k, &kt, 1).await;
    assert_eq!(records.len(), 1, "only the filtered topic is archived");
    let r = &records[0];
    assert_eq!(r.value, [1u8, 2, 3, 0xff]);
    assert_eq!(r.key.as_deref(), Some(t.as_bytes()));
    assert_eq!(r.header("mqtt.topic"), Some(t.as_bytes()));
    assert_eq!(r.header("mqtt.qos"), Some(&b"1"[..]));
    assert_eq!(r.header("mqtt.retain"), Some(&b"false"[..]));
    assert_eq!(r.header("mqtt.client_id"), Some(o.client_id().as_bytes()));
    assert_eq!(r.header("unit"), Some(&b"C"[..]));
}

/// A rule's `plugin` action: each row becomes one JSON record with the
/// rule's id as a header, keyed by the row's `clientid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_rows_are_produced_as_json_records() {
    let Some(k) = kafka() else { return };
    let kt = new_topic(&k, "rows").await;
    let base = topic("krule");
    let rule = format!(
        r#"
[[rules]]
id = "hot"
sql = 'SELECT clientid, topic, payload.temp AS temp FROM "{base}/#" WHERE payload.temp > 30'
actions = [{{ type = "plugin", plugin = "kafka" }}]
"#
    );
    let Some(b) = broker_with(&k, &kt, "filters = []", &rule).await else {
        return;
    };
    let o = v4_options(&b, "rulepub");
    let (mut p, _) = V4::connect(o.clone()).await;
    let t = format!("{base}/s1");
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, r#"{"temp": 20}"#)
        .await;
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, r#"{"temp": 35.5}"#)
        .await;

    let records = read_records(&k, &kt, 1).await;
    assert_eq!(records.len(), 1, "only the row passing WHERE");
    let r = &records[0];
    assert_eq!(
        r.json(),
        serde_json::json!({"clientid": o.client_id(), "topic": t, "temp": 35.5})
    );
    assert_eq!(r.key.as_deref(), Some(o.client_id().as_bytes()));
    assert_eq!(r.header("midge.rule"), Some(&b"hot"[..]));
}

/// A burst of QoS 1 messages: every one is acknowledged to the publisher
/// and every one is read back from Kafka, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_5000_qos1_messages_is_all_archived() {
    const N: usize = 5000;
    let Some(k) = kafka() else { return };
    let kt = new_topic(&k, "burst").await;
    let base = topic("kburst");
    let conf = format!(r#"filters = ["{base}/#"], format = "raw", key = "none""#);
    let Some(b) = broker_with(&k, &kt, &conf, "").await else {
        return;
    };
    let mut p = V4::new(&b, "burst").await;
    publish_acked(&mut p, &format!("{base}/x"), N).await;

    let records = read_records(&k, &kt, N).await;
    assert_eq!(records.len(), N);
    let mut got: Vec<usize> = records
        .iter()
        .map(|r| text(&r.value).parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "each message exactly once");

    // The broker's counters agree (delivery reports may trail the reads).
    let admin = Admin::of(&b);
    let end = Instant::now() + READ_WAIT;
    loop {
        let m = admin.call("GET", "/metrics", None).await.text();
        let delivered = sample(&m, "midge_plugin_kafka_delivered_total");
        if delivered >= N as f64 {
            assert_eq!(sample(&m, "midge_plugin_kafka_produced_total"), N as f64);
            assert_eq!(sample(&m, "midge_plugin_kafka_failed_total"), 0.0);
            break;
        }
        assert!(Instant::now() < end, "delivered {delivered} of {N}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kafka unreachable: clients are served as before, and the records that
/// cannot be delivered are counted as failed in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_the_broker_keeps_serving_and_counts_failures() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = topic("kdown");
    let toml_text = format!(
        r#"
[plugins.kafka]
brokers = "127.0.0.1:{port}"
properties = {{ "message.timeout.ms" = "1000" }}

[[plugins.plugin]]
name = "kafka"
path = "{wasm}/persist_kafka.wasm"
grants = {{ kafka = ["archive"] }}
config = {{ topic = "archive", filters = ["{base}/#"] }}
"#,
        wasm = wasm.display()
    );
    let cfg = midge::Config::parse(&toml_text, "kafka-down.toml").unwrap();
    let b = start_broker(|c| c.plugins = cfg.plugins.clone()).await;
    let mut sub = V4::new(&b, "sub").await;
    sub.subscribe(&format!("{base}/#"), rumqttc::QoS::AtLeastOnce)
        .await;
    let mut p = V4::new(&b, "pub").await;
    for i in 0..5 {
        p.publish(
            &format!("{base}/m"),
            rumqttc::QoS::AtLeastOnce,
            false,
            format!("m{i}"),
        )
        .await;
        assert_eq!(sub.next_publish().await.payload, format!("m{i}").as_bytes());
    }
    let admin = Admin::of(&b);
    let end = Instant::now() + READ_WAIT;
    loop {
        let m = admin.call("GET", "/metrics", None).await.text();
        let failed = sample(&m, "midge_plugin_kafka_failed_total");
        // librdkafka counts a record in flight until its delivery callback
        // (which counts the failure) has returned: wait for both to settle.
        if failed >= 5.0 && sample(&m, "midge_plugin_kafka_queue_depth") == 0.0 {
            assert_eq!(failed, 5.0);
            assert_eq!(sample(&m, "midge_plugin_kafka_produced_total"), 5.0);
            assert_eq!(sample(&m, "midge_plugin_kafka_delivered_total"), 0.0);
            break;
        }
        assert!(Instant::now() < end, "failed {failed} of 5");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still serving after the failures.
    p.publish(
        &format!("{base}/m"),
        rumqttc::QoS::AtLeastOnce,
        false,
        "after",
    )
    .await;
    assert_eq!(sub.next_publish().await.payload, &b"after"[..]);
}

/// A librdkafka property it does not know refuses the start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_kafka_property_refuses_the_start_naming_it() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let toml_text = format!(
        r#"
[plugins.kafka]
brokers = "127.0.0.1:9"
properties = {{ "compression.type" = "zip" }}

[[plugins.plugin]]
name = "kafka"
path = "{wasm}/persist_kafka.wasm"
config = {{ topic = "archive" }}
"#,
        wasm = wasm.display()
    );
    let mut cfg = midge::Config::parse(&toml_text, "kafka-bad.toml").unwrap();
    cfg.listeners.mqtt = Some("127.0.0.1:0".parse().unwrap());
    cfg.listeners.ws = None;
    cfg.admin.listen = None;
    let e = midge::App::bind(cfg).await.unwrap_err().to_string();
    assert!(
        e.starts_with("plugins.kafka.properties.compression.type: "),
        "{e}"
    );
}

/// SIGTERM while acknowledged messages still linger in the producer's
/// queue (`linger_ms` far longer than the test): the shutdown flush sends
/// them before the process exits, so every acknowledged message is in
/// Kafka afterwards. Without the flush, dropping the producer purges its
/// queue and they are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_lingering_at_sigterm_are_flushed_before_exit() {
    const N: usize = 300;
    let Some(k) = kafka() else { return };
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let kt = new_topic(&k, "sigterm").await;
    let base = topic("ksigterm");
    let dir = TempDir::new("midge-kafka-sigterm");
    let config = dir.0.join("midge.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[plugins.kafka]
brokers = "{k}"
linger_ms = 60000

[[plugins.plugin]]
name = "kafka"
path = "{wasm}/persist_kafka.wasm"
grants = {{ kafka = ["{kt}"] }}
config = {{ topic = "{kt}", filters = ["{base}/#"], format = "raw", key = "none" }}
"#,
            wasm = wasm.display()
        ),
    )
    .unwrap();
    let broker = midge_e2e::process::BrokerProcess::start(&config, 0);
    let mut p = V4::new_at(broker.port()).await;
    publish_acked(&mut p, &format!("{base}/x"), N).await;

    // The precondition this test is about: produced, not yet delivered.
    let m = Admin::of_process(&broker)
        .call("GET", "/metrics", None)
        .await
        .text();
    assert_eq!(sample(&m, "midge_plugin_kafka_produced_total"), N as f64);
    assert_eq!(
        sample(&m, "midge_plugin_kafka_delivered_total"),
        0.0,
        "records are held by linger_ms until the shutdown flush"
    );

    let status = tokio::task::spawn_blocking(move || broker.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let records = read_records(&k, &kt, N).await;
    let mut got: Vec<usize> = records
        .iter()
        .map(|r| text(&r.value).parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "each acknowledged message exactly once"
    );
}
