//! # persist-sled: archive messages to the broker's embedded sled store
//!
//! Every message whose topic matches one of `filters`, and every row a rule
//! hands to this plugin (`actions = [{ type = "plugin", plugin = "NAME" }]`),
//! is written as one JSON record to the plugin's `kv` namespace, which the
//! broker keeps in sled under `[plugins] kv_path`. Needs the `kv` grant.
//!
//! ```toml
//! [[plugins.plugin]]
//! name = "archive"
//! path = "plugins/target/wasm32-wasip2/release/persist_sled.wasm"
//! grants = { kv = "archive" }          # the sled tree the records go to
//! [plugins.plugin.config]
//! filters = ["sensors/#"]             # archived from on-publish (empty: rules only)
//! prefix = "msg/"                     # key prefix of the records
//! max_records = 1000000               # keep at most this many (oldest removed); 0: no limit
//! ```
//!
//! ## Layout
//!
//! Keys are `{prefix}{n:020}` with `n` a counter shared by every instance of
//! the plugin (the kv `increment` is atomic), so byte order is arrival
//! order. The counter lives under `{prefix}#seq`. With `max_records`,
//! writing record `n` removes record `n - max_records` (lowering the limit
//! later leaves the older records in place). A record is a JSON object:
//!
//! ```json
//! {"topic":"sensors/1","payload":"21.5","payload_encoding":"utf8","qos":1,
//!  "retain":false,"client_id":"dev1","username":"u","properties":{...},
//!  "timestamp":1732262400000}
//! ```
//!
//! `payload_encoding` is `utf8` when the payload is UTF-8 text and `base64`
//! otherwise. A rule row is stored as `{"rule":ID,"row":{...},"timestamp":MS}`.
//! The store is readable while the broker is stopped with any sled 0.34
//! reader (tree name: `kv:` followed by the namespace).

use base64::Engine as _;
use midge_sdk::serde_json::{self, json, Map, Value};
use midge_sdk::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    filters: Vec<String>,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default)]
    max_records: u64,
}

fn default_prefix() -> String {
    "msg/".into()
}

struct PersistSled {
    prefix: String,
    max_records: u64,
}

impl PersistSled {
    fn key(&self, n: i64) -> String {
        format!("{}{n:020}", self.prefix)
    }

    /// Stores one record under the next key.
    fn append(&self, record: &Value) -> Result<(), String> {
        let n = kv::increment(&format!("{}#seq", self.prefix), 1).map_err(kv_text)?;
        kv::set(&self.key(n), record.to_string().as_bytes()).map_err(kv_text)?;
        self.trim(n)
    }

    /// Keeps at most `max_records`: writing record `n` removes record
    /// `n - max_records`. Each `n` is written once, so concurrent instances
    /// never remove the same record twice or one still inside the window.
    fn trim(&self, newest: i64) -> Result<(), String> {
        let max = self.max_records as i64;
        if max > 0 && newest > max {
            kv::delete(&self.key(newest - max)).map_err(kv_text)?;
        }
        Ok(())
    }
}

fn kv_text(e: kv::KvError) -> String {
    match e {
        kv::KvError::NotGranted => "the kv capability is not granted (grants.kv)".into(),
        kv::KvError::InvalidKey => "invalid key".into(),
        kv::KvError::ValueTooLarge => "record larger than plugins.kv_max_value_bytes".into(),
        kv::KvError::Storage(s) => format!("store: {s}"),
    }
}

fn qos_number(q: Qos) -> u8 {
    match q {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
        Qos::ExactlyOnce => 2,
    }
}

/// The JSON record of one message.
fn record(m: &Message, publisher: Option<&Client>, at_ms: u64) -> Value {
    let (payload, encoding) = match std::str::from_utf8(&m.payload) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&m.payload),
            "base64",
        ),
    };
    let p = &m.properties;
    let mut props = Map::new();
    if p.payload_is_utf8 {
        props.insert("payload_format_indicator".into(), json!(1));
    }
    if let Some(e) = p.message_expiry_interval {
        props.insert("message_expiry_interval".into(), json!(e));
    }
    if let Some(c) = &p.content_type {
        props.insert("content_type".into(), json!(c));
    }
    if let Some(r) = &p.response_topic {
        props.insert("response_topic".into(), json!(r));
    }
    if let Some(c) = &p.correlation_data {
        props.insert(
            "correlation_data".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(c)),
        );
    }
    if !p.user_properties.is_empty() {
        let pairs: Vec<Value> = p
            .user_properties
            .iter()
            .map(|(k, v)| json!([k, v]))
            .collect();
        props.insert("user_properties".into(), Value::Array(pairs));
    }
    json!({
        "topic": m.topic,
        "payload": payload,
        "payload_encoding": encoding,
        "qos": qos_number(m.qos),
        "retain": m.retain,
        "client_id": publisher.map(|c| c.client_id.as_str()),
        "username": publisher.and_then(|c| c.username.as_deref()),
        "properties": props,
        "timestamp": at_ms,
    })
}

impl Plugin for PersistSled {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let cfg: Config = parse_config(config)?;
        if cfg.prefix.is_empty() || cfg.prefix.contains('#') {
            return Err(InitError::BadConfig(
                "prefix must be non-empty and must not contain '#'".into(),
            ));
        }
        // Fail at load, not on the first message, when kv is not granted.
        kv::increment(&format!("{}#seq", cfg.prefix), 0)
            .map_err(|e| InitError::Failed(kv_text(e)))?;
        let manifest = Manifest::new("persist-sled", env!("CARGO_PKG_VERSION"))
            .on_publish(cfg.filters)
            .on_rule_output();
        Ok((
            PersistSled {
                prefix: cfg.prefix,
                max_records: cfg.max_records,
            },
            manifest,
        ))
    }

    fn on_publish(&mut self, message: Message, publisher: Option<Client>) -> PublishDecision {
        let rec = record(&message, publisher.as_ref(), clock::now_millis());
        if let Err(e) = self.append(&rec) {
            log::error(&format!("{}: not archived: {e}", message.topic));
        }
        PublishDecision::Pass
    }

    fn on_rule_output(&mut self, rule: String, rows_json: String) -> Result<(), HookError> {
        let rows: Vec<Value> =
            serde_json::from_str(&rows_json).map_err(|e| HookError::BadInput(e.to_string()))?;
        let at = clock::now_millis();
        for row in rows {
            self.append(&json!({ "rule": rule, "row": row, "timestamp": at }))
                .map_err(HookError::Failed)?;
        }
        Ok(())
    }
}

export_plugin!(PersistSled);
