//! What a rule's actions would do with one output row, without doing it:
//! the admin API's dry run (`POST /api/v1/rules/test` with `actions`).
//! Rendered as [`super::action`] renders them when the rule runs (same
//! templates: a topic and string properties as text, the payload as bytes;
//! a `republish` without `payload` sends the row as JSON; a `bridge` action
//! shows the same message and its bridge); a `plugin` action shows the rows
//! it would hand the plugin, which is not called.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use midge_protocol::topic;
use midge_rules::Row;
use serde_json::{json, Value};

use super::template::Template;
use super::{Action, ActionConfig};

/// One entry per action, in order: `{"type", ...what it would do}` or
/// `{"type", "error"}` when the action would fail on this row.
pub fn actions(configs: &[ActionConfig], row: &Row) -> Vec<Value> {
    configs.iter().map(|c| one(c, row)).collect()
}

fn template(text: &str) -> Result<Template, String> {
    Template::parse(text)
}

/// Text fields (topic, string properties): an error names the field.
fn text(field: &str, t: &str, row: &Row) -> Result<String, String> {
    template(t)?
        .render(row)
        .map_err(|e| format!("{field}: {e}"))
}

/// Bytes as the API shows them: `payload` (UTF-8 text, else null) and
/// `payload_base64` (always).
fn shown(bytes: &Bytes) -> (Value, String) {
    (
        std::str::from_utf8(bytes)
            .ok()
            .map_or(Value::Null, Value::from),
        B64.encode(bytes),
    )
}

fn row_json(row: &Row) -> Value {
    serde_json::to_value(row).unwrap_or(Value::Null)
}

fn one(c: &ActionConfig, row: &Row) -> Value {
    let kind = match c {
        ActionConfig::Republish { .. } => "republish",
        ActionConfig::Log {} => "log",
        ActionConfig::Plugin { .. } => "plugin",
        ActionConfig::Bridge { .. } => "bridge",
    };
    // A `bridge` action makes the message its `republish` would.
    let bridged = c.as_bridge();
    let (shown_as, bridge) = match &bridged {
        Some((name, republish)) => (republish, Some(*name)),
        None => (c, None),
    };
    let out = Action::build(c).and_then(|_| match shown_as {
        ActionConfig::Republish {
            topic: t,
            qos,
            retain,
            payload,
            user_properties,
            content_type,
            response_topic,
            correlation_data,
            message_expiry_interval,
            payload_format_indicator,
        } => {
            let topic = text("topic", t, row)?;
            if !topic::valid_name(&topic) {
                return Err(format!(
                    "rendered topic `{topic}` is not a valid topic name"
                ));
            }
            // As the action: a template's bytes, else the row as JSON.
            let bytes = match payload {
                Some(p) => template(p)?.render_bytes(row),
                None => Bytes::from(serde_json::to_vec(row).map_err(|e| e.to_string())?),
            };
            let (payload, payload_base64) = shown(&bytes);
            let opt = |field: &str, t: &Option<String>| {
                t.as_deref().map(|t| text(field, t, row)).transpose()
            };
            let user: Vec<[String; 2]> = user_properties
                .iter()
                .map(|(k, v)| {
                    Ok([
                        text("user_properties", k, row)?,
                        text("user_properties", v, row)?,
                    ])
                })
                .collect::<Result<_, String>>()?;
            let correlation = match correlation_data {
                Some(t) => Some(B64.encode(template(t)?.render_bytes(row))),
                None => None,
            };
            Ok(json!({
                "topic": topic,
                "payload": payload,
                "payload_base64": payload_base64,
                "qos": qos,
                "retain": retain,
                "properties": {
                    "user_properties": user,
                    "content_type": opt("content_type", content_type)?,
                    "response_topic": opt("response_topic", response_topic)?,
                    "correlation_data": correlation,
                    "message_expiry_interval": message_expiry_interval,
                    "payload_format_indicator": payload_format_indicator,
                },
            }))
        }
        ActionConfig::Log {} => Ok(json!({ "output": row_json(row) })),
        ActionConfig::Plugin { plugin } => Ok(json!({
            "plugin": plugin,
            "rows": serde_json::to_string(&[row]).map_err(|e| e.to_string())?,
        })),
        ActionConfig::Bridge { .. } => Err("a bridge action as such".to_string()),
    });
    let mut v = match out {
        Ok(v) => v,
        Err(e) => json!({ "error": e }),
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), kind.into());
        if let Some(name) = bridge {
            o.insert("bridge".into(), name.into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_rules::Value as V;

    #[test]
    fn republish_is_rendered_and_bad_topics_are_errors() {
        let row: Row = [
            ("t".to_string(), V::from(&json!(31))),
            ("clientid".to_string(), V::from(&json!("c1"))),
            (
                "raw".to_string(),
                V::Bytes(Bytes::from_static(&[0xCB, 0x48, 0xFF])),
            ),
        ]
        .into_iter()
        .collect();
        let acts: Vec<ActionConfig> = serde_json::from_value(json!([
            {"type": "republish", "topic": "alerts/${clientid}", "payload": "{\"t\": ${t}}", "qos": 1},
            {"type": "republish", "topic": "all/${clientid}"},
            {"type": "republish", "topic": "bad/${t}/#"},
            {"type": "log"},
            {"type": "plugin", "plugin": "archive"},
            {"type": "republish", "topic": "bin", "payload": "${raw}"},
            {"type": "republish", "topic": "bin/${raw}"},
            {"type": "bridge", "bridge": "cloud", "topic": "site1/${clientid}", "qos": 2},
            {"type": "bridge", "bridge": " ", "topic": "x"},
        ]))
        .unwrap();
        let out = actions(&acts, &row);
        assert_eq!(out[0]["type"], "republish");
        assert_eq!(out[0]["topic"], "alerts/c1");
        assert_eq!(out[0]["payload"], "{\"t\": 31}");
        assert_eq!(out[0]["qos"], 1);
        let whole: Value = serde_json::from_str(out[1]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(whole["t"], 31);
        assert_eq!(whole["clientid"], "c1");
        assert!(out[2]["error"].as_str().unwrap().contains("bad/31/#"));
        assert_eq!(out[3]["output"]["t"], 31);
        assert_eq!(out[4]["plugin"], "archive");
        let rows: Value = serde_json::from_str(out[4]["rows"].as_str().unwrap()).unwrap();
        assert_eq!(rows[0]["clientid"], "c1");
        // A binary payload stays bytes: no text, the bytes in base64.
        assert_eq!(out[5]["payload"], Value::Null);
        assert_eq!(out[5]["payload_base64"], "y0j/");
        // ... and cannot go into a topic.
        assert!(
            out[6]["error"].as_str().unwrap().starts_with("topic: "),
            "{}",
            out[6]
        );
        // A bridge action: the same message, and the bridge it goes to.
        assert_eq!(out[7]["type"], "bridge");
        assert_eq!(out[7]["bridge"], "cloud");
        assert_eq!(out[7]["topic"], "site1/c1");
        assert_eq!(out[7]["qos"], 2);
        assert!(out[8]["error"]
            .as_str()
            .unwrap()
            .contains("must name a bridge"));
    }
}
