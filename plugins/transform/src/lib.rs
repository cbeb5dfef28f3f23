//! # transform: reshape payloads on their way through the broker
//!
//! Each rule applies to messages whose topic matches its filter; the first
//! matching rule wins. The payload (JSON object, or one CSV line) becomes a
//! JSON object, fields are renamed / dropped / added, and the topic may be
//! rewritten.
//!
//! ```toml
//! [[plugins.plugin.config.rules]]
//! filter = "sensors/+/raw"
//! format = "csv"                      # "json" (default) or "csv"
//! csv_columns = ["temp", "hum"]       # csv: column names (numbers parsed as numbers)
//! csv_separator = ","
//! rename = { temp = "temperature" }
//! drop = ["debug"]
//! add_timestamp = "ts"                # field set to the broker's time (Unix ms)
//! add_client_id = "client"            # field set to the publisher's client id
//! topic = "sensors/{2}/json"          # {n}: level n of the topic (1-based), {topic}, %c, %u
//! on_error = "pass"                   # unparsable payload: "pass", "drop" or "deny"
//! ```

use midge_sdk::serde_json::{self, Map, Value};
use midge_sdk::*;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Csv,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum OnError {
    #[default]
    Pass,
    Drop,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    filter: String,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    csv_columns: Vec<String>,
    #[serde(default = "comma")]
    csv_separator: char,
    #[serde(default)]
    rename: HashMap<String, String>,
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    add_timestamp: Option<String>,
    #[serde(default)]
    add_client_id: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    on_error: OnError,
}

fn comma() -> char {
    ','
}

struct Transform {
    rules: Vec<Rule>,
}

fn csv_value(s: &str) -> Value {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Value::from(f);
        }
    }
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "" => Value::Null,
        _ => Value::String(s.trim_matches('"').to_string()),
    }
}

fn parse(rule: &Rule, payload: &[u8]) -> Result<Map<String, Value>, String> {
    match rule.format {
        Format::Json => match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(other) => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                Ok(m)
            }
            Err(e) => Err(e.to_string()),
        },
        Format::Csv => {
            let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
            let line = text.lines().next().unwrap_or("");
            let mut m = Map::new();
            for (i, field) in line.split(rule.csv_separator).enumerate() {
                let name = rule
                    .csv_columns
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("col{}", i + 1));
                m.insert(name, csv_value(field));
            }
            Ok(m)
        }
    }
}

fn rewrite(template: &str, topic: &str, client: Option<&Client>) -> String {
    let levels: Vec<&str> = topic.split('/').collect();
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                let key = &after[..end];
                if key == "topic" {
                    out.push_str(topic);
                } else if let Ok(n) = key.parse::<usize>() {
                    out.push_str(levels.get(n.wrapping_sub(1)).copied().unwrap_or(""));
                } else {
                    out.push('{');
                    out.push_str(key);
                    out.push('}');
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    let cid = client.map(|c| c.client_id.as_str()).unwrap_or("");
    let user = client.and_then(|c| c.username.as_deref()).unwrap_or("");
    out.replace("%c", cid).replace("%u", user)
}

impl Plugin for Transform {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let cfg: Config = parse_config(config)?;
        let filters: Vec<String> = cfg.rules.iter().map(|r| r.filter.clone()).collect();
        let manifest = Manifest::new("transform", env!("CARGO_PKG_VERSION")).on_publish(filters);
        Ok((Transform { rules: cfg.rules }, manifest))
    }

    fn on_publish(&mut self, mut message: Message, publisher: Option<Client>) -> PublishDecision {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| topic_matches(&r.filter, &message.topic))
        else {
            return PublishDecision::Pass;
        };
        let mut fields = match parse(rule, &message.payload) {
            Ok(f) => f,
            Err(e) => {
                log::debug(&format!("{}: payload not parsed: {e}", message.topic));
                return match rule.on_error {
                    OnError::Pass => PublishDecision::Pass,
                    OnError::Drop => PublishDecision::Drop,
                    OnError::Deny => PublishDecision::Deny(reason::PAYLOAD_FORMAT_INVALID),
                };
            }
        };
        for (from, to) in &rule.rename {
            if let Some(v) = fields.remove(from) {
                fields.insert(to.clone(), v);
            }
        }
        for name in &rule.drop {
            fields.remove(name);
        }
        if let Some(name) = &rule.add_timestamp {
            fields.insert(name.clone(), Value::from(clock::now_millis()));
        }
        if let Some(name) = &rule.add_client_id {
            let cid = publisher
                .as_ref()
                .map(|c| Value::from(c.client_id.clone()))
                .unwrap_or(Value::Null);
            fields.insert(name.clone(), cid);
        }
        if let Some(t) = &rule.topic {
            message.topic = rewrite(t, &message.topic, publisher.as_ref());
        }
        message.payload = Value::Object(fields).to_string().into_bytes();
        message.properties.payload_is_utf8 = true;
        message.properties.content_type = Some("application/json".into());
        PublishDecision::Modify(message)
    }
}

midge_sdk::export_plugin!(Transform);
