//! # persist-kafka: archive messages and rule rows to Kafka
//!
//! Every message whose topic matches one of `filters` is produced as one
//! Kafka record to `topic` (the message itself passes on unchanged); every
//! row a rule hands to this plugin (`actions = [{ type = "plugin", plugin =
//! "NAME" }]`) becomes one record holding the row as JSON. The broker does
//! the I/O: records go into its librdkafka producer (`[plugins.kafka]`),
//! which batches them; delivery failures are logged and counted by the
//! broker (`midge_plugin_kafka_failed_total`).
//!
//! ```toml
//! [plugins.kafka]
//! brokers = "127.0.0.1:9092"
//!
//! [[plugins.plugin]]
//! name = "kafka"
//! path = "plugins/target/wasm32-wasip2/release/persist_kafka.wasm"
//! grants = { kafka = ["mqtt-archive"] }      # the topic below must be granted
//! [plugins.plugin.config]
//! topic = "mqtt-archive"          # Kafka topic (required)
//! filters = ["sensors/#"]         # MQTT filters archived from on-publish; [] (default): rules only
//! key = "clientid"                # record key: "clientid" (default), "topic" or "none"
//! format = "json"                 # "json" (default) or "raw"
//! ```
//!
//! **key**: `clientid` is the publisher's client id (no key for messages
//! published by the broker itself, plugins or rules); `topic` is the MQTT
//! topic. For rule rows, `clientid` / `topic` take the row's `clientid` /
//! `topic` field when it is a string.
//!
//! **format = "json"**: the value is one JSON object
//! ```json
//! {"topic": "sensors/1", "payload": "21.5", "payload_encoding": "utf8",
//!  "qos": 1, "retain": false, "client_id": "dev-1", "username": "alice",
//!  "properties": {"payload_format_indicator": false, "content_type": null,
//!                 "response_topic": null, "correlation_data": null,
//!                 "message_expiry_interval": null,
//!                 "user_properties": [["site", "lab"]]},
//!  "timestamp": 1700000000000}
//! ```
//! `payload_encoding` is `"utf8"` when the payload is UTF-8 text (then
//! `payload` is that text), else `"base64"` (standard alphabet, padded);
//! `correlation_data` is base64; `timestamp` is the broker's time (Unix ms).
//!
//! **format = "raw"**: the value is the payload bytes; headers
//! `mqtt.topic`, `mqtt.qos` ("0" / "1" / "2"), `mqtt.retain` ("true" /
//! "false"), `mqtt.client_id` (when there is a publisher) and each MQTT 5.0
//! user property under its own name, in order.
//!
//! Rule rows are JSON in both formats, with a header `midge.rule` naming the
//! rule. A record the producer refuses (queue full, too large, topic not
//! granted) is logged (the first, then every thousandth per instance); on a
//! rule row, on-rule-output fails naming the topic.

use midge_sdk::serde_json::{self, Value};
use midge_sdk::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    topic: String,
    #[serde(default)]
    filters: Vec<String>,
    #[serde(default)]
    key: KeyMode,
    #[serde(default)]
    format: Format,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum KeyMode {
    #[default]
    Clientid,
    Topic,
    None,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Raw,
}

struct PersistKafka {
    topic: String,
    key: KeyMode,
    format: Format,
    /// Records refused by the producer in this instance (for log sampling).
    refused: u64,
}

/// The JSON value of an archived message.
#[derive(Serialize)]
struct Record<'a> {
    topic: &'a str,
    payload: String,
    payload_encoding: &'static str,
    qos: u8,
    retain: bool,
    client_id: Option<&'a str>,
    username: Option<&'a str>,
    properties: Props<'a>,
    timestamp: u64,
}

#[derive(Serialize)]
struct Props<'a> {
    payload_format_indicator: bool,
    content_type: Option<&'a str>,
    response_topic: Option<&'a str>,
    correlation_data: Option<String>,
    message_expiry_interval: Option<u32>,
    user_properties: &'a [(String, String)],
}

fn qos_number(q: Qos) -> u8 {
    match q {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
        Qos::ExactlyOnce => 2,
    }
}

/// A Kafka topic name: 1..=249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn valid_kafka_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Plugin for PersistKafka {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let c: Config = parse_config(config)?;
        if !valid_kafka_topic(&c.topic) {
            return Err(InitError::BadConfig(format!(
                "topic: `{}` is not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)",
                c.topic
            )));
        }
        if let Some(f) = c.filters.iter().find(|f| !valid_filter(f)) {
            return Err(InitError::BadConfig(format!(
                "filters: `{f}` is not an MQTT topic filter"
            )));
        }
        let mut manifest =
            Manifest::new("persist-kafka", env!("CARGO_PKG_VERSION")).on_rule_output();
        if !c.filters.is_empty() {
            manifest = manifest.on_publish(c.filters);
        }
        let me = PersistKafka {
            topic: c.topic,
            key: c.key,
            format: c.format,
            refused: 0,
        };
        Ok((me, manifest))
    }

    fn on_publish(&mut self, message: Message, publisher: Option<Client>) -> PublishDecision {
        let client_id = publisher.as_ref().map(|p| p.client_id.as_str());
        let key = match self.key {
            KeyMode::Clientid => client_id.map(str::as_bytes),
            KeyMode::Topic => Some(message.topic.as_bytes()),
            KeyMode::None => None,
        };
        let result = match self.format {
            Format::Json => {
                let value = json_record(&message, publisher.as_ref());
                kafka::produce(&self.topic, key, &value, &[])
            }
            Format::Raw => {
                let headers = raw_headers(&message, client_id);
                kafka::produce(&self.topic, key, &message.payload, &headers)
            }
        };
        if let Err(e) = result {
            self.refused += 1;
            if self.refused == 1 || self.refused.is_multiple_of(1000) {
                log::warn(&format!(
                    "kafka topic {}: record for MQTT topic {} refused: {} ({} refused so far)",
                    self.topic,
                    message.topic,
                    describe(&e),
                    self.refused
                ));
            }
        }
        PublishDecision::Pass
    }

    fn on_rule_output(&mut self, rule: String, rows_json: String) -> Result<(), HookError> {
        let rows: Vec<Value> = serde_json::from_str(&rows_json)
            .map_err(|e| HookError::BadInput(format!("rows of rule {rule}: {e}")))?;
        let headers = [("midge.rule".to_string(), rule.clone().into_bytes())];
        for row in rows {
            let key = match self.key {
                KeyMode::Clientid => row.get("clientid").and_then(Value::as_str),
                KeyMode::Topic => row.get("topic").and_then(Value::as_str),
                KeyMode::None => None,
            };
            let value = row.to_string();
            kafka::produce(
                &self.topic,
                key.map(str::as_bytes),
                value.as_bytes(),
                &headers,
            )
            .map_err(|e| {
                HookError::Failed(format!(
                    "kafka topic {}: row of rule {rule} refused: {}",
                    self.topic,
                    describe(&e)
                ))
            })?;
        }
        Ok(())
    }
}

fn describe(e: &kafka::KafkaError) -> String {
    match e {
        kafka::KafkaError::NotGranted => "no kafka grant (grants.kafka)".into(),
        kafka::KafkaError::TopicNotGranted(t) => format!("topic {t} is not in grants.kafka"),
        kafka::KafkaError::Unavailable(why) => format!("producer unavailable: {why}"),
        kafka::KafkaError::QueueFull => "producer queue full".into(),
        kafka::KafkaError::TooLarge => "record too large".into(),
    }
}

/// An MQTT topic filter: `#` only last and alone in its level, `+` alone.
fn valid_filter(f: &str) -> bool {
    if f.is_empty() {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains('#') && !l.contains('+'),
    })
}

fn json_record(m: &Message, publisher: Option<&Client>) -> Vec<u8> {
    let (payload, payload_encoding) = match std::str::from_utf8(&m.payload) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (base64(&m.payload), "base64"),
    };
    let p = &m.properties;
    let record = Record {
        topic: &m.topic,
        payload,
        payload_encoding,
        qos: qos_number(m.qos),
        retain: m.retain,
        client_id: publisher.map(|c| c.client_id.as_str()),
        username: publisher.and_then(|c| c.username.as_deref()),
        properties: Props {
            payload_format_indicator: p.payload_is_utf8,
            content_type: p.content_type.as_deref(),
            response_topic: p.response_topic.as_deref(),
            correlation_data: p.correlation_data.as_deref().map(base64),
            message_expiry_interval: p.message_expiry_interval,
            user_properties: &p.user_properties,
        },
        timestamp: clock::now_millis(),
    };
    // Serializing plain strings, numbers and options cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

fn raw_headers(m: &Message, client_id: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut h = Vec::with_capacity(4 + m.properties.user_properties.len());
    h.push(("mqtt.topic".to_string(), m.topic.as_bytes().to_vec()));
    h.push((
        "mqtt.qos".to_string(),
        qos_number(m.qos).to_string().into_bytes(),
    ));
    h.push(("mqtt.retain".to_string(), m.retain.to_string().into_bytes()));
    if let Some(id) = client_id {
        h.push(("mqtt.client_id".to_string(), id.as_bytes().to_vec()));
    }
    for (k, v) in &m.properties.user_properties {
        h.push((k.clone(), v.as_bytes().to_vec()));
    }
    h
}

/// Standard base64 with padding (RFC 4648), for payloads that are not text.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

midge_sdk::export_plugin!(PersistKafka);
