//! `midge store check | export | repair`: look at a store without running
//! the broker. `check` decodes every record and lists the ones that do not;
//! `export` prints every record as one JSON object per line; `repair`
//! deletes the records that do not decode (after which the broker starts).

use std::io::Write;

use serde_json::{json, Value};

use super::{codec, Batch, Key, PersistenceConfig, StoreError};
use crate::message::Message;

fn payload_json(p: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(p) {
        Ok(s) => ("payload", Value::from(s)),
        Err(_) => (
            "payload_hex",
            Value::from(p.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        ),
    }
}

fn message_json(m: &Message) -> Value {
    let (k, p) = payload_json(&m.payload);
    let mut v = json!({
        "topic": m.topic.as_str(),
        "qos": m.qos as u8,
        "retain": m.retain,
        "timestamp_ms": m.timestamp_ms,
        "message_expiry_interval": m.properties.message_expiry_interval,
        "publisher": m.publisher(),
    });
    v[k] = p;
    v
}

/// One record as JSON, or why it does not decode.
pub fn record_json(key: &Key, value: &[u8]) -> Result<Value, codec::Corrupt> {
    Ok(match key {
        Key::Session(c) => {
            let r = codec::decode_session(value)?;
            json!({"kind": "session", "client_id": &**c, "expiry": r.expiry,
                   "disconnected_at_ms": r.disconnected_at_ms,
                   "will": r.will.map(|(m, d)| json!({"delay": d, "message": message_json(&m)}))})
        }
        Key::Sub(c, f) => {
            let r = codec::decode_sub(value)?;
            json!({"kind": "subscription", "client_id": &**c, "filter": f,
                   "qos": r.opts.qos as u8, "no_local": r.opts.no_local,
                   "retain_as_published": r.opts.retain_as_published,
                   "retain_handling": r.opts.retain_handling, "id": r.id})
        }
        Key::Queue(c, s) => {
            let d = codec::decode_delivery(value, *s)?;
            json!({"kind": "queued", "client_id": &**c, "seq": s, "qos": d.qos as u8,
                   "subscription_ids": d.sub_ids.to_vec(), "message": message_json(&d.msg)})
        }
        Key::Inflight(c, s) => {
            let (id, stage) = codec::decode_inflight(value)?;
            json!({"kind": "inflight", "client_id": &**c, "seq": s, "packet_id": id,
                   "stage": format!("{stage:?}").to_lowercase()})
        }
        Key::Qos2(c, id) => json!({"kind": "incoming_qos2", "client_id": &**c, "packet_id": id}),
        Key::Retained(_) => {
            let m = codec::decode_retained(value)?;
            json!({"kind": "retained", "message": message_json(&m)})
        }
        Key::BridgeQueue(b, s) => {
            let d = codec::decode_delivery(value, *s)?;
            json!({"kind": "bridge_buffered", "bridge": &**b, "seq": s, "qos": d.qos as u8,
                   "retain": d.retain, "message": message_json(&d.msg)})
        }
        Key::BridgeInflight(b, s) => {
            let (id, stage) = codec::decode_inflight(value)?;
            json!({"kind": "bridge_inflight", "bridge": &**b, "seq": s, "packet_id": id,
                   "stage": format!("{stage:?}").to_lowercase()})
        }
        Key::BridgeQos2(b, id) => {
            json!({"kind": "bridge_incoming_qos2", "bridge": &**b, "packet_id": id})
        }
    })
}

/// What `midge store` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Check,
    Export,
    Repair,
}

/// Runs `action`; returns the number of records that do not decode (after
/// `repair`: that were deleted). Output goes to `out`, findings to `err`.
pub fn run(
    cfg: &PersistenceConfig,
    action: Action,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<usize, StoreError> {
    let mut backend = cfg.open_existing()?;
    let name = backend.describe();
    let mut dropped = 0;
    if action == Action::Repair {
        for d in backend.drop_unreadable()? {
            let _ = writeln!(err, "{name}: deleted unreadable {d}");
            dropped += 1;
        }
    }
    let rows = backend.load()?;
    let total = rows.len();
    let mut bad = Vec::new();
    for (k, v) in &rows {
        match record_json(k, v) {
            Ok(j) => {
                if action == Action::Export {
                    let _ = writeln!(out, "{j}");
                }
            }
            Err(c) => {
                let _ = writeln!(err, "{name}: record {k} is corrupt: {}", c.0);
                bad.push(k.clone());
            }
        }
    }
    if action == Action::Repair && !bad.is_empty() {
        let batch = Batch {
            writes: bad.iter().map(|k| (k.clone(), None)).collect(),
            ..Batch::default()
        };
        backend.commit(&batch)?;
        let _ = writeln!(err, "{name}: deleted {} corrupt records", bad.len());
    }
    let _ = writeln!(
        err,
        "{name}: {total} records, {} corrupt",
        bad.len() + dropped
    );
    Ok(bad.len() + dropped)
}
