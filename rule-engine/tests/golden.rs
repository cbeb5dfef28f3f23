//! Golden tests: every `tests/golden/*.toml` file holds `[[case]]` tables:
//!
//! - `name`, `sql`
//! - input: `topic` + `payload` for a message, or `event = "client_connected"`
//!   (the `$events/` suffix) with optional `topic`/`payload`; `payload_hex`
//!   gives a binary payload as hex digits instead of `payload`; `fields` is a
//!   JSON object overriding the defaults (`clientid`, `username`,
//!   `peerhost`, `id`, `qos`, `retain`, `dup`, `timestamp`,
//!   `publish_received_at`, `node`); any other key goes to `Input::extra`.
//! - expectation, one of: `expect` (JSON array of rows; a binary that is not
//!   UTF-8 is written `{"$binary": "<base64>"}`, as the broker writes it),
//!   `error` (load error substring), `eval_error` (runtime error substring).

use std::path::Path;

use midge_rules::{EventKind, Input, Map, Rule, Value};

fn s<'a>(t: &'a toml::Table, k: &str) -> Option<&'a str> {
    t.get(k).and_then(toml::Value::as_str)
}

fn run_case(file: &str, case: &toml::Table) -> Result<(), String> {
    let name = s(case, "name").unwrap_or("<unnamed>");
    let ctx = format!("{file}: {name}");
    let sql = s(case, "sql").ok_or_else(|| format!("{ctx}: missing sql"))?;
    let compiled = Rule::compile(name, sql);
    if let Some(want) = s(case, "error") {
        return match compiled {
            Ok(_) => Err(format!(
                "{ctx}: expected load error containing {want:?}, rule loaded"
            )),
            Err(e) => {
                let text = e.to_string();
                if text.contains(want) && text.contains(&format!("rule {name}:")) {
                    Ok(())
                } else {
                    Err(format!(
                        "{ctx}: load error {text:?} does not contain {want:?}"
                    ))
                }
            }
        };
    }
    let rule = compiled.map_err(|e| format!("{ctx}: {e}"))?;

    let mut fields: Map = match s(case, "fields") {
        Some(j) => match Value::from_json(j.as_bytes()) {
            Ok(Value::Map(m)) => m,
            _ => return Err(format!("{ctx}: fields must be a JSON object")),
        },
        None => Map::new(),
    };
    let mut take_str = |k: &str, d: &str| -> String {
        match fields.remove(k) {
            Some(Value::Str(v)) => v,
            _ => d.to_owned(),
        }
    };
    let clientid = take_str("clientid", "c1");
    let peerhost = take_str("peerhost", "127.0.0.1");
    let id = take_str("id", "0005E27C1D24E44FF440000017520000");
    let node = take_str("node", "emqx@127.0.0.1");
    let username = match fields.remove("username") {
        Some(Value::Str(v)) => Some(v),
        Some(Value::Null) => None,
        _ => Some("u1".to_owned()),
    };
    let int = |f: &mut Map, k: &str, d: i64| f.remove(k).and_then(|v| v.as_i64()).unwrap_or(d);
    let has_qos = fields.contains_key("qos");
    let qos = int(&mut fields, "qos", 1) as u8;
    let ts = int(&mut fields, "timestamp", 1_700_000_000_000);
    let pra = int(&mut fields, "publish_received_at", 1_700_000_000_000);
    let boolf = |f: &mut Map, k: &str| matches!(f.remove(k), Some(Value::Bool(true)));
    let retain = boolf(&mut fields, "retain");
    let dup = boolf(&mut fields, "dup");
    let topic = s(case, "topic");
    let hex_payload = match s(case, "payload_hex") {
        Some(h) => Some(unhex(h).ok_or_else(|| format!("{ctx}: bad payload_hex"))?),
        None => None,
    };
    let payload = hex_payload
        .as_deref()
        .or_else(|| s(case, "payload").map(str::as_bytes));

    let mut input = match s(case, "event") {
        Some(ev) => {
            let kind = EventKind::from_topic(&format!("$events/{ev}"))
                .ok_or_else(|| format!("{ctx}: unknown event {ev}"))?;
            let mut i = Input::event(kind);
            if let Some(t) = topic {
                i = i.topic(t);
            }
            if let Some(p) = payload {
                i = i.payload(p);
            }
            i
        }
        None => Input::message(topic.unwrap_or("t/1"), payload.unwrap_or(b"")),
    };
    input = input
        .clientid(&clientid)
        .username(username.as_deref())
        .timestamp(ts)
        .node(&node)
        .extra(&fields);
    let is_msg = matches!(
        input.source(),
        midge_rules::Source::Message
            | midge_rules::Source::Event(
                EventKind::MessageDelivered
                    | EventKind::MessageAcked
                    | EventKind::MessageDropped
                    | EventKind::DeliveryDropped
            )
    );
    if has_qos || is_msg {
        input = input.qos(qos);
    }
    if is_msg {
        input = input
            .id(&id)
            .flags(retain, dup)
            .publish_received_at(pra)
            .peerhost(&peerhost);
    }

    let result = rule.apply(&input);
    if let Some(want) = s(case, "eval_error") {
        return match result {
            Ok(rows) => Err(format!(
                "{ctx}: expected runtime error {want:?}, got rows {rows:?}"
            )),
            Err(e) if e.to_string().contains(want) => Ok(()),
            Err(e) => Err(format!(
                "{ctx}: runtime error {e} does not contain {want:?}"
            )),
        };
    }
    let rows = result.map_err(|e| format!("{ctx}: {e}"))?;
    let want: serde_json::Value = match s(case, "expect") {
        Some(j) => serde_json::from_str(j).map_err(|e| format!("{ctx}: bad expect JSON: {e}"))?,
        None => return Err(format!("{ctx}: no expectation (expect, error, eval_error)")),
    };
    let got = serde_json::to_value(&rows).map_err(|e| format!("{ctx}: {e}"))?;
    if got != want {
        return Err(format!(
            "{ctx}:\n  sql:  {sql}\n  want: {want}\n  got:  {got}"
        ));
    }
    Ok(())
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

#[test]
fn golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/golden exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files");
    let mut failures = Vec::new();
    let mut total = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable golden file");
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let doc: toml::Table = match text.parse() {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{file}: TOML error: {e}"));
                continue;
            }
        };
        let cases = doc
            .get("case")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in cases {
            total += 1;
            match c.as_table() {
                Some(t) => {
                    if let Err(e) = run_case(&file, t) {
                        failures.push(e);
                    }
                }
                None => failures.push(format!("{file}: case is not a table")),
            }
        }
    }
    println!("{total} golden cases");
    assert!(
        failures.is_empty(),
        "{} of {total} golden cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
