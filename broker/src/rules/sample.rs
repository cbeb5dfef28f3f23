//! Runs one rule's SQL against one sample message or event, outside the
//! running rule set: `midge rule test` and `POST /api/v1/rules/test`.

use midge_rules::{EventKind, Input, Map, Row, Rule, Value};
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
    #[error("unknown event `{0}`")]
    UnknownEvent(String),
    #[error("qos must be 0, 1 or 2 (got {0})")]
    Qos(u8),
    /// Evaluation failed at run time.
    #[error("{0}")]
    Eval(String),
}

/// The rows `sql` outputs for `sample` (empty: no match).
pub fn run(sql: &str, sample: &Sample) -> Result<Vec<Row>, SampleError> {
    let rule = Rule::compile("test", sql).map_err(SampleError::Compile)?;
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
    let fields: Map = sample
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v)))
        .collect();
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
        let rows = run(r#"SELECT payload.t AS t FROM "s/#" WHERE t > 3"#, &s).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["t"], 5);
        let none = run(r#"SELECT * FROM "other/#""#, &s).unwrap();
        assert!(none.is_empty());
        let ev = Sample {
            event: Some("client_connected".into()),
            ..Sample::default()
        };
        let rows = run(r#"SELECT clientid FROM "$events/client_connected""#, &ev).unwrap();
        assert_eq!(rows[0]["clientid"], "c_test");
        assert!(matches!(
            run("SELEC x", &s),
            Err(SampleError::Compile(e)) if e.line == 1
        ));
    }
}
