//! Runs one rule's SQL against one sample message or event, outside the
//! running rule set: `midge rule test` and `POST /api/v1/rules/test`.

use std::sync::Arc;

use midge_rules::{EventKind, ExternalFunctions, Input, Map, Row, Rule, Value};
use serde::Deserialize;

/// A sample input. Defaults match `midge rule test`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sample {
    pub topic: String,
    /// Payload as text.
    pub payload: String,
    pub clientid: String,
    pub username: Option<String>,
    pub qos: u8,
    pub retain: bool,
    pub peerhost: String,
    /// Evaluate against this event (e.g. `client_connected` or
    /// `$events/client_connected`) instead of a message.
    pub event: Option<String>,
    /// Extra input fields.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Default for Sample {
    fn default() -> Self {
        Sample {
            topic: "t/1".into(),
            payload: String::new(),
            clientid: "c_test".into(),
            username: None,
            qos: 0,
            retain: false,
            peerhost: "127.0.0.1".into(),
            event: None,
            fields: serde_json::Map::new(),
        }
    }
}

/// Why a test did not run.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The SQL does not compile (rule id "test", line and column).
    #[error("{0}")]
    Compile(midge_rules::RuleError),
    #[error("unknown event `{}`; expected one of: {}", .0, event_names())]
    UnknownEvent(String),
    #[error("qos must be 0, 1 or 2 (got {0})")]
    Qos(u8),
    /// Evaluation failed at run time.
    #[error("{0}")]
    Eval(String),
}

/// The event names `--event` accepts.
fn event_names() -> String {
    EventKind::ALL
        .iter()
        .map(|k| k.topic().trim_start_matches("$events/"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plausible values for the fields of a sample event that neither the
/// sample nor its `fields` set (`peername`, `proto_ver`, `keepalive`, ...),
/// so a test shows what a real event would give instead of `null`.
fn event_defaults(kind: EventKind, sample: &Sample, now: i64) -> Map {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        if kind.fields().contains(&k) {
            m.insert(k.to_owned(), v);
        }
    };
    put(
        "peername",
        Value::from(format!("{}:52340", sample.peerhost)),
    );
    put("sockname", Value::from("127.0.0.1:1883"));
    put("proto_name", Value::from("MQTT"));
    put("proto_ver", Value::Int(5));
    put("keepalive", Value::Int(60));
    put("clean_start", Value::Bool(true));
    put("expiry_interval", Value::Int(0));
    put("is_bridge", Value::Bool(false));
    put("mountpoint", Value::Undefined);
    put("connected_at", Value::Int(now));
    put("disconnected_at", Value::Int(now));
    put("reason", Value::from("normal"));
    put("reason_code", Value::from("success"));
    put("is_superuser", Value::Bool(false));
    put("is_anonymous", Value::Bool(sample.username.is_none()));
    put("action", Value::from("publish"));
    put("authz_source", Value::from("default"));
    put("result", Value::from("allow"));
    put("from_clientid", Value::from(sample.clientid.as_str()));
    put("from_username", Value::from(sample.username.clone()));
    put("publish_received_at", Value::Int(now));
    put("conn_props", Value::Map(Map::new()));
    put("disconn_props", Value::Map(Map::new()));
    put("sub_props", Value::Map(Map::new()));
    put("unsub_props", Value::Map(Map::new()));
    put("puback_props", Value::Map(Map::new()));
    put("pub_props", Value::Map(Map::new()));
    m
}

/// The rows `sql` outputs for `sample` (empty: no match). `functions`:
/// what rules may call beyond the catalogue (the plugins' functions).
pub fn run(
    sql: &str,
    sample: &Sample,
    functions: Option<&Arc<dyn ExternalFunctions>>,
) -> Result<Vec<Row>, SampleError> {
    let rule = Rule::compile_with("test", sql, functions).map_err(SampleError::Compile)?;
    if sample.qos > 2 {
        return Err(SampleError::Qos(sample.qos));
    }
    let base = match &sample.event {
        Some(name) => {
            let name = name.trim_start_matches("$events/");
            match EventKind::ALL
                .iter()
                .find(|k| k.event_name() == name || k.topic().ends_with(name))
            {
                Some(k) => Input::event(*k)
                    .topic(&sample.topic)
                    .payload(sample.payload.as_bytes()),
                None => return Err(SampleError::UnknownEvent(name.to_string())),
            }
        }
        None => Input::message(&sample.topic, sample.payload.as_bytes()),
    };
    let now = crate::message::now_ms();
    let mut fields = match base.source() {
        midge_rules::Source::Event(kind) => event_defaults(kind, sample, now),
        midge_rules::Source::Message => Map::new(),
    };
    fields.extend(
        sample
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v))),
    );
    let input = base
        .clientid(&sample.clientid)
        .username(sample.username.as_deref())
        .peerhost(&sample.peerhost)
        .qos(sample.qos)
        .flags(sample.retain, false)
        .timestamp(now)
        .publish_received_at(now)
        .node(super::NODE)
        .id("0000000000000001")
        .extra(&fields);
    rule.apply(&input)
        .map_err(|e| SampleError::Eval(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_and_event_samples() {
        let s = Sample {
            topic: "s/1".into(),
            payload: r#"{"t":5}"#.into(),
            ..Sample::default()
        };
        let rows = run(r#"SELECT payload.t AS t FROM "s/#" WHERE t > 3"#, &s, None).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["t"], 5);
        let none = run(r#"SELECT * FROM "other/#""#, &s, None).unwrap();
        assert!(none.is_empty());
        let ev = Sample {
            event: Some("client_connected".into()),
            ..Sample::default()
        };
        let rows = run(
            r#"SELECT clientid FROM "$events/client_connected""#,
            &ev,
            None,
        )
        .unwrap();
        assert_eq!(rows[0]["clientid"], "c_test");
        assert!(matches!(
            run("SELEC x", &s, None),
            Err(SampleError::Compile(e)) if e.line == 1
        ));
        let rows = run(
            r#"SELECT peername, proto_ver, keepalive FROM "$events/client_connected""#,
            &ev,
            None,
        )
        .unwrap();
        assert_eq!(rows[0]["peername"], "127.0.0.1:52340");
        assert_eq!(rows[0]["proto_ver"], 5);
        assert_eq!(rows[0]["keepalive"], 60);
        let typo = Sample {
            event: Some("client_conected".into()),
            ..Sample::default()
        };
        let e = run(r#"SELECT * FROM "$events/client_connected""#, &typo, None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("client_conected")
                && text.contains("client_connected, client_disconnected"),
            "{text}"
        );
    }
}
