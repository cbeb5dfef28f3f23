//! A plugin's configuration reloaded live (SIGHUP, `POST /config/reload`):
//! changed entries take effect, added plugins act, removed ones stop, a bad
//! new config is refused by name while the old version keeps running, and
//! the clients (rumqttc) stay connected throughout. A `V4` client's event
//! loop ends at its first connection error (it never reconnects), so a
//! client that keeps receiving is still on its first connection.

#![allow(clippy::unwrap_used)] // test helpers
use std::time::Duration;

use midge_e2e::http::Admin;
use midge_e2e::*;
use rumqttc::QoS;
use serde_json::{json, Value};

/// transform turning `dev/+/raw` CSV with `columns` into `dev/{2}/json`.
fn transform(wasm: &std::path::Path, columns: &str, extra: &str) -> String {
    format!(
        "[[plugins.plugin]]\nname = \"tx\"\npath = \"{}/transform.wasm\"\n\
         config = {{ rules = [ {{ filter = \"dev/+/raw\", format = \"csv\", csv_columns = [{columns}], topic = \"dev/{{2}}/json\"{extra} }} ] }}\n",
        wasm.display()
    )
}

/// test-misbehave: its on-publish reverses every payload; `init` refuses a
/// config containing `fail-init`.
fn reverser(wasm: &std::path::Path, config: &str) -> String {
    format!(
        "[[plugins.plugin]]\nname = \"rev\"\npath = \"{}/test_misbehave.wasm\"\nconfig = {config}\n",
        wasm.display()
    )
}

fn json_of(p: &rumqttc::Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap_or_else(|e| panic!("{e}: {:?}", p.payload))
}

/// Writes `text` to `file` keeping its modification time, so that only the
/// SIGHUP (not the file poll) makes the broker read it.
fn rewrite_unnoticed(file: &std::path::Path, text: &str) {
    let before = std::fs::metadata(file).unwrap().modified().unwrap();
    std::fs::write(file, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(before)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_plugin_config_and_refuses_a_bad_one() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-plugin-hup");
    let file = dir.0.join("midge.toml");
    let head = format!(
        "[log]\nlevel = \"warn\"\n[plugins]\nkv_path = \"{}\"\n",
        dir.0.join("kv").display()
    );
    std::fs::write(&file, head.clone() + &transform(&wasm, "\"temp\"", "")).unwrap();
    let broker = midge_e2e::process::BrokerProcess::start(&file, 0);
    let mut sub = V4::new_at(broker.port()).await;
    sub.subscribe("dev/#", QoS::AtLeastOnce).await;
    let mut publ = V4::new_at(broker.port()).await;
    publ.publish("dev/a/raw", QoS::AtLeastOnce, false, "21")
        .await;
    let m = sub.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), json_of(&m)),
        ("dev/a/json", json!({ "temp": 21 }))
    );

    // New columns; SIGHUP. Publish until the new config answers (bounded).
    rewrite_unnoticed(
        &file,
        &(head.clone() + &transform(&wasm, "\"celsius\"", "")),
    );
    broker.signal("HUP");
    let mut seen = None;
    for _ in 0..100 {
        publ.publish("dev/a/raw", QoS::AtLeastOnce, false, "22")
            .await;
        let m = sub.next_publish().await;
        if json_of(&m).get("celsius").is_some() {
            seen = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = seen.unwrap_or_else(|| panic!("new config never applied:\n{}", broker.log()));
    assert_eq!(
        (m.topic.as_str(), json_of(&m)),
        ("dev/a/json", json!({ "celsius": 22 }))
    );

    // A config transform's init refuses (unknown field): refused, named in
    // the log, the running version keeps answering.
    rewrite_unnoticed(
        &file,
        &(head + &transform(&wasm, "\"kelvin\"", ", bogus = 1")),
    );
    broker.signal("HUP");
    let mut log = broker.log();
    for _ in 0..200 {
        if log.contains("plugin refused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = broker.log();
    }
    let line = log
        .lines()
        .find(|l| l.contains("plugin refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains("tx") && line.contains("init refused"),
        "{line}"
    );
    publ.publish("dev/a/raw", QoS::AtLeastOnce, false, "23")
        .await;
    let m = sub.next_publish().await;
    assert_eq!(
        json_of(&m),
        json!({ "celsius": 23 }),
        "the previous version runs"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_adds_refuses_and_removes_plugins_without_dropping_clients() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-plugin-admin-reload");
    let file = dir.0.join("midge.toml");
    let head = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[plugins]\nkv_path = \"{}\"\n",
        dir.0.join("kv").display()
    );
    let tx = transform(&wasm, "\"temp\"", "");
    std::fs::write(&file, head.clone() + &tx).unwrap();
    let b = start_broker_from_file(&file, |_| {}).await;
    let a = Admin::of(&b);
    // Connected before test-misbehave arrives (it refuses clients without
    // a user name at CONNECT): these connections must simply stay.
    let mut sub = V4::new(&b, "reload-sub").await;
    sub.subscribe("plain/#", QoS::AtLeastOnce).await;
    sub.subscribe("dev/#", QoS::AtLeastOnce).await;
    let mut publ = V4::new(&b, "reload-pub").await;
    let mut roundtrip = async |topic: &str, payload: &str| {
        publ.publish(topic, QoS::AtLeastOnce, false, payload).await;
        let m = sub.next_publish().await;
        (
            m.topic.clone(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        )
    };
    assert_eq!(roundtrip("plain/x", "abc").await.1, "abc");

    // Added: acts on the next message.
    std::fs::write(&file, head.clone() + &tx + &reverser(&wasm, "{ v = 1 }")).unwrap();
    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins_added"], json!(["rev"]), "{body}");
    assert_eq!(body["plugins_refused"], json!([]), "{body}");
    assert_eq!(roundtrip("plain/x", "abc").await.1, "cba");
    let list = a.get("/api/v1/plugins").await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["tx", "rev"]);

    // A config its init refuses: named in the report, the old version runs.
    std::fs::write(
        &file,
        head.clone() + &tx + &reverser(&wasm, "{ mode = \"fail-init\" }"),
    )
    .unwrap();
    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins_refused"][0]["plugin"], "rev", "{body}");
    let error = body["plugins_refused"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("plugin `rev`") && error.contains("asked to fail"),
        "{error}"
    );
    assert_eq!(body["plugins_reloaded"], json!([]), "{body}");
    assert_eq!(roundtrip("plain/x", "abc").await.1, "cba");
    let list = a.get("/api/v1/plugins").await;
    let rev = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "rev")
        .unwrap();
    assert_eq!(rev["metrics"]["reload_failures"], 1, "{rev}");

    // Removed (and tx's config changed, and a host-wide change that waits
    // for a restart): rev stops, tx answers with the new columns.
    let kafka = "[plugins.kafka]\nbrokers = \"127.0.0.1:9\"\n";
    let tx2 = transform(&wasm, "\"celsius\"", "");
    std::fs::write(&file, head.clone() + kafka + &tx2).unwrap();
    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins_removed"], json!(["rev"]), "{body}");
    assert_eq!(body["plugins_reloaded"], json!(["tx"]), "{body}");
    // (the harness's listener addresses differ from the file's: "listeners")
    let later = body["restart_needed"].as_array().unwrap();
    assert!(later.contains(&json!("plugins.kafka")), "{body}");
    assert!(
        !later
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("plugins") && s != "plugins.kafka"),
        "plugin entries apply live: {body}"
    );
    assert_eq!(roundtrip("plain/x", "abc").await.1, "abc");
    let (topic, payload) = roundtrip("dev/a/raw", "5").await;
    assert_eq!(topic, "dev/a/json");
    assert_eq!(
        serde_json::from_str::<Value>(&payload).unwrap(),
        json!({ "celsius": 5 })
    );
    assert_eq!(a.get("/api/v1/plugins").await["meta"]["count"], 1);

    // The per-plugin endpoints work on the reloaded chain.
    let (status, body) = a.send("PUT", "/api/v1/plugins/tx/disable", None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("disabled")),
        "{body}"
    );
    let (status, body) = a.send("POST", "/api/v1/plugins/tx/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["metrics"]["reloads"], 2,
        "the config reload and this one"
    );
    let (status, _) = a.send("POST", "/api/v1/plugins/rev/reload", None).await;
    assert_eq!(status, 404, "rev is gone");
}

/// A plugin added by a reload offers a function that a rule added by the
/// same reload calls: the plugins are applied before the rules compile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reloaded_with_a_new_plugin_call_its_functions() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-plugin-fn-reload");
    let file = dir.0.join("midge.toml");
    let head = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[plugins]\nkv_path = \"{}\"\n",
        dir.0.join("kv").display()
    );
    let tx = transform(&wasm, "\"temp\"", "");
    std::fs::write(&file, head.clone() + &tx).unwrap();
    let b = start_broker_from_file(&file, |_| {}).await;
    let a = Admin::of(&b);
    let mut sub = V4::new(&b, "fn-sub").await;
    sub.subscribe("fn-out/#", QoS::AtLeastOnce).await;

    let added = format!(
        "{head}{tx}[[plugins.plugin]]\nname = \"fn\"\npath = \"{}/test_misbehave.wasm\"\n\
         config = {{ mode = \"functions-only\" }}\n\
         [[rules]]\nid = \"doubler\"\nsql = 'SELECT double(payload.x) AS d FROM \"fn/#\"'\n\
         actions = [{{ type = \"republish\", topic = \"fn-out/x\", qos = 0, payload = '${{d}}' }}]\n",
        wasm.display()
    );
    std::fs::write(&file, added).unwrap();
    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["plugins_added"].clone(), body["rules"].clone()),
        (json!(["fn"]), json!(1)),
        "{body}"
    );
    let mut publ = V4::new(&b, "fn-pub").await;
    publ.publish("fn/a", QoS::AtLeastOnce, false, r#"{"x": 21}"#)
        .await;
    let m = sub.next_publish().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("fn-out/x", &b"42"[..]));
}
