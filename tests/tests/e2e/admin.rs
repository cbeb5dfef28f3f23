//! The admin HTTP API and `/metrics`, over real HTTP against a running
//! broker, with real MQTT clients on the other side.

#![allow(clippy::unwrap_used)]

use midge_e2e::http::{self, encode_segment, sample, Admin};
use midge_e2e::*;
use serde_json::{json, Value};

use v5::QoS;

async fn broker() -> (TestBroker, Admin) {
    // No $SYS: its retained messages would be in the retained counts.
    let b = start_broker(|c| c.sys.interval = 0).await;
    let a = Admin::of(&b);
    (b, a)
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array in {list}"))
        .iter()
        .map(|c| c["clientid"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_version_and_counts() {
    let (b, a) = broker().await;
    let _c = V5::new(&b, "status").await;
    let s = a.get("/api/v1/status").await;
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["connections"], 1);
    assert_eq!(s["sessions"], 1);
    assert!(s["uptime_seconds"].is_u64());
    assert!(s["node"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_listed_filtered_shown_and_kicked() {
    let (b, a) = broker().await;
    let mut o = v5_options(&b, "kickme");
    o.set_credentials("alice", "pw");
    let id = o.client_id();
    let (mut c, _) = V5::connect(o).await;
    let _other = V5::new(&b, "bystander").await;

    let all = a.get("/api/v1/clients").await;
    assert_eq!(all["meta"]["count"], 2);
    assert_eq!(all["meta"]["page"], 1);
    let mine = a.get("/api/v1/clients?clientid_like=kickme").await;
    assert_eq!(ids(&mine), vec![id.clone()]);
    let by_user = a.get("/api/v1/clients?username=alice&connected=true").await;
    assert_eq!(ids(&by_user), vec![id.clone()]);
    let offline = a.get("/api/v1/clients?connected=false").await;
    assert_eq!(offline["meta"]["count"], 0);
    let paged = a.get("/api/v1/clients?page=2&limit=1").await;
    assert_eq!(paged["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(paged["meta"]["count"], 2);

    let d = a.get(&format!("/api/v1/clients/{id}")).await;
    assert_eq!(d["connected"], true);
    assert_eq!(d["proto_ver"], 5);
    assert_eq!(d["username"], "alice");
    assert_eq!(d["keep_alive"], 30);
    assert_eq!(d["clean_start"], true);
    assert!(d["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert!(d["connected_at"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(d["subscriptions"], 0);
    assert_eq!(d["queue_len"], 0);
    assert_eq!(d["inflight"], 0);

    let (status, body) = a
        .send("DELETE", &format!("/api/v1/clients/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    // rumqttc reports the close (it may see the socket end before the
    // DISCONNECT packet; the raw clients below check the reason code).
    let _ = c.closed().await;
    let r = a.call("GET", &format!("/api/v1/clients/{id}"), None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains(&id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_v5_client_gets_administrative_action_and_v311_a_close() {
    use midge_e2e::raw::{ConnectOpts, RawClient};
    let (b, a) = broker().await;
    let id5 = unique("raw5");
    let (mut c5, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&id5)).await;
    let (status, _) = a
        .send("DELETE", &format!("/api/v1/clients/{id5}"), None)
        .await;
    assert_eq!(status, 204);
    c5.expect_disconnect(0x98).await;
    let id4 = unique("raw4");
    let (mut c4, _) = RawClient::handshake(b.addr, ConnectOpts::v4(&id4).clean(false)).await;
    let (status, _) = a
        .send("DELETE", &format!("/api/v1/clients/{id4}"), None)
        .await;
    assert_eq!(status, 204);
    c4.expect_disconnect(0).await;
    // Its (persistent) session went with it.
    let (status, _) = a.send("GET", &format!("/api/v1/clients/{id4}"), None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_subscriptions_and_subscriptions_by_topic() {
    let (b, a) = broker().await;
    let mut c = V5::new(&b, "subs").await;
    let id = a.get("/api/v1/clients").await["data"][0]["clientid"]
        .as_str()
        .map(str::to_string)
        .expect("one client");
    c.subscribe("a/+/c", QoS::AtLeastOnce).await;
    c.subscribe("$share/g/a/#", QoS::AtMostOnce).await;
    c.subscribe("x/y", QoS::AtMostOnce).await;

    let subs = a.get(&format!("/api/v1/sessions/{id}/subscriptions")).await;
    assert_eq!(subs["meta"]["count"], 3);
    let filters: Vec<&str> = subs["data"]
        .as_array()
        .map(|v| v.iter().filter_map(|s| s["filter"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(filters, vec!["$share/g/a/#", "a/+/c", "x/y"]);
    assert_eq!(subs["data"][1]["qos"], 1);

    let sessions = a.get("/api/v1/sessions").await;
    assert_eq!(sessions["meta"]["count"], 1);
    assert_eq!(sessions["data"][0]["subscriptions"], 3);

    let hit = a.get("/api/v1/subscriptions?topic=a%2Fb%2Fc").await;
    let mut matched: Vec<&str> = hit["data"]
        .as_array()
        .map(|v| v.iter().filter_map(|s| s["filter"].as_str()).collect())
        .unwrap_or_default();
    matched.sort();
    assert_eq!(matched, vec!["$share/g/a/#", "a/+/c"]);
    assert_eq!(hit["data"][0]["clientid"], id.as_str());
    let none = a.get("/api/v1/subscriptions?topic=q/r").await;
    assert_eq!(none["meta"]["count"], 0);
    let exact = a.get("/api/v1/subscriptions?filter=x%2Fy").await;
    assert_eq!(exact["meta"]["count"], 1);
    let all = a.get("/api/v1/subscriptions").await;
    assert_eq!(all["meta"]["count"], 3);
    let (status, body) = a
        .send("GET", "/api/v1/subscriptions?topic=a%2F%23", None)
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = a
        .send("GET", "/api/v1/sessions/nobody/subscriptions", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_listed_shown_and_deleted() {
    let (b, a) = broker().await;
    let t = topic("kept");
    let mut p = V5::new(&b, "ret-pub").await;
    p.publish(&t, QoS::AtLeastOnce, true, "héllo").await;

    let list = a.get("/api/v1/retained").await;
    let topics: Vec<&str> = list["data"]
        .as_array()
        .map(|v| v.iter().filter_map(|m| m["topic"].as_str()).collect())
        .unwrap_or_default();
    assert!(topics.contains(&t.as_str()), "{list}");
    let path = format!("/api/v1/retained/{}", encode_segment(&t));
    let m = a.get(&path).await;
    assert_eq!(m["topic"], t.as_str());
    assert_eq!(m["payload_utf8"], "héllo");
    assert_eq!(m["payload"], "aMOpbGxv");
    assert_eq!(m["qos"], 1);

    let (status, _) = a.send("DELETE", &path, None).await;
    assert_eq!(status, 204);
    let (status, body) = a.send("GET", &path, None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = a.send("DELETE", &path, None).await;
    assert_eq!(status, 404);

    // A new subscriber gets no retained message: the first PUBLISH it sees
    // is a live one sent after its SUBACK.
    let mut s = V5::new(&b, "ret-sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;
    p.publish(&t, QoS::AtLeastOnce, false, "live").await;
    let got = s.next_publish().await;
    assert_eq!(text(&got.payload), "live");
    assert!(!got.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_retained_message_stays_deleted_after_a_restart() {
    let data = TempDir::new("midge-admin-retained");
    let dir = data.0.clone();
    let persist = move |c: &mut midge::Config| {
        c.persistence.enabled = true;
        c.persistence.data_dir = dir.clone();
    };
    let t = topic("durable");
    let keep = topic("durable-kept");
    {
        let b = start_broker(persist.clone()).await;
        let a = Admin::of(&b);
        let mut p = V5::new(&b, "dur-pub").await;
        p.publish(&t, QoS::AtLeastOnce, true, "gone").await;
        p.publish(&keep, QoS::AtLeastOnce, true, "stays").await;
        let path = format!("/api/v1/retained/{}", encode_segment(&t));
        let (status, _) = a.send("DELETE", &path, None).await;
        assert_eq!(status, 204);
        drop(p);
        b.shutdown().await;
    }
    let b = start_broker(persist).await;
    let a = Admin::of(&b);
    let (status, _) = a
        .send(
            "GET",
            &format!("/api/v1/retained/{}", encode_segment(&t)),
            None,
        )
        .await;
    assert_eq!(status, 404, "the deleted message came back from the store");
    let kept = a
        .get(&format!("/api/v1/retained/{}", encode_segment(&keep)))
        .await;
    assert_eq!(kept["payload_utf8"], "stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_through_the_api_reaches_subscribers() {
    let (b, a) = broker().await;
    let t = topic("api-pub");
    let mut s = V5::new(&b, "api-sub").await;
    s.subscribe(&t, QoS::AtLeastOnce).await;

    let (status, body) = a
        .send(
            "POST",
            "/api/v1/publish",
            Some(json!({
                "topic": t, "payload": "hi", "qos": 1,
                "properties": { "user_properties": { "k": "v" }, "content_type": "text/plain" }
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].is_string());
    let got = s.next_publish().await;
    assert_eq!(text(&got.payload), "hi");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let props = got.properties.expect("properties");
    assert_eq!(props.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));

    let (status, _) = a
        .send(
            "POST",
            "/api/v1/publish",
            Some(json!({ "topic": t, "payload": "AAEC", "payload_encoding": "base64" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.next_publish().await.payload.as_ref(), &[0u8, 1, 2]);

    for bad in [
        json!({ "topic": "a/+", "payload": "x" }),
        json!({ "topic": "", "payload": "x" }),
        json!({ "topic": "a/#" }),
        json!({ "topic": "a", "qos": 3 }),
        json!({ "topic": "a", "payload": "@@", "payload_encoding": "base64" }),
        json!({ "topic": "a", "payload_encoding": "hex" }),
        json!({ "topic": "a", "unknown": 1 }),
        json!({ "payload": "no topic" }),
        json!({ "topic": 5 }),
    ] {
        let (status, body) = a.send("POST", "/api/v1/publish", Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(body["error"].is_string(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_created_fired_updated_disabled_and_deleted() {
    let (b, a) = broker().await;
    let src = topic("rsrc");
    let out = topic("rout");
    let mut s = V5::new(&b, "rule-sub").await;
    s.subscribe(&out, QoS::AtLeastOnce).await;
    let rule = json!({
        "id": "r1",
        "sql": format!("SELECT payload.v AS v FROM \"{src}\""),
        "actions": [{ "type": "republish", "topic": out, "qos": 1, "payload": "v=${v}" }],
    });
    let (status, body) = a.send("POST", "/api/v1/rules", Some(rule.clone())).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = a.send("POST", "/api/v1/rules", Some(rule)).await;
    assert_eq!(status, 409, "{body}");

    let mut p = V5::new(&b, "rule-pub").await;
    p.publish(&src, QoS::AtLeastOnce, false, r#"{"v":7}"#).await;
    assert_eq!(text(&s.next_publish().await.payload), "v=7");
    let m = a.get("/api/v1/rules/r1/metrics").await;
    assert_eq!(m["matched"], 1);
    assert_eq!(m["passed"], 1);
    assert!(
        m["eval_seconds_total"].as_f64().is_some_and(|t| t > 0.0),
        "evaluation time is measured: {m}"
    );
    // The action's run is counted just after it republished: wait for it.
    let mut m = m;
    for _ in 0..200 {
        if m["action_runs"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        m = a.get("/api/v1/rules/r1/metrics").await;
    }
    assert_eq!(m["action_runs"], 1, "{m}");
    assert!(
        m["action_seconds_total"].as_f64().is_some_and(|t| t > 0.0),
        "{m}"
    );
    let scraped = a.call("GET", "/metrics", None).await.text();
    assert_eq!(
        sample(&scraped, "midge_rule_eval_seconds_count{rule=\"r1\"}"),
        1.0
    );
    assert!(sample(&scraped, "midge_rule_eval_seconds_sum{rule=\"r1\"}") > 0.0);
    assert_eq!(
        sample(&scraped, "midge_rule_action_seconds_count{rule=\"r1\"}"),
        1.0
    );
    assert!(scraped.contains("# TYPE midge_rule_eval_seconds summary"));
    let listed = a.get("/api/v1/rules").await;
    assert_eq!(listed["data"][0]["id"], "r1");
    assert_eq!(listed["data"][0]["metrics"]["matched"], 1);

    // Update: a WHERE that does not hold for v=7.
    let (status, body) = a
        .send(
            "PUT",
            "/api/v1/rules/r1",
            Some(json!({
                "sql": format!("SELECT payload.v AS v FROM \"{src}\" WHERE payload.v > 100"),
                "actions": [{ "type": "republish", "topic": out, "payload": "big ${v}" }],
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = a.get("/api/v1/rules/r1").await;
    assert!(got["sql"].as_str().is_some_and(|q| q.contains("> 100")));
    p.publish(&src, QoS::AtLeastOnce, false, r#"{"v":7}"#).await;
    let m = a.get("/api/v1/rules/r1/metrics").await;
    assert_eq!(
        (m["matched"].as_u64(), m["no_result"].as_u64()),
        (Some(2), Some(1))
    );

    let (status, body) = a.send("PUT", "/api/v1/rules/r1/disable", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], false);
    p.publish(&src, QoS::AtLeastOnce, false, r#"{"v":700}"#)
        .await;
    let m = a.get("/api/v1/rules/r1/metrics").await;
    assert_eq!(m["matched"], 2, "a disabled rule does not run");
    assert_eq!(m["enabled"], false);
    let (status, _) = a.send("PUT", "/api/v1/rules/r1/enable", None).await;
    assert_eq!(status, 200);
    p.publish(&src, QoS::AtLeastOnce, false, r#"{"v":700}"#)
        .await;
    assert_eq!(text(&s.next_publish().await.payload), "big 700");

    let (status, _) = a.send("DELETE", "/api/v1/rules/r1", None).await;
    assert_eq!(status, 204);
    for path in ["/api/v1/rules/r1", "/api/v1/rules/r1/metrics"] {
        let (status, _) = a.send("GET", path, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = a.send("DELETE", "/api/v1/rules/r1", None).await;
    assert_eq!(status, 404);
    assert_eq!(a.get("/api/v1/rules").await["meta"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_with_their_position() {
    let (_b, a) = broker().await;
    let (status, body) = a
        .send(
            "POST",
            "/api/v1/rules",
            Some(json!({ "id": "bad", "sql": "SELECT x FROM \"t/#\" WHERE" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["rule_id"], "bad");
    assert_eq!(body["line"], 1);
    assert!(body["column"].as_u64().is_some_and(|c| c > 1), "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("line 1, column")),
        "{body}"
    );
    let (status, body) = a
        .send(
            "PUT",
            "/api/v1/rules/nope",
            Some(json!({ "sql": "SELECT * FROM \"t\"" })),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = a
        .send(
            "POST",
            "/api/v1/rules",
            Some(json!({ "id": "p", "sql": "SELECT * FROM \"t\"", "actions": [{ "type": "plugin", "plugin": "none" }] })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(a.get("/api/v1/rules").await["meta"]["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_test_endpoint_runs_samples() {
    let (_b, a) = broker().await;
    let (status, body) = a
        .send(
            "POST",
            "/api/v1/rules/test",
            Some(json!({
                "sql": "SELECT payload.t AS t, clientid FROM \"s/#\" WHERE payload.t > 3",
                "sample": { "topic": "s/1", "payload": "{\"t\":5}", "clientid": "c9" }
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], true);
    assert_eq!(body["rows"], json!([{ "t": 5, "clientid": "c9" }]));
    let (_, body) = a
        .send(
            "POST",
            "/api/v1/rules/test",
            Some(json!({ "sql": "SELECT * FROM \"other/#\"" })),
        )
        .await;
    assert_eq!(body["matched"], false);
    let (status, body) = a
        .send(
            "POST",
            "/api/v1/rules/test",
            Some(json!({
                "sql": "SELECT clientid FROM \"$events/client_connected\"",
                "sample": { "event": "client_connected" }
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["clientid"], "c_test");
    let (status, body) = a
        .send(
            "POST",
            "/api/v1/rules/test",
            Some(json!({ "sql": "SELEC" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["line"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_listed_switched_and_reloaded() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let toml_text = format!(
        r#"
[[plugins.plugin]]
name = "tx"
path = "{}/transform.wasm"
config = {{ rules = [ {{ filter = "users/+/raw", format = "csv", csv_columns = ["temp", "hum"], topic = "users/{{2}}/json" }} ] }}
"#,
        wasm.display()
    );
    let cfg = midge::Config::parse(&toml_text, "admin-plugins.toml").expect("config parses");
    let b = start_broker(|c| c.plugins = cfg.plugins.clone()).await;
    let a = Admin::of(&b);
    let list = a.get("/api/v1/plugins").await;
    assert_eq!(list["meta"]["count"], 1, "{list}");
    assert_eq!(list["data"][0]["name"], "tx");
    assert_eq!(list["data"][0]["state"], "running");
    assert!(list["data"][0]["metrics"]["calls"].is_u64());

    let mut s = V5::new(&b, "plug-sub").await;
    s.subscribe("users/bob/#", QoS::AtLeastOnce).await;
    let mut p = V5::new(&b, "plug-pub").await;
    p.publish("users/bob/raw", QoS::AtLeastOnce, false, "21,40")
        .await;
    assert_eq!(&*s.next_publish().await.topic, b"users/bob/json");

    let (status, body) = a.send("PUT", "/api/v1/plugins/tx/disable", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "disabled");
    p.publish("users/bob/raw", QoS::AtLeastOnce, false, "22,41")
        .await;
    let got = s.next_publish().await;
    assert_eq!(
        &*got.topic, b"users/bob/raw",
        "a disabled plugin is skipped"
    );
    assert_eq!(text(&got.payload), "22,41");
    let (status, body) = a.send("PUT", "/api/v1/plugins/tx/enable", None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("running")));

    let (status, body) = a.send("POST", "/api/v1/plugins/tx/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["metrics"]["reloads"], 1);
    p.publish("users/bob/raw", QoS::AtLeastOnce, false, "23,42")
        .await;
    assert_eq!(&*s.next_publish().await.topic, b"users/bob/json");

    for (m, path) in [
        ("POST", "/api/v1/plugins/nope/reload"),
        ("PUT", "/api/v1/plugins/nope/enable"),
    ] {
        let (status, body) = a.send(m, path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_swaps_rules_and_names_restart_sections() {
    let dir = TempDir::new("midge-admin-reload");
    let file = dir.0.join("midge.toml");
    let base = "[listeners]\nmqtt = \"127.0.0.1:0\"\nws = \"127.0.0.1:0\"\n\
                [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n";
    let rule = |id: &str| format!("[[rules]]\nid = \"{id}\"\nsql = 'SELECT * FROM \"t/#\"'\n");
    std::fs::write(&file, format!("{base}{}", rule("one"))).unwrap();
    let b = start_broker_from_file(&file, |_| {}).await;
    let a = Admin::of(&b);
    assert_eq!(a.get("/api/v1/rules").await["meta"]["count"], 1);

    std::fs::write(&file, format!("{base}{}{}", rule("one"), rule("two"))).unwrap();
    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rules"], 2);
    assert!(!body["restart_needed"]
        .as_array()
        .is_some_and(|v| v.contains(&json!("mqtt"))));
    assert!(a.get("/api/v1/rules/two").await["sql"].is_string());

    std::fs::write(
        &file,
        format!("{base}{}", rule("one") + "[mqtt]\nmax_qos = 1\n"),
    )
    .unwrap();
    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["restart_needed"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("mqtt"))),
        "{body}"
    );
    assert_eq!(body["rules"], 1);

    std::fs::write(
        &file,
        format!("{base}[[rules]]\nid = \"x\"\nsql = 'SELEC'\n"),
    )
    .unwrap();
    let (status, body) = a.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        a.get("/api/v1/rules").await["meta"]["count"],
        1,
        "the running set stays"
    );

    let (_b2, a2) = broker().await;
    let (status, body) = a2.send("POST", "/api/v1/config/reload", None).await;
    assert_eq!(status, 409, "no config file: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route() {
    let (_b, a) = broker().await;
    let doc = a.get("/api/v1/openapi.json").await;
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.0")));
    let mut described: Vec<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(|m| (m.to_uppercase(), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    described.sort();
    let mut routes: Vec<(String, String)> = midge::admin::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(described, routes);
    // And every route is really served: none answers "no route" (404 from the fallback).
    for (m, p) in &routes {
        if p == "/api/v1/metrics/stream" {
            // An endless event stream (read by admin_dashboard's tests).
            continue;
        }
        let path = p
            .replace("{clientid}", "c")
            .replace("{topic}", "t")
            .replace("{id}", "r")
            .replace("{name}", "n");
        let r = a.call(m, &path, None).await;
        let body = r.text();
        assert!(!body.contains("no route for"), "{m} {path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let (b, a) = broker().await;
    let addr = a.addr;
    let r = http::request(addr, "GET", "/api/v1/status", None, None).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = http::request(addr, "GET", "/api/v1/status", Some("wrong-token"), None).await;
    assert_eq!(r.status, 401);
    let r = http::request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(
        r.status, 401,
        "metrics need the token unless metrics_public"
    );
    let r = http::request(addr, "GET", "/nowhere", None, None).await;
    assert_eq!(r.status, 401, "the token is checked before routing");

    let r = a
        .call("POST", "/api/v1/publish", Some("{\"topic\": "))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.header("content-type").is_some_and(|c| c.contains("json")));
    assert!(r.json()["error"].is_string());
    let r = a.call("POST", "/api/v1/rules", Some("[1,2]")).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());

    for (m, path, want) in [
        ("GET", "/api/v1/clients/nobody", 404),
        ("DELETE", "/api/v1/clients/nobody", 404),
        ("GET", "/api/v1/nowhere", 404),
        ("GET", "/api/v1/rules/nope", 404),
        ("GET", "/api/v1/retained/no%2Fsuch", 404),
        ("POST", "/api/v1/status", 405),
        ("DELETE", "/api/v1/rules", 405),
        ("PATCH", "/api/v1/clients/x", 405),
        ("GET", "/api/v1/clients?page=0", 400),
        ("GET", "/api/v1/clients?limit=0", 400),
        ("GET", "/api/v1/clients?limit=100000", 400),
        ("GET", "/api/v1/clients?page=abc", 400),
        (
            "GET",
            "/api/v1/clients?page=99999999999999999999999999",
            400,
        ),
        ("GET", "/api/v1/clients?page=-1", 400),
        ("GET", "/api/v1/clients?connected=maybe", 400),
        ("GET", "/api/v1/clients?bogus=1", 400),
        ("GET", "/api/v1/retained?limit=18446744073709551615", 400),
        ("GET", "/api/v1/sessions?page=1000001", 400),
        ("GET", "/api/v1/clients/%FF%FE", 400),
    ] {
        let r = a.call(m, path, None).await;
        assert_eq!(r.status, want, "{m} {path}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{m} {path}: {}", r.text());
    }
    assert_alive(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic() {
    let (b, a) = broker().await;
    let mut s = V5::new(&b, "m-sub").await;
    let t = topic("metrics");
    s.subscribe(&t, QoS::AtLeastOnce).await;
    let mut p = V5::new(&b, "m-pub").await;
    const N: usize = 5;
    for i in 0..N {
        p.publish(&t, QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
        s.next_publish().await;
    }
    // QoS 0 then QoS 1 on one connection: the PUBACK means both were handled.
    p.publish(&topic("nobody"), QoS::AtMostOnce, true, "r")
        .await;
    p.publish(&topic("nobody"), QoS::AtLeastOnce, false, "x")
        .await;

    let r = a.call("GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = r.text();
    let n = N as f64;
    assert_eq!(sample(&text, "midge_connections_current"), 2.0);
    assert_eq!(sample(&text, "midge_sessions"), 2.0);
    assert_eq!(sample(&text, "midge_subscriptions"), 1.0);
    assert_eq!(sample(&text, "midge_retained_messages"), 1.0);
    assert!(sample(&text, "midge_connections_total") >= 2.0);
    assert!(sample(&text, "midge_messages_received_total") >= n + 2.0);
    assert!(sample(&text, "midge_publish_received_total{qos=\"1\"}") >= n);
    assert!(sample(&text, "midge_publish_received_total{qos=\"0\"}") >= 1.0);
    assert!(sample(&text, "midge_publish_sent_total{qos=\"1\"}") >= n);
    assert!(
        sample(
            &text,
            "midge_messages_dropped_total{reason=\"no_subscribers\"}"
        ) >= 2.0
    );
    assert!(sample(&text, "midge_bytes_received_total") > 0.0);
    assert!(sample(&text, "midge_bytes_sent_total") > 0.0);
    assert!(text.contains("# TYPE midge_messages_dropped_total counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_public_needs_no_token_but_the_api_does() {
    let b = start_broker(|c| c.admin.metrics_public = true).await;
    let addr = b.admin_addr.expect("admin");
    let r = http::request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("midge_connections_current 0"));
    let r = http::request(addr, "GET", "/api/v1/status", None, None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_are_counted_by_reason() {
    let b = start_broker(|c| c.mqtt.max_client_id_len = 23).await;
    let a = Admin::of(&b);
    let o = rumqttc::v5::MqttOptions::new("x".repeat(40), "127.0.0.1", b.port());
    let mut c = V5::start(o);
    let _ = c.closed().await;
    let text = a.call("GET", "/metrics", None).await.text();
    assert_eq!(
        sample(&text, "midge_connections_refused_total{code=\"0x85\"}"),
        1.0
    );
}

#[test]
fn the_binary_prints_a_generated_token_and_serves_with_it() {
    let dir = TempDir::new("midge-admin-proc");
    let file = dir.0.join("midge.toml");
    std::fs::write(&file, "[log]\nlevel = \"warn\"\n").unwrap();
    let p = midge_e2e::process::BrokerProcess::start(&file, 0);
    let token = match (&p.admin_token, std::env::var("MIDGE_ADMIN_TOKEN")) {
        (Some(t), _) => t.clone(),
        (None, Ok(t)) => t,
        (None, Err(_)) => panic!("no token printed and none in the environment"),
    };
    assert!(token.len() >= 16, "{token}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = http::request(p.admin_addr, "GET", "/api/v1/status", Some(&token), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = http::request(
            p.admin_addr,
            "GET",
            "/api/v1/status",
            Some("nope-nope"),
            None,
        )
        .await;
        assert_eq!(r.status, 401);
    });
}
