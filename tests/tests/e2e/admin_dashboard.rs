//! The admin API routes the web dashboard stands on, over real HTTP: its
//! embedded files, the listeners, the overview series (history and live
//! stream), topics, retained messages by filter, the rule dry run's action
//! outputs, rule latencies and plugin grants.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use midge_e2e::http::{self, encode_segment, Admin};
use midge_e2e::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use v5::QoS;

async fn broker() -> (TestBroker, Admin) {
    let b = start_broker(|c| c.sys.interval = 0).await;
    let a = Admin::of(&b);
    (b, a)
}

fn col<'a>(history: &'a Value, key: &str) -> &'a Vec<Value> {
    history["series"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no series {key} in {history}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_files_are_served_without_a_token_under_a_strict_policy() {
    let (_b, a) = broker().await;
    let page = http::request(a.addr, "GET", "/", None, None).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page.text().contains("/assets/app.js"));
    let js = http::request(a.addr, "GET", "/assets/mqtt.js", None, None).await;
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/javascript")));
    assert!(js.text().contains("export class MqttClient"));
    for path in ["/assets/nope.js", "/assets/index.html", "/assets/..%2Fapi"] {
        let r = http::request(a.addr, "GET", path, None, None).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    // The files are public; the API is not.
    let r = http::request(a.addr, "GET", "/api/v1/status", None, None).await;
    assert_eq!(r.status, 401);
    let r = http::request(a.addr, "GET", "/api/v1/metrics/stream", None, None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_name_the_bound_addresses_and_count_connections() {
    let (b, a) = broker().await;
    let _c = V5::new(&b, "listener-count").await;
    let l = a.get("/api/v1/listeners").await;
    let find = |name: &str| {
        l["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {l}"))
    };
    let ws = find("ws");
    assert_eq!(ws["address"], b.ws_addr.to_string());
    assert_eq!(ws["port"], b.ws_port());
    assert_eq!(ws["path"], b.config.listeners.ws_paths[0].as_str());
    assert_eq!(ws["paths"], json!(b.config.listeners.ws_paths));
    assert_eq!(ws["websocket"], true);
    assert_eq!(ws["tls"], false);
    let mqtt = find("mqtt");
    assert_eq!(mqtt["address"], b.addr.to_string());
    assert_eq!(mqtt["connections"], 1);
    assert_eq!(mqtt["path"], Value::Null);
    assert_eq!(l["meta"]["count"], 2, "no TLS listener configured: {l}");
    let s = a.get("/api/v1/status").await;
    assert_eq!(s["listeners"]["mqtt"], 1);
    assert_eq!(s["listeners"]["ws"], 0);
}

/// Reads the event stream until `want` events arrived: (name, data) each.
async fn events(a: &Admin, want: usize) -> (tokio::net::TcpStream, Vec<(String, Value)>) {
    let mut s = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let req = format!(
        "GET /api/v1/metrics/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        a.token
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 65536];
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < want {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("events within 10 s")
            .unwrap();
        assert!(n > 0, "stream closed early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        out.clear();
        // Chunked framing aside, events are `event: x\ndata: {...}\n\n`.
        let mut name = String::new();
        for line in text.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                name = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                if let Ok(v) = serde_json::from_str::<Value>(d) {
                    out.push((name.clone(), v));
                }
            }
        }
    }
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("text/event-stream"),
        "{text}"
    );
    (s, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_stream_follow_the_traffic_and_end_at_shutdown() {
    let (b, a) = broker().await;
    let mut p = V5::new(&b, "history-pub").await;
    let t = topic("history");
    // Traffic over a few sampling intervals.
    for _ in 0..3 {
        for _ in 0..20 {
            p.publish(&t, QoS::AtLeastOnce, false, "x").await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let h = within("a point with the traffic", async {
        loop {
            let h = a.get("/api/v1/metrics/history").await;
            let peak = col(&h, "messages_in_rate")
                .iter()
                .filter_map(Value::as_f64)
                .fold(0.0, f64::max);
            if peak > 0.0 {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(h["interval_seconds"], 1);
    assert_eq!(h["keep_seconds"], 900);
    let ts = col(&h, "t");
    assert_eq!(h["length"], ts.len());
    assert!(ts.len() >= 2, "{h}");
    assert!(ts.windows(2).all(|w| w[0].as_i64() < w[1].as_i64()), "{h}");
    for key in [
        "connections",
        "conn_mqtt",
        "sessions",
        "bytes_in_rate",
        "rule_matched_rate",
    ] {
        assert_eq!(col(&h, key).len(), ts.len(), "{key}");
    }
    assert_eq!(col(&h, "conn_mqtt").last(), Some(&json!(1)));
    assert!(col(&h, "bytes_in_rate")
        .iter()
        .any(|v| v.as_f64() > Some(0.0)));

    // The stream: the history first, then a newer point a second later.
    let (mut s, evs) = events(&a, 2).await;
    assert_eq!(evs[0].0, "history");
    let last = col(&evs[0].1, "t").last().and_then(Value::as_i64).unwrap();
    let (ref name, ref point) = evs[1];
    assert_eq!(name, "sample");
    assert!(point["t"].as_i64() >= Some(last), "{point}");
    assert_eq!(point["sessions"], 1);

    // Shutdown ends the stream (the sampler owns the only sender).
    b.shutdown().await;
    let mut buf = [0u8; 4096];
    within("the stream to end at shutdown", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_count_subscribers_per_filter() {
    let (b, a) = broker().await;
    let base = topic("topics");
    let plus = format!("{base}/+/temp");
    let hash = format!("{base}/other/#");
    let mut x = V5::new(&b, "topics-x").await;
    let mut y = V5::new(&b, "topics-y").await;
    x.subscribe(&plus, QoS::AtMostOnce).await;
    y.subscribe(&plus, QoS::AtLeastOnce).await;
    y.subscribe(&hash, QoS::AtMostOnce).await;
    let all = a
        .get(&format!("/api/v1/topics?like={}", encode_segment(&base)))
        .await;
    // Sorted by filter ('+' sorts before 'o').
    assert_eq!(
        all["data"],
        json!([
            { "filter": plus, "subscribers": 2 },
            { "filter": hash, "subscribers": 1 },
        ])
    );
    let matching = a
        .get(&format!(
            "/api/v1/topics?topic={}",
            encode_segment(&format!("{base}/7/temp"))
        ))
        .await;
    assert_eq!(
        matching["data"],
        json!([{ "filter": plus, "subscribers": 2 }])
    );
    assert_eq!(matching["meta"]["count"], 1);
    let (status, body) = a.send("GET", "/api/v1/topics?topic=a/%23", None).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_browsed_by_filter() {
    let (b, a) = broker().await;
    let base = topic("browse");
    let mut p = V5::new(&b, "browse-pub").await;
    for t in ["f/2", "f/1", "g/1"] {
        p.publish(&format!("{base}/{t}"), QoS::AtLeastOnce, true, t)
            .await;
    }
    let f = a
        .get(&format!(
            "/api/v1/retained?filter={}",
            encode_segment(&format!("{base}/f/+"))
        ))
        .await;
    let topics: Vec<&str> = f["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["topic"].as_str())
        .collect();
    assert_eq!(topics, vec![format!("{base}/f/1"), format!("{base}/f/2")]);
    let all = a
        .get(&format!(
            "/api/v1/retained?filter={}",
            encode_segment(&format!("{base}/#"))
        ))
        .await;
    assert_eq!(all["meta"]["count"], 3);
    let (status, body) = a.send("GET", "/api/v1/retained?filter=a/%23/b", None).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_shows_what_the_actions_then_really_do() {
    let (b, a) = broker().await;
    let base = topic("dry");
    let actions = json!([
        { "type": "republish", "topic": format!("{base}/out/${{clientid}}"), "payload": "{\"t\": ${t}}", "qos": 1 },
        { "type": "log" },
        { "type": "republish", "topic": format!("{base}/bad/${{t}}/#") },
    ]);
    let sql = format!("SELECT payload.temp AS t, clientid FROM \"{base}/in/#\" WHERE t > 30");
    let (status, dry) = a
        .send(
            "POST",
            "/api/v1/rules/test",
            Some(json!({
                "sql": sql,
                "sample": { "topic": format!("{base}/in/1"), "payload": "{\"temp\": 31}", "clientid": "probe" },
                "actions": actions,
            })),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    let outs = &dry["outputs"][0];
    assert_eq!(outs[0]["type"], "republish");
    assert_eq!(outs[0]["topic"], format!("{base}/out/probe"));
    assert_eq!(outs[0]["payload"], "{\"t\": 31}");
    assert_eq!(outs[0]["qos"], 1);
    assert_eq!(outs[1]["output"], json!({ "t": 31, "clientid": "probe" }));
    assert!(
        outs[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid topic name")),
        "{outs}"
    );
    // No output row, no outputs.
    let (_, none) = a
        .send(
            "POST",
            "/api/v1/rules/test",
            Some(json!({ "sql": sql, "sample": { "topic": format!("{base}/in/1"), "payload": "{\"temp\": 3}" }, "actions": actions })),
        )
        .await;
    assert_eq!(none["outputs"], json!([]));

    // The same rule, running: a real client's publish is republished as the
    // dry run said, and the rule's latencies appear.
    let rule = json!({ "id": unique("dry"), "sql": sql, "actions": [actions[0]] });
    let (status, body) = a.send("POST", "/api/v1/rules", Some(rule.clone())).await;
    assert_eq!(status, 201, "{body}");
    let id = rule["id"].as_str().unwrap();
    let m = a.get(&format!("/api/v1/rules/{id}/metrics")).await;
    assert_eq!(m["action_seconds_avg"], Value::Null);
    let mut sub = V5::new(&b, "dry-sub").await;
    sub.subscribe(&format!("{base}/out/#"), QoS::AtLeastOnce)
        .await;
    let mut o = v5_options(&b, "x");
    o.set_client_id("probe".into());
    let (mut p, _) = V5::connect(o).await;
    p.publish(
        &format!("{base}/in/1"),
        QoS::AtLeastOnce,
        false,
        "{\"temp\": 31}",
    )
    .await;
    let got = sub.next_publish().await;
    assert_eq!(text(&got.topic), outs[0]["topic"].as_str().unwrap());
    assert_eq!(text(&got.payload), outs[0]["payload"].as_str().unwrap());
    let m = within("the action to be counted", async {
        loop {
            let m = a.get(&format!("/api/v1/rules/{id}/metrics")).await;
            if m["action_runs"] == 1 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(m["action_seconds_avg"].as_f64() > Some(0.0), "{m}");
    assert!(m["eval_seconds_avg"].as_f64() > Some(0.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_show_their_grants_limits_and_hooks() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let toml_text = format!(
        r#"
[plugins]
kv_path = "{kv}"
[[plugins.plugin]]
name = "sink"
path = "{wasm}/test_misbehave.wasm"
config = {{ mode = "rule-output-only" }}
limits = {{ deadline_ms = 250, max_instances = 2 }}
[plugins.plugin.grants]
kv = "dash-sink"
publish = ["out/#"]
"#,
        kv = std::env::temp_dir().join(unique("midge-dash-kv")).display(),
        wasm = wasm.display()
    );
    let cfg = midge::Config::parse(&toml_text, "dashboard-plugins.toml").unwrap();
    let b = start_broker(|c| c.plugins = cfg.plugins.clone()).await;
    let a = Admin::of(&b);
    let list = a.get("/api/v1/plugins").await;
    let p = &list["data"][0];
    assert_eq!(p["name"], "sink");
    assert_eq!(p["grants"]["kv"], "dash-sink");
    assert_eq!(p["grants"]["publish"], json!(["out/#"]));
    assert_eq!(p["grants"]["sql"], Value::Null);
    assert_eq!(p["grants"]["log"], true);
    assert_eq!(p["limits"]["deadline_ms"], 250);
    assert_eq!(p["limits"]["max_instances"], 2);
    assert!(p["path"]
        .as_str()
        .is_some_and(|x| x.ends_with("test_misbehave.wasm")));
    assert_eq!(p["manifest"]["hooks"], json!(["on-rule-output"]), "{p}");
    assert!(p["manifest"]["publish_filters"].is_array());
    assert!(p["manifest"]["functions"].is_array());
}
