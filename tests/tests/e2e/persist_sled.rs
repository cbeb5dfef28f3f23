//! persist-sled: messages and rule rows archived to the broker's embedded
//! sled store through the plugin's kv grant, read back from the store
//! after the broker stopped. A real broker process, real clients (rumqttc
//! 5.0 and 3.1.1, mosquitto_pub).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use midge_e2e::process::BrokerProcess;
use midge_e2e::*;
use serde_json::Value;

/// The records under `prefix` in namespace `ns` of the kv store at `kv`,
/// in key (= arrival) order, with their sequence numbers.
fn records(kv: &std::path::Path, ns: &str, prefix: &str) -> Vec<(u64, Value)> {
    let db = sled::open(kv).unwrap();
    let tree = db.open_tree(format!("ns/{ns}")).unwrap();
    tree.scan_prefix(prefix.as_bytes())
        .map(|r| r.unwrap())
        .filter(|(k, _)| !k.contains(&b'#'))
        .map(|(k, v)| {
            let n = std::str::from_utf8(&k[prefix.len()..])
                .unwrap()
                .parse()
                .unwrap();
            (n, serde_json::from_slice(&v).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_rule_rows_are_archived_and_survive_the_broker() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-persist-sled");
    let kv = dir.0.join("kv");
    let file = dir.0.join("midge.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[plugins]
kv_path = "{kv}"

[[plugins.plugin]]
name = "archive"
path = "{wasm}/persist_sled.wasm"
grants = {{ kv = "archive" }}
config = {{ filters = ["sensors/#"] }}

[[plugins.plugin]]
name = "recent"
path = "{wasm}/persist_sled.wasm"
grants = {{ kv = "recent" }}
config = {{ filters = ["ring/#"], prefix = "r/", max_records = 3 }}

[[rules]]
id = "hot"
sql = 'SELECT payload.t AS t, clientid FROM "alerts/#" WHERE payload.t > 30'
actions = [{{ type = "plugin", plugin = "archive" }}]
"#,
            kv = kv.display(),
            wasm = wasm.display()
        ),
    )
    .unwrap();
    let p = BrokerProcess::start(&file, 0);

    // rumqttc 5.0: QoS 1 with properties, and a binary payload.
    let mut o = rumqttc::v5::MqttOptions::new("dev-5", "127.0.0.1", p.port());
    o.set_credentials("ann", "pw");
    let (mut c5, _) = V5::connect(o).await;
    let props = v5::PublishProperties {
        user_properties: vec![("site".into(), "north".into())],
        content_type: Some("text/plain".into()),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    c5.publish_props("sensors/1", v5::QoS::AtLeastOnce, false, "21.5", props)
        .await;
    c5.publish(
        "sensors/2",
        v5::QoS::AtLeastOnce,
        true,
        vec![0xff, 0x00, 0x01],
    )
    .await;
    c5.publish("other/x", v5::QoS::AtLeastOnce, false, "not archived")
        .await;
    c5.publish("alerts/a", v5::QoS::AtLeastOnce, false, r#"{"t": 35}"#)
        .await;
    c5.publish("alerts/a", v5::QoS::AtLeastOnce, false, r#"{"t": 10}"#)
        .await;
    for i in 1..=5 {
        c5.publish("ring/x", v5::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    // rumqttc 3.1.1, QoS 2.
    let (mut c4, _) = V4::connect(rumqttc::MqttOptions::new("dev-4", "127.0.0.1", p.port())).await;
    c4.publish("sensors/3", rumqttc::QoS::ExactlyOnce, false, "v4")
        .await;
    // mosquitto_pub, an independent client.
    if which("mosquitto_pub") {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "127.0.0.1", "-p", &p.port().to_string()])
            .args(["-V", "mqttv5", "-q", "1", "-i", "mpub", "-t", "sensors/4"])
            .args([
                "-m",
                "from mosquitto",
                "-D",
                "publish",
                "user-property",
                "k",
                "v",
            ]);
        let out = run_command(cmd, Duration::from_secs(20)).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        missing_tool("mosquitto_pub (apt-get install mosquitto-clients)");
    }
    // The rule's action runs off the publish path: wait (bounded) until the
    // broker reports it done before stopping.
    let admin = http::Admin::of_process(&p);
    within("the rule's plugin action", async {
        loop {
            let rules = admin.get("/api/v1/rules").await;
            let hot = &rules["data"][0]["metrics"];
            if hot["actions_success"].as_u64() == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop((c5, c4));
    assert!(p.terminate().success());

    let archived = records(&kv, "archive", "msg/");
    let topics: Vec<&str> = archived
        .iter()
        .map(|(_, r)| r["topic"].as_str().unwrap_or("<rule row>"))
        .collect();
    let mosq = which("mosquitto_pub");
    let mut expected = vec!["sensors/1", "sensors/2", "<rule row>", "sensors/3"];
    if mosq {
        expected.push("sensors/4");
    }
    assert_eq!(topics, expected, "{archived:#?}");
    let seqs: Vec<u64> = archived.iter().map(|(n, _)| *n).collect();
    assert_eq!(seqs, (1..=expected.len() as u64).collect::<Vec<_>>());

    let r = &archived[0].1;
    assert_eq!(r["payload"], "21.5");
    assert_eq!(r["payload_encoding"], "utf8");
    assert_eq!(r["qos"], 1);
    assert_eq!(r["retain"], false);
    assert_eq!(r["client_id"], "dev-5");
    assert_eq!(r["username"], "ann");
    assert_eq!(
        r["properties"]["user_properties"],
        serde_json::json!([["site", "north"]])
    );
    assert_eq!(r["properties"]["content_type"], "text/plain");
    assert_eq!(r["properties"]["payload_format_indicator"], 1);
    assert!(r["timestamp"].as_u64().unwrap() > 1_700_000_000_000);

    let r = &archived[1].1;
    assert_eq!(r["payload"], "/wAB", "base64 of ff 00 01");
    assert_eq!(r["payload_encoding"], "base64");
    assert_eq!(r["retain"], true);

    let r = &archived[2].1;
    assert_eq!(r["rule"], "hot");
    assert_eq!(r["row"]["t"], 35);
    assert_eq!(r["row"]["clientid"], "dev-5");

    let r = &archived[3].1;
    assert_eq!(
        (r["qos"].as_u64(), r["client_id"].as_str()),
        (Some(2), Some("dev-4"))
    );
    assert_eq!(r["username"], Value::Null);
    assert_eq!(r["properties"], serde_json::json!({}));
    if mosq {
        let r = &archived[4].1;
        assert_eq!(r["payload"], "from mosquitto");
        assert_eq!(r["client_id"], "mpub");
        assert_eq!(
            r["properties"]["user_properties"],
            serde_json::json!([["k", "v"]])
        );
    }

    // max_records = 3: of five, the last three remain, numbered 3..=5.
    let recent = records(&kv, "recent", "r/");
    let kept: Vec<(u64, &str)> = recent
        .iter()
        .map(|(n, r)| (*n, r["payload"].as_str().unwrap()))
        .collect();
    assert_eq!(kept, vec![(3, "3"), (4, "4"), (5, "5")]);
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Without its kv grant the plugin refuses to load, and says why.
#[test]
fn without_the_kv_grant_it_refuses_to_load() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let text = format!(
        "[[plugins.plugin]]\nname = \"archive\"\npath = \"{}/persist_sled.wasm\"\n",
        wasm.display()
    );
    let cfg = midge::Config::parse(&text, "t.toml").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(midge_plugin::PluginHost::load(
            &cfg.plugins,
            midge_plugin::Services::default(),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("archive"), "{err}");
    assert!(err.contains("grants.kv"), "{err}");
}
