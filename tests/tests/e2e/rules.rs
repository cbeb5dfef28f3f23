//! The rule engine inside the running broker: rules from config evaluated on
//! real publishes and events, actions run, metrics counted.

use std::time::Duration;

use midge::rules::RuleConfig;
use midge_e2e::*;

fn rules(toml_text: &str) -> Vec<RuleConfig> {
    midge::Config::parse(toml_text, "test.toml")
        .expect("rules parse")
        .rules
}

fn stats(b: &TestBroker, id: &str) -> midge::rules::RuleStats {
    b.broker
        .rules
        .stats()
        .into_iter()
        .find(|s| s.id == id)
        .expect("rule present")
}

async fn wait_stats(
    b: &TestBroker,
    id: &str,
    pred: impl Fn(&midge::rules::RuleStats) -> bool,
) -> midge::rules::RuleStats {
    within("rule metrics", async {
        loop {
            let s = stats(b, id);
            if pred(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_with_templates_only_when_where_holds() {
    let t = topic("sensor");
    let cfg = format!(
        r#"
[[rules]]
id = "hot"
sql = 'SELECT payload.temp AS t, clientid FROM "{t}/#" WHERE t > 30'
actions = [{{ type = "republish", topic = "{t}-alerts/${{clientid}}", qos = 1, payload = "temp=${{t}}", user_properties = {{ rule = "hot" }} }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut sub = V5::new(&b, "alerts").await;
    sub.subscribe(&format!("{t}-alerts/#"), v5::QoS::AtLeastOnce)
        .await;
    let dev = unique("dev1");
    let mut o = v5_options(&b, "unused");
    o.set_client_id(dev.clone());
    let (mut p, _) = V5::connect(o).await;
    p.publish(
        &format!("{t}/1"),
        v5::QoS::AtLeastOnce,
        false,
        r#"{"temp": 25}"#,
    )
    .await;
    p.publish(
        &format!("{t}/1"),
        v5::QoS::AtLeastOnce,
        false,
        r#"{"temp": 35.5}"#,
    )
    .await;
    let m = sub.next_publish().await;
    assert_eq!(m.topic, format!("{t}-alerts/{dev}").as_bytes());
    assert_eq!(&m.payload[..], b"temp=35.5");
    let props = m.properties.expect("5.0 properties");
    assert_eq!(
        props.user_properties,
        vec![("rule".to_string(), "hot".to_string())]
    );
    sub.expect_no_publish(QUIET).await;
    let s = wait_stats(&b, "hot", |s| s.actions_success == 1).await;
    assert_eq!((s.matched, s.passed, s.no_result, s.failed), (2, 1, 1, 0));
}

/// Actions run off the publisher's path, on its action lane: a publisher
/// that triggers 10 republishes per message and pipelines more outputs than
/// a lane holds loses none of them; every output arrives after its message,
/// in the publisher's order. (The hold itself: `rules::queue`'s unit tests
/// and `plugins::a_slow_failing_action_...`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_outputs_run_off_the_publishers_path_in_order_and_none_is_lost() {
    let t = topic("lane");
    let mut cfg = String::new();
    for n in 1..=10 {
        cfg.push_str(&format!(
            r#"
[[rules]]
id = "r{n}"
sql = 'SELECT payload.seq AS s FROM "{t}/in/+" WHERE s >= 0'
actions = [{{ type = "republish", topic = "{t}/out/{n}", payload = "${{s}}" }}]
"#
        ));
    }
    let b = start_broker(|c| {
        c.rules = rules(&cfg);
        c.mqtt.max_queued_messages = 1_000_000;
    })
    .await;
    let mut sub = V4::new(&b, "s").await;
    sub.subscribe(&format!("{t}/#"), rumqttc::QoS::AtMostOnce)
        .await;
    let mut p = V4::new(&b, "p").await;
    // 20,000 outputs: more than a lane holds (16,384).
    const N: u64 = 2_000;
    for seq in 0..N - 1 {
        p.client
            .publish(
                format!("{t}/in/1"),
                rumqttc::QoS::AtMostOnce,
                false,
                format!(r#"{{"seq":{seq}}}"#),
            )
            .await
            .unwrap();
    }
    p.publish(
        &format!("{t}/in/1"),
        rumqttc::QoS::AtLeastOnce,
        false,
        format!(r#"{{"seq":{}}}"#, N - 1),
    )
    .await;
    let totals = |b: &TestBroker| {
        let all = b.broker.rules.stats();
        (
            all.iter().map(|s| s.actions_success).sum::<u64>(),
            all.iter().map(|s| s.actions_failed).sum::<u64>(),
        )
    };
    within("every action", async {
        while totals(&b).0 + totals(&b).1 < 10 * N {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(totals(&b), (10 * N, 0));
    let rules = &b.broker.rules;
    assert_eq!(
        rules
            .actions_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        rules
            .lanes
            .hold_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Inputs in order; outputs in (message, rule) order, each after its input.
    let (mut inputs, mut outputs) = (0u64, 0u64);
    for _ in 0..11 * N {
        let m = sub.next_publish().await;
        if m.topic == format!("{t}/in/1") {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(v["seq"], serde_json::json!(inputs), "inputs in order");
            inputs += 1;
            continue;
        }
        let (seq, rule) = (outputs / 10, outputs % 10 + 1);
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            (
                format!("{t}/out/{rule}").as_str(),
                seq.to_string().as_bytes()
            ),
            "output {outputs}"
        );
        assert!(seq < inputs, "output of message {seq} after the message");
        outputs += 1;
    }
    assert_eq!((inputs, outputs), (N, 10 * N));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_without_payload_template_sends_the_row_as_json() {
    let t = topic("row");
    let cfg = format!(
        r#"
[[rules]]
id = "row"
sql = 'SELECT payload.a AS a, topic FROM "{t}"'
actions = [{{ type = "republish", topic = "{t}/out" }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut sub = V4::new(&b, "s").await;
    sub.subscribe(&format!("{t}/out"), rumqttc::QoS::AtMostOnce)
        .await;
    let mut p = V4::new(&b, "p").await;
    p.publish(&t, rumqttc::QoS::AtMostOnce, false, r#"{"a":[1,2]}"#)
        .await;
    let m = sub.next_publish().await;
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v, serde_json::json!({"a": [1, 2], "topic": t}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rule_counts_failed_and_affects_neither_other_rules_nor_the_publish() {
    let t = topic("mixed");
    let cfg = format!(
        r#"
[[rules]]
id = "bad"
sql = 'SELECT payload.x + 1 AS y FROM "{t}"'
actions = [{{ type = "log" }}]

[[rules]]
id = "good"
sql = 'SELECT topic FROM "{t}"'
actions = [{{ type = "republish", topic = "{t}/ok" }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut sub = V4::new(&b, "s").await;
    sub.subscribe(&format!("{t}/#"), rumqttc::QoS::AtMostOnce)
        .await;
    sub.subscribe(&t, rumqttc::QoS::AtMostOnce).await;
    let mut p = V4::new(&b, "p").await;
    // Not JSON: `payload.x` fails at run time for "bad".
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "not json")
        .await;
    let mut topics = vec![
        sub.next_publish().await.topic,
        sub.next_publish().await.topic,
    ];
    topics.sort();
    assert_eq!(topics, vec![t.clone(), format!("{t}/ok")]);
    let bad = wait_stats(&b, "bad", |s| s.failed == 1).await;
    assert_eq!(bad.passed, 0);
    wait_stats(&b, "good", |s| s.passed == 1 && s.actions_success == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_rules_see_connects_subscribes_and_disconnects() {
    let t = topic("events");
    let id = unique("ev");
    let cfg = format!(
        r#"
[[rules]]
id = "conn"
sql = '''SELECT clientid, proto_ver FROM "$events/client_connected" WHERE clientid = '{id}' '''
actions = [{{ type = "republish", topic = "{t}/connected", payload = "${{clientid}} v${{proto_ver}}" }}]

[[rules]]
id = "sub"
sql = '''SELECT clientid, topic FROM "$events/session_subscribed" WHERE clientid = '{id}' '''
actions = [{{ type = "republish", topic = "{t}/subscribed", payload = "${{topic}}" }}]

[[rules]]
id = "disc"
sql = '''SELECT clientid, reason FROM "$events/client_disconnected" WHERE clientid = '{id}' '''
actions = [{{ type = "republish", topic = "{t}/disconnected", payload = "${{reason}}" }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut watch = V4::new(&b, "watch").await;
    watch
        .subscribe(&format!("{t}/#"), rumqttc::QoS::AtMostOnce)
        .await;
    let mut o = v5_options(&b, "unused");
    o.set_client_id(id.clone());
    let (mut ev, _) = V5::connect(o).await;
    let m = watch.next_publish().await;
    assert_eq!(m.payload, format!("{id} v5").as_bytes());
    ev.subscribe("some/filter/#", v5::QoS::AtMostOnce).await;
    let m = watch.next_publish().await;
    assert_eq!(&m.payload[..], b"some/filter/#");
    ev.disconnect().await;
    let m = watch.next_publish().await;
    assert_eq!(m.topic, format!("{t}/disconnected"));
    assert_eq!(&m.payload[..], b"normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_dropped_event_fires_for_a_publish_with_no_subscriber() {
    let t = topic("nosub");
    let cfg = format!(
        r#"
[[rules]]
id = "dropped"
sql = '''SELECT topic, reason FROM "$events/message_dropped" WHERE topic = '{t}/lonely' '''
actions = [{{ type = "republish", topic = "{t}/report", payload = "${{topic}} ${{reason}}" }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut watch = V4::new(&b, "watch").await;
    watch
        .subscribe(&format!("{t}/report"), rumqttc::QoS::AtMostOnce)
        .await;
    let mut p = V4::new(&b, "p").await;
    p.publish(&format!("{t}/lonely"), rumqttc::QoS::AtMostOnce, false, "x")
        .await;
    let m = watch.next_publish().await;
    assert_eq!(m.payload, format!("{t}/lonely no_subscribers").as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_rule_does_not_run() {
    let t = topic("off");
    let cfg = format!(
        r#"
[[rules]]
id = "off"
enabled = false
sql = 'SELECT * FROM "{t}"'
actions = [{{ type = "republish", topic = "{t}/x" }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut sub = V4::new(&b, "s").await;
    sub.subscribe(&format!("{t}/x"), rumqttc::QoS::AtMostOnce)
        .await;
    let mut p = V4::new(&b, "p").await;
    p.publish(&t, rumqttc::QoS::AtLeastOnce, false, "x").await;
    sub.expect_no_publish(QUIET).await;
    assert_eq!(stats(&b, "off").matched, 0);
}

#[test]
fn bad_rules_are_refused_at_load_with_rule_id_and_position() {
    let e = midge::Config::parse(
        "[[rules]]\nid = \"r7\"\nsql = 'SELECT nosuch FROM \"a/#\"'\n",
        "conf.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("conf.toml"), "{e}");
    assert!(e.contains("rule r7"), "{e}");
    assert!(e.contains("line 1, column 8"), "{e}");
    assert!(e.contains("nosuch"), "{e}");
    // Placed in the file: line 3, column 15 is the `n` of `nosuch`.
    assert!(
        e.starts_with("conf.toml:3:15: rule r7: line 1, column 8 of its SQL: "),
        "{e}"
    );
    let e = midge::Config::parse(
        "[[rules]]\nid = \"r8\"\nsql = 'SELECT * FROM \"a\"'\nactions = [{ type = \"republish\", topic = \"a/+\" }]\n",
        "conf.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("rule `r8`: actions[0]: `topic`"), "{e}");
    assert!(e.starts_with("conf.toml:4:12: "), "the action's place: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_rules_and_a_bad_set_keeps_the_old_one() {
    let t = topic("reload");
    let dir = std::env::temp_dir().join(unique("midge-reload"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("midge.toml");
    let one = |id: &str, out: &str| {
        format!(
            "[[rules]]\nid = \"{id}\"\nsql = 'SELECT * FROM \"{t}\"'\nactions = [{{ type = \"republish\", topic = \"{t}/{out}\", payload = \"x\" }}]\n"
        )
    };
    std::fs::write(&file, one("first", "a")).unwrap();
    let running = midge::Config::load(&file).unwrap();
    let b = start_broker(|c| c.rules = running.rules.clone()).await;
    let mut sub = V4::new(&b, "s").await;
    sub.subscribe(&format!("{t}/+"), rumqttc::QoS::AtMostOnce)
        .await;
    let mut p = V4::new(&b, "p").await;
    p.publish(&t, rumqttc::QoS::AtMostOnce, false, "1").await;
    assert_eq!(sub.next_publish().await.topic, format!("{t}/a"));

    std::fs::write(&file, one("second", "b")).unwrap();
    assert_eq!(midge::reload::reload(&b.broker, &file, &running), Ok(1));
    p.publish(&t, rumqttc::QoS::AtMostOnce, false, "2").await;
    assert_eq!(sub.next_publish().await.topic, format!("{t}/b"));

    std::fs::write(
        &file,
        "[[rules]]\nid = \"broken\"\nsql = 'SELEC * FROM \"x\"'\n",
    )
    .unwrap();
    let err = midge::reload::reload(&b.broker, &file, &running).unwrap_err();
    assert!(err.contains("broken"), "{err}");
    // The clients stayed connected and the previous rules still run.
    p.publish(&t, rumqttc::QoS::AtMostOnce, false, "3").await;
    assert_eq!(sub.next_publish().await.topic, format!("{t}/b"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_complete_event_fires_for_publish_and_subscribe() {
    let t = topic("authz");
    let id = unique("az");
    let cfg = format!(
        r#"
[[rules]]
id = "authz"
sql = '''SELECT clientid, topic, action, result, authz_source FROM "$events/client_check_authz_complete" WHERE clientid = '{id}' '''
actions = [{{ type = "republish", topic = "{t}/authz", payload = "${{action}} ${{topic}} ${{result}} ${{authz_source}}" }}]
"#
    );
    let b = start_broker(|c| c.rules = rules(&cfg)).await;
    let mut watch = V4::new(&b, "watch").await;
    watch
        .subscribe(&format!("{t}/authz"), rumqttc::QoS::AtMostOnce)
        .await;
    let mut o = v4_options(&b, "unused");
    o.set_client_id(id.clone());
    let (mut c, _) = V4::connect(o).await;
    c.subscribe("az/filter/+", rumqttc::QoS::AtLeastOnce).await;
    let m = watch.next_publish().await;
    assert_eq!(&m.payload[..], b"subscribe az/filter/+ allow default");
    c.publish("az/x", rumqttc::QoS::AtLeastOnce, false, b"1".to_vec())
        .await;
    let m = watch.next_publish().await;
    assert_eq!(&m.payload[..], b"publish az/x allow default");
}
