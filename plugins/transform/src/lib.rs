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
//!
//! A JSON object that only gains fields (no `rename`, no `drop`, none of the
//! added names present yet) is validated and the fields are spliced in
//! before its closing brace: its own bytes and key order are kept. Anything
//! else is parsed into a map and serialized again (keys then come out
//! sorted). Batches of messages (`on-publish-batch`) are handled in one call.

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

/// Whether a JSON object has a top-level key among `names`, found while
/// validating the whole document (values are skipped, nothing is built).
struct KeyScan<'a> {
    names: &'a [&'a str],
    present: bool,
}

/// One key: is it among the names? (Escaped keys arrive unescaped.)
struct IsAdded<'a>(&'a [&'a str]);

impl<'de> serde::de::DeserializeSeed<'de> for IsAdded<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for IsAdded<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(self.0.contains(&v))
    }
}

impl<'de> serde::de::Visitor<'de> for &mut KeyScan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(hit) = map.next_key_seed(IsAdded(self.names))? {
            self.present |= hit;
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(())
    }
}

/// A field `transform` adds.
#[derive(Clone, Copy)]
enum Added<'a> {
    /// The broker's time, Unix ms.
    Millis(u64),
    /// The publisher's client id (null without one).
    Text(Option<&'a str>),
}

impl Added<'_> {
    fn value(self) -> Value {
        match self {
            Added::Millis(n) => Value::from(n),
            Added::Text(Some(s)) => Value::from(s),
            Added::Text(None) => Value::Null,
        }
    }

    fn write(self, out: &mut Vec<u8>) {
        match self {
            Added::Millis(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Added::Text(Some(s)) => {
                let _ = serde_json::to_writer(&mut *out, s);
            }
            Added::Text(None) => out.extend_from_slice(b"null"),
        }
    }
}

/// The fast path for a JSON object that only gains fields (no rename, no
/// drop, none of the added names already present): the fields are spliced
/// in before the closing brace, in place, keeping the payload's bytes and
/// key order, instead of building a map and serializing it again. `false`
/// (payload untouched): not such a payload, take the general path.
fn splice(payload: &mut Vec<u8>, added: &[(&str, Added)]) -> bool {
    let mut names = [""; 2];
    for (slot, (name, _)) in names.iter_mut().zip(added) {
        *slot = name;
    }
    let mut scan = KeyScan {
        names: &names[..added.len()],
        present: false,
    };
    let mut de = serde_json::Deserializer::from_slice(payload);
    if serde::Deserializer::deserialize_map(&mut de, &mut scan).is_err() || de.end().is_err() {
        return false;
    }
    if scan.present {
        return false;
    }
    let Some(end) = payload.iter().rposition(|b| *b == b'}') else {
        return false;
    };
    let body = payload[..end].trim_ascii_end().len();
    let empty = payload[body - 1] == b'{';
    payload.truncate(body);
    for (i, (name, value)) in added.iter().enumerate() {
        if i > 0 || !empty {
            payload.push(b',');
        }
        let _ = serde_json::to_writer(&mut *payload, name);
        payload.push(b':');
        value.write(payload);
    }
    payload.push(b'}');
    true
}

impl Transform {
    fn apply(&self, mut message: Message, publisher: Option<&Client>) -> PublishDecision {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| topic_matches(&r.filter, &message.topic))
        else {
            return PublishDecision::Pass;
        };
        let mut added = [("", Added::Millis(0)); 2];
        let mut n = 0;
        if let Some(name) = &rule.add_timestamp {
            added[n] = (name, Added::Millis(clock::now_millis()));
            n += 1;
        }
        if let Some(name) = &rule.add_client_id {
            added[n] = (name, Added::Text(publisher.map(|c| c.client_id.as_str())));
            n += 1;
        }
        let added = &added[..n];
        let fast = rule.format == Format::Json
            && rule.rename.is_empty()
            && rule.drop.is_empty()
            && splice(&mut message.payload, added);
        if !fast {
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
            for (name, v) in added {
                fields.insert(name.to_string(), v.value());
            }
            message.payload = Value::Object(fields).to_string().into_bytes();
        }
        if let Some(t) = &rule.topic {
            message.topic = rewrite(t, &message.topic, publisher);
        }
        message.properties.payload_is_utf8 = true;
        message.properties.content_type = Some("application/json".into());
        PublishDecision::Modify(message)
    }
}

impl Plugin for Transform {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let cfg: Config = parse_config(config)?;
        let filters: Vec<String> = cfg.rules.iter().map(|r| r.filter.clone()).collect();
        let manifest = Manifest::new("transform", env!("CARGO_PKG_VERSION")).on_publish(filters);
        Ok((Transform { rules: cfg.rules }, manifest))
    }

    fn on_publish(&mut self, message: Message, publisher: Option<Client>) -> PublishDecision {
        self.apply(message, publisher.as_ref())
    }

    fn on_publish_batch(
        &mut self,
        messages: Vec<Message>,
        publisher: Option<Client>,
    ) -> Vec<PublishDecision> {
        messages
            .into_iter()
            .map(|m| self.apply(m, publisher.as_ref()))
            .collect()
    }
}

midge_sdk::export_plugin!(Transform);
