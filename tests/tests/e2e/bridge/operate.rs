//! Operating bridges: status in the admin API, Prometheus metrics and
//! `$SYS`; the rule action `bridge`; `midge check` naming the key of each
//! bad setting.

use std::process::Command;
use std::time::Duration;

use midge_e2e::mosquitto::Mosquitto;
use midge_e2e::process::midge_bin;
use midge_e2e::v5::QoS;
use midge_e2e::*;
use serde_json::Value;

use super::{linked, v5_at, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_in_the_api_metrics_and_sys() {
    let Some(remote) = Mosquitto::start("") else {
        return;
    };
    let cfg = format!(
        r#"
[sys]
interval = 1
[[bridges]]
name = "cloud"
remote = "mqtt://127.0.0.1:{}"
client_id = "{}"
[[bridges.out]]
filter = "up/#"
[[bridges.in]]
filter = "down/#"
"#,
        remote.port,
        unique("edge")
    );
    let file_cfg = midge::Config::parse(&cfg, "test").unwrap();
    let b = start_broker(|c| {
        c.sys = file_cfg.sys.clone();
        c.bridges = file_cfg.bridges.clone();
    })
    .await;
    linked(&b, "cloud").await;
    let mut far = v5_at(remote.port, "far").await;
    far.subscribe("up/#", QoS::AtLeastOnce).await;
    let mut near = V5::new(&b, "near").await;
    for i in 0..20 {
        near.publish("up/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    // Read what crossed before publishing at the remote: `publish` waits
    // for its PUBACK and passes over any PUBLISH that arrives meanwhile.
    for i in 0..20 {
        let p = far.next_publish().await;
        assert_eq!(&p.topic[..], b"up/x");
        assert_eq!(p.payload, format!("{i}").as_bytes());
    }
    far.publish("down/y", QoS::AtLeastOnce, false, "in").await;
    let admin = http::Admin::of(&b);
    // The rates are sampled once a second.
    let mut v = Value::Null;
    within("a send rate in the API", async {
        loop {
            v = admin.get("/api/v1/bridges").await;
            if v["data"][0]["rates"]["sent_per_second"].as_f64() > Some(0.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let c = &v["data"][0];
    assert_eq!(c["name"], "cloud");
    assert_eq!(c["connected"], true);
    assert_eq!(c["subscribed"], true);
    assert_eq!(c["protocol"], "5.0");
    assert_eq!(c["counters"]["sent"], 20);
    assert_eq!(c["counters"]["acked"], 20);
    assert_eq!(c["counters"]["received"], 1);
    assert_eq!(c["buffered"]["messages"], 0);
    assert!(c["connected_since_ms"].as_i64() > Some(0), "{c}");
    let one = admin.get("/api/v1/bridges/cloud").await;
    assert_eq!(one["name"], "cloud");
    assert_eq!(one["counters"], c["counters"]);
    let text = admin.call("GET", "/metrics", None).await.text();
    for line in [
        "midge_bridge_connected{bridge=\"cloud\"} 1",
        "midge_bridge_messages_sent_total{bridge=\"cloud\"} 20",
        "midge_bridge_messages_acked_total{bridge=\"cloud\"} 20",
        "midge_bridge_messages_received_total{bridge=\"cloud\"} 1",
        "midge_bridge_buffered_messages{bridge=\"cloud\"} 0",
        "midge_bridge_messages_dropped_total{bridge=\"cloud\",reason=\"buffer_full\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing from /metrics");
    }
    // $SYS, every second.
    let mut sys = V5::new(&b, "sys").await;
    sys.subscribe("$SYS/brokers/+/bridges/cloud/#", QoS::AtMostOnce)
        .await;
    let mut seen = std::collections::HashMap::new();
    within("the bridge's $SYS topics", async {
        while !(seen.get("connected").map(String::as_str) == Some("1")
            && seen.get("sent").map(String::as_str) == Some("20")
            && seen.get("received").map(String::as_str) == Some("1")
            && seen.contains_key("buffered"))
        {
            let p = sys.next_publish().await;
            let t = String::from_utf8_lossy(&p.topic).into_owned();
            let key = t.rsplit('/').next().unwrap().to_string();
            seen.insert(key, String::from_utf8_lossy(&p.payload).into_owned());
        }
    })
    .await;
    b.shutdown().await;
}

/// The rule of the rule-action tests: readings over 30 go through bridge
/// `cloud` as `alerts/<client id>` (user property `source` = `rule`).
fn rule_toml(port: u16, client_id: &str) -> String {
    format!(
        r#"
[[bridges]]
name = "cloud"
remote = "mqtt://127.0.0.1:{port}"
client_id = "{client_id}"
[bridges.reconnect]
initial_ms = 100
max_ms = 300
jitter = 0.0
[[bridges.out]]
filter = "not/used/#"

[[rules]]
id = "hot"
sql = 'SELECT payload.t AS t, clientid FROM "sensors/#" WHERE payload.t > 30'
actions = [{{ type = "bridge", bridge = "cloud", topic = "alerts/${{clientid}}", qos = 1, user_properties = {{ source = "rule" }} }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_sends_its_output_through_a_named_bridge() {
    let Some(remote) = Mosquitto::start("") else {
        return;
    };
    let file_cfg = midge::Config::parse(&rule_toml(remote.port, &unique("edge")), "test").unwrap();
    let b = start_broker(|c| {
        c.bridges = file_cfg.bridges.clone();
        c.rules = file_cfg.rules.clone();
    })
    .await;
    linked(&b, "cloud").await;
    let mut far = v5_at(remote.port, "far").await;
    far.subscribe("alerts/#", QoS::AtLeastOnce).await;
    let mut local = V5::new(&b, "local").await;
    local.subscribe("alerts/#", QoS::AtLeastOnce).await;
    let mut o = rumqttc::v5::MqttOptions::new("dev-9", "127.0.0.1", b.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (mut near, _) = V5::connect(o).await;
    near.publish("sensors/a", QoS::AtLeastOnce, false, r#"{"t": 35}"#)
        .await;
    near.publish("sensors/a", QoS::AtLeastOnce, false, r#"{"t": 20}"#)
        .await;
    let p = far.next_publish().await;
    assert_eq!(&p.topic[..], b"alerts/dev-9");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let row: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(row["t"], 35);
    assert_eq!(row["clientid"], "dev-9");
    let props = p.properties.unwrap();
    assert!(
        props
            .user_properties
            .contains(&("source".into(), "rule".into())),
        "{:?}",
        props.user_properties
    );
    // Only the reading over 30, and only at the remote: the output was
    // not published here.
    far.expect_no_publish(QUIET).await;
    local.expect_no_publish(QUIET).await;
    let bridge = b.bridges.get("cloud").unwrap().clone();
    wait_until("the bridge to count it acknowledged", 5, || {
        bridge
            .status
            .acked
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    // The admin API refuses a rule naming a bridge that does not run.
    let admin = http::Admin::of(&b);
    let (code, body) = admin
        .send(
            "POST",
            "/api/v1/rules",
            Some(serde_json::json!({
                "id": "lost",
                "sql": "SELECT * FROM \"x/#\"",
                "actions": [{"type": "bridge", "bridge": "nope", "topic": "y"}],
            })),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string()
            .contains("actions[0]: bridge `nope` is not a running bridge"),
        "{body}"
    );
    // ... and its dry run shows the message and the bridge.
    let (code, body) = admin
        .send(
            "POST",
            "/api/v1/rules/test",
            Some(serde_json::json!({
                "sql": "SELECT payload.t AS t, clientid FROM \"sensors/#\"",
                "sample": {"topic": "sensors/a", "clientid": "dev-1", "payload": "{\"t\": 40}"},
                "actions": [{"type": "bridge", "bridge": "cloud", "topic": "alerts/${clientid}", "qos": 1}],
            })),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let shown = body.to_string();
    assert!(
        shown.contains(r#""bridge":"cloud""#) && shown.contains(r#""topic":"alerts/dev-1""#),
        "{body}"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_output_for_a_bridge_waits_in_its_buffer_while_the_remote_is_down() {
    // The remote keeps its subscriber's session across its own restart
    // (persistence, saved every second).
    let Some(mut remote) = Mosquitto::start_persistent("") else {
        return;
    };
    let mut opts = rumqttc::MqttOptions::new(unique("far"), "127.0.0.1", remote.port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_session(false);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 16);
    client
        .subscribe("alerts/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    within("the remote subscriber's SUBACK", async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))) = el.poll().await {
                return;
            }
        }
    })
    .await;
    // What arrives at the remote, in order (the subscriber reconnects
    // when the remote comes back).
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let g = got.clone();
    let far = tokio::spawn(async move {
        let _keep = client;
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    g.lock().unwrap().push((
                        p.topic.clone(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                    ));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    // Mosquitto saves once more than a second (counted in whole seconds)
    // passed since its last save: up to 2 s after the subscription.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let file_cfg = midge::Config::parse(&rule_toml(remote.port, &unique("edge")), "test").unwrap();
    let b = start_broker(|c| {
        c.bridges = file_cfg.bridges.clone();
        c.rules = file_cfg.rules.clone();
    })
    .await;
    linked(&b, "cloud").await;
    let bridge = b.bridges.get("cloud").unwrap().clone();
    remote.kill9();
    wait_until("the bridge to see the remote gone", 20, || {
        !bridge.status.is_connected()
    })
    .await;
    let mut o = rumqttc::v5::MqttOptions::new("dev-7", "127.0.0.1", b.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (mut near, _) = V5::connect(o).await;
    for t in [31, 10, 32, 33] {
        near.publish(
            "sensors/b",
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"t": {t}}}"#),
        )
        .await;
    }
    wait_until("3 rule outputs in the bridge's buffer", 10, || {
        bridge.buffered().0 == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!bridge.status.is_connected());
    assert!(got.lock().unwrap().is_empty());
    remote.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 30 s waiting for the 3 alerts at the remote: got {:?}; bridge connected {}, buffered {:?}, acked {}; the remote's log:\n{}",
            got.lock().unwrap(),
            bridge.status.is_connected(),
            bridge.buffered(),
            bridge.status.acked.load(std::sync::atomic::Ordering::Relaxed),
            remote.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(QUIET).await;
    far.abort();
    let got = got.lock().unwrap().clone();
    let ts: Vec<i64> = got
        .iter()
        .map(|(topic, payload)| {
            assert_eq!(topic, "alerts/dev-7");
            serde_json::from_str::<Value>(payload).unwrap()["t"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ts, [31, 32, 33], "in order, once each");
    wait_until("the buffer to drain", 10, || bridge.buffered().0 == 0).await;
    b.shutdown().await;
}

/// `midge check` on `text`: (success, stderr).
fn check(dir: &TempDir, name: &str, text: &str) -> (bool, String) {
    let file = dir.0.join(name);
    std::fs::write(&file, text).unwrap();
    let out = Command::new(midge_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn midge_check_names_the_key_of_every_bad_bridge_setting() {
    let dir = TempDir::new("midge-bridge-check");
    let good = r#"
[[bridges]]
name = "cloud"
remote = "mqtt://127.0.0.1:1883"
[[bridges.out]]
filter = "a/#"
topic = "site1/{2}"
"#;
    let (ok, err) = check(&dir, "good.toml", good);
    assert!(ok, "{err}");
    let (ok, err) = check(
        &dir,
        "bad.toml",
        r#"
[[bridges]]
name = "cloud"
remote = "mqtt//cloud.example.com"
[[bridges.out]]
filter = "a/+"
topic = "site1/{3}"
[[bridges]]
name = "secure"
remote = "mqtts://cloud.example.com"
tls = { ca = "/nonexistent/ca.pem" }
[[bridges.in]]
filter = "b/#"

[[rules]]
id = "r1"
sql = 'SELECT * FROM "x"'
actions = [{ type = "bridge", bridge = "nope", topic = "y" }]
"#,
    );
    assert!(!ok);
    for want in [
        "field `bridges[0].remote`: `mqtt//cloud.example.com` is not a URL",
        "field `bridges[0].out[0].topic`",
        "has 2 level(s)",
        "field `bridges[1].tls.ca`: /nonexistent/ca.pem: cannot read",
        "bridge `nope` is not an enabled bridge",
    ] {
        assert!(err.contains(want), "{want} missing from:\n{err}");
    }
    let (ok, err) = check(
        &dir,
        "unknown.toml",
        "[[bridges]]\nname = \"cloud\"\nremote = \"mqtt://h\"\nkeepalive = 5\n",
    );
    assert!(!ok);
    assert!(
        err.contains("unknown field `keepalive`") && err.contains("unknown.toml"),
        "{err}"
    );
}

/// `mosquitto_sub` for `n` messages on 127.0.0.1:`port` (`-v`: topic and payload).
fn sub(port: u16, filter: &str, n: u32) -> Command {
    let mut c = Command::new("mosquitto_sub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", filter])
        .args(["-v", "-q", "1", "-C", &n.to_string(), "-W", "20"]);
    c
}

fn publish(port: u16, topic: &str, msg: &str, id: &str) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-m", msg, "-q", "1", "-i", id]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_edge_to_cloud_example_works_as_written() {
    // examples/bridge/{cloud,edge}.toml as docs/bridges.md runs them, with
    // only their ports and data directories moved (tests run in parallel).
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bridge");
    let dir = TempDir::new("midge-bridge-example");
    let cloud = start_broker_from_file(&examples.join("cloud.toml"), |c| {
        c.persistence.data_dir = dir.0.join("data-cloud");
    })
    .await;
    let edge_text = std::fs::read_to_string(examples.join("edge.toml"))
        .unwrap()
        .replace(
            "mqtt://127.0.0.1:1884",
            &format!("mqtt://127.0.0.1:{}", cloud.port()),
        );
    assert!(edge_text.contains(&format!("127.0.0.1:{}", cloud.port())));
    let edge_file = dir.0.join("edge.toml");
    std::fs::write(&edge_file, edge_text).unwrap();
    let edge = start_broker_from_file(&edge_file, |c| {
        c.persistence.data_dir = dir.0.join("data-edge");
    })
    .await;
    linked(&edge, "cloud").await;
    // At the cloud: the reading under site1/, then the rule's alert.
    let at_cloud = tokio::spawn(run_command(
        sub(cloud.port(), "site1/#", 2),
        Duration::from_secs(30),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = run_command(
        publish(edge.port(), "sensors/dev1/temp", r#"{"t":31}"#, "dev1"),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = at_cloud.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines.contains(&r#"site1/dev1/temp {"t":31}"#), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("site1/alerts/dev1 ") && l.contains(r#""t":31"#)),
        "{text}"
    );
    // A command from the cloud reaches the edge under commands/.
    let at_edge = tokio::spawn(run_command(
        sub(edge.port(), "commands/#", 1),
        Duration::from_secs(30),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = run_command(
        publish(cloud.port(), "site1/commands/dev1/reboot", "now", "ops"),
        Duration::from_secs(10),
    )
    .await;
    assert!(out.status.success());
    let out = at_edge.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "commands/dev1/reboot now"
    );
    edge.shutdown().await;
    cloud.shutdown().await;
}
