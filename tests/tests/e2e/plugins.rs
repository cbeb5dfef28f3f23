//! Wasm plugins inside the running broker, with the real shipped components
//! (built from plugins/ for wasm32-wasip2): authentication and ACL by
//! auth-password, payload/topic rewriting by transform, and the rules'
//! `plugin` action feeding a plugin's on-rule-output.

use std::time::Duration;

use midge_e2e::raw::*;
use midge_e2e::*;

// PBKDF2-SHA256 of "wonderland", 1000 iterations (format documented by auth-password).
const ALICE_HASH: &str =
    "$pbkdf2-sha256$1000$bWlkZ2UtdGVzdC1zYWx0IQ==$jbQpDnEXV2muKnAjBpQeiGWaqiAiNGasWC2sTVuOLYw=";

/// A broker with auth-password (alice may use users/alice/#) and transform
/// (users/+/raw CSV -> users/{2}/json JSON).
async fn broker_with_plugins() -> Option<TestBroker> {
    broker_from(PLUGINS).await
}

const PLUGINS: &str = r#"
[[plugins.plugin]]
name = "pw"
path = "{wasm}/auth_password.wasm"
# Password hashing is deliberately slow; a loaded 2-core CI machine must not
# turn it into a deadline failure (deadlines have their own tests).
limits = { deadline_ms = 3000 }
[plugins.plugin.config]
users = { alice = "ALICE_HASH" }
acl_default = "deny"
[[plugins.plugin.config.acl]]
access = "readwrite"
filter = "users/%u/#"
permission = "allow"

[[plugins.plugin]]
name = "tx"
path = "{wasm}/transform.wasm"
config = { rules = [ { filter = "users/+/raw", format = "csv", csv_columns = ["temp", "hum"], rename = { temp = "temperature" }, add_client_id = "client", topic = "users/{2}/json" } ] }
"#;

/// test-misbehave as the receiving end of a rule's `plugin` action (it
/// stores the rows in its kv namespace).
const SINK: &str = r#"
[[plugins.plugin]]
name = "sink"
path = "{wasm}/test_misbehave.wasm"
[plugins.plugin.grants]
kv = "sink"

[[rules]]
id = "to-sink"
sql = 'SELECT topic, payload FROM "sink/#"'
actions = [{ type = "plugin", plugin = "sink" }]
"#;

/// Starts a broker with `plugins` (TOML; `{wasm}` is replaced by the built
/// components' directory). `None`: the wasm target is missing outside CI.
async fn broker_from(plugins: &str) -> Option<TestBroker> {
    let wasm = midge_plugin::testing::wasm_dir()?;
    let kv = std::env::temp_dir().join(unique("midge-plugin-kv"));
    let toml_text = format!("[plugins]\nkv_path = \"{}\"\n", kv.display())
        + &plugins
            .replace("{wasm}", &wasm.display().to_string())
            .replace("ALICE_HASH", ALICE_HASH);
    let cfg = midge::Config::parse(&toml_text, "plugins-test.toml").expect("config parses");
    Some(
        start_broker(|c| {
            c.plugins = cfg.plugins.clone();
            c.rules = cfg.rules.clone();
        })
        .await,
    )
}

fn login(id: &str, user: &str, password: &[u8]) -> ConnectOpts {
    let mut o = ConnectOpts::v5(id);
    o.username = Some(user.into());
    o.password = Some(password.to_vec());
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_password_accepts_right_password_and_refuses_wrong_one() {
    let Some(b) = broker_with_plugins().await else {
        return;
    };
    assert!(b.broker.plugins().is_some(), "plugins loaded");
    let (_c, ack) = RawClient::handshake(b.addr, login(&unique("a"), "alice", b"wonderland")).await;
    assert_eq!(ack.code, 0x00);
    let mut c = RawClient::connect(b.addr).await;
    let ack = c.send_connect(&login(&unique("a"), "alice", b"nope")).await;
    assert_eq!(ack.code, 0x86, "bad user name or password");
    c.expect_closed().await;
    // 3.1.1 gets the mapped return code 4.
    let mut o = login(&unique("a"), "alice", b"nope");
    o.level = 4;
    let mut c = RawClient::connect(b.addr).await;
    assert_eq!(c.send_connect(&o).await.code, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denies_publish_and_subscribe_outside_the_users_tree() {
    let Some(b) = broker_with_plugins().await else {
        return;
    };
    let (mut c, _) =
        RawClient::handshake(b.addr, login(&unique("a"), "alice", b"wonderland")).await;
    let sub = c
        .subscribe(1, &[], &[("users/alice/#", 1), ("users/bob/#", 1)])
        .await;
    assert_eq!(sub.codes, vec![1, 0x87]);
    // Allowed publish: delivered back to the allowed subscription.
    c.send(&publish(
        true,
        "users/alice/inbox",
        1,
        false,
        false,
        7,
        &[],
        b"hi",
    ))
    .await;
    let mut got_ack = None;
    let mut got_msg = None;
    for _ in 0..2 {
        let p = c.recv().await;
        if p.kind == PUBACK {
            got_ack = Some(p.ack());
        } else if p.kind == PUBLISH {
            got_msg = Some(p.publish(true));
        }
    }
    assert_eq!(got_ack.expect("PUBACK").reason, 0);
    assert_eq!(got_msg.expect("delivery").payload, b"hi");
    // Denied publish: PUBACK 0x87 and nothing routed.
    let (mut spy, _) =
        RawClient::handshake(b.addr, login(&unique("spy"), "alice", b"wonderland")).await;
    let _ = spy.subscribe(1, &[], &[("users/alice/#", 0)]).await;
    c.send(&publish(
        true,
        "users/bob/inbox",
        1,
        false,
        false,
        8,
        &[],
        b"x",
    ))
    .await;
    let ack = c.recv_kind(PUBACK).await.ack();
    assert_eq!((ack.pid, ack.reason), (8, 0x87));
    assert!(spy.ping().await.is_empty(), "nothing delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_plugin_rewrites_payload_and_topic_before_routing() {
    let Some(b) = broker_with_plugins().await else {
        return;
    };
    let (mut sub, _) =
        RawClient::handshake(b.addr, login(&unique("s"), "alice", b"wonderland")).await;
    let _ = sub.subscribe(1, &[], &[("users/alice/#", 0)]).await;
    let id = unique("dev");
    let (mut p, _) = RawClient::handshake(b.addr, login(&id, "alice", b"wonderland")).await;
    p.send(&publish(
        true,
        "users/alice/raw",
        0,
        false,
        false,
        0,
        &[],
        b"21.5,40",
    ))
    .await;
    let m = sub.recv_publish().await;
    assert_eq!(m.topic, "users/alice/json");
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["temperature"], serde_json::json!(21.5));
    assert_eq!(v["hum"], serde_json::json!(40));
    assert_eq!(v["client"], serde_json::json!(id));
}

/// PUBLISHes read together reach on-publish as batches (fewer calls than
/// messages), and each keeps its own fate and its place: transformed,
/// passed untouched (no filter matches), refused by the ACL, acknowledged
/// in order and delivered in order. What the plugin changed arrives with
/// what it kept: transformed messages carry its content type and payload
/// format, and their own user properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_read_together_reach_on_publish_in_batches_and_keep_their_order() {
    let Some(b) = broker_with_plugins().await else {
        return;
    };
    let (mut sub, _) =
        RawClient::handshake(b.addr, login(&unique("s"), "alice", b"wonderland")).await;
    let _ = sub.subscribe(1, &[], &[("users/alice/#", 0)]).await;
    let (mut p, _) =
        RawClient::handshake(b.addr, login(&unique("p"), "alice", b"wonderland")).await;
    const N: u16 = 200;
    let mut wire = Vec::new();
    for k in 0..N {
        let (topic, qos, body) = match k % 4 {
            0 => ("users/alice/raw", 1, format!("{k},1")),
            1 => ("users/alice/plain", 1, k.to_string()),
            2 => ("users/bob/raw", 1, format!("{k},1")),
            _ => ("users/alice/raw", 0, format!("{k},2")),
        };
        let pid = if qos > 0 { k + 1 } else { 0 };
        // Every other transformed message has a user property of its own.
        let props = if k % 4 == 0 {
            vec![Prop::Pair(prop::USER_PROPERTY, "k".into(), k.to_string())]
        } else {
            Vec::new()
        };
        wire.extend(publish(
            true,
            topic,
            qos,
            false,
            false,
            pid,
            &props,
            body.as_bytes(),
        ));
    }
    let host = b.broker.plugins().unwrap();
    let calls = host.plugin_metrics("tx").unwrap().calls;
    p.send(&wire).await;
    for k in (0..N).filter(|k| k % 4 != 3) {
        let ack = p.recv_kind(PUBACK).await.ack();
        let want = if k % 4 == 2 { 0x87 } else { 0 };
        assert_eq!((ack.pid, ack.reason), (k + 1, want), "message {k}");
    }
    for k in (0..N).filter(|k| k % 4 != 2) {
        let m = sub.recv_publish().await;
        if k % 4 == 1 {
            assert_eq!(
                (m.topic.as_str(), &m.payload[..]),
                ("users/alice/plain", k.to_string().as_bytes())
            );
            continue;
        }
        assert_eq!(m.topic, "users/alice/json", "message {k}");
        assert_eq!(
            m.props.get(prop::CONTENT_TYPE),
            Some(&Prop::Str(prop::CONTENT_TYPE, "application/json".into())),
            "message {k}"
        );
        assert_eq!(m.props.num(prop::PAYLOAD_FORMAT_INDICATOR), Some(1));
        let user: Vec<&Prop> = m
            .props
            .0
            .iter()
            .filter(|p| p.id() == prop::USER_PROPERTY)
            .collect();
        if k % 4 == 0 {
            assert_eq!(
                user,
                [&Prop::Pair(prop::USER_PROPERTY, "k".into(), k.to_string())],
                "message {k}"
            );
        } else {
            assert!(user.is_empty(), "message {k}: {user:?}");
        }
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            v["temperature"],
            serde_json::json!(k),
            "message {k} in order"
        );
    }
    let transformed = u64::from(N / 2);
    let used = host.plugin_metrics("tx").unwrap().calls - calls;
    assert!(
        used * 2 <= transformed,
        "{used} on-publish calls for {transformed} messages read together"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_plugin_action_hands_rows_to_the_plugin() {
    let Some(b) = broker_from(SINK).await else {
        return;
    };
    let (mut p, _) = RawClient::handshake(b.addr, login(&unique("p"), "alice", b"secret")).await;
    p.send(&publish(
        true,
        "sink/1",
        1,
        false,
        false,
        3,
        &[],
        br#"{"a":1}"#,
    ))
    .await;
    assert_eq!(p.recv_kind(PUBACK).await.ack().reason, 0);
    let stats = within("plugin action", async {
        loop {
            let s = b
                .broker
                .rules
                .stats()
                .into_iter()
                .find(|s| s.id == "to-sink")
                .unwrap();
            if s.actions_success + s.actions_failed > 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        (stats.passed, stats.actions_success, stats.actions_failed),
        (1, 1, 0)
    );
}

/// A plugin action that runs into its deadline on every call: the lane it
/// fills holds its publisher back for a bounded time only, then outputs
/// beyond the lane are dropped and counted, while every publish is still
/// delivered and acknowledged and other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_failing_action_holds_publishers_a_bounded_time_and_loses_no_publish() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let t = topic("slow");
    let kv = std::env::temp_dir().join(unique("midge-plugin-kv"));
    let toml_text = format!(
        r#"
[plugins]
kv_path = "{kv}"
[[plugins.plugin]]
name = "sink"
path = "{wasm}/test_misbehave.wasm"
config = {{ mode = "rule-output-only" }}
[plugins.plugin.grants]
kv = "sink"
[plugins.plugin.limits]
deadline_ms = 5
suspend_after = 0

[[rules]]
id = "slow"
sql = 'SELECT payload FROM "{t}/#"'
actions = [{{ type = "plugin", plugin = "sink" }}]
"#,
        kv = kv.display(),
        wasm = wasm.display()
    );
    let cfg = midge::Config::parse(&toml_text, "slow.toml").expect("config parses");
    let b = start_broker(|c| {
        c.plugins = cfg.plugins.clone();
        c.rules = cfg.rules.clone();
        c.mqtt.max_queued_messages = 1_000_000;
    })
    .await;
    let mut sub = V4::new(&b, "s").await;
    sub.subscribe(&format!("{t}/#"), rumqttc::QoS::AtMostOnce)
        .await;
    let mut p = V4::new(&b, "p").await;
    // Far more outputs than a lane holds (16,384), at about 6 ms each.
    const N: u64 = 20_000;
    let sent = tokio::time::timeout(Duration::from_secs(120), async {
        for seq in 0..N - 1 {
            p.client
                .publish(
                    format!("{t}/in"),
                    rumqttc::QoS::AtMostOnce,
                    false,
                    seq.to_string(),
                )
                .await
                .unwrap();
        }
        p.client
            .publish(
                format!("{t}/in"),
                rumqttc::QoS::AtLeastOnce,
                false,
                (N - 1).to_string(),
            )
            .await
            .unwrap();
        // Not `publish`'s 5 s wait: the backlog runs through on_publish first.
        loop {
            match p.events.recv().await {
                Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => break,
                Some(Ok(_)) => {}
                e => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert!(sent.is_ok(), "the publisher was held back without end");
    let rules = &b.broker.rules;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(get(&rules.lanes.hold_timeouts) >= 1, "held, then let go");
    let dropped = get(&rules.actions_dropped);
    assert!(dropped > 0, "outputs beyond the lane are dropped");
    let s = rules.stats().into_iter().find(|s| s.id == "slow").unwrap();
    assert_eq!(s.passed, N, "every publish evaluated");
    assert!(s.actions_failed >= dropped, "drops count as failed actions");
    assert_eq!(s.actions_success, 0);
    // Other clients are served meanwhile (the lane is still busy).
    let mut other = V4::new(&b, "o").await;
    other
        .subscribe(&format!("{t}-other"), rumqttc::QoS::AtLeastOnce)
        .await;
    other
        .publish(
            &format!("{t}-other"),
            rumqttc::QoS::AtLeastOnce,
            false,
            "hi",
        )
        .await;
    assert_eq!(other.next_publish().await.payload, "hi");
    // Every publish itself was delivered, in order.
    for seq in 0..N {
        let m = sub.next_publish().await;
        assert_eq!(m.payload, seq.to_string(), "message {seq}");
    }
}

#[test]
fn plugin_action_naming_an_unconfigured_plugin_is_refused_at_load() {
    let e = midge::Config::parse(
        "[[rules]]\nid = \"r\"\nsql = 'SELECT * FROM \"t\"'\nactions = [{ type = \"plugin\", plugin = \"archive\" }]\n",
        "c.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("rule `r`: actions[0]: plugin `archive` is not an enabled plugin in [plugins]"),
        "{e}"
    );
}

/// A changed `.wasm` is recompiled and swapped in while clients stay
/// connected; a broken one is refused by name and the running version stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_wasm_reloads_live_and_a_broken_one_is_refused() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let dir = TempDir::new("midge-reload");
    let live = dir.0.join("live.wasm");
    std::fs::copy(wasm.join("transform.wasm"), &live).unwrap();
    let toml_text = format!(
        r#"
[[plugins.plugin]]
name = "tx"
path = "{}"
config = {{ rules = [ {{ filter = "users/+/raw", format = "csv", csv_columns = ["temp"], topic = "users/{{2}}/json" }} ] }}
"#,
        live.display()
    );
    let Some(b) = broker_from(&toml_text).await else {
        return;
    };
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("c"))).await;
    c.subscribe(1, &[], &[("users/bob/#", 0)]).await;
    let send =
        |payload: &'static [u8]| publish(true, "users/bob/raw", 0, false, false, 0, &[], payload);
    c.send(&send(b"21")).await;
    let m = c.recv_publish().await;
    assert_eq!(m.topic, "users/bob/json", "the transform runs");

    // Swap in another component: on-publish now reverses payloads.
    std::fs::copy(wasm.join("test_misbehave.wasm"), &live).unwrap();
    let names = midge::reload::reload_plugins(&b.broker).await.unwrap();
    assert_eq!(names, vec!["tx".to_string()]);
    c.send(&send(b"abc")).await;
    let m = c.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("users/bob/raw", &b"cba"[..])
    );

    // A file that is not a component: refused, named, previous version stays.
    std::fs::write(&live, b"not wasm").unwrap();
    let e = midge::reload::reload_plugins(&b.broker).await.unwrap_err();
    assert!(e.contains("plugin `tx`"), "{e}");
    c.send(&send(b"xyz")).await;
    assert_eq!(
        c.recv_publish().await.payload,
        b"zyx",
        "same connection, old version"
    );
    // Unchanged file content: nothing to reload.
    std::fs::copy(wasm.join("test_misbehave.wasm"), &live).unwrap();
    assert!(midge::reload::reload_plugins(&b.broker)
        .await
        .unwrap()
        .is_empty());
}

/// A plugin's rule function in a rule's SQL: resolved when the rules load,
/// called per message; a failing call fails that rule for that message only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_call_functions_offered_by_plugins() {
    let Some(b) = broker_from(
        r#"
[[plugins.plugin]]
name = "fn"
path = "{wasm}/test_misbehave.wasm"
config = { mode = "functions-only" }

[[rules]]
id = "doubler"
sql = 'SELECT double(payload.x) AS d, upper(topic) AS t FROM "fn/#"'
actions = [{ type = "republish", topic = "fn-out/x", qos = 0, payload = '${d} ${t}' }]
"#,
    )
    .await
    else {
        return;
    };
    let (mut c, _) = RawClient::handshake(b.addr, ConnectOpts::v5(&unique("c"))).await;
    c.subscribe(1, &[], &[("fn-out/#", 0)]).await;
    c.send(&publish(
        true,
        "fn/a",
        0,
        false,
        false,
        0,
        &[],
        br#"{"x": 21}"#,
    ))
    .await;
    let m = c.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        ("fn-out/x", "42 FN/A")
    );
    // Not a number: the plugin answers bad-arguments; counted as failed.
    c.send(&publish(
        true,
        "fn/a",
        0,
        false,
        false,
        0,
        &[],
        br#"{"x": "many"}"#,
    ))
    .await;
    let stats = within("the failed evaluation is counted", async {
        loop {
            let s = b
                .broker
                .rules
                .stats()
                .into_iter()
                .find(|s| s.id == "doubler")
                .unwrap();
            if s.failed > 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!((stats.passed, stats.failed), (1, 1));
    // The next message is the next output: the failed one produced none.
    c.send(&publish(
        true,
        "fn/b",
        0,
        false,
        false,
        0,
        &[],
        br#"{"x": 1}"#,
    ))
    .await;
    assert_eq!(text(&c.recv_publish().await.payload), "2 FN/B");
    assert_alive(&b).await;
}

/// A function no plugin offers: the broker refuses to start, naming the
/// rule; without any plugin configured, config validation already does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_calling_a_function_no_plugin_offers_is_refused() {
    let Some(wasm) = midge_plugin::testing::wasm_dir() else {
        return;
    };
    let text_cfg = format!(
        "[[plugins.plugin]]\nname = \"fn\"\npath = \"{}/test_misbehave.wasm\"\n\
         [[rules]]\nid = \"r\"\nsql = 'SELECT triple(1) AS x FROM \"t\"'\n",
        wasm.display()
    );
    // Accepted by validation (plugins decide their functions at init) ...
    let cfg = midge::Config::parse(&text_cfg, "fn.toml").unwrap();
    // ... refused at start, when the plugins are loaded.
    let err = match midge::App::bind(cfg).await {
        Ok(_) => panic!("a rule calling an unknown function was loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("rule `r`") || err.contains("rule r"), "{err}");
    assert!(err.contains("unknown function `triple`"), "{err}");
    let e = midge::Config::parse(
        "[[rules]]\nid = \"r\"\nsql = 'SELECT double(1) AS x FROM \"t\"'\n",
        "nofn.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown function `double`"), "{e}");
}

/// test-events republishes the events of clients named `evt-*` to `ev/<client id>`.
const EVENTS: &str = r#"
[[plugins.plugin]]
name = "events"
path = "{wasm}/test_events.wasm"
config = { topic = "ev", clients = "evt-" }
[plugins.plugin.grants]
publish = ["ev/#"]
"#;

/// A plugin's on-event sees a real client's life in order: connected,
/// subscribed, delivered, acked, unsubscribed, disconnected (with the fields
/// the WIT `event` variant defines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_event_sees_a_clients_life_in_order() {
    let Some(broker) = broker_from(EVENTS).await else {
        return;
    };
    let mut watcher = V4::new(&broker, "watcher").await;
    watcher.subscribe("ev/#", rumqttc::QoS::AtMostOnce).await;

    let opts = v4_options(&broker, "evt");
    let id = opts.client_id();
    let (mut client, _) = V4::connect(opts).await;
    let t = topic("events");
    client.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let mut publisher = V4::new(&broker, "pub").await;
    publisher
        .publish(&t, rumqttc::QoS::AtLeastOnce, false, "hello")
        .await;
    let p = client.next_publish().await;
    assert_eq!(p.payload.as_ref(), b"hello");
    let pid = p.pkid;
    client.client.unsubscribe(&t).await.unwrap();
    client
        .wait("UNSUBACK", |e| {
            matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::UnsubAck(_))).then_some(())
        })
        .await;
    client.disconnect().await;

    // Collect this client's events until its disconnection is reported.
    let mut seen = Vec::new();
    within("the disconnected event", async {
        loop {
            let m = watcher.next_publish().await;
            if m.topic != format!("ev/{id}") {
                continue;
            }
            let line = text(&m.payload);
            let done = line.starts_with("disconnected");
            seen.push(line);
            if done {
                break;
            }
        }
    })
    .await;
    assert_eq!(
        seen,
        vec![
            "connected".to_string(),
            format!("subscribed {t} 1"),
            format!("delivered {t} 1 {pid}"),
            format!("acked {t} 1 {pid}"),
            format!("unsubscribed {t}"),
            "disconnected 0x00 disconnected by the client".to_string(),
        ]
    );
    broker.shutdown().await;
}
