//! Rules on binary payloads and the EMQX SQL integrators copy from EMQX's
//! documentation, end to end: mosquitto_pub (`-f`, a file of raw bytes)
//! publishes, the broker's rules republish, rumqttc and mosquitto_sub
//! (`-F %x`, the payload as hex) receive.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use midge::rules::RuleConfig;
use midge_e2e::*;

fn rules(toml_text: &str) -> Vec<RuleConfig> {
    midge::Config::parse(toml_text, "test.toml")
        .expect("rules parse")
        .rules
}

fn mosquitto_available() -> bool {
    ["mosquitto_pub", "mosquitto_sub"]
        .iter()
        .all(|t| Command::new(t).arg("--help").output().is_ok())
}

/// Publishes the bytes of `file` with `mosquitto_pub -f`.
async fn mosquitto_pub_file(b: &TestBroker, topic: &str, file: &std::path::Path) {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &b.port().to_string(),
        "-V",
        "mqttv311",
    ])
    .args(["-t", topic, "-q", "1", "-i", &unique("mpubf")])
    .arg("-f")
    .arg(file);
    let o = run_command(c, Duration::from_secs(20)).await;
    assert!(
        o.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every byte value, and the five bytes of issue 27, none of them UTF-8 as
/// a whole.
fn binary_frame() -> Vec<u8> {
    let mut f = vec![0xCB, 0x48, 0xCD, 0x00, 0xFF];
    f.extend(0u8..=255);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payload_forwarded_byte_identical() {
    if !mosquitto_available() {
        missing_tool("mosquitto_pub / mosquitto_sub (apt-get install mosquitto-clients)");
        return;
    }
    let t = topic("bin");
    let cfg = format!(
        r#"
[[rules]]
id = "forward"
sql = 'SELECT payload FROM "{t}/in/#"'
actions = [{{ type = "republish", topic = "{t}/out", qos = 1, payload = "${{payload}}" }}]

[[rules]]
id = "hex"
sql = 'SELECT bin2hexstr(payload) AS hex, bytesize(payload) AS n FROM "{t}/in/#"'
actions = [{{ type = "republish", topic = "{t}/hex", qos = 1, payload = "${{hex}} ${{n}}" }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut sub = V4::new(&b, "binsub").await;
    sub.subscribe(&format!("{t}/out"), rumqttc::QoS::AtLeastOnce)
        .await;
    sub.subscribe(&format!("{t}/hex"), rumqttc::QoS::AtLeastOnce)
        .await;
    // A second, independent client: mosquitto_sub printing payloads as hex.
    let mut ms = Command::new("mosquitto_sub");
    ms.args([
        "-h",
        "127.0.0.1",
        "-p",
        &b.port().to_string(),
        "-V",
        "mqttv311",
    ])
    .args(["-t", &format!("{t}/out"), "-q", "1", "-C", "1", "-F", "%x"])
    .args(["-i", &unique("msubhex")]);
    let msub = tokio::spawn(run_command(ms, Duration::from_secs(20)));

    let dir = TempDir::new("binframe");
    let file = dir.0.join("frame.bin");
    let frame = binary_frame();
    std::fs::write(&file, &frame).unwrap();
    // mosquitto_sub may not have subscribed yet: publish until it got one.
    let mut published = 0;
    within("mosquitto_sub to receive the forwarded frame", async {
        while !msub.is_finished() {
            mosquitto_pub_file(&b, &format!("{t}/in/1"), &file).await;
            published += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let out = msub.await.unwrap();
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex);

    let mut got_out = 0;
    let mut got_hex = 0;
    while got_out < published || got_hex < published {
        let m = sub.next_publish().await;
        if m.topic == format!("{t}/out") {
            assert_eq!(&m.payload[..], &frame[..], "forwarded bytes differ");
            got_out += 1;
        } else {
            let want = format!("{} {}", hex.to_uppercase(), frame.len());
            assert_eq!(text(&m.payload), want);
            got_hex += 1;
        }
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreach_with_several_expressions_republishes_each_element() {
    let t = topic("fe");
    // EMQX docs: "Multiple expressions can be placed in the FOREACH clause as
    // long as the last expression specifies the array to be traversed".
    let cfg = format!(
        r#"
[[rules]]
id = "split"
sql = '''FOREACH payload.data as d, d.sensors as s
DO clientid, s.name as name, s.idx as idx, payload.date as date
INCASE s.idx >= 1
FROM "{t}/in"'''
actions = [{{ type = "republish", topic = "{t}/sensors/${{idx}}", qos = 1, payload = "clientid=${{clientid}},name=${{name}},date=${{date}}" }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut sub = V4::new(&b, "fesub").await;
    sub.subscribe(&format!("{t}/sensors/+"), rumqttc::QoS::AtLeastOnce)
        .await;
    let mut o = v4_options(&b, "unused");
    o.set_client_id("c_steve".to_string());
    let (mut p, _) = V4::connect(o).await;
    p.publish(
        &format!("{t}/in"),
        rumqttc::QoS::AtLeastOnce,
        false,
        r#"{"date": "2020-04-24", "data": {"sensors": [{"name": "a", "idx":0}, {"name": "b", "idx":1}, {"name": "c", "idx":2}]}}"#,
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = sub.next_publish().await;
        got.push((text(m.topic.as_bytes()), text(&m.payload)));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                format!("{t}/sensors/1"),
                "clientid=c_steve,name=b,date=2020-04-24".to_string()
            ),
            (
                format!("{t}/sensors/2"),
                "clientid=c_steve,name=c,date=2020-04-24".to_string()
            ),
        ]
    );
    sub.expect_no_publish(Duration::from_millis(300)).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jq_rules_republish_what_emqx_documents() {
    let t = topic("jq");
    // EMQX docs (rule-sql-jq): a jq object built from the payload, and
    // FOREACH over a jq program that averages each sensor without outliers.
    let cfg = format!(
        r#"
[[rules]]
id = "convert"
sql = '''SELECT jq('{{temperature_C:.temperature, temperature_F: (.temperature * 1.8 + 32)}}', payload) AS out FROM "{t}/temp"'''
actions = [{{ type = "republish", topic = "{t}/converted", qos = 1, payload = "${{out}}" }}]

[[rules]]
id = "averages"
sql = '''FOREACH   jq('def rem_first:
                 if length > 2 then del(.[0]) else . end;
              def rem_last:
                 if length > 1 then del(.[-1]) else . end;
              .date as $date |
              .sensors[] |
                (.data | sort | rem_first | rem_last | add / length) as $average |
                {{$average, $date}}',
             payload) AS item
DO item.average AS average, item.date AS date
FROM "{t}/complex_rule/jq/#"'''
actions = [{{ type = "republish", topic = "{t}/averages", qos = 1 }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut sub = V4::new(&b, "jqsub").await;
    sub.subscribe(&format!("{t}/converted"), rumqttc::QoS::AtLeastOnce)
        .await;
    sub.subscribe(&format!("{t}/averages"), rumqttc::QoS::AtLeastOnce)
        .await;
    let mut p = V4::new(&b, "jqpub").await;
    p.publish(
        &format!("{t}/temp"),
        rumqttc::QoS::AtLeastOnce,
        false,
        r#"{"temperature": 10}"#,
    )
    .await;
    let m = sub.next_publish().await;
    assert_eq!(m.topic, format!("{t}/converted"));
    assert_eq!(
        text(&m.payload),
        r#"[{"temperature_C":10,"temperature_F":50}]"#
    );
    p.publish(
        &format!("{t}/complex_rule/jq/1"),
        rumqttc::QoS::AtLeastOnce,
        false,
        r#"{"date": "2020-04-24", "sensors": [{"name": "a", "data": [3, 1, 2, 4, 5, 5]},
            {"name": "b", "data": [1, -100, 2, 3, 4, 5, 2000]}, {"name": "c", "data": [3, 7, 9]}]}"#,
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(text(&sub.next_publish().await.payload));
    }
    assert_eq!(
        got,
        vec![
            r#"{"average":3.5,"date":"2020-04-24"}"#,
            r#"{"average":3,"date":"2020-04-24"}"#,
            r#"{"average":7,"date":"2020-04-24"}"#,
        ]
    );
    b.shutdown().await;
}

/// `midge rule test` as an operator runs it (issue 19, item 5): a
/// misspelled event lists the valid ones; an event sample fills its fields
/// with plausible values; a SQL error reads in rule SQL's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_test_cli_events_and_readable_errors() {
    let bin = midge_e2e::process::midge_bin();
    let run = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("rule").arg("test").args(args);
        c
    };
    let o = run_command(
        run(&[
            "--sql",
            r#"SELECT * FROM "$events/client_connected""#,
            "--event",
            "client_conected",
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown event `client_conected`")
            && err.contains("client_connected, client_disconnected, client_connack"),
        "{err}"
    );

    let o = run_command(
        run(&[
            "--sql",
            r#"SELECT peername, proto_ver, keepalive FROM "$events/client_connected""#,
            "--event",
            "client_connected",
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{"peername": "127.0.0.1:52340", "proto_ver": 5, "keepalive": 60}])
    );

    let o = run_command(
        run(&["--sql", "SELECT a\n  FROM \"t\"\n  WHERE a >> 2"]),
        Duration::from_secs(30),
    )
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 3") && err.contains("unexpected `>>`"),
        "{err}"
    );
    assert!(!err.contains("infix"), "{err}");
}
