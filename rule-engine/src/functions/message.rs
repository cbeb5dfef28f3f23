//! Message accessors: `topic()`, `clientid()`, `payload()`, `flags()`, ...,
//! and the topic-list checks `contains_topic` / `contains_topic_match`.

use super::args::{array, integer, text};
use super::{def, CallContext, CallResult, FuncDef};
use crate::topic::topic_matches;
use crate::value::{Map, Value};

pub(super) const FUNCTIONS: &[FuncDef] = &[
    def("topic", 0, 1, topic),
    def("clientid", 0, 0, |_, c| Ok(c.input.field("clientid"))),
    def("username", 0, 0, |_, c| Ok(c.input.field("username"))),
    def("peerhost", 0, 0, |_, c| Ok(c.input.field("peerhost"))),
    def("clientip", 0, 0, |_, c| Ok(c.input.field("peerhost"))),
    def("qos", 0, 0, |_, c| Ok(c.input.field("qos"))),
    def("msgid", 0, 0, |_, c| Ok(c.input.field("id"))),
    def("flags", 0, 0, |_, c| {
        Ok(match c.input.field("flags") {
            Value::Undefined => Value::Map(Map::new()),
            v => v,
        })
    }),
    def("flag", 1, 1, flag),
    def("payload", 0, 1, payload),
    def("contains_topic", 2, 3, |a, _| {
        contains(a, "contains_topic", false)
    }),
    def("contains_topic_match", 2, 3, |a, _| {
        contains(a, "contains_topic_match", true)
    }),
    def("null", 0, 0, |_, _| Ok(Value::Undefined)),
];

fn topic(a: &[Value], c: &CallContext<'_, '_>) -> CallResult {
    let topic = c.input.field("topic");
    if a.is_empty() {
        return Ok(topic);
    }
    let n = integer(a, 0, "topic")?;
    let Some(t) = topic.as_str() else {
        return Ok(Value::Undefined);
    };
    if n < 1 {
        return Err(format!("topic: level must be >= 1, got {n}"));
    }
    t.split('/')
        .nth(super::args::index(n - 1))
        .map(Value::from)
        .ok_or_else(|| format!("topic: topic {t:?} has no level {n}"))
}

fn flag(a: &[Value], c: &CallContext<'_, '_>) -> CallResult {
    let name = text(a, 0, "flag")?;
    Ok(match c.input.field("flags") {
        Value::Map(m) => m.get(name).cloned().unwrap_or_default(),
        _ => Value::Undefined,
    })
}

fn payload(a: &[Value], c: &CallContext<'_, '_>) -> CallResult {
    if a.is_empty() {
        return Ok(c.input.field("payload"));
    }
    let path = text(a, 0, "payload")?;
    let json = c.input.payload_json()?;
    Ok(super::maps::path_get(json, path.split('.'))
        .cloned()
        .unwrap_or_default())
}

/// `contains_topic(Filters, Topic[, QoS])`: `Filters` is a list of maps with
/// `topic` (and `qos`). True when one entry's topic equals `Topic` (or, for
/// `_match`, matches it as a filter: EMQX calls `emqx_topic:match(Entry,
/// Topic)`), and, with `QoS`, that first entry has that QoS.
fn contains(a: &[Value], fname: &str, matching: bool) -> CallResult {
    let filters = array(a, 0, fname)?;
    let wanted = text(a, 1, fname)?;
    let hit = filters.iter().find(|f| {
        f.get("topic").and_then(Value::as_str).is_some_and(|t| {
            if matching {
                topic_matches(wanted, t)
            } else {
                t == wanted
            }
        })
    });
    Ok(Value::Bool(match (hit, a.get(2)) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(f), Some(q)) => f.get("qos").is_some_and(|fq| crate::value::exact_eq(fq, q)),
    }))
}
