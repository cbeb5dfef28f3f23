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

/// How deep arrays and objects may nest in the fast path (serde_json's
/// own limit is 128; deeper documents take the general path).
const MAX_DEPTH: usize = 128;

/// A JSON object checked by [`scan_object`]: where its closing brace is
/// and whether it has members.
struct Scanned {
    close: usize,
    empty: bool,
}

/// Validates `b` as one JSON object (RFC 8259; whitespace around it
/// allowed) whose top-level keys, written without escapes, are none of
/// `names`. `None`: not valid, or a key is escaped or among `names`, or
/// something this scanner leaves to serde_json (surrogate escapes, nesting
/// deeper than [`MAX_DEPTH`]): the caller takes the general path, which
/// parses the payload fully and decides.
fn scan_object(b: &[u8], names: &[&[u8]]) -> Option<Scanned> {
    // UTF-8 first (a quick check for ASCII payloads); the grammar below only
    // lets bytes >= 0x80 through inside strings.
    if !b.is_ascii() && std::str::from_utf8(b).is_err() {
        return None;
    }
    let mut i = ws(b, 0);
    if *b.get(i)? != b'{' {
        return None;
    }
    i = ws(b, i + 1);
    let mut empty = true;
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            i = ws(b, i);
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (end, escaped) = string(b, i)?;
            if escaped || names.contains(&&b[i + 1..end - 1]) {
                return None; // an escaped key, or one of the added names
            }
            i = ws(b, end);
            if *b.get(i)? != b':' {
                return None;
            }
            i = ws(b, value(b, i + 1, 1)?);
            empty = false;
            match *b.get(i)? {
                b',' => i += 1,
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (ws(b, i) == b.len()).then_some(Scanned {
        close: i - 1,
        empty,
    })
}

// The scanner: each function takes the payload and an index and returns
// the index after what it read (`None`: not valid, or left to serde_json).
// Plain functions of (slice, index), so that the index stays in a local.

/// The longest integer part [`number`] accepts (an `f64` holds up to about
/// 1.8e308).
const MAX_INT_DIGITS: usize = 300;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The eight bytes of `b` at `i` as one little-endian word, if there are
/// eight.
fn word(b: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = b.get(i..i + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Nonzero when a byte of `v` ends a run of plain string bytes: `"`, `\\`
/// or a control character (exact as a test of the whole word).
fn special(v: u64) -> u64 {
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    has_zero(v ^ (ONES * u64::from(b'"')))
        | has_zero(v ^ (ONES * u64::from(b'\\')))
        | (v.wrapping_sub(ONES * 0x20) & !v & HIGH)
}

fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// A string whose opening quote is at `i`: the index after its closing
/// quote, and whether it has escapes. Plain bytes are skipped eight at a
/// time.
fn string(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    i += 1;
    let mut escaped = false;
    loop {
        while let Some(v) = word(b, i) {
            if special(v) != 0 {
                break;
            }
            i += 8;
        }
        let c = *b.get(i)?;
        i += 1;
        match c {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                let e = *b.get(i)?;
                i += 1;
                match e {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let mut v = 0u32;
                        for &h in b.get(i..i + 4)? {
                            v = v * 16 + char::from(h).to_digit(16)?;
                        }
                        if (0xD800..0xE000).contains(&v) {
                            return None; // surrogates: left to serde_json
                        }
                        i += 4;
                    }
                    _ => return None,
                }
            }
            0..=0x1f => return None,
            _ => {}
        }
    }
}

/// Skips ASCII digits from `i`, eight at a time while it can.
fn skip_digits(b: &[u8], mut i: usize) -> usize {
    while let Some(v) = word(b, i) {
        // All eight are '0'..='9': high nibbles 3, and adding 6 to each
        // keeps them 3 (no byte above '9').
        if v & 0xF0F0_F0F0_F0F0_F0F0 != 0x3030_3030_3030_3030
            || (v.wrapping_add(0x0606_0606_0606_0606)) & 0xF0F0_F0F0_F0F0_F0F0
                != 0x3030_3030_3030_3030
        {
            break;
        }
        i += 8;
    }
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// At least one digit.
fn digits(b: &[u8], i: usize) -> Option<usize> {
    let end = skip_digits(b, i);
    (end > i).then_some(end)
}

/// A number. Ones serde_json may find out of range for an `f64` (an
/// integer part of more than [`MAX_INT_DIGITS`] digits, an exponent of more
/// than two) are left to it: the general path decides.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let start = i;
    i = match *b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => skip_digits(b, i + 1),
        _ => return None,
    };
    if i - start > MAX_INT_DIGITS {
        return None;
    }
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let start = i;
        i = digits(b, i)?;
        if i - start > 2 {
            return None;
        }
    }
    Some(i)
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// One value (after optional whitespace), `depth` levels deep.
fn value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    let i = ws(b, i);
    match *b.get(i)? {
        b'"' => string(b, i).map(|(end, _)| end),
        b'{' if depth < MAX_DEPTH => object(b, i + 1, depth),
        b'[' if depth < MAX_DEPTH => array(b, i + 1, depth),
        b't' => literal(b, i, b"true"),
        b'f' => literal(b, i, b"false"),
        b'n' => literal(b, i, b"null"),
        b'-' | b'0'..=b'9' => number(b, i),
        _ => None,
    }
}

/// The members of an object whose `{` is just before `i`.
fn object(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    let mut i = ws(b, i);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        i = ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        i = ws(b, string(b, i)?.0);
        if *b.get(i)? != b':' {
            return None;
        }
        i = ws(b, value(b, i + 1, depth + 1)?);
        match *b.get(i)? {
            b',' => i += 1,
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The elements of an array whose `[` is just before `i`.
fn array(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    let mut i = ws(b, i);
    if b.get(i) == Some(&b']') {
        return Some(i + 1);
    }
    loop {
        i = ws(b, value(b, i, depth + 1)?);
        match *b.get(i)? {
            b',' => i += 1,
            b']' => return Some(i + 1),
            _ => return None,
        }
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
/// drop, none of the added names already present): the payload's bytes up
/// to its closing brace are appended to `out`, then `fields` (the added
/// members, JSON text without a leading comma, see [`Adds::members`]) and
/// the brace, instead of building a map and serializing it again: its key
/// order and formatting are kept. `false` (nothing appended): not such a
/// payload, take the general path.
fn splice(payload: &[u8], names: &[&[u8]], fields: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(obj) = scan_object(payload, names) else {
        return false;
    };
    let body = payload[..obj.close].trim_ascii_end();
    out.reserve(body.len() + fields.len() + 2);
    out.extend_from_slice(body);
    if !obj.empty {
        out.push(b',');
    }
    out.extend_from_slice(fields);
    out.push(b'}');
    true
}

/// The fields a rule adds, with their values, and as JSON members
/// (`"name":value,...`) for [`splice`]: built once per message, or once per
/// batch (the publisher and the clock reading are the same for all).
struct Adds<'a> {
    fields: [(&'a str, Added<'a>); 2],
    n: usize,
    members: Vec<u8>,
}

impl<'a> Adds<'a> {
    /// The fields `rule` adds; `now` is read from the clock at most once
    /// and shared by the messages of a batch.
    fn new(rule: &'a Rule, publisher: Option<&'a Client>, now: &mut Option<u64>) -> Adds<'a> {
        let mut adds = Adds {
            fields: [("", Added::Millis(0)); 2],
            n: 0,
            members: Vec::new(),
        };
        if let Some(name) = &rule.add_timestamp {
            let ms = *now.get_or_insert_with(clock::now_millis);
            adds.fields[adds.n] = (name, Added::Millis(ms));
            adds.n += 1;
        }
        if let Some(name) = &rule.add_client_id {
            adds.fields[adds.n] = (name, Added::Text(publisher.map(|c| c.client_id.as_str())));
            adds.n += 1;
        }
        for (i, (name, value)) in adds.fields[..adds.n].iter().enumerate() {
            if i > 0 {
                adds.members.push(b',');
            }
            let _ = serde_json::to_writer(&mut adds.members, name);
            adds.members.push(b':');
            value.write(&mut adds.members);
        }
        adds
    }

    fn get(&self) -> &[(&'a str, Added<'a>)] {
        &self.fields[..self.n]
    }

    fn names(&self) -> ([&[u8]; 2], usize) {
        let mut names: [&[u8]; 2] = [b""; 2];
        for (slot, (name, _)) in names.iter_mut().zip(self.get()) {
            *slot = name.as_bytes();
        }
        (names, self.n)
    }
}

/// The content type set on every message transform passes on.
const JSON: &str = "application/json";

fn json_properties(mut p: MessageProperties) -> MessageProperties {
    p.payload_is_utf8 = true;
    p.content_type = Some(JSON.into());
    p
}

fn is_json(p: &MessageProperties) -> bool {
    p.payload_is_utf8 && p.content_type.as_deref() == Some(JSON)
}

impl Transform {
    /// The first rule whose filter matches `topic`, and its index.
    fn rule_for(&self, topic: &str) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.filter == "#" || topic_matches(&r.filter, topic))
    }

    /// Appends the new payload for `payload` under `rule` to `out`; `Err`
    /// (nothing appended): the payload does not parse.
    fn reshape(rule: &Rule, payload: &[u8], adds: &Adds, out: &mut Vec<u8>) -> Result<(), String> {
        let added = adds.get();
        if rule.format == Format::Json && rule.rename.is_empty() && rule.drop.is_empty() {
            let (names, n) = adds.names();
            if splice(payload, &names[..n], &adds.members, out) {
                return Ok(());
            }
        }
        let mut fields = parse(rule, payload)?;
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
        serde_json::to_writer(out, &Value::Object(fields)).map_err(|e| e.to_string())
    }

    fn failed(rule: &Rule, topic: &str, e: &str) -> PublishDecision {
        log::debug(&format!("{topic}: payload not parsed: {e}"));
        match rule.on_error {
            OnError::Pass => PublishDecision::Pass,
            OnError::Drop => PublishDecision::Drop,
            OnError::Deny => PublishDecision::Deny(reason::PAYLOAD_FORMAT_INVALID),
        }
    }

    fn apply(&self, mut message: Message, publisher: Option<&Client>) -> PublishDecision {
        let Some((_, rule)) = self.rule_for(&message.topic) else {
            return PublishDecision::Pass;
        };
        let adds = Adds::new(rule, publisher, &mut None);
        let mut payload = Vec::with_capacity(message.payload.len() + 64);
        if let Err(e) = Self::reshape(rule, &message.payload, &adds, &mut payload) {
            return Self::failed(rule, &message.topic, &e);
        }
        message.payload = payload;
        if let Some(t) = &rule.topic {
            message.topic = rewrite(t, &message.topic, publisher);
        }
        message.properties = json_properties(message.properties);
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

    /// The batch path: payloads are written straight into `out`, the clock
    /// is read once, and messages without properties share one set.
    fn on_publish_batch(
        &mut self,
        batch: &Batch,
        publisher: Option<&Client>,
        out: &mut BatchDecisions,
    ) {
        let mut now = None;
        let mut shared: Option<NewProperties> = None;
        // Per rule, the fields it adds: the same for every message.
        let mut adds: Vec<Option<Adds>> = self.rules.iter().map(|_| None).collect();
        for m in batch.iter() {
            let Some((k, rule)) = self.rule_for(m.topic) else {
                out.pass();
                continue;
            };
            let adds = adds[k].get_or_insert_with(|| Adds::new(rule, publisher, &mut now));
            let mut error = None;
            let payload =
                out.write_payload(|buf| match Self::reshape(rule, m.payload, adds, buf) {
                    Ok(()) => true,
                    Err(e) => {
                        error = Some(e);
                        false
                    }
                });
            let Some(payload) = payload else {
                let e = error.unwrap_or_default();
                out.push(&m, Self::failed(rule, m.topic, &e));
                continue;
            };
            let topic = rule
                .topic
                .as_ref()
                .map(|t| out.add_topic(&rewrite(t, m.topic, publisher)));
            let properties = match m.properties {
                None => Some(*shared.get_or_insert_with(|| {
                    out.add_properties(json_properties(MessageProperties::default()))
                })),
                Some(p) if is_json(p) => None,
                Some(p) => Some(out.add_properties(json_properties(p.clone()))),
            };
            out.modify(Change {
                topic,
                payload: Some(payload),
                properties,
                ..Change::default()
            });
        }
    }
}

midge_sdk::export_plugin!(Transform);
